//! The polling engine: discovers the station's tags, polls each group on
//! its own interval in batches, detects changes and publishes them on the
//! bus; reports the station's connection state and keeps the tag directory
//! (for writes) up to date.
//!
//! - Discovery: `list_tags` at start, retried with backoff until the station
//!   answers (meanwhile the station is reported disconnected), then every
//!   `discovery_interval_s`. Each discovery publishes [`Event::Tags`] (the
//!   polled tags) and sends the full tag map on the watch channel; tags that
//!   disappeared are emitted once as bad with [`BadReason::Removed`].
//! - Groups: see [`group`] (scheduling, batching, outage handling),
//!   [`diff`] (change detection) and [`subscribe`] (`mode = "subscribe"`:
//!   station subscriptions, polling while they are down).
//! - Outage: one state for the whole station, kept by [`station`]'s
//!   monitor: the first outage-class failure of any request marks every
//!   tag of every group bad once (last value and source timestamp kept);
//!   while it lasts only the monitor's probe reaches the station; its first
//!   answer puts every group back on its interval at once.
//!
//! [`BadReason::Removed`]: crate::model::BadReason::Removed

pub mod diff;
mod group;
pub mod plan;
pub mod station;
mod subscribe;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Event};
use crate::config::Settings;
use crate::glob::TagPatterns;
use crate::model::TagInfo;
use crate::wincc::{Station, StationError};
use crate::writes::TagMap;

use group::GroupTask;
pub use group::{GroupPlan, GroupStats};
use plan::GroupSpec;
pub use station::{StationLink, StationState};

/// The polling engine. Build with [`Poller::new`], run with [`Poller::run`].
pub struct Poller {
    station: Arc<dyn Station>,
    bus: Bus,
    tags_tx: watch::Sender<Arc<TagMap>>,
    groups: Vec<GroupSpec>,
    batch: usize,
    concurrency: usize,
    rps: f64,
    reserved_rps: f64,
    discovery_interval: Option<Duration>,
    write_timeout: Duration,
    /// The monitored station and its link, when the caller runs the monitor.
    monitored: Option<(Arc<dyn Station>, StationLink)>,
    /// Each group's figures (same order as `groups`), for the status page.
    stats: Vec<watch::Sender<GroupStats>>,
    /// Each group's change rules (same order), changed by a reload.
    rules: Vec<watch::Sender<diff::ChangeRules>>,
}

impl Poller {
    /// A poller for the poll groups of `settings`, reading from `station`,
    /// publishing on `bus` and keeping `tags_tx` (all station tags, for the
    /// write path) current.
    pub fn new(
        settings: &Settings,
        station: Arc<dyn Station>,
        bus: Bus,
        tags_tx: watch::Sender<Arc<TagMap>>,
    ) -> Self {
        let w = &settings.wincc;
        let reserved_rps = if settings.alarms.enabled && settings.alarms.interval_ms > 0 {
            1000.0 / settings.alarms.interval_ms as f64
        } else {
            0.0
        };
        let groups = GroupSpec::from_settings(settings);
        let stats = groups
            .iter()
            .map(|g| {
                watch::channel(GroupStats {
                    name: g.name.clone(),
                    mode: match g.mode {
                        crate::config::PollMode::Poll => "poll",
                        crate::config::PollMode::Subscribe => "subscribe",
                    },
                    interval: g.interval,
                    period: g.interval,
                    ..GroupStats::default()
                })
                .0
            })
            .collect();
        let rules = groups.iter().map(|g| watch::channel(g.rules).0).collect();
        Poller {
            station,
            bus,
            tags_tx,
            groups,
            stats,
            rules,
            batch: w.max_tags_per_request.max(1),
            concurrency: w.rate_limit.max_in_flight.max(1) as usize,
            rps: w.rate_limit.requests_per_second.max(1) as f64,
            reserved_rps,
            discovery_interval: (w.discovery_interval_s > 0)
                .then(|| Duration::from_secs(w.discovery_interval_s)),
            write_timeout: w.write_timeout(),
            monitored: None,
        }
    }

