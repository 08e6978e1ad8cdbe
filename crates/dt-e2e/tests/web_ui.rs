//! The web UI in a real browser against the real server: Debian's `chromium` driven by
//! `playwright-core` (tests/web/web_ui.mjs), users and devices prepared with the real
//! `dtctl` and `dtsh`, device web authentication run by the real `dtsh device web-auth`.
//!
//! Needs `chromium` and `npm ci` in crates/dt-e2e/tests/web (scripts/install-deps.sh does
//! both); missing, the test fails and says so. `DEVTRUST_UPDATE_SCREENSHOTS=1` writes the
//! screenshots to docs/screenshots (otherwise to a temp dir).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::web::*;
use common::*;
use serde_json::{Value, json};

const PASSWORD: &str = "correct-horse-battery";

fn set_cluster(s: &Server) {
    let f = s.write_file(
        "cap.yaml",
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec: {device_trust: {mode: optional, allow_software_credentials: true}}\n",
    );
    s.dtctl(&["create", "-f", &f, "--force"]).ok();
}

/// dtsh with this test's software device.
fn dtsh_dev(s: &Server, home: &Home, device_home: &Path, args: &[&str]) -> Out {
    let _ = s;
    Run::new(&DTSH, args.iter().copied())
        .env("DTSH_HOME", &home.path)
        .env("DTSH_DEVICE_HOME", device_home)
        .env("DTSH_DEVICE_KEYSTORE", "software")
        .env("DTSH_DEVICE_SERIAL", "WEB-LAPTOP-1")
        .run()
}

