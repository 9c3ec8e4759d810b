//! Reading the `wincc-v7` station's replies leniently (contract §6): keys
//! in any case, `qualitycode`/`qualityCode`, values as number, bool or
//! string converted to the tag's type, integer `dataType` codes, rows
//! missing or an empty body; rows matched to tags by NAME only.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Map, Value};

use crate::model::{BadReason, Reading, TagInfo, TagType};
use crate::wincc::parse::{self, get_ci};
use crate::wincc::StationError;

/// WinCC's variable-type enum as the `dataType` code (WINCC-DIALECTS.md
/// §10, from the ODK): 1 bit, 2/3 signed/unsigned 8-bit, 4/5 16-bit, 6/7
/// 32-bit, 8 float, 9 double, 10/11 text (8/16-bit characters). The others
/// (12 raw, 13 array, 14 struct, 15-17 bit fields, 18 text reference, ...)
/// have no counterpart: `None`.
pub fn type_from_code(code: i64) -> Option<TagType> {
    Some(match code {
        1 => TagType::Bool,
        2 => TagType::Int8,
        3 => TagType::UInt8,
        4 => TagType::Int16,
        5 => TagType::UInt16,
        6 => TagType::Int32,
        7 => TagType::UInt32,
        8 => TagType::Float,
        9 => TagType::Double,
        10 | 11 => TagType::String,
        _ => return None,
    })
}

/// What the gateway makes of a variable's `dataType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarType {
    /// A type the gateway converts.
    Known(TagType),
    /// A WinCC code with no counterpart: the tag is listed, always bad
    /// ("unsupported WinCC data type N") and never written.
    Unsupported(i64),
}

impl VarType {
    /// The tag type the gateway lists it with: unsupported ones as String
    /// (their value is always null).
    pub fn tag_type(self) -> TagType {
        match self {
            VarType::Known(t) => t,
            VarType::Unsupported(_) => TagType::String,
        }
    }
}

/// The reason given for every reading of a tag of an unsupported type.
pub fn unsupported_reason(code: i64) -> BadReason {
    BadReason::TagError {
        code: "unsupported_type".into(),
        message: format!("unsupported WinCC data type {code}"),
    }
}

/// The type of a row: its integer `dataType` code (a number or a numeric
/// string), else a type name under `dataType`, `typeName`,
/// `dataTypeName` or `type`. A code the gateway cannot map is
/// `Unsupported` unless a type name says what it is.
fn row_type(row: &Map<String, Value>) -> Option<VarType> {
    let code = match get_ci(row, "dataType") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    if let Some(t) = code.and_then(type_from_code) {
        return Some(VarType::Known(t));
    }
    let named = ["dataType", "typeName", "dataTypeName", "type"]
        .iter()
        .find_map(|k| get_ci(row, k).and_then(Value::as_str))
        .and_then(TagType::parse);
    match (named, code) {
        (Some(t), _) => Some(VarType::Known(t)),
        (None, Some(c)) => Some(VarType::Unsupported(c)),
        (None, None) => None,
    }
}

/// Converts a row's value to the tag's type where the JSON type differs
/// (a number sent as a string, a bool as 0/1, ...). A value that cannot be
/// converted is kept as it is.
pub fn convert(ty: TagType, v: Value) -> Value {
    let number = |s: &str| serde_json::from_str::<serde_json::Number>(s.trim()).ok();
    match (ty, &v) {
        (TagType::Bool, Value::Number(n)) => match n.as_f64() {
            Some(0.0) => Value::Bool(false),
            Some(1.0) => Value::Bool(true),
            _ => v,
        },
        (TagType::Bool, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => v,
        },
        (TagType::String | TagType::DateTime, Value::Number(n)) => Value::String(n.to_string()),
        (TagType::String, Value::Bool(b)) => Value::String(b.to_string()),
        (TagType::Float | TagType::Double, Value::String(s)) => number(s).map_or(v, Value::Number),
        (TagType::Float | TagType::Double, Value::Bool(b)) => Value::from(u8::from(*b)),
        (
            TagType::Int8
            | TagType::Int16
            | TagType::Int32
            | TagType::Int64
            | TagType::UInt8
            | TagType::UInt16
            | TagType::UInt32,
            _,
        ) => {
            let n = match &v {
                Value::String(s) => number(s),
                Value::Number(n) => Some(n.clone()),
                Value::Bool(b) => Some(u8::from(*b).into()),
                _ => None,
            };
            match n {
                Some(n) if n.is_i64() || n.is_u64() => Value::Number(n),
                Some(n) => match n.as_f64() {
                    Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Value::from(x as i64),
                    _ => v,
                },
                None => v,
            }
        }
        _ => v,
    }
}

