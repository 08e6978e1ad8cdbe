//! The foundation, end to end on the default storage (SQLite in the data dir): first start,
//! users and logins, trust bootstrap, resources, RBAC, presets, audit, secrets, locks.
//!
//! Every test starts its own `devtrust start` (≈0.1 s), so tests run in parallel and no
//! test's events or rate-limit state leak into another's assertions.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::Value;

const PW: &str = "correct-horse-battery";

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn names(items: &Value) -> BTreeSet<String> {
    items
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|r| r["metadata"]["name"].as_str().expect("name").to_string())
        .collect()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == t).collect()
}

// ---------------------------------------------------------------------------------------
// 1. First start

#[test]
fn first_start_writes_private_files_prints_the_pin_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::opts().data_dir(&data).start();

    let out = srv.wait_stdout("storage:   sqlite");
    assert!(out.contains("devtrust auth service is running"), "{out}");
    assert!(looks_like_pin(&srv.pin), "pin {:?}", srv.pin);
    let addr: std::net::SocketAddr = srv.addr.parse().expect("listen is an address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // Every file the first start created is private, and the directories too.
    let files = walk(&data);
    for want in [
        "tls.key",
        "tls.crt",
        "devtrust.db",
        "admin/key.pem",
        "admin/cert.pem",
        "admin/host-ca.pem",
        "admin/auth-server",
    ] {
        assert!(
            files.contains(&data.join(want)),
            "{want} missing from {files:?}"
        );
    }
    for f in &files {
        assert_eq!(mode(f), 0o600, "{} has mode {:o}", f.display(), mode(f));
    }
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("admin")), 0o700);

    // The pin printed is the host CA pin the server reports.
    let st = srv.dtctl(&["status"]);
    assert_eq!(
        field(st.ok(), "Host CA pin"),
        Some(srv.pin.as_str()),
        "{st}"
    );
    assert!(
        field(st.ok(), "Storage").unwrap().starts_with("sqlite"),
        "{st}"
    );
    let js = srv.dtctl(&["status", "--format=json"]).json();
    assert_eq!(js["host_ca_pin"], srv.pin.as_str());
    assert_eq!(js["storage"], "sqlite");
    assert!(looks_like_pin(js["user_ca_pin"].as_str().unwrap()));
    assert_ne!(js["user_ca_pin"], js["host_ca_pin"]);

    // SIGTERM: exit 0 and "stopped" (asserted by stop()); then the server is gone.
    let pin = srv.pin.clone();
    let stopped = srv.stop();
    assert!(stopped.stdout.contains("stopped"));
    Run::new(
        &DTCTL,
        ["--data-dir".as_ref(), data.as_os_str(), "status".as_ref()],
    )
    .run()
    .fails_with_one_line("cannot reach the devtrust server");

    // A restart keeps the CA: same pin.
    let again = Server::opts().data_dir(&data).start();
    assert_eq!(again.pin, pin);
    assert_eq!(
        field(again.dtctl(&["status"]).ok(), "Host CA pin"),
        Some(pin.as_str())
    );
}

// ---------------------------------------------------------------------------------------
// 3. Users

