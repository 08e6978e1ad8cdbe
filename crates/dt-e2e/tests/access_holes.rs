//! Issue 11, holes 2, 3, 6 and 7 (and `dtctl rm node/NAME` of hole 8), on the real
//! binaries: each test shows the refusal (the user's error and an audit event with the
//! reason) and that the allowed case still works.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const PW: &str = "correct horse battery";

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == t).collect()
}

/// The newest event of type `t` whose message contains `needle`.
#[track_caller]
fn event_with(srv: &Server, t: &str, needle: &str) -> Value {
    let events = srv.events(&[]);
    of_type(&events, t)
        .into_iter()
        .rev()
        .find(|e| e["message"].as_str().unwrap_or("").contains(needle))
        .cloned()
        .unwrap_or_else(|| panic!("no {t} event with {needle:?} in {events:#?}"))
}

/// Run `f` until `done` holds (at most 10 s; the server follows storage by polling).
#[track_caller]
fn until(mut f: impl FnMut() -> Out, done: impl Fn(&Out) -> bool) -> Out {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = f();
        if done(&out) || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Write `value` under `key` straight into the server's SQLite database, bypassing the API
/// and its validation (what a bug, a newer server or a damaged disk could leave there).
fn put_raw(srv: &Server, key: &str, value: &[u8]) {
    let db = srv.data_dir.join("devtrust.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = dt_store::sqlite::SqliteBackend::open(&db, dt_store::Tuning::default())
            .await
            .unwrap();
        dt_store::Backend::put(b.as_ref(), key, value.to_vec(), None)
            .await
            .unwrap();
        dt_store::Backend::close(b.as_ref()).await;
    });
}

// ---------------------------------------------------------------------------------------
// Hole 2: deleting `editor` must not make its holders admins.

#[test]
fn deleting_editor_leaves_its_holders_without_it_but_the_local_admin_keeps_working() {
    let srv = Server::start();
    let carol = srv.new_user("carol", "editor,access", "carol", PW);
    srv.dtctl_as(&carol, &["users", "add", "x1", "--roles=access"])
        .ok();

    srv.dtctl(&["rm", "role/editor"]).ok();
    let out = srv.dtctl_as(&carol, &["users", "add", "x2", "--roles=access"]);
    out.fails_with_one_line("access denied");
    assert!(out.stderr.contains("\"editor\""), "{out}");
    assert!(out.stderr.contains("no longer exist"), "{out}");
    let ev = event_with(&srv, "access.denied", "\"editor\"");
    assert_eq!(ev["user"], "carol", "{ev}");
    assert_eq!(ev["success"], false, "{ev}");
    // Her other role still works.
    srv.dtctl_as(&carol, &["status"]).ok();
    // A new login carries only the roles that exist.
    let home = Home::new();
    let out = srv.login(&home, "carol", PW);
    out.ok();
    srv.dtctl_as(&home, &["get", "users"])
        .fails_with("access denied");

    // The local admin (dtctl --data-dir on the auth host) keeps its built-in fallback.
    srv.dtctl(&["users", "add", "x3", "--roles=access"]).ok();
}

// ---------------------------------------------------------------------------------------
// Hole 3: a recreated user must not revive the old user's certificates.

