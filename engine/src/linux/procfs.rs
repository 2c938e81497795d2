//! The files under /proc and /sys that describe the process and the machine. They are made
//! from guest state and the CPU model, never read from the host: the host's would name fx86's
//! own pid, memory map and CPUs, which must not reach the guest.

use super::{Machine, GUEST_PID};

/// The part of `path` under the guest's own /proc directory (`/proc/self/...` or
/// `/proc/<pid>/...`): `Some("")` for the directory itself.
pub(crate) fn proc_self(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/proc/")?;
    let (first, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let pid = GUEST_PID.to_string();
    (first == "self" || first == "thread-self" || first == pid).then_some(rest)
}

/// The files fx86 makes in the guest's own /proc directory.
pub(crate) const SYNTHETIC: &[&str] = &[
    "auxv", "cmdline", "comm", "environ", "maps", "stat", "status",
];

/// Whether fx86 makes this file itself.
pub(crate) fn is_synthetic(path: &str) -> bool {
    proc_self(path).is_some_and(|r| SYNTHETIC.contains(&r))
        || matches!(
            path,
            "/proc/cpuinfo"
                | "/sys/devices/system/cpu/online"
                | "/sys/devices/system/cpu/possible"
                | "/sys/devices/system/cpu/present"
        )
}

/// Flag names for CPUID bits, as /proc/cpuinfo spells them: (leaf, register, bit, name).
const FLAGS: &[(u32, usize, u32, &str)] = &[
    (1, 3, 0, "fpu"),
    (1, 3, 4, "tsc"),
    (1, 3, 8, "cx8"),
    (1, 3, 15, "cmov"),
    (1, 3, 19, "clflush"),
    (1, 3, 23, "mmx"),
    (1, 3, 24, "fxsr"),
    (1, 3, 25, "sse"),
    (1, 3, 26, "sse2"),
    (0x8000_0001, 3, 11, "syscall"),
    (0x8000_0001, 3, 20, "nx"),
    (0x8000_0001, 3, 29, "lm"),
    (1, 2, 0, "pni"),
    (1, 2, 9, "ssse3"),
    (1, 2, 13, "cx16"),
    (1, 2, 19, "sse4_1"),
    (1, 2, 20, "sse4_2"),
    (1, 2, 23, "popcnt"),
    (1, 2, 26, "xsave"),
    (1, 2, 28, "avx"),
    (0x8000_0001, 2, 0, "lahf_lm"),
];

/// /proc/cpuinfo for the one CPU of the model; flags come from the model's CPUID.
pub fn cpuinfo() -> String {
    use crate::cpuid::cpuid;
    let flags: Vec<&str> = FLAGS
        .iter()
        .filter(|(leaf, reg, bit, _)| cpuid(*leaf, 0)[*reg] >> bit & 1 == 1)
        .map(|f| f.3)
        .collect();
    let sig = cpuid(1, 0)[0];
    let family = (sig >> 8) & 0xf;
    let model = ((sig >> 4) & 0xf) | (((sig >> 16) & 0xf) << 4);
    let mut brand = Vec::new();
    for leaf in 0x8000_0002..=0x8000_0004u32 {
        for r in cpuid(leaf, 0) {
            brand.extend_from_slice(&r.to_le_bytes());
        }
    }
    let brand = String::from_utf8_lossy(&brand)
        .trim_end_matches('\0')
        .to_string();
    format!(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: {family}\nmodel\t\t: {model}\n\
         model name\t: {brand}\nstepping\t: {}\ncpu MHz\t\t: 1000.000\ncache size\t: 8192 KB\n\
         physical id\t: 0\nsiblings\t: 1\ncore id\t\t: 0\ncpu cores\t: 1\napicid\t\t: 0\n\
         fpu\t\t: yes\nfpu_exception\t: yes\ncpuid level\t: {}\nwp\t\t: yes\nflags\t\t: {}\n\
         bogomips\t: 2000.00\nclflush size\t: 64\ncache_alignment\t: 64\n\
         address sizes\t: 40 bits physical, 48 bits virtual\npower management:\n\n",
        sig & 0xf,
        cpuid(0, 0)[0],
        flags.join(" ")
    )
}

impl Machine {
    /// Contents of a synthetic file at the moment it is opened.
    pub(crate) fn synthetic_file(&mut self, path: &str) -> Option<Vec<u8>> {
        let k = &self.kernel;
        let comm = {
            let argv0 = k.cmdline.split(|&b| b == 0).next().unwrap_or_default();
            let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
            String::from_utf8_lossy(&base[..base.len().min(15)]).into_owned()
        };
        Some(match proc_self(path) {
            Some("maps") => self.maps().into_bytes(),
            Some("auxv") => {
                let mut v = Vec::new();
                for (a, b) in &k.auxv {
                    v.extend_from_slice(&a.to_le_bytes());
                    v.extend_from_slice(&b.to_le_bytes());
                }
                v
            }
            Some("cmdline") => k.cmdline.to_vec(),
            Some("environ") => k.environ.to_vec(),
            Some("comm") => format!("{comm}\n").into_bytes(),
            Some("status") => format!(
                "Name:\t{comm}\nUmask:\t{:04o}\nState:\tR (running)\nTgid:\t{GUEST_PID}\nNgid:\t0\n\
                 Pid:\t{GUEST_PID}\nPPid:\t{}\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\n\
                 Gid:\t1000\t1000\t1000\t1000\nFDSize:\t64\nThreads:\t1\n\
                 SigBlk:\t{:016x}\nCpus_allowed:\t1\nCpus_allowed_list:\t0\n",
                k.umask,
                GUEST_PID - 1,
                k.sigmask
            )
            .into_bytes(),
            Some("stat") => format!(
                "{GUEST_PID} ({comm}) R {} {GUEST_PID} {GUEST_PID} 0 -1 4194304 0 0 0 0 {} 0 0 0 20 0 1 0 0 {} 0 \
                 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n",
                GUEST_PID - 1,
                self.now() / 10_000_000,
                self.mem.vmas.iter().map(|(s, v)| v.end - s).sum::<u64>()
            )
            .into_bytes(),
            _ => match path {
                "/proc/cpuinfo" => cpuinfo().into_bytes(),
                "/sys/devices/system/cpu/online"
                | "/sys/devices/system/cpu/possible"
                | "/sys/devices/system/cpu/present" => b"0\n".to_vec(),
                _ => return None,
            },
        })
    }

    /// /proc/self/maps from the guest's mappings.
    fn maps(&self) -> String {
        let mut s = String::new();
        for (start, v) in &self.mem.vmas {
            let p = |bit: u8, c: char| if v.prot & bit != 0 { c } else { '-' };
            let line = format!(
                "{start:08x}-{:08x} {}{}{}p 00000000 00:00 0",
                v.end,
                p(crate::mem::PROT_READ, 'r'),
                p(crate::mem::PROT_WRITE, 'w'),
                p(crate::mem::PROT_EXEC, 'x'),
            );
            if v.name.is_empty() {
                s.push_str(&line);
            } else {
                s.push_str(&format!("{line:<73}{}", v.name));
            }
            s.push('\n');
        }
        s
    }
}
