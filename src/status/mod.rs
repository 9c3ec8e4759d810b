//! The live status page's one owner of state: the status hub.
//!
//! One task ([`Hub::run`]) subscribes to the bus like a sink (its queue
//! conflates to the newest value per tag when it lags, so it never slows
//! polling) and keeps what the page shows and nobody else keeps: the
//! newest value of every polled tag, the active alarms, and ten minutes of
//! per-second history (station requests/s, changes/s). Everything else it
//! reads, when asked, from the `watch` channels of the parts that own it:
//! the station state (the station monitor), each poll group's figures (the
//! group task), the sinks' states (as for `/healthz`), the MQTT buffer's
//! backlog, the request counts of the station link, and the recent writes
//! of the write audit. The web side ([`web`]) asks by message
//! ([`HubHandle`]): a snapshot for the page, or the tags that changed since
//! a sequence number for one browser's tag view.

mod page;
pub(crate) mod web;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::bus::{AlarmEventKind, Event, Subscriber};
use crate::glob::TagPatterns;
use crate::http::HealthSources;
use crate::model::{Alarm, TagChange};
use crate::poll::station::Activity;
use crate::poll::{GroupStats, StationState};
use crate::writes::WriteRecord;

/// How much per-second history the plots show.
pub(crate) const HISTORY: usize = 600;

/// At most this many tags in one answer to a tag query (one SSE message).
pub(crate) const MAX_TAGS_PER_ANSWER: usize = 500;

/// Which configuration the gateway runs: shown on the page and `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigInfo {
    /// 1 at start, +1 per configuration applied by a reload.
    pub version: u64,
    pub loaded_at: DateTime<Utc>,
    /// SHA-256 of the file's text (first 12 hex digits), empty when the
    /// settings did not come from a file.
    pub sha256: String,
}

impl ConfigInfo {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "version": self.version,
            "loaded_at": crate::model::format_ts(&self.loaded_at),
            "sha256": self.sha256,
        })
    }
}

/// The newest state of one tag, with the hub's sequence number of its
/// last update.
#[derive(Debug, Clone)]
pub(crate) struct TagView {
    pub seq: u64,
    pub name: Arc<str>,
    pub group: Arc<str>,
    pub change: Option<TagChange>,
    /// Removed at the station or from every poll group: shown once, then gone.
    pub removed: bool,
}

/// What the status page shows, assembled by the hub on request.
pub(crate) struct Snapshot {
    pub at: DateTime<Utc>,
    pub station: StationState,
    pub station_url: String,
    pub groups: Vec<GroupStats>,
    pub requests_per_s: f64,
    pub in_flight: u64,
    pub rps_limit: u32,
    pub in_flight_limit: u32,
    pub health: serde_json::Value,
    pub mqtt_commands: bool,
    pub opcua_endpoint: Option<String>,
    pub alarms: Vec<Alarm>,
    pub writes: Vec<WriteRecord>,
    /// Oldest first: (requests/s, changes/s) for each of the last seconds.
    pub history: Vec<(u32, u32)>,
    pub tags: usize,
    pub config: ConfigInfo,
}

/// An answer to a tag query.
pub(crate) struct TagAnswer {
    /// The tags (matching the filter) updated after the asked sequence
    /// number, by name, at most [`MAX_TAGS_PER_ANSWER`].
    pub tags: Vec<TagView>,
    /// Matching tags left out (more than [`MAX_TAGS_PER_ANSWER`] changed).
    pub left_out: usize,
    /// Ask with this next time.
    pub seq: u64,
}

enum Query {
    Snapshot(oneshot::Sender<Snapshot>),
    Tags {
        filter: Arc<TagPatterns>,
        since: u64,
        reply: oneshot::Sender<TagAnswer>,
    },
}

/// Asks the hub. Cheap to clone; fails only once the hub is gone.
#[derive(Clone)]
pub(crate) struct HubHandle {
    tx: mpsc::Sender<Query>,
}

impl HubHandle {
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Query::Snapshot(reply)).await.ok()?;
        rx.await.ok()
    }

    pub async fn tags(&self, filter: Arc<TagPatterns>, since: u64) -> Option<TagAnswer> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Query::Tags {
                filter,
                since,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }
}

/// Where the hub reads what it does not keep itself.
pub struct StatusSources {
    pub health: HealthSources,
    pub activity: Arc<Activity>,
    pub groups: Vec<watch::Receiver<GroupStats>>,
    pub station_url: String,
    pub rps_limit: u32,
    pub in_flight_limit: u32,
    /// MQTT write commands are subscribed.
    pub mqtt_commands: bool,
    pub opcua_endpoint: Option<String>,
    pub config: watch::Receiver<ConfigInfo>,
}

