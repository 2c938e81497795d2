//! Writes a small valid recording, whole and without its checksum trailer, as seeds for the
//! `recording` target: `cargo +nightly run --release --bin make_seed -- corpus/recording`.
use fx86_snapshots::recording::{Answer, End, Query, Recording};

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus/recording".into());
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let mut r = Recording::default();
    r.manifest.program = r.add_blob(b"\x7fELF tiny program".to_vec());
    r.manifest.exe = "/bin/prog".into();
    r.manifest.args = vec![b"prog".to_vec(), b"arg".to_vec()];
    r.manifest.cwd = "/".into();
    let f = r.add_blob(b"file contents file contents".to_vec());
    r.answers.insert((Query::File, "/etc/x".into()), Answer::File(Some(f)));
    r.answers.insert(
        (Query::Lstat, "/etc/x".into()),
        Answer::Lstat(Some((fx86_snapshots::FileKind::File, 0o644, 27, 1_700_000_000, 0))),
    );
    r.answers.insert((Query::Link, "/l".into()), Answer::Link(Some(b"/etc/x".to_vec())));
    r.answers.insert((Query::Dir, "/etc".into()), Answer::Dir(None));
    r.stdin = vec![(10, b"abc".to_vec()), (20, b"def".to_vec())];
    r.checkpoint_interval = 100;
    r.checkpoints = vec![(0, [1; 32]), (100, [2; 32])];
    r.end = End { icount: 150, status: 0, reason: "exited with status 0".into(), hash: [3; 32] };
    let full = r.encode();
    // Both forms: the whole file, and the body the unchecked parser sees first.
    std::fs::write(format!("{dir}/full"), &full).expect("seed");
    std::fs::write(format!("{dir}/body"), &full[..full.len() - 41]).expect("seed");
}
