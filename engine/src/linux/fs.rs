//! File syscalls over the data tree. The guest sees the host file system read-only through
//! the `Host`; a host file is imported into the data tree the first time the guest opens it,
//! and everything the guest creates, writes, renames or deletes changes only the data tree.

use super::errno::*;
use super::{procfs, Machine};
use crate::exec::R;
use fx86_snapshots::{FileKind, Node};
use std::sync::Arc;

const AT_FDCWD: i64 = -100;
const O_ACCMODE: i32 = 3;
const O_CREAT: i32 = 0o100;
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;
const O_APPEND: i32 = 0o2000;
const O_DIRECTORY: i32 = 0o200000;
const O_NOFOLLOW: i32 = 0o400000;
const O_CLOEXEC: i32 = 0o2000000;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_REMOVEDIR: u64 = 0x200;
const AT_EMPTY_PATH: u64 = 0x1000;

/// What an open file description refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfdKind {
    Stdin,
    Stdout,
    Stderr,
    File(String),
    Dir(String, Vec<(String, u8, u64)>),
    Null,
    Zero,
    Random,
    PipeRead(u64),
    PipeWrite(u64),
    /// An eventfd: its counter is kept in `buffer` (8 bytes); `true` for EFD_SEMAPHORE.
    Event(bool),
}

/// An open file description (shared by dup'ed fds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ofd {
    pub kind: OfdKind,
    pub offset: u64,
    pub flags: i32,
    /// Bytes in flight, for pipes (kept in the read end).
    pub buffer: Vec<u8>,
}

impl Ofd {
    pub fn new(kind: OfdKind, flags: i32) -> Ofd {
        Ofd {
            kind,
            offset: 0,
            flags,
            buffer: Vec::new(),
        }
    }
}

const POLLIN: u16 = 0x1;
const POLLOUT: u16 = 0x4;
const POLLERR: u16 = 0x8;
const POLLHUP: u16 = 0x10;
const POLLNVAL: u16 = 0x20;

fn event_count(o: &Ofd) -> u64 {
    o.buffer
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

/// What stat reports.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    kind: FileKind,
    mode: u32,
    size: u64,
    ino: u64,
    rdev: u64,
    /// Modification time (seconds, nanoseconds).
    mtime: (i64, u32),
}

/// The time fx86 reports for objects with no time of their own (devices, pipes, /proc).
const FIXED_MTIME: (i64, u32) = ((super::EPOCH_NS / 1_000_000_000) as i64, 0);

fn ino_of(path: &str) -> u64 {
    let h = blake3::hash(path.as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) & 0xffff_ffff_ffff
}

