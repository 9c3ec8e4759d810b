//! The station's one connection state (contract §7 "Outage"), owned by one
//! task: the monitor.
//!
//! Every request the gateway makes (reads, browse, alarm polls, writes,
//! logins, subscriptions) goes through [`Monitored`], a [`Station`] that
//! reports each request's outcome to the monitor by message. The first
//! outage-class failure (unreachable, timeout, 5xx, refused login,
//! malformed reply) turns the state *disconnected*: every group marks all
//! its tags bad at once (they watch the state), requests still queued or in
//! flight (except writes, whose outcome would be unknown) are abandoned,
//! and new ones fail at once without reaching the station. While it is
//! down the monitor alone talks to the station: one cheap probe at a time
//! (a one-tag read, or the tag list before the first discovery), first
//! after the shortest poll interval, doubling up to every 5 s. The first
//! answer turns the state *connected*: groups poll at once, then on their
//! own intervals. Each transition is published once on the bus
//! ([`Event::Station`]: the retained `{prefix}/station` message) and in a
//! `watch` channel read by the groups, the alarm poller and `/healthz`.
//!
//! Groups also report failures that do not take the station down (a 429
//! that outlived its retry, a 4xx on one chunk): the state lists them, by
//! group name, until that group's next clean cycle.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Event};
use crate::model::{format_ts, Alarm, Reading, StationStatus, TagInfo, TagType};
use crate::wincc::limiter::WRITE_DEADLINE;
use crate::wincc::{Station, StationError, TagSubscription};

/// Longest pause between two probes while the station is down.
pub const PROBE_MAX: Duration = Duration::from_secs(5);
/// Shortest pause between two probes (a 50 ms poll group does not make
/// the monitor probe 20 times a second).
pub const PROBE_MIN: Duration = Duration::from_millis(100);

/// What kind of request an outcome belongs to (for the log and the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Browse,
    Alarms,
    Write,
    Subscription,
    Probe,
}

impl RequestKind {
    fn as_str(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Browse => "browse",
            RequestKind::Alarms => "alarm poll",
            RequestKind::Write => "write",
            RequestKind::Subscription => "subscription",
            RequestKind::Probe => "probe",
        }
    }
}

/// The station's state as the monitor holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StationState {
    /// `None` until the station first answered or failed.
    pub connected: Option<bool>,
    /// When the current state began.
    pub since: DateTime<Utc>,
    /// Why the station is down (the failure that declared it).
    pub why: Option<String>,
    /// Groups whose last cycle failed while the station was up: name → why.
    pub failing_groups: BTreeMap<Arc<str>, String>,
    /// Outages so far (each group marks its tags bad once per outage).
    pub outages: u64,
}

impl StationState {
    /// True while the station is declared unreachable.
    pub fn is_down(&self) -> bool {
        self.connected == Some(false)
    }

    /// The error a request gets while the station is down (nothing sent).
    pub fn down_error(&self) -> Option<StationError> {
        self.is_down().then(|| {
            StationError::Unreachable(format!(
                "down since {} ({}); not sent until the station answers a probe",
                format_ts(&self.since),
                self.why.as_deref().unwrap_or("no answer")
            ))
        })
    }
}

enum Msg {
    Outcome {
        kind: RequestKind,
        error: Option<StationError>,
    },
    Group {
        name: Arc<str>,
        failure: Option<String>,
    },
    ProbeTag(Arc<str>),
}

/// Counts of the requests made through the monitor (station calls: a read
/// batch, a write batch, an alarm poll, a tag list, a probe), read by the
/// status page. Written by the requests themselves, read by sampling.
#[derive(Debug, Default)]
pub struct Activity {
    requests: AtomicU64,
    in_flight: AtomicU64,
}

impl Activity {
    /// Requests started so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests started and not yet answered (including those waiting for
    /// a rate-limit permit).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn start(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }
}

/// One request in flight; dropping it (answered or abandoned) ends it.
struct InFlight<'a>(&'a Activity);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A handle on the monitor: reports outcomes, reads the state. Cheap to clone.
#[derive(Clone)]
pub struct StationLink {
    tx: mpsc::UnboundedSender<Msg>,
    state: watch::Receiver<StationState>,
    activity: Arc<Activity>,
}

impl StationLink {
    /// The request counts of this station (for the status page).
    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// The state as it stands.
    pub fn current(&self) -> StationState {
        self.state.borrow().clone()
    }

    /// A receiver of every state change.
    pub fn watch(&self) -> watch::Receiver<StationState> {
        self.state.clone()
    }

    /// The error for a request made now, if the station is down.
    pub fn down_error(&self) -> Option<StationError> {
        self.state.borrow().down_error()
    }

