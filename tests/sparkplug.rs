//! The Sparkplug B edge node (contract §10) against a real mosquitto, the
//! simulator over real HTTP, and an independent decoder (Debian's `protoc`
//! with tests/fixtures/sparkplug_b.proto): births, data by alias, seq,
//! rebirth, STATE, DCMD through the guarded write path, station outage,
//! rediscovery, bdSeq across a restart and a `kill -9` of the real
//! binary, and the historical replay of what changed while the connection
//! was down (`[mqtt.buffer]`), within a run and across a restart.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wincc_gateway::config::{Dialect, Settings, SparkplugSettings};
use wincc_gateway::model::{Quality, TagInfo, TagType};
use wincc_gateway::sim::{self, Faults, SimHandle, SimOptions};

use common::mosquitto::{free_port, Mosquitto};
use common::sparkplug::{aliases, decode, Cable, Payload, Watch};
use common::station::{poll_group, settings, wincc_settings};

const GROUP: &str = "Plant";
const NODE: &str = "gw1";
const DEVICE: &str = "wincc";
const T: Duration = Duration::from_secs(20);

/// (name, type, writable at the station, initial value): every type once,
/// plus writable tags for DCMD.
const TAGS: &[(&str, TagType, bool, &str)] = &[
    ("Line/Bool", TagType::Bool, false, "true"),
    ("Line/Int16", TagType::Int16, false, "-5"),
    ("Line/Int32", TagType::Int32, false, "-70000"),
    ("Line/Int64", TagType::Int64, false, "-5000000000"),
    ("Line/UInt16", TagType::UInt16, false, "65535"),
    ("Line/UInt32", TagType::UInt32, false, "4000000000"),
    ("Line/Float", TagType::Float, false, "1.5"),
    ("Line/Double", TagType::Double, false, "2.25"),
    ("Line/Ofen Größe", TagType::String, false, "\"heiß\""),
    (
        "Line/DateTime",
        TagType::DateTime,
        false,
        "\"2026-01-02T03:04:05.678Z\"",
    ),
    ("Line/Setpoint", TagType::Double, true, "10.0"),
    ("Line/Limit", TagType::Int16, true, "0"),
    ("Line/Locked", TagType::Double, true, "1.0"),
];

async fn station() -> SimHandle {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: 0,
            change_rate: 0.0,
            alarms: false,
            ..SimOptions::default()
        },
    )
    .await
    .expect("simulator");
    for (name, ty, writable, v) in TAGS {
        let info = TagInfo {
            name: (*name).into(),
            ty: *ty,
            writable: *writable,
        };
        sim.add_tag(info, serde_json::from_str(v).unwrap());
    }
    sim
}

fn sparkplug(broker: &Mosquitto, state_dir: &Path, primary_host: &str) -> SparkplugSettings {
    SparkplugSettings {
        enabled: true,
        url: broker.url(),
        client_id: format!("spb-{}", common::rand_id()),
        keep_alive_s: 5,
        group_id: GROUP.into(),
        edge_node_id: NODE.into(),
        device_id: DEVICE.into(),
        primary_host_id: primary_host.into(),
        state_dir: state_dir.display().to_string(),
        write_enabled: true,
        writable_tags: vec!["Line/Setpoint".into(), "Line/Limit".into()],
        ..SparkplugSettings::default()
    }
}

/// The whole gateway: Sparkplug on, the JSON MQTT sink and OPC UA off,
/// `/metrics` on a free port, polling every `interval_ms`.
fn gateway_settings(sim: &SimHandle, spb: SparkplugSettings, interval_ms: u64) -> Settings {
    let mut w = wincc_settings(sim, Dialect::Generic);
    w.discovery_interval_s = 1;
    let mut s = settings(w, vec![poll_group("line", &["Line/**"], interval_ms)]);
    s.mqtt.enabled = false;
    s.opcua.enabled = false;
    s.http.listen = format!("127.0.0.1:{}", free_port());
    s.sparkplug = spb;
    s
}

