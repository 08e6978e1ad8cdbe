//! Test harness for the devtrust binaries: real processes, real sockets, real storage.
//!
//! - [`Server`]: `devtrust start` on `127.0.0.1:0` in its own temp dir; the address and CA
//!   pin are read from its stdout; dropping it sends SIGTERM and asserts a clean exit
//!   (status 0 and "stopped" printed). Its stderr (the log) goes to a file, so a chatty
//!   `DEVTRUST_LOG=trace` never blocks on a full pipe.
//! - [`Home`]: one `DTSH_HOME` (a user's dtsh profile); `Server::dtsh`/`dtctl_as` run the
//!   CLIs with it.
//! - [`Out`]: exit code, stdout and stderr of one command, with assertions that print all
//!   three when they fail.
//! - [`PgDb`]: a fresh PostgreSQL database per test (dropped afterwards). PostgreSQL being
//!   unreachable fails the test loudly; it is never skipped.
#![allow(dead_code)]

pub mod apps;
pub mod db;
pub mod trust;
pub mod web;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use dt_testkit::programs::{DEVTRUST, DTCTL, DTSH};

/// How long any one CLI command may take before the test fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to print its address, or to exit after SIGTERM.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Variables that would make a command use something other than what the test set up.
const SCRUBBED_ENV: &[&str] = &[
    "DTSH_HOME",
    "DTSH_TPM_EVENT_LOG",
    "DTSH_PROXY",
    "DTSH_USER",
    "DTCTL_DATA_DIR",
    "DTCTL_AUTH_SERVER",
    "DEVTRUST_CONFIG",
    "DEVTRUST_DATA_DIR",
    "DEVTRUST_LOG",
    "VISUAL",
    "EDITOR",
];

// ---------------------------------------------------------------------------------------
// Command output

/// What one command did.
pub struct Out {
    pub cmd: String,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\n-- exit: {:?}\n-- stdout:\n{}\n-- stderr:\n{}",
            self.cmd, self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Assert exit 0; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.success(), "command failed:\n{self}");
        &self.stdout
    }

    /// Assert a non-zero exit (not a crash) whose stderr names `needle`; returns stderr.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) -> &str {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a non-zero exit:\n{self}"
        );
        assert!(
            !self.stderr.contains("panicked"),
            "the program panicked:\n{self}"
        );
        assert!(
            self.stderr.contains(needle),
            "expected stderr to contain {needle:?}:\n{self}"
        );
        &self.stderr
    }

    /// Like [`Out::fails_with`], and the whole error is one `ERROR: ...` line.
    #[track_caller]
    pub fn fails_with_one_line(&self, needle: &str) -> &str {
        self.fails_with(needle);
        let lines: Vec<&str> = self.stderr.trim().lines().collect();
        assert_eq!(lines.len(), 1, "expected a one-line error:\n{self}");
        assert!(
            lines[0].starts_with("ERROR: "),
            "expected the line to start with `ERROR: `:\n{self}"
        );
        &self.stderr
    }

    /// The first line of stderr, which is what a person reads first.
    pub fn first_err_line(&self) -> &str {
        self.stderr.lines().next().unwrap_or("")
    }

    /// stdout parsed as one JSON value.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// stdout parsed as JSON lines.
    #[track_caller]
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.ok()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("line {l:?} is not JSON ({e}):\n{self}"))
            })
            .collect()
    }
}

/// How to run one command.
pub struct Run<'a> {
    pub bin: &'a str,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub stdin: Option<String>,
    pub cwd: Option<PathBuf>,
}

impl<'a> Run<'a> {
    pub fn new<I, S>(bin: &'a str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Run {
            bin,
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            stdin: None,
            cwd: None,
        }
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn stdin(mut self, s: impl Into<String>) -> Self {
        self.stdin = Some(s.into());
        self
    }

    pub fn cwd(mut self, p: impl Into<PathBuf>) -> Self {
        self.cwd = Some(p.into());
        self
    }

