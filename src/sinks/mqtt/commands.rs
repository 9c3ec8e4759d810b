//! Write commands: `{prefix}/write/{tag}` with `{"value":V,"id":"optional"}`,
//! answered on `{prefix}/write-result/{tag}` (contract §3, §7).
//!
//! Parsing happens on the event loop (cheap, never blocks). Valid commands
//! go to a fixed set of worker tasks, chosen by tag, so writes to one tag
//! stay in order, a slow station never stalls the event loop, and at most
//! `WORKERS` station writes run at once. When a worker's queue is full the
//! command is refused at once with a reason.
//!
//! Under MQTT 5 a command may carry a response topic (and correlation data):
//! its result then also goes there, with the correlation data, in addition
//! to `write-result/{tag}`. Response topics inside the gateway's own
//! `{prefix}/` tree are ignored, except under `{prefix}/write-result/`, so a
//! command cannot make the gateway publish on its state topics.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::link::{Incoming, Qos, Reply};
use super::outbox::Kind;
use super::SharedOutbox;
use crate::topic::DecodeError;
use crate::writes::{WritePolicy, Writer};

/// Larger command payloads are refused without parsing.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Station writes running at once.
pub(crate) const WORKERS: usize = 8;
/// Commands waiting per worker before new ones are refused.
const QUEUE_PER_WORKER: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    value: Value,
    #[serde(default)]
    id: Option<Value>,
}

/// A command that passed parsing.
#[derive(Debug, PartialEq)]
pub(crate) struct Parsed {
    pub tag: String,
    pub value: Value,
}

/// Parses one command. Returns the correlation id (null when absent or
/// unreadable) and the tag + value, or the reason for refusing it.
pub(crate) fn parse(
    suffix: &str,
    payload: &[u8],
    retained: bool,
) -> (Value, Result<Parsed, String>) {
    if payload.len() > MAX_COMMAND_BYTES {
        return (
            Value::Null,
            Err(format!(
                "malformed command: payload of {} bytes exceeds {MAX_COMMAND_BYTES}",
                payload.len()
            )),
        );
    }
    let json = serde_json::from_slice::<Value>(payload);
    // Best effort: echo the id even when the rest is wrong.
    let id = json
        .as_ref()
        .ok()
        .and_then(|v| v.get("id").cloned())
        .filter(|v| v.is_string() || v.is_number())
        .unwrap_or(Value::Null);
    if retained {
        return (
            id,
            Err("malformed command: retained write commands are ignored (publish with retain=false)".into()),
        );
    }
    const EXPECTED: &str = "expected {\"value\":V,\"id\":\"optional\"}";
    let cmd = match json {
        Ok(v @ Value::Object(_)) => Command::deserialize(v),
        Ok(_) => {
            return (
                id,
                Err(format!("malformed command: not a JSON object; {EXPECTED}")),
            )
        }
        Err(e) => Err(e),
    };
    let cmd = match cmd {
        Ok(c) => c,
        Err(e) => return (id, Err(format!("malformed command: {e}; {EXPECTED}"))),
    };
    if let Some(i) = &cmd.id {
        if !(i.is_string() || i.is_number() || i.is_null()) {
            return (
                id,
                Err("malformed command: id must be a string or a number".into()),
            );
        }
    }
    let tag = match crate::topic::decode_strict(suffix) {
        Ok(tag) => tag,
        Err(DecodeError::BadEscape) => {
            return (
                id,
                Err(format!(
                    "malformed command: topic level {suffix:?} has a bad percent escape"
                )),
            )
        }
        Err(DecodeError::NonCanonical) => {
            return (
                id,
                Err(format!(
                    "malformed command: topic {suffix:?} is not the canonical encoding of a tag \
                     name (upper-case hex, escape only + # % / and control characters; \
                     publish to write/ + the tag's topic exactly as it appears under tags/)"
                )),
            )
        }
    };
    (
        id,
        Ok(Parsed {
            tag,
            value: cmd.value,
        }),
    )
}

