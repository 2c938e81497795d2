//! SSE and SSE2: moves, integer and floating-point arithmetic, compares, conversions,
//! shuffles.
//!
//! Moves, logic, shuffles and immediate shifts are written out here. Arithmetic whose result
//! IEEE 754 or the SSE2 specification fixes bit for bit (float add/sub/mul/div/sqrt/min/max,
//! compares, conversions, saturating and packed integer ops) runs the identical SSE2
//! instruction on the host with the guest's MXCSR, so rounding modes, DAZ/FTZ, NaN payloads
//! and exception flags are exactly the hardware's. The approximate instructions whose results
//! differ between CPU vendors (rcpps, rsqrtps) are computed in software, deterministically.

use super::{xmm, Ex, R};
use crate::cpu::fl;
use crate::machine::Machine;
use core::arch::asm;
use core::arch::x86_64::__m128i;
use iced_x86::{Instruction, Mnemonic as M, OpKind};

#[inline(always)]
fn to_m(v: u128) -> __m128i {
    // SAFETY: both are 16 plain bytes.
    unsafe { std::mem::transmute::<u128, __m128i>(v) }
}
#[inline(always)]
fn from_m(v: __m128i) -> u128 {
    // SAFETY: both are 16 plain bytes.
    unsafe { std::mem::transmute::<__m128i, u128>(v) }
}

macro_rules! host_ops {
    ($fname:ident, $kind:ident { $($var:ident => $ins:literal),* $(,)? }) => {
        #[derive(Clone, Copy, Debug)]
        #[allow(clippy::upper_case_acronyms)]
        enum $kind { $($var),* }
        /// Runs the SSE2 instruction on the host with MXCSR `csr` (exceptions masked);
        /// returns the result and the MXCSR the hardware left (status flags).
        fn $fname(op: $kind, a: u128, b: u128, csr: u32) -> (u128, u32) {
            let mut x = to_m(a);
            let y = to_m(b);
            let mut save = 0u32;
            let mut c = csr | 0x1f80;
            // SAFETY: plain SSE2 register arithmetic; the host MXCSR is saved first and
            // restored last, and both pointers are to live locals.
            unsafe {
                match op {
                    $($kind::$var => asm!(
                        "stmxcsr [{s}]",
                        "ldmxcsr [{c}]",
                        concat!($ins, " {x}, {y}"),
                        "stmxcsr [{c}]",
                        "ldmxcsr [{s}]",
                        x = inout(xmm_reg) x,
                        y = in(xmm_reg) y,
                        c = in(reg) &mut c as *mut u32,
                        s = in(reg) &mut save as *mut u32,
                        options(nostack),
                    ),)*
                }
            }
            (from_m(x), c)
        }
    };
}

host_ops!(host_fp, Fp {
    Addss => "addss", Addsd => "addsd", Addps => "addps", Addpd => "addpd",
    Subss => "subss", Subsd => "subsd", Subps => "subps", Subpd => "subpd",
    Mulss => "mulss", Mulsd => "mulsd", Mulps => "mulps", Mulpd => "mulpd",
    Divss => "divss", Divsd => "divsd", Divps => "divps", Divpd => "divpd",
    Minss => "minss", Minsd => "minsd", Minps => "minps", Minpd => "minpd",
    Maxss => "maxss", Maxsd => "maxsd", Maxps => "maxps", Maxpd => "maxpd",
    Sqrtss => "sqrtss", Sqrtsd => "sqrtsd", Sqrtps => "sqrtps", Sqrtpd => "sqrtpd",
    Cvtss2sd => "cvtss2sd", Cvtsd2ss => "cvtsd2ss", Cvtdq2ps => "cvtdq2ps", Cvtdq2pd => "cvtdq2pd",
    Cvtps2dq => "cvtps2dq", Cvttps2dq => "cvttps2dq", Cvtpd2dq => "cvtpd2dq", Cvttpd2dq => "cvttpd2dq",
    Cvtps2pd => "cvtps2pd", Cvtpd2ps => "cvtpd2ps",
});

