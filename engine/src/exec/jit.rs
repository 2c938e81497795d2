//! A translator from hot blocks to host code (the interpreter's second tier).
//!
//! Guest and host are both x86-64, so the common integer instructions (mov, the ALU, shifts,
//! multiplies, lea, cmov/set) are run by the host itself, re-encoded with their registers
//! renamed and any memory operand replaced by a host pointer found through the interpreter's
//! software TLB. The host's status flags are the guest's while a translation runs.
//!
//! What keeps this exact:
//! - A translation runs whole blocks or a prefix of one, and is entered only when the budget
//!   covers every instruction it may execute; it reports how many it completed.
//! - Every memory access is checked against the TLB first: a miss (a page not yet touched, a
//!   watched page, a write to a shared or code page, an access across pages) leaves the
//!   translation before the instruction, with the guest's state exact, and the interpreter
//!   runs it (faults and signals included).
//! - Only instructions whose host result is the model's are translated. Where the host's
//!   undefined flags may differ from the model's (shifts, multiplies: see
//!   `kvm::divergent_flags`), the instruction is translated only if later instructions of the
//!   translation overwrite those flags before anything can see them, or (shifts by a
//!   constant) the model's flags are worked out after it.
//! - Nothing that depends on the host (cpuid, rdtsc, syscalls), no division (which faults),
//!   no string instructions, no FS/GS operands: those end a translation.

use super::Op;
use crate::cpu::fl;
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, ConditionCode, FlowControl, Instruction,
    InstructionBlock, InstructionInfoFactory, MemoryOperand, Mnemonic as M, OpKind, Register,
};

const R64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];
const R32: [Register; 16] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBX,
    Register::ESP,
    Register::EBP,
    Register::ESI,
    Register::EDI,
    Register::R8D,
    Register::R9D,
    Register::R10D,
    Register::R11D,
    Register::R12D,
    Register::R13D,
    Register::R14D,
    Register::R15D,
];
const R16: [Register; 16] = [
    Register::AX,
    Register::CX,
    Register::DX,
    Register::BX,
    Register::SP,
    Register::BP,
    Register::SI,
    Register::DI,
    Register::R8W,
    Register::R9W,
    Register::R10W,
    Register::R11W,
    Register::R12W,
    Register::R13W,
    Register::R14W,
    Register::R15W,
];
const R8: [Register; 16] = [
    Register::AL,
    Register::CL,
    Register::DL,
    Register::BL,
    Register::SPL,
    Register::BPL,
    Register::SIL,
    Register::DIL,
    Register::R8L,
    Register::R9L,
    Register::R10L,
    Register::R11L,
    Register::R12L,
    Register::R13L,
    Register::R14L,
    Register::R15L,
];

/// A general-purpose register's number (hardware order) and size in bytes; `None` for any
/// other register, and for AH/CH/DH/BH (which cannot be renamed freely).
fn gpr(r: Register) -> Option<(usize, usize)> {
    for (size, table) in [(8, &R64), (4, &R32), (2, &R16), (1, &R8)] {
        if let Some(n) = table.iter().position(|&x| x == r) {
            return Some((n, size));
        }
    }
    None
}

fn sized(n: usize, size: usize) -> Register {
    match size {
        8 => R64[n],
        4 => R32[n],
        2 => R16[n],
        _ => R8[n],
    }
}

/// The host register that holds the translation's context (the first argument).
const BASE: usize = 7;
const HOST_RSP: usize = 4;

/// What a translation reads and writes besides guest memory: the guest's registers and
/// flags on entry and exit, where it left off, and the TLB to look pages up in.
#[repr(C)]
pub(crate) struct Ctx {
    pub gpr: [u64; 16],
    /// The six arithmetic flags (in: the guest's; out: the host's after the last guest
    /// instruction, of which only those six count).
    pub flags: u64,
    pub exit_rip: u64,
    pub exit_count: u64,
    pub tlb: *const u8,
    /// Nonzero when the translation left before an instruction whose memory access the TLB
    /// could not serve: the interpreter must run that instruction.
    pub missed: u64,
    /// How many instructions the run may execute in all: a translation goes on into the
    /// next one (through the slot table) only if the next fits in what is left.
    pub budget: u64,
    /// The guest's MXCSR (translations with SSE instructions run under it).
    pub mxcsr: u64,
    /// Where a translation keeps host RAX while it loads the flags (`Tr::flags_from`).
    pub tmp: u64,
    pub xmm: [u128; 16],
}

impl Ctx {
    pub(crate) fn new(gpr: [u64; 16], flags: u64, rip: u64, tlb: *const u8) -> Ctx {
        Ctx {
            gpr,
            flags,
            exit_rip: rip,
            exit_count: 0,
            tlb,
            missed: 0,
            budget: 0,
            mxcsr: 0,
            tmp: 0,
            xmm: [0; 16],
        }
    }
}

const OFF_FLAGS: i64 = 128;
const OFF_EXIT_RIP: i64 = 136;
const OFF_EXIT_COUNT: i64 = 144;
const OFF_TLB: i64 = 152;
const OFF_MISSED: i64 = 160;
const OFF_BUDGET: i64 = 168;
const OFF_MXCSR: i64 = 176;
const OFF_TMP: i64 = 184;
const OFF_XMM: i64 = 192;

/// Offsets of the tag and pointer arrays in `mem::Tlb` (four arrays of 256 words).
const TLB_RTAG: i64 = 0;
const TLB_RPTR: i64 = 256 * 8;
const TLB_WTAG: i64 = 512 * 8;
const TLB_WPTR: i64 = 768 * 8;

/// Executions of a block before it is translated. (A translation costs about as much as
/// interpreting a few thousand instructions: code run less often than this is cheaper to
/// interpret.)
const HOT: u32 = 200;
const SLOTS: usize = 4096;
const REGION: usize = 32 << 20;
const NEVER: u32 = u32::MAX;

/// (Translated code reads `rip` and `code` to go from one translation to the next.)
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    rip: u64,
    last_page: u64,
    heat: u32,
    insns: u32,
    code: *const u8,
}

const SLOT_RIP: i64 = 0;
const SLOT_CODE: i64 = 24;
const SLOT_SHIFT: u32 = 5;
const _: () = assert!(std::mem::size_of::<Slot>() == 1 << SLOT_SHIFT);
const _: () = assert!(std::mem::offset_of!(Slot, code) == SLOT_CODE as usize);
const _: () = assert!(std::mem::offset_of!(Ctx, budget) == OFF_BUDGET as usize);
const _: () = assert!(std::mem::offset_of!(Ctx, missed) == OFF_MISSED as usize);
const _: () = assert!(std::mem::offset_of!(Ctx, mxcsr) == OFF_MXCSR as usize);
const _: () = assert!(std::mem::offset_of!(Ctx, xmm) == OFF_XMM as usize);
const _: () = assert!(std::mem::offset_of!(Ctx, tmp) == OFF_TMP as usize);
const _: () = assert!(std::mem::offset_of!(Ctx, tlb) == OFF_TLB as usize);
const _: () = assert!(std::mem::offset_of!(Ctx, exit_count) == OFF_EXIT_COUNT as usize);

const EMPTY: Slot = Slot {
    rip: u64::MAX,
    last_page: 0,
    heat: 0,
    insns: 0,
    code: std::ptr::null(),
};

type Trampoline = unsafe extern "sysv64" fn(ctx: *mut Ctx, code: *const u8);

/// Executable memory for translations; the trampoline that enters them is at its start.
struct Region {
    base: *mut u8,
    used: usize,
}

/// push rbx, rbp, r12..r15; sub rsp,8; stmxcsr [rsp]; call rsi; ldmxcsr [rsp]; add rsp,8;
/// pop them; ret. (Translations with SSE instructions load the guest's MXCSR.)
const TRAMPOLINE: &[u8] = &[
    0x53, 0x55, 0x41, 0x54, 0x41, 0x55, 0x41, 0x56, 0x41, 0x57, 0x48, 0x83, 0xec, 0x08, 0x0f, 0xae,
    0x1c, 0x24, 0xff, 0xd6, 0x0f, 0xae, 0x14, 0x24, 0x48, 0x83, 0xc4, 0x08, 0x41, 0x5f, 0x41, 0x5e,
    0x41, 0x5d, 0x41, 0x5c, 0x5d, 0x5b, 0xc3,
];
const TRAMPOLINE_SPACE: usize = 64;

