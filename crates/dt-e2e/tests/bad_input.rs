//! What people get wrong, and what they see then: config files, resource files and
//! command lines. Every refusal is a non-zero exit with an `ERROR:` line that says why,
//! and nothing is written.
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::*;

fn devtrust(args: &[&str]) -> Out {
    Run::new(&DEVTRUST, args.iter().copied()).run()
}

// ---------------------------------------------------------------------------------------
// 2. The static config

#[test]
fn configure_output_passes_check() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = devtrust(&["configure"]);
    let path = tmp.path().join("devtrust.yaml");
    std::fs::write(&path, sample.ok()).unwrap();
    let p = path.to_str().unwrap();
    let out = devtrust(&["check", "--config", p]);
    assert!(out.ok().contains(&format!("{p}: valid")), "{out}");
    assert!(out.ok().contains("storage sqlite"), "{out}");

    // The commented postgres alternative is valid too once uncommented.
    let pg = sample
        .ok()
        .replace("storage:\n  type: sqlite\n", "")
        .replace(
            "# storage:\n#   type: postgres\n#   conn:",
            "storage:\n  type: postgres\n  conn:",
        );
    assert_ne!(
        pg,
        sample.ok(),
        "the sample no longer shows the postgres alternative"
    );
    std::fs::write(&path, &pg).unwrap();
    let out = devtrust(&["check", "--config", p]);
    assert!(out.ok().contains("storage postgres"), "{out}");
}

#[test]
fn check_refuses_bad_config_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let sample = devtrust(&["configure"]).ok().to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "top-level typo",
            sample.replace("\nlisten:", "\nlistne:"),
            "unknown field `listne`",
        ),
        (
            "nested typo",
            "storage: {type: sqlite, cnn: x}\n".into(),
            "unknown field `cnn`",
        ),
        (
            "log typo",
            "log: {format: text, levle: info}\n".into(),
            "unknown field `levle`",
        ),
        (
            "bad listen",
            "listen: nowhere\n".into(),
            "not an address like 127.0.0.1:3080",
        ),
        (
            "bad storage",
            "storage: {type: mysql}\n".into(),
            "storage.type \"mysql\" is not supported",
        ),
        (
            "postgres without conn",
            "storage: {type: postgres}\n".into(),
            "storage.conn is required",
        ),
        ("bad version", "version: v9\n".into(), "unsupported version"),
        ("bad log level", "log: {level: loud}\n".into(), "log.level"),
        ("broken YAML", "listen: [\n".into(), "line 1"),
    ];
    for (what, text, needle) in cases {
        let path = tmp.path().join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        let out = devtrust(&["check", "--config", path.to_str().unwrap()]);
        out.fails_with_one_line(needle);
        assert!(
            out.stderr.contains(path.to_str().unwrap()),
            "{what}: the error names the file:\n{out}"
        );
        assert!(out.stdout.is_empty(), "{what}:\n{out}");
    }
    devtrust(&[
        "check",
        "--config",
        tmp.path().join("missing.yaml").to_str().unwrap(),
    ])
    .fails_with_one_line("cannot read config file");
}

#[test]
fn start_refuses_bad_config_before_creating_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.yaml");
    std::fs::write(&cfg, "listne: 127.0.0.1:0\n").unwrap();
    let data = tmp.path().join("data");
    let (c, d) = (cfg.to_str().unwrap(), data.to_str().unwrap());
    devtrust(&[
        "start",
        "--config",
        c,
        "--data-dir",
        d,
        "--listen",
        "127.0.0.1:0",
    ])
    .fails_with_one_line("unknown field `listne`");
    assert!(!data.exists(), "a refused start created the data dir");
    devtrust(&["start", "--data-dir", d, "--listen", "nowhere"])
        .fails_with_one_line("--listen \"nowhere\" is not an address");
    assert!(!data.exists(), "a refused start created the data dir");
}

// ---------------------------------------------------------------------------------------
// 5. Bad resource files

const GOOD_ROLE: &str = "kind: role\nversion: v7\nmetadata: {name: fine}\nspec: {}\n";

