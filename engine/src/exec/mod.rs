//! Instruction semantics, split by family as Blink does: integer ALU (`alu.rs`), control flow
//! and the stack (`flow.rs`), string instructions (`string.rs`), SSE/SSE2 (`sse.rs`), x87
//! (`x87.rs`) and system instructions (`system.rs`). This module has the operand helpers they
//! share and the dispatch from an iced-x86 `Instruction` to a family.
//!
//! Contract of every handler: it either completes the instruction (registers, memory, flags,
//! RIP) or returns an [`Ex`] having changed nothing the guest can see, so that a signal handler
//! sees the faulting instruction as not executed.

mod alu;
mod fast;
mod flow;
pub mod jit;
mod sse;
mod string;
mod system;
mod x87;

use crate::cpu::mask;
use crate::machine::Machine;
use crate::mem::Fault;
use iced_x86::{Instruction, Mnemonic, OpKind, Register};

/// Why an instruction did not complete normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ex {
    /// A memory access fault (SIGSEGV).
    Fault(Fault),
    /// Divide error (SIGFPE, FPE_INTDIV).
    DivideError,
    /// An instruction fx86 does not implement or that is invalid (SIGILL); the text names it.
    /// (Boxed so that `Ex`, and every handler's `Result`, stays two words.)
    Illegal(Box<String>),
    /// `int3` (SIGTRAP).
    Breakpoint,
    /// A privileged instruction or a general-protection fault (SIGSEGV with si_addr 0).
    GeneralProtection,
    /// Unaligned SSE access (SIGSEGV, as #GP).
    Misaligned,
    /// An SSE floating-point exception that the guest unmasked (SIGFPE).
    SimdFp(u32),
    /// An x87 exception that the guest unmasked (SIGFPE).
    X87Fp,
    /// The guest asked to stop (exit, or a syscall that ended the run).
    Stop,
    /// A machine replaying a native stretch reached the event that ended it (a syscall or
    /// `rdtsc`), which it must not execute itself.
    Pause,
}

impl From<Fault> for Ex {
    fn from(f: Fault) -> Ex {
        Ex::Fault(f)
    }
}

pub type R<T> = Result<T, Ex>;

/// Handler family of a decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// (A plain tag byte: dispatch on it is one load and an indexed jump.)
#[repr(u8)]
pub(crate) enum Family {
    Mov,
    /// The commonest movs, with nothing left to look up: 64-bit register to register (the
    /// destination's and source's numbers), a 64-bit load into a register and a 64-bit store
    /// of one (the memory operand in `Op::m`).
    MovRR(u8, u8),
    MovLoad64(u8),
    MovStore64(u8),
    /// The same at 32 bits (the destination register zero-extended).
    MovRR32(u8, u8),
    MovLoad32(u8),
    MovStore32(u8),
    /// An immediate into a 64- or 32-bit register (the value, zero-extended for 32 bits, in
    /// `Op::imm2`).
    MovRI(u8),
    /// add/sub/cmp/and/test/or/xor of 64- or 32-bit registers (`Op::bits`): destination and
    /// source, or destination and an immediate (masked to the width, in `Op::imm2`).
    AluRR(fast::AluOp, u8, u8),
    AluRI(fast::AluOp, u8),
    /// add/sub/cmp/and/test/or/xor with pre-resolved operands.
    Alu2(fast::AluOp),
    Lea,
    /// shl/sal/shr/sar of a GPR or memory by an immediate, CL or 1.
    Shift(fast::ShiftOp),
    /// Two- and three-operand imul into a GPR.
    Imul,
    /// movzx / movsx / movsxd into a GPR (`bits2` = source size).
    Movzx,
    Movsx,
    /// Direct near jmp (target in `Op::target`), and jmp/call through a 64-bit register or
    /// memory operand.
    Jmp,
    JmpInd,
    CallInd,
    /// cmovcc into a GPR and setcc (condition in `Op::cc`).
    Cmov,
    Setcc,
    /// inc (true) / dec (false) of a GPR or memory.
    IncDec(bool),
    /// 64-bit push/pop of a register, immediate or memory operand.
    Push,
    Pop,
    Call,
    Ret,
    Jcc,
    Alu,
    Flow,
    String,
    Nop,
    System,
    /// SSE, x87, or not implemented.
    Other,
}

