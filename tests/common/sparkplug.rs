//! An independent Sparkplug B decoder for the tests: Debian's `protoc
//! --decode` with the schema in tests/fixtures/sparkplug_b.proto (not the
//! gateway's prost types), a reader of protoc's text output, and [`Watch`],
//! a subscriber that decodes everything under `spBv1.0/#`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::TestSubscriber;

/// How long a test waits for a Sparkplug message.
const T: Duration = Duration::from_secs(20);

/// One decoded metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metric {
    pub name: Option<String>,
    pub alias: Option<u64>,
    pub timestamp: Option<u64>,
    pub datatype: Option<u32>,
    pub is_null: bool,
    pub is_historical: bool,
    /// `(field, text)`: `("double_value", "1.5")`, `("string_value", "a")`.
    pub value: Option<(String, String)>,
    /// The `Quality` property's Int32.
    pub quality: Option<u32>,
}

impl Metric {
    pub fn value_text(&self) -> Option<&str> {
        self.value.as_ref().map(|(_, v)| v.as_str())
    }
}

/// One decoded payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    pub timestamp: Option<u64>,
    pub seq: Option<u64>,
    pub metrics: Vec<Metric>,
}

impl Payload {
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
    }
    pub fn by_alias(&self, alias: u64) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.alias == Some(alias))
    }
    /// The `bdSeq` metric's value.
    pub fn bdseq(&self) -> u64 {
        let m = self.metric("bdSeq").expect("a bdSeq metric");
        assert_eq!(m.datatype, Some(4), "bdSeq is Int64: {m:?}");
        m.value_text().expect("bdSeq value").parse().unwrap()
    }
}

/// Decodes with `protoc --decode=org.eclipse.tahu.protobuf.Payload`.
pub fn decode(payload: &[u8]) -> Payload {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut child = Command::new("protoc")
        .arg(format!("--proto_path={}", fixtures.display()))
        .arg("--decode=org.eclipse.tahu.protobuf.Payload")
        .arg("sparkplug_b.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc is not installed: run scripts/setup.sh (Debian package protobuf-compiler)");
    child.stdin.take().unwrap().write_all(payload).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "protoc could not decode the payload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// protoc's text format as a tree.
#[derive(Debug)]
enum Node {
    Scalar(String),
    Msg(Vec<(String, Node)>),
}

fn tree(text: &str) -> Vec<(String, Node)> {
    let mut stack: Vec<(String, Vec<(String, Node)>)> = vec![(String::new(), Vec::new())];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(key) = line.strip_suffix(" {") {
            stack.push((key.to_string(), Vec::new()));
        } else if line == "}" {
            let (key, fields) = stack.pop().unwrap();
            stack.last_mut().unwrap().1.push((key, Node::Msg(fields)));
        } else {
            let (k, v) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("protoc line {line:?}"));
            // An unknown field shows as a bare number: the schemas disagree.
            assert!(
                !k.chars().all(|c| c.is_ascii_digit()),
                "field {k} is not in the schema: {text}"
            );
            stack
                .last_mut()
                .unwrap()
                .1
                .push((k.to_string(), Node::Scalar(unquote(v))));
        }
    }
    stack.pop().unwrap().1
}

/// Undoes protoc's C-style string escapes (octal bytes for non-ASCII).
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = Vec::new();
    let b = inner.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 1;
        match b[i] {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'0'..=b'7' => {
                let mut n = 0u32;
                let mut k = 0;
                while k < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    n = n * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push(n as u8);
                continue;
            }
            b'x' => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8 string")
}

fn scalar(n: &Node) -> &str {
    match n {
        Node::Scalar(s) => s,
        Node::Msg(_) => panic!("expected a scalar, got {n:?}"),
    }
}

fn parse(text: &str) -> Payload {
    let mut p = Payload::default();
    for (k, v) in tree(text) {
        match (k.as_str(), v) {
            ("timestamp", v) => p.timestamp = Some(scalar(&v).parse().unwrap()),
            ("seq", v) => p.seq = Some(scalar(&v).parse().unwrap()),
            ("metrics", Node::Msg(fields)) => p.metrics.push(metric(fields)),
            (other, _) => panic!("unexpected payload field {other}: {text}"),
        }
    }
    p
}

fn metric(fields: Vec<(String, Node)>) -> Metric {
    let mut m = Metric::default();
    for (k, v) in fields {
        match k.as_str() {
            "name" => m.name = Some(scalar(&v).to_string()),
            "alias" => m.alias = Some(scalar(&v).parse().unwrap()),
            "timestamp" => m.timestamp = Some(scalar(&v).parse().unwrap()),
            "datatype" => m.datatype = Some(scalar(&v).parse().unwrap()),
            "is_null" => m.is_null = scalar(&v) == "true",
            "is_historical" => m.is_historical = scalar(&v) == "true",
            "properties" => m.quality = quality(v),
            k if k.ends_with("_value") => m.value = Some((k.to_string(), scalar(&v).to_string())),
            other => panic!("unexpected metric field {other}"),
        }
    }
    m
}

fn quality(props: Node) -> Option<u32> {
    let Node::Msg(fields) = props else {
        panic!("properties is a message")
    };
    let keys: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k == "keys")
        .map(|(_, v)| scalar(v).to_string())
        .collect();
    let values: Vec<&Node> = fields
        .iter()
        .filter(|(k, _)| k == "values")
        .map(|(_, v)| v)
        .collect();
    let i = keys.iter().position(|k| k == "Quality")?;
    let Node::Msg(pv) = values[i] else {
        panic!("a property value is a message")
    };
    let ty = pv.iter().find(|(k, _)| k == "type").map(|(_, v)| scalar(v));
    assert_eq!(ty, Some("3"), "Quality is an Int32 property");
    pv.iter()
        .find(|(k, _)| k == "int_value")
        .map(|(_, v)| scalar(v).parse().unwrap())
}

