//! The engine's thread: owns the timeline, takes commands, sends back views.

use crate::view::View;
use fx86_engine::{ReverseStop, StopReason, Timeline};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// What the UI asks the engine to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    StepForward,
    StepBack,
    Continue,
    ReverseContinue,
    Goto(u64),
    ToggleBreakpoint(u64),
    /// Stop a long move (Esc).
    Cancel,
    Quit,
}

pub struct Worker {
    tx: Sender<Cmd>,
    rx: Receiver<View>,
    cancel: Arc<AtomicBool>,
}

fn describe(r: &StopReason) -> String {
    match r {
        StopReason::Exited(c) => format!("exited with status {c}"),
        StopReason::Signaled { msg, .. } => msg.clone(),
        StopReason::Limit => "stopped".into(),
        StopReason::Breakpoint(a) => format!("breakpoint at {a:#x}"),
        StopReason::Watch(h) => format!(
            "watchpoint at {:#x}: {:02x?} -> {:02x?}",
            h.addr, h.old, h.new
        ),
    }
}

impl Worker {
    pub fn start(mut tl: Timeline) -> Worker {
        let (tx, crx) = channel::<Cmd>();
        let (vtx, rx) = channel::<View>();
        let cancel = tl.cancel_handle();
        std::thread::spawn(move || {
            let mut bps = std::collections::BTreeSet::new();
            let mut last = View::capture(&mut tl, None, "at the first instruction".into());
            let _ = vtx.send(last.clone());
            while let Ok(cmd) = crx.recv() {
                let busy = View {
                    busy: true,
                    ..last.clone()
                };
                let _ = vtx.send(busy);
                let status = match cmd {
                    Cmd::Quit => return,
                    Cmd::Cancel => continue,
                    Cmd::StepForward => describe(&tl.run_forward(tl.icount() + 1)),
                    Cmd::StepBack => {
                        if tl.icount() == 0 {
                            "history begins".into()
                        } else {
                            tl.step_back(1);
                            "stepped back".into()
                        }
                    }
                    Cmd::Continue => describe(&tl.run_forward(u64::MAX)),
                    Cmd::ReverseContinue => match tl.reverse_continue() {
                        ReverseStop::Breakpoint(a) => format!("breakpoint at {a:#x} (reverse)"),
                        ReverseStop::Watch(h) => format!("watchpoint at {:#x} (reverse)", h.addr),
                        ReverseStop::HistoryStart => "history begins".into(),
                        ReverseStop::Cancelled => "cancelled".into(),
                    },
                    Cmd::Goto(n) => {
                        tl.goto(n);
                        format!("went to icount {n}")
                    }
                    Cmd::ToggleBreakpoint(a) => {
                        if !bps.remove(&a) {
                            bps.insert(a);
                        }
                        tl.set_breakpoints(bps.iter().copied());
                        format!("{} breakpoint(s)", bps.len())
                    }
                };
                last = View::capture(&mut tl, Some(&last), status);
                let _ = vtx.send(last.clone());
            }
        });
        Worker { tx, rx, cancel }
    }

    pub fn send(&self, c: Cmd) {
        let _ = self.tx.send(c);
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The newest view, if one arrived.
    pub fn try_view(&self) -> Option<View> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next view (tests).
    pub fn wait_view(&self) -> Option<View> {
        self.rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Cmd::Quit);
    }
}
