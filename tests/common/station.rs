//! Station-side set-up shared by the poller and station-client tests: a
//! quiet simulator on a free loopback port, `[wincc]` and whole-gateway
//! settings pointing at it, the poller on a real bus, and small lookups.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::{Bus, Event, Subscriber};
use wincc_gateway::config::{
    AlarmSettings, AuthMode, Dialect, PollGroup, PollMode, RateLimit, Settings, WinccSettings,
};
use wincc_gateway::model::{Quality, TagChange, TagType};
use wincc_gateway::poll::Poller;
use wincc_gateway::sim::{self, Faults, SimHandle, SimOptions};
use wincc_gateway::writes::TagMap;

/// The user every station test logs in as.
pub const USER: &str = "gateway";

/// A quiet station: `tags` tags that never change by themselves, no alarm
/// ticker, and the one user [`USER`] with `password` under `auth`.
pub fn quiet(tags: usize, auth: AuthMode, password: &str) -> SimOptions {
    SimOptions {
        tags,
        change_rate: 0.0,
        auth,
        users: vec![(USER.into(), password.into())],
        alarms: false,
        ..SimOptions::default()
    }
}

/// The simulator on a free loopback port.
pub async fn start_sim(o: SimOptions) -> SimHandle {
    sim::start("127.0.0.1:0".parse().unwrap(), o)
        .await
        .expect("simulator starts")
}

/// Where `dialect`'s client finds its API on `sim`.
pub fn base_url(sim: &SimHandle, dialect: Dialect) -> String {
    match dialect {
        Dialect::Generic => sim.base_url(),
        Dialect::WinccV7 => format!("{}/WinCCRestService", sim.base_url()),
        Dialect::Unified => format!("{}/graphql", sim.base_url()),
    }
}

/// `[wincc]` settings for `dialect`'s client on `sim`, without a login:
/// a 2 s timeout and a rate limit far above what a test asks (1000
/// requests a second, burst 100, 4 in flight).
pub fn wincc_settings(sim: &SimHandle, dialect: Dialect) -> WinccSettings {
    WinccSettings {
        base_url: base_url(sim, dialect),
        dialect,
        timeout_ms: 2000,
        rate_limit: RateLimit {
            requests_per_second: 1000,
            burst: 100,
            max_in_flight: 4,
        },
        ..WinccSettings::default()
    }
}

/// `w` logging in as [`USER`] under `auth`, the password read from the
/// file `pw` in `dir`, as in production.
pub fn logging_in(w: WinccSettings, auth: AuthMode, password: &str, dir: &Path) -> WinccSettings {
    let pw = dir.join("pw");
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    WinccSettings {
        auth,
        username: USER.into(),
        password_file: pw.to_string_lossy().into_owned(),
        ..w
    }
}

/// A poll group `name` over the globs `tags`, read every `interval_ms`:
/// polled, no deadband, no heartbeat.
pub fn poll_group(name: &str, tags: &[&str], interval_ms: u64) -> PollGroup {
    PollGroup {
        name: name.into(),
        interval_ms,
        tags: tags.iter().map(|s| s.to_string()).collect(),
        deadband_abs: 0.0,
        deadband_pct: 0.0,
        heartbeat_s: 0,
        mode: PollMode::Poll,
    }
}

/// Whole-gateway settings: the station `wincc` read by `groups`, alarms
/// off and every sink at its defaults.
pub fn settings(wincc: WinccSettings, groups: Vec<PollGroup>) -> Settings {
    Settings {
        wincc,
        poll_groups: groups,
        alarms: AlarmSettings {
            enabled: false,
            ..AlarmSettings::default()
        },
        mqtt: Default::default(),
        opcua: Default::default(),
        sparkplug: Default::default(),
        http: Default::default(),
        log: Default::default(),
    }
}

