//! Readable errors for enum keys (`mqtt.protocol`, `wincc.auth`, ...).
//!
//! The `config` crate reports a wrong enum value as "enum MqttProtocol does
//! not have variant constructor 5.0", naming a Rust type and no valid value.
//! [`explain`] turns that into "must be one of \"3.1.1\", \"5\"". The valid
//! values are taken from serde itself (the names the enum accepts, as
//! `#[serde(rename...)]` spells them), so they cannot drift from the code:
//! a new enum key needs one line in [`ENUMS`].

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::{AuthMode, Dialect, LogFormat, MqttProtocol, PollMode};

/// The names serde accepts for an enum deriving `Deserialize`.
pub(crate) fn variants_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut probe = Probe(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// The enum keys' types: (serde's type name, accepted values).
fn enums() -> Vec<(&'static str, &'static [&'static str])> {
    macro_rules! entry {
        ($t:ty) => {
            (stringify!($t), variants_of::<$t>())
        };
    }
    vec![
        entry!(Dialect),
        entry!(AuthMode),
        entry!(PollMode),
        entry!(MqttProtocol),
        entry!(LogFormat),
    ]
}

/// For the `config` crate's "enum NAME does not have variant constructor
/// VALUE" message: the bad value and a reason listing the valid ones.
pub(crate) fn explain(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("enum ")?;
    let (name, value) = rest.split_once(" does not have variant constructor ")?;
    let valid = enums()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .unwrap_or(&[]);
    let why = if valid.is_empty() {
        format!("{value:?} is not an accepted value (see config/gateway.toml)")
    } else {
        let list: Vec<String> = valid.iter().map(|v| format!("{v:?}")).collect();
        format!(
            "{value:?} is not accepted; must be one of {}",
            list.join(", ")
        )
    };
    Some((value.to_string(), why))
}

/// A deserializer that records the variant names an enum asks for and
/// deserializes nothing.
struct Probe(Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for &mut Probe {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0 = Some(variants);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_come_from_serde() {
        assert_eq!(variants_of::<MqttProtocol>(), &["3.1.1", "5"]);
        assert_eq!(
            variants_of::<Dialect>(),
            &["generic", "wincc-v7", "unified"]
        );
        assert_eq!(variants_of::<LogFormat>(), &["human", "json"]);
    }

    #[test]
    fn the_message_lists_valid_values_without_rust_names() {
        let (value, why) =
            explain("enum MqttProtocol does not have variant constructor 5.0").unwrap();
        assert_eq!(value, "5.0");
        assert!(why.contains("\"3.1.1\", \"5\""), "{why}");
        assert!(
            !why.contains("MqttProtocol") && !why.contains("variant"),
            "{why}"
        );
        assert!(explain("invalid type: string").is_none());
    }
}
