//! `mode = "subscribe"` poll groups (contract §6) against the simulator
//! over real HTTP and WebSocket (loopback): while the subscription is up
//! values arrive with no `tagValues` polls (heartbeat included); a station
//! outage is handled by the polling fallback (tags bad once with their last
//! value, station disconnected) and the group subscribes again afterwards;
//! a station without subscriptions is simply polled.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::station::{
    logging_in, poll_group, quiet, requests, start_sim, wincc_settings, Polling,
};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use wincc_gateway::bus::Event;
use wincc_gateway::config::{AuthMode, Dialect, PollGroup, PollMode, Settings};
use wincc_gateway::model::{BadReason, Quality, TagChange, TagType};
use wincc_gateway::sim::{self, SimHandle, SimOptions};

const PASSWORD: &str = "Sub5cr1be-Pa55!";

async fn sim_with(dialect: Dialect, tags: usize) -> SimHandle {
    start_sim(SimOptions {
        token_ttl: Duration::from_secs(3600),
        seed: 11,
        dialect,
        ..quiet(tags, AuthMode::Session, PASSWORD)
    })
    .await
}

/// One subscribed group over every tag (100 ms fallback polls), 1 s timeout.
fn settings(
    sim: &SimHandle,
    dialect: Dialect,
    heartbeat_s: u64,
    dir: &tempfile::TempDir,
) -> Settings {
    let mut w = logging_in(
        wincc_settings(sim, dialect),
        AuthMode::Session,
        PASSWORD,
        dir.path(),
    );
    w.timeout_ms = 1000;
    let group = PollGroup {
        heartbeat_s,
        mode: PollMode::Subscribe,
        ..poll_group("pushed", &["**"], 100)
    };
    common::station::settings(w, vec![group])
}

struct Running {
    poller: Polling,
    /// Every tag's last published change.
    last: HashMap<String, TagChange>,
    _dir: tempfile::TempDir,
}

async fn start(sim: &SimHandle, dialect: Dialect, heartbeat_s: u64) -> Running {
    start_with(sim, dialect, heartbeat_s, |_| {}).await
}

async fn start_with(
    sim: &SimHandle,
    dialect: Dialect,
    heartbeat_s: u64,
    tweak: impl FnOnce(&mut Settings),
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(sim, dialect, heartbeat_s, &dir);
    tweak(&mut s);
    Running {
        poller: Polling::start(&s),
        last: HashMap::new(),
        _dir: dir,
    }
}

impl Running {
    /// Changes and station states until `pred` holds for one change (or,
    /// with `station`, for a station event of that connectedness).
    async fn until(
        &mut self,
        what: &str,
        station: Option<bool>,
        mut pred: impl FnMut(&TagChange) -> bool,
    ) -> Vec<TagChange> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.poller.sub.recv()).await {
                Ok(Some(Event::Changes(b))) => {
                    let hit = b.changes.iter().any(&mut pred);
                    self.remember(&b.changes);
                    seen.extend(b.changes.iter().cloned());
                    if hit && station.is_none() {
                        return seen;
                    }
                }
                Ok(Some(Event::Station(st))) if Some(st.connected) == station => return seen,
                Ok(Some(_)) => {}
                other => panic!(
                    "no {what} within 20 s ({}) after {} changes",
                    if other.is_ok() {
                        "bus closed"
                    } else {
                        "timed out"
                    },
                    seen.len()
                ),
            }
        }
    }

    /// Everything published during `d`.
    async fn collect(&mut self, d: Duration) -> Vec<TagChange> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.poller.sub.recv()).await {
            if let Event::Changes(b) = ev {
                self.remember(&b.changes);
                seen.extend(b.changes.iter().cloned());
            }
        }
        seen
    }

    fn remember(&mut self, changes: &[TagChange]) {
        for c in changes {
            self.last.insert(c.name.to_string(), c.clone());
        }
    }

    async fn stop(self) {
        self.poller.stop().await;
    }
}

const POLLS: &str = "POST /graphql tagValues";
const SUBSCRIBES: &str = "WS subscribe tagValues";

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn int_tag(sim: &SimHandle) -> String {
    sim.tags()
        .into_iter()
        .find(|t| t.writable && t.ty == TagType::Int16)
        .expect("the simulator has a writable Int16 tag")
        .name
}

fn other_value(sim: &SimHandle, name: &str, a: i64, b: i64) -> i64 {
    if sim.value(name) == Some(json!(a)) {
        b
    } else {
        a
    }
}

/// Sets `name` to a new value and waits until the poller publishes it.
async fn change_and_see(run: &mut Running, sim: &SimHandle, name: &str, v: i64) {
    sim.set_value(name, json!(v));
    run.until("the change", None, |c| {
        c.name.as_ref() == name && c.value == json!(v)
    })
    .await;
}

