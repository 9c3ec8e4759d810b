//! A fast path for batch-read replies in the contract's exact shape
//! (`{"values":[{"name","value","quality","qualityCode","timestamp","error"}]}`).
//!
//! Typed, borrowing deserialisation avoids building a `serde_json::Value`
//! tree per row. Nothing lenient is lost: any other key (another case, a
//! dialect's spelling, an extra field) makes the typed parse fail and the
//! caller falls back to the lenient parser in [`super::reply`], which reads
//! the same body again. Rows are still matched by name: positionally only
//! when every row's name equals the requested name at that position,
//! through a map otherwise.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::model::{align_readings, parse_ts, Quality, Reading};
use crate::wincc::parse::{error_value, quality_from_code, quality_word};

/// A string borrowed from the body when it has no escapes. (serde borrows
/// a `Cow<str>` field marked `borrow`, but not one inside an `Option`:
/// that one would be copied into a fresh `String` for every row.)
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default, borrow)]
    quality: Option<Str<'a>>,
    #[serde(default, rename = "qualityCode")]
    quality_code: Option<u32>,
    #[serde(default, borrow)]
    timestamp: Option<Str<'a>>,
    #[serde(default)]
    error: Option<Value>,
}

impl Row<'_> {
    /// The row's reading; `name` is the requested name when it is the same
    /// (shared, not copied), else the row's own.
    fn reading(self, requested: Option<&Arc<str>>, received: DateTime<Utc>) -> Reading {
        let timestamp = self
            .timestamp
            .as_ref()
            .and_then(|t| parse_ts(&t.0))
            .unwrap_or(received);
        let name = match requested {
            Some(n) if **n == *self.name => n.clone(),
            _ => Arc::from(&*self.name),
        };
        if let Some(error) = self.error.as_ref().and_then(error_value) {
            return Reading {
                name,
                value: Value::Null,
                quality: Quality::Bad,
                quality_code: None,
                timestamp,
                error: Some(error),
            };
        }
        let quality = match (&self.quality, self.quality_code) {
            (Some(q), _) => quality_word(&q.0),
            (None, Some(code)) => quality_from_code(code),
            (None, None) => Quality::Good,
        };
        Reading {
            name,
            value: self.value.unwrap_or(Value::Null),
            quality,
            quality_code: self.quality_code,
            timestamp,
            error: None,
        }
    }
}

/// The reply object: exactly one key, `values`.
struct ReplySeed<'n> {
    names: &'n [Arc<str>],
    received: DateTime<Utc>,
}

impl<'de> DeserializeSeed<'de> for ReplySeed<'_> {
    type Value = Vec<Reading>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReplySeed<'_> {
    type Value = Vec<Reading>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with only a `values` array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = None;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            if key.0 != "values" || out.is_some() {
                return Err(A::Error::custom("not the contract's reply shape"));
            }
            out = Some(map.next_value_seed(RowsSeed {
                names: self.names,
                received: self.received,
            })?);
        }
        out.ok_or_else(|| A::Error::missing_field("values"))
    }
}

/// The `values` array, each row turned into its reading as it is parsed
/// (no intermediate vector of rows).
struct RowsSeed<'n> {
    names: &'n [Arc<str>],
    received: DateTime<Utc>,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = Vec<Reading>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = Vec<Reading>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(self.names.len());
        while let Some(row) = seq.next_element::<Row<'de>>()? {
            out.push(row.reading(self.names.get(out.len()), self.received));
        }
        Ok(out)
    }
}

/// The readings for `names`, or `None` when the body is not exactly in the
/// contract's shape (the caller then parses it leniently).
pub fn values(body: &[u8], names: &[Arc<str>], received: DateTime<Utc>) -> Option<Vec<Reading>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let rows = ReplySeed { names, received }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(align_readings(names, rows, received))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BadReason;

    fn names(n: &[&str]) -> Vec<Arc<str>> {
        n.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn the_contract_shape_takes_the_fast_path_and_agrees_with_the_lenient_one() {
        let body = br#"{"values":[
            {"name":"A","value":1.5,"quality":"Good","timestamp":"2026-01-01T00:00:00.000Z"},
            {"name":"B\u00fc","value":"x","quality":"Uncertain","qualityCode":72,"timestamp":"2026-01-01T00:00:01.000Z"},
            {"name":"C","error":{"code":"UnknownTag","message":"no C"}}]}"#;
        let now = Utc::now();
        for order in [names(&["A", "Bü", "C"]), names(&["C", "D", "A", "Bü"])] {
            let fast = values(body, &order, now).expect("fast path");
            // The lenient parser, fed a body the fast path refuses, must agree.
            let lenient = super::super::reply::values(
                &String::from_utf8_lossy(body)
                    .replace("\"values\"", "\"VALUES\"")
                    .into_bytes(),
                &order,
                now,
            )
            .unwrap();
            assert_eq!(fast, lenient);
        }
        let r = values(body, &names(&["C", "D", "A"]), now).unwrap();
        assert!(
            matches!(&r[0].error, Some(BadReason::TagError { code, .. }) if code == "UnknownTag")
        );
        assert!(matches!(&r[1].error, Some(BadReason::TagError { code, .. }) if code == "missing"));
        assert_eq!(r[2].value, serde_json::json!(1.5));
    }

    #[test]
    fn any_other_shape_is_left_to_the_lenient_parser() {
        let now = Utc::now();
        let n = names(&["A"]);
        for body in [
            &br#"{"values":[{"name":"A","Quality":"Bad","value":1}]}"#[..],
            br#"{"values":[{"name":"A","qualitycode":0,"value":1}]}"#,
            br#"[{"name":"A","value":1}]"#,
            br#"{"values":[{"name":"A","value":1}],"more":1}"#,
            br#"{"values":[{"name":"A","value":1,"qualityCode":-1}]}"#,
            b"{\"values\":[{\"name\":\"A\",\"val",
            b"",
        ] {
            assert!(
                values(body, &n, now).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
