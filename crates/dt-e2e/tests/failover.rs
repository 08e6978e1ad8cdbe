//! A lost auth server (issue 11, "Faults"): two auth servers on one PostgreSQL database,
//! clients and a node given both addresses (`--proxy=A,B`, `--auth-server=A,B`). One server
//! is killed with SIGKILL while users log in and authenticate their devices; every operation
//! still succeeds (each retries on the other server within the failover window), and the
//! node keeps its view of the cluster through the surviving server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const PW: &str = "correct-horse-battery";
const CLIENTS: usize = 4;

/// dtsh for one user on one software-key device.
fn dtsh_on(home: &Path, device: &Path, serial: &str, args: &[&str], stdin: &str) -> Out {
    Run::new(&DTSH, args.iter().copied())
        .env("DTSH_HOME", home)
        .env("DTSH_DEVICE_HOME", device)
        .env("DTSH_DEVICE_SERIAL", serial)
        .env("DTSH_DEVICE_KEYSTORE", "software")
        .stdin(stdin)
        .run()
}

struct Client {
    user: String,
    home: Home,
    device: tempfile::TempDir,
    serial: String,
}

impl Client {
    fn run(&self, args: &[&str], stdin: &str) -> Out {
        dtsh_on(
            &self.home.path,
            self.device.path(),
            &self.serial,
            args,
            stdin,
        )
    }

    fn login(&self, proxies: &str, pin: &str) -> Out {
        self.run(
            &[
                "login",
                &format!("--proxy={proxies}"),
                &format!("--user={}", self.user),
                "--password-stdin",
                &format!("--ca-pin={pin}"),
            ],
            &format!("{PW}\n"),
        )
    }
}

/// A login succeeded only if the device authenticated too (dtsh warns, but exits 0, when
/// device authentication fails after a good password login).
fn login_and_device_ok(out: &Out) -> bool {
    out.success()
        && out.stdout.contains("devtrust-device-id")
        && !out.stderr.contains("not trusted")
}

#[test]
fn killing_one_auth_server_fails_no_login_or_device_authentication() {
    let db = PgDb::create("failover");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = db.config_file(tmp.path());
    let a = Server::opts().config(&cfg).start();
    let b = Server::opts().config(&cfg).start();
    assert_eq!(a.pin, b.pin, "one cluster, one CA");
    let proxies = format!("{},{}", a.addr, b.addr);
    let pin = a.pin.clone();

    let cap = a.write_file(
        "cap.yaml",
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec:\n  device_trust: {mode: optional, allow_software_credentials: true}\n",
    );
    a.dtctl(&["create", "-f", &cap, "--force"]).ok();

    // Users with enrolled software devices, all logged in through the address list.
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let user = format!("user{i}");
            let token = a.add_user(&user, "access,editor", "root");
            let c = Client {
                user,
                home: Home::new(),
                device: tempfile::tempdir().unwrap(),
                serial: format!("FAILOVER-{i}"),
            };
            c.run(
                &[
                    "login",
                    &format!("--proxy={proxies}"),
                    &format!("--user={}", c.user),
                    &format!("--signup-token={token}"),
                    "--password-stdin",
                    &format!("--ca-pin={}", a.pin),
                ],
                &format!("{PW}\n"),
            )
            .ok();
            c.run(&["device", "enroll", "--current-device"], "").ok();
            let again = c.login(&proxies, &a.pin);
            assert!(login_and_device_ok(&again), "{again}");
            c
        })
        .collect();

    // A node that knows both auth servers.
    let token = a.dtctl(&["tokens", "add", "--type=node", "--format=text"]);
    let token = token.ok().trim().to_string();
    let node_dir = tmp.path().join("node");
    let mut node = NodeProc::start(&proxies, &token, &pin, "failover-node", &node_dir, &[]);
    let ssh = clients[0].run(&["ssh", "root@failover-node", "echo", "through-a"], "");
    assert!(ssh.ok().contains("through-a"), "{ssh}");

    // Load: every client logs in (password, certificates, device authentication) in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let results: Arc<Mutex<Vec<(Instant, Out)>>> = Arc::default();
    std::thread::scope(|scope| {
        for c in &clients {
            let (stop, results, proxies, pin) = (stop.clone(), results.clone(), &proxies, &pin);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let out = c.login(proxies, pin);
                    results.lock().unwrap().push((Instant::now(), out));
                }
            });
        }
        // Let every client reach server A, then kill it mid-load.
        let t0 = Instant::now();
        while results.lock().unwrap().len() < 2 * CLIENTS && t0.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        *killed_at.lock().unwrap() = Some(Instant::now());
        a.kill();
        // Keep the load going until every client has finished several logins after the kill.
        let t1 = Instant::now();
        loop {
            let after = {
                let k = killed_at.lock().unwrap().unwrap();
                results
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(t, _)| *t > k)
                    .count()
            };
            if after >= 3 * CLIENTS || t1.elapsed() > Duration::from_secs(90) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });

    let killed = killed_at.lock().unwrap().unwrap();
    let results = results.lock().unwrap();
    let failed: Vec<&Out> = results
        .iter()
        .map(|(_, o)| o)
        .filter(|o| !login_and_device_ok(o))
        .collect();
    let after = results.iter().filter(|(t, _)| *t > killed).count();
    assert!(
        failed.is_empty(),
        "{} of {} logins failed around the kill; first:\n{}",
        failed.len(),
        results.len(),
        failed[0]
    );
    assert!(
        after >= 3 * CLIENTS,
        "only {after} logins finished after the kill"
    );

    // The survivor holds the whole story: device authentications after the kill, and
    // the node, reconnected to it, still sees the cluster (a new lock reaches it).
    let auths = b.events(&["--type=device.authenticate"]);
    assert!(
        auths.iter().filter(|e| e["success"] == true).count() >= CLIENTS + after,
        "device.authenticate events on the survivor: {}",
        auths.len()
    );
    let ssh = clients[0].run(&["ssh", "root@failover-node", "echo", "through-b"], "");
    assert!(ssh.ok().contains("through-b"), "{ssh}");
    b.dtctl(&["lock", "--user=user1", "--message=failover check"])
        .ok();
    let t = Instant::now();
    loop {
        let out = clients[1].run(&["ssh", "root@failover-node", "true"], "");
        if out.stderr.contains("lock targeting") && out.stderr.contains("failover check") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the node never saw the lock made on the surviving server:\n{out}\n-- node log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    node.stop();
}

