//! Moves through time that need more than one engine call: stepping over calls, source-line
//! next and reverse-next, finish and reverse-finish. They run on the worker thread, over the
//! timeline, and stop early at the user's breakpoints and watchpoints like gdb's do.

use crate::debuginfo::{DebugInfo, SourcePos};
use fx86_engine::linux::signal_name;
use fx86_engine::mem::{Watch, WatchHit, WatchKind};
use fx86_engine::{EventKind, ReverseStop, StopReason, Timeline};
use iced_x86::{Decoder, DecoderOptions, FlowControl};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// Why a move ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The move did what it was asked.
    Done(String),
    /// The guest stopped on its own (exit, fatal signal, breakpoint, watchpoint) on the way.
    Forward(StopReason),
    Reverse(ReverseStop),
    Cancelled,
}

/// What a move needs besides the timeline.
pub struct Nav<'a> {
    pub tl: &'a mut Timeline,
    pub di: &'a DebugInfo,
    pub bps: &'a BTreeSet<u64>,
    pub watches: &'a [Watch],
    pub cancel: &'a AtomicBool,
}

fn regs(tl: &mut Timeline) -> (u64, u64, u64) {
    let c = &tl.machine().cpu;
    (c.rip, c.gpr[4], c.gpr[5])
}

/// A watch hit that did not change the value (gdb does not report those for `watch`).
fn silent(h: &WatchHit) -> bool {
    h.write && h.old == h.new
}

