//! What a Linux device reports about itself (`dtsh device collect`, and every enrollment and
//! authentication): serial number, model, OS version and build, host name and user.
//!
//! # The serial number
//!
//! The serial number is what the server finds the device by (it must equal the asset tag
//! in the inventory), so it has to be the same every time. In order:
//! 1. `DTSH_DEVICE_SERIAL`, when set (`serial_source: override`, with a warning);
//! 2. the first usable DMI value of `chassis_asset_tag`, `product_serial`, `board_serial`
//!    (`serial_source: dmi:<file>`). Usable means non-empty, without whitespace, at most 256
//!    bytes, and not a firmware placeholder (`To Be Filled By O.E.M.`, `Default string`,
//!    `0`, `None`, `Not Specified`... compared case-insensitively);
//! 3. otherwise (containers and many VMs have no DMI, or only placeholders) a serial derived
//!    from `/etc/machine-id`: `MID-` + the first 16 hex digits of
//!    SHA-256(`devtrust-serial:` + machine-id), upper case (`serial_source: machine-id`),
//!    with a note the CLI prints plainly.
//!
//! `product_serial` and `board_serial` are readable by root only on most systems, so the
//! same machine can yield a different serial as root and as a user; when that can happen
//! the result carries a warning.
//!
//! Every path is injectable ([`CollectSources`]) so tests run on fake sysfs trees.

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use dt_types::device::{DeviceCollectedData, MAX_FIELD_LEN, OsType, validate_asset_tag};
use time::OffsetDateTime;

use crate::error::DeviceError;

/// Environment variable that overrides the serial number.
pub const SERIAL_OVERRIDE_ENV: &str = "DTSH_DEVICE_SERIAL";

/// Values firmware writes when nobody filled the field in (compared case-insensitively).
const PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "default",
    "0",
    "none",
    "not specified",
    "not applicable",
    "not available",
    "n/a",
    "na",
    "unknown",
    "invalid",
    "empty",
    "oem",
    "o.e.m.",
    "system serial number",
    "chassis serial number",
    "base board serial number",
    "serial number",
    "asset tag",
    "asset-1234567890",
    "no asset tag",
    "0123456789",
    "123456789",
    "1234567890",
];

/// DMI files tried for the serial number, in order, with the `serial_source` they give.
const SERIAL_FILES: [(&str, &str); 3] = [
    ("chassis_asset_tag", "dmi:chassis_asset_tag"),
    ("product_serial", "dmi:product_serial"),
    ("board_serial", "dmi:board_serial"),
];

/// Environment values collection reads, passed explicitly so tests control them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectEnv {
    /// `DTSH_DEVICE_SERIAL`.
    pub serial_override: Option<String>,
    /// `USER`.
    pub user: Option<String>,
    /// `LOGNAME`.
    pub logname: Option<String>,
}

impl CollectEnv {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var_os(k).map(|v: OsString| v.to_string_lossy().into_owned());
        CollectEnv {
            serial_override: get(SERIAL_OVERRIDE_ENV),
            user: get("USER"),
            logname: get("LOGNAME"),
        }
    }
}

/// Where collection reads from. [`CollectSources::system`] is the real machine;
/// [`CollectSources::under`] puts every path under a test root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectSources {
    /// `/sys/class/dmi/id`.
    pub dmi_dir: PathBuf,
    /// `os-release` candidates, first readable wins (`/etc/os-release`, `/usr/lib/os-release`).
    pub os_release: Vec<PathBuf>,
    /// machine-id candidates (`/etc/machine-id`, `/var/lib/dbus/machine-id`).
    pub machine_id: Vec<PathBuf>,
    /// host name candidates (`/proc/sys/kernel/hostname`, `/etc/hostname`).
    pub hostname: Vec<PathBuf>,
    /// `/etc/passwd`, to name the user when the environment doesn't.
    pub passwd: PathBuf,
    /// `/proc/self/status`, for the real uid.
    pub proc_status: PathBuf,
    pub env: CollectEnv,
}

