//! The KVM backend: the guest's user code runs natively, at CPL 3 in a minimal long-mode VM,
//! on page tables built from the guest's own mappings. Every `syscall`, every fault that is
//! not a page we simply had not mapped yet, and `rdtsc` (trapped through CR4.TSD) leave the VM
//! and are handed to the interpreter, which executes that one instruction with the same Linux
//! layer as always. So the two backends cannot disagree about the kernel, signals or time.
//!
//! What a native stretch does not give is its length: there are no performance counters. The
//! state at the start of each stretch is kept (a copy-on-write snapshot), and the length is
//! found by replaying the stretch in the interpreter up to the event that ended it, only when
//! something needs the exact icount (a clock read, `rdtsc`, a recording, `--stats`).
//!
//! Physical memory: slot 0 holds the VM's own structures (GDT, IDT, TSS, exit stubs, a kernel
//! stack and the page-table pages); slots 1.. are 64 MiB chunks of page frames for guest
//! pages, with dirty logging, so that after an exit only the pages the guest wrote are copied
//! back into the state tree. The engine's pages stay the truth whenever the VM is not running.

use crate::cpu::{RCX, RSP};
use crate::host::{Host, HostStat};
use crate::machine::{Machine, Snapshot, StopReason};
use crate::mem::{Vma, PROT_EXEC, PROT_READ, PROT_WRITE};
use fx86_snapshots::{FileKind, PageTree, PAGE_SIZE};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_msr_entry, kvm_regs, kvm_segment, kvm_userspace_memory_region, kvm_xcr,
    kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Where the VM's own structures appear in the guest's address space (PML4 slot 511,
/// supervisor-only, so user code cannot see them).
const KBASE: u64 = 0xffff_ff80_0000_0000;
const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const TSS: u64 = 0x3000;
/// Exception stubs: vector `v` halts at `STUBS + 8 * v`.
const STUBS: u64 = 0x4000;
const SYSCALL_STUB: u64 = STUBS + 0x800;
/// `iretq` into user mode from a frame we write on the kernel stack.
const RESUME: u64 = STUBS + 0x900;
/// The same after reloading CR3 (dropping stale translations).
const RESUME_FLUSH: u64 = STUBS + 0x980;
const KSTACK_TOP: u64 = 0x8000;
const PML4: u64 = 0x9000;
const KPDPT: u64 = 0xa000;
const KPD: u64 = 0xb000;
const KPT: u64 = 0xc000;
const PT_POOL: u64 = 0x10000;
const SYS_SIZE: u64 = 64 << 20;
const CHUNK: u64 = 64 << 20;
const FRAMES_PER_CHUNK: u64 = CHUNK / PAGE_SIZE as u64;
const FRAME_BASE: u64 = 1 << 32;
const NO_PAGE: u64 = u64::MAX;

const KERNEL_CS: u16 = 0x10;
const KERNEL_SS: u16 = 0x18;
const USER_SS: u64 = 0x2b;
const USER_CS: u64 = 0x33;
const TSS_SEL: u16 = 0x40;

const PTE_P: u64 = 1;
const PTE_RW: u64 = 2;
const PTE_U: u64 = 4;
const PTE_NX: u64 = 1 << 63;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;

const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_RF: u64 = 1 << 16;

/// Anonymous host memory given to the VM as guest-physical memory.
struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; the VM that also maps it belongs to
// the same `NativeVm` and runs only on the thread that owns it.
unsafe impl Send for Region {}

impl Region {
    fn new(len: u64) -> Result<Region, String> {
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "cannot reserve {} MiB for guest memory: {}",
                len >> 20,
                std::io::Error::last_os_error()
            ));
        }
        Ok(Region {
            ptr: ptr.cast(),
            len: len as usize,
        })
    }

    fn page(&self, off: u64) -> &[u8; PAGE_SIZE] {
        assert!(off as usize + PAGE_SIZE <= self.len && off.is_multiple_of(PAGE_SIZE as u64));
        // SAFETY: in bounds (checked) and page-aligned; the VM is stopped whenever the host
        // touches guest memory, so there is no concurrent access.
        unsafe { &*(self.ptr.add(off as usize) as *const [u8; PAGE_SIZE]) }
    }

    fn page_mut(&mut self, off: u64) -> &mut [u8; PAGE_SIZE] {
        assert!(off as usize + PAGE_SIZE <= self.len && off.is_multiple_of(PAGE_SIZE as u64));
        // SAFETY: as in `page`, and `&mut self` makes this the only reference.
        unsafe { &mut *(self.ptr.add(off as usize) as *mut [u8; PAGE_SIZE]) }
    }

    fn u64_at(&self, off: u64) -> u64 {
        assert!(off as usize + 8 <= self.len);
        // SAFETY: in bounds (checked); unaligned reads are allowed by `read_unaligned`.
        unsafe { std::ptr::read_unaligned(self.ptr.add(off as usize) as *const u64) }
    }

    fn set_u64(&self, off: u64, v: u64) {
        assert!(off as usize + 8 <= self.len);
        // SAFETY: as in `u64_at`.
        unsafe { std::ptr::write_unaligned(self.ptr.add(off as usize) as *mut u64, v) }
    }

    fn write(&self, off: u64, data: &[u8]) {
        assert!(off as usize + data.len() <= self.len);
        // SAFETY: in bounds (checked).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off as usize), data.len())
        }
    }

    /// Gives `[off, off+len)` back to the host; it reads as zero afterwards.
    fn discard(&self, off: u64, len: u64) {
        assert!((off + len) as usize <= self.len);
        // SAFETY: the range lies inside our own private anonymous mapping.
        unsafe {
            libc::madvise(
                self.ptr.add(off as usize).cast(),
                len as usize,
                libc::MADV_DONTNEED,
            );
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Why the VM stopped.
enum Event {
    /// The guest executed `syscall`.
    Syscall(kvm_regs),
    /// An exception at CPL 3 that is the guest's business (delivered by the interpreter).
    Exception {
        /// An instruction fetch from a page the interpreter must run.
        interpret: bool,
        regs: kvm_regs,
        rip: u64,
        rflags: u64,
        rsp: u64,
    },
}

/// Counters for the benchmark and `--stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeStats {
    /// Times the VM was entered.
    pub entries: u64,
    pub syscalls: u64,
    /// Exceptions handed to the interpreter (signals, `rdtsc`).
    pub exceptions: u64,
    /// Page faults that only mapped a page.
    pub page_faults: u64,
    /// Pages copied back after being written natively.
    pub dirty_pages: u64,
    /// Times execution ran into a page that the interpreter must run.
    pub interpreted: u64,
}

/// A KVM virtual machine that runs one guest's user code.
pub struct NativeVm {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: VcpuFd,
    sys: Region,
    chunks: Vec<Region>,
    /// Guest page number → frame index.
    frame_of: BTreeMap<u64, u64>,
    /// Frame index → guest page number (`NO_PAGE` if free).
    pn_of: Vec<u64>,
    free: Vec<u64>,
    pt_next: u64,
    /// The engine's pages and mappings as the frames and page tables reflect them.
    mirror: PageTree,
    mirror_vmas: BTreeMap<u64, Vma>,
    fs_base: u64,
    gs_base: u64,
    flush: bool,
    last_fault: (u64, u32),
    /// Executable pages that hold (or may hold) an instruction whose native result would
    /// differ from the model (`cpuid`, `xgetbv`, XSAVE, `rdrand`), and writable code: mapped
    /// non-executable, so that the interpreter runs them.
    interp_pages: Arc<BTreeSet<u64>>,
    /// Executable pages whose model-specific instructions were found by decoding (see
    /// `classify_page`) and are patched to `ud2` in the frame, so the page runs natively.
    patched: BTreeMap<u64, Vec<u16>>,
    /// Seeds tried for pages that could not be classified yet (retry when there are more).
    tried: BTreeMap<u64, usize>,
    /// Replay every stretch at once and compare the interpreter's state with the native
    /// one at its end (slow; for tests).
    pub cross_check: bool,
    pub stats: NativeStats,
}

/// One native stretch: the state it started from and the pages it could not execute (where
/// it ended if it ran into one).
pub(crate) struct Stretch {
    start: Snapshot,
    interp_pages: Arc<BTreeSet<u64>>,
    /// Instructions the interpreter executed after the stretch ended (the syscall, the
    /// faulting instruction, or the code on pages that are always interpreted).
    after: u64,
}

/// Native stretches whose lengths are not known yet (see the module comment).
pub(crate) struct Unsettled {
    /// The icount at the start of the first stretch.
    base: u64,
    stretches: Vec<Stretch>,
    /// The stretch that ended at the event being handled now, and the (relative) icount at
    /// which the interpreter took over.
    open: Option<(Stretch, u64)>,
}

/// A host for the replaying machine, which never reaches a syscall.
struct NoHost;

impl Host for NoHost {
    fn read_stdin(&mut self, _max: usize) -> Vec<u8> {
        Vec::new()
    }
    fn write_output(&mut self, _fd: i32, _data: &[u8]) {}
    fn diagnostic(&mut self, _msg: &str) {}
    fn lstat(&mut self, _path: &str) -> Option<HostStat> {
        None
    }
    fn read_file(&mut self, _path: &str) -> Option<std::sync::Arc<Vec<u8>>> {
        None
    }
    fn read_link(&mut self, _path: &str) -> Option<Vec<u8>> {
        None
    }
    fn list_dir(&mut self, _path: &str) -> Option<Vec<(String, FileKind)>> {
        None
    }
}

impl Machine {
    /// Replays a native stretch in the interpreter up to the event that ended it; returns
    /// its length. The replaying machine is kept, with its decoded blocks.
    fn replay_stretch(&mut self, s: &Stretch) -> Result<u64, String> {
        self.native_replays += 1;
        let r = self
            .replayer
            .get_or_insert_with(|| Box::new(Machine::from_snapshot(&s.start, Box::new(NoHost))));
        r.restore(&s.start);
        r.icount = 0;
        r.pause_at_events = true;
        r.pause_pages = Some(s.interp_pages.clone());
        r.paused = false;
        r.ended = None;
        let stop = r.run(u64::MAX);
        if r.paused {
            Ok(r.icount)
        } else {
            Err(format!(
                "replaying a native stretch in the interpreter ended with {stop:?} after {} \
                 instructions instead of at the event that ended it natively",
                r.icount
            ))
        }
    }

    /// Learns the lengths of all native stretches, making `icount` exact again.
    pub fn settle(&mut self) {
        if let Err(e) = self.try_settle(None) {
            let msg = format!("fx86: kvm backend: {e}");
            self.warn_once(msg);
        }
    }

    /// Settles; with `check`, also compares the state the interpreter reaches at the end of
    /// the open stretch with the state native execution reached (`syscall`: the hardware
    /// has already written RCX and R11).
    fn try_settle(&mut self, check: Option<bool>) -> Result<(), String> {
        let Some(u) = self.unsettled.take() else {
            return Ok(());
        };
        let mut ic = u.base;
        let mut result = Ok(());
        for s in &u.stretches {
            match self.replay_stretch(s) {
                Ok(n) => ic += n + s.after,
                Err(e) => {
                    result = Err(e);
                    ic += s.after;
                }
            }
        }
        if let Some((s, took_over)) = &u.open {
            let done = self.icount - took_over;
            match self.replay_stretch(s) {
                Ok(n) => {
                    ic += n;
                    if let (Some(syscall), true) = (check, result.is_ok()) {
                        self.icount = ic;
                        result = self.compare_with_replayer(syscall);
                    }
                }
                Err(e) => result = Err(e),
            }
            ic += done;
        }
        self.icount = ic;
        result
    }

    /// Compares this machine with the replayer paused at the same event.
    fn compare_with_replayer(&mut self, syscall: bool) -> Result<(), String> {
        let Some(mut r) = self.replayer.take() else {
            return Ok(());
        };
        let out = self.compare_with(&mut r, syscall);
        self.replayer = Some(r);
        out
    }

    fn compare_with(&mut self, r: &mut Machine, syscall: bool) -> Result<(), String> {
        if syscall {
            // The hardware has already put the return address and flags in RCX and R11.
            r.cpu.gpr[RCX] = self.cpu.gpr[RCX];
            r.cpu.gpr[11] = self.cpu.gpr[11];
        }
        r.icount = self.icount;
        if r.state_hash() != self.state_hash() {
            let what = if r.cpu != self.cpu {
                let mut d = Vec::new();
                for i in 0..16 {
                    if r.cpu.gpr[i] != self.cpu.gpr[i] {
                        d.push(format!(
                            "gpr{i} interp {:#x} kvm {:#x}",
                            r.cpu.gpr[i], self.cpu.gpr[i]
                        ));
                    }
                }
                if r.cpu.rip != self.cpu.rip {
                    d.push(format!(
                        "rip interp {:#x} kvm {:#x}",
                        r.cpu.rip, self.cpu.rip
                    ));
                }
                if r.cpu.rflags() != self.cpu.rflags() {
                    d.push(format!(
                        "rflags interp {:#x} kvm {:#x}",
                        r.cpu.rflags(),
                        self.cpu.rflags()
                    ));
                }
                for i in 0..16 {
                    if r.cpu.xmm[i] != self.cpu.xmm[i] {
                        d.push(format!(
                            "xmm{i} interp {:#x} kvm {:#x}",
                            r.cpu.xmm[i], self.cpu.xmm[i]
                        ));
                    }
                }
                if r.cpu.mxcsr != self.cpu.mxcsr {
                    d.push(format!(
                        "mxcsr interp {:#x} kvm {:#x}",
                        r.cpu.mxcsr, self.cpu.mxcsr
                    ));
                }
                if r.cpu.x87 != self.cpu.x87 {
                    d.push(format!("x87 interp {:?} kvm {:?}", r.cpu.x87, self.cpu.x87));
                }
                d.join(", ")
            } else {
                let mut pages = Vec::new();
                self.mem.pages.diff_since(&r.mem.pages, |pn, _| {
                    if pages.len() < 4 {
                        pages.push(format!("{:#x}", pn << 12))
                    }
                });
                format!("memory (pages {})", pages.join(" "))
            };
            return Err(format!(
                "the backends disagree at icount {}, rip {:#x}: {what}",
                self.icount, self.cpu.rip
            ));
        }
        Ok(())
    }
}

fn sys_err(what: &str) -> impl Fn(kvm_ioctls::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl NativeVm {
    /// Opens `/dev/kvm` and builds the VM. The error says why KVM cannot be used here.
    pub fn new() -> Result<NativeVm, String> {
        let kvm = Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT => "/dev/kvm does not exist (no KVM on this machine)".to_string(),
            libc::EACCES | libc::EPERM => {
                "/dev/kvm is not accessible to this user (add it to the kvm group)".to_string()
            }
            _ => format!("cannot open /dev/kvm: {e}"),
        })?;
        let vm = kvm.create_vm().map_err(sys_err("cannot create a VM"))?;
        let vcpu = vm.create_vcpu(0).map_err(sys_err("cannot create a vCPU"))?;
        let sys = Region::new(SYS_SIZE)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: SYS_SIZE,
            userspace_addr: sys.ptr as u64,
        };
        // SAFETY: the region stays mapped as long as the VM (both live in `NativeVm`).
        unsafe { vm.set_user_memory_region(region) }.map_err(sys_err("memory slot"))?;
        let mut v = NativeVm {
            _kvm: kvm,
            vm,
            vcpu,
            sys,
            chunks: Vec::new(),
            frame_of: BTreeMap::new(),
            pn_of: Vec::new(),
            free: Vec::new(),
            pt_next: PT_POOL,
            mirror: PageTree::new(),
            mirror_vmas: BTreeMap::new(),
            fs_base: 0,
            gs_base: 0,
            flush: false,
            last_fault: (u64::MAX, 0),
            interp_pages: Arc::new(BTreeSet::new()),
            patched: BTreeMap::new(),
            tried: BTreeMap::new(),
            cross_check: false,
            stats: NativeStats::default(),
        };
        v.build_system()?;
        Ok(v)
    }

    /// Descriptor tables, stubs, the kernel mapping, control registers, MSRs and CPUID.
    fn build_system(&mut self) -> Result<(), String> {
        let s = &self.sys;
        // GDT: kernel code/data, user data/code (Linux's selectors), the TSS.
        let gdt: [u64; 10] = [
            0,
            0,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0,
            0x00cf_f300_0000_ffff,
            0x00af_fb00_0000_ffff,
            0,
            tss_low(KBASE + TSS),
            (KBASE + TSS) >> 32,
        ];
        for (i, d) in gdt.iter().enumerate() {
            s.set_u64(GDT + 8 * i as u64, *d);
        }
        // IDT: every exception vector halts in its own stub. int3 may come from user mode.
        for v in 0..32u64 {
            let target = KBASE + STUBS + 8 * v;
            let dpl = if v == 3 { 3 } else { 0 };
            let lo = (target & 0xffff)
                | ((KERNEL_CS as u64) << 16)
                | ((0x8e | (dpl << 5)) << 40)
                | (((target >> 16) & 0xffff) << 48);
            s.set_u64(IDT + 16 * v, lo);
            s.set_u64(IDT + 16 * v + 8, target >> 32);
            s.write(STUBS + 8 * v, &[0xf4]);
        }
        // TSS: RSP0 is where exceptions from user mode push their frame; no I/O bitmap.
        s.set_u64(TSS + 4, KBASE + KSTACK_TOP);
        s.write(TSS + 102, &104u16.to_le_bytes());
        s.write(SYSCALL_STUB, &[0xf4]);
        s.write(RESUME, &[0x48, 0xcf]);
        // push rax; mov rax, cr3; mov cr3, rax; pop rax; iretq
        s.write(
            RESUME_FLUSH,
            &[0x50, 0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0x58, 0x48, 0xcf],
        );
        // The first 2 MiB of physical memory at KBASE, supervisor-only except for the stub
        // page: on some (nested) hosts `syscall` reaches LSTAR without leaving CPL 3, and the
        // stub's `hlt` then exits through #GP instead, which works as well.
        s.set_u64(PML4 + 511 * 8, KPDPT | PTE_P | PTE_RW | PTE_U);
        s.set_u64(KPDPT, KPD | PTE_P | PTE_RW | PTE_U);
        s.set_u64(KPD, KPT | PTE_P | PTE_RW | PTE_U);
        for i in 0..512u64 {
            let user = if i == STUBS >> 12 { PTE_U } else { 0 };
            s.set_u64(KPT + 8 * i, (i << 12) | PTE_P | PTE_RW | user);
        }

        let mut sregs = self.vcpu.get_sregs().map_err(sys_err("get_sregs"))?;
        let seg = |selector: u16, type_: u8, dpl: u8, l: u8, db: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = seg(KERNEL_CS, 0xb, 0, 1, 0);
        sregs.ss = seg(KERNEL_SS, 0x3, 0, 0, 1);
        sregs.ds = seg(0, 0x3, 3, 0, 1);
        sregs.es = sregs.ds;
        sregs.fs = sregs.ds;
        sregs.gs = sregs.ds;
        sregs.tr = kvm_segment {
            base: KBASE + TSS,
            limit: 103,
            selector: TSS_SEL,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.ldt.unusable = 1;
        sregs.gdt.base = KBASE + GDT;
        sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
        sregs.idt.base = KBASE + IDT;
        sregs.idt.limit = 32 * 16 - 1;
        // PE MP ET NE WP PG; PAE TSD OSFXSR OSXMMEXCPT OSXSAVE; LME LMA SCE NXE.
        sregs.cr0 = 0x8005_0033;
        sregs.cr4 = (1 << 5) | (1 << 2) | (1 << 9) | (1 << 10) | (1 << 18);
        sregs.cr3 = PML4;
        sregs.efer = (1 << 8) | (1 << 10) | 1 | (1 << 11);
        self.vcpu
            .set_sregs(&sregs)
            .map_err(sys_err("set_sregs (long mode)"))?;

        // CPUID: exactly the interpreter's model.
        let mut entries = Vec::new();
        let mut add = |function: u32, index: u32, indexed: bool| {
            let r = crate::cpuid::cpuid(function, index);
            entries.push(kvm_cpuid_entry2 {
                function,
                index,
                flags: if indexed {
                    KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                } else {
                    0
                },
                eax: r[0],
                ebx: r[1],
                ecx: r[2],
                edx: r[3],
                ..Default::default()
            });
        };
        let max = crate::cpuid::cpuid(0, 0)[0];
        for f in 0..=max {
            match f {
                4 => (0..5).for_each(|i| add(f, i, true)),
                7 | 0xb => (0..2).for_each(|i| add(f, i, true)),
                0xd => (0..3).for_each(|i| add(f, i, true)),
                _ => add(f, 0, false),
            }
        }
        let emax = crate::cpuid::cpuid(0x8000_0000, 0)[0];
        for f in 0x8000_0000..=emax {
            add(f, 0, false);
        }
        let cpuid = CpuId::from_entries(&entries)
            .map_err(|e| format!("building the CPUID table: {e:?}"))?;
        self.vcpu
            .set_cpuid2(&cpuid)
            .map_err(sys_err("set_cpuid2"))?;
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0] = kvm_xcr {
            xcr: 0,
            value: crate::cpuid::XCR0,
            ..Default::default()
        };
        self.vcpu.set_xcrs(&xcrs).map_err(sys_err("set_xcrs"))?;
        self.set_msrs(&[
            (MSR_STAR, (KERNEL_CS as u64) << 32),
            (MSR_LSTAR, KBASE + SYSCALL_STUB),
            (MSR_SFMASK, 0x4_7700),
            (MSR_FS_BASE, 0),
            (MSR_GS_BASE, 0),
        ])
    }

    fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<(), String> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let m = Msrs::from_entries(&entries).map_err(|e| format!("MSR list: {e:?}"))?;
        let n = self.vcpu.set_msrs(&m).map_err(sys_err("set_msrs"))?;
        if n != msrs.len() {
            return Err(format!("KVM accepted only {n} of {} MSRs", msrs.len()));
        }
        Ok(())
    }

    /// Makes `cpuid` and `rdtsc` fault in this thread (and so in the guest, on hosts that
    /// run it in the thread's context, as PVM does), or stops that. Either may be
    /// unsupported: such instructions are also kept away from native execution by
    /// `classify_page`.
    fn trap_cpuid_and_tsc(on: bool) {
        const ARCH_SET_CPUID: libc::c_int = 0x1012;
        // SAFETY: plain syscalls on the calling thread's own settings. Nothing in this thread
        // executes `cpuid` or `rdtsc` between turning the traps on and off again.
        unsafe {
            libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, (!on) as libc::c_ulong);
            libc::prctl(
                libc::PR_SET_TSC,
                if on {
                    libc::PR_TSC_SIGSEGV
                } else {
                    libc::PR_TSC_ENABLE
                },
            );
        }
    }

    // ---- frames and page tables ----

    fn frame_phys(f: u64) -> u64 {
        FRAME_BASE + f * PAGE_SIZE as u64
    }

    fn frame(&self, f: u64) -> &[u8; PAGE_SIZE] {
        let c = (f / FRAMES_PER_CHUNK) as usize;
        self.chunks[c].page((f % FRAMES_PER_CHUNK) * PAGE_SIZE as u64)
    }

    fn frame_mut(&mut self, f: u64) -> &mut [u8; PAGE_SIZE] {
        let c = (f / FRAMES_PER_CHUNK) as usize;
        self.chunks[c].page_mut((f % FRAMES_PER_CHUNK) * PAGE_SIZE as u64)
    }

    fn new_frame(&mut self, pn: u64) -> Result<u64, String> {
        let f = match self.free.pop() {
            Some(f) => f,
            None => {
                let f = self.pn_of.len() as u64;
                if f.is_multiple_of(FRAMES_PER_CHUNK) {
                    let c = self.chunks.len() as u64;
                    let r = Region::new(CHUNK)?;
                    let region = kvm_userspace_memory_region {
                        slot: 1 + c as u32,
                        flags: KVM_MEM_LOG_DIRTY_PAGES,
                        guest_phys_addr: FRAME_BASE + c * CHUNK,
                        memory_size: CHUNK,
                        userspace_addr: r.ptr as u64,
                    };
                    // SAFETY: the region lives in `self.chunks` as long as the VM.
                    unsafe { self.vm.set_user_memory_region(region) }
                        .map_err(sys_err("adding a memory slot"))?;
                    self.chunks.push(r);
                }
                self.pn_of.push(NO_PAGE);
                f
            }
        };
        self.pn_of[f as usize] = pn;
        self.frame_of.insert(pn, f);
        Ok(f)
    }

    fn free_frame(&mut self, pn: u64) {
        self.patched.remove(&pn);
        if let Some(f) = self.frame_of.remove(&pn) {
            let c = (f / FRAMES_PER_CHUNK) as usize;
            self.chunks[c].discard((f % FRAMES_PER_CHUNK) * PAGE_SIZE as u64, PAGE_SIZE as u64);
            self.pn_of[f as usize] = NO_PAGE;
            self.free.push(f);
        }
    }

    /// The page-table entry for `va`, creating the tables above it if asked.
    fn pte(&mut self, va: u64, create: bool) -> Result<Option<u64>, String> {
        let mut table = PML4;
        for level in [3u32, 2, 1] {
            let e = table + ((va >> (12 + 9 * level)) & 511) * 8;
            let v = self.sys.u64_at(e);
            if v & PTE_P == 0 {
                if !create {
                    return Ok(None);
                }
                if self.pt_next + PAGE_SIZE as u64 > SYS_SIZE {
                    return Err("out of page-table pages".into());
                }
                let t = self.pt_next;
                self.pt_next += PAGE_SIZE as u64;
                self.sys.set_u64(e, t | PTE_P | PTE_RW | PTE_U);
                table = t;
            } else {
                table = v & PTE_ADDR;
            }
        }
        Ok(Some(table + ((va >> 12) & 511) * 8))
    }

    fn set_pte(&mut self, pn: u64, f: u64, prot: u8) -> Result<(), String> {
        let e = self.pte(pn << 12, true)?.expect("created");
        let mut v = Self::frame_phys(f) | PTE_P | PTE_U;
        if prot & PROT_WRITE != 0 {
            v |= PTE_RW;
        }
        let exec =
            prot & PROT_EXEC != 0 && prot & PROT_WRITE == 0 && self.patched.contains_key(&pn);
        if exec {
            if self.interp_pages.contains(&pn) {
                Arc::make_mut(&mut self.interp_pages).remove(&pn);
            }
        } else {
            if prot & PROT_EXEC != 0 && !self.interp_pages.contains(&pn) {
                Arc::make_mut(&mut self.interp_pages).insert(pn);
            }
            v |= PTE_NX;
        }
        self.sys.set_u64(e, v);
        Ok(())
    }

    /// Drops every user translation (the frames stay).
    fn clear_user_tables(&mut self) {
        for i in 0..256 {
            self.sys.set_u64(PML4 + 8 * i, 0);
        }
        self.sys.discard(PT_POOL, self.pt_next - PT_POOL);
        self.pt_next = PT_POOL;
        self.flush = true;
    }

    /// Maps a page the guest touched for the first time (and its neighbours in the same
    /// mapping, so that a sequential walk does not exit for every page). False if the access
    /// is not allowed: the interpreter then raises the fault.
    fn demand_map(&mut self, m: &Machine, addr: u64, err: u64) -> Result<bool, String> {
        let need = if err & 2 != 0 {
            PROT_WRITE
        } else if err & 16 != 0 {
            PROT_EXEC
        } else {
            PROT_READ
        };
        let Some((start, vma)) = m.mem.vma_at(addr) else {
            return Ok(false);
        };
        if vma.prot & need == 0 || addr >= crate::mem::USER_END {
            return Ok(false);
        }
        let pn = addr >> 12;
        // A fault on a page we just mapped would repeat forever: let the interpreter decide.
        let key = (pn, err as u32);
        if self.last_fault == key {
            return Ok(false);
        }
        self.last_fault = key;
        let (lo, hi) = (
            (start >> 12).max(pn & !15),
            (vma.end >> 12).min((pn | 15) + 1),
        );
        let prot = vma.prot;
        for p in lo..hi {
            if p != pn && self.frame_of.contains_key(&p) {
                continue;
            }
            let f = match self.frame_of.get(&p) {
                Some(&f) => f,
                None => {
                    let f = self.new_frame(p)?;
                    if let Some(page) = m.mem.pages.get(p) {
                        self.frame_mut(f).copy_from_slice(page.data());
                    }
                    f
                }
            };
            self.set_pte(p, f, prot)?;
        }
        Ok(true)
    }

    /// Lets an interpreted code page run natively once decoding from the instructions the
    /// interpreter executed there accounts for every byte pattern that could be a
    /// model-specific instruction: the real ones are patched to `ud2` in the frame (the
    /// engine's copy keeps the original bytes), so they leave the VM and are interpreted.
    fn try_native(&mut self, m: &Machine, pn: u64) -> Result<(), String> {
        let Some(&f) = self.frame_of.get(&pn) else {
            return Ok(());
        };
        if !self.interp_pages.contains(&pn) || self.patched.contains_key(&pn) {
            return Ok(());
        }
        let prot = m.mem.vma_at(pn << 12).map_or(0, |(_, v)| v.prot);
        if prot & PROT_EXEC == 0 || prot & PROT_WRITE != 0 {
            return Ok(());
        }
        let seeds = m.block_starts_on(pn);
        if self.tried.get(&pn).is_some_and(|&n| n >= seeds.len()) {
            return Ok(());
        }
        self.tried.insert(pn, seeds.len());
        let mut bytes = vec![0u8; PAGE_SIZE + 15];
        bytes[..PAGE_SIZE].copy_from_slice(self.frame(f));
        let next = (pn + 1) << 12;
        let next_exec = m
            .mem
            .vma_at(next)
            .is_some_and(|(_, v)| v.prot & PROT_EXEC != 0);
        let avail = if next_exec {
            if let Some(p) = m.mem.pages.get(pn + 1) {
                bytes[PAGE_SIZE..].copy_from_slice(&p.data()[..15]);
            }
            PAGE_SIZE + 15
        } else {
            PAGE_SIZE
        };
        let Some(sites) = classify_page(&bytes[..avail], pn << 12, &seeds) else {
            return Ok(());
        };
        for &o in &sites {
            let frame = self.frame_mut(f);
            frame[o as usize] = 0x0f;
            frame[o as usize + 1] = 0x0b;
        }
        self.patched.insert(pn, sites);
        self.tried.remove(&pn);
        self.flush = true;
        self.set_pte(pn, f, prot)
    }

    /// Makes the VM forget every translation it derived from our page tables. Reloading CR3
    /// suffices with nested paging; a shadow-paging host (PVM) does not see our writes to the
    /// tables, so the slot holding them is removed and added again, which drops its shadow
    /// pages.
    fn forget_translations(&mut self) -> Result<(), String> {
        let mut region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0,
            userspace_addr: self.sys.ptr as u64,
        };
        // SAFETY: deleting and re-adding the same slot over memory we own.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(sys_err("memory slot"))?;
        region.memory_size = SYS_SIZE;
        // SAFETY: as above.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(sys_err("memory slot"))
    }

    // ---- moving state between the engine and the VM ----

    /// Makes the VM reflect the engine: mappings, pages changed by the interpreter, registers.
    fn push(&mut self, m: &mut Machine) -> Result<(), String> {
        if m.mem.vmas != self.mirror_vmas {
            self.clear_user_tables();
            let frames: Vec<(u64, u64)> = self.frame_of.iter().map(|(&p, &f)| (p, f)).collect();
            for (pn, f) in frames {
                match m.mem.vma_at(pn << 12).map(|(_, v)| v.prot) {
                    Some(prot) if prot != 0 => self.set_pte(pn, f, prot)?,
                    _ => self.free_frame(pn),
                }
            }
            self.mirror_vmas = m.mem.vmas.clone();
        }
        let mut changed = Vec::new();
        m.mem
            .pages
            .diff_since(&self.mirror, |pn, p| changed.push((pn, p.cloned())));
        for (pn, page) in changed {
            match (self.frame_of.get(&pn).copied(), page) {
                (Some(f), Some(p)) => {
                    self.patched.remove(&pn);
                    self.frame_mut(f).copy_from_slice(p.data());
                    let prot = m.mem.vma_at(pn << 12).map_or(0, |(_, v)| v.prot);
                    if prot & PROT_EXEC != 0 {
                        self.set_pte(pn, f, prot)?;
                        self.flush = true;
                    }
                }
                (Some(f), None) => {
                    self.patched.remove(&pn);
                    self.frame_mut(f).fill(0)
                }
                (None, Some(p)) => {
                    let prot = m.mem.vma_at(pn << 12).map_or(0, |(_, v)| v.prot);
                    if prot != 0 {
                        let f = self.new_frame(pn)?;
                        self.frame_mut(f).copy_from_slice(p.data());
                        self.set_pte(pn, f, prot)?;
                    }
                }
                (None, None) => {}
            }
        }
        self.mirror = m.mem.pages.clone();

        if (m.cpu.fs_base, m.cpu.gs_base) != (self.fs_base, self.gs_base) {
            self.set_msrs(&[(MSR_FS_BASE, m.cpu.fs_base), (MSR_GS_BASE, m.cpu.gs_base)])?;
            self.fs_base = m.cpu.fs_base;
            self.gs_base = m.cpu.gs_base;
        }
        // FPU/SSE state as an XSAVE image (standard format: x87 and SSE components only).
        let img = m.fx_image();
        let mut xs = kvm_xsave::default();
        for (i, w) in img.chunks_exact(4).enumerate() {
            xs.region[i] = u32::from_le_bytes(w.try_into().expect("4 bytes"));
        }
        xs.region[128] = crate::cpuid::XCR0 as u32;
        // SAFETY: a plain kvm_xsave without the variable-size extension.
        unsafe { self.vcpu.set_xsave(&xs) }.map_err(sys_err("set_xsave"))?;

        let g = &m.cpu.gpr;
        let rflags = (m.cpu.rflags() & !(RFLAGS_TF | RFLAGS_RF)) | RFLAGS_IF | 2;
        let frame = KSTACK_TOP - 40;
        for (i, v) in [m.cpu.rip, USER_CS, rflags, g[RSP], USER_SS]
            .iter()
            .enumerate()
        {
            self.sys.set_u64(frame + 8 * i as u64, *v);
        }
        let regs = kvm_regs {
            rax: g[0],
            rcx: g[1],
            rdx: g[2],
            rbx: g[3],
            rsp: KBASE + frame,
            rbp: g[5],
            rsi: g[6],
            rdi: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: KBASE + if self.flush { RESUME_FLUSH } else { RESUME },
            rflags: 2,
        };
        if self.flush {
            self.forget_translations()?;
        }
        self.flush = false;
        self.vcpu.set_regs(&regs).map_err(sys_err("set_regs"))
    }

    /// Runs the guest until an event the interpreter must handle.
    fn enter(&mut self, m: &Machine) -> Result<Event, String> {
        loop {
            self.stats.entries += 1;
            Self::trap_cpuid_and_tsc(true);
            let ran = self.vcpu.run();
            Self::trap_cpuid_and_tsc(false);
            let exit = match ran {
                Ok(VcpuExit::Hlt) => None,
                Ok(VcpuExit::Shutdown) => {
                    Some("the VM shut down (a fault while handling a fault)".to_string())
                }
                Ok(VcpuExit::Intr) => continue,
                Ok(other) => Some(format!("unexpected VM exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => Some(format!("KVM_RUN failed: {e}")),
            };
            if let Some(e) = exit {
                return Err(e);
            }
            let mut regs = self.vcpu.get_regs().map_err(sys_err("get_regs"))?;
            let at = regs.rip.wrapping_sub(1).wrapping_sub(KBASE);
            if at == SYSCALL_STUB {
                self.last_fault = (u64::MAX, 0);
                return Ok(Event::Syscall(regs));
            }
            if !(STUBS..STUBS + 8 * 32).contains(&at) || !(at - STUBS).is_multiple_of(8) {
                return Err(format!(
                    "the VM halted at an unexpected place {:#x}",
                    regs.rip
                ));
            }
            let vector = ((at - STUBS) / 8) as u8;
            if vector == 13 {
                // `hlt` in the syscall stub at CPL 3 (see `build_system`).
                let sp = regs.rsp.wrapping_sub(KBASE);
                if sp + 48 <= KSTACK_TOP && self.sys.u64_at(sp + 8) == KBASE + SYSCALL_STUB {
                    regs.rsp = self.sys.u64_at(sp + 32);
                    self.last_fault = (u64::MAX, 0);
                    return Ok(Event::Syscall(regs));
                }
            }
            let mut sp = regs.rsp.wrapping_sub(KBASE);
            if !(KSTACK_TOP - 0x100..KSTACK_TOP).contains(&sp) {
                return Err(format!(
                    "exception {vector} with a bad kernel stack {sp:#x}"
                ));
            }
            let err = if matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30) {
                sp += 8;
                self.sys.u64_at(sp - 8)
            } else {
                0
            };
            let (rip, rflags, rsp) = (
                self.sys.u64_at(sp),
                self.sys.u64_at(sp + 16),
                self.sys.u64_at(sp + 24),
            );
            let mut interpret = false;
            let resume = match vector {
                14 => {
                    let cr2 = self.vcpu.get_sregs().map_err(sys_err("get_sregs"))?.cr2;
                    interpret = err & 16 != 0 && self.interp_pages.contains(&(cr2 >> 12));
                    let mapped = !interpret && self.demand_map(m, cr2, err)?;
                    if mapped {
                        self.stats.page_faults += 1;
                    }
                    mapped
                }
                // A trap flag the guest set itself: the interpreter does not single-step.
                1 => {
                    self.sys.set_u64(sp + 16, rflags & !RFLAGS_TF);
                    true
                }
                _ => false,
            };
            if resume {
                regs.rsp = KBASE + sp;
                regs.rip = KBASE + RESUME;
                self.vcpu.set_regs(&regs).map_err(sys_err("set_regs"))?;
                continue;
            }
            self.last_fault = (u64::MAX, 0);
            return Ok(Event::Exception {
                interpret,
                regs,
                rip,
                rflags,
                rsp,
            });
        }
    }

    /// Copies the guest's state at an event back into the engine.
    fn pull(&mut self, m: &mut Machine, ev: &Event) -> Result<(), String> {
        let (regs, rip, rflags, rsp) = match ev {
            Event::Syscall(r) => (r, r.rcx.wrapping_sub(2), r.r11, r.rsp),
            Event::Exception {
                regs,
                rip,
                rflags,
                rsp,
                ..
            } => (regs, *rip, *rflags, *rsp),
        };
        m.cpu.gpr = [
            regs.rax, regs.rcx, regs.rdx, regs.rbx, rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
            regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ];
        m.cpu.rip = rip;
        m.cpu.set_rflags(rflags & !RFLAGS_RF);
        let xs = self.vcpu.get_xsave().map_err(sys_err("get_xsave"))?;
        let mut img = [0u8; 512];
        for (i, w) in img.chunks_exact_mut(4).enumerate() {
            w.copy_from_slice(&xs.region[i].to_le_bytes());
        }
        // Components in their initial state are not written to the image.
        let bv = xs.region[128];
        if bv & 1 == 0 {
            img[..24].fill(0);
            img[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
            img[32..160].fill(0);
        }
        if bv & 2 == 0 {
            img[160..416].fill(0);
        }
        m.load_fx_image(&img)
            .map_err(|_| "the VM returned an invalid MXCSR".to_string())?;
        for c in 0..self.chunks.len() {
            let bitmap = self
                .vm
                .get_dirty_log(1 + c as u32, CHUNK as usize)
                .map_err(sys_err("get_dirty_log"))?;
            for (w, &bits) in bitmap.iter().enumerate() {
                let mut b = bits;
                while b != 0 {
                    let i = b.trailing_zeros() as u64;
                    b &= b - 1;
                    let f = c as u64 * FRAMES_PER_CHUNK + w as u64 * 64 + i;
                    let pn = self.pn_of.get(f as usize).copied().unwrap_or(NO_PAGE);
                    if pn != NO_PAGE {
                        m.mem.put_page(pn, self.frame(f));
                        self.stats.dirty_pages += 1;
                    }
                }
            }
        }
        self.mirror = m.mem.pages.clone();
        Ok(())
    }

    /// Runs the guest natively until it ends. Syscalls, signals and `rdtsc` are executed by
    /// the interpreter, one instruction each.
    pub fn run(&mut self, m: &mut Machine) -> Result<StopReason, String> {
        if let Some(s) = &m.ended {
            return Ok(s.clone());
        }
        loop {
            self.push(m)?;
            let start = m.snapshot();
            let interp_pages = self.interp_pages.clone();
            let ev = self.enter(m)?;
            self.pull(m, &ev)?;
            let (syscall, interpret) = match ev {
                Event::Syscall(_) => (true, false),
                Event::Exception { interpret, .. } => (false, interpret),
            };
            if syscall {
                self.stats.syscalls += 1;
            } else if interpret {
                self.stats.interpreted += 1;
            } else {
                self.stats.exceptions += 1;
            }
            let took_over = m.icount;
            let stretch = Stretch {
                start,
                interp_pages,
                after: 0,
            };
            match &mut m.unsettled {
                Some(u) => u.open = Some((stretch, took_over)),
                None => {
                    m.unsettled = Some(Box::new(Unsettled {
                        base: took_over,
                        stretches: Vec::new(),
                        open: Some((stretch, took_over)),
                    }))
                }
            }
            if self.cross_check {
                m.try_settle(Some(syscall))?;
            }
            let entry_page = m.cpu.rip >> 12;
            let stop = if interpret {
                // Run the pages that must be interpreted, until execution leaves them or
                // decoding shows that the page can run natively after all.
                loop {
                    let stop = m.interpret(m.icount + 256);
                    let pn = m.cpu.rip >> 12;
                    if stop != StopReason::Limit || !self.interp_pages.contains(&pn) {
                        break stop;
                    }
                    self.try_native(m, pn)?;
                    if !self.interp_pages.contains(&pn) {
                        break stop;
                    }
                }
            } else {
                m.step_one()
            };
            if interpret {
                self.try_native(m, entry_page)?;
            }
            if let Some(u) = m.unsettled.as_mut() {
                let (mut s, took_over) = u.open.take().expect("open stretch");
                s.after = m.icount - took_over;
                u.stretches.push(s);
            }
            match stop {
                StopReason::Limit => {}
                other => return Ok(other),
            }
        }
    }
}

/// True if the hardware may execute `ins` differently from the model, so it must not run
/// natively: `cpuid`, `xgetbv`, `rdtsc`, XSAVE state and random numbers answer from the
/// model, and anything outside the model's features (AVX, SSE3+, BMI, ...) must raise SIGILL
/// exactly as the interpreter does, while the host CPU would simply execute it.
pub(crate) fn model_specific(ins: &iced_x86::Instruction) -> bool {
    use iced_x86::{CpuidFeature as F, EncodingKind, Mnemonic as M};
    if matches!(
        ins.mnemonic(),
        M::Cpuid
            | M::Xgetbv
            | M::Rdtsc
            | M::Rdtscp
            | M::Xsave
            | M::Xsave64
            | M::Xrstor
            | M::Xrstor64
            | M::Xsaveopt
            | M::Xsaveopt64
            | M::Xsavec
            | M::Xsavec64
            | M::Xsaves
            | M::Xsaves64
            | M::Xrstors
            | M::Xrstors64
            | M::Rdrand
            | M::Rdseed
    ) || ins.encoding() != EncodingKind::Legacy
    {
        return true;
    }
    !ins.cpuid_features().iter().all(|f| {
        matches!(
            f,
            F::INTEL8086
                | F::INTEL186
                | F::INTEL286
                | F::INTEL386
                | F::INTEL486
                | F::X64
                | F::CMOV
                | F::CX8
                | F::CMPXCHG16B
                | F::FPU
                | F::FPU287
                | F::FPU387
                | F::MMX
                | F::SSE
                | F::SSE2
                | F::FXSR
                | F::POPCNT
                | F::SYSCALL
                | F::MULTIBYTENOP
                | F::PAUSE
                | F::CLFSH
                | F::CET_IBT
        )
    })
}

/// Disassembles the code page at `base` (`bytes` may run up to 15 bytes into the next page):
/// from `seeds`, instructions the interpreter executed there, it follows direct branches
/// within the page and sweeps linearly onwards (also past returns and jumps, into the next
/// function as compilers lay them out); the bytes before the first known instruction are
/// decoded from whichever of the first 16 offsets lands exactly on it. Succeeds only if
/// every candidate byte pattern then lies inside a decoded instruction or starts one, and no
/// two decodings overlap; returns the offsets of the model-specific instructions found.
fn classify_page(bytes: &[u8], base: u64, seeds: &[u64]) -> Option<Vec<u16>> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};
    if bytes.len() < PAGE_SIZE || seeds.is_empty() {
        return None;
    }
    let decode = |off: usize| -> Option<Instruction> {
        let mut d = Decoder::with_ip(64, &bytes[off..], base + off as u64, DecoderOptions::NONE);
        let ins = d.decode();
        (!ins.is_invalid()).then_some(ins)
    };
    let mut start = vec![false; PAGE_SIZE];
    let mut inside = vec![false; PAGE_SIZE];
    let mut sites = Vec::new();
    let mut work: Vec<usize> = seeds.iter().map(|a| (a - base) as usize).collect();
    let in_page = |t: u64| (t >> 12 == base >> 12).then(|| (t - base) as usize);
    while let Some(off) = work.pop() {
        if off >= PAGE_SIZE || start[off] {
            continue;
        }
        if inside[off] {
            return None;
        }
        let ins = decode(off)?;
        let end = off + ins.len();
        start[off] = true;
        for k in off + 1..end.min(PAGE_SIZE) {
            if start[k] {
                return None;
            }
            inside[k] = true;
        }
        if model_specific(&ins) {
            // The `ud2` that replaces it must fit in the page.
            if ins.len() < 2 || off + 2 > PAGE_SIZE {
                return None;
            }
            sites.push(off as u16);
        }
        work.push(end);
        if matches!(
            ins.flow_control(),
            FlowControl::ConditionalBranch | FlowControl::Call | FlowControl::UnconditionalBranch
        ) {
            work.extend(in_page(ins.near_branch_target()));
        }
    }
    // The bytes before the first known instruction.
    let first = start.iter().position(|&b| b).unwrap_or(PAGE_SIZE);
    if first > 0 {
        let lead = (0..16.min(first)).find_map(|s0| {
            let mut v = Vec::new();
            let mut off = s0;
            while off < first {
                let ins = decode(off)?;
                v.push((off, ins));
                off += ins.len();
            }
            (off == first).then_some(v)
        })?;
        for (off, ins) in lead {
            start[off] = true;
            inside[off + 1..off + ins.len()].fill(true);
            // These bytes may be the tail of an instruction that starts on the page before:
            // never patch them.
            if model_specific(&ins) {
                return None;
            }
        }
    }
    // Every byte must be accounted for: what was not decoded could hold anything.
    if (0..PAGE_SIZE).any(|c| !start[c] && !inside[c]) {
        return None;
    }
    Some(sites)
}

/// The low half of a 64-bit TSS descriptor (busy type, 104-byte limit).
fn tss_low(base: u64) -> u64 {
    103 | ((base & 0xff_ffff) << 16) | (0x8b << 40) | (((base >> 24) & 0xff) << 56)
}
