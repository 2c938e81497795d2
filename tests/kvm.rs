//! The KVM backend (`--backend kvm`): user code runs natively, syscalls, signals and
//! model-specific instructions go through the interpreter. Both backends must agree: same
//! output and exit status, and with `--cross-check` the same state (registers, memory,
//! kernel) at the end of every native stretch, the same icount and the same final state hash.
//! Tests say so and pass when /dev/kvm is not usable here.

mod common;
use common::*;
use fx86_snapshots::recording::Recording;
use std::path::Path;

fn kvm_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("SKIPPED: /dev/kvm is not usable on this machine; the KVM backend is not tested");
    }
    ok
}

/// Runs `bin args` with both backends and asserts they agree (the kvm run cross-checks
/// every stretch against the interpreter); returns the `--stats` line of a kvm run without
/// the cross-check.
fn assert_backends_agree(bin: &Path, args: &[&str], input: &[u8]) -> String {
    let mut i = fx86();
    i.args(["run", "--stats", "--"]).arg(bin).args(args);
    let interp = run_with_input(i, input);
    let mut k = fx86();
    // Kicked out every millisecond too: stretches also end at arbitrary instruction
    // boundaries, which the replay must find again.
    k.args([
        "run",
        "--backend",
        "kvm",
        "--cross-check",
        "--kick-ms",
        "1",
        "--stats",
        "--",
    ])
    .arg(bin)
    .args(args);
    let kvm = run_with_input(k, input);
    let what = format!("{} {:?}", bin.display(), args);
    let kline = stats_line(&kvm);
    assert!(
        kline.contains("backend=kvm"),
        "{what}: the kvm run failed:\n{}",
        lossy(&kvm.stderr)
    );
    assert_eq!(lossy(&kvm.stdout), lossy(&interp.stdout), "{what}: stdout");
    assert_eq!(status_code(&kvm), status_code(&interp), "{what}: status");
    let iline = stats_line(&interp);
    for key in ["icount", "state", "exit"] {
        assert_eq!(
            stat_field(&kline, key),
            stat_field(&iline, key),
            "{what}: {key} differs\n interp: {iline}\n kvm:    {kline}"
        );
    }
    // Without the cross-check, stretches are settled on a background thread. (And as on a
    // CPU whose undefined flags differ from the model's, whatever this one does.)
    let mut p = fx86();
    p.args([
        "run",
        "--backend",
        "kvm",
        "--assume-host-flags-differ",
        "--kick-ms",
        "1",
        "--stats",
        "--",
    ])
    .arg(bin)
    .args(args);
    let plain = run_with_input(p, input);
    let pline = stats_line(&plain);
    assert_eq!(
        lossy(&plain.stdout),
        lossy(&interp.stdout),
        "{what}: stdout"
    );
    assert_eq!(status_code(&plain), status_code(&interp), "{what}: status");
    for key in ["icount", "state", "exit"] {
        assert_eq!(
            stat_field(&pline, key),
            stat_field(&iline, key),
            "{what}: {key} differs without --cross-check\n interp: {iline}\n kvm:    {pline}"
        );
    }
    pline
}

#[test]
fn corpus_agrees_with_the_interpreter() {
    if !kvm_usable() {
        return;
    }
    let guests = [
        "intops.c",
        "floats.c",
        "longdouble.c",
        "strings.c",
        "sse2.c",
        "mmx.c",
        "selfmod.c",
        "signals.c",
        "crash_segv.c",
        "crash_abort.c",
        "crash_fpe.c",
        "cpuid_rdtsc.c",
        "cpuid_leaves.c",
        "undefined_flags.c",
        "avx.c",
        "errno.c",
        "sysmisc.c",
        "procfiles.c",
        "jit.c",
        "flagcalls.c",
        "coldpath.c",
        "remap.c",
    ];
    for (cc, opt) in [("gcc", "-O2"), ("musl-gcc", "-O0")] {
        for g in guests {
            let bin = build(&guest_src(g), cc, opt);
            assert_backends_agree(&bin, &[], b"");
        }
    }
}

