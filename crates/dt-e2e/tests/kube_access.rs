//! Kubernetes access through `devtrust kube start` with the real `kubectl`, against the
//! test-only API server of `dt-fakekube` (no real kube-apiserver runs here). kubectl uses
//! the context `dtsh kube login` wrote: the access point's pinned serving certificate and
//! the `dtsh kube credentials` exec plugin (the profile's certificate, with the device when
//! it authenticated one). The access point decides, impersonates, and forwards with its
//! own credentials; the fake server records the impersonation headers it received.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::db::{set_cluster_mode, wait_until};
use common::*;
use dt_fakekube::{Credential, FakeKube};

const PW: &str = "correct horse battery";

/// One person at one machine: a dtsh profile, a software device, a kubeconfig.
struct User {
    name: String,
    home: Home,
    device: tempfile::TempDir,
    serial: String,
    kube_home: tempfile::TempDir,
}

impl User {
    fn new(srv: &Server, name: &str, roles: &str) -> User {
        let token = srv.add_user(name, roles, "");
        let u = User {
            name: name.into(),
            home: Home::new(),
            device: tempfile::tempdir().unwrap(),
            serial: format!("KUBE-{name}"),
            kube_home: tempfile::tempdir().unwrap(),
        };
        u.dtsh(
            &[
                "login",
                &format!("--proxy={}", srv.addr),
                &format!("--user={name}"),
                &format!("--signup-token={token}"),
                "--password-stdin",
                &format!("--ca-pin={}", srv.pin),
            ],
            &format!("{PW}\n"),
        )
        .ok();
        u
    }

    fn kubeconfig(&self) -> PathBuf {
        self.kube_home.path().join("config")
    }

    fn dtsh(&self, args: &[&str], stdin: &str) -> Out {
        Run::new(&DTSH, args.iter().copied())
            .env("DTSH_HOME", &self.home.path)
            .env("DTSH_DEVICE_HOME", self.device.path())
            .env("DTSH_DEVICE_SERIAL", &self.serial)
            .env("DTSH_DEVICE_KEYSTORE", "software")
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.kube_home.path())
            .stdin(stdin)
            .run()
    }

    fn login(&self, srv: &Server) -> Out {
        self.dtsh(
            &[
                "login",
                &format!("--proxy={}", srv.addr),
                &format!("--user={}", self.name),
                "--password-stdin",
                &format!("--ca-pin={}", srv.pin),
            ],
            &format!("{PW}\n"),
        )
    }

    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.kube_home.path())
            .env("DTSH_HOME", &self.home.path)
            .env_remove("KUBECTL_REMOTE_COMMAND_WEBSOCKETS")
            .stdin(Stdio::null());
        c
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--request-timeout=20s"];
        all.extend_from_slice(args);
        self.kubectl_cmd(&all).output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n-- stdout\n{}\n-- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected a refusal: {}", text(o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(needle),
        "expected {needle:?} in {}",
        text(o)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn set_roles(srv: &Server, user: &User, roles: &str) {
    let f = srv.write_file(
        &format!("{}.yaml", user.name),
        &format!(
            "kind: user\nversion: v2\nmetadata: {{name: {}}}\nspec: {{roles: [{roles}]}}\n",
            user.name
        ),
    );
    srv.dtctl(&["create", "-f", &f, "--force"]).ok();
    user.login(srv).ok();
}

const ROLES: &str = "\
kind: role
version: v7
metadata: {name: kube-dev}
spec: {allow: {kubernetes_labels: {env: dev}, kubernetes_groups: [developers, viewers], kubernetes_users: [alice, ops-bot]}}
---
kind: role
version: v7
metadata: {name: kube-one}
spec: {allow: {kubernetes_labels: {env: dev}, kubernetes_groups: [viewers]}}
---
kind: role
version: v7
metadata: {name: kube-trusted}
spec: {options: {device_trust_mode: required}, allow: {kubernetes_labels: {env: dev}, kubernetes_groups: [viewers]}}
";

