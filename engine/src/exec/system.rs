//! System-level user instructions: syscall, cpuid, rdtsc, traps, FXSAVE/XSAVE, MXCSR.

use super::{Ex, R};
use crate::cpu::{RAX, RBX, RCX, RDX};
use crate::machine::Machine;
use iced_x86::{Instruction, Mnemonic as M};

impl Machine {
    pub(super) fn exec_system(&mut self, i: &Instruction) -> R<()> {
        match i.mnemonic() {
            // The instructions that end a native stretch (see kvm.rs; `cpuid` is executed in
            // place for the VM).
            M::Syscall
            | M::Rdtsc
            | M::Xgetbv
            | M::Xsave
            | M::Xsave64
            | M::Xrstor
            | M::Xrstor64
            | M::Xsaveopt
            | M::Xsaveopt64
                if self.pause_at_events =>
            {
                Err(Ex::Pause)
            }
            M::Syscall => {
                self.cpu.gpr[RCX] = self.cpu.rip;
                self.cpu.gpr[11] = self.cpu.rflags() & 0x3c_7fd7 | 2;
                self.syscall()
            }
            M::Cpuid => {
                let r = crate::cpuid::cpuid(self.cpu.gpr[RAX] as u32, self.cpu.gpr[RCX] as u32);
                self.cpu.gpr[RAX] = r[0] as u64;
                self.cpu.gpr[RBX] = r[1] as u64;
                self.cpu.gpr[RCX] = r[2] as u64;
                self.cpu.gpr[RDX] = r[3] as u64;
                Ok(())
            }
            M::Rdtsc => {
                let t = self.tsc();
                self.cpu.gpr[RAX] = t & 0xffff_ffff;
                self.cpu.gpr[RDX] = t >> 32;
                Ok(())
            }
            M::Int3 => Err(Ex::Breakpoint),
            M::Int | M::Hlt => Err(Ex::GeneralProtection),
            M::Ud2 | M::Ud0 | M::Ud1 => Err(Ex::Illegal(Box::new(format!("ud2 at {:#x}", i.ip())))),
            M::Fxsave | M::Fxsave64 => {
                let a = self.ea(i);
                if a & 15 != 0 {
                    return Err(Ex::GeneralProtection);
                }
                let img = self.fx_image();
                self.mem.write_bytes(a, &img)?;
                Ok(())
            }
            M::Fxrstor | M::Fxrstor64 => {
                let a = self.ea(i);
                if a & 15 != 0 {
                    return Err(Ex::GeneralProtection);
                }
                let mut img = [0u8; 512];
                self.mem.read_bytes(a, &mut img)?;
                self.load_fx_image(&img)
            }
            M::Xsave | M::Xsave64 => {
                let a = self.ea(i);
                if a & 63 != 0 {
                    return Err(Ex::GeneralProtection);
                }
                let rfbm = ((self.cpu.gpr[RDX] << 32) | (self.cpu.gpr[RAX] & 0xffff_ffff))
                    & crate::cpuid::XCR0;
                let img = self.fx_image();
                let mut hdr = [0u8; 8];
                self.mem.read_bytes(a + 512, &mut hdr)?;
                let mut bv = u64::from_le_bytes(hdr);
                if rfbm & 1 != 0 {
                    self.mem.write_bytes(a, &img[..160])?;
                    self.mem.write_bytes(a + 24, &img[24..32])?;
                }
                if rfbm & 2 != 0 {
                    self.mem.write_bytes(a + 24, &img[24..32])?;
                    self.mem.write_bytes(a + 160, &img[160..416])?;
                }
                bv = (bv & !rfbm) | rfbm;
                self.mem.write_bytes(a + 512, &bv.to_le_bytes())?;
                Ok(())
            }
            M::Xrstor | M::Xrstor64 => {
                let a = self.ea(i);
                if a & 63 != 0 {
                    return Err(Ex::GeneralProtection);
                }
                let rfbm = ((self.cpu.gpr[RDX] << 32) | (self.cpu.gpr[RAX] & 0xffff_ffff))
                    & crate::cpuid::XCR0;
                let mut area = [0u8; 576];
                self.mem.read_bytes(a, &mut area)?;
                let bv = u64::from_le_bytes(area[512..520].try_into().expect("8 bytes"));
                let mut cur = self.fx_image();
                if rfbm & 1 != 0 {
                    if bv & 1 != 0 {
                        cur[..24].copy_from_slice(&area[..24]);
                        cur[32..160].copy_from_slice(&area[32..160]);
                    } else {
                        let init = crate::cpu::X87::default();
                        self.cpu.x87 = init;
                        let fresh = self.fx_image();
                        cur[..24].copy_from_slice(&fresh[..24]);
                        cur[32..160].copy_from_slice(&fresh[32..160]);
                    }
                }
                if rfbm & 2 != 0 {
                    if bv & 2 != 0 {
                        cur[160..416].copy_from_slice(&area[160..416]);
                    } else {
                        cur[160..416].fill(0);
                    }
                }
                if rfbm & 3 != 0 {
                    cur[24..28].copy_from_slice(&area[24..28]);
                }
                self.load_fx_image(&cur)
            }
            M::Ldmxcsr => {
                let a = self.ea(i);
                let v = self.mem.read_u32(a)?;
                if v & !0xffff != 0 {
                    return Err(Ex::GeneralProtection);
                }
                self.cpu.mxcsr = v;
                Ok(())
            }
            M::Stmxcsr => {
                let a = self.ea(i);
                self.mem.write_u32(a, self.cpu.mxcsr)?;
                Ok(())
            }
            M::Xgetbv => {
                if self.cpu.gpr[RCX] as u32 != 0 {
                    return Err(Ex::GeneralProtection);
                }
                self.cpu.gpr[RAX] = crate::cpuid::XCR0;
                self.cpu.gpr[RDX] = 0;
                Ok(())
            }
            _ => Err(self.illegal(i)),
        }
    }
}