    /// Run to completion (at most [`COMMAND_TIMEOUT`]). stdin is always a pipe (closed
    /// after writing `stdin`, if any), so the program never sees a terminal.
    #[track_caller]
    pub fn run(self) -> Out {
        let name = Path::new(self.bin)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmd_line = std::iter::once(name)
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        let mut c = Command::new(self.bin);
        c.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for k in SCRUBBED_ENV {
            c.env_remove(k);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd_line}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = self.stdin.unwrap_or_default();
        // A program that exits without reading stdin makes this fail (EPIPE): harmless.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let output = match rx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(r) => r.unwrap_or_else(|e| panic!("waiting for {cmd_line}: {e}")),
            Err(_) => {
                signal(pid, "KILL");
                panic!("{cmd_line} did not finish within {COMMAND_TIMEOUT:?}");
            }
        };
        Out {
            cmd: cmd_line,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------
// dtsh profiles

/// One user's dtsh profile directory (`DTSH_HOME`). The directory itself is created by
/// dtsh on first successful login, so a test can check that a refused login wrote nothing.
pub struct Home {
    _tmp: tempfile::TempDir,
    pub path: PathBuf,
}

impl Home {
    pub fn new() -> Home {
        let tmp = tempfile::Builder::new()
            .prefix("dtsh-home")
            .tempdir()
            .expect("temp dir");
        let path = tmp.path().join("dtsh");
        Home { _tmp: tmp, path }
    }

    /// Every file under the profile directory.
    pub fn files(&self) -> Vec<PathBuf> {
        walk(&self.path)
    }
}

impl Default for Home {
    fn default() -> Self {
        Home::new()
    }
}

/// Every regular file below `dir` (empty when it does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            out.extend(walk(&p));
        } else if ft.is_file() {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A port nothing listens on (bound, then released).
pub fn closed_port_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr.to_string()
}

// ---------------------------------------------------------------------------------------
// Server

/// How to start a server.
#[derive(Default)]
pub struct ServerOpts {
    /// Reuse a data dir (e.g. to restart); default: `<scratch>/data`.
    pub data_dir: Option<PathBuf>,
    /// `devtrust start --config FILE`.
    pub config: Option<PathBuf>,
    pub env: Vec<(String, String)>,
}

impl ServerOpts {
    pub fn data_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(d.into());
        self
    }
    pub fn config(mut self, c: impl Into<PathBuf>) -> Self {
        self.config = Some(c.into());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Start and wait until the server printed its address and pin.
    #[track_caller]
    pub fn start(self) -> Server {
        self.spawn().ready()
    }

    /// Start without waiting (to start several servers at the same moment).
    pub fn spawn(self) -> Starting {
        let scratch = tempfile::Builder::new()
            .prefix("devtrust-test")
            .tempdir()
            .expect("temp dir");
        let data_dir = self.data_dir.unwrap_or_else(|| scratch.path().join("data"));
        let log_path = scratch.path().join("server.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut c = Command::new(DEVTRUST);
        c.arg("start")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0");
        if let Some(cfg) = &self.config {
            c.arg("--config").arg(cfg);
        }
        for k in SCRUBBED_ENV {
            c.env_remove(k);
        }
        c.env("HOME", scratch.path());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = c.spawn().expect("spawn devtrust start");
        let stdout = child.stdout.take().expect("stdout is piped");
        let buf = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut b) = sink.lock() {
                    b.push_str(&line);
                    b.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        Starting {
            scratch,
            data_dir,
            log_path,
            child,
            stdout: buf,
            lines: rx,
        }
    }
}

/// A server process that has not yet printed its address.
pub struct Starting {
    scratch: tempfile::TempDir,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Child,
    stdout: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Starting {
    /// Wait for the `listen:` and `CA pin:` lines.
    #[track_caller]
    pub fn ready(mut self) -> Server {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        let (mut addr, mut pin) = (None::<String>, None::<String>);
        while addr.is_none() || pin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let t = line.trim();
                    if let Some(a) = t.strip_prefix("listen:") {
                        addr = Some(a.trim().to_string());
                    } else if let Some(p) = t.strip_prefix("CA pin:") {
                        pin = Some(p.trim().to_string());
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    panic!(
                        "devtrust start did not print its address and pin ({e:?}; exit {status:?})\n-- stdout:\n{}\n-- log:\n{}",
                        self.stdout.lock().map(|s| s.clone()).unwrap_or_default(),
                        std::fs::read_to_string(&self.log_path).unwrap_or_default()
                    );
                }
            }
        }
        Server {
            addr: addr.unwrap_or_default(),
            pin: pin.unwrap_or_default(),
            data_dir: self.data_dir,
            log_path: self.log_path,
            child: Some(self.child),
            stdout: self.stdout,
            scratch: self.scratch,
        }
    }
}

/// A running `devtrust start`.
pub struct Server {
    pub addr: String,
    pub pin: String,
    pub data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    stdout: Arc<Mutex<String>>,
    scratch: tempfile::TempDir,
}

/// What a stopped server printed.
pub struct Stopped {
    pub stdout: String,
    pub log: String,
}

impl Server {
    /// A fresh server with SQLite storage in a temp dir.
    #[track_caller]
    pub fn start() -> Server {
        ServerOpts::default().start()
    }

