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
use fx86_snapshots::{FileKind, Page, PageTree, PAGE_SIZE};
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
/// The same after `invlpg` of each address in `INVLPG_LIST` (a count, then the addresses).
const RESUME_INVLPG: u64 = STUBS + 0xa00;
const INVLPG_LIST: u64 = 0x5000;
const INVLPG_MAX: usize = 256;
/// See `NativeVm::emu_window`.
const BURST_GAP_US: u64 = 1000;
const BURST_WINDOW: u32 = 64;
const BURST_MIN: u64 = 100_000;
const BURST_MAX: u64 = 20_000_000;
const BURST_RETRY: u32 = 64;
/// See `NativeVm::heat`: an exit costs about as much as interpreting this many instructions,
/// and classifying a page (decoding it, `classify_page`) this many.
const EXIT_HEAT: u64 = 10_000;
const CLASSIFY_HEAT: u64 = 25_000;
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
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;

/// Blocks (see `Block`): 512 pages each, 32 to a group of 64 MiB with a memory slot of its
/// own (from `BLOCK_SLOT0`), in guest-physical memory from `BLOCK_GPA`, as frames numbered
/// from `BLOCK_FRAME0`.
const BLOCK_PAGES: u64 = 512;
const BLOCK_SIZE: u64 = BLOCK_PAGES * PAGE_SIZE as u64;
const GROUP_BLOCKS: usize = 32;
const GROUP_PAGES: u64 = BLOCK_PAGES * GROUP_BLOCKS as u64;
const GROUP_SIZE: u64 = GROUP_PAGES * PAGE_SIZE as u64;
const BLOCK_GPA: u64 = 1 << 38;
const BLOCK_FRAME0: u64 = 1 << 40;
const BLOCK_SLOT0: u32 = 256;
const MAX_GROUPS: usize = 1024;
/// A page left writable is write-protected again for the dirty log once it was found
/// unchanged at this many exits in a row: each such exit costs a comparison (a fraction of a
/// microsecond), a write after it is protected costs a fault (about 10 µs under shadow
/// paging), so memory that is written again after a few exits (a buffer filled, then
/// updated) is not protected in between, and memory no longer written stops costing
/// comparisons.
const CALM_EXITS: u8 = 16;
/// See `NativeVm::patterns`.
const MAX_PATTERNS: usize = 64;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;

const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_RF: u64 = 1 << 16;

/// See `NativeVm::host_flags_match`.
enum HostFlags {
    Probing(std::thread::JoinHandle<bool>),
    Known(bool),
}

/// Anonymous host memory given to the VM as guest-physical memory.
struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; the VM that also maps it belongs to
// the same `NativeVm` and runs only on the thread that owns it.
unsafe impl Send for Region {}

impl Region {
    /// A region of `GROUP_SIZE` at an address aligned to `BLOCK_SIZE`, backed by
    /// transparent huge pages where the host has them.
    fn group() -> Result<Region, String> {
        let big = Region::new(GROUP_SIZE + BLOCK_SIZE)?;
        let start = big.ptr as u64;
        let at = (start + BLOCK_SIZE - 1) & !(BLOCK_SIZE - 1);
        let r = Region {
            ptr: at as *mut u8,
            len: GROUP_SIZE as usize,
        };
        // SAFETY: `big` is our own fresh mapping; the parts before and after the aligned
        // block are unmapped, and the block is owned by `r` alone.
        unsafe {
            if at > start {
                libc::munmap(big.ptr.cast(), (at - start) as usize);
            }
            let end = at + GROUP_SIZE;
            let big_end = start + GROUP_SIZE + BLOCK_SIZE;
            if big_end > end {
                libc::munmap(end as *mut libc::c_void, (big_end - end) as usize);
            }
            std::mem::forget(big);
            libc::madvise(r.ptr.cast(), r.len, libc::MADV_HUGEPAGE);
        }
        Ok(r)
    }

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
    /// A signal interrupted `KVM_RUN` and the run is to stop (see `NativeVm::stop`).
    Interrupted,
    /// The timer kicked the VM out at an instruction boundary in user code.
    Kicked {
        regs: kvm_regs,
        rip: u64,
        rflags: u64,
        rsp: u64,
    },
}

/// The signal that kicks the VM out of `KVM_RUN`.
const KICK_SIGNAL: libc::c_int = libc::SIGUSR2;

extern "C" fn on_kick(_sig: libc::c_int) {}

