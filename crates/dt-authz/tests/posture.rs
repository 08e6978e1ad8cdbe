//! Device posture rules (a role's `options.device_trust`) through the one decision: each rule
//! passes and fails, combined with the cluster mode, several roles, bots and every kind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use dt_authz::{
    Check, Decision, DenyReason, Effect, Explained, Policy, Principal, Subject, Target, decide,
};
use dt_types::device::{AttestationType, OsType};
use dt_types::posture::{DevicePosture, PostureRule};
use dt_types::resource::DeviceTrustMode;
use dt_types::{AnyResource, Role};
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

fn role(name: &str, yaml_spec: &str) -> Role {
    let text = format!("kind: role\nversion: v7\nmetadata: {{name: {name}}}\nspec: {yaml_spec}");
    match AnyResource::parse_documents(&text).unwrap().remove(0) {
        AnyResource::Role(r) => r,
        _ => unreachable!(),
    }
}

/// A role granting root on every node, every database and every app, with these options.
fn granting(name: &str, options: &str) -> Role {
    role(
        name,
        &format!(
            "{{options: {options}, allow: {{logins: [root], node_labels: {{'*': '*'}}, db_labels: {{'*': '*'}}, db_users: ['*'], db_names: ['*'], app_labels: {{'*': '*'}}}}}}"
        ),
    )
}

fn good_mac() -> DevicePosture {
    DevicePosture {
        attestation_type: Some(AttestationType::SecureEnclave),
        os_type: Some(OsType::Macos),
        os_version: Some("14.5".into()),
        authenticated_at: Some(NOW - time::Duration::hours(1)),
    }
}

struct Case<'a> {
    principal: Principal,
    device: Option<&'a DevicePosture>,
    cluster: DeviceTrustMode,
}

fn run(case: &Case<'_>, roles: &[Role], target: Target<'_>) -> Explained {
    let dev = dt_types::DeviceId::parse("5f2c6c39-3c4b-4a53-9d0c-3d2f3f0a9b11").unwrap();
    let cred = dt_types::CredentialId::parse("cred-1").unwrap();
    let alice = dt_types::UserName::parse("alice").unwrap();
    let who = Subject {
        user: &alice,
        user_logins: &[],
        principal: case.principal,
        device_verified: case.device.is_some(),
        device_id: case.device.map(|_| &dev),
        device_credential: case.device.map(|_| &cred),
        device_posture: case.device,
    };
    decide(
        &who,
        &target,
        &Policy {
            cluster_mode: &case.cluster,
            roles,
            locks: &[],
            now: NOW,
        },
    )
}

fn ssh(case: &Case<'_>, roles: &[Role]) -> Explained {
    static LABELS: BTreeMap<String, String> = BTreeMap::new();
    run(
        case,
        roles,
        Target::Ssh {
            node: "server1",
            labels: &LABELS,
            login: "root",
        },
    )
}

fn human(device: Option<&DevicePosture>) -> Case<'_> {
    Case {
        principal: Principal::Human,
        device,
        cluster: DeviceTrustMode::Optional,
    }
}

fn posture_denial(e: &Explained) -> Option<(String, PostureRule, String)> {
    match &e.decision {
        Decision::Deny(DenyReason::DevicePosture { role, rule, detail }) => {
            Some((role.clone(), *rule, detail.clone()))
        }
        _ => None,
    }
}