    pub fn opts() -> ServerOpts {
        ServerOpts::default()
    }

    /// A scratch directory that lives as long as the server (for test files).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Wait (at most 10 s) until stdout contains `needle`; returns all of stdout.
    #[track_caller]
    pub fn wait_stdout(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "the server never printed {needle:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, then assert exit 0 and "stopped" on stdout.
    #[track_caller]
    pub fn stop(mut self) -> Stopped {
        self.terminate_and_check()
    }

    /// SIGKILL the server and reap it (a crash: no shutdown code runs).
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "KILL");
            let _ = child.wait();
        }
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    #[track_caller]
    fn terminate_and_check(&mut self) -> Stopped {
        let Some(mut child) = self.child.take() else {
            return Stopped {
                stdout: self.stdout(),
                log: self.log(),
            };
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + SERVER_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "devtrust did not exit within {SERVER_TIMEOUT:?} of SIGTERM\n-- log:\n{}",
                        self.log()
                    );
                }
                Err(e) => panic!("waiting for devtrust: {e}"),
            }
        };
        // The reader thread sees EOF once the process is gone; wait for the last line.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stdout().contains("stopped") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stopped = Stopped {
            stdout: self.stdout(),
            log: self.log(),
        };
        assert!(
            status.success(),
            "devtrust exited with {status} after SIGTERM\n-- stdout:\n{}\n-- log:\n{}",
            stopped.stdout,
            stopped.log
        );
        assert!(
            stopped.stdout.contains("devtrust auth service stopped"),
            "devtrust did not say it stopped\n-- stdout:\n{}\n-- log:\n{}",
            stopped.stdout,
            stopped.log
        );
        stopped
    }

    // --- CLIs -------------------------------------------------------------------------

    fn base_env<'a>(&self, run: Run<'a>) -> Run<'a> {
        run.env("HOME", self.scratch.path())
    }

    /// `dtctl --data-dir DATA ARGS` (the local admin identity).
    #[track_caller]
    pub fn dtctl(&self, args: &[&str]) -> Out {
        self.dtctl_run(args, &[])
    }

    /// `dtctl --data-dir DATA ARGS` with extra environment (e.g. EDITOR).
    #[track_caller]
    pub fn dtctl_run(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let mut a: Vec<OsString> = vec!["--data-dir".into(), self.data_dir.clone().into()];
        a.extend(args.iter().map(OsString::from));
        let mut run = self.base_env(Run::new(&DTCTL, a));
        for (k, v) in env {
            run = run.env(k, v);
        }
        run.run()
    }

    /// `dtctl ARGS` as the user logged in at `home` (no --data-dir).
    #[track_caller]
    pub fn dtctl_as(&self, home: &Home, args: &[&str]) -> Out {
        self.base_env(Run::new(&DTCTL, args.iter().copied()))
            .env("DTSH_HOME", &home.path)
            .run()
    }

    /// `dtsh ARGS` with `DTSH_HOME=home`, feeding `stdin`.
    #[track_caller]
    pub fn dtsh(&self, home: &Home, args: &[&str], stdin: &str) -> Out {
        self.base_env(Run::new(&DTSH, args.iter().copied()))
            .env("DTSH_HOME", &home.path)
            .stdin(stdin)
            .run()
    }

    /// `dtctl users add NAME --roles=.. [--logins=..]`; returns the signup token.
    #[track_caller]
    pub fn add_user(&self, name: &str, roles: &str, logins: &str) -> String {
        let roles = format!("--roles={roles}");
        let logins = format!("--logins={logins}");
        let mut args = vec!["users", "add", name, &roles];
        if !logins.ends_with('=') {
            args.push(&logins);
        }
        let out = self.dtctl(&args);
        signup_token_of(&out)
    }

    /// `dtsh login` with a signup token and `--password-stdin`.
    #[track_caller]
    pub fn signup_login(&self, home: &Home, user: &str, token: &str, password: &str) -> Out {
        self.dtsh(
            home,
            &[
                "login",
                &format!("--proxy={}", self.addr),
                &format!("--user={user}"),
                &format!("--signup-token={token}"),
                "--password-stdin",
                &format!("--ca-pin={}", self.pin),
            ],
            &format!("{password}\n"),
        )
    }

    /// `dtsh login` with a password on stdin.
    #[track_caller]
    pub fn login(&self, home: &Home, user: &str, password: &str) -> Out {
        self.dtsh(
            home,
            &[
                "login",
                &format!("--proxy={}", self.addr),
                &format!("--user={user}"),
                "--password-stdin",
                &format!("--ca-pin={}", self.pin),
            ],
            &format!("{password}\n"),
        )
    }

    /// Add a user and sign them up; returns their logged-in profile.
    #[track_caller]
    pub fn new_user(&self, name: &str, roles: &str, logins: &str, password: &str) -> Home {
        let token = self.add_user(name, roles, logins);
        let home = Home::new();
        self.signup_login(&home, name, &token, password).ok();
        home
    }

    /// `dtctl events ls --format=json ARGS`, parsed.
    #[track_caller]
    pub fn events(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut a = vec!["events", "ls", "--format=json"];
        a.extend_from_slice(args);
        self.dtctl(&a).json_lines()
    }

    /// Write a file in the scratch dir; returns its path as a string.
    pub fn write_file(&self, name: &str, text: &str) -> String {
        let p = self.scratch.path().join(name);
        std::fs::write(&p, text).expect("write test file");
        p.to_string_lossy().into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return;
        }
        self.terminate_and_check();
    }
}

