//! x87 floating point with 80-bit extended precision.
//!
//! x87 arithmetic is IEEE 754 extended precision with the guest's control word (precision and
//! rounding), and every x86-64 CPU computes the basic operations bit-identically. Rather than
//! a second, slower and less faithful soft-float, fx86 executes each x87 instruction on the
//! host FPU in a sealed stub: the stub saves the host's x87/SSE state, loads the guest's state
//! (FXRSTOR), runs the one instruction re-encoded so its memory operand points at a scratch
//! buffer, saves the guest's state back (FXSAVE) and restores the host's. The guest's memory
//! is read and written only by fx86 around the stub, so permissions, watchpoints and
//! determinism work as for every other instruction. Host instruction and data pointers that
//! the FPU records are never copied into guest state.
//!
//! Known limit: transcendental instructions (fsin, fcos, fptan, fpatan, fyl2x, f2xm1) are
//! documented as implementation-specific in their last bit; they are deterministic on one host
//! CPU family but could differ between vendors.

use super::{Ex, R};
use crate::cpu::{fl, X87};
use crate::machine::Machine;
use iced_x86::{Encoder, Instruction, Mnemonic as M, OpKind, Register};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

#[repr(C, align(16))]
struct FxArea([u8; 512]);

/// Mnemonics of x87 instructions, each worked out from its iced name when first asked about.
fn is_x87(m: M) -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static KNOWN: OnceLock<Vec<AtomicU8>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        (0..=iced_x86::Mnemonic::values().count())
            .map(|_| AtomicU8::new(0))
            .collect()
    });
    let Some(k) = known.get(m as usize) else {
        return false;
    };
    match k.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let n = format!("{m:?}");
            let x = (n.starts_with('F')
                && !n.starts_with("Fxsave")
                && !n.starts_with("Fxrstor")
                && n != "Femms")
                || n == "Wait";
            k.store(if x { 1 } else { 2 }, Ordering::Relaxed);
            x
        }
    }
}

/// MMX instructions: those with an MMX register operand, and EMMS.
fn is_mmx(i: &Instruction) -> bool {
    i.mnemonic() == M::Emms
        || (0..i.op_count()).any(|k| {
            i.op_kind(k) == OpKind::Register
                && (Register::MM0..=Register::MM7).contains(&i.op_register(k))
        })
}

/// x87 instructions that do not first check for pending unmasked exceptions.
fn no_wait(m: M) -> bool {
    matches!(
        m,
        M::Fnstsw | M::Fnstcw | M::Fnclex | M::Fninit | M::Fnstenv | M::Fnsave | M::Fnop
    )
}

fn stores_memory(m: M) -> bool {
    matches!(
        m,
        M::Fst
            | M::Fstp
            | M::Fist
            | M::Fistp
            | M::Fisttp
            | M::Fnstcw
            | M::Fnstsw
            | M::Fnstenv
            | M::Fnsave
            | M::Fbstp
    )
}

/// Executable stubs, one per distinct re-encoded instruction.
struct Arena {
    base: *mut u8,
    len: usize,
    used: usize,
    stubs: HashMap<Vec<u8>, usize>,
}

// SAFETY: the arena's memory is only touched under the mutex.
unsafe impl Send for Arena {}

const ARENA_SIZE: usize = 1 << 20;

type Stub =
    unsafe extern "sysv64" fn(mem: *mut u8, guest: *mut u8, host: *mut u8, flags: u64) -> u64;

