//! Device trust in end-to-end tests: the cluster's mode with software device keys allowed,
//! and a user who enrolls this machine with a software key and logs in again so their
//! certificates carry the device.

use super::{DTSH, Home, Run, Server};

/// The cluster-wide device-trust mode, with software device keys allowed (the tests have no
/// TPM of their own here; the TPM path has tests of its own on swtpm).
pub fn set_mode_software(srv: &Server, mode: &str) {
    let f = srv.write_file(
        "cap.yaml",
        &format!(
            "kind: cluster_auth_preference\nversion: v2\nmetadata: {{name: cluster-auth-preference}}\nspec: {{device_trust: {{mode: {mode}, allow_software_credentials: true}}}}\n"
        ),
    );
    srv.dtctl(&["create", "-f", &f, "--force"]).ok();
}

/// `user` (whose roles allow self-enrollment, e.g. `editor`) enrolls this machine with a
/// software key under `serial` and logs in again; the certificates now carry the device.
/// Keep the returned directory (the device's key) for as long as the device is used.
pub fn enroll_software_device(
    home: &Home,
    user: &str,
    password: &str,
    serial: &str,
) -> tempfile::TempDir {
    let device = tempfile::tempdir().unwrap();
    let dtsh = |args: &[&str], stdin: &str| {
        Run::new(&DTSH, args.iter().copied())
            .env("DTSH_HOME", &home.path)
            .env("DTSH_DEVICE_HOME", device.path())
            .env("DTSH_DEVICE_SERIAL", serial)
            .env("DTSH_DEVICE_KEYSTORE", "software")
            .stdin(stdin)
            .run()
    };
    dtsh(&["device", "enroll", "--current-device"], "").ok();
    let login = dtsh(
        &["login", &format!("--user={user}"), "--password-stdin"],
        &format!("{password}\n"),
    );
    assert!(login.ok().contains("devtrust-device-id"), "{login}");
    device
}
