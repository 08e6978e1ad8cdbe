//! Every access case through the real stack: a real auth service, a joined node, a real
//! russh client. Each denial is checked with its exact client message and its audit event.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use dt_ca::{CaKind, CertAuthority};
use dt_client::ssh_client::SshClientError;
use dt_node_testkit::*;
use dt_types::audit::EventType;
use time::OffsetDateTime;

const MODES: [&str; 4] = ["off", "optional", "required", "required-for-humans"];

/// DESIGN.md §6: may this principal in this mode get in with or without a device?
fn design_allows(mode: &str, bot: bool, device: bool) -> bool {
    match mode {
        "off" | "optional" => true,
        "required" => device,
        "required-for-humans" => device || bot,
        _ => false,
    }
}

fn row_user(table: &str, mode: &str, bot: bool, device: bool, roles: &[&str]) -> TestUser {
    let name = format!(
        "{table}-{mode}-{}-{}",
        if bot { "bot" } else { "human" },
        if device { "device" } else { "nodevice" }
    );
    let u = if bot {
        TestUser::bot(&name, roles)
    } else {
        TestUser::human(&name, roles)
    };
    if device { u.with_device() } else { u }
}

async fn denial_event(cluster: &Cluster, user: &str) -> dt_types::audit::AuditEvent {
    eventually(
        &format!("access.denied for {user}"),
        std::time::Duration::from_secs(10),
        async || {
            cluster
                .events(EventType::AccessDenied)
                .await
                .into_iter()
                .rev()
                .find(|e| e.user.as_deref() == Some(user))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_checks() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let host_ca_line = cluster.srv.host_ca.ssh_public_key_openssh();
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();

    // The baseline works.
    let ok = cluster.user(&TestUser::human("alice", &["access"]));
    assert_eq!(
        node.run(&ok, "root", "true").await.unwrap().exit_status,
        Some(0)
    );

    let other_ca =
        CertAuthority::generate("test-cluster", CaKind::User, now - time::Duration::days(1))
            .unwrap();
    let host_cert_as_user = {
        // A host certificate of this very cluster (the host CA), offered as a user's.
        let mut creds = cluster.user(&TestUser::human("mallory-host", &["access"]));
        let key = dt_ca::ClientKey::generate().unwrap();
        creds.cert = cluster
            .srv
            .host_ca
            .issue_ssh_host_cert(
                &key.ssh_public_key().unwrap(),
                "root",
                &["root".into()],
                now + time::Duration::hours(1),
            )
            .unwrap();
        creds.key = std::sync::Arc::new(
            russh::keys::PrivateKey::from_openssh(key.ssh_private_key_openssh().unwrap()).unwrap(),
        );
        creds
    };
    let mut expired = TestUser::human("mallory-expired", &["access"]);
    expired.not_before = now - time::Duration::hours(2);
    expired.not_after = now - time::Duration::hours(1);
    let mut not_yet = TestUser::human("mallory-early", &["access"]);
    not_yet.not_before = now + time::Duration::hours(1);
    not_yet.not_after = now + time::Duration::hours(2);
    let mut wrong_principal = TestUser::human("mallory-principal", &["access"]);
    wrong_principal.logins = vec!["alice".into()];

    // (case, credentials, login, audit message the node records; None: russh refuses
    // before the handler runs, as it checks validity dates itself).
    let cases: Vec<(&str, dt_client::ssh_client::ClientCreds, &str, Option<&str>)> = vec![
        (
            "certificate from another CA",
            issue(
                &other_ca,
                &host_ca_line,
                &TestUser::human("mallory-ca", &["access"]),
            ),
            "root",
            Some(
                "certificate refused: certificate was not issued by this user ca (certificate key id \"mallory-ca\", not trusted)",
            ),
        ),
        ("expired", cluster.user(&expired), "root", None),
        ("not yet valid", cluster.user(&not_yet), "root", None),
        (
            "wrong principal",
            cluster.user(&wrong_principal),
            "root",
            Some(
                "certificate refused: certificate is not valid for login \"root\" (its principals: alice) (certificate key id \"mallory-principal\", not trusted)",
            ),
        ),
        (
            "host certificate presented as a user certificate",
            host_cert_as_user,
            "root",
            Some(
                "certificate refused: certificate cannot be used here: not a user certificate (certificate key id \"root\", not trusted)",
            ),
        ),
        (
            "device extensions on a certificate the CA did not issue (forged)",
            issue(
                &other_ca,
                &host_ca_line,
                &TestUser::human("mallory-forged", &["access", "editor"]).with_device(),
            ),
            "root",
            Some(
                "certificate refused: certificate was not issued by this user ca (certificate key id \"mallory-forged\", not trusted)",
            ),
        ),
    ];
    for (case, creds, login, audit) in cases {
        match node.connect(&creds, login).await {
            Err(SshClientError::AuthRefused { login: l }) => assert_eq!(l, login, "{case}"),
            Err(other) => panic!("{case}: expected an authentication refusal, got {other}"),
            Ok(_) => panic!("{case}: the node accepted the certificate"),
        }
        if let Some(msg) = audit {
            let e = cluster.wait_event(EventType::AccessDenied, msg).await;
            assert_eq!(e.message.as_deref(), Some(msg), "{case}");
            assert!(!e.success);
            assert_eq!(e.login.as_deref(), Some(login), "{case}");
            assert_eq!(e.node.as_deref(), Some("node1"), "{case}");
            assert_eq!(
                e.user, None,
                "{case}: an unverified certificate names nobody"
            );
        }
    }
}

/// Cluster-wide mode × human/bot × device/no device: the full table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_table() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    for mode in MODES {
        cluster.set_cluster_mode(mode).await;
        node.wait_mode(mode).await;
        for bot in [false, true] {
            for device in [false, true] {
                let u = row_user("cluster", mode, bot, device, &["access"]);
                let creds = cluster.user(&u);
                let r = node.run(&creds, "root", "exit 0").await;
                if design_allows(mode, bot, device) {
                    assert_eq!(r.unwrap().exit_status, Some(0), "{}", u.name);
                } else {
                    assert_eq!(rejection(r), "unauthorized device", "{}", u.name);
                    let e = denial_event(&cluster, &u.name).await;
                    assert_eq!(
                        e.message.as_deref(),
                        Some("unauthorized device: the cluster requires a trusted device"),
                        "{}",
                        u.name
                    );
                    assert_eq!(e.login.as_deref(), Some("root"));
                    assert_eq!(e.node.as_deref(), Some("node1"));
                    assert_eq!(e.device.is_some(), device);
                }
            }
        }
    }
}