/// A decoded instruction with what was worked out about it at decode time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op {
    pub ins: Instruction,
    pub fam: Family,
    /// Operand size in bits of operand 0 (where meaningful).
    pub bits: u8,
    pub a: fast::Opnd,
    pub b: fast::Opnd,
    pub m: fast::MemRef,
    /// Condition code for Jcc (0..15).
    pub cc: u8,
    /// Address of the next instruction (iced's `next_ip`, worked out once).
    pub next: u64,
    /// Size in bits of operand 1 (movzx/movsx sources).
    pub bits2: u8,
    /// Operand 2 when it is an immediate (three-operand imul).
    pub imm2: u64,
    /// Branch target of a direct jmp.
    pub target: u64,
    /// The KVM backend never runs this instruction natively (see `kvm::model_specific`):
    /// a machine replaying a native stretch stops before it.
    pub native_trap: bool,
    /// It leaves flags undefined that CPUs set differently (see `kvm::divergent_flags`): the
    /// KVM backend interprets it where those flags can be observed.
    pub divergent: bool,
}

impl Op {
    pub(crate) fn new(ins: Instruction) -> Op {
        let mut fam = Machine::classify(&ins);
        let bits = if ins.op_count() > 0 {
            Machine::op_bits(&ins, 0).min(255) as u8
        } else {
            0
        };
        let a = fast::resolve(&ins, 0);
        let b = fast::resolve(&ins, 1);
        let has_mem = a == fast::Opnd::Mem || b == fast::Opnd::Mem;
        let m = if has_mem || ins.mnemonic() == Mnemonic::Lea {
            fast::mem_ref(&ins)
        } else {
            fast::MemRef::default()
        };
        let simple = a != fast::Opnd::None
            && (ins.op_count() < 2 || b != fast::Opnd::None)
            && ins.op_count() <= 2;
        if fam == Family::Alu && simple {
            if let Some(op) = fast::alu_op(ins.mnemonic()) {
                fam = Family::Alu2(op);
            } else if ins.mnemonic() == Mnemonic::Lea
                && matches!(a, fast::Opnd::R64(_) | fast::Opnd::R32(_))
            {
                fam = Family::Lea;
            }
        }
        if fam == Family::Mov && !simple {
            fam = Family::Alu;
        }
        let mut mov_imm = 0;
        if let Family::Alu2(k) = fam {
            fam = match (a, b, bits) {
                (fast::Opnd::R64(d), fast::Opnd::R64(s), 64)
                | (fast::Opnd::R32(d), fast::Opnd::R32(s), 32) => Family::AluRR(k, d, s),
                (fast::Opnd::R64(d), fast::Opnd::Imm(v), 64)
                | (fast::Opnd::R32(d), fast::Opnd::Imm(v), 32) => {
                    mov_imm = v & crate::cpu::mask(bits as u32);
                    Family::AluRI(k, d)
                }
                _ => fam,
            };
        }
        if fam == Family::Mov {
            fam = match (a, b, bits) {
                (fast::Opnd::R64(d), fast::Opnd::R64(s), 64) => Family::MovRR(d, s),
                (fast::Opnd::R64(d), fast::Opnd::Mem, 64) => Family::MovLoad64(d),
                (fast::Opnd::Mem, fast::Opnd::R64(s), 64) => Family::MovStore64(s),
                (fast::Opnd::R32(d), fast::Opnd::R32(s), 32) => Family::MovRR32(d, s),
                (fast::Opnd::R32(d), fast::Opnd::Mem, 32) => Family::MovLoad32(d),
                (fast::Opnd::Mem, fast::Opnd::R32(s), 32) => Family::MovStore32(s),
                (fast::Opnd::R64(d), fast::Opnd::Imm(v), 64) => {
                    mov_imm = v;
                    Family::MovRI(d)
                }
                (fast::Opnd::R32(d), fast::Opnd::Imm(v), 32) => {
                    mov_imm = v & 0xffff_ffff;
                    Family::MovRI(d)
                }
                _ => Family::Mov,
            };
        }
        if fam == Family::Flow && bits == 64 && simple && ins.op_count() == 1 {
            match ins.mnemonic() {
                Mnemonic::Push => fam = Family::Push,
                Mnemonic::Pop if a != fast::Opnd::Mem => fam = Family::Pop,
                _ => {}
            }
        }
        if fam == Family::Flow
            && ins.mnemonic() == Mnemonic::Call
            && ins.op0_kind() == OpKind::NearBranch64
        {
            fam = Family::Call;
        }
        if fam == Family::Flow && ins.mnemonic() == Mnemonic::Ret && ins.op_count() == 0 {
            fam = Family::Ret;
        }
        let three = ins.op_count() == 3;
        let gpr_dest = matches!(
            a,
            fast::Opnd::R64(_) | fast::Opnd::R32(_) | fast::Opnd::R16(_)
        );
        if fam == Family::Alu && a != fast::Opnd::None && ins.op_count() <= 2 {
            let count_ok =
                ins.op_count() == 1 || matches!(b, fast::Opnd::Imm(_)) || b == fast::Opnd::R8(1);
            if let Some(k) = fast::shift_op(ins.mnemonic()) {
                if count_ok && !matches!(a, fast::Opnd::Imm(_)) {
                    fam = Family::Shift(k);
                }
            }
        }
        if fam == Family::Alu
            && ins.mnemonic() == Mnemonic::Imul
            && gpr_dest
            && b != fast::Opnd::None
        {
            let third_ok = !three || matches!(fast::resolve(&ins, 2), fast::Opnd::Imm(_));
            if ins.op_count() >= 2 && third_ok && !matches!(b, fast::Opnd::Imm(_)) {
                fam = Family::Imul;
            }
        }
        if fam == Family::Alu
            && gpr_dest
            && matches!(
                b,
                fast::Opnd::R8(_)
                    | fast::Opnd::R8H(_)
                    | fast::Opnd::R16(_)
                    | fast::Opnd::R32(_)
                    | fast::Opnd::Mem
            )
        {
            match ins.mnemonic() {
                Mnemonic::Movzx => fam = Family::Movzx,
                Mnemonic::Movsx | Mnemonic::Movsxd => fam = Family::Movsx,
                _ => {}
            }
        }
        let mn = ins.mnemonic();
        let cc_mnemonic =
            |first: Mnemonic, last: Mnemonic| (first as u32..=last as u32).contains(&(mn as u32));
        if fam == Family::Flow && ins.op_count() == 1 {
            match (mn, ins.op0_kind()) {
                (Mnemonic::Jmp, OpKind::NearBranch64) => fam = Family::Jmp,
                (Mnemonic::Jmp, _)
                    if bits == 64 && matches!(a, fast::Opnd::R64(_) | fast::Opnd::Mem) =>
                {
                    fam = Family::JmpInd
                }
                (Mnemonic::Call, _)
                    if bits == 64 && matches!(a, fast::Opnd::R64(_) | fast::Opnd::Mem) =>
                {
                    fam = Family::CallInd
                }
                _ => {}
            }
        }
        if fam == Family::Alu
            && gpr_dest
            && b != fast::Opnd::None
            && cc_mnemonic(Mnemonic::Cmova, Mnemonic::Cmovs)
        {
            fam = Family::Cmov;
        }
        if fam == Family::Alu
            && ins.op_count() == 1
            && matches!(a, fast::Opnd::R8(_) | fast::Opnd::R8H(_) | fast::Opnd::Mem)
            && cc_mnemonic(Mnemonic::Seta, Mnemonic::Sets)
        {
            fam = Family::Setcc;
        }
        if fam == Family::Alu
            && ins.op_count() == 1
            && a != fast::Opnd::None
            && !matches!(a, fast::Opnd::Imm(_))
            && matches!(mn, Mnemonic::Inc | Mnemonic::Dec)
        {
            fam = Family::IncDec(mn == Mnemonic::Inc);
        }
        let target = if fam == Family::Jmp {
            ins.near_branch_target()
        } else {
            0
        };
        let bits2 = if ins.op_count() > 1 {
            Machine::op_bits(&ins, 1).min(255) as u8
        } else {
            0
        };
        let imm2 = match fast::resolve(&ins, 2) {
            fast::Opnd::Imm(v) => v,
            _ => mov_imm,
        };
        let cc = alu::cc_of(&ins);
        Op {
            native_trap: crate::kvm::ends_a_stretch(&ins),
            divergent: crate::kvm::divergent_flags(&ins) != 0,
            bits2,
            imm2,
            target,
            next: ins.next_ip(),
            ins,
            fam,
            bits,
            a,
            b,
            m,
            cc,
        }
    }
}

