//! The run store: one SQLite file (`.tunegate/tunegate.db` beside the task
//! file) holding runs, per-case results, the response cache and task
//! revisions. Reports, the advisor and compare read only from here, so a
//! result exists exactly when it is in this file.
//!
//! It runs in WAL mode with `synchronous=NORMAL`: each committed result
//! survives a killed process (kill -9), which is what `eval --resume` needs,
//! without an fsync per row.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("run store {path}: written by a newer tunegate (schema {found}, this one knows {known}); upgrade tunegate")]
    TooNew { path: PathBuf, found: i64, known: i64 },
    #[error("no run `{0}` in the store (see `tunegate runs`)")]
    NoRun(String),
    #[error("`{0}` matches several runs; give more of the id (see `tunegate runs`)")]
    Ambiguous(String),
    /// A run selector that is not one: `latest~x`, `latest~`, an empty id.
    #[error("`{0}` is not a run: use a run id (or its start), `latest`, or `latest~N` with N a whole number of runs back (see `tunegate runs`)")]
    BadSelector(String),
    #[error("cannot create {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE runs(
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'eval',
        task_name TEXT NOT NULL,
        task_path TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        repeat INTEGER NOT NULL,
        planned INTEGER NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE results(
        run_id TEXT NOT NULL REFERENCES runs(id),
        prompt_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        case_id TEXT NOT NULL,
        repeat INTEGER NOT NULL,
        case_line INTEGER NOT NULL,
        input TEXT NOT NULL,
        vars TEXT NOT NULL,
        expected TEXT,
        tags TEXT NOT NULL,
        messages TEXT NOT NULL,
        output TEXT,
        error TEXT,
        error_kind TEXT,
        pass INTEGER,
        score REAL,
        assertions TEXT NOT NULL,
        latency_ms REAL NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost_usd REAL,
        cached INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY(run_id, prompt_id, provider, case_id, repeat)
    );
    CREATE TABLE cache(
        key TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        output TEXT NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost_usd REAL,
        latency_ms REAL NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE revisions(
        id INTEGER PRIMARY KEY,
        recorded_at TEXT NOT NULL,
        run_id TEXT,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX revisions_kind_name ON revisions(kind, name, recorded_at);",
    // 2: fine-tuning jobs, so a job survives a crash or a lost connection.
    "CREATE TABLE tune_jobs(
        id TEXT PRIMARY KEY,
        backend TEXT NOT NULL,
        task_name TEXT NOT NULL,
        base_url TEXT,
        api_key_env TEXT,
        base_model TEXT NOT NULL,
        status TEXT NOT NULL,
        fine_tuned_model TEXT,
        data_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}'
    );",
    // 3: blind reviews by people and pairwise verdicts by judge models.
    // A session fixes the two sides and the seed of the hidden order; each
    // review keeps which run was shown first, so scoring and resume are exact.
    "CREATE TABLE review_sessions(
        id TEXT PRIMARY KEY,
        side_a TEXT NOT NULL,
        side_b TEXT NOT NULL,
        seed INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX review_sessions_sides ON review_sessions(side_a, side_b);
    CREATE TABLE reviews(
        session_id TEXT NOT NULL REFERENCES review_sessions(id),
        case_id TEXT NOT NULL,
        a_first INTEGER NOT NULL,
        choice TEXT NOT NULL,
        verdict TEXT NOT NULL,
        note TEXT,
        reviewer TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY(session_id, case_id)
    );
    CREATE TABLE judge_verdicts(
        id INTEGER PRIMARY KEY,
        side_a TEXT NOT NULL,
        side_b TEXT NOT NULL,
        case_id TEXT NOT NULL,
        judge TEXT NOT NULL,
        verdict TEXT,
        first_order TEXT,
        second_order TEXT,
        error TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX judge_verdicts_sides ON judge_verdicts(side_a, side_b, judge);",
    // 4: a local job's adapter directory as its own column. Earlier versions
    // wrote it into fine_tuned_model as `BASE+adapter:DIR`; those records
    // are moved over once, and the model is named `BASE:JOB` as new ones are.
    "ALTER TABLE tune_jobs ADD COLUMN adapter TEXT;
    UPDATE tune_jobs
       SET adapter = substr(fine_tuned_model, instr(fine_tuned_model, '+adapter:') + 9),
           fine_tuned_model = substr(fine_tuned_model, 1, instr(fine_tuned_model, '+adapter:') - 1) || ':' || id
     WHERE backend = 'local' AND instr(fine_tuned_model, '+adapter:') > 0;",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// `running`, `complete` or `interrupted`.
    pub status: String,
    pub kind: String,
    pub task_name: String,
    pub task_path: String,
    pub config_hash: String,
    pub repeat: u32,
    pub planned: u64,
    pub meta: Value,
}

