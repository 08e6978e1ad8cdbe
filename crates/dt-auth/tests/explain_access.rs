//! Issue 12: `ExplainAccess` (behind `dtctl access explain`) for every kind of resource,
//! with an enrolled device, without one, and refused to callers who may not read users and
//! roles. Real auth service over loopback mTLS with SQLite; resources come from real
//! heartbeats of joined services.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod support;

use dt_proto::v1 as pb;
use dt_proto::v1::access_service_client::AccessServiceClient;
use dt_proto::v1::explain_access_request::{Device, Target};
use dt_proto::v1::explain_access_response::Decision;
use support::services::*;
use support::*;
use tonic::Code;
use tonic::transport::Channel;

async fn explain(
    ch: &Channel,
    user: &str,
    device: Option<Device>,
    target: Target,
) -> Result<pb::ExplainAccessResponse, tonic::Status> {
    AccessServiceClient::new(ch.clone())
        .explain_access(pb::ExplainAccessRequest {
            user: user.into(),
            device,
            target: Some(target),
        })
        .await
        .map(|r| r.into_inner())
}

fn decision(r: &pb::ExplainAccessResponse) -> Decision {
    Decision::try_from(r.decision).unwrap()
}

fn lines(r: &pb::ExplainAccessResponse) -> String {
    r.reasons
        .iter()
        .map(|x| format!("{}: {}\n", x.role, x.detail))
        .collect()
}

#[test]
fn every_kind_is_explained_by_the_one_decision() {
    block_on(body())
}

async fn body() {
    let cl = shared().await;
    let tag = unique("e");
    let (db_name, app_name, desk_name, kube_name) = (
        format!("pg-{tag}"),
        format!("wiki-{tag}"),
        format!("desk-{tag}"),
        format!("k8s-{tag}"),
    );
    for (kind, name) in [
        ("db", &db_name),
        ("app", &app_name),
        ("desktop", &desk_name),
        ("kube", &kube_name),
    ] {
        let mut s = join(cl, kind, &unique(kind)).await;
        heartbeat(&mut s, &[], vec![served(kind, name, &[("env", "prod")])])
            .await
            .unwrap();
    }
    let role = unique("everything-trusted");
    cl.role(
        &role,
        "{options: {device_trust_mode: required}, allow: {db_labels: {env: prod}, db_names: [main], db_users: [alice], app_labels: {env: prod}, desktop_labels: {env: prod}, desktop_logins: [alice], kubernetes_labels: {env: prod}, kubernetes_groups: [viewers]}}",
    )
    .await;
    // The explained user (needs `enroll` to enroll its own device in this harness).
    let user = cl.user("expl", &[&role, "device-enroll"]).await;
    let dev = cl.enrolled_device(&user).await;
    let trusted = || Some(Device::DeviceId(dev.id.clone()));
    let db = |db_user: &str| {
        Target::Db(pb::DbAccess {
            name: db_name.clone(),
            db_user: db_user.into(),
            db_name: "main".into(),
        })
    };

    // On the enrolled device, the role grants the database; the answer names the device.
    let r = explain(&cl.admin, &user.name, trusted(), db("alice"))
        .await
        .unwrap();
    assert_eq!(decision(&r), Decision::Allow, "{}", lines(&r));
    let d = r.device.clone().unwrap();
    assert_eq!(
        (d.state.as_str(), d.device_id.as_str()),
        ("trusted", dev.id.as_str())
    );
    assert!(!d.credential_id.is_empty());
    assert_eq!(
        r.resource_labels.get("env").map(String::as_str),
        Some("prod")
    );
    // Another database user is not granted; without the device, the role's mode denies.
    let r = explain(&cl.admin, &user.name, trusted(), db("postgres"))
        .await
        .unwrap();
    assert_eq!(decision(&r), Decision::Deny, "{}", lines(&r));
    let r = explain(
        &cl.admin,
        &user.name,
        Some(Device::NoDevice(true)),
        db("alice"),
    )
    .await
    .unwrap();
    assert_eq!(decision(&r), Decision::Deny);
    assert!(r.denial.contains("trusted device"), "{}", r.denial);
    assert!(lines(&r).contains(&format!("{role}: ")), "{}", lines(&r));

    // Apps, desktops and Kubernetes, with and without the device.
    let app = Target::App(pb::AppAccess {
        name: app_name.clone(),
    });
    let desk = |login: &str| {
        Target::Desktop(pb::DesktopAccess {
            name: desk_name.clone(),
            login: login.into(),
        })
    };
    let kube = |group: &str| {
        Target::Kube(pb::KubeAccess {
            name: kube_name.clone(),
            users: vec![],
            groups: vec![group.into()],
        })
    };
    for (target, allow) in [
        (app.clone(), true),
        (desk("alice"), true),
        (desk("root"), false),
        (kube("viewers"), true),
        (kube("system:masters"), false),
    ] {
        let r = explain(&cl.admin, &user.name, trusted(), target.clone())
            .await
            .unwrap();
        let want = if allow {
            Decision::Allow
        } else {
            Decision::Deny
        };
        assert_eq!(decision(&r), want, "{}: {}", r.target, lines(&r));
        // No device given: explained as untrusted, and said so.
        let r = explain(&cl.admin, &user.name, None, target).await.unwrap();
        assert_eq!(decision(&r), Decision::Deny, "{}", lines(&r));
        assert_eq!(r.device.as_ref().unwrap().state, "unspecified");
        assert!(lines(&r).contains("no device given"), "{}", lines(&r));
    }

    // A lock on the app denies even on the trusted device.
    cl.lock(
        dt_types::LockTarget {
            app: Some(app_name.clone()),
            ..Default::default()
        },
        "app maintenance",
    )
    .await;
    let r = explain(&cl.admin, &user.name, trusted(), app)
        .await
        .unwrap();
    assert_eq!(decision(&r), Decision::Deny, "{}", lines(&r));
    assert!(r.denial.contains("lock"), "{}", r.denial);

    // Refusals: a resource that is not online names what is; an unenrolled device is no
    // trusted device; a caller without `read` on users and roles may not ask.
    let err = explain(
        &cl.admin,
        &user.name,
        None,
        Target::Db(pb::DbAccess {
            name: "nowhere".into(),
            db_user: "alice".into(),
            db_name: "main".into(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("not online") && err.message().contains(&db_name),
        "{err:?}"
    );
    // A user name no user can have is refused as such, before any lookup.
    assert_status(
        explain(&cl.admin, "mdm/jamf", None, db("alice")).await,
        Code::InvalidArgument,
        "user name contains '/'",
    );
    let (unenrolled, _) = cl
        .add_device(
            dt_types::device::OsType::Linux,
            &unique("UNENR"),
            None,
            false,
        )
        .await;
    assert_status(
        explain(
            &cl.admin,
            &user.name,
            Some(Device::DeviceId(unenrolled)),
            db("alice"),
        )
        .await,
        Code::FailedPrecondition,
        "is not enrolled",
    );
    assert_status(
        explain(&user.ch, &user.name, None, db("alice")).await,
        Code::PermissionDenied,
        "ask an admin",
    );
    let reader = unique("reader");
    cl.role(
        &reader,
        "{allow: {rules: [{resources: [user, role], verbs: [read]}]}}",
    )
    .await;
    let auditor = cl.user("auditor", &[&reader]).await;
    explain(&auditor.ch, &user.name, None, db("alice"))
        .await
        .unwrap();
    // Naming a device also needs `read` on devices.
    assert_status(
        explain(&auditor.ch, &user.name, trusted(), db("alice")).await,
        Code::PermissionDenied,
        "device",
    );
}
