//! Database access through `devtrust db start` with the real `psql` and a real PostgreSQL
//! server started by the test (configured from `dtctl auth sign --format=db`, certificate
//! authentication only). psql speaks TLS to the access point with the user's devtrust
//! certificate (`sslcert`/`sslkey` of the dtsh profile); the access point decides, then logs
//! in upstream as the database user with a database-CA certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::db::*;
use common::*;
use dt_testkit::Postgres;

fn psql(
    ap: &AccessPoint,
    home: &Home,
    db_user: &str,
    extra: &str,
    sql: &str,
) -> std::process::Output {
    let (cert, key) = profile_tls(home);
    Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={db_user} dbname=postgres sslmode=require sslcert={} sslkey={} connect_timeout=10 {extra}",
            ap.port(),
            cert.display(),
            key.display()
        ))
        .args(["-At", "-c", sql])
        .output()
        .unwrap()
}

#[test]
fn psql_through_the_access_point_with_roles_modes_locks_and_audit() {
    let srv = Server::start();
    let tls = db_server_tls(&srv);
    let pg = Postgres::start(
        &tls,
        "local all all trust\nhostssl all all 127.0.0.1/32 cert\nhostnossl all all 127.0.0.1/32 reject\n",
    );
    pg.psql_admin("create role alice login; create role bob login");

    let token = srv
        .dtctl(&["tokens", "add", "--type=db", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let data = srv.scratch().join("db-ap");
    let ap = AccessPoint::start(
        "db",
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=pg1".into(),
            "--listen=127.0.0.1:0".into(),
            "--labels=env=dev".into(),
            format!("--uri=localhost:{}", pg.port),
            format!("--data-dir={}", data.display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
        ],
    );

    let role = srv.write_file(
        "roles.yaml",
        "kind: role\nversion: v7\nmetadata: {name: db-dev}\nspec: {allow: {db_labels: {env: dev}, db_users: [alice], db_names: ['*']}}\n---\nkind: role\nversion: v7\nmetadata: {name: db-dev-trusted}\nspec: {options: {device_trust_mode: required}, allow: {db_labels: {env: dev}, db_users: [alice], db_names: ['*']}}\n",
    );
    srv.dtctl(&["create", "-f", &role]).ok();
    let alice = srv.new_user("alice", "db-dev", "", "correct horse battery");
    let bob = srv.new_user("bob", "access", "", "correct horse battery");

    // Allowed: psql through the access point logs in as the decided database user.
    let ok = psql(&ap, &alice, "alice", "", "select current_user");
    assert!(ok.status.success(), "{}\n{}", stderr(&ok), pg.log());
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "alice");

    // dtsh: the listing follows the roles; psql through dtsh's tunnel.
    wait_until("pg1 in dtsh db ls", || {
        srv.dtsh(&alice, &["db", "ls"], "").ok().contains("pg1")
    });
    let ls = srv.dtsh(&alice, &["db", "ls", "--format=json"], "").json();
    assert_eq!(ls[0]["name"], "pg1");
    assert_eq!(ls[0]["protocol"], "postgres");
    assert_eq!(ls[0]["labels"]["env"], "dev");
    assert!(
        !srv.dtsh(&bob, &["db", "ls"], "").ok().contains("pg1"),
        "bob's roles reach no database"
    );
    let c = srv.dtsh(
        &alice,
        &[
            "db",
            "connect",
            "pg1",
            "--db-user=alice",
            "--db-name=postgres",
            "--",
            "-At",
            "-c",
            "select current_user",
        ],
        "",
    );
    assert_eq!(c.ok().trim(), "alice");
    srv.dtsh(
        &alice,
        &[
            "db",
            "login",
            "pg1",
            "--db-user=alice",
            "--db-name=postgres",
        ],
        "",
    )
    .ok();
    let mut proxy = Command::new(DTSH)
        .args(["proxy", "db", "pg1", "--tunnel", "--port=0"])
        .env("DTSH_HOME", &alice.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(proxy.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    // Keep draining: the tunnel goes on writing.
    std::thread::spawn(move || for _ in reader.lines() {});
    let port = first
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no port in {first:?}"))
        .to_string();
    let through = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=whoever dbname=whatever sslmode=disable connect_timeout=10"
        ))
        .args(["-At", "-c", "select current_user || '@' || current_database()"])
        .output()
        .unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(through.status.success(), "{}", stderr(&through));
    assert_eq!(
        String::from_utf8_lossy(&through.stdout).trim(),
        "alice@postgres",
        "dtsh db login's route replaces what the client asked"
    );
    srv.dtsh(&alice, &["db", "logout"], "").ok();

    // A database user the roles do not allow, and a user with no database role.
    let no = psql(&ap, &alice, "bob", "", "select 1");
    assert!(!no.status.success());
    assert!(
        stderr(&no).contains("FATAL:  access denied to database \"pg1\" as db user \"bob\""),
        "{}",
        stderr(&no)
    );
    let no = psql(&ap, &bob, "bob", "", "select 1");
    assert!(
        stderr(&no).contains("FATAL:  access denied"),
        "{}",
        stderr(&no)
    );

    // Without TLS: a clear refusal.
    let clear = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=postgres sslmode=disable connect_timeout=10",
            ap.port()
        ))
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    assert!(
        stderr(&clear).contains("needs TLS with your devtrust certificate"),
        "{}",
        stderr(&clear)
    );

    // A certificate of another CA (the access point's own host-CA certificate) is refused
    // in the TLS handshake, and audited.
    let other_ca = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=postgres sslmode=require sslcert={} sslkey={} connect_timeout=10",
            ap.port(),
            data.join("tls.crt").display(),
            data.join("key.pem").display()
        ))
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    assert!(
        !other_ca.status.success(),
        "a host-CA certificate must not pass"
    );
    wait_until("the refused handshake is audited", || {
        srv.events(&["--type=access.denied"]).iter().any(|e| {
            e["resource_name"] == "pg1"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("TLS handshake refused")
        })
    });

    // The cluster-wide mode applies to databases.
    set_cluster_mode(&srv, "required");
    wait_until("the cluster mode reaches the access point", || {
        let o = psql(&ap, &alice, "alice", "", "select 1");
        stderr(&o).contains("unauthorized device")
    });
    let o = psql(&ap, &alice, "alice", "", "select 1");
    assert!(stderr(&o).contains("dtsh device enroll"), "{}", stderr(&o));
    set_cluster_mode(&srv, "optional");
    wait_until("optional again", || {
        psql(&ap, &alice, "alice", "", "select 1").status.success()
    });

    // A role that requires a trusted device.
    let set_roles = |roles: &str| {
        let f = srv.write_file(
            "alice.yaml",
            &format!(
                "kind: user\nversion: v2\nmetadata: {{name: alice}}\nspec: {{roles: [{roles}]}}\n"
            ),
        );
        srv.dtctl(&["create", "-f", &f, "--force"]).ok();
        srv.login(&alice, "alice", "correct horse battery").ok();
    };
    set_roles("db-dev-trusted");
    let o = psql(&ap, &alice, "alice", "", "select 1");
    assert!(
        stderr(&o).contains("access denied to database \"pg1\" as db user \"alice\" on db \"postgres\": a trusted device is required"),
        "{}",
        stderr(&o)
    );
    set_roles("db-dev");

    // A lock ends a live session with its message, and refuses new ones.
    let (cert, key) = profile_tls(&alice);
    let live = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=postgres sslmode=require sslcert={} sslkey={} connect_timeout=10",
            ap.port(),
            cert.display(),
            key.display()
        ))
        .args(["-At", "-c", "select pg_sleep(30)"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the live session's query is audited", || {
        srv.events(&["--type=db.session.query"])
            .iter()
            .any(|e| e["command"].as_str() == Some("select pg_sleep(30)"))
    });
    let locked_at = Instant::now();
    srv.dtctl(&["lock", "--db=pg1", "--message=database maintenance"])
        .ok();
    let out = live.wait_with_output().unwrap();
    let took = locked_at.elapsed();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("lock targeting Database:\"pg1\" is in force: database maintenance"),
        "{}",
        stderr(&out)
    );
    assert!(
        took < Duration::from_secs(5),
        "the lock took {took:?} to end the session"
    );
    let o = psql(&ap, &alice, "alice", "", "select 1");
    assert!(
        stderr(&o).contains("lock targeting Database:\"pg1\""),
        "{}",
        stderr(&o)
    );

    // Audit: the session, its statements, the termination and the refusals, with the user.
    wait_until("db.session.end events", || {
        !srv.events(&["--type=db.session.end"]).is_empty()
    });
    let queries = srv.events(&["--type=db.session.query", "--user=alice"]);
    assert!(
        queries
            .iter()
            .any(|e| e["command"] == "select current_user" && e["login"] == "alice"),
        "{queries:?}"
    );
    let denied = srv.events(&["--type=access.denied"]);
    assert!(
        denied.iter().any(|e| e["resource_name"] == "pg1"
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
    let _ = Path::new(&data);
}
