//! What the panes show at one point in time, captured from the timeline.

use crate::debuginfo::DebugInfo;
use fx86_engine::{EventKind, Timeline};
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter, SymbolResolver, SymbolResult};
use std::collections::HashMap;

/// One disassembled line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisLine {
    pub addr: u64,
    /// `function+offset` when the address is inside a known function.
    pub symbol: Option<String>,
    pub text: String,
    pub current: bool,
    pub breakpoint: bool,
}

/// A mark on the timeline bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    Syscall,
    Snapshot,
    Hit,
    Signal,
}

/// The source pane's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub line: u32,
    /// (line number, text) around `line`; empty when the file cannot be read.
    pub lines: Vec<(u32, String)>,
}

/// Bytes shown in the memory pane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemView {
    pub addr: u64,
    /// None for unmapped bytes.
    pub bytes: Vec<Option<u8>>,
    /// Offsets whose value differs from the previous view of the same address.
    pub changed: Vec<usize>,
    /// What the user asked for (e.g. `rsp` or `account`).
    pub expr: String,
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
    pub xmm: Vec<u128>,
    pub disasm: Vec<DisLine>,
    pub source: Option<Source>,
    pub memory: Option<MemView>,
    pub backtrace: Vec<String>,
    /// Guest output as it was at this icount.
    pub output: String,
    /// Why the last move stopped.
    pub status: String,
    pub busy: bool,
    /// Marks on the timeline: (icount, kind).
    pub marks: Vec<(u64, Mark)>,
    pub snapshots: usize,
    pub breakpoints: Vec<u64>,
    pub watches: Vec<(u64, u64)>,
}

pub const NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
/// Index into the engine's GPR array for each name above.
pub const GPR_INDEX: [usize; 16] = [0, 3, 1, 2, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15];

/// Lets iced-x86 print `call main` instead of a bare address.
struct Symbols(std::sync::Arc<DebugInfo>, String);

impl SymbolResolver for Symbols {
    fn symbol(
        &mut self,
        _i: &iced_x86::Instruction,
        _op: u32,
        _iop: Option<u32>,
        address: u64,
        _size: u32,
    ) -> Option<SymbolResult<'_>> {
        self.1 = self.0.symbolize(address)?;
        Some(SymbolResult::with_str(address, self.1.as_str()))
    }
}

/// Source files read once (the front end may read host files; the guest never sees them).
#[derive(Default)]
pub struct SourceCache {
    files: HashMap<String, Option<Vec<String>>>,
}

impl SourceCache {
    fn lines(&mut self, file: &str) -> Option<&Vec<String>> {
        self.files
            .entry(file.to_string())
            .or_insert_with(|| {
                let text = std::fs::read(file).ok()?;
                Some(
                    String::from_utf8_lossy(&text)
                        .lines()
                        .map(|l| l.replace('\t', "    "))
                        .collect(),
                )
            })
            .as_ref()
    }
}

/// Debugger state the view shows besides the machine.
pub struct Context<'a> {
    pub di: std::sync::Arc<DebugInfo>,
    pub sources: &'a mut SourceCache,
    pub mem_addr: Option<(u64, String)>,
    pub hits: &'a [u64],
    pub breakpoints: Vec<u64>,
    pub watches: Vec<(u64, u64)>,
}

/// Rows of 16 bytes shown by the memory pane.
pub const MEM_BYTES: usize = 16 * 8;
/// Marks sent per view at most (the bar is never wider than that).
const MAX_MARKS: usize = 2000;

