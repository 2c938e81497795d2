//! The Linux layer: the guest's kernel-side state and the system calls, by subject — files on
//! the data tree (`fs.rs`), memory (`mm.rs`), signals (`signal.rs`), process and time (here).
//!
//! Everything the guest can observe comes from the guest's state, the run's seed and the
//! virtual clock (derived from icount) — never from host time, pids or addresses. An unknown
//! syscall returns -ENOSYS and fx86 says so once on its own stderr.

mod fs;
pub(crate) mod mm;
pub(crate) mod procfs;
pub(crate) mod signal;

use crate::cpu::{RAX, RDI, RDX, RSI};
use crate::exec::{Ex, R};
use crate::machine::{Config, Machine, StopReason};
use fx86_snapshots::DataTree;
use std::collections::{BTreeMap, BTreeSet};

pub use fs::{Ofd, OfdKind};
pub use signal::{signal_name, SigAction};

/// errno values.
pub mod errno {
    pub const EPERM: i64 = 1;
    pub const ENOENT: i64 = 2;
    pub const ENODATA: i64 = 61;
    pub const EOPNOTSUPP: i64 = 95;
    pub const ESRCH: i64 = 3;
    pub const EINTR: i64 = 4;
    pub const EBADF: i64 = 9;
    pub const ECHILD: i64 = 10;
    pub const EAGAIN: i64 = 11;
    pub const ENOMEM: i64 = 12;
    pub const EACCES: i64 = 13;
    pub const EFAULT: i64 = 14;
    pub const EEXIST: i64 = 17;
    pub const EXDEV: i64 = 18;
    pub const ENOTDIR: i64 = 20;
    pub const EISDIR: i64 = 21;
    pub const EINVAL: i64 = 22;
    pub const EMFILE: i64 = 24;
    pub const ENOTTY: i64 = 25;
    pub const ESPIPE: i64 = 29;
    pub const ERANGE: i64 = 34;
    pub const ENAMETOOLONG: i64 = 36;
    pub const ENOSYS: i64 = 38;
    pub const ENOTEMPTY: i64 = 39;
    pub const ELOOP: i64 = 40;
}
use errno::*;

/// The guest's pid (and tid): fixed, so it is the same on every run.
pub const GUEST_PID: u64 = 1000;
/// Wall-clock time at icount 0: 2026-01-01T00:00:00Z.
pub const EPOCH_NS: u64 = 1_767_225_600_000_000_000;

/// Kernel-side state of the guest process. A plain value: cloning it is part of a snapshot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub fds: BTreeMap<i32, (u64, bool)>,
    pub ofds: BTreeMap<u64, Ofd>,
    next_ofd: u64,
    pub data: DataTree,
    pub cwd: String,
    pub exe: String,
    pub brk_start: u64,
    pub brk: u64,
    pub sigactions: Vec<SigAction>,
    pub sigmask: u64,
    pub pending: u64,
    pub altstack: (u64, u64, i32),
    pub umask: u32,
    pub seed: u64,
    pub random_counter: u64,
    pub tty: bool,
    pub auxv: Vec<(u64, u64)>,
    /// Modification times of the data tree's objects (seconds, nanoseconds): the host's for
    /// imported files, the virtual clock's for what the guest wrote. Shared between snapshots.
    pub mtimes: std::sync::Arc<BTreeMap<String, (i64, u32)>>,
    /// argv and the environment as /proc/self/cmdline and environ show them (NUL-terminated).
    pub cmdline: std::sync::Arc<Vec<u8>>,
    pub environ: std::sync::Arc<Vec<u8>>,
    pub tid_address: u64,
    /// Nanoseconds the guest slept (nanosleep advances the virtual clock).
    pub slept_ns: u64,
    warned: BTreeSet<String>,
}

impl Kernel {
    pub fn new(config: &Config, brk: u64, auxv: Vec<(u64, u64)>) -> Kernel {
        let mut k = Kernel {
            fds: BTreeMap::new(),
            ofds: BTreeMap::new(),
            next_ofd: 1,
            data: DataTree::new(),
            cwd: if config.cwd.is_empty() {
                "/".into()
            } else {
                config.cwd.clone()
            },
            exe: config.exe.clone(),
            brk_start: brk,
            brk,
            sigactions: vec![SigAction::default(); 65],
            sigmask: 0,
            pending: 0,
            altstack: (0, 0, 2),
            umask: 0o022,
            seed: config.seed,
            random_counter: 0,
            tty: config.tty,
            auxv,
            mtimes: Default::default(),
            cmdline: std::sync::Arc::new(nul_joined(&config.args)),
            environ: std::sync::Arc::new(nul_joined(&config.env)),
            tid_address: 0,
            slept_ns: 0,
            warned: BTreeSet::new(),
        };
        for fd in 0..3 {
            let kind = match fd {
                0 => OfdKind::Stdin,
                1 => OfdKind::Stdout,
                _ => OfdKind::Stderr,
            };
            let id = k.new_ofd(Ofd::new(kind, if fd == 0 { 0 } else { 1 }));
            k.fds.insert(fd, (id, false));
        }
        k
    }

