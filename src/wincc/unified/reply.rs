//! Lenient reading of WinCC Unified GraphQL replies (WINCC-DIALECTS.md §2):
//! `errors[]`, `Session`, `TagValueResult`, `BrowseTagsResult`,
//! `WriteTagValuesResult` and `ActiveAlarm`. Rows are matched by name,
//! error codes are strings ("0" or a null error means success), and
//! anything that is not the expected JSON is an error, never a panic.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::model::TagType;
use crate::model::{format_ts, parse_ts, Alarm, AlarmState, BadReason, Quality, Reading, TagInfo};
use crate::wincc::parse::{get_ci, object_rows, quality_from_code, text};
use crate::wincc::StationError;

/// What a GraphQL error means to the client, from its `extensions.code`
/// alone (never from the words of its message, which vary by version and
/// language).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GqlErrorKind {
    /// `UNAUTHENTICATED`: no session, or it ended. Log in again.
    Unauthenticated,
    /// `FORBIDDEN`: the session is alive but its user lacks the runtime
    /// right "Openness Runtime - read and write access". No new login.
    Forbidden,
    /// Anything else (syntax, arguments, filter, ...): the request failed.
    Other,
}

/// The first entry of a GraphQL `errors[]` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GqlError {
    /// `extensions.code`, or "graphql".
    pub code: String,
    pub message: String,
    pub kind: GqlErrorKind,
}

/// The right a Unified user needs for the gateway's operations.
pub const OPENNESS_RIGHT: &str = "Openness Runtime - read and write access";

/// The kind of an `extensions.code` (any case).
pub fn error_kind(code: &str) -> GqlErrorKind {
    match code.trim().to_ascii_uppercase().as_str() {
        "UNAUTHENTICATED" => GqlErrorKind::Unauthenticated,
        "FORBIDDEN" => GqlErrorKind::Forbidden,
        _ => GqlErrorKind::Other,
    }
}

/// The request-level error of a reply, if it has a non-empty `errors[]`.
/// When several errors are given, one that is about auth or rights wins.
pub fn graphql_errors(v: &Value) -> Option<GqlError> {
    let errors = v
        .as_object()
        .and_then(|o| get_ci(o, "errors"))?
        .as_array()?;
    let parsed: Vec<GqlError> = errors.iter().map(one_error).collect();
    let rank = |e: &GqlError| match e.kind {
        GqlErrorKind::Unauthenticated => 0,
        GqlErrorKind::Forbidden => 1,
        GqlErrorKind::Other => 2,
    };
    parsed.into_iter().min_by_key(rank)
}

fn one_error(e: &Value) -> GqlError {
    let o = e.as_object();
    let mut message = o
        .and_then(|o| get_ci(o, "message"))
        .and_then(Value::as_str)
        .unwrap_or("unnamed GraphQL error")
        .chars()
        .take(500)
        .collect::<String>();
    if let Some(path) = o.and_then(|o| get_ci(o, "path")).and_then(Value::as_array) {
        let path: Vec<String> = path.iter().filter_map(text).collect();
        if !path.is_empty() {
            message = format!("{message} (at {})", path.join("."));
        }
    }
    let code = o
        .and_then(|o| get_ci(o, "extensions"))
        .and_then(Value::as_object)
        .and_then(|e| get_ci(e, "code"))
        .and_then(text)
        .unwrap_or_else(|| "graphql".into());
    GqlError {
        kind: error_kind(&code),
        code,
        message,
    }
}

/// `data.<root>` of a reply without errors.
pub fn data_root(v: Value, root: &str) -> Result<Value, StationError> {
    let Value::Object(mut o) = v else {
        return Err(StationError::Malformed(
            "GraphQL reply is not an object".into(),
        ));
    };
    match o.remove("data") {
        Some(Value::Object(mut d)) => d
            .remove(root)
            .ok_or_else(|| StationError::Malformed(format!("GraphQL reply has no data.{root}"))),
        _ => Err(StationError::Malformed(
            "GraphQL reply has neither data nor errors".into(),
        )),
    }
}

