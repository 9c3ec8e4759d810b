//! Alarms of the simulated station: raised, acknowledged and cleared by
//! the ticker (deterministic per seed), or exactly by tests through
//! `POST /_sim/alarms`. Shared by every dialect.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::model::{format_ts, Alarm, AlarmState};

/// How many alarms the archive keeps (oldest dropped first).
pub const ARCHIVE_CAP: usize = 10_000;
/// Most automatic alarms active at once.
const MAX_AUTO_ACTIVE: usize = 25;
/// Chance per 100 ms tick that the ticker raises an alarm.
const RAISE_CHANCE: f64 = 0.03;

const TEXTS: &[&str] = &[
    "Motor overload",
    "Temperature high",
    "Level low",
    "Pressure high",
    "Emergency stop pressed",
    "Door open",
    "Communication lost",
    "Übertemperatur Kühlung",
];
const CLASSES: &[&str] = &["Alarm", "Warning", "Fault"];

/// A command of `POST /_sim/alarms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmCommand {
    pub action: AlarmAction,
    /// A string or a number; generated when raising without one.
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub priority: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmAction {
    Raise,
    Ack,
    Clear,
}

/// Why an alarm command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlarmError {
    #[error("no alarm with id {0:?}")]
    NotFound(String),
    #[error("alarm {0:?} is already active")]
    Active(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
struct Rec {
    alarm: Alarm,
    raised: DateTime<Utc>,
    /// Ticks at which the ticker acknowledges / clears it (automatic alarms only).
    auto: Option<(u64, u64)>,
}

/// Every alarm the station knows, newest last.
#[derive(Debug)]
pub struct Alarms {
    all: VecDeque<Rec>,
    next_id: u64,
    rng: StdRng,
    tick: u64,
}

impl Alarms {
    pub fn new(seed: u64) -> Self {
        Alarms {
            all: VecDeque::new(),
            next_id: 1,
            rng: StdRng::seed_from_u64(seed ^ 0x616c_6172_6d73),
            tick: 0,
        }
    }

    /// Active alarms (raised or acknowledged, not cleared), oldest first.
    pub fn current(&self) -> Vec<Alarm> {
        self.all
            .iter()
            .filter(|r| r.alarm.state != AlarmState::Cleared)
            .map(|r| r.alarm.clone())
            .collect()
    }

    /// Alarms raised within `[from, to]`, oldest first, at most `limit`.
    pub fn archive(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Vec<Alarm> {
        self.all
            .iter()
            .filter(|r| from.is_none_or(|f| r.raised >= f) && to.is_none_or(|t| r.raised <= t))
            .take(limit)
            .map(|r| r.alarm.clone())
            .collect()
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut Rec> {
        self.all.iter_mut().rev().find(|r| r.alarm.id == id)
    }

    fn push(&mut self, rec: Rec) {
        if self.all.len() >= ARCHIVE_CAP {
            self.all.pop_front();
        }
        self.all.push_back(rec);
    }

    /// Carries out a test's command; returns the alarm as it now stands.
    pub fn command(&mut self, cmd: AlarmCommand, now: DateTime<Utc>) -> Result<Alarm, AlarmError> {
        let id = match cmd.id {
            None => None,
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(AlarmError::Invalid(format!(
                    "id must be a string or a number, got {other}"
                )))
            }
        };
        match cmd.action {
            AlarmAction::Raise => {
                let id = id.unwrap_or_else(|| self.fresh_id());
                if self
                    .find_mut(&id)
                    .is_some_and(|r| r.alarm.state != AlarmState::Cleared)
                {
                    return Err(AlarmError::Active(id));
                }
                let alarm = Alarm {
                    id,
                    name: cmd.name.unwrap_or_else(|| "Simulator".into()),
                    text: cmd.text.unwrap_or_else(|| "Test alarm".into()),
                    class: cmd.class.unwrap_or_else(|| "Alarm".into()),
                    priority: cmd.priority.unwrap_or(1),
                    state: AlarmState::Raised,
                    raised_at: format_ts(&now),
                    acknowledged_at: None,
                    cleared_at: None,
                };
                self.push(Rec {
                    alarm: alarm.clone(),
                    raised: now,
                    auto: None,
                });
                Ok(alarm)
            }
            AlarmAction::Ack | AlarmAction::Clear => {
                let id =
                    id.ok_or_else(|| AlarmError::Invalid("id is required to ack or clear".into()))?;
                let rec = self.find_mut(&id).ok_or(AlarmError::NotFound(id))?;
                if cmd.action == AlarmAction::Ack {
                    ack(&mut rec.alarm, now);
                } else {
                    clear(&mut rec.alarm, now);
                }
                Ok(rec.alarm.clone())
            }
        }
    }

    fn fresh_id(&mut self) -> String {
        loop {
            let id = self.next_id.to_string();
            self.next_id += 1;
            if !self.all.iter().any(|r| r.alarm.id == id) {
                return id;
            }
        }
    }

    /// One ticker step (100 ms): maybe raise an alarm on a tag picked by
    /// `pick` from a random number, and acknowledge/clear due ones.
    pub fn tick(&mut self, now: DateTime<Utc>, pick: impl FnOnce(u64) -> Option<String>) {
        self.tick += 1;
        let t = self.tick;
        for rec in self.all.iter_mut() {
            if let Some((ack_at, clear_at)) = rec.auto {
                if t >= ack_at && rec.alarm.state == AlarmState::Raised {
                    ack(&mut rec.alarm, now);
                }
                if t >= clear_at && rec.alarm.state != AlarmState::Cleared {
                    clear(&mut rec.alarm, now);
                    rec.auto = None;
                }
            }
        }
        let active = self.all.iter().filter(|r| r.auto.is_some()).count();
        if active < MAX_AUTO_ACTIVE && self.rng.random_bool(RAISE_CHANCE) {
            let r = self.rng.random::<u64>();
            let Some(name) = pick(r) else { return };
            let ack_after = self.rng.random_range(20..100u64);
            let clear_after = if self.rng.random_bool(0.2) {
                self.rng.random_range(5..ack_after)
            } else {
                ack_after + self.rng.random_range(10..100u64)
            };
            let id = self.fresh_id();
            let alarm = Alarm {
                id,
                name,
                text: TEXTS[self.rng.random_range(0..TEXTS.len())].into(),
                class: CLASSES[self.rng.random_range(0..CLASSES.len())].into(),
                priority: self.rng.random_range(1..=16),
                state: AlarmState::Raised,
                raised_at: format_ts(&now),
                acknowledged_at: None,
                cleared_at: None,
            };
            self.push(Rec {
                alarm,
                raised: now,
                auto: Some((t + ack_after, t + clear_after)),
            });
        }
    }
}

fn ack(a: &mut Alarm, now: DateTime<Utc>) {
    if a.acknowledged_at.is_none() {
        a.acknowledged_at = Some(format_ts(&now));
        if a.state == AlarmState::Raised {
            a.state = AlarmState::Acknowledged;
        }
    }
}

fn clear(a: &mut Alarm, now: DateTime<Utc>) {
    if a.state != AlarmState::Cleared {
        a.state = AlarmState::Cleared;
        a.cleared_at = Some(format_ts(&now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(json: &str) -> AlarmCommand {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn commands_raise_ack_and_clear() {
        let mut a = Alarms::new(1);
        let now = Utc::now();
        let x = a
            .command(cmd(r#"{"action":"raise","id":"X1","name":"Tank #4/Level","text":"low","priority":7}"#), now)
            .unwrap();
        assert_eq!((x.state, x.priority), (AlarmState::Raised, 7));
        assert_eq!(
            a.command(cmd(r#"{"action":"raise","id":"X1"}"#), now),
            Err(AlarmError::Active("X1".into()))
        );
        let x = a
            .command(cmd(r#"{"action":"ack","id":"X1"}"#), now)
            .unwrap();
        assert_eq!(x.state, AlarmState::Acknowledged);
        assert!(x.acknowledged_at.is_some());
        assert_eq!(a.current().len(), 1);
        let x = a
            .command(cmd(r#"{"action":"clear","id":"X1"}"#), now)
            .unwrap();
        assert_eq!(x.state, AlarmState::Cleared);
        assert!(a.current().is_empty());
        assert_eq!(a.archive(None, None, 10).len(), 1);
        assert!(matches!(
            a.command(cmd(r#"{"action":"ack","id":"nope"}"#), now),
            Err(AlarmError::NotFound(_))
        ));
        let y = a
            .command(cmd(r#"{"action":"raise","id":42}"#), now)
            .unwrap();
        assert_eq!(y.id, "42");
        assert!(serde_json::from_str::<AlarmCommand>(r#"{"action":"explode"}"#).is_err());
    }

    #[test]
    fn the_ticker_is_deterministic_and_alarms_go_through_their_life() {
        let run = |seed| {
            let mut a = Alarms::new(seed);
            let start = Utc::now();
            for i in 0..3000 {
                a.tick(start + chrono::Duration::milliseconds(i * 100), |r| {
                    Some(format!("Tag{}", r % 10))
                });
            }
            a.archive(None, None, usize::MAX)
                .into_iter()
                .map(|x| (x.id, x.name, x.state, x.priority))
                .collect::<Vec<_>>()
        };
        let a = run(5);
        assert_eq!(a, run(5));
        assert_ne!(a, run(6));
        assert!(a.len() > 20, "{}", a.len());
        assert!(a.iter().any(|x| x.2 == AlarmState::Cleared));
    }

    #[test]
    fn archive_filters_by_time_and_limit() {
        let mut a = Alarms::new(1);
        let t0 = Utc::now();
        for i in 0..5 {
            let at = t0 + chrono::Duration::seconds(i);
            a.command(cmd(r#"{"action":"raise"}"#), at).unwrap();
        }
        let from = t0 + chrono::Duration::seconds(1);
        let to = t0 + chrono::Duration::seconds(3);
        assert_eq!(a.archive(Some(from), Some(to), 100).len(), 3);
        assert_eq!(a.archive(Some(from), None, 2).len(), 2);
    }
}
