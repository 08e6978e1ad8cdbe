//! What a certificate grants stays within what it says (issue 11, holes 1 and 5):
//! `{{internal.logins}}` expands from the user's login traits carried in the certificate,
//! never from its principals, so a login one role grants on some nodes stays there; and a
//! certificate that expires while its connection is open opens no new channel and starts no
//! new session on it, and with `disconnect_expired_cert` (cluster or role) its live
//! sessions end at expiry.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use common::*;
use dt_types::audit::EventType;

const DB_ROLE_AND_USER: &str = "kind: role\nversion: v7\nmetadata: {name: db-postgres}\nspec:\n  allow:\n    logins: [postgres]\n    node_labels: {env: db}\n---\nkind: user\nversion: v2\nmetadata: {name: dana}\nspec: {roles: [access, db-postgres], traits: {logins: [root]}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_one_role_grants_on_db_nodes_is_not_granted_on_web_nodes() {
    let cluster = Cluster::start().await;
    cluster.apply(DB_ROLE_AND_USER).await;
    let web = Node::start(&cluster, "web-node", &[("env", "web")]).await;
    let db = Node::start(&cluster, "db-node", &[("env", "db")]).await;
    // Certificates from the auth service's own issuance, as `dtsh login` gets them.
    let dana = cluster.login("dana", None).await;
    let mut principals = dana.cert.valid_principals().to_vec();
    principals.sort();
    assert_eq!(principals, ["postgres", "root"]);

    // `access` expands `{{internal.logins}}` to dana's traits (root), on every node;
    // `postgres` comes only from db-postgres, which is for env: db.
    assert_eq!(
        rejection(web.run(&dana, "postgres", "true").await),
        "access denied to postgres connecting to web-node"
    );
    let e = cluster
        .wait_event(
            EventType::AccessDenied,
            "access denied to postgres connecting to web-node",
        )
        .await;
    assert_eq!(e.user.as_deref(), Some("dana"));
    assert_eq!(e.node.as_deref(), Some("web-node"));

    for (node, login) in [(&web, "root"), (&db, "root"), (&db, "postgres")] {
        assert_eq!(
            node.run(&dana, login, "true").await.unwrap().exit_status,
            Some(0),
            "{login}@{}",
            node.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_without_login_traits_get_nothing_from_internal_logins() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    // As certificates issued before the traits were carried: principals only.
    let mut old = TestUser::human("olaf", &["access"]);
    old.trait_logins.clear();
    assert_eq!(
        rejection(node.run(&cluster.user(&old), "root", "true").await),
        "access denied to root connecting to node1",
        "the principals must not stand in for the traits"
    );
    let e = cluster
        .wait_event(
            EventType::AccessDenied,
            "access denied to root connecting to node1",
        )
        .await;
    assert_eq!(e.user.as_deref(), Some("olaf"));
    let new = TestUser::human("olga", &["access"]);
    assert_eq!(
        node.run(&cluster.user(&new), "root", "true")
            .await
            .unwrap()
            .exit_status,
        Some(0)
    );
}
