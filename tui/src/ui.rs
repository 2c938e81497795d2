//! Drawing: one function per pane, from the `App` state only.

use crate::app::{App, Pane};
use crate::view::{Mark, MEM_BYTES};
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let rest = area.height.saturating_sub(5);
    let top_h = rest / 2;
    let mid_h = rest * 3 / 10;
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(top_h),
            Constraint::Length(mid_h),
            Constraint::Length(rest - top_h - mid_h),
            Constraint::Length(4),
            Constraint::Length(1),
        ])
        .split(area);
    let reg_w = if app.show_xmm { 44 } else { 30 };
    let top = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Min(20), Constraint::Length(reg_w)])
        .split(rows[0]);
    if app.view.source.is_some() {
        let code = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(55), Constraint::Percentage(45)])
            .split(top[0]);
        disassembly(f, app, code[0]);
        source(f, app, code[1]);
    } else {
        disassembly(f, app, top[0]);
    }
    registers(f, app, top[1]);
    let mid = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(82), Constraint::Min(10)])
        .split(rows[1]);
    memory(f, app, mid[0]);
    backtrace(f, app, mid[1]);
    output(f, app, rows[2]);
    timeline(f, app, rows[3]);
    status(f, app, rows[4]);
    if app.show_help {
        help(f);
    }
}

fn pane<'a>(app: &App, which: Pane, title: String) -> Block<'a> {
    let b = Block::default().borders(Borders::ALL).title(title);
    if app.focus == which {
        b.border_style(Style::default().fg(Color::Yellow))
    } else {
        b
    }
}

fn current() -> Style {
    Style::default().fg(Color::Black).bg(Color::Yellow)
}

fn changed() -> Style {
    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
}

fn disassembly(f: &mut Frame, app: &App, area: Rect) {
    let mut lines: Vec<Line> = Vec::new();
    for d in &app.view.disasm {
        if d.symbol.as_deref().is_some_and(|s| !s.contains('+')) {
            lines.push(Line::from(Span::styled(
                format!("<{}>:", d.symbol.as_deref().unwrap_or_default()),
                Style::default().fg(Color::Cyan),
            )));
        }
        let mark = if d.breakpoint { "●" } else { " " };
        let style = if d.current {
            current()
        } else {
            Style::default()
        };
        let arrow = if d.current { "=>" } else { "  " };
        lines.push(Line::from(vec![
            Span::styled(mark, Style::default().fg(Color::Red)),
            Span::styled(format!("{arrow} {:#x}  {}", d.addr, d.text), style),
        ]));
    }
    let title = match app
        .view
        .disasm
        .iter()
        .find_map(|d| d.symbol.as_ref().filter(|_| d.current))
    {
        Some(s) => format!(" Disassembly: {s} "),
        None => " Disassembly ".to_string(),
    };
    f.render_widget(
        Paragraph::new(lines).block(pane(app, Pane::Disassembly, title)),
        area,
    );
}

fn source(f: &mut Frame, app: &App, area: Rect) {
    let Some(src) = &app.view.source else {
        return;
    };
    let height = area.height.saturating_sub(2) as usize;
    let cur = src
        .lines
        .iter()
        .position(|(n, _)| *n == src.line)
        .unwrap_or(0);
    let first = cur.saturating_sub(height / 3);
    let lines: Vec<Line> = if src.lines.is_empty() {
        vec![Line::from(format!(
            "(cannot read {}; line {})",
            src.file, src.line
        ))]
    } else {
        src.lines[first..]
            .iter()
            .take(height)
            .map(|(n, t)| {
                let style = if *n == src.line {
                    current()
                } else {
                    Style::default()
                };
                Line::from(Span::styled(format!("{n:>5}  {t}"), style))
            })
            .collect()
    };
    let short = src.file.rsplit('/').next().unwrap_or(&src.file);
    f.render_widget(
        Paragraph::new(lines).block(pane(
            app,
            Pane::Source,
            format!(" Source: {short}:{} ", src.line),
        )),
        area,
    );
}

fn registers(f: &mut Frame, app: &App, area: Rect) {
    let v = &app.view;
    let mut lines: Vec<Line> = v
        .regs
        .iter()
        .map(|(n, val)| {
            let style = if v.changed.contains(n) {
                changed()
            } else {
                Style::default()
            };
            Line::from(Span::styled(format!("{n:>7} {val:#018x}"), style))
        })
        .collect();
    lines.push(Line::from(format!("  flags [{}]", v.flags)));
    if app.show_xmm {
        for (i, x) in v.xmm.iter().enumerate() {
            lines.push(Line::from(format!("{:>7} {x:#034x}", format!("xmm{i}"))));
        }
    }
    f.render_widget(
        Paragraph::new(lines).block(pane(app, Pane::Registers, " Registers (x: xmm) ".into())),
        area,
    );
}

fn memory(f: &mut Frame, app: &App, area: Rect) {
    let mut lines = Vec::new();
    let mut title = " Memory (m: address) ".to_string();
    if let Some(m) = &app.view.memory {
        title = format!(" Memory: {} = {:#x} ", m.expr, m.addr);
        let rows = (area.height.saturating_sub(2) as usize).min(MEM_BYTES / 16);
        for r in 0..rows {
            let base = r * 16;
            let mut spans = vec![Span::raw(format!(
                "{:012x} ",
                m.addr.wrapping_add(base as u64)
            ))];
            let mut ascii = String::new();
            for i in base..base + 16 {
                let style = if m.changed.contains(&i) {
                    changed()
                } else {
                    Style::default()
                };
                match m.bytes.get(i).copied().flatten() {
                    Some(b) => {
                        spans.push(Span::styled(format!(" {b:02x}"), style));
                        ascii.push(if (0x20..0x7f).contains(&b) {
                            b as char
                        } else {
                            '.'
                        });
                    }
                    None => {
                        spans.push(Span::raw(" ??"));
                        ascii.push(' ');
                    }
                }
            }
            spans.push(Span::raw(format!("  {ascii}")));
            lines.push(Line::from(spans));
        }
    }
    f.render_widget(
        Paragraph::new(lines).block(pane(app, Pane::Memory, title)),
        area,
    );
}