#[test]
fn a_user_recreated_from_its_yaml_does_not_revive_old_certificates() {
    let srv = Server::start();
    let eve = srv.new_user("eve", "editor", "eve", PW);
    srv.dtctl_as(&eve, &["get", "users"]).ok();
    let yaml = srv
        .dtctl(&["get", "user/eve", "--format=yaml"])
        .ok()
        .to_string();
    assert!(yaml.contains("created_at"), "{yaml}");
    // A client-supplied creation time far in the past must not be kept either.
    let forged = yaml
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("created_at:") {
                "  created_at: 2000-01-01T00:00:00Z".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    srv.dtctl(&["rm", "user/eve"]).ok();
    // Certificates start at whole seconds a minute before issue; leave a clear gap.
    std::thread::sleep(Duration::from_secs(2));
    srv.dtctl(&["create", "-f", &srv.write_file("eve.yaml", &forged)])
        .ok();

    let stored = srv.dtctl(&["get", "user/eve", "--format=json"]).json();
    let created = stored["spec"]["created_at"].as_str().unwrap_or_default();
    assert!(!created.starts_with("2000-"), "{stored}");

    let out = srv.dtctl_as(&eve, &["get", "users"]);
    out.fails_with_one_line("issued to an earlier user \"eve\"");
    let ev = event_with(&srv, "access.denied", "issued before this user was created");
    assert_eq!(ev["user"], "eve", "{ev}");

    // An update (--force) keeps the stored creation time.
    srv.dtctl(&[
        "create",
        "--force",
        "-f",
        &srv.write_file("eve2.yaml", &forged),
    ])
    .ok();
    let again = srv.dtctl(&["get", "user/eve", "--format=json"]).json();
    assert_eq!(again["spec"]["created_at"], stored["spec"]["created_at"]);

    // Locks: the server stamps who made them and when.
    let lock = "kind: lock\nversion: v2\nmetadata: {name: l1}\nspec:\n  target: {user: nobody}\n  created_by: someone-else\n  created_at: 2000-01-01T00:00:00Z\n";
    srv.dtctl(&["create", "-f", &srv.write_file("l1.yaml", lock)])
        .ok();
    let l = srv.dtctl(&["get", "lock/l1", "--format=json"]).json();
    assert_eq!(l["spec"]["created_by"], "local-admin", "{l}");
    assert!(
        !l["spec"]["created_at"]
            .as_str()
            .unwrap_or("2000")
            .starts_with("2000"),
        "{l}"
    );
}

// ---------------------------------------------------------------------------------------
// Hole 6: unreadable roles, locks and cluster settings fail closed, naming the document.

#[test]
fn unreadable_roles_locks_and_cluster_settings_refuse_calls_until_fixed() {
    let srv = Server::start();
    let bob = srv.new_user("bob", "access", "bob", PW);
    srv.dtctl_as(&bob, &["status"]).ok();

    // A role.
    let access = srv
        .dtctl(&["get", "role/access", "--format=yaml"])
        .ok()
        .to_string();
    put_raw(
        &srv,
        "/resources/role/access",
        br#"{"kind":"role","version":"v7","metadata":{"name":"access"},"spec":42}"#,
    );
    let out = until(|| srv.dtctl_as(&bob, &["status"]), |o| !o.success());
    out.fails_with_one_line("role/access in storage is unreadable");
    assert!(out.stderr.contains("an admin must fix it"), "{out}");
    let log = srv.log();
    assert!(
        log.lines()
            .any(|l| l.contains("stored document unusable") && l.contains("access")),
        "{log}"
    );
    srv.login(&Home::new(), "bob", PW)
        .fails_with("role/access in storage is unreadable");
    let ev = event_with(
        &srv,
        "access.denied",
        "role/access in storage is unreadable",
    );
    assert_eq!(ev["resource_name"], "access", "{ev}");
    // The local admin repairs it; service is back.
    srv.dtctl(&[
        "create",
        "--force",
        "-f",
        &srv.write_file("access.yaml", &access),
    ])
    .ok();
    until(|| srv.dtctl_as(&bob, &["status"]), Out::success).ok();

    // A lock (it could target anyone).
    put_raw(&srv, "/resources/lock/bad", b"{not json");
    let out = until(|| srv.dtctl_as(&bob, &["status"]), |o| !o.success());
    out.fails_with_one_line("lock/bad in storage is unreadable");
    event_with(&srv, "access.denied", "lock/bad in storage is unreadable");
    srv.dtctl(&["rm", "lock/bad"]).ok();
    until(|| srv.dtctl_as(&bob, &["status"]), Out::success).ok();

    // The cluster auth preference: no defaults in its place.
    let cap = srv.dtctl(&["get", "cap", "--format=yaml"]).ok().to_string();
    put_raw(
        &srv,
        "/resources/cluster_auth_preference/cluster-auth-preference",
        b"[]",
    );
    let out = until(|| srv.login(&Home::new(), "bob", PW), |o| !o.success());
    out.fails_with("cluster_auth_preference/cluster-auth-preference in storage is unreadable");
    event_with(
        &srv,
        "access.denied",
        "cluster_auth_preference/cluster-auth-preference in storage is unreadable",
    );
    srv.dtctl(&["create", "--force", "-f", &srv.write_file("cap.yaml", &cap)])
        .ok();
    until(|| srv.login(&Home::new(), "bob", PW), Out::success).ok();
}

// ---------------------------------------------------------------------------------------
// Hole 7: only who may manage a bot mints its tokens; `users reset` never takes a bot.

const TOKEN_MAKER: &str = r#"
kind: role
version: v7
metadata: {name: token-maker}
spec:
  allow:
    rules: [{resources: [token], verbs: [create]}]
---
kind: role
version: v7
metadata: {name: bot-keeper}
spec:
  allow:
    rules: [{resources: [token], verbs: [create]}, {resources: [user], verbs: [update]}]
"#;

#[test]
fn bot_tokens_need_who_may_manage_the_bot_and_bots_cannot_be_reset() {
    let srv = Server::start();
    srv.dtctl(&["create", "-f", &srv.write_file("roles.yaml", TOKEN_MAKER)])
        .ok();
    srv.dtctl(&["bots", "add", "ci", "--roles=access"]).ok();
    let (mallory, trent) = std::thread::scope(|s| {
        let m = s.spawn(|| srv.new_user("mallory", "token-maker", "mallory", PW));
        let t = s.spawn(|| srv.new_user("trent", "bot-keeper", "trent", PW));
        (m.join().unwrap(), t.join().unwrap())
    });

    // `token: create` alone: no token for an existing bot.
    let out = srv.dtctl_as(
        &mallory,
        &[
            "tokens",
            "add",
            "--type=bot",
            "--bot-name=ci",
            "--format=text",
        ],
    );
    out.fails_with_one_line("act as bot \"ci\"");
    assert!(out.stderr.contains("`update` on user"), "{out}");
    let ev = event_with(&srv, "join_token.create", "refused bot join token");
    assert_eq!(ev["user"], "mallory", "{ev}");
    assert_eq!(ev["success"], false, "{ev}");
    // Nor for a human, nor without a bot name.
    srv.dtctl_as(
        &trent,
        &["tokens", "add", "--type=bot", "--bot-name=mallory"],
    )
    .fails_with("is not a bot");
    srv.dtctl_as(&trent, &["tokens", "add", "--type=bot"])
        .fails_with("--bot-name");
    // Node tokens are unchanged.
    srv.dtctl_as(&mallory, &["tokens", "add", "--type=node"])
        .ok();

    // Who may manage the bot can, and the token logs in as the bot.
    let token = srv
        .dtctl_as(
            &trent,
            &[
                "tokens",
                "add",
                "--type=bot",
                "--bot-name=ci",
                "--format=text",
            ],
        )
        .ok()
        .trim()
        .to_string();
    let bot_home = Home::new();
    srv.dtsh(
        &bot_home,
        &[
            "login",
            "--bot",
            &format!("--token={token}"),
            &format!("--proxy={}", srv.addr),
            &format!("--ca-pin={}", srv.pin),
        ],
        "",
    )
    .ok();

    // `users reset` on a bot is refused for everyone, saying what to do instead.
    for out in [
        srv.dtctl(&["users", "reset", "ci"]),
        srv.dtctl_as(&trent, &["users", "reset", "ci"]),
    ] {
        out.fails_with_one_line("is a bot");
        assert!(
            out.stderr
                .contains("dtctl tokens add --type=bot --bot-name=ci"),
            "{out}"
        );
    }
    let ev = event_with(&srv, "user.update", "refused users reset");
    assert_eq!(ev["resource_name"], "ci", "{ev}");
    // Humans are reset as before.
    signup_token_of(&srv.dtctl(&["users", "reset", "mallory"]));
}

// ---------------------------------------------------------------------------------------
// Hole 8: `dtctl rm node/NAME` exists (the join refusal tells admins to use it).

#[test]
fn dtctl_rm_node_names_what_it_could_not_find() {
    let srv = Server::start();
    srv.dtctl(&["rm", "node/ghost"])
        .fails_with_one_line("node \"ghost\" not found");
    let bob = srv.new_user("bob", "access", "bob", PW);
    srv.dtctl_as(&bob, &["rm", "node/ghost"])
        .fails_with_one_line("access denied");
}
