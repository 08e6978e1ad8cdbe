//! The JWT an app access point forwards with every request ([`dt_proto::v1::app_service_server`]).
//!
//! **SignAppToken**: a joined app access point shows the user certificate it verified and
//! decided on; the token carries what that certificate says (user, roles, login traits, the
//! trusted device) and nothing the access point could add, for the app's URI as audience,
//! until the certificate expires or [`APP_TOKEN_TTL`] passes, whichever is first. Signed by
//! the cluster's JWT CA; apps verify it with `/.well-known/jwks.json`.

use std::sync::Arc;
use std::time::Duration;

use dt_proto::v1 as pb;
use dt_proto::v1::app_service_server::AppService;
use serde_json::json;
use tonic::{Request, Response, Status};

use crate::caller::peer_of;
use crate::error::{ApiError, ApiResult};
use crate::server::AuthServer;

/// The longest an app token lasts; the access point asks again before it expires.
pub const APP_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

pub struct GrpcApps {
    pub srv: Arc<AuthServer>,
}

impl AuthServer {
    pub async fn sign_app_token(
        &self,
        service: &dt_ca::NodeIdentity,
        req: pb::SignAppTokenRequest,
    ) -> ApiResult<pb::SignAppTokenResponse> {
        if service.kind != dt_types::ServiceKind::App {
            return Err(ApiError::PermissionDenied(format!(
                "only app access points get app tokens; {:?} joined as {}",
                service.name, service.kind
            )));
        }
        let now = self.env.now();
        if now >= service.not_after {
            return Err(ApiError::Unauthenticated(format!(
                "the certificate of {:?} expired; join it again",
                service.name
            )));
        }
        if req.app.is_empty() || req.audience.is_empty() {
            return Err(ApiError::InvalidArgument("name the app and its URI".into()));
        }
        let id = self
            .user_ca
            .verify_x509_issued_by(&req.user_cert_der, now)
            .map_err(|e| {
                ApiError::PermissionDenied(format!("the user certificate is refused: {e}"))
            })?;
        let exp = id.not_after.min(now + APP_TOKEN_TTL);
        let mut claims = json!({
            "iss": self.cluster_name,
            "sub": id.username,
            "aud": [req.audience],
            "iat": now.unix_timestamp(),
            "nbf": now.unix_timestamp() - 60,
            "exp": exp.unix_timestamp(),
            "username": id.username,
            "roles": id.roles,
            "traits": {"logins": id.trait_logins},
            "app": req.app,
            "bot": id.bot,
        });
        if let Some(d) = &id.device {
            claims["device_id"] = json!(d.device_id);
            claims["device_asset_tag"] = json!(d.asset_tag);
        }
        let body = serde_json::to_vec(&claims).map_err(ApiError::internal)?;
        let token = self.jwt_ca.sign_jwt(&body).map_err(ApiError::internal)?;
        Ok(pb::SignAppTokenResponse {
            token,
            expires_unix: exp.unix_timestamp(),
        })
    }
}

impl AuthServer {
    /// Check that `service` is a live app access point serving `app`.
    async fn check_serves_app(&self, service: &dt_ca::NodeIdentity, app: &str) -> ApiResult<()> {
        if service.kind != dt_types::ServiceKind::App {
            return Err(ApiError::PermissionDenied(format!(
                "only app access points handle app sessions; {:?} joined as {}",
                service.name, service.kind
            )));
        }
        if self.env.now() >= service.not_after {
            return Err(ApiError::Unauthenticated(format!(
                "the certificate of {:?} expired; join it again",
                service.name
            )));
        }
        let serves = self
            .list_served(dt_types::ServiceKind::App)
            .await?
            .iter()
            .any(|r| r.service == service.name && r.resource.name == app);
        if !serves {
            return Err(ApiError::PermissionDenied(format!(
                "app access point {:?} does not serve app {app:?}",
                service.name
            )));
        }
        Ok(())
    }

