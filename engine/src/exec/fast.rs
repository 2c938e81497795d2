//! Pre-resolved operands for the hottest instruction forms (mov, lea, the two-operand ALU ops,
//! push/pop, call/ret): register numbers, immediates and the parts of the memory operand are
//! worked out once when the block is decoded, so executing them never goes back to iced's
//! `Instruction` accessors.

use super::{gpr, Gpr, Machine, R};
use crate::cpu::{mask, LazyOp, RSP};
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

/// One operand, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opnd {
    None,
    R64(u8),
    R32(u8),
    R16(u8),
    R8(u8),
    R8H(u8),
    Imm(u64),
    Mem,
}

/// The memory operand, resolved. `base`/`index` 16 = none.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MemRef {
    pub base: u8,
    pub index: u8,
    pub scale: u8,
    /// 0 = no segment base, 1 = FS, 2 = GS.
    pub seg: u8,
    pub addr32: bool,
    pub disp: u64,
}

/// The two-operand ALU operations with a fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AluOp {
    Add,
    Sub,
    Cmp,
    And,
    Test,
    Or,
    Xor,
}

pub(crate) fn resolve(i: &Instruction, n: u32) -> Opnd {
    if n >= i.op_count() {
        return Opnd::None;
    }
    match i.op_kind(n) {
        OpKind::Register => match gpr(i.op_register(n)) {
            Some(Gpr::Q64(r)) => Opnd::R64(r as u8),
            Some(Gpr::D32(r)) => Opnd::R32(r as u8),
            Some(Gpr::W16(r)) => Opnd::R16(r as u8),
            Some(Gpr::Low8(r)) => Opnd::R8(r as u8),
            Some(Gpr::High8(r)) => Opnd::R8H(r as u8),
            None => Opnd::None,
        },
        OpKind::Memory => Opnd::Mem,
        k if is_immediate(k) => Opnd::Imm(i.immediate(n)),
        _ => Opnd::None,
    }
}

/// An immediate operand that `Instruction::immediate` reads (8 to 64 bits, sign-extended or
/// not).
pub(crate) fn is_immediate(k: OpKind) -> bool {
    matches!(
        k,
        OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64
    )
}

pub(crate) fn mem_ref(i: &Instruction) -> MemRef {
    let reg_no = |r: Register| -> u8 {
        match gpr(r) {
            Some(Gpr::Q64(x)) | Some(Gpr::D32(x)) => x as u8,
            _ => 16,
        }
    };
    let base = i.memory_base();
    let index = i.memory_index();
    MemRef {
        base: if base == Register::RIP || base == Register::EIP {
            16
        } else {
            reg_no(base)
        },
        index: reg_no(index),
        scale: i.memory_index_scale() as u8,
        seg: match i.segment_prefix() {
            Register::FS => 1,
            Register::GS => 2,
            _ => 0,
        },
        addr32: base.is_gpr32() || index.is_gpr32() || base == Register::EIP,
        disp: i.memory_displacement64(),
    }
}

/// The lazy-flags operation, result (within `mk`) and whether it is written back, of ALU
/// operation `op` on `a` and `b`: the one definition for `alu_fast` and `alu_reg`.
#[inline(always)]
fn alu_result(op: AluOp, a: u64, b: u64, mk: u64) -> (LazyOp, u64, bool) {
    match op {
        AluOp::Add => (LazyOp::Add, a.wrapping_add(b) & mk, true),
        AluOp::Sub => (LazyOp::Sub, a.wrapping_sub(b) & mk, true),
        AluOp::Cmp => (LazyOp::Sub, a.wrapping_sub(b) & mk, false),
        AluOp::And => (LazyOp::Logic, a & b, true),
        AluOp::Test => (LazyOp::Logic, a & b, false),
        AluOp::Or => (LazyOp::Logic, a | b, true),
        AluOp::Xor => (LazyOp::Logic, a ^ b, true),
    }
}

/// The shifts with a fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ShiftOp {
    Shl,
    Shr,
    Sar,
}

pub(crate) fn shift_op(m: M) -> Option<ShiftOp> {
    Some(match m {
        M::Shl | M::Sal => ShiftOp::Shl,
        M::Shr => ShiftOp::Shr,
        M::Sar => ShiftOp::Sar,
        _ => return None,
    })
}