macro_rules! host_int_ops {
    ($fname:ident, $kind:ident { $($var:ident => $ins:literal),* $(,)? }) => {
        #[derive(Clone, Copy, Debug)]
        #[allow(clippy::upper_case_acronyms)]
        enum $kind { $($var),* }
        /// Runs the SSE2 integer instruction on the host (no MXCSR involved); the second
        /// result is unused and kept for symmetry with `host_fp`.
        fn $fname(op: $kind, a: u128, b: u128, _csr: u32) -> (u128, u32) {
            let mut x = to_m(a);
            let y = to_m(b);
            // SAFETY: plain SSE2 integer register arithmetic on two locals.
            unsafe {
                match op {
                    $($kind::$var => asm!(
                        concat!($ins, " {x}, {y}"),
                        x = inout(xmm_reg) x,
                        y = in(xmm_reg) y,
                        options(nostack, pure, nomem),
                    ),)*
                }
            }
            (from_m(x), 0)
        }
    };
}

host_int_ops!(host_int, Int {
    Paddb => "paddb", Paddw => "paddw", Paddd => "paddd", Paddq => "paddq",
    Psubb => "psubb", Psubw => "psubw", Psubd => "psubd", Psubq => "psubq",
    Paddsb => "paddsb", Paddsw => "paddsw", Paddusb => "paddusb", Paddusw => "paddusw",
    Psubsb => "psubsb", Psubsw => "psubsw", Psubusb => "psubusb", Psubusw => "psubusw",
    Pmullw => "pmullw", Pmulhw => "pmulhw", Pmulhuw => "pmulhuw", Pmuludq => "pmuludq",
    Pmaddwd => "pmaddwd", Pavgb => "pavgb", Pavgw => "pavgw", Pminub => "pminub", Pmaxub => "pmaxub",
    Pminsw => "pminsw", Pmaxsw => "pmaxsw", Psadbw => "psadbw",
    Pcmpeqb => "pcmpeqb", Pcmpeqw => "pcmpeqw", Pcmpeqd => "pcmpeqd",
    Pcmpgtb => "pcmpgtb", Pcmpgtw => "pcmpgtw", Pcmpgtd => "pcmpgtd",
    Packsswb => "packsswb", Packssdw => "packssdw", Packuswb => "packuswb",
    Punpcklbw => "punpcklbw", Punpcklwd => "punpcklwd", Punpckldq => "punpckldq", Punpcklqdq => "punpcklqdq",
    Punpckhbw => "punpckhbw", Punpckhwd => "punpckhwd", Punpckhdq => "punpckhdq", Punpckhqdq => "punpckhqdq",
    Psllw => "psllw", Pslld => "pslld", Psllq => "psllq", Psrlw => "psrlw", Psrld => "psrld", Psrlq => "psrlq",
    Psraw => "psraw", Psrad => "psrad",
    Unpcklps => "unpcklps", Unpckhps => "unpckhps", Unpcklpd => "unpcklpd", Unpckhpd => "unpckhpd",
});

macro_rules! pick {
    ($m:expr, $kind:ident: $($mn:ident),*) => { match $m { $(M::$mn => Some($kind::$mn),)* _ => None } };
}

/// The floating-point arithmetic run on the host under the guest's MXCSR.
fn fp_op(m: M) -> Option<Fp> {
    pick!(m, Fp:
        Addss, Addsd, Addps, Addpd, Subss, Subsd, Subps, Subpd, Mulss, Mulsd, Mulps, Mulpd,
        Divss, Divsd, Divps, Divpd, Minss, Minsd, Minps, Minpd, Maxss, Maxsd, Maxps, Maxpd,
        Sqrtss, Sqrtsd, Sqrtps, Sqrtpd, Cvtss2sd, Cvtsd2ss, Cvtdq2ps, Cvtdq2pd, Cvtps2dq,
        Cvttps2dq, Cvtpd2dq, Cvttpd2dq, Cvtps2pd, Cvtpd2ps
    )
}

