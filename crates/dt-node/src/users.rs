//! Local accounts, and whose sessions this node may start.
//!
//! Run as root, the node starts each session as the login user (uid, gid; supplementary
//! groups are dropped, not initialised: std's `Command::uid` clears them, and setting them
//! needs `initgroups`, which this crate does not call without `unsafe`). Run as an ordinary
//! user, it can only serve that user's own login: any other login is refused with a message
//! that says so. Accounts come from `/etc/passwd`, then `getent passwd` (NSS) as a fallback.

use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

fn parse_passwd_line(line: &str) -> Option<LocalUser> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 {
        return None;
    }
    Some(LocalUser {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: PathBuf::from(f[5]),
        shell: if f[6].trim().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            PathBuf::from(f[6].trim())
        },
    })
}

fn find(pred: impl Fn(&LocalUser) -> bool, getent_key: &str) -> Option<LocalUser> {
    if let Ok(text) = std::fs::read_to_string("/etc/passwd")
        && let Some(u) = text.lines().filter_map(parse_passwd_line).find(|u| pred(u))
    {
        return Some(u);
    }
    let out = std::process::Command::new("getent")
        .args(["passwd", getent_key])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_passwd_line)
        .find(|u| pred(u))
}

/// The account named `name`, if this host has one.
pub fn lookup(name: &str) -> Option<LocalUser> {
    if name.is_empty() || name.starts_with('-') || name.contains([':', '/', '\n']) {
        return None;
    }
    find(|u| u.name == name, name)
}

pub fn lookup_uid(uid: u32) -> Option<LocalUser> {
    find(|u| u.uid == uid, &uid.to_string())
}

/// Whose sessions this process may start.
#[derive(Clone, Debug)]
pub enum RunAs {
    /// Root: any local account.
    Root,
    /// An ordinary user: only this account.
    Only(LocalUser),
}

impl RunAs {
    pub fn detect() -> RunAs {
        let uid = rustix::process::geteuid().as_raw();
        if uid == 0 {
            return RunAs::Root;
        }
        RunAs::Only(
            lookup_uid(uid).unwrap_or(LocalUser {
                name: std::env::var("USER").unwrap_or_else(|_| uid.to_string()),
                uid,
                gid: rustix::process::getegid().as_raw(),
                home: std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/")),
                shell: PathBuf::from("/bin/sh"),
            }),
        )
    }

    /// The account a session for `login` runs as, and whether the process must switch to it.
    pub fn resolve(&self, login: &str, node: &str) -> Result<(LocalUser, bool), String> {
        match self {
            RunAs::Root => match lookup(login) {
                Some(u) => {
                    let switch = u.uid != 0;
                    Ok((u, switch))
                }
                None => Err(format!("login {login:?} does not exist on {node}")),
            },
            RunAs::Only(me) if me.name == login => Ok((me.clone(), false)),
            RunAs::Only(me) => Err(format!(
                "{node} runs as {:?} and can only serve login {:?} (run it as root to serve other logins)",
                me.name, me.name
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines() {
        let u = parse_passwd_line("alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.home, PathBuf::from("/home/alice"));
        assert!(parse_passwd_line("broken").is_none());
        assert_eq!(lookup("root").unwrap().uid, 0);
        assert!(lookup("-devtrust-nologin").is_none());
        assert!(lookup("no-such-user-here").is_none());
    }

    #[test]
    fn ordinary_users_serve_only_themselves() {
        let me = LocalUser {
            name: "bob".into(),
            uid: 1001,
            gid: 1001,
            home: "/home/bob".into(),
            shell: "/bin/sh".into(),
        };
        let r = RunAs::Only(me);
        assert!(r.resolve("bob", "n1").is_ok());
        let err = r.resolve("root", "n1").unwrap_err();
        assert!(err.contains("can only serve login \"bob\""), "{err}");
    }
}
