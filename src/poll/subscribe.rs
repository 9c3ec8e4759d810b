//! `mode = "subscribe"` (contract §6): a group's tags come from station
//! subscriptions instead of polls while those are up, and are polled while
//! they are down.
//!
//! - One subscription per `max_tags_per_request` names (the same chunks the
//!   poll uses), merged into one event stream; when any of them closes, all
//!   are dropped and the group polls on its interval until they are open
//!   again. Re-opening backs off from 1 s to 30 s (with jitter).
//! - A station whose dialect has no subscriptions (`Station::subscribe`
//!   answers `Ok(None)`) is polled for good; that is logged once.
//! - Readings go through the same [`TagSlot`] change detection as polled
//!   ones (deadband, quality); the heartbeat, with no reading to ride on
//!   while nothing changes, is checked on the group's ticks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use tokio::time::Instant;

use super::diff::{ChangeRules, TagSlot};
use crate::config::PollMode;
use crate::model::{Reading, TagChange};
use crate::wincc::{Station, StationError, SubscriptionEvent, TagSubscription};

/// Shortest wait before a subscription is opened again.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait before a subscription is opened again.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

type Opened = Result<Option<Vec<TagSubscription>>, StationError>;

struct Opening(tokio::task::JoinHandle<Opened>);

impl Drop for Opening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum State {
    /// No subscription; the next attempt at `retry_at` (none: not planned).
    Idle { retry_at: Option<Instant> },
    /// Being opened, in its own task (so that it progresses while the
    /// group polls); aborted when dropped.
    Opening(Opening),
    /// Up: every chunk's events, merged.
    Up(SelectAll<BoxStream<'static, SubscriptionEvent>>),
}

/// What woke the group on the subscription side.
pub(crate) enum SubWake {
    /// An event of the running subscription.
    Event(SubscriptionEvent),
    /// An attempt to open finished.
    Opened(Opened),
    /// Time to try opening again.
    Retry,
}

/// A group's subscription state.
pub(crate) struct Subscriptions {
    group: Arc<str>,
    /// False for poll groups and once the station said it cannot subscribe.
    enabled: bool,
    state: State,
    backoff: ExponentialBackoff,
    /// A failure was already logged at warn level since the last success.
    failing: bool,
    /// The current subscription has delivered readings (the backoff is reset).
    delivered: bool,
    /// The station of the open subscription, and when its session is next
    /// kept alive (`Station::keep_session`): with subscriptions only, no
    /// other request would extend it before it expires.
    station: Option<Arc<dyn Station>>,
    keep_at: Instant,
}

/// How often a subscribed group asks the station client to keep its
/// session alive (it extends only when due, two thirds into the session's
/// lifetime: a 6 s session leaves a 2 s window, and asking every second
/// keeps a second of margin for a busy machine).
const KEEP_SESSION_EVERY: Duration = Duration::from_secs(1);

fn retry_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

fn merge(subs: Vec<TagSubscription>) -> SelectAll<BoxStream<'static, SubscriptionEvent>> {
    futures::stream::select_all(subs.into_iter().map(|s| {
        futures::stream::unfold(s, |mut s| async move { s.next().await.map(|e| (e, s)) }).boxed()
    }))
}

impl Subscriptions {
    pub fn new(group: Arc<str>, mode: PollMode) -> Self {
        Subscriptions {
            group,
            enabled: mode == PollMode::Subscribe,
            state: State::Idle { retry_at: None },
            backoff: retry_backoff(),
            failing: false,
            delivered: false,
            station: None,
            keep_at: Instant::now() + KEEP_SESSION_EVERY,
        }
    }

    /// True while the group's values come from the subscription (no polling).
    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    fn set_gauge(&self, up: bool) {
        metrics::gauge!("wincc_gateway_subscription_up", "group" => self.group.to_string())
            .set(if up { 1.0 } else { 0.0 });
    }

    /// Drops any current subscription and starts opening one for `chunks`
    /// (nothing when the group has no tags or does not subscribe).
    pub fn open(&mut self, station: &Arc<dyn Station>, chunks: &[Arc<Vec<Arc<str>>>]) {
        if !self.enabled {
            return;
        }
        if self.is_up() {
            self.set_gauge(false);
        }
        if chunks.is_empty() {
            self.state = State::Idle { retry_at: None };
            return;
        }
        self.station = Some(station.clone());
        let (station, chunks) = (station.clone(), chunks.to_vec());
        self.state = State::Opening(Opening(tokio::spawn(async move {
            let mut subs = Vec::with_capacity(chunks.len());
            for names in &chunks {
                match station.subscribe(names).await? {
                    Some(s) => subs.push(s),
                    None => return Ok(None),
                }
            }
            Ok(Some(subs))
        })));
    }

