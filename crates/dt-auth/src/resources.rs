//! Resources (roles, users, locks, tokens, the cluster auth preference...): read, create or
//! update with the fields only the server sets kept, delete, each checked and audited.

use dt_proto::v1 as pb;
use dt_types::audit::{AuditEvent, EventType};
use dt_types::resource::Resource;
use dt_types::resource::{LockSpec, RoleSpec, TokenSpec, UserSpec};
use dt_types::{AnyResource, Kind, UserName, Verb};

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::plan::{
    self,
    resources::{Expect, Leftovers},
};
use crate::server::{AuthServer, LOCAL_ADMIN};

/// The spec stored before an overwrite, for the fields only the server sets (creation time
/// and creator): a client can neither set them on create nor move them on update. `None`
/// for a new resource, or an unreadable stored one (then the server stamps afresh, which
/// only makes older certificates of a user stop working).
pub(crate) fn stored_spec<S: dt_types::resource::Spec>(
    existing: Option<&dt_store::Item>,
) -> Option<S> {
    existing
        .and_then(|item| serde_json::from_slice::<Resource<S>>(&item.value).ok())
        .map(|r| r.spec)
}

impl AuthServer {
    pub(crate) fn resource_document(&self, r: &AnyResource, revision: i64) -> pb::ResourceDocument {
        dt_proto::resource::resource_document(r, revision)
    }

    pub(crate) async fn get_any(
        &self,
        kind: Kind,
        name: &str,
    ) -> ApiResult<Option<(AnyResource, i64)>> {
        let Some(item) = self.backend.get(&keys::resource(kind, name)).await? else {
            return Ok(None);
        };
        let value: serde_json::Value =
            serde_json::from_slice(&item.value).map_err(ApiError::internal)?;
        // Stored documents were validated on write; re-validation failures mean a newer
        // server wrote something this one can't read.
        let r = AnyResource::from_json_value(value).map_err(ApiError::internal)?;
        Ok(Some((r, item.revision)))
    }

    pub async fn upsert(
        &self,
        caller: &Caller,
        req: pb::UpsertResourceRequest,
    ) -> ApiResult<pb::UpsertResourceResponse> {
        let mut res = dt_proto::resource::parse_document(&req.canonical_json)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let kind = res.kind();
        let name = res.name().to_string();
        if let AnyResource::Device(d) = res {
            let existing = self.get_device(&name).await?;
            let created = existing.is_none();
            let (d, _rev) = match existing {
                None => {
                    let (d, rev, _) = self.create_device(caller, d, None).await?;
                    (d, rev)
                }
                Some(_) if !req.force && req.expected_revision == 0 => {
                    return Err(ApiError::AlreadyExists(format!(
                        "device {name:?} already exists; use --force to overwrite it"
                    )));
                }
                Some(_) => self.update_device(caller, d, req.expected_revision).await?,
            };
            return Ok(pb::UpsertResourceResponse {
                kind: kind.as_str().into(),
                name: d.metadata.name,
                created,
            });
        }
        let existing = self.backend.get(&keys::resource(kind, &name)).await?;
        let verb = if existing.is_some() {
            Verb::Update
        } else {
            Verb::Create
        };
        self.authorize(caller, kind.as_str(), verb)?;
        if existing.is_some() && !req.force && req.expected_revision == 0 {
            return Err(ApiError::AlreadyExists(format!(
                "{kind} {name:?} already exists; use --force to overwrite it"
            )));
        }
        let now = self.env.now();
        match &mut res {
            AnyResource::User(u) => {
                if name == LOCAL_ADMIN {
                    return Err(ApiError::InvalidArgument(format!(
                        "{LOCAL_ADMIN:?} is a reserved name"
                    )));
                }
                for role in &u.spec.roles {
                    if self.get_resource::<RoleSpec>(role).await?.is_none() {
                        return Err(ApiError::InvalidArgument(format!(
                            "user {name:?}: role {role:?} does not exist; create it first"
                        )));
                    }
                }
                let stored = stored_spec::<UserSpec>(existing.as_ref());
                (u.spec.created_at, u.spec.created_by) = match stored {
                    Some(s) => (s.created_at, s.created_by),
                    None => (Some(now), Some(caller.name().to_string())),
                };
            }
            AnyResource::ClusterAuthPreference(c) => {
                for (i, pem) in c.spec.device_trust.ekcert_allowed_cas.iter().enumerate() {
                    dt_attest::tpm::validate_allowed_ca_pem(pem).map_err(|why| {
                        ApiError::InvalidArgument(format!(
                            "device_trust.ekcert_allowed_cas[{i}] was refused: {why}; paste the TPM manufacturer's CA certificate in PEM form"
                        ))
                    })?;
                }
            }
            AnyResource::Lock(l) => {
                let stored = stored_spec::<LockSpec>(existing.as_ref());
                (l.spec.created_at, l.spec.created_by) = match stored {
                    Some(s) => (s.created_at, s.created_by),
                    None => (Some(now), Some(caller.name().to_string())),
                };
            }
            _ => {}
        }
        let expires = res.metadata().expires;
        if expires.is_some_and(|e| e <= now) {
            return Err(ApiError::InvalidArgument(
                "metadata.expires is in the past".into(),
            ));
        }
        res.metadata_mut().revision = None;
        let value = res.to_json_value().to_string().into_bytes();
        let expect = if req.expected_revision != 0 {
            Expect::Revision(req.expected_revision)
        } else if req.force {
            // Overwrite whatever is there (or create).
            Expect::Current(existing.as_ref().map(|item| item.revision))
        } else {
            Expect::Absent
        };
        let event_type = match (kind, existing.is_some()) {
            (Kind::User, false) => EventType::UserCreate,
            (Kind::User, true) => EventType::UserUpdate,
            (Kind::Lock, false) => EventType::LockCreate,
            (_, false) => EventType::ResourceCreate,
            (_, true) => EventType::ResourceUpdate,
        };
        let mut event = AuditEvent::new(event_type, true, now)
            .user(caller.name())
            .resource(kind.as_str(), &name)
            .remote_addr(caller.peer.addr.ip().to_string());
        if let AnyResource::Lock(l) = &res {
            event.lock = Some(name.clone());
            event.message = Some(format!("lock targeting {}", l.spec.target));
        }
        let plan = plan::resources::upserted(kind, &name, value.clone(), expires, expect, event);
        // Committing applies it to this server's cache at once (a lock must block the very
        // next request), not only when the watch delivers it.
        self.commit(plan).await?;
        Ok(pb::UpsertResourceResponse {
            kind: kind.as_str().into(),
            name,
            created: existing.is_none(),
        })
    }