impl Region {
    fn new() -> Option<Region> {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let base = p as *mut u8;
        // SAFETY: the mapping is at least TRAMPOLINE_SPACE bytes and ours alone.
        unsafe { std::ptr::copy_nonoverlapping(TRAMPOLINE.as_ptr(), base, TRAMPOLINE.len()) };
        Some(Region {
            base,
            used: TRAMPOLINE_SPACE,
        })
    }

    fn put(&mut self, code: &[u8]) -> Option<*const u8> {
        let at = (self.used + 15) & !15;
        if at + code.len() > REGION {
            return None;
        }
        // SAFETY: in bounds (checked); nothing executes this range until it is returned.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.base.add(at), code.len()) };
        self.used = at + code.len();
        // SAFETY: in bounds.
        Some(unsafe { self.base.add(at) } as *const u8)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no translation runs (they run
        // only inside `Jit::run`, which borrows the owner).
        unsafe {
            libc::munmap(self.base.cast(), REGION);
        }
    }
}

/// The translations of one machine, looked up by block start.
pub(crate) struct Jit {
    slots: Vec<Slot>,
    /// Every translation (and every block found untranslatable) by start, for the slot a
    /// colliding block took over: put back at once, not translated again.
    known: std::collections::HashMap<u64, Slot>,
    region: Option<Region>,
    /// Whether blocks are translated at all (off: the interpreter runs everything).
    pub enabled: bool,
    failed: bool,
    /// Each translation run is checked against the interpreter (`--check-jit`).
    pub checking: bool,
    /// Blocks translated so far.
    pub translated: u64,
    /// Link sites by the guest address they lead to: the address of a `jmp rel32` field
    /// in a translation, and that translation's guest address (see `Emit::link`).
    links: std::collections::HashMap<u64, Vec<(*mut u8, u64)>>,
}

impl Default for Jit {
    fn default() -> Self {
        Jit {
            slots: Vec::new(),
            known: Default::default(),
            region: None,
            enabled: ENABLED.load(std::sync::atomic::Ordering::Relaxed),
            failed: false,
            checking: CHECKING.load(std::sync::atomic::Ordering::Relaxed),
            translated: 0,
            links: Default::default(),
        }
    }
}

impl Jit {
    /// (Translated code computes the same: see `Tr::chain`.)
    #[inline(always)]
    fn slot(rip: u64) -> usize {
        ((rip ^ (rip >> 11)) as usize) & (SLOTS - 1)
    }

    /// The translation of the block `ops` at `rip` and how many instructions it may run, once
    /// the block is hot and if it can be translated.
    #[inline(always)]
    pub(crate) fn lookup(&mut self, rip: u64, ops: &[Op]) -> Option<(*const u8, u32)> {
        if self.slots.is_empty() {
            if !self.enabled || self.failed {
                return None;
            }
            self.slots = vec![EMPTY; SLOTS];
        }
        let k = Self::slot(rip);
        let s = &mut self.slots[k];
        if s.rip != rip {
            return self.take_slot(k, rip);
        }
        if !s.code.is_null() {
            return Some((s.code, s.insns));
        }
        if s.heat == NEVER {
            return None;
        }
        s.heat += 1;
        if s.heat < HOT {
            return None;
        }
        self.translate(k, rip, ops)
    }

    #[cold]
    fn take_slot(&mut self, k: usize, rip: u64) -> Option<(*const u8, u32)> {
        let s = self.known.get(&rip).copied().unwrap_or(Slot {
            rip,
            heat: 1,
            ..EMPTY
        });
        self.slots[k] = s;
        (!s.code.is_null()).then_some((s.code, s.insns))
    }

    /// The translation at `rip` if there is one already.
    #[inline(always)]
    pub(crate) fn translated(&self, rip: u64) -> Option<(*const u8, u32)> {
        let s = self.slots.get(Self::slot(rip))?;
        (s.rip == rip && !s.code.is_null()).then_some((s.code, s.insns))
    }

    #[cold]
    fn translate(&mut self, k: usize, rip: u64, ops: &[Op]) -> Option<(*const u8, u32)> {
        self.slots[k].heat = NEVER;
        let last = ops.last().map_or(rip, |o| o.next - 1);
        self.known.insert(
            rip,
            Slot {
                rip,
                last_page: last >> 12,
                heat: NEVER,
                ..EMPTY
            },
        );
        let (code, insns, links) = translate(ops, self.slots.as_ptr() as u64)?;
        if self.region.is_none() {
            self.region = Region::new();
            if self.region.is_none() {
                self.failed = true;
                return None;
            }
        }
        let region = self.region.as_mut()?;
        let p = match region.put(&code) {
            Some(p) => p,
            None => {
                // Full: start again (nothing runs while translating).
                self.slots.iter_mut().for_each(|s| *s = EMPTY);
                self.known.clear();
                self.links.clear();
                region.used = TRAMPOLINE_SPACE;
                region.put(&code)?
            }
        };
        let last = ops[insns as usize - 1].next - 1;
        self.slots[k] = Slot {
            rip,
            last_page: last >> 12,
            heat: NEVER,
            insns,
            code: p,
        };
        self.known.insert(rip, self.slots[k]);
        self.translated += 1;
        for (off, to) in links {
            // SAFETY: `off` is inside the code just put at `p`.
            let site = unsafe { p.add(off) } as *mut u8;
            self.links.entry(to).or_default().push((site, rip));
            if let Some(t) = self.known.get(&to).filter(|t| !t.code.is_null()) {
                Self::patch(site, t.code);
            }
        }
        for &(site, _) in self.links.get(&rip).into_iter().flatten() {
            Self::patch(site, p);
        }
        Some((p, insns))
    }

    /// Points link site `site` (a rel32 field) at `to`, or at the instruction after it
    /// (the exit's own way on) if `to` is null.
    fn patch(site: *mut u8, to: *const u8) {
        let rel = if to.is_null() {
            0
        } else {
            (to as i64 - (site as i64 + 4)) as i32
        };
        // SAFETY: `site` is a rel32 field of a translation in the region (writable; no
        // translation runs while the `Jit` is borrowed mutably), and the region is far
        // smaller than 2 GiB.
        unsafe { (site as *mut i32).write_unaligned(rel) };
    }

    /// Forgets the translations of code on page `pn`.
    pub(crate) fn invalidate_page(&mut self, pn: u64) {
        self.invalidate_where(|first, last| (first..=last).contains(&pn));
    }

    /// Forgets the translations of code on any of the pages `pages`.
    pub(crate) fn invalidate_pages(&mut self, pages: &std::collections::BTreeSet<u64>) {
        if !pages.is_empty() {
            self.invalidate_where(|first, last| {
                first <= last && pages.range(first..=last).next().is_some()
            });
        }
    }

    /// Forgets the translations whose code spans pages `first..=last` for which `hit` holds.
    fn invalidate_where(&mut self, hit: impl Fn(u64, u64) -> bool) {
        let on = |s: &Slot| s.rip != u64::MAX && hit(s.rip >> 12, s.last_page);
        for s in self.slots.iter_mut() {
            if on(s) {
                *s = EMPTY;
            }
        }
        let gone: Vec<u64> = self
            .known
            .values()
            .filter(|s| on(s) && !s.code.is_null())
            .map(|s| s.rip)
            .collect();
        self.known.retain(|_, s| !on(s));
        if gone.is_empty() {
            return;
        }
        // Jumps into the forgotten translations take their exits' own way again; the
        // forgotten translations' own sites are dropped.
        for rip in &gone {
            for &(site, _) in self.links.get(rip).into_iter().flatten() {
                Self::patch(site, std::ptr::null());
            }
        }
        for sites in self.links.values_mut() {
            sites.retain(|(_, from)| !gone.contains(from));
        }
    }