/// The SSE2 integer arithmetic run on the host.
fn int_op(m: M) -> Option<Int> {
    pick!(m, Int:
        Paddb, Paddw, Paddd, Paddq, Psubb, Psubw, Psubd, Psubq, Paddsb, Paddsw, Paddusb,
        Paddusw, Psubsb, Psubsw, Psubusb, Psubusw, Pmullw, Pmulhw, Pmulhuw, Pmuludq, Pmaddwd,
        Pavgb, Pavgw, Pminub, Pmaxub, Pminsw, Pmaxsw, Psadbw, Pcmpeqb, Pcmpeqw, Pcmpeqd,
        Pcmpgtb, Pcmpgtw, Pcmpgtd, Packsswb, Packssdw, Packuswb, Punpcklbw, Punpcklwd,
        Punpckldq, Punpcklqdq, Punpckhbw, Punpckhwd, Punpckhdq, Punpckhqdq, Psllw, Pslld,
        Psllq, Psrlw, Psrld, Psrlq, Psraw, Psrad, Unpcklps, Unpckhps, Unpcklpd, Unpckhpd
    )
}

/// Arithmetic whose results the interpreter takes from the host itself (translated code may
/// run it in place).
pub(super) fn runs_on_host(m: M) -> bool {
    fp_op(m).is_some() || int_op(m).is_some()
}

/// Packed compares with an immediate predicate: run as the scalar-free form on the host.
fn host_cmp(packed_double: Option<bool>, pred: u8, a: u128, b: u128, csr: u32) -> (u128, u32) {
    macro_rules! cmp {
        ($ins:literal, $p:literal) => {{
            let mut x = to_m(a);
            let y = to_m(b);
            let mut save = 0u32;
            let mut c = csr | 0x1f80;
            // SAFETY: as in host_ops!.
            unsafe {
                asm!("stmxcsr [{s}]", "ldmxcsr [{c}]", concat!($ins, " {x}, {y}, ", $p), "stmxcsr [{c}]", "ldmxcsr [{s}]",
                    x = inout(xmm_reg) x, y = in(xmm_reg) y, c = in(reg) &mut c as *mut u32,
                    s = in(reg) &mut save as *mut u32, options(nostack))
            };
            (from_m(x), c)
        }};
    }
    macro_rules! by_pred {
        ($ins:literal) => {
            match pred & 7 {
                0 => cmp!($ins, "0"),
                1 => cmp!($ins, "1"),
                2 => cmp!($ins, "2"),
                3 => cmp!($ins, "3"),
                4 => cmp!($ins, "4"),
                5 => cmp!($ins, "5"),
                6 => cmp!($ins, "6"),
                _ => cmp!($ins, "7"),
            }
        };
    }
    match packed_double {
        None => by_pred!("cmpss"),
        Some(false) => by_pred!("cmpps"),
        Some(true) => by_pred!("cmppd"),
    }
}

fn host_cmpsd(pred: u8, a: u128, b: u128, csr: u32) -> (u128, u32) {
    macro_rules! cmp {
        ($p:literal) => {{
            let mut x = to_m(a);
            let y = to_m(b);
            let mut save = 0u32;
            let mut c = csr | 0x1f80;
            // SAFETY: as in host_ops!.
            unsafe {
                asm!("stmxcsr [{s}]", "ldmxcsr [{c}]", concat!("cmpsd {x}, {y}, ", $p), "stmxcsr [{c}]", "ldmxcsr [{s}]",
                    x = inout(xmm_reg) x, y = in(xmm_reg) y, c = in(reg) &mut c as *mut u32,
                    s = in(reg) &mut save as *mut u32, options(nostack))
            };
            (from_m(x), c)
        }};
    }
    match pred & 7 {
        0 => cmp!("0"),
        1 => cmp!("1"),
        2 => cmp!("2"),
        3 => cmp!("3"),
        4 => cmp!("4"),
        5 => cmp!("5"),
        6 => cmp!("6"),
        _ => cmp!("7"),
    }
}

