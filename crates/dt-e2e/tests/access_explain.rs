//! Issue 12: `dtctl access explain` says what the SSH node really decides, and `dtsh ls`
//! lists only the nodes a user's roles reach. Real binaries: `devtrust start`, two
//! `devtrust node start`, `dtsh login/ls/ssh` and `dtctl access explain`; for each case both
//! the explanation and a real `dtsh ssh` run, and they must agree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const PW: &str = "correct-horse-battery";

const ROLES: &str = "kind: role
version: v7
metadata: {name: prod-root}
spec:
  allow:
    logins: [root]
    node_labels: {env: prod}
---
kind: role
version: v7
metadata: {name: prod-root-trusted}
spec:
  options: {device_trust_mode: required}
  allow:
    logins: [root]
    node_labels: {env: prod}
---
kind: role
version: v7
metadata: {name: any-node-as-nobody}
spec:
  allow:
    logins: [nobody]
    node_labels: {'*': '*'}
";

fn cap(mode: &str) -> String {
    format!(
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {{name: cluster-auth-preference}}\nspec:\n  device_trust: {{mode: {mode}}}\n"
    )
}

/// `dtctl access explain --format=json` for `user` as `login` on `node`: (exit code, JSON).
fn explain(s: &Server, user: &str, node: &str, login: &str) -> (i32, serde_json::Value) {
    let out = s.dtctl(&[
        "access",
        "explain",
        &format!("--user={user}"),
        &format!("--node={node}"),
        &format!("--login={login}"),
        "--no-device",
        "--format=json",
    ]);
    let code = out.code.unwrap();
    assert!(code == 0 || code == 3, "explain failed:\n{out}");
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"));
    (code, v)
}

/// Explain, then `dtsh ssh`, until both agree on the expected decision (the node learns of
/// a change through its watch, a moment after the auth service); `want_ssh_err` is what the
/// refused `dtsh ssh` prints. Returns the explanation.
#[track_caller]
fn agree(
    s: &Server,
    home: &Home,
    user: &str,
    node: &str,
    login: &str,
    allow: bool,
    want_ssh_err: &str,
) -> serde_json::Value {
    let (code, v) = explain(s, user, node, login);
    let decision = if allow { "allow" } else { "deny" };
    assert_eq!(v["decision"], decision, "{v:#}");
    assert_eq!(code, if allow { 0 } else { 3 }, "{v:#}");
    let t = Instant::now();
    loop {
        let out = s.dtsh(home, &["ssh", &format!("{login}@{node}"), "echo", "in"], "");
        let ssh_allowed = out.success() && out.stdout.contains("in");
        if ssh_allowed == allow && (allow || out.stderr.contains(want_ssh_err)) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "explain says {decision} but dtsh ssh disagrees:\n{v:#}\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn reasons_text(v: &serde_json::Value) -> String {
    v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}\n",
                r["check"], r["role"], r["effect"], r["detail"]
            )
        })
        .collect()
}