/// Encodes a Sparkplug payload for commands sent by the tests, with
/// `protoc --encode` from text format (again not the gateway's code).
pub fn encode(text: &str) -> Vec<u8> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut child = Command::new("protoc")
        .arg(format!("--proto_path={}", fixtures.display()))
        .arg("--encode=org.eclipse.tahu.protobuf.Payload")
        .arg("sparkplug_b.proto")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc is not installed: run scripts/setup.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "protoc could not encode {text:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Everything on `spBv1.0/#`, decoded once each with protoc.
pub struct Watch {
    pub sub: TestSubscriber,
    decoded: RefCell<Vec<(String, String, Payload)>>,
    /// `spBv1.0/{group}/NCMD/{node}`, and the device's DCMD topic.
    ncmd: String,
    dcmd: String,
}

impl Watch {
    /// Subscribes to `spBv1.0/#` on `port`; commands go to `group`/`node`/`device`.
    pub async fn start(port: u16, group: &str, node: &str, device: &str) -> Watch {
        Watch {
            sub: TestSubscriber::connect(port, "spBv1.0/#").await,
            decoded: RefCell::new(Vec::new()),
            ncmd: format!("spBv1.0/{group}/NCMD/{node}"),
            dcmd: format!("spBv1.0/{group}/DCMD/{node}/{device}"),
        }
    }

    /// (message type, topic, payload) of everything so far, STATE left out.
    pub fn all(&self) -> Vec<(String, String, Payload)> {
        let msgs = self.sub.messages();
        let mut d = self.decoded.borrow_mut();
        let seen = d.len();
        let mut skipped = 0;
        for m in msgs.iter() {
            let kind = m.topic.split('/').nth(2).unwrap_or_default().to_string();
            if m.topic.starts_with("spBv1.0/STATE/") {
                continue;
            }
            if skipped < seen {
                skipped += 1;
                continue;
            }
            assert!(
                !m.retain,
                "Sparkplug messages are not retained: {}",
                m.topic
            );
            d.push((kind, m.topic.clone(), decode(&m.payload)));
        }
        d.clone()
    }

    /// The payloads of `kind` so far, in order.
    pub fn of(&self, kind: &str) -> Vec<Payload> {
        self.all()
            .into_iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, _, p)| p)
            .collect()
    }

    /// Waits for the first message of `kind` that satisfies `pred`.
    pub async fn wait(&self, kind: &str, pred: impl Fn(&Payload) -> bool) -> Payload {
        let deadline = Instant::now() + T;
        loop {
            if let Some(p) = self.of(kind).into_iter().find(|p| pred(p)) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} as expected within {T:?}; got {:#?}",
                self.all()
                    .iter()
                    .map(|(k, _, p)| (k.clone(), p.seq, p.metrics.len()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `n` messages of `kind` arrived; returns them all.
    pub async fn count(&self, kind: &str, n: usize) -> Vec<Payload> {
        let deadline = Instant::now() + T;
        loop {
            let got = self.of(kind);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} {kind} of {n}", got.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks that `seq` runs on by one (mod 256) after each NBIRTH; returns
    /// how many messages followed the NBIRTHs.
    pub fn assert_seq_runs(&self) -> usize {
        let mut last: Option<u64> = None;
        let mut n = 0;
        for (kind, _, p) in self.all() {
            match kind.as_str() {
                "NBIRTH" => {
                    last = p.seq;
                    assert!(p.seq.is_some_and(|s| s <= 255));
                }
                "NDEATH" => {
                    assert_eq!(p.seq, None, "NDEATH carries no seq");
                    last = None;
                }
                "NCMD" | "DCMD" => {}
                _ => {
                    let prev = last.expect("a message before any NBIRTH");
                    assert_eq!(p.seq, Some((prev + 1) % 256), "{kind} after seq {prev}");
                    last = p.seq;
                    n += 1;
                }
            }
        }
        n
    }

    /// Sends an NCMD or DCMD given in protoc text format.
    pub async fn command(&self, kind: &str, text: &str) {
        let topic = match kind {
            "NCMD" => self.ncmd.clone(),
            _ => self.dcmd.clone(),
        };
        self.sub
            .client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, encode(text))
            .await
            .unwrap();
    }

    pub async fn state(&self, online: bool, ts: u64) {
        let payload = json!({"online": online, "timestamp": ts}).to_string();
        self.sub
            .client
            .publish(
                "spBv1.0/STATE/SCADA",
                rumqttc::QoS::AtLeastOnce,
                true,
                payload,
            )
            .await
            .unwrap();
    }
}

/// name -> alias of a DBIRTH.
pub fn aliases(birth: &Payload) -> HashMap<String, u64> {
    birth
        .metrics
        .iter()
        .map(|m| (m.name.clone().unwrap(), m.alias.unwrap()))
        .collect()
}

/// A TCP pass-through on a free loopback port in front of the broker, so a
/// test can cut the gateway's connection (a network outage) while the
/// broker and the test's own subscriber stay up and miss nothing.
pub struct Cable {
    pub port: u16,
    open: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Cable {
    /// Forwards `127.0.0.1:{port}` to the broker on `target`.
    pub async fn start(target: u16) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = tokio::sync::watch::channel(true);
        let state = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = state.subscribe();
                if !*cut.borrow_and_update() {
                    // Unplugged: the connection is closed at once.
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Cable { port, open, task }
    }

    /// `mqtt://127.0.0.1:PORT` through the cable.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection through it and refuses new ones.
    pub fn unplug(&self) {
        self.open.send_replace(false);
    }

    pub fn plug_in(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.task.abort();
    }
}