    /// Forgets every translation.
    pub(crate) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = EMPTY);
        self.known.clear();
        self.links.clear();
        if let Some(r) = self.region.as_mut() {
            r.used = TRAMPOLINE_SPACE;
        }
    }

    /// Runs translation `code` on `ctx`.
    pub(crate) fn run(&mut self, code: *const u8, ctx: &mut Ctx) {
        let region = self.region.as_ref().expect("a translation exists");
        // SAFETY: the region starts with the trampoline, which saves the callee-saved
        // registers and calls `code`, a translation made by `translate`: it touches only
        // `ctx`, the TLB's arrays and the guest pages they point at, its own stack slot, and
        // returns with DF clear.
        unsafe {
            let t: Trampoline = std::mem::transmute(region.base as *const u8);
            t(ctx, code);
        }
    }
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

static CHECKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether machines made from now on translate hot blocks (on by default).
/// Whether the host has LAHF and SAHF in 64-bit mode (CPUID 8000_0001h ECX bit 0).
fn has_sahf() -> bool {
    static SAHF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SAHF.get_or_init(|| std::arch::x86_64::__cpuid(0x8000_0001).ecx & 1 != 0)
}

pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether machines made from now on check every translation run against the interpreter
/// (slow; for testing): a disagreement stops the process with a message.
pub fn set_checking(on: bool) {
    CHECKING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The guest's arithmetic flags as a translation takes them (the rest host-safe).
pub(crate) fn entry_flags(guest: u64) -> u64 {
    (guest & fl::ARITH) | 0x202
}

/// Whether the guest's non-arithmetic flags let a translation run (no single-step trap, no
/// alignment checks, DF clear).
pub(crate) fn flags_allow(guest: u64) -> bool {
    guest & (fl::TF | fl::AC | fl::DF) == 0
}

const ARITH6: u32 = 0x3f; // iced RflagsBits: OF SF ZF AF CF PF

fn jcc(cc: ConditionCode) -> Option<Code> {
    use ConditionCode as C;
    Some(match cc {
        C::o => Code::Jo_rel32_64,
        C::no => Code::Jno_rel32_64,
        C::b => Code::Jb_rel32_64,
        C::ae => Code::Jae_rel32_64,
        C::e => Code::Je_rel32_64,
        C::ne => Code::Jne_rel32_64,
        C::be => Code::Jbe_rel32_64,
        C::a => Code::Ja_rel32_64,
        C::s => Code::Js_rel32_64,
        C::ns => Code::Jns_rel32_64,
        C::p => Code::Jp_rel32_64,
        C::np => Code::Jnp_rel32_64,
        C::l => Code::Jl_rel32_64,
        C::ge => Code::Jge_rel32_64,
        C::le => Code::Jle_rel32_64,
        C::g => Code::Jg_rel32_64,
        C::None => return None,
    })
}

/// Instructions run by the host as they are (renamed); `Some(write)`: translatable, and
/// whether a memory operand is written.
fn plain(op: &Op) -> Option<bool> {
    use super::Family as F;
    let i = &op.ins;
    let m = i.mnemonic();
    // The interpreter's own families for the commonest forms, and the rest of its integer
    // instructions whose results and defined flags are the host's.
    let ok = match op.fam {
        F::Mov
        | F::MovRR(..)
        | F::MovLoad64(_)
        | F::MovStore64(_)
        | F::MovRR32(..)
        | F::MovLoad32(_)
        | F::MovStore32(_)
        | F::MovRI(_)
        | F::AluRR(..)
        | F::AluRI(..)
        | F::Alu2(_)
        | F::Lea
        | F::Shift(_)
        | F::Imul
        | F::Movzx
        | F::Movsx
        | F::Cmov
        | F::Setcc
        | F::IncDec(_) => true,
        // (Not: rotates through CF and double shifts, whose undefined results the model
        // defines; division, which faults; the locked exchanges; bit scans and counts, which
        // the model's CPUID may not offer; the direction flag and AH.)
        F::Alu => !matches!(
            m,
            M::Rcl
                | M::Rcr
                | M::Shld
                | M::Shrd
                | M::Div
                | M::Idiv
                | M::Xadd
                | M::Cmpxchg
                | M::Cmpxchg8b
                | M::Cmpxchg16b
                | M::Bsf
                | M::Bsr
                | M::Tzcnt
                | M::Lzcnt
                | M::Popcnt
                | M::Cld
                | M::Std
                | M::Lahf
                | M::Sahf
        ),
        _ => false,
    };
    let sse = !ok && is_sse(m);
    if !(ok || sse) || i.has_lock_prefix() {
        return None;
    }
    if ok && (i.has_rep_prefix() || i.has_repne_prefix()) {
        return None;
    }
    let mut mem_op = None;
    for n in 0..i.op_count() {
        match i.op_kind(n) {
            OpKind::Register if sse && i.op_register(n).is_xmm() => {}
            OpKind::Register => {
                gpr(i.op_register(n))?;
            }
            OpKind::Memory => mem_op = Some(n),
            k if super::fast::is_immediate(k) => {}
            _ => return None,
        }
    }
    let Some(n) = mem_op else {
        return Some(false);
    };
    if matches!(m, M::Bt | M::Bts | M::Btr | M::Btc) {
        // (A register bit offset reaches beyond the operand.)
        return None;
    }
    if m == M::Lea {
        return Some(false);
    }
    if sse {
        // (A 16-bit store from an XMM register is SSE4.1.)
        if m == M::Pextrw && n == 0 {
            return None;
        }
        return Some(n == 0);
    }
    Some(n == 0 && !matches!(m, M::Cmp | M::Test) || m == M::Xchg)
}

/// SSE and SSE2 instructions of the model whose results are the host's: the arithmetic the
/// interpreter itself runs on the host, and moves, logic, compares, conversions and shuffles.
/// Not the approximations (rcpps, rsqrtps), which the model defines itself.
fn is_sse(m: M) -> bool {
    super::sse::runs_on_host(m)
        || matches!(
            m,
            M::Movaps
                | M::Movups
                | M::Movapd
                | M::Movupd
                | M::Movdqa
                | M::Movdqu
                | M::Movntdq
                | M::Movntps
                | M::Movntpd
                | M::Movq
                | M::Movd
                | M::Movss
                | M::Movsd
                | M::Movhlps
                | M::Movlhps
                | M::Movhps
                | M::Movlps
                | M::Movhpd
                | M::Movlpd
                | M::Movmskpd
                | M::Movmskps
                | M::Pmovmskb
                | M::Cvtsi2sd
                | M::Cvtsi2ss
                | M::Cvtsd2si
                | M::Cvttsd2si
                | M::Cvtss2si
                | M::Cvttss2si
                | M::Ucomisd
                | M::Ucomiss
                | M::Comisd
                | M::Comiss
                | M::Andpd
                | M::Andnpd
                | M::Orpd
                | M::Xorpd
                | M::Andps
                | M::Andnps
                | M::Orps
                | M::Xorps
                | M::Pand
                | M::Pandn
                | M::Por
                | M::Pxor
                | M::Pslldq
                | M::Psrldq
                | M::Shufps
                | M::Shufpd
                | M::Pshufd
                | M::Pshuflw
                | M::Pshufhw
                | M::Pinsrw
                | M::Pextrw
        )
}

/// Whether SSE instruction `i`'s memory operand must be 16-byte aligned (legacy SSE: every
/// 16-byte operand but those of the unaligned moves).
fn needs_alignment(i: &Instruction) -> bool {
    is_sse(i.mnemonic())
        && i.memory_size().size() == 16
        && !matches!(i.mnemonic(), M::Movups | M::Movupd | M::Movdqu)
}

/// How a translated instruction ends the translation, if it does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Runs and falls through (`Some(write)`: it has a memory operand).
    Plain(Option<bool>),
    Nop,
    Jcc,
    Jmp,
    Call,
    Ret,
    JmpInd,
    CallInd,
    Push,
    Pop,
}

