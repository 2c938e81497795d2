//! The data tree: the guest's private file system.
//!
//! It is an overlay over a read-only view of the host. Every path the guest has looked at or
//! changed has an entry here: imported host files (by content), files the guest created or
//! wrote, directories it made, and whiteouts for what it deleted. The host itself is never
//! written. The map is shared between snapshots until changed; file contents are shared blobs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// File contents are immutable once in the tree (a write installs a new `Arc`), so their hashes
/// are cached by `Arc` identity; the cache holds a clone so an address is never reused while
/// cached, and entries nobody else holds are dropped.
type HashCache = Arc<Mutex<HashMap<usize, (Arc<Vec<u8>>, [u8; 32])>>>;

/// What kind of object a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device (`/dev/null` and friends).
    CharDev,
}

/// One entry of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A present object: kind, permission bits, contents (link target for symlinks).
    Present {
        kind: FileKind,
        mode: u32,
        data: Arc<Vec<u8>>,
        ino: u64,
    },
    /// The guest deleted (or renamed away) what was here; the host's object is hidden.
    Whiteout,
}

/// The guest's file system overlay: absolute normalised paths to nodes.
#[derive(Clone, Default)]
pub struct DataTree {
    entries: Arc<BTreeMap<String, Node>>,
    next_ino: u64,
    hashes: HashCache,
}

impl std::fmt::Debug for DataTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataTree")
            .field("entries", &self.entries.len())
            .field("next_ino", &self.next_ino)
            .finish()
    }
}

impl DataTree {
    /// An empty overlay.
    pub fn new() -> Self {
        DataTree {
            entries: Arc::new(BTreeMap::new()),
            next_ino: 1 << 20,
            hashes: HashCache::default(),
        }
    }

    /// The overlay's entry for `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(path)
    }

    /// Sets the entry for `path`.
    pub fn set(&mut self, path: &str, node: Node) {
        Arc::make_mut(&mut self.entries).insert(path.to_string(), node);
    }

    /// A fresh inode number for a newly created object (deterministic: a counter).
    pub fn fresh_ino(&mut self) -> u64 {
        self.next_ino += 1;
        self.next_ino
    }

    /// Entries directly under directory `dir` (absolute, without trailing slash).
    pub fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Node)> + 'a {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        let start = prefix.clone();
        let skip = prefix.len();
        self.entries
            .range(start..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter_map(move |(k, v)| {
                let rest = &k[skip..];
                if rest.is_empty() || rest.contains('/') {
                    None
                } else {
                    Some((rest, v))
                }
            })
    }

    /// Every entry under `dir` (recursively), for renames of directories.
    pub fn paths_under(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// blake3 of a file's contents, computed once per version of the file.
    fn content_hash(&self, data: &Arc<Vec<u8>>) -> [u8; 32] {
        let mut cache = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        let key = Arc::as_ptr(data) as usize;
        if let Some((_, h)) = cache.get(&key) {
            return *h;
        }
        if cache.len() > 4096 {
            cache.retain(|_, (a, _)| Arc::strong_count(a) > 1);
        }
        let h = *blake3::hash(data).as_bytes();
        cache.insert(key, (data.clone(), h));
        h
    }

    /// Feeds the whole overlay into a hasher, in path order. File contents are hashed once per
    /// version, so the cost does not grow with file sizes.
    pub fn hash_into(&self, h: &mut blake3::Hasher) {
        for (path, node) in self.entries.iter() {
            h.update(&(path.len() as u64).to_le_bytes());
            h.update(path.as_bytes());
            match node {
                Node::Whiteout => {
                    h.update(&[0]);
                }
                Node::Present {
                    kind,
                    mode,
                    data,
                    ino,
                } => {
                    h.update(&[1 + *kind as u8]);
                    h.update(&mode.to_le_bytes());
                    h.update(&ino.to_le_bytes());
                    h.update(&(data.len() as u64).to_le_bytes());
                    h.update(&self.content_hash(data));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_lists_one_level() {
        let mut t = DataTree::new();
        let f = |b: &[u8]| Node::Present {
            kind: FileKind::File,
            mode: 0o644,
            data: Arc::new(b.to_vec()),
            ino: 1,
        };
        t.set("/tmp/a", f(b"1"));
        t.set("/tmp/b/c", f(b"2"));
        t.set("/tmpx", f(b"3"));
        let names: Vec<_> = t.children("/tmp").map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, vec!["a"]);
        let snap = t.clone();
        t.set("/tmp/a", Node::Whiteout);
        assert!(matches!(snap.get("/tmp/a"), Some(Node::Present { .. })));
    }
}
