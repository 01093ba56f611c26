//! The README's commands, verbatim, on a fresh copy of the repository.
//!
//! Every `sh` block of README.md runs, in order, as a user following it
//! would: the first set-up command (`cargo run --release -- serve`) starts
//! the broker on its embedded defaults in its own terminal (process group)
//! and keeps running; the second (`./scripts/test`) is the command this
//! very test runs under, so it is only checked to be what `.ci/run` calls;
//! every later block runs in one shell (`set -eu`: a failing command fails the test) from the
//! copy's root, against that broker. The broker is stopped by SIGTERM to
//! its process group and must exit cleanly.
//!
//! The copy lives in `target/readme-check/` (outside git, stable, so its
//! own `target/` keeps the release build between runs): every file that
//! git tracks or would track is copied afresh, anything else but its
//! `target/` is removed first. This test uses the README's default ports
//! (1883, 8883, 8083, 8084, 18083): it is the only test that does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// The `sh` blocks of a Markdown text.
fn sh_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an sh block is not closed");
    blocks
}

/// A fresh copy of the working tree (what git tracks or would track) in
/// `dest`, keeping only `dest/target`.
fn fresh_copy(root: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(dest).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let out = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .expect("git ls-files");
    assert!(out.status.success());
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = PathBuf::from(String::from_utf8(name.to_vec()).unwrap());
        let from = root.join(&rel);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = dest.join(&rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
}

fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("CERTMQ_") || k == "RUST_LOG" || k == "CARGO_TARGET_DIR" {
            cmd.env_remove(&k);
        }
    }
    cmd
}

#[test]
fn readme_commands_run_verbatim_on_a_fresh_copy() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 3, "README has {} sh blocks", blocks.len());
    assert_eq!(blocks[0].trim(), "cargo run --release -- serve");
    assert_eq!(blocks[1].trim(), "./scripts/test");
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "./scripts/test"),
        ".ci/run must run the README's test command"
    );

    let copy = root.join("target/readme-check");
    fresh_copy(&root, &copy);

    // Terminal 1: the broker, in its own process group (as a terminal's
    // foreground job would be).
    let mut broker = clean_env(
        Command::new("setsid")
            .arg("bash")
            .arg("-c")
            .arg(&blocks[0])
            .current_dir(&copy),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("setsid bash");
    let pgid = broker.id();
    let stderr = broker.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stop = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{pgid}")])
            .status();
    };
    let mut log = Vec::new();
    let mut listening = 0;
    // A cold release build of the broker comes first.
    let deadline = std::time::Instant::now() + Duration::from_secs(1200);
    while listening < 5 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if parse_listening(&line).is_some() {
                    listening += 1;
                }
                log.push(line);
            }
            Err(_) => {
                stop("-KILL");
                panic!(
                    "`{}` did not start the broker:\n{}",
                    blocks[0].trim(),
                    log.join("\n")
                );
            }
        }
    }

    // Terminal 2: every later block, in order, in one shell.
    let script = format!("set -eu\n{}", blocks[2..].join("\n"));
    let out = run(
        clean_env(
            Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(&copy),
        ),
        Duration::from_secs(600),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        stop("-KILL");
        let _ = broker.wait();
        while let Ok(l) = rx.try_recv() {
            log.push(l);
        }
        panic!(
            "the README's commands failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- broker\n{}",
            out.status,
            log.join("\n")
        );
    }
    // What the README's comments say they print.
    for expected in [
        "ok\n",
        "demo/state on",
        "bound ",
        "unbound ",
        "refused",
        "CERTIFICATE_REVOKED",
        "added user alice",
        "ANONYMOUS_NOT_ALLOWED",
        "RC:135",
        "decided by policy other-devices",
        "console user admin (administrator)",
    ] {
        assert!(
            stdout.contains(expected),
            "README output lacks {expected:?}:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        std::fs::metadata(copy.join("certmq.toml")).unwrap().len() > 100,
        "certmq config default wrote nothing"
    );

    // Ctrl-C in terminal 1 (SIGTERM to the group): a clean exit.
    stop("-TERM");
    let status = broker.wait().unwrap();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        log.push(l);
    }
    assert!(
        log.iter().any(|l| l.contains("stopped")),
        "the broker did not stop cleanly ({status}):\n{}",
        log.join("\n")
    );
}
