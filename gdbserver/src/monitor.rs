//! `monitor` commands: icount, goto, snapshots, help.

use crate::target::Fx86Target;
use gdbstub::target::ext::monitor_cmd::{outputln, ConsoleOutput, MonitorCmd};

impl MonitorCmd for Fx86Target {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        // Every command here speaks of exact positions.
        self.tl.settle();
        let text = String::from_utf8_lossy(cmd);
        let mut words = text.split_whitespace();
        match words.next() {
            Some("icount") => outputln!(out, "icount {}", self.tl.icount()),
            Some("goto") => match words.next().and_then(|w| w.parse::<u64>().ok()) {
                Some(n) => {
                    self.tl.goto(n);
                    outputln!(out, "icount {}", self.tl.icount());
                }
                None => outputln!(out, "usage: monitor goto <icount>"),
            },
            Some("snapshots") => {
                let (n, bytes) = self.tl.snapshot_stats();
                outputln!(
                    out,
                    "snapshots {} bytes {} interval {}",
                    n,
                    bytes,
                    self.tl.interval()
                );
            }
            _ => {
                outputln!(out, "fx86 monitor commands:");
                outputln!(out, "  monitor icount        the current instruction count");
                outputln!(out, "  monitor goto <N>      travel to instruction count N");
                outputln!(
                    out,
                    "  monitor snapshots     snapshot count, bytes held, interval"
                );
                outputln!(out, "  monitor help          this text");
            }
        }
        Ok(())
    }
}
