//! Real C and C++ programs, built static with glibc and musl at -O0 and -O2, must behave under
//! fx86 exactly as they do natively: same stdout, same exit status.

mod common;
use common::*;

const C_GUESTS: &[&str] = &[
    "intops.c",
    "floats.c",
    "longdouble.c",
    "strings.c",
    "sse2.c",
    "mmx.c",
    "selfmod.c",
    "remap.c",
    "signals.c",
    "crash_segv.c",
    "crash_abort.c",
    "crash_fpe.c",
];

fn check_all(cc: &str, opt: &str) {
    for g in C_GUESTS {
        let bin = build(&guest_src(g), cc, opt);
        assert_same_as_native(&bin, &[], b"");
    }
}

#[test]
fn glibc_o0_matches_native() {
    check_all("gcc", "-O0");
}

#[test]
fn glibc_o2_matches_native() {
    check_all("gcc", "-O2");
}

#[test]
fn musl_o0_matches_native() {
    check_all("musl-gcc", "-O0");
}

#[test]
fn musl_o2_matches_native() {
    check_all("musl-gcc", "-O2");
}

#[test]
fn static_pie_matches_native() {
    for g in ["intops.c", "strings.c", "signals.c"] {
        let bin = build(&guest_src(g), "gcc", "-static-pie");
        assert_same_as_native(&bin, &[], b"");
    }
    let bin = build(&guest_src("cxx_throw.cc"), "g++", "-static-pie");
    assert_same_as_native(&bin, &["5"], b"");
}

#[test]
fn cxx_exceptions_match_native() {
    for opt in ["-O0", "-O2"] {
        let bin = build(&guest_src("cxx_exceptions.cc"), "g++", opt);
        assert_same_as_native(&bin, &[], b"");
    }
}

#[test]
fn crashes_report_the_signal() {
    let bin = build(&guest_src("crash_segv.c"), "gcc", "-O2");
    let o = fx86().args(["run", "--"]).arg(&bin).output().expect("run");
    assert_eq!(status_code(&o), 139);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("SIGSEGV") && err.contains("0x10"), "{err}");
    let bin = build(&guest_src("crash_fpe.c"), "musl-gcc", "-O2");
    let o = fx86().args(["run", "--"]).arg(&bin).output().expect("run");
    assert_eq!(status_code(&o), 136);
    let bin = build(&guest_src("crash_abort.c"), "gcc", "-O2");
    let o = fx86().args(["run", "--"]).arg(&bin).output().expect("run");
    assert_eq!(status_code(&o), 134);
    assert!(String::from_utf8_lossy(&o.stderr).contains("SIGABRT"));
}

#[test]
fn unimplemented_instruction_is_sigill_naming_it() {
    // The host CPU may have AVX; fx86's CPU model does not, so the guest gets SIGILL.
    let bin = build(&guest_src("avx.c"), "gcc", "-O2");
    let o = fx86().args(["run", "--"]).arg(&bin).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "before\n");
    assert_eq!(status_code(&o), 132);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("vpxor"),
        "message should name the instruction: {err}"
    );
}

#[test]
fn cpuid_is_the_fx86_model() {
    let bin = build(&guest_src("cpuid_rdtsc.c"), "gcc", "-O2");
    let o = fx86().args(["run", "--"]).arg(&bin).output().expect("run");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "vendor GenuineIntel sse2 1 avx 0 popcnt 1\ntsc increases 1, monotonic>0 1\n"
    );
}

#[test]
fn guest_files_stay_in_the_data_tree() {
    let dir = format!("/tmp/fx86-files-test-{}", std::process::id());
    for cc in ["gcc", "musl-gcc"] {
        let bin = build(&guest_src("files.c"), cc, "-O2");
        let o = assert_same_as_native(&bin, &[&format!("{dir}-native")], b"");
        let _ = o;
        let o = fx86()
            .args(["run", "--"])
            .arg(&bin)
            .arg(&dir)
            .output()
            .expect("run");
        assert!(o.status.success());
        assert!(
            !std::path::Path::new(&dir).exists(),
            "the guest's directory leaked to the host"
        );
        // A file the guest writes to must not change on the host either.
        let host_file = std::env::temp_dir().join(format!("fx86-hostfile-{}", std::process::id()));
        std::fs::write(&host_file, b"original").expect("write");
        let o = fx86()
            .args(["run", "--", "busybox", "sed", "-i", "s/original/changed/"])
            .arg(&host_file)
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(&host_file).expect("read"), b"original");
        std::fs::remove_file(&host_file).expect("cleanup");
    }
}

