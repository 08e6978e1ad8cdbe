//! App access through `devtrust app start` with real parts: a small HTTP app started by the
//! test (Python's http.server, echoing the headers it received), the real `dtsh proxy app`
//! and `curl`. Role-based device trust both ways, the cluster-wide mode not applying to
//! apps, the signed identity checked against the auth service's JWKS, a forged identity
//! header dropped, locks, an app that is down, a client without a certificate, and audit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::apps::*;
use common::db::*;
use common::trust::*;
use common::*;
use dt_testkit::free_port;

const PW: &str = "correct horse battery";

/// A WebSocket client over the proxy's local port: it sends one text frame, prints the
/// echo, then waits for the connection to close and prints how it ended.
const WS_CLIENT: &str = r#"
import base64, os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /ws HTTP/1.1\r\nHost: wiki\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
resp = b""
while b"\r\n\r\n" not in resp:
    resp += s.recv(1)
print(resp.split(b"\r\n")[0].decode(), flush=True)
mask = os.urandom(4)
msg = b"hello ws"
s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
frame = s.recv(2 + len(msg))
print("echo:", frame[2:].decode(), flush=True)
start = time.time()
while s.recv(1024):
    pass
print("closed", flush=True)
"#;

/// `dtsh proxy app NAME` for the profile at `home`; its local port.
fn proxy(home: &Home, name: &str) -> (Proc, u16) {
    let mut child = Command::new(DTSH)
        .args(["proxy", "app", name, "--port=0"])
        .env("DTSH_HOME", &home.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    std::thread::spawn(move || for _ in lines {});
    let port = first
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    (Proc(child), port)
}

#[test]
fn apps_through_dtsh_proxy_app_with_role_device_trust_jwt_locks_and_audit() {
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
    let config = srv.write_file(
        "apps.yaml",
        &format!(
            "apps:
  - {{name: wiki, uri: 'http://127.0.0.1:{app_port}', public_addr: wiki.localhost, labels: {{env: dev}}}}
  - {{name: vault, uri: 'http://127.0.0.1:{app_port}/vault', labels: {{env: prod}}}}
  - {{name: down, uri: 'http://127.0.0.1:{}', labels: {{env: dev}}}}
",
            free_port()
        ),
    );
    let token = srv
        .dtctl(&["tokens", "add", "--type=app", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let ap = AccessPoint::start(
        "app",
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=apps1".into(),
            format!("--config={config}"),
            "--listen=127.0.0.1:0".into(),
            format!("--data-dir={}", srv.scratch().join("app-ap").display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
        ],
    );
    let roles = srv.write_file(
        "roles.yaml",
        "kind: role\nversion: v7\nmetadata: {name: app-dev}\nspec: {allow: {app_labels: {env: dev}}}\n---\nkind: role\nversion: v7\nmetadata: {name: app-prod}\nspec: {options: {device_trust_mode: required}, allow: {app_labels: {env: prod}}}\n",
    );
    srv.dtctl(&["create", "-f", &roles]).ok();
    let alice = srv.new_user("alice", "editor,app-dev,app-prod", "", PW);
    let bob = srv.new_user("bob", "app-dev,app-prod", "", PW);
    let _device = enroll_software_device(&alice, "alice", PW, "APP-TRUST-1");

    wait_until("the apps are listed", || {
        let ls = srv.dtsh(&bob, &["apps", "ls"], "");
        ls.success() && ls.stdout.contains("wiki") && ls.stdout.contains("vault")
    });
    let ls = srv.dtsh(&bob, &["apps", "ls", "--format=json"], "").json();
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "wiki" && a["public_addr"] == "wiki.localhost"),
        "{ls}"
    );
    srv.dtsh(&alice, &["app", "login", "wiki"], "").ok();
    srv.dtsh(&alice, &["app", "login", "nope"], "")
        .fails_with("app \"nope\" is not online, or your roles do not let you reach it");

    // The keys apps verify the identity with.
    let keys = jwks(&srv, &alice);
    let claims_of = |body: &str| {
        let echoed = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        verified_claims(&keys, &echoed)
    };

    // alice, trusted device: both apps; the app sees who and from which device. A client's own
    // identity header never reaches the app.
    let (_pa, alice_wiki) = proxy(&alice, "wiki");
    // The roles were made after the access point started: its view follows the cluster.
    wait_until("the access point knows the roles", || {
        curl(&[&format!("http://127.0.0.1:{alice_wiki}/")]).0 == 200
    });
    let (code, body) = curl(&[
        "-H",
        "devtrust-jwt-assertion: forged",
        &format!("http://127.0.0.1:{alice_wiki}/hello?x=1"),
    ]);
    assert_eq!(code, 200, "{body}");
    let claims = claims_of(&body);
    assert_eq!(claims["sub"], "alice");
    assert!(
        claims["device_id"].as_str().is_some_and(|d| !d.is_empty()),
        "{claims}"
    );
    assert!(
        claims["roles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "app-dev")
    );
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["path"], "/hello?x=1");
    let (_pv, alice_vault) = proxy(&alice, "vault");
    let (code, body) = curl(&[&format!("http://127.0.0.1:{alice_vault}/secret")]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["path"],
        "/vault/secret",
        "the app's path prefix is kept"
    );

    // bob, no device: the dev app yes (its token names no device), the prod app no, with
    // what to do.
    let (_pb, bob_wiki) = proxy(&bob, "wiki");
    let (code, body) = curl(&[&format!("http://127.0.0.1:{bob_wiki}/")]);
    assert_eq!(code, 200, "{body}");
    assert!(claims_of(&body).get("device_id").is_none());
    let (_pbv, bob_vault) = proxy(&bob, "vault");
    let (code, body) = curl(&[&format!("http://127.0.0.1:{bob_vault}/")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("a trusted device is required"), "{body}");
    assert!(body.contains("dtsh device enroll"), "{body}");

    // The cluster-wide mode alone does not apply to apps.
    set_mode_software(&srv, "required");
    // The watch delivers changes in order: once a lock made after the mode change is in force
    // at the access point, so is the mode.
    let (_pbd, bob_down) = proxy(&bob, "down");
    let lock = srv
        .dtctl(&["lock", "--app=down", "--message=ordering barrier"])
        .ok()
        .to_string();
    let barrier = lock.split('"').nth(1).unwrap().to_string();
    wait_until("the barrier lock reaches the access point", || {
        let (code, body) = curl(&[&format!("http://127.0.0.1:{bob_down}/")]);
        code == 403 && body.contains("ordering barrier")
    });
    let (code, body) = curl(&[&format!("http://127.0.0.1:{bob_wiki}/")]);
    assert_eq!(
        code, 200,
        "cluster mode required must not block an app: {body}"
    );
    set_mode_software(&srv, "optional");
    srv.dtctl(&["rm", &format!("lock/{barrier}")]).ok();
    wait_until("the barrier lock is lifted", || {
        curl(&[&format!("http://127.0.0.1:{bob_down}/")]).0 == 502
    });

    // Without a certificate: told what to do.
    let ap_port = ap.addr.rsplit_once(':').unwrap().1;
    let (code, body) = curl(&[
        "-k",
        "--resolve",
        &format!("wiki.localhost:{ap_port}:127.0.0.1"),
        &format!("https://wiki.localhost:{ap_port}/"),
    ]);
    assert_eq!(code, 401, "{body}");
    // No app named by SNI or Host, among several: told which exist.
    let (code, body) = curl(&["-k", &format!("https://{}/", ap.addr)]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("it serves wiki, vault, down"), "{body}");
    assert!(body.contains("dtsh proxy app"), "{body}");

    // An app that is down.
    let (_pd, alice_down) = proxy(&alice, "down");
    let (code, body) = curl(&[&format!("http://127.0.0.1:{alice_down}/")]);
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("app \"down\" at http://127.0.0.1:") && body.contains("is unreachable"),
        "{body}"
    );

    // A WebSocket passes through, and stays open until the lock below ends it.
    let ws_script = srv.write_file("ws.py", WS_CLIENT);
    let mut ws = Command::new("python3")
        .args([ws_script.as_str(), &alice_wiki.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ws_out = BufReader::new(ws.stdout.take().unwrap()).lines();
    assert_eq!(
        ws_out.next().unwrap().unwrap(),
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(ws_out.next().unwrap().unwrap(), "echo: hello ws");

    // A lock on the app: the open WebSocket closes, and the next request is refused with the
    // lock's message.
    srv.dtctl(&["lock", "--app=wiki", "--message=wiki migration"])
        .ok();
    assert_eq!(
        ws_out.next().unwrap().unwrap(),
        "closed",
        "the lock ends the live WebSocket"
    );
    let _ = ws.wait();
    wait_until("the lock reaches the access point", || {
        let (code, body) = curl(&[&format!("http://127.0.0.1:{alice_wiki}/")]);
        code == 403 && body.contains("wiki migration")
    });
    let (code, _) = curl(&[&format!("http://127.0.0.1:{alice_vault}/")]);
    assert_eq!(code, 200, "the lock names wiki only");

    // Audit: the session with the device, each request, the refusals.
    wait_until("app events", || {
        let starts = srv.events(&["--type=app.session.start", "--user=alice"]);
        let reqs = srv.events(&["--type=app.session.request", "--user=alice"]);
        starts
            .iter()
            .any(|e| e["resource_name"] == "wiki" && !e["device"].is_null())
            && reqs.iter().any(|e| {
                e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("GET /hello 200")
            })
    });
    let denied = srv.events(&["--type=access.denied"]);
    for needle in [
        "requires a trusted device",
        "wiki migration",
        "needs your devtrust certificate",
    ] {
        assert!(
            denied
                .iter()
                .any(|e| e["message"].as_str().unwrap_or("").contains(needle)),
            "{needle}: {denied:?}"
        );
    }
}

#[test]
fn https_apps_are_checked_against_their_ca_and_headers_are_rewritten() {
    let srv = Server::start();
    let tls = db_server_tls(&srv);
    let app_port = free_port();
    let script = srv.write_file("echo.py", ECHO_APP);
    let _app = Proc(
        Command::new("python3")
            .args([
                script.as_str(),
                &app_port.to_string(),
                tls.cert.to_str().unwrap(),
                tls.key.to_str().unwrap(),
            ])
            .spawn()
            .unwrap(),
    );
    let ca = tls.client_ca.display();
    let config = srv.write_file(
        "apps.yaml",
        &format!(
            "apps:
  - name: checked
    uri: 'https://localhost:{app_port}'
    ca_file: '{ca}'
    labels: {{env: dev}}
    rewrite: {{headers: ['X-Team: platform', 'X-Env: dev']}}
  - {{name: unknown-ca, uri: 'https://localhost:{app_port}', labels: {{env: dev}}}}
  - {{name: unchecked, uri: 'https://localhost:{app_port}', insecure_skip_verify: true, labels: {{env: dev}}}}
  - {{name: wrong-name, uri: 'https://127.0.0.2:{app_port}', ca_file: '{ca}', labels: {{env: dev}}}}
"
        ),
    );
    let token = srv
        .dtctl(&["tokens", "add", "--type=app", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let data_dir = srv.scratch().join("app-ap");
    let args = |config: &str, token: &str| {
        vec![
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=apps-tls".into(),
            format!("--config={config}"),
            "--listen=127.0.0.1:0".into(),
            format!("--data-dir={}", data_dir.display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
        ]
    };

    let roles = srv.write_file(
        "roles.yaml",
        "kind: role\nversion: v7\nmetadata: {name: app-dev}\nspec: {allow: {app_labels: {env: dev}}}\n",
    );
    srv.dtctl(&["create", "-f", &roles]).ok();
    let carol = srv.new_user("carol", "app-dev", "", PW);
    // A rewrite may not touch what the access point sets itself; a CA file must exist; a
    // browser certificate must match its key.
    for (bad, needle) in [
        (
            "apps:\n  - {name: a, uri: 'http://127.0.0.1:1', rewrite: {headers: ['devtrust-jwt-assertion: forged']}}\n",
            "header \"devtrust-jwt-assertion\" is set by the access point itself",
        ),
        (
            "apps:\n  - {name: a, uri: 'http://127.0.0.1:1', rewrite: {headers: ['no colon']}}\n",
            "is not `Name: value`",
        ),
        (
            "apps:\n  - {name: a, uri: 'https://127.0.0.1:1', ca_file: /nonexistent.pem}\n",
            "cannot read CA certificates from /nonexistent.pem",
        ),
        (
            "apps:\n  - {name: a, uri: 'https://127.0.0.1:1', ca_file: /x.pem, insecure_skip_verify: true}\n",
            "ca_file and insecure_skip_verify exclude each other",
        ),
        (
            "apps:\n  - {name: a, uri: 'http://127.0.0.1:1'}\n--browser-cert",
            "do not match",
        ),
    ] {
        let (bad, browser_cert) = match bad.strip_suffix("--browser-cert") {
            Some(b) => (b, true),
            None => (bad, false),
        };
        let f = srv.write_file("bad.yaml", bad);
        let mut argv = vec!["app".to_string(), "start".to_string()];
        argv.extend(args(&f, &token));
        if browser_cert {
            // A key that is not the certificate's.
            let (_, other_key) = profile_tls(&carol);
            argv.push(format!("--browser-cert-file={}", tls.cert.display()));
            argv.push(format!("--browser-key-file={}", other_key.display()));
        }
        let out = Run::new(&DEVTRUST, argv).run();
        out.fails_with(needle);
    }

    let mut ap_args = args(&config, &token);
    ap_args.push(format!("--browser-cert-file={}", tls.cert.display()));
    ap_args.push(format!("--browser-key-file={}", tls.key.display()));
    let ap = AccessPoint::start("app", &ap_args);
    // Browsers (any server name but an app's own) get the browser certificate: here one of
    // the database CA for localhost, which curl checks.
    let ap_port = ap.addr.rsplit_once(':').unwrap().1;
    let (code, body) = curl(&[
        "--cacert",
        tls.client_ca.to_str().unwrap(),
        &format!("https://localhost:{ap_port}/"),
    ]);
    assert_eq!(
        code, 404,
        "a verified TLS answer (no app is named localhost): {body}"
    );
    wait_until("the apps are listed", || {
        srv.dtsh(&carol, &["apps", "ls"], "")
            .stdout
            .contains("wrong-name")
    });

    // Checked against its CA: the app gets the rewritten headers, whatever the client sent.
    let (_p1, checked) = proxy(&carol, "checked");
    let (code, body) = curl(&[
        "-H",
        "X-Team: intruders",
        &format!("http://127.0.0.1:{checked}/tls"),
    ]);
    assert_eq!(code, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-team"], "platform", "{body}");
    assert_eq!(echoed["headers"]["x-env"], "dev", "{body}");
    assert!(echoed["headers"]["devtrust-jwt-assertion"].is_string());

    // The system's roots do not know the app's CA; a name the certificate lacks is refused
    // too; the opt-in skips the check.
    let (_p2, unknown) = proxy(&carol, "unknown-ca");
    let (code, body) = curl(&[&format!("http://127.0.0.1:{unknown}/")]);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("invalid peer certificate"), "{body}");
    let (_p3, wrong) = proxy(&carol, "wrong-name");
    let (code, body) = curl(&[&format!("http://127.0.0.1:{wrong}/")]);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("certificate not valid for name"), "{body}");
    let (_p4, unchecked) = proxy(&carol, "unchecked");
    let (code, body) = curl(&[&format!("http://127.0.0.1:{unchecked}/")]);
    assert_eq!(code, 200, "{body}");
}
