//! The recording file: everything a run took from outside the guest, so that it replays bit
//! for bit anywhere (DESIGN.md §6).
//!
//! Layout (little-endian):
//!
//! ```text
//! "FX86REC\n"  version:u32
//! section*     kind:u8 len:u64 payload[len]
//! trailer      kind=0xFF len=32 blake3(all bytes before the trailer)
//! ```
//!
//! Sections: the manifest (program, args, env, cwd, seed), blobs (file contents stored once by
//! blake3 content hash, zstd-compressed), the host's answers (lstat/readlink/readdir/file
//! contents by path), stdin chunks with the icount that consumed them, state-hash checkpoints
//! and the end (icount, exit status, final hash). The whole file's hash is checked before any
//! section is parsed, and every blob's hash after it is decompressed: a truncated, bit-flipped,
//! foreign or newer file is refused with an error naming what is wrong.

use crate::FileKind;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"FX86REC\n";
pub const VERSION: u32 = 2;
/// Largest blob accepted (decompressed).
const MAX_BLOB: u64 = 1 << 32;

pub type Hash = [u8; 32];

/// What is wrong with a file that is not a usable recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

fn err<T>(msg: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError(msg.into()))
}

/// How the guest was started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Absolute path of the program on the recording machine (what /proc/self/exe names).
    pub exe: String,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub cwd: String,
    pub seed: u64,
    pub tty: bool,
    /// Blob holding the program's ELF file.
    pub program: Hash,
    /// The fx86 version that made the recording (informational).
    pub recorder: String,
}

/// One answer the host gave the guest's kernel layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// lstat: (kind, mode, size, mtime seconds, mtime nanoseconds).
    Lstat(Option<(FileKind, u32, u64, i64, u32)>),
    /// Whole file contents, as a blob.
    File(Option<Hash>),
    Link(Option<Vec<u8>>),
    Dir(Option<Vec<(String, FileKind)>>),
}

/// Which question an answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Query {
    Lstat,
    File,
    Link,
    Dir,
}

/// How the recorded run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct End {
    pub icount: u64,
    /// Exit status as `fx86 run` reports it (128+signal for a fatal signal).
    pub status: i32,
    /// Why it ended, in words ("exited with status 0", "SIGSEGV: ...", "interrupted").
    pub reason: String,
    pub hash: Hash,
}

/// A whole recording, in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    pub manifest: Manifest,
    /// Blobs by content hash (decompressed).
    pub blobs: BTreeMap<Hash, Vec<u8>>,
    pub answers: BTreeMap<(Query, String), Answer>,
    /// Stdin bytes by the icount of the read that consumed them.
    pub stdin: Vec<(u64, Vec<u8>)>,
    pub checkpoint_interval: u64,
    /// State hashes at icounts (multiples of the interval).
    pub checkpoints: Vec<(u64, Hash)>,
    pub end: End,
}

impl Recording {
    /// Stores `data` as a blob and returns its hash.
    pub fn add_blob(&mut self, data: Vec<u8>) -> Hash {
        let h = *blake3::hash(&data).as_bytes();
        self.blobs.entry(h).or_insert(data);
        h
    }

