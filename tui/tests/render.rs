//! The TUI's state, update and drawing on real guests, rendered into ratatui's TestBackend.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use fx86_engine::host::StdHost;
use fx86_engine::{Config, Machine, Timeline};
use fx86_tui::{debug_info, draw, App, Cmd, Mark, Pane, View, Worker};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds a C guest from the repository with gcc (static, with debug info).
fn build(rel: &str, flags: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = root.join(rel);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tui-guests");
    std::fs::create_dir_all(&dir).expect("dir");
    let stem = src
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let out = dir.join(format!("{stem}{}", flags.join("").replace(['-', ' '], "_")));
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_extension(format!("tmp{}-{n}", std::process::id()));
    let ok = Command::new("gcc")
        .args(flags)
        .args(["-g", "-fno-stack-protector", "-o"])
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("gcc")
        .success();
    assert!(ok, "gcc failed on {}", src.display());
    std::fs::rename(&tmp, &out).expect("rename");
    out
}

fn load(path: &Path, args: &[&str]) -> (Timeline, Vec<u8>) {
    let bytes = std::fs::read(path).expect("guest");
    let mut argv = vec![path.to_string_lossy().as_bytes().to_vec()];
    argv.extend(args.iter().map(|a| a.as_bytes().to_vec()));
    let config = Config {
        args: argv,
        env: vec![],
        exe: path.to_string_lossy().into_owned(),
        cwd: "/".into(),
        seed: 1,
        tty: false,
    };
    let host = StdHost {
        capture: Some(Vec::new()),
        stdin: Some(Default::default()),
        ..Default::default()
    };
    let m = Machine::new(&bytes, config, Box::new(host)).expect("load");
    (Timeline::new(m, 10_000, 1 << 30), bytes)
}

/// A worker over `path` and an app showing its first view.
fn start(path: &Path, args: &[&str]) -> (Worker, App) {
    let (mut tl, elf) = load(path, args);
    let di = debug_info(&mut tl, &elf);
    let w = Worker::start(tl, di, None);
    let mut app = App::new(path.display().to_string());
    app.set_view(w.wait_view().expect("first view"));
    (w, app)
}