fn kind(op: &Op) -> Option<Kind> {
    let i = &op.ins;
    if i.segment_prefix() == Register::FS || i.segment_prefix() == Register::GS {
        return None;
    }
    let has_mem = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
    if has_mem
        && (i.memory_base().is_gpr32()
            || i.memory_index().is_gpr32()
            || i.memory_base() == Register::EIP)
    {
        return None;
    }
    let m = i.mnemonic();
    let reg64 = |n: u32| i.op_kind(n) == OpKind::Register && i.op_register(n).is_gpr64();
    let mem64 = |n: u32| i.op_kind(n) == OpKind::Memory && i.memory_size().size() == 8;
    Some(match m {
        M::Nop | M::Endbr64 => Kind::Nop,
        M::Lea => Kind::Plain(plain(op).map(|_| None)?),
        _ if i.flow_control() == FlowControl::ConditionalBranch => {
            if !matches!(i.op0_kind(), OpKind::NearBranch64) || jcc(i.condition_code()).is_none() {
                return None;
            }
            Kind::Jcc
        }
        M::Jmp if i.op0_kind() == OpKind::NearBranch64 => Kind::Jmp,
        M::Jmp if reg64(0) || mem64(0) => Kind::JmpInd,
        M::Call if i.op0_kind() == OpKind::NearBranch64 => Kind::Call,
        M::Call if reg64(0) || mem64(0) => Kind::CallInd,
        M::Ret if i.op_count() == 0 => Kind::Ret,
        M::Push if i.code() == Code::Push_r64 => Kind::Push,
        M::Push if matches!(i.code(), Code::Pushq_imm32 | Code::Pushq_imm8) => Kind::Push,
        M::Pop if i.code() == Code::Pop_r64 && i.op0_register() != Register::RSP => Kind::Pop,
        _ => Kind::Plain(plain(op).map(|w| has_mem.then_some(w))?),
    })
}

/// Registers a translated instruction uses (read or written), implicit ones included.
fn uses(f: &mut InstructionInfoFactory, op: &Op, k: Kind) -> Option<u32> {
    let mut set = 0u32;
    if matches!(
        k,
        Kind::Push | Kind::Pop | Kind::Call | Kind::CallInd | Kind::Ret
    ) {
        set |= 1 << 4;
    }
    for u in f.info(&op.ins).used_registers() {
        let r = u.register();
        if matches!(
            r,
            Register::ES | Register::CS | Register::SS | Register::DS | Register::None
        ) {
            continue;
        }
        if r == Register::RIP || r == Register::EIP {
            continue;
        }
        if r.is_xmm() {
            set |= 1 << (16 + r.number());
            continue;
        }
        let (n, _) = gpr(r)?;
        set |= 1 << n;
    }
    Some(set)
}

/// Where a shift's result is (for `shift_fixable`).
#[derive(Clone, Copy)]
enum ShiftDest {
    /// A guest register.
    Reg(usize),
    /// Memory, at the host address in scratch 0.
    Mem,
}

/// For shl/sal/shr/sar of a register or memory by a constant that is not 0 (once masked) or
/// by CL: where the result is, its size in bits, and whether the count is CL (0 leaves the
/// flags alone).
fn shift_fixable(i: &Instruction) -> Option<(ShiftDest, u32, bool)> {
    if !matches!(i.mnemonic(), M::Shl | M::Sal | M::Shr | M::Sar) {
        return None;
    }
    let (dest, bits) = match i.op0_kind() {
        OpKind::Register => {
            let (g, size) = gpr(i.op0_register())?;
            (ShiftDest::Reg(g), size as u32 * 8)
        }
        OpKind::Memory => (ShiftDest::Mem, i.memory_size().size() as u32 * 8),
        _ => return None,
    };
    if !matches!(bits, 8 | 16 | 32 | 64) {
        return None;
    }
    let mask = if bits == 64 { 63 } else { 31 };
    match i.op_count() {
        1 => Some((dest, bits, false)),
        2 if i.op1_kind() == OpKind::Immediate8 => {
            (u32::from(i.immediate8()) & mask != 0).then_some((dest, bits, false))
        }
        // (Not a shift of RCX itself: the count is read again after the shift.)
        2 if i.op1_kind() == OpKind::Register
            && i.op1_register() == Register::CL
            && !matches!(dest, ShiftDest::Reg(1)) =>
        {
            Some((dest, bits, true))
        }
        _ => None,
    }
}

fn is_mul(i: &Instruction) -> bool {
    matches!(i.mnemonic(), M::Mul | M::Imul)
}

/// iced's SF, ZF, AF and PF: what mul and imul leave undefined (the model keeps them).
const SZAP: u32 = 0x2e;

/// The flags `i` reads; a multiply whose flags are made the model's (`fixed`) keeps SF, ZF,
/// AF and PF, so it reads them.
fn flags_read(i: &Instruction, fixed: bool) -> u32 {
    reads_flags(i) | if fixed && is_mul(i) { SZAP } else { 0 }
}

/// The flags `i` certainly overwrites; only CF and OF for a `fixed` multiply.
fn flags_killed(i: &Instruction, fixed: bool) -> u32 {
    if fixed && is_mul(i) {
        ARITH6 & !SZAP
    } else {
        crate::kvm::flags_killed(i) & ARITH6
    }
}

fn reads_flags(i: &Instruction) -> u32 {
    i.rflags_read() & ARITH6
}

fn touches_memory(k: Kind) -> bool {
    matches!(
        k,
        Kind::Plain(Some(_)) | Kind::Push | Kind::Pop | Kind::Call | Kind::Ret
    ) || matches!(k, Kind::JmpInd | Kind::CallInd)
}

/// Host code for the longest translatable prefix of `ops`, and its length in instructions.
fn translate(ops: &[Op], slots: u64) -> Option<Translation> {
    let mut f = InstructionInfoFactory::new();
    let mut kinds = Vec::new();
    let mut used = 0u32;
    for op in ops {
        let Some(k) = kind(op) else { break };
        let Some(u) = uses(&mut f, op, k) else { break };
        // Guest registers other than RSP and RDI stay in their own host registers; those
        // two and four scratch registers need free ones.
        let all = used | u;
        let fixed = all & 0xffff & !(1 << HOST_RSP | 1 << BASE);
        let free = 14 - fixed.count_ones();
        let want = 4 + (all >> HOST_RSP & 1) + (all >> BASE & 1);
        if free < want {
            break;
        }
        used = all;
        kinds.push(k);
        if !matches!(k, Kind::Plain(_) | Kind::Nop | Kind::Push | Kind::Pop) {
            break;
        }
    }
    // Flags the host leaves differently from the model must be dead before anything could
    // see them: read, or kept by an exit (the end, or a TLB miss).
    // (Cutting the translation short may leave an earlier one's flags live at the new end:
    // look again until nothing changes.)
    // A shift by an immediate of a register whose flags may be seen gets the model's flags
    // worked out after it instead (`Tr::model_shift_flags`).
    let mut fixed = vec![false; kinds.len()];
    // (Assumed of every host: probing it, as the KVM backend does, would cost each run a
    // millisecond, and hosts that agree with the model lose little.)
    'again: while !kinds.is_empty() {
        let mut end = kinds.len();
        'ops: for (k, op) in ops.iter().enumerate().take(kinds.len()) {
            let mut need = crate::kvm::divergent_flags(&op.ins) & ARITH6;
            if need == 0 || fixed[k] {
                continue;
            }
            for (j, later) in ops.iter().enumerate().take(kinds.len()).skip(k + 1) {
                if flags_read(&later.ins, fixed[j]) & need != 0 || touches_memory(kinds[j]) {
                    break;
                }
                need &= !flags_killed(&later.ins, fixed[j]);
                if need == 0 {
                    continue 'ops;
                }
            }
            // Seen (or kept at the end): worked out as the model's, or not translated.
            if shift_fixable(&op.ins).is_some() {
                fixed[k] = true;
                continue;
            }
            if is_mul(&op.ins) {
                // (It then overwrites fewer flags: look at the others again.)
                fixed[k] = true;
                continue 'again;
            }
            end = k;
            break;
        }
        if end == kinds.len() {
            break;
        }
        kinds.truncate(end);
    }
    if kinds.is_empty() {
        return None;
    }
    // Recompute the registers of the prefix kept.
    let mut used = 0u32;
    for (op, &k) in ops.iter().zip(&kinds) {
        used |= uses(&mut f, op, k)?;
    }
    let mut host = [0usize; 16];
    for (g, h) in host.iter_mut().enumerate() {
        *h = g;
    }
    let mut free: Vec<usize> = (0..16)
        .filter(|&h| h != HOST_RSP && h != BASE && (used >> h) & 1 == 0)
        .collect();
    if used >> HOST_RSP & 1 != 0 {
        host[HOST_RSP] = free.pop()?;
    }
    if used >> BASE & 1 != 0 {
        host[BASE] = free.pop()?;
    }
    // Prefer scratch registers that encode without a displacement as a base.
    free.sort_by_key(|&h| matches!(h, 5 | 13 | 12));
    if free.len() < 4 {
        return None;
    }
    let scratch = [free[0], free[1], free[2], free[3]];
    // The flags the guest's instructions have certainly written before each position. The
    // host's flags need the guest's loaded on entry only if something reads (or may leave
    // alone) flags not yet written, or the translation may leave with some written and
    // some not; otherwise the context keeps the guest's until all six are written.
    let n = kinds.len();
    let mut written = vec![0u32; n + 1];
    let mut load_flags = false;
    for (k, op) in ops.iter().enumerate().take(n) {
        let i = &op.ins;
        let w = written[k];
        let killed = flags_killed(i, fixed[k]);
        let modified = if fixed[k] && is_mul(i) {
            killed
        } else {
            i.rflags_modified() & ARITH6
        };
        if flags_read(i, fixed[k]) & !w != 0 || modified & !killed & !w != 0 {
            load_flags = true;
        }
        let leaves = touches_memory(kinds[k]);
        if leaves && w != 0 && w != ARITH6 {
            load_flags = true;
        }
        written[k + 1] = w | killed;
    }
    if written[n] != 0 && written[n] != ARITH6 {
        load_flags = true;
    }
    let mut t = Tr {
        e: Emit::default(),
        host,
        used,
        s: scratch,
        exits: Vec::new(),
        written,
        load_flags,
        slots,
        len: n as u32,
        rip: ops[0].ins.ip(),
        keep_mul_flags: false,
        spilled: false,
    };
    t.prologue()?;
    for k in 0..n {
        // The host's flags must hold the guest's before this instruction if it reads them,
        // writes some of them but not all six (those it leaves alone must be right after
        // it: a spilled copy would no longer be), or has its flags worked out after it. (A
        // TLB check spills them to the context; they are loaded back only where this needs
        // them.)
        let i = &ops[k].ins;
        let killed = flags_killed(i, fixed[k]);
        let restore = flags_read(i, fixed[k]) != 0
            || fixed[k]
            || (i.rflags_modified() & ARITH6 != 0 && killed != ARITH6);
        if t.spilled && restore && !touches_memory(kinds[k]) {
            t.reload_flags()?;
        }
        t.keep_mul_flags = fixed[k] && is_mul(i);
        t.op(&ops[k], kinds[k], k as u32, restore)?;
        if fixed[k] && !is_mul(i) {
            t.model_shift_flags(i)?;
        }
        if killed == ARITH6 {
            t.spilled = false;
        }
    }
    let last = kinds[n - 1];
    if matches!(last, Kind::Plain(_) | Kind::Nop | Kind::Push | Kind::Pop) {
        let rip = ops.get(n).map_or(ops[n - 1].next, |o| o.ins.ip());
        t.exit_now(rip, n as u32)?;
    }
    t.emit_exits()?;
    let (code, links) = t.e.finish()?;
    Some((code, n as u32, links))
}

