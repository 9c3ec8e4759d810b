//! Lenient reading of station replies (contract §6): keys in any case,
//! `qualityCode`/`qualitycode`, values as number, bool or string, rows
//! missing; but rows are matched to tags by NAME, never by position, and a
//! body that is not the expected JSON is an error, never a panic.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::StationError;
use crate::model::{parse_ts, Alarm, BadReason, Quality, Reading, TagInfo, TagType};

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

fn get_any<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
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
fn rows<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, StationError> {
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

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The error of one row, if it carries one. `code` 0 / "0" means success
/// (unified style), as does `errorcode: 0`.
fn row_error(row: &Map<String, Value>) -> Option<BadReason> {
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

/// Parses a batch-read reply into one reading per requested name, in the
/// order of `names`, matching rows by name.
pub fn values(
    body: &[u8],
    names: &[Arc<str>],
    received: DateTime<Utc>,
) -> Result<Vec<Reading>, StationError> {
    if let Some(r) = super::fast::values(body, names, received) {
        return Ok(r);
    }
    let v = json(body)?;
    let rows = rows(&v, "values")?;
    let by_name = rows_by_name(rows, "values", |o| {
        get_any(o, &["name", "variableName"]).and_then(Value::as_str)
    })?;
    Ok(names
        .iter()
        .map(|n| match by_name.get(&**n) {
            Some(row) => row_reading(n, row, received),
            None => Reading::missing(n.clone(), received),
        })
        .collect())
}

/// One page of `GET /tags`: the tags understood, the number of rows in the
/// page (including skipped ones) and the station's `total`, if given.
pub struct TagPage {
    pub tags: Vec<TagInfo>,
    pub rows: usize,
    pub total: Option<usize>,
    pub skipped: Vec<String>,
}

/// Parses one page of the tag list. Rows with an unknown type are skipped
/// (and named in `skipped`); a reply that is not a tag list is malformed.
pub fn tag_page(body: &[u8]) -> Result<TagPage, StationError> {
    let v = json(body)?;
    let rows = rows(&v, "tags")?;
    let total = match &v {
        Value::Object(o) => get_ci(o, "total")
            .and_then(Value::as_u64)
            .map(|t| t as usize),
        _ => None,
    };
    let mut tags = Vec::with_capacity(rows.len());
    let mut skipped = Vec::new();
    for row in rows {
        let Value::Object(o) = row else {
            skipped.push(row.to_string().chars().take(80).collect());
            continue;
        };
        let Some(name) = get_any(o, &["name", "variableName"]).and_then(Value::as_str) else {
            skipped.push("(a row without a name)".into());
            continue;
        };
        let ty = get_any(o, &["type", "dataType"])
            .and_then(Value::as_str)
            .and_then(TagType::parse);
        let Some(ty) = ty else {
            skipped.push(name.to_string());
            continue;
        };
        let writable = match get_ci(o, "writable") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        tags.push(TagInfo {
            name: name.to_string(),
            ty,
            writable,
        });
    }
    Ok(TagPage {
        tags,
        rows: rows.len(),
        total,
        skipped,
    })
}

/// Parses `GET /alarms/current`; alarms that do not parse are returned as
/// their error text in the second vector.
pub fn alarms(body: &[u8]) -> Result<(Vec<Alarm>, Vec<String>), StationError> {
    let v = json(body)?;
    let rows = rows(&v, "alarms")?;
    let mut out = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        let mut row = row.clone();
        // Contract §5: an alarm id may be a JSON number or a string.
        if let Some(id) = row.get_mut("id").filter(|v| v.is_number()) {
            *id = Value::String(id.to_string());
        }
        match serde_json::from_value::<Alarm>(row) {
            Ok(a) => out.push(a),
            Err(e) => bad.push(e.to_string()),
        }
    }
    Ok((out, bad))
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

/// The result of a single write: `Ok` when the station says `ok: true`
/// (or gives an `errorcode` of 0), the station's refusal otherwise.
pub fn write_result(body: &[u8]) -> Result<(), StationError> {
    // Some stations answer a write with an empty 200/204.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v = json(body)?;
    let Value::Object(o) = &v else {
        return Err(StationError::Malformed(
            "write reply is not an object".into(),
        ));
    };
    if let Some(BadReason::TagError { code, message }) = row_error(o) {
        return Err(StationError::Refused { code, message });
    }
    match get_ci(o, "ok") {
        Some(Value::Bool(false)) => Err(StationError::Refused {
            code: "refused".into(),
            message: "the station answered ok: false".into(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_ids_may_be_json_numbers_or_strings() {
        let row = |id: &str| {
            format!(
                r#"{{"id":{id},"name":"A","text":"T","class":"Alarm","priority":1,"state":"raised","raisedAt":"2026-01-01T00:00:00.000Z"}}"#
            )
        };
        let body = format!(r#"{{"alarms":[{},{}]}}"#, row("42"), row("\"7\""));
        let (alarms, bad) = alarms(body.as_bytes()).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        let ids: Vec<&str> = alarms.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["42", "7"]);
    }

    fn names(n: &[&str]) -> Vec<Arc<str>> {
        n.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn rows_match_by_name_not_position_and_missing_ones_are_bad() {
        let body = br#"{"values":[
            {"name":"B","value":2,"quality":"Good","timestamp":"2026-01-01T00:00:00.000Z"},
            {"name":"A","value":1.5,"quality":"uncertain","qualityCode":72},
            {"name":"X","error":{"code":"404","message":"unknown tag"}}]}"#;
        let now = Utc::now();
        let r = values(body, &names(&["A", "B", "C", "X"]), now).unwrap();
        assert_eq!(&*r[0].name, "A");
        assert_eq!(r[0].value, serde_json::json!(1.5));
        assert_eq!(r[0].quality, Quality::Uncertain);
        assert_eq!(r[0].quality_code, Some(72));
        assert_eq!(r[0].timestamp, now);
        assert_eq!(r[1].value, serde_json::json!(2));
        assert_eq!(r[1].timestamp, parse_ts("2026-01-01T00:00:00Z").unwrap());
        assert_eq!(r[2].quality, Quality::Bad);
        assert!(matches!(&r[2].error, Some(BadReason::TagError { code, .. }) if code == "missing"));
        assert!(
            matches!(&r[3].error, Some(BadReason::TagError { code, message }) if code == "404" && message == "unknown tag")
        );
    }

    #[test]
    fn keys_in_any_case_and_wincc_v7_style_rows() {
        let body = br#"[{"variableName":"A","Value":"7","qualitycode":128,"errorcode":0},
                        {"VARIABLENAME":"B","errorcode":5}]"#;
        let r = values(body, &names(&["A", "B"]), Utc::now()).unwrap();
        assert_eq!(r[0].value, serde_json::json!("7"));
        assert_eq!(r[0].quality, Quality::Good);
        assert_eq!(r[0].quality_code, Some(128));
        assert!(r[0].error.is_none());
        assert_eq!(r[1].quality, Quality::Bad);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for body in [
            &b""[..],
            b"   ",
            b"{\"values\":[{\"name\":\"A\",\"val",
            b"null",
            b"42",
            b"{\"values\":7}",
            b"{\"other\":[]}",
            b"{\"values\":[1,2,3]}",
            b"\xff\xfe",
        ] {
            let r = values(body, &names(&["A"]), Utc::now());
            assert!(
                matches!(r, Err(StationError::Malformed(_))),
                "{:?} → {r:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn tag_pages_skip_unknown_types() {
        let p = tag_page(br#"{"tags":[{"name":"A","type":"Double","writable":true},{"name":"B","type":"Quaternion"},{"name":"C","type":"bool"}],"total":3}"#).unwrap();
        assert_eq!(p.tags.len(), 2);
        assert_eq!(p.rows, 3);
        assert_eq!(p.total, Some(3));
        assert_eq!(p.skipped, vec!["B".to_string()]);
        assert!(p.tags[0].writable && !p.tags[1].writable);
    }

    #[test]
    fn write_results() {
        assert!(write_result(br#"{"name":"A","ok":true}"#).is_ok());
        assert!(write_result(b"").is_ok());
        assert!(
            matches!(write_result(br#"{"name":"A","ok":false,"error":{"code":"7","message":"no"}}"#), Err(StationError::Refused { code, .. }) if code == "7")
        );
        assert!(matches!(
            write_result(br#"{"ok":false}"#),
            Err(StationError::Refused { .. })
        ));
        assert!(matches!(
            write_result(b"[garbage"),
            Err(StationError::Malformed(_))
        ));
    }
}
