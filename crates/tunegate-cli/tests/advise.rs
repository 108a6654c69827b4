//! `tunegate advise` on scenario fixtures: a task file, data generated here,
//! a run store written through the real store API (or by `tunegate eval`),
//! and, where a scenario needs an age, a git history with backdated commits.
//! Each test asserts the verdict and the evidence behind it.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tunegate_store::{now, store_path_for, ResultRow, RunInfo, Store};

const LABELS: [&str; 5] = ["billing", "technical", "account", "shipping", "other"];

fn tg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunegate")).args(args).current_dir(cwd).output().unwrap()
}

/// A small deterministic generator (LCG), so fixtures are the same everywhere.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

const OPENERS: &[&str] = &["hi there,", "hello,", "good morning,", "hey team,", "quick question:", "urgent:", "sorry to bother you,", "dear support,"];
const ISSUES: &[(&str, &[&str])] = &[
    ("billing", &["i was charged twice for", "the invoice is wrong for", "please refund the payment for", "my card was billed again for", "the promo code did not apply to"]),
    ("technical", &["the app keeps crashing with", "firmware update failed on", "wifi pairing does not work for", "error code e4 shows on", "the automation stopped running on"]),
    ("account", &["i cannot sign in to manage", "my password reset link expired for", "someone changed my email on the profile for", "two-step verification locks me out of", "please remove a household member from"]),
    ("shipping", &["the delivery is late for", "tracking has not moved for", "the parcel arrived damaged with", "wrong item delivered instead of", "please reschedule the installation of"]),
    ("other", &["do you sell gift cards for", "is there a store near me that stocks", "i want to praise your staff about", "are you hiring technicians for", "press enquiry about"]),
];
const PRODUCTS: &[&str] = &["the kettle", "my dishwasher", "the homehub", "a washing machine", "the fridge freezer", "our oven", "the smart plug", "a tumble dryer", "the coffee maker", "my microwave", "the air purifier", "a robot vacuum"];
const FILLER: &[&str] = &[
    "yesterday", "last week", "this morning", "again", "since monday", "after the update", "before the weekend", "at my mum's flat", "in the kitchen",
    "for the second time", "while on holiday", "from my phone", "at work", "over the bank holiday", "on the new account", "near the door",
];

/// A realistic support message for `label`, different enough from every
/// other (word 3-shingles) not to count as a near duplicate.
fn message(label: &str, i: usize, salt: u64) -> String {
    let mut r = Rng(i as u64 * 7919 + salt * 104729 + 17);
    let issues = ISSUES.iter().find(|(l, _)| *l == label).unwrap().1;
    format!(
        "{} {} {} {} order {}-{} {} {}",
        OPENERS[r.next(OPENERS.len())],
        issues[r.next(issues.len())],
        PRODUCTS[r.next(PRODUCTS.len())],
        FILLER[r.next(FILLER.len())],
        100 + r.next(900),
        i,
        FILLER[r.next(FILLER.len())],
        PRODUCTS[r.next(PRODUCTS.len())]
    )
}

#[derive(Clone)]
struct Gen {
    id: String,
    input: String,
    label: String,
    tags: Vec<String>,
}

fn cases(prefix: &str, n: usize, salt: u64) -> Vec<Gen> {
    (0..n)
        .map(|i| {
            let label = LABELS[i % LABELS.len()];
            let tag = ["email", "chat", "phone-transcript"][i % 3];
            Gen { id: format!("{prefix}-{i:04}"), input: message(label, i, salt), label: label.into(), tags: vec![tag.into()] }
        })
        .collect()
}

fn jsonl(cs: &[Gen]) -> String {
    cs.iter().map(|c| format!("{}\n", json!({"id": c.id, "input": c.input, "expected": c.label, "tags": c.tags}))).collect()
}

/// What the simulated model answered for one case.
#[derive(Clone, Copy)]
enum Ans {
    Pass,
    Wrong,
    /// The right label buried in a sentence: a format failure.
    Chatty,
    Error,
}

struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("task");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        Fx { _tmp: tmp, dir }
    }

    fn write(&self, rel: &str, content: &str) -> &Self {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    /// A support-triage task file: the given prompts block, one priced
    /// provider, eval and (optionally) examples.
    fn task(&self, prompts: &str, calls: u64, price: (f64, f64), examples: bool, extra: &str) -> &Self {
        let ex = if examples { "  examples: data/examples.jsonl\n" } else { "" };
        let yaml = format!(
            "version: 1\ntask:\n  name: support-triage\n  kind: classification\n  labels: [billing, technical, account, shipping, other]\n\
usage:\n  calls_per_month: {calls}\nprompts:\n{prompts}providers:\n  - id: exec:sh model.sh\n    label: hosted\n    price: {{ input_per_mtok: {}, output_per_mtok: {} }}\n\
data:\n  eval: data/eval.jsonl\n{ex}assert:\n  - type: label\n{extra}",
            price.0, price.1
        );
        self.write("tunegate.yaml", &yaml)
    }

    fn cfg(&self) -> PathBuf {
        self.dir.join("tunegate.yaml")
    }

    /// A complete eval run through the store API: for each (prompt, answer
    /// function) a group on provider `hosted`, `repeats` times.
    fn run(&self, eval: &[Gen], groups: &[(&str, &dyn Fn(usize, u32) -> Ans)], repeats: u32, prompt_tokens: u64) -> String {
        let mut store = Store::open(&store_path_for(&self.cfg())).unwrap();
        let id = Store::new_run_id();
        let prompts: Vec<&str> = groups.iter().map(|g| g.0).collect();
        store
            .create_run(&RunInfo {
                id: id.clone(),
                created_at: now(),
                finished_at: Some(now()),
                status: "complete".into(),
                kind: "eval".into(),
                task_name: "support-triage".into(),
                task_path: self.cfg().display().to_string(),
                config_hash: "fixture".into(),
                repeat: repeats,
                planned: (eval.len() * groups.len()) as u64 * repeats as u64,
                meta: json!({"prompts": prompts, "providers": ["hosted"], "labels": LABELS, "task_kind": "classification"}),
            })
            .unwrap();
        let mut rows = vec![];
        for (prompt, f) in groups {
            for rep in 0..repeats {
                for (i, c) in eval.iter().enumerate() {
                    let ans = f(i, rep);
                    let wrong = LABELS[(LABELS.iter().position(|l| *l == c.label).unwrap() + 1) % LABELS.len()];
                    let (output, pass, detail) = match ans {
                        Ans::Pass => (Some(c.label.clone()), Some(true), json!({"expected": c.label, "predicted": c.label})),
                        Ans::Wrong => (Some(wrong.to_string()), Some(false), json!({"expected": c.label, "predicted": wrong})),
                        Ans::Chatty => (Some(format!("The right team is {} for this.", c.label)), Some(false), json!({"expected": c.label, "predicted": null, "format_failure": "label_outside_set"})),
                        Ans::Error => (None, None, Value::Null),
                    };
                    let error = matches!(ans, Ans::Error).then(|| "HTTP 503".to_string());
                    rows.push(ResultRow {
                        run_id: id.clone(),
                        prompt_id: prompt.to_string(),
                        provider: "hosted".into(),
                        case_id: c.id.clone(),
                        repeat: rep,
                        case_line: i as u64 + 1,
                        input: c.input.clone(),
                        vars: json!({"input": c.input}),
                        expected: Some(json!(c.label)),
                        tags: c.tags.clone(),
                        messages: json!([{"role": "user", "content": format!("Message: {}\nTeam:", c.input)}]),
                        output,
                        error_kind: error.as_ref().map(|_| "server".to_string()),
                        error,
                        pass,
                        score: pass.map(|p| if p { 1.0 } else { 0.0 }),
                        assertions: if matches!(ans, Ans::Error) { json!([]) } else { json!([{"type": "label", "pass": pass, "score": 0.0, "reason": "", "detail": detail}]) },
                        latency_ms: 10.0,
                        prompt_tokens: Some(prompt_tokens),
                        completion_tokens: Some(2),
                        cost_usd: Some(0.0),
                        cached: false,
                        attempts: 1,
                    });
                }
            }
        }
        store.insert_results(&rows, &[]).unwrap();
        id
    }

    /// Commits the task as it is now, dated `days_ago`.
    fn commit(&self, days_ago: u64, msg: &str) {
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - days_ago * 86400;
        let date = format!("@{ts} +0000");
        let git = |args: &[&str]| {
            let o = Command::new("git")
                .args(args)
                .current_dir(&self.dir)
                .env("GIT_AUTHOR_DATE", &date)
                .env("GIT_COMMITTER_DATE", &date)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .output()
                .unwrap();
            assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        if !self.dir.join(".git").exists() {
            git(&["init", "-q"]);
            self.write(".gitignore", ".tunegate/\n");
        }
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", msg]);
    }

    fn advise(&self) -> (Value, String) {
        let cfg = self.cfg();
        let c = cfg.to_str().unwrap();
        let o = tg(&["advise", "-c", c, "--format", "json"], &self.dir);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let o = tg(&["advise", "-c", c], &self.dir);
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        // Commands are printed whole (copy-pasteable); the fixtures' long
        // temporary paths may push those lines past 100 columns.
        for l in text.lines().filter(|l| !l.trim_start().starts_with("$ ")) {
            assert!(l.chars().count() <= 100, "line over 100 columns: {l:?}");
        }
        let o = tg(&["advise", "-c", c, "--format", "md"], &self.dir);
        assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("## Verdict"));
        assert_eq!(v["schema_version"], 1);
        (v, text)
    }
}

