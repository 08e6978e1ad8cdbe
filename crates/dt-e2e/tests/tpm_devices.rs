//! TPM devices through the real binaries and a real software TPM (issue 4's "done when"):
//! `dtsh device enroll --current-device` with `DTSH_TPM_TCTI` pointing at swtpm and
//! software credentials NOT allowed; the EK certificate allow-list on a real swtpm-localca
//! chain (trusted, untrusted, EK public key only); bad PEM refused when written. Every
//! refusal: a clear error on the terminal and a failed `device.enroll` audit event.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::*;
use dt_testkit::swtpm::{LocalCa, Swtpm};

const PASSWORD: &str = "correct-horse-battery";

/// dtsh on a device whose key store is the given software TPM.
fn dtsh_tpm(home: &Home, device_home: &Path, tcti: &str, serial: &str, args: &[&str]) -> Out {
    Run::new(&DTSH, args.iter().copied())
        .env("DTSH_HOME", &home.path)
        .env("DTSH_DEVICE_HOME", device_home)
        .env("DTSH_TPM_TCTI", tcti)
        .env("DTSH_DEVICE_SERIAL", serial)
        .env("DTSH_DEVICE_KEYSTORE", "tpm")
        .run()
}

fn set_allowed_cas(s: &Server, pems: &[String]) -> Out {
    let doc = serde_json::json!({
        "kind": "cluster_auth_preference",
        "version": "v2",
        "metadata": {"name": "cluster-auth-preference"},
        "spec": {"device_trust": {"mode": "optional", "ekcert_allowed_cas": pems}},
    });
    let path = s.write_file("cap.json", &doc.to_string());
    s.dtctl(&["create", "-f", &path, "--force"])
}

fn device_json(s: &Server, tag: &str) -> serde_json::Value {
    s.dtctl(&["get", &format!("device/{tag}"), "--format=json"])
        .json()
}