/// (u)comis{s,d}: returns (ZF, PF, CF) and the MXCSR after.
fn host_comi(double: bool, unordered: bool, a: u128, b: u128, csr: u32) -> (u64, u32) {
    let x = to_m(a);
    let y = to_m(b);
    let mut save = 0u32;
    let mut c = csr | 0x1f80;
    let (mut z, mut p, mut cf): (u8, u8, u8) = (0, 0, 0);
    macro_rules! comi {
        ($ins:literal) => {
            // SAFETY: as in host_ops!; outputs are byte registers.
            unsafe {
                asm!("stmxcsr [{s}]", "ldmxcsr [{c}]", concat!($ins, " {x}, {y}"), "setz {z}", "setp {p}", "setc {cf}",
                    "stmxcsr [{c}]", "ldmxcsr [{s}]",
                    x = in(xmm_reg) x, y = in(xmm_reg) y, c = in(reg) &mut c as *mut u32,
                    s = in(reg) &mut save as *mut u32, z = out(reg_byte) z, p = out(reg_byte) p, cf = out(reg_byte) cf,
                    options(nostack))
            }
        };
    }
    match (double, unordered) {
        (false, false) => comi!("comiss"),
        (false, true) => comi!("ucomiss"),
        (true, false) => comi!("comisd"),
        (true, true) => comi!("ucomisd"),
    }
    let mut f = 0;
    if z != 0 {
        f |= fl::ZF;
    }
    if p != 0 {
        f |= fl::PF;
    }
    if cf != 0 {
        f |= fl::CF;
    }
    (f, c)
}

/// cvt(t)s{s,d}2si with a 32- or 64-bit destination.
fn host_cvt2si(m: M, wide: bool, a: u128, csr: u32) -> (u64, u32) {
    let x = to_m(a);
    let mut save = 0u32;
    let mut c = csr | 0x1f80;
    let mut r: u64 = 0;
    macro_rules! cvt {
        ($ins:literal) => {
            // SAFETY: as in host_ops!.
            unsafe {
                asm!("stmxcsr [{s}]", "ldmxcsr [{c}]", $ins, "stmxcsr [{c}]", "ldmxcsr [{s}]",
                    x = in(xmm_reg) x, r = out(reg) r, c = in(reg) &mut c as *mut u32,
                    s = in(reg) &mut save as *mut u32, options(nostack))
            }
        };
    }
    match (m, wide) {
        (M::Cvtss2si, true) => cvt!("cvtss2si {r}, {x}"),
        (M::Cvtss2si, false) => cvt!("cvtss2si {r:e}, {x}"),
        (M::Cvttss2si, true) => cvt!("cvttss2si {r}, {x}"),
        (M::Cvttss2si, false) => cvt!("cvttss2si {r:e}, {x}"),
        (M::Cvtsd2si, true) => cvt!("cvtsd2si {r}, {x}"),
        (M::Cvtsd2si, false) => cvt!("cvtsd2si {r:e}, {x}"),
        (M::Cvttsd2si, true) => cvt!("cvttsd2si {r}, {x}"),
        _ => cvt!("cvttsd2si {r:e}, {x}"),
    }
    (if wide { r } else { r & 0xffff_ffff }, c)
}

