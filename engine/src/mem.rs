//! Guest memory: the COW page tree, the mappings (VMAs) with their permissions, and a small
//! software TLB so that a hot access is one compare and one host load or store.

use fx86_snapshots::{Page, PageTree, PAGE_SIZE};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub const PROT_READ: u8 = 1;
pub const PROT_WRITE: u8 = 2;
pub const PROT_EXEC: u8 = 4;

/// Lowest address the guest may map (as Linux's default `vm.mmap_min_addr`).
pub const MMAP_MIN: u64 = 0x10000;
/// One past the highest user address.
pub const USER_END: u64 = 0x7fff_ffff_f000;

/// A mapping of the guest address space.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Vma {
    pub end: u64,
    pub prot: u8,
    /// What /proc/self/maps would name it: a path, `[heap]`, `[stack]` or empty.
    pub name: String,
}

/// A memory access the guest was not allowed to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub addr: u64,
    pub write: bool,
    /// True when the address is mapped but the access is not permitted (SEGV_ACCERR).
    pub protection: bool,
}

const TLB_SIZE: usize = 256;
const NO_TAG: u64 = u64::MAX;
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

#[repr(C)]
struct Tlb {
    rtag: [u64; TLB_SIZE],
    rptr: [*const u8; TLB_SIZE],
    wtag: [u64; TLB_SIZE],
    wptr: [*mut u8; TLB_SIZE],
}

impl Tlb {
    fn new() -> Box<Tlb> {
        Box::new(Tlb {
            rtag: [NO_TAG; TLB_SIZE],
            rptr: [std::ptr::null(); TLB_SIZE],
            wtag: [NO_TAG; TLB_SIZE],
            wptr: [std::ptr::null_mut(); TLB_SIZE],
        })
    }
}

/// What a watchpoint watches for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchKind {
    Write,
    Read,
    Access,
}

/// A watched byte range (debugger state, not guest state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Watch {
    pub start: u64,
    pub len: u64,
    pub kind: WatchKind,
}

/// The first watched access made by the current instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchHit {
    pub watch: Watch,
    /// The access (address and length) that touched the watched range.
    pub addr: u64,
    pub len: usize,
    /// Whether the access was a write.
    pub write: bool,
    /// Bytes of the access before and after (equal for reads).
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

/// Guest memory.
pub struct Memory {
    pub pages: PageTree,
    pub vmas: BTreeMap<u64, Vma>,
    tlb: Box<Tlb>,
    /// Pages holding decoded code; writing one invalidates its blocks.
    code_pages: HashSet<u64>,
    /// Code pages written since the block cache last looked.
    pub dirty_code: Vec<u64>,
    /// Watchpoints; accesses to their pages always take the checked slow path.
    watches: Vec<Watch>,
    watched_pages: HashSet<u64>,
    /// Set when an access touched a watched range (taken by the run loop).
    pub watch_hit: Option<WatchHit>,
    /// Set whenever `watch_hit` or `dirty_code` gets something: the run loop looks at those
    /// only when this is set (one test per instruction instead of several).
    pub attention: bool,
}

// SAFETY: the TLB's raw pointers point into pages owned by `self.pages` (or the static zero
// page); they move with the `Memory` and are never shared between threads.
unsafe impl Send for Memory {}

impl Clone for Memory {
    fn clone(&self) -> Self {
        Memory {
            pages: self.pages.clone(),
            vmas: self.vmas.clone(),
            tlb: Tlb::new(),
            code_pages: HashSet::new(),
            dirty_code: Vec::new(),
            watches: self.watches.clone(),
            watched_pages: self.watched_pages.clone(),
            watch_hit: None,
            attention: false,
        }
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            pages: PageTree::new(),
            vmas: BTreeMap::new(),
            tlb: Tlb::new(),
            code_pages: HashSet::new(),
            dirty_code: Vec::new(),
            watches: Vec::new(),
            watched_pages: HashSet::new(),
            watch_hit: None,
            attention: false,
        }
    }
}

