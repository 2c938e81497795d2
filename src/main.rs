//! fx86: the command line. Parses arguments, wires the engine to the real terminal and file
//! system, and reports results. Library crates do the work.

mod lockstep;
mod recordings;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fx86_engine::host::StdHost;
use fx86_engine::kvm::NativeVm;
use fx86_engine::{Config, Machine, StopReason, Timeline};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "fx86",
    version,
    about = "A time-travel debugger for x86-64 Linux programs"
)]
struct Cli {
    /// Interpret every instruction: do not translate hot blocks to host code (for comparing
    /// the two; the results are the same).
    #[arg(long, global = true)]
    no_jit: bool,
    /// Check every run of translated code against the interpreter and stop at the first
    /// disagreement (slow; for testing).
    #[arg(long, global = true, hide = true)]
    check_jit: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Which engine executes the guest's instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Interp,
    Kvm,
    Auto,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a program in the deterministic engine.
    Run {
        /// Print icount, wall time, speed, state hash and exit code as the last stderr line.
        #[arg(long)]
        stats: bool,
        /// Stop the guest after this many instructions (exit status 124).
        #[arg(long, value_name = "N")]
        max_insns: Option<u64>,
        /// Seed for the guest's randomness (AT_RANDOM, getrandom, /dev/urandom).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Memory budget for time-travel snapshots (e.g. 512M, 2G).
        #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
        snapshot_memory: u64,
        /// How to execute: `interp` (the interpreter), `kvm` (user code runs natively under
        /// KVM; syscalls, signals and exact positions go through the interpreter) or `auto`
        /// (kvm when /dev/kvm is usable).
        #[arg(long, value_enum, default_value_t = Backend::Interp)]
        backend: Backend,
        /// With --backend kvm: replay every native stretch in the interpreter at once and
        /// stop if the two backends disagree about the state at its end (slow; for testing).
        #[arg(long)]
        cross_check: bool,
        /// Testing aid for --backend kvm: act as if this CPU set undefined flags unlike the
        /// model, so that instructions whose undefined flags can be seen are interpreted.
        #[arg(long, hide = true)]
        assume_host_flags_differ: bool,
        /// Measuring aid for --backend kvm: never interpret bursts in place of frequent exits
        /// (so that `benches/run.sh` times the exits themselves).
        #[arg(long, hide = true)]
        no_bursts: bool,
        /// With --backend kvm: interrupt the VM every N milliseconds (0: never), cutting long
        /// native stretches at exact states that replay finds again, so that they can be
        /// replayed on all cores at once.
        #[arg(long, value_name = "N", default_value_t = fx86_engine::record::DEFAULT_KICK_MS)]
        kick_ms: u64,
        /// The program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        prog: Vec<String>,
    },
    /// Run a static program natively (ptrace single-step) and in the engine side by side,
    /// comparing registers after every instruction.
    Lockstep {
        /// Stop after this many instructions.
        #[arg(long, value_name = "N")]
        max_insns: Option<u64>,
        /// Print a line every N instructions compared.
        #[arg(long, value_name = "N")]
        progress: Option<u64>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        prog: Vec<String>,
    },
    /// Serve a program to gdb (`target remote ADDR:PORT`) with forward and reverse execution.
    Gdbserver {
        /// Address to listen on (loopback unless told otherwise).
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:1234")]
        listen: String,
        /// Serve one session over stdin/stdout (`target remote | fx86 gdbserver --stdio -- PROG`);
        /// the guest's output then goes to stderr.
        #[arg(long)]
        stdio: bool,
        /// `interp` (default), `kvm` (continuing past the end of history runs natively;
        /// positions are learned by replay when going back) or `auto`.
        #[arg(long, value_enum, default_value_t = Backend::Interp)]
        backend: Backend,
        /// With --backend kvm: interrupt the VM every N milliseconds (see `run`).
        #[arg(long, value_name = "N", default_value_t = fx86_engine::record::DEFAULT_KICK_MS)]
        kick_ms: u64,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        prog: Vec<String>,
    },
    /// Explore a run in a terminal UI (disassembly, registers, output, timeline).
    Tui {
        /// `interp` (default), `kvm` (continuing past the end of history runs natively;
        /// positions are learned by replay) or `auto`.
        #[arg(long, value_enum, default_value_t = Backend::Interp)]
        backend: Backend,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        prog: Vec<String>,
    },
    /// Run a program like `run` and write a recording that replays bit for bit anywhere:
    /// the program, every file it read, its stdin and state-hash checkpoints.
    Record {
        /// The recording file to write (written under a temporary name, then renamed).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Instructions between state-hash checkpoints (what `verify` checks).
        #[arg(long, value_name = "N", default_value_t = fx86_engine::record::DEFAULT_CHECKPOINT_INTERVAL)]
        checkpoint_interval: u64,
        /// Seed for the guest's randomness.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Testing aid: make fx86 fail (panic) at the first syscall at or after icount N, to
        /// check that the recording made so far is still written.
        #[arg(long, value_name = "N", hide = true)]
        inject_failure_at: Option<u64>,
        /// `interp` (default), `kvm` (the guest runs natively; checkpoints fall at VM exits
        /// after each interval) or `auto`. Replays always use the interpreter.
        #[arg(long, value_enum, default_value_t = Backend::Interp)]
        backend: Backend,
        /// With --backend kvm: interrupt the VM every N milliseconds (0: never), so that
        /// checkpoints also fall inside long computations without system calls.
        #[arg(long, value_name = "N", default_value_t = fx86_engine::record::DEFAULT_KICK_MS)]
        kick_ms: u64,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        prog: Vec<String>,
    },
    /// Re-execute a recording: its output again, with the original exit status.
    Replay {
        file: PathBuf,
        /// Serve the replay to gdb instead (`target remote ADDR:PORT`), with reverse execution.
        #[arg(long, value_name = "ADDR:PORT", conflicts_with = "tui")]
        gdb: Option<String>,
        /// Open the replay in the terminal UI.
        #[arg(long)]
        tui: bool,
    },
    /// Replay a recording and check every state-hash checkpoint and the final state.
    Verify { file: PathBuf },
    /// Describe a recording: program, args, icount, exit status, files, checkpoints.
    Info { file: PathBuf },
    /// Run a demo guest with a bug and show what happened.
    Demo,
    /// Benchmark time travel on a program: forward speed with snapshots on and off,
    /// reverse-step latency at the end of history, reverse-continue over the whole history.
    BenchTimeline {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        prog: Vec<String>,
    },
}

