//! Random instruction tests: short random sequences from the ALU, shift/rotate, mul/div, bit,
//! SSE2 and x87 families are assembled into a tiny static guest that starts from random
//! register and memory contents, and the lockstep tester compares the engine with the real CPU
//! after every instruction (GPRs, defined flags, XMM; x87 results are stored and moved into
//! XMM registers so they are compared too).

mod common;
use common::*;
use std::fmt::Write as _;

/// Choosing helpers on the shared generator.
trait Choose {
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str;
    fn below(&mut self, n: u64) -> u64;
}

impl Choose for Rng {
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() % v.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// r15 holds the data buffer; rsp is left alone.
const R64: &[&str] = &[
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
];
const R32: &[&str] = &[
    "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "r8d", "r9d", "r10d", "r11d", "r12d", "r13d",
    "r14d",
];
const R16: &[&str] = &[
    "ax", "bx", "cx", "dx", "si", "di", "bp", "r8w", "r9w", "r10w", "r11w", "r12w", "r13w", "r14w",
];
const R8: &[&str] = &[
    "al", "bl", "cl", "dl", "sil", "dil", "bpl", "r8b", "r9b", "r10b", "r11b", "r12b", "r13b",
    "r14b",
];
const CC: &[&str] = &[
    "o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g",
];

fn reg(r: &mut Rng) -> (u32, &'static str) {
    match r.below(4) {
        0 => (64, r.pick(R64)),
        1 => (32, r.pick(R32)),
        2 => (16, r.pick(R16)),
        _ => (8, r.pick(R8)),
    }
}

fn same_size(r: &mut Rng, bits: u32) -> &'static str {
    match bits {
        64 => r.pick(R64),
        32 => r.pick(R32),
        16 => r.pick(R16),
        _ => r.pick(R8),
    }
}

fn mem(r: &mut Rng, bits: u32) -> String {
    let p = match bits {
        64 => "qword",
        32 => "dword",
        16 => "word",
        _ => "byte",
    };
    format!("{p} ptr [r15 + {}]", r.below(2000))
}

fn imm(r: &mut Rng, bits: u32) -> i64 {
    let v = r.next() as i64;
    match bits {
        8 => v as i8 as i64,
        16 => v as i16 as i64,
        _ => v as i32 as i64,
    }
}

fn alu(r: &mut Rng, out: &mut String) {
    let op = r.pick(&[
        "add", "sub", "adc", "sbb", "and", "or", "xor", "cmp", "test",
    ]);
    let (bits, d) = reg(r);
    let _ = match r.below(4) {
        0 => writeln!(out, "{op} {d}, {}", same_size(r, bits)),
        1 => writeln!(out, "{op} {d}, {}", imm(r, bits)),
        2 => writeln!(out, "{op} {d}, {}", mem(r, bits)),
        _ => writeln!(out, "{op} {}, {d}", mem(r, bits)),
    };
    let one = r.pick(&["inc", "dec", "neg", "not"]);
    let (_, d) = reg(r);
    let _ = writeln!(out, "{one} {d}");
}

fn shifts(r: &mut Rng, out: &mut String) {
    let op = r.pick(&["shl", "shr", "sar", "rol", "ror", "rcl", "rcr"]);
    let (bits, d) = reg(r);
    let _ = match r.below(3) {
        0 => writeln!(out, "{op} {d}, {}", r.below(bits as u64 * 2)),
        1 => writeln!(out, "{op} {d}, cl"),
        _ => writeln!(out, "{op} {d}, 1"),
    };
    let bits = [16u32, 32, 64][r.below(3) as usize];
    let (a, b) = (same_size(r, bits), same_size(r, bits));
    let op = r.pick(&["shld", "shrd"]);
    // Counts above 16 leave 16-bit results undefined (CPUs differ): keep them in range.
    let _ = if r.below(2) == 0 {
        writeln!(out, "{op} {a}, {b}, {}", r.below(bits.min(17) as u64))
    } else {
        if bits == 16 {
            let _ = writeln!(out, "and ecx, 15");
        }
        writeln!(out, "{op} {a}, {b}, cl")
    };
}

