//! Access to resources: one decision per kind (SSH node, database, Kubernetes cluster, app,
//! desktop), all through [`decide`], each returning the decision **and its reasons**.
//!
//! The rules (DESIGN.md §6 and §10), in the order they are checked:
//!
//! 1. **Locks.** A lock whose every target field matches the request denies (user, role,
//!    login, node, device, device credential, database, Kubernetes cluster, app, desktop).
//! 2. **Cluster-wide device-trust mode**, for SSH, databases and Kubernetes only. Apps and
//!    desktops follow only their roles' modes (as the seeds say).
//! 3. **Roles, deny first.** A role denies when one of its deny label selectors matches the
//!    resource or one of its deny name lists names what is asked for (login, database user or
//!    name, Kubernetes user or group, desktop login). Otherwise a role *grants* when its allow
//!    label selector matches and its allow name lists cover what is asked for.
//! 4. **Every granting role's device-trust mode**: if any granting role requires a trusted
//!    device, an untrusted one is denied. Bots are exempt under `required-for-humans`.
//!
//! An unknown mode denies (fail closed). The reasons list every check made, in order, with
//! its effect, so `dtctl access explain` prints exactly what an access point decided.

use std::collections::BTreeMap;
use std::fmt;

use dt_types::posture::DevicePosture;
use dt_types::resource::{DeviceTrustMode, LabelValues, Role, RoleConditions};
use dt_types::{CredentialId, DeviceId, Lock, ServiceKind, UserName};
use serde::Serialize;
use time::OffsetDateTime;

use crate::{Decision, DenyReason, LockContext, Principal, check_device, expand, locked};

/// What is asked for, by kind.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// An SSH session as `login` on a node.
    Ssh {
        node: &'a str,
        labels: &'a BTreeMap<String, String>,
        login: &'a str,
    },
    /// A database session as `db_user` on database `db_name`.
    Db {
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        db_user: &'a str,
        db_name: &'a str,
    },
    /// A Kubernetes cluster, impersonating `users` and `groups` (empty: what the roles give).
    Kube {
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        users: &'a [String],
        groups: &'a [String],
    },
    App {
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
    },
    /// A desktop session as `login`.
    Desktop {
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        login: &'a str,
    },
}

impl Target<'_> {
    pub fn kind(&self) -> ServiceKind {
        match self {
            Target::Ssh { .. } => ServiceKind::Node,
            Target::Db { .. } => ServiceKind::Db,
            Target::Kube { .. } => ServiceKind::Kube,
            Target::App { .. } => ServiceKind::App,
            Target::Desktop { .. } => ServiceKind::Desktop,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Target::Ssh { node, .. } => node,
            Target::Db { name, .. }
            | Target::Kube { name, .. }
            | Target::App { name, .. }
            | Target::Desktop { name, .. } => name,
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        match self {
            Target::Ssh { labels, .. }
            | Target::Db { labels, .. }
            | Target::Kube { labels, .. }
            | Target::App { labels, .. }
            | Target::Desktop { labels, .. } => labels,
        }
    }

    /// Does the cluster-wide device-trust mode apply to this kind?
    pub fn cluster_mode_applies(&self) -> bool {
        matches!(
            self,
            Target::Ssh { .. } | Target::Db { .. } | Target::Kube { .. }
        )
    }

    /// The login a lock's `login` field is compared with.
    fn lock_login(&self) -> Option<&str> {
        match self {
            Target::Ssh { login, .. } | Target::Desktop { login, .. } => Some(login),
            _ => None,
        }
    }

    /// What a lock is matched against for this request.
    pub fn lock_context<'c>(
        &'c self,
        who: &'c Subject<'c>,
        roles: &'c [&'c str],
    ) -> LockContext<'c> {
        let mut ctx = LockContext {
            user: Some(who.user.as_str()),
            roles,
            login: self.lock_login(),
            device: who.device_id.map(DeviceId::as_str),
            device_credential: who.device_credential.map(CredentialId::as_str),
            ..Default::default()
        };
        match self {
            Target::Ssh { node, .. } => ctx.node = Some(node),
            Target::Db { name, .. } => ctx.db = Some(name),
            Target::Kube { name, .. } => ctx.kube_cluster = Some(name),
            Target::App { name, .. } => ctx.app = Some(name),
            Target::Desktop { name, .. } => ctx.desktop = Some(name),
        }
        ctx
    }

    /// `root on node "server1"`, `db user "alice" on database "main" of "pg1"`, ...
    pub fn describe(&self) -> String {
        match self {
            Target::Ssh { node, login, .. } => format!("{login} on node {node:?}"),
            Target::Db {
                name,
                db_user,
                db_name,
                ..
            } => format!("database {name:?} as db user {db_user:?} on db {db_name:?}"),
            Target::Kube {
                name,
                users,
                groups,
                ..
            } => {
                let mut s = format!("Kubernetes cluster {name:?}");
                if !users.is_empty() {
                    s.push_str(&format!(" as user {}", users.join(",")));
                }
                if !groups.is_empty() {
                    s.push_str(&format!(" with groups {}", groups.join(",")));
                }
                s
            }
            Target::App { name, .. } => format!("app {name:?}"),
            Target::Desktop { name, login, .. } => format!("{login} on desktop {name:?}"),
        }
    }
}

