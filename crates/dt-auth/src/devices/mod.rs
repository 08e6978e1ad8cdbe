//! Device inventory: create, update, delete, find, list, bulk create, and enrollment tokens.
//!
//! Invariants kept by every write (each one atomic, with its audit event):
//! - (os_type, asset_tag) is unique: the tag index is created with a `NotExists` condition;
//! - a credential id belongs to at most one device (credential index, `NotExists`);
//! - a device has at most one live enrollment token; only its SHA-256 is stored.

use std::time::Duration;

use dt_proto::v1 as pb;
use dt_store::Op;
use dt_types::audit::{AuditEvent, DeviceInfo, EventType};
use dt_types::device::{DeviceSource, EnrollStatus, OsType, SourceOrigin};
use dt_types::resource::Resource;
use dt_types::{AnyResource, Device, Kind, Verb};
use time::OffsetDateTime;

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::plan::{self, Refusal};
use crate::server::AuthServer;

mod bulk;
mod lookup;
mod tokens;

pub const DEFAULT_ENROLL_TTL: Duration = Duration::from_secs(3600);
pub const MAX_ENROLL_TTL: Duration = Duration::from_secs(7 * 86400);
pub const MAX_PAGE: usize = 200;
pub const MAX_BULK: usize = 1000;

pub fn device_info(d: &Device) -> DeviceInfo {
    DeviceInfo {
        device_id: d.metadata.name.clone(),
        asset_tag: d.spec.asset_tag.clone(),
        os_type: d.spec.os_type.as_str().into(),
        credential_id: d
            .spec
            .credential
            .as_ref()
            .map(|c| c.id.to_string())
            .unwrap_or_default(),
    }
}

/// What the augmented certificates say about a device that authenticated at `at`: its
/// credential's attestation, its inventory OS, the OS version it reported last (with this
/// authentication), and the time, in whole seconds.
pub fn posture_at_authentication(
    d: &Device,
    at: time::OffsetDateTime,
) -> dt_types::posture::DevicePosture {
    let reported = d
        .spec
        .collected_data
        .last()
        .map(|c| c.os_version.trim())
        .filter(|v| !v.is_empty() && v.len() <= dt_types::device::MAX_FIELD_LEN)
        .filter(|v| !v.chars().any(char::is_control));
    dt_types::posture::DevicePosture {
        attestation_type: d.spec.credential.as_ref().map(|c| c.attestation_type),
        os_type: Some(d.spec.os_type),
        os_version: reported.map(str::to_string),
        authenticated_at: time::OffsetDateTime::from_unix_timestamp(at.unix_timestamp()).ok(),
    }
}

fn to_json(d: &Device) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(d).map_err(ApiError::internal)
}

/// A device as the wire carries it, with its storage revision.
pub fn device_to_proto(d: &Device, revision: i64) -> ApiResult<pb::Device> {
    let mut wire = pb::Device::try_from(d).map_err(ApiError::internal)?;
    wire.revision = revision;
    Ok(wire)
}

/// A device a client sent: dt-proto checked its shape and sizes, this validates it as a
/// resource (strictly, like a document). An empty id gets a fresh one.
pub fn device_from_proto(d: Option<pb::Device>) -> ApiResult<Device> {
    let d = d.ok_or_else(|| ApiError::InvalidArgument("the request has no device".into()))?;
    let mut d = Device::try_from(d)
        .map_err(|e| ApiError::InvalidArgument(format!("invalid device: {e}")))?;
    if d.metadata.name.is_empty() {
        d.metadata.name = dt_types::DeviceId::fresh().into_string();
    }
    AnyResource::Device(d.clone())
        .validate()
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    Ok(d)
}

/// The public-key index key of a credential (P-256 SubjectPublicKeyInfo, or a TPM AK's
/// public area), `None` for a credential without key material.
pub(crate) fn credential_key_index(c: &dt_types::device::DeviceCredential) -> Option<String> {
    use sha2::Digest;
    let material = match (&c.public_key_der, &c.tpm_ak_public) {
        (k, _) if !k.is_empty() => k.as_str(),
        (_, Some(ak)) if !ak.is_empty() => ak.as_str(),
        _ => return None,
    };
    Some(keys::device_key_index(&hex::encode(sha2::Sha256::digest(
        material.as_bytes(),
    ))))
}