fn muldiv(r: &mut Rng, out: &mut String) {
    let (bits, s) = reg(r);
    match r.below(4) {
        0 => {
            let _ = writeln!(out, "{} {s}", r.pick(&["mul", "imul"]));
        }
        1 if bits > 8 => {
            let d = same_size(r, bits);
            let _ = writeln!(out, "imul {d}, {s}");
            let _ = writeln!(out, "imul {d}, {s}, {}", imm(r, bits.min(32)));
        }
        _ => {
            // Divide without #DE: a non-zero divisor and a dividend that cannot overflow.
            let (div, acc, hi) = match bits {
                64 => ("rcx", "rax", "rdx"),
                32 => ("ecx", "eax", "edx"),
                16 => ("cx", "ax", "dx"),
                _ => ("cl", "ax", ""),
            };
            let _ = writeln!(out, "or {div}, 1");
            if bits == 8 {
                let _ = writeln!(out, "movzx ax, al");
            } else {
                let _ = writeln!(out, "xor {hi}, {hi}");
                let _ = writeln!(out, "shr {acc}, 1");
            }
            let _ = writeln!(out, "{} {div}", r.pick(&["div", "idiv"]));
        }
    }
}

fn bits_family(r: &mut Rng, out: &mut String) {
    let bits = [16u32, 32, 64][r.below(3) as usize];
    let (a, b) = (same_size(r, bits), same_size(r, bits));
    let _ = match r.below(9) {
        0 => writeln!(out, "{} {a}, {b}", r.pick(&["bt", "bts", "btr", "btc"])),
        1 => writeln!(
            out,
            "{} {a}, {}",
            r.pick(&["bt", "bts", "btr", "btc"]),
            r.below(bits as u64)
        ),
        2 => writeln!(out, "{} {a}, {b}", r.pick(&["bsf", "bsr", "popcnt"])),
        3 => writeln!(out, "set{} {}", r.pick(CC), r.pick(R8)),
        4 => writeln!(out, "cmov{} {a}, {b}", r.pick(CC)),
        5 => writeln!(
            out,
            "bswap {}",
            if bits == 64 { r.pick(R64) } else { r.pick(R32) }
        ),
        6 => writeln!(
            out,
            "{} {}, {}",
            r.pick(&["movzx", "movsx"]),
            r.pick(R32),
            r.pick(R8)
        ),
        7 => writeln!(out, "{} {a}, {b}", r.pick(&["xchg", "xadd", "cmpxchg"])),
        _ => writeln!(
            out,
            "{}",
            r.pick(&[
                "cbw", "cwde", "cdqe", "cwd", "cdq", "cqo", "cmc", "clc", "stc", "lahf", "sahf"
            ])
        ),
    };
    let _ = writeln!(
        out,
        "lea {}, [{} + {}*{} + {}]",
        r.pick(R64),
        r.pick(R64),
        r.pick(R64),
        [1, 2, 4, 8][r.below(4) as usize],
        imm(r, 32)
    );
}

