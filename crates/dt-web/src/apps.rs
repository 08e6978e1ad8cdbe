//! App launch from the web UI (step 2 of the dance in [`dt_auth::app_sessions`]).
//!
//! `GET /web/launch/APP?state=STATE` is a page on this origin: the web session cookie is
//! `SameSite=Strict`, so it is not sent on the cross-site redirect from the app's access
//! point, but it is sent on the page's own `fetch`. The page then calls
//! `POST /web/api/apps/launch` (session + CSRF), which grants a single-use launch code for
//! an app the session's roles may list and answers where to send the browser:
//! `https://PUBLIC_ADDR/__devtrust/auth?state=STATE&code=CODE`.

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use dt_auth::app_sessions::{Grant, valid_state};
use dt_auth::listener::Peer;
use dt_types::ServiceKind;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::{Web, WebError, WebResult, json_body, pages};

/// Where the access point takes a launch code.
use dt_client::access_point::APP_AUTH_CALLBACK_PATH as AUTH_CALLBACK_PATH;

pub(crate) async fn launch_page() -> Response {
    pages::html(pages::LAUNCH_HTML.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchBody {
    app: String,
    state: String,
}

/// `https://PUBLIC_ADDR/` for an app's public address (what the resource list links to).
pub(crate) fn app_url(public_addr: &str, path: &str) -> String {
    format!("https://{public_addr}{path}")
}

pub(crate) async fn launch(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Json<serde_json::Value>> {
    let (_, session, caller) = web.session(&peer, &headers).await?;
    let ip = web.client_ip(&peer, &headers);
    web.check_session_csrf(&headers, &session, ip, "app launch")
        .await?;
    let req: LaunchBody = json_body(&body)?;
    if !valid_state(&req.state) {
        return Err(WebError::BadRequest(
            "this launch link has no valid state: open the app at its own address (or from the resource list) again"
                .into(),
        ));
    }
    // The same listing decision as `dtsh apps ls`: an app the roles cannot list is not
    // launched (the access point decides on every request anyway).
    let app = web
        .srv
        .list_served_for(ServiceKind::App, &caller.roles)
        .await?
        .into_iter()
        .find(|a| a.resource.name == req.app)
        .ok_or_else(|| {
            WebError::Refused(format!(
                "there is no app {:?} you may reach (see the resource list)",
                req.app
            ))
        })?;
    let public_addr = app.resource.protocol.clone();
    if public_addr.is_empty()
        || !public_addr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return Err(WebError::Refused(format!(
            "app {:?} has no usable public address; its access point needs --public-addr",
            req.app
        )));
    }
    let code = web
        .srv
        .app_sessions
        .grant(
            Grant {
                app: req.app.clone(),
                cert_der: session.tls_cert_der.clone(),
                user: session.user().clone(),
                web_session: session.id.clone(),
                expires: session.expires,
            },
            &req.state,
            OffsetDateTime::now_utc(),
        )
        .map_err(|e| WebError::BadRequest(e.to_string()))?;
    let query = format!("state={}&code={code}", req.state);
    Ok(Json(json!({
        "url": app_url(&public_addr, &format!("{AUTH_CALLBACK_PATH}?{query}")),
    })))
}
