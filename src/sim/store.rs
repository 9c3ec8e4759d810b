//! The simulated station's tag store: a `Vec` of tags with a name → index
//! map, pre-serialised names and timestamps, so that answering a batch read
//! is a lookup and a `memcpy` per tag. Shared by every dialect.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use rand::Rng;
use serde_json::Value;

use super::names::{self, Behaviour, TagSpec};
use crate::model::{Quality, TagInfo, TagType};

/// A tag's current value, in the tag's own type.
#[derive(Debug, Clone, PartialEq)]
pub enum SimValue {
    Bool(bool),
    /// Every integer type (range-checked on the way in).
    Int(i64),
    Float(f32),
    Double(f64),
    Text(String),
    Time(DateTime<Utc>),
}

impl SimValue {
    /// The value as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            SimValue::Bool(b) => Value::Bool(*b),
            SimValue::Int(i) => Value::from(*i),
            SimValue::Float(_) => {
                // As a client parses it: f32 printed shortest, read back as f64.
                let mut buf = Vec::with_capacity(16);
                self.write_json(&mut buf);
                serde_json::from_slice(&buf).unwrap_or(Value::Null)
            }
            SimValue::Double(d) => Value::from(*d),
            SimValue::Text(s) => Value::String(s.clone()),
            SimValue::Time(t) => Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail, and no non-finite number is ever stored.
        match self {
            SimValue::Bool(true) => out.extend_from_slice(b"true"),
            SimValue::Bool(false) => out.extend_from_slice(b"false"),
            SimValue::Int(i) => drop(serde_json::to_writer(&mut *out, i)),
            SimValue::Float(f) => drop(serde_json::to_writer(&mut *out, f)),
            SimValue::Double(d) => drop(serde_json::to_writer(&mut *out, d)),
            SimValue::Text(s) => drop(serde_json::to_writer(&mut *out, s)),
            SimValue::Time(t) => {
                out.push(b'"');
                out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Millis, true).as_bytes());
                out.push(b'"');
            }
        }
    }
}

/// Why the station refused a value for one tag (the per-tag error object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagError {
    /// `UnknownTag`, `ReadOnly`, `TypeMismatch` or `OutOfRange`.
    pub code: &'static str,
    pub message: String,
}

impl TagError {
    pub fn unknown(name: &str) -> Self {
        TagError {
            code: "UnknownTag",
            message: format!("tag {name:?} does not exist"),
        }
    }

    /// Writes `{"code":..,"message":..}`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"code\":\"");
        out.extend_from_slice(self.code.as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        let _ = serde_json::to_writer(&mut *out, &self.message);
        out.push(b'}');
    }
}

/// Longest string a String tag accepts, like a WinCC text tag.
pub const MAX_TEXT_LEN: usize = 255;

