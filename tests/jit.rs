//! Translated code (the interpreter's second tier, `engine/src/exec/jit.rs`) must leave every
//! guest exactly as the interpreter alone does: the same output, exit status, icount and state
//! hash. `--check-jit` also runs every translation's instructions again in the interpreter
//! and stops the process (status 70) at the first disagreement in registers, flags, memory
//! or instruction count. It runs each translation on its own, so the same guests also run
//! translated as usual (translations jumping straight into one another, TLB hits on
//! writes), and that run must end exactly as `--no-jit` does too.

mod common;
use common::*;
use std::path::Path;

/// See `assert_translation_agrees`.
fn agrees(bin: &Path, args: &[&str], input: &[u8]) -> String {
    let what = format!("{} {args:?}", bin.display());
    assert_translation_agrees(bin, args, input, &[], &what)
}

const GUESTS: &[&str] = &[
    "intops.c",
    "bitscan.c",
    "flagcalls.c",
    "undefined_flags.c",
    "strings.c",
    "selfmod.c",
    "jit.c",
    "signals.c",
    "watch.c",
    "crash_segv.c",
    "crash_fpe.c",
    "sse2.c",
    "floats.c",
    "hotpatch.c",
];

#[test]
fn translated_code_matches_the_interpreter_on_the_corpus() {
    for opt in ["-O0", "-O2"] {
        for g in GUESTS {
            let bin = build(&guest_src(g), "gcc", opt);
            agrees(&bin, &[], b"");
        }
    }
    let digest = build(&guest_src("digest.c"), "gcc", "-O2");
    let mut input = Vec::new();
    for i in 0..20000u32 {
        input.extend_from_slice(format!("line {i} {}\n", i.wrapping_mul(2654435761)).as_bytes());
    }
    agrees(&digest, &[], &input);
}

#[test]
fn translated_code_matches_the_interpreter_on_the_benchmarks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/guests");
    for (g, size) in [
        ("hash", "1"),
        ("sort", "20000"),
        ("bytecode", "20000"),
        ("strfn", "50"),
        ("matrix", "30"),
    ] {
        let bin = build(&dir.join(format!("{g}.c")), "gcc", "-O2");
        agrees(&bin, &[size], b"");
    }
}

#[test]
fn translated_code_matches_the_interpreter_on_dynamic_programs() {
    let python = Path::new("/usr/bin/python3.11");
    if !python.exists() {
        eprintln!("skipping python: /usr/bin/python3.11 is not installed (see .ci/run)");
        return;
    }
    agrees(
        python,
        &[
            "-S",
            "-c",
            "import json, hashlib\n\
             d = {str(i): i * i for i in range(3000)}\n\
             print(len(json.dumps(d)), hashlib.sha1(b'x' * 10000).hexdigest(), sorted(d)[:3])",
        ],
        b"",
    );
}

#[test]
fn hot_code_patched_between_rounds_runs_as_natively() {
    // Callee and caller are translated and linked; the callee is then patched under a caller
    // that stays hot: the link must not lead into the old code.
    let bin = build(&guest_src("hotpatch.c"), "gcc", "-O2");
    let native = std::process::Command::new(&bin).output().expect("native");
    let mut c = fx86();
    c.args(["run", "--stats", "--"]).arg(&bin);
    let o = run_with_input(c, b"");
    assert_eq!(lossy(&o.stdout), lossy(&native.stdout));
    assert!(stat_num(&stats_line(&o), "translated") > 0);
}

#[test]
fn hot_loops_are_translated() {
    // Without translation the same run takes the interpreter's time; with it, a loop of
    // plain integer code runs as host code. The instruction count is what proves the run
    // was the same; `--stats` reports how many blocks were translated.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/guests");
    let bin = build(&dir.join("hash.c"), "gcc", "-O2");
    let mut c = fx86();
    c.args(["run", "--stats", "--"]).arg(&bin).arg("1");
    let line = stats_line(&run_with_input(c, b""));
    assert!(stat_num(&line, "translated") > 0, "{line}");
    let mut c = fx86();
    c.args(["--no-jit", "run", "--stats", "--"])
        .arg(&bin)
        .arg("1");
    let line = stats_line(&run_with_input(c, b""));
    assert_eq!(stat_num(&line, "translated"), 0, "{line}");
}
