//! The HTTPS JSON API, on the same listener as gRPC. Read-only for now: it serves the
//! facts a browser or a script needs (`/v1/ping`, `/v1/whoami`, resources) with the same
//! identity and RBAC rules as gRPC.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use dt_types::{AnyResource, Kind, Verb};
use serde_json::json;

use crate::error::ApiError;
use crate::listener::Peer;
use crate::server::{AuthServer, VERSION};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.http_status(),
            Json(json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

type S = State<Arc<AuthServer>>;

pub fn router(srv: Arc<AuthServer>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/ping", get(ping))
        .route("/v1/whoami", get(whoami))
        .route("/v1/resources/{kind}", get(list))
        .route("/v1/resources/{kind}/{name}", get(get_one))
        .with_state(srv)
}

async fn ping(State(srv): S) -> Result<Json<serde_json::Value>, ApiError> {
    let cap = srv.cap().await?;
    Ok(Json(json!({
        "cluster_name": srv.cluster_name,
        "server_version": VERSION,
        "host_ca_pin": srv.host_ca.pin(),
        "user_ca_pin": srv.user_ca.pin(),
        "device_trust": {
            "mode": cap.spec.device_trust.mode.to_string(),
            "auto_enroll": cap.spec.device_trust.auto_enroll,
        },
    })))
}

async fn whoami(
    State(srv): S,
    Extension(peer): Extension<Peer>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = srv.caller(peer).await?;
    Ok(Json(
        serde_json::to_value(caller.identity.as_ref()).map_err(ApiError::internal)?,
    ))
}

async fn list(
    State(srv): S,
    Extension(peer): Extension<Peer>,
    Path(kind): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = srv.caller(peer).await?;
    let kind = Kind::parse(&kind).map_err(|e| ApiError::NotFound(e.to_string()))?;
    srv.authorize(&caller, kind.as_str(), Verb::List)?;
    let page = srv
        .backend
        .range(&crate::keys::resource_prefix(kind), None, 1000)
        .await?;
    let mut out = Vec::new();
    for item in page.items {
        let v: serde_json::Value =
            serde_json::from_slice(&item.value).map_err(ApiError::internal)?;
        if let Ok(r) = AnyResource::from_json_value(v) {
            out.push(r.to_json_value());
        }
    }
    Ok(Json(json!({ "items": out })))
}

async fn get_one(
    State(srv): S,
    Extension(peer): Extension<Peer>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = srv.caller(peer).await?;
    let kind = Kind::parse(&kind).map_err(|e| ApiError::NotFound(e.to_string()))?;
    srv.authorize(&caller, kind.as_str(), Verb::Read)?;
    let item = srv
        .backend
        .get(&crate::keys::resource(kind, &name))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{kind} {name:?} not found")))?;
    let v: serde_json::Value = serde_json::from_slice(&item.value).map_err(ApiError::internal)?;
    Ok(Json(v))
}
