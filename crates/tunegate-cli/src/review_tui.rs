//! The side-by-side terminal UI of `tunegate review`: the input on top,
//! the two outputs in two columns labelled only `1` and `2` (which variant
//! is which stays hidden), one key per verdict. The session logic is
//! [`Reviewing`], shared with the line mode.

use crate::review_session::Reviewing;
use anyhow::Result;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::Stylize;
use ratatui::widgets::{Block, Paragraph, Wrap};
use tunegate_core::review::Choice;

pub fn run(r: Reviewing) -> Result<()> {
    let mut terminal = ratatui::init();
    let res = event_loop(&mut terminal, r);
    ratatui::restore();
    res
}

fn event_loop(terminal: &mut ratatui::DefaultTerminal, mut r: Reviewing) -> Result<()> {
    let mut message = String::new();
    // A note being typed (`n`), kept for the next verdict.
    let mut note: Option<String> = None;
    let mut typing = false;
    loop {
        let reviewed = r.reviewed()?;
        let total = r.pairs.len();
        let remaining = r.remaining();
        let current = r.current();
        terminal.draw(|f| {
            let [top, input, outputs, help, msg] = Layout::vertical([Constraint::Length(1), Constraint::Percentage(30), Constraint::Min(6), Constraint::Length(1), Constraint::Length(1)]).areas(f.area());
            let Some(c) = &current else {
                f.render_widget(Paragraph::new(format!("Done · reviewed {reviewed} of {total}")).bold(), top);
                f.render_widget(Paragraph::new("Every case is reviewed. q quits and prints the summary.").block(Block::bordered()), input);
                f.render_widget(Paragraph::new("u undo the last answer · q quit").dim(), help);
                f.render_widget(Paragraph::new(message.as_str()), msg);
                return;
            };
            f.render_widget(Paragraph::new(format!("Case {} of {total} · reviewed {reviewed} · left this session {remaining}", reviewed + 1)).bold(), top);
            f.render_widget(Paragraph::new(c.pair.input.as_str()).wrap(Wrap { trim: false }).block(Block::bordered().title(format!(" input · {} (line {}) ", c.pair.case_id, c.pair.line))), input);
            let [left, right] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(outputs);
            f.render_widget(Paragraph::new(c.first).wrap(Wrap { trim: false }).block(Block::bordered().title(" 1 ")), left);
            f.render_widget(Paragraph::new(c.second).wrap(Wrap { trim: false }).block(Block::bordered().title(" 2 ")), right);
            let h = if typing { format!("note: {}▏ (Enter keeps it for the next verdict, Esc drops it)", note.as_deref().unwrap_or("")) } else { "1 / 2 better · t tie · x both bad · n note · s skip · u undo · q quit".to_string() };
            f.render_widget(Paragraph::new(h).dim(), help);
            let m = match (&note, typing) {
                (Some(n), false) => format!("{message} (note for the next verdict: {n})"),
                _ => message.clone(),
            };
            f.render_widget(Paragraph::new(m), msg);
        })?;
        let Event::Key(k) = event::read()? else { continue };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Ok(());
        }
        if typing {
            match k.code {
                KeyCode::Enter => typing = false,
                KeyCode::Esc => {
                    typing = false;
                    note = None;
                }
                KeyCode::Backspace => {
                    if let Some(n) = &mut note {
                        n.pop();
                    }
                }
                KeyCode::Char(ch) => note.get_or_insert_with(String::new).push(ch),
                _ => {}
            }
            continue;
        }
        let choice = match k.code {
            KeyCode::Char('1') => Choice::First,
            KeyCode::Char('2') => Choice::Second,
            KeyCode::Char('t') => Choice::Tie,
            KeyCode::Char('x') => Choice::BothBad,
            KeyCode::Char('n') => {
                typing = true;
                continue;
            }
            KeyCode::Char('s') => {
                r.skip();
                message = "skipped (it comes back next session)".into();
                continue;
            }
            KeyCode::Char('u') => {
                message = match r.undo()? {
                    Some(id) => format!("undone: the answer for case {id} is removed"),
                    None => "nothing to undo".into(),
                };
                continue;
            }
            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
            _ => continue,
        };
        if r.current().is_some() {
            r.answer(choice, note.take().filter(|n| !n.trim().is_empty()))?;
            message = format!("saved ({})", choice.as_str().replace('_', " "));
        }
    }
}