/// The `Error{code, description}` of a row: `None` for success (null
/// error, missing error, or code "0").
pub fn row_error(row: &Map<String, Value>) -> Option<(String, String)> {
    match get_ci(row, "error")? {
        Value::Null => None,
        Value::Object(e) => {
            let code = get_ci(e, "code").and_then(text).unwrap_or_default();
            if code == "0" || code.is_empty() && get_ci(e, "description").is_none() {
                return None;
            }
            let code = if code.is_empty() { "1".into() } else { code };
            let description = get_ci(e, "description")
                .or_else(|| get_ci(e, "message"))
                .and_then(text)
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| format!("station error code {code}"));
            Some((code, description))
        }
        other => Some(("1".into(), text(other).unwrap_or_else(|| other.to_string()))),
    }
}

/// Why a `Session` is no good.
#[derive(Debug)]
pub enum SessionError {
    /// `error.code` other than "0" (e.g. "101" incorrect credentials), or no session at all.
    Refused(String),
    Malformed(String),
}

/// A `Session` object: its token and lifetime (from `expires`, when it
/// parses and lies in the future).
pub fn session(v: &Value) -> Result<(String, Option<Duration>), SessionError> {
    let o = match v {
        Value::Object(o) => o,
        Value::Null => {
            return Err(SessionError::Refused(
                "the station returned no session".into(),
            ))
        }
        _ => {
            return Err(SessionError::Malformed(
                "the session is not an object".into(),
            ))
        }
    };
    if let Some((code, description)) = row_error(o) {
        return Err(SessionError::Refused(format!(
            "error {code}: {description}"
        )));
    }
    let token = get_ci(o, "token").and_then(Value::as_str).unwrap_or("");
    if token.is_empty() {
        return Err(SessionError::Malformed("the session has no token".into()));
    }
    let lifetime = get_ci(o, "expires")
        .and_then(Value::as_str)
        .and_then(parse_ts)
        .and_then(|t| (t - Utc::now()).to_std().ok())
        .filter(|d| !d.is_zero());
    Ok((token.to_string(), lifetime))
}

fn rows<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, StationError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Err(StationError::Malformed(format!("{what} returned null"))),
        _ => Err(StationError::Malformed(format!("{what} is not a list"))),
    }
}

/// The normalised quality of a `Quality` object (or a raw number), and the
/// raw code where the station gives a numeric one.
fn quality(v: Option<&Value>) -> (Quality, Option<u32>) {
    let q = match v {
        Some(Value::Object(o)) => get_ci(o, "quality"),
        other => other,
    };
    match q {
        None | Some(Value::Null) => (Quality::Good, None),
        Some(Value::Number(n)) => match n.as_u64().and_then(|c| u32::try_from(c).ok()) {
            Some(c) => (quality_from_code(c), Some(c)),
            None => (Quality::Uncertain, None),
        },
        Some(Value::String(s)) => {
            let s = s.trim().to_ascii_uppercase();
            let q = if s.starts_with("GOOD") {
                Quality::Good
            } else if s.starts_with("UNCERTAIN") {
                Quality::Uncertain
            } else if s.starts_with("BAD") {
                Quality::Bad
            } else {
                Quality::Uncertain
            };
            (q, None)
        }
        Some(_) => (Quality::Uncertain, None),
    }
}

/// A timestamp, `None` when absent, unreadable or the "unset" epoch.
fn timestamp(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(parse_ts)
        .filter(|t| t.timestamp_millis() != 0)
}

/// `tagValues` rows → one reading per requested name, in the order of
/// `names`, matched by name; a row with an error code is that tag bad.
pub fn tag_values(
    v: &Value,
    names: &[Arc<str>],
    received: DateTime<Utc>,
) -> Result<Vec<Reading>, StationError> {
    let rows = rows(v, "tagValues")?;
    let by_name = crate::wincc::parse::rows_by_name(rows, "tagValues", |o| {
        get_ci(o, "name").and_then(Value::as_str)
    })?;
    Ok(names
        .iter()
        .map(|n| match by_name.get(&**n) {
            None => Reading::missing(n.clone(), received),
            Some(row) => reading(n, row, received),
        })
        .collect())
}

