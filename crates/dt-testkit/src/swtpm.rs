//! Test support: a software TPM (swtpm) per test, on free loopback ports with its own state
//! directory, killed on drop; and private swtpm-localca certificate authorities so EK
//! certificates come from a real EK chain without touching /var/lib.
//!
//! If swtpm or swtpm_setup cannot run, the test panics with the reason: TPM tests never skip.

use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// swtpm_localca serializes on a lock file, but creating the CA itself races: keep one
/// swtpm_setup at a time per test binary.
static SETUP_LOCK: Mutex<()> = Mutex::new(());

/// A private swtpm-localca CA (root + intermediate "issuer" created on first use).
pub struct LocalCa {
    dir: TempDir,
}

impl Default for LocalCa {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the local ca");
        let ca = dir.path().join("ca");
        std::fs::create_dir_all(&ca).unwrap();
        let conf = format!(
            "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
            ca = ca.display()
        );
        std::fs::write(dir.path().join("localca.conf"), conf).unwrap();
        std::fs::write(
            dir.path().join("localca.options"),
            "--platform-manufacturer devtrust\n--platform-version 2.1\n--platform-model test\n",
        )
        .unwrap();
        let setup = format!(
            "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {d}/localca.conf\ncreate_certs_tool_options = {d}/localca.options\nactive_pcr_banks = sha256\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("swtpm_setup.conf"), setup).unwrap();
        LocalCa { dir }
    }

    fn setup_conf(&self) -> PathBuf {
        self.dir.path().join("swtpm_setup.conf")
    }

    /// The CA that signs EK certificates (swtpm-localca's intermediate), PEM.
    pub fn issuer_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca/issuercert.pem"))
            .expect("issuercert.pem: provision a TPM with this CA first")
    }

    /// The root CA, PEM.
    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca/swtpm-localca-rootca-cert.pem"))
            .expect("root ca: provision a TPM with this CA first")
    }
}

/// One running swtpm.
pub struct Swtpm {
    child: Child,
    pub port: u16,
    state: TempDir,
    /// TCTI string for tss-esapi.
    pub tcti: String,
}

fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port pair for swtpm");
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {what}: {e} (install swtpm swtpm-tools tpm2-tools)")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Swtpm {
    /// A fresh TPM with no EK certificates (manufactured by swtpm itself on first start).
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir for swtpm state"))
    }

    /// A TPM manufactured by `swtpm_setup` with RSA-2048 and ECC EK certificates (and a
    /// platform certificate) signed by `ca`.
    pub fn start_with_ek_certs(ca: &LocalCa) -> Self {
        let state = tempfile::tempdir().expect("temp dir for swtpm state");
        {
            let _guard = SETUP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            run(
                Command::new("swtpm_setup")
                    .arg("--tpm2")
                    .arg("--tpmstate")
                    .arg(state.path())
                    .args([
                        "--create-ek-cert",
                        "--create-platform-cert",
                        "--overwrite",
                        "--pcr-banks",
                        "sha256",
                    ])
                    .arg("--config")
                    .arg(ca.setup_conf())
                    .arg("--logfile")
                    .arg(state.path().join("setup.log")),
                "swtpm_setup",
            );
        }
        Self::start_in(state)
    }

    fn start_in(state: TempDir) -> Self {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .args([
                    "--server",
                    &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                ])
                .args([
                    "--ctrl",
                    &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
                ])
                .args(["--tpmstate", &format!("dir={}", state.path().display())])
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start swtpm: {e} (install swtpm)"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    last_err = format!("swtpm exited ({status}): {err}");
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Swtpm {
                        child,
                        port,
                        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
                        state,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = String::from("swtpm did not listen within 10 s");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("swtpm could not be started: {last_err}");
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test randomness from /dev/urandom (the server functions take it injected).
pub fn rng() -> impl FnMut(&mut [u8]) {
    |buf: &mut [u8]| {
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(buf)
            .unwrap();
    }
}