/// The signup token in `dtctl users add` / `users reset` output.
#[track_caller]
pub fn signup_token_of(out: &Out) -> String {
    out.ok()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("--signup-token="))
        .unwrap_or_else(|| panic!("no --signup-token= in:\n{out}"))
        .to_string()
}

/// `sha256:` followed by 64 hex characters.
pub fn looks_like_pin(p: &str) -> bool {
    p.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The value after `Label:` on a `dtctl status` / `dtsh status` text line.
pub fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().trim_start_matches("> ").strip_prefix(label))
        .map(|v| v.trim_start_matches(':').trim())
}

/// Remove `metadata.revision` everywhere (it changes on every write).
pub fn strip_revisions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_revisions),
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::Object(m)) = o.get_mut("metadata") {
                m.remove("revision");
            }
        }
        _ => {}
    }
}

/// Parse multi-document YAML into JSON values (for comparing `get` outputs).
#[track_caller]
pub fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(text)
        .unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Write an executable shell script (an $EDITOR stand-in).
pub fn write_script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\nset -e\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// The base connection string (no dbname): `DEVTRUST_TEST_PG`, or the local default.
pub fn pg_base() -> String {
    std::env::var("DEVTRUST_TEST_PG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "host=127.0.0.1 port=5432 user=postgres".to_string())
}

fn pg_admin<T>(
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> T {
    let base = pg_base();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&format!("{base} dbname=postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                let cause = std::error::Error::source(&e)
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default();
                panic!(
                    "PostgreSQL is unreachable at {base:?}: {e}{cause}. These tests need it: start PostgreSQL or set DEVTRUST_TEST_PG to a libpq connection string (without dbname)."
                )
            });
        let task = tokio::spawn(conn);
        let r = f(&client)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {base:?}: {e}"));
        drop(client);
        let _ = task.await;
        r
    })
}