/// Finds `prog` as a shell does: a name with a slash is a path, otherwise search PATH.
pub fn find_program(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Loads a program for the engine, or says why not with the status a shell would use.
pub fn load_guest(
    prog: &[String],
    seed: u64,
    host: StdHost,
) -> std::result::Result<Machine, (i32, String)> {
    let (bytes, config) = guest_config(prog, seed)?;
    let name = config.exe.clone();
    Machine::new(&bytes, config, Box::new(host)).map_err(|e| (126, format!("{name}: {e}")))
}

/// The program's bytes and the guest configuration `fx86 run -- PROG` would use: this
/// process's environment, working directory and terminal.
pub fn guest_config(
    prog: &[String],
    seed: u64,
) -> std::result::Result<(Vec<u8>, Config), (i32, String)> {
    script_config(prog, seed, 0)
}

/// `guest_config` for a program that may be a `#!` script `depth` levels down.
fn script_config(
    prog: &[String],
    seed: u64,
    depth: u32,
) -> std::result::Result<(Vec<u8>, Config), (i32, String)> {
    let name = &prog[0];
    let Some(path) = find_program(name) else {
        return Err((127, format!("{name}: command not found")));
    };
    let bytes = std::fs::read(&path).map_err(|e| (126, format!("{}: {e}", path.display())))?;
    if let Some((interp, arg)) = shebang(&bytes) {
        // A script: as the kernel does, run its interpreter with the script's path.
        let mut argv = vec![interp.clone()];
        argv.extend(arg);
        argv.push(path.to_string_lossy().into_owned());
        argv.extend(prog[1..].iter().cloned());
        // Scripts may name scripts as their interpreter, up to 4 levels as in Linux.
        if interp.starts_with('/') && depth < 4 && Path::new(&interp).is_file() {
            return script_config(&argv, seed, depth + 1);
        }
        return Err((126, format!("{}: bad interpreter {interp}", path.display())));
    }
    let abs = std::fs::canonicalize(&path).unwrap_or(path.clone());
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    use std::os::unix::ffi::OsStrExt;
    let config = Config {
        args: prog.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: std::env::vars_os()
            .map(|(k, v)| {
                let mut e = k.as_bytes().to_vec();
                e.push(b'=');
                e.extend_from_slice(v.as_bytes());
                e
            })
            .collect(),
        exe: abs.to_string_lossy().into_owned(),
        cwd: cwd.to_string_lossy().into_owned(),
        seed,
        // SAFETY: isatty only inspects the descriptor.
        tty: unsafe { libc::isatty(1) } == 1,
    };
    Ok((bytes, config))
}

/// The interpreter and optional argument of a `#!` script.
fn shebang(bytes: &[u8]) -> Option<(String, Option<String>)> {
    let rest = bytes.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let (interp, arg) = match line.split_once([' ', '\t']) {
        Some((i, a)) => (i, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    Some((interp.to_string(), arg))
}

/// Parses a size such as `4096`, `512K`, `64M` or `2G`.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a size: {s:?} (use e.g. 512M or 2G)"))
}

fn run(
    stats: bool,
    max_insns: Option<u64>,
    seed: u64,
    snapshot_memory: u64,
    prog: &[String],
) -> i32 {
    let mut m = match load_or_report(prog, seed, StdHost::default()) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let start = Instant::now();
    if let Some((from, n)) = trace_window() {
        // Debugging aid: FX86_TRACE=FROM:N prints N instructions from icount FROM.
        let stop = m.run(from);
        if stop == StopReason::Limit {
            for _ in 0..n {
                let rip = m.cpu.rip;
                let mut bytes = [0u8; 16];
                let _ = m.mem.fetch(rip, &mut bytes);
                let mut d = iced_x86::Decoder::with_ip(64, &bytes, rip, 0);
                let ins = d.decode();
                eprintln!(
                    "[{}] {rip:#x} {ins} rax={:#x} rcx={:#x} rsi={:#x} rdi={:#x}",
                    m.icount, m.cpu.gpr[0], m.cpu.gpr[1], m.cpu.gpr[6], m.cpu.gpr[7]
                );
                if m.run(m.icount + 1) != StopReason::Limit {
                    break;
                }
            }
        }
    }
    let mut tl = Timeline::with_adaptive_interval(m, snapshot_memory);
    let stop = tl.run_forward(max_insns.unwrap_or(u64::MAX));
    let wall = start.elapsed().as_secs_f64();
    let icount = tl.icount();
    let code = report(&stop, icount);
    if stats {
        let mips = icount as f64 / wall.max(1e-9) / 1e6;
        let (snaps, bytes) = tl.snapshot_stats();
        let hash = tl.machine().state_hash();
        eprintln!(
            "fx86: icount={icount} wall={wall:.3} mips={mips:.1} state={} exit={code} snapshots={snaps} snapshot_bytes={bytes} translated={}",
            hash.to_hex(),
            tl.machine().translated_blocks()
        );
    }
    // (As in `run_native`: the process ends here.)
    std::mem::forget(tl);
    code
}

/// The KVM VM for `--backend kvm|auto`, or None for the interpreter. `Err` is the exit status
/// after a one-line explanation (kvm asked for and not usable).
pub fn open_backend(backend: Backend) -> std::result::Result<Option<NativeVm>, i32> {
    match backend {
        Backend::Interp => Ok(None),
        Backend::Kvm => NativeVm::new().map(Some).map_err(|e| {
            eprintln!("fx86: --backend kvm is not available: {e}");
            2
        }),
        Backend::Auto => match NativeVm::new() {
            Ok(vm) => {
                eprintln!("fx86: backend: kvm (/dev/kvm is usable)");
                Ok(Some(vm))
            }
            Err(e) => {
                eprintln!("fx86: backend: interp ({e})");
                Ok(None)
            }
        },
    }
}

/// `run` on the KVM backend: the guest runs natively between syscalls; its icount is learned
/// (by replaying in the interpreter) only if something needs it.
fn run_native(
    mut vm: NativeVm,
    stats: bool,
    max_insns: Option<u64>,
    seed: u64,
    prog: &[String],
) -> i32 {
    if max_insns.is_some() {
        eprintln!("fx86: --max-insns needs exact positions while running; use --backend interp");
        return 2;
    }
    let mut m = match load_or_report(prog, seed, StdHost::default()) {
        Ok(m) => m,
        Err(code) => return code,
    };

    let start = Instant::now();
    let stop = match vm.run(&mut m) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fx86: kvm backend failed: {e}");
            return 70;
        }
    };
    let wall = start.elapsed().as_secs_f64();
    // Saying where a crash happened needs the exact icount.
    if stats || !matches!(stop, StopReason::Exited(_)) {
        m.settle();
    }
    let settle = start.elapsed().as_secs_f64() - wall;
    let icount = m.icount;
    let code = report(&stop, icount);
    if stats {
        let mips = icount as f64 / wall.max(1e-9) / 1e6;
        let hash = m.state_hash();
        let s = vm.stats;
        eprintln!(
            "fx86: icount={icount} wall={wall:.3} mips={mips:.1} state={} exit={code} backend=kvm \
             settle={settle:.3} syscalls={} kicks={} exceptions={} host_flags={} interpreted={} interpreted_insns={} emulated={} bursts={} early_settles={} page_faults={} dirty_pages={} pattern_pages={} blocks={} guard_hits={} reclassified={} replays={} waits={}",
            hash.to_hex(),
            s.syscalls,
            s.kicks,
            s.exceptions,
            if vm.host_flags_match() { "model" } else { "differ" },
            s.interpreted,
            s.interpreted_insns,
            s.emulated,
            s.bursts,
            s.early_settles,
            s.page_faults,
            s.dirty_pages,
            s.pattern_pages,
            s.blocks,
            s.guard_hits,
            s.reclassified,
            m.native_replays,
            m.native_waits
        );
    }
    // The process ends here: the kernel frees the guest's state at once, faster than
    // dropping it page by page (and replays still running in the background are moot).
    std::mem::forget(m);
    code
}

