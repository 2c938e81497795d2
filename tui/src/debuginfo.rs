//! What the program's ELF file says about its code: symbols (address <-> name), DWARF line
//! tables (address -> file:line) and call-frame information (unwinding a backtrace). Every
//! part is optional: a stripped program still gets a disassembly and a frame-pointer
//! backtrace. Reading a malformed file never fails; the broken part is simply absent.

use gimli::{EndianArcSlice, LittleEndian, UnwindSection};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type R = EndianArcSlice<LittleEndian>;

/// A source position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourcePos {
    pub file: String,
    pub line: u32,
}

/// One frame of a backtrace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub pc: u64,
    /// The canonical frame address (the caller's rsp after the call returns), when known.
    pub cfa: Option<u64>,
}

/// How to find a frame's CFA and return address at one pc (the parts of a CFI row we use).
#[derive(Clone, Copy, Debug)]
struct Rule {
    /// CFA = rsp + off (false) or rbp + off (true).
    from_rbp: bool,
    off: i64,
    /// Where the caller's rbp was saved, relative to the CFA (None: unchanged).
    rbp_at: Option<i64>,
    /// Where the return address is, relative to the CFA (None: undefined, the outermost
    /// frame such as `_start`).
    ra_at: Option<i64>,
}

/// One ELF object mapped in the guest: the program or a shared library.
struct Module {
    bias: u64,
    /// Guest addresses its loadable segments cover.
    lo: u64,
    hi: u64,
    /// (start, size, name) sorted by start, unbiased.
    symbols: Vec<(u64, u64, String)>,
    by_name: BTreeMap<String, u64>,
    /// (A mutex because the context fills its caches lazily and is not `Sync`.)
    lines: Option<std::sync::Mutex<addr2line::Context<R>>>,
    eh_frame: Option<(gimli::EhFrame<R>, gimli::BaseAddresses)>,
    rules: std::sync::Mutex<HashMap<u64, Option<Rule>>>,
}

fn section(file: &object::File, name: &str) -> R {
    let data = file
        .section_by_name(name)
        .and_then(|s| s.uncompressed_data().ok())
        .map(|d| d.into_owned())
        .unwrap_or_default();
    EndianArcSlice::new(Arc::from(data), LittleEndian)
}

impl Module {
    fn empty() -> Module {
        Module {
            bias: 0,
            lo: 0,
            hi: 0,
            symbols: Vec::new(),
            by_name: BTreeMap::new(),
            lines: None,
            eh_frame: None,
            rules: Default::default(),
        }
    }

    /// Reads an ELF object loaded `bias` bytes above its link-time addresses.
    fn load(elf: &[u8], bias: impl FnOnce(&object::File) -> u64) -> Module {
        let Ok(file) = object::File::parse(elf) else {
            return Module::empty();
        };
        let bias = bias(&file);
        let segs: Vec<(u64, u64)> = file
            .segments()
            .map(|s| (s.address(), s.address().saturating_add(s.size())))
            .filter(|s| s.1 > s.0)
            .collect();
        let lo = segs
            .iter()
            .map(|s| s.0)
            .min()
            .unwrap_or(0)
            .wrapping_add(bias);
        let hi = segs
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
            .wrapping_add(bias);
        // The symbol table, and the dynamic one (all a stripped library keeps).
        let all: Vec<(object::SymbolKind, u64, u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.address() != 0)
            .filter_map(|s| Some((s.kind(), s.address(), s.size(), s.name().ok()?.to_string())))
            .filter(|(_, _, _, n)| !n.is_empty())
            .collect();
        let by_name = all
            .iter()
            .filter(|s| matches!(s.0, object::SymbolKind::Text | object::SymbolKind::Data))
            .map(|(_, a, _, n)| (n.clone(), *a))
            .collect();
        let mut symbols: Vec<(u64, u64, String)> = all
            .into_iter()
            .filter(|s| s.0 == object::SymbolKind::Text)
            .map(|(_, a, z, n)| (a, z, n))
            .collect();
        // Of aliases at one address keep the public name (fprintf, not _IO_fprintf).
        symbols.sort_by(|a, b| {
            (a.0, a.2.starts_with('_'), &a.2).cmp(&(b.0, b.2.starts_with('_'), &b.2))
        });
        symbols.dedup_by_key(|s| s.0);
        let dwarf =
            gimli::Dwarf::load(|id| -> Result<R, gimli::Error> { Ok(section(&file, id.name())) });
        let lines = dwarf
            .ok()
            .filter(|_| file.section_by_name(".debug_line").is_some())
            .and_then(|d| addr2line::Context::from_dwarf(d).ok())
            .map(std::sync::Mutex::new);
        let eh_frame = file.section_by_name(".eh_frame").map(|s| {
            let mut bases = gimli::BaseAddresses::default().set_eh_frame(s.address());
            if let Some(t) = file.section_by_name(".text") {
                bases = bases.set_text(t.address());
            }
            if let Some(g) = file.section_by_name(".got") {
                bases = bases.set_got(g.address());
            }
            (gimli::EhFrame::from(section(&file, ".eh_frame")), bases)
        });
        Module {
            bias,
            lo,
            hi,
            symbols,
            by_name,
            lines,
            eh_frame,
            rules: Default::default(),
        }
    }