#[test]
fn model_cpu_and_honest_isa_natively() {
    if !kvm_usable() {
        return;
    }
    // CPUID, XCR0 and friends come from the model, not from the host CPU.
    let bin = build(&guest_src("cpuid_leaves.c"), "gcc", "-O2");
    let mut k = fx86();
    k.args(["run", "--backend", "kvm", "--"]).arg(&bin);
    let out = lossy(&run_with_input(k, b"").stdout);
    assert!(
        out.contains("00000000.0: 0000000d 756e6547 6c65746e 49656e69"),
        "{out}"
    );
    assert!(out.contains("xcr0 3 0"), "{out}");
    // AVX is outside the model: SIGILL natively too, with the interpreter's message.
    let bin = build(&guest_src("avx.c"), "gcc", "-O2");
    let mut k = fx86();
    k.args(["run", "--backend", "kvm", "--"]).arg(&bin);
    let o = run_with_input(k, b"");
    assert_eq!(status_code(&o), 132, "{}", lossy(&o.stderr));
    assert!(lossy(&o.stderr).contains("SIGILL"), "{}", lossy(&o.stderr));
}

/// The `--stats` line of `fx86 run --backend kvm` of `bin` (which must exit with 0).
fn kvm_stats(bin: &Path) -> String {
    let mut c = fx86();
    c.args(["run", "--backend", "kvm", "--stats", "--"])
        .arg(bin);
    let o = run_with_input(c, b"");
    assert_eq!(status_code(&o), 0, "{}", lossy(&o.stderr));
    stats_line(&o)
}

#[test]
fn computations_run_natively_not_in_the_interpreter() {
    if !kvm_usable() {
        return;
    }
    // A code page is interpreted until the instructions it holds are accounted for, then it
    // runs natively. A regression that leaves hot pages interpreted (as a too strict rule for
    // a page's first bytes once did, making the KVM backend slower than the interpreter)
    // gives the same answers, so only the count of interpreted instructions shows it.
    let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/guests");
    for (src, opt) in [
        ("matrix.c", "-O2"),
        ("strfn.c", "-O2"),
        ("matrix.c", "-static-pie"),
    ] {
        let bin = build(&benches.join(src), "gcc", opt);
        let line = kvm_stats(&bin);
        let field = |name: &str| stat_num(&line, name);
        let (icount, interpreted) = (field("icount"), field("interpreted_insns"));
        assert!(icount > 10_000_000, "{src}: {line}");
        assert!(
            interpreted * 100 < icount,
            "{src} {opt}: {interpreted} of {icount} instructions interpreted: {line}"
        );
    }
}

/// The `--stats` line of `fx86 run --backend kvm --assume-host-flags-differ` of `bin args`,
/// after checking that its state equals the interpreter's.
fn kvm_stats_as_if_flags_differ(bin: &Path, args: &[&str]) -> String {
    let mut lines = Vec::new();
    for backend in [
        &["--backend", "interp"][..],
        &["--backend", "kvm", "--assume-host-flags-differ"],
    ] {
        let mut c = fx86();
        c.arg("run")
            .args(backend)
            .args(["--stats", "--"])
            .arg(bin)
            .args(args);
        let o = run_with_input(c, b"");
        assert_eq!(status_code(&o), 0, "{}", lossy(&o.stderr));
        lines.push(stats_line(&o));
    }
    assert_eq!(
        stat_field(&lines[0], "state"),
        stat_field(&lines[1], "state"),
        "{}: interp {} kvm {}",
        bin.display(),
        lines[0],
        lines[1]
    );
    lines.pop().expect("kvm")
}

