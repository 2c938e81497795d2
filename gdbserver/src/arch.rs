//! Our own x86-64 `Arch` for gdbstub: gdbstub_arch's register set lacks `fs_base`, `gs_base`
//! and `orig_rax`, which gdb on Linux needs (thread-local variables, syscall restarts). The
//! target description follows gdb's own feature files (core, sse, linux, segments), and the
//! `g` packet carries the registers in that order.

use gdbstub::arch::{Arch, RegId, Registers};
use std::num::NonZeroUsize;

/// x86-64 Linux as fx86 presents it to gdb.
pub enum X86_64Linux {}

/// Every register gdb sees, in target-description order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Regs {
    /// rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15 (gdb's order).
    pub gpr: [u64; 16],
    pub rip: u64,
    pub eflags: u32,
    /// cs, ss, ds, es, fs, gs.
    pub seg: [u32; 6],
    /// st0..st7 (relative to the stack top), 80 bits each.
    pub st: [[u8; 10]; 8],
    /// fctrl, fstat, ftag, fiseg, fioff, foseg, fooff, fop.
    pub fpu: [u32; 8],
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    pub orig_rax: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

const SIZES: usize = 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4 + 8 + 8 + 8;

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        let mut out = |b: &[u8]| b.iter().for_each(|&x| write_byte(Some(x)));
        for r in self.gpr {
            out(&r.to_le_bytes());
        }
        out(&self.rip.to_le_bytes());
        out(&self.eflags.to_le_bytes());
        for s in self.seg {
            out(&s.to_le_bytes());
        }
        for st in &self.st {
            out(st);
        }
        for f in self.fpu {
            out(&f.to_le_bytes());
        }
        for x in self.xmm {
            out(&x.to_le_bytes());
        }
        out(&self.mxcsr.to_le_bytes());
        out(&self.orig_rax.to_le_bytes());
        out(&self.fs_base.to_le_bytes());
        out(&self.gs_base.to_le_bytes());
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() < SIZES {
            return Err(());
        }
        let mut pos = 0;
        let mut take = |n: usize| {
            let s = &bytes[pos..pos + n];
            pos += n;
            s
        };
        let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
        let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap_or([0; 4]));
        for r in self.gpr.iter_mut() {
            *r = u64_of(take(8));
        }
        self.rip = u64_of(take(8));
        self.eflags = u32_of(take(4));
        for s in self.seg.iter_mut() {
            *s = u32_of(take(4));
        }
        for st in self.st.iter_mut() {
            st.copy_from_slice(take(10));
        }
        for f in self.fpu.iter_mut() {
            *f = u32_of(take(4));
        }
        for x in self.xmm.iter_mut() {
            *x = u128::from_le_bytes(take(16).try_into().unwrap_or([0; 16]));
        }
        self.mxcsr = u32_of(take(4));
        self.orig_rax = u64_of(take(8));
        self.fs_base = u64_of(take(8));
        self.gs_base = u64_of(take(8));
        Ok(())
    }
}

/// Single-register access is not offered; gdb uses the `g`/`G` packets.
#[derive(Debug)]
pub struct NoRegId;

impl RegId for NoRegId {
    fn from_raw_id(_id: usize) -> Option<(Self, Option<NonZeroUsize>)> {
        None
    }
}

impl Arch for X86_64Linux {
    type Usize = u64;
    type Registers = Regs;
    type BreakpointKind = usize;
    type RegId = NoRegId;

    fn target_description_xml() -> Option<&'static str> {
        Some(TARGET_XML)
    }
}