/// Checks a written JSON value against the tag's type like a real station
/// does (same rules as contract §7) and converts it.
pub fn check_value(ty: TagType, v: &Value) -> Result<SimValue, TagError> {
    let mismatch = |want: &str| TagError {
        code: "TypeMismatch",
        message: format!("{ty} takes {want}, got {}", kind(v)),
    };
    let range = |what: String| TagError {
        code: "OutOfRange",
        message: what,
    };
    match ty {
        TagType::Bool => v
            .as_bool()
            .map(SimValue::Bool)
            .ok_or_else(|| mismatch("a bool")),
        TagType::Int8
        | TagType::Int16
        | TagType::Int32
        | TagType::Int64
        | TagType::UInt8
        | TagType::UInt16
        | TagType::UInt32 => {
            let Value::Number(n) = v else {
                return Err(mismatch("an integer"));
            };
            let (lo, hi) = ty
                .integer_range()
                .unwrap_or((i64::MIN as i128, i64::MAX as i128));
            let i = if let Some(i) = n.as_i64() {
                i as i128
            } else if let Some(u) = n.as_u64() {
                u as i128
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() != 0.0 || !f.is_finite() {
                    return Err(mismatch("an integer"));
                }
                if f < lo as f64 || f > hi as f64 {
                    return Err(range(format!("{f} is outside {ty} ({lo}..={hi})")));
                }
                f as i128
            };
            if i < lo || i > hi {
                return Err(range(format!("{i} is outside {ty} ({lo}..={hi})")));
            }
            Ok(SimValue::Int(i as i64))
        }
        TagType::Float => {
            let f = v.as_f64().ok_or_else(|| mismatch("a number"))?;
            if f.abs() > f32::MAX as f64 {
                return Err(range(format!("{f} is outside the Float (f32) range")));
            }
            Ok(SimValue::Float(f as f32))
        }
        TagType::Double => v
            .as_f64()
            .map(SimValue::Double)
            .ok_or_else(|| mismatch("a number")),
        TagType::String => match v {
            Value::String(s) if s.chars().count() > MAX_TEXT_LEN => Err(range(format!(
                "text of {} characters is longer than {MAX_TEXT_LEN}",
                s.chars().count()
            ))),
            Value::String(s) => Ok(SimValue::Text(s.clone())),
            _ => Err(mismatch("a string")),
        },
        TagType::DateTime => match v {
            Value::String(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| SimValue::Time(t.with_timezone(&Utc)))
                .map_err(|_| mismatch("an RFC 3339 timestamp")),
            _ => Err(mismatch("an RFC 3339 timestamp string")),
        },
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One simulated tag.
#[derive(Debug, Clone)]
pub struct SimTag {
    pub info: TagInfo,
    /// The name as a JSON string literal, quotes included.
    json_name: Box<str>,
    pub value: SimValue,
    pub quality: Quality,
    pub quality_code: Option<u32>,
    ts_ms: i64,
    /// `ts_ms` as RFC 3339 UTC with milliseconds (always 24 ASCII bytes).
    ts_text: [u8; 24],
    behaviour: Behaviour,
}

impl SimTag {
    fn new(info: TagInfo, value: SimValue, behaviour: Behaviour, now: DateTime<Utc>) -> Self {
        let json_name = serde_json::to_string(&info.name)
            .unwrap_or_default()
            .into_boxed_str();
        let mut t = SimTag {
            info,
            json_name,
            value,
            quality: Quality::Good,
            quality_code: None,
            ts_ms: 0,
            ts_text: [b'0'; 24],
            behaviour,
        };
        t.stamp(now.timestamp_millis(), &ts_text(now));
        t
    }

    fn stamp(&mut self, ms: i64, text: &[u8; 24]) {
        self.ts_ms = ms;
        self.ts_text = *text;
    }

    /// The source timestamp.
    pub fn timestamp(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.ts_ms)
            .single()
            .unwrap_or_default()
    }

    /// Appends `{"name":N,"value":V,"quality":Q[,"qualityCode":C],"timestamp":TS}`.
    pub fn write_reading(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":");
        out.extend_from_slice(self.json_name.as_bytes());
        out.extend_from_slice(b",\"value\":");
        self.value.write_json(out);
        out.extend_from_slice(match self.quality {
            Quality::Good => b",\"quality\":\"Good\"",
            Quality::Uncertain => b",\"quality\":\"Uncertain\"",
            Quality::Bad => b",\"quality\":\"Bad\"",
        });
        if let Some(code) = self.quality_code {
            out.extend_from_slice(b",\"qualityCode\":");
            let _ = serde_json::to_writer(&mut *out, &code);
        }
        out.extend_from_slice(b",\"timestamp\":\"");
        out.extend_from_slice(&self.ts_text);
        out.extend_from_slice(b"\"}");
    }

    /// Appends `{"name":N,"type":T,"writable":B}`.
    pub fn write_info(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":");
        out.extend_from_slice(self.json_name.as_bytes());
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(self.info.ty.as_str().as_bytes());
        out.extend_from_slice(if self.info.writable {
            b"\",\"writable\":true}"
        } else {
            b"\",\"writable\":false}"
        });
    }

    /// Appends the name as a JSON string.
    pub fn write_name(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.json_name.as_bytes());
    }

    fn random_step(&mut self, rng: &mut impl Rng, now: DateTime<Utc>) {
        let ty = self.info.ty;
        self.value = match (self.behaviour, &self.value) {
            (Behaviour::Toggle, SimValue::Bool(b)) => SimValue::Bool(!b),
            (Behaviour::Counter { step }, SimValue::Int(i)) => {
                let (_, hi) = ty.integer_range().unwrap_or((0, i64::MAX as i128));
                let next = *i as i128 + rng.random_range(0..=step.max(1)) as i128;
                SimValue::Int(if next > hi { 0 } else { next as i64 })
            }
            (Behaviour::Choice(set), _) if !set.is_empty() => {
                SimValue::Text(set[rng.random_range(0..set.len())].to_string())
            }
            (Behaviour::Now, _) => SimValue::Time(now),
            (Behaviour::Walk { lo, hi }, v) => {
                let cur = match v {
                    SimValue::Int(i) => *i as f64,
                    SimValue::Float(f) => *f as f64,
                    SimValue::Double(d) => *d,
                    _ => lo,
                };
                let step = (hi - lo) * 0.02 * rng.random_range(-1.0..=1.0);
                walk_value(ty, (cur + step).clamp(lo, hi))
            }
            (_, v) => v.clone(),
        };
    }
}

