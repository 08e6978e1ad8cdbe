//! The parsers against what the real `psql` and `mariadb` clients send, and the errors we
//! write as those clients print them. Each client connects to a plain TCP listener of the
//! test on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use dt_dbwire::{mysql, pg};

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Read from `s` until `parse` finds a whole message.
fn read_until<T>(s: &mut impl Read, mut parse: impl FnMut(&[u8]) -> Option<T>) -> T {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(v) = parse(&buf) {
            return v;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "client closed after {} bytes: {buf:?}", buf.len());
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn psql_startup_is_read_and_our_error_is_what_psql_prints() {
    let (l, port) = listener();
    let server = std::thread::spawn(move || {
        // First connection: sslmode=require sends SSLRequest; we refuse TLS.
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let first = read_until(&mut s, |b| pg::read_startup(b).unwrap());
        assert_eq!(first, (pg::Startup::SslRequest, 8));
        s.write_all(&[pg::NOT_OFFERED]).unwrap();
        drop(s);
        // Second connection: sslmode=disable sends the StartupMessage; we answer FATAL.
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (startup, _) = read_until(&mut s, |b| pg::read_startup(b).unwrap());
        s.write_all(&pg::error_response(
            "FATAL",
            "28000",
            "access denied to database \"pg1\": a trusted device is required",
        ))
        .unwrap();
        startup
    });
    let require = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=alice dbname=main sslmode=require connect_timeout=10"
        ))
        .args(["-c", "select 1"])
        .env("PGPASSWORD", "")
        .output()
        .expect("psql is installed (scripts/install-deps.sh installs postgresql-client)");
    assert!(!require.status.success());
    let err = String::from_utf8_lossy(&require.stderr);
    assert!(err.contains("does not support SSL"), "{err}");

    let disable = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user=alice dbname=main sslmode=disable connect_timeout=10 application_name=devtrust-test"
        ))
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    let startup = server.join().unwrap();
    assert_eq!(startup.param("user"), Some("alice"));
    assert_eq!(startup.param("database"), Some("main"));
    assert_eq!(startup.param("application_name"), Some("devtrust-test"));
    assert!(!disable.status.success());
    let err = String::from_utf8_lossy(&disable.stderr);
    assert!(
        err.contains("FATAL:  access denied to database \"pg1\": a trusted device is required"),
        "{err}"
    );
}

#[test]
fn mariadb_handshake_response_is_read_and_our_error_is_what_mariadb_prints() {
    let (l, port) = listener();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hs = mysql::Handshake {
            server_version: "10.11.19-MariaDB-devtrust".into(),
            connection_id: 1,
            auth_data: (b'a'..=b't').collect(),
            // No CLIENT_SSL: the client sends its response in clear.
            capabilities: mysql::CLIENT_PROTOCOL_41
                | mysql::CLIENT_SECURE_CONNECTION
                | mysql::CLIENT_PLUGIN_AUTH
                | mysql::CLIENT_CONNECT_WITH_DB
                | mysql::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
            charset: 45,
            status: 2,
            auth_plugin: "mysql_native_password".into(),
        };
        s.write_all(&mysql::packet(0, &hs.encode()).unwrap())
            .unwrap();
        let (hello, seq) = read_until(&mut s, |b| {
            mysql::read_packet(b)
                .unwrap()
                .map(|(p, _)| (mysql::ClientHello::parse(p.payload).unwrap(), p.seq))
        });
        s.write_all(
            &mysql::packet(
                seq + 1,
                &mysql::err_payload(
                    1045,
                    "28000",
                    "access denied to database \"maria1\": a trusted device is required",
                ),
            )
            .unwrap(),
        )
        .unwrap();
        hello
    });
    let out = Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "--host=127.0.0.1",
            &format!("--port={port}"),
            "--user=alice",
            "--skip-ssl",
            "--connect-timeout=10",
            "main",
            "-e",
            "select 1",
        ])
        .output()
        .expect("mariadb is installed (scripts/install-deps.sh installs mariadb-client)");
    let hello = server.join().unwrap();
    let mysql::ClientHello::Response(r) = hello else {
        panic!("expected a handshake response, got {hello:?}")
    };
    assert_eq!(r.user, "alice");
    assert_eq!(r.database.as_deref(), Some("main"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ERROR 1045 (28000)")
            && err.contains("access denied to database \"maria1\": a trusted device is required"),
        "{err}"
    );
}