    pub async fn exchange_app_code(
        &self,
        service: &dt_ca::NodeIdentity,
        req: pb::ExchangeAppCodeRequest,
    ) -> ApiResult<pb::AppSession> {
        self.check_serves_app(service, &req.app).await?;
        let issued = self
            .app_sessions
            .exchange(&req.code, &req.state, &req.app, self.env.now())
            .map_err(app_session_error)?;
        Ok(pb::AppSession {
            session_id: issued.id,
            secret: issued.secret,
            user_cert_der: issued.grant.cert_der.to_vec(),
            expires_unix: issued.grant.expires.unix_timestamp(),
        })
    }

    pub async fn get_app_session(
        &self,
        service: &dt_ca::NodeIdentity,
        req: pb::GetAppSessionRequest,
    ) -> ApiResult<pb::AppSession> {
        self.check_serves_app(service, &req.app).await?;
        let grant = self
            .app_sessions
            .resolve(&req.session_id, &req.secret, &req.app, self.env.now())
            .map_err(app_session_error)?;
        Ok(pb::AppSession {
            session_id: req.session_id,
            secret: String::new(),
            user_cert_der: grant.cert_der.to_vec(),
            expires_unix: grant.expires.unix_timestamp(),
        })
    }

    pub async fn end_app_session(
        &self,
        service: &dt_ca::NodeIdentity,
        req: pb::GetAppSessionRequest,
    ) -> ApiResult<pb::EndAppSessionResponse> {
        self.check_serves_app(service, &req.app).await?;
        Ok(pb::EndAppSessionResponse {
            ended: self.app_sessions.end(&req.session_id, &req.secret),
        })
    }
}

fn app_session_error(e: crate::app_sessions::AppSessionError) -> ApiError {
    use crate::app_sessions::AppSessionError as E;
    match e {
        E::BadState => ApiError::InvalidArgument(e.to_string()),
        E::Full => ApiError::TooMany(e.to_string()),
        E::UnknownCode | E::UnknownSession => ApiError::Unauthenticated(e.to_string()),
        E::WrongApp { .. } | E::WrongState | E::SessionForOtherApp { .. } => {
            ApiError::PermissionDenied(e.to_string())
        }
    }
}

fn app_service(peer: &crate::listener::Peer) -> ApiResult<Arc<dt_ca::NodeIdentity>> {
    peer.node.clone().ok_or_else(|| {
        ApiError::Unauthenticated(
            "app sessions are for joined app access points (`devtrust app start --token`)".into(),
        )
    })
}

#[tonic::async_trait]
impl AppService for GrpcApps {
    async fn exchange_app_code(
        &self,
        req: Request<pb::ExchangeAppCodeRequest>,
    ) -> Result<Response<pb::AppSession>, Status> {
        let service = app_service(&peer_of(&req)?)?;
        Ok(Response::new(
            self.srv
                .exchange_app_code(&service, req.into_inner())
                .await?,
        ))
    }

    async fn get_app_session(
        &self,
        req: Request<pb::GetAppSessionRequest>,
    ) -> Result<Response<pb::AppSession>, Status> {
        let service = app_service(&peer_of(&req)?)?;
        Ok(Response::new(
            self.srv.get_app_session(&service, req.into_inner()).await?,
        ))
    }

    async fn end_app_session(
        &self,
        req: Request<pb::GetAppSessionRequest>,
    ) -> Result<Response<pb::EndAppSessionResponse>, Status> {
        let service = app_service(&peer_of(&req)?)?;
        Ok(Response::new(
            self.srv.end_app_session(&service, req.into_inner()).await?,
        ))
    }

    async fn sign_app_token(
        &self,
        req: Request<pb::SignAppTokenRequest>,
    ) -> Result<Response<pb::SignAppTokenResponse>, Status> {
        let peer = peer_of(&req)?;
        let service = peer.node.clone().ok_or_else(|| {
            ApiError::Unauthenticated(
                "app tokens are for joined app access points (`devtrust app start --token`)".into(),
            )
        })?;
        Ok(Response::new(
            self.srv.sign_app_token(&service, req.into_inner()).await?,
        ))
    }
}