#[derive(Default)]
struct Emit {
    ins: Vec<Instruction>,
    fixups: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
    /// Link sites (see `Emit::link`): the instruction and the guest address it may jump to.
    links: Vec<(usize, u64)>,
}

/// Link sites of encoded code: (offset of the rel32 field, guest address).
type Links = Vec<(usize, u64)>;

/// What `translate` made: the host code, how many guest instructions it covers, and its
/// link sites.
type Translation = (Vec<u8>, u32, Links);

impl Emit {
    fn push(&mut self, i: Result<Instruction, iced_x86::IcedError>) -> Option<()> {
        self.ins.push(i.ok()?);
        Some(())
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.ins.len());
    }
    fn branch(&mut self, code: Code, l: usize) -> Option<()> {
        self.fixups.push((self.ins.len(), l));
        self.push(Instruction::with_branch(code, 0))
    }
    /// A `jmp rel32` to the next instruction, which `Jit` patches to jump straight to the
    /// translation of `rip` once there is one (and back when it is forgotten). Raw bytes,
    /// so the encoder keeps its size.
    fn link(&mut self, rip: u64) -> Option<()> {
        self.links.push((self.ins.len(), rip));
        self.push(Instruction::with_declare_byte(&[0xe9, 0, 0, 0, 0]))
    }
    fn finish(mut self) -> Option<(Vec<u8>, Links)> {
        const ORG: u64 = 0x10_0000;
        for (k, i) in self.ins.iter_mut().enumerate() {
            i.set_ip(ORG + 16 * k as u64);
        }
        for &(at, l) in &self.fixups {
            let t = self.labels[l]?;
            if t >= self.ins.len() {
                return None;
            }
            self.ins[at].set_near_branch64(ORG + 16 * t as u64);
        }
        let r = BlockEncoder::encode(
            64,
            InstructionBlock::new(&self.ins, ORG),
            BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
        )
        .ok()?;
        let links = self
            .links
            .iter()
            .map(|&(k, rip)| Some((*r.new_instruction_offsets.get(k)? as usize + 1, rip)))
            .collect::<Option<Vec<_>>>()?;
        Some((r.code_buffer, links))
    }
}

struct Exit {
    label: usize,
    /// `None`: the target is already in the context.
    rip: Option<u64>,
    count: u32,
    /// Left before an instruction on a TLB miss.
    miss: bool,
    /// The guest's flags are in the context (spilled), not the host's.
    spilled: bool,
}

struct Tr {
    e: Emit,
    host: [usize; 16],
    used: u32,
    s: [usize; 4],
    exits: Vec<Exit>,
    /// See `translate`.
    written: Vec<u32>,
    load_flags: bool,
    /// Address of the slot table (`Jit::slots`, which never moves).
    slots: u64,
    /// Instructions in the translation.
    len: u32,
    /// Its guest address.
    rip: u64,
    /// The next instruction is a multiply whose flags must be the model's: SF, ZF, AF and
    /// PF as they were before it (see `emit_keeping_mul_flags`).
    keep_mul_flags: bool,
    /// The guest's flags were spilled to the context (for a TLB check) and the host's are
    /// garbage until an instruction overwrites all six or they are loaded back.
    spilled: bool,
}

fn xmm(n: usize) -> Register {
    const XMM: [Register; 16] = [
        Register::XMM0,
        Register::XMM1,
        Register::XMM2,
        Register::XMM3,
        Register::XMM4,
        Register::XMM5,
        Register::XMM6,
        Register::XMM7,
        Register::XMM8,
        Register::XMM9,
        Register::XMM10,
        Register::XMM11,
        Register::XMM12,
        Register::XMM13,
        Register::XMM14,
        Register::XMM15,
    ];
    XMM[n]
}

fn base_mem(base: usize, disp: i64) -> MemoryOperand {
    mem(R64[base], Register::None, 1, disp)
}

/// `[base + index*scale + disp]` (the displacement's size left to the encoder).
fn mem(base: Register, index: Register, scale: u32, disp: i64) -> MemoryOperand {
    MemoryOperand::with_base_index_scale_displ_size(base, index, scale, disp, u32::from(disp != 0))
}

impl Tr {
    fn h64(&self, g: usize) -> Register {
        R64[self.host[g]]
    }

    fn mov_load(&mut self, dst: usize, base: usize, disp: i64) -> Option<()> {
        self.e.push(Instruction::with2(
            Code::Mov_r64_rm64,
            R64[dst],
            base_mem(base, disp),
        ))
    }

    fn mov_store(&mut self, base: usize, disp: i64, src: usize) -> Option<()> {
        self.e.push(Instruction::with2(
            Code::Mov_rm64_r64,
            base_mem(base, disp),
            R64[src],
        ))
    }

    /// Whether the host's flags hold guest flags before instruction `k`.
    fn flags_live(&self, k: u32) -> bool {
        self.load_flags || self.written[k as usize] != 0
    }

