//! The one guarded path from any sink to the station.
//!
//! MQTT commands and OPC UA client writes both end here. Before any station
//! call a write is refused, with a reason, when writes are disabled for that
//! sink, the tag is not allow-listed, unknown, or read-only at the station,
//! or the JSON value does not fit the tag's type (contract §7). Only then is
//! the value written, and the caller learns whether the station accepted it.
//!
//! It is also the one place that keeps the audit trail: every write from any
//! sink (MQTT, OPC UA, Sparkplug), accepted or refused, wherever it was
//! refused (here, or earlier by the sink: a malformed MQTT command, an OPC
//! UA session without write access), is one log line and one count of
//! `wincc_gateway_writes_total{sink,result,reason}` ([`audit`]), and one
//! entry in the bounded list of recent writes the status page shows
//! ([`recent_writes`]: the last [`RECENT_WRITES`], newest last).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::DateTime;
use serde_json::Value;
use tokio::sync::watch;

use crate::glob::TagPatterns;
use crate::model::{TagInfo, TagType};
use crate::wincc::{Station, StationError};

/// The station's tags by name, as last discovered.
pub type TagMap = HashMap<String, TagInfo>;

/// Always the newest tag directory; published by the poller after discovery.
pub type TagDirectory = watch::Receiver<Arc<TagMap>>;

/// Why a write was refused or failed. The `Display` text is what users see
/// in `write-result` payloads, so it says what to fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("writes are disabled for {0} (set write_enabled = true)")]
    Disabled(&'static str),
    #[error("tag {0:?} is not in writable_tags")]
    NotAllowed(String),
    #[error("tag {0:?} is unknown at the station")]
    UnknownTag(String),
    #[error("tag {0:?} is read-only at the station")]
    ReadOnly(String),
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    #[error("out of range: {0}")]
    OutOfRange(String),
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("station refused the write: {0}")]
    StationRefused(String),
    #[error("station unavailable: {0}")]
    Station(String),
}

impl WriteError {
    /// True when the station was asked and refused or failed; false when the
    /// gateway refused the write by itself before any station call.
    pub fn reached_station(&self) -> bool {
        matches!(self, WriteError::StationRefused(_) | WriteError::Station(_))
    }

    /// A short label for metrics (`reason="type_mismatch"`).
    pub fn kind(&self) -> &'static str {
        match self {
            WriteError::Disabled(_) => "disabled",
            WriteError::NotAllowed(_) => "not_allowed",
            WriteError::UnknownTag(_) => "unknown_tag",
            WriteError::ReadOnly(_) => "read_only",
            WriteError::TypeMismatch(_) => "type_mismatch",
            WriteError::OutOfRange(_) => "out_of_range",
            WriteError::Malformed(_) => "malformed",
            WriteError::StationRefused(_) => "station_refused",
            WriteError::Station(_) => "station_error",
        }
    }
}

/// Per-sink write policy: whether writes are on and which tags they may touch.
#[derive(Debug, Clone)]
pub struct WritePolicy {
    pub sink: &'static str,
    pub enabled: bool,
    pub allowed: TagPatterns,
}

impl WritePolicy {
    pub fn new(
        sink: &'static str,
        enabled: bool,
        writable_tags: &[String],
    ) -> Result<Self, crate::glob::GlobError> {
        Ok(WritePolicy {
            sink,
            enabled,
            allowed: TagPatterns::new(writable_tags)?,
        })
    }

    /// True when a client of this sink may write `tag` (ignoring the station's own flag).
    pub fn allows(&self, tag: &str) -> bool {
        self.enabled && self.allowed.is_match(tag)
    }
}

/// Allow-lists by sink name that replace the sinks' own (`writable_tags`
/// changed by a configuration reload).
pub type AllowLists = HashMap<&'static str, TagPatterns>;

/// The guarded write path. Cheap to clone; one per sink is fine.
#[derive(Clone)]
pub struct Writer {
    station: Arc<dyn Station>,
    tags: TagDirectory,
    allow: Option<watch::Receiver<AllowLists>>,
}