/// GPR number and kind for an iced register (None when not a GPR).
#[derive(Clone, Copy)]
pub(crate) enum Gpr {
    Low8(usize),
    High8(usize),
    W16(usize),
    D32(usize),
    Q64(usize),
}

const fn gpr_of(n: usize) -> Option<Gpr> {
    Some(match n {
        1..=4 => Gpr::Low8(n - 1),
        5..=8 => Gpr::High8(n - 5),
        9..=20 => Gpr::Low8(n - 5),
        21..=36 => Gpr::W16(n - 21),
        37..=52 => Gpr::D32(n - 37),
        53..=68 => Gpr::Q64(n - 53),
        _ => return None,
    })
}

/// `gpr_of` for every register number below 80, worked out at compile time.
const GPR_TABLE: [Option<Gpr>; 80] = {
    let mut t = [None; 80];
    let mut n = 0;
    while n < 80 {
        t[n] = gpr_of(n);
        n += 1;
    }
    t
};

#[inline(always)]
pub(crate) fn gpr(r: Register) -> Option<Gpr> {
    GPR_TABLE.get(r as usize).copied().flatten()
}

/// Index of an XMM register.
#[inline(always)]
pub(crate) fn xmm(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::XMM0 as usize) & 15
}

pub(crate) fn sext(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        let s = 64 - bits;
        (((v << s) as i64) >> s) as u64
    }
}