    pub(crate) fn new_ofd(&mut self, o: Ofd) -> u64 {
        let id = self.next_ofd;
        self.next_ofd += 1;
        self.ofds.insert(id, o);
        id
    }

    /// Lowest free fd at or above `min`.
    pub(crate) fn free_fd(&self, min: i32) -> i32 {
        let mut fd = min;
        while self.fds.contains_key(&fd) {
            fd += 1;
        }
        fd
    }

    pub(crate) fn install_fd(&mut self, min: i32, ofd: u64, cloexec: bool) -> i64 {
        let fd = self.free_fd(min);
        if fd >= 1024 {
            self.ofds.remove(&ofd);
            return -EMFILE;
        }
        self.fds.insert(fd, (ofd, cloexec));
        fd as i64
    }

    pub(crate) fn close_fd(&mut self, fd: i32) -> bool {
        match self.fds.remove(&fd) {
            Some((id, _)) => {
                if !self.fds.values().any(|(o, _)| *o == id) {
                    self.ofds.remove(&id);
                }
                true
            }
            None => false,
        }
    }

    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        for (fd, (id, ce)) in &self.fds {
            h.update(&fd.to_le_bytes());
            h.update(&id.to_le_bytes());
            h.update(&[*ce as u8]);
        }
        for (id, o) in &self.ofds {
            h.update(&id.to_le_bytes());
            h.update(format!("{:?}", o).as_bytes());
        }
        self.data.hash_into(h);
        h.update(self.cwd.as_bytes());
        h.update(&self.brk.to_le_bytes());
        for a in &self.sigactions {
            h.update(&a.handler.to_le_bytes());
            h.update(&a.flags.to_le_bytes());
            h.update(&a.restorer.to_le_bytes());
            h.update(&a.mask.to_le_bytes());
        }
        h.update(&self.sigmask.to_le_bytes());
        h.update(&self.pending.to_le_bytes());
        h.update(&self.altstack.0.to_le_bytes());
        h.update(&self.altstack.1.to_le_bytes());
        h.update(&self.random_counter.to_le_bytes());
        h.update(&self.slept_ns.to_le_bytes());
        h.update(&self.umask.to_le_bytes());
        for (p, (sec, nsec)) in self.mtimes.iter() {
            h.update(p.as_bytes());
            h.update(&sec.to_le_bytes());
            h.update(&nsec.to_le_bytes());
        }
    }

    /// The modification time of a data-tree object.
    pub(crate) fn mtime_of(&self, path: &str) -> (i64, u32) {
        self.mtimes
            .get(path)
            .copied()
            .unwrap_or(((EPOCH_NS / 1_000_000_000) as i64, 0))
    }

    pub(crate) fn set_mtime(&mut self, path: &str, t: (i64, u32)) {
        std::sync::Arc::make_mut(&mut self.mtimes).insert(path.to_string(), t);
    }

    pub(crate) fn forget_mtime(&mut self, path: &str) {
        if self.mtimes.contains_key(path) {
            std::sync::Arc::make_mut(&mut self.mtimes).remove(path);
        }
    }
}

fn nul_joined(items: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for i in items {
        v.extend_from_slice(i);
        v.push(0);
    }
    v
}

impl Machine {
    /// Syscall arguments.
    pub(crate) fn arg(&self, n: usize) -> u64 {
        self.cpu.gpr[[RDI, RSI, RDX, 10, 8, 9][n]]
    }

    /// All six syscall arguments.
    pub(crate) fn args6(&self) -> [u64; 6] {
        [0, 1, 2, 3, 4, 5].map(|n| self.arg(n))
    }

    /// Says `msg` on fx86's stderr once per distinct message.
    pub(crate) fn warn_once(&mut self, msg: String) {
        if self.kernel.warned.insert(msg.clone()) {
            self.host.diagnostic(&msg);
        }
    }

