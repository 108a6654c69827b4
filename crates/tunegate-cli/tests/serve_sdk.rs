//! `tunegate serve` with the official OpenAI Python SDK as the client
//! (issue 17): tests/sdk/openai_client.py exercises chat, streaming with
//! usage, logprobs, `n`, echo, every error of the issue, models, files and
//! a fine-tuning job end to end, asserting each result.
//!
//! The SDK comes from `scripts/sdk-venv.sh` (target/sdk-venv, which
//! `.ci/run` creates), or the Python named by TUNEGATE_SDK_PYTHON.

mod common;
use common::{model_present, start_server};

#[test]
fn the_openai_python_sdk_drives_serve() {
    if !model_present() {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var("TUNEGATE_SDK_PYTHON").map(std::path::PathBuf::from).unwrap_or_else(|_| root.join("target/sdk-venv/bin/python"));
    if !python.exists() {
        eprintln!("\n*** SKIPPED the_openai_python_sdk_drives_serve: no OpenAI SDK at {} — run scripts/sdk-venv.sh (CI does) ***\n", python.display());
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let srv = start_server(&["--api-key", "sdk-key", "--state-dir", state.path().to_str().unwrap()]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_client.py");
    let out = std::process::Command::new(&python).arg(&script).arg(format!("http://127.0.0.1:{}/v1", srv.port)).arg("sdk-key").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("")).unwrap_or_else(|_| panic!("{stdout}{stderr}"));
    assert!(v["checks"].as_u64().unwrap() >= 40, "{v}");
    // The job record and the file are in the state directory.
    let job = v["job"].as_str().unwrap();
    assert!(state.path().join("jobs").join(format!("{job}.json")).is_file());
}
