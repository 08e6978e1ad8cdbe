//! Running one session's process: an exec or a shell, with or without a PTY, as the login
//! user, its output sent to the SSH channel and its exit status reported back.
//!
//! Order on the channel: all output, then `exit-status`, then EOF and close, so a client
//! never sees the status before the last bytes. A PTY session reads the PTY until the shell
//! exits and the PTY drains (Linux reports EIO once no process holds the terminal).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use russh::ChannelId;
use russh::server::Handle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::users::LocalUser;

/// A PTY as the client asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PtyRequest {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    pub user: LocalUser,
    /// Change uid/gid to the user's (the node runs as root).
    pub switch_user: bool,
    /// `None`: an interactive login shell.
    pub command: Option<String>,
    pub pty: Option<PtyRequest>,
    /// Client-sent variables that passed the allow list.
    pub env: Vec<(String, String)>,
    /// `SSH_CONNECTION`-like facts for the session.
    pub node_name: String,
}

/// Input for a running session.
#[derive(Debug)]
pub enum Input {
    Data(Vec<u8>),
    Eof,
    Resize { cols: u16, rows: u16 },
    Signal(rustix::process::Signal),
}

/// A started session process.
pub struct Running {
    pub input: mpsc::Sender<Input>,
    pub pid: Option<u32>,
}

/// Variables a client may set (`SendEnv`); everything else is ignored.
pub fn env_allowed(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_") || name == "TZ"
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn common_env(spec: &SessionSpec) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_string(), spec.user.home.display().to_string()),
        ("USER".to_string(), spec.user.name.clone()),
        ("LOGNAME".to_string(), spec.user.name.clone()),
        ("SHELL".to_string(), spec.user.shell.display().to_string()),
        ("PATH".to_string(), PATH.to_string()),
        ("DEVTRUST_NODE".to_string(), spec.node_name.clone()),
    ];
    if let Some(p) = &spec.pty {
        env.push(("TERM".to_string(), p.term.clone()));
    }
    env.extend(spec.env.iter().cloned());
    env
}

fn workdir(user: &LocalUser) -> &Path {
    if user.home.is_dir() {
        &user.home
    } else {
        Path::new("/")
    }
}

/// `-bash` for a login shell, as `login(1)` does.
fn login_arg0(shell: &Path) -> String {
    format!(
        "-{}",
        shell
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sh".into())
    )
}

/// The exit code of a status: its code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u32,
        (None, Some(s)) => 128 + s as u32,
        (None, None) => 255,
    }
}

/// Start the session; `on_exit` runs with the exit code after the channel was closed.
pub fn start(
    spec: SessionSpec,
    handle: Handle,
    channel: ChannelId,
    on_exit: impl FnOnce(u32) + Send + 'static,
) -> std::io::Result<Running> {
    match spec.pty.clone() {
        Some(pty) => start_pty(spec, pty, handle, channel, on_exit),
        None => start_pipes(spec, handle, channel, on_exit),
    }
}

fn signal(pid: Option<u32>, sig: rustix::process::Signal) {
    if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

async fn pump(mut r: impl AsyncRead + Unpin, handle: Handle, channel: ChannelId, ext: Option<u32>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let sent = match ext {
                    None => handle.data(channel, data).await.is_ok(),
                    Some(code) => handle.extended_data(channel, code, data).await.is_ok(),
                };
                if !sent {
                    return;
                }
            }
        }
    }
}

async fn finish(handle: &Handle, channel: ChannelId, code: u32) {
    let _ = handle.exit_status_request(channel, code).await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

fn start_pipes(
    spec: SessionSpec,
    handle: Handle,
    channel: ChannelId,
    on_exit: impl FnOnce(u32) + Send + 'static,
) -> std::io::Result<Running> {
    let mut cmd = tokio::process::Command::new(&spec.user.shell);
    match &spec.command {
        Some(c) => {
            cmd.arg("-c").arg(c);
        }
        None => {
            cmd.arg0(login_arg0(&spec.user.shell));
        }
    }
    cmd.env_clear()
        .envs(common_env(&spec))
        .current_dir(workdir(&spec.user))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if spec.switch_user {
        cmd.uid(spec.user.uid).gid(spec.user.gid);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let (tx, mut rx) = mpsc::channel::<Input>(64);
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        while let Some(input) = rx.recv().await {
            match input {
                Input::Data(d) => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&d).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Input::Eof => stdin = None,
                Input::Resize { .. } => {}
                Input::Signal(s) => signal(pid, s),
            }
        }
    });
    tokio::spawn(async move {
        let out = stdout.map(|r| tokio::spawn(pump(r, handle.clone(), channel, None)));
        let err = stderr.map(|r| tokio::spawn(pump(r, handle.clone(), channel, Some(1))));
        if let Some(t) = out {
            let _ = t.await;
        }
        if let Some(t) = err {
            let _ = t.await;
        }
        let code = match child.wait().await {
            Ok(s) => exit_code(s),
            Err(_) => 255,
        };
        finish(&handle, channel, code).await;
        on_exit(code);
    });
    Ok(Running { input: tx, pid })
}

fn start_pty(
    spec: SessionSpec,
    req: PtyRequest,
    handle: Handle,
    channel: ChannelId,
    on_exit: impl FnOnce(u32) + Send + 'static,
) -> std::io::Result<Running> {
    let to_io = |e: pty_process::Error| std::io::Error::other(e.to_string());
    let (pty, pts) = pty_process::open().map_err(to_io)?;
    pty.resize(pty_process::Size::new(req.rows.max(1), req.cols.max(1)))
        .map_err(to_io)?;
    let mut cmd = pty_process::Command::new(&spec.user.shell);
    cmd = match &spec.command {
        Some(c) => cmd.arg("-c").arg(c),
        None => cmd.arg0(login_arg0(&spec.user.shell)),
    };
    cmd = cmd
        .env_clear()
        .envs(common_env(&spec))
        .current_dir(workdir(&spec.user))
        .kill_on_drop(true);
    if spec.switch_user {
        cmd = cmd.uid(spec.user.uid).gid(spec.user.gid);
    }
    let mut child = cmd.spawn(pts).map_err(to_io)?;
    let pid = child.id();
    let (mut reader, mut writer) = pty.into_split();
    let (tx, mut rx) = mpsc::channel::<Input>(64);
    tokio::spawn(async move {
        while let Some(input) = rx.recv().await {
            match input {
                Input::Data(d) => {
                    if writer.write_all(&d).await.is_err() {
                        break;
                    }
                }
                // A terminal has no half-close; the shell ends on its own (or on ^D).
                Input::Eof => {}
                Input::Resize { cols, rows } => {
                    let _ = writer.resize(pty_process::Size::new(rows.max(1), cols.max(1)));
                }
                Input::Signal(s) => signal(pid, s),
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        let mut status = None;
        loop {
            let read = if status.is_some() {
                // The shell is gone: drain what is left, but do not wait for stragglers
                // that keep the terminal open.
                match tokio::time::timeout(Duration::from_millis(200), reader.read(&mut buf)).await
                {
                    Ok(r) => r,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    r = reader.read(&mut buf) => r,
                    s = child.wait() => {
                        status = Some(s.map(exit_code).unwrap_or(255));
                        continue;
                    }
                }
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if handle.data(channel, buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            }
        }
        let code = match status {
            Some(c) => c,
            None => child.wait().await.map(exit_code).unwrap_or(255),
        };
        finish(&handle, channel, code).await;
        on_exit(code);
    });
    Ok(Running { input: tx, pid })
}
