//! The TUI's state, update and drawing on a real guest, rendered into ratatui's TestBackend.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fx86_engine::host::StdHost;
use fx86_engine::{Config, Machine, Timeline};
use fx86_tui::{draw, App, Cmd, Worker};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn timeline() -> Timeline {
    let bytes = std::fs::read("/bin/busybox").expect("busybox (see .ci/run)");
    let config = Config {
        args: vec![
            b"busybox".to_vec(),
            b"echo".to_vec(),
            b"hello from the past".to_vec(),
        ],
        env: vec![],
        exe: "/bin/busybox".into(),
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
    Timeline::new(m, 10_000, 1 << 30)
}

fn screen(app: &App) -> String {
    let mut term = Terminal::new(TestBackend::new(120, 40)).expect("terminal");
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

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

#[test]
fn steps_run_and_unprint_output() {
    let w = Worker::start(timeline());
    let mut app = App::new("busybox echo".into());
    app.set_view(w.wait_view().expect("first view"));
    let s = screen(&app);
    assert!(
        s.contains("Disassembly") && s.contains("Registers") && s.contains("icount 0 / 0"),
        "{s}"
    );
    // s: one step forward.
    let cmd = app.on_key(key('s')).expect("step");
    w.send(cmd);
    let mut v = w.wait_view().expect("view");
    while v.busy {
        v = w.wait_view().expect("view");
    }
    assert_eq!(v.icount, 1);
    assert!(v.changed.contains(&"rip"));
    app.set_view(v);
    // c: run to the end; the output pane shows what was printed.
    w.send(app.on_key(key('c')).expect("continue"));
    let mut v = w.wait_view().expect("view");
    while v.busy {
        v = w.wait_view().expect("view");
    }
    assert!(v.status.contains("exited with status 0"), "{}", v.status);
    assert!(v.output.contains("hello from the past"));
    let end = v.icount;
    app.set_view(v);
    assert!(screen(&app).contains("hello from the past"));
    // g 1 Enter: back to icount 1, where nothing had been printed yet.
    assert!(app.on_key(key('g')).is_none());
    assert!(app.on_key(key('1')).is_none());
    let cmd = app
        .on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE))
        .expect("goto");
    assert_eq!(cmd, Cmd::Goto(1));
    w.send(cmd);
    let mut v = w.wait_view().expect("view");
    while v.busy {
        v = w.wait_view().expect("view");
    }
    assert_eq!(v.icount, 1);
    assert!(
        !v.output.contains("hello"),
        "output un-prints when travelling back"
    );
    app.set_view(v);
    let s = screen(&app);
    assert!(s.contains(&format!("icount 1 / {end}")), "{s}");
    // ? shows the key help; q quits.
    app.on_key(key('?'));
    assert!(screen(&app).contains("continue forward / backward"));
    assert_eq!(app.on_key(key('q')), Some(Cmd::Quit));
    assert!(app.quit);
}