fn reading(name: &Arc<str>, row: &Map<String, Value>, received: DateTime<Utc>) -> Reading {
    let value = get_ci(row, "value").and_then(Value::as_object);
    let ts = value.and_then(|v| timestamp(get_ci(v, "timestamp")));
    if let Some((code, message)) = row_error(row) {
        return Reading {
            name: name.clone(),
            value: Value::Null,
            quality: Quality::Bad,
            quality_code: None,
            timestamp: ts.unwrap_or(received),
            error: Some(BadReason::TagError { code, message }),
        };
    }
    let Some(value) = value else {
        return Reading {
            error: Some(BadReason::TagError {
                code: "missing".into(),
                message: "the station's row has no value".into(),
            }),
            ..Reading::missing(name.clone(), received)
        };
    };
    let (quality, quality_code) = quality(get_ci(value, "quality"));
    Reading {
        name: name.clone(),
        value: get_ci(value, "value").cloned().unwrap_or(Value::Null),
        quality,
        quality_code,
        timestamp: ts.unwrap_or(received),
        error: None,
    }
}

/// Unified (TIA/S7-style) data type names → ours; our own names are
/// accepted too. 64-bit unsigned types have no counterpart and give `None`.
pub fn unified_type(s: &str) -> Option<TagType> {
    let t = match s.trim().to_ascii_lowercase().as_str() {
        "bool" => TagType::Bool,
        "sint" | "int8" => TagType::Int8,
        "usint" | "byte" | "uint8" => TagType::UInt8,
        "int" | "int16" => TagType::Int16,
        "dint" | "int32" => TagType::Int32,
        "lint" | "int64" => TagType::Int64,
        "uint" | "word" | "uint16" => TagType::UInt16,
        "udint" | "dword" | "uint32" => TagType::UInt32,
        "real" | "float" => TagType::Float,
        "lreal" | "double" => TagType::Double,
        "string" | "wstring" | "char" | "wchar" => TagType::String,
        "datetime" | "date_and_time" | "dtl" | "ldt" | "ldate_and_time" => TagType::DateTime,
        _ => return TagType::parse(s),
    };
    Some(t)
}

/// Our type → the Unified name the simulator reports.
pub fn unified_type_name(t: TagType) -> &'static str {
    match t {
        TagType::Bool => "Bool",
        TagType::Int8 => "SInt",
        TagType::UInt8 => "USInt",
        TagType::Int16 => "Int",
        TagType::Int32 => "DInt",
        TagType::Int64 => "LInt",
        TagType::UInt16 => "UInt",
        TagType::UInt32 => "UDInt",
        TagType::Float => "Real",
        TagType::Double => "LReal",
        TagType::String => "WString",
        TagType::DateTime => "DateTime",
    }
}

/// `browse` rows → tags. Unified's browse says nothing about access
/// rights, so every tag is listed writable (the station decides at write
/// time; the gateway's `writable_tags` still applies). Structure tags and
/// unknown types are skipped (named in the second vector).
pub fn browse(v: &Value) -> Result<(Vec<TagInfo>, Vec<String>), StationError> {
    let rows = rows(v, "browse")?;
    let mut tags = Vec::with_capacity(rows.len());
    let mut skipped = Vec::new();
    for o in object_rows(rows, &mut skipped) {
        let Some(name) = get_ci(o, "name").and_then(Value::as_str) else {
            skipped.push("(a row without a name)".into());
            continue;
        };
        let structure = get_ci(o, "objectType")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("STRUCTURETAG"));
        match get_ci(o, "dataType")
            .and_then(Value::as_str)
            .and_then(unified_type)
        {
            Some(ty) if !structure => tags.push(TagInfo {
                name: name.to_string(),
                ty,
                writable: true,
            }),
            _ => skipped.push(name.to_string()),
        }
    }
    Ok((tags, skipped))
}

/// The `writeTagValues` result for `name`: `Ok` for code "0", the
/// station's refusal (e.g. "201" cannot convert) otherwise.
pub fn write_result(v: &Value, name: &str) -> Result<(), StationError> {
    let rows = rows(v, "writeTagValues")?;
    let row = rows
        .iter()
        .filter_map(Value::as_object)
        .find(|o| get_ci(o, "name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| {
            StationError::Malformed("writeTagValues has no result for the tag".into())
        })?;
    match row_error(row) {
        None => Ok(()),
        Some((code, message)) => Err(StationError::Refused { code, message }),
    }
}