/// One page of `GET tagManagement/Variables`.
pub struct VariablePage {
    /// Tags whose type is known (unsupported ones included, see [`VarType`]).
    pub tags: Vec<(TagInfo, VarType)>,
    /// Named rows that say nothing about their type: the client learns it
    /// from a read (the `Values` rows carry `dataType`).
    pub untyped: Vec<(String, bool)>,
    /// Rows that are not variables at all (no name, not an object).
    pub skipped: Vec<String>,
    /// Where the next page starts; `None` on the last page.
    pub continuation: Option<String>,
}

/// Writability of a `Variables` row. No published client reads such a
/// field (WINCC-DIALECTS.md §10), so its absence means writable and the
/// station's answer to a write decides; only an explicit `false` (any
/// spelling: `writable`, `readOnly`, `accessRights`) makes it read-only.
fn row_writable(o: &Map<String, Value>) -> bool {
    let flag = |v: &Value| match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    };
    if let Some(w) = get_ci(o, "writable").and_then(flag) {
        return w;
    }
    if let Some(ro) = get_ci(o, "readOnly").and_then(flag) {
        return !ro;
    }
    match get_ci(o, "accessRights").and_then(Value::as_str) {
        Some(a) => {
            let a = a.to_ascii_lowercase();
            !a.contains("read") || a.contains("write")
        }
        None => true,
    }
}

/// Parses a browse page: a bare array, or an object with the rows under
/// `variables` / `items` / `values` (any case) and `continuationPoint`.
pub fn variable_page(body: &[u8]) -> Result<VariablePage, StationError> {
    let v = parse::json(body)?;
    let (rows, continuation) = match &v {
        Value::Array(a) => (a, None),
        Value::Object(o) => {
            let rows = ["variables", "items", "values", "tags"]
                .iter()
                .find_map(|k| get_ci(o, k).and_then(Value::as_array))
                .ok_or_else(|| {
                    StationError::Malformed("the variable list has no array of variables".into())
                })?;
            let cont = match get_ci(o, "continuationPoint") {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            (rows, cont)
        }
        _ => {
            return Err(StationError::Malformed(
                "the variable list is not JSON array or object".into(),
            ))
        }
    };
    let mut tags = Vec::with_capacity(rows.len());
    let mut untyped = Vec::new();
    let mut skipped = Vec::new();
    for o in parse::object_rows(rows, &mut skipped) {
        let Some(name) = parse::get_any_str(o, &["variableName", "name"]) else {
            skipped.push("(a row without a name)".into());
            continue;
        };
        let writable = row_writable(o);
        match row_type(o) {
            Some(vt) => tags.push((
                TagInfo {
                    name,
                    ty: vt.tag_type(),
                    writable,
                },
                vt,
            )),
            None => untyped.push((name, writable)),
        }
    }
    Ok(VariablePage {
        tags,
        untyped,
        skipped,
        continuation,
    })
}

/// The types of the rows of a `POST tagManagement/Values` reply, by name
/// (how the client learns the type of a variable browsing did not type).
pub fn value_types(body: &[u8]) -> Result<HashMap<String, VarType>, StationError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(HashMap::new());
    }
    let v = parse::json(body)?;
    let rows = rows_of(&v)?;
    Ok(rows
        .iter()
        .filter_map(Value::as_object)
        .filter_map(|o| {
            let name = get_ci(o, "variableName")
                .or_else(|| get_ci(o, "name"))
                .and_then(Value::as_str)?;
            Some((name.to_string(), row_type(o)?))
        })
        .collect())
}

