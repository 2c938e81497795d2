//! The register file and lazily computed arithmetic flags.

/// Flag bits of RFLAGS.
pub mod fl {
    pub const CF: u64 = 1 << 0;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const AC: u64 = 1 << 18;
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic status flags.
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
}

/// The last flag-producing operation, kept so flags are computed only when read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LazyOp {
    /// Arithmetic flags are stored in `Cpu::rflags` as they are.
    None,
    Add,
    Adc,
    Sub,
    Sbb,
    Logic,
    /// Like `Add` with b = 1, CF taken from `lf_c`.
    Inc,
    /// Like `Sub` with b = 1, CF taken from `lf_c`.
    Dec,
}

/// x87 state, kept in the hardware's own format (80-bit registers, FSAVE-style words).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct X87 {
    /// Physical registers R0..R7, 10 bytes each.
    pub regs: [[u8; 10]; 8],
    pub fcw: u16,
    /// Status word including TOP (bits 11..13).
    pub fsw: u16,
    /// Abridged tag word as FXSAVE stores it (bit i set = physical register i in use).
    pub ftw: u16,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
}

impl Default for X87 {
    fn default() -> Self {
        X87 {
            regs: [[0; 10]; 8],
            fcw: 0x37f,
            fsw: 0,
            ftw: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
        }
    }
}

/// The guest's user-visible register state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cpu {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (hardware order).
    pub gpr: [u64; 16],
    pub rip: u64,
    /// RFLAGS; the arithmetic bits are stale while `lf_op != None`.
    rflags: u64,
    lf_op: LazyOp,
    lf_bits: u32,
    lf_a: u64,
    lf_b: u64,
    lf_res: u64,
    lf_c: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    pub x87: X87,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu {
            gpr: [0; 16],
            rip: 0,
            rflags: 0x202,
            lf_op: LazyOp::None,
            lf_bits: 64,
            lf_a: 0,
            lf_b: 0,
            lf_res: 0,
            lf_c: 0,
            fs_base: 0,
            gs_base: 0,
            xmm: [0; 16],
            mxcsr: 0x1f80,
            x87: X87::default(),
        }
    }
}

pub const RAX: usize = 0;
pub const RCX: usize = 1;
pub const RDX: usize = 2;
pub const RBX: usize = 3;
pub const RSP: usize = 4;
pub const RBP: usize = 5;
pub const RSI: usize = 6;
pub const RDI: usize = 7;

#[inline(always)]
pub fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

#[inline(always)]
fn parity(v: u64) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

impl Cpu {
    /// Records a lazily evaluated flag result.
    #[inline(always)]
    pub fn set_lazy(&mut self, op: LazyOp, bits: u32, a: u64, b: u64, res: u64) {
        self.lf_op = op;
        self.lf_bits = bits;
        self.lf_a = a;
        self.lf_b = b;
        self.lf_res = res;
    }

    /// Records ADC/SBB with the carry that went in.
    #[inline(always)]
    pub fn set_lazy_carry(&mut self, op: LazyOp, bits: u32, a: u64, b: u64, res: u64, c: u64) {
        self.set_lazy(op, bits, a, b, res);
        self.lf_c = c;
    }

    /// INC/DEC keep CF: remember the current one before replacing the lazy state.
    #[inline(always)]
    pub fn set_lazy_incdec(&mut self, op: LazyOp, bits: u32, a: u64, res: u64) {
        let cf = self.cf() as u64;
        self.set_lazy(op, bits, a, 1, res);
        self.lf_c = cf;
    }

    /// The full RFLAGS value.
    pub fn rflags(&self) -> u64 {
        if self.lf_op == LazyOp::None {
            return self.rflags;
        }
        (self.rflags & !fl::ARITH) | self.arith_flags() | 2
    }

    /// Replaces RFLAGS (all bits).
    pub fn set_rflags(&mut self, v: u64) {
        self.rflags = v | 2;
        self.lf_op = LazyOp::None;
    }

    /// Replaces only the six arithmetic flags. (The other bits are kept in `rflags` as they
    /// are, lazy or not, so the old arithmetic flags need not be worked out.)
    pub fn set_arith_flags(&mut self, v: u64) {
        self.set_rflags((self.rflags & !fl::ARITH) | (v & fl::ARITH));
    }

    /// RFLAGS without its arithmetic flags (cheap: nothing lazy to work out).
    pub fn non_arith_flags(&self) -> u64 {
        (self.rflags & !fl::ARITH) | 2
    }

