//! The access decision every access point makes, over its live view of the cluster, without
//! I/O: [`decide`] for a new connection (or channel, request, query...), [`ending`] for a
//! session already running.
//!
//! [`decide`] first checks what the view itself can answer: the certificate has not expired
//! since the connection was authenticated, the view is loaded and readable, and under
//! `locking_mode: strict` it is fresh. Then one call of [`dt_authz::decide`] for the kind of
//! resource (locks, the cluster's device-trust mode where it applies, roles deny first, every
//! granting role's device-trust mode). The caller has verified the certificate against the
//! user CA: a device counts only when it carried all three device values.

use std::collections::BTreeMap;
use std::time::Duration;

use dt_authz::{Decision, DenyReason, Explained, Principal, Target};
use dt_ca::Identity;
use dt_types::ServiceKind;
use dt_types::audit::DeviceInfo;
use dt_types::resource::LockingMode;
use time::OffsetDateTime;

use crate::view::{ClusterView, ViewError};

/// The wording clients recognize, shared with them through `dt-client`.
pub use dt_client::access_point::{ACCESS_DENIED_PREFIX, TRUSTED_DEVICE_SUFFIX};

/// Why access was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The pure decision said no.
    Policy(DenyReason),
    /// The view cannot support a decision.
    View(ViewError),
    /// `locking_mode: strict` and the lock view is older than allowed.
    StaleLocks { age: Option<Duration> },
    /// The access point cannot serve this (e.g. a login that does not exist on the host).
    Local(String),
    /// The certificate expired after the connection was authenticated.
    CertExpired { not_after: OffsetDateTime },
}

impl Denial {
    /// What the client is told.
    pub fn description(&self, target: &Target<'_>) -> String {
        match self {
            Denial::Policy(DenyReason::RoleRequiresTrustedDevice { .. }) => match target {
                Target::Ssh { node, login, .. } => {
                    format!(
                        "{ACCESS_DENIED_PREFIX}{login} connecting to {node}: {TRUSTED_DEVICE_SUFFIX}"
                    )
                }
                other => format!(
                    "{ACCESS_DENIED_PREFIX}{}: {TRUSTED_DEVICE_SUFFIX}",
                    other.describe()
                ),
            },
            Denial::Policy(DenyReason::Locked {
                target, message, ..
            }) => lock_text(target, message.as_deref()),
            Denial::Policy(posture @ DenyReason::DevicePosture { .. }) => match target {
                Target::Ssh { node, login, .. } => {
                    format!("{ACCESS_DENIED_PREFIX}{login} connecting to {node}: {posture}")
                }
                other => format!("{ACCESS_DENIED_PREFIX}{}: {posture}", other.describe()),
            },
            Denial::Policy(other) => other.to_string(),
            Denial::View(e) => e.to_string(),
            Denial::StaleLocks { .. } => format!(
                "this {} cannot confirm the cluster's locks (locking_mode: strict); try again shortly",
                access_point_noun(target.kind())
            ),
            Denial::Local(why) => why.clone(),
            Denial::CertExpired { not_after } => format!(
                "certificate expired at {}; log in again (`dtsh login`)",
                not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| not_after.unix_timestamp().to_string())
            ),
        }
    }

    /// What the audit log records (more detail than the client gets).
    pub fn audit_message(&self, target: &Target<'_>) -> String {
        match self {
            Denial::Policy(DenyReason::RoleRequiresTrustedDevice { role }) => match target {
                Target::Ssh { node, login, .. } => format!(
                    "access denied to {login} connecting to {node}: role {role:?} requires a trusted device"
                ),
                other => format!(
                    "access denied to {}: role {role:?} requires a trusted device",
                    other.describe()
                ),
            },
            Denial::Policy(DenyReason::ClusterRequiresTrustedDevice) => {
                "unauthorized device: the cluster requires a trusted device".into()
            }
            Denial::Policy(DenyReason::Locked { lock, .. }) => {
                format!("{} (lock {lock})", self.description(target))
            }
            Denial::StaleLocks { age } => format!(
                "locking_mode strict and the lock view is {}",
                match age {
                    Some(a) => format!("{} ms old", a.as_millis()),
                    None => "missing".into(),
                }
            ),
            other => other.description(target),
        }
    }

    /// What the user can do about it, for access points whose clients show a whole message
    /// (databases, apps): enroll when a trusted device is what is missing.
    pub fn advice(&self) -> Option<&'static str> {
        match self {
            Denial::Policy(
                DenyReason::ClusterRequiresTrustedDevice
                | DenyReason::RoleRequiresTrustedDevice { .. },
            ) => Some(
                "Enroll this device (`dtsh device enroll --current-device`, or ask an admin for an enrollment token) and log in again",
            ),
            _ => None,
        }
    }

    /// The lock this denial names, if any.
    pub fn lock(&self) -> Option<&str> {
        match self {
            Denial::Policy(DenyReason::Locked { lock, .. }) => Some(lock),
            _ => None,
        }
    }

    /// The `result` label of the decision metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Denial::Policy(r) => match r {
                DenyReason::NotPermitted { .. } => "not_permitted",
                DenyReason::ClusterRequiresTrustedDevice => "cluster_requires_trusted_device",
                DenyReason::RoleRequiresTrustedDevice { .. } => "role_requires_trusted_device",
                DenyReason::DevicePosture { .. } => "device_posture",
                DenyReason::UnknownDeviceTrustMode(_) => "unknown_device_trust_mode",
                DenyReason::LoginNotAllowed { .. } => "login_not_allowed",
                DenyReason::ResourceNotAllowed { .. } => "resource_not_allowed",
                DenyReason::Locked { .. } => "locked",
            },
            Denial::View(_) => "view_unusable",
            Denial::StaleLocks { .. } => "stale_locks",
            Denial::Local(_) => "local_login",
            Denial::CertExpired { .. } => "certificate_expired",
        }
    }
}

