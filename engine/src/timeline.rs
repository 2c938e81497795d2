//! The timeline: one run of a guest as a history that can be travelled in both directions.
//!
//! The timeline owns the machine and snapshots keyed by icount. `goto(n)` restores the nearest
//! snapshot at or before `n` and runs forward exactly to `n`; running past the end of the
//! history extends it. `reverse_continue` replays the interval that ends at the present and
//! remembers the *last* breakpoint or watchpoint hit before the present, going one interval
//! further back each time it finds none (as rr's ReplayTimeline does, with icount alone naming
//! every state).
//!
//! Re-execution must see exactly the inputs the first execution saw and must not print again:
//! the timeline wraps the front end's `Host` in a replaying host that logs stdin by the icount
//! of the syscall that consumed it and suppresses guest output below the history frontier.

use crate::host::{GuestEvent, Host, HostStat};
use crate::machine::{Machine, Snapshot, StopReason};
use crate::mem::{Watch, WatchHit};
use fx86_snapshots::FileKind;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default snapshot interval in instructions (a few milliseconds of replay at engine speed).
pub const DEFAULT_INTERVAL: u64 = 500_000;
/// Default memory budget for snapshots.
pub const DEFAULT_SNAPSHOT_MEMORY: u64 = 1 << 30;
/// Longest stretch run between checks of the cancel flag and progress updates.
const SLICE: u64 = 1_000_000;
/// Replay time one snapshot interval should cost.
const INTERVAL_TARGET_SECS: f64 = 0.003;

/// How far a long move has got, for front ends to show (and poll from another thread).
#[derive(Debug, Default)]
pub struct Progress {
    /// Instructions executed so far by the current move.
    pub done: AtomicU64,
    /// Instructions the move expects to execute (0 when unknown, e.g. running forward).
    pub total: AtomicU64,
}

/// Where a reverse move stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReverseStop {
    /// At an instruction with a breakpoint (address).
    Breakpoint(u64),
    /// Just before the instruction that made this watched access.
    Watch(WatchHit),
    /// At icount 0: nothing earlier matched.
    HistoryStart,
    /// The cancel flag was raised; the machine is at some earlier valid point.
    Cancelled,
}

/// Guest output with the icount of the syscall that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputChunk {
    pub icount: u64,
    pub fd: i32,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Logs {
    stdin: BTreeMap<u64, Vec<u8>>,
    output: Vec<OutputChunk>,
    events: Vec<GuestEvent>,
}

/// The host file system as a timeline has seen it: the first answer to each question is
/// the answer for the whole session, so re-executing a stretch of history sees the same
/// files (and times) even if the host's change meanwhile.
#[derive(Default)]
struct FrozenView {
    lstat: BTreeMap<String, Option<HostStat>>,
    file: BTreeMap<String, Option<Arc<Vec<u8>>>>,
    link: BTreeMap<String, Option<Vec<u8>>>,
    dir: BTreeMap<String, Option<Vec<(String, FileKind)>>>,
}

/// The host as seen during a timeline: live past the frontier, replayed before it.
struct ReplayHost {
    inner: Box<dyn Host>,
    icount: u64,
    frontier: Arc<AtomicU64>,
    logs: Arc<Mutex<Logs>>,
    view: FrozenView,
    /// Set while the timeline runs natively (KVM): syscalls need not settle.
    lazy: Arc<AtomicBool>,
    /// The icount given is inexact (see `Host::inexact`).
    inexact: bool,
    /// Output chunks and events logged with inexact icounts (indices into the logs).
    pending: (Vec<usize>, Vec<usize>),
}

impl ReplayHost {
    fn replaying(&self) -> bool {
        self.icount < self.frontier.load(Ordering::Relaxed)
    }
}