fn screen_sized(app: &App, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    term.draw(|f| draw(f, app)).expect("draw");
    let buf = term.backend().buffer().clone();
    let mut s = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            s.push_str(buf[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}

fn screen(app: &App) -> String {
    screen_sized(app, 160, 48)
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

/// Sends what the keys ask for and waits for the resulting (not busy) view.
fn keys(w: &Worker, app: &mut App, ks: &[KeyEvent]) -> View {
    let mut cmd = None;
    for k in ks {
        cmd = app.on_key(*k).or(cmd);
    }
    w.send(cmd.expect("the keys make a command"));
    let mut v = w.wait_view().expect("view");
    while v.busy {
        v = w.wait_view().expect("view");
    }
    app.set_view(v.clone());
    v
}

fn typed(prefix: char, text: &str) -> Vec<KeyEvent> {
    let mut v = vec![key(prefix)];
    v.extend(text.chars().map(key));
    v.push(code(KeyCode::Enter));
    v
}

fn line(v: &View) -> u32 {
    v.source.as_ref().expect("source pane").line
}

#[test]
fn steps_run_and_unprint_output() {
    let (w, mut app) = start(Path::new("/bin/busybox"), &["echo", "hello from the past"]);
    let s = screen(&app);
    assert!(
        s.contains("Disassembly") && s.contains("Registers") && s.contains("icount 0 / 0"),
        "{s}"
    );
    let v = keys(&w, &mut app, &[key('s')]);
    assert_eq!(v.icount, 1);
    assert!(v.changed.contains(&"rip"));
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("exited with status 0"), "{}", v.status);
    assert!(v.output.contains("hello from the past"));
    let end = v.icount;
    assert!(screen(&app).contains("hello from the past"));
    // g 1 Enter: back to icount 1, where nothing had been printed yet.
    let v = keys(&w, &mut app, &typed('g', "1"));
    assert_eq!(v.icount, 1);
    assert!(!v.output.contains("hello"), "output un-prints going back");
    let s = screen(&app);
    assert!(s.contains(&format!("icount 1 / {end}")), "{s}");
    assert!(!s.contains("hello from the past"), "{s}");
    // The timeline marks the write syscall (and the exit) that happened later.
    assert!(v.marks.iter().any(|(ic, m)| *m == Mark::Syscall && *ic > 1));
    // ? shows the key help; q quits.
    app.on_key(key('?'));
    assert!(screen(&app).contains("continue forward / back"));
    app.on_key(code(KeyCode::Esc));
    assert!(!app.show_help);
    assert_eq!(app.on_key(key('q')), Some(Cmd::Quit));
    assert!(app.quit);
}

#[test]
fn source_backtrace_next_and_finish() {
    let bin = build("tests/guests/nav.c", &["-static", "-O0"]);
    let (w, mut app) = start(&bin, &[]);
    let v = keys(&w, &mut app, &typed('b', "square"));
    assert!(v.status.contains("breakpoint set"), "{}", v.status);
    assert_eq!(v.breakpoints.len(), 1);
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("<square>"), "{}", v.status);
    let src = v.source.clone().expect("source");
    assert!(src.file.ends_with("nav.c"), "{}", src.file);
    assert!(src.lines.iter().any(|(_, t)| t.contains("depth++")));
    // The backtrace walks square <- sum_squares <- main with file:line.
    assert!(
        v.backtrace[0].contains("square at nav.c:"),
        "{:?}",
        v.backtrace
    );
    assert!(v.backtrace[1].contains("sum_squares+"), "{:?}", v.backtrace);
    assert!(v.backtrace[1].contains("nav.c:12"), "{:?}", v.backtrace);
    assert!(v.backtrace[2].contains("main+"), "{:?}", v.backtrace);
    let s = screen(&app);
    assert!(s.contains("Source: nav.c:4") && s.contains("#1 "), "{s}");
    let entry = v.icount;
    let depth_line = line(&v) + 1;
    // n: the next line of square.
    let v = keys(&w, &mut app, &[key('n')]);
    assert_eq!(line(&v), depth_line);
    let v = keys(&w, &mut app, &[key('n')]);
    assert_eq!(line(&v), depth_line + 1);
    // f: back in sum_squares, at the line of the call.
    let v = keys(&w, &mut app, &[key('f')]);
    assert!(v.backtrace[0].contains("sum_squares+"), "{:?}", v.backtrace);
    assert_eq!(line(&v), 12);
    let after_return = v.icount;
    // N: back to the start of the line, over the call (the breakpoint in square stops it,
    // as gdb's reverse-next does).
    let v = keys(&w, &mut app, &[key('N')]);
    assert!(v.status.contains("<square> (reverse)"), "{}", v.status);
    assert_eq!(v.icount, entry);
    // F: back to the call instruction in sum_squares.
    let v = keys(&w, &mut app, &[key('F')]);
    assert_eq!(v.icount, entry - 1);
    assert!(v
        .disasm
        .iter()
        .any(|d| d.current && d.text.starts_with("call")));
    // Without the breakpoint, n steps over the call and N goes back over it.
    keys(&w, &mut app, &typed('b', "square"));
    let v = keys(&w, &mut app, &[key('n')]);
    assert!(v.icount > after_return, "next ran the call");
    assert_ne!(line(&v), 12);
    let v2 = keys(&w, &mut app, &[key('N')]);
    assert_eq!(line(&v2), 12);
    assert!(
        v2.icount < entry,
        "reverse-next went back over the whole call"
    );
}

#[test]
fn watch_and_reverse_continue_find_the_bad_write() {
    let bin = build("demo-guests/overflow.c", &["-static", "-O1"]);
    let (w, mut app) = start(&bin, &["7"]);
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("SIGSEGV"), "{}", v.status);
    assert!(v.output.contains("round 8"), "{}", v.output);
    // The crash is a call through a bad pointer: the backtrace still finds main.
    assert!(
        v.backtrace.iter().any(|b| b.contains("main")),
        "{:?}",
        v.backtrace
    );
    let v = keys(&w, &mut app, &typed('w', "rdi+64"));
    assert_eq!(v.watches.len(), 1);
    let v = keys(&w, &mut app, &[key('C')]);
    assert!(v.status.contains("watchpoint"), "{}", v.status);
    assert!(v.status.contains("new 4106"), "{}", v.status);
    let src = v.source.as_ref().expect("source");
    assert!(
        src.lines
            .iter()
            .any(|(n, t)| *n == src.line && t.contains("t->scores[i] =")),
        "{src:?}"
    );
    // The output is as it was then: the last round not yet printed.
    assert!(!v.output.contains("round 8"), "{}", v.output);
    // The hit is marked on the timeline.
    assert!(v.marks.contains(&(v.icount, Mark::Hit)));
    let s = screen(&app);
    assert!(s.contains("watchpoint") && s.contains("◆"), "{s}");
}

