//! Device trust on databases, both ways, through real clients: every cluster mode × role
//! (a role with no device requirement, a role that requires a trusted device) × user (one
//! with an enrolled, authenticated device, one without), on PostgreSQL with the real `psql`
//! and on MariaDB with the real `mariadb` through `dtsh db connect` (dtsh's MySQL tunnel).
//!
//! One access point serves four databases from `devtrust db start --config`: two PostgreSQL
//! names on one listener (told apart by the TLS server name) and two MariaDB names on a
//! second listener. A client that names no database, or one the access point does not serve,
//! is refused with a message that says what to do, and audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::db::*;
use common::trust::*;
use common::*;
use dt_testkit::{Mariadb, Postgres, free_port};

const PW: &str = "correct horse battery";

/// psql to the access point naming the database `sni` in TLS (host=NAME, hostaddr=IP).
fn psql(
    ap: &AccessPoint,
    home: &Home,
    sni: &str,
    db_user: &str,
    dbname: &str,
) -> std::process::Output {
    let (cert, key) = profile_tls(home);
    Command::new("psql")
        .arg(format!(
            "host={sni} hostaddr=127.0.0.1 port={} user={db_user} dbname={dbname} sslmode=require sslcert={} sslkey={} connect_timeout=10",
            ap.port(),
            cert.display(),
            key.display()
        ))
        .args(["-At", "-c", "select current_user"])
        .output()
        .unwrap()
}

