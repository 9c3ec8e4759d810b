//! MQTT 3.1.1 and MQTT 5 packets for the embedded broker, translated to one
//! protocol-neutral form. The byte-level encoding and decoding is rumqttc's
//! (`rumqttc::mqttbytes::v4` and `rumqttc::v5::mqttbytes::v5`), the same
//! code the gateway's own client uses; this module only maps between the two
//! protocols and what the broker needs.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS as QoS4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;

/// The largest packet the broker accepts or sends (also advertised to MQTT 5 clients).
pub(crate) const MAX_PACKET: usize = 4 * 1024 * 1024;

/// The protocol a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    V4,
    V5,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::V4 => "MQTT 3.1.1",
            Proto::V5 => "MQTT 5",
        })
    }
}

/// A message as the broker stores and routes it.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties, passed on to MQTT 5 subscribers (topic alias and
    /// subscription identifiers removed).
    pub props: Option<Box<v5::PublishProperties>>,
}

/// What a client asked for in one SUBSCRIBE entry.
#[derive(Debug, Clone)]
pub(crate) struct SubRequest {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    /// MQTT 5 Retain-As-Published.
    pub rap: bool,
    /// MQTT 5 Retain Handling: 0 send on every subscribe, 1 only on a new one, 2 never.
    pub retain_handling: u8,
}

/// The CONNECT, reduced to what the broker uses.
#[derive(Debug)]
pub(crate) struct Connect {
    pub proto: Proto,
    pub client_id: String,
    pub keep_alive: u16,
    pub will: Option<Message>,
    /// MQTT 5 Receive Maximum (unacknowledged QoS 1 messages the client takes).
    pub receive_max: u16,
    /// MQTT 5 Maximum Packet Size the client takes.
    pub max_packet: usize,
}

/// One packet from a client.
#[derive(Debug)]
pub(crate) enum Incoming {
    Publish {
        msg: Message,
        pkid: u16,
        dup: bool,
        topic_alias: Option<u16>,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<SubRequest>,
        id: Option<usize>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// `true` when an MQTT 5 client asks for its will to be published.
    Disconnect(bool),
    /// A packet a client must not send (CONNECT twice, CONNACK, ...).
    Unexpected(&'static str),
}

/// Why a byte stream is not (yet) a packet.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("incomplete packet")]
    Incomplete,
    #[error("{0}")]
    Malformed(String),
}

/// Reads the protocol level out of a complete or partial CONNECT:
/// `Ok(None)` while more bytes are needed.
pub(crate) fn protocol_level(buf: &[u8]) -> Result<Option<u8>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != 0x10 {
        return Err(DecodeError::Malformed(format!(
            "the first packet is not a CONNECT (first byte 0x{:02x})",
            buf[0]
        )));
    }
    // Remaining length: 1 to 4 bytes.
    let mut i = 1;
    loop {
        let Some(b) = buf.get(i) else { return Ok(None) };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(DecodeError::Malformed("malformed remaining length".into()));
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(i), buf.get(i + 1)) else {
        return Ok(None);
    };
    let name_len = u16::from_be_bytes([hi, lo]) as usize;
    if name_len > 6 {
        return Err(DecodeError::Malformed("not an MQTT CONNECT".into()));
    }
    Ok(buf.get(i + 2 + name_len).copied())
}