/// What is asked for, owned: a live session's target, or a request to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetBuf {
    Ssh {
        node: String,
        login: String,
    },
    Db {
        name: String,
        db_user: String,
        db_name: String,
    },
    Kube {
        name: String,
        users: Vec<String>,
        groups: Vec<String>,
    },
    App {
        name: String,
    },
    Desktop {
        name: String,
        login: String,
    },
}

impl TargetBuf {
    /// The borrowed form the decision takes, with the resource's labels.
    pub fn as_target<'a>(&'a self, labels: &'a BTreeMap<String, String>) -> Target<'a> {
        match self {
            TargetBuf::Ssh { node, login } => Target::Ssh {
                node,
                labels,
                login,
            },
            TargetBuf::Db {
                name,
                db_user,
                db_name,
            } => Target::Db {
                name,
                labels,
                db_user,
                db_name,
            },
            TargetBuf::Kube {
                name,
                users,
                groups,
            } => Target::Kube {
                name,
                labels,
                users,
                groups,
            },
            TargetBuf::App { name } => Target::App { name, labels },
            TargetBuf::Desktop { name, login } => Target::Desktop {
                name,
                labels,
                login,
            },
        }
    }

    pub fn kind(&self) -> ServiceKind {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        self.as_target(&NO_LABELS).kind()
    }

    pub fn name(&self) -> &str {
        match self {
            TargetBuf::Ssh { node, .. } => node,
            TargetBuf::Db { name, .. }
            | TargetBuf::Kube { name, .. }
            | TargetBuf::App { name }
            | TargetBuf::Desktop { name, .. } => name,
        }
    }
}

/// Who asks: taken from a certificate verified against the user CA.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The user's name, as the certificate's reader checked it.
    pub user: &'a UserName,
    /// The user's login traits (what `{{internal.logins}}` expands to).
    pub user_logins: &'a [String],
    pub principal: Principal,
    /// The certificate carries a device that authenticated (all three device values, and
    /// the certificate chains to the user CA).
    pub device_verified: bool,
    /// The device and credential ids of the certificate's device extension, as dt-ca
    /// parsed them (never a bare string: an id is checked where the certificate is read).
    pub device_id: Option<&'a DeviceId>,
    pub device_credential: Option<&'a CredentialId>,
    /// What the certificate says about the device at authentication (for posture rules).
    pub device_posture: Option<&'a DevicePosture>,
}

/// What the cluster says: its device-trust mode, the identity's roles, the locks in force.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    pub cluster_mode: &'a DeviceTrustMode,
    pub roles: &'a [Role],
    pub locks: &'a [Lock],
    /// The decision's clock, for `max_auth_age`.
    pub now: OffsetDateTime,
}

/// Which check a reason is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Lock,
    ClusterMode,
    Role,
    RoleMode,
    Device,
}

/// What a check did to the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// It allowed (or granted) access.
    Allow,
    /// It denied access.
    Deny,
    /// It was looked at and changed nothing.
    None,
}

