//! Time travel on real guests: `goto(n)` from any snapshot gives exactly the state a straight
//! run gives at n; `reverse_continue` finds the same hits as a brute-force forward scan;
//! watchpoints fire for every way memory changes.

mod common;
use common::*;
use fx86_engine::host::{Host, HostStat, StdHost};
use fx86_engine::mem::{Watch, WatchKind};
use fx86_engine::{Config, Machine, ReverseStop, StopReason, Timeline};
use fx86_snapshots::FileKind;
use std::sync::{Arc, Mutex};

/// A host with fixed stdin and captured output.
struct TestHost {
    fs: StdHost,
    stdin: Vec<u8>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Host for TestHost {
    fn read_stdin(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.stdin.len());
        self.stdin.drain(..n).collect()
    }
    fn write_output(&mut self, _fd: i32, data: &[u8]) {
        self.out.lock().unwrap().extend_from_slice(data);
    }
    fn diagnostic(&mut self, _msg: &str) {}
    fn lstat(&mut self, p: &str) -> Option<HostStat> {
        self.fs.lstat(p)
    }
    fn read_file(&mut self, p: &str) -> Option<std::sync::Arc<Vec<u8>>> {
        self.fs.read_file(p)
    }
    fn read_link(&mut self, p: &str) -> Option<Vec<u8>> {
        self.fs.read_link(p)
    }
    fn list_dir(&mut self, p: &str) -> Option<Vec<(String, FileKind)>> {
        self.fs.list_dir(p)
    }
}

fn machine(prog: &str, args: &[&str], stdin: &[u8]) -> (Machine, Arc<Mutex<Vec<u8>>>) {
    let bytes = std::fs::read(prog).expect("read guest");
    let mut argv = vec![prog.as_bytes().to_vec()];
    argv.extend(args.iter().map(|a| a.as_bytes().to_vec()));
    let config = Config {
        args: argv,
        env: vec![b"PATH=/usr/bin:/bin".to_vec(), b"LANG=C".to_vec()],
        exe: prog.to_string(),
        cwd: "/".into(),
        seed: 7,
        tty: false,
    };
    let out = Arc::new(Mutex::new(Vec::new()));
    let host = TestHost {
        fs: StdHost::default(),
        stdin: stdin.to_vec(),
        out: out.clone(),
    };
    (
        Machine::new(&bytes, config, Box::new(host)).expect("load"),
        out,
    )
}