#[test]
fn undefined_flags_followed_into_callees_on_other_pages() {
    if !kvm_usable() {
        return;
    }
    // qsort's merge multiplies and calls memcpy through the PLT (a jump slot) with the
    // multiply's undefined flags pending; memcpy overwrites them first. Following the call
    // there lets the multiply run natively on a CPU that sets them differently from the model
    // (as if this one did): sort must not be interpreted (it once was, half of it, in bursts).
    let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/guests");
    let bin = build(&benches.join("sort.c"), "gcc", "-O2");
    let line = kvm_stats_as_if_flags_differ(&bin, &["100000"]);
    let field = |name: &str| stat_num(&line, name);
    assert!(
        field("interpreted_insns") * 100 < field("icount"),
        "sort is interpreted: {line}"
    );
    // A hot shift whose flags are pending at a branch to an error path on a page that has
    // not run yet: that page is classified before it runs, so the search can look there.
    let bin = build(&guest_src("coldpath.c"), "gcc", "-O2");
    let line = kvm_stats_as_if_flags_differ(&bin, &[]);
    let field = |name: &str| stat_num(&line, name);
    assert!(
        field("interpreted_insns") * 100 < field("icount"),
        "coldpath is interpreted: {line}"
    );
}

#[test]
fn a_changed_jump_slot_is_followed_again_and_hot_sites_run_in_bursts() {
    if !kvm_usable() {
        return;
    }
    // A multiply calls through a function pointer with its flags pending: into code that
    // overwrites them, then (after native writes to the pointer, guarded, by a store and by
    // `rep movsb`, and a write by the kernel) into code that reads them. The pages that
    // relied on the pointer are classified again; where the flags are read, the multiply runs in the interpreter, in
    // bursts when hot. The answers are the interpreter's (they differ from a native run's on
    // a CPU whose undefined flags differ from the model's).
    let bin = build(&guest_src("flagcalls.c"), "gcc", "-O2");
    let line = kvm_stats_as_if_flags_differ(&bin, &[]);
    let field = |name: &str| stat_num(&line, name);
    assert!(field("guard_hits") > 0, "{line}");
    assert!(field("reclassified") > 0, "{line}");
    assert!(field("bursts") > 0, "{line}");
}

#[test]
fn fresh_memory_filled_natively_in_large_pages_agrees() {
    if !kvm_usable() {
        return;
    }
    // 2 MiB of untouched anonymous memory is mapped as one large page when first touched
    // (a block); what the guest writes there must still reach the engine, also after the
    // mappings change under a block (a hole unmapped in it, part of it made read-only).
    let bin = build(&guest_src("bigmem.c"), "gcc", "-O2");
    assert_backends_agree(&bin, &[], b"");
    let line = kvm_stats(&bin);
    let blocks: u64 = stat_field(&line, "blocks").parse().expect("blocks");
    assert!(blocks > 0, "no block was mapped: {line}");
    // The pages filled by memset are held once per fill pattern, then copied as each is
    // written again (the backends agree above).
    assert!(stat_num(&line, "pattern_pages") >= 8192, "{line}");
}

#[test]
fn real_programs_with_input() {
    if !kvm_usable() {
        return;
    }
    let digest = build(&guest_src("digest.c"), "gcc", "-O2");
    let dir = scratch("kvm", "input");
    let file = dir.join("data.txt");
    let mut r = Rng(7);
    let text: String = (0..20000).map(|_| format!("{:x}\n", r.next())).collect();
    std::fs::write(&file, &text).expect("write input");
    assert_backends_agree(&digest, &[file.to_str().expect("utf-8")], text.as_bytes());
    // Dynamically linked: the loader maps libc natively, IFUNCs resolve under the model.
    // (A buffer size, so that sort does not spill to temporary files: every system call is
    // a VM exit, and the cross-check replays each stretch.)
    let some: String = text.lines().take(300).map(|l| format!("{l}\n")).collect();
    assert_backends_agree(Path::new("/usr/bin/sort"), &["-S", "8M"], some.as_bytes());
    assert_backends_agree(Path::new("/bin/ls"), &["-la", "/usr"], b"");
    if Path::new("/bin/busybox").exists() {
        let bb = Path::new("/bin/busybox");
        assert_backends_agree(bb, &["sha256sum", file.to_str().expect("utf-8")], b"");
        assert_backends_agree(bb, &["sort", "-r"], text.as_bytes());
    }
}

