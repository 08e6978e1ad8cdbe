//! The cluster's database CA with real database servers: `dtctl auth sign --format=db`
//! configures a PostgreSQL and a MariaDB server started by the test, and the client
//! certificates a joined access point gets log in as exactly the database user they name.
//! A certificate of any other CA, or for another user, is refused by the servers themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use dt_agent::identity::DataDir;
use dt_agent::runtime::{JoinRequest, join, tls_identity};
use dt_client::TrustPolicy;
use dt_proto::v1 as pb;
use dt_proto::v1::database_service_client::DatabaseServiceClient;
use dt_testkit::{Mariadb, Postgres, ServerTls};
use dt_types::{Secret, ServiceKind};

fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

/// A client certificate of the database CA for `db_user`, as a joined access point gets
/// it; returns (cert path, key path).
fn db_client_cert(
    rt: &tokio::runtime::Runtime,
    srv: &Server,
    service: &dt_agent::identity::ServiceIdentity,
    db_user: &str,
) -> (PathBuf, PathBuf) {
    let key = dt_ca::ClientKey::generate().unwrap();
    let resp = rt.block_on(async {
        let ch = dt_client::connect::channel(
            &srv.addr,
            TrustPolicy::Pin(srv.pin.clone()),
            tls_identity(service),
        )
        .await
        .unwrap();
        DatabaseServiceClient::new(ch)
            .sign_database_client(pb::SignDatabaseClientRequest {
                public_key_der: key.spki_der(),
                db_user: db_user.into(),
            })
            .await
    });
    let resp = resp.unwrap().into_inner();
    let dir = srv.scratch().join(format!("client-{db_user}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, keyf) = (dir.join("client.crt"), dir.join("client.key"));
    std::fs::write(&cert, dt_ca::pem::to_pem("CERTIFICATE", &resp.cert_der)).unwrap();
    write_private(&keyf, key.to_pkcs8_pem().as_bytes());
    (cert, keyf)
}

#[test]
fn database_ca_certificates_work_with_real_postgres_and_mariadb() {
    let srv = Server::start();
    let out = srv.scratch().join("dbcerts");
    let out_s = out.to_string_lossy().into_owned();
    let sign = |extra: &[&str]| {
        let mut a = vec![
            "auth",
            "sign",
            "--format=db",
            "--host=localhost,127.0.0.1",
            "--out",
            &out_s,
        ];
        a.extend_from_slice(extra);
        srv.dtctl(&a)
    };

    // A user whose roles do not allow it is refused, and nothing is written.
    let bob = srv.new_user("bob", "access", "", "correct horse battery");
    let refused = srv.dtctl_as(
        &bob,
        &[
            "auth",
            "sign",
            "--format=db",
            "--host=localhost",
            "--out",
            &out_s,
        ],
    );
    refused.fails_with("db_certificate");
    assert!(!out.join("server.key").exists());

    let signed = sign(&[]);
    assert!(signed.ok().contains("server.cas"), "{}", signed.ok());
    let mode = std::fs::metadata(out.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    sign(&[]).fails_with("--overwrite");
    sign(&["--overwrite"]).ok();
    let events = srv.events(&["--type=cert.create"]);
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("database server certificate")),
        "{events:?}"
    );

    // A joined access point asks for client certificates; a user cannot.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let join_as = |kind: ServiceKind, name: &str| {
        let token = srv
            .dtctl(&[
                "tokens",
                "add",
                &format!("--type={}", kind.as_str()),
                "--format=text",
            ])
            .ok()
            .trim()
            .to_string();
        rt.block_on(join(
            &DataDir::new(srv.scratch().join(name)),
            &JoinRequest {
                auth_server: srv.addr.clone(),
                token: Secret::new(token),
                trust: TrustPolicy::Pin(srv.pin.clone()),
            },
            kind,
            name,
            "127.0.0.1:1",
            &BTreeMap::new(),
        ))
        .unwrap()
    };
    let service = join_as(ServiceKind::Db, "db-ap");
    // An SSH node is a joined service too, but not a database access point.
    let node = join_as(ServiceKind::Node, "node-1");
    let from_node = rt.block_on(async {
        let ch = dt_client::connect::channel(
            &srv.addr,
            TrustPolicy::Pin(srv.pin.clone()),
            tls_identity(&node),
        )
        .await
        .unwrap();
        DatabaseServiceClient::new(ch)
            .sign_database_client(pb::SignDatabaseClientRequest {
                public_key_der: dt_ca::ClientKey::generate().unwrap().spki_der(),
                db_user: "postgres".into(),
            })
            .await
    });
    let err = from_node.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let (alice_crt, alice_key) = db_client_cert(&rt, &srv, &service, "alice");
    let (bob_crt, bob_key) = db_client_cert(&rt, &srv, &service, "bob");
    let bob_profile = dt_client::ProfileStore {
        home: bob.path.clone(),
    };
    let as_user = rt.block_on(async {
        let p = bob_profile.current().unwrap();
        let ch = dt_client::connect::channel(
            &srv.addr,
            TrustPolicy::Pin(srv.pin.clone()),
            bob_profile.identity(&p).unwrap(),
        )
        .await
        .unwrap();
        DatabaseServiceClient::new(ch)
            .sign_database_client(pb::SignDatabaseClientRequest {
                public_key_der: dt_ca::ClientKey::generate().unwrap().spki_der(),
                db_user: "postgres".into(),
            })
            .await
    });
    let err = as_user.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // The access point's own host-CA certificate, to show the servers trust only the db CA.
    let host_crt = srv.scratch().join("host.crt");
    let host_key = srv.scratch().join("host.key");
    std::fs::write(
        &host_crt,
        dt_ca::pem::to_pem("CERTIFICATE", &service.tls_cert_der),
    )
    .unwrap();
    write_private(&host_key, service.key.to_pkcs8_pem().as_bytes());

    let tls = ServerTls {
        cert: out.join("server.crt"),
        key: out.join("server.key"),
        client_ca: out.join("server.cas"),
    };

    // PostgreSQL: `hostssl ... cert` maps the certificate's CN to the user.
    let pg = Postgres::start(
        &tls,
        "local all all trust\nhostssl all all 127.0.0.1/32 cert\nhostnossl all all 127.0.0.1/32 reject\n",
    );
    pg.psql_admin("create role alice login; create role bob login");
    let psql = |user: &str, crt: &Path, key: &Path| {
        Command::new("psql")
            .arg(format!(
                "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname=postgres sslmode=verify-full sslrootcert={} sslcert={} sslkey={} connect_timeout=10",
                pg.port,
                tls.client_ca.display(),
                crt.display(),
                key.display()
            ))
            .args(["-At", "-c", "select current_user"])
            .output()
            .unwrap()
    };
    let ok = psql("alice", &alice_crt, &alice_key);
    assert!(
        ok.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        pg.log()
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "alice");
    let wrong_user = psql("alice", &bob_crt, &bob_key);
    assert!(!wrong_user.status.success());
    let err = String::from_utf8_lossy(&wrong_user.stderr);
    assert!(err.contains("certificate authentication failed"), "{err}");
    let other_ca = psql("alice", &host_crt, &host_key);
    assert!(
        !other_ca.status.success(),
        "a host-CA certificate must not log in"
    );

    // MariaDB: REQUIRE SUBJECT pins the user to its certificate.
    let maria = Mariadb::start(&tls);
    maria.sql_admin(
        "create user alice@'%' require subject '/CN=alice'; grant select on *.* to alice@'%';",
    );
    let mariadb = |crt: &Path, key: &Path| {
        Command::new("mariadb")
            .args(["--protocol=TCP", "--host=127.0.0.1", "--user=alice"])
            .arg(format!("--port={}", maria.port))
            .arg(format!("--ssl-ca={}", tls.client_ca.display()))
            .arg(format!("--ssl-cert={}", crt.display()))
            .arg(format!("--ssl-key={}", key.display()))
            .args([
                "--ssl-verify-server-cert",
                "-N",
                "-e",
                "select current_user()",
            ])
            .output()
            .unwrap()
    };
    let ok = mariadb(&alice_crt, &alice_key);
    assert!(
        ok.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        maria.log()
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "alice@%");
    let wrong = mariadb(&bob_crt, &bob_key);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("ERROR 1045"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let other_ca = mariadb(&host_crt, &host_key);
    assert!(
        !other_ca.status.success(),
        "a host-CA certificate must not log in"
    );
}
