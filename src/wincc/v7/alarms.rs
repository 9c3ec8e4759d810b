//! Reading a `wincc-v7` station's `alarmLogging/MessageList/{filter}` rows
//! in WinCC's own words (WINCC-DIALECTS.md §10). The row fields are not
//! published, so the reading is lenient: keys in any case, the message
//! identified by `id`, `number`, `MsgNr` or `messageNumber` (a string or a
//! number), its state given as WinCC's words ("came in", "went out",
//! "acknowledged" and their combinations, also in German), and every
//! other field optional. An unknown state word counts as raised; no alarm
//! is dropped for a field it can do without: only a row with no identity
//! at all (no number, no id, no name) is left out, and named.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::model::{format_ts, parse_ts, Alarm, AlarmState};
use crate::wincc::parse::{self, get_ci};
use crate::wincc::StationError;

/// Keys that identify a message, in order of preference.
const ID_KEYS: [&str; 7] = [
    "id",
    "number",
    "MsgNr",
    "messageNumber",
    "msgNo",
    "alarmNumber",
    "instanceID",
];
const NAME_KEYS: [&str; 5] = ["name", "source", "tagName", "alarmName", "messageName"];
const TEXT_KEYS: [&str; 6] = [
    "text",
    "messageText",
    "Text1",
    "eventText",
    "msgText",
    "description",
];
const CLASS_KEYS: [&str; 5] = [
    "class",
    "className",
    "messageClass",
    "alarmClass",
    "alarmClassName",
];
const STATE_KEYS: [&str; 5] = ["state", "stateText", "status", "msgState", "messageState"];
const RAISED_KEYS: [&str; 7] = [
    "raisedAt",
    "cameInAt",
    "comeTime",
    "timestamp",
    "time",
    "dateTime",
    "raiseTime",
];
const ACK_KEYS: [&str; 3] = ["acknowledgedAt", "ackTime", "acknowledgmentTime"];
const CLEARED_KEYS: [&str; 3] = ["clearedAt", "wentOutAt", "goTime"];

/// The alarm state of WinCC's state words (any case): "went out" and every
/// combination with it is cleared, "acknowledged" and "came in
/// acknowledged" acknowledged, "came in" raised; German runtimes say
/// "gegangen", "quittiert", "gekommen". The contract's own words are
/// understood too. `None` for a word it does not know.
pub fn state_from_words(s: &str) -> Option<AlarmState> {
    let w = s.trim().to_lowercase();
    let has = |words: &[&str]| words.iter().any(|x| w.contains(x));
    if has(&["went out", "gone", "cleared", "gegangen", "normal"]) {
        Some(AlarmState::Cleared)
    } else if has(&["acknowledged", "quittiert", "ack"]) {
        Some(AlarmState::Acknowledged)
    } else if has(&["came in", "raised", "gekommen"]) {
        Some(AlarmState::Raised)
    } else {
        None
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(a) => a.iter().find_map(text),
        _ => None,
    }
}

fn first_text(o: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| get_ci(o, k).and_then(text))
}

/// A station timestamp: RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]` (taken as
/// UTC), .NET's `/Date(ms)/`, or Unix milliseconds.
fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    match v {
        Value::String(s) => {
            let s = s.trim();
            if let Some(t) = parse_ts(s) {
                return Some(t);
            }
            if let Some(ms) = s
                .strip_prefix("/Date(")
                .and_then(|r| r.strip_suffix(")/"))
                .and_then(|r| r.split(['+', '-']).next())
                .and_then(|r| r.parse::<i64>().ok())
            {
                return Utc.timestamp_millis_opt(ms).single();
            }
            [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%d.%m.%Y %H:%M:%S%.f",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .map(|t| t.and_utc())
        }
        Value::Number(n) => n
            .as_i64()
            .filter(|ms| *ms > 0)
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        _ => None,
    }
}

fn first_time(o: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| get_ci(o, k).and_then(timestamp))
        .filter(|t| t.timestamp_millis() != 0)
        .map(|t| format_ts(&t))
}

/// One row as an alarm: `Err` with the reason when it has no identity.
/// `raised_at` is empty when the row gives no time (the client fills in
/// when it first saw the alarm). The second value is an unknown state
/// word, if the row had one.
fn alarm(o: &Map<String, Value>) -> Result<(Alarm, Option<String>), String> {
    let id = first_text(o, &ID_KEYS);
    let name = first_text(o, &NAME_KEYS);
    let id = match (id, &name) {
        (Some(id), _) => id,
        (None, Some(n)) => n.clone(),
        (None, None) => {
            return Err(format!(
                "a message with no number, id or name: {}",
                Value::Object(o.clone())
                    .to_string()
                    .chars()
                    .take(120)
                    .collect::<String>()
            ))
        }
    };
    let word = first_text(o, &STATE_KEYS);
    let (state, unknown) = match word.as_deref().map(state_from_words) {
        Some(Some(s)) => (s, None),
        Some(None) => (AlarmState::Raised, word.clone()),
        None => (AlarmState::Raised, None),
    };
    let priority = ["priority", "prio"]
        .iter()
        .find_map(|k| get_ci(o, k))
        .and_then(|v| match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0);
    let raised_at = first_time(o, &RAISED_KEYS).unwrap_or_default();
    let mut acknowledged_at = first_time(o, &ACK_KEYS);
    let mut cleared_at = first_time(o, &CLEARED_KEYS);
    // A row with one timestamp for its latest state change: that time is
    // when it was acknowledged or went out.
    if state == AlarmState::Acknowledged && acknowledged_at.is_none() {
        acknowledged_at = first_time(o, &["stateTime", "modificationTime"]);
    }
    if state == AlarmState::Cleared && cleared_at.is_none() {
        cleared_at = first_time(o, &["stateTime", "modificationTime"]);
    }
    Ok((
        Alarm {
            name: name.unwrap_or_else(|| format!("Message {id}")),
            id,
            text: first_text(o, &TEXT_KEYS).unwrap_or_default(),
            class: first_text(o, &CLASS_KEYS).unwrap_or_default(),
            priority,
            state,
            raised_at,
            acknowledged_at,
            cleared_at,
        },
        unknown,
    ))
}