async fn metrics_text(s: &Settings) -> String {
    common::sim::client()
        .get(format!("http://{}/metrics", s.http.listen))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sparkplug writes counted with this `reason` (`"ok"`: accepted ones),
/// summed over results (`wincc_gateway_writes_total{sink,result,reason}`).
fn counted(metrics: &str, reason: &str) -> u64 {
    let label = if reason == "ok" {
        "result=\"accepted\"".to_string()
    } else {
        format!("reason=\"{reason}\"")
    };
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("wincc_gateway_writes_total{")
                && l.contains("sink=\"sparkplug\"")
                && l.contains(&label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_carry_every_tag_and_data_goes_by_alias_with_quality() {
    let broker = Mosquitto::start();
    let sim = station().await;
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(broker.port, GROUP, NODE, DEVICE).await;
    let s = gateway_settings(&sim, sparkplug(&broker, dir.path(), ""), 100);
    let gw = wincc_gateway::gateway::start(s).await.unwrap();

    let nbirth = watch.wait("NBIRTH", |_| true).await;
    assert_eq!(nbirth.seq, Some(0));
    assert_eq!(nbirth.bdseq(), 0, "a fresh state dir starts at 0");
    let rebirth = nbirth.metric("Node Control/Rebirth").unwrap();
    assert_eq!(rebirth.datatype, Some(11));
    assert_eq!(rebirth.value_text(), Some("false"));

    let dbirth = watch.wait("DBIRTH", |_| true).await;
    assert_eq!(dbirth.metrics.len(), TAGS.len(), "{dbirth:#?}");
    let expect: &[(&str, u32, &str, &str)] = &[
        ("Line/Bool", 11, "boolean_value", "true"),
        ("Line/Int16", 2, "int_value", "4294967291"),
        ("Line/Int32", 3, "int_value", "4294897296"),
        ("Line/Int64", 4, "long_value", "18446744068709551616"),
        ("Line/UInt16", 6, "int_value", "65535"),
        ("Line/UInt32", 7, "int_value", "4000000000"),
        ("Line/Float", 9, "float_value", "1.5"),
        ("Line/Double", 10, "double_value", "2.25"),
        ("Line/Ofen Größe", 12, "string_value", "heiß"),
        ("Line/DateTime", 13, "long_value", "1767323045678"),
    ];
    for (name, code, field, text) in expect {
        let m = dbirth
            .metric(name)
            .unwrap_or_else(|| panic!("{name} in DBIRTH"));
        assert_eq!(m.datatype, Some(*code), "{name}");
        assert_eq!(
            m.value,
            Some((field.to_string(), text.to_string())),
            "{name}"
        );
        assert_eq!(m.quality, Some(192), "{name}");
        assert!(m.timestamp.is_some_and(|t| t > 1_600_000_000_000), "{name}");
    }
    let a = aliases(&dbirth);
    let mut distinct: Vec<u64> = a.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), TAGS.len(), "aliases are unique");

    // One change: one DDATA, by alias, only that metric.
    sim.set_value("Line/Double", json!(3.5));
    let d = watch
        .wait("DDATA", |p| {
            p.by_alias(a["Line/Double"])
                .is_some_and(|m| m.value_text() == Some("3.5"))
        })
        .await;
    assert_eq!(d.metrics.len(), 1, "{d:#?}");
    assert_eq!(d.metrics[0].name, None, "DDATA goes by alias only");
    assert_eq!(
        d.metrics[0].quality, None,
        "good after good needs no Quality"
    );

    // Bad quality keeps the last value, with Quality 0; uncertain is 64.
    sim.set_quality("Line/Float", Quality::Bad, None).unwrap();
    let d = watch
        .wait("DDATA", |p| {
            p.by_alias(a["Line/Float"])
                .is_some_and(|m| m.quality == Some(0))
        })
        .await;
    assert_eq!(
        d.by_alias(a["Line/Float"]).unwrap().value_text(),
        Some("1.5")
    );
    sim.set_quality("Line/Int16", Quality::Uncertain, None)
        .unwrap();
    watch
        .wait("DDATA", |p| {
            p.by_alias(a["Line/Int16"])
                .is_some_and(|m| m.quality == Some(64))
        })
        .await;

    // Rediscovery: a new tag is a fresh DBIRTH, listing it.
    sim.add_tag(
        TagInfo {
            name: "Line/New".into(),
            ty: TagType::UInt32,
            writable: false,
        },
        json!(7),
    );
    let again = watch
        .wait("DBIRTH", |p| p.metric("Line/New").is_some())
        .await;
    assert_eq!(again.metrics.len(), TAGS.len() + 1);
    // ... and one removed, another.
    assert!(sim.remove_tag("Line/New"));
    watch
        .wait("DBIRTH", |p| {
            p.metrics.len() == TAGS.len() && p.metric("Line/New").is_none()
        })
        .await;
    assert!(watch.assert_seq_runs() >= 5);
    gw.shutdown().await;
    let death = watch.wait("NDEATH", |_| true).await;
    assert_eq!(death.bdseq(), 0, "a clean stop publishes the NDEATH itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_wraps_from_255_to_0() {
    let broker = Mosquitto::start();
    let sim = station().await;
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(broker.port, GROUP, NODE, DEVICE).await;
    let s = gateway_settings(&sim, sparkplug(&broker, dir.path(), ""), 20);
    let gw = wincc_gateway::gateway::start(s).await.unwrap();
    watch.wait("DBIRTH", |_| true).await;
    // Each value must be seen by a poll before the next: wait for its DDATA.
    for i in 0..270 {
        sim.set_value("Line/Double", json!(1000 + i));
        let want = format!("{}", 1000 + i);
        watch
            .wait("DDATA", |p| {
                p.metrics
                    .iter()
                    .any(|m| m.value_text() == Some(want.as_str()))
            })
            .await;
    }
    let n = watch.assert_seq_runs();
    assert!(n >= 271, "{n} messages after the NBIRTH");
    let seqs: Vec<u64> = watch.all().iter().filter_map(|(_, _, p)| p.seq).collect();
    assert!(
        seqs.windows(2).any(|w| w == [255, 0]),
        "seq wrapped from 255 to 0"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebirth_and_dcmd_through_the_guarded_write_path() {
    let broker = Mosquitto::start();
    let sim = station().await;
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(broker.port, GROUP, NODE, DEVICE).await;
    let s = gateway_settings(&sim, sparkplug(&broker, dir.path(), ""), 100);
    let gw = wincc_gateway::gateway::start(s.clone()).await.unwrap();
    let first = watch.wait("DBIRTH", |_| true).await;
    let a = aliases(&first);

    // NCMD Rebirth: NBIRTH + DBIRTH again, same bdSeq.
    watch
        .command(
            "NCMD",
            r#"metrics { name: "Node Control/Rebirth" datatype: 11 boolean_value: true }"#,
        )
        .await;
    let births = watch.count("NBIRTH", 2).await;
    assert_eq!(births[1].bdseq(), births[0].bdseq());
    assert_eq!(births[1].seq, Some(0));
    let dbirths = watch.count("DBIRTH", 2).await;
    assert_eq!(aliases(&dbirths[1]), a, "same tags, same aliases");

    // Accepted: by alias and by name; the new values come back in DDATA.
    watch
        .command(
            "DCMD",
            &format!(
                "metrics {{ alias: {} datatype: 10 double_value: 42.5 }}",
                a["Line/Setpoint"]
            ),
        )
        .await;
    watch
        .command(
            "DCMD",
            r#"metrics { name: "Line/Limit" datatype: 2 int_value: 4294967295 }"#,
        )
        .await;
    watch
        .wait("DDATA", |p| {
            p.by_alias(a["Line/Setpoint"])
                .is_some_and(|m| m.value_text() == Some("42.5"))
        })
        .await;
    assert!(common::wait(T, || sim.value("Line/Limit") == Some(json!(-1))).await);
    assert_eq!(sim.value("Line/Setpoint"), Some(json!(42.5)));

    // Refused: not allow-listed, out of range, wrong type, unknown alias.
    let before = metrics_text(&s).await;
    watch
        .command(
            "DCMD",
            r#"metrics { name: "Line/Locked" datatype: 10 double_value: 5 }
               metrics { name: "Line/Limit" datatype: 2 int_value: 40000 }
               metrics { name: "Line/Setpoint" datatype: 12 string_value: "x" }
               metrics { alias: 999 double_value: 1 }"#,
        )
        .await;
    let refused = |m: &str| {
        (
            counted(m, "not_allowed"),
            counted(m, "out_of_range"),
            counted(m, "type_mismatch"),
            counted(m, "malformed"),
        )
    };
    let (na, oor, tm, mal) = refused(&before);
    let deadline = Instant::now() + T;
    loop {
        let now = refused(&metrics_text(&s).await);
        if now == (na + 1, oor + 1, tm + 1, mal + 1) {
            break;
        }
        assert!(Instant::now() < deadline, "refusals counted: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.value("Line/Locked"), Some(json!(1.0)));
    assert_eq!(sim.value("Line/Limit"), Some(json!(-1)));
    assert_eq!(sim.value("Line/Setpoint"), Some(json!(42.5)));
    assert!(counted(&metrics_text(&s).await, "ok") >= 2);
    watch.assert_seq_runs();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn station_outage_is_ddeath_and_recovery_a_fresh_dbirth() {
    let broker = Mosquitto::start();
    let sim = station().await;
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(broker.port, GROUP, NODE, DEVICE).await;
    let s = gateway_settings(&sim, sparkplug(&broker, dir.path(), ""), 100);
    let gw = wincc_gateway::gateway::start(s).await.unwrap();
    watch.wait("DBIRTH", |_| true).await;

    sim.set_faults(Faults {
        unavailable: true,
        ..Faults::default()
    });
    watch.wait("DDEATH", |_| true).await;
    sim.set_value("Line/Double", json!(77.0));
    sim.set_faults(Faults::default());
    let again = watch.count("DBIRTH", 2).await;
    // The fresh birth has the station's value as it is now.
    let m = again[1].metric("Line/Double").unwrap();
    assert_eq!(m.value_text(), Some("77"));
    assert_eq!(m.quality, Some(192));
    assert_eq!(watch.of("NBIRTH").len(), 1, "the node itself stayed up");
    watch.assert_seq_runs();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_follow_the_primary_host_state() {
    let broker = Mosquitto::start();
    let sim = station().await;
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(broker.port, GROUP, NODE, DEVICE).await;
    let s = gateway_settings(&sim, sparkplug(&broker, dir.path(), "SCADA"), 100);
    let gw = wincc_gateway::gateway::start(s).await.unwrap();

    // No host yet: nothing is born.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(watch.all().is_empty(), "{:?}", watch.all());
    let t0 = 1_800_000_000_000u64;
    watch.state(true, t0).await;
    let first = watch.wait("NBIRTH", |_| true).await;
    watch.wait("DBIRTH", |_| true).await;

    // The host goes offline: NDEATH with the same bdSeq, then silence.
    watch.state(false, t0 + 1).await;
    let death = watch.wait("NDEATH", |_| true).await;
    assert_eq!(death.bdseq(), first.bdseq());
    sim.set_value("Line/Double", json!(5.0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(watch.of("NBIRTH").len(), 1);
    let ddata_after_death = watch
        .all()
        .iter()
        .skip_while(|(k, _, _)| k != "NDEATH")
        .filter(|(k, _, _)| k == "DDATA")
        .count();
    assert_eq!(ddata_after_death, 0);

    // A stale online (older timestamp) changes nothing; a newer one does,
    // in a new session with the next bdSeq.
    watch.state(true, t0).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(watch.of("NBIRTH").len(), 1);
    watch.state(true, t0 + 2).await;
    let births = watch.count("NBIRTH", 2).await;
    assert_eq!(births[1].bdseq(), (first.bdseq() + 1) % 256);
    watch.count("DBIRTH", 2).await;
    watch.assert_seq_runs();
    gw.shutdown().await;
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}

/// (arrival, payload) of every DDATA after the `n`-th DBIRTH (1-based).
fn after_dbirth(watch: &Watch, n: usize) -> Vec<(Instant, Payload)> {
    let mut births = 0;
    let mut out = Vec::new();
    for m in watch.sub.messages() {
        let kind = m.topic.split('/').nth(2).unwrap_or_default();
        match kind {
            "DBIRTH" => births += 1,
            "DDATA" if births >= n => out.push((m.at, decode(&m.payload))),
            _ => {}
        }
    }
    out
}

/// The historical values of `alias` (value text, timestamp) in order.
fn historical(ddata: &[(Instant, Payload)], alias: u64) -> Vec<(String, u64)> {
    ddata
        .iter()
        .flat_map(|(_, p)| &p.metrics)
        .filter(|m| m.alias == Some(alias) && m.is_historical)
        .map(|m| (m.value_text().unwrap().to_string(), m.timestamp.unwrap()))
        .collect()
}

/// A gauge or counter from `/metrics` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the Sparkplug buffer is empty; returns the replayed count.
async fn wait_replayed(s: &Settings) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics_text(s).await;
        let appended = metric(&m, "wincc_gateway_sparkplug_buffer_appended_total");
        if metric(&m, "wincc_gateway_sparkplug_buffer_entries") == 0.0 {
            return metric(&m, "wincc_gateway_sparkplug_buffer_replayed_total").min(appended);
        }
        assert!(Instant::now() < deadline, "buffer metrics:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Changes `Line/Double` to `values` one after another while the gateway
/// polls every 100 ms; returns the wall-clock window of each change.
async fn change_slowly(sim: &SimHandle, values: &[f64]) -> Vec<(u64, u64)> {
    let mut windows = Vec::new();
    for v in values {
        let before = now_ms();
        sim.set_value("Line/Double", json!(v));
        windows.push((before, now_ms()));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    windows
}

/// Checks the replayed values and their source timestamps, oldest first.
fn assert_replayed(got: &[(String, u64)], values: &[f64], windows: &[(u64, u64)]) {
    let want: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    let texts: Vec<String> = got.iter().map(|(v, _)| v.clone()).collect();
    assert_eq!(texts, want, "every change of the outage once, oldest first");
    for ((_, ts), (before, after)) in got.iter().zip(windows) {
        // The simulator stamps a change when it is made (ms precision).
        assert!(
            *before - 1 <= *ts && *ts <= *after + 1,
            "source timestamp {ts} outside the change's window {before}..{after}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_while_disconnected_are_replayed_as_historical_after_the_births() {
    let broker = Mosquitto::start();
    let cable = Cable::start(broker.port).await;
    let sim = station().await;
    let dir = tempfile::tempdir().unwrap();
    let watch = Watch::start(broker.port, GROUP, NODE, DEVICE).await;
    let mut spb = sparkplug(&broker, &dir.path().join("state"), "");
    spb.url = cable.url();
    let mut s = gateway_settings(&sim, spb, 100);
    s.mqtt.buffer.enabled = true;
    s.mqtt.buffer.dir = dir.path().join("buffer").display().to_string();
    // Slow, so the pace and the live data in between can be seen.
    s.mqtt.buffer.replay_per_second = 4;
    s.mqtt.buffer.sync_interval_ms = 100;
    let gw = wincc_gateway::gateway::start(s.clone()).await.unwrap();
    let a = aliases(&watch.wait("DBIRTH", |_| true).await);
    let (double, int32) = (a["Line/Double"], a["Line/Int32"]);
    // Readings polled before the first births are replayed too: let them.
    wait_replayed(&s).await;

    // The connection is cut; the station keeps changing.
    cable.unplug();
    watch.count("NDEATH", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let values = [100.5, 101.5, 102.5, 103.5, 104.5, 105.5];
    let windows = change_slowly(&sim, &values).await;
    sim.set_value("Line/Int32", json!(-1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    cable.plug_in();

    // Fresh births first (the DBIRTH has the newest values), then the
    // outage's changes as historical DDATA, paced, with live data between.
    let nbirths = watch.count("NBIRTH", 2).await;
    assert_eq!(nbirths[1].bdseq(), (nbirths[0].bdseq() + 1) % 256);
    let dbirth = watch.count("DBIRTH", 2).await.remove(1);
    assert_eq!(
        dbirth.metric("Line/Double").unwrap().value_text(),
        Some("105.5")
    );
    sim.set_value("Line/Double", json!(7.25));
    let deadline = Instant::now() + T;
    while historical(&after_dbirth(&watch, 2), double).len() < values.len()
        || historical(&after_dbirth(&watch, 2), int32).is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "replay incomplete: {:?}",
            after_dbirth(&watch, 2)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ddata = after_dbirth(&watch, 2);
    assert_replayed(&historical(&ddata, double), &values, &windows);
    let h_int32 = historical(&ddata, int32);
    assert_eq!(h_int32.len(), 1, "{h_int32:?}");
    assert_eq!(h_int32[0].0, "4294967295", "Int32 -1 as Sparkplug sends it");
    for (_, p) in &ddata {
        for m in p.metrics.iter().filter(|m| m.is_historical) {
            assert_eq!(m.name, None, "historical DDATA goes by alias");
            assert_eq!(m.quality, Some(192), "with its quality");
        }
    }
    // Paced at 4 metrics per second: 7 metrics take 1.5 s or more.
    let replay: Vec<&Instant> = ddata
        .iter()
        .filter(|(_, p)| p.metrics.iter().any(|m| m.is_historical))
        .map(|(t, _)| t)
        .collect();
    let span = *replay[replay.len() - 1] - *replay[0];
    assert!(
        span >= Duration::from_millis(1200),
        "replay took only {span:?}"
    );
    // The live change went out while the replay was still running.
    let live = ddata
        .iter()
        .position(|(_, p)| {
            p.by_alias(double)
                .is_some_and(|m| !m.is_historical && m.value_text() == Some("7.25"))
        })
        .expect("the live change in DDATA");
    let last_historical = ddata
        .iter()
        .rposition(|(_, p)| p.metrics.iter().any(|m| m.is_historical))
        .unwrap();
    assert!(
        live < last_historical,
        "live data waited for the whole replay"
    );
    watch.assert_seq_runs();
    // Acknowledged once written: the buffer empties.
    let replayed = wait_replayed(&s).await;
    assert!(replayed >= 7.0, "{replayed} replayed");

    // Across a restart: cut, change, stop the gateway, start it again while
    // still cut, then connect.
    cable.unplug();
    watch.count("NDEATH", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let values = [200.5, 201.5, 202.5];
    let windows = change_slowly(&sim, &values).await;
    gw.shutdown().await;
    let gw = wincc_gateway::gateway::start(s.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cable.plug_in();
    watch.count("DBIRTH", 3).await;
    let deadline = Instant::now() + T;
    while historical(&after_dbirth(&watch, 3), double).len() < values.len() {
        assert!(
            Instant::now() < deadline,
            "replay after restart incomplete: {:?}",
            after_dbirth(&watch, 3)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new process's own first readings (before its births) come too;
    // the outage's changes, from the disk, come first and in order.
    let got = historical(&after_dbirth(&watch, 3), double);
    assert_replayed(&got[..values.len()], &values, &windows);
    watch.assert_seq_runs();
    gw.shutdown().await;
}

/// The real binary, `run -c`.
struct Binary(std::process::Child);

impl Binary {
    fn start(config: &Path) -> Binary {
        Binary(
            std::process::Command::new(env!("CARGO_BIN_EXE_wincc-gateway"))
                .arg("run")
                .arg("-c")
                .arg(config)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start wincc-gateway"),
        )
    }

    fn sigterm(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "clean stop: {status}");
    }

    fn kill9(mut self) {
        self.0.kill().unwrap();
        let _ = self.0.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdseq_survives_a_restart_and_a_kill_9_of_the_real_binary() {
    let broker = Mosquitto::start();
    let sim = station().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[wincc]
base_url = "{base}"
[[poll_group]]
name = "line"
interval_ms = 200
tags = ["Line/**"]
[alarms]
enabled = false
[mqtt]
enabled = false
[opcua]
enabled = false
[http]
enabled = false
[sparkplug]
enabled = true
url = "{url}"
client_id = "spb-binary"
keep_alive_s = 5
group_id = "{GROUP}"
edge_node_id = "{NODE}"
device_id = "{DEVICE}"
state_dir = {state:?}
"#,
            base = sim.base_url(),
            url = broker.url(),
            state = state.display().to_string(),
        ),
    )
    .unwrap();
    let watch = Watch::start(broker.port, GROUP, NODE, DEVICE).await;

    let gw = Binary::start(&config);
    let b0 = watch.wait("NBIRTH", |_| true).await.bdseq();
    let birth0 = watch.wait("DBIRTH", |_| true).await;
    gw.sigterm();
    let death = watch.wait("NDEATH", |_| true).await;
    assert_eq!(death.bdseq(), b0, "clean stop: NDEATH of the session");

    let gw = Binary::start(&config);
    let births = watch.count("NBIRTH", 2).await;
    assert_eq!(births[1].bdseq(), (b0 + 1) % 256, "advanced by the restart");
    let birth1 = watch.count("DBIRTH", 2).await.remove(1);
    assert_eq!(
        aliases(&birth1),
        aliases(&birth0),
        "aliases kept across restarts"
    );

    gw.kill9();
    let deaths = watch.count("NDEATH", 2).await;
    assert_eq!(
        deaths[1].bdseq(),
        (b0 + 1) % 256,
        "the broker's will after kill -9 names the killed session"
    );

    let gw = Binary::start(&config);
    let births = watch.count("NBIRTH", 3).await;
    assert_eq!(births[2].bdseq(), (b0 + 2) % 256);
    watch.count("DBIRTH", 3).await;
    gw.sigterm();
    watch.count("NDEATH", 3).await;
    watch.assert_seq_runs();
    let stored: Value =
        std::fs::read_to_string(state.join(format!("sparkplug-bdseq-{GROUP}-{NODE}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    assert_eq!(stored, json!((b0 + 3) % 256), "the next session's number");
}

#[test]
fn check_config_locates_bad_sparkplug_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        r#"
[wincc]
base_url = "http://127.0.0.1:1/api"
[[poll_group]]
name = "line"
tags = ["**"]
[mqtt]
client_id = "same"
[sparkplug]
enabled = true
client_id = "same"
group_id = "Plant/1"
device_id = ""
primary_host_id = "SCADA#"
max_packet_size = 100
writable_tags = ["["]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wincc-gateway"))
        .arg("check-config")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "sparkplug.client_id = \"same\"",
        "sparkplug.group_id = \"Plant/1\"",
        "sparkplug.device_id = \"\": must be non-empty",
        "sparkplug.primary_host_id = \"SCADA#\"",
        "sparkplug.max_packet_size = 100:",
        "sparkplug.writable_tags[0] = \"[\"",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
}
