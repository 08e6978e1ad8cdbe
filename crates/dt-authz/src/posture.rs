//! Device posture rules (a role's `options.device_trust`): the device key's attestation, the
//! OS version at authentication, how long ago the device authenticated.
//!
//! Each rule is checked against what the certificate says ([`DevicePosture`]), never against
//! what a device claims now: the auth service wrote these values when the device proved
//! itself. A rule that needs a value the certificate does not carry fails (fail closed), and
//! every failure says what would satisfy the rule.

use std::time::Duration;

use dt_types::DurationStr;
use dt_types::posture::{DevicePosture, PostureRule, PostureRules, Version};
use time::OffsetDateTime;

/// The outcome of one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostureCheck {
    pub rule: PostureRule,
    pub passed: bool,
    /// What the device is and, on failure, what would satisfy the rule.
    pub detail: String,
}

const LOG_IN_AGAIN: &str = "log in again (`dtsh login`) so the device authenticates";

/// Every rule the role sets, in a fixed order (attestation, OS version, age).
pub fn check_posture(
    rules: &PostureRules,
    posture: Option<&DevicePosture>,
    now: OffsetDateTime,
) -> Vec<PostureCheck> {
    static NONE: DevicePosture = DevicePosture {
        attestation_type: None,
        os_type: None,
        os_version: None,
        authenticated_at: None,
    };
    let p = posture.unwrap_or(&NONE);
    let mut out = Vec::new();
    if !rules.attestation_types.is_empty() {
        out.push(attestation(rules, p));
    }
    if !rules.min_os_version.is_empty() {
        out.push(os_version(rules, p));
    }
    if let Some(max) = rules.max_auth_age {
        out.push(auth_age(max, p, now));
    }
    out
}

fn pass(rule: PostureRule, detail: String) -> PostureCheck {
    PostureCheck {
        rule,
        passed: true,
        detail,
    }
}

fn fail(rule: PostureRule, detail: String) -> PostureCheck {
    PostureCheck {
        rule,
        passed: false,
        detail,
    }
}

fn attestation(rules: &PostureRules, p: &DevicePosture) -> PostureCheck {
    let rule = PostureRule::AttestationTypes;
    let accepted: Vec<&str> = rules.attestation_types.iter().map(|a| a.as_str()).collect();
    let accepted = accepted.join(", ");
    match p.attestation_type {
        None => fail(
            rule,
            format!(
                "the certificate does not say how the device key is attested (accepted: {accepted}); {LOG_IN_AGAIN}"
            ),
        ),
        Some(a) if rules.attestation_types.contains(&a) => pass(
            rule,
            format!("the device key is attested as {a} (accepted: {accepted})"),
        ),
        Some(a) => fail(
            rule,
            format!(
                "the device key is attested as {a}, and only {accepted} is accepted: use a device enrolled with such a key"
            ),
        ),
    }
}

fn os_version(rules: &PostureRules, p: &DevicePosture) -> PostureCheck {
    let rule = PostureRule::MinOsVersion;
    let Some(os) = p.os_type else {
        return fail(
            rule,
            format!("the certificate does not say the device's OS; {LOG_IN_AGAIN}"),
        );
    };
    let Some(min) = rules.min_os_version.get(&os) else {
        return pass(rule, format!("no minimum version for {os}"));
    };
    // Stored roles are validated; a minimum that still does not parse came from another
    // build: no device satisfies it (fail closed).
    let Some(min_v) = Version::parse_strict(min) else {
        return fail(
            rule,
            format!("the role's minimum {os} version {min:?} is not a version; fix the role"),
        );
    };
    let Some(have) = &p.os_version else {
        return fail(
            rule,
            format!(
                "the certificate does not carry the device's OS version ({os} {min} or later is needed); {LOG_IN_AGAIN}"
            ),
        );
    };
    match Version::parse_lenient(have) {
        None => fail(
            rule,
            format!(
                "the device reports {os} version {have:?}, which is not a version number; {os} {min} or later is needed"
            ),
        ),
        Some(v) if v >= min_v => pass(rule, format!("{os} {have} is at least {min}")),
        Some(_) => fail(
            rule,
            format!(
                "the device runs {os} {have}, and {os} {min} or later is needed: update the OS, then log in again (`dtsh login`)"
            ),
        ),
    }
}

fn auth_age(max: DurationStr, p: &DevicePosture, now: OffsetDateTime) -> PostureCheck {
    let rule = PostureRule::MaxAuthAge;
    let Some(at) = p.authenticated_at else {
        return fail(
            rule,
            format!(
                "the certificate does not say when the device authenticated (it must be within {max}); {LOG_IN_AGAIN}"
            ),
        );
    };
    // A time slightly ahead of this clock (skew between servers) counts as just now.
    let secs = (now - at).whole_seconds().max(0).unsigned_abs();
    // Shown to people: whole minutes once it is an hour or more ("9h", not "9h0m7s").
    let shown = DurationStr(Duration::from_secs(if secs >= 3600 {
        secs / 60 * 60
    } else {
        secs
    }));
    let age = DurationStr(Duration::from_secs(secs));
    if age.0 <= max.0 {
        pass(
            rule,
            format!("the device authenticated {shown} ago, within {max}"),
        )
    } else {
        fail(
            rule,
            format!(
                "the device authenticated {shown} ago, and it must be within {max}: {LOG_IN_AGAIN}"
            ),
        )
    }
}
