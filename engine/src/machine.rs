//! `Machine`: one guest — registers, memory, kernel-side state and data tree — plus the decoded
//! block cache and the run loop that retires instructions and counts them exactly.

use crate::cpu::fl;
use crate::cpu::{Cpu, RSP};
use crate::elf::{self, LoadError};
use crate::exec::{jit, Ex, Op};
use crate::host::Host;
use crate::linux::Kernel;
use crate::mem::Memory;
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction};
use std::collections::HashMap;
use std::sync::Arc;

/// How a guest is started.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// argv, argv[0] included.
    pub args: Vec<Vec<u8>>,
    /// The environment, as `NAME=value` strings.
    pub env: Vec<Vec<u8>>,
    /// Absolute host path of the executable (what /proc/self/exe names).
    pub exe: String,
    /// Working directory the guest starts in.
    pub cwd: String,
    /// Seed for everything "random" the guest sees (AT_RANDOM, getrandom, /dev/urandom).
    pub seed: u64,
    /// Whether the guest's stdin/stdout/stderr claim to be a terminal.
    pub tty: bool,
}

/// Why `run` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest called exit/exit_group.
    Exited(i32),
    /// A signal's default action ended the guest. `msg` says what happened, for the user.
    Signaled { sig: i32, msg: String },
    /// The instruction budget given to `run` is used up.
    Limit,
    /// About to execute an instruction at a breakpoint address (after at least one
    /// instruction of this `run`).
    Breakpoint(u64),
    /// The instruction just retired touched a watched range.
    Watch(crate::mem::WatchHit),
}

impl StopReason {
    /// Exit status as a shell reports it (128+signal for a fatal signal).
    pub fn exit_status(&self) -> i32 {
        match self {
            StopReason::Exited(c) => *c & 0xff,
            StopReason::Signaled { sig, .. } => 128 + sig,
            StopReason::Limit => 124,
            StopReason::Breakpoint(_) | StopReason::Watch(_) => 0,
        }
    }
}

type Block = Arc<[Op]>;

/// Hashes a guest address (keys are already well spread; no DoS concern here).
#[derive(Default)]
struct AddrHasher(u64);
impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ *b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}
type AddrMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<AddrHasher>>;

const FAST_SLOTS: usize = 4096;

/// Decoded basic blocks by start address, with the pages each block came from, and a
/// direct-mapped front cache for the hot ones.
struct BlockCache {
    fast: Vec<(u64, Option<Block>)>,
    blocks: AddrMap<Block>,
    by_page: AddrMap<Vec<u64>>,
    /// The block being executed and its start (u64::MAX once stale). Kept here so that a loop
    /// that re-enters the same block costs no lookup; it is only replaced between blocks,
    /// never while one runs. Held by address, not by reference count: two atomic operations
    /// per block executed cost a fifth of the interpreter's time. `blocks` (or `fast`) keeps
    /// it alive, and blocks dropped from them while one runs wait in `retired`.
    cur_start: u64,
    cur: *const [Op],
    /// Blocks invalidated since the last switch between blocks (one of them may be running).
    retired: Vec<Block>,
    /// Host code for hot blocks.
    jit: crate::exec::jit::Jit,
}

// SAFETY: `cur` points into a block that `blocks`, `fast` or `retired` owns (Arc<[Op]> is
// Send and Sync); it is never dereferenced by another thread.
unsafe impl Send for BlockCache {}

impl Default for BlockCache {
    fn default() -> Self {
        BlockCache {
            fast: vec![(u64::MAX, None); FAST_SLOTS],
            blocks: AddrMap::default(),
            by_page: AddrMap::default(),
            cur_start: u64::MAX,
            cur: &[],
            retired: Vec::new(),
            jit: Default::default(),
        }
    }
}

impl BlockCache {
    #[inline(always)]
    fn slot(rip: u64) -> usize {
        ((rip ^ (rip >> 12)) as usize) & (FAST_SLOTS - 1)
    }
    /// The block at `rip`, by address (see `cur`): valid until the next switch between
    /// blocks, or longer.
    #[inline(always)]
    fn get(&mut self, rip: u64) -> Option<*const [Op]> {
        let s = Self::slot(rip);
        if self.fast[s].0 == rip {
            return self.fast[s].1.as_ref().map(Arc::as_ptr);
        }
        let b = self.blocks.get(&rip)?.clone();
        let p = Arc::as_ptr(&b);
        self.fast[s] = (rip, Some(b));
        Some(p)
    }
    /// Called between blocks: frees the blocks invalidated while the last one ran.
    #[inline(always)]
    fn switching(&mut self) {
        if !self.retired.is_empty() {
            self.retired.clear();
        }
    }
    fn invalidate_page(&mut self, pn: u64) {
        self.cur_start = u64::MAX;
        self.jit.invalidate_page(pn);
        if let Some(starts) = self.by_page.remove(&pn) {
            for s in starts {
                self.retired.extend(self.blocks.remove(&s));
                let f = Self::slot(s);
                if self.fast[f].0 == s {
                    self.retired.extend(self.fast[f].1.take());
                    self.fast[f].0 = u64::MAX;
                }
            }
        }
    }
    fn clear(&mut self) {
        self.cur_start = u64::MAX;
        self.jit.clear();
        self.retired.extend(self.blocks.drain().map(|(_, b)| b));
        self.by_page.clear();
        for e in self.fast.iter_mut() {
            self.retired.extend(e.1.take());
            e.0 = u64::MAX;
        }
    }
}

