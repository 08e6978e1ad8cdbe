//! App launch from the web UI in a real browser (Debian's chromium through playwright-core,
//! tests/web/app_web.mjs) against the real auth service, `devtrust app start` and an app that
//! echoes the request it got: the redirect dance that gives each app host its own session
//! without showing it the web session, role-based device trust with the "trusted device
//! required" page, the identity the app gets (checked against the JWKS), and each way to
//! cheat a launch or a session: a replayed launch code, forged, malformed and other apps'
//! cookies, sessions after app logout and web logout. Oversized headers are refused while
//! the access point keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::apps::*;
use common::db::wait_until;
use common::trust::*;
use common::web::*;
use common::*;
use dt_testkit::free_port;
use serde_json::{Value, json};

const PW: &str = "correct horse battery";

/// Two requests on one TLS connection to the access point (argv: port, host, two session
/// cookies): prints each status, then the second body.
const ONE_CONNECTION: &str = r#"
import http.client, ssl, sys
port, host, first, second = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl._create_unverified_context()
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
for cookie in (first, second):
    c.request("GET", "/", headers={"Host": host, "Cookie": "__Host-devtrust_app_session=" + cookie})
    r = c.getresponse()
    body = r.read().decode()
    print(r.status, flush=True)
print(body)
"#;

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