fn backtrace(f: &mut Frame, app: &App, area: Rect) {
    let lines: Vec<Line> = app
        .view
        .backtrace
        .iter()
        .map(|l| Line::from(l.as_str()))
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(pane(app, Pane::Backtrace, " Backtrace ".into())),
        area,
    );
}

fn output(f: &mut Frame, app: &App, area: Rect) {
    let text = &app.view.output;
    let height = area.height.saturating_sub(2) as usize;
    let lines: Vec<&str> = text.lines().collect();
    let end = lines.len().saturating_sub(app.output_scroll as usize);
    let tail = lines[end.saturating_sub(height)..end].join("\n");
    f.render_widget(
        Paragraph::new(tail).wrap(Wrap { trim: false }).block(pane(
            app,
            Pane::Output,
            " Output (as of this moment) ".into(),
        )),
        area,
    );
}

fn mark_char(m: Mark) -> (char, Color) {
    match m {
        Mark::Syscall => ('·', Color::Gray),
        Mark::Snapshot => ('|', Color::Blue),
        Mark::Hit => ('◆', Color::Magenta),
        Mark::Signal => ('!', Color::Red),
    }
}

fn timeline(f: &mut Frame, app: &App, area: Rect) {
    let v = &app.view;
    let block = Block::default().borders(Borders::ALL).title(" Timeline ");
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let w = inner.width;
    // The strongest mark in each column.
    let mut cols: Vec<Option<Mark>> = vec![None; w as usize];
    for &(ic, m) in &v.marks {
        let c = if v.end == 0 {
            0
        } else {
            ((ic.min(v.end) as u128 * (w as u128 - 1)) / v.end as u128) as usize
        };
        if cols[c].is_none_or(|old| old < m) {
            cols[c] = Some(m);
        }
    }
    let cur = if v.end == 0 {
        0
    } else {
        ((v.icount as u128 * (w as u128 - 1)) / v.end as u128) as usize
    };
    let spans: Vec<Span> = cols
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (ch, fg) = m.map(mark_char).unwrap_or(('─', Color::DarkGray));
            let style = if i == cur {
                Style::default().fg(Color::Black).bg(Color::Yellow)
            } else if i < cur {
                Style::default().fg(fg).bg(Color::Rgb(0, 60, 80))
            } else {
                Style::default().fg(fg)
            };
            Span::styled(if i == cur { '▼' } else { ch }.to_string(), style)
        })
        .collect();
    let bar = Rect { height: 1, ..inner };
    app.bar.set(bar);
    f.render_widget(Paragraph::new(Line::from(spans)), bar);
    if inner.height > 1 {
        let label = format!(
            "icount {} / {}   {} snapshots · {} breakpoints · {} watchpoints   [| snapshot ◆ hit ! signal · syscall; click to travel]",
            v.icount,
            v.end,
            v.snapshots,
            v.breakpoints.len(),
            v.watches.len(),
        );
        f.render_widget(
            Paragraph::new(label),
            Rect {
                y: inner.y + 1,
                height: 1,
                ..inner
            },
        );
    }
}

fn status(f: &mut Frame, app: &App, area: Rect) {
    let text = if let Some((p, buf)) = &app.prompt {
        format!("{}: {buf}_   (Enter, Esc cancels)", p.label())
    } else if app.view.busy {
        let (done, total) = app.progress;
        match (done.min(total) * 100).checked_div(total) {
            Some(pct) => format!(
                "{}: working… {done} of {total} instructions ({pct}%)   Esc cancels",
                app.program
            ),
            None => format!(
                "{}: working… {done} instructions   Esc cancels",
                app.program
            ),
        }
    } else {
        format!(
            "{}: {}   [s/S step n/N next f/F finish c/C continue g goto b break w watch m mem ? help q quit]",
            app.program, app.view.status
        )
    };
    let style = if app.view.busy {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default().add_modifier(Modifier::BOLD)
    };
    f.render_widget(Paragraph::new(Span::styled(text, style)), area);
}

const HELP: &str = "\
s / S     step one instruction forward / back
n / N     next source line forward / back (over calls)
f / F     finish: run to the return / back to the call
c / C     continue forward / back to a breakpoint,
          watchpoint, signal, exit or the start
g         go to an icount   (Home / End: start / end)
b         toggle a breakpoint (address, symbol, empty=pc)
w         toggle a write watchpoint (addr|symbol [len])
m         show memory at an address, symbol or register
x         show / hide the xmm registers
Tab       cycle focus; ↑ ↓ PgUp PgDn scroll memory/output
click     on the timeline bar: travel there
Esc       cancel a long move
?         this help            q  quit";

fn help(f: &mut Frame) {
    let area = f.area();
    let w = 60.min(area.width);
    let h = 17.min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(HELP).block(Block::default().borders(Borders::ALL).title(" Keys ")),
        r,
    );
}
