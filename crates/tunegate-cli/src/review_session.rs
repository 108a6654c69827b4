//! A blind review in progress: which cases are left, what is on screen
//! (sides in the session's hidden order), answering and undoing. Both
//! front ends of `tunegate review` (the line mode and the terminal UI)
//! drive it; every answer is committed to the store at once.

use anyhow::Result;
use std::collections::VecDeque;
use tunegate_core::review::{a_first, Choice};
use tunegate_run::judge::PairedOutput;
use tunegate_store::{ReviewRow, ReviewSession, Store};

pub fn clip_block(s: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out: Vec<String> = lines.iter().take(max_lines).map(|l| format!("  {l}")).collect();
    if lines.len() > max_lines {
        out.push(format!("  … {} more lines", lines.len() - max_lines));
    }
    if out.is_empty() {
        out.push("  (empty)".into());
    }
    out.join("\n")
}

pub const HELP: &str = "1 = first is better, 2 = second is better, t = tie, x = both bad (a note may follow: `2 first one invents a date`); s = skip, u = undo the last answer, q = quit";

/// The state of a review session shared by the line mode and the terminal
/// UI: the cases still to review, in order. Every answer is committed to the
/// store before the next case is shown.
pub struct Reviewing<'a> {
    pub store: &'a Store,
    pub session: &'a ReviewSession,
    pub pairs: &'a [PairedOutput],
    pub reviewer: String,
    pending: VecDeque<usize>,
}

/// What a case looks like to the reviewer: the outputs in the hidden order.
pub struct Shown<'a> {
    pub pair: &'a PairedOutput,
    pub a_first: bool,
    pub first: &'a str,
    pub second: &'a str,
}

impl<'a> Reviewing<'a> {
    pub fn new(store: &'a Store, session: &'a ReviewSession, pairs: &'a [PairedOutput], reviewer: &str) -> Result<Reviewing<'a>> {
        let done: std::collections::HashSet<String> = store.reviews(&session.id)?.into_iter().map(|r| r.case_id).collect();
        let pending = (0..pairs.len()).filter(|i| !done.contains(&pairs[*i].case_id)).collect();
        Ok(Reviewing { store, session, pairs, reviewer: reviewer.to_string(), pending })
    }

    pub fn current(&self) -> Option<Shown<'a>> {
        let &i = self.pending.front()?;
        let p = &self.pairs[i];
        let af = a_first(self.session.seed, &p.case_id);
        let (first, second) = if af { (p.output_a.as_str(), p.output_b.as_str()) } else { (p.output_b.as_str(), p.output_a.as_str()) };
        Some(Shown { pair: p, a_first: af, first, second })
    }

    pub fn reviewed(&self) -> Result<usize> {
        Ok(self.store.reviews(&self.session.id)?.len())
    }

    pub fn remaining(&self) -> usize {
        self.pending.len()
    }

    pub fn answer(&mut self, choice: Choice, note: Option<String>) -> Result<()> {
        let Some(c) = self.current() else { return Ok(()) };
        self.store.upsert_review(&ReviewRow {
            session_id: self.session.id.clone(),
            case_id: c.pair.case_id.clone(),
            a_first: c.a_first,
            choice: choice.as_str().into(),
            verdict: choice.unblind(c.a_first).as_str().into(),
            note,
            reviewer: self.reviewer.clone(),
            created_at: tunegate_store::now(),
        })?;
        self.pending.pop_front();
        Ok(())
    }

    /// Skips the case for this session (it comes back next time).
    pub fn skip(&mut self) {
        self.pending.pop_front();
    }

    /// Removes the last answer of the session; its case is shown next.
    pub fn undo(&mut self) -> Result<Option<String>> {
        let Some(last) = self.store.reviews(&self.session.id)?.pop() else { return Ok(None) };
        self.store.delete_review(&self.session.id, &last.case_id)?;
        if let Some(j) = self.pairs.iter().position(|x| x.case_id == last.case_id) {
            self.pending.retain(|&k| k != j);
            self.pending.push_front(j);
        }
        Ok(Some(last.case_id))
    }
}

