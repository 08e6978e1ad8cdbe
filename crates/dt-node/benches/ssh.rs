//! SSH access point benchmark, in one run on one machine:
//!
//! 1. connect + authenticate (user certificate) + `exec true` latency (p50/p99) and
//!    connections per second, against the devtrust node and against OpenSSH sshd with
//!    certificate authentication (`TrustedUserCAKeys`), with the same russh client, and
//!    against sshd with `devtrust openssh-principals` (agentless devtrust);
//! 2. the cost of the checks themselves: certificate verification, the whole access
//!    decision, and the device-trust check alone;
//! 3. lock to termination of a live session, p50/p99 over 100+ trials.
//!
//! `cargo bench -p dt-node --bench ssh` (needs root for sshd; without it the sshd rows are
//! skipped). `DT_BENCH_N` (sequential connections, default 200), `DT_BENCH_SECS` (throughput
//! window, default 5), `DT_BENCH_CONCURRENCY` (default 8), `DT_BENCH_LOCK_TRIALS`
//! (default 100) tune it.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dt_client::ssh_client::{self, ClientCreds};
use dt_node::access::{self, Freshness, NodeFacts};
use dt_node::view::{ClusterView, Doc};
use dt_node_testkit::*;
use dt_testkit::bench::{env_usize, ms, pct};
use russh::ChannelMsg;
use time::OffsetDateTime;

struct Target {
    label: &'static str,
    addr: String,
    node: String,
}

async fn one(t: &Target, creds: &ClientCreds) -> Duration {
    let start = Instant::now();
    let conn = ssh_client::connect(&t.addr, &t.node, creds, "root")
        .await
        .unwrap();
    let out = ssh_client::exec(&conn, "true", b"").await.unwrap();
    assert_eq!(out.exit_status, Some(0), "{}", t.label);
    let took = start.elapsed();
    conn.close().await;
    took
}

