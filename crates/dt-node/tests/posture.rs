//! Device posture rules on the SSH node, through the real stack: a real auth service, a
//! joined node, a real russh client with certificates of the cluster's user CA that carry the
//! posture extensions. Each rule passes and fails, with the cluster mode, several roles and
//! bots; each refusal is checked with its client message and its audit event.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use dt_node_testkit::*;
use dt_types::audit::EventType;
use dt_types::device::{AttestationType, OsType};
use dt_types::posture::DevicePosture;
use time::OffsetDateTime;

fn posture(att: AttestationType, os_version: &str, age: time::Duration) -> DevicePosture {
    DevicePosture {
        attestation_type: Some(att),
        os_type: Some(OsType::Linux),
        os_version: Some(os_version.into()),
        authenticated_at: Some(OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - age),
    }
}

fn good() -> DevicePosture {
    posture(
        AttestationType::TpmEkcertTrusted,
        "6.1.0-13-amd64",
        time::Duration::minutes(5),
    )
}

fn user(name: &str, roles: &[&str], bot: bool, p: Option<DevicePosture>) -> TestUser {
    let mut u = if bot {
        TestUser::bot(name, roles)
    } else {
        TestUser::human(name, roles)
    };
    if let Some(p) = p {
        let mut d = device();
        d.posture = p;
        u.device = Some(d);
    }
    u
}

async fn denial_for(cluster: &Cluster, name: &str) -> dt_types::audit::AuditEvent {
    eventually(
        &format!("access.denied for {name}"),
        std::time::Duration::from_secs(10),
        async || {
            cluster
                .events(EventType::AccessDenied)
                .await
                .into_iter()
                .rev()
                .find(|e| e.user.as_deref() == Some(name))
        },
    )
    .await
}

const ROLES: &str = "kind: role
version: v7
metadata: {name: hardware}
spec:
  options:
    device_trust_mode: required-for-humans
    device_trust: {attestation_types: [tpm_ekcert_trusted, secure_enclave]}
  allow: {logins: [root], node_labels: {'*': '*'}}
---
kind: role
version: v7
metadata: {name: new-kernel}
spec:
  options:
    device_trust: {min_os_version: {linux: '6.1', macos: '14.4'}}
  allow: {logins: [root], node_labels: {'*': '*'}}
