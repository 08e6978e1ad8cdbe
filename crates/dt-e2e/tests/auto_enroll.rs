//! Issue 11, hole 4 on the real binaries: a device imported with a profile that matches
//! the machine and lists its OS account, but names no devtrust user, is not auto-enrolled
//! at `dtsh login` by a user with only `access` who reports its serial; named as the
//! device's `assigned_user`, the same user auto-enrolls it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;

const PASSWORD: &str = "correct-horse-battery";

fn dtsh_login(s: &Server, home: &Home, device_home: &Path, serial: &str) -> Out {
    Run::new(
        &DTSH,
        [
            "login",
            &format!("--proxy={}", s.addr),
            "--user=mallory",
            "--password-stdin",
            &format!("--ca-pin={}", s.pin),
        ],
    )
    .env("HOME", device_home)
    .env("DTSH_HOME", &home.path)
    .env("DTSH_DEVICE_HOME", device_home)
    .env("DTSH_DEVICE_SERIAL", serial)
    .stdin(format!("{PASSWORD}\n"))
    .run()
}

#[test]
fn auto_enrollment_needs_a_profile_that_names_the_user() {
    let s = Server::start();
    let cap = serde_json::json!({
        "kind": "cluster_auth_preference",
        "version": "v2",
        "metadata": {"name": "cluster-auth-preference"},
        "spec": {"device_trust": {
            "mode": "optional",
            "auto_enroll": true,
            "allow_software_credentials": true,
        }},
    });
    let path = s.write_file("cap.json", &cap.to_string());
    s.dtctl(&["create", "-f", &path, "--force"]).ok();

    // What this machine reports, as an MDM would have it.
    let dev = tempfile::tempdir().unwrap();
    let collected = Run::new(&DTSH, ["device", "collect", "--format=json"])
        .env("HOME", dev.path())
        .env("DTSH_DEVICE_SERIAL", "AUTO-1")
        .run();
    let data: serde_json::Value = serde_json::from_str(collected.ok()).unwrap();
    let d = &data["data"];
    let field = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    let csv = format!(
        "os,asset_tag,model_identifier,os_version,os_build,os_usernames,assigned_user\n\
         linux,AUTO-1,{m},{v},{b},{u},\n\
         linux,AUTO-2,{m},{v},{b},{u},mallory\n",
        m = field("model_identifier"),
        v = field("os_version"),
        b = field("os_build"),
        u = field("os_username"),
    );
    let path = s.write_file("devices.csv", &csv);
    s.dtctl(&["devices", "import", &path]).ok();

    let home = s.new_user("mallory", "access", "root", PASSWORD);
    let login = dtsh_login(&s, &home, dev.path(), "AUTO-1");
    login.ok();
    assert!(
        login.stderr.contains(
            "WARNING: this device is not trusted: auto-enrollment refused: the device's MDM profile does not name user \"mallory\""
        ),
        "{login}"
    );
    let d1 = s.dtctl(&["get", "device/AUTO-1", "--format=json"]).json();
    assert_eq!(d1["spec"]["enroll_status"], "not_enrolled", "{d1}");
    assert!(d1["spec"]["owner"].is_null(), "{d1}");
    let refused: Vec<String> = s
        .events(&["--type=device.token.create", "--user=mallory"])
        .into_iter()
        .filter(|e| e["success"] == false)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        refused
            .iter()
            .any(|m| m.contains("does not name user \"mallory\"")),
        "{refused:?}"
    );

    // Nor can he register and enroll it himself: self-enrollment needs device verbs that
    // `access` does not grant, and the refusal says which.
    Run::new(&DTSH, ["device", "enroll", "--current-device"])
        .env("HOME", dev.path())
        .env("DTSH_HOME", &home.path)
        .env("DTSH_DEVICE_HOME", dev.path())
        .env("DTSH_DEVICE_SERIAL", "AUTO-1")
        .run()
        .fails_with(
            "cannot register this device (self-enrollment needs the create, create_enroll_token and enroll verbs on device",
        );
    let d1 = s.dtctl(&["get", "device/AUTO-1", "--format=json"]).json();
    assert_eq!(d1["spec"]["enroll_status"], "not_enrolled", "{d1}");

    // The device assigned to mallory: auto-enrolled at login, and his.
    let dev2 = tempfile::tempdir().unwrap();
    let login = dtsh_login(&s, &home, dev2.path(), "AUTO-2");
    login.ok();
    assert!(login.stderr.contains("enrolled automatically"), "{login}");
    let d2 = s.dtctl(&["get", "device/AUTO-2", "--format=json"]).json();
    assert_eq!(d2["spec"]["enroll_status"], "enrolled", "{d2}");
    assert_eq!(d2["spec"]["owner"], "mallory", "{d2}");
}
