use super::*;
use dt_types::AnyResource;
use dt_types::resource::{LockSpec, Metadata, Resource};
use std::collections::BTreeMap;

/// The trusted device of [`ssh`]'s requests.
const DEV_1: &str = "5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11";

fn role(yaml_spec: &str) -> Role {
    let text = format!("kind: role\nversion: v7\nmetadata: {{name: r}}\nspec: {yaml_spec}");
    match AnyResource::parse_documents(&text).unwrap().remove(0) {
        AnyResource::Role(r) => r,
        _ => unreachable!(),
    }
}

fn named(mut r: Role, name: &str) -> Role {
    r.metadata.name = name.into();
    r
}

#[test]
fn device_table_covers_every_mode_principal_and_device() {
    use DeviceTrustMode::*;
    let unknown = Unknown("sometimes".into());
    // (mode, human/bot, device verified) -> allowed?
    let table = [
        (Off, Principal::Human, false, true),
        (Off, Principal::Human, true, true),
        (Off, Principal::Bot, false, true),
        (Off, Principal::Bot, true, true),
        (Optional, Principal::Human, false, true),
        (Optional, Principal::Human, true, true),
        (Optional, Principal::Bot, false, true),
        (Optional, Principal::Bot, true, true),
        (Required, Principal::Human, false, false),
        (Required, Principal::Human, true, true),
        (Required, Principal::Bot, false, false),
        (Required, Principal::Bot, true, true),
        (RequiredForHumans, Principal::Human, false, false),
        (RequiredForHumans, Principal::Human, true, true),
        (RequiredForHumans, Principal::Bot, false, true),
        (RequiredForHumans, Principal::Bot, true, true),
        (unknown.clone(), Principal::Human, true, false),
        (unknown.clone(), Principal::Bot, true, false),
        (unknown.clone(), Principal::Human, false, false),
        (unknown, Principal::Bot, false, false),
    ];
    for (mode, who, dev, want) in table {
        assert_eq!(
            check_device(&mode, dev, who).is_allow(),
            want,
            "{mode} {who:?} {dev}"
        );
    }
}

#[test]
fn rules_deny_before_allow_and_wildcards() {
    let admin = role("{allow: {rules: [{resources: ['*'], verbs: ['*']}]}}");
    let no_delete = role("{deny: {rules: [{resources: [device], verbs: [delete]}]}}");
    let reader = role("{allow: {rules: [{resources: [device], verbs: [read, list]}]}}");
    assert!(check_rule(std::slice::from_ref(&admin), "device", Verb::Delete).is_allow());
    assert!(!check_rule(&[admin.clone(), no_delete.clone()], "device", Verb::Delete).is_allow());
    assert!(check_rule(&[admin.clone(), no_delete.clone()], "device", Verb::Read).is_allow());
    // Deny rules alone: no allow needed, any deny refuses.
    assert!(check_deny_rules(&[], "device", Verb::Delete).is_allow());
    assert!(
        !check_deny_rules(&[admin.clone(), no_delete.clone()], "device", Verb::Delete).is_allow()
    );
    assert!(check_deny_rules(&[admin, no_delete], "device", Verb::Enroll).is_allow());
    assert!(check_rule(std::slice::from_ref(&reader), "device", Verb::List).is_allow());
    assert!(!check_rule(std::slice::from_ref(&reader), "device", Verb::Enroll).is_allow());
    assert!(!check_rule(&[reader], "user", Verb::Read).is_allow());
    assert!(
        !check_rule(&[], "user", Verb::Read).is_allow(),
        "no roles: nothing allowed"
    );
}

#[test]
fn logins_expand_traits_and_deny_wins() {
    let r = role(
        "{allow: {logins: ['{{internal.logins}}', ubuntu, '{{internal.typo}}']}, deny: {logins: [root]}}",
    );
    let logins = allowed_logins(&[r], &["root".into(), "alice".into()]);
    assert_eq!(logins, vec!["alice", "ubuntu"]);
}