/// One evaluated (prompt, provider, case, repeat).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ResultRow {
    pub run_id: String,
    pub prompt_id: String,
    pub provider: String,
    pub case_id: String,
    pub repeat: u32,
    pub case_line: u64,
    pub input: String,
    pub vars: Value,
    pub expected: Option<Value>,
    pub tags: Vec<String>,
    pub messages: Value,
    pub output: Option<String>,
    /// A provider error: the case was not scored and never counts as a
    /// model failure.
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub pass: Option<bool>,
    pub score: Option<f64>,
    pub assertions: Value,
    pub latency_ms: f64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub cached: bool,
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedResponse {
    pub output: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionRow {
    pub recorded_at: String,
    pub run_id: Option<String>,
    pub kind: String,
    pub name: String,
    pub hash: String,
}

/// A fine-tuning job, local or remote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TuneJob {
    pub id: String,
    pub backend: String,
    pub task_name: String,
    pub base_url: Option<String>,
    /// The name of the variable holding the key, never the key.
    pub api_key_env: Option<String>,
    pub base_model: String,
    pub status: String,
    pub fine_tuned_model: Option<String>,
    /// A local job's LoRA adapter directory (PEFT layout), once trained.
    pub adapter: Option<std::path::PathBuf>,
    pub data_hash: String,
    pub created_at: String,
    pub updated_at: String,
    pub meta: Value,
}

/// A blind review session between two sides (`RUN:prompt@provider`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReviewSession {
    pub id: String,
    pub side_a: String,
    pub side_b: String,
    /// Seeds the hidden order of the two outputs, case by case.
    pub seed: u64,
    pub created_at: String,
}

/// One person's verdict on one case: what they pressed (`first`, `second`,
/// `tie`, `both_bad`), which run was shown first, and the unblinded verdict
/// (`a`, `b`, `tie`, `both_bad`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReviewRow {
    pub session_id: String,
    pub case_id: String,
    pub a_first: bool,
    pub choice: String,
    pub verdict: String,
    pub note: Option<String>,
    pub reviewer: String,
    pub created_at: String,
}

/// A judge model's verdict on one pair, asked in both orders: `verdict` is
/// `a`, `b` or `tie` (inconsistent orders are a tie), None with `error`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JudgeVerdictRow {
    pub side_a: String,
    pub side_b: String,
    pub case_id: String,
    pub judge: String,
    pub verdict: Option<String>,
    /// The parsed answers with A shown first, and with B shown first.
    pub first_order: Option<String>,
    pub second_order: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The store path for a task file: `.tunegate/tunegate.db` beside it.
