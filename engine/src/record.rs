//! Recording a run and playing it back (DESIGN.md §6).
//!
//! A run takes from outside the guest only what its `Host` gives it: stdin bytes and the
//! host file system's answers (lstat, file contents, symlink targets, directory listings).
//! [`RecordingHost`] passes those through to the real host and writes each down;
//! [`PlaybackHost`] gives the written-down answers back, so the replay sees exactly what the
//! recording saw, on any machine. While recording, the first answer to a question is the
//! answer for the rest of the run (a frozen view of the host), so re-executions inside the
//! recording process and the replay agree even if the host file system changes meanwhile.
//!
//! [`record`] drives a machine to its end (or until told to stop), taking state-hash
//! checkpoints every K instructions; [`verify`] replays a recording and compares them.

use crate::host::{GuestEvent, Host, HostStat};
use crate::machine::{Config, Machine, StopReason};
use fx86_snapshots::recording::{Answer, End, Manifest, Query, Recording};
use fx86_snapshots::FileKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Default instructions between state-hash checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 10_000_000;
/// How often `run` and `record` on the KVM backend cut native stretches by default (see
/// `NativeVm::kick_every`).
pub const DEFAULT_KICK_MS: u64 = 20;
/// Longest stretch run between checks of the stop flag.
const SLICE: u64 = 1_000_000;

fn lock(r: &Mutex<Recording>) -> std::sync::MutexGuard<'_, Recording> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wraps the real host and writes down everything the guest takes from it.
pub struct RecordingHost {
    inner: Box<dyn Host>,
    rec: Arc<Mutex<Recording>>,
    icount: u64,
}

impl RecordingHost {
    /// Records into `rec` (which already holds the manifest and the program blob).
    pub fn new(inner: Box<dyn Host>, rec: Arc<Mutex<Recording>>) -> RecordingHost {
        RecordingHost {
            inner,
            rec,
            icount: 0,
        }
    }

    /// The answer already given to this question, or `ask` the real host and write it down.
    fn answer(
        &mut self,
        q: Query,
        path: &str,
        ask: impl FnOnce(&mut dyn Host, &mut Recording) -> Answer,
    ) -> (Answer, Arc<Mutex<Recording>>) {
        let rec = self.rec.clone();
        let mut r = lock(&rec);
        let key = (q, path.to_string());
        let a = match r.answers.get(&key) {
            Some(a) => a.clone(),
            None => {
                let a = ask(self.inner.as_mut(), &mut r);
                r.answers.insert(key, a.clone());
                a
            }
        };
        drop(r);
        (a, rec)
    }
}

impl Host for RecordingHost {
    fn read_stdin(&mut self, max: usize) -> Vec<u8> {
        let v = self.inner.read_stdin(max);
        if !v.is_empty() {
            lock(&self.rec).stdin.push((self.icount, v.clone()));
        }
        v
    }
    fn write_output(&mut self, fd: i32, data: &[u8]) {
        self.inner.write_output(fd, data);
    }
    fn diagnostic(&mut self, msg: &str) {
        self.inner.diagnostic(msg);
    }
    fn lstat(&mut self, path: &str) -> Option<HostStat> {
        let (a, _) = self.answer(Query::Lstat, path, |h, _| {
            Answer::Lstat(
                h.lstat(path)
                    .map(|s| (s.kind, s.mode, s.size, s.mtime.0, s.mtime.1)),
            )
        });
        match a {
            Answer::Lstat(s) => s.map(|(kind, mode, size, sec, nsec)| HostStat {
                kind,
                mode,
                size,
                mtime: (sec, nsec),
            }),
            _ => None,
        }
    }
    fn read_file(&mut self, path: &str) -> Option<Arc<Vec<u8>>> {
        let (a, rec) = self.answer(Query::File, path, |h, r| {
            Answer::File(h.read_file(path).map(|d| r.add_blob(d.to_vec())))
        });
        match a {
            Answer::File(Some(h)) => lock(&rec).blobs.get(&h).cloned().map(Arc::new),
            _ => None,
        }
    }
    fn read_link(&mut self, path: &str) -> Option<Vec<u8>> {
        match self
            .answer(Query::Link, path, |h, _| Answer::Link(h.read_link(path)))
            .0
        {
            Answer::Link(l) => l,
            _ => None,
        }
    }
    fn list_dir(&mut self, path: &str) -> Option<Vec<(String, FileKind)>> {
        match self
            .answer(Query::Dir, path, |h, _| Answer::Dir(h.list_dir(path)))
            .0
        {
            Answer::Dir(d) => d,
            _ => None,
        }
    }
    // Only stdin is keyed by icount, and reads from it settle first (see `fd_read`): other
    // syscalls on the KVM backend do not wait for the exact icount.
    fn at_icount(&mut self, icount: u64) {
        self.icount = icount;
        self.inner.at_icount(icount);
    }
    fn event(&mut self, ev: GuestEvent) {
        self.inner.event(ev);
    }
}