/// The hub: see the module docs.
pub struct Hub {
    src: StatusSources,
    tags: HashMap<Arc<str>, TagView>,
    seq: u64,
    alarms: BTreeMap<String, Alarm>,
    history: VecDeque<(u32, u32)>,
    changes_this_second: u32,
    requests_seen: u64,
}

impl Hub {
    /// Starts the hub on `events` (a bus subscription of its own); it ends
    /// when the bus closes or at `stop`.
    pub(crate) fn start(
        src: StatusSources,
        events: Subscriber,
        stop: CancellationToken,
    ) -> HubHandle {
        let (tx, rx) = mpsc::channel(64);
        let hub = Hub {
            requests_seen: src.activity.requests(),
            src,
            tags: HashMap::new(),
            seq: 0,
            alarms: BTreeMap::new(),
            history: VecDeque::with_capacity(HISTORY),
            changes_this_second: 0,
        };
        tokio::spawn(hub.run(events, rx, stop));
        HubHandle { tx }
    }

    async fn run(
        mut self,
        mut events: Subscriber,
        mut queries: mpsc::Receiver<Query>,
        stop: CancellationToken,
    ) {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                e = events.recv() => match e {
                    Some(e) => self.apply(e),
                    None => return,
                },
                q = queries.recv() => match q {
                    Some(q) => self.answer(q),
                    None => return,
                },
                _ = second.tick() => self.sample(),
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::Changes(batch) => {
                self.changes_this_second = self
                    .changes_this_second
                    .saturating_add(batch.changes.len() as u32);
                for c in &batch.changes {
                    let seq = self.next_seq();
                    let group = match self.tags.get(&c.name) {
                        // A conflated batch does not know its group.
                        Some(v) if batch.group.starts_with('(') => v.group.clone(),
                        _ => batch.group.clone(),
                    };
                    self.tags.insert(
                        c.name.clone(),
                        TagView {
                            seq,
                            name: c.name.clone(),
                            group,
                            change: Some(c.clone()),
                            removed: false,
                        },
                    );
                }
            }
            Event::Tags(list) => {
                let polled: std::collections::HashSet<&str> =
                    list.iter().map(|t| t.name.as_str()).collect();
                // Removed tags: kept as a removal marker until the next
                // list, so every open browser learns they went.
                self.tags.retain(|_, v| !v.removed);
                let gone: Vec<Arc<str>> = self
                    .tags
                    .keys()
                    .filter(|n| !polled.contains(&***n))
                    .cloned()
                    .collect();
                for name in gone {
                    let seq = self.next_seq();
                    if let Some(v) = self.tags.get_mut(&name) {
                        v.seq = seq;
                        v.removed = true;
                        v.change = None;
                    }
                }
                for t in list.iter() {
                    if !self.tags.contains_key(t.name.as_str()) {
                        let seq = self.next_seq();
                        let name: Arc<str> = Arc::from(t.name.as_str());
                        self.tags.insert(
                            name.clone(),
                            TagView {
                                seq,
                                name,
                                group: Arc::from(""),
                                change: None,
                                removed: false,
                            },
                        );
                    }
                }
            }
            Event::Alarms(events) => {
                for e in events.iter() {
                    match e.kind {
                        AlarmEventKind::Cleared => {
                            self.alarms.remove(&e.alarm.id);
                        }
                        _ => {
                            self.alarms.insert(e.alarm.id.clone(), e.alarm.clone());
                        }
                    }
                }
            }
            Event::Station(_) => {}
        }
    }

    fn sample(&mut self) {
        let now = self.src.activity.requests();
        let requests = now.saturating_sub(self.requests_seen) as u32;
        self.requests_seen = now;
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history
            .push_back((requests, std::mem::take(&mut self.changes_this_second)));
    }

    fn answer(&mut self, q: Query) {
        match q {
            Query::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Query::Tags {
                filter,
                since,
                reply,
            } => {
                let mut hits: Vec<&TagView> = self
                    .tags
                    .values()
                    .filter(|v| v.seq > since && filter.is_match(&v.name))
                    .collect();
                hits.sort_by(|a, b| a.name.cmp(&b.name));
                let left_out = hits.len().saturating_sub(MAX_TAGS_PER_ANSWER);
                let tags = hits
                    .into_iter()
                    .take(MAX_TAGS_PER_ANSWER)
                    .cloned()
                    .collect();
                let _ = reply.send(TagAnswer {
                    tags,
                    left_out,
                    seq: self.seq,
                });
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let (_, health) = crate::http::health(&self.src.health);
        // Requests/s: the mean of the last 10 s (one second is too jumpy).
        let last: Vec<u32> = self.history.iter().rev().take(10).map(|h| h.0).collect();
        let requests_per_s = if last.is_empty() {
            0.0
        } else {
            last.iter().map(|&r| r as f64).sum::<f64>() / last.len() as f64
        };
        let mut alarms: Vec<Alarm> = self.alarms.values().cloned().collect();
        alarms.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .reverse()
                .then(a.raised_at.cmp(&b.raised_at))
        });
        Snapshot {
            at: Utc::now(),
            station: self.src.health.station.borrow().clone(),
            station_url: self.src.station_url.clone(),
            groups: self.src.groups.iter().map(|g| g.borrow().clone()).collect(),
            requests_per_s,
            in_flight: self.src.activity.in_flight(),
            rps_limit: self.src.rps_limit,
            in_flight_limit: self.src.in_flight_limit,
            health,
            mqtt_commands: self.src.mqtt_commands,
            opcua_endpoint: self.src.opcua_endpoint.clone(),
            alarms,
            writes: crate::writes::recent_writes(),
            history: self.history.iter().copied().collect(),
            tags: self.tags.values().filter(|v| !v.removed).count(),
            config: self.src.config.borrow().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::model::{ChangeBatch, TagInfo, TagType};

    fn change(name: &str, v: i64) -> TagChange {
        TagChange {
            name: name.into(),
            ty: TagType::Int32,
            value: serde_json::json!(v),
            quality: crate::model::Quality::Good,
            quality_code: None,
            timestamp: Utc::now(),
            error: None,
        }
    }

    fn hub(bus: &Bus) -> (HubHandle, CancellationToken) {
        let station = watch::channel(StationState {
            connected: Some(true),
            since: Utc::now(),
            why: None,
            failing_groups: Default::default(),
            outages: 0,
        });
        let up = || watch::channel(crate::http::ComponentState::Disabled).1;
        let src = StatusSources {
            health: HealthSources {
                station: station.1,
                mqtt: up(),
                opcua: up(),
                sparkplug: up(),
                mqtt_buffer: None,
                failed: watch::channel(None).1,
                config: None,
            },
            activity: Arc::default(),
            groups: Vec::new(),
            station_url: "http://station".into(),
            rps_limit: 20,
            in_flight_limit: 2,
            mqtt_commands: false,
            opcua_endpoint: None,
            config: watch::channel(ConfigInfo {
                version: 1,
                loaded_at: Utc::now(),
                sha256: String::new(),
            })
            .1,
        };
        let stop = CancellationToken::new();
        (
            Hub::start(src, bus.subscribe("status", 16), stop.clone()),
            stop,
        )
    }

    #[tokio::test]
    async fn a_browser_gets_each_tag_once_then_only_what_changed_and_removals() {
        let bus = Bus::new();
        let (h, stop) = hub(&bus);
        let all = Arc::new(TagPatterns::new(&["**"]).unwrap());
        let tags = |names: &[&str]| {
            Event::Tags(Arc::new(
                names
                    .iter()
                    .map(|n| TagInfo {
                        name: n.to_string(),
                        ty: TagType::Int32,
                        writable: false,
                    })
                    .collect(),
            ))
        };
        bus.publish(tags(&["A/x", "A/y", "B"]));
        bus.publish(Event::Changes(Arc::new(ChangeBatch {
            group: "g".into(),
            changes: vec![change("A/x", 1), change("A/y", 2), change("A/x", 3)],
            received_at: std::time::Instant::now(),
        })));
        let mut first = h.tags(all.clone(), 0).await.unwrap();
        for _ in 0..50 {
            if first.tags.iter().filter(|t| t.change.is_some()).count() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            first = h.tags(all.clone(), 0).await.unwrap();
        }
        let names: Vec<&str> = first.tags.iter().map(|t| &*t.name).collect();
        assert_eq!(names, ["A/x", "A/y", "B"], "each tag once, by name");
        assert_eq!(
            first.tags[0].change.as_ref().unwrap().value,
            3,
            "newest value only"
        );
        let again = h.tags(all.clone(), first.seq).await.unwrap();
        assert!(again.tags.is_empty());

        let only_a = Arc::new(TagPatterns::new(&["A/*"]).unwrap());
        bus.publish(tags(&["A/x", "B"]));
        let mut next = h.tags(only_a.clone(), first.seq).await.unwrap();
        for _ in 0..50 {
            if !next.tags.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            next = h.tags(only_a.clone(), first.seq).await.unwrap();
        }
        assert_eq!(next.tags.len(), 1, "the filter holds");
        assert!(next.tags[0].removed && &*next.tags[0].name == "A/y");
        let s = h.snapshot().await.unwrap();
        assert_eq!(s.tags, 2);
        assert_eq!(s.station.connected, Some(true));
        stop.cancel();
    }
}