#[test]
fn explain_agrees_with_the_node_and_ls_shows_only_reachable_nodes() {
    let s = Server::start();
    let roles = s.write_file("roles.yaml", ROLES);
    s.dtctl(&["create", "-f", &roles]).ok();
    let alice = s.new_user("alice", "prod-root", "", PW);
    let tina = s.new_user("tina", "prod-root-trusted", "", PW);
    let nina = s.new_user("nina", "any-node-as-nobody", "", PW);

    let token = s.dtctl(&["tokens", "add", "--type=node", "--format=text"]);
    let token = token.ok().trim().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let _web = NodeProc::start(
        &s.addr,
        &token,
        &s.pin,
        "web1",
        &tmp.path().join("web1"),
        &["--labels=env=prod"],
    );
    let _dev = NodeProc::start(
        &s.addr,
        &token,
        &s.pin,
        "dev1",
        &tmp.path().join("dev1"),
        &["--labels=env=dev"],
    );

    // `dtsh ls`: alice's role reaches env=prod only; nina's reaches both.
    let ls = |home: &Home| -> Vec<String> {
        let v = s.dtsh(home, &["ls", "--format=json"], "").json();
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    };
    let t = Instant::now();
    while ls(&nina) != ["dev1", "web1"] {
        assert!(t.elapsed() < Duration::from_secs(20), "nodes never listed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ls(&alice), ["web1"]);
    let text = s.dtsh(&alice, &["ls"], "").ok().to_string();
    assert!(text.contains("web1") && !text.contains("dev1"), "{text}");

    // 1. Allowed: the role's labels and login match.
    let v = agree(&s, &alice, "alice", "web1", "root", true, "");
    assert_eq!(v["resource"]["labels"]["env"], "prod", "{v:#}");
    assert_eq!(v["device"]["state"], "none", "{v:#}");
    assert!(
        reasons_text(&v).contains("\"role\" \"prod-root\" \"allow\""),
        "{v:#}"
    );

    // 2. Denied by the role's labels: explained, and the node is not even listed, so
    //    dtsh ssh says so.
    let v = agree(
        &s,
        &alice,
        "alice",
        "dev1",
        "root",
        false,
        "your roles do not let you reach it",
    );
    assert!(v["denial"].as_str().unwrap().contains("root"), "{v:#}");
    //    Denied by the node itself: nina sees dev1 but may log in as nobody only.
    let v = agree(&s, &nina, "nina", "dev1", "root", false, "root");
    assert!(
        reasons_text(&v).contains("any-node-as-nobody"),
        "the reasons name the role:\n{v:#}"
    );

    // 3. A granting role requires a trusted device, and tina has none.
    let v = agree(
        &s,
        &tina,
        "tina",
        "web1",
        "root",
        false,
        "access denied to root connecting to web1",
    );
    assert!(
        reasons_text(&v).contains("prod-root-trusted"),
        "the reasons name the role:\n{v:#}"
    );

    // 4. The cluster requires a trusted device.
    let c = s.write_file("cap-required.yaml", &cap("required"));
    s.dtctl(&["create", "-f", &c, "--force"]).ok();
    let v = agree(
        &s,
        &alice,
        "alice",
        "web1",
        "root",
        false,
        "unauthorized device",
    );
    assert_eq!(v["cluster_mode"], "required", "{v:#}");
    let c = s.write_file("cap-optional.yaml", &cap("optional"));
    s.dtctl(&["create", "-f", &c, "--force"]).ok();
    agree(&s, &alice, "alice", "web1", "root", true, "");

    // 5. A lock on the node.
    s.dtctl(&["lock", "--node=web1", "--ttl=1h", "--message=maintenance"])
        .ok();
    let v = agree(&s, &alice, "alice", "web1", "root", false, "lock targeting");
    assert!(reasons_text(&v).contains("lock"), "{v:#}");
    assert_eq!(v["locks_in_force"].as_array().unwrap().len(), 1, "{v:#}");

    // Text output: the decision, then one line per reason; exit 3 on deny.
    let out = s.dtctl(&[
        "access",
        "explain",
        "--user=alice",
        "--node=web1",
        "--login=root",
    ]);
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.starts_with("DENY: user \"alice\""), "{out}");
    assert!(out.stdout.contains("no device given"), "{out}");
    assert!(out.stdout.contains("[ DENY] lock:"), "{out}");

    // Errors: an unknown node names what is online; an unknown user or device is refused;
    // a user without `read` on users and roles may not ask.
    s.dtctl(&[
        "access",
        "explain",
        "--user=alice",
        "--node=nowhere",
        "--login=root",
    ])
    .fails_with("node \"nowhere\" is not online, so its labels are unknown (online: dev1, web1)");
    s.dtctl(&[
        "access",
        "explain",
        "--user=nobody-here",
        "--node=web1",
        "--login=root",
    ])
    .fails_with("user \"nobody-here\" not found");
    s.dtctl(&[
        "access",
        "explain",
        "--user=alice",
        "--device=00000000-0000-4000-8000-000000000000",
        "--node=web1",
        "--login=root",
    ])
    .fails_with("not found");
    s.dtctl_as(
        &alice,
        &[
            "access",
            "explain",
            "--user=alice",
            "--node=web1",
            "--login=root",
        ],
    )
    .fails_with("ask an admin");
    s.dtctl(&["access", "explain", "--user=alice", "--node=web1"])
        .fails_with("--login");
}

#[test]
fn typed_join_tokens_and_removal_by_kind() {
    let s = Server::start();
    // Each type's token says where it goes; an unknown type is a usage error.
    let out = s.dtctl(&["tokens", "add", "--type=db"]).ok().to_string();
    assert!(
        out.contains("The db join token") && out.contains("devtrust db start"),
        "{out}"
    );
    let out = s.dtctl(&["tokens", "add", "--type=node"]).ok().to_string();
    assert!(out.contains("devtrust node start"), "{out}");
    let out = s.dtctl(&["tokens", "add", "--type=printer"]);
    out.fails_with("--type");
    assert_eq!(out.code, Some(2), "{out}");
    // A db token does not join an SSH node.
    let db_token = s.dtctl(&["tokens", "add", "--type=db", "--format=text"]);
    let db_token = db_token.ok().trim().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = Run::new(
        &DEVTRUST,
        [
            "node",
            "start",
            &format!("--auth-server={}", s.addr),
            &format!("--token={db_token}"),
            &format!("--ca-pin={}", s.pin),
            "--name=web1",
            "--listen=127.0.0.1:0",
            "--data-dir",
            &tmp.path().join("node").to_string_lossy(),
        ],
    )
    .run();
    out.fails_with("invalid or expired join token for a node");
    // Removal is per kind.
    s.dtctl(&["rm", "db/nothing"])
        .fails_with_one_line("db \"nothing\" not found");
}
