//! The `wincc-v7` dialect end to end over loopback HTTP: the gateway's bus
//! output equals the generic dialect's for identical station data; each
//! simulated field quirk (dropped rows, empty body, mixed key case, values
//! as strings, slow large batches); writes; browse paging; Basic auth;
//! alarms through a REST filter. Round 2 (WINCC-DIALECTS.md §10): no
//! writability field (absent = writable, the station's errorcode refuses),
//! alarms in WinCC's words, 8-bit and unsupported `dataType` codes, and
//! browse rows without a type.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::station::{
    arcs, logging_in, poll_group, quiet, requests, spoiled_bodies, start_sim, wincc_settings,
    Polling,
};
use serde_json::{json, Value};
use wincc_gateway::config::{AuthMode, Dialect, Settings};
use wincc_gateway::model::{BadReason, Quality, TagChange, TagType};
use wincc_gateway::sim::{self, AlarmAction, AlarmCommand, Faults, SimHandle, SimOptions};
use wincc_gateway::wincc::{self, Station, StationError};

const PASSWORD: &str = "V7-Pa55word";

async fn sim_with(dialect: Dialect, tags: usize) -> SimHandle {
    start_sim(SimOptions {
        seed: 7,
        dialect,
        ..quiet(tags, AuthMode::Basic, PASSWORD)
    })
    .await
}

