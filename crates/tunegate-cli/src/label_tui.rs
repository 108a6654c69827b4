//! The terminal UI of `tunegate label` (ratatui). One screen per input:
//! progress and label counts at the top, the input, then the answer —
//! one key per label for classification, editable fields for extraction,
//! an editor for rewrite and generation, each pre-filled from the saved
//! answer or the suggestion. Every save goes to disk before the next
//! screen is drawn.

use crate::label_session::{after, err, progress_with, show_value, suggestion, Suggester};
use anyhow::Result;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Paragraph, Wrap};
use serde_json::{Map, Value};
use tunegate_core::label::{key_for_label, label_for_key, LabelError, Session, Status};
use tunegate_core::TaskKind;

/// The answer being written for the input on screen.
struct Draft {
    /// Rewrite / generation: the text and the cursor (a char index).
    text: String,
    cursor: usize,
    /// Extraction: (field, text) and the field being edited.
    fields: Vec<(String, String)>,
    field: usize,
}

struct Ui {
    pos: Option<usize>,
    suggestion: Option<Value>,
    draft: Draft,
    message: String,
    search: Option<String>,
}

fn field_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A field's text back to JSON: empty is null, valid JSON (a number, true,
/// a quoted string, a list) is that, anything else is the text.
fn field_value(t: &str) -> Value {
    let t = t.trim();
    if t.is_empty() {
        return Value::Null;
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v) => v,
        Err(_) => Value::String(t.to_string()),
    }
}

impl Ui {
    fn load(&mut self, session: &Session, suggester: &mut Option<Suggester>) {
        self.search = None;
        let Some(i) = self.pos else { return };
        let (sugg, note) = suggestion(session, suggester, i);
        if let Some(n) = note {
            self.message = n;
        }
        self.suggestion = sugg;
        let current = match session.status(i) {
            Status::Labelled(v) => Some(v),
            _ => self.suggestion.clone(),
        };
        self.draft.text = current.as_ref().map(field_text).unwrap_or_default();
        self.draft.cursor = self.draft.text.chars().count();
        let mut fields: Vec<(String, String)> = session.fields.iter().map(|f| (f.clone(), String::new())).collect();
        if let Some(Value::Object(m)) = &current {
            for (k, v) in m {
                match fields.iter_mut().find(|(f, _)| f == k) {
                    Some(slot) => slot.1 = field_text(v),
                    None => fields.push((k.clone(), field_text(v))),
                }
            }
        }
        self.draft.fields = fields;
        self.draft.field = 0;
    }

    fn draft_value(&self, session: &Session) -> Result<Value, LabelError> {
        match session.kind {
            TaskKind::Extraction if !self.draft.fields.is_empty() => {
                let m: Map<String, Value> = self.draft.fields.iter().map(|(k, v)| (k.clone(), field_value(v))).collect();
                session.parse_answer(&Value::Object(m).to_string())
            }
            _ => session.parse_answer(&self.draft.text),
        }
    }
}

pub fn run(session: &mut Session, suggester: &mut Option<Suggester>) -> Result<()> {
    let mut terminal = ratatui::init();
    let r = event_loop(&mut terminal, session, suggester);
    ratatui::restore();
    r
}

fn save(ui: &mut Ui, session: &mut Session, suggester: &mut Option<Suggester>, i: usize, v: Value) -> Result<()> {
    match session.save(i, v, ui.suggestion.as_ref()) {
        Ok(()) => {
            ui.message = format!("saved input {}", i + 1);
            ui.pos = after(session, i);
            ui.load(session, suggester);
        }
        Err(LabelError::Refused(why)) | Err(LabelError::Invalid(why)) => ui.message = format!("not saved: {why}"),
        Err(e) => return Err(err(e)),
    }
    Ok(())
}

/// The commands every kind shares. Returns false to quit.
enum Cmd {
    Skip,
    Undo,
    Back,
    Search,
    Quit,
}

