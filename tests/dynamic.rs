//! Dynamically linked programs as gcc and Debian build them: the machine's own tools compared
//! with native runs, a plain `gcc -O2 -lm` program, what a process sees in /proc, /sys and
//! /dev, recordings of dynamic programs, and gdb with shared libraries.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn scratch(name: &str) -> PathBuf {
    common::scratch("dynamic", name)
}

fn text(b: &[u8]) -> String {
    lossy(b)
}

/// Builds a guest the way gcc does by default: a dynamically linked PIE.
fn build_dynamic(src: &Path, opt: &str) -> PathBuf {
    build_dynamic_with("gcc", src, opt)
}

/// `build_dynamic` with another compiler driver (g++ for C++).
fn build_dynamic_with(cc: &str, src: &Path, opt: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&dir).expect("dir");
    let stem = src.file_stem().expect("stem").to_string_lossy();
    let out =
        dir.join(format!("{stem}-dyn-{cc}-{}", opt.trim_start_matches('-')).replace('+', "x"));
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_extension(format!("tmp{}-{n}", std::process::id()));
    let ok = Command::new(cc)
        .args([opt, "-g", "-o"])
        .arg(&tmp)
        .arg(src)
        .args(["-lm", "-lpthread"])
        .status()
        .expect("gcc")
        .success();
    assert!(ok, "gcc failed on {}", src.display());
    std::fs::rename(&tmp, &out).expect("rename");
    out
}

/// Text-like data: numbers and words, deterministic.
fn data_file(dir: &Path, lines: usize) -> PathBuf {
    let mut rng = Rng(42);
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    let mut s = String::new();
    for i in 0..lines {
        let w = words[(rng.next() % 8) as usize];
        s.push_str(&format!("{} {w} {}\n", rng.next() % 100_000, i % 17));
    }
    let p = dir.join("data.txt");
    std::fs::write(&p, s).expect("data");
    p
}

/// Runs `cmd` natively and under `fx86 run` in `dir`; stdout and status must agree.
fn same_as_native(dir: &Path, cmd: &[&str]) {
    let native = Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cmd[0]));
    let emu = fx86()
        .arg("run")
        .arg("--")
        .args(cmd)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("fx86");
    assert!(
        native.stdout == emu.stdout,
        "stdout differs for {cmd:?}:\nnative: {}\nfx86:   {}\nfx86 stderr: {}",
        text(&native.stdout[..native.stdout.len().min(300)]),
        text(&emu.stdout[..emu.stdout.len().min(300)]),
        text(&emu.stderr)
    );
    assert_eq!(
        status_code(&emu),
        status_code(&native),
        "status differs for {cmd:?}: {}",
        text(&emu.stderr)
    );
    assert!(!text(&emu.stderr).contains("panicked"));
}

#[test]
fn debian_tools_match_native_runs() {
    let dir = scratch("tools");
    data_file(&dir, 20_000);
    for cmd in [
        &["sort", "-k2,2", "-k1,1n", "data.txt"][..],
        &["sha256sum", "data.txt"],
        &["md5sum", "data.txt"],
        &["wc", "data.txt"],
        &["gzip", "-n", "-6", "-c", "data.txt"],
        &["grep", "-c", "-E", "gamma [0-9]+$", "data.txt"],
        &["grep", "-n", "theta 1[0-3]$", "data.txt"],
        &[
            "mawk",
            "{ s[$2] += $1 } END { for (k in s) n++; print n, s[\"beta\"] }",
            "data.txt",
        ],
        &["uniq", "-c", "data.txt"],
        &["xz", "-c", "-3", "data.txt"],
    ] {
        same_as_native(&dir, cmd);
    }
}

