//! The runner through its real path: task file -> plan -> provider over
//! real HTTP on 127.0.0.1 -> SQLite store -> summary.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunegate_providers::testserver::{chat_completion, Reply, TestServer};
use tunegate_run::{prepare, run, RunOptions};
use tunegate_store::{store_path_for, Store};

fn write_task(dir: &Path, base_url: &str, n_cases: usize, extra_provider: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut data = String::new();
    for i in 0..n_cases {
        let label = if i % 2 == 0 { "yes" } else { "no" };
        data.push_str(&format!("{{\"id\": \"c{i}\", \"input\": \"question {i}\", \"expected\": \"{label}\"}}\n"));
    }
    std::fs::write(dir.join("data/eval.jsonl"), data).unwrap();
    let yaml = format!(
        "version: 1\ntask:\n  name: t\n  kind: classification\n  labels: [yes, no]\nprompts:\n  - id: p\n    template: \"Q: {{{{ input }}}}\\nA:\"\nproviders:\n  - id: openai-compatible:m\n    base_url: {base_url}/v1\n    params: {{ temperature: 0 }}\n{extra_provider}data:\n  eval: data/eval.jsonl\nassert:\n  - type: label\n"
    );
    let p = dir.join("tunegate.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

fn go(cfg: &Path, tweak: impl FnOnce(&mut RunOptions)) -> tunegate_run::RunOutcome {
    let prep = prepare(tunegate_core::Task::load(cfg).unwrap()).unwrap();
    let env = |_: &str| None;
    let providers = prep.task.file.providers.iter().map(|s| (tunegate_providers::build(s, &prep.task.dir, &env).unwrap(), s.clone())).collect();
    let mut opts = RunOptions::new(store_path_for(cfg));
    opts.backoff_base = Duration::from_millis(5);
    opts.concurrency = 4;
    tweak(&mut opts);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(&prep, providers, opts, vec![])).unwrap()
}

/// Answers "yes" for even case numbers, "no" for odd, from the prompt text.
fn answer(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let text = v["messages"][0]["content"].as_str().unwrap().to_string();
    let n: usize = text.split_whitespace().nth(2).unwrap().parse().unwrap();
    if n % 2 == 0 { "yes".into() } else { "no".into() }
}

#[test]
fn cache_makes_an_unchanged_rerun_free_and_no_cache_bypasses_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(|_, r| Reply::ok(chat_completion(&answer(&r.body), 5, 1)));
    let cfg = write_task(dir.path(), &srv.url(), 10, "");
    let o1 = go(&cfg, |_| {});
    assert_eq!((o1.completed, o1.provider_calls, o1.cache_hits), (10, 10, 0));
    let o2 = go(&cfg, |_| {});
    assert_eq!((o2.completed, o2.provider_calls, o2.cache_hits), (10, 0, 10));
    assert_eq!(srv.count(), 10, "the second run must make no HTTP call");
    let o3 = go(&cfg, |o| o.use_cache = false);
    assert_eq!(o3.provider_calls, 10);
    assert_eq!(srv.count(), 20);
    // --repeat asks again per repeat index; a re-run finds them all cached.
    let o4 = go(&cfg, |o| o.repeat = 3);
    assert_eq!((o4.completed, o4.cache_hits, o4.provider_calls), (30, 10, 20));
    let o5 = go(&cfg, |o| o.repeat = 3);
    assert_eq!(o5.provider_calls, 0);
    let store = Store::open(&store_path_for(&cfg)).unwrap();
    let s = tunegate_run::summarize(&store, &o1.run_id).unwrap();
    assert_eq!((s.passed, s.failed, s.errors), (10, 0, 0));
}

#[test]
fn rate_limited_then_success_is_retried_and_honours_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(|n, r| {
        if n < 2 {
            Reply::Json(429, vec![("retry-after-ms".into(), "400".into())], r#"{"error":{"message":"rate limit"}}"#.into())
        } else {
            Reply::ok(chat_completion(&answer(&r.body), 5, 1))
        }
    });
    let cfg = write_task(dir.path(), &srv.url(), 1, "");
    let t0 = Instant::now();
    let o = go(&cfg, |_| {});
    assert!(t0.elapsed() >= Duration::from_millis(800), "two Retry-After waits of 400 ms: {:?}", t0.elapsed());
    assert_eq!((o.provider_calls, o.retries, o.errors), (3, 2, 0));
    let store = Store::open(&store_path_for(&cfg)).unwrap();
    let rows = store.results(&o.run_id, false).unwrap();
    assert_eq!(rows[0].pass, Some(true));
    assert_eq!(rows[0].attempts, 3);
}

