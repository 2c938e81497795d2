//! `fx86 record`, `replay`, `verify` and `info`: bug-reproduction recordings on the command
//! line. The engine's `record` module does the work; this wires it to files, signals and the
//! terminal.

use fx86_engine::host::{Host, StdHost};
use fx86_engine::kvm::NativeVm;
use fx86_engine::record::{self, Ending, RecordingHost};
use fx86_engine::{Machine, StopReason, Timeline};
use fx86_snapshots::recording::{Answer, Recording};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // A second Ctrl-C kills fx86 the usual way.
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Ctrl-C (and SIGTERM/SIGHUP) raise INTERRUPTED instead of killing fx86, and interrupt a
/// blocking read of stdin (no SA_RESTART) so the run can end where it is.
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a plain sigaction with a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_interrupt as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn hex(h: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*h).to_hex().to_string()
}

/// `fx86 record -o FILE -- PROG ARGS`: runs like `fx86 run` and writes the recording.
/// With `vm`, the guest runs natively on the KVM backend (see `record::record_native`).
pub fn record(
    out: &Path,
    interval: u64,
    seed: u64,
    fail_at: Option<u64>,
    vm: Option<NativeVm>,
    prog: &[String],
) -> i32 {
    // Find out now, not after a long run, that the recording cannot be written.
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Err(e) = tempfile_in(&dir) {
        eprintln!("fx86 record: cannot write {}: {e}", out.display());
        return 1;
    }
    let (bytes, config) = match crate::guest_config(prog, seed) {
        Ok(v) => v,
        Err((code, msg)) => {
            eprintln!("fx86: {msg}");
            return code;
        }
    };
    let mut started = record::start_recording(&bytes, &config);
    if vm.is_some() {
        started.manifest.recorder.push_str(" --backend kvm");
    }
    let rec = Arc::new(Mutex::new(started));
    let real: Box<dyn Host> = match fail_at {
        None => Box::new(StdHost::default()),
        Some(at) => Box::new(FailingHost {
            inner: StdHost::default(),
            at,
        }),
    };
    let host = RecordingHost::new(real, rec.clone());
    let mut m = match Machine::new(&bytes, config, Box::new(host)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("fx86: {}: {e}", prog[0]);
            return 126;
        }
    };
    catch_interrupts();
    // Should the engine itself fail, what was recorded so far is still written (ending at the
    // last checkpoint), never lost.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match vm {
        None => Ok(record::record(&mut m, &rec, interval, &INTERRUPTED)),
        Some(mut vm) => record::record_native(&mut vm, &mut m, &rec, interval, &INTERRUPTED)
            .map_err(|e| format!("kvm backend: {e}")),
    }))
    .unwrap_or_else(|p| {
        Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "internal error".into()))
    });
    let mut failed = None;
    let code = match run {
        Ok(Ending::Stopped(stop)) => crate::report(&stop, m.icount),
        Ok(Ending::Interrupted) => {
            eprintln!("fx86 record: interrupted at icount {}", m.icount);
            130
        }
        Err(why) => {
            eprintln!("fx86 record: fx86 failed at icount {}: {why}", m.icount);
            failed = Some(why);
            70
        }
    };
    drop(m);
    let mut rec = std::mem::take(&mut *rec.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(why) = failed {
        record::end_at_last_checkpoint(&mut rec, &why);
        eprintln!(
            "fx86 record: the recording ends at the last checkpoint, icount {}",
            rec.end.icount
        );
    }
    match rec.write_atomically(out) {
        Ok(size) => {
            eprintln!(
                "fx86 record: wrote {} ({} instructions, {} files, {} bytes)",
                out.display(),
                rec.end.icount,
                files(&rec),
                size
            );
            code
        }
        Err(e) => {
            eprintln!("fx86 record: cannot write {}: {e}", out.display());
            // The guest's own status would hide that the recording is lost.
            if code == 0 {
                1
            } else {
                code
            }
        }
    }
}

/// The real host, failing on purpose at a syscall at or after icount `at` (a testing aid for
/// the recording's failure path).
struct FailingHost {
    inner: StdHost,
    at: u64,
}

impl Host for FailingHost {
    fn read_stdin(&mut self, max: usize) -> Vec<u8> {
        self.inner.read_stdin(max)
    }
    fn write_output(&mut self, fd: i32, data: &[u8]) {
        self.inner.write_output(fd, data)
    }
    fn diagnostic(&mut self, msg: &str) {
        self.inner.diagnostic(msg)
    }
    fn lstat(&mut self, path: &str) -> Option<fx86_engine::host::HostStat> {
        self.inner.lstat(path)
    }
    fn read_file(&mut self, path: &str) -> Option<Arc<Vec<u8>>> {
        self.inner.read_file(path)
    }
    fn read_link(&mut self, path: &str) -> Option<Vec<u8>> {
        self.inner.read_link(path)
    }
    fn list_dir(&mut self, path: &str) -> Option<Vec<(String, fx86_snapshots::FileKind)>> {
        self.inner.list_dir(path)
    }
    fn needs_icount(&self) -> bool {
        true
    }

