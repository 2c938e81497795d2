//! fx86-tui: a terminal UI for exploring a run in time (ratatui + crossterm).
//!
//! The pieces are kept apart: `worker.rs` owns the engine's `Timeline` in its own thread (so
//! the UI never freezes and Esc can cancel a long move), `nav.rs` builds source-level moves
//! (next, finish and their reverses) from timeline moves, `view.rs` captures what the panes
//! show at one point in time, `debuginfo.rs` reads symbols, line tables and CFI from the
//! program, `app.rs` is the UI state and its update on events, and `ui.rs` draws it. `run`
//! wires them to a real terminal and always restores it.

mod app;
mod debuginfo;
mod nav;
mod ui;
mod view;
mod worker;

pub use app::{column_icount, App, Pane, Prompt};
pub use debuginfo::{DebugInfo, Frame, SourcePos};
pub use ui::draw;
pub use view::{Mark, View};
pub use worker::{eval, Cmd, Worker};

use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, Event, KeyEventKind};
use crossterm::execute;
use fx86_engine::Timeline;
use std::time::Duration;

/// Debug information for the guest `tl` runs, from its ELF file's bytes.
pub fn debug_info(tl: &mut Timeline, elf: &[u8]) -> DebugInfo {
    let entry = tl
        .machine()
        .kernel
        .auxv
        .iter()
        .find(|(k, _)| *k == 9)
        .map(|(_, v)| *v)
        .unwrap_or(0);
    DebugInfo::load(elf, entry)
}

static TERMINATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_terminate(_sig: libc::c_int) {
    TERMINATE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGINT, SIGTERM and SIGHUP end the UI through its normal exit, which restores the terminal.
fn catch_termination() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_terminate as *const () as libc::sighandler_t);
        }
    }
}

/// Runs the UI on the terminal until the user quits. `elf` is the program's file (for
/// symbols, source lines and unwinding); `hint` is the first status line (else a greeting).
pub fn run(
    mut tl: Timeline,
    program: String,
    elf: &[u8],
    hint: Option<String>,
) -> std::io::Result<()> {
    let di = debug_info(&mut tl, elf);
    let worker = Worker::start(tl, di, hint);
    let mut app = App::new(program);
    // ratatui::init restores the terminal on panic too.
    catch_termination();
    let mut terminal = ratatui::init();
    let _ = execute!(std::io::stdout(), EnableMouseCapture);
    let result = (|| -> std::io::Result<()> {
        loop {
            loop {
                match worker.try_view() {
                    Ok(Some(v)) => app.set_view(v),
                    Ok(None) => break,
                    Err(_) if app.quit => return Ok(()),
                    Err(_) => {
                        return Err(std::io::Error::other(
                            "the engine thread stopped unexpectedly",
                        ))
                    }
                }
            }
            app.progress = worker.progress();
            terminal.draw(|f| draw(f, &app))?;
            if app.quit || TERMINATE.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            if event::poll(Duration::from_millis(50))? {
                let cmd = match event::read()? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => app.on_key(k),
                    Event::Mouse(m) => app.on_mouse(m),
                    _ => None,
                };
                match cmd {
                    Some(Cmd::Cancel) => worker.cancel(),
                    Some(c) => worker.send(c),
                    None => {}
                }
            }
        }
    })();
    let _ = execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    result
}

/// Measures what a user waits for per key: the engine's move, the view's capture and the
/// drawing into an off-screen 160x48 terminal. Returns (key, milliseconds) for each key sent,
/// in order (for `fx86 bench-timeline`).
pub fn time_keys(mut tl: Timeline, elf: &[u8], keys: &[char]) -> Vec<(char, f64)> {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    let di = debug_info(&mut tl, elf);
    let worker = Worker::start(tl, di, None);
    let mut app = App::new(String::new());
    let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 48))
        .expect("an off-screen terminal");
    let mut out = Vec::new();
    let Some(v) = worker.wait_view() else {
        return out;
    };
    app.set_view(v);
    for &k in keys {
        let t = std::time::Instant::now();
        let Some(cmd) = app.on_key(KeyEvent::new(KeyCode::Char(k), KeyModifiers::NONE)) else {
            continue;
        };
        worker.send(cmd);
        loop {
            match worker.wait_view() {
                Some(v) if v.busy => continue,
                Some(v) => {
                    app.set_view(v);
                    break;
                }
                None => return out,
            }
        }
        let _ = term.draw(|f| draw(f, &app));
        out.push((k, t.elapsed().as_secs_f64() * 1e3));
    }
    out
}
