//! `exec:CMD`: the prompt goes to a command's stdin, its stdout is the
//! completion. Lets a team plug in any model or rule-based baseline.

use crate::{estimate_tokens, Provider, ProviderError, Request, Response};
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub struct ExecProvider {
    name: String,
    cmd: String,
    dir: PathBuf,
    timeout: Duration,
}

impl ExecProvider {
    pub fn new(name: &str, cmd: &str, dir: &Path, timeout: Duration) -> Self {
        ExecProvider { name: name.into(), cmd: cmd.trim().into(), dir: dir.to_path_buf(), timeout }
    }
}

#[async_trait]
impl Provider for ExecProvider {
    fn name(&self) -> &str {
        &self.name
    }
    fn identity(&self) -> String {
        format!("exec|{}|{}", self.dir.display(), self.cmd)
    }
    async fn complete(&self, req: &Request) -> Result<Response, ProviderError> {
        let prompt = tunegate_core::template::flatten_messages(&req.messages);
        let messages = serde_json::to_string(&req.messages).unwrap_or_default();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .current_dir(&self.dir)
            // The messages as JSON too, for commands that want the roles.
            .env("TUNEGATE_MESSAGES", messages)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProviderError::Exec(format!("cannot start `{}` in {}: {e}", self.cmd, self.dir.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that ignores its input closes the pipe: not an error.
            let _ = stdin.write_all(prompt.as_bytes()).await;
        }
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Err(_) => return Err(ProviderError::Timeout(self.timeout.as_secs_f64())),
            Ok(r) => r.map_err(|e| ProviderError::Exec(format!("`{}`: {e}", self.cmd)))?,
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(ProviderError::Exec(format!("`{}` exited with {}: {}", self.cmd, out.status, err.trim())));
        }
        let output = String::from_utf8_lossy(&out.stdout).trim_end_matches(['\n', '\r']).to_string();
        Ok(Response { prompt_tokens: Some(estimate_tokens(&prompt)), completion_tokens: Some(estimate_tokens(&output)), output, cost_usd: Some(0.0) })
    }
}