const BARE: &str = "  - id: bare\n    template: \"Message: {{ input }}\\nTeam:\"\n";
const INSTRUCTED: &str = "  - id: instructed\n    system: \"You route customer messages. Answer with exactly one team: {{ labels | join(', ') }}.\"\n    template: \"Message: {{ input }}\\nTeam:\"\n";

fn row<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["table"].as_array().unwrap().iter().find(|r| r["row"] == name).unwrap()
}

fn steps(v: &Value) -> String {
    v["next_steps"].as_array().unwrap().iter().map(|s| format!("{} {}\n", s["text"].as_str().unwrap(), s["command"].as_str().unwrap_or(""))).collect()
}

fn rate(pass_every: usize) -> impl Fn(usize, u32) -> Ans {
    // Fails one case in `pass_every` (0: never).
    move |i, _| if pass_every > 0 && i % pass_every == 0 { Ans::Wrong } else { Ans::Pass }
}

#[test]
fn fresh_init_without_runs_says_what_to_do_first() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(tg(&["init", "t"], tmp.path()).status.success());
    let o = tg(&["advise", "-c", "t/tunegate.yaml"], tmp.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("VERDICT: BUILD_EVAL_FIRST"), "{out}");
    assert!(out.contains("14 eval cases") && out.contains("tunegate eval -c t/tunegate.yaml"), "{out}");
    assert!(out.contains("not measured"), "{out}");
    let o = tg(&["advise", "-c", "t/tunegate.yaml", "--format", "json"], tmp.path());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "BUILD_EVAL_FIRST");
    assert_eq!(v["run_id"], Value::Null);
    assert_eq!(row(&v, "Main goal")["measured"], false);
    assert_eq!(v["anatomy"].as_array().unwrap().len(), 3);
}

#[test]
fn init_then_eval_still_asks_for_a_bigger_eval_set() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(tg(&["init", "t"], tmp.path()).status.success());
    tg(&["eval", "-c", "t/tunegate.yaml", "--no-progress"], tmp.path());
    let o = tg(&["advise", "-c", "t/tunegate.yaml", "--format", "json"], tmp.path());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "BUILD_EVAL_FIRST");
    assert!(v["run_id"].is_string());
    assert_eq!(row(&v, "Main goal")["measured"], true);
    assert!(v["reasons"][0].as_str().unwrap().contains("14 eval cases < 100"), "{v}");
}

#[test]
fn a_small_eval_set_widens_the_intervals_and_comes_first_but_decides_only_when_unreadable() {
    let advise_on = |n: usize| {
        let fx = Fx::new();
        let eval = cases("ev", n, 1);
        fx.task(&format!("{BARE}{INSTRUCTED}"), 50_000, (0.15, 0.6), true, "").write("data/eval.jsonl", &jsonl(&eval)).write("data/examples.jsonl", &jsonl(&cases("ex", 200, 2)));
        fx.run(&eval, &[("bare", &rate(5)), ("instructed", &rate(10))], 1, 40);
        fx.advise()
    };
    // 30 cases can still be read: the verdict stands on the rest of the
    // evidence, the intervals are said to be wide, growing the set is step 1.
    let (v, text) = advise_on(30);
    assert_ne!(v["verdict"], "BUILD_EVAL_FIRST", "{text}");
    assert!(text.contains("only 30 eval cases") && v["next_steps"][0]["text"].as_str().unwrap().contains("from 30 to at least 100"), "{text}");
    assert!(v["readiness"]["eval_ci_half_width"].as_f64().unwrap() > 0.1);
    // 12 cases say nothing: build the eval set first.
    let (v, text) = advise_on(12);
    assert_eq!(v["verdict"], "BUILD_EVAL_FIRST", "{text}");
    assert!(text.contains("12 eval cases") && text.contains("Add 88 labelled cases"), "{text}");
}

