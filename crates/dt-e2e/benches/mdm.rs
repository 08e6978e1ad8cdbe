//! `cargo bench -p dt-e2e --bench mdm`: the inventory sync from Jamf Pro, timed end to end.
//!
//! Real parts: `devtrust start` (SQLite), `devtrust mdm start` and `dtctl mdm sync` (the
//! binaries of this build), over TLS to the fake Jamf Pro of `dt-fakemdm` in this process
//! (no Jamf can run here). Every device written carries its audit event.
//!
//! Printed, side by side with the aims as ratios (below 1.00 beats the aim):
//! - a first full sync of N computers (100,000; aim 30 s), all created;
//! - a second full sync with nothing changed (steady state);
//! - a partial sync of N/100 changed computers (1,000; aim 2 s).
//!
//! With `BENCH_SECONDS` set below 10 (CI smoke-runs this in debug with `BENCH_SECONDS=1`)
//! N shrinks to 2,000 so the run stays quick; the aims shrink in proportion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dt_testkit::programs::{DEVTRUST, DTCTL};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dt_fakemdm::{Computer, FakeMdm};
use dt_testkit::{daemon, field, run};

fn sync(data: &Path, args: &[&str]) -> (Duration, serde_json::Value) {
    let started = Instant::now();
    let out = run(Command::new(DTCTL)
        .arg("--data-dir")
        .arg(data)
        .args(["mdm", "sync", "jamf-main", "--format=json", "--timeout=30m"])
        .args(args));
    let took = started.elapsed();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    (took, v)
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let n: u64 = if seconds < 10 { 2_000 } else { 100_000 };
    let changes = n / 100;
    let scale = n as f64 / 100_000.0;
    let (full_aim, partial_aim) = (30.0 * scale, 2.0 * (changes as f64 / 1_000.0));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = rt.block_on(FakeMdm::start());
    let hour_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    fake.set_computers(
        (1..=n)
            .map(|i| {
                let mut c = Computer::mac(i, &format!("C{i:011}"), &format!("user{i}"));
                c.report_date = hour_ago;
                c
            })
            .collect(),
    );

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_auth, lines) = daemon(
        &DEVTRUST,
        &[
            "start",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("HOME", dir.path())],
        "CA pin:",
    );
    let addr = field(&lines, "listen:");
    let pin = field(&lines, "CA pin:");
    std::fs::write(dir.path().join("ca.pem"), fake.ca_pem()).unwrap();
    std::fs::write(dir.path().join("secret"), "jamf-secret\n").unwrap();
    let cfg = dir.path().join("mdm.yaml");
    std::fs::write(
        &cfg,
        format!(
            "jamf_service:\n  name: jamf-main\n  api_endpoint: {}\n  ca_file: ca.pem\n  client_id: jamf-client\n  client_secret_file: secret\n  page_size: 1000\n  max_pages: 1000\n  inventory:\n    - sync_period_partial: 0s\n      sync_period_full: 0s\n      on_missing: DELETE\n",
            fake.jamf_url()
        ),
    )
    .unwrap();
    let token = run(Command::new(DTCTL).arg("--data-dir").arg(&data).args([
        "tokens",
        "add",
        "--type=mdm",
        "--format=text",
    ]));
    let (_svc, _) = daemon(
        &DEVTRUST,
        &[
            "mdm",
            "start",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            dir.path().join("mdm").to_str().unwrap(),
            "--auth-server",
            &addr,
            "--ca-pin",
            &pin,
            "--token",
            token.trim(),
        ],
        &[("HOME", dir.path())],
        "is running",
    );
    // The service registers its source at start; wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run(Command::new(DTCTL).arg("--data-dir").arg(&data).args([
        "mdm",
        "status",
        "--format=json",
    ]))
    .contains("jamf-main")
    {
        assert!(Instant::now() < deadline, "the source never registered");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (first, v) = sync(&data, &["--full"]);
    assert_eq!(v["counts"]["created"], n, "{v}");
    let (steady, v) = sync(&data, &["--full"]);
    assert_eq!(v["counts"]["unchanged"], n, "{v}");

    let now = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
    fake.edit_computers(|cs| {
        for c in cs.iter_mut().take(changes as usize) {
            c.username = format!("{}-new", c.username);
            c.report_date = now;
        }
    });
    let (partial, v) = sync(&data, &[]);
    assert_eq!(v["counts"]["updated"], changes, "{v}");

    let row = |what: &str, took: Duration, count: u64, aim: Option<f64>| {
        let s = took.as_secs_f64();
        println!(
            "{what:<38} {count:>7} devices {s:>8.2} s {:>9.0} devices/s {}",
            count as f64 / s,
            aim.map(|a| format!("aim {a:>6.2} s  ratio {:.2}", s / a))
                .unwrap_or_default()
        );
    };
    println!("MDM sync (Jamf Pro, SQLite), end to end through dtctl mdm sync");
    row("full sync, all created", first, n, Some(full_aim));
    row("full sync, nothing changed", steady, n, Some(full_aim));
    row("partial sync", partial, changes, Some(partial_aim));
}