/// One line of an explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub check: Check,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub effect: Effect,
    pub detail: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = match self.effect {
            Effect::Allow => "allow",
            Effect::Deny => "DENY",
            Effect::None => "-",
        };
        let check = match self.check {
            Check::Lock => "lock",
            Check::ClusterMode => "cluster mode",
            Check::Role => "role",
            Check::RoleMode => "role mode",
            Check::Device => "device",
        };
        match &self.role {
            Some(r) => write!(f, "[{effect:>5}] {check} {r:?}: {}", self.detail),
            None => write!(f, "[{effect:>5}] {check}: {}", self.detail),
        }
    }
}

/// A decision and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explained {
    pub decision: Decision,
    pub reasons: Vec<Reason>,
}

impl Explained {
    pub fn is_allow(&self) -> bool {
        self.decision.is_allow()
    }
}

struct Trail(Vec<Reason>);

impl Trail {
    fn add(&mut self, check: Check, role: Option<&str>, effect: Effect, detail: String) {
        self.0.push(Reason {
            check,
            role: role.map(str::to_string),
            effect,
            detail,
        });
    }
    fn done(self, decision: Decision) -> Explained {
        Explained {
            decision,
            reasons: self.0,
        }
    }
}

/// The one access decision. Every access point, `dtsh` listings and `dtctl access explain`
/// call this (through the per-kind wrappers below).
pub fn decide(who: &Subject<'_>, target: &Target<'_>, policy: &Policy<'_>) -> Explained {
    let mut trail = Trail(Vec::new());
    trail.add(
        Check::Device,
        None,
        Effect::None,
        match (who.device_verified, who.device_id) {
            (true, Some(id)) => format!("the certificate carries trusted device {id}"),
            _ => "the certificate carries no trusted device".into(),
        },
    );

    // 1. Locks.
    let role_names: Vec<&str> = policy.roles.iter().map(|r| r.name()).collect();
    let ctx = target.lock_context(who, &role_names);
    let mut lock_hit = None;
    for lock in policy.locks {
        if crate::lock_matches(&lock.spec.target, &ctx) {
            trail.add(
                Check::Lock,
                None,
                Effect::Deny,
                format!(
                    "lock {:?} targeting {} is in force",
                    lock.name(),
                    lock.spec.target
                ),
            );
            lock_hit.get_or_insert(lock);
        }
    }
    if let Some(lock) = lock_hit {
        return trail.done(locked(lock));
    }
    if policy.locks.is_empty() {
        trail.add(Check::Lock, None, Effect::None, "no locks in force".into());
    } else {
        trail.add(
            Check::Lock,
            None,
            Effect::None,
            format!("none of the {} locks in force matches", policy.locks.len()),
        );
    }

    // 2. The cluster-wide mode.
    if target.cluster_mode_applies() {
        let d = check_device(policy.cluster_mode, who.device_verified, who.principal);
        let effect = if d.is_allow() {
            Effect::None
        } else {
            Effect::Deny
        };
        trail.add(
            Check::ClusterMode,
            None,
            effect,
            format!(
                "cluster device_trust mode {}: {}",
                policy.cluster_mode,
                mode_effect(policy.cluster_mode, who, d.is_allow())
            ),
        );
        if let Decision::Deny(_) = d {
            return trail.done(d);
        }
    } else {
        trail.add(
            Check::ClusterMode,
            None,
            Effect::None,
            format!(
                "cluster device_trust mode {} does not apply to {}s (only the roles' modes do)",
                policy.cluster_mode,
                target.kind()
            ),
        );
    }

    // 3. Roles, deny first.
    let mut denied = false;
    let mut granting: Vec<&Role> = Vec::new();
    for role in policy.roles {
        if let Some(why) = role_denies(&role.spec.deny, target, who) {
            trail.add(Check::Role, Some(role.name()), Effect::Deny, why);
            denied = true;
            continue;
        }
        match role_grants(&role.spec.allow, target, who) {
            Ok(why) => {
                trail.add(Check::Role, Some(role.name()), Effect::Allow, why);
                granting.push(role);
            }
            Err(why) => trail.add(Check::Role, Some(role.name()), Effect::None, why),
        }
    }
    if policy.roles.is_empty() {
        trail.add(
            Check::Role,
            None,
            Effect::Deny,
            "the user has no roles".into(),
        );
    }
    if denied || granting.is_empty() {
        if !denied && !policy.roles.is_empty() {
            trail.add(
                Check::Role,
                None,
                Effect::Deny,
                format!("no role grants {}", target.describe()),
            );
        }
        return trail.done(Decision::Deny(not_allowed(target)));
    }

    // 4. The device-trust mode of every granting role, and its posture rules.
    let mut verdict = Decision::Allow;
    for role in granting {
        let rules = &role.spec.options.device_trust;
        let Some(mode) = crate::role_mode(&role.spec.options) else {
            trail.add(
                Check::RoleMode,
                Some(role.name()),
                Effect::None,
                "sets no device_trust_mode".into(),
            );
            continue;
        };
        let implied = if role.spec.options.device_trust_mode.is_none() {
            " (implied by its posture rules)"
        } else {
            ""
        };
        let d = check_device(mode, who.device_verified, who.principal);
        let ok = d.is_allow();
        trail.add(
            Check::RoleMode,
            Some(role.name()),
            if ok { Effect::None } else { Effect::Deny },
            format!(
                "device_trust_mode {mode}{implied}: {}",
                mode_effect(mode, who, ok)
            ),
        );
        if verdict.is_allow() {
            match d {
                Decision::Allow => {}
                Decision::Deny(DenyReason::ClusterRequiresTrustedDevice) => {
                    verdict = Decision::Deny(DenyReason::RoleRequiresTrustedDevice {
                        role: role.name().to_string(),
                    });
                }
                deny => verdict = deny,
            }
        }
        if rules.is_empty() || !ok {
            continue;
        }
        // Posture rules bind whoever the mode requires a device of.
        if check_device(mode, false, who.principal).is_allow() {
            trail.add(
                Check::RoleMode,
                Some(role.name()),
                Effect::None,
                format!("device_trust posture rules: not applied ({mode} needs no device here)"),
            );
            continue;
        }
        for c in crate::check_posture(rules, who.device_posture, policy.now) {
            trail.add(
                Check::RoleMode,
                Some(role.name()),
                if c.passed { Effect::None } else { Effect::Deny },
                format!("device_trust.{}: {}", c.rule, c.detail),
            );
            if !c.passed && verdict.is_allow() {
                verdict = Decision::Deny(DenyReason::DevicePosture {
                    role: role.name().to_string(),
                    rule: c.rule,
                    detail: c.detail,
                });
            }
        }
    }
    trail.done(verdict)
}

