//! The polling engine against the simulator over real HTTP (loopback):
//! discovery, batching, deadband, heartbeat, outage and recovery, per-tag
//! errors, removed tags, malformed replies, re-login, Retry-After, the rate
//! limit under load and overrunning cycles.

use crate::common;

use std::time::{Duration, Instant};

use common::station::{
    a_tag_of, is_station, logging_in, poll_group, quiet, spoiled_bodies, start_sim, wincc_settings,
    Polling,
};
use serde_json::{json, Value};
use wincc_gateway::bus::Event;
use wincc_gateway::config::{AuthMode, Dialect, PollGroup, RateLimit, Settings};
use wincc_gateway::model::{BadReason, Quality, TagInfo, TagType};
use wincc_gateway::sim::{Faults, SimHandle, TooManyRequests};

async fn sim_with(tags: usize, auth: AuthMode) -> SimHandle {
    start_sim(quiet(tags, auth, "pw")).await
}

fn group(tags: &[&str], interval_ms: u64) -> PollGroup {
    poll_group("g", tags, interval_ms)
}

/// The generic client without login: 500 ms timeout, 500 requests a
/// second (burst 50), 2 in flight.
fn settings(sim: &SimHandle, groups: Vec<PollGroup>) -> Settings {
    let mut w = wincc_settings(sim, Dialect::Generic);
    w.timeout_ms = 500;
    w.rate_limit = RateLimit {
        requests_per_second: 500,
        burst: 50,
        max_in_flight: 2,
    };
    common::station::settings(w, groups)
}

/// Every tag each 50 ms, logging in to a session with `password`.
fn session_settings(sim: &SimHandle, password: &str, dir: &tempfile::TempDir) -> Settings {
    let mut s = settings(sim, vec![group(&["**"], 50)]);
    s.wincc = logging_in(s.wincc, AuthMode::Session, password, dir.path());
    s
}

#[tokio::test]
async fn discovery_then_one_batched_cycle() {
    let sim = sim_with(1030, AuthMode::None).await;
    let mut s = settings(&sim, vec![group(&["**"], 60_000)]);
    s.wincc.max_tags_per_request = 300;
    let mut rig = Polling::start(&s);
    rig.until(Duration::from_secs(5), "connected", is_station(true))
        .await;
    match rig.next(Duration::from_secs(5)).await {
        Some(Event::Tags(t)) => assert_eq!(t.len(), 1030),
        other => panic!("expected the tag list first, got {other:?}"),
    }
    assert_eq!(
        rig.tags.borrow().len(),
        1030,
        "the write path's directory has every tag"
    );
    let names = sim.tag_names();
    let first = rig
        .all_with(&names, Quality::Good, Duration::from_secs(5))
        .await;
    assert_eq!(first.len(), 1030);
    for (n, c) in &first {
        assert_eq!(Some(&c.value), sim.value(n).as_ref(), "{n:?}");
    }
    let st = sim.stats();
    assert_eq!(
        st.requests["POST /tags/values"], 4,
        "ceil(1030 / 300) requests: {st:?}"
    );
    assert_eq!(st.tags_read, 1030);
    assert_eq!(st.requests["GET /tags"], 2, "two pages of 1000");
    rig.stop().await;
}

#[tokio::test]
async fn deadband_and_quality_changes() {
    let sim = sim_with(40, AuthMode::None).await;
    let tag = a_tag_of(&sim, TagType::Double);
    sim.set_value(&tag, json!(10.0));
    let mut g = group(&[&tag], 50);
    g.deadband_abs = 1.0;
    let mut rig = Polling::start(&settings(&sim, vec![g]));
    let mut published = Vec::new();
    let step = |v: Value| {
        sim.set_value(&tag, v);
    };
    let (c, _) = rig.drain(Duration::from_millis(400)).await;
    published.extend(c.into_iter().map(|c| c.value));
    for v in [10.5, 11.5, 12.0, 10.0, 10.9] {
        step(json!(v));
        let (c, _) = rig.drain(Duration::from_millis(300)).await;
        published.extend(c.into_iter().map(|c| c.value));
    }
    assert_eq!(published, vec![json!(10.0), json!(11.5), json!(10.0)]);
    sim.set_quality(&tag, Quality::Uncertain, Some(0x48))
        .unwrap();
    let (c, _) = rig.drain(Duration::from_millis(300)).await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].quality, Quality::Uncertain);
    assert_eq!(c[0].quality_code, Some(0x48));
    rig.stop().await;
}

