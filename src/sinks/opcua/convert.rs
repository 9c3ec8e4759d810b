//! Conversions between the gateway's JSON values and OPC UA types.
//!
//! Station → client: a [`TagChange`] becomes a [`DataValue`] whose Variant
//! has exactly the variable's DataType, with the station's source timestamp.
//! Client → station: a written [`Variant`] must have exactly the tag's type
//! (OPC UA `Bad_TypeMismatch` otherwise, the crate itself lets scalar
//! mismatches through) and becomes the JSON the guarded write path expects.

use chrono::{DateTime as ChronoDateTime, Utc};
use opcua::types::{DataTypeId, DataValue, DateTime, StatusCode, UAString, Variant};
use serde_json::Value;

use crate::model::{BadReason, Quality, TagChange, TagType};
use crate::writes::WriteError;

/// The OPC UA DataType of a station type.
pub fn data_type(ty: TagType) -> DataTypeId {
    match ty {
        TagType::Bool => DataTypeId::Boolean,
        TagType::Int8 => DataTypeId::SByte,
        TagType::Int16 => DataTypeId::Int16,
        TagType::Int32 => DataTypeId::Int32,
        TagType::Int64 => DataTypeId::Int64,
        TagType::UInt8 => DataTypeId::Byte,
        TagType::UInt16 => DataTypeId::UInt16,
        TagType::UInt32 => DataTypeId::UInt32,
        TagType::Float => DataTypeId::Float,
        TagType::Double => DataTypeId::Double,
        TagType::String => DataTypeId::String,
        TagType::DateTime => DataTypeId::DateTime,
    }
}

/// Why a station value could not be given to OPC UA clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueError {
    /// The JSON value has the wrong kind for the tag's type.
    TypeMismatch,
    /// A number outside the type's range.
    OutOfRange,
}

impl ValueError {
    pub fn status(self) -> StatusCode {
        match self {
            ValueError::TypeMismatch => StatusCode::BadTypeMismatch,
            ValueError::OutOfRange => StatusCode::BadOutOfRange,
        }
    }
}

/// Converts the station's JSON value to a Variant of the tag's type.
/// Lenient where stations vary (numbers sent as strings, bools as 0/1),
/// never lossy: a fraction for an integer tag or an out-of-range number is
/// an error, not a rounded value.
pub fn json_to_variant(ty: TagType, v: &Value) -> Result<Variant, ValueError> {
    match ty {
        TagType::Bool => match v {
            Value::Bool(b) => Ok(Variant::Boolean(*b)),
            Value::Number(n) => match n.as_f64() {
                Some(0.0) => Ok(Variant::Boolean(false)),
                Some(1.0) => Ok(Variant::Boolean(true)),
                _ => Err(ValueError::TypeMismatch),
            },
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Variant::Boolean(true)),
                "false" | "0" => Ok(Variant::Boolean(false)),
                _ => Err(ValueError::TypeMismatch),
            },
            _ => Err(ValueError::TypeMismatch),
        },
        TagType::Int8
        | TagType::Int16
        | TagType::Int32
        | TagType::Int64
        | TagType::UInt8
        | TagType::UInt16
        | TagType::UInt32 => {
            let i = json_integer(v)?;
            let (lo, hi) = ty.integer_range().expect("integer type");
            if i < lo || i > hi {
                return Err(ValueError::OutOfRange);
            }
            Ok(match ty {
                TagType::Int8 => Variant::SByte(i as i8),
                TagType::UInt8 => Variant::Byte(i as u8),
                TagType::Int16 => Variant::Int16(i as i16),
                TagType::Int32 => Variant::Int32(i as i32),
                TagType::Int64 => Variant::Int64(i as i64),
                TagType::UInt16 => Variant::UInt16(i as u16),
                _ => Variant::UInt32(i as u32),
            })
        }
        TagType::Float => {
            let f = json_float(v)?;
            if f.is_finite() && f.abs() > f32::MAX as f64 {
                return Err(ValueError::OutOfRange);
            }
            Ok(Variant::Float(f as f32))
        }
        TagType::Double => Ok(Variant::Double(json_float(v)?)),
        TagType::String => match v {
            Value::String(s) => Ok(Variant::String(UAString::from(s.as_str()))),
            Value::Number(_) | Value::Bool(_) => Ok(Variant::String(UAString::from(v.to_string()))),
            _ => Err(ValueError::TypeMismatch),
        },
        TagType::DateTime => match v {
            Value::String(s) => ChronoDateTime::parse_from_rfc3339(s.trim())
                .map(|t| Variant::DateTime(Box::new(DateTime::from(t.with_timezone(&Utc)))))
                .map_err(|_| ValueError::TypeMismatch),
            _ => Err(ValueError::TypeMismatch),
        },
    }
}