    /// Waits for the next subscription-side event; pending forever when
    /// there is nothing to wait for. Cancel safe.
    pub async fn wake(&mut self) -> SubWake {
        match &mut self.state {
            State::Up(events) => loop {
                tokio::select! {
                    ev = events.next() => {
                        break SubWake::Event(ev.unwrap_or_else(|| {
                            SubscriptionEvent::Closed(StationError::Unreachable(
                                "subscription ended".into(),
                            ))
                        }))
                    }
                    _ = tokio::time::sleep_until(self.keep_at) => {
                        self.keep_at = Instant::now() + KEEP_SESSION_EVERY;
                        if let Some(station) = &self.station {
                            let station = Arc::clone(station);
                            tokio::spawn(async move { station.keep_session().await });
                        }
                    }
                }
            },
            State::Opening(task) => {
                let r = (&mut task.0).await.unwrap_or_else(|e| {
                    Err(StationError::Unreachable(format!(
                        "subscription task ended: {e}"
                    )))
                });
                self.state = State::Idle { retry_at: None };
                SubWake::Opened(r)
            }
            State::Idle { retry_at: Some(at) } => {
                tokio::time::sleep_until(*at).await;
                self.state = State::Idle { retry_at: None };
                SubWake::Retry
            }
            State::Idle { retry_at: None } => std::future::pending().await,
        }
    }

    fn retry_later(&mut self) {
        let wait = self.backoff.next().unwrap_or(RETRY_MAX);
        self.state = State::Idle {
            retry_at: Some(Instant::now() + wait),
        };
    }

    /// Takes the result of an attempt to open. True when the subscription
    /// is now up (the group stops polling).
    pub fn opened(&mut self, r: Opened) -> bool {
        match r {
            Ok(Some(subs)) => {
                tracing::info!(group = %self.group, subscriptions = subs.len(), "subscribed to the group's tags; polling stops while the subscription is up");
                self.state = State::Up(merge(subs));
                self.failing = false;
                self.delivered = false;
                self.set_gauge(true);
                true
            }
            Ok(None) => {
                tracing::warn!(group = %self.group, "the station offers no subscriptions; the subscribe group is polled");
                self.enabled = false;
                self.state = State::Idle { retry_at: None };
                false
            }
            Err(e) => {
                self.retry_later();
                if std::mem::replace(&mut self.failing, true) {
                    tracing::debug!(group = %self.group, error = %e, "subscription still cannot be opened");
                } else {
                    tracing::warn!(group = %self.group, error = %e, "cannot subscribe; polling until a subscription is open");
                }
                false
            }
        }
    }

    /// The subscription ended: poll until it is open again.
    pub fn closed(&mut self, e: &StationError) {
        tracing::warn!(group = %self.group, error = %e, "subscription lost; polling until it is open again");
        self.set_gauge(false);
        self.failing = true;
        self.retry_later();
    }

    /// The subscription delivered readings: it works, so the next loss
    /// starts backing off from the shortest wait again.
    pub fn delivered(&mut self) {
        if !std::mem::replace(&mut self.delivered, true) {
            self.backoff = retry_backoff();
        }
    }
}

/// Applies subscription readings to the group's slots (found by name);
/// readings for tags the group does not hold are ignored.
pub(crate) fn apply_readings(
    slots: &mut [TagSlot],
    index: &HashMap<Arc<str>, usize>,
    rules: &ChangeRules,
    readings: Vec<Reading>,
    now: std::time::Instant,
) -> Vec<TagChange> {
    let mut changes = Vec::new();
    for r in readings {
        let Some(&i) = index.get(&r.name) else {
            tracing::debug!(tag = %r.name, "subscription reading for a tag the group does not hold");
            continue;
        };
        if let Some(c) = slots[i].apply(r, rules, now) {
            changes.push(c);
        }
    }
    changes
}