#[test]
fn ttl_is_the_smallest_cap() {
    let a = role("{options: {max_session_ttl: 8h}}");
    let b = role("{options: {max_session_ttl: 30h}}");
    assert_eq!(max_session_ttl(&[a, b]), Duration::from_secs(8 * 3600));
    assert_eq!(max_session_ttl(&[]), DEFAULT_MAX_SESSION_TTL);
}

fn ssh<'a>(
    roles: &'a [Role],
    labels: &'a BTreeMap<String, String>,
    mode: &'a DeviceTrustMode,
    device: bool,
    who: Principal,
    locks: &'a [Lock],
) -> Decision {
    static LOGINS: [String; 0] = [];
    let dev = dt_types::DeviceId::parse(DEV_1).unwrap();
    let cred = dt_types::CredentialId::parse("cred-1").unwrap();
    let alice = dt_types::UserName::parse("alice").unwrap();
    let who = Subject {
        user: &alice,
        user_logins: &LOGINS,
        principal: who,
        device_verified: device,
        device_id: if device { Some(&dev) } else { None },
        device_credential: if device { Some(&cred) } else { None },
        device_posture: None,
    };
    let policy = Policy {
        cluster_mode: mode,
        roles,
        locks,
        now: time::OffsetDateTime::UNIX_EPOCH,
    };
    check_ssh(&who, "server1", labels, "root", &policy).decision
}

#[test]
fn ssh_role_versus_cluster_requirement() {
    let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let access = named(
        role("{allow: {logins: [root], node_labels: {'*': '*'}}}"),
        "access",
    );
    let rtd = named(
        role(
            "{options: {device_trust_mode: required}, allow: {logins: [root], node_labels: {'*': '*'}}}",
        ),
        "require-trusted-device",
    );
    let opt = DeviceTrustMode::Optional;
    let req = DeviceTrustMode::Required;
    // plain access role, optional cluster: allowed without a device
    assert!(
        ssh(
            std::slice::from_ref(&access),
            &labels,
            &opt,
            false,
            Principal::Human,
            &[]
        )
        .is_allow()
    );
    // role requires: denied without device, with the role named
    let both = [access.clone(), rtd];
    assert_eq!(
        ssh(&both, &labels, &opt, false, Principal::Human, &[]),
        Decision::Deny(DenyReason::RoleRequiresTrustedDevice {
            role: "require-trusted-device".into()
        })
    );
    assert!(ssh(&both, &labels, &opt, true, Principal::Human, &[]).is_allow());
    // cluster requires
    assert_eq!(
        ssh(
            std::slice::from_ref(&access),
            &labels,
            &req,
            false,
            Principal::Human,
            &[]
        ),
        Decision::Deny(DenyReason::ClusterRequiresTrustedDevice)
    );
    // unknown role mode denies even with a device
    let weird = named(
        role(
            "{options: {device_trust_mode: required}, allow: {logins: [root], node_labels: {'*': '*'}}}",
        ),
        "weird",
    );
    let mut weird = weird;
    weird.spec.options.device_trust_mode = Some(DeviceTrustMode::Unknown("later".into()));
    assert!(!ssh(&[weird], &labels, &opt, true, Principal::Human, &[]).is_allow());
}

#[test]
fn ssh_labels_and_logins() {
    let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
    let dev_only = role("{allow: {logins: [root], node_labels: {env: [dev, staging]}}}");
    let opt = DeviceTrustMode::Optional;
    assert!(matches!(
        ssh(&[dev_only], &labels, &opt, false, Principal::Human, &[]),
        Decision::Deny(DenyReason::LoginNotAllowed { .. })
    ));
    let prod = role("{allow: {logins: [root], node_labels: {env: prod}}}");
    let deny_prod = role("{deny: {node_labels: {env: prod}}}");
    assert!(
        ssh(
            std::slice::from_ref(&prod),
            &labels,
            &opt,
            false,
            Principal::Human,
            &[]
        )
        .is_allow()
    );
    assert!(
        !ssh(
            &[prod, deny_prod],
            &labels,
            &opt,
            false,
            Principal::Human,
            &[]
        )
        .is_allow()
    );
}