/// cvtsi2s{s,d} from a 32- or 64-bit integer, merging into `a`.
fn host_cvtsi2(double: bool, wide: bool, a: u128, v: u64, csr: u32) -> (u128, u32) {
    let mut x = to_m(a);
    let mut save = 0u32;
    let mut c = csr | 0x1f80;
    macro_rules! cvt {
        ($ins:literal) => {
            // SAFETY: as in host_ops!.
            unsafe {
                asm!("stmxcsr [{s}]", "ldmxcsr [{c}]", $ins, "stmxcsr [{c}]", "ldmxcsr [{s}]",
                    x = inout(xmm_reg) x, r = in(reg) v, c = in(reg) &mut c as *mut u32,
                    s = in(reg) &mut save as *mut u32, options(nostack))
            }
        };
    }
    match (double, wide) {
        (false, false) => cvt!("cvtsi2ss {x}, {r:e}"),
        (false, true) => cvt!("cvtsi2ss {x}, {r}"),
        (true, false) => cvt!("cvtsi2sd {x}, {r:e}"),
        (true, true) => cvt!("cvtsi2sd {x}, {r}"),
    }
    (from_m(x), c)
}

/// Deterministic approximate reciprocal (square root) of one float: the exact result with its
/// mantissa truncated to 12 bits, within the architectural error bound of 1.5 * 2^-12.
fn approx(v: u32, sqrt: bool) -> u32 {
    let f = f32::from_bits(v);
    let r = if sqrt {
        1.0 / (f as f64).sqrt()
    } else {
        1.0 / f as f64
    } as f32;
    if r.is_finite() && r != 0.0 {
        r.to_bits() & !0xfff
    } else {
        r.to_bits()
    }
}

fn lanes16(v: u128) -> [u16; 8] {
    let mut o = [0u16; 8];
    for (k, x) in o.iter_mut().enumerate() {
        *x = (v >> (16 * k)) as u16;
    }
    o
}
fn from16(l: [u16; 8]) -> u128 {
    l.iter()
        .enumerate()
        .fold(0u128, |acc, (k, &x)| acc | (x as u128) << (16 * k))
}
fn lanes32(v: u128) -> [u32; 4] {
    [
        v as u32,
        (v >> 32) as u32,
        (v >> 64) as u32,
        (v >> 96) as u32,
    ]
}
fn from32(l: [u32; 4]) -> u128 {
    l[0] as u128 | (l[1] as u128) << 32 | (l[2] as u128) << 64 | (l[3] as u128) << 96
}

const LO64: u128 = u64::MAX as u128;
const LO32: u128 = u32::MAX as u128;

impl Machine {
    /// Reads operand `n` of an SSE instruction as a 128-bit value.
    fn xsrc(&mut self, i: &Instruction, n: u32, aligned: bool) -> R<u128> {
        match i.op_kind(n) {
            OpKind::Register => {
                let r = i.op_register(n);
                if r.is_xmm() {
                    Ok(self.cpu.xmm[xmm(r)])
                } else {
                    Ok(self.get_reg(r) as u128)
                }
            }
            OpKind::Memory => {
                let a = self.ea(i);
                let size = i.memory_size().size();
                if size == 16 {
                    if aligned && a & 15 != 0 {
                        return Err(Ex::GeneralProtection);
                    }
                    return Ok(self.mem.read_u128(a)?);
                }
                Ok(match size {
                    1 => self.mem.read_u8(a)? as u128,
                    2 => self.mem.read_u16(a)? as u128,
                    4 => self.mem.read_u32(a)? as u128,
                    _ => self.mem.read_u64(a)? as u128,
                })
            }
            _ => Ok(i.immediate(n) as u128),
        }
    }

    /// Writes operand 0 of an SSE instruction (XMM register: whole register).
    fn xdst(&mut self, i: &Instruction, v: u128, aligned: bool) -> R<()> {
        match i.op0_kind() {
            OpKind::Register => {
                let r = i.op0_register();
                if r.is_xmm() {
                    self.cpu.xmm[xmm(r)] = v;
                } else {
                    self.set_reg(r, v as u64);
                }
                Ok(())
            }
            _ => {
                let a = self.ea(i);
                let size = i.memory_size().size();
                match size {
                    16 => {
                        if aligned && a & 15 != 0 {
                            return Err(Ex::GeneralProtection);
                        }
                        self.mem.write_u128(a, v)?
                    }
                    4 => self.mem.write_u32(a, v as u32)?,
                    8 => self.mem.write_u64(a, v as u64)?,
                    2 => self.mem.write_u16(a, v as u16)?,
                    _ => self.mem.write_u8(a, v as u8)?,
                }
                Ok(())
            }
        }
    }