fn trace_window() -> Option<(u64, u64)> {
    let v = std::env::var("FX86_TRACE").ok()?;
    let (a, b) = v.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Prints why the guest stopped (for signals and limits) and returns the exit status.
pub fn report(stop: &StopReason, icount: u64) -> i32 {
    match stop {
        StopReason::Exited(_) => {}
        StopReason::Signaled { msg, .. } => {
            eprintln!("fx86: guest terminated: {msg} (icount {icount})")
        }
        StopReason::Limit => eprintln!("fx86: stopped after {icount} instructions (--max-insns)"),
        StopReason::Breakpoint(_) | StopReason::Watch(_) => {}
    }
    stop.exit_status()
}

/// `load_guest`, printing the one-line error; `Err` carries the exit status.
fn load_or_report(prog: &[String], seed: u64, host: StdHost) -> std::result::Result<Machine, i32> {
    load_guest(prog, seed, host).map_err(|(code, msg)| {
        eprintln!("fx86: {msg}");
        code
    })
}

fn gdbserver(
    listen: &str,
    stdio: bool,
    vm: Option<NativeVm>,
    kick_ms: u64,
    prog: &[String],
) -> i32 {
    let host = StdHost {
        stdout_to_stderr: stdio,
        ..Default::default()
    };
    let m = match load_or_report(prog, 0, host) {
        Ok(m) => m,
        Err(code) => return code,
    };
    // The ELF file that runs (a script's interpreter, not the script).
    let exe = m.kernel.exe.clone();
    let mut tl = Timeline::with_adaptive_interval(m, 1 << 30);
    if let Some(vm) = vm {
        // (0 would leave stretches unbounded: Ctrl-C from gdb waits for the next exit.)
        tl.use_native(vm, std::time::Duration::from_millis(kick_ms.max(1)));
    }
    serve_gdb(tl, exe, None, listen, stdio)
}

/// Serves a timeline to one gdb session; `exe` is the program file gdb should read symbols
/// from.
pub fn serve_gdb(
    tl: Timeline,
    exe: String,
    program: Option<Vec<u8>>,
    listen: &str,
    stdio: bool,
) -> i32 {
    let mut target = fx86_gdbserver::Fx86Target::new(tl, exe);
    if let Some(p) = program {
        target = target.with_program(p);
    }
    if stdio {
        let result = fx86_gdbserver::serve(
            &mut target,
            Box::new(fx86_gdbserver::StdioConnection::new()),
        );
        for line in target.log.drain(..) {
            eprintln!("fx86 gdbserver: {line}");
        }
        return match result {
            Ok(reason) => {
                eprintln!("fx86 gdbserver: session ended ({reason:?})");
                0
            }
            Err(e) => {
                eprintln!("fx86 gdbserver: {e}");
                1
            }
        };
    }
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fx86 gdbserver: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    eprintln!("fx86 gdbserver: listening on {listen}; in gdb: target remote {listen}");
    let stream = match listener.accept() {
        Ok((s, peer)) => {
            eprintln!("fx86 gdbserver: gdb connected from {peer}");
            s
        }
        Err(e) => {
            eprintln!("fx86 gdbserver: accept failed: {e}");
            return 1;
        }
    };
    // One session at a time: later clients are told so and disconnected.
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let peer = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
            eprintln!("fx86 gdbserver: rejected a second client from {peer}: a session is already running");
            drop(c);
        }
    });
    let result = fx86_gdbserver::serve_tcp(&mut target, stream);
    for line in target.log.drain(..) {
        eprintln!("fx86 gdbserver: {line}");
    }
    match result {
        Ok(reason) => {
            eprintln!("fx86 gdbserver: session ended ({reason:?})");
            0
        }
        Err(e) => {
            eprintln!("fx86 gdbserver: {e}");
            1
        }
    }
}