impl CollectSources {
    /// The running machine and the process environment.
    pub fn system() -> Self {
        CollectSources {
            env: CollectEnv::from_process(),
            ..CollectSources::under(Path::new("/"))
        }
    }

    /// Every path under `root` (a fake filesystem for tests); the environment is empty.
    pub fn under(root: &Path) -> Self {
        let p = |rel: &str| root.join(rel);
        CollectSources {
            dmi_dir: p("sys/class/dmi/id"),
            os_release: vec![p("etc/os-release"), p("usr/lib/os-release")],
            machine_id: vec![p("etc/machine-id"), p("var/lib/dbus/machine-id")],
            hostname: vec![p("proc/sys/kernel/hostname"), p("etc/hostname")],
            passwd: p("etc/passwd"),
            proc_status: p("proc/self/status"),
            env: CollectEnv::default(),
        }
    }
}

/// Collected data plus what the user should be told about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    pub data: DeviceCollectedData,
    /// Plain information (e.g. where the serial came from when it is not a hardware one).
    pub notes: Vec<String>,
    /// Things that may make enrollment or authentication fail later.
    pub warnings: Vec<String>,
}

/// Collects this device's data (Linux).
pub fn collect() -> Result<Collected, DeviceError> {
    if !cfg!(target_os = "linux") {
        return Err(DeviceError::UnsupportedOs);
    }
    collect_from(&CollectSources::system(), OffsetDateTime::now_utc())
}

