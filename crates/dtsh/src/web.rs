//! `dtsh device web-auth URL` (device web authentication: what the seeds' desktop app does
//! for a web session) and `dtsh install-url-handler` (registers dtsh as the desktop's
//! handler of `devtrust://` links).
//!
//! The link comes from a web page, so nothing in it is trusted: dtsh runs the ceremony only
//! against the auth server of its own profile, as the profile's user, and refuses a link
//! that names another user or server. The device proves itself with the ordinary
//! authentication ceremony; the web token only says which browser session asked.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use dt_ceremony::messages::DeviceWebToken;
use dt_client::ProfileStore;
use dt_types::UserName;

use crate::device::{collect_device, current_certs, device_keys, profile_channel};

/// The parts of `devtrust://USER@HOST:PORT/authenticate_web_device?id=ID&token=TOKEN`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebAuthUrl {
    pub user: UserName,
    pub server: String,
    pub id: String,
    pub token: String,
}

impl std::fmt::Debug for WebAuthUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebAuthUrl")
            .field("user", &self.user)
            .field("server", &self.server)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .context("a broken %-escape in the link")?;
            out.push(u8::from_str_radix(hex, 16).context("a broken %-escape in the link")?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("the link's user name is not UTF-8")
}

fn token_chars(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Parse a hand-off link strictly: the one path, the two query values, nothing else.
pub fn parse_web_auth_url(url: &str) -> anyhow::Result<WebAuthUrl> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "not a devtrust device web authentication link ({why}): copy the link from the web UI again"
        )
    };
    let rest = url
        .trim()
        .strip_prefix("devtrust://")
        .ok_or_else(|| bad("it does not start with devtrust://"))?;
    let (authority, rest) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
    let (user, server) = authority
        .rsplit_once('@')
        .ok_or_else(|| bad("no user@ before the server"))?;
    let user = percent_decode(user)?;
    if user.is_empty() || server.is_empty() {
        return Err(bad("empty user or server"));
    }
    let user = UserName::parse(user).map_err(|e| bad(&format!("the user name: {e}")))?;
    if !server
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
    {
        return Err(bad("a malformed server address"));
    }
    let (path, query) = rest.split_once('?').ok_or_else(|| bad("no query"))?;
    if path != "authenticate_web_device" {
        return Err(bad("an unknown path"));
    }
    let (mut id, mut token) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("id", v)) if id.is_none() && token_chars(v) => id = Some(v.to_string()),
            Some(("token", v)) if token.is_none() && token_chars(v) => token = Some(v.to_string()),
            _ => return Err(bad("unexpected query values")),
        }
    }
    Ok(WebAuthUrl {
        user,
        server: server.to_string(),
        id: id.ok_or_else(|| bad("no id"))?,
        token: token.ok_or_else(|| bad("no token"))?,
    })
}

/// Does the link's server name one of the auth servers of the profile?
fn same_server(profile_proxy: &str, server: &str) -> bool {
    profile_proxy
        .split(',')
        .map(str::trim)
        .any(|p| p.eq_ignore_ascii_case(server))
}

/// `dtsh device web-auth URL`.
pub async fn web_auth(
    url: &str,
    no_browser: bool,
    bind_addr: Option<IpAddr>,
) -> anyhow::Result<ExitCode> {
    let link = parse_web_auth_url(url)?;
    let store = ProfileStore::from_env();
    let profile = store
        .current()
        .context("dtsh is not logged in: run `dtsh login` as the user of the web session, then follow the link again")?;
    if link.user != profile.username {
        bail!(
            "this link is for user {:?}, but dtsh is logged in as {:?}: run `dtsh login --user={}` and follow the link again",
            link.user,
            profile.username,
            link.user
        );
    }
    if !same_server(&profile.proxy, &link.server) {
        bail!(
            "this link is for the server {}, but dtsh is logged in to {}: log in to that server with dtsh (`dtsh login --proxy={}`)",
            link.server,
            profile.proxy,
            link.server
        );
    }
    if let Some(ip) = bind_addr {
        dt_client::connect::set_source_address(ip);
    }
    let (profile, channel) = profile_channel(&store).await?;
    let keys = device_keys()?;
    let Some(cred) = keys.credential()? else {
        bail!(
            "this device has no credential: enroll it first (`dtsh device enroll --current-device`, or with a token from an admin)"
        );
    };
    let collected = collect_device()?;
    let certs = current_certs(&store, &profile)?;
    let confirmation = dt_client::devices::authenticate_web(
        channel,
        certs,
        cred.id.to_string(),
        cred.attestation_type,
        collected.data,
        DeviceWebToken {
            id: link.id.clone(),
            token: link.token.clone(),
        },
        dt_device::prover(keys.as_ref()),
    )
    .await
    .context("device web authentication failed")?;
    let confirm_url = format!(
        "https://{}/web/device/confirm?id={}&token={}",
        link.server, confirmation.id, confirmation.token
    );
    println!(
        "Device authenticated for the web session of {} at {}.",
        link.user, link.server
    );
    if no_browser {
        println!("Open this URL in the browser where you logged in, within 5 minutes:");
        println!("{confirm_url}");
        return Ok(ExitCode::SUCCESS);
    }
    match open_browser(&confirm_url) {
        Ok(()) => println!("Opened the confirmation page in your browser."),
        Err(e) => {
            eprintln!("cannot open a browser ({e:#}); open this URL where you logged in:");
            println!("{confirm_url}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn open_browser(url: &str) -> anyhow::Result<()> {
    let program = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "xdg-open".into());
    let status = std::process::Command::new(&program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} exited with {status}");
    }
    Ok(())
}

const DESKTOP_FILE: &str = "devtrust-url-handler.desktop";
const SCHEME_MIME: &str = "x-scheme-handler/devtrust";

fn xdg_dir(var: &str, fallback: &str) -> anyhow::Result<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => Ok(PathBuf::from(v)),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            Ok(PathBuf::from(home).join(fallback))
        }
    }
}