fn walk_value(ty: TagType, x: f64) -> SimValue {
    match ty {
        TagType::Float => SimValue::Float(((x * 100.0).round() / 100.0) as f32),
        TagType::Double => SimValue::Double((x * 1000.0).round() / 1000.0),
        TagType::Bool => SimValue::Bool(x >= 0.5),
        _ => {
            let (lo, hi) = ty
                .integer_range()
                .unwrap_or((i64::MIN as i128, i64::MAX as i128));
            SimValue::Int((x.round() as i128).clamp(lo, hi) as i64)
        }
    }
}

fn initial_value(spec: &TagSpec, rng: &mut impl Rng, now: DateTime<Utc>) -> SimValue {
    let ty = spec.info.ty;
    match spec.behaviour {
        Behaviour::Toggle => SimValue::Bool(rng.random_bool(0.5)),
        Behaviour::Counter { .. } => SimValue::Int(rng.random_range(0..60_000)),
        Behaviour::Choice(set) if !set.is_empty() => {
            SimValue::Text(set[rng.random_range(0..set.len())].to_string())
        }
        Behaviour::Choice(_) => SimValue::Text(String::new()),
        Behaviour::Now => {
            SimValue::Time(now - chrono::Duration::seconds(rng.random_range(0..86_400 * 30)))
        }
        Behaviour::Walk { lo, hi } => walk_value(ty, rng.random_range(lo..=hi)),
    }
}

fn ts_text(t: DateTime<Utc>) -> [u8; 24] {
    let s = t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut out = [b'0'; 24];
    if s.len() == 24 {
        out.copy_from_slice(s.as_bytes());
    }
    out
}

/// Every tag of the simulated station.
#[derive(Debug, Default)]
pub struct TagStore {
    tags: Vec<SimTag>,
    index: HashMap<Box<str>, usize>,
}

