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

/// An authenticated caller and its roles.
pub struct Caller {
    pub identity: Arc<dt_ca::Identity>,
    pub roles: Vec<Role>,
    pub peer: Peer,
}

impl Caller {
    /// The certificate's name, as text (audit events, keys).
    pub fn name(&self) -> &str {
        &self.identity.username
    }

    /// The caller as a user, for what only a user does (enroll or authenticate a device):
    /// the certificate's name, checked. The server's own service callers (`mdm/NAME`) are
    /// not users and are refused here.
    pub fn user(&self) -> ApiResult<UserName> {
        Ok(UserName::parse(self.identity.username.as_str())?)
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
            match self.user_of_caller(&identity.username).await? {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn caller(name: &str) -> Caller {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        Caller {
            identity: Arc::new(dt_ca::Identity {
                username: name.into(),
                roles: vec![],
                logins: vec![],
                bot: false,
                trait_logins: vec![],
                device: None,
                not_before: now,
                not_after: now + time::Duration::hours(1),
            }),
            roles: vec![],
            peer: Peer {
                addr: "127.0.0.1:1".parse().unwrap(),
                identity: None,
                cert_der: None,
                node: None,
            },
        }
    }

    #[test]
    fn a_caller_is_a_user_only_with_a_user_name() {
        assert_eq!(caller("alice").user().unwrap(), "alice");
        // The MDM service's caller names a service, not a user.
        let e = caller("mdm/jamf").user().unwrap_err();
        assert!(matches!(e, ApiError::InvalidName(_)), "{e:?}");
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert_eq!(
            e.to_string(),
            "user name contains '/'; use letters, digits and . _ @ : -"
        );
    }
}
