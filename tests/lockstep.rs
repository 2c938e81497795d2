//! The lockstep tester runs each guest natively under ptrace single-step and in the engine,
//! comparing RIP, GPRs, defined flags and XMM registers after every instruction. Workloads are
//! kept small (ptrace single-stepping runs at tens of thousands of instructions per second).

mod common;
use common::*;

fn lockstep(src: &str, cc: &str, opt: &str, args: &[&str]) {
    lockstep_limited(src, cc, opt, args, None)
}

fn lockstep_limited(src: &str, cc: &str, opt: &str, args: &[&str], limit: Option<u64>) {
    let bin = build(&guest_src(src), cc, opt);
    let mut cmd = fx86();
    cmd.arg("lockstep");
    if let Some(n) = limit {
        cmd.arg("--max-insns").arg(n.to_string());
    }
    let o = cmd
        .arg("--")
        .arg(&bin)
        .args(args)
        .output()
        .expect("run lockstep");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("no difference"),
        "lockstep of {src} ({cc} {opt}) failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The C corpus with small workloads: (source, arguments).
const CORPUS: &[(&str, &[&str])] = &[
    ("intops.c", &["150"]),
    ("floats.c", &["40"]),
    ("longdouble.c", &[]),
    ("strings.c", &[]),
    ("sse2.c", &[]),
    ("mmx.c", &[]),
    ("selfmod.c", &[]),
    ("signals.c", &[]),
    ("crash_segv.c", &[]),
    ("crash_abort.c", &[]),
    ("crash_fpe.c", &[]),
];

fn corpus(cc: &str, opt: &str) {
    for (src, args) in CORPUS {
        lockstep(src, cc, opt, args);
    }
}

#[test]
fn corpus_glibc_o0() {
    corpus("gcc", "-O0");
}

#[test]
fn corpus_glibc_o2() {
    corpus("gcc", "-O2");
}

#[test]
fn corpus_musl_o0() {
    corpus("musl-gcc", "-O0");
}

#[test]
fn corpus_musl_o2() {
    corpus("musl-gcc", "-O2");
}

#[test]
fn cxx_exception_guest() {
    // The first throw in a static C++ binary sorts every FDE of libstdc++ (about 4 million
    // instructions, two minutes under ptrace); CI compares the first 800,000, which cover the
    // C++ runtime's start-up and the unwinder's setup. `fx86 lockstep` runs it whole.
    lockstep_limited("cxx_throw.cc", "g++", "-O2", &["1"], Some(800_000));
}

#[test]
fn cpu_model_guest() {
    // The native side must see fx86's CPUID, XGETBV and RDTSC answers, or the vendor string
    // and the clock would differ.
    lockstep("cpuid_rdtsc.c", "musl-gcc", "-O2", &[]);
}

#[test]
fn lockstep_reports_a_divergence() {
    // The host CPU may execute AVX natively; fx86's model has no AVX and raises SIGILL. The
    // tester must say so and fail, naming where.
    let bin = build(&guest_src("avx.c"), "musl-gcc", "-O2");
    let o = fx86()
        .args(["lockstep", "--"])
        .arg(&bin)
        .output()
        .expect("run lockstep");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("SIGILL") || out.contains("DIVERGED"), "{out}");
}
