//! What the panes show at one point in time, captured from the timeline.

use fx86_engine::Timeline;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

/// One disassembled line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisLine {
    pub addr: u64,
    pub text: String,
    pub current: bool,
    pub breakpoint: bool,
}

/// Everything drawn for one moment of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub icount: u64,
    pub end: u64,
    pub rip: u64,
    /// (name, value) in display order.
    pub regs: Vec<(&'static str, u64)>,
    /// Names of registers changed by the last move.
    pub changed: Vec<&'static str>,
    pub flags: String,
    pub disasm: Vec<DisLine>,
    /// Guest output as it was at this icount.
    pub output: String,
    /// Why the last move stopped.
    pub status: String,
    pub busy: bool,
    pub snapshots: Vec<u64>,
}

const NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

impl View {
    /// Captures the present of `tl`; `prev` marks changed registers.
    pub fn capture(tl: &mut Timeline, prev: Option<&View>, status: String) -> View {
        let icount = tl.icount();
        let end = tl.end();
        let output: String = tl
            .output_before(icount)
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect();
        let snapshots = tl.snapshot_positions();
        let m = tl.machine();
        let g = m.cpu.gpr;
        let order = [0usize, 3, 1, 2, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15];
        let mut regs: Vec<(&'static str, u64)> =
            order.iter().zip(NAMES).map(|(&i, n)| (n, g[i])).collect();
        regs.push(("rip", m.cpu.rip));
        regs.push(("fs_base", m.cpu.fs_base));
        let changed = match prev {
            Some(p) => regs
                .iter()
                .zip(&p.regs)
                .filter(|(a, b)| a.1 != b.1)
                .map(|(a, _)| a.0)
                .collect(),
            None => Vec::new(),
        };
        let f = m.cpu.rflags();
        let flags = [
            (0, "CF"),
            (2, "PF"),
            (4, "AF"),
            (6, "ZF"),
            (7, "SF"),
            (10, "DF"),
            (11, "OF"),
        ]
        .iter()
        .filter(|(b, _)| f & (1 << b) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(" ");
        let rip = m.cpu.rip;
        let bps = m.breakpoints().clone();
        let mut bytes = vec![0u8; 160];
        let n = m.mem.fetch(rip, &mut bytes).unwrap_or(0);
        let mut dec = Decoder::with_ip(64, &bytes[..n], rip, DecoderOptions::NONE);
        let mut fmt = IntelFormatter::new();
        let mut disasm = Vec::new();
        while dec.can_decode() && disasm.len() < 24 {
            let ins = dec.decode();
            let mut text = String::new();
            fmt.format(&ins, &mut text);
            disasm.push(DisLine {
                addr: ins.ip(),
                text,
                current: ins.ip() == rip,
                breakpoint: bps.contains(&ins.ip()),
            });
        }
        View {
            icount,
            end,
            rip,
            regs,
            changed,
            flags,
            disasm,
            output,
            status,
            busy: false,
            snapshots,
        }
    }
}