    /// Polls through `station`, the monitored station of a monitor started
    /// by the caller (shared with the alarm poll and the writes), whose
    /// state `link` follows. Without it, `run` starts its own monitor.
    pub fn with_monitor(mut self, station: Arc<dyn Station>, link: StationLink) -> Self {
        self.monitored = Some((station, link));
        self
    }

    /// Each poll group's figures, in configuration order (they update while
    /// [`run`](Self::run) runs).
    pub fn group_stats(&self) -> Vec<watch::Receiver<GroupStats>> {
        self.stats.iter().map(watch::Sender::subscribe).collect()
    }

    /// Each poll group's name and the sender of its change rules: sending
    /// new rules applies them from the group's next cycle (a reload).
    pub fn rules(&self) -> Vec<(Arc<str>, watch::Sender<diff::ChangeRules>)> {
        self.groups
            .iter()
            .zip(&self.rules)
            .map(|(g, tx)| (g.name.clone(), tx.clone()))
            .collect()
    }

    /// The shortest configured poll interval: the monitor's first probe pause.
    pub fn shortest_interval(&self) -> Duration {
        self.groups
            .iter()
            .map(|g| g.interval)
            .min()
            .unwrap_or(station::PROBE_MAX)
    }

    /// Runs until `shutdown` is cancelled; then every group task has ended
    /// when this returns. Logging out of the station is left to the caller
    /// (the write path and the alarm poll may still use the session).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut own_monitor = None;
        let (station, link) = match self.monitored.take() {
            Some(m) => m,
            None => {
                let (station, link, task) = station::start(
                    self.station.clone(),
                    self.bus.clone(),
                    self.shortest_interval(),
                    self.write_timeout,
                    shutdown.child_token(),
                );
                own_monitor = Some(task);
                (station, link)
            }
        };
        self.station = station;
        let mut tasks = JoinSet::new();
        let mut plan_txs = Vec::with_capacity(self.groups.len());
        for ((g, stats), rules) in self.groups.iter().zip(&self.stats).zip(&self.rules) {
            let (tx, rx) = watch::channel(None);
            plan_txs.push(tx);
            let task = GroupTask::new(
                g.name.clone(),
                g.rules,
                g.mode,
                self.batch,
                self.concurrency,
                self.station.clone(),
                self.bus.clone(),
                link.clone(),
                rx,
            )
            .with_stats(stats.clone())
            .with_rules(rules.subscribe());
            tasks.spawn(task.run(shutdown.child_token()));
        }
        let mut d = Discovery {
            poller: &self,
            link: &link,
            plan_txs,
            warned_unmatched: HashSet::new(),
            slowdown_warned: false,
        };

        // First discovery: until the station answers. While it is down the
        // monitor probes; a refusal that is no outage backs off here.
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(15))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match self.station.list_tags().await {
                Ok(tags) => {
                    d.apply(tags);
                    break;
                }
                Err(e) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(error = %e, "cannot list the station's tags");
                    let pause = async {
                        if e.is_outage() {
                            // The monitor declares the outage (a message
                            // away), then probes: wait for its answer.
                            let _ = tokio::time::timeout(Duration::from_secs(1), link.wait_down())
                                .await;
                            link.wait_up().await;
                        } else {
                            tokio::time::sleep(wait).await;
                        }
                    };
                    tokio::select! {
                        _ = pause => {}
                        _ = shutdown.cancelled() => {
                            drop(d);
                            while tasks.join_next().await.is_some() {}
                            return;
                        }
                    }
                }
            }
        }

        // Re-discovery.
        loop {
            let wait = match self.discovery_interval {
                Some(i) => tokio::time::sleep(i),
                None => tokio::time::sleep(Duration::from_secs(u32::MAX as u64)),
            };
            tokio::select! {
                _ = wait => {}
                _ = shutdown.cancelled() => break,
            }
            let listed = tokio::select! {
                _ = link.wait_up() => self.station.list_tags().await,
                _ = shutdown.cancelled() => break,
            };
            match listed {
                Ok(tags) => d.apply(tags),
                Err(e) => {
                    tracing::warn!(error = %e, "re-discovery failed; keeping the current tag list")
                }
            }
        }
        drop(d);
        while tasks.join_next().await.is_some() {}
        if let Some(t) = own_monitor {
            let _ = t.await;
        }
    }
}

