//! Logging in: passwords (hashed off the runtime), signup and bot tokens, the client keys a
//! login certifies, and the certificates it issues.

use std::time::Duration;

use dt_proto::v1 as pb;
use dt_types::audit::{AuditEvent, CertInfo, EventType};
use dt_types::resource::UserSpec;
use dt_types::{User, UserName};
use rand::RngCore;

use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::listener::Peer;
use crate::plan::{self, PlanError};
use crate::server::AuthServer;
use crate::tokens::sha256_hex;

pub const MIN_PASSWORD_LEN: usize = 8;
pub(crate) const MIN_CERT_TTL: Duration = Duration::from_secs(60);

pub fn lock_message(lock: &dt_types::Lock) -> String {
    let mut m = format!("lock targeting {} is in force", lock.spec.target);
    if let Some(msg) = &lock.spec.message {
        m.push_str(&format!(": {msg}"));
    }
    m
}

pub(crate) fn bad_credentials(signup: bool) -> ApiError {
    if signup {
        ApiError::Unauthenticated(
            "invalid, used or expired signup token; ask an admin for a new one (`dtctl users reset NAME`)".into(),
        )
    } else {
        ApiError::Unauthenticated("invalid username or password".into())
    }
}

pub(crate) async fn hash_password(password: String) -> ApiResult<String> {
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
pub(crate) async fn dummy_hash() -> ApiResult<String> {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY
        .get_or_try_init(|| hash_password("devtrust-dummy-password".into()))
        .await
        .cloned()
}

pub(crate) async fn verify_password(password: String, hash: String) -> ApiResult<bool> {
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

impl AuthServer {
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
                    AuditEvent::new(EventType::CertCreate, false, self.env.now())
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
        let now = self
            .env
            .now()
            .replace_nanosecond(0)
            .unwrap_or(self.env.now());
        let identity = dt_ca::Identity {
            username: UserName::parse(user.name())?,
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
        let ssh_text = dt_ca::certificate_to_openssh(&ssh_cert).map_err(ApiError::internal)?;
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
        let username = req.username.trim();
        if username.is_empty() {
            return Err(ApiError::InvalidArgument("--user is required".into()));
        }
        let attempt = match self
            .login_throttle
            .admit(self.backend.as_ref(), &self.audit, username, &remote)
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
        // No user has a name that is not one: a failed attempt like any other (counted and
        // audited), answered with the rule it breaks.
        let username = match UserName::parse(username) {
            Ok(name) => name,
            Err(e) => {
                fail(attempt, "malformed user name").await?;
                return Err(e.into());
            }
        };
        let user = self
            .get_resource::<UserSpec>(username.as_str())
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
            let token_hash = sha256_hex(&req.signup_token);
            let Some(item) = self.backend.get(&keys::signup_token(&token_hash)).await? else {
                fail(attempt, "invalid, used or expired signup token").await?;
                return Err(bad_credentials(true));
            };
            if item.value != username.as_str().as_bytes() {
                fail(attempt, "signup token issued for another user").await?;
                return Err(bad_credentials(true));
            }
            if req.new_password.chars().count() < MIN_PASSWORD_LEN {
                return Err(ApiError::InvalidArgument(format!(
                    "choose a password of at least {MIN_PASSWORD_LEN} characters"
                )));
            }
            let hash = hash_password(req.new_password.clone()).await?;
            // Spend the token and set the password in one write; a concurrent second use
            // of the same token finds it changed.
            let event = AuditEvent::new(EventType::UserPasswordChange, true, self.env.now())
                .user(username.as_str())
                .message("password set with a signup token")
                .remote_addr(&remote);
            let plan = plan::users::signup_used(&token_hash, item.revision, &username, hash, event);
            match self.commit_plan(plan).await {
                Ok(_) => {}
                Err(PlanError::Refused(why)) => {
                    fail(attempt, why).await?;
                    return Err(bad_credentials(true));
                }
                Err(PlanError::Store(e)) => return Err(e.into()),
            }
        } else {
            // Unknown and password-less users verify against a dummy hash: the same argon2
            // cost as a real check, so timing reveals neither.
            let stored = match &user {
                Some(u) if !u.spec.bot => {
                    self.backend.get(&keys::password(username.as_str())).await?
                }
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
                AuditEvent::new(EventType::UserLogin, true, self.env.now())
                    .user(username.as_str())
                    .remote_addr(&remote),
            )
            .await?;
        Ok(resp)
    }
}
