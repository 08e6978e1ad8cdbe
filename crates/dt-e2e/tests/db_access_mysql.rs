//! MySQL/MariaDB access through `devtrust db start --protocol=mysql` with the real `mariadb`
//! client and a real MariaDB server started by the test (configured from `dtctl auth sign
//! --format=db`; users created with `REQUIRE SUBJECT` and no password). The client speaks TLS
//! to the access point with the user's devtrust certificate (`--ssl-cert`/`--ssl-key` of the
//! dtsh profile); the access point decides, then logs in upstream as the database user with a
//! database-CA certificate and an empty auth response.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::db::*;
use common::*;
use dt_testkit::Mariadb;

/// The `mariadb` client through the access point as `db_user`, with the profile's
/// certificate (or without TLS when `tls` is false).
fn mariadb_cmd(ap: &AccessPoint, home: &Home, db_user: &str, tls: bool, sql: &str) -> Command {
    let (cert, key) = profile_tls(home);
    let mut c = Command::new("mariadb");
    c.args(["--no-defaults", "--protocol=TCP", "--host=127.0.0.1"])
        .arg(format!("--port={}", ap.port()))
        .arg(format!("--user={db_user}"))
        .args(["--connect-timeout=10", "-N", "-e", sql]);
    if tls {
        c.arg("--ssl")
            .arg(format!("--ssl-cert={}", cert.display()))
            .arg(format!("--ssl-key={}", key.display()));
    } else {
        c.arg("--skip-ssl");
    }
    c
}

fn mariadb(ap: &AccessPoint, home: &Home, db_user: &str, sql: &str) -> std::process::Output {
    mariadb_cmd(ap, home, db_user, true, sql).output().unwrap()
}

#[test]
fn mariadb_through_the_access_point_with_roles_modes_locks_and_audit() {
    let srv = Server::start();
    let tls = db_server_tls(&srv);
    let maria = Mariadb::start(&tls);
    maria.sql_admin(
        "create user alice@'%' require subject '/CN=alice'; grant select on *.* to alice@'%';
         create user bob@'%' require subject '/CN=bob'; grant select on *.* to bob@'%';",
    );

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
            "--name=maria1".into(),
            "--protocol=mysql".into(),
            "--listen=127.0.0.1:0".into(),
            "--labels=env=dev".into(),
            format!("--uri=localhost:{}", maria.port),
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

    // Allowed: the mariadb client through the access point is the decided database user.
    let ok = mariadb(&ap, &alice, "alice", "select current_user()");
    assert!(ok.status.success(), "{}\n{}", stderr(&ok), maria.log());
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "alice@%");
    // Prepared statements go through too (and are audited).
    let ok = mariadb(
        &ap,
        &alice,
        "alice",
        "prepare s from 'select 40 + 2'; execute s",
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "42");

    // A client that sends its TLS ClientHello in the same write as the SSLRequest (MySQL's
    // SSLRequest gets no answer) logs in too, and is refused the same way.
    assert_eq!(
        login_with_coalesced_client_hello(&ap, &alice, "alice"),
        0x00
    );
    assert_eq!(login_with_coalesced_client_hello(&ap, &alice, "bob"), 0xff);

    // A database user the roles do not allow, and a user with no database role.
    let no = mariadb(&ap, &alice, "bob", "select 1");
    assert!(!no.status.success());
    assert!(
        stderr(&no).contains(
            "ERROR 1045 (28000): access denied to database \"maria1\" as db user \"bob\""
        ),
        "{}",
        stderr(&no)
    );
    let no = mariadb(&ap, &bob, "bob", "select 1");
    assert!(
        stderr(&no).contains("ERROR 1045 (28000): access denied"),
        "{}",
        stderr(&no)
    );

    // Without TLS: a clear refusal.
    let clear = mariadb_cmd(&ap, &alice, "alice", false, "select 1")
        .output()
        .unwrap();
    assert!(!clear.status.success());
    assert!(
        stderr(&clear).contains(
            "ERROR 1045 (28000): devtrust database access needs TLS with your devtrust certificate"
        ),
        "{}",
        stderr(&clear)
    );

    // TLS without a client certificate: the handshake is refused, and audited.
    let no_cert = Command::new("mariadb")
        .args(["--no-defaults", "--protocol=TCP", "--host=127.0.0.1"])
        .arg(format!("--port={}", ap.port()))
        .args([
            "--user=alice",
            "--connect-timeout=10",
            "--ssl",
            "-e",
            "select 1",
        ])
        .output()
        .unwrap();
    assert!(!no_cert.status.success());
    assert!(
        stderr(&no_cert).contains("ERROR 2026"),
        "{}",
        stderr(&no_cert)
    );

    // The cluster-wide mode applies to databases.
    set_cluster_mode(&srv, "required");
    wait_until("the cluster mode reaches the access point", || {
        stderr(&mariadb(&ap, &alice, "alice", "select 1")).contains("unauthorized device")
    });
    let o = mariadb(&ap, &alice, "alice", "select 1");
    assert!(stderr(&o).contains("ERROR 1045 (28000)"), "{}", stderr(&o));
    assert!(stderr(&o).contains("dtsh device enroll"), "{}", stderr(&o));
    set_cluster_mode(&srv, "optional");
    wait_until("optional again", || {
        mariadb(&ap, &alice, "alice", "select 1").status.success()
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
    let o = mariadb(&ap, &alice, "alice", "select 1");
    assert!(
        stderr(&o).contains("ERROR 1045 (28000): access denied to database \"maria1\" as db user \"alice\" on db \"\": a trusted device is required"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("dtsh device enroll"), "{}", stderr(&o));
    set_roles("db-dev");

    // A database that is down: a clear error from a second access point, which is audited.
    let token2 = srv
        .dtctl(&["tokens", "add", "--type=db", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let down = AccessPoint::start(
        "db",
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token2}"),
            "--name=maria-down".into(),
            "--protocol=mysql".into(),
            "--listen=127.0.0.1:0".into(),
            "--labels=env=dev".into(),
            format!("--uri=localhost:{}", dt_testkit::free_port()),
            format!("--data-dir={}", srv.scratch().join("db-down").display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
        ],
    );
    let o = mariadb(&down, &alice, "alice", "select 1");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("ERROR 1105 (HY000): database \"maria-down\" at localhost:")
            && stderr(&o).contains("is unreachable"),
        "{}",
        stderr(&o)
    );
    // The second access point ships its events on its own schedule; it must still be
    // running to ship this one (a killed one keeps it in its spool until it starts again).
    wait_until("the unreachable database's refusal is audited", || {
        srv.events(&["--type=access.denied"]).iter().any(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("is unreachable")
        })
    });
    drop(down);
    // The first access point kept serving.
    assert!(mariadb(&ap, &alice, "alice", "select 1").status.success());

    // A lock ends a live session with its message, and refuses new ones.
    let live = mariadb_cmd(&ap, &alice, "alice", true, "select sleep(30)")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the live session's query is audited", || {
        srv.events(&["--type=db.session.query"])
            .iter()
            .any(|e| e["command"].as_str() == Some("select sleep(30)"))
    });
    let locked_at = Instant::now();
    srv.dtctl(&["lock", "--db=maria1", "--message=database maintenance"])
        .ok();
    let out = live.wait_with_output().unwrap();
    let took = locked_at.elapsed();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "ERROR 1927 (70100) at line 1: lock targeting Database:\"maria1\" is in force: database maintenance"
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        took < Duration::from_secs(5),
        "the lock took {took:?} to end the session"
    );
    let o = mariadb(&ap, &alice, "alice", "select 1");
    assert!(
        stderr(&o).contains("lock targeting Database:\"maria1\""),
        "{}",
        stderr(&o)
    );

    // Audit: the session, its statements, the termination and the refusals, with the user.
    wait_until("db.session.end events", || {
        !srv.events(&["--type=db.session.end"]).is_empty()
    });
    let queries = srv.events(&["--type=db.session.query", "--user=alice"]);
    for statement in ["select current_user()", "prepare s from 'select 40 + 2'"] {
        assert!(
            queries.iter().any(
                |e| e["command"].as_str().unwrap_or("").starts_with(statement)
                    && e["login"] == "alice"
                    && e["resource_name"] == "maria1"
            ),
            "{statement}: {queries:?}"
        );
    }
    let denied = srv.events(&["--type=access.denied"]);
    for needle in [
        "unauthorized device",
        "without TLS",
        "\"bob\"",
        "TLS handshake refused",
        "is unreachable",
    ] {
        assert!(
            denied
                .iter()
                .any(|e| e["message"].as_str().unwrap_or("").contains(needle)),
            "{needle}: {denied:?}"
        );
    }
    assert!(
        srv.events(&["--type=session.terminate"])
            .iter()
            .any(|e| e["resource_name"] == "maria1"),
        "the lock's termination is audited"
    );
}

