//! Shared test harness: a real mosquitto ([`mosquitto::Mosquitto`]), an
//! independent MQTT subscriber ([`TestSubscriber`]) and helpers to run the
//! MQTT sink fed by the real bus. Station side: [`station`] (simulator,
//! settings and poller builders), [`sim`] (raw-HTTP simulator checks) and
//! [`rig`] (a simulator with a guarded writer). Sparkplug: [`sparkplug`]
//! (protoc as the independent decoder, and a decoding subscriber).
#![allow(dead_code)]

pub mod chromium;
pub mod log_capture;
pub mod mosquitto;
pub mod outage;
pub mod rig;
pub mod sim;
pub mod soak;
pub mod sparkplug;
pub mod station;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use wincc_gateway::bus::{Bus, Event as BusEvent};
use wincc_gateway::config::MqttSettings;
use wincc_gateway::model::{ChangeBatch, Quality, TagChange, TagType};
use wincc_gateway::sinks::mqtt::{MqttSink, MqttStatus};
use wincc_gateway::writes::Writer;

/// One message as the subscriber received it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {}",
                self.topic,
                self.text()
            )
        })
    }
}

/// An independent rumqttc client that records every message on `filter`,
/// reconnecting (and resubscribing) by itself when the broker goes away.
pub struct TestSubscriber {
    msgs: Arc<Mutex<Vec<Msg>>>,
    subacks: Arc<Mutex<usize>>,
    pub client: AsyncClient,
    task: JoinHandle<()>,
}

impl TestSubscriber {
    /// Connects and returns once the subscription is acknowledged.
    pub async fn connect(port: u16, filter: &str) -> Self {
        Self::connect_as(port, filter, &format!("test-sub-{}", rand_id())).await
    }

    pub async fn connect_as(port: u16, filter: &str, client_id: &str) -> Self {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_max_packet_size(4 << 20, 4 << 20);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let subacks = Arc::new(Mutex::new(0));
        let (m, s, c, f) = (
            msgs.clone(),
            subacks.clone(),
            client.clone(),
            filter.to_string(),
        );
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().unwrap() += 1,
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
        let sub = TestSubscriber {
            msgs,
            subacks,
            client,
            task,
        };
        assert!(
            wait(Duration::from_secs(10), || *sub.subacks.lock().unwrap() > 0).await,
            "test subscriber could not subscribe on port {port}"
        );
        sub
    }

    /// Number of subscriptions acknowledged so far (one per connection).
    pub fn subscriptions(&self) -> usize {
        *self.subacks.lock().unwrap()
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    pub fn last(&self, topic: &str) -> Option<Msg> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m.topic == topic)
            .cloned()
    }

    pub fn clear(&self) {
        self.msgs.lock().unwrap().clear();
    }

    /// Waits until `pred` holds for the messages received so far.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Msg]) -> bool) -> bool {
        wait(timeout, || pred(&self.msgs.lock().unwrap())).await
    }

    /// Waits until a message on `topic` satisfies `pred`, and returns it.
    pub async fn wait_msg(
        &self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.on(topic).into_iter().find(|m| pred(m)) {
                return Some(m);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `f` every 10 ms until it is true or `timeout` passes.
pub async fn wait(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (std::process::id() as u64) << 32 ^ N.fetch_add(1, Ordering::Relaxed)
}

/// `[mqtt]` settings pointing at `port`, with a unique prefix and client id.
pub fn mqtt_settings(port: u16, prefix: &str) -> MqttSettings {
    MqttSettings {
        url: format!("mqtt://127.0.0.1:{port}"),
        client_id: format!("gw-{}", rand_id()),
        topic_prefix: prefix.into(),
        keep_alive_s: 5,
        ..MqttSettings::default()
    }
}

/// The MQTT sink running on the real bus.
pub struct Gateway {
    pub bus: Bus,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
    pub state: tokio::sync::watch::Receiver<MqttStatus>,
}

impl Gateway {
    pub fn start(settings: &MqttSettings, writer: Option<Writer>) -> Self {
        let bus = Bus::new();
        let events = bus.subscribe("mqtt", 1024);
        let sink = MqttSink::new(settings, writer).expect("valid MQTT settings");
        let state = sink.state();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(sink.run(events, shutdown.clone()));
        Gateway {
            bus,
            shutdown,
            handle,
            state,
        }
    }

    pub async fn wait_connected(&mut self) {
        let ok = tokio::time::timeout(
            Duration::from_secs(10),
            self.state.wait_for(|s| s.is_connected()),
        )
        .await;
        assert!(ok.is_ok(), "the MQTT sink did not connect");
    }

    /// Clean shutdown, waiting for the sink to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.handle)
            .await
            .expect("sink stops in time")
            .expect("sink task ok");
    }

    pub fn send(&self, changes: Vec<TagChange>) {
        self.bus.publish(batch(changes));
    }
}

pub fn change(name: &str, value: serde_json::Value) -> TagChange {
    TagChange {
        name: name.into(),
        ty: TagType::Double,
        value,
        quality: Quality::Good,
        quality_code: None,
        timestamp: chrono::Utc::now(),
        error: None,
    }
}

pub fn batch(changes: Vec<TagChange>) -> BusEvent {
    BusEvent::Changes(Arc::new(ChangeBatch {
        group: "test".into(),
        changes,
        received_at: Instant::now(),
    }))
}
