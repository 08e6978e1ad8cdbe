//! Database access point helpers shared by the database tests: `devtrust db start` as a
//! child process, the profile's TLS files the database clients present, the cluster mode,
//! and polling.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Home, Server};

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
