//! The two checks every SSH login passes, both without I/O:
//!
//! 1. [`authenticate`]: the certificate chains to the user CA, is a user certificate, is
//!    within its validity, carries a well-formed devtrust identity, and names the requested
//!    login as a principal (russh checks none of the CA, the type or the principals).
//! 2. [`decide`]: the certificate has not expired since the connection was authenticated
//!    (every channel asks again), then one access decision by `dt_authz::check_ssh` over
//!    the node's view, with `{{internal.logins}}` taken from the certificate's login traits
//!    (never its principals): locks, the cluster's device-trust mode, roles' logins and
//!    node labels (deny first), and the device-trust mode of every granting role, with bots told apart from humans. Anything
//!    the view cannot answer (not loaded yet, unreadable documents, stale under
//!    `locking_mode: strict`) denies.
//!
//! A device counts as verified only when the certificate carried all three device values
//! **and** was verified against the user CA: `authenticate` returns the identity only after
//! that check, so a forged certificate never reaches `decide`.
//!
//! [`Denial::description`] is the text an SSH client sees (the description of a channel open
//! failure with reason `administratively prohibited`); `dtsh` turns it into the messages of
//! DESIGN.md §6.

use std::collections::BTreeMap;
use std::time::Duration;

use dt_authz::{Decision, DenyReason, Principal};
use dt_ca::{Identity, SshCertRefusal, SshUserCaKey};
use dt_types::audit::DeviceInfo;
use dt_types::resource::LockingMode;
use ssh_key::Certificate;
use time::OffsetDateTime;

use crate::view::{ClusterView, ViewError};

/// Prefix of the description of a role-based denial (`dtsh` recognizes it).
pub const ACCESS_DENIED_PREFIX: &str = "access denied to ";
/// What a role-based denial for want of a trusted device adds after `": "`.
pub const TRUSTED_DEVICE_SUFFIX: &str = "a trusted device is required";

/// The node an access decision is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Check the certificate for `login`. The error is the audit message.
pub fn authenticate(
    ca: &SshUserCaKey,
    cert: &Certificate,
    login: &str,
    now: OffsetDateTime,
) -> Result<Identity, String> {
    ca.verify_for_login(cert, login, now).map_err(|e| match e {
        SshCertRefusal::Certificate(ca_err) => format!("certificate refused: {ca_err}"),
        other @ SshCertRefusal::WrongPrincipal { .. } => format!("certificate refused: {other}"),
    })
}

/// Why access was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The pure decision said no.
    Policy(DenyReason),
    /// The node's view cannot support a decision.
    View(ViewError),
    /// `locking_mode: strict` and the lock view is older than allowed.
    StaleLocks { age: Option<Duration> },
    /// The login cannot be served on this host.
    LocalLogin(String),
    /// The certificate expired after the connection was authenticated.
    CertExpired { not_after: OffsetDateTime },
}

