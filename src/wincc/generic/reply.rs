//! Reading the `generic` dialect's replies (contract §5, §6) leniently:
//! batch reads (through the fast path in `fast` when the reply has the
//! contract's exact shape), tag-list pages, active alarms and write
//! results, on the shared helpers of `wincc::parse`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::{Alarm, BadReason, Reading, TagInfo, TagType};
use crate::wincc::parse::{
    get_any, get_ci, json, object_rows, row_error, row_reading, rows, rows_by_name,
};
use crate::wincc::StationError;

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
    for o in object_rows(rows, &mut skipped) {
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
    use crate::model::{parse_ts, Quality};

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
