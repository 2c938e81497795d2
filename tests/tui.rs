//! The real `fx86 tui` binary in a real terminal (tmux): keys in, screen captured.

mod common;

use common::build;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of our own with one pane running a command.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        let socket = format!("fx86-test-{}-{}", std::process::id(), rand_suffix());
        let ok = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "150", "-y", "45"])
            .arg(cmd)
            .env("TERM", "xterm-256color")
            .status()
            .expect("tmux (installed by .ci/run)")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux { socket }
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let ok = Command::new("tmux")
                .args(["-L", &self.socket, "send-keys", "-t", "0", k])
                .status()
                .expect("tmux")
                .success();
            assert!(ok);
        }
    }

    fn literal(&self, text: &str) {
        Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "0", "-l", text])
            .status()
            .expect("tmux");
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "0"])
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen contains `text`.
    fn wait_for(&self, text: &str) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(text) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "screen never showed {text:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn session(args: &str) -> Tmux {
    session_with("", args)
}

/// A TUI session on the demo guest, with `opts` for fx86 and `args` for the guest.
fn session_with(opts: &str, args: &str) -> Tmux {
    let bin = build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-guests/overflow.c"),
        "gcc",
        "-O1",
    );
    let cmd = format!(
        "{} tui {opts} -- {} {args}; echo FX86-EXIT=$?; sleep 600",
        env!("CARGO_BIN_EXE_fx86"),
        bin.display()
    );
    Tmux::start(&cmd)
}

/// The icount the status line shows.
fn icount_shown(screen: &str) -> Option<String> {
    screen
        .lines()
        .find_map(|l| l.split("icount ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn the_kvm_backend_continues_natively_and_goes_back_as_before() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIPPED: /dev/kvm is not usable on this machine");
        return;
    }
    // The same moves and the same positions as with the interpreter.
    let mut seen = Vec::new();
    for opts in ["", "--backend kvm"] {
        let t = session_with(opts, "7");
        t.wait_for("at the first instruction");
        t.keys(&["c"]);
        let s = t.wait_for("SIGSEGV");
        assert!(s.contains("round 8: 4106"), "{opts}: {s}");
        let at_crash = icount_shown(&s);
        t.keys(&["w"]);
        t.literal("rdi+64");
        t.keys(&["Enter"]);
        t.wait_for("watchpoint set");
        t.keys(&["C"]);
        let s = t.wait_for("(reverse)");
        assert!(s.contains("overflow.c:22"), "{opts}: {s}");
        let at_write = icount_shown(&s);
        seen.push((at_crash, at_write));
        t.keys(&["q"]);
        let s = t.wait_for("FX86-EXIT=");
        assert!(s.contains("FX86-EXIT=0"), "{opts}: {s}");
    }
    assert!(seen[0].0.is_some() && seen[0].1.is_some(), "{seen:?}");
    assert_eq!(seen[0], seen[1], "interp vs kvm positions");
}

#[test]
fn steps_crash_reverse_and_quit_cleanly() {
    let t = session("7");
    let s = t.wait_for("at the first instruction");
    assert!(s.contains("Registers") && s.contains("rip"), "{s}");
    assert!(s.contains("Disassembly") && s.contains("=>"), "{s}");
    for _ in 0..5 {
        t.keys(&["s"]);
    }
    t.wait_for("icount 5 / 5");
    t.keys(&["S"]);
    t.wait_for("icount 4 / 5");
    // c runs into the crash; the output pane shows what the guest printed on the way.
    t.keys(&["c"]);
    let s = t.wait_for("SIGSEGV");
    assert!(s.contains("round 8: 4106"), "{s}");
    // Watch the corrupted pointer and go back to the write that broke it.
    t.keys(&["w"]);
    t.literal("rdi+64");
    t.keys(&["Enter"]);
    t.wait_for("watchpoint set");
    t.keys(&["C"]);
    let s = t.wait_for("(reverse)");
    assert!(s.contains("old 4199") || s.contains("new 4106"), "{s}");
    assert!(
        s.contains("overflow.c:22"),
        "source line of the bad write:\n{s}"
    );
    assert!(
        !s.contains("round 8"),
        "the output pane un-printed round 8:\n{s}"
    );
    t.keys(&["q"]);
    let s = t.wait_for("FX86-EXIT=");
    assert!(s.contains("FX86-EXIT=0"), "{s}");
    assert!(
        !s.contains("Registers") && !s.contains("Timeline"),
        "the terminal is restored (alternate screen left):\n{s}"
    );
}

#[test]
fn ctrl_c_restores_the_terminal_and_help_shows_keys() {
    let t = session("7");
    t.wait_for("at the first instruction");
    t.keys(&["?"]);
    let s = t.wait_for("Keys");
    assert!(s.contains("reverse") || s.contains("back"), "{s}");
    t.keys(&["Escape"]);
    t.keys(&["C-c"]);
    let s = t.wait_for("FX86-EXIT=");
    assert!(!s.contains("Registers"), "{s}");
}

#[test]
fn sigterm_restores_the_terminal() {
    let t = session("7");
    t.wait_for("at the first instruction");
    // The pane runs `sh -c`; fx86 is its child.
    let out = Command::new("tmux")
        .args(["-L", &t.socket, "display", "-p", "-t", "0", "#{pane_pid}"])
        .output()
        .expect("tmux");
    let shell = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .expect("the pane's shell");
    let pid = children.split_whitespace().next().expect("fx86 runs");
    let ok = Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let s = t.wait_for("FX86-EXIT=");
    assert!(!s.contains("Registers"), "{s}");
}

#[test]
fn a_recording_opens_in_the_tui_without_its_program() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tui-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let built = build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-guests/overflow.c"),
        "gcc",
        "-O1",
    );
    let bin = dir.join("overflow");
    std::fs::copy(&built, &bin).expect("copy");
    let rec = dir.join("bug.fxr");
    let st = Command::new(env!("CARGO_BIN_EXE_fx86"))
        .arg("record")
        .arg("-o")
        .arg(&rec)
        .arg("--")
        .arg(&bin)
        .arg("7")
        .output()
        .expect("record");
    assert_eq!(st.status.code(), Some(139));
    std::fs::remove_file(&bin).expect("delete program");
    let cmd = format!(
        "{} replay {} --tui; echo FX86-EXIT=$?; sleep 600",
        env!("CARGO_BIN_EXE_fx86"),
        rec.display()
    );
    let t = Tmux::start(&cmd);
    t.wait_for("replaying");
    t.keys(&["c"]);
    let s = t.wait_for("SIGSEGV");
    assert!(s.contains("round 8: 4106"), "{s}");
    // Symbols and source lines come from the program stored in the recording.
    t.keys(&["C"]);
    let s = t.wait_for("history");
    assert!(s.contains("icount 0 /"), "{s}");
    assert!(s.contains("_start"), "{s}");
    t.keys(&["q"]);
    let s = t.wait_for("FX86-EXIT=");
    assert!(s.contains("FX86-EXIT=0"), "{s}");
}