pub fn store_path_for(task_file: &Path) -> PathBuf {
    let dir = task_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(".tunegate").join("tunegate.db")
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
            }
        }
        let conn = Connection::open(path).map_err(|e| StoreError::Sqlite { path: path.into(), source: e })?;
        let mut s = Store { conn, path: path.to_path_buf() };
        s.init()?;
        Ok(s)
    }

    fn sql<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.map_err(|e| StoreError::Sqlite { path: self.path.clone(), source: e })
    }

    fn init(&mut self) -> Result<()> {
        let r = self.conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA cache_size=-16384;");
        self.sql(r)?;
        let r = self.conn.busy_timeout(std::time::Duration::from_secs(10));
        self.sql(r)?;
        let r = self.conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
        let version = self.sql(r)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew { path: self.path.clone(), found: version, known });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(|e| StoreError::Sqlite { path: self.path.clone(), source: e })?;
            let r = tx.execute_batch(m).and_then(|_| tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))).and_then(|_| tx.commit());
            self.sql(r)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<i64> {
        let r = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0));
        self.sql(r)
    }

    /// A new run id: sortable by time, unique enough for one machine.
    pub fn new_run_id() -> String {
        let t = chrono::Utc::now().format("%Y%m%d-%H%M%S");
        format!("{t}-{:04x}", rand::random::<u16>())
    }

    pub fn create_run(&self, run: &RunInfo) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO runs(id, created_at, finished_at, status, kind, task_name, task_path, config_hash, repeat, planned, meta)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![run.id, run.created_at, run.finished_at, run.status, run.kind, run.task_name, run.task_path, run.config_hash, run.repeat, run.planned as i64, run.meta.to_string()],
        );
        self.sql(r).map(|_| ())
    }

    pub fn set_run_status(&self, id: &str, status: &str) -> Result<()> {
        let fin = if status == "running" { None } else { Some(now()) };
        let r = self.conn.execute("UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1", params![id, status, fin]);
        self.sql(r).map(|_| ())
    }

    /// The prompt lab grows one run round by round.
    pub fn set_run_planned(&self, id: &str, planned: u64) -> Result<()> {
        let r = self.conn.execute("UPDATE runs SET planned = ?2 WHERE id = ?1", params![id, planned as i64]);
        self.sql(r).map(|_| ())
    }

    pub fn set_run_meta(&self, id: &str, meta: &Value) -> Result<()> {
        let r = self.conn.execute("UPDATE runs SET meta = ?2 WHERE id = ?1", params![id, meta.to_string()]);
        self.sql(r).map(|_| ())
    }

    fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<RunInfo> {
        let meta: String = r.get(10)?;
        Ok(RunInfo {
            id: r.get(0)?,
            created_at: r.get(1)?,
            finished_at: r.get(2)?,
            status: r.get(3)?,
            kind: r.get(4)?,
            task_name: r.get(5)?,
            task_path: r.get(6)?,
            config_hash: r.get(7)?,
            repeat: r.get(8)?,
            planned: r.get::<_, i64>(9)? as u64,
            meta: serde_json::from_str(&meta).unwrap_or(Value::Null),
        })
    }

    const RUN_COLS: &'static str = "id, created_at, finished_at, status, kind, task_name, task_path, config_hash, repeat, planned, meta";

    pub fn get_run(&self, id: &str) -> Result<RunInfo> {
        let r = self.conn.query_row(&format!("SELECT {} FROM runs WHERE id = ?1", Self::RUN_COLS), [id], Self::run_from_row).optional();
        self.sql(r)?.ok_or_else(|| StoreError::NoRun(id.to_string()))
    }

    /// Runs, newest first.
    pub fn list_runs(&self, limit: usize) -> Result<Vec<RunInfo>> {
        let mut st = self.sql(self.conn.prepare(&format!("SELECT {} FROM runs ORDER BY created_at DESC, id DESC LIMIT ?1", Self::RUN_COLS)))?;
        let rows = st.query_map([limit as i64], Self::run_from_row).and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>());
        self.sql(rows)
    }

    /// Resolves `latest`, `latest~N` (N runs before the latest) or a unique
    /// id prefix to a run. Anything else that starts `latest~`, and an empty
    /// selector (a prefix of every id), is refused rather than read as
    /// `latest`.
    pub fn resolve_run(&self, sel: &str) -> Result<RunInfo> {
        let bad = || StoreError::BadSelector(sel.to_string());
        if sel.trim().is_empty() {
            return Err(bad());
        }
        if sel == "latest" || sel.starts_with("latest~") {
            // `latest~N`: N digits only (no sign, no space), small enough to be a count.
            let back: usize = match sel.strip_prefix("latest~") {
                None => 0,
                Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().map_err(|_| bad())?,
                Some(_) => return Err(bad()),
            };
            let runs = self.list_runs(back.saturating_add(1))?;
            return runs.into_iter().nth(back).ok_or_else(|| StoreError::NoRun(sel.to_string()));
        }
        if let Ok(r) = self.get_run(sel) {
            return Ok(r);
        }
        let mut st = self.sql(self.conn.prepare(&format!("SELECT {} FROM runs WHERE id LIKE ?1 || '%' LIMIT 2", Self::RUN_COLS)))?;
        let rows = self.sql(st.query_map([sel], Self::run_from_row).and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>()))?;
        match rows.len() {
            1 => Ok(rows.into_iter().next().unwrap()),
            0 => Err(StoreError::NoRun(sel.to_string())),
            _ => Err(StoreError::Ambiguous(sel.to_string())),
        }
    }

    /// Writes results (and their cache entries) in one transaction: a batch
    /// is either all in the store or none of it.
    pub fn insert_results(&mut self, rows: &[ResultRow], cache: &[(String, String, CachedResponse)]) -> Result<()> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO results(run_id, prompt_id, provider, case_id, repeat, case_line, input, vars, expected, tags, messages,
                     output, error, error_kind, pass, score, assertions, latency_ms, prompt_tokens, completion_tokens, cost_usd, cached, attempts, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
                )
                .map_err(e)?;
            let ts = now();
            for r in rows {
                st.execute(params![
                    r.run_id,
                    r.prompt_id,
                    r.provider,
                    r.case_id,
                    r.repeat,
                    r.case_line as i64,
                    r.input,
                    r.vars.to_string(),
                    r.expected.as_ref().map(|v| v.to_string()),
                    serde_json::to_string(&r.tags).unwrap_or_default(),
                    r.messages.to_string(),
                    r.output,
                    r.error,
                    r.error_kind,
                    r.pass,
                    r.score,
                    r.assertions.to_string(),
                    r.latency_ms,
                    r.prompt_tokens.map(|x| x as i64),
                    r.completion_tokens.map(|x| x as i64),
                    r.cost_usd,
                    r.cached,
                    r.attempts,
                    ts,
                ])
                .map_err(e)?;
            }
            let mut cst = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO cache(key, provider, output, prompt_tokens, completion_tokens, cost_usd, latency_ms, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(e)?;
            for (key, provider, c) in cache {
                cst.execute(params![key, provider, c.output, c.prompt_tokens.map(|x| x as i64), c.completion_tokens.map(|x| x as i64), c.cost_usd, c.latency_ms, ts])
                    .map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    pub fn cache_get(&self, key: &str) -> Result<Option<CachedResponse>> {
        let mut st = self.sql(self.conn.prepare_cached("SELECT output, prompt_tokens, completion_tokens, cost_usd, latency_ms FROM cache WHERE key = ?1"))?;
        let r = st
            .query_row([key], |r| {
                Ok(CachedResponse {
                    output: r.get(0)?,
                    prompt_tokens: r.get::<_, Option<i64>>(1)?.map(|x| x as u64),
                    completion_tokens: r.get::<_, Option<i64>>(2)?.map(|x| x as u64),
                    cost_usd: r.get(3)?,
                    latency_ms: r.get(4)?,
                })
            })
            .optional();
        self.sql(r)
    }

    pub fn cache_len(&self) -> Result<u64> {
        let r = self.conn.query_row("SELECT COUNT(*) FROM cache", [], |r| r.get::<_, i64>(0));
        self.sql(r).map(|n| n as u64)
    }

    /// The (prompt, provider, case, repeat) keys a run already holds; resume
    /// skips exactly these.
    pub fn completed_keys(&self, run_id: &str) -> Result<HashSet<(String, String, String, u32)>> {
        let mut st = self.sql(self.conn.prepare("SELECT prompt_id, provider, case_id, repeat FROM results WHERE run_id = ?1"))?;
        let rows = st.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).and_then(|it| it.collect::<rusqlite::Result<HashSet<_>>>());
        self.sql(rows)
    }

    pub fn count_results(&self, run_id: &str) -> Result<u64> {
        let r = self.conn.query_row("SELECT COUNT(*) FROM results WHERE run_id = ?1", [run_id], |r| r.get::<_, i64>(0));
        self.sql(r).map(|n| n as u64)
    }

    /// Streams a run's results in (prompt, provider, case line, repeat)
    /// order without holding them all in memory. `messages` are read only
    /// when asked for: they are the bulk of a row.
    pub fn for_each_result(&self, run_id: &str, with_messages: bool, mut f: impl FnMut(ResultRow)) -> Result<()> {
        let cols = if with_messages { "messages" } else { "'null'" };
        let sql = format!(
            "SELECT run_id, prompt_id, provider, case_id, repeat, case_line, input, vars, expected, tags, {cols}, output, error, error_kind,
             pass, score, assertions, latency_ms, prompt_tokens, completion_tokens, cost_usd, cached, attempts
             FROM results WHERE run_id = ?1 ORDER BY rowid"
        );
        let mut st = self.sql(self.conn.prepare(&sql))?;
        let mut rows = self.sql(st.query([run_id]))?;
        let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str::<Value>(&s).ok());
        loop {
            let row = match rows.next() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Err(StoreError::Sqlite { path: self.path.clone(), source: e }),
            };
            let get = || -> rusqlite::Result<ResultRow> {
                Ok(ResultRow {
                    run_id: row.get(0)?,
                    prompt_id: row.get(1)?,
                    provider: row.get(2)?,
                    case_id: row.get(3)?,
                    repeat: row.get(4)?,
                    case_line: row.get::<_, i64>(5)? as u64,
                    input: row.get(6)?,
                    vars: parse(row.get(7)?).unwrap_or(Value::Null),
                    expected: parse(row.get(8)?),
                    tags: parse(row.get(9)?).and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default(),
                    messages: parse(row.get(10)?).unwrap_or(Value::Null),
                    output: row.get(11)?,
                    error: row.get(12)?,
                    error_kind: row.get(13)?,
                    pass: row.get(14)?,
                    score: row.get(15)?,
                    assertions: parse(row.get(16)?).unwrap_or(Value::Null),
                    latency_ms: row.get(17)?,
                    prompt_tokens: row.get::<_, Option<i64>>(18)?.map(|x| x as u64),
                    completion_tokens: row.get::<_, Option<i64>>(19)?.map(|x| x as u64),
                    cost_usd: row.get(20)?,
                    cached: row.get(21)?,
                    attempts: row.get(22)?,
                })
            };
            f(self.sql(get())?);
        }
        Ok(())
    }

    pub fn results(&self, run_id: &str, with_messages: bool) -> Result<Vec<ResultRow>> {
        let mut v = vec![];
        self.for_each_result(run_id, with_messages, |r| v.push(r))?;
        Ok(v)
    }

    pub fn record_revisions(&mut self, run_id: Option<&str>, revs: &[(String, String, String)]) -> Result<()> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(e)?;
        let ts = now();
        for (kind, name, hash) in revs {
            tx.execute("INSERT INTO revisions(recorded_at, run_id, kind, name, hash) VALUES (?1, ?2, ?3, ?4, ?5)", params![ts, run_id, kind, name, hash]).map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    pub fn insert_tune_job(&self, j: &TuneJob) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO tune_jobs(id, backend, task_name, base_url, api_key_env, base_model, status, fine_tuned_model, data_hash, created_at, updated_at, meta, adapter)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![j.id, j.backend, j.task_name, j.base_url, j.api_key_env, j.base_model, j.status, j.fine_tuned_model, j.data_hash, j.created_at, j.updated_at, j.meta.to_string(), j.adapter.as_ref().map(|a| a.to_string_lossy().to_string())],
        );
        self.sql(r).map(|_| ())
    }

    pub fn update_tune_job(&self, id: &str, status: &str, fine_tuned_model: Option<&str>) -> Result<()> {
        let r = self.conn.execute(
            "UPDATE tune_jobs SET status = ?2, fine_tuned_model = COALESCE(?3, fine_tuned_model), updated_at = ?4 WHERE id = ?1",
            params![id, status, fine_tuned_model, now()],
        );
        self.sql(r).map(|_| ())
    }

    /// Records a local job's adapter directory.
    pub fn set_tune_job_adapter(&self, id: &str, dir: &std::path::Path) -> Result<()> {
        let r = self.conn.execute("UPDATE tune_jobs SET adapter = ?2, updated_at = ?3 WHERE id = ?1", params![id, dir.to_string_lossy().to_string(), now()]);
        self.sql(r).map(|_| ())
    }

    pub fn set_tune_job_meta(&self, id: &str, meta: &Value) -> Result<()> {
        let r = self.conn.execute("UPDATE tune_jobs SET meta = ?2, updated_at = ?3 WHERE id = ?1", params![id, meta.to_string(), now()]);
        self.sql(r).map(|_| ())
    }

    const JOB_COLS: &'static str = "id, backend, task_name, base_url, api_key_env, base_model, status, fine_tuned_model, data_hash, created_at, updated_at, meta, adapter";

    fn job_from_row(r: &rusqlite::Row) -> rusqlite::Result<TuneJob> {
        let meta: String = r.get(11)?;
        Ok(TuneJob {
            id: r.get(0)?,
            backend: r.get(1)?,
            task_name: r.get(2)?,
            base_url: r.get(3)?,
            api_key_env: r.get(4)?,
            base_model: r.get(5)?,
            status: r.get(6)?,
            fine_tuned_model: r.get(7)?,
            data_hash: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
            meta: serde_json::from_str(&meta).unwrap_or(Value::Null),
            adapter: r.get::<_, Option<String>>(12)?.map(std::path::PathBuf::from),
        })
    }

    /// A job by its id or by the model it produced.
    pub fn get_tune_job(&self, id_or_model: &str) -> Result<Option<TuneJob>> {
        let r = self
            .conn
            .query_row(&format!("SELECT {} FROM tune_jobs WHERE id = ?1 OR fine_tuned_model = ?1 ORDER BY created_at DESC LIMIT 1", Self::JOB_COLS), [id_or_model], Self::job_from_row)
            .optional();
        self.sql(r)
    }

    pub fn list_tune_jobs(&self) -> Result<Vec<TuneJob>> {
        let mut st = self.sql(self.conn.prepare(&format!("SELECT {} FROM tune_jobs ORDER BY created_at DESC", Self::JOB_COLS)))?;
        let rows = st.query_map([], Self::job_from_row).and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>());
        self.sql(rows)
    }

    /// The latest review session between these two sides, if any.
    pub fn review_session(&self, side_a: &str, side_b: &str) -> Result<Option<ReviewSession>> {
        let r = self
            .conn
            .query_row(
                "SELECT id, side_a, side_b, seed, created_at FROM review_sessions WHERE side_a = ?1 AND side_b = ?2 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                [side_a, side_b],
                |r| Ok(ReviewSession { id: r.get(0)?, side_a: r.get(1)?, side_b: r.get(2)?, seed: r.get::<_, i64>(3)? as u64, created_at: r.get(4)? }),
            )
            .optional();
        self.sql(r)
    }

    pub fn create_review_session(&self, s: &ReviewSession) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO review_sessions(id, side_a, side_b, seed, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.id, s.side_a, s.side_b, s.seed as i64, s.created_at],
        );
        self.sql(r).map(|_| ())
    }

    /// Records (or replaces) a review; committed before this returns, so a
    /// killed session loses nothing that was answered.
    pub fn upsert_review(&self, r: &ReviewRow) -> Result<()> {
        let x = self.conn.execute(
            "INSERT OR REPLACE INTO reviews(session_id, case_id, a_first, choice, verdict, note, reviewer, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![r.session_id, r.case_id, r.a_first, r.choice, r.verdict, r.note, r.reviewer, r.created_at],
        );
        self.sql(x).map(|_| ())
    }

    pub fn delete_review(&self, session_id: &str, case_id: &str) -> Result<()> {
        let r = self.conn.execute("DELETE FROM reviews WHERE session_id = ?1 AND case_id = ?2", params![session_id, case_id]);
        self.sql(r).map(|_| ())
    }

    /// A session's reviews in the order they were given.
    pub fn reviews(&self, session_id: &str) -> Result<Vec<ReviewRow>> {
        let mut st = self.sql(self.conn.prepare("SELECT session_id, case_id, a_first, choice, verdict, note, reviewer, created_at FROM reviews WHERE session_id = ?1 ORDER BY created_at, rowid"))?;
        let rows = st
            .query_map([session_id], |r| {
                Ok(ReviewRow { session_id: r.get(0)?, case_id: r.get(1)?, a_first: r.get(2)?, choice: r.get(3)?, verdict: r.get(4)?, note: r.get(5)?, reviewer: r.get(6)?, created_at: r.get(7)? })
            })
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>());
        self.sql(rows)
    }

    pub fn insert_judge_verdicts(&mut self, rows: &[JudgeVerdictRow]) -> Result<()> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(e)?;
        for r in rows {
            tx.execute(
                "INSERT INTO judge_verdicts(side_a, side_b, case_id, judge, verdict, first_order, second_order, error, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![r.side_a, r.side_b, r.case_id, r.judge, r.verdict, r.first_order, r.second_order, r.error, r.created_at],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// Judge verdicts between two sides, oldest first (a later verdict on
    /// the same case and judge supersedes an earlier one).
    pub fn judge_verdicts(&self, side_a: &str, side_b: &str) -> Result<Vec<JudgeVerdictRow>> {
        let mut st = self.sql(self.conn.prepare(
            "SELECT side_a, side_b, case_id, judge, verdict, first_order, second_order, error, created_at FROM judge_verdicts WHERE side_a = ?1 AND side_b = ?2 ORDER BY id",
        ))?;
        let rows = st
            .query_map([side_a, side_b], |r| {
                Ok(JudgeVerdictRow {
                    side_a: r.get(0)?,
                    side_b: r.get(1)?,
                    case_id: r.get(2)?,
                    judge: r.get(3)?,
                    verdict: r.get(4)?,
                    first_order: r.get(5)?,
                    second_order: r.get(6)?,
                    error: r.get(7)?,
                    created_at: r.get(8)?,
                })
            })
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>());
        self.sql(rows)
    }

    /// The newest review session that holds at least one review.
    pub fn latest_review_session(&self) -> Result<Option<ReviewSession>> {
        let r = self
            .conn
            .query_row(
                "SELECT s.id, s.side_a, s.side_b, s.seed, s.created_at FROM review_sessions s WHERE EXISTS (SELECT 1 FROM reviews r WHERE r.session_id = s.id) ORDER BY s.created_at DESC, s.rowid DESC LIMIT 1",
                [],
                |r| Ok(ReviewSession { id: r.get(0)?, side_a: r.get(1)?, side_b: r.get(2)?, seed: r.get::<_, i64>(3)? as u64, created_at: r.get(4)? }),
            )
            .optional();
        self.sql(r)
    }

    pub fn judge_verdict_count(&self) -> Result<u64> {
        let r = self.conn.query_row("SELECT COUNT(*) FROM judge_verdicts WHERE verdict IS NOT NULL", [], |r| r.get::<_, i64>(0));
        self.sql(r).map(|n| n as u64)
    }

    /// Every review in the store: the advisor's evidence that people have
    /// judged outputs.
    pub fn review_count(&self) -> Result<u64> {
        let r = self.conn.query_row("SELECT COUNT(*) FROM reviews", [], |r| r.get::<_, i64>(0));
        self.sql(r).map(|n| n as u64)
    }

    pub fn revisions(&self) -> Result<Vec<RevisionRow>> {
        let mut st = self.sql(self.conn.prepare("SELECT recorded_at, run_id, kind, name, hash FROM revisions ORDER BY id"))?;
        let rows = st
            .query_map([], |r| Ok(RevisionRow { recorded_at: r.get(0)?, run_id: r.get(1)?, kind: r.get(2)?, name: r.get(3)?, hash: r.get(4)? }))
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>());
        self.sql(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> RunInfo {
        RunInfo {
            id: id.into(),
            created_at: now(),
            finished_at: None,
            status: "running".into(),
            kind: "eval".into(),
            task_name: "t".into(),
            task_path: "t.yaml".into(),
            config_hash: "h".into(),
            repeat: 1,
            planned: 2,
            meta: serde_json::json!({}),
        }
    }

    #[test]
    fn migrations_results_cache_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".tunegate/tunegate.db");
        let mut s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.create_run(&run("r1")).unwrap();
        let row = ResultRow { run_id: "r1".into(), prompt_id: "p".into(), provider: "echo".into(), case_id: "c1".into(), output: Some("x".into()), pass: Some(true), ..Default::default() };
        let c = CachedResponse { output: "x".into(), prompt_tokens: Some(3), completion_tokens: Some(1), cost_usd: None, latency_ms: 1.5 };
        s.insert_results(&[row], &[("k1".into(), "echo".into(), c.clone())]).unwrap();
        assert_eq!(s.cache_get("k1").unwrap(), Some(c));
        assert_eq!(s.count_results("r1").unwrap(), 1);
        assert!(s.completed_keys("r1").unwrap().contains(&("p".into(), "echo".into(), "c1".into(), 0)));
        drop(s);
        // Reopening applies no migration twice.
        let s = Store::open(&p).unwrap();
        assert_eq!(s.resolve_run("latest").unwrap().id, "r1");
        assert_eq!(s.resolve_run("r").unwrap().id, "r1");
        assert!(matches!(s.resolve_run("zzz"), Err(StoreError::NoRun(_))));
    }

    #[test]
    fn reviews_and_judge_verdicts_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("t.db")).unwrap();
        let sess = ReviewSession { id: "s1".into(), side_a: "r1:p@x".into(), side_b: "r2:p@x".into(), seed: u64::MAX - 3, created_at: now() };
        s.create_review_session(&sess).unwrap();
        assert_eq!(s.review_session("r1:p@x", "r2:p@x").unwrap(), Some(sess.clone()));
        assert_eq!(s.review_session("r2:p@x", "r1:p@x").unwrap(), None);
        let row = |c: &str, v: &str| ReviewRow { session_id: "s1".into(), case_id: c.into(), a_first: true, choice: "first".into(), verdict: v.into(), note: None, reviewer: "me".into(), created_at: now() };
        s.upsert_review(&row("c1", "a")).unwrap();
        s.upsert_review(&row("c2", "b")).unwrap();
        s.upsert_review(&row("c1", "tie")).unwrap();
        let rs = s.reviews("s1").unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs.iter().find(|r| r.case_id == "c1").unwrap().verdict, "tie");
        s.delete_review("s1", "c2").unwrap();
        assert_eq!(s.review_count().unwrap(), 1);
        let j = JudgeVerdictRow { side_a: "r1:p@x".into(), side_b: "r2:p@x".into(), case_id: "c1".into(), judge: "j".into(), verdict: Some("tie".into()), first_order: Some("A".into()), second_order: Some("A".into()), error: None, created_at: now() };
        s.insert_judge_verdicts(std::slice::from_ref(&j)).unwrap();
        assert_eq!(s.judge_verdicts("r1:p@x", "r2:p@x").unwrap(), vec![j]);
    }
}
