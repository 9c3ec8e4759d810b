//! An independent Sparkplug B decoder for the tests: Debian's `protoc
//! --decode` with the schema in tests/fixtures/sparkplug_b.proto (not the
//! gateway's prost types), and a reader of protoc's text output.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

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
