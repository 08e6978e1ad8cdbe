//! Pure access decisions. Every function here takes everything it needs as arguments and
//! returns a [`Decision`]; nothing reads storage, the clock or the network.
//!
//! Guarantees:
//! - **Deny before allow**: a deny rule, deny login or deny label match wins over any allow.
//! - **Fail closed**: an unknown device-trust mode (e.g. written by a newer server) denies.
//! - **One place**: the auth service, SSH nodes and the OpenSSH helper all call the same
//!   functions, so a decision cannot differ between access paths.

use std::fmt;
use std::time::Duration;

use dt_types::posture::PostureRule;
use dt_types::resource::{DeviceTrustMode, LockTarget, Role, RoleConditions, RoleOptions};
use dt_types::{Lock, ServiceKind, Verb};

mod access;
mod posture;
pub use access::{
    Check, Effect, Explained, KubeIdentityError, Policy, Reason, Subject, Target, TargetBuf,
    check_app, check_db, check_desktop, check_kube, check_ssh, decide, kube_impersonation,
    labels_match, may_list,
};
pub use posture::{PostureCheck, check_posture};

/// Default and upper bound for certificate TTL when no role says otherwise.
pub const DEFAULT_MAX_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No role grants the verb on the resource, or a deny rule matches.
    NotPermitted { resource: String, verb: Verb },
    /// The cluster-wide mode requires a trusted device and the identity has none.
    ClusterRequiresTrustedDevice,
    /// A granting role requires a trusted device and the identity has none.
    RoleRequiresTrustedDevice { role: String },
    /// A granting role requires a device that passes its posture rules, and the device
    /// fails `rule`. `detail` says what the device is and what would satisfy the rule.
    DevicePosture {
        role: String,
        rule: PostureRule,
        detail: String,
    },
    /// A mode this build does not know: fail closed.
    UnknownDeviceTrustMode(String),
    /// No role allows this login on this node (or a deny matched).
    LoginNotAllowed { login: String, node: String },
    /// No role allows this database, Kubernetes cluster, app or desktop access (or a deny
    /// matched). `what` describes the request (`database "pg" as db user "alice" ...`).
    ResourceNotAllowed {
        kind: ServiceKind,
        resource: String,
        what: String,
    },
    /// A lock is in force.
    Locked {
        lock: String,
        target: String,
        message: Option<String>,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotPermitted { resource, verb } => {
                write!(
                    f,
                    "access denied: your roles do not allow {verb} on {resource}"
                )
            }
            DenyReason::ClusterRequiresTrustedDevice => f.write_str("unauthorized device"),
            DenyReason::RoleRequiresTrustedDevice { role } => {
                write!(f, "role {role:?} requires a trusted device")
            }
            DenyReason::DevicePosture { role, rule, detail } => {
                write!(
                    f,
                    "role {role:?} requires a device that passes its posture rule {rule}: {detail}"
                )
            }
            DenyReason::UnknownDeviceTrustMode(m) => {
                write!(f, "unknown device trust mode {m:?}: denying")
            }
            DenyReason::LoginNotAllowed { login, node } => {
                write!(f, "access denied to {login} connecting to {node}")
            }
            DenyReason::ResourceNotAllowed { what, .. } => {
                write!(f, "access denied to {what}: your roles do not allow it")
            }
            DenyReason::Locked { target, .. } => {
                write!(f, "lock targeting {target} is in force")
            }
        }
    }
}

/// Who is asking: a human or a bot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    Human,
    Bot,
}

/// The cluster or a role's device-trust requirement applied to one identity.
/// `device_verified` means the identity's certificates carry a device that was authenticated.
pub fn check_device(mode: &DeviceTrustMode, device_verified: bool, who: Principal) -> Decision {
    match (mode, device_verified, who) {
        (DeviceTrustMode::Off | DeviceTrustMode::Optional, _, _) => Decision::Allow,
        (DeviceTrustMode::RequiredForHumans, _, Principal::Bot) => Decision::Allow,
        (DeviceTrustMode::Required | DeviceTrustMode::RequiredForHumans, true, _) => {
            Decision::Allow
        }
        (DeviceTrustMode::Required | DeviceTrustMode::RequiredForHumans, false, _) => {
            Decision::Deny(DenyReason::ClusterRequiresTrustedDevice)
        }
        (DeviceTrustMode::Unknown(m), _, _) => {
            Decision::Deny(DenyReason::UnknownDeviceTrustMode(m.clone()))
        }
    }
}

fn rule_matches(cond: &RoleConditions, resource: &str, verb: Verb) -> bool {
    cond.rules.iter().any(|r| {
        r.resources.iter().any(|x| x == "*" || x == resource)
            && r.verbs.iter().any(|v| v == "*" || v == verb.as_str())
    })
}

/// RBAC on API calls: deny rules first, then any allow rule.
pub fn check_rule(roles: &[Role], resource: &str, verb: Verb) -> Decision {
    let denied = roles
        .iter()
        .any(|r| rule_matches(&r.spec.deny, resource, verb));
    let allowed = roles
        .iter()
        .any(|r| rule_matches(&r.spec.allow, resource, verb));
    if allowed && !denied {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NotPermitted {
            resource: resource.to_string(),
            verb,
        })
    }
}

