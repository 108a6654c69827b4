//! Judging subjective outputs: blind review by a person over a pipe
//! (blinding, undo, quit, resume, kill -9), `llm-rubric` graders and
//! pairwise judges run as exec stand-ins (a sound one, one that answers
//! garbage, one that always prefers the first position), and the agreement
//! of a judge with people.

mod tui;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};

fn tg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunegate")).args(args).current_dir(cwd).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Two prompt variants on the echo provider: A's outputs say `alpha`, B's
/// say `beta`, so a reader (or a judge) can tell them apart only by content.
fn task(dir: &Path, n: usize, asserts: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let data: String = (0..n).map(|i| format!("{{\"input\": \"message {i}\", \"expected\": \"beta message {i}\"}}\n")).collect();
    std::fs::write(dir.join("data/eval.jsonl"), data).unwrap();
    let yaml = format!(
        "version: 1\ntask:\n  name: judged\n  kind: generation\nprompts:\n  - id: alpha\n    template: \"alpha {{{{ input }}}}\"\n  - id: beta\n    template: \"beta {{{{ input }}}}\"\nproviders:\n  - id: echo\ndata:\n  eval: data/eval.jsonl\n{asserts}"
    );
    std::fs::write(dir.join("tunegate.yaml"), yaml).unwrap();
    dir.join("tunegate.yaml")
}

fn eval(dir: &Path) -> String {
    let o = tg(&["eval", "--no-progress", "--format", "json"], dir);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    v["run_id"].as_str().unwrap().to_string()
}

/// Drives `tunegate review` like a person at a terminal: reads each screen
/// up to the prompt and answers from what it shows.
struct Reviewer {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
    /// What came after the last prompt, when the program ended.
    tail: String,
}

