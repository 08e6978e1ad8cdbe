//! The key files `dtsh login` writes are read by every common SSH client, not only OpenSSH:
//! paramiko (what Ansible and many Python tools use) loads the private key and its
//! certificate. Issue 10, item 9: about half of all unpadded OpenSSH ECDSA key files were
//! misread by paramiko before devtrust gave its keys a comment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

/// Loads the key with paramiko, signs with it (a misread private scalar signs wrongly),
/// attaches the certificate (paramiko checks that it certifies this key) and verifies the
/// signature; prints the key and certificate types. Exits non-zero on any error.
const PARAMIKO_CHECK: &str = r#"
import sys, paramiko
key = paramiko.ECDSAKey.from_private_key_file(sys.argv[1])
sig = key.sign_ssh_data(b"devtrust")
key.load_certificate(sys.argv[2])
assert key.verify_ssh_sig(b"devtrust", paramiko.Message(sig.asbytes())), "bad signature"
print(key.get_name(), key.public_blob.key_type)
"#;

fn paramiko_available() -> bool {
    Command::new("python3")
        .args(["-c", "import paramiko"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn paramiko_loads_every_login_key_and_its_certificate() {
    assert!(
        paramiko_available(),
        "python3 with paramiko is needed (scripts/install-deps.sh installs it)"
    );
    let server = Server::start();
    let home = server.new_user("alice", "access", "alice", "correct horse");
    // 16 logins, 16 fresh keys: without padding, all would load with probability 2^-16.
    for round in 0..16 {
        if round > 0 {
            server.login(&home, "alice", "correct horse").ok();
        }
        let keys = home.path.join("keys");
        let dir = std::fs::read_dir(&keys)
            .unwrap()
            .next()
            .expect("one profile")
            .unwrap()
            .path();
        let out = Command::new("python3")
            .args(["-c", PARAMIKO_CHECK])
            .arg(dir.join("key"))
            .arg(dir.join("key-cert.pub"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: paramiko refused the key or certificate:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ecdsa-sha2-nistp256 ecdsa-sha2-nistp256-cert-v01@openssh.com"
        );
    }
}
