//! Bug-reproduction recordings: record here, then replay and verify somewhere the program, its
//! input files and its stdin no longer exist; damaged files are refused.

mod common;
use common::*;
use fx86_snapshots::recording::Recording;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn scratch(name: &str) -> PathBuf {
    common::scratch("record", name)
}

fn text(b: &[u8]) -> String {
    lossy(b)
}

/// Copies a built guest into `dir` (so that it can be deleted afterwards).
fn own_copy(bin: &Path, dir: &Path) -> PathBuf {
    let p = dir.join(bin.file_name().expect("name"));
    std::fs::copy(bin, &p).expect("copy guest");
    p
}

fn fx86_in(dir: &Path, args: &[&str]) -> Output {
    fx86()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run fx86")
}

/// Input data that is a few hundred KB and not trivially compressible.
fn input_data(n: usize) -> Vec<u8> {
    let mut rng = Rng(0x5eed);
    (0..n)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                b'a' + (rng.next() % 26) as u8
            }
        })
        .collect()
}

#[test]
fn record_then_replay_elsewhere_without_program_files_or_stdin() {
    let here = scratch("here");
    let there = scratch("there");
    let bin = own_copy(&build(&guest_src("digest.c"), "gcc", "-O2"), &here);
    std::fs::write(here.join("input.dat"), input_data(300_000)).expect("input");
    std::fs::create_dir_all(here.join("d/sub")).expect("dir");
    std::fs::write(here.join("d/x"), b"x").expect("x");
    let stdin = input_data(100_000);

    let mut native = Command::new(&bin);
    native.current_dir(&here).args(["input.dat", "d"]);
    let native = run_with_input(native, &stdin);
    assert!(text(&native.stdout).contains("stdin: 100000 bytes"));

    let mut rec = fx86();
    rec.current_dir(&here).args([
        "record",
        "-o",
        "run.fxr",
        "--checkpoint-interval",
        "100000",
        "--",
    ]);
    rec.arg(&bin).args(["input.dat", "d"]);
    let recorded = run_with_input(rec, &stdin);
    // Recording passes the output through and keeps the exit status.
    assert_eq!(text(&recorded.stdout), text(&native.stdout));
    assert_eq!(status_code(&recorded), status_code(&native));
    assert!(
        text(&recorded.stderr).contains("wrote run.fxr"),
        "{}",
        text(&recorded.stderr)
    );

    // Move the recording away and delete everything it came from.
    std::fs::rename(here.join("run.fxr"), there.join("run.fxr")).expect("move");
    std::fs::remove_dir_all(&here).expect("delete the program and its inputs");

    let replay = fx86_in(&there, &["replay", "run.fxr"]);
    assert_eq!(
        text(&replay.stdout),
        text(&native.stdout),
        "{}",
        text(&replay.stderr)
    );
    assert_eq!(status_code(&replay), status_code(&native));
    assert!(
        !text(&replay.stderr).contains("diverged"),
        "{}",
        text(&replay.stderr)
    );

    let verify = fx86_in(&there, &["verify", "run.fxr"]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    assert!(
        text(&verify.stdout).contains("ok"),
        "{}",
        text(&verify.stdout)
    );

    let info = fx86_in(&there, &["info", "run.fxr"]);
    let info = text(&info.stdout);
    assert!(info.contains("digest"), "{info}");
    assert!(info.contains("input.dat d"), "{info}");
    assert!(info.contains("stdin        100000 bytes"), "{info}");
    assert!(info.contains("every 100000 instructions"), "{info}");
    assert!(
        info.contains(&format!("exit status  {}", status_code(&native))),
        "{info}"
    );
    // The input file is stored once (with the program).
    let r = Recording::read(&there.join("run.fxr")).expect("decode");
    assert_eq!(r.blobs.len(), 2, "{info}");
    assert!(r.checkpoints.len() > 10, "{}", r.checkpoints.len());
}

#[test]
fn a_crashing_run_replays_to_the_same_signal() {
    let dir = scratch("crash");
    let bin = own_copy(&build(&guest_src("digest.c"), "musl-gcc", "-O2"), &dir);
    std::fs::write(dir.join("f"), b"hello").expect("f");
    let mut rec = fx86();
    rec.current_dir(&dir)
        .args(["record", "-o", "crash.fxr", "--"])
        .arg(&bin)
        .args(["f", ".", "crash"]);
    let recorded = run_with_input(rec, b"some input\n");
    assert_eq!(
        status_code(&recorded),
        128 + 6,
        "{}",
        text(&recorded.stderr)
    );
    assert!(text(&recorded.stderr).contains("SIGABRT"));
    std::fs::remove_file(&bin).expect("delete program");
    std::fs::remove_file(dir.join("f")).expect("delete input");
    let replay = fx86_in(&dir, &["replay", "crash.fxr"]);
    assert_eq!(status_code(&replay), 128 + 6, "{}", text(&replay.stderr));
    assert_eq!(text(&replay.stdout), text(&recorded.stdout));
    assert!(
        text(&replay.stderr).contains("SIGABRT"),
        "{}",
        text(&replay.stderr)
    );
    let verify = fx86_in(&dir, &["verify", "crash.fxr"]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

#[test]
fn an_interrupted_recording_is_complete_up_to_that_point() {
    let dir = scratch("interrupt");
    let child = fx86()
        .current_dir(&dir)
        .args([
            "record",
            "-o",
            "yes.fxr",
            "--",
            "/bin/busybox",
            "yes",
            "again",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // SAFETY: sending SIGINT to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let st = child.wait_with_output().expect("wait");
    assert_eq!(status_code(&st), 130, "{}", text(&st.stderr));
    assert!(
        text(&st.stderr).contains("interrupted"),
        "{}",
        text(&st.stderr)
    );
    let info = text(&fx86_in(&dir, &["info", "yes.fxr"]).stdout);
    assert!(info.contains("interrupted"), "{info}");
    let replay = fx86()
        .current_dir(&dir)
        .args(["replay", "yes.fxr"])
        .stdin(Stdio::null())
        .output()
        .expect("replay");
    assert_eq!(status_code(&replay), 130);
    let lines = text(&replay.stdout);
    assert!(lines.lines().count() > 100, "{}", lines.len());
    // The output stops where the recording did, possibly inside a line.
    let all: Vec<&str> = lines.lines().collect();
    assert!(all[..all.len() - 1].iter().all(|l| *l == "again"));
    assert!("again".starts_with(all[all.len() - 1]));
    let verify = fx86_in(&dir, &["verify", "yes.fxr"]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

/// A recording of the digest guest, for damaging.
fn small_recording(dir: &Path) -> Vec<u8> {
    let bin = build(&guest_src("digest.c"), "gcc", "-O2");
    std::fs::write(dir.join("in"), input_data(5000)).expect("in");
    let mut rec = fx86();
    rec.current_dir(dir)
        .args([
            "record",
            "-o",
            "ok.fxr",
            "--checkpoint-interval",
            "20000",
            "--",
        ])
        .arg(&bin)
        .args(["in", "."]);
    let out = run_with_input(rec, b"stdin bytes\n");
    assert!(
        text(&out.stderr).contains("wrote ok.fxr"),
        "{}",
        text(&out.stderr)
    );
    std::fs::read(dir.join("ok.fxr")).expect("recording")
}

/// Every command refuses `bytes` with one line naming `what`, a non-zero status, no panic.
fn refused(dir: &Path, bytes: &[u8], what: &str) {
    std::fs::write(dir.join("bad.fxr"), bytes).expect("write");
    for cmd in ["replay", "verify", "info"] {
        let o = fx86_in(dir, &[cmd, "bad.fxr"]);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{cmd} accepted a bad file ({what})");
        assert!(o.stdout.is_empty(), "{cmd} printed {}", text(&o.stdout));
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
        assert!(
            err.contains("bad.fxr") && err.contains(what),
            "{cmd}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn damaged_recordings_are_refused() {
    let dir = scratch("damaged");
    let good = small_recording(&dir);
    refused(&dir, &[], "not an fx86 recording");
    refused(&dir, b"#!/bin/sh\necho hi\n", "not an fx86 recording");
    let elf = std::fs::read("/bin/busybox").expect("busybox");
    refused(&dir, &elf[..4096], "not an fx86 recording");
    // A newer format version.
    let mut v = good.clone();
    v[8] = 9;
    refused(&dir, &v, "version 9 is not supported");
    // Truncated anywhere.
    for cut in [
        9,
        12,
        13,
        100,
        good.len() / 2,
        good.len() - 33,
        good.len() - 1,
    ] {
        refused(&dir, &good[..cut], "truncated");
    }
    // Bit flips anywhere after the header.
    let mut rng = Rng(7);
    for _ in 0..12 {
        let mut b = good.clone();
        let at = 12 + (rng.next() as usize) % (good.len() - 12);
        b[at] ^= 1 << (rng.next() % 8);
        std::fs::write(dir.join("bad.fxr"), &b).expect("write");
        let o = fx86_in(&dir, &["verify", "bad.fxr"]);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "a flip at {at} was accepted");
        assert!(
            err.contains("corrupt") || err.contains("truncated"),
            "flip at {at}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let missing = fx86_in(&dir, &["replay", "no-such.fxr"]);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no-such.fxr"));
}

#[test]
fn verify_names_where_a_replay_diverges() {
    let dir = scratch("diverge");
    let good = small_recording(&dir);
    let ok = fx86_in(&dir, &["verify", "ok.fxr"]);
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    // A well-formed recording whose stdin was changed: the replay reads different bytes, and
    // the first checkpoint after that read no longer matches.
    let mut r = Recording::decode(&good).expect("decode");
    assert!(!r.stdin.is_empty());
    let read_at = r.stdin[0].0;
    r.stdin[0].1[0] ^= 0x20;
    std::fs::write(dir.join("changed.fxr"), r.encode()).expect("write");
    let o = fx86_in(&dir, &["verify", "changed.fxr"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let first_after = r
        .checkpoints
        .iter()
        .map(|c| c.0)
        .find(|&c| c > read_at)
        .unwrap_or(r.end.icount);
    assert!(
        out.contains(&format!("DIVERGES at icount {first_after}")),
        "read at {read_at}: {out}"
    );
    // A plain replay checks the checkpoints too, and says so rather than carrying on.
    let o = fx86_in(&dir, &["replay", "changed.fxr"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "diverged from the recording at icount {first_after}"
        )),
        "{err}"
    );
}

#[test]
fn gdb_on_a_replay_reaches_the_crash_and_goes_back() {
    let dir = scratch("gdb");
    let bin = own_copy(
        &build(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-guests/overflow.c"),
            "gcc",
            "-O0",
        ),
        &dir,
    );
    let rec = fx86_in(
        &dir,
        &[
            "record",
            "-o",
            "bug.fxr",
            "--",
            bin.to_str().expect("path"),
            "7",
        ],
    );
    assert_eq!(status_code(&rec), 139, "{}", text(&rec.stderr));
    std::fs::remove_file(&bin).expect("delete program");

    // gdb gets no program file: symbols come from the program stored in the recording.
    let (out, rest) = gdb_with(
        |addr| {
            let mut c = fx86();
            c.current_dir(&dir)
                .args(["replay", "bug.fxr", "--gdb", addr]);
            c
        },
        None,
        &[
            "continue",
            "bt",
            "up",
            "watch -l t->report",
            "reverse-continue",
            "print i",
            "monitor icount",
            "kill",
        ],
    );
    assert!(out.contains("SIGSEGV"), "{out}");
    assert!(out.contains("main"), "{out}");
    assert!(out.contains("record_scores"), "{out}");
    assert!(out.contains("$1 = 8"), "{out}");
    assert!(!rest.contains("panicked"), "{rest}");
}

#[test]
fn a_failure_of_fx86_still_leaves_a_recording_up_to_the_last_checkpoint() {
    let dir = scratch("failure");
    let data: Vec<u8> = (0..3000)
        .flat_map(|i| format!("{}\n", (i * 7919) % 3001).into_bytes())
        .collect();
    let mut rec = fx86();
    rec.current_dir(&dir).args([
        "record",
        "-o",
        "cut.fxr",
        "--checkpoint-interval",
        "100000",
        "--inject-failure-at",
        "1500000",
        "--",
        "/bin/busybox",
        "sort",
        "-n",
    ]);
    let o = run_with_input(rec, &data);
    let err = text(&o.stderr);
    assert_eq!(status_code(&o), 70, "{err}");
    let at: u64 = err
        .split("ends at the last checkpoint, icount ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(at >= 1_500_000 && at.is_multiple_of(100_000), "{err}");
    let info = text(&fx86_in(&dir, &["info", "cut.fxr"]).stdout);
    assert!(info.contains("fx86 failed"), "{info}");
    let v = fx86_in(&dir, &["verify", "cut.fxr"]);
    assert!(v.status.success(), "{}", text(&v.stdout));
    let r = fx86_in(&dir, &["replay", "cut.fxr"]);
    assert_eq!(status_code(&r), 130, "{}", text(&r.stderr));
}