#[tokio::test]
async fn subscribed_group_gets_changes_and_heartbeats_without_polling() {
    let sim = sim_with(Dialect::Unified, 30).await;
    let tag = int_tag(&sim);
    // 30 tags, 8 names a request: 4 subscriptions.
    let mut run = start_with(&sim, Dialect::Unified, 1, |s| {
        s.wincc.max_tags_per_request = 8
    })
    .await;
    wait_for("the subscriptions", || requests(&sim, SUBSCRIBES) >= 4).await;
    // Every tag's first value arrives (from the first poll or from Added).
    run.collect(Duration::from_millis(600)).await;
    assert_eq!(run.last.len(), sim.tag_names().len());
    let polls = requests(&sim, POLLS);
    // The subscription is up: changes flow while nothing polls.
    for (a, b) in [(111, 222), (333, 444), (555, 666), (777, 888)] {
        let v = other_value(&sim, &tag, a, b);
        change_and_see(&mut run, &sim, &tag, v).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Quiet for 1.5 s: the 1 s heartbeat republishes every tag, unchanged.
    let quiet = run.collect(Duration::from_millis(1500)).await;
    let names: std::collections::HashSet<&str> = quiet.iter().map(|c| c.name.as_ref()).collect();
    assert_eq!(
        names.len(),
        sim.tag_names().len(),
        "heartbeat for every tag: {quiet:?}"
    );
    let again = quiet.iter().find(|c| c.name.as_ref() == tag).unwrap();
    assert_eq!(Some(&again.value), sim.value(&tag).as_ref());
    assert_eq!(
        requests(&sim, POLLS),
        polls,
        "no tagValues polls while subscribed"
    );
    assert_eq!(requests(&sim, SUBSCRIBES), 4);
    assert_eq!(sim.stats().logins, 1);
    run.stop().await;
}

#[tokio::test]
async fn outage_falls_back_to_polling_then_subscribes_again() {
    let sim = sim_with(Dialect::Unified, 30).await;
    let tag = int_tag(&sim);
    let mut run = start(&sim, Dialect::Unified, 0).await;
    wait_for("the subscription", || requests(&sim, SUBSCRIBES) >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = other_value(&sim, &tag, 1234, 4321);
    change_and_see(&mut run, &sim, &tag, v).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.collect(Duration::from_millis(200)).await;
    let before = run.last.clone();
    assert_eq!(before.len(), sim.tag_names().len());

    sim.set_faults(sim::Faults {
        outage_s: 2.0,
        ..sim::Faults::default()
    });
    // The subscription closes; the fallback poll fails (the subscription's
    // end alone publishes nothing): station disconnected and every tag not
    // already bad published bad once, keeping its last value and timestamp.
    let mut seen = run.until("the disconnect", Some(false), |_| false).await;
    seen.extend(run.until("the reconnect", Some(true), |_| false).await);
    let mut bad: HashMap<&str, Vec<&TagChange>> = HashMap::new();
    for c in seen.iter().filter(|c| c.quality == Quality::Bad) {
        bad.entry(c.name.as_ref()).or_default().push(c);
    }
    let mut checked = 0;
    for (name, last) in &before {
        if last.quality == Quality::Bad {
            assert!(!bad.contains_key(name.as_str()), "{name} was bad already");
            continue;
        }
        let b = bad
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} not bad"));
        assert_eq!(b.len(), 1, "bad once: {b:?}");
        assert!(
            matches!(b[0].error, Some(BadReason::Communication(_))),
            "{b:?}"
        );
        assert_eq!((&b[0].value, b[0].timestamp), (&last.value, last.timestamp));
        checked += 1;
    }
    assert!(checked >= before.len() / 2, "{checked} of {}", before.len());
    assert_eq!(bad[tag.as_str()][0].value, json!(v), "last value kept");

    // Back: values flow and the group subscribes again, then stops polling.
    wait_for("a new subscription", || requests(&sim, SUBSCRIBES) >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let polls = requests(&sim, POLLS);
    let v2 = other_value(&sim, &tag, 5678, 8765);
    change_and_see(&mut run, &sim, &tag, v2).await;
    let later = run.collect(Duration::from_millis(800)).await;
    assert!(later.iter().all(|c| c.quality != Quality::Bad), "{later:?}");
    assert_eq!(
        requests(&sim, POLLS),
        polls,
        "no polls once subscribed again"
    );
    assert_eq!(requests(&sim, SUBSCRIBES), 2);
    run.stop().await;
}

#[tokio::test]
async fn station_without_subscriptions_is_polled() {
    // Config validation refuses subscribe groups on other dialects; the
    // poller still has to read them (Station::subscribe answers Ok(None)).
    let sim = sim_with(Dialect::Generic, 10).await;
    let tag = int_tag(&sim);
    let mut run = start(&sim, Dialect::Generic, 0).await;
    let v = other_value(&sim, &tag, 42, 24);
    change_and_see(&mut run, &sim, &tag, v).await;
    let before = requests(&sim, "POST /tags/values");
    let v = other_value(&sim, &tag, 42, 24);
    change_and_see(&mut run, &sim, &tag, v).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        requests(&sim, "POST /tags/values") >= before + 3,
        "polled on its 100 ms interval: {:?}",
        sim.stats().requests
    );
    run.stop().await;
}

#[tokio::test]
async fn new_station_tags_are_subscribed_after_rediscovery() {
    let sim = sim_with(Dialect::Unified, 30).await;
    let mut run = start_with(&sim, Dialect::Unified, 0, |s| {
        s.wincc.discovery_interval_s = 1
    })
    .await;
    wait_for("the subscription", || requests(&sim, SUBSCRIBES) >= 1).await;
    run.collect(Duration::from_millis(300)).await;
    let name = "HMI_RT_1::Added/Level";
    sim.add_tag(
        wincc_gateway::model::TagInfo {
            name: name.into(),
            ty: TagType::Int32,
            writable: true,
        },
        json!(7),
    );
    run.until("the new tag", None, |c| {
        c.name.as_ref() == name && c.value == json!(7)
    })
    .await;
    wait_for("a subscription with the new tag", || {
        requests(&sim, SUBSCRIBES) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let polls = requests(&sim, POLLS);
    change_and_see(&mut run, &sim, name, 8).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        requests(&sim, POLLS),
        polls,
        "the new tag comes by subscription"
    );
    run.stop().await;
}

/// A TCP forwarder to the simulator that can go silent, like a station
/// switched off: no FIN, no RST, bytes simply stop (held, not lost).
struct Proxy {
    addr: std::net::SocketAddr,
    frozen: Arc<AtomicBool>,
}

async fn pump(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn proxy(to: std::net::SocketAddr) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(to).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, f.clone()), pump(sr, cw, f));
            });
        }
    });
    Proxy { addr, frozen }
}

