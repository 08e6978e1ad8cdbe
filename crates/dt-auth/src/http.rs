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
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/ping", get(ping))
        .route("/v1/whoami", get(whoami))
        .route("/v1/resources/{kind}", get(list))
        .route("/v1/resources/{kind}/{name}", get(get_one))
        .with_state(srv)
}

/// The keys apps verify `devtrust-jwt-assertion` tokens with (RFC 7517). Public.
async fn jwks(State(srv): S) -> Response {
    Json(json!({"keys": [srv.jwt_ca.jwk()]})).into_response()
}

/// Ready means storage answers within a second: a load balancer stops sending requests to
/// an auth server whose database is gone (`/healthz` only says the process runs).
async fn readyz(State(srv): S) -> Response {
    let probe = srv.backend.get(crate::server::READY_PROBE_KEY);
    match tokio::time::timeout(std::time::Duration::from_secs(1), probe).await {
        Ok(Ok(_)) => Json(json!({"ready": true})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness probe: storage failed");
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ready": false, "reason": "storage is unreachable"})),
            )
                .into_response()
        }
        Err(_) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "storage did not answer within 1 s"})),
        )
            .into_response(),
    }
}

async fn metrics(State(srv): S) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        srv.metrics.registry.render(),
    )
        .into_response()
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
        serde_json::to_value(caller.identity()?).map_err(ApiError::internal)?,
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::body::Body;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;

    async fn server(dir: &std::path::Path) -> Arc<AuthServer> {
        let config = Config {
            data_dir: dir.join("data"),
            cluster_name: Some("test".into()),
            ..Config::default()
        };
        AuthServer::bootstrap(config).await.unwrap()
    }

    fn peer(identity: Option<dt_ca::Identity>) -> Peer {
        Peer {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            identity: identity.map(Arc::new),
            cert_der: None,
            user_cert: None,
            node: None,
        }
    }

    async fn get(srv: &Arc<AuthServer>, path: &str, p: Peer) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .uri(path)
            .extension(p)
            .body(Body::empty())
            .unwrap();
        let resp = router(srv.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn admin() -> dt_ca::Identity {
        let now = time::OffsetDateTime::now_utc();
        dt_ca::Identity {
            username: crate::server::LOCAL_ADMIN.parse().unwrap(),
            roles: vec!["editor".into()],
            logins: vec![],
            bot: false,
            trait_logins: vec![],
            device: None,
            not_before: now - time::Duration::minutes(1),
            not_after: now + time::Duration::hours(1),
        }
    }

    #[tokio::test]
    async fn ping_needs_no_identity_and_reports_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path()).await;
        let (status, body) = get(&srv, "/v1/ping", peer(None)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["cluster_name"], "test");
        assert_eq!(body["device_trust"]["mode"], "optional");
        assert_eq!(body["host_ca_pin"], srv.host_ca.pin());
    }

    #[tokio::test]
    async fn resources_need_an_identity_and_a_role() {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path()).await;
        let (status, body) = get(&srv, "/v1/resources/roles", peer(None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"].as_str().unwrap().contains("dtsh login"));

        let (status, body) = get(&srv, "/v1/resources/roles", peer(Some(admin()))).await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"require-trusted-device"));

        // A role without rules can't list roles (and the user must exist).
        let mut weak = admin();
        weak.username = "nobody".parse().unwrap();
        weak.roles = vec!["access".into()];
        let (status, _) = get(&srv, "/v1/resources/roles", peer(Some(weak))).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "unknown users are refused"
        );

        let (status, _) = get(&srv, "/v1/resources/widgets", peer(Some(admin()))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = get(&srv, "/v1/resources/role/access", peer(Some(admin()))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["metadata"]["name"], "access");
    }
}