#[test]
fn missing_expected_outputs_mean_the_behaviour_is_not_written_down() {
    let fx = Fx::new();
    let eval = cases("ev", 120, 1);
    let data: String = eval
        .iter()
        .enumerate()
        .map(|(i, c)| if i % 3 == 0 { format!("{}\n", json!({"id": c.id, "input": c.input})) } else { format!("{}\n", json!({"id": c.id, "input": c.input, "expected": c.label})) })
        .collect();
    fx.task(BARE, 50_000, (0.15, 0.6), false, "").write("data/eval.jsonl", &data);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "WRITE_EXAMPLES_FIRST", "{text}");
    assert!(v["reasons"][0].as_str().unwrap().contains("80 of 120 eval cases"), "{}", v["reasons"]);
}

#[test]
fn no_examples_means_write_examples_first() {
    let fx = Fx::new();
    let eval = cases("ev", 120, 1);
    fx.task(&format!("{BARE}{INSTRUCTED}"), 50_000, (0.15, 0.6), false, "").write("data/eval.jsonl", &jsonl(&eval));
    fx.run(&eval, &[("bare", &rate(3)), ("instructed", &rate(4))], 1, 40);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "WRITE_EXAMPLES_FIRST", "{text}");
    assert_eq!(row(&v, "Data")["points_to"], "prompting");
    assert!(steps(&v).contains("Write 50 examples"), "{}", steps(&v));
}

#[test]
fn a_high_pass_rate_on_a_leaking_eval_set_is_fix_data_not_fine_tune() {
    let fx = Fx::new();
    let eval = cases("ev", 150, 1);
    let mut examples = cases("ex", 600, 2);
    // 30 eval cases copied into the training pool.
    for (i, c) in eval.iter().take(30).enumerate() {
        examples.push(Gen { id: format!("leak-{i}"), ..c.clone() });
    }
    fx.task(&format!("{BARE}{INSTRUCTED}"), 2_000_000, (2.5, 10.0), true, "").write("data/eval.jsonl", &jsonl(&eval)).write("data/examples.jsonl", &jsonl(&examples));
    fx.commit(120, "task");
    fx.run(&eval, &[("bare", &rate(40)), ("instructed", &rate(0))], 1, 40);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "FIX_DATA", "{text}");
    assert_eq!(v["readiness"]["removed"]["leaked_eval_cases"], 30);
    // 20% of the eval set leaks: beyond max_leaked_share, whatever the clean subset says.
    assert!(v["reasons"][0].as_str().unwrap().contains("30 of 150 eval cases (20.0%)") && v["reasons"][0].as_str().unwrap().contains("without them"), "{}", v["reasons"]);
    assert!(steps(&v).contains("tunegate data split"), "{}", steps(&v));
}

#[test]
fn many_conflicting_labels_are_fixed_first_a_few_are_a_warning() {
    let conflicts = |n: usize| {
        let fx = Fx::new();
        let eval = cases("ev", 120, 1);
        let mut examples = cases("ex", 200, 2);
        for i in 0..n {
            let c = examples[i].clone();
            examples.push(Gen { id: format!("conflict-{i}"), label: if c.label == "billing" { "other".into() } else { "billing".into() }, ..c });
        }
        fx.task(BARE, 50_000, (0.15, 0.6), true, "").write("data/eval.jsonl", &jsonl(&eval)).write("data/examples.jsonl", &jsonl(&examples));
        fx.run(&eval, &[("bare", &rate(5))], 1, 40);
        fx.advise()
    };
    // 20 groups: 40 of 220 examples (18%) teach two answers.
    let (v, text) = conflicts(20);
    assert_eq!(v["verdict"], "FIX_DATA", "{text}");
    assert_eq!(v["readiness"]["removed"]["conflict_groups"], 20);
    assert_eq!(v["readiness"]["clean_examples"], 180);
    // 4 groups: 8 of 204 (3.9%): a warning with its fix, the verdict stands.
    let (v, text) = conflicts(4);
    assert_ne!(v["verdict"], "FIX_DATA", "{text}");
    assert_eq!(v["readiness"]["clean_examples"], 196);
    assert!(text.contains("warning: 4 groups of the same case have different expected outputs: 8 of 204 examples (3.9%)"), "{text}");
}

#[test]
fn format_failures_call_for_a_tighter_contract() {
    let fx = Fx::new();
    let eval = cases("ev", 120, 1);
    fx.task(&format!("{BARE}{INSTRUCTED}"), 50_000, (0.15, 0.6), true, "").write("data/eval.jsonl", &jsonl(&eval)).write("data/examples.jsonl", &jsonl(&cases("ex", 200, 2)));
    let chatty = |i: usize, _| if i % 4 == 0 { Ans::Chatty } else if i % 15 == 1 { Ans::Wrong } else if i == 2 { Ans::Error } else { Ans::Pass };
    fx.run(&eval, &[("bare", &chatty), ("instructed", &chatty)], 1, 40);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "TIGHTEN_CONTRACT", "{text}");
    let f = &v["failures"];
    assert_eq!(f["format"], 30);
    assert_eq!(f["format_kinds"]["extra_text"], 30);
    assert_eq!(f["provider_errors"], 1);
    assert_eq!(row(&v, "Main goal")["points_to"], "prompting");
    assert!(steps(&v).contains("Answer with exactly one of: billing, technical, account, shipping, other"));
}