fn access_point_noun(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Node => "node",
        ServiceKind::Db => "database access point",
        ServiceKind::Kube => "Kubernetes access point",
        ServiceKind::App => "app access point",
        ServiceKind::Desktop => "desktop access point",
        ServiceKind::Mdm => "service",
    }
}

/// `lock targeting Device:"…" is in force[: message]`, the seeds' wording.
pub fn lock_text(target: &str, message: Option<&str>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!("lock targeting {target} is in force: {m}"),
        _ => format!("lock targeting {target} is in force"),
    }
}

/// Bot or human, from the certificate.
pub fn principal(id: &Identity) -> Principal {
    if id.bot {
        Principal::Bot
    } else {
        Principal::Human
    }
}

/// The device of an identity, for audit events.
pub fn device_info(id: &Identity) -> Option<DeviceInfo> {
    id.device.as_ref().map(|d| DeviceInfo {
        device_id: d.device_id.to_string(),
        asset_tag: d.asset_tag.clone(),
        os_type: d
            .posture
            .os_type
            .map(|o| o.as_str().to_string())
            .unwrap_or_default(),
        credential_id: d.credential_id.to_string(),
    })
}

/// The decision's view of a verified identity: the login traits, never the principals (those
/// hold every role's logins, also the ones a role grants only on other nodes).
pub fn subject(id: &Identity) -> dt_authz::Subject<'_> {
    dt_authz::Subject {
        user: &id.username,
        user_logins: &id.trait_logins,
        principal: principal(id),
        device_verified: id.is_device_verified(),
        device_id: id.device.as_ref().map(|d| &d.device_id),
        device_credential: id.device.as_ref().map(|d| &d.credential_id),
        device_posture: id.device.as_ref().map(|d| &d.posture),
    }
}

/// How stale the view may be before `locking_mode: strict` denies.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    pub strict_max_age: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            strict_max_age: Duration::from_secs(10),
        }
    }
}

/// The access decision for a verified identity asking for `target`, with its reasons when
/// the pure decision was reached.
pub fn decide_explained(
    view: &ClusterView,
    id: &Identity,
    target: &Target<'_>,
    now: OffsetDateTime,
    freshness: Freshness,
) -> Result<Explained, Denial> {
    // The connection may have been authenticated long ago: every request re-checks.
    if id.is_expired(now) {
        return Err(Denial::CertExpired {
            not_after: id.not_after,
        });
    }
    let cluster_mode = view.cluster_mode().map_err(Denial::View)?;
    if view.locking_mode() == LockingMode::Strict {
        let age = view.age(now);
        if age.is_none_or(|a| a > freshness.strict_max_age) {
            return Err(Denial::StaleLocks { age });
        }
    }
    let roles = view.roles(&id.roles).map_err(Denial::View)?;
    let locks = view.active_locks(now).map_err(Denial::View)?;
    let policy = dt_authz::Policy {
        cluster_mode: &cluster_mode,
        roles: &roles,
        locks: &locks,
        now,
    };
    Ok(dt_authz::decide(&subject(id), target, &policy))
}

/// The access decision for a verified identity asking for `target`.
pub fn decide(
    view: &ClusterView,
    id: &Identity,
    target: &Target<'_>,
    now: OffsetDateTime,
    freshness: Freshness,
) -> Result<(), Denial> {
    match decide_explained(view, id, target, now, freshness)?.decision {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(Denial::Policy(reason)),
    }
}

/// What a live session reaches, owned (a session outlives the request that started it).
pub use dt_authz::TargetBuf as SessionTarget;

/// Why a live session must end now, if it must: its certificate expired and the cluster or
/// one of its roles sets `disconnect_expired_cert` (an unreadable role counts as setting it),
/// or a lock in force matches it (an unreadable lock ends everything: fail closed).
pub fn ending(
    view: &ClusterView,
    id: &Identity,
    target: &SessionTarget,
    now: OffsetDateTime,
) -> Option<Ending> {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    let t = target.as_target(&NO_LABELS);
    if id.is_expired(now) {
        let disconnect = match view.roles(&id.roles) {
            Ok(roles) => dt_authz::disconnect_expired_cert(view.disconnect_expired_cert(), &roles),
            Err(_) => true,
        };
        if disconnect {
            let d = Denial::CertExpired {
                not_after: id.not_after,
            };
            return Some(Ending {
                message: d.description(&t),
                lock: None,
            });
        }
    }
    let locks = match view.active_locks(now) {
        Ok(l) => l,
        Err(e) => {
            return Some(Ending {
                message: e.to_string(),
                lock: None,
            });
        }
    };
    let who = subject(id);
    let role_names: Vec<&str> = id.roles.iter().map(String::as_str).collect();
    let ctx = t.lock_context(&who, &role_names);
    dt_authz::first_matching_lock(&locks, &ctx).map(|lock| Ending {
        message: lock_text(&lock.spec.target.to_string(), lock.spec.message.as_deref()),
        lock: Some(lock.metadata.name.clone()),
    })
}

/// Why a live session ends: the message the client gets, and the lock when one caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub message: String,
    pub lock: Option<String>,
}