/// Decodes the CONNECT at the start of `buf`.
pub(crate) fn decode_connect(proto: Proto, buf: &mut BytesMut) -> Result<Connect, DecodeError> {
    match proto {
        Proto::V4 => match v4::Packet::read(buf, MAX_PACKET).map_err(v4_error)? {
            v4::Packet::Connect(c) => Ok(Connect {
                proto,
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                will: c.last_will.map(|w| Message {
                    topic: w.topic,
                    payload: w.message,
                    qos: w.qos as u8,
                    retain: w.retain,
                    props: None,
                }),
                receive_max: u16::MAX,
                max_packet: MAX_PACKET,
            }),
            _ => Err(DecodeError::Malformed(
                "the first packet is not a CONNECT".into(),
            )),
        },
        Proto::V5 => match v5::Packet::read(buf, Some(MAX_PACKET as u32)).map_err(v5_error)? {
            v5::Packet::Connect(c, will, _login) => {
                let props = c.properties.unwrap_or_default();
                let will = match will {
                    Some(w) => Some(Message {
                        topic: String::from_utf8(w.topic.to_vec()).map_err(|_| {
                            DecodeError::Malformed("the will topic is not UTF-8".into())
                        })?,
                        payload: w.message,
                        qos: qos5_u8(w.qos),
                        retain: w.retain,
                        props: w.properties.map(|p| {
                            Box::new(v5::PublishProperties {
                                payload_format_indicator: p.payload_format_indicator,
                                message_expiry_interval: p.message_expiry_interval,
                                response_topic: p.response_topic,
                                correlation_data: p.correlation_data,
                                user_properties: p.user_properties,
                                content_type: p.content_type,
                                ..Default::default()
                            })
                        }),
                    }),
                    None => None,
                };
                Ok(Connect {
                    proto,
                    client_id: c.client_id,
                    keep_alive: c.keep_alive,
                    will,
                    receive_max: props.receive_maximum.unwrap_or(u16::MAX).max(1),
                    max_packet: props
                        .max_packet_size
                        .map(|m| m as usize)
                        .unwrap_or(MAX_PACKET)
                        .min(MAX_PACKET),
                })
            }
            _ => Err(DecodeError::Malformed(
                "the first packet is not a CONNECT".into(),
            )),
        },
    }
}

fn v4_error(e: rumqttc::mqttbytes::Error) -> DecodeError {
    match e {
        rumqttc::mqttbytes::Error::InsufficientBytes(_) => DecodeError::Incomplete,
        other => DecodeError::Malformed(other.to_string()),
    }
}

fn v5_error(e: rumqttc::v5::mqttbytes::Error) -> DecodeError {
    match e {
        rumqttc::v5::mqttbytes::Error::InsufficientBytes(_) => DecodeError::Incomplete,
        other => DecodeError::Malformed(other.to_string()),
    }
}

fn qos_u8(q: QoS4) -> u8 {
    q as u8
}

fn qos5_u8(q: QoS5) -> u8 {
    q as u8
}

fn qos4_of(q: u8) -> QoS4 {
    match q {
        0 => QoS4::AtMostOnce,
        1 => QoS4::AtLeastOnce,
        _ => QoS4::ExactlyOnce,
    }
}

fn qos5_of(q: u8) -> QoS5 {
    match q {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

/// Decodes the next packet after CONNECT.
pub(crate) fn decode(proto: Proto, buf: &mut BytesMut) -> Result<Incoming, DecodeError> {
    match proto {
        Proto::V4 => Ok(match v4::Packet::read(buf, MAX_PACKET).map_err(v4_error)? {
            v4::Packet::Publish(p) => Incoming::Publish {
                msg: Message {
                    topic: p.topic,
                    payload: p.payload,
                    qos: qos_u8(p.qos),
                    retain: p.retain,
                    props: None,
                },
                pkid: p.pkid,
                dup: p.dup,
                topic_alias: None,
            },
            v4::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
            v4::Packet::PubRec(a) => Incoming::PubRec(a.pkid),
            v4::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
            v4::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
            v4::Packet::Subscribe(s) => Incoming::Subscribe {
                pkid: s.pkid,
                filters: s
                    .filters
                    .into_iter()
                    .map(|f| SubRequest {
                        filter: f.path,
                        qos: qos_u8(f.qos),
                        no_local: false,
                        rap: false,
                        retain_handling: 0,
                    })
                    .collect(),
                id: None,
            },
            v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
                pkid: u.pkid,
                filters: u.topics,
            },
            v4::Packet::PingReq => Incoming::PingReq,
            v4::Packet::Disconnect => Incoming::Disconnect(false),
            v4::Packet::Connect(_) => Incoming::Unexpected("a second CONNECT"),
            _ => Incoming::Unexpected("a packet only a server sends"),
        }),
        Proto::V5 => Ok(
            match v5::Packet::read(buf, Some(MAX_PACKET as u32)).map_err(v5_error)? {
                v5::Packet::Publish(p) => {
                    let topic = String::from_utf8(p.topic.to_vec())
                        .map_err(|_| DecodeError::Malformed("a topic is not UTF-8".into()))?;
                    let mut props = p.properties;
                    let topic_alias = props.as_mut().and_then(|pr| pr.topic_alias.take());
                    if let Some(pr) = props.as_mut() {
                        pr.subscription_identifiers.clear();
                    }
                    Incoming::Publish {
                        msg: Message {
                            topic,
                            payload: p.payload,
                            qos: qos5_u8(p.qos),
                            retain: p.retain,
                            props: props.map(Box::new),
                        },
                        pkid: p.pkid,
                        dup: p.dup,
                        topic_alias,
                    }
                }
                v5::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
                v5::Packet::PubRec(a) => Incoming::PubRec(a.pkid),
                v5::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
                v5::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
                v5::Packet::Subscribe(s) => Incoming::Subscribe {
                    pkid: s.pkid,
                    id: s.properties.and_then(|p| p.id),
                    filters: s
                        .filters
                        .into_iter()
                        .map(|f| SubRequest {
                            filter: f.path,
                            qos: qos5_u8(f.qos),
                            no_local: f.nolocal,
                            rap: f.preserve_retain,
                            retain_handling: match f.retain_forward_rule {
                                v5::RetainForwardRule::OnEverySubscribe => 0,
                                v5::RetainForwardRule::OnNewSubscribe => 1,
                                v5::RetainForwardRule::Never => 2,
                            },
                        })
                        .collect(),
                },
                v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.filters,
                },
                v5::Packet::PingReq(_) => Incoming::PingReq,
                v5::Packet::Disconnect(d) => Incoming::Disconnect(
                    d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
                ),
                v5::Packet::Auth(_) => Incoming::Unexpected("AUTH (no enhanced authentication)"),
                v5::Packet::Connect(..) => Incoming::Unexpected("a second CONNECT"),
                _ => Incoming::Unexpected("a packet only a server sends"),
            },
        ),
    }
}