struct Discovery<'a> {
    poller: &'a Poller,
    link: &'a StationLink,
    plan_txs: Vec<watch::Sender<Option<Arc<GroupPlan>>>>,
    warned_unmatched: HashSet<(Arc<str>, String)>,
    slowdown_warned: bool,
}

impl Discovery<'_> {
    fn apply(&mut self, tags: Vec<TagInfo>) {
        let p = self.poller;
        let map: TagMap = tags.iter().map(|t| (t.name.clone(), t.clone())).collect();
        let res = plan::resolve(&p.groups, &tags);
        for u in &res.unmatched {
            if self.warned_unmatched.insert(u.clone()) {
                tracing::warn!(group = %u.0, glob = %u.1, "poll group glob matches no station tag");
            }
        }
        self.warned_unmatched.retain(|u| res.unmatched.contains(u));
        if res.overlaps > 0 {
            tracing::info!(
                tags = res.overlaps,
                "tags matched by several poll groups are polled by the first only"
            );
        }

        let load: Vec<(usize, Duration)> = p
            .groups
            .iter()
            .zip(&res.per_group)
            .map(|(g, t)| (plan::requests_per_cycle(t.len(), p.batch), g.interval))
            .collect();
        let factor = plan::slowdown(&load, p.rps, p.reserved_rps);
        if factor > 1.0 && !self.slowdown_warned {
            tracing::warn!(
                factor = format!("{factor:.2}"),
                requests_per_second = p.rps,
                "the rate limit cannot cover every poll group's interval; all groups poll slower by this factor"
            );
        }
        self.slowdown_warned = factor > 1.0;

        let mut polled: Vec<TagInfo> = res.per_group.iter().flatten().cloned().collect();
        polled.sort_by(|a, b| a.name.cmp(&b.name));
        tracing::info!(
            station_tags = tags.len(),
            polled = polled.len(),
            "tags discovered"
        );
        metrics::gauge!("wincc_gateway_tags").set(polled.len() as f64);
        // The monitor probes a down station by reading one tag.
        if let Some(t) = polled.first().or(tags.first()) {
            self.link.set_probe_tag(Arc::from(t.name.as_str()));
        }
        // Sinks learn the tags (and build their nodes) before values arrive.
        p.bus.publish(Event::Tags(Arc::new(polled)));
        p.tags_tx.send_replace(Arc::new(map));

        for ((g, tags), tx) in p.groups.iter().zip(res.per_group).zip(&self.plan_txs) {
            metrics::gauge!("wincc_gateway_poll_group_slowdown", "group" => g.name.to_string())
                .set(factor);
            let plan = Arc::new(GroupPlan {
                tags: Arc::new(tags),
                period: g.interval.mul_f64(factor),
            });
            tx.send_if_modified(|cur| {
                if cur.as_deref() == Some(&*plan) {
                    false
                } else {
                    *cur = Some(plan.clone());
                    true
                }
            });
        }
    }
}

/// Lists the station's tags, optionally only those matching the glob
/// `filter`, sorted by name (for `wincc-gateway browse`). A filter that is
/// not a valid glob is refused with `StationError::Refused { code: "filter" }`
/// before any station request.
pub async fn browse(
    station: &dyn Station,
    filter: Option<&str>,
) -> Result<Vec<TagInfo>, StationError> {
    let patterns = match filter {
        Some(f) => Some(TagPatterns::new(&[f]).map_err(|e| StationError::Refused {
            code: "filter".into(),
            message: e.to_string(),
        })?),
        None => None,
    };
    let mut tags = station.list_tags().await?;
    if let Some(p) = patterns {
        tags.retain(|t| p.is_match(&t.name));
    }
    tags.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tags)
}
