//! `AccessService`: `dtctl access explain`, why a user on a device may or may not reach a
//! resource.
//!
//! What it guarantees: the answer comes from [`dt_authz::decide`], the very function the
//! access points run, fed with what an access point would know about a fresh login of that
//! user: the user's current roles and login traits (what a new certificate would carry),
//! bot or human, the device (an enrolled inventory device counts as trusted, as after a
//! device authentication), the cluster's device-trust mode, the locks in force, and the
//! resource's labels from its live heartbeat. No rule is copied here; this module only
//! gathers facts and converts to the wire.
//!
//! What it does not: it does not look at a certificate the user holds right now (one issued
//! before a role changed carries the old role names), at an access point's possibly stale
//! view (`locking_mode: strict`), or at the host's local accounts. Those can still deny a
//! connection the explanation allows.
//!
//! Who may ask: `read` on `user` and on `role` (the answer discloses the user's roles and
//! logins and what the roles say), and `read` on `device` when a device is named (its
//! enrollment state). It is a read: no audit event.

use std::sync::Arc;

use dt_authz::{Check, Decision, Effect, Explained, Policy, Principal, Subject, TargetBuf};
use dt_proto::v1 as pb;
use dt_proto::v1::access_service_server::AccessService;
use dt_types::device::EnrollStatus;
use dt_types::resource::UserSpec;
use dt_types::{Device, UserName, Verb};
use tonic::{Request, Response, Status};

use crate::caller::{Caller, peer_of};
use crate::error::{ApiError, ApiResult};
use crate::server::AuthServer;

/// How many online names an "unknown resource" error lists.
const MAX_NAMES_IN_ERROR: usize = 20;

#[derive(Clone)]
pub struct GrpcAccess {
    pub srv: Arc<AuthServer>,
}

/// What is asked for, from the wire form, checked.
fn asked_from_wire(t: Option<pb::explain_access_request::Target>) -> ApiResult<TargetBuf> {
    use pb::explain_access_request::Target as T;
    let need = |v: &str, what: &str| {
        if v.trim().is_empty() {
            Err(ApiError::InvalidArgument(format!("give {what}")))
        } else {
            Ok(())
        }
    };
    let asked = match t {
        None => {
            return Err(ApiError::InvalidArgument(
                    "say what is asked for: --node with --login, --db with --db-user and --db-name, --kube, --app, or --desktop with --desktop-login".into(),
                ));
        }
        Some(T::Ssh(s)) => {
            need(&s.node, "the node (--node)")?;
            need(&s.login, "the login (--login)")?;
            TargetBuf::Ssh {
                node: s.node,
                login: s.login,
            }
        }
        Some(T::Db(d)) => {
            need(&d.name, "the database (--db)")?;
            need(&d.db_user, "the database user (--db-user)")?;
            need(&d.db_name, "the database name (--db-name)")?;
            TargetBuf::Db {
                name: d.name,
                db_user: d.db_user,
                db_name: d.db_name,
            }
        }
        Some(T::Kube(k)) => {
            need(&k.name, "the Kubernetes cluster (--kube)")?;
            TargetBuf::Kube {
                name: k.name,
                users: k.users,
                groups: k.groups,
            }
        }
        Some(T::App(a)) => {
            need(&a.name, "the app (--app)")?;
            TargetBuf::App { name: a.name }
        }
        Some(T::Desktop(d)) => {
            need(&d.name, "the desktop (--desktop)")?;
            need(&d.login, "the desktop login (--desktop-login)")?;
            TargetBuf::Desktop {
                name: d.name,
                login: d.login,
            }
        }
    };
    Ok(asked)
}

/// The device the explanation assumes.
enum AssumedDevice {
    /// An enrolled inventory device: trusted.
    Trusted(Box<Device>),
    /// `--no-device`.
    None,
    /// Neither given: no device, and the answer says it assumed so.
    Unspecified,
}