fn input() -> Vec<u8> {
    (0..3000)
        .map(|i| format!("{} line {}\n", (i * 7919) % 1000, i))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn goto_equals_a_straight_run() {
    let stdin = input();
    let (mut full, _) = machine("/bin/busybox", &["sort", "-n"], &stdin);
    let total = {
        let stop = full.run(u64::MAX);
        assert_eq!(stop, StopReason::Exited(0));
        full.icount
    };
    for interval in [7_919u64, 100_000] {
        let (m, out) = machine("/bin/busybox", &["sort", "-n"], &stdin);
        let mut tl = Timeline::new(m, interval, 1 << 30);
        assert_eq!(tl.run_forward(u64::MAX), StopReason::Exited(0));
        assert_eq!(tl.icount(), total);
        let mut rng = Rng(interval | 1);
        let mut targets: Vec<u64> = (0..12).map(|_| rng.next() % (total + 1)).collect();
        targets.extend([0, 1, total - 1, total, interval, interval - 1, interval + 1]);
        for n in targets {
            tl.goto(n);
            assert_eq!(tl.icount(), n);
            let (mut straight, _) = machine("/bin/busybox", &["sort", "-n"], &stdin);
            straight.run(n);
            assert_eq!(
                tl.machine().state_hash(),
                straight.state_hash(),
                "state after goto({n}) differs from a straight run (interval {interval})"
            );
        }
        // Going back and forth printed the output once, and it is sorted input.
        if interval == 7_919 {
            let printed = out.lock().unwrap().clone();
            let mut lines: Vec<&str> = std::str::from_utf8(&stdin).unwrap().lines().collect();
            lines.sort_by_key(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap());
            assert_eq!(printed.iter().filter(|&&b| b == b'\n').count(), lines.len());
        }
        tl.goto(total);
        tl.step_back(1);
        assert_eq!(tl.icount(), total - 1);
        let (mut straight, _) = machine("/bin/busybox", &["sort", "-n"], &stdin);
        straight.run(total - 1);
        assert_eq!(tl.machine().state_hash(), straight.state_hash());
    }
}

/// Every icount k at which the state is "about to execute a breakpoint", by running forward.
fn brute_force_hits(prog: &str, bps: &[u64]) -> Vec<u64> {
    let (mut m, _) = machine(prog, &["300"], b"");
    m.set_breakpoints(bps.iter().copied());
    let mut hits = Vec::new();
    let mut r = m.run_continuing(u64::MAX);
    while let StopReason::Breakpoint(_) = r {
        hits.push(m.icount);
        r = m.run(u64::MAX);
    }
    hits
}

#[test]
fn reverse_continue_equals_brute_force() {
    let bin = build(&guest_src("intops.c"), "musl-gcc", "-O2");
    let prog = bin.to_str().unwrap();
    let (mut probe, _) = machine(prog, &["300"], b"");
    probe.run(u64::MAX);
    let total = probe.icount;
    let mut rng = Rng(99);
    // Breakpoints at instructions the program really executes.
    let mut bps = Vec::new();
    for _ in 0..3 {
        let (mut p, _) = machine(prog, &["300"], b"");
        p.run(rng.next() % total);
        bps.push(p.cpu.rip);
    }
    let hits = brute_force_hits(prog, &bps);
    assert!(!hits.is_empty());
    let (m, _) = machine(prog, &["300"], b"");
    let mut tl = Timeline::new(m, 5_000, 1 << 30);
    tl.run_forward(u64::MAX);
    for _ in 0..15 {
        let present = rng.next() % (total + 1);
        tl.goto(present);
        tl.set_breakpoints(bps.iter().copied());
        let r = tl.reverse_continue();
        tl.set_breakpoints([]);
        match hits.iter().rev().find(|&&k| k < present) {
            Some(&k) => {
                assert_eq!(tl.icount(), k, "from {present}");
                assert!(matches!(r, ReverseStop::Breakpoint(a) if bps.contains(&a)));
            }
            None => {
                assert_eq!(r, ReverseStop::HistoryStart);
                assert_eq!(tl.icount(), 0);
            }
        }
    }
    // Repeated reverse-continues walk the hits backwards one by one.
    tl.goto(total);
    tl.set_breakpoints(bps.iter().copied());
    for &k in hits.iter().rev().take(20) {
        assert_eq!(
            tl.reverse_continue(),
            ReverseStop::Breakpoint(tl.machine().cpu.rip)
        );
        assert_eq!(tl.icount(), k);
    }
}

#[test]
fn watchpoints_see_every_write_path() {
    let bin = build(&guest_src("watch.c"), "gcc", "-O2");
    let prog = bin.to_str().unwrap();
    let (m, out) = machine(prog, &[], b"\x77\0\0\0\0\0\0\0");
    let mut tl = Timeline::new(m, 10_000, 1 << 30);
    // Run until the address is printed.
    while !out.lock().unwrap().contains(&b'\n') {
        assert_eq!(tl.run_forward(tl.icount() + 1), StopReason::Limit);
    }
    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    let addr = u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).unwrap();
    tl.set_watches(vec![Watch {
        start: addr,
        len: 8,
        kind: WatchKind::Write,
    }]);
    let mut forward = Vec::new();
    loop {
        match tl.run_forward(u64::MAX) {
            StopReason::Watch(hit) => forward.push((tl.icount(), hit)),
            StopReason::Exited(0) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let news: Vec<u64> = forward
        .iter()
        .map(|(_, h)| {
            let mut b = [0u8; 8];
            let off = addr.saturating_sub(h.addr) as usize;
            let n = h.new.len().saturating_sub(off).min(8);
            b[..n].copy_from_slice(&h.new[off..off + n]);
            u64::from_le_bytes(b)
        })
        .collect();
    // plain, 8 rep stosb iterations, xchg, cmpxchg, push, SSE store, read(2)
    assert_eq!(forward.len(), 1 + 8 + 1 + 1 + 1 + 1 + 1, "{news:x?}");
    assert_eq!(news[0], 0x11);
    assert_eq!(news[8] & 0xff, 0x22);
    assert_eq!(&news[9..], &[0x33, 0x44, 0x55, 0x66, 0x77]);
    assert_eq!(
        forward[1].1.old,
        vec![0x11],
        "old value of the first rep stosb byte"
    );
    // Backwards: each reverse-continue stops just before the writing instruction.
    let end = tl.icount();
    tl.goto(end);
    for (k, hit) in forward.iter().rev() {
        match tl.reverse_continue() {
            ReverseStop::Watch(h) => assert_eq!(&h, hit),
            other => panic!("expected a watch hit, got {other:?}"),
        }
        assert_eq!(tl.icount(), k - 1);
    }
    assert_eq!(tl.reverse_continue(), ReverseStop::HistoryStart);
    // A read watchpoint ignores the pure stores; the first read is xchg's (it reads and
    // writes), the last is the final printf's.
    tl.set_watches(vec![Watch {
        start: addr,
        len: 8,
        kind: WatchKind::Read,
    }]);
    let mut reads = Vec::new();
    while let StopReason::Watch(h) = tl.run_forward(u64::MAX) {
        assert!(!h.write);
        assert_eq!(h.old, h.new);
        reads.push(tl.icount());
    }
    assert_eq!(reads.first(), Some(&forward[9].0), "first read is the xchg");
    assert!(
        reads.last().unwrap() > &forward.last().unwrap().0,
        "printf reads after the last write"
    );
}

#[test]
fn long_moves_report_progress_and_can_be_cancelled() {
    let bin = build(&guest_src("intops.c"), "musl-gcc", "-O2");
    let prog = bin.to_str().unwrap();
    let (m, _) = machine(prog, &["2000000"], b"");
    let mut tl = Timeline::with_adaptive_interval(m, 1 << 30);
    let cancel = tl.cancel_handle();
    let progress = tl.progress();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let r = tl.run_forward(u64::MAX);
    t.join().unwrap();
    // intops with 2,000,000 iterations runs ~340 million instructions: it cannot finish in
    // 300 ms, so the run must have stopped on the cancel, at a valid point.
    assert_eq!(r, StopReason::Limit);
    let stopped = tl.icount();
    assert!(stopped > 0 && progress.done.load(std::sync::atomic::Ordering::Relaxed) == stopped);
    assert!(
        (100_000..=20_000_000).contains(&tl.interval()),
        "adaptive interval {}",
        tl.interval()
    );
    // The history is intact: go back to the middle and compare with a straight run.
    tl.goto(stopped / 2);
    let (mut straight, _) = machine(prog, &["2000000"], b"");
    straight.run(stopped / 2);
    assert_eq!(tl.machine().state_hash(), straight.state_hash());
}

#[test]
fn history_keeps_the_files_it_saw_when_the_host_changes_them() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("frozen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("input.txt");
    std::fs::write(&file, "3\n1\n2\n").expect("write");
    let path = file.to_string_lossy().into_owned();
    let (m, out) = machine("/bin/busybox", &["sort", &path], b"");
    let mut tl = Timeline::new(m, 5_000, 1 << 30);
    assert_eq!(tl.run_forward(u64::MAX), StopReason::Exited(0));
    assert_eq!(String::from_utf8_lossy(&out.lock().unwrap()), "1\n2\n3\n");
    // States all along the history (every 97 instructions, so that some re-execute the read
    // from a snapshot taken before it), before and after the host file changes.
    let end = tl.icount() - 1;
    let targets: Vec<u64> = (0..end).step_by(97).chain([end]).collect();
    let before: Vec<_> = targets
        .iter()
        .map(|&n| {
            tl.goto(n);
            tl.machine().state_hash()
        })
        .collect();
    // The host file changes (contents, size and time) while the history is being explored.
    std::fs::write(&file, "9\n8\n7\n6\n5\n").expect("rewrite");
    for (&n, h) in targets.iter().zip(&before).rev() {
        tl.goto(n);
        assert_eq!(
            tl.machine().state_hash(),
            *h,
            "re-execution to icount {n} saw the changed file"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