/// `fx86 run` passes input through: reading it needs no exact icount, so the native
/// stretches before each read are settled in the background while the guest runs on (a
/// recording keys input on the exact icount: see `recordings_made_natively_equal_the_interpreters`).
#[test]
fn reading_input_does_not_wait_for_native_stretches() {
    if !kvm_usable() {
        return;
    }
    let digest = build(&guest_src("digest.c"), "gcc", "-O2");
    let mut r = Rng(11);
    let text: String = (0..200_000).map(|_| format!("{:x}\n", r.next())).collect();
    let dir = scratch("kvm", "input-waits");
    let file = dir.join("data.txt");
    std::fs::write(&file, &text[..4096]).expect("write input");
    let args = [file.to_str().expect("utf-8"), dir.to_str().expect("utf-8")];
    let line = assert_backends_agree(&digest, &args, text.as_bytes());
    assert!(stat_num(&line, "syscalls") >= 10, "{line}");
    assert_eq!(stat_num(&line, "waits"), 0, "{line}");
}

#[test]
fn python_runs_natively() {
    if !kvm_usable() {
        return;
    }
    // Its pages begin with the tails of instructions from the pages before, where a wrong
    // decoding phase once patched a byte inside a real instruction (see `classify_page`).
    // (Without --cross-check, which replays each of its thousands of stretches at once.)
    let script = "import json; print(json.dumps({'answer': 6 * 7}))";
    let mut runs = Vec::new();
    for backend in ["interp", "kvm"] {
        let mut c = fx86();
        c.args(["run", "--backend", backend, "--stats", "--"])
            .args(["/usr/bin/python3.11", "-S", "-c", script]);
        runs.push(run_with_input(c, b""));
    }
    let (i, k) = (&runs[0], &runs[1]);
    assert_eq!(
        lossy(&k.stdout),
        "{\"answer\": 42}\n",
        "{}",
        lossy(&k.stderr)
    );
    assert_eq!(lossy(&k.stdout), lossy(&i.stdout));
    let (il, kl) = (stats_line(i), stats_line(k));
    for key in ["icount", "state", "exit"] {
        assert_eq!(
            stat_field(&kl, key),
            stat_field(&il, key),
            "{key}\n{il}\n{kl}"
        );
    }
}

#[test]
fn python_hashing_strings_runs_natively() {
    if !kvm_usable() {
        return;
    }
    // Python's string hash (SipHash: rotates, whose undefined flags this CPU may set unlike
    // the model) runs into the next page, and the search there runs back into the first
    // page. Each page's classification once undid the other's, over and over, until both
    // were searched no further: half of the program ran in the interpreter.
    let script = "d = {}\nfor i in range(50000): d[str(i)] = i\nprint(sum(d.values()))";
    let py = Path::new("/usr/bin/python3.11");
    assert_mostly_native(&kvm_stats_as_if_flags_differ(py, &["-S", "-c", script]), 5);
}

#[test]
fn perls_hash_loop_runs_natively() {
    if !kvm_usable() {
        return;
    }
    // An instruction at the end of a native page runs into the next page, which must be
    // interpreted: the exit was blamed on the first page, so the second was never hot enough
    // to be classified, and each iteration left the VM (later: ran in bursts).
    let script = "my %h; for my $i (1..30000) { $h{$i*7 % 1013} += $i } print scalar(keys %h)";
    let perl = Path::new("/usr/bin/perl");
    assert_mostly_native(&kvm_stats_as_if_flags_differ(perl, &["-e", script]), 5);
}

#[test]
fn bit_scans_run_natively_as_the_model_executes_them() {
    if !kvm_usable() {
        return;
    }
    // `rep bsf` (tzcnt) and `lzcnt` in a hot loop: the model executes them as bsf and bsr;
    // rewritten so, they run natively instead of leaving the VM on every pass.
    let bin = build(&guest_src("bitscan.c"), "gcc", "-O2");
    let line = kvm_stats_as_if_flags_differ(&bin, &[]);
    assert_mostly_native(&line, 10);
    assert_eq!(stat_num(&line, "bursts"), 0, "{line}");
}

/// Asserts that at most 1/`part` of the instructions of the kvm run whose `--stats` line is
/// `line` were interpreted.
fn assert_mostly_native(line: &str, part: u64) {
    assert!(
        stat_num(line, "interpreted_insns") * part < stat_num(line, "icount"),
        "interpreted: {line}"
    );
}