fn catalogue() -> String {
    let mut s = String::from("Northwind Home product catalogue:\n| SKU | Product | Price | Warranty |\n|---|---|---|---|\n");
    for i in 0..120 {
        s.push_str(&format!("| NW-{} | {} model {} | ${}.99 | {} years |\n", 1000 + i, PRODUCTS[i % PRODUCTS.len()].trim_start_matches("the ").trim_start_matches("my "), i, 20 + i * 7, 1 + i % 3));
    }
    s
}

#[test]
fn a_prompt_long_because_of_a_catalogue_needs_retrieval() {
    let fx = Fx::new();
    let eval = cases("ev", 120, 1);
    let prompts = format!("{BARE}  - id: catalogue\n    system_file: prompts/system.txt\n    template: \"Message: {{{{ input }}}}\\nTeam:\"\n");
    fx.task(&prompts, 300_000, (2.5, 10.0), true, "")
        .write("data/eval.jsonl", &jsonl(&eval))
        .write("data/examples.jsonl", &jsonl(&cases("ex", 300, 2)))
        .write("prompts/system.txt", &format!("You route customer messages. Answer with exactly one team name.\n\n{}\nUse the catalogue to tell products apart.", catalogue()));
    fx.commit(90, "task");
    fx.run(&eval, &[("bare", &rate(6)), ("catalogue", &rate(12))], 1, 2500);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "ADD_RETRIEVAL", "{text}");
    let cat = v["anatomy"].as_array().unwrap().iter().find(|a| a["prompt"] == "catalogue").unwrap();
    assert!(cat["reference_facts"].as_u64().unwrap() > 1500, "{cat}");
    assert!(cat["reference_facts"].as_u64().unwrap() as f64 > 0.8 * cat["total"].as_u64().unwrap() as f64);
    assert_eq!(cat["few_shot"], 0);
    assert_eq!(row(&v, "Cost / length")["points_to"], "retrieval");
    assert!(steps(&v).contains("-token block \"Northwind Home product catalogue:\""), "{}", steps(&v));
}

#[test]
fn a_prompt_long_because_of_few_shot_examples_points_to_tuning_not_retrieval() {
    let fx = Fx::new();
    let eval = cases("ev", 150, 1);
    let prompts = format!("{BARE}{INSTRUCTED}  - id: few-shot\n    template_file: prompts/few_shot.j2\n    shots: {{ k: 60, strategy: stratified, seed: 7 }}\n");
    fx.task(&prompts, 2_000_000, (2.5, 10.0), true, "")
        .write("data/eval.jsonl", &jsonl(&eval))
        .write("data/examples.jsonl", &jsonl(&cases("ex", 400, 2)))
        .write("prompts/few_shot.j2", "Route each customer message to a team ({{ labels | join(\", \") }}).\n{% for s in shots %}\nMessage: {{ s.input }}\nTeam: {{ s.expected }}\n{% endfor %}\nMessage: {{ input }}\nTeam:");
    fx.commit(120, "task");
    fx.run(&eval, &[("bare", &rate(3)), ("instructed", &rate(5)), ("few-shot", &rate(8))], 1, 1800);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "FINE_TUNE", "{text}");
    assert_eq!(v["keep_prompt"], "bare");
    let fs = v["anatomy"].as_array().unwrap().iter().find(|a| a["prompt"] == "few-shot").unwrap();
    assert_eq!(fs["reference_facts"], 0, "{fs}");
    assert!(fs["few_shot"].as_u64().unwrap() > 1000, "{fs}");
    assert_eq!(row(&v, "Cost / length")["points_to"], "tuning");
    assert_eq!(row(&v, "Product stage")["points_to"], "tuning");
    let t = &v["cost"]["tuned"];
    assert!(t["break_even_months"].as_f64().unwrap() < 1.0, "{t}");
    assert!(t["monthly_usd"].as_f64().unwrap() < t["current_monthly_usd"].as_f64().unwrap());
    assert!(steps(&v).contains("tunegate tune") && steps(&v).contains("tunegate compare"), "{}", steps(&v));
}