fn json_integer(v: &Value) -> Result<i128, ValueError> {
    let f = match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i as i128);
            }
            if let Some(u) = n.as_u64() {
                return Ok(u as i128);
            }
            n.as_f64().ok_or(ValueError::TypeMismatch)?
        }
        Value::String(s) => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i128>() {
                return Ok(i);
            }
            s.parse::<f64>().map_err(|_| ValueError::TypeMismatch)?
        }
        _ => return Err(ValueError::TypeMismatch),
    };
    if !f.is_finite() || f.fract() != 0.0 {
        return Err(ValueError::TypeMismatch);
    }
    if f.abs() > 1e30 {
        return Err(ValueError::OutOfRange);
    }
    Ok(f as i128)
}

fn json_float(v: &Value) -> Result<f64, ValueError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or(ValueError::TypeMismatch),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| ValueError::TypeMismatch),
        _ => Err(ValueError::TypeMismatch),
    }
}

/// The StatusCode for a tag's quality and error.
pub fn status_of(quality: Quality, error: Option<&BadReason>) -> StatusCode {
    match error {
        Some(BadReason::Communication(_)) => StatusCode::BadCommunicationError,
        Some(BadReason::Removed) => StatusCode::BadNodeIdUnknown,
        Some(BadReason::TagError { code, message }) => tag_error_status(code, message),
        None => match quality {
            Quality::Good => StatusCode::Good,
            Quality::Uncertain => StatusCode::Uncertain,
            Quality::Bad => StatusCode::Bad,
        },
    }
}

/// A per-tag station error: "the station does not know this tag" becomes
/// `Bad_NodeIdUnknown`, anything else `Bad_DeviceFailure`.
fn tag_error_status(code: &str, message: &str) -> StatusCode {
    let text = format!("{code} {message}").to_ascii_lowercase();
    let unknown = [
        "unknown",
        "not found",
        "notfound",
        "not_found",
        "no such",
        "does not exist",
        "not exist",
        "cannot resolve",
        "404",
    ];
    if unknown.iter().any(|k| text.contains(k)) {
        StatusCode::BadNodeIdUnknown
    } else {
        StatusCode::BadDeviceFailure
    }
}

/// The DataValue clients see for one change. A Bad status carries a null
/// value (OPC UA Part 4); a value that does not fit the type becomes
/// `Bad_TypeMismatch` / `Bad_OutOfRange` (returned as the error, so the
/// caller can count it) with a null value.
pub fn change_to_data_value(change: &TagChange, now: DateTime) -> (DataValue, Option<ValueError>) {
    let mut status = status_of(change.quality, change.error.as_ref());
    let mut problem = None;
    // A null value is `Variant::Empty`, not an absent value: the crate
    // drops the status of a DataValue without a value when it is read.
    let value = if status.is_bad() {
        Variant::Empty
    } else if change.value.is_null() {
        status = StatusCode::BadNoData;
        Variant::Empty
    } else {
        match json_to_variant(change.ty, &change.value) {
            Ok(v) => v,
            Err(e) => {
                status = e.status();
                problem = Some(e);
                Variant::Empty
            }
        }
    };
    (
        DataValue {
            value: Some(value),
            status: Some(status),
            source_timestamp: Some(DateTime::from(change.timestamp)),
            source_picoseconds: None,
            server_timestamp: Some(now),
            server_picoseconds: None,
        },
        problem,
    )
}