/// Device-ceremony limits belong to the cluster: ceremonies on either auth server count
/// against one budget per user (`limits.device_ceremonies_per_minute`).
#[test]
fn device_ceremony_limits_are_shared_by_the_auth_servers() {
    let db = PgDb::create("sharedlimit");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("devtrust.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: v1\nstorage:\n  type: postgres\n  conn: \"{}\"\nlimits:\n  device_ceremonies_per_minute: 4\n",
            db.conn()
        ),
    )
    .unwrap();
    let a = Server::opts().config(&cfg).start();
    let b = Server::opts().config(&cfg).start();
    let cap = a.write_file(
        "cap.yaml",
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec:\n  device_trust: {mode: optional, allow_software_credentials: true}\n",
    );
    a.dtctl(&["create", "-f", &cap, "--force"]).ok();
    let token = a.add_user("lim", "access,editor", "root");
    let c = Client {
        user: "lim".into(),
        home: Home::new(),
        device: tempfile::tempdir().unwrap(),
        serial: "LIMIT-1".into(),
    };
    c.run(
        &[
            "login",
            &format!("--proxy={}", a.addr),
            "--user=lim",
            &format!("--signup-token={token}"),
            "--password-stdin",
            &format!("--ca-pin={}", a.pin),
        ],
        &format!("{PW}\n"),
    )
    .ok();
    // The budget is per fixed minute (aligned to the epoch): start early in one, so the five
    // ceremonies below (a few seconds) fall in the same window.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 40 {
        std::thread::sleep(Duration::from_secs(61 - into_minute));
    }
    // Ceremonies 1 and 2 on A: enrollment, then the authentication that follows it.
    c.run(&["device", "enroll", "--current-device"], "").ok();
    // 3 on B, 4 on A: logins that authenticate the device.
    for srv in [&b, &a] {
        let out = c.login(&srv.addr, &srv.pin);
        assert!(login_and_device_ok(&out), "{out}");
    }
    // 5 on B: over the cluster's budget, though B itself saw only one.
    let out = c.login(&b.addr, &b.pin);
    out.ok();
    assert!(
        out.stderr.contains("too many device ceremonies for lim"),
        "{out}"
    );
    let refused: Vec<_> = b
        .events(&["--type=device.authenticate"])
        .into_iter()
        .filter(|e| e["success"] == false)
        .collect();
    assert!(
        refused.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many device ceremonies"))),
        "{refused:?}"
    );
}
