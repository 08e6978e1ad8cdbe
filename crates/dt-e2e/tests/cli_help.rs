//! `--help` works for every binary and every subcommand, found by walking the help output
//! itself (so commands added later are covered without touching this file).
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use common::*;

/// Subcommand names listed under `Commands:` in clap's help output (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Run `BIN PATH... --help`, then recurse into each subcommand; returns how many ran.
fn walk_help(bin: &str, path: &mut Vec<String>) -> usize {
    let mut args = path.clone();
    args.push("--help".into());
    let out = Run::new(bin, args.iter().map(String::as_str)).run();
    let help = out.ok();
    assert!(help.contains("Usage:"), "no usage line:\n{out}");
    assert!(out.stderr.is_empty(), "help wrote to stderr:\n{out}");
    let mut n = 1;
    for sub in subcommands(help) {
        path.push(sub);
        n += walk_help(bin, path);
        path.pop();
    }
    n
}

#[test]
fn help_runs_for_every_binary_and_subcommand() {
    let devtrust = walk_help(&DEVTRUST, &mut Vec::new());
    let dtctl = walk_help(&DTCTL, &mut Vec::new());
    let dtsh = walk_help(&DTSH, &mut Vec::new());
    // The commands this suite relies on, at least.
    assert!(devtrust >= 4, "devtrust: {devtrust} help pages");
    assert!(dtctl >= 16, "dtctl: {dtctl} help pages");
    assert!(dtsh >= 4, "dtsh: {dtsh} help pages");
    for bin in [DEVTRUST, DTCTL, DTSH] {
        let out = Run::new(&bin, ["--version"]).run();
        assert!(out.ok().contains("0."), "{out}");
        // No subcommand: usage on stderr, exit 2, never a panic.
        let out = Run::new(&bin, Vec::<&str>::new()).run();
        out.fails_with("Usage:");
        assert_eq!(out.code, Some(2), "{out}");
    }
}

#[test]
fn names_are_checked_where_they_are_typed() {
    // A user name, device id or node name that cannot exist is a usage error, before any
    // connection is tried (the addresses here lead nowhere). A lock on such a name would
    // lock nobody.
    for (bin, args, says) in [
        (
            DTSH,
            &["login", "--proxy=127.0.0.1:1", "--user=al ice"][..],
            "user name contains ' '",
        ),
        (
            DTCTL,
            &[
                "access",
                "explain",
                "--user=alice",
                "--device=laptop-7",
                "--node=web1",
                "--login=root",
            ][..],
            "device id is not a UUID",
        ),
        (
            DTCTL,
            &[
                "access",
                "explain",
                "--user=al/ice",
                "--node=web1",
                "--login=root",
            ][..],
            "user name contains '/'",
        ),
        (
            DTCTL,
            &["lock", "--user=alice ", "--message=x"][..],
            "user name contains ' '",
        ),
        (
            DTCTL,
            &["lock", "--node=web 1"][..],
            "node name contains ' '",
        ),
        (
            DTCTL,
            &["lock", "--device=laptop-7"][..],
            "device id is not a UUID",
        ),
    ] {
        let out = Run::new(&bin, args.iter().copied()).run();
        out.fails_with(says);
        assert_eq!(out.code, Some(2), "{out}");
    }
}
