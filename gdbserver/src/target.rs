//! The target: registers and memory of the timeline's machine, resume intents, and the event
//! loop that runs the timeline between packets.

use crate::arch::{Regs, X86_64Linux};
use fx86_engine::mem::WatchKind as EngineWatch;
use fx86_engine::{ReverseStop, StopReason, Timeline};
use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{self, BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::reverse_exec::{ReplayLogPosition, ReverseCont, ReverseStep};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadRangeStepping, SingleThreadResume, SingleThreadSingleStep,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::WatchKind;
use gdbstub::target::{Target, TargetError, TargetResult};

/// What gdb asked for last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    Continue,
    Step,
    /// Step while the PC stays in `[start, end)` (gdb's `vCont;r`).
    RangeStep(u64, u64),
    ReverseStep,
    ReverseContinue,
}

/// fx86 as a gdb target.
pub struct Fx86Target {
    pub(crate) tl: Timeline,
    pub(crate) exe: String,
    resume: Option<Resume>,
    pub(crate) breakpoints: std::collections::BTreeSet<u64>,
    pub(crate) watches: Vec<fx86_engine::mem::Watch>,
    /// The guest took a fatal signal (reported once, with its state intact).
    fatal_reported: Option<i32>,
    /// Lines for the server's log (the CLI prints them).
    pub log: Vec<String>,
    pub(crate) auxv: Vec<(u64, u64)>,
    /// The guest's thread pointer, shared with the connection guard for `qGetTLSAddr`.
    pub(crate) fs_base: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Size of the executable's static TLS block (from PT_TLS), if it has one.
    pub(crate) tls_block: Option<u64>,
    /// The program's bytes, for gdb's file access to `exe` when it is not in the guest's
    /// file system (a replay's program).
    pub(crate) exe_bytes: Option<std::sync::Arc<Vec<u8>>>,
    /// Files gdb has open through `vFile`.
    pub(crate) files: std::collections::BTreeMap<u32, std::sync::Arc<Vec<u8>>>,
}

impl Fx86Target {
    pub fn new(mut tl: Timeline, exe: String) -> Fx86Target {
        let auxv = tl.machine().kernel.auxv.clone();
        let fs = tl.machine().cpu.fs_base;
        let tls_block = std::fs::read(&exe).ok().and_then(|b| tls_block_size(&b));
        Fx86Target {
            auxv,
            fs_base: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(fs)),
            tls_block,
            tl,
            exe,
            resume: None,
            breakpoints: Default::default(),
            watches: Vec::new(),
            fatal_reported: None,
            log: Vec::new(),
            exe_bytes: None,
            files: Default::default(),
        }
    }

    /// Serves `bytes` as the program file to gdb (when `exe` names no file the guest sees).
    pub fn with_program(mut self, bytes: Vec<u8>) -> Fx86Target {
        if self.tls_block.is_none() {
            self.tls_block = tls_block_size(&bytes);
        }
        self.exe_bytes = Some(std::sync::Arc::new(bytes));
        self
    }

    /// Publishes the thread pointer for `qGetTLSAddr` answers.
    pub(crate) fn publish_fs_base(&mut self) {
        let fs = self.tl.machine().cpu.fs_base;
        self.fs_base.store(fs, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn sync_stops(&mut self) {
        let bps = self.breakpoints.clone();
        self.tl.set_breakpoints(bps);
        self.tl.set_watches(self.watches.clone());
    }

    fn stop_of_forward(&mut self, r: StopReason) -> Option<SingleThreadStopReason<u64>> {
        Some(match r {
            StopReason::Limit => return None,
            StopReason::Breakpoint(_) => SingleThreadStopReason::SwBreak(()),
            StopReason::Watch(hit) => watch_stop(&hit),
            StopReason::Exited(code) => SingleThreadStopReason::Exited(code as u8),
            StopReason::Signaled { sig, msg } => {
                if self.fatal_reported == Some(sig) {
                    SingleThreadStopReason::Terminated(Signal(sig as u8))
                } else {
                    self.log.push(format!("guest stopped by {msg}"));
                    self.fatal_reported = Some(sig);
                    SingleThreadStopReason::Signal(Signal(sig as u8))
                }
            }
        })
    }
}

/// The static TLS block size of an executable: PT_TLS's memsz rounded up to its alignment.
fn tls_block_size(elf: &[u8]) -> Option<u64> {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if elf.get(0..4)? != b"\x7fELF" {
        return None;
    }
    let phoff = u64_at(32)? as usize;
    let (phentsize, phnum) = (u16_at(54)?, u16_at(56)?);
    for i in 0..phnum.min(512) {
        let o = phoff.checked_add(i * phentsize)?;
        let ptype = elf
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))?;
        if ptype == 7 {
            let memsz = u64_at(o + 40)?;
            let align = u64_at(o + 48)?.max(1);
            return Some(memsz.div_ceil(align) * align);
        }
    }
    None
}

