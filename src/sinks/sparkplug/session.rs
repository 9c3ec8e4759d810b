//! One MQTT 3.1.1 session of the edge node: a fresh rumqttc client and
//! event loop per connection attempt, because the will (the NDEATH with
//! this session's `bdSeq`) is part of the CONNECT, and because nothing a
//! past session queued may reach the broker after the next NBIRTH.
//!
//! The driver task polls the event loop and never waits on the sink:
//! CONNACK and the end of the connection go through an unbounded channel
//! (two messages per session), incoming commands through a bounded one,
//! dropped and counted when full, and no incoming packet may exceed
//! [`MAX_INCOMING_BYTES`] (a command flood cannot grow memory).

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// rumqttc's request channel: births of many tags are one message each, so
/// a few hundred is plenty; a full channel makes the sink wait (and the
/// bus conflate) rather than drop data messages.
const REQUEST_CHANNEL: usize = 256;
/// Incoming commands (STATE, NCMD, DCMD) waiting for the sink; with
/// [`MAX_INCOMING_BYTES`] each, at most 64 MiB.
const INCOMING: usize = 64;
/// The largest command the node accepts: ~50 000 metrics in one DCMD. A
/// bigger packet ends the connection (rumqttc's limit), which reconnects.
pub(crate) const MAX_INCOMING_BYTES: usize = 1024 * 1024;

/// What the connection reports.
#[derive(Debug)]
pub(crate) enum Control {
    /// The broker accepted the CONNECT.
    Connected,
    /// The connection ended (with why); the session is over.
    Closed(String),
}

/// A message from the broker on one of the node's subscriptions.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub topic: String,
    pub payload: Bytes,
}

pub(crate) struct Session {
    pub client: AsyncClient,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub incoming: mpsc::Receiver<Incoming>,
    /// How many PUBLISH packets the event loop has written to the
    /// connection so far, in the order they were requested (the replay
    /// acknowledges its QoS 0 DDATA by this).
    pub written: watch::Receiver<u64>,
    driver: JoinHandle<()>,
}

impl Session {
    /// Connects with `opts` plus the NDEATH `will` on `will_topic`.
    pub(crate) fn start(mut opts: MqttOptions, will_topic: &str, will: Vec<u8>) -> Session {
        // The NDEATH: QoS 1, not retained (Sparkplug 3.0).
        opts.set_last_will(LastWill::new(will_topic, will, QoS::AtLeastOnce, false));
        // Sparkplug 3.0 over MQTT 3.1.1 requires a clean session.
        opts.set_clean_session(true);
        let (client, eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL);
        let (control_tx, control) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::channel(INCOMING);
        let (written_tx, written) = watch::channel(0);
        let driver = tokio::spawn(drive(eventloop, control_tx, incoming_tx, written_tx));
        Session {
            client,
            control,
            incoming,
            written,
            driver,
        }
    }

    /// Waits (at most `within`) for the driver to end, then stops it.
    pub(crate) async fn finish(mut self, within: Duration) {
        if tokio::time::timeout(within, &mut self.driver)
            .await
            .is_err()
        {
            self.driver.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn drive(
    mut eventloop: EventLoop,
    control: mpsc::UnboundedSender<Control>,
    incoming: mpsc::Sender<Incoming>,
    written: watch::Sender<u64>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = control.send(Control::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = Incoming {
                    topic: p.topic,
                    payload: p.payload,
                };
                if incoming.try_send(msg).is_err() {
                    metrics::counter!("wincc_gateway_sparkplug_commands_dropped_total")
                        .increment(1);
                    tracing::warn!(
                        "Sparkplug commands arrive faster than they are handled; one dropped"
                    );
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                written.send_modify(|n| *n += 1);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Flushed by the event loop before it reports it.
                let _ = control.send(Control::Closed("disconnected".into()));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = control.send(Control::Closed(e.to_string()));
                return;
            }
        }
    }
}
