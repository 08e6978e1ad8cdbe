//! The real binaries end to end: `devtrust start`, `devtrust node start`, `dtctl`, `dtsh`,
//! and OpenSSH's `ssh` with `dtsh config`. What a person sees is checked word for word.
//!
//! The binaries are the ones of this build (`target/<profile>/`); they are built first when
//! missing. After changing dt-cli, build it (`cargo build -p dt-cli`) before
//! `cargo test -p dt-node` (the workspace test run builds them itself).
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

struct Env {
    dir: tempfile::TempDir,
    home: PathBuf,
    auth_dir: String,
}

impl Env {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Out {
        self.run_home(&self.home, program, args, stdin)
    }

    fn run_home(&self, home: &Path, program: &str, args: &[&str], stdin: Option<&str>) -> Out {
        let mut c = Command::new(dt_node_testkit::cli_binary(program));
        c.args(args)
            .env("DTSH_HOME", home)
            .env_remove("DTSH_PROXY")
            .env_remove("DTSH_USER")
            .env_remove("DTCTL_DATA_DIR")
            .env_remove("DTCTL_AUTH_SERVER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            use std::io::Write;
            let mut si = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                si.write_all(s.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn dtctl(&self, args: &[&str]) -> Out {
        let mut a = vec!["--data-dir", self.auth_dir.as_str()];
        a.extend_from_slice(args);
        let out = self.run("dtctl", &a, None);
        assert_eq!(out.code, Some(0), "dtctl {args:?}: {out:?}");
        out
    }
}

/// A long-running process; killed (SIGTERM) on drop.
struct Daemon {
    child: Child,
    lines: Vec<String>,
}

impl Daemon {
    fn start(program: &str, args: &[&str], ready: &str) -> Daemon {
        let mut child = Command::new(dt_node_testkit::cli_binary(program))
            .args(args)
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
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let mut lines = Vec::new();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                let done = l.starts_with(ready);
                lines.push(l);
                if done {
                    return Daemon { child, lines };
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{program} did not print {ready:?}: {lines:?}");
    }

    fn field(&self, name: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.lines))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn binaries_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        home: dir.path().join("alice-home"),
        auth_dir: dir.path().join("auth").to_string_lossy().into_owned(),
        dir,
    };
    let auth_dir = env.auth_dir.clone();
    let auth = Daemon::start(
        "devtrust",
        &["start", "--data-dir", &auth_dir, "--listen", "127.0.0.1:0"],
        "Next:",
    );
    let addr = auth.field("listen:");
    let pin = auth.field("CA pin:");

    // A node joins with a node token.
    let token = env
        .dtctl(&["tokens", "add", "--type=node", "--format=text"])
        .stdout
        .trim()
        .to_string();
    let node_dir = env.dir.path().join("node").to_string_lossy().into_owned();
    let node = Daemon::start(
        "devtrust",
        &[
            "node",
            "start",
            &format!("--auth-server={addr}"),
            &format!("--token={token}"),
            "--name=node1",
            "--listen=127.0.0.1:0",
            "--labels=env=dev,team=core",
            &format!("--data-dir={node_dir}"),
            &format!("--ca-pin={pin}"),
            "--heartbeat=1s",
        ],
        "Next:",
    );
    let node_addr = node.field("listen:");

    // A user signs up and logs in.
    let added = env.dtctl(&["users", "add", "alice", "--roles=access", "--logins=root"]);
    let signup = added
        .stdout
        .split("--signup-token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let login = |env: &Env| {
        env.run(
            "dtsh",
            &[
                "login",
                &format!("--proxy={addr}"),
                "--user=alice",
                "--password-stdin",
                &format!("--ca-pin={pin}"),
            ],
            Some("correct horse battery\n"),
        )
    };
    let first = env.run(
        "dtsh",
        &[
            "login",
            &format!("--proxy={addr}"),
            "--user=alice",
            &format!("--signup-token={signup}"),
            "--password-stdin",
            &format!("--ca-pin={pin}"),
        ],
        Some("correct horse battery\n"),
    );
    assert_eq!(first.code, Some(0), "{first:?}");

    // dtsh ls lists the live node.
    wait_until("node1 in dtsh ls", || {
        env.run("dtsh", &["ls"], None).stdout.contains("node1")
    });
    let ls = env.run("dtsh", &["ls"], None);
    let lines: Vec<&str> = ls.stdout.lines().collect();
    assert!(lines[0].starts_with("Node Name"), "{ls:?}");
    assert!(
        lines[0].contains("Address") && lines[0].contains("Labels"),
        "{ls:?}"
    );
    assert!(
        lines[2].starts_with("node1")
            && lines[2].contains(&node_addr)
            && lines[2].contains("env=dev,team=core"),
        "{ls:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.run("dtsh", &["ls", "--format=json"], None).stdout).unwrap();
    assert_eq!(json[0]["name"], "node1");
    assert_eq!(json[0]["labels"]["team"], "core");

    // dtsh ssh: output and exit code.
    let out = env.run(
        "dtsh",
        &["ssh", "root@node1", "echo hi from $DEVTRUST_NODE; exit 3"],
        None,
    );
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout, "hi from node1\n");
    let out = env.run(
        "dtsh",
        &["ssh", "-l", "root", "node1", "cat"],
        Some("piped stdin\n"),
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "piped stdin\n"),
        "{out:?}"
    );
    let out = env.run("dtsh", &["ssh", "root@nowhere", "true"], None);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .starts_with("ERROR: node \"nowhere\" is not online"),
        "{out:?}"
    );