fn check_to_wire(c: Check) -> pb::access_reason::Check {
    use pb::access_reason::Check as W;
    match c {
        Check::Lock => W::Lock,
        Check::ClusterMode => W::ClusterMode,
        Check::Role => W::Role,
        Check::RoleMode => W::RoleMode,
        Check::Device => W::Device,
    }
}

fn effect_to_wire(e: Effect) -> pb::access_reason::Effect {
    use pb::access_reason::Effect as W;
    match e {
        Effect::Allow => W::Allow,
        Effect::Deny => W::Deny,
        Effect::None => W::None,
    }
}

impl AuthServer {
    /// `dtctl access explain`: the one decision over the facts an access point would have.
    pub async fn explain_access(
        &self,
        caller: &Caller,
        req: pb::ExplainAccessRequest,
    ) -> ApiResult<pb::ExplainAccessResponse> {
        self.authorize(caller, "user", Verb::Read)?;
        self.authorize(caller, "role", Verb::Read)?;
        let asked = asked_from_wire(req.target)?;
        let user_name = req.user.trim();
        if user_name.is_empty() {
            return Err(ApiError::InvalidArgument(
                "name the user with --user".into(),
            ));
        }
        // Checked where it enters: the decision takes a user name, not any text.
        let user_name = UserName::parse(user_name)?;
        let Some((user, _)) = self.get_resource::<UserSpec>(user_name.as_str()).await? else {
            return Err(ApiError::NotFound(format!(
                "user {user_name:?} not found (see `dtctl users ls`)"
            )));
        };
        let device = match req.device {
            Some(pb::explain_access_request::Device::DeviceId(id)) => {
                self.authorize(caller, "device", Verb::Read)?;
                let Some((d, _)) = self.get_device(id.trim()).await? else {
                    return Err(ApiError::NotFound(format!(
                        "device {id:?} not found (give the device id, see `dtctl devices ls`)"
                    )));
                };
                if d.spec.enroll_status != EnrollStatus::Enrolled || d.spec.credential.is_none() {
                    return Err(ApiError::FailedPrecondition(format!(
                        "device {id:?} is not enrolled, so it cannot be a trusted device; explain with --no-device, or enroll it first (`dtctl devices enroll --device-id={id}`)"
                    )));
                }
                AssumedDevice::Trusted(Box::new(d))
            }
            Some(pb::explain_access_request::Device::NoDevice(_)) => AssumedDevice::None,
            None => AssumedDevice::Unspecified,
        };

        // The resource as it is online now.
        let kind = asked.kind();
        let online = self.list_served(kind).await?;
        let Some(found) = online.iter().find(|r| r.resource.name == asked.name()) else {
            let mut names: Vec<&str> = online.iter().map(|r| r.resource.name.as_str()).collect();
            names.dedup();
            let list = if names.is_empty() {
                "none is".to_string()
            } else if names.len() > MAX_NAMES_IN_ERROR {
                format!(
                    "online: {}, and {} more",
                    names[..MAX_NAMES_IN_ERROR].join(", "),
                    names.len() - MAX_NAMES_IN_ERROR
                )
            } else {
                format!("online: {}", names.join(", "))
            };
            return Err(ApiError::NotFound(format!(
                "{kind} {:?} is not online, so its labels are unknown ({list})",
                asked.name()
            )));
        };

        // What a fresh certificate of this user would carry, and the cluster around it.
        let roles = self.resolve_roles(&user.spec.roles).await?;
        let cluster_mode = self.cap().await?.spec.device_trust.mode;
        let locks = self.active_locks().await?;
        // A stored device passed its validation (its name is a UUID) when it was written.
        let trusted_id = match &device {
            AssumedDevice::Trusted(d) => Some(d.device_id().map_err(ApiError::internal)?),
            _ => None,
        };
        let (device_id, credential_id) = match &device {
            AssumedDevice::Trusted(d) => (
                trusted_id.as_ref(),
                d.spec.credential.as_ref().map(|c| &c.id),
            ),
            _ => (None, None),
        };
        // What the device's certificates would say: its last authentication (the newest
        // collected-data record), so `max_auth_age` is explained against that time.
        let now = self.env.now();
        let posture = match &device {
            AssumedDevice::Trusted(d) => {
                let last = d
                    .spec
                    .collected_data
                    .last()
                    .map(|c| c.record_time.unwrap_or(c.collect_time))
                    .unwrap_or(now);
                Some(crate::devices::posture_at_authentication(d, last))
            }
            _ => None,
        };
        let who = Subject {
            user: &user_name,
            user_logins: &user.spec.traits.logins,
            principal: if user.spec.bot {
                Principal::Bot
            } else {
                Principal::Human
            },
            device_verified: device_id.is_some() && credential_id.is_some(),
            device_id,
            device_credential: credential_id,
            device_posture: posture.as_ref(),
        };
        let target = asked.as_target(&found.resource.labels);
        let policy = Policy {
            cluster_mode: &cluster_mode,
            roles: &roles,
            locks: &locks,
            now,
        };
        let Explained { decision, reasons } = dt_authz::decide(&who, &target, &policy);

        let mut wire_reasons: Vec<pb::AccessReason> = reasons
            .iter()
            .map(|r| pb::AccessReason {
                check: check_to_wire(r.check) as i32,
                role: r.role.clone().unwrap_or_default(),
                effect: effect_to_wire(r.effect) as i32,
                detail: r.detail.clone(),
            })
            .collect();
        let explained_device = match &device {
            AssumedDevice::Trusted(d) => {
                let info = crate::devices::device_info(d);
                pb::ExplainedDevice {
                    state: "trusted".into(),
                    device_id: info.device_id,
                    asset_tag: info.asset_tag,
                    os_type: info.os_type,
                    credential_id: info.credential_id,
                }
            }
            AssumedDevice::None => pb::ExplainedDevice {
                state: "none".into(),
                ..Default::default()
            },
            AssumedDevice::Unspecified => {
                // Say so next to the decision's own device line.
                let at = wire_reasons
                    .iter()
                    .position(|r| r.check == pb::access_reason::Check::Device as i32)
                    .map_or(0, |i| i + 1);
                wire_reasons.insert(
                    at,
                    pb::AccessReason {
                        check: pb::access_reason::Check::Device as i32,
                        role: String::new(),
                        effect: pb::access_reason::Effect::None as i32,
                        detail: "no device given (--device=ID or --no-device): explained as from an untrusted device".into(),
                    },
                );
                pb::ExplainedDevice {
                    state: "unspecified".into(),
                    ..Default::default()
                }
            }
        };
        let (wire_decision, denial) = match &decision {
            Decision::Allow => (pb::explain_access_response::Decision::Allow, String::new()),
            Decision::Deny(why) => (pb::explain_access_response::Decision::Deny, why.to_string()),
        };
        Ok(pb::ExplainAccessResponse {
            decision: wire_decision as i32,
            reasons: wire_reasons,
            denial,
            user: user.name().to_string(),
            bot: user.spec.bot,
            roles: user.spec.roles.clone(),
            logins: user.spec.traits.logins.clone(),
            cluster_mode: cluster_mode.as_str().to_string(),
            device: Some(explained_device),
            resource_kind: kind.as_str().into(),
            resource_name: found.resource.name.clone(),
            resource_labels: found
                .resource
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            served_by: found.service.clone(),
            locks_in_force: locks.iter().map(|l| l.name().to_string()).collect(),
            target: target.describe(),
        })
    }
}

#[tonic::async_trait]
impl AccessService for GrpcAccess {
    async fn explain_access(
        &self,
        req: Request<pb::ExplainAccessRequest>,
    ) -> Result<Response<pb::ExplainAccessResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv.explain_access(&caller, req.into_inner()).await?,
        ))
    }
}
