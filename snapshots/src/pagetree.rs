//! Guest memory as a persistent radix tree of 4 KiB pages.
//!
//! Four levels of 512 entries cover 36 bits of page number (a 48-bit address space), as the
//! x86-64 page tables do. Absent pages read as zero. Every node is behind an `Arc`, so `clone()`
//! shares everything and a write copies only the page and the path to it.

use std::sync::{Arc, OnceLock};

/// Size of a guest page in bytes.
pub const PAGE_SIZE: usize = 4096;
const FANOUT: usize = 512;
const LEVELS: u32 = 4;

/// One 4 KiB page with a cached content hash.
pub struct Page {
    data: [u8; PAGE_SIZE],
    hash: OnceLock<[u8; 32]>,
}

impl Clone for Page {
    fn clone(&self) -> Self {
        // The copy is about to be written, so its hash is not carried over.
        Page {
            data: self.data,
            hash: OnceLock::new(),
        }
    }
}

impl Page {
    fn zeroed() -> Self {
        Page {
            data: [0; PAGE_SIZE],
            hash: OnceLock::new(),
        }
    }
    /// A page holding `data`.
    pub fn new(data: &[u8; PAGE_SIZE]) -> Arc<Self> {
        let mut page = Arc::new(Page::zeroed());
        Arc::get_mut(&mut page)
            .expect("just made")
            .data
            .copy_from_slice(data);
        page
    }
    /// The eight bytes `data` repeats throughout, if it does (a page filled by `memset`, or
    /// zeroed): such pages can share one copy.
    pub fn pattern(data: &[u8; PAGE_SIZE]) -> Option<u64> {
        (data[8..] == data[..PAGE_SIZE - 8])
            .then(|| u64::from_le_bytes(data[..8].try_into().expect("8 bytes")))
    }
    /// The page's bytes.
    pub fn data(&self) -> &[u8; PAGE_SIZE] {
        &self.data
    }
    /// Mutable bytes; forgets the cached hash.
    pub fn data_mut(&mut self) -> &mut [u8; PAGE_SIZE] {
        self.hash = OnceLock::new();
        &mut self.data
    }
    /// blake3 of the page's bytes, computed once per version of the page.
    pub fn hash(&self) -> [u8; 32] {
        *self
            .hash
            .get_or_init(|| *blake3::hash(&self.data).as_bytes())
    }
}

#[derive(Clone)]
enum Kids {
    Inner(Box<[Option<Arc<Node>>]>),
    Leaf(Box<[Option<Arc<Page>>]>),
}

/// A tree node with its cached Merkle hash (cleared whenever the node is made mutable, so a
/// hash costs O(pages changed since the last one)).
struct Node {
    kids: Kids,
    hash: OnceLock<[u8; 32]>,
}

impl Clone for Node {
    fn clone(&self) -> Self {
        Node {
            kids: self.kids.clone(),
            hash: OnceLock::new(),
        }
    }
}

impl Node {
    fn new(level: u32) -> Node {
        let kids = if level == 0 {
            Kids::Leaf(vec![None; FANOUT].into_boxed_slice())
        } else {
            Kids::Inner(vec![None; FANOUT].into_boxed_slice())
        };
        Node {
            kids,
            hash: OnceLock::new(),
        }
    }

    /// Makes `arc` unique and forgets its cached hash (it is about to change).
    fn make_mut(arc: &mut Arc<Node>) -> &mut Node {
        let n = Arc::make_mut(arc);
        n.hash = OnceLock::new();
        n
    }

