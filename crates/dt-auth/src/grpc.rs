//! The `AuthService` gRPC handlers, thin: the peer, the caller, one call into the domain
//! module (caller, login, resources, users, tokens), one error mapping.

use std::sync::Arc;

use dt_proto::v1 as pb;
use dt_proto::v1::auth_service_server::AuthService;
use dt_types::audit::EventType;
use dt_types::{AnyResource, Kind, Verb};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::audit::EventFilter;
use crate::caller::peer_of;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::server::{AuthServer, VERSION};

#[derive(Clone)]
pub struct GrpcAuth {
    pub srv: Arc<AuthServer>,
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
        let id = caller.identity()?;
        let who = if id.bot {
            dt_authz::Principal::Bot
        } else {
            dt_authz::Principal::Human
        };
        Ok(Response::new(pb::WhoAmIResponse {
            username: id.username.to_string(),
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
