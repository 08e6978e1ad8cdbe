//! PostgreSQL over TLS and statement timeouts, against a real PostgreSQL server this test
//! starts on a free port with `ssl=on` (`dt_testkit::Postgres`: initdb as the `postgres`
//! user; its certificate is issued by a CA made with dt-ca) and a pg_hba that refuses
//! connections without TLS.
//!
//! Needs root (to run initdb and the server as `postgres`) and PostgreSQL's binaries
//! (`pg_config --bindir`); their absence fails the test, it is never skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dt_ca::{CaKind, CertAuthority, ClientKey};
use dt_store::Backend;
use dt_store::postgres::PostgresBackend;
use dt_store_conformance::fast_tuning;
use time::OffsetDateTime;

/// A CA certificate (PEM) and a server certificate and key issued by it for `localhost`.
fn pki(name: &str) -> (String, String, String) {
    let now = OffsetDateTime::now_utc();
    let ca = CertAuthority::generate(name, CaKind::Host, now).unwrap();
    let key = ClientKey::generate().unwrap();
    let cert = ca
        .issue_tls_server_cert(
            &key.spki_der(),
            &["localhost".to_string()],
            &[],
            now + time::Duration::days(1),
        )
        .unwrap();
    (
        ca.cert_pem(),
        dt_ca::pem::to_pem("CERTIFICATE", &cert),
        key.to_pkcs8_pem(),
    )
}

/// A PostgreSQL server of the test's own ([`dt_testkit::Postgres`]) that takes TLS or
/// nothing over TCP, and the CA its certificate chains to.
struct TlsPostgres {
    pg: dt_testkit::Postgres,
    /// The CA certificate (PEM) a client verifies the server with, in `files`.
    ca: PathBuf,
    files: tempfile::TempDir,
}

impl TlsPostgres {
    fn start() -> TlsPostgres {
        let files = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pki("pg-test-ca");
        let write = |name: &str, pem: String| {
            let path = files.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca = write("ca.pem", ca);
        let tls = dt_testkit::ServerTls {
            cert: write("server.crt", cert),
            key: write("server.key", key),
            // No test here presents a client certificate; the server asks for one it does
            // not require.
            client_ca: ca.clone(),
        };
        // TLS or nothing over TCP; the unix socket (for the test's own admin client) is trusted.
        let pg = dt_testkit::Postgres::start(
            &tls,
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        );
        TlsPostgres { pg, ca, files }
    }

    fn conn(&self, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user=postgres dbname=postgres connect_timeout=10 {extra}",
            self.pg.port
        )
    }

    /// A plain client over the unix socket (not through dt-store).
    async fn admin(&self) -> tokio_postgres::Client {
        let conn = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.pg.socket_dir().display(),
            self.pg.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

async fn connect(conn: &str) -> Result<Arc<PostgresBackend>, String> {
    PostgresBackend::connect(conn, fast_tuning())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_tls_only_server() {
    let pg = TlsPostgres::start();
    let ca = &pg.ca;

    // Without TLS the server refuses (pg_hba), so a working connection below is TLS.
    let err = connect(&pg.conn("127.0.0.1", "sslmode=disable"))
        .await
        .err()
        .expect("plain TCP must be refused");
    assert!(err.contains("no encryption"), "{err}");

    // require: encrypted, certificate not checked (libpq semantics).
    let b = connect(&pg.conn("127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    b.put("/k", b"v".to_vec(), None).await.unwrap();
    assert_eq!(b.get("/k").await.unwrap().unwrap().value, b"v");
    b.close().await;
    // prefer (the default) takes TLS when offered.
    connect(&pg.conn("127.0.0.1", ""))
        .await
        .unwrap()
        .close()
        .await;

    // verify-full: right CA and host name.
    let rootcert = format!("sslmode=verify-full sslrootcert={}", ca.display());
    connect(&pg.conn("localhost", &rootcert))
        .await
        .unwrap()
        .close()
        .await;
    // verify-full: the certificate does not name 127.0.0.1; verify-ca does not ask it to.
    let err = connect(&pg.conn("127.0.0.1", &rootcert))
        .await
        .err()
        .unwrap();
    assert!(err.contains("sslmode=verify-full"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    let verify_ca = format!("sslmode=verify-ca sslrootcert={}", ca.display());
    connect(&pg.conn("127.0.0.1", &verify_ca))
        .await
        .unwrap()
        .close()
        .await;

    // verify-full against another CA: a clear refusal naming the mode and the cause.
    let (other_ca, _, _) = pki("some-other-ca");
    let other = pg.files.path().join("other-ca.pem");
    std::fs::write(&other, other_ca).unwrap();
    let wrong = format!("sslmode=verify-full sslrootcert={}", other.display());
    let err = connect(&pg.conn("localhost", &wrong)).await.err().unwrap();
    eprintln!("verify-full, wrong CA: {err}");
    assert!(
        err.contains("cannot connect to PostgreSQL (sslmode=verify-full)")
            && err.contains("UnknownIssuer"),
        "{err}"
    );
    // verify-full without a readable root certificate says what to add.
    let missing = "sslmode=verify-full sslrootcert=/nonexistent/ca.pem";
    let err = connect(&pg.conn("localhost", missing)).await.err().unwrap();
    assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_stuck_on_a_lock_times_out() {
    let pg = TlsPostgres::start();
    let b = PostgresBackend::connect_with(
        &pg.conn("127.0.0.1", "sslmode=require"),
        fast_tuning(),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    b.put("/before", b"1".to_vec(), None).await.unwrap();

    // Another session holds the write lock (every write updates dt_seq first).
    let admin = pg.admin().await;
    admin
        .batch_execute("BEGIN; SELECT v FROM dt_seq FOR UPDATE")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        b.put("/stuck", b"2".to_vec(), None),
    )
    .await
    .expect("the write must fail by its statement timeout, not hang");
    let err = res
        .expect_err("a write blocked on the lock fails")
        .to_string();
    assert!(err.contains("statement timeout"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Once the lock is gone, writes work again.
    admin.batch_execute("ROLLBACK").await.unwrap();
    b.put("/after", b"3".to_vec(), None).await.unwrap();
    b.close().await;
}
