//! A scripted HTTP/1.1 server on 127.0.0.1 for tests: the HTTP providers
//! are exercised against real sockets (status codes, Retry-After, bodies cut
//! off mid-way, servers that never answer), never against a mocked client.
//! Public so the runner and CLI tests can use it; not part of the API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub enum Reply {
    /// Status, extra headers, body.
    Json(u16, Vec<(String, String)>, String),
    /// Raw bytes written as they are, then the connection is closed.
    Raw(Vec<u8>),
    /// Say nothing for this long, then close.
    Hang(Duration),
}

impl Reply {
    pub fn ok(body: serde_json::Value) -> Reply {
        Reply::Json(200, vec![], body.to_string())
    }
    pub fn status(code: u16, body: &str) -> Reply {
        Reply::Json(code, vec![], body.to_string())
    }
}

pub type Script = dyn Fn(usize, &Recorded) -> Reply + Send + Sync;

pub struct TestServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl TestServer {
    /// Starts the server on a background thread; `script(n, request)` gives
    /// the reply to the n-th request (0-based).
    pub fn start(script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static) -> TestServer {
        let script: Arc<Script> = Arc::new(script);
        let requests = Arc::new(Mutex::new(vec![]));
        let (tx, rx) = std::sync::mpsc::channel();
        let reqs = requests.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((sock, _)) = listener.accept().await else { break };
                    let (script, reqs) = (script.clone(), reqs.clone());
                    tokio::spawn(async move {
                        let _ = serve(sock, script, reqs).await;
                    });
                }
            });
        });
        TestServer { addr: rx.recv().unwrap(), requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn serve(mut sock: tokio::net::TcpStream, script: Arc<Script>, reqs: Arc<Mutex<Vec<Recorded>>>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // One request per iteration (keep-alive).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or("");
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
        let len: usize = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[body_start..body_start + len]).to_string();
        buf.drain(..body_start + len);
        let rec = Recorded { method, path, headers, body };
        let n = {
            let mut r = reqs.lock().unwrap();
            r.push(rec.clone());
            r.len() - 1
        };
        match script(n, &rec) {
            Reply::Json(code, extra, body) => {
                let mut resp = format!("HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len());
                for (k, v) in extra {
                    resp.push_str(&format!("{k}: {v}\r\n"));
                }
                resp.push_str("\r\n");
                resp.push_str(&body);
                sock.write_all(resp.as_bytes()).await?;
            }
            Reply::Raw(bytes) => {
                sock.write_all(&bytes).await?;
                sock.shutdown().await?;
                return Ok(());
            }
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                return Ok(());
            }
        }
    }
}

/// An OpenAI chat completion body with the given text and usage.
pub fn chat_completion(text: &str, prompt_tokens: u64, completion_tokens: u64) -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    })
}