#[test]
fn users_signup_status_reset_and_removal() {
    let srv = Server::start();
    let add = srv.dtctl(&[
        "users",
        "add",
        "alice",
        "--roles=access,editor",
        "--logins=root,alice",
    ]);
    let token = signup_token_of(&add);
    assert!(
        add.ok().contains(&format!(
            "dtsh login --proxy={} --user=alice --signup-token={token}",
            srv.addr
        )),
        "{add}"
    );

    let home = Home::new();
    let login = srv.signup_login(&home, "alice", &token, PW);
    assert!(login.ok().contains("Logged in as:       alice"), "{login}");
    let first_cert_at = std::time::Instant::now();

    // dtsh status: user, roles, logins, validity, extensions.
    let st = srv.dtsh(&home, &["status"], "");
    let text = st.ok();
    assert_eq!(field(text, "Profile URL"), Some(srv.addr.as_str()), "{st}");
    assert_eq!(field(text, "Logged in as"), Some("alice"), "{st}");
    assert_eq!(field(text, "Roles"), Some("access, editor"), "{st}");
    assert_eq!(field(text, "Logins"), Some("alice, root"), "{st}");
    let valid = field(text, "Valid until").expect("Valid until line");
    assert!(valid.contains("UTC [valid for "), "{st}");
    let ext = field(text, "Extensions").expect("Extensions line");
    for e in ["permit-pty", "devtrust-roles"] {
        assert!(ext.contains(e), "{st}");
    }
    let js = srv.dtsh(&home, &["status", "--format=json"], "").json();
    assert_eq!(js["username"], "alice");
    assert_eq!(js["roles"], serde_json::json!(["access", "editor"]));
    assert_eq!(js["logins"], serde_json::json!(["alice", "root"]));
    assert_eq!(js["expired"], false);
    assert_eq!(js["ca_pin"], srv.pin.as_str());
    assert!(js["valid_until"].as_str().is_some_and(|v| v.ends_with('Z')));
    assert!(
        js["extensions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("permit-pty"))
    );

    // The signup token works once.
    let other = Home::new();
    srv.signup_login(&other, "alice", &token, "another-password")
        .fails_with("invalid, used or expired signup token");
    assert!(
        other.files().is_empty(),
        "a refused login wrote {:?}",
        other.files()
    );

    // Password logins: right, wrong, unknown user (same message: no user enumeration).
    srv.login(&other, "alice", PW).ok();
    srv.login(&other, "alice", "not-the-password")
        .fails_with_one_line("invalid username or password");
    srv.login(&Home::new(), "mallory", PW)
        .fails_with_one_line("invalid username or password");

    // users ls
    let ls = srv.dtctl(&["users", "ls"]);
    let line = ls
        .ok()
        .lines()
        .find(|l| l.starts_with("alice"))
        .expect("alice listed");
    assert!(
        line.contains("access,editor") && line.contains("root,alice"),
        "{ls}"
    );
    let ls = srv.dtctl(&["users", "ls", "--format=json"]).json();
    assert_eq!(names(&ls), BTreeSet::from(["alice".to_string()]));

    // users reset: the old password stops working, the new token sets a new one.
    let reset = srv.dtctl(&["users", "reset", "alice"]);
    let token2 = signup_token_of(&reset);
    assert_ne!(token2, token);
    srv.login(&other, "alice", PW)
        .fails_with("invalid username or password");
    srv.signup_login(&other, "alice", &token2, "second-password")
        .ok();
    srv.login(&other, "alice", "second-password").ok();

    // A reset token that was never used stops working once a newer one is issued.
    let token3 = signup_token_of(&srv.dtctl(&["users", "reset", "alice"]));
    let token4 = signup_token_of(&srv.dtctl(&["users", "reset", "alice"]));
    srv.signup_login(&Home::new(), "alice", &token3, "third-password")
        .fails_with("invalid, used or expired signup token");

    // users rm: the user's certificates stop working for API calls, logins fail.
    srv.dtctl_as(&home, &["status"]).ok();
    srv.dtctl(&["users", "rm", "alice"]).ok();
    srv.dtctl_as(&home, &["status"])
        .fails_with_one_line("user \"alice\" no longer exists");
    srv.dtctl_as(&other, &["get", "roles"])
        .fails_with("no longer exists");
    srv.login(&Home::new(), "alice", "second-password")
        .fails_with("invalid username or password");
    srv.dtctl(&["users", "rm", "alice"]).fails_with("not found");

    // A new user with the same name: the old user's pending token is dead, and the old
    // user's certificates (which carry the old roles) do not come back to life.
    // (Certificates start a minute before issue at whole seconds, so the server tells them
    // apart from the new user's once more than a second separates issue and re-creation.)
    let since = first_cert_at.elapsed();
    if since < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_secs(2) - since);
    }
    let token5 = srv.add_user("alice", "access", "");
    srv.signup_login(&Home::new(), "alice", &token4, "fourth-password")
        .fails_with("invalid, used or expired signup token");
    srv.dtctl_as(&home, &["get", "users"])
        .fails_with_one_line("issued to an earlier user \"alice\" that was removed");
    let new_alice = Home::new();
    srv.signup_login(&new_alice, "alice", &token5, "fifth-password")
        .ok();
    srv.dtctl_as(&new_alice, &["status"]).ok();
    srv.dtctl_as(&new_alice, &["get", "users"])
        .fails_with("access denied");
}