/// Converts a value written by a client to the JSON of the guarded write
/// path. The Variant must have exactly the tag's type.
pub fn variant_to_json(ty: TagType, v: &Variant) -> Result<Value, StatusCode> {
    let mismatch = Err(StatusCode::BadTypeMismatch);
    match (ty, v) {
        (TagType::Bool, Variant::Boolean(b)) => Ok(Value::Bool(*b)),
        (TagType::Int8, Variant::SByte(i)) => Ok(Value::from(*i)),
        (TagType::UInt8, Variant::Byte(i)) => Ok(Value::from(*i)),
        (TagType::Int16, Variant::Int16(i)) => Ok(Value::from(*i)),
        (TagType::Int32, Variant::Int32(i)) => Ok(Value::from(*i)),
        (TagType::Int64, Variant::Int64(i)) => Ok(Value::from(*i)),
        (TagType::UInt16, Variant::UInt16(i)) => Ok(Value::from(*i)),
        (TagType::UInt32, Variant::UInt32(i)) => Ok(Value::from(*i)),
        (TagType::Float, Variant::Float(f)) => serde_json::Number::from_f64(*f as f64)
            .map(Value::Number)
            .ok_or(StatusCode::BadOutOfRange),
        (TagType::Double, Variant::Double(f)) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or(StatusCode::BadOutOfRange),
        (TagType::String, Variant::String(s)) => match s.value() {
            Some(s) => Ok(Value::String(s.clone())),
            None => mismatch,
        },
        (TagType::DateTime, Variant::DateTime(t)) => Ok(Value::String(
            t.as_chrono()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )),
        _ => mismatch,
    }
}