impl Reviewer {
    fn start(dir: &Path, run: &str) -> Reviewer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tunegate"))
            .args(["review", &format!("{run}:alpha@echo"), &format!("{run}:beta@echo"), "--reviewer", "tester"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Reviewer { child, stdin, out, tail: String::new() }
    }

    /// The screen up to the next `> ` prompt; None when the program ended.
    fn screen(&mut self) -> Option<String> {
        let mut buf = vec![];
        let mut byte = [0u8; 1];
        loop {
            match self.out.read(&mut byte) {
                Ok(0) | Err(_) => {
                    self.tail = String::from_utf8_lossy(&buf).to_string();
                    return None;
                }
                Ok(_) => buf.push(byte[0]),
            }
            if buf.ends_with(b"> ") {
                return Some(String::from_utf8_lossy(&buf).to_string());
            }
        }
    }

    fn answer(&mut self, s: &str) {
        writeln!(self.stdin, "{s}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn rest(mut self) -> String {
        drop(self.stdin);
        let mut s = std::mem::take(&mut self.tail);
        self.out.read_to_string(&mut s).unwrap();
        self.child.wait().unwrap();
        s
    }
}

/// Which screen position shows B's (`beta`) output.
fn beta_position(screen: &str) -> &'static str {
    let last = &screen[screen.rfind("\n[").unwrap()..];
    let one = &last[last.find("── 1 ──").unwrap()..last.find("── 2 ──").unwrap()];
    if one.contains("beta") {
        "1"
    } else {
        "2"
    }
}

fn summary(dir: &Path, run: &str) -> serde_json::Value {
    let o = tg(&["review", &format!("{run}:alpha@echo"), &format!("{run}:beta@echo"), "--summary", "--format", "json"], dir);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn blind_review_over_a_pipe_with_undo_quit_resume_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), 12, "");
    let run = eval(dir.path());

    // Session 1: prefer beta on 4 cases, with a note on one; undo the 4th
    // (answered wrongly on purpose first), then quit.
    let mut r = Reviewer::start(dir.path(), &run);
    let mut positions = vec![];
    for i in 0..4 {
        let s = r.screen().unwrap();
        assert!(s.contains(&format!("[{}/12]", i + 1)), "{s}");
        // The screen never says which run is which.
        assert!(!s.contains("alpha@echo") && !s.contains(":beta"), "{s}");
        let pos = beta_position(&s);
        positions.push(pos);
        if i == 1 {
            r.answer(&format!("{pos} clearer wording"));
        } else if i == 3 {
            r.answer(if pos == "1" { "2" } else { "1" }); // a slip ...
            let s = r.screen().unwrap();
            assert!(s.contains("[5/12]"), "{s}");
            r.answer("u"); // ... undone: the same case comes back
            let s = r.screen().unwrap();
            assert!(s.contains("undone") && s.contains("[4/12]"), "{s}");
            r.answer(beta_position(&s));
        } else {
            r.answer(pos);
        }
    }
    let _ = r.screen().unwrap();
    r.answer("q");
    let out = r.rest();
    assert!(out.contains("B wins 4") && out.contains("A wins 0"), "{out}");
    let s = summary(dir.path(), &run);
    assert_eq!(s["reviewed"], 4);
    assert_eq!(s["stats"]["b_wins"], 4);
    assert!(s["reviews"].as_array().unwrap().iter().any(|x| x["note"] == "clearer wording"));
    assert!(s["reviews"].as_array().unwrap().iter().all(|x| x["reviewer"] == "tester"));

    // Session 2 resumes at case 5; answer two, then kill -9 while the third
    // is on screen: the two answers are kept.
    let mut r = Reviewer::start(dir.path(), &run);
    for i in 4..6 {
        let s = r.screen().unwrap();
        assert!(s.contains(&format!("[{}/12]", i + 1)), "resume lost its place: {s}");
        let pos = beta_position(&s);
        positions.push(pos);
        r.answer(pos);
    }
    let _ = r.screen().unwrap();
    r.child.kill().unwrap(); // SIGKILL
    r.child.wait().unwrap();
    assert_eq!(summary(dir.path(), &run)["reviewed"], 6);

    // Session 3 over a plain pipe: tie, both bad, an unknown answer, a
    // skip, then end of input. Then everything else.
    let mut r = Reviewer::start(dir.path(), &run);
    let s = r.screen().unwrap();
    assert!(s.contains("[7/12]"), "{s}");
    r.answer("t");
    let _ = r.screen().unwrap();
    r.answer("x looks wrong in both");
    let _ = r.screen().unwrap();
    r.answer("maybe");
    let s = r.screen().unwrap();
    assert!(s.contains("not understood"), "{s}");
    r.answer("s");
    let s = r.screen().unwrap();
    assert!(s.contains("skipped"), "{s}");
    positions.push(beta_position(&s));
    r.answer(beta_position(&s));
    while let Some(s) = r.screen() {
        positions.push(beta_position(&s));
        r.answer(beta_position(&s));
    }
    let out = r.rest();
    assert!(out.contains("Every case is reviewed") || out.contains("Reviewed 11 of 12"), "{out}");
    let s = summary(dir.path(), &run);
    // The skipped case comes back in the next session, so 11 of 12.
    assert_eq!(s["reviewed"], 11, "{s}");
    assert_eq!((s["stats"]["a_wins"].as_u64(), s["stats"]["b_wins"].as_u64(), s["stats"]["ties"].as_u64(), s["stats"]["both_bad"].as_u64()), (Some(0), Some(9), Some(1), Some(1)));
    // The hidden order really varies from case to case.
    assert!(positions.contains(&"1") && positions.contains(&"2"), "{positions:?}");
    // 9 of 9 decisive: scipy binomtest p = 0.00390625; statsmodels Wilson (0.7008549515804557, 1.0).
    assert!((s["stats"]["sign_test_p"].as_f64().unwrap() - 0.00390625).abs() < 1e-12);
    assert_eq!(s["stats"]["preferred"], "B");
    assert!((s["stats"]["ci95"][0].as_f64().unwrap() - 0.7008549515804557).abs() < 1e-9, "{s}");
}

fn write_script(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(name), body).unwrap();
}

