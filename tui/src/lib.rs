//! fx86-tui: a terminal UI for exploring a run in time (ratatui + crossterm).
//!
//! The pieces are kept apart: `worker.rs` owns the engine's `Timeline` in its own thread (so
//! the UI never freezes and Esc can cancel a long move), `view.rs` captures what the panes
//! show at one point in time, `app.rs` is the UI state and its update on key events, and
//! `ui.rs` draws it. `run` wires them to a real terminal and always restores it.

mod app;
mod ui;
mod view;
mod worker;

pub use app::App;
pub use ui::draw;
pub use view::View;
pub use worker::{Cmd, Worker};

use crossterm::event::{self, Event};
use fx86_engine::Timeline;
use std::time::Duration;

/// Runs the UI on the terminal until the user quits.
pub fn run(tl: Timeline, program: String) -> std::io::Result<()> {
    let worker = Worker::start(tl);
    let mut app = App::new(program);
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        loop {
            while let Some(v) = worker.try_view() {
                app.set_view(v);
            }
            terminal.draw(|f| draw(f, &app))?;
            if app.quit {
                return Ok(());
            }
            if event::poll(Duration::from_millis(50))? {
                if let Event::Key(k) = event::read()? {
                    if let Some(cmd) = app.on_key(k) {
                        if cmd == Cmd::Cancel {
                            worker.cancel();
                        } else {
                            worker.send(cmd);
                        }
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}
