//! Store-and-forward across a crash, with the real binary: the broker
//! stops, values change at the simulator, the gateway is killed (SIGKILL)
//! once the buffer is synced, started again, then the broker comes back:
//! every change made before the kill arrives on `backfill/`, in order per
//! tag, once, with its source timestamp. Also `check-config` on a buffer
//! directory that cannot be written.

use crate::common;
use crate::mqtt_buffer_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::mosquitto::{free_port, Mosquitto, MosquittoOptions};
use mqtt_buffer_support::{values, Recorder};
use serde_json::json;
use wincc_gateway::model::{TagInfo, TagType};
use wincc_gateway::sim::{self, SimOptions};

const TAGS: [&str; 3] = ["Plant/Flow", "Plant/Level", "Plant/Temp"];
const CHANGES: i64 = 15;

fn config(sim_url: &str, broker: u16, http: u16, dir: &Path) -> String {
    format!(
        r#"
[wincc]
base_url = "{sim_url}"
timeout_ms = 2000

[[poll_group]]
name = "plant"
interval_ms = 100
tags = ["Plant/*"]

[alarms]
enabled = false

[mqtt]
url = "mqtt://127.0.0.1:{broker}"
client_id = "gw-restart-{http}"
topic_prefix = "rs"
keep_alive_s = 5

[mqtt.buffer]
enabled = true
dir = "{}"
replay_per_second = 500
sync_interval_ms = 100

[opcua]
enabled = false

[http]
listen = "127.0.0.1:{http}"
"#,
        dir.display()
    )
}

fn start_gateway(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wincc-gateway"))
        .arg("run")
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wincc-gateway")
}

/// `/healthz` as JSON, if it answers.
async fn healthz(port: u16) -> Option<serde_json::Value> {
    let r = common::sim::client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

async fn wait_health(port: u16, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..300 {
        if let Some(h) = healthz(port).await {
            if pred(&h) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/healthz never showed {what}: {:?}", healthz(port).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_buffered_before_a_kill_9_are_replayed_after_the_restart() {
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
    for t in TAGS {
        let info = TagInfo {
            name: t.into(),
            ty: TagType::Int32,
            writable: true,
        };
        sim.add_tag(info, json!(0));
    }
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        ..Default::default()
    });
    let rec = Recorder::connect(broker.port, "rs/#").await;
    let work = tempfile::tempdir().unwrap();
    let http = free_port();
    let cfg = work.path().join("gateway.toml");
    let buffer = work.path().join("buffer");
    std::fs::write(&cfg, config(&sim.base_url(), broker.port, http, &buffer)).unwrap();

    let mut gw = start_gateway(&cfg);
    assert!(
        rec.wait_for(Duration::from_secs(20), |m| values(m, "rs", "tags").len()
            == 3)
            .await,
        "the gateway did not publish the initial values"
    );
    broker.stop();
    wait_health(http, "mqtt down", |h| h["mqtt"]["state"] == "down").await;
    // Each value is polled (every 100 ms) before the next one is set.
    for v in 1..=CHANGES {
        for t in TAGS {
            sim.set_value(t, json!(v));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // /healthz shows the backlog after each sync: all of it is on disk.
    let want = 3 * CHANGES as u64;
    wait_health(http, "the synced backlog", |h| {
        h["mqtt_buffer"]["entries"].as_u64() == Some(want)
    })
    .await;
    gw.kill().expect("kill -9");
    gw.wait().unwrap();

    let mut gw = start_gateway(&cfg);
    wait_health(http, "the backlog after the restart", |h| {
        h["mqtt_buffer"]["entries"].as_u64() >= Some(want)
    })
    .await;
    broker.restart();
    let done = |m: &[common::Msg]| {
        let b = values(m, "rs", "backfill");
        b.len() == 3 && b.values().all(|v| v.len() >= CHANGES as usize)
    };
    assert!(
        rec.wait_for(Duration::from_secs(30), done).await,
        "backfill incomplete: {:?}",
        values(&rec.messages(), "rs", "backfill")
    );
    wait_health(http, "an empty backlog", |h| {
        h["mqtt_buffer"]["entries"].as_u64() == Some(0)
    })
    .await;
    let msgs = rec.messages();
    let backfill = values(&msgs, "rs", "backfill");
    for (tag, seq) in &backfill {
        // Every change before the kill, once, in order; the restarted
        // gateway's first poll (the broker still away) adds the newest
        // value once more, with the same source timestamp.
        assert_eq!(
            seq[..CHANGES as usize],
            (1..=CHANGES).collect::<Vec<_>>()[..],
            "{tag}: {seq:?}"
        );
        assert!(
            seq[CHANGES as usize..].iter().all(|v| *v == CHANGES),
            "{tag}: {seq:?}"
        );
    }
    // Source timestamps: the repeated newest value has the one it had.
    let flow: Vec<&common::Msg> = msgs
        .iter()
        .filter(|m| m.topic == "rs/backfill/Plant/Flow")
        .collect();
    let ts = |m: &common::Msg| m.json()["timestamp"].as_str().unwrap().to_string();
    assert!(flow.windows(2).all(|w| ts(w[0]) <= ts(w[1])));
    if flow.len() > CHANGES as usize {
        assert_eq!(ts(flow[CHANGES as usize - 1]), ts(flow[CHANGES as usize]));
    }
    assert!(flow.iter().all(|m| m.json()["replay"] == true));
    gw.kill().ok();
    gw.wait().ok();
    sim.shutdown().await;
}

#[test]
fn check_config_refuses_a_buffer_directory_that_cannot_be_written() {
    let work = tempfile::tempdir().unwrap();
    let blocker = work.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let text = config("http://127.0.0.1:1/", 1883, 9100, &blocker.join("buffer"));
    let cfg = work.path().join("gateway.toml");
    std::fs::write(&cfg, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wincc-gateway"))
        .arg("check-config")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("mqtt.buffer.dir"), "{err}");
    assert!(err.contains("not writable"), "{err}");
    // And the ranges.
    let text = text
        .replace("replay_per_second = 500", "replay_per_second = 0")
        .replace(
            "sync_interval_ms = 100",
            "sync_interval_ms = 0\nmax_bytes = 10",
        );
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wincc-gateway"))
        .arg("check-config")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "mqtt.buffer.replay_per_second",
        "mqtt.buffer.sync_interval_ms",
        "mqtt.buffer.max_bytes",
    ] {
        assert!(err.contains(key), "{key} missing: {err}");
    }
}
