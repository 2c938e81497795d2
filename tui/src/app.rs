//! UI state and its update on key events (no drawing, no terminal).

use crate::view::View;
use crate::worker::Cmd;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

pub struct App {
    pub program: String,
    pub view: View,
    pub show_help: bool,
    /// Text typed after `g` (goto icount), while entering it.
    pub goto_input: Option<String>,
    pub quit: bool,
}

impl App {
    pub fn new(program: String) -> App {
        App {
            program,
            view: View::default(),
            show_help: false,
            goto_input: None,
            quit: false,
        }
    }

    pub fn set_view(&mut self, v: View) {
        self.view = v;
    }

    /// Handles one key; returns the command for the engine, if any.
    pub fn on_key(&mut self, k: KeyEvent) -> Option<Cmd> {
        if let Some(buf) = &mut self.goto_input {
            match k.code {
                KeyCode::Char(c) if c.is_ascii_digit() => buf.push(c),
                KeyCode::Backspace => {
                    buf.pop();
                }
                KeyCode::Enter => {
                    let n = buf.parse().ok();
                    self.goto_input = None;
                    return n.map(Cmd::Goto);
                }
                KeyCode::Esc => self.goto_input = None,
                _ => {}
            }
            return None;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return Some(Cmd::Quit);
        }
        match k.code {
            KeyCode::Char('q') => {
                self.quit = true;
                Some(Cmd::Quit)
            }
            KeyCode::Char('?') => {
                self.show_help = !self.show_help;
                None
            }
            KeyCode::Char('s') => Some(Cmd::StepForward),
            KeyCode::Char('S') => Some(Cmd::StepBack),
            KeyCode::Char('c') => Some(Cmd::Continue),
            KeyCode::Char('C') => Some(Cmd::ReverseContinue),
            KeyCode::Char('b') => Some(Cmd::ToggleBreakpoint(self.view.rip)),
            KeyCode::Char('g') => {
                self.goto_input = Some(String::new());
                None
            }
            KeyCode::Esc => Some(Cmd::Cancel),
            _ => None,
        }
    }
}
