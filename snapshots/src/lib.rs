//! fx86-snapshots: the persistent, copy-on-write parts of a guest's state.
//!
//! * [`PageTree`] — guest memory as a persistent radix tree of 4 KiB pages. Cloning it is O(1)
//!   (it clones one `Arc`); the first write to a shared page afterwards copies that page and the
//!   nodes on its path. Each page caches its blake3 hash so hashing a state is cheap.
//! * [`DataTree`] — the guest's private file system: files are immutable shared blobs, the
//!   directory map is shared until changed.
//!
//! This crate does no I/O and knows nothing about x86: the engine owns semantics, this crate
//! owns sharing and hashing.
#![forbid(unsafe_code)]

mod datatree;
mod pagetree;

pub mod recording;
pub use datatree::{DataTree, FileKind, Node};
pub use pagetree::{Page, PageTree, PAGE_SIZE};