/// The JSON of a write result.
pub(crate) fn result_json(id: &Value, result: Result<(), String>) -> Vec<u8> {
    let v = match result {
        Ok(()) => json!({"id": id, "ok": true}),
        Err(e) => json!({"id": id, "ok": false, "error": e}),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

struct Job {
    tag: String,
    value: Value,
    id: Value,
    topic: Arc<str>,
    reply: Option<Reply>,
}

/// Routes incoming commands to the write workers.
pub(crate) struct Commands {
    /// MQTT 5 response topics are answered only under this prefix (empty: never).
    response_prefix: String,
    write_prefix: String,
    result_prefix: String,
    outbox: SharedOutbox,
    workers: Vec<mpsc::Sender<Job>>,
}

impl Commands {
    /// Starts the workers; their handles are returned so the sink can stop them.
    pub(crate) fn start(
        prefix: &str,
        response_prefix: &str,
        writer: Writer,
        policy: WritePolicy,
        outbox: SharedOutbox,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let policy = Arc::new(policy);
        let mut workers = Vec::with_capacity(WORKERS);
        let mut handles = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_PER_WORKER);
            let (writer, policy, outbox) = (writer.clone(), policy.clone(), outbox.clone());
            handles.push(tokio::spawn(async move {
                while let Some(job) = rx.recv().await {
                    let r = writer
                        .write(&policy, &job.tag, &job.value)
                        .await
                        .map_err(|e| crate::wincc::cap_text(e.to_string()));
                    publish_result(&outbox, job.topic, job.reply, &job.id, r);
                }
            }));
            workers.push(tx);
        }
        let c = Commands {
            response_prefix: response_prefix.to_string(),
            write_prefix: format!("{prefix}/write/"),
            result_prefix: format!("{prefix}/write-result/"),
            outbox,
            workers,
        };
        (c, handles)
    }

    /// The subscription filter for commands.
    pub(crate) fn filter(&self) -> String {
        format!("{}#", self.write_prefix)
    }

    /// The MQTT 5 response topic of a command, if one is set and allowed.
    fn reply(&self, topic: &str, reply: Option<&Reply>) -> Option<Reply> {
        let r = reply?;
        let why = if self.response_prefix.is_empty() {
            "response topics are off (mqtt.response_topic_prefix is not set)"
        } else if !response_topic_allowed(&self.response_prefix, &r.topic) {
            "not under mqtt.response_topic_prefix, or not a valid topic"
        } else if r
            .correlation
            .as_ref()
            .is_some_and(|c| c.len() > MAX_CORRELATION_BYTES)
        {
            "correlation data longer than 1024 bytes"
        } else {
            return Some(r.clone());
        };
        // Debug-formatted: the topic is the client's text (no forged log lines).
        tracing::warn!(topic, response_topic = ?r.topic, why, "ignoring an MQTT 5 response topic");
        None
    }

    /// Handles one incoming publish; never blocks.
    pub(crate) fn handle(&self, msg: &Incoming) {
        let topic = msg.topic.as_str();
        let Some(suffix) = topic.strip_prefix(&self.write_prefix) else {
            tracing::debug!(topic, "ignoring a message outside the write topics");
            return;
        };
        let reply = self.reply(topic, msg.reply.as_ref());
        let (id, parsed) = parse(suffix, &msg.payload, msg.retain);
        let result_topic = |tag: Option<&str>| -> Arc<str> {
            let level = tag
                .map(crate::topic::encode)
                .unwrap_or_else(|| suffix.to_string());
            Arc::from(format!("{}{}", self.result_prefix, level))
        };
        let p = match parsed {
            Ok(p) => p,
            Err(e) => {
                let reason = if msg.retain {
                    "retained"
                } else if crate::topic::decode_strict(suffix) == Err(DecodeError::NonCanonical) {
                    "non_canonical_topic"
                } else {
                    "malformed"
                };
                crate::writes::audit(
                    "mqtt",
                    suffix,
                    None,
                    crate::writes::Outcome::Refused { reason, why: &e },
                );
                publish_result(&self.outbox, result_topic(None), reply, &id, Err(e));
                return;
            }
        };
        let topic = result_topic(Some(&p.tag));
        let mut h = DefaultHasher::new();
        p.tag.hash(&mut h);
        let worker = &self.workers[(h.finish() % self.workers.len() as u64) as usize];
        let job = Job {
            tag: p.tag,
            value: p.value,
            id,
            topic,
            reply,
        };
        if let Err(e) = worker.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            crate::writes::audit(
                "mqtt",
                &job.tag,
                Some(&job.value),
                crate::writes::Outcome::Refused {
                    reason: "busy",
                    why: &"too many writes in progress",
                },
            );
            publish_result(
                &self.outbox,
                job.topic,
                job.reply,
                &job.id,
                Err("station unavailable: too many writes in progress, try again later".into()),
            );
        }
    }
}

/// Longest MQTT 5 correlation data echoed back with a result.
pub(crate) const MAX_CORRELATION_BYTES: usize = 1024;