/// The rows of a `Values` reply: a bare array, or one under `values` /
/// `variables` / `items`.
fn rows_of(v: &Value) -> Result<&Vec<Value>, StationError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Object(o) => ["values", "variables", "items"]
            .iter()
            .find_map(|k| get_ci(o, k).and_then(Value::as_array))
            .ok_or_else(|| StationError::Malformed("the reply is not an array of rows".into())),
        _ => Err(StationError::Malformed(
            "the reply is not an array of rows".into(),
        )),
    }
}

/// Parses a `POST tagManagement/Values` reply: one reading per requested
/// name, in the order of `names`, rows matched by name; an empty body means
/// every row is missing. Also returns how many rows were missing.
pub fn values(
    body: &[u8],
    names: &[Arc<str>],
    types: &HashMap<String, VarType>,
    received: chrono::DateTime<chrono::Utc>,
) -> Result<(Vec<Reading>, usize), StationError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        let all = names
            .iter()
            .map(|n| Reading::missing(n.clone(), received))
            .collect();
        return Ok((all, names.len()));
    }
    let v = parse::json(body)?;
    let rows = rows_of(&v)?;
    let by_name = parse::rows_by_name(rows, "tagManagement/Values", |o| {
        get_ci(o, "variableName")
            .or_else(|| get_ci(o, "name"))
            .and_then(Value::as_str)
    })?;
    let mut missing = 0;
    let readings = names
        .iter()
        .map(|n| match by_name.get(&**n) {
            None => {
                missing += 1;
                Reading::missing(n.clone(), received)
            }
            Some(row) => {
                let mut r = parse::row_reading(n, row, received);
                if r.error.is_none() {
                    if r.quality_code.is_none() {
                        // The quality byte as a string ("192"), or a bare
                        // numeric "quality".
                        let code = ["qualitycode", "quality"]
                            .iter()
                            .filter_map(|k| get_ci(row, k))
                            .find_map(|v| match v {
                                Value::Number(n) => n.as_u64(),
                                Value::String(s) => s.trim().parse::<u64>().ok(),
                                _ => None,
                            })
                            .and_then(|c| u32::try_from(c).ok());
                        if let Some(c) = code {
                            r.quality_code = Some(c);
                            r.quality = parse::quality_from_code(c);
                        }
                    }
                    // The browse's type decides; a row's own code only
                    // converts (a code it cannot map leaves the value as
                    // it is: the browse reports such tags, once).
                    let ty = types
                        .get(&**n)
                        .copied()
                        .or_else(|| row_type(row).filter(|t| matches!(t, VarType::Known(_))));
                    match ty {
                        Some(VarType::Known(ty)) => {
                            r.value = convert(ty, std::mem::take(&mut r.value));
                        }
                        Some(VarType::Unsupported(code)) => {
                            r.value = Value::Null;
                            r.quality = crate::model::Quality::Bad;
                            r.error = Some(unsupported_reason(code));
                        }
                        None => {}
                    }
                }
                r
            }
        })
        .collect();
    Ok((readings, missing))
}