#[test]
fn five_failed_logins_are_rate_limited() {
    let srv = Server::start();
    let home = srv.new_user("eve", "access", "", PW);
    for i in 0..5 {
        srv.login(&home, "eve", &format!("wrong-password-{i}"))
            .fails_with("invalid username or password");
    }
    // Even the right password is refused now.
    let out = srv.login(&home, "eve", PW);
    out.fails_with_one_line("too many failed login attempts");
    let ev = srv.events(&["--type=user.login", "--user=eve"]);
    assert!(
        ev.iter().any(|e| e["success"] == false
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("rate limited"))),
        "{ev:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Trust bootstrap

#[test]
fn trust_needs_the_pin_or_an_explicit_insecure() {
    let srv = Server::start();
    let token = srv.add_user("bob", "access", "bob");
    let proxy = format!("--proxy={}", srv.addr);
    let signup = format!("--signup-token={token}");
    let wrong_pin = format!("--ca-pin=sha256:{}", "0".repeat(64));

    // Wrong pin: refused, names both pins, nothing written.
    let home = Home::new();
    let out = srv.dtsh(
        &home,
        &[
            "login",
            &proxy,
            "--user=bob",
            &signup,
            "--password-stdin",
            &wrong_pin,
        ],
        "bob-password-1\n",
    );
    out.fails_with_one_line("does not match");
    assert!(out.stderr.contains("cannot verify the server"), "{out}");
    assert!(out.stderr.contains(&srv.pin), "{out}");
    assert!(
        !home.path.exists(),
        "refused login wrote {:?}",
        home.files()
    );

    // A malformed pin.
    srv.dtsh(
        &home,
        &[
            "login",
            &proxy,
            "--user=bob",
            "--password-stdin",
            "--ca-pin=sha256:abc",
        ],
        "x\n",
    )
    .fails_with_one_line("--ca-pin must look like sha256:");

    // No pin, no terminal: the error names --ca-pin (and the pin to check).
    let out = srv.dtsh(
        &home,
        &["login", &proxy, "--user=bob", &signup, "--password-stdin"],
        "bob-password-1\n",
    );
    out.fails_with_one_line("--ca-pin");
    assert!(out.stderr.contains("no terminal"), "{out}");
    assert!(
        !home.path.exists(),
        "refused login wrote {:?}",
        home.files()
    );

    // None of this spent the signup token.
    srv.signup_login(&home, "bob", &token, "bob-password-1")
        .ok();

    // --insecure works, with a warning.
    let lab = Home::new();
    let out = srv.dtsh(
        &lab,
        &[
            "login",
            &proxy,
            "--user=bob",
            "--password-stdin",
            "--insecure",
        ],
        "bob-password-1\n",
    );
    out.ok();
    assert!(
        out.stderr.contains("WARNING") && out.stderr.contains("--insecure"),
        "{out}"
    );
    srv.dtsh(&lab, &["status"], "").ok();
    srv.dtctl_as(&lab, &["status"]).ok();

    // --insecure and --ca-pin together make no sense.
    let pin = format!("--ca-pin={}", srv.pin);
    srv.dtsh(
        &lab,
        &["login", &proxy, "--user=bob", "--insecure", &pin],
        "",
    )
    .fails_with("cannot be used with");

    // Unreachable server: one line, non-zero.
    let closed = closed_port_addr();
    srv.dtsh(
        &Home::new(),
        &[
            "login",
            &format!("--proxy={closed}"),
            "--user=bob",
            "--password-stdin",
            &pin,
        ],
        "bob-password-1\n",
    )
    .fails_with_one_line("cannot reach the devtrust server");
    srv.dtctl(&["--auth-server", &closed, "status"])
        .fails_with_one_line("cannot reach the devtrust server");
    srv.dtsh(
        &Home::new(),
        &[
            "login",
            "--proxy=nonsense",
            "--user=bob",
            "--password-stdin",
            &pin,
        ],
        "x\n",
    )
    .fails_with_one_line("invalid server address");
}

// ---------------------------------------------------------------------------------------
// 5. Resources

const MULTI_YAML: &str = r#"
kind: role
version: v7
metadata: {name: ops, description: "operators"}
spec:
  allow:
    logins: [ops]
    rules: [{resources: [lock], verbs: [list, read]}]
---
kind: role
version: v7
metadata: {name: readers}
spec:
  allow:
    rules: [{resources: [role], verbs: [read, list]}]
---
kind: user
version: v2
metadata: {name: dan}
spec: {roles: [ops, readers], traits: {logins: [dan]}}
"#;

const JSON_ARRAY: &str = r#"[
  {"kind": "role", "version": "v7", "metadata": {"name": "json-a"},
   "spec": {"allow": {"rules": [{"resources": ["event"], "verbs": ["list"]}]}}},
  {"kind": "role", "version": "v7", "metadata": {"name": "json-b"}, "spec": {}}
]"#;

const JSON_ONE: &str =
    r#"{"kind": "role", "version": "v7", "metadata": {"name": "json-c"}, "spec": {}}"#;