    fn merkle(&self, zero: &[u8; 32]) -> [u8; 32] {
        *self.hash.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            match &self.kids {
                Kids::Inner(kids) => {
                    for (i, k) in kids.iter().enumerate() {
                        if let Some(k) = k {
                            let kh = k.merkle(zero);
                            if kh != EMPTY {
                                h.update(&(i as u16).to_le_bytes());
                                h.update(&kh);
                            }
                        }
                    }
                }
                Kids::Leaf(pages) => {
                    for (i, p) in pages.iter().enumerate() {
                        if let Some(p) = p {
                            let ph = p.hash();
                            if ph != *zero {
                                h.update(&(i as u16).to_le_bytes());
                                h.update(&ph);
                            }
                        }
                    }
                }
            }
            let out = *h.finalize().as_bytes();
            if out == *EMPTY_NODE.get_or_init(|| *blake3::Hasher::new().finalize().as_bytes()) {
                EMPTY
            } else {
                out
            }
        })
    }
}

/// The hash of a node with nothing but zero pages under it.
const EMPTY: [u8; 32] = [0; 32];
static EMPTY_NODE: OnceLock<[u8; 32]> = OnceLock::new();

fn index(pn: u64, level: u32) -> usize {
    ((pn >> (9 * level)) & (FANOUT as u64 - 1)) as usize
}

/// A persistent map from page number to page.
#[derive(Clone)]
pub struct PageTree {
    root: Arc<Node>,
}

impl Default for PageTree {
    fn default() -> Self {
        PageTree {
            root: Arc::new(Node::new(LEVELS - 1)),
        }
    }
}

impl PageTree {
    /// An empty tree (every page reads as zero).
    pub fn new() -> Self {
        Self::default()
    }

    /// The page at `pn`, if it was ever written.
    pub fn get(&self, pn: u64) -> Option<&Arc<Page>> {
        let mut node = &self.root;
        let mut level = LEVELS - 1;
        loop {
            match &node.kids {
                Kids::Inner(kids) => {
                    node = kids[index(pn, level)].as_ref()?;
                    level -= 1;
                }
                Kids::Leaf(pages) => return pages[index(pn, 0)].as_ref(),
            }
        }
    }

    /// The page at `pn`, made unique to this tree (copied if shared, created zeroed if absent).
    /// The returned page's cached hash is cleared because the caller is about to write it.
    pub fn get_mut(&mut self, pn: u64) -> &mut Page {
        let slot = self.slot_mut(pn);
        let page = Arc::make_mut(slot.get_or_insert_with(|| Arc::new(Page::zeroed())));
        page.hash = OnceLock::new();
        page
    }

    /// The leaf entry for page `pn`, with the nodes on its path made unique to this tree
    /// (created where absent) and their cached hashes cleared.
    fn slot_mut(&mut self, pn: u64) -> &mut Option<Arc<Page>> {
        let mut node = Node::make_mut(&mut self.root);
        let mut level = LEVELS - 1;
        loop {
            match &mut node.kids {
                Kids::Inner(kids) => {
                    let slot = &mut kids[index(pn, level)];
                    let child = slot.get_or_insert_with(|| Arc::new(Node::new(level - 1)));
                    node = Node::make_mut(child);
                    level -= 1;
                }
                Kids::Leaf(pages) => return &mut pages[index(pn, 0)],
            }
        }
    }

    /// Sets the bytes of page `pn` to `data`: in place if the page is not shared, else in a
    /// new page (the shared one is neither copied nor changed).
    pub fn put(&mut self, pn: u64, data: &[u8; PAGE_SIZE]) {
        let slot = self.slot_mut(pn);
        match slot.as_mut().and_then(Arc::get_mut) {
            Some(page) => page.data_mut().copy_from_slice(data),
            None => *slot = Some(Page::new(data)),
        }
    }