#[test]
fn flags_and_fallbacks_explain_themselves() {
    if !kvm_usable() {
        return;
    }
    let bin = build(&guest_src("intops.c"), "gcc", "-O2");
    let mut k = fx86();
    k.args(["run", "--backend", "kvm", "--max-insns", "1000", "--"])
        .arg(&bin);
    let o = run_with_input(k, b"");
    assert_eq!(status_code(&o), 2);
    assert!(
        lossy(&o.stderr).contains("--backend interp"),
        "{}",
        lossy(&o.stderr)
    );
    // A kick period longer than the adaptive one's ceiling is simply used.
    let mut l = fx86();
    l.args(["run", "--backend", "kvm", "--kick-ms", "20000", "--"])
        .arg(&bin);
    let o = run_with_input(l, b"");
    assert_eq!(status_code(&o), 0, "{}", lossy(&o.stderr));
    let mut a = fx86();
    a.args(["run", "--backend", "auto", "--"]).arg(&bin);
    let o = run_with_input(a, b"");
    assert_eq!(status_code(&o), 0);
    assert!(
        lossy(&o.stderr).contains("fx86: backend: kvm"),
        "{}",
        lossy(&o.stderr)
    );
}

#[test]
fn auto_says_which_backend_it_chose() {
    let dir = scratch("kvm", "auto-record");
    let rec = dir.join("true.fx86");
    let mut a = fx86();
    a.args(["record", "-o"])
        .arg(&rec)
        .args(["--backend", "auto", "--", "/bin/true"]);
    let o = run_with_input(a, b"");
    assert_eq!(status_code(&o), 0, "{}", lossy(&o.stderr));
    assert!(
        lossy(&o.stderr).contains("fx86: backend: "),
        "{}",
        lossy(&o.stderr)
    );
    let mut v = fx86();
    v.arg("verify").arg(&rec);
    assert_eq!(status_code(&run_with_input(v, b"")), 0);
}

/// The demo's bug hunt in gdb: break, step, crash, watch the corrupted pointer, go back to
/// the write, step back once more, and on to the crash again.
const OVERFLOW_STORY: &[&str] = &[
    "break record_scores",
    "continue",
    "monitor icount",
    "next",
    "next",
    "monitor icount",
    "continue",
    "bt",
    "up",
    "watch -l t->report",
    "reverse-continue",
    "print i",
    "reverse-stepi",
    "monitor icount",
    "delete",
    "continue",
    "kill",
];

/// The demo guest (demo-guests/overflow.c) built without optimisation.
fn demo_guest() -> std::path::PathBuf {
    build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("demo-guests/overflow.c"),
        "gcc",
        "-O0",
    )
}

/// Runs the same gdb session against `gdbserver --backend interp` and `--backend kvm` on
/// `bin args`; returns both transcripts.
fn gdb_both(bin: &Path, args: &[&str], cmds: &[&str]) -> [String; 2] {
    let mut out = Vec::new();
    for backend in ["interp", "kvm"] {
        let (o, rest) = gdb_with(
            |addr| {
                let mut c = fx86();
                c.args(["gdbserver", "--backend", backend, "--listen", addr, "--"])
                    .arg(bin)
                    .args(args);
                c
            },
            Some(bin),
            cmds,
        );
        assert!(
            !rest.contains("panicked") && !rest.contains("failed"),
            "{backend}: {rest}"
        );
        out.push(o);
    }
    out.try_into().unwrap_or_else(|_| unreachable!())
}