#[test]
fn resources_create_get_round_trip_edit_and_rm() {
    let srv = Server::start();

    // Multi-document YAML, a JSON array and a single JSON object.
    let out = srv.dtctl(&["create", "-f", &srv.write_file("multi.yaml", MULTI_YAML)]);
    for line in [
        "role \"ops\" has been created",
        "role \"readers\" has been created",
        "user \"dan\" has been created",
    ] {
        assert!(out.ok().contains(line), "{out}");
    }
    srv.dtctl(&["create", "-f", &srv.write_file("a.json", JSON_ARRAY)])
        .ok();
    srv.dtctl(&["create", "-f", &srv.write_file("c.json", JSON_ONE)])
        .ok();
    let roles = names(&srv.dtctl(&["get", "roles", "--format=json"]).json());
    for r in ["ops", "readers", "json-a", "json-b", "json-c", "access"] {
        assert!(roles.contains(r), "{r} missing from {roles:?}");
    }
    let ops = srv.dtctl(&["get", "role/ops", "--format=json"]).json();
    assert_eq!(ops["metadata"]["description"], "operators");
    assert_eq!(ops["spec"]["allow"]["logins"], serde_json::json!(["ops"]));

    // users/dan and user/dan are the same thing.
    let a = srv.dtctl(&["get", "users/dan"]);
    let b = srv.dtctl(&["get", "user/dan"]);
    assert_eq!(a.ok(), b.ok());
    assert_eq!(
        yaml_docs(a.ok())[0]["spec"]["roles"],
        serde_json::json!(["ops", "readers"])
    );
    let text = srv.dtctl(&["get", "users", "--format=text"]);
    assert!(
        text.ok()
            .lines()
            .any(|l| l.starts_with("dan ") && l.contains("ops,readers")),
        "{text}"
    );

    // Round trips: what `get` prints, `create -f --force` takes back unchanged.
    for kind in ["roles", "users", "cluster_auth_preference"] {
        let y1 = srv.dtctl(&["get", kind, "--format=yaml"]);
        let file = srv.write_file(&format!("{kind}.yaml"), y1.ok());
        srv.dtctl(&["create", "-f", &file, "--force"]).ok();
        let y2 = srv.dtctl(&["get", kind, "--format=yaml"]);
        let (mut v1, mut v2) = (yaml_docs(y1.ok()), yaml_docs(y2.ok()));
        v1.iter_mut().for_each(strip_revisions);
        v2.iter_mut().for_each(strip_revisions);
        assert_eq!(v1, v2, "YAML round trip of {kind} changed something");

        let j1 = srv.dtctl(&["get", kind, "--format=json"]);
        let file = srv.write_file(&format!("{kind}.json"), j1.ok());
        srv.dtctl(&["create", "-f", &file, "--force"]).ok();
        let (mut v1, mut v2) = (j1.json(), srv.dtctl(&["get", kind, "--format=json"]).json());
        strip_revisions(&mut v1);
        strip_revisions(&mut v2);
        assert_eq!(v1, v2, "JSON round trip of {kind} changed something");
    }

    // Creating what exists needs --force; nothing changes without it.
    let changed = MULTI_YAML.replace("operators", "changed");
    let file = srv.write_file("changed.yaml", &changed);
    let out = srv.dtctl(&["create", "-f", &file]);
    out.fails_with("--force");
    assert!(
        out.first_err_line().contains("role \"ops\" already exists"),
        "{out}"
    );
    let now = srv.dtctl(&["get", "role/ops", "--format=json"]).json();
    assert_eq!(now["metadata"]["description"], "operators");
    let out = srv.dtctl(&["create", "-f", &file, "--force"]);
    assert!(out.ok().contains("role \"ops\" has been updated"), "{out}");
    let now = srv.dtctl(&["get", "role/ops", "--format=json"]).json();
    assert_eq!(now["metadata"]["description"], "changed");

    // edit: a valid change is saved.
    let scripts = srv.scratch();
    let good = write_script(
        scripts,
        "good-editor",
        r#"sed -i 's/^  description: .*/  description: edited by the test/' "$1""#,
    );
    let out = srv.dtctl_run(&["edit", "role/ops"], &[("EDITOR", &good)]);
    assert!(out.ok().contains("role \"ops\" has been updated"), "{out}");
    let edited = srv.dtctl(&["get", "role/ops", "--format=json"]).json();
    assert_eq!(edited["metadata"]["description"], "edited by the test");

    // edit: invalid changes are refused with the reason, and nothing is saved.
    let before = {
        let mut v = srv.dtctl(&["get", "role/ops", "--format=json"]).json();
        strip_revisions(&mut v);
        v
    };
    for (name, body, reason) in [
        (
            "unknown-field",
            r#"sed -i 's/^spec:$/spec:\n  colour: red/' "$1""#,
            "unknown field `colour`",
        ),
        (
            "bad-mode",
            r#"sed -i 's/^  options: {}$/  options: {device_trust_mode: sometimes}/' "$1""#,
            "unknown device trust mode \"sometimes\"",
        ),
        (
            "bad-verb",
            r#"sed -i 's/- read$/- reed/' "$1""#,
            "unknown verb \"reed\"",
        ),
        (
            "rename",
            r#"sed -i 's/^  name: ops$/  name: ops2/' "$1""#,
            "metadata.name can't change",
        ),
        (
            "broken-yaml",
            r#"echo '{{{' >> "$1""#,
            "your edit was not saved",
        ),
        ("failing-editor", "exit 3", "the editor exited"),
    ] {
        let ed = write_script(scripts, name, body);
        let out = srv.dtctl_run(&["edit", "role/ops"], &[("EDITOR", &ed)]);
        out.fails_with(reason);
        assert!(
            out.first_err_line().contains("not saved")
                || out.first_err_line().contains("nothing was changed"),
            "{name}: {out}"
        );
        let mut after = srv.dtctl(&["get", "role/ops", "--format=json"]).json();
        strip_revisions(&mut after);
        assert_eq!(after, before, "{name}: the refused edit changed the role");
    }
    assert!(
        srv.dtctl(&["get", "role/ops2"])
            .fails_with("not found")
            .contains("ops2"),
        "rename must not create a new role"
    );
    let noop = write_script(scripts, "noop", "true");
    let out = srv.dtctl_run(&["edit", "role/ops"], &[("EDITOR", &noop)]);
    assert!(out.ok().contains("no changes"), "{out}");

    // edit users/NAME works too (and validates references).
    let logins = write_script(
        scripts,
        "logins",
        r#"sed -i 's/- dan$/- dan\n    - admin/' "$1""#,
    );
    srv.dtctl_run(&["edit", "users/dan"], &[("EDITOR", &logins)])
        .ok();
    let dan = srv.dtctl(&["get", "user/dan", "--format=json"]).json();
    assert_eq!(
        dan["spec"]["traits"]["logins"],
        serde_json::json!(["dan", "admin"])
    );

    // rm
    let out = srv.dtctl(&["rm", "role/json-c"]);
    assert!(
        out.ok().contains("role \"json-c\" has been removed"),
        "{out}"
    );
    srv.dtctl(&["get", "role/json-c"])
        .fails_with_one_line("role \"json-c\" not found");
    srv.dtctl(&["rm", "role/json-c"])
        .fails_with_one_line("not found");
    srv.dtctl(&["rm", "users/dan"]).ok();
    srv.dtctl(&["get", "user/dan"]).fails_with("not found");
}

