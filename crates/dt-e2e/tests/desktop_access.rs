//! Desktop access through `devtrust desktop start` with real parts: Xvfb and xterm from
//! Debian's packages under the access point, the auth service's web UI in Debian's chromium
//! (playwright-core, tests/web/desktop.mjs), users and devices prepared with the real `dtctl`
//! and `dtsh`. Covers: open a desktop, type into xterm through the page (the file it writes
//! is checked here) and a non-blank canvas; the cluster-wide `required` mode not applying to
//! desktops; a role that requires a trusted device refusing an untrusted session with the
//! seeds' words in the page and allowing it after device web authentication; a lock ending a
//! live desktop with the reason in the page; two tabs (two desktops); a session command
//! that exits; an X server that dies; malformed and oversized input; audit; and no Xvfb left
//! behind (`ps`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::trust::*;
use common::web::*;
use common::*;
use serde_json::{Value, json};

const PW: &str = "correct horse battery";

/// The desktop login: `nobody` when the access point runs as root, else our own user.
fn desktop_login() -> String {
    if dt_desktop::x11::effective_uid() == 0 {
        "nobody".into()
    } else {
        std::env::var("USER").expect("USER")
    }
}

/// A directory every user may use (the desktop login writes here; Xvfb run as that login
/// reads its cookie file below the access point's TMPDIR).
fn shared_dir(mode: u32) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("dt-desktop-test")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

/// `devtrust desktop start` with its sessions' files below `tmpdir`.
fn desktop_access_point(args: &[String], tmpdir: &Path) -> AccessPoint {
    AccessPoint::start_with_env("desktop", args, &[("TMPDIR", tmpdir)])
}