fn tui(prog: &[String], vm: Option<NativeVm>, hint: Option<String>) -> i32 {
    // The terminal belongs to the UI: guest output is shown in its pane, stdin is empty.
    let host = StdHost {
        capture: Some(Vec::new()),
        stdin: Some(Default::default()),
        ..Default::default()
    };
    let m = match load_or_report(prog, 0, host) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let elf = std::fs::read(&m.kernel.exe).unwrap_or_default();
    let mut tl = Timeline::with_adaptive_interval(m, 1 << 30);
    if let Some(vm) = vm {
        let kick = fx86_engine::record::DEFAULT_KICK_MS;
        tl.use_native(vm, std::time::Duration::from_millis(kick));
    }
    tui_on(tl, prog.join(" "), &elf, hint)
}

pub fn tui_on(tl: Timeline, title: String, elf: &[u8], hint: Option<String>) -> i32 {
    match fx86_tui::run(tl, title, elf, hint) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("fx86 tui: {e}");
            1
        }
    }
}

fn bench_timeline(prog: &[String]) -> i32 {
    let quiet = || StdHost {
        capture: Some(Vec::new()),
        ..Default::default()
    };
    let load = |h| match load_guest(prog, 0, h) {
        Ok(m) => Some(m),
        Err((_, msg)) => {
            eprintln!("fx86: {msg}");
            None
        }
    };
    let Some(mut plain) = load(quiet()) else {
        return 127;
    };
    let t = Instant::now();
    plain.run(u64::MAX);
    let off = t.elapsed().as_secs_f64();
    let total = plain.icount;
    let Some(m) = load(quiet()) else { return 127 };
    let mut tl = Timeline::with_adaptive_interval(m, 4 << 30);
    let t = Instant::now();
    tl.run_forward(u64::MAX);
    let on = t.elapsed().as_secs_f64();
    let (snaps, bytes) = tl.snapshot_stats();
    println!(
        "history: {total} instructions; {snaps} snapshots holding {:.1} MiB",
        bytes as f64 / 1048576.0
    );
    println!(
        "forward: snapshots off {:.3} s ({:.1} MIPS), on {:.3} s ({:.1} MIPS), overhead {:+.1}%",
        off,
        total as f64 / off / 1e6,
        on,
        total as f64 / on / 1e6,
        (on / off - 1.0) * 100.0
    );
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        tl.step_back(1);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "reverse-step at the end: p50 {:.2} ms, p99 {:.2} ms",
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    tl.goto(tl.end());
    // A breakpoint that is never hit makes reverse-continue search the whole history.
    tl.set_breakpoints([1]);
    let t = Instant::now();
    let r = tl.reverse_continue();
    let rc = t.elapsed().as_secs_f64();
    println!(
        "reverse-continue over the whole history: {rc:.3} s ({:.2}x the forward run) -> {r:?}",
        rc / on
    );
    // The TUI at the end of the history: each key is a move, a view capture and a redraw.
    tl.goto(tl.end());
    tl.set_breakpoints([]);
    let elf = std::fs::read(&tl.machine().kernel.exe).unwrap_or_default();
    let keys: Vec<char> = "S"
        .repeat(100)
        .chars()
        .chain("s".repeat(100).chars())
        .collect();
    let times = fx86_tui::time_keys(tl, &elf, &keys);
    for k in ['S', 's'] {
        let mut t: Vec<f64> = times.iter().filter(|x| x.0 == k).map(|x| x.1).collect();
        t.sort_by(|a, b| a.total_cmp(b));
        if !t.is_empty() {
            println!(
                "tui key {k} (move + capture + draw 160x48): p50 {:.2} ms, p99 {:.2} ms",
                t[t.len() / 2],
                t[t.len() * 99 / 100]
            );
        }
    }
    0
}