fn watch_stop(hit: &fx86_engine::mem::WatchHit) -> SingleThreadStopReason<u64> {
    let kind = match hit.watch.kind {
        EngineWatch::Write => WatchKind::Write,
        EngineWatch::Read => WatchKind::Read,
        EngineWatch::Access => WatchKind::ReadWrite,
    };
    SingleThreadStopReason::Watch {
        tid: (),
        kind,
        addr: hit.watch.start,
    }
}

impl Target for Fx86Target {
    type Arch = X86_64Linux;
    type Error = &'static str;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(
        &mut self,
    ) -> Option<gdbstub::target::ext::breakpoints::BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(
        &mut self,
    ) -> Option<gdbstub::target::ext::monitor_cmd::MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn support_exec_file(
        &mut self,
    ) -> Option<gdbstub::target::ext::exec_file::ExecFileOps<'_, Self>> {
        Some(self)
    }

    fn support_auxv(&mut self) -> Option<gdbstub::target::ext::auxv::AuxvOps<'_, Self>> {
        Some(self)
    }

    fn support_host_io(&mut self) -> Option<gdbstub::target::ext::host_io::HostIoOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        // fx86 never writes int3 into guest memory: breakpoints live in the engine.
        true
    }
}

impl SingleThreadBase for Fx86Target {
    fn read_registers(&mut self, regs: &mut Regs) -> TargetResult<(), Self> {
        let m = self.tl.machine();
        let g = &m.cpu.gpr;
        regs.gpr = [
            g[0], g[3], g[1], g[2], g[6], g[7], g[5], g[4], g[8], g[9], g[10], g[11], g[12], g[13],
            g[14], g[15],
        ];
        regs.rip = m.cpu.rip;
        regs.eflags = m.cpu.rflags() as u32;
        regs.seg = [0x33, 0x2b, 0, 0, 0, 0];
        let fx = m.fx_image();
        for (i, st) in regs.st.iter_mut().enumerate() {
            st.copy_from_slice(&fx[32 + 16 * i..42 + 16 * i]);
        }
        let x = &m.cpu.x87;
        let mut ftag = 0u32;
        for i in 0..8 {
            if x.ftw & (1 << i) == 0 {
                ftag |= 3 << (2 * i);
            }
        }
        regs.fpu = [x.fcw as u32, x.fsw as u32, ftag, 0, 0, 0, 0, x.fop as u32];
        regs.xmm = m.cpu.xmm;
        regs.mxcsr = m.cpu.mxcsr;
        regs.orig_rax = u64::MAX;
        regs.fs_base = m.cpu.fs_base;
        regs.gs_base = m.cpu.gs_base;
        Ok(())
    }

