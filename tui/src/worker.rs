//! The engine's thread: owns the timeline, takes commands, sends back views.

use crate::debuginfo::DebugInfo;
use crate::nav::{Nav, Stop};
use crate::view::{Context, SourceCache, View, GPR_INDEX};
use fx86_engine::mem::{Watch, WatchHit, WatchKind};
use fx86_engine::timeline::Progress;
use fx86_engine::{ReverseStop, StopReason, Timeline};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// What the UI asks the engine to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    StepForward,
    StepBack,
    Next,
    ReverseNext,
    Finish,
    ReverseFinish,
    Continue,
    ReverseContinue,
    Goto(u64),
    /// Toggle a breakpoint at an address expression (empty: the current pc).
    ToggleBreakpoint(String),
    /// Toggle a write watchpoint on `EXPR [LEN]`.
    ToggleWatch(String),
    /// Show memory at an address expression.
    Memory(String),
    /// Stop a long move (Esc).
    Cancel,
    Quit,
}

/// The engine thread has ended (after `Quit`, or because it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineGone;

pub struct Worker {
    tx: Sender<Cmd>,
    rx: Receiver<View>,
    cancel: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

fn value(b: &[u8]) -> String {
    if b.len() <= 8 {
        let mut v = [0u8; 8];
        v[..b.len()].copy_from_slice(b);
        format!("{}", u64::from_le_bytes(v))
    } else {
        format!("{b:02x?}")
    }
}

fn watch_text(h: &WatchHit, di: &DebugInfo) -> String {
    let name = di
        .symbolize(h.watch.start)
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    format!(
        "watchpoint {:#x}{name}: old {} new {}",
        h.watch.start,
        value(&h.old),
        value(&h.new)
    )
}

fn describe(s: &Stop, di: &DebugInfo) -> String {
    let bp = |a: u64| match di.symbolize(a) {
        Some(n) => format!("breakpoint at {a:#x} <{n}>"),
        None => format!("breakpoint at {a:#x}"),
    };
    match s {
        Stop::Done(t) => t.clone(),
        Stop::Cancelled => "cancelled".into(),
        Stop::Forward(r) => match r {
            StopReason::Exited(c) => format!("exited with status {c}"),
            StopReason::Signaled { msg, .. } => format!("killed: {msg}"),
            StopReason::Limit => "stopped".into(),
            StopReason::Breakpoint(a) => bp(*a),
            StopReason::Watch(h) => watch_text(h, di),
        },
        Stop::Reverse(r) => match r {
            ReverseStop::Breakpoint(a) => format!("{} (reverse)", bp(*a)),
            ReverseStop::Watch(h) => format!("{} (reverse)", watch_text(h, di)),
            ReverseStop::HistoryStart => "history begins (icount 0)".into(),
            ReverseStop::Cancelled => "cancelled".into(),
        },
    }
}

fn is_hit(s: &Stop) -> bool {
    matches!(
        s,
        Stop::Forward(StopReason::Breakpoint(_) | StopReason::Watch(_))
            | Stop::Reverse(ReverseStop::Breakpoint(_) | ReverseStop::Watch(_))
    )
}

/// Evaluates `EXPR`: a number (hex with 0x, else decimal), a register, or a symbol, with
/// `+`/`-` offsets.
pub fn eval(expr: &str, tl: &mut Timeline, di: &DebugInfo) -> Result<u64, String> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Err("empty expression".into());
    }
    let mut total: u64 = 0;
    let mut sign = 1i8;
    let mut rest = expr;
    loop {
        let end = rest.find(['+', '-']).unwrap_or(rest.len());
        let term = rest[..end].trim();
        let v = term_value(term, tl, di)?;
        total = if sign > 0 {
            total.wrapping_add(v)
        } else {
            total.wrapping_sub(v)
        };
        if end == rest.len() {
            return Ok(total);
        }
        sign = if rest.as_bytes()[end] == b'+' { 1 } else { -1 };
        rest = &rest[end + 1..];
    }
}

fn term_value(t: &str, tl: &mut Timeline, di: &DebugInfo) -> Result<u64, String> {
    let t = t.trim_start_matches(['$', '&']);
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).map_err(|_| format!("bad number {t}"));
    }
    if t.chars().all(|c| c.is_ascii_digit()) && !t.is_empty() {
        return t.parse().map_err(|_| format!("bad number {t}"));
    }
    let names = crate::view::NAMES;
    let cpu = &tl.machine().cpu;
    if let Some(i) = names.iter().position(|n| *n == t) {
        return Ok(cpu.gpr[GPR_INDEX[i]]);
    }
    match t {
        "rip" | "pc" => return Ok(cpu.rip),
        "fs_base" => return Ok(cpu.fs_base),
        _ => {}
    }
    di.lookup(t)
        .ok_or_else(|| format!("no symbol or register named {t}"))
}

struct State {
    tl: Timeline,
    di: Arc<DebugInfo>,
    sources: SourceCache,
    bps: BTreeSet<u64>,
    watches: Vec<Watch>,
    mem: Option<(u64, String)>,
    hits: Vec<u64>,
    stop: Arc<AtomicBool>,
    /// Breakpoints on names no loaded object defines yet (a library function before the
    /// loader has mapped its library), as gdb's pending breakpoints.
    pending: Vec<String>,
}