fn stub_for(insn: &[u8]) -> Option<Stub> {
    static ARENA: OnceLock<Mutex<Option<Arena>>> = OnceLock::new();
    let m = ARENA.get_or_init(|| {
        // SAFETY: anonymous private mapping; result checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ARENA_SIZE,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Mutex::new((p != libc::MAP_FAILED).then_some(Arena {
            base: p as *mut u8,
            len: ARENA_SIZE,
            used: 0,
            stubs: HashMap::new(),
        }))
    });
    let mut guard = m.lock().ok()?;
    let a = guard.as_mut()?;
    let off = match a.stubs.get(insn) {
        Some(&o) => o,
        None => {
            let mut code = Vec::new();
            code.extend_from_slice(&[0x48, 0x0f, 0xae, 0x02]); // fxsave64 [rdx]
            code.extend_from_slice(&[0x48, 0x0f, 0xae, 0x0e]); // fxrstor64 [rsi]
            code.extend_from_slice(&[0x51, 0x9d]); // push rcx; popfq
            code.extend_from_slice(insn);
            code.extend_from_slice(&[0x48, 0x0f, 0xae, 0x06]); // fxsave64 [rsi]
            code.extend_from_slice(&[0x9c, 0x58]); // pushfq; pop rax
            code.extend_from_slice(&[0x48, 0x0f, 0xae, 0x0a]); // fxrstor64 [rdx]
            code.push(0xc3); // ret
            let off = (a.used + 15) & !15;
            if off + code.len() > a.len {
                return None;
            }
            // SAFETY: the range lies inside the arena mapping; we make the page writable, copy
            // the stub, and make it executable again before anyone can call into it.
            unsafe {
                let page = (a.base as usize + off) & !4095;
                let end = (a.base as usize + off + code.len() + 4095) & !4095;
                if libc::mprotect(
                    page as *mut libc::c_void,
                    end - page,
                    libc::PROT_READ | libc::PROT_WRITE,
                ) != 0
                {
                    return None;
                }
                std::ptr::copy_nonoverlapping(code.as_ptr(), a.base.add(off), code.len());
                if libc::mprotect(
                    page as *mut libc::c_void,
                    end - page,
                    libc::PROT_READ | libc::PROT_EXEC,
                ) != 0
                {
                    return None;
                }
            }
            a.used = off + code.len();
            a.stubs.insert(insn.to_vec(), off);
            off
        }
    };
    // SAFETY: `off` is the start of a complete stub with the `Stub` calling convention.
    Some(unsafe { std::mem::transmute::<*mut u8, Stub>(a.base.add(off)) })
}

/// Points an instruction's memory operand at the stub's scratch buffer ([rdi]).
fn point_at_scratch(enc: &mut Instruction) {
    enc.set_memory_base(Register::RDI);
    enc.set_memory_index(Register::None);
    enc.set_memory_index_scale(1);
    enc.set_memory_displacement64(0);
    enc.set_memory_displ_size(0);
    enc.set_segment_prefix(Register::None);
}

impl Machine {
    /// Runs `enc` (the guest instruction `i`, re-encoded with any memory operand at [rdi]) on
    /// the host FPU with the guest's x87/SSE state and `scratch` as its memory operand. Returns
    /// the resulting FXSAVE image and the host's flags afterwards (for fcomi and friends).
    fn run_on_host(
        &self,
        i: &Instruction,
        enc: &Instruction,
        scratch: &mut [u8],
    ) -> R<([u8; 512], u64)> {
        let mut e = Encoder::new(64);
        if e.encode(enc, 0).is_err() {
            return Err(self.illegal(i));
        }
        let bytes = e.take_buffer();
        let stub = stub_for(&bytes)
            .ok_or_else(|| Ex::Illegal(Box::new("x87 stub arena unavailable".into())))?;
        let mut guest = FxArea(self.fx_image());
        // The host FPU would report the stub's addresses here; the guest gets zeros.
        guest.0[6..24].fill(0);
        let mut host = FxArea([0; 512]);
        let gflags = self.cpu.rflags() & fl::ARITH;
        // SAFETY: the stub only touches the three buffers passed (512-byte, 16-aligned areas
        // and `scratch`, which callers make larger than any memory operand of the
        // instruction) and the FPU/SSE state, which it restores from `host` before returning.
        let out_flags = unsafe {
            stub(
                scratch.as_mut_ptr(),
                guest.0.as_mut_ptr(),
                host.0.as_mut_ptr(),
                gflags | 2,
            )
        };
        Ok((guest.0, out_flags))
    }

