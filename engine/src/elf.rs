//! ELF loading: parse a static x86-64 executable (ET_EXEC or static-PIE), map its segments and
//! build the initial stack as Linux does. Every field read from the file is bounds-checked; a
//! malformed file is an error, never a panic.

use crate::mem::{Memory, PROT_EXEC, PROT_READ, PROT_WRITE};

/// Why a file could not be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("not an ELF file")]
    NotElf,
    #[error("32-bit ELF files are not supported (fx86 runs x86-64 programs)")]
    Not64Bit,
    #[error("ELF file is for another machine (e_machine {0}), not x86-64")]
    WrongMachine(u16),
    #[error("not an executable (ELF type {0})")]
    NotExecutable(u16),
    #[error("corrupt ELF file: {0}")]
    Corrupt(&'static str),
    #[error("unsupported ELF file: {0}")]
    Unsupported(String),
}

/// Where a loaded program went.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub entry: u64,
    pub phdr: u64,
    pub phnum: u64,
    pub phent: u64,
    pub brk: u64,
    pub load_bias: u64,
    /// PT_INTERP path, if the program asks for a dynamic loader.
    pub interp: Option<String>,
    /// Where that loader was mapped (AT_BASE), once it is.
    pub interp_base: u64,
}

/// Load address for position-independent executables (Linux's ELF_ET_DYN_BASE without ASLR).
pub const PIE_BASE: u64 = 0x5555_5555_4000;

