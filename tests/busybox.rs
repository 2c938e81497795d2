//! Debian's busybox-static applets on generated data must match native output byte for byte.

mod common;
use common::*;
use std::path::PathBuf;

const BUSYBOX: &str = "/bin/busybox";

/// Deterministic text: lines of words and numbers.
fn text(lines: usize) -> Vec<u8> {
    let mut s = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    ];
    for i in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!(
            "{} {} {} {}\n",
            words[(x % 10) as usize],
            x % 100_000,
            i,
            words[((x >> 20) % 10) as usize]
        ));
    }
    s.into_bytes()
}

fn data_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&p, bytes).expect("write data");
    p
}

fn applet(args: &[&str], input: &[u8]) {
    let bb = std::path::Path::new(BUSYBOX);
    assert!(
        bb.exists(),
        "{BUSYBOX} missing: .ci/run installs busybox-static"
    );
    let o = assert_same_as_native(bb, args, input);
    assert!(
        !o.stdout.is_empty() || args.contains(&"-c"),
        "no output from {args:?}"
    );
}

#[test]
fn sha256sum_md5sum_wc_od() {
    let t = text(20_000);
    applet(&["sha256sum"], &t);
    applet(&["md5sum"], &t);
    applet(&["wc"], &t);
    applet(&["od", "-A", "x", "-t", "x1"], &t[..4096]);
}

#[test]
fn sort_variants() {
    let t = text(20_000);
    applet(&["sort"], &t);
    applet(&["sort", "-n", "-k", "2"], &t);
    applet(&["sort", "-r", "-u", "-k", "1,1"], &t);
}

#[test]
fn gzip_and_bzip2_round_trips() {
    let t = text(30_000);
    applet(&["gzip", "-c", "-9"], &t);
    applet(&["bzip2", "-c"], &t);
    let gz = std::process::Command::new(BUSYBOX)
        .args(["gzip", "-c"])
        .arg(data_file("bb-text", &t))
        .output()
        .expect("gzip");
    applet(&["gzip", "-d", "-c"], &gz.stdout);
}

#[test]
fn awk_and_sed() {
    let t = text(10_000);
    applet(
        &[
            "awk",
            "{ s[$1] += $2; n++ } END { for (k in s) print k, s[k]; print n, n/7 }",
        ],
        &t,
    );
    applet(
        &[
            "awk",
            "-F",
            " ",
            "$2 > 50000 { printf \"%s:%08.3f\\n\", $4, $2/3 }",
        ],
        &t,
    );
    applet(
        &[
            "sed",
            "-e",
            "s/\\([a-z]*\\) \\([0-9]*\\)/\\2=\\1/",
            "-e",
            "/golf/d",
        ],
        &t,
    );
}

#[test]
fn applets_reading_files() {
    let t = text(5_000);
    let f = data_file("bb-input.txt", &t);
    let f = f.to_str().expect("utf8 path");
    applet(&["sha256sum", f], b"");
    applet(&["wc", "-l", f], b"");
    applet(&["ls", "-1", "-a", env!("CARGO_MANIFEST_DIR")], b"");
}