#[test]
fn python_and_perl_match_native_runs() {
    let dir = scratch("interp");
    same_as_native(
        &dir,
        &[
            "/usr/bin/python3.11",
            "-S",
            "-c",
            "import hashlib, json\n\
             print(hashlib.sha256(b'fx86' * 5000).hexdigest(), hashlib.md5(b'x').hexdigest())\n\
             print(json.dumps({'n': [1, 2.5, None, 'x'], 'big': 3 ** 150}, sort_keys=True))\n\
             print(pow(7, 10 ** 5, 10 ** 40 + 123), (2 ** 521 - 1) % 1000003)",
        ],
    );
    same_as_native(
        &dir,
        &[
            "perl",
            "-e",
            "my %h; $h{$_ % 97} += $_ * $_ for 1..30000; \
             print join(',', map { \"$_=$h{$_}\" } sort { $a <=> $b } keys %h), \"\\n\"; \
             my $s = join '', map { chr(65 + $_ % 26) } 1..5000; $s =~ s/(ABC)/<$1>/g; \
             print length($s), ' ', substr($s, 0, 40), \"\\n\"; printf(\"%.10f\\n\", atan2(1, 1) * 4);",
        ],
    );
}

#[test]
fn scripts_run_with_their_interpreter() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("scripts");
    let script = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    script(
        "args.py",
        "#!/usr/bin/python3 -S\nimport sys\nprint('args', sys.argv)\n",
    );
    script("hello.sh", "#!/bin/sh\nx=6; echo \"sh: $1 $((x * 7))\"\n");
    script("nested", &format!("#!{}\n", dir.join("hello.sh").display()));
    same_as_native(&dir, &["./args.py", "one", "two words"]);
    same_as_native(&dir, &["./hello.sh", "hi"]);
    same_as_native(&dir, &["./nested", "x"]);
}

#[test]
fn a_plain_gcc_program_matches_native() {
    for g in ["floats.c", "intops.c", "strings.c", "mmx.c", "sysmisc.c"] {
        let bin = build_dynamic(&guest_src(g), "-O2");
        assert_same_as_native(&bin, &[], b"");
    }
    // C++ with exceptions unwinding through the shared libstdc++ and libgcc_s.
    let bin = build_dynamic_with("g++", &guest_src("cxx_exceptions.cc"), "-O2");
    assert_same_as_native(&bin, &[], b"");
}

#[test]
fn proc_sys_and_dev_describe_the_guest_not_the_host() {
    let bin = build_dynamic(&guest_src("procfiles.c"), "-O2");
    let run = |seed: &str, args: &[&str]| {
        let o = fx86()
            .args(["run", "--seed", seed, "--"])
            .arg(&bin)
            .args(args)
            .output()
            .expect("fx86");
        (text(&o.stdout), text(&o.stderr), status_code(&o))
    };
    let (out, err, code) = run("1", &["one"]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "exe matches argv0: 1",
        "maps names exe: 1, has stack: 1, has libc: 1",
        "auxv entry agrees: 1, loader base set: 1",
        // /proc/cpuinfo says what CPUID says.
        "cpuinfo sse2 1/1 avx 0/0 mmx 1/1",
        "online cpus 1",
        "cmdline arg1: one",
        "zero 0, null write 1",
        "ld.so.cache readable: 1",
        "fd link /etc/passwd, fd dir lists it 1, entries >= 5: 1",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // /dev/urandom comes from the run's seed.
    let (again, _, _) = run("1", &["one"]);
    assert_eq!(out, again);
    let (other, _, _) = run("2", &["one"]);
    let rnd = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("urandom"))
            .map(String::from)
    };
    assert_ne!(rnd(&out), rnd(&other));
    // Threads and processes: a clean error for the guest and an explanation from fx86.
    let (out, err, code) = run("1", &["one", "two"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pthread_create: Resource temporarily unavailable"),
        "{out}"
    );
    assert!(
        out.contains("fork: Resource temporarily unavailable"),
        "{out}"
    );
    assert!(err.contains("single-threaded"), "{err}");
}