    /// Reports one request's outcome. Only what can change the state is
    /// sent: a success while not connected, an outage-class failure while
    /// not down.
    pub fn report(&self, kind: RequestKind, error: Option<&StationError>) -> bool {
        let connected = self.state.borrow().connected;
        let send = match error {
            None => connected != Some(true),
            Some(e) => e.is_outage() && connected != Some(false),
        };
        send && self
            .tx
            .send(Msg::Outcome {
                kind,
                error: error.cloned(),
            })
            .is_ok()
    }

    /// [`report`](Self::report), then, where that changes the state, waits
    /// (at most 1 s) until the monitor has changed it: the station is shown
    /// connected before the values of the answer go out, and down before
    /// the failed request's caller carries on.
    pub async fn settle(&self, kind: RequestKind, error: Option<&StationError>) {
        if !self.report(kind, error) {
            return;
        }
        let up = error.is_none();
        let mut rx = self.state.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            rx.wait_for(|s| {
                if up {
                    s.connected == Some(true)
                } else {
                    s.is_down()
                }
            }),
        )
        .await;
    }

    /// A group's cycle ended: `failure` is why some of it failed, or `None`
    /// for a clean cycle.
    pub fn group_cycle(&self, name: &Arc<str>, failure: Option<String>) {
        let listed = self.state.borrow().failing_groups.contains_key(name);
        if listed || failure.is_some() {
            let _ = self.tx.send(Msg::Group {
                name: name.clone(),
                failure,
            });
        }
    }

    /// The tag the monitor reads to probe a down station.
    pub fn set_probe_tag(&self, name: Arc<str>) {
        let _ = self.tx.send(Msg::ProbeTag(name));
    }

    /// Waits until the station is not down (at once if it is not).
    pub async fn wait_up(&self) {
        let mut rx = self.state.clone();
        if rx.wait_for(|s| !s.is_down()).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until the station is down (never returns while the monitor
    /// is gone).
    pub async fn wait_down(&self) {
        let mut rx = self.state.clone();
        if rx.wait_for(StationState::is_down).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Starts the monitor for `inner` and returns the station every part of
/// the gateway is to use, the link, and the monitor's task (ends at
/// `shutdown`). `shortest_interval` is the first pause between probes.
pub fn start(
    inner: Arc<dyn Station>,
    bus: Bus,
    shortest_interval: Duration,
    write_timeout: Duration,
    shutdown: CancellationToken,
) -> (Arc<dyn Station>, StationLink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (state_tx, state_rx) = watch::channel(StationState {
        connected: None,
        since: Utc::now(),
        why: None,
        failing_groups: BTreeMap::new(),
        outages: 0,
    });
    let link = StationLink {
        tx,
        state: state_rx,
        activity: Arc::default(),
    };
    let monitor = Monitor {
        inner: inner.clone(),
        activity: link.activity.clone(),
        bus,
        state: state_tx,
        probe_tag: None,
        first_probe: shortest_interval.clamp(PROBE_MIN, PROBE_MAX),
        next_pause: PROBE_MAX,
        next_probe: Instant::now(),
    };
    let task = tokio::spawn(monitor.run(rx, shutdown));
    let station = Arc::new(Monitored {
        inner,
        link: link.clone(),
        write_timeout,
    });
    (station, link, task)
}

struct Monitor {
    inner: Arc<dyn Station>,
    activity: Arc<Activity>,
    bus: Bus,
    state: watch::Sender<StationState>,
    probe_tag: Option<Arc<str>>,
    first_probe: Duration,
    next_pause: Duration,
    next_probe: Instant,
}

impl Monitor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, shutdown: CancellationToken) {
        loop {
            let down = self.state.borrow().is_down();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                m = rx.recv() => match m {
                    Some(m) => self.handle(m),
                    None => return,
                },
                _ = tokio::time::sleep_until(self.next_probe), if down => {
                    let r = tokio::select! {
                        r = self.probe() => r,
                        _ = shutdown.cancelled() => return,
                    };
                    match r {
                        // Any answer, even a refusal of the probe itself,
                        // shows the station is there.
                        Err(e) if e.is_outage() => {
                            tracing::debug!(error = %e, "station probe failed");
                            self.next_probe = Instant::now() + self.next_pause;
                            self.next_pause = (self.next_pause * 2).min(PROBE_MAX);
                        }
                        _ => self.up(RequestKind::Probe),
                    }
                }
            }
        }
    }

    async fn probe(&self) -> Result<(), StationError> {
        metrics::counter!("wincc_gateway_station_probes_total").increment(1);
        let _counted = self.activity.start();
        match &self.probe_tag {
            Some(t) => self
                .inner
                .read_values(std::slice::from_ref(t))
                .await
                .map(drop),
            None => self.inner.list_tags().await.map(drop),
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::ProbeTag(t) => self.probe_tag = Some(t),
            Msg::Outcome { kind, error: None } => {
                if self.state.borrow().connected != Some(true) {
                    self.up(kind);
                }
            }
            Msg::Outcome {
                kind,
                error: Some(e),
            } => {
                if e.is_outage() && !self.state.borrow().is_down() {
                    self.down(kind, &e);
                }
            }
            Msg::Group { name, failure } => {
                self.state.send_if_modified(|s| match failure {
                    Some(why) if s.connected == Some(true) => {
                        if s.failing_groups.get(&name) == Some(&why) {
                            return false;
                        }
                        if !s.failing_groups.contains_key(&name) {
                            tracing::warn!(group = %name, error = %why, "poll group failing");
                        }
                        s.failing_groups.insert(name, why);
                        true
                    }
                    Some(_) => false,
                    None => {
                        let was = s.failing_groups.remove(&name).is_some();
                        if was {
                            tracing::info!(group = %name, "poll group reads again");
                        }
                        was
                    }
                });
            }
        }
    }

    fn down(&mut self, kind: RequestKind, e: &StationError) {
        let why = format!("{} failed: {e}", kind.as_str());
        tracing::warn!(error = %why, "station unreachable; probing until it answers");
        let since = Utc::now();
        self.state.send_modify(|s| {
            s.connected = Some(false);
            s.since = since;
            s.why = Some(why.clone());
            s.failing_groups.clear();
            s.outages += 1;
        });
        self.next_probe = Instant::now() + self.first_probe;
        self.next_pause = (self.first_probe * 2).min(PROBE_MAX);
        self.publish(false, since, Some(why));
    }

    fn up(&mut self, kind: RequestKind) {
        let was_down = self.state.borrow().is_down();
        let since = Utc::now();
        self.state.send_modify(|s| {
            s.connected = Some(true);
            s.since = since;
            s.why = None;
        });
        if was_down {
            tracing::info!(
                by = kind.as_str(),
                "station answers again; every group polls now"
            );
        } else {
            tracing::info!("station connected");
        }
        self.publish(true, since, None);
    }

    fn publish(&self, connected: bool, since: DateTime<Utc>, error: Option<String>) {
        metrics::gauge!("wincc_gateway_station_connected").set(if connected { 1.0 } else { 0.0 });
        self.bus.publish(Event::Station(StationStatus {
            connected,
            since,
            error,
        }));
    }
}