// ---------------------------------------------------------------------------------------
// 6. RBAC

const DENY_ROLE: &str = r#"
kind: role
version: v7
metadata: {name: no-user-list}
spec:
  allow:
    rules: [{resources: [user], verbs: [list, read]}]
  deny:
    rules: [{resources: [user], verbs: [list]}]
"#;

#[test]
fn rbac_roles_decide_and_deny_beats_allow() {
    let srv = Server::start();
    srv.dtctl(&["create", "-f", &srv.write_file("deny.yaml", DENY_ROLE)])
        .ok();
    // Three users, signed up in parallel (argon2 is the slow part).
    let (bob, carol, dave) = std::thread::scope(|s| {
        let b = s.spawn(|| srv.new_user("bob", "access", "bob", PW));
        let c = s.spawn(|| srv.new_user("carol", "editor", "carol", PW));
        let d = s.spawn(|| srv.new_user("dave", "editor,no-user-list", "dave", PW));
        (b.join().unwrap(), c.join().unwrap(), d.join().unwrap())
    });

    // access only: no admin API.
    let out = srv.dtctl_as(&bob, &["get", "users"]);
    out.fails_with_one_line("access denied");
    assert!(out.stderr.contains("list on user"), "{out}");
    srv.dtctl_as(&bob, &["users", "add", "x", "--roles=access"])
        .fails_with("access denied");
    srv.dtctl_as(&bob, &["events", "ls"])
        .fails_with("access denied");
    srv.dtctl_as(&bob, &["lock", "--user=carol"])
        .fails_with("access denied");
    srv.dtctl_as(&bob, &["status"]).ok();

    // editor: allowed.
    let out = srv.dtctl_as(&carol, &["get", "users", "--format=json"]);
    assert!(names(&out.json()).contains("bob"), "{out}");
    srv.dtctl_as(&carol, &["events", "ls"]).ok();

    // editor + a role that denies `list` on users: the deny wins over editor's `*`.
    srv.dtctl_as(&dave, &["get", "users"])
        .fails_with_one_line("access denied");
    srv.dtctl_as(&dave, &["get", "user/bob"]).ok();
    srv.dtctl_as(&dave, &["get", "roles"]).ok();
    // Role changes apply at once, without a new login.
    let stricter = DENY_ROLE.replace("verbs: [list]}", "verbs: [list, read]}");
    srv.dtctl(&[
        "create",
        "-f",
        &srv.write_file("deny2.yaml", &stricter),
        "--force",
    ])
    .ok();
    srv.dtctl_as(&dave, &["get", "user/bob"])
        .fails_with("access denied");

    // The local admin can.
    srv.dtctl(&["get", "users"]).ok();

    // Without --data-dir and without a login, dtctl says what it needs.
    srv.dtctl_as(&Home::new(), &["get", "users"])
        .fails_with_one_line("dtctl needs --data-dir on the auth host, or a dtsh login");
}

// ---------------------------------------------------------------------------------------
// 7. Presets

fn rule_allows(role: &Value, resource: &str, verb: &str) -> bool {
    role["spec"]["allow"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| {
            let has = |k: &str, v: &str| {
                r[k].as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x == v || x == "*")
            };
            has("resources", resource) && has("verbs", verb)
        })
}

const DEVICE_VERBS: [&str; 7] = [
    "create",
    "read",
    "list",
    "update",
    "delete",
    "create_enroll_token",
    "enroll",
];