fn u16_at(b: &[u8], o: usize) -> Result<u16, LoadError> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(LoadError::Corrupt("truncated header"))
}
fn u32_at(b: &[u8], o: usize) -> Result<u32, LoadError> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(LoadError::Corrupt("truncated header"))
}
fn u64_at(b: &[u8], o: usize) -> Result<u64, LoadError> {
    b.get(o..o + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or(LoadError::Corrupt("truncated header"))
}

struct Phdr {
    ptype: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Checks the ELF identification only (for error messages before loading).
pub fn check_ident(file: &[u8]) -> Result<(), LoadError> {
    if file.len() < 4 || &file[0..4] != b"\x7fELF" {
        return Err(LoadError::NotElf);
    }
    if file.len() < 64 {
        return Err(LoadError::Corrupt("file shorter than the ELF header"));
    }
    if file[4] != 2 {
        return Err(LoadError::Not64Bit);
    }
    if file[5] != 1 {
        return Err(LoadError::Corrupt("not little-endian"));
    }
    let machine = u16_at(file, 18)?;
    if machine != 62 {
        return Err(LoadError::WrongMachine(machine));
    }
    Ok(())
}

/// Where a position-independent image goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The program: ET_EXEC at its addresses, ET_DYN at [`PIE_BASE`].
    Pie,
    /// The dynamic loader: ET_DYN only, top-down below the mmap base, as Linux does.
    TopDown,
}

/// Maps the program's segments into `mem`.
pub fn load(file: &[u8], mem: &mut Memory, name: &str) -> Result<Loaded, LoadError> {
    load_at(file, mem, name, Place::Pie)
}

/// Maps an ELF image's segments into `mem`, placed as `place` says.
pub fn load_at(
    file: &[u8],
    mem: &mut Memory,
    name: &str,
    place: Place,
) -> Result<Loaded, LoadError> {
    check_ident(file)?;
    let etype = u16_at(file, 16)?;
    if etype != 2 && etype != 3 {
        return Err(LoadError::NotExecutable(etype));
    }
    let entry = u64_at(file, 24)?;
    let phoff = u64_at(file, 32)? as usize;
    let phentsize = u16_at(file, 54)? as usize;
    let phnum = u16_at(file, 56)? as usize;
    if phentsize < 56 || phnum == 0 || phnum > 512 {
        return Err(LoadError::Corrupt("bad program header table"));
    }
    let mut phdrs = Vec::new();
    for i in 0..phnum {
        let o = phoff
            .checked_add(i * phentsize)
            .ok_or(LoadError::Corrupt("program header offset"))?;
        if o.checked_add(56).is_none_or(|e| e > file.len()) {
            return Err(LoadError::Corrupt("program headers beyond end of file"));
        }
        phdrs.push(Phdr {
            ptype: u32_at(file, o)?,
            flags: u32_at(file, o + 4)?,
            offset: u64_at(file, o + 8)?,
            vaddr: u64_at(file, o + 16)?,
            filesz: u64_at(file, o + 32)?,
            memsz: u64_at(file, o + 40)?,
        });
    }
    let mut interp = None;
    for p in &phdrs {
        if p.ptype == 3 {
            let s = p.offset as usize;
            let e = s
                .checked_add(p.filesz as usize)
                .ok_or(LoadError::Corrupt("PT_INTERP"))?;
            let bytes = file
                .get(s..e)
                .ok_or(LoadError::Corrupt("PT_INTERP beyond end of file"))?;
            let path = bytes.split(|&b| b == 0).next().unwrap_or_default();
            interp = Some(String::from_utf8_lossy(path).into_owned());
        }
    }
    let loads: Vec<&Phdr> = phdrs.iter().filter(|p| p.ptype == 1).collect();
    if loads.is_empty() {
        return Err(LoadError::Corrupt("no loadable segments"));
    }
    let lo = loads.iter().map(|p| p.vaddr).min().unwrap_or(0) & !0xfff;
    let hi = loads
        .iter()
        .map(|p| p.vaddr.saturating_add(p.memsz))
        .max()
        .unwrap_or(0);
    let bias = match (etype, place) {
        (2, Place::Pie) => 0,
        (3, Place::Pie) => PIE_BASE.wrapping_sub(lo),
        (3, Place::TopDown) => {
            let span = hi
                .checked_sub(lo)
                .and_then(|s| s.checked_add(0xfff))
                .map(|s| s & !0xfff)
                .filter(|&s| s > 0 && s < crate::mem::USER_END)
                .ok_or(LoadError::Corrupt("segment addresses"))?;
            let at = mem
                .find_free(span, crate::linux::mm::MMAP_BASE)
                .ok_or(LoadError::Corrupt("no room for the dynamic loader"))?;
            at.wrapping_sub(lo)
        }
        _ => return Err(LoadError::NotExecutable(etype)),
    };
    let mut brk = 0;
    let mut phdr_addr = None;
    for p in &phdrs {
        if p.ptype == 6 {
            phdr_addr = Some(p.vaddr + bias);
        }
    }
    for p in &loads {
        if p.filesz > p.memsz {
            return Err(LoadError::Corrupt("segment file size exceeds memory size"));
        }
        let start = p.vaddr.wrapping_add(bias);
        let end = start
            .checked_add(p.memsz)
            .ok_or(LoadError::Corrupt("segment size"))?;
        if end > crate::mem::USER_END || start < crate::mem::MMAP_MIN {
            return Err(LoadError::Corrupt("segment outside the user address space"));
        }
        let fs = p.offset as usize;
        let fe = fs
            .checked_add(p.filesz as usize)
            .ok_or(LoadError::Corrupt("segment offset"))?;
        let data = file
            .get(fs..fe)
            .ok_or(LoadError::Corrupt("segment beyond end of file"))?;
        let mut prot = 0;
        if p.flags & 4 != 0 {
            prot |= PROT_READ;
        }
        if p.flags & 2 != 0 {
            prot |= PROT_WRITE;
        }
        if p.flags & 1 != 0 {
            prot |= PROT_EXEC;
        }
        let map_start = start & !0xfff;
        let map_end = (end + 0xfff) & !0xfff;
        // Linux maps the whole file page around the segment: bytes before vaddr in the same
        // page come from the file too.
        let lead = (start - map_start) as usize;
        let page_off = fs.saturating_sub(lead);
        mem.map(map_start, map_end, prot, name);
        if let Some(lead_bytes) = file.get(page_off..fs) {
            if lead_bytes.len() == lead {
                mem.poke(map_start, lead_bytes);
            }
        }
        mem.poke(start, data);
        // As the kernel does, the rest of the last file page stays file content only up to
        // filesz; beyond that it is zero (already, in a fresh mapping).
        if phdr_addr.is_none() && p.offset == 0 {
            let phoff64 = phoff as u64;
            if phoff64 < p.filesz {
                phdr_addr = Some(start + phoff64);
            }
        }
        brk = brk.max(map_end);
    }
    Ok(Loaded {
        entry: entry
            .checked_add(bias)
            .ok_or(LoadError::Corrupt("entry point"))?,
        phdr: phdr_addr.unwrap_or(0),
        phnum: phnum as u64,
        phent: phentsize as u64,
        brk,
        load_bias: bias,
        interp,
        interp_base: 0,
    })
}

/// Auxiliary vector keys.
pub mod at {
    pub const NULL: u64 = 0;
    pub const PHDR: u64 = 3;
    pub const PHENT: u64 = 4;
    pub const PHNUM: u64 = 5;
    pub const PAGESZ: u64 = 6;
    pub const BASE: u64 = 7;
    pub const FLAGS: u64 = 8;
    pub const ENTRY: u64 = 9;
    pub const UID: u64 = 11;
    pub const EUID: u64 = 12;
    pub const GID: u64 = 13;
    pub const EGID: u64 = 14;
    pub const PLATFORM: u64 = 15;
    pub const HWCAP: u64 = 16;
    pub const CLKTCK: u64 = 17;
    pub const SECURE: u64 = 23;
    pub const RANDOM: u64 = 25;
    pub const HWCAP2: u64 = 26;
    pub const EXECFN: u64 = 31;
}

/// Top of the initial stack (as Linux without ASLR).
pub const STACK_TOP: u64 = 0x7fff_ffff_f000;
/// Size reserved for the main stack.
pub const STACK_SIZE: u64 = 8 << 20;

/// Builds the initial stack; returns the initial RSP and the auxv (for /proc/self/auxv).
pub fn build_stack(
    mem: &mut Memory,
    loaded: &Loaded,
    args: &[Vec<u8>],
    env: &[Vec<u8>],
    execfn: &[u8],
    random: [u8; 16],
    hwcap: u64,
) -> (u64, Vec<(u64, u64)>) {
    mem.map(
        STACK_TOP - STACK_SIZE,
        STACK_TOP,
        PROT_READ | PROT_WRITE,
        "[stack]",
    );
    let mut sp = STACK_TOP - 8; // a NULL word at the very top, as Linux leaves
    let push_bytes = |mem: &mut Memory, sp: &mut u64, b: &[u8]| {
        *sp -= b.len() as u64 + 1;
        mem.poke(*sp, b);
        mem.poke(*sp + b.len() as u64, &[0]);
        *sp
    };
    let execfn_addr = push_bytes(mem, &mut sp, execfn);
    let mut env_ptrs: Vec<u64> = env
        .iter()
        .rev()
        .map(|e| push_bytes(mem, &mut sp, e))
        .collect();
    env_ptrs.reverse();
    let mut arg_ptrs: Vec<u64> = args
        .iter()
        .rev()
        .map(|a| push_bytes(mem, &mut sp, a))
        .collect();
    arg_ptrs.reverse();
    sp &= !15;
    let platform = push_bytes(mem, &mut sp, b"x86_64");
    sp -= 16;
    sp &= !15;
    let rand_addr = sp;
    mem.poke(rand_addr, &random);
    let auxv: Vec<(u64, u64)> = vec![
        (at::HWCAP, hwcap),
        (at::PAGESZ, 4096),
        (at::CLKTCK, 100),
        (at::PHDR, loaded.phdr),
        (at::PHENT, loaded.phent),
        (at::PHNUM, loaded.phnum),
        (at::BASE, loaded.interp_base),
        (at::FLAGS, 0),
        (at::ENTRY, loaded.entry),
        (at::UID, 1000),
        (at::EUID, 1000),
        (at::GID, 1000),
        (at::EGID, 1000),
        (at::SECURE, 0),
        (at::RANDOM, rand_addr),
        (at::HWCAP2, 0),
        (at::EXECFN, execfn_addr),
        (at::PLATFORM, platform),
        (at::NULL, 0),
    ];
    let words = 1 + arg_ptrs.len() + 1 + env_ptrs.len() + 1 + auxv.len() * 2;
    sp -= words as u64 * 8;
    sp &= !15;
    let mut w = Vec::with_capacity(words * 8);
    w.extend_from_slice(&(args.len() as u64).to_le_bytes());
    for p in arg_ptrs {
        w.extend_from_slice(&p.to_le_bytes());
    }
    w.extend_from_slice(&0u64.to_le_bytes());
    for p in env_ptrs {
        w.extend_from_slice(&p.to_le_bytes());
    }
    w.extend_from_slice(&0u64.to_le_bytes());
    for (k, v) in &auxv {
        w.extend_from_slice(&k.to_le_bytes());
        w.extend_from_slice(&v.to_le_bytes());
    }
    mem.poke(sp, &w);
    (sp, auxv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_without_panic() {
        let mut m = Memory::default();
        assert_eq!(load(b"hello", &mut m, "x").unwrap_err(), LoadError::NotElf);
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(b"\x7fELF");
        h[4] = 1;
        assert_eq!(load(&h, &mut m, "x").unwrap_err(), LoadError::Not64Bit);
        h[4] = 2;
        h[5] = 1;
        h[18] = 62;
        h[16] = 2;
        h[54] = 56;
        h[56] = 1;
        h[32] = 0xff;
        assert!(matches!(
            load(&h, &mut m, "x").unwrap_err(),
            LoadError::Corrupt(_)
        ));
        for n in 0..64 {
            let _ = load(&h[..n], &mut m, "x");
        }
    }
}