/// A grader: passes outputs that mention beta; logs every call.
const GRADER: &str = r#"import sys, re, json
p = sys.stdin.read()
open("grader.log", "a").write("x\n")
out = re.search(r"<output>\n(.*?)\n</output>", p, re.S).group(1)
ok = "beta" in out
print(json.dumps({"pass": ok, "score": 1.0 if ok else 0.0, "reason": "mentions beta" if ok else "no beta"}))
"#;

#[test]
fn llm_rubric_grades_through_the_cache_and_garbage_is_an_error_not_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    write_script(dir.path(), "grader.py", GRADER);
    task(dir.path(), 6, "assert:\n  - type: llm-rubric\n    value: The reply mentions beta.\n    provider: exec:python3 grader.py\n");
    let o = tg(&["eval", "--no-progress", "--format", "json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let run = v["run_id"].as_str().unwrap().to_string();
    let o = tg(&["show", &run, "--format", "json"], dir.path());
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let s = shown.to_string();
    assert!(s.contains("mentions beta") && s.contains("no beta"), "{s}");
    let calls = || std::fs::read_to_string(dir.path().join("grader.log")).unwrap_or_default().lines().count();
    assert_eq!(calls(), 12, "one grader call per output");
    // alpha fails the rubric, beta passes: exit 1 (failures), no errors.
    assert_eq!(o.status.code(), Some(0));
    let o = tg(&["eval", "--no-progress"], dir.path());
    let out = text(&o);
    assert!(out.contains("6/6") && out.contains("0/6"), "{out}");
    assert_eq!(calls(), 12, "the rerun graded from the cache");
    // Grader calls are accounted apart from the model's, cost included.
    assert!(out.contains("graders: 12 grades (12 from the cache) · grader calls 0 · grader cost $0") && out.contains("provider calls 0"), "{out}");

    // A grader that answers prose: every case is an error, none a pass.
    write_script(dir.path(), "grader.py", "import sys\nsys.stdin.read()\nprint('Looks good to me!')\n");
    let o = tg(&["eval", "--no-progress", "--no-cache", "--format", "json"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = v["run_id"].as_str().unwrap().to_string();
    let store = tunegate_store::Store::open(&tunegate_store::store_path_for(&dir.path().join("tunegate.yaml"))).unwrap();
    let rows = store.results(&run, false).unwrap();
    assert_eq!(rows.len(), 12);
    for r in &rows {
        assert_eq!(r.pass, None, "a garbage grade was scored: {r:?}");
        assert_eq!(r.error_kind.as_deref(), Some("grader"));
        assert!(r.error.as_deref().unwrap().contains("malformed grade"), "{:?}", r.error);
    }
    // Garbage is not cached: a fixed grader grades again.
    write_script(dir.path(), "grader.py", GRADER);
    let before = calls();
    let o = tg(&["eval", "--no-progress"], dir.path());
    assert!(text(&o).contains("6/6"));
    assert_eq!(calls(), before, "the good grades were still cached");

    // A task without a grader is refused at load, naming the field.
    task(dir.path(), 6, "assert:\n  - type: llm-rubric\n    value: The reply mentions beta.\n");
    let o = tg(&["eval", "--no-progress"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("tunegate.yaml:") && text(&o).contains("needs a `provider`"), "{}", text(&o));
    // A typo inside a grader entry names the key.
    task(dir.path(), 6, "assert:\n  - type: llm-rubric\n    value: x\n    provider: { id: \"exec:cat\", temprature: 0 }\n");
    let o = tg(&["eval", "--no-progress"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("tunegate.yaml:") && text(&o).contains("unknown field `temprature`"), "{}", text(&o));
    // The default grading prompt is visible.
    let o = tg(&["eval", "--show-grader-prompt"], dir.path());
    assert!(text(&o).contains("<rubric>") && text(&o).contains("\"pass\""), "{}", text(&o));
}

/// A judge that prefers whichever output mentions beta, wherever it is shown.
const SOUND_JUDGE: &str = r#"import sys, re, json
p = sys.stdin.read()
open("judge.log", "a").write("x\n")
a = re.search(r"<output_A>\n(.*?)\n</output_A>", p, re.S).group(1)
print(json.dumps({"winner": "A" if "beta" in a else "B", "reason": "beta"}))
"#;

fn judge(dir: &Path, run: &str, cmd: &str) -> (Option<i32>, serde_json::Value) {
    let o = tg(&["compare", &format!("{run}:alpha@echo"), &format!("{run}:beta@echo"), "--judge", cmd, "--format", "json"], dir);
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o))))
}

#[test]
fn pairwise_judge_asks_both_orders_and_position_bias_cancels_out() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), 10, "");
    let run = eval(dir.path());
    write_script(dir.path(), "judge.py", SOUND_JUDGE);
    write_script(dir.path(), "first.sh", "cat > /dev/null; echo '{\"winner\": \"A\", \"reason\": \"the first one\"}'\n");
    write_script(dir.path(), "garbage.sh", "cat > /dev/null; echo 'B is better, obviously'\n");

    let (code, r) = judge(dir.path(), &run, "exec:python3 judge.py");
    assert_eq!(code, Some(0));
    assert_eq!((r["judged"].as_u64(), r["consistent"].as_u64(), r["errors"].as_u64()), (Some(10), Some(10), Some(0)));
    assert_eq!(r["stats"]["b_wins"], 10);
    assert_eq!(r["stats"]["preferred"], "B");
    // 10 of 10: p = 2 * 0.5^10.
    assert!((r["stats"]["sign_test_p"].as_f64().unwrap() - 0.001953125).abs() < 1e-12);
    let calls = || std::fs::read_to_string(dir.path().join("judge.log")).unwrap_or_default().lines().count();
    assert_eq!(calls(), 20, "two orders per pair");
    let (_, r) = judge(dir.path(), &run, "exec:python3 judge.py");
    assert_eq!(calls(), 20, "the second judgement came from the cache");
    assert_eq!(r["calls"]["cache_hits"], 20);
    // exec providers cost $0; answers from the cache cost nothing either.
    assert_eq!(r["calls"]["cost_usd"], 0.0);

    // Always "A" (the first position): every pair is inconsistent, a tie.
    let (code, r) = judge(dir.path(), &run, "exec:sh first.sh");
    assert_eq!(code, Some(0));
    assert_eq!((r["consistent"].as_u64(), r["stats"]["ties"].as_u64(), r["stats"]["a_wins"].as_u64(), r["stats"]["b_wins"].as_u64()), (Some(0), Some(10), Some(0), Some(0)));
    assert_eq!(r["stats"]["preferred"], "neither");

    // Prose instead of a verdict: errors, exit 1, nothing counted.
    let (code, r) = judge(dir.path(), &run, "exec:sh garbage.sh");
    assert_eq!(code, Some(1));
    assert_eq!((r["errors"].as_u64(), r["judged"].as_u64()), (Some(10), Some(0)));
    assert!(r["verdicts"][0]["error"].as_str().unwrap().contains("malformed verdict"), "{r}");

    // The default prompt is visible.
    let o = tg(&["compare", "x", "y", "--show-judge-prompt"], dir.path());
    assert!(text(&o).contains("<output_A>"), "{}", text(&o));
}