#[test]
fn kubectl_through_the_access_point_with_roles_modes_locks_and_audit() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        panic!("kubectl is not installed: run scripts/install-deps.sh");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(FakeKube::start());
    let srv = Server::start();
    let scratch = srv.scratch().to_path_buf();
    let cap = srv.write_file(
        "cap.yaml",
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec:\n  device_trust: {mode: optional, allow_software_credentials: true}\n",
    );
    srv.dtctl(&["create", "-f", &cap, "--force"]).ok();
    let roles = srv.write_file("kube-roles.yaml", ROLES);
    srv.dtctl(&["create", "-f", &roles]).ok();

    // The access point, with a client certificate to the API server.
    let upstream = write(
        &scratch,
        "ap.kubeconfig",
        &api.kubeconfig(Credential::ClientCert),
    );
    let token = srv
        .dtctl(&["tokens", "add", "--type=kube", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let data = scratch.join("kube-ap");
    let ap = AccessPoint::start(
        "kube",
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=kube1".into(),
            "--listen=127.0.0.1:0".into(),
            "--labels=env=dev".into(),
            format!("--kubeconfig={}", upstream.display()),
            format!("--data-dir={}", data.display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
        ],
    );

    // alice (kube-one: no kubernetes_users, so she is impersonated as herself).
    let alice = User::new(&srv, "alice", "kube-one");
    wait_until("kube1 in dtsh kube ls", || {
        alice.dtsh(&["kube", "ls"], "").ok().contains("kube1")
    });
    let ls = alice.dtsh(&["kube", "ls", "--format=json"], "").json();
    assert_eq!(ls[0]["name"], "kube1");
    assert_eq!(ls[0]["labels"]["env"], "dev");
    let login = alice.dtsh(&["kube", "login", "kube1"], "");
    assert!(
        login
            .ok()
            .contains("Logged into Kubernetes cluster \"kube1\""),
        "{login}"
    );
    let unknown = alice.dtsh(&["kube", "login", "nope"], "");
    unknown.fails_with("Kubernetes cluster \"nope\" is not online");

    // kubectl get pods, auth whoami, exec: allowed, as alice with the roles' groups.
    api.clear_requests();
    let pods = ok(&alice.kubectl(&["get", "pods"]));
    assert!(pods.contains("web-0") && pods.contains("web-1"), "{pods}");
    let recorded = api.requests();
    assert!(!recorded.is_empty());
    for r in &recorded {
        assert_eq!(r.authenticated, dt_fakekube::CLIENT_CERT_USER, "{r:?}");
        assert_eq!(r.impersonate_user.as_deref(), Some("alice"), "{r:?}");
        assert_eq!(r.impersonate_groups, ["viewers"], "{r:?}");
        assert!(r.impersonate_other.is_empty(), "{r:?}");
    }
    let who = ok(&alice.kubectl(&["auth", "whoami"]));
    assert!(who.contains("alice") && who.contains("viewers"), "{who}");
    let exec = ok(&alice.kubectl(&["exec", "web-0", "--", "echo", "hello", "kube"]));
    assert_eq!(exec.trim(), "hello kube");
    let me = ok(&alice.kubectl(&["exec", "web-0", "--", "whoami"]));
    assert!(me.starts_with("alice viewers"), "{me}");
    let ns = ok(&alice.kubectl(&["get", "namespaces"]));
    assert!(ns.contains("kube-system"), "{ns}");

    // A watch streams through: a pod added upstream shows up.
    let mut watch = alice
        .kubectl_cmd(&["get", "pods", "--watch", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let wout = watch.stdout.take().unwrap();
    let (wtx, wrx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(wout).lines() {
            let Ok(line) = line else { return };
            let _ = wtx.send(line);
        }
    });
    let mut watched = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut added = false;
    while Instant::now() < deadline {
        if !added && watched.iter().any(|l: &String| l.contains("web-1")) {
            api.add_pod("default", "batch-7");
            added = true;
        }
        if let Ok(l) = wrx.recv_timeout(Duration::from_millis(200)) {
            watched.push(l);
        }
        if watched.iter().any(|l| l.contains("batch-7")) {
            break;
        }
    }
    assert!(
        watched
            .iter()
            .any(|l| l.contains("batch-7") && l.contains("ADDED")),
        "the watch did not stream the new pod: {watched:?}"
    );

    // --as / --as-group: allowed within the roles, refused beyond them.
    set_roles(&srv, &alice, "kube-dev");
    let several = alice.kubectl(&["get", "pods"]);
    refused(
        &several,
        "your roles allow several Kubernetes users (alice, ops-bot)",
    );
    api.clear_requests();
    let as_ops = ok(&alice.kubectl(&["auth", "whoami", "--as=ops-bot", "--as-group=developers"]));
    assert!(
        as_ops.contains("ops-bot") && as_ops.contains("developers"),
        "{as_ops}"
    );
    let last = api.requests().pop().unwrap();
    assert_eq!(last.impersonate_user.as_deref(), Some("ops-bot"));
    assert_eq!(last.impersonate_groups, ["developers"]);
    let as_user_only = ok(&alice.kubectl(&["auth", "whoami", "--as=alice"]));
    assert!(
        as_user_only.contains("developers") && as_user_only.contains("viewers"),
        "{as_user_only}"
    );
    refused(
        &alice.kubectl(&["get", "pods", "--as=system:admin"]),
        "access denied to Kubernetes cluster \"kube1\" as user system:admin",
    );
    refused(
        &alice.kubectl(&["get", "pods", "--as=alice", "--as-group=system:masters"]),
        "with groups system:masters",
    );
    refused(
        &alice.kubectl(&["get", "pods", "--as=alice", "--as-uid=0"]),
        "impersonation headers",
    );
    // dtsh kube login --kube-user picks one of several users.
    alice
        .dtsh(&["kube", "login", "kube1", "--kube-user=ops-bot"], "")
        .ok();
    let who = ok(&alice.kubectl(&["auth", "whoami"]));
    assert!(who.contains("ops-bot"), "{who}");
    alice
        .dtsh(
            &[
                "kube",
                "login",
                "kube1",
                "--kube-user=alice",
                "--kube-group=viewers",
            ],
            "",
        )
        .ok();
    let who = ok(&alice.kubectl(&["auth", "whoami"]));
    assert!(
        who.contains("alice") && !who.contains("developers"),
        "{who}"
    );

    // Mode x role x device: each case allowed or refused as the seeds say.
    let carol = User::new(&srv, "carol", "kube-one,editor");
    carol
        .dtsh(&["device", "enroll", "--current-device"], "")
        .ok();
    let again = carol.login(&srv);
    assert!(again.ok().contains("devtrust-device-id"), "{again}");
    carol.dtsh(&["kube", "login", "kube1"], "").ok();
    let dave = User::new(&srv, "dave", "kube-one");
    dave.dtsh(&["kube", "login", "kube1"], "").ok();
    let cases = [
        // (cluster mode, role, trusted device?, allowed?)
        ("optional", "kube-one", false, true),
        ("optional", "kube-one", true, true),
        ("optional", "kube-trusted", false, false),
        ("optional", "kube-trusted", true, true),
        ("required", "kube-one", false, false),
        ("required", "kube-one", true, true),
        ("required", "kube-trusted", false, false),
        ("required", "kube-trusted", true, true),
    ];
    let mut mode_now = "optional";
    for (mode, role, trusted, allowed) in cases {
        if mode != mode_now {
            let cap = srv.write_file(
                "cap.yaml",
                &format!("kind: cluster_auth_preference\nversion: v2\nmetadata: {{name: cluster-auth-preference}}\nspec:\n  device_trust: {{mode: {mode}, allow_software_credentials: true}}\n"),
            );
            srv.dtctl(&["create", "-f", &cap, "--force"]).ok();
            mode_now = mode;
        }
        let who = if trusted { &carol } else { &dave };
        set_roles(&srv, who, role);
        if trusted {
            assert!(who.login(&srv).ok().contains("devtrust-device-id"));
        }
        let case = format!("mode {mode}, role {role}, trusted device {trusted}");
        let check = |o: &Output| {
            if allowed {
                o.status.success()
            } else {
                let e = String::from_utf8_lossy(&o.stderr);
                !o.status.success()
                    && e.contains("Forbidden")
                    && (e.contains("unauthorized device")
                        || e.contains("a trusted device is required"))
                    && e.contains("dtsh device enroll")
            }
        };
        wait_until(&format!("{case}: kubectl get pods"), || {
            check(&who.kubectl(&["get", "pods"]))
        });
        // kubectl auth whoami hides a 403's message ("the selfsubjectreviews API is not
        // enabled ... or you do not have permission"): only the outcome is checked.
        let o = who.kubectl(&["auth", "whoami"]);
        assert_eq!(
            o.status.success(),
            allowed,
            "{case}: auth whoami: {}",
            text(&o)
        );
        let o = who.kubectl(&["exec", "web-0", "--", "echo", "x"]);
        assert!(check(&o), "{case}: exec: {}", text(&o));
        let w = who.kubectl(&["get", "pods", "--watch", "--request-timeout=2s"]);
        if !allowed {
            assert!(check(&w), "{case}: watch: {}", text(&w));
        }
    }
    set_cluster_mode(&srv, "optional");
    set_roles(&srv, &alice, "kube-one");
    alice.dtsh(&["kube", "login", "kube1"], "").ok();
    wait_until("optional again", || {
        alice.kubectl(&["get", "pods"]).status.success()
    });

    // Bad input: no client certificate, another CA's certificate, forged headers, an
    // unknown cluster.
    let no_cert = Command::new("kubectl")
        .args([
            "get",
            "pods",
            &format!("--server=https://{}/kube/kube1", ap.addr),
            "--insecure-skip-tls-verify",
            "--token=not-a-devtrust-credential",
            "--request-timeout=10s",
        ])
        .env("KUBECONFIG", "/dev/null")
        .env("HOME", alice.kube_home.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    refused(&no_cert, "a devtrust client certificate is required");
    let other_ca = Command::new("kubectl")
        .args([
            "get",
            "pods",
            &format!("--server=https://{}/kube/kube1", ap.addr),
            "--insecure-skip-tls-verify",
            &format!("--client-certificate={}", data.join("tls.crt").display()),
            &format!("--client-key={}", data.join("key.pem").display()),
            "--request-timeout=10s",
        ])
        .env("KUBECONFIG", "/dev/null")
        .env("HOME", alice.kube_home.path())
        .output()
        .unwrap();
    assert!(
        !other_ca.status.success(),
        "a host-CA certificate must not pass: {}",
        text(&other_ca)
    );
    let unknown = alice.kubectl(&[
        "get",
        "pods",
        &format!("--server=https://{}/kube/nope", ap.addr),
    ]);
    refused(
        &unknown,
        "Kubernetes cluster \"nope\" is not served by this access point",
    );

    // A lock ends a live exec with its message, and refuses new requests.
    let live = alice
        .kubectl_cmd(&["exec", "web-0", "--", "sleep", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the exec session started", || {
        srv.events(&["--type=kube.exec.start"])
            .iter()
            .any(|e| e["command"] == "sleep 60")
    });
    let locked_at = Instant::now();
    srv.dtctl(&["lock", "--user=alice", "--message=account under review"])
        .ok();
    let out = live.wait_with_output().unwrap();
    let took = locked_at.elapsed();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("lock targeting User:\"alice\" is in force: account under review"),
        "{}",
        text(&out)
    );
    // Speed is the benchmark's (benches/kube.rs prints lock-to-end latency); printed here.
    eprintln!("the lock ended the live exec {took:?} after dtctl lock started");
    refused(
        &alice.kubectl(&["get", "pods"]),
        "lock targeting User:\"alice\"",
    );
    let _ = watch.kill();
    let _ = watch.wait();

    // Audit: requests with verb, resource, namespace, code and the device; exec start/end;
    // refusals.
    wait_until("kube.exec.end events", || {
        !srv.events(&["--type=kube.exec.end"]).is_empty()
    });
    let reqs = srv.events(&["--type=kube.request"]);
    assert!(
        reqs.iter()
            .any(|e| e["command"] == "list pods in namespace \"default\""
                && e["exit_code"] == 200
                && e["user"] == "alice"
                && e["login"] == "alice"),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|e| e["user"] == "carol" && e["device"]["asset_tag"].is_string()),
        "carol's requests carry her device: {reqs:?}"
    );
    let denied = srv.events(&["--type=access.denied"]);
    assert!(
        denied.iter().any(|e| e["resource_name"] == "kube1"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains("unauthorized device")),
        "{denied:?}"
    );
    assert!(
        !srv.events(&["--type=session.terminate"]).is_empty(),
        "the lock's termination is audited"
    );

    // The API server down: a clear Status, no crash; then logout removes the context.
    assert!(carol.kubectl(&["get", "pods"]).status.success());
    drop(api);
    let down = carol.kubectl(&["get", "pods"]);
    refused(&down, "is unreachable");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("ServiceUnavailable"),
        "{}",
        text(&down)
    );
    carol.dtsh(&["kube", "logout"], "").ok();
    let cfg = std::fs::read_to_string(carol.kubeconfig()).unwrap();
    assert!(!cfg.contains("kube1"), "{cfg}");
    drop(rt);
    drop(ap);
}