    /// The FXSAVE image of the guest's x87 and SSE state.
    /// (Public for the lockstep tester, which mirrors the native FPU state.)
    pub fn fx_image(&self) -> [u8; 512] {
        let x = &self.cpu.x87;
        let mut img = [0u8; 512];
        img[0..2].copy_from_slice(&x.fcw.to_le_bytes());
        img[2..4].copy_from_slice(&x.fsw.to_le_bytes());
        img[4] = x.ftw as u8;
        img[6..8].copy_from_slice(&x.fop.to_le_bytes());
        img[8..16].copy_from_slice(&x.fip.to_le_bytes());
        img[16..24].copy_from_slice(&x.fdp.to_le_bytes());
        img[24..28].copy_from_slice(&self.cpu.mxcsr.to_le_bytes());
        img[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        let top = ((x.fsw >> 11) & 7) as usize;
        for i in 0..8 {
            img[32 + 16 * i..42 + 16 * i].copy_from_slice(&x.regs[(top + i) & 7]);
        }
        for (i, v) in self.cpu.xmm.iter().enumerate() {
            img[160 + 16 * i..176 + 16 * i].copy_from_slice(&v.to_le_bytes());
        }
        img
    }

    /// Loads x87 and SSE state from an FXSAVE image (#GP on reserved MXCSR bits).
    pub fn load_fx_image(&mut self, img: &[u8; 512]) -> R<()> {
        let mxcsr = u32::from_le_bytes(img[24..28].try_into().expect("4 bytes"));
        if mxcsr & !0xffff != 0 {
            return Err(Ex::GeneralProtection);
        }
        self.load_x87_from(img);
        self.cpu.mxcsr = mxcsr;
        for i in 0..16 {
            self.cpu.xmm[i] = u128::from_le_bytes(
                img[160 + 16 * i..176 + 16 * i]
                    .try_into()
                    .expect("16 bytes"),
            );
        }
        Ok(())
    }

    fn load_x87_from(&mut self, img: &[u8; 512]) {
        let mut x = X87 {
            fcw: u16::from_le_bytes([img[0], img[1]]),
            fsw: u16::from_le_bytes([img[2], img[3]]),
            ftw: img[4] as u16,
            ..X87::default()
        };
        let top = ((x.fsw >> 11) & 7) as usize;
        for i in 0..8 {
            x.regs[(top + i) & 7].copy_from_slice(&img[32 + 16 * i..42 + 16 * i]);
        }
        self.cpu.x87 = x;
    }

    pub(super) fn exec_x87(&mut self, i: &Instruction) -> Option<R<()>> {
        let m = i.mnemonic();
        if is_x87(m) {
            return Some(self.x87(i, m));
        }
        if is_mmx(i) {
            return Some(self.mmx(i, m));
        }
        None
    }

    /// MMX register `n` (the low 64 bits of physical x87 register n).
    fn mm(&self, n: usize) -> u64 {
        u64::from_le_bytes(self.cpu.x87.regs[n][..8].try_into().expect("8 bytes"))
    }

    /// What every MMX instruction does to the x87 state: TOP = 0, all registers valid.
    fn mmx_enter(&mut self) {
        self.cpu.x87.fsw &= !(7 << 11);
        self.cpu.x87.ftw = 0xff;
    }

    /// MMX instructions run on the host FPU like x87 ones (the MMX registers are the x87
    /// registers); general-register operands are turned into memory operands or done here.
    fn mmx(&mut self, i: &Instruction, m: M) -> R<()> {
        use iced_x86::Code as C;
        let x = &self.cpu.x87;
        if m != M::Emms && (x.fsw & 0x3f) & !(x.fcw & 0x3f) != 0 {
            return Err(Ex::X87Fp);
        }
        let mmn = |r: Register| (r as usize - Register::MM0 as usize) & 7;
        match i.code() {
            C::Pextrw_r32_mm_imm8 | C::Pextrw_r64_mm_imm8 => {
                let v = (self.mm(mmn(i.op1_register())) >> (16 * (i.immediate8() & 3))) & 0xffff;
                self.mmx_enter();
                self.set_reg(i.op0_register(), v);
                return Ok(());
            }
            C::Pmovmskb_r32_mm | C::Pmovmskb_r64_mm => {
                let v = self.mm(mmn(i.op1_register()));
                let mask = (0..8).fold(0u64, |acc, b| acc | (((v >> (8 * b + 7)) & 1) << b));
                self.mmx_enter();
                self.set_reg(i.op0_register(), mask);
                return Ok(());
            }
            C::Maskmovq_rDI_mm_mm => return Err(self.illegal(i)),
            _ => {}
        }
        let mut enc = *i;
        let mut buf = [0u8; 16];
        // A general register as the source: its value goes through the scratch buffer.
        let mut gpr_dest = None;
        for k in 0..i.op_count() {
            if i.op_kind(k) != OpKind::Register {
                continue;
            }
            let r = i.op_register(k);
            if !r.is_gpr() {
                continue;
            }
            if k == 0 {
                gpr_dest = Some(r);
            } else {
                let v = self.get_reg(r);
                buf[..8].copy_from_slice(&v.to_le_bytes());
            }
            enc.set_op_kind(k, OpKind::Memory);
        }
        let has_mem = (0..enc.op_count()).any(|k| enc.op_kind(k) == OpKind::Memory);
        let store = enc.op0_kind() == OpKind::Memory;
        let mut addr = 0;
        let size = i.memory_size().size().min(16);
        if has_mem {
            if (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory) {
                addr = self.ea(i);
                if !store {
                    self.mem.read_bytes(addr, &mut buf[..size])?;
                }
            }
            point_at_scratch(&mut enc);
        }
        let (guest, _) = self.run_on_host(i, &enc, &mut buf)?;
        if let Some(r) = gpr_dest {
            let v = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
            self.set_reg(r, v);
        } else if store {
            self.mem.write_bytes(addr, &buf[..size])?;
        }
        // Conversions between MMX and SSE registers change xmm and MXCSR flags too.
        self.load_fx_image(&guest)
    }

    fn x87(&mut self, i: &Instruction, m: M) -> R<()> {
        let x = &self.cpu.x87;
        if !no_wait(m) && (x.fsw & 0x3f) & !(x.fcw & 0x3f) != 0 {
            return Err(Ex::X87Fp);
        }
        if m == M::Fnstsw && i.op0_kind() == OpKind::Register {
            let v = self.cpu.x87.fsw as u64;
            self.set_reg(Register::AX, v);
            return Ok(());
        }
        if m == M::Wait || m == M::Fnop {
            return Ok(());
        }
        if matches!(m, M::Fnstcw | M::Fnstsw) {
            // Stores of the control or status word change nothing else (as run on the host,
            // the last-instruction pointers read as zero afterwards).
            let addr = self.ea(i);
            let x = &self.cpu.x87;
            let v = if m == M::Fnstcw { x.fcw } else { x.fsw };
            self.mem.write_bytes(addr, &v.to_le_bytes())?;
            let x = &mut self.cpu.x87;
            (x.fop, x.fip, x.fdp) = (0, 0, 0);
            return Ok(());
        }
        let has_mem = (0..i.op_count()).any(|k| i.op_kind(k) == OpKind::Memory);
        let mut buf = [0u8; 112];
        let mut addr = 0;
        let size = if has_mem {
            i.memory_size().size().min(108)
        } else {
            0
        };
        let mut enc = *i;
        if has_mem {
            addr = self.ea(i);
            if !stores_memory(m) {
                self.mem.read_bytes(addr, &mut buf[..size])?;
            } else if matches!(m, M::Fnstenv | M::Fnsave) {
                // Faults before state changes: probe writability.
                let mut probe = vec![0u8; size];
                self.mem.read_bytes(addr, &mut probe)?;
                self.mem.write_bytes(addr, &probe)?;
            }
            point_at_scratch(&mut enc);
        }
        let (guest, out_flags) = self.run_on_host(i, &enc, &mut buf)?;
        if stores_memory(m) && has_mem {
            if matches!(m, M::Fnstenv | M::Fnsave) {
                buf[12..28].fill(0);
            }
            self.mem.write_bytes(addr, &buf[..size])?;
        }
        let mxcsr = self.cpu.mxcsr;
        let xmm = self.cpu.xmm;
        self.load_x87_from(&guest);
        self.cpu.mxcsr = mxcsr;
        self.cpu.xmm = xmm;
        if matches!(m, M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip) {
            self.cpu
                .set_arith_flags(out_flags & (fl::ZF | fl::PF | fl::CF));
        }
        Ok(())
    }
}