#[test]
fn repeated_500s_end_as_a_recorded_error_not_a_model_failure() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(|_, _| Reply::status(500, "upstream exploded"));
    let cfg = write_task(dir.path(), &srv.url(), 2, "");
    let o = go(&cfg, |o| o.max_retries = 3);
    assert_eq!(srv.count(), 8, "1 attempt + 3 retries per case");
    assert_eq!(o.errors, 2);
    let store = Store::open(&store_path_for(&cfg)).unwrap();
    let s = tunegate_run::summarize(&store, &o.run_id).unwrap();
    assert_eq!((s.passed, s.failed, s.errors), (0, 0, 2));
    let rows = store.results(&o.run_id, false).unwrap();
    assert!(rows.iter().all(|r| r.pass.is_none() && r.error_kind.as_deref() == Some("server")));
    assert!(rows[0].error.as_ref().unwrap().contains("upstream exploded"));
    // Errors are not cached: a later run asks again.
    let o2 = go(&cfg, |o| o.max_retries = 0);
    assert_eq!(o2.provider_calls, 2);
}

#[test]
fn timeouts_and_malformed_bodies_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(|_, r| {
        if r.body.contains("question 0") {
            Reply::Hang(Duration::from_secs(3))
        } else {
            Reply::status(200, "<html>not json</html>")
        }
    });
    let extra = "";
    let cfg = write_task(dir.path(), &srv.url(), 2, extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replace("params: { temperature: 0 }", "params: { temperature: 0 }\n    timeout_s: 0.3");
    std::fs::write(&cfg, text).unwrap();
    let o = go(&cfg, |o| o.max_retries = 1);
    let store = Store::open(&store_path_for(&cfg)).unwrap();
    let rows = store.results(&o.run_id, false).unwrap();
    let kind = |id: &str| rows.iter().find(|r| r.case_id == id).unwrap().error_kind.clone();
    assert_eq!(kind("c0").as_deref(), Some("timeout"));
    assert_eq!(kind("c1").as_deref(), Some("bad_response"));
    // A timeout is retried, a malformed body is not.
    assert_eq!(rows.iter().find(|r| r.case_id == "c0").unwrap().attempts, 2);
    assert_eq!(rows.iter().find(|r| r.case_id == "c1").unwrap().attempts, 1);
}

#[test]
fn resume_runs_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(|_, r| {
        std::thread::sleep(Duration::from_millis(30));
        Reply::ok(chat_completion(&answer(&r.body), 5, 1))
    });
    let cfg = write_task(dir.path(), &srv.url(), 20, "");
    // Stop after a few cases, as Ctrl-C would.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prep = prepare(tunegate_core::Task::load(&cfg).unwrap()).unwrap();
    let env = |_: &str| None;
    let providers: Vec<_> = prep.task.file.providers.iter().map(|s| (tunegate_providers::build(s, &prep.task.dir, &env).unwrap(), s.clone())).collect();
    struct StopAfter(Arc<std::sync::atomic::AtomicBool>, std::sync::atomic::AtomicUsize);
    impl tunegate_run::Sink for StopAfter {
        fn on_result(&self, _: &tunegate_store::ResultRow) {
            if self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 4 {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    let mut opts = RunOptions::new(store_path_for(&cfg));
    opts.concurrency = 1;
    opts.stop = stop.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let o1 = rt.block_on(run(&prep, providers, opts, vec![Arc::new(StopAfter(stop, Default::default()))])).unwrap();
    assert!(o1.interrupted);
    let done = o1.completed;
    assert!(done >= 5 && done < 20, "{done}");
    let o2 = go(&cfg, |o| {
        o.resume = Some(o1.run_id.clone());
        o.use_cache = false;
    });
    assert_eq!(o2.run_id, o1.run_id);
    assert_eq!(o2.skipped, done);
    assert_eq!(o2.completed, 20 - done);
    assert_eq!(srv.count() as u64, 20, "nothing that had finished was asked again");
    let store = Store::open(&store_path_for(&cfg)).unwrap();
    assert_eq!(store.count_results(&o1.run_id).unwrap(), 20);
    assert_eq!(store.get_run(&o1.run_id).unwrap().status, "complete");
}
