//! A private X11 desktop per session: `Xvfb -displayfd 1 -nolisten tcp -auth FILE` with its
//! own MIT-MAGIC-COOKIE-1, the session command under it, both as the desktop login's user
//! (through `setpriv --reuid --regid --init-groups` when the access point runs as root), each
//! in its own process group so that ending the session ends every process it started.
//!
//! The access point talks X11 to the server itself (x11rb over the Unix socket, with the
//! cookie): `GetImage` captures the screen, XTEST injects keys and pointer. Nothing listens on
//! TCP, and no other local user can connect without the cookie (the file is 0600 in a 0700
//! directory owned by the login).
//!
//! What it does not do: PAM sessions (no `pam_open_session`, no systemd user session, no
//! utmp entry); users come from `getent passwd`, so NSS (LDAP, SSSD) users work.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::RngCore;
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::xproto::{self, ConnectionExt as _, ImageFormat};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::{DefaultStream, RustConnection};
use x11rb::wrapper::ConnectionExt as _;

use crate::backend::{Backend, BackendError};
use crate::tiles::Frame;

/// Checks (20 ms apart) for the X server's exit when the session command failed first.
const XVFB_GRACE_POLLS: u32 = 10;
/// How long Xvfb may take to report its display.
pub const XVFB_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A local account, from `getent passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub login: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

/// Why a desktop session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Refused for this login on this host (shown to the user as a denial).
    #[error("{0}")]
    Login(String),
    #[error("cannot start the X server: {0}")]
    Xvfb(String),
    #[error("cannot start the session command: {0}")]
    Command(String),
    #[error("cannot talk to the X server: {0}")]
    X11(String),
    #[error("session directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses one `getent passwd` line.
pub fn parse_passwd_line(line: &str) -> Option<Account> {
    let f: Vec<&str> = line.trim_end().split(':').collect();
    if f.len() != 7 {
        return None;
    }
    Some(Account {
        login: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(f[5]),
        shell: f[6].to_string(),
    })
}

/// Looks up a login through NSS (`getent passwd LOGIN`).
pub fn lookup_account(login: &str) -> Result<Account, SessionError> {
    let no_such = || {
        SessionError::Login(format!(
            "the login {login:?} does not exist on this desktop host"
        ))
    };
    if login.is_empty() || login.starts_with('-') || login.contains(['/', ':', '\0']) {
        return Err(no_such());
    }
    let out = Command::new("getent")
        .args(["passwd", "--", login])
        .output()
        .map_err(|e| SessionError::Login(format!("cannot look up {login:?}: {e}")))?;
    if !out.status.success() {
        return Err(no_such());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(parse_passwd_line)
        .find(|a| a.login == login)
        .ok_or_else(no_such)
}

/// Whether an access point running as `euid` may serve `account`: root serves any login but
/// root itself; anyone else only their own.
pub fn may_serve(account: &Account, euid: u32) -> Result<(), String> {
    if account.uid == 0 {
        return Err(format!(
            "desktop sessions as {:?} (uid 0) are not served: use an unprivileged login",
            account.login
        ));
    }
    if euid != 0 && euid != account.uid {
        return Err(format!(
            "this desktop access point runs as uid {euid} and can serve only that user's desktop, not {:?}: run it as root to serve other logins",
            account.login
        ));
    }
    Ok(())
}

/// The access point's effective uid.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// How sessions start.
#[derive(Clone, Debug)]
pub struct XConfig {
    /// What runs in the session, through `sh -c`.
    pub command: String,
    /// The Xvfb binary.
    pub xvfb: PathBuf,
}

impl Default for XConfig {
    fn default() -> Self {
        XConfig {
            command: "xterm".into(),
            xvfb: PathBuf::from("Xvfb"),
        }
    }
}

/// An Xauthority entry (libXau's file format: family, address, display number, auth name,
/// auth data, each `u16`-length-prefixed, big-endian).
pub fn xauthority_entry(display: &str, cookie: &[u8]) -> Vec<u8> {
    const FAMILY_WILD: u16 = 0xffff;
    let mut out = FAMILY_WILD.to_be_bytes().to_vec();
    for field in [&b""[..], display.as_bytes(), b"MIT-MAGIC-COOKIE-1", cookie] {
        out.extend_from_slice(&(field.len() as u16).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Keysym to (keycode, column) of the server's keyboard mapping.
#[derive(Default)]
struct Keymap {
    map: HashMap<u32, (u8, usize)>,
    /// Keycodes bound to nothing, used for keysyms the layout lacks.
    spare: Vec<u8>,
    next_spare: usize,
    per_keycode: u8,
}

const SHIFT_L: u32 = 0xffe1;

/// A private X server and its session command.
pub struct XSession {
    dir: PathBuf,
    xvfb: Child,
    session: Child,
    pub display: u32,
    conn: RustConnection,
    root: xproto::Window,
    width: u16,
    height: u16,
    keymap: Keymap,
    shift_down: bool,
    buttons: u8,
    ended: Option<String>,
}

impl std::fmt::Debug for XSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XSession")
            .field("display", &self.display)
            .field("xvfb", &self.xvfb.id())
            .field("session", &self.session.id())
            .finish_non_exhaustive()
    }
}

fn as_user(account: &Account, program: &Path) -> Command {
    if effective_uid() == 0 {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", account.uid))
            .arg(format!("--regid={}", account.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn chown(path: &Path, account: &Account) -> std::io::Result<()> {
    if effective_uid() == 0 {
        std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid))?;
    }
    Ok(())
}

fn x11_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::X11(e.to_string())
}

fn gone(e: impl std::fmt::Display) -> BackendError {
    BackendError::Gone(e.to_string())
}

/// Ends a process group and reaps its leader.
fn end_group(child: &mut Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
    for _ in 0..20 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
}

impl XSession {
    /// Start Xvfb of `width` x `height` and the session command, as `account`.
    pub fn start(
        account: &Account,
        cfg: &XConfig,
        width: u16,
        height: u16,
    ) -> Result<XSession, SessionError> {
        may_serve(account, effective_uid()).map_err(SessionError::Login)?;
        let mut rnd = [0u8; 8];
        rand::rng().fill_bytes(&mut rnd);
        let dir = std::env::temp_dir().join(format!("devtrust-desktop-{}", hex::encode(rnd)));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        chown(&dir, account)?;
        match Self::start_in(&dir, account, cfg, width, height) {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn start_in(
        dir: &Path,
        account: &Account,
        cfg: &XConfig,
        width: u16,
        height: u16,
    ) -> Result<XSession, SessionError> {
        let mut cookie = [0u8; 16];
        rand::rng().fill_bytes(&mut cookie);
        let auth = dir.join("Xauthority");
        write_private(&auth, &xauthority_entry("", &cookie), account)?;
        if effective_uid() == 0 {
            // Xvfb run as a user cannot create the shared socket directory correctly.
            ensure_socket_dir(Path::new("/tmp/.X11-unix"))?;
        }
        let log = std::fs::File::create(dir.join("xvfb.log"))?;
        let mut xvfb = as_user(account, &cfg.xvfb)
            .args(["-displayfd", "1", "-nolisten", "tcp", "-noreset", "-auth"])
            .arg(&auth)
            .args(["-screen", "0", &format!("{width}x{height}x24")])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .map_err(|e| SessionError::Xvfb(format!("{}: {e}", cfg.xvfb.display())))?;
        let display = match read_display(&mut xvfb) {
            Ok(d) => d,
            Err(why) => {
                end_group(&mut xvfb);
                let log = std::fs::read_to_string(dir.join("xvfb.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                return Err(SessionError::Xvfb(format!(
                    "{why}; its log ends: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
        };
        // Now that the display is known, name it in the file the session's clients read.
        write_private(
            &auth,
            &xauthority_entry(&display.to_string(), &cookie),
            account,
        )?;
        let connected = connect(display, &cookie);
        let (conn, root) = match connected {
            Ok(c) => c,
            Err(e) => {
                end_group(&mut xvfb);
                return Err(e);
            }
        };
        let keymap = match load_keymap(&conn) {
            Ok(k) => k,
            Err(e) => {
                end_group(&mut xvfb);
                return Err(e);
            }
        };
        let session = as_user(account, Path::new("/bin/sh"))
            .arg("-c")
            .arg(&cfg.command)
            .env_clear()
            .env("DISPLAY", format!(":{display}"))
            .env("XAUTHORITY", &auth)
            .env("HOME", &account.home)
            .env("USER", &account.login)
            .env("LOGNAME", &account.login)
            .env("SHELL", &account.shell)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .current_dir(if account.home.is_dir() {
                account.home.as_path()
            } else {
                Path::new("/")
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                end_group(&mut xvfb);
                return Err(SessionError::Command(e.to_string()));
            }
        };
        Ok(XSession {
            dir: dir.to_path_buf(),
            xvfb,
            session,
            display,
            conn,
            root,
            width,
            height,
            keymap,
            shift_down: false,
            buttons: 0,
            ended: None,
        })
    }

    /// The Xvfb process id (tests check it is gone after the session).
    pub fn xvfb_pid(&self) -> u32 {
        self.xvfb.id()
    }

    fn keycode_for(&mut self, keysym: u32) -> Result<Option<(u8, usize)>, BackendError> {
        if let Some(k) = self.keymap.map.get(&keysym) {
            return Ok(Some(*k));
        }
        // Not in the layout: bind a spare keycode to it (round robin).
        let Some(&code) = self
            .keymap
            .spare
            .get(self.keymap.next_spare % self.keymap.spare.len().max(1))
        else {
            return Ok(None);
        };
        self.keymap.next_spare += 1;
        let per = usize::from(self.keymap.per_keycode.max(1));
        let mut syms = vec![0u32; per];
        syms[0] = keysym;
        if per > 1 {
            syms[1] = keysym;
        }
        self.conn
            .change_keyboard_mapping(1, code, per as u8, &syms)
            .map_err(gone)?;
        self.conn.sync().map_err(gone)?;
        self.keymap.map.retain(|_, (c, _)| *c != code);
        self.keymap.map.insert(keysym, (code, 0));
        Ok(Some((code, 0)))
    }

    fn fake_key(&self, code: u8, down: bool) -> Result<(), BackendError> {
        let t = if down {
            xproto::KEY_PRESS_EVENT
        } else {
            xproto::KEY_RELEASE_EVENT
        };
        self.conn
            .xtest_fake_input(t, code, 0, self.root, 0, 0, 0)
            .map_err(gone)?;
        Ok(())
    }
}

fn write_private(path: &Path, bytes: &[u8], account: &Account) -> Result<(), SessionError> {
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    chown(&tmp, account)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Create X's shared socket directory (mode 1777) unless it exists. Two sessions starting
/// at once on a fresh host both find it missing: the one that loses the race to create it
/// uses the one the other made.
fn ensure_socket_dir(sockets: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(sockets) {
        Ok(()) => std::fs::set_permissions(sockets, std::fs::Permissions::from_mode(0o1777)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && sockets.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Xvfb writes its display number to fd 1 (`-displayfd 1`) once it accepts connections.
fn read_display(xvfb: &mut Child) -> Result<u32, String> {
    let stdout = xvfb.stdout.take().ok_or("no pipe from Xvfb")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(XVFB_START_TIMEOUT) {
        Ok(Ok(line)) => line
            .trim()
            .parse()
            .map_err(|_| "Xvfb exited before reporting its display".to_string()),
        Ok(Err(e)) => Err(format!("reading Xvfb's display: {e}")),
        Err(_) => Err(format!(
            "Xvfb did not report its display within {} s",
            XVFB_START_TIMEOUT.as_secs()
        )),
    }
}

fn connect(display: u32, cookie: &[u8]) -> Result<(RustConnection, xproto::Window), SessionError> {
    let stream = UnixStream::connect(format!("/tmp/.X11-unix/X{display}")).map_err(x11_err)?;
    let (stream, _) = DefaultStream::from_unix_stream(stream).map_err(x11_err)?;
    let conn = RustConnection::connect_to_stream_with_auth_info(
        stream,
        0,
        b"MIT-MAGIC-COOKIE-1".to_vec(),
        cookie.to_vec(),
    )
    .map_err(x11_err)?;
    if conn
        .extension_information(x11rb::protocol::xtest::X11_EXTENSION_NAME)
        .map_err(x11_err)?
        .is_none()
    {
        return Err(SessionError::X11(
            "the X server lacks the XTEST extension (input cannot be injected)".into(),
        ));
    }
    let root = conn
        .setup()
        .roots
        .first()
        .map(|s| s.root)
        .ok_or_else(|| SessionError::X11("the X server has no screen".into()))?;
    Ok((conn, root))
}

fn load_keymap(conn: &RustConnection) -> Result<Keymap, SessionError> {
    let setup = conn.setup();
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let reply = conn
        .get_keyboard_mapping(min, max - min + 1)
        .map_err(x11_err)?
        .reply()
        .map_err(x11_err)?;
    let per = usize::from(reply.keysyms_per_keycode.max(1));
    let mut km = Keymap {
        per_keycode: reply.keysyms_per_keycode,
        ..Default::default()
    };
    for (i, syms) in reply.keysyms.chunks(per).enumerate() {
        let code = min.saturating_add(i as u8);
        if syms.iter().all(|s| *s == 0) {
            km.spare.push(code);
            continue;
        }
        // Columns 0 and 1 (plain and shifted) of the first group.
        for (col, sym) in syms.iter().take(2).enumerate() {
            if *sym != 0 {
                km.map.entry(*sym).or_insert((code, col));
            }
        }
    }
    Ok(km)
}

impl Backend for XSession {
    fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    fn capture(&mut self, frame: &mut Frame) -> Result<(), BackendError> {
        let reply = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                0,
                0,
                self.width,
                self.height,
                !0,
            )
            .map_err(gone)?
            .reply()
            .map_err(gone)?;
        let want = usize::from(self.width) * usize::from(self.height) * 4;
        if reply.data.len() != want {
            return Err(BackendError::Gone(format!(
                "unexpected image of {} bytes (depth {}), wanted {want}",
                reply.data.len(),
                reply.depth
            )));
        }
        frame.width = self.width;
        frame.height = self.height;
        frame.data = reply.data;
        Ok(())
    }

    fn key(&mut self, keysym: u32, down: bool) -> Result<(), BackendError> {
        if keysym == SHIFT_L || keysym == 0xffe2 {
            self.shift_down = down;
        }
        let Some((code, col)) = self.keycode_for(keysym)? else {
            return Ok(());
        };
        // A shifted symbol typed without Shift held (the page sends the character itself).
        let add_shift = down && col == 1 && !self.shift_down;
        let shift = self.keymap.map.get(&SHIFT_L).map(|(c, _)| *c);
        if let (true, Some(s)) = (add_shift, shift) {
            self.fake_key(s, true)?;
            self.fake_key(code, true)?;
            self.fake_key(s, false)?;
        } else {
            self.fake_key(code, down)?;
        }
        self.conn.flush().map_err(gone)?;
        Ok(())
    }

    fn pointer(&mut self, x: u16, y: u16, buttons: u8) -> Result<(), BackendError> {
        let x = x.min(self.width.saturating_sub(1)) as i16;
        let y = y.min(self.height.saturating_sub(1)) as i16;
        self.conn
            .xtest_fake_input(xproto::MOTION_NOTIFY_EVENT, 0, 0, self.root, x, y, 0)
            .map_err(gone)?;
        for b in 0..5u8 {
            let bit = 1 << b;
            if (self.buttons ^ buttons) & bit != 0 {
                let t = if buttons & bit != 0 {
                    xproto::BUTTON_PRESS_EVENT
                } else {
                    xproto::BUTTON_RELEASE_EVENT
                };
                self.conn
                    .xtest_fake_input(t, b + 1, 0, self.root, 0, 0, 0)
                    .map_err(gone)?;
            }
        }
        self.buttons = buttons;
        self.conn.flush().map_err(gone)?;
        Ok(())
    }

    fn ended(&mut self) -> Option<String> {
        if self.ended.is_none() {
            if let Ok(Some(st)) = self.xvfb.try_wait() {
                self.ended = Some(format!("the X server exited ({st})"));
            } else if let Ok(Some(st)) = self.session.try_wait() {
                // A session command dies with its X server (xterm exits as soon as its
                // display goes away) and can be seen first: then the X server is the cause.
                for _ in 0..XVFB_GRACE_POLLS {
                    if let Ok(Some(x)) = self.xvfb.try_wait() {
                        self.ended = Some(format!("the X server exited ({x})"));
                        return self.ended.clone();
                    }
                    if st.success() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                self.ended = Some(match st.code() {
                    Some(0) => "the session command exited".to_string(),
                    _ => format!("the session command exited ({st})"),
                });
            }
        }
        self.ended.clone()
    }
}

impl Drop for XSession {
    fn drop(&mut self) {
        end_group(&mut self.session);
        end_group(&mut self.xvfb);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_racing_to_create_the_socket_directory_all_get_it() {
        // Found on a fresh CI host: two sessions starting at once, one failed with "File
        // exists" because the other had just created /tmp/.X11-unix.
        let tmp = tempfile::tempdir().unwrap();
        let sockets = tmp.path().join(".X11-unix");
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        ensure_socket_dir(&sockets)
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        let mode = std::fs::metadata(&sockets).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1777);
        // A file where the directory should be is still an error.
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        assert!(ensure_socket_dir(&file).is_err());
    }

    #[test]
    fn passwd_lines_parse() {
        let a = parse_passwd_line("alice:x:1001:1002:Alice,,,:/home/alice:/bin/bash\n").unwrap();
        assert_eq!(
            (a.login.as_str(), a.uid, a.gid, a.shell.as_str()),
            ("alice", 1001, 1002, "/bin/bash")
        );
        assert!(parse_passwd_line("broken:x:1").is_none());
        assert!(parse_passwd_line("bob:x:notanumber:1:::").is_none());
    }

    #[test]
    fn who_may_be_served() {
        let acct = |uid| Account {
            login: "alice".into(),
            uid,
            gid: uid,
            home: "/home/alice".into(),
            shell: "/bin/sh".into(),
        };
        assert!(may_serve(&acct(1001), 0).is_ok(), "root serves anyone");
        assert!(may_serve(&acct(1001), 1001).is_ok(), "a user serves itself");
        let e = may_serve(&acct(1001), 1002).unwrap_err();
        assert!(e.contains("run it as root to serve other logins"), "{e}");
        let e = may_serve(&acct(0), 0).unwrap_err();
        assert!(e.contains("not served"), "{e}");
    }

    #[test]
    fn lookups_refuse_odd_logins_without_running_anything() {
        for bad in ["", "-x", "a/b", "a:b"] {
            assert!(matches!(lookup_account(bad), Err(SessionError::Login(_))));
        }
    }

    #[test]
    fn xauthority_entry_layout() {
        let e = xauthority_entry("7", &[0xaa; 16]);
        assert_eq!(&e[..2], &[0xff, 0xff], "FamilyWild");
        assert_eq!(&e[2..4], &[0, 0], "no address");
        assert_eq!(&e[4..7], &[0, 1, b'7']);
        assert_eq!(&e[7..9], &[0, 18]);
        assert_eq!(&e[9..27], b"MIT-MAGIC-COOKIE-1");
        assert_eq!(&e[27..29], &[0, 16]);
        assert_eq!(e.len(), 29 + 16);
    }
}
