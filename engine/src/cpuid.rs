//! The one CPU model fx86 presents. It advertises only what the engine implements: x87, MMX,
//! SSE, SSE2, CMOV, CX8/CX16, POPCNT, FXSR, XSAVE with XCR0 = x87|SSE (so AVX is off), LAHF/SAHF
//! in 64-bit mode, SYSCALL, NX, long mode. No SSE3+, no AVX, no BMI, no RDTSCP, no FSGSBASE:
//! software takes its baseline SSE2 paths. The lockstep tester shows the native side
//! the same values through CPUID faulting.

/// Feature bits of XCR0 that the model enables (x87 and SSE state).
pub const XCR0: u64 = 3;
/// Size of the XSAVE area for the enabled components.
pub const XSAVE_SIZE: u32 = 576;

const BRAND: &[u8; 48] = b"fx86 deterministic x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

fn brand(k: usize) -> [u32; 4] {
    let mut r = [0u32; 4];
    for (j, w) in r.iter_mut().enumerate() {
        let o = k * 16 + j * 4;
        *w = u32::from_le_bytes([BRAND[o], BRAND[o + 1], BRAND[o + 2], BRAND[o + 3]]);
    }
    r
}

/// CPUID for `leaf`/`subleaf`, as `[eax, ebx, ecx, edx]`.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    match leaf {
        0 => [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69], // "GenuineIntel"
        1 => {
            let eax = 0x0003_06a9; // family 6, model 0x3a, stepping 9
            let ebx = (8 << 8) | (1 << 16);
            let ecx = (1 << 13) | (1 << 23) | (1 << 26) | (1 << 27); // CX16 POPCNT XSAVE OSXSAVE
            let edx = 1
                | (1 << 4)
                | (1 << 8)
                | (1 << 15)
                | (1 << 19)
                | (1 << 23)
                | (1 << 24)
                | (1 << 25)
                | (1 << 26);
            [eax, ebx, ecx, edx]
        }
        2 => [0x00ff_0001, 0, 0, 0], // "use leaf 4"
        4 => {
            // (type, level, ways, sets): L1d 32K, L1i 32K, L2 256K, L3 8M; 64-byte lines.
            let caches = [
                (1u32, 1u32, 8u32, 64u32),
                (2, 1, 8, 64),
                (3, 2, 4, 1024),
                (3, 3, 16, 8192),
            ];
            match caches.get(subleaf as usize) {
                Some(&(t, l, w, s)) => [t | (l << 5) | (1 << 8), ((w - 1) << 22) | 63, s - 1, 0],
                None => [0; 4],
            }
        }
        0xd => match subleaf {
            0 => [XCR0 as u32, XSAVE_SIZE, XSAVE_SIZE, 0],
            1 => [0; 4],
            _ => [0; 4],
        },
        0x8000_0000 => [0x8000_0008, 0, 0, 0],
        0x8000_0001 => [0, 0, 1, (1 << 11) | (1 << 20) | (1 << 29)],
        0x8000_0002..=0x8000_0004 => brand((leaf - 0x8000_0002) as usize),
        0x8000_0006 => [0, 0, (256 << 16) | (6 << 12) | 64, 0],
        0x8000_0008 => [0x3028, 0, 0, 0],
        _ => [0; 4],
    }
}

/// AT_HWCAP for the model: CPUID.1:EDX, as Linux reports it.
pub fn hwcap() -> u64 {
    cpuid(1, 0)[3] as u64
}