impl Writer {
    pub fn new(station: Arc<dyn Station>, tags: TagDirectory) -> Self {
        Writer {
            station,
            tags,
            allow: None,
        }
    }

    /// Checks writes against the newest allow-list of `allow` for their
    /// sink where it has one (a reload), else against the sink's policy.
    pub fn with_allow_lists(mut self, allow: watch::Receiver<AllowLists>) -> Self {
        self.allow = Some(allow);
        self
    }

    /// The tag's metadata if the station has it.
    pub fn tag(&self, name: &str) -> Option<TagInfo> {
        self.tags.borrow().get(name).cloned()
    }

    /// Checks everything that can be checked without the station. Returns the
    /// tag's metadata and the value converted to the tag's canonical JSON form.
    pub fn check(
        &self,
        policy: &WritePolicy,
        tag: &str,
        value: &Value,
    ) -> Result<(TagInfo, Value), WriteError> {
        if !policy.enabled {
            return Err(WriteError::Disabled(policy.sink));
        }
        let allowed = match &self.allow {
            Some(rx) => match rx.borrow().get(policy.sink) {
                Some(live) => live.is_match(tag),
                None => policy.allowed.is_match(tag),
            },
            None => policy.allowed.is_match(tag),
        };
        if !allowed {
            return Err(WriteError::NotAllowed(tag.to_string()));
        }
        let info = self
            .tag(tag)
            .ok_or_else(|| WriteError::UnknownTag(tag.to_string()))?;
        if !info.writable {
            return Err(WriteError::ReadOnly(tag.to_string()));
        }
        let value = convert(info.ty, value)?;
        Ok((info, value))
    }

    /// Checks, then writes to the station. `Ok` only once the station accepted it.
    pub async fn write(
        &self,
        policy: &WritePolicy,
        tag: &str,
        value: &Value,
    ) -> Result<(), WriteError> {
        let result = match self.check(policy, tag, value) {
            Ok((info, value)) => self
                .station
                .write_value(tag, info.ty, &value)
                .await
                .map_err(station_error),
            Err(e) => Err(e),
        };
        record(policy, tag, value, &result);
        result
    }

    /// Checks every write, then hands those that pass to the station
    /// together: one request where the dialect has a batch write (an OPC UA
    /// client writing a recipe of many setpoints in one Write call), one at
    /// a time otherwise. One result per write, in order; a write that fails
    /// the checks never reaches the station and does not stop the others.
    pub async fn write_many(
        &self,
        policy: &WritePolicy,
        writes: &[(String, Value)],
    ) -> Vec<Result<(), WriteError>> {
        let mut results: Vec<Option<Result<(), WriteError>>> = Vec::with_capacity(writes.len());
        let mut batch = Vec::new();
        let mut positions = Vec::new();
        for (i, (tag, value)) in writes.iter().enumerate() {
            match self.check(policy, tag, value) {
                Ok((info, value)) => {
                    batch.push((tag.clone(), info.ty, value));
                    positions.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        // The same tag twice: one request would leave the order to the
        // station and give both writes one result, so they go one by one.
        let mut seen = std::collections::HashSet::new();
        let repeated = !batch.iter().all(|(tag, _, _)| seen.insert(tag.as_str()));
        let answers = if repeated {
            crate::wincc::write_each(&*self.station, &batch).await
        } else if batch.is_empty() {
            Vec::new()
        } else {
            self.station.write_values(&batch).await
        };
        for (i, answer) in positions.into_iter().zip(answers) {
            results[i] = Some(answer.map_err(station_error));
        }
        results
            .into_iter()
            .zip(writes)
            .map(|(r, (tag, value))| {
                let r = r.unwrap_or_else(|| {
                    Err(WriteError::Station(
                        "the station client gave no result for this write".into(),
                    ))
                });
                record(policy, tag, value, &r);
                r
            })
            .collect()
    }
}

fn station_error(e: StationError) -> WriteError {
    match e {
        StationError::Refused { code, message } => {
            WriteError::StationRefused(format!("{code}: {message}"))
        }
        other => WriteError::Station(other.to_string()),
    }
}

/// How one write ended, for [`audit`].
#[derive(Clone, Copy)]
pub enum Outcome<'a> {
    /// The station accepted it.
    Accepted,
    /// The gateway refused it before any station call; `reason` is the
    /// metric label (`not_allowed`, `malformed`, `access_denied`, ...).
    Refused {
        reason: &'static str,
        why: &'a dyn std::fmt::Display,
    },
    /// The station refused it or could not be asked.
    Failed {
        reason: &'static str,
        why: &'a dyn std::fmt::Display,
    },
}

impl<'a> From<&'a Result<(), WriteError>> for Outcome<'a> {
    fn from(r: &'a Result<(), WriteError>) -> Self {
        match r {
            Ok(()) => Outcome::Accepted,
            Err(e) if e.reached_station() => Outcome::Failed {
                reason: e.kind(),
                why: e,
            },
            Err(e) => Outcome::Refused {
                reason: e.kind(),
                why: e,
            },
        }
    }
}

/// How many writes [`recent_writes`] keeps.
pub const RECENT_WRITES: usize = 50;

/// One audited write, as the status page lists it (client text truncated
/// to 200 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    pub at: chrono::DateTime<chrono::Utc>,
    pub sink: &'static str,
    /// Who asked, where the sink knows (an OPC UA session's user name).
    pub user: Option<String>,
    pub tag: String,
    /// The value asked for, as JSON text; `-` when unreadable.
    pub value: String,
    /// `accepted`, `refused` or `failed`.
    pub result: &'static str,
    /// Why, when not accepted.
    pub error: Option<String>,
}

