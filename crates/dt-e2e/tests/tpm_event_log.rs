//! Issue 10, item 3: one set of limits. A TPM device sends its firmware event log with every
//! quote; real machines have logs of 30–100 KiB (a cloud VM's: 34 KiB), and dt-ceremony
//! accepts up to `MAX_TPM_EVENT_LOG_LEN` (512 KiB). Both sizes must go through enrollment
//! and authentication on the real server over the real wire (dtsh on swtpm, the log injected
//! with `DTSH_TPM_EVENT_LOG`), and one byte more must be refused with an error that names
//! the field and the limit, at enrollment and at authentication, with a failed audit event.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dt_ceremony::limits::MAX_TPM_EVENT_LOG_LEN;
use dt_testkit::swtpm::{LocalCa, Swtpm};

const PASSWORD: &str = "correct-horse-battery";

/// An event-log-sized file (the server bounds it; it does not parse it).
fn event_log(dir: &Path, len: usize) -> PathBuf {
    let p = dir.join(format!("event-log-{len}"));
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&p, bytes).unwrap();
    p
}

struct TpmDevice<'a> {
    s: &'a Server,
    home: Home,
    device_home: tempfile::TempDir,
    tcti: String,
    serial: &'static str,
}

impl TpmDevice<'_> {
    fn dtsh(&self, log: &Path, args: &[&str], stdin: &str) -> Out {
        Run::new(&DTSH, args.iter().copied())
            .env("DTSH_HOME", &self.home.path)
            .env("DTSH_DEVICE_HOME", self.device_home.path())
            .env("DTSH_TPM_TCTI", &self.tcti)
            .env("DTSH_DEVICE_SERIAL", self.serial)
            .env("DTSH_DEVICE_KEYSTORE", "tpm")
            .env("DTSH_TPM_EVENT_LOG", log)
            .stdin(stdin)
            .run()
    }

    fn enroll(&self, log: &Path) -> Out {
        self.dtsh(log, &["device", "enroll", "--current-device"], "")
    }

    fn login(&self, log: &Path, user: &str) -> Out {
        self.dtsh(
            log,
            &[
                "login",
                &format!("--proxy={}", self.s.addr),
                &format!("--user={user}"),
                "--password-stdin",
                &format!("--ca-pin={}", self.s.pin),
            ],
            &format!("{PASSWORD}\n"),
        )
    }
}

fn events(s: &Server, kind: &str, tag: &str, success: bool) -> Vec<serde_json::Value> {
    s.events(&[&format!("--type={kind}")])
        .into_iter()
        .filter(|e| e["success"] == success && e["device"]["asset_tag"] == tag)
        .collect()
}

#[test]
fn event_logs_up_to_the_limit_go_through_and_one_byte_more_is_refused() {
    let ca = LocalCa::new();
    let s = Server::start();
    let logs = tempfile::tempdir().unwrap();
    let real_size = event_log(logs.path(), 34 * 1024);
    let at_limit = event_log(logs.path(), MAX_TPM_EVENT_LOG_LEN);
    let over = event_log(logs.path(), MAX_TPM_EVENT_LOG_LEN + 1);
    let too_large = format!(
        "tpm.event_log is {} bytes, more than the {MAX_TPM_EVENT_LOG_LEN} accepted",
        MAX_TPM_EVENT_LOG_LEN + 1
    );

    // A real machine's log, then one at the limit: enrollment (which authenticates right
    // away) and a later login's authentication, each with a fresh quote and the log.
    let mut tpms = Vec::new();
    for (user, serial, log) in [
        ("evan", "EVLOG-34K", &real_size),
        ("emma", "EVLOG-512K", &at_limit),
    ] {
        let tpm = Swtpm::start_with_ek_certs(&ca);
        let home = s.new_user(user, "access,editor", "root", PASSWORD);
        let d = TpmDevice {
            s: &s,
            home,
            device_home: tempfile::tempdir().unwrap(),
            tcti: tpm.tcti.clone(),
            serial,
        };
        let out = d.enroll(log);
        assert!(
            out.ok().contains(&format!(
                "Device \"{serial}\"/Linux registered and enrolled"
            )),
            "{out}"
        );
        assert!(!out.stdout.contains("WARNING"), "{out}");
        let login = d.login(log, user);
        assert!(login.ok().contains("devtrust-device-id"), "{login}");
        assert_eq!(events(&s, "device.enroll", serial, true).len(), 1);
        assert_eq!(
            events(&s, "device.authenticate", serial, true).len(),
            2,
            "one authentication at enrollment, one at login"
        );

        if serial == "EVLOG-34K" {
            // The same enrolled device, one byte over at authentication: refused by the
            // server, the login itself goes on without the device.
            let login = d.login(&over, user);
            let text = format!("{login}");
            assert!(text.contains(&too_large), "{login}");
            assert!(!login.stdout.contains("devtrust-device-id"), "{login}");
            let failed = events(&s, "device.authenticate", serial, false);
            assert!(
                failed.iter().any(|e| e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&too_large)),
                "{failed:?}"
            );
        }
        tpms.push((tpm, d.device_home));
    }

    // One byte over at enrollment: refused, audited, and the device stays not enrolled.
    let tpm = Swtpm::start_with_ek_certs(&ca);
    let d = TpmDevice {
        s: &s,
        home: s.new_user("owen", "access,editor", "root", PASSWORD),
        device_home: tempfile::tempdir().unwrap(),
        tcti: tpm.tcti.clone(),
        serial: "EVLOG-OVER",
    };
    let out = d.enroll(&over);
    out.fails_with(&too_large);
    let failed = events(&s, "device.enroll", "EVLOG-OVER", false);
    assert!(
        failed.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&too_large)),
        "{failed:?}"
    );
    let dev = s
        .dtctl(&["get", "device/EVLOG-OVER", "--format=json"])
        .json();
    assert_eq!(dev["spec"]["enroll_status"], "not_enrolled", "{dev}");
}