#[test]
fn bad_resource_files_are_refused_and_nothing_is_written() {
    let srv = Server::start();
    let snapshot = |srv: &Server| {
        ["roles", "users", "locks", "cluster_auth_preference"].map(|k| {
            let mut v = srv.dtctl(&["get", k, "--format=json"]).json();
            strip_revisions(&mut v);
            v
        })
    };
    let before = snapshot(&srv);

    let cases: &[(&str, &str, &str)] = &[
        (
            "malformed YAML",
            "kind: role\nversion: v7\nmetadata: {name: r1\nspec: {}\n",
            "line 4 column",
        ),
        (
            "unknown field",
            "kind: role\nversion: v7\nmetadata: {name: r2}\nspec: {allow: {logins: [x]}, colour: red}\n",
            "role \"r2\": unknown field `colour`",
        ),
        (
            "unknown metadata field",
            "kind: role\nversion: v7\nmetadata: {name: r2, lables: {}}\nspec: {}\n",
            "unknown field `lables`",
        ),
        (
            "unknown kind",
            "kind: rolez\nversion: v7\nmetadata: {name: r3}\nspec: {}\n",
            "unknown kind \"rolez\"",
        ),
        (
            "missing kind",
            "version: v7\nmetadata: {name: r3}\nspec: {}\n",
            "unknown kind \"<missing kind field>\"",
        ),
        (
            "unknown verb",
            "kind: role\nversion: v7\nmetadata: {name: r4}\nspec: {allow: {rules: [{resources: [user], verbs: [frobnicate]}]}}\n",
            "unknown verb \"frobnicate\"",
        ),
        (
            "unknown mode in a role",
            "kind: role\nversion: v7\nmetadata: {name: r5}\nspec: {options: {device_trust_mode: sometimes}}\n",
            "unknown device trust mode \"sometimes\"",
        ),
        (
            "unknown mode in the cluster auth preference",
            "kind: cluster_auth_preference\nversion: v2\nmetadata: {name: cluster-auth-preference}\nspec: {device_trust: {mode: sometimes}}\n",
            "unknown device trust mode \"sometimes\"",
        ),
        (
            "bad name",
            "kind: role\nversion: v7\nmetadata: {name: 'bad name'}\nspec: {}\n",
            "metadata.name contains ' '",
        ),
        (
            "unsupported version",
            "kind: role\nversion: v99\nmetadata: {name: r6}\nspec: {}\n",
            "unsupported version \"v99\"",
        ),
        (
            "second document bad",
            "kind: role\nversion: v7\nmetadata: {name: fine}\nspec: {}\n---\nkind: role\nversion: v7\nmetadata: {name: r7}\nspec: {bogus: 1}\n",
            "role \"r7\": unknown field `bogus`",
        ),
        (
            "JSON syntax",
            r#"{"kind": "role", "version": "v7", "metadata": {"name": "r8"}, "spec": {"#,
            "EOF while parsing",
        ),
        (
            "JSON unknown field",
            r#"[{"kind": "role", "version": "v7", "metadata": {"name": "fine"}, "spec": {}}, {"kind": "role", "version": "v7", "metadata": {"name": "r9"}, "spec": {"allow": {"logns": []}}}]"#,
            "unknown field `logns`",
        ),
        ("empty file", "\n# nothing here\n", "holds no resources"),
    ];
    for (what, text, needle) in cases {
        let f = srv.write_file("bad.yaml", text);
        for force in [false, true] {
            let mut args = vec!["create", "-f", f.as_str()];
            if force {
                args.push("--force");
            }
            let out = srv.dtctl(&args);
            out.fails_with(needle);
            let first = out.first_err_line();
            assert!(
                first.starts_with("ERROR: ") && first.contains(needle),
                "{what}: the first line should say why:\n{out}"
            );
            assert!(
                first.contains("bad.yaml"),
                "{what}: the error names the file:\n{out}"
            );
            assert!(
                out.stdout.is_empty(),
                "{what}: nothing may be reported as done:\n{out}"
            );
        }
        assert_eq!(
            snapshot(&srv),
            before,
            "{what}: a refused file changed something"
        );
    }

    // Refused by the server: the reference is checked there, nothing is written.
    let f = srv.write_file(
        "user.yaml",
        "kind: user\nversion: v2\nmetadata: {name: zed}\nspec: {roles: [no-such-role]}\n",
    );
    srv.dtctl(&["create", "-f", &f])
        .fails_with_one_line("role \"no-such-role\" does not exist");
    let f = srv.write_file(
        "lock.yaml",
        "kind: lock\nversion: v2\nmetadata: {name: old, expires: '2001-01-01T00:00:00Z'}\nspec: {target: {user: zed}}\n",
    );
    srv.dtctl(&["create", "-f", &f])
        .fails_with_one_line("metadata.expires is in the past");
    srv.dtctl(&["create", "-f", "/nonexistent/file.yaml"])
        .fails_with_one_line("cannot read /nonexistent/file.yaml");
    assert_eq!(
        snapshot(&srv),
        before,
        "a refused resource changed something"
    );

    // And a good file still works afterwards.
    srv.dtctl(&["create", "-f", &srv.write_file("good.yaml", GOOD_ROLE)])
        .ok();
}