fn command(ui: &mut Ui, session: &mut Session, suggester: &mut Option<Suggester>, c: Cmd) -> Result<bool> {
    match c {
        Cmd::Quit => return Ok(false),
        Cmd::Skip => {
            if let Some(i) = ui.pos {
                session.skip(i).map_err(err)?;
                ui.message = format!("skipped input {}", i + 1);
                ui.pos = after(session, i);
                ui.load(session, suggester);
            }
        }
        Cmd::Undo => match session.undo().map_err(err)? {
            Some(j) => {
                ui.message = format!("undone: input {} is back", j + 1);
                ui.pos = Some(j);
                ui.load(session, suggester);
            }
            None => ui.message = "nothing to undo".into(),
        },
        Cmd::Back => {
            let j = ui.pos.map(|i| i.saturating_sub(1)).unwrap_or(session.len().saturating_sub(1));
            ui.pos = Some(j);
            ui.load(session, suggester);
        }
        Cmd::Search => ui.search = Some(String::new()),
    }
    Ok(true)
}

fn event_loop(terminal: &mut ratatui::DefaultTerminal, session: &mut Session, suggester: &mut Option<Suggester>) -> Result<()> {
    let mut ui = Ui {
        pos: session.resume_position(),
        suggestion: None,
        draft: Draft { text: String::new(), cursor: 0, fields: vec![], field: 0 },
        message: String::new(),
        search: None,
    };
    ui.load(session, suggester);
    loop {
        terminal.draw(|f| draw(f, &ui, session))?;
        let Event::Key(k) = event::read()? else { continue };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && k.code == KeyCode::Char('c') {
            return Ok(());
        }
        if let Some(q) = &mut ui.search {
            match k.code {
                KeyCode::Esc => ui.search = None,
                KeyCode::Enter => {
                    let query = q.clone();
                    match session.search(ui.pos.unwrap_or(0), &query) {
                        Some(j) => {
                            ui.pos = Some(j);
                            ui.load(session, suggester);
                            ui.message = format!("found {query:?} in input {}", j + 1);
                        }
                        None => {
                            ui.search = None;
                            ui.message = format!("no input contains {query:?}");
                        }
                    }
                }
                KeyCode::Backspace => {
                    q.pop();
                }
                KeyCode::Char(c) if !ctrl => q.push(c),
                _ => {}
            }
            continue;
        }
        let go_on = match session.kind {
            TaskKind::Classification => classification_key(&mut ui, session, suggester, k)?,
            _ => editor_key(&mut ui, session, suggester, k)?,
        };
        if !go_on {
            return Ok(());
        }
    }
}

fn classification_key(ui: &mut Ui, session: &mut Session, suggester: &mut Option<Suggester>, k: KeyEvent) -> Result<bool> {
    let cmd = match k.code {
        KeyCode::Char('q') | KeyCode::Esc => Some(Cmd::Quit),
        KeyCode::Char('s') => Some(Cmd::Skip),
        KeyCode::Char('u') => Some(Cmd::Undo),
        KeyCode::Char('b') | KeyCode::Left => Some(Cmd::Back),
        KeyCode::Char('/') => Some(Cmd::Search),
        _ => None,
    };
    if let Some(c) = cmd {
        return command(ui, session, suggester, c);
    }
    let Some(i) = ui.pos else { return Ok(true) };
    match k.code {
        KeyCode::Enter => match ui.suggestion.clone() {
            Some(v) => save(ui, session, suggester, i, v)?,
            None => ui.message = "no suggestion to accept: press a label's key".into(),
        },
        KeyCode::Char(c) => match label_for_key(&session.labels, c) {
            Some(l) => save(ui, session, suggester, i, Value::String(l))?,
            None => ui.message = format!("`{c}` is not a label key"),
        },
        _ => {}
    }
    Ok(true)
}

