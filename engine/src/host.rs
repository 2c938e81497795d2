//! What the engine needs from outside the guest, supplied by the front end: the guest's stdin,
//! where its stdout/stderr go, fx86's own diagnostics, and a read-only view of the host file
//! system to import files from. Recordings and replays supply their own `Host`. The engine
//! never does terminal or network I/O itself.

use fx86_snapshots::FileKind;

/// Metadata of a host file system object (lstat semantics).
#[derive(Clone, Debug)]
pub struct HostStat {
    pub kind: FileKind,
    pub mode: u32,
    pub size: u64,
    /// Modification time (seconds and nanoseconds since the epoch): an input like the
    /// contents (programs such as Python compare it with their caches).
    pub mtime: (i64, u32),
}

/// The outside world as the engine sees it.
pub trait Host: Send {
    /// Up to `max` bytes of the guest's stdin; empty at end of input.
    fn read_stdin(&mut self, max: usize) -> Vec<u8>;
    /// Guest output on fd 1 or 2.
    fn write_output(&mut self, fd: i32, data: &[u8]);
    /// One line of fx86's own diagnostics (unknown syscalls, unimplemented instructions).
    fn diagnostic(&mut self, msg: &str);
    /// lstat of a host path.
    fn lstat(&mut self, path: &str) -> Option<HostStat>;
    /// Whole contents of a host file (shared, so that the data tree can keep the same copy).
    fn read_file(&mut self, path: &str) -> Option<std::sync::Arc<Vec<u8>>>;
    /// Target of a host symlink.
    fn read_link(&mut self, path: &str) -> Option<Vec<u8>>;
    /// Names and kinds in a host directory.
    fn list_dir(&mut self, path: &str) -> Option<Vec<(String, FileKind)>>;
    /// Told the icount of each syscall before it runs (replaying hosts key their logs on it).
    fn at_icount(&mut self, _icount: u64) {}
    /// Whether `at_icount` and `event` need exact icounts (a run on the KVM backend then
    /// settles its native stretches at every syscall).
    fn needs_icount(&self) -> bool {
        false
    }
    /// Whether reads from stdin need their exact icount (`at_icount` keys input on it for
    /// recordings and replays). A host that only passes input through does not, and on the
    /// KVM backend a read then need not wait for native stretches to be settled.
    fn keys_stdin(&self) -> bool {
        true
    }
    /// Told of each guest event (syscall, signal) as it happens, for timelines to mark.
    fn event(&mut self, _ev: GuestEvent) {}
    /// Whether the icounts `at_icount` and `event` give from now on are inexact: on the KVM
    /// backend, without the instructions of native stretches not settled yet (see `settled`).
    fn inexact(&mut self, _yes: bool) {}
    /// Native stretches were settled: an inexact icount `x` given since the last call is
    /// `x + n` for the last `(from, n)` in `map` with `from <= x` (`x` if none).
    fn settled(&mut self, _map: &[(u64, u64)]) {}
}

/// Something that happened in the guest at an icount, worth marking on a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestEvent {
    pub icount: u64,
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A system call (its number) about to run.
    Syscall(u64),
    /// A signal (its number) about to be delivered, to a handler or fatally.
    Signal(i32),
}

/// The host as it is: real stdin/stdout/stderr and the real (read-only) file system.
#[derive(Default)]
pub struct StdHost {
    /// Collect guest output here instead of printing it (tests and the demo).
    pub capture: Option<Vec<u8>>,
    /// Diagnostics collected instead of printed, when capturing.
    pub diagnostics: Vec<String>,
    /// Stdin bytes to feed instead of the real stdin (tests).
    pub stdin: Option<std::collections::VecDeque<u8>>,
    /// Send the guest's stdout to stderr (when stdout carries a protocol, as gdbserver --stdio).
    pub stdout_to_stderr: bool,
}

impl Host for StdHost {
    fn read_stdin(&mut self, max: usize) -> Vec<u8> {
        if let Some(q) = &mut self.stdin {
            let n = max.min(q.len());
            return q.drain(..n).collect();
        }
        use std::io::Read;
        let mut buf = vec![0u8; max.min(1 << 20)];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                buf
            }
            Err(_) => Vec::new(),
        }
    }

    fn write_output(&mut self, fd: i32, data: &[u8]) {
        use std::io::Write;
        if let Some(c) = &mut self.capture {
            c.extend_from_slice(data);
            return;
        }
        if fd == 2 || self.stdout_to_stderr {
            let _ = std::io::stderr().write_all(data);
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(data);
            let _ = o.flush();
        }
    }

    fn keys_stdin(&self) -> bool {
        false
    }

    fn diagnostic(&mut self, msg: &str) {
        if self.capture.is_some() {
            self.diagnostics.push(msg.to_string());
        } else {
            eprintln!("fx86: {msg}");
        }
    }

    fn lstat(&mut self, path: &str) -> Option<HostStat> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let md = std::fs::symlink_metadata(path).ok()?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_char_device() {
            FileKind::CharDev
        } else {
            return None;
        };
        use std::os::unix::fs::MetadataExt;
        Some(HostStat {
            kind,
            mode: md.permissions().mode() & 0o7777,
            size: md.len(),
            mtime: (md.mtime(), md.mtime_nsec().clamp(0, 999_999_999) as u32),
        })
    }

    fn read_file(&mut self, path: &str) -> Option<std::sync::Arc<Vec<u8>>> {
        std::fs::read(path).ok().map(std::sync::Arc::new)
    }

    fn read_link(&mut self, path: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        std::fs::read_link(path)
            .ok()
            .map(|p| p.as_os_str().as_bytes().to_vec())
    }

    fn list_dir(&mut self, path: &str) -> Option<Vec<(String, FileKind)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(path).ok()? {
            let e = e.ok()?;
            let ft = e.file_type().ok()?;
            let kind = if ft.is_dir() {
                FileKind::Dir
            } else if ft.is_symlink() {
                FileKind::Symlink
            } else {
                FileKind::File
            };
            v.push((e.file_name().to_string_lossy().into_owned(), kind));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Some(v)
    }
}