#[test]
fn every_mode_role_and_device_case_through_psql_and_mariadb() {
    let srv = Server::start();
    set_mode_software(&srv, "optional");
    let tls = db_server_tls(&srv);
    let pg = Postgres::start(
        &tls,
        "local all all trust\nhostssl all all 127.0.0.1/32 cert\nhostnossl all all 127.0.0.1/32 reject\n",
    );
    pg.psql_admin("create role alice login; create role bob login");
    let maria = Mariadb::start(&tls);
    maria.sql_admin(
        "create user alice@'%' require subject '/CN=alice'; grant select on *.* to alice@'%';
         create user bob@'%' require subject '/CN=bob'; grant select on *.* to bob@'%';",
    );

    // One access point, four databases, two listeners.
    let mysql_listen = format!("127.0.0.1:{}", free_port());
    let config = srv.write_file(
        "dbs.yaml",
        &format!(
            "databases:
  - {{name: pg-dev, protocol: postgres, uri: 'localhost:{pg}', labels: {{env: dev}}}}
  - {{name: pg-prod, protocol: postgres, uri: 'localhost:{pg}', labels: {{env: prod}}}}
  - {{name: maria-dev, protocol: mysql, uri: 'localhost:{m}', labels: {{env: dev}}, listen: '{mysql_listen}'}}
  - {{name: maria-prod, protocol: mysql, uri: 'localhost:{m}', labels: {{env: prod}}, listen: '{mysql_listen}'}}
",
            pg = pg.port,
            m = maria.port,
        ),
    );
    let token = srv
        .dtctl(&["tokens", "add", "--type=db", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let ap = AccessPoint::start(
        "db",
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=ap1".into(),
            format!("--config={config}"),
            "--listen=127.0.0.1:0".into(),
            format!("--data-dir={}", srv.scratch().join("db-ap").display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
        ],
    );

    // dev databases: no device requirement; prod databases: the role requires a trusted
    // device. Only the `postgres` (PostgreSQL) and `mysql` (MariaDB) databases by name.
    let roles = srv.write_file(
        "roles.yaml",
        "kind: role\nversion: v7\nmetadata: {name: db-dev}\nspec: {allow: {db_labels: {env: dev}, db_users: [alice, bob], db_names: [postgres, mysql]}}\n---\nkind: role\nversion: v7\nmetadata: {name: db-prod}\nspec: {options: {device_trust_mode: required}, allow: {db_labels: {env: prod}, db_users: [alice, bob], db_names: [postgres, mysql]}}\n",
    );
    srv.dtctl(&["create", "-f", &roles]).ok();

    // alice enrolls this machine (a software key, as the cluster allows) and logs in again,
    // so her certificates carry the device; bob has no device.
    let alice = srv.new_user("alice", "editor,db-dev,db-prod", "", PW);
    let bob = srv.new_user("bob", "db-dev,db-prod", "", PW);
    let _device = enroll_software_device(&alice, "alice", PW, "DB-TRUST-1");

    wait_until("all four databases listed", || {
        let ls = srv.dtsh(&bob, &["db", "ls"], "");
        ls.success()
            && ["pg-dev", "pg-prod", "maria-dev", "maria-prod"]
                .iter()
                .all(|d| ls.stdout.contains(d))
    });
    let ls = srv.dtsh(&bob, &["db", "ls", "--format=json"], "").json();
    let maria_addr = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "maria-dev")
        .map(|d| d["addr"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(
        maria_addr, mysql_listen,
        "each database is listed at its own listener"
    );

    let mariadb = |home: &Home, db: &str, user: &str| {
        srv.dtsh(
            home,
            &[
                "db",
                "connect",
                db,
                &format!("--db-user={user}"),
                "--db-name=mysql",
                "--",
                "-N",
                "-e",
                "select current_user()",
            ],
            "",
        )
    };

    // (mode, database kind, user) → allowed?
    let modes = ["off", "optional", "required", "required-for-humans"];
    for mode in modes {
        set_mode_software(&srv, mode);
        let mut last = String::new();
        let mut settled = false;
        for _ in 0..100 {
            let mut failures = Vec::new();
            for (env, role_requires) in [("dev", false), ("prod", true)] {
                for (name, home, trusted) in [("alice", &alice, true), ("bob", &bob, false)] {
                    // A role's own requirement applies in every cluster mode (docs/access.md).
                    let denied = !trusted
                        && (role_requires || matches!(mode, "required" | "required-for-humans"));
                    // The cluster's mode is decided before the roles' (docs/access.md).
                    let why = if matches!(mode, "required" | "required-for-humans") {
                        "unauthorized device"
                    } else {
                        "a trusted device is required"
                    };
                    let o = psql(&ap, home, &format!("pg-{env}"), name, "postgres");
                    let e = stderr(&o);
                    let pg_ok = if denied {
                        !o.status.success() && e.contains(why) && e.contains("dtsh device enroll")
                    } else {
                        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == name
                    };
                    if !pg_ok {
                        failures.push(format!("psql {mode} pg-{env} {name} denied={denied}: {e}"));
                    }
                    let m = mariadb(home, &format!("maria-{env}"), name);
                    let m_ok = if denied {
                        !m.success()
                            && m.stderr.contains(why)
                            && m.stderr.contains("dtsh device enroll")
                    } else {
                        m.success() && m.stdout.trim().starts_with(&format!("{name}@"))
                    };
                    if !m_ok {
                        failures.push(format!(
                            "mariadb {mode} maria-{env} {name} denied={denied}: {m}"
                        ));
                    }
                }
            }
            if failures.is_empty() {
                settled = true;
                break;
            }
            // The mode reaches the access point through its watch: try again shortly.
            last = failures.join("\n");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(settled, "mode {mode}:\n{last}");
    }
    set_mode_software(&srv, "optional");

    // A database name the roles do not allow; one the server does not have (the server's
    // own error comes through).
    let o = psql(&ap, &alice, "pg-dev", "alice", "template1");
    assert!(
        stderr(&o).contains(
            "access denied to database \"pg-dev\" as db user \"alice\" on db \"template1\""
        ),
        "{}",
        stderr(&o)
    );
    let roles = srv.write_file(
        "roles2.yaml",
        "kind: role\nversion: v7\nmetadata: {name: db-dev}\nspec: {allow: {db_labels: {env: dev}, db_users: [alice, bob], db_names: ['*']}}\n",
    );
    srv.dtctl(&["create", "-f", &roles, "--force"]).ok();
    wait_until("any database name allowed", || {
        stderr(&psql(&ap, &alice, "pg-dev", "alice", "nosuch"))
            .contains("database \"nosuch\" does not exist")
    });

    // Routing: an unknown database name, and none at all, are refused with what to do.
    let o = psql(&ap, &alice, "pg-nope", "alice", "postgres");
    assert!(
        stderr(&o)
            .contains("no database \"pg-nope\" at access point \"ap1\"; it serves pg-dev, pg-prod"),
        "{}",
        stderr(&o)
    );
    let (cert, key) = profile_tls(&alice);
    let no_sni = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=postgres sslmode=require sslcert={} sslkey={} connect_timeout=10",
            ap.port(),
            cert.display(),
            key.display()
        ))
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    assert!(
        stderr(&no_sni).contains("serves several databases (pg-dev, pg-prod)"),
        "{}",
        stderr(&no_sni)
    );
    wait_until("routing refusals audited", || {
        srv.events(&["--type=access.denied"]).iter().any(|e| {
            e["resource_name"] == "ap1"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no database \"pg-nope\"")
        })
    });

    // Garbage instead of, and bytes smuggled after, the SSLRequest; garbage instead of a
    // MySQL handshake: each gets an error, is audited, and the access point serves on.
    let raw = |addr: &str, bytes: &[u8]| -> Vec<u8> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    let http = raw(&ap.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        http.first(),
        Some(&b'E'),
        "a PostgreSQL ErrorResponse: {http:?}"
    );
    let mut smuggled = vec![0, 0, 0, 8, 4, 210, 22, 47];
    smuggled.extend_from_slice(b"Q\0\0\0\x0dselect 1\0");
    let answer = raw(&ap.addr, &smuggled);
    assert!(
        answer.is_empty() || answer[0] != b'S',
        "no TLS after smuggled bytes: {answer:?}"
    );
    let mysql_garbage = raw(&mysql_listen, b"\x05\0\0\x01hello");
    assert!(
        String::from_utf8_lossy(&mysql_garbage).contains("invalid handshake response"),
        "{mysql_garbage:?}"
    );
    wait_until("bad input audited", || {
        let denied = srv.events(&["--type=access.denied"]);
        [
            "invalid startup packet",
            "bytes after SSLRequest",
            "invalid handshake response",
        ]
        .iter()
        .all(|n| {
            denied
                .iter()
                .any(|e| e["message"].as_str().unwrap_or("").contains(n))
        })
    });
    let still = psql(&ap, &alice, "pg-dev", "alice", "postgres");
    assert!(still.status.success(), "{}", stderr(&still));

    // A database that is down: a clear error, and the access point keeps serving the rest.
    drop(maria);
    let down = mariadb(&alice, "maria-dev", "alice");
    assert!(!down.success());
    assert!(down.stderr.contains("is unreachable"), "{down}");
    let still = psql(&ap, &alice, "pg-dev", "alice", "postgres");
    assert!(still.status.success(), "{}", stderr(&still));
}