/// How a SUBSCRIBE entry was answered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SubResult {
    Granted(u8),
    InvalidFilter,
    SharedNotSupported,
}

/// Encodes packets the broker sends, for one connection's protocol.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Encoder {
    pub proto: Proto,
    pub max_packet: usize,
}

impl Encoder {
    fn put4(&self, p: v4::Packet, out: &mut BytesMut) {
        // Only packets built here, all far below the limit: cannot fail.
        let _ = p.write(out, MAX_PACKET);
    }

    fn put5(&self, p: v5::Packet, out: &mut BytesMut) {
        let _ = p.write(out, Some(MAX_PACKET as u32));
    }

    /// CONNACK accepting the connection; `assigned` is a server-chosen client id.
    pub(crate) fn connack(&self, assigned: Option<String>, out: &mut BytesMut) {
        match self.proto {
            Proto::V4 => self.put4(
                v4::Packet::ConnAck(v4::ConnAck {
                    session_present: false,
                    code: v4::ConnectReturnCode::Success,
                }),
                out,
            ),
            Proto::V5 => self.put5(
                v5::Packet::ConnAck(v5::ConnAck {
                    session_present: false,
                    code: v5::ConnectReturnCode::Success,
                    properties: Some(v5::ConnAckProperties {
                        session_expiry_interval: None,
                        receive_max: Some(u16::MAX),
                        max_qos: None,
                        retain_available: Some(1),
                        max_packet_size: Some(MAX_PACKET as u32),
                        assigned_client_identifier: assigned,
                        topic_alias_max: None,
                        reason_string: None,
                        user_properties: Vec::new(),
                        wildcard_subscription_available: Some(1),
                        subscription_identifiers_available: Some(1),
                        shared_subscription_available: Some(0),
                        server_keep_alive: None,
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    }),
                }),
                out,
            ),
        }
    }

    pub(crate) fn puback(&self, pkid: u16, out: &mut BytesMut) {
        match self.proto {
            Proto::V4 => self.put4(v4::Packet::PubAck(v4::PubAck::new(pkid)), out),
            Proto::V5 => self.put5(
                v5::Packet::PubAck(v5::PubAck {
                    pkid,
                    reason: v5::PubAckReason::Success,
                    properties: None,
                }),
                out,
            ),
        }
    }

    pub(crate) fn pubrec(&self, pkid: u16, out: &mut BytesMut) {
        match self.proto {
            Proto::V4 => self.put4(v4::Packet::PubRec(v4::PubRec::new(pkid)), out),
            Proto::V5 => self.put5(v5::Packet::PubRec(v5::PubRec::new(pkid, None)), out),
        }
    }