#[test]
fn missing_knowledge_failures_call_for_retrieval() {
    let fx = Fx::new();
    // A generation task: answers need policy facts the prompt does not carry.
    let qs: Vec<(String, String)> = (0..120)
        .map(|i| {
            let p = PRODUCTS[i % PRODUCTS.len()];
            (format!("how long is the warranty on {p}, order {i}?"), format!("The warranty on {p} is {} years under plan NW-{}.", 1 + i % 3, 200 + i))
        })
        .collect();
    let data: String = qs.iter().enumerate().map(|(i, (q, a))| format!("{}\n", json!({"id": format!("q{i}"), "input": q, "expected": a}))).collect();
    let yaml = "version: 1\ntask:\n  name: policy-answers\n  kind: generation\nusage:\n  calls_per_month: 20000\nprompts:\n  - id: bare\n    template: \"Answer the customer: {{ input }}\"\n\
providers:\n  - id: exec:sh model.sh\n    label: hosted\ndata:\n  eval: data/eval.jsonl\n  examples: data/examples.jsonl\nassert:\n  - type: similarity\n    threshold: 0.9\n";
    let examples: String = (0..60)
        .map(|i| {
            let p = PRODUCTS[i % PRODUCTS.len()];
            format!("{}\n", json!({"id": format!("x{i}"), "input": format!("can i still return {p} i bought {} days ago?", 3 + i), "expected": format!("Yes: returns of {p} are accepted for {} more days.", 27 - i % 20)}))
        })
        .collect();
    fx.write("tunegate.yaml", yaml).write("data/eval.jsonl", &data).write("data/examples.jsonl", &examples);
    let mut store = Store::open(&store_path_for(&fx.cfg())).unwrap();
    let id = Store::new_run_id();
    store
        .create_run(&RunInfo { id: id.clone(), created_at: now(), finished_at: None, status: "complete".into(), kind: "eval".into(), task_name: "policy-answers".into(), task_path: "x".into(), config_hash: "h".into(), repeat: 1, planned: 120, meta: json!({}) })
        .unwrap();
    let rows: Vec<ResultRow> = qs
        .iter()
        .enumerate()
        .map(|(i, (q, a))| {
            let ok = i % 2 == 0;
            ResultRow {
                run_id: id.clone(),
                prompt_id: "bare".into(),
                provider: "hosted".into(),
                case_id: format!("q{i}"),
                input: q.clone(),
                expected: Some(json!(a)),
                messages: json!([{"role": "user", "content": format!("Answer the customer: {q}")}]),
                output: Some(if ok { a.clone() } else { "Our products come with a standard warranty; see the leaflet.".into() }),
                pass: Some(ok),
                assertions: json!([{"type": "similarity", "pass": ok, "score": 0.3, "reason": ""}]),
                ..Default::default()
            }
        })
        .collect();
    store.insert_results(&rows, &[]).unwrap();
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "ADD_RETRIEVAL", "{text}");
    assert_eq!(v["failures"]["missing_knowledge"], 60);
    assert_eq!(row(&v, "Main goal")["points_to"], "retrieval");
}

#[test]
fn a_task_still_moving_keeps_prompting() {
    let fx = Fx::new();
    let eval = cases("ev", 120, 1);
    fx.task(&format!("{BARE}{INSTRUCTED}"), 500_000, (2.5, 10.0), true, "").write("data/eval.jsonl", &jsonl(&eval)).write("data/examples.jsonl", &jsonl(&cases("ex", 300, 2)));
    let id = fx.run(&eval, &[("bare", &rate(3)), ("instructed", &rate(4))], 1, 40);
    // Three evals this week, each with a different contract (labels renamed).
    let mut store = Store::open(&store_path_for(&fx.cfg())).unwrap();
    for h in ["c1", "c2", "c3"] {
        store.record_revisions(Some(&id), &[("contract".into(), "support-triage".into(), h.into()), ("expected".into(), "eval".into(), format!("e{h}"))]).unwrap();
    }
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "KEEP_PROMPTING", "{text}");
    assert_eq!(v["churn"]["contract_changes_7d"], 2);
    assert_eq!(v["churn"]["expected_changes_30d"], 2);
    assert_eq!(row(&v, "Product stage")["points_to"], "prompting");
    assert!(v["summary"].as_str().unwrap().contains("still moving"));
}

