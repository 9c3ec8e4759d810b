//! The lenient reply reading the REST dialects share (contract §6): keys in
//! any case, `qualityCode`/`qualitycode`, values as number, bool or string,
//! rows missing; but rows are matched to tags by NAME, never by position,
//! and a body that is not the expected JSON is an error, never a panic.
//! Each dialect's own reply shapes are in its `reply.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::StationError;
use crate::model::{parse_ts, BadReason, Quality, Reading};

/// A JSON object's value under `key`, matched exactly first, then ignoring ASCII case.
pub fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The first string found under any of `keys` (any case).
pub fn get_any_str(obj: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    get_any(obj, keys)
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub(crate) fn get_any<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| get_ci(obj, k))
}

/// Parses a body as JSON; empty or invalid bodies are `Malformed`.
pub fn json(body: &[u8]) -> Result<Value, StationError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(StationError::Malformed("empty reply".into()));
    }
    serde_json::from_slice(body).map_err(|e| {
        // serde's message locates the problem without quoting the body at length.
        StationError::Malformed(format!(
            "reply is not valid JSON ({} bytes): {e}",
            body.len()
        ))
    })
}

/// The array under `key` in an object (any case), or the body itself when
/// it is a bare array.
pub(crate) fn rows<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, StationError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Object(o) => match get_ci(o, key) {
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(StationError::Malformed(format!(
                "\"{key}\" is not an array"
            ))),
            None => Err(StationError::Malformed(format!(
                "reply has no \"{key}\" array"
            ))),
        },
        _ => Err(StationError::Malformed(format!(
            "reply is not an object with \"{key}\""
        ))),
    }
}

pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The error of one row, if it carries one. `code` 0 / "0" means success
/// (unified style), as does `errorcode: 0`.
pub(crate) fn row_error(row: &Map<String, Value>) -> Option<BadReason> {
    if let Some(reason) = get_ci(row, "error").and_then(error_value) {
        return Some(reason);
    }
    if let Some(code) = get_ci(row, "errorcode").and_then(text) {
        if code != "0" && !code.is_empty() {
            let message = get_any(row, &["errormessage", "errortext"])
                .and_then(text)
                .unwrap_or_else(|| format!("station error code {code}"));
            return Some(BadReason::TagError { code, message });
        }
    }
    None
}

/// The reason in a row's `error` value, if it is an error: an object with
/// `code` (other than 0) and `message`, or a non-empty text.
pub fn error_value(e: &Value) -> Option<BadReason> {
    match e {
        Value::Null => None,
        Value::Object(o) => {
            let code = get_ci(o, "code")
                .and_then(text)
                .unwrap_or_else(|| "error".into());
            (code != "0").then(|| BadReason::TagError {
                code,
                message: get_ci(o, "message")
                    .and_then(text)
                    .unwrap_or_else(|| "the station reported an error".into()),
            })
        }
        Value::String(s) if s.is_empty() || s == "0" => None,
        other => Some(BadReason::TagError {
            code: "error".into(),
            message: text(other).unwrap_or_else(|| other.to_string()),
        }),
    }
}

/// The normalised quality of a quality word in any case; unknown words are
/// uncertain.
pub fn quality_word(s: &str) -> Quality {
    let s = s.trim();
    if s.eq_ignore_ascii_case("good") {
        Quality::Good
    } else if s.eq_ignore_ascii_case("bad") {
        Quality::Bad
    } else {
        Quality::Uncertain
    }
}

/// OPC/WinCC-style quality byte to the normalised quality.
pub fn quality_from_code(code: u32) -> Quality {
    match code & 0xFF {
        0x80..=0xFF => Quality::Good,
        0x40..=0x7F => Quality::Uncertain,
        _ => Quality::Bad,
    }
}

/// The object rows of a tag list; every other row is named in `skipped`
/// (its first 80 characters) and left out.
pub(crate) fn object_rows<'a>(
    rows: &'a [Value],
    skipped: &mut Vec<String>,
) -> Vec<&'a Map<String, Value>> {
    let mut objects = Vec::with_capacity(rows.len());
    for row in rows {
        match row {
            Value::Object(o) => objects.push(o),
            _ => skipped.push(row.to_string().chars().take(80).collect()),
        }
    }
    objects
}

/// Reply rows (objects) by name as `name_of` finds it; the first row of a
/// name wins. An error when there are rows but none has a name.
pub fn rows_by_name<'a>(
    rows: &'a [Value],
    what: &str,
    name_of: impl Fn(&'a Map<String, Value>) -> Option<&'a str>,
) -> Result<HashMap<&'a str, &'a Map<String, Value>>, StationError> {
    let mut by_name = HashMap::with_capacity(rows.len());
    for row in rows {
        let Value::Object(o) = row else { continue };
        if let Some(n) = name_of(o) {
            by_name.entry(n).or_insert(o);
        }
    }
    if by_name.is_empty() && !rows.is_empty() {
        return Err(StationError::Malformed(format!(
            "none of the {} {what} rows has a name",
            rows.len()
        )));
    }
    Ok(by_name)
}

/// Removes secrets (through `scrub`) from the station's per-tag error
/// messages: a station may echo a request's credentials in them.
pub fn scrub_tag_errors(readings: &mut [Reading], scrub: impl Fn(String) -> String) {
    for r in readings {
        if let Some(BadReason::TagError { message, .. }) = &mut r.error {
            *message = scrub(std::mem::take(message));
        }
    }
}

/// One row of a batch-read reply as the reading of `name` (error rows are bad).
pub fn row_reading(name: &Arc<str>, row: &Map<String, Value>, received: DateTime<Utc>) -> Reading {
    let timestamp = get_any(row, &["timestamp", "time"])
        .and_then(Value::as_str)
        .and_then(parse_ts)
        .unwrap_or(received);
    if let Some(error) = row_error(row) {
        return Reading {
            name: name.clone(),
            value: Value::Null,
            quality: Quality::Bad,
            quality_code: None,
            timestamp,
            error: Some(error),
        };
    }
    let quality_code = get_ci(row, "qualityCode")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok());
    let quality = match get_ci(row, "quality") {
        Some(Value::String(s)) => quality_word(s),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .map(quality_from_code)
            .unwrap_or(Quality::Uncertain),
        Some(Value::Object(o)) => get_ci(o, "quality")
            .and_then(Value::as_str)
            .and_then(Quality::parse)
            .unwrap_or(Quality::Uncertain),
        _ => quality_code.map(quality_from_code).unwrap_or(Quality::Good),
    };
    Reading {
        name: name.clone(),
        value: get_ci(row, "value").cloned().unwrap_or(Value::Null),
        quality,
        quality_code,
        timestamp,
        error: None,
    }
}

/// The error object of an error reply: `(code, message)`.
pub fn error_body(body: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object()?;
    let e = get_ci(o, "error").unwrap_or(&v);
    match e {
        Value::Object(eo) => Some((
            get_ci(eo, "code").and_then(text).unwrap_or_default(),
            get_ci(eo, "message").and_then(text).unwrap_or_default(),
        )),
        Value::String(s) => Some((String::new(), s.clone())),
        _ => None,
    }
}
