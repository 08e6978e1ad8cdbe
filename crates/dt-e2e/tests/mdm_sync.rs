//! Issue 18: the inventory sync from Jamf Pro and Microsoft Intune on the real binaries
//! (`devtrust start`, `devtrust mdm start`, `dtctl`, `dtsh`), against the fake Jamf Pro and
//! Microsoft Graph servers of `dt-fakemdm` (TLS with their own CA, given as `ca_file`; no
//! MDM can run here). Full and partial syncs, both `on_missing` modes, SQLite and
//! PostgreSQL, the bad inputs of the issue, and auto-enrollment with a synced profile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dt_fakemdm::{Computer, FakeMdm, ManagedDevice};
use serde_json::Value;

const PW: &str = "correct-horse-battery";

/// `devtrust mdm start`, killed on drop.
struct MdmProc {
    child: Child,
    _dir: tempfile::TempDir,
}

impl MdmProc {
    fn start(s: &Server, config: &Path) -> MdmProc {
        let token = s
            .dtctl(&["tokens", "add", "--type=mdm", "--format=text"])
            .ok()
            .trim()
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(DEVTRUST)
            .args(["mdm", "start", "--name=mdm1"])
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg(format!("--auth-server={}", s.addr))
            .arg(format!("--ca-pin={}", s.pin))
            .env("DEVTRUST_MDM_TOKEN", token)
            .arg("--retry-base=20ms")
            .env("DEVTRUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                if l.contains("is running") {
                    return MdmProc { child, _dir: dir };
                }
                seen.push(l);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("devtrust mdm start did not start: {seen:?}");
    }
}

impl Drop for MdmProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake MDM on its own runtime (kept alive with it).
struct Fake {
    mdm: FakeMdm,
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Fake {
    fn start() -> Fake {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mdm = rt.block_on(FakeMdm::start());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), mdm.ca_pem()).unwrap();
        for (f, v) in [
            ("oauth.secret", "jamf-secret"),
            ("account.pw", "jamf-password"),
            ("graph.secret", "intune-secret"),
            ("wrong.secret", "not-the-secret"),
        ] {
            let p = dir.path().join(f);
            std::fs::write(&p, format!("{v}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Fake { mdm, _rt: rt, dir }
    }

    /// A Jamf config (OAuth client credentials unless `account`), syncs on demand only.
    fn jamf_config(&self, on_missing: &str, extra: &str) -> PathBuf {
        let p = self.dir.path().join("mdm.yaml");
        std::fs::write(
            &p,
            format!(
                "jamf_service:\n  name: jamf-main\n  api_endpoint: {}\n  ca_file: ca.pem\n{extra}  page_size: 2\n  inventory:\n    - sync_period_partial: 0s\n      sync_period_full: 0s\n      on_missing: {on_missing}\n",
                self.mdm.jamf_url()
            ),
        )
        .unwrap();
        p
    }

    fn intune_config(&self) -> PathBuf {
        let p = self.dir.path().join("intune.yaml");
        std::fs::write(
            &p,
            format!(
                "intune_service:\n  name: intune-main\n  tenant: contoso.onmicrosoft.com\n  client_id: intune-client\n  client_secret_file: graph.secret\n  graph_endpoint: {}\n  login_endpoint: {}\n  ca_file: ca.pem\n  page_size: 2\n  sync_period_partial: 0s\n  sync_period_full: 24h\n  on_missing: DELETE\n",
                self.mdm.graph_url(),
                self.mdm.login_url()
            ),
        )
        .unwrap();
        p
    }
}

const OAUTH: &str = "  client_id: jamf-client\n  client_secret_file: oauth.secret\n";

/// `dtctl mdm sync NAME ARGS --format=json`: (exit ok, the run).
fn sync(s: &Server, name: &str, args: &[&str]) -> (bool, Value) {
    let mut a = vec!["mdm", "sync", name, "--format=json", "--timeout=60s"];
    a.extend_from_slice(args);
    let out = s.dtctl(&a);
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("dtctl mdm sync: {e}\n{out}"));
    (out.success(), v)
}

/// Devices as `dtctl devices ls --format=json` lists them, by asset tag.
fn devices(s: &Server) -> std::collections::BTreeMap<String, Value> {
    s.dtctl(&["devices", "ls", "--format=json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["spec"]["asset_tag"].as_str().unwrap().to_string(),
                d.clone(),
            )
        })
        .collect()
}