#[test]
fn a_contract_change_in_git_this_week_keeps_prompting() {
    let fx = Fx::new();
    let eval = cases("ev", 120, 1);
    fx.task(&format!("{BARE}{INSTRUCTED}"), 500_000, (2.5, 10.0), true, "").write("data/eval.jsonl", &jsonl(&eval)).write("data/examples.jsonl", &jsonl(&cases("ex", 300, 2)));
    fx.commit(100, "first version");
    let yaml = std::fs::read_to_string(fx.cfg()).unwrap().replace("labels: [billing, technical, account, shipping, other]", "labels: [billing, technical, account, shipping, returns, other]");
    fx.write("tunegate.yaml", &yaml);
    fx.commit(2, "add a returns team");
    fx.run(&eval, &[("bare", &rate(3)), ("instructed", &rate(4))], 1, 40);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "KEEP_PROMPTING", "{text}");
    let d = v["churn"]["days_since_contract_change"].as_f64().unwrap();
    assert!((1.5..2.5).contains(&d), "{d}");
    assert_eq!(v["churn"]["at_least"], false);
    assert!(text.contains("contract last changed 2 days ago"), "{text}");
}

fn stable_cheap_task() -> (Fx, Vec<Gen>) {
    let fx = Fx::new();
    let eval = cases("ev", 200, 1);
    fx.task(&format!("{BARE}{INSTRUCTED}"), 100_000, (0.15, 0.6), true, "").write("data/eval.jsonl", &jsonl(&eval)).write("data/examples.jsonl", &jsonl(&cases("ex", 900, 2)));
    fx.commit(180, "task");
    (fx, eval)
}

#[test]
fn a_stable_task_with_900_examples_at_98_percent_keeps_prompting() {
    let (fx, eval) = stable_cheap_task();
    fx.run(&eval, &[("bare", &rate(50)), ("instructed", &rate(25))], 1, 40);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "KEEP_PROMPTING", "{text}");
    assert_eq!(v["readiness"]["clean_examples"], 900);
    assert_eq!(row(&v, "Data")["points_to"], "tuning");
    assert_eq!(row(&v, "Product stage")["points_to"], "tuning");
    assert!(v["summary"].as_str().unwrap().contains("98.0%"), "{}", v["summary"]);
    let best = v["cost"]["lines"].as_array().unwrap().iter().find(|l| l["prompt"] == "bare").unwrap();
    assert!(best["monthly_usd"].as_f64().unwrap() < 10.0, "{best}");
    assert!(text.contains("Ship prompt `bare` on hosted"), "{text}");
}

#[test]
fn a_higher_target_in_the_task_file_turns_the_same_evidence_into_fine_tune() {
    let (fx, eval) = stable_cheap_task();
    let yaml = std::fs::read_to_string(fx.cfg()).unwrap() + "advise:\n  target_pass_rate: 0.99\n";
    fx.write("tunegate.yaml", &yaml);
    fx.run(&eval, &[("bare", &rate(50)), ("instructed", &rate(25))], 1, 40);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "FINE_TUNE", "{text}");
    let t = v["thresholds"].as_array().unwrap().iter().find(|t| t["name"] == "target_pass_rate").unwrap();
    assert_eq!(t["value"], 0.99);
    assert_eq!(t["overridden"], true);
    assert!(text.contains("target_pass_rate=0.99"));
}

#[test]
fn an_unknown_advise_key_is_an_error_naming_it() {
    let (fx, _) = stable_cheap_task();
    let yaml = std::fs::read_to_string(fx.cfg()).unwrap() + "advise:\n  target_passrate: 0.99\n";
    fx.write("tunegate.yaml", &yaml);
    let o = tg(&["advise", "-c", fx.cfg().to_str().unwrap()], &fx.dir);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`target_passrate`") && err.contains("advise.target_passrate"), "{err}");
}