impl Machine {
    #[inline(always)]
    pub(crate) fn get_reg(&self, r: Register) -> u64 {
        match gpr(r) {
            Some(Gpr::Q64(i)) => self.cpu.gpr[i],
            Some(Gpr::D32(i)) => self.cpu.gpr[i] & 0xffff_ffff,
            Some(Gpr::W16(i)) => self.cpu.gpr[i] & 0xffff,
            Some(Gpr::Low8(i)) => self.cpu.gpr[i] & 0xff,
            Some(Gpr::High8(i)) => (self.cpu.gpr[i] >> 8) & 0xff,
            None => match r {
                Register::CS => 0x33,
                Register::SS | Register::DS | Register::ES => 0x2b,
                Register::RIP => self.cpu.rip,
                _ => 0,
            },
        }
    }

    #[inline(always)]
    pub(crate) fn set_reg(&mut self, r: Register, v: u64) {
        match gpr(r) {
            Some(Gpr::Q64(i)) => self.cpu.gpr[i] = v,
            Some(Gpr::D32(i)) => self.cpu.gpr[i] = v & 0xffff_ffff,
            Some(Gpr::W16(i)) => self.cpu.gpr[i] = (self.cpu.gpr[i] & !0xffff) | (v & 0xffff),
            Some(Gpr::Low8(i)) => self.cpu.gpr[i] = (self.cpu.gpr[i] & !0xff) | (v & 0xff),
            Some(Gpr::High8(i)) => {
                self.cpu.gpr[i] = (self.cpu.gpr[i] & !0xff00) | ((v & 0xff) << 8)
            }
            None => {}
        }
    }