#[test]
fn preset_roles_exist_from_first_start() {
    let srv = Server::start();
    let roles = srv.dtctl(&["get", "roles", "--format=json"]).json();
    let want = [
        "access",
        "editor",
        "auditor",
        "device-admin",
        "device-enroll",
        "require-trusted-device",
    ];
    assert_eq!(
        names(&roles),
        want.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
    let role = |n: &str| -> Value {
        roles
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metadata"]["name"] == n)
            .cloned()
            .unwrap()
    };
    for v in DEVICE_VERBS {
        assert!(
            rule_allows(&role("editor"), "device", v),
            "editor lacks {v} on device"
        );
        assert!(
            rule_allows(&role("device-admin"), "device", v),
            "device-admin lacks {v}"
        );
    }
    assert!(rule_allows(&role("device-enroll"), "device", "enroll"));
    assert!(!rule_allows(&role("device-enroll"), "device", "delete"));
    assert!(rule_allows(&role("auditor"), "event", "list"));
    assert!(!rule_allows(&role("auditor"), "user", "list"));
    assert_eq!(
        role("require-trusted-device")["spec"]["options"]["device_trust_mode"],
        "required"
    );
    assert_eq!(
        role("access")["spec"]["allow"]["logins"],
        serde_json::json!(["{{internal.logins}}"])
    );

    // Text output too, and the default cluster auth preference.
    let text = srv.dtctl(&["get", "roles", "--format=text"]);
    for r in want {
        assert!(text.ok().lines().any(|l| l.starts_with(r)), "{text}");
    }
    let cap = srv
        .dtctl(&["get", "cluster_auth_preference", "--format=json"])
        .json();
    assert_eq!(cap["spec"]["device_trust"]["mode"], "optional");

    // editor (the local admin's role) may list devices.
    srv.dtctl(&["get", "devices", "--format=json"]).ok();
}

// ---------------------------------------------------------------------------------------
// 8. Audit

#[test]
fn audit_events_are_typed_filterable_and_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::opts().data_dir(&data).start();

    let home = srv.new_user("alice", "access", "root", PW);
    srv.login(&home, "alice", "wrong-password")
        .fails_with("invalid username or password");
    let role = srv.write_file(
        "r.yaml",
        "kind: role\nversion: v7\nmetadata: {name: audited}\nspec: {}\n",
    );
    srv.dtctl(&["create", "-f", &role]).ok();
    srv.dtctl(&["create", "-f", &role, "--force"]).ok();
    srv.dtctl(&["rm", "role/audited"]).ok();

    let all = srv.events(&[]);
    let one = |t: &str, ok: bool| -> &Value {
        all.iter()
            .find(|e| e["event"] == t && e["success"] == ok)
            .unwrap_or_else(|| panic!("no {t} (success={ok}) in {all:#?}"))
    };
    let created = one("user.create", true);
    assert_eq!(created["user"], "local-admin");
    assert_eq!(created["resource_name"], "alice");
    assert_eq!(one("user.login", true)["user"], "alice");
    let failed = one("user.login", false);
    assert_eq!(failed["user"], "alice");
    assert_eq!(failed["message"], "invalid password");
    assert_eq!(failed["code"], "U1000W");
    let cert = one("cert.create", true);
    assert_eq!(cert["user"], "alice");
    assert_eq!(cert["cert"]["roles"], serde_json::json!(["access"]));
    for t in ["resource.create", "resource.update", "resource.delete"] {
        let e = one(t, true);
        assert_eq!(e["resource_name"], "audited", "{e}");
        assert_eq!(e["resource_kind"], "role", "{e}");
    }
    // Every event has an id, a code and a time; the hash chain links them in order.
    for pair in all.windows(2) {
        assert!(pair[0]["id"].as_str() < pair[1]["id"].as_str(), "{pair:?}");
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "{pair:?}");
    }
    for e in &all {
        assert!(e["code"].as_str().is_some_and(|c| !c.is_empty()), "{e}");
        assert!(e["time"].as_str().is_some(), "{e}");
    }

    // Filters.
    let logins = srv.events(&["--type=user.login"]);
    assert!(!logins.is_empty() && logins.iter().all(|e| e["event"] == "user.login"));
    assert_eq!(logins.len(), of_type(&all, "user.login").len());
    let alices = srv.events(&["--user=alice"]);
    assert!(alices.iter().all(|e| e["user"] == "alice"), "{alices:#?}");
    assert!(alices.iter().any(|e| e["event"] == "cert.create"));
    assert_eq!(
        alices.len(),
        all.iter().filter(|e| e["user"] == "alice").count(),
        "indexed: {:?}\nall: {:?}",
        alices
            .iter()
            .map(|e| (e["id"].clone(), e["event"].clone()))
            .collect::<Vec<_>>(),
        all.iter()
            .filter(|e| e["user"] == "alice")
            .map(|e| (e["id"].clone(), e["event"].clone()))
            .collect::<Vec<_>>()
    );
    let both = srv.events(&["--type=user.login", "--user=alice"]);
    assert_eq!(both.len(), 2, "{both:#?}");
    assert_eq!(srv.events(&["--since=1h"]).len(), all.len());
    assert!(srv.events(&["--user=nobody"]).is_empty());
    let text = srv.dtctl(&["events", "ls", "--type=user.login"]);
    assert!(
        text.ok().contains("FAILED") && text.ok().contains("invalid password"),
        "{text}"
    );

    // Stop and start on the same data dir: the events are still there.
    srv.stop();
    let srv = Server::opts().data_dir(&data).start();
    let after = srv.events(&[]);
    assert!(after.len() >= all.len());
    assert_eq!(
        &after[..all.len()],
        &all[..],
        "events changed across a restart"
    );
}

// ---------------------------------------------------------------------------------------
// 9. No secrets in logs, events or stored files

/// The first base64 line of a PEM or OpenSSH private key file: enough to recognise the key
/// anywhere it might be copied.
fn key_marker(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains("PRIVATE KEY"),
        "{} is not a private key",
        path.display()
    );
    text.lines()
        .find(|l| !l.starts_with("-----") && l.len() >= 40)
        .unwrap_or_else(|| panic!("no key body in {}", path.display()))
        .to_string()
}

