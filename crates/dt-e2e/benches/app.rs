//! `cargo bench -p dt-e2e --bench app`: `wrk` through the app access point against `wrk`
//! straight to the same app, as ratios.
//!
//! Real parts: `devtrust start`, `devtrust app start` and `dtsh proxy app` (the binaries of
//! this build), and Debian's `wrk`. The app is a minimal keep-alive HTTP/1.1 server in this
//! process (a fixed 2-byte answer), so the figures measure what devtrust adds: the local
//! proxy, TLS to the access point, the decision at every request, the signed identity
//! header (a cached token) and the per-request audit event.
//!
//! Printed: requests/s and p99 latency with 2 threads and 32 connections for
//! `BENCH_SECONDS` (10).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dt_testkit::programs::{DEVTRUST, DTCTL, DTSH};
use std::process::Command;

use dt_testkit::{daemon, field, run, signup_login, wait_listed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The app: answers every request on a connection with `ok`.
fn start_app() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut have = Vec::new();
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have.extend_from_slice(&buf[..n]);
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    port
}

/// wrk's requests/s and p99 (ms).
fn wrk(url: &str, seconds: u64) -> (f64, f64) {
    let out = run(Command::new("wrk")
        .args(["-t2", "-c32", "--latency", "-d"])
        .arg(format!("{seconds}s"))
        .arg(url));
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{out}"));
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim())
        .and_then(|v| {
            let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().ok()?;
            Some(match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                _ => return None,
            })
        })
        .unwrap_or_else(|| panic!("no p99 in wrk output:\n{out}"));
    (rps, p99)
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    if Command::new("wrk").arg("--version").output().is_err() {
        panic!("wrk is missing: scripts/install-deps.sh installs it (Debian package wrk)");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("auth");
    let (auth, lines) = daemon(
        &DEVTRUST,
        &[
            "start",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("HOME", dir.path())],
        "Next:",
    );
    let addr = field(&lines, "listen:");
    let pin = field(&lines, "CA pin:");
    let dtctl = |args: &[&str]| run(Command::new(DTCTL).arg("--data-dir").arg(&data).args(args));
    let app_port = start_app();

    let token = dtctl(&["tokens", "add", "--type=app", "--format=text"])
        .trim()
        .to_string();
    let (_ap, _) = daemon(
        &DEVTRUST,
        &[
            "app",
            "start",
            &format!("--auth-server={addr}"),
            &format!("--token={token}"),
            "--name=bench",
            "--listen=127.0.0.1:0",
            &format!("--uri=http://127.0.0.1:{app_port}"),
            &format!("--data-dir={}", dir.path().join("ap").display()),
            &format!("--ca-pin={pin}"),
            "--heartbeat=1s",
        ],
        &[],
        "listen:",
    );
    let role = dir.path().join("role.yaml");
    std::fs::write(
        &role,
        "kind: role\nversion: v7\nmetadata: {name: apps}\nspec: {allow: {app_labels: {'*': '*'}}}\n",
    )
    .unwrap();
    dtctl(&["create", "-f", role.to_str().unwrap()]);
    let home = dir.path().join("alice");
    signup_login(dtctl, &DTSH, &addr, &pin, "alice", "apps", &home);
    wait_listed(&DTSH, &home, &["apps", "ls"], "bench");
    let (_proxy, lines) = daemon(
        &DTSH,
        &["proxy", "app", "bench", "--port=0"],
        &[("DTSH_HOME", &home)],
        "Proxying app",
    );
    let port = lines
        .last()
        .and_then(|l| l.split("http://127.0.0.1:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();

    println!("wrk -t2 -c32, {seconds} s each; the app and everything else on loopback, 2 cores");
    let (d_rps, d_p99) = wrk(&format!("http://127.0.0.1:{app_port}/"), seconds);
    let (a_rps, a_p99) = wrk(&format!("http://127.0.0.1:{port}/"), seconds);
    println!();
    println!("                 direct     through devtrust   ratio");
    println!(
        "requests/s     {d_rps:>9.0}    {a_rps:>9.0}          {:.2}",
        a_rps / d_rps
    );
    println!(
        "p99 latency ms {d_p99:>9.2}    {a_p99:>9.2}          {:.2}",
        a_p99 / d_p99
    );
    println!(
        "(through devtrust: dtsh proxy app, TLS to the access point, a decision and an audit event per request)"
    );
    drop(auth);
}