const TARGET_XML: &str = r#"<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<osabi>GNU/Linux</osabi>
<feature name="org.gnu.gdb.i386.core">
<reg name="rax" bitsize="64" type="int64"/>
<reg name="rbx" bitsize="64" type="int64"/>
<reg name="rcx" bitsize="64" type="int64"/>
<reg name="rdx" bitsize="64" type="int64"/>
<reg name="rsi" bitsize="64" type="int64"/>
<reg name="rdi" bitsize="64" type="int64"/>
<reg name="rbp" bitsize="64" type="data_ptr"/>
<reg name="rsp" bitsize="64" type="data_ptr"/>
<reg name="r8" bitsize="64" type="int64"/>
<reg name="r9" bitsize="64" type="int64"/>
<reg name="r10" bitsize="64" type="int64"/>
<reg name="r11" bitsize="64" type="int64"/>
<reg name="r12" bitsize="64" type="int64"/>
<reg name="r13" bitsize="64" type="int64"/>
<reg name="r14" bitsize="64" type="int64"/>
<reg name="r15" bitsize="64" type="int64"/>
<reg name="rip" bitsize="64" type="code_ptr"/>
<reg name="eflags" bitsize="32" type="int32"/>
<reg name="cs" bitsize="32" type="int32"/>
<reg name="ss" bitsize="32" type="int32"/>
<reg name="ds" bitsize="32" type="int32"/>
<reg name="es" bitsize="32" type="int32"/>
<reg name="fs" bitsize="32" type="int32"/>
<reg name="gs" bitsize="32" type="int32"/>
<reg name="st0" bitsize="80" type="i387_ext"/>
<reg name="st1" bitsize="80" type="i387_ext"/>
<reg name="st2" bitsize="80" type="i387_ext"/>
<reg name="st3" bitsize="80" type="i387_ext"/>
<reg name="st4" bitsize="80" type="i387_ext"/>
<reg name="st5" bitsize="80" type="i387_ext"/>
<reg name="st6" bitsize="80" type="i387_ext"/>
<reg name="st7" bitsize="80" type="i387_ext"/>
<reg name="fctrl" bitsize="32" type="int" group="float"/>
<reg name="fstat" bitsize="32" type="int" group="float"/>
<reg name="ftag" bitsize="32" type="int" group="float"/>
<reg name="fiseg" bitsize="32" type="int" group="float"/>
<reg name="fioff" bitsize="32" type="int" group="float"/>
<reg name="foseg" bitsize="32" type="int" group="float"/>
<reg name="fooff" bitsize="32" type="int" group="float"/>
<reg name="fop" bitsize="32" type="int" group="float"/>
</feature>
<feature name="org.gnu.gdb.i386.sse">
<vector id="v4f" type="ieee_single" count="4"/>
<vector id="v2d" type="ieee_double" count="2"/>
<vector id="v16i8" type="int8" count="16"/>
<vector id="v8i16" type="int16" count="8"/>
<vector id="v4i32" type="int32" count="4"/>
<vector id="v2i64" type="int64" count="2"/>
<union id="vec128">
<field name="v4_float" type="v4f"/>
<field name="v2_double" type="v2d"/>
<field name="v16_int8" type="v16i8"/>
<field name="v8_int16" type="v8i16"/>
<field name="v4_int32" type="v4i32"/>
<field name="v2_int64" type="v2i64"/>
<field name="uint128" type="uint128"/>
</union>
<reg name="xmm0" bitsize="128" type="vec128"/>
<reg name="xmm1" bitsize="128" type="vec128"/>
<reg name="xmm2" bitsize="128" type="vec128"/>
<reg name="xmm3" bitsize="128" type="vec128"/>
<reg name="xmm4" bitsize="128" type="vec128"/>
<reg name="xmm5" bitsize="128" type="vec128"/>
<reg name="xmm6" bitsize="128" type="vec128"/>
<reg name="xmm7" bitsize="128" type="vec128"/>
<reg name="xmm8" bitsize="128" type="vec128"/>
<reg name="xmm9" bitsize="128" type="vec128"/>
<reg name="xmm10" bitsize="128" type="vec128"/>
<reg name="xmm11" bitsize="128" type="vec128"/>
<reg name="xmm12" bitsize="128" type="vec128"/>
<reg name="xmm13" bitsize="128" type="vec128"/>
<reg name="xmm14" bitsize="128" type="vec128"/>
<reg name="xmm15" bitsize="128" type="vec128"/>
<reg name="mxcsr" bitsize="32" type="int" group="vector"/>
</feature>
<feature name="org.gnu.gdb.i386.linux">
<reg name="orig_rax" bitsize="64" type="int" group="system"/>
</feature>
<feature name="org.gnu.gdb.i386.segments">
<reg name="fs_base" bitsize="64" type="int"/>
<reg name="gs_base" bitsize="64" type="int"/>
</feature>
</target>
"#;