    /// The virtual clock in nanoseconds since icount 0.
    pub fn virtual_ns(&mut self) -> u64 {
        self.now() + self.kernel.slept_ns
    }

    fn put_timespec(&mut self, addr: u64, ns: u64) -> R<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
        b[8..].copy_from_slice(&(ns % 1_000_000_000).to_le_bytes());
        self.mem.write_bytes(addr, &b)?;
        Ok(())
    }

    /// Fills `n` bytes from the run's deterministic random stream.
    pub(crate) fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut h = blake3::Hasher::new();
        h.update(b"fx86 getrandom");
        h.update(&self.kernel.seed.to_le_bytes());
        h.update(&self.kernel.random_counter.to_le_bytes());
        self.kernel.random_counter += 1;
        let mut out = vec![0u8; n];
        h.finalize_xof().fill(&mut out);
        out
    }

    /// Executes the syscall in RAX; the result goes to RAX. `Err(Ex::Stop)` ends the run.
    pub(crate) fn syscall(&mut self) -> R<()> {
        let nr = self.cpu.gpr[RAX];
        let icount = if self.host.needs_icount() {
            self.now()
        } else {
            self.icount
        };
        self.host.inexact(self.unsettled.is_some());
        self.host.at_icount(icount);
        self.host.event(crate::host::GuestEvent {
            icount,
            kind: crate::host::EventKind::Syscall(nr),
        });
        let r = self.syscall_inner(nr);
        match r {
            Ok(v) => self.cpu.gpr[RAX] = v as u64,
            Err(Ex::Fault(_)) => self.cpu.gpr[RAX] = (-EFAULT) as u64,
            Err(e) => return Err(e),
        }
        // Pending signals are delivered on the way back to user mode.
        self.deliver_pending()
    }

    fn syscall_inner(&mut self, nr: u64) -> R<i64> {
        let a0 = self.arg(0);
        let a1 = self.arg(1);
        Ok(match nr {
            0
            | 1
            | 2
            | 3
            | 4
            | 5
            | 6
            | 7
            | 8
            | 16
            | 17
            | 18
            | 19
            | 20
            | 21
            | 22
            | 23
            | 32
            | 33
            | 72
            | 74
            | 75
            | 76
            | 77
            | 78
            | 79
            | 80
            | 81
            | 82
            | 83
            | 84
            | 86
            | 87
            | 88
            | 89
            | 90
            | 91
            | 92
            | 93
            | 94
            | 132
            | 137
            | 138
            | 217
            | 257
            | 258
            | 260
            | 262
            | 263
            | 264
            | 265
            | 266
            | 267
            | 268
            | 269
            | 280
            | 292
            | 293
            | 316
            | 332
            | 439
            | 221
            | 285
            | 271
            | 270
            | 40
            | 326
            | 188..=199
            | 284
            | 290 => return self.sys_fs(nr),
            9 | 10 | 11 | 12 | 25 | 26 | 27 | 28 => return self.sys_mm(nr),
            13 | 14 | 15 | 62 | 131 | 200 | 234 | 127 | 130 => return self.sys_signal(nr),
            24 => 0,        // sched_yield
            51 | 52 => -88, // getsockname / getpeername: no fd is a socket (ENOTSOCK)
            41 | 53 => {
                // socket / socketpair: a guest has no network and no other process to talk to.
                if a0 != 1 {
                    self.warn_once(
                        "the guest tried to open a network socket; fx86 guests have no network (EACCES)"
                            .into(),
                    );
                }
                -EACCES
            }
            35 | 230 => {
                // nanosleep / clock_nanosleep: the virtual clock moves on by the request.
                let req = if nr == 35 { a0 } else { self.arg(2) };
                let s = self.mem.read_u64(req)?;
                let ns = self.mem.read_u64(req + 8)?;
                if ns >= 1_000_000_000 || (s as i64) < 0 {
                    return Ok(-EINVAL);
                }
                let total = s.saturating_mul(1_000_000_000).saturating_add(ns);
                if nr == 230 && self.arg(1) & 1 != 0 {
                    // TIMER_ABSTIME
                    let now = self.clock_ns(a0 as i32);
                    self.kernel.slept_ns += total.saturating_sub(now);
                } else {
                    self.kernel.slept_ns += total;
                }
                0
            }
            39 | 186 => GUEST_PID as i64,              // getpid, gettid
            110 => 1,                                  // getppid
            111 | 112 | 121 | 124 => GUEST_PID as i64, // getpgrp, setsid, getpgid, getsid
            109 => 0,                                  // setpgid
            102 | 107 => 1000,                         // getuid, geteuid
            104 | 108 => 1000,                         // getgid, getegid
            118 | 120 => {
                // getresuid / getresgid
                for k in 0..3 {
                    let p = self.arg(k);
                    self.mem.write_u32(p, 1000)?;
                }
                0
            }
            115 => 0, // getgroups: none
            105 | 106 | 113 | 114 | 117 | 119 | 122 | 123 => {
                // set*id: the guest is uid/gid 1000 and may only "change" to that.
                let ok = (0..3).all(|k| {
                    let v = self.arg(k) as i64 as i32;
                    v == -1 || v == 1000 || (k > 0 && matches!(nr, 105 | 106 | 122 | 123))
                });
                if ok {
                    0
                } else {
                    -EPERM
                }
            }
            60 | 231 => {
                let code = a0 as i32;
                self.ended = Some(StopReason::Exited(code & 0xff));
                return Err(Ex::Stop);
            }
            63 => {
                // uname
                let fields: [&[u8]; 6] = [
                    b"Linux",
                    b"fx86",
                    b"6.1.0-fx86",
                    b"#1 SMP fx86 deterministic",
                    b"x86_64",
                    b"(none)",
                ];
                let mut buf = vec![0u8; 65 * 6];
                for (k, f) in fields.iter().enumerate() {
                    buf[65 * k..65 * k + f.len()].copy_from_slice(f);
                }
                self.mem.write_bytes(a0, &buf)?;
                0
            }
            95 => {
                let old = self.kernel.umask;
                self.kernel.umask = a0 as u32 & 0o777;
                old as i64
            }
            96 => {
                // gettimeofday
                let ns = EPOCH_NS + self.virtual_ns();
                if a0 != 0 {
                    self.mem.write_u64(a0, ns / 1_000_000_000)?;
                    self.mem.write_u64(a0 + 8, (ns % 1_000_000_000) / 1000)?;
                }
                0
            }
            201 => {
                let s = (EPOCH_NS + self.virtual_ns()) / 1_000_000_000;
                if a0 != 0 {
                    self.mem.write_u64(a0, s)?;
                }
                s as i64
            }
            228 => {
                let clk = a0 as i32;
                if !(0..=11).contains(&clk) {
                    return Ok(-EINVAL);
                }
                let ns = self.clock_ns(clk);
                self.put_timespec(a1, ns)?;
                0
            }
            229 => {
                if a1 != 0 {
                    self.put_timespec(a1, 1)?;
                }
                0
            }
            97 | 302 => {
                // getrlimit / prlimit64
                let (res, new, old) = if nr == 97 {
                    (a0, 0, a1)
                } else {
                    (a1, self.arg(2), self.arg(3))
                };
                if nr == 302 && a0 != 0 && a0 != GUEST_PID {
                    return Ok(-ESRCH);
                }
                let _ = new;
                if old != 0 {
                    let (cur, max) = match res {
                        3 => (8 << 20, u64::MAX),  // RLIMIT_STACK
                        7 => (1024, 1024),         // RLIMIT_NOFILE
                        _ => (u64::MAX, u64::MAX), // unlimited
                    };
                    self.mem.write_u64(old, cur)?;
                    self.mem.write_u64(old + 8, max)?;
                }
                0
            }
            160 => 0, // setrlimit: accepted, not enforced
            98 => {
                // getrusage: user time from the virtual clock
                let mut b = [0u8; 144];
                let ns = self.virtual_ns();
                b[0..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
                b[8..16].copy_from_slice(&((ns % 1_000_000_000) / 1000).to_le_bytes());
                self.mem.write_bytes(a1, &b)?;
                0
            }
            100 => {
                // times
                let ticks = self.virtual_ns() / 10_000_000;
                if a0 != 0 {
                    let mut b = [0u8; 32];
                    b[..8].copy_from_slice(&ticks.to_le_bytes());
                    self.mem.write_bytes(a0, &b)?;
                }
                ticks as i64
            }
            99 => {
                // sysinfo
                let mut b = [0u8; 112];
                b[0..8].copy_from_slice(&(self.virtual_ns() / 1_000_000_000).to_le_bytes());
                b[32..40].copy_from_slice(&(4u64 << 30).to_le_bytes()); // totalram
                b[40..48].copy_from_slice(&(3u64 << 30).to_le_bytes()); // freeram
                b[80..82].copy_from_slice(&1u16.to_le_bytes()); // procs
                b[104..108].copy_from_slice(&1u32.to_le_bytes()); // mem_unit
                self.mem.write_bytes(a0, &b)?;
                0
            }
            158 => {
                // arch_prctl
                match a0 {
                    0x1002 => self.cpu.fs_base = a1,
                    0x1001 => self.cpu.gs_base = a1,
                    0x1003 => self.mem.write_u64(a1, self.cpu.fs_base)?,
                    0x1004 => self.mem.write_u64(a1, self.cpu.gs_base)?,
                    _ => return Ok(-EINVAL),
                }
                0
            }
            218 => {
                self.kernel.tid_address = a0;
                GUEST_PID as i64
            }
            273 => 0,       // set_robust_list
            334 => -ENOSYS, // rseq
            157 => self.sys_prctl()?,
            204 => {
                // sched_getaffinity: one CPU
                if a1 < 8 {
                    return Ok(-EINVAL);
                }
                self.mem.write_u64(self.arg(2), 1)?;
                8
            }
            203 => 0, // sched_setaffinity
            318 => {
                // getrandom
                let n = (a1 as usize).min(1 << 25);
                let bytes = self.random_bytes(n);
                self.mem.write_bytes(a0, &bytes)?;
                n as i64
            }
            202 => {
                // futex: with one thread, WAIT on a changed value is EAGAIN, WAKE wakes nobody.
                let op = a1 & 0x7f;
                match op {
                    0 | 9 => {
                        let cur = self.mem.read_u32(a0)?;
                        if cur != self.arg(2) as u32 {
                            -EAGAIN
                        } else {
                            self.warn_once(
                                "futex wait with no other thread to wake it: deadlock".into(),
                            );
                            -EINTR
                        }
                    }
                    _ => 0,
                }
            }
            56 | 57 | 58 | 435 => {
                self.warn_once(format!(
                    "the guest tried to create a {} (syscall {}); fx86 runs single-threaded guests only, so it got EAGAIN",
                    if nr == 56 || nr == 435 { "thread or process" } else { "process" },
                    nr
                ));
                if nr == 435 {
                    -ENOSYS
                } else {
                    -EAGAIN
                }
            }
            59 | 322 => {
                self.warn_once(
                    "the guest called execve; fx86 does not support exec yet (ENOSYS)".into(),
                );
                -ENOSYS
            }
            61 | 247 => -ECHILD, // wait4 / waitid
            _ => {
                let name = syscall_name(nr);
                self.warn_once(format!("unknown syscall {nr} ({name}) returns ENOSYS"));
                -ENOSYS
            }
        })
    }

    fn clock_ns(&mut self, clk: i32) -> u64 {
        match clk {
            0 | 5 | 8 | 11 => EPOCH_NS + self.virtual_ns(), // REALTIME, *_COARSE, *_ALARM, TAI
            2 | 3 => self.now(),                            // process/thread CPU time
            _ => 1_000_000_000 + self.virtual_ns(),         // MONOTONIC, RAW, BOOTTIME
        }
    }

    fn sys_prctl(&mut self) -> R<i64> {
        let op = self.arg(0);
        Ok(match op {
            15 => 0, // PR_SET_NAME
            16 => {
                self.mem.write_bytes(self.arg(1), b"fx86-guest\0")?;
                0
            }
            38 | 36 | 4 | 3 => 0, // NO_NEW_PRIVS, CHILD_SUBREAPER, SET/GET_DUMPABLE
            _ => -EINVAL,
        })
    }
}

/// A name for diagnostics (the common ones; others by number).
pub fn syscall_name(nr: u64) -> &'static str {
    match nr {
        29 => "shmget",
        30 => "shmat",
        31 => "shmctl",
        34 => "pause",
        36 => "getitimer",
        37 => "alarm",
        38 => "setitimer",
        40 => "sendfile",
        41 => "socket",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        49 => "bind",
        50 => "listen",
        53 => "socketpair",
        64 => "semget",
        73 => "flock",
        85 => "creat",
        101 => "ptrace",
        105 => "setuid",
        106 => "setgid",
        113 => "setreuid",
        114 => "setregid",
        116 => "setgroups",
        117 => "setresuid",
        161 => "chroot",
        165 => "mount",
        213 => "epoll_create",
        232 => "epoll_wait",
        233 => "epoll_ctl",
        253 => "inotify_init",
        281 => "epoll_pwait",
        283 => "timerfd_create",
        284 => "eventfd",
        290 => "eventfd2",
        291 => "epoll_create1",
        309 => "getcpu",
        319 => "memfd_create",
        324 => "membarrier",
        425 => "io_uring_setup",
        _ => "unnamed",
    }
}