    // dtsh config: plain OpenSSH with the profile's key and certificate.
    let cfg = env.dir.path().join("ssh_config");
    let conf = env.run("dtsh", &["config"], None);
    assert_eq!(conf.code, Some(0), "{conf:?}");
    std::fs::write(&cfg, &conf.stdout).unwrap();
    let ssh = Command::new("ssh")
        .args(["-F"])
        .arg(&cfg)
        .args(["-o", "BatchMode=yes", "root@node1", "echo openssh; exit 4"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        ssh.status.code(),
        Some(4),
        "{}\n{}",
        String::from_utf8_lossy(&ssh.stderr),
        conf.stdout
    );
    assert_eq!(String::from_utf8_lossy(&ssh.stdout), "openssh\n");

    // Role-based device trust: the seeds' message and how to enroll.
    let user = env.dir.path().join("alice.yaml");
    std::fs::write(
        &user,
        "kind: user\nversion: v2\nmetadata: {name: alice}\nspec: {roles: [access, require-trusted-device], traits: {logins: [root]}}\n",
    )
    .unwrap();
    env.dtctl(&["create", "-f", user.to_str().unwrap(), "--force"]);
    assert_eq!(login(&env).code, Some(0));
    let out = env.run("dtsh", &["ssh", "root@node1", "true"], None);
    assert_eq!(out.code, Some(1), "{out:?}");
    let err: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.starts_with("WARNING") && !l.starts_with("Enroll it"))
        .collect();
    assert_eq!(
        err[0], "ERROR: access denied to root connecting to node1",
        "{out:?}"
    );
    assert!(
        err[1].contains("dtsh device enroll --current-device"),
        "{out:?}"
    );
    assert!(err[1].contains("ask an admin"), "{out:?}");

    // Cluster-wide required: the seeds' message, word for word.
    std::fs::write(
        &user,
        "kind: user\nversion: v2\nmetadata: {name: alice}\nspec: {roles: [access], traits: {logins: [root]}}\n",
    )
    .unwrap();
    env.dtctl(&["create", "-f", user.to_str().unwrap(), "--force"]);
    assert_eq!(login(&env).code, Some(0));
    let cap = env.dir.path().join("cap.yaml");
    std::fs::write(
        &cap,
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec: {device_trust: {mode: required-for-humans}}\n",
    )
    .unwrap();
    env.dtctl(&["create", "-f", cap.to_str().unwrap(), "--force"]);
    wait_until("the node to apply the mode", || {
        env.run("dtsh", &["ssh", "root@node1", "true"], None).code == Some(1)
    });
    let out = env.run("dtsh", &["ssh", "root@node1", "true"], None);
    assert_eq!(
        out.stderr.lines().find(|l| l.starts_with("ERROR")),
        Some("ERROR: ssh: rejected: administratively prohibited (unauthorized device)"),
        "{out:?}"
    );

