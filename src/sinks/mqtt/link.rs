//! MQTT 3.1.1 (`rumqttc`) and MQTT 5 (`rumqttc::v5`) behind one face.
//!
//! rumqttc has separate types for the two protocols. The outbox, the event
//! loop driver, the write commands and the retained-alarm reader only need
//! a handful of operations and events, so they see [`Client`], [`EventLoop`]
//! and [`NetEvent`] and never the protocol. MQTT 5 publishes additionally
//! carry a content type and the UTF-8 payload format indicator, and a write
//! command's response topic / correlation data are passed on.

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5::{
    Packet as Packet5, PubAckReason, PubCompReason, PubRecReason, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::QoS as QoS4;

use super::options::{Options, MAX_INFLIGHT};
use super::outbox::Kind;

/// Quality of service, whatever the protocol (names as in the MQTT spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl From<Qos> for QoS4 {
    fn from(q: Qos) -> Self {
        match q {
            Qos::AtMostOnce => QoS4::AtMostOnce,
            Qos::AtLeastOnce => QoS4::AtLeastOnce,
            Qos::ExactlyOnce => QoS4::ExactlyOnce,
        }
    }
}

impl From<Qos> for QoS5 {
    fn from(q: Qos) -> Self {
        match q {
            Qos::AtMostOnce => QoS5::AtMostOnce,
            Qos::AtLeastOnce => QoS5::AtLeastOnce,
            Qos::ExactlyOnce => QoS5::ExactlyOnce,
        }
    }
}

/// One publish as the outbox hands it over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    pub kind: Kind,
    pub topic: &'a str,
    pub qos: Qos,
    pub retain: bool,
    pub payload: &'a Bytes,
    /// MQTT 5 correlation data of a reply to a command's response topic.
    pub correlation: Option<&'a Bytes>,
}

impl Message<'_> {
    /// Fixed header (5) + topic length (2) + packet id (2) + topic + payload.
    fn base_size(&self) -> usize {
        self.topic.len() + self.payload.len() + 9
    }
}

/// Where the outbox's publishes go. Implemented by both rumqttc clients;
/// the call must never block.
pub(crate) trait Publisher {
    /// Hands a publish over; `false` when the request channel is full.
    fn try_publish(&self, m: &Message<'_>) -> bool;

    /// Bytes the PUBLISH packet takes on the wire (checked against the
    /// maximum packet size before it is handed over).
    fn packet_size(&self, m: &Message<'_>) -> usize {
        m.base_size()
    }
}

impl Publisher for rumqttc::AsyncClient {
    fn try_publish(&self, m: &Message<'_>) -> bool {
        rumqttc::AsyncClient::try_publish(self, m.topic, m.qos.into(), m.retain, m.payload.to_vec())
            .is_ok()
    }
}

/// Whether a v5 publish carries properties: an empty payload (a cleared
/// retained alarm) gets none.
fn has_properties(m: &Message<'_>) -> bool {
    !m.payload.is_empty() || m.correlation.is_some()
}

/// JSON, or plain text for `status`.
fn content_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Status => "text/plain",
        _ => "application/json",
    }
}

/// What a v5 subscriber is told about a payload: its content type, UTF-8,
/// and the correlation data of a reply.
pub(crate) fn properties(m: &Message<'_>) -> Option<PublishProperties> {
    has_properties(m).then(|| PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some(content_type(m.kind).into()),
        correlation_data: m.correlation.cloned(),
        ..PublishProperties::default()
    })
}

impl Publisher for v5::AsyncClient {
    fn try_publish(&self, m: &Message<'_>) -> bool {
        let (topic, qos, payload) = (m.topic, m.qos.into(), m.payload.clone());
        match properties(m) {
            Some(p) => self.try_publish_with_properties(topic, qos, m.retain, payload, p),
            None => v5::AsyncClient::try_publish(self, topic, qos, m.retain, payload),
        }
        .is_ok()
    }

    fn packet_size(&self, m: &Message<'_>) -> usize {
        // Property length (up to 4) + each property's id, length and value
        // (the properties of `properties`, sized without building them).
        let props = if has_properties(m) {
            4 + 2 + 3 + content_type(m.kind).len() + m.correlation.map_or(0, |c| 3 + c.len())
        } else {
            1
        };
        m.base_size() + props
    }
}

