//! `tunegate serve`: flags, the model, the listener; the server itself is
//! the tunegate-serve crate.

use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tunegate_providers::local::LocalEngine;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Require `Authorization: Bearer KEY` (or set TUNEGATE_API_KEY).
    #[arg(long, env = "TUNEGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Listen on a non-loopback address (exposes the model to the network;
    /// without --api-key, only with --no-auth).
    #[arg(long)]
    pub allow_remote: bool,
    /// With --allow-remote and no key: serve anyone who can reach the port.
    #[arg(long)]
    pub no_auth: bool,
    /// Model name or GGUF path.
    #[arg(long, default_value = "gemma-3-270m")]
    pub model: String,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Sequences admitted at once (each choice of `n` counts); more get HTTP 503.
    #[arg(long, default_value_t = 64, value_parser = crate::args::at_least_one)]
    pub max_concurrency: usize,
    /// Open connections at once; more are answered 503 and closed.
    #[arg(long, default_value_t = 256, value_parser = crate::args::at_least_one)]
    pub max_connections: usize,
    /// Seconds a request's headers may take to arrive; also how long an
    /// idle keep-alive connection stays open.
    #[arg(long, default_value_t = 10, value_parser = crate::args::at_least_one)]
    pub header_timeout: usize,
    /// Seconds a request's body may take to arrive.
    #[arg(long, default_value_t = 30, value_parser = crate::args::at_least_one)]
    pub body_timeout: usize,
    /// `max_tokens` of a request that gives none (never more than the context left).
    #[arg(long, default_value_t = 1024, value_parser = crate::args::at_least_one)]
    pub default_max_tokens: usize,
    /// Fine-tuned models kept loaded at once (each about 300 MB); others
    /// are loaded again when asked for.
    #[arg(long, default_value_t = 2, value_parser = crate::args::at_least_one)]
    pub max_tuned_loaded: usize,
    /// Seconds a fine-tuned model stays loaded after its last request.
    #[arg(long, default_value_t = 300, value_parser = crate::args::at_least_one)]
    pub tuned_keep_alive: usize,
    /// Where uploaded training files, fine-tuned adapters and job records are
    /// kept (default: the model cache's `serve/` directory).
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
    /// Largest training-file upload in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_upload: usize,
}

extern "C" {
    /// mimalloc (the global allocator): frees what it can of the memory it
    /// keeps, abandoned pages of exited threads included.
    fn mi_collect(force: bool);
}

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    if !a.addr.ip().is_loopback() {
        if !a.allow_remote {
            return Err(crate::args::usage(format!("{} is not a loopback address; pass --allow-remote to expose the model to the network (and set --api-key)", a.addr)));
        }
        if a.api_key.is_none() && !a.no_auth {
            return Err(crate::args::usage(format!("--allow-remote on {} without --api-key would serve anyone who can reach the port: set --api-key (or TUNEGATE_API_KEY), or pass --no-auth to do so on purpose", a.addr)));
        }
        if a.api_key.is_none() {
            eprintln!("warning: serving {} to the network with no key (--no-auth): anyone who can reach it can use the model and start fine-tuning jobs", a.addr);
        }
    }
    let path = tunegate_model::resolve_model(&a.model).map_err(|e| crate::args::usage(e.to_string()))?;
    eprintln!("loading {} ...", path.display());
    LocalEngine::set_max_adapter_engines(a.max_tuned_loaded);
    let engine = LocalEngine::get(&path).context("loading the model")?;
    let model_id = if a.model.ends_with(".gguf") { path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default() } else { a.model.clone() };
    let state_dir = match a.state_dir.clone() {
        Some(d) => d,
        None => tunegate_model::default_model_dir()?.parent().map(|p| p.join("serve")).unwrap_or_else(|| std::path::PathBuf::from("tunegate-serve")),
    };
    let cfg = tunegate_serve::Config {
        api_key: a.api_key.clone(),
        model_path: path,
        model_id,
        max_body: a.max_body,
        max_upload: a.max_upload,
        max_concurrency: a.max_concurrency,
        max_connections: a.max_connections,
        header_timeout: Duration::from_secs(a.header_timeout as u64),
        body_timeout: Duration::from_secs(a.body_timeout as u64),
        default_max_tokens: a.default_max_tokens,
        state_dir: state_dir.clone(),
        // Each fine-tuning job trains in a child `tunegate serve-train`.
        trainer: std::env::current_exe().ok().map(|exe| vec![exe.into_os_string(), "serve-train".into()]),
    };
    let state = tunegate_serve::AppState::new(cfg, engine).with_context(|| format!("cannot use {}", state_dir.display()))?;
    let rt = crate::args::runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.addr).await.with_context(|| format!("cannot listen on {}", a.addr))?;
        eprintln!("serving {} on http://{}/v1 (OpenAI-compatible){}", state.cfg.model_id, listener.local_addr()?, if state.cfg.api_key.is_some() { ", bearer key required" } else { "" });
        let keep = Duration::from_secs(a.tuned_keep_alive as u64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((keep / 4).min(Duration::from_secs(30)));
            loop {
                tick.tick().await;
                if LocalEngine::unload_idle(keep) > 0 {
                    // Give the freed weights back to the system now.
                    // SAFETY: mimalloc's collector takes no pointers.
                    unsafe { mi_collect(true) }
                }
            }
        });
        tunegate_serve::serve(state, listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