impl State {
    fn nav(&mut self) -> Nav<'_> {
        Nav {
            tl: &mut self.tl,
            di: &self.di,
            bps: &self.bps,
            watches: &self.watches,
            cancel: &self.stop,
        }
    }

    /// Adds the shared libraries the dynamic loader has mapped so far to the debug info, so
    /// that their code gets symbols, lines and CFI unwinding.
    fn learn_libraries(&mut self) {
        let m = self.tl.machine();
        let exe = m.kernel.exe.clone();
        let mut base: std::collections::BTreeMap<String, u64> = Default::default();
        let mut code: BTreeSet<String> = BTreeSet::new();
        for (start, v) in &m.mem.vmas {
            if !v.name.starts_with('/') || v.name == exe || self.di.knows(&v.name) {
                continue;
            }
            let b = base.entry(v.name.clone()).or_insert(*start);
            *b = (*b).min(*start);
            if v.prot & fx86_engine::mem::PROT_EXEC != 0 {
                code.insert(v.name.clone());
            }
        }
        for path in code {
            let bytes = self.tl.machine().peek_file(&path);
            self.di = Arc::new(self.di.with_library(
                &path,
                bytes.as_deref().map(|b| b.as_slice()),
                base[&path],
            ));
        }
    }

    /// Sets the pending breakpoints whose names are now known; true if any was set.
    fn resolve_pending(&mut self) -> bool {
        let before = self.pending.len();
        let di = self.di.clone();
        let bps = &mut self.bps;
        self.pending.retain(|name| match di.lookup(name) {
            Some(a) => {
                bps.insert(a);
                false
            }
            None => true,
        });
        self.pending.len() != before
    }

    /// `c` with pending breakpoints: stops inside the dynamic loader each time it changes the
    /// library list (at `_dl_debug_state`, as gdb does), learns the new libraries and sets
    /// the pending breakpoints they define, then goes on.
    fn cont_resolving_pending(&mut self) -> Stop {
        loop {
            self.learn_libraries();
            self.resolve_pending();
            let hook = (!self.pending.is_empty())
                .then(|| self.di.lookup("_dl_debug_state"))
                .flatten()
                .filter(|a| !self.bps.contains(a));
            let Some(hook) = hook else {
                self.tl.set_breakpoints(self.bps.iter().copied());
                return self.nav().cont();
            };
            let mut all = self.bps.clone();
            all.insert(hook);
            self.tl.set_breakpoints(all.iter().copied());
            let stop = {
                let mut nav = self.nav();
                nav.bps = &all;
                nav.cont()
            };
            self.tl.set_breakpoints(self.bps.iter().copied());
            match stop {
                Stop::Forward(StopReason::Breakpoint(a)) if a == hook => continue,
                other => return other,
            }
        }
    }

    fn view(&mut self, prev: Option<&View>, status: String) -> View {
        self.learn_libraries();
        // A memory pane following a register moves with it.
        if let Some((_, expr)) = &self.mem {
            let expr = expr.clone();
            if let Ok(a) = eval(&expr, &mut self.tl, &self.di) {
                self.mem = Some((a, expr));
            }
        }
        let cx = Context {
            di: self.di.clone(),
            sources: &mut self.sources,
            mem_addr: self.mem.clone(),
            hits: &self.hits,
            breakpoints: self.bps.iter().copied().collect(),
            watches: self.watches.iter().map(|w| (w.start, w.len)).collect(),
        };
        View::capture(&mut self.tl, cx, prev, status)
    }

    fn exec(&mut self, cmd: Cmd) -> String {
        let stop = match cmd {
            Cmd::Quit | Cmd::Cancel => return String::new(),
            Cmd::StepForward => {
                let r = self.tl.run_forward(self.tl.icount() + 1);
                if r == StopReason::Limit {
                    Stop::Done("stepped one instruction".into())
                } else {
                    Stop::Forward(r)
                }
            }
            Cmd::StepBack => {
                if self.tl.icount() == 0 {
                    Stop::Reverse(ReverseStop::HistoryStart)
                } else {
                    self.tl.step_back(1);
                    Stop::Done("stepped back one instruction".into())
                }
            }
            Cmd::Next => self.nav().next(),
            Cmd::ReverseNext => self.nav().reverse_next(),
            Cmd::Finish => self.nav().finish(),
            Cmd::ReverseFinish => self.nav().reverse_finish(),
            Cmd::Continue => self.cont_resolving_pending(),
            Cmd::ReverseContinue => self.nav().reverse_cont(),
            Cmd::Goto(n) => {
                self.tl.goto(n);
                if self.tl.icount() < n {
                    Stop::Done(format!(
                        "the run ends at icount {}; went there",
                        self.tl.icount()
                    ))
                } else {
                    Stop::Done(format!("went to icount {n}"))
                }
            }
            Cmd::ToggleBreakpoint(e) => {
                let a = if e.trim().is_empty() {
                    Ok(self.tl.machine().cpu.rip)
                } else {
                    eval(&e, &mut self.tl, &self.di)
                };
                let name = e.trim().to_string();
                let symbol_like = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                match a {
                    Err(_) if symbol_like => {
                        if let Some(k) = self.pending.iter().position(|p| *p == name) {
                            self.pending.remove(k);
                            Stop::Done(format!("pending breakpoint on {name} removed"))
                        } else {
                            self.pending.push(name.clone());
                            Stop::Done(format!(
                                "breakpoint on {name} pending: set when a library defining it is loaded"
                            ))
                        }
                    }
                    Err(msg) => Stop::Done(msg),
                    Ok(a) => {
                        let added = self.bps.insert(a);
                        if !added {
                            self.bps.remove(&a);
                        }
                        self.tl.set_breakpoints(self.bps.iter().copied());
                        let name = self.di.symbolize(a).unwrap_or_default();
                        Stop::Done(format!(
                            "breakpoint {} at {a:#x} {name}",
                            if added { "set" } else { "removed" }
                        ))
                    }
                }
            }
            Cmd::ToggleWatch(e) => {
                let mut parts = e.split_whitespace();
                let addr = parts.next().map(|x| eval(x, &mut self.tl, &self.di));
                let len = parts.next().map(|l| eval(l, &mut self.tl, &self.di));
                match (addr, len.unwrap_or(Ok(8))) {
                    (None, _) => Stop::Done("watch what? (an address, symbol or register)".into()),
                    (Some(Err(m)), _) | (_, Err(m)) => Stop::Done(m),
                    (Some(Ok(start)), Ok(len)) => {
                        let len = len.clamp(1, 4096);
                        let before = self.watches.len();
                        self.watches.retain(|w| w.start != start);
                        let added = self.watches.len() == before;
                        if added {
                            self.watches.push(Watch {
                                start,
                                len,
                                kind: WatchKind::Write,
                            });
                        }
                        self.tl.set_watches(self.watches.clone());
                        Stop::Done(format!(
                            "watchpoint {} on {len} bytes at {start:#x}",
                            if added { "set" } else { "removed" }
                        ))
                    }
                }
            }
            Cmd::Memory(e) => match eval(&e, &mut self.tl, &self.di) {
                Ok(a) => {
                    self.mem = Some((a, e.trim().to_string()));
                    Stop::Done(format!("memory at {a:#x}"))
                }
                Err(m) => Stop::Done(m),
            },
        };
        if is_hit(&stop) {
            let ic = self.tl.icount();
            if let Err(i) = self.hits.binary_search(&ic) {
                self.hits.insert(i, ic);
            }
        }
        describe(&stop, &self.di)
    }
}

