//! Signals: actions, masks, the alternate stack, sending signals to oneself, and turning CPU
//! exceptions into signals with a real x86-64 `rt_sigframe` (siginfo + ucontext + FXSAVE
//! state) that `rt_sigreturn` unwinds.

use super::errno::*;
use super::{Machine, GUEST_PID};
use crate::cpu::{RAX, RDI, RDX, RSI, RSP};
use crate::exec::{Ex, R};
use crate::machine::StopReason;

pub const SIGILL: i32 = 4;
pub const SIGTRAP: i32 = 5;
pub const SIGFPE: i32 = 8;
pub const SIGKILL: i32 = 9;
pub const SIGSEGV: i32 = 11;
pub const SIGSTOP: i32 = 19;

const SA_SIGINFO: u64 = 4;
const SA_ONSTACK: u64 = 0x0800_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
const SIG_DFL: u64 = 0;
const SIG_IGN: u64 = 1;
const SS_ONSTACK: i32 = 1;
const SS_DISABLE: i32 = 2;

/// One signal's disposition (the kernel's `struct sigaction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// The signal's name, for messages.
pub fn signal_name(sig: i32) -> String {
    let n = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        28 => "SIGWINCH",
        _ => return format!("signal {sig}"),
    };
    n.to_string()
}

fn is_canonical(a: u64) -> bool {
    let top = a >> 47;
    top == 0 || top == (1 << 17) - 1
}

fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

fn default_ignored(sig: i32) -> bool {
    matches!(sig, 17 | 18 | 23 | 28 | 20 | 21 | 22)
}

/// A signal about to be delivered, with what goes into its siginfo.
#[derive(Clone, Debug)]
struct SigInfo {
    sig: i32,
    code: i32,
    /// si_addr for faults; si_pid/si_uid packed for kill.
    field: u64,
    /// Why, for the user, if the signal ends the guest.
    msg: String,
    /// Synchronous fault: cannot be blocked or ignored.
    forced: bool,
}

impl Machine {
    /// Turns a CPU exception into a signal. Returns the stop reason if the guest ended.
    pub(crate) fn deliver_exception(&mut self, e: Ex) -> Option<StopReason> {
        let rip = self.cpu.rip;
        // A non-canonical address raises #GP, or #SS when the stack segment is used (RSP or
        // RBP as base): Linux reports SIGSEGV or SIGBUS with si_code SI_KERNEL and no address.
        let e = match e {
            Ex::Fault(f) if !is_canonical(f.addr) => {
                if self.stack_relative(rip) {
                    return self.deliver(SigInfo {
                        sig: 7,
                        code: 0x80,
                        field: 0,
                        msg: format!(
                            "SIGBUS: stack-segment fault (non-canonical address {:#x}) at {rip:#x}",
                            f.addr
                        ),
                        forced: true,
                    });
                }
                Ex::GeneralProtection
            }
            other => other,
        };
        let info = match e {
            Ex::Fault(f) if f.addr == rip && !f.write => SigInfo {
                sig: SIGSEGV,
                code: if f.protection { 2 } else { 1 },
                field: f.addr,
                msg: format!(
                    "SIGSEGV: jumped to {:#x}, which is {}",
                    f.addr,
                    if f.protection {
                        "not executable"
                    } else {
                        "not mapped"
                    }
                ),
                forced: true,
            },
            Ex::Fault(f) => SigInfo {
                sig: SIGSEGV,
                code: if f.protection { 2 } else { 1 },
                field: f.addr,
                msg: format!(
                    "SIGSEGV: invalid {} at address {:#x} ({}) by the instruction at {:#x}",
                    if f.write { "write" } else { "read" },
                    f.addr,
                    if f.protection {
                        "access not permitted"
                    } else {
                        "address not mapped"
                    },
                    rip
                ),
                forced: true,
            },
            Ex::DivideError => SigInfo {
                sig: SIGFPE,
                code: 1,
                field: rip,
                msg: format!("SIGFPE: integer divide error at {rip:#x}"),
                forced: true,
            },
            Ex::Illegal(what) => {
                let msg = format!("SIGILL at {rip:#x}: {what}");
                self.host.diagnostic(&msg);
                SigInfo {
                    sig: SIGILL,
                    code: 2,
                    field: rip,
                    msg,
                    forced: true,
                }
            }
            Ex::Breakpoint => {
                self.cpu.rip = rip + 1;
                SigInfo {
                    sig: SIGTRAP,
                    code: 0x80,
                    field: 0,
                    msg: format!("SIGTRAP: int3 at {rip:#x}"),
                    forced: true,
                }
            }
            Ex::GeneralProtection | Ex::Misaligned => SigInfo {
                sig: SIGSEGV,
                code: 0x80,
                field: 0,
                msg: format!("SIGSEGV: general protection fault at {rip:#x}"),
                forced: true,
            },
            Ex::SimdFp(flags) => {
                let code = if flags & 1 != 0 {
                    7
                } else if flags & 4 != 0 {
                    3
                } else if flags & 8 != 0 {
                    4
                } else if flags & 16 != 0 {
                    5
                } else if flags & 32 != 0 {
                    6
                } else {
                    7
                };
                SigInfo {
                    sig: SIGFPE,
                    code,
                    field: rip,
                    msg: format!("SIGFPE: SSE floating-point exception at {rip:#x}"),
                    forced: true,
                }
            }
            Ex::X87Fp => SigInfo {
                sig: SIGFPE,
                code: 7,
                field: rip,
                msg: format!("SIGFPE: x87 floating-point exception at {rip:#x}"),
                forced: true,
            },
            Ex::Stop | Ex::Pause => return self.ended.clone(),
        };
        self.deliver(info)
    }

