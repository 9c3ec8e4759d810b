//! One poll group's task: polls its tags on its own interval, in batches,
//! diffs the readings and publishes one change batch per cycle.
//!
//! Scheduling: a tokio interval with `MissedTickBehavior::Skip`, so cycles
//! start at multiples of the period (no drift); a cycle that overruns makes
//! the ticks that fell inside it count as skipped
//! (`wincc_gateway_poll_cycles_skipped_total{group}`) instead of stacking.
//! The group keeps no backoff of its own: the station's one state
//! ([`super::station`]) decides. When it turns down the group abandons its
//! cycle, marks every tag bad once and stops polling; when it turns up
//! again the group polls at once and then on its interval. Failures that
//! do not take the station down mark the failed chunks' tags bad and are
//! reported to the state (the group is listed as failing until a clean
//! cycle).
//!
//! A `subscribe` group polls only while its subscription is down (see
//! [`super::subscribe`]); while it is up, its ticks only drive the heartbeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::diff::{ChangeRules, TagSlot};
use super::station::{RequestKind, StationLink, StationState};
use super::subscribe::{self, SubWake, Subscriptions};
use crate::bus::{Bus, Event};
use crate::config::PollMode;
use crate::model::{align_readings, BadReason, ChangeBatch, Reading, TagChange, TagInfo};
use crate::wincc::{Station, StationError, SubscriptionEvent};

/// What a group polls and how often (sent by discovery).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlan {
    pub tags: Arc<Vec<TagInfo>>,
    /// The effective period: the configured interval × the slowdown factor.
    pub period: Duration,
}

/// What a group reports about itself (for the status page); the group task
/// is its one writer, through a `watch` channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupStats {
    pub name: Arc<str>,
    /// `poll` or `subscribe`.
    pub mode: &'static str,
    /// The configured interval.
    pub interval: Duration,
    /// The interval in force (slower when the rate limit cannot cover it).
    pub period: Duration,
    pub tags: usize,
    /// Poll cycles run so far.
    pub cycles: u64,
    /// How long the last cycle took, and when it ended.
    pub last_cycle: Option<(Duration, chrono::DateTime<chrono::Utc>)>,
    /// Ticks skipped because a cycle overran its interval.
    pub skipped: u64,
    /// Read requests that failed (each batch counts once).
    pub failed_requests: u64,
    /// The last failure, with when it happened.
    pub last_error: Option<(String, chrono::DateTime<chrono::Utc>)>,
    /// A `subscribe` group: whether its subscription is up.
    pub subscribed: bool,
}

pub(crate) struct GroupTask {
    pub name: Arc<str>,
    pub rules: ChangeRules,
    pub mode: PollMode,
    pub batch: usize,
    pub concurrency: usize,
    pub station: Arc<dyn Station>,
    pub bus: Bus,
    pub link: StationLink,
    pub plan_rx: watch::Receiver<Option<Arc<GroupPlan>>>,
    slots: Vec<TagSlot>,
    /// Slot index by tag name (for subscription readings).
    index: HashMap<Arc<str>, usize>,
    chunks: Vec<Arc<Vec<Arc<str>>>>,
    period: Duration,
    stats: watch::Sender<GroupStats>,
    /// New change rules from a configuration reload (taken at the next wake).
    rules_rx: Option<watch::Receiver<ChangeRules>>,
}

/// How long a poll cycle gathers answers' changes before it publishes them.
const PUBLISH_EVERY: Duration = Duration::from_millis(10);

type ChunkResult = (usize, Result<Vec<Reading>, StationError>, Instant);

enum Wake {
    Tick,
    Plan,
    Sub(SubWake),
    Station,
    Stop,
}

fn ticker(period: Duration) -> Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Skip);
    t
}