    // A bot: no device needed under required-for-humans.
    let bot_token = env
        .dtctl(&[
            "bots",
            "add",
            "ci",
            "--roles=access",
            "--logins=root",
            "--format=text",
        ])
        .stdout
        .trim()
        .to_string();
    let bot_home = env.dir.path().join("bot-home");
    let bl = env.run_home(
        &bot_home,
        "dtsh",
        &[
            "login",
            "--bot",
            &format!("--token={bot_token}"),
            &format!("--proxy={addr}"),
            &format!("--ca-pin={pin}"),
        ],
        None,
    );
    assert_eq!(bl.code, Some(0), "{bl:?}");
    assert!(bl.stdout.contains("Logged in as:       ci (bot)"), "{bl:?}");
    assert!(bl.stdout.contains("devtrust-bot"), "{bl:?}");
    let out = env.run_home(
        &bot_home,
        "dtsh",
        &["ssh", "root@node1", "echo bot; exit 6"],
        None,
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(6), "bot\n"),
        "{out:?}"
    );
    // ...but under required, the bot is refused too.
    std::fs::write(
        &cap,
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec: {device_trust: {mode: required}}\n",
    )
    .unwrap();
    env.dtctl(&["create", "-f", cap.to_str().unwrap(), "--force"]);
    wait_until("the bot refused", || {
        env.run_home(&bot_home, "dtsh", &["ssh", "root@node1", "true"], None)
            .code
            == Some(1)
    });
    let out = env.run_home(&bot_home, "dtsh", &["ssh", "root@node1", "true"], None);
    assert_eq!(
        out.stderr.trim(),
        "ERROR: ssh: rejected: administratively prohibited (unauthorized device)"
    );

    // A lock: its message, word for word.
    std::fs::write(
        &cap,
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec: {device_trust: {mode: optional}}\n",
    )
    .unwrap();
    env.dtctl(&["create", "-f", cap.to_str().unwrap(), "--force"]);
    wait_until("alice back in", || {
        env.run("dtsh", &["ssh", "root@node1", "true"], None).code == Some(0)
    });
    let lock = env.dtctl(&["lock", "--login=root", "--ttl=1h"]);
    assert!(
        lock.stdout.starts_with("Created a lock with name \""),
        "{lock:?}"
    );
    wait_until("the lock applied", || {
        env.run("dtsh", &["ssh", "root@node1", "true"], None).code == Some(1)
    });
    let out = env.run("dtsh", &["ssh", "root@node1", "true"], None);
    assert_eq!(
        out.stderr.lines().find(|l| l.starts_with("ERROR")),
        Some(
            "ERROR: ssh: rejected: administratively prohibited (lock targeting Login:\"root\" is in force)"
        ),
        "{out:?}"
    );

    // The audit log has the node's events.
    let events = env.dtctl(&["events", "ls", "--type=access.denied", "--format=json"]);
    let msgs: Vec<String> = events
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["message"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    for want in [
        "access denied to root connecting to node1: role \"require-trusted-device\" requires a trusted device",
        "unauthorized device: the cluster requires a trusted device",
        "lock targeting Login:\"root\" is in force",
    ] {
        assert!(
            msgs.iter().any(|m| m.contains(want)),
            "no {want:?} in {msgs:?}"
        );
    }
    let ends = env.dtctl(&["events", "ls", "--type=session.end", "--format=json"]);
    assert!(ends.stdout.contains("\"exit_code\":3"), "{ends:?}");
    drop(node);
    drop(auth);
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// An access point killed with SIGKILL while the auth service cannot take its audit events
/// delivers them after a restart: the spool on disk, not memory, holds them.
#[test]
fn audit_events_survive_sigkill_of_the_node_and_an_unreachable_auth_service() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        home: dir.path().join("alice-home"),
        auth_dir: dir.path().join("auth").to_string_lossy().into_owned(),
        dir,
    };
    let auth_dir = env.auth_dir.clone();
    let auth = Daemon::start(
        "devtrust",
        &["start", "--data-dir", &auth_dir, "--listen", "127.0.0.1:0"],
        "Next:",
    );
    let addr = auth.field("listen:");
    let pin = auth.field("CA pin:");
    let token = env
        .dtctl(&["tokens", "add", "--type=node", "--format=text"])
        .stdout
        .trim()
        .to_string();
    let node_dir = env.dir.path().join("node").to_string_lossy().into_owned();
    let node_args = |token: Option<&str>| {
        let mut a = vec![
            "node".to_string(),
            "start".into(),
            format!("--auth-server={addr}"),
            "--name=node1".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--data-dir={node_dir}"),
            format!("--ca-pin={pin}"),
            "--heartbeat=1s".into(),
        ];
        if let Some(t) = token {
            a.push(format!("--token={t}"));
        }
        a
    };
    let args = node_args(Some(&token));
    let node = Daemon::start(
        "devtrust",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "Next:",
    );
    let added = env.dtctl(&["users", "add", "alice", "--roles=access", "--logins=root"]);
    let signup = added
        .stdout
        .split("--signup-token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let first = env.run(
        "dtsh",
        &[
            "login",
            &format!("--proxy={addr}"),
            "--user=alice",
            &format!("--signup-token={signup}"),
            "--password-stdin",
            &format!("--ca-pin={pin}"),
        ],
        Some("correct horse battery\n"),
    );
    assert_eq!(first.code, Some(0), "{first:?}");
    wait_until("node1 in dtsh ls", || {
        env.run("dtsh", &["ls"], None).stdout.contains("node1")
    });
    let cfg = env.dir.path().join("ssh_config");
    let conf = env.run("dtsh", &["config"], None);
    assert_eq!(conf.code, Some(0), "{conf:?}");
    std::fs::write(&cfg, &conf.stdout).unwrap();
    let ssh = |cmd: &str| {
        Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .args(["-o", "BatchMode=yes", "root@node1", cmd])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(ssh("true").status.success());

    // The auth service stops answering (frozen, so the node's calls hang instead of
    // failing fast); the node keeps serving from its view and spools what it sees.
    signal(auth.child.id(), "-STOP");
    let markers: Vec<String> = (0..3).map(|i| format!("echo spooled-{i}")).collect();
    for m in &markers {
        let out = ssh(m);
        assert!(out.status.success(), "{out:?}");
    }
    let spool = Path::new(&node_dir).join("audit").join("spool.jsonl");
    wait_until("the spool holds the exec events", || {
        let text = std::fs::read_to_string(&spool).unwrap_or_default();
        markers.iter().all(|m| text.contains(m.as_str()))
    });

    // Crash the node, bring the auth service back, restart the node from its data dir.
    let node_pid = node.child.id();
    signal(node_pid, "-KILL");
    drop(node);
    signal(auth.child.id(), "-CONT");
    let args = node_args(None);
    let _node = Daemon::start(
        "devtrust",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "Next:",
    );
    wait_until("the spooled exec events reach the audit log", || {
        let out = env.run(
            "dtctl",
            &[
                "--data-dir",
                &env.auth_dir,
                "events",
                "ls",
                "--type=exec",
                "--format=json",
            ],
            None,
        );
        markers.iter().all(|m| out.stdout.contains(m.as_str()))
    });
    wait_until("the spool is emptied once delivered", || {
        std::fs::metadata(&spool).map(|m| m.len()).unwrap_or(1) == 0
    });
}