    /// Whether the instruction at `rip` addresses memory through RSP or RBP.
    fn stack_relative(&mut self, rip: u64) -> bool {
        let mut bytes = [0u8; 16];
        if self.mem.fetch(rip, &mut bytes).is_err() {
            return false;
        }
        let mut d = iced_x86::Decoder::with_ip(64, &bytes, rip, 0);
        let i = d.decode();
        i.memory_segment() == iced_x86::Register::SS
    }

    fn deliver(&mut self, info: SigInfo) -> Option<StopReason> {
        let sig = info.sig;
        let icount = if self.host.needs_icount() {
            self.now()
        } else {
            self.icount
        };
        self.host.inexact(self.unsettled.is_some());
        self.host.event(crate::host::GuestEvent {
            icount,
            kind: crate::host::EventKind::Signal(sig),
        });
        let act = self.kernel.sigactions[sig as usize];
        let blocked = self.kernel.sigmask & bit(sig) != 0;
        let handled = act.handler != SIG_DFL && act.handler != SIG_IGN && !(info.forced && blocked);
        if !handled {
            if act.handler == SIG_IGN && !info.forced {
                return None;
            }
            if act.handler == SIG_DFL && default_ignored(sig) && !info.forced {
                return None;
            }
            return Some(StopReason::Signaled { sig, msg: info.msg });
        }
        match self.build_frame(&info, &act) {
            Ok(()) => None,
            Err(_) => {
                // Could not write the frame: the kernel kills with SIGSEGV.
                Some(StopReason::Signaled {
                    sig: SIGSEGV,
                    msg: format!(
                        "SIGSEGV: could not build the signal frame for {} ({})",
                        signal_name(sig),
                        info.msg
                    ),
                })
            }
        }
    }

    fn build_frame(&mut self, info: &SigInfo, act: &SigAction) -> R<()> {
        let sig = info.sig;
        let rsp = self.cpu.gpr[RSP];
        let (ss_sp, ss_size, ss_flags) = self.kernel.altstack;
        let on_alt = ss_flags != SS_DISABLE && rsp > ss_sp && rsp <= ss_sp + ss_size;
        let mut sp = if act.flags & SA_ONSTACK != 0 && ss_flags != SS_DISABLE && !on_alt {
            ss_sp + ss_size
        } else {
            rsp - 128
        };
        sp = (sp - 512) & !63;
        let fpstate = sp;
        let frame_size = 8 + 304 + 128;
        sp = ((sp - frame_size) & !15) - 8;
        let frame = sp;
        let uc = frame + 8;
        let si = uc + 304;

        let mut siginfo = [0u8; 128];
        siginfo[0..4].copy_from_slice(&sig.to_le_bytes());
        siginfo[8..12].copy_from_slice(&info.code.to_le_bytes());
        siginfo[16..24].copy_from_slice(&info.field.to_le_bytes());

        let mut u = [0u8; 304];
        u[16..24].copy_from_slice(&ss_sp.to_le_bytes());
        let alt_flags = if ss_flags == SS_DISABLE {
            SS_DISABLE
        } else if on_alt {
            SS_ONSTACK
        } else {
            0
        };
        u[24..28].copy_from_slice(&alt_flags.to_le_bytes());
        u[32..40].copy_from_slice(&ss_size.to_le_bytes());
        let g = &self.cpu.gpr;
        // sigcontext order: r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags
        let regs = [
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15],
            g[7],
            g[6],
            g[5],
            g[3],
            g[2],
            g[0],
            g[1],
            g[4],
            self.cpu.rip,
            self.cpu.rflags(),
        ];
        for (k, r) in regs.iter().enumerate() {
            u[40 + 8 * k..48 + 8 * k].copy_from_slice(&r.to_le_bytes());
        }
        u[184..186].copy_from_slice(&0x33u16.to_le_bytes()); // cs
        u[190..192].copy_from_slice(&0x2bu16.to_le_bytes()); // ss
        let trapno: u64 = match sig {
            SIGSEGV if info.code != 0x80 => 14,
            SIGSEGV => 13,
            SIGFPE => 0,
            SIGILL => 6,
            SIGTRAP => 3,
            _ => 0,
        };
        u[200..208].copy_from_slice(&trapno.to_le_bytes());
        u[208..216].copy_from_slice(&self.kernel.sigmask.to_le_bytes()); // oldmask
        if sig == SIGSEGV {
            u[216..224].copy_from_slice(&info.field.to_le_bytes()); // cr2
        }
        u[224..232].copy_from_slice(&fpstate.to_le_bytes());
        u[296..304].copy_from_slice(&self.kernel.sigmask.to_le_bytes());