/// Questions a replay asked that its recording has no answer for.
pub type Missing = Arc<Mutex<Vec<String>>>;

/// Gives a recording's answers back; output goes to `out` (the real terminal or a capture).
pub struct PlaybackHost {
    out: Box<dyn Host>,
    rec: Arc<Recording>,
    /// Index of the next stdin chunk.
    next_stdin: usize,
    icount: u64,
    /// Questions the recording has no answer for (a replay that went somewhere else).
    pub missing: Missing,
}

impl PlaybackHost {
    pub fn new(out: Box<dyn Host>, rec: Arc<Recording>) -> PlaybackHost {
        PlaybackHost {
            out,
            rec,
            next_stdin: 0,
            icount: 0,
            missing: Default::default(),
        }
    }

    fn answer(&mut self, q: Query, path: &str) -> Option<&Answer> {
        let a = self.rec.answers.get(&(q, path.to_string()));
        if a.is_none() {
            let mut m = self.missing.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() < 100 {
                m.push(format!("{q:?} {path}"));
            }
        }
        a
    }
}

impl Host for PlaybackHost {
    fn read_stdin(&mut self, max: usize) -> Vec<u8> {
        // Chunks belong to the read at their icount; one that was skipped is dropped.
        while let Some((at, data)) = self.rec.stdin.get(self.next_stdin) {
            if *at > self.icount {
                break;
            }
            self.next_stdin += 1;
            if *at == self.icount {
                let mut v = data.clone();
                v.truncate(max);
                return v;
            }
        }
        Vec::new()
    }
    fn write_output(&mut self, fd: i32, data: &[u8]) {
        self.out.write_output(fd, data);
    }
    fn diagnostic(&mut self, msg: &str) {
        self.out.diagnostic(msg);
    }
    fn lstat(&mut self, path: &str) -> Option<HostStat> {
        match self.answer(Query::Lstat, path)? {
            Answer::Lstat(Some((kind, mode, size, sec, nsec))) => Some(HostStat {
                kind: *kind,
                mode: *mode,
                size: *size,
                mtime: (*sec, *nsec),
            }),
            _ => None,
        }
    }
    fn read_file(&mut self, path: &str) -> Option<Arc<Vec<u8>>> {
        match self.answer(Query::File, path)? {
            Answer::File(Some(h)) => {
                let h = *h;
                self.rec.blobs.get(&h).cloned().map(Arc::new)
            }
            _ => None,
        }
    }
    fn read_link(&mut self, path: &str) -> Option<Vec<u8>> {
        match self.answer(Query::Link, path)? {
            Answer::Link(l) => l.clone(),
            _ => None,
        }
    }
    fn list_dir(&mut self, path: &str) -> Option<Vec<(String, FileKind)>> {
        match self.answer(Query::Dir, path)? {
            Answer::Dir(d) => d.clone(),
            _ => None,
        }
    }
    fn needs_icount(&self) -> bool {
        true
    }

    fn at_icount(&mut self, icount: u64) {
        self.icount = icount;
        self.out.at_icount(icount);
    }
    fn event(&mut self, ev: GuestEvent) {
        self.out.event(ev);
    }
}

/// What a recording needs to know about the program before it starts.
pub fn start_recording(program: &[u8], config: &Config) -> Recording {
    let mut rec = Recording::default();
    let hash = rec.add_blob(program.to_vec());
    rec.manifest = Manifest {
        exe: config.exe.clone(),
        args: config.args.clone(),
        env: config.env.clone(),
        cwd: config.cwd.clone(),
        seed: config.seed,
        tty: config.tty,
        program: hash,
        recorder: format!("fx86 {}", env!("CARGO_PKG_VERSION")),
    };
    rec
}

/// The guest configuration a recording was made with.
pub fn config_of(rec: &Recording) -> Config {
    let m = &rec.manifest;
    Config {
        args: m.args.clone(),
        env: m.env.clone(),
        exe: m.exe.clone(),
        cwd: m.cwd.clone(),
        seed: m.seed,
        tty: m.tty,
    }
}

