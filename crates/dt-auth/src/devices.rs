//! Device inventory: create, update, delete, find, list, bulk create, and enrollment tokens.
//!
//! Invariants kept by every write (each one atomic, with its audit event):
//! - (os_type, asset_tag) is unique: the tag index is created with a `NotExists` condition;
//! - a credential id belongs to at most one device (credential index, `NotExists`);
//! - a device has at most one live enrollment token; only its SHA-256 is stored.

use std::time::Duration;

use dt_ceremony::token::EnrollTokenRecord;
use dt_proto::v1 as pb;
use dt_store::{Condition, Op, StoreError};
use dt_types::audit::{AuditEvent, DeviceInfo, EventType};
use dt_types::device::{DeviceSource, DeviceSpec, EnrollStatus, OsType, SourceOrigin};
use dt_types::resource::Resource;
use dt_types::{AnyResource, Device, Kind, Verb};
use time::OffsetDateTime;

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::server::AuthServer;

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
        d.metadata.name = dt_types::DeviceId::random().into_string();
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
    Some(keys::device_key_index(&crate::tokens::hex_lower(
        &sha2::Sha256::digest(material.as_bytes()),
    )))
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
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
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
                key: key.clone(),
                value: value.clone(),
                expires: Some(expires),
            },
            event,
            key,
            value,
        }))
    }

    /// RBAC on a device verb; a refusal leaves a failed `event` naming the reason.
    async fn authorize_device(
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

    /// Which devices `caller` may read with `verb` (`read`, `list`): every device when a role
    /// allows it (`None`), otherwise only the devices they own (`Some(user)`); a deny rule on
    /// the verb refuses even those.
    pub(crate) fn device_read_scope<'c>(
        &self,
        caller: &'c Caller,
        verb: Verb,
    ) -> ApiResult<Option<&'c str>> {
        match self.authorize(caller, "device", verb) {
            Ok(()) => Ok(None),
            Err(e) => match dt_authz::check_deny_rules(&caller.roles, "device", verb) {
                dt_authz::Decision::Allow => Ok(Some(caller.name())),
                dt_authz::Decision::Deny(_) => Err(e),
            },
        }
    }

    /// [`AuthServer::resolve_device`] for a reader: a device outside their scope reads as
    /// absent, so its existence is not disclosed.
    pub async fn read_device(
        &self,
        caller: &Caller,
        r: &pb::DeviceRef,
    ) -> ApiResult<(Device, i64)> {
        let scope = self.device_read_scope(caller, Verb::Read)?;
        let (d, rev) = self.resolve_device(r).await?;
        match scope {
            Some(owner) if d.spec.owner.as_deref() != Some(owner) => {
                let what = if r.device_id.is_empty() {
                    &r.asset_tag
                } else {
                    &r.device_id
                };
                Err(ApiError::NotFound(format!(
                    "device {what:?} not found among your devices"
                )))
            }
            _ => Ok((d, rev)),
        }
    }

    pub async fn get_device(&self, id: &str) -> ApiResult<Option<(Device, i64)>> {
        self.get_resource::<DeviceSpec>(id).await
    }

    pub async fn device_by_tag(&self, os: OsType, tag: &str) -> ApiResult<Option<(Device, i64)>> {
        let Some(item) = self.backend.get(&keys::device_tag_index(os, tag)).await? else {
            return Ok(None);
        };
        let id = String::from_utf8(item.value).map_err(ApiError::internal)?;
        self.get_device(&id).await
    }

    pub async fn device_by_credential(
        &self,
        credential_id: &str,
    ) -> ApiResult<Option<(Device, i64)>> {
        let Some(item) = self
            .backend
            .get(&keys::device_credential_index(credential_id))
            .await?
        else {
            return Ok(None);
        };
        let id = String::from_utf8(item.value).map_err(ApiError::internal)?;
        self.get_device(&id).await
    }

    /// Devices whose id or asset tag equals `needle` (any OS) that `caller` may read.
    pub async fn find_readable_devices(
        &self,
        caller: &Caller,
        needle: &str,
    ) -> ApiResult<Vec<(Device, i64)>> {
        let scope = self.device_read_scope(caller, Verb::Read)?;
        let mut found = self.find_devices(needle).await?;
        if let Some(owner) = scope {
            found.retain(|(d, _)| d.spec.owner.as_deref() == Some(owner));
        }
        Ok(found)
    }

    /// Devices whose id or asset tag equals `needle` (any OS).
    pub async fn find_devices(&self, needle: &str) -> ApiResult<Vec<(Device, i64)>> {
        let mut out = Vec::new();
        if dt_types::DeviceId::parse(needle).is_ok()
            && let Some(d) = self.get_device(needle).await?
        {
            out.push(d);
        }
        for os in [OsType::Macos, OsType::Windows, OsType::Linux] {
            if let Some(d) = self.device_by_tag(os, needle).await?
                && !out
                    .iter()
                    .any(|(x, _)| x.metadata.name == d.0.metadata.name)
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Exactly one device for a reference, or a clear error.
    pub async fn resolve_device(&self, r: &pb::DeviceRef) -> ApiResult<(Device, i64)> {
        if !r.device_id.is_empty() {
            return self
                .get_device(&r.device_id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("device {:?} not found", r.device_id)));
        }
        if r.asset_tag.is_empty() {
            return Err(ApiError::InvalidArgument(
                "name the device: --device-id or --asset-tag".into(),
            ));
        }
        let os = dt_proto::device::os_type_from_proto(r.os_type, "os_type")
            .map_err(|e| ApiError::InvalidArgument(format!("{e} (use macos, windows or linux)")))?;
        if let Some(os) = os {
            return self.device_by_tag(os, &r.asset_tag).await?.ok_or_else(|| {
                ApiError::NotFound(format!("device {:?}/{os} not found", r.asset_tag))
            });
        }
        let mut found = Vec::new();
        for os in [OsType::Macos, OsType::Windows, OsType::Linux] {
            if let Some(d) = self.device_by_tag(os, &r.asset_tag).await? {
                found.push(d);
            }
        }
        match found.len() {
            0 => Err(ApiError::NotFound(format!(
                "device {:?} not found",
                r.asset_tag
            ))),
            1 => Ok(found.remove(0)),
            _ => Err(ApiError::InvalidArgument(format!(
                "asset tag {:?} exists for several OSes; add --os",
                r.asset_tag
            ))),
        }
    }

    /// Normalize a new device: server-owned fields are set here, never taken from clients.
    fn new_device(&self, mut d: Device, now: OffsetDateTime) -> Device {
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

    fn token_ops(
        &self,
        device_id: &str,
        ttl: Duration,
        now: OffsetDateTime,
        previous_hash: Option<String>,
    ) -> ApiResult<(pb::DeviceEnrollToken, Vec<Op>)> {
        if ttl > MAX_ENROLL_TTL {
            return Err(ApiError::InvalidArgument(
                "enrollment token TTL is at most 7d".into(),
            ));
        }
        let ttl = if ttl.is_zero() {
            DEFAULT_ENROLL_TTL
        } else {
            ttl
        };
        // Only devices that passed validation get tokens: their names are device ids.
        let typed_id = dt_types::DeviceId::parse(device_id).map_err(ApiError::internal)?;
        let mut env = self.env.ceremony();
        let (token, record) = EnrollTokenRecord::issue(
            typed_id,
            now,
            time::Duration::try_from(ttl).map_err(ApiError::internal)?,
            &mut env,
        );
        // Keep the record a day past expiry so "expired" and "already used" stay
        // distinguishable in the audit log; the sweeper removes it after that.
        let keep_until = record.expires + time::Duration::days(1);
        let mut ops = Vec::new();
        if let Some(h) = previous_hash {
            ops.push(Op::Delete {
                key: keys::device_token(&h),
            });
        }
        ops.push(Op::Put {
            key: keys::device_token(&record.token_hash),
            value: serde_json::to_vec(&record).map_err(ApiError::internal)?,
            expires: Some(keep_until),
        });
        ops.push(Op::Put {
            key: keys::device_token_index(device_id),
            value: record.token_hash.clone().into_bytes(),
            expires: Some(keep_until),
        });
        Ok((
            pb::DeviceEnrollToken {
                token: token.expose().to_string(),
                expires_unix: record.expires.unix_timestamp(),
                device_id: device_id.to_string(),
            },
            ops,
        ))
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
        let conds = vec![
            Condition::NotExists(keys::device_tag_index(d.spec.os_type, &d.spec.asset_tag)),
            Condition::NotExists(keys::resource(Kind::Device, &id)),
        ];
        let event = AuditEvent::new(EventType::DeviceCreate, true, now)
            .user(caller.name())
            .device(device_info(&d))
            .remote_addr(caller.peer.addr.ip().to_string());
        match self.audit.write_with(conds, ops, event).await {
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
            Err(StoreError::ConditionFailed { .. }) => {
                let msg = format!(
                    "device {:?}/{} is already in the inventory",
                    d.spec.asset_tag, d.spec.os_type
                );
                self.audit
                    .emit(
                        AuditEvent::new(EventType::DeviceCreate, false, now)
                            .user(caller.name())
                            .device(device_info(&d))
                            .message(&msg),
                    )
                    .await?;
                Err(ApiError::AlreadyExists(msg))
            }
            Err(e) => Err(e.into()),
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
        let rev = self
            .audit
            .write_with_events(
                vec![Condition::Revision(keys::resource(Kind::Device, id), rev)],
                ops,
                events,
            )
            .await
            .map_err(|e| match e {
                StoreError::ConditionFailed { .. } => {
                    ApiError::Conflict(format!("device {id:?} changed meanwhile; try again"))
                }
                other => other.into(),
            })?;
        // Refused by this server's next request at once, not only when the watch delivers it.
        if let Some(r) = revocation {
            self.cache.apply(&r.key, rev, Some(&r.value));
        }
        Ok(rev)
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

    pub async fn create_enroll_token(
        &self,
        caller: &Caller,
        r: &pb::DeviceRef,
        ttl: Duration,
    ) -> ApiResult<pb::DeviceEnrollToken> {
        self.authorize_device(
            caller,
            Verb::CreateEnrollToken,
            EventType::DeviceTokenCreate,
        )
        .await?;
        let now = self.env.now();
        let (d, rev) = match self.resolve_device(r).await {
            Ok(x) => x,
            Err(e) => {
                self.audit
                    .emit(
                        AuditEvent::new(EventType::DeviceTokenCreate, false, now)
                            .user(caller.name())
                            .message(e.to_string()),
                    )
                    .await?;
                return Err(e);
            }
        };
        if d.spec.enroll_status == EnrollStatus::Enrolled {
            let msg = format!(
                "device {:?} is already enrolled; un-enroll it first (`dtctl edit device/{}` and set enroll_status: not_enrolled)",
                d.spec.asset_tag, d.spec.asset_tag
            );
            self.audit
                .emit(
                    AuditEvent::new(EventType::DeviceTokenCreate, false, now)
                        .user(caller.name())
                        .device(device_info(&d))
                        .message(&msg),
                )
                .await?;
            return Err(ApiError::FailedPrecondition(msg));
        }
        let id = d.metadata.name.clone();
        let previous = self
            .backend
            .get(&keys::device_token_index(&id))
            .await?
            .map(|i| String::from_utf8_lossy(&i.value).to_string());
        let (token, ops) = self.token_ops(&id, ttl, now, previous)?;
        self.audit
            .write_with(
                vec![Condition::Revision(keys::resource(Kind::Device, &id), rev)],
                ops,
                AuditEvent::new(EventType::DeviceTokenCreate, true, now)
                    .user(caller.name())
                    .device(device_info(&d))
                    .remote_addr(caller.peer.addr.ip().to_string()),
            )
            .await
            .map_err(|e| match e {
                StoreError::ConditionFailed { .. } => {
                    ApiError::Conflict(format!("device {id:?} changed meanwhile; try again"))
                }
                other => other.into(),
            })?;
        Ok(token)
    }

    pub async fn list_devices(
        &self,
        caller: &Caller,
        page_size: usize,
        page_token: &str,
    ) -> ApiResult<(Vec<(Device, i64)>, Option<String>)> {
        let scope = self.device_read_scope(caller, Verb::List)?;
        let limit = if page_size == 0 {
            MAX_PAGE
        } else {
            page_size.min(MAX_PAGE)
        };
        if let Some(owner) = scope {
            return self.list_owned_devices(owner, limit, page_token).await;
        }
        let prefix = keys::resource_prefix(Kind::Device);
        let start = (!page_token.is_empty()).then(|| keys::resource(Kind::Device, page_token));
        let page = self.backend.range(&prefix, start.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(page.items.len());
        for item in page.items {
            match serde_json::from_slice::<Device>(&item.value) {
                Ok(d) => out.push((d, item.revision)),
                Err(e) => tracing::warn!(key = %item.key, error = %e, "skipping unreadable device"),
            }
        }
        Ok((
            out,
            page.next.map(|k| k.trim_start_matches(&prefix).to_string()),
        ))
    }

    /// One page of the devices `owner` owns, through the owner index, by device id.
    async fn list_owned_devices(
        &self,
        owner: &str,
        limit: usize,
        page_token: &str,
    ) -> ApiResult<(Vec<(Device, i64)>, Option<String>)> {
        let prefix = keys::device_owner_index(owner, "");
        let start = (!page_token.is_empty()).then(|| keys::device_owner_index(owner, page_token));
        let page = self.backend.range(&prefix, start.as_deref(), limit).await?;
        let mut out = Vec::with_capacity(page.items.len());
        for item in page.items {
            let id = item.key.trim_start_matches(&prefix);
            // The index and the record are written together; re-check the owner anyway.
            if let Some((d, rev)) = self.get_device(id).await?
                && d.spec.owner.as_deref() == Some(owner)
            {
                out.push((d, rev));
            }
        }
        Ok((
            out,
            page.next.map(|k| k.trim_start_matches(&prefix).to_string()),
        ))
    }

    /// One status per input, in order; a bad item does not stop the others.
    pub async fn bulk_create_devices(
        &self,
        caller: &Caller,
        items: Vec<pb::Device>,
    ) -> ApiResult<Vec<pb::BulkCreateStatus>> {
        self.authorize_device(caller, Verb::Create, EventType::DeviceCreate)
            .await?;
        if items.len() > MAX_BULK {
            return Err(ApiError::InvalidArgument(format!(
                "at most {MAX_BULK} devices per request"
            )));
        }
        // One transaction for the whole request (with one event per device): a per-device
        // transaction made imports fsync-bound. Known conflicts are read first; a conflict
        // that appears meanwhile drops just that device and the rest is retried.
        let now = self.env.now();
        let mut out: Vec<Option<pb::BulkCreateStatus>> = vec![None; items.len()];
        let failed = |tag: &str, error: String| pb::BulkCreateStatus {
            ok: false,
            device_id: String::new(),
            asset_tag: tag.to_string(),
            error,
        };
        let mut pending: Vec<(usize, Device)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, item) in items.into_iter().enumerate() {
            match device_from_proto(Some(item)) {
                Err(e) => out[i] = Some(failed("", e.to_string())),
                Ok(d) => {
                    let d = self.new_device(d, now);
                    let tag_key = keys::device_tag_index(d.spec.os_type, &d.spec.asset_tag);
                    if !seen.insert(tag_key.clone()) {
                        out[i] = Some(failed(
                            &d.spec.asset_tag,
                            "listed twice in this request".into(),
                        ));
                    } else if self.backend.get(&tag_key).await?.is_some() {
                        out[i] = Some(failed(
                            &d.spec.asset_tag,
                            format!(
                                "device {:?}/{} is already in the inventory",
                                d.spec.asset_tag, d.spec.os_type
                            ),
                        ));
                    } else {
                        pending.push((i, d));
                    }
                }
            }
        }
        while !pending.is_empty() {
            let mut conds = Vec::with_capacity(pending.len() * 2);
            let mut ops = Vec::with_capacity(pending.len() * 2);
            let mut events = Vec::with_capacity(pending.len());
            for (_, d) in &pending {
                conds.push(Condition::NotExists(keys::device_tag_index(
                    d.spec.os_type,
                    &d.spec.asset_tag,
                )));
                conds.push(Condition::NotExists(keys::resource(
                    Kind::Device,
                    &d.metadata.name,
                )));
                ops.extend(put_ops(d)?);
                events.push(
                    AuditEvent::new(EventType::DeviceCreate, true, now)
                        .user(caller.name())
                        .device(device_info(d))
                        .remote_addr(caller.peer.addr.ip().to_string()),
                );
            }
            match self.audit.write_with_events(conds, ops, events).await {
                Ok(_) => {
                    for (i, d) in pending.drain(..) {
                        out[i] = Some(pb::BulkCreateStatus {
                            ok: true,
                            device_id: d.metadata.name.clone(),
                            asset_tag: d.spec.asset_tag.clone(),
                            error: String::new(),
                        });
                    }
                }
                Err(StoreError::ConditionFailed { index, .. }) if index / 2 < pending.len() => {
                    let (i, d) = pending.remove(index / 2);
                    out[i] = Some(failed(
                        &d.spec.asset_tag,
                        format!(
                            "device {:?}/{} is already in the inventory",
                            d.spec.asset_tag, d.spec.os_type
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Refusals are audited too (one event each), after the successful write.
        let refusals: Vec<AuditEvent> = out
            .iter()
            .flatten()
            .filter(|st| !st.ok)
            .map(|st| {
                AuditEvent::new(EventType::DeviceCreate, false, now)
                    .user(caller.name())
                    .device(dt_types::audit::DeviceInfo {
                        asset_tag: st.asset_tag.clone(),
                        ..Default::default()
                    })
                    .message(st.error.clone())
            })
            .collect();
        if !refusals.is_empty() {
            self.audit
                .write_with_events(vec![], vec![], refusals)
                .await?;
        }
        Ok(out
            .into_iter()
            .map(|st| st.unwrap_or_else(|| failed("", "not processed".into())))
            .collect())
    }
}

/// A device with a fresh id (see [`dt_types::device::new_device`]).
pub fn new_device_resource(os: OsType, asset_tag: &str) -> Device {
    dt_types::device::new_device(os, asset_tag)
}
