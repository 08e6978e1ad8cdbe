//! The three devtrust programs (`devtrust`, `dtctl`, `dtsh`) for tests and benchmarks of
//! other packages.
//!
//! Each program is a package of its own (so the server never links the TPM library and `dtsh`
//! never links a storage driver), and Cargo gives `CARGO_BIN_EXE_*` only to a package's own
//! tests. So the first call in a test process runs `cargo build` for the three packages, in
//! the profile the test itself was built with, into the same target directory: a no-op when
//! they are up to date, and never a test of stale programs after an edit. Cargo releases its
//! build lock before it runs tests, so the nested build does not wait on the outer one.
//!
//! `DEVTRUST_BIN_DIR=DIR` skips the build and takes the programs from `DIR` (e.g. installed
//! release binaries).

use std::ffi::OsStr;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One of the programs, usable wherever a path is (`Command::new(DTSH)`, `&DTSH` as `&str`,
/// `{DTSH}` in a format string); the build runs on first use.
#[derive(Clone, Copy, Debug)]
pub struct Program(&'static str);

/// The server.
pub const DEVTRUST: Program = Program("devtrust");
/// The admin CLI.
pub const DTCTL: Program = Program("dtctl");
/// The user CLI.
pub const DTSH: Program = Program("dtsh");

impl Program {
    /// The program's path, as text.
    pub fn as_str(&self) -> &'static str {
        static PATHS: OnceLock<[String; 3]> = OnceLock::new();
        let paths = PATHS.get_or_init(|| {
            PROGRAMS.map(|n| {
                program(n)
                    .into_os_string()
                    .into_string()
                    .expect("a UTF-8 target directory")
            })
        });
        let i = PROGRAMS
            .iter()
            .position(|n| *n == self.0)
            .expect("one of the three programs");
        &paths[i]
    }
}

impl Deref for Program {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<OsStr> for Program {
    fn as_ref(&self) -> &OsStr {
        OsStr::new(self.as_str())
    }
}

impl AsRef<Path> for Program {
    fn as_ref(&self) -> &Path {
        Path::new(self.as_str())
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The packages (and programs) built together.
const PROGRAMS: [&str; 3] = ["devtrust", "dtctl", "dtsh"];

/// The path of program `name` (`devtrust`, `dtctl` or `dtsh`), built first if needed.
///
/// # Panics
/// On an unknown name, when the build fails (with cargo's output), or when the program is
/// missing afterwards.
pub fn program(name: &str) -> PathBuf {
    assert!(
        PROGRAMS.contains(&name),
        "unknown program {name:?}: one of {PROGRAMS:?}"
    );
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| match std::env::var_os("DEVTRUST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => build(),
    });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} does not exist (DEVTRUST_BIN_DIR or the build put no program there)",
        path.display()
    );
    path
}

/// Builds the three programs next to the running test and returns that directory.
fn build() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/PROFILE/deps/TEST-HASH
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/PROFILE/deps")
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .expect("target/PROFILE has a parent")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--target-dir")
        .arg(&target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => panic!("no profile directory in {}", exe.display()),
    }
    for p in PROGRAMS {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .output()
        .expect("running cargo to build devtrust, dtctl and dtsh");
    assert!(
        out.status.success(),
        "building devtrust, dtctl and dtsh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir
}