#[tokio::test]
async fn silent_station_is_an_outage_while_subscribed() {
    let sim = sim_with(Dialect::Unified, 30).await;
    let p = proxy(sim.addr()).await;
    let url = format!("http://{}/graphql", p.addr);
    let mut run = start_with(&sim, Dialect::Unified, 0, |s| s.wincc.base_url = url).await;
    wait_for("the subscription", || requests(&sim, SUBSCRIBES) >= 1).await;
    // Quiet for longer than the keepalive allows silence: pongs keep it up.
    let quiet = run.collect(Duration::from_millis(3500)).await;
    assert!(quiet.iter().all(|c| c.quality != Quality::Bad), "{quiet:?}");
    assert_eq!(
        requests(&sim, SUBSCRIBES),
        1,
        "the quiet subscription stayed up"
    );
    let before = run.last.clone();

    p.frozen.store(true, Ordering::SeqCst);
    let mut seen = run.until("the disconnect", Some(false), |_| false).await;
    seen.extend(run.collect(Duration::from_millis(300)).await);
    for (name, last) in before.iter().filter(|(_, l)| l.quality != Quality::Bad) {
        let bad: Vec<_> = seen.iter().filter(|c| c.name.as_ref() == name).collect();
        assert_eq!(bad.len(), 1, "{name}: {bad:?}");
        assert_eq!(bad[0].quality, Quality::Bad);
        assert_eq!(bad[0].value, last.value, "last value kept");
    }

    p.frozen.store(false, Ordering::SeqCst);
    run.until("the reconnect", Some(true), |_| false).await;
    wait_for("a new subscription", || requests(&sim, SUBSCRIBES) >= 2).await;
    run.stop().await;
}

/// With subscriptions the only traffic (no polls, no alarm polls, no
/// rediscovery), the session is still extended before it expires: no
/// second login, and the subscription keeps delivering.
#[tokio::test]
async fn a_subscription_alone_keeps_its_session_alive() {
    let sim = start_sim(SimOptions {
        token_ttl: Duration::from_secs(6),
        seed: 11,
        dialect: Dialect::Unified,
        ..quiet(10, AuthMode::Session, PASSWORD)
    })
    .await;
    let tag = int_tag(&sim);
    let mut run = start(&sim, Dialect::Unified, 0).await;
    wait_for("the subscription", || requests(&sim, SUBSCRIBES) >= 1).await;
    run.collect(Duration::from_millis(600)).await;
    let polls = requests(&sim, POLLS);
    // Three session lifetimes with nothing but the subscription.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let v = other_value(&sim, &tag, 1234, 4321);
    change_and_see(&mut run, &sim, &tag, v).await;
    let st = sim.stats();
    assert_eq!(st.logins, 1, "one login, then extensions: {st:?}");
    assert!(
        requests(&sim, "POST /graphql extendSession") >= 2,
        "the session was extended: {st:?}"
    );
    assert_eq!(requests(&sim, POLLS), polls, "nothing polled meanwhile");
    run.stop().await;
}