/// The index and record writes that store `d` (no conditions).
pub(crate) fn put_ops(d: &Device) -> ApiResult<Vec<Op>> {
    let id = &d.metadata.name;
    let mut ops = vec![
        Op::Put {
            key: keys::resource(Kind::Device, id),
            value: to_json(d)?,
            expires: None,
        },
        Op::Put {
            key: keys::device_tag_index(d.spec.os_type, &d.spec.asset_tag),
            value: id.clone().into_bytes(),
            expires: None,
        },
    ];
    if let Some(owner) = &d.spec.owner {
        ops.push(Op::Put {
            key: keys::device_owner_index(owner, id),
            value: Vec::new(),
            expires: None,
        });
    }
    if let Some(c) = &d.spec.credential {
        ops.push(Op::Put {
            key: keys::device_credential_index(c.id.as_str()),
            value: id.clone().into_bytes(),
            expires: None,
        });
        if let Some(key) = credential_key_index(c) {
            ops.push(Op::Put {
                key,
                value: id.clone().into_bytes(),
                expires: None,
            });
        }
    }
    Ok(ops)
}

/// Deletes of the indexes `d` occupies (not the record itself).
pub(crate) fn index_deletes(d: &Device) -> Vec<Op> {
    let id = &d.metadata.name;
    let mut ops = vec![Op::Delete {
        key: keys::device_tag_index(d.spec.os_type, &d.spec.asset_tag),
    }];
    if let Some(owner) = &d.spec.owner {
        ops.push(Op::Delete {
            key: keys::device_owner_index(owner, id),
        });
    }
    if let Some(c) = &d.spec.credential {
        ops.push(Op::Delete {
            key: keys::device_credential_index(c.id.as_str()),
        });
        if let Some(key) = credential_key_index(c) {
            ops.push(Op::Delete { key });
        }
    }
    ops
}

/// A lock that revokes the certificates augmented with a deleted or un-enrolled device.
pub(crate) struct Revocation {
    pub(crate) op: Op,
    pub(crate) event: AuditEvent,
}

impl AuthServer {
    /// Certificates already augmented with `d` keep their device extension until they
    /// expire. Deleting or un-enrolling `d` therefore writes, in the same transaction, a lock
    /// on its id and credential id (so a later re-enrollment, with a new credential, is not
    /// caught) that lasts as long as the longest certificate any role allows. Locks already
    /// reach every API call and, through the node watch, every SSH decision and live session.
    /// `None` when `d` has no credential: nothing was ever augmented with it.
    pub(crate) async fn revocation(
        &self,
        caller: &Caller,
        d: &Device,
        why: &str,
        now: OffsetDateTime,
    ) -> ApiResult<Option<Revocation>> {
        let Some(cred) = &d.spec.credential else {
            return Ok(None);
        };
        let roles = self
            .list_resources::<dt_types::resource::RoleSpec>()
            .await?;
        let longest = roles
            .iter()
            .filter_map(|r| r.spec.options.max_session_ttl.map(|t| t.0))
            .chain([dt_authz::DEFAULT_MAX_SESSION_TTL])
            .max()
            .unwrap_or(dt_authz::DEFAULT_MAX_SESSION_TTL);
        let expires = now + longest;
        let name = format!("device-revoked-{}", uuid::Uuid::new_v4());
        let mut lock: dt_types::Lock = Resource::new(
            name.clone(),
            dt_types::resource::LockSpec {
                target: dt_types::LockTarget {
                    device: Some(d.metadata.name.clone()),
                    device_credential: Some(cred.id.to_string()),
                    ..Default::default()
                },
                message: Some(format!(
                    "device {:?} was {why}; log in again (certificates augmented with it are revoked)",
                    d.spec.asset_tag
                )),
                created_by: Some(caller.name().to_string()),
                created_at: Some(now),
            },
        );
        lock.metadata.expires = Some(expires);
        let key = keys::resource(Kind::Lock, &name);
        let value = serde_json::to_vec(&lock).map_err(ApiError::internal)?;
        let mut event = AuditEvent::new(EventType::LockCreate, true, now)
            .user(caller.name())
            .device(device_info(d))
            .message(format!(
                "lock targeting {}: certificates augmented with device {:?} revoked until {expires} (device {why})",
                lock.spec.target, d.spec.asset_tag
            ))
            .remote_addr(caller.peer.addr.ip().to_string());
        event.lock = Some(name);
        Ok(Some(Revocation {
            op: Op::Put {
                key,
                value,
                expires: Some(expires),
            },
            event,
        }))
    }