#[test]
fn each_rule_passes_and_fails_with_what_would_satisfy_it() {
    let good = good_mac();
    // (rules, device posture, Ok(()) or Err((rule, text the refusal must contain)))
    let mut software = good.clone();
    software.attestation_type = Some(AttestationType::Software);
    let mut old_os = good.clone();
    old_os.os_version = Some("14.3.1".into());
    let mut newer_minor = good.clone();
    newer_minor.os_version = Some("14.10".into()); // "14.10" < "14.4" as strings
    let mut garbage_os = good.clone();
    garbage_os.os_version = Some("sonoma".into());
    let mut linux = good.clone();
    linux.os_type = Some(OsType::Linux);
    linux.os_version = Some("5.10".into());
    let mut stale = good.clone();
    stale.authenticated_at = Some(NOW - time::Duration::hours(9));
    let mut skewed = good.clone();
    skewed.authenticated_at = Some(NOW + time::Duration::seconds(30));
    let old_cert = DevicePosture::default();

    let att = "{device_trust_mode: required, device_trust: {attestation_types: [tpm_ekcert_trusted, secure_enclave]}}";
    let osv = "{device_trust_mode: required, device_trust: {min_os_version: {macos: '14.4', windows: '10.0.22631'}}}";
    let age = "{device_trust_mode: required, device_trust: {max_auth_age: 8h}}";
    type Want = Result<(), (PostureRule, &'static str)>;
    let table: Vec<(&str, &DevicePosture, Want)> = vec![
        (att, &good, Ok(())),
        (
            att,
            &software,
            Err((
                PostureRule::AttestationTypes,
                "attested as software, and only tpm_ekcert_trusted, secure_enclave is accepted",
            )),
        ),
        (
            att,
            &old_cert,
            Err((PostureRule::AttestationTypes, "log in again")),
        ),
        (osv, &good, Ok(())),
        (osv, &newer_minor, Ok(())),
        (
            osv,
            &old_os,
            Err((
                PostureRule::MinOsVersion,
                "runs macOS 14.3.1, and macOS 14.4 or later is needed: update the OS",
            )),
        ),
        (
            osv,
            &garbage_os,
            Err((PostureRule::MinOsVersion, "not a version number")),
        ),
        // An OS the rule does not list has no minimum.
        (osv, &linux, Ok(())),
        (
            osv,
            &old_cert,
            Err((PostureRule::MinOsVersion, "log in again")),
        ),
        (age, &good, Ok(())),
        (age, &skewed, Ok(())),
        (
            age,
            &stale,
            Err((
                PostureRule::MaxAuthAge,
                "authenticated 9h ago, and it must be within 8h: log in again",
            )),
        ),
        (
            age,
            &old_cert,
            Err((PostureRule::MaxAuthAge, "log in again")),
        ),
    ];
    for (options, posture, want) in table {
        let roles = [granting("posture", options)];
        let got = ssh(&human(Some(posture)), &roles);
        match want {
            Ok(()) => assert!(got.is_allow(), "{options} {posture:?}: {:#?}", got.reasons),
            Err((rule, text)) => {
                let (r, got_rule, detail) = posture_denial(&got)
                    .unwrap_or_else(|| panic!("{options} {posture:?}: {:?}", got.decision));
                assert_eq!((r.as_str(), got_rule), ("posture", rule));
                assert!(detail.contains(text), "{detail}");
                let shown = got.decision.clone();
                let Decision::Deny(reason) = shown else {
                    unreachable!()
                };
                assert!(
                    reason.to_string().starts_with(
                        "role \"posture\" requires a device that passes its posture rule"
                    ),
                    "{reason}"
                );
            }
        }
    }
}

#[test]
fn no_device_fails_the_mode_first_and_rules_imply_required() {
    // Rules without a mode: the role requires a trusted device (of bots too).
    let roles = [granting("implied", "{device_trust: {max_auth_age: 8h}}")];
    for principal in [Principal::Human, Principal::Bot] {
        let case = Case {
            principal,
            device: None,
            cluster: DeviceTrustMode::Off,
        };
        assert_eq!(
            ssh(&case, &roles).decision,
            Decision::Deny(DenyReason::RoleRequiresTrustedDevice {
                role: "implied".into()
            }),
            "{principal:?}"
        );
    }
    let good = good_mac();
    let got = ssh(&human(Some(&good)), &roles);
    assert!(got.is_allow());
    assert!(
        got.reasons
            .iter()
            .any(|r| r.detail.contains("(implied by its posture rules)")),
        "{:#?}",
        got.reasons
    );
}

#[test]
fn bots_are_exempt_only_under_required_for_humans() {
    let mut stale = good_mac();
    stale.authenticated_at = Some(NOW - time::Duration::days(2));
    let rules = "device_trust: {max_auth_age: 8h, attestation_types: [tpm_ekcert_trusted]}";
    let rfh = [granting(
        "rfh",
        &format!("{{device_trust_mode: required-for-humans, {rules}}}"),
    )];
    let req = [granting(
        "req",
        &format!("{{device_trust_mode: required, {rules}}}"),
    )];
    let bot = |device| Case {
        principal: Principal::Bot,
        device,
        cluster: DeviceTrustMode::Optional,
    };
    // required-for-humans: a bot needs no device, with or without one the rules don't bind it.
    assert!(ssh(&bot(None), &rfh).is_allow());
    let got = ssh(&bot(Some(&stale)), &rfh);
    assert!(got.is_allow());
    assert!(
        got.reasons
            .iter()
            .any(|r| r.detail.contains("posture rules: not applied")),
        "{:#?}",
        got.reasons
    );
    // A human under the same role is held to them.
    assert_eq!(
        posture_denial(&ssh(&human(Some(&stale)), &rfh)).map(|d| d.1),
        Some(PostureRule::AttestationTypes)
    );
    // required: bots too.
    assert_eq!(
        posture_denial(&ssh(&bot(Some(&stale)), &req)).map(|d| d.1),
        Some(PostureRule::AttestationTypes)
    );
    assert!(matches!(
        ssh(&bot(None), &req).decision,
        Decision::Deny(DenyReason::RoleRequiresTrustedDevice { .. })
    ));
}

#[test]
fn cluster_mode_and_several_roles() {
    let good = good_mac();
    let mut stale = good.clone();
    stale.authenticated_at = Some(NOW - time::Duration::hours(9));
    let plain = granting("plain", "{}");
    let strict = granting("strict", "{device_trust: {max_auth_age: 8h}}");
    let loose = granting("loose", "{device_trust: {max_auth_age: 24h}}");
    // A role with rules that grants nothing here does not count.
    let elsewhere = role(
        "elsewhere",
        "{options: {device_trust: {max_auth_age: 1m}}, allow: {logins: [root], node_labels: {env: prod}}}",
    );

    // Any granting role's failing rule denies, whatever the others allow.
    let both = [plain.clone(), strict.clone()];
    let got = ssh(&human(Some(&stale)), &both);
    assert_eq!(posture_denial(&got).map(|d| d.0), Some("strict".into()));
    assert!(ssh(&human(Some(&good)), &both).is_allow());
    let two_rules = [loose.clone(), strict.clone()];
    assert_eq!(
        posture_denial(&ssh(&human(Some(&stale)), &two_rules)).map(|d| d.0),
        Some("strict".into())
    );
    let with_elsewhere = [plain.clone(), elsewhere];
    assert!(ssh(&human(Some(&stale)), &with_elsewhere).is_allow());
    assert!(ssh(&human(None), &with_elsewhere).is_allow());

    // Cluster required: no device is refused by the cluster first; a device that passes the
    // cluster still answers to the role's rules.
    for cluster in [
        DeviceTrustMode::Required,
        DeviceTrustMode::RequiredForHumans,
    ] {
        let case = Case {
            principal: Principal::Human,
            device: None,
            cluster: cluster.clone(),
        };
        assert_eq!(
            ssh(&case, &both).decision,
            Decision::Deny(DenyReason::ClusterRequiresTrustedDevice)
        );
        let case = Case {
            device: Some(&stale),
            ..case
        };
        assert_eq!(
            posture_denial(&ssh(&case, &both)).map(|d| d.1),
            Some(PostureRule::MaxAuthAge)
        );
    }
    // The cluster mode has no posture rules of its own: without role rules, any trusted
    // device passes.
    let case = Case {
        principal: Principal::Human,
        device: Some(&stale),
        cluster: DeviceTrustMode::Required,
    };
    assert!(ssh(&case, std::slice::from_ref(&plain)).is_allow());
}

#[test]
fn every_kind_applies_the_rules_and_explains_each_one() {
    let mut bad = good_mac();
    bad.os_version = Some("13.6".into());
    let roles = [granting(
        "posture",
        "{device_trust: {attestation_types: [secure_enclave], min_os_version: {macos: '14.4'}, max_auth_age: 8h}}",
    )];
    let labels = BTreeMap::new();
    let targets = [
        Target::Ssh {
            node: "n",
            labels: &labels,
            login: "root",
        },
        Target::Db {
            name: "pg1",
            labels: &labels,
            db_user: "alice",
            db_name: "main",
        },
        Target::App {
            name: "wiki",
            labels: &labels,
        },
    ];
    for target in targets {
        let got = run(&human(Some(&bad)), &roles, target);
        assert_eq!(
            posture_denial(&got).map(|d| d.1),
            Some(PostureRule::MinOsVersion),
            "{}",
            target.kind()
        );
        // One line per rule, each with its result.
        let lines: Vec<(Effect, &str)> = got
            .reasons
            .iter()
            .filter(|r| r.check == Check::RoleMode && r.detail.starts_with("device_trust."))
            .map(|r| (r.effect, r.detail.as_str()))
            .collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(lines[0].0, Effect::None);
        assert!(lines[0].1.starts_with("device_trust.attestation_types: "));
        assert_eq!(lines[1].0, Effect::Deny);
        assert!(lines[1].1.starts_with("device_trust.min_os_version: "));
        assert_eq!(lines[2].0, Effect::None);
        assert!(lines[2].1.starts_with("device_trust.max_auth_age: "));
        assert!(run(&human(Some(&good_mac())), &roles, target).is_allow());
    }
}