/// Xvfb processes whose command line names `dir` (this test's sessions).
fn xvfb_under(dir: &Path) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid=,stat=,args="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Xvfb") && l.contains(dir.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

#[test]
fn desktops_in_a_real_browser_with_role_device_trust_locks_and_bad_input() {
    require_browser();
    for bin in ["Xvfb", "xterm"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{bin} is missing: run scripts/install-deps.sh"
        );
    }
    let login = desktop_login();
    let srv = Server::start();
    // The cluster requires a trusted device: that gates SSH, databases and Kubernetes, and
    // not desktops (bob, without a device, opens one below).
    set_mode_software(&srv, "required");
    let roles = srv.write_file(
        "roles.yaml",
        &format!(
            "kind: role\nversion: v7\nmetadata: {{name: desk}}\nspec: {{allow: {{desktop_labels: {{env: lab}}, desktop_logins: [{login}]}}}}\n---\nkind: role\nversion: v7\nmetadata: {{name: desk-trusted}}\nspec: {{options: {{device_trust_mode: required}}, allow: {{desktop_labels: {{env: lab}}, desktop_logins: [{login}]}}}}\n"
        ),
    );
    srv.dtctl(&["create", "-f", &roles]).ok();
    let bob = srv.new_user("bob", "desk", &login, PW);
    let alice = srv.new_user("alice", "editor,desk-trusted", &login, PW);
    let serial = "DESK-LAPTOP-1";
    let device = enroll_software_device(&alice, "alice", PW, serial);

    let tmp = shared_dir(0o755);
    let outs = shared_dir(0o777);
    let token = srv
        .dtctl(&["tokens", "add", "--type=desktop", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let ap = desktop_access_point(
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=lab".into(),
            "--labels=env=lab".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--data-dir={}", srv.scratch().join("desktop-ap").display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
            // `nobody`'s shell is nologin: the terminal runs sh.
            "--session-command=SHELL=/bin/sh exec xterm -geometry 100x30+0+0".into(),
        ],
        tmp.path(),
    );

    let shots = if std::env::var_os("DEVTRUST_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
    } else {
        srv.scratch().join("screenshots")
    };
    let out = outs.path().join("typed");
    let out2 = outs.path().join("typed-again");
    let config = json!({
        "url": format!("https://{}", srv.addr),
        "desktop": "lab",
        "login": login,
        "out": out,
        "out2": out2,
        "tmpdir": tmp.path(),
        "screenshots": shots,
        "dtsh": DTSH.as_str(),
        "dtctl": {
            "bin": DTCTL.as_str(),
            "args": ["--data-dir", srv.data_dir],
            "env": {"HOME": srv.scratch()},
        },
        "device_env": {
            "DTSH_DEVICE_HOME": device.path(),
            "DTSH_DEVICE_KEYSTORE": "software",
            "DTSH_DEVICE_SERIAL": serial,
        },
        "users": {
            "alice": {"password": PW, "home": alice.path},
            "bob": {"password": PW, "home": bob.path},
        },
    });
    let (c, ctx) = run_browser("desktop.mjs", &config);

    // 1. Listed, opened, typed into: the command ran on the server and the canvas shows it.
    let o = &c.get("open_and_type").unwrap_or_else(|| panic!("{ctx}"));
    assert!(s(o, "listed").contains("lab"), "{o:#}");
    assert!(s(o, "listed").contains("env=lab"), "{o:#}");
    assert_eq!(o["state"], "open", "{o:#}");
    assert_eq!(o["drawn"], true, "{o:#}");
    assert_eq!(o["ran"], true, "{o:#}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi\n");
    assert!(o["colours"].as_u64().unwrap() > 1, "not blank: {o:#}");
    assert!(o["frames"].as_u64().unwrap() >= 2, "{o:#}");
    assert_eq!(o["console_errors"], json!([]), "{o:#}");

    // 2. Two tabs: two desktops; `exit` ends the second cleanly and its X server goes.
    let t = &c.get("second_tab").unwrap_or_else(|| panic!("{ctx}"));
    assert_eq!(t["state"], "open", "{t:#}");
    assert_eq!(
        t["during"].as_u64().unwrap(),
        t["before"].as_u64().unwrap() + 1,
        "{t:#}"
    );
    assert!(
        s(t, "ended").contains("the session command exited"),
        "{t:#}"
    );
    assert_eq!(t["after"], t["before"], "{t:#}");

    // 3. Bad input ends only its own session, with what was wrong.
    let b = &c.get("bad_input").unwrap_or_else(|| panic!("{ctx}"));
    assert_eq!(b["unknown"]["hello"], true, "{b:#}");
    assert_eq!(
        s(&b["unknown"], "end"),
        "malformed input: unknown message type 0x7f",
        "{b:#}"
    );
    assert_eq!(b["unknown"]["reason"], 3, "{b:#}");
    assert!(
        s(&b["oversized"], "end").starts_with("malformed input"),
        "{b:#}"
    );
    assert_eq!(
        s(&b["truncated"], "end"),
        "malformed input: truncated key message",
        "{b:#}"
    );
    assert_eq!(b["still_serving"], true, "{b:#}");
    assert_eq!(std::fs::read_to_string(&out2).unwrap(), "again\n");

    // 4. An X server that dies: the page says so.
    let x = &c.get("x_server_dies").unwrap_or_else(|| panic!("{ctx}"));
    assert_eq!(x["state"], "open", "{x:#}");
    assert_eq!(x["killed"], 1, "{x:#}");
    assert!(s(x, "ended").contains("the X server"), "{x:#}");
    assert_eq!(x["reason"], "error", "{x:#}");

    // 5. A lock ends the live desktop, with the lock's words in the page.
    let l = &c.get("lock").unwrap_or_else(|| panic!("{ctx}"));
    assert_eq!(l["code"], 0, "{l:#}");
    assert_eq!(
        s(l, "ended"),
        "lock targeting User:\"bob\" is in force: desktop maintenance",
        "{l:#}"
    );
    assert_eq!(l["reason"], "terminated", "{l:#}");
    eprintln!(
        "lock to page: {} ms after dtctl returned",
        l["after_lock_ms"]
    );

    // 6. Role-based device trust, both ways.
    let d = &c.get("trusted_device").unwrap_or_else(|| panic!("{ctx}"));
    assert_eq!(d["refusedState"], "ended", "{d:#}");
    let refused = s(d, "refused");
    assert!(
        refused.starts_with(&format!(
            "access denied to {login} on desktop \"lab\": a trusted device is required"
        )),
        "{d:#}"
    );
    assert!(refused.contains("Enroll this device"), "{d:#}");
    assert_eq!(d["dtsh_code"], 0, "{d:#}");
    assert_eq!(d["confirm"], "confirmed", "{d:#}");
    assert_eq!(d["allowedState"], "open", "{d:#}");
    assert_eq!(d["console_errors"], json!([]), "{d:#}");

    // Every X server is gone once the browser is (the last sessions end as their
    // WebSockets close).
    common::db::wait_until("no Xvfb left", || xvfb_under(tmp.path()).is_empty());
    let leftovers = std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(leftovers, 0, "session directories are removed");

    // Audit: starts and ends with the device, the refusal, the lock.
    let events = srv.events(&[]);
    let of = |t: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == t).collect() };
    let starts = of("desktop.session.start");
    assert!(starts.len() >= 5, "{starts:#?}");
    assert!(
        starts
            .iter()
            .any(|e| e["user"] == "alice" && e["device"]["asset_tag"] == serial),
        "{starts:#?}"
    );
    assert!(starts.iter().all(|e| e["login"] == login.as_str()));
    let ends = of("desktop.session.end");
    assert!(
        ends.iter().any(|e| e["user"] == "bob"
            && e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("lock targeting User:\"bob\"")
            && e["lock"].is_string()),
        "{ends:#?}"
    );
    let denied = of("access.denied");
    assert!(
        denied.iter().any(|e| e["user"] == "alice"
            && e["resource_kind"] == "desktop"
            && e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("role \"desk-trusted\" requires a trusted device")),
        "{denied:#?}"
    );
    drop(ap);
}

