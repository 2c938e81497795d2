//! Drawing: one function per pane, from the `App` state only.

use crate::app::App;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, Paragraph, Wrap};
use ratatui::Frame;

pub fn draw(f: &mut Frame, app: &App) {
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Min(8),
            Constraint::Length(8),
            Constraint::Length(3),
            Constraint::Length(1),
        ])
        .split(f.area());
    let top = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(60), Constraint::Percentage(40)])
        .split(rows[0]);
    disassembly(f, app, top[0]);
    registers(f, app, top[1]);
    output(f, app, rows[1]);
    timeline(f, app, rows[2]);
    status(f, app, rows[3]);
    if app.show_help {
        help(f);
    }
}

fn disassembly(f: &mut Frame, app: &App, area: Rect) {
    let lines: Vec<Line> = app
        .view
        .disasm
        .iter()
        .map(|d| {
            let mark = if d.breakpoint { "●" } else { " " };
            let style = if d.current {
                Style::default().fg(Color::Black).bg(Color::Yellow)
            } else {
                Style::default()
            };
            Line::from(Span::styled(
                format!("{mark} {:#014x}  {}", d.addr, d.text),
                style,
            ))
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Disassembly "),
        ),
        area,
    );
}

fn registers(f: &mut Frame, app: &App, area: Rect) {
    let mut lines: Vec<Line> = app
        .view
        .regs
        .iter()
        .map(|(n, v)| {
            let style = if app.view.changed.contains(n) {
                Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            Line::from(Span::styled(format!("{n:>7} {v:#018x}"), style))
        })
        .collect();
    lines.push(Line::from(format!("  flags {}", app.view.flags)));
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" Registers ")),
        area,
    );
}

fn output(f: &mut Frame, app: &App, area: Rect) {
    let text = &app.view.output;
    let height = area.height.saturating_sub(2) as usize;
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(height)..].join("\n");
    f.render_widget(
        Paragraph::new(tail).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Output (as of this moment) "),
        ),
        area,
    );
}

fn timeline(f: &mut Frame, app: &App, area: Rect) {
    let v = &app.view;
    let total = v.end.max(1);
    let ratio = (v.icount as f64 / total as f64).clamp(0.0, 1.0);
    let label = format!(
        "icount {} / {}  ({} snapshots)",
        v.icount,
        v.end,
        v.snapshots.len()
    );
    f.render_widget(
        Gauge::default()
            .block(Block::default().borders(Borders::ALL).title(" Timeline "))
            .gauge_style(Style::default().fg(Color::Cyan))
            .ratio(ratio)
            .label(label),
        area,
    );
}

fn status(f: &mut Frame, app: &App, area: Rect) {
    let text = if let Some(buf) = &app.goto_input {
        format!("goto icount: {buf}_   (Enter to go, Esc to cancel)")
    } else if app.view.busy {
        format!("{}: working… (Esc cancels)", app.program)
    } else {
        format!(
            "{}: {}   [s/S step ±1, c/C continue ±, g goto, b breakpoint, ? help, q quit]",
            app.program, app.view.status
        )
    };
    f.render_widget(Paragraph::new(text), area);
}

fn help(f: &mut Frame) {
    let area = f.area();
    let w = 52.min(area.width);
    let h = 12.min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let text = "s / S   step one instruction forward / back\nc / C   continue forward / backward\ng       go to an icount\nb       toggle a breakpoint at the current pc\nEsc     cancel a long move\n?       this help\nq       quit";
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" Keys ")),
        r,
    );
}
