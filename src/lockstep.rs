//! `fx86 lockstep -- PROG`: the engine against the real CPU, one instruction at a time.
//!
//! The program runs natively under ptrace single-step and in the engine side by side. The
//! engine starts from the native process's own initial memory and registers, so both execute
//! the same bytes. After every instruction RIP, the GPRs, the arithmetic flags the instruction
//! defines, and XMM0-15 are compared; the first difference is reported with the icount, the
//! address, the disassembly and the registers that differ.
//!
//! Synchronisation points: the native side executes syscalls (the engine then takes the
//! native results: registers and all of memory) and signal deliveries. CPUID and RDTSC fault
//! natively (CPUID faulting via `arch_prctl(ARCH_SET_CPUID, 0)`, `prctl(PR_SET_TSC,
//! PR_TSC_SIGSEGV)`) and are answered with the engine's values, so both sides see fx86's CPU
//! model and virtual clock. The vDSO is hidden from the native program (AT_SYSINFO_EHDR is
//! turned into AT_IGNORE) so that time calls are real syscalls on both sides.

use fx86_engine::host::StdHost;
use fx86_engine::{Config, Machine, StopReason};
use std::ffi::CString;

const MAX_MAP_BYTES: u64 = 1 << 31;

struct Native {
    pid: libc::pid_t,
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl Native {
    fn spawn(path: &str, args: &[String]) -> Result<Native, String> {
        let cpath = CString::new(path).map_err(|e| e.to_string())?;
        let cargs: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap_or_default())
            .collect();
        let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: the child only makes async-signal-safe system calls before execv.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", errno()));
        }
        if pid == 0 {
            // SAFETY: plain system calls in the child; _exit on failure.
            unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
                libc::execv(cpath.as_ptr(), argv.as_ptr());
                libc::_exit(127);
            }
        }
        let n = Native { pid };
        let st = n.wait()?;
        if !libc::WIFSTOPPED(st) {
            return Err("the program did not start under ptrace".into());
        }
        Ok(n)
    }

    fn wait(&self) -> Result<i32, String> {
        let mut st = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut st, libc::__WALL) };
        if r < 0 {
            return Err(format!("waitpid: {}", errno()));
        }
        Ok(st)
    }

    fn regs(&self) -> libc::user_regs_struct {
        // SAFETY: zeroed plain-data struct filled by the kernel.
        unsafe {
            let mut r: libc::user_regs_struct = std::mem::zeroed();
            libc::ptrace(libc::PTRACE_GETREGS, self.pid, 0, &mut r as *mut _);
            r
        }
    }

    fn set_regs(&self, r: &libc::user_regs_struct) {
        // SAFETY: as above.
        unsafe {
            libc::ptrace(libc::PTRACE_SETREGS, self.pid, 0, r as *const _);
        }
    }

    fn fpregs(&self) -> [u8; 512] {
        let mut buf = [0u8; 512];
        // SAFETY: user_fpregs_struct is the 512-byte FXSAVE image.
        unsafe {
            libc::ptrace(libc::PTRACE_GETFPREGS, self.pid, 0, buf.as_mut_ptr());
        }
        buf
    }

    fn peek(&self, addr: u64) -> u64 {
        // SAFETY: PEEKDATA reads the tracee's memory.
        unsafe { libc::ptrace(libc::PTRACE_PEEKDATA, self.pid, addr, 0) as u64 }
    }

    fn poke(&self, addr: u64, v: u64) {
        // SAFETY: POKEDATA writes the tracee's memory.
        unsafe {
            libc::ptrace(libc::PTRACE_POKEDATA, self.pid, addr, v);
        }
    }

    /// Single-steps, delivering `sig`; returns the wait status.
    fn step(&self, sig: i32) -> Result<i32, String> {
        // SAFETY: resumes our stopped tracee for one instruction.
        unsafe {
            libc::ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0, sig as libc::c_long);
        }
        self.wait()
    }

    /// Runs one syscall in the tracee (at its current RIP, temporarily patched).
    fn inject_syscall(&self, nr: u64, a0: u64, a1: u64) -> Result<i64, String> {
        let saved = self.regs();
        let word = self.peek(saved.rip);
        self.poke(saved.rip, (word & !0xffff) | 0x050f);
        let mut r = saved;
        r.rax = nr;
        r.rdi = a0;
        r.rsi = a1;
        self.set_regs(&r);
        let st = self.step(0)?;
        let ret = self.regs().rax as i64;
        self.poke(saved.rip, word);
        self.set_regs(&saved);
        if !libc::WIFSTOPPED(st) {
            return Err("tracee died during setup".into());
        }
        Ok(ret)
    }

    fn maps(&self) -> Vec<(u64, u64, u8, String)> {
        let text = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default();
        let mut v = Vec::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(range), Some(perms)) = (it.next(), it.next()) else {
                continue;
            };
            let name = it.nth(3).unwrap_or("").to_string();
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(s), Ok(e)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
                continue;
            };
            if name == "[vvar]" || name == "[vsyscall]" || name == "[vvar_vclock]" {
                continue;
            }
            let p = perms.as_bytes();
            let prot =
                (p[0] == b'r') as u8 | ((p[1] == b'w') as u8) << 1 | ((p[2] == b'x') as u8) << 2;
            v.push((s, e, prot, name));
        }
        v
    }

    /// Every mapping and its contents.
    fn memory(&self) -> Vec<(u64, u64, u8, String, Vec<u8>)> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(format!("/proc/{}/mem", self.pid));
        let mut out = Vec::new();
        for (s, e, prot, name) in self.maps() {
            let mut bytes = Vec::new();
            if let Ok(f) = &f {
                if e - s <= MAX_MAP_BYTES {
                    bytes = vec![0u8; (e - s) as usize];
                    if f.read_exact_at(&mut bytes, s).is_err() {
                        bytes.clear();
                    }
                }
            }
            out.push((s, e, prot, name, bytes));
        }
        out
    }

    fn kill(&self) {
        // SAFETY: ending our own tracee.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
        }
        let _ = self.wait();
    }
}