// ---------------------------------------------------------------------------------------
// Command lines

#[test]
fn bad_command_lines_are_refused_with_a_reason() {
    let srv = Server::start();
    let users_before: BTreeSet<String> = srv
        .dtctl(&["get", "users", "--format=json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["metadata"]["name"].as_str().unwrap().to_string())
        .collect();

    for (args, needle) in [
        (&["get", "frobs"][..], "unknown kind \"frobs\""),
        (&["rm", "frobs/x"], "unknown kind \"frobs\""),
        (&["edit", "frobs/x"], "unknown kind \"frobs\""),
        (&["rm", "role"], "name what to remove: role/NAME"),
        (&["edit", "roles"], "name what to edit: role/NAME"),
        (&["rm", "cluster_auth_preference"], "can't be removed"),
        (
            &["get", "role/no-such-role"],
            "role \"no-such-role\" not found",
        ),
        (
            &["events", "ls", "--type=bogus"],
            "unknown event type \"bogus\"",
        ),
        (
            &["users", "add", "x", "--roles=no-such-role"],
            "role \"no-such-role\" does not exist",
        ),
        (
            &["users", "add", "local-admin", "--roles=access"],
            "reserved name",
        ),
        (
            &["users", "add", "bad name", "--roles=access"],
            "user name contains ' '",
        ),
        (
            &["users", "add", "x", "--roles=access", "--ttl=30d"],
            "at most 7d",
        ),
        (&["users", "reset", "nobody"], "user \"nobody\" not found"),
        (&["users", "rm", "nobody"], "user \"nobody\" not found"),
        (
            &["lock"],
            "name a target: --user, --role, --login, --device, --node, --db, --kube-cluster, --app or --desktop",
        ),
    ] {
        srv.dtctl(args).fails_with_one_line(needle);
    }
    // Parse errors from the command line itself (clap): exit 2 and the offending flag.
    for (args, needle) in [
        (&["frobnicate"][..], "unrecognized subcommand 'frobnicate'"),
        (&["events", "ls", "--since=yesterday"], "--since"),
        (&["users", "add", "x"], "--roles"),
        (&["lock", "--user=x", "--ttl=forever"], "--ttl"),
        (&["tokens", "add", "--type=frob"], "--type"),
        (&["get", "roles", "--format=xml"], "--format"),
    ] {
        let out = srv.dtctl(args);
        out.fails_with(needle);
        assert_eq!(out.code, Some(2), "{out}");
    }
    let after: BTreeSet<String> = srv
        .dtctl(&["get", "users", "--format=json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, users_before, "a refused command created a user");

    let missing = srv.scratch().join("no-data-dir");
    Run::new(
        &DTCTL,
        [
            "--data-dir".as_ref(),
            missing.as_os_str(),
            "status".as_ref(),
        ],
    )
    .run()
    .fails_with_one_line("cannot read the local admin identity");

    // dtsh
    let home = Home::new();
    srv.dtsh(&home, &["status"], "")
        .fails_with_one_line("not logged in");
    let proxy = format!("--proxy={}", srv.addr);
    let pin = format!("--ca-pin={}", srv.pin);
    srv.dtsh(
        &home,
        &["login", "--user=a", "--password-stdin", &pin],
        "x\n",
    )
    .fails_with_one_line("--proxy=HOST:PORT is required");
    srv.dtsh(&home, &["login", &proxy, "--password-stdin", &pin], "x\n")
        .fails_with_one_line("--user=NAME is required");
    srv.dtsh(
        &home,
        &["login", &proxy, "--user=a", "--password-stdin", &pin],
        "",
    )
    .fails_with_one_line("--password-stdin: stdin was empty");
    srv.dtsh(
        &home,
        &["login", &proxy, "--user=a", "--ttl=soon", &pin],
        "",
    )
    .fails_with("--ttl");
    assert!(
        !home.path.exists(),
        "refused logins wrote {:?}",
        home.files()
    );

    // A too-short password at signup is refused, and does not spend the token.
    let token = srv.add_user("frank", "access", "");
    srv.signup_login(&home, "frank", &token, "short")
        .fails_with_one_line("at least 8 characters");
    srv.signup_login(&home, "frank", &token, "long-enough-password")
        .ok();
}
