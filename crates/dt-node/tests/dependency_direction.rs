//! The SSH access point is server code: it never links the client device crate (or the TPM
//! library), per STYLE.md. Reads the resolved graph from `cargo metadata`.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::collections::{BTreeSet, VecDeque};

#[test]
fn dt_node_never_links_client_device_code() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of = |id: &str| {
        v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["name"].as_str().unwrap().to_string())
            .unwrap()
    };
    let nodes = v["resolve"]["nodes"].as_array().unwrap();
    let root = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "dt-node")
        .map(|p| p["id"].as_str().unwrap().to_string())
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([root]);
    while let Some(id) = queue.pop_front() {
        let node = nodes.iter().find(|n| n["id"] == id.as_str()).unwrap();
        for d in node["deps"].as_array().unwrap() {
            let normal = d["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            let dep = d["pkg"].as_str().unwrap().to_string();
            if normal && seen.insert(name_of(&dep)) {
                queue.push_back(dep);
            }
        }
    }
    assert!(
        seen.contains("russh") && seen.contains("dt-authz"),
        "the walk sees real edges: {seen:?}"
    );
    for forbidden in [
        "dt-device",
        "tss-esapi",
        "dt-auth",
        "rusqlite",
        "tokio-postgres",
    ] {
        assert!(!seen.contains(forbidden), "dt-node depends on {forbidden}");
    }
}
