//! qXfer objects: the executable's path (so gdb finds symbols without `file`) and the auxv.

use crate::target::Fx86Target;
use gdbstub::common::Pid;
use gdbstub::target::ext::auxv::Auxv;
use gdbstub::target::ext::exec_file::ExecFile;
use gdbstub::target::TargetResult;

fn copy_range(data: &[u8], offset: u64, length: usize, buf: &mut [u8]) -> usize {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(length).min(data.len());
    let n = (end - start).min(buf.len());
    buf[..n].copy_from_slice(&data[start..start + n]);
    n
}

impl ExecFile for Fx86Target {
    fn get_exec_file(
        &self,
        _pid: Option<Pid>,
        offset: u64,
        length: usize,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        Ok(copy_range(self.exe.as_bytes(), offset, length, buf))
    }
}

impl Auxv for Fx86Target {
    fn get_auxv(&self, offset: u64, length: usize, buf: &mut [u8]) -> TargetResult<usize, Self> {
        Ok(copy_range(&self.auxv_bytes(), offset, length, buf))
    }
}

impl Fx86Target {
    fn auxv_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (k, val) in &self.auxv {
            v.extend_from_slice(&k.to_le_bytes());
            v.extend_from_slice(&val.to_le_bytes());
        }
        v
    }
}