/// The OPC UA answer for a refused or failed write.
pub fn write_error_status(e: &WriteError) -> StatusCode {
    match e {
        WriteError::TypeMismatch(_) | WriteError::Malformed(_) => StatusCode::BadTypeMismatch,
        WriteError::OutOfRange(_) => StatusCode::BadOutOfRange,
        WriteError::NotAllowed(_) | WriteError::ReadOnly(_) | WriteError::Disabled(_) => {
            StatusCode::BadUserAccessDenied
        }
        WriteError::UnknownTag(_) => StatusCode::BadNodeIdUnknown,
        WriteError::StationRefused(_) => StatusCode::BadNotWritable,
        WriteError::Station(_) => StatusCode::BadCommunicationError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn eight_bit_tags_are_sbyte_and_byte_with_their_exact_ranges() {
        assert_eq!(data_type(TagType::Int8), DataTypeId::SByte);
        assert_eq!(data_type(TagType::UInt8), DataTypeId::Byte);
        assert_eq!(
            json_to_variant(TagType::Int8, &json!(-128)),
            Ok(Variant::SByte(-128))
        );
        assert_eq!(
            json_to_variant(TagType::Int8, &json!(128)),
            Err(ValueError::OutOfRange)
        );
        assert_eq!(
            json_to_variant(TagType::UInt8, &json!("255")),
            Ok(Variant::Byte(255))
        );
        for bad in [json!(-1), json!(256)] {
            assert_eq!(
                json_to_variant(TagType::UInt8, &bad),
                Err(ValueError::OutOfRange)
            );
        }
        assert_eq!(
            variant_to_json(TagType::Int8, &Variant::SByte(-7)),
            Ok(json!(-7))
        );
        assert_eq!(
            variant_to_json(TagType::UInt8, &Variant::Byte(200)),
            Ok(json!(200))
        );
        assert_eq!(
            variant_to_json(TagType::UInt8, &Variant::Int16(200)),
            Err(StatusCode::BadTypeMismatch)
        );
    }

    #[test]
    fn station_json_becomes_the_tags_exact_type() {
        assert_eq!(
            json_to_variant(TagType::Bool, &json!(true)),
            Ok(Variant::Boolean(true))
        );
        assert_eq!(
            json_to_variant(TagType::Bool, &json!(0)),
            Ok(Variant::Boolean(false))
        );
        assert_eq!(
            json_to_variant(TagType::Bool, &json!(2)),
            Err(ValueError::TypeMismatch)
        );
        assert_eq!(
            json_to_variant(TagType::Int16, &json!(-5)),
            Ok(Variant::Int16(-5))
        );
        assert_eq!(
            json_to_variant(TagType::Int16, &json!(5.0)),
            Ok(Variant::Int16(5))
        );
        assert_eq!(
            json_to_variant(TagType::Int16, &json!("7")),
            Ok(Variant::Int16(7))
        );
        assert_eq!(
            json_to_variant(TagType::Int16, &json!(5.5)),
            Err(ValueError::TypeMismatch)
        );
        assert_eq!(
            json_to_variant(TagType::Int16, &json!(40000)),
            Err(ValueError::OutOfRange)
        );
        assert_eq!(
            json_to_variant(TagType::UInt16, &json!(-1)),
            Err(ValueError::OutOfRange)
        );
        assert_eq!(
            json_to_variant(TagType::UInt32, &json!(4294967295u64)),
            Ok(Variant::UInt32(u32::MAX))
        );
        assert_eq!(
            json_to_variant(TagType::Int64, &json!(i64::MIN)),
            Ok(Variant::Int64(i64::MIN))
        );
        assert_eq!(
            json_to_variant(TagType::Int64, &json!(1e300)),
            Err(ValueError::OutOfRange)
        );
        assert_eq!(
            json_to_variant(TagType::Float, &json!(1.5)),
            Ok(Variant::Float(1.5))
        );
        assert_eq!(
            json_to_variant(TagType::Float, &json!(1e39)),
            Err(ValueError::OutOfRange)
        );
        assert_eq!(
            json_to_variant(TagType::Double, &json!(1e39)),
            Ok(Variant::Double(1e39))
        );
        assert_eq!(
            json_to_variant(TagType::Double, &json!("x")),
            Err(ValueError::TypeMismatch)
        );
        assert_eq!(
            json_to_variant(TagType::String, &json!("a\u{0}b")),
            Ok(Variant::String("a\u{0}b".into()))
        );
        assert_eq!(
            json_to_variant(TagType::String, &json!(12)),
            Ok(Variant::String("12".into()))
        );
        let Ok(Variant::DateTime(t)) =
            json_to_variant(TagType::DateTime, &json!("2026-01-02T03:04:05.678+01:00"))
        else {
            panic!("not a DateTime")
        };
        assert_eq!(t.as_chrono().to_rfc3339(), "2026-01-02T02:04:05.678+00:00");
        assert_eq!(
            json_to_variant(TagType::DateTime, &json!("soon")),
            Err(ValueError::TypeMismatch)
        );
        assert_eq!(
            json_to_variant(TagType::Int32, &json!([1])),
            Err(ValueError::TypeMismatch)
        );
    }

    fn change(quality: Quality, value: Value, error: Option<BadReason>) -> TagChange {
        TagChange {
            name: Arc::from("T"),
            ty: TagType::Double,
            value,
            quality,
            quality_code: None,
            timestamp: "2026-03-04T05:06:07.890Z".parse().unwrap(),
            error,
        }
    }

    #[test]
    fn bad_values_are_null_and_carry_the_right_status() {
        let now = DateTime::now();
        let (dv, p) = change_to_data_value(&change(Quality::Good, json!(2.5), None), now);
        assert_eq!(dv.value, Some(Variant::Double(2.5)));
        assert_eq!(dv.status, Some(StatusCode::Good));
        assert_eq!(
            dv.source_timestamp.unwrap().as_chrono().to_rfc3339(),
            "2026-03-04T05:06:07.890+00:00"
        );
        assert!(p.is_none());

        let (dv, _) = change_to_data_value(&change(Quality::Uncertain, json!(2.5), None), now);
        assert_eq!(dv.value, Some(Variant::Double(2.5)));
        assert!(dv.status.unwrap().is_uncertain());

        let comm = Some(BadReason::Communication("refused".into()));
        let (dv, _) = change_to_data_value(&change(Quality::Bad, json!(2.5), comm), now);
        assert_eq!(dv.value, Some(Variant::Empty));
        assert_eq!(dv.status, Some(StatusCode::BadCommunicationError));

        let unknown = Some(BadReason::TagError {
            code: "2".into(),
            message: "Cannot resolve provided name".into(),
        });
        let (dv, _) = change_to_data_value(&change(Quality::Bad, Value::Null, unknown), now);
        assert_eq!(dv.status, Some(StatusCode::BadNodeIdUnknown));
        let other = Some(BadReason::TagError {
            code: "E17".into(),
            message: "PLC timeout".into(),
        });
        let (dv, _) = change_to_data_value(&change(Quality::Bad, Value::Null, other), now);
        assert_eq!(dv.status, Some(StatusCode::BadDeviceFailure));

        let (dv, p) = change_to_data_value(&change(Quality::Good, json!("abc"), None), now);
        assert_eq!(
            (dv.value, dv.status, p),
            (
                Some(Variant::Empty),
                Some(StatusCode::BadTypeMismatch),
                Some(ValueError::TypeMismatch)
            )
        );
        let (dv, _) = change_to_data_value(&change(Quality::Good, Value::Null, None), now);
        assert_eq!(dv.status, Some(StatusCode::BadNoData));
    }

    #[test]
    fn written_variants_must_match_exactly() {
        assert_eq!(
            variant_to_json(TagType::Double, &Variant::Double(1.5)),
            Ok(json!(1.5))
        );
        assert_eq!(
            variant_to_json(TagType::Double, &Variant::Int32(1)),
            Err(StatusCode::BadTypeMismatch)
        );
        assert_eq!(
            variant_to_json(TagType::Int16, &Variant::Int32(1)),
            Err(StatusCode::BadTypeMismatch)
        );
        assert_eq!(
            variant_to_json(TagType::UInt32, &Variant::UInt32(7)),
            Ok(json!(7))
        );
        assert_eq!(
            variant_to_json(TagType::Float, &Variant::Float(f32::NAN)),
            Err(StatusCode::BadOutOfRange)
        );
        assert_eq!(
            variant_to_json(TagType::String, &Variant::String(UAString::null())),
            Err(StatusCode::BadTypeMismatch)
        );
        assert_eq!(
            variant_to_json(TagType::Bool, &Variant::Empty),
            Err(StatusCode::BadTypeMismatch)
        );
        let t: chrono::DateTime<Utc> = "2026-01-01T00:00:00.250Z".parse().unwrap();
        assert_eq!(
            variant_to_json(
                TagType::DateTime,
                &Variant::DateTime(Box::new(DateTime::from(t)))
            ),
            Ok(json!("2026-01-01T00:00:00.250Z"))
        );
        // Every converted value passes the guarded path's own type check.
        for (ty, v) in [
            (TagType::Int64, Variant::Int64(-3)),
            (TagType::Float, Variant::Float(0.25)),
            (TagType::Bool, Variant::Boolean(false)),
        ] {
            let j = variant_to_json(ty, &v).unwrap();
            assert!(crate::writes::convert(ty, &j).is_ok(), "{ty} {j}");
        }
    }

    #[test]
    fn write_errors_map_to_opc_ua_codes() {
        assert_eq!(
            write_error_status(&WriteError::TypeMismatch("x".into())),
            StatusCode::BadTypeMismatch
        );
        assert_eq!(
            write_error_status(&WriteError::OutOfRange("x".into())),
            StatusCode::BadOutOfRange
        );
        assert_eq!(
            write_error_status(&WriteError::NotAllowed("x".into())),
            StatusCode::BadUserAccessDenied
        );
        assert_eq!(
            write_error_status(&WriteError::ReadOnly("x".into())),
            StatusCode::BadUserAccessDenied
        );
        assert_eq!(
            write_error_status(&WriteError::Disabled("opcua")),
            StatusCode::BadUserAccessDenied
        );
        assert_eq!(
            write_error_status(&WriteError::Station("down".into())),
            StatusCode::BadCommunicationError
        );
    }
}
