//! MQTT sink benchmark through a real mosquitto on loopback.
//!
//! 1. Throughput: 20k / 50k / 100k changes/s offered for 3 s; changes per
//!    second delivered to an independent subscriber until every tag's final
//!    value arrived (QoS 1 and QoS 0); the rest is coalesced per tag.
//! 2. Latency at a steady 10 000 changes/s (100 batches/s × 100 tags):
//!    p50 / p99 / max from the batch's `received_at` to the subscriber's
//!    receipt (same process, same clock).
//!
//! Both protocols: MQTT 3.1.1 and MQTT 5 (`protocol = "5"`).
//!
//! Run: `cargo bench --bench mqtt` (needs mosquitto: scripts/setup.sh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mosquitto::{Mosquitto, MosquittoOptions};
use common::{change, mqtt_settings, Gateway, TestSubscriber};
use serde_json::json;
use wincc_gateway::bus::Event;
use wincc_gateway::config::MqttProtocol::{self, V311, V5};
use wincc_gateway::model::ChangeBatch;

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Plant/Area{}/Tag{i:05}", i % 10))
        .collect()
}

/// Offers `rate` changes/s (a batch of rate/100 tags every 10 ms, each
/// batch changing every tag) for `secs` s and reports how many changes per
/// second reached the subscriber; what the sink cannot send in time is
/// coalesced per tag, and every tag's final value must still arrive.
async fn throughput(qos: u8, protocol: MqttProtocol, rate: usize, secs: usize) {
    let broker = Mosquitto::start();
    let sub = TestSubscriber::connect(broker.port, "b/tags/#").await;
    let mut s = mqtt_settings(broker.port, "b");
    s.qos = qos;
    s.protocol = protocol;
    let mut gw = Gateway::start(&s, None);
    gw.wait_connected().await;
    let tags = rate / 100;
    let names = names(tags);
    let rounds = secs * 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    for r in 0..rounds {
        tick.tick().await;
        gw.send(names.iter().map(|n| change(n, json!(r))).collect());
    }
    let last = json!(rounds - 1);
    let done = sub
        .wait_for(Duration::from_secs(60), |m| {
            if m.len() < tags {
                return false;
            }
            let mut final_seen = 0;
            let mut seen = std::collections::HashSet::new();
            for msg in m.iter().rev() {
                if seen.insert(msg.topic.as_str()) {
                    let v: Option<serde_json::Value> = serde_json::from_slice(&msg.payload).ok();
                    if v.is_some_and(|v| v["value"] == last) {
                        final_seen += 1;
                    }
                    if seen.len() == tags {
                        break;
                    }
                }
            }
            final_seen == tags
        })
        .await;
    let elapsed = start.elapsed();
    let delivered = sub.messages().len();
    let offered = tags * rounds;
    println!(
        "throughput {} qos={qos} offered {rate}/s for {secs} s: {delivered} of {offered} changes delivered in {:.2} s \
         => {:.0} changes/s delivered, {} coalesced, every final value arrived: {done}",
        proto(protocol),
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        offered - delivered,
    );
    gw.stop().await;
}

fn proto(p: MqttProtocol) -> &'static str {
    match p {
        MqttProtocol::V311 => "mqtt3.1.1",
        MqttProtocol::V5 => "mqtt5",
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn latency(qos: u8, protocol: MqttProtocol, rate: usize, secs: usize) {
    let broker = Mosquitto::start_with(MosquittoOptions {
        extra_config: std::env::var("MQTT_BENCH_BROKER_CONF")
            .map(|c| c.split(';').map(str::to_string).collect())
            .unwrap_or_default(),
        ..MosquittoOptions::default()
    });
    let sub = TestSubscriber::connect(broker.port, "l/tags/#").await;
    let mut s = mqtt_settings(broker.port, "l");
    s.qos = qos;
    s.protocol = protocol;
    let mut gw = Gateway::start(&s, None);
    gw.wait_connected().await;
    let per_batch = rate / 100;
    let names = names(per_batch);
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let batches = secs * 100;
    let start = Instant::now();
    for b in 0..batches as u64 {
        tick.tick().await;
        let received_at = Instant::now();
        sent_at.insert(b, received_at);
        gw.bus.publish(Event::Changes(Arc::new(ChangeBatch {
            group: "bench".into(),
            changes: names.iter().map(|n| change(n, json!(b))).collect(),
            received_at,
        })));
    }
    let offered = batches * per_batch;
    let all = sub
        .wait_for(Duration::from_secs(30), |m| m.len() >= offered)
        .await;
    let elapsed = start.elapsed();
    let msgs = sub.messages();
    let mut lat: Vec<f64> = msgs
        .iter()
        .filter_map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            let b = v["value"].as_u64()?;
            Some(m.at.duration_since(sent_at[&b]).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "latency {} qos={qos} at {rate} changes/s for {secs} s: {} of {offered} delivered (all: {all}) in {:.2} s; \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        proto(protocol),
        lat.len(),
        elapsed.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    gw.stop().await;
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before the run: {}", load.trim());
    rt.block_on(async {
        for (qos, protocol) in [(1, V311), (0, V311), (1, V5)] {
            for rate in [20_000, 50_000, 100_000] {
                throughput(qos, protocol, rate, 3).await;
            }
        }
        for (qos, protocol) in [(1, V311), (0, V311), (1, V5), (0, V5)] {
            latency(qos, protocol, 10_000, 5).await;
        }
    });
}