tokio::task_local! {
    /// The user a sink's write is made for, where it knows one (set around
    /// its call of the write path; read by [`audit`]).
    pub static WRITE_USER: Arc<str>;
}

/// The last writes of this process, oldest first (bounded: the status
/// page's "last 50 writes"; the log keeps them all).
static RECENT: Mutex<VecDeque<WriteRecord>> = Mutex::new(VecDeque::new());

/// The last [`RECENT_WRITES`] writes audited in this process, oldest first.
pub fn recent_writes() -> Vec<WriteRecord> {
    RECENT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

fn truncated(mut text: String) -> String {
    if text.len() > 200 {
        let mut end = 200;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

fn remember(
    sink: &'static str,
    tag: &str,
    value: &str,
    result: &'static str,
    error: Option<String>,
) {
    let record = WriteRecord {
        at: chrono::Utc::now(),
        sink,
        user: WRITE_USER.try_with(|u| u.to_string()).ok(),
        tag: truncated(tag.to_string()),
        value: value.to_string(),
        result,
        error: error.map(truncated),
    };
    let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
    if recent.len() >= RECENT_WRITES {
        recent.pop_front();
    }
    recent.push_back(record);
}

/// The audit trail of writes: one log line and one count of
/// `wincc_gateway_writes_total{sink, result, reason}` per write, for every
/// sink and every outcome. `result` is `accepted`, `refused` (by the
/// gateway, the station was not asked) or `failed` (by the station);
/// `reason` says why (`none` when accepted). `tag` is what the client
/// named, `value` what it asked for (absent when unreadable). Tag names and
/// values are client text: they are logged quoted, never raw.
pub fn audit(sink: &'static str, tag: &str, value: Option<&Value>, outcome: Outcome<'_>) {
    let (result, reason) = match outcome {
        Outcome::Accepted => ("accepted", "none"),
        Outcome::Refused { reason, .. } => ("refused", reason),
        Outcome::Failed { reason, .. } => ("failed", reason),
    };
    metrics::counter!(
        "wincc_gateway_writes_total",
        "sink" => sink,
        "result" => result,
        "reason" => reason
    )
    .increment(1);
    let value = value.map(|v| truncated(v.to_string()));
    let value = value.as_deref().unwrap_or("-");
    let error = match outcome {
        Outcome::Accepted => None,
        Outcome::Refused { why, .. } | Outcome::Failed { why, .. } => Some(why.to_string()),
    };
    remember(sink, tag, value, result, error);
    match outcome {
        Outcome::Accepted => tracing::info!(
            sink,
            tag = ?tag,
            value = ?value,
            result,
            "write accepted by the station"
        ),
        Outcome::Refused { why, .. } => tracing::warn!(
            sink,
            tag = ?tag,
            value = ?value,
            result,
            reason,
            error = %why,
            "write refused by the gateway"
        ),
        Outcome::Failed { why, .. } => tracing::warn!(
            sink,
            tag = ?tag,
            value = ?value,
            result,
            reason,
            error = %why,
            "write failed at the station"
        ),
    }
}

fn record(policy: &WritePolicy, tag: &str, value: &Value, result: &Result<(), WriteError>) {
    audit(policy.sink, tag, Some(value), result.into());
}

/// Converts a JSON value to the tag's type, or says why it does not fit
/// (contract §7: nothing else is converted).
pub fn convert(ty: TagType, v: &Value) -> Result<Value, WriteError> {
    let mismatch = |want: &str| {
        Err(WriteError::TypeMismatch(format!(
            "{ty} takes {want}, got {}",
            describe(v)
        )))
    };
    match ty {
        TagType::Bool => match v {
            Value::Bool(_) => Ok(v.clone()),
            _ => mismatch("a JSON bool"),
        },
        TagType::Int8
        | TagType::Int16
        | TagType::Int32
        | TagType::Int64
        | TagType::UInt8
        | TagType::UInt16
        | TagType::UInt32 => {
            let Value::Number(n) = v else {
                return mismatch("a JSON number with no fractional part");
            };
            let (lo, hi) = ty.integer_range().expect("integer type");
            let i: i128 = if let Some(i) = n.as_i64() {
                i as i128
            } else if let Some(u) = n.as_u64() {
                u as i128
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if !f.is_finite() || f.fract() != 0.0 {
                    return mismatch("a JSON number with no fractional part");
                }
                if f < lo as f64 || f > hi as f64 {
                    return Err(WriteError::OutOfRange(format!(
                        "{f} is outside {ty} ({lo}..={hi})"
                    )));
                }
                f as i128
            };
            if i < lo || i > hi {
                return Err(WriteError::OutOfRange(format!(
                    "{i} is outside {ty} ({lo}..={hi})"
                )));
            }
            Ok(if i < 0 {
                Value::from(i as i64)
            } else {
                Value::from(i as u64)
            })
        }
        TagType::Float => {
            let Value::Number(n) = v else {
                return mismatch("a JSON number");
            };
            let f = n.as_f64().unwrap_or(f64::NAN);
            if !f.is_finite() || f.abs() > f32::MAX as f64 {
                return Err(WriteError::OutOfRange(format!(
                    "{f} is outside the Float (f32) range"
                )));
            }
            Ok(v.clone())
        }
        TagType::Double => match v {
            Value::Number(_) => Ok(v.clone()),
            _ => mismatch("a JSON number"),
        },
        TagType::String => match v {
            Value::String(_) => Ok(v.clone()),
            _ => mismatch("a JSON string"),
        },
        TagType::DateTime => match v {
            Value::String(s) if DateTime::parse_from_rfc3339(s).is_ok() => Ok(v.clone()),
            Value::String(s) => Err(WriteError::TypeMismatch(format!(
                "DateTime takes an RFC 3339 string, {s:?} is not one"
            ))),
            _ => mismatch("an RFC 3339 string"),
        },
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a number with a fraction",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eight_bit_integers_take_exactly_their_range() {
        for (ty, ok, bad) in [
            (
                TagType::Int8,
                [-128.0, 127.0, -3.0],
                [-129.0, 128.0, 1000.0],
            ),
            (TagType::UInt8, [0.0, 255.0, 7.0], [-1.0, 256.0, 1e9]),
        ] {
            for v in ok {
                assert_eq!(convert(ty, &json!(v)).unwrap(), json!(v as i64), "{ty} {v}");
            }
            for v in bad {
                assert!(
                    matches!(
                        convert(ty, &json!(v as i64)),
                        Err(WriteError::OutOfRange(_))
                    ),
                    "{ty} {v}"
                );
                assert!(
                    matches!(convert(ty, &json!(v)), Err(WriteError::OutOfRange(_))),
                    "{ty} {v} as a float"
                );
            }
        }
        assert!(matches!(
            convert(TagType::UInt8, &json!("7")),
            Err(WriteError::TypeMismatch(_))
        ));
    }

    #[test]
    fn conversions_follow_the_contract() {
        assert!(convert(TagType::Bool, &json!(true)).is_ok());
        assert!(matches!(
            convert(TagType::Bool, &json!(1)),
            Err(WriteError::TypeMismatch(_))
        ));
        assert_eq!(convert(TagType::Int16, &json!(5.0)).unwrap(), json!(5));
        assert!(matches!(
            convert(TagType::Int16, &json!(5.5)),
            Err(WriteError::TypeMismatch(_))
        ));
        assert!(matches!(
            convert(TagType::Int16, &json!(40000)),
            Err(WriteError::OutOfRange(_))
        ));
        assert!(matches!(
            convert(TagType::UInt16, &json!(-1)),
            Err(WriteError::OutOfRange(_))
        ));
        assert_eq!(
            convert(TagType::UInt32, &json!(4294967295u64)).unwrap(),
            json!(4294967295u64)
        );
        assert!(matches!(
            convert(TagType::Int64, &json!("5")),
            Err(WriteError::TypeMismatch(_))
        ));
        assert!(matches!(
            convert(TagType::Int64, &json!(1e20)),
            Err(WriteError::OutOfRange(_))
        ));
        assert!(convert(TagType::Float, &json!(1.5)).is_ok());
        assert!(matches!(
            convert(TagType::Float, &json!(1e39)),
            Err(WriteError::OutOfRange(_))
        ));
        assert!(convert(TagType::Double, &json!(1e39)).is_ok());
        assert!(convert(TagType::String, &json!("x")).is_ok());
        assert!(matches!(
            convert(TagType::String, &json!(1)),
            Err(WriteError::TypeMismatch(_))
        ));
        assert!(convert(TagType::DateTime, &json!("2026-01-01T00:00:00Z")).is_ok());
        assert!(matches!(
            convert(TagType::DateTime, &json!("yesterday")),
            Err(WriteError::TypeMismatch(_))
        ));
    }

    #[tokio::test]
    async fn recent_writes_keep_the_last_fifty_with_the_user_where_known() {
        let why = "not in writable_tags";
        WRITE_USER
            .scope(Arc::from("operator"), async {
                audit(
                    "opcua",
                    "RecentTest/A",
                    Some(&serde_json::json!(1)),
                    Outcome::Refused {
                        reason: "not_allowed",
                        why: &why,
                    },
                );
            })
            .await;
        let recent = recent_writes();
        let a = recent
            .iter()
            .rev()
            .find(|w| w.tag == "RecentTest/A")
            .expect("recorded");
        assert_eq!(a.user.as_deref(), Some("operator"));
        assert_eq!(
            (a.sink, a.result, a.value.as_str()),
            ("opcua", "refused", "1")
        );
        assert_eq!(a.error.as_deref(), Some(why));
        for i in 0..(RECENT_WRITES + 10) {
            audit("mqtt", &format!("RecentTest/{i}"), None, Outcome::Accepted);
        }
        let recent = recent_writes();
        assert_eq!(recent.len(), RECENT_WRITES);
        // (Other tests may audit meanwhile: look the newest of ours up.)
        let newest = format!("RecentTest/{}", RECENT_WRITES + 9);
        let last = recent.iter().find(|w| w.tag == newest).expect("kept");
        assert!(
            !recent.iter().any(|w| w.tag == "RecentTest/0"),
            "the oldest went"
        );
        assert_eq!((last.user.as_deref(), last.value.as_str()), (None, "-"));
    }
}