impl Denial {
    /// What the SSH client is told (channel open failure description).
    pub fn description(&self, login: &str, node: &str) -> String {
        match self {
            Denial::Policy(DenyReason::RoleRequiresTrustedDevice { .. }) => {
                format!("{ACCESS_DENIED_PREFIX}{login} connecting to {node}: {TRUSTED_DEVICE_SUFFIX}")
            }
            Denial::Policy(DenyReason::Locked {
                target, message, ..
            }) => match message {
                Some(m) if !m.is_empty() => format!("lock targeting {target} is in force: {m}"),
                _ => format!("lock targeting {target} is in force"),
            },
            Denial::Policy(other) => other.to_string(),
            Denial::View(e) => e.to_string(),
            Denial::StaleLocks { .. } => {
                "this node cannot confirm the cluster's locks (locking_mode: strict); try again shortly"
                    .into()
            }
            Denial::LocalLogin(why) => why.clone(),
            Denial::CertExpired { not_after } => format!(
                "certificate expired at {}; log in again (`dtsh login`)",
                not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| not_after.unix_timestamp().to_string())
            ),
        }
    }

    /// What the audit log records (more detail than the client gets).
    pub fn audit_message(&self, login: &str, node: &str) -> String {
        match self {
            Denial::Policy(DenyReason::RoleRequiresTrustedDevice { role }) => format!(
                "access denied to {login} connecting to {node}: role {role:?} requires a trusted device"
            ),
            Denial::Policy(DenyReason::ClusterRequiresTrustedDevice) => {
                "unauthorized device: the cluster requires a trusted device".into()
            }
            Denial::Policy(DenyReason::Locked { lock, .. }) => {
                format!("{} (lock {lock})", self.description(login, node))
            }
            Denial::StaleLocks { age } => format!(
                "locking_mode strict and the lock view is {}",
                match age {
                    Some(a) => format!("{} ms old", a.as_millis()),
                    None => "missing".into(),
                }
            ),
            other => other.description(login, node),
        }
    }

    /// The lock this denial names, if any.
    pub fn lock(&self) -> Option<&str> {
        match self {
            Denial::Policy(DenyReason::Locked { lock, .. }) => Some(lock),
            _ => None,
        }
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
        device_id: d.device_id.clone(),
        asset_tag: d.asset_tag.clone(),
        os_type: String::new(),
        credential_id: d.credential_id.clone(),
    })
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

/// The access decision for a verified identity asking for `login` on `node`.
pub fn decide(
    view: &ClusterView,
    id: &Identity,
    login: &str,
    node: &NodeFacts,
    now: OffsetDateTime,
    freshness: Freshness,
) -> Result<(), Denial> {
    // The connection may have been authenticated long ago: every channel re-checks.
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
    let who = subject(id);
    let policy = dt_authz::Policy {
        cluster_mode: &cluster_mode,
        roles: &roles,
        locks: &locks,
    };
    match dt_authz::check_ssh(&who, &node.name, &node.labels, login, &policy).decision {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(Denial::Policy(reason)),
    }
}

/// The decision's view of a verified identity: the login traits, never the principals (those
/// hold every role's logins, also the ones a role grants only on other nodes).
pub fn subject(id: &Identity) -> dt_authz::Subject<'_> {
    dt_authz::Subject {
        user: &id.username,
        user_logins: &id.trait_logins,
        principal: principal(id),
        device_verified: id.is_device_verified(),
        device_id: id.device.as_ref().map(|d| d.device_id.as_str()),
        device_credential: id.device.as_ref().map(|d| d.credential_id.as_str()),
    }
}

/// For a session already running: its certificate expired and the cluster or one of its
/// roles sets `disconnect_expired_cert` (an unreadable role counts as setting it).
pub fn expired_session(view: &ClusterView, id: &Identity, now: OffsetDateTime) -> Option<Denial> {
    if !id.is_expired(now) {
        return None;
    }
    let disconnect = match view.roles(&id.roles) {
        Ok(roles) => dt_authz::disconnect_expired_cert(view.disconnect_expired_cert(), &roles),
        Err(_) => true,
    };
    disconnect.then_some(Denial::CertExpired {
        not_after: id.not_after,
    })
}

/// For a session already running: the lock in force that matches it, if any (issue 7:
/// locks end live sessions).
pub fn matching_lock(
    view: &ClusterView,
    id: &Identity,
    login: &str,
    node: &str,
    now: OffsetDateTime,
) -> Option<Result<dt_types::Lock, ViewError>> {
    let locks = match view.active_locks(now) {
        Ok(l) => l,
        Err(e) => return Some(Err(e)),
    };
    let role_names: Vec<&str> = id.roles.iter().map(String::as_str).collect();
    let ctx = dt_authz::LockContext {
        user: Some(&id.username),
        roles: &role_names,
        login: Some(login),
        node: Some(node),
        device: id.device.as_ref().map(|d| d.device_id.as_str()),
        device_credential: id.device.as_ref().map(|d| d.credential_id.as_str()),
        ..Default::default()
    };
    dt_authz::first_matching_lock(&locks, &ctx).map(|l| Ok(l.clone()))
}
