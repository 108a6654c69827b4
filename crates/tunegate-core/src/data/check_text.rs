//! `data check`'s report as text: what was read, label counts, token
//! lengths, the findings grouped by kind with their lines, and the verdict.

use crate::data::check::CheckReport;
use crate::data::{Distribution, FindingKind};
use crate::report::{label_rows, role_name, show_path, table};

fn dist_text(d: &Distribution) -> String {
    format!("{:.0} / {:.1} / {:.0} / {:.0}", d.min, d.mean, d.p90, d.max)
}

impl CheckReport {
    /// The text report: files, label distribution, tokens, then findings
    /// grouped by kind (blocking kinds first), then a verdict.
    pub fn text(&self) -> String {
        let r = self;
        let mut s = format!("data check: {}\n", r.task.display());
        for f in &r.files {
            let bad = if f.malformed > 0 { format!(", {} malformed line(s)", f.malformed) } else { String::new() };
            s.push_str(&format!("  {:<9} {}  {} cases{bad}\n", role_name(f.role), show_path(&f.path), f.cases));
        }
        if r.files.iter().any(|f| !f.labels.is_empty()) {
            s.push('\n');
            let header: Vec<&str> = std::iter::once("label").chain(r.files.iter().map(|f| role_name(f.role))).collect();
            let rows = label_rows(&r.files.iter().map(|f| f.labels.as_slice()).collect::<Vec<_>>());
            s.push_str(&table(&header, &rows));
        }
        if let Some(t) = &r.tokenizer {
            s.push_str(&format!(
                "\ntokens: {}{} for {}, limit {} per example ({})\n",
                t.name,
                if t.estimate { ", an estimate" } else { "" },
                t.model,
                t.limit,
                t.limit_source
            ));
            for f in &r.files {
                if let Some(d) = &f.tokens {
                    s.push_str(&format!("  {:<9} tune prompt + expected, min / mean / p90 / max: {}\n", role_name(f.role), dist_text(d)));
                }
            }
        }
        for n in &r.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        let mut kinds: Vec<FindingKind> = r.findings.iter().map(|f| f.kind).collect();
        kinds.dedup();
        for k in kinds {
            let of: Vec<_> = r.findings.iter().filter(|f| f.kind == k).collect();
            s.push_str(&format!("\n{} ({}){}\n", k.as_str(), of.len(), if k.blocks_tuning() { " — blocks tuning" } else { " — warning" }));
            for f in of {
                let rel = f
                    .related
                    .as_ref()
                    .map(|r| format!(" ~ {}:{}", show_path(&r.file), r.lines.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")))
                    .unwrap_or_default();
                s.push_str(&format!("  {}{rel}: {}\n", f.location().strip_prefix("./").unwrap_or(&f.location()), f.message));
            }
        }
        s.push('\n');
        if r.blocking > 0 {
            s.push_str(&format!("{} finding(s) block tuning, {} warning(s)\n", r.blocking, r.warnings));
        } else if r.warnings > 0 {
            s.push_str(&format!("nothing blocks tuning; {} warning(s)\n", r.warnings));
        } else {
            s.push_str("clean: nothing blocks tuning\n");
        }
        s
    }
}