const MAX_BLOCK: usize = 64;

/// One guest.
pub struct Machine {
    pub cpu: Cpu,
    pub mem: Memory,
    pub kernel: Kernel,
    /// Instructions retired since the first one.
    pub icount: u64,
    pub host: Box<dyn Host>,
    blocks: BlockCache,
    /// Set once the guest has ended; `run` then returns it again.
    pub ended: Option<StopReason>,
    /// Mappings changed in a way that may invalidate decoded code.
    pub(crate) flush_blocks: bool,
    /// Breakpoint addresses (debugger state, not guest state).
    breakpoints: std::collections::BTreeSet<u64>,
    /// Replaying a native stretch: stop before a syscall, `rdtsc` or exception (and set
    /// `paused`) instead of executing or delivering it.
    pub(crate) pause_at_events: bool,
    /// While set, a run stops (`Limit`) at the first instruction outside `[start, end)`,
    /// after at least one (see `Timeline::step_in_range`).
    pub(crate) step_range: Option<(u64, u64)>,
    pub(crate) paused: bool,
    /// While set, counts the blocks run that hold the instruction at `.0` (the KVM backend's
    /// measure of how often a burst of interpretation passes the site that started it).
    pub(crate) site_visits: Option<(u64, u64)>,
    /// Replaying a native stretch: pages it could not execute natively (pause on reaching
    /// an instruction that touches one).
    pub(crate) pause_pages: Option<Arc<std::collections::BTreeSet<u64>>>,
    /// Replaying a native stretch: instructions that were patched to leave the VM.
    pub(crate) pause_sites: Option<Arc<std::collections::BTreeSet<u64>>>,
    /// Replaying a native stretch that a timer kick ended: pause at the first instruction
    /// boundary whose state is the one the VM was stopped in.
    pub(crate) pause_match: Option<PauseMatch>,
    /// The machine that replays native stretches (kept for its decoded blocks).
    pub(crate) replayer: Option<Box<Machine>>,
    /// Native stretches (KVM backend) whose instruction counts are not known yet: while this
    /// is set, `icount` is not the guest's position; `now()` settles it.
    pub(crate) unsettled: Option<Box<crate::kvm::Unsettled>>,
    /// Replays native stretches in the background (see `kvm::Settler`).
    pub(crate) settler: Option<Box<crate::kvm::Settler>>,
    /// Checkpoints taken while settling native stretches (recordings on the KVM backend).
    pub(crate) checkpoint_log: Option<Arc<std::sync::Mutex<crate::kvm::CheckpointLog>>>,
    /// Snapshots taken while settling native stretches (timelines on the KVM backend).
    pub(crate) snapshot_log: Option<Arc<std::sync::Mutex<crate::kvm::SnapshotLog>>>,
    /// Native stretches replayed so far to learn their lengths.
    /// Times the guest waited for native stretches to be replayed, to learn the exact
    /// icount in the middle of a run (clock reads, input keyed on it).
    pub native_waits: u64,
    pub native_replays: u64,
    /// Instructions added to `icount` by settling native stretches (see `kvm`).
    pub native_settled: u64,
}

/// Most changed pages per snapshot that are checked for duplicates.
const DEDUP_MAX_PAGES: usize = 512;

static ZERO_PAGE_HASH: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();

/// Pages by content hash, for storing identical pages once across snapshots.
#[derive(Default)]
pub struct PageIndex {
    pages: HashMap<[u8; 32], std::sync::Weak<fx86_snapshots::Page>>,
    rounds: u64,
}

/// A complete copy of a guest's state at one icount. Cheap: memory pages and the data tree
/// are shared with the machine until either side writes them.
#[derive(Clone)]
pub struct Snapshot {
    cpu: Cpu,
    mem: Memory,
    kernel: Kernel,
    pub icount: u64,
    ended: Option<StopReason>,
}

