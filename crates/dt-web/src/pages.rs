//! The pages and assets, embedded in the binary: plain HTML, one script and one stylesheet
//! (no framework, no CDN, no inline script or style: the CSP forbids them).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub const LOGIN_HTML: &str = include_str!("../assets/login.html");
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
pub const DEVICES_HTML: &str = include_str!("../assets/devices.html");
pub const AUDIT_HTML: &str = include_str!("../assets/audit.html");
pub const TERMINAL_HTML: &str = include_str!("../assets/terminal.html");
pub const DESKTOP_HTML: &str = include_str!("../assets/desktop.html");
pub const CONFIRM_HTML: &str = include_str!("../assets/confirm.html");
pub const CONFIRM_NO_SESSION_HTML: &str = include_str!("../assets/confirm-login.html");
pub const LAUNCH_HTML: &str = include_str!("../assets/launch.html");

const APP_JS: &str = include_str!("../assets/app.js");
const DESKTOP_JS: &str = include_str!("../assets/desktop.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

pub fn html(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "desktop.js" => (DESKTOP_JS, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        "favicon.svg" => (FAVICON_SVG, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(kind))],
        body,
    )
        .into_response()
}
