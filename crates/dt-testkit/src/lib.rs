//! The devtrust test kit: real parts that tests start and stop, never shipped (every user is
//! a `[dev-dependencies]` entry).
//!
//! - [`Postgres`]: a PostgreSQL server of its own (`initdb`, a free port, `ssl=on` with the
//!   files you give it, your `pg_hba.conf`), run as the `postgres` user.
//! - [`Mariadb`]: a MariaDB server of its own (`mariadb-install-db`, a free port, TLS with the
//!   files you give it).
//!
//! - [`swtpm`]: a software TPM per test, and private EK certificate authorities.
//! - [`PgDatabase`]: a fresh database on the PostgreSQL server the tests share.
//! - [`bench`](mod@bench): knobs and latency figures for the benchmarks.
//!
//! Both servers need root (as CI and the development machines run) and the servers' binaries, which
//! `scripts/install-deps.sh` installs; a missing binary fails the test with what to install,
//! it is never skipped. Both stop when dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bench;
pub mod programs;
pub mod swtpm;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A long-running program of the test or benchmark (a server, an access point, a tunnel),
/// killed when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `program` and wait (up to 60 s) for a stdout line containing `needle`; returns the
/// daemon and the lines it printed so far. Its later output is drained.
pub fn daemon(
    program: &str,
    args: &[&str],
    env: &[(&str, &Path)],
    needle: &str,
) -> (Daemon, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut c = Command::new(program);
    c.args(args)
        .env("DEVTRUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            let done = l.contains(needle);
            lines.push(l);
            if done {
                return (Daemon(child), lines);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{program} did not print {needle:?}: {lines:?}");
}

/// The value after `name` on the first line that starts with it (e.g. `listen:`).
pub fn field(lines: &[String], name: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
}

/// Add `user` with `roles` through `dtctl` (a closure over the admin's `dtctl`), then log in
/// with `dtsh` (the program at `dtsh`) into the profile at `home` with the signup token and
/// the password "correct horse battery", trusting the auth server at `addr` by `pin`.
pub fn signup_login(
    dtctl: impl Fn(&[&str]) -> String,
    dtsh: &str,
    addr: &str,
    pin: &str,
    user: &str,
    roles: &str,
    home: &Path,
) {
    use std::io::Write;
    let added = dtctl(&["users", "add", user, &format!("--roles={roles}")]);
    let signup = added
        .split("--signup-token=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no signup token in {added:?}"))
        .to_string();
    let mut login = Command::new(dtsh)
        .args([
            "login",
            &format!("--proxy={addr}"),
            &format!("--user={user}"),
            &format!("--signup-token={signup}"),
            "--password-stdin",
            &format!("--ca-pin={pin}"),
        ])
        .env("DTSH_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery\n")
        .unwrap();
    assert!(
        login.wait().unwrap().success(),
        "dtsh login as {user} failed"
    );
}

/// Run a command; panic with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The PostgreSQL server tests share: `DEVTRUST_TEST_PG` (a libpq connection string
/// without `dbname`), or `host=127.0.0.1 port=5432 user=postgres`.
pub fn shared_postgres() -> String {
    std::env::var("DEVTRUST_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "host=127.0.0.1 port=5432 user=postgres".into())
}

/// A fresh database on the [shared PostgreSQL server](shared_postgres), dropped (with
/// force) when this is dropped. An unreachable server fails the test; it is never skipped.
pub struct PgDatabase {
    /// The database's name (unique to this process and call).
    pub name: String,
}

impl PgDatabase {
    /// Create a database named `{prefix}_{pid}_{n}_{nanos}`.
    pub fn create(prefix: &str) -> PgDatabase {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!("{prefix}_{}_{n}_{nanos}", std::process::id());
        if let Err(e) = shared_psql(&format!("CREATE DATABASE \"{name}\"")) {
            panic!(
                "PostgreSQL is required for this test and `{}` did not create a database: {e} \
                 (start PostgreSQL or point DEVTRUST_TEST_PG at one)",
                shared_postgres()
            );
        }
        PgDatabase { name }
    }

    /// A libpq connection string for this database.
    pub fn conn(&self) -> String {
        format!("{} dbname={}", shared_postgres(), self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = shared_psql(&sql) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Run `sql` on the shared server's `postgres` database with `psql`.
fn shared_psql(sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .arg(format!("{} dbname=postgres", shared_postgres()))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// TLS files for a database server: certificate chain, key, and the CA it trusts for client
/// certificates (all PEM).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// A PostgreSQL server of the test's own.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub bindir: PathBuf,
    pub port: u16,
}

fn as_postgres(bin: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin);
    c
}

impl Postgres {
    /// Start a server with TLS from `tls` and this `pg_hba.conf` (the unix socket in
    /// [`Postgres::socket_dir`] should stay `local all all trust` for [`Postgres::psql_admin`]).
    pub fn start(tls: &ServerTls, pg_hba: &str) -> Postgres {
        let bindir = PathBuf::from(
            run(Command::new("pg_config").arg("--bindir"))
                .trim()
                .to_string(),
        );
        let dir = tempfile::Builder::new().prefix("dt-pg").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path()));
        run(as_postgres(&bindir.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        for (from, to) in [
            (&tls.cert, "server.crt"),
            (&tls.key, "server.key"),
            (&tls.client_ca, "client-ca.crt"),
        ] {
            std::fs::copy(from, data.join(to)).unwrap();
        }
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(data.join("pg_hba.conf"), pg_hba).unwrap();
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path()));
        let port = free_port();
        run(as_postgres(&bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_ca_file=client-ca.crt -c fsync=off",
                dir.path().display()
            ))
            .arg("start"));
        Postgres { dir, bindir, port }
    }

    /// Where the unix socket is.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run SQL as the superuser over the unix socket.
    pub fn psql_admin(&self, sql: &str) -> String {
        run(Command::new("psql")
            .arg(format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.path().display(),
                self.port
            ))
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql]))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A MariaDB server of the test's own.
pub struct Mariadb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl Mariadb {
    /// Start a server with TLS from `tls` on a free port; root logs in over the unix socket.
    pub fn start(tls: &ServerTls) -> Mariadb {
        let dir = tempfile::Builder::new()
            .prefix("dt-maria")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        // --no-defaults: the machine's own my.cnf (log paths, a running server's socket)
        // must not leak into the test's server.
        run(Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--user=root", "--auth-root-authentication-method=normal"])
            .arg("--skip-test-db"));
        let port = free_port();
        let sock = dir.path().join("mysqld.sock");
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mysqld.pid").display()
            ))
            .args(["--user=root", "--bind-address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--ssl-cert={}", tls.cert.display()))
            .arg(format!("--ssl-key={}", tls.key.display()))
            .arg(format!("--ssl-ca={}", tls.client_ca.display()))
            .args(["--skip-log-bin", "--innodb-buffer-pool-size=16M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mariadbd (scripts/install-deps.sh installs mariadb-server)");
        let m = Mariadb { dir, port, child };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let ok = Command::new("mariadb")
                .arg(format!("--socket={}", sock.display()))
                .args(["-uroot", "-e", "select 1"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return m;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("mariadbd did not start: {}", m.log());
    }

    /// Run SQL as root over the unix socket.
    pub fn sql_admin(&self, sql: &str) -> String {
        run(Command::new("mariadb")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("mysqld.sock").display()
            ))
            .args(["-uroot", "-N", "-e", sql]))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait (up to 20 s) until `dtsh ARGS` with the profile at `home` lists `name` (a resource
/// that just joined).
pub fn wait_listed(dtsh: &str, home: &Path, args: &[&str], name: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(dtsh)
            .args(args)
            .env("DTSH_HOME", home)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(name) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`dtsh {}` never listed {name}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