impl GroupTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: Arc<str>,
        rules: ChangeRules,
        mode: PollMode,
        batch: usize,
        concurrency: usize,
        station: Arc<dyn Station>,
        bus: Bus,
        link: StationLink,
        plan_rx: watch::Receiver<Option<Arc<GroupPlan>>>,
    ) -> Self {
        GroupTask {
            name,
            rules,
            mode,
            batch: batch.max(1),
            concurrency: concurrency.max(1),
            station,
            bus,
            link,
            plan_rx,
            slots: Vec::new(),
            index: HashMap::new(),
            chunks: Vec::new(),
            period: Duration::ZERO,
            stats: watch::channel(GroupStats::default()).0,
            rules_rx: None,
        }
    }

    /// Takes new change rules (deadbands, heartbeat) from `rules` while it
    /// runs: a configuration reload, without a reconnect or a republish.
    pub fn with_rules(mut self, rules: watch::Receiver<ChangeRules>) -> Self {
        self.rules_rx = Some(rules);
        self
    }

    /// Reports this group's figures on `stats` (see [`GroupStats`]).
    pub fn with_stats(mut self, stats: watch::Sender<GroupStats>) -> Self {
        self.stats = stats;
        self
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        // Wait for the first discovery.
        loop {
            if self.plan_rx.borrow_and_update().is_some() {
                break;
            }
            tokio::select! {
                r = self.plan_rx.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
        self.take_plan();
        let mut subs = Subscriptions::new(self.name.clone(), self.mode);
        subs.open(&self.station, &self.chunks);
        let mut ticks = ticker(self.period);
        let mut last_end: Option<Instant> = None;
        let mut station = self.link.watch();
        let mut outages_seen = station.borrow_and_update().outages;
        let group = self.name.to_string();
        loop {
            let down = station.borrow().is_down();
            let wake = tokio::select! {
                t = ticks.tick() => {
                    let t = t.into_std();
                    match last_end {
                        Some(end) if t < end => {
                            let missed = ((end - t).as_nanos() / self.period.as_nanos().max(1)) as u64 + 1;
                            metrics::counter!("wincc_gateway_poll_cycles_skipped_total", "group" => group.clone()).increment(missed);
                            self.stats.send_modify(|s| s.skipped += missed);
                            tracing::debug!(group, missed, "poll cycle overran its interval; ticks skipped");
                            last_end = None;
                            continue;
                        }
                        _ => Wake::Tick,
                    }
                }
                r = station.changed() => if r.is_ok() { Wake::Station } else { Wake::Stop },
                r = self.plan_rx.changed() => if r.is_ok() { Wake::Plan } else { Wake::Stop },
                w = subs.wake() => Wake::Sub(w),
                _ = shutdown.cancelled() => Wake::Stop,
            };
            // New change rules (a reload) apply from this wake on.
            if let Some(rx) = &mut self.rules_rx {
                if rx.has_changed().unwrap_or(false) {
                    self.rules = *rx.borrow_and_update();
                    tracing::info!(group = %self.name, rules = ?self.rules, "poll group takes its new change rules");
                }
            }
            match wake {
                Wake::Stop => return,
                Wake::Station => {
                    let now = station.borrow_and_update().clone();
                    if now.outages != outages_seen {
                        outages_seen = now.outages;
                        self.outage(&now);
                    }
                    if down && !now.is_down() {
                        // Back: poll at once, then on the interval.
                        ticks.reset_immediately();
                        last_end = None;
                    }
                    continue;
                }
                Wake::Plan => {
                    let (old_period, old_chunks) = (self.period, self.chunks.clone());
                    self.take_plan();
                    if self.period != old_period {
                        ticks = ticker(self.period);
                        last_end = None;
                    }
                    if self.chunks != old_chunks {
                        subs.open(&self.station, &self.chunks);
                    }
                    continue;
                }
                Wake::Sub(SubWake::Retry) => {
                    subs.open(&self.station, &self.chunks);
                    continue;
                }
                Wake::Sub(SubWake::Opened(r)) => {
                    if subs.opened(r) {
                        last_end = None;
                    }
                    let up = subs.is_up();
                    self.stats
                        .send_if_modified(|s| std::mem::replace(&mut s.subscribed, up) != up);
                    continue;
                }
                Wake::Sub(SubWake::Event(SubscriptionEvent::Readings(readings))) => {
                    subs.delivered();
                    self.link.settle(RequestKind::Subscription, None).await;
                    let now = Instant::now();
                    let changes = subscribe::apply_readings(
                        &mut self.slots,
                        &self.index,
                        &self.rules,
                        readings,
                        now,
                    );
                    if !changes.is_empty() {
                        self.publish(changes, now);
                    }
                    continue;
                }
                Wake::Sub(SubWake::Event(SubscriptionEvent::Closed(e))) => {
                    // Poll at once: the station's state is learnt (and an
                    // outage handled) the same way as in poll mode.
                    self.link.settle(RequestKind::Subscription, Some(&e)).await;
                    subs.closed(&e);
                    self.stats.send_modify(|s| {
                        s.subscribed = false;
                        s.last_error =
                            Some((format!("subscription closed: {e}"), chrono::Utc::now()));
                    });
                    ticks.reset();
                }
                Wake::Tick if subs.is_up() => {
                    let now = Instant::now();
                    let changes = subscribe::heartbeats(&mut self.slots, &self.rules, now);
                    if !changes.is_empty() {
                        self.publish(changes, now);
                    }
                    continue;
                }
                // While the station is down only the monitor's probe goes out.
                Wake::Tick if down => continue,
                Wake::Tick => {}
            }
            if self.slots.is_empty() || station.borrow().is_down() {
                continue;
            }
            tokio::select! {
                () = self.cycle() => {}
                _ = shutdown.cancelled() => return,
            }
            last_end = Some(Instant::now());
        }
    }

    /// The station went down: every tag not already bad is published bad
    /// once, with the reason, keeping its last value and source timestamp.
    fn outage(&mut self, state: &StationState) {
        let reason = BadReason::Communication(format!(
            "station unreachable: {}",
            state.why.as_deref().unwrap_or("no answer")
        ));
        let now = Instant::now();
        let changes: Vec<TagChange> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.mark_bad(reason.clone(), now))
            .collect();
        if !changes.is_empty() {
            tracing::debug!(group = %self.name, tags = changes.len(), "station down: tags marked bad");
            self.publish(changes, now);
        }
    }

    /// Adopts the newest plan: keeps the state of tags still polled, emits
    /// removed tags once as bad, rebuilds the request batches.
    fn take_plan(&mut self) {
        let Some(plan) = self.plan_rx.borrow_and_update().clone() else {
            return;
        };
        self.period = plan.period;
        self.stats.send_modify(|s| {
            s.name = self.name.clone();
            s.mode = match self.mode {
                PollMode::Poll => "poll",
                PollMode::Subscribe => "subscribe",
            };
            s.period = plan.period;
            s.tags = plan.tags.len();
        });
        let mut old: HashMap<Arc<str>, TagSlot> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        self.slots = plan
            .tags
            .iter()
            .map(|t| match old.remove(t.name.as_str()) {
                Some(mut s) => {
                    s.ty = t.ty;
                    s
                }
                None => TagSlot::new(Arc::from(t.name.as_str()), t.ty),
            })
            .collect();
        self.index = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        self.chunks = self
            .slots
            .chunks(self.batch)
            .map(|c| Arc::new(c.iter().map(|s| s.name.clone()).collect()))
            .collect();
        let mut removed: Vec<TagChange> = old.values().filter_map(TagSlot::removed).collect();
        if !removed.is_empty() {
            removed.sort_by(|a, b| a.name.cmp(&b.name));
            tracing::info!(group = %self.name, count = removed.len(), "tags removed at the station");
            self.publish(removed, Instant::now());
        }
    }

    fn publish(&self, changes: Vec<TagChange>, received_at: Instant) {
        metrics::counter!("wincc_gateway_changes_total").increment(changes.len() as u64);
        self.bus.publish(Event::Changes(Arc::new(ChangeBatch {
            group: self.name.clone(),
            changes,
            received_at,
        })));
    }

    /// One poll of every tag of the group. Abandoned (the requests still
    /// queued or in flight dropped) as soon as the station is declared down.
    async fn cycle(&mut self) {
        let started = Instant::now();
        metrics::counter!("wincc_gateway_polls_total", "group" => self.name.to_string())
            .increment(1);
        let batch = self.batch;
        // The request futures are built up front as owned, boxed futures:
        // a stream combinator closure here trips rustc's higher-ranked
        // `Send` inference for the spawned task.
        let requests: Vec<BoxFuture<'static, ChunkResult>> = self
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (names, station) = (c.clone(), self.station.clone());
                async move {
                    let r = station.read_values(&names).await;
                    (i, r, Instant::now())
                }
                .boxed()
            })
            .collect();
        let total = requests.len();
        let slots = &mut self.slots;
        let rules = &self.rules;
        let chunks = &self.chunks;
        let mut results = futures::stream::iter(requests).buffer_unordered(self.concurrency);
        // Answers' changes go out as they arrive, gathered for at most
        // PUBLISH_EVERY, so a change waits for its own response (plus a few
        // ms), not for the whole cycle, without waking the sinks per answer.
        let (bus, group) = (self.bus.clone(), self.name.clone());
        let publish_now = |changes: Vec<TagChange>, received_at: Instant| {
            metrics::counter!("wincc_gateway_changes_total").increment(changes.len() as u64);
            bus.publish(Event::Changes(Arc::new(ChangeBatch {
                group: group.clone(),
                changes,
                received_at,
            })));
        };
        // Changes of answers not yet published, and when the first of them arrived.
        let mut pending = Vec::new();
        let mut pending_since: Option<Instant> = None;
        let mut changes = Vec::new();
        let mut first_arrival: Option<Instant> = None;
        let mut failures: Vec<(usize, StationError)> = Vec::new();
        let link = self.link.clone();
        let went_down = link.wait_down();
        tokio::pin!(went_down);
        let mut abandoned = false;
        loop {
            let next = tokio::select! {
                biased;
                n = results.next() => n,
                () = &mut went_down => {
                    abandoned = true;
                    None
                }
            };
            let Some((i, result, arrived)) = next else {
                break;
            };
            let start = i * batch;
            let end = (start + batch).min(slots.len());
            let part = &mut slots[start..end];
            match result {
                Ok(readings) => {
                    first_arrival.get_or_insert(arrived);
                    let now = Instant::now();
                    // The client answers in request order (checked); else by name.
                    let readings = align_readings(&chunks[i], readings, chrono::Utc::now());
                    for (slot, r) in part.iter_mut().zip(readings) {
                        if let Some(c) = slot.apply(r, rules, now) {
                            pending.push(c);
                        }
                    }
                    let since = *pending_since.get_or_insert(arrived);
                    if !pending.is_empty() && now.duration_since(since) >= PUBLISH_EVERY {
                        publish_now(std::mem::take(&mut pending), since);
                        pending_since = None;
                    }
                }
                // The station is down: the monitor has it, the group marks
                // all its tags bad once; the rest of the cycle is abandoned.
                Err(e) if e.is_outage() => {
                    failures.push((i, e));
                    abandoned = true;
                    break;
                }
                Err(e) => failures.push((i, e)),
            }
        }
        drop(results);
        if !pending.is_empty() {
            publish_now(pending, pending_since.unwrap_or_else(Instant::now));
        }
        let now = Instant::now();
        for (i, e) in &failures {
            // A 429 that outlived its retry is a transient refusal: keep the
            // values; an outage is handled station-wide.
            if e.is_outage() || matches!(e, StationError::Busy { status: 429, .. }) {
                continue;
            }
            let start = i * batch;
            let end = (start + batch).min(slots.len());
            let reason = BadReason::Communication(e.to_string());
            for slot in &mut slots[start..end] {
                if let Some(c) = slot.mark_bad(reason.clone(), now) {
                    changes.push(c);
                }
            }
        }
        if let Some((_, e)) = failures.first() {
            if abandoned {
                tracing::debug!(group = %self.name, error = %e, "poll cycle abandoned: station down");
            } else {
                tracing::warn!(group = %self.name, failed = failures.len(), of = total, error = %e, "poll requests failed");
            }
        }
        if !abandoned {
            let failure = failures
                .first()
                .map(|(_, e)| format!("{} of {total} requests failed: {e}", failures.len()));
            self.link.group_cycle(&self.name, failure);
        }
        if !changes.is_empty() {
            self.publish(changes, first_arrival.unwrap_or(now));
        }
        let took = started.elapsed();
        metrics::histogram!("wincc_gateway_poll_cycle_seconds", "group" => self.name.to_string())
            .record(took.as_secs_f64());
        let now = chrono::Utc::now();
        self.stats.send_modify(|s| {
            s.cycles += 1;
            s.last_cycle = Some((took, now));
            s.failed_requests += failures.len() as u64;
            if let Some((_, e)) = failures.first() {
                s.last_error = Some((e.to_string(), now));
            }
        });
    }
}