#[test]
fn memory_pane_follows_registers_and_marks_changes() {
    let bin = build("tests/guests/nav.c", &["-static", "-O0"]);
    let (w, mut app) = start(&bin, &[]);
    keys(&w, &mut app, &typed('b', "main"));
    keys(&w, &mut app, &[key('c')]);
    // main starts with push rbp: the memory pane at rsp-8 shows the byte change.
    let v = keys(&w, &mut app, &typed('m', "rsp-8"));
    let m = v.memory.clone().expect("memory");
    assert_eq!(m.expr, "rsp-8");
    let v = keys(&w, &mut app, &[key('s')]);
    let m2 = v.memory.clone().expect("memory");
    // rsp moved down by 8, so the pane moved with it; bytes at the new rsp are the pushed rbp.
    assert_eq!(m2.addr, m.addr - 8);
    let s = screen(&app);
    assert!(s.contains("Memory: rsp-8 ="), "{s}");
    // A fixed address keeps its place and highlights what changed.
    let v = keys(&w, &mut app, &typed('m', &format!("{:#x}", m.addr)));
    assert!(v.memory.as_ref().unwrap().changed.is_empty());
    let v = keys(&w, &mut app, &[key('S')]);
    assert!(
        !v.memory.as_ref().unwrap().changed.is_empty(),
        "undoing the push changes the pushed bytes back"
    );
    // Bad expressions are reported, not fatal.
    let v = keys(&w, &mut app, &typed('m', "no_such_symbol"));
    assert!(v.status.contains("no symbol"), "{}", v.status);
    // Tab cycles the focus; arrows scroll the memory pane.
    app.focus = Pane::Registers;
    app.on_key(code(KeyCode::Tab));
    assert_eq!(app.focus, Pane::Memory);
    let v = keys(&w, &mut app, &[code(KeyCode::Down)]);
    assert_eq!(v.memory.unwrap().addr, m.addr + 16);
}

#[test]
fn renders_at_any_terminal_size() {
    let bin = build("tests/guests/nav.c", &["-static", "-O0"]);
    let (w, mut app) = start(&bin, &[]);
    keys(&w, &mut app, &typed('b', "square"));
    keys(&w, &mut app, &[key('c')]);
    app.show_xmm = true;
    for (cw, ch) in [
        (1, 1),
        (10, 3),
        (20, 5),
        (40, 12),
        (80, 24),
        (100, 30),
        (240, 70),
    ] {
        for help in [false, true] {
            app.show_help = help;
            let s = screen_sized(&app, cw, ch);
            if cw >= 80 && !help {
                assert!(s.contains("icount"), "{cw}x{ch}:\n{s}");
                assert!(s.contains("Disassembly"), "{cw}x{ch}:\n{s}");
            }
        }
    }
    app.show_help = false;
    app.prompt = Some((fx86_tui::Prompt::Watch, "depth".into()));
    assert!(screen_sized(&app, 80, 24).contains("watch writes to"));
}

#[test]
fn clicking_the_timeline_travels() {
    let bin = build("tests/guests/nav.c", &["-static", "-O0"]);
    let (w, mut app) = start(&bin, &[]);
    let v = keys(&w, &mut app, &[key('c')]);
    let end = v.end;
    assert!(v.status.contains("exited with status 0"));
    screen(&app);
    let bar = app.bar.get();
    assert!(bar.width > 10);
    let click = MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: bar.x + bar.width / 2,
        row: bar.y,
        modifiers: KeyModifiers::NONE,
    };
    let cmd = app.on_mouse(click).expect("a click on the bar travels");
    let Cmd::Goto(n) = cmd else { panic!("{cmd:?}") };
    assert!(n > end / 3 && n < end * 2 / 3, "{n} of {end}");
    w.send(cmd);
    let mut v = w.wait_view().unwrap();
    while v.busy {
        v = w.wait_view().unwrap();
    }
    assert_eq!(v.icount, n);
    // Clicks elsewhere do nothing.
    let elsewhere = MouseEvent {
        row: bar.y.saturating_sub(5),
        ..click
    };
    assert!(app.on_mouse(elsewhere).is_none());
}