    fn prologue(&mut self) -> Option<()> {
        // Enough budget left for the whole translation? Otherwise back to the caller.
        self.mov_load(0, BASE, OFF_BUDGET)?;
        self.e.push(Instruction::with2(
            Code::Sub_r64_rm64,
            Register::RAX,
            base_mem(BASE, OFF_EXIT_COUNT),
        ))?;
        self.e.push(Instruction::with2(
            Code::Cmp_rm64_imm32,
            Register::RAX,
            self.len,
        ))?;
        // Back to the caller with EXIT_RIP this translation's start (it may have been
        // entered through a link, which does not set it).
        let go = self.e.label();
        let bail = self.e.label();
        self.e.branch(Code::Jae_rel32_64, go)?;
        self.e.bind(bail);
        self.e.push(Instruction::with2(
            Code::Mov_r64_imm64,
            Register::RAX,
            self.rip,
        ))?;
        self.mov_store(BASE, OFF_EXIT_RIP, 0)?;
        self.e.push(Ok(Instruction::with(Code::Retnq)))?;
        self.e.bind(go);
        if self.used >> 16 != 0 {
            // SSE instructions run under the guest's MXCSR, and only with every exception
            // masked (an unmasked one is the interpreter's to deliver).
            self.e.push(Instruction::with2(
                Code::Mov_r32_rm32,
                Register::EAX,
                base_mem(BASE, OFF_MXCSR),
            ))?;
            self.e.push(Instruction::with2(
                Code::And_EAX_imm32,
                Register::EAX,
                0x1f80u32,
            ))?;
            self.e.push(Instruction::with2(
                Code::Cmp_EAX_imm32,
                Register::EAX,
                0x1f80u32,
            ))?;
            self.e.branch(Code::Jne_rel32_64, bail)?;
            self.e.push(Instruction::with1(
                Code::Ldmxcsr_m32,
                base_mem(BASE, OFF_MXCSR),
            ))?;
            for x in 0..16 {
                if self.used >> (16 + x) & 1 != 0 {
                    self.e.push(Instruction::with2(
                        Code::Movdqu_xmm_xmmm128,
                        xmm(x),
                        base_mem(BASE, OFF_XMM + 16 * x as i64),
                    ))?;
                }
            }
        }
        if self.load_flags {
            self.flags_from_ctx()?;
        }
        for g in 0..16 {
            if self.used >> g & 1 != 0 {
                self.mov_load(self.host[g], BASE, 8 * g as i64)?;
            }
        }
        Some(())
    }

    fn new_exit(&mut self, rip: Option<u64>, count: u32, miss: bool) -> usize {
        let label = self.e.label();
        self.exits.push(Exit {
            label,
            rip,
            count,
            miss,
            spilled: self.spilled,
        });
        label
    }

    /// Leaves here for `rip` after `count` instructions.
    fn exit_now(&mut self, rip: u64, count: u32) -> Option<()> {
        let l = self.new_exit(Some(rip), count, false);
        self.e.branch(Code::Jmp_rel32_64, l)
    }

    fn emit_exits(&mut self) -> Option<()> {
        let exits = std::mem::take(&mut self.exits);
        for x in &exits {
            self.e.bind(x.label);
            if x.miss {
                self.e.push(Instruction::with2(
                    Code::Mov_rm64_imm32,
                    base_mem(BASE, OFF_MISSED),
                    1u32,
                ))?;
            }
            for g in 0..16 {
                if self.used >> g & 1 != 0 {
                    self.mov_store(BASE, 8 * g as i64, self.host[g])?;
                }
            }
            if self.flags_live(x.count) && !x.spilled {
                self.e.push(Ok(Instruction::with(Code::Pushfq)))?;
                self.e.push(Instruction::with1(
                    Code::Pop_rm64,
                    base_mem(BASE, OFF_FLAGS),
                ))?;
            }
            if self.used >> 16 != 0 {
                for r in 0..16 {
                    if self.used >> (16 + r) & 1 != 0 {
                        self.e.push(Instruction::with2(
                            Code::Movdqu_xmmm128_xmm,
                            base_mem(BASE, OFF_XMM + 16 * r as i64),
                            xmm(r),
                        ))?;
                    }
                }
                self.e.push(Instruction::with1(
                    Code::Stmxcsr_m32,
                    base_mem(BASE, OFF_MXCSR),
                ))?;
            }
            self.e.push(Instruction::with2(
                Code::Add_rm64_imm32,
                base_mem(BASE, OFF_EXIT_COUNT),
                x.count,
            ))?;
            match x.rip {
                Some(rip) => {
                    if !x.miss {
                        self.e.link(rip)?;
                    }
                    self.e
                        .push(Instruction::with2(Code::Mov_r64_imm64, Register::RAX, rip))?;
                    self.mov_store(BASE, OFF_EXIT_RIP, 0)?;
                }
                None => self.mov_load(0, BASE, OFF_EXIT_RIP)?,
            }
            if x.miss {
                self.e.push(Ok(Instruction::with(Code::Retnq)))?;
            } else {
                self.chain(x.rip)?;
            }
        }
        Some(())
    }

    /// With the guest's next RIP in RAX (and everything stored in the context), jumps to its
    /// translation if the slot table has one, or returns to the caller. (The host's flags
    /// are free here: the guest's are in the context.)
    fn chain(&mut self, rip: Option<u64>) -> Option<()> {
        let (rax, rcx, rdx) = (Register::RAX, Register::RCX, Register::RDX);
        match rip {
            Some(rip) => {
                let slot = self.slots + ((Jit::slot(rip) as u64) << SLOT_SHIFT);
                self.e
                    .push(Instruction::with2(Code::Mov_r64_imm64, rcx, slot))?;
            }
            None => {
                self.e
                    .push(Instruction::with2(Code::Mov_r64_rm64, rcx, rax))?;
                self.e
                    .push(Instruction::with2(Code::Shr_rm64_imm8, rcx, 11u32))?;
                self.e
                    .push(Instruction::with2(Code::Xor_r64_rm64, rcx, rax))?;
                self.e.push(Instruction::with2(
                    Code::And_rm64_imm32,
                    rcx,
                    (SLOTS - 1) as u32,
                ))?;
                self.e
                    .push(Instruction::with2(Code::Shl_rm64_imm8, rcx, SLOT_SHIFT))?;
                self.e
                    .push(Instruction::with2(Code::Mov_r64_imm64, rdx, self.slots))?;
                self.e
                    .push(Instruction::with2(Code::Add_r64_rm64, rcx, rdx))?;
            }
        }
        self.e.push(Instruction::with2(
            Code::Cmp_r64_rm64,
            rax,
            mem(rcx, Register::None, 1, SLOT_RIP),
        ))?;
        let back = self.e.label();
        self.e.branch(Code::Jne_rel32_64, back)?;
        self.e.push(Instruction::with2(
            Code::Mov_r64_rm64,
            rcx,
            mem(rcx, Register::None, 1, SLOT_CODE),
        ))?;
        self.e
            .push(Instruction::with2(Code::Test_rm64_r64, rcx, rcx))?;
        self.e.branch(Code::Je_rel32_64, back)?;
        self.e.push(Instruction::with1(Code::Jmp_rm64, rcx))?;
        self.e.bind(back);
        self.e.push(Ok(Instruction::with(Code::Retnq)))
    }

    /// The guest address of `i`'s memory operand into host register `dst`.
    fn ea(&mut self, i: &Instruction, dst: usize) -> Option<()> {
        let base = i.memory_base();
        let index = i.memory_index();
        if base == Register::RIP {
            return self.e.push(Instruction::with2(
                Code::Mov_r64_imm64,
                R64[dst],
                i.ip_rel_memory_address(),
            ));
        }
        if base == Register::None && index == Register::None {
            return self.e.push(Instruction::with2(
                Code::Mov_r64_imm64,
                R64[dst],
                i.memory_displacement64(),
            ));
        }
        let map = |r: Register| -> Option<Register> {
            if r == Register::None {
                return Some(Register::None);
            }
            let (n, size) = gpr(r)?;
            (size == 8).then(|| self.h64(n))
        };
        let disp = i.memory_displacement64() as i64;
        if disp != disp as i32 as i64 {
            return None;
        }
        let m = mem(map(base)?, map(index)?, i.memory_index_scale(), disp);
        self.e
            .push(Instruction::with2(Code::Lea_r64_m, R64[dst], m))
    }

