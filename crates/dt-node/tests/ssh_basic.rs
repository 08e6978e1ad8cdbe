//! A node joins a real auth service, serves SSH, and runs commands for a certificate holder.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use dt_node_testkit::*;
use dt_types::audit::EventType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_and_the_exit_status_comes_back() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[("env", "test")]).await;
    let alice = cluster.user(&TestUser::human("alice", &["access"]));
    let out = node
        .run(&alice, "root", "echo hello; echo oops >&2; exit 3")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!(out.exit_status, Some(3));
    let end = cluster.wait_event(EventType::SessionEnd, "").await;
    assert_eq!(end.exit_code, Some(3));
    assert_eq!(end.user.as_deref(), Some("alice"));
    assert_eq!(end.node.as_deref(), Some("node1"));
    assert_eq!(end.login.as_deref(), Some("root"));
}
