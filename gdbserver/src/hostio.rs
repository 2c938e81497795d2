//! gdb's `vFile` file access: gdb reads the program and its shared libraries from the guest's
//! file system (the data tree and the read-only host view behind it, or a recording's files)
//! rather than from the machine gdb runs on. A replay on another machine thus gets the very
//! libraries the recorded run used. Read-only: nothing gdb does here changes the guest.

use crate::target::Fx86Target;
use gdbstub::target::ext::host_io::{
    FsKind, HostIo, HostIoClose, HostIoCloseOps, HostIoErrno, HostIoError, HostIoFstat,
    HostIoFstatOps, HostIoOpen, HostIoOpenFlags, HostIoOpenMode, HostIoOpenOps, HostIoPread,
    HostIoPreadOps, HostIoResult, HostIoSetfs, HostIoSetfsOps, HostIoStat,
};
use std::sync::Arc;

impl HostIo for Fx86Target {
    fn support_open(&mut self) -> Option<HostIoOpenOps<'_, Self>> {
        Some(self)
    }
    fn support_close(&mut self) -> Option<HostIoCloseOps<'_, Self>> {
        Some(self)
    }
    fn support_pread(&mut self) -> Option<HostIoPreadOps<'_, Self>> {
        Some(self)
    }
    fn support_fstat(&mut self) -> Option<HostIoFstatOps<'_, Self>> {
        Some(self)
    }
    fn support_setfs(&mut self) -> Option<HostIoSetfsOps<'_, Self>> {
        Some(self)
    }
}

impl HostIoOpen for Fx86Target {
    fn open(
        &mut self,
        filename: &[u8],
        flags: HostIoOpenFlags,
        _mode: HostIoOpenMode,
    ) -> HostIoResult<u32, Self> {
        if flags.bits() & 3 != 0 {
            return Err(HostIoError::Errno(HostIoErrno::EACCES));
        }
        let path = String::from_utf8_lossy(filename).into_owned();
        let data = match &self.exe_bytes {
            Some(b) if path == self.exe => Some(b.clone()),
            _ => self.tl.machine().peek_file(&path),
        };
        let data = data.ok_or(HostIoError::Errno(HostIoErrno::ENOENT))?;
        if self.files.len() >= 64 {
            return Err(HostIoError::Errno(HostIoErrno::EMFILE));
        }
        let fd = (0..u32::MAX)
            .find(|fd| !self.files.contains_key(fd))
            .ok_or(HostIoError::Errno(HostIoErrno::EMFILE))?;
        self.files.insert(fd, data);
        Ok(fd)
    }
}

impl Fx86Target {
    fn file(&self, fd: u32) -> HostIoResult<&Arc<Vec<u8>>, Self> {
        self.files
            .get(&fd)
            .ok_or(HostIoError::Errno(HostIoErrno::EBADF))
    }
}

impl HostIoClose for Fx86Target {
    fn close(&mut self, fd: u32) -> HostIoResult<(), Self> {
        self.files
            .remove(&fd)
            .map(|_| ())
            .ok_or(HostIoError::Errno(HostIoErrno::EBADF))
    }
}

impl HostIoPread for Fx86Target {
    fn pread(
        &mut self,
        fd: u32,
        count: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> HostIoResult<usize, Self> {
        let data = self.file(fd)?;
        let start = (offset as usize).min(data.len());
        let n = count.min(buf.len()).min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
}

impl HostIoFstat for Fx86Target {
    fn fstat(&mut self, fd: u32) -> HostIoResult<HostIoStat, Self> {
        let size = self.file(fd)?.len() as u64;
        Ok(HostIoStat {
            st_dev: 0,
            st_ino: 0,
            st_mode: HostIoOpenMode::S_IFREG
                | HostIoOpenMode::S_IRUSR
                | HostIoOpenMode::S_IRGRP
                | HostIoOpenMode::S_IROTH
                | HostIoOpenMode::S_IXUSR,
            st_nlink: 1,
            st_uid: 1000,
            st_gid: 1000,
            st_rdev: 0,
            st_size: size,
            st_blksize: 4096,
            st_blocks: size.div_ceil(512),
            st_atime: 0,
            st_mtime: 0,
            st_ctime: 0,
        })
    }
}

impl HostIoSetfs for Fx86Target {
    fn setfs(&mut self, _fs: FsKind) -> HostIoResult<(), Self> {
        // One process: every file system view is the guest's.
        Ok(())
    }
}