    pub(crate) async fn delete(&self, caller: &Caller, kind: Kind, name: &str) -> ApiResult<()> {
        self.authorize(caller, kind.as_str(), Verb::Delete)?;
        if kind == Kind::ClusterAuthPreference {
            return Err(ApiError::InvalidArgument(
                "the cluster auth preference can't be removed; use `dtctl edit cluster_auth_preference`".into(),
            ));
        }
        if kind == Kind::Device {
            let dref = if dt_types::DeviceId::parse(name).is_ok() {
                pb::DeviceRef {
                    device_id: name.into(),
                    ..Default::default()
                }
            } else {
                pb::DeviceRef {
                    asset_tag: name.into(),
                    ..Default::default()
                }
            };
            self.delete_device(caller, &dref).await?;
            return Ok(());
        }
        let key = keys::resource(kind, name);
        let Some(item) = self.backend.get(&key).await? else {
            return Err(ApiError::NotFound(format!("{kind} {name:?} not found")));
        };
        let (event_type, leftovers) = match kind {
            // A pending signup token must die with the user: it would otherwise set the
            // password of a later user with the same name.
            Kind::User => {
                let user = UserName::parse(name)?;
                let live_signup = self.live_signup_token(&user).await?;
                (EventType::UserDelete, Leftovers::User { user, live_signup })
            }
            Kind::Lock => (EventType::LockDelete, Leftovers::None),
            Kind::Token => (
                EventType::ResourceDelete,
                Leftovers::Token {
                    token_hash: serde_json::from_slice::<Resource<TokenSpec>>(&item.value)
                        .ok()
                        .map(|tok| tok.spec.token_hash),
                },
            ),
            _ => (EventType::ResourceDelete, Leftovers::None),
        };
        let mut event = AuditEvent::new(event_type, true, self.env.now())
            .user(caller.name())
            .resource(kind.as_str(), name)
            .remote_addr(caller.peer.addr.ip().to_string());
        if kind == Kind::Lock {
            event.lock = Some(name.to_string());
        }
        let plan = plan::resources::deleted(kind, name, item.revision, &leftovers, event);
        self.commit(plan).await?;
        Ok(())
    }
}
