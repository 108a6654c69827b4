//! Task revisions: content hashes of the parts of a task whose churn the
//! advisor reads (the contract, each prompt, the expected outputs). They are
//! recorded at every eval; a hash that changes is a revision.

use crate::dataset::Case;
use crate::task::{hash_json, Task};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Revision {
    /// `contract`, `prompt` or `expected`.
    pub kind: String,
    pub name: String,
    pub hash: String,
}

pub fn revisions(task: &Task, eval: &[Case], examples: Option<&[Case]>) -> Vec<Revision> {
    let t = &task.file.task;
    let contract = json!({"kind": t.kind, "labels": t.labels, "schema": task.output_schema, "asserts": task.effective_asserts()});
    let mut out = vec![Revision { kind: "contract".into(), name: t.name.clone(), hash: hash_json(&contract) }];
    for p in &task.prompt_sources {
        out.push(Revision { kind: "prompt".into(), name: p.id.clone(), hash: hash_json(&json!({"system": p.system, "template": p.template, "shots": p.shots})) });
    }
    let exp = |cs: &[Case]| hash_json(&cs.iter().map(|c| (&c.id, &c.expected)).collect::<Vec<_>>());
    out.push(Revision { kind: "expected".into(), name: "eval".into(), hash: exp(eval) });
    if let Some(ex) = examples {
        out.push(Revision { kind: "expected".into(), name: "examples".into(), hash: exp(ex) });
    }
    out
}
