//! Change detection (contract §7): the poller owns the last published value
//! of every tag and decides, per reading, whether it is a change.
//!
//! - The first reading of a tag is always a change.
//! - A quality change (or a change of `quality_code` or of the kind of
//!   error) is a change.
//! - Numeric tags: a change when `|Δ| > deadband_abs` AND
//!   `|Δ| > deadband_pct/100 · |last published|`, both strict; a band of 0
//!   is off, which the strict `>` gives for free (`|Δ| > 0`). Δ is measured
//!   from the last PUBLISHED value, so slow drifts are not swallowed.
//! - Other types (and non-numeric values of numeric tags): any change.
//! - Heartbeat: republished when `heartbeat` has elapsed since the last publish.
//! - A new source timestamp with the same value is not a change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::{BadReason, Quality, Reading, TagChange, TagType};

/// A group's change rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangeRules {
    pub deadband_abs: f64,
    pub deadband_pct: f64,
    /// `None`: no heartbeat.
    pub heartbeat: Option<Duration>,
}

impl ChangeRules {
    /// Rules from a poll group's settings.
    pub fn from_group(g: &crate::config::PollGroup) -> Self {
        ChangeRules {
            deadband_abs: g.deadband_abs.max(0.0),
            deadband_pct: g.deadband_pct.max(0.0),
            heartbeat: (g.heartbeat_s > 0).then(|| Duration::from_secs(g.heartbeat_s)),
        }
    }
}

/// What was last published for one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub value: Value,
    pub quality: Quality,
    pub quality_code: Option<u32>,
    pub timestamp: DateTime<Utc>,
    pub error: Option<BadReason>,
    /// When it was published (for the heartbeat).
    pub at: Instant,
}

/// One polled tag and what the gateway last published for it.
#[derive(Debug, Clone)]
pub struct TagSlot {
    pub name: Arc<str>,
    pub ty: TagType,
    pub last: Option<Published>,
}

fn same_error_kind(a: &Option<BadReason>, b: &Option<BadReason>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(BadReason::Removed), Some(BadReason::Removed)) => true,
        (Some(BadReason::Communication(_)), Some(BadReason::Communication(_))) => true,
        (
            Some(BadReason::TagError { code: c1, .. }),
            Some(BadReason::TagError { code: c2, .. }),
        ) => c1 == c2,
        _ => false,
    }
}

/// True when the numeric move from `last` to `new` exceeds both bands.
pub fn exceeds_deadband(last: f64, new: f64, abs: f64, pct: f64) -> bool {
    if last.is_nan() || new.is_nan() {
        return last.is_nan() != new.is_nan();
    }
    if last == new {
        return false;
    }
    let delta = (new - last).abs();
    // Infinite on either side: any move is a change.
    if !delta.is_finite() {
        return true;
    }
    delta > abs && delta > pct / 100.0 * last.abs()
}

fn value_changed(ty: TagType, last: &Value, new: &Value, rules: &ChangeRules) -> bool {
    if ty.is_numeric() {
        if let (Some(a), Some(b)) = (last.as_f64(), new.as_f64()) {
            return exceeds_deadband(a, b, rules.deadband_abs, rules.deadband_pct);
        }
    }
    last != new
}

impl TagSlot {
    pub fn new(name: Arc<str>, ty: TagType) -> Self {
        TagSlot {
            name,
            ty,
            last: None,
        }
    }

    /// Whether `r` is to be published under `rules` at `now`.
    pub fn is_change(&self, r: &Reading, rules: &ChangeRules, now: Instant) -> bool {
        let Some(last) = &self.last else {
            return true;
        };
        if last.quality != r.quality
            || last.quality_code != r.quality_code
            || !same_error_kind(&last.error, &r.error)
        {
            return true;
        }
        if value_changed(self.ty, &last.value, &r.value, rules) {
            return true;
        }
        rules
            .heartbeat
            .is_some_and(|hb| now.saturating_duration_since(last.at) >= hb)
    }

    /// Applies a reading: returns the change to publish, if it is one, and
    /// remembers it as the last published value.
    pub fn apply(&mut self, r: Reading, rules: &ChangeRules, now: Instant) -> Option<TagChange> {
        if !self.is_change(&r, rules, now) {
            return None;
        }
        let change = TagChange {
            name: self.name.clone(),
            ty: self.ty,
            value: r.value,
            quality: r.quality,
            quality_code: r.quality_code,
            timestamp: r.timestamp,
            error: r.error,
        };
        self.remember(&change, now);
        Some(change)
    }

    fn remember(&mut self, c: &TagChange, now: Instant) {
        self.last = Some(Published {
            value: c.value.clone(),
            quality: c.quality,
            quality_code: c.quality_code,
            timestamp: c.timestamp,
            error: c.error.clone(),
            at: now,
        });
    }

