//! Keeps the workspace's dependency direction true (STYLE.md "Workspace layout"):
//! pure crates never reach an async runtime, a network stack, a database driver or the TPM
//! library, and server crates never link the client-side device crate. Reads the real
//! resolved graph from `cargo metadata`, so a transitive dependency counts too.
//!
//! The graph is filtered to the host platform: a Linux build never downloads crates that only
//! other platforms use (e.g. `android_system_properties`), so an unfiltered `cargo metadata
//! --offline` fails on a fresh machine whose cargo cache holds only what the build fetched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::process::Command;

const PURE: [&str; 6] = [
    "dt-types",
    "dt-attest",
    "dt-ceremony",
    "dt-authz",
    "dt-ca",
    "dt-dbwire",
];
const FORBIDDEN_IN_PURE: [&str; 7] = [
    "tokio",
    "tonic",
    "axum",
    "hyper",
    "rusqlite",
    "tokio-postgres",
    "tss-esapi",
];
const SERVER: [&str; 12] = [
    "devtrust",
    "dt-auth",
    "dt-store",
    "dt-web",
    "dt-node",
    "dt-agent",
    "dt-kube",
    "dt-db",
    "dt-app",
    "dt-desktop",
    "dt-tls",
    "dt-mdm",
];
/// The user's and the admin's programs talk to the cluster, never to its storage, and never
/// carry the server side: what they link is what `dt-client` offers.
const CLIENTS: [&str; 2] = ["dtsh", "dtctl"];
const NEVER_IN_CLIENTS: [&str; 11] = [
    "dt-store",
    "rusqlite",
    "tokio-postgres",
    "dt-auth",
    "dt-web",
    "dt-node",
    "dt-agent",
    "dt-kube",
    "dt-db",
    "dt-app",
    "dt-desktop",
];
/// Access points run on the runtime next to the resources they guard: no storage driver.
const ACCESS_POINTS: [&str; 5] = ["dt-agent", "dt-node", "dt-kube", "dt-db", "dt-app"];
/// The MDM sync service talks to the auth service, never to storage.
const NO_STORAGE: [&str; 1] = ["dt-mdm"];

struct Graph {
    /// package id -> name
    names: HashMap<String, String>,
    /// package id -> ids of its normal (non-dev, non-build) dependencies
    deps: HashMap<String, Vec<String>>,
}

/// The host triple, as rustc reports it (`host: x86_64-unknown-linux-gnu`).
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

fn metadata(host: &str) -> std::process::Output {
    Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--offline",
            "--filter-platform",
            host,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs")
}

fn graph() -> Graph {
    let host = host_triple();
    // Offline, so crates for other platforms (never downloaded by a Linux build) are not
    // needed. When this package was built alone, the host's crates of the rest of the
    // workspace may not be in the cache yet: fetch those (for the host only), then retry.
    let mut out = metadata(&host);
    if !out.status.success() {
        let fetched = Command::new(env!("CARGO"))
            .args(["fetch", "--target", &host])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo fetch runs");
        assert!(fetched.success(), "cargo fetch --target {host} failed");
        out = metadata(&host);
    }
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let names = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let deps = v["resolve"]["nodes"]
        .as_array()
        .expect("resolve.nodes")
        .iter()
        .map(|n| {
            let normal = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().unwrap().to_string())
                .collect();
            (n["id"].as_str().unwrap().to_string(), normal)
        })
        .collect();
    Graph { names, deps }
}

/// Every package name reachable from `root` through normal dependencies.
fn closure(g: &Graph, root: &str) -> BTreeSet<String> {
    let start = g
        .names
        .iter()
        .find(|(_, n)| n.as_str() == root)
        .map(|(id, _)| id.clone());
    let Some(start) = start else {
        panic!("{root} is not in the workspace")
    };
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([start]);
    while let Some(id) = queue.pop_front() {
        for d in g.deps.get(&id).into_iter().flatten() {
            if seen.insert(g.names[d].clone()) {
                queue.push_back(d.clone());
            }
        }
    }
    seen
}

#[test]
fn pure_crates_stay_pure() {
    let g = graph();
    for krate in PURE {
        let reach = closure(&g, krate);
        let bad: Vec<_> = FORBIDDEN_IN_PURE
            .iter()
            .filter(|f| reach.contains(**f))
            .collect();
        assert!(
            bad.is_empty(),
            "{krate} reaches {bad:?}: pure crates must not do I/O"
        );
    }
}

#[test]
fn server_crates_never_link_client_device_code() {
    let g = graph();
    for krate in SERVER {
        let reach = closure(&g, krate);
        assert!(!reach.contains("dt-device"), "{krate} depends on dt-device");
        assert!(!reach.contains("tss-esapi"), "{krate} links libtss2");
    }
}

#[test]
fn client_programs_link_neither_storage_nor_servers() {
    let g = graph();
    for krate in CLIENTS {
        let reach = closure(&g, krate);
        let bad: Vec<_> = NEVER_IN_CLIENTS
            .iter()
            .filter(|f| reach.contains(**f))
            .collect();
        assert!(bad.is_empty(), "{krate} depends on {bad:?}");
        assert!(
            reach.contains("dt-client"),
            "{krate} must go through dt-client"
        );
    }
    // Only the user's program carries device code; the admin's does not need it.
    assert!(closure(&g, "dtsh").contains("dt-device"));
    assert!(!closure(&g, "dtctl").contains("dt-device"));
}

#[test]
fn access_points_link_no_storage_driver() {
    let g = graph();
    for krate in ACCESS_POINTS {
        let reach = closure(&g, krate);
        for driver in ["dt-store", "rusqlite", "tokio-postgres"] {
            assert!(!reach.contains(driver), "{krate} depends on {driver}");
        }
        assert!(
            reach.contains("dt-authz"),
            "{krate} must decide through dt-authz"
        );
    }
}

#[test]
fn the_mdm_service_links_no_storage_driver() {
    let g = graph();
    for krate in NO_STORAGE {
        let reach = closure(&g, krate);
        for driver in ["dt-store", "rusqlite", "tokio-postgres", "dt-auth"] {
            assert!(!reach.contains(driver), "{krate} depends on {driver}");
        }
    }
}

/// Test-only stand-ins (the fake Kubernetes API server) never reach what ships.
#[test]
fn shipped_crates_never_link_test_stand_ins() {
    let g = graph();
    for krate in [
        "devtrust", "dtctl", "dtsh", "dt-cli", "dt-store", "dt-node", "dt-kube", "dt-agent",
        "dt-auth", "dt-mdm",
    ] {
        let reach = closure(&g, krate);
        assert!(
            !reach.contains("dt-fakekube"),
            "{krate} depends on dt-fakekube"
        );
        assert!(
            !reach.contains("dt-fakemdm"),
            "{krate} depends on dt-fakemdm"
        );
        for kit in [
            "dt-testkit",
            "dt-store-conformance",
            "dt-node-testkit",
            "dt-e2e",
        ] {
            assert!(!reach.contains(kit), "{krate} depends on {kit}");
        }
    }
}

#[test]
fn the_check_itself_sees_real_edges() {
    // Guard against a vacuous pass: the auth service does reach tokio and the store.
    let g = graph();
    let reach = closure(&g, "dt-auth");
    assert!(reach.contains("tokio") && reach.contains("dt-store") && reach.contains("rusqlite"));
}