struct Row {
    label: &'static str,
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

async fn measure(t: &Target, creds: &ClientCreds, n: usize, secs: u64, conc: usize) -> Row {
    for _ in 0..5 {
        one(t, creds).await; // warm up
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        lat.push(one(t, creds).await);
    }
    lat.sort();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conc {
        let (addr, node, creds) = (t.addr.clone(), t.node.clone(), creds.clone());
        workers.push(tokio::spawn(async move {
            let t = Target {
                label: "worker",
                addr,
                node,
            };
            let mut done = 0u64;
            while Instant::now() < deadline {
                one(&t, &creds).await;
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    Row {
        label: t.label,
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        per_sec: total as f64 / start.elapsed().as_secs_f64(),
    }
}

fn write_private(p: &Path, text: &str) {
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// sshd with this cluster's host certificate and `TrustedUserCAKeys`; `extra` adds lines.
/// Returns it, the directory of its files (keep it while sshd runs) and its address.
fn start_sshd(cluster: &Cluster, name: &str, extra: &str) -> (Sshd, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dt_ca::ClientKey::generate().unwrap();
    let cert = cluster
        .srv
        .host_ca
        .issue_ssh_host_cert(
            &key.ssh_public_key().unwrap(),
            name,
            &[name.to_string()],
            OffsetDateTime::now_utc() + time::Duration::days(1),
        )
        .unwrap();
    let d = dir.path();
    write_private(&d.join("host_key"), &key.ssh_private_key_openssh().unwrap());
    std::fs::write(
        d.join("host_key-cert.pub"),
        format!("{}\n", cert.to_openssh().unwrap()),
    )
    .unwrap();
    std::fs::write(
        d.join("user-ca.pub"),
        format!("{}\n", cluster.srv.user_ca.ssh_public_key_openssh()),
    )
    .unwrap();
    let port = dt_testkit::free_port();
    let sshd = Sshd::start(
        d,
        port,
        &format!(
            "LogLevel ERROR\nHostKey {d}/host_key\nHostCertificate {d}/host_key-cert.pub\nTrustedUserCAKeys {d}/user-ca.pub\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nMaxStartups 200:30:400\n{extra}",
            d = d.display()
        ),
    );
    (sshd, dir, format!("127.0.0.1:{port}"))
}

/// The same connect + `exec true` with the OpenSSH `ssh` client (a process per connection).
async fn openssh_client_p50(cluster: &Cluster, addr: &str, alias: &str, runs: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let key = dt_ca::ClientKey::generate().unwrap();
    let now = OffsetDateTime::now_utc();
    let cert = cluster
        .srv
        .user_ca
        .issue_ssh_user_cert(
            &key.ssh_public_key().unwrap(),
            &dt_ca::Identity {
                username: "bench".parse().unwrap(),
                roles: vec!["access".into()],
                logins: vec!["root".into()],
                bot: false,
                trait_logins: vec!["root".into()],
                device: Some(device()),
                not_before: now - time::Duration::minutes(1),
                not_after: now + time::Duration::hours(1),
            },
        )
        .unwrap();
    let d = dir.path();
    write_private(&d.join("id"), &key.ssh_private_key_openssh().unwrap());
    std::fs::write(
        d.join("id-cert.pub"),
        format!("{}\n", cert.to_openssh().unwrap()),
    )
    .unwrap();
    std::fs::write(
        d.join("known_hosts"),
        format!(
            "@cert-authority * {}\n",
            cluster.srv.host_ca.ssh_public_key_openssh()
        ),
    )
    .unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let (host, port, alias, d) = (
        host.to_string(),
        port.to_string(),
        alias.to_string(),
        d.to_path_buf(),
    );
    // Off the runtime's threads: the node under test runs on them.
    let mut lat = tokio::task::spawn_blocking(move || {
        let mut lat = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            let out = Command::new("ssh")
                .args([
                    "-F",
                    "/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                ])
                .arg("-o")
                .arg(format!(
                    "UserKnownHostsFile={}",
                    d.join("known_hosts").display()
                ))
                .arg("-o")
                .arg(format!("HostKeyAlias={alias}"))
                .arg("-i")
                .arg(d.join("id"))
                .arg("-o")
                .arg(format!(
                    "CertificateFile={}",
                    d.join("id-cert.pub").display()
                ))
                .args(["-p", &port, &format!("root@{host}"), "true"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            lat.push(t0.elapsed());
        }
        lat
    })
    .await
    .unwrap();
    drop(dir);
    lat.sort();
    pct(&lat, 0.5)
}

fn per_op(label: &str, iters: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iters / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let d = start.elapsed() / iters;
    println!("  {label:<58} {:>12.1} ns/op", d.as_secs_f64() * 1e9);
    d
}

fn check_costs(cluster: &Cluster) {
    println!("\nCost of the checks (one core, in process):");
    let ca =
        dt_ca::SshUserCaKey::from_openssh(&cluster.srv.user_ca.ssh_public_key_openssh()).unwrap();
    let with_device = cluster
        .user(&TestUser::human("bench", &["access", "require-trusted-device"]).with_device());
    let id =
        access::authenticate(&ca, &with_device.cert, "root", OffsetDateTime::now_utc()).unwrap();
    let presets: Vec<Doc> = ["access", "editor", "auditor", "require-trusted-device"]
        .iter()
        .map(|n| Doc {
            kind: "role".into(),
            json: format!(
                r#"{{"kind":"role","version":"v7","metadata":{{"name":"{n}"}},"spec":{{"options":{{"device_trust_mode":"required"}},"allow":{{"logins":["{{{{internal.logins}}}}"],"node_labels":{{"*":"*"}}}}}}}}"#
            ),
        })
        .chain((0..100).map(|i| Doc {
            kind: "lock".into(),
            json: format!(
                r#"{{"kind":"lock","version":"v2","metadata":{{"name":"l{i}"}},"spec":{{"target":{{"device":"other-{i}"}}}}}}"#
            ),
        }))
        .collect();
    let view = ClusterView::from_snapshot(&presets, OffsetDateTime::now_utc());
    let facts = NodeFacts {
        name: "node1".parse().unwrap(),
        labels: Default::default(),
    };
    let now = OffsetDateTime::now_utc();
    per_op(
        "certificate verification (ring ECDSA P-256 + parse)",
        2000,
        || {
            std::hint::black_box(
                access::authenticate(&ca, &with_device.cert, "root", now).unwrap(),
            );
        },
    );
    per_op(
        "whole access decision (2 roles, 100 locks, device required)",
        20000,
        || {
            let r = access::decide(&view, &id, "root", &facts, now, Freshness::default());
            assert!(std::hint::black_box(r).is_ok());
        },
    );
    let mode = dt_types::DeviceTrustMode::Required;
    per_op(
        "device-trust check alone (dt_authz::check_device)",
        1_000_000,
        || {
            std::hint::black_box(dt_authz::check_device(
                std::hint::black_box(&mode),
                std::hint::black_box(true),
                dt_authz::Principal::Human,
            ));
        },
    );
}

/// `locker` makes the locks; `cluster` issued the users' certificates and `node` follows it.
/// Both are the same auth server, or two auth servers sharing one PostgreSQL database.
async fn lock_to_termination(
    cluster: &Cluster,
    locker: &Cluster,
    node: &Node,
    trials: usize,
    label: &str,
) {
    let mut lat = Vec::with_capacity(trials);
    for i in 0..trials {
        let user = format!("victim-{i}");
        let creds = cluster.user(&TestUser::human(&user, &["access"]));
        let conn = node.connect(&creds, "root").await.unwrap();
        let mut ch = conn.open_session().await.unwrap();
        ch.exec(true, "sleep 60").await.unwrap();
        loop {
            match ch.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(_) => {}
                None => panic!("session ended early"),
            }
        }
        let t0 = Instant::now();
        locker
            .apply(&format!("kind: lock\nversion: v2\nmetadata: {{name: lock-{i}}}\nspec:\n  target: {{user: {user}}}\n"))
            .await;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ch.wait())
                .await
                .expect("terminated within 5 s")
            {
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
        }
        lat.push(t0.elapsed());
        drop(conn);
    }
    lat.sort();
    println!(
        "\nLock to termination of a live session, {label} ({trials} trials, lock API call to channel close): p50 {}, p99 {}, max {}",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_usize("DT_BENCH_N", 200);
    let secs = env_usize("DT_BENCH_SECS", 5) as u64;
    let conc = env_usize("DT_BENCH_CONCURRENCY", 8);
    let trials = env_usize("DT_BENCH_LOCK_TRIALS", 100);
    let cluster = Cluster::start().await;
    let node = Node::start(&cluster, "node1", &[]).await;
    let creds = cluster.user(&TestUser::human("bench", &["access"]).with_device());
    let root = rustix::process::geteuid().as_raw() == 0;

    println!(
        "SSH connect + authenticate (user certificate) + `exec true`, russh client, {n} sequential connections, then {conc} concurrent for {secs} s"
    );
    let mut rows = Vec::new();
    rows.push(
        measure(
            &Target {
                label: "devtrust node (russh)",
                addr: node.addr.to_string(),
                node: "node1".into(),
            },
            &creds,
            n,
            secs,
            conc,
        )
        .await,
    );
    let mut keep = Vec::new();
    let mut client_rows = vec![(
        "devtrust node",
        openssh_client_p50(&cluster, &node.addr.to_string(), "node1", 20).await,
    )];
    if root {
        let (sshd, _sshd_dir, addr) = start_sshd(&cluster, "sshd-plain", "");
        client_rows.push((
            "OpenSSH sshd, TrustedUserCAKeys",
            openssh_client_p50(&cluster, &addr, "sshd-plain", 20).await,
        ));
        rows.push(
            measure(
                &Target {
                    label: "OpenSSH sshd, TrustedUserCAKeys",
                    addr,
                    node: "sshd-plain".into(),
                },
                &creds,
                n,
                secs,
                conc,
            )
            .await,
        );
        keep.push(sshd);
        // Agentless devtrust: sshd + the principals helper (a view kept by the node runtime).
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        let agent = dt_node::agent::start(dt_node::agent::NodeConfig {
            data_dir: data.clone(),
            name: "sshd-helper".into(),
            advertise_addr: Some("127.0.0.1:1".into()),
            labels: Default::default(),
            heartbeat_every: Duration::from_secs(5),
            mode: dt_node::agent::Mode::OpenSsh {
                addr: "127.0.0.1:1".into(),
            },
            freshness: Freshness::default(),
            auth_servers: None,
            metrics_listen: None,
            join: Some(dt_node::agent::JoinRequest {
                auth_server: cluster.addr.to_string(),
                token: dt_types::Secret::new(cluster.node_token().await),
                trust: dt_client::TrustPolicy::Pin(cluster.pin()),
            }),
        })
        .await
        .unwrap();
        eventually("the view cache", Duration::from_secs(20), async || {
            data.join("cluster-view.json").exists().then_some(())
        })
        .await;
        let base = Path::new("/usr/local/libexec");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(base)
            .unwrap();
        let hdir = base.join(format!("devtrust-bench-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&hdir)
            .unwrap();
        let helper = hdir.join("devtrust");
        std::fs::copy(dt_testkit::programs::program("devtrust"), &helper).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (sshd, _sshd_dir, addr) = start_sshd(
            &cluster,
            "sshd-helper",
            &format!(
                "AuthorizedPrincipalsCommand {} openssh-principals --data-dir={} %u %k %t\nAuthorizedPrincipalsCommandUser root\n",
                helper.display(),
                data.display()
            ),
        );
        rows.push(
            measure(
                &Target {
                    label: "OpenSSH sshd + devtrust openssh-principals",
                    addr,
                    node: "sshd-helper".into(),
                },
                &creds,
                n,
                secs,
                conc,
            )
            .await,
        );
        drop(sshd);
        agent.stop().await;
        let _ = std::fs::remove_dir_all(&hdir);
    } else {
        println!("(not root: the sshd rows are skipped)");
    }
    println!(
        "\n  {:<44} {:>10} {:>10} {:>12}",
        "target", "p50", "p99", "conn/s"
    );
    for r in &rows {
        println!(
            "  {:<44} {:>10} {:>10} {:>12.1}",
            r.label,
            ms(r.p50),
            ms(r.p99),
            r.per_sec
        );
    }
    if rows.len() > 1 {
        let (a, b) = (&rows[0], &rows[1]);
        println!(
            "\n  devtrust node vs OpenSSH sshd: latency p50 ratio {:.2} (node/sshd), connections/s ratio {:.2} (node/sshd)",
            a.p50.as_secs_f64() / b.p50.as_secs_f64(),
            a.per_sec / b.per_sec
        );
    }
    println!("\n  With the OpenSSH `ssh` client (a process per connection, 20 runs):");
    for (label, p50) in &client_rows {
        println!("  {label:<44} p50 {:>10}", ms(*p50));
    }
    if client_rows.len() > 1 {
        println!(
            "  ratio (node/sshd): {:.2}",
            client_rows[0].1.as_secs_f64() / client_rows[1].1.as_secs_f64()
        );
    }
    drop(keep);
    check_costs(&cluster);
    lock_to_termination(
        &cluster,
        &cluster,
        &node,
        trials,
        "one auth server on SQLite",
    )
    .await;
    drop(node);

    // Two auth servers on one fresh PostgreSQL database: the node follows A, the locks are
    // made on B and reach A through LISTEN/NOTIFY.
    let db = dt_testkit::PgDatabase::create("dt_bench_locks");
    let conn = db.conn();
    let mut a = Cluster::start_on(Some(conn.clone())).await;
    let mut b = Cluster::start_on(Some(conn)).await;
    let node = Node::start(&a, "node-pg", &[]).await;
    lock_to_termination(
        &a,
        &b,
        &node,
        trials,
        "two auth servers on PostgreSQL (lock made on the other one)",
    )
    .await;
    drop(node);
    a.stop().await;
    b.stop().await;
    drop(db);
}
