//! Database access point helpers shared by the database tests: `devtrust db start` as a
//! child process, the profile's TLS files the database clients present, the cluster mode,
//! and polling.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEVTRUST, Home, Server};

/// `devtrust db start`, killed on drop.
pub struct AccessPoint {
    child: Child,
    pub addr: String,
}

impl AccessPoint {
    pub fn start(args: &[String]) -> AccessPoint {
        let mut child = Command::new(DEVTRUST)
            .args(["db", "start"])
            .args(args)
            .env("DEVTRUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the address is read: a closed pipe would fail the
            // access point's later output.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(a) = l.trim().strip_prefix("listen:") {
                    return AccessPoint {
                        child,
                        addr: a.trim().to_string(),
                    };
                }
                seen.push(l);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("devtrust db start did not print its address: {seen:?}");
    }

    pub fn port(&self) -> &str {
        self.addr.rsplit_once(':').unwrap().1
    }
}

impl Drop for AccessPoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dtctl auth sign --format=db --host=localhost,127.0.0.1`: the files a database server
/// started by the test needs (its certificate and key, and the CA that signs the access
/// point's client certificates).
pub fn db_server_tls(srv: &Server) -> dt_testkit::ServerTls {
    let out = srv.scratch().join("dbcerts");
    srv.dtctl(&[
        "auth",
        "sign",
        "--format=db",
        "--host=localhost,127.0.0.1",
        "--out",
        out.to_str().unwrap(),
    ])
    .ok();
    dt_testkit::ServerTls {
        cert: out.join("server.crt"),
        key: out.join("server.key"),
        client_ca: out.join("server.cas"),
    }
}

/// The TLS certificate and key of the profile at `home` (what psql presents).
pub fn profile_tls(home: &Home) -> (PathBuf, PathBuf) {
    let store = dt_client::ProfileStore {
        home: home.path.clone(),
    };
    let p = store.current().unwrap();
    let f = store.files(&p.proxy);
    (f.tls_cert(), f.key_pem())
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn set_cluster_mode(srv: &Server, mode: &str) {
    let f = srv.write_file(
        "cap.yaml",
        &format!(
            "kind: cluster_auth_preference\nversion: v2\nmetadata: {{name: cluster-auth-preference}}\nspec: {{device_trust: {{mode: {mode}}}}}\n"
        ),
    );
    srv.dtctl(&["create", "-f", &f, "--force"]).ok();
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}