        let fx = self.fx_image();
        self.mem.write_bytes(fpstate, &fx)?;
        self.mem.write_bytes(uc, &u)?;
        self.mem.write_bytes(si, &siginfo)?;
        self.mem.write_u64(frame, act.restorer)?;

        let mut newmask = self.kernel.sigmask | act.mask;
        if act.flags & SA_NODEFER == 0 {
            newmask |= bit(sig);
        }
        self.kernel.sigmask = newmask & !(bit(SIGKILL) | bit(SIGSTOP));
        if act.flags & SA_RESETHAND != 0 {
            self.kernel.sigactions[sig as usize] = SigAction::default();
        }
        self.cpu.gpr[RSP] = frame;
        self.cpu.gpr[RDI] = sig as u64;
        self.cpu.gpr[RSI] = if act.flags & SA_SIGINFO != 0 { si } else { 0 };
        self.cpu.gpr[RDX] = if act.flags & SA_SIGINFO != 0 { uc } else { 0 };
        self.cpu.gpr[RAX] = 0;
        self.cpu.rip = act.handler;
        let f = self.cpu.rflags() & !(crate::cpu::fl::DF | crate::cpu::fl::TF);
        self.cpu.set_rflags(f);
        self.cpu.x87 = crate::cpu::X87::default();
        Ok(())
    }

    /// Delivers a pending, unblocked signal (after a syscall). `Err(Ex::Stop)` if it ended
    /// the guest.
    pub(crate) fn deliver_pending(&mut self) -> R<()> {
        let ready = self.kernel.pending & !self.kernel.sigmask;
        if ready == 0 {
            return Ok(());
        }
        let sig = ready.trailing_zeros() as i32 + 1;
        self.kernel.pending &= !bit(sig);
        let info = SigInfo {
            sig,
            code: 0,
            field: GUEST_PID | (1000 << 32),
            msg: format!("{} sent by the guest to itself", signal_name(sig)),
            forced: false,
        };
        if let Some(stop) = self.deliver(info) {
            self.ended = Some(stop);
            return Err(Ex::Stop);
        }
        Ok(())
    }

    pub(super) fn sys_signal(&mut self, nr: u64) -> R<i64> {
        let a = [self.arg(0), self.arg(1), self.arg(2), self.arg(3)];
        Ok(match nr {
            13 => {
                let sig = a[0] as i64;
                if !(1..=64).contains(&sig) || a[3] != 8 {
                    return Ok(-EINVAL);
                }
                let sig = sig as usize;
                if a[2] != 0 {
                    let o = self.kernel.sigactions[sig];
                    let mut b = [0u8; 32];
                    b[0..8].copy_from_slice(&o.handler.to_le_bytes());
                    b[8..16].copy_from_slice(&o.flags.to_le_bytes());
                    b[16..24].copy_from_slice(&o.restorer.to_le_bytes());
                    b[24..32].copy_from_slice(&o.mask.to_le_bytes());
                    self.mem.write_bytes(a[2], &b)?;
                }
                if a[1] != 0 {
                    if sig == SIGKILL as usize || sig == SIGSTOP as usize {
                        return Ok(-EINVAL);
                    }
                    let mut b = [0u8; 32];
                    self.mem.read_bytes(a[1], &mut b)?;
                    let w = |k: usize| {
                        u64::from_le_bytes(b[8 * k..8 * k + 8].try_into().expect("8 bytes"))
                    };
                    self.kernel.sigactions[sig] = SigAction {
                        handler: w(0),
                        flags: w(1),
                        restorer: w(2),
                        mask: w(3),
                    };
                }
                0
            }
            14 => {
                if a[3] != 8 {
                    return Ok(-EINVAL);
                }
                let old = self.kernel.sigmask;
                if a[1] != 0 {
                    let set = self.mem.read_u64(a[1])?;
                    let new = match a[0] {
                        0 => old | set,
                        1 => old & !set,
                        2 => set,
                        _ => return Ok(-EINVAL),
                    };
                    self.kernel.sigmask = new & !(bit(SIGKILL) | bit(SIGSTOP));
                }
                if a[2] != 0 {
                    self.mem.write_u64(a[2], old)?;
                }
                0
            }
            15 => return self.sigreturn(),
            127 => {
                self.mem.write_u64(a[0], self.kernel.pending)?;
                0
            }
            130 => {
                // rt_sigsuspend: with one thread only an already pending signal can arrive.
                let set = self.mem.read_u64(a[0])?;
                let old = self.kernel.sigmask;
                self.kernel.sigmask = set;
                if self.kernel.pending & !set == 0 {
                    self.kernel.sigmask = old;
                    self.warn_once("sigsuspend with no signal that could ever arrive".into());
                    return Ok(-EINTR);
                }
                // The handler runs, then sigreturn restores this mask's predecessor.
                -EINTR
            }
            131 => {
                let (cur_sp, cur_size, cur_flags) = self.kernel.altstack;
                let rsp = self.cpu.gpr[RSP];
                let on = cur_flags != SS_DISABLE && rsp > cur_sp && rsp <= cur_sp + cur_size;
                if a[1] != 0 {
                    let mut b = [0u8; 24];
                    b[0..8].copy_from_slice(&cur_sp.to_le_bytes());
                    let fl = if on {
                        SS_ONSTACK
                    } else {
                        cur_flags & SS_DISABLE
                    };
                    b[8..12].copy_from_slice(&fl.to_le_bytes());
                    b[16..24].copy_from_slice(&cur_size.to_le_bytes());
                    self.mem.write_bytes(a[1], &b)?;
                }
                if a[0] != 0 {
                    if on {
                        return Ok(-EPERM);
                    }
                    let sp = self.mem.read_u64(a[0])?;
                    let flags = self.mem.read_u32(a[0] + 8)? as i32;
                    let size = self.mem.read_u64(a[0] + 16)?;
                    if flags & !(SS_DISABLE | (1 << 31)) != 0 {
                        return Ok(-EINVAL);
                    }
                    if flags & SS_DISABLE != 0 {
                        self.kernel.altstack = (0, 0, SS_DISABLE);
                    } else {
                        if size < 2048 {
                            return Ok(-ENOMEM);
                        }
                        self.kernel.altstack = (sp, size, 0);
                    }
                }
                0
            }
            62 | 200 | 234 => {
                let (pid, sig) = match nr {
                    62 => (a[0] as i64, a[1] as i64),
                    200 => (a[0] as i64, a[1] as i64),
                    _ => (a[1] as i64, a[2] as i64),
                };
                if nr == 234 && a[0] as i64 != GUEST_PID as i64 {
                    return Ok(-ESRCH);
                }
                if !(pid == GUEST_PID as i64
                    || (nr == 62 && (pid == 0 || pid == -1 || pid == -(GUEST_PID as i64))))
                {
                    return Ok(-ESRCH);
                }
                if !(0..=64).contains(&sig) {
                    return Ok(-EINVAL);
                }
                if sig == 0 {
                    return Ok(0);
                }
                if sig as i32 == SIGKILL {
                    self.ended = Some(StopReason::Signaled {
                        sig: SIGKILL,
                        msg: "SIGKILL sent by the guest to itself".into(),
                    });
                    return Err(Ex::Stop);
                }
                // Delivered on the way back to user mode, after the result is in RAX.
                self.kernel.pending |= bit(sig as i32);
                0
            }
            _ => -ENOSYS,
        })
    }

    fn sigreturn(&mut self) -> R<i64> {
        let uc = self.cpu.gpr[RSP];
        let mut u = [0u8; 304];
        self.mem.read_bytes(uc, &mut u)?;
        let w = |o: usize| u64::from_le_bytes(u[o..o + 8].try_into().expect("8 bytes"));
        let order = [8usize, 9, 10, 11, 12, 13, 14, 15, 7, 6, 5, 3, 2, 0, 1, 4];
        for (k, &r) in order.iter().enumerate() {
            self.cpu.gpr[r] = w(40 + 8 * k);
        }
        self.cpu.rip = w(40 + 8 * 16);
        let flags = w(40 + 8 * 17);
        let keep = self.cpu.rflags() & !0x0004_0dd5;
        self.cpu.set_rflags(keep | (flags & 0x0004_0dd5));
        let fp = w(224);
        if fp != 0 {
            let mut img = [0u8; 512];
            self.mem.read_bytes(fp, &mut img)?;
            let mut m = u32::from_le_bytes(img[24..28].try_into().expect("4 bytes"));
            m &= 0xffff;
            img[24..28].copy_from_slice(&m.to_le_bytes());
            self.load_fx_image(&img)?;
        }
        self.kernel.sigmask = w(296) & !(bit(SIGKILL) | bit(SIGSTOP));
        Ok(self.cpu.gpr[RAX] as i64)
    }
}
