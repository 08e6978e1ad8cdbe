//! Issue 19: device posture rules at the database access point, with a real device. `dtsh`
//! enrolls a software-key device (the cluster allows software credentials for this test),
//! every `dtsh login` authenticates it again, and the auth service writes the posture
//! (attestation `software`, the OS and version from `/etc/os-release`, the time) into the
//! certificates psql presents. Each rule passes and fails; each refusal reaches psql as a
//! `FATAL` naming the rule and what would satisfy it, and the audit log records it;
//! `dtctl access explain --device` shows each rule's result.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::db::*;
use common::*;
use dt_testkit::Postgres;

const PW: &str = "correct horse battery";

fn psql(ap: &AccessPoint, home: &Home) -> std::process::Output {
    let (cert, key) = profile_tls(home);
    Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=alice dbname=postgres sslmode=require sslcert={} sslkey={} connect_timeout=10",
            ap.port(),
            cert.display(),
            key.display()
        ))
        .args(["-At", "-c", "select 1"])
        .output()
        .unwrap()
}

/// This machine's OS version as the device reports it (`VERSION_ID`), when it is a number.
fn os_version_number() -> Option<u64> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))?
        .trim_matches('"');
    v.split('.').next()?.parse().ok()
}

fn role(name: &str, posture: &str) -> String {
    format!(
        "kind: role\nversion: v7\nmetadata: {{name: {name}}}\nspec: {{options: {{device_trust: {posture}}}, allow: {{db_labels: {{env: dev}}, db_users: [alice], db_names: ['*']}}}}\n---\n"
    )
}