    /// Effective address of the memory operand, without segment base.
    #[inline(always)]
    pub(crate) fn ea_offset(&self, i: &Instruction) -> u64 {
        let mut a = i.memory_displacement64();
        let base = i.memory_base();
        if base != Register::None && base != Register::RIP {
            a = a.wrapping_add(self.get_reg(base));
        }
        let idx = i.memory_index();
        if idx != Register::None {
            a = a.wrapping_add(
                self.get_reg(idx)
                    .wrapping_mul(i.memory_index_scale() as u64),
            );
        }
        if base.is_gpr32() || idx.is_gpr32() || base == Register::EIP {
            a &= 0xffff_ffff;
        }
        a
    }

    /// Effective linear address of the memory operand (with FS/GS base).
    #[inline(always)]
    pub(crate) fn ea(&self, i: &Instruction) -> u64 {
        let a = self.ea_offset(i);
        match i.segment_prefix() {
            Register::FS => a.wrapping_add(self.cpu.fs_base),
            Register::GS => a.wrapping_add(self.cpu.gs_base),
            _ => a,
        }
    }

    #[inline(always)]
    pub(crate) fn mread(&mut self, a: u64, bits: u32) -> R<u64> {
        Ok(match bits {
            8 => self.mem.read_u8(a)? as u64,
            16 => self.mem.read_u16(a)? as u64,
            32 => self.mem.read_u32(a)? as u64,
            _ => self.mem.read_u64(a)?,
        })
    }

    #[inline(always)]
    pub(crate) fn mwrite(&mut self, a: u64, bits: u32, v: u64) -> R<()> {
        match bits {
            8 => self.mem.write_u8(a, v as u8)?,
            16 => self.mem.write_u16(a, v as u16)?,
            32 => self.mem.write_u32(a, v as u32)?,
            _ => self.mem.write_u64(a, v)?,
        }
        Ok(())
    }

    /// Size in bits of operand `n`.
    #[inline(always)]
    pub(crate) fn op_bits(i: &Instruction, n: u32) -> u32 {
        match i.op_kind(n) {
            OpKind::Register => i.op_register(n).size() as u32 * 8,
            OpKind::Memory => i.memory_size().size() as u32 * 8,
            OpKind::Immediate8 => 8,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 16,
            OpKind::Immediate32 | OpKind::Immediate8to32 => 32,
            _ => 64,
        }
    }

    /// Reads operand `n` (register, memory or immediate), zero-extended.
    #[inline(always)]
    pub(crate) fn rd(&mut self, i: &Instruction, n: u32, bits: u32) -> R<u64> {
        match i.op_kind(n) {
            OpKind::Register => Ok(self.get_reg(i.op_register(n))),
            OpKind::Memory => {
                let a = self.ea(i);
                self.mread(a, bits)
            }
            _ => Ok(i.immediate(n) & mask(bits)),
        }
    }

    /// Writes operand `n` (register or memory).
    #[inline(always)]
    pub(crate) fn wr(&mut self, i: &Instruction, n: u32, bits: u32, v: u64) -> R<()> {
        match i.op_kind(n) {
            OpKind::Register => {
                self.set_reg(i.op_register(n), v);
                Ok(())
            }
            _ => {
                let a = self.ea(i);
                self.mwrite(a, bits, v)
            }
        }
    }

    /// Executes one instruction. `budget` (at least 1) bounds how many iterations a `rep`
    /// string instruction may retire. Returns the number of instructions retired.
    #[inline(always)]
    pub(crate) fn exec(&mut self, op: &Op, budget: u64) -> R<u64> {
        let pc = self.cpu.rip;
        self.cpu.rip = op.next;
        let r = self.dispatch(op, budget);
        if r.is_err() {
            self.cpu.rip = pc;
        }
        r
    }