    fn contains(&self, addr: u64) -> bool {
        (self.lo..self.hi).contains(&addr)
    }

    /// `name+off` for a guest address inside a known function.
    fn symbolize(&self, addr: u64) -> Option<String> {
        let a = addr.wrapping_sub(self.bias);
        let i = self.symbols.partition_point(|s| s.0 <= a).checked_sub(1)?;
        let (start, size, name) = &self.symbols[i];
        let off = a - start;
        if off >= (*size).max(1) && !(off < 0x1000 && *size == 0) {
            return None;
        }
        Some(if off == 0 {
            name.clone()
        } else {
            format!("{name}+{off}")
        })
    }

    /// Start of the known function containing a guest address.
    fn function_start(&self, addr: u64) -> Option<u64> {
        let a = addr.wrapping_sub(self.bias);
        let i = self.symbols.partition_point(|s| s.0 <= a).checked_sub(1)?;
        let (start, size, _) = &self.symbols[i];
        (a - start < (*size).max(0x1000)).then(|| start.wrapping_add(self.bias))
    }

    /// The guest address of a function or global variable.
    fn lookup(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|a| a.wrapping_add(self.bias))
    }

    /// Where a guest address comes from in the source.
    fn source(&self, addr: u64) -> Option<SourcePos> {
        let ctx = self
            .lines
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let loc = ctx.find_location(addr.wrapping_sub(self.bias)).ok()??;
        Some(SourcePos {
            file: loc.file?.to_string(),
            line: loc.line.filter(|&l| l != 0)?,
        })
    }

    fn rule(&self, pc: u64) -> Option<Rule> {
        let a = pc.wrapping_sub(self.bias);
        let mut cache = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = cache.get(&a) {
            return *r;
        }
        let r = self.compute_rule(a);
        cache.insert(a, r);
        r
    }

    fn compute_rule(&self, a: u64) -> Option<Rule> {
        let (eh, bases) = self.eh_frame.as_ref()?;
        let mut ctx = gimli::UnwindContext::new();
        let row = eh
            .unwind_info_for_address(bases, &mut ctx, a, gimli::EhFrame::cie_from_offset)
            .ok()?;
        let (from_rbp, off) = match *row.cfa() {
            gimli::CfaRule::RegisterAndOffset { register, offset } => {
                if register == gimli::X86_64::RSP {
                    (false, offset)
                } else if register == gimli::X86_64::RBP {
                    (true, offset)
                } else {
                    return None;
                }
            }
            _ => return None,
        };
        let at = |r: gimli::Register| match row.register(r) {
            Some(gimli::RegisterRule::Offset(o)) => Some(o),
            _ => None,
        };
        Some(Rule {
            from_rbp,
            off,
            rbp_at: at(gimli::X86_64::RBP),
            ra_at: match row.register(gimli::X86_64::RA) {
                Some(gimli::RegisterRule::Undefined) => None,
                _ => Some(at(gimli::X86_64::RA).unwrap_or(-8)),
            },
        })
    }
}

/// What is known about the code in the guest: the program and each shared library mapped so
/// far (the front end adds libraries as the dynamic loader maps them).
pub struct DebugInfo {
    /// The program first.
    modules: Vec<Arc<Module>>,
    /// Paths of the libraries loaded (or found unreadable).
    seen: std::collections::BTreeSet<String>,
}

impl DebugInfo {
    /// Nothing known (a program whose file could not be read).
    pub fn empty() -> DebugInfo {
        DebugInfo {
            modules: vec![Arc::new(Module::empty())],
            seen: Default::default(),
        }
    }

    /// Reads `elf` (the program's file) loaded with its entry point at `entry` in the guest.
    pub fn load(elf: &[u8], entry: u64) -> DebugInfo {
        DebugInfo {
            modules: vec![Arc::new(Module::load(elf, |f| {
                entry.wrapping_sub(f.entry())
            }))],
            seen: Default::default(),
        }
    }

