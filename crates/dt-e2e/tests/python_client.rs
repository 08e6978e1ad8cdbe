//! Issue 10, item 2: the gRPC API stands on its own. A Python client generated at test time
//! from `crates/dt-proto/proto/*.proto` (grpcio + grpcio-tools, keys and signatures with
//! `cryptography`) trusts the real server by its CA pin, logs in with a signup token,
//! switches to mutual TLS, registers and enrolls a software P-256 device with a token,
//! authenticates it and checks the augmented certificates. See
//! `tests/python/device_client.py` for the steps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn python_has(modules: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_python_client_enrolls_and_authenticates_a_device() {
    assert!(
        python_has("grpc, grpc_tools, cryptography"),
        "python3 with grpcio, grpcio-tools and cryptography is needed (scripts/install-deps.sh installs them)"
    );
    let s = Server::start();
    let cap = serde_json::json!({
        "kind": "cluster_auth_preference",
        "version": "v2",
        "metadata": {"name": "cluster-auth-preference"},
        "spec": {"device_trust": {"mode": "optional", "allow_software_credentials": true}},
    });
    s.dtctl(&[
        "create",
        "-f",
        &s.write_file("cap.json", &cap.to_string()),
        "--force",
    ])
    .ok();
    let token = s.add_user("pyuser", "access,device-admin", "pyuser");

    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto_dir = manifest.join("../dt-proto/proto");
    let script = manifest.join("tests/python/device_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&proto_dir)
        .arg(&s.addr)
        .arg(&s.pin)
        .arg("pyuser")
        .arg(&token)
        .arg("PY-SERIAL-1")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the Python client failed ({}):\n-- stdout:\n{stdout}\n-- stderr:\n{stderr}\n-- server log:\n{}",
        out.status,
        s.log()
    );
    assert!(stdout.contains("OK: a Python client enrolled and authenticated a device"));

    // What the server recorded, seen through our own tools.
    let d = s
        .dtctl(&["get", "device/PY-SERIAL-1", "--format=json"])
        .json();
    assert_eq!(d["spec"]["enroll_status"], "enrolled", "{d}");
    assert_eq!(d["spec"]["owner"], "pyuser", "{d}");
    let ok_events = |t: &str| {
        s.events(&[&format!("--type={t}")])
            .into_iter()
            .filter(|e| e["success"] == true && e["user"] == "pyuser")
            .count()
    };
    assert_eq!(ok_events("device.enroll"), 1);
    assert_eq!(ok_events("device.authenticate"), 1);
}