/// A role's device_trust_mode × human/bot × device/no device: the full table, and the
/// role-based message (not the cluster-wide one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_mode_table() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    for mode in MODES {
        let role = format!("dt-{mode}");
        cluster
            .apply(&format!(
                "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{device_trust_mode: \"{mode}\"}}\n  allow:\n    logins: ['{{{{internal.logins}}}}']\n    node_labels: {{'*': '*'}}\n"
            ))
            .await;
        node.wait_view(&format!("role {role}"), |v| {
            v.roles(std::slice::from_ref(&role))
                .map(|r| r.len() == 1)
                .unwrap_or(false)
        })
        .await;
        for bot in [false, true] {
            for device in [false, true] {
                let u = row_user("role", mode, bot, device, &[role.as_str()]);
                let creds = cluster.user(&u);
                let r = node.run(&creds, "root", "exit 0").await;
                if design_allows(mode, bot, device) {
                    assert_eq!(r.unwrap().exit_status, Some(0), "{}", u.name);
                } else {
                    assert_eq!(
                        rejection(r),
                        "access denied to root connecting to node1: a trusted device is required",
                        "{}",
                        u.name
                    );
                    let e = denial_event(&cluster, &u.name).await;
                    assert_eq!(
                        e.message.as_deref(),
                        Some(format!("access denied to root connecting to node1: role {role:?} requires a trusted device").as_str())
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_required_versus_cluster_required() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let both = cluster.user(&TestUser::human(
        "carol",
        &["access", "require-trusted-device"],
    ));
    // Role-based only.
    assert_eq!(
        rejection(node.run(&both, "root", "true").await),
        "access denied to root connecting to node1: a trusted device is required"
    );
    // Cluster-wide too: the cluster's message comes first.
    cluster.set_cluster_mode("required").await;
    node.wait_mode("required").await;
    assert_eq!(
        rejection(node.run(&both, "root", "true").await),
        "unauthorized device"
    );
    // A role that does not require a device, under a cluster that does.
    let plain = cluster.user(&TestUser::human("dave", &["access"]));
    assert_eq!(
        rejection(node.run(&plain, "root", "true").await),
        "unauthorized device"
    );
    // With a device, both pass.
    let trusted = cluster
        .user(&TestUser::human("carol", &["access", "require-trusted-device"]).with_device());
    assert_eq!(
        node.run(&trusted, "root", "true")
            .await
            .unwrap()
            .exit_status,
        Some(0)
    );
    let e = cluster.wait_event(EventType::SessionStart, "").await;
    let d = e.device.expect("the session event carries the device");
    assert_eq!(d.device_id, device().device_id);
    assert_eq!(d.asset_tag, device().asset_tag);
    assert_eq!(d.credential_id, device().credential_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_mode_in_storage_denies() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let with_device = cluster.user(&TestUser::human("erin", &["access"]).with_device());
    let bot = cluster.user(&TestUser::bot("robot", &["access"]).with_device());
    // Cluster-wide, written by a (hypothetical) newer server.
    cluster.set_cluster_mode("sometimes").await;
    node.wait_mode("sometimes").await;
    for creds in [&with_device, &bot] {
        assert_eq!(
            rejection(node.run(creds, "root", "true").await),
            "unknown device trust mode \"sometimes\": denying"
        );
    }
    cluster
        .wait_event(
            EventType::AccessDenied,
            "unknown device trust mode \"sometimes\"",
        )
        .await;
    // In a role.
    cluster.set_cluster_mode("optional").await;
    node.wait_mode("optional").await;
    cluster
        .put_raw(
            "/resources/role/future",
            r#"{"kind":"role","version":"v7","metadata":{"name":"future"},"spec":{"options":{"device_trust_mode":"later"},"allow":{"logins":["root"],"node_labels":{"*":"*"}}}}"#,
        )
        .await;
    node.wait_view("role future", |v| {
        v.roles(&["future".into()])
            .map(|r| r.len() == 1)
            .unwrap_or(false)
    })
    .await;
    let u = cluster.user(&TestUser::human("frank", &["future"]).with_device());
    assert_eq!(
        rejection(node.run(&u, "root", "true").await),
        "unknown device trust mode \"later\": denying"
    );
    // A role this node cannot read at all fails closed for whoever holds it.
    cluster
        .put_raw(
            "/resources/role/garbled",
            r#"{"kind":"role","version":"v9","metadata":{"name":"garbled"},"spec":{"hologram":true}}"#,
        )
        .await;
    node.wait_view("role garbled", |v| v.roles(&["garbled".into()]).is_err())
        .await;
    let g = cluster.user(&TestUser::human("gina", &["access", "garbled"]).with_device());
    assert_eq!(
        rejection(node.run(&g, "root", "true").await),
        "this access point cannot read role \"garbled\"; denying until it can"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_labels_deny_first() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[("env", "test")]).await;
    cluster
        .apply(
            "kind: role\nversion: v7\nmetadata: {name: prod-only}\nspec:\n  allow:\n    logins: [root]\n    node_labels: {env: prod}\n---\nkind: role\nversion: v7\nmetadata: {name: no-test}\nspec:\n  deny:\n    node_labels: {env: test}\n",
        )
        .await;
    node.wait_view("roles", |v| {
        v.roles(&["prod-only".into(), "no-test".into()])
            .map(|r| r.len() == 2)
            .unwrap_or(false)
    })
    .await;
    let prod = cluster.user(&TestUser::human("henry", &["prod-only"]));
    assert_eq!(
        rejection(node.run(&prod, "root", "true").await),
        "access denied to root connecting to node1"
    );
    let e = denial_event(&cluster, "henry").await;
    assert_eq!(
        e.message.as_deref(),
        Some("access denied to root connecting to node1")
    );
    // `access` allows everything, but a deny on the label wins.
    let denied = cluster.user(&TestUser::human("ivan", &["access", "no-test"]));
    assert_eq!(
        rejection(node.run(&denied, "root", "true").await),
        "access denied to root connecting to node1"
    );
    // A login the certificate names but no role grants.
    let mut u = TestUser::human("judy", &["prod-only"]);
    u.logins = vec!["root".into(), "daemon".into()];
    assert_eq!(
        rejection(node.run(&cluster.user(&u), "daemon", "true").await),
        "access denied to daemon connecting to node1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_deny_new_sessions() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let kim = cluster.user(&TestUser::human("kim", &["access"]).with_device());
    assert_eq!(
        node.run(&kim, "root", "true").await.unwrap().exit_status,
        Some(0)
    );
    let dev = device().device_id;
    for (target, shown) in [
        (format!("device: {dev}"), format!("Device:\"{dev}\"")),
        ("user: kim".to_string(), "User:\"kim\"".to_string()),
        ("role: access".to_string(), "Role:\"access\"".to_string()),
        ("login: root".to_string(), "Login:\"root\"".to_string()),
        ("node: node1".to_string(), "Node:\"node1\"".to_string()),
    ] {
        let name = format!("lock-{}", target.split(':').next().unwrap());
        cluster
            .apply(&format!("kind: lock\nversion: v2\nmetadata: {{name: {name}}}\nspec:\n  target: {{{target}}}\n"))
            .await;
        node.wait_view(&name, |v| {
            v.active_locks(OffsetDateTime::now_utc())
                .map(|l| l.len() == 1)
                .unwrap_or(false)
        })
        .await;
        let want = format!("lock targeting {shown} is in force");
        assert_eq!(rejection(node.run(&kim, "root", "true").await), want);
        let e = cluster.wait_event(EventType::AccessDenied, &want).await;
        assert_eq!(e.lock.as_deref(), Some(name.as_str()));
        assert_eq!(
            e.message.as_deref(),
            Some(format!("{want} (lock {name})").as_str())
        );
        cluster.delete("lock", &name).await;
        node.wait_view("no locks", |v| {
            v.active_locks(OffsetDateTime::now_utc())
                .map(|l| l.is_empty())
                .unwrap_or(false)
        })
        .await;
        assert_eq!(
            node.run(&kim, "root", "true").await.unwrap().exit_status,
            Some(0)
        );
    }
    // A lock's message reaches the client.
    cluster
        .apply(&format!(
            "kind: lock\nversion: v2\nmetadata: {{name: stolen}}\nspec:\n  target: {{device: {dev}}}\n  message: reported stolen\n"
        ))
        .await;
    node.wait_view("lock stolen", |v| {
        v.active_locks(OffsetDateTime::now_utc())
            .map(|l| l.len() == 1)
            .unwrap_or(false)
    })
    .await;
    assert_eq!(
        rejection(node.run(&kim, "root", "true").await),
        format!("lock targeting Device:\"{dev}\" is in force: reported stolen")
    );
    // Someone else's device is unaffected.
    let other = cluster.user(&TestUser::human("lee", &["access"]));
    assert_eq!(
        node.run(&other, "root", "true").await.unwrap().exit_status,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_of_a_session() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let u = cluster.user(&TestUser::human("mia", &["access"]).with_device());
    let out = node.run(&u, "root", "echo audited; exit 9").await.unwrap();
    assert_eq!(out.exit_status, Some(9));
    let start = cluster.wait_event(EventType::SessionStart, "exec").await;
    let exec = eventually(
        "exec event",
        std::time::Duration::from_secs(10),
        async || cluster.events(EventType::Exec).await.into_iter().next(),
    )
    .await;
    let end = cluster.wait_event(EventType::SessionEnd, "").await;
    for e in [&start, &exec, &end] {
        assert_eq!(e.user.as_deref(), Some("mia"));
        assert_eq!(e.login.as_deref(), Some("root"));
        assert_eq!(e.node.as_deref(), Some("node1"));
        assert_eq!(e.session_id, start.session_id);
        let d = e.device.as_ref().unwrap();
        assert_eq!(
            (
                d.device_id.as_str(),
                d.asset_tag.as_str(),
                d.credential_id.as_str()
            ),
            (
                "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11",
                "C00AA0AAAA0A",
                "cred-1"
            )
        );
        assert!(e.remote_addr.as_deref().unwrap().starts_with("127.0.0.1:"));
    }
    assert_eq!(exec.command.as_deref(), Some("echo audited; exit 9"));
    assert_eq!(end.exit_code, Some(9));
    // Without a device, no device in the events.
    let plain = cluster.user(&TestUser::human("noah", &["access"]));
    node.run(&plain, "root", "true").await.unwrap();
    let e = eventually(
        "noah's session",
        std::time::Duration::from_secs(10),
        async || {
            cluster
                .events(EventType::SessionEnd)
                .await
                .into_iter()
                .find(|e| e.user.as_deref() == Some("noah"))
        },
    )
    .await;
    assert!(e.device.is_none());
    // The audit chain still verifies with the node's events in it.
    assert!(cluster.srv.audit.verify_chain().await.unwrap().is_ok());
}