    /// Encodes the whole recording.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let mut section = |kind: u8, payload: Vec<u8>| {
            out.push(kind);
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(&payload);
        };
        let m = &self.manifest;
        let mut w = W::default();
        w.str(&m.exe);
        w.list(&m.args, |w, a| w.bytes(a));
        w.list(&m.env, |w, a| w.bytes(a));
        w.str(&m.cwd);
        w.u64(m.seed);
        w.u8(m.tty as u8);
        w.raw(&m.program);
        w.str(&m.recorder);
        section(S_MANIFEST, w.0);
        for (h, data) in &self.blobs {
            let mut w = W::default();
            w.raw(h);
            w.u64(data.len() as u64);
            w.raw(&zstd::bulk::compress(data, 3).expect("zstd compresses in memory"));
            section(S_BLOB, w.0);
        }
        let mut w = W::default();
        w.u64(self.answers.len() as u64);
        for ((q, path), a) in &self.answers {
            w.str(path);
            match a {
                Answer::Lstat(x) => {
                    w.u8(0);
                    w.opt(x, |w, (k, mode, size, sec, nsec)| {
                        w.u8(kind_code(*k));
                        w.u32(*mode);
                        w.u64(*size);
                        w.u64(*sec as u64);
                        w.u32(*nsec);
                    });
                }
                Answer::File(x) => {
                    w.u8(1);
                    w.opt(x, |w, h| w.raw(h));
                }
                Answer::Link(x) => {
                    w.u8(2);
                    w.opt(x, |w, l| w.bytes(l));
                }
                Answer::Dir(x) => {
                    w.u8(3);
                    w.opt(x, |w, es| {
                        w.list(es, |w, (n, k)| {
                            w.str(n);
                            w.u8(kind_code(*k));
                        })
                    });
                }
            }
            debug_assert_eq!(query_of(a), *q);
        }
        section(S_ANSWERS, w.0);
        let mut w = W::default();
        w.list(&self.stdin, |w, (ic, b)| {
            w.u64(*ic);
            w.bytes(b);
        });
        section(S_STDIN, w.0);
        let mut w = W::default();
        w.u64(self.checkpoint_interval);
        w.list(&self.checkpoints, |w, (ic, h)| {
            w.u64(*ic);
            w.raw(h);
        });
        section(S_CHECKPOINTS, w.0);
        let e = &self.end;
        let mut w = W::default();
        w.u64(e.icount);
        w.u32(e.status as u32);
        w.str(&e.reason);
        w.raw(&e.hash);
        section(S_END, w.0);
        let sum = *blake3::hash(&out).as_bytes();
        out.push(S_TRAILER);
        out.extend_from_slice(&32u64.to_le_bytes());
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes a recording, checking its integrity first.
    pub fn decode(bytes: &[u8]) -> Result<Recording, FormatError> {
        check_header(bytes)?;
        let body_len = bytes.len().checked_sub(41).filter(|&n| n >= 12);
        let Some(body_len) = body_len else {
            return err("truncated recording (it ends before its checksum)");
        };
        let trailer = &bytes[body_len..];
        if trailer[0] != S_TRAILER || trailer[1..9] != 32u64.to_le_bytes() {
            return err("truncated or incomplete recording (no checksum at its end)");
        }
        if blake3::hash(&bytes[..body_len]).as_bytes() != &trailer[9..] {
            return err("corrupt recording: the checksum does not match its contents");
        }
        Recording::decode_unchecked(&bytes[..body_len])
    }

    /// Parses the sections of a recording without the file checksum (the fuzz target uses
    /// this to reach the section parser; everything else uses `decode`).
    pub fn decode_unchecked(bytes: &[u8]) -> Result<Recording, FormatError> {
        check_header(bytes)?;
        let mut rec = Recording::default();
        let mut r = Rd::new(&bytes[12..], "recording");
        let mut seen_manifest = false;
        let mut seen_end = false;
        while !r.done() {
            let kind = r.u8()?;
            let len = r.u64()?;
            let payload = r.take(len)?;
            let name = section_name(kind);
            let mut s = Rd::new(payload, name);
            match kind {
                S_MANIFEST => {
                    let m = &mut rec.manifest;
                    m.exe = s.str()?;
                    m.args = s.list(|s| s.bytes())?;
                    m.env = s.list(|s| s.bytes())?;
                    m.cwd = s.str()?;
                    m.seed = s.u64()?;
                    m.tty = s.u8()? != 0;
                    m.program = s.hash()?;
                    m.recorder = s.str()?;
                    seen_manifest = true;
                }
                S_BLOB => {
                    let h = s.hash()?;
                    let n = s.u64()?;
                    if n > MAX_BLOB {
                        return err(format!("corrupt recording: a blob claims {n} bytes"));
                    }
                    let z = s.rest();
                    let data = decompress(z, n)?;
                    if data.len() as u64 != n || blake3::hash(&data).as_bytes() != &h {
                        return err("corrupt recording: a blob does not match its hash");
                    }
                    rec.blobs.insert(h, data);
                }
                S_ANSWERS => {
                    let n = s.u64()?;
                    for _ in 0..n {
                        let path = s.str()?;
                        let a = match s.u8()? {
                            0 => Answer::Lstat(s.opt(|s| {
                                Ok((s.kind()?, s.u32()?, s.u64()?, s.u64()? as i64, s.u32()?))
                            })?),
                            1 => Answer::File(s.opt(|s| s.hash())?),
                            2 => Answer::Link(s.opt(|s| s.bytes())?),
                            3 => Answer::Dir(s.opt(|s| s.list(|s| Ok((s.str()?, s.kind()?))))?),
                            t => return err(format!("corrupt recording: unknown answer kind {t}")),
                        };
                        rec.answers.insert((query_of(&a), path), a);
                    }
                }
                S_STDIN => rec.stdin = s.list(|s| Ok((s.u64()?, s.bytes()?)))?,
                S_CHECKPOINTS => {
                    rec.checkpoint_interval = s.u64()?;
                    rec.checkpoints = s.list(|s| Ok((s.u64()?, s.hash()?)))?;
                }
                S_END => {
                    rec.end = End {
                        icount: s.u64()?,
                        status: s.u32()? as i32,
                        reason: s.str()?,
                        hash: s.hash()?,
                    };
                    seen_end = true;
                }
                // Sections of later minor revisions are skipped.
                _ => {}
            }
            if !s.done() && kind <= S_END {
                return err(format!(
                    "corrupt recording: extra bytes in the {name} section"
                ));
            }
        }
        if !seen_manifest {
            return err("corrupt recording: no manifest");
        }
        if !seen_end {
            return err("incomplete recording: it has no end record");
        }
        if !rec.blobs.contains_key(&rec.manifest.program) {
            return err("corrupt recording: the program itself is missing");
        }
        for a in rec.answers.values() {
            if let Answer::File(Some(h)) = a {
                if !rec.blobs.contains_key(h) {
                    return err("corrupt recording: a file's contents are missing");
                }
            }
        }
        Ok(rec)
    }

    /// Reads and decodes a recording file.
    pub fn read(path: &Path) -> Result<Recording, FormatError> {
        let bytes = std::fs::read(path)
            .map_err(|e| FormatError(format!("cannot read {}: {e}", path.display())))?;
        Recording::decode(&bytes)
    }

    /// Writes the recording under a temporary name next to `path` and renames it into place, so
    /// that `path` is either absent or complete.
    pub fn write_atomically(&self, path: &Path) -> std::io::Result<u64> {
        use std::io::Write;
        let bytes = self.encode();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(
            ".{}.tmp{}",
            name.unwrap_or_else(|| "recording".into()),
            std::process::id()
        ));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map(|_| bytes.len() as u64)
    }
}