/// The station as the rest of the gateway sees it: see the module docs.
pub(crate) struct Monitored {
    inner: Arc<dyn Station>,
    link: StationLink,
    write_timeout: Duration,
}

impl Monitored {
    /// Runs `request` unless the station is down; abandons it when the
    /// station goes down meanwhile; reports its outcome.
    async fn gated<T>(
        &self,
        kind: RequestKind,
        request: impl Future<Output = Result<T, StationError>>,
    ) -> Result<T, StationError> {
        if let Some(e) = self.link.down_error() {
            return Err(e);
        }
        let counted = self.link.activity.start();
        let r = tokio::select! {
            biased;
            r = request => r,
            _ = self.link.wait_down() => {
                return Err(self.link.down_error().unwrap_or_else(|| {
                    StationError::Unreachable("the station went down".into())
                }))
            }
        };
        drop(counted);
        self.link.settle(kind, r.as_ref().err()).await;
        r
    }
}

#[async_trait]
impl Station for Monitored {
    async fn list_tags(&self) -> Result<Vec<TagInfo>, StationError> {
        self.gated(RequestKind::Browse, self.inner.list_tags())
            .await
    }

    async fn read_values(&self, names: &[Arc<str>]) -> Result<Vec<Reading>, StationError> {
        self.gated(RequestKind::Read, self.inner.read_values(names))
            .await
    }

    async fn write_value(
        &self,
        name: &str,
        ty: TagType,
        value: &serde_json::Value,
    ) -> Result<(), StationError> {
        let w = [(name.to_string(), ty, value.clone())];
        self.write_values(&w)
            .await
            .pop()
            .unwrap_or_else(|| Err(StationError::Malformed("no write result".into())))
    }