/// Result, CF and OF of shifting the `bits`-bit value `a` by `cnt` (1..=31 or 63). The one
/// definition of these shifts, for the fast path and the general one.
#[inline(always)]
pub(crate) fn shift_value(k: ShiftOp, a: u64, cnt: u32, bits: u32) -> (u64, bool, bool) {
    let mk = mask(bits);
    let msb = |v: u64| (v >> (bits - 1)) & 1 != 0;
    match k {
        ShiftOp::Shl => {
            let res = if cnt >= bits { 0 } else { (a << cnt) & mk };
            let cf = cnt <= bits && (a >> (bits - cnt)) & 1 != 0;
            (res, cf, msb(res) ^ cf)
        }
        ShiftOp::Shr => {
            let res = if cnt >= bits { 0 } else { a >> cnt };
            let cf = cnt <= bits && (a >> (cnt - 1)) & 1 != 0;
            // Defined for a count of 1 (the old sign); AMD Zen's rule, which agrees there.
            (res, cf, msb(res) ^ ((res >> (bits - 2)) & 1 != 0))
        }
        ShiftOp::Sar => {
            let s = super::sext(a, bits) as i64;
            let res = (s >> cnt.min(63)) as u64 & mk;
            let cf = (s >> (cnt - 1).min(63)) & 1 != 0;
            (res, cf, false)
        }
    }
}

pub(crate) fn alu_op(m: M) -> Option<AluOp> {
    Some(match m {
        M::Add => AluOp::Add,
        M::Sub => AluOp::Sub,
        M::Cmp => AluOp::Cmp,
        M::And => AluOp::And,
        M::Test => AluOp::Test,
        M::Or => AluOp::Or,
        M::Xor => AluOp::Xor,
        _ => return None,
    })
}

impl Machine {
    #[inline(always)]
    pub(crate) fn ea_fast(&self, m: &MemRef) -> u64 {
        let mut a = m.disp;
        if m.base < 16 {
            a = a.wrapping_add(self.cpu.gpr[m.base as usize]);
        }
        if m.index < 16 {
            a = a.wrapping_add(self.cpu.gpr[m.index as usize].wrapping_mul(m.scale as u64));
        }
        if m.addr32 {
            a &= 0xffff_ffff;
        }
        match m.seg {
            0 => a,
            1 => a.wrapping_add(self.cpu.fs_base),
            _ => a.wrapping_add(self.cpu.gs_base),
        }
    }

    #[inline(always)]
    pub(crate) fn rd_fast(&mut self, o: Opnd, m: &MemRef, bits: u32) -> R<u64> {
        Ok(match o {
            Opnd::R64(r) => self.cpu.gpr[r as usize],
            Opnd::R32(r) => self.cpu.gpr[r as usize] & 0xffff_ffff,
            Opnd::R16(r) => self.cpu.gpr[r as usize] & 0xffff,
            Opnd::R8(r) => self.cpu.gpr[r as usize] & 0xff,
            Opnd::R8H(r) => (self.cpu.gpr[r as usize] >> 8) & 0xff,
            Opnd::Imm(v) => v & mask(bits),
            Opnd::Mem => {
                let a = self.ea_fast(m);
                self.mread(a, bits)?
            }
            Opnd::None => 0,
        })
    }

    #[inline(always)]
    pub(crate) fn wr_fast(&mut self, o: Opnd, m: &MemRef, bits: u32, v: u64) -> R<()> {
        match o {
            Opnd::R64(r) => self.cpu.gpr[r as usize] = v,
            Opnd::R32(r) => self.cpu.gpr[r as usize] = v & 0xffff_ffff,
            Opnd::R16(r) => {
                let g = &mut self.cpu.gpr[r as usize];
                *g = (*g & !0xffff) | (v & 0xffff)
            }
            Opnd::R8(r) => {
                let g = &mut self.cpu.gpr[r as usize];
                *g = (*g & !0xff) | (v & 0xff)
            }
            Opnd::R8H(r) => {
                let g = &mut self.cpu.gpr[r as usize];
                *g = (*g & !0xff00) | ((v & 0xff) << 8)
            }
            Opnd::Mem => {
                let a = self.ea_fast(m);
                self.mwrite(a, bits, v)?
            }
            Opnd::Imm(_) | Opnd::None => {}
        }
        Ok(())
    }

