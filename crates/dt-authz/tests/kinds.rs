//! Every kind × cluster mode × role mode × human/bot × trusted/untrusted × lock, through the
//! one decision function, against a model of DESIGN.md §6 and §10 written out here as
//! tables (not by calling the code under test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use dt_authz::{
    Check, Decision, DenyReason, Effect, Policy, Principal, Subject, Target, decide,
    kube_impersonation, may_list,
};
use dt_types::resource::{DeviceTrustMode, LockSpec, LockTarget, Metadata, Resource};
use dt_types::{AnyResource, Lock, Role, ServiceKind, UserName};

static ALICE: std::sync::LazyLock<UserName> =
    std::sync::LazyLock::new(|| UserName::parse("alice").unwrap());

/// The trusted device of the table's requests.
const DEV_1: &str = "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11";

fn role(name: &str, yaml_spec: &str) -> Role {
    let text = format!("kind: role\nversion: v7\nmetadata: {{name: {name}}}\nspec: {yaml_spec}");
    match AnyResource::parse_documents(&text).unwrap().remove(0) {
        AnyResource::Role(r) => r,
        _ => unreachable!(),
    }
}

fn lock(name: &str, target: LockTarget) -> Lock {
    Resource {
        kind: dt_types::Kind::Lock,
        version: "v2".into(),
        metadata: Metadata::named(name),
        spec: LockSpec {
            target,
            message: Some("go away".into()),
            ..Default::default()
        },
    }
}

const KINDS: [ServiceKind; 5] = [
    ServiceKind::Node,
    ServiceKind::Db,
    ServiceKind::Kube,
    ServiceKind::App,
    ServiceKind::Desktop,
];

/// A role that grants everything of `kind` (labels `*`, every name list `*`), with `mode`.
fn granting_role(kind: ServiceKind, mode: Option<&str>) -> Role {
    let allow = match kind {
        ServiceKind::Node => "{logins: [root], node_labels: {'*': '*'}}",
        ServiceKind::Db => "{db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}",
        ServiceKind::Kube => {
            "{kubernetes_labels: {'*': '*'}, kubernetes_groups: [viewers], kubernetes_users: ['*']}"
        }
        ServiceKind::App => "{app_labels: {'*': '*'}}",
        ServiceKind::Desktop => "{desktop_labels: {'*': '*'}, desktop_logins: [alice]}",
        ServiceKind::Mdm => unreachable!(),
    };
    let options = match mode {
        Some("unknown") | None => "{}".to_string(),
        Some(m) => format!("{{device_trust_mode: {m}}}"),
    };
    let mut r = role(
        "granting",
        &format!("{{options: {options}, allow: {allow}}}"),
    );
    // Unknown modes cannot be written through validation; set them directly.
    if mode == Some("unknown") {
        r.spec.options.device_trust_mode = Some(DeviceTrustMode::Unknown("someday".into()));
    }
    r
}

fn mode(m: &str) -> DeviceTrustMode {
    match m {
        "off" => DeviceTrustMode::Off,
        "optional" => DeviceTrustMode::Optional,
        "required" => DeviceTrustMode::Required,
        "required-for-humans" => DeviceTrustMode::RequiredForHumans,
        _ => DeviceTrustMode::Unknown(m.into()),
    }
}

/// DESIGN.md §6, as a table: does `mode` let this principal in with/without a trusted device?
fn model_mode_allows(mode: &str, bot: bool, trusted: bool) -> bool {
    match (mode, bot, trusted) {
        ("off" | "optional", _, _) => true,
        ("required", _, t) => t,
        ("required-for-humans", true, _) => true,
        ("required-for-humans", false, t) => t,
        _ => false, // unknown: fail closed
    }
}

fn target<'a>(
    kind: ServiceKind,
    labels: &'a BTreeMap<String, String>,
    groups: &'a [String],
) -> Target<'a> {
    match kind {
        ServiceKind::Node => Target::Ssh {
            node: "res1",
            labels,
            login: "root",
        },
        ServiceKind::Db => Target::Db {
            name: "res1",
            labels,
            db_user: "alice",
            db_name: "main",
        },
        ServiceKind::Kube => Target::Kube {
            name: "res1",
            labels,
            users: &[],
            groups,
        },
        ServiceKind::App => Target::App {
            name: "res1",
            labels,
        },
        ServiceKind::Desktop => Target::Desktop {
            name: "res1",
            labels,
            login: "alice",
        },
        ServiceKind::Mdm => unreachable!(),
    }
}