fn wait_known(s: &Server, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = s.dtctl(&["mdm", "status", "--format=json"]).json();
        if st.as_array().unwrap().iter().any(|x| x["name"] == name) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "source {name} never registered: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn computers() -> Vec<Computer> {
    let mut no_serial = Computer::mac(3, "", "carol");
    no_serial.serial.clear();
    let mut ipad = Computer::mac(4, "IPAD1", "dan");
    ipad.os_name = "iPadOS".into();
    let mut all = vec![
        Computer::mac(1, "C02AAA", "alice"),
        Computer::mac(2, "C02BBB", "bob"),
        no_serial,
        ipad,
        Computer::mac(5, "C02DUP", "erin"),
        Computer::mac(6, "C02DUP", "frank"),
        Computer::mac(7, "MANUAL1", "gina"),
    ];
    // Jamf last heard of them an hour ago.
    for c in &mut all {
        c.report_date = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    }
    all
}

/// The flow both backends run: full, dry run, partial, on_missing, and the audit trail.
fn full_and_partial(s: &Server, fake: &Fake, on_missing: &str, creds: &str) {
    // A device added by hand shares a serial with a Jamf record: it is never touched.
    s.dtctl(&["devices", "add", "--os=macos", "--asset-tag=MANUAL1"])
        .ok();
    fake.mdm.set_computers(computers());
    let _svc = MdmProc::start(s, &fake.jamf_config(on_missing, creds));
    wait_known(s, "jamf-main");

    // A dry run says what would happen and writes nothing.
    let (ok, run) = sync(s, "jamf-main", &["--full", "--dry-run"]);
    assert!(ok, "{run}");
    assert_eq!(run["dry_run"], true);
    assert_eq!(run["counts"]["created"], 2, "{run}");
    assert_eq!(devices(s).len(), 1, "a dry run wrote devices");

    let (ok, run) = sync(s, "jamf-main", &["--full"]);
    assert!(ok, "{run}");
    let c = &run["counts"];
    assert_eq!(
        (c["created"].as_u64(), c["updated"].as_u64()),
        (Some(2), Some(0)),
        "{run}"
    );
    assert_eq!(c["skipped"]["missing_serial"], 1, "{run}");
    assert_eq!(c["skipped"]["unsupported_os"], 1, "{run}");
    assert_eq!(c["skipped"]["duplicate_serial"], 2, "{run}");
    assert_eq!(c["skipped"]["other_source"], 1, "{run}");
    let ds = devices(s);
    let a = &ds["C02AAA"]["spec"];
    assert_eq!(a["os_type"], "macos");
    assert_eq!(
        a["source"],
        serde_json::json!({"name": "jamf-main", "origin": "jamf"})
    );
    assert_eq!(a["profile"]["assigned_user"], "alice");
    assert_eq!(a["profile"]["model_identifier"], "MacBookPro18,1");
    assert_eq!(a["profile"]["os_build"], "23E214");
    assert_eq!(a["profile"]["os_usernames"], serde_json::json!(["alice"]));
    assert_eq!(a["profile"]["extra"]["external_id"], "1");
    assert_eq!(
        ds["MANUAL1"]["spec"]["source"]["origin"], "api",
        "{:?}",
        ds["MANUAL1"]
    );
    assert!(ds["MANUAL1"]["spec"]["profile"].is_null());
    // The table shows the source.
    let table = s.dtctl(&["devices", "ls"]);
    assert!(
        table
            .ok()
            .lines()
            .any(|l| l.contains("C02AAA") && l.contains("jamf-main")),
        "{table}"
    );
    // Every device the sync created has its audit event, naming the source.
    let created: Vec<Value> = s
        .events(&["--type=device.create", "--user=mdm/mdm1"])
        .into_iter()
        .collect();
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(
        created.iter().all(|e| e["resource_name"] == "jamf-main"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("jamf source \"jamf-main\"")),
        "{created:?}"
    );

    // A second full sync with nothing new changes nothing.
    let (_, run) = sync(s, "jamf-main", &["--full"]);
    assert_eq!(run["counts"]["unchanged"], 2, "{run}");
    assert_eq!(run["counts"]["created"], 0, "{run}");

    // Partial: bob's Mac changed hands, a new Mac appeared, alice's left Jamf. Only what
    // Jamf saw since the last sync is read, and nothing is removed.
    fake.mdm.edit_computers(|cs| {
        let now = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
        cs.retain(|c| c.id != 1);
        for c in cs.iter_mut().filter(|c| c.id == 2) {
            c.username = "bea".into();
            c.report_date = now;
        }
        let mut n = Computer::mac(8, "C02NEW", "hal");
        n.report_date = now;
        cs.push(n);
    });
    let pages_before = fake.mdm.stats().inventory_pages;
    let (ok, run) = sync(s, "jamf-main", &[]);
    assert!(ok, "{run}");
    assert_eq!(run["kind"], "partial", "{run}");
    let c = &run["counts"];
    assert_eq!(
        (
            c["created"].as_u64(),
            c["updated"].as_u64(),
            c["removed"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{run}"
    );
    let q = fake.mdm.stats().queries;
    assert!(q.last().unwrap().contains("general.reportDate"), "{q:?}");
    assert_eq!(
        fake.mdm.stats().inventory_pages - pages_before,
        1,
        "a partial sync read one page"
    );
    let ds = devices(s);
    assert_eq!(ds["C02BBB"]["spec"]["profile"]["assigned_user"], "bea");
    assert!(ds.contains_key("C02AAA"), "a partial sync never removes");
    let updated = s.events(&["--type=device.update", "--user=mdm/mdm1"]);
    assert_eq!(updated.len(), 1, "{updated:?}");

    // Full: alice's Mac is gone from Jamf.
    let (ok, run) = sync(s, "jamf-main", &["--full"]);
    assert!(ok, "{run}");
    let ds = devices(s);
    if on_missing == "DELETE" {
        assert_eq!(run["counts"]["removed"], 1, "{run}");
        assert!(!ds.contains_key("C02AAA"));
        let deleted = s.events(&["--type=device.delete", "--user=mdm/mdm1"]);
        assert_eq!(deleted.len(), 1, "{deleted:?}");
    } else {
        assert_eq!(run["counts"]["removed"], 0, "{run}");
        assert_eq!(run["counts"]["missing_kept"], 1, "{run}");
        assert!(ds.contains_key("C02AAA"));
    }
    assert!(ds.contains_key("MANUAL1"), "the manual device stays");

    // Status shows both runs.
    let st = s.dtctl(&["mdm", "status", "--format=json"]).json();
    let src = &st[0];
    assert_eq!(src["name"], "jamf-main");
    assert_eq!(src["origin"], "jamf");
    assert_eq!(src["service"], "mdm1");
    assert_eq!(src["last_full"]["ok"], true, "{st}");
    assert_eq!(src["last_partial"]["counts"]["created"], 1, "{st}");
    let text = s.dtctl(&["mdm", "status"]);
    assert!(
        text.ok().contains("jamf-main (jamf), synced by mdm/mdm1"),
        "{text}"
    );
    assert!(text.ok().contains("last partial sync:"), "{text}");
}

#[test]
fn jamf_full_and_partial_sync_with_delete_on_sqlite() {
    let fake = Fake::start();
    let s = Server::start();
    full_and_partial(&s, &fake, "DELETE", OAUTH);
}

#[test]
fn jamf_full_and_partial_sync_with_noop_on_postgres_and_account_credentials() {
    let db = PgDb::create("mdm");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = db.config_file(tmp.path());
    let s = Server::opts().config(&cfg).start();
    let fake = Fake::start();
    full_and_partial(
        &s,
        &fake,
        "NOOP",
        "  username: jamf-user\n  password_file: account.pw\n",
    );
    // The legacy endpoint (basic authentication) was the one used.
    assert!(fake.mdm.stats().tokens_issued >= 1);
}

#[test]
fn bad_input_fails_cleanly_and_on_missing_never_runs_after_an_incomplete_sync() {
    let fake = Fake::start();
    let s = Server::start();
    fake.mdm.set_computers(vec![
        Computer::mac(1, "S1", "a"),
        Computer::mac(2, "S2", "b"),
        Computer::mac(3, "S3", "c"),
        Computer::mac(4, "S4", "d"),
        Computer::mac(5, "S5", "e"),
    ]);
    let cfg = fake.jamf_config("DELETE", &format!("{OAUTH}  max_pages: 5\n"));
    let _svc = MdmProc::start(&s, &cfg);
    wait_known(&s, "jamf-main");
    let (ok, run) = sync(&s, "jamf-main", &["--full"]);
    assert!(ok, "{run}");
    assert_eq!(devices(&s).len(), 5);

    // The Mac S5 leaves Jamf; every failing full sync below must keep it.
    fake.mdm
        .edit_computers(|cs| cs.retain(|c| c.serial != "S5"));
    type Knob = Box<dyn Fn(&mut dt_fakemdm::Knobs)>;
    let failing: [(&str, Knob, &str); 4] = [
        (
            "malformed page",
            Box::new(|k| k.malformed_page = Some(1)),
            "malformed answer",
        ),
        (
            "never-ending pages",
            Box::new(|k| k.never_ending = true),
            "kept sending pages",
        ),
        (
            "credentials revoked mid-sync",
            Box::new(|k| k.revoke_credentials_after_pages = Some(1)),
            "check jamf_service.client_id (\"jamf-client\") and jamf_service.client_secret_file",
        ),
        (
            "403 on the inventory",
            Box::new(|k| k.forbid_inventory = true),
            "refused the credentials (403)",
        ),
    ];
    for (what, knob, want) in failing {
        fake.mdm.reset();
        fake.mdm.knobs(knob);
        let (ok, run) = sync(&s, "jamf-main", &["--full"]);
        assert!(!ok, "{what}: {run}");
        assert_eq!(run["ok"], false, "{what}: {run}");
        let err = run["error"].as_str().unwrap();
        assert!(err.contains(want), "{what}: {err}");
        assert!(
            !err.contains("jamf-secret"),
            "{what}: the secret leaked: {err}"
        );
        assert_eq!(run["counts"]["removed"], 0, "{what}: {run}");
        assert!(
            devices(&s).contains_key("S5"),
            "{what}: on_missing ran after a failed sync"
        );
        let st = s.dtctl(&["mdm", "status", "--format=json"]).json();
        assert!(
            st[0]["last_error"].as_str().unwrap().contains(want),
            "{what}: {st}"
        );
    }
    // An unknown source name is a clear error, not a wait.
    s.dtctl(&["mdm", "sync", "jamf-typo"])
        .fails_with("no MDM service syncs a source named \"jamf-typo\"");

    // The failure shows in the text status and in the exit code of a text sync.
    let out = s.dtctl(&["mdm", "sync", "jamf-main", "--full"]);
    assert!(!out.success());
    assert!(out.stderr.contains("refused the credentials"), "{out}");

    // Throttling, server errors and a token that expires mid-sync are retried: it completes.
    fake.mdm.reset();
    fake.mdm.knobs(|k| {
        k.inject.push_back((429, Some(1)));
        k.inject.push_back((503, None));
        k.expire_tokens_after_pages = Some(1);
    });
    let started = Instant::now();
    let (ok, run) = sync(&s, "jamf-main", &["--full"]);
    assert!(ok, "{run}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(run["counts"]["removed"], 1, "{run}");
    assert!(!devices(&s).contains_key("S5"));
    let st = fake.mdm.stats();
    // The token the client held was refused once (401) and a new one fetched.
    assert!(
        st.unauthorized >= 1 && st.tokens_issued >= 1,
        "the token was not refreshed: {st:?}"
    );

    // Wrong credentials from the start: the message names the file to check, not the secret.
    let bad = fake.jamf_config(
        "DELETE",
        "  client_id: jamf-client\n  client_secret_file: wrong.secret\n",
    );
    drop(_svc);
    s.dtctl(&["rm", "mdm/mdm1"]).ok();
    let _svc = MdmProc::start(&s, &bad);
    let (ok, run) = sync(&s, "jamf-main", &["--full"]);
    assert!(!ok);
    let err = run["error"].as_str().unwrap();
    assert!(
        err.contains("wrong.secret") && !err.contains("not-the-secret"),
        "{err}"
    );

    // A second MDM service may not sync a source the first one owns: it stops, saying why.
    let token = s
        .dtctl(&["tokens", "add", "--type=mdm", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let other_dir = tempfile::tempdir().unwrap();
    let out = Run::new(
        &DEVTRUST,
        [
            "mdm".to_string(),
            "start".into(),
            "--name=mdm2".into(),
            format!("--config={}", cfg.display()),
            format!("--data-dir={}", other_dir.path().join("d").display()),
            format!("--auth-server={}", s.addr),
            format!("--ca-pin={}", s.pin),
        ],
    )
    .env("DEVTRUST_MDM_TOKEN", token)
    .run();
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("is synced by the MDM service \"mdm1\""),
        "{out}"
    );

    // --check validates without starting.
    let out = Run::new(
        &DEVTRUST,
        [
            "mdm".as_ref(),
            "start".as_ref(),
            "--check".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ],
    )
    .run();
    assert!(
        out.ok().contains("source jamf-main (Jamf) is valid"),
        "{out}"
    );

    // A config with a typo is refused at start, naming the key.
    let typo = fake.dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "jamf_service:\n  name: j\n  api_endpont: https://x\n",
    )
    .unwrap();
    let out = Run::new(
        &DEVTRUST,
        [
            "mdm".as_ref(),
            "start".as_ref(),
            "--config".as_ref(),
            typo.as_os_str(),
        ],
    )
    .run();
    assert!(
        !out.success() && out.stderr.contains("api_endpont"),
        "{out}"
    );
}

#[test]
fn intune_sync_and_auto_enrollment_with_the_synced_profile() {
    let fake = Fake::start();
    let s = Server::start();
    let cap = serde_json::json!({
        "kind": "cluster_auth_preference",
        "version": "v2",
        "metadata": {"name": "cluster-auth-preference"},
        "spec": {"device_trust": {
            "mode": "optional",
            "auto_enroll": true,
            "allow_software_credentials": true,
        }},
    });
    let path = s.write_file("cap.json", &cap.to_string());
    s.dtctl(&["create", "-f", &path, "--force"]).ok();

    // What this machine reports, as Intune has it (a Linux device assigned to mallory).
    let dev = tempfile::tempdir().unwrap();
    let collected = Run::new(&DTSH, ["device", "collect", "--format=json"])
        .env("HOME", dev.path())
        .env("DTSH_DEVICE_SERIAL", "LNX-1")
        .run();
    let data: Value = serde_json::from_str(collected.ok()).unwrap();
    let field = |k: &str| data["data"][k].as_str().unwrap_or_default().to_string();
    let linux = |id: &str, serial: &str, upn: &str| {
        let mut d = ManagedDevice::windows(id, serial, upn);
        d.os = "Linux".into();
        d.model = field("model_identifier");
        d.os_version = field("os_version");
        d
    };
    let mut phone = ManagedDevice::windows("p1", "PHONE1", "mallory");
    phone.os = "iOS".into();
    fake.mdm.set_devices(vec![
        linux("d1", "LNX-1", "mallory"),
        linux("d2", "LNX-2", "trudy"),
        ManagedDevice::windows("d3", "WIN-1", "mallory@example.com"),
        phone,
    ]);
    // sync_period_full 24h: the service runs the first full sync at start on its own.
    let _svc = MdmProc::start(&s, &fake.intune_config());
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = s.dtctl(&["mdm", "status", "--format=json"]).json();
        if !st[0]["last_full"].is_null() {
            break st;
        }
        assert!(Instant::now() < deadline, "no first full sync: {st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let run = &st[0]["last_full"];
    assert_eq!(run["ok"], true, "{st}");
    assert_eq!(run["counts"]["created"], 3, "{st}");
    assert_eq!(run["counts"]["skipped"]["unsupported_os"], 1, "{st}");
    assert!(
        fake.mdm.stats().inventory_pages >= 2,
        "@odata.nextLink was not followed"
    );
    let ds = devices(&s);
    assert_eq!(ds["WIN-1"]["spec"]["os_type"], "windows");
    assert_eq!(
        ds["LNX-1"]["spec"]["source"],
        serde_json::json!({"name": "intune-main", "origin": "intune"})
    );

    // Partial: only devices seen since the last sync; the filter is Graph's.
    fake.mdm.edit_devices(|ds| {
        for d in ds.iter_mut().filter(|d| d.id == "d3") {
            d.os_version = "10.0.26100.1".into();
            d.last_sync = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
        }
    });
    let (ok, run) = sync(&s, "intune-main", &[]);
    assert!(ok, "{run}");
    assert_eq!(
        (run["kind"].as_str(), run["counts"]["updated"].as_u64()),
        (Some("partial"), Some(1)),
        "{run}"
    );
    assert!(
        fake.mdm
            .stats()
            .queries
            .iter()
            .any(|q| q.contains("lastSyncDateTime%20ge")),
        "{:?}",
        fake.mdm.stats().queries
    );

    // Auto-enrollment: trudy's device is refused to mallory (the profile names trudy)...
    let home = s.new_user("mallory", "access", "root", PW);
    let login = |device: &Path, serial: &str| {
        Run::new(
            &DTSH,
            [
                "login",
                &format!("--proxy={}", s.addr),
                "--user=mallory",
                "--password-stdin",
                &format!("--ca-pin={}", s.pin),
            ],
        )
        .env("HOME", device)
        .env("DTSH_HOME", &home.path)
        .env("DTSH_DEVICE_HOME", device)
        .env("DTSH_DEVICE_SERIAL", serial)
        .stdin(format!("{PW}\n"))
        .run()
    };
    let dev2 = tempfile::tempdir().unwrap();
    let out = login(dev2.path(), "LNX-2");
    out.ok();
    assert!(
        out.stderr
            .contains("the device's MDM profile does not name user \"mallory\""),
        "{out}"
    );
    assert_eq!(
        devices(&s)["LNX-2"]["spec"]["enroll_status"],
        "not_enrolled"
    );
    let refused: Vec<Value> = s
        .events(&["--type=device.token.create", "--user=mallory"])
        .into_iter()
        .filter(|e| e["success"] == false)
        .collect();
    assert!(
        refused.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("does not name user")),
        "{refused:?}"
    );
    // ... and her own device, synced from Intune with her as its user, enrolls at login.
    let out = login(dev.path(), "LNX-1");
    out.ok();
    assert!(out.stderr.contains("enrolled automatically"), "{out}");
    let d = &devices(&s)["LNX-1"]["spec"];
    assert_eq!(d["enroll_status"], "enrolled", "{d}");
    assert_eq!(d["owner"], "mallory", "{d}");
    // The sync keeps enrollment: a later full sync leaves the enrolled device as it is.
    let (ok, run) = sync(&s, "intune-main", &["--full"]);
    assert!(ok, "{run}");
    assert_eq!(devices(&s)["LNX-1"]["spec"]["enroll_status"], "enrolled");

    // A user who may not update devices cannot start a sync.
    let other = s.new_user("ursula", "access", "root", PW);
    let out = s.dtctl_as(&other, &["mdm", "sync", "intune-main"]);
    assert!(!out.success(), "{out}");
    assert!(
        s.events(&["--type=access.denied", "--user=ursula"])
            .iter()
            .any(|e| e["message"]
                .as_str()
                .unwrap_or("")
                .contains("mdm sync request refused")),
        "no audit event for the refused request"
    );
}