impl TagStore {
    /// `n` generated tags with initial values, deterministic for the seed.
    pub fn generate(n: usize, seed: u64) -> Self {
        let mut rng =
            <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ 0x7661_6c75_6573);
        let now = Utc::now();
        let mut store = TagStore::default();
        store.tags.reserve(n);
        for spec in names::generate(n, seed) {
            let value = initial_value(&spec, &mut rng, now);
            store.push(SimTag::new(spec.info, value, spec.behaviour, now));
        }
        store
    }

    fn push(&mut self, tag: SimTag) {
        self.index
            .insert(tag.info.name.clone().into_boxed_str(), self.tags.len());
        self.tags.push(tag);
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// All tags, in listing order.
    pub fn tags(&self) -> &[SimTag] {
        &self.tags
    }

    pub fn get(&self, name: &str) -> Option<&SimTag> {
        self.index.get(name).map(|&i| &self.tags[i])
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut SimTag> {
        self.index.get(name).map(|&i| &mut self.tags[i])
    }

    /// Appends one reading row for `name` to a `values` array: the reading,
    /// or `{"name":N,"error":{"code":"UnknownTag",..}}`.
    pub fn write_row(&self, name: &str, out: &mut Vec<u8>) {
        match self.get(name) {
            Some(tag) => tag.write_reading(out),
            None => {
                out.extend_from_slice(b"{\"name\":");
                let _ = serde_json::to_writer(&mut *out, name);
                out.extend_from_slice(b",\"error\":");
                TagError::unknown(name).write_json(out);
                out.push(b'}');
            }
        }
    }

    /// A client write: unknown, read-only and ill-typed values are refused.
    pub fn write(&mut self, name: &str, v: &Value) -> Result<(), TagError> {
        let tag = self.get_mut(name).ok_or_else(|| TagError::unknown(name))?;
        if !tag.info.writable {
            return Err(TagError {
                code: "ReadOnly",
                message: format!("tag {name:?} is read-only"),
            });
        }
        tag.value = check_value(tag.info.ty, v)?;
        let now = Utc::now();
        tag.stamp(now.timestamp_millis(), &ts_text(now));
        tag.quality = Quality::Good;
        tag.quality_code = None;
        Ok(())
    }

    /// Sets a value (if given) and quality regardless of writability (test
    /// helper path); the timestamp becomes now.
    pub fn force(
        &mut self,
        name: &str,
        v: Option<&Value>,
        quality: Quality,
        code: Option<u32>,
    ) -> Result<(), TagError> {
        let tag = self.get_mut(name).ok_or_else(|| TagError::unknown(name))?;
        if let Some(v) = v {
            tag.value = check_value(tag.info.ty, v)?;
        }
        tag.quality = quality;
        tag.quality_code = code;
        let now = Utc::now();
        tag.stamp(now.timestamp_millis(), &ts_text(now));
        Ok(())
    }

    /// Adds a tag; refuses duplicates and values that do not fit the type.
    pub fn add(&mut self, info: TagInfo, v: &Value) -> Result<(), TagError> {
        if self.index.contains_key(info.name.as_str()) {
            return Err(TagError {
                code: "Duplicate",
                message: format!("tag {:?} already exists", info.name),
            });
        }
        let value = check_value(info.ty, v)?;
        let behaviour = names::default_behaviour(info.ty);
        self.push(SimTag::new(info, value, behaviour, Utc::now()));
        Ok(())
    }

    /// Removes a tag, keeping the listing order of the others.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(i) = self.index.remove(name) else {
            return false;
        };
        self.tags.remove(i);
        for (j, t) in self.tags.iter().enumerate().skip(i) {
            if let Some(slot) = self.index.get_mut(t.info.name.as_str()) {
                *slot = j;
            }
        }
        true
    }

    /// Changes `count` random read-only tags (writable tags keep what the
    /// operator set). About 1 in 50 changes turns the tag Uncertain.
    pub fn tick(&mut self, count: usize, rng: &mut impl Rng, now: DateTime<Utc>) -> usize {
        if self.tags.is_empty() {
            return 0;
        }
        let text = ts_text(now);
        let ms = now.timestamp_millis();
        let mut changed = 0;
        let len = self.tags.len();
        for _ in 0..count {
            // From a random start, the next read-only tag; all-writable
            // stores change nothing.
            let start = rng.random_range(0..len);
            let Some(i) = (0..len)
                .map(|k| (start + k) % len)
                .find(|&i| !self.tags[i].info.writable)
            else {
                break;
            };
            let tag = &mut self.tags[i];
            tag.random_step(rng, now);
            if rng.random_range(0..50) == 0 {
                tag.quality = Quality::Uncertain;
                tag.quality_code = Some([0x48, 0x4C, 0x54][rng.random_range(0..3)]);
            } else {
                tag.quality = Quality::Good;
                tag.quality_code = None;
            }
            tag.stamp(ms, &text);
            changed += 1;
        }
        changed
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