fn mode_effect(mode: &DeviceTrustMode, who: &Subject<'_>, ok: bool) -> &'static str {
    match (mode, ok, who.principal) {
        (DeviceTrustMode::Unknown(_), _, _) => "unknown mode, denying (fail closed)",
        (DeviceTrustMode::Off | DeviceTrustMode::Optional, _, _) => "no trusted device needed",
        (DeviceTrustMode::RequiredForHumans, _, Principal::Bot) => "bots are exempt",
        (_, true, _) => "a trusted device is required and present",
        (_, false, _) => "a trusted device is required and missing",
    }
}

fn not_allowed(target: &Target<'_>) -> DenyReason {
    match target {
        Target::Ssh { node, login, .. } => DenyReason::LoginNotAllowed {
            login: login.to_string(),
            node: node.to_string(),
        },
        other => DenyReason::ResourceNotAllowed {
            kind: other.kind(),
            resource: other.name().to_string(),
            what: other.describe(),
        },
    }
}

/// Why a role's deny conditions refuse this target, if they do.
fn role_denies(deny: &RoleConditions, target: &Target<'_>, who: &Subject<'_>) -> Option<String> {
    let (field, selector) = selector_for(deny, target.kind());
    if let Some(m) = selector_match(selector, target.labels()) {
        return Some(format!("deny.{field} {m} matches"));
    }
    for (field, list, asked) in names_asked(deny, target) {
        let values = expand(list, who.user_logins);
        for a in asked {
            if values.iter().any(|v| v == "*" || v == a) {
                return Some(format!("deny.{field} names {a:?}"));
            }
        }
    }
    None
}

/// Why a role's allow conditions grant this target, or why they do not.
fn role_grants(
    allow: &RoleConditions,
    target: &Target<'_>,
    who: &Subject<'_>,
) -> Result<String, String> {
    let (field, selector) = selector_for(allow, target.kind());
    let Some(m) = selector_match(selector, target.labels()) else {
        return Err(if selector.is_empty() {
            format!("allow.{field} is empty")
        } else {
            format!("allow.{field} does not match {:?}", target.labels())
        });
    };
    let mut why = vec![format!("allow.{field} {m} matches")];
    for (field, list, asked) in names_asked(allow, target) {
        let values = expand(list, who.user_logins);
        for a in &asked {
            if !values.iter().any(|v| v == "*" || v == a) {
                return Err(format!("allow.{field} does not include {a:?}"));
            }
        }
        if !asked.is_empty() {
            why.push(format!("allow.{field} includes {}", quoted(&asked)));
        }
    }
    Ok(why.join("; "))
}

fn quoted(v: &[&str]) -> String {
    v.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn selector_for(
    c: &RoleConditions,
    kind: ServiceKind,
) -> (&'static str, &BTreeMap<String, LabelValues>) {
    match kind {
        ServiceKind::Node => ("node_labels", &c.node_labels),
        ServiceKind::Db => ("db_labels", &c.db_labels),
        ServiceKind::Kube => ("kubernetes_labels", &c.kubernetes_labels),
        ServiceKind::App => ("app_labels", &c.app_labels),
        // The MDM service serves no resource: nothing selects it.
        ServiceKind::Desktop | ServiceKind::Mdm => ("desktop_labels", &c.desktop_labels),
    }
}

/// The name lists a target asks about, with what it asks for in each.
fn names_asked<'c, 't>(
    c: &'c RoleConditions,
    target: &'t Target<'t>,
) -> Vec<(&'static str, &'c [String], Vec<&'t str>)> {
    match target {
        Target::Ssh { login, .. } => vec![("logins", &c.logins, vec![*login])],
        Target::Db {
            db_user, db_name, ..
        } => vec![
            ("db_users", &c.db_users, vec![*db_user]),
            ("db_names", &c.db_names, vec![*db_name]),
        ],
        Target::Kube { users, groups, .. } => vec![
            (
                "kubernetes_users",
                &c.kubernetes_users,
                users.iter().map(String::as_str).collect(),
            ),
            (
                "kubernetes_groups",
                &c.kubernetes_groups,
                groups.iter().map(String::as_str).collect(),
            ),
        ],
        Target::App { .. } => vec![],
        Target::Desktop { login, .. } => {
            vec![("desktop_logins", &c.desktop_logins, vec![*login])]
        }
    }
}

/// Does the selector match these labels? Returns the selector, printed, when it does.
/// Every key must match; `'*': '*'` matches anything; values are literals, `*`, or `^re$`.
fn selector_match(
    selector: &BTreeMap<String, LabelValues>,
    labels: &BTreeMap<String, String>,
) -> Option<String> {
    labels_match(selector, labels).then(|| {
        let parts: Vec<String> = selector
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.values().join("|")))
            .collect();
        format!("{{{}}}", parts.join(", "))
    })
}