fn gprs_of(r: &libc::user_regs_struct) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

const NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Copies the native registers, FPU/SSE state and memory into the engine.
fn sync_engine(m: &mut Machine, n: &Native) {
    let r = n.regs();
    m.cpu.gpr = gprs_of(&r);
    m.cpu.rip = r.rip;
    m.cpu.set_rflags(r.eflags);
    m.cpu.fs_base = r.fs_base;
    m.cpu.gs_base = r.gs_base;
    let fx = n.fpregs();
    let _ = m.load_fx_image(&fx);
    m.replace_memory(n.memory());
}

fn disasm(m: &mut Machine, rip: u64) -> String {
    let mut bytes = [0u8; 16];
    let _ = m.mem.fetch(rip, &mut bytes);
    let mut d = iced_x86::Decoder::with_ip(64, &bytes, rip, 0);
    format!("{}", d.decode())
}

/// Whether the instruction can change XMM registers (only then are they fetched and compared;
/// integer instructions cannot touch them, and it halves the ptrace traffic).
fn touches_vector_state(m: &mut Machine, rip: u64) -> bool {
    let mut bytes = [0u8; 16];
    let _ = m.mem.fetch(rip, &mut bytes);
    let mut d = iced_x86::Decoder::with_ip(64, &bytes, rip, 0);
    let i = d.decode();
    let name = format!("{:?}", i.mnemonic());
    (0..i.op_count())
        .any(|k| i.op_kind(k) == iced_x86::OpKind::Register && i.op_register(k).is_xmm())
        || name.starts_with("Fx")
        || name.starts_with("Xrstor")
        || i.is_invalid()
}

fn model_specific(m: &mut Machine, rip: u64) -> bool {
    let mut bytes = [0u8; 16];
    let _ = m.mem.fetch(rip, &mut bytes);
    let mut d = iced_x86::Decoder::with_ip(64, &bytes, rip, 0);
    matches!(
        d.decode().mnemonic(),
        iced_x86::Mnemonic::Tzcnt | iced_x86::Mnemonic::Lzcnt
    )
}

fn defined_flag_mask(m: &mut Machine, rip: u64) -> u64 {
    let mut bytes = [0u8; 16];
    let _ = m.mem.fetch(rip, &mut bytes);
    let mut d = iced_x86::Decoder::with_ip(64, &bytes, rip, 0);
    let i = d.decode();
    let arith = 0x8d5u64;
    let mut undefined = 0u64;
    // Shifts and rotates by more than 1 leave OF undefined; multiply leaves SF/ZF/AF/PF
    // undefined; iced does not model count-dependent cases, so be conservative there.
    use iced_x86::Mnemonic as M;
    match i.mnemonic() {
        M::Shl
        | M::Shr
        | M::Sar
        | M::Sal
        | M::Rol
        | M::Ror
        | M::Rcl
        | M::Rcr
        | M::Shld
        | M::Shrd => undefined |= 0x800 | 0x10,
        M::Mul | M::Imul => undefined |= 0xd4,
        M::Div | M::Idiv => undefined |= arith,
        M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt => undefined |= arith & !0x40,
        M::Bt | M::Bts | M::Btr | M::Btc => undefined |= arith & !0x41,
        M::And | M::Or | M::Xor | M::Test | M::Popcnt => undefined |= 0x10,
        _ => {}
    }
    (arith | 0x400) & !undefined
}