impl Host for ReplayHost {
    fn read_stdin(&mut self, max: usize) -> Vec<u8> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if self.replaying() {
            let mut v = logs.stdin.get(&self.icount).cloned().unwrap_or_default();
            v.truncate(max);
            return v;
        }
        let v = self.inner.read_stdin(max);
        logs.stdin.insert(self.icount, v.clone());
        v
    }
    fn write_output(&mut self, fd: i32, data: &[u8]) {
        if self.replaying() {
            return;
        }
        self.inner.write_output(fd, data);
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if self.inexact {
            self.pending.0.push(logs.output.len());
        }
        logs.output.push(OutputChunk {
            icount: self.icount,
            fd,
            data: data.to_vec(),
        });
    }
    fn diagnostic(&mut self, msg: &str) {
        if !self.replaying() {
            self.inner.diagnostic(msg);
        }
    }
    fn lstat(&mut self, path: &str) -> Option<HostStat> {
        if let Some(a) = self.view.lstat.get(path) {
            return a.clone();
        }
        let a = self.inner.lstat(path);
        self.view.lstat.insert(path.to_string(), a.clone());
        a
    }
    fn read_file(&mut self, path: &str) -> Option<Arc<Vec<u8>>> {
        if let Some(a) = self.view.file.get(path) {
            return a.clone();
        }
        let a = self.inner.read_file(path);
        self.view.file.insert(path.to_string(), a.clone());
        a
    }
    fn read_link(&mut self, path: &str) -> Option<Vec<u8>> {
        if let Some(a) = self.view.link.get(path) {
            return a.clone();
        }
        let a = self.inner.read_link(path);
        self.view.link.insert(path.to_string(), a.clone());
        a
    }
    fn list_dir(&mut self, path: &str) -> Option<Vec<(String, FileKind)>> {
        if let Some(a) = self.view.dir.get(path) {
            return a.clone();
        }
        let a = self.inner.list_dir(path);
        self.view.dir.insert(path.to_string(), a.clone());
        a
    }
    fn needs_icount(&self) -> bool {
        !self.lazy.load(Ordering::Relaxed)
    }

    fn at_icount(&mut self, icount: u64) {
        self.icount = icount;
    }
    fn inexact(&mut self, yes: bool) {
        self.inexact = yes;
    }
    fn settled(&mut self, map: &[(u64, u64)]) {
        let fix = |x: u64| {
            let k = map.partition_point(|&(from, _)| from <= x);
            x + if k == 0 { 0 } else { map[k - 1].1 }
        };
        let (out, ev) = std::mem::take(&mut self.pending);
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        for i in out {
            if let Some(c) = logs.output.get_mut(i) {
                c.icount = fix(c.icount);
            }
        }
        for i in ev {
            if let Some(e) = logs.events.get_mut(i) {
                e.icount = fix(e.icount);
            }
        }
        self.inexact = false;
    }
    fn event(&mut self, ev: GuestEvent) {
        if ev.icount >= self.frontier.load(Ordering::Relaxed) {
            let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            if logs
                .events
                .last()
                .is_none_or(|l| l.icount <= ev.icount && *l != ev)
            {
                if self.inexact {
                    self.pending.1.push(logs.events.len());
                }
                logs.events.push(ev);
            }
        }
        self.inner.event(ev);
    }
}

/// A host that has nothing: the placeholder while the real one is moved.
struct NoHost;
impl Host for NoHost {
    fn read_stdin(&mut self, _max: usize) -> Vec<u8> {
        Vec::new()
    }
    fn write_output(&mut self, _fd: i32, _data: &[u8]) {}
    fn diagnostic(&mut self, _msg: &str) {}
    fn lstat(&mut self, _path: &str) -> Option<HostStat> {
        None
    }
    fn read_file(&mut self, _path: &str) -> Option<Arc<Vec<u8>>> {
        None
    }
    fn read_link(&mut self, _path: &str) -> Option<Vec<u8>> {
        None
    }
    fn list_dir(&mut self, _path: &str) -> Option<Vec<(String, FileKind)>> {
        None
    }
}

