//! Plain-text layout shared by every report: aligned tables, paths as a
//! user types them, the names of data files' roles.

use crate::data::check::{LabelCount, Role};
use std::path::Path;

/// Renders rows as a left-aligned text table with a header rule.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut s = line(header.iter().map(|h| h.to_string()).collect());
    s.push('\n');
    s.push_str(&w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>().join("  "));
    s.push('\n');
    for r in rows {
        s.push_str(&line(r.clone()));
        s.push('\n');
    }
    s
}

/// A path as the user would type it: without a leading `./`.
pub fn show_path(p: &Path) -> String {
    let s = p.display().to_string();
    s.strip_prefix("./").map(str::to_string).unwrap_or(s)
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Examples => "examples",
        Role::Eval => "eval",
    }
}

/// Rows of a label-count table, one column per list (e.g. per data file or
/// split side): labels in order of first appearance, 0 where a list lacks one.
pub fn label_rows(columns: &[&[LabelCount]]) -> Vec<Vec<String>> {
    let mut labels: Vec<&str> = vec![];
    for c in columns {
        for l in c.iter() {
            if !labels.contains(&l.label.as_str()) {
                labels.push(&l.label);
            }
        }
    }
    labels
        .iter()
        .map(|l| std::iter::once(l.to_string()).chain(columns.iter().map(|c| c.iter().find(|x| x.label == *l).map(|x| x.count).unwrap_or(0).to_string())).collect())
        .collect()
}