/// A machine that replays `rec`, its output going to `out`.
pub fn playback_machine(
    rec: Arc<Recording>,
    out: Box<dyn Host>,
) -> Result<(Machine, Missing), crate::elf::LoadError> {
    let program = rec
        .blobs
        .get(&rec.manifest.program)
        .cloned()
        .unwrap_or_default();
    let host = PlaybackHost::new(out, rec.clone());
    let missing = host.missing.clone();
    let m = Machine::new(&program, config_of(&rec), Box::new(host))?;
    Ok((m, missing))
}

/// The end reason of a recording cut short by Ctrl-C (or SIGTERM/SIGHUP).
pub const INTERRUPTED: &str = "interrupted (Ctrl-C)";

/// Whether the recorded run was cut short rather than ending by itself (Ctrl-C, or a failure
/// of fx86): a replay stops at its last icount.
pub fn was_interrupted(rec: &Recording) -> bool {
    rec.end.reason.starts_with("interrupted")
}

/// How a recorded run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Stopped(StopReason),
    /// The stop flag was raised (Ctrl-C) at the recording's last icount.
    Interrupted,
}

/// Runs `m` (whose host is a [`RecordingHost`] writing into `rec`) until it ends or `stop`
/// is raised, with a state-hash checkpoint at icount 0 and every `interval` instructions,
/// and fills in the recording's checkpoints and end.
pub fn record(m: &mut Machine, rec: &Mutex<Recording>, interval: u64, stop: &AtomicBool) -> Ending {
    let interval = interval.max(1);
    // Checkpoints go into the recording as they are taken, so that a recording cut short by
    // an fx86 failure can still end at the last one (see `end_at_last_checkpoint`).
    let first = (m.icount, *m.state_hash().as_bytes());
    {
        let mut r = lock(rec);
        r.checkpoint_interval = interval;
        r.checkpoints = vec![first];
    }
    let mut next = m.icount + interval;
    let ending = loop {
        if stop.load(Ordering::Relaxed) {
            break Ending::Interrupted;
        }
        let limit = next.min(m.icount.saturating_add(SLICE));
        match m.run(limit) {
            StopReason::Limit => {
                if m.icount == next {
                    let h = *m.state_hash().as_bytes();
                    lock(rec).checkpoints.push((next, h));
                    next += interval;
                }
            }
            other => break Ending::Stopped(other),
        }
    };
    finish(m, rec, &ending);
    ending
}

/// `record` on the KVM backend: the guest runs natively (kicked out as `vm` was told, see
/// `NativeVm::kick_every`); checkpoints are taken as native stretches are settled, at the
/// start of the first stretch at or after each `interval` instructions (exact positions,
/// though not multiples of `interval`). A stop (Ctrl-C) is noticed at the next VM exit, or
/// interrupts the VM, in which case the recording ends where the interrupted stretch began.
/// `Err` if the VM failed; the checkpoints taken so far are in the recording.
pub fn record_native(
    vm: &mut crate::kvm::NativeVm,
    m: &mut Machine,
    rec: &Mutex<Recording>,
    interval: u64,
    stop: &'static AtomicBool,
) -> Result<Ending, String> {
    let interval = interval.max(1);
    let first = (m.icount, *m.state_hash().as_bytes());
    {
        let mut r = lock(rec);
        r.checkpoint_interval = interval;
        r.checkpoints = vec![first];
    }
    let log = Arc::new(Mutex::new(crate::kvm::CheckpointLog {
        interval,
        next: m.icount + interval,
        taken: Vec::new(),
    }));
    m.log_checkpoints(log.clone());
    vm.stop = Some(stop);
    // Checkpoints also inside long computations without system calls.
    let run = vm.run(m);
    if run.is_ok() {
        // Waits for the settling thread, which has then taken all its checkpoints.
        m.settle();
    }
    let taken = std::mem::take(&mut log.lock().unwrap_or_else(|e| e.into_inner()).taken);
    lock(rec).checkpoints.extend(taken);
    let ending = match run? {
        StopReason::Limit => Ending::Interrupted,
        other => Ending::Stopped(other),
    };
    finish(m, rec, &ending);
    Ok(ending)
}

/// Writes the end of the recording: how the run ended, its icount and state hash.
fn finish(m: &mut Machine, rec: &Mutex<Recording>, ending: &Ending) {
    let (status, reason) = match ending {
        Ending::Stopped(s @ StopReason::Exited(c)) => {
            (s.exit_status(), format!("exited with status {c}"))
        }
        Ending::Stopped(s @ StopReason::Signaled { msg, .. }) => (s.exit_status(), msg.clone()),
        Ending::Stopped(s) => (s.exit_status(), format!("{s:?}")),
        Ending::Interrupted => (130, INTERRUPTED.to_string()),
    };
    let hash = *m.state_hash().as_bytes();
    let mut r = lock(rec);
    r.end = End {
        icount: m.icount,
        status,
        reason,
        hash,
    };
}