/// A response topic must start with the configured response prefix (which
/// check-config keeps outside the gateway's own topics) and be a valid topic
/// name: a command cannot make the gateway publish anywhere else.
pub(crate) fn response_topic_allowed(response_prefix: &str, topic: &str) -> bool {
    !response_prefix.is_empty()
        && topic.starts_with(response_prefix)
        && topic.len() > response_prefix.len()
        && crate::topic::is_valid_publish_topic(topic)
}

/// Queues the result on `topic` and, for an MQTT 5 command with a response
/// topic, also there with its correlation data.
fn publish_result(
    outbox: &SharedOutbox,
    topic: Arc<str>,
    reply: Option<Reply>,
    id: &Value,
    r: Result<(), String>,
) {
    let payload = Bytes::from(result_json(id, r));
    let mut o = outbox.lock().unwrap_or_else(|e| e.into_inner());
    o.push_stream(
        Kind::WriteResult,
        topic,
        payload.clone(),
        Qos::AtLeastOnce,
        None,
    );
    if let Some(reply) = reply {
        o.push_stream(
            Kind::WriteResult,
            Arc::from(reply.topic),
            payload,
            Qos::AtLeastOnce,
            reply.correlation,
        );
    }
    o.pump();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(suffix: &str, payload: &str) -> (Value, String) {
        let (id, r) = parse(suffix, payload.as_bytes(), false);
        (id, r.unwrap_err())
    }

    #[test]
    fn good_commands_parse_with_and_without_id() {
        let (id, r) = parse("Line1/Speed", br#"{"value":5,"id":"c1"}"#, false);
        assert_eq!(id, json!("c1"));
        assert_eq!(
            r.unwrap(),
            Parsed {
                tag: "Line1/Speed".into(),
                value: json!(5)
            }
        );
        let (id, r) = parse("%2FA/%2B", br#"{"value":"x"}"#, false);
        assert_eq!(id, Value::Null);
        assert_eq!(r.unwrap().tag, "/A/+");
    }

    #[test]
    fn bad_commands_are_refused_with_a_reason_and_keep_the_id() {
        let (id, e) = err("T", r#"{"id":"k","val":1}"#);
        assert_eq!(id, json!("k"));
        assert!(e.contains("unknown field"), "{e}");
        assert!(err("T", r#"{"id":"k"}"#)
            .1
            .contains("missing field `value`"));
        assert!(err("T", r#"{"value":1} junk"#)
            .1
            .contains("trailing characters"));
        assert!(err("T", "").1.contains("malformed"));
        assert!(err("T", "not json").1.contains("malformed"));
        assert!(err("T", "[1]").1.contains("not a JSON object"));
        assert!(err("T", "5").1.contains("not a JSON object"));
        assert!(err("T", r#"{"value":1,"id":{"a":1}}"#)
            .1
            .contains("id must be"));
        assert!(err("bad%zz", r#"{"value":1}"#).1.contains("percent escape"));
        assert!(err("bad%", r#"{"value":1}"#).1.contains("percent escape"));
        let huge = format!(r#"{{"value":"{}"}}"#, "x".repeat(MAX_COMMAND_BYTES));
        assert!(err("T", &huge).1.contains("exceeds"));
        for s in ["a%2bb", "Tag%31", "A%2FB", "A//B", "%41"] {
            assert!(
                err(s, r#"{"value":1}"#)
                    .1
                    .contains("not the canonical encoding"),
                "{s:?}"
            );
        }
        let (_, r) = parse("T", br#"{"value":1}"#, true);
        assert!(r.unwrap_err().contains("retained"));
    }

    #[test]
    fn results_follow_the_contract() {
        let v: Value = serde_json::from_slice(&result_json(&json!("a"), Ok(()))).unwrap();
        assert_eq!(v, json!({"id":"a","ok":true}));
        let v: Value =
            serde_json::from_slice(&result_json(&Value::Null, Err("nope".into()))).unwrap();
        assert_eq!(v, json!({"id":null,"ok":false,"error":"nope"}));
    }

    #[test]
    fn response_topics_only_under_the_configured_prefix() {
        assert!(response_topic_allowed("replies/", "replies/client7/1"));
        for bad in [
            "replies/",
            "replies",
            "gw/status",
            "client/7/reply",
            "replies/+/b",
            "replies/#",
            "",
        ] {
            assert!(!response_topic_allowed("replies/", bad), "{bad:?}");
        }
        // Not configured: never.
        assert!(!response_topic_allowed("", "replies/client7/1"));
    }
}