/// One run of a guest, with its history.
pub struct Timeline {
    machine: Machine,
    snaps: BTreeMap<u64, Snapshot>,
    interval: u64,
    max_snapshots: usize,
    /// Furthest icount executed so far.
    end: u64,
    frontier: Arc<AtomicU64>,
    logs: Arc<Mutex<Logs>>,
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
    page_index: crate::machine::PageIndex,
    /// Whether the interval adapts to the engine's measured speed.
    adaptive: bool,
    /// Forward execution past the end of history runs natively (see `use_native`).
    native: Option<Native>,
    /// Shared with the host: syscalls need not settle native stretches.
    lazy: Arc<AtomicBool>,
}

/// A KVM VM that runs the guest forward past the end of history.
struct Native {
    vm: Box<crate::kvm::NativeVm>,
    kick: std::time::Duration,
    kicking: bool,
    snaps: Arc<Mutex<crate::kvm::SnapshotLog>>,
}

impl Timeline {
    /// Takes over `machine` (at icount 0) with a snapshot every `interval` instructions and
    /// at most `snapshot_memory` bytes of snapshots (estimated from pages held).
    pub fn new(mut machine: Machine, interval: u64, snapshot_memory: u64) -> Timeline {
        let frontier = Arc::new(AtomicU64::new(machine.icount));
        let logs = Arc::new(Mutex::new(Logs::default()));
        let lazy = Arc::new(AtomicBool::new(false));
        let inner = std::mem::replace(&mut machine.host, Box::new(NoHost));
        machine.host = Box::new(ReplayHost {
            inner,
            icount: 0,
            frontier: frontier.clone(),
            logs: logs.clone(),
            view: FrozenView::default(),
            lazy: lazy.clone(),
            inexact: false,
            pending: Default::default(),
        });
        let mut snaps = BTreeMap::new();
        let s = machine.snapshot();
        let per_snapshot = (s.page_count() as u64 * 4096).max(1 << 20);
        snaps.insert(machine.icount, s);
        let end = machine.icount;
        Timeline {
            machine,
            snaps,
            interval: interval.max(1000),
            max_snapshots: (snapshot_memory / per_snapshot).clamp(8, 100_000) as usize,
            end,
            frontier,
            logs,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(Progress::default()),
            page_index: Default::default(),
            adaptive: false,
            native: None,
            lazy,
        }
    }

    /// Runs forward past the end of history natively on `vm` (continuing without watchpoints;
    /// breakpoints are checked by interpreting the pages that hold them), kicked out every
    /// `kick` so that stretches stay short. Where native stretches end is learned by replay
    /// (in the background) and only waited for when something needs the exact icount: going
    /// back, stepping through history, `settle`. Snapshots are kept at their starts.
    pub fn use_native(&mut self, vm: crate::kvm::NativeVm, kick: std::time::Duration) {
        let snaps = Arc::new(Mutex::new(crate::kvm::SnapshotLog {
            interval: self.interval,
            next: self.machine.icount + self.interval,
            taken: Vec::new(),
        }));
        self.machine.log_snapshots(snaps.clone());
        self.native = Some(Native {
            vm: Box::new(vm),
            kick,
            kicking: false,
            snaps,
        });
    }

    /// Whether the present icount is not known exactly yet (native stretches not settled).
    pub fn unsettled(&self) -> bool {
        self.machine.unsettled()
    }

    /// Makes the icount exact: waits for native stretches to be replayed, and takes their
    /// snapshots into the history.
    pub fn settle(&mut self) {
        if self.machine.unsettled() {
            self.machine.settle();
        }
        // (Also what the machine settled by itself: clock or stdin reads.)
        if let Some(n) = &self.native {
            let taken =
                std::mem::take(&mut n.snaps.lock().unwrap_or_else(|e| e.into_inner()).taken);
            for (ic, s) in taken {
                self.snaps.entry(ic).or_insert(s);
            }
            self.thin();
        }
        self.note_progress();
    }

