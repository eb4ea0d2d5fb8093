//! The `wharf-origin` binary and its secrets (issue 12): it refuses to start
//! with a placeholder secret (exit status 2, the setting named), and
//! `hash-password` prints a stored form the core verifies.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use wharf_core::password::StoredPassword;

const BIN: &str = env!("CARGO_BIN_EXE_wharf-origin");

fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run wharf-origin");
    // A refused command line exits before it reads stdin: a broken pipe here
    // is part of that outcome, which the exit status and stderr tell.
    let _ = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

#[test]
fn a_placeholder_secret_stops_the_origin_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("origin.toml");
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--rule",
        "docker.io=http://127.0.0.1:9",
    ];
    // (config file, environment, what stderr says)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            "[auth]\nservice = \"wharf.test\"\n",
            &[("WHARF_TOKEN_KEY", "REPLACE-ME-WITH-32-OR-MORE-RANDOM-BYTES")],
            "WHARF_TOKEN_KEY (or auth.token_key) is \"REPLACE-ME-WITH-32-OR-MORE-RANDOM-BYTES\", a placeholder",
        ),
        (
            "[auth]\nservice = \"wharf.test\"\ntoken_key = \"dev-only-token-key-0123456789abcdef0123456789\"\n",
            &[],
            "WHARF_TOKEN_KEY (or auth.token_key)",
        ),
        (
            "[embedded]\nread_only_access_key = \"edge\"\nread_only_secret_key = \"replace-me-read-only-secret-key\"\n",
            &[],
            "embedded.read_only_secret_key is",
        ),
        (
            "[embedded]\naccess_key = \"wharfdev\"\nsecret_key = \"wharfdev-secret-key-0123456789\"\n",
            &[],
            "embedded.access_key is \"wharfdev\"",
        ),
    ];
    for (file, env, want) in cases {
        std::fs::write(&config, file).unwrap();
        let mut args = base.to_vec();
        args.extend_from_slice(&["--config", config.to_str().unwrap()]);
        let out = run(&args, env, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(
            stderr.contains(want),
            "{file}: {stderr:?} should contain {want:?}"
        );
        assert!(
            !data.join("s3").exists(),
            "{file}: nothing may start before the configuration is valid"
        );
    }
}

#[test]
fn hash_password_prints_a_stored_form_that_verifies() {
    let out = run(&["hash-password"], &[], "correct horse battery staple\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let stored = StoredPassword::parse(line.trim_end()).unwrap();
    assert_eq!(stored.iterations, wharf_core::password::DEFAULT_ITERATIONS);
    assert_eq!(stored.salt.len(), wharf_core::password::SALT_LEN);
    assert!(stored.verify(b"correct horse battery staple"));
    assert!(!stored.verify(b"correct horse battery staple\n"));

    // Salted: the same password twice gives two different stored forms.
    let again = run(
        &["hash-password", "--iterations", "10000"],
        &[],
        "correct horse battery staple",
    );
    let again = String::from_utf8(again.stdout).unwrap();
    assert!(again.starts_with("pbkdf2-sha256$10000$"), "{again}");
    assert_ne!(again, line);

    for (args, stdin, want) in [
        (&["hash-password"][..], "\n", "empty password"),
        (
            &["hash-password", "--iterations", "200000"][..],
            "pw\n",
            "expected 10000 to 100000",
        ),
    ] {
        let out = run(args, &[], stdin);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(want));
    }
}
