//! Shared helpers for the end-to-end tests: build C guests, run them natively and under fx86.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The fx86 binary under test.
pub fn fx86() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fx86"))
}

pub fn guest_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guests")
        .join(name)
}

/// Builds `src` (under tests/guests or demo-guests) with `cc` ("gcc", "musl-gcc", "g++") at
/// `opt` as a static executable; cached by name in the target's temp dir.
pub fn build(src: &Path, cc: &str, opt: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&dir).expect("create guest dir");
    let stem = src.file_stem().expect("stem").to_string_lossy();
    let out = dir.join(format!(
        "{stem}-{}-{}",
        cc.replace('+', "x"),
        opt.trim_start_matches('-')
    ));
    let fresh = match (std::fs::metadata(&out), std::fs::metadata(src)) {
        (Ok(o), Ok(s)) => o.modified().ok() >= s.modified().ok(),
        _ => false,
    };
    if fresh {
        return out;
    }
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_extension(format!("tmp{}-{n}", std::process::id()));
    // "-static-pie" builds a static position-independent executable (at -O2).
    let flags: &[&str] = if opt == "-static-pie" {
        &["-static-pie", "-O2"]
    } else {
        &["-static", opt]
    };
    let st = Command::new(cc)
        .args(flags)
        .args(["-g", "-o"])
        .arg(&tmp)
        .arg(src)
        .arg("-lm")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc} (install it: see .ci/run): {e}"));
    assert!(st.success(), "{cc} failed on {}", src.display());
    std::fs::rename(&tmp, &out).expect("rename built guest");
    out
}

/// Runs a command with stdin from `input`, returning its output.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

/// Exit status as a shell reports it (128+signal when killed).
pub fn status_code(o: &Output) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
}

/// Runs `bin args` natively and under `fx86 run`, asserting identical stdout and status.
pub fn assert_same_as_native(bin: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut n = Command::new(bin);
    n.args(args);
    let native = run_with_input(n, input);
    let mut f = fx86();
    f.arg("run").arg("--").arg(bin).args(args);
    let emu = run_with_input(f, input);
    assert_eq!(
        String::from_utf8_lossy(&emu.stdout),
        String::from_utf8_lossy(&native.stdout),
        "stdout differs for {} {:?}; fx86 stderr:\n{}",
        bin.display(),
        args,
        String::from_utf8_lossy(&emu.stderr)
    );
    assert_eq!(
        status_code(&emu),
        status_code(&native),
        "exit status differs for {}",
        bin.display()
    );
    emu
}

/// The `fx86: icount=... state=...` line of a `--stats` run.
pub fn stats_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

pub fn stat_field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// A numeric `key=value` field of a `--stats` line.
/// Runs `fx86 [flag] run --stats RUN_ARGS -- bin args` (stdin `input`) with `--check-jit`,
/// as usual (translated) and with `--no-jit`, and asserts that they agree: no translation
/// disagreed with the interpreter (`--check-jit` runs each one again and stops with status
/// 70), and the output, status, icount and state hash of both translated runs are those of
/// the interpreter's. Returns the `--stats` line of the usual run.
pub fn assert_translation_agrees(
    bin: &Path,
    args: &[&str],
    input: &[u8],
    run_args: &[&str],
    what: &str,
) -> String {
    let run = |flag: Option<&str>| {
        let mut c = fx86();
        c.args(flag)
            .args(["run", "--stats"])
            .args(run_args)
            .arg("--")
            .arg(bin)
            .args(args);
        run_with_input(c, input)
    };
    let checked = run(Some("--check-jit"));
    let interp = run(Some("--no-jit"));
    let usual = run(None);
    assert_ne!(
        status_code(&checked),
        70,
        "a translation disagreed with the interpreter on {what}: {}",
        lossy(&checked.stderr)
    );
    let b = stats_line(&interp);
    for (mode, jit) in [("--check-jit", &checked), ("translated", &usual)] {
        assert_eq!(
            jit.stdout, interp.stdout,
            "stdout differs on {what} ({mode})"
        );
        assert_eq!(
            status_code(jit),
            status_code(&interp),
            "status on {what} ({mode})"
        );
        let a = stats_line(jit);
        for key in ["icount", "state", "exit"] {
            assert_eq!(
                stat_field(&a, key),
                stat_field(&b, key),
                "{key} differs on {what} ({mode})"
            );
        }
    }
    stats_line(&usual)
}

pub fn stat_num(line: &str, key: &str) -> u64 {
    stat_field(line, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line:?}"))
}

/// A small deterministic generator for test data (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A fresh directory `group/name-PID` under the target's temp dir.
pub fn scratch(group: &str, name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Bytes as text (lossy).
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A TCP port on loopback that is free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts the fx86 command `server(addr)` (a gdb server listening on `addr`), waits until it
/// says it listens, runs real gdb in batch mode with `cmds` (and `file` as the program, if
/// given) against it, and returns gdb's output and the server's stderr.
pub fn gdb_with(
    server: impl FnOnce(&str) -> Command,
    file: Option<&Path>,
    cmds: &[&str],
) -> (String, String) {
    use std::io::{BufRead, BufReader, Read};
    let addr = format!("127.0.0.1:{}", free_port());
    let mut server = server(&addr)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the fx86 gdb server");
    let mut err = BufReader::new(server.stderr.take().expect("stderr"));
    let mut said = String::new();
    while !said.contains("listening") {
        let mut l = String::new();
        if err.read_line(&mut l).expect("server output") == 0 {
            panic!("the server ended before listening: {said}");
        }
        said += &l;
    }
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx", "-ex", "set confirm off"])
        .args(["-ex", &format!("target remote {addr}")]);
    for c in cmds {
        gdb.args(["-ex", c]);
    }
    if let Some(f) = file {
        gdb.arg(f);
    }
    let out = gdb.output().expect("run gdb (install it: see .ci/run)");
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    let _ = server.wait();
    (lossy(&out.stdout) + &lossy(&out.stderr), said + &rest)
}