#[test]
fn no_secret_reaches_the_log_the_audit_trail_or_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::opts()
        .data_dir(&data)
        .env("DEVTRUST_LOG", "trace")
        .start();

    let (pw1, pw2, wrong) = (
        "first-Secret-pw-7731",
        "second-Secret-pw-8842",
        "wrong-Secret-pw-9953",
    );
    let token1 = srv.add_user("alice", "access,editor", "root");
    let home = Home::new();
    srv.signup_login(&home, "alice", &token1, pw1).ok();
    srv.login(&home, "alice", pw1).ok();
    srv.login(&home, "alice", wrong)
        .fails_with("invalid username or password");
    let token2 = signup_token_of(&srv.dtctl(&["users", "reset", "alice"]));
    srv.signup_login(&home, "alice", &token2, pw2).ok();
    // A pending (unused) signup token too.
    let token3 = srv.add_user("bob", "access", "");
    let join1 = srv
        .dtctl(&["tokens", "add", "--type=node", "--format=text"])
        .ok()
        .trim()
        .to_string();
    assert!(join1.len() >= 40 && !join1.contains(' '), "{join1:?}");
    let join2 = srv
        .dtctl(&["tokens", "add", "--type=node"])
        .ok()
        .to_string();
    let join2 = join2
        .split_whitespace()
        .find_map(|w| w.strip_prefix("--token="))
        .expect("--token= in tokens add output")
        .to_string();
    srv.dtctl(&["bots", "add", "ci", "--roles=access", "--format=text"])
        .ok();
    let join3 = srv
        .dtctl(&[
            "tokens",
            "add",
            "--type=bot",
            "--bot-name=ci",
            "--format=json",
        ])
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    // Authenticated API calls as the user, with trace logging on.
    srv.dtctl_as(&home, &["get", "users", "--format=json"]).ok();
    srv.dtctl_as(&home, &["lock", "--user=bob", "--message=audit"])
        .ok();
    let tokens_listed = srv
        .dtctl(&["get", "tokens", "--format=json"])
        .ok()
        .to_string();
    let events = srv
        .dtctl(&["events", "ls", "--format=json"])
        .ok()
        .to_string();

    let secrets: Vec<(&str, String)> = vec![
        ("password 1", pw1.into()),
        ("password 2", pw2.into()),
        ("wrong password", wrong.into()),
        ("signup token 1", token1),
        ("signup token 2", token2),
        ("pending signup token", token3),
        ("node join token (text)", join1),
        ("node join token", join2),
        ("bot join token", join3),
    ];
    let keys: Vec<(String, std::path::PathBuf)> = {
        let profile = home
            .files()
            .into_iter()
            .find(|p| p.ends_with("key.pem"))
            .expect("dtsh key.pem");
        let ssh = profile.with_file_name("key");
        vec![
            ("server TLS key".into(), data.join("tls.key")),
            ("local admin key".into(), data.join("admin/key.pem")),
            ("user TLS key".into(), profile),
            ("user SSH key".into(), ssh),
        ]
    };
    let key_markers: Vec<(String, std::path::PathBuf, String)> = keys
        .into_iter()
        .map(|(n, p)| {
            let m = key_marker(&p);
            (n, p, m)
        })
        .collect();

    let stopped = srv.stop();
    let log = stopped.log;
    assert!(
        log.contains("TRACE"),
        "trace logging did not turn on:\n{}",
        &log[..log.len().min(2000)]
    );
    assert!(
        !log.contains("PRIVATE KEY"),
        "a private key reached the log"
    );
    assert!(
        !log.contains('\u{1b}'),
        "terminal escape codes in a log that is not a terminal"
    );

    let mut texts: Vec<(String, Vec<u8>)> = vec![
        ("server log".into(), log.into_bytes()),
        ("events ls --format=json".into(), events.into_bytes()),
        ("get tokens".into(), tokens_listed.into_bytes()),
    ];
    for f in walk(&data).into_iter().chain(home.files()) {
        texts.push((f.display().to_string(), std::fs::read(&f).unwrap()));
    }
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    for (where_, bytes) in &texts {
        for (what, s) in &secrets {
            assert!(!contains(bytes, s), "the {what} appears in {where_}");
        }
        for (what, path, marker) in &key_markers {
            if where_ != &path.display().to_string() {
                assert!(!contains(bytes, marker), "the {what} appears in {where_}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 10. Locks

fn lock_name(out: &Out) -> String {
    out.ok()
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("no lock name in:\n{out}"))
        .to_string()
}

#[test]
fn locks_refuse_api_calls_and_logins_until_removed() {
    let srv = Server::start();
    let (alice, bob) = std::thread::scope(|s| {
        let a = s.spawn(|| srv.new_user("alice", "access,editor", "root", PW));
        let b = s.spawn(|| srv.new_user("bob", "access", "bob", PW));
        (a.join().unwrap(), b.join().unwrap())
    });
    srv.dtctl_as(&alice, &["status"]).ok();

    srv.dtctl(&["lock"]).fails_with("name a target");
    let out = srv.dtctl(&["lock", "--user=alice", "--message=laptop stolen"]);
    assert!(out.ok().starts_with("Created a lock with name \""), "{out}");
    let name = lock_name(&out);
    let in_force = "lock targeting User:\"alice\" is in force";

    let out = srv.dtctl_as(&alice, &["status"]);
    out.fails_with_one_line(in_force);
    assert!(out.stderr.contains("laptop stolen"), "{out}");
    srv.dtctl_as(&alice, &["get", "users"]).fails_with(in_force);
    srv.login(&Home::new(), "alice", PW)
        .fails_with_one_line(in_force);
    srv.dtctl_as(&bob, &["status"]).ok();

    let locks = srv.dtctl(&["get", "locks", "--format=text"]);
    assert!(
        locks.ok().contains(&name) && locks.ok().contains("User:\"alice\""),
        "{locks}"
    );
    let ev = srv.events(&[]);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "lock.create" && e["lock"] == name.as_str()),
        "{ev:#?}"
    );
    assert!(
        ev.iter().any(|e| e["event"] == "cert.create"
            && e["success"] == false
            && e["message"].as_str().is_some_and(|m| m.contains(in_force))),
        "{ev:#?}"
    );

    srv.dtctl(&["rm", &format!("lock/{name}")]).ok();
    srv.dtctl_as(&alice, &["status"]).ok();
    srv.login(&Home::new(), "alice", PW).ok();
    assert!(
        srv.events(&["--type=lock.delete"])
            .iter()
            .any(|e| e["lock"] == name.as_str())
    );

    // A role lock hits everyone holding the role; a lock with a TTL ends by itself.
    let out = srv.dtctl(&["lock", "--role=access", "--ttl=2s"]);
    out.ok();
    srv.dtctl_as(&bob, &["status"])
        .fails_with("lock targeting Role:\"access\" is in force");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let out = srv.dtctl_as(&bob, &["status"]);
        if out.success() {
            break;
        }
        out.fails_with("lock targeting Role:\"access\" is in force");
        assert!(
            std::time::Instant::now() < deadline,
            "the 2s lock never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `dtctl devices import` sends its batches several at a time: every line is still reported
/// once, by its number, and a device listed twice fails on its second line whatever the
/// batches' order of arrival.
#[test]
fn devices_import_in_batches_reports_every_line() {
    let srv = Server::start();
    let mut csv = String::from("os,asset_tag,model_identifier\n");
    for i in 0..9 {
        csv += &format!("linux,IMP-{i},model-{i}\n"); // lines 2-10
    }
    csv += "beos,IMP-BAD,x\n"; // line 11: no such OS
    csv += "linux,IMP-3,again\n"; // line 12: IMP-3 is on line 5
    csv += "macos,IMP-3,other-os\n"; // line 13: the same tag on another OS is another device
    let path = srv.write_file("devices.csv", &csv);

    // A user who may not create devices: the first request fails as a whole, nothing is
    // sent after it, and the summary says what was not sent.
    let eve = srv.new_user("eve", "access", "", PW);
    let refused = srv.dtctl_as(
        &eve,
        &["devices", "import", &path, "--batch=2", "--format=json"],
    );
    refused.fails_with("the import stopped at a failed request: 10 devices were not sent");
    let summary: Value = serde_json::from_str(&refused.stdout).unwrap();
    assert_eq!(summary["imported"], 0, "{summary}");
    assert_eq!(summary["not_sent"], 10, "{summary}");
    assert_eq!(summary["failed"], 2, "{summary}");

    let out = srv
        .dtctl(&["devices", "import", &path, "--batch=2", "--format=json"])
        .json();
    assert_eq!(out["not_sent"], 0, "{out}");
    assert_eq!(out["imported"], 10, "{out}");
    assert_eq!(out["failed"], 2, "{out}");
    let errors = out["errors"].as_array().unwrap();
    assert_eq!(errors[0]["line"], 11, "{out}");
    assert_eq!(errors[1]["line"], 12, "{out}");
    assert_eq!(
        errors[1]["error"], "listed twice in this file (first on line 5)",
        "{out}"
    );
    let listed = srv.dtctl(&["devices", "ls", "--format=json"]).json();
    let tags: BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["spec"]["os_type"].as_str().unwrap(),
                d["spec"]["asset_tag"].as_str().unwrap()
            )
        })
        .collect();
    let mut expected: BTreeSet<String> = (0..9).map(|i| format!("linux/IMP-{i}")).collect();
    expected.insert("macos/IMP-3".into());
    assert_eq!(tags, expected);

    // A second run: every device is there already, each line says so, and the command
    // fails as a whole (nothing was imported).
    let again = srv.dtctl(&["devices", "import", &path, "--batch=3", "--format=json"]);
    again.fails_with("no device was imported");
    let again: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(again["imported"], 0, "{again}");
    assert_eq!(again["failed"], 12, "{again}");
    assert_eq!(again["errors"][3]["line"], 5, "{again}");
    assert_eq!(
        again["errors"][3]["error"], "device \"IMP-3\"/Linux is already in the inventory",
        "{again}"
    );
}
