//! Tag name ↔ MQTT topic mapping (contract §3 and §7).
//!
//! `+`, `#`, `%` and the control characters U+0000–U+001F, U+007F–U+009F are
//! percent-encoded (UTF-8 bytes, upper-case hex). A `/` separates levels only
//! between two non-empty levels; every other `/` is encoded as `%2F`.
//! The mapping is reversible: [`decode`] gives back the tag name.

use std::fmt::Write;

fn needs_escape(c: char) -> bool {
    matches!(c, '+' | '#' | '%') || (c as u32) <= 0x1F || (0x7F..=0x9F).contains(&(c as u32))
}

fn push_escaped(out: &mut String, c: char) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        let _ = write!(out, "%{b:02X}");
    }
}

/// Encodes a tag name (or alarm id) as one or more topic levels.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let chars: Vec<char> = name.chars().collect();
    // Read left to right, a '/' is a level separator only if the level before
    // it is non-empty and something follows; every other '/' is part of a level.
    let mut level_len = 0usize;
    for (i, &c) in chars.iter().enumerate() {
        if c == '/' {
            if level_len > 0 && i + 1 < chars.len() {
                out.push('/');
                level_len = 0;
            } else {
                out.push_str("%2F");
                level_len += 1;
            }
        } else if needs_escape(c) {
            push_escaped(&mut out, c);
            level_len += 1;
        } else {
            out.push(c);
            level_len += 1;
        }
    }
    out
}

/// Decodes a topic suffix produced by [`encode`] back into the tag name.
/// Returns `None` for a malformed escape or invalid UTF-8.
pub fn decode(topic: &str) -> Option<String> {
    let bytes = topic.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = topic.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why a write topic's `{tag}` suffix was refused by [`decode_strict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8.
    BadEscape,
    /// Decodes to a name whose encoding is a different text (lower-case
    /// hex, a needless `%31`, a `/` that should be `%2F`, an empty level).
    NonCanonical,
}

/// Decodes a topic suffix only if it is exactly the encoding of some name
/// (contract §7: `encode(decode(s)) == s`). Every name has one topic, and
/// every accepted topic names one tag: nothing is guessed.
pub fn decode_strict(topic: &str) -> Result<String, DecodeError> {
    let name = decode(topic).ok_or(DecodeError::BadEscape)?;
    if encode(&name) == topic {
        Ok(name)
    } else {
        Err(DecodeError::NonCanonical)
    }
}

/// True if `topic` is a valid MQTT topic name for publishing: non-empty, at
/// most 65535 bytes, no wildcard, no NUL.
pub fn is_valid_publish_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_examples() {
        assert_eq!(encode("Line1/Mixer/Speed"), "Line1/Mixer/Speed");
        assert_eq!(encode("/A"), "%2FA");
        assert_eq!(encode("A/"), "A%2F");
        assert_eq!(encode("A//B"), "A/%2FB");
        assert_eq!(encode("a+b#c%d"), "a%2Bb%23c%25d");
        assert_eq!(encode("x\u{0}y\u{7f}z\u{85}"), "x%00y%7Fz%C2%85");
        assert_eq!(encode("Tank 3.Level"), "Tank 3.Level");
        assert_eq!(encode("Kühlung/Temp°C"), "Kühlung/Temp°C");
    }

    #[test]
    fn strict_decoding_refuses_every_other_spelling() {
        assert_eq!(decode_strict("Line1/Speed").unwrap(), "Line1/Speed");
        assert_eq!(decode_strict("A/%2FB").unwrap(), "A//B");
        assert_eq!(decode_strict("a%2Bb").unwrap(), "a+b");
        assert_eq!(decode_strict("%C2%85").unwrap(), "\u{85}");
        for (s, why) in [
            ("a%2bb", DecodeError::NonCanonical),  // lower-case hex
            ("Tag%31", DecodeError::NonCanonical), // needless escape of '1'
            ("A%2FB", DecodeError::NonCanonical),  // a separator spelled %2F
            ("A//B", DecodeError::NonCanonical),   // empty level
            ("/A", DecodeError::NonCanonical),     // leading slash
            ("A/", DecodeError::NonCanonical),     // trailing slash
            ("%41", DecodeError::NonCanonical),    // 'A'
            ("%C3%BC", DecodeError::NonCanonical), // 'ü' is sent as is
            ("bad%zz", DecodeError::BadEscape),
            ("bad%", DecodeError::BadEscape),
            ("%FF", DecodeError::BadEscape), // not UTF-8
        ] {
            assert_eq!(decode_strict(s), Err(why), "{s:?}");
        }
    }

    #[test]
    fn round_trips_and_never_makes_wildcards() {
        let names = [
            "A//B",
            "/",
            "//",
            "///x",
            "a/",
            "+",
            "#",
            "%",
            "%2F",
            "a/+/#",
            "\u{1}/\u{2}",
            "ünï/cødé",
            "A/ /B",
        ];
        for n in names {
            let t = encode(n);
            assert!(is_valid_publish_topic(&t), "{n:?} -> {t:?}");
            assert!(!t.split('/').any(|l| l.is_empty()), "empty level in {t:?}");
            assert_eq!(decode(&t).as_deref(), Some(n), "{n:?} -> {t:?}");
            assert_eq!(decode_strict(&t).as_deref(), Ok(n), "{n:?} -> {t:?}");
        }
    }
}
