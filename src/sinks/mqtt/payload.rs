//! A tag change's MQTT payload (contract §3), written straight into a
//! reused buffer.
//!
//! The bytes are exactly those of `serde_json::to_vec(&change.to_json())`
//! (the key order `value`, `quality`, `timestamp`, `quality_code` of the
//! contract), without building a `serde_json::Value` map per message (its
//! keys, the formatted timestamp and the map itself were four allocations
//! and a tree walk per published change). The value itself is written by
//! serde_json, so numbers and string escapes are serde_json's.

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::model::{format_ts, TagChange};

/// Writes the payload of `c` into `buf` (cleared first).
pub(crate) fn encode(c: &TagChange, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(b"{\"value\":");
    // Writing into a Vec cannot fail, and a Value always serialises.
    let _ = serde_json::to_writer(&mut *buf, &c.value);
    buf.extend_from_slice(b",\"quality\":\"");
    buf.extend_from_slice(c.quality.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"timestamp\":\"");
    write_ts(&c.timestamp, buf);
    buf.push(b'"');
    if let Some(code) = c.quality_code {
        buf.extend_from_slice(b",\"quality_code\":");
        let n = itoa_u32(code);
        buf.extend_from_slice(n.as_bytes());
    }
    buf.push(b'}');
}

/// RFC 3339, UTC, milliseconds (`2026-12-03T19:17:09.123Z`), as
/// [`format_ts`] writes it; years outside 0..=9999 and leap seconds take
/// [`format_ts`] itself.
fn write_ts(ts: &DateTime<Utc>, buf: &mut Vec<u8>) {
    let year = ts.year();
    let nanos = ts.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        buf.extend_from_slice(format_ts(ts).as_bytes());
        return;
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let put = |out: &mut [u8; 24], at: usize, v: u32, digits: usize| {
        let mut v = v;
        for i in (0..digits).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut out, 0, year as u32, 4);
    put(&mut out, 5, ts.month(), 2);
    put(&mut out, 8, ts.day(), 2);
    put(&mut out, 11, ts.hour(), 2);
    put(&mut out, 14, ts.minute(), 2);
    put(&mut out, 17, ts.second(), 2);
    put(&mut out, 20, nanos / 1_000_000, 3);
    buf.extend_from_slice(&out);
}

/// Decimal digits of a `u32` without allocating.
struct Digits {
    bytes: [u8; 10],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

fn itoa_u32(mut v: u32) -> Digits {
    let mut d = Digits {
        bytes: [0; 10],
        start: 10,
    };
    loop {
        d.start -= 1;
        d.bytes[d.start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quality, TagType};
    use chrono::TimeZone;
    use serde_json::json;

    fn change(value: serde_json::Value, code: Option<u32>, ts: DateTime<Utc>) -> TagChange {
        TagChange {
            name: "A".into(),
            ty: TagType::Double,
            value,
            quality: Quality::Uncertain,
            quality_code: code,
            timestamp: ts,
            error: None,
        }
    }

    #[test]
    fn bytes_equal_the_json_value_serialised() {
        let stamps = [
            Utc::now(),
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.timestamp_millis_opt(1_764_790_629_007).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 6, 30, 23, 59, 59).unwrap()
                + chrono::Duration::nanoseconds(999_999_999),
            // A leap second: chrono's own formatting is kept for it.
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
        ];
        let values = [
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(12345678901234567u64),
            json!(-42),
            json!(true),
            json!(null),
            json!("quote \" backslash \\ newline \n tab \t ctrl \u{1} ünï 💧"),
            json!([1, 2, "x"]),
            json!({"b": 1, "a": [null]}),
        ];
        let mut buf = Vec::new();
        for ts in stamps {
            for v in &values {
                for code in [None, Some(0), Some(7), Some(u32::MAX)] {
                    let c = change(v.clone(), code, ts);
                    encode(&c, &mut buf);
                    let want = serde_json::to_vec(&c.to_json()).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&buf),
                        String::from_utf8_lossy(&want)
                    );
                }
            }
        }
    }
}
