//! Device web authentication (DESIGN.md §10, the seeds' "Web UI" troubleshooting section):
//! how a browser session becomes device-trusted without the browser touching the device's
//! key.
//!
//! ```text
//! browser            devtrust auth (web, dt-web)         dtsh (on the device)
//!   POST /web/api/login ──▶ password ok; user owns an enrolled device, mode not off
//!                          create_device_web_token  ── device.webtoken.create
//!   ◀── devtrust://user@server/authenticate_web_device?id&token&redirect_uri
//!                                         ──────────▶  dtsh device web-auth URL
//!                          AuthenticateInit { certs, device_web_token } ◀── (mTLS)
//!                          spend the web token (single use), prove the device
//!                          (the ordinary ceremony)  ── device.authenticate (web)
//!                          ──▶ DeviceConfirmationToken (stores dtsh's IP)
//!   GET /web/device/confirm?id&token ◀──────────────── opens the confirmation URL
//!                          confirm_device_web: same web session, same user,
//!                          browser IP == dtsh IP  ── device.authenticate.confirm
//!   ◀── session device-trusted (green shield)
//! ```
//!
//! What it guarantees: both tokens are 32 random bytes, stored only as SHA-256 and compared
//! in constant time, expire after [`WEB_TOKEN_TTL`] and are spent at first use (a failed
//! use spends them too); the web token only serves the user it was created for, and only
//! with a device that user owned, enrolled, at web login; the confirmation serves only the
//! web session that created the web token, and only from the IP address dtsh came from
//! (what stops a token phished out of one browser from trusting another far away).
//!
//! What it does not do: see the browser's IP through a proxy it does not trust (dt-web
//! resolves `X-Forwarded-For` from configured trusted proxies only); the gRPC side takes
//! dtsh's IP from the TCP peer.

use std::net::IpAddr;
use std::time::Duration;

use dt_ceremony::messages::{DeviceConfirmationToken, DeviceWebToken};
use dt_store::Op;
use dt_types::UserName;
use dt_types::audit::{AuditEvent, DeviceInfo, EventType};
use dt_types::device::EnrollStatus;
use dt_types::resource::DeviceTrustMode;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult};
use crate::plan::{self, PlanError};
use crate::server::AuthServer;
use crate::tokens::{random_token, sha256_hex};

/// How long a device web token (and the confirmation token it turns into) lives.
pub const WEB_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

fn web_token_key(id: &str) -> String {
    format!("/secrets/device_web_token/{id}")
}

fn confirm_key(id: &str) -> String {
    format!("/secrets/device_web_confirm/{id}")
}

/// A device web token, as stored (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WebTokenRecord {
    token_sha256: String,
    /// The web session's user (stored as text, checked when read).
    pub(crate) user: UserName,
    /// The public id of the web session that logged in (not its cookie).
    web_session: String,
    /// The devices the user owned, enrolled, at web login.
    device_ids: Vec<String>,
    browser_ip: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ConfirmRecord {
    token_sha256: String,
    user: UserName,
    web_session: String,
    device: DeviceInfo,
    /// The IP address dtsh ran the ceremony from.
    device_ip: String,
}

/// What the web login hands to the page: the id and the token (shown once, in the
/// `devtrust://` URL).
#[derive(Clone)]
pub struct IssuedWebToken {
    pub id: String,
    pub token: String,
}

impl std::fmt::Debug for IssuedWebToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedWebToken")
            .field("id", &self.id)
            .field("token", &"<secret>")
            .finish()
    }
}

/// Why no web token was created at a web login (not an error: the login goes on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoWebToken {
    DeviceTrustOff,
    NoEnrolledDevice,
}

/// A confirmed device web authentication: the device the browser session now carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfirmedDevice {
    pub device: DeviceInfo,
}

/// Why a confirmation was refused: the message is for people (and the audit log).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfirmRefused(pub String);

fn same_hash(stored_hex: &str, presented: &str) -> bool {
    let presented = sha256_hex(presented);
    bool::from(stored_hex.as_bytes().ct_eq(presented.as_bytes()))
}

