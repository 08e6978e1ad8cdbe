//! App sessions: how a browser reaches an app through its access point without ever
//! showing the app (or its access point) the web session's cookie.
//!
//! The launch, a redirect dance in three steps:
//!
//! 1. The browser opens the app's public address with no app session. The access point
//!    sets a short-lived `state` cookie on the app's own host and redirects to the auth
//!    service's `/web/launch/APP?state=STATE`.
//! 2. There, the web session (its cookie is only ever sent to the auth service) is turned
//!    into a single-use **launch code** for that app and state ([`AppSessions::grant`]),
//!    and the browser is sent back to `https://APP/__devtrust/auth?state=STATE&code=CODE`.
//! 3. The access point checks that the state matches its cookie (so nobody can plant their
//!    own session in someone else's browser) and exchanges the code
//!    ([`AppSessions::exchange`]) for an **app session**: an id and a secret, set as a
//!    `__Host-` cookie on the app's host. It stands for the web session's certificate
//!    (carrying the device after device web authentication), which the access point decides
//!    on exactly as on a certificate shown by `dtsh proxy app`.
//!
//! Codes live [`CODE_TTL`] and are spent by their first use, right or wrong. Sessions end
//! with the web session's certificate, at app logout, or at web logout. Secrets are kept
//! only as SHA-256 digests and compared in constant time.
//!
//! What it does not do: share sessions between auth servers (like web sessions, they live
//! in the memory of the auth server that made them; see docs/apps.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// How long a launch code may wait for its exchange.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Launch codes and app sessions held at once (beyond, expired ones are dropped; then new
/// ones are refused).
pub const MAX_ENTRIES: usize = 100_000;
/// A launch state: what the access point put in its cookie.
const STATE_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// Why a launch or an app session is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppSessionError {
    #[error(
        "the launch state is malformed (16 to 128 URL-safe characters); open the app again from its address"
    )]
    BadState,
    #[error(
        "the launch code is unknown, expired or already used; open the app again from the web UI"
    )]
    UnknownCode,
    #[error(
        "the launch code was issued for app {issued_for:?}, not {presented_at:?}; open the app again from the web UI"
    )]
    WrongApp {
        issued_for: String,
        presented_at: String,
    },
    #[error(
        "the launch state does not match the one this code was issued for; open the app again from the web UI"
    )]
    WrongState,
    #[error(
        "the app session is unknown, expired or logged out; open the app again from the web UI"
    )]
    UnknownSession,
    #[error("the app session is for app {issued_for:?}, not {presented_at:?}")]
    SessionForOtherApp {
        issued_for: String,
        presented_at: String,
    },
    #[error("too many app sessions are open on this auth server; try again later")]
    Full,
}

/// What a launch code (and then its app session) stands for.
#[derive(Clone, Debug)]
pub struct Grant {
    pub app: String,
    /// The web session's X.509 certificate (DER).
    pub cert_der: Arc<Vec<u8>>,
    pub user: dt_types::UserName,
    /// The web session it came from (web logout ends its app sessions).
    pub web_session: String,
    /// When the app session must end at the latest (the certificate's end).
    pub expires: OffsetDateTime,
}

/// An app session as the access point gets it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub id: String,
    pub secret: String,
    pub grant: Grant,
}

struct Code {
    state: [u8; 32],
    grant: Grant,
    expires: OffsetDateTime,
}

struct Session {
    secret: [u8; 32],
    grant: Grant,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<[u8; 32], Code>,
    sessions: HashMap<String, Session>,
}

