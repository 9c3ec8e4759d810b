//! Between the gateway's model and Sparkplug metrics: the datatype of each
//! [`TagType`], a reading's value as a metric value, the `Quality`
//! property, and a DCMD metric's value back as the JSON the guarded write
//! path takes.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::Value as Json;

use super::proto::{DataType, PropertyKind, PropertySet, PropertyValue, Value};
use crate::model::{Quality, TagType};

/// The Sparkplug datatype of a tag type. A total match: a new `TagType`
/// (Int8, UInt8, ...) fails to compile until it has its code here, in
/// [`metric_value`] and in `signed`.
pub(crate) fn datatype(ty: TagType) -> DataType {
    match ty {
        TagType::Bool => DataType::Boolean,
        TagType::Int8 => DataType::Int8,
        TagType::Int16 => DataType::Int16,
        TagType::Int32 => DataType::Int32,
        TagType::Int64 => DataType::Int64,
        TagType::UInt8 => DataType::UInt8,
        TagType::UInt16 => DataType::UInt16,
        TagType::UInt32 => DataType::UInt32,
        TagType::Float => DataType::Float,
        TagType::Double => DataType::Double,
        TagType::String => DataType::String,
        TagType::DateTime => DataType::DateTime,
    }
}

/// The `Quality` property's value: 192 good, 64 uncertain, 0 bad (the
/// OPC DA codes Ignition reads).
pub(crate) fn quality_code(q: Quality) -> u32 {
    match q {
        Quality::Good => 192,
        Quality::Uncertain => 64,
        Quality::Bad => 0,
    }
}

/// The property set `{Quality: Int32 code}`.
pub(crate) fn quality_property(q: Quality) -> PropertySet {
    PropertySet {
        keys: vec!["Quality".into()],
        values: vec![PropertyValue {
            r#type: Some(DataType::Int32.code()),
            is_null: None,
            value: Some(PropertyKind::Int(quality_code(q))),
        }],
    }
}

/// A signed value in `int_value`: two's complement, sign-extended to 32 bits.
fn signed32(i: i64) -> Value {
    Value::Int(i as i32 as u32)
}

/// A station value (the model's JSON) as the metric value of `ty`, or
/// `None` when there is none or it does not fit the type (the metric is
/// then sent with `is_null`).
pub(crate) fn metric_value(ty: TagType, v: &Json) -> Option<Value> {
    match ty {
        TagType::Bool => v.as_bool().map(Value::Boolean),
        TagType::Int8 => int_in(v, i8::MIN as i64, i8::MAX as i64).map(signed32),
        TagType::Int16 => int_in(v, i16::MIN as i64, i16::MAX as i64).map(signed32),
        TagType::Int32 => int_in(v, i32::MIN as i64, i32::MAX as i64).map(signed32),
        TagType::Int64 => v.as_i64().map(|i| Value::Long(i as u64)),
        TagType::UInt8 => int_in(v, 0, u8::MAX as i64).map(|i| Value::Int(i as u32)),
        TagType::UInt16 => int_in(v, 0, u16::MAX as i64).map(|i| Value::Int(i as u32)),
        TagType::UInt32 => int_in(v, 0, u32::MAX as i64).map(|i| Value::Int(i as u32)),
        TagType::Float => v.as_f64().map(|f| Value::Float(f as f32)),
        TagType::Double => v.as_f64().map(Value::Double),
        TagType::String => v.as_str().map(|s| Value::String(s.to_string())),
        TagType::DateTime => v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
            .map(Value::Long),
    }
}

/// An integer in `lo..=hi`, also from a float with no fraction.
fn int_in(v: &Json, lo: i64, hi: i64) -> Option<i64> {
    let i = match v.as_i64() {
        Some(i) => i,
        None => {
            let f = v.as_f64()?;
            if f.fract() != 0.0 || !f.is_finite() {
                return None;
            }
            f as i64
        }
    };
    (lo..=hi).contains(&i).then_some(i)
}

