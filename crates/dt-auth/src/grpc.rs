//! The `AuthService` gRPC handlers. Each handler: who is calling (from the mTLS [`Peer`]),
//! may they (RBAC), validate input, one atomic write with its audit event, reply.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_server::AuthService;
use dt_store::{Condition, Op, StoreError};
use dt_types::audit::{AuditEvent, CertInfo, EventType};
use dt_types::resource::Resource;
use dt_types::resource::{LockSpec, RoleSpec, TokenRole, TokenSpec, Traits, UserSpec};
use dt_types::{AnyResource, Kind, Role, User, Verb};
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::audit::EventFilter;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::listener::Peer;
use crate::server::{AuthServer, LOCAL_ADMIN, VERSION};

pub const DEFAULT_SIGNUP_TTL: Duration = Duration::from_secs(3600);
pub const MAX_SIGNUP_TTL: Duration = Duration::from_secs(7 * 86400);
pub const MIN_PASSWORD_LEN: usize = 8;
const MIN_CERT_TTL: Duration = Duration::from_secs(60);

/// An authenticated caller and its roles.
pub struct Caller {
    pub identity: Arc<dt_ca::Identity>,
    pub roles: Vec<Role>,
    pub peer: Peer,
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.identity.username
    }
}

#[derive(Clone)]
pub struct GrpcAuth {
    pub srv: Arc<AuthServer>,
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256_hex(s: &str) -> String {
    hex_lower(&Sha256::digest(s.as_bytes()))
}

pub(crate) fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn peer_of<T>(req: &Request<T>) -> ApiResult<Peer> {
    req.extensions()
        .get::<Peer>()
        .cloned()
        .ok_or_else(|| ApiError::internal("request without connection info"))
}

fn to_json<T: serde::Serialize>(v: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(ApiError::internal)
}

/// The spec stored before an overwrite, for the fields only the server sets (creation time
/// and creator): a client can neither set them on create nor move them on update. `None`
/// for a new resource, or an unreadable stored one (then the server stamps afresh, which
/// only makes older certificates of a user stop working).
fn stored_spec<S: dt_types::resource::Spec>(existing: Option<&dt_store::Item>) -> Option<S> {
    existing
        .and_then(|item| serde_json::from_slice::<Resource<S>>(&item.value).ok())
        .map(|r| r.spec)
}

impl AuthServer {
    /// The caller of an authenticated API call, or `Unauthenticated` with what to do.
    pub async fn caller(&self, peer: Peer) -> ApiResult<Caller> {
        let Some(identity) = peer.identity.clone() else {
            return Err(ApiError::Unauthenticated(
                "this call needs a signed-in identity: run `dtsh login`, or use `dtctl --data-dir DIR` on the auth host".into(),
            ));
        };
        // The TLS handshake checked the validity once; a connection can outlive it.
        let now = OffsetDateTime::now_utc();
        if identity.is_expired(now) {
            let not_after = identity
                .not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            self.audit
                .emit(
                    AuditEvent::new(EventType::AccessDenied, false, now)
                        .user(identity.username.clone())
                        .message(format!(
                            "certificate expired at {not_after}: api call on an open connection refused"
                        ))
                        .remote_addr(peer.addr.ip().to_string()),
                )
                .await?;
            return Err(ApiError::Unauthenticated(format!(
                "your certificate expired at {not_after}; log in again (`dtsh login`)"
            )));
        }
        if identity.username != LOCAL_ADMIN {
            match self.get_resource::<UserSpec>(&identity.username).await? {
                None => {
                    return Err(ApiError::Unauthenticated(format!(
                        "user {:?} no longer exists; ask an admin",
                        identity.username
                    )));
                }
                // Issued before this user was created: the certificate belongs to an
                // earlier, removed user of the same name (and carries that user's roles).
                // Certificates start a minute before issue, at whole seconds: hence 61 s.
                Some((user, _))
                    if user.spec.created_at.is_some_and(|created| {
                        identity.not_before + time::Duration::seconds(61) < created
                    }) =>
                {
                    self.audit
                        .emit(
                            AuditEvent::new(EventType::AccessDenied, false, OffsetDateTime::now_utc())
                                .user(&identity.username)
                                .message("refused: certificate issued before this user was created (to an earlier, removed user of the same name)")
                                .remote_addr(peer.addr.ip().to_string()),
                        )
                        .await?;
                    return Err(ApiError::Unauthenticated(format!(
                        "this certificate was issued to an earlier user {:?} that was removed; log in again",
                        identity.username
                    )));
                }
                Some(_) => {}
            }
        }
        let roles = self.identity_roles(&identity).await?;
        let role_names: Vec<&str> = identity.roles.iter().map(String::as_str).collect();
        let locks = match self.active_locks().await {
            // Break-glass: the local admin can still remove or fix an unreadable lock.
            Err(e) if identity.username == LOCAL_ADMIN => {
                tracing::warn!(error = %e, "local admin: locks unreadable; going on to let it repair them");
                Vec::new()
            }
            other => other?,
        };
        let ctx = dt_authz::LockContext {
            user: Some(&identity.username),
            roles: &role_names,
            // Certificates that carry a device are cut off by a lock on that device.
            device: identity.device.as_ref().map(|d| d.device_id.as_str()),
            device_credential: identity.device.as_ref().map(|d| d.credential_id.as_str()),
            ..Default::default()
        };
        if let Some(lock) = dt_authz::first_matching_lock(&locks, &ctx) {
            return Err(ApiError::PermissionDenied(lock_message(lock)));
        }
        Ok(Caller {
            identity,
            roles,
            peer,
        })
    }