#[tokio::test]
async fn heartbeat_republishes_an_unchanged_value() {
    let sim = sim_with(40, AuthMode::None).await;
    let tag = a_tag_of(&sim, TagType::Int32);
    let mut g = group(&[&tag], 50);
    g.heartbeat_s = 1;
    let mut rig = Polling::start(&settings(&sim, vec![g]));
    let is_change = |e: &Event| matches!(e, Event::Changes(_));
    rig.until(Duration::from_secs(5), "first value", is_change)
        .await;
    let t0 = Instant::now();
    let e = rig
        .until(Duration::from_secs(3), "heartbeat", is_change)
        .await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(850),
        "heartbeat after {waited:?}"
    );
    let Event::Changes(b) = e else { unreachable!() };
    assert_eq!(b.changes.len(), 1);
    assert_eq!(Some(&b.changes[0].value), sim.value(&tag).as_ref());
    rig.stop().await;
}

#[tokio::test]
async fn outage_marks_every_tag_bad_once_with_its_last_value_then_recovers() {
    let sim = sim_with(30, AuthMode::None).await;
    let names = sim.tag_names();
    let mut rig = Polling::start(&settings(&sim, vec![group(&["**"], 100)]));
    let before = rig
        .all_with(&names, Quality::Good, Duration::from_secs(5))
        .await;

    // 1. The station vanishes (connections refused).
    sim.set_faults(Faults {
        outage_s: 1.5,
        ..Faults::default()
    });
    let t0 = Instant::now();
    rig.until(Duration::from_secs(3), "disconnected", is_station(false))
        .await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "detected after {:?}",
        t0.elapsed()
    );
    let bad = rig
        .all_with(&names, Quality::Bad, Duration::from_secs(2))
        .await;
    for (n, c) in &bad {
        assert_eq!(c.value, before[n].value, "{n:?} keeps its last value");
        assert_eq!(
            c.timestamp, before[n].timestamp,
            "{n:?} keeps its source timestamp"
        );
        assert!(
            matches!(c.error, Some(BadReason::Communication(_))),
            "{:?}",
            c.error
        );
    }
    rig.until(Duration::from_secs(10), "reconnected", is_station(true))
        .await;
    rig.all_with(&names, Quality::Good, Duration::from_secs(3))
        .await;

    // 2. The station hangs (every request times out).
    sim.set_faults(Faults {
        latency_ms: 3000,
        ..Faults::default()
    });
    rig.until(
        Duration::from_secs(3),
        "disconnected by timeouts",
        is_station(false),
    )
    .await;
    rig.all_with(&names, Quality::Bad, Duration::from_secs(2))
        .await;
    sim.set_faults(Faults::default());
    rig.until(Duration::from_secs(10), "reconnected", is_station(true))
        .await;
    rig.all_with(&names, Quality::Good, Duration::from_secs(3))
        .await;
    rig.stop().await;
}

#[tokio::test]
async fn unknown_tags_are_bad_and_removed_tags_are_reported_once() {
    let sim = sim_with(40, AuthMode::None).await;
    let names = sim.tag_names();
    let victim = a_tag_of(&sim, TagType::Double);
    let mut s = settings(&sim, vec![group(&["**"], 100)]);
    s.wincc.discovery_interval_s = 1;
    let mut rig = Polling::start(&s);
    rig.all_with(&names, Quality::Good, Duration::from_secs(5))
        .await;
    assert!(sim.remove_tag(&victim));
    sim.add_tag(
        TagInfo {
            name: "New/Tag".into(),
            ty: TagType::Int16,
            writable: true,
        },
        json!(7),
    );
    let (changes, station) = rig.drain(Duration::from_millis(1600)).await;
    assert!(
        station.is_empty(),
        "a per-tag error is no outage: {station:?}"
    );
    let of = |n: &str| changes.iter().filter(|c| &*c.name == n).collect::<Vec<_>>();
    let v = of(&victim);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        matches!(&v[0].error, Some(BadReason::TagError { .. })),
        "{:?}",
        v[0]
    );
    assert_eq!(v[0].quality, Quality::Bad);
    assert_eq!(v[1].error, Some(BadReason::Removed));
    let n = of("New/Tag");
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].value, json!(7));
    assert!(!rig.tags.borrow().contains_key(&victim));
    assert!(rig.tags.borrow().contains_key("New/Tag"));
    rig.stop().await;
}

#[tokio::test]
async fn malformed_or_truncated_replies_mean_bad_quality_then_recovery() {
    let sim = sim_with(30, AuthMode::None).await;
    let names = sim.tag_names();
    let mut rig = Polling::start(&settings(&sim, vec![group(&["**"], 100)]));
    rig.all_with(&names, Quality::Good, Duration::from_secs(5))
        .await;
    for f in spoiled_bodies() {
        sim.set_faults(f);
        let bad = rig
            .all_with(&names, Quality::Bad, Duration::from_secs(3))
            .await;
        assert!(bad
            .values()
            .all(|c| matches!(c.error, Some(BadReason::Communication(_)))));
        rig.all_with(&names, Quality::Good, Duration::from_secs(5))
            .await;
    }
    rig.stop().await;
}