fn dt(kind: FileKind) -> u8 {
    match kind {
        FileKind::Dir => 4,
        FileKind::File => 8,
        FileKind::Symlink => 10,
        FileKind::CharDev => 2,
    }
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// A directory listing: "." and "..", then `names` (name -> (d_type, inode)) in order.
fn with_dots(
    path: &str,
    names: std::collections::BTreeMap<String, (u8, u64)>,
) -> Vec<(String, u8, u64)> {
    let mut v = vec![
        (".".to_string(), 4, ino_of(path)),
        ("..".to_string(), 4, ino_of(parent(path))),
    ];
    v.extend(names.into_iter().map(|(n, (t, i))| (n, t, i)));
    v
}

/// Character devices fx86 provides itself.
fn device(path: &str) -> Option<(OfdKind, u64)> {
    match path {
        "/dev/null" => Some((OfdKind::Null, (1 << 8) | 3)),
        "/dev/zero" => Some((OfdKind::Zero, (1 << 8) | 5)),
        "/dev/urandom" | "/dev/random" => Some((OfdKind::Random, (1 << 8) | 9)),
        "/dev/stdin" => Some((OfdKind::Stdin, (136 << 8))),
        "/dev/stdout" => Some((OfdKind::Stdout, (136 << 8))),
        "/dev/stderr" => Some((OfdKind::Stderr, (136 << 8))),
        _ => None,
    }
}

impl Machine {
    fn path_arg(&mut self, addr: u64) -> R<Result<Vec<u8>, i64>> {
        let p = self.mem.read_cstr(addr, 4097)?;
        if p.len() > 4096 {
            return Ok(Err(ENAMETOOLONG));
        }
        Ok(Ok(p))
    }

    /// Metadata of `path` (no symlink following), from the data tree or the host.
    pub(crate) fn lookup(&mut self, path: &str) -> Option<Meta> {
        if let Some((_, rdev)) = device(path) {
            return Some(Meta {
                kind: FileKind::CharDev,
                mode: 0o666,
                size: 0,
                ino: ino_of(path),
                rdev,
                mtime: FIXED_MTIME,
            });
        }
        let meta = |kind, mode| {
            Some(Meta {
                kind,
                mode,
                size: 0,
                ino: ino_of(path),
                rdev: 0,
                mtime: FIXED_MTIME,
            })
        };
        if let Some(rest) = procfs::proc_self(path) {
            // The guest's own /proc directory is fx86's: never the host's process of that pid.
            return match rest {
                "" if path.ends_with("self") => meta(FileKind::Symlink, 0o777),
                "" => meta(FileKind::Dir, 0o555),
                "exe" | "cwd" => meta(FileKind::Symlink, 0o777),
                "fd" => meta(FileKind::Dir, 0o500),
                _ if self.fd_link(rest).is_some() => meta(FileKind::Symlink, 0o700),
                _ if procfs::is_synthetic(path) => meta(FileKind::File, 0o444),
                _ => None,
            };
        }
        if procfs::is_synthetic(path) {
            return meta(FileKind::File, 0o444);
        }
        match self.kernel.data.get(path) {
            Some(Node::Whiteout) => None,
            Some(Node::Present {
                kind,
                mode,
                data,
                ino,
            }) => Some(Meta {
                kind: *kind,
                mode: *mode,
                size: data.len() as u64,
                ino: *ino,
                rdev: 0,
                mtime: self.kernel.mtime_of(path),
            }),
            None => {
                // A path under a directory the guest created exists only in the tree.
                let p = parent(path).to_string();
                if p != path {
                    if let Some(Node::Present { .. }) | Some(Node::Whiteout) =
                        self.kernel.data.get(&p)
                    {
                        if !self.host_has(&p) {
                            return None;
                        }
                    }
                }
                let st = self.host.lstat(path)?;
                Some(Meta {
                    kind: st.kind,
                    mode: st.mode,
                    size: st.size,
                    ino: ino_of(path),
                    rdev: 0,
                    mtime: st.mtime,
                })
            }
        }
    }

    fn host_has(&mut self, path: &str) -> bool {
        self.host.lstat(path).is_some()
    }

    fn link_target(&mut self, path: &str) -> Option<Vec<u8>> {
        if path == "/proc/self" || path == "/proc/thread-self" {
            return Some(super::GUEST_PID.to_string().into_bytes());
        }
        match procfs::proc_self(path) {
            Some("exe") => return Some(self.kernel.exe.as_bytes().to_vec()),
            Some("cwd") => return Some(self.kernel.cwd.as_bytes().to_vec()),
            Some(rest) => {
                if let Some(t) = self.fd_link(rest) {
                    return Some(t.into_bytes());
                }
            }
            None => {}
        }
        match self.kernel.data.get(path) {
            Some(Node::Present {
                kind: FileKind::Symlink,
                data,
                ..
            }) => Some(data.to_vec()),
            Some(_) => None,
            None => self.host.read_link(path),
        }
    }

    /// Turns a guest path into an absolute, normalised path, following symlinks.
    pub(crate) fn resolve(
        &mut self,
        dirfd: i64,
        path: &[u8],
        follow_last: bool,
    ) -> Result<String, i64> {
        if path.is_empty() {
            return Err(ENOENT);
        }
        let base = if path[0] == b'/' {
            String::from("/")
        } else if dirfd == AT_FDCWD || dirfd as i32 == AT_FDCWD as i32 {
            self.kernel.cwd.clone()
        } else {
            match self.ofd_at(dirfd as i32) {
                Some(Ofd {
                    kind: OfdKind::Dir(p, _),
                    ..
                }) => p.clone(),
                Some(_) => return Err(ENOTDIR),
                None => return Err(EBADF),
            }
        };
        let mut todo: Vec<String> = String::from_utf8_lossy(path)
            .split('/')
            .rev()
            .map(String::from)
            .collect();
        let mut parts: Vec<String> = base
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let mut links = 0;
        let trailing_slash = path.ends_with(b"/");
        while let Some(comp) = todo.pop() {
            if comp.is_empty() || comp == "." {
                continue;
            }
            if comp == ".." {
                parts.pop();
                continue;
            }
            parts.push(comp);
            let last = todo.iter().all(|c| c.is_empty() || c == ".");
            if last && !follow_last && !trailing_slash {
                continue;
            }
            let cur = format!("/{}", parts.join("/"));
            match self.lookup(&cur) {
                Some(m) if m.kind == FileKind::Symlink => {
                    links += 1;
                    if links > 40 {
                        return Err(ELOOP);
                    }
                    let target = self.link_target(&cur).ok_or(ENOENT)?;
                    parts.pop();
                    if target.first() == Some(&b'/') {
                        parts.clear();
                    }
                    for c in String::from_utf8_lossy(&target).split('/').rev() {
                        todo.push(c.to_string());
                    }
                }
                Some(m) if !last && m.kind != FileKind::Dir => return Err(ENOTDIR),
                Some(_) => {}
                None if !last => return Err(ENOENT),
                None => {}
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }

    /// Contents of a regular file, importing it from the host on first use.
    pub(crate) fn file_data(&mut self, path: &str) -> Option<Arc<Vec<u8>>> {
        self.tree_or_host_file(path, true)
    }

    /// A regular file from the data tree or, when the tree has nothing at `path`, from the
    /// host view; `import` keeps the host's copy (and its time) in the tree.
    fn tree_or_host_file(&mut self, path: &str, import: bool) -> Option<Arc<Vec<u8>>> {
        match self.kernel.data.get(path) {
            Some(Node::Present {
                kind: FileKind::File,
                data,
                ..
            }) => Some(data.clone()),
            Some(_) => None,
            None => {
                let st = self.host.lstat(path)?;
                if st.kind != FileKind::File {
                    return None;
                }
                let data = self.host.read_file(path)?;
                if import {
                    self.kernel.set_mtime(path, st.mtime);
                    self.kernel.data.set(
                        path,
                        Node::Present {
                            kind: FileKind::File,
                            mode: st.mode,
                            data: data.clone(),
                            ino: ino_of(path),
                        },
                    );
                }
                Some(data)
            }
        }
    }

    /// Target of `/proc/self/fd/N` (`rest` = "fd/N") for an open fd, as Linux names it.
    fn fd_link(&self, rest: &str) -> Option<String> {
        let fd: i32 = rest.strip_prefix("fd/")?.parse().ok()?;
        let o = self.ofd_at(fd)?;
        Some(match &o.kind {
            OfdKind::File(p) | OfdKind::Dir(p, _) => p.clone(),
            OfdKind::Stdin | OfdKind::Stdout | OfdKind::Stderr if self.kernel.tty => {
                "/dev/pts/0".into()
            }
            OfdKind::Stdin | OfdKind::Stdout | OfdKind::Stderr => format!("pipe:[{}]", 10 + fd),
            OfdKind::Null => "/dev/null".into(),
            OfdKind::Zero => "/dev/zero".into(),
            OfdKind::Random => "/dev/urandom".into(),
            OfdKind::PipeRead(n) | OfdKind::PipeWrite(n) => format!("pipe:[{}]", 0x1000 + n),
            OfdKind::Event(_) => "anon_inode:[eventfd]".into(),
        })
    }

    /// What `fd` is ready for now (poll bits), or None if it is not open.
    fn readiness(&self, fd: i32) -> Option<u16> {
        let o = self.ofd_at(fd)?;
        Some(match &o.kind {
            OfdKind::Stdin => POLLIN,
            OfdKind::Stdout | OfdKind::Stderr => POLLOUT,
            OfdKind::PipeRead(n) => {
                let writer = self
                    .kernel
                    .ofds
                    .values()
                    .any(|w| w.kind == OfdKind::PipeWrite(*n));
                (if o.buffer.is_empty() { 0 } else { POLLIN }) | if writer { 0 } else { POLLHUP }
            }
            OfdKind::PipeWrite(n) => {
                match self
                    .kernel
                    .ofds
                    .values()
                    .find(|r| r.kind == OfdKind::PipeRead(*n))
                {
                    Some(r) if r.buffer.len() < 1 << 16 => POLLOUT,
                    Some(_) => 0,
                    None => POLLERR,
                }
            }
            OfdKind::Event(_) => {
                let v = event_count(o);
                (if v > 0 { POLLIN } else { 0 }) | if v < u64::MAX - 1 { POLLOUT } else { 0 }
            }
            _ => POLLIN | POLLOUT,
        })
    }

    /// A poll or select that found nothing ready: no other thread or process can change
    /// that, so it times out at once on the virtual clock, or warns that it would wait forever.
    fn wait_nothing(&mut self, timeout_ns: Option<u64>) {
        match timeout_ns {
            Some(ns) => self.kernel.slept_ns = self.kernel.slept_ns.saturating_add(ns),
            None => self.warn_once(
                "the guest waits (poll/select) for fds nothing can make ready; it times out at once"
                    .into(),
            ),
        }
    }

    /// A file as the guest would see it at `path` (symlinks followed), without changing guest
    /// state: a file not yet in the data tree is read from the host but not imported. For
    /// debuggers that read the program and its libraries (gdb's `vFile`).
    pub fn peek_file(&mut self, path: &str) -> Option<Arc<Vec<u8>>> {
        let path = self.resolve(AT_FDCWD, path.as_bytes(), true).ok()?;
        if let Some(d) = self.synthetic_file(&path) {
            return Some(Arc::new(d));
        }
        self.tree_or_host_file(&path, false)
    }

    fn dir_entries(&mut self, path: &str) -> Vec<(String, u8, u64)> {
        let mut names: std::collections::BTreeMap<String, (u8, u64)> = Default::default();
        if let Some(rest) = procfs::proc_self(path) {
            // The guest's own /proc directory and its fd directory, never the host's.
            let listed: Vec<(String, u8)> = match rest {
                "" => procfs::SYNTHETIC
                    .iter()
                    .map(|n| (n.to_string(), 8))
                    .chain([("exe".into(), 10), ("cwd".into(), 10), ("fd".into(), 4)])
                    .collect(),
                "fd" => {
                    // Listed as it is opened: the fd about to be returned for the listing
                    // itself is in it too, as on Linux.
                    let next = (0..)
                        .find(|fd| !self.kernel.fds.contains_key(fd))
                        .unwrap_or(0);
                    self.kernel
                        .fds
                        .keys()
                        .copied()
                        .chain([next])
                        .map(|fd| (fd.to_string(), 10))
                        .collect()
                }
                _ => Vec::new(),
            };
            for (n, t) in listed {
                let full = format!("{path}/{n}");
                names.insert(n, (t, ino_of(&full)));
            }
            return with_dots(path, names);
        }
        let from_tree_only = matches!(self.kernel.data.get(path), Some(Node::Present { .. }))
            && !self.host_has(path);
        if !from_tree_only {
            for (n, k) in self.host.list_dir(path).unwrap_or_default() {
                let full = if path == "/" {
                    format!("/{n}")
                } else {
                    format!("{path}/{n}")
                };
                names.insert(n, (dt(k), ino_of(&full)));
            }
        }
        let tree: Vec<(String, Node)> = self
            .kernel
            .data
            .children(path)
            .map(|(n, node)| (n.to_string(), node.clone()))
            .collect();
        for (n, node) in tree {
            match node {
                Node::Whiteout => {
                    names.remove(&n);
                }
                Node::Present { kind, ino, .. } => {
                    names.insert(n, (dt(kind), ino));
                }
            }
        }
        with_dots(path, names)
    }

    /// The open file description behind `fd`.
    fn ofd_at(&self, fd: i32) -> Option<&Ofd> {
        let (id, _) = self.kernel.fds.get(&fd)?;
        self.kernel.ofds.get(id)
    }

    fn ofd_of(&self, fd: u64) -> Option<u64> {
        self.kernel.fds.get(&(fd as i32)).map(|(id, _)| *id)
    }

    fn meta_of_fd(&mut self, fd: u64) -> Result<Meta, i64> {
        let id = self.ofd_of(fd).ok_or(EBADF)?;
        let kind = self.kernel.ofds[&id].kind.clone();
        Ok(match kind {
            OfdKind::File(p) | OfdKind::Dir(p, _) => self.lookup(&p).ok_or(ENOENT)?,
            OfdKind::Stdin | OfdKind::Stdout | OfdKind::Stderr => Meta {
                kind: if self.kernel.tty {
                    FileKind::CharDev
                } else {
                    FileKind::File
                },
                mode: if self.kernel.tty { 0o620 } else { 0o600 },
                size: 0,
                ino: 3 + fd,
                // Not a terminal: a pipe (as /proc/self/fd says), never an empty regular
                // file, which programs size their buffers by (GNU sort spilled each line).
                rdev: if self.kernel.tty { 136 << 8 } else { u64::MAX },
                mtime: FIXED_MTIME,
            },
            OfdKind::Null | OfdKind::Zero | OfdKind::Random => Meta {
                kind: FileKind::CharDev,
                mode: 0o666,
                size: 0,
                ino: 10 + fd,
                rdev: 0x103,
                mtime: FIXED_MTIME,
            },
            OfdKind::PipeRead(n) | OfdKind::PipeWrite(n) => Meta {
                kind: FileKind::File,
                mode: 0o600,
                size: 0,
                ino: 0x1000 + n,
                rdev: u64::MAX,
                mtime: FIXED_MTIME,
            },
            // anon_inode:[eventfd]
            OfdKind::Event(_) => Meta {
                kind: FileKind::File,
                mode: 0o600,
                size: 0,
                ino: 0x2000 + id,
                rdev: 0,
                mtime: FIXED_MTIME,
            },
        })
    }

    fn write_stat(&mut self, addr: u64, m: &Meta) -> R<()> {
        let mut b = [0u8; 144];
        let fmt = match m.kind {
            FileKind::File if m.rdev == u64::MAX => 0o010000, // pipe
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::CharDev => 0o020000,
        };
        b[0..8].copy_from_slice(&0x801u64.to_le_bytes());
        b[8..16].copy_from_slice(&m.ino.to_le_bytes());
        b[16..24].copy_from_slice(&(if m.kind == FileKind::Dir { 2u64 } else { 1 }).to_le_bytes());
        b[24..28].copy_from_slice(&(fmt | (m.mode & 0o7777)).to_le_bytes());
        b[28..32].copy_from_slice(&1000u32.to_le_bytes());
        b[32..36].copy_from_slice(&1000u32.to_le_bytes());
        b[40..48].copy_from_slice(&(if m.rdev == u64::MAX { 0 } else { m.rdev }).to_le_bytes());
        b[48..56].copy_from_slice(&m.size.to_le_bytes());
        b[56..64].copy_from_slice(&4096u64.to_le_bytes());
        b[64..72].copy_from_slice(&m.size.div_ceil(512).next_multiple_of(8).to_le_bytes());
        for o in [72, 88, 104] {
            b[o..o + 8].copy_from_slice(&m.mtime.0.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&(m.mtime.1 as u64).to_le_bytes());
        }
        self.mem.write_bytes(addr, &b)?;
        Ok(())
    }

    fn write_statx(&mut self, addr: u64, m: &Meta) -> R<()> {
        let mut st = [0u8; 144];
        let mut b = [0u8; 256];
        // Reuse the stat encoding for the mode.
        let fmt = match m.kind {
            FileKind::File if m.rdev == u64::MAX => 0o010000u32,
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::CharDev => 0o020000,
        };
        let _ = &mut st;
        b[0..4].copy_from_slice(&0x7ffu32.to_le_bytes());
        b[4..8].copy_from_slice(&4096u32.to_le_bytes());
        b[16..20].copy_from_slice(&(if m.kind == FileKind::Dir { 2u32 } else { 1 }).to_le_bytes());
        b[20..24].copy_from_slice(&1000u32.to_le_bytes());
        b[24..28].copy_from_slice(&1000u32.to_le_bytes());
        b[28..30].copy_from_slice(&((fmt | (m.mode & 0o7777)) as u16).to_le_bytes());
        b[32..40].copy_from_slice(&m.ino.to_le_bytes());
        b[40..48].copy_from_slice(&m.size.to_le_bytes());
        b[48..56].copy_from_slice(&m.size.div_ceil(512).next_multiple_of(8).to_le_bytes());
        for o in [64, 80, 96, 112] {
            b[o..o + 8].copy_from_slice(&m.mtime.0.to_le_bytes());
            b[o + 8..o + 12].copy_from_slice(&m.mtime.1.to_le_bytes());
        }
        let rdev = if m.rdev == u64::MAX { 0 } else { m.rdev };
        b[128..132].copy_from_slice(&((rdev >> 8) as u32).to_le_bytes());
        b[132..136].copy_from_slice(&((rdev & 0xff) as u32).to_le_bytes());
        b[136..140].copy_from_slice(&8u32.to_le_bytes());
        b[140..144].copy_from_slice(&1u32.to_le_bytes());
        self.mem.write_bytes(addr, &b)?;
        Ok(())
    }

    fn do_open(&mut self, dirfd: i64, path_addr: u64, flags: i32, mode: u32) -> R<i64> {
        let raw = match self.path_arg(path_addr)? {
            Ok(p) => p,
            Err(e) => return Ok(-e),
        };
        let follow = flags & O_NOFOLLOW == 0;
        let path = match self.resolve(dirfd, &raw, follow) {
            Ok(p) => p,
            Err(e) => return Ok(-e),
        };
        let cloexec = flags & O_CLOEXEC != 0;
        if let Some(data) = self.synthetic_file(&path) {
            // Made now, from the state at this moment (as the kernel does on open).
            self.kernel.data.set(
                &path,
                Node::Present {
                    kind: FileKind::File,
                    mode: 0o444,
                    data: Arc::new(data),
                    ino: ino_of(&path),
                },
            );
        }
        if let Some((kind, _)) = device(&path) {
            let id = self.kernel.new_ofd(Ofd::new(kind, flags));
            return Ok(self.kernel.install_fd(0, id, cloexec));
        }
        let meta = self.lookup(&path);
        let acc = flags & O_ACCMODE;
        match meta {
            Some(m) => {
                if flags & O_CREAT != 0 && flags & O_EXCL != 0 {
                    return Ok(-EEXIST);
                }
                if m.kind == FileKind::Symlink {
                    return Ok(-ELOOP);
                }
                if m.kind == FileKind::Dir {
                    if acc != 0 {
                        return Ok(-EISDIR);
                    }
                    let entries = self.dir_entries(&path);
                    let id = self
                        .kernel
                        .new_ofd(Ofd::new(OfdKind::Dir(path, entries), flags));
                    return Ok(self.kernel.install_fd(0, id, cloexec));
                }
                if flags & O_DIRECTORY != 0 {
                    return Ok(-ENOTDIR);
                }
                if m.kind != FileKind::File {
                    return Ok(-EACCES);
                }
                if self.file_data(&path).is_none() {
                    return Ok(-EACCES);
                }
                if flags & O_TRUNC != 0 && acc != 0 {
                    self.set_file(&path, Vec::new(), None);
                }
            }
            None => {
                if flags & O_CREAT == 0 {
                    return Ok(-ENOENT);
                }
                match self.lookup(parent(&path)) {
                    Some(p) if p.kind == FileKind::Dir => {}
                    Some(_) => return Ok(-ENOTDIR),
                    None => return Ok(-ENOENT),
                }
                self.set_file(&path, Vec::new(), Some(mode & !self.kernel.umask & 0o7777));
            }
        }
        let id = self.kernel.new_ofd(Ofd::new(OfdKind::File(path), flags));
        Ok(self.kernel.install_fd(0, id, cloexec))
    }

    /// Replaces a file's contents in the data tree (creating it with `mode` if given).
    /// The guest's wall clock, as a file time.
    fn now_mtime(&mut self) -> (i64, u32) {
        let ns = self.clock_ns(0);
        ((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as u32)
    }

    fn set_file(&mut self, path: &str, data: Vec<u8>, mode: Option<u32>) {
        let now = self.now_mtime();
        self.kernel.set_mtime(path, now);
        let (m, ino) = match self.kernel.data.get(path) {
            Some(Node::Present { mode, ino, .. }) => (*mode, *ino),
            _ => {
                let ino = self.kernel.data.fresh_ino();
                (mode.unwrap_or(0o644), ino)
            }
        };
        self.kernel.data.set(
            path,
            Node::Present {
                kind: FileKind::File,
                mode: m,
                data: Arc::new(data),
                ino,
            },
        );
    }

    /// Reads from an fd into host memory (up to `n` bytes at `off`, or the fd's offset).
    fn fd_read(&mut self, fd: u64, n: usize, at: Option<u64>) -> Result<Vec<u8>, i64> {
        let id = self.ofd_of(fd).ok_or(EBADF)?;
        let o = self.kernel.ofds.get(&id).cloned().ok_or(EBADF)?;
        if o.flags & O_ACCMODE == 1 {
            return Err(EBADF);
        }
        let out = match &o.kind {
            OfdKind::Stdin => {
                if at.is_some() {
                    return Err(ESPIPE);
                }
                // Input is keyed by the exact icount of the read that took it (recordings,
                // timelines), even on the KVM backend, where other syscalls need not settle.
                if self.host.keys_stdin() {
                    let icount = self.now();
                    self.host.inexact(false);
                    self.host.at_icount(icount);
                }
                self.host.read_stdin(n)
            }
            OfdKind::Stdout | OfdKind::Stderr => return Err(EBADF),
            OfdKind::Null => Vec::new(),
            OfdKind::Zero => vec![0; n],
            OfdKind::Random => self.random_bytes(n),
            OfdKind::Dir(..) => return Err(EISDIR),
            OfdKind::PipeWrite(_) => return Err(EBADF),
            OfdKind::PipeRead(_) => {
                let o = self.kernel.ofds.get_mut(&id).ok_or(EBADF)?;
                let k = n.min(o.buffer.len());
                return Ok(o.buffer.drain(..k).collect());
            }
            OfdKind::Event(sem) => {
                if n < 8 {
                    return Err(EINVAL);
                }
                let sem = *sem;
                let o = self.kernel.ofds.get_mut(&id).ok_or(EBADF)?;
                let v = event_count(o);
                if v == 0 {
                    // Nobody else can ever add to it: waiting would be forever.
                    return Err(EAGAIN);
                }
                let (got, left) = if sem { (1, v - 1) } else { (v, 0) };
                o.buffer = left.to_le_bytes().to_vec();
                return Ok(got.to_le_bytes().to_vec());
            }
            OfdKind::File(p) => {
                let data = self.file_data(p).unwrap_or_default();
                let off = at.unwrap_or(o.offset) as usize;
                let s = off.min(data.len());
                let e = off.saturating_add(n).min(data.len());
                data[s..e].to_vec()
            }
        };
        if at.is_none() {
            if let Some(o) = self.kernel.ofds.get_mut(&id) {
                if matches!(o.kind, OfdKind::File(_)) {
                    o.offset += out.len() as u64;
                }
            }
        }
        Ok(out)
    }

    fn fd_write(&mut self, fd: u64, data: &[u8], at: Option<u64>) -> Result<usize, i64> {
        let id = self.ofd_of(fd).ok_or(EBADF)?;
        let o = self.kernel.ofds.get(&id).cloned().ok_or(EBADF)?;
        if o.flags & O_ACCMODE == 0
            && !matches!(
                o.kind,
                OfdKind::Stdout | OfdKind::Stderr | OfdKind::PipeWrite(_) | OfdKind::Event(_)
            )
        {
            return Err(EBADF);
        }
        match &o.kind {
            OfdKind::Stdout => self.host.write_output(1, data),
            OfdKind::Stderr => self.host.write_output(2, data),
            OfdKind::Stdin => self.host.write_output(1, data),
            OfdKind::Null | OfdKind::Zero | OfdKind::Random => {}
            OfdKind::Dir(..) => return Err(EISDIR),
            OfdKind::PipeRead(_) => return Err(EBADF),
            OfdKind::Event(_) => {
                if data.len() < 8 {
                    return Err(EINVAL);
                }
                let add = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
                let o = self.kernel.ofds.get_mut(&id).ok_or(EBADF)?;
                let v = event_count(o);
                if add == u64::MAX || v.checked_add(add).is_none_or(|t| t == u64::MAX) {
                    return Err(if add == u64::MAX { EINVAL } else { EAGAIN });
                }
                o.buffer = (v + add).to_le_bytes().to_vec();
                return Ok(8);
            }
            OfdKind::PipeWrite(n) => {
                let n = *n;
                let reader = self
                    .kernel
                    .ofds
                    .iter()
                    .find(|(_, o)| o.kind == OfdKind::PipeRead(n))
                    .map(|(k, _)| *k);
                match reader {
                    Some(r) => {
                        let o = self.kernel.ofds.get_mut(&r).ok_or(EBADF)?;
                        if o.buffer.len() + data.len() > 1 << 16 {
                            return Err(EAGAIN);
                        }
                        o.buffer.extend_from_slice(data);
                    }
                    None => return Err(32), // EPIPE
                }
            }
            OfdKind::File(p) => {
                let p = p.clone();
                let mut cur = self.file_data(&p).map(|a| a.to_vec()).unwrap_or_default();
                let off = if o.flags & O_APPEND != 0 {
                    cur.len()
                } else {
                    at.unwrap_or(o.offset) as usize
                };
                if off > (1 << 34) {
                    return Err(EINVAL);
                }
                if cur.len() < off + data.len() {
                    cur.resize(off + data.len(), 0);
                }
                cur[off..off + data.len()].copy_from_slice(data);
                self.set_file(&p, cur, None);
                if at.is_none() {
                    if let Some(o) = self.kernel.ofds.get_mut(&id) {
                        o.offset = (off + data.len()) as u64;
                    }
                }
            }
        }
        Ok(data.len())
    }

    fn iovecs(&mut self, addr: u64, cnt: u64) -> R<Result<Vec<(u64, u64)>, i64>> {
        if cnt > 1024 {
            return Ok(Err(EINVAL));
        }
        let mut v = Vec::new();
        for k in 0..cnt {
            let b = self.mem.read_u64(addr + 16 * k)?;
            let l = self.mem.read_u64(addr + 16 * k + 8)?;
            v.push((b, l));
        }
        Ok(Ok(v))
    }

    fn remove_path(&mut self, path: &str) {
        // A whiteout hides the host's object (if any) and drops the guest's.
        self.kernel.data.set(path, Node::Whiteout);
        self.kernel.forget_mtime(path);
    }

    pub(super) fn sys_fs(&mut self, nr: u64) -> R<i64> {
        let a = self.args6();
        macro_rules! tryp {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(-e),
                }
            };
        }
        Ok(match nr {
            0 | 17 => {
                let n = (a[2] as usize).min(1 << 26);
                let data = tryp!(self.fd_read(a[0], n, if nr == 17 { Some(a[3]) } else { None }));
                self.mem.write_bytes(a[1], &data)?;
                data.len() as i64
            }
            1 | 18 => {
                let n = (a[2] as usize).min(1 << 26);
                let mut buf = vec![0u8; n];
                self.mem.read_bytes(a[1], &mut buf)?;
                tryp!(self.fd_write(a[0], &buf, if nr == 18 { Some(a[3]) } else { None })) as i64
            }
            19 => {
                let iov = tryp!(self.iovecs(a[1], a[2])?);
                let mut total = 0i64;
                for (b, l) in iov {
                    let data = tryp!(self.fd_read(a[0], (l as usize).min(1 << 26), None));
                    self.mem.write_bytes(b, &data)?;
                    total += data.len() as i64;
                    if (data.len() as u64) < l {
                        break;
                    }
                }
                total
            }
            20 => {
                let iov = tryp!(self.iovecs(a[1], a[2])?);
                let mut buf = Vec::new();
                for (b, l) in iov {
                    let mut part = vec![0u8; (l as usize).min(1 << 26)];
                    self.mem.read_bytes(b, &mut part)?;
                    buf.extend_from_slice(&part);
                }
                tryp!(self.fd_write(a[0], &buf, None)) as i64
            }
            40 | 326 => {
                // sendfile(out, in, *off, n) / copy_file_range(in, *off_in, out, *off_out, n)
                let (fin, off_in, fout, off_out, n) = if nr == 40 {
                    (a[1], a[2], a[0], 0, a[3])
                } else {
                    (a[0], a[1], a[2], a[3], a[4])
                };
                let n = (n as usize).min(1 << 26);
                let at_in = if off_in != 0 {
                    Some(self.mem.read_u64(off_in)?)
                } else {
                    None
                };
                let at_out = if off_out != 0 {
                    Some(self.mem.read_u64(off_out)?)
                } else {
                    None
                };
                let data = tryp!(self.fd_read(fin, n, at_in));
                let done = tryp!(self.fd_write(fout, &data, at_out));
                if let Some(o) = at_in {
                    self.mem.write_u64(off_in, o + data.len() as u64)?;
                }
                if let Some(o) = at_out {
                    self.mem.write_u64(off_out, o + done as u64)?;
                }
                done as i64
            }
            // getxattr family: files in the data tree have no extended attributes.
            188..=190 => -EOPNOTSUPP,
            191..=193 => -ENODATA,
            194..=196 => 0,
            197..=199 => -ENODATA,
            2 => self.do_open(AT_FDCWD, a[0], a[1] as i32, a[2] as u32)?,
            257 => self.do_open(a[0] as i32 as i64, a[1], a[2] as i32, a[3] as u32)?,
            3 => {
                if self.kernel.close_fd(a[0] as i32) {
                    0
                } else {
                    -EBADF
                }
            }
            4 | 6 | 262 | 5 | 332 => {
                let (dirfd, pa, out, flags) = match nr {
                    4 => (AT_FDCWD, a[0], a[1], 0),
                    6 => (AT_FDCWD, a[0], a[1], AT_SYMLINK_NOFOLLOW),
                    5 => (a[0] as i32 as i64, 0, a[1], AT_EMPTY_PATH),
                    332 => (a[0] as i32 as i64, a[1], a[4], a[2]),
                    _ => (a[0] as i32 as i64, a[1], a[2], a[3]),
                };
                let raw = if pa == 0 {
                    Vec::new()
                } else {
                    tryp!(self.path_arg(pa)?)
                };
                let meta = if raw.is_empty() {
                    if flags & AT_EMPTY_PATH == 0 {
                        return Ok(-ENOENT);
                    }
                    if dirfd == AT_FDCWD {
                        let cwd = self.kernel.cwd.clone();
                        tryp!(self.lookup(&cwd).ok_or(ENOENT))
                    } else {
                        tryp!(self.meta_of_fd(dirfd as u64))
                    }
                } else {
                    let path = tryp!(self.resolve(dirfd, &raw, flags & AT_SYMLINK_NOFOLLOW == 0));
                    tryp!(self.lookup(&path).ok_or(ENOENT))
                };
                if nr == 332 {
                    self.write_statx(out, &meta)?;
                } else {
                    self.write_stat(out, &meta)?;
                }
                0
            }
            8 => {
                let id = tryp!(self.ofd_of(a[0]).ok_or(EBADF));
                let o = self.kernel.ofds[&id].clone();
                let size = match &o.kind {
                    OfdKind::File(p) => self.file_data(p).map(|d| d.len()).unwrap_or(0) as i64,
                    OfdKind::Dir(_, e) => e.len() as i64,
                    OfdKind::Null | OfdKind::Zero | OfdKind::Random => 0,
                    _ => return Ok(-ESPIPE),
                };
                let base = match a[2] {
                    0 => 0,
                    1 => o.offset as i64,
                    2 => size,
                    3 | 4 => {
                        // SEEK_DATA / SEEK_HOLE: no holes.
                        if a[1] as i64 >= size {
                            return Ok(-6); // ENXIO
                        }
                        return Ok(if a[2] == 3 { a[1] as i64 } else { size });
                    }
                    _ => return Ok(-EINVAL),
                };
                let n = base.checked_add(a[1] as i64).unwrap_or(-1);
                if n < 0 {
                    return Ok(-EINVAL);
                }
                if let Some(o) = self.kernel.ofds.get_mut(&id) {
                    o.offset = n as u64;
                }
                n
            }
            16 => {
                // ioctl
                let id = tryp!(self.ofd_of(a[0]).ok_or(EBADF));
                let is_term = self.kernel.tty
                    && matches!(
                        self.kernel.ofds[&id].kind,
                        OfdKind::Stdin | OfdKind::Stdout | OfdKind::Stderr
                    );
                match a[1] {
                    0x5401 if is_term => {
                        // TCGETS: a cooked terminal.
                        let mut t = [0u8; 60];
                        t[0..4].copy_from_slice(&0x500u32.to_le_bytes());
                        t[4..8].copy_from_slice(&0x5u32.to_le_bytes());
                        t[8..12].copy_from_slice(&0xbfu32.to_le_bytes());
                        t[12..16].copy_from_slice(&0x8a3bu32.to_le_bytes());
                        self.mem.write_bytes(a[2], &t)?;
                        0
                    }
                    0x5413 if is_term => {
                        // TIOCGWINSZ: 24 rows, 80 columns.
                        self.mem.write_bytes(a[2], &[24, 0, 80, 0, 0, 0, 0, 0])?;
                        0
                    }
                    0x5421 => 0, // FIONBIO
                    0x541b => {
                        // FIONREAD
                        self.mem.write_u32(a[2], 0)?;
                        0
                    }
                    _ => -ENOTTY,
                }
            }
            21 | 269 | 439 => {
                let (dirfd, pa) = if nr == 21 {
                    (AT_FDCWD, a[0])
                } else {
                    (a[0] as i32 as i64, a[1])
                };
                let raw = tryp!(self.path_arg(pa)?);
                let path = tryp!(self.resolve(dirfd, &raw, true));
                match self.lookup(&path) {
                    Some(_) => 0,
                    None => -ENOENT,
                }
            }
            22 | 293 => {
                let flags = if nr == 293 { a[1] as i32 } else { 0 };
                let n = self.kernel.next_ofd;
                let r = self
                    .kernel
                    .new_ofd(Ofd::new(OfdKind::PipeRead(n), flags & !O_ACCMODE));
                let w = self
                    .kernel
                    .new_ofd(Ofd::new(OfdKind::PipeWrite(n), (flags & !O_ACCMODE) | 1));
                let ce = flags & O_CLOEXEC != 0;
                let rfd = self.kernel.install_fd(0, r, ce);
                let wfd = self.kernel.install_fd(0, w, ce);
                self.mem.write_u32(a[0], rfd as u32)?;
                self.mem.write_u32(a[0] + 4, wfd as u32)?;
                0
            }
            7 | 271 => {
                // poll/ppoll: readiness from the fds' state; nothing can change it while the
                // one thread waits, so a wait ends at once (the virtual clock moves on).
                let n = a[1].min(1024);
                let mut ready = 0;
                for k in 0..n {
                    let p = a[0] + 8 * k;
                    let fd = self.mem.read_u32(p)? as i32;
                    let ev = self.mem.read_u16(p + 4)?;
                    let revents = if fd < 0 {
                        0
                    } else {
                        match self.readiness(fd) {
                            None => POLLNVAL,
                            Some(r) => r & (ev | POLLHUP | POLLERR),
                        }
                    };
                    self.mem.write_u16(p + 6, revents)?;
                    if revents != 0 {
                        ready += 1;
                    }
                }
                if ready == 0 {
                    let timeout = if nr == 7 {
                        (a[2] as i32 >= 0).then(|| a[2] as i32 as u64 * 1_000_000)
                    } else if a[2] == 0 {
                        None
                    } else {
                        let s = self.mem.read_u64(a[2])?;
                        let ns = self.mem.read_u64(a[2] + 8)?;
                        Some(s.saturating_mul(1_000_000_000).saturating_add(ns))
                    };
                    self.wait_nothing(timeout);
                }
                ready
            }
            23 | 270 => {
                // select/pselect6: the same readiness, as bit sets.
                let nfds = a[0].min(1024);
                let words = nfds.div_ceil(64);
                let mut count = 0;
                let mut sets = [vec![0u64; words as usize], vec![0u64; words as usize]];
                for (j, &addr) in [a[1], a[2]].iter().enumerate() {
                    if addr == 0 {
                        continue;
                    }
                    for w in 0..words {
                        let v = self.mem.read_u64(addr + 8 * w)?;
                        for bit in 0..64 {
                            let fd = (w * 64 + bit) as i32;
                            if v >> bit & 1 == 0 || fd as u64 >= nfds {
                                continue;
                            }
                            let Some(r) = self.readiness(fd) else {
                                return Ok(-EBADF);
                            };
                            let want = if j == 0 {
                                POLLIN | POLLHUP
                            } else {
                                POLLOUT | POLLERR
                            };
                            if r & want != 0 {
                                sets[j][w as usize] |= 1 << bit;
                                count += 1;
                            }
                        }
                    }
                }
                for (j, &addr) in [a[1], a[2], a[3]].iter().enumerate() {
                    if addr != 0 {
                        for w in 0..words {
                            let v = if j < 2 { sets[j][w as usize] } else { 0 };
                            self.mem.write_u64(addr + 8 * w, v)?;
                        }
                    }
                }
                if count == 0 {
                    let timeout = if a[4] == 0 {
                        None
                    } else {
                        let s = self.mem.read_u64(a[4])?;
                        let frac = self.mem.read_u64(a[4] + 8)?;
                        // select's timeval counts microseconds, pselect6's timespec nanoseconds.
                        let unit = if nr == 23 { 1000 } else { 1 };
                        Some(s.saturating_mul(1_000_000_000).saturating_add(frac * unit))
                    };
                    self.wait_nothing(timeout);
                }
                count
            }
            284 | 290 => {
                // eventfd / eventfd2(initval, flags)
                let flags = if nr == 290 { a[1] as i32 } else { 0 };
                if flags & !(1 | O_CLOEXEC | 0o4000) != 0 {
                    return Ok(-EINVAL);
                }
                let mut o = Ofd::new(OfdKind::Event(flags & 1 != 0), (flags & 0o4000) | 2);
                o.buffer = (a[0] & 0xffff_ffff).to_le_bytes().to_vec();
                let id = self.kernel.new_ofd(o);
                self.kernel.install_fd(0, id, flags & O_CLOEXEC != 0)
            }
            32 => {
                let id = tryp!(self.ofd_of(a[0]).ok_or(EBADF));
                self.kernel.install_fd(0, id, false)
            }
            33 | 292 => {
                let id = tryp!(self.ofd_of(a[0]).ok_or(EBADF));
                if a[1] >= 1024 {
                    return Ok(-EBADF);
                }
                if a[0] == a[1] {
                    return Ok(if nr == 292 { -EINVAL } else { a[1] as i64 });
                }
                self.kernel.close_fd(a[1] as i32);
                let ce = nr == 292 && a[2] as i32 & O_CLOEXEC != 0;
                self.kernel.fds.insert(a[1] as i32, (id, ce));
                a[1] as i64
            }
            72 => {
                // fcntl
                let fd = a[0] as i32;
                let Some(&(id, ce)) = self.kernel.fds.get(&fd) else {
                    return Ok(-EBADF);
                };
                match a[1] {
                    0 | 1030 => self.kernel.install_fd(a[2] as i32, id, a[1] == 1030),
                    1 => ce as i64,
                    2 => {
                        self.kernel.fds.insert(fd, (id, a[2] & 1 != 0));
                        0
                    }
                    3 => self.kernel.ofds[&id].flags as i64 & !O_CLOEXEC as i64,
                    4 => {
                        if let Some(o) = self.kernel.ofds.get_mut(&id) {
                            o.flags = (o.flags & O_ACCMODE) | (a[2] as i32 & (O_APPEND | 0o4000));
                        }
                        0
                    }
                    5..=7 | 36..=38 => 0, // locks: one process, always granted
                    1031 => 65536,        // F_SETPIPE_SZ
                    1032 => 65536,        // F_GETPIPE_SZ
                    _ => -EINVAL,
                }
            }
            74 | 75 | 221 | 285 => 0,
            76 | 77 => {
                let path = if nr == 77 {
                    let id = tryp!(self.ofd_of(a[0]).ok_or(EBADF));
                    match &self.kernel.ofds[&id].kind {
                        OfdKind::File(p) => p.clone(),
                        _ => return Ok(-EINVAL),
                    }
                } else {
                    let raw = tryp!(self.path_arg(a[0])?);
                    tryp!(self.resolve(AT_FDCWD, &raw, true))
                };
                if (a[1] as i64) < 0 || a[1] > 1 << 34 {
                    return Ok(-EINVAL);
                }
                let mut d = tryp!(self.file_data(&path).ok_or(ENOENT)).to_vec();
                d.resize(a[1] as usize, 0);
                self.set_file(&path, d, None);
                0
            }
            78 | 217 => {
                let id = tryp!(self.ofd_of(a[0]).ok_or(EBADF));
                let o = self.kernel.ofds[&id].clone();
                let OfdKind::Dir(_, entries) = &o.kind else {
                    return Ok(-ENOTDIR);
                };
                let mut out = Vec::new();
                let mut idx = o.offset as usize;
                while idx < entries.len() {
                    let (name, t, ino) = &entries[idx];
                    let rec = if nr == 217 {
                        (19 + name.len() + 1).next_multiple_of(8)
                    } else {
                        (18 + name.len() + 2).next_multiple_of(8)
                    };
                    if out.len() + rec > a[2] as usize {
                        break;
                    }
                    let mut r = vec![0u8; rec];
                    r[0..8].copy_from_slice(&ino.to_le_bytes());
                    r[8..16].copy_from_slice(&((idx + 1) as u64).to_le_bytes());
                    r[16..18].copy_from_slice(&(rec as u16).to_le_bytes());
                    if nr == 217 {
                        r[18] = *t;
                        r[19..19 + name.len()].copy_from_slice(name.as_bytes());
                    } else {
                        r[18..18 + name.len()].copy_from_slice(name.as_bytes());
                        r[rec - 1] = *t;
                    }
                    out.extend_from_slice(&r);
                    idx += 1;
                }
                if out.is_empty() && idx < entries.len() {
                    return Ok(-EINVAL);
                }
                self.mem.write_bytes(a[1], &out)?;
                if let Some(o) = self.kernel.ofds.get_mut(&id) {
                    o.offset = idx as u64;
                }
                out.len() as i64
            }
            79 => {
                let mut c = self.kernel.cwd.clone().into_bytes();
                c.push(0);
                if (a[1] as usize) < c.len() {
                    return Ok(-ERANGE);
                }
                self.mem.write_bytes(a[0], &c)?;
                c.len() as i64
            }
            80 | 81 => {
                let path = if nr == 81 {
                    let id = tryp!(self.ofd_of(a[0]).ok_or(EBADF));
                    match &self.kernel.ofds[&id].kind {
                        OfdKind::Dir(p, _) => p.clone(),
                        _ => return Ok(-ENOTDIR),
                    }
                } else {
                    let raw = tryp!(self.path_arg(a[0])?);
                    tryp!(self.resolve(AT_FDCWD, &raw, true))
                };
                match self.lookup(&path) {
                    Some(m) if m.kind == FileKind::Dir => {
                        self.kernel.cwd = path;
                        0
                    }
                    Some(_) => -ENOTDIR,
                    None => -ENOENT,
                }
            }
            82 | 264 | 316 => {
                let (d1, p1, d2, p2) = if nr == 82 {
                    (AT_FDCWD, a[0], AT_FDCWD, a[1])
                } else {
                    (a[0] as i32 as i64, a[1], a[2] as i32 as i64, a[3])
                };
                let r1 = tryp!(self.path_arg(p1)?);
                let r2 = tryp!(self.path_arg(p2)?);
                let from = tryp!(self.resolve(d1, &r1, false));
                let to = tryp!(self.resolve(d2, &r2, false));
                let Some(m) = self.lookup(&from) else {
                    return Ok(-ENOENT);
                };
                if from == to {
                    return Ok(0);
                }
                if nr == 316 && a[4] & 1 != 0 && self.lookup(&to).is_some() {
                    return Ok(-EEXIST);
                }
                self.move_node(&from, &to, &m);
                0
            }
            83 | 258 => {
                let (dirfd, pa, mode) = if nr == 83 {
                    (AT_FDCWD, a[0], a[1])
                } else {
                    (a[0] as i32 as i64, a[1], a[2])
                };
                let raw = tryp!(self.path_arg(pa)?);
                let path = tryp!(self.resolve(dirfd, &raw, false));
                if self.lookup(&path).is_some() {
                    return Ok(-EEXIST);
                }
                match self.lookup(parent(&path)) {
                    Some(p) if p.kind == FileKind::Dir => {}
                    _ => return Ok(-ENOENT),
                }
                let ino = self.kernel.data.fresh_ino();
                let mode = mode as u32 & !self.kernel.umask & 0o7777;
                let now = self.now_mtime();
                self.kernel.set_mtime(&path, now);
                self.kernel.data.set(
                    &path,
                    Node::Present {
                        kind: FileKind::Dir,
                        mode,
                        data: Arc::new(Vec::new()),
                        ino,
                    },
                );
                0
            }
            84 | 87 | 263 => {
                let (dirfd, pa, rmdir) = match nr {
                    84 => (AT_FDCWD, a[0], true),
                    87 => (AT_FDCWD, a[0], false),
                    _ => (a[0] as i32 as i64, a[1], a[2] & AT_REMOVEDIR != 0),
                };
                let raw = tryp!(self.path_arg(pa)?);
                let path = tryp!(self.resolve(dirfd, &raw, false));
                let Some(m) = self.lookup(&path) else {
                    return Ok(-ENOENT);
                };
                if rmdir {
                    if m.kind != FileKind::Dir {
                        return Ok(-ENOTDIR);
                    }
                    if self.dir_entries(&path).len() > 2 {
                        return Ok(-ENOTEMPTY);
                    }
                } else if m.kind == FileKind::Dir {
                    return Ok(-EISDIR);
                }
                self.remove_path(&path);
                0
            }
            86 | 265 => {
                let (d1, p1, d2, p2) = if nr == 86 {
                    (AT_FDCWD, a[0], AT_FDCWD, a[1])
                } else {
                    (a[0] as i32 as i64, a[1], a[2] as i32 as i64, a[3])
                };
                let r1 = tryp!(self.path_arg(p1)?);
                let r2 = tryp!(self.path_arg(p2)?);
                let from = tryp!(self.resolve(d1, &r1, false));
                let to = tryp!(self.resolve(d2, &r2, false));
                if self.lookup(&to).is_some() {
                    return Ok(-EEXIST);
                }
                let data = tryp!(self.file_data(&from).ok_or(EPERM));
                let m = tryp!(self.lookup(&from).ok_or(ENOENT));
                self.kernel.set_mtime(&to, m.mtime);
                self.kernel.data.set(
                    &to,
                    Node::Present {
                        kind: FileKind::File,
                        mode: m.mode,
                        data,
                        ino: m.ino,
                    },
                );
                0
            }
            88 | 266 => {
                let (target, dirfd, pa) = if nr == 88 {
                    (a[0], AT_FDCWD, a[1])
                } else {
                    (a[0], a[1] as i32 as i64, a[2])
                };
                let t = tryp!(self.path_arg(target)?);
                let raw = tryp!(self.path_arg(pa)?);
                let path = tryp!(self.resolve(dirfd, &raw, false));
                if self.lookup(&path).is_some() {
                    return Ok(-EEXIST);
                }
                let ino = self.kernel.data.fresh_ino();
                let now = self.now_mtime();
                self.kernel.set_mtime(&path, now);
                self.kernel.data.set(
                    &path,
                    Node::Present {
                        kind: FileKind::Symlink,
                        mode: 0o777,
                        data: Arc::new(t),
                        ino,
                    },
                );
                0
            }
            89 | 267 => {
                let (dirfd, pa, buf, len) = if nr == 89 {
                    (AT_FDCWD, a[0], a[1], a[2])
                } else {
                    (a[0] as i32 as i64, a[1], a[2], a[3])
                };
                let raw = tryp!(self.path_arg(pa)?);
                let path = tryp!(self.resolve(dirfd, &raw, false));
                match self.lookup(&path) {
                    Some(m) if m.kind == FileKind::Symlink => {
                        let t = tryp!(self.link_target(&path).ok_or(ENOENT));
                        let n = t.len().min(len as usize);
                        self.mem.write_bytes(buf, &t[..n])?;
                        n as i64
                    }
                    Some(_) => -EINVAL,
                    None => -ENOENT,
                }
            }
            90 | 91 | 268 => {
                let path = match nr {
                    91 => {
                        let id = tryp!(self.ofd_of(a[0]).ok_or(EBADF));
                        match &self.kernel.ofds[&id].kind {
                            OfdKind::File(p) | OfdKind::Dir(p, _) => p.clone(),
                            _ => return Ok(0),
                        }
                    }
                    90 => {
                        let raw = tryp!(self.path_arg(a[0])?);
                        tryp!(self.resolve(AT_FDCWD, &raw, true))
                    }
                    _ => {
                        let raw = tryp!(self.path_arg(a[1])?);
                        tryp!(self.resolve(a[0] as i32 as i64, &raw, true))
                    }
                };
                let mode = (if nr == 268 { a[2] } else { a[1] }) as u32 & 0o7777;
                let Some(m) = self.lookup(&path) else {
                    return Ok(-ENOENT);
                };
                let data = match m.kind {
                    FileKind::File => tryp!(self.file_data(&path).ok_or(ENOENT)),
                    FileKind::Dir => Arc::new(Vec::new()),
                    _ => return Ok(0),
                };
                self.kernel.set_mtime(&path, m.mtime);
                self.kernel.data.set(
                    &path,
                    Node::Present {
                        kind: m.kind,
                        mode,
                        data,
                        ino: m.ino,
                    },
                );
                0
            }
            92..=94 | 260 => 0, // chown family: accepted (single user)
            280 => {
                // utimensat(dirfd, path, times, flags): the modification time is kept (in the
                // data tree); access times are not tracked.
                let (dirfd, pa, times, flags) = (a[0] as i32 as i64, a[1], a[2], a[3]);
                let path = if pa == 0 {
                    match self.ofd_at(dirfd as i32) {
                        Some(Ofd {
                            kind: OfdKind::File(p) | OfdKind::Dir(p, _),
                            ..
                        }) => p.clone(),
                        Some(_) => return Ok(0),
                        None => return Ok(-EBADF),
                    }
                } else {
                    let raw = tryp!(self.path_arg(pa)?);
                    tryp!(self.resolve(dirfd, &raw, flags & AT_SYMLINK_NOFOLLOW == 0))
                };
                let Some(m) = self.lookup(&path) else {
                    return Ok(-ENOENT);
                };
                const UTIME_NOW: u64 = (1 << 30) - 1;
                const UTIME_OMIT: u64 = (1 << 30) - 2;
                let t = if times == 0 {
                    Some(self.now_mtime())
                } else {
                    let sec = self.mem.read_u64(times + 16)?;
                    let nsec = self.mem.read_u64(times + 24)?;
                    match nsec {
                        UTIME_OMIT => None,
                        UTIME_NOW => Some(self.now_mtime()),
                        n if n < 1_000_000_000 => Some((sec as i64, n as u32)),
                        _ => return Ok(-EINVAL),
                    }
                };
                if let Some(t) = t {
                    // The object must be in the tree to carry its own time.
                    if m.kind == FileKind::File {
                        let _ = self.file_data(&path);
                    }
                    if self.kernel.data.get(&path).is_some() || m.kind == FileKind::File {
                        self.kernel.set_mtime(&path, t);
                    }
                }
                0
            }
            132 => 0, // utime: accepted
            137 | 138 => {
                let mut b = [0u8; 120];
                b[0..8].copy_from_slice(&0xef53u64.to_le_bytes());
                b[8..16].copy_from_slice(&4096u64.to_le_bytes());
                b[16..24].copy_from_slice(&(1u64 << 20).to_le_bytes());
                b[24..32].copy_from_slice(&(1u64 << 19).to_le_bytes());
                b[32..40].copy_from_slice(&(1u64 << 19).to_le_bytes());
                b[64..72].copy_from_slice(&255u64.to_le_bytes());
                b[72..80].copy_from_slice(&4096u64.to_le_bytes());
                self.mem.write_bytes(a[1], &b)?;
                0
            }
            _ => -ENOSYS,
        })
    }

    fn move_node(&mut self, from: &str, to: &str, m: &Meta) {
        let node = match m.kind {
            FileKind::File => {
                let data = self.file_data(from).unwrap_or_default();
                Node::Present {
                    kind: FileKind::File,
                    mode: m.mode,
                    data,
                    ino: m.ino,
                }
            }
            FileKind::Symlink => {
                let t = self.link_target(from).unwrap_or_default();
                Node::Present {
                    kind: FileKind::Symlink,
                    mode: 0o777,
                    data: Arc::new(t),
                    ino: m.ino,
                }
            }
            FileKind::Dir => {
                // Move the children first (recursively through the listing).
                let entries = self.dir_entries(from);
                for (name, _, _) in entries.into_iter().skip(2) {
                    let f = format!("{from}/{name}");
                    let t = format!("{to}/{name}");
                    if let Some(cm) = self.lookup(&f) {
                        self.move_node(&f, &t, &cm);
                    }
                }
                Node::Present {
                    kind: FileKind::Dir,
                    mode: m.mode,
                    data: Arc::new(Vec::new()),
                    ino: m.ino,
                }
            }
            FileKind::CharDev => return,
        };
        self.kernel.data.set(to, node);
        self.kernel.set_mtime(to, m.mtime);
        self.remove_path(from);
        // Open descriptions follow the file.
        for o in self.kernel.ofds.values_mut() {
            if let OfdKind::File(p) = &mut o.kind {
                if p == from {
                    *p = to.to_string();
                }
            }
        }
    }
}