/// The `Exec` key's program, quoted per the Desktop Entry Specification.
fn desktop_quote(path: &Path) -> String {
    let s = path.display().to_string();
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The `.desktop` entry that hands `devtrust://` links to `dtsh device web-auth`.
pub fn desktop_entry(dtsh: &Path) -> String {
    format!(
        "[Desktop Entry]\nType=Application\nName=dtsh device web authentication\nComment=Authenticate this device for a devtrust web session\nExec={} device web-auth %u\nTerminal=false\nNoDisplay=true\nMimeType={SCHEME_MIME};\n",
        desktop_quote(dtsh)
    )
}

/// `mimeapps.list` with `x-scheme-handler/devtrust` set to our entry (other lines kept).
pub fn with_default_handler(existing: &str) -> String {
    let line = format!("{SCHEME_MIME}={DESKTOP_FILE}");
    let mut out = Vec::new();
    let mut in_defaults = false;
    let mut written = false;
    for l in existing.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            if in_defaults && !written {
                out.push(line.clone());
                written = true;
            }
            in_defaults = t == "[Default Applications]";
        } else if in_defaults && t.starts_with(&format!("{SCHEME_MIME}=")) {
            continue;
        }
        out.push(l.to_string());
    }
    if in_defaults && !written {
        out.push(line.clone());
        written = true;
    }
    if !written {
        out.push("[Default Applications]".into());
        out.push(line);
    }
    out.join("\n") + "\n"
}

/// `dtsh install-url-handler`.
pub fn install_url_handler() -> anyhow::Result<ExitCode> {
    let dtsh = std::env::current_exe().context("cannot find this dtsh's path")?;
    let apps = xdg_dir("XDG_DATA_HOME", ".local/share")?.join("applications");
    std::fs::create_dir_all(&apps).with_context(|| format!("creating {}", apps.display()))?;
    let entry = apps.join(DESKTOP_FILE);
    std::fs::write(&entry, desktop_entry(&dtsh))
        .with_context(|| format!("writing {}", entry.display()))?;
    let config = xdg_dir("XDG_CONFIG_HOME", ".config")?;
    std::fs::create_dir_all(&config).with_context(|| format!("creating {}", config.display()))?;
    let list = config.join("mimeapps.list");
    let existing = match std::fs::read_to_string(&list) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", list.display())),
    };
    std::fs::write(&list, with_default_handler(&existing))
        .with_context(|| format!("writing {}", list.display()))?;
    // Refresh the desktop's cache where the tool exists; the files above are what counts.
    let _ = std::process::Command::new("update-desktop-database")
        .arg(&apps)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    println!("Installed {}", entry.display());
    println!(
        "devtrust:// links now open `dtsh device web-auth` (set in {}).",
        list.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_strictly() {
        let u = parse_web_auth_url(
            "devtrust://al%40ice@127.0.0.1:3080/authenticate_web_device?id=abc-1&token=T_k-9",
        )
        .unwrap();
        assert_eq!(u.user, "al@ice");
        assert_eq!(u.server, "127.0.0.1:3080");
        assert_eq!((u.id.as_str(), u.token.as_str()), ("abc-1", "T_k-9"));
        for bad in [
            "https://127.0.0.1/authenticate_web_device?id=a&token=b",
            "devtrust://127.0.0.1:3080/authenticate_web_device?id=a&token=b",
            "devtrust://a@h/other?id=a&token=b",
            "devtrust://a@h/authenticate_web_device?id=a",
            "devtrust://a@h/authenticate_web_device?id=a&token=b&redirect=x",
            "devtrust://a@h/authenticate_web_device?id=a&id=c&token=b",
            "devtrust://a@h/authenticate_web_device?id=a&token=b%2F",
            "devtrust://a@h/x/../authenticate_web_device?id=a&token=b",
            "devtrust://a@evil.example/path@h/authenticate_web_device?id=a&token=b",
            "devtrust://al%20ice@h/authenticate_web_device?id=a&token=b",
        ] {
            assert!(parse_web_auth_url(bad).is_err(), "{bad}");
        }
        assert!(!format!("{u:?}").contains("T_k-9"), "Debug hides the token");
    }

    #[test]
    fn the_server_must_be_one_of_the_profile() {
        assert!(same_server("127.0.0.1:3080", "127.0.0.1:3080"));
        assert!(same_server("a:1, b:2", "B:2"));
        assert!(!same_server("127.0.0.1:3080", "127.0.0.1:3081"));
    }

    #[test]
    fn the_handler_is_registered_once_and_other_defaults_stay() {
        let e = desktop_entry(Path::new("/opt/my dtsh/dtsh"));
        assert!(e.contains("Exec=\"/opt/my dtsh/dtsh\" device web-auth %u"));
        assert!(e.contains("MimeType=x-scheme-handler/devtrust;"));
        let once = with_default_handler(
            "[Default Applications]\ntext/html=firefox.desktop\nx-scheme-handler/devtrust=old.desktop\n[Added Associations]\n",
        );
        assert_eq!(
            once,
            "[Default Applications]\ntext/html=firefox.desktop\nx-scheme-handler/devtrust=devtrust-url-handler.desktop\n[Added Associations]\n"
        );
        assert_eq!(with_default_handler(&once), once, "idempotent");
        assert_eq!(
            with_default_handler(""),
            "[Default Applications]\nx-scheme-handler/devtrust=devtrust-url-handler.desktop\n"
        );
    }
}