/// `--config`: one access point serves two clusters, one reached with a bearer token and
/// one with a client certificate; each is its own resource (listing, labels, decision).
#[test]
fn one_access_point_serves_several_clusters_from_a_config_file() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(FakeKube::start());
    let srv = Server::start();
    let scratch = srv.scratch().to_path_buf();
    write(&scratch, "a.kubeconfig", &api.kubeconfig(Credential::Token));
    write(
        &scratch,
        "b.kubeconfig",
        &api.kubeconfig(Credential::ClientCert),
    );
    let config = write(
        &scratch,
        "clusters.yaml",
        "clusters:\n  - {name: kube-a, kubeconfig: a.kubeconfig, labels: {env: dev}}\n  - {name: kube-b, kubeconfig: b.kubeconfig, labels: {env: prod}}\n",
    );
    let role = srv.write_file(
        "role.yaml",
        "kind: role\nversion: v7\nmetadata: {name: kube-dev}\nspec: {allow: {kubernetes_labels: {env: dev}, kubernetes_groups: [viewers]}}\n",
    );
    srv.dtctl(&["create", "-f", &role]).ok();
    let token = srv
        .dtctl(&["tokens", "add", "--type=kube", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let ap = AccessPoint::start(
        "kube",
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=kube-ap".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--config={}", config.display()),
            format!("--data-dir={}", scratch.join("ap").display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
        ],
    );
    let bob = User::new(&srv, "bob", "kube-dev");
    wait_until("kube-a listed", || {
        bob.dtsh(&["kube", "ls"], "").ok().contains("kube-a")
    });
    let ls = bob.dtsh(&["kube", "ls"], "").ok().to_string();
    assert!(
        !ls.contains("kube-b"),
        "bob's roles do not reach env=prod: {ls}"
    );
    bob.dtsh(&["kube", "login", "kube-b"], "").fails_with(
        "Kubernetes cluster \"kube-b\" is not online, or your roles do not let you reach it",
    );
    bob.dtsh(&["kube", "login", "kube-a"], "").ok();
    api.clear_requests();
    let pods = ok(&bob.kubectl(&["get", "pods", "-A"]));
    assert!(pods.contains("coredns-0"), "{pods}");
    let r = api.requests().pop().unwrap();
    assert_eq!(
        r.authenticated,
        dt_fakekube::TOKEN_USER,
        "kube-a uses the bearer token"
    );
    assert_eq!(r.impersonate_user.as_deref(), Some("bob"));
    // logs -f streams through.
    let mut logs = bob
        .kubectl_cmd(&["logs", "-f", "web-0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(logs.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let third = lines.nth(1).unwrap().unwrap();
    let _ = logs.kill();
    let _ = logs.wait();
    assert_eq!(first, "web-0: log line 1");
    assert_eq!(
        third, "web-0: log line 3",
        "lines arrive as the server writes them"
    );
    // kube-b through the same access point: the decision refuses it (labels env=prod).
    let b = bob.kubectl(&[
        "get",
        "pods",
        &format!("--server=https://{}/kube/kube-b", ap.addr),
    ]);
    refused(&b, "access denied to Kubernetes cluster \"kube-b\"");
    drop(ap);
    drop(api);
}