/// A fresh database, dropped (with its connections) when this goes out of scope. Declare
/// it before the servers that use it, so it is dropped after they stopped.
pub struct PgDb {
    pub name: String,
}

impl PgDb {
    pub fn create(tag: &str) -> PgDb {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "dt_test_{tag}_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let sql = format!("CREATE DATABASE \"{name}\"");
        pg_admin(async move |c| c.batch_execute(&sql).await);
        PgDb { name }
    }

    /// The connection string of this database.
    pub fn conn(&self) -> String {
        format!("{} dbname={}", pg_base(), self.name)
    }

    /// A devtrust.yaml using this database, written in `dir`.
    pub fn config_file(&self, dir: &Path) -> PathBuf {
        let p = dir.join(format!("{}.yaml", self.name));
        std::fs::write(
            &p,
            format!(
                "version: v1\nstorage:\n  type: postgres\n  conn: \"{}\"\n",
                self.conn()
            ),
        )
        .expect("write config");
        p
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if std::thread::panicking() {
            // Best effort; never a second panic.
            let _ =
                std::panic::catch_unwind(|| pg_admin(async move |c| c.batch_execute(&sql).await));
        } else {
            pg_admin(async move |c| c.batch_execute(&sql).await);
        }
    }
}

// ---------------------------------------------------------------------------------------
// SSH access point

/// `devtrust node start` as a process, with its log.
pub struct NodeProc {
    child: std::process::Child,
    log: PathBuf,
    pub dir: PathBuf,
}

impl NodeProc {
    /// Join as `name` with `token` and serve SSH on a free port; `extra` are more flags.
    pub fn start(
        auth: &str,
        token: &str,
        pin: &str,
        name: &str,
        dir: &Path,
        extra: &[&str],
    ) -> NodeProc {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let child = std::process::Command::new(DEVTRUST)
            .args([
                "node",
                "start",
                &format!("--auth-server={auth}"),
                &format!("--token={token}"),
                &format!("--ca-pin={pin}"),
                &format!("--name={name}"),
                "--listen=127.0.0.1:0",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("DEVTRUST_LOG", "dt_node=debug,info")
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let node = NodeProc {
            child,
            log,
            dir: dir.to_path_buf(),
        };
        node.wait_stdout(dir, "is running");
        node
    }

    /// Wait until the node printed `needle`; returns its whole stdout.
    pub fn wait_stdout(&self, dir: &Path, needle: &str) -> String {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let out = std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
            if out.contains(needle) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node did not print {needle:?}; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `devtrust KIND start ARGS` (an access point: db, kube, app...), killed on drop; `addr` is
/// the address it printed after `listen:`.
pub struct AccessPoint {
    child: Child,
    pub addr: String,
}

impl AccessPoint {
    pub fn start(kind: &str, args: &[String]) -> AccessPoint {
        AccessPoint::start_with_env(kind, args, &[])
    }

    /// [`AccessPoint::start`] with extra environment variables.
    pub fn start_with_env(
        kind: &str,
        args: &[String],
        env: &[(&str, &std::path::Path)],
    ) -> AccessPoint {
        let mut child = Command::new(DEVTRUST)
            .args([kind, "start"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .env("DEVTRUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the address is read: a closed pipe would fail the
            // access point's later output.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(a) = l.trim().strip_prefix("listen:") {
                    return AccessPoint {
                        child,
                        addr: a.trim().to_string(),
                    };
                }
                seen.push(l);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("devtrust {kind} start did not print its address: {seen:?}");
    }

    pub fn port(&self) -> &str {
        self.addr.rsplit_once(':').unwrap().1
    }
}

impl Drop for AccessPoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