fn failed_enroll_messages(s: &Server) -> Vec<String> {
    s.events(&["--type=device.enroll"])
        .into_iter()
        .filter(|e| e["success"] == false)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn tpm_device_enrolls_and_authenticates_without_software_credentials() {
    let ca = LocalCa::new();
    let tpm = Swtpm::start_with_ek_certs(&ca);
    let s = Server::start();
    let home = s.new_user("tina", "access,editor", "root", PASSWORD);
    let dev = tempfile::tempdir().unwrap();

    let out = dtsh_tpm(
        &home,
        dev.path(),
        &tpm.tcti,
        "TPM-E2E-1",
        &["device", "enroll", "--current-device"],
    );
    assert!(
        out.ok()
            .contains("Device \"TPM-E2E-1\"/Linux registered and enrolled"),
        "{out}"
    );

    let d = device_json(&s, "TPM-E2E-1");
    assert_eq!(d["spec"]["enroll_status"], "enrolled");
    assert_eq!(
        d["spec"]["credential"]["attestation_type"], "tpm_ekcert",
        "EK cert sent, no allow-list"
    );
    assert!(
        d["spec"]["credential"]["tpm_ekcert_serial"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        d["spec"]["credential"]["tpm_ak_public"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    // Enrolling authenticated the device right away...
    let status = dtsh_tpm(&home, dev.path(), &tpm.tcti, "TPM-E2E-1", &["status"]);
    assert!(
        status.ok().contains("devtrust-device-credential-id"),
        "{status}"
    );
    // ...and the next login does it again with a fresh quote.
    dtsh_tpm(&home, dev.path(), &tpm.tcti, "TPM-E2E-1", &["logout"]).ok();
    let login = Run::new(
        &DTSH,
        [
            "login",
            &format!("--proxy={}", s.addr),
            "--user=tina",
            "--password-stdin",
            &format!("--ca-pin={}", s.pin),
        ],
    )
    .env("DTSH_HOME", &home.path)
    .env("DTSH_DEVICE_HOME", dev.path())
    .env("DTSH_TPM_TCTI", &tpm.tcti)
    .env("DTSH_DEVICE_SERIAL", "TPM-E2E-1")
    .env("DTSH_DEVICE_KEYSTORE", "tpm")
    .stdin(format!("{PASSWORD}\n"))
    .run();
    let text = login.ok();
    for ext in [
        "devtrust-device-id",
        "devtrust-device-asset-tag",
        "devtrust-device-credential-id",
    ] {
        assert!(text.contains(ext), "{ext} missing after login:\n{login}");
    }
    let auths: Vec<_> = s
        .events(&["--type=device.authenticate"])
        .into_iter()
        .filter(|e| e["success"] == true && e["device"]["asset_tag"] == "TPM-E2E-1")
        .collect();
    assert!(
        auths.len() >= 2,
        "one authentication at enrollment, one at login: {auths:?}"
    );
}

#[test]
fn ek_certificate_allow_list_on_a_real_chain() {
    let ca = LocalCa::new();
    let other = LocalCa::new();
    let _provisions_the_other_ca = Swtpm::start_with_ek_certs(&other);
    let s = Server::start();
    let home = s.new_user("ekuser", "access,editor", "root", PASSWORD);

    // Bad PEM is refused when written, with the reason, and nothing changes.
    let bad = set_allowed_cas(
        &s,
        &["-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into()],
    );
    bad.fails_with("ekcert_allowed_cas");
    assert!(s.dtctl(&["get", "cap", "--format=json"]).json()["spec"]["device_trust"]["ekcert_allowed_cas"]
        .as_array()
        .is_none_or(|a| a.is_empty()));

    // Allow only another CA: this TPM's EK certificate is refused.
    set_allowed_cas(&s, &[other.issuer_pem()]).ok();
    let tpm = Swtpm::start_with_ek_certs(&ca);
    let dev = tempfile::tempdir().unwrap();
    let out = dtsh_tpm(
        &home,
        dev.path(),
        &tpm.tcti,
        "TPM-EK-1",
        &["device", "enroll", "--current-device"],
    );
    let err = out.fails_with("does not chain to any ca in ekcert_allowed_cas");
    assert!(err.contains("tpm attestation failed"), "{out}");
    assert_eq!(
        device_json(&s, "TPM-EK-1")["spec"]["enroll_status"],
        "not_enrolled",
        "nothing enrolled"
    );
    assert!(
        failed_enroll_messages(&s)
            .iter()
            .any(|m| m.contains("does not chain")),
        "audit event for the refusal"
    );

    // A TPM without an EK certificate (EK public key only) is refused while the list is set.
    let bare = Swtpm::start();
    let dev2 = tempfile::tempdir().unwrap();
    let out = dtsh_tpm(
        &home,
        dev2.path(),
        &bare.tcti,
        "TPM-EK-2",
        &["device", "enroll", "--current-device"],
    );
    out.fails_with("sent only an endorsement key");
    assert!(
        failed_enroll_messages(&s)
            .iter()
            .any(|m| m.contains("only an endorsement key"))
    );

    // The right CA: trusted.
    set_allowed_cas(&s, &[ca.issuer_pem()]).ok();
    let dev3 = tempfile::tempdir().unwrap();
    let out = dtsh_tpm(
        &home,
        dev3.path(),
        &tpm.tcti,
        "TPM-EK-1",
        &["device", "enroll", "--current-device"],
    );
    assert!(
        out.ok().contains("Device \"TPM-EK-1\"/Linux enrolled"),
        "{out}"
    );
    assert_eq!(
        device_json(&s, "TPM-EK-1")["spec"]["credential"]["attestation_type"],
        "tpm_ekcert_trusted"
    );

    // With the list cleared, an EK public key alone is accepted (tpm_ekpub).
    set_allowed_cas(&s, &[]).ok();
    let out = dtsh_tpm(
        &home,
        dev2.path(),
        &bare.tcti,
        "TPM-EK-2",
        &["device", "enroll", "--current-device"],
    );
    assert!(out.ok().contains("enrolled"), "{out}");
    assert_eq!(
        device_json(&s, "TPM-EK-2")["spec"]["credential"]["attestation_type"],
        "tpm_ekpub"
    );
}

fn set_ek_policy(s: &Server, pems: &[String], check_at_authentication: bool) -> Out {
    let doc = serde_json::json!({
        "kind": "cluster_auth_preference",
        "version": "v2",
        "metadata": {"name": "cluster-auth-preference"},
        "spec": {"device_trust": {
            "mode": "optional",
            "ekcert_allowed_cas": pems,
            "ekcert_check_at_authentication": check_at_authentication,
        }},
    });
    let path = s.write_file("cap-ek.json", &doc.to_string());
    s.dtctl(&["create", "-f", &path, "--force"])
}

fn dtsh_tpm_login(s: &Server, home: &Home, device_home: &Path, tcti: &str, serial: &str) -> Out {
    Run::new(
        &DTSH,
        [
            "login",
            &format!("--proxy={}", s.addr),
            "--user=erik",
            "--password-stdin",
            &format!("--ca-pin={}", s.pin),
        ],
    )
    .env("DTSH_HOME", &home.path)
    .env("DTSH_DEVICE_HOME", device_home)
    .env("DTSH_TPM_TCTI", tcti)
    .env("DTSH_DEVICE_SERIAL", serial)
    .env("DTSH_DEVICE_KEYSTORE", "tpm")
    .stdin(format!("{PASSWORD}\n"))
    .run()
}

/// Issue 11, hole 11: `ekcert_allowed_cas` applies to new enrollments; with
/// `ekcert_check_at_authentication: true` it also applies, as it is today, at every device
/// authentication, so taking a CA off the list cuts off the devices it vouched for.
#[test]
fn ek_certificate_recheck_at_authentication_is_opt_in() {
    let ca = LocalCa::new();
    let other = LocalCa::new();
    let _provisions_the_other_ca = Swtpm::start_with_ek_certs(&other);
    let tpm = Swtpm::start_with_ek_certs(&ca);
    let s = Server::start();
    let home = s.new_user("erik", "access,editor", "root", PASSWORD);
    set_ek_policy(&s, &[ca.issuer_pem()], false).ok();
    let dev = tempfile::tempdir().unwrap();
    let out = dtsh_tpm(
        &home,
        dev.path(),
        &tpm.tcti,
        "TPM-RECHECK-1",
        &["device", "enroll", "--current-device"],
    );
    assert!(out.ok().contains("enrolled"), "{out}");

    // Only another CA is allowed now. Without the opt-in the enrolled device still
    // authenticates (the allow-list is an enrollment rule).
    set_ek_policy(&s, &[other.issuer_pem()], false).ok();
    let login = dtsh_tpm_login(&s, &home, dev.path(), &tpm.tcti, "TPM-RECHECK-1");
    assert!(
        login.ok().contains("devtrust-device-credential-id"),
        "{login}"
    );

    // With the opt-in, today's list applies: the login works, the device is not trusted.
    set_ek_policy(&s, &[other.issuer_pem()], true).ok();
    let login = dtsh_tpm_login(&s, &home, dev.path(), &tpm.tcti, "TPM-RECHECK-1");
    assert!(
        !login.ok().contains("devtrust-device-credential-id"),
        "{login}"
    );
    assert!(
        login
            .stderr
            .contains("WARNING: this device is not trusted for this session")
            && login.stderr.contains("ekcert_check_at_authentication")
            && login
                .stderr
                .contains("does not chain to any ca in ekcert_allowed_cas"),
        "{login}"
    );
    let refused: Vec<String> = s
        .events(&["--type=device.authenticate"])
        .into_iter()
        .filter(|e| e["success"] == false)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        refused.iter().any(|m| m
            .contains("device authentication refused by ekcert_check_at_authentication")
            && m.contains("does not chain")),
        "{refused:?}"
    );

    // The enrolling CA back on the list: trusted again.
    set_ek_policy(&s, &[ca.issuer_pem()], true).ok();
    let login = dtsh_tpm_login(&s, &home, dev.path(), &tpm.tcti, "TPM-RECHECK-1");
    assert!(
        login.ok().contains("devtrust-device-credential-id"),
        "{login}"
    );
}