/// Collects from the given sources, as of `now`.
pub fn collect_from(src: &CollectSources, now: OffsetDateTime) -> Result<Collected, DeviceError> {
    let mut notes = Vec::new();
    let mut warnings = Vec::new();

    // DMI.
    let mut unreadable = Vec::new();
    let mut dmi = |file: &str| -> Option<String> {
        match fs::read(src.dmi_dir.join(file)) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim().to_string()),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                unreadable.push(file.to_string());
                None
            }
            Err(_) => None,
        }
    };
    let chassis_asset_tag = dmi("chassis_asset_tag");
    let product_serial = dmi("product_serial");
    let board_serial = dmi("board_serial");
    let product_name = dmi("product_name");
    let sys_vendor = dmi("sys_vendor");

    let dmi_serial = SERIAL_FILES
        .iter()
        .zip([&chassis_asset_tag, &product_serial, &board_serial])
        .find_map(|((_, source), value)| {
            value
                .as_deref()
                .filter(|v| usable_serial(v))
                .map(|v| (v.to_string(), *source))
        });

    let (serial_number, serial_source) = match src.env.serial_override.as_deref().map(str::trim) {
        Some(o) if !o.is_empty() => {
            validate_asset_tag(o).map_err(DeviceError::BadSerialOverride)?;
            warnings.push(format!(
                "the serial number {o:?} comes from {SERIAL_OVERRIDE_ENV}, not from the hardware; \
                 set it the same way every time, and make the inventory asset tag match it"
            ));
            (o.to_string(), "override".to_string())
        }
        _ => match dmi_serial {
            Some((serial, source)) => (serial, source.to_string()),
            None => {
                let mid = read_machine_id(&src.machine_id)?;
                let serial = serial_from_machine_id(&mid);
                notes.push(format!(
                    "no hardware serial number in DMI (usual in containers and VMs); using {serial}, \
                     derived from /etc/machine-id, which stays the same as long as machine-id does. \
                     Register this device with: dtctl devices add --os=linux --asset-tag={serial}"
                ));
                (serial, "machine-id".to_string())
            }
        },
    };
    let skipped_private = serial_source != "override"
        && SERIAL_FILES
            .iter()
            .take_while(|(_, source)| *source != serial_source)
            .any(|(file, _)| unreadable.iter().any(|u| u == file));
    if skipped_private {
        warnings.push(format!(
            "{} readable by root only here, so the serial number may differ when dtsh runs as \
             root; run dtsh as the same user every time, or set {SERIAL_OVERRIDE_ENV}",
            unreadable
                .iter()
                .map(|f| src.dmi_dir.join(f).display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
                + if unreadable.len() == 1 { " is" } else { " are" }
        ));
    }

    // Model: vendor + product name, without repeating the vendor.
    let vendor = sys_vendor.as_deref().filter(|v| usable_text(v));
    let product = product_name.as_deref().filter(|v| usable_text(v));
    let model_identifier = match (vendor, product) {
        (Some(v), Some(p)) if p.to_lowercase().starts_with(&v.to_lowercase()) => p.to_string(),
        (Some(v), Some(p)) => format!("{v} {p}"),
        (None, Some(p)) => p.to_string(),
        (Some(v), None) => v.to_string(),
        (None, None) => String::new(),
    };

    // OS release.
    let os_release = src
        .os_release
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .map(|text| parse_os_release(&text))
        .unwrap_or_default();
    let field = |k: &str| {
        os_release
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let os_version = field("VERSION_ID");
    let os_build = [field("BUILD_ID"), field("VERSION")]
        .into_iter()
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    if os_version.is_empty() {
        notes.push(
            "os-release has no VERSION_ID (rolling distribution?): the OS version is not reported"
                .into(),
        );
    }

    let hostname = src
        .hostname
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();

    let os_username = match username(src) {
        Some(u) => u,
        None => {
            warnings.push("could not tell which user is logged in (USER and LOGNAME unset)".into());
            String::new()
        }
    };

    let reported = |v: &Option<String>| {
        v.as_deref()
            .filter(|v| usable_text(v))
            .unwrap_or_default()
            .to_string()
    };
    let data = DeviceCollectedData {
        collect_time: now,
        record_time: None,
        os_type: Some(OsType::Linux),
        serial_number,
        model_identifier: clip(model_identifier),
        os_version: clip(os_version),
        os_build: clip(os_build),
        os_username: clip(os_username),
        hostname: clip(hostname),
        system_serial_number: reported(&product_serial),
        base_board_serial_number: reported(&board_serial),
        reported_asset_tag: reported(&chassis_asset_tag),
        serial_source,
    };
    data.check_sizes()
        .map_err(|why| DeviceError::NoSerial { why })?;
    Ok(Collected {
        data,
        notes,
        warnings,
    })
}

/// True for firmware placeholders (`To Be Filled By O.E.M.`, `Default string`, `0`...):
/// case-insensitive, and also any value made only of zeros, `x`s or dots.
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim().to_lowercase();
    PLACEHOLDERS.contains(&v.as_str())
        || (!v.is_empty() && v.chars().all(|c| c == '0'))
        || (!v.is_empty()
            && v.chars()
                .all(|c| c == 'x' || c == '.' || c == '-' || c == ' '))
}

/// A DMI value that can serve as the serial number.
fn usable_serial(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_FIELD_LEN
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && !is_placeholder(v)
}

/// A DMI value worth reporting (spaces allowed).
fn usable_text(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_FIELD_LEN
        && !v.chars().any(char::is_control)
        && !is_placeholder(v)
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_FIELD_LEN {
        let mut end = MAX_FIELD_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn read_machine_id(paths: &[PathBuf]) -> Result<String, DeviceError> {
    for p in paths {
        let Ok(text) = fs::read_to_string(p) else {
            continue;
        };
        let id = text.trim().to_ascii_lowercase();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(id);
        }
        return Err(DeviceError::NoSerial {
            why: format!(
                "DMI has none and {} is not a 32-digit hex machine id",
                p.display()
            ),
        });
    }
    Err(DeviceError::NoSerial {
        why: "DMI has none and there is no /etc/machine-id (run systemd-machine-id-setup)".into(),
    })
}

/// `MID-` + the first 16 hex digits (upper case) of SHA-256(`devtrust-serial:` + machine-id).
/// The prefix keeps the machine id itself from being revealed.
pub fn serial_from_machine_id(machine_id: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("devtrust-serial:{}", machine_id.trim()).as_bytes(),
    );
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("MID-{hex}")
}