    /// Continues for about `wall` (or until a breakpoint, a watchpoint or the guest's end):
    /// natively past the end of history when `use_native` was called and no watchpoint is
    /// set, otherwise in the interpreter (up to `insns` instructions). `Limit` if nothing
    /// stopped it.
    pub fn continue_for(&mut self, insns: u64, wall: std::time::Duration) -> StopReason {
        if !self.native_ready() {
            self.settle();
            return self.run_forward(self.machine.icount.saturating_add(insns));
        }
        let deadline = std::time::Instant::now() + wall;
        // gdb's rule: a breakpoint where it continues from does not count.
        if self.machine.breakpoints().contains(&self.machine.cpu.rip) {
            let r = self.step_forward();
            if r != StopReason::Limit {
                return r;
            }
        }
        let pages: Vec<u64> = self.machine.breakpoints().iter().map(|a| a >> 12).collect();
        let n = self.native.as_mut().expect("checked");
        if !n.kicking {
            n.vm.kick_every(n.kick);
            n.kicking = true;
        }
        self.lazy.store(true, Ordering::Relaxed);
        let r =
            n.vm.interpret_pages(&self.machine, pages)
                .and_then(|()| n.vm.run_until(&mut self.machine, Some(deadline)));
        self.lazy.store(false, Ordering::Relaxed);
        match r {
            Ok(stop) => stop,
            Err(e) => {
                // The VM failed: the interpreter goes on from where the engine's state is.
                self.machine.host.diagnostic(&format!(
                    "fx86: kvm backend failed ({e}); continuing in the interpreter"
                ));
                self.native = None;
                self.settle();
                StopReason::Limit
            }
        }
    }

    /// Whether `continue_for` would run natively from here.
    pub fn native_ready(&self) -> bool {
        self.native.is_some()
            && self.machine.mem.watches().is_empty()
            && self.machine.ended.is_none()
            && (self.machine.unsettled() || self.machine.icount >= self.end)
    }

    /// Executes one instruction forward (a breakpoint here does not count).
    pub fn step_forward(&mut self) -> StopReason {
        if self.machine.unsettled() {
            let r = self.machine.run_after_native(self.machine.icount + 1);
            if self.machine.unsettled() {
                return r;
            }
            self.settle();
            return r;
        }
        self.run_forward(self.machine.icount + 1)
    }

    /// Runs forward while the instruction pointer stays in `[start, end)` (at least one
    /// instruction: gdb's range stepping, which makes `next` over a loop on one line fast),
    /// at most `max` instructions; stops as `run_forward` does at breakpoints, watchpoints and
    /// the guest's end. `Limit` if it left the range or ran `max`.
    pub fn step_in_range(&mut self, start: u64, end: u64, max: u64) -> StopReason {
        self.machine.step_range = Some((start, end));
        let limit = self.machine.icount.saturating_add(max.max(1));
        let r = if self.machine.unsettled() {
            let r = self.machine.run_after_native(limit);
            if !self.machine.unsettled() {
                self.settle();
            }
            r
        } else {
            self.run_forward(limit)
        };
        self.machine.step_range = None;
        r
    }

    /// Like `new`, with the interval chosen from the engine's measured speed so that
    /// replaying one interval takes a few milliseconds (between 100,000 and 20,000,000).
    pub fn with_adaptive_interval(machine: Machine, snapshot_memory: u64) -> Timeline {
        let mut t = Timeline::new(machine, DEFAULT_INTERVAL, snapshot_memory);
        t.adaptive = true;
        t
    }

    /// The current snapshot interval in instructions.
    pub fn interval(&self) -> u64 {
        self.interval
    }