    /// RBAC on a device verb; a refusal leaves a failed `event` naming the reason.
    pub(super) async fn authorize_device(
        &self,
        caller: &Caller,
        verb: Verb,
        event: EventType,
    ) -> ApiResult<()> {
        if let Err(e) = self.authorize(caller, "device", verb) {
            self.audit
                .emit(
                    AuditEvent::new(event, false, self.env.now())
                        .user(caller.name())
                        .message(e.to_string())
                        .remote_addr(caller.peer.addr.ip().to_string()),
                )
                .await?;
            return Err(e);
        }
        Ok(())
    }

    /// Normalize a new device: server-owned fields are set here, never taken from clients.
    pub(super) fn new_device(&self, mut d: Device, now: OffsetDateTime) -> Device {
        d.metadata.revision = None;
        d.spec.enroll_status = EnrollStatus::NotEnrolled;
        d.spec.credential = None;
        d.spec.collected_data.clear();
        d.spec.owner = None;
        d.spec.create_time = Some(now);
        d.spec.update_time = Some(now);
        if d.spec.source.is_none() {
            d.spec.source = Some(DeviceSource {
                name: "api".into(),
                origin: SourceOrigin::Api,
            });
        }
        d
    }

    pub async fn create_device(
        &self,
        caller: &Caller,
        device: Device,
        with_token: Option<Duration>,
    ) -> ApiResult<(Device, i64, Option<pb::DeviceEnrollToken>)> {
        self.authorize_device(caller, Verb::Create, EventType::DeviceCreate)
            .await?;
        if with_token.is_some() {
            self.authorize_device(
                caller,
                Verb::CreateEnrollToken,
                EventType::DeviceTokenCreate,
            )
            .await?;
        }
        let now = self.env.now();
        let d = self.new_device(device, now);
        let id = d.metadata.name.clone();
        let mut ops = put_ops(&d)?;
        let mut token = None;
        if let Some(ttl) = with_token {
            let (t, t_ops) = self.token_ops(&id, ttl, now, None)?;
            ops.extend(t_ops);
            token = Some(t);
        }
        let event = AuditEvent::new(EventType::DeviceCreate, true, now)
            .user(caller.name())
            .device(device_info(&d))
            .remote_addr(caller.peer.addr.ip().to_string());
        match self
            .commit(plan::devices::device_created(&d, ops, event))
            .await
        {
            Ok(rev) => {
                if token.is_some() {
                    self.audit
                        .emit(
                            AuditEvent::new(EventType::DeviceTokenCreate, true, now)
                                .user(caller.name())
                                .device(device_info(&d)),
                        )
                        .await?;
                }
                Ok((d, rev, token))
            }
            Err(ApiError::Refused(
                taken @ (Refusal::DeviceExists { .. } | Refusal::DeviceIdTaken { .. }),
            )) => {
                self.audit
                    .emit(
                        AuditEvent::new(EventType::DeviceCreate, false, now)
                            .user(caller.name())
                            .device(device_info(&d))
                            .message(taken.to_string()),
                    )
                    .await?;
                Err(ApiError::Refused(taken))
            }
            Err(e) => Err(e),
        }
    }