    #[inline(always)]
    pub(crate) fn alu_fast(
        &mut self,
        op: AluOp,
        a_o: Opnd,
        b_o: Opnd,
        m: &MemRef,
        bits: u32,
    ) -> R<()> {
        let a = self.rd_fast(a_o, m, bits)?;
        let b = self.rd_fast(b_o, m, bits)?;
        let (lop, res, write) = alu_result(op, a, b, mask(bits));
        if write {
            self.wr_fast(a_o, m, bits, res)?;
        }
        self.cpu.set_lazy(lop, bits, a, b, res);
        Ok(())
    }

    /// `alu_fast` on register `d` (value `a`, zero-extended from `BITS`) and a value `b`
    /// (a register's or an immediate, within `BITS`): the same results and flags.
    #[inline(always)]
    pub(crate) fn alu_reg<const BITS: u32>(&mut self, op: AluOp, d: u8, a: u64, b: u64) {
        let (lop, res, write) = alu_result(op, a, b, mask(BITS));
        if write {
            self.cpu.gpr[d as usize] = res;
        }
        self.cpu.set_lazy(lop, BITS, a, b, res);
    }

    /// shl/shr/sar with pre-resolved operands; the same results and flags as the general
    /// path in `alu.rs` (`shift`).
    #[inline(always)]
    pub(crate) fn shift_fast(&mut self, k: ShiftOp, op: &super::Op) -> R<()> {
        use crate::cpu::fl;
        let bits = op.bits as u32;
        let a = self.rd_fast(op.a, &op.m, bits)?;
        let raw = if op.b == Opnd::None {
            1
        } else {
            self.rd_fast(op.b, &op.m, 8)?
        };
        let cnt = (raw & if bits == 64 { 63 } else { 31 }) as u32;
        if cnt == 0 {
            return self.wr_fast(op.a, &op.m, bits, a);
        }
        let (res, cf, of) = shift_value(k, a, cnt, bits);
        self.wr_fast(op.a, &op.m, bits, res)?;
        let mut f = self.cpu.non_arith_flags() | super::alu::szp(res, bits) | fl::AF;
        if cf {
            f |= fl::CF;
        }
        if of {
            f |= fl::OF;
        }
        self.cpu.set_rflags(f);
        Ok(())
    }

    /// Two- and three-operand imul with pre-resolved operands (as `alu.rs` does it).
    #[inline(always)]
    pub(crate) fn imul_fast(&mut self, op: &super::Op) -> R<()> {
        use super::sext;
        let bits = op.bits as u32;
        let (a, b) = if op.ins.op_count() == 3 {
            (self.rd_fast(op.b, &op.m, bits)?, op.imm2)
        } else {
            (
                self.rd_fast(op.a, &op.m, bits)?,
                self.rd_fast(op.b, &op.m, bits)?,
            )
        };
        let p = (sext(a, bits) as i64 as i128) * (sext(b, bits) as i64 as i128);
        let res = (p as u64) & mask(bits);
        let ovf = sext(res, bits) as i64 as i128 != p;
        self.wr_fast(op.a, &op.m, bits, res)?;
        self.set_mul_flags(ovf);
        Ok(())
    }

    #[inline(always)]
    pub(crate) fn push_fast(&mut self, o: Opnd, m: &MemRef) -> R<()> {
        let v = self.rd_fast(o, m, 64)?;
        self.push64(v)
    }

    #[inline(always)]
    pub(crate) fn pop_fast(&mut self, o: Opnd, m: &MemRef) -> R<()> {
        let sp = self.cpu.gpr[RSP];
        let v = self.mem.read_u64(sp)?;
        self.cpu.gpr[RSP] = sp.wrapping_add(8);
        if let Err(e) = self.wr_fast(o, m, 64, v) {
            self.cpu.gpr[RSP] = sp;
            return Err(e);
        }
        Ok(())
    }
}
