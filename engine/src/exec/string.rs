//! String instructions (movs, stos, lods, cmps, scas) with rep/repe/repne. Each iteration of a
//! `rep` instruction retires as one instruction, as the CPU's single-step trap counts them;
//! while iterations remain RIP stays on the instruction.

use super::R;
use crate::cpu::{mask, LazyOp, RAX, RCX, RDI, RSI};
use crate::machine::Machine;
use iced_x86::{Instruction, Mnemonic as M};

impl Machine {
    pub(super) fn exec_string(&mut self, i: &Instruction, budget: u64) -> R<u64> {
        let m = i.mnemonic();
        let bits: u32 = match m {
            M::Movsb | M::Stosb | M::Lodsb | M::Cmpsb | M::Scasb => 8,
            M::Movsw | M::Stosw | M::Lodsw | M::Cmpsw | M::Scasw => 16,
            M::Movsd | M::Stosd | M::Lodsd | M::Cmpsd | M::Scasd => 32,
            _ => 64,
        };
        let step = (bits / 8) as u64;
        let delta = if self.cpu.df() {
            step.wrapping_neg()
        } else {
            step
        };
        let rep = i.has_rep_prefix() || i.has_repne_prefix();
        let addr32 = matches!(
            i.op0_kind(),
            iced_x86::OpKind::MemoryESEDI | iced_x86::OpKind::MemorySegESI
        ) || matches!(
            i.op1_kind(),
            iced_x86::OpKind::MemoryESEDI | iced_x86::OpKind::MemorySegESI
        );
        let amask = if addr32 { 0xffff_ffff } else { u64::MAX };
        let src_base = match i.segment_prefix() {
            iced_x86::Register::FS => self.cpu.fs_base,
            iced_x86::Register::GS => self.cpu.gs_base,
            _ => 0,
        };
        let cmp_like = matches!(
            m,
            M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq | M::Scasb | M::Scasw | M::Scasd | M::Scasq
        );
        let mut done = 0u64;
        loop {
            if rep && self.cpu.gpr[RCX] & amask == 0 {
                // rep with nothing (left) to do: the instruction completes.
                return Ok(done.max(1));
            }
            if done == budget {
                // Out of budget with iterations left: stay on this instruction.
                self.cpu.rip = i.ip();
                return Ok(done);
            }
            let si = self.cpu.gpr[RSI] & amask;
            let di = self.cpu.gpr[RDI] & amask;
            let mut zf = false;
            match m {
                M::Movsb | M::Movsw | M::Movsd | M::Movsq => {
                    let v = self.mread(src_base.wrapping_add(si), bits)?;
                    self.mwrite(di, bits, v)?;
                    self.cpu.gpr[RSI] = si.wrapping_add(delta) & amask;
                    self.cpu.gpr[RDI] = di.wrapping_add(delta) & amask;
                }
                M::Stosb | M::Stosw | M::Stosd | M::Stosq => {
                    self.mwrite(di, bits, self.cpu.gpr[RAX] & mask(bits))?;
                    self.cpu.gpr[RDI] = di.wrapping_add(delta) & amask;
                }
                M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => {
                    let v = self.mread(src_base.wrapping_add(si), bits)?;
                    let r = match bits {
                        8 => iced_x86::Register::AL,
                        16 => iced_x86::Register::AX,
                        32 => iced_x86::Register::EAX,
                        _ => iced_x86::Register::RAX,
                    };
                    self.set_reg(r, v);
                    self.cpu.gpr[RSI] = si.wrapping_add(delta) & amask;
                }
                M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => {
                    let a = self.mread(src_base.wrapping_add(si), bits)?;
                    let b = self.mread(di, bits)?;
                    let res = a.wrapping_sub(b) & mask(bits);
                    self.cpu.set_lazy(LazyOp::Sub, bits, a, b, res);
                    zf = res == 0;
                    self.cpu.gpr[RSI] = si.wrapping_add(delta) & amask;
                    self.cpu.gpr[RDI] = di.wrapping_add(delta) & amask;
                }
                _ => {
                    let a = self.cpu.gpr[RAX] & mask(bits);
                    let b = self.mread(di, bits)?;
                    let res = a.wrapping_sub(b) & mask(bits);
                    self.cpu.set_lazy(LazyOp::Sub, bits, a, b, res);
                    zf = res == 0;
                    self.cpu.gpr[RDI] = di.wrapping_add(delta) & amask;
                }
            }
            done += 1;
            if !rep {
                return Ok(1);
            }
            let c = (self.cpu.gpr[RCX].wrapping_sub(1)) & amask;
            self.cpu.gpr[RCX] = c;
            if c == 0 {
                return Ok(done);
            }
            if cmp_like && ((i.has_rep_prefix() && !zf) || (i.has_repne_prefix() && zf)) {
                return Ok(done);
            }
            if self.mem.watch_hit.is_some() {
                // A watchpoint traps after this iteration; the rest of the rep is to come.
                self.cpu.rip = i.ip();
                return Ok(done);
            }
        }
    }
}