/// The result of `PUT tagManagement/Value/{name}`: a non-zero `errorcode`
/// (any case) is a refusal with that code, as is any other 4xx answer; an
/// empty 2xx body or `errorcode` 0 is success.
pub fn write_result(status: StatusCode, body: &[u8]) -> Result<(), StationError> {
    let v = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match parse::json(body) {
            Ok(v) => Some(v),
            Err(e) if status.is_success() => return Err(e),
            Err(_) => None,
        }
    };
    let o = v.as_ref().and_then(Value::as_object);
    let text = |k: &str| {
        o.and_then(|o| get_ci(o, k)).and_then(|v| match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(e) => get_ci(e, "message")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        })
    };
    let message = text("error")
        .or_else(|| text("errorText"))
        .or_else(|| text("message"));
    match text("errorcode") {
        Some(code) if code != "0" => Err(StationError::Refused {
            message: message.unwrap_or_else(|| format!("station error code {code}")),
            code,
        }),
        _ if !status.is_success() => Err(StationError::Refused {
            code: status.as_u16().to_string(),
            message: message
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").into()),
        }),
        Some(_) => Ok(()),
        None => match message {
            Some(m) => Err(StationError::Refused {
                code: "error".into(),
                message: m,
            }),
            None => Ok(()),
        },
    }
}

