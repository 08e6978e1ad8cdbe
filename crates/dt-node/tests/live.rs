//! The node's live behaviour: locks ending running sessions, the watch surviving an auth
//! service restart, strict locking, heartbeats and listing, PTYs, bots, and the plain
//! OpenSSH client against a devtrust node.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::time::{Duration, Instant};

use dt_client::ssh_client;
use dt_node::access::Freshness;
use dt_node_testkit::*;
use dt_proto::v1 as pb;
use dt_types::audit::EventType;
use russh::ChannelMsg;
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_lock_ends_a_live_session_within_a_second() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let u = cluster.user(&TestUser::human("olga", &["access"]).with_device());
    let conn = node.connect(&u, "root").await.unwrap();
    let mut ch = conn.open_session().await.unwrap();
    ch.exec(true, "sleep 30").await.unwrap();
    // Wait until the session runs.
    let start = cluster.wait_event(EventType::SessionStart, "exec").await;
    let dev = device().device_id;
    let t0 = Instant::now();
    cluster
        .apply(&format!("kind: lock\nversion: v2\nmetadata: {{name: lost-laptop}}\nspec:\n  target: {{device: {dev}}}\n"))
        .await;
    let mut stderr = Vec::new();
    let mut exit = None;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(5), ch.wait())
        .await
        .expect("the session ended")
    {
        match msg {
            ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => exit = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "terminated after {took:?}");
    assert_eq!(exit, None, "a terminated session has no exit status");
    let text = String::from_utf8_lossy(&stderr);
    assert!(
        text.contains(&format!(
            "ERROR: lock targeting Device:\"{dev}\" is in force"
        )),
        "{text:?}"
    );
    let e = cluster
        .wait_event(EventType::SessionTerminate, "lock targeting")
        .await;
    assert_eq!(e.lock.as_deref(), Some("lost-laptop"));
    assert_eq!(e.session_id, start.session_id);
    assert_eq!(e.user.as_deref(), Some("olga"));
    assert_eq!(e.device.unwrap().device_id, dev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reconnects_after_an_auth_restart() {
    let mut cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let u = cluster.user(&TestUser::human("pat", &["access"]));
    assert_eq!(
        node.run(&u, "root", "true").await.unwrap().exit_status,
        Some(0)
    );
    cluster.stop().await;
    // While the auth service is down, the node keeps serving from its last view.
    assert_eq!(
        node.run(&u, "root", "true").await.unwrap().exit_status,
        Some(0)
    );
    let before = node.view().read(|v| v.confirmed_at());
    cluster.restart().await;
    node.wait_view("a fresh view after the restart", |v| {
        v.confirmed_at() > before
    })
    .await;
    // A change made after the restart reaches the node through the new watch.
    cluster.apply("kind: lock\nversion: v2\nmetadata: {name: after-restart}\nspec:\n  target: {user: pat}\n").await;
    node.wait_view("the new lock", |v| {
        v.active_locks(OffsetDateTime::now_utc())
            .map(|l| l.len() == 1)
            .unwrap_or(false)
    })
    .await;
    assert_eq!(
        rejection(node.run(&u, "root", "true").await),
        "lock targeting User:\"pat\" is in force"
    );
    // And the node's audit events still arrive.
    cluster
        .wait_event(EventType::AccessDenied, "lock targeting User:\"pat\"")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_locking_denies_while_the_view_is_stale() {
    let mut cluster = Cluster::start().await;
    let node = Node::start_with(
        &cluster,
        "node1",
        &[],
        Freshness {
            strict_max_age: Duration::from_millis(1500),
        },
    )
    .await;
    cluster
        .put_raw(
            "/resources/cluster_auth_preference/cluster-auth-preference",
            r#"{"kind":"cluster_auth_preference","version":"v2","metadata":{"name":"cluster-auth-preference"},"spec":{"locking_mode":"strict"}}"#,
        )
        .await;
    node.wait_view("strict", |v| {
        v.locking_mode() == dt_types::resource::LockingMode::Strict
    })
    .await;
    let u = cluster.user(&TestUser::human("quinn", &["access"]));
    assert_eq!(
        node.run(&u, "root", "true").await.unwrap().exit_status,
        Some(0)
    );
    // A live session when the view goes stale is ended too.
    let conn = node.connect(&u, "root").await.unwrap();
    let mut ch = conn.open_session().await.unwrap();
    ch.exec(true, "sleep 30").await.unwrap();
    cluster.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        rejection(node.run(&u, "root", "true").await),
        "this node cannot confirm the cluster's locks (locking_mode: strict); try again shortly"
    );
    let mut stderr = Vec::new();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(5), ch.wait())
        .await
        .unwrap()
    {
        match msg {
            ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert!(String::from_utf8_lossy(&stderr).contains("locking_mode: strict"));
    cluster.restart().await;
    let node_ref = &node;
    eventually(
        "access again after the restart",
        Duration::from_secs(20),
        async || node_ref.run(&u, "root", "true").await.ok().map(|_| ()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_listed_while_they_heartbeat() {
    let cluster = Cluster::start().await;
    let mut n1 = Node::start(&cluster, "alpha", &[("env", "prod")]).await;
    let _n2 = Node::start(&cluster, "beta", &[]).await;
    let list = async || {
        let mut names: Vec<String> = cluster
            .srv
            .list_nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        names.sort();
        names
    };
    eventually("both nodes listed", Duration::from_secs(10), async || {
        (list().await == ["alpha", "beta"]).then_some(())
    })
    .await;
    let alpha = cluster
        .srv
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.name == "alpha")
        .unwrap();
    assert_eq!(alpha.addr, n1.addr.to_string());
    assert_eq!(alpha.labels.get("env").map(String::as_str), Some("prod"));
    // A stopped node drops out after its last heartbeat expires (3 heartbeats).
    n1.stop().await;
    eventually("alpha gone", Duration::from_secs(15), async || {
        (list().await == ["beta"]).then_some(())
    })
    .await;
    // A second machine cannot take a registered node's name (live or not).
    let err = dt_node::agent::join(
        &dt_node::identity::DataDir::new(tempfile::tempdir().unwrap().path().join("x")),
        &dt_node::agent::JoinRequest {
            auth_server: cluster.addr.to_string(),
            token: dt_types::Secret::new(cluster.node_token().await),
            trust: dt_client::TrustPolicy::Pin(cluster.pin()),
        },
        "beta",
        "127.0.0.1:1",
        &Default::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("a node named \"beta\" is already registered with another key"),
        "{err}"
    );
    // A bad token is refused with one generic message, and audited.
    let err = dt_node::agent::join(
        &dt_node::identity::DataDir::new(tempfile::tempdir().unwrap().path().join("y")),
        &dt_node::agent::JoinRequest {
            auth_server: cluster.addr.to_string(),
            token: dt_types::Secret::new("not-a-token".into()),
            trust: dt_client::TrustPolicy::Pin(cluster.pin()),
        },
        "gamma",
        "127.0.0.1:1",
        &Default::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("invalid or expired join token"),
        "{err}"
    );
    cluster
        .wait_event(EventType::NodeJoin, "invalid or expired node join token")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_shell_window_change_and_exit_status() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let u = cluster.user(&TestUser::human("rita", &["access"]));
    let conn = node.connect(&u, "root").await.unwrap();
    let mut ch = conn.open_session().await.unwrap();
    ch.request_pty(true, "xterm-256color", 100, 30, 0, 0, &[])
        .await
        .unwrap();
    ch.request_shell(true).await.unwrap();
    ch.data(&b"stty size; echo TERM=$TERM\n"[..]).await.unwrap();
    let mut seen = String::new();
    let mut resized = false;
    let mut exit = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(msg) = tokio::time::timeout_at(deadline.into(), ch.wait())
        .await
        .expect("pty session output")
    {
        match msg {
            ChannelMsg::Data { data } => {
                seen.push_str(&String::from_utf8_lossy(&data));
                if !resized && seen.contains("30 100") && seen.contains("TERM=xterm-256color") {
                    resized = true;
                    ch.window_change(132, 43, 0, 0).await.unwrap();
                    ch.data(&b"stty size; exit 5\n"[..]).await.unwrap();
                }
            }
            ChannelMsg::ExitStatus { exit_status } => exit = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert!(resized, "first size not seen: {seen:?}");
    assert!(seen.contains("43 132"), "resize not seen: {seen:?}");
    assert_eq!(exit, Some(5));
    let e = cluster
        .wait_event(EventType::SessionStart, "interactive shell")
        .await;
    assert_eq!(e.user.as_deref(), Some("rita"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_pass_required_for_humans_without_a_device_but_not_required() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let admin = cluster.admin_channel().await;
    let mut nodes = pb::node_service_client::NodeServiceClient::new(admin.clone());
    let resp = nodes
        .add_bot(pb::AddBotRequest {
            name: "ci-bot".into(),
            roles: vec!["access".into()],
            logins: vec!["root".into()],
            token_ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    // The bot logs in with its token, as `dtsh login --bot` does.
    let key = dt_ca::ClientKey::generate().unwrap();
    let mut anon = pb::auth_service_client::AuthServiceClient::new(
        dt_client::connect::channel(
            &cluster.addr.to_string(),
            dt_client::TrustPolicy::Pin(cluster.pin()),
            dt_client::Identity::Anonymous,
        )
        .await
        .unwrap(),
    );
    let login = anon
        .login(pb::LoginRequest {
            ssh_public_key: key.ssh_public_key().unwrap().to_openssh().unwrap(),
            tls_public_key_der: key.spki_der(),
            bot_token: resp.token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cert = ssh_key::Certificate::from_openssh(&login.ssh_cert).unwrap();
    assert_eq!(cert.key_id(), "ci-bot");
    assert_eq!(
        cert.extensions().get("devtrust-bot").map(String::as_str),
        Some("")
    );
    let creds = ssh_client::ClientCreds {
        key: std::sync::Arc::new(
            russh::keys::PrivateKey::from_openssh(key.ssh_private_key_openssh().unwrap()).unwrap(),
        ),
        cert,
        host_ca: russh::keys::PublicKey::from_openssh(&login.host_ca_ssh_public_key).unwrap(),
    };
    let human = cluster.user(&TestUser::human("sam", &["access"]));
    cluster.set_cluster_mode("required-for-humans").await;
    node.wait_mode("required-for-humans").await;
    assert_eq!(
        node.run(&creds, "root", "true").await.unwrap().exit_status,
        Some(0)
    );
    assert_eq!(
        rejection(node.run(&human, "root", "true").await),
        "unauthorized device"
    );
    cluster.set_cluster_mode("required").await;
    node.wait_mode("required").await;
    assert_eq!(
        rejection(node.run(&creds, "root", "true").await),
        "unauthorized device"
    );
    // A wrong token is refused and audited.
    let err = anon
        .login(pb::LoginRequest {
            ssh_public_key: key.ssh_public_key().unwrap().to_openssh().unwrap(),
            tls_public_key_der: key.spki_der(),
            bot_token: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "invalid or expired bot token; ask an admin for a new one (`dtctl bots add NAME --roles=...`)"
    );
    cluster
        .wait_event(EventType::UserLogin, "invalid or expired bot token")
        .await;
    // A bot's name is taken like a user's.
    let dup = nodes
        .add_bot(pb::AddBotRequest {
            name: "ci-bot".into(),
            roles: vec!["access".into()],
            logins: vec![],
            token_ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert!(
        dup.message().contains("already exists"),
        "{}",
        dup.message()
    );
}

/// Plain OpenSSH `ssh` reaches a devtrust node with the user's key and certificate and
/// verifies the node by the cluster's host CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_client_against_a_devtrust_node() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dt_ca::ClientKey::generate().unwrap();
    let id = dt_ca::Identity {
        username: "tom".parse().unwrap(),
        roles: vec!["access".into(), "require-trusted-device".into()],
        logins: vec!["root".into()],
        bot: false,
        trait_logins: vec!["root".into()],
        device: None,
        not_before: OffsetDateTime::now_utc() - time::Duration::minutes(1),
        not_after: OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    let cert = cluster
        .srv
        .user_ca
        .issue_ssh_user_cert(&key.ssh_public_key().unwrap(), &id)
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        p
    };
    let key_path = write("key", &key.ssh_private_key_openssh().unwrap());
    write("key-cert.pub", &format!("{}\n", cert.to_openssh().unwrap()));
    let kh = write(
        "known_hosts",
        &format!(
            "@cert-authority * {}\n",
            cluster.srv.host_ca.ssh_public_key_openssh()
        ),
    );
    let ssh = |cmd: &str| {
        std::process::Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .args([
                "-o",
                "HostKeyAlias=node1",
                "-o",
                "HostKeyAlgorithms=ecdsa-sha2-nistp256-cert-v01@openssh.com",
            ])
            .arg("-i")
            .arg(&key_path)
            .args(["-p", &node.addr.port().to_string(), "root@127.0.0.1", cmd])
            .output()
            .unwrap()
    };
    // The role requires a device: OpenSSH shows the node's reason.
    let out = ssh("true");
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("administratively prohibited: access denied to root connecting to node1: a trusted device is required"),
        "{err}"
    );
    // A certificate with a device gets in; the exit status comes back.
    let cert = cluster
        .srv
        .user_ca
        .issue_ssh_user_cert(
            &key.ssh_public_key().unwrap(),
            &dt_ca::Identity {
                device: Some(device()),
                ..id
            },
        )
        .unwrap();
    write("key-cert.pub", &format!("{}\n", cert.to_openssh().unwrap()));
    let out = ssh("echo hello from $DEVTRUST_NODE; exit 42");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from node1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(42));
    // A node whose host key the CA did not certify is refused by OpenSSH.
    let wrong = write(
        "known_hosts",
        &format!(
            "@cert-authority * {}\n",
            cluster.srv.user_ca.ssh_public_key_openssh()
        ),
    );
    let _ = wrong;
    let out = ssh("true");
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"));
}

/// Two auth servers on one PostgreSQL database: the node watches one, the lock is made on
/// the other, and the live session still ends within a second (DESIGN.md §9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_made_on_another_auth_server_ends_the_session() {
    let db = dt_testkit::PgDatabase::create("dt_node_test");
    let mut a = Cluster::start_on(Some(db.conn())).await;
    let mut b = Cluster::start_on(Some(db.conn())).await;
    assert_eq!(a.pin(), b.pin(), "one cluster, one CA");
    let node = Node::start(&a, "node1", &[]).await;
    let u = a.user(&TestUser::human("vera", &["access"]).with_device());
    let dev = device().device_id;
    let conn = node.connect(&u, "root").await.unwrap();
    let mut ch = conn.open_session().await.unwrap();
    ch.exec(true, "sleep 30").await.unwrap();
    loop {
        match ch.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(_) => {}
            None => panic!("the session ended early"),
        }
    }
    let t0 = Instant::now();
    // A device lock, made on the other auth server.
    b.apply(&format!(
        "kind: lock\nversion: v2\nmetadata: {{name: from-b}}\nspec:\n  target: {{device: {dev}}}\n"
    ))
    .await;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(5), ch.wait())
        .await
        .expect("terminated")
    {
        if matches!(msg, ChannelMsg::Close) {
            break;
        }
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "terminated after {took:?}");
    a.wait_event(
        EventType::SessionTerminate,
        &format!("lock targeting Device:\"{dev}\""),
    )
    .await;
    drop(conn);
    drop(node);
    a.stop().await;
    b.stop().await;
    drop(db);
}
