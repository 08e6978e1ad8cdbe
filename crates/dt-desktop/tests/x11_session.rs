//! A real private desktop: Xvfb and xterm from Debian's packages, input through XTEST, the
//! screen through GetImage. Runs as root (as the login `nobody`) or as the current user.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use dt_desktop::backend::Backend;
use dt_desktop::tiles::Frame;
use dt_desktop::x11::{self, XConfig, XSession};

fn login() -> String {
    if x11::effective_uid() == 0 {
        "nobody".into()
    } else {
        std::env::var("USER").unwrap_or_else(|_| "nobody".into())
    }
}

fn type_text(s: &mut XSession, text: &str) {
    for c in text.chars() {
        let sym = match c {
            '\n' => 0xff0d,
            c => c as u32,
        };
        s.key(sym, true).unwrap();
        s.key(sym, false).unwrap();
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn typing_into_xterm_runs_the_command_and_the_screen_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = dir.path().join("typed");
    let account = x11::lookup_account(&login()).unwrap();
    let cfg = XConfig {
        // `nobody`'s shell is nologin: the terminal runs sh.
        command: "SHELL=/bin/sh exec xterm -geometry 80x24+0+0".into(),
        ..XConfig::default()
    };
    let mut s = XSession::start(&account, &cfg, 640, 480).unwrap();
    let pid = s.xvfb_pid();
    let mut blank = Frame::new(640, 480);
    s.capture(&mut blank).unwrap();
    // Wait for xterm to draw, then type.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = Frame::new(640, 480);
    loop {
        s.capture(&mut after).unwrap();
        if after.data != blank.data {
            break;
        }
        assert!(Instant::now() < deadline, "xterm never drew anything");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    type_text(&mut s, &format!("echo hi > {}\n", out.display()));
    while !out.exists() {
        assert!(Instant::now() < deadline, "the typed command never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hi\n");
    assert!(s.ended().is_none());
    drop(s);
    assert!(!pid_alive(pid), "Xvfb {pid} is gone after the session");
}

#[test]
fn a_session_command_that_exits_ends_the_session() {
    let account = x11::lookup_account(&login()).unwrap();
    let cfg = XConfig {
        command: "exit 3".into(),
        ..XConfig::default()
    };
    let mut s = XSession::start(&account, &cfg, 320, 320).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let why = loop {
        if let Some(w) = s.ended() {
            break w;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(why.contains("the session command exited"), "{why}");
    assert!(why.contains('3'), "{why}");
}

#[test]
fn a_missing_xvfb_is_a_clear_error() {
    let account = x11::lookup_account(&login()).unwrap();
    let cfg = XConfig {
        command: "xterm".into(),
        xvfb: "/nonexistent/Xvfb".into(),
    };
    let e = XSession::start(&account, &cfg, 320, 320).unwrap_err();
    assert!(e.to_string().contains("cannot start the X server"), "{e}");
}