    /// Writes are refused at once while the station is down, wait at most
    /// `wincc.write_timeout_ms` for a rate-limit permit, and are never
    /// abandoned once started (their outcome would be unknown).
    async fn write_values(
        &self,
        writes: &[(String, TagType, serde_json::Value)],
    ) -> Vec<Result<(), StationError>> {
        if let Some(e) = self.link.down_error() {
            return writes.iter().map(|_| Err(e.clone())).collect();
        }
        let deadline = Instant::now() + self.write_timeout;
        let counted = self.link.activity.start();
        let results = WRITE_DEADLINE
            .scope(deadline, self.inner.write_values(writes))
            .await;
        drop(counted);
        let outage = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .find(|e| e.is_outage());
        if let Some(e) = outage {
            self.link.settle(RequestKind::Write, Some(e)).await;
        } else if results.iter().any(Result::is_ok) {
            self.link.settle(RequestKind::Write, None).await;
        }
        results
    }

    async fn active_alarms(&self) -> Result<Vec<Alarm>, StationError> {
        self.gated(RequestKind::Alarms, self.inner.active_alarms())
            .await
    }

    async fn logout(&self) {
        self.inner.logout().await
    }

    async fn subscribe(&self, names: &[Arc<str>]) -> Result<Option<TagSubscription>, StationError> {
        self.gated(RequestKind::Subscription, self.inner.subscribe(names))
            .await
    }

    async fn keep_session(&self) {
        // Only while a subscription is up (the group asks then), and the
        // extension itself goes through the client's limiter.
        self.inner.keep_session().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    /// A station that fails while `down` is set and counts requests.
    #[derive(Default)]
    struct Flaky {
        down: std::sync::atomic::AtomicBool,
        requests: AtomicUsize,
        in_flight: AtomicU32,
        max_in_flight: AtomicU32,
    }

    #[async_trait]
    impl Station for Flaky {
        async fn list_tags(&self) -> Result<Vec<TagInfo>, StationError> {
            self.read_values(&[]).await.map(|_| Vec::new())
        }
        async fn read_values(&self, _: &[Arc<str>]) -> Result<Vec<Reading>, StationError> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                Err(StationError::Unreachable("refused".into()))
            } else {
                Ok(Vec::new())
            }
        }
        async fn write_value(
            &self,
            _: &str,
            _: TagType,
            _: &serde_json::Value,
        ) -> Result<(), StationError> {
            self.read_values(&[]).await.map(drop)
        }
        async fn active_alarms(&self) -> Result<Vec<Alarm>, StationError> {
            self.read_values(&[]).await.map(|_| Vec::new())
        }
        async fn logout(&self) {}
    }

    #[tokio::test]
    async fn one_failure_takes_the_station_down_probes_back_off_and_one_answer_brings_it_back() {
        let inner = Arc::new(Flaky::default());
        let bus = Bus::new();
        let mut events = bus.subscribe("t", 16);
        let stop = CancellationToken::new();
        let (station, link, task) = start(
            inner.clone(),
            bus.clone(),
            Duration::from_millis(100),
            Duration::from_secs(1),
            stop.clone(),
        );
        link.set_probe_tag("T".into());
        station.read_values(&[]).await.unwrap();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(link.current().connected, Some(true));

        inner.down.store(true, Ordering::SeqCst);
        assert!(station.active_alarms().await.is_err());
        link.wait_down().await;
        let why = link.current().why.unwrap();
        assert!(why.starts_with("alarm poll failed"), "{why}");
        // Requests now fail at once and reach nothing.
        let before = inner.requests.load(Ordering::SeqCst);
        for _ in 0..50 {
            let e = station.read_values(&[]).await.unwrap_err();
            assert!(e.to_string().contains("not sent"), "{e}");
            let e = station
                .write_value("T", TagType::Int32, &serde_json::json!(1))
                .await
                .unwrap_err();
            assert!(e.to_string().contains("not sent"), "{e}");
        }
        assert_eq!(inner.requests.load(Ordering::SeqCst), before);
        // Probes: after 100 ms, then 200, 400, 800, 1600 ms (doubling up to 5 s).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let probes = inner.requests.load(Ordering::SeqCst) - before;
        assert!((3..=5).contains(&probes), "{probes} probes in 2.5 s");
        assert_eq!(inner.max_in_flight.load(Ordering::SeqCst), 1);

        inner.down.store(false, Ordering::SeqCst);
        let mut rx = link.watch();
        tokio::time::timeout(
            PROBE_MAX + Duration::from_secs(1),
            rx.wait_for(|s| s.connected == Some(true)),
        )
        .await
        .expect("back within one probe pause")
        .unwrap();
        let mut seen = Vec::new();
        while let Some(Event::Station(s)) = events.try_recv() {
            seen.push(s.connected);
        }
        assert_eq!(seen, [true, false, true], "each transition once");
        stop.cancel();
        task.await.unwrap();
    }
}