    /// The tag could not be read (outage): bad, once, keeping its last
    /// value and that value's source timestamp. `None` when it already is
    /// bad. A tag never read is published bad with a null value.
    pub fn mark_bad(&mut self, reason: BadReason, now: Instant) -> Option<TagChange> {
        let (value, timestamp) = match &self.last {
            Some(l) if l.quality == Quality::Bad => return None,
            Some(l) => (l.value.clone(), l.timestamp),
            None => (Value::Null, Utc::now()),
        };
        let change = TagChange {
            name: self.name.clone(),
            ty: self.ty,
            value,
            quality: Quality::Bad,
            quality_code: None,
            timestamp,
            error: Some(reason),
        };
        self.remember(&change, now);
        Some(change)
    }

    /// The tag is gone from the station: one last bad change, if it was
    /// ever published and is not already marked removed.
    pub fn removed(&self) -> Option<TagChange> {
        let l = self.last.as_ref()?;
        if matches!(l.error, Some(BadReason::Removed)) {
            return None;
        }
        Some(TagChange {
            name: self.name.clone(),
            ty: self.ty,
            value: l.value.clone(),
            quality: Quality::Bad,
            quality_code: None,
            timestamp: l.timestamp,
            error: Some(BadReason::Removed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_ts;
    use serde_json::json;

    fn rules(abs: f64, pct: f64, hb: Option<u64>) -> ChangeRules {
        ChangeRules {
            deadband_abs: abs,
            deadband_pct: pct,
            heartbeat: hb.map(Duration::from_secs),
        }
    }

    fn good(v: Value) -> Reading {
        Reading {
            name: "T".into(),
            value: v,
            quality: Quality::Good,
            quality_code: None,
            timestamp: Utc::now(),
            error: None,
        }
    }

    fn published(
        slot: &mut TagSlot,
        rules: &ChangeRules,
        now: Instant,
        vals: &[Value],
    ) -> Vec<Value> {
        vals.iter()
            .filter_map(|v| slot.apply(good(v.clone()), rules, now).map(|c| c.value))
            .collect()
    }

    #[test]
    fn first_reading_is_always_a_change_and_same_value_is_not() {
        let now = Instant::now();
        let mut s = TagSlot::new("T".into(), TagType::Double);
        let r = rules(0.0, 0.0, None);
        assert_eq!(
            published(&mut s, &r, now, &[json!(1.0), json!(1.0), json!(1.0)]),
            vec![json!(1.0)]
        );
        // A new source timestamp alone is no change.
        let mut later = good(json!(1.0));
        later.timestamp = parse_ts("2030-01-01T00:00:00Z").unwrap();
        assert!(s.apply(later, &r, now).is_none());
    }

    #[test]
    fn zero_bands_publish_every_numeric_change() {
        let now = Instant::now();
        let mut s = TagSlot::new("T".into(), TagType::Int32);
        let r = rules(0.0, 0.0, None);
        let got = published(
            &mut s,
            &r,
            now,
            &[json!(1), json!(2), json!(2), json!(3), json!(2)],
        );
        assert_eq!(got, vec![json!(1), json!(2), json!(3), json!(2)]);
    }

    #[test]
    fn absolute_deadband_is_strict_and_measured_from_last_published() {
        let now = Instant::now();
        let mut s = TagSlot::new("T".into(), TagType::Double);
        let r = rules(0.5, 0.0, None);
        // 10 → 10.5 is exactly the band: not a change. 10.4 → still from 10.
        // 10.6 exceeds it. Then a slow drift from 10.6: 10.9, 11.0, 11.2 → 11.2 is > 0.5 away.
        let got = published(
            &mut s,
            &r,
            now,
            &[
                json!(10.0),
                json!(10.5),
                json!(10.4),
                json!(10.6),
                json!(10.9),
                json!(11.0),
                json!(11.2),
            ],
        );
        assert_eq!(got, vec![json!(10.0), json!(10.6), json!(11.2)]);
    }

    #[test]
    fn percent_deadband_is_relative_to_the_last_published_value() {
        let now = Instant::now();
        let mut s = TagSlot::new("T".into(), TagType::Float);
        let r = rules(0.0, 10.0, None);
        // From 100: ±10 is inside; 111 is outside. From 111: 121 (Δ10 < 11.1) inside, 123 outside.
        let got = published(
            &mut s,
            &r,
            now,
            &[
                json!(100),
                json!(110),
                json!(90),
                json!(111),
                json!(121),
                json!(123),
            ],
        );
        assert_eq!(got, vec![json!(100), json!(111), json!(123)]);
        // From 0, a relative band means any move.
        let mut z = TagSlot::new("Z".into(), TagType::Float);
        assert_eq!(
            published(&mut z, &r, now, &[json!(0), json!(0.001)]).len(),
            2
        );
    }

    #[test]
    fn both_bands_must_be_exceeded() {
        assert!(!exceeds_deadband(100.0, 101.5, 1.0, 2.0)); // > abs, not > 2 %
        assert!(exceeds_deadband(100.0, 100.8, 0.5, 0.5)); // 0.8 > 0.5 and 0.8 > 0.5 % of 100
        assert!(!exceeds_deadband(100.0, 100.4, 0.5, 0.1)); // > 0.1 %, not > 0.5
        assert!(exceeds_deadband(100.0, 103.0, 1.0, 2.0));
        assert!(exceeds_deadband(f64::NAN, 1.0, 5.0, 0.0));
        assert!(!exceeds_deadband(f64::NAN, f64::NAN, 0.0, 0.0));
        assert!(exceeds_deadband(1.0, f64::INFINITY, 5.0, 5.0));
    }

    #[test]
    fn non_numeric_types_publish_any_change_and_ignore_bands() {
        let now = Instant::now();
        let r = rules(100.0, 100.0, None);
        let mut s = TagSlot::new("S".into(), TagType::String);
        assert_eq!(
            published(&mut s, &r, now, &[json!("a"), json!("a"), json!("b")]).len(),
            2
        );
        let mut b = TagSlot::new("B".into(), TagType::Bool);
        assert_eq!(
            published(&mut b, &r, now, &[json!(true), json!(false), json!(false)]).len(),
            2
        );
        // A numeric tag whose value arrives as a string: compared as text.
        let mut n = TagSlot::new("N".into(), TagType::Double);
        assert_eq!(
            published(&mut n, &r, now, &[json!("1"), json!("1"), json!("2")]).len(),
            2
        );
    }

    #[test]
    fn quality_changes_are_changes_even_inside_the_band() {
        let now = Instant::now();
        let r = rules(10.0, 0.0, None);
        let mut s = TagSlot::new("T".into(), TagType::Double);
        assert!(s.apply(good(json!(1.0)), &r, now).is_some());
        let mut u = good(json!(1.0));
        u.quality = Quality::Uncertain;
        assert!(s.apply(u.clone(), &r, now).is_some());
        u.quality_code = Some(72);
        assert!(s.apply(u.clone(), &r, now).is_some());
        assert!(s.apply(u, &r, now).is_none());
    }

    #[test]
    fn heartbeat_republishes_unchanged_values() {
        let t0 = Instant::now();
        let r = rules(0.0, 0.0, Some(60));
        let mut s = TagSlot::new("T".into(), TagType::Int16);
        assert!(s.apply(good(json!(5)), &r, t0).is_some());
        assert!(s
            .apply(good(json!(5)), &r, t0 + Duration::from_secs(59))
            .is_none());
        assert!(s
            .apply(good(json!(5)), &r, t0 + Duration::from_secs(60))
            .is_some());
        assert!(s
            .apply(good(json!(5)), &r, t0 + Duration::from_secs(61))
            .is_none());
        // Without a heartbeat, never.
        let mut q = TagSlot::new("Q".into(), TagType::Int16);
        let none = rules(0.0, 0.0, None);
        assert!(q.apply(good(json!(5)), &none, t0).is_some());
        assert!(q
            .apply(good(json!(5)), &none, t0 + Duration::from_secs(86_400))
            .is_none());
    }

    #[test]
    fn outage_marks_bad_once_keeping_last_value_and_timestamp() {
        let now = Instant::now();
        let r = rules(0.0, 0.0, None);
        let mut s = TagSlot::new("T".into(), TagType::Double);
        let mut first = good(json!(42.5));
        first.timestamp = parse_ts("2026-03-04T05:06:07.089Z").unwrap();
        s.apply(first.clone(), &r, now).unwrap();
        let bad = s
            .mark_bad(BadReason::Communication("down".into()), now)
            .unwrap();
        assert_eq!(bad.value, json!(42.5));
        assert_eq!(bad.timestamp, first.timestamp);
        assert_eq!(bad.quality, Quality::Bad);
        assert!(s
            .mark_bad(BadReason::Communication("still down".into()), now)
            .is_none());
        // Recovery: the same value with good quality is a change.
        assert!(s.apply(first, &r, now).is_some());
        // A tag already bad by its own error is not republished by an outage.
        let mut e = TagSlot::new("E".into(), TagType::Double);
        let mut err = good(Value::Null);
        err.quality = Quality::Bad;
        err.error = Some(BadReason::TagError {
            code: "404".into(),
            message: "unknown".into(),
        });
        e.apply(err, &r, now).unwrap();
        assert!(e
            .mark_bad(BadReason::Communication("down".into()), now)
            .is_none());
    }

    #[test]
    fn removed_is_emitted_for_published_tags_only() {
        let now = Instant::now();
        let r = rules(0.0, 0.0, None);
        let never = TagSlot::new("N".into(), TagType::Double);
        assert!(never.removed().is_none());
        let mut s = TagSlot::new("T".into(), TagType::Double);
        s.apply(good(json!(1)), &r, now);
        let c = s.removed().unwrap();
        assert_eq!(c.error, Some(BadReason::Removed));
        assert_eq!(c.value, json!(1));
    }
}