    fn write_registers(&mut self, regs: &Regs) -> TargetResult<(), Self> {
        let m = self.tl.machine();
        let g = &regs.gpr;
        let new = [
            g[0], g[2], g[3], g[1], g[7], g[6], g[4], g[5], g[8], g[9], g[10], g[11], g[12], g[13],
            g[14], g[15],
        ];
        let changed = new != m.cpu.gpr
            || regs.rip != m.cpu.rip
            || regs.eflags as u64 != (m.cpu.rflags() & 0xffff_ffff);
        m.cpu.gpr = new;
        m.cpu.rip = regs.rip;
        let hi = m.cpu.rflags() & !0xffff_ffff;
        m.cpu.set_rflags(hi | regs.eflags as u64 & 0x00fd_7fd5 | 2);
        m.cpu.xmm = regs.xmm;
        m.cpu.mxcsr = regs.mxcsr & 0xffff;
        m.cpu.fs_base = regs.fs_base;
        m.cpu.gs_base = regs.gs_base;
        self.publish_fs_base();
        if changed {
            self.tl.branch_here();
            self.log.push(format!(
                "gdb wrote registers at icount {}: later history is dropped; execution continues on a new branch",
                self.tl.icount()
            ));
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let m = self.tl.machine();
        // Read what is readable, byte by byte at the edges, as ptrace would.
        let mut n = 0;
        while n < data.len() {
            let a = start.wrapping_add(n as u64);
            let chunk = (4096 - (a & 0xfff) as usize).min(data.len() - n);
            if m.mem.read_bytes(a, &mut data[n..n + chunk]).is_err() {
                break;
            }
            n += chunk;
        }
        if n == 0 && !data.is_empty() {
            return Err(TargetError::Errno(14));
        }
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        let m = self.tl.machine();
        for k in 0..data.len() {
            if m.mem.vma_at(start.wrapping_add(k as u64)).is_none() {
                return Err(TargetError::Errno(14));
            }
        }
        m.mem.poke(start, data);
        self.tl.branch_here();
        self.log.push(format!(
            "gdb wrote memory at icount {}: later history is dropped; execution continues on a new branch",
            self.tl.icount()
        ));
        Ok(())
    }

    fn support_resume(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::singlethread::SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Fx86Target {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Some(Resume::Continue);
        Ok(())
    }

    fn support_single_step(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::singlethread::SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_range_step(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::singlethread::SingleThreadRangeSteppingOps<'_, Self>>
    {
        Some(self)
    }

    fn support_reverse_step(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::reverse_exec::ReverseStepOps<'_, (), Self>> {
        Some(self)
    }

    fn support_reverse_cont(
        &mut self,
    ) -> Option<gdbstub::target::ext::base::reverse_exec::ReverseContOps<'_, (), Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Fx86Target {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Some(Resume::Step);
        Ok(())
    }
}

impl SingleThreadRangeStepping for Fx86Target {
    fn resume_range_step(&mut self, start: u64, end: u64) -> Result<(), Self::Error> {
        self.resume = Some(Resume::RangeStep(start, end));
        Ok(())
    }
}

impl ReverseStep<()> for Fx86Target {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), Self::Error> {
        self.resume = Some(Resume::ReverseStep);
        Ok(())
    }
}

impl ReverseCont<()> for Fx86Target {
    fn reverse_cont(&mut self) -> Result<(), Self::Error> {
        self.resume = Some(Resume::ReverseContinue);
        Ok(())
    }
}

/// Runs the timeline for gdb, between packets.
pub enum EventLoop {}

/// Instructions run between looks at the connection (Ctrl-C).
const SLICE: u64 = 5_000_000;
/// The same for native execution (`--backend kvm`), in time.
const WALL_SLICE: std::time::Duration = std::time::Duration::from_millis(50);

impl BlockingEventLoop for EventLoop {
    type Target = Fx86Target;
    type Connection = Box<dyn ConnectionExt<Error = std::io::Error>>;
    type StopReason = SingleThreadStopReason<u64>;

    #[allow(clippy::type_complexity)]
    fn wait_for_stop_reason(
        t: &mut Fx86Target,
        conn: &mut Self::Connection,
    ) -> Result<
        Event<SingleThreadStopReason<u64>>,
        WaitForStopReasonError<&'static str, <Self::Connection as Connection>::Error>,
    > {
        t.sync_stops();
        let what = t.resume.take().unwrap_or(Resume::Continue);
        let r = Self::run_for(t, conn, what);
        t.publish_fs_base();
        r
    }

    fn on_interrupt(
        _t: &mut Fx86Target,
    ) -> Result<Option<SingleThreadStopReason<u64>>, &'static str> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

impl EventLoop {
    #[allow(clippy::type_complexity)]
    fn run_for(
        t: &mut Fx86Target,
        conn: &mut Box<dyn ConnectionExt<Error = std::io::Error>>,
        what: Resume,
    ) -> Result<
        Event<SingleThreadStopReason<u64>>,
        WaitForStopReasonError<&'static str, std::io::Error>,
    > {
        match what {
            Resume::Step => {
                let r = t.tl.step_forward();
                let stop = t
                    .stop_of_forward(r)
                    .unwrap_or(SingleThreadStopReason::DoneStep);
                Ok(Event::TargetStopped(stop))
            }
            Resume::RangeStep(start, end) => loop {
                let r = t.tl.step_in_range(start, end, SLICE);
                if let Some(stop) = t.stop_of_forward(r) {
                    return Ok(Event::TargetStopped(stop));
                }
                if !(start..end).contains(&t.tl.machine().cpu.rip) {
                    return Ok(Event::TargetStopped(SingleThreadStopReason::DoneStep));
                }
                if conn.peek().map(|b| b.is_some()).unwrap_or(true) {
                    let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                    return Ok(Event::IncomingData(byte));
                }
            },
            Resume::Continue => loop {
                let r = t.tl.continue_for(SLICE, WALL_SLICE);
                if let Some(stop) = t.stop_of_forward(r) {
                    return Ok(Event::TargetStopped(stop));
                }
                if conn.peek().map(|b| b.is_some()).unwrap_or(true) {
                    let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                    return Ok(Event::IncomingData(byte));
                }
            },
            Resume::ReverseStep => {
                t.tl.settle();
                if t.tl.icount() == 0 {
                    return Ok(Event::TargetStopped(SingleThreadStopReason::ReplayLog {
                        tid: None,
                        pos: ReplayLogPosition::Begin,
                    }));
                }
                t.fatal_reported = None;
                t.tl.step_back(1);
                Ok(Event::TargetStopped(SingleThreadStopReason::DoneStep))
            }
            Resume::ReverseContinue => {
                t.fatal_reported = None;
                // Ctrl-C from gdb interrupts a long backward search.
                let r = t
                    .tl
                    .reverse_continue_until(|| conn.peek().map(|b| b.is_some()).unwrap_or(false));
                let stop = match r {
                    ReverseStop::Breakpoint(_) => SingleThreadStopReason::SwBreak(()),
                    ReverseStop::Watch(hit) => watch_stop(&hit),
                    ReverseStop::HistoryStart => SingleThreadStopReason::ReplayLog {
                        tid: None,
                        pos: ReplayLogPosition::Begin,
                    },
                    ReverseStop::Cancelled => {
                        let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                        return Ok(Event::IncomingData(byte));
                    }
                };
                Ok(Event::TargetStopped(stop))
            }
        }
    }
}

/// Serves one gdb session over `conn`. Returns why it ended.
pub fn serve(
    target: &mut Fx86Target,
    conn: Box<dyn ConnectionExt<Error = std::io::Error>>,
) -> Result<DisconnectReason, String> {
    target.publish_fs_base();
    let tls = target.tls_block.map(|block| crate::sanitize::TlsInfo {
        fs_base: target.fs_base.clone(),
        block,
    });
    let conn: Box<dyn ConnectionExt<Error = std::io::Error>> =
        Box::new(crate::sanitize::Sanitized::new(conn, tls));
    let gdb = GdbStub::new(conn);
    gdb.run_blocking::<EventLoop>(target)
        .map_err(|e| format!("gdb session ended with an error: {e}"))
}

#[allow(dead_code)]
fn _assert_loop(_: run_blocking::Event<u8>) {}

/// Serves one gdb session on an accepted TCP connection.
pub fn serve_tcp(
    target: &mut Fx86Target,
    stream: std::net::TcpStream,
) -> Result<DisconnectReason, String> {
    let _ = stream.set_nodelay(true);
    serve(target, Box::new(stream))
}