    fn arith_flags(&self) -> u64 {
        let m = mask(self.lf_bits);
        let sb = 1u64 << (self.lf_bits - 1);
        let (a, b, r) = (self.lf_a & m, self.lf_b & m, self.lf_res & m);
        let mut f = 0;
        if r == 0 {
            f |= fl::ZF;
        }
        if r & sb != 0 {
            f |= fl::SF;
        }
        if parity(r) {
            f |= fl::PF;
        }
        let (cf, of, af) = match self.lf_op {
            LazyOp::None => unreachable!(),
            LazyOp::Add => (r < a, (a ^ r) & (b ^ r) & sb != 0, (a ^ b ^ r) & 0x10 != 0),
            LazyOp::Adc => (
                if self.lf_c != 0 { r <= a } else { r < a },
                (a ^ r) & (b ^ r) & sb != 0,
                (a ^ b ^ r) & 0x10 != 0,
            ),
            LazyOp::Sub => (a < b, (a ^ b) & (a ^ r) & sb != 0, (a ^ b ^ r) & 0x10 != 0),
            LazyOp::Sbb => (
                if self.lf_c != 0 { a <= b } else { a < b },
                (a ^ b) & (a ^ r) & sb != 0,
                (a ^ b ^ r) & 0x10 != 0,
            ),
            LazyOp::Logic => (false, false, false),
            LazyOp::Inc => (self.lf_c != 0, r == sb, (a ^ r) & 0x10 != 0),
            LazyOp::Dec => (self.lf_c != 0, a == sb, (a ^ r) & 0x10 != 0),
        };
        if cf {
            f |= fl::CF;
        }
        if of {
            f |= fl::OF;
        }
        if af {
            f |= fl::AF;
        }
        f
    }

    #[inline(always)]
    pub fn cf(&self) -> bool {
        match self.lf_op {
            LazyOp::None => self.rflags & fl::CF != 0,
            LazyOp::Logic => false,
            LazyOp::Add => (self.lf_res & mask(self.lf_bits)) < (self.lf_a & mask(self.lf_bits)),
            LazyOp::Sub => (self.lf_a & mask(self.lf_bits)) < (self.lf_b & mask(self.lf_bits)),
            LazyOp::Inc | LazyOp::Dec => self.lf_c != 0,
            _ => self.rflags() & fl::CF != 0,
        }
    }

    #[inline(always)]
    pub fn zf(&self) -> bool {
        match self.lf_op {
            LazyOp::None => self.rflags & fl::ZF != 0,
            _ => self.lf_res & mask(self.lf_bits) == 0,
        }
    }

    #[inline(always)]
    pub fn sf(&self) -> bool {
        match self.lf_op {
            LazyOp::None => self.rflags & fl::SF != 0,
            _ => (self.lf_res >> (self.lf_bits - 1)) & 1 != 0,
        }
    }

    #[inline(always)]
    pub fn of(&self) -> bool {
        match self.lf_op {
            LazyOp::None => self.rflags & fl::OF != 0,
            LazyOp::Logic => false,
            _ => self.rflags() & fl::OF != 0,
        }
    }

    #[inline(always)]
    pub fn df(&self) -> bool {
        self.rflags & fl::DF != 0
    }

    /// Evaluates condition code `cc` (0..15 in the hardware's encoding: O, NO, B, AE, E, NE,
    /// BE, A, S, NS, P, NP, L, GE, LE, G).
    #[inline(always)]
    pub fn cond(&self, cc: u8) -> bool {
        let r = match cc >> 1 {
            0 => self.of(),
            1 => self.cf(),
            2 => self.zf(),
            3 => self.cf() || self.zf(),
            4 => self.sf(),
            5 => self.rflags() & fl::PF != 0,
            6 => self.sf() != self.of(),
            _ => self.zf() || (self.sf() != self.of()),
        };
        r ^ (cc & 1 != 0)
    }

    /// Feeds the register state into a hasher in a fixed order.
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        for r in self.gpr {
            h.update(&r.to_le_bytes());
        }
        h.update(&self.rip.to_le_bytes());
        h.update(&self.rflags().to_le_bytes());
        h.update(&self.fs_base.to_le_bytes());
        h.update(&self.gs_base.to_le_bytes());
        for x in self.xmm {
            h.update(&x.to_le_bytes());
        }
        h.update(&self.mxcsr.to_le_bytes());
        for r in &self.x87.regs {
            h.update(r);
        }
        h.update(&self.x87.fcw.to_le_bytes());
        h.update(&self.x87.fsw.to_le_bytes());
        h.update(&self.x87.ftw.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_add_sub_flags() {
        let mut c = Cpu::default();
        c.set_lazy(LazyOp::Add, 8, 0x7f, 1, 0x80);
        assert_eq!(c.rflags() & fl::ARITH, fl::OF | fl::SF | fl::AF);
        c.set_lazy(LazyOp::Sub, 32, 1, 2, 1u64.wrapping_sub(2));
        let f = c.rflags();
        assert!(f & fl::CF != 0 && f & fl::SF != 0 && f & fl::ZF == 0);
        assert!(c.cond(2) && c.cond(0xc));
    }
}
