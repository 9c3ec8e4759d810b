//! The gateway's data model: tag metadata, readings, change batches and
//! station state. Every dialect's client translates into these types, and
//! every sink consumes them, so that the output is identical whatever the
//! station speaks.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// The data type of a WinCC tag, as the station reports it (contract §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TagType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    Float,
    Double,
    String,
    DateTime,
}

impl TagType {
    pub const ALL: [TagType; 12] = [
        TagType::Bool,
        TagType::Int8,
        TagType::Int16,
        TagType::Int32,
        TagType::Int64,
        TagType::UInt8,
        TagType::UInt16,
        TagType::UInt32,
        TagType::Float,
        TagType::Double,
        TagType::String,
        TagType::DateTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TagType::Bool => "Bool",
            TagType::Int8 => "Int8",
            TagType::Int16 => "Int16",
            TagType::Int32 => "Int32",
            TagType::Int64 => "Int64",
            TagType::UInt8 => "UInt8",
            TagType::UInt16 => "UInt16",
            TagType::UInt32 => "UInt32",
            TagType::Float => "Float",
            TagType::Double => "Double",
            TagType::String => "String",
            TagType::DateTime => "DateTime",
        }
    }

    /// Parses a type name leniently (any case).
    pub fn parse(s: &str) -> Option<TagType> {
        TagType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether the type is one of the integer types (see [`TagType::integer_range`]).
    pub fn is_integer(self) -> bool {
        self.integer_range().is_some()
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, TagType::Bool | TagType::String | TagType::DateTime)
    }

    /// The inclusive range of an integer type, `None` for other types.
    pub fn integer_range(self) -> Option<(i128, i128)> {
        match self {
            TagType::Int8 => Some((i8::MIN as i128, i8::MAX as i128)),
            TagType::Int16 => Some((i16::MIN as i128, i16::MAX as i128)),
            TagType::Int32 => Some((i32::MIN as i128, i32::MAX as i128)),
            TagType::Int64 => Some((i64::MIN as i128, i64::MAX as i128)),
            TagType::UInt8 => Some((0, u8::MAX as i128)),
            TagType::UInt16 => Some((0, u16::MAX as i128)),
            TagType::UInt32 => Some((0, u32::MAX as i128)),
            _ => None,
        }
    }
}

impl fmt::Display for TagType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the station says about one tag (`GET /tags`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: TagType,
    pub writable: bool,
}

/// Normalised quality (contract §3/§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Good,
    Uncertain,
    Bad,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }

    /// Parses the station's quality word leniently (`Good`, `GOOD`, `good`).
    pub fn parse(s: &str) -> Option<Quality> {
        match s.trim().to_ascii_lowercase().as_str() {
            "good" => Some(Quality::Good),
            "uncertain" => Some(Quality::Uncertain),
            "bad" => Some(Quality::Bad),
            _ => None,
        }
    }
}

/// Why a tag is bad, when it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BadReason {
    /// The station could not be reached or answered garbage for the whole request.
    Communication(String),
    /// The station reported an error for this one tag.
    TagError { code: String, message: String },
    /// The tag no longer exists at the station.
    Removed,
}

/// One reading of one tag, as delivered by a station client.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: Arc<str>,
    /// `Null` when the station gave no value (per-tag error).
    pub value: serde_json::Value,
    pub quality: Quality,
    pub quality_code: Option<u32>,
    pub timestamp: DateTime<Utc>,
    pub error: Option<BadReason>,
}

impl Reading {
    /// The reading of a tag a station's reply left out: bad, no value,
    /// error code "missing".
    pub fn missing(name: Arc<str>, at: DateTime<Utc>) -> Reading {
        Reading {
            name,
            value: serde_json::Value::Null,
            quality: Quality::Bad,
            quality_code: None,
            timestamp: at,
            error: Some(BadReason::TagError {
                code: "missing".into(),
                message: "the station's reply has no row for this tag".into(),
            }),
        }
    }
}

/// Lines `readings` up with the requested `names`, by NAME: as they are when
/// they already come in request order, else through a map (the first
/// reading of a name wins), and a name with no reading gets a bad
/// [`Reading::missing`] stamped `at`.
pub fn align_readings(
    names: &[Arc<str>],
    readings: Vec<Reading>,
    at: DateTime<Utc>,
) -> Vec<Reading> {
    // Clients share the requested names, so a pointer check usually settles it.
    let in_order = readings.len() == names.len()
        && readings
            .iter()
            .zip(names)
            .all(|(r, n)| Arc::ptr_eq(&r.name, n) || r.name == *n);
    if in_order {
        return readings;
    }
    let mut by_name: std::collections::HashMap<Arc<str>, Reading> =
        std::collections::HashMap::with_capacity(readings.len());
    for r in readings {
        by_name.entry(r.name.clone()).or_insert(r);
    }
    names
        .iter()
        .map(|n| {
            by_name
                .remove(n)
                .unwrap_or_else(|| Reading::missing(n.clone(), at))
        })
        .collect()
}

/// A change of one tag, published by the poller to every sink.
#[derive(Debug, Clone, PartialEq)]
pub struct TagChange {
    pub name: Arc<str>,
    pub ty: TagType,
    pub value: serde_json::Value,
    pub quality: Quality,
    pub quality_code: Option<u32>,
    /// The station's source timestamp.
    pub timestamp: DateTime<Utc>,
    pub error: Option<BadReason>,
}

impl TagChange {
    /// The MQTT payload of contract §3.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::with_capacity(4);
        m.insert("value".into(), self.value.clone());
        m.insert("quality".into(), self.quality.as_str().into());
        m.insert("timestamp".into(), format_ts(&self.timestamp).into());
        if let Some(code) = self.quality_code {
            m.insert("quality_code".into(), code.into());
        }
        serde_json::Value::Object(m)
    }
}

