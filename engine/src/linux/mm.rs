//! Memory syscalls: mmap (anonymous and private file mappings), munmap, mprotect, mremap,
//! brk, madvise. Placement is deterministic: top-down from a fixed base, as Linux without ASLR.

use super::errno::*;
use super::{Machine, OfdKind};
use crate::exec::R;
use crate::mem::{MMAP_MIN, USER_END};

/// Where top-down mmap placement starts (Linux's mmap_base without ASLR).
pub const MMAP_BASE: u64 = 0x7fff_f7ff_f000;
const MAP_SHARED: u64 = 0x01;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_FIXED_NOREPLACE: u64 = 0x100000;

fn page_up(v: u64) -> Option<u64> {
    v.checked_add(0xfff).map(|x| x & !0xfff)
}

impl Machine {
    pub(super) fn sys_mm(&mut self, nr: u64) -> R<i64> {
        let a = self.args6();
        Ok(match nr {
            9 => self.sys_mmap(a)?,
            10 => {
                if a[0] & 0xfff != 0 {
                    return Ok(-EINVAL);
                }
                let Some(len) = page_up(a[1]) else {
                    return Ok(-ENOMEM);
                };
                let prot = (a[2] & 7) as u8;
                self.mem.forget_code(a[0], a[0].saturating_add(len));
                if len == 0 || self.mem.protect(a[0], a[0] + len, prot) {
                    0
                } else {
                    -ENOMEM
                }
            }
            11 => {
                let Some(len) = page_up(a[1]) else {
                    return Ok(-EINVAL);
                };
                if a[0] & 0xfff != 0
                    || len == 0
                    || a[0].checked_add(len).is_none_or(|e| e > USER_END)
                {
                    return Ok(-EINVAL);
                }
                self.mem.unmap(a[0], a[0] + len);
                self.mem.forget_code(a[0], a[0] + len);
                0
            }
            12 => self.sys_brk(a[0]) as i64,
            25 => self.sys_mremap(a),
            26 => 0,
            27 => {
                let Some(len) = page_up(a[1]) else {
                    return Ok(-ENOMEM);
                };
                let v = vec![1u8; (len / 4096) as usize];
                self.mem.write_bytes(a[2], &v)?;
                0
            }
            28 => {
                // MADV_DONTNEED / MADV_FREE on private anonymous memory: reads see zeros again.
                if a[2] == 4 || a[2] == 8 {
                    if let Some(len) = page_up(a[1]) {
                        if a[0] & 0xfff == 0 {
                            self.mem.pages.remove_range(a[0] >> 12, (a[0] + len) >> 12);
                            self.mem.flush_tlb();
                        }
                    }
                }
                0
            }
            _ => -ENOSYS,
        })
    }

    fn sys_mmap(&mut self, a: [u64; 6]) -> R<i64> {
        let (addr, len, prot, flags, fd, off) =
            (a[0], a[1], (a[2] & 7) as u8, a[3], a[4] as i32, a[5]);
        let Some(len) = page_up(len) else {
            return Ok(-ENOMEM);
        };
        if len == 0 || off & 0xfff != 0 || len > USER_END {
            return Ok(-EINVAL);
        }
        let data = if flags & MAP_ANONYMOUS == 0 {
            let Some(&(id, _)) = self.kernel.fds.get(&fd) else {
                return Ok(-EBADF);
            };
            match self.kernel.ofds[&id].kind.clone() {
                OfdKind::File(p) => {
                    if flags & MAP_SHARED != 0 && prot & crate::mem::PROT_WRITE != 0 {
                        self.warn_once(format!(
                            "shared writable mapping of {p}: writes through it are not written back to the file"
                        ));
                    }
                    Some((self.file_data(&p).unwrap_or_default(), p))
                }
                OfdKind::Zero => None,
                _ => return Ok(-19), // ENODEV
            }
        } else {
            None
        };
        let start = if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            if addr & 0xfff != 0
                || addr < MMAP_MIN
                || addr.checked_add(len).is_none_or(|e| e > USER_END)
            {
                return Ok(-EINVAL);
            }
            if flags & MAP_FIXED_NOREPLACE != 0 && self.mem.any_mapped(addr, addr + len) {
                return Ok(-EEXIST);
            }
            addr
        } else {
            let hint = addr & !0xfff;
            if hint >= MMAP_MIN
                && hint.checked_add(len).is_some_and(|e| e <= USER_END)
                && !self.mem.any_mapped(hint, hint + len)
            {
                hint
            } else {
                match self.mem.find_free(len, MMAP_BASE) {
                    Some(s) => s,
                    None => return Ok(-ENOMEM),
                }
            }
        };
        let name = data.as_ref().map(|(_, p)| p.clone()).unwrap_or_default();
        self.mem.map(start, start + len, prot, &name);
        if let Some((bytes, _)) = data {
            let s = (off as usize).min(bytes.len());
            let e = (off as usize).saturating_add(len as usize).min(bytes.len());
            if s < e {
                self.mem.poke(start, &bytes[s..e]);
            }
        }
        self.mem.forget_code(start, start + len);
        Ok(start as i64)
    }

    fn sys_brk(&mut self, want: u64) -> u64 {
        let cur = self.kernel.brk;
        if want < self.kernel.brk_start || want > USER_END {
            return cur;
        }
        let (Some(old_end), Some(new_end)) = (page_up(cur), page_up(want)) else {
            return cur;
        };
        if new_end > old_end {
            if self.mem.any_mapped(old_end, new_end) {
                return cur;
            }
            let prot = crate::mem::PROT_READ | crate::mem::PROT_WRITE;
            self.mem.map(old_end, new_end, prot, "[heap]");
        } else if new_end < old_end {
            self.mem.unmap(new_end, old_end);
        }
        self.kernel.brk = want;
        want
    }

    fn sys_mremap(&mut self, a: [u64; 6]) -> i64 {
        let (old, old_len, new_len, flags) = (a[0], a[1], a[2], a[3]);
        let (Some(old_len), Some(new_len)) = (page_up(old_len), page_up(new_len)) else {
            return -EINVAL;
        };
        if old & 0xfff != 0 || new_len == 0 {
            return -EINVAL;
        }
        let Some((_, vma)) = self.mem.vma_at(old) else {
            return -EFAULT;
        };
        let (prot, name) = (vma.prot, vma.name.clone());
        if new_len <= old_len {
            if new_len < old_len {
                self.mem.unmap(old + new_len, old + old_len);
            }
            return old as i64;
        }
        if flags & 2 == 0
            && !self.mem.any_mapped(old + old_len, old + new_len)
            && old + new_len <= USER_END
        {
            self.mem.map(old + old_len, old + new_len, prot, &name);
            return old as i64;
        }
        if flags & 1 == 0 {
            return -ENOMEM;
        }
        let dest = if flags & 2 != 0 {
            a[4]
        } else {
            match self.mem.find_free(new_len, MMAP_BASE) {
                Some(d) => d,
                None => return -ENOMEM,
            }
        };
        self.mem.map(dest, dest + new_len, prot, &name);
        self.mem
            .pages
            .move_range(old >> 12, dest >> 12, old_len >> 12);
        self.mem.unmap(old, old + old_len);
        self.mem.flush_tlb();
        self.mem.forget_code(old, old + old_len);
        self.mem.forget_code(dest, dest + new_len);
        dest as i64
    }
}