fn sse2(r: &mut Rng, out: &mut String) {
    let x = |r: &mut Rng| format!("xmm{}", r.below(16));
    let ops = [
        "paddb",
        "paddw",
        "paddd",
        "paddq",
        "psubb",
        "psubw",
        "psubd",
        "psubq",
        "paddsb",
        "paddusw",
        "psubsw",
        "psubusb",
        "pmullw",
        "pmulhw",
        "pmulhuw",
        "pmuludq",
        "pmaddwd",
        "pavgb",
        "pavgw",
        "pminub",
        "pmaxsw",
        "psadbw",
        "pcmpeqb",
        "pcmpeqd",
        "pcmpgtb",
        "pcmpgtw",
        "pand",
        "pandn",
        "por",
        "pxor",
        "packsswb",
        "packuswb",
        "packssdw",
        "punpcklbw",
        "punpckhwd",
        "punpckldq",
        "punpckhqdq",
        "unpcklps",
        "unpckhpd",
        "addps",
        "addpd",
        "subsd",
        "mulss",
        "mulpd",
        "divsd",
        "divps",
        "minpd",
        "maxss",
        "sqrtpd",
        "sqrtss",
        "andps",
        "xorpd",
        "cvtdq2ps",
        "cvttps2dq",
        "cvtps2pd",
        "cvtpd2ps",
        "cvtsd2ss",
        "cvtss2sd",
        "movss",
        "movsd",
        "movaps",
        "movdqa",
        "cvtdq2pd",
        "cvttpd2dq",
    ];
    let op = r.pick(&ops);
    let (a, b) = (x(r), x(r));
    let _ = if r.below(3) == 0
        && ![
            "movss", "movsd", "cvtss2sd", "cvtsd2ss", "sqrtss", "mulss", "maxss", "subsd", "divsd",
            "cvtdq2pd", "cvtps2pd",
        ]
        .contains(&op)
    {
        writeln!(out, "{op} {a}, xmmword ptr [r15 + {}]", 16 * r.below(120))
    } else {
        writeln!(out, "{op} {a}, {b}")
    };
    let (a, b) = (x(r), x(r));
    let _ = match r.below(8) {
        0 => writeln!(out, "pshufd {a}, {b}, {}", r.below(256)),
        1 => writeln!(out, "shufps {a}, {b}, {}", r.below(256)),
        2 => writeln!(
            out,
            "{} {a}, {}",
            r.pick(&["psllw", "psrld", "psraw", "psrlq", "pslldq", "psrldq"]),
            r.below(20)
        ),
        3 => writeln!(
            out,
            "cmp{}{} {a}, {b}",
            ["eq", "lt", "le", "unord", "neq", "nlt", "nle", "ord"][r.below(8) as usize],
            r.pick(&["ps", "pd", "ss", "sd"])
        ),
        4 => writeln!(
            out,
            "{} {a}, {b}",
            r.pick(&["ucomisd", "comiss", "ucomiss", "comisd"])
        ),
        5 => writeln!(
            out,
            "{} {}, {a}",
            r.pick(&["cvttsd2si", "cvtsd2si", "cvtss2si", "cvttss2si"]),
            r.pick(R64)
        ),
        6 => writeln!(
            out,
            "{} {a}, {}",
            r.pick(&["cvtsi2sd", "cvtsi2ss"]),
            r.pick(R32)
        ),
        _ => writeln!(
            out,
            "{} {}, {a}",
            r.pick(&["pmovmskb", "movmskps", "movmskpd"]),
            r.pick(R32)
        ),
    };
    let _ = writeln!(out, "movq {}, {a}", r.pick(R64));
}

fn x87(r: &mut Rng, out: &mut String) {
    let off = 8 * r.below(250);
    let _ = match r.below(6) {
        0 => writeln!(out, "fld qword ptr [r15 + {off}]"),
        1 => writeln!(out, "fild dword ptr [r15 + {off}]"),
        2 => writeln!(out, "fld1\nfldpi"),
        _ => writeln!(out, "fld qword ptr [r15 + {off}]"),
    };
    let _ = writeln!(
        out,
        "{}",
        r.pick(&[
            "fadd st(0), st(1)",
            "fmul st(0), st(1)",
            "fsub st(0), st(1)",
            "fdivr st(0), st(1)",
            "fsqrt",
            "fabs",
            "fchs",
            "frndint",
            "fxch st(1)",
            "fscale",
            "fprem"
        ])
    );
    let slot = 8 * (250 + r.below(6));
    let _ = writeln!(
        out,
        "fstp qword ptr [r15 + {slot}]\nmovq xmm{}, qword ptr [r15 + {slot}]",
        r.below(16)
    );
    let _ = writeln!(out, "fnstsw ax");
}

/// A guest that runs `body` from random registers and memory, then exits.
fn guest(seed: u64, body: &str) -> String {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut c = String::from("unsigned char buf[4096] __attribute__((aligned(64))) = {");
    for _ in 0..4096 {
        let _ = write!(c, "{},", r.next() & 0xff);
    }
    c.push_str("};\nint main(void) {\n__asm__ volatile(\".intel_syntax noprefix\\n\"\n\"lea r15, [rip + buf]\\n\"\n");
    for k in 0..16 {
        let _ = writeln!(c, "\"movdqu xmm{k}, xmmword ptr [r15 + {}]\\n\"", 16 * k);
    }
    for reg in R64 {
        let _ = writeln!(c, "\"movabs {reg}, {}\\n\"", r.next());
    }
    let _ = writeln!(c, "\"finit\\n\"");
    for line in body.lines() {
        let _ = writeln!(c, "\"{line}\\n\"");
    }
    c.push_str(
        "\"mov eax, 60\\n xor edi, edi\\n syscall\\n\"\n\".att_syntax\\n\");\nreturn 0;\n}\n",
    );
    c
}