macro_rules! access {
    ($read:ident, $write:ident, $t:ty) => {
        #[inline(always)]
        pub fn $read(&mut self, addr: u64) -> Result<$t, Fault> {
            const N: usize = std::mem::size_of::<$t>();
            let off = (addr & 0xfff) as usize;
            let pn = addr >> 12;
            let i = pn as usize % TLB_SIZE;
            if off + N <= PAGE_SIZE && self.tlb.rtag[i] == pn {
                // SAFETY: the TLB entry points at a live 4 KiB page and off+N <= 4096.
                return Ok(unsafe { (self.tlb.rptr[i].add(off) as *const $t).read_unaligned() });
            }
            let mut b = [0u8; N];
            self.read_slow(addr, &mut b)?;
            Ok(<$t>::from_le_bytes(b))
        }

        #[inline(always)]
        pub fn $write(&mut self, addr: u64, v: $t) -> Result<(), Fault> {
            const N: usize = std::mem::size_of::<$t>();
            let off = (addr & 0xfff) as usize;
            let pn = addr >> 12;
            let i = pn as usize % TLB_SIZE;
            if off + N <= PAGE_SIZE && self.tlb.wtag[i] == pn {
                // SAFETY: the entry points at a page uniquely owned by this tree; off+N <= 4096.
                unsafe { (self.tlb.wptr[i].add(off) as *mut $t).write_unaligned(v) };
                return Ok(());
            }
            self.write_slow(addr, &v.to_le_bytes())
        }
    };
}

impl Memory {
    access!(read_u8, write_u8, u8);
    access!(read_u16, write_u16, u16);
    access!(read_u32, write_u32, u32);
    access!(read_u64, write_u64, u64);
    access!(read_u128, write_u128, u128);

    /// The software TLB, for translated code (see `exec::jit`): four arrays of `TLB_SIZE`
    /// words: read tags, read pointers, write tags, write pointers.
    pub(crate) fn tlb_ptr(&self) -> *const u8 {
        &*self.tlb as *const Tlb as *const u8
    }

    /// Forgets every cached translation (after mappings change or a snapshot is taken).
    pub fn flush_tlb(&mut self) {
        self.tlb.rtag = [NO_TAG; TLB_SIZE];
        self.tlb.wtag = [NO_TAG; TLB_SIZE];
    }

    /// The mapping containing `addr`.
    pub fn vma_at(&self, addr: u64) -> Option<(u64, &Vma)> {
        let (&start, v) = self.vmas.range(..=addr).next_back()?;
        (addr < v.end).then_some((start, v))
    }