fn alarm(o: &Map<String, Value>) -> Result<Option<Alarm>, String> {
    let name = get_ci(o, "name")
        .and_then(Value::as_str)
        .ok_or("an alarm without a name")?;
    let state = match get_ci(o, "state").and_then(Value::as_str).unwrap_or("") {
        "RAISED" => AlarmState::Raised,
        "RAISED_ACKNOWLEDGED" => AlarmState::Acknowledged,
        "RAISED_CLEARED" | "RAISED_ACKNOWLEDGED_CLEARED" | "RAISED_CLEARED_ACKNOWLEDGED" => {
            AlarmState::Cleared
        }
        "NORMAL" | "REMOVED" => return Ok(None),
        other => return Err(format!("alarm {name:?} has an unknown state {other:?}")),
    };
    let instance = get_ci(o, "instanceID")
        .and_then(text)
        .unwrap_or_else(|| "0".into());
    let ts = |k: &str| timestamp(get_ci(o, k)).map(|t| format_ts(&t));
    let raised_at = ts("raiseTime")
        .or_else(|| ts("modificationTime"))
        .ok_or_else(|| format!("alarm {name:?} has no raiseTime"))?;
    let text_of = |k: &str| match get_ci(o, k) {
        Some(Value::Array(a)) => a.first().and_then(text).unwrap_or_default(),
        Some(v) => text(v).unwrap_or_default(),
        None => String::new(),
    };
    let priority = get_ci(o, "priority")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0);
    Ok(Some(Alarm {
        id: format!("{name}@{instance}"),
        name: name.to_string(),
        text: text_of("eventText"),
        class: text_of("alarmClassName"),
        priority,
        state,
        raised_at,
        acknowledged_at: ts("acknowledgmentTime"),
        cleared_at: ts("clearTime"),
    }))
}