/// Ends a recording whose run could not be finished (an internal failure of fx86) at its
/// last checkpoint, as if interrupted there: everything up to that point replays exactly.
pub fn end_at_last_checkpoint(rec: &mut Recording, why: &str) {
    let (icount, hash) = rec.checkpoints.last().copied().unwrap_or((0, [0; 32]));
    rec.end = End {
        icount,
        status: 130,
        reason: format!("interrupted (fx86 failed: {why})"),
        hash,
    };
}

/// Where a replay went somewhere the recording did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The first icount at which the states are known to differ.
    pub icount: u64,
    /// The last icount at which they were known to agree.
    pub agreed: Option<u64>,
    pub what: String,
}

/// What a successful verification checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub checkpoints: usize,
    pub icount: u64,
    pub status: i32,
}

fn hex(h: &[u8; 32]) -> String {
    blake3::Hash::from_bytes(*h).to_hex().to_string()
}

/// Runs `m` towards `at` in slices, checking `stop`; returns the reason if the guest ended.
fn run_to(m: &mut Machine, at: u64, stop: &AtomicBool) -> Result<Option<StopReason>, Divergence> {
    while m.icount < at {
        if stop.load(Ordering::Relaxed) {
            return Err(Divergence {
                icount: m.icount,
                agreed: None,
                what: "interrupted before the end".into(),
            });
        }
        match m.run(at.min(m.icount.saturating_add(SLICE))) {
            StopReason::Limit => {}
            other => return Ok(Some(other)),
        }
    }
    Ok(None)
}

/// Replays `rec` (output discarded) and checks every checkpoint and the end.
pub fn verify(rec: Arc<Recording>, stop: &AtomicBool) -> Result<Verified, Divergence> {
    let quiet = crate::host::StdHost {
        capture: Some(Vec::new()),
        ..Default::default()
    };
    let (mut m, _missing) =
        playback_machine(rec.clone(), Box::new(quiet)).map_err(|e| Divergence {
            icount: 0,
            agreed: None,
            what: format!("the recorded program does not load: {e}"),
        })?;
    let mut agreed = None;
    let mut stop_reason = None;
    for (at, want) in &rec.checkpoints {
        stop_reason = run_to(&mut m, *at, stop)?;
        if m.icount != *at {
            return Err(Divergence {
                icount: m.icount,
                agreed,
                what: format!(
                    "the replay ended at icount {} ({:?}) before the checkpoint at icount {at}",
                    m.icount, stop_reason
                ),
            });
        }
        let got = *m.state_hash().as_bytes();
        if got != *want {
            return Err(Divergence {
                icount: *at,
                agreed,
                what: format!(
                    "state hash at icount {at} is {} but the recording has {}",
                    hex(&got),
                    hex(want)
                ),
            });
        }
        agreed = Some(*at);
    }
    // The end: a run cut short stops at its last icount; one that exited or crashed must do
    // so by itself at the same icount (one more instruction is allowed to show it).
    let end = rec.end.icount;
    let status = if was_interrupted(&rec) {
        if let Some(s) = run_to(&mut m, end, stop)? {
            stop_reason = Some(s);
        }
        match &stop_reason {
            None => rec.end.status,
            Some(s) => s.exit_status(),
        }
    } else {
        if stop_reason.is_none() {
            stop_reason = run_to(&mut m, end.saturating_add(1), stop)?;
        }
        match &stop_reason {
            Some(s) => s.exit_status(),
            None => {
                return Err(Divergence {
                    icount: end,
                    agreed,
                    what: format!(
                        "the recording ended at icount {end} ({}) but the replay goes on",
                        rec.end.reason
                    ),
                })
            }
        }
    };
    if m.icount != end || status != rec.end.status {
        return Err(Divergence {
            icount: m.icount.min(end),
            agreed,
            what: format!(
                "the replay ended at icount {} with status {status} but the recording ended at icount {end} with status {} ({})",
                m.icount, rec.end.status, rec.end.reason
            ),
        });
    }
    let got = *m.state_hash().as_bytes();
    if got != rec.end.hash {
        return Err(Divergence {
            icount: end,
            agreed,
            what: format!(
                "the final state hash is {} but the recording has {}",
                hex(&got),
                hex(&rec.end.hash)
            ),
        });
    }
    Ok(Verified {
        checkpoints: rec.checkpoints.len(),
        icount: m.icount,
        status,
    })
}