    fn check(&self, addr: u64, need: u8, write: bool) -> Result<(), Fault> {
        match self.vma_at(addr) {
            None => Err(Fault {
                addr,
                write,
                protection: false,
            }),
            Some((_, v)) if v.prot & need != need => Err(Fault {
                addr,
                write,
                protection: true,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Replaces the watchpoints.
    pub fn set_watches(&mut self, watches: Vec<Watch>) {
        self.watched_pages.clear();
        for w in &watches {
            if w.len == 0 {
                continue;
            }
            for pn in (w.start >> 12)..=((w.start + w.len - 1) >> 12) {
                self.watched_pages.insert(pn);
            }
        }
        self.watches = watches;
        self.flush_tlb();
    }

    /// The current watchpoints.
    pub fn watches(&self) -> &[Watch] {
        &self.watches
    }

    fn note_access(&mut self, addr: u64, old: &[u8], new: &[u8], write: bool) {
        if self.watch_hit.is_some() {
            return;
        }
        let end = addr + old.len() as u64;
        for w in &self.watches {
            let kind_ok = match w.kind {
                WatchKind::Write => write,
                WatchKind::Read => !write,
                WatchKind::Access => true,
            };
            if kind_ok && addr < w.start + w.len && w.start < end {
                self.attention = true;
                self.watch_hit = Some(WatchHit {
                    watch: *w,
                    addr,
                    len: old.len(),
                    write,
                    old: old.to_vec(),
                    new: new.to_vec(),
                });
                return;
            }
        }
    }

    fn fill_read(&mut self, pn: u64) {
        if self.watched_pages.contains(&pn) {
            return;
        }
        let i = pn as usize % TLB_SIZE;
        self.tlb.rtag[i] = pn;
        self.tlb.rptr[i] = match self.pages.get(pn) {
            Some(p) => p.data().as_ptr(),
            None => ZERO_PAGE.as_ptr(),
        };
    }

    fn fill_write(&mut self, pn: u64) {
        if self.watched_pages.contains(&pn) {
            return;
        }
        if self.code_pages.remove(&pn) {
            self.dirty_code.push(pn);
            self.attention = true;
        }
        let i = pn as usize % TLB_SIZE;
        let ptr = self.pages.get_mut(pn).data_mut().as_mut_ptr();
        self.tlb.wtag[i] = pn;
        self.tlb.wptr[i] = ptr;
        self.tlb.rtag[i] = pn;
        self.tlb.rptr[i] = ptr;
    }

    #[cold]
    fn read_slow(&mut self, addr: u64, out: &mut [u8]) -> Result<(), Fault> {
        let mut watched = false;
        for (k, b) in out.iter_mut().enumerate() {
            let a = addr.wrapping_add(k as u64);
            let pn = a >> 12;
            let i = pn as usize % TLB_SIZE;
            if self.tlb.rtag[i] != pn {
                self.check(a, PROT_READ, false)?;
                if self.watched_pages.contains(&pn) {
                    watched = true;
                    *b = self
                        .pages
                        .get(pn)
                        .map(|p| p.data()[(a & 0xfff) as usize])
                        .unwrap_or(0);
                    continue;
                }
                self.fill_read(pn);
            }
            // SAFETY: entry filled above for this page; offset < 4096.
            *b = unsafe { *self.tlb.rptr[i].add((a & 0xfff) as usize) };
        }
        if watched {
            let copy = out.to_vec();
            self.note_access(addr, &copy, &copy, false);
        }
        Ok(())
    }

    #[cold]
    fn write_slow(&mut self, addr: u64, data: &[u8]) -> Result<(), Fault> {
        // Check every page first so a faulting write changes nothing.
        let last = addr.wrapping_add(data.len() as u64 - 1);
        for pn in [addr >> 12, last >> 12] {
            if self.tlb.wtag[pn as usize % TLB_SIZE] != pn {
                self.check(
                    if pn == addr >> 12 { addr } else { pn << 12 },
                    PROT_WRITE,
                    true,
                )?;
            }
        }
        let watched = !self.watched_pages.is_empty()
            && (self.watched_pages.contains(&(addr >> 12))
                || self.watched_pages.contains(&(last >> 12)));
        let old = if watched {
            let mut o = vec![0u8; data.len()];
            for (k, b) in o.iter_mut().enumerate() {
                let a = addr.wrapping_add(k as u64);
                *b = self
                    .pages
                    .get(a >> 12)
                    .map(|p| p.data()[(a & 0xfff) as usize])
                    .unwrap_or(0);
            }
            Some(o)
        } else {
            None
        };
        for (k, b) in data.iter().enumerate() {
            let a = addr.wrapping_add(k as u64);
            let pn = a >> 12;
            let i = pn as usize % TLB_SIZE;
            if self.tlb.wtag[i] != pn {
                if self.watched_pages.contains(&pn) {
                    // Write without caching a translation, so the next write is checked too.
                    if self.code_pages.remove(&pn) {
                        self.dirty_code.push(pn);
                        self.attention = true;
                    }
                    self.pages.get_mut(pn).data_mut()[(a & 0xfff) as usize] = *b;
                    let j = pn as usize % TLB_SIZE;
                    if self.tlb.rtag[j] == pn {
                        self.tlb.rtag[j] = NO_TAG;
                    }
                    continue;
                }
                self.fill_write(pn);
            }
            // SAFETY: entry filled above for this page; offset < 4096.
            unsafe { *self.tlb.wptr[i].add((a & 0xfff) as usize) = *b };
        }
        if let Some(old) = old {
            self.note_access(addr, &old, data, true);
        }
        Ok(())
    }

    /// Reads guest memory into `out`, checking read permission (for syscalls).
    pub fn read_bytes(&mut self, addr: u64, out: &mut [u8]) -> Result<(), Fault> {
        if out.is_empty() {
            return Ok(());
        }
        self.read_slow(addr, out)
    }

    /// Writes guest memory, checking write permission (for syscalls).
    pub fn write_bytes(&mut self, addr: u64, data: &[u8]) -> Result<(), Fault> {
        let mut done = 0;
        while done < data.len() {
            let a = addr.wrapping_add(done as u64);
            let n = (PAGE_SIZE - (a & 0xfff) as usize).min(data.len() - done);
            self.write_slow(a, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Reads a NUL-terminated string of at most `max` bytes.
    pub fn read_cstr(&mut self, addr: u64, max: usize) -> Result<Vec<u8>, Fault> {
        let mut v = Vec::new();
        loop {
            let b = self.read_u8(addr.wrapping_add(v.len() as u64))?;
            if b == 0 || v.len() >= max {
                return Ok(v);
            }
            v.push(b);
        }
    }

    /// Writes bytes regardless of permissions (loader use).
    pub fn poke(&mut self, addr: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let a = addr + done as u64;
            let o = (a & 0xfff) as usize;
            let n = (PAGE_SIZE - o).min(data.len() - done);
            self.pages.get_mut(a >> 12).data_mut()[o..o + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.flush_tlb();
    }

    /// A copy of this memory to keep as a snapshot. Cached write translations are dropped,
    /// because every page is now shared and the next write must copy it. (Read translations
    /// stay valid: the pages they point at are kept by the snapshot, and the write that
    /// copies a page replaces the read translation of the same slot.)
    pub fn snapshot(&mut self) -> Memory {
        self.tlb.wtag = [NO_TAG; TLB_SIZE];
        let mut copy = self.clone();
        copy.flush_tlb();
        copy
    }

    /// Takes over which pages hold decoded code from `other` (a copy of this memory made by
    /// `snapshot`, which does not carry it).
    pub(crate) fn track_code_as(&mut self, other: &Memory) {
        self.code_pages = other.code_pages.clone();
    }

    /// Reads bytes regardless of permissions, for instruction fetch after an exec check.
    pub fn fetch(&mut self, addr: u64, out: &mut [u8]) -> Result<usize, Fault> {
        let mut n = 0;
        while n < out.len() {
            let a = addr + n as u64;
            if self.check(a, PROT_EXEC, false).is_err() {
                if n == 0 {
                    return Err(Fault {
                        addr: a,
                        write: false,
                        protection: self.vma_at(a).is_some(),
                    });
                }
                break;
            }
            let pn = a >> 12;
            let page_end = ((pn + 1) << 12) - a;
            let take = (page_end as usize).min(out.len() - n);
            match self.pages.get(pn) {
                Some(p) => {
                    let o = (a & 0xfff) as usize;
                    out[n..n + take].copy_from_slice(&p.data()[o..o + take]);
                }
                None => out[n..n + take].fill(0),
            }
            n += take;
        }
        Ok(n)
    }

    /// Stores a whole page that was written outside the interpreter (by native execution
    /// under KVM): cached translations of it are dropped and decoded code on it is invalidated.
    pub fn put_page(&mut self, pn: u64, data: &[u8; PAGE_SIZE]) {
        self.pages.put(pn, data);
        self.forget_page(pn);
    }

    /// `put_page` with a page that may be shared (one copy of a page filled with a pattern).
    pub fn put_shared_page(&mut self, pn: u64, page: Arc<Page>) {
        self.pages.insert(pn, page);
        self.forget_page(pn);
    }

    /// Drops cached translations of page `pn` and decoded code on it (it was written outside
    /// the interpreter).
    fn forget_page(&mut self, pn: u64) {
        let i = pn as usize % TLB_SIZE;
        if self.tlb.rtag[i] == pn {
            self.tlb.rtag[i] = NO_TAG;
        }
        if self.tlb.wtag[i] == pn {
            self.tlb.wtag[i] = NO_TAG;
        }
        if self.code_pages.remove(&pn) {
            self.dirty_code.push(pn);
            self.attention = true;
        }
    }

    /// Notes that `pn` holds decoded code, so writes to it must invalidate blocks.
    pub fn mark_code(&mut self, pn: u64) {
        if self.code_pages.insert(pn) {
            let i = pn as usize % TLB_SIZE;
            if self.tlb.wtag[i] == pn {
                self.tlb.wtag[i] = NO_TAG;
            }
        }
    }

    /// Adds a mapping `[start, end)`, replacing whatever was there.
    pub fn map(&mut self, start: u64, end: u64, prot: u8, name: &str) {
        self.unmap(start, end);
        self.vmas.insert(
            start,
            Vma {
                end,
                prot,
                name: name.to_string(),
            },
        );
        self.merge_around(start);
    }

    /// Removes mappings in `[start, end)` and drops their pages.
    /// Drops the code decoded from pages in `[start, end)` (their mappings change): it is
    /// decoded again, with the new permissions, if executed.
    pub fn forget_code(&mut self, start: u64, end: u64) {
        let (lo, hi) = (start >> 12, end.div_ceil(PAGE_SIZE as u64));
        let mut gone: Vec<u64> = self
            .code_pages
            .iter()
            .copied()
            .filter(|pn| (lo..hi).contains(pn))
            .collect();
        if gone.is_empty() {
            return;
        }
        // (In page order: the set's order must not matter.)
        gone.sort_unstable();
        for pn in &gone {
            self.code_pages.remove(pn);
        }
        self.dirty_code.extend(gone);
        self.attention = true;
    }

    pub fn unmap(&mut self, start: u64, end: u64) {
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.vmas.range(start..end).map(|(&k, _)| k).collect();
        for k in keys {
            self.vmas.remove(&k);
        }
        self.pages.remove_range(start >> 12, end >> 12);
        self.flush_tlb();
    }

    /// Changes protection on `[start, end)`. Returns false if part of it is unmapped.
    pub fn protect(&mut self, start: u64, end: u64, prot: u8) -> bool {
        let mut a = start;
        while a < end {
            match self.vma_at(a) {
                Some((_, v)) => a = v.end,
                None => return false,
            }
        }
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.vmas.range(start..end).map(|(&k, _)| k).collect();
        for k in &keys {
            if let Some(v) = self.vmas.get_mut(k) {
                v.prot = prot;
            }
        }
        for k in keys {
            self.merge_around(k);
        }
        self.flush_tlb();
        true
    }

    fn split_at(&mut self, addr: u64) {
        let Some((start, v)) = self.vma_at(addr).map(|(s, v)| (s, v.clone())) else {
            return;
        };
        if start < addr {
            self.vmas.get_mut(&start).expect("vma present").end = addr;
            self.vmas.insert(addr, v);
        }
    }

    fn merge_around(&mut self, start: u64) {
        // Merge with the next mapping.
        if let Some(v) = self.vmas.get(&start).cloned() {
            if let Some(next) = self.vmas.get(&v.end).cloned() {
                if next.prot == v.prot && next.name == v.name {
                    self.vmas.remove(&v.end);
                    self.vmas.get_mut(&start).expect("vma present").end = next.end;
                }
            }
        }
        // Merge with the previous one.
        if let Some((&pstart, pv)) = self.vmas.range(..start).next_back() {
            if pv.end == start {
                let cur = self.vmas[&start].clone();
                if pv.prot == cur.prot && pv.name == cur.name {
                    self.vmas.remove(&start);
                    self.vmas.get_mut(&pstart).expect("vma present").end = cur.end;
                }
            }
        }
    }

    /// Finds a free range of `len` bytes, searching down from `below` (top-down, as Linux).
    pub fn find_free(&self, len: u64, below: u64) -> Option<u64> {
        let mut top = below;
        for (&start, v) in self.vmas.range(..below).rev() {
            if v.end <= top && top - v.end >= len {
                return Some(top - len);
            }
            top = top.min(start);
        }
        (top >= MMAP_MIN + len).then(|| top - len)
    }

    /// True if any part of `[start, end)` is mapped.
    pub fn any_mapped(&self, start: u64, end: u64) -> bool {
        if self.vma_at(start).is_some() {
            return true;
        }
        self.vmas.range(start..end).next().is_some()
    }

    /// Feeds mappings and pages into a hasher. Flushes the TLB so that cached page hashes
    /// cannot go stale through writes via TLB pointers.
    pub fn hash_into(&mut self, h: &mut blake3::Hasher) {
        self.flush_tlb();
        for (s, v) in &self.vmas {
            h.update(&s.to_le_bytes());
            h.update(&v.end.to_le_bytes());
            h.update(&[v.prot]);
            h.update(v.name.as_bytes());
        }
        self.pages.hash_into(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_and_faults() {
        let mut m = Memory::default();
        m.map(0x10000, 0x12000, PROT_READ | PROT_WRITE, "");
        m.write_u64(0x10ffc, 0x1122334455667788).unwrap();
        assert_eq!(m.read_u64(0x10ffc).unwrap(), 0x1122334455667788);
        assert_eq!(m.read_u32(0x11000).unwrap(), 0x11223344);
        assert!(m.read_u8(0x12000).is_err());
        let f = m.write_u16(0x11fff, 1).unwrap_err();
        assert_eq!(f.addr, 0x12000);
        assert!(m.protect(0x11000, 0x12000, PROT_READ));
        assert!(m.write_u8(0x11000, 1).unwrap_err().protection);
        assert_eq!(m.vmas.len(), 2);
        assert!(m.protect(0x11000, 0x12000, PROT_READ | PROT_WRITE));
        assert_eq!(m.vmas.len(), 1);
    }

    #[test]
    fn snapshot_isolated_from_writes() {
        let mut m = Memory::default();
        m.map(0x10000, 0x11000, PROT_READ | PROT_WRITE, "");
        m.write_u32(0x10000, 7).unwrap();
        let mut snap = m.clone();
        m.flush_tlb();
        m.write_u32(0x10000, 8).unwrap();
        assert_eq!(snap.read_u32(0x10000).unwrap(), 7);
        assert_eq!(m.read_u32(0x10000).unwrap(), 8);
    }
}