fn editor_key(ui: &mut Ui, session: &mut Session, suggester: &mut Option<Suggester>, k: KeyEvent) -> Result<bool> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl {
        let cmd = match k.code {
            KeyCode::Char('q') => Some(Cmd::Quit),
            KeyCode::Char('n') => Some(Cmd::Skip),
            KeyCode::Char('u') => Some(Cmd::Undo),
            KeyCode::Char('b') => Some(Cmd::Back),
            KeyCode::Char('f') => Some(Cmd::Search),
            _ => None,
        };
        if let Some(c) = cmd {
            return command(ui, session, suggester, c);
        }
        if k.code == KeyCode::Char('s') {
            if let Some(i) = ui.pos {
                match ui.draft_value(session) {
                    Ok(v) => save(ui, session, suggester, i, v)?,
                    Err(e) => ui.message = format!("not saved: {e}"),
                }
            }
        }
        return Ok(true);
    }
    if ui.pos.is_none() {
        if matches!(k.code, KeyCode::Esc) {
            return Ok(false);
        }
        return Ok(true);
    }
    let d = &mut ui.draft;
    // Without a schema or a suggestion there are no fields to offer: the
    // answer is typed as a JSON object in the editor instead.
    if session.kind == TaskKind::Extraction && !d.fields.is_empty() {
        match k.code {
            KeyCode::Up => d.field = d.field.saturating_sub(1),
            KeyCode::Down | KeyCode::Tab | KeyCode::Enter => d.field = (d.field + 1) % d.fields.len().max(1),
            KeyCode::BackTab => d.field = (d.field + d.fields.len().max(1) - 1) % d.fields.len().max(1),
            KeyCode::Backspace => {
                if let Some(f) = d.fields.get_mut(d.field) {
                    f.1.pop();
                }
            }
            KeyCode::Char(c) => {
                if let Some(f) = d.fields.get_mut(d.field) {
                    f.1.push(c);
                }
            }
            _ => {}
        }
        return Ok(true);
    }
    let n = d.text.chars().count();
    let byte = |s: &str, ci: usize| s.char_indices().nth(ci).map(|(b, _)| b).unwrap_or(s.len());
    match k.code {
        KeyCode::Left => d.cursor = d.cursor.saturating_sub(1),
        KeyCode::Right => d.cursor = (d.cursor + 1).min(n),
        KeyCode::Home => d.cursor = 0,
        KeyCode::End => d.cursor = n,
        KeyCode::Backspace if d.cursor > 0 => {
            let b = byte(&d.text, d.cursor - 1);
            d.text.remove(b);
            d.cursor -= 1;
        }
        KeyCode::Delete if d.cursor < n => {
            let b = byte(&d.text, d.cursor);
            d.text.remove(b);
        }
        KeyCode::Enter => {
            let b = byte(&d.text, d.cursor);
            d.text.insert(b, '\n');
            d.cursor += 1;
        }
        KeyCode::Char(c) => {
            let b = byte(&d.text, d.cursor);
            d.text.insert(b, c);
            d.cursor += 1;
        }
        _ => {}
    }
    Ok(true)
}