fn lock(target: LockTarget) -> Lock {
    Resource {
        kind: dt_types::Kind::Lock,
        version: "v2".into(),
        metadata: Metadata::named("l1"),
        spec: LockSpec {
            target,
            message: Some("stolen".into()),
            ..Default::default()
        },
    }
}

#[test]
fn locks_match_every_target_kind_and_all_set_fields() {
    let roles = ["access"];
    let ctx = LockContext {
        user: Some("alice"),
        roles: &roles,
        login: Some("root"),
        node: Some("server1"),
        device: Some("dev-1"),
        device_credential: Some("cred-1"),
        ..Default::default()
    };
    let t = |f: fn(&mut LockTarget)| {
        let mut t = LockTarget::default();
        f(&mut t);
        t
    };
    assert!(lock_matches(&t(|t| t.user = Some("alice".into())), &ctx));
    assert!(lock_matches(&t(|t| t.role = Some("access".into())), &ctx));
    assert!(lock_matches(&t(|t| t.login = Some("root".into())), &ctx));
    assert!(lock_matches(&t(|t| t.node = Some("server1".into())), &ctx));
    assert!(lock_matches(&t(|t| t.device = Some("dev-1".into())), &ctx));
    assert!(!lock_matches(&t(|t| t.device = Some("dev-2".into())), &ctx));
    // A revoked credential of the device: only certificates through that credential.
    let revoked = LockTarget {
        device: Some("dev-1".into()),
        device_credential: Some("cred-1".into()),
        ..Default::default()
    };
    assert!(lock_matches(&revoked, &ctx));
    let reenrolled = LockContext {
        device_credential: Some("cred-2"),
        ..ctx.clone()
    };
    assert!(!lock_matches(&revoked, &reenrolled));
    assert!(!lock_matches(&t(|t| t.user = Some("bob".into())), &ctx));
    // all set fields must match
    let both = LockTarget {
        user: Some("alice".into()),
        node: Some("other".into()),
        ..Default::default()
    };
    assert!(!lock_matches(&both, &ctx));
    // a device lock does not match plain (device-less) access
    let no_dev = LockContext {
        device: None,
        ..ctx.clone()
    };
    assert!(!lock_matches(
        &t(|t| t.device = Some("dev-1".into())),
        &no_dev
    ));
    assert!(
        !lock_matches(&LockTarget::default(), &ctx),
        "empty lock matches nothing"
    );
}

#[test]
fn ssh_lock_message() {
    let labels = BTreeMap::new();
    let access = role("{allow: {logins: [root], node_labels: {'*': '*'}}}");
    let l = lock(LockTarget {
        device: Some(DEV_1.into()),
        ..Default::default()
    });
    let d = ssh(
        std::slice::from_ref(&access),
        &labels,
        &DeviceTrustMode::Optional,
        true,
        Principal::Human,
        std::slice::from_ref(&l),
    );
    let Decision::Deny(reason) = d else {
        panic!("lock ignored")
    };
    assert_eq!(
        reason.to_string(),
        format!("lock targeting Device:{DEV_1:?} is in force")
    );
    // same user without the device: not locked
    assert!(
        ssh(
            &[access],
            &labels,
            &DeviceTrustMode::Optional,
            false,
            Principal::Human,
            &[l]
        )
        .is_allow()
    );
}

#[test]
fn device_required_by_role_or_cluster() {
    let rtd = role("{options: {device_trust_mode: required}}");
    assert!(device_required(
        &DeviceTrustMode::Optional,
        &[rtd],
        Principal::Human
    ));
    assert!(!device_required(
        &DeviceTrustMode::Optional,
        &[],
        Principal::Human
    ));
    assert!(device_required(
        &DeviceTrustMode::Required,
        &[],
        Principal::Bot
    ));
    assert!(!device_required(
        &DeviceTrustMode::RequiredForHumans,
        &[],
        Principal::Bot
    ));
}
