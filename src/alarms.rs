//! Alarms: polls the station's active-alarm list on its own interval
//! (through the station's rate limiter, like every other request) and diffs
//! it by alarm id into raised / acknowledged / cleared events on the bus.
//!
//! The poller owns the set of active alarms it has announced. After a station
//! outage the set is kept, so the first successful poll reconciles it: alarms
//! that cleared meanwhile are cleared, alarms still active are not announced
//! twice. After a gateway restart the sinks can seed the set with what they
//! had announced before (MQTT's retained `alarms/active/...` topics) through
//! [`AlarmPoller::with_known`].
//!
//! While the station is down (the one station state, see
//! [`crate::poll::station`]) the poller sends nothing and waits for the
//! monitor's probe to find the station back, then polls at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::{AlarmEvent, AlarmEventKind, Bus, Event};
use crate::model::{format_ts, Alarm, AlarmState};
use crate::poll::StationLink;
use crate::wincc::Station;

/// Diffs successive active-alarm lists.
#[derive(Debug, Default)]
pub struct AlarmTracker {
    active: BTreeMap<String, Alarm>,
}

impl AlarmTracker {
    /// Seeds the tracker with alarms already announced (e.g. after a restart).
    pub fn with_known(known: impl IntoIterator<Item = Alarm>) -> Self {
        AlarmTracker {
            active: known.into_iter().map(|a| (a.id.clone(), a)).collect(),
        }
    }

    /// The alarms currently considered active.
    pub fn active(&self) -> impl Iterator<Item = &Alarm> {
        self.active.values()
    }