/// One connection to the access point as the user logged in at `home`: sends `frames`
/// (raw, already framed) and returns the messages received until the connection closes.
async fn exchange(
    home: &Home,
    addr: &str,
    frames: Vec<Vec<u8>>,
) -> Vec<dt_desktop::wire::ServerMsg> {
    use dt_desktop::wire::{MAX_SERVER_MESSAGE, ServerMsg, read_frame};
    use tokio::io::AsyncWriteExt;
    let store = dt_client::ProfileStore {
        home: home.path.clone(),
    };
    let f = store.files(&store.current().unwrap().proxy);
    let cert = dt_ca::pem::parse_cert_pem(&std::fs::read_to_string(f.tls_cert()).unwrap()).unwrap();
    let key =
        dt_ca::ClientKey::from_pkcs8_pem(&std::fs::read_to_string(f.key_pem()).unwrap()).unwrap();
    let host_ca =
        dt_ca::pem::parse_cert_pem(&std::fs::read_to_string(f.host_ca()).unwrap()).unwrap();
    let connector = dt_client::access_point::connector(
        host_ca,
        dt_types::ServiceKind::Desktop,
        "lab",
        cert,
        key.pkcs8_der().to_vec(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(dt_client::access_point::server_name("lab"), tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    for f in frames {
        if wr.write_all(&f).await.is_err() {
            break;
        }
    }
    // Done sending: the access point sees the client leave after these.
    let _ = wr.shutdown().await;
    let mut got = Vec::new();
    let deadline = std::time::Duration::from_secs(20);
    while let Ok(Ok(Some(b))) =
        tokio::time::timeout(deadline, read_frame(&mut rd, MAX_SERVER_MESSAGE)).await
    {
        let m = ServerMsg::decode(&b).unwrap();
        let end = matches!(m, ServerMsg::End { .. });
        // Keep tiles out of the way: only their count matters here.
        if !matches!(m, ServerMsg::Tile { .. }) {
            got.push(m);
        }
        if end {
            break;
        }
    }
    got
}

fn framed(msg: &dt_desktop::wire::ClientMsg) -> Vec<u8> {
    let b = msg.encode();
    let mut out = dt_desktop::wire::frame_header(b.len()).to_vec();
    out.extend_from_slice(&b);
    out
}

fn open(desktop: &str, login: &str) -> Vec<u8> {
    framed(&dt_desktop::wire::ClientMsg::Open {
        desktop: desktop.into(),
        login: login.into(),
        width: 320,
        height: 320,
    })
}

#[track_caller]
fn end_of(msgs: &[dt_desktop::wire::ServerMsg]) -> (u8, String) {
    match msgs.last() {
        Some(dt_desktop::wire::ServerMsg::End { reason, message }) => {
            (*reason as u8, message.clone())
        }
        other => panic!("no End: {other:?} in {msgs:?}"),
    }
}

/// The access point straight over mTLS (what the auth service sends, and what it never
/// would): every Open is judged, bad frames end only their own connection, and it keeps
/// serving.
#[test]
fn the_access_point_judges_every_open_and_survives_bad_frames() {
    use dt_desktop::wire::ClientMsg;
    let login = desktop_login();
    let srv = Server::start();
    let roles = srv.write_file(
        "roles.yaml",
        &format!(
            "kind: role\nversion: v7\nmetadata: {{name: desk}}\nspec: {{allow: {{desktop_labels: {{env: lab}}, desktop_logins: [{login}, devtrust-no-such-user]}}}}\n"
        ),
    );
    srv.dtctl(&["create", "-f", &roles]).ok();
    let bob = srv.new_user("bob", "desk", &login, PW);
    let tmp = shared_dir(0o755);
    let token = srv
        .dtctl(&["tokens", "add", "--type=desktop", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let ap = desktop_access_point(
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=lab".into(),
            "--labels=env=lab".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--data-dir={}", srv.scratch().join("desktop-ap").display()),
            format!("--ca-pin={}", srv.pin),
            "--session-command=exec sleep 600".into(),
        ],
        tmp.path(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let talk = |frames: Vec<Vec<u8>>| rt.block_on(exchange(&bob, &ap.addr, frames));

    // Until the access point has the cluster's view, and then: allowed.
    common::db::wait_until("the access point serves", || {
        matches!(
            talk(vec![open("lab", &login)]).first(),
            Some(dt_desktop::wire::ServerMsg::Hello { .. })
        )
    });

    // A second Open ends the session as malformed; its X server goes.
    let m = talk(vec![open("lab", &login), open("lab", &login)]);
    assert!(
        matches!(
            m[0],
            dt_desktop::wire::ServerMsg::Hello {
                width: 320,
                height: 320,
                clipboard: false
            }
        ),
        "{m:?}"
    );
    assert_eq!(end_of(&m), (3, "malformed input: a second open".into()));

    // Refusals, each with what to do.
    let (r, why) = end_of(&talk(vec![open("lab", "root")]));
    assert_eq!(r, 1, "{why}");
    assert!(why.contains("root"), "{why}");
    let (r, why) = end_of(&talk(vec![open("lab", "devtrust-no-such-user")]));
    assert_eq!(r, 1);
    assert_eq!(
        why,
        "access denied to devtrust-no-such-user on desktop \"lab\": the login \"devtrust-no-such-user\" does not exist on this desktop host"
    );
    let (r, why) = end_of(&talk(vec![open("other", &login)]));
    assert_eq!(r, 1);
    assert_eq!(
        why,
        "desktop \"other\" is not served here (this access point serves \"lab\")"
    );

    // Bad first frames.
    let key = framed(&ClientMsg::Key {
        keysym: 0x61,
        down: true,
    });
    assert_eq!(
        end_of(&talk(vec![key])),
        (3, "malformed input: expected open, got key".into())
    );
    assert_eq!(
        end_of(&talk(vec![vec![0, 0, 0, 2, 0x7f, 0]])),
        (3, "malformed input: unknown message type 0x7f".into())
    );
    let (r, why) = end_of(&talk(vec![vec![0x40, 0, 0, 0, 1]]));
    assert_eq!(r, 3);
    assert!(
        why.starts_with("malformed input: message of 1073741824 bytes is larger than allowed"),
        "{why}"
    );

    // Clipboard text is refused (not built yet) and audited with its size, never its text;
    // the session goes on.
    let m = talk(vec![
        open("lab", &login),
        framed(&ClientMsg::Clipboard("secret clipboard text".into())),
        framed(&ClientMsg::Refresh),
    ]);
    assert_eq!(end_of(&m), (0, "the client left".into()), "{m:?}");

    // Still serving after all that.
    let m = talk(vec![open("lab", &login)]);
    assert!(
        matches!(m.first(), Some(dt_desktop::wire::ServerMsg::Hello { .. })),
        "{m:?}"
    );
    common::db::wait_until("no Xvfb left", || xvfb_under(tmp.path()).is_empty());

    common::db::wait_until("the clipboard event", || {
        srv.events(&[])
            .iter()
            .any(|e| e["event"] == "desktop.clipboard")
    });
    let events = srv.events(&[]);
    let clip: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "desktop.clipboard")
        .collect();
    assert!(
        clip[0]["message"]
            .as_str()
            .unwrap()
            .contains("clipboard text of 21 bytes from the browser refused"),
        "{clip:#?}"
    );
    assert!(
        !serde_json::to_string(&events)
            .unwrap()
            .contains("secret clipboard text")
    );
}