/// Does a label selector (`{'*': '*'}`, `{env: [dev, staging]}`, `{env: '^prod-.*$'}`) match
/// these labels? An empty selector matches nothing; an invalid regular expression matches
/// nothing (roles are validated when stored, so that only happens with a document written
/// by another build).
pub fn labels_match(
    selector: &BTreeMap<String, LabelValues>,
    labels: &BTreeMap<String, String>,
) -> bool {
    if selector.is_empty() {
        return false;
    }
    selector.iter().all(|(k, want)| {
        if k == "*" {
            return want.values().iter().any(|v| v == "*");
        }
        match labels.get(k) {
            Some(have) => want.values().iter().any(|v| label_value_matches(v, have)),
            None => false,
        }
    })
}

fn label_value_matches(want: &str, have: &str) -> bool {
    if want == "*" {
        return true;
    }
    if dt_types::resource::is_label_regex(want) {
        return dt_types::resource::label_regex(want).is_ok_and(|re| re.is_match(have));
    }
    want == have
}

/// May this user see the resource in a listing (`dtsh ls`, `dtsh db ls`, ...)? When a role's
/// allow selector for the kind matches and no role's deny selector does. Names (logins,
/// database users) and device trust are decided at connection time, not here.
pub fn may_list(roles: &[Role], kind: ServiceKind, labels: &BTreeMap<String, String>) -> bool {
    let denied = roles
        .iter()
        .any(|r| labels_match(selector_for(&r.spec.deny, kind).1, labels));
    !denied
        && roles
            .iter()
            .any(|r| labels_match(selector_for(&r.spec.allow, kind).1, labels))
}

