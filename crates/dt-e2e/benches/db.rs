//! `cargo bench -p dt-e2e --bench db`: pgbench through the database access point against
//! pgbench straight to the same PostgreSQL server, as ratios.
//!
//! Real parts only: `devtrust start`, `devtrust db start`, `dtsh proxy db --tunnel` (the
//! binaries of this build), a PostgreSQL server of the benchmark's own (dt-testkit) with TLS
//! from `dtctl auth sign --format=db`, and the real `pgbench`. Both paths use TLS to the
//! server; the access point's path adds the local tunnel, TLS to the access point, the
//! decision and the per-statement audit.
//!
//! Printed: TPS of pgbench's select-only script (`-S`) with 8 clients for `BENCH_SECONDS`
//! (10), and connection setup time (pgbench `-C`: a new connection per transaction).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use dt_testkit::programs::{DEVTRUST, DTCTL, DTSH};
use std::process::Command;

use dt_testkit::{Postgres, ServerTls, daemon, field, run, signup_login, wait_listed};

/// pgbench's "tps = N" figure.
fn pgbench(conn: &str, extra: &[&str], seconds: u64) -> f64 {
    let out = run(Command::new("pgbench")
        .args(["-n", "-S", "-c", "8", "-j", "2", "-T"])
        .arg(seconds.to_string())
        .args(extra)
        .arg(conn));
    tps(&out)
}

fn tps(out: &str) -> f64 {
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{out}"))
}

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("auth");
    let (auth, lines) = daemon(
        &DEVTRUST,
        &[
            "start",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("HOME", dir.path())],
        "Next:",
    );
    let addr = field(&lines, "listen:");
    let pin = field(&lines, "CA pin:");
    let dtctl = |args: &[&str]| run(Command::new(DTCTL).arg("--data-dir").arg(&data).args(args));
    let certs = dir.path().join("certs");
    dtctl(&[
        "auth",
        "sign",
        "--format=db",
        "--host=localhost,127.0.0.1",
        "--out",
        certs.to_str().unwrap(),
    ]);
    let tls = ServerTls {
        cert: certs.join("server.crt"),
        key: certs.join("server.key"),
        client_ca: certs.join("server.cas"),
    };
    // The access point logs in with a certificate; pgbench's direct path uses TLS without
    // one (trust), so both paths pay for TLS to the server.
    let pg = Postgres::start(
        &tls,
        "local all all trust\nhostssl all alice 127.0.0.1/32 cert\nhostssl all direct 127.0.0.1/32 trust\n",
    );
    pg.psql_admin("create role alice login; create role direct login; grant pg_read_all_data to alice, direct");
    run(Command::new("pgbench")
        .args(["-i", "-q", "-s", "1"])
        .arg(format!(
            "host={} port={} user=postgres dbname=postgres",
            pg.socket_dir().display(),
            pg.port
        )));

    let token = dtctl(&["tokens", "add", "--type=db", "--format=text"])
        .trim()
        .to_string();
    let ap_dir = dir.path().join("ap");
    let (_ap, ap_lines) = daemon(
        &DEVTRUST,
        &[
            "db",
            "start",
            &format!("--auth-server={addr}"),
            &format!("--token={token}"),
            "--name=pg1",
            "--listen=127.0.0.1:0",
            &format!("--uri=localhost:{}", pg.port),
            &format!("--data-dir={}", ap_dir.display()),
            &format!("--ca-pin={pin}"),
            "--heartbeat=1s",
        ],
        &[],
        "listen:",
    );
    let ap_addr = field(&ap_lines, "listen:");
    let role = dir.path().join("role.yaml");
    std::fs::write(
        &role,
        "kind: role\nversion: v7\nmetadata: {name: db}\nspec: {allow: {db_labels: {'*': '*'}, db_users: [alice], db_names: ['*']}}\n",
    )
    .unwrap();
    dtctl(&["create", "-f", role.to_str().unwrap()]);
    let home = dir.path().join("alice");
    signup_login(dtctl, &DTSH, &addr, &pin, "alice", "db", &home);
    wait_listed(&DTSH, &home, &["db", "ls"], "pg1");
    let (_tunnel, lines) = daemon(
        &DTSH,
        &[
            "proxy",
            "db",
            "pg1",
            "--tunnel",
            "--port=0",
            "--db-user=alice",
            "--db-name=postgres",
        ],
        &[("DTSH_HOME", &home)],
        "Tunnel to database",
    );
    let port = lines
        .last()
        .and_then(|l| l.split("127.0.0.1:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let through = format!("host=127.0.0.1 port={port} user=alice dbname=postgres sslmode=disable");
    // Straight to the access point with the profile's certificate, as psql without dtsh.
    let profile = dt_client::ProfileStore { home: home.clone() };
    let files = profile.files(&profile.current().unwrap().proxy);
    let ap_conn = format!(
        "host=127.0.0.1 port={} user=alice dbname=postgres sslmode=require sslcert={} sslkey={}",
        ap_addr.rsplit_once(':').unwrap().1,
        files.tls_cert().display(),
        files.key_pem().display()
    );
    let direct = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=direct dbname=postgres sslmode=require",
        pg.port
    );

    println!(
        "pgbench -S, 8 clients, {seconds} s each; PostgreSQL 15 on loopback; SQLite auth service"
    );
    let d_tps = pgbench(&direct, &[], seconds);
    let p_tps = pgbench(&ap_conn, &[], seconds);
    let a_tps = pgbench(&through, &[], seconds);
    let d_conn = pgbench(&direct, &["-C"], seconds);
    let p_conn = pgbench(&ap_conn, &["-C"], seconds);
    let a_conn = pgbench(&through, &["-C"], seconds);
    println!();
    println!(
        "                                  direct   access point  ratio   dtsh tunnel + AP  ratio"
    );
    println!(
        "select-only TPS                   {d_tps:>7.0}  {p_tps:>9.0}      {:>5.2}  {a_tps:>9.0}         {:>5.2}",
        p_tps / d_tps,
        a_tps / d_tps
    );
    println!(
        "new connection per txn (TPS)      {d_conn:>7.0}  {p_conn:>9.0}      {:>5.2}  {a_conn:>9.0}         {:>5.2}",
        p_conn / d_conn,
        a_conn / d_conn
    );
    println!(
        "connection setup (ms, 8 clients)  {:>7.2}  {:>9.2}      {:>5.2}  {:>9.2}         {:>5.2}",
        8_000.0 / d_conn,
        8_000.0 / p_conn,
        d_conn / p_conn,
        8_000.0 / a_conn,
        d_conn / a_conn
    );
    println!("(aim: access point / direct TPS >= 0.8; every statement is one audit event)");
    drop(auth);
}