    fn at_icount(&mut self, icount: u64) {
        if icount >= self.at {
            panic!("injected failure at icount {icount} (--inject-failure-at)");
        }
    }
}

/// Creates and removes a file in `dir`, to see that a recording can be written there.
fn tempfile_in(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(format!(".fx86-record-probe-{}", std::process::id()));
    std::fs::File::create(&p)?;
    std::fs::remove_file(&p)
}

/// Number of distinct files the guest read.
fn files(rec: &Recording) -> usize {
    let mut set = std::collections::BTreeSet::new();
    for a in rec.answers.values() {
        if let Answer::File(Some(h)) = a {
            set.insert(*h);
        }
    }
    set.len()
}

/// Reads a recording, or prints the one-line reason it is unusable.
fn open(file: &Path) -> Result<Arc<Recording>, i32> {
    match Recording::read(file) {
        Ok(r) => Ok(Arc::new(r)),
        Err(e) => {
            eprintln!("fx86: {}: {e}", file.display());
            Err(2)
        }
    }
}

fn playback(rec: &Arc<Recording>, out: StdHost) -> Result<(Machine, record::Missing), i32> {
    record::playback_machine(rec.clone(), Box::new(out)).map_err(|e| {
        eprintln!("fx86: the recorded program does not load: {e}");
        126
    })
}

/// Writes the recorded program to a file gdb can read symbols from.
fn extract_program(rec: &Recording) -> Option<PathBuf> {
    let name = Path::new(&rec.manifest.exe)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    let dir =
        std::env::temp_dir().join(format!("fx86-replay-{}", &hex(&rec.manifest.program)[..16]));
    let path = dir.join(name);
    let bytes = rec.blobs.get(&rec.manifest.program)?;
    if std::fs::read(&path).ok().as_ref() != Some(bytes) {
        std::fs::create_dir_all(&dir).ok()?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).ok()?;
        std::fs::rename(&tmp, &path).ok()?;
    }
    Some(path)
}

fn warn_missing(missing: &Mutex<Vec<String>>) {
    let m = missing.lock().unwrap_or_else(|e| e.into_inner());
    if !m.is_empty() {
        eprintln!(
            "fx86 replay: the replay asked for {} thing(s) the recording does not have (it went somewhere the recording did not), first: {}",
            m.len(),
            m[0]
        );
    }
}

