//! The fields of one tag change as the sinks keep it in the log: quality
//! flags, then the source timestamp (ms, little-endian), the station's
//! quality code when it gave one, the tag name (u16 length) and the value
//! as JSON. The MQTT sink's records are exactly this; the Sparkplug sink's
//! put a version byte before and the tag's type after the flags. One codec
//! for both, so the two logs cannot drift apart.

use crate::model::{Quality, TagChange};

/// Flag bit: a quality code follows the timestamp.
const HAS_CODE: u8 = 4;

/// The first byte of a change: its quality and whether a code follows.
pub(crate) fn flags(c: &TagChange) -> u8 {
    let q = match c.quality {
        Quality::Good => 0u8,
        Quality::Uncertain => 1,
        Quality::Bad => 2,
    };
    q | if c.quality_code.is_some() {
        HAS_CODE
    } else {
        0
    }
}

/// Bytes [`put`] writes for `c` at most, besides its name and value.
pub(crate) const FIXED: usize = 8 + 4 + 2;

/// Appends everything after the flags: timestamp, code, name, value.
pub(crate) fn put(b: &mut Vec<u8>, c: &TagChange) {
    let value = serde_json::to_vec(&c.value).unwrap_or_else(|_| b"null".to_vec());
    let name = c.name.as_bytes();
    let name_len = name.len().min(u16::MAX as usize);
    b.reserve(FIXED + name_len + value.len());
    b.extend_from_slice(&c.timestamp.timestamp_millis().to_le_bytes());
    if let Some(code) = c.quality_code {
        b.extend_from_slice(&code.to_le_bytes());
    }
    b.extend_from_slice(&(name_len as u16).to_le_bytes());
    b.extend_from_slice(&name[..name_len]);
    b.extend_from_slice(&value);
}

/// A change read back: `None` from [`read`] where the bytes are not one.
pub(crate) struct Fields<'a> {
    pub quality: Quality,
    pub ms: i64,
    pub quality_code: Option<u32>,
    pub name: &'a str,
    pub value: serde_json::Value,
}

/// Reads what [`put`] wrote (`r` starts after the flags).
pub(crate) fn read(flags: u8, r: &[u8]) -> Option<Fields<'_>> {
    let quality = match flags & 3 {
        0 => Quality::Good,
        1 => Quality::Uncertain,
        2 => Quality::Bad,
        _ => return None,
    };
    let ms = i64::from_le_bytes(r.get(..8)?.try_into().ok()?);
    let mut at = 8;
    let quality_code = if flags & HAS_CODE != 0 {
        let c = u32::from_le_bytes(r.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        Some(c)
    } else {
        None
    };
    let len = u16::from_le_bytes(r.get(at..at + 2)?.try_into().ok()?) as usize;
    at += 2;
    let name = std::str::from_utf8(r.get(at..at + len)?).ok()?;
    at += len;
    let value = serde_json::from_slice(r.get(at..)?).ok()?;
    Some(Fields {
        quality,
        ms,
        quality_code,
        name,
        value,
    })
}