fn demo() -> i32 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-guests");
    let bin = std::env::temp_dir().join("fx86-demo-overflow");
    let src = dir.join("overflow.c");
    let ok = std::process::Command::new("gcc")
        .args(["-static", "-O1", "-g", "-fno-stack-protector", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "fx86: could not build the demo guest {} with gcc",
            src.display()
        );
        return 1;
    }
    let prog = vec![bin.to_string_lossy().into_owned(), "7".into()];
    // SAFETY: isatty only inspects the descriptors.
    if unsafe { libc::isatty(0) == 1 && libc::isatty(1) == 1 } {
        // On a terminal the demo is the time-travel UI: press c to run into the crash, S to
        // step back to the bad call, C to reverse-continue.
        let hint = "demo: c runs into the crash; then w rdi+64 watches the corrupted \
                    t->report pointer and C goes back to the write that broke it (? for keys)";
        return tui(&prog, None, Some(hint.into()));
    }
    println!(
        "fx86 demo: running {} in the deterministic engine\n",
        src.display()
    );
    let mut m = match load_guest(&prog, 0, StdHost::default()) {
        Ok(m) => m,
        Err((c, msg)) => {
            eprintln!("fx86: {msg}");
            return c;
        }
    };
    let stop = m.run(u64::MAX);
    let icount = m.icount;
    let hash = m.state_hash();
    println!();
    match &stop {
        StopReason::Signaled { msg, .. } => println!("The guest crashed: {msg}"),
        other => println!("The guest ended: {other:?}"),
    }
    println!(
        "It ran exactly {icount} instructions; final state hash {}.",
        hash.to_hex()
    );
    let mut again = match load_guest(
        &prog,
        0,
        StdHost {
            capture: Some(Vec::new()),
            ..Default::default()
        },
    ) {
        Ok(m) => m,
        Err((c, _)) => return c,
    };
    let stop2 = again.run(u64::MAX);
    let same = stop2 == stop && again.icount == icount && again.state_hash() == hash;
    println!(
        "A second run reproduces it bit for bit: {}",
        if same { "yes" } else { "NO" }
    );
    println!();
    println!("Find the bug backwards in time with gdb:");
    println!("  fx86 gdbserver -- {} 7 &", bin.display());
    println!("  gdb -ex 'target remote 127.0.0.1:1234' -ex continue -ex up \\");
    println!(
        "      -ex 'watch -l t->report' -ex reverse-continue {}",
        bin.display()
    );
    println!("(On a terminal, `fx86 demo` opens the time-travel UI instead: c runs into the crash, S steps back.)");
    0
}

