//! What a certificate grants stays within what it says (issue 11, holes 1 and 5):
//! `{{internal.logins}}` expands from the user's login traits carried in the certificate,
//! never from its principals, so a login one role grants on some nodes stays there; and a
//! certificate that expires while its connection is open opens no new channel and starts no
//! new session on it, and with `disconnect_expired_cert` (cluster or role) its live
//! sessions end at expiry.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::time::Duration;

use dt_client::ssh_client::ClientCreds;
use dt_node_testkit::*;
use dt_types::audit::EventType;
use russh::ChannelMsg;
use time::OffsetDateTime;

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

/// A user whose certificate expires `secs` seconds from now.
fn expiring(name: &str, roles: &[&str], secs: i64) -> TestUser {
    let mut u = TestUser::human(name, roles);
    u.not_after =
        OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::seconds(secs);
    u
}

/// Sleep until just after `u`'s certificate expired.
async fn until_expired(u: &TestUser) {
    let left = u.not_after - OffsetDateTime::now_utc() + time::Duration::milliseconds(300);
    if left.is_positive() {
        tokio::time::sleep(left.try_into().unwrap()).await;
    }
}

/// Run `sleep 30` on a new session of `conn` and wait until it runs.
async fn long_session(
    cluster: &Cluster,
    conn: &dt_client::ssh_client::Connection,
    user: &str,
) -> russh::Channel<russh::client::Msg> {
    let ch = conn.open_session().await.unwrap();
    ch.exec(true, "sleep 30").await.unwrap();
    eventually("the session runs", Duration::from_secs(10), async || {
        cluster
            .events(EventType::SessionStart)
            .await
            .into_iter()
            .any(|e| e.user.as_deref() == Some(user))
            .then_some(())
    })
    .await;
    ch
}

/// Wait for the channel to close; its stderr and exit status.
async fn ended(
    ch: &mut russh::Channel<russh::client::Msg>,
    within: Duration,
) -> (String, Option<u32>) {
    let mut stderr = Vec::new();
    let mut exit = None;
    while let Some(msg) = tokio::time::timeout(within, ch.wait())
        .await
        .expect("the session ended in time")
    {
        match msg {
            ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => exit = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    (String::from_utf8_lossy(&stderr).into_owned(), exit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_opens_no_new_channel_on_its_connection() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let u = expiring("eve", &["access"], 4);
    let creds: ClientCreds = cluster.user(&u);
    let conn = node.connect(&creds, "root").await.unwrap();
    let out = dt_client::ssh_client::exec(&conn, "true", b"")
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(0), "allowed while valid");
    // A session started while valid, and a channel opened but not yet used.
    let mut running = conn.open_session().await.unwrap();
    running.exec(true, "sleep 2; echo done").await.unwrap();
    let idle = conn.open_session().await.unwrap();
    until_expired(&u).await;

    let refused = dt_client::ssh_client::exec(&conn, "true", b"").await;
    let description = rejection(refused);
    assert!(
        description.starts_with("certificate expired at ") && description.contains("dtsh login"),
        "{description}"
    );
    let e = cluster
        .wait_event(EventType::AccessDenied, "certificate expired")
        .await;
    assert_eq!(e.user.as_deref(), Some("eve"));
    assert_eq!(e.node.as_deref(), Some("node1"));

    // The idle channel starts nothing either.
    idle.exec(true, "true").await.unwrap();
    let mut idle = idle;
    let mut failed = false;
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(5), idle.wait())
        .await
        .expect("an answer")
    {
        if matches!(msg, ChannelMsg::Failure) {
            failed = true;
            break;
        }
        assert!(
            !matches!(msg, ChannelMsg::ExitStatus { .. }),
            "ran after expiry"
        );
    }
    assert!(
        failed,
        "exec on a channel opened before expiry is refused after"
    );
    eventually(
        "two expiry denials for eve",
        Duration::from_secs(10),
        async || {
            (cluster
                .events(EventType::AccessDenied)
                .await
                .iter()
                .filter(|e| e.user.as_deref() == Some("eve"))
                .filter(|e| {
                    e.message
                        .as_deref()
                        .unwrap_or("")
                        .contains("certificate expired")
                })
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;

    // Without disconnect_expired_cert the session that was running finishes normally.
    let (_, exit) = ended(&mut running, Duration::from_secs(10)).await;
    assert_eq!(exit, Some(0));
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_expired_cert_ends_live_sessions_at_expiry() {
    let cluster = Cluster::start().await;
    cluster
        .apply("kind: role\nversion: v7\nmetadata: {name: strict-expiry}\nspec:\n  options: {disconnect_expired_cert: true}\n")
        .await;
    let node = Node::start(&cluster, "node1", &[]).await;
    node.wait_view("the strict-expiry role", |v| {
        v.roles(&["strict-expiry".into()])
            .is_ok_and(|r| r.len() == 1)
    })
    .await;

    // Set by a role.
    let by_role = expiring("rolf", &["access", "strict-expiry"], 4);
    // Not set: runs on.
    let unset = expiring("uma", &["access"], 4);
    let rolf_conn = node.connect(&cluster.user(&by_role), "root").await.unwrap();
    let uma_conn = node.connect(&cluster.user(&unset), "root").await.unwrap();
    let mut rolf = long_session(&cluster, &rolf_conn, "rolf").await;
    let mut uma = long_session(&cluster, &uma_conn, "uma").await;
    until_expired(&by_role).await;
    let (stderr, exit) = ended(&mut rolf, Duration::from_secs(3)).await;
    assert_eq!(exit, None, "terminated, not exited");
    assert!(
        stderr.contains("ERROR: certificate expired at ") && stderr.contains("dtsh login"),
        "{stderr:?}"
    );
    let e = cluster
        .wait_event(EventType::SessionTerminate, "certificate expired")
        .await;
    assert_eq!(e.user.as_deref(), Some("rolf"));
    // A session without disconnect_expired_cert runs on.
    while let Ok(msg) = tokio::time::timeout(Duration::from_secs(1), uma.wait()).await {
        assert!(
            matches!(
                msg,
                Some(ChannelMsg::Success | ChannelMsg::WindowAdjusted { .. })
            ),
            "{msg:?}"
        );
    }

    // Set for the whole cluster.
    cluster
        .put_raw(
            "/resources/cluster_auth_preference/cluster-auth-preference",
            r#"{"kind":"cluster_auth_preference","version":"v2","metadata":{"name":"cluster-auth-preference"},"spec":{"disconnect_expired_cert":true}}"#,
        )
        .await;
    node.wait_view("disconnect_expired_cert", |v| v.disconnect_expired_cert())
        .await;
    let (stderr, exit) = ended(&mut uma, Duration::from_secs(3)).await;
    assert_eq!(exit, None);
    assert!(
        stderr.contains("ERROR: certificate expired at "),
        "{stderr:?}"
    );
    eventually("uma's termination", Duration::from_secs(10), async || {
        cluster
            .events(EventType::SessionTerminate)
            .await
            .into_iter()
            .any(|e| e.user.as_deref() == Some("uma"))
            .then_some(())
    })
    .await;
}