fn resource_lock(kind: ServiceKind, name: &str) -> LockTarget {
    let mut t = LockTarget::default();
    let slot = match kind {
        ServiceKind::Node => &mut t.node,
        ServiceKind::Db => &mut t.db,
        ServiceKind::Kube => &mut t.kube_cluster,
        ServiceKind::App => &mut t.app,
        ServiceKind::Desktop => &mut t.desktop,
        ServiceKind::Mdm => unreachable!(),
    };
    *slot = Some(name.into());
    t
}

#[test]
fn every_kind_mode_principal_device_and_lock() {
    let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let groups = vec!["viewers".to_string()];
    let modes = [
        "off",
        "optional",
        "required",
        "required-for-humans",
        "unknown",
    ];
    let role_modes = [
        None,
        Some("off"),
        Some("optional"),
        Some("required"),
        Some("required-for-humans"),
        Some("unknown"),
    ];
    let mut cases = 0;
    let dev = dt_types::DeviceId::parse(DEV_1).unwrap();
    let cred = dt_types::CredentialId::parse("cred-1").unwrap();
    for kind in KINDS {
        // (lock target, does it match a request for res1 by alice on dev-1?) — the device lock
        // matches only when the certificate carries the device.
        let lock_cases: Vec<(&str, Option<LockTarget>)> = vec![
            ("none", None),
            (
                "user",
                Some(LockTarget {
                    user: Some("alice".into()),
                    ..Default::default()
                }),
            ),
            (
                "other user",
                Some(LockTarget {
                    user: Some("bob".into()),
                    ..Default::default()
                }),
            ),
            (
                "device",
                Some(LockTarget {
                    device: Some(DEV_1.into()),
                    ..Default::default()
                }),
            ),
            ("this resource", Some(resource_lock(kind, "res1"))),
            ("other resource", Some(resource_lock(kind, "res2"))),
            (
                "role",
                Some(LockTarget {
                    role: Some("granting".into()),
                    ..Default::default()
                }),
            ),
        ];
        for cluster in modes {
            for role_mode in role_modes {
                for bot in [false, true] {
                    for trusted in [false, true] {
                        for (lock_name, lock_target) in &lock_cases {
                            let roles = [granting_role(kind, role_mode)];
                            let locks: Vec<Lock> =
                                lock_target.iter().map(|t| lock("l", t.clone())).collect();
                            let cluster_mode = mode(cluster);
                            let no_logins: [String; 0] = [];
                            let who = Subject {
                                user: &ALICE,
                                user_logins: &no_logins,
                                principal: if bot {
                                    Principal::Bot
                                } else {
                                    Principal::Human
                                },
                                device_verified: trusted,
                                device_id: trusted.then_some(&dev),
                                device_credential: trusted.then_some(&cred),
                                device_posture: None,
                            };
                            let policy = Policy {
                                cluster_mode: &cluster_mode,
                                roles: &roles,
                                locks: &locks,
                                now: time::OffsetDateTime::UNIX_EPOCH,
                            };
                            let got = decide(&who, &target(kind, &labels, &groups), &policy);

                            // The model.
                            let lock_hits = match *lock_name {
                                "user" | "this resource" | "role" => true,
                                "device" => trusted,
                                _ => false,
                            };
                            let cluster_applies = matches!(
                                kind,
                                ServiceKind::Node | ServiceKind::Db | ServiceKind::Kube
                            );
                            let ctx = format!(
                                "{kind} cluster={cluster} role={role_mode:?} bot={bot} trusted={trusted} lock={lock_name}"
                            );
                            if lock_hits {
                                assert!(
                                    matches!(
                                        got.decision,
                                        Decision::Deny(DenyReason::Locked { .. })
                                    ),
                                    "{ctx}: {got:?}"
                                );
                            } else if cluster_applies && !model_mode_allows(cluster, bot, trusted) {
                                assert!(
                                    matches!(
                                        got.decision,
                                        Decision::Deny(
                                            DenyReason::ClusterRequiresTrustedDevice
                                                | DenyReason::UnknownDeviceTrustMode(_)
                                        )
                                    ),
                                    "{ctx}: {got:?}"
                                );
                            } else if let Some(rm) = role_mode
                                && !model_mode_allows(rm, bot, trusted)
                            {
                                assert!(
                                    matches!(
                                        got.decision,
                                        Decision::Deny(
                                            DenyReason::RoleRequiresTrustedDevice { .. }
                                                | DenyReason::UnknownDeviceTrustMode(_)
                                        )
                                    ),
                                    "{ctx}: {got:?}"
                                );
                            } else {
                                assert_eq!(
                                    got.decision,
                                    Decision::Allow,
                                    "{ctx}: {:#?}",
                                    got.reasons
                                );
                            }
                            // Every decision explains itself: a deny names a denying check.
                            let denying = got.reasons.iter().any(|r| r.effect == Effect::Deny);
                            assert_eq!(denying, !got.is_allow(), "{ctx}: {:#?}", got.reasons);
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(cases, 5 * 5 * 6 * 2 * 2 * 7);
}

#[test]
fn any_granting_role_that_requires_a_device_requires_it() {
    let labels = BTreeMap::new();
    let no_logins: [String; 0] = [];
    for kind in KINDS {
        let roles = [granting_role(kind, None), {
            let mut r = granting_role(kind, Some("required"));
            r.metadata.name = "strict".into();
            r
        }];
        let groups = vec!["viewers".to_string()];
        let who = Subject {
            user: &ALICE,
            user_logins: &no_logins,
            principal: Principal::Human,
            device_verified: false,
            device_id: None,
            device_credential: None,
            device_posture: None,
        };
        let got = decide(
            &who,
            &target(kind, &labels, &groups),
            &Policy {
                cluster_mode: &DeviceTrustMode::Off,
                roles: &roles,
                locks: &[],
                now: time::OffsetDateTime::UNIX_EPOCH,
            },
        );
        assert_eq!(
            got.decision,
            Decision::Deny(DenyReason::RoleRequiresTrustedDevice {
                role: "strict".into()
            }),
            "{kind}"
        );
    }
}

fn human<'a>(logins: &'a [String]) -> Subject<'a> {
    Subject {
        user: &ALICE,
        user_logins: logins,
        principal: Principal::Human,
        device_verified: false,
        device_id: None,
        device_credential: None,
        device_posture: None,
    }
}

#[test]
fn names_and_labels_per_kind_deny_first() {
    let prod = BTreeMap::from([("env".to_string(), "prod-eu".to_string())]);
    let dev = BTreeMap::from([("env".to_string(), "dev".to_string())]);
    let logins = vec!["alice".to_string()];
    let who = human(&logins);
    let off = DeviceTrustMode::Off;
    let allow = |roles: &[Role], t: Target<'_>| {
        decide(
            &who,
            &t,
            &Policy {
                cluster_mode: &off,
                roles,
                locks: &[],
                now: time::OffsetDateTime::UNIX_EPOCH,
            },
        )
        .is_allow()
    };
    // Databases: labels by regex, db users and names, deny names.
    let dba = role(
        "dba",
        "{allow: {db_labels: {env: '^prod-.*$'}, db_users: [reader], db_names: [main]}}",
    );
    let no_admin = role("no-admin", "{deny: {db_users: [postgres]}}");
    let db = |labels, user, name| Target::Db {
        name: "pg",
        labels,
        db_user: user,
        db_name: name,
    };
    assert!(allow(
        std::slice::from_ref(&dba),
        db(&prod, "reader", "main")
    ));
    assert!(
        !allow(std::slice::from_ref(&dba), db(&prod, "reader", "other")),
        "db name not granted"
    );
    assert!(
        !allow(std::slice::from_ref(&dba), db(&prod, "alice", "main")),
        "db_users templates only expand in logins lists"
    );
    assert!(
        !allow(std::slice::from_ref(&dba), db(&dev, "reader", "main")),
        "regex must match"
    );
    let star = role(
        "star",
        "{allow: {db_labels: {'*': '*'}, db_users: ['*'], db_names: ['*']}}",
    );
    assert!(allow(
        std::slice::from_ref(&star),
        db(&dev, "postgres", "x")
    ));
    assert!(
        !allow(&[star, no_admin], db(&dev, "postgres", "x")),
        "deny db_users wins"
    );

    // Kubernetes: requested groups must be allowed.
    let kube = role(
        "kube",
        "{allow: {kubernetes_labels: {env: dev}, kubernetes_groups: [viewers]}}",
    );
    let viewers = vec!["viewers".to_string()];
    let admins = vec!["system:masters".to_string()];
    let k = |groups| Target::Kube {
        name: "k8s",
        labels: &dev,
        users: &[],
        groups,
    };
    assert!(allow(std::slice::from_ref(&kube), k(&viewers)));
    assert!(allow(std::slice::from_ref(&kube), k(&[])));
    assert!(
        !allow(std::slice::from_ref(&kube), k(&admins)),
        "a group the roles do not give"
    );
    let deny_all = role("deny-k8s", "{deny: {kubernetes_labels: {'*': '*'}}}");
    assert!(!allow(&[kube, deny_all], k(&viewers)));

    // Apps: labels only; desktops: labels and logins.
    let apps = role("apps", "{allow: {app_labels: {team: [a, b]}}}");
    let team_b = BTreeMap::from([("team".to_string(), "b".to_string())]);
    let team_c = BTreeMap::from([("team".to_string(), "c".to_string())]);
    assert!(allow(
        std::slice::from_ref(&apps),
        Target::App {
            name: "grafana",
            labels: &team_b
        }
    ));
    assert!(!allow(
        std::slice::from_ref(&apps),
        Target::App {
            name: "grafana",
            labels: &team_c
        }
    ));
    let desk = role(
        "desk",
        "{allow: {desktop_labels: {'*': '*'}, desktop_logins: ['{{internal.logins}}']}}",
    );
    let d = |login| Target::Desktop {
        name: "ws1",
        labels: &dev,
        login,
    };
    assert!(allow(std::slice::from_ref(&desk), d("alice")));
    assert!(!allow(std::slice::from_ref(&desk), d("root")));
    // A role for one kind grants nothing of another.
    assert!(!allow(
        &[desk],
        Target::App {
            name: "grafana",
            labels: &dev
        }
    ));
}

#[test]
fn regex_values_match_whole_values_only() {
    let r = role("r", "{allow: {app_labels: {env: '^prod|staging$'}}}");
    let l = |v: &str| BTreeMap::from([("env".to_string(), v.to_string())]);
    assert!(may_list(
        std::slice::from_ref(&r),
        ServiceKind::App,
        &l("prod")
    ));
    assert!(may_list(
        std::slice::from_ref(&r),
        ServiceKind::App,
        &l("staging")
    ));
    assert!(!may_list(
        std::slice::from_ref(&r),
        ServiceKind::App,
        &l("production")
    ));
    assert!(!may_list(
        std::slice::from_ref(&r),
        ServiceKind::App,
        &l("prestaging")
    ));
}

#[test]
fn role_validation_refuses_bad_selectors_and_unknown_fields() {
    let bad = [
        (
            "{allow: {db_labels: {env: '^prod-($'}}}",
            "invalid regular expression",
        ),
        (
            "{allow: {db_labels: {env: '^prod'}}}",
            "looks like a regular expression",
        ),
        (
            "{allow: {db_users: ['{{internal.db_users}}']}}",
            "unknown template",
        ),
        (
            "{allow: {kubernetes_groups: ['a b']}}",
            "invalid kubernetes_groups",
        ),
        ("{allow: {db_lables: {'*': '*'}}}", "unknown field"),
    ];
    for (spec, want) in bad {
        let text = format!("kind: role\nversion: v7\nmetadata: {{name: r}}\nspec: {spec}");
        let err = AnyResource::parse_documents(&text)
            .and_then(|mut docs| docs.remove(0).validate().map(|_| ()))
            .expect_err(spec)
            .to_string();
        assert!(err.contains(want), "{spec}: {err}");
    }
}

#[test]
fn listing_follows_labels_not_names_or_devices() {
    let r = role(
        "r",
        "{allow: {node_labels: {env: dev}, logins: [nobody]}, deny: {node_labels: {secret: 'yes'}}}",
    );
    let dev = BTreeMap::from([("env".to_string(), "dev".to_string())]);
    let secret = BTreeMap::from([
        ("env".to_string(), "dev".to_string()),
        ("secret".to_string(), "yes".to_string()),
    ]);
    let prod = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    assert!(may_list(std::slice::from_ref(&r), ServiceKind::Node, &dev));
    assert!(!may_list(
        std::slice::from_ref(&r),
        ServiceKind::Node,
        &secret
    ));
    assert!(!may_list(
        std::slice::from_ref(&r),
        ServiceKind::Node,
        &prod
    ));
    assert!(!may_list(std::slice::from_ref(&r), ServiceKind::Db, &dev));
}

#[test]
fn kube_identity_from_roles() {
    let labels = BTreeMap::new();
    let logins: [String; 0] = [];
    let who = human(&logins);
    let one = role(
        "one",
        "{allow: {kubernetes_labels: {'*': '*'}, kubernetes_users: [dev-sa], kubernetes_groups: [viewers, editors]}, deny: {kubernetes_groups: [editors]}}",
    );
    assert_eq!(
        kube_impersonation(&who, std::slice::from_ref(&one), &labels).unwrap(),
        ("dev-sa".to_string(), vec!["viewers".to_string()])
    );
    let none = role(
        "none",
        "{allow: {kubernetes_labels: {'*': '*'}, kubernetes_groups: [viewers]}}",
    );
    assert_eq!(
        kube_impersonation(&who, std::slice::from_ref(&none), &labels)
            .unwrap()
            .0,
        "alice",
        "no kubernetes_users: the devtrust user name"
    );
    let two = role(
        "two",
        "{allow: {kubernetes_labels: {'*': '*'}, kubernetes_users: [ops-sa]}}",
    );
    let err = kube_impersonation(&who, &[one, two], &labels)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dev-sa") && err.contains("ops-sa"), "{err}");
}

#[test]
fn explanations_name_roles_modes_and_locks() {
    let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let logins: [String; 0] = [];
    let who = human(&logins);
    let roles = [
        role(
            "access",
            "{allow: {logins: [root], node_labels: {'*': '*'}}}",
        ),
        role("prod-deny", "{deny: {node_labels: {env: prod}}}"),
    ];
    let got = decide(
        &who,
        &Target::Ssh {
            node: "s1",
            labels: &labels,
            login: "root",
        },
        &Policy {
            cluster_mode: &DeviceTrustMode::Optional,
            roles: &roles,
            locks: &[],
            now: time::OffsetDateTime::UNIX_EPOCH,
        },
    );
    assert!(!got.is_allow());
    let text: Vec<String> = got.reasons.iter().map(ToString::to_string).collect();
    assert!(
        got.reasons.iter().any(|r| r.check == Check::Role
            && r.role.as_deref() == Some("prod-deny")
            && r.effect == Effect::Deny
            && r.detail.contains("deny.node_labels")),
        "{text:#?}"
    );
    assert!(
        got.reasons.iter().any(|r| r.check == Check::ClusterMode),
        "{text:#?}"
    );
    // Apps: the cluster mode is reported as not applying.
    let app_roles = [role("apps", "{allow: {app_labels: {'*': '*'}}}")];
    let got = decide(
        &who,
        &Target::App {
            name: "a",
            labels: &labels,
        },
        &Policy {
            cluster_mode: &DeviceTrustMode::Required,
            roles: &app_roles,
            locks: &[],
            now: time::OffsetDateTime::UNIX_EPOCH,
        },
    );
    assert!(
        got.is_allow(),
        "the cluster-wide mode alone does not block an app"
    );
    assert!(
        got.reasons
            .iter()
            .any(|r| r.check == Check::ClusterMode && r.detail.contains("does not apply"))
    );
}