/// A state to pause at (see `Machine::pause_match`): its RIP and registers to find
/// candidates fast, then the hash of all registers (with the flag bits in `ignore` cleared)
/// and the memory. (The kernel's state does not change in a native stretch.)
#[derive(Clone)]
pub(crate) struct PauseMatch {
    pub rip: u64,
    pub gpr: [u64; 16],
    pub regs: blake3::Hash,
    pub pages: fx86_snapshots::PageTree,
    pub vmas: std::collections::BTreeMap<u64, crate::mem::Vma>,
    pub ignore: u64,
}

impl PauseMatch {
    /// The state of `m` to pause at.
    pub(crate) fn of(m: &Machine, ignore: u64) -> PauseMatch {
        PauseMatch {
            rip: m.cpu.rip,
            gpr: m.cpu.gpr,
            regs: regs_hash(&m.cpu, ignore),
            pages: m.mem.pages.clone(),
            vmas: m.mem.vmas.clone(),
            ignore,
        }
    }
}

/// blake3 over the registers, without the flag bits in `ignore`.
fn regs_hash(cpu: &Cpu, ignore: u64) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut cpu = cpu.clone();
    cpu.set_rflags(cpu.rflags() & !ignore);
    cpu.hash_into(&mut h);
    h.finalize()
}

impl Snapshot {
    /// Computes the hashes of its memory's page tree (cached in the tree's nodes, which
    /// later states share), so that hashing a state derived from it is cheap.
    pub(crate) fn warm_hash(&self) {
        self.mem.pages.root_hash();
    }

    /// Pages held by this snapshot (shared or not), for memory accounting.
    pub fn page_count(&self) -> usize {
        self.mem.pages.page_count()
    }

    /// Calls `f` with an identity for each page held (equal for pages shared between
    /// snapshots), for counting distinct pages.
    pub fn for_each_page(&self, mut f: impl FnMut(usize)) {
        self.mem
            .pages
            .for_each_in(0, u64::MAX, |_, p| f(std::sync::Arc::as_ptr(p) as usize));
    }
}

impl Machine {
    /// Loads `program` (the bytes of an ELF executable) and builds the initial process.
    pub fn new(program: &[u8], config: Config, host: Box<dyn Host>) -> Result<Machine, LoadError> {
        let mut mem = Memory::default();
        let name = config.exe.clone();
        let mut loaded = elf::load(program, &mut mem, &name)?;
        let kernel = Kernel::new(&config, loaded.brk, Vec::new());
        let mut m = Machine::from_parts(Cpu::default(), mem, kernel, host);
        // A dynamically linked program starts in its loader, which the kernel maps from the
        // file system (here: the data tree, which sees the host's files read-only).
        let (entry, interp_base) = match &loaded.interp {
            None => (loaded.entry, 0),
            Some(interp) => {
                let path = m
                    .resolve(-100, interp.as_bytes(), true)
                    .ok()
                    .filter(|p| m.lookup(p).is_some())
                    .ok_or_else(|| {
                        LoadError::Unsupported(format!("its dynamic loader {interp} is missing"))
                    })?;
                let data = m.file_data(&path).ok_or_else(|| {
                    LoadError::Unsupported(format!("its dynamic loader {interp} is not readable"))
                })?;
                let l =
                    elf::load_at(&data, &mut m.mem, &path, elf::Place::TopDown).map_err(|e| {
                        LoadError::Unsupported(format!("its dynamic loader {interp}: {e}"))
                    })?;
                if l.interp.is_some() {
                    return Err(LoadError::Unsupported(format!(
                        "its dynamic loader {interp} asks for a loader itself"
                    )));
                }
                (l.entry, l.load_bias)
            }
        };
        loaded.interp_base = interp_base;
        let mut random = [0u8; 16];
        let mut h = blake3::Hasher::new();
        h.update(b"fx86 AT_RANDOM");
        h.update(&config.seed.to_le_bytes());
        random.copy_from_slice(&h.finalize().as_bytes()[..16]);
        let execfn = config
            .args
            .first()
            .cloned()
            .unwrap_or_else(|| config.exe.as_bytes().to_vec());
        let (sp, auxv) = elf::build_stack(
            &mut m.mem,
            &loaded,
            &config.args,
            &config.env,
            &execfn,
            random,
            crate::cpuid::hwcap(),
        );
        m.cpu.rip = entry;
        m.cpu.gpr[RSP] = sp;
        m.kernel.auxv = auxv;
        Ok(m)
    }