fn check_header(bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return err("not an fx86 recording (wrong magic bytes)");
    }
    if bytes.len() < 12 {
        return err("truncated recording (it ends inside its header)");
    }
    let v = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if v != VERSION {
        return err(format!(
            "recording format version {v} is not supported (this fx86 reads version {VERSION})"
        ));
    }
    Ok(())
}

const S_MANIFEST: u8 = 1;
const S_BLOB: u8 = 2;
const S_ANSWERS: u8 = 3;
const S_STDIN: u8 = 4;
const S_CHECKPOINTS: u8 = 5;
const S_END: u8 = 6;
const S_TRAILER: u8 = 0xFF;

/// Decompresses a blob that should hold `n` bytes; memory grows with the real output, not
/// with what the header claims.
fn decompress(z: &[u8], n: u64) -> Result<Vec<u8>, FormatError> {
    use std::io::Read;
    let bad = |e: std::io::Error| {
        FormatError(format!(
            "corrupt recording: a blob does not decompress ({e})"
        ))
    };
    let dec = zstd::stream::read::Decoder::new(z).map_err(bad)?;
    let mut data = Vec::with_capacity(n.min(1 << 20) as usize);
    dec.take(n + 1).read_to_end(&mut data).map_err(bad)?;
    Ok(data)
}

fn section_name(kind: u8) -> &'static str {
    match kind {
        S_MANIFEST => "manifest",
        S_BLOB => "blob",
        S_ANSWERS => "host answers",
        S_STDIN => "stdin",
        S_CHECKPOINTS => "checkpoints",
        S_END => "end",
        _ => "unknown",
    }
}

fn query_of(a: &Answer) -> Query {
    match a {
        Answer::Lstat(_) => Query::Lstat,
        Answer::File(_) => Query::File,
        Answer::Link(_) => Query::Link,
        Answer::Dir(_) => Query::Dir,
    }
}

fn kind_code(k: FileKind) -> u8 {
    match k {
        FileKind::File => 0,
        FileKind::Dir => 1,
        FileKind::Symlink => 2,
        FileKind::CharDev => 3,
    }
}

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.raw(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn list<T>(&mut self, items: &[T], mut f: impl FnMut(&mut W, &T)) {
        self.u64(items.len() as u64);
        for i in items {
            f(self, i);
        }
    }
    fn opt<T>(&mut self, v: &Option<T>, f: impl FnOnce(&mut W, &T)) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                f(self, x);
            }
        }
    }
}