/// A thread that interrupts `KVM_RUN` on the VM's thread every period, so that long native
/// stretches end at known states (snapshots, checkpoints) even without system calls.
struct Kicker {
    /// Set while the VM's thread is in `KVM_RUN` (signals at other times are not sent).
    in_vm: Arc<std::sync::atomic::AtomicBool>,
    /// The period asked for, and the one in effect (longer when kicks cost more than a
    /// small share of it: see `NativeVm::run_until`).
    base: std::time::Duration,
    period_us: Arc<std::sync::atomic::AtomicU64>,
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kicker {
    /// Kicks the calling thread every `period`.
    fn start(period: std::time::Duration) -> Option<Kicker> {
        // SAFETY: a handler that does nothing; SA_RESTART, so that the signal does not
        // interrupt fx86's other system calls.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(KICK_SIGNAL, &sa, std::ptr::null_mut());
        }
        // SAFETY: the calling thread's own id.
        let target = unsafe { libc::pthread_self() };
        let in_vm = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let period_us = Arc::new(std::sync::atomic::AtomicU64::new(period.as_micros() as u64));
        let (inside, finished, every) = (in_vm.clone(), done.clone(), period_us.clone());
        let thread = std::thread::Builder::new()
            .name("fx86-kick".into())
            .spawn(move || {
                use std::sync::atomic::Ordering::Relaxed;
                while !finished.load(Relaxed) {
                    // (Parked, so that dropping the kicker wakes it at once.)
                    let until = std::time::Instant::now()
                        + std::time::Duration::from_micros(every.load(Relaxed));
                    loop {
                        let now = std::time::Instant::now();
                        if now >= until || finished.load(Relaxed) {
                            break;
                        }
                        std::thread::park_timeout(until - now);
                    }
                    if inside.load(Relaxed) && !finished.load(Relaxed) {
                        // SAFETY: the VM's thread outlives this one (joined on drop).
                        unsafe {
                            libc::pthread_kill(target, KICK_SIGNAL);
                        }
                    }
                }
            })
            .ok()?;
        Some(Kicker {
            in_vm,
            done,
            base: period,
            period_us,
            thread: Some(thread),
        })
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// How `KVM_RUN` returned.
enum Ran {
    Halted,
    Shutdown,
    Interrupted,
    Other(String),
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
    /// Of those, pages filled with a pattern and stored as one shared copy (see `patterns`).
    pub pattern_pages: u64,
    /// Blocks mapped (see `Block`).
    pub blocks: u64,
    /// Register-only instructions executed in place for the VM (see `inline_sites`).
    pub emulated: u64,
    /// Native stretches ended by a timer kick (see `NativeVm::kick_every`).
    pub kicks: u64,
    /// Bursts of interpretation after in-place executions came too often (see `bursts`).
    pub bursts: u64,
    /// Times pending stretches were settled early to bound memory.
    pub early_settles: u64,
    /// Times execution ran into a page that the interpreter must run.
    pub interpreted: u64,
    /// Instructions the interpreter executed (the rest ran natively).
    pub interpreted_insns: u64,
    /// Native writes to guarded pages (see `NativeVm::guarded`).
    pub guard_hits: u64,
    /// Pages classified again because what they relied on changed (see `NativeVm::deps`).
    pub reclassified: u64,
}

/// 2 MiB of guest memory (512 pages of an anonymous mapping, aligned) that the guest first
/// touched while none of it held data: mapped with one large page, so that filling it costs
/// one fault instead of 512 (tens of microseconds each under shadow paging). KVM maps only
/// 4 KiB pages where it logs writes, so the memory slot of the block's group is not logged
/// at first; whether the guest wrote a block shows in the dirty bit of its page-directory
/// entry. At the first exit that finds that bit set, the block's pages are compared with the
/// engine's and copied where they differ, and its group's slot is logged from then on (also
/// after any change of mappings, when blocks are mapped by ordinary page-table entries). New
/// blocks go to a group that is not logged. (A slot per group, not per block: each logged
/// slot costs an ioctl at every exit.)
struct Block {
    /// Its first page (`NO_PAGE` for a place left unused in a logged group).
    first_pn: u64,
    /// Where its page-directory entry is (used while its group is not logged).
    pde: u64,
}

/// 32 blocks' memory and whether its slot is logged (see `Block`).
struct Group {
    region: Region,
    logged: bool,
}

/// A KVM virtual machine that runs one guest's user code.
pub struct NativeVm {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: VcpuFd,
    sys: Region,
    chunks: Vec<Region>,
    blocks: Vec<Block>,
    groups: Vec<Group>,
    max_groups: usize,
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
    /// Pages made executable since the VM last forgot its translations: the VM invalidates
    /// just those (`invlpg`) before it resumes, unless `flush` makes it forget them all. (A
    /// shadow-paging host ignores `invlpg` for entries we wrote, but on a stale entry that
    /// forbids what ours allow it takes the fault itself; taking a permission away needs
    /// `flush`.)
    invalidate: Vec<u64>,
    /// Where the first instruction on code pages begins, as far as found (see
    /// `lead_phase`); forgotten when code or mappings change.
    lead_phases: BTreeMap<u64, usize>,
    last_fault: (u64, u32),
    /// Executable pages that hold (or may hold) an instruction whose native result would
    /// differ from the model (`cpuid`, `xgetbv`, XSAVE, `rdrand`), and writable code: mapped
    /// non-executable, so that the interpreter runs them.
    interp_pages: Arc<BTreeSet<u64>>,
    /// Executable pages whose model-specific instructions were found by decoding (see
    /// `classify_page`) and are patched to an invalid opcode in the frame, so the page runs natively.
    patched: BTreeMap<u64, Vec<u16>>,
    /// The addresses of the instructions patched on those pages (a replay pauses there).
    trap_sites: Arc<BTreeSet<u64>>,
    /// Patched instructions that work on registers only and leave flags undefined (see
    /// `divergent_flags`): executed by the interpreter's code on the VM's registers, in
    /// place, without ending the native stretch.
    inline_sites: BTreeMap<u64, iced_x86::Instruction>,
    /// Seeds tried for pages that could not be classified yet, and whether the phase of
    /// their first bytes was known (retry when there are more seeds or it becomes known).
    tried: BTreeMap<u64, (usize, bool)>,
    /// What interpreting each unclassified code page has cost so far, in instructions (an
    /// exit to it counts as `EXIT_HEAT`): it is classified once that exceeds what
    /// classifying costs (`CLASSIFY_HEAT`). Code that runs once or rarely, as start-up and
    /// exit paths do, is cheaper to interpret where it is than to decode whole pages and
    /// leave the VM for each of them.
    heat: BTreeMap<u64, u64>,
    /// Whether KVM leaves pages writable after reporting them dirty until told otherwise
    /// (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`), and reports every page of a new slot dirty
    /// without write-protecting any. Then a page reported dirty is compared with the
    /// engine's copy and copied if it differs, and it stays writable: it is write-protected
    /// again only at an exit that finds it unchanged. So a page written between most exits
    /// (a stack, a buffer being filled) costs a comparison per exit instead of a fault for
    /// the log per exit (tens of microseconds under shadow paging), and fresh memory is not
    /// write-protected before its first write.
    manual_protect: bool,
    /// KVM copies the registers out at every exit (`KVM_CAP_SYNC_REGS`).
    sync_regs: bool,
    /// See `calm_mut` (ordinary frames, block frames).
    calm: Vec<u8>,
    calm_blocks: Vec<u8>,
    /// One page for each eight-byte pattern that whole pages copied back were filled with
    /// (see `Page::pattern`; up to `MAX_PATTERNS`): memory filled by `memset` natively is
    /// held once in the engine however many pages it spans.
    patterns: BTreeMap<u64, Arc<Page>>,
    /// Replay every stretch at once and compare the interpreter's state with the native
    /// one at its end (slow; for tests).
    pub cross_check: bool,
    /// Whether frequent exits may be replaced by bursts of interpretation (see `emu_window`).
    pub bursts: bool,
    /// Whether this CPU sets undefined flags as the model does (see `host_flags_match`).
    host_flags: HostFlags,
    /// Raised to stop the run (Ctrl-C): checked at every exit, and a signal that interrupts
    /// `KVM_RUN` ends the run at the start of the stretch it cut short.
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
    /// A stretch was cut short by `stop`: the VM cannot go on.
    interrupted: bool,
    kicker: Option<Kicker>,
    /// In-place executions (`inline_sites`) counted in the current window, and when it began:
    /// when they come faster than one per `BURST_GAP_US`, the next one ends the stretch and
    /// the interpreter runs a burst of `burst_len` instructions instead (each such exit costs
    /// tens of microseconds where the host has no hardware support for nested guests, more
    /// than interpreting the code around a hot site).
    emu_window: (std::time::Instant, u32),
    /// A burst is due: the next stretch ends at its first in-place site (the replay pauses at
    /// the first visit of that site, so no earlier one may have run in place).
    burst_armed: bool,
    /// The stretch ends at an in-place site for a burst; its length, and when the last ended.
    burst_pending: bool,
    burst_len: u64,
    last_burst: Option<std::time::Instant>,
    /// The wall time per in-place execution over the last window that came too fast (see
    /// `wants_burst`): what each costs natively, exit included.
    emu_gap: std::time::Duration,
    /// By the site a burst started at: the interpreter's time per pass of that site in the
    /// burst, and how many bursts that figure has refused since (see `wants_burst`).
    burst_cost: BTreeMap<u64, (std::time::Duration, u32)>,
    /// The guest pages the last return from the VM copied back (written natively).
    copied: Vec<u64>,
    /// Pages kicks copied back and not copied since (see `adapt_kick_period`), and how many
    /// such pages were copied again since the last kick.
    kick_copied: std::collections::HashSet<u64>,
    copied_again: u64,
    /// How long the VM ran in the last stretch (see `Stretch::heavy`).
    stretch_time: std::time::Duration,
    /// A kick set the trap flag: the next single-step trap in user code ends the stretch.
    kick_pending: bool,
    /// A kick set the trap flag during this stretch (it is not the guest's).
    tf_by_kick: bool,
    /// Pages that run in the interpreter whatever they hold (breakpoints).
    forced: BTreeSet<u64>,
    /// Page → classified pages whose search for observable undefined flags (`Beyond`)
    /// followed code or read a jump slot on it: they are classified again when it changes
    /// (its bytes, its protection, whether it runs natively). Where the host's undefined
    /// flags differ from the model's, a multiply before a call through the PLT to `memcpy`
    /// runs natively only because `memcpy` overwrites the flags first.
    deps: BTreeMap<u64, BTreeSet<u64>>,
    /// Writable pages holding a jump slot some classification followed: mapped read-only,
    /// so that a native write to them ends the stretch before it happens (as a kick does;
    /// after it, for an instruction a kick cannot stop at: see `step_over`) and the pages
    /// that relied on them are classified again first.
    guarded: BTreeSet<u64>,
    /// How often each guarded page was written: after `MAX_GUARD_HITS` it is not guarded
    /// again (its jump slots are not followed).
    guard_hits: BTreeMap<u64, u32>,
    /// The FPU/SSE image the VM holds (as `Machine::fx_image` gives it), if known: `push`
    /// sets it only when the engine's differs.
    fx_in_vm: Option<[u8; 512]>,
    /// Guarded pages written in the last stretch (see `guarded`).
    guards_hit: Vec<u64>,
    /// A write to a guarded page by an instruction a kick could not end the stretch before
    /// (a `rep` string instruction, which may be in its middle): the page is made writable
    /// and the byte after the instruction is patched, so that the stretch ends right after
    /// it (address, frame, byte the patch replaced).
    step_over: Option<(u64, u64, u8)>,
    /// Code pages not running natively where a search stopped → the pages it classified:
    /// classified again once the code page runs natively.
    waiting: BTreeMap<u64, BTreeSet<u64>>,
    /// Pages whose dependents (`deps`) must be classified again, and pages to classify
    /// again, at the next `push`.
    stale: Vec<u64>,
    redo: Vec<u64>,
    /// Times each page was classified again: beyond `MAX_REDOS` its search stays on it.
    redos: BTreeMap<u64, u32>,
    /// Pages that may still be classified before they run (see `classify_from`).
    eager_budget: u32,
    /// When this VM first ran, and whether the background settler was started since (see
    /// `SETTLER_AFTER`).
    first_run: Option<std::time::Instant>,
    settler_started: bool,
    pub stats: NativeStats,
}

/// One native stretch: the state it started from and the pages it could not execute (where
/// it ended if it ran into one).
pub(crate) struct Stretch {
    start: Snapshot,
    interp_pages: Arc<BTreeSet<u64>>,
    /// Instructions that were patched to leave the VM (see `NativeVm::trap_sites`).
    trap_sites: Arc<BTreeSet<u64>>,
    /// Instructions the interpreter executed after the stretch ended (the syscall, the
    /// faulting instruction, or the code on pages that are always interpreted).
    after: u64,
    /// A timer kick ended it, in this state (otherwise an event did).
    kicked: Option<crate::machine::PauseMatch>,
    /// It wrote `HEAVY_PAGES` pages or more, or at least `HEAVY_MIN_PAGES` and
    /// `HEAVY_PAGES_PER_MS` for each millisecond it ran: the background settler replays it only while its length is waited for (see
    /// `Jobs::take`).
    heavy: bool,
}

/// See `Stretch::heavy`. Replaying a stretch that wrote much memory takes as many fresh
/// pages for the replay's copies and as much memory traffic; beside the VM, on a host whose
/// cores share memory bandwidth (or are themselves shared), that slowed the VM several times
/// over (`benches/run.sh`: heap, which fills 1 GiB, 2 MiB per stretch, then rewrites it).
const HEAVY_PAGES: usize = 16 * 1024;
const HEAVY_PAGES_PER_MS: usize = 64;
/// (Short stretches that write a few pages, as between frequent syscalls, are not heavy.)
const HEAVY_MIN_PAGES: usize = 512;

/// What replaying a stretch found.
struct Replayed {
    len: u64,
    /// For a stretch a kick ended while the host's undefined flags differ from the model's:
    /// the model's RFLAGS at its end. The VM's may hold other values in bits no instruction
    /// reads before writing them; the next stretch starts from the model's.
    flags: Option<u64>,
}

/// State-hash checkpoints of a run on the KVM backend (for recordings): settling takes one at
/// the start of the first native stretch at or after each `interval` instructions, where it
/// knows the exact icount and the stretch's start state.
#[derive(Debug, Default)]
pub struct CheckpointLog {
    pub interval: u64,
    /// The icount from which the next checkpoint is due.
    pub next: u64,
    /// (icount, state hash), in icount order.
    pub taken: Vec<(u64, [u8; 32])>,
}

type SharedLog = Option<Arc<std::sync::Mutex<CheckpointLog>>>;

/// Snapshots at the starts of native stretches, taken as they are settled (see
/// `Machine::log_snapshots`).
#[derive(Default)]
pub struct SnapshotLog {
    pub interval: u64,
    /// The icount from which the next snapshot is due.
    pub next: u64,
    /// (icount, snapshot), in icount order.
    pub taken: Vec<(u64, Snapshot)>,
}

impl CheckpointLog {
    /// `at` if a checkpoint is due there (the exact icount at the start of a stretch).
    fn due(log: &SharedLog, at: Option<u64>) -> Option<u64> {
        let (log, at) = (log.as_ref()?, at?);
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        (at >= log.next).then_some(at)
    }

    /// Writes down the checkpoint taken at `at` (if one was due).
    fn note(log: &SharedLog, at: Option<u64>, hash: Option<blake3::Hash>) {
        if let (Some(log), Some(at), Some(h)) = (log, at, hash) {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.taken.push((at, *h.as_bytes()));
            log.next = at + log.interval.max(1);
        }
    }
}

/// Native stretches whose lengths are not known yet (see the module comment).
pub(crate) struct Unsettled {
    /// The icount at the start of the first stretch.
    base: u64,
    stretches: Vec<Stretch>,
    /// The `after` of each stretch handed to the background settler, oldest first (they
    /// come before `stretches`).
    in_flight: std::collections::VecDeque<u64>,
    /// The stretch that ended at the event being handled now, and the (relative) icount at
    /// which the interpreter took over.
    open: Option<(Stretch, u64)>,
}

/// A stretch's length and, if a kick ended it, the model's RFLAGS there.
type SettleResult = Result<(u64, Option<u64>), String>;

/// Replays finished native stretches on another thread (a spare core) while the VM runs
/// on, so that their lengths are mostly known by the time something asks for the icount.
pub(crate) struct Settler {
    queue: Arc<(std::sync::Mutex<Jobs>, std::sync::Condvar)>,
    /// Stretches sent so far (the next one's sequence number).
    sent: u64,
    /// The sequence number `next` returns next.
    next_seq: u64,
    /// Results that came in before older ones.
    early: BTreeMap<u64, (SettleResult, Box<Stretch>)>,
    results: std::sync::mpsc::Receiver<(u64, SettleResult, Box<Stretch>)>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// The collecting thread's own replaying machine (see `next`).
    helper: Option<Box<Machine>>,
    /// Raised when nobody will ask for the lengths any more (the machine is dropped).
    cancel: Arc<std::sync::atomic::AtomicBool>,
}

impl Settler {
    /// One worker per core but the VM's (which would compete with it): stretches start from
    /// exact states, so they replay independently; results are collected in order, and the
    /// collecting thread (the VM's, waiting) replays stretches no worker has taken yet.
    fn spawn() -> Option<Settler> {
        let queue: Arc<(std::sync::Mutex<Jobs>, std::sync::Condvar)> = Default::default();
        let (tx, results) = std::sync::mpsc::channel();
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let n =
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
        let mut workers = Vec::new();
        for k in 0..n {
            let (queue, tx, stop) = (queue.clone(), tx.clone(), cancel.clone());
            let w = std::thread::Builder::new()
                .name(format!("fx86-settle-{k}"))
                .spawn(move || {
                    block_interrupts();
                    let mut replayer = None;
                    while let Some((seq, s)) = Jobs::take(&queue) {
                        // (Warms the cached page hashes for a checkpoint at its start.)
                        s.start.warm_hash();
                        let r = replay_on(&mut replayer, &s, Some(&stop), None)
                            .map(|r| (r.len, r.flags));
                        if tx.send((seq, r, s)).is_err() {
                            break;
                        }
                    }
                });
            match w {
                Ok(w) => workers.push(w),
                Err(_) if k > 0 => break,
                Err(_) => return None,
            }
        }
        Some(Settler {
            queue,
            sent: 0,
            next_seq: 0,
            early: BTreeMap::new(),
            results,
            workers,
            cancel,
            helper: None,
        })
    }

    /// Hands a finished stretch over.
    fn send(&mut self, s: Box<Stretch>) -> Result<(), Box<Stretch>> {
        let (lock, cv) = &*self.queue;
        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
        if q.closed {
            return Err(s);
        }
        q.pending.push_back((self.sent, s));
        self.sent += 1;
        cv.notify_one();
        Ok(())
    }

    /// The result for the oldest stretch not collected yet (waits for it), with the stretch.
    fn next(&mut self) -> (SettleResult, Option<Box<Stretch>>) {
        let r = self.next_inner();
        Jobs::set_urgent(&self.queue, false);
        r
    }

    fn next_inner(&mut self) -> (SettleResult, Option<Box<Stretch>>) {
        let want = self.next_seq;
        self.next_seq += 1;
        loop {
            if let Some((r, s)) = self.early.remove(&want) {
                return (r, Some(s));
            }
            // (Workers take heavy stretches too while this thread waits.)
            Jobs::set_urgent(&self.queue, true);
            // Help: replay a stretch no worker has taken yet.
            let job = {
                let mut q = self.queue.0.lock().unwrap_or_else(|e| e.into_inner());
                q.pending.pop_front()
            };
            if let Some((seq, s)) = job {
                let r = replay_on(&mut self.helper, &s, None, None).map(|r| (r.len, r.flags));
                self.early.insert(seq, (r, s));
                continue;
            }
            match self.results.recv() {
                Ok((seq, r, s)) if seq == want => return (r, Some(s)),
                Ok((seq, r, s)) => {
                    self.early.insert(seq, (r, s));
                }
                Err(_) => return (Err("the settling threads stopped".into()), None),
            }
        }
    }
}

/// Stretches waiting for a settling worker.
#[derive(Default)]
struct Jobs {
    pending: std::collections::VecDeque<(u64, Box<Stretch>)>,
    closed: bool,
    /// The collecting thread waits for a length (the VM is not running).
    urgent: bool,
}

impl Jobs {
    /// The next stretch to replay, or None once closed: the oldest, but heavy stretches
    /// (see `Stretch::heavy`) only while a length is waited for.
    fn take(q: &(std::sync::Mutex<Jobs>, std::sync::Condvar)) -> Option<(u64, Box<Stretch>)> {
        let mut j = q.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if j.closed {
                return None;
            }
            let urgent = j.urgent;
            if let Some(i) = j.pending.iter().position(|(_, s)| urgent || !s.heavy) {
                return j.pending.remove(i);
            }
            j = q.1.wait(j).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Marks whether the collecting thread waits (see `take`).
    fn set_urgent(q: &(std::sync::Mutex<Jobs>, std::sync::Condvar), urgent: bool) {
        let mut j = q.0.lock().unwrap_or_else(|e| e.into_inner());
        if j.urgent != urgent {
            j.urgent = urgent;
            if urgent {
                q.1.notify_all();
            }
        }
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
        {
            let mut q = self.queue.0.lock().unwrap_or_else(|e| e.into_inner());
            q.closed = true;
            q.pending.clear();
        }
        self.queue.1.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Signals that stop fx86 (Ctrl-C) go to the thread that runs the VM, never to this one, so
/// that they can interrupt `KVM_RUN`.
fn block_interrupts() {
    // SAFETY: plain signal-mask calls on this thread's own mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Replays stretch `s` in the interpreter on `replayer` (created on first use) up to the
/// event (or the state of the kick) that ended it; returns its length. `flags`: the model's
/// RFLAGS at its start if the previous stretch ended with a kick (see `Replayed::flags`).
/// With `cancel`, it gives up (checking every 65536 instructions) once that is raised.
fn replay_on(
    replayer: &mut Option<Box<Machine>>,
    s: &Stretch,
    cancel: Option<&std::sync::atomic::AtomicBool>,
    flags: Option<u64>,
) -> Result<Replayed, String> {
    let r = replayer
        .get_or_insert_with(|| Box::new(Machine::from_snapshot(&s.start, Box::new(NoHost))));
    r.restore(&s.start);
    if let Some(f) = flags {
        r.cpu.set_rflags(f);
    }
    r.pause_match = s.kicked.clone();
    r.icount = 0;
    r.pause_at_events = true;
    r.pause_pages = Some(s.interp_pages.clone());
    r.pause_sites = Some(s.trap_sites.clone());
    r.fence_pauses();
    r.paused = false;
    r.ended = None;
    let stop = match cancel {
        None => r.run(u64::MAX),
        Some(c) => loop {
            if c.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("cancelled".into());
            }
            let stop = r.run(r.icount.saturating_add(1 << 16));
            if r.paused || stop != StopReason::Limit {
                break stop;
            }
        },
    };
    if r.paused {
        let flags = s
            .kicked
            .as_ref()
            .and_then(|k| (k.ignore != 0).then(|| r.cpu.rflags()));
        Ok(Replayed {
            len: r.icount,
            flags,
        })
    } else {
        Err(format!(
            "replaying a native stretch in the interpreter ended with {stop:?} after {} \
             instructions instead of at the event that ended it natively",
            r.icount
        ))
    }
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
    /// A checkpoint or snapshot is taken at its start (exact icount `at`) if one is due.
    fn replay_stretch(
        &mut self,
        s: &Stretch,
        at: u64,
        flags: Option<u64>,
    ) -> Result<Replayed, String> {
        self.native_replays += 1;
        self.keep_stretch_start(s, at, flags);
        replay_on(&mut self.replayer, s, None, flags)
    }

    /// Takes a checkpoint and a snapshot at the start of `s` (exact icount `at`) if due.
    fn keep_stretch_start(&mut self, s: &Stretch, at: u64, flags: Option<u64>) {
        let check = CheckpointLog::due(&self.checkpoint_log, Some(at));
        let snap = self.snapshot_log.as_ref().is_some_and(|l| {
            let l = l.lock().unwrap_or_else(|e| e.into_inner());
            at >= l.next
        });
        if check.is_none() && !snap {
            return;
        }
        let r = self
            .replayer
            .get_or_insert_with(|| Box::new(Machine::from_snapshot(&s.start, Box::new(NoHost))));
        r.restore(&s.start);
        if let Some(f) = flags {
            r.cpu.set_rflags(f);
        }
        r.icount = at;
        if check.is_some() {
            CheckpointLog::note(&self.checkpoint_log, check, Some(r.state_hash()));
        }
        if snap {
            let mut l = self
                .snapshot_log
                .as_ref()
                .expect("checked")
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            l.taken.push((at, r.snapshot()));
            l.next = at + l.interval.max(1);
        }
    }

    /// Keeps snapshots at the starts of native stretches as they are settled (for a
    /// timeline), one at or after every `interval` instructions.
    pub fn log_snapshots(&mut self, log: Arc<std::sync::Mutex<SnapshotLog>>) {
        self.snapshot_log = Some(log);
    }

    /// Whether native stretches wait to be settled (the icount is not exact).
    pub fn unsettled(&self) -> bool {
        self.unsettled.is_some()
    }

    /// Interprets up to `limit` (see `Machine::run`) on a machine whose native stretches may
    /// not be settled yet: the instructions count after the last stretch.
    pub fn run_after_native(&mut self, limit: u64) -> StopReason {
        let before = self.icount;
        let stop = self.run(limit);
        let extra = self.icount - before;
        if let Some(u) = self.unsettled.as_mut() {
            if let Some(a) = u.in_flight.back_mut() {
                *a += extra;
            } else if let Some(s) = u.stretches.last_mut() {
                s.after += extra;
            }
        }
        stop
    }

    /// Takes state-hash checkpoints into `log` while settling (see `CheckpointLog`).
    pub fn log_checkpoints(&mut self, log: Arc<std::sync::Mutex<CheckpointLog>>) {
        self.checkpoint_log = Some(log);
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
        // The model's flags where the last stretch a kick ended (see `Replayed::flags`).
        let mut flags = None;
        // Instructions that ran natively, and for the host: where each stretch ended, as the
        // icount said then (without native instructions), and how many came before.
        let mut native = 0;
        let mut inexact = u.base;
        let mut map = Vec::new();
        for after in &u.in_flight {
            let settler = self.settler.as_mut().expect("stretches in flight");
            self.native_replays += 1;
            match settler.next() {
                (Ok((n, f)), s) => {
                    if let Some(s) = s {
                        self.keep_stretch_start(&s, ic, flags);
                    }
                    native += n;
                    map.push((inexact, native));
                    inexact += after;
                    ic += n + after;
                    flags = f;
                }
                (Err(e), _) => {
                    result = Err(e);
                    ic += after;
                }
            }
        }
        for s in &u.stretches {
            match self.replay_stretch(s, ic, flags) {
                Ok(r) => {
                    native += r.len;
                    map.push((inexact, native));
                    inexact += s.after;
                    ic += r.len + s.after;
                    flags = r.flags;
                }
                Err(e) => {
                    result = Err(e);
                    ic += s.after;
                }
            }
        }
        if let Some((s, _)) = &u.open {
            match self.replay_stretch(s, ic, flags) {
                Ok(r) => {
                    native += r.len;
                    map.push((inexact, native));
                    ic += r.len;
                    flags = r.flags;
                    if let (Some(f), true) = (flags, s.kicked.is_some()) {
                        self.cpu.set_rflags(f);
                    }
                    if let (Some(syscall), true) = (check, result.is_ok()) {
                        // (Compared at the exact icount; the sum below makes it so.)
                        let inexact = std::mem::replace(&mut self.icount, ic);
                        result = self.compare_with_replayer(syscall);
                        self.icount = inexact;
                    }
                }
                Err(e) => result = Err(e),
            }
        } else if let Some(f) = flags {
            // This machine is where the last stretch's kick left it.
            self.cpu.set_rflags(f);
        }
        // (Not `ic`: instructions interpreted between native runs are in `icount` only.)
        self.native_settled += native;
        self.icount += native;
        self.host.settled(&map);
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
        let manual_protect = vm
            .enable_cap(&kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                args: [
                    (kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
                        | kvm_bindings::KVM_DIRTY_LOG_INITIALLY_SET) as u64,
                    0,
                    0,
                    0,
                ],
                ..Default::default()
            })
            .is_ok();
        let mut vcpu = vm.create_vcpu(0).map_err(sys_err("cannot create a vCPU"))?;
        // The registers come back in the shared run structure at every exit (one ioctl
        // fewer per exit), where KVM offers it.
        let sync_regs = kvm.check_extension(kvm_ioctls::Cap::SyncRegs);
        if sync_regs {
            vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        }
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
            blocks: Vec::new(),
            groups: Vec::new(),
            max_groups: 0,
            frame_of: BTreeMap::new(),
            pn_of: Vec::new(),
            free: Vec::new(),
            pt_next: PT_POOL,
            mirror: PageTree::new(),
            mirror_vmas: BTreeMap::new(),
            lead_phases: BTreeMap::new(),
            invalidate: Vec::new(),
            fs_base: 0,
            gs_base: 0,
            flush: false,
            last_fault: (u64::MAX, 0),
            interp_pages: Arc::new(BTreeSet::new()),
            patched: BTreeMap::new(),
            trap_sites: Arc::new(BTreeSet::new()),
            inline_sites: BTreeMap::new(),
            tried: BTreeMap::new(),
            heat: BTreeMap::new(),
            manual_protect,
            sync_regs,
            calm: Vec::new(),
            calm_blocks: Vec::new(),
            patterns: BTreeMap::new(),
            cross_check: false,
            // (Probed on a thread of its own while the VM is built and the guest loaded: it
            // takes milliseconds, and is first needed when code is first classified.)
            // (Probed here instead if no thread can be started.)
            host_flags: std::thread::Builder::new()
                .name("fx86-probe".into())
                .spawn(host_flags_match_model)
                .map_or_else(
                    |_| HostFlags::Known(host_flags_match_model()),
                    HostFlags::Probing,
                ),
            stop: None,
            interrupted: false,
            kicker: None,
            copied: Vec::new(),
            emu_window: (std::time::Instant::now(), 0),
            burst_armed: false,
            burst_pending: false,
            burst_len: BURST_MIN,
            last_burst: None,
            bursts: true,
            emu_gap: std::time::Duration::ZERO,
            burst_cost: BTreeMap::new(),
            kick_copied: Default::default(),
            stretch_time: std::time::Duration::ZERO,
            copied_again: 0,
            kick_pending: false,
            tf_by_kick: false,
            forced: BTreeSet::new(),
            deps: BTreeMap::new(),
            guarded: BTreeSet::new(),
            guard_hits: BTreeMap::new(),
            guards_hit: Vec::new(),
            fx_in_vm: None,
            step_over: None,
            waiting: BTreeMap::new(),
            stale: Vec::new(),
            redo: Vec::new(),
            redos: BTreeMap::new(),
            eager_budget: 1024,
            first_run: None,
            settler_started: false,
            stats: NativeStats::default(),
        };
        v.max_groups = (v._kvm.get_nr_memslots())
            .saturating_sub(BLOCK_SLOT0 as usize + 1)
            .min(MAX_GROUPS);
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
        s.write(RESUME_INVLPG, &resume_invlpg());
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
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        // CPUID faulting is often missing (as on PVM hosts): stop asking once refused.
        static NO_CPUID_FAULTING: AtomicBool = AtomicBool::new(false);
        unsafe {
            if !NO_CPUID_FAULTING.load(Relaxed)
                && libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, (!on) as libc::c_ulong) != 0
            {
                NO_CPUID_FAULTING.store(true, Relaxed);
            }
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
        if f >= BLOCK_FRAME0 {
            BLOCK_GPA + (f - BLOCK_FRAME0) * PAGE_SIZE as u64
        } else {
            FRAME_BASE + f * PAGE_SIZE as u64
        }
    }

    fn frame(&self, f: u64) -> &[u8; PAGE_SIZE] {
        if f >= BLOCK_FRAME0 {
            let k = f - BLOCK_FRAME0;
            return self.groups[(k / GROUP_PAGES) as usize]
                .region
                .page((k % GROUP_PAGES) * PAGE_SIZE as u64);
        }
        let c = (f / FRAMES_PER_CHUNK) as usize;
        self.chunks[c].page((f % FRAMES_PER_CHUNK) * PAGE_SIZE as u64)
    }

    fn frame_mut(&mut self, f: u64) -> &mut [u8; PAGE_SIZE] {
        if f >= BLOCK_FRAME0 {
            let k = f - BLOCK_FRAME0;
            return self.groups[(k / GROUP_PAGES) as usize]
                .region
                .page_mut((k % GROUP_PAGES) * PAGE_SIZE as u64);
        }
        let c = (f / FRAMES_PER_CHUNK) as usize;
        self.chunks[c].page_mut((f % FRAMES_PER_CHUNK) * PAGE_SIZE as u64)
    }

    /// The memory slot of group `g`, logged or not.
    fn set_group_slot(&self, g: usize, logged: bool) -> Result<(), String> {
        let region = kvm_userspace_memory_region {
            slot: BLOCK_SLOT0 + g as u32,
            flags: if logged { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
            guest_phys_addr: BLOCK_GPA + g as u64 * GROUP_SIZE,
            memory_size: GROUP_SIZE,
            userspace_addr: self.groups[g].region.ptr as u64,
        };
        // SAFETY: the region lives in `self.groups` as long as the VM.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(sys_err("a block's memory slot"))
    }

    /// Maps the untouched 2 MiB of guest memory from page `lo` (all of it in one anonymous
    /// mapping with protection `prot`) as a new block, if it can be one: see `Block`.
    fn try_block(&mut self, m: &Machine, lo: u64, prot: u8) -> Result<bool, String> {
        if prot != PROT_READ | PROT_WRITE
            || self.frame_of.range(lo..lo + BLOCK_PAGES).next().is_some()
            || (lo..lo + BLOCK_PAGES).any(|p| m.mem.pages.get(p).is_some())
        {
            return Ok(false);
        }
        // The page-directory entry, which must not be in use (a stale translation of the
        // table it pointed to could outlive it).
        let pde = self.table_entry(lo << 12, 1, true)?.expect("created");
        if self.sys.u64_at(pde) & PTE_P != 0 {
            return Ok(false);
        }
        // New blocks go to a group that is not logged (else KVM would map them small).
        if !self.blocks.len().is_multiple_of(GROUP_BLOCKS)
            && self.groups[self.blocks.len() / GROUP_BLOCKS].logged
        {
            while !self.blocks.len().is_multiple_of(GROUP_BLOCKS) {
                self.blocks.push(Block {
                    first_pn: NO_PAGE,
                    pde: 0,
                });
            }
        }
        let b = self.blocks.len();
        if b.is_multiple_of(GROUP_BLOCKS) {
            if self.groups.len() >= self.max_groups {
                return Ok(false);
            }
            self.groups.push(Group {
                region: Region::group()?,
                logged: false,
            });
            self.set_group_slot(self.groups.len() - 1, false)?;
        }
        self.blocks.push(Block { first_pn: lo, pde });
        let f0 = BLOCK_FRAME0 + b as u64 * BLOCK_PAGES;
        for i in 0..BLOCK_PAGES {
            self.frame_of.insert(lo + i, f0 + i);
        }
        self.sys.set_u64(
            pde,
            Self::frame_phys(f0) | PTE_P | PTE_RW | PTE_U | PTE_PS | PTE_NX,
        );
        self.stats.blocks += 1;
        Ok(true)
    }

    /// Logs group `g`'s slot from now on.
    fn log_group(&mut self, g: usize) -> Result<(), String> {
        if !self.groups[g].logged {
            self.groups[g].logged = true;
            self.set_group_slot(g, true)?;
        }
        Ok(())
    }

    fn new_frame(&mut self, pn: u64) -> Result<u64, String> {
        let f = match self.free.pop() {
            Some(f) => f,
            None => {
                let f = self.pn_of.len() as u64;
                if f.is_multiple_of(FRAMES_PER_CHUNK) {
                    let c = self.chunks.len() as u64;
                    // (Slots from `BLOCK_SLOT0` belong to blocks.)
                    if 1 + c >= BLOCK_SLOT0 as u64 {
                        return Err(format!(
                            "the guest uses more than {} GiB of memory outside blocks",
                            ((BLOCK_SLOT0 as u64 - 1) * CHUNK) >> 30
                        ));
                    }
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

    /// Forgets the patches on page `pn` (its frame is being rewritten or freed).
    fn unpatch(&mut self, pn: u64) {
        if self.deps.contains_key(&pn) {
            self.stale.push(pn);
        }
        self.unpatch_keeping_deps(pn);
    }

    /// `unpatch` without classifying again the pages that relied on `pn`.
    fn unpatch_keeping_deps(&mut self, pn: u64) {
        if self.patched.remove(&pn).is_some() {
            let sites = Arc::make_mut(&mut self.trap_sites);
            let gone: Vec<u64> = sites.range(pn << 12..(pn + 1) << 12).copied().collect();
            for a in gone {
                sites.remove(&a);
            }
            let range = pn << 12..(pn + 1) << 12;
            let gone: Vec<u64> = self.inline_sites.range(range).map(|(&a, _)| a).collect();
            for a in gone {
                self.inline_sites.remove(&a);
            }
        }
    }

    fn free_frame(&mut self, pn: u64) {
        self.unpatch(pn);
        if let Some(f) = self.frame_of.remove(&pn) {
            if f >= BLOCK_FRAME0 {
                // (A block's frames are not given to other pages.)
                let k = f - BLOCK_FRAME0;
                self.groups[(k / GROUP_PAGES) as usize]
                    .region
                    .discard((k % GROUP_PAGES) * PAGE_SIZE as u64, PAGE_SIZE as u64);
                return;
            }
            let c = (f / FRAMES_PER_CHUNK) as usize;
            self.chunks[c].discard((f % FRAMES_PER_CHUNK) * PAGE_SIZE as u64, PAGE_SIZE as u64);
            self.pn_of[f as usize] = NO_PAGE;
            self.free.push(f);
        }
    }

    /// The page-table entry for `va`, creating the tables above it if asked.
    fn pte(&mut self, va: u64, create: bool) -> Result<Option<u64>, String> {
        self.table_entry(va, 0, create)
    }

    /// The entry for `va` in the page table at `level` (0: page-table entry, 1:
    /// page-directory entry), creating the tables above it if asked.
    fn table_entry(&mut self, va: u64, level: u32, create: bool) -> Result<Option<u64>, String> {
        let mut table = PML4;
        for l in (level + 1..=3).rev() {
            let e = table + ((va >> (12 + 9 * l)) & 511) * 8;
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
        Ok(Some(table + ((va >> (12 + 9 * level)) & 511) * 8))
    }

    fn set_pte(&mut self, pn: u64, f: u64, prot: u8) -> Result<(), String> {
        let e = self.pte(pn << 12, true)?.expect("created");
        let mut v = Self::frame_phys(f) | PTE_P | PTE_U;
        if prot & PROT_WRITE != 0 && !self.guarded.contains(&pn) {
            v |= PTE_RW;
        }
        let exec = prot & PROT_EXEC != 0
            && prot & PROT_WRITE == 0
            && self.patched.contains_key(&pn)
            && !self.forced.contains(&pn);
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
            (start >> 12).max(pn & !511),
            (vma.end >> 12).min((pn | 511) + 1),
        );
        let prot = vma.prot;
        if hi - lo == BLOCK_PAGES && self.try_block(m, lo, prot)? {
            return Ok(true);
        }
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

    /// `try_native` once interpreting page `pn` has cost more than classifying it would.
    fn try_hot_native(&mut self, m: &Machine, pn: u64) -> Result<(), String> {
        if self.heat.get(&pn).is_some_and(|&h| h >= CLASSIFY_HEAT) {
            self.try_native(m, pn)?;
        }
        Ok(())
    }

    /// Lets an interpreted code page run natively once decoding from the instructions the
    /// interpreter executed there accounts for every byte pattern that could be a
    /// model-specific instruction: the real ones are patched to an invalid opcode in the frame (the
    /// engine's copy keeps the original bytes), so they leave the VM and are interpreted.
    fn try_native(&mut self, m: &Machine, pn: u64) -> Result<(), String> {
        self.classify_from(m, pn, None)
    }

    /// `try_native`, also for a page not run yet when `entry` says where execution would
    /// enter it: a search for observable flags stopped there (see `Beyond`), typically at an
    /// error path that is rarely taken. Classified at once (cold), such a page lets the
    /// search go on into it; it runs natively if it is ever entered.
    fn classify_from(&mut self, m: &Machine, pn: u64, entry: Option<u64>) -> Result<(), String> {
        if entry.is_some() && !self.frame_of.contains_key(&pn) {
            let prot = m.mem.vma_at(pn << 12).map_or(0, |(_, v)| v.prot);
            let Some(page) = m.mem.pages.get(pn) else {
                return Ok(());
            };
            if prot & PROT_EXEC == 0 || prot & PROT_WRITE != 0 {
                return Ok(());
            }
            let f = self.new_frame(pn)?;
            self.frame_mut(f).copy_from_slice(page.data());
            self.set_pte(pn, f, prot)?;
        }
        let Some(&f) = self.frame_of.get(&pn) else {
            return Ok(());
        };
        if !self.interp_pages.contains(&pn)
            || self.patched.contains_key(&pn)
            || self.forced.contains(&pn)
        {
            return Ok(());
        }
        let prot = m.mem.vma_at(pn << 12).map_or(0, |(_, v)| v.prot);
        if prot & PROT_EXEC == 0 || prot & PROT_WRITE != 0 {
            return Ok(());
        }
        let mut seeds = m.block_starts_on(pn);
        if let Some(e) = entry.filter(|e| !seeds.contains(e)) {
            seeds.push(e);
        }
        if self.tried.get(&pn).is_some_and(|&(n, known)| {
            n >= seeds.len() && (known || lead_phase(m, pn, &mut self.lead_phases).is_none())
        }) {
            return Ok(());
        }
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
        let host_flags_match = self.host_flags_match();
        let mut followed = Followed {
            m,
            patched: &self.patched,
            forced: &self.forced,
            frame_of: &self.frame_of,
            guard_hits: &self.guard_hits,
            deps: BTreeSet::new(),
            guards: BTreeSet::new(),
            waits: BTreeMap::new(),
        };
        let mut nowhere = Nowhere;
        let beyond: Option<&mut dyn Beyond> = if host_flags_match {
            None
        } else if self.redos.get(&pn).is_some_and(|&n| n >= MAX_REDOS) {
            Some(&mut nowhere)
        } else {
            Some(&mut followed)
        };
        // The phase is found (a sweep over earlier pages) only where it matters.
        let mut lead_unknown = false;
        let classified = classify_page(&bytes[..avail], pn << 12, &seeds, beyond, || {
            let lead = lead_phase(m, pn, &mut self.lead_phases);
            lead_unknown = lead.is_none();
            lead
        });
        let Followed {
            deps,
            guards,
            waits,
            ..
        } = followed;
        let Ok(sites) = classified else {
            // Tried again with more seeds, or once the phase it needed is known.
            self.tried.insert(pn, (seeds.len(), !lead_unknown));
            return Ok(());
        };
        // 06 (`push es`) is invalid in 64-bit mode: #UD at the very instruction, and one
        // byte fits anywhere (also before an instruction that runs into the next page).
        let decoded: Vec<(u64, iced_x86::Instruction)> = sites
            .iter()
            .map(|&o| {
                let at = (pn << 12) + o as u64;
                let ins = iced_x86::Decoder::with_ip(
                    64,
                    &bytes[o as usize..avail],
                    at,
                    iced_x86::DecoderOptions::NONE,
                )
                .decode();
                (at, ins)
            })
            .collect();
        // `tzcnt`/`lzcnt` run natively as the model runs them (see `model_prefix`); one
        // whose prefixes do not allow that leaves the page to the interpreter.
        let mut rewrites = Vec::new();
        for (at, ins) in &decoded {
            if rewritten_natively(ins) {
                let o = (at & 0xfff) as usize;
                match model_prefix(ins, &bytes[o..avail]) {
                    Some(k) => rewrites.push(o + k),
                    None => {
                        self.tried.insert(pn, (seeds.len(), true));
                        return Ok(());
                    }
                }
            }
        }
        for (at, ins) in &decoded {
            if !rewritten_natively(ins) {
                self.frame_mut(f)[(at & 0xfff) as usize] = 0x06;
            }
        }
        for k in rewrites {
            // A CS override, which 64-bit mode ignores, in place of the F3.
            self.frame_mut(f)[k] = 0x2e;
        }
        for (at, ins) in decoded {
            if rewritten_natively(&ins) {
                continue;
            }
            if emulate_inline(&ins) {
                self.inline_sites.insert(at, ins);
            } else {
                Arc::make_mut(&mut self.trap_sites).insert(at);
            }
        }
        self.patched.insert(pn, sites);
        self.tried.remove(&pn);
        self.invalidate.push(pn << 12);
        self.set_pte(pn, f, prot)?;
        for d in deps {
            self.deps.entry(d).or_default().insert(pn);
        }
        for &w in waits.keys() {
            self.waiting.entry(w).or_default().insert(pn);
        }
        for g in guards {
            if self.guarded.insert(g) {
                if let Some(&gf) = self.frame_of.get(&g) {
                    let gprot = m.mem.vma_at(g << 12).map_or(0, |(_, v)| v.prot);
                    self.set_pte(g, gf, gprot)?;
                    // (Taking a permission away: see `invalidate`.)
                    self.flush = true;
                }
            }
        }
        // Pages whose search stopped here may find more of their sites dead now.
        if let Some(ps) = self.waiting.remove(&pn) {
            self.redo.extend(ps);
        }
        if entry.is_none() {
            for (q, va) in waits {
                if self.eager_budget > 0 && !self.patched.contains_key(&q) {
                    self.eager_budget -= 1;
                    self.classify_from(m, q, Some(va))?;
                }
            }
        }
        Ok(())
    }

    /// Classifies again the pages in `redo` and those that relied on the pages in `stale`
    /// (see `deps`): their patches are undone and they run in the interpreter until they
    /// are classified again (at once where they are hot, see `heat`).
    fn drop_stale(&mut self, m: &Machine) -> Result<(), String> {
        let mut work = std::mem::take(&mut self.redo);
        loop {
            for d in std::mem::take(&mut self.stale) {
                if let Some(ps) = self.deps.remove(&d) {
                    work.extend(ps);
                }
            }
            let Some(p) = work.pop() else {
                return Ok(());
            };
            if !self.patched.contains_key(&p) {
                continue;
            }
            let Some(&f) = self.frame_of.get(&p) else {
                self.unpatch(p);
                continue;
            };
            match m.mem.pages.get(p) {
                Some(page) => self.frame_mut(f).copy_from_slice(page.data()),
                None => self.frame_mut(f).fill(0),
            }
            // Classified again at once (it was running natively, so it is hot). The pages
            // that relied on it need not follow as long as it still runs natively with no
            // site it did not have: what they relied on still holds. Otherwise they are
            // classified again too (two pages whose searches run into each other would
            // otherwise undo each other's classification over and over).
            let before = self.patched.get(&p).cloned().unwrap_or_default();
            let relied_on = self.deps.contains_key(&p);
            self.unpatch_keeping_deps(p);
            self.tried.remove(&p);
            *self.redos.entry(p).or_default() += 1;
            self.stats.reclassified += 1;
            let prot = m.mem.vma_at(p << 12).map_or(0, |(_, v)| v.prot);
            if prot != 0 {
                self.set_pte(p, f, prot)?;
            }
            self.flush = true;
            self.classify_from(m, p, None)?;
            let kept = self
                .patched
                .get(&p)
                .is_some_and(|now| now.iter().all(|s| before.contains(s)));
            if relied_on && !kept {
                self.stale.push(p);
            }
        }
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
        // Guarded pages the guest is about to write: they are writable from now on, and
        // what relied on their jump slots is classified again (see `guarded`).
        for g in std::mem::take(&mut self.guards_hit) {
            self.unguard(m, g)?;
        }
        if m.mem.vmas != self.mirror_vmas {
            // Pages relied upon whose protection changed.
            let prot_of = |v: &BTreeMap<u64, Vma>, pn: u64| {
                v.range(..=pn << 12)
                    .next_back()
                    .filter(|(_, v)| v.end > pn << 12)
                    .map_or(0, |(_, v)| v.prot)
            };
            let moved: Vec<u64> = self
                .deps
                .keys()
                .copied()
                .filter(|&d| prot_of(&m.mem.vmas, d) != prot_of(&self.mirror_vmas, d))
                .collect();
            self.stale.extend(moved);
            // Tables are rebuilt with small pages: blocks are logged from now on (those the
            // guest wrote were copied and logged at the last exit already).
            for g in 0..self.groups.len() {
                self.log_group(g)?;
            }
            // Phases depend on code bytes and on where executable mappings end.
            let exec = |v: &BTreeMap<u64, Vma>| {
                v.iter()
                    .filter(|(_, v)| v.prot & PROT_EXEC != 0)
                    .map(|(&a, v)| (a, v.end))
                    .collect::<Vec<_>>()
            };
            if exec(&m.mem.vmas) != exec(&self.mirror_vmas) {
                self.lead_phases.clear();
            }
            self.clear_user_tables();
            let frames: Vec<(u64, u64)> = self.frame_of.iter().map(|(&p, &f)| (p, f)).collect();
            for (pn, f) in frames {
                match m.mem.vma_at(pn << 12).map(|(_, v)| v.prot) {
                    Some(prot) if prot != 0 => {
                        if self.patched.contains_key(&pn)
                            && (prot & PROT_WRITE != 0 || prot & PROT_EXEC == 0)
                        {
                            // No longer code that runs natively: its patches go (the guest may
                            // read the page, or write it natively, and what it writes is then
                            // copied back as for any page).
                            match m.mem.pages.get(pn) {
                                Some(page) => self.frame_mut(f).copy_from_slice(page.data()),
                                None => self.frame_mut(f).fill(0),
                            }
                            self.unpatch(pn);
                        }
                        self.set_pte(pn, f, prot)?
                    }
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
            if self.deps.contains_key(&pn) {
                self.stale.push(pn);
            }
            if m.mem
                .vma_at(pn << 12)
                .is_some_and(|(_, v)| v.prot & PROT_EXEC != 0)
            {
                self.lead_phases.clear();
            }
            match (self.frame_of.get(&pn).copied(), page) {
                (Some(f), Some(p)) => {
                    self.unpatch(pn);
                    self.frame_mut(f).copy_from_slice(p.data());
                    let prot = m.mem.vma_at(pn << 12).map_or(0, |(_, v)| v.prot);
                    if prot & PROT_EXEC != 0 {
                        // (It may no longer be executable natively: see `invalidate`.)
                        self.set_pte(pn, f, prot)?;
                        self.flush = true;
                    }
                }
                (Some(f), None) => {
                    self.unpatch(pn);
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
        self.drop_stale(m)?;

        if (m.cpu.fs_base, m.cpu.gs_base) != (self.fs_base, self.gs_base) {
            self.set_msrs(&[(MSR_FS_BASE, m.cpu.fs_base), (MSR_GS_BASE, m.cpu.gs_base)])?;
            self.fs_base = m.cpu.fs_base;
            self.gs_base = m.cpu.gs_base;
        }
        // FPU/SSE state as an XSAVE image (standard format: x87 and SSE components only),
        // unless the VM holds it already (most syscalls leave it alone).
        let img = m.fx_image();
        if self.fx_in_vm.as_ref() != Some(&img) {
            let mut xs = kvm_xsave::default();
            for (i, w) in img.chunks_exact(4).enumerate() {
                xs.region[i] = u32::from_le_bytes(w.try_into().expect("4 bytes"));
            }
            xs.region[128] = crate::cpuid::XCR0 as u32;
            // SAFETY: a plain kvm_xsave without the variable-size extension.
            unsafe { self.vcpu.set_xsave(&xs) }.map_err(sys_err("set_xsave"))?;
            self.fx_in_vm = Some(img);
        }

        let g = &m.cpu.gpr;
        let rflags = (m.cpu.rflags() & !(RFLAGS_TF | RFLAGS_RF)) | RFLAGS_IF | 2;
        let frame = KSTACK_TOP - 40;
        for (i, v) in [m.cpu.rip, USER_CS, rflags, g[RSP], USER_SS]
            .iter()
            .enumerate()
        {
            self.sys.set_u64(frame + 8 * i as u64, *v);
        }
        let mut regs = kvm_regs {
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
            rip: KBASE
                + if self.flush || self.invalidate.len() > INVLPG_MAX {
                    RESUME_FLUSH
                } else {
                    RESUME
                },
            rflags: 2,
        };
        if self.flush || self.invalidate.len() > INVLPG_MAX {
            self.forget_translations()?;
            self.flush = true;
        } else if !self.invalidate.is_empty() {
            self.sys.set_u64(INVLPG_LIST, self.invalidate.len() as u64);
            for (i, &va) in self.invalidate.iter().enumerate() {
                self.sys.set_u64(INVLPG_LIST + 8 * (i as u64 + 1), va);
            }
            regs.rip = KBASE + RESUME_INVLPG;
        }
        self.invalidate.clear();
        self.flush = false;
        self.vcpu.set_regs(&regs).map_err(sys_err("set_regs"))
    }

    /// Runs the guest until an event the interpreter must handle.
    /// After a signal interrupted `KVM_RUN`: the run stops, or a kick ends the stretch at
    /// an instruction boundary in user code, or (inside our own stubs, or in the middle of a
    /// `rep` string instruction, which the interpreter executes whole) the VM goes on.
    fn interrupted_at(&mut self) -> Result<Option<Event>, String> {
        if self.stopping() {
            return Ok(Some(Event::Interrupted));
        }
        if self.kicker.is_none() {
            return Ok(None);
        }
        let mut regs = self.vcpu.get_regs().map_err(sys_err("get_regs"))?;
        if regs.rip < 1 << 47 && !self.kick_pending && self.kick_allowed_at(regs.rip) {
            // In user code: single-step one instruction, so that the VM leaves user mode
            // through its exception stubs (as `push` expects) at the next boundary.
            regs.rflags |= RFLAGS_TF;
            self.vcpu.set_regs(&regs).map_err(sys_err("set_regs"))?;
            self.kick_pending = true;
            self.tf_by_kick = true;
        }
        Ok(None)
    }

    /// Whether the instruction at `rip` may run with a kick's trap flag: not one that saves
    /// RFLAGS where the guest sees it (`pushf`, `syscall`) or loads it (`popf`, `iret`),
    /// nor a `rep` string instruction (it traps after each iteration, while the interpreter
    /// executes it whole).
    fn kick_allowed_at(&self, rip: u64) -> bool {
        use iced_x86::Mnemonic as M;
        let ins = self.decode_at(rip);
        // (Not on a patched instruction: it leaves the VM with `#UD` first.)
        !(ins.is_invalid()
            || matches!(
                ins.mnemonic(),
                M::Pushf
                    | M::Pushfq
                    | M::Pushfd
                    | M::Popf
                    | M::Popfq
                    | M::Popfd
                    | M::Syscall
                    | M::Iret
                    | M::Iretd
                    | M::Iretq
                    | M::Int
                    | M::Int1
                    | M::Int3
                    | M::Into
            )
            || Self::rep_string(&ins))
    }

    fn rep_string(ins: &iced_x86::Instruction) -> bool {
        ins.is_string_instruction() && (ins.has_rep_prefix() || ins.has_repne_prefix())
    }

    /// Whether the instruction at `rip` (as the VM's frames hold it) is a `rep` string
    /// instruction.
    fn rep_string_at(&self, rip: u64) -> bool {
        Self::rep_string(&self.decode_at(rip))
    }

    /// The instruction at `rip` as the VM's frames hold it.
    fn decode_at(&self, rip: u64) -> iced_x86::Instruction {
        let mut bytes = Vec::with_capacity(32);
        for pn in [rip >> 12, (rip >> 12) + 1] {
            let Some(&f) = self.frame_of.get(&pn) else {
                break;
            };
            let from = if pn == rip >> 12 {
                (rip & 0xfff) as usize
            } else {
                0
            };
            bytes.extend_from_slice(&self.frame(f)[from..]);
            if bytes.len() >= 15 {
                break;
            }
        }
        bytes.truncate(15);
        iced_x86::Decoder::with_ip(64, &bytes, rip, 0).decode()
    }

    /// A `syscall` saves RFLAGS in R11: without the trap flag a kick set.
    fn without_kick_tf(&mut self, mut regs: kvm_regs) -> kvm_regs {
        if self.tf_by_kick {
            regs.r11 &= !RFLAGS_TF;
        }
        self.kick_pending = false;
        regs
    }

    fn stopping(&self) -> bool {
        self.stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn enter(&mut self, m: &mut Machine) -> Result<Event, String> {
        let t0 = std::time::Instant::now();
        let ev = self.enter_inner(m);
        self.stretch_time = t0.elapsed();
        // (Whatever ended the stretch, the patch after a write to a guarded page goes.)
        if let Some((va, f, b)) = self.step_over.take() {
            self.frame_mut(f)[(va & 0xfff) as usize] = b;
        }
        ev
    }

    fn enter_inner(&mut self, m: &mut Machine) -> Result<Event, String> {
        // In-place executions in this stretch (see `burst_armed`).
        let mut emulated_here = 0u32;
        loop {
            self.stats.entries += 1;
            Self::trap_cpuid_and_tsc(true);
            if let Some(k) = &self.kicker {
                k.in_vm.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // (The exit borrows the vCPU: only what matters is kept.)
            let ran = self.vcpu.run().map(|e| match e {
                VcpuExit::Hlt => Ran::Halted,
                VcpuExit::Shutdown => Ran::Shutdown,
                VcpuExit::Intr => Ran::Interrupted,
                other => Ran::Other(format!("unexpected VM exit {other:?}")),
            });
            if let Some(k) = &self.kicker {
                k.in_vm.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Self::trap_cpuid_and_tsc(false);
            let exit = match ran {
                Ok(Ran::Halted) => None,
                Ok(Ran::Shutdown) => {
                    Some("the VM shut down (a fault while handling a fault)".to_string())
                }
                Ok(Ran::Interrupted) => match self.interrupted_at()? {
                    Some(ev) => return Ok(ev),
                    None => continue,
                },
                Ok(Ran::Other(e)) => Some(e),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    match self.interrupted_at()? {
                        Some(ev) => return Ok(ev),
                        None => continue,
                    }
                }
                Err(e) => Some(format!("KVM_RUN failed: {e}")),
            };
            if let Some(e) = exit {
                return Err(e);
            }
            let mut regs = if self.sync_regs {
                self.vcpu.sync_regs().regs
            } else {
                self.vcpu.get_regs().map_err(sys_err("get_regs"))?
            };
            let at = regs.rip.wrapping_sub(1).wrapping_sub(KBASE);
            if at == SYSCALL_STUB {
                self.last_fault = (u64::MAX, 0);
                return Ok(Event::Syscall(self.without_kick_tf(regs)));
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
                    return Ok(Event::Syscall(self.without_kick_tf(regs)));
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
            let mut kick = false;
            let cr2 = if vector == 14 {
                self.vcpu.get_sregs().map_err(sys_err("get_sregs"))?.cr2
            } else {
                0
            };
            let resume = match vector {
                14 if err & 3 == 3 && self.guarded.contains(&(cr2 >> 12)) => {
                    let g = cr2 >> 12;
                    if rip < 1 << 47 && self.kick_allowed_at(rip) {
                        // A write to a guarded page: the stretch ends before it, as at a
                        // kick (the write's instruction has not run; see `guarded`).
                        self.guards_hit.push(g);
                        kick = true;
                        false
                    } else {
                        // It may be in its middle: it completes natively, and the stretch
                        // ends right after it (see `step_over`).
                        self.step_over_write(m, rip, g)?;
                        true
                    }
                }
                6 if self.step_over.is_some_and(|(va, _, _)| va == rip) => {
                    let (_, f, b) = self.step_over.take().expect("checked");
                    self.frame_mut(f)[(rip & 0xfff) as usize] = b;
                    kick = true;
                    false
                }
                14 => {
                    interpret = err & 16 != 0 && self.interp_pages.contains(&(cr2 >> 12));
                    let mapped = !interpret && self.demand_map(m, cr2, err)?;
                    if mapped {
                        self.stats.page_faults += 1;
                    }
                    mapped
                }
                // Not if it runs into a page that is interpreted: unpatched, the fetch
                // would fault there first, and the replay stops before it too.
                6 if self.inline_sites.get(&rip).is_some_and(|i| {
                    let last = (rip + i.len() as u64 - 1) >> 12;
                    last == rip >> 12 || !self.interp_pages.contains(&last)
                }) =>
                {
                    // (Not at `cpuid`: a replay pauses only at sites whose flags diverge.)
                    if self.burst_armed
                        && emulated_here == 0
                        && divergent_flags(&self.inline_sites[&rip]) != 0
                    {
                        // Ends the stretch here (see `emu_window`): the first in-place site
                        // of the stretch, so that its replay pauses at this very visit.
                        self.burst_armed = false;
                        self.burst_pending = true;
                        false
                    } else {
                        emulated_here += 1;
                        if self.wants_burst(rip) {
                            self.burst_armed = true;
                        }
                        let ins = self.inline_sites[&rip];
                        self.emulate(m, &ins, &mut regs, sp, rip, rflags, rsp)?;
                        self.stats.emulated += 1;
                        if std::mem::take(&mut self.kick_pending) {
                            // The kick's trap flag would single-step the next instruction, which
                            // was not checked (see `kick_allowed_at`): the kick is dropped.
                            let f = self.sys.u64_at(sp + 16);
                            self.sys.set_u64(sp + 16, f & !RFLAGS_TF);
                        }
                        let next = self.sys.u64_at(sp);
                        if self.burst_armed && next < 1 << 47 && self.kick_allowed_at(next) {
                            // End the stretch after the next instruction, as a kick does, so
                            // that the burst comes soon (the next stretch ends at its first
                            // in-place site).
                            let f = self.sys.u64_at(sp + 16);
                            self.sys.set_u64(sp + 16, f | RFLAGS_TF);
                            self.kick_pending = true;
                            self.tf_by_kick = true;
                        }
                        true
                    }
                }
                // The trap flag of a kick (see `interrupted_at`): the stretch ends here, at an
                // instruction boundary in user code, unless in the middle of a `rep` string
                // instruction (which the interpreter executes whole; the kick is dropped).
                1 if std::mem::take(&mut self.kick_pending) => {
                    self.sys.set_u64(sp + 16, rflags & !RFLAGS_TF);
                    if rip >= 1 << 47 || self.rep_string_at(rip) {
                        true
                    } else {
                        kick = true;
                        false
                    }
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
            self.kick_pending = false;
            if kick {
                return Ok(Event::Kicked {
                    regs,
                    rip,
                    rflags: rflags & !RFLAGS_TF,
                    rsp,
                });
            }
            return Ok(Event::Exception {
                interpret,
                regs,
                rip,
                rflags,
                rsp,
            });
        }
    }

    /// Guarded page `g` is being written natively: it becomes writable, and what relied on
    /// its jump slots is classified again at the next `push` (see `guarded`).
    fn unguard(&mut self, m: &Machine, g: u64) -> Result<(), String> {
        if !self.guarded.remove(&g) {
            return Ok(());
        }
        self.stats.guard_hits += 1;
        *self.guard_hits.entry(g).or_default() += 1;
        self.stale.push(g);
        if let Some(&f) = self.frame_of.get(&g) {
            let prot = m.mem.vma_at(g << 12).map_or(0, |(_, v)| v.prot);
            self.set_pte(g, f, prot)?;
            self.invalidate.push(g << 12);
        }
        Ok(())
    }

    /// After a write to guarded page `g` by the instruction at `rip` that a kick could not
    /// end the stretch before: `g` becomes writable (what relied on it is classified again
    /// at the next `push`), and the byte after the instruction is patched to an invalid
    /// opcode, so that the stretch ends at the next instruction boundary, as at a kick. (If
    /// that byte is on a page that does not run natively, the stretch ends there anyway.)
    fn step_over_write(&mut self, m: &Machine, rip: u64, g: u64) -> Result<(), String> {
        self.unguard(m, g)?;
        if self.step_over.is_some() {
            return Ok(());
        }
        let next = self.decode_at(rip).next_ip();
        let npn = next >> 12;
        if let Some(&f) = self.frame_of.get(&npn) {
            if self.patched.contains_key(&npn) && !self.interp_pages.contains(&npn) {
                let off = (next & 0xfff) as usize;
                let b = self.frame(f)[off];
                self.frame_mut(f)[off] = 0x06;
                self.step_over = Some((next, f, b));
            }
        }
        Ok(())
    }

    /// Executes a register-only instruction that was patched out (see `inline_sites`) with
    /// the interpreter's semantics on the registers of the guest stopped at it, as the
    /// interpreter would when replaying the stretch; the exception frame at `sp` then
    /// resumes after it.
    #[allow(clippy::too_many_arguments)]
    fn emulate(
        &mut self,
        m: &mut Machine,
        ins: &iced_x86::Instruction,
        regs: &mut kvm_regs,
        sp: u64,
        rip: u64,
        rflags: u64,
        rsp: u64,
    ) -> Result<(), String> {
        let saved = (m.cpu.gpr, m.cpu.rip, m.cpu.rflags());
        m.cpu.gpr = [
            regs.rax, regs.rcx, regs.rdx, regs.rbx, rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
            regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ];
        m.cpu.rip = rip;
        m.cpu.set_rflags(rflags & !RFLAGS_RF);
        let op = crate::exec::Op::new(*ins);
        let ok = m.exec(&op, 1).is_ok();
        let g = m.cpu.gpr;
        let (new_rip, new_flags) = (m.cpu.rip, m.cpu.rflags());
        (m.cpu.gpr, m.cpu.rip) = (saved.0, saved.1);
        m.cpu.set_rflags(saved.2);
        if !ok {
            return Err(format!(
                "the interpreter could not execute {ins} at {rip:#x} for the VM"
            ));
        }
        [
            regs.rax,
            regs.rcx,
            regs.rdx,
            regs.rbx,
            _,
            regs.rbp,
            regs.rsi,
            regs.rdi,
            regs.r8,
            regs.r9,
            regs.r10,
            regs.r11,
            regs.r12,
            regs.r13,
            regs.r14,
            regs.r15,
        ] = g;
        self.sys.set_u64(sp, new_rip);
        self.sys.set_u64(
            sp + 16,
            (rflags & !STATUS_FLAGS) | (new_flags & STATUS_FLAGS),
        );
        self.sys.set_u64(sp + 24, g[4]);
        Ok(())
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
            Event::Kicked {
                regs,
                rip,
                rflags,
                rsp,
            } => (regs, *rip, *rflags, *rsp),
            Event::Interrupted => return Err("no state to take after an interruption".into()),
        };
        m.cpu.gpr = [
            regs.rax, regs.rcx, regs.rdx, regs.rbx, rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
            regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ];
        m.cpu.rip = rip;
        let tf = if std::mem::take(&mut self.tf_by_kick) {
            RFLAGS_TF
        } else {
            0
        };
        m.cpu.set_rflags(rflags & !(RFLAGS_RF | tf));
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
        self.fx_in_vm = Some(m.fx_image());
        self.copied.clear();
        for c in 0..self.chunks.len() {
            let base = c as u64 * FRAMES_PER_CHUNK;
            self.pull_slot(m, 1 + c as u32, FRAMES_PER_CHUNK, |v, k| {
                let f = base + k;
                let pn = v.pn_of.get(f as usize).copied().unwrap_or(NO_PAGE);
                (pn != NO_PAGE).then_some((pn, f))
            })?;
        }
        for g in 0..self.groups.len() {
            self.pull_group(m, g)?;
        }
        self.mirror = m.mem.pages.clone();
        Ok(())
    }

    /// Copies what the guest wrote in the blocks of group `g` (see `Block`) into the
    /// engine's pages.
    fn pull_group(&mut self, m: &mut Machine, g: usize) -> Result<(), String> {
        let b0 = g * GROUP_BLOCKS;
        let f0 = BLOCK_FRAME0 + g as u64 * GROUP_PAGES;
        // Page `k` of the group, if a block there still maps it.
        let page_of = move |v: &NativeVm, k: u64| {
            let first = v.blocks.get(b0 + (k / BLOCK_PAGES) as usize)?.first_pn;
            let pn = first.checked_add(k % BLOCK_PAGES)?;
            (v.frame_of.get(&pn) == Some(&(f0 + k))).then_some((pn, f0 + k))
        };
        if self.groups[g].logged {
            return self.pull_slot(m, BLOCK_SLOT0 + g as u32, GROUP_PAGES, page_of);
        }
        let mut written = false;
        for b in b0..self.blocks.len().min(b0 + GROUP_BLOCKS) {
            let block = &self.blocks[b];
            if block.first_pn == NO_PAGE || self.sys.u64_at(block.pde) & PTE_D == 0 {
                continue;
            }
            written = true;
            let base = (b - b0) as u64 * BLOCK_PAGES;
            for k in base..base + BLOCK_PAGES {
                if let Some((pn, f)) = page_of(self, k) {
                    self.copy_back(m, pn, f);
                }
            }
        }
        // (Logging starts with every page reported dirty, none write-protected, and large
        // pages kept until a page of them is write-protected.)
        if written {
            self.log_group(g)?;
        }
        Ok(())
    }

    /// For how many exits in a row frame `f` was found unchanged while writable (see
    /// `CALM_EXITS`).
    fn calm_mut(&mut self, f: u64) -> &mut u8 {
        let (v, i) = if f >= BLOCK_FRAME0 {
            (&mut self.calm_blocks, (f - BLOCK_FRAME0) as usize)
        } else {
            (&mut self.calm, f as usize)
        };
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        &mut v[i]
    }

    /// Copies frame `f` into the engine's page `pn` if they differ; whether they did, or
    /// `None` for a patched code page, which is never copied: it is not writable natively
    /// and differs only by its patches (its dirty bit may still be set from before).
    fn copy_back(&mut self, m: &mut Machine, pn: u64, f: u64) -> Option<bool> {
        if self.patched.contains_key(&pn) {
            return None;
        }
        let frame = self.frame(f);
        let differs = m
            .mem
            .pages
            .get(pn)
            .map_or_else(|| frame.iter().any(|&x| x != 0), |p| p.data() != frame);
        if differs {
            let pattern = Page::pattern(frame)
                .filter(|p| self.patterns.len() < MAX_PATTERNS || self.patterns.contains_key(p));
            match pattern {
                Some(p) => {
                    let page = match self.patterns.get(&p) {
                        Some(page) => page.clone(),
                        None => Page::new(frame),
                    };
                    self.patterns.entry(p).or_insert_with(|| page.clone());
                    self.stats.pattern_pages += 1;
                    m.mem.put_shared_page(pn, page);
                }
                None => m.mem.put_page(pn, frame),
            }
            self.stats.dirty_pages += 1;
            self.copied.push(pn);
        }
        Some(differs)
    }

    /// Copies back the pages KVM logged as dirty in memory slot `slot` (`pages` pages; page
    /// `k` of it is the engine's page and frame `page_of(k)`, if any) that differ from the
    /// engine's, and write-protects again those that do not (see `manual_protect`).
    fn pull_slot(
        &mut self,
        m: &mut Machine,
        slot: u32,
        pages: u64,
        page_of: impl Fn(&NativeVm, u64) -> Option<(u64, u64)>,
    ) -> Result<(), String> {
        let bitmap = self
            .vm
            .get_dirty_log(slot, pages as usize * PAGE_SIZE)
            .map_err(sys_err("get_dirty_log"))?;
        let mut protect = vec![0u64; bitmap.len()];
        for (w, &bits) in bitmap.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let i = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let calm = match page_of(self, w as u64 * 64 + i) {
                    Some((pn, f)) => {
                        let written = self.copy_back(m, pn, f);
                        let c = self.calm_mut(f);
                        *c = match written {
                            Some(true) => 0,
                            Some(false) => *c + 1,
                            None => CALM_EXITS,
                        };
                        let calm = *c >= CALM_EXITS;
                        if calm {
                            *c = 0;
                        }
                        calm
                    }
                    None => true,
                };
                if calm {
                    // Not written at the last exits (or not in use): logged again.
                    protect[w] |= 1 << i;
                }
            }
        }
        if self.manual_protect && protect.iter().any(|&w| w != 0) {
            self.clear_dirty_log(slot, pages, &mut protect)?;
        }
        Ok(())
    }

    /// Write-protects again (for the dirty log) the pages of slot `slot` whose bits are set
    /// in `bitmap` (`KVM_CLEAR_DIRTY_LOG`, with manual protection: see `manual_protect`).
    fn clear_dirty_log(&self, slot: u32, pages: u64, bitmap: &mut [u64]) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let arg = kvm_bindings::kvm_clear_dirty_log {
            slot,
            num_pages: pages as u32,
            first_page: 0,
            __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bitmap.as_mut_ptr().cast(),
            },
        };
        // _IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)
        const KVM_CLEAR_DIRTY_LOG: libc::c_ulong = 0xc018_aec0;
        // SAFETY: the argument and the bitmap it points to (one bit per page of the slot)
        // live across the call; KVM only reads them.
        let r = unsafe { libc::ioctl(self.vm.as_raw_fd(), KVM_CLEAR_DIRTY_LOG, &arg) };
        if r != 0 {
            return Err(format!(
                "KVM_CLEAR_DIRTY_LOG: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Makes the pages of `pages` (breakpoints) run in the interpreter, and the pages that
    /// were so before but are not in it run natively again.
    pub fn interpret_pages(&mut self, m: &Machine, pages: Vec<u64>) -> Result<(), String> {
        let new: BTreeSet<u64> = pages.into_iter().collect();
        if new == self.forced {
            return Ok(());
        }
        let changed: Vec<u64> = new.symmetric_difference(&self.forced).copied().collect();
        self.forced = new;
        for pn in changed {
            self.stale.push(pn);
            if let Some(&f) = self.frame_of.get(&pn) {
                let prot = m.mem.vma_at(pn << 12).map_or(0, |(_, v)| v.prot);
                if prot != 0 {
                    self.set_pte(pn, f, prot)?;
                }
            }
            self.tried.remove(&pn);
        }
        self.flush = true;
        self.drop_stale(m)
    }

    /// Counts an in-place execution (at `site`); true if they came too fast over the last
    /// window (see `emu_window`), unless a burst that started at `site` showed that
    /// interpreting costs more per pass of it than running natively and leaving the VM
    /// there does: when the site comes around only every million instructions or so, an
    /// exit per pass is far cheaper than interpreting them all. Such a verdict refuses
    /// `BURST_RETRY` bursts; then a burst measures again (the program may have moved on).
    fn wants_burst(&mut self, site: u64) -> bool {
        if !self.bursts {
            return false;
        }
        let (start, n) = &mut self.emu_window;
        *n += 1;
        if *n < BURST_WINDOW {
            return false;
        }
        let now = std::time::Instant::now();
        let window = now.duration_since(*start);
        (*start, *n) = (now, 0);
        if window >= std::time::Duration::from_micros(BURST_GAP_US * BURST_WINDOW as u64) {
            return false;
        }
        self.emu_gap = window / BURST_WINDOW;
        match self.burst_cost.get_mut(&site) {
            Some((cost, refused)) if *cost >= self.emu_gap => {
                *refused += 1;
                if *refused >= BURST_RETRY {
                    self.burst_cost.remove(&site);
                }
                false
            }
            _ => true,
        }
    }

    /// Lengthens the kick period when kicks make many pages be copied twice. A page a kick
    /// copied back faults once more when it is written again (for the dirty log; tens of
    /// microseconds on a host with shadow paging) and is copied again at the next exit;
    /// without the kick it would have been copied once. The copies of such pages since the
    /// last kick are kept near 5% of the period. (Pages written once, as at start-up, cost
    /// little more.) Called after each exit's pages were copied back.
    fn adapt_kick_period(&mut self, kicked: bool) {
        for p in &self.copied {
            if self.kick_copied.remove(p) {
                self.copied_again += 1;
            }
        }
        if !kicked {
            return;
        }
        self.kick_copied.extend(self.copied.iter().copied());
        if let Some(k) = &self.kicker {
            let base = k.base.as_micros() as u64;
            // (A kick that copies many pages is likely to be followed by copies of them
            // again: an eighth of them count before that is seen.)
            let pages = self.copied_again + self.copied.len() as u64 / 8;
            let want = (pages * 25 * 20).clamp(base, 10_000_000.max(base));
            k.period_us
                .store(want, std::sync::atomic::Ordering::Relaxed);
        }
        self.copied_again = 0;
    }

    /// Whether this CPU sets the flags that shifts, rotates, multiplies and divides leave
    /// undefined exactly as the model does (`host_flags_match_model`); if not, instructions
    /// whose undefined flags could be observed are interpreted.
    pub fn host_flags_match(&mut self) -> bool {
        let known = match std::mem::replace(&mut self.host_flags, HostFlags::Known(false)) {
            // (A probe that panicked counts as a disagreement.)
            HostFlags::Probing(probe) => probe.join().unwrap_or(false),
            HostFlags::Known(k) => k,
        };
        self.host_flags = HostFlags::Known(known);
        known
    }

    /// Treats this CPU as one whose undefined flags differ from the model's (for tests and
    /// measurements on hosts where they match).
    pub fn assume_host_flags_differ(&mut self) {
        self.host_flags = HostFlags::Known(false);
    }

    /// Kicks the VM out every `period` (from the thread that calls this, which must be the
    /// one that runs it): long native stretches are cut into pieces whose ends are exact
    /// states, found again by replay (the first instruction boundary in the stretch with the
    /// same registers, memory and kernel state). Snapshots and checkpoints then fall inside
    /// computations that make no system call.
    pub fn kick_every(&mut self, period: std::time::Duration) {
        self.kicker = Kicker::start(period);
    }

    /// Runs the guest natively until it ends. Syscalls, signals and `rdtsc` are executed by
    /// the interpreter, one instruction each.
    pub fn run(&mut self, m: &mut Machine) -> Result<StopReason, String> {
        self.run_until(m, None)
    }

    /// Like `run`, but returns `Limit` at the first VM exit after `deadline` (kicks make
    /// them frequent: see `kick_every`).
    pub fn run_until(
        &mut self,
        m: &mut Machine,
        deadline: Option<std::time::Instant>,
    ) -> Result<StopReason, String> {
        if let Some(s) = &m.ended {
            return Ok(s.clone());
        }
        self.first_run.get_or_insert_with(std::time::Instant::now);
        if self.interrupted {
            return Err("the VM was interrupted in the middle of a native stretch".into());
        }
        loop {
            if self.stopping() || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(StopReason::Limit);
            }
            self.push(m)?;
            let start = m.snapshot();
            let ev = self.enter(m)?;
            if let Event::Interrupted = ev {
                // Where in the stretch it stopped is unknown (no counters): the run ends at
                // the start of the stretch, and the VM's frames no longer match the engine.
                m.restore(&start);
                self.interrupted = true;
                return Ok(StopReason::Limit);
            }
            // As they were when the stretch ended: pages mapped during it (on first touch)
            // were never executed natively before they were mapped.
            let interp_pages = self.interp_pages.clone();
            let mut trap_sites = self.trap_sites.clone();
            self.pull(m, &ev)?;
            let at_site = std::mem::take(&mut self.burst_pending);
            if at_site {
                // The replay pauses at the site, as the VM did.
                Arc::make_mut(&mut trap_sites).insert(m.cpu.rip);
            }
            // Exits at patched sites that must leave the VM count as well, and so do entries
            // into code that must be interpreted and syscalls; a burst may start at any.
            let burst = at_site
                || match ev {
                    Event::Exception {
                        interpret: false, ..
                    } => {
                        let fast = self.wants_burst(m.cpu.rip);
                        std::mem::take(&mut self.burst_armed) || fast
                    }
                    Event::Exception {
                        interpret: true, ..
                    }
                    | Event::Syscall(_) => self.wants_burst(m.cpu.rip),
                    _ => false,
                };
            if self.kicker.is_some() {
                self.adapt_kick_period(matches!(ev, Event::Kicked { .. }));
            }
            let (syscall, interpret) = match ev {
                Event::Syscall(_) => (true, false),
                Event::Exception { interpret, .. } => (false, interpret),
                Event::Kicked { .. } => (false, false),
                Event::Interrupted => unreachable!("handled above"),
            };
            let host_flags_match = self.host_flags_match();
            let kicked = matches!(ev, Event::Kicked { .. }).then(|| {
                let ignore = if host_flags_match {
                    0
                } else {
                    crate::cpu::fl::ARITH
                };
                crate::machine::PauseMatch::of(m, ignore)
            });
            if kicked.is_some() {
                self.stats.kicks += 1;
            } else if syscall {
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
                trap_sites,
                after: 0,
                kicked,
                heavy: self.copied.len() >= HEAVY_PAGES
                    || (self.copied.len() >= HEAVY_MIN_PAGES
                        && self.copied.len() as u128 * 1000
                            >= HEAVY_PAGES_PER_MS as u128 * self.stretch_time.as_micros()),
            };
            match &mut m.unsettled {
                Some(u) => u.open = Some((stretch, took_over)),
                None => {
                    m.unsettled = Some(Box::new(Unsettled {
                        base: took_over,
                        stretches: Vec::new(),
                        in_flight: Default::default(),
                        open: Some((stretch, took_over)),
                    }))
                }
            }
            if self.cross_check {
                m.try_settle(Some(syscall))?;
            }
            // (Where an instruction runs into a page that must be interpreted, that page.)
            let entry_page = match m.cpu.rip >> 12 {
                pn if interpret
                    && !self.interp_pages.contains(&pn)
                    && self.interp_pages.contains(&(pn + 1)) =>
                {
                    pn + 1
                }
                pn => pn,
            };
            let interp_from = m.icount - m.native_settled;
            let stop = if m
                .unsettled
                .as_ref()
                .and_then(|u| u.open.as_ref())
                .is_some_and(|o| o.0.kicked.is_some())
            {
                // A kick: nothing to execute; the next stretch starts here.
                StopReason::Limit
            } else if burst {
                // Consecutive bursts grow (the site stays hot); one after a quiet spell starts
                // short again.
                let now = std::time::Instant::now();
                self.burst_len = if self
                    .last_burst
                    .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_millis(100))
                {
                    (self.burst_len * 2).min(BURST_MAX)
                } else {
                    BURST_MIN
                };
                self.stats.bursts += 1;
                if interpret {
                    *self.heat.entry(entry_page).or_default() += EXIT_HEAT;
                }
                // (Passes of the site it starts at are counted: see `wants_burst`.)
                let site = m.cpu.rip;
                m.site_visits = Some((site, 0));
                let stop = m.interpret(m.icount + self.burst_len);
                let passes = m.site_visits.take().map_or(0, |(_, n)| n).max(1);
                let end = std::time::Instant::now();
                let cost = end.duration_since(now) / passes.min(u32::MAX as u64) as u32;
                self.burst_cost.insert(site, (cost, 0));
                self.last_burst = if cost >= self.emu_gap {
                    // A loss: the next burst, if any, starts short again.
                    None
                } else {
                    Some(end)
                };
                stop
            } else if interpret {
                // Run the pages that must be interpreted, until execution leaves them or
                // decoding shows that one it is on can run natively after all (once running
                // it here has cost enough: see `heat`).
                *self.heat.entry(entry_page).or_default() += EXIT_HEAT;
                loop {
                    let from = (m.cpu.rip >> 12, m.icount);
                    let stop = m.interpret(m.icount + 256);
                    *self.heat.entry(from.0).or_default() += m.icount - from.1;
                    let pn = m.cpu.rip >> 12;
                    if stop != StopReason::Limit || !self.interp_pages.contains(&pn) {
                        break stop;
                    }
                    // (A loop on such a page must not keep Ctrl-C or a time slice waiting.)
                    if self.stopping() || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        break stop;
                    }
                    self.try_hot_native(m, pn)?;
                    if !self.interp_pages.contains(&pn) {
                        break stop;
                    }
                }
            } else {
                m.step_one()
            };
            if interpret {
                self.try_hot_native(m, entry_page)?;
            }
            self.stats.interpreted_insns += m.icount - m.native_settled - interp_from;
            self.start_settler(m);
            if let Some(u) = m.unsettled.as_mut() {
                let (mut s, took_over) = u.open.take().expect("open stretch");
                let after = m.icount - took_over;
                s.after = after;
                let sent = match &mut m.settler {
                    Some(t) => t.send(Box::new(s)),
                    None => Err(Box::new(s)),
                };
                match sent {
                    Ok(()) => u.in_flight.push_back(after),
                    Err(s) => u.stretches.push(*s),
                }
                // Each pending stretch keeps its start state alive: settle before they
                // add up (memory stays bounded; the replay is as long as the stretches).
                if u.stretches.len() + u.in_flight.len() >= MAX_PENDING_STRETCHES {
                    m.settle();
                    self.stats.early_settles += 1;
                }
            }
            match stop {
                StopReason::Limit => {}
                other => return Ok(other),
            }
        }
    }
}

impl NativeVm {
    /// Starts the background settler once the VM has run for `SETTLER_AFTER`, and hands it
    /// the stretches that ended before, oldest first.
    fn start_settler(&mut self, m: &mut Machine) {
        if self.settler_started
            || self.cross_check
            || m.settler.is_some()
            || self.first_run.is_none_or(|t| t.elapsed() < SETTLER_AFTER)
        {
            return;
        }
        self.settler_started = true;
        m.settler = Settler::spawn().map(Box::new);
        let (Some(t), Some(u)) = (m.settler.as_mut(), m.unsettled.as_mut()) else {
            return;
        };
        let mut kept = Vec::new();
        for s in std::mem::take(&mut u.stretches) {
            let after = s.after;
            if !kept.is_empty() {
                kept.push(s);
                continue;
            }
            match t.send(Box::new(s)) {
                Ok(()) => u.in_flight.push_back(after),
                Err(s) => kept.push(*s),
            }
        }
        u.stretches = kept;
    }
}

/// How long a VM runs before native stretches are replayed in the background (`Settler`).
/// A settler competes with the VM's thread on a busy host (a second core kept busy, and
/// every change to the process's mappings then interrupts it too), for lengths that a short
/// run rarely needs; the few stretches of a short run are replayed when asked for.
const SETTLER_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// True if a native stretch ends at `ins` (a replay pauses before it): a model-specific
/// instruction the VM does not execute in place (`emulate_inline`: `cpuid`).
pub(crate) fn ends_a_stretch(ins: &iced_x86::Instruction) -> bool {
    model_specific(ins) && ins.mnemonic() != iced_x86::Mnemonic::Cpuid && !rewritten_natively(ins)
}

/// True for a `tzcnt`/`lzcnt` encoding (F3 0F BC/BD) that runs natively rewritten as what
/// the model, which has neither BMI1 nor LZCNT, executes: `bsf`/`bsr` (see `model_prefix`).
/// GCC emits `rep bsf` for `__builtin_ctz` in generic code, often in hot loops; as a site
/// it would leave the VM on every pass.
pub(crate) fn rewritten_natively(ins: &iced_x86::Instruction) -> bool {
    use iced_x86::{EncodingKind, Mnemonic as M, Register};
    matches!(ins.mnemonic(), M::Tzcnt | M::Lzcnt)
        && ins.encoding() == EncodingKind::Legacy
        && ins.segment_prefix() == Register::None
        && !ins.has_lock_prefix()
}

/// Where the F3 prefix of `ins` (`rewritten_natively`, starting at `bytes`) is, if its
/// prefixes are only 66, 67 and that one F3, then REX or the 0F escape: replaced by a CS
/// override (2E, ignored in 64-bit mode), the host decodes the same bytes as `bsf`/`bsr`,
/// as the model does. (Those set their undefined flags alike on the CPUs the probe and the
/// undefined-flags test know; a zero source leaves the destination as it was.)
fn model_prefix(ins: &iced_x86::Instruction, bytes: &[u8]) -> Option<usize> {
    let mut f3 = None;
    for (k, &b) in bytes.iter().enumerate().take(ins.len()) {
        match b {
            0xf3 if f3.is_none() => f3 = Some(k),
            0x66 | 0x67 => {}
            0x0f | 0x40..=0x4f => return f3,
            _ => return None,
        }
    }
    None
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
            // x87 transcendentals: hardware results differ between CPUs in the last bits.
            | M::Fsin
            | M::Fcos
            | M::Fsincos
            | M::Fptan
            | M::Fpatan
            | M::F2xm1
            | M::Fyl2x
            | M::Fyl2xp1
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

/// Where the first instruction on code page `pn` begins (after the tail of one from the
/// page before), if that can be known. It is known at a page boundary that an instruction
/// the interpreter executed crosses or reaches, and is 0 after a page that is not
/// executable; from the nearest such boundary or instruction the interpreter executed on an
/// earlier page, a linear sweep (as `classify_page` sweeps) carries it to `pn`.
/// `known` holds the phases found before (kept while code does not change) and gets the
/// ones found now.
fn lead_phase(m: &Machine, pn: u64, known: &mut BTreeMap<u64, usize>) -> Option<usize> {
    const LOOK_BACK: u64 = 64;
    let exec = |q: u64| {
        m.mem
            .vma_at(q << 12)
            .is_some_and(|(_, v)| v.prot & PROT_EXEC != 0)
    };
    // (page, offset of an instruction start on it)
    let mut q = pn;
    let (mut page, mut off) = loop {
        if let Some(&p) = known.get(&q) {
            break (q, p);
        }
        if let Some(end) = m.straddle_end_on(q) {
            break (q, (end - (q << 12)) as usize);
        }
        let prev = q.checked_sub(1)?;
        if !exec(prev) {
            break (q, 0);
        }
        if let Some(a) = m.block_starts_on(prev).into_iter().max() {
            break (prev, (a - (prev << 12)) as usize);
        }
        if pn - prev >= LOOK_BACK {
            return None;
        }
        q = prev;
    };
    let mut bytes = vec![0u8; PAGE_SIZE + 15];
    while page < pn {
        bytes[..PAGE_SIZE].copy_from_slice(m.mem.pages.get(page)?.data());
        bytes[PAGE_SIZE..].copy_from_slice(&m.mem.pages.get(page + 1)?.data()[..15]);
        off = tail_phase(&bytes, page << 12, off)?;
        page += 1;
        known.insert(page, off);
    }
    Some(off)
}

/// Where decoding goes on at `next`, just after `ins`: past zero padding (up to `limit`, or
/// an offset `known` says an instruction starts at) if `ins` is a return or a jump, after
/// which compilers pad between functions (`00 00` would decode, at the wrong phase).
fn past_padding(
    bytes: &[u8],
    ins: &iced_x86::Instruction,
    mut next: usize,
    limit: usize,
    known: impl Fn(usize) -> bool,
) -> usize {
    use iced_x86::FlowControl;
    if matches!(
        ins.flow_control(),
        FlowControl::Return | FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
    ) {
        while next < limit && bytes[next] == 0 && !known(next) {
            next += 1;
        }
    }
    next
}

/// Decodes `bytes` (a page and the first 15 bytes of the next, at `base`) linearly from
/// offset `from`, skipping zero padding after returns and jumps, up to the end of the page:
/// where the first instruction of the next page begins. `None` if a byte does not decode or
/// padding runs to the end.
fn tail_phase(bytes: &[u8], base: u64, from: usize) -> Option<usize> {
    use iced_x86::{Decoder, DecoderOptions};
    let mut d = Decoder::with_ip(64, bytes, base, DecoderOptions::NONE);
    let mut off = from;
    while off < PAGE_SIZE {
        d.set_position(off).ok()?;
        d.set_ip(base + off as u64);
        let ins = d.decode();
        if ins.is_invalid() {
            return None;
        }
        off += ins.len();
        if off >= PAGE_SIZE {
            return Some(off - PAGE_SIZE);
        }
        let next = past_padding(bytes, &ins, off, PAGE_SIZE, |_| false);
        if next > off && next == PAGE_SIZE {
            return None;
        }
        off = next;
    }
    Some(off - PAGE_SIZE)
}

/// Disassembles the code page at `base` (`bytes` may run up to 15 bytes into the next page):
/// from `seeds`, instructions the interpreter executed there, it follows direct branches
/// within the page and sweeps linearly onwards (also past returns and jumps, into the next
/// function as compilers lay them out); the bytes before the first known instruction are
/// decoded from `lead` (where it is known: see `lead_phase`), else from whichever of the
/// first 16 offsets lands exactly on it. Succeeds only if
/// every candidate byte pattern then lies inside a decoded instruction or starts one, and no
/// two decodings overlap (except a branch into the middle of a prefixed instruction, which
/// decodes to the same instruction without the prefix); returns the offsets of the
/// model-specific instructions found (with `divergent`, also those whose host-specific
/// undefined flags might be observed: see `live_divergent`), or why the page cannot be
/// classified.
fn classify_page(
    bytes: &[u8],
    base: u64,
    seeds: &[u64],
    divergent: Option<&mut dyn Beyond>,
    lead: impl FnOnce() -> Option<usize>,
) -> Result<Vec<u16>, String> {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};
    if bytes.len() < PAGE_SIZE || seeds.is_empty() {
        return Err("no seeds".into());
    }
    // One decoder, repositioned (making one per instruction cost more than decoding).
    let decoder = std::cell::RefCell::new(Decoder::with_ip(64, bytes, base, DecoderOptions::NONE));
    let decode = |off: usize| -> Option<Instruction> {
        let mut d = decoder.borrow_mut();
        d.set_position(off).ok()?;
        d.set_ip(base + off as u64);
        let ins = d.decode();
        (!ins.is_invalid()).then_some(ins)
    };
    let mut start = vec![false; PAGE_SIZE];
    let mut inside = vec![false; PAGE_SIZE];
    // End of the instruction starting at each offset, and whether it is model-specific.
    let mut end_of = vec![0usize; PAGE_SIZE];
    let mut special = vec![false; PAGE_SIZE];
    let mut sites = Vec::new();
    // The instructions found, for the flag search (which would otherwise decode them again).
    let mut found: Vec<(usize, Instruction)> = Vec::new();
    let mut work: Vec<usize> = seeds.iter().map(|a| (a - base) as usize).collect();
    let in_page = |t: u64| (t >> 12 == base >> 12).then(|| (t - base) as usize);
    // Two decodings may overlap only as code like `je 1f; lock; 1: cmpxchg` does: one is
    // the other without some leading prefix bytes (same end), and neither is patched.
    let nested =
        |start: &[bool], end_of: &[usize], special: &[bool], off: usize, end: usize, sp: bool| {
            (off.saturating_sub(15)..off)
                .all(|s| !start[s] || end_of[s] <= off || (end_of[s] == end && !special[s] && !sp))
        };
    while let Some(off) = work.pop() {
        if off >= PAGE_SIZE || start[off] {
            continue;
        }
        let Some(ins) = decode(off) else {
            // An instruction that needs bytes past the executable end of this page faults
            // on fetch, natively as in the interpreter: those bytes never run here.
            if bytes.len() == PAGE_SIZE && needs_more_bytes(&bytes[off..]) {
                inside[off..].fill(true);
                continue;
            }
            return Err(format!("invalid at {off:#x}"));
        };
        let end = off + ins.len();
        let sp = model_specific(&ins);
        if inside[off] && !nested(&start, &end_of, &special, off, end, sp) {
            return Err(format!("overlap at {off:#x}"));
        }
        for k in off + 1..end.min(PAGE_SIZE) {
            if start[k] && (end_of[k] != end || special[k] || sp) {
                return Err(format!("overlap2 at {k:#x}"));
            }
            inside[k] = true;
        }
        start[off] = true;
        end_of[off] = end;
        special[off] = sp;
        if sp {
            sites.push(off as u16);
        }
        if divergent.is_some() {
            found.push((off, ins));
        }
        let next = past_padding(bytes, &ins, end, PAGE_SIZE, |k| start[k]);
        // (An instruction may end past the page: then nothing was skipped.)
        if next > end {
            inside[end..next].fill(true);
        }
        work.push(next);
        if matches!(
            ins.flow_control(),
            FlowControl::ConditionalBranch | FlowControl::Call | FlowControl::UnconditionalBranch
        ) {
            work.extend(in_page(ins.near_branch_target()));
        }
    }
    // The bytes before the first known instruction: the tail of an instruction from the
    // page before, then instructions decoded from the offset that lands exactly on it.
    let first = start.iter().position(|&b| b).unwrap_or(PAGE_SIZE);
    if first > 0 {
        // All of them may be that tail, if no decoding from inside it could be an
        // instruction we would have to find.
        let tail_only = first < 16
            && (0..first).all(|o| {
                decode(o).is_none_or(|i| {
                    !model_specific(&i) && (divergent.is_none() || divergent_flags(&i) == 0)
                })
            });
        let patchable =
            |i: &Instruction| model_specific(i) || (divergent.is_some() && divergent_flags(i) != 0);
        // For each offset before `first`: whether a linear decoding from it lands exactly on
        // `first` (`None` if not), and whether it passes an instruction that would be
        // patched. Decodings from nearby offsets merge after a few instructions, so each
        // offset is decoded once.
        let mut reaches: Vec<Option<Option<bool>>> = vec![None; first + 1];
        reaches[first] = Some(Some(false));
        // Where the linear decoding goes on after `ins` at `off`: past zero padding, as in
        // the pass above (`.init` ends so, 9 bytes before `.plt`).
        let after = |off: usize, ins: &Instruction| {
            past_padding(bytes, ins, off + ins.len(), first, |_| false)
        };
        let mut reach = |s0: usize| {
            let mut path = Vec::new();
            let mut off = s0;
            let mut r = loop {
                if off > first {
                    break None;
                }
                if let Some(r) = reaches[off] {
                    break r;
                }
                let Some(ins) = decode(off) else { break None };
                path.push((off, patchable(&ins)));
                off = after(off, &ins);
            };
            for (o, p) in path.into_iter().rev() {
                r = r.map(|q| q || p);
                reaches[o] = Some(r);
            }
            r
        };
        // (phase, whether its instructions hold one that would be patched)
        let syncs: Vec<(usize, bool)> = (0..16.min(first))
            .chain(tail_only.then_some(first))
            .filter_map(|s0| reach(s0).map(|p| (s0, p)))
            .collect();
        // The real phase is one of those that sync. If none of them holds an instruction
        // that would be patched, which one it is does not matter. Else it must be known
        // (a wrong phase would patch a byte in the middle of a real instruction).
        let s0 = if !syncs.is_empty() && !syncs.iter().any(|&(_, p)| p) {
            syncs[0].0
        } else {
            match lead() {
                Some(p) if p > first => return Err(format!("lead {p:#x} runs past {first:#x}")),
                Some(p) if reach(p).is_some() => p,
                Some(_) => return Err(format!("no lead sync to {first:#x}")),
                None if syncs.len() > 1 => return Err(format!("ambiguous lead before {first:#x}")),
                None => {
                    syncs
                        .first()
                        .ok_or(format!("no lead sync to {first:#x}"))?
                        .0
                }
            }
        };
        let mut lead = Vec::new();
        let mut off = s0;
        while off < first {
            let ins = decode(off).expect("decoded before");
            lead.push((off, ins));
            let next = after(off, &ins);
            // (Padding skipped after it.)
            inside[off + ins.len()..next].fill(true);
            off = next;
        }
        inside[..s0].fill(true);
        for (off, ins) in lead {
            start[off] = true;
            inside[off + 1..off + ins.len()].fill(true);
            if model_specific(&ins) {
                sites.push(off as u16);
            }
            if divergent.is_some() {
                found.push((off, ins));
            }
        }
    }
    // Every byte must be accounted for: what was not decoded could hold anything.
    if let Some(c) = (0..PAGE_SIZE).find(|&c| !start[c] && !inside[c]) {
        return Err(format!("uncovered {c:#x}"));
    }
    if let Some(beyond) = divergent {
        found.sort_unstable_by_key(|&(o, _)| o);
        let insns: BTreeMap<usize, Instruction> = found.into_iter().collect();
        sites.extend(live_divergent(&insns, base, beyond));
    }
    sites.sort_unstable();
    sites.dedup();
    Ok(sites)
}

/// Whether this CPU sets the flags that shifts, rotates, multiplies and divides leave
/// undefined exactly as the interpreter's model does (AMD Zen does): then those
/// instructions may run natively anywhere. Probed once per process by executing each form
/// on pseudo-random operands natively and in the interpreter.
pub fn host_flags_match_model() -> bool {
    static MATCH: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MATCH.get_or_init(|| probe_undefined_flags().unwrap_or(false))
}

/// The instruction forms the probe compares: (bytes, operand size in bits, kind). They
/// work on RAX (destination), RBX (source or divisor) and CL (count).
fn probe_forms() -> Vec<(Vec<u8>, u32, u8)> {
    let mut v = Vec::new();
    for (bits, pre) in [
        (8u32, &[][..]),
        (16, &[0x66][..]),
        (32, &[][..]),
        (64, &[0x48][..]),
    ] {
        let with = |op: &[u8]| [pre, op].concat();
        let (grp2, grp2i, grp2one, grp3) = if bits == 8 {
            (0xd2u8, 0xc0u8, 0xd0u8, 0xf6u8)
        } else {
            (0xd3, 0xc1, 0xd1, 0xf7)
        };
        for ext in [0u8, 1, 2, 3, 4, 5, 7] {
            v.push((with(&[grp2, 0xc0 | ext << 3]), bits, 0));
            v.push((with(&[grp2one, 0xc0 | ext << 3]), bits, 0));
            for k in [2u8, 3, 7, 9, 17, 31] {
                v.push((with(&[grp2i, 0xc0 | ext << 3, k]), bits, 0));
            }
        }
        // mul, imul (one operand): rbx; div, idiv: rbx (kind 1: set up a safe dividend).
        v.push((with(&[grp3, 0xe3]), bits, 0));
        v.push((with(&[grp3, 0xeb]), bits, 0));
        v.push((with(&[grp3, 0xf3]), bits, 1));
        v.push((with(&[grp3, 0xfb]), bits, 2));
        if bits > 8 {
            v.push((with(&[0x0f, 0xaf, 0xc3]), bits, 0)); // imul rax, rbx
            v.push((with(&[0x6b, 0xc3, 0xf9]), bits, 0)); // imul rax, rbx, -7
                                                          // shld/shrd rax, rbx, cl (16-bit counts above 16 give undefined results).
            let k = if bits == 16 { 3 } else { 0 };
            v.push((with(&[0x0f, 0xa5, 0xd8]), bits, k));
            v.push((with(&[0x0f, 0xad, 0xd8]), bits, k));
        }
    }
    v
}

/// Runs every probe form natively and in the interpreter; `Some(true)` if all agree.
fn probe_undefined_flags() -> Option<bool> {
    // Native: load RAX/RBX/RCX/RDX and RFLAGS from [rdi], run the form, store them back.
    const HEAD: &[u8] = &[
        0x53, 0x48, 0x8b, 0x07, 0x48, 0x8b, 0x5f, 0x08, 0x48, 0x8b, 0x4f, 0x10, 0x48, 0x8b, 0x57,
        0x18, 0xff, 0x77, 0x20, 0x9d,
    ];
    const TAIL: &[u8] = &[
        0x9c, 0x8f, 0x47, 0x20, 0x48, 0x89, 0x07, 0x48, 0x89, 0x5f, 0x08, 0x48, 0x89, 0x4f, 0x10,
        0x48, 0x89, 0x57, 0x18, 0x5b, 0xc3,
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Every form as a function of its own in one executable mapping (64 bytes apart), and
    // the bare forms 16 bytes apart in one interpreter's code (a machine per form, or a
    // mapping per form, cost milliseconds at every start of the backend).
    const SLOT: usize = 64;
    const BARE: usize = 16;
    let forms = probe_forms();
    let len = (forms.len() * SLOT).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut funcs = vec![0xccu8; len];
    let mut bare = vec![0x90u8; forms.len() * BARE];
    for (i, (form, _, _)) in forms.iter().enumerate() {
        let code = [HEAD, form, TAIL].concat();
        debug_assert!(code.len() <= SLOT && form.len() <= BARE);
        funcs[i * SLOT..i * SLOT + code.len()].copy_from_slice(&code);
        bare[i * BARE..i * BARE + form.len()].copy_from_slice(form);
    }
    // SAFETY: a private anonymous mapping, filled, made executable and unmapped here; each
    // function it holds saves and restores RBX, touches only [rdi..rdi+40) and returns.
    let native = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        std::ptr::copy_nonoverlapping(funcs.as_ptr(), p as *mut u8, len);
        if libc::mprotect(p, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            libc::munmap(p, len);
            return None;
        }
        p as *mut u8
    };
    let mut m = Machine::bare(&bare, Box::new(NoHost));
    let mut agree = true;
    for (i, (_, bits, kind)) in forms.into_iter().enumerate() {
        // SAFETY: `native + i * SLOT` holds a complete function with the C calling
        // convention (written above).
        let f: extern "C" fn(*mut u64) = unsafe { std::mem::transmute(native.add(i * SLOT)) };
        for _ in 0..64 {
            let mask = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
            let (mut a, mut b, c) = (next(), next(), next() & 0xff);
            if next() & 1 == 0 {
                a &= 0xff;
            }
            if next() & 1 == 0 {
                b >>= next() % 64;
            }
            let mut d = next();
            let c = if kind == 3 { c % 17 } else { c };
            if kind == 1 || kind == 2 {
                // A dividend whose quotient fits: the high half is zero (div) or the sign
                // extension of the low half (idiv), and the divisor is odd and not -1.
                b = (b | 1) & mask;
                if b == mask || b == 1 {
                    b = 3;
                }
                let low_mask = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
                let low = a & low_mask;
                let neg = kind == 2 && (low >> (bits - 1)) & 1 == 1;
                if bits == 8 {
                    a = (a & !0xffff) | low | if neg { 0xff00 } else { 0 };
                } else {
                    d = (d & !low_mask) | if neg { low_mask } else { 0 };
                }
            }
            let fin = (next() & STATUS_FLAGS) | 0x202;
            let mut st = [a, b, c, d, fin];
            f(st.as_mut_ptr());
            m.cpu.gpr[0] = a;
            m.cpu.gpr[3] = b;
            m.cpu.gpr[1] = c;
            m.cpu.gpr[2] = d;
            m.cpu.set_rflags(fin);
            m.cpu.rip = 0x400000 + (i * BARE) as u64;
            m.icount = 0;
            m.ended = None;
            let _ = m.run(1);
            let got = [
                m.cpu.gpr[0],
                m.cpu.gpr[3],
                m.cpu.gpr[1],
                m.cpu.gpr[2],
                m.cpu.rflags() & STATUS_FLAGS,
            ];
            let want = [st[0], st[1], st[2], st[3], st[4] & STATUS_FLAGS];
            if m.icount != 1 || got != want {
                agree = false;
                break;
            }
        }
        if !agree {
            break;
        }
    }
    // SAFETY: unmaps the mapping made above; nothing refers to it any more.
    unsafe { libc::munmap(native.cast(), len) };
    Some(agree)
}

/// Native stretches whose lengths may stay unknown at once (see `NativeVm::run`).
const MAX_PENDING_STRETCHES: usize = 1024;

/// CF, PF, AF, ZF, SF and OF in RFLAGS.
const STATUS_FLAGS: u64 = 0x8d5;

/// True if a patched `ins` can be executed for the VM in place (`NativeVm::emulate`): it
/// touches registers only, cannot fault and either leaves flags undefined or is `cpuid`
/// (the model's answers, a function of EAX and ECX).
fn emulate_inline(ins: &iced_x86::Instruction) -> bool {
    use iced_x86::{Mnemonic as M, OpKind};
    if ins.mnemonic() == M::Cpuid {
        return true;
    }
    divergent_flags(ins) != 0
        && !matches!(ins.mnemonic(), M::Div | M::Idiv)
        && (0..ins.op_count()).all(|i| {
            matches!(
                ins.op_kind(i),
                OpKind::Register
                    | OpKind::Immediate8
                    | OpKind::Immediate8_2nd
                    | OpKind::Immediate32
                    | OpKind::Immediate8to32
                    | OpKind::Immediate8to64
                    | OpKind::Immediate32to64
                    | OpKind::Immediate16
                    | OpKind::Immediate8to16
            )
        })
}

/// The status flags that `ins` leaves undefined and that real CPUs set differently (Intel
/// and AMD disagree on shifts, rotates, multiplies and divides; both clear AF after logic
/// operations and agree on `bsf`/`bsr`/`bt`, as the undefined-flags test shows).
pub(crate) fn divergent_flags(ins: &iced_x86::Instruction) -> u32 {
    use iced_x86::Mnemonic as M;
    if is_shift(ins) || matches!(ins.mnemonic(), M::Mul | M::Imul | M::Div | M::Idiv) {
        ins.rflags_undefined()
    } else {
        0
    }
}

/// Shifts and rotates, double shifts included.
fn is_shift(ins: &iced_x86::Instruction) -> bool {
    use iced_x86::Mnemonic as M;
    matches!(
        ins.mnemonic(),
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shld | M::Shrd
    )
}

/// The flags `ins` certainly overwrites, whatever its operands (a shift by CL or by a count
/// that masks to 0 leaves the flags alone; a `rep` string instruction may run 0 times).
pub(crate) fn flags_killed(ins: &iced_x86::Instruction) -> u32 {
    use iced_x86::OpKind;
    if is_shift(ins) {
        let count = (0..ins.op_count())
            .rev()
            .find_map(|i| match ins.op_kind(i) {
                OpKind::Immediate8 => Some(ins.immediate8() as u32),
                OpKind::Immediate8_2nd => Some(ins.immediate8_2nd() as u32),
                _ => None,
            });
        let wide = if ins.op0_kind() == OpKind::Register {
            ins.op0_register().size() == 8
        } else {
            ins.memory_size().size() == 8
        };
        let mask = if wide { 63 } else { 31 };
        // `shl r, 1` has no immediate operand in iced (Shl_rm64_1): its count is 1.
        let count = if ins.op_count() == 1 { Some(1) } else { count };
        return match count {
            Some(c) if c & mask != 0 => ins.rflags_modified(),
            _ => 0,
        };
    }
    if ins.has_rep_prefix() || ins.has_repne_prefix() {
        return 0;
    }
    ins.rflags_modified()
}

/// Code beyond the page being classified, as the search for observable undefined flags
/// (`live_divergent`) may follow it: into a callee on another page, through a jump slot.
pub(crate) trait Beyond {
    /// The instruction at `va` (off the page) if it runs natively as decoded and may be
    /// relied upon until the page is classified again; `None` where execution would leave
    /// the VM or could change unseen.
    fn insn(&mut self, va: u64) -> Option<iced_x86::Instruction>;
    /// The jump target held by the 8 bytes at `va`, under the same conditions.
    fn slot(&mut self, va: u64) -> Option<u64>;
    /// Whether the first `len` bytes of the code page at `next`, the end of an instruction
    /// that starts on the page being classified, run natively as decoded and may be relied
    /// upon under the same conditions.
    fn straddle(&mut self, next: u64, len: usize) -> bool;
}

/// What a classification may follow beyond its page (see `Beyond`): code on pages that run
/// natively, and jump slots on pages that cannot change unseen (not writable, or guarded).
/// Collects what it relied upon (see `NativeVm::deps`).
struct Followed<'a> {
    m: &'a Machine,
    patched: &'a BTreeMap<u64, Vec<u16>>,
    forced: &'a BTreeSet<u64>,
    frame_of: &'a BTreeMap<u64, u64>,
    guard_hits: &'a BTreeMap<u64, u32>,
    deps: BTreeSet<u64>,
    guards: BTreeSet<u64>,
    /// Code pages not running natively where the search stopped, and where it entered them.
    waits: BTreeMap<u64, u64>,
}

impl Beyond for Followed<'_> {
    fn insn(&mut self, va: u64) -> Option<iced_x86::Instruction> {
        let pn = va >> 12;
        let prot = self.m.mem.vma_at(va).map_or(0, |(_, v)| v.prot);
        if prot & PROT_EXEC == 0 || prot & PROT_WRITE != 0 || self.forced.contains(&pn) {
            return None;
        }
        let Some(sites) = self.patched.get(&pn) else {
            // Not classified yet (perhaps not hot yet).
            self.waits.entry(pn).or_insert(va);
            return None;
        };
        let page = self.m.mem.pages.get(pn)?;
        let off = (va & 0xfff) as usize;
        // (An instruction that runs into the next page does not decode from these bytes.)
        let ins = iced_x86::Decoder::with_ip(64, &page.data()[off..], va, 0).decode();
        let end = off + ins.len();
        if ins.is_invalid() || sites.iter().any(|&s| (off..end).contains(&(s as usize))) {
            return None;
        }
        self.deps.insert(pn);
        Some(ins)
    }

    fn slot(&mut self, va: u64) -> Option<u64> {
        let (pn, off) = (va >> 12, (va & 0xfff) as usize);
        let prot = self.m.mem.vma_at(va).map_or(0, |(_, v)| v.prot);
        if off > PAGE_SIZE - 8 || prot & PROT_READ == 0 {
            return None;
        }
        // (A page holding data is never part of a block, which is mapped as a whole.)
        let page = self.m.mem.pages.get(pn)?;
        if prot & PROT_WRITE != 0 {
            if self
                .guard_hits
                .get(&pn)
                .is_some_and(|&n| n >= MAX_GUARD_HITS)
                || self.frame_of.get(&pn).is_some_and(|&f| f >= BLOCK_FRAME0)
            {
                return None;
            }
            self.guards.insert(pn);
        }
        self.deps.insert(pn);
        Some(u64::from_le_bytes(
            page.data()[off..off + 8].try_into().expect("8 bytes"),
        ))
    }

    fn straddle(&mut self, next: u64, len: usize) -> bool {
        let pn = next >> 12;
        let prot = self.m.mem.vma_at(next).map_or(0, |(_, v)| v.prot);
        if prot & PROT_EXEC == 0 || prot & PROT_WRITE != 0 || self.forced.contains(&pn) {
            return false;
        }
        let Some(sites) = self.patched.get(&pn) else {
            // Classified again once that page is (at the instruction after this one).
            self.waits.entry(pn).or_insert(next + len as u64);
            return false;
        };
        if sites.iter().any(|&s| (s as usize) < len) {
            return false;
        }
        self.deps.insert(pn);
        true
    }
}

/// Writes to a guarded page after which its jump slots are no longer followed.
const MAX_GUARD_HITS: u32 = 4;

/// Times a page is classified again before its search stays on the page.
const MAX_REDOS: u32 = 16;

/// Nothing beyond the page may be followed.
pub(crate) struct Nowhere;

impl Beyond for Nowhere {
    fn insn(&mut self, _va: u64) -> Option<iced_x86::Instruction> {
        None
    }
    fn slot(&mut self, _va: u64) -> Option<u64> {
        None
    }
    fn straddle(&mut self, _next: u64, _len: usize) -> bool {
        false
    }
}

/// Calls a walk for live flags follows, one inside another.
const MAX_CALL_DEPTH: usize = 2;

/// Offsets of the instructions on a page whose host-specific undefined flags (see
/// `divergent_flags`) might be seen: read by a later instruction, or present when execution
/// leaves the VM (syscalls, instructions that are interpreted, code that does not run
/// natively, returns to unknown callers, and jumps and calls that `beyond` does not let the
/// walk follow). These are interpreted, so every flag the guest can observe has the model's
/// value on any host; where a later instruction overwrites the flags first, the native
/// instruction runs as is.
fn live_divergent(
    insns: &BTreeMap<usize, iced_x86::Instruction>,
    base: u64,
    beyond: &mut dyn Beyond,
) -> Vec<u16> {
    use iced_x86::{FlowControl, Mnemonic as M};
    let candidates: Vec<usize> = insns
        .iter()
        .filter(|(_, i)| divergent_flags(i) != 0)
        .map(|(&o, _)| o)
        .collect();
    let mut live = BTreeSet::new();
    let on_page = |va: u64| (va >> 12 == base >> 12).then(|| (va - base) as usize);
    // Is a divergent flag set at `end`, pending `mask`, observable? Calls are followed (the
    // SysV ABI passes nothing in flags, but the callee might leave the VM before it writes
    // them); their returns lead back to the call's successor.
    let mut observable = |live: &BTreeSet<usize>, end: u64, mask: u32| -> bool {
        let mut work = vec![(end, mask, Vec::<u64>::new())];
        let mut seen = BTreeSet::new();
        let mut budget = 512;
        while let Some((va, pending, rets)) = work.pop() {
            if !seen.insert((va, pending, rets.clone())) {
                continue;
            }
            budget -= 1;
            if budget == 0 {
                return true;
            }
            let ins = match on_page(va) {
                // (An instruction that runs into the next page relies on its bytes there.)
                Some(off) => match insns.get(&off) {
                    Some(i)
                        if !live.contains(&off)
                            && (off + i.len() <= PAGE_SIZE
                                || beyond.straddle(
                                    (base & !0xfff) + PAGE_SIZE as u64,
                                    off + i.len() - PAGE_SIZE,
                                )) =>
                    {
                        *i
                    }
                    _ => return true,
                },
                None => match beyond.insn(va) {
                    Some(i) => i,
                    None => return true,
                },
            };
            // (A `rep` string instruction may leave the VM in its middle: see `guarded`.)
            if ins.rflags_read() & pending != 0
                || model_specific(&ins)
                || matches!(ins.mnemonic(), M::Syscall | M::Div | M::Idiv)
                || NativeVm::rep_string(&ins)
            {
                return true;
            }
            let pending = pending & !flags_killed(&ins);
            if pending == 0 {
                continue;
            }
            let end = ins.next_ip();
            // Where a direct branch or a jump slot (`jmp`/`call [rip + disp]`) leads.
            let target = match ins.flow_control() {
                FlowControl::IndirectBranch | FlowControl::IndirectCall => {
                    if !ins.is_ip_rel_memory_operand() || ins.memory_size().size() != 8 {
                        return true;
                    }
                    match beyond.slot(ins.ip_rel_memory_address()) {
                        Some(t) => t,
                        None => return true,
                    }
                }
                _ => ins.near_branch_target(),
            };
            match ins.flow_control() {
                FlowControl::Next => work.push((end, pending, rets)),
                FlowControl::UnconditionalBranch | FlowControl::IndirectBranch => {
                    work.push((target, pending, rets))
                }
                FlowControl::ConditionalBranch => {
                    work.push((target, pending, rets.clone()));
                    work.push((end, pending, rets));
                }
                FlowControl::Call | FlowControl::IndirectCall if rets.len() < MAX_CALL_DEPTH => {
                    let mut inner = rets;
                    inner.push(end);
                    work.push((target, pending, inner))
                }
                FlowControl::Return if !rets.is_empty() && ins.op_count() == 0 => {
                    let mut outer = rets;
                    let back = outer.pop().expect("checked");
                    work.push((back, pending, outer))
                }
                _ => return true,
            }
        }
        false
    };
    loop {
        let mut changed = false;
        for &o in &candidates {
            if live.contains(&o) {
                continue;
            }
            let ins = &insns[&o];
            if observable(&live, base + (o + ins.len()) as u64, divergent_flags(ins)) {
                live.insert(o);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    live.into_iter().map(|o| o as u16).collect()
}

/// True if `bytes` start an instruction that is cut off by their end.
fn needs_more_bytes(bytes: &[u8]) -> bool {
    let mut d = iced_x86::Decoder::new(64, bytes, iced_x86::DecoderOptions::NONE);
    let _ = d.decode();
    d.last_error() == iced_x86::DecoderError::NoMoreBytes
}

/// The code at `RESUME_INVLPG`: `invlpg` of each address in `INVLPG_LIST`, then `iretq`
/// with the user's registers as they were.
fn resume_invlpg() -> Vec<u8> {
    // push rax; push rcx; push rdx; lea rdx, [rip + INVLPG_LIST]; mov rcx, [rdx]
    let mut c = vec![0x50, 0x51, 0x52, 0x48, 0x8d, 0x15];
    let after = RESUME_INVLPG + c.len() as u64 + 4;
    c.extend_from_slice(&((INVLPG_LIST as i64 - after as i64) as i32).to_le_bytes());
    c.extend_from_slice(&[0x48, 0x8b, 0x0a]);
    // top: test rcx, rcx; jz done; mov rax, [rdx + 8*rcx]; invlpg [rax]; dec rcx; jmp top
    let top = c.len();
    c.extend_from_slice(&[0x48, 0x85, 0xc9, 0x74, 0x0c]);
    c.extend_from_slice(&[
        0x48, 0x8b, 0x04, 0xca, 0x0f, 0x01, 0x38, 0x48, 0xff, 0xc9, 0xeb,
    ]);
    c.push((top as i64 - (c.len() as i64 + 1)) as u8);
    // done: pop rdx; pop rcx; pop rax; iretq
    c.extend_from_slice(&[0x5a, 0x59, 0x58, 0x48, 0xcf]);
    c
}

/// The low half of a 64-bit TSS descriptor (busy type, 104-byte limit).
fn tss_low(base: u64) -> u64 {
    103 | ((base & 0xff_ffff) << 16) | (0x8b << 40) | (((base >> 24) & 0xff) << 56)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x40_0000;

    /// A page of `int3` padding with `code` at offset 0x100.
    fn page(code: &[u8]) -> Vec<u8> {
        let mut p = vec![0xcc; PAGE_SIZE + 15];
        p[0x100..0x100 + code.len()].copy_from_slice(code);
        p
    }

    #[test]
    fn classify_finds_model_specific_sites() {
        // xor eax,eax; cpuid; rdtsc; ret
        let p = page(&[0x31, 0xc0, 0x0f, 0xa2, 0x0f, 0x31, 0xc3]);
        let sites = classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None)
            .expect("classified");
        assert_eq!(sites, vec![0x102, 0x104]);
    }

    /// A page whose first bytes read `cpuid; nop ...` from offset 0 and `mov [moffs64], al`
    /// from offset 1, with `ret` at 0x100.
    fn cpuid_or_moffs_lead() -> Vec<u8> {
        let mut p = page(&[0xc3]);
        p[0] = 0x0f;
        p[1] = 0xa2;
        p[2..10].fill(0x90);
        p
    }

    #[test]
    fn an_ambiguous_lead_is_not_patched() {
        // The page starts with the tail of an instruction from the page before. From offset
        // 0 the bytes read `cpuid; nop ...`, from offset 1 `mov [moffs64], al`: which one is
        // real is unknown, and patching offset 0 could break a real instruction (python3.11
        // crashed so, natively). The page stays interpreted.
        let p = cpuid_or_moffs_lead();
        assert!(classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None).is_err());
        assert!(classify_page(&p, BASE, &[BASE + 0x100], None, || None).is_err());
    }

    #[test]
    fn a_known_lead_decides_what_is_patched() {
        // As above, with the phase known (from the page before): from offset 0 the cpuid is
        // real and patched; from offset 1 there is no cpuid.
        let mut p = cpuid_or_moffs_lead();
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], None, || Some(0)),
            Ok(vec![0])
        );
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], None, || Some(1)),
            Ok(vec![])
        );
        // A phase that does not lead to the first known instruction is refused.
        p[10] = 0x0f;
        p[11] = 0x0b;
        p[12] = 0x0f;
        assert!(classify_page(&p, BASE, &[BASE + 11], None, || Some(1)).is_err());
    }

    #[test]
    fn the_phase_is_asked_for_only_where_it_decides_a_patch() {
        // From offset 0 or 1 the lead reads nops (or a one-byte tail and nops): nothing to
        // patch whichever is real, so no sweep is needed.
        let mut p = page(&[0xc3]);
        p[..0x100].fill(0x90);
        let asked = std::cell::Cell::new(false);
        let lead = || {
            asked.set(true);
            None
        };
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), lead),
            Ok(vec![])
        );
        assert!(!asked.get());
        // With a cpuid in one of the phases it is asked for.
        let p = cpuid_or_moffs_lead();
        let lead = || {
            asked.set(true);
            Some(0)
        };
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], None, lead),
            Ok(vec![0])
        );
        assert!(asked.get());
    }

    #[test]
    fn the_phase_of_the_next_page_comes_from_a_sweep() {
        let mut p = vec![0xccu8; PAGE_SIZE + 15];
        // mov eax, 1 at 0xffd runs 2 bytes into the next page.
        p[0xffd..0x1002].copy_from_slice(&[0xb8, 0x01, 0x00, 0x00, 0x00]);
        assert_eq!(tail_phase(&p, BASE, 0x800), Some(2));
        assert_eq!(tail_phase(&p, BASE, 0xffd), Some(2));
        // An instruction that ends at the page's end: the next page starts with one.
        p[0xffd..0x1000].copy_from_slice(&[0x48, 0x89, 0xc3]);
        assert_eq!(tail_phase(&p, BASE, 0xf00), Some(0));
        // ret, then zero padding to the end: unknown.
        p[0xf00] = 0xc3;
        p[0xf01..0x1000].fill(0);
        assert_eq!(tail_phase(&p, BASE, 0xf00), None);
        // Bytes that do not decode: unknown.
        p[0xf00] = 0x06;
        assert_eq!(tail_phase(&p, BASE, 0xf00), None);
    }

    #[test]
    fn the_lead_skips_zero_padding_after_a_return() {
        // The first page of a dynamically linked program's code, as Debian's linker lays it
        // out: `.init` (0x17 bytes, ending in `ret`), 9 bytes of zero padding, then `.plt` at
        // 0x20, where execution enters. From the known phase 0, the padding must be skipped
        // as after any return (decoded, `00 00` pairs run past 0x20).
        let mut p = vec![0xcc; PAGE_SIZE + 15];
        let init = [
            0x48, 0x83, 0xec, 0x08, 0x48, 0x8b, 0x05, 0xcd, 0x1f, 0x52, 0x00, 0x48, 0x85, 0xc0,
            0x74, 0x02, 0xff, 0xd0, 0x48, 0x83, 0xc4, 0x08, 0xc3,
        ];
        p[..init.len()].copy_from_slice(&init);
        p[init.len()..0x20].fill(0);
        // push [rip+x]; jmp [rip+y]; nop dword [rax]; then PLT entries (jmp [rip+z]; push 0;
        // jmp .plt) to the end of the page.
        let head = [
            0xff, 0x35, 0xca, 0x1f, 0x52, 0x00, 0xff, 0x25, 0xcc, 0x1f, 0x52, 0x00, 0x0f, 0x1f,
            0x40, 0x00,
        ];
        p[0x20..0x30].copy_from_slice(&head);
        let mut at = 0x30;
        while at + 16 <= PAGE_SIZE {
            let back = (0x20i64 - (at as i64 + 16)) as i32;
            let mut e = vec![0xff, 0x25, 0xca, 0x1f, 0x52, 0x00, 0x68, 0, 0, 0, 0, 0xe9];
            e.extend_from_slice(&back.to_le_bytes());
            p[at..at + 16].copy_from_slice(&e);
            at += 16;
        }
        let seeds = [BASE + 0x20, BASE + 0x30];
        assert_eq!(
            classify_page(&p, BASE, &seeds, Some(&mut Nowhere), || Some(0)),
            Ok(vec![])
        );
        assert_eq!(
            classify_page(&p, BASE, &seeds, None, || Some(0)),
            Ok(vec![])
        );
    }

    #[test]
    fn an_instruction_may_run_into_the_next_page() {
        // nop; nop; mov rbx,rax across the page end (its last byte on the next page).
        let mut p = vec![0xcc; PAGE_SIZE + 15];
        p[0xffd..0x1000].copy_from_slice(&[0x90, 0x90, 0x48]);
        p[0x1000..0x1002].copy_from_slice(&[0x89, 0xc3]);
        // (int3 padding before it, decoded from phase 0.)
        for divergent in [true, false] {
            let mut nowhere = Nowhere;
            let beyond: Option<&mut dyn Beyond> = divergent.then_some(&mut nowhere as _);
            assert_eq!(
                classify_page(&p, BASE, &[BASE + 0xffd], beyond, || Some(0)),
                Ok(vec![])
            );
        }
    }

    #[test]
    fn classify_accepts_branch_past_lock_prefix() {
        // je 1f; lock; 1: cmpxchg [rdi],ecx; ret
        let p = page(&[0x74, 0x01, 0xf0, 0x0f, 0xb1, 0x0f, 0xc3]);
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None),
            Ok(vec![])
        );
    }