    fn from_parts(cpu: Cpu, mem: Memory, kernel: Kernel, host: Box<dyn Host>) -> Machine {
        Machine {
            cpu,
            mem,
            kernel,
            icount: 0,
            host,
            blocks: BlockCache::default(),
            ended: None,
            flush_blocks: false,
            breakpoints: Default::default(),
            pause_at_events: false,
            step_range: None,
            paused: false,
            site_visits: None,
            pause_pages: None,
            pause_sites: None,
            pause_match: None,
            replayer: None,
            unsettled: None,
            settler: None,
            checkpoint_log: None,
            snapshot_log: None,
            native_replays: 0,
            native_waits: 0,
            native_settled: 0,
        }
    }

    /// A guest with `code` mapped at 0x400000 (read+exec), a 1 MiB stack and a scratch page
    /// at 0x600000: for instruction tests and the random-instruction tester.
    pub fn bare(code: &[u8], host: Box<dyn Host>) -> Machine {
        use crate::mem::{PROT_EXEC, PROT_READ, PROT_WRITE};
        let mut mem = Memory::default();
        let len = (code.len() as u64 + 0xfff) & !0xfff;
        mem.map(
            0x400000,
            0x400000 + len.max(0x1000),
            PROT_READ | PROT_EXEC,
            "code",
        );
        mem.poke(0x400000, code);
        mem.map(0x600000, 0x610000, PROT_READ | PROT_WRITE, "data");
        mem.map(0x7ff0_0000, 0x8000_0000, PROT_READ | PROT_WRITE, "[stack]");
        let mut cpu = Cpu::default();
        cpu.rip = 0x400000;
        cpu.gpr[RSP] = 0x8000_0000 - 0x100;
        let kernel = Kernel::new(&Config::default(), 0x1000_0000, Vec::new());
        Machine::from_parts(cpu, mem, kernel, host)
    }

    /// Takes a snapshot of the whole guest (O(1) in memory size).
    pub fn snapshot(&mut self) -> Snapshot {
        Snapshot {
            cpu: self.cpu.clone(),
            mem: self.mem.snapshot(),
            kernel: self.kernel.clone(),
            icount: self.icount,
            ended: self.ended.clone(),
        }
    }