/// An immutable batch of changes from one poll cycle of one group.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub group: Arc<str>,
    pub changes: Vec<TagChange>,
    /// When the poll response that produced this batch arrived (for latency metrics).
    pub received_at: std::time::Instant,
}

/// Connection state of the station, as published on `{prefix}/station`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationStatus {
    pub connected: bool,
    pub since: DateTime<Utc>,
    pub error: Option<String>,
}

impl StationStatus {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "wincc": if self.connected { "connected" } else { "disconnected" },
            "since": format_ts(&self.since),
            "error": self.error,
        })
    }
}

/// An alarm as the contract's §5 ALARM object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alarm {
    pub id: String,
    pub name: String,
    pub text: String,
    pub class: String,
    pub priority: u32,
    pub state: AlarmState,
    pub raised_at: String,
    pub acknowledged_at: Option<String>,
    pub cleared_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    Raised,
    Acknowledged,
    Cleared,
}

/// RFC 3339, UTC, millisecond precision (contract §3).
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp into UTC.
pub fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Some(t) = parse_utc_fast(s.as_bytes()) {
        return Some(t);
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the form stations (and the gateway)
/// write, without chrono's general parser (it is on the path of every
/// polled row). Anything else (offsets, a leap second, a space instead of
/// `T`) returns `None` and goes to chrono.
fn parse_utc_fast(b: &[u8]) -> Option<DateTime<Utc>> {
    fn num(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    if b.len() < 20 || !matches!(b.last(), Some(b'Z' | b'z')) {
        return None;
    }
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, minute, second) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let frac = &b[19..b.len() - 1];
    let nanos = match frac {
        [] => 0,
        [b'.', digits @ ..] if !digits.is_empty() && digits.len() <= 9 => {
            num(digits)? * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    if second > 59 {
        return None;
    }
    chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?
        .and_hms_nano_opt(hour, minute, second, nanos)
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_type_round_trips_through_its_name() {
        for t in TagType::ALL {
            assert_eq!(TagType::parse(t.as_str()), Some(t));
            assert_eq!(TagType::parse(&t.as_str().to_lowercase()), Some(t));
        }
        assert_eq!(TagType::parse("Quaternion"), None);
    }

    #[test]
    fn eight_bit_types_have_their_exact_ranges() {
        assert_eq!(TagType::Int8.integer_range(), Some((-128, 127)));
        assert_eq!(TagType::UInt8.integer_range(), Some((0, 255)));
        assert_eq!(TagType::parse("uint8"), Some(TagType::UInt8));
        assert_eq!(TagType::parse("Int8"), Some(TagType::Int8));
        assert!(TagType::Int8.is_numeric() && TagType::UInt8.is_integer());
    }

    #[test]
    fn readings_are_matched_by_name_whatever_their_order() {
        let reading = |n: &str, v: i64| Reading {
            name: n.into(),
            value: v.into(),
            quality: Quality::Good,
            quality_code: None,
            timestamp: Utc::now(),
            error: None,
        };
        let names = ["A", "B", "C"];
        let requested: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
        let r = align_readings(
            &requested,
            vec![reading("C", 3), reading("A", 1)],
            Utc::now(),
        );
        assert_eq!(r.iter().map(|r| &*r.name).collect::<Vec<_>>(), names);
        assert_eq!(r[0].value, 1);
        assert_eq!(r[1].quality, Quality::Bad);
        assert_eq!(r[2].value, 3);
    }

    #[test]
    fn the_fast_timestamp_path_agrees_with_chrono() {
        let chrono_parse = |s: &str| {
            DateTime::parse_from_rfc3339(s.trim())
                .ok()
                .map(|t| t.with_timezone(&Utc))
        };
        for s in [
            "2026-01-02T03:04:05.678Z",
            "2026-01-02T03:04:05Z",
            "2026-01-02t03:04:05.1z",
            "2024-02-29T23:59:59.123456789Z",
            " 2026-12-31T00:00:00.000Z ",
            "2026-01-02T03:04:05.678+02:00",
            "2026-01-02 03:04:05.678Z",
            "2016-12-31T23:59:60.000Z",
            "2026-02-30T00:00:00Z",
            "2026-01-02T24:00:00Z",
            "2026-01-02T03:04:05.Z",
            "2026-01-02T03:04:05.1234567890Z",
            "2026-1-02T03:04:05Z",
            "+026-01-02T03:04:05Z",
            "2026-01-02T03:04:05,5Z",
            "not a time at all, really",
        ] {
            assert_eq!(parse_ts(s), chrono_parse(s), "{s:?}");
        }
        assert!(parse_utc_fast(b"2026-01-02T03:04:05.678Z").is_some());
        assert!(parse_utc_fast(b"2026-01-02T03:04:05.678+02:00").is_none());
    }

    #[test]
    fn payload_has_quality_code_only_when_given() {
        let mut c = TagChange {
            name: "A".into(),
            ty: TagType::Double,
            value: 1.5.into(),
            quality: Quality::Good,
            quality_code: None,
            timestamp: parse_ts("2026-01-02T03:04:05.678Z").unwrap(),
            error: None,
        };
        assert_eq!(
            c.to_json().to_string(),
            r#"{"value":1.5,"quality":"good","timestamp":"2026-01-02T03:04:05.678Z"}"#
        );
        c.quality_code = Some(192);
        assert_eq!(c.to_json()["quality_code"], 192);
    }
}