/// The auth server's launch codes and app sessions.
#[derive(Default)]
pub struct AppSessions {
    inner: Mutex<Inner>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn random() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Is `state` what an access point makes (URL-safe, of a sane length)?
pub fn valid_state(state: &str) -> bool {
    STATE_LEN.contains(&state.len())
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl AppSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A single-use launch code for `grant`, to be exchanged with `state` within
    /// [`CODE_TTL`].
    pub fn grant(
        &self,
        grant: Grant,
        state: &str,
        now: OffsetDateTime,
    ) -> Result<String, AppSessionError> {
        if !valid_state(state) {
            return Err(AppSessionError::BadState);
        }
        let code = random();
        let mut inner = self.lock();
        if inner.codes.len() >= MAX_ENTRIES {
            inner.codes.retain(|_, c| c.expires > now);
            if inner.codes.len() >= MAX_ENTRIES {
                return Err(AppSessionError::Full);
            }
        }
        inner.codes.insert(
            digest(&code),
            Code {
                state: digest(state),
                grant,
                expires: now + CODE_TTL,
            },
        );
        Ok(code)
    }

    /// Spend `code` (whatever the outcome) for an app session of `app`.
    pub fn exchange(
        &self,
        code: &str,
        state: &str,
        app: &str,
        now: OffsetDateTime,
    ) -> Result<Issued, AppSessionError> {
        let mut inner = self.lock();
        let found = inner
            .codes
            .remove(&digest(code))
            .ok_or(AppSessionError::UnknownCode)?;
        if found.expires <= now || found.grant.expires <= now {
            return Err(AppSessionError::UnknownCode);
        }
        if found.grant.app != app {
            return Err(AppSessionError::WrongApp {
                issued_for: found.grant.app,
                presented_at: app.to_string(),
            });
        }
        if !bool::from(found.state.ct_eq(&digest(state))) {
            return Err(AppSessionError::WrongState);
        }
        if inner.sessions.len() >= MAX_ENTRIES {
            inner.sessions.retain(|_, s| s.grant.expires > now);
            if inner.sessions.len() >= MAX_ENTRIES {
                return Err(AppSessionError::Full);
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let secret = random();
        inner.sessions.insert(
            id.clone(),
            Session {
                secret: digest(&secret),
                grant: found.grant.clone(),
            },
        );
        Ok(Issued {
            id,
            secret,
            grant: found.grant,
        })
    }

    /// The app session `id` for `app`, if `secret` is its secret and it has not ended.
    pub fn resolve(
        &self,
        id: &str,
        secret: &str,
        app: &str,
        now: OffsetDateTime,
    ) -> Result<Grant, AppSessionError> {
        let mut inner = self.lock();
        let s = inner
            .sessions
            .get(id)
            .ok_or(AppSessionError::UnknownSession)?;
        if !bool::from(s.secret.ct_eq(&digest(secret))) {
            return Err(AppSessionError::UnknownSession);
        }
        if s.grant.expires <= now {
            inner.sessions.remove(id);
            return Err(AppSessionError::UnknownSession);
        }
        if s.grant.app != app {
            return Err(AppSessionError::SessionForOtherApp {
                issued_for: s.grant.app.clone(),
                presented_at: app.to_string(),
            });
        }
        Ok(s.grant.clone())
    }

    /// End app session `id` (app logout). Returns whether it existed with that secret.
    pub fn end(&self, id: &str, secret: &str) -> bool {
        let mut inner = self.lock();
        let matches = inner
            .sessions
            .get(id)
            .is_some_and(|s| bool::from(s.secret.ct_eq(&digest(secret))));
        if matches {
            inner.sessions.remove(id);
        }
        matches
    }

    /// End every app session (and launch code) of web session `web_session` (web logout).
    pub fn end_web_session(&self, web_session: &str) -> usize {
        let mut inner = self.lock();
        inner
            .codes
            .retain(|_, c| c.grant.web_session != web_session);
        let before = inner.sessions.len();
        inner
            .sessions
            .retain(|_, s| s.grant.web_session != web_session);
        before - inner.sessions.len()
    }

    /// Open app sessions (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const STATE: &str = "0123456789abcdef-_STATE";

    fn grant(app: &str, web: &str, expires: OffsetDateTime) -> Grant {
        Grant {
            app: app.into(),
            cert_der: Arc::new(vec![1, 2, 3]),
            user: dt_types::UserName::parse("alice").unwrap(),
            web_session: web.into(),
            expires,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn a_code_makes_one_session_for_its_app_and_state() {
        let s = AppSessions::default();
        let t = now();
        let code = s.grant(grant("wiki", "w1", t + Duration::from_secs(3600)), STATE, t);
        let code = code.unwrap();
        let issued = s.exchange(&code, STATE, "wiki", t).unwrap();
        assert_eq!(issued.grant.user, "alice");
        let g = s.resolve(&issued.id, &issued.secret, "wiki", t).unwrap();
        assert_eq!(g.cert_der.as_slice(), &[1, 2, 3]);
        // Spent: a replayed code is refused.
        assert_eq!(
            s.exchange(&code, STATE, "wiki", t).unwrap_err(),
            AppSessionError::UnknownCode
        );
    }

    #[test]
    fn each_way_to_cheat_a_launch_is_refused_and_spends_the_code() {
        let s = AppSessions::default();
        let t = now();
        let long = t + Duration::from_secs(3600);
        assert_eq!(
            s.grant(grant("wiki", "w", long), "short", t).unwrap_err(),
            AppSessionError::BadState
        );
        assert_eq!(
            s.grant(grant("wiki", "w", long), "0123456789abcdef<script>", t)
                .unwrap_err(),
            AppSessionError::BadState
        );
        // Another app's access point.
        let code = s.grant(grant("wiki", "w", long), STATE, t).unwrap();
        assert!(matches!(
            s.exchange(&code, STATE, "grafana", t),
            Err(AppSessionError::WrongApp { .. })
        ));
        assert_eq!(
            s.exchange(&code, STATE, "wiki", t).unwrap_err(),
            AppSessionError::UnknownCode
        );
        // Someone else's state (a planted code).
        let code = s.grant(grant("wiki", "w", long), STATE, t).unwrap();
        assert_eq!(
            s.exchange(&code, "another-state-0123456789", "wiki", t)
                .unwrap_err(),
            AppSessionError::WrongState
        );
        assert_eq!(
            s.exchange(&code, STATE, "wiki", t).unwrap_err(),
            AppSessionError::UnknownCode
        );
        // Too late.
        let code = s.grant(grant("wiki", "w", long), STATE, t).unwrap();
        assert_eq!(
            s.exchange(&code, STATE, "wiki", t + CODE_TTL).unwrap_err(),
            AppSessionError::UnknownCode
        );
        // A forged code.
        assert_eq!(
            s.exchange("forged", STATE, "wiki", t).unwrap_err(),
            AppSessionError::UnknownCode
        );
        assert!(s.is_empty());
    }

    #[test]
    fn sessions_are_refused_with_a_wrong_secret_another_app_or_after_their_end() {
        let s = AppSessions::default();
        let t = now();
        let exp = t + Duration::from_secs(600);
        let code = s.grant(grant("wiki", "w1", exp), STATE, t).unwrap();
        let a = s.exchange(&code, STATE, "wiki", t).unwrap();
        assert_eq!(
            s.resolve(&a.id, "forged", "wiki", t).unwrap_err(),
            AppSessionError::UnknownSession
        );
        assert!(matches!(
            s.resolve(&a.id, &a.secret, "grafana", t),
            Err(AppSessionError::SessionForOtherApp { .. })
        ));
        assert_eq!(
            s.resolve(&a.id, &a.secret, "wiki", exp).unwrap_err(),
            AppSessionError::UnknownSession
        );
        // Gone for good once expired.
        assert_eq!(
            s.resolve(&a.id, &a.secret, "wiki", t).unwrap_err(),
            AppSessionError::UnknownSession
        );
    }

    #[test]
    fn app_logout_and_web_logout_end_sessions() {
        let s = AppSessions::default();
        let t = now();
        let exp = t + Duration::from_secs(600);
        let mut issued = Vec::new();
        for web in ["w1", "w1", "w2"] {
            let code = s.grant(grant("wiki", web, exp), STATE, t).unwrap();
            issued.push(s.exchange(&code, STATE, "wiki", t).unwrap());
        }
        assert!(!s.end(&issued[0].id, "wrong"));
        assert!(s.end(&issued[0].id, &issued[0].secret));
        assert!(
            s.resolve(&issued[0].id, &issued[0].secret, "wiki", t)
                .is_err()
        );
        assert_eq!(s.end_web_session("w1"), 1);
        assert!(
            s.resolve(&issued[1].id, &issued[1].secret, "wiki", t)
                .is_err()
        );
        assert!(
            s.resolve(&issued[2].id, &issued[2].secret, "wiki", t)
                .is_ok()
        );
        // A web logout also voids the codes not yet exchanged.
        let code = s.grant(grant("wiki", "w2", exp), STATE, t).unwrap();
        s.end_web_session("w2");
        assert!(s.exchange(&code, STATE, "wiki", t).is_err());
    }
}
