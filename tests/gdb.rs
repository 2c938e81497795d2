//! Real gdb (batch mode) against `fx86 gdbserver`: forward and reverse execution on the demo
//! guest's bug, the way a user hunts it.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts the server on the guest and runs gdb with `cmds`; returns gdb's output and the
/// server's stderr.
fn session(bin: &Path, args: &[&str], cmds: &[&str]) -> (String, String) {
    gdb_with(
        |addr| {
            let mut c = fx86();
            c.args(["gdbserver", "--listen", addr, "--"])
                .arg(bin)
                .args(args);
            c
        },
        Some(bin),
        cmds,
    )
}

fn demo_bin() -> std::path::PathBuf {
    demo_bin_with("gcc")
}

fn demo_bin_with(cc: &str) -> std::path::PathBuf {
    build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-guests/overflow.c"),
        cc,
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
fn next_over_a_loop_on_one_line_range_steps() {
    // Without range stepping gdb single-steps every instruction of the loop (a packet round
    // trip each); with it, one `vCont;r` runs while the PC stays in the line's range.
    let bin = build(&guest_src("oneline.c"), "gcc", "-O0");
    let (out, server) = session(
        &bin,
        &["500"],
        &[
            "break main",
            "continue",
            "next",
            "set debug remote 1",
            "next",
            "set debug remote 0",
            "print s",
            "reverse-stepi",
            "stepi",
            "print s",
            "next",
            "kill",
        ],
    );
    // s = sum of i*i % 13 for i < 500
    let want: i64 = (0..500i64).map(|i| i * i % 13).sum();
    assert!(out.contains(&format!("$1 = {want}")), "{out}");
    assert!(out.contains(&format!("$2 = {want}")), "{out}");
    assert!(out.contains("vCont;r"), "{out}");
    let single = out.matches("Sending packet: $vCont;s").count();
    assert!(single < 20, "{single} single steps: {out}");
    assert!(!server.contains("panicked"), "{server}");
}

#[test]
fn crash_then_reverse_watchpoint_finds_the_overflow() {
    for cc in ["gcc", "musl-gcc"] {
        crash_then_reverse_watchpoint(cc);
    }
}

fn crash_then_reverse_watchpoint(cc: &str) {
    let bin = demo_bin_with(cc);
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

#[test]
fn stdio_mode_serves_gdb() {
    let bin = demo_bin();
    let fx = env!("CARGO_BIN_EXE_fx86");
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set confirm off", "-ex"])
        .arg(format!(
            "target remote | {fx} gdbserver --stdio -- {} 7",
            bin.display()
        ))
        .args([
            "-ex",
            "break record_scores",
            "-ex",
            "continue",
            "-ex",
            "reverse-stepi",
            "-ex",
            "monitor icount",
            "-ex",
            "kill",
        ])
        .arg(&bin)
        .output()
        .expect("gdb");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Breakpoint 1, record_scores"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("icount ")), "{text}");
}

/// Sends a packet with its checksum.
fn packet(body: &str) -> Vec<u8> {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${body}#{sum:02x}").into_bytes()
}

#[test]
fn ctrl_c_garbage_and_disconnect_are_handled() {
    use std::io::{BufRead, BufReader, Read, Write};
    // A guest that runs for a long time.
    let bin = build(&guest_src("intops.c"), "musl-gcc", "-O2");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = fx86()
        .args(["gdbserver", "--listen", &addr, "--"])
        .arg(&bin)
        .arg("100000000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server");
    let mut err = BufReader::new(server.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("listening line");
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let read_reply = |s: &mut std::net::TcpStream| -> String {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        loop {
            s.read_exact(&mut b).expect("reply byte");
            got.push(b[0]);
            if got.len() >= 3 && got[got.len() - 3] == b'#' {
                let _ = s.write_all(b"+");
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
    };
    // Garbage first: a bad checksum and random bytes must not kill the server.
    s.write_all(b"$garbage#00").expect("write");
    s.write_all(b"xyz\xff\xfe").expect("write");
    s.write_all(&packet("?")).expect("write");
    let r = read_reply(&mut s);
    assert!(r.contains("$S05") || r.contains("$T05"), "{r}");
    // Continue, then interrupt.
    s.write_all(&packet("c")).expect("write");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    s.write_all(b"\x03").expect("write");
    let r = read_reply(&mut s);
    assert!(
        r.contains("$S02") || r.contains("$T02"),
        "Ctrl-C should stop with SIGINT: {r}"
    );
    // A reverse-continue to a breakpoint that is never hit searches the whole history;
    // Ctrl-C interrupts it too.
    s.write_all(&packet("Z0,1,1")).expect("write");
    let r = read_reply(&mut s);
    assert!(r.contains("$OK"), "{r}");
    s.write_all(&packet("bc")).expect("write");
    std::thread::sleep(std::time::Duration::from_millis(30));
    s.write_all(b"\x03").expect("write");
    let r = read_reply(&mut s);
    assert!(
        r.contains("$S02") || r.contains("$T02"),
        "Ctrl-C should interrupt reverse-continue: {r}"
    );
    // Abrupt disconnect: the server ends with a message, not a panic.
    drop(s);
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    let status = server.wait().expect("server exit");
    assert!(!rest.contains("panicked"), "{rest}");
    assert!(status.code().is_some(), "server killed by a signal: {rest}");
}

#[test]
fn thread_local_errno_and_registers() {
    // glibc's errno is a real thread-local variable (musl's is a field of its thread
    // structure behind a macro, which gdb cannot name without macro debug info).
    let cc = "gcc";
    {
        let bin = build(&guest_src("errno.c"), cc, "-O0");
        let (out, _) = session(
            &bin,
            &[],
            &[
                "break 7",
                "continue",
                "print (int)errno",
                "print $fs_base != 0",
                "x/i $pc",
                "info registers rip",
                "kill",
            ],
        );
        assert!(
            out.contains("$1 = 2"),
            "{cc}: errno should read ENOENT:\n{out}"
        );
        assert!(out.contains("$2 = 1"), "{out}");
        assert!(out.contains("=> 0x"), "{out}");
    }
}

#[test]
fn read_and_access_watchpoints_hbreak_finish_until() {
    let bin = demo_bin();
    let (out, server) = session(
        &bin,
        &["5"],
        &[
            "break main",
            "continue",
            "next 3",
            "rwatch -l t->report",
            "continue",
            "delete",
            "hbreak print_report",
            "continue",
            "finish",
            "reverse-step",
            "reverse-step",
            "until",
            "awatch -l t->scores[0]",
            "reverse-continue",
            "delete",
            "continue",
        ],
    );
    assert!(out.contains("Hardware read watchpoint 2"), "{out}");
    assert!(
        out.contains("Value = (void (*)(const struct team *)) 0x"),
        "{out}"
    );
    assert!(out.contains("Breakpoint 3, print_report"), "{out}");
    assert!(
        out.contains("Hardware access (read/write) watchpoint 4"),
        "{out}"
    );
    assert!(out.contains("sum += t->scores[i]"), "{out}");
    assert!(out.contains("exited normally"), "{out}");
    assert!(server.contains("TargetExited(0)"), "{server}");
}

#[test]
fn auxv_then_crash_then_termination() {
    let bin = demo_bin();
    let (out, server) = session(&bin, &["7"], &["info auxv", "continue", "continue"]);
    assert!(out.contains("AT_ENTRY"), "{out}");
    assert!(out.contains("Program received signal SIGSEGV"), "{out}");
    assert!(
        out.contains("Program terminated with signal SIGSEGV"),
        "{out}"
    );
    assert!(server.contains("TargetTerminated"), "{server}");
}

#[test]
fn a_second_client_is_turned_away() {
    use std::io::{BufRead, BufReader, Read};
    let bin = demo_bin();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = fx86()
        .args(["gdbserver", "--listen", &addr, "--"])
        .arg(&bin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server");
    let mut err = BufReader::new(server.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("listening");
    let first = std::net::TcpStream::connect(&addr).expect("first client");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut second = std::net::TcpStream::connect(&addr).expect("second client");
    second
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(
        second.read(&mut buf).unwrap_or(0),
        0,
        "the second client is disconnected"
    );
    drop(first);
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    let _ = server.wait();
    assert!(rest.contains("rejected a second client"), "{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
}