    /// Returns the guest to a snapshot's state. Breakpoints and watchpoints stay as they are.
    pub fn restore(&mut self, s: &Snapshot) {
        let watches = self.mem.watches().to_vec();
        self.cpu = s.cpu.clone();
        let old = std::mem::replace(&mut self.mem, s.mem.clone());
        self.mem.set_watches(watches);
        self.kernel = s.kernel.clone();
        self.icount = s.icount;
        self.ended = s.ended.clone();
        self.flush_blocks = false;
        // Decoded blocks stay valid where the code page is the very same page (shared, so
        // unchanged) and still executable; the rest are decoded again.
        let code_pages: Vec<u64> = self.blocks.by_page.keys().copied().collect();
        for pn in code_pages {
            let same = match (old.pages.get(pn), self.mem.pages.get(pn)) {
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            let exec = self
                .mem
                .vma_at(pn << 12)
                .is_some_and(|(_, v)| v.prot & crate::mem::PROT_EXEC != 0);
            if same && exec {
                self.mem.mark_code(pn);
            } else {
                self.blocks.invalidate_page(pn);
            }
        }
    }

    /// Stores identical pages once: every page changed since `base` that has the content of a
    /// page already known (in any snapshot) is replaced by that page, and pages that became
    /// all zero are dropped (absent pages read as zero). Cost: one hash per changed page.
    pub fn dedup_pages(&mut self, base: &Snapshot, known: &mut PageIndex) {
        let mut changed = Vec::new();
        self.mem
            .pages
            .changed_since(&base.mem.pages, |pn, p| changed.push((pn, p.clone())));
        // Hashing costs about a microsecond a page: when an interval rewrote many pages (a big
        // fill), they are very likely distinct and the hashes would dominate, so skip.
        if changed.is_empty() || changed.len() > DEDUP_MAX_PAGES {
            return;
        }
        let zero = *ZERO_PAGE_HASH.get_or_init(|| *blake3::hash(&[0u8; 4096]).as_bytes());
        for (pn, page) in changed {
            let h = page.hash();
            if h == zero {
                self.mem.pages.remove_range(pn, pn + 1);
                continue;
            }
            match known.pages.get(&h).and_then(|w| w.upgrade()) {
                Some(c) if !std::sync::Arc::ptr_eq(&c, &page) && c.data() == page.data() => {
                    self.mem.pages.insert(pn, c);
                }
                Some(_) => {}
                None => {
                    known.pages.insert(h, std::sync::Arc::downgrade(&page));
                }
            }
        }
        known.rounds += 1;
        if known.rounds.is_multiple_of(64) {
            known.pages.retain(|_, w| w.strong_count() > 0);
        }
        self.mem.flush_tlb();
    }

    /// Replaces the breakpoint set.
    pub fn set_breakpoints(&mut self, bps: impl IntoIterator<Item = u64>) {
        self.breakpoints = bps.into_iter().collect();
    }

    pub fn breakpoints(&self) -> &std::collections::BTreeSet<u64> {
        &self.breakpoints
    }

    /// Replaces all of memory with `maps` (start, end, prot, name, contents): the lockstep
    /// tester mirrors a native process this way after each syscall.
    pub fn replace_memory(&mut self, maps: Vec<(u64, u64, u8, String, Vec<u8>)>) {
        let mut mem = Memory::default();
        for (s, e, prot, name, bytes) in maps {
            mem.map(s, e, prot, &name);
            if !bytes.is_empty() {
                mem.poke(s, &bytes);
            }
        }
        self.mem = mem;
        self.blocks.clear();
    }

    fn decode_block(&mut self, rip: u64) -> Result<Block, Ex> {
        // A block holds at most MAX_BLOCK instructions of at most 15 bytes each: no more is
        // fetched (the rest of the page would be copied for every block decoded).
        let mut bytes = [0u8; 15 * MAX_BLOCK];
        let page_left = 4096 - (rip & 0xfff) as usize;
        let want = (page_left + 15).min(bytes.len());
        let n = self.mem.fetch(rip, &mut bytes[..want]).map_err(Ex::Fault)?;
        let mut dec = Decoder::with_ip(64, &bytes[..n], rip, DecoderOptions::NONE);
        let mut out = Vec::with_capacity(16);
        let mut ins = Instruction::default();
        while dec.can_decode() && out.len() < MAX_BLOCK {
            let pos = dec.position();
            if pos >= page_left && !out.is_empty() {
                break;
            }
            dec.decode_out(&mut ins);
            if ins.is_invalid() && dec.last_error() == iced_x86::DecoderError::NoMoreBytes {
                // The instruction runs into a page we may not execute.
                if out.is_empty() {
                    return Err(Ex::Fault(crate::mem::Fault {
                        addr: rip + n as u64,
                        write: false,
                        protection: false,
                    }));
                }
                break;
            }
            out.push(Op::new(ins));
            if ins.is_invalid() || ins.flow_control() != FlowControl::Next {
                break;
            }
        }
        if out.is_empty() {
            return Err(Ex::Fault(crate::mem::Fault {
                addr: rip,
                write: false,
                protection: false,
            }));
        }
        let last = out.last().map(|o| o.ins.next_ip() - 1).unwrap_or(rip);
        let block: Block = out.into();
        for pn in (rip >> 12)..=(last >> 12) {
            self.mem.mark_code(pn);
            self.blocks.by_page.entry(pn).or_default().push(rip);
        }
        self.blocks.blocks.insert(rip, block.clone());
        Ok(block)
    }

    fn sync_code(&mut self) {
        if self.flush_blocks {
            self.blocks.clear();
            self.flush_blocks = false;
            self.mem.dirty_code.clear();
        }
        while let Some(pn) = self.mem.dirty_code.pop() {
            self.blocks.invalidate_page(pn);
        }
    }

    /// Runs until the guest ends or `icount` reaches `limit`.
    pub fn run(&mut self, limit: u64) -> StopReason {
        self.run_inner(limit, false)
    }

    /// Like `run`, but a breakpoint at the current instruction stops at once (for continuing
    /// a run that was split into slices).
    pub fn run_continuing(&mut self, limit: u64) -> StopReason {
        self.run_inner(limit, true)
    }

    fn run_inner(&mut self, limit: u64, check_start: bool) -> StopReason {
        if let Some(s) = &self.ended {
            return s.clone();
        }
        let start = if check_start {
            self.icount.wrapping_sub(1)
        } else {
            self.icount
        };
        let bps = !self.breakpoints.is_empty() || self.step_range.is_some();
        let pausing = self.pause_at_events;
        let pause_pages = if self.pause_at_events {
            self.pause_pages.clone()
        } else {
            None
        };
        self.mem.watch_hit = None;
        // (block start, last byte) → (touches a pause page, holds a pause site, holds the
        // pause match's RIP).
        let mut pause_cache = [(u64::MAX, 0u64, false, false, false, false); 64];
        let mut jit_skip = false;
        loop {
            if self.icount >= limit {
                return StopReason::Limit;
            }
            let rip = self.cpu.rip;
            if self.blocks.cur_start != rip {
                self.blocks.switching();
                let b = match self.blocks.get(rip) {
                    Some(b) => b,
                    None => match self.decode_block(rip) {
                        Ok(b) => Arc::as_ptr(&b),
                        Err(e) => {
                            if let Some(stop) = self.raise(e) {
                                return stop;
                            }
                            continue;
                        }
                    },
                };
                self.blocks.cur = b;
                self.blocks.cur_start = rip;
            }
            // SAFETY: `blocks.cur` was set above from a block that `blocks` holds, and is
            // replaced only there, between blocks; a block invalidated while it runs waits in
            // `retired` until then (and `cur_start` goes stale).
            let block: &[Op] = unsafe { &*self.blocks.cur };
            if let Some((site, n)) = self.site_visits.as_mut() {
                if (rip..block.last().map_or(rip, |o| o.next)).contains(site) {
                    *n += 1;
                }
            }
            // Replaying a native stretch: look closer only in blocks that touch a page
            // that had to be interpreted, or hold a site patched to leave the VM (found
            // once per block start, not on every execution of the block).
            let (check_pages, check_sites, check_match, traps) = if pausing {
                let last = block.last().map_or(rip, |o| o.next - 1);
                let slot = &mut pause_cache[((rip ^ (rip >> 7)) & 63) as usize];
                if (slot.0, slot.1) != (rip, last) {
                    let pages = pause_pages
                        .as_ref()
                        .is_some_and(|p| p.range(rip >> 12..=last >> 12).next().is_some());
                    let sites = self
                        .pause_sites
                        .as_ref()
                        .is_some_and(|s| s.range(rip..=last).next().is_some());
                    let matching = self
                        .pause_match
                        .as_ref()
                        .is_some_and(|p| (rip..=last).contains(&p.rip));
                    let traps = sites || block.iter().any(|o| o.native_trap);
                    *slot = (rip, last, pages, sites, matching, traps);
                }
                (slot.2, slot.3, slot.4, slot.5)
            } else {
                (false, false, false, false)
            };
            // Whether any instruction of the block needs a look before it runs (most need
            // none: the checks below then cost one test per instruction).
            let careful = bps || check_match || check_pages || traps;
            if !careful && !std::mem::take(&mut jit_skip) && self.blocks.jit.enabled {
                if let Some((code, n)) = self.blocks.jit.lookup(rip, block) {
                    let f = self.cpu.rflags();
                    if u64::from(n) <= limit.saturating_sub(self.icount) && jit::flags_allow(f) {
                        // Translations follow one another while they can: no breakpoints
                        // to look for between blocks. (Replay pauses are looked for only in
                        // blocks that concern them, which `fence_pauses` keeps untranslated.)
                        let chain = !bps && self.site_visits.is_none();
                        // The instruction a translation stopped before goes to the
                        // interpreter.
                        jit_skip = self.run_translated(code, f, chain, limit);
                        continue;
                    }
                }
            }
            for op in block.iter() {
                // (Settling native stretches may move `icount` past `limit` mid-block.)
                let budget = limit.saturating_sub(self.icount);
                if budget == 0 {
                    return StopReason::Limit;
                }
                if careful {
                    if bps && self.icount != start {
                        if self.breakpoints.contains(&self.cpu.rip) {
                            return StopReason::Breakpoint(self.cpu.rip);
                        }
                        if let Some((a, b)) = self.step_range {
                            if !(a..b).contains(&self.cpu.rip) {
                                return StopReason::Limit;
                            }
                        }
                    }
                    if check_match && self.at_pause_match() {
                        self.paused = true;
                        return StopReason::Limit;
                    }
                    if pausing
                        && (op.native_trap
                            || op.divergent
                                && check_sites
                                && self
                                    .pause_sites
                                    .as_ref()
                                    .is_some_and(|s| s.contains(&self.cpu.rip)))
                    {
                        self.paused = true;
                        return StopReason::Limit;
                    }
                    if check_pages {
                        let pages = pause_pages.as_ref().expect("set with check_pages");
                        let rip = self.cpu.rip;
                        if pages.contains(&(rip >> 12)) || pages.contains(&((op.next - 1) >> 12)) {
                            self.paused = true;
                            return StopReason::Limit;
                        }
                    }
                }
                match self.exec(op, budget) {
                    Ok(n) => {
                        self.icount += n;
                        if self.mem.attention || self.flush_blocks {
                            self.mem.attention = false;
                            if let Some(hit) = self.mem.watch_hit.take() {
                                if !self.mem.dirty_code.is_empty() || self.flush_blocks {
                                    self.sync_code();
                                }
                                return StopReason::Watch(hit);
                            }
                            if !self.mem.dirty_code.is_empty() || self.flush_blocks {
                                self.sync_code();
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        // A faulting instruction did not complete: a watched access it made
                        // before faulting does not count.
                        self.mem.watch_hit = None;
                        if let Some(stop) = self.raise(e) {
                            return stop;
                        }
                        break;
                    }
                }
                if self.cpu.rip != op.next {
                    break;
                }
            }
        }
    }

    /// Runs translation `code` (and those that follow it if `chain`) from the current state,
    /// whose RFLAGS are `f`. Returns true if it stopped before an instruction it could not
    /// run (a TLB miss).
    fn run_translated(&mut self, code: *const u8, f: u64, chain: bool, limit: u64) -> bool {
        let mut ctx = jit::Ctx::new(
            self.cpu.gpr,
            jit::entry_flags(f),
            self.cpu.rip,
            self.mem.tlb_ptr(),
        );
        ctx.xmm = self.cpu.xmm;
        ctx.mxcsr = u64::from(self.cpu.mxcsr);
        let mut code = code;
        loop {
            // Without `chain`, the budget is the first translation's length: it runs to its
            // end (or a miss), and no other fits after it.
            ctx.exit_count = 0;
            ctx.budget = if chain && !self.blocks.jit.checking {
                limit.saturating_sub(self.icount)
            } else {
                self.blocks
                    .jit
                    .translated(ctx.exit_rip)
                    .map_or(0, |t| u64::from(t.1))
            };
            if self.blocks.jit.checking {
                self.check_translation(code, &mut ctx, f);
            } else {
                self.blocks.jit.run(code, &mut ctx);
            }
            self.icount += ctx.exit_count;
            if ctx.missed != 0 || !chain {
                break;
            }
            match self.blocks.jit.translated(ctx.exit_rip) {
                Some((c, m)) if u64::from(m) <= limit.saturating_sub(self.icount) => code = c,
                _ => break,
            }
        }
        self.cpu.gpr = ctx.gpr;
        self.cpu.xmm = ctx.xmm;
        self.cpu.mxcsr = ctx.mxcsr as u32;
        self.cpu
            .set_rflags((f & !fl::ARITH) | (ctx.flags & fl::ARITH));
        self.cpu.rip = ctx.exit_rip;
        ctx.missed != 0
    }

    /// Runs translation `code` as `run_translated` does, then the same instructions in the
    /// interpreter from the same state, and stops the process if the two disagree (a
    /// testing aid: `--check-jit`).
    #[cold]
    fn check_translation(&mut self, code: *const u8, ctx: &mut jit::Ctx, f: u64) {
        let before = self.icount;
        let mut start = self.cpu.clone();
        start.gpr = ctx.gpr;
        start.xmm = ctx.xmm;
        start.mxcsr = ctx.mxcsr as u32;
        start.set_rflags((f & !fl::ARITH) | (ctx.flags & fl::ARITH));
        start.rip = ctx.exit_rip;
        let mut start_mem = self.mem.snapshot();
        start_mem.track_code_as(&self.mem);
        let input = ctx.gpr;
        ctx.tlb = self.mem.tlb_ptr();
        self.blocks.jit.run(code, ctx);
        let mut jit_mem = self.mem.snapshot();
        jit_mem.track_code_as(&self.mem);
        let outer_cpu = std::mem::replace(&mut self.cpu, start.clone());
        self.mem = start_mem;
        self.blocks.jit.enabled = false;
        if ctx.exit_count > 0 {
            self.run_inner(before + ctx.exit_count, false);
        }
        self.blocks.jit.enabled = true;
        self.blocks.cur_start = u64::MAX;
        let mut pages = Vec::new();
        jit_mem
            .pages
            .diff_since(&self.mem.pages, |pn, _| pages.push(pn));
        let same = self.cpu.gpr == ctx.gpr
            && self.cpu.xmm == ctx.xmm
            && u64::from(self.cpu.mxcsr) == ctx.mxcsr
            && (ctx.exit_count == 0 || self.cpu.rip == ctx.exit_rip)
            && self.icount == before + ctx.exit_count
            && (ctx.flags ^ self.cpu.rflags()) & fl::ARITH == 0
            && pages.is_empty();
        if !same {
            eprintln!(
                "fx86: translation at {:#x} (icount {before}) disagrees with the interpreter: \
                 {} instructions to {:#x} (interpreter: {} to {:#x}); flags {:#x} vs {:#x}; \
                 registers in {input:x?}, translated {:x?}, interpreted {:x?}; pages {pages:x?}",
                start.rip,
                ctx.exit_count,
                ctx.exit_rip,
                self.icount - before,
                self.cpu.rip,
                ctx.flags & fl::ARITH,
                self.cpu.rflags() & fl::ARITH,
                ctx.gpr,
                self.cpu.gpr,
            );
            std::process::exit(70);
        }
        self.icount = before;
        self.cpu = outer_cpu;
        self.mem = jit_mem;
        ctx.tlb = self.mem.tlb_ptr();
    }

    /// How many blocks this machine has translated to host code.
    pub fn translated_blocks(&self) -> u64 {
        self.blocks.jit.translated
    }

    /// Handles an exception: a syscall that ended the guest, or a signal.
    fn raise(&mut self, e: Ex) -> Option<StopReason> {
        if e == Ex::Stop {
            return self.ended.clone();
        }
        if self.pause_at_events {
            self.paused = true;
            return Some(StopReason::Limit);
        }
        let stop = self.deliver_exception(e);
        if let Some(s) = &stop {
            self.ended = Some(s.clone());
        }
        stop
    }

    /// The time stamp counter: the virtual clock in cycles.
    pub fn tsc(&mut self) -> u64 {
        self.now()
    }

    /// The exact icount, settling native stretches first if there are any (the virtual clock
    /// and recordings need it).
    pub fn now(&mut self) -> u64 {
        if self.unsettled.is_some() {
            self.native_waits += 1;
            self.settle();
        }
        self.icount
    }

    /// Executes exactly one instruction in the interpreter (also a syscall or a faulting
    /// instruction, with its signal), after dropping decoded code that native execution may
    /// have overwritten.
    pub(crate) fn step_one(&mut self) -> StopReason {
        self.interpret(self.icount + 1)
    }

    /// Addresses of the decoded blocks that start on page `pn` (instructions the
    /// interpreter has executed there).
    pub(crate) fn block_starts_on(&self, pn: u64) -> Vec<u64> {
        self.blocks
            .by_page
            .get(&pn)
            .map(|v| v.iter().copied().filter(|a| a >> 12 == pn).collect())
            .unwrap_or_default()
    }

    /// Where the first instruction on page `pn` begins, if the interpreter executed one that
    /// starts on the page before and runs up to or into `pn` (its end): the phase of the
    /// page's first bytes.
    pub(crate) fn straddle_end_on(&self, pn: u64) -> Option<u64> {
        let base = pn << 12;
        let starts = self.blocks.by_page.get(&pn)?;
        starts.iter().filter(|&&a| a < base).find_map(|a| {
            self.blocks.blocks.get(a)?.iter().find_map(|o| {
                let (at, end) = (o.ins.ip(), o.ins.next_ip());
                if at >= base {
                    Some(at)
                } else {
                    (end > base).then_some(end)
                }
            })
        })
    }

    /// `run_continuing` after dropping decoded code that native execution may have
    /// overwritten.
    pub(crate) fn interpret(&mut self, limit: u64) -> StopReason {
        self.sync_code();
        self.run_inner(limit, true)
    }

    pub(crate) fn from_snapshot(s: &Snapshot, host: Box<dyn Host>) -> Machine {
        let mut m = Machine::from_parts(s.cpu.clone(), s.mem.clone(), s.kernel.clone(), host);
        m.icount = s.icount;
        m.ended = s.ended.clone();
        m
    }

    /// Forgets the translations of the code that replay pauses concern (`pause_pages`, the
    /// pages of `pause_sites` and of `pause_match`'s RIP): with translations jumping straight
    /// into one another, such code must run in the interpreter, which looks before each of
    /// its instructions. (Blocks that concern a pause are not translated while pausing: only
    /// translations made before, for other pauses, need forgetting.) Call after setting them.
    pub(crate) fn fence_pauses(&mut self) {
        let mut pages = self.pause_pages.as_deref().cloned().unwrap_or_default();
        let sites = self.pause_sites.iter().flat_map(|s| s.iter().copied());
        for rip in sites.chain(self.pause_match.as_ref().map(|p| p.rip)) {
            // (An instruction may run into the next page.)
            pages.insert(rip >> 12);
            pages.insert((rip + 15) >> 12);
        }
        self.blocks.jit.invalidate_pages(&pages);
    }

    /// Whether the state now is the one `pause_match` looks for.
    fn at_pause_match(&mut self) -> bool {
        let Some(p) = &self.pause_match else {
            return false;
        };
        self.cpu.rip == p.rip
            && self.cpu.gpr == p.gpr
            && regs_hash(&self.cpu, p.ignore) == p.regs
            && self.mem.vmas == p.vmas
            && self.mem.pages.same_contents(&p.pages)
    }

    /// blake3 over registers, memory, kernel state and the data tree.
    pub fn state_hash(&mut self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"fx86 state v1");
        h.update(&self.icount.to_le_bytes());
        self.cpu.hash_into(&mut h);
        self.mem.hash_into(&mut h);
        self.kernel.hash_into(&mut h);
        h.finalize()
    }
}