#[test]
fn agreement_of_judges_with_people() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), 8, "");
    let run = eval(dir.path());
    write_script(dir.path(), "judge.py", SOUND_JUDGE);
    write_script(dir.path(), "first.sh", "cat > /dev/null; echo '{\"winner\": \"A\"}'\n");
    // A person prefers beta everywhere.
    let mut r = Reviewer::start(dir.path(), &run);
    while let Some(s) = r.screen() {
        r.answer(beta_position(&s));
    }
    r.rest();
    let agree = |judge: &str| {
        let o = tg(&["review", &format!("{run}:alpha@echo"), &format!("{run}:beta@echo"), "--agreement", "--judge", judge, "--format", "json"], dir.path());
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // No verdicts yet: a clear error.
    let o = tg(&["review", &format!("{run}:alpha@echo"), &format!("{run}:beta@echo"), "--agreement"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--judge PROVIDER"), "{}", text(&o));
    judge(dir.path(), &run, "exec:python3 judge.py");
    judge(dir.path(), &run, "exec:sh first.sh");
    let g = agree("exec:python3 judge.py");
    assert_eq!((g["agreement"]["n"].as_u64(), g["agreement"]["agree"].as_u64()), (Some(8), Some(8)));
    // statsmodels Wilson for 8 of 8: (0.6755924351161198, 1.0).
    assert!((g["agreement"]["ci95"][0].as_f64().unwrap() - 0.6755924351161198).abs() < 1e-9, "{g}");
    let g = agree("exec:sh first.sh");
    assert_eq!((g["agreement"]["n"].as_u64(), g["agreement"]["agree"].as_u64(), g["agreement"]["decisive_agree"].as_u64()), (Some(8), Some(0), Some(0)));
    // The advisor counts the reviews and verdicts as evidence.
    let o = tg(&["advise", "--format", "json"], dir.path());
    let a: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let row = a["table"].as_array().unwrap().iter().find(|r| r["row"] == "Evaluation").unwrap().to_string();
    assert!(row.contains("8 blind reviews by people") && row.contains("A 0, B 8") && row.contains("16 pairwise judge verdicts"), "{row}");
    // Text form reads as a recommendation.
    let o = tg(&["review", &format!("{run}:alpha@echo"), &format!("{run}:beta@echo"), "--agreement", "--judge", "exec:python3 judge.py"], dir.path());
    assert!(text(&o).contains("Agreement: 8 of 8"), "{}", text(&o));
}

#[test]
fn the_readme_shows_the_grading_prompt_as_it_is() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    assert!(readme.contains(tunegate_core::judge::DEFAULT_RUBRIC_PROMPT), "README.md's grading prompt differs from DEFAULT_RUBRIC_PROMPT");
}

/// Which column shows B's (`beta`) output on the side-by-side screen.
fn beta_column(t: &tui::Term) -> &'static str {
    let screen = t.contents();
    let line = screen.lines().find(|l| l.contains("beta message")).unwrap_or_else(|| panic!("no output on screen:\n{screen}"));
    let chars: Vec<char> = line.chars().collect();
    let col = chars.windows(4).position(|w| w.iter().collect::<String>() == "beta").unwrap();
    if col < (tui::COLS / 2) as usize {
        "1"
    } else {
        "2"
    }
}

