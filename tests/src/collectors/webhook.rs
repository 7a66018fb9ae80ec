//! A real HTTP webhook receiver on 127.0.0.1, for alert tests and the demo:
//! it records every JSON body it accepts, and can refuse the first matching
//! request to prove that delivery retries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;

#[derive(Default)]
struct Inner {
    received: Vec<serde_json::Value>,
    /// Requests refused so far, and how many to refuse whose body contains `refuse_marker`.
    refused: usize,
    refuse_left: usize,
    refuse_marker: String,
}

#[derive(Clone)]
pub struct WebhookSink {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl WebhookSink {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = inner.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let state = state.clone();
                async move {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    if s.refuse_left > 0 && body.contains(&s.refuse_marker) {
                        s.refuse_left -= 1;
                        s.refused += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    match serde_json::from_str(&body) {
                        Ok(v) => {
                            s.received.push(v);
                            StatusCode::OK
                        }
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers 503 to the next `n` requests whose body contains `marker`.
    pub fn refuse(&self, marker: &str, n: usize) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.refuse_marker = marker.to_string();
        s.refuse_left = n;
    }

    pub fn refused(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).refused
    }

    pub fn received(&self) -> Vec<serde_json::Value> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).received.clone()
    }

    /// Waits until nothing new has arrived for `quiet`, and returns how many
    /// alerts arrived in all.
    pub async fn settle(&self, quiet: Duration) -> usize {
        let mut seen = self.received().len();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.received().len();
            if now == seen {
                return now;
            }
            seen = now;
        }
    }

    /// Waits up to `limit` for alerts past the first `after` to satisfy `ok`.
    pub async fn wait_for(
        &self,
        after: usize,
        limit: Duration,
        ok: impl Fn(&[serde_json::Value]) -> bool,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let new: Vec<serde_json::Value> = self.received().into_iter().skip(after).collect();
            if ok(&new) {
                return Ok(new);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("webhook: after {limit:?} the new alerts are {new:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// GETs `http://addr/path` and returns (status line, content type, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(String, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    // axum answers `Connection: close` requests without chunking.
    Ok((status, content_type, body.to_string()))
}