/// A bounds-checked reader: every read past the end is an error naming the section.
struct Rd<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Rd<'a> {
        Rd { b, what }
    }
    fn done(&self) -> bool {
        self.b.is_empty()
    }
    fn take(&mut self, n: u64) -> Result<&'a [u8], FormatError> {
        if n > self.b.len() as u64 {
            return err(format!(
                "truncated or corrupt recording (the {} section is cut short)",
                self.what
            ));
        }
        let (a, rest) = self.b.split_at(n as usize);
        self.b = rest;
        Ok(a)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn hash(&mut self) -> Result<Hash, FormatError> {
        Ok(self.take(32)?.try_into().expect("32"))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, FormatError> {
        let n = self.u64()?;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, FormatError> {
        let b = self.bytes()?;
        String::from_utf8(b).map_err(|_| {
            FormatError(format!(
                "corrupt recording: bad text in the {} section",
                self.what
            ))
        })
    }
    fn kind(&mut self) -> Result<FileKind, FormatError> {
        Ok(match self.u8()? {
            0 => FileKind::File,
            1 => FileKind::Dir,
            2 => FileKind::Symlink,
            3 => FileKind::CharDev,
            k => return err(format!("corrupt recording: unknown file kind {k}")),
        })
    }
    fn list<T>(
        &mut self,
        mut f: impl FnMut(&mut Rd<'a>) -> Result<T, FormatError>,
    ) -> Result<Vec<T>, FormatError> {
        let n = self.u64()?;
        // Every element takes at least one byte: a count beyond that is corrupt (and must
        // not drive an allocation).
        if n > self.b.len() as u64 {
            return err(format!(
                "corrupt recording: impossible count in the {} section",
                self.what
            ));
        }
        (0..n).map(|_| f(self)).collect()
    }
    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Rd<'a>) -> Result<T, FormatError>,
    ) -> Result<Option<T>, FormatError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(f(self)?)),
            t => err(format!(
                "corrupt recording: bad option tag {t} in the {} section",
                self.what
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Recording {
        let mut r = Recording::default();
        let prog = r.add_blob(b"\x7fELF pretend".to_vec());
        let file = r.add_blob(vec![7u8; 100_000]);
        r.manifest = Manifest {
            exe: "/bin/x".into(),
            args: vec![b"x".to_vec(), b"-v".to_vec()],
            env: vec![b"A=1".to_vec()],
            cwd: "/tmp".into(),
            seed: 9,
            tty: false,
            program: prog,
            recorder: "fx86 test".into(),
        };
        r.answers.insert(
            (Query::Lstat, "/etc/x".into()),
            Answer::Lstat(Some((FileKind::File, 0o644, 100_000, 1_700_000_000, 5))),
        );
        r.answers
            .insert((Query::File, "/etc/x".into()), Answer::File(Some(file)));
        r.answers.insert(
            (Query::Link, "/l".into()),
            Answer::Link(Some(b"/t".to_vec())),
        );
        r.answers.insert(
            (Query::Dir, "/d".into()),
            Answer::Dir(Some(vec![("a".into(), FileKind::Dir)])),
        );
        r.answers
            .insert((Query::File, "/missing".into()), Answer::File(None));
        r.stdin = vec![(10, b"hello".to_vec()), (99, Vec::new())];
        r.checkpoint_interval = 1000;
        r.checkpoints = vec![(1000, [1; 32]), (2000, [2; 32])];
        r.end = End {
            icount: 2500,
            status: 139,
            reason: "SIGSEGV".into(),
            hash: [3; 32],
        };
        r
    }

    #[test]
    fn round_trips_and_compresses() {
        let r = sample();
        let b = r.encode();
        assert!(b.len() < 10_000, "the 100 KB file is compressed");
        assert_eq!(Recording::decode(&b).unwrap(), r);
    }

    #[test]
    fn refuses_damaged_files_without_panicking() {
        let b = sample().encode();
        assert!(Recording::decode(b"hello world, not a recording")
            .unwrap_err()
            .0
            .contains("not an fx86 recording"));
        let mut v = b.clone();
        v[8] = 1;
        assert!(Recording::decode(&v).unwrap_err().0.contains("version 1"));
        v[8] = 3;
        assert!(Recording::decode(&v).unwrap_err().0.contains("version 3"));
        for cut in [0, 5, 11, 12, 40, b.len() / 2, b.len() - 1] {
            assert!(Recording::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        for i in (12..b.len()).step_by(7) {
            let mut v = b.clone();
            v[i] ^= 0x10;
            let e = Recording::decode(&v).unwrap_err();
            assert!(e.0.contains("corrupt") || e.0.contains("truncated"), "{e}");
        }
        // The section parser alone (as the fuzz target drives it) never panics either.
        for i in 12..b.len() - 41 {
            let mut v = b[..b.len() - 41].to_vec();
            v[i] = v[i].wrapping_add(0x55);
            let _ = Recording::decode_unchecked(&v);
            let _ = Recording::decode_unchecked(&v[..i]);
        }
    }
}