impl Worker {
    /// Starts the engine thread; `hint` is the first status line.
    pub fn start(tl: Timeline, di: DebugInfo, hint: Option<String>) -> Worker {
        let (tx, crx) = channel::<Cmd>();
        let (vtx, rx) = channel::<View>();
        let cancel = tl.cancel_handle();
        let progress = tl.progress();
        let stop = Arc::new(AtomicBool::new(false));
        let mut st = State {
            tl,
            di: Arc::new(di),
            sources: SourceCache::default(),
            bps: BTreeSet::new(),
            watches: Vec::new(),
            mem: Some((0, "rsp".into())),
            hits: Vec::new(),
            pending: Vec::new(),
            stop: stop.clone(),
        };
        std::thread::spawn(move || {
            let first =
                hint.unwrap_or_else(|| "at the first instruction; press ? for the keys".into());
            let mut last = st.view(None, first);
            let _ = vtx.send(last.clone());
            while let Ok(cmd) = crx.recv() {
                if cmd == Cmd::Quit {
                    return;
                }
                if cmd == Cmd::Cancel {
                    continue;
                }
                st.stop.store(false, Ordering::Relaxed);
                st.tl.cancel_handle().store(false, Ordering::Relaxed);
                let _ = vtx.send(View {
                    busy: true,
                    ..last.clone()
                });
                let status = st.exec(cmd);
                last = st.view(Some(&last), status);
                let _ = vtx.send(last.clone());
            }
        });
        Worker {
            tx,
            rx,
            cancel,
            stop,
            progress,
        }
    }

    pub fn send(&self, c: Cmd) {
        let _ = self.tx.send(c);
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }

    /// How far the current long move has got: (done, total; 0 when unknown).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.progress.done.load(Ordering::Relaxed),
            self.progress.total.load(Ordering::Relaxed),
        )
    }

    /// The newest view, if one arrived; Err when the engine thread is gone.
    pub fn try_view(&self) -> Result<Option<View>, EngineGone> {
        match self.rx.try_recv() {
            Ok(v) => Ok(Some(v)),
            Err(std::sync::mpsc::TryRecvError::Empty) => Ok(None),
            Err(_) => Err(EngineGone),
        }
    }

    /// Waits for the next view (tests).
    pub fn wait_view(&self) -> Option<View> {
        self.rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel();
        let _ = self.tx.send(Cmd::Quit);
    }
}