#[test]
fn posture_rules_at_the_database_access_point() {
    let srv = Server::start();
    let cap = srv.write_file(
        "cap.yaml",
        "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec:\n  device_trust: {mode: optional, allow_software_credentials: true}\n",
    );
    srv.dtctl(&["create", "-f", &cap, "--force"]).ok();
    let tls = db_server_tls(&srv);
    let pg = Postgres::start(
        &tls,
        "local all all trust\nhostssl all all 127.0.0.1/32 cert\nhostnossl all all 127.0.0.1/32 reject\n",
    );
    pg.psql_admin("create role alice login");
    let token = srv
        .dtctl(&["tokens", "add", "--type=db", "--format=text"])
        .ok()
        .trim()
        .to_string();
    let ap = AccessPoint::start(
        "db",
        &[
            format!("--auth-server={}", srv.addr),
            format!("--token={token}"),
            "--name=pg1".into(),
            "--listen=127.0.0.1:0".into(),
            "--labels=env=dev".into(),
            format!("--uri=localhost:{}", pg.port),
            format!("--data-dir={}", srv.scratch().join("db-ap").display()),
            format!("--ca-pin={}", srv.pin),
            "--heartbeat=1s".into(),
        ],
    );

    let version = os_version_number();
    let (os_ok, os_too_new) = match version {
        Some(v) => (format!("'{v}'"), format!("'{}'", v + 1)),
        None => ("'1'".into(), "'1'".into()),
    };
    let mut roles = String::new();
    roles += &role("db-fresh", "{max_auth_age: 8h}");
    roles += &role(
        "db-hardware",
        "{attestation_types: [tpm_ekcert_trusted, secure_enclave]}",
    );
    roles += &role(
        "db-software-os",
        &format!("{{attestation_types: [software], min_os_version: {{linux: {os_ok}}}}}"),
    );
    roles += &role(
        "db-newer-os",
        &format!("{{min_os_version: {{linux: {os_too_new}, macos: '14.4'}}}}"),
    );
    roles += &role("db-instant", "{max_auth_age: 1s}");
    let f = srv.write_file("roles.yaml", &roles);
    srv.dtctl(&["create", "-f", &f]).ok();

    // editor: to register and enroll the device itself (it grants no database).
    let alice = srv.new_user("alice", "db-fresh,editor", "", PW);
    let device = tempfile::tempdir().unwrap();
    let dtsh = |args: &[&str], stdin: &str| {
        Run::new(&DTSH, args.iter().copied())
            .env("HOME", srv.scratch())
            .env("DTSH_HOME", &alice.path)
            .env("DTSH_DEVICE_HOME", device.path())
            .env("DTSH_DEVICE_SERIAL", "POSTURE-1")
            .env("DTSH_DEVICE_KEYSTORE", "software")
            .stdin(stdin)
            .run()
    };
    let set_roles = |roles: &str| {
        let f = srv.write_file(
            "alice.yaml",
            &format!(
                "kind: user\nversion: v2\nmetadata: {{name: alice}}\nspec: {{roles: [{roles}, editor]}}\n"
            ),
        );
        srv.dtctl(&["create", "-f", &f, "--force"]).ok();
        // The login authenticates the device again: fresh posture in fresh certificates.
        dtsh(
            &["login", "--user=alice", "--password-stdin"],
            &format!("{PW}\n"),
        )
        .ok();
    };

    // Rules without a mode require a trusted device: refused before the device exists.
    let o = psql(&ap, &alice);
    assert!(
        stderr(&o).contains("FATAL:  access denied to database \"pg1\" as db user \"alice\" on db \"postgres\": a trusted device is required"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("dtsh device enroll"), "{}", stderr(&o));

    // Enrolled (software key), the device authenticates at enrollment: max_auth_age 8h passes.
    dtsh(&["device", "enroll", "--current-device"], "").ok();
    let o = psql(&ap, &alice);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = srv.dtctl(&["devices", "ls", "--format=json"]).json();
    let device_id = ["/0/metadata/name", "/0/device_id", "/0/id"]
        .iter()
        .find_map(|p| listed.pointer(p).and_then(|v| v.as_str()))
        .unwrap_or_else(|| panic!("no device id in {listed:#}"))
        .to_string();

    let refused = |rule: &str, what: &str| {
        let o = psql(&ap, &alice);
        assert!(!o.status.success(), "{rule}: allowed");
        let err = stderr(&o);
        assert!(
            err.contains(
                "FATAL:  access denied to database \"pg1\" as db user \"alice\" on db \"postgres\": role"
            ) && err.contains(&format!("posture rule {rule}: {what}")),
            "{rule}: {err}"
        );
        assert!(
            !err.contains("dtsh device enroll"),
            "a posture refusal is not about enrolling: {err}"
        );
        wait_until(&format!("the {rule} refusal is audited"), || {
            srv.events(&["--type=access.denied", "--user=alice"])
                .iter()
                .any(|e| {
                    e["resource_name"] == "pg1"
                        && e["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains(&format!("posture rule {rule}: {what}"))
                })
        });
    };

    // Attestation: a software key is not a TPM or Secure Enclave key.
    set_roles("db-hardware");
    refused(
        "attestation_types",
        "the device key is attested as software, and only tpm_ekcert_trusted, secure_enclave is accepted",
    );
    // The explanation shows the rule's result, the same way.
    let ex = srv.dtctl(&[
        "access",
        "explain",
        "--user=alice",
        "--db=pg1",
        "--db-user=alice",
        "--db-name=postgres",
        &format!("--device={device_id}"),
    ]);
    assert_eq!(ex.code, Some(3), "{ex}");
    assert!(
        ex.stdout.contains(
            "[ DENY] role mode \"db-hardware\": device_trust.attestation_types: the device key is attested as software"
        ),
        "{ex}"
    );

    // OS version, compared as a version: this machine's version passes, the next refuses.
    if version.is_some() {
        set_roles("db-software-os");
        let o = psql(&ap, &alice);
        assert!(o.status.success(), "{}", stderr(&o));
        let ex = srv.dtctl(&[
            "access",
            "explain",
            "--user=alice",
            "--db=pg1",
            "--db-user=alice",
            "--db-name=postgres",
            &format!("--device={device_id}"),
        ]);
        assert_eq!(ex.code, Some(0), "{ex}");
        assert!(
            ex.stdout.contains(
                "[    -] role mode \"db-software-os\": device_trust.min_os_version: Linux"
            ),
            "{ex}"
        );
        set_roles("db-newer-os");
        refused("min_os_version", "the device runs Linux");
    } else {
        // No numeric VERSION_ID here: no minimum can be met (fail closed).
        set_roles("db-newer-os");
        refused("min_os_version", "");
    }

    // Authentication age: a second later, 1s is exceeded; logging in again would renew it.
    set_roles("db-instant");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    refused("max_auth_age", "the device authenticated ");
    set_roles("db-fresh");
    let o = psql(&ap, &alice);
    assert!(o.status.success(), "{}", stderr(&o));
}