#[test]
fn side_by_side_review_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), 6, "");
    let run = eval(dir.path());
    let (a, b) = (format!("{run}:alpha@echo"), format!("{run}:beta@echo"));
    let mut t = tui::Term::start(dir.path(), &["review", &a, &b, "--reviewer", "ana", "--seed", "1"]);
    t.wait_for(&["Case 1 of 6", "(line 1)", " 1 ", " 2 ", "1 / 2 better"]);
    assert!(!t.contents().contains("alpha@echo") && !t.contents().contains("beta@echo"), "the sides are named on screen");
    let mut cols = vec![];
    // A note, then the verdict it goes with.
    t.keys("n");
    t.wait_for(&["note:"]);
    t.keys("clearer\r");
    let c = beta_column(&t);
    cols.push(c);
    t.keys(c);
    t.wait_for(&["(line 2)", "Case 2 of 6"]);
    // A slip, undone.
    let c = beta_column(&t);
    cols.push(c);
    t.keys(if c == "1" { "2" } else { "1" });
    t.wait_for(&["(line 3)"]);
    t.keys("u");
    t.wait_for(&["(line 2)", "undone"]);
    t.keys(c);
    t.wait_for(&["(line 3)", "Case 3 of 6"]);
    // Skip line 3, answer the rest.
    t.keys("s");
    t.wait_for(&["(line 4)", "skipped"]);
    for line in 4..=6 {
        let c = beta_column(&t);
        cols.push(c);
        t.keys(c);
        if line < 6 {
            t.wait_for(&[&format!("(line {})", line + 1)]);
        }
    }
    t.wait_for(&["Done", "reviewed 5 of 6"]);
    t.keys("q");
    t.wait_exit();
    assert!(cols.contains(&"1") && cols.contains(&"2"), "the order never changed: {cols:?}");
    let s = summary(dir.path(), &run);
    assert_eq!(s["reviewed"], 5);
    assert_eq!((s["stats"]["b_wins"].as_u64(), s["stats"]["a_wins"].as_u64()), (Some(5), Some(0)), "{s}");
    assert!(s["reviews"].as_array().unwrap().iter().any(|r| r["note"] == "clearer" && r["reviewer"] == "ana"), "{s}");
}