/// The rows of a `PUT tagManagement/Values` reply, by variable name: each
/// row's `errorcode` read like a single write's.
pub fn batch_write_results(
    status: StatusCode,
    body: &[u8],
) -> Result<HashMap<String, Result<(), StationError>>, StationError> {
    if !status.is_success() {
        return Err(write_result(status, body)
            .err()
            .unwrap_or_else(|| StationError::Http {
                status: status.as_u16(),
                message: "batch write failed".into(),
            }));
    }
    let v = parse::json(body)?;
    let rows = v.as_array().ok_or_else(|| {
        StationError::Malformed("a batch write reply must be a JSON array of rows".into())
    })?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let Some(o) = row.as_object() else { continue };
        let Some(name) = get_ci(o, "variableName").and_then(Value::as_str) else {
            continue;
        };
        let bytes = serde_json::to_vec(row).unwrap_or_default();
        out.insert(name.to_string(), write_result(StatusCode::OK, &bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;
    use serde_json::json;

    fn names(n: &[&str]) -> Vec<Arc<str>> {
        n.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn rows_by_name_any_case_strings_converted_missing_counted() {
        let body = br#"[
          {"VariableName":"B","DataType":1,"Value":"true","QualityCode":128,"ErrorCode":0},
          {"variableName":"A","dataType":9,"value":"21.5","timestamp":"2026-01-01T00:00:00.000Z","qualitycode":72,"errorcode":0},
          {"variableName":"E","error":"unknown variable"},
          {"variableName":"I","dataType":99,"value":"7","qualitycode":192},
          {"variableName":"S","dataType":10,"value":5,"QualityCode":"72"}]"#;
        let types = HashMap::from([("I".to_string(), VarType::Known(TagType::Int32))]);
        let now = chrono::Utc::now();
        let (r, missing) =
            values(body, &names(&["A", "B", "C", "E", "I", "S"]), &types, now).unwrap();
        assert_eq!(missing, 1);
        assert_eq!(r[0].value, json!(21.5));
        assert_eq!(r[0].quality, Quality::Uncertain);
        assert_eq!(r[0].quality_code, Some(72));
        assert_eq!(r[1].value, json!(true));
        assert_eq!(r[1].quality, Quality::Good);
        assert_eq!(r[2].quality, Quality::Bad);
        assert_eq!(r[3].quality, Quality::Bad);
        assert_eq!(r[4].value, json!(7));
        assert_eq!(r[4].quality_code, Some(192));
        assert_eq!(r[5].value, json!("5"));
        assert_eq!(
            (r[5].quality, r[5].quality_code),
            (Quality::Uncertain, Some(72))
        );
        let (r, missing) = values(b" ", &names(&["A", "B"]), &types, now).unwrap();
        assert_eq!((r.len(), missing), (2, 2));
        assert!(r.iter().all(|r| r.quality == Quality::Bad));
        for garbage in [&b"{"[..], b"42", b"[1,2]", b"{\"x\":1}"] {
            assert!(values(garbage, &names(&["A"]), &types, now).is_err());
        }
    }

    #[test]
    fn conversions_follow_the_type() {
        assert_eq!(convert(TagType::Int16, json!("12")), json!(12));
        assert_eq!(convert(TagType::Int32, json!(5.0)), json!(5));
        assert_eq!(convert(TagType::Bool, json!(0)), json!(false));
        assert_eq!(convert(TagType::String, json!(3)), json!("3"));
        assert_eq!(convert(TagType::Double, json!("x")), json!("x"));
        assert_eq!(convert(TagType::Double, json!(2)), json!(2));
    }

    #[test]
    fn browse_pages_carry_continuation_points() {
        let p = variable_page(br#"{"variables":[{"variableName":"A","dataType":9,"writable":true},{"variableName":"B","dataType":77},{"variableName":"C","dataType":77,"typeName":"Int64"},{"variableName":"D"},{"dataType":1}],"continuationPoint":"3"}"#).unwrap();
        assert_eq!(p.tags.len(), 3);
        assert_eq!(p.tags[0].0.ty, TagType::Double);
        assert_eq!(p.tags[1].1, VarType::Unsupported(77));
        assert_eq!(p.tags[2].0.ty, TagType::Int64);
        assert_eq!(p.untyped, vec![("D".to_string(), true)]);
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.continuation.as_deref(), Some("3"));
        let p = variable_page(br#"{"Variables":[],"continuationPoint":null}"#).unwrap();
        assert!(p.continuation.is_none());
    }

    #[test]
    fn writability_is_absent_unless_the_row_says_read_only() {
        let p = variable_page(
            br#"[{"variableName":"A","dataType":4},
                 {"variableName":"B","dataType":4,"writable":false},
                 {"variableName":"C","dataType":4,"ReadOnly":"true"},
                 {"variableName":"D","dataType":4,"accessRights":"ReadWrite"},
                 {"variableName":"E","dataType":4,"accessRights":"Read"}]"#,
        )
        .unwrap();
        let w: Vec<bool> = p.tags.iter().map(|(t, _)| t.writable).collect();
        assert_eq!(w, vec![true, false, false, true, false]);
    }

    #[test]
    fn data_type_codes_follow_the_wincc_enum() {
        let codes: Vec<Option<TagType>> = (0..=19).map(type_from_code).collect();
        assert_eq!(codes[1], Some(TagType::Bool));
        assert_eq!(codes[2], Some(TagType::Int8));
        assert_eq!(codes[3], Some(TagType::UInt8));
        assert_eq!(codes[4], Some(TagType::Int16));
        assert_eq!(codes[5], Some(TagType::UInt16));
        assert_eq!(codes[7], Some(TagType::UInt32));
        assert_eq!(
            (codes[10], codes[11]),
            (Some(TagType::String), Some(TagType::String))
        );
        for c in [0, 12, 13, 14, 15, 16, 17, 18, 19] {
            assert_eq!(codes[c], None, "code {c}");
        }
        // A tag browsed as unsupported is bad with the reason, whatever its value.
        let types = HashMap::from([("R".to_string(), VarType::Unsupported(12))]);
        let body = br#"[{"variableName":"R","dataType":12,"value":"AAEC","qualitycode":128},
                        {"variableName":"S","dataType":"3","value":"200","qualitycode":128}]"#;
        let (r, _) = values(body, &names(&["R", "S"]), &types, chrono::Utc::now()).unwrap();
        assert_eq!(r[0].quality, Quality::Bad);
        assert_eq!(r[0].value, Value::Null);
        assert!(
            matches!(&r[0].error, Some(BadReason::TagError { message, .. }) if message == "unsupported WinCC data type 12")
        );
        assert_eq!(
            (r[1].value.clone(), r[1].quality),
            (json!(200), Quality::Good)
        );
        // Not browsed: the row's unknown code leaves the value as it is.
        let (r, _) = values(body, &names(&["R"]), &HashMap::new(), chrono::Utc::now()).unwrap();
        assert_eq!(
            (r[0].value.clone(), r[0].quality),
            (json!("AAEC"), Quality::Good)
        );
        assert_eq!(
            value_types(body).unwrap().get("S"),
            Some(&VarType::Known(TagType::UInt8))
        );
    }
}