fn main() -> Result<()> {
    // malloc grows its heaps in steps of 64 MiB of address space instead of a few pages.
    // Each change to the process's mappings interrupts every core that runs one of its
    // threads, and under `--backend kvm` on a shadow-paging host (PVM) that takes the VM out
    // of guest mode: the replaying threads would otherwise grow their heaps a page at a time
    // while the VM runs. Address space that is never touched costs no memory.
    // SAFETY: sets a parameter of malloc before any thread exists.
    unsafe { libc::mallopt(libc::M_TOP_PAD, 64 << 20) };
    let cli = Cli::parse();
    if cli.no_jit {
        fx86_engine::set_jit(false);
    }
    if cli.check_jit {
        fx86_engine::set_jit_checking(true);
    }
    let code = match cli.cmd {
        Cmd::Run {
            stats,
            max_insns,
            seed,
            snapshot_memory,
            backend,
            cross_check,
            assume_host_flags_differ,
            no_bursts,
            kick_ms,
            prog,
        } => match open_backend(backend) {
            Ok(None) => run(stats, max_insns, seed, snapshot_memory, &prog),
            Ok(Some(mut vm)) => {
                vm.cross_check = cross_check;
                if assume_host_flags_differ {
                    vm.assume_host_flags_differ();
                }
                vm.bursts &= !no_bursts;
                if kick_ms > 0 {
                    vm.kick_every(std::time::Duration::from_millis(kick_ms));
                }
                run_native(vm, stats, max_insns, seed, &prog)
            }
            Err(code) => code,
        },
        Cmd::Lockstep {
            max_insns,
            progress,
            prog,
        } => lockstep::main(&prog, max_insns, progress),
        Cmd::Demo => demo(),
        Cmd::Tui { backend, prog } => match open_backend(backend) {
            Ok(vm) => tui(&prog, vm, None),
            Err(code) => code,
        },
        Cmd::Gdbserver {
            listen,
            stdio,
            backend,
            kick_ms,
            prog,
        } => match open_backend(backend) {
            Ok(vm) => gdbserver(&listen, stdio, vm, kick_ms, &prog),
            Err(code) => code,
        },
        Cmd::BenchTimeline { prog } => bench_timeline(&prog),
        Cmd::Record {
            output,
            checkpoint_interval,
            seed,
            inject_failure_at,
            backend,
            kick_ms,
            prog,
        } => match open_backend(backend) {
            Ok(mut vm) => {
                if let Some(vm) = vm.as_mut().filter(|_| kick_ms > 0) {
                    vm.kick_every(std::time::Duration::from_millis(kick_ms));
                }
                recordings::record(
                    &output,
                    checkpoint_interval,
                    seed,
                    inject_failure_at,
                    vm,
                    &prog,
                )
            }
            Err(code) => code,
        },
        Cmd::Replay { file, gdb, tui } => recordings::replay(&file, gdb.as_deref(), tui),
        Cmd::Verify { file } => recordings::verify(&file),
        Cmd::Info { file } => recordings::info(&file),
    };
    std::process::exit(code);
}