/// A client that sends the SSLRequest and its TLS ClientHello in one write (as a fast
/// client may: MySQL's SSLRequest gets no answer), then logs in: the access point must take
/// the ClientHello it read along with the SSLRequest. Returns the first byte of the answer
/// to the HandshakeResponse (0x00: OK).
fn login_with_coalesced_client_hello(ap: &AccessPoint, home: &Home, db_user: &str) -> u8 {
    use dt_dbwire::mysql;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};

    fn read_packet(s: &mut impl Read) -> (u8, Vec<u8>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((p, _)) = mysql::read_packet(&buf).unwrap() {
                return (p.seq, p.payload.to_vec());
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "the access point closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    let (cert, key) = profile_tls(home);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(dt_tls::Verifier::new(
            dt_tls::NoCheck,
            provider,
        )))
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(&cert).unwrap()],
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    let mut tcp = std::net::TcpStream::connect(&ap.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (_, greeting) = read_packet(&mut tcp);
    let hs = mysql::Handshake::parse(&greeting).unwrap();
    assert_ne!(
        hs.capabilities & mysql::CLIENT_SSL,
        0,
        "the greeting offers TLS"
    );
    let caps = mysql::CLIENT_PROTOCOL_41
        | mysql::CLIENT_SECURE_CONNECTION
        | mysql::CLIENT_PLUGIN_AUTH
        | mysql::CLIENT_SSL;
    let mut conn = rustls::ClientConnection::new(
        std::sync::Arc::new(cfg),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut first = mysql::packet(1, &mysql::ssl_request(caps, 1 << 24, 45)).unwrap();
    conn.write_tls(&mut first).unwrap();
    tcp.write_all(&first).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let resp = mysql::HandshakeResponse {
        capabilities: caps,
        max_packet: 1 << 24,
        charset: 45,
        user: db_user.into(),
        auth_response: Vec::new(),
        database: None,
        auth_plugin: Some("mysql_native_password".into()),
    };
    tls.write_all(&mysql::packet(2, &resp.encode()).unwrap())
        .unwrap();
    let (seq, answer) = read_packet(&mut tls);
    assert_eq!(seq, 3, "the answer follows the client's sequence ids");
    let _ = tls.write_all(&mysql::packet(0, &[mysql::COM_QUIT]).unwrap());
    answer[0]
}
