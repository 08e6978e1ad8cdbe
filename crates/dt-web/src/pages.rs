//! The pages and assets, embedded in the binary: plain HTML, one script and one stylesheet
//! (no framework, no CDN, no inline script or style: the CSP forbids them).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub const LOGIN_HTML: &str = include_str!("../assets/login.html");

/// The head, top bar and user menu every signed-in page shares.
const LAYOUT: &str = include_str!("../assets/layout.html");

/// A page of the signed-in web UI: [`LAYOUT`] around its own `<main>`.
pub struct Page {
    pub title: &'static str,
    /// `<body data-page>`: what app.js runs.
    pub name: &'static str,
    /// Scripts beyond app.js.
    pub scripts: &'static [&'static str],
    pub main: &'static str,
}

impl Page {
    pub fn render(&self) -> String {
        let scripts: String = self
            .scripts
            .iter()
            .map(|s| format!("\n<script src=\"/web/assets/{s}\" defer></script>"))
            .collect();
        LAYOUT
            .replace("{{TITLE}}", self.title)
            .replace("{{PAGE}}", self.name)
            .replace("{{SCRIPTS}}", &scripts)
            .replace("{{MAIN}}", self.main)
    }
}

pub const INDEX: Page = Page {
    title: "devtrust",
    name: "index",
    scripts: &[],
    main: include_str!("../assets/index.html"),
};
pub const DEVICES: Page = Page {
    title: "devtrust · devices",
    name: "devices",
    scripts: &[],
    main: include_str!("../assets/devices.html"),
};
pub const AUDIT: Page = Page {
    title: "devtrust · audit log",
    name: "audit",
    scripts: &[],
    main: include_str!("../assets/audit.html"),
};
pub const TERMINAL: Page = Page {
    title: "devtrust · terminal",
    name: "terminal",
    scripts: &[],
    main: include_str!("../assets/terminal.html"),
};
pub const DESKTOP: Page = Page {
    title: "devtrust · desktop",
    name: "desktop",
    scripts: &["desktop.js"],
    main: include_str!("../assets/desktop.html"),
};
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