impl AuthServer {
    /// At web login: a single-use device web token when the cluster's mode is not `off`
    /// and `user` owns an enrolled device. Written with its `device.webtoken.create` event.
    pub async fn create_device_web_token(
        &self,
        user: &str,
        web_session: &str,
        browser_ip: IpAddr,
        ttl: Duration,
    ) -> ApiResult<Result<IssuedWebToken, NoWebToken>> {
        let user = UserName::parse(user)?;
        let cap = self.cap().await?;
        match cap.spec.device_trust.mode {
            DeviceTrustMode::Off | DeviceTrustMode::Unknown(_) => {
                return Ok(Err(NoWebToken::DeviceTrustOff));
            }
            DeviceTrustMode::Optional
            | DeviceTrustMode::Required
            | DeviceTrustMode::RequiredForHumans => {}
        }
        let devices = self.enrolled_devices_of(user.as_str()).await?;
        if devices.is_empty() {
            return Ok(Err(NoWebToken::NoEnrolledDevice));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let token = random_token();
        let record = WebTokenRecord {
            token_sha256: sha256_hex(&token),
            user: user.clone(),
            web_session: web_session.to_string(),
            device_ids: devices.iter().map(|d| d.device_id.clone()).collect(),
            browser_ip: browser_ip.to_string(),
        };
        let now = self.env.now();
        self.audit
            .write_with(
                vec![],
                vec![Op::Put {
                    key: web_token_key(&id),
                    value: serde_json::to_vec(&record).map_err(ApiError::internal)?,
                    expires: Some(self.env.now() + ttl),
                }],
                AuditEvent::new(EventType::DeviceWebTokenCreate, true, now)
                    .user(user.into_string())
                    .message(format!(
                        "device web token created at web login ({} enrolled device(s) may answer it)",
                        devices.len()
                    ))
                    .remote_addr(browser_ip.to_string()),
            )
            .await?;
        Ok(Ok(IssuedWebToken { id, token }))
    }

    /// The devices `user` owns that are enrolled (for the web token, and the user menu).
    pub async fn enrolled_devices_of(&self, user: &str) -> ApiResult<Vec<DeviceInfo>> {
        let prefix = crate::keys::device_owner_index(user, "");
        let page = self.backend.range(&prefix, None, 100).await?;
        let mut out = Vec::new();
        for item in page.items {
            let id = item.key.trim_start_matches(&prefix);
            if let Some((d, _)) = self.get_device(id).await?
                && d.spec.owner.as_deref() == Some(user)
                && d.spec.enroll_status == EnrollStatus::Enrolled
            {
                out.push(crate::devices::device_info(&d));
            }
        }
        Ok(out)
    }

    /// At `AuthenticateInit` with a web token: spend it (whatever follows) and check it is
    /// this user's. `Err(message)` is a refusal to audit and return.
    pub(crate) async fn spend_device_web_token(
        &self,
        user: &UserName,
        presented: &DeviceWebToken,
    ) -> ApiResult<Result<WebTokenRecord, String>> {
        const INVALID: &str = plan::WEB_TOKEN_SPENT_CONCURRENTLY;
        let key = web_token_key(&presented.id);
        let Some(item) = self.backend.get(&key).await? else {
            return Ok(Err(INVALID.into()));
        };
        let record: WebTokenRecord =
            serde_json::from_slice(&item.value).map_err(ApiError::internal)?;
        if !same_hash(&record.token_sha256, &presented.token) {
            return Ok(Err(INVALID.into()));
        }
        // Spent now, before any other check: a token is tried at most once.
        let plan = plan::web_token_spent(key, item.revision, INVALID);
        let result = self
            .backend
            .atomic_write(plan.conditions(), plan.ops.clone())
            .await;
        match plan.outcome(result) {
            Ok(_) => {}
            Err(PlanError::Refused(msg)) => return Ok(Err(msg.into())),
            Err(PlanError::Store(e)) => return Err(e.into()),
        }
        if record.user != *user {
            return Ok(Err(format!(
                "device web token of user {:?} presented by user {user:?}: run `dtsh device web-auth` logged in as the user of the web session",
                record.user
            )));
        }
        Ok(Ok(record))
    }

    /// Web-token ceremonies must prove one of the devices the user owned at web login.
    pub(crate) fn web_token_allows_device(record: &WebTokenRecord, device_id: &str) -> bool {
        record.device_ids.iter().any(|d| d == device_id)
    }

    /// The ops and events that end a device web authentication: a confirmation token bound
    /// to the web session and dtsh's IP (written by the driver with the device record).
    pub(crate) fn issue_confirmation(
        &self,
        record: &WebTokenRecord,
        device: DeviceInfo,
        device_ip: IpAddr,
    ) -> ApiResult<(Op, DeviceConfirmationToken)> {
        let id = uuid::Uuid::new_v4().to_string();
        let token = random_token();
        let confirm = ConfirmRecord {
            token_sha256: sha256_hex(&token),
            user: record.user.clone(),
            web_session: record.web_session.clone(),
            device,
            device_ip: device_ip.to_string(),
        };
        Ok((
            Op::Put {
                key: confirm_key(&id),
                value: serde_json::to_vec(&confirm).map_err(ApiError::internal)?,
                expires: Some(self.env.now() + WEB_TOKEN_TTL),
            },
            DeviceConfirmationToken { id, token },
        ))
    }

    /// The browser presents the confirmation token. On success the web session may carry
    /// the device; every outcome leaves a `device.authenticate.confirm` event.
    pub async fn confirm_device_web(
        &self,
        id: &str,
        token: &str,
        user: &str,
        web_session: &str,
        browser_ip: IpAddr,
    ) -> ApiResult<Result<ConfirmedDevice, ConfirmRefused>> {
        let now = self.env.now();
        let event = |ok: bool| {
            AuditEvent::new(EventType::DeviceAuthenticateConfirm, ok, now)
                .user(user)
                .remote_addr(browser_ip.to_string())
        };
        let refuse = |msg: String, device: Option<DeviceInfo>| async move {
            let mut e = event(false).message(msg.clone());
            e.device = device;
            self.audit.emit(e).await?;
            Ok::<_, ApiError>(Err(ConfirmRefused(msg)))
        };
        let key = confirm_key(id);
        let item = match self.backend.get(&key).await? {
            Some(item) => item,
            None => {
                return refuse(
                    "invalid, used or expired device confirmation token: log in to the web UI again".into(),
                    None,
                )
                .await;
            }
        };
        let record: ConfirmRecord =
            serde_json::from_slice(&item.value).map_err(ApiError::internal)?;
        if !same_hash(&record.token_sha256, token) {
            return refuse(
                "invalid, used or expired device confirmation token: log in to the web UI again"
                    .into(),
                None,
            )
            .await;
        }
        // Spend it whatever the verdict: a refused confirmation is not retried.
        let plan = plan::web_token_spent(key, item.revision, plan::CONFIRMATION_SPENT_CONCURRENTLY);
        let result = self
            .backend
            .atomic_write(plan.conditions(), plan.ops.clone())
            .await;
        match plan.outcome(result) {
            Ok(_) => {}
            Err(PlanError::Refused(msg)) => return refuse(msg.into(), None).await,
            Err(PlanError::Store(e)) => return Err(e.into()),
        }
        let device = Some(record.device.clone());
        if record.user != user {
            return refuse(
                format!(
                    "device confirmation token of user {:?} presented by a web session of user {user:?}",
                    record.user
                ),
                device,
            )
            .await;
        }
        if record.web_session != web_session {
            return refuse(
                "device confirmation token of another web session: confirm in the browser that logged in".into(),
                device,
            )
            .await;
        }
        if record.device_ip != browser_ip.to_string() {
            return refuse(
                format!(
                    "IP mismatch: browser {browser_ip}, device {}; if a load balancer is in front of devtrust, make it send X-Forwarded-For and list it as a trusted proxy",
                    record.device_ip
                ),
                device,
            )
            .await;
        }
        let mut e = event(true).message("web session marked device-trusted");
        e.device = Some(record.device.clone());
        self.audit.emit(e).await?;
        Ok(Ok(ConfirmedDevice {
            device: record.device,
        }))
    }
}