/// Republishes, unchanged, every tag whose heartbeat is due (nothing when
/// the group has no heartbeat).
pub(crate) fn heartbeats(
    slots: &mut [TagSlot],
    rules: &ChangeRules,
    now: std::time::Instant,
) -> Vec<TagChange> {
    let Some(hb) = rules.heartbeat else {
        return Vec::new();
    };
    let mut changes = Vec::new();
    for slot in slots {
        let Some(last) = &slot.last else { continue };
        if now.saturating_duration_since(last.at) < hb {
            continue;
        }
        let again = Reading {
            name: slot.name.clone(),
            value: last.value.clone(),
            quality: last.quality,
            quality_code: last.quality_code,
            timestamp: last.timestamp,
            error: last.error.clone(),
        };
        changes.extend(slot.apply(again, rules, now));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Quality, TagType};
    use std::time::Instant as StdInstant;

    fn reading(n: &str, v: f64) -> Reading {
        Reading {
            name: n.into(),
            value: v.into(),
            quality: Quality::Good,
            quality_code: None,
            timestamp: chrono::Utc::now(),
            error: None,
        }
    }

    fn group() -> (Vec<TagSlot>, HashMap<Arc<str>, usize>) {
        let slots: Vec<TagSlot> = ["A", "B"]
            .iter()
            .map(|n| TagSlot::new(Arc::from(*n), TagType::Double))
            .collect();
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        (slots, index)
    }

    #[test]
    fn readings_go_through_the_deadband_by_name() {
        let rules = ChangeRules {
            deadband_abs: 1.0,
            deadband_pct: 0.0,
            heartbeat: None,
        };
        let (mut slots, index) = group();
        let now = StdInstant::now();
        let first = vec![reading("B", 10.0), reading("Other", 1.0), reading("A", 5.0)];
        let c = apply_readings(&mut slots, &index, &rules, first, now);
        let names: Vec<&str> = c.iter().map(|c| &*c.name).collect();
        assert_eq!(names, ["B", "A"], "unknown names are ignored");
        // Within the band: nothing; beyond it: a change.
        let c = apply_readings(&mut slots, &index, &rules, vec![reading("B", 10.5)], now);
        assert!(c.is_empty(), "{c:?}");
        let c = apply_readings(&mut slots, &index, &rules, vec![reading("B", 11.5)], now);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].value, 11.5);
    }

    #[test]
    fn heartbeat_republishes_only_due_tags_unchanged() {
        let rules = ChangeRules {
            deadband_abs: 0.0,
            deadband_pct: 0.0,
            heartbeat: Some(Duration::from_secs(10)),
        };
        let (mut slots, index) = group();
        let t0 = StdInstant::now();
        let r = reading("A", 1.0);
        let ts = r.timestamp;
        apply_readings(&mut slots, &index, &rules, vec![r], t0);
        assert!(heartbeats(&mut slots, &rules, t0 + Duration::from_secs(9)).is_empty());
        let c = heartbeats(&mut slots, &rules, t0 + Duration::from_secs(10));
        assert_eq!(c.len(), 1, "B was never read: {c:?}");
        assert_eq!(
            (&*c[0].name, &c[0].value, c[0].timestamp),
            ("A", &1.0.into(), ts)
        );
        // Published again just now: not due any more.
        assert!(heartbeats(&mut slots, &rules, t0 + Duration::from_secs(11)).is_empty());
        let none = ChangeRules {
            heartbeat: None,
            ..rules
        };
        assert!(heartbeats(&mut slots, &none, t0 + Duration::from_secs(99)).is_empty());
    }

    #[test]
    fn poll_groups_never_subscribe_and_failures_back_off() {
        let mut poll = Subscriptions::new("g".into(), PollMode::Poll);
        assert!(!poll.enabled);
        let mut sub = Subscriptions::new("g".into(), PollMode::Subscribe);
        assert!(!sub.opened(Err(StationError::Timeout(Duration::from_secs(1)))));
        match sub.state {
            State::Idle { retry_at: Some(at) } => {
                let wait = at - Instant::now();
                assert!(wait > RETRY_MIN / 2 && wait <= RETRY_MIN * 2, "{wait:?}");
            }
            _ => panic!("a retry is planned"),
        }
        assert!(!sub.opened(Ok(None)));
        assert!(!sub.enabled, "no subscriptions: polled for good");
        let _ = &mut poll;
    }
}