/// `fx86 replay FILE [--gdb ADDR:PORT | --tui]`.
pub fn replay(file: &Path, gdb: Option<&str>, tui: bool) -> i32 {
    let rec = match open(file) {
        Ok(r) => r,
        Err(c) => return c,
    };
    if let Some(addr) = gdb {
        let (m, _) = match playback(&rec, StdHost::default()) {
            Ok(v) => v,
            Err(c) => return c,
        };
        let exe = match extract_program(&rec) {
            Some(p) => p.to_string_lossy().into_owned(),
            None => {
                eprintln!("fx86 replay: could not write the program out for gdb's symbols");
                rec.manifest.exe.clone()
            }
        };
        eprintln!(
            "fx86 replay: {} recorded instructions; the program is at {exe}",
            rec.end.icount
        );
        let program = rec.blobs.get(&rec.manifest.program).cloned();
        return crate::serve_gdb(
            Timeline::with_adaptive_interval(m, 1 << 30),
            exe,
            program,
            addr,
            false,
        );
    }
    if tui {
        let out = StdHost {
            capture: Some(Vec::new()),
            ..Default::default()
        };
        let (m, _) = match playback(&rec, out) {
            Ok(v) => v,
            Err(c) => return c,
        };
        let elf = rec
            .blobs
            .get(&rec.manifest.program)
            .cloned()
            .unwrap_or_default();
        let title = format!("{} (replay of {})", args(&rec), file.display());
        let hint = format!(
            "replaying {}: {} instructions, {} (? for keys)",
            file.display(),
            rec.end.icount,
            rec.end.reason
        );
        return crate::tui_on(
            Timeline::with_adaptive_interval(m, 1 << 30),
            title,
            &elf,
            Some(hint),
        );
    }
    let (mut m, missing) = match playback(&rec, StdHost::default()) {
        Ok(v) => v,
        Err(c) => return c,
    };
    catch_interrupts();
    // A run cut short when recorded stops at the same place; one that ended by itself must
    // end by itself at the recorded icount (one more instruction is allowed to show that).
    let interrupted = record::was_interrupted(&rec);
    let limit = if interrupted {
        rec.end.icount
    } else {
        rec.end.icount.saturating_add(1)
    };
    // The checkpoints are checked on the way: a replay never silently goes somewhere else.
    let mut checkpoints = rec.checkpoints.iter().peekable();
    let stop = loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            eprintln!("fx86 replay: interrupted at icount {}", m.icount);
            return 130;
        }
        while checkpoints.peek().is_some_and(|c| c.0 < m.icount) {
            checkpoints.next();
        }
        if let Some(&&(at, want)) = checkpoints.peek() {
            if at == m.icount {
                checkpoints.next();
                if *m.state_hash().as_bytes() != want {
                    eprintln!(
                        "fx86 replay: diverged from the recording at icount {at} (the state hash differs); stopping"
                    );
                    warn_missing(&missing);
                    return 1;
                }
            }
        }
        let next = checkpoints.peek().map_or(limit, |c| c.0.min(limit));
        match m.run(next.min(m.icount.saturating_add(1 << 24))) {
            StopReason::Limit if m.icount < limit => {}
            s => break s,
        }
    };
    warn_missing(&missing);
    if m.icount == rec.end.icount && *m.state_hash().as_bytes() != rec.end.hash {
        if !matches!(stop, StopReason::Limit) {
            crate::report(&stop, m.icount);
        }
        eprintln!(
            "fx86 replay: diverged from the recording at icount {}: the final state differs",
            m.icount
        );
        return 1;
    }
    match stop {
        StopReason::Limit if interrupted => {
            eprintln!(
                "fx86 replay: the recording ends at icount {} ({})",
                rec.end.icount, rec.end.reason
            );
            rec.end.status
        }
        StopReason::Limit => {
            eprintln!(
                "fx86 replay: diverged: the recording ended at icount {} ({}) but the replay goes on",
                rec.end.icount, rec.end.reason
            );
            1
        }
        stop => {
            let code = crate::report(&stop, m.icount);
            if code != rec.end.status || m.icount != rec.end.icount {
                eprintln!(
                    "fx86 replay: diverged: ended at icount {} with status {code}; the recording ended at icount {} with status {} ({})",
                    m.icount, rec.end.icount, rec.end.status, rec.end.reason
                );
            }
            code
        }
    }
}

fn args(rec: &Recording) -> String {
    rec.manifest
        .args
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `fx86 verify FILE`.
pub fn verify(file: &Path) -> i32 {
    let rec = match open(file) {
        Ok(r) => r,
        Err(c) => return c,
    };
    catch_interrupts();
    let start = std::time::Instant::now();
    match record::verify(rec.clone(), &INTERRUPTED) {
        Ok(v) => {
            println!(
                "fx86 verify: {}: ok: {} checkpoints and the end match (icount {}, status {}, state {}) in {:.2} s",
                file.display(),
                v.checkpoints,
                v.icount,
                v.status,
                hex(&rec.end.hash),
                start.elapsed().as_secs_f64()
            );
            0
        }
        Err(d) => {
            let agreed = d
                .agreed
                .map(|a| format!("; the states agreed at icount {a}"))
                .unwrap_or_default();
            println!(
                "fx86 verify: {}: DIVERGES at icount {}: {}{agreed}",
                file.display(),
                d.icount,
                d.what
            );
            1
        }
    }
}

/// `fx86 info FILE`.
pub fn info(file: &Path) -> i32 {
    let rec = match open(file) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let m = &rec.manifest;
    let program = rec.blobs.get(&m.program).map(|b| b.len()).unwrap_or(0);
    let stdin: usize = rec.stdin.iter().map(|(_, d)| d.len()).sum();
    let file_bytes: usize = rec.blobs.values().map(|b| b.len()).sum::<usize>() - program;
    println!("recording    {}", file.display());
    println!("size         {size} bytes");
    println!("program      {} ({program} bytes)", m.exe);
    println!("args         {}", args(&rec));
    println!("cwd          {}", m.cwd);
    println!("env          {} variables", m.env.len());
    println!("seed         {}", m.seed);
    println!("recorded by  {}", m.recorder);
    println!("icount       {} (total instructions)", rec.end.icount);
    println!("exit status  {} ({})", rec.end.status, rec.end.reason);
    println!("files        {} ({file_bytes} bytes)", files(&rec));
    println!("host answers {}", rec.answers.len());
    println!("stdin        {stdin} bytes in {} reads", rec.stdin.len());
    println!(
        "checkpoints  {} every {} instructions (checkpoint interval)",
        rec.checkpoints.len(),
        rec.checkpoint_interval
    );
    println!("snapshots    0 (replays re-execute from the start)");
    println!("final state  {}", hex(&rec.end.hash));
    0
}