fn check_family(name: &str, gen: fn(&mut Rng, &mut String), programs: u64, per_program: usize) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("random-insns");
    std::fs::create_dir_all(&dir).expect("dir");
    for p in 0..programs {
        let seed = 1000 * p + name.len() as u64;
        let mut r = Rng(seed | 1);
        let mut body = String::new();
        for _ in 0..per_program {
            gen(&mut r, &mut body);
        }
        let src = dir.join(format!("{name}-{p}.c"));
        std::fs::write(&src, guest(seed, &body)).expect("write guest");
        let bin = build(&src, "musl-gcc", "-O1");
        let o = fx86()
            .args(["lockstep", "--"])
            .arg(&bin)
            .output()
            .expect("lockstep");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains("no difference"),
            "{name} program {p} ({}) diverged:\n{out}{}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// The same families in a loop that runs 300 times, so that the interpreter translates its
/// blocks to host code: every translation is checked against the interpreter
/// (`--check-jit`), and that run and the usual translated one must end exactly as `--no-jit`
/// does (status, icount, state hash). Random conditional jumps over single instructions split the body into blocks
/// whose flags flow from one into the next.
fn check_family_translated(
    name: &str,
    gen: fn(&mut Rng, &mut String),
    programs: u64,
    per_program: usize,
) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("random-insns");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut translated = 0;
    for p in 0..programs {
        let seed = 55000 + 1000 * p + name.len() as u64;
        let mut r = Rng(seed | 1);
        let mut body = String::from("mov qword ptr [rip + loops], 300\n1:");
        for n in 0..per_program {
            if r.below(4) == 0 {
                let _ = writeln!(body, "j{} 9{n}f", r.pick(CC));
                gen(&mut r, &mut body);
                let _ = writeln!(body, "9{n}:");
            } else {
                gen(&mut r, &mut body);
            }
        }
        body.push_str("dec qword ptr [rip + loops]\njnz 1b");
        let src = dir.join(format!("{name}-loop-{p}.c"));
        let c = format!("unsigned long loops;\n{}", guest(seed, &body));
        std::fs::write(&src, c).expect("write guest");
        let bin = build(&src, "musl-gcc", "-O1");
        let what = format!("{name} program {p} ({})", src.display());
        // (A bound, so that a translation that loops fails the test instead of hanging it.)
        let usual = assert_translation_agrees(&bin, &[], b"", &["--max-insns", "50000000"], &what);
        if stat_field(&usual, "translated") != "0" {
            translated += 1;
        }
    }
    // (A program may crash early, or every block may start with an instruction left to the
    // interpreter, such as a division.)
    assert!(
        translated * 2 >= programs,
        "only {translated} of {programs} {name} programs had blocks translated"
    );
}

#[test]
fn random_families_translated() {
    check_family_translated("alu", alu, 150, 60);
    check_family_translated("shift", shifts, 150, 60);
    check_family_translated("muldiv", muldiv, 150, 40);
    check_family_translated("bits", bits_family, 150, 60);
    check_family_translated("sse2", sse2, 150, 40);
}

#[test]
fn random_alu() {
    check_family("alu", alu, 25, 200);
}

#[test]
fn random_shifts_and_rotates() {
    check_family("shift", shifts, 25, 200);
}

#[test]
fn random_mul_div() {
    check_family("muldiv", muldiv, 25, 150);
}

#[test]
fn random_bit_ops() {
    check_family("bits", bits_family, 25, 200);
}

#[test]
fn random_sse2() {
    check_family("sse2", sse2, 25, 150);
}

#[test]
fn random_x87() {
    check_family("x87", x87, 15, 80);
}