    /// Compares the station's current list with the known set and returns
    /// the transitions, in a stable order (by id).
    pub fn update(&mut self, current: Vec<Alarm>) -> Vec<AlarmEvent> {
        let mut events = Vec::new();
        let mut seen = BTreeMap::new();
        for alarm in current {
            if alarm.state == AlarmState::Cleared {
                // Some stations list cleared alarms for a while; treat as gone.
                continue;
            }
            seen.insert(alarm.id.clone(), alarm);
        }
        for (id, alarm) in &seen {
            match self.active.get(id) {
                None => {
                    events.push(AlarmEvent {
                        kind: AlarmEventKind::Raised,
                        alarm: alarm.clone(),
                    });
                    if alarm.state == AlarmState::Acknowledged {
                        events.push(AlarmEvent {
                            kind: AlarmEventKind::Acknowledged,
                            alarm: alarm.clone(),
                        });
                    }
                }
                Some(old)
                    if old.state == AlarmState::Raised
                        && alarm.state == AlarmState::Acknowledged =>
                {
                    events.push(AlarmEvent {
                        kind: AlarmEventKind::Acknowledged,
                        alarm: alarm.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        for (id, old) in &self.active {
            if !seen.contains_key(id) {
                let mut cleared = old.clone();
                cleared.state = AlarmState::Cleared;
                if cleared.cleared_at.is_none() {
                    cleared.cleared_at = Some(format_ts(&chrono::Utc::now()));
                }
                events.push(AlarmEvent {
                    kind: AlarmEventKind::Cleared,
                    alarm: cleared,
                });
            }
        }
        self.active = seen;
        events
    }
}

/// Polls `active_alarms` and publishes transitions on the bus.
pub struct AlarmPoller {
    station: Arc<dyn Station>,
    bus: Bus,
    interval: Duration,
    tracker: AlarmTracker,
    link: Option<StationLink>,
}

impl AlarmPoller {
    pub fn new(station: Arc<dyn Station>, bus: Bus, interval: Duration) -> Self {
        AlarmPoller {
            station,
            bus,
            interval,
            tracker: AlarmTracker::default(),
            link: None,
        }
    }

    /// Follows the station state of `link`: no poll while the station is
    /// down, one at once when it is back.
    pub fn with_link(mut self, link: StationLink) -> Self {
        self.link = Some(link);
        self
    }

    async fn wait_station(&self) {
        if let Some(l) = &self.link {
            if l.current().is_down() {
                l.wait_up().await;
            }
        }
    }

    /// Seeds the known active set (see the module documentation).
    pub fn with_known(mut self, known: impl IntoIterator<Item = Alarm>) -> Self {
        self.tracker = AlarmTracker::with_known(known);
        self
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if self.link.as_ref().is_some_and(|l| l.current().is_down()) {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wait_station() => {}
                }
                ticker.reset();
            }
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.station.active_alarms() => r,
            };
            match result {
                Ok(current) => {
                    if failing {
                        tracing::info!("alarm polling recovered; reconciling the active set");
                        failing = false;
                    }
                    let events = self.tracker.update(current);
                    metrics::gauge!("wincc_gateway_alarms_active")
                        .set(self.tracker.active.len() as f64);
                    if !events.is_empty() {
                        for e in &events {
                            metrics::counter!("wincc_gateway_alarm_events_total", "event" => e.kind.as_str()).increment(1);
                            tracing::info!(id = %e.alarm.id, event = e.kind.as_str(), priority = e.alarm.priority, "alarm");
                        }
                        self.bus.publish(Event::Alarms(Arc::new(events)));
                    }
                }
                Err(e) => {
                    // Keep the known set: the next good poll reconciles it.
                    if !failing {
                        tracing::warn!(error = %e, "alarm poll failed; keeping the known active set");
                        failing = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(id: &str, state: AlarmState) -> Alarm {
        Alarm {
            id: id.into(),
            name: format!("Alarm {id}"),
            text: "Text".into(),
            class: "Alarm".into(),
            priority: 5,
            state,
            raised_at: "2026-01-01T00:00:00.000Z".into(),
            acknowledged_at: None,
            cleared_at: None,
        }
    }

    fn kinds(ev: &[AlarmEvent]) -> Vec<(String, &'static str)> {
        ev.iter()
            .map(|e| (e.alarm.id.clone(), e.kind.as_str()))
            .collect()
    }

    #[test]
    fn raised_acknowledged_cleared() {
        let mut t = AlarmTracker::default();
        let ev = t.update(vec![
            alarm("1", AlarmState::Raised),
            alarm("2", AlarmState::Acknowledged),
        ]);
        assert_eq!(
            kinds(&ev),
            vec![
                ("1".into(), "raised"),
                ("2".into(), "raised"),
                ("2".into(), "acknowledged")
            ]
        );
        assert!(t
            .update(vec![
                alarm("1", AlarmState::Raised),
                alarm("2", AlarmState::Acknowledged)
            ])
            .is_empty());
        let ev = t.update(vec![alarm("1", AlarmState::Acknowledged)]);
        assert_eq!(
            kinds(&ev),
            vec![("1".into(), "acknowledged"), ("2".into(), "cleared")]
        );
        assert_eq!(ev[1].alarm.state, AlarmState::Cleared);
        assert!(ev[1].alarm.cleared_at.is_some());
    }

    #[test]
    fn seeded_set_reconciles_without_duplicates() {
        let mut t = AlarmTracker::with_known(vec![
            alarm("1", AlarmState::Raised),
            alarm("9", AlarmState::Raised),
        ]);
        let ev = t.update(vec![
            alarm("1", AlarmState::Raised),
            alarm("3", AlarmState::Raised),
        ]);
        assert_eq!(
            kinds(&ev),
            vec![("3".into(), "raised"), ("9".into(), "cleared")]
        );
    }

    #[test]
    fn cleared_rows_count_as_gone() {
        let mut t = AlarmTracker::default();
        t.update(vec![alarm("1", AlarmState::Raised)]);
        let ev = t.update(vec![alarm("1", AlarmState::Cleared)]);
        assert_eq!(kinds(&ev), vec![("1".into(), "cleared")]);
    }
}