    /// With the guest address in scratch 0, spills the guest's flags to the context (if the
    /// host holds them), looks the page up and leaves (a miss) unless it is there for an
    /// `n`-byte access; then scratch 0 holds the host address, and the host's flags are the
    /// guest's again if `restore`.
    fn tlb(&mut self, n: u64, write: bool, rip: u64, count: u32, restore: bool) -> Option<()> {
        self.tlb_aligned(n, write, false, rip, count, restore)
    }

    /// `tlb`, and a miss as well if `aligned` and the address is not a multiple of 16.
    fn tlb_aligned(
        &mut self,
        n: u64,
        write: bool,
        aligned: bool,
        rip: u64,
        count: u32,
        restore: bool,
    ) -> Option<()> {
        let [s1, s2, s3, s4] = self.s;
        let live = self.flags_live(count);
        if live && !self.spilled {
            self.e.push(Ok(Instruction::with(Code::Pushfq)))?;
            self.e.push(Instruction::with1(
                Code::Pop_rm64,
                base_mem(BASE, OFF_FLAGS),
            ))?;
            self.spilled = true;
        }
        let miss = self.new_exit(Some(rip), count, true);
        if aligned {
            self.e
                .push(Instruction::with2(Code::Test_rm64_imm32, R64[s1], 15u32))?;
            self.e.branch(Code::Jne_rel32_64, miss)?;
        }
        self.e.push(Instruction::with2(
            Code::Lea_r64_m,
            R64[s2],
            base_mem(s1, n as i64 - 1),
        ))?;
        self.e
            .push(Instruction::with2(Code::Shr_rm64_imm8, R64[s2], 12u32))?;
        self.e
            .push(Instruction::with2(Code::Movzx_r32_rm8, R32[s2], R8[s2]))?;
        self.e
            .push(Instruction::with2(Code::Mov_r64_rm64, R64[s3], R64[s1]))?;
        self.e
            .push(Instruction::with2(Code::Shr_rm64_imm8, R64[s3], 12u32))?;
        self.mov_load(s4, BASE, OFF_TLB)?;
        let (tag, ptr) = if write {
            (TLB_WTAG, TLB_WPTR)
        } else {
            (TLB_RTAG, TLB_RPTR)
        };
        self.e.push(Instruction::with2(
            Code::Cmp_rm64_r64,
            mem(R64[s4], R64[s2], 8, tag),
            R64[s3],
        ))?;
        self.e.branch(Code::Jne_rel32_64, miss)?;
        self.e.push(Instruction::with2(
            Code::Mov_r64_rm64,
            R64[s4],
            mem(R64[s4], R64[s2], 8, ptr),
        ))?;
        self.e
            .push(Instruction::with2(Code::And_rm64_imm32, R64[s1], 0xfffu32))?;
        self.e
            .push(Instruction::with2(Code::Add_r64_rm64, R64[s1], R64[s4]))?;
        if live && restore {
            self.reload_flags()?;
        }
        Some(())
    }

    /// Loads the guest's flags spilled to the context back into the host's.
    fn reload_flags(&mut self) -> Option<()> {
        self.flags_from_ctx()?;
        self.spilled = false;
        Some(())
    }

    /// Sets the host's six arithmetic flags from the image in the context's `flags` (as
    /// `pushfq` stores them). `popfq` is slow (microcoded, and it also loads the system
    /// flags), so where the host has LAHF/SAHF: OF from an 8-bit add that overflows exactly
    /// when the image's OF is set, then the other five from AH; host RAX is kept in the
    /// context meanwhile.
    fn flags_from_ctx(&mut self) -> Option<()> {
        if !has_sahf() {
            self.e.push(Instruction::with1(
                Code::Push_rm64,
                base_mem(BASE, OFF_FLAGS),
            ))?;
            return self.e.push(Ok(Instruction::with(Code::Popfq)));
        }
        let (al, ah) = (Register::AL, Register::AH);
        self.mov_store(BASE, OFF_TMP, 0)?;
        self.e.push(Instruction::with2(
            Code::Mov_r32_rm32,
            Register::EAX,
            base_mem(BASE, OFF_FLAGS),
        ))?;
        self.e.push(Instruction::with2(Code::Mov_r8_rm8, al, ah))?;
        self.e.push(Instruction::with2(
            Code::And_AL_imm8,
            al,
            (fl::OF >> 8) as u32,
        ))?;
        self.e.push(Instruction::with2(
            Code::Add_AL_imm8,
            al,
            0x80 - (fl::OF >> 8) as u32,
        ))?;
        self.e.push(Instruction::with2(
            Code::Mov_r32_rm32,
            Register::EAX,
            base_mem(BASE, OFF_FLAGS),
        ))?;
        self.e.push(Instruction::with2(Code::Mov_r8_rm8, ah, al))?;
        self.e.push(Ok(Instruction::with(Code::Sahf)))?;
        self.mov_load(0, BASE, OFF_TMP)
    }

    /// `i` with its registers renamed and its memory operand (if any) at [scratch 0].
    fn renamed(&self, i: &Instruction) -> Option<Instruction> {
        let mut r = *i;
        for n in 0..i.op_count() {
            if i.op_kind(n) == OpKind::Register && !i.op_register(n).is_xmm() {
                let (g, size) = gpr(i.op_register(n))?;
                r.set_op_register(n, sized(self.host[g], size));
            }
        }
        let has_mem = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
        if has_mem {
            r.set_memory_base(R64[self.s[0]]);
            r.set_memory_index(Register::None);
            r.set_memory_index_scale(1);
            r.set_memory_displacement64(0);
            r.set_memory_displ_size(0);
            r.set_segment_prefix(Register::None);
        }
        Some(r)
    }

    /// Pushes host register `src` (a guest value) on the guest's stack.
    fn push_reg(&mut self, src: usize, rip: u64, count: u32, restore: bool) -> Option<()> {
        let rsp = self.host[HOST_RSP];
        self.e.push(Instruction::with2(
            Code::Lea_r64_m,
            R64[self.s[0]],
            base_mem(rsp, -8),
        ))?;
        self.tlb(8, true, rip, count, restore)?;
        self.mov_store(self.s[0], 0, src)?;
        self.e.push(Instruction::with2(
            Code::Lea_r64_m,
            R64[rsp],
            base_mem(rsp, -8),
        ))
    }

