//! Helpers shared by the CLI's integration tests.
#![allow(dead_code)]

use std::path::Path;

/// Whether the embedded model is fetched; tests that need it skip, loudly,
/// only when it is absent (CI fetches it first).
pub fn model_present() -> bool {
    let home = std::env::var("TUNEGATE_HOME")
        .map(|h| format!("{h}/models"))
        .or_else(|_| std::env::var("XDG_CACHE_HOME").map(|x| format!("{x}/tunegate/models")))
        .unwrap_or_else(|_| format!("{}/.cache/tunegate/models", std::env::var("HOME").unwrap_or_default()));
    let p = Path::new(&home).join("gemma-3-270m-q4_k_m.gguf");
    if !p.is_file() {
        eprintln!("SKIPPED: model file not found at {}; run scripts/fetch-model.sh", p.display());
        return false;
    }
    true
}

/// A `tunegate serve` process on a free loopback port, killed on drop.
pub struct Server {
    pub child: std::process::Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `tunegate serve` with `extra` arguments and waits until it accepts connections.
pub fn start_server(extra: &[&str]) -> Server {
    use std::time::{Duration, Instant};
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tunegate"))
        .args(["serve", "--addr", &addr])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(120), "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Server { child, port }
}