pub fn main(prog: &[String], max_insns: Option<u64>, progress: Option<u64>) -> i32 {
    match run(prog, max_insns, progress) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("fx86 lockstep: {msg}");
            2
        }
    }
}

fn run(prog: &[String], max_insns: Option<u64>, progress: Option<u64>) -> Result<i32, String> {
    let path =
        crate::find_program(&prog[0]).ok_or_else(|| format!("{}: command not found", prog[0]))?;
    let path = path.to_string_lossy().into_owned();
    let native = Native::spawn(&path, prog)?;
    // Both sides see fx86's CPU model and clock.
    // Where the CPU supports CPUID faulting, a CPUID we did not see coming (there should be
    // none: every instruction is single-stepped and CPUID/RDTSC are answered before they run)
    // would fault instead of leaking the host's model.
    let _ = native.inject_syscall(158, 0x1012, 0)?;
    let _ = native.inject_syscall(157, 26, 2)?;
    // Hide the vDSO: turn AT_SYSINFO_EHDR (33) into AT_IGNORE (1) in the initial auxv.
    let r0 = native.regs();
    let mut p = r0.rsp;
    let argc = native.peek(p);
    p += 8 * (argc + 2);
    while native.peek(p) != 0 {
        p += 8;
    }
    p += 8;
    loop {
        let key = native.peek(p);
        if key == 0 {
            break;
        }
        if key == 33 {
            native.poke(p, 1);
        }
        p += 16;
    }
    let host = StdHost {
        capture: Some(Vec::new()),
        ..Default::default()
    };
    let mut m = Machine::bare(&[0x90], Box::new(host));
    let _ = Config::default();
    sync_engine(&mut m, &native);

    let limit = max_insns.unwrap_or(u64::MAX);
    let mut compared = 0u64;
    loop {
        if m.icount >= limit {
            native.kill();
            println!("lockstep: {compared} instructions compared, no difference (limit reached)");
            return Ok(0);
        }
        let rip = m.cpu.rip;
        // The engine's memory mirrors the native process, so read the code from it.
        let mut code = [0u8; 8];
        let _ = m.mem.fetch(rip, &mut code);
        let word = u64::from_le_bytes(code);
        let (b0, b1) = (word as u8, (word >> 8) as u8);
        let is_syscall = b0 == 0x0f && b1 == 0x05;
        if is_syscall {
            let mut st = native.step(0)?;
            // A signal the syscall raised (raise, abort) is delivered by the native kernel.
            while libc::WIFSTOPPED(st) && libc::WSTOPSIG(st) != libc::SIGTRAP {
                st = native.step(libc::WSTOPSIG(st))?;
            }
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                let code = if libc::WIFEXITED(st) {
                    libc::WEXITSTATUS(st)
                } else {
                    128 + libc::WTERMSIG(st)
                };
                println!("lockstep: {compared} instructions compared, no difference; the program exited with {code}");
                return Ok(0);
            }
            m.icount += 1;
            sync_engine(&mut m, &native);
            compared += 1;
            continue;
        }
        let flag_mask = defined_flag_mask(&mut m, rip);
        let before = m.icount;
        let stop = m.run(m.icount + 1);
        let b2 = (word >> 16) as u8;
        let is_xgetbv = b0 == 0x0f && b1 == 0x01 && b2 == 0xd0;
        let emulate = b0 == 0x0f && (b1 == 0xa2 || b1 == 0x31) || is_xgetbv;
        // CPUID and RDTSC are answered with fx86's model and clock instead of running natively.
        let mut st = if emulate { 0x057f } else { native.step(0)? };
        if emulate {
            let mut r = native.regs();
            if b1 == 0xa2 {
                let v = fx86_engine::cpuid::cpuid(r.rax as u32, r.rcx as u32);
                r.rax = v[0] as u64;
                r.rbx = v[1] as u64;
                r.rcx = v[2] as u64;
                r.rdx = v[3] as u64;
            } else {
                r.rax = m.cpu.gpr[0];
                r.rdx = m.cpu.gpr[2];
            }
            r.rip += if is_xgetbv { 3 } else { 2 };
            native.set_regs(&r);
        } else if libc::WIFSTOPPED(st) && libc::WSTOPSIG(st) != libc::SIGTRAP {
            // The program took a signal (a fault of its own, or one it sent itself): let the
            // kernel deliver it, then continue from the native state.
            let sig = libc::WSTOPSIG(st);
            st = native.step(sig)?;
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                let native_code = if libc::WIFEXITED(st) {
                    libc::WEXITSTATUS(st)
                } else {
                    128 + libc::WTERMSIG(st)
                };
                let ours = match &stop {
                    StopReason::Signaled { sig, .. } => 128 + sig,
                    _ => -1,
                };
                if ours != -1 && ours != native_code {
                    println!("lockstep: DIVERGED at icount {}: native ended with status {native_code}, fx86 {stop:?}", m.icount);
                    return Ok(1);
                }
                println!("lockstep: {compared} instructions compared, no difference; the program died with status {native_code}");
                return Ok(0);
            }
            // The kernel stops a single-stepped tracee at the handler's entry, before any
            // handler instruction retires; the engine may already have run one.
            // Signal dispositions live in the native kernel (syscalls run there), so the
            // engine's own delivery is replaced by the native one.
            sync_engine(&mut m, &native);
            m.ended = None;
            m.icount = before;
            compared += 1;
            continue;
        } else if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            println!(
                "lockstep: {compared} instructions compared; the native program ended unexpectedly"
            );
            return Ok(1);
        }
        if model_specific(&mut m, rip) {
            // TZCNT/LZCNT are BSF/BSR on fx86's CPU model (no BMI1/LZCNT) but not on this
            // host: the native side takes the model's result.
            let mut r = native.regs();
            let g = m.cpu.gpr;
            r.rax = g[0];
            r.rcx = g[1];
            r.rdx = g[2];
            r.rbx = g[3];
            r.rsi = g[6];
            r.rdi = g[7];
            r.rbp = g[5];
            r.r8 = g[8];
            r.r9 = g[9];
            r.r10 = g[10];
            r.r11 = g[11];
            r.r12 = g[12];
            r.r13 = g[13];
            r.r14 = g[14];
            r.r15 = g[15];
            r.eflags = (r.eflags & !0x8d5) | (m.cpu.rflags() & 0x8d5);
            native.set_regs(&r);
        }
        compared += 1;
        if let Some(p) = progress {
            if compared.is_multiple_of(p) {
                eprintln!("lockstep: {compared} instructions");
            }
        }
        let r = native.regs();
        let ng = gprs_of(&r);
        let mut diffs = Vec::new();
        if r.rip != m.cpu.rip {
            diffs.push(format!("rip native={:#x} fx86={:#x}", r.rip, m.cpu.rip));
        }
        for k in 0..16 {
            if ng[k] != m.cpu.gpr[k] {
                diffs.push(format!(
                    "{} native={:#x} fx86={:#x}",
                    NAMES[k], ng[k], m.cpu.gpr[k]
                ));
            }
        }
        let (nf, ef) = (r.eflags & flag_mask, m.cpu.rflags() & flag_mask);
        if nf != ef {
            diffs.push(format!(
                "rflags(defined bits {flag_mask:#x}) native={nf:#x} fx86={ef:#x}"
            ));
        }
        // Bits the instruction leaves undefined take the hardware's values, so that a later
        // instruction that preserves them compares equal.
        let undefined = 0x8d5 & !flag_mask;
        let ef_full = m.cpu.rflags();
        m.cpu
            .set_rflags((ef_full & !undefined) | (r.eflags & undefined));
        if touches_vector_state(&mut m, rip) {
            let fx = native.fpregs();
            for k in 0..16 {
                let v = u128::from_le_bytes(
                    fx[160 + 16 * k..176 + 16 * k].try_into().unwrap_or([0; 16]),
                );
                if v != m.cpu.xmm[k] {
                    diffs.push(format!(
                        "xmm{k} native={v:#034x} fx86={:#034x}",
                        m.cpu.xmm[k]
                    ));
                }
            }
        }
        if !diffs.is_empty() {
            native.kill();
            let text = disasm(&mut m, rip);
            println!("lockstep: DIVERGED at icount {} after the instruction at {rip:#x}: {text} (fx86: {stop:?})", m.icount);
            for d in diffs {
                println!("  {d}");
            }
            return Ok(1);
        }
        if let StopReason::Signaled { .. } | StopReason::Exited(_) = stop {
            native.kill();
            println!("lockstep: fx86 ended ({stop:?}) where the native program did not");
            return Ok(1);
        }
    }
}