#[tokio::test]
async fn an_expired_session_costs_exactly_one_login() {
    let sim = sim_with(30, AuthMode::Session).await;
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Polling::start(&session_settings(&sim, "pw", &dir));
    rig.all_with(&sim.tag_names(), Quality::Good, Duration::from_secs(5))
        .await;
    assert_eq!(sim.stats().logins, 1);
    sim.expire_tokens();
    let (_, station) = rig.drain(Duration::from_millis(500)).await;
    assert!(station.is_empty(), "{station:?}");
    let st = sim.stats();
    assert_eq!(st.logins, 2, "{st:?}");
    assert!(
        st.requests["POST /tags/values"] >= 5,
        "polling went on: {st:?}"
    );
    rig.stop().await;
}

#[tokio::test]
async fn retry_after_pauses_all_polling() {
    let sim = sim_with(30, AuthMode::None).await;
    let mut s = settings(&sim, vec![group(&["**"], 50)]);
    s.wincc.timeout_ms = 2000;
    let mut rig = Polling::start(&s);
    rig.all_with(&sim.tag_names(), Quality::Good, Duration::from_secs(5))
        .await;
    let before = sim.stats().total_requests;
    sim.set_faults(Faults {
        too_many_requests: Some(TooManyRequests {
            count: 1,
            retry_after_s: 1,
        }),
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let during = sim.stats().total_requests - before;
    assert_eq!(during, 1, "only the refused request within the pause");
    let (_, station) = rig.drain(Duration::from_millis(900)).await;
    assert!(station.is_empty(), "a 429 is no outage: {station:?}");
    assert!(sim.stats().total_requests - before >= 4, "polling resumed");
    rig.stop().await;
}

#[tokio::test]
async fn the_rate_limit_holds_when_the_groups_want_more() {
    let sim = sim_with(2000, AuthMode::None).await;
    sim.set_faults(Faults {
        latency_ms: 5,
        ..Faults::default()
    });
    let mut s = settings(&sim, vec![group(&["**"], 100)]);
    // 20 requests per 100 ms wanted = 200 per second, against 20.
    s.wincc.max_tags_per_request = 100;
    s.wincc.rate_limit = RateLimit {
        requests_per_second: 20,
        burst: 5,
        max_in_flight: 2,
    };
    let rig = Polling::start(&s);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let st = sim.stats();
    assert!(st.max_requests_per_second <= 25, "{st:?}");
    assert!(
        st.max_requests_per_second >= 15,
        "the limit was pressed: {st:?}"
    );
    assert!(st.max_in_flight <= 2, "{st:?}");
    assert!(st.requests["POST /tags/values"] >= 20, "{st:?}");
    rig.stop().await;
}

#[tokio::test]
async fn an_overrunning_cycle_skips_instead_of_stacking() {
    let sim = sim_with(30, AuthMode::None).await;
    let mut rig = Polling::start(&settings(&sim, vec![group(&["**"], 100)]));
    rig.all_with(&sim.tag_names(), Quality::Good, Duration::from_secs(5))
        .await;
    // Each cycle takes 120 ms of a 100 ms interval: the tick that falls
    // inside it is skipped, so cycles start every 200 ms (8 in 1.6 s);
    // stacked or back-to-back cycles would make about 13.
    sim.set_faults(Faults {
        latency_ms: 120,
        ..Faults::default()
    });
    sim.reset_stats();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let st = sim.stats();
    let polls = st.requests.get("POST /tags/values").copied().unwrap_or(0);
    assert_eq!(st.max_in_flight, 1, "cycles never overlap: {st:?}");
    assert!(
        (4..=9).contains(&polls),
        "{polls} polls in 1.6 s at 120 ms each"
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_station_down_at_start_is_reported_and_picked_up_later() {
    let sim = sim_with(30, AuthMode::None).await;
    sim.set_faults(Faults {
        outage_s: 1.0,
        ..Faults::default()
    });
    let mut rig = Polling::start(&settings(&sim, vec![group(&["**"], 100)]));
    match rig.next(Duration::from_secs(3)).await {
        Some(Event::Station(s)) => assert!(!s.connected && s.error.is_some(), "{s:?}"),
        other => panic!("{other:?}"),
    }
    rig.until(Duration::from_secs(10), "connected", is_station(true))
        .await;
    rig.all_with(&sim.tag_names(), Quality::Good, Duration::from_secs(5))
        .await;
    rig.stop().await;
}

#[tokio::test]
async fn a_refused_login_reports_disconnected_without_a_tight_loop() {
    let sim = sim_with(30, AuthMode::Session).await;
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Polling::start(&session_settings(&sim, "not-the-password", &dir));
    match rig.next(Duration::from_secs(3)).await {
        Some(Event::Station(st)) => {
            assert!(!st.connected);
            assert!(
                st.error.as_deref().unwrap_or("").contains("refused"),
                "{st:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = sim.stats();
    assert_eq!(
        st.login_failures, 1,
        "the next login waits at least 5 s: {st:?}"
    );
    assert_eq!(st.total_requests, 1, "{st:?}");
    rig.stop().await;
}