    pub(crate) fn pubcomp(&self, pkid: u16, out: &mut BytesMut) {
        match self.proto {
            Proto::V4 => self.put4(v4::Packet::PubComp(v4::PubComp::new(pkid)), out),
            Proto::V5 => self.put5(v5::Packet::PubComp(v5::PubComp::new(pkid, None)), out),
        }
    }

    pub(crate) fn pingresp(&self, out: &mut BytesMut) {
        match self.proto {
            Proto::V4 => self.put4(v4::Packet::PingResp, out),
            Proto::V5 => self.put5(v5::Packet::PingResp(v5::PingResp), out),
        }
    }

    pub(crate) fn suback(&self, pkid: u16, results: &[SubResult], out: &mut BytesMut) {
        match self.proto {
            Proto::V4 => {
                let codes = results
                    .iter()
                    .map(|r| match r {
                        SubResult::Granted(q) => v4::SubscribeReasonCode::Success(qos4_of(*q)),
                        _ => v4::SubscribeReasonCode::Failure,
                    })
                    .collect();
                self.put4(v4::Packet::SubAck(v4::SubAck::new(pkid, codes)), out)
            }
            Proto::V5 => {
                let return_codes = results
                    .iter()
                    .map(|r| match r {
                        SubResult::Granted(q) => v5::SubscribeReasonCode::Success(qos5_of(*q)),
                        SubResult::InvalidFilter => v5::SubscribeReasonCode::TopicFilterInvalid,
                        SubResult::SharedNotSupported => {
                            v5::SubscribeReasonCode::SharedSubscriptionsNotSupported
                        }
                    })
                    .collect();
                self.put5(
                    v5::Packet::SubAck(v5::SubAck {
                        pkid,
                        return_codes,
                        properties: None,
                    }),
                    out,
                )
            }
        }
    }

    pub(crate) fn unsuback(&self, pkid: u16, existed: &[bool], out: &mut BytesMut) {
        match self.proto {
            Proto::V4 => self.put4(v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)), out),
            Proto::V5 => self.put5(
                v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: existed
                        .iter()
                        .map(|e| {
                            if *e {
                                v5::UnsubAckReason::Success
                            } else {
                                v5::UnsubAckReason::NoSubscriptionExisted
                            }
                        })
                        .collect(),
                    properties: None,
                }),
                out,
            ),
        }
    }

    /// A PUBLISH to this client; `false` when it exceeds the client's
    /// Maximum Packet Size (MQTT 5 then requires the server to drop it).
    pub(crate) fn publish(
        &self,
        msg: &Message,
        qos: u8,
        retain: bool,
        pkid: u16,
        sub_ids: &[usize],
        out: &mut BytesMut,
    ) -> bool {
        let before = out.len();
        let ok = match self.proto {
            Proto::V4 => {
                let p = v4::Publish {
                    dup: false,
                    qos: qos4_of(qos),
                    retain,
                    topic: msg.topic.clone(),
                    pkid,
                    payload: msg.payload.clone(),
                };
                v4::Packet::Publish(p).write(out, self.max_packet).is_ok()
            }
            Proto::V5 => {
                let mut props = msg.props.as_deref().cloned();
                if !sub_ids.is_empty() {
                    props
                        .get_or_insert_with(Default::default)
                        .subscription_identifiers = sub_ids.to_vec();
                }
                let p = v5::Publish {
                    dup: false,
                    qos: qos5_of(qos),
                    retain,
                    topic: Bytes::copy_from_slice(msg.topic.as_bytes()),
                    pkid,
                    payload: msg.payload.clone(),
                    properties: props,
                };
                v5::Packet::Publish(p)
                    .write(out, Some(self.max_packet as u32))
                    .is_ok()
            }
        };
        if !ok {
            out.truncate(before);
        }
        ok
    }

    /// The answer to a CONNECT with a protocol level the broker does not
    /// speak (MQTT 3.1.1's "unacceptable protocol version").
    pub(crate) fn refuse_protocol(out: &mut BytesMut) {
        let _ = v4::Packet::ConnAck(v4::ConnAck {
            session_present: false,
            code: v4::ConnectReturnCode::RefusedProtocolVersion,
        })
        .write(out, MAX_PACKET);
    }
}