#[test]
fn gdb_sessions_on_kvm_equal_the_interpreters() {
    if !kvm_usable() {
        return;
    }
    let [i, k] = gdb_both(&demo_guest(), &["7"], OVERFLOW_STORY);
    assert_eq!(k, i, "kvm vs interp");
    assert!(k.contains("SIGSEGV") && k.contains("$1 = 8"), "{k}");
    assert!(k.matches("icount ").count() >= 3, "{k}");
    // A long computation without system calls runs natively up to the breakpoint; going
    // back then waits for its replay, and lands where the interpreter does.
    let spin = build(&guest_src("spin.c"), "gcc", "-O2");
    let [i, k] = gdb_both(
        &spin,
        &["3000000"],
        &[
            "break exit",
            "continue",
            "reverse-stepi",
            "monitor icount",
            "info registers rip rax rbx",
            "stepi",
            "stepi",
            "monitor icount",
            "kill",
        ],
    );
    assert_eq!(k, i, "kvm vs interp");
    assert!(k.contains("Breakpoint 1,") && k.contains("icount "), "{k}");
    // `next` over a loop on one line range-steps (vCont;r) from a native stop too.
    let oneline = build(&guest_src("oneline.c"), "gcc", "-O0");
    let [i, k] = gdb_both(
        &oneline,
        &["3000"],
        &[
            "break main",
            "continue",
            "next",
            "next",
            "print s",
            "monitor icount",
            "reverse-stepi",
            "print s",
            "kill",
        ],
    );
    assert_eq!(k, i, "kvm vs interp");
    let want: i64 = (0..3000i64).map(|i| i * i % 13).sum();
    assert!(k.contains(&format!("$1 = {want}")), "{k}");
}

/// Records `bin args` (with `input` on stdin) with each backend; returns the two recordings
/// after checking that the kvm one verifies.
fn record_both(dir: &Path, name: &str, bin: &Path, args: &[&str], input: &[u8]) -> [Recording; 2] {
    let mut out = Vec::new();
    for backend in ["interp", "kvm"] {
        let file = dir.join(format!("{name}.{backend}.fxr"));
        let mut c = fx86();
        c.args([
            "record",
            "--backend",
            backend,
            "--checkpoint-interval",
            "200000",
            "-o",
        ])
        .arg(&file)
        .arg("--")
        .arg(bin)
        .args(args);
        let o = run_with_input(c, input);
        assert!(
            lossy(&o.stderr).contains("fx86 record: wrote"),
            "{name} ({backend}): {}",
            lossy(&o.stderr)
        );
        let mut v = fx86();
        v.arg("verify").arg(&file);
        let vo = run_with_input(v, b"");
        assert_eq!(
            status_code(&vo),
            0,
            "{name} ({backend}): {}",
            lossy(&vo.stdout)
        );
        out.push(Recording::decode(&std::fs::read(&file).expect("read")).expect("decode"));
    }
    out.try_into().unwrap_or_else(|_| unreachable!())
}

#[test]
fn recordings_made_natively_equal_the_interpreters() {
    if !kvm_usable() {
        return;
    }
    let dir = scratch("kvm", "record");
    let digest = build(&guest_src("digest.c"), "gcc", "-O2");
    let file = dir.join("data.txt");
    let mut r = Rng(11);
    let text: String = (0..30000).map(|_| format!("{:x}\n", r.next())).collect();
    std::fs::write(&file, &text).expect("write input");
    let f = file.to_str().expect("utf-8");
    for (name, bin, args) in [
        ("digest", digest.as_path(), vec![f, "/usr"]),
        ("sort", Path::new("/usr/bin/sort"), vec!["-S", "8M"]),
    ] {
        let [i, k] = record_both(&dir, name, bin, &args, text.as_bytes());
        // The same run: the input was taken at the same icounts, the end is the same.
        assert_eq!(k.end, i.end, "{name}: end");
        assert_eq!(k.stdin, i.stdin, "{name}: stdin reads");
        // (The same questions; directory mtimes change as the recordings are written.)
        assert_eq!(
            k.answers.keys().collect::<Vec<_>>(),
            i.answers.keys().collect::<Vec<_>>(),
            "{name}: host questions"
        );
        assert!(k.manifest.recorder.contains("--backend kvm"), "{name}");
        assert!(!i.manifest.recorder.contains("kvm"), "{name}");
        // The kvm recording's checkpoints fall at VM exits: each agrees with a straight
        // interpreted run (`verify` above), and they are spread over the run.
        assert!(k.checkpoints.len() >= 2, "{name}: {:?}", k.checkpoints);
        assert!(k.checkpoints.windows(2).all(|w| w[1].0 >= w[0].0 + 200000));
    }
}