#[test]
fn a_plateau_without_enough_examples_is_consider_fine_tuning() {
    let fx = Fx::new();
    let eval = cases("ev", 120, 1);
    fx.task(&format!("{BARE}{INSTRUCTED}"), 500_000, (2.5, 10.0), true, "").write("data/eval.jsonl", &jsonl(&eval)).write("data/examples.jsonl", &jsonl(&cases("ex", 30, 2)));
    fx.commit(60, "task");
    // Fragile too: the instructed prompt's repeats disagree.
    let flaky = |i: usize, rep: u32| if (i + rep as usize * 3) % 5 == 0 { Ans::Wrong } else { Ans::Pass };
    fx.run(&eval, &[("bare", &rate(4)), ("instructed", &flaky)], 3, 60);
    let (v, text) = fx.advise();
    assert_eq!(v["verdict"], "CONSIDER_FINE_TUNING", "{text}");
    assert!(v["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("30 clean examples < the typical 50")), "{}", v["reasons"]);
    assert!(steps(&v).contains("Add 4 examples for label `billing`"), "{}", steps(&v));
    assert!(v["fragility"]["flip_rate"].as_f64().unwrap() > 0.0);
    assert_eq!(v["fragility"]["groups"][1]["repeat_rates"].as_array().unwrap().len(), 3);
}

#[test]
fn weak_tag_slices_are_flagged() {
    let (fx, eval) = stable_cheap_task();
    // Phone transcripts fail a third of the time.
    let f = |i: usize, _| if i % 3 == 2 && i % 9 != 2 { Ans::Wrong } else { Ans::Pass };
    fx.run(&eval, &[("bare", &f)], 1, 40);
    let (v, _) = fx.advise();
    let weak = v["fragility"]["weak_slices"].as_array().unwrap();
    assert_eq!(weak.len(), 1, "{weak:?}");
    assert!(weak[0].as_str().unwrap().starts_with("`phone-transcript`"));
}

/// OpenAI's fine-tuning cut-off on a fixed clock (`TUNEGATE_TODAY`): before
/// it the cost section warns; after it the hosted tuned projection cannot be
/// bought and the self-hosted line (the tuned embedded model on your own
/// machines) is what pays back.
#[test]
fn the_cost_section_knows_openai_fine_tuning_ends_and_prices_self_hosting() {
    let fx = Fx::new();
    let eval = cases("ev", 150, 1);
    let prompts = format!("{BARE}{INSTRUCTED}  - id: few-shot\n    template_file: prompts/few_shot.j2\n    shots: {{ k: 60, strategy: stratified, seed: 7 }}\n");
    fx.task(&prompts, 10_000_000, (0.0, 0.0), true, "")
        .write("data/eval.jsonl", &jsonl(&eval))
        .write("data/examples.jsonl", &jsonl(&cases("ex", 400, 2)))
        .write("prompts/few_shot.j2", "Route each customer message to a team ({{ labels | join(\", \") }}).\n{% for s in shots %}\nMessage: {{ s.input }}\nTeam: {{ s.expected }}\n{% endfor %}\nMessage: {{ input }}\nTeam:");
    // The hosted provider is OpenAI's gpt-4o-mini, at the table's price.
    let yaml = std::fs::read_to_string(fx.cfg()).unwrap();
    let at = yaml.find("  - id: exec:sh model.sh").unwrap();
    let end = yaml[at..].find("data:").unwrap() + at;
    fx.write("tunegate.yaml", &format!("{}  - id: openai:gpt-4o-mini\n    label: hosted\n{}", &yaml[..at], &yaml[end..]));
    fx.commit(120, "task");
    fx.run(&eval, &[("bare", &rate(3)), ("instructed", &rate(5)), ("few-shot", &rate(8))], 1, 1800);
    let on = |day: &str| -> Value {
        let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["advise", "-c", fx.cfg().to_str().unwrap(), "--format", "json"]).current_dir(&fx.dir).env("TUNEGATE_TODAY", day).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let before = on("2026-12-04");
    let notes = before["cost"]["notes"].to_string();
    assert!(notes.contains("OpenAI stops creating fine-tuning jobs on 2027-01-06 (33 days") && notes.contains("shuts down on 2027-01-14"), "{notes}");
    assert_eq!(before["cost"]["hosted_tuning_closed"], false);
    assert_eq!(before["verdict"], "FINE_TUNE", "{}", before["summary"]);
    let sh = &before["cost"]["self_hosted"];
    assert_eq!(sh["prompt"], "bare", "{sh}");
    assert_eq!(sh["machines"], 1, "{sh}");
    assert!((sh["monthly_usd"].as_f64().unwrap() - 73.0).abs() < 1e-9, "one machine all month at $0.10/hour: {sh}");
    assert!(sh["current_monthly_usd"].as_f64().unwrap() > 1000.0, "{sh}");

    let after = on("2027-02-01");
    assert_eq!(after["cost"]["hosted_tuning_closed"], true);
    let notes = after["cost"]["notes"].to_string();
    assert!(notes.contains("cannot be bought") && notes.contains("no fine-tuning jobs since 2027-01-06") && notes.contains("axolotl"), "{notes}");
    assert!(after.to_string().contains("gpt-4o-mini was retired on 2027-01-14: its price is historic"), "the price source says so");
    assert_eq!(after["verdict"], "FINE_TUNE", "self-hosting pays back: {}", after["summary"]);
    let text = String::from_utf8_lossy(&Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["advise", "-c", fx.cfg().to_str().unwrap()]).current_dir(&fx.dir).env("TUNEGATE_TODAY", "2027-02-01").output().unwrap().stdout).to_string();
    assert!(text.contains("Self-hosted: the tuned embedded model") && text.contains("vLLM with the PEFT adapter"), "{text}");
    // Text, Markdown and JSON all render (and text keeps to 100 columns).
    let (_, text) = fx.advise();
    println!("{text}");
}