    fn op(&mut self, op: &Op, k: Kind, count: u32, restore: bool) -> Option<()> {
        let i = &op.ins;
        let rip = i.ip();
        let s0 = self.s[0];
        match k {
            Kind::Nop => Some(()),
            Kind::Plain(None) if i.mnemonic() == M::Lea => {
                let (g, size) = gpr(i.op0_register())?;
                let dst = self.host[g];
                if i.memory_base() == Register::RIP {
                    let v = i.ip_rel_memory_address();
                    let v = match size {
                        8 => v,
                        4 => v & 0xffff_ffff,
                        _ => return None,
                    };
                    return self
                        .e
                        .push(Instruction::with2(Code::Mov_r64_imm64, R64[dst], v));
                }
                let mut r = *i;
                r.set_op0_register(sized(dst, size));
                let map = |x: Register| -> Option<Register> {
                    if x == Register::None {
                        return Some(Register::None);
                    }
                    let (n, s) = gpr(x)?;
                    (s == 8).then(|| R64[self.host[n]])
                };
                r.set_memory_base(map(i.memory_base())?);
                r.set_memory_index(map(i.memory_index())?);
                self.e.push(Ok(r))
            }
            Kind::Plain(None) => {
                let r = self.renamed(i)?;
                self.emit_keeping_mul_flags(r)
            }
            Kind::Plain(Some(write)) => {
                self.ea(i, s0)?;
                let n = i.memory_size().size() as u64;
                if n == 0 || n > 16 {
                    return None;
                }
                self.tlb_aligned(n, write, needs_alignment(i), rip, count, restore)?;
                let r = self.renamed(i)?;
                self.emit_keeping_mul_flags(r)
            }
            Kind::Push => {
                if i.code() != Code::Push_r64 {
                    return self.push_imm(i.immediate(0), rip, count, restore);
                }
                let (g, _) = gpr(i.op0_register())?;
                self.push_reg(self.host[g], rip, count, restore)
            }
            Kind::Pop => {
                let (g, _) = gpr(i.op0_register())?;
                let rsp = self.host[HOST_RSP];
                self.e
                    .push(Instruction::with2(Code::Mov_r64_rm64, R64[s0], R64[rsp]))?;
                self.tlb(8, false, rip, count, restore)?;
                self.mov_load(self.host[g], s0, 0)?;
                self.e.push(Instruction::with2(
                    Code::Lea_r64_m,
                    R64[rsp],
                    base_mem(rsp, 8),
                ))
            }
            Kind::Jcc => {
                let code = jcc(i.condition_code())?;
                let taken = self.new_exit(Some(i.near_branch64()), count + 1, false);
                self.e.branch(code, taken)?;
                self.exit_now(op.next, count + 1)
            }
            Kind::Jmp => self.exit_now(i.near_branch64(), count + 1),
            Kind::Call => {
                self.push_imm(op.next, rip, count, false)?;
                self.exit_now(i.near_branch64(), count + 1)
            }
            Kind::Ret => {
                let rsp = self.host[HOST_RSP];
                self.e
                    .push(Instruction::with2(Code::Mov_r64_rm64, R64[s0], R64[rsp]))?;
                self.tlb(8, false, rip, count, false)?;
                self.mov_load(s0, s0, 0)?;
                self.mov_store(BASE, OFF_EXIT_RIP, s0)?;
                self.e.push(Instruction::with2(
                    Code::Lea_r64_m,
                    R64[rsp],
                    base_mem(rsp, 8),
                ))?;
                let l = self.new_exit(None, count + 1, false);
                self.e.branch(Code::Jmp_rel32_64, l)
            }
            Kind::JmpInd | Kind::CallInd => {
                if i.op0_kind() == OpKind::Register {
                    let (g, _) = gpr(i.op0_register())?;
                    self.mov_store(BASE, OFF_EXIT_RIP, self.host[g])?;
                } else {
                    self.ea(i, s0)?;
                    self.tlb(8, false, rip, count, false)?;
                    self.mov_load(s0, s0, 0)?;
                    self.mov_store(BASE, OFF_EXIT_RIP, s0)?;
                }
                if k == Kind::CallInd {
                    self.push_imm(op.next, rip, count, false)?;
                }
                let l = self.new_exit(None, count + 1, false);
                self.e.branch(Code::Jmp_rel32_64, l)
            }
        }
    }

    /// After shift `i` (see `shift_fixable`), replaces the host's AF and OF, which the
    /// manuals leave undefined, by the model's: AF set; OF the result's top bit xor CF (shl),
    /// xor the bit below it (shr), clear (sar). A count of 0 (in CL) changes nothing.
    fn model_shift_flags(&mut self, i: &Instruction) -> Option<()> {
        let (dest, bits, by_cl) = shift_fixable(i)?;
        // Scratch 0 may hold the operand's host address: the flags go to scratch 3.
        let [s0, s1, s2, s3] = self.s.map(|r| R64[r]);
        let done = self.e.label();
        self.e.push(Ok(Instruction::with(Code::Pushfq)))?;
        if by_cl {
            let mask = if bits == 64 { 63u32 } else { 31 };
            self.e.push(Instruction::with2(
                Code::Mov_r32_rm32,
                R32[self.s[1]],
                Register::ECX,
            ))?;
            self.e.push(Instruction::with2(
                Code::And_rm32_imm32,
                R32[self.s[1]],
                mask,
            ))?;
            self.e.branch(Code::Je_rel32_64, done)?;
        }
        self.e.push(Instruction::with1(Code::Pop_r64, s3))?;
        if i.mnemonic() != M::Sar {
            match dest {
                ShiftDest::Reg(g) => {
                    let res = R64[self.host[g]];
                    self.e
                        .push(Instruction::with2(Code::Mov_r64_rm64, s1, res))?;
                }
                ShiftDest::Mem => {
                    let m = mem(s0, Register::None, 1, 0);
                    let r32 = R32[self.s[1]];
                    self.e.push(match bits {
                        8 => Instruction::with2(Code::Movzx_r32_rm8, r32, m),
                        16 => Instruction::with2(Code::Movzx_r32_rm16, r32, m),
                        32 => Instruction::with2(Code::Mov_r32_rm32, r32, m),
                        _ => Instruction::with2(Code::Mov_r64_rm64, s1, m),
                    })?;
                }
            }
        }
        match i.mnemonic() {
            M::Sar => self.e.push(Instruction::with2(
                Code::Xor_r32_rm32,
                R32[self.s[1]],
                R32[self.s[1]],
            ))?,
            M::Shr => {
                self.e
                    .push(Instruction::with2(Code::Shr_rm64_imm8, s1, bits - 2))?;
                self.e
                    .push(Instruction::with2(Code::Mov_r64_rm64, s2, s1))?;
                self.e
                    .push(Instruction::with2(Code::Shr_rm64_imm8, s2, 1u32))?;
                self.e
                    .push(Instruction::with2(Code::Xor_r64_rm64, s1, s2))?;
            }
            _ => {
                self.e
                    .push(Instruction::with2(Code::Shr_rm64_imm8, s1, bits - 1))?;
                self.e
                    .push(Instruction::with2(Code::Xor_r64_rm64, s1, s3))?;
            }
        }
        self.e
            .push(Instruction::with2(Code::And_rm64_imm8, s1, 1i32))?;
        self.e
            .push(Instruction::with2(Code::Shl_rm64_imm8, s1, 11u32))?;
        self.e.push(Instruction::with2(
            Code::And_rm64_imm32,
            s3,
            !(fl::OF | fl::AF) as i32,
        ))?;
        self.e
            .push(Instruction::with2(Code::Or_rm64_imm8, s3, fl::AF as i32))?;
        self.e.push(Instruction::with2(Code::Or_r64_rm64, s3, s1))?;
        // (Host flags are the guest's here: the context's copy is not needed.)
        self.mov_store(BASE, OFF_FLAGS, self.s[3])?;
        self.flags_from_ctx()?;
        if by_cl {
            let end = self.e.label();
            self.e.branch(Code::Jmp_rel32_64, end)?;
            self.e.bind(done);
            self.e.push(Ok(Instruction::with(Code::Popfq)))?;
            self.e.bind(end);
        }
        Some(())
    }

    /// Emits `r`; if `keep_mul_flags`, with SF, ZF, AF and PF put back as they were before it
    /// (the model's rule for multiplies; the host's differ).
    fn emit_keeping_mul_flags(&mut self, r: Instruction) -> Option<()> {
        if !std::mem::take(&mut self.keep_mul_flags) {
            return self.e.push(Ok(r));
        }
        let [s0, s1, _, _] = self.s.map(|h| R64[h]);
        self.e.push(Ok(Instruction::with(Code::Pushfq)))?;
        self.e.push(Ok(r))?;
        self.e.push(Ok(Instruction::with(Code::Pushfq)))?;
        self.e.push(Instruction::with1(Code::Pop_r64, s1))?;
        self.e.push(Instruction::with1(Code::Pop_r64, s0))?;
        let keep = (fl::SF | fl::ZF | fl::AF | fl::PF) as i32;
        self.e
            .push(Instruction::with2(Code::And_rm64_imm32, s0, keep))?;
        self.e
            .push(Instruction::with2(Code::And_rm64_imm32, s1, !keep))?;
        self.e.push(Instruction::with2(Code::Or_r64_rm64, s0, s1))?;
        self.mov_store(BASE, OFF_FLAGS, self.s[0])?;
        self.flags_from_ctx()
    }

    /// Pushes the 64-bit value `v` on the guest's stack.
    fn push_imm(&mut self, v: u64, rip: u64, count: u32, restore: bool) -> Option<()> {
        let rsp = self.host[HOST_RSP];
        let s0 = self.s[0];
        self.e.push(Instruction::with2(
            Code::Lea_r64_m,
            R64[s0],
            base_mem(rsp, -8),
        ))?;
        self.tlb(8, true, rip, count, restore)?;
        // Scratch 1 is free again once the host address is in scratch 0.
        let s1 = self.s[1];
        self.e
            .push(Instruction::with2(Code::Mov_r64_imm64, R64[s1], v))?;
        self.mov_store(s0, 0, s1)?;
        self.e.push(Instruction::with2(
            Code::Lea_r64_m,
            R64[rsp],
            base_mem(rsp, -8),
        ))
    }
}