    /// Which family of handlers executes `i` (decided once, when the block is decoded).
    pub(crate) fn classify(i: &Instruction) -> Family {
        if i.is_invalid() {
            return Family::Other;
        }
        match i.mnemonic() {
            Mnemonic::Mov => Family::Mov,
            m if i.condition_code() != iced_x86::ConditionCode::None
                && matches!(i.op0_kind(), OpKind::NearBranch64 | OpKind::NearBranch32)
                && !matches!(m, Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne) =>
            {
                Family::Jcc
            }
            _ => Self::classify_inner(i),
        }
    }

    fn classify_inner(i: &Instruction) -> Family {
        use Mnemonic as M;
        let m = i.mnemonic();
        match m {
            M::Mov
            | M::Movzx
            | M::Movsx
            | M::Movsxd
            | M::Lea
            | M::Add
            | M::Or
            | M::Adc
            | M::Sbb
            | M::And
            | M::Sub
            | M::Xor
            | M::Cmp
            | M::Test
            | M::Inc
            | M::Dec
            | M::Neg
            | M::Not
            | M::Shl
            | M::Sal
            | M::Shr
            | M::Sar
            | M::Rol
            | M::Ror
            | M::Rcl
            | M::Rcr
            | M::Shld
            | M::Shrd
            | M::Mul
            | M::Imul
            | M::Div
            | M::Idiv
            | M::Cbw
            | M::Cwde
            | M::Cdqe
            | M::Cwd
            | M::Cdq
            | M::Cqo
            | M::Xchg
            | M::Xadd
            | M::Cmpxchg
            | M::Cmpxchg8b
            | M::Cmpxchg16b
            | M::Bswap
            | M::Bt
            | M::Bts
            | M::Btr
            | M::Btc
            | M::Bsf
            | M::Bsr
            | M::Tzcnt
            | M::Lzcnt
            | M::Popcnt
            | M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg
            | M::Cmovo
            | M::Cmovno
            | M::Cmovb
            | M::Cmovae
            | M::Cmove
            | M::Cmovne
            | M::Cmovbe
            | M::Cmova
            | M::Cmovs
            | M::Cmovns
            | M::Cmovp
            | M::Cmovnp
            | M::Cmovl
            | M::Cmovge
            | M::Cmovle
            | M::Cmovg
            | M::Lahf
            | M::Sahf
            | M::Clc
            | M::Stc
            | M::Cmc
            | M::Cld
            | M::Std
            | M::Xlatb => Family::Alu,
            M::Movsb
            | M::Movsw
            | M::Movsq
            | M::Stosb
            | M::Stosw
            | M::Stosd
            | M::Stosq
            | M::Lodsb
            | M::Lodsw
            | M::Lodsd
            | M::Lodsq
            | M::Cmpsb
            | M::Cmpsw
            | M::Cmpsq
            | M::Scasb
            | M::Scasw
            | M::Scasd
            | M::Scasq => Family::String,
            M::Movsd
                if i.op0_kind() == OpKind::MemoryESRDI || i.op0_kind() == OpKind::MemoryESEDI =>
            {
                Family::String
            }
            M::Cmpsd
                if i.op0_kind() == OpKind::MemorySegRSI || i.op0_kind() == OpKind::MemorySegESI =>
            {
                Family::String
            }
            M::Jmp
            | M::Call
            | M::Ret
            | M::Jo
            | M::Jno
            | M::Jb
            | M::Jae
            | M::Je
            | M::Jne
            | M::Jbe
            | M::Ja
            | M::Js
            | M::Jns
            | M::Jp
            | M::Jnp
            | M::Jl
            | M::Jge
            | M::Jle
            | M::Jg
            | M::Jrcxz
            | M::Jecxz
            | M::Loop
            | M::Loope
            | M::Loopne
            | M::Push
            | M::Pop
            | M::Pushfq
            | M::Popfq
            | M::Pushf
            | M::Popf
            | M::Leave
            | M::Enter => Family::Flow,
            // CET instructions live in the hint-NOP space: without CET (fx86 has none) they do nothing.
            M::Rdsspd | M::Rdsspq | M::Incsspd | M::Incsspq => Family::Nop,
            M::Nop
            | M::Endbr64
            | M::Endbr32
            | M::Pause
            | M::Lfence
            | M::Mfence
            | M::Sfence
            | M::Prefetchnta
            | M::Prefetcht0
            | M::Prefetcht1
            | M::Prefetcht2
            | M::Prefetchw
            | M::Clflush => Family::Nop,
            M::Syscall
            | M::Cpuid
            | M::Rdtsc
            | M::Int3
            | M::Int
            | M::Ud2
            | M::Ud0
            | M::Ud1
            | M::Hlt
            | M::Fxsave
            | M::Fxsave64
            | M::Fxrstor
            | M::Fxrstor64
            | M::Xsave
            | M::Xsave64
            | M::Xrstor
            | M::Xrstor64
            | M::Xsavec
            | M::Xsavec64
            | M::Ldmxcsr
            | M::Stmxcsr
            | M::Xgetbv => Family::System,
            _ => Family::Other,
        }
    }