    /// Merges new MXCSR status flags; an unmasked exception raises SIGFPE and changes nothing.
    fn mxcsr_update(&mut self, after: u32) -> R<()> {
        let flags = after & 0x3f;
        let masks = (self.cpu.mxcsr >> 7) & 0x3f;
        if flags & !masks != 0 {
            return Err(Ex::SimdFp(flags & !masks));
        }
        self.cpu.mxcsr |= flags;
        Ok(())
    }

    fn x0(&self, i: &Instruction) -> u128 {
        self.cpu.xmm[xmm(i.op0_register())]
    }

    // Each arm runs in an immediately called closure so that `?` ends just that arm.
    #[allow(clippy::redundant_closure_call)]
    pub(super) fn exec_sse(&mut self, i: &Instruction) -> Option<R<()>> {
        let m = i.mnemonic();
        let r = match m {
            M::Movaps | M::Movapd | M::Movdqa | M::Movntdq | M::Movntps | M::Movntpd => {
                Some(self.xsrc(i, 1, true).and_then(|v| self.xdst(i, v, true)))
            }
            M::Movups | M::Movupd | M::Movdqu => {
                Some(self.xsrc(i, 1, false).and_then(|v| self.xdst(i, v, false)))
            }
            M::Movss | M::Movsd => Some((|| {
                let lo = if m == M::Movss { LO32 } else { LO64 };
                let v = self.xsrc(i, 1, false)?;
                if i.op0_kind() == OpKind::Register && i.op1_kind() == OpKind::Register {
                    let d = self.x0(i);
                    self.xdst(i, (d & !lo) | (v & lo), false)
                } else {
                    self.xdst(i, v & lo, false)
                }
            })()),
            M::Movd | M::Movq => Some((|| {
                if i.op0_register().is_mm() || i.op1_register().is_mm() {
                    return Err(self.illegal(i));
                }
                let bits = if m == M::Movd { 32 } else { 64 };
                let v = self.xsrc(i, 1, false)?;
                let v = if bits == 32 { v & LO32 } else { v & LO64 };
                self.xdst(i, v, false)
            })()),
            M::Movnti => Some((|| {
                let bits = Self::op_bits(i, 1);
                let v = self.rd(i, 1, bits)?;
                self.wr(i, 0, bits, v)
            })()),
            M::Movlps | M::Movlpd | M::Movhps | M::Movhpd => Some((|| {
                let high = matches!(m, M::Movhps | M::Movhpd);
                if i.op0_kind() == OpKind::Memory {
                    let v = self.cpu.xmm[xmm(i.op1_register())];
                    let a = self.ea(i);
                    self.mem
                        .write_u64(a, if high { (v >> 64) as u64 } else { v as u64 })?;
                    Ok(())
                } else {
                    let v = self.xsrc(i, 1, false)? & LO64;
                    let d = self.x0(i);
                    self.xdst(
                        i,
                        if high {
                            (d & LO64) | v << 64
                        } else {
                            (d & !LO64) | v
                        },
                        false,
                    )
                }
            })()),
            M::Movhlps | M::Movlhps => Some((|| {
                let s = self.xsrc(i, 1, false)?;
                let d = self.x0(i);
                let v = if m == M::Movhlps {
                    (d & !LO64) | (s >> 64)
                } else {
                    (d & LO64) | (s << 64)
                };
                self.xdst(i, v, false)
            })()),
            M::Movmskps | M::Movmskpd | M::Pmovmskb => Some((|| {
                let s = self.xsrc(i, 1, false)?;
                let (lanes, w) = match m {
                    M::Movmskps => (4, 32),
                    M::Movmskpd => (2, 64),
                    _ => (16, 8),
                };
                let mut v = 0u64;
                for k in 0..lanes {
                    v |= (((s >> (w * k + w - 1)) & 1) as u64) << k;
                }
                self.set_reg(i.op0_register(), v);
                Ok(())
            })()),
            M::Andps
            | M::Andpd
            | M::Pand
            | M::Andnps
            | M::Andnpd
            | M::Pandn
            | M::Orps
            | M::Orpd
            | M::Por
            | M::Xorps
            | M::Xorpd
            | M::Pxor => Some((|| {
                let s = self.xsrc(i, 1, true)?;
                let d = self.x0(i);
                let v = match m {
                    M::Andps | M::Andpd | M::Pand => d & s,
                    M::Andnps | M::Andnpd | M::Pandn => !d & s,
                    M::Orps | M::Orpd | M::Por => d | s,
                    _ => d ^ s,
                };
                self.xdst(i, v, true)
            })()),
            M::Pshufd | M::Pshuflw | M::Pshufhw | M::Shufps | M::Shufpd => Some((|| {
                let s = self.xsrc(i, 1, true)?;
                let imm = i.immediate(2) as u32;
                let v = match m {
                    M::Pshufd => {
                        let l = lanes32(s);
                        from32([0, 1, 2, 3].map(|k| l[((imm >> (2 * k)) & 3) as usize]))
                    }
                    M::Pshuflw => {
                        let l = lanes16(s);
                        let mut o = l;
                        for k in 0..4 {
                            o[k] = l[((imm >> (2 * k)) & 3) as usize];
                        }
                        from16(o)
                    }
                    M::Pshufhw => {
                        let l = lanes16(s);
                        let mut o = l;
                        for k in 0..4 {
                            o[4 + k] = l[4 + ((imm >> (2 * k)) & 3) as usize];
                        }
                        from16(o)
                    }
                    M::Shufps => {
                        let d = lanes32(self.x0(i));
                        let l = lanes32(s);
                        from32([
                            d[(imm & 3) as usize],
                            d[((imm >> 2) & 3) as usize],
                            l[((imm >> 4) & 3) as usize],
                            l[((imm >> 6) & 3) as usize],
                        ])
                    }
                    _ => {
                        let d = self.x0(i);
                        let lo = if imm & 1 != 0 { d >> 64 } else { d & LO64 };
                        let hi = if imm & 2 != 0 { s >> 64 } else { s & LO64 };
                        lo | hi << 64
                    }
                };
                self.xdst(i, v, true)
            })()),
            M::Pinsrw => Some((|| {
                let s = self.xsrc(i, 1, false)? as u16;
                let k = (i.immediate(2) & 7) as usize;
                let mut l = lanes16(self.x0(i));
                l[k] = s;
                self.xdst(i, from16(l), false)
            })()),
            M::Pextrw => Some((|| {
                let s = self.cpu.xmm[xmm(i.op1_register())];
                let k = (i.immediate(2) & 7) as usize;
                self.set_reg(i.op0_register(), lanes16(s)[k] as u64);
                Ok(())
            })()),
            M::Pslldq | M::Psrldq => Some((|| {
                let n = i.immediate(1).min(16) as u32 * 8;
                let d = self.x0(i);
                let v = if n >= 128 {
                    0
                } else if m == M::Pslldq {
                    d << n
                } else {
                    d >> n
                };
                self.xdst(i, v, false)
            })()),
            M::Psllw
            | M::Pslld
            | M::Psllq
            | M::Psrlw
            | M::Psrld
            | M::Psrlq
            | M::Psraw
            | M::Psrad
                if i.op1_kind() != OpKind::Register && i.op1_kind() != OpKind::Memory =>
            {
                // Immediate count: same as the register form with the count in a register.
                let op = match m {
                    M::Psllw => Int::Psllw,
                    M::Pslld => Int::Pslld,
                    M::Psllq => Int::Psllq,
                    M::Psrlw => Int::Psrlw,
                    M::Psrld => Int::Psrld,
                    M::Psrlq => Int::Psrlq,
                    M::Psraw => Int::Psraw,
                    _ => Int::Psrad,
                };
                let d = self.x0(i);
                let (v, _) = host_int(op, d, (i.immediate(1) & 0xff) as u128, 0x1f80);
                Some(self.xdst(i, v, false))
            }
            M::Comiss | M::Ucomiss | M::Comisd | M::Ucomisd => Some((|| {
                let s = self.xsrc(i, 1, false)?;
                let d = self.x0(i);
                let double = matches!(m, M::Comisd | M::Ucomisd);
                let (f, c) = host_comi(
                    double,
                    matches!(m, M::Ucomiss | M::Ucomisd),
                    d,
                    s,
                    self.cpu.mxcsr,
                );
                self.mxcsr_update(c)?;
                self.cpu.set_arith_flags(f);
                Ok(())
            })()),
            M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => Some((|| {
                let s = self.xsrc(i, 1, false)?;
                let wide = i.op0_register().size() == 8;
                let (v, c) = host_cvt2si(m, wide, s, self.cpu.mxcsr);
                self.mxcsr_update(c)?;
                self.set_reg(i.op0_register(), v);
                Ok(())
            })()),
            M::Cvtsi2ss | M::Cvtsi2sd => Some((|| {
                let wide = Self::op_bits(i, 1) == 64;
                let v = self.xsrc(i, 1, false)? as u64;
                let (r, c) = host_cvtsi2(m == M::Cvtsi2sd, wide, self.x0(i), v, self.cpu.mxcsr);
                self.mxcsr_update(c)?;
                self.xdst(i, r, false)
            })()),
            M::Cmpss | M::Cmpsd | M::Cmpps | M::Cmppd => Some((|| {
                let scalar = matches!(m, M::Cmpss | M::Cmpsd);
                let s = self.xsrc(i, 1, !scalar)?;
                let d = self.x0(i);
                let pred = i.immediate(2) as u8;
                let (v, c) = match m {
                    M::Cmpss => host_cmp(None, pred, d, s, self.cpu.mxcsr),
                    M::Cmpps => host_cmp(Some(false), pred, d, s, self.cpu.mxcsr),
                    M::Cmppd => host_cmp(Some(true), pred, d, s, self.cpu.mxcsr),
                    _ => host_cmpsd(pred, d, s, self.cpu.mxcsr),
                };
                self.mxcsr_update(c)?;
                self.xdst(i, v, false)
            })()),
            M::Rcpps | M::Rcpss | M::Rsqrtps | M::Rsqrtss => Some((|| {
                let s = self.xsrc(i, 1, matches!(m, M::Rcpps | M::Rsqrtps))?;
                let sqrt = matches!(m, M::Rsqrtps | M::Rsqrtss);
                let l = lanes32(s);
                let v = if matches!(m, M::Rcpps | M::Rsqrtps) {
                    from32(l.map(|x| approx(x, sqrt)))
                } else {
                    (self.x0(i) & !LO32) | approx(l[0], sqrt) as u128
                };
                self.xdst(i, v, false)
            })()),
            _ => None,
        };
        if r.is_some() {
            return r;
        }
        // Two-operand arithmetic run on the host.
        if let Some(op) = fp_op(m) {
            return Some((|| {
                let aligned = i.memory_size().size() == 16;
                let s = self.xsrc(i, 1, aligned)?;
                let d = self.x0(i);
                let (v, c) = host_fp(op, d, s, self.cpu.mxcsr);
                self.mxcsr_update(c)?;
                self.xdst(i, v, false)
            })());
        }
        if let Some(op) = int_op(m) {
            return Some((|| {
                if i.op0_register().is_mm() {
                    return Err(self.illegal(i));
                }
                let s = self.xsrc(i, 1, true)?;
                let d = self.x0(i);
                let (v, _) = host_int(op, d, s, 0x1f80);
                self.xdst(i, v, false)
            })());
        }
        None
    }
}