#[test]
fn runs_are_deterministic() {
    for (g, cc) in [
        ("strings.c", "gcc"),
        ("floats.c", "musl-gcc"),
        ("signals.c", "gcc"),
    ] {
        let bin = build(&guest_src(g), cc, "-O2");
        let a = fx86()
            .args(["run", "--stats", "--"])
            .arg(&bin)
            .output()
            .expect("run");
        let b = fx86()
            .args(["run", "--stats", "--"])
            .arg(&bin)
            .output()
            .expect("run");
        let (la, lb) = (stats_line(&a), stats_line(&b));
        assert_eq!(stat_field(&la, "icount"), stat_field(&lb, "icount"));
        assert_eq!(stat_field(&la, "state"), stat_field(&lb, "state"));
        assert_eq!(stat_field(&la, "state").len(), 64);
    }
}

#[test]
fn max_insns_stops_with_124() {
    let bin = build(&guest_src("intops.c"), "gcc", "-O2");
    let o = fx86()
        .args(["run", "--stats", "--max-insns", "1000", "--"])
        .arg(&bin)
        .output()
        .expect("run");
    assert_eq!(status_code(&o), 124);
    let l = stats_line(&o);
    assert_eq!(stat_field(&l, "icount"), "1000");
}

#[test]
fn bad_programs_get_shell_statuses() {
    let o = fx86()
        .args(["run", "--", "no-such-program-fx86"])
        .output()
        .expect("run");
    assert_eq!(status_code(&o), 127);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let txt = dir.join("not-elf.txt");
    std::fs::write(&txt, b"just some text\n").expect("write");
    let o = fx86().args(["run", "--"]).arg(&txt).output().expect("run");
    assert_eq!(status_code(&o), 126);
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
    // A script whose interpreter does not exist.
    let script = dir.join("bad-interp.sh");
    std::fs::write(&script, b"#!/no/such/interpreter -x\necho hi\n").expect("write");
    let o = fx86()
        .args(["run", "--"])
        .arg(&script)
        .output()
        .expect("run");
    assert_eq!(status_code(&o), 126);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad interpreter /no/such/interpreter"),
        "{err}"
    );
    // A truncated copy of a real executable: a one-line error, never a panic.
    let bin = build(&guest_src("intops.c"), "gcc", "-O2");
    let bytes = std::fs::read(&bin).expect("read");
    for cut in [10, 63, 64, 200, 4096, bytes.len() / 2] {
        let t = dir.join(format!("trunc-{cut}"));
        std::fs::write(&t, &bytes[..cut]).expect("write");
        let o = fx86().args(["run", "--"]).arg(&t).output().expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "cut {cut}: {err}");
        assert!(status_code(&o) != 0, "cut {cut} ran?");
    }
    // A 32-bit ELF header.
    let mut h = bytes[..64].to_vec();
    h[4] = 1;
    let t = dir.join("elf32");
    std::fs::write(&t, &h).expect("write");
    let o = fx86().args(["run", "--"]).arg(&t).output().expect("run");
    assert_eq!(status_code(&o), 126);
    assert!(String::from_utf8_lossy(&o.stderr).contains("32-bit"));
}

#[test]
fn program_found_on_path_and_args_env_pass_through() {
    let o = fx86()
        .args([
            "run",
            "--",
            "busybox",
            "sh",
            "-c",
            "echo $FX86_TEST_VAR $0 $1",
            "zero",
            "one",
        ])
        .env("FX86_TEST_VAR", "from-host")
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "from-host zero one\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn standard_streams_are_pipes_as_natively() {
    let bin = build(&guest_src("stdio_kinds.c"), "gcc", "-O2");
    let input: Vec<u8> = (0..20000u32).map(|i| b'a' + (i % 26) as u8).collect();
    assert_same_as_native(&bin, &[], &input);
}