    #[test]
    fn classify_rejects_overlapping_or_invalid_decodings() {
        // jmp into the middle of a cpuid: the two decodings disagree.
        let p = page(&[0xeb, 0x01, 0x0f, 0xa2, 0xc3]);
        assert!(classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None).is_err());
        // Bytes that do not decode cannot be vouched for.
        let p = page(&[0x90, 0x06, 0xc3]);
        assert!(classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None).is_err());
        assert!(classify_page(&page(&[0xc3]), BASE, &[], Some(&mut Nowhere), || None).is_err());
    }

    #[test]
    fn undefined_flags_are_interpreted_where_they_can_be_seen() {
        // imul rax,rbx; pushfq; ret: the flags are read (pushfq): interpreted.
        let p = page(&[0x48, 0x0f, 0xaf, 0xc3, 0x9c, 0xc3]);
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None),
            Ok(vec![0x100])
        );
        // Not with a host that agrees with the model.
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], None, || None),
            Ok(vec![])
        );
        // imul rax,rbx; add rax,1; ret: overwritten first, so it runs natively.
        let p = page(&[0x48, 0x0f, 0xaf, 0xc3, 0x48, 0x83, 0xc0, 0x01, 0xc3]);
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None),
            Ok(vec![])
        );
        // shr rax,cl; syscall: the kernel entry saves RFLAGS in R11.
        let p = page(&[0x48, 0xd3, 0xe8, 0x0f, 0x05, 0xc3]);
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None),
            Ok(vec![0x100])
        );
        // shl rax,3; shr rdx,cl; cmp rax,rdx; ret: a shift by CL may not write the flags,
        // but cmp overwrites them all before anyone looks.
        let p = page(&[
            0x48, 0xc1, 0xe0, 0x03, 0x48, 0xd3, 0xea, 0x48, 0x39, 0xd0, 0xc3,
        ]);
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None),
            Ok(vec![])
        );
        // sar rax,1; call f; ret; f: cmp rax,1; ret: the callee overwrites them first.
        let p = page(&[
            0x48, 0xd1, 0xf8, 0xe8, 0x01, 0x00, 0x00, 0x00, 0xc3, 0x48, 0x83, 0xf8, 0x01, 0xc3,
        ]);
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None),
            Ok(vec![])
        );
        // mul rbx; ret: the caller is unknown.
        let p = page(&[0x48, 0xf7, 0xe3, 0xc3]);
        assert_eq!(
            classify_page(&p, BASE, &[BASE + 0x100], Some(&mut Nowhere), || None),
            Ok(vec![0x100])
        );
    }

    /// Code and jump slots off the page being classified.
    #[derive(Default)]
    struct Elsewhere {
        code: BTreeMap<u64, Vec<u8>>,
        slots: BTreeMap<u64, u64>,
    }

    impl Beyond for Elsewhere {
        fn insn(&mut self, va: u64) -> Option<iced_x86::Instruction> {
            let (&at, bytes) = self.code.range(..=va).next_back()?;
            let ins =
                iced_x86::Decoder::with_ip(64, bytes.get((va - at) as usize..)?, va, 0).decode();
            (!ins.is_invalid()).then_some(ins)
        }
        fn slot(&mut self, va: u64) -> Option<u64> {
            self.slots.get(&va).copied()
        }
        fn straddle(&mut self, next: u64, len: usize) -> bool {
            self.code.get(&next).is_some_and(|b| b.len() >= len)
        }
    }

    #[test]
    fn undefined_flags_are_followed_beyond_the_page() {
        const F: u64 = 0x80_0000;
        let classify = |p: &[u8], beyond: &mut Elsewhere| {
            classify_page(p, BASE, &[BASE + 0x100], Some(beyond), || None)
        };
        let with = |code: &[u8]| Elsewhere {
            code: [(F, code.to_vec())].into(),
            slots: [(0x60_0000, F)].into(),
        };
        // imul rax,rbx; call F; ret
        let call = page(&[0x48, 0x0f, 0xaf, 0xc3, 0xe8, 0xf7, 0xfe, 0x3f, 0x00, 0xc3]);
        // F: cmp rax,1; ret: overwritten before anyone looks.
        assert_eq!(
            classify(&call, &mut with(&[0x48, 0x83, 0xf8, 0x01, 0xc3])),
            Ok(vec![])
        );
        // F: pushfq; ret: read.
        assert_eq!(classify(&call, &mut with(&[0x9c, 0xc3])), Ok(vec![0x100]));
        // F: rep movsb; cmp rax,1; ret: a `rep` string instruction may leave the VM midway.
        assert_eq!(
            classify(
                &call,
                &mut with(&[0xf3, 0xa4, 0x48, 0x83, 0xf8, 0x01, 0xc3])
            ),
            Ok(vec![0x100])
        );
        // F: ret: back to the caller, which returns to an unknown one.
        assert_eq!(classify(&call, &mut with(&[0xc3])), Ok(vec![0x100]));
        // F: add rax,1; ret to the caller; it: ret (pending flags killed in the callee).
        assert_eq!(
            classify(&call, &mut with(&[0x48, 0x83, 0xc0, 0x01, 0xc3])),
            Ok(vec![])
        );
        // Code that may not be followed (it does not run natively).
        assert_eq!(classify(&call, &mut Elsewhere::default()), Ok(vec![0x100]));
        // imul rax,rbx; jmp [rip + 0x1ffef6] (the slot at 0x600000 holds F).
        let jump = page(&[0x48, 0x0f, 0xaf, 0xc3, 0xff, 0x25, 0xf6, 0xfe, 0x1f, 0x00]);
        assert_eq!(
            classify(&jump, &mut with(&[0x48, 0x83, 0xf8, 0x01, 0xc3])),
            Ok(vec![])
        );
        assert_eq!(classify(&jump, &mut with(&[0x9c, 0xc3])), Ok(vec![0x100]));
        // A slot that may not be relied upon.
        let mut no_slot = with(&[0x48, 0x83, 0xf8, 0x01, 0xc3]);
        no_slot.slots.clear();
        assert_eq!(classify(&jump, &mut no_slot), Ok(vec![0x100]));
    }

    #[test]
    fn undefined_flags_are_followed_into_an_instruction_that_runs_into_the_next_page() {
        // At 0xff9: shr edx,cl; shr r9d,cl; sub edx,r9d (its last byte on the next page);
        // there: ret. The subtraction overwrites every flag the shifts leave undefined, as
        // in glibc's strcmp, where both shifts were interpreted before.
        let mut p = vec![0xcc; PAGE_SIZE + 15];
        p[0xff9..0x1002].copy_from_slice(&[0xd3, 0xea, 0x41, 0xd3, 0xe9, 0x44, 0x29, 0xca, 0xc3]);
        let seeds = [BASE + 0xff9];
        let mut next = Elsewhere {
            code: [(BASE + 0x1000, p[0x1000..].to_vec())].into(),
            slots: BTreeMap::new(),
        };
        assert_eq!(
            classify_page(&p, BASE, &seeds, Some(&mut next), || None),
            Ok(vec![])
        );
        // The next page may not be relied upon (not classified, or it could change).
        assert_eq!(
            classify_page(&p, BASE, &seeds, Some(&mut Elsewhere::default()), || None),
            Ok(vec![0xff9, 0xffb])
        );
    }

    #[test]
    fn a_burst_counts_the_passes_of_its_site() {
        // mov ecx,10; l: add eax,1; dec ecx; jnz l; nop; jmp $
        let code = [
            0xb9, 0x0a, 0x00, 0x00, 0x00, 0x83, 0xc0, 0x01, 0xff, 0xc9, 0x75, 0xf9, 0x90, 0xeb,
            0xfe,
        ];
        for (site, passes) in [
            (0x40_0008, 10),
            (0x40_0000, 1),
            (0x40_000c, 1),
            (0x40_0020, 0),
        ] {
            let mut m = Machine::bare(&code, Box::new(NoHost));
            m.site_visits = Some((site, 0));
            assert_eq!(m.interpret(50), StopReason::Limit);
            assert_eq!(m.site_visits, Some((site, passes)), "site {site:#x}");
        }
    }

    #[test]
    fn heavy_stretches_are_replayed_in_the_background_only_while_waited_for() {
        let mut m = Machine::bare(&[0x90], Box::new(NoHost));
        let mut stretch = |heavy| {
            Box::new(Stretch {
                start: m.snapshot(),
                interp_pages: Default::default(),
                trap_sites: Default::default(),
                after: 0,
                kicked: None,
                heavy,
            })
        };
        let q: Arc<(std::sync::Mutex<Jobs>, std::sync::Condvar)> = Default::default();
        q.0.lock()
            .unwrap()
            .pending
            .extend([(0, stretch(true)), (1, stretch(false))]);
        // A worker passes over the heavy stretch for the light one after it...
        assert_eq!(Jobs::take(&q).map(|(seq, _)| seq), Some(1));
        // ... and then waits, until the collecting thread waits for a length.
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || Jobs::take(&q).map(|(seq, _)| seq))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!worker.is_finished());
        Jobs::set_urgent(&q, true);
        assert_eq!(worker.join().unwrap(), Some(0));
    }

    #[test]
    fn probe_runs_on_this_cpu() {
        // Either answer is legitimate; the probe must just run and be stable.
        let first = probe_undefined_flags();
        assert!(first.is_some());
        assert_eq!(first, probe_undefined_flags());
    }
}
