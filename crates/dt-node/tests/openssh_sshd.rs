//! Agentless OpenSSH: a real sshd (Debian openssh-server) on a loopback port, with
//! `devtrust openssh-principals` as its AuthorizedPrincipalsCommand and the cluster view kept
//! by the node runtime in OpenSSH mode; the real `ssh` client connects.
//!
//! sshd insists that the command and every parent directory are root-owned and not writable
//! by group or others, so the test copies the `devtrust` binary to a fresh directory under
//! `/usr/local/libexec` (never under /tmp) and removes it afterwards. It needs root (sshd
//! runs the helper as `AuthorizedPrincipalsCommandUser root`).
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dt_node::access::Freshness;
use dt_node::agent::{self, JoinRequest, Mode, NodeConfig};
use dt_node_testkit::*;
use dt_types::audit::EventType;

/// A root-owned copy of the helper, removed on drop.
struct HelperCopy {
    dir: PathBuf,
    bin: PathBuf,
}

impl HelperCopy {
    fn new() -> HelperCopy {
        let base = Path::new("/usr/local/libexec");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(base)
            .unwrap();
        let dir = base.join(format!(
            "devtrust-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::DirBuilder::new().mode(0o755).create(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("devtrust");
        std::fs::copy(dt_testkit::programs::program("devtrust"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        HelperCopy { dir, bin }
    }
}

impl Drop for HelperCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Client {
    dir: PathBuf,
    port: u16,
}

impl Client {
    fn new(dir: &Path, port: u16, host_ca: &str) -> Client {
        std::fs::write(
            dir.join("known_hosts"),
            format!("@cert-authority * {host_ca}\n"),
        )
        .unwrap();
        Client {
            dir: dir.to_path_buf(),
            port,
        }
    }

    /// Certificates for `u` in the client's key files.
    fn use_cert(&self, cluster: &Cluster, u: &TestUser) {
        let key = dt_ca::ClientKey::generate().unwrap();
        let cert = cluster
            .srv
            .user_ca
            .issue_ssh_user_cert(
                &key.ssh_public_key().unwrap(),
                &dt_ca::Identity {
                    username: u.name.parse().unwrap(),
                    roles: u.roles.clone(),
                    logins: u.logins.clone(),
                    bot: u.bot,
                    trait_logins: u.trait_logins.clone(),
                    device: u.device.clone(),
                    not_before: u.not_before,
                    not_after: u.not_after,
                },
            )
            .unwrap();
        let k = self.dir.join("id");
        std::fs::write(&k, key.ssh_private_key_openssh().unwrap()).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            self.dir.join("id-cert.pub"),
            format!("{}\n", cert.to_openssh().unwrap()),
        )
        .unwrap();
    }

    fn ssh(&self, cmd: &str) -> std::process::Output {
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ))
            .args([
                "-o",
                "HostKeyAlias=sshd1",
                "-o",
                "HostKeyAlgorithms=ecdsa-sha2-nistp256-cert-v01@openssh.com",
            ])
            .arg("-i")
            .arg(self.dir.join("id"))
            .args(["-p", &self.port.to_string(), "root@127.0.0.1", cmd])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn denied(out: &std::process::Output) -> bool {
    out.status.code() == Some(255)
        && String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_with_the_principals_helper() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!(
            "SKIPPED: sshd_with_the_principals_helper needs root (sshd runs the helper as root)"
        );
        return;
    }
    let cluster = Cluster::start().await;
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("node");
    let port = dt_testkit::free_port();
    let node = agent::start(NodeConfig {
        data_dir: data_dir.clone(),
        name: "sshd1".into(),
        advertise_addr: Some(format!("127.0.0.1:{port}")),
        labels: BTreeMap::new(),
        heartbeat_every: Duration::from_secs(1),
        mode: Mode::OpenSsh {
            addr: format!("127.0.0.1:{port}"),
        },
        freshness: Freshness::default(),
        auth_servers: None,
        metrics_listen: None,
        join: Some(JoinRequest {
            auth_server: cluster.addr.to_string(),
            token: dt_types::Secret::new(cluster.node_token().await),
            trust: dt_client::TrustPolicy::Pin(cluster.pin()),
        }),
    })
    .await
    .unwrap();
    eventually("the view cache", Duration::from_secs(20), async || {
        data_dir.join("cluster-view.json").exists().then_some(())
    })
    .await;
    let helper = HelperCopy::new();
    // `devtrust openssh-setup`, the real command.
    let setup = Command::new(&helper.bin)
        .args(["openssh-setup", "--max-age=3s"])
        .arg(format!("--data-dir={}", data_dir.display()))
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let lines = String::from_utf8(setup.stdout).unwrap();
    assert!(
        lines.contains(&format!(
            "AuthorizedPrincipalsCommand {} openssh-principals",
            helper.bin.display()
        )),
        "{lines}"
    );
    assert!(lines.contains("TrustedUserCAKeys "), "{lines}");
    assert!(
        lines.contains(cluster.srv.user_ca.ssh_public_key_openssh().as_str()),
        "the CA file is printed: {lines}"
    );
    let sshd = Sshd::start(work.path(), port, &format!("LogLevel VERBOSE\n{lines}"));
    let client = Client::new(
        work.path(),
        port,
        &cluster.srv.host_ca.ssh_public_key_openssh(),
    );

    // Allowed: the exit status comes back.
    client.use_cert(&cluster, &TestUser::human("uma", &["access"]));
    let out = client.ssh("echo via sshd; exit 7");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via sshd\n");

    // The helper expands `{{internal.logins}}` from the login traits too (issue 11, hole 1):
    // a certificate naming root only as a principal gets nothing from `access`.
    let mut no_traits = TestUser::human("ugo", &["access"]);
    no_traits.trait_logins.clear();
    client.use_cert(&cluster, &no_traits);
    let out = client.ssh("true");
    assert!(denied(&out), "{}", String::from_utf8_lossy(&out.stderr));
    let e = cluster
        .wait_event(
            EventType::AccessDenied,
            "access denied to root connecting to sshd1",
        )
        .await;
    assert_eq!(e.user.as_deref(), Some("ugo"));
    client.use_cert(&cluster, &TestUser::human("uma", &["access"]));

    // Cluster-wide required: no device, no entry; the helper records why.
    cluster.set_cluster_mode("required").await;
    eventually(
        "the cache to say required",
        Duration::from_secs(20),
        async || {
            std::fs::read_to_string(data_dir.join("cluster-view.json"))
                .ok()
                .filter(|t| t.contains("required"))
                .map(|_| ())
        },
    )
    .await;
    let out = client.ssh("true");
    assert!(denied(&out), "{}", String::from_utf8_lossy(&out.stderr));
    let e = cluster
        .wait_event(
            EventType::AccessDenied,
            "unauthorized device: the cluster requires a trusted device",
        )
        .await;
    assert_eq!(e.user.as_deref(), Some("uma"));
    assert_eq!(e.node.as_deref(), Some("sshd1"));
    assert!(
        sshd.log()
            .contains("devtrust: access denied to root: unauthorized device"),
        "{}",
        sshd.log()
    );

    // With a device: in.
    client.use_cert(&cluster, &TestUser::human("uma", &["access"]).with_device());
    let out = client.ssh("exit 0");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Lock the device: out again, with the lock in the audit event.
    let dev = device().device_id;
    cluster
        .apply(&format!("kind: lock\nversion: v2\nmetadata: {{name: sshd-lock}}\nspec:\n  target: {{device: {dev}}}\n"))
        .await;
    eventually(
        "the cache to hold the lock",
        Duration::from_secs(20),
        async || {
            std::fs::read_to_string(data_dir.join("cluster-view.json"))
                .ok()
                .filter(|t| t.contains("sshd-lock"))
                .map(|_| ())
        },
    )
    .await;
    let out = client.ssh("true");
    assert!(denied(&out), "{}", String::from_utf8_lossy(&out.stderr));
    let e = cluster
        .wait_event(
            EventType::AccessDenied,
            &format!("lock targeting Device:\"{dev}\" is in force"),
        )
        .await;
    assert_eq!(e.lock.as_deref(), Some("sshd-lock"));
    cluster.delete("lock", "sshd-lock").await;
    eventually(
        "the lock gone from the cache",
        Duration::from_secs(20),
        async || {
            std::fs::read_to_string(data_dir.join("cluster-view.json"))
                .ok()
                .filter(|t| !t.contains("sshd-lock"))
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(client.ssh("exit 0").status.code(), Some(0));

    // Fail closed: the node agent stops, the view ages past --max-age=3s, access is denied.
    node.stop().await;
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let out = client.ssh("true");
    assert!(denied(&out), "{}", String::from_utf8_lossy(&out.stderr));
    let e = cluster
        .wait_event(EventType::AccessDenied, "the cluster view is")
        .await;
    assert!(e.message.unwrap().contains("(limit 3 s)"));
    drop(sshd);
    drop(helper);
}