/// Basic auth with `pw`, polling `tags` every 100 ms, 2 in flight.
fn settings(sim: &SimHandle, dialect: Dialect, pw: &str, tags: &[&str]) -> Settings {
    // The client reads the password when it is made: a file per station.
    let dir = std::env::temp_dir().join(format!(
        "v7-pw-{}-{}",
        std::process::id(),
        sim.addr().port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = logging_in(wincc_settings(sim, dialect), AuthMode::Basic, pw, &dir);
    w.rate_limit.max_in_flight = 2;
    common::station::settings(w, vec![poll_group("g", tags, 100)])
}

/// A change without its timestamp (the only thing allowed to differ).
fn normalised(c: &TagChange) -> (TagType, Value, Quality, Option<u32>, Option<BadReason>) {
    (
        c.ty,
        c.value.clone(),
        c.quality,
        c.quality_code,
        c.error.clone(),
    )
}

/// Gives every tag the same value, quality and raw code on a station.
fn script(sim: &SimHandle, phase: usize) {
    let tags = sim.tags();
    let mut store = sim.state().store_mut();
    for (i, t) in tags.iter().enumerate() {
        let (q, code) = match (i + phase) % 5 {
            0 => (Quality::Good, 0x80),
            1 => (Quality::Good, 0xC0),
            2 => (Quality::Uncertain, 0x48),
            3 => (Quality::Bad, 0x08),
            _ => (Quality::Uncertain, 0x4C),
        };
        let v = match (phase, t.ty) {
            (1, TagType::Double | TagType::Float) => Some(json!(i as f64 + 0.25)),
            (1, TagType::Int32 | TagType::Int16 | TagType::Int64 | TagType::Int8) => {
                Some(json!(i as i64 - 7))
            }
            (1, TagType::UInt16 | TagType::UInt32 | TagType::UInt8) => Some(json!(i + 3)),
            (1, TagType::Bool) => Some(json!(i % 2 == 0)),
            (1, TagType::String) => Some(json!(format!("text {i} \"quoted\" ü"))),
            // Generated from the start time: made identical on both stations.
            (_, TagType::DateTime) => Some(json!(format!(
                "2026-01-0{}T00:{:02}:{:02}.125Z",
                phase + 1,
                i / 60 % 60,
                i % 60
            ))),
            _ => None,
        };
        store.force(&t.name, v.as_ref(), q, Some(code)).unwrap();
    }
}

async fn output(dialect: Dialect) -> Vec<BTreeMap<String, String>> {
    let sim = sim_with(dialect, 120).await;
    let n = sim.tags().len();
    script(&sim, 0);
    let mut rig = Polling::start(&settings(&sim, dialect, PASSWORD, &["**"]));
    let mut phases = Vec::new();
    for phase in 0..2 {
        if phase == 1 {
            script(&sim, 1);
        }
        let got = rig
            .changes_until(Duration::from_secs(10), |c| {
                c.iter().map(|c| &c.name).collect::<HashSet<_>>().len() >= n
            })
            .await;
        let map: BTreeMap<String, String> = got
            .iter()
            .map(|c| (c.name.to_string(), format!("{:?}", normalised(c))))
            .collect();
        assert_eq!(
            map.len(),
            n,
            "{dialect:?} phase {phase}: not every tag changed"
        );
        phases.push(map);
    }
    rig.stop().await;
    phases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_output_equals_the_generic_dialects_for_identical_station_data() {
    let generic = output(Dialect::Generic).await;
    let v7 = output(Dialect::WinccV7).await;
    for (phase, (g, v)) in generic.iter().zip(&v7).enumerate() {
        for (name, gc) in g {
            assert_eq!(Some(gc), v.get(name), "phase {phase}, tag {name:?}");
        }
    }
    assert_eq!(generic, v7);
    // The scripted data really covers all three qualities and both codes.
    let text = format!("{:?}", v7[1]);
    for needle in ["Good", "Uncertain", "Bad", "Some(72)", "Some(192)"] {
        assert!(text.contains(needle), "{needle} missing");
    }
}

/// Four plain-named tags of the v7 simulator.
fn plain_tags(sim: &SimHandle, n: usize) -> Vec<String> {
    sim.tags()
        .into_iter()
        .filter(|t| {
            t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._".contains(c))
        })
        .take(n)
        .map(|t| t.name)
        .collect()
}

/// Runs the poller over `names`, switches `faults` on once all are good,
/// and returns the changes seen afterwards (until every bad tag is good again).
async fn quirk_cycle(faults: Faults) -> (Vec<String>, Vec<TagChange>) {
    let sim = sim_with(Dialect::WinccV7, 60).await;
    let names = plain_tags(&sim, 4);
    let globs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut rig = Polling::start(&settings(&sim, Dialect::WinccV7, PASSWORD, &globs));
    let first = rig
        .changes_until(Duration::from_secs(5), |c| c.len() >= names.len())
        .await;
    assert!(
        first.iter().all(|c| c.quality == Quality::Good),
        "{first:?}"
    );
    sim.set_faults(faults);
    let after = rig
        .changes_until(Duration::from_secs(5), |c| {
            let bad: HashSet<_> = c
                .iter()
                .filter(|c| c.quality == Quality::Bad)
                .map(|c| &c.name)
                .collect();
            !bad.is_empty()
                && bad.iter().all(|n| {
                    c.iter()
                        .any(|g| &&g.name == n && g.quality == Quality::Good)
                })
        })
        .await;
    rig.stop().await;
    (names, after)
}

fn is_missing(c: &TagChange) -> bool {
    matches!(&c.error, Some(BadReason::TagError { code, .. }) if code == "missing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_rows_are_bad_for_that_cycle_then_good() {
    let (names, after) = quirk_cycle(Faults {
        drop_rows: 1,
        ..Faults::default()
    })
    .await;
    let bad: Vec<_> = after.iter().filter(|c| c.quality == Quality::Bad).collect();
    assert_eq!(bad.len(), names.len() / 2, "{after:?}");
    assert!(bad.iter().all(|c| is_missing(c)), "{bad:?}");
    for b in &bad {
        assert!(
            after
                .iter()
                .any(|c| c.name == b.name && c.quality == Quality::Good),
            "{} came back good",
            b.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_200_body_makes_every_tag_bad_for_that_cycle() {
    let (names, after) = quirk_cycle(Faults {
        empty_body: 1,
        ..Faults::default()
    })
    .await;
    let bad: HashSet<_> = after
        .iter()
        .filter(|c| c.quality == Quality::Bad && is_missing(c))
        .map(|c| c.name.to_string())
        .collect();
    assert_eq!(bad, names.iter().cloned().collect(), "{after:?}");
    let good: HashSet<_> = after
        .iter()
        .filter(|c| c.quality == Quality::Good)
        .map(|c| c.name.to_string())
        .collect();
    assert_eq!(good, bad);
}

fn client_settings(sim: &SimHandle, pw: &str, timeout_ms: u64, filter: &str) -> Settings {
    let mut s = settings(sim, Dialect::WinccV7, pw, &["**"]);
    s.wincc.timeout_ms = timeout_ms;
    s.alarms.filter = filter.into();
    s
}

fn client(s: &Settings) -> Arc<dyn Station> {
    wincc::connect(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_key_case_and_values_as_strings_read_the_same_readings() {
    let sim = sim_with(Dialect::WinccV7, 200).await;
    let c = client(&client_settings(&sim, PASSWORD, 2000, ""));
    let tags = c.list_tags().await.unwrap();
    let names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
    let plain = c.read_values(&arcs(&names)).await.unwrap();
    let types: HashSet<TagType> = tags.iter().map(|t| t.ty).collect();
    assert!(types.len() >= 8, "{types:?}");
    for quirk in [
        Faults {
            mixed_key_case: true,
            ..Faults::default()
        },
        Faults {
            values_as_strings: true,
            ..Faults::default()
        },
        Faults {
            mixed_key_case: true,
            values_as_strings: true,
            ..Faults::default()
        },
    ] {
        sim.set_faults(quirk.clone());
        let quirky = c.read_values(&arcs(&names)).await.unwrap();
        assert_eq!(plain.len(), quirky.len());
        for (a, b) in plain.iter().zip(&quirky) {
            assert_eq!(a, b, "{quirk:?}");
        }
    }
    assert!(plain
        .iter()
        .all(|r| r.quality == Quality::Good && r.quality_code == Some(0x80)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_large_batch_hits_the_timeout_while_small_ones_pass() {
    let sim = sim_with(Dialect::WinccV7, 100).await;
    let c = client(&client_settings(&sim, PASSWORD, 400, ""));
    let names = sim.tag_names();
    sim.set_faults(Faults {
        slow_batch_ms: 1500,
        slow_batch_min_names: 50,
        ..Faults::default()
    });
    assert_eq!(c.read_values(&arcs(&names[..10])).await.unwrap().len(), 10);
    let e = c.read_values(&arcs(&names[..60])).await.unwrap_err();
    assert!(matches!(e, StationError::Timeout(_)), "{e:?}");
    assert!(e.is_outage());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_accepted_or_refused_with_the_station_code() {
    let sim = sim_with(Dialect::WinccV7, 100).await;
    let c = client(&client_settings(&sim, PASSWORD, 2000, ""));
    let tags = sim.tags();
    let w = tags
        .iter()
        .find(|t| t.writable && t.ty == TagType::Double && t.name.contains('/'))
        .or_else(|| tags.iter().find(|t| t.writable && t.ty == TagType::Double))
        .unwrap();
    c.write_value(&w.name, w.ty, &json!(12.5)).await.unwrap();
    assert_eq!(sim.value(&w.name), Some(json!(12.5)));
    let code = |e: StationError| match e {
        StationError::Refused { code, .. } => code,
        other => panic!("not refused: {other:?}"),
    };
    let ro = tags.iter().find(|t| !t.writable).unwrap();
    let before = sim.value(&ro.name);
    assert_eq!(
        code(c.write_value(&ro.name, ro.ty, &json!(1)).await.unwrap_err()),
        "2"
    );
    assert_eq!(sim.value(&ro.name), before);
    assert_eq!(
        code(
            c.write_value(&w.name, w.ty, &json!("nope"))
                .await
                .unwrap_err()
        ),
        "3"
    );
    assert_eq!(
        code(
            c.write_value("No.Such::Tag", TagType::Int32, &json!(1))
                .await
                .unwrap_err()
        ),
        "1"
    );
    // Hostile names travel inside one path segment.
    for t in tags.iter().filter(|t| t.writable && t.ty == TagType::Bool) {
        c.write_value(&t.name, t.ty, &json!(true)).await.unwrap();
        assert_eq!(sim.value(&t.name), Some(json!(true)), "{:?}", t.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_follows_continuation_points_to_the_end() {
    let sim = sim_with(Dialect::WinccV7, 2500).await;
    let c = client(&client_settings(&sim, PASSWORD, 2000, ""));
    sim.reset_stats();
    let tags = c.list_tags().await.unwrap();
    // Names and types as the station has them; writable all (the station
    // says nothing about it: its answer to a write decides).
    let station: Vec<(String, TagType)> = sim.tags().into_iter().map(|t| (t.name, t.ty)).collect();
    let listed: Vec<(String, TagType)> = tags.iter().map(|t| (t.name.clone(), t.ty)).collect();
    assert_eq!(listed, station);
    assert!(tags.iter().all(|t| t.writable));
    assert_eq!(
        sim.stats().requests.get("GET /tagManagement/Variables"),
        Some(&3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_on_every_request_and_no_login_route() {
    let sim = sim_with(Dialect::WinccV7, 30).await;
    let http = common::sim::client();
    let url = format!("{}/winccrestservice/TAGMANAGEMENT/values", sim.base_url());
    let r = http
        .post(&url)
        .json(&json!({"variableNames": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let r = http
        .post(&url)
        .basic_auth("gateway", Some(PASSWORD))
        .json(&json!({"variableNames": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows: Value = r.json().await.unwrap();
    assert_eq!(rows[0]["variableName"], "x");
    assert!(rows[0]["error"].is_string());
    let r = http
        .post(format!("{}/auth/login", sim.base_url()))
        .json(&json!({"username": "gateway", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let bad = client(&client_settings(&sim, "wrong", 2000, ""));
    let e = bad.list_tags().await.unwrap_err();
    assert!(matches!(&e, StationError::Auth(_)), "{e:?}");
    assert!(!e.to_string().contains("wrong"));
    sim.reset_stats();
    let e = bad.read_values(&["x".into()]).await.unwrap_err();
    assert!(matches!(e, StationError::Auth(_)), "{e:?}");
    assert_eq!(
        sim.stats().total_requests,
        0,
        "the gate holds requests back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_come_from_the_configured_rest_filter() {
    let sim = sim_with(Dialect::WinccV7, 30).await;
    sim.alarm(AlarmCommand {
        action: AlarmAction::Raise,
        id: Some(json!("A1")),
        name: Some("Tank.High".into()),
        text: Some("level high".into()),
        class: Some("Alarm".into()),
        priority: Some(3),
    })
    .unwrap();
    let none = client(&client_settings(&sim, PASSWORD, 2000, ""));
    sim.reset_stats();
    assert!(none.active_alarms().await.unwrap().is_empty());
    assert_eq!(sim.stats().total_requests, 0);
    let c = client(&client_settings(
        &sim,
        PASSWORD,
        2000,
        "Active Alarms/Line 1",
    ));
    let alarms = c.active_alarms().await.unwrap();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].id, "A1");
    assert_eq!(alarms[0].text, "level high");
    let by_endpoint: HashMap<_, _> = sim.stats().requests.into_iter().collect();
    assert_eq!(
        by_endpoint.get("GET /alarmLogging/MessageList/{filter}"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_obeyed_and_garbage_is_an_error_not_a_panic() {
    let sim = sim_with(Dialect::WinccV7, 30).await;
    let c = client(&client_settings(&sim, PASSWORD, 2000, ""));
    let names = sim.tag_names();
    sim.reset_stats();
    sim.set_faults(Faults {
        too_many_requests: Some(sim::TooManyRequests {
            count: 1,
            retry_after_s: 1,
        }),
        ..Faults::default()
    });
    assert_eq!(
        c.read_values(&arcs(&names)).await.unwrap().len(),
        names.len()
    );
    let stats = sim.stats();
    assert_eq!(stats.too_many_requests, 1);
    assert_eq!(stats.requests.get("POST /tagManagement/Values"), Some(&2));
    for faults in spoiled_bodies() {
        sim.set_faults(faults);
        let e = c.read_values(&arcs(&names)).await.unwrap_err();
        assert!(matches!(e, StationError::Malformed(_)), "{e:?}");
        assert!(!e.to_string().contains(PASSWORD));
    }
    assert!(c.read_values(&arcs(&names)).await.is_ok());
}

/// Counts `wincc_gateway_station_rows_missing_total` increments.
#[derive(Default)]
struct MissingRows(Arc<std::sync::atomic::AtomicU64>);

struct Count(Arc<std::sync::atomic::AtomicU64>);

impl metrics::CounterFn for Count {
    fn increment(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn absolute(&self, _: u64) {}
}

impl metrics::Recorder for MissingRows {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == "wincc_gateway_station_rows_missing_total" {
            metrics::Counter::from_arc(Arc::new(Count(Arc::clone(&self.0))))
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn missing_rows_are_counted_in_the_warning_metric() {
    let recorder = MissingRows::default();
    let count = Arc::clone(&recorder.0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let sim = sim_with(Dialect::WinccV7, 30).await;
            let c = client(&client_settings(&sim, PASSWORD, 2000, ""));
            let names: Vec<String> = sim.tag_names().into_iter().take(6).collect();
            c.read_values(&arcs(&names)).await.unwrap();
            sim.set_faults(Faults {
                drop_rows: 1,
                ..Faults::default()
            });
            let r = c.read_values(&arcs(&names)).await.unwrap();
            assert_eq!(r.iter().filter(|r| r.quality == Quality::Bad).count(), 3);
            sim.set_faults(Faults {
                empty_body: 1,
                ..Faults::default()
            });
            let r = c.read_values(&arcs(&names)).await.unwrap();
            assert!(r.iter().all(|r| r.quality == Quality::Bad));
            assert!(c
                .read_values(&arcs(&names))
                .await
                .unwrap()
                .iter()
                .all(|r| r.error.is_none()));
        })
    });
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 3 + 6);
}

#[tokio::test]
async fn batch_writes_go_in_one_request_and_match_rows_by_name() {
    let sim = sim_with(Dialect::WinccV7, 100).await;
    let c = client(&client_settings(&sim, PASSWORD, 2000, ""));
    let tags = sim.tags();
    let doubles: Vec<_> = tags
        .iter()
        .filter(|t| t.writable && t.ty == TagType::Double)
        .take(2)
        .collect();
    assert_eq!(doubles.len(), 2);
    let ro = tags.iter().find(|t| !t.writable).unwrap();
    let ro_before = sim.value(&ro.name);
    let writes = vec![
        (doubles[0].name.clone(), TagType::Double, json!(1.25)),
        (ro.name.clone(), ro.ty, json!(1)),
        ("No.Such::Tag".to_string(), TagType::Int32, json!(1)),
        (doubles[1].name.clone(), TagType::Double, json!("nope")),
    ];
    let before = requests(&sim, "PUT /tagManagement/Values");
    let results = c.write_values(&writes).await;
    assert_eq!(results.len(), writes.len());
    let code = |r: &Result<(), StationError>| match r {
        Ok(()) => "ok".to_string(),
        Err(StationError::Refused { code, .. }) => code.clone(),
        Err(other) => panic!("not refused: {other:?}"),
    };
    assert_eq!(code(&results[0]), "ok");
    assert_eq!(code(&results[1]), "2");
    assert_eq!(code(&results[2]), "1");
    assert_eq!(code(&results[3]), "3");
    assert_eq!(sim.value(&doubles[0].name), Some(json!(1.25)));
    assert_eq!(sim.value(&ro.name), ro_before);
    let after = requests(&sim, "PUT /tagManagement/Values");
    assert_eq!(after - before, 1, "one request for the whole batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_rows_without_writability_are_writable_and_the_station_refuses() {
    let sim = sim_with(Dialect::WinccV7, 40).await;
    // The station serves no writability field at all.
    let raw: Value = common::sim::client()
        .get(format!(
            "{}/WinCCRestService/tagManagement/Variables",
            sim.base_url()
        ))
        .basic_auth("gateway", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = raw["variables"].as_array().unwrap();
    assert!(rows.iter().all(|r| r
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.to_lowercase().contains("writ"))));

    let s = client_settings(&sim, PASSWORD, 2000, "");
    let station = client(&s);
    let tags = station.list_tags().await.unwrap();
    assert!(tags.iter().all(|t| t.writable), "absent means writable");
    let directory: wincc_gateway::writes::TagMap =
        tags.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let (_tx, dir) = tokio::sync::watch::channel(Arc::new(directory));
    let writer = wincc_gateway::writes::Writer::new(station.clone(), dir);
    let policy = wincc_gateway::writes::WritePolicy::new("mqtt", true, &["**".into()]).unwrap();
    // A tag writable at the station: written, not refused as read-only.
    let at_station = sim.tags();
    let w = at_station
        .iter()
        .find(|t| t.writable && t.ty == TagType::Double)
        .unwrap();
    writer.write(&policy, &w.name, &json!(4.25)).await.unwrap();
    assert_eq!(sim.value(&w.name), Some(json!(4.25)));
    // Read-only at the station: the station's errorcode and text refuse it.
    let ro = at_station
        .iter()
        .find(|t| !t.writable && t.ty == TagType::Double)
        .unwrap();
    let before = sim.value(&ro.name);
    let e = writer
        .write(&policy, &ro.name, &json!(1.0))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, wincc_gateway::writes::WriteError::StationRefused(_)),
        "{e:?}"
    );
    assert!(text.contains("2: ") && text.contains("read-only"), "{text}");
    assert_eq!(sim.value(&ro.name), before);
    // Out of range for the tag's type: refused before any station call.
    let i8_tag = at_station.iter().find(|t| t.ty == TagType::Int8).unwrap();
    let puts = |sim: &SimHandle| requests(sim, "PUT /tagManagement/Value/{name}");
    let n = puts(&sim);
    for v in [json!(128), json!(-129), json!(1.5)] {
        assert!(
            writer.write(&policy, &i8_tag.name, &v).await.is_err(),
            "{v}"
        );
    }
    assert_eq!(
        puts(&sim),
        n,
        "no station call for a value that does not fit"
    );
    writer
        .write(&policy, &i8_tag.name, &json!(-128))
        .await
        .unwrap();
    assert_eq!(sim.value(&i8_tag.name), Some(json!(-128)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_and_unsupported_data_type_codes() {
    let sim = start_sim(SimOptions {
        seed: 7,
        dialect: Dialect::WinccV7,
        v7_type_codes: vec![("Raw/Block".into(), 12), ("Plain/Struct".into(), 14)],
        ..quiet(40, AuthMode::Basic, PASSWORD)
    })
    .await;
    for name in ["Raw/Block", "Plain/Struct"] {
        sim.add_tag(
            wincc_gateway::model::TagInfo {
                name: name.into(),
                ty: TagType::String,
                writable: true,
            },
            json!("AAEC"),
        );
    }
    let c = client(&client_settings(&sim, PASSWORD, 2000, ""));
    let tags = c.list_tags().await.unwrap();
    let ty = |n: &str| tags.iter().find(|t| t.name == n).map(|t| t.ty);
    assert_eq!(
        ty("Raw/Block"),
        Some(TagType::String),
        "listed, not skipped"
    );
    let eight: Vec<_> = sim
        .tags()
        .into_iter()
        .filter(|t| matches!(t.ty, TagType::Int8 | TagType::UInt8))
        .collect();
    assert_eq!(eight.len(), 2, "the simulator has an Int8 and a UInt8 tag");
    for t in &eight {
        assert_eq!(ty(&t.name), Some(t.ty), "{}", t.name);
    }
    let names: Vec<String> = ["Raw/Block", "Plain/Struct"]
        .iter()
        .map(|s| s.to_string())
        .chain(eight.iter().map(|t| t.name.clone()))
        .collect();
    let r = c.read_values(&arcs(&names)).await.unwrap();
    for (r, code) in r.iter().zip([12, 14]) {
        assert_eq!((r.quality, &r.value), (Quality::Bad, &Value::Null));
        assert_eq!(
            r.error,
            Some(BadReason::TagError {
                code: "unsupported_type".into(),
                message: format!("unsupported WinCC data type {code}"),
            })
        );
    }
    for (r, t) in r[2..].iter().zip(&eight) {
        assert_eq!(r.quality, Quality::Good);
        assert_eq!(Some(r.value.clone()), sim.value(&t.name));
    }
    // Never written: refused by the client, no station call.
    let before = requests(&sim, "PUT /tagManagement/Value/{name}");
    let e = c
        .write_value("Raw/Block", TagType::String, &json!("x"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("data type 12"), "{e}");
    assert_eq!(requests(&sim, "PUT /tagManagement/Value/{name}"), before);

    // Through the poller: bad with the reason, published once.
    let mut rig = Polling::start(&settings(&sim, Dialect::WinccV7, PASSWORD, &["Raw/**"]));
    let got = rig
        .changes_until(Duration::from_millis(1500), |_| false)
        .await;
    let raw: Vec<_> = got.iter().filter(|c| &*c.name == "Raw/Block").collect();
    assert_eq!(raw.len(), 1, "{raw:?}");
    assert_eq!(raw[0].quality, Quality::Bad);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_rows_without_a_type_learn_it_from_a_read() {
    let sim = start_sim(SimOptions {
        seed: 7,
        dialect: Dialect::WinccV7,
        v7_untyped_browse: true,
        ..quiet(40, AuthMode::Basic, PASSWORD)
    })
    .await;
    let c = client(&client_settings(&sim, PASSWORD, 2000, ""));
    let tags = c.list_tags().await.unwrap();
    // Every tag with a WinCC code keeps its type (Int64 and DateTime have
    // none at a V7 station: code 0, unsupported, still listed).
    for t in sim.tags() {
        let listed = tags.iter().find(|l| l.name == t.name).unwrap();
        if !matches!(t.ty, TagType::Int64 | TagType::DateTime) {
            assert_eq!(listed.ty, t.ty, "{}", t.name);
        }
    }
    assert_eq!(tags.len(), sim.tags().len());
    assert_eq!(requests(&sim, "POST /tagManagement/Values"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_in_wincc_words_are_mapped_and_none_is_dropped() {
    let sim = sim_with(Dialect::WinccV7, 30).await;
    let raise = |id: Value, text: &str| AlarmCommand {
        action: AlarmAction::Raise,
        id: Some(id),
        name: Some("Tank.High".into()),
        text: Some(text.into()),
        class: Some("Alarm".into()),
        priority: Some(3),
    };
    sim.alarm(raise(json!(17), "level high")).unwrap();
    sim.alarm(raise(json!("18"), "pressure high")).unwrap();
    sim.alarm(raise(json!(19), "door open")).unwrap();
    let act = |action, id: &str| AlarmCommand {
        action,
        id: Some(json!(id)),
        name: None,
        text: None,
        class: None,
        priority: None,
    };
    sim.alarm(act(AlarmAction::Ack, "18")).unwrap();
    // What the station serves: WinCC's words and message numbers.
    let raw: Value = common::sim::client()
        .get(format!(
            "{}/WinCCRestService/alarmLogging/MessageList/F1",
            sim.base_url()
        ))
        .basic_auth("gateway", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let states: Vec<&str> = raw
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["State"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["came in", "came in acknowledged", "came in"]);
    assert_eq!(raw[0]["MsgNr"], 17);

    let c = client(&client_settings(&sim, PASSWORD, 2000, "F1"));
    let a = c.active_alarms().await.unwrap();
    let seen: Vec<(&str, wincc_gateway::model::AlarmState)> =
        a.iter().map(|a| (a.id.as_str(), a.state)).collect();
    use wincc_gateway::model::AlarmState::*;
    assert_eq!(seen, [("17", Raised), ("18", Acknowledged), ("19", Raised)]);
    let expected = sim.active_alarms();
    assert_eq!(a[0].text, "level high");
    assert_eq!((a[0].class.as_str(), a[0].priority), ("Alarm", 3));
    assert_eq!(a[0].raised_at, expected[0].raised_at);
    assert_eq!(a[1].acknowledged_at, expected[1].acknowledged_at);
    assert_eq!(a[0].name, "Tank.High");
}
