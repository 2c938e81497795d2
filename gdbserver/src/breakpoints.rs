//! Breakpoints and watchpoints. fx86 treats software and hardware breakpoints alike and never
//! writes int3 into guest memory (it would change the state hash); watchpoints are exact.

use crate::target::Fx86Target;
use fx86_engine::mem::{Watch, WatchKind as EngineWatch};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, HwBreakpoint, HwWatchpoint, SwBreakpoint, WatchKind,
};
use gdbstub::target::TargetResult;

impl Breakpoints for Fx86Target {
    fn support_sw_breakpoint(
        &mut self,
    ) -> Option<gdbstub::target::ext::breakpoints::SwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_breakpoint(
        &mut self,
    ) -> Option<gdbstub::target::ext::breakpoints::HwBreakpointOps<'_, Self>> {
        Some(self)
    }
    fn support_hw_watchpoint(
        &mut self,
    ) -> Option<gdbstub::target::ext::breakpoints::HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for Fx86Target {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.breakpoints.insert(addr);
        Ok(true)
    }
    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.breakpoints.remove(&addr))
    }
}

impl HwBreakpoint for Fx86Target {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.breakpoints.insert(addr);
        Ok(true)
    }
    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.breakpoints.remove(&addr))
    }
}

fn kind_of(k: WatchKind) -> EngineWatch {
    match k {
        WatchKind::Write => EngineWatch::Write,
        WatchKind::Read => EngineWatch::Read,
        WatchKind::ReadWrite => EngineWatch::Access,
    }
}

impl HwWatchpoint for Fx86Target {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        self.watches.push(Watch {
            start: addr,
            len,
            kind: kind_of(kind),
        });
        Ok(true)
    }
    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let w = Watch {
            start: addr,
            len,
            kind: kind_of(kind),
        };
        let before = self.watches.len();
        self.watches.retain(|x| *x != w);
        Ok(self.watches.len() != before)
    }
}
