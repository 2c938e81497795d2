//! Real gdb (batch mode) against `fx86 gdbserver`: forward and reverse execution on the demo
//! guest's bug, the way a user hunts it.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts the server on the guest and runs gdb with `cmds`; returns gdb's output and the
/// server's stderr.
fn session(bin: &Path, args: &[&str], cmds: &[&str]) -> (String, String) {
    use std::io::{BufRead, BufReader, Read};
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = fx86()
        .args(["gdbserver", "--listen", &addr, "--"])
        .arg(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fx86 gdbserver");
    let mut err = BufReader::new(server.stderr.take().expect("stderr"));
    let mut first = String::new();
    err.read_line(&mut first).expect("server says it listens");
    assert!(first.contains("listening"), "{first}");
    let mut gdb = Command::new("gdb");
    gdb.args([
        "-batch",
        "-nx",
        "-ex",
        "set confirm off",
        "-ex",
        &format!("target remote {addr}"),
    ]);
    for c in cmds {
        gdb.args(["-ex", c]);
    }
    gdb.arg(bin);
    let out = gdb.output().expect("run gdb (install it: see .ci/run)");
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    let _ = server.wait();
    (
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        first + &rest,
    )
}

fn demo_bin() -> std::path::PathBuf {
    build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-guests/overflow.c"),
        "gcc",
        "-O0",
    )
}

#[test]
fn forward_and_reverse_stepping() {
    let bin = demo_bin();
    let (out, server) = session(
        &bin,
        &["7"],
        &[
            "break record_scores",
            "continue",
            "print rounds",
            "monitor icount",
            "next",
            "next",
            "reverse-next",
            "reverse-stepi",
            "stepi",
            "info registers rip fs_base",
            "kill",
        ],
    );
    assert!(out.contains("Breakpoint 1, record_scores"), "{out}");
    assert!(out.contains("$1 = 8"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("icount ")), "{out}");
    assert!(out.contains("fs_base"), "{out}");
    assert!(!server.contains("panicked"), "{server}");
}

#[test]
fn crash_then_reverse_watchpoint_finds_the_overflow() {
    let bin = demo_bin();
    let (out, server) = session(
        &bin,
        &["7"],
        &[
            "continue",
            "up",
            "watch -l t->report",
            "reverse-continue",
            "print i",
            "reverse-continue",
            "reverse-continue",
            "monitor icount",
            "kill",
        ],
    );
    assert!(out.contains("SIGSEGV"), "{out}");
    // Going back from the crash, the watchpoint stops at the out-of-bounds write in the loop,
    // with i = 8 (one past the end of scores[8]).
    let first = out.find("Old value").expect("a watchpoint hit");
    assert!(out[first..].contains("record_scores"), "{out}");
    assert!(out.contains("$1 = 8"), "{out}");
    // Then at the assignment in main, then the start of history.
    assert!(out.contains("t->report = print_report"), "{out}");
    assert!(out.contains("No more reverse-execution history"), "{out}");
    assert!(out.contains("icount 0"), "{out}");
    assert!(server.contains("SIGSEGV"), "{server}");
}

#[test]
fn writing_memory_starts_a_new_branch_and_reverse_finish_works() {
    let bin = demo_bin();
    let (out, server) = session(
        &bin,
        &["7"],
        &[
            "break print_report",
            "break record_scores",
            "continue",
            "set var rounds = 6",
            "delete 2",
            "continue",
            "reverse-finish",
            "continue",
            "continue",
        ],
    );
    // With rounds = 6 the overflow never happens: print_report is reached, reverse-finish
    // goes back to the call in main, and the program exits normally on the new branch.
    assert_eq!(
        out.matches("Breakpoint 1, print_report").count(),
        2,
        "{out}"
    );
    assert!(out.contains("t->report(t);"), "{out}");
    assert!(out.contains("exited normally"), "{out}");
    assert!(server.contains("new branch"), "{server}");
    assert!(server.contains("TargetExited(0)"), "{server}");
}

#[test]
fn monitor_commands() {
    let bin = demo_bin();
    let (out, _) = session(
        &bin,
        &["7"],
        &[
            "monitor help",
            "stepi",
            "stepi",
            "monitor icount",
            "monitor goto 1",
            "monitor icount",
            "monitor snapshots",
            "kill",
        ],
    );
    assert!(out.contains("monitor goto <N>"), "{out}");
    assert!(out.contains("icount 2"), "{out}");
    assert!(out.contains("icount 1"), "{out}");
    assert!(out.contains("snapshots 1 "), "{out}");
}