fn draw(f: &mut ratatui::Frame, ui: &Ui, session: &Session) {
    let [top, input, answer, help, msg] = Layout::vertical([Constraint::Length(1), Constraint::Min(4), Constraint::Min(6), Constraint::Length(1), Constraint::Length(1)]).areas(f.area());
    let Some(i) = ui.pos else {
        let c = session.counts();
        f.render_widget(Paragraph::new(format!("Done · answered {} of {} · skipped {} · refused {}", c.labelled, c.total, c.skipped, c.blocked)).bold(), top);
        f.render_widget(
            Paragraph::new(format!("Every input is answered, skipped or refused.\nAnswers: {}\nProvenance: {}", session.target.display(), session.provenance.display())).block(Block::bordered().title(" done ")),
            input,
        );
        f.render_widget(Paragraph::new(if session.kind == TaskKind::Classification { "u undo · b back · q quit" } else { "Ctrl-U undo · Ctrl-B back · Ctrl-Q quit" }).dim(), help);
        f.render_widget(Paragraph::new(ui.message.as_str()), msg);
        return;
    };
    // One pass over the inputs per frame, shared by the header and the labels.
    let counts = session.counts();
    f.render_widget(Paragraph::new(progress_with(session, &counts, i)).bold(), top);
    let case = &session.inputs[i];
    let status = match session.status(i) {
        Status::Labelled(v) => format!(" answered: {} ", show_value(&v)),
        Status::Skipped => " skipped earlier ".into(),
        Status::Blocked(_) => " refused ".into(),
        Status::Pending => String::new(),
    };
    let title = format!(" {}:{} {status}", session.inputs_path.display(), case.line);
    let mut input_text = Text::from(case.input_text());
    if let Status::Blocked(why) = session.status(i) {
        input_text.lines.push(Line::from(""));
        input_text.lines.push(Line::from(Span::styled(format!("{why} — press {} to go on", if session.kind == TaskKind::Classification { "s" } else { "Ctrl-N" }), Style::new().red())));
    }
    f.render_widget(Paragraph::new(input_text).wrap(Wrap { trim: false }).block(Block::bordered().title(title)), input);
    let sugg = ui.suggestion.as_ref().map(show_value);
    let (body, help_text): (Text, String) = match session.kind {
        TaskKind::Classification => {
            let mut lines = vec![];
            for (k, l) in session.labels.iter().enumerate() {
                let mut style = Style::new();
                if sugg.as_deref() == Some(l.as_str()) {
                    style = style.add_modifier(Modifier::REVERSED);
                }
                let count = counts.per_label.get(l).copied().unwrap_or(0);
                lines.push(Line::from(vec![Span::styled(format!(" {} ", key_for_label(k).unwrap_or('?')), Style::new().bold()), Span::styled(l.to_string(), style), Span::raw(format!("  ({count})"))]));
            }
            if let Some(s) = &sugg {
                lines.push(Line::from(format!("suggested: {s} (Enter accepts)")).italic());
            }
            (Text::from(lines), "1-9/0/A-Z label · Enter accept suggestion · s skip · u undo · b back · / search · q quit".into())
        }
        TaskKind::Extraction if !ui.draft.fields.is_empty() => {
            let lines: Vec<Line> = ui
                .draft
                .fields
                .iter()
                .enumerate()
                .map(|(k, (name, v))| {
                    let cur = k == ui.draft.field;
                    Line::from(vec![Span::styled(format!("{}{name}: ", if cur { "> " } else { "  " }), Style::new().bold()), Span::raw(format!("{v}{}", if cur { "▏" } else { "" }))])
                })
                .collect();
            (Text::from(lines), "type to edit · Tab/↑↓ field · Ctrl-S save · Ctrl-N skip · Ctrl-U undo · Ctrl-B back · Ctrl-F search · Ctrl-Q quit".into())
        }
        _ => {
            let b = ui.draft.text.char_indices().nth(ui.draft.cursor).map(|(b, _)| b).unwrap_or(ui.draft.text.len());
            let shown = format!("{}▏{}", &ui.draft.text[..b], &ui.draft.text[b..]);
            let what = if session.kind == TaskKind::Extraction { "type a JSON object (no schema fields to offer)" } else { "type the answer" };
            (Text::from(shown), format!("{what} · Enter new line · Ctrl-S save · Ctrl-N skip · Ctrl-U undo · Ctrl-B back · Ctrl-F search · Ctrl-Q quit"))
        }
    };
    let title = match (&session.kind, &sugg) {
        (TaskKind::Classification, _) => " label ".to_string(),
        (_, Some(_)) => " answer (pre-filled from the suggestion) ".to_string(),
        _ => " answer ".to_string(),
    };
    f.render_widget(Paragraph::new(body).wrap(Wrap { trim: false }).block(Block::bordered().title(title)), answer);
    match &ui.search {
        Some(q) => f.render_widget(Paragraph::new(format!("Search: {q}▏ (Enter jump, Esc cancel)")).bold(), help),
        None => f.render_widget(Paragraph::new(help_text).dim(), help),
    }
    f.render_widget(Paragraph::new(ui.message.as_str()), msg);
}