    /// Drops every page with number in `lo..hi`, so they read as zero again.
    pub fn remove_range(&mut self, lo: u64, hi: u64) {
        fn walk(node: &mut Arc<Node>, level: u32, base: u64, lo: u64, hi: u64) {
            let span = 1u64 << (9 * level);
            let n = Node::make_mut(node);
            match &mut n.kids {
                Kids::Inner(kids) => {
                    for (i, kid) in kids.iter_mut().enumerate() {
                        let start = base + i as u64 * span;
                        let end = start + span;
                        if end <= lo || start >= hi || kid.is_none() {
                            continue;
                        }
                        if lo <= start && end <= hi {
                            *kid = None;
                        } else if let Some(k) = kid {
                            walk(k, level - 1, start, lo, hi);
                        }
                    }
                }
                Kids::Leaf(pages) => {
                    for (i, p) in pages.iter_mut().enumerate() {
                        let pn = base + i as u64;
                        if pn >= lo && pn < hi {
                            *p = None;
                        }
                    }
                }
            }
        }
        if lo < hi {
            walk(&mut self.root, LEVELS - 1, 0, lo, hi);
        }
    }

    /// Moves the pages `from..from+count` to `to..to+count` (for mremap). Pages are shared,
    /// not copied.
    pub fn move_range(&mut self, from: u64, to: u64, count: u64) {
        let mut moved = Vec::new();
        self.for_each_in(from, from + count, |pn, p| {
            moved.push((pn - from, p.clone()))
        });
        self.remove_range(from, from + count);
        self.remove_range(to, to + count);
        for (off, p) in moved {
            self.insert(to + off, p);
        }
    }

    /// Puts a shared page at `pn`.
    pub fn insert(&mut self, pn: u64, page: Arc<Page>) {
        *self.slot_mut(pn) = Some(page);
    }

    /// Calls `f` for every present page with number in `lo..hi`, in increasing order.
    pub fn for_each_in(&self, lo: u64, hi: u64, mut f: impl FnMut(u64, &Arc<Page>)) {
        fn walk(
            node: &Node,
            level: u32,
            base: u64,
            lo: u64,
            hi: u64,
            f: &mut dyn FnMut(u64, &Arc<Page>),
        ) {
            let span = 1u64 << (9 * level);
            match &node.kids {
                Kids::Inner(kids) => {
                    for (i, kid) in kids.iter().enumerate() {
                        let start = base + i as u64 * span;
                        if start + span <= lo || start >= hi {
                            continue;
                        }
                        if let Some(k) = kid {
                            walk(k, level - 1, start, lo, hi, f);
                        }
                    }
                }
                Kids::Leaf(pages) => {
                    for (i, p) in pages.iter().enumerate() {
                        let pn = base + i as u64;
                        if pn >= lo && pn < hi {
                            if let Some(p) = p {
                                f(pn, p);
                            }
                        }
                    }
                }
            }
        }
        walk(&self.root, LEVELS - 1, 0, lo, hi, &mut f);
    }

    /// The Merkle root over every non-zero page (its number and content hash). All-zero pages
    /// are skipped so that "never written" and "written with zeros" hash alike. Cached per
    /// node: the cost is proportional to the pages changed since the last call.
    pub fn root_hash(&self) -> [u8; 32] {
        let zero = *ZERO_HASH.get_or_init(|| *blake3::hash(&[0u8; PAGE_SIZE]).as_bytes());
        self.root.merkle(&zero)
    }

