//! UI state and its update on key and mouse events (no drawing, no terminal).

use crate::view::View;
use crate::worker::Cmd;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;
use std::cell::Cell;

/// The panes, in `Tab` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    Disassembly,
    Source,
    Registers,
    Memory,
    Backtrace,
    Output,
}

const PANES: [Pane; 6] = [
    Pane::Disassembly,
    Pane::Source,
    Pane::Registers,
    Pane::Memory,
    Pane::Backtrace,
    Pane::Output,
];

/// A line being typed at the bottom of the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prompt {
    Goto,
    Breakpoint,
    Watch,
    Memory,
}

impl Prompt {
    pub fn label(self) -> &'static str {
        match self {
            Prompt::Goto => "go to icount",
            Prompt::Breakpoint => "toggle breakpoint at (address or symbol; empty = pc)",
            Prompt::Watch => "watch writes to (address, symbol or register [length])",
            Prompt::Memory => "show memory at (address, symbol or register)",
        }
    }
}

pub struct App {
    pub program: String,
    pub view: View,
    pub show_help: bool,
    pub show_xmm: bool,
    pub focus: Pane,
    /// Lines scrolled up from the end of the output pane.
    pub output_scroll: u16,
    pub prompt: Option<(Prompt, String)>,
    /// Progress of a long move (done, total), while busy.
    pub progress: (u64, u64),
    pub quit: bool,
    /// Where the timeline bar was last drawn (for mouse clicks).
    pub bar: Cell<Rect>,
}

impl App {
    pub fn new(program: String) -> App {
        App {
            program,
            view: View::default(),
            show_help: false,
            show_xmm: false,
            focus: Pane::Disassembly,
            output_scroll: 0,
            prompt: None,
            progress: (0, 0),
            quit: false,
            bar: Cell::new(Rect::default()),
        }
    }

    pub fn set_view(&mut self, v: View) {
        self.view = v;
    }

    fn on_prompt(&mut self, k: KeyEvent) -> Option<Cmd> {
        let (kind, buf) = self.prompt.as_mut()?;
        let kind = *kind;
        match k.code {
            KeyCode::Char(c) if kind != Prompt::Goto || c.is_ascii_digit() => buf.push(c),
            KeyCode::Backspace => {
                buf.pop();
            }
            KeyCode::Enter => {
                let text = std::mem::take(buf);
                self.prompt = None;
                return match kind {
                    Prompt::Goto => text.parse().ok().map(Cmd::Goto),
                    Prompt::Breakpoint => Some(Cmd::ToggleBreakpoint(text)),
                    Prompt::Watch => Some(Cmd::ToggleWatch(text)),
                    Prompt::Memory => Some(Cmd::Memory(text)),
                };
            }
            KeyCode::Esc => self.prompt = None,
            _ => {}
        }
        None
    }

    /// Handles one key; returns the command for the engine, if any.
    pub fn on_key(&mut self, k: KeyEvent) -> Option<Cmd> {
        if self.prompt.is_some() {
            return self.on_prompt(k);
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return Some(Cmd::Quit);
        }
        let ask = |p| Some((p, String::new()));
        match k.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return Some(Cmd::Quit);
            }
            KeyCode::Esc if self.show_help => self.show_help = false,
            KeyCode::Esc => return Some(Cmd::Cancel),
            KeyCode::Char('?') | KeyCode::F(1) => self.show_help = !self.show_help,
            KeyCode::Char('x') => self.show_xmm = !self.show_xmm,
            KeyCode::Tab => {
                let i = PANES.iter().position(|p| *p == self.focus).unwrap_or(0);
                self.focus = PANES[(i + 1) % PANES.len()];
            }
            KeyCode::BackTab => {
                let i = PANES.iter().position(|p| *p == self.focus).unwrap_or(0);
                self.focus = PANES[(i + PANES.len() - 1) % PANES.len()];
            }
            KeyCode::Up | KeyCode::PageUp | KeyCode::Down | KeyCode::PageDown => {
                return self.scroll(k.code)
            }
            KeyCode::Char('g') => self.prompt = ask(Prompt::Goto),
            KeyCode::Char('b') => self.prompt = ask(Prompt::Breakpoint),
            KeyCode::Char('w') => self.prompt = ask(Prompt::Watch),
            KeyCode::Char('m') => self.prompt = ask(Prompt::Memory),
            // Moves typed while one runs are not dropped: the engine thread runs them in
            // order (Esc cancels the running one).
            KeyCode::Char('s') => return Some(Cmd::StepForward),
            KeyCode::Char('S') => return Some(Cmd::StepBack),
            KeyCode::Char('n') => return Some(Cmd::Next),
            KeyCode::Char('N') => return Some(Cmd::ReverseNext),
            KeyCode::Char('f') => return Some(Cmd::Finish),
            KeyCode::Char('F') => return Some(Cmd::ReverseFinish),
            KeyCode::Char('c') => return Some(Cmd::Continue),
            KeyCode::Char('C') => return Some(Cmd::ReverseContinue),
            KeyCode::Home => return Some(Cmd::Goto(0)),
            KeyCode::End => return Some(Cmd::Goto(self.view.end)),
            _ => {}
        }
        None
    }

    fn scroll(&mut self, code: KeyCode) -> Option<Cmd> {
        let page = matches!(code, KeyCode::PageUp | KeyCode::PageDown);
        let up = matches!(code, KeyCode::Up | KeyCode::PageUp);
        match self.focus {
            Pane::Output => {
                let n = if page { 10 } else { 1 };
                self.output_scroll = if up {
                    self.output_scroll.saturating_add(n)
                } else {
                    self.output_scroll.saturating_sub(n)
                };
                None
            }
            Pane::Memory => {
                let m = self.view.memory.as_ref()?;
                let n: u64 = if page { 128 } else { 16 };
                let a = if up {
                    m.addr.wrapping_sub(n)
                } else {
                    m.addr.wrapping_add(n)
                };
                Some(Cmd::Memory(format!("{a:#x}")))
            }
            _ => None,
        }
    }

    /// Handles a mouse event: a click on the timeline bar travels there.
    pub fn on_mouse(&mut self, m: MouseEvent) -> Option<Cmd> {
        if !matches!(m.kind, MouseEventKind::Down(MouseButton::Left)) || self.view.busy {
            return None;
        }
        let bar = self.bar.get();
        if bar.width == 0 || m.row != bar.y || m.column < bar.x || m.column >= bar.x + bar.width {
            return None;
        }
        Some(Cmd::Goto(column_icount(
            m.column - bar.x,
            bar.width,
            self.view.end,
        )))
    }
}

/// The icount a column of a `width`-wide bar over `[0, end]` stands for (its first icount; the
/// last column is the end).
pub fn column_icount(col: u16, width: u16, end: u64) -> u64 {
    if width <= 1 || col + 1 >= width {
        return end;
    }
    (end as u128 * col as u128 / (width as u128 - 1)) as u64
}