/// A DCMD metric's value as JSON for the guarded write path, read the way
/// `ty` is carried (signed types sign-extended). A value of another kind
/// (a string for an Int32, ...) is passed on as it is, so the write path's
/// type check refuses it with its usual reason.
pub(crate) fn json_value(ty: TagType, v: &Value) -> Json {
    match (signed(ty), v) {
        (true, Value::Int(u)) => return Json::from(*u as i32),
        (true, Value::Long(u)) => return Json::from(*u as i64),
        _ => {}
    }
    match (ty, v) {
        (TagType::DateTime, Value::Long(ms)) => match i64::try_from(*ms)
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        {
            Some(t) => Json::from(t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            None => Json::from(*ms),
        },
        (_, Value::Int(u)) => Json::from(*u),
        (_, Value::Long(u)) => Json::from(*u),
        // The shortest decimal that reads back as the same f32: 0.1f32 is
        // written as 0.1, not 0.10000000149011612.
        (_, Value::Float(f)) => f
            .to_string()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number),
        (_, Value::Double(d)) => serde_json::Number::from_f64(*d).map_or(Json::Null, Json::Number),
        (_, Value::Boolean(b)) => Json::from(*b),
        (_, Value::String(s)) => Json::from(s.as_str()),
        (_, Value::Bytes(_)) => Json::from("(bytes)"),
    }
}

/// Whether `ty` travels as a signed (two's complement) integer. A total
/// match, like [`datatype`].
fn signed(ty: TagType) -> bool {
    match ty {
        TagType::Int8 | TagType::Int16 | TagType::Int32 | TagType::Int64 => true,
        TagType::Bool
        | TagType::UInt8
        | TagType::UInt16
        | TagType::UInt32
        | TagType::Float
        | TagType::Double
        | TagType::String
        | TagType::DateTime => false,
    }
}

/// `t` as ms since the Unix epoch (0 before it).
pub(crate) fn millis(t: &DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_tag_type_has_its_sparkplug_code() {
        let codes: Vec<(TagType, u32)> = TagType::ALL
            .into_iter()
            .map(|t| (t, datatype(t).code()))
            .collect();
        assert_eq!(
            codes,
            vec![
                (TagType::Bool, 11),
                (TagType::Int8, 1),
                (TagType::Int16, 2),
                (TagType::Int32, 3),
                (TagType::Int64, 4),
                (TagType::UInt8, 5),
                (TagType::UInt16, 6),
                (TagType::UInt32, 7),
                (TagType::Float, 9),
                (TagType::Double, 10),
                (TagType::String, 12),
                (TagType::DateTime, 13),
            ]
        );
    }

    #[test]
    fn values_are_carried_as_the_specification_says() {
        assert_eq!(
            metric_value(TagType::Int16, &json!(-1)),
            Some(Value::Int(0xFFFF_FFFF))
        );
        assert_eq!(
            metric_value(TagType::Int32, &json!(-2)),
            Some(Value::Int(0xFFFF_FFFE))
        );
        assert_eq!(metric_value(TagType::Int16, &json!(40000)), None);
        assert_eq!(metric_value(TagType::UInt16, &json!(-1)), None);
        assert_eq!(
            metric_value(TagType::Int64, &json!(-1)),
            Some(Value::Long(u64::MAX))
        );
        assert_eq!(
            metric_value(TagType::UInt32, &json!(4294967295u64)),
            Some(Value::Int(u32::MAX))
        );
        assert_eq!(
            metric_value(TagType::Int32, &json!(5.0)),
            Some(Value::Int(5))
        );
        assert_eq!(metric_value(TagType::Int32, &json!(5.5)), None);
        assert_eq!(
            metric_value(TagType::DateTime, &json!("2026-01-02T03:04:05.678Z")),
            Some(Value::Long(1_767_323_045_678))
        );
        assert_eq!(metric_value(TagType::DateTime, &json!("soon")), None);
        assert_eq!(metric_value(TagType::Bool, &Json::Null), None);
        assert_eq!(
            metric_value(TagType::String, &json!("a")),
            Some(Value::String("a".into()))
        );
    }

    #[test]
    fn command_values_read_back_as_json() {
        assert_eq!(
            json_value(TagType::Int16, &Value::Int(0xFFFF_FFFF)),
            json!(-1)
        );
        assert_eq!(
            json_value(TagType::Int64, &Value::Long(u64::MAX)),
            json!(-1)
        );
        assert_eq!(json_value(TagType::UInt32, &Value::Int(7)), json!(7));
        assert_eq!(json_value(TagType::Float, &Value::Float(0.1)), json!(0.1));
        assert_eq!(
            json_value(TagType::DateTime, &Value::Long(1_767_323_045_678)),
            json!("2026-01-02T03:04:05.678Z")
        );
        // Wrong kinds go through unchanged for the write path to refuse.
        assert_eq!(
            json_value(TagType::Int32, &Value::String("x".into())),
            json!("x")
        );
    }
}