/// What a `MessageList` reply holds.
#[derive(Debug, Default)]
pub struct AlarmRows {
    pub alarms: Vec<Alarm>,
    /// Rows left out (no identity), as text for the log.
    pub bad: Vec<String>,
    /// State words the gateway did not know (those alarms count as raised).
    pub unknown_states: Vec<String>,
}

/// Parses a `MessageList` reply: a bare array, or an object with the rows
/// under `messages`, `messageList`, `alarms`, `items` or `values`.
pub fn alarm_rows(body: &[u8]) -> Result<AlarmRows, StationError> {
    let v = parse::json(body)?;
    let rows = match &v {
        Value::Array(a) => a,
        Value::Object(o) => ["messages", "messageList", "alarms", "items", "values"]
            .iter()
            .find_map(|k| get_ci(o, k).and_then(Value::as_array))
            .ok_or_else(|| {
                StationError::Malformed("the message list has no array of messages".into())
            })?,
        _ => {
            return Err(StationError::Malformed(
                "the message list is not a JSON array or object".into(),
            ))
        }
    };
    let mut out = AlarmRows::default();
    for row in rows {
        let Some(o) = row.as_object() else {
            out.bad.push(row.to_string().chars().take(80).collect());
            continue;
        };
        match alarm(o) {
            Ok((a, unknown)) => {
                out.unknown_states.extend(unknown);
                out.alarms.push(a);
            }
            Err(e) => out.bad.push(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wincc_state_words_map_to_states() {
        for (w, s) in [
            ("came in", AlarmState::Raised),
            ("Came In", AlarmState::Raised),
            ("acknowledged", AlarmState::Acknowledged),
            ("came in acknowledged", AlarmState::Acknowledged),
            ("went out", AlarmState::Cleared),
            ("went out acknowledged", AlarmState::Cleared),
            ("came in went out", AlarmState::Cleared),
            ("came in acknowledged went out", AlarmState::Cleared),
            ("Gekommen", AlarmState::Raised),
            ("gekommen quittiert", AlarmState::Acknowledged),
            ("Gegangen", AlarmState::Cleared),
            ("raised", AlarmState::Raised),
            ("cleared", AlarmState::Cleared),
        ] {
            assert_eq!(state_from_words(w), Some(s), "{w:?}");
        }
        assert_eq!(state_from_words("flickering"), None);
    }

    #[test]
    fn rows_with_numbers_words_and_missing_fields_all_count() {
        let body = br#"[
          {"MsgNr": 17, "State": "came in", "Text1": "Level high", "ClassName": "Alarm", "Priority": "3", "TimeStamp": "2026-01-02 03:04:05.250"},
          {"number": "18", "state": "came in acknowledged", "timestamp": "2026-01-02T03:04:05Z", "stateTime": "2026-01-02T03:05:00Z"},
          {"id": 19, "state": "went out"},
          {"MsgNr": 20, "state": "flickering", "text": "odd"},
          {"name": "Tank.High"},
          {"text": "no identity"},
          7
        ]"#;
        let r = alarm_rows(body).unwrap();
        assert_eq!(r.alarms.len(), 5);
        assert_eq!(r.bad.len(), 2);
        let a = &r.alarms;
        assert_eq!((a[0].id.as_str(), a[0].state), ("17", AlarmState::Raised));
        assert_eq!(a[0].text, "Level high");
        assert_eq!(a[0].class, "Alarm");
        assert_eq!(a[0].priority, 3);
        assert_eq!(a[0].raised_at, "2026-01-02T03:04:05.250Z");
        assert_eq!(a[0].name, "Message 17");
        assert_eq!(
            (a[1].id.as_str(), a[1].state),
            ("18", AlarmState::Acknowledged)
        );
        assert_eq!(
            a[1].acknowledged_at.as_deref(),
            Some("2026-01-02T03:05:00.000Z")
        );
        assert_eq!((a[2].id.as_str(), a[2].state), ("19", AlarmState::Cleared));
        assert_eq!(a[2].raised_at, "", "filled in by the client");
        assert_eq!(
            (a[3].state, a[3].text.as_str()),
            (AlarmState::Raised, "odd")
        );
        assert_eq!(r.unknown_states, vec!["flickering".to_string()]);
        assert_eq!(a[4].id, "Tank.High");
        let wrapped = alarm_rows(br#"{"Messages":[{"MsgNr":1,"State":"came in"}]}"#).unwrap();
        assert_eq!(wrapped.alarms.len(), 1);
        for garbage in [&b"{"[..], b"42", b"{\"x\":1}"] {
            assert!(alarm_rows(garbage).is_err());
        }
    }

    #[test]
    fn station_time_formats() {
        let t = |s: Value| timestamp(&s).map(|t| format_ts(&t));
        assert_eq!(
            t(Value::from("/Date(1767225600000)/")).as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert_eq!(
            t(Value::from(1767225600000i64)).as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert_eq!(
            t(Value::from("01.01.2026 00:00:00")).as_deref(),
            Some("2026-01-01T00:00:00.000Z")
        );
        assert_eq!(t(Value::from("yesterday")), None);
    }
}