/// Deny rules only: refuses when a deny rule matches, whatever the allow rules say. For the
/// paths that need no allow rule (auto-enrollment, reading one's own devices) but must still
/// honour an admin's explicit deny.
pub fn check_deny_rules(roles: &[Role], resource: &str, verb: Verb) -> Decision {
    if roles
        .iter()
        .any(|r| rule_matches(&r.spec.deny, resource, verb))
    {
        Decision::Deny(DenyReason::NotPermitted {
            resource: resource.to_string(),
            verb,
        })
    } else {
        Decision::Allow
    }
}

/// Expand `{{internal.logins}}` with the user's login traits; other text is literal.
pub(crate) fn expand(logins: &[String], user_logins: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for l in logins {
        if l.trim() == "{{internal.logins}}" {
            out.extend(user_logins.iter().cloned());
        } else if !l.contains("{{") {
            out.push(l.clone());
        }
        // Unknown template variables expand to nothing: a typo must not grant access.
    }
    out
}

/// The logins (SSH principals) a set of roles grants: allowed minus denied, sorted, unique.
pub fn allowed_logins(roles: &[Role], user_logins: &[String]) -> Vec<String> {
    let denied: Vec<String> = roles
        .iter()
        .flat_map(|r| expand(&r.spec.deny.logins, user_logins))
        .collect();
    let mut allowed: Vec<String> = roles
        .iter()
        .flat_map(|r| expand(&r.spec.allow.logins, user_logins))
        .filter(|l| !denied.contains(l))
        .collect();
    allowed.sort();
    allowed.dedup();
    allowed
}

/// Certificate TTL cap: the smallest `max_session_ttl` among the roles (12h default).
pub fn max_session_ttl(roles: &[Role]) -> Duration {
    roles
        .iter()
        .filter_map(|r| r.spec.options.max_session_ttl.map(|d| d.0))
        .min()
        .unwrap_or(DEFAULT_MAX_SESSION_TTL)
}

/// Do live sessions end when the certificate expires? When the cluster or any of the
/// identity's roles says so.
pub fn disconnect_expired_cert(cluster: bool, roles: &[Role]) -> bool {
    cluster || roles.iter().any(|r| r.spec.options.disconnect_expired_cert)
}

/// The device-trust mode a role applies: its `device_trust_mode`, or `required` when it sets
/// posture rules (`options.device_trust`) and no mode.
pub fn role_mode(options: &RoleOptions) -> Option<&DeviceTrustMode> {
    static IMPLIED: DeviceTrustMode = DeviceTrustMode::Required;
    match (&options.device_trust_mode, options.device_trust.is_empty()) {
        (Some(mode), _) => Some(mode),
        (None, false) => Some(&IMPLIED),
        (None, true) => None,
    }
}

/// Does this user need a trusted device for anything (cluster mode or any role)?
pub fn device_required(cluster_mode: &DeviceTrustMode, roles: &[Role], who: Principal) -> bool {
    std::iter::once(cluster_mode)
        .chain(roles.iter().filter_map(|r| role_mode(&r.spec.options)))
        .any(|m| !check_device(m, false, who).is_allow())
}

/// The identity a lock is matched against. `None` fields match no lock field.
#[derive(Clone, Debug, Default)]
pub struct LockContext<'a> {
    pub user: Option<&'a str>,
    pub roles: &'a [&'a str],
    pub login: Option<&'a str>,
    pub node: Option<&'a str>,
    pub device: Option<&'a str>,
    /// The credential id the certificate's device extension names.
    pub device_credential: Option<&'a str>,
    pub db: Option<&'a str>,
    pub kube_cluster: Option<&'a str>,
    pub app: Option<&'a str>,
    pub desktop: Option<&'a str>,
}

/// A lock matches when every field it sets matches the context.
pub fn lock_matches(target: &LockTarget, ctx: &LockContext<'_>) -> bool {
    if target.is_empty() {
        return false;
    }
    let eq = |want: &Option<String>, have: Option<&str>| match want {
        None => true,
        Some(w) => have == Some(w.as_str()),
    };
    eq(&target.user, ctx.user)
        && eq(&target.login, ctx.login)
        && eq(&target.node, ctx.node)
        && eq(&target.device, ctx.device)
        && eq(&target.device_credential, ctx.device_credential)
        && eq(&target.db, ctx.db)
        && eq(&target.kube_cluster, ctx.kube_cluster)
        && eq(&target.app, ctx.app)
        && eq(&target.desktop, ctx.desktop)
        && match &target.role {
            None => true,
            Some(r) => ctx.roles.contains(&r.as_str()),
        }
}

/// The first lock in force for this context (callers pass only unexpired locks).
pub fn first_matching_lock<'l>(locks: &'l [Lock], ctx: &LockContext<'_>) -> Option<&'l Lock> {
    locks.iter().find(|l| lock_matches(&l.spec.target, ctx))
}

pub fn locked(lock: &Lock) -> Decision {
    Decision::Deny(DenyReason::Locked {
        lock: lock.name().to_string(),
        target: lock.spec.target.to_string(),
        message: lock.spec.message.clone(),
    })
}

#[cfg(test)]
mod tests;
