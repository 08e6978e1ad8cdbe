//! The foundation on PostgreSQL (127.0.0.1:5432, or `DEVTRUST_TEST_PG`): the user, login
//! and resource flow on a postgres-backed server, and two servers starting at the same
//! moment on one fresh database (race-safe first start: one cluster, one CA).
//!
//! Each test creates its own database and drops it afterwards. PostgreSQL being
//! unreachable fails these tests; they are never skipped.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const PW: &str = "correct-horse-battery";

fn role_names(srv: &Server) -> BTreeSet<String> {
    srv.dtctl(&["get", "roles", "--format=json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[track_caller]
fn assert_postgres(srv: &Server) -> Value {
    let st = srv.dtctl(&["status"]);
    assert!(
        field(st.ok(), "Storage").is_some_and(|s| s.starts_with("postgres")),
        "{st}"
    );
    let js = srv.dtctl(&["status", "--format=json"]).json();
    assert_eq!(js["storage"], "postgres", "{js}");
    assert_eq!(js["host_ca_pin"], srv.pin.as_str(), "{js}");
    js
}

#[test]
fn postgres_users_logins_resources_and_restart() {
    let db = PgDb::create("flow");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = db.config_file(tmp.path());
    let check = Run::new(
        &DEVTRUST,
        ["check".as_ref(), "--config".as_ref(), cfg.as_os_str()],
    )
    .run();
    assert!(check.ok().contains("storage postgres"), "{check}");

    let srv = Server::opts().config(&cfg).start();
    srv.wait_stdout("storage:   postgres");
    assert_postgres(&srv);

    // Users and logins.
    let token = srv.add_user("alice", "access,editor", "root");
    let home = Home::new();
    srv.signup_login(&home, "alice", &token, PW).ok();
    srv.signup_login(&Home::new(), "alice", &token, "other-password")
        .fails_with("invalid, used or expired signup token");
    srv.login(&home, "alice", "wrong-password")
        .fails_with_one_line("invalid username or password");
    srv.login(&home, "alice", PW).ok();
    let st = srv.dtsh(&home, &["status", "--format=json"], "").json();
    assert_eq!(st["username"], "alice");
    assert_eq!(st["roles"], serde_json::json!(["access", "editor"]));
    srv.dtctl_as(&home, &["get", "users"]).ok();

    // Resources: create, round trip, refuse without --force, rm.
    let role = srv.write_file(
        "pg-role.yaml",
        "kind: role\nversion: v7\nmetadata: {name: pg-role, description: on postgres}\nspec:\n  allow:\n    rules: [{resources: [lock], verbs: [list]}]\n",
    );
    srv.dtctl(&["create", "-f", &role]).ok();
    srv.dtctl(&["create", "-f", &role]).fails_with("--force");
    let y1 = srv.dtctl(&["get", "roles", "--format=yaml"]);
    let f = srv.write_file("roles.yaml", y1.ok());
    srv.dtctl(&["create", "-f", &f, "--force"]).ok();
    let (mut a, mut b) = (
        yaml_docs(y1.ok()),
        yaml_docs(srv.dtctl(&["get", "roles", "--format=yaml"]).ok()),
    );
    a.iter_mut().for_each(strip_revisions);
    b.iter_mut().for_each(strip_revisions);
    assert_eq!(a, b, "round trip on postgres changed something");
    srv.dtctl(&["rm", "role/pg-role"]).ok();
    srv.dtctl(&["get", "role/pg-role"]).fails_with("not found");

    // Locks.
    let lock = srv.dtctl(&["lock", "--user=alice"]);
    let name = lock.ok().split('"').nth(1).unwrap().to_string();
    srv.dtctl_as(&home, &["status"])
        .fails_with("lock targeting User:\"alice\" is in force");
    srv.dtctl(&["rm", &format!("lock/{name}")]).ok();
    srv.dtctl_as(&home, &["status"]).ok();

    let events = srv.events(&[]);
    for t in [
        "user.create",
        "user.login",
        "cert.create",
        "resource.create",
        "resource.update",
        "resource.delete",
        "lock.create",
        "lock.delete",
    ] {
        assert!(
            events.iter().any(|e| e["event"] == t),
            "no {t} in {events:#?}"
        );
    }
    // The used signup token was alice's first failure in this window (audited on its own);
    // the wrong password after it is counted in the summary the next success writes.
    assert!(events.iter().any(|e| {
        e["event"] == "user.login"
            && e["success"] == false
            && e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("1 more failed login attempts"))
    }));

    // A restart (with a fresh data dir: all state is in the database) keeps everything.
    let pin = srv.pin.clone();
    srv.stop();
    let srv = Server::opts().config(&cfg).start();
    assert_eq!(srv.pin, pin);
    srv.login(&Home::new(), "alice", PW).ok();
    let after = srv.events(&[]);
    assert_eq!(
        &after[..events.len()],
        &events[..],
        "events changed across a restart"
    );
}

#[test]
fn two_servers_starting_together_on_one_fresh_database_share_one_cluster() {
    // A few rounds: the race is in the first milliseconds, so give it several chances.
    for round in 0..3 {
        let db = PgDb::create(&format!("race{round}"));
        let tmp = tempfile::tempdir().unwrap();
        let cfg = db.config_file(tmp.path());
        // Both processes are launched before either is waited for.
        let (a, b) = (
            Server::opts().config(&cfg).spawn(),
            Server::opts().config(&cfg).spawn(),
        );
        let (a, b) = (a.ready(), b.ready());
        assert_ne!(a.addr, b.addr);
        assert_eq!(a.pin, b.pin, "round {round}: two CAs for one cluster");

        let (sa, sb) = (assert_postgres(&a), assert_postgres(&b));
        assert_eq!(sa["user_ca_pin"], sb["user_ca_pin"], "round {round}");
        assert_eq!(sa["cluster"], sb["cluster"], "round {round}");
        assert_eq!(role_names(&a), role_names(&b));
        assert_eq!(role_names(&a).len(), 6, "{:?}", role_names(&a));

        if round == 0 {
            // A user created through one server signs up and logs in through the other.
            let token = a.add_user("carol", "access,editor", "carol");
            let home = Home::new();
            b.signup_login(&home, "carol", &token, PW).ok();
            b.dtctl_as(&home, &["status"]).ok();
            a.login(&Home::new(), "carol", PW).ok();
            b.login(&Home::new(), "carol", PW).ok();
            let st = b.dtsh(&home, &["status", "--format=json"], "").json();
            assert_eq!(st["username"], "carol");

            // A lock made through one server is in force on the other.
            let lock = b.dtctl(&["lock", "--user=carol"]);
            let name = lock.ok().split('"').nth(1).unwrap().to_string();
            a.login(&Home::new(), "carol", PW)
                .fails_with("lock targeting User:\"carol\" is in force");
            a.dtctl(&["rm", &format!("lock/{name}")]).ok();
            b.login(&Home::new(), "carol", PW).ok();

            // One audit log, one hash chain, seen the same from both.
            let (ea, eb) = (a.events(&[]), b.events(&[]));
            assert_eq!(ea, eb);
            for pair in ea.windows(2) {
                assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "{pair:?}");
            }
        }
        // Stop both before the database is dropped (declared first, dropped last).
        drop(a);
        drop(b);
    }
}