#[test]
fn a_dynamic_program_records_and_replays_without_its_libraries_in_place() {
    let dir = scratch("record");
    let data = data_file(&dir, 3000);
    let rec = dir.join("sort.fxr");
    let native = Command::new("sort")
        .arg("-n")
        .arg(&data)
        .output()
        .expect("sort");
    let o = fx86()
        .arg("record")
        .arg("-o")
        .arg(&rec)
        .args(["--", "sort", "-n"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .expect("record");
    assert_eq!(o.stdout, native.stdout, "{}", text(&o.stderr));
    std::fs::remove_file(&data).expect("delete input");
    let info = text(&fx86().arg("info").arg(&rec).output().expect("info").stdout);
    // The loader, libc and the input are in the recording.
    let files: usize = info
        .lines()
        .find(|l| l.starts_with("files"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("files line");
    assert!(files >= 3, "{info}");
    let r = fx86().arg("replay").arg(&rec).output().expect("replay");
    assert_eq!(r.stdout, native.stdout, "{}", text(&r.stderr));
    let v = fx86().arg("verify").arg(&rec).output().expect("verify");
    assert!(v.status.success(), "{}", text(&v.stdout));
}

#[test]
fn gdb_breaks_in_libc_backtraces_and_reverse_finishes_into_the_program() {
    let src = scratch("gdb").join("sorter.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <stdlib.h>\n\
         static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }\n\
         int work(int n) {\n\
             int *v = malloc(n * sizeof *v);\n\
             for (int i = 0; i < n; i++) v[i] = (i * 7919) % n;\n\
             qsort(v, n, sizeof *v, cmp);\n\
             int s = v[n / 2];\n\
             printf(\"median %d\\n\", s);\n\
             free(v);\n\
             return s;\n\
         }\n\
         int main(void) { return work(101) & 1; }\n",
    )
    .expect("source");
    let bin = build_dynamic(&src, "-O0");
    let cmds = [
        "break qsort",
        "continue",
        "bt",
        "info sharedlibrary",
        "reverse-finish",
        "bt 1",
        "delete 1",
        "break printf",
        "continue",
        "finish",
        "kill",
    ];
    let (out, rest) = gdb_session(&["gdbserver"], &bin, Some(&bin), &cmds);
    check_sorter_session(&out, &rest);
    // gdb reads the libraries from the guest's file system, not its own.
    assert!(out.contains("libc.so.6 from remote target"), "{out}");

    // The same session on a replay, with no program file given to gdb: the program comes from
    // the recording, the libraries from the files the recorded run read.
    let rec = src.with_file_name("sorter.fxr");
    let o = fx86()
        .arg("record")
        .arg("-o")
        .arg(&rec)
        .arg("--")
        .arg(&bin)
        .output()
        .expect("record");
    assert_eq!(status_code(&o), 0, "{}", text(&o.stderr));
    let rec_s = rec.to_string_lossy().into_owned();
    let (out, rest) = gdb_session(&["replay", &rec_s, "--gdb"], &bin, None, &cmds);
    check_sorter_session(&out, &rest);
}

/// `fx86 gdbserver` on `bin`, or `fx86 ARGS ADDR`, with gdb running `cmds` against it.
fn gdb_session(
    args: &[&str],
    bin: &Path,
    gdb_file: Option<&Path>,
    cmds: &[&str],
) -> (String, String) {
    gdb_with(
        |addr| {
            let mut cmd = fx86();
            if args[0] == "gdbserver" {
                cmd.args(["gdbserver", "--listen", addr, "--"]).arg(bin);
            } else {
                cmd.args(args).arg(addr);
            }
            cmd
        },
        gdb_file,
        cmds,
    )
}

fn check_sorter_session(out: &str, rest: &str) {
    assert!(
        out.contains("Breakpoint 1, ") && out.contains("qsort"),
        "{out}"
    );
    // The backtrace goes from libc through the program.
    assert!(out.contains("in work (n=101) at"), "{out}");
    assert!(out.contains("in main () at"), "{out}");
    assert!(out.contains("libc.so.6"), "{out}");
    // reverse-finish returns to the call in work, the program's own code.
    let after = &out[out.find("libc.so.6").expect("libraries")..];
    assert!(
        after.contains("#0  ") && after.contains("work (n=101)"),
        "{out}"
    );
    assert!(
        out.contains("Breakpoint 2, ") && out.contains("printf"),
        "{out}"
    );
    assert!(out.contains("Value returned is $1 = 10"), "{out}");
    assert!(!rest.contains("panicked"), "{rest}");
}
