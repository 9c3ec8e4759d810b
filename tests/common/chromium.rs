//! A real headless browser for the status-page tests: Debian's `chromium`
//! (installed by scripts/setup.sh), driven over the DevTools protocol on a
//! WebSocket (tokio-tungstenite). It starts with a fresh profile and every
//! background service off, so the only requests it makes are the page's;
//! each request the page makes is recorded (`Network.requestWillBeSent`)
//! with the response headers of the page itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// The chromium binary, if installed.
pub fn find() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in ["/usr/bin", "/usr/local/bin", "/snap/bin"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A running headless chromium with one page attached.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    tx: mpsc::UnboundedSender<(Value, oneshot::Sender<Value>)>,
    /// Every URL a page requested, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Response headers by URL (lower-case names).
    pub responses: Arc<Mutex<Vec<(String, Value)>>>,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts chromium headless and attaches to a blank page with the
    /// network and page domains enabled.
    pub async fn start(bin: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--metrics-recording-only",
                "--no-default-browser-check",
                "--window-size=1280,1400",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = child.stderr.take().unwrap();
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(i) = line.find("ws://") {
                        let _ = url_tx.send(line[i..].trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let ws_url = url_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium prints its DevTools address within 30 s");
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("DevTools WebSocket");
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Value, oneshot::Sender<Value>)>();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let responses = Arc::new(Mutex::new(Vec::new()));
        let (reqs, resps) = (requests.clone(), responses.clone());
        tokio::spawn(async move {
            let mut next_id = 1u64;
            let mut waiting: std::collections::HashMap<u64, oneshot::Sender<Value>> =
                Default::default();
            loop {
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some((mut msg, reply)) = cmd else { return };
                        msg["id"] = json!(next_id);
                        waiting.insert(next_id, reply);
                        next_id += 1;
                        if sink.send(Message::text(msg.to_string())).await.is_err() {
                            return;
                        }
                    }
                    m = stream.next() => {
                        let Some(Ok(Message::Text(text))) = m else {
                            if m.is_none() { return }
                            continue;
                        };
                        let v: Value = serde_json::from_str(&text).unwrap_or_default();
                        if let Some(id) = v["id"].as_u64() {
                            if let Some(r) = waiting.remove(&id) {
                                let _ = r.send(v);
                            }
                            continue;
                        }
                        match v["method"].as_str() {
                            Some("Network.requestWillBeSent") => {
                                if let Some(u) = v["params"]["request"]["url"].as_str() {
                                    reqs.lock().unwrap().push(u.to_string());
                                }
                            }
                            Some("Network.responseReceived") => {
                                let r = &v["params"]["response"];
                                let mut h = serde_json::Map::new();
                                if let Some(o) = r["headers"].as_object() {
                                    for (k, v) in o {
                                        h.insert(k.to_ascii_lowercase(), v.clone());
                                    }
                                }
                                resps.lock().unwrap().push((
                                    r["url"].as_str().unwrap_or("").to_string(),
                                    Value::Object(h),
                                ));
                            }
                            _ => {}
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            _profile: profile,
            tx,
            requests,
            responses,
            session: String::new(),
        };
        let t = b
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = t["targetId"].as_str().unwrap().to_string();
        let s = b
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        b.session = s["sessionId"].as_str().unwrap().to_string();
        let session = b.session.clone();
        b.call(Some(&session), "Network.enable", json!({})).await;
        b.call(Some(&session), "Page.enable", json!({})).await;
        b
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let mut msg = json!({"method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((msg, reply))
            .expect("DevTools connection open");
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("DevTools {method} answered within 30 s"))
            .expect("DevTools connection open");
        assert!(v.get("error").is_none(), "DevTools {method}: {v}");
        v["result"].clone()
    }

    /// Sends a command to the attached page.
    pub async fn page(&self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params).await
    }

    /// Opens `url` in the page.
    pub async fn navigate(&self, url: &str) {
        self.page("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub async fn eval(&self, expr: &str) -> Value {
        let r = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until `ok` holds for its value (at most `within`);
    /// returns the last value either way.
    pub async fn wait_for(
        &self,
        expr: &str,
        within: Duration,
        mut ok: impl FnMut(&Value) -> bool,
    ) -> (bool, Value) {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expr).await;
            if ok(&v) {
                return (true, v);
            }
            if Instant::now() >= deadline {
                return (false, v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG screenshot of the whole page, saved at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let r = self
            .page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}