/// The request side of the connection, for either protocol. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    /// Queues a SUBSCRIBE without blocking.
    pub(crate) fn try_subscribe(&self, filter: &str, qos: Qos) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(filter, qos.into())
                .map_err(|e| e.to_string()),
            // Retain-As-Published: the broker keeps the retain flag of a live
            // message, so a retained write command is seen as one and refused.
            Client::V5(c) => {
                let mut f = v5::mqttbytes::v5::Filter::new(filter, qos.into());
                f.preserve_retain = true;
                c.try_subscribe_many([f]).map_err(|e| e.to_string())
            }
        }
    }

    /// Queues a DISCONNECT without blocking (best effort).
    pub(crate) fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl Publisher for Client {
    fn try_publish(&self, m: &Message<'_>) -> bool {
        match self {
            Client::V4(c) => Publisher::try_publish(c, m),
            Client::V5(c) => Publisher::try_publish(c, m),
        }
    }

    fn packet_size(&self, m: &Message<'_>) -> usize {
        match self {
            Client::V4(c) => c.packet_size(m),
            Client::V5(c) => c.packet_size(m),
        }
    }
}

/// Where an MQTT 5 command asked for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub topic: String,
    pub correlation: Option<Bytes>,
}

/// A message the broker delivered.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    /// MQTT 5 response topic (and correlation data), if the sender set one.
    pub reply: Option<Reply>,
}

/// The events the gateway acts on; everything else is [`NetEvent::Other`].
#[derive(Debug)]
pub(crate) enum NetEvent {
    /// A connection is up. `max_packet` is the broker's limit (MQTT 5 only).
    ConnAck {
        session_present: bool,
        max_packet: Option<u32>,
    },
    /// A publish was written (`Outgoing::Publish`; packet id 0 for QoS 0).
    Published(u16),
    /// A publish is parked until packet id `0` is acknowledged.
    AwaitAck(u16),
    /// The broker finished a QoS 1/2 publish (PUBACK / PUBCOMP), or refused
    /// it with an MQTT 5 reason code (`refused`).
    Acked {
        pkid: u16,
        refused: Option<String>,
    },
    /// MQTT 5: a QoS 2 publish refused at PUBREC. Its end, but rumqttc
    /// 0.25 keeps counting it in flight until the next connection.
    RefusedAtPubRec {
        pkid: u16,
        reason: String,
    },
    Message(Incoming),
    /// A SUBACK; `refused` when a filter was not granted.
    SubAck {
        refused: bool,
    },
    /// The DISCONNECT went out.
    Disconnecting,
    Other,
}

/// The rumqttc event loop, for either protocol (boxed: they are large and
/// of quite different sizes).
pub(crate) enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// Creates the client and its event loop (TCP no-delay, 5 s connect timeout).
/// `cap` is the request channel's size.
pub(crate) fn connect(opts: Options, cap: usize) -> (Client, EventLoop) {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    match opts {
        Options::V4(o) => {
            let (c, mut e) = rumqttc::AsyncClient::new(*o, cap);
            e.set_network_options(net);
            (Client::V4(c), EventLoop::V4(Box::new(e)))
        }
        Options::V5(mut o) => {
            o.set_network_options(net);
            o.set_connection_timeout(5);
            let (c, e) = v5::AsyncClient::new(*o, cap);
            (Client::V5(c), EventLoop::V5(Box::new(e)))
        }
    }
}

impl EventLoop {
    /// The next event; an error means the connection is gone (the next
    /// call reconnects at once, so back off before it).
    pub(crate) async fn poll(&mut self) -> Result<NetEvent, String> {
        match self {
            EventLoop::V4(e) => e.poll().await.map(v4_event).map_err(|e| e.to_string()),
            EventLoop::V5(e) => e.poll().await.map(v5_event).map_err(|e| e.to_string()),
        }
    }

    /// Forgets everything rumqttc would resend on its own (its pending
    /// queue, the request channel, in-flight state): the outbox decides
    /// what is sent again. Call after a connection error.
    pub(crate) fn reset(&mut self) {
        match self {
            EventLoop::V4(e) => {
                e.clean();
                e.pending.clear();
                e.state = rumqttc::MqttState::new(MAX_INFLIGHT, false);
            }
            EventLoop::V5(e) => {
                e.clean();
                e.pending.clear();
                e.state = v5::MqttState::new(MAX_INFLIGHT, false);
            }
        }
    }
}

