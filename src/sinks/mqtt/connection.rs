//! The rumqttc event loop, in its own task, for MQTT 3.1.1 and 5 alike
//! (the protocol is hidden behind [`super::link`]).
//!
//! It polls, feeds delivery events to the outbox, hands incoming write
//! commands to their workers and reconnects with capped, jittered
//! exponential backoff. It never awaits a publish: everything it sends goes
//! through the outbox's non-blocking `try_publish`.
//!
//! After every connection error it empties rumqttc's own retry queue and
//! state, because the outbox (not rumqttc) decides what is sent again.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::commands::Commands;
use super::link::{Client, EventLoop, NetEvent, Qos};
use super::options::MAX_INFLIGHT;
use super::outbox::Kind;
use super::{MqttStatus, SharedOutbox};

/// First reconnect delay; it doubles (with jitter) up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two connection attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) struct Driver {
    pub eventloop: EventLoop,
    pub client: Client,
    pub outbox: SharedOutbox,
    pub commands: Option<Arc<Commands>>,
    pub status_topic: Arc<str>,
    pub state: watch::Sender<MqttStatus>,
    /// Set by the sink once it has asked for a clean disconnect.
    pub stopping: CancellationToken,
    pub broker: String,
}

fn backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_jitter()
        .without_max_times()
        .build()
}

impl Driver {
    fn lock(&self) -> std::sync::MutexGuard<'_, super::Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs until the clean disconnect went out, or until stopped while
    /// not connected.
    pub(crate) async fn run(mut self) {
        let mut delays = backoff();
        let mut failures: u32 = 0;
        let mut connected = false;
        // QoS 2 refusals at PUBREC on this connection (MQTT 5).
        let mut pubrec_refusals: u32 = 0;
        loop {
            let polled = if connected {
                self.eventloop.poll().await
            } else {
                tokio::select! {
                    r = self.eventloop.poll() => r,
                    _ = self.stopping.cancelled() => break,
                }
            };
            match polled {
                Ok(NetEvent::ConnAck {
                    session_present,
                    max_packet,
                }) => {
                    connected = true;
                    failures = 0;
                    pubrec_refusals = 0;
                    delays = backoff();
                    let mut o = self.lock();
                    if let Some(c) = &self.commands {
                        if let Err(e) = self.client.try_subscribe(&c.filter(), Qos::AtLeastOnce) {
                            tracing::error!(error = %e, "cannot subscribe to the MQTT write topics");
                        }
                    }
                    if !self.stopping.is_cancelled() {
                        o.set(
                            Kind::Status,
                            self.status_topic.clone(),
                            bytes::Bytes::from_static(b"online"),
                            Qos::AtLeastOnce,
                            true,
                            None,
                        );
                    }
                    o.set_broker_max_packet(max_packet);
                    o.on_connected(&self.status_topic, session_present);
                    o.pump();
                    let pending = o.unconfirmed();
                    drop(o);
                    metrics::gauge!("wincc_gateway_mqtt_pending").set(pending as f64);
                    metrics::gauge!("wincc_gateway_mqtt_connected").set(1.0);
                    self.state.send_replace(MqttStatus::Connected);
                    tracing::info!(
                        broker = %self.broker,
                        session_present,
                        pending,
                        "connected to the MQTT broker"
                    );
                }
                Ok(NetEvent::Published(pkid)) => {
                    let mut o = self.lock();
                    o.on_outgoing_publish(pkid);
                    o.pump();
                    if pkid == 0 {
                        o.update_pending_gauge();
                    }
                }
                Ok(NetEvent::AwaitAck(pkid)) => self.lock().on_await_ack(pkid),
                Ok(NetEvent::Acked { pkid, refused }) => self.acked(pkid, refused.as_deref()),
                Ok(NetEvent::RefusedAtPubRec { pkid, reason }) => {
                    self.acked(pkid, Some(&reason));
                    // rumqttc never frees these in-flight slots: before they
                    // fill its window (and publishing stalls on a live link),
                    // start a new connection, which resets its state.
                    pubrec_refusals += 1;
                    if pubrec_refusals == u32::from(MAX_INFLIGHT / 2) {
                        tracing::warn!(
                            refusals = pubrec_refusals,
                            "the MQTT broker refused many QoS 2 messages; reconnecting to free rumqttc's in-flight window"
                        );
                        self.client.try_disconnect();
                    }
                }
                Ok(NetEvent::Message(m)) => match &self.commands {
                    Some(c) => c.handle(&m),
                    None => {
                        tracing::debug!(topic = %m.topic, "ignoring an unexpected MQTT message")
                    }
                },
                Ok(NetEvent::SubAck { refused: true }) => {
                    tracing::error!("the MQTT broker refused the subscription to the write topics");
                }
                Ok(NetEvent::Disconnecting) if self.stopping.is_cancelled() => break,
                Ok(_) => {}
                Err(e) => {
                    {
                        let outbox = self.outbox.clone();
                        let mut o = outbox.lock().unwrap_or_else(|e| e.into_inner());
                        o.on_disconnected();
                        // Drop rumqttc's own retry queue: the outbox resends.
                        self.eventloop.reset();
                        o.update_pending_gauge();
                    }
                    if connected {
                        connected = false;
                        metrics::gauge!("wincc_gateway_mqtt_connected").set(0.0);
                        self.state
                            .send_replace(MqttStatus::Disconnected(e.to_string()));
                        if !self.stopping.is_cancelled() {
                            tracing::warn!(broker = %self.broker, error = %e, "lost the connection to the MQTT broker");
                        }
                    }
                    if self.stopping.is_cancelled() {
                        break;
                    }
                    if failures == 0 {
                        self.state
                            .send_replace(MqttStatus::Disconnected(e.to_string()));
                    }
                    failures += 1;
                    let delay = delays.next().unwrap_or(MAX_BACKOFF);
                    if failures == 1 || failures % 20 == 0 {
                        tracing::warn!(
                            broker = %self.broker,
                            error = %e,
                            attempt = failures,
                            retry_in_ms = delay.as_millis() as u64,
                            "cannot connect to the MQTT broker"
                        );
                    } else {
                        tracing::debug!(error = %e, attempt = failures, "MQTT reconnect failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stopping.cancelled() => break,
                    }
                }
            }
        }
        metrics::gauge!("wincc_gateway_mqtt_connected").set(0.0);
        self.state
            .send_replace(MqttStatus::Disconnected("stopped".into()));
    }

    fn acked(&self, pkid: u16, refused: Option<&str>) {
        let mut o = self.lock();
        match refused {
            None => o.on_ack(pkid),
            Some(reason) => o.on_refused(pkid, reason),
        }
        o.pump();
        o.update_pending_gauge();
    }
}