---
kind: role
version: v7
metadata: {name: fresh}
spec:
  options:
    device_trust_mode: required
    device_trust: {max_auth_age: 8h}
  allow: {logins: [root], node_labels: {'*': '*'}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posture_rules_on_the_ssh_node() {
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    cluster.apply(ROLES).await;
    let names: Vec<String> = ["hardware", "new-kernel", "fresh"]
        .map(String::from)
        .to_vec();
    node.wait_view("posture roles", |v| {
        v.roles(&names).map(|r| r.len() == 3).unwrap_or(false)
    })
    .await;

    let software = posture(
        AttestationType::Software,
        "6.1.0-13-amd64",
        time::Duration::minutes(5),
    );
    let old_kernel = posture(
        AttestationType::TpmEkcertTrusted,
        "5.10.0-28-amd64",
        time::Duration::minutes(5),
    );
    let stale = posture(
        AttestationType::TpmEkcertTrusted,
        "6.1",
        time::Duration::hours(9),
    );
    let ok = "exit 0";
    // (user, roles, bot, device posture, None: allowed | Some((client message tail, rule)))
    type Row<'a> = (
        &'a str,
        &'a [&'a str],
        bool,
        Option<DevicePosture>,
        Option<(&'a str, &'a str)>,
    );
    let rows: Vec<Row<'_>> = vec![
        (
            "h-good",
            &["hardware", "new-kernel", "fresh"],
            false,
            Some(good()),
            None,
        ),
        (
            "h-software",
            &["hardware"],
            false,
            Some(software.clone()),
            Some((
                "role \"hardware\" requires a device that passes its posture rule attestation_types: the device key is attested as software, and only tpm_ekcert_trusted, secure_enclave is accepted: use a device enrolled with such a key",
                "attestation_types",
            )),
        ),
        (
            "h-old-kernel",
            &["new-kernel"],
            false,
            Some(old_kernel),
            Some((
                "role \"new-kernel\" requires a device that passes its posture rule min_os_version: the device runs Linux 5.10.0-28-amd64, and Linux 6.1 or later is needed: update the OS, then log in again (`dtsh login`)",
                "min_os_version",
            )),
        ),
        (
            "h-stale",
            &["fresh"],
            false,
            Some(stale.clone()),
            Some((
                "role \"fresh\" requires a device that passes its posture rule max_auth_age: the device authenticated 9h ago, and it must be within 8h: log in again (`dtsh login`) so the device authenticates",
                "max_auth_age",
            )),
        ),
        // Several roles: one failing rule of any granting role denies.
        (
            "h-mixed",
            &["new-kernel", "fresh"],
            false,
            Some(stale.clone()),
            Some(("posture rule max_auth_age", "max_auth_age")),
        ),
        // No device: the mode speaks first (implied `required` for rules without a mode).
        (
            "h-nodevice",
            &["new-kernel"],
            false,
            None,
            Some(("a trusted device is required", "")),
        ),
        // Bots: exempt under required-for-humans, held to the rules under required.
        (
            "b-software",
            &["hardware"],
            true,
            Some(software.clone()),
            None,
        ),
        ("b-nodevice", &["hardware"], true, None, None),
        (
            "b-stale",
            &["fresh"],
            true,
            Some(stale.clone()),
            Some(("posture rule max_auth_age", "max_auth_age")),
        ),
    ];
    for (name, roles, bot, p, want) in rows {
        let creds = cluster.user(&user(name, roles, bot, p.clone()));
        let r = node.run(&creds, "root", ok).await;
        match want {
            None => assert_eq!(r.unwrap().exit_status, Some(0), "{name}"),
            Some((tail, rule)) => {
                let msg = rejection(r);
                assert!(
                    msg.starts_with("access denied to root connecting to node1: ")
                        && msg.contains(tail),
                    "{name}: {msg}"
                );
                let e = denial_for(&cluster, name).await;
                let audit = e.message.clone().unwrap_or_default();
                if rule.is_empty() {
                    assert!(
                        audit.contains("role \"new-kernel\" requires a trusted device"),
                        "{name}: {audit}"
                    );
                } else {
                    assert!(audit.contains(tail), "{name}: {audit}");
                    assert!(audit.contains(&format!("posture rule {rule}")), "{audit}");
                }
                assert_eq!(e.device.is_some(), p.is_some(), "{name}");
            }
        }
    }

    // The cluster mode combines: required refuses no device with the cluster's message, and
    // a trusted device still answers to the roles' rules.
    cluster.set_cluster_mode("required").await;
    node.wait_mode("required").await;
    let none = cluster.user(&user("c-nodevice", &["fresh"], false, None));
    assert_eq!(
        rejection(node.run(&none, "root", ok).await),
        "unauthorized device"
    );
    let stale_c = cluster.user(&user("c-stale", &["fresh"], false, Some(stale)));
    assert!(rejection(node.run(&stale_c, "root", ok).await).contains("posture rule max_auth_age"));
    let good_c = cluster.user(&user("c-good", &["fresh"], false, Some(good())));
    assert_eq!(
        node.run(&good_c, "root", ok).await.unwrap().exit_status,
        Some(0)
    );
    // An augmented certificate from before posture existed carries none: fail closed.
    let old_cert = cluster.user(&user(
        "c-oldcert",
        &["fresh"],
        false,
        Some(DevicePosture::default()),
    ));
    assert!(
        rejection(node.run(&old_cert, "root", ok).await)
            .contains("the certificate does not say when the device authenticated")
    );
}