fn v4_event(ev: rumqttc::Event) -> NetEvent {
    use rumqttc::{Event, Incoming as In, Outgoing as Out};
    match ev {
        Event::Incoming(In::ConnAck(a)) => NetEvent::ConnAck {
            session_present: a.session_present,
            max_packet: None,
        },
        Event::Outgoing(Out::Publish(pkid)) => NetEvent::Published(pkid),
        Event::Outgoing(Out::AwaitAck(pkid)) => NetEvent::AwaitAck(pkid),
        Event::Incoming(In::PubAck(a)) => NetEvent::Acked {
            pkid: a.pkid,
            refused: None,
        },
        Event::Incoming(In::PubComp(a)) => NetEvent::Acked {
            pkid: a.pkid,
            refused: None,
        },
        Event::Incoming(In::Publish(p)) => NetEvent::Message(Incoming {
            topic: p.topic,
            payload: p.payload,
            retain: p.retain,
            reply: None,
        }),
        Event::Incoming(In::SubAck(a)) => NetEvent::SubAck {
            refused: a
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)),
        },
        Event::Outgoing(Out::Disconnect) => NetEvent::Disconnecting,
        _ => NetEvent::Other,
    }
}

fn v5_event(ev: v5::Event) -> NetEvent {
    use rumqttc::Outgoing as Out;
    use v5::mqttbytes::v5::SubscribeReasonCode;
    match ev {
        v5::Event::Incoming(Packet5::ConnAck(a)) => NetEvent::ConnAck {
            session_present: a.session_present,
            max_packet: a.properties.and_then(|p| p.max_packet_size),
        },
        v5::Event::Outgoing(Out::Publish(pkid)) => NetEvent::Published(pkid),
        v5::Event::Outgoing(Out::AwaitAck(pkid)) => NetEvent::AwaitAck(pkid),
        v5::Event::Incoming(Packet5::PubAck(a)) => NetEvent::Acked {
            pkid: a.pkid,
            refused: match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                r => Some(format!("{r:?}")),
            },
        },
        // A QoS 2 publish refused at PUBREC gets no PUBCOMP: this is its end.
        v5::Event::Incoming(Packet5::PubRec(a))
            if !matches!(
                a.reason,
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers
            ) =>
        {
            NetEvent::RefusedAtPubRec {
                pkid: a.pkid,
                reason: format!("{:?}", a.reason),
            }
        }
        v5::Event::Incoming(Packet5::PubComp(a)) => NetEvent::Acked {
            pkid: a.pkid,
            refused: match a.reason {
                PubCompReason::Success => None,
                r => Some(format!("{r:?}")),
            },
        },
        v5::Event::Incoming(Packet5::Publish(p)) => {
            let reply = p.properties.and_then(|props| {
                props.response_topic.map(|topic| Reply {
                    topic,
                    correlation: props.correlation_data,
                })
            });
            NetEvent::Message(Incoming {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
                retain: p.retain,
                reply,
            })
        }
        v5::Event::Incoming(Packet5::SubAck(a)) => NetEvent::SubAck {
            refused: a
                .return_codes
                .iter()
                .any(|c| !matches!(c, SubscribeReasonCode::Success(_))),
        },
        v5::Event::Outgoing(Out::Disconnect) => NetEvent::Disconnecting,
        _ => NetEvent::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_properties_describe_the_payload_and_count_in_the_size() {
        let payload = Bytes::from_static(b"{\"value\":1}");
        let corr = Bytes::from_static(b"abc");
        let mut m = Message {
            kind: Kind::Tag,
            topic: "p/tags/A",
            qos: Qos::AtLeastOnce,
            retain: true,
            payload: &payload,
            correlation: None,
        };
        let p = properties(&m).unwrap();
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(p.payload_format_indicator, Some(1));
        assert_eq!(p.correlation_data, None);
        m.kind = Kind::Status;
        assert_eq!(
            properties(&m).unwrap().content_type.as_deref(),
            Some("text/plain")
        );
        m.kind = Kind::WriteResult;
        m.correlation = Some(&corr);
        assert_eq!(properties(&m).unwrap().correlation_data, Some(corr.clone()));
        let empty = Bytes::new();
        m.payload = &empty;
        m.correlation = None;
        assert!(properties(&m).is_none());

        let opts = rumqttc::v5::MqttOptions::new("x", "127.0.0.1", 1883);
        let (c5, _e) = v5::AsyncClient::new(opts, 1);
        let opts = rumqttc::MqttOptions::new("x", "127.0.0.1", 1883);
        let (c4, _e) = rumqttc::AsyncClient::new(opts, 1);
        m.payload = &payload;
        m.correlation = Some(&corr);
        // 3 + 16 (content type) + 2 (format) + 3 + 3 (correlation) + 4.
        assert_eq!(c5.packet_size(&m), c4.packet_size(&m) + 31);
    }
}
