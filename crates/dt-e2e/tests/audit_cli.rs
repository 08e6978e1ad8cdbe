//! Issue 19: `dtctl events verify`, `dtctl events export` and `audit.retention` with the real
//! binaries. Verify passes on an untouched log and, after an event is deleted straight from
//! the SQLite file, names the first broken link and exits 4; export writes JSON lines and
//! resumes from its cursor without repeating or skipping; `--follow` streams new events;
//! retention removes old events and the chain still verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ids(out: &Out) -> Vec<String> {
    out.json_lines()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn sqlite(srv: &Server, sql: &str) {
    let db = srv.data_dir.join("devtrust.db");
    let o = Command::new("sqlite3")
        .arg(&db)
        .arg(format!("PRAGMA busy_timeout=5000; {sql}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn verify_and_export_with_a_cursor() {
    let srv = Server::start();
    for name in ["ann", "ben", "cat"] {
        srv.add_user(name, "access", "");
    }
    let v = srv.dtctl(&["events", "verify"]);
    assert!(v.ok().starts_with("The audit chain holds: "), "{v}");
    let j = srv.dtctl(&["events", "verify", "--format=json"]).json();
    assert_eq!(j["ok"], true);
    assert!(j["checked"].as_u64().unwrap() >= 3);

    // Export: JSON lines, then only what is new, from the cursor.
    let cursor = srv.scratch().join("siem.cursor");
    let c = cursor.to_str().unwrap().to_string();
    let cursor_arg = format!("--cursor-file={c}");
    let first = srv.dtctl(&["events", "export", "--format=jsonl", &cursor_arg]);
    let first_ids = ids(&first);
    assert!(first_ids.len() >= 3, "{first}");
    for e in first.json_lines() {
        assert!(e["hash"].as_str().is_some_and(|h| h.len() == 64), "{e}");
    }
    assert_eq!(
        std::fs::read_to_string(&cursor).unwrap().trim(),
        first_ids.last().unwrap()
    );
    let nothing = srv.dtctl(&["events", "export", "--format=jsonl", &cursor_arg]);
    assert_eq!(nothing.ok(), "", "nothing new since the cursor");
    srv.add_user("dan", "access", "");
    let second = srv.dtctl(&["events", "export", "--format=jsonl", &cursor_arg]);
    let second_ids = ids(&second);
    assert!(!second_ids.is_empty());
    assert!(
        second_ids.iter().all(|id| id > first_ids.last().unwrap()),
        "{second_ids:?} repeats {first_ids:?}"
    );
    assert!(
        second
            .json_lines()
            .iter()
            .any(|e| e.to_string().contains("dan")),
        "{second}"
    );
    // A cursor file that is not an event id is refused, not reset silently.
    std::fs::write(&cursor, "garbage").unwrap();
    srv.dtctl(&["events", "export", "--format=jsonl", &cursor_arg])
        .fails_with("does not hold an event id");
    std::fs::write(&cursor, second_ids.last().unwrap()).unwrap();

    // --follow: a new event arrives on the running export.
    let mut follow = Command::new(DTCTL)
        .args(["--data-dir", srv.data_dir.to_str().unwrap()])
        .args([
            "events",
            "export",
            "--format=jsonl",
            &cursor_arg,
            "--follow",
            "--poll=200ms",
        ])
        .env("HOME", srv.scratch())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(l) = line else { return };
            let _ = tx.send(l);
        }
    });
    srv.add_user("eve", "access", "");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = None;
    while Instant::now() < deadline && got.is_none() {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200))
            && l.contains("eve")
        {
            got = Some(l);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let line = got.expect("the followed export wrote the new event");
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(e["id"].as_str().unwrap() > second_ids.last().unwrap().as_str());

    // Tampering straight in the database: delete one event in the middle.
    let all = ids(&srv.dtctl(&["events", "export", "--format=jsonl"]));
    let victim = &all[1];
    let next = &all[2];
    sqlite(
        &srv,
        &format!("DELETE FROM dt_items WHERE key = '/audit/events/{victim}';"),
    );
    let broken = srv.dtctl(&["events", "verify"]);
    assert_eq!(broken.code, Some(4), "{broken}");
    assert!(
        broken
            .stdout
            .contains(&format!("The audit chain is BROKEN at event {next} ("))
            && broken.stdout.contains(&format!(
                "event {victim} is missing before this one (deleted)"
            )),
        "{broken}"
    );
    let j = srv.dtctl_run(&["events", "verify", "--format=json"], &[]);
    assert_eq!(j.code, Some(4));
    let j: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["broken"]["id"], next.as_str());
    assert!(j["broken"]["time"].as_str().unwrap().contains('T'));
    // --since past the break checks only the links after it.
    let later = srv.dtctl(&["events", "verify", "--since=1s"]);
    assert!(later.code == Some(0) || later.code == Some(4), "{later}");
}

#[test]
fn retention_removes_old_events_and_the_chain_still_verifies() {
    let scratch = tempfile::tempdir().unwrap();
    let cfg = scratch.path().join("devtrust.yaml");
    std::fs::write(&cfg, "audit:\n  retention: 2s\n  retention_check: 200ms\n").unwrap();
    let srv = Server::opts().config(&cfg).start();
    srv.add_user("ann", "access", "");
    let before = ids(&srv.dtctl(&["events", "export", "--format=jsonl"]));
    assert!(!before.is_empty());
    // Old events go; a new one stays, and the chain holds from the recorded anchor.
    let start = Instant::now();
    let mut anchored = None;
    while start.elapsed() < Duration::from_secs(30) {
        let j = srv.dtctl(&["events", "verify", "--format=json"]).json();
        if j["anchor_id"].is_string() {
            anchored = Some(j);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let j = anchored.expect("retention removed events");
    assert_eq!(j["ok"], true, "{j}");
    srv.add_user("ben", "access", "");
    let v = srv.dtctl(&["events", "verify"]);
    assert!(v.ok().contains("The audit chain holds"), "{v}");
    assert!(v.ok().contains("were removed by retention"), "{v}");
    let after = ids(&srv.dtctl(&["events", "export", "--format=jsonl"]));
    assert!(
        !after.contains(&before[0]),
        "the oldest event is gone: {after:?}"
    );
}

#[test]
fn the_jsonl_sink_writes_every_event_and_rotates() {
    let scratch = tempfile::tempdir().unwrap();
    let cfg = scratch.path().join("devtrust.yaml");
    let file = scratch.path().join("events.jsonl");
    std::fs::write(
        &cfg,
        format!(
            "audit:\n  jsonl_file: {}\n  jsonl_max_size: 4KB\n  jsonl_keep: 50\n",
            file.display()
        ),
    )
    .unwrap();
    let srv = Server::opts().config(&cfg).start();
    for i in 0..12 {
        srv.add_user(&format!("user{i}"), "access", "");
    }
    let stored = srv
        .dtctl(&["events", "export", "--format=jsonl"])
        .json_lines();
    // Every stored event is in the files, identical, in order across the rotated files.
    let mut parts = vec![file.clone()];
    for n in 1..=50 {
        let p = scratch.path().join(format!("events.jsonl.{n}"));
        if p.exists() {
            parts.push(p);
        }
    }
    assert!(parts.len() > 1, "4KB rotates: {parts:?}");
    parts.reverse(); // oldest first
    let mut lines = Vec::new();
    for p in &parts {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(text.len() <= 4000 || text.lines().count() == 1, "{p:?}");
        lines.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    assert_eq!(lines, stored);
}
