//! Store-and-forward buffer benchmark (`[mqtt.buffer]`, contract §9).
//!
//! 1. Append cost: the MQTT sink with its broker away is offered 10 000
//!    changes/s (100 batches/s × 100 tags, float values, 20-character tag
//!    names) for 20 s, once without and once with the buffer; the
//!    difference in this process's CPU time (utime + stime) is what
//!    buffering costs, and the segment files' size / changes is the disk
//!    cost per change (framing and payload included).
//! 2. Replay rate: 200 000 buffered changes are replayed against a real
//!    mosquitto at `replay_per_second` = 20 000 and 50 000; the rate is
//!    taken from an independent subscriber's arrival times: entries / time
//!    from the connection to the last arrival, and the steady state
//!    between 10 % and 90 % of arrivals. Every backfill message must
//!    arrive and the buffer must be empty (acknowledged) afterwards.
//!
//! Run: `cargo bench --bench buffer` (needs mosquitto: scripts/setup.sh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mosquitto::{free_port, Mosquitto};
use common::{batch, change, mqtt_settings, TestSubscriber};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::Bus;
use wincc_gateway::config::{MqttBufferSettings, MqttSettings};
use wincc_gateway::sinks::mqtt::{BacklogStatus, MqttSink, MqttStatus};

/// utime + stime of this process, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Plant/Area{}/Tag{i:06}", i % 10))
        .collect()
}

fn settings(port: u16, dir: Option<&Path>, rate: u32) -> MqttSettings {
    let mut s = mqtt_settings(port, "bench");
    if let Some(d) = dir {
        s.buffer = MqttBufferSettings {
            enabled: true,
            dir: d.display().to_string(),
            max_bytes: 1 << 30,
            replay_per_second: rate,
            sync_interval_ms: 1000,
        };
    }
    s
}

struct Sink {
    bus: Bus,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    state: watch::Receiver<MqttStatus>,
    backlog: Option<watch::Receiver<BacklogStatus>>,
}

fn start(s: &MqttSettings) -> Sink {
    let bus = Bus::new();
    let events = bus.subscribe("mqtt", 100_000);
    let sink = MqttSink::new(s, None).expect("settings");
    let state = sink.state();
    let backlog = sink.backlog();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(sink.run(events, stop.clone()));
    Sink {
        bus,
        stop,
        handle,
        state,
        backlog,
    }
}

impl Sink {
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.handle).await;
    }
}

fn seg_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Offers 10 000 changes/s for `secs` with the broker away; returns CPU seconds used.
async fn offer(sink: &Sink, secs: u64) -> f64 {
    let names = names(100);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cpu = cpu_seconds();
    for r in 0..secs * 100 {
        tick.tick().await;
        let changes = names
            .iter()
            .enumerate()
            .map(|(i, n)| change(n, json!((r * 100 + i as u64) as f64 / 7.0)))
            .collect();
        sink.bus.publish(batch(changes));
    }
    // Let the sink finish what is queued.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cpu_seconds() - cpu
}

async fn append_cost() {
    const SECS: u64 = 20;
    let port = free_port(); // nothing listens: the broker is away
    let plain = start(&settings(port, None, 1000));
    let base = offer(&plain, SECS).await;
    plain.stop().await;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let buffered = start(&settings(port, Some(dir.path()), 1000));
    let with = offer(&buffered, SECS).await;
    let st = buffered.backlog.as_ref().unwrap().borrow().clone();
    buffered.stop().await;
    let changes = SECS * 10_000;
    let bytes = seg_bytes(dir.path());
    println!(
        "append: {changes} changes at 10000/s, broker away: CPU without buffer {:.3} core, with buffer {:.3} core, buffer cost {:.4} core; {} entries, {bytes} bytes on disk = {:.1} bytes/change",
        base / SECS as f64,
        with / SECS as f64,
        (with - base) / SECS as f64,
        st.entries,
        bytes as f64 / changes as f64
    );
}

async fn replay(rate: u32) {
    const N: u64 = 200_000;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut broker = Mosquitto::start();
    let port = broker.port;
    broker.stop();
    // Fill the buffer with the broker away.
    let filler = start(&settings(port, Some(dir.path()), rate));
    let names = names(1000);
    for r in 0..N / 1000 {
        let changes = names.iter().map(|n| change(n, json!(r))).collect();
        filler.bus.publish(batch(changes));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut b = filler.backlog.clone().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), b.wait_for(|s| s.entries >= N)).await;
    filler.stop().await;

    broker.restart();
    let sub = TestSubscriber::connect(port, "bench/backfill/#").await;
    let mut sink = start(&settings(port, Some(dir.path()), rate));
    let mut b = sink.backlog.clone().unwrap();
    let held = b.borrow().entries;
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        sink.state.wait_for(|s| s.is_connected()),
    )
    .await;
    let t0 = Instant::now();
    let cpu0 = cpu_seconds();
    let got = sub
        .wait_for(Duration::from_secs(120), |m| m.len() as u64 >= held)
        .await;
    let cpu = cpu_seconds() - cpu0;
    // Arrival times at the independent subscriber: the rate a historian
    // sees. (The buffer's own entry count is published on each sync, so it
    // lags by up to `sync_interval_ms` and is not used for timing.)
    let mut at: Vec<Instant> = sub.messages().iter().map(|m| m.at).collect();
    at.sort_unstable();
    let whole = at
        .last()
        .map_or(f64::NAN, |l| l.duration_since(t0).as_secs_f64());
    let (lo, hi) = (at.len() / 10, at.len() * 9 / 10);
    let steady = if hi > lo + 1 {
        (hi - lo) as f64 / at[hi].duration_since(at[lo]).as_secs_f64()
    } else {
        f64::NAN
    };
    let emptied = tokio::time::timeout(Duration::from_secs(30), b.wait_for(|s| s.entries == 0))
        .await
        .is_ok();
    println!(
        "replay: replay_per_second = {rate}: {held} entries, subscriber got all: {got} ({}); \
         connected -> last arrival {whole:.2} s = {:.0}/s; steady state (10 %..90 % of arrivals) {steady:.0}/s; \
         buffer emptied after acks: {emptied}; CPU {:.2} core (gateway and subscriber in this process)",
        at.len(),
        held as f64 / whole,
        cpu / whole
    );
    drop(sub);
    sink.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    append_cost().await;
    replay(20_000).await;
    replay(50_000).await;
}
