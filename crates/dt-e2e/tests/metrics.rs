//! Operations (issue 10, item 8): the auth service and an SSH access point serve Prometheus
//! `/metrics`, scraped here with curl after real traffic, and `/readyz`, which turns false
//! when what it depends on goes away (storage for the auth service, the auth service's view
//! for a node).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const PW: &str = "correct-horse-battery";

/// `curl` a URL; returns (HTTP status, body). `-k`: the auth service's certificate is
/// issued by the cluster's own CA, which curl does not know.
fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of one sample line, e.g. `devtrust_logins_total{result="success"}`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn auth_service_metrics_count_logins_and_ceremonies() {
    let s = Server::start();
    let url = format!("https://{}/metrics", s.addr);
    let cap = s.write_file(
        "cap.yaml",
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec:\n  device_trust: {mode: optional, allow_software_credentials: true}\n",
    );
    s.dtctl(&["create", "-f", &cap, "--force"]).ok();
    let home = s.new_user("mia", "access,editor", "root", PW);
    s.login(&home, "mia", "wrong password")
        .fails_with("invalid username or password");
    let device = tempfile::tempdir().unwrap();
    let dtsh = |args: &[&str], stdin: &str| {
        Run::new(&DTSH, args.iter().copied())
            .env("DTSH_HOME", &home.path)
            .env("DTSH_DEVICE_HOME", device.path())
            .env("DTSH_DEVICE_SERIAL", "METRICS-1")
            .env("DTSH_DEVICE_KEYSTORE", "software")
            .stdin(stdin)
            .run()
    };
    dtsh(&["device", "enroll", "--current-device"], "").ok();
    // A new login authenticates the enrolled device again.
    let again = dtsh(
        &["login", "--user=mia", "--password-stdin"],
        &format!("{PW}\n"),
    );
    assert!(again.ok().contains("devtrust-device-id"), "{again}");
    s.dtctl(&["lock", "--user=nobody", "--ttl=1h"]).ok();

    let (code, body) = curl(&url);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("# TYPE devtrust_ceremonies_total counter"),
        "{body}"
    );
    // Signup login and the last one, and the wrong password.
    assert_eq!(
        sample(&body, "devtrust_logins_total{result=\"success\"}"),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "devtrust_logins_total{result=\"unauthenticated\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "devtrust_ceremonies_total{kind=\"enroll\",result=\"success\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // Enrollment authenticates right away, then the login once more.
    assert_eq!(
        sample(
            &body,
            "devtrust_ceremonies_total{kind=\"authenticate\",result=\"success\"}"
        ),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "devtrust_ceremony_duration_seconds_count{kind=\"enroll\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "devtrust_locks_in_force"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "devtrust_storage_errors_total"),
        Some(0.0),
        "{body}"
    );
    let (code, body) = curl(&format!("https://{}/readyz", s.addr));
    assert_eq!((code, body.trim()), (200, "{\"ready\":true}"));
}

#[test]
fn readyz_is_false_while_postgres_is_unreachable() {
    // An auth server on a PostgreSQL database that is then dropped under it.
    let db = PgDb::create("readyz");
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::opts().config(db.config_file(tmp.path())).start();
    let url = format!("https://{}/readyz", s.addr);
    assert_eq!(curl(&url).0, 200);
    drop(db); // DROP DATABASE ... WITH (FORCE): every connection of the server is cut.
    let t = Instant::now();
    let (code, body) = loop {
        let (code, body) = curl(&url);
        if code != 200 || t.elapsed() > Duration::from_secs(20) {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"ready\":false"), "{body}");
    let (_, metrics) = curl(&format!("https://{}/metrics", s.addr));
    assert!(
        sample(&metrics, "devtrust_storage_errors_total").is_some_and(|n| n >= 0.0),
        "{metrics}"
    );
    s.kill();
}

#[test]
fn node_metrics_count_decisions_and_live_sessions() {
    let s = Server::start();
    let home = s.new_user("noa", "access", "root", PW);
    let token = s.dtctl(&["tokens", "add", "--type=node", "--format=text"]);
    let token = token.ok().trim().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        &s.addr,
        &token,
        &s.pin,
        "metrics-node",
        &tmp.path().join("node"),
        &["--metrics-listen=127.0.0.1:0"],
    );
    let out = node.wait_stdout(&node.dir, "metrics:");
    let url = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics:"))
        .unwrap()
        .trim()
        .to_string();
    let ready = url.replace("/metrics", "/readyz");
    let t = Instant::now();
    while curl(&ready).0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(20), "node never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.dtsh(&home, &["ssh", "root@metrics-node", "true"], "")
        .ok();
    s.dtctl(&["lock", "--login=root", "--ttl=1h", "--message=metrics"])
        .ok();
    // Until the lock reaches the node, sessions are still allowed: count them.
    let (t, mut allowed) = (Instant::now(), 1.0);
    loop {
        let out = s.dtsh(&home, &["ssh", "root@metrics-node", "true"], "");
        if out.stderr.contains("lock targeting") {
            break;
        }
        out.ok();
        allowed += 1.0;
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the lock never reached the node"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = curl(&url);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        sample(
            &body,
            "devtrust_access_decisions_total{kind=\"ssh\",result=\"allow\"}"
        ),
        Some(allowed),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "devtrust_access_decisions_total{kind=\"ssh\",result=\"locked\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "devtrust_watch_lag_seconds").is_some_and(|a| (0.0..10.0).contains(&a)),
        "{body}"
    );
    assert_eq!(sample(&body, "devtrust_live_sessions"), Some(0.0), "{body}");
    assert_eq!(
        sample(&body, "devtrust_locks_in_force"),
        Some(1.0),
        "{body}"
    );
    // Without its auth service the node's view ages and it stops being ready.
    s.kill();
    let t = Instant::now();
    loop {
        let (code, body) = curl(&ready);
        if code == 503 {
            assert!(body.contains("view of the cluster"), "{body}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "node still ready with its auth service gone"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
