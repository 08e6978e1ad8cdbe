//! Who is calling: the mTLS peer of a request, the caller it is (identity and current
//! roles, locks and device trust checked), and whether its roles allow a verb.

use std::sync::Arc;

use dt_types::audit::{AuditEvent, EventType};
use dt_types::{Role, UserName, Verb};
use tonic::Request;

use crate::error::{ApiError, ApiResult};
use crate::listener::Peer;
use crate::login::lock_message;
use crate::server::{AuthServer, LOCAL_ADMIN};

/// Who is behind a call: a user with a certificate, or one of the server's own services.
pub enum Actor {
    /// A user (human or bot), by the user certificate the connection presented.
    User(Arc<dt_ca::Identity>),
    /// A joined service acting for itself (the MDM sync revoking a device it removed). It
    /// has no user certificate: no roles, no logins, no device, never a human.
    Service {
        /// The audit actor text, `KIND/NAME` (`mdm/jamf`); never a user name, since `/`
        /// is not allowed in one.
        name: String,
    },
}

/// An authenticated caller and its roles.
pub struct Caller {
    pub actor: Actor,
    pub roles: Vec<Role>,
    pub peer: Peer,
}

impl Caller {
    /// A joined service's own caller: no roles, so it passes no RBAC check.
    pub(crate) fn service(name: String, peer: Peer) -> Caller {
        Caller {
            actor: Actor::Service { name },
            roles: Vec::new(),
            peer,
        }
    }

    /// Who is calling, as audit and ownership text (`alice`, `mdm/jamf`).
    pub fn name(&self) -> &str {
        match &self.actor {
            Actor::User(id) => id.username.as_str(),
            Actor::Service { name } => name,
        }
    }

    /// The caller's user certificate, for what only a user does (enroll or authenticate a
    /// device, read its own identity). A service is refused.
    pub fn identity(&self) -> ApiResult<&dt_ca::Identity> {
        match &self.actor {
            Actor::User(id) => Ok(id),
            Actor::Service { name } => Err(ApiError::NotAUser {
                service: name.clone(),
            }),
        }
    }

    /// The caller as a user: the name its certificate carries (checked when the
    /// certificate was read). A service is refused.
    pub fn user(&self) -> ApiResult<&UserName> {
        Ok(&self.identity()?.username)
    }

    /// The role names the certificate carries (none for a service).
    pub fn cert_roles(&self) -> &[String] {
        match &self.actor {
            Actor::User(id) => &id.roles,
            Actor::Service { .. } => &[],
        }
    }
}

pub(crate) fn peer_of<T>(req: &Request<T>) -> ApiResult<Peer> {
    req.extensions()
        .get::<Peer>()
        .cloned()
        .ok_or_else(|| ApiError::internal("request without connection info"))
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
        let now = self.env.now();
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
            match self.user_of_caller(identity.username.as_str()).await? {
                None => {
                    return Err(ApiError::Unauthenticated(format!(
                        "user {:?} no longer exists; ask an admin",
                        identity.username
                    )));
                }
                // Issued before this user was created: the certificate belongs to an
                // earlier, removed user of the same name (and carries that user's roles).
                // Certificates start a minute before issue, at whole seconds: hence 61 s.
                Some(user)
                    if user.spec.created_at.is_some_and(|created| {
                        identity.not_before + time::Duration::seconds(61) < created
                    }) =>
                {
                    self.audit
                        .emit(
                            AuditEvent::new(EventType::AccessDenied, false, self.env.now())
                                .user(identity.username.as_str())
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
            user: Some(identity.username.as_str()),
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
            actor: Actor::User(identity),
            roles,
            peer,
        })
    }

    pub fn authorize(&self, caller: &Caller, resource: &str, verb: Verb) -> ApiResult<()> {
        match dt_authz::check_rule(&caller.roles, resource, verb) {
            dt_authz::Decision::Allow => Ok(()),
            dt_authz::Decision::Deny(reason) => {
                let missing = crate::server::missing_roles(caller.cert_roles(), &caller.roles);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn peer() -> Peer {
        Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            identity: None,
            cert_der: None,
            user_cert: None,
            node: None,
        }
    }

    fn user(name: &str) -> Caller {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        Caller {
            actor: Actor::User(Arc::new(dt_ca::Identity {
                username: name.parse().unwrap(),
                roles: vec![],
                logins: vec![],
                bot: false,
                trait_logins: vec![],
                device: None,
                not_before: now,
                not_after: now + time::Duration::hours(1),
            })),
            roles: vec![],
            peer: peer(),
        }
    }

    #[test]
    fn a_caller_is_a_user_only_with_a_user_certificate() {
        let alice = user("alice");
        assert_eq!(alice.name(), "alice");
        assert_eq!(*alice.user().unwrap(), "alice");
        assert!(alice.identity().is_ok());

        // The MDM service's caller names a service, not a user: it has the audit name, no
        // certificate and no roles.
        let mdm = Caller::service("mdm/jamf".into(), peer());
        assert_eq!(mdm.name(), "mdm/jamf");
        assert!(mdm.roles.is_empty() && mdm.cert_roles().is_empty());
        assert!(matches!(mdm.identity(), Err(ApiError::NotAUser { .. })));
        let e = mdm.user().unwrap_err();
        assert!(
            matches!(&e, ApiError::NotAUser { service } if service == "mdm/jamf"),
            "{e:?}"
        );
        assert_eq!(e.code(), ErrorCode::PermissionDenied);
        assert_eq!(
            e.to_string(),
            "mdm/jamf is a service, not a user; only a signed-in user can do this"
        );
    }
}
