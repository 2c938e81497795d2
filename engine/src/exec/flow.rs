//! Control flow and the stack: jumps, calls, returns, loops, push/pop, enter/leave.

use super::alu::cc_of;
use super::R;
use crate::cpu::{fl, RBP, RCX, RSP};
use crate::machine::Machine;
use iced_x86::{Instruction, Mnemonic as M, OpKind};

impl Machine {
    #[inline(always)]
    pub(crate) fn push64(&mut self, v: u64) -> R<()> {
        let sp = self.cpu.gpr[RSP].wrapping_sub(8);
        self.mem.write_u64(sp, v)?;
        self.cpu.gpr[RSP] = sp;
        Ok(())
    }

    #[inline(always)]
    pub(crate) fn pop64(&mut self) -> R<u64> {
        let sp = self.cpu.gpr[RSP];
        let v = self.mem.read_u64(sp)?;
        self.cpu.gpr[RSP] = sp.wrapping_add(8);
        Ok(v)
    }

    /// Target of a branch: relative (immediate) or indirect (register/memory).
    fn branch_target(&mut self, i: &Instruction) -> R<u64> {
        match i.op0_kind() {
            OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16 => {
                Ok(i.near_branch_target())
            }
            _ => {
                let bits = Self::op_bits(i, 0);
                self.rd(i, 0, bits)
            }
        }
    }

    pub(super) fn exec_flow(&mut self, i: &Instruction) -> R<()> {
        let m = i.mnemonic();
        match m {
            M::Jmp => {
                self.cpu.rip = self.branch_target(i)?;
                Ok(())
            }
            M::Call => {
                let t = self.branch_target(i)?;
                self.push64(i.next_ip())?;
                self.cpu.rip = t;
                Ok(())
            }
            M::Ret => {
                let t = self.mem.read_u64(self.cpu.gpr[RSP])?;
                let extra = if i.op_count() == 1 { i.immediate(0) } else { 0 };
                self.cpu.gpr[RSP] = self.cpu.gpr[RSP].wrapping_add(8 + extra);
                self.cpu.rip = t;
                Ok(())
            }
            M::Jrcxz | M::Jecxz => {
                let c = if m == M::Jrcxz {
                    self.cpu.gpr[RCX]
                } else {
                    self.cpu.gpr[RCX] & 0xffff_ffff
                };
                if c == 0 {
                    self.cpu.rip = i.near_branch_target();
                }
                Ok(())
            }
            M::Loop | M::Loope | M::Loopne => {
                let c = self.cpu.gpr[RCX].wrapping_sub(1);
                self.cpu.gpr[RCX] = c;
                let go = c != 0
                    && match m {
                        M::Loope => self.cpu.zf(),
                        M::Loopne => !self.cpu.zf(),
                        _ => true,
                    };
                if go {
                    self.cpu.rip = i.near_branch_target();
                }
                Ok(())
            }
            M::Push => {
                let bits = Self::op_bits(i, 0);
                let v = match i.op0_kind() {
                    OpKind::Register | OpKind::Memory => self.rd(i, 0, bits)?,
                    _ => i.immediate(0),
                };
                if bits == 16 {
                    let sp = self.cpu.gpr[RSP].wrapping_sub(2);
                    self.mem.write_u16(sp, v as u16)?;
                    self.cpu.gpr[RSP] = sp;
                    Ok(())
                } else {
                    self.push64(v)
                }
            }
            M::Pop => {
                let bits = Self::op_bits(i, 0);
                let sp = self.cpu.gpr[RSP];
                let size = if bits == 16 { 2 } else { 8 };
                let v = self.mread(sp, if bits == 16 { 16 } else { 64 })?;
                // `pop [rsp+x]` computes its address with RSP already incremented.
                self.cpu.gpr[RSP] = sp.wrapping_add(size);
                if let Err(e) = self.wr(i, 0, bits, v) {
                    self.cpu.gpr[RSP] = sp;
                    return Err(e);
                }
                Ok(())
            }
            M::Pushfq | M::Pushf => {
                // RF and VM read as zero.
                let f = self.cpu.rflags() & 0x00fc_ffff;
                self.push64(f)
            }
            M::Popfq | M::Popf => {
                let v = self.pop64()?;
                let changeable =
                    fl::ARITH | fl::TF | fl::DF | fl::OF | fl::AC | fl::ID | (3 << 12) | fl::IF;
                let user = fl::ARITH | fl::DF | fl::AC | fl::ID;
                let _ = changeable;
                let f = self.cpu.rflags();
                self.cpu.set_rflags((f & !user) | (v & user));
                Ok(())
            }
            M::Leave => {
                let bp = self.cpu.gpr[RBP];
                let v = self.mem.read_u64(bp)?;
                self.cpu.gpr[RSP] = bp.wrapping_add(8);
                self.cpu.gpr[RBP] = v;
                Ok(())
            }
            M::Enter => {
                let size = i.immediate(0);
                let level = i.immediate(1) & 31;
                let bp = self.cpu.gpr[RBP];
                self.push64(bp)?;
                let frame = self.cpu.gpr[RSP];
                for k in 1..level {
                    let v = self.mem.read_u64(bp.wrapping_sub(8 * k))?;
                    self.push64(v)?;
                }
                if level > 0 {
                    self.push64(frame)?;
                }
                self.cpu.gpr[RBP] = frame;
                self.cpu.gpr[RSP] = self.cpu.gpr[RSP].wrapping_sub(size);
                Ok(())
            }
            _ => {
                // Jcc
                if self.cpu.cond(cc_of(i)) {
                    self.cpu.rip = i.near_branch_target();
                }
                Ok(())
            }
        }
    }
}