#[test]
fn apps_launch_from_the_web_ui_with_their_own_sessions_and_role_device_trust() {
    require_browser();
    let srv = Server::start();
    set_mode_software(&srv, "optional");
    let app_port = free_port();
    let script = srv.write_file("echo.py", ECHO_APP);
    let _app = Proc(
        Command::new("python3")
            .args([script.as_str(), &app_port.to_string()])
            .spawn()
            .unwrap(),
    );
    let ap_port = free_port();
    let wiki = format!("wiki.localhost:{ap_port}");
    let vault = format!("vault.localhost:{ap_port}");
    let config = srv.write_file(
        "apps.yaml",
        &format!(
            "apps:
  - {{name: wiki, uri: 'http://127.0.0.1:{app_port}', public_addr: '{wiki}', description: Team wiki, labels: {{env: dev}}}}
  - {{name: vault, uri: 'http://127.0.0.1:{app_port}', public_addr: '{vault}', labels: {{env: prod}}}}
"
        ),
    );
    // The roles exist before the access point starts, so its first view has them.
    let roles = srv.write_file(
        "roles.yaml",
        "kind: role\nversion: v7\nmetadata: {name: app-dev}\nspec: {allow: {app_labels: {env: dev}}}\n---\nkind: role\nversion: v7\nmetadata: {name: app-prod}\nspec: {options: {device_trust_mode: required}, allow: {app_labels: {env: prod}}}\n",
    );
    srv.dtctl(&["create", "-f", &roles]).ok();
    let token = srv
        .dtctl(&["tokens", "add", "--type=app", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let _ap = AccessPoint::start(
        "app",
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=apps1".into(),
            format!("--config={config}"),
            format!("--listen=127.0.0.1:{ap_port}"),
            format!("--data-dir={}", srv.scratch().join("app-ap").display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
            "--session-recheck=1s".into(),
        ],
    );
    let alice = srv.new_user("alice", "editor,app-dev,app-prod", "", PW);
    let bob = srv.new_user("bob", "app-dev,app-prod", "", PW);
    let device = enroll_software_device(&alice, "alice", PW, "APP-WEB-1");
    wait_until("the apps are listed", || {
        let ls = srv.dtsh(&bob, &["apps", "ls"], "");
        ls.success() && ls.stdout.contains("wiki") && ls.stdout.contains("vault")
    });

    // Oversized headers: refused, and the access point keeps serving.
    let big = format!("x-big: {}", "a".repeat(80 * 1024));
    let (code, _) = curl(&["-k", "-H", &big, &format!("https://127.0.0.1:{ap_port}/")]);
    assert_eq!(code, 431, "oversized headers");

    let recheck_ms = 1000;
    let config = json!({
        "url": format!("https://{}", srv.addr),
        "password": PW,
        "dtsh": DTSH.as_str(),
        "alice_home": alice.path,
        "device_env": {
            "DTSH_DEVICE_HOME": device.path(),
            "DTSH_DEVICE_KEYSTORE": "software",
            "DTSH_DEVICE_SERIAL": "APP-WEB-1",
        },
        "apps": {"wiki": format!("https://{wiki}"), "vault": format!("https://{vault}")},
        "recheck_ms": recheck_ms,
        "screenshots": screenshots(srv.scratch()),
    });
    let (c, ctx) = run_browser("app_web.mjs", &config);

    // The identity the app gets, checked as an app would: with the auth service's JWKS.
    let keys = jwks(&srv, &alice);
    let claims_of = |echo: &Value| verified_claims(&keys, echo);

    // alice, with her web session authenticated by her device: both apps open from the
    // resource list; each app host has its own HttpOnly, Secure session cookie; the app gets
    // her identity with the device and never a devtrust cookie.
    let a = &c["alice"];
    assert_eq!(a["device_web_auth"], 0, "{ctx}");
    assert!(
        a["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == "launch-wiki" && l["href"] == format!("https://{wiki}/")),
        "{ctx}"
    );
    let rows = &a["app_rows"];
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r[0] == "wiki" && r[1] == "Team wiki" && r[2] == wiki.as_str()),
        "the resource list shows the description and public address, never the upstream: {rows}"
    );
    assert!(!rows.to_string().contains("127.0.0.1:"), "{rows}");
    let claims = claims_of(&a["wiki"]);
    assert_eq!(claims["sub"], "alice");
    assert!(str_of(&claims, "device_id").len() > 10, "{claims}");
    let cookie_header = str_of(&a["wiki"]["headers"], "cookie");
    assert!(!cookie_header.contains("devtrust"), "{cookie_header}");
    let cookie = &a["cookie"];
    assert_eq!(cookie["httpOnly"], true, "{ctx}");
    assert_eq!(cookie["secure"], true, "{ctx}");
    assert_eq!(cookie["sameSite"], "Lax", "{ctx}");
    assert_eq!(
        a["cookie_names_at_app"],
        json!(["__Host-devtrust_app_session"]),
        "the web session cookie stays with the auth service\n{ctx}"
    );
    assert_eq!(a["vault"]["path"], "/deep/path?x=1", "{ctx}");
    assert!(str_of(&claims_of(&a["vault"]), "device_id").len() > 10);
    assert_eq!(a["console_errors"], json!([]), "{ctx}");

    // A launch code works once, in the browser that started the launch.
    let r = &c["replayed_code"];
    assert_eq!(r["same_browser"]["status"], 400, "{ctx}");
    assert!(
        str_of(&r["same_browser"], "why").contains("did not start this launch"),
        "{ctx}"
    );
    assert_eq!(r["spent"]["status"], 400, "{ctx}");
    assert!(
        str_of(&r["spent"]["page"], "why").contains("already used"),
        "{ctx}"
    );

    // Forged, malformed and other apps' cookies: a page that says what to do.
    let k = &c["cookies"];
    for case in ["forged", "malformed", "other_app"] {
        assert_eq!(k[case]["status"], 401, "{case}\n{ctx}");
        assert_eq!(k[case]["page"]["title"], "App session not valid", "{case}");
        assert!(
            str_of(&k[case]["page"], "todo").contains("/web/"),
            "{case}: {ctx}"
        );
    }
    assert!(
        str_of(&k["other_app"]["page"], "why").contains("is for app \"wiki\", not \"vault\""),
        "{ctx}"
    );
    assert_eq!(
        k["copied_same_app"]["status"], 200,
        "the cookie itself is the session (HttpOnly keeps scripts from copying it)"
    );

    // App logout and web logout end the sessions.
    let l = &c["logout"];
    assert_eq!(l["logged_out"]["title"], "Logged out", "{ctx}");
    assert_eq!(l["after_app_logout"]["status"], 401, "{ctx}");
    assert_eq!(l["after_web_logout"]["status"], 401, "{ctx}");

    // bob has no trusted device: the prod app is a page that says why and how to fix it; the
    // dev app opens, and its identity names no device.
    let b = &c["bob"];
    assert_eq!(b["denied"]["status"], 403, "{ctx}");
    assert_eq!(
        b["denied"]["title"], "A trusted device is required",
        "{ctx}"
    );
    assert!(
        str_of(&b["denied"], "why")
            .contains("access denied to app \"vault\": a trusted device is required"),
        "{ctx}"
    );
    let todo = str_of(&b["denied"], "todo");
    assert!(todo.contains("dtsh device enroll"), "{todo}");
    assert!(
        todo.contains("Authenticate this device with dtsh"),
        "{todo}"
    );
    assert!(claims_of(&b["wiki"]).get("device_id").is_none());

    // Not logged in: the launch asks for a login, then goes on to where the browser was going.
    let f = &c["login_first"];
    assert!(str_of(f, "asked").contains("Log in to devtrust"), "{ctx}");
    assert_eq!(f["echo"]["path"], "/start?y=2", "{ctx}");

    // One connection carries one session: a second web session's cookie on a connection
    // that already carried another is refused (two of bob's logins: two certificates).
    let (first, second) = (str_of(b, "cookie"), str_of(f, "cookie"));
    assert!(
        !first.is_empty() && !second.is_empty() && first != second,
        "{ctx}"
    );
    let out = Command::new("python3")
        .args([
            "-c",
            ONE_CONNECTION,
            &ap_port.to_string(),
            &wiki,
            first,
            second,
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let mut lines = printed.lines();
    assert_eq!(
        lines.next(),
        Some("200"),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines.next(), Some("400"), "{printed}");
    assert!(
        printed.contains("this connection already carries another user's session"),
        "{printed}"
    );

    // Audit: the sessions with the device, and every refusal with its reason.
    wait_until("app events", || {
        srv.events(&["--type=app.session.start", "--user=alice"])
            .iter()
            .any(|e| e["resource_name"] == "vault" && !e["device"].is_null())
    });
    let denied = srv.events(&["--type=access.denied"]);
    for needle in [
        "app launch refused: this browser did not start this launch",
        "app launch refused: the launch code is unknown, expired or already used",
        "app session refused: the app session is unknown",
        "app session refused: the app session cookie is malformed",
        "app session refused: the app session is for app \"wiki\"",
        "role \"app-prod\" requires a trusted device",
        "this connection already carries another user's session",
    ] {
        assert!(
            denied.iter().any(|e| str_of(e, "message").contains(needle)),
            "{needle}: {denied:#?}"
        );
    }
    assert!(
        denied.iter().any(
            |e| str_of(e, "message").contains("requires a trusted device") && e["user"] == "bob"
        ),
        "the refusal names bob"
    );
}