#[test]
fn static_pie_symbols_and_lines_are_relocated() {
    let bin = build("tests/guests/nav.c", &["-static-pie", "-O2"]);
    let (w, mut app) = start(&bin, &[]);
    let v = keys(&w, &mut app, &typed('b', "sum_squares"));
    assert!(v.status.contains("breakpoint set"), "{}", v.status);
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("<sum_squares>"), "{}", v.status);
    assert!(
        v.rip > 0x1_0000_0000 || v.rip > 0x500000,
        "PIE is loaded high"
    );
    assert!(v.backtrace[0].contains("sum_squares"), "{:?}", v.backtrace);
    assert!(v.source.is_some(), "line tables relocated too");
}

#[test]
fn continue_stops_at_handled_signals_both_ways() {
    let bin = build("tests/guests/signals.c", &["-static", "-O1"]);
    let (w, mut app) = start(&bin, &[]);
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("signal SIGSEGV"), "{}", v.status);
    let segv = v.icount;
    assert!(!v.output.contains("signal 11"), "{}", v.output);
    assert!(v.marks.contains(&(segv, Mark::Signal)), "{:?}", v.marks);
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("signal SIGUSR1"), "{}", v.status);
    let usr1 = v.icount;
    assert!(usr1 > segv);
    let v = keys(&w, &mut app, &[key('C')]);
    assert!(v.status.contains("signal SIGSEGV"), "{}", v.status);
    assert_eq!(v.icount, segv);
    let s = screen(&app);
    assert!(s.contains("SIGSEGV"), "{s}");
}

#[test]
fn a_dynamic_program_gets_library_symbols_and_unwinding() {
    // gcc's default: a dynamically linked PIE.
    let bin = build("demo-guests/overflow.c", &["-O1"]);
    let (w, mut app) = start(&bin, &["7"]);
    let v = keys(&w, &mut app, &typed('b', "main"));
    assert_eq!(v.breakpoints.len(), 1, "{}", v.status);
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("breakpoint"), "{}", v.status);
    // By main, the loader has mapped libc: its functions are known by name.
    let v = keys(&w, &mut app, &typed('b', "fprintf"));
    assert_eq!(v.breakpoints.len(), 2, "{} {:x?}", v.status, v.breakpoints);
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("fprintf"), "{}", v.status);
    assert!(v.backtrace[0].ends_with("in fprintf"), "{:?}", v.backtrace);
    assert!(
        v.disasm.iter().any(|l| l.text.contains("printf")
            || l.symbol.as_deref().is_some_and(|s| s.contains("printf"))),
        "{:?}",
        v.disasm
    );
    // The backtrace unwinds libc's frame with its CFI back into the program.
    assert!(
        v.backtrace.iter().any(|b| b.contains("in main+")),
        "{:?}",
        v.backtrace
    );
    let s = screen(&app);
    assert!(s.contains("printf"), "{s}");
}

#[test]
fn a_breakpoint_on_a_library_function_waits_for_its_library() {
    let bin = build("demo-guests/overflow.c", &["-O1"]);
    let (w, mut app) = start(&bin, &["7"]);
    // At icount 0 only the program and the loader are mapped: libc's fprintf is not known yet.
    let v = keys(&w, &mut app, &typed('b', "fprintf"));
    assert!(v.status.contains("pending"), "{}", v.status);
    let v = keys(&w, &mut app, &[key('c')]);
    assert!(v.status.contains("fprintf"), "{}", v.status);
    assert!(v.backtrace[0].ends_with("in fprintf"), "{:?}", v.backtrace);
    // The loader's stops on the way are not user stops: the first fprintf call is reached.
    assert!(v.output.is_empty(), "{}", v.output);
    let v2 = keys(&w, &mut app, &[key('c')]);
    assert!(v2.status.contains("fprintf"), "{}", v2.status);
    assert!(v2.icount > v.icount);
}

#[test]
fn keys_typed_during_a_move_are_kept() {
    let (w, mut app) = start(Path::new("/bin/busybox"), &["echo", "typed ahead"]);
    // The engine thread answers every command with a busy view first; keys that arrive
    // before the move ends still count (the tmux test lost one of five `s` under load).
    let mut v = app.view.clone();
    v.busy = true;
    app.set_view(v);
    for _ in 0..3 {
        let cmd = app.on_key(key('s')).expect("a step, even while busy");
        assert_eq!(cmd, Cmd::StepForward);
        w.send(cmd);
    }
    let mut v = w.wait_view().expect("view");
    while v.busy || v.icount < 3 {
        v = w.wait_view().expect("view");
    }
    assert_eq!(v.icount, 3);
}