#[test]
fn review_over_a_pipe_with_json_keeps_stdout_for_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    task(dir.path(), 4, "");
    let run = eval(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunegate"))
        .args(["review", &format!("{run}:alpha@echo"), &format!("{run}:beta@echo"), "--format", "json"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"1\nt\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("stdout is not JSON: {}", text(&o)));
    assert_eq!(v["reviewed"], 2);
    assert_eq!(v["stats"]["ties"], 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("[2/4]"));
    // A run that does not exist: exit 2, named.
    let o = tg(&["review", "nope", &format!("{run}:beta@echo")], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("nope"), "{}", text(&o));
    // The same side twice is refused.
    let o = tg(&["review", &format!("{run}:beta@echo"), &format!("{run}:beta@echo")], dir.path());
    assert_eq!(o.status.code(), Some(2));
    // A whole run with two groups must be narrowed.
    let o = tg(&["review", &run, &run], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("prompt@provider groups"), "{}", text(&o));
}

#[test]
fn an_http_grader_is_retried_priced_and_its_key_stays_out_of_the_store() {
    use tunegate_providers::testserver::{chat_completion, Reply, TestServer};
    let key = "sk-grader-7c1e55";
    // Every first attempt fails with 503; the retry gets a grade.
    let srv = TestServer::start(|n, _| if n % 2 == 0 { Reply::status(503, r#"{"error":{"message":"busy"}}"#) } else { Reply::ok(chat_completion(r#"{"pass": true, "score": 0.75, "reason": "fine"}"#, 100, 10)) });
    let dir = tempfile::tempdir().unwrap();
    let grader = format!("{{ id: \"openai-compatible:judge\", base_url: \"{}/v1\", api_key_env: GRADER_KEY, price: {{ input_per_mtok: 2, output_per_mtok: 4 }} }}", srv.url());
    task(dir.path(), 2, &format!("assert:\n  - type: llm-rubric\n    value: Anything.\n    provider: {grader}\n"));
    let yaml = std::fs::read_to_string(dir.path().join("tunegate.yaml")).unwrap().replace("  - id: beta\n    template: \"beta {{ input }}\"\n", "");
    std::fs::write(dir.path().join("tunegate.yaml"), yaml).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tunegate")).args(["eval", "--no-progress", "--concurrency", "1", "--format", "json"]).current_dir(dir.path()).env("GRADER_KEY", key).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let g = &v["summary"]["groups"][0]["graders"];
    assert_eq!((g["grades"].as_u64(), g["prompt_tokens"].as_u64(), g["completion_tokens"].as_u64()), (Some(2), Some(200), Some(20)), "{v}");
    // 2 x (100 x $2 + 10 x $4) per million tokens.
    assert!((g["cost_usd"].as_f64().unwrap() - 0.00048).abs() < 1e-12, "{g}");
    assert_eq!(srv.requests.lock().unwrap().len(), 4, "one retry per grade");
    let run = v["run_id"].as_str().unwrap();
    let store = tunegate_store::Store::open(&tunegate_store::store_path_for(&dir.path().join("tunegate.yaml"))).unwrap();
    for r in store.results(run, true).unwrap() {
        assert_eq!(r.assertions[0]["detail"]["attempts"], 2);
        assert!((r.score.unwrap() - 0.75).abs() < 1e-12);
        assert!(!serde_json::to_string(&r).unwrap().contains(key));
    }
    assert!(srv.requests.lock().unwrap().iter().all(|r| r.header("authorization") == Some(&format!("Bearer {key}"))));
    let db = std::fs::read(tunegate_store::store_path_for(&dir.path().join("tunegate.yaml"))).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(key), "the key reached the store file");
}