    /// Feeds the Merkle root into `h`.
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        h.update(&self.root_hash());
    }

    /// Calls `f` for every page of `self` that is not the very same page in `base` (pages
    /// written or added since `base` was cloned from this tree). Subtrees still shared with
    /// `base` are skipped, so the cost is proportional to what changed.
    pub fn changed_since(&self, base: &PageTree, mut f: impl FnMut(u64, &Arc<Page>)) {
        fn walk(
            a: &Arc<Node>,
            b: Option<&Arc<Node>>,
            pos: u64,
            f: &mut dyn FnMut(u64, &Arc<Page>),
        ) {
            if let Some(b) = b {
                if Arc::ptr_eq(a, b) {
                    return;
                }
            }
            match (&a.kids, b.map(|b| &b.kids)) {
                (Kids::Inner(ak), bk) => {
                    for (i, kid) in ak.iter().enumerate() {
                        let Some(kid) = kid else { continue };
                        let other = match bk {
                            Some(Kids::Inner(bk)) => bk[i].as_ref(),
                            _ => None,
                        };
                        walk(kid, other, (pos << 9) | i as u64, f);
                    }
                }
                (Kids::Leaf(ap), bp) => {
                    for (i, p) in ap.iter().enumerate() {
                        let Some(p) = p else { continue };
                        let same = match bp {
                            Some(Kids::Leaf(bp)) => {
                                bp[i].as_ref().is_some_and(|q| Arc::ptr_eq(p, q))
                            }
                            _ => false,
                        };
                        if !same {
                            f((pos << 9) | i as u64, p);
                        }
                    }
                }
            }
        }
        walk(&self.root, Some(&base.root), 0, &mut f);
    }

    /// Whether both trees hold the same bytes (a missing page reads as zeros). Subtrees
    /// still shared are skipped; it stops at the first difference.
    pub fn same_contents(&self, other: &PageTree) -> bool {
        fn zero(n: &Arc<Node>) -> bool {
            match &n.kids {
                Kids::Inner(k) => k.iter().flatten().all(zero),
                Kids::Leaf(p) => p.iter().flatten().all(|p| p.data().iter().all(|&b| b == 0)),
            }
        }
        fn same(a: &Arc<Node>, b: &Arc<Node>) -> bool {
            if Arc::ptr_eq(a, b) {
                return true;
            }
            match (&a.kids, &b.kids) {
                (Kids::Inner(ak), Kids::Inner(bk)) => (0..FANOUT).all(|i| match (&ak[i], &bk[i]) {
                    (Some(x), Some(y)) => same(x, y),
                    (Some(x), None) | (None, Some(x)) => zero(x),
                    (None, None) => true,
                }),
                (Kids::Leaf(ap), Kids::Leaf(bp)) => (0..FANOUT).all(|i| match (&ap[i], &bp[i]) {
                    (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x.data() == y.data(),
                    (Some(x), None) | (None, Some(x)) => x.data().iter().all(|&b| b == 0),
                    (None, None) => true,
                }),
                _ => false,
            }
        }
        same(&self.root, &other.root)
    }

    /// Number of pages present.
    /// Like `changed_since`, but also reports pages that `base` has and this tree no longer
    /// has (with `None`): everything a mirror of `base` must change to become this tree.
    pub fn diff_since(&self, base: &PageTree, mut f: impl FnMut(u64, Option<&Arc<Page>>)) {
        /// Reports every page under `n`: as it is (`keep`) or as gone.
        fn each(n: &Arc<Node>, pos: u64, keep: bool, f: &mut dyn FnMut(u64, Option<&Arc<Page>>)) {
            match &n.kids {
                Kids::Inner(k) => {
                    for (i, kid) in k.iter().enumerate() {
                        if let Some(kid) = kid {
                            each(kid, (pos << 9) | i as u64, keep, f);
                        }
                    }
                }
                Kids::Leaf(pages) => {
                    for (i, p) in pages.iter().enumerate() {
                        if let Some(p) = p {
                            f((pos << 9) | i as u64, keep.then_some(p));
                        }
                    }
                }
            }
        }
        fn walk(
            a: &Arc<Node>,
            b: &Arc<Node>,
            pos: u64,
            f: &mut dyn FnMut(u64, Option<&Arc<Page>>),
        ) {
            if Arc::ptr_eq(a, b) {
                return;
            }
            match (&a.kids, &b.kids) {
                (Kids::Inner(ak), Kids::Inner(bk)) => {
                    for i in 0..FANOUT {
                        let p = (pos << 9) | i as u64;
                        match (&ak[i], &bk[i]) {
                            (Some(x), Some(y)) => walk(x, y, p, f),
                            (Some(x), None) => each(x, p, true, f),
                            (None, Some(y)) => each(y, p, false, f),
                            (None, None) => {}
                        }
                    }
                }
                (Kids::Leaf(ap), Kids::Leaf(bp)) => {
                    for i in 0..FANOUT {
                        let pn = (pos << 9) | i as u64;
                        match (&ap[i], &bp[i]) {
                            (Some(x), Some(y)) if Arc::ptr_eq(x, y) => {}
                            (Some(x), _) => f(pn, Some(x)),
                            (None, Some(_)) => f(pn, None),
                            (None, None) => {}
                        }
                    }
                }
                _ => unreachable!("nodes at the same position have the same level"),
            }
        }
        walk(&self.root, &base.root, 0, &mut f);
    }

    pub fn page_count(&self) -> usize {
        let mut n = 0;
        self.for_each_in(0, u64::MAX, |_, _| n += 1);
        n
    }
}

