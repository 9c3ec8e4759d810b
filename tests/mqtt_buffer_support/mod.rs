//! Helpers of the store-and-forward tests: a subscriber whose session the
//! broker keeps (so nothing published while it reconnects after a broker
//! restart is lost to it), and per-tag sequences of what it received.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use crate::common::{rand_id, wait, Msg};

/// Records every message on `filter` with a persistent session (QoS 1).
pub struct Recorder {
    msgs: Arc<Mutex<Vec<Msg>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Connects and returns once subscribed. Needs a broker with persistence
    /// if it must survive the broker's restart.
    pub async fn connect(port: u16, filter: &str) -> Self {
        let mut opts = MqttOptions::new(format!("rec-{}", rand_id()), "127.0.0.1", port);
        opts.set_clean_session(false);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_inflight(1000);
        let (client, mut ev) = AsyncClient::new(opts, 1000);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(Mutex::new(false));
        let (m, s, f) = (msgs.clone(), subscribed.clone(), filter.to_string());
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().unwrap() = true,
                    Ok(Event::Incoming(Packet::Publish(p))) => m.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        assert!(
            wait(Duration::from_secs(10), || *subscribed.lock().unwrap()).await,
            "recorder could not subscribe on port {port}"
        );
        Recorder { msgs, task }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Msg]) -> bool) -> bool {
        wait(timeout, || pred(&self.msgs.lock().unwrap())).await
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per tag (topic after `{prefix}/{kind}/`), the integer values in arrival order.
pub fn values(msgs: &[Msg], prefix: &str, kind: &str) -> BTreeMap<String, Vec<i64>> {
    let lead = format!("{prefix}/{kind}/");
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for m in msgs {
        if let Some(tag) = m.topic.strip_prefix(&lead) {
            let v = m.json()["value"].as_i64().unwrap_or(i64::MIN);
            out.entry(tag.to_string()).or_default().push(v);
        }
    }
    out
}

/// Backfill messages received so far.
pub fn backfill_count(msgs: &[Msg], prefix: &str) -> usize {
    let lead = format!("{prefix}/backfill/");
    msgs.iter().filter(|m| m.topic.starts_with(&lead)).count()
}