#[test]
fn kicks_put_checkpoints_inside_computations_without_system_calls() {
    if !kvm_usable() {
        return;
    }
    let dir = scratch("kvm", "kicks");
    let spin = build(&guest_src("spin.c"), "gcc", "-O2");
    let file = dir.join("spin.fxr");
    let mut c = fx86();
    c.args(["record", "--backend", "kvm", "--kick-ms", "1"])
        .args(["--checkpoint-interval", "1000000", "-o"])
        .arg(&file)
        .arg("--")
        .arg(&spin)
        .arg("20000000");
    let o = run_with_input(c, b"");
    assert_eq!(status_code(&o), 0, "{}", lossy(&o.stderr));
    let mut v = fx86();
    v.arg("verify").arg(&file);
    let vo = run_with_input(v, b"");
    assert_eq!(status_code(&vo), 0, "{}", lossy(&vo.stdout));
    let r = Recording::decode(&std::fs::read(&file).expect("read")).expect("decode");
    // The loop makes no system call: only kicks (native stretches cut every millisecond and
    // found again by replay) put checkpoints inside it.
    let inside = r
        .checkpoints
        .iter()
        .filter(|c| c.0 > 1_000_000 && c.0 + 1_000_000 < r.end.icount)
        .count();
    assert!(inside >= 3, "{:?} of {}", r.checkpoints, r.end.icount);
}

#[test]
fn gdb_goes_back_in_a_run_recorded_natively() {
    if !kvm_usable() {
        return;
    }
    let dir = scratch("kvm", "gdb");
    let bin = demo_guest();
    // The same session on a replay of each recording: the same transcript.
    let mut seen = Vec::new();
    for backend in ["interp", "kvm"] {
        let file = format!("bug.{backend}.fxr");
        let mut c = fx86();
        c.current_dir(&dir)
            .args(["record", "--backend", backend, "-o", &file, "--"])
            .arg(&bin)
            .arg("7");
        let o = run_with_input(c, b"");
        assert_eq!(status_code(&o), 139, "{}", lossy(&o.stderr));
        let (out, rest) = gdb_with(
            |addr| {
                let mut c = fx86();
                c.current_dir(&dir).args(["replay", &file, "--gdb", addr]);
                c
            },
            Some(&bin),
            OVERFLOW_STORY,
        );
        assert!(!rest.contains("panicked"), "{rest}");
        seen.push(out);
    }
    assert!(
        seen[1].contains("SIGSEGV") && seen[1].contains("$1 = 8"),
        "{}",
        seen[1]
    );
    assert_eq!(seen[1], seen[0], "replays of the kvm and interp recordings");
}

#[test]
fn ctrl_c_ends_a_native_recording_where_it_can_be_replayed() {
    if !kvm_usable() {
        return;
    }
    use std::io::{BufRead, BufReader};
    let dir = scratch("kvm", "interrupt");
    let bin = build(&guest_src("spin.c"), "gcc", "-O2");
    let mut child = fx86()
        .current_dir(&dir)
        .args(["record", "--backend", "kvm", "-o", "spin.fxr", "--"])
        .arg(&bin)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start fx86 record");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    assert_eq!(first, "spinning\n");
    // Now in a native stretch that never leaves the VM by itself.
    std::thread::sleep(std::time::Duration::from_millis(50));
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let o = child.wait_with_output().expect("wait");
    let err = lossy(&o.stderr);
    assert_eq!(status_code(&o), 130, "{err}");
    assert!(
        err.contains("interrupted") && err.contains("wrote"),
        "{err}"
    );
    let mut v = fx86();
    v.current_dir(&dir).args(["verify", "spin.fxr"]);
    let vo = run_with_input(v, b"");
    assert_eq!(status_code(&vo), 0, "{}", lossy(&vo.stdout));
    let mut r = fx86();
    r.current_dir(&dir).args(["replay", "spin.fxr"]);
    let ro = run_with_input(r, b"");
    assert_eq!(status_code(&ro), 130, "{}", lossy(&ro.stderr));
    assert_eq!(lossy(&ro.stdout), "spinning\n");
}