impl Nav<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.swap(false, Ordering::Relaxed)
    }

    fn cfa(&mut self) -> Option<u64> {
        let (pc, sp, bp) = regs(self.tl);
        self.di.cfa(pc, sp, bp)
    }

    fn pos(&mut self) -> Option<SourcePos> {
        let pc = regs(self.tl).0;
        self.di.source(pc)
    }

    /// The instruction at rip, if it is a call: the address after it.
    fn call_return(&mut self) -> Option<u64> {
        let rip = regs(self.tl).0;
        let mut b = [0u8; 15];
        let n = self.tl.machine().mem.fetch(rip, &mut b).ok()?;
        let ins = Decoder::with_ip(64, &b[..n], rip, DecoderOptions::NONE).decode();
        matches!(
            ins.flow_control(),
            FlowControl::Call | FlowControl::IndirectCall
        )
        .then(|| ins.next_ip())
    }

    /// Signals delivered at icounts in `range` (handled ones and the fatal one).
    fn signals(&self, range: std::ops::Range<u64>) -> Vec<(u64, i32)> {
        self.tl
            .events_in(range, usize::MAX)
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::Signal(s) => Some((e.icount, s)),
                _ => None,
            })
            .collect()
    }

    fn at_signal(&mut self, at: u64, sig: i32) -> Stop {
        self.tl.goto(at);
        Stop::Done(format!(
            "signal {} delivered here (the guest's handler or default action runs next)",
            signal_name(sig)
        ))
    }

    /// Continues forward to a user breakpoint, a watchpoint that changes its value, a signal,
    /// or the end.
    pub fn cont(&mut self) -> Stop {
        let start = self.tl.icount();
        let r = loop {
            if self.tl.native_ready() {
                // Natively (`--backend kvm`), in slices of time; then the positions are
                // learned (the view shows them).
                let r = self
                    .tl
                    .continue_for(u64::MAX, std::time::Duration::from_millis(50));
                if r == StopReason::Limit {
                    if self.tl.cancel_handle().swap(false, Ordering::Relaxed) {
                        self.tl.settle();
                        return Stop::Cancelled;
                    }
                    continue;
                }
                self.tl.settle();
                match r {
                    StopReason::Watch(h) if silent(&h) => continue,
                    r => break r,
                }
            }
            match self.tl.run_forward(u64::MAX) {
                StopReason::Watch(h) if silent(&h) => {}
                StopReason::Limit => return Stop::Cancelled,
                r => break r,
            }
        };
        // A signal delivered to a handler on the way stops the move there, as in gdb.
        let now = self.tl.icount();
        if let Some(&(at, sig)) = self.signals(start + 1..now).first() {
            return self.at_signal(at, sig);
        }
        Stop::Forward(r)
    }

    /// Continues backward to the last user breakpoint, watchpoint change or signal, or
    /// icount 0.
    pub fn reverse_cont(&mut self) -> Stop {
        let start = self.tl.icount();
        let r = loop {
            match self.tl.reverse_continue() {
                ReverseStop::Watch(h) if silent(&h) && self.tl.icount() > 0 => {}
                r => break r,
            }
        };
        if r == ReverseStop::Cancelled {
            return Stop::Cancelled;
        }
        let now = self.tl.icount();
        if let Some(&(at, sig)) = self.signals(now + 1..start).last() {
            return self.at_signal(at, sig);
        }
        Stop::Reverse(r)
    }

    /// Runs forward until rip is `at` with rsp at least `sp` (the return from a call made
    /// with rsp above `sp`), stopping early like `cont`.
    fn run_to_return(&mut self, at: u64, sp: u64) -> Option<Stop> {
        let mut set = self.bps.clone();
        set.insert(at);
        self.tl.set_breakpoints(set);
        let out = loop {
            match self.tl.run_forward(u64::MAX) {
                StopReason::Breakpoint(a) if a == at && regs(self.tl).1 >= sp => break None,
                StopReason::Breakpoint(a) if a == at && !self.bps.contains(&a) => {}
                StopReason::Watch(h) if silent(&h) => {}
                StopReason::Limit => break Some(Stop::Cancelled),
                r => break Some(Stop::Forward(r)),
            }
        };
        self.tl.set_breakpoints(self.bps.iter().copied());
        out
    }

    /// One instruction forward, over calls.
    fn step_over(&mut self) -> Option<Stop> {
        if let Some(ret) = self.call_return() {
            let sp = regs(self.tl).1;
            return self.run_to_return(ret, sp);
        }
        let ic = self.tl.icount();
        match self.tl.run_forward(ic + 1) {
            StopReason::Limit => None,
            StopReason::Watch(h) if silent(&h) => None,
            r => Some(Stop::Forward(r)),
        }
    }

    /// `next`: forward to the next source line of this function (or its caller), stepping
    /// over calls. Without line information: one instruction, over calls.
    pub fn next(&mut self) -> Stop {
        let start = self.pos();
        let cfa0 = self.cfa();
        let Some(start) = start else {
            return self
                .step_over()
                .unwrap_or_else(|| Stop::Done("stepped over one instruction".into()));
        };
        loop {
            if let Some(s) = self.step_over() {
                return s;
            }
            if self.cancelled() {
                return Stop::Cancelled;
            }
            if let (Some(c0), Some(c)) = (cfa0, self.cfa()) {
                if c > c0 {
                    return Stop::Done("returned to the caller".into());
                }
            }
            match self.pos() {
                Some(p) if p != start => return Stop::Done(format!("line {}", p.line)),
                _ => {}
            }
        }
    }

    /// `finish`: forward until the current function returns.
    pub fn finish(&mut self) -> Stop {
        let (pc, sp, bp) = regs(self.tl);
        let frames = {
            let m = self.tl.machine();
            self.di.backtrace(pc, sp, bp, 2, |a| m.mem.read_u64(a).ok())
        };
        let (Some(f0), Some(f1)) = (frames.first(), frames.get(1)) else {
            return Stop::Done("no caller frame to finish to".into());
        };
        let cfa = f0.cfa.unwrap_or(sp + 8);
        match self.run_to_return(f1.pc, cfa) {
            Some(s) => s,
            None => Stop::Done(format!("returned to {:#x}", f1.pc)),
        }
    }

    /// Backward to the call instruction that entered the frame whose CFA is `cfa`: the last
    /// write of the return address before now.
    fn back_to_call(&mut self, cfa: u64) -> Option<Stop> {
        let slot = Watch {
            start: cfa - 8,
            len: 8,
            kind: WatchKind::Write,
        };
        let mut w = self.watches.to_vec();
        w.push(slot);
        self.tl.set_watches(w);
        let out = loop {
            match self.tl.reverse_continue() {
                ReverseStop::Watch(h) if h.watch == slot => break None,
                ReverseStop::Watch(h) if silent(&h) && self.tl.icount() > 0 => {}
                r => break Some(Stop::Reverse(r)),
            }
        };
        self.tl.set_watches(self.watches.to_vec());
        out
    }

    /// `reverse-finish`: back to the call that entered the current function.
    pub fn reverse_finish(&mut self) -> Stop {
        let (pc, sp, bp) = regs(self.tl);
        let cfa = self.di.cfa(pc, sp, bp).unwrap_or(sp + 8);
        match self.back_to_call(cfa) {
            Some(s) => s,
            None => Stop::Done("back at the call".into()),
        }
    }

    /// One instruction back; if that lands inside a function called from here (we were just
    /// after its return), back to the call instead. Returns a stop that ended the move.
    fn step_back_over(&mut self, cfa0: Option<u64>) -> Option<Stop> {
        if self.tl.icount() == 0 {
            return Some(Stop::Reverse(ReverseStop::HistoryStart));
        }
        self.tl.step_back(1);
        if let (Some(c0), Some(c)) = (cfa0, self.cfa()) {
            if c < c0 {
                return self.back_to_call_of(c0);
            }
        }
        None
    }

    /// Back to the call made from the frame with CFA `c0` that we are now inside of.
    fn back_to_call_of(&mut self, c0: u64) -> Option<Stop> {
        // The callee's own CFA: where its return address lives.
        let c = self.cfa()?;
        if c >= c0 {
            return None;
        }
        self.back_to_call(c)
    }

    /// `reverse-next`: back to the start of the previous source line of this function,
    /// stepping back over calls.
    pub fn reverse_next(&mut self) -> Stop {
        let start = self.pos();
        let cfa0 = self.cfa();
        let Some(start) = start else {
            return self
                .step_back_over(cfa0)
                .unwrap_or_else(|| Stop::Done("stepped back over one instruction".into()));
        };
        // Back to the last instruction of an earlier line...
        let line = loop {
            if let Some(s) = self.step_back_over(cfa0) {
                return s;
            }
            if self.cancelled() {
                return Stop::Cancelled;
            }
            if let (Some(c0), Some(c)) = (cfa0, self.cfa()) {
                if c > c0 {
                    return Stop::Done("back in the caller".into());
                }
            }
            match self.pos() {
                Some(p) if p != start => break p,
                _ => {}
            }
        };
        // ...then to that line's first instruction.
        loop {
            let here = self.tl.icount();
            if here == 0 {
                break;
            }
            if let Some(s) = self.step_back_over(cfa0) {
                return s;
            }
            let same_frame = match (cfa0, self.cfa()) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if !same_frame || self.pos().as_ref() != Some(&line) || self.cancelled() {
                self.tl.goto(here);
                break;
            }
        }
        Stop::Done(format!("line {}", line.line))
    }
}