    #[inline(always)]
    fn dispatch(&mut self, op: &Op, budget: u64) -> R<u64> {
        let i = &op.ins;
        match op.fam {
            Family::Jcc => {
                if self.cpu.cond(op.cc) {
                    self.cpu.rip = i.near_branch_target();
                }
                Ok(1)
            }
            Family::MovRR(d, s) => {
                self.cpu.gpr[d as usize] = self.cpu.gpr[s as usize];
                Ok(1)
            }
            Family::MovLoad64(d) => {
                let a = self.ea_fast(&op.m);
                self.cpu.gpr[d as usize] = self.mem.read_u64(a)?;
                Ok(1)
            }
            Family::MovStore64(s) => {
                let a = self.ea_fast(&op.m);
                self.mem.write_u64(a, self.cpu.gpr[s as usize])?;
                Ok(1)
            }
            Family::MovRR32(d, s) => {
                self.cpu.gpr[d as usize] = self.cpu.gpr[s as usize] & 0xffff_ffff;
                Ok(1)
            }
            Family::MovLoad32(d) => {
                let a = self.ea_fast(&op.m);
                self.cpu.gpr[d as usize] = self.mem.read_u32(a)? as u64;
                Ok(1)
            }
            Family::MovStore32(s) => {
                let a = self.ea_fast(&op.m);
                self.mem.write_u32(a, self.cpu.gpr[s as usize] as u32)?;
                Ok(1)
            }
            Family::MovRI(d) => {
                self.cpu.gpr[d as usize] = op.imm2;
                Ok(1)
            }
            Family::AluRR(k, d, s) => {
                if op.bits == 64 {
                    let (a, b) = (self.cpu.gpr[d as usize], self.cpu.gpr[s as usize]);
                    self.alu_reg::<64>(k, d, a, b);
                } else {
                    let a = self.cpu.gpr[d as usize] & 0xffff_ffff;
                    let b = self.cpu.gpr[s as usize] & 0xffff_ffff;
                    self.alu_reg::<32>(k, d, a, b);
                }
                Ok(1)
            }
            Family::AluRI(k, d) => {
                if op.bits == 64 {
                    self.alu_reg::<64>(k, d, self.cpu.gpr[d as usize], op.imm2);
                } else {
                    let a = self.cpu.gpr[d as usize] & 0xffff_ffff;
                    self.alu_reg::<32>(k, d, a, op.imm2);
                }
                Ok(1)
            }
            Family::Mov => {
                let bits = op.bits as u32;
                let v = self.rd_fast(op.b, &op.m, bits)?;
                self.wr_fast(op.a, &op.m, bits, v)?;
                Ok(1)
            }
            Family::Alu2(a) => self
                .alu_fast(a, op.a, op.b, &op.m, op.bits as u32)
                .map(|_| 1),
            Family::Lea => {
                let mut m = op.m;
                m.seg = 0;
                let v = self.ea_fast(&m);
                self.wr_fast(op.a, &m, 64, v)?;
                Ok(1)
            }
            Family::Shift(k) => self.shift_fast(k, op).map(|_| 1),
            Family::Imul => self.imul_fast(op).map(|_| 1),
            Family::Movzx => {
                let v = self.rd_fast(op.b, &op.m, op.bits2 as u32)?;
                self.wr_fast(op.a, &op.m, op.bits as u32, v).map(|_| 1)
            }
            Family::Movsx => {
                let sb = op.bits2 as u32;
                let v = sext(self.rd_fast(op.b, &op.m, sb)?, sb) & mask(op.bits as u32);
                self.wr_fast(op.a, &op.m, op.bits as u32, v).map(|_| 1)
            }
            Family::Jmp => {
                self.cpu.rip = op.target;
                Ok(1)
            }
            Family::JmpInd => {
                self.cpu.rip = self.rd_fast(op.a, &op.m, 64)?;
                Ok(1)
            }
            Family::CallInd => {
                let t = self.rd_fast(op.a, &op.m, 64)?;
                self.push64(op.next)?;
                self.cpu.rip = t;
                Ok(1)
            }
            Family::Cmov => {
                let bits = op.bits as u32;
                // The source is read (and may fault) whatever the condition; a 32-bit
                // destination is zero-extended either way.
                let s = self.rd_fast(op.b, &op.m, bits)?;
                let v = if self.cpu.cond(op.cc) {
                    s
                } else {
                    self.rd_fast(op.a, &op.m, bits)?
                };
                self.wr_fast(op.a, &op.m, bits, v).map(|_| 1)
            }
            Family::Setcc => {
                let v = self.cpu.cond(op.cc) as u64;
                self.wr_fast(op.a, &op.m, 8, v).map(|_| 1)
            }
            Family::IncDec(inc) => {
                let bits = op.bits as u32;
                let a = self.rd_fast(op.a, &op.m, bits)?;
                let (lop, res) = if inc {
                    (crate::cpu::LazyOp::Inc, a.wrapping_add(1) & mask(bits))
                } else {
                    (crate::cpu::LazyOp::Dec, a.wrapping_sub(1) & mask(bits))
                };
                self.wr_fast(op.a, &op.m, bits, res)?;
                self.cpu.set_lazy_incdec(lop, bits, a, res);
                Ok(1)
            }
            Family::Push => self.push_fast(op.a, &op.m).map(|_| 1),
            Family::Pop => self.pop_fast(op.a, &op.m).map(|_| 1),
            Family::Call => {
                self.push64(i.next_ip())?;
                self.cpu.rip = i.near_branch_target();
                Ok(1)
            }
            Family::Ret => {
                let t = self.pop64()?;
                self.cpu.rip = t;
                Ok(1)
            }
            Family::Alu => self.exec_alu(i).map(|_| 1),
            Family::Flow => self.exec_flow(i).map(|_| 1),
            Family::String => self.exec_string(i, budget),
            Family::Nop => Ok(1),
            Family::System => self.exec_system(i).map(|_| 1),
            Family::Other => {
                if let Some(r) = self.exec_sse(i) {
                    return r.map(|_| 1);
                }
                if let Some(r) = self.exec_x87(i) {
                    return r.map(|_| 1);
                }
                Err(self.illegal(i))
            }
        }
    }

    /// The SIGILL for an instruction fx86 does not implement, naming it.
    pub(crate) fn illegal(&self, i: &Instruction) -> Ex {
        use iced_x86::Formatter;
        if i.code() == iced_x86::Code::INVALID {
            return Ex::Illegal(Box::new("invalid instruction".into()));
        }
        let mut f = iced_x86::IntelFormatter::new();
        let mut s = String::new();
        f.format(i, &mut s);
        Ex::Illegal(Box::new(format!(
            "instruction `{s}` is not implemented by fx86"
        )))
    }
}
