//! Sparkplug B sink benchmark: what DDATA costs at 10 000 changes/s.
//!
//! 1 000 Double tags, 100 batches/s of 100 changed tags each (every batch
//! a different 100), for `SPB_BENCH_SECS` (default 10) seconds, into the
//! real sink connected to a real mosquitto on loopback; an external
//! `mosquitto_sub` (another process, not counted) counts the DDATA
//! messages that arrive. CPU is this process's utime + stime from
//! `/proc/self/stat` over the measured window, so it includes the feeder
//! (building the batches) and the bus. A baseline run does the same feeding
//! into a bus subscriber that only drains, and the difference is the sink:
//! protobuf encoding, seq/alias bookkeeping and the MQTT client.
//!
//! Run: `cargo bench --bench sparkplug` (needs mosquitto: scripts/setup.sh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mosquitto::Mosquitto;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::{Bus, Event};
use wincc_gateway::config::SparkplugSettings;
use wincc_gateway::model::{ChangeBatch, Quality, StationStatus, TagChange, TagInfo, TagType};
use wincc_gateway::sinks::sparkplug::SparkplugSink;

const TAGS: usize = 1000;
const PER_BATCH: usize = 100;
const BATCHES_PER_S: u64 = 100;

/// utime + stime of this process, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn names() -> Vec<Arc<str>> {
    (0..TAGS)
        .map(|i| Arc::from(format!("Plant/Area{}/Tag{i:04}", i % 10)))
        .collect()
}

fn batch(names: &[Arc<str>], round: u64, from: usize, n: usize) -> Event {
    let now = chrono::Utc::now();
    Event::Changes(Arc::new(ChangeBatch {
        group: "bench".into(),
        changes: (from..from + n)
            .map(|i| TagChange {
                name: names[i % names.len()].clone(),
                ty: TagType::Double,
                value: json!(round as f64 + i as f64 / 1000.0),
                quality: Quality::Good,
                quality_code: None,
                timestamp: now,
                error: None,
            })
            .collect(),
        received_at: Instant::now(),
    }))
}

/// Feeds 10 000 changes/s for `secs`; returns (CPU seconds, wall seconds).
async fn feed(bus: &Bus, names: &[Arc<str>], secs: u64) -> (f64, f64) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / BATCHES_PER_S));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    for r in 0..secs * BATCHES_PER_S {
        tick.tick().await;
        let from = (r as usize * PER_BATCH) % TAGS;
        bus.publish(batch(names, r, from, PER_BATCH));
    }
    (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64())
}

async fn baseline(names: &[Arc<str>], secs: u64) -> f64 {
    let bus = Bus::new();
    let mut sub = bus.subscribe("drain", 256);
    let drain = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(e) = sub.recv().await {
            if let Event::Changes(b) = e {
                n += b.changes.len();
            }
        }
        n
    });
    let (cpu, wall) = feed(&bus, names, secs).await;
    bus.close();
    let n = drain.await.unwrap();
    println!(
        "baseline (feeder + bus + draining subscriber): {n} changes in {wall:.1} s, CPU {:.4} cores",
        cpu / wall
    );
    cpu / wall
}

async fn sink(names: &[Arc<str>], secs: u64) -> f64 {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = SparkplugSettings {
        enabled: true,
        url: broker.url(),
        client_id: "spb-bench".into(),
        group_id: "B".into(),
        edge_node_id: "N".into(),
        device_id: "D".into(),
        state_dir: dir.path().display().to_string(),
        ..SparkplugSettings::default()
    };
    // The independent counter: another process.
    let mut counter = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", "spBv1.0/B/DDATA/N/D", "-F", "%l"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (scripts/setup.sh)");
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let out = counter.stdout.take().unwrap();
    std::thread::spawn(move || {
        for _ in BufReader::new(out).lines() {
            r.fetch_add(1, Ordering::Relaxed);
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    let bus = Bus::new();
    let sub = bus.subscribe("sparkplug", 256);
    let sink = SparkplugSink::new(&settings, &Default::default(), None).expect("settings");
    let mut state = sink.state();
    let stop = CancellationToken::new();
    let task = tokio::spawn(sink.run(sub, stop.clone()));
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.is_connected()),
    )
    .await
    .expect("connected")
    .unwrap();
    bus.publish(Event::Station(StationStatus {
        connected: true,
        since: chrono::Utc::now(),
        error: None,
    }));
    let infos: Vec<TagInfo> = names
        .iter()
        .map(|n| TagInfo {
            name: n.to_string(),
            ty: TagType::Double,
            writable: false,
        })
        .collect();
    bus.publish(Event::Tags(Arc::new(infos)));
    // Every tag's first value: the DBIRTH goes out at once.
    bus.publish(batch(names, 0, 0, TAGS));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = received.load(Ordering::Relaxed);

    let (cpu, wall) = feed(&bus, names, secs).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = received.load(Ordering::Relaxed) - before;
    let offered = secs * BATCHES_PER_S;
    println!(
        "sink: {offered} batches ({} changes) offered in {wall:.1} s, {got} DDATA received by mosquitto_sub, CPU {:.4} cores",
        offered * PER_BATCH as u64,
        cpu / wall
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    let _ = counter.kill();
    let _ = counter.wait();
    cpu / wall
}

fn main() {
    let secs: u64 = std::env::var("SPB_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let names = names();
        println!("Sparkplug DDATA at 10 000 changes/s ({TAGS} Double tags, {BATCHES_PER_S} batches/s of {PER_BATCH}), {secs} s each:");
        let base = baseline(&names, secs).await;
        let total = sink(&names, secs).await;
        println!(
            "=> the Sparkplug sink costs {:.4} cores at 10 000 changes/s (target <= 0.05)",
            (total - base).max(0.0)
        );
    });
}