impl View {
    /// Captures the present of `tl`; `prev` marks changed registers and bytes.
    pub fn capture(tl: &mut Timeline, cx: Context, prev: Option<&View>, status: String) -> View {
        let icount = tl.icount();
        let end = tl.end();
        let output: String = tl
            .output_before(icount)
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect();
        let snaps = tl.snapshot_positions();
        let mut marks: Vec<(u64, Mark)> = tl
            .events_in(0..end + 1, MAX_MARKS)
            .iter()
            .map(|e| match e.kind {
                EventKind::Syscall(_) => (e.icount, Mark::Syscall),
                EventKind::Signal(_) => (e.icount, Mark::Signal),
            })
            .collect();
        let step = snaps.len().div_ceil(MAX_MARKS).max(1);
        marks.extend(snaps.iter().step_by(step).map(|&s| (s, Mark::Snapshot)));
        marks.extend(cx.hits.iter().map(|&h| (h, Mark::Hit)));
        marks.sort();
        let m = tl.machine();
        let g = m.cpu.gpr;
        let mut regs: Vec<(&'static str, u64)> = GPR_INDEX
            .iter()
            .zip(NAMES)
            .map(|(&i, n)| (n, g[i]))
            .collect();
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
        let xmm = m.cpu.xmm.to_vec();
        let rip = m.cpu.rip;
        let bps = m.breakpoints().clone();
        // Disassemble from the function's start when it is near, so that the instructions
        // before the current one show too; else from the current one.
        let from = cx
            .di
            .function_start(rip)
            .filter(|s| rip - s <= 4096)
            .unwrap_or(rip);
        let mut bytes = vec![0u8; (rip - from) as usize + 240];
        let n = m.mem.fetch(from, &mut bytes).unwrap_or(0);
        let mut dec = Decoder::with_ip(64, &bytes[..n], from, DecoderOptions::NONE);
        let mut fmt = IntelFormatter::with_options(
            Some(Box::new(Symbols(cx.di.clone(), String::new()))),
            None,
        );
        fmt.options_mut().set_first_operand_char_index(8);
        let mut all = Vec::new();
        let mut cur = None;
        while dec.can_decode() {
            let ins = dec.decode();
            if ins.ip() == rip {
                cur = Some(all.len());
            }
            if cur.is_some_and(|c| all.len() >= c + 40) {
                break;
            }
            let mut text = String::new();
            fmt.format(&ins, &mut text);
            all.push(DisLine {
                addr: ins.ip(),
                symbol: cx.di.symbolize(ins.ip()),
                text,
                current: ins.ip() == rip,
                breakpoint: bps.contains(&ins.ip()),
            });
        }
        // The decoding from the function's start did not meet rip: it is mid-instruction data
        // or the symbol is wrong; start at rip instead.
        let disasm = match cur {
            Some(c) => all.split_off(c.saturating_sub(8)),
            None if from != rip => {
                let mut dec = Decoder::with_ip(
                    64,
                    &bytes[(rip - from) as usize..n.max((rip - from) as usize)],
                    rip,
                    DecoderOptions::NONE,
                );
                let mut v = Vec::new();
                while dec.can_decode() && v.len() < 40 {
                    let ins = dec.decode();
                    let mut text = String::new();
                    fmt.format(&ins, &mut text);
                    v.push(DisLine {
                        addr: ins.ip(),
                        symbol: cx.di.symbolize(ins.ip()),
                        text,
                        current: ins.ip() == rip,
                        breakpoint: bps.contains(&ins.ip()),
                    });
                }
                v
            }
            None => all,
        };
        let disasm = if disasm.is_empty() {
            vec![DisLine {
                addr: rip,
                symbol: None,
                text: "(no executable memory here)".into(),
                current: true,
                breakpoint: false,
            }]
        } else {
            disasm
        };
        let source = cx.di.source(rip).map(|p| {
            let lines = cx
                .sources
                .lines(&p.file)
                .map(|all| {
                    let lo = (p.line as usize).saturating_sub(30).max(1);
                    let hi = (p.line as usize + 30).min(all.len());
                    (lo..=hi)
                        .filter_map(|n| Some((n as u32, all.get(n - 1)?.clone())))
                        .collect()
                })
                .unwrap_or_default();
            Source {
                file: p.file,
                line: p.line,
                lines,
            }
        });
        let memory = cx.mem_addr.map(|(addr, expr)| {
            let bytes: Vec<Option<u8>> = (0..MEM_BYTES as u64)
                .map(|i| m.mem.read_u8(addr.wrapping_add(i)).ok())
                .collect();
            let changed = match prev.and_then(|p| p.memory.as_ref()) {
                Some(pm) if pm.addr == addr => (0..MEM_BYTES)
                    .filter(|&i| pm.bytes.get(i) != bytes.get(i))
                    .collect(),
                _ => Vec::new(),
            };
            MemView {
                addr,
                bytes,
                changed,
                expr,
            }
        });
        let frames = cx
            .di
            .backtrace(rip, g[4], g[5], 32, |a| m.mem.read_u64(a).ok());
        let backtrace = frames
            .iter()
            .enumerate()
            .map(|(i, fr)| {
                let probe = if i == 0 { fr.pc } else { fr.pc - 1 };
                let name = cx.di.symbolize(fr.pc).unwrap_or_else(|| "??".into());
                let at = cx
                    .di
                    .source(probe)
                    .map(|p| {
                        let short = p.file.rsplit('/').next().unwrap_or(&p.file).to_string();
                        format!(" at {short}:{}", p.line)
                    })
                    .unwrap_or_default();
                format!("#{i} {:#x} in {name}{at}", fr.pc)
            })
            .collect();
        View {
            icount,
            end,
            rip,
            regs,
            changed,
            flags,
            xmm,
            disasm,
            source,
            memory,
            backtrace,
            output,
            status,
            busy: false,
            marks,
            snapshots: snaps.len(),
            breakpoints: cx.breakpoints,
            watches: cx.watches,
        }
    }
}
