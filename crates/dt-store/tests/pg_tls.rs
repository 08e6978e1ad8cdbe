//! PostgreSQL over TLS and statement timeouts, against a real PostgreSQL server this test
//! starts on a free port with `ssl=on` (initdb as the `postgres` user; its certificate is
//! issued by a CA made with dt-ca) and a pg_hba that refuses connections without TLS.
//!
//! Needs root (to run initdb and the server as `postgres`) and PostgreSQL's binaries
//! (`pg_config --bindir`); their absence fails the test, it is never skipped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dt_ca::{CaKind, CertAuthority, ClientKey};
use dt_store::Backend;
use dt_store::postgres::PostgresBackend;
use dt_store_conformance::fast_tuning;
use time::OffsetDateTime;

struct TlsPostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn as_postgres(bin: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin);
    c
}

fn chown_postgres(path: &Path) {
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

impl TlsPostgres {
    /// Start a server whose certificate chains to the returned CA (PEM file path).
    fn start() -> (TlsPostgres, PathBuf) {
        let bindir = PathBuf::from(
            String::from_utf8(
                Command::new("pg_config")
                    .arg("--bindir")
                    .output()
                    .expect("pg_config")
                    .stdout,
            )
            .unwrap()
            .trim(),
        );
        let dir = tempfile::Builder::new()
            .prefix("dt-pg-tls")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        chown_postgres(dir.path());
        run(as_postgres(&bindir.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        let (ca, cert, key) = pki("pg-test-ca");
        std::fs::write(data.join("server.crt"), cert).unwrap();
        std::fs::write(data.join("server.key"), key).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        // TLS or nothing over TCP; the unix socket (for the test's own admin client) is trusted.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        chown_postgres(dir.path());
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca).unwrap();
        let port = free_port();
        run(as_postgres(&bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off",
                dir.path().display()
            ))
            .arg("start"));
        (TlsPostgres { dir, bindir, port }, ca_path)
    }

    fn conn(&self, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user=postgres dbname=postgres connect_timeout=10 {extra}",
            self.port
        )
    }

    /// A plain client over the unix socket (not through dt-store).
    async fn admin(&self) -> tokio_postgres::Client {
        let conn = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.path().display(),
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

async fn connect(conn: &str) -> Result<Arc<PostgresBackend>, String> {
    PostgresBackend::connect(conn, fast_tuning())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_tls_only_server() {
    let (pg, ca) = TlsPostgres::start();

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
    let other = pg.dir.path().join("other-ca.pem");
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
    let (pg, _) = TlsPostgres::start();
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