    /// Whether `path` (a mapped file) has been considered as a library already.
    pub fn knows(&self, path: &str) -> bool {
        self.seen.contains(path)
    }

    /// A copy that also knows the library `elf`, mapped with its first page at `base`.
    pub fn with_library(&self, path: &str, elf: Option<&[u8]>, base: u64) -> DebugInfo {
        let mut modules = self.modules.clone();
        if let Some(elf) = elf {
            let m = Module::load(elf, |f| {
                let lo = f.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
                base.wrapping_sub(lo)
            });
            if m.hi > m.lo {
                modules.push(Arc::new(m));
            }
        }
        let mut seen = self.seen.clone();
        seen.insert(path.to_string());
        DebugInfo { modules, seen }
    }

    /// The module whose code covers `addr` (the program when none does).
    fn module(&self, addr: u64) -> &Module {
        self.modules
            .iter()
            .find(|m| m.contains(addr))
            .unwrap_or(&self.modules[0])
    }

    pub fn has_lines(&self) -> bool {
        self.modules[0].lines.is_some()
    }

    /// `name+off` for a guest address inside a known function.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        self.module(addr).symbolize(addr)
    }

    /// Start of the known function containing a guest address.
    pub fn function_start(&self, addr: u64) -> Option<u64> {
        self.module(addr).function_start(addr)
    }

    /// The guest address of a function or global variable (the program's first).
    pub fn lookup(&self, name: &str) -> Option<u64> {
        self.modules.iter().find_map(|m| m.lookup(name))
    }

    /// Where a guest address comes from in the source.
    pub fn source(&self, addr: u64) -> Option<SourcePos> {
        self.module(addr).source(addr)
    }

    fn rule(&self, pc: u64) -> Option<Rule> {
        self.module(pc).rule(pc)
    }

    /// The CFA of the frame executing at `pc` with these rsp and rbp (CFI only).
    pub fn cfa(&self, pc: u64, rsp: u64, rbp: u64) -> Option<u64> {
        let r = self.rule(pc)?;
        Some(if r.from_rbp { rbp } else { rsp }.wrapping_add(r.off as u64))
    }

    /// Walks the stack from (rip, rsp, rbp) with CFI where the program has it and frame
    /// pointers elsewhere; `read` reads 8 bytes of guest memory.
    pub fn backtrace(
        &self,
        rip: u64,
        rsp: u64,
        rbp: u64,
        max: usize,
        mut read: impl FnMut(u64) -> Option<u64>,
    ) -> Vec<Frame> {
        let (mut pc, mut sp, mut bp) = (rip, rsp, rbp);
        let mut frames = Vec::new();
        while frames.len() < max && pc != 0 {
            // Frames above the first are at a return address: look up the call itself.
            let probe = if frames.is_empty() { pc } else { pc - 1 };
            let next = match self.rule(probe) {
                Some(r) => {
                    let cfa = if r.from_rbp { bp } else { sp }.wrapping_add(r.off as u64);
                    frames.push(Frame { pc, cfa: Some(cfa) });
                    let ra = r.ra_at.and_then(|o| read(cfa.wrapping_add(o as u64)));
                    let nbp = match r.rbp_at {
                        Some(o) => read(cfa.wrapping_add(o as u64)),
                        None => Some(bp),
                    };
                    ra.zip(nbp).map(|(ra, nbp)| (ra, cfa, nbp))
                }
                None if frames.is_empty() && self.symbolize(pc).is_none() => {
                    // Not in any known code (a jump through a bad pointer, or code without
                    // CFI): if it came from a call, the return address is on top.
                    frames.push(Frame {
                        pc,
                        cfa: Some(sp + 8),
                    });
                    read(sp).map(|ra| (ra, sp + 8, bp))
                }
                None => {
                    // Frame pointers: [rbp] = caller's rbp, [rbp+8] = return address.
                    frames.push(Frame { pc, cfa: None });
                    if bp <= sp || bp == 0 {
                        None
                    } else {
                        read(bp + 8)
                            .zip(read(bp))
                            .map(|(ra, nbp)| (ra, bp + 16, nbp))
                    }
                }
            };
            match next {
                Some((ra, nsp, nbp)) if nsp > sp && ra > 0x1000 => {
                    pc = ra;
                    sp = nsp;
                    bp = nbp;
                }
                _ => break,
            }
        }
        frames
    }
}