static ZERO_HASH: OnceLock<[u8; 32]> = OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_and_write_copies() {
        let mut a = PageTree::new();
        a.get_mut(5).data_mut()[0] = 1;
        let b = a.clone();
        a.get_mut(5).data_mut()[0] = 2;
        assert_eq!(b.get(5).unwrap().data()[0], 1);
        assert_eq!(a.get(5).unwrap().data()[0], 2);
        assert!(a.get(6).is_none());
    }

    #[test]
    fn put_writes_in_place_unless_shared_and_patterns_are_found() {
        let mut t = PageTree::new();
        let mut data = [7u8; PAGE_SIZE];
        t.put(3, &data);
        let before = Arc::as_ptr(t.get(3).unwrap());
        data[100] = 8;
        t.put(3, &data);
        assert_eq!(
            Arc::as_ptr(t.get(3).unwrap()),
            before,
            "an unshared page is reused"
        );
        let snap = t.clone();
        data[100] = 9;
        t.put(3, &data);
        assert_eq!(
            snap.get(3).unwrap().data()[100],
            8,
            "the snapshot keeps its page"
        );
        assert_eq!(t.get(3).unwrap().data()[100], 9);
        assert_ne!(snap.root_hash(), t.root_hash());

        let word = 0x0102_0304_0506_0708u64.to_le_bytes();
        let mut filled = [0u8; PAGE_SIZE];
        for c in filled.chunks_exact_mut(8) {
            c.copy_from_slice(&word);
        }
        assert_eq!(Page::pattern(&filled), Some(0x0102_0304_0506_0708));
        assert_eq!(Page::pattern(&[0; PAGE_SIZE]), Some(0));
        for i in [0, 7, 8, 2048, PAGE_SIZE - 1] {
            let mut off = filled;
            off[i] ^= 1;
            assert_eq!(Page::pattern(&off), None, "byte {i} differs");
        }
        // One page shared by two numbers, written through one of them.
        let shared = Page::new(&filled);
        t.insert(10, shared.clone());
        t.insert(11, shared);
        t.get_mut(10).data_mut()[0] = 0;
        assert_eq!(t.get(11).unwrap().data(), &filled);
        assert_eq!(t.get(10).unwrap().data()[0], 0);
    }

    #[test]
    fn remove_and_move_ranges() {
        let mut t = PageTree::new();
        for pn in [1u64, 511, 512, 513, 1 << 30] {
            t.get_mut(pn).data_mut()[1] = pn as u8 | 1;
        }
        t.remove_range(511, 513);
        assert!(t.get(511).is_none() && t.get(512).is_none());
        assert!(t.get(513).is_some() && t.get(1).is_some());
        t.move_range(513, 1000, 1);
        assert!(t.get(513).is_none());
        assert_eq!(t.get(1000).unwrap().data()[1], 513u64 as u8 | 1);
        assert_eq!(t.page_count(), 3);
    }

    #[test]
    fn same_contents_compares_bytes_not_sharing() {
        let mut a = PageTree::new();
        a.get_mut(5).data_mut()[7] = 1;
        let mut b = a.clone();
        assert!(a.same_contents(&b));
        b.get_mut(5).data_mut()[7] = 2;
        assert!(!a.same_contents(&b));
        b.get_mut(5).data_mut()[7] = 1;
        assert!(
            a.same_contents(&b),
            "written back: same bytes in another page"
        );
        b.get_mut(1 << 30);
        assert!(a.same_contents(&b), "a zero page is as good as none");
        b.get_mut(1 << 30).data_mut()[0] = 9;
        assert!(!a.same_contents(&b) && !b.same_contents(&a));
    }

    #[test]
    fn merkle_root_is_cached_and_invalidated_along_the_path() {
        let mut a = PageTree::new();
        for pn in [3u64, 700, 1 << 20] {
            a.get_mut(pn).data_mut()[0] = pn as u8 | 1;
        }
        let ra = a.root_hash();
        let mut b = a.clone();
        assert_eq!(b.root_hash(), ra);
        b.get_mut(700).data_mut()[1] = 5;
        assert_ne!(b.root_hash(), ra);
        assert_eq!(a.root_hash(), ra, "the shared original keeps its hash");
        b.get_mut(700).data_mut()[1] = 0;
        assert_eq!(b.root_hash(), ra, "same content, same root");
        // Built in another order, same content: same root.
        let mut c = PageTree::new();
        for pn in [1u64 << 20, 3, 700] {
            c.get_mut(pn).data_mut()[0] = pn as u8 | 1;
        }
        c.get_mut(9999);
        assert_eq!(c.root_hash(), ra);
        c.remove_range(700, 701);
        assert_ne!(c.root_hash(), ra);
    }

    #[test]
    fn changed_since_finds_exactly_the_written_pages() {
        let mut a = PageTree::new();
        for pn in 0..2000u64 {
            a.get_mut(pn).data_mut()[0] = 1;
        }
        let base = a.clone();
        a.get_mut(5).data_mut()[0] = 2;
        a.get_mut(1500).data_mut()[0] = 2;
        a.get_mut(1 << 25).data_mut()[0] = 2;
        let mut seen = Vec::new();
        a.changed_since(&base, |pn, _| seen.push(pn));
        assert_eq!(seen, vec![5, 1500, 1 << 25]);
    }

    #[test]
    fn diff_since_reports_writes_and_removals() {
        let mut a = PageTree::new();
        for pn in 0..1500u64 {
            a.get_mut(pn).data_mut()[0] = 1;
        }
        a.get_mut(1 << 30).data_mut()[0] = 1;
        let base = a.clone();
        a.get_mut(7).data_mut()[0] = 2;
        a.remove_range(600, 1100);
        a.remove_range(1 << 30, (1 << 30) + 1);
        a.get_mut(1 << 20).data_mut()[0] = 3;
        let mut written = Vec::new();
        let mut gone = Vec::new();
        a.diff_since(&base, |pn, p| match p {
            Some(_) => written.push(pn),
            None => gone.push(pn),
        });
        written.sort();
        gone.sort();
        assert_eq!(written, vec![7, 1 << 20]);
        let mut want: Vec<u64> = (600..1100).collect();
        want.push(1 << 30);
        assert_eq!(gone, want);
    }

    #[test]
    fn hash_ignores_zero_pages_and_tracks_writes() {
        let mut a = PageTree::new();
        let h0 = {
            let mut h = blake3::Hasher::new();
            a.hash_into(&mut h);
            h.finalize()
        };
        a.get_mut(7);
        let mut h = blake3::Hasher::new();
        a.hash_into(&mut h);
        assert_eq!(h.finalize(), h0);
        a.get_mut(7).data_mut()[3] = 9;
        let mut h = blake3::Hasher::new();
        a.hash_into(&mut h);
        assert_ne!(h.finalize(), h0);
    }
}
