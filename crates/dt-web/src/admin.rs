//! The device inventory and the audit log in the browser, for users whose roles grant the
//! verbs. Every call goes to the same `AuthServer` method as its gRPC twin (`dtctl devices`,
//! `dtctl lock`, `dtctl events ls`), so RBAC, validation and audit are the gRPC API's; this
//! module only maps JSON. State-changing calls need the session's CSRF token.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Router, routing::get, routing::post};
use dt_auth::audit::EventFilter;
use dt_auth::error::ApiError;
use dt_auth::listener::Peer;
use dt_proto::v1 as pb;
use dt_types::Verb;
use dt_types::audit::EventType;
use dt_types::device::OsType;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::{Web, WebError, WebResult, json_body};

pub(crate) fn routes() -> Router<Web> {
    Router::new()
        .route("/web/api/devices", get(list_devices))
        .route("/web/api/devices/add", post(add_device))
        .route("/web/api/devices/enroll-token", post(enroll_token))
        .route("/web/api/devices/remove", post(remove_device))
        .route("/web/api/devices/lock", post(lock_device))
        .route("/web/api/events", get(events))
}

fn device_json(d: &dt_types::Device) -> Value {
    json!({
        "id": d.metadata.name,
        "asset_tag": d.spec.asset_tag,
        "os_type": d.spec.os_type.as_str(),
        "enroll_status": d.spec.enroll_status,
        "owner": d.spec.owner,
        "source": d.spec.source.as_ref().map(|s| s.origin),
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_devices(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> WebResult<Json<Value>> {
    let (_, _, caller) = web.session(&peer, &headers).await?;
    let needle = q.q.trim();
    if !needle.is_empty() {
        let found = web.srv.find_readable_devices(&caller, needle).await?;
        let items: Vec<Value> = found.iter().map(|(d, _)| device_json(d)).collect();
        return Ok(Json(json!({ "items": items, "next_page_token": null })));
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 100);
    let (page, next) = web.srv.list_devices(&caller, limit, &q.page_token).await?;
    let items: Vec<Value> = page.iter().map(|(d, _)| device_json(d)).collect();
    Ok(Json(json!({ "items": items, "next_page_token": next })))
}

/// The session, its caller and a checked CSRF token: the start of every POST here.
async fn post_caller(
    web: &Web,
    peer: &Peer,
    headers: &HeaderMap,
    what: &str,
) -> WebResult<dt_auth::caller::Caller> {
    let ip = web.client_ip(peer, headers);
    let (_, session, caller) = web.session(peer, headers).await?;
    web.check_session_csrf(headers, &session, ip, what).await?;
    Ok(caller)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    os_type: String,
    asset_tag: String,
}

async fn add_device(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Json<Value>> {
    let caller = post_caller(&web, &peer, &headers, "device add").await?;
    let b: AddBody = json_body(&body)?;
    let os = OsType::parse(&b.os_type)
        .ok_or_else(|| WebError::BadRequest("os_type must be macos, windows or linux".into()))?;
    let d = dt_auth::devices::new_device_resource(os, b.asset_tag.trim());
    let (d, _, _) = web.srv.create_device(&caller, d, None).await?;
    Ok(Json(json!({ "device": device_json(&d) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceBody {
    device_id: String,
    #[serde(default)]
    message: Option<String>,
}

fn device_ref(id: &str) -> pb::DeviceRef {
    pb::DeviceRef {
        device_id: id.to_string(),
        ..Default::default()
    }
}

async fn enroll_token(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Json<Value>> {
    let caller = post_caller(&web, &peer, &headers, "device enrollment token").await?;
    let b: DeviceBody = json_body(&body)?;
    let t = web
        .srv
        .create_enroll_token(
            &caller,
            &device_ref(&b.device_id),
            Duration::from_secs(3600),
        )
        .await?;
    Ok(Json(json!({
        "command": format!("dtsh device enroll --token={}", t.token),
        "expires_unix": t.expires_unix,
    })))
}

async fn remove_device(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Json<Value>> {
    let caller = post_caller(&web, &peer, &headers, "device removal").await?;
    let b: DeviceBody = json_body(&body)?;
    let d = web
        .srv
        .delete_device(&caller, &device_ref(&b.device_id))
        .await?;
    Ok(Json(json!({ "removed": device_json(&d) })))
}

async fn lock_device(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Json<Value>> {
    let caller = post_caller(&web, &peer, &headers, "device lock").await?;
    let b: DeviceBody = json_body(&body)?;
    let Ok(device_id) = dt_types::DeviceId::parse(b.device_id.as_str()) else {
        return Err(WebError::BadRequest("device_id must be a device id".into()));
    };
    let name = uuid::Uuid::new_v4().to_string();
    let lock: dt_types::Lock = dt_types::resource::Resource::new(
        name.clone(),
        dt_types::resource::LockSpec {
            target: dt_types::LockTarget {
                device: Some(device_id.into_string()),
                ..Default::default()
            },
            message: b.message.filter(|m| !m.trim().is_empty()),
            created_by: None,
            created_at: None,
        },
    );
    web.srv
        .upsert(
            &caller,
            pb::UpsertResourceRequest {
                canonical_json: serde_json::to_vec(&lock).map_err(ApiError::internal)?,
                force: false,
                expected_revision: 0,
            },
        )
        .await?;
    Ok(Json(json!({ "lock": name })))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    device: String,
    /// Hours back.
    #[serde(default)]
    since_hours: Option<i64>,
}

async fn events(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> WebResult<Json<Value>> {
    let (_, _, caller) = web.session(&peer, &headers).await?;
    web.srv.authorize(&caller, "event", Verb::List)?;
    let event = match q.event_type.trim() {
        "" => None,
        t => Some(
            EventType::parse(t)
                .ok_or_else(|| WebError::BadRequest(format!("unknown event type {t:?}")))?,
        ),
    };
    let filter = EventFilter {
        since: q
            .since_hours
            .filter(|h| *h > 0)
            .map(|h| OffsetDateTime::now_utc() - time::Duration::hours(h)),
        event,
        user: Some(q.user.trim().to_string()).filter(|u| !u.is_empty()),
        device: Some(q.device.trim().to_string()).filter(|d| !d.is_empty()),
    };
    let (events, _) = web
        .srv
        .audit
        .search(&filter, None, 500)
        .await
        .map_err(ApiError::from)?;
    // Newest first, at most 200.
    let items: Vec<&dt_types::audit::AuditEvent> = events.iter().rev().take(200).collect();
    Ok(Json(json!({ "items": items })))
}