/// The Kubernetes identity to impersonate for a request that names none: the one
/// `kubernetes_users` value the granting roles allow (or the devtrust user name when they
/// allow none), and every allowed group. Several allowed users is an error that lists them.
pub fn kube_impersonation(
    who: &Subject<'_>,
    roles: &[Role],
    labels: &BTreeMap<String, String>,
) -> Result<(String, Vec<String>), KubeIdentityError> {
    let mut users = Vec::new();
    let mut groups = Vec::new();
    let mut denied_users = Vec::new();
    let mut denied_groups = Vec::new();
    for r in roles {
        denied_users.extend(expand(&r.spec.deny.kubernetes_users, who.user_logins));
        denied_groups.extend(expand(&r.spec.deny.kubernetes_groups, who.user_logins));
        if labels_match(&r.spec.allow.kubernetes_labels, labels) {
            users.extend(expand(&r.spec.allow.kubernetes_users, who.user_logins));
            groups.extend(expand(&r.spec.allow.kubernetes_groups, who.user_logins));
        }
    }
    let keep =
        |v: &String, denied: &[String]| v != "*" && !denied.iter().any(|d| d == v || d == "*");
    users.retain(|u| keep(u, &denied_users));
    groups.retain(|g| keep(g, &denied_groups));
    users.sort();
    users.dedup();
    groups.sort();
    groups.dedup();
    let user = match users.len() {
        0 => who.user.to_string(),
        1 => users.remove(0),
        _ => return Err(KubeIdentityError::SeveralUsers(users)),
    };
    Ok((user, groups))
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KubeIdentityError {
    #[error(
        "your roles allow several Kubernetes users ({}); choose one with --as (kubectl) or --kube-user",
        .0.join(", ")
    )]
    SeveralUsers(Vec<String>),
}

/// SSH, by the one decision.
pub fn check_ssh(
    who: &Subject<'_>,
    node: &str,
    labels: &BTreeMap<String, String>,
    login: &str,
    policy: &Policy<'_>,
) -> Explained {
    decide(
        who,
        &Target::Ssh {
            node,
            labels,
            login,
        },
        policy,
    )
}

/// A database, by the one decision.
pub fn check_db(
    who: &Subject<'_>,
    name: &str,
    labels: &BTreeMap<String, String>,
    db_user: &str,
    db_name: &str,
    policy: &Policy<'_>,
) -> Explained {
    decide(
        who,
        &Target::Db {
            name,
            labels,
            db_user,
            db_name,
        },
        policy,
    )
}

/// A Kubernetes cluster, by the one decision.
pub fn check_kube(
    who: &Subject<'_>,
    name: &str,
    labels: &BTreeMap<String, String>,
    users: &[String],
    groups: &[String],
    policy: &Policy<'_>,
) -> Explained {
    decide(
        who,
        &Target::Kube {
            name,
            labels,
            users,
            groups,
        },
        policy,
    )
}

/// An app, by the one decision (roles' device-trust modes only).
pub fn check_app(
    who: &Subject<'_>,
    name: &str,
    labels: &BTreeMap<String, String>,
    policy: &Policy<'_>,
) -> Explained {
    decide(who, &Target::App { name, labels }, policy)
}

/// A desktop, by the one decision (roles' device-trust modes only).
pub fn check_desktop(
    who: &Subject<'_>,
    name: &str,
    labels: &BTreeMap<String, String>,
    login: &str,
    policy: &Policy<'_>,
) -> Explained {
    decide(
        who,
        &Target::Desktop {
            name,
            labels,
            login,
        },
        policy,
    )
}