    /// Admin edits: only un-enrolling (`enroll_status: not_enrolled`), `profile` and
    /// `source` may change. Un-enrolling clears the credential, owner and collected data.
    pub async fn update_device(
        &self,
        caller: &Caller,
        edited: Device,
        expected_revision: i64,
    ) -> ApiResult<(Device, i64)> {
        self.authorize_device(caller, Verb::Update, EventType::DeviceUpdate)
            .await?;
        let id = edited.metadata.name.clone();
        let Some((current, rev)) = self.get_device(&id).await? else {
            return Err(ApiError::NotFound(format!("device {id:?} not found")));
        };
        if expected_revision != 0 && expected_revision != rev {
            return Err(ApiError::Conflict(format!(
                "device {id:?} was changed by someone else since you read it; read it again and retry"
            )));
        }
        let (c, e) = (&current.spec, &edited.spec);
        let mut refused = Vec::new();
        if c.os_type != e.os_type {
            refused.push("os_type");
        }
        if c.asset_tag != e.asset_tag {
            refused.push("asset_tag");
        }
        if e.enroll_status == EnrollStatus::Enrolled && c.enroll_status != EnrollStatus::Enrolled {
            refused.push("enroll_status (enroll with a token instead)");
        }
        let unenroll = c.enroll_status == EnrollStatus::Enrolled
            && e.enroll_status == EnrollStatus::NotEnrolled;
        if !unenroll {
            if c.credential != e.credential {
                refused.push("credential");
            }
            if c.owner != e.owner {
                refused.push("owner");
            }
            if c.collected_data != e.collected_data {
                refused.push("collected_data");
            }
        }
        if !refused.is_empty() {
            let msg = format!(
                "device {id:?}: {} can't be changed; only profile, source and `enroll_status: not_enrolled` may be edited",
                refused.join(", ")
            );
            self.audit
                .emit(
                    AuditEvent::new(EventType::DeviceUpdate, false, self.env.now())
                        .user(caller.name())
                        .device(device_info(&current))
                        .message(&msg),
                )
                .await?;
            return Err(ApiError::InvalidArgument(msg));
        }
        let now = self.env.now();
        let mut next = current.clone();
        next.spec.profile = e.profile.clone();
        next.spec.source = e.source.clone();
        next.spec.update_time = Some(now);
        if unenroll {
            next.spec.enroll_status = EnrollStatus::NotEnrolled;
            next.spec.credential = None;
            next.spec.owner = None;
            next.spec.collected_data.clear();
        }
        let mut ops = index_deletes(&current);
        ops.extend(put_ops(&next)?);
        let mut event = AuditEvent::new(EventType::DeviceUpdate, true, now)
            .user(caller.name())
            .device(device_info(&current))
            .remote_addr(caller.peer.addr.ip().to_string());
        let mut revocation = None;
        if unenroll {
            event.message = Some(
                "device un-enrolled: credential, owner and collected data cleared; its certificates revoked"
                    .into(),
            );
            revocation = self
                .revocation(caller, &current, "un-enrolled", now)
                .await?;
        }
        let rev = self
            .write_device_change(&id, rev, ops, vec![event], revocation)
            .await?;
        Ok((next, rev))
    }

    /// Write a change of device `id` (still at revision `rev`) with its events, and the
    /// revocation lock when the change revokes its certificates, in one transaction.
    async fn write_device_change(
        &self,
        id: &str,
        rev: i64,
        mut ops: Vec<Op>,
        mut events: Vec<AuditEvent>,
        revocation: Option<Revocation>,
    ) -> ApiResult<i64> {
        if let Some(r) = &revocation {
            ops.push(r.op.clone());
            events.push(r.event.clone());
        }
        // Committing applies the revocation lock to this server's cache at once, so its next
        // request is refused, not only when the watch delivers it.
        self.commit(plan::devices::device_changed(id, rev, ops, events))
            .await
    }

    pub async fn delete_device(&self, caller: &Caller, r: &pb::DeviceRef) -> ApiResult<Device> {
        self.authorize_device(caller, Verb::Delete, EventType::DeviceDelete)
            .await?;
        let (d, rev) = self.resolve_device(r).await?;
        let id = d.metadata.name.clone();
        let mut ops = index_deletes(&d);
        ops.push(Op::Delete {
            key: keys::resource(Kind::Device, &id),
        });
        if let Some(item) = self.backend.get(&keys::device_token_index(&id)).await? {
            let hash = String::from_utf8_lossy(&item.value).to_string();
            ops.push(Op::Delete {
                key: keys::device_token(&hash),
            });
            ops.push(Op::Delete {
                key: keys::device_token_index(&id),
            });
        }
        let now = self.env.now();
        let event = AuditEvent::new(EventType::DeviceDelete, true, now)
            .user(caller.name())
            .device(device_info(&d))
            .remote_addr(caller.peer.addr.ip().to_string());
        let revocation = self.revocation(caller, &d, "deleted", now).await?;
        self.write_device_change(&id, rev, ops, vec![event], revocation)
            .await?;
        Ok(d)
    }
}

/// A device with a fresh id (see [`dt_types::device::new_device`]).
pub fn new_device_resource(os: OsType, asset_tag: &str) -> Device {
    dt_types::device::new_device(os, asset_tag)
}