/// `activeAlarms` rows → alarms (id `name@instanceID`); rows that do not
/// parse are returned as their error text in the second vector.
pub fn alarms(v: &Value) -> Result<(Vec<Alarm>, Vec<String>), StationError> {
    let rows = rows(v, "activeAlarms")?;
    let mut out = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        match row
            .as_object()
            .ok_or_else(|| "an alarm that is not an object".to_string())
            .and_then(alarm)
        {
            Ok(Some(a)) => out.push(a),
            Ok(None) => {}
            Err(e) => bad.push(e),
        }
    }
    Ok((out, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_by_name_quality_and_error_codes() {
        let v = json!([
            {"name":"B","value":{"value":2,"timestamp":"2026-01-01T00:00:00.000Z","quality":{"quality":"GOOD_CASCADE","subStatus":"NON_SPECIFIC"}},"error":{"code":"0","description":""}},
            {"name":"A","value":{"value":1.5,"timestamp":"1970-01-01T00:00:00.000Z","quality":{"quality":"UNCERTAIN","subStatus":"SUBSTITUTE_VALUE"}},"error":null},
            {"name":"X","value":null,"error":{"code":"2","description":"Cannot resolve provided name"}},
            {"name":"N","value":{"value":3,"quality":{"quality":72}}}
        ]);
        let now = Utc::now();
        let names: Vec<Arc<str>> = ["A", "B", "C", "X", "N"]
            .iter()
            .map(|s| Arc::from(*s))
            .collect();
        let r = tag_values(&v, &names, now).unwrap();
        assert_eq!(
            (r[0].quality, r[0].timestamp, r[0].quality_code),
            (Quality::Uncertain, now, None)
        );
        assert_eq!(r[1].value, json!(2));
        assert_eq!(r[1].quality, Quality::Good);
        assert_eq!(r[1].timestamp, parse_ts("2026-01-01T00:00:00Z").unwrap());
        assert!(matches!(&r[2].error, Some(BadReason::TagError { code, .. }) if code == "missing"));
        assert!(
            matches!(&r[3].error, Some(BadReason::TagError { code, message }) if code == "2" && message.starts_with("Cannot"))
        );
        assert_eq!(r[3].quality, Quality::Bad);
        assert_eq!(
            (r[4].quality, r[4].quality_code),
            (Quality::Uncertain, Some(72))
        );
        for bad in [json!(null), json!({"a":1}), json!([1, 2])] {
            assert!(tag_values(&bad, &names, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_sessions_and_types() {
        let e = graphql_errors(
            &json!({"errors":[{"message":"Unauthorized","extensions":{"code":"UNAUTHENTICATED"}}]}),
        )
        .unwrap();
        assert_eq!(e.kind, GqlErrorKind::Unauthenticated);
        let e = graphql_errors(&json!({"errors":[{"message":"Syntax Error"}]})).unwrap();
        assert!(e.kind == GqlErrorKind::Other && e.code == "graphql");
        // By code, never by words: a message about a "session" or a "token"
        // is not an auth error, "Access denied" with FORBIDDEN is a right.
        let e = graphql_errors(&json!({"errors":[{"message":"invalid session token argument","extensions":{"code":"BAD_USER_INPUT"}}]})).unwrap();
        assert_eq!(e.kind, GqlErrorKind::Other);
        let e = graphql_errors(&json!({"errors":[
            {"message":"x","extensions":{"code":"301"}},
            {"message":"Access denied","path":["tagValues"],"extensions":{"code":"FORBIDDEN"}}]}))
        .unwrap();
        assert_eq!(e.kind, GqlErrorKind::Forbidden);
        assert_eq!(e.message, "Access denied (at tagValues)");
        assert!(graphql_errors(&json!({"data":{}, "errors":[]})).is_none());
        let later = format_ts(&(Utc::now() + chrono::Duration::seconds(100)));
        let (t, l) = session(&json!({"token":"abc","expires":later,"error":{"code":"0"}})).unwrap();
        assert_eq!(t, "abc");
        assert!(l.unwrap() > Duration::from_secs(90));
        assert!(
            matches!(session(&json!({"token":null,"error":{"code":"101","description":"Incorrect credentials"}})), Err(SessionError::Refused(m)) if m.contains("101"))
        );
        assert!(matches!(
            session(&json!({"token":""})),
            Err(SessionError::Malformed(_))
        ));
        for t in TagType::ALL {
            assert_eq!(unified_type(unified_type_name(t)), Some(t));
        }
        assert_eq!(unified_type("ULInt"), None);
        assert_eq!(unified_type("SInt"), Some(TagType::Int8));
        assert_eq!(unified_type("USInt"), Some(TagType::UInt8));
        assert_eq!(unified_type("Byte"), Some(TagType::UInt8));
    }

    #[test]
    fn alarms_and_writes() {
        let v = json!([{"name":"S::T:A1","instanceID":3,"alarmClassName":"Alarm","priority":5,"state":"RAISED_ACKNOWLEDGED",
            "eventText":["Too hot"],"raiseTime":"2026-01-01T00:00:00.000Z","acknowledgmentTime":"2026-01-01T00:00:01.000Z","clearTime":"1970-01-01T00:00:00.000Z"},
            {"name":"S::T:A2","state":"NORMAL"}, {"state":"RAISED"}]);
        let (a, bad) = alarms(&v).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(bad.len(), 1);
        assert_eq!(a[0].id, "S::T:A1@3");
        assert_eq!(a[0].state, AlarmState::Acknowledged);
        assert_eq!(a[0].text, "Too hot");
        assert_eq!(a[0].cleared_at, None);
        assert_eq!(
            a[0].acknowledged_at.as_deref(),
            Some("2026-01-01T00:00:01.000Z")
        );
        let w = json!([{"name":"A","error":{"code":"201","description":"Cannot convert"}},{"name":"B","error":{"code":"0"}}]);
        assert!(
            matches!(write_result(&w, "A"), Err(StationError::Refused { code, .. }) if code == "201")
        );
        assert!(write_result(&w, "B").is_ok());
        assert!(matches!(
            write_result(&w, "C"),
            Err(StationError::Malformed(_))
        ));
    }
}