/// A plain-named read-only tag of type `ty` (safe to use as a glob).
pub fn a_tag_of(sim: &SimHandle, ty: TagType) -> String {
    sim.tags()
        .into_iter()
        .find(|t| {
            t.ty == ty
                && !t.writable
                && t.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._".contains(c))
        })
        .unwrap()
        .name
}

/// The two one-shot faults that spoil a reply body: malformed JSON, then
/// a body cut off short.
pub fn spoiled_bodies() -> [Faults; 2] {
    [
        Faults {
            malformed_body: 1,
            ..Faults::default()
        },
        Faults {
            truncated_body: 1,
            ..Faults::default()
        },
    ]
}

/// Tag names as the station clients take them.
pub fn arcs(names: &[String]) -> Vec<Arc<str>> {
    names.iter().map(|n| n.as_str().into()).collect()
}

/// How many requests `sim` counted under `key` (`"POST /tags/values"`,
/// `"WS subscribe tagValues"`, ...); 0 for none.
pub fn requests(sim: &SimHandle, key: &str) -> u64 {
    sim.stats().requests.get(key).copied().unwrap_or(0)
}

/// The poller running against the station `s` names, publishing on a real
/// bus that the test reads.
pub struct Polling {
    pub sub: Subscriber,
    /// The write path's tag directory as discovery fills it.
    pub tags: watch::Receiver<Arc<TagMap>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Polling {
    pub fn start(s: &Settings) -> Polling {
        let station = wincc_gateway::wincc::connect(s).unwrap();
        let bus = Bus::new();
        let sub = bus.subscribe("test", 100_000);
        let (tx, rx) = watch::channel(Arc::new(TagMap::new()));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Poller::new(s, station, bus, tx).run(cancel.clone()));
        Polling {
            sub,
            tags: rx,
            cancel,
            task,
        }
    }

    /// The next event, or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        tokio::time::timeout(within, self.sub.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips events until `pred` holds; panics after `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("no {what} within {within:?}"),
            }
        }
    }

    /// Every tag change seen within `within` (and the station events).
    pub async fn drain(&mut self, within: Duration) -> (Vec<TagChange>, Vec<bool>) {
        let deadline = Instant::now() + within;
        let (mut changes, mut station) = (Vec::new(), Vec::new());
        while let Some(e) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            match e {
                Event::Changes(b) => changes.extend(b.changes.iter().cloned()),
                Event::Station(s) => station.push(s.connected),
                _ => {}
            }
        }
        (changes, station)
    }

    /// Every tag change within `within`, or until `enough` holds.
    pub async fn changes_until(
        &mut self,
        within: Duration,
        mut enough: impl FnMut(&[TagChange]) -> bool,
    ) -> Vec<TagChange> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while !enough(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Event::Changes(b)) => out.extend(b.changes.iter().cloned()),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    /// Changes until every one of `names` has been seen once with `quality`.
    pub async fn all_with(
        &mut self,
        names: &[String],
        quality: Quality,
        within: Duration,
    ) -> HashMap<String, TagChange> {
        let mut got: HashMap<String, TagChange> = HashMap::new();
        let deadline = Instant::now() + within;
        while got.len() < names.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(Event::Changes(b)) => {
                    for c in &b.changes {
                        if c.quality == quality {
                            assert!(
                                got.insert(c.name.to_string(), c.clone()).is_none(),
                                "{} published {quality:?} twice",
                                c.name
                            );
                        }
                    }
                }
                Some(_) => {}
                None => panic!(
                    "only {} of {} tags became {quality:?}",
                    got.len(),
                    names.len()
                ),
            }
        }
        got
    }

    /// Cancels the poller and waits (at most 5 s) for it to stop.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the poller stops on cancel")
            .unwrap();
    }
}

/// Matches a station event of that connectedness.
pub fn is_station(connected: bool) -> impl FnMut(&Event) -> bool {
    move |e| matches!(e, Event::Station(s) if s.connected == connected)
}