/// Parses os-release(5): `KEY=value` lines, values optionally in single or double quotes
/// (with `\` escapes inside double quotes), `#` comments.
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let raw = raw.trim();
        let value = if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            let mut v = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        v.push(n);
                    }
                } else {
                    v.push(c);
                }
            }
            v
        } else if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            inner.to_string()
        } else {
            raw.to_string()
        };
        out.push((key.to_string(), value));
    }
    out
}

/// `$USER`, else `$LOGNAME`, else the passwd name of the real uid.
fn username(src: &CollectSources) -> Option<String> {
    let from_env = [&src.env.user, &src.env.logname]
        .into_iter()
        .flatten()
        .map(|u| u.trim())
        .find(|u| !u.is_empty());
    if let Some(u) = from_env {
        return Some(u.to_string());
    }
    let status = fs::read_to_string(&src.proc_status).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = fs::read_to_string(&src.passwd).ok()?;
    passwd.lines().find_map(|l| {
        let mut parts = l.split(':');
        let name = parts.next()?;
        let _password = parts.next()?;
        (parts.next()? == uid).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Self {
            let f = Fake {
                dir: tempfile::tempdir().unwrap(),
            };
            f.write("etc/os-release", "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n");
            f.write("etc/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n");
            f.write("proc/sys/kernel/hostname", "laptop\n");
            f.write(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n",
            );
            f.write(
                "proc/self/status",
                "Name:\tdtsh\nUid:\t1000\t1000\t1000\t1000\n",
            );
            f
        }
        fn write(&self, rel: &str, text: &str) {
            let p = self.dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        fn dmi(&self, file: &str, text: &str) {
            self.write(&format!("sys/class/dmi/id/{file}"), &format!("{text}\n"));
        }
        fn sources(&self) -> CollectSources {
            CollectSources::under(self.dir.path())
        }
        fn collect(&self) -> Collected {
            collect_from(&self.sources(), OffsetDateTime::UNIX_EPOCH).unwrap()
        }
    }

    #[test]
    fn chassis_asset_tag_comes_first() {
        let f = Fake::new();
        f.dmi("chassis_asset_tag", "ASSET-42");
        f.dmi("product_serial", "PF2ABCDE");
        f.dmi("board_serial", "L1HF0000");
        let c = f.collect();
        assert_eq!(c.data.serial_number, "ASSET-42");
        assert_eq!(c.data.serial_source, "dmi:chassis_asset_tag");
        assert_eq!(c.data.system_serial_number, "PF2ABCDE");
        assert_eq!(c.data.base_board_serial_number, "L1HF0000");
        assert_eq!(c.data.reported_asset_tag, "ASSET-42");
        assert!(c.notes.iter().all(|n| !n.contains("machine-id")));
    }

    #[test]
    fn placeholders_and_values_with_spaces_are_skipped() {
        let f = Fake::new();
        f.dmi("chassis_asset_tag", "To Be Filled By O.E.M.");
        f.dmi("product_serial", "VMware-56 4d 3a");
        f.dmi("board_serial", "L1HF0000");
        let c = f.collect();
        assert_eq!(c.data.serial_number, "L1HF0000");
        assert_eq!(c.data.serial_source, "dmi:board_serial");
        assert_eq!(c.data.reported_asset_tag, "");
        // Reported (not chosen) values may contain spaces.
        assert_eq!(c.data.system_serial_number, "VMware-56 4d 3a");

        for placeholder in [
            "Default string",
            "DEFAULT STRING",
            "0",
            "None",
            "not specified",
            "0000000",
            "",
        ] {
            let f = Fake::new();
            f.dmi("chassis_asset_tag", placeholder);
            f.dmi("product_serial", "PF2ABCDE");
            let c = f.collect();
            assert_eq!(c.data.serial_number, "PF2ABCDE", "{placeholder:?}");
            assert_eq!(c.data.serial_source, "dmi:product_serial");
        }
    }

    #[test]
    fn no_dmi_falls_back_to_machine_id_with_a_note() {
        let f = Fake::new();
        let c = f.collect();
        let want = serial_from_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4");
        assert_eq!(c.data.serial_number, want);
        assert_eq!(c.data.serial_source, "machine-id");
        assert!(want.starts_with("MID-") && want.len() == 20, "{want}");
        assert!(
            want[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains(&want) && n.contains("dtctl devices add")),
            "{:?}",
            c.notes
        );
        // Stable: the same machine id gives the same serial.
        assert_eq!(f.collect().data.serial_number, want);
        // Only placeholders in DMI: same fallback.
        f.dmi("chassis_asset_tag", "Default string");
        f.dmi("product_serial", "To Be Filled By O.E.M.");
        assert_eq!(f.collect().data.serial_source, "machine-id");
    }

    #[test]
    fn machine_id_serial_matches_a_reference() {
        // printf 'devtrust-serial:3d1219c7c4c5404aaa1f6d2a48adfda4' | sha256sum | cut -c1-16
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            b"devtrust-serial:3d1219c7c4c5404aaa1f6d2a48adfda4",
        );
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert_eq!(
            serial_from_machine_id("3d1219c7c4c5404aaa1f6d2a48adfda4\n"),
            format!("MID-{hex}")
        );
    }

    #[test]
    fn no_dmi_and_no_machine_id_is_an_error_that_names_the_override() {
        let f = Fake::new();
        fs::remove_file(f.dir.path().join("etc/machine-id")).unwrap();
        let err = collect_from(&f.sources(), OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert!(matches!(err, DeviceError::NoSerial { .. }));
        assert!(err.to_string().contains("DTSH_DEVICE_SERIAL"), "{err}");
        f.write("etc/machine-id", "not-a-machine-id\n");
        assert!(matches!(
            collect_from(&f.sources(), OffsetDateTime::UNIX_EPOCH),
            Err(DeviceError::NoSerial { .. })
        ));
        // The dbus copy is the second candidate.
        fs::remove_file(f.dir.path().join("etc/machine-id")).unwrap();
        f.write(
            "var/lib/dbus/machine-id",
            "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        );
        assert_eq!(f.collect().data.serial_source, "machine-id");
    }

    #[test]
    fn override_wins_with_a_warning_and_is_validated() {
        let f = Fake::new();
        f.dmi("product_serial", "PF2ABCDE");
        let mut src = f.sources();
        src.env.serial_override = Some(" LAB-7 ".into());
        let c = collect_from(&src, OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(c.data.serial_number, "LAB-7");
        assert_eq!(c.data.serial_source, "override");
        assert!(c.warnings.iter().any(|w| w.contains(SERIAL_OVERRIDE_ENV)));
        src.env.serial_override = Some("has space".into());
        assert!(matches!(
            collect_from(&src, OffsetDateTime::UNIX_EPOCH),
            Err(DeviceError::BadSerialOverride(_))
        ));
        // Empty means unset.
        src.env.serial_override = Some("".into());
        assert_eq!(
            collect_from(&src, OffsetDateTime::UNIX_EPOCH)
                .unwrap()
                .data
                .serial_source,
            "dmi:product_serial"
        );
    }

    #[test]
    fn model_os_release_host_and_user() {
        let f = Fake::new();
        f.dmi("sys_vendor", "LENOVO");
        f.dmi("product_name", "20XW0055GE");
        let c = f.collect();
        assert_eq!(c.data.model_identifier, "LENOVO 20XW0055GE");
        assert_eq!(c.data.os_type, Some(OsType::Linux));
        assert_eq!(c.data.os_version, "12");
        assert_eq!(c.data.os_build, "12 (bookworm)");
        assert_eq!(c.data.hostname, "laptop");
        // No USER/LOGNAME: uid 1000 from /proc/self/status, named in /etc/passwd.
        assert_eq!(c.data.os_username, "alice");
        c.data.check_sizes().unwrap();

        f.dmi("sys_vendor", "Dell Inc.");
        f.dmi("product_name", "Dell Inc. XPS 13");
        assert_eq!(f.collect().data.model_identifier, "Dell Inc. XPS 13");
        f.dmi("sys_vendor", "System manufacturer");
        f.dmi("product_name", "System Product Name");
        // Not in the placeholder list: reported as is.
        assert_eq!(
            f.collect().data.model_identifier,
            "System manufacturer System Product Name"
        );

        let mut src = f.sources();
        src.env.logname = Some("bob".into());
        assert_eq!(
            collect_from(&src, OffsetDateTime::UNIX_EPOCH)
                .unwrap()
                .data
                .os_username,
            "bob"
        );
        src.env.user = Some("carol".into());
        assert_eq!(
            collect_from(&src, OffsetDateTime::UNIX_EPOCH)
                .unwrap()
                .data
                .os_username,
            "carol"
        );

        f.write("etc/os-release", "ID=arch\nBUILD_ID=rolling\n");
        let c = f.collect();
        assert_eq!(c.data.os_version, "");
        assert_eq!(c.data.os_build, "rolling");
        assert!(c.notes.iter().any(|n| n.contains("VERSION_ID")));
    }

    #[test]
    fn unreadable_dmi_files_warn_about_root_vs_user() {
        use std::os::unix::fs::PermissionsExt;
        let f = Fake::new();
        f.dmi("chassis_asset_tag", "Default string");
        f.dmi("product_serial", "PF2ABCDE");
        let p = f.dir.path().join("sys/class/dmi/id/product_serial");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o000)).unwrap();
        if fs::read(&p).is_ok() {
            // Running as root: permissions don't stop us, nothing to test.
            return;
        }
        let c = f.collect();
        assert_eq!(c.data.serial_source, "machine-id");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("readable by root only")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn os_release_parsing() {
        let parsed = parse_os_release(
            "# comment\nNAME=\"Ubuntu\"\nVERSION_ID='22.04'\nVERSION=\"22.04.3 LTS (Jammy \\\"J\\\")\"\nBAD LINE\nID=ubuntu\n",
        );
        assert_eq!(
            parsed,
            vec![
                ("NAME".to_string(), "Ubuntu".to_string()),
                ("VERSION_ID".to_string(), "22.04".to_string()),
                (
                    "VERSION".to_string(),
                    "22.04.3 LTS (Jammy \"J\")".to_string()
                ),
                ("ID".to_string(), "ubuntu".to_string()),
            ]
        );
    }

    #[test]
    fn placeholder_rules() {
        for p in [
            "To Be Filled By O.E.M.",
            "Default string",
            "0",
            "None",
            "Not Specified",
            "NONE",
            "000000",
            "xxxxxxxx",
            "N/A",
        ] {
            assert!(is_placeholder(p), "{p}");
        }
        for p in ["PF2ABCDE", "C02XK0AAJGH5", "0A1", "MID-0123"] {
            assert!(!is_placeholder(p), "{p}");
        }
    }

    #[test]
    fn collecting_on_this_machine_works_or_says_why() {
        match collect() {
            Ok(c) => {
                c.data.check_sizes().unwrap();
                assert!(
                    c.data.serial_source.starts_with("dmi:")
                        || c.data.serial_source == "machine-id"
                        || c.data.serial_source == "override"
                );
            }
            Err(e) => assert!(
                matches!(e, DeviceError::NoSerial { .. } | DeviceError::UnsupportedOs),
                "{e}"
            ),
        }
    }
}