/// alice (device owner; her role requires a trusted device), enrolled with `device_home`.
fn alice(s: &Server, device_home: &Path) -> Home {
    set_cluster(s);
    let home = s.new_user(
        "alice",
        "access,editor,require-trusted-device",
        "root",
        PASSWORD,
    );
    let out = dtsh_dev(
        s,
        &home,
        device_home,
        &["device", "enroll", "--current-device"],
    );
    assert!(out.ok().contains("enrolled"), "{out}");
    home
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

fn wait_until_listed(s: &Server, home: &Home, node: &str) {
    for _ in 0..200 {
        if s.dtsh(home, &["ls"], "").stdout.contains(node) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("node {node} never came online");
}

#[test]
fn device_web_authentication_in_a_real_browser() {
    require_browser();
    let device = tempfile::tempdir().unwrap();
    let s = Server::start();
    let alice_home = alice(&s, device.path());
    let bob = s.new_user("bob", "access", "", PASSWORD);
    let _carol = s.new_user("carol", "access,require-trusted-device", "root", PASSWORD);
    // An SSH node for the browser terminal.
    let token = s.dtctl(&["tokens", "add", "--type=node", "--format=text"]);
    let token = token.ok().trim().to_string();
    let node_dir = tempfile::tempdir().unwrap();
    let _node = NodeProc::start(
        &s.addr,
        &token,
        &s.pin,
        "node1",
        &node_dir.path().join("node1"),
        &[],
    );
    wait_until_listed(&s, &alice_home, "node1");
    // A second cluster whose device web tokens live 1 s.
    let short = Server::opts()
        .env("DEVTRUST_WEB_DEVICE_TOKEN_TTL", "1s")
        .start();
    let short_alice = alice(&short, device.path());

    let shots = screenshots(s.scratch());
    let config = json!({
        "url": format!("https://{}", s.addr),
        "dtsh": DTSH.as_str(),
        "device_env": {
            "DTSH_DEVICE_HOME": device.path(),
            "DTSH_DEVICE_KEYSTORE": "software",
            "DTSH_DEVICE_SERIAL": "WEB-LAPTOP-1",
        },
        "users": {
            "alice": {"password": PASSWORD, "home": alice_home.path},
            "bob": {"password": PASSWORD, "home": bob.path},
            "carol": {"password": PASSWORD},
        },
        "expired": {
            "url": format!("https://{}", short.addr),
            "password": PASSWORD,
            "home": short_alice.path,
        },
        "screenshots": shots,
        "node": "node1",
    });
    let (c, ctx) = run_browser("web_ui.mjs", &config);

    // Login, hand-off, confirmation: yellow before (her role requires a trusted device),
    // green after, with a console free of errors.
    let t = &c["trusted_flow"];
    assert_eq!(t["shield_before"], "required", "{t:#}");
    let href = str_of(t, "href");
    assert!(
        href.starts_with(&format!(
            "devtrust://alice@{}/authenticate_web_device?id=",
            s.addr
        )),
        "{href}"
    );
    assert_eq!(t["dtsh_code"], 0, "{t:#}");
    let last = str_of(t, "dtsh_stdout")
        .trim()
        .lines()
        .last()
        .unwrap_or_default();
    assert!(
        last.starts_with(&format!("https://{}/web/device/confirm?id=", s.addr)),
        "--no-browser prints the confirmation URL last: {t:#}"
    );
    assert_eq!(t["confirm"]["result"], "confirmed", "{t:#}");
    assert_eq!(t["shield_after"], "trusted", "{t:#}");
    assert_eq!(t["handoff_hidden_after"], true, "{t:#}");
    let menu = str_of(t, "menu_text");
    assert!(
        menu.contains("Session authorized with Device Trust"),
        "{menu}"
    );
    assert!(menu.contains("WEB-LAPTOP-1"), "{menu}");
    assert_eq!(t["console_errors"], json!([]), "{t:#}");

    let r = &c["replayed_token"];
    assert_ne!(r["code"], 0, "{r:#}");
    assert!(
        str_of(r, "stderr").contains("invalid, used or expired device web token"),
        "{r:#}"
    );

    let x = &c["csrf_refused"];
    assert_eq!(x["status"], 403, "{x:#}");
    assert!(str_of(x, "error").contains("CSRF"), "{x:#}");
    assert_eq!(x["still_logged_in"], true, "{x:#}");
    assert_eq!(x["websocket"], "refused", "{x:#}");
    assert_eq!(c["logout"]["me_status"], 401, "{ctx}");

    let m = &c["ip_mismatch"];
    assert_eq!(m["dtsh_code"], 0, "{m:#}");
    assert_eq!(m["confirm"]["result"], "refused", "{m:#}");
    assert!(
        str_of(&m["confirm"], "status")
            .contains("IP mismatch: browser 127.0.0.1, device 127.0.0.2"),
        "{m:#}"
    );
    assert_eq!(m["shield_after"], "required", "{m:#}");

    let o = &c["other_users_token"];
    assert_ne!(o["local_code"], 0, "{o:#}");
    assert!(
        str_of(o, "local_stderr")
            .contains("this link is for user \"alice\", but dtsh is logged in as \"bob\""),
        "{o:#}"
    );
    assert_ne!(o["server_code"], 0, "{o:#}");
    assert!(
        str_of(o, "server_stderr")
            .contains("device web token of user \"alice\" presented by user \"bob\""),
        "{o:#}"
    );
    assert_eq!(o["shield_after"], "required", "{o:#}");

    let q = &c["required"];
    assert_eq!(q["shield"], "required", "{q:#}");
    assert_eq!(q["required_panel"], true, "{q:#}");
    assert_eq!(q["handoff_panel"], false, "carol owns no device: {q:#}");
    assert_eq!(q["console_errors"], json!([]), "{q:#}");

    // The browser terminal: refused with dtsh's words until the session is device-trusted.
    let term = &c["terminal"];
    assert!(
        term["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap_or_default().contains("node1")),
        "{term:#}"
    );
    let refused = str_of(term, "refused");
    assert!(
        refused.contains("ERROR: access denied to root connecting to node1"),
        "{term:#}"
    );
    assert!(refused.contains("trusted device"), "{term:#}");
    assert_eq!(term["confirm"]["result"], "confirmed", "{term:#}");
    assert!(str_of(term, "output").contains("web-term-42"), "{term:#}");
    assert_eq!(term["console_errors"], json!([]), "{term:#}");
    // Locking the device (from the inventory page) ends the live terminal with the lock's
    // message, and the device-trusted web session (its next request is refused).
    let tail = str_of(&term["lock"], "terminal_tail");
    assert!(
        tail.contains("ERROR: lock targeting Device:")
            && tail.contains("[connection to node1 closed"),
        "{term:#}"
    );
    assert_eq!(term["lock"]["me"]["status"], 401, "{term:#}");

    // The device inventory and the audit log, through the same calls as dtctl.
    let a = &c["admin_pages"];
    let nav = str_of(a, "nav");
    assert!(
        nav.contains("Devices") && nav.contains("Audit log"),
        "{a:#}"
    );
    assert!(
        a["listed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap_or_default().contains("WEB-LAPTOP-1")),
        "{a:#}"
    );
    assert_eq!(
        str_of(a, "added"),
        "Device WEB-NEW-1/linux added to the inventory",
        "{a:#}"
    );
    assert!(
        str_of(a, "token").contains("dtsh device enroll --token="),
        "{a:#}"
    );
    assert!(
        str_of(a, "locked").starts_with("Created a lock with name"),
        "{a:#}"
    );
    assert_eq!(
        str_of(a, "removed"),
        "Device \"WEB-NEW-1\" removed",
        "{a:#}"
    );
    let rows: Vec<&str> = a["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(
        rows.iter()
            .all(|r| r.contains("device.authenticate.confirm")),
        "{a:#}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("IP mismatch: browser 127.0.0.1, device 127.0.0.2")),
        "{a:#}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains("WEB-LAPTOP-1") && r.contains("success")),
        "{a:#}"
    );
    assert_eq!(a["console_errors"], json!([]), "{a:#}");
    let ls = s.dtctl(&["devices", "ls", "--format=json"]);
    assert!(
        !ls.ok().contains("WEB-NEW-1"),
        "removed from the web UI: {ls}"
    );

    let e = &c["expired_token"];
    assert_ne!(e["code"], 0, "{e:#}");
    assert!(
        str_of(e, "stderr").contains("invalid, used or expired device web token"),
        "{e:#}"
    );

    // The audit log tells the story, failures with readable reasons.
    let created = s.events(&["--type=device.webtoken.create"]);
    assert_eq!(created.len(), 5, "one per web login of alice: {created:#?}");
    assert!(created.iter().all(|e| e["user"] == "alice"), "{created:#?}");
    let authn = s.events(&["--type=device.authenticate"]);
    let web_ok = authn.iter().filter(|e| {
        e["success"] == true && str_of(e, "message").starts_with("device web authentication")
    });
    assert_eq!(
        web_ok.count(),
        3,
        "the trusted flow, the IP-mismatch one and the terminal one: {authn:#?}"
    );
    for needle in [
        "invalid, used or expired device web token",
        "device web token of user \"alice\" presented by user \"bob\"",
    ] {
        assert!(
            authn
                .iter()
                .any(|e| e["success"] == false && str_of(e, "message").contains(needle)),
            "no failed device.authenticate with {needle:?}: {authn:#?}"
        );
    }
    let confirms = s.events(&["--type=device.authenticate.confirm"]);
    assert!(
        confirms
            .iter()
            .any(|e| e["success"] == true && e["device"]["asset_tag"] == "WEB-LAPTOP-1"),
        "{confirms:#?}"
    );
    assert!(
        confirms.iter().any(|e| e["success"] == false
            && str_of(e, "message").contains("IP mismatch: browser 127.0.0.1, device 127.0.0.2")),
        "{confirms:#?}"
    );
    // Every refused state-changing call is audited too.
    let denied = s.events(&["--type=access.denied"]);
    for what in ["logout", "terminal"] {
        let needle = format!("web {what} refused: missing or wrong CSRF token");
        assert!(
            denied.iter().any(|e| str_of(e, "message") == needle),
            "no {needle:?} in {denied:#?}"
        );
    }
}

#[test]
fn install_url_handler_registers_dtsh_for_devtrust_links() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("mimeapps.list"),
        "[Default Applications]\ntext/html=firefox.desktop\n",
    )
    .unwrap();
    let out = Run::new(&DTSH, ["install-url-handler"])
        .env("XDG_DATA_HOME", &data)
        .env("XDG_CONFIG_HOME", &config)
        .run();
    out.ok();
    let entry =
        std::fs::read_to_string(data.join("applications/devtrust-url-handler.desktop")).unwrap();
    assert!(
        entry.contains("MimeType=x-scheme-handler/devtrust;"),
        "{entry}"
    );
    assert!(
        entry.contains(&format!(
            "Exec=\"{}\" device web-auth %u",
            Path::new(&DTSH).canonicalize().unwrap().display()
        )) || entry.contains(&format!("Exec=\"{DTSH}\" device web-auth %u")),
        "{entry}"
    );
    let list = std::fs::read_to_string(config.join("mimeapps.list")).unwrap();
    assert!(list.contains("text/html=firefox.desktop"), "{list}");
    assert!(
        list.contains("x-scheme-handler/devtrust=devtrust-url-handler.desktop"),
        "{list}"
    );
}