    /// Progress of the current (or last) long move.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    fn progress_start(&self, total: u64) {
        self.progress.done.store(0, Ordering::Relaxed);
        self.progress.total.store(total, Ordering::Relaxed);
    }

    fn progress_add(&self, n: u64) {
        self.progress.done.fetch_add(n, Ordering::Relaxed);
    }

    /// The machine at the present point (read its registers and memory freely; change it only
    /// through the timeline).
    pub fn machine(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// The present icount.
    /// (Inexact while native stretches are not settled: see `unsettled`, `settle`.)
    pub fn icount(&self) -> u64 {
        self.machine.icount
    }

    /// The furthest icount executed so far (the end of history).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Raise it (from any thread) to stop a long move early.
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Snapshot count and an estimate of the memory they hold (distinct pages, 4 KiB each).
    pub fn snapshot_stats(&self) -> (usize, u64) {
        let mut seen = HashSet::new();
        for s in self.snaps.values() {
            s.for_each_page(|p| {
                seen.insert(p);
            });
        }
        (self.snaps.len(), seen.len() as u64 * 4096)
    }

    /// Icounts of the snapshots held (for the TUI's timeline ticks).
    pub fn snapshot_positions(&self) -> Vec<u64> {
        self.snaps.keys().copied().collect()
    }

    /// Guest output written at icounts below `icount` (what the terminal showed then).
    pub fn output_before(&self, icount: u64) -> Vec<OutputChunk> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.output
            .iter()
            .filter(|c| c.icount < icount)
            .cloned()
            .collect()
    }

    /// Syscalls and signals at icounts in `range`, at most `max` of them spread evenly (for
    /// the TUI's timeline marks).
    pub fn events_in(&self, range: std::ops::Range<u64>, max: usize) -> Vec<GuestEvent> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let lo = logs.events.partition_point(|e| e.icount < range.start);
        let hi = logs.events.partition_point(|e| e.icount < range.end);
        let all = &logs.events[lo..hi];
        if all.len() <= max {
            return all.to_vec();
        }
        // Signals are rare and always kept; syscalls are sampled.
        let step = all.len().div_ceil(max.max(1));
        all.iter()
            .enumerate()
            .filter(|(i, e)| i % step == 0 || matches!(e.kind, crate::host::EventKind::Signal(_)))
            .map(|(_, e)| *e)
            .collect()
    }

    /// Makes the present state (changed by a debugger: registers or memory written) the start
    /// of a new branch: later history, snapshots and logged input/output after this point are
    /// dropped, and the changed state becomes a snapshot so travelling forward from here again
    /// reproduces it.
    pub fn branch_here(&mut self) {
        self.settle();
        let ic = self.machine.icount;
        let later: Vec<u64> = self.snaps.range(ic..).map(|(k, _)| *k).collect();
        for k in later {
            self.snaps.remove(&k);
        }
        let s = self.machine.snapshot();
        self.snaps.insert(ic, s);
        self.end = ic;
        self.frontier.store(ic, Ordering::Relaxed);
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.stdin.retain(|k, _| *k < ic);
        logs.output.retain(|c| c.icount < ic);
        logs.events.retain(|e| e.icount < ic);
    }

    pub fn set_breakpoints(&mut self, bps: impl IntoIterator<Item = u64>) {
        self.machine.set_breakpoints(bps);
    }

    pub fn set_watches(&mut self, w: Vec<Watch>) {
        self.machine.mem.set_watches(w);
    }

    fn note_progress(&mut self) {
        if self.machine.icount > self.end {
            self.end = self.machine.icount;
            self.frontier.store(self.end, Ordering::Relaxed);
        }
    }

    /// Icount of the latest snapshot at or before `n` (icount 0 always has one).
    fn snapshot_at_or_before(&self, n: u64) -> u64 {
        self.snaps
            .range(..=n)
            .next_back()
            .map(|(k, _)| *k)
            .unwrap_or(0)
    }

    /// The snapshot spacing at `ic`: the interval past the end of history, and an eighth of
    /// it inside history, so that replays (goto, backward searches) leave dense snapshots
    /// behind them and repeated reverse steps stay cheap.
    fn step_at(&self, ic: u64) -> u64 {
        if ic < self.end {
            (self.interval / 8).max(1000)
        } else {
            self.interval
        }
    }

    /// Where the slice starting at `ic` ends: the next snapshot point, `limit`, or one slice.
    fn slice_end(&self, ic: u64, limit: u64) -> (u64, u64) {
        let step = self.step_at(ic);
        let last = self.snapshot_at_or_before(ic);
        let mut e = last.saturating_add(step);
        if e <= ic {
            e = ic.saturating_add(step);
        }
        (e.min(limit).min(ic.saturating_add(SLICE)), step)
    }

    fn maybe_snapshot(&mut self, step: u64) {
        let ic = self.machine.icount;
        let last = self.snapshot_at_or_before(ic);
        if ic - last >= step && !self.snaps.contains_key(&ic) {
            if let Some(base) = self.snaps.get(&last) {
                self.machine.dedup_pages(base, &mut self.page_index);
            }
            let s = self.machine.snapshot();
            self.snaps.insert(ic, s);
            self.thin();
        }
    }

    /// Sets the interval from the speed of the slice just run (adaptive timelines only).
    fn adapt(&mut self, executed: u64, secs: f64) {
        if self.adaptive && executed >= 200_000 && secs > 0.0 {
            let per_sec = executed as f64 / secs;
            self.interval = ((per_sec * INTERVAL_TARGET_SECS) as u64).clamp(100_000, 20_000_000);
        }
    }

    /// Keeps the snapshot count under budget: drops every other snapshot in the older half,
    /// so they stay dense near the present and sparse far back. Icount 0 is always kept.
    fn thin(&mut self) {
        if self.snaps.len() <= self.max_snapshots {
            return;
        }
        let keys: Vec<u64> = self.snaps.keys().copied().collect();
        let half = keys.len() / 2;
        for (k, ic) in keys[..half].iter().enumerate() {
            if k % 2 == 1 && *ic != 0 {
                self.snaps.remove(ic);
            }
        }
    }

    /// Runs forward until `limit`, a breakpoint, a watchpoint, or the guest's end, extending
    /// the history and taking snapshots on the way. A breakpoint at the starting point does not
    /// count (gdb's rule).
    pub fn run_forward(&mut self, limit: u64) -> StopReason {
        self.settle();
        let mut first = true;
        self.progress_start(if limit == u64::MAX {
            0
        } else {
            limit.saturating_sub(self.machine.icount)
        });
        loop {
            if self.cancel.swap(false, Ordering::Relaxed) {
                return StopReason::Limit;
            }
            let ic = self.machine.icount;
            let (target, step) = self.slice_end(ic, limit);
            let t0 = std::time::Instant::now();
            let r = if first {
                self.machine.run(target)
            } else {
                self.machine.run_continuing(target)
            };
            first = false;
            let ran = self.machine.icount - ic;
            self.adapt(ran, t0.elapsed().as_secs_f64());
            self.progress_add(ran);
            self.note_progress();
            match r {
                // Stopped short of the slice: it left the range of `step_in_range`.
                StopReason::Limit if self.machine.icount < target => return r,
                StopReason::Limit if self.machine.icount < limit => self.maybe_snapshot(step),
                StopReason::Limit => {
                    self.maybe_snapshot(step);
                    return r;
                }
                other => return other,
            }
        }
    }

    /// Runs without stops to exactly `target` (or the guest's end).
    fn replay_to(&mut self, target: u64) {
        let bps: Vec<u64> = self.machine.breakpoints().iter().copied().collect();
        let watches = self.machine.mem.watches().to_vec();
        self.machine.set_breakpoints([]);
        self.machine.mem.set_watches(Vec::new());
        while self.machine.icount < target {
            if self.cancel.load(Ordering::Relaxed) {
                break;
            }
            let ic = self.machine.icount;
            let (end, step) = self.slice_end(ic, target);
            let r = self.machine.run(end);
            self.progress_add(self.machine.icount - ic);
            self.note_progress();
            if r != StopReason::Limit {
                break;
            }
            self.maybe_snapshot(step);
        }
        self.machine.set_breakpoints(bps);
        self.machine.mem.set_watches(watches);
    }

    fn restore_at_or_before(&mut self, n: u64) {
        let (_, s) = self
            .snaps
            .range(..=n)
            .next_back()
            .expect("a snapshot at the start always exists");
        let s = s.clone();
        self.machine.restore(&s);
    }

    /// Moves to icount `n` exactly. Past the end of history this runs forward (and stops at
    /// the guest's end if it comes first).
    pub fn goto(&mut self, n: u64) {
        self.settle();
        let cur = self.machine.icount;
        // Going forward from here is cheaper than restoring if no snapshot lies in between.
        let best = self.snapshot_at_or_before(n);
        if !(cur <= n && cur >= best) {
            self.restore_at_or_before(n);
        }
        self.progress_start(n.saturating_sub(self.machine.icount));
        self.replay_to(n);
    }

    /// Moves `k` instructions back (to icount 0 at most).
    pub fn step_back(&mut self, k: u64) {
        self.settle();
        let n = self.machine.icount.saturating_sub(k);
        self.goto(n);
    }

    /// Finds the last breakpoint or watchpoint hit strictly before the present and moves there;
    /// with none, moves to icount 0.
    pub fn reverse_continue(&mut self) -> ReverseStop {
        self.reverse_continue_until(|| false)
    }

    /// `reverse_continue`, also stopping (with `Cancelled`, at the present) when
    /// `interrupted()` says so; it is asked between intervals, every few milliseconds.
    pub fn reverse_continue_until(&mut self, mut interrupted: impl FnMut() -> bool) -> ReverseStop {
        self.settle();
        let present = self.machine.icount;
        let starts: Vec<u64> = self.snaps.range(..present).map(|(k, _)| *k).rev().collect();
        let mut hi = present;
        self.progress_start(present);
        for lo in starts {
            if self.cancel.swap(false, Ordering::Relaxed) || interrupted() {
                self.goto(present);
                return ReverseStop::Cancelled;
            }
            let found = self.last_hit_in(lo, hi);
            self.progress_add(hi - lo);
            if let Some((pos, stop)) = found {
                let done = self.progress.done.load(Ordering::Relaxed);
                self.goto(pos);
                self.progress.done.store(done, Ordering::Relaxed);
                return stop;
            }
            hi = lo;
        }
        self.goto(0);
        ReverseStop::HistoryStart
    }

    /// The last stop position in `[lo, hi)`, by replaying the interval from its snapshot.
    fn last_hit_in(&mut self, lo: u64, hi: u64) -> Option<(u64, ReverseStop)> {
        let s = self
            .snaps
            .get(&lo)
            .expect("interval starts at a snapshot")
            .clone();
        self.machine.restore(&s);
        let mut last = None;
        // The state at `lo` itself counts as a breakpoint position, and so does the state
        // right after a watched access; only a breakpoint just reported is skipped.
        let mut check_start = true;
        while self.machine.icount < hi {
            let r = if check_start {
                self.machine.run_continuing(hi)
            } else {
                self.machine.run(hi)
            };
            match r {
                StopReason::Breakpoint(addr) => {
                    last = Some((self.machine.icount, ReverseStop::Breakpoint(addr)));
                    check_start = false;
                }
                StopReason::Watch(hit) => {
                    last = Some((self.machine.icount - 1, ReverseStop::Watch(hit)));
                    check_start = true;
                }
                _ => break,
            }
        }
        last
    }
}