    pub fn authorize(&self, caller: &Caller, resource: &str, verb: Verb) -> ApiResult<()> {
        match dt_authz::check_rule(&caller.roles, resource, verb) {
            dt_authz::Decision::Allow => Ok(()),
            dt_authz::Decision::Deny(reason) => {
                let missing = crate::server::missing_roles(&caller.identity.roles, &caller.roles);
                let note = if missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (your certificate names role(s) {missing:?} that no longer exist and grant nothing)"
                    )
                };
                Err(ApiError::PermissionDenied(format!(
                    "{reason}; ask an admin for a role that grants it{note}"
                )))
            }
        }
    }

    /// Issue SSH + X.509 certificates for a user's client key.
    pub async fn issue_user_certs(
        &self,
        user: &User,
        ssh_public_key: &str,
        tls_spki: &[u8],
        requested_ttl: Option<Duration>,
        remote: &str,
    ) -> ApiResult<pb::LoginResponse> {
        let ssh_key = check_client_keys("client", ssh_public_key, tls_spki)?;
        // No certificates while the cluster's settings can't be read (fail closed).
        self.cap().await?;
        let roles = self.resolve_roles(&user.spec.roles).await?;
        let role_names: Vec<String> = roles.iter().map(|r| r.metadata.name.clone()).collect();
        let role_refs: Vec<&str> = role_names.iter().map(String::as_str).collect();
        let locks = self.active_locks().await?;
        let ctx = dt_authz::LockContext {
            user: Some(user.name()),
            roles: &role_refs,
            ..Default::default()
        };
        if let Some(lock) = dt_authz::first_matching_lock(&locks, &ctx) {
            self.audit
                .emit(
                    AuditEvent::new(EventType::CertCreate, false, OffsetDateTime::now_utc())
                        .user(user.name())
                        .message(format!("refused: {}", lock_message(lock)))
                        .remote_addr(remote),
                )
                .await?;
            return Err(ApiError::PermissionDenied(lock_message(lock)));
        }
        let max = dt_authz::max_session_ttl(&roles);
        let ttl = requested_ttl.unwrap_or(max).min(max).max(MIN_CERT_TTL);
        let logins = dt_authz::allowed_logins(&roles, &user.spec.traits.logins);
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::now_utc());
        let identity = dt_ca::Identity {
            username: user.name().to_string(),
            roles: role_names.clone(),
            logins: logins.clone(),
            bot: user.spec.bot,
            // What `{{internal.logins}}` expands to at the access points; the principals
            // above are every login of every role, whatever the node.
            trait_logins: user.spec.traits.logins.clone(),
            device: None,
            not_before: now - time::Duration::minutes(1),
            not_after: now + ttl,
        };
        let ssh_cert = self
            .user_ca
            .issue_ssh_user_cert(&ssh_key, &identity)
            .map_err(ApiError::internal)?;
        let tls_cert = self
            .user_ca
            .issue_x509_client_cert(tls_spki, &identity)
            .map_err(ApiError::internal)?;
        let ssh_text = ssh_cert.to_openssh().map_err(ApiError::internal)?;
        self.audit
            .emit(
                AuditEvent::new(EventType::CertCreate, true, now)
                    .user(user.name())
                    .cert(CertInfo {
                        cert_type: if user.spec.bot {
                            "bot".into()
                        } else {
                            "user".into()
                        },
                        serial: String::new(),
                        roles: role_names.clone(),
                        logins: logins.clone(),
                        not_after: identity.not_after,
                    })
                    .remote_addr(remote),
            )
            .await?;
        Ok(pb::LoginResponse {
            ssh_cert: ssh_text,
            tls_cert_der: tls_cert,
            user_ca_cert_der: self.user_ca.cert_der().to_vec(),
            host_ca_cert_der: self.host_ca.cert_der().to_vec(),
            host_ca_ssh_public_key: self.host_ca.ssh_public_key_openssh(),
            cluster_name: self.cluster_name.clone(),
            roles: role_names,
            logins,
            valid_until_unix: identity.not_after.unix_timestamp(),
        })
    }

    pub async fn login(&self, req: pb::LoginRequest, peer: Peer) -> ApiResult<pb::LoginResponse> {
        if !req.bot_token.is_empty() {
            return self.bot_login(req, &peer).await;
        }
        let remote = peer.addr.ip().to_string();
        let username = req.username.trim().to_string();
        if username.is_empty() {
            return Err(ApiError::InvalidArgument("--user is required".into()));
        }
        let attempt = match self
            .login_throttle
            .admit(self.backend.as_ref(), &self.audit, &username, &remote)
            .await?
        {
            crate::login_throttle::Admission::Admitted(a) => a,
            // Counted in the throttle's bucket and summarized in its audit event.
            crate::login_throttle::Admission::Locked { wait } => {
                return Err(ApiError::TooMany(format!(
                    "too many failed login attempts for {username}; try again in {} s",
                    wait.as_secs().max(1)
                )));
            }
        };
        let fail = |attempt, reason: &'static str| async move {
            self.login_throttle
                .fail(self.backend.as_ref(), &self.audit, attempt, reason)
                .await
                .map_err(ApiError::from)
        };
        let user = self
            .get_resource::<UserSpec>(&username)
            .await?
            .map(|(u, _)| u);
        // Bots log in with join tokens only: a password (or a signup token left from before
        // `users reset` refused bots) must never let a human take a bot over.
        let is_bot = user.as_ref().is_some_and(|u| u.spec.bot);
        let refusal = if is_bot {
            "password login refused for a bot user"
        } else if user.is_some() {
            "invalid password"
        } else {
            "unknown user"
        };
        if !req.signup_token.is_empty() && (user.is_none() || is_bot) {
            fail(attempt, refusal).await?;
            return Err(bad_credentials(true));
        }
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds));

        if !req.signup_token.is_empty() {
            let key = keys::signup_token(&sha256_hex(&req.signup_token));
            let Some(item) = self.backend.get(&key).await? else {
                fail(attempt, "invalid, used or expired signup token").await?;
                return Err(bad_credentials(true));
            };
            if item.value != username.as_bytes() {
                fail(attempt, "signup token issued for another user").await?;
                return Err(bad_credentials(true));
            }
            if req.new_password.chars().count() < MIN_PASSWORD_LEN {
                return Err(ApiError::InvalidArgument(format!(
                    "choose a password of at least {MIN_PASSWORD_LEN} characters"
                )));
            }
            let hash = hash_password(req.new_password.clone()).await?;
            // Spend the token and set the password in one write; the Revision condition
            // makes a concurrent second use of the same token fail.
            let result = self
                .audit
                .write_with(
                    vec![Condition::Revision(key.clone(), item.revision)],
                    vec![
                        Op::Delete { key },
                        Op::Put {
                            key: keys::password(&username),
                            value: hash.into_bytes(),
                            expires: None,
                        },
                    ],
                    AuditEvent::new(
                        EventType::UserPasswordChange,
                        true,
                        OffsetDateTime::now_utc(),
                    )
                    .user(&username)
                    .message("password set with a signup token")
                    .remote_addr(&remote),
                )
                .await;
            match result {
                Ok(_) => {}
                Err(StoreError::ConditionFailed { .. }) => {
                    fail(attempt, "signup token already used").await?;
                    return Err(bad_credentials(true));
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            // Unknown and password-less users verify against a dummy hash: the same argon2
            // cost as a real check, so timing reveals neither.
            let stored = match &user {
                Some(u) if !u.spec.bot => self.backend.get(&keys::password(&username)).await?,
                _ => None,
            };
            let (hash, real) = match stored {
                Some(item) => (
                    String::from_utf8(item.value).map_err(ApiError::internal)?,
                    true,
                ),
                None => (dummy_hash().await?, false),
            };
            let ok = verify_password(req.password.clone(), hash).await? && real;
            if !ok {
                fail(attempt, refusal).await?;
                return Err(bad_credentials(false));
            }
        }
        let Some(user) = user else {
            return Err(ApiError::internal("login: user vanished after the check"));
        };
        self.login_throttle
            .succeed(self.backend.as_ref(), &self.audit, attempt)
            .await?;
        let resp = self
            .issue_user_certs(
                &user,
                &req.ssh_public_key,
                &req.tls_public_key_der,
                ttl,
                &remote,
            )
            .await?;
        self.audit
            .emit(
                AuditEvent::new(EventType::UserLogin, true, OffsetDateTime::now_utc())
                    .user(&username)
                    .remote_addr(&remote),
            )
            .await?;
        Ok(resp)
    }

    fn resource_document(&self, r: &AnyResource, revision: i64) -> pb::ResourceDocument {
        dt_proto::resource::resource_document(r, revision)
    }

    async fn get_any(&self, kind: Kind, name: &str) -> ApiResult<Option<(AnyResource, i64)>> {
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
        let now = OffsetDateTime::now_utc();
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
        let key = keys::resource(kind, &name);
        let condition = if req.expected_revision != 0 {
            Condition::Revision(key.clone(), req.expected_revision)
        } else if req.force {
            // Overwrite whatever is there (or create).
            match &existing {
                Some(item) => Condition::Revision(key.clone(), item.revision),
                None => Condition::NotExists(key.clone()),
            }
        } else {
            Condition::NotExists(key.clone())
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
        match self
            .audit
            .write_with(
                vec![condition],
                vec![Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                    expires,
                }],
                event,
            )
            .await
        {
            // Visible to this server's next request at once, not only when the watch
            // delivers it (a lock must block immediately).
            Ok(rev) => self.cache.apply(&key, rev, Some(&value)),
            Err(StoreError::ConditionFailed { .. }) => {
                return Err(ApiError::Conflict(format!(
                    "{kind} {name:?} was changed by someone else meanwhile; read it again and retry"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(pb::UpsertResourceResponse {
            kind: kind.as_str().into(),
            name,
            created: existing.is_none(),
        })
    }

    async fn delete(&self, caller: &Caller, kind: Kind, name: &str) -> ApiResult<()> {
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
        let mut ops = vec![Op::Delete { key: key.clone() }];
        let mut conditions = vec![Condition::Revision(key.clone(), item.revision)];
        let event_type = match kind {
            Kind::User => {
                ops.push(Op::Delete {
                    key: keys::password(name),
                });
                // A pending signup token must die with the user: it would otherwise set
                // the password of a later user with the same name.
                let (cond, revoke) = self.revoke_signup_token(name).await?;
                conditions.push(cond);
                ops.extend(revoke);
                ops.push(Op::Delete {
                    key: keys::signup_token_index(name),
                });
                EventType::UserDelete
            }
            Kind::Lock => EventType::LockDelete,
            _ => EventType::ResourceDelete,
        };
        if kind == Kind::Token
            && let Ok(tok) = serde_json::from_slice::<Resource<TokenSpec>>(&item.value)
        {
            ops.push(Op::Delete {
                key: keys::join_token_index(&tok.spec.token_hash),
            });
        }
        let mut event = AuditEvent::new(event_type, true, OffsetDateTime::now_utc())
            .user(caller.name())
            .resource(kind.as_str(), name)
            .remote_addr(caller.peer.addr.ip().to_string());
        if kind == Kind::Lock {
            event.lock = Some(name.to_string());
        }
        match self.audit.write_with(conditions, ops, event).await {
            Ok(rev) => {
                self.cache.apply(&key, rev, None);
                Ok(())
            }
            Err(StoreError::ConditionFailed { .. }) => Err(ApiError::Conflict(format!(
                "{kind} {name:?} changed meanwhile; try again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// A fresh signup token for `name`: the token, its expiry, and the writes that store
    /// its hash and make it the user's one live signup token.
    async fn new_signup_token(
        &self,
        name: &str,
        ttl_seconds: u64,
    ) -> ApiResult<(String, OffsetDateTime, Vec<Op>)> {
        let ttl = if ttl_seconds == 0 {
            DEFAULT_SIGNUP_TTL
        } else {
            Duration::from_secs(ttl_seconds)
        };
        if ttl > MAX_SIGNUP_TTL {
            return Err(ApiError::InvalidArgument(
                "signup token TTL is at most 7d".into(),
            ));
        }
        let token = random_token();
        let hash = sha256_hex(&token);
        let expires = OffsetDateTime::now_utc() + ttl;
        let ops = vec![
            Op::Put {
                key: keys::signup_token(&hash),
                value: name.as_bytes().to_vec(),
                expires: Some(expires),
            },
            Op::Put {
                key: keys::signup_token_index(name),
                value: hash.into_bytes(),
                expires: Some(expires),
            },
        ];
        Ok((token, expires, ops))
    }

    /// The write that revokes `user`'s live signup token (if any), and a condition that
    /// fails if another token was issued meanwhile. One live token per user: a reset or a
    /// removal leaves no older token usable.
    async fn revoke_signup_token(&self, user: &str) -> ApiResult<(Condition, Option<Op>)> {
        let index = keys::signup_token_index(user);
        Ok(match self.backend.get(&index).await? {
            Some(item) => {
                let hash = String::from_utf8_lossy(&item.value).into_owned();
                (
                    Condition::Revision(index, item.revision),
                    Some(Op::Delete {
                        key: keys::signup_token(&hash),
                    }),
                )
            }
            None => (Condition::NotExists(index), None),
        })
    }

    async fn create_user(
        &self,
        caller: &Caller,
        req: pb::CreateUserRequest,
    ) -> ApiResult<pb::CreateUserResponse> {
        self.authorize(caller, "user", Verb::Create)?;
        if req.name == LOCAL_ADMIN {
            return Err(ApiError::InvalidArgument(format!(
                "{LOCAL_ADMIN:?} is a reserved name"
            )));
        }
        if req.roles.is_empty() {
            return Err(ApiError::InvalidArgument(
                "give the user at least one role with --roles (e.g. --roles=access)".into(),
            ));
        }
        for role in &req.roles {
            if self.get_resource::<RoleSpec>(role).await?.is_none() {
                return Err(ApiError::InvalidArgument(format!(
                    "role {role:?} does not exist (see `dtctl get roles`)"
                )));
            }
        }
        let mut user: User = Resource::new(
            req.name.clone(),
            UserSpec {
                roles: req.roles.clone(),
                traits: Traits {
                    logins: req.logins.clone(),
                },
                created_by: Some(caller.name().to_string()),
                created_at: Some(OffsetDateTime::now_utc()),
                bot: false,
            },
        );
        user.metadata.revision = None;
        AnyResource::User(user.clone())
            .validate()
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let (token, expires, token_ops) = self
            .new_signup_token(&req.name, req.token_ttl_seconds)
            .await?;
        let key = keys::resource(Kind::User, &req.name);
        let mut ops = vec![Op::Put {
            key: key.clone(),
            value: to_json(&user)?,
            expires: None,
        }];
        ops.extend(token_ops);
        let result = self
            .audit
            .write_with(
                vec![Condition::NotExists(key)],
                ops,
                AuditEvent::new(EventType::UserCreate, true, OffsetDateTime::now_utc())
                    .user(caller.name())
                    .resource("user", &req.name)
                    .remote_addr(caller.peer.addr.ip().to_string()),
            )
            .await;
        match result {
            Ok(_) => Ok(pb::CreateUserResponse {
                signup_token: token,
                expires_unix: expires.unix_timestamp(),
            }),
            Err(StoreError::ConditionFailed { .. }) => Err(ApiError::AlreadyExists(format!(
                "user {:?} already exists; use `dtctl users reset {}` for a new signup token",
                req.name, req.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn reset_user(
        &self,
        caller: &Caller,
        req: pb::ResetUserRequest,
    ) -> ApiResult<pb::CreateUserResponse> {
        self.authorize(caller, "user", Verb::Update)?;
        let key = keys::resource(Kind::User, &req.name);
        let Some(item) = self.backend.get(&key).await? else {
            return Err(ApiError::NotFound(format!("user {:?} not found", req.name)));
        };
        self.refuse_bot_reset(caller, &req.name, &item).await?;
        let (token, expires, token_ops) = self
            .new_signup_token(&req.name, req.token_ttl_seconds)
            .await?;
        // The previous token (unused, from `users add` or an earlier reset) stops working.
        let (revoke_cond, revoke) = self.revoke_signup_token(&req.name).await?;
        let mut ops = vec![Op::Delete {
            key: keys::password(&req.name),
        }];
        ops.extend(revoke);
        ops.extend(token_ops);
        self.audit
            .write_with(
                vec![Condition::Revision(key, item.revision), revoke_cond],
                ops,
                AuditEvent::new(EventType::UserUpdate, true, OffsetDateTime::now_utc())
                    .user(caller.name())
                    .resource("user", &req.name)
                    .message("password reset; signup token issued"),
            )
            .await
            .map_err(|e| match e {
                StoreError::ConditionFailed { .. } => {
                    ApiError::Conflict("user changed meanwhile; try again".into())
                }
                other => other.into(),
            })?;
        Ok(pb::CreateUserResponse {
            signup_token: token,
            expires_unix: expires.unix_timestamp(),
        })
    }

    async fn create_join_token(
        &self,
        caller: &Caller,
        req: pb::CreateJoinTokenRequest,
    ) -> ApiResult<pb::CreateJoinTokenResponse> {
        self.authorize(caller, "token", Verb::Create)?;
        let Some(role) = TokenRole::parse(&req.r#type) else {
            return Err(ApiError::InvalidArgument(format!(
                "token type {:?} (use node, db, kube, app, desktop, mdm or bot)",
                req.r#type
            )));
        };
        if role == TokenRole::Bot {
            self.authorize_bot_token(caller, &req.bot_name).await?;
        }
        let ttl = if req.ttl_seconds == 0 {
            Duration::from_secs(1800)
        } else {
            Duration::from_secs(req.ttl_seconds)
        };
        let token = random_token();
        let hash = sha256_hex(&token);
        let name = hash[..16].to_string();
        let expires = OffsetDateTime::now_utc() + ttl;
        let mut res: Resource<TokenSpec> = Resource::new(
            name.clone(),
            TokenSpec {
                roles: vec![role],
                bot_name: (role == TokenRole::Bot).then(|| req.bot_name.clone()),
                token_hash: hash.clone(),
            },
        );
        res.metadata.expires = Some(expires);
        AnyResource::Token(res.clone())
            .validate()
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let key = keys::resource(Kind::Token, &name);
        self.audit
            .write_with(
                vec![Condition::NotExists(key.clone())],
                vec![
                    Op::Put {
                        key,
                        value: to_json(&res)?,
                        expires: Some(expires),
                    },
                    Op::Put {
                        key: keys::join_token_index(&hash),
                        value: name.clone().into_bytes(),
                        expires: Some(expires),
                    },
                ],
                AuditEvent::new(EventType::JoinTokenCreate, true, OffsetDateTime::now_utc())
                    .user(caller.name())
                    .resource("token", &name)
                    .message(format!("{} join token", req.r#type)),
            )
            .await?;
        Ok(pb::CreateJoinTokenResponse {
            token,
            name,
            expires_unix: expires.unix_timestamp(),
        })
    }
}

impl AuthServer {
    /// Who may mint a join token for an existing bot, i.e. log in as it: a caller who may
    /// manage that bot user (`user: update`, with the `token: create` already checked),
    /// the rule of `dtctl bots add` (`user: create` + `token: create`) for a bot that
    /// exists. The bot must exist and be a bot. Refusals are audited.
    async fn authorize_bot_token(&self, caller: &Caller, bot: &str) -> ApiResult<()> {
        let refusal = if bot.is_empty() {
            Some(ApiError::InvalidArgument(
                "name the bot with --bot-name=NAME (a bot from `dtctl bots add`)".into(),
            ))
        } else {
            match self.get_resource::<UserSpec>(bot).await? {
                None => Some(ApiError::NotFound(format!(
                    "bot {bot:?} does not exist; create it with `dtctl bots add {bot} --roles=...`"
                ))),
                Some((u, _)) if !u.spec.bot => Some(ApiError::InvalidArgument(format!(
                    "user {bot:?} is not a bot; bot join tokens are only for bots from `dtctl bots add`"
                ))),
                Some(_) => self
                    .authorize(caller, "user", Verb::Update)
                    .err()
                    .map(|e| {
                        ApiError::PermissionDenied(format!(
                            "a bot join token lets its holder act as bot {bot:?}, so it needs `update` on user as well as `create` on token: {e}"
                        ))
                    }),
            }
        };
        let Some(err) = refusal else { return Ok(()) };
        self.audit
            .emit(
                AuditEvent::new(EventType::JoinTokenCreate, false, OffsetDateTime::now_utc())
                    .user(caller.name())
                    .resource("user", bot)
                    .message(format!("refused bot join token: {err}"))
                    .remote_addr(caller.peer.addr.ip().to_string()),
            )
            .await?;
        Err(err)
    }

    /// `users reset` sets a password through a signup token: on a bot it would hand the
    /// bot to whoever holds the token. Bots log in with join tokens only; refused, audited.
    async fn refuse_bot_reset(
        &self,
        caller: &Caller,
        name: &str,
        item: &dt_store::Item,
    ) -> ApiResult<()> {
        let Some(spec) = stored_spec::<UserSpec>(Some(item)) else {
            return Ok(());
        };
        if !spec.bot {
            return Ok(());
        }
        let msg = format!(
            "user {name:?} is a bot: bots have no password and can't be reset; give it a new join token with `dtctl tokens add --type=bot --bot-name={name}` (needs update on user and create on token)"
        );
        self.audit
            .emit(
                AuditEvent::new(EventType::UserUpdate, false, OffsetDateTime::now_utc())
                    .user(caller.name())
                    .resource("user", name)
                    .message(format!("refused users reset: {msg}"))
                    .remote_addr(caller.peer.addr.ip().to_string()),
            )
            .await?;
        Err(ApiError::FailedPrecondition(msg))
    }
}

pub fn lock_message(lock: &dt_types::Lock) -> String {
    let mut m = format!("lock targeting {} is in force", lock.spec.target);
    if let Some(msg) = &lock.spec.message {
        m.push_str(&format!(": {msg}"));
    }
    m
}

fn bad_credentials(signup: bool) -> ApiError {
    if signup {
        ApiError::Unauthenticated(
            "invalid, used or expired signup token; ask an admin for a new one (`dtctl users reset NAME`)".into(),
        )
    } else {
        ApiError::Unauthenticated("invalid username or password".into())
    }
}

async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let mut salt_bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut salt_bytes);
        let salt = SaltString::encode_b64(&salt_bytes).map_err(ApiError::internal)?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// A hash of no one's password, with the same argon2 parameters as real ones.
async fn dummy_hash() -> ApiResult<String> {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_try_init(|| hash_password("devtrust-dummy-password".into()))
        .await
        .cloned()
}

async fn verify_password(password: String, hash: String) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let parsed = PasswordHash::new(&hash).map_err(ApiError::internal)?;
        Ok(argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(ApiError::internal)?
}

/// The SSH public key and the TLS SubjectPublicKeyInfo must be the same P-256 key
/// (users' and nodes' keys alike; `who` names the key in errors).
pub(crate) fn check_client_keys(
    who: &str,
    ssh_public_key: &str,
    spki_der: &[u8],
) -> ApiResult<ssh_key::PublicKey> {
    let bad = |why: &str| ApiError::InvalidArgument(format!("{who} public key: {why}"));
    let ssh = ssh_key::PublicKey::from_openssh(ssh_public_key.trim())
        .map_err(|_| bad("not an OpenSSH public key"))?;
    let Some(ssh_key::public::EcdsaPublicKey::NistP256(point)) = ssh.key_data().ecdsa() else {
        return Err(bad("must be ECDSA P-256"));
    };
    let (rest, spki) = <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<
        _,
    >>::from_der(spki_der)
    .map_err(|_| bad("TLS public key is not a SubjectPublicKeyInfo"))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the TLS public key"));
    }
    if spki.subject_public_key.data.as_ref() != point.as_bytes() {
        return Err(bad("the SSH and TLS public keys differ"));
    }
    Ok(ssh)
}

#[tonic::async_trait]
impl AuthService for GrpcAuth {
    async fn ping(
        &self,
        _req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let cap = self.srv.cap().await?;
        Ok(Response::new(pb::PingResponse {
            cluster_name: self.srv.cluster_name.clone(),
            server_version: VERSION.into(),
            host_ca_pin: self.srv.host_ca.pin(),
            user_ca_pin: self.srv.user_ca.pin(),
            device_trust_mode: pb::DeviceTrustMode::from(&cap.spec.device_trust.mode).into(),
            auto_enroll: cap.spec.device_trust.auto_enroll,
        }))
    }

    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let peer = peer_of(&req)?;
        let started = std::time::Instant::now();
        let result = self
            .srv
            .login(req.into_inner(), peer)
            .await
            .map_err(|e| e.status());
        self.srv
            .metrics
            .login(result.as_ref().map(|_| ()), started.elapsed());
        Ok(Response::new(result?))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let cap = self.srv.cap().await?;
        let who = if caller.identity.bot {
            dt_authz::Principal::Bot
        } else {
            dt_authz::Principal::Human
        };
        let id = &caller.identity;
        Ok(Response::new(pb::WhoAmIResponse {
            username: id.username.clone(),
            roles: id.roles.clone(),
            logins: id.logins.clone(),
            bot: id.bot,
            device_id: id
                .device
                .as_ref()
                .map(|d| d.device_id.to_string())
                .unwrap_or_default(),
            device_trust_mode: pb::DeviceTrustMode::from(&cap.spec.device_trust.mode).into(),
            auto_enroll: cap.spec.device_trust.auto_enroll,
            device_required: dt_authz::device_required(
                &cap.spec.device_trust.mode,
                &caller.roles,
                who,
            ),
            valid_until_unix: id.not_after.unix_timestamp(),
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(pb::StatusResponse {
            cluster_name: self.srv.cluster_name.clone(),
            server_version: VERSION.into(),
            storage_type: self.srv.backend.kind().into(),
            schema_version: self
                .srv
                .backend
                .schema_version()
                .await
                .map_err(ApiError::from)?,
            user_ca_pin: self.srv.user_ca.pin(),
            host_ca_pin: self.srv.host_ca.pin(),
        }))
    }

    async fn upsert_resource(
        &self,
        req: Request<pb::UpsertResourceRequest>,
    ) -> Result<Response<pb::UpsertResourceResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv.upsert(&caller, req.into_inner()).await?,
        ))
    }

    async fn get_resource(
        &self,
        req: Request<pb::GetResourceRequest>,
    ) -> Result<Response<pb::ResourceDocument>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let req = req.into_inner();
        let kind = Kind::parse(&req.kind).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        self.srv.authorize(&caller, kind.as_str(), Verb::Read)?;
        if kind == Kind::Device && dt_types::DeviceId::parse(req.name.as_str()).is_err() {
            let dref = pb::DeviceRef {
                asset_tag: req.name.clone(),
                ..Default::default()
            };
            let (d, rev) = self.srv.resolve_device(&dref).await?;
            return Ok(Response::new(
                self.srv.resource_document(&AnyResource::Device(d), rev),
            ));
        }
        match self.srv.get_any(kind, &req.name).await? {
            Some((r, rev)) => Ok(Response::new(self.srv.resource_document(&r, rev))),
            None => Err(ApiError::NotFound(format!("{kind} {:?} not found", req.name)).into()),
        }
    }

    async fn list_resources(
        &self,
        req: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let req = req.into_inner();
        let kind = Kind::parse(&req.kind).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        self.srv.authorize(&caller, kind.as_str(), Verb::List)?;
        let limit = if req.limit == 0 {
            200
        } else {
            req.limit.min(1000)
        } as usize;
        let prefix = keys::resource_prefix(kind);
        let start = (!req.start_after.is_empty()).then(|| keys::resource(kind, &req.start_after));
        let page = self
            .srv
            .backend
            .range(&prefix, start.as_deref(), limit)
            .await
            .map_err(ApiError::from)?;
        let mut out = Vec::with_capacity(page.items.len());
        for item in page.items {
            let value: serde_json::Value =
                serde_json::from_slice(&item.value).map_err(ApiError::internal)?;
            match AnyResource::from_json_value(value) {
                Ok(r) => out.push(self.srv.resource_document(&r, item.revision)),
                Err(e) => {
                    tracing::warn!(key = %item.key, error = %e, "skipping unreadable resource")
                }
            }
        }
        let next = page
            .next
            .map(|k| k.trim_start_matches(&prefix).to_string())
            .unwrap_or_default();
        Ok(Response::new(pb::ListResourcesResponse {
            resources: out,
            next,
        }))
    }

    async fn delete_resource(
        &self,
        req: Request<pb::DeleteResourceRequest>,
    ) -> Result<Response<pb::DeleteResourceResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        let req = req.into_inner();
        // Joined services (`node/NAME`, `db/NAME`, ...) are not stored resources.
        let service = match req.kind.as_str() {
            "nodes" => Some(dt_types::ServiceKind::Node),
            k => dt_types::ServiceKind::parse(k),
        };
        if let Some(kind) = service {
            self.srv.remove_service(&caller, kind, &req.name).await?;
            return Ok(Response::new(pb::DeleteResourceResponse {}));
        }
        let kind = Kind::parse(&req.kind).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        self.srv.delete(&caller, kind, &req.name).await?;
        Ok(Response::new(pb::DeleteResourceResponse {}))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv.create_user(&caller, req.into_inner()).await?,
        ))
    }

    async fn reset_user(
        &self,
        req: Request<pb::ResetUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv.reset_user(&caller, req.into_inner()).await?,
        ))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        Ok(Response::new(
            self.srv
                .create_join_token(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn verify_events(
        &self,
        req: Request<pb::VerifyEventsRequest>,
    ) -> Result<Response<pb::VerifyEventsResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        self.srv.authorize(&caller, "event", Verb::List)?;
        let req = req.into_inner();
        Ok(Response::new(
            crate::audit_api::verify_events(&self.srv.audit, req.since_unix_ms).await?,
        ))
    }

    async fn search_events(
        &self,
        req: Request<pb::SearchEventsRequest>,
    ) -> Result<Response<pb::SearchEventsResponse>, Status> {
        let caller = self.srv.caller(peer_of(&req)?).await?;
        self.srv.authorize(&caller, "event", Verb::List)?;
        let req = req.into_inner();
        let event = if req.r#type.is_empty() {
            None
        } else {
            Some(EventType::parse(&req.r#type).ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "unknown event type {:?} (e.g. user.login, device.enroll)",
                    req.r#type
                ))
            })?)
        };
        let since = if req.since_unix_ms > 0 {
            Some(
                OffsetDateTime::from_unix_timestamp_nanos(req.since_unix_ms as i128 * 1_000_000)
                    .map_err(|_| ApiError::InvalidArgument("bad --since".into()))?,
            )
        } else {
            None
        };
        let filter = EventFilter {
            since,
            event,
            user: (!req.user.is_empty()).then_some(req.user),
            device: (!req.device.is_empty()).then_some(req.device),
        };
        let limit = if req.limit == 0 {
            500
        } else {
            req.limit.min(5000)
        } as usize;
        let start = (!req.start_after.is_empty()).then_some(req.start_after.as_str());
        let (events, next) = self
            .srv
            .audit
            .search(&filter, start, limit)
            .await
            .map_err(ApiError::from)?;
        let events = events
            .iter()
            .map(|e| pb::AuditEventDocument::try_from(e).map_err(ApiError::internal))
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(Response::new(pb::SearchEventsResponse {
            events,
            next: next.unwrap_or_default(),
        }))
    }
}
