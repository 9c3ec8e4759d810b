//! The MQTT outbox: the gateway's own record of what the broker must end up
//! with, and of what it has confirmed.
//!
//! rumqttc drops in-flight and queued publishes when the broker comes back
//! without a session (DEPENDENCIES.md §3), so it is not trusted with state.
//! Every state topic (tags, status, station, active alarms) keeps only its
//! newest payload here, so memory is bounded by the number of topics. A
//! message counts as delivered only once the broker acknowledged it (QoS 1:
//! PUBACK, QoS 2: PUBCOMP) or, for QoS 0, once it was written to a
//! connection that was still up. After every CONNACK everything not
//! confirmed is handed to rumqttc again, newest payload only, so no topic
//! ever goes back to an older value.
//!
//! Non-state messages (alarm events, write results) are kept in a bounded
//! FIFO until confirmed and resent in order after a reconnect.
//!
//! Delivery is matched by packet id: rumqttc reports
//! `Outgoing::Publish(pkid)` for each publish it takes from its request
//! channel, in channel order, so the outbox keeps the messages it handed
//! over in the same order and pairs them up. The outbox knows no protocol:
//! MQTT 3.1.1 and 5 are the same to it ([`super::link`]).
//!
//! With `[mqtt.buffer]` ([`super::backlog`]) no tag change is forgotten
//! unacknowledged: a change that arrives while the broker is away is
//! written to the buffer at once, and one that is superseded before its
//! acknowledgement (coalesced while queued, or in flight when the
//! connection drops) is written then. Backfill publishes go out only when
//! no live message waits, one at a time, so live values keep priority.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::backlog::Backlog;
use super::link::{Message, Publisher, Qos};

#[path = "outbox_backlog.rs"]
mod with_backlog;

/// Non-state messages kept while the broker is away; older ones are dropped.
pub(crate) const STREAM_CAPACITY: usize = 10_000;

/// What a message is, for metrics and for clean-up rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tag,
    Status,
    Station,
    AlarmActive,
    AlarmEvent,
    WriteResult,
    /// A buffered change replayed on `backfill/`.
    Backfill,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Tag,
        Kind::Status,
        Kind::Station,
        Kind::AlarmActive,
        Kind::AlarmEvent,
        Kind::WriteResult,
        Kind::Backfill,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Tag => "tag",
            Kind::Status => "status",
            Kind::Station => "station",
            Kind::AlarmActive => "alarm_active",
            Kind::AlarmEvent => "alarm_event",
            Kind::WriteResult => "write_result",
            Kind::Backfill => "backfill",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Topic(Arc<str>),
    Stream(u64),
    /// A backfill entry, by its [`Backlog`] id.
    Backfill(u64),
}

#[derive(Debug)]
struct Slot {
    kind: Kind,
    topic: Arc<str>,
    qos: Qos,
    retain: bool,
    payload: Bytes,
    /// MQTT 5 correlation data (replies to a command's response topic).
    correlation: Option<Bytes>,
    /// Version of `payload` (global counter, so it only grows).
    version: u64,
    /// Newest version the broker confirmed (0: none).
    delivered: u64,
    /// In the dirty queue.
    queued: bool,
    received_at: Option<Instant>,
    /// The buffer record of `payload` (tag changes, with a buffer only).
    record: Option<Bytes>,
    /// Newest version written to the buffer (0: none).
    logged: u64,
    /// Superseded versions handed over but not yet acknowledged, with
    /// their records: buffered if the connection drops before the ack.
    flying: Vec<(u64, Bytes)>,
}

impl Slot {
    fn confirmed(&self) -> bool {
        self.delivered >= self.version
    }
}

/// A message handed to rumqttc on the current connection.
#[derive(Debug, Clone)]
struct Sent {
    key: Key,
    version: u64,
    kind: Kind,
    received_at: Option<Instant>,
}

/// The per-message metrics, registered once: looking a labelled metric up
/// in the recorder per published message (building its key, hashing it)
/// cost more than the message's own bookkeeping.
struct Meters {
    /// `wincc_gateway_mqtt_publishes_total{kind}`, in [`Kind::ALL`] order.
    publishes: [metrics::Counter; 7],
    latency: metrics::Histogram,
    pending: metrics::Gauge,
}

impl Meters {
    fn new() -> Self {
        Meters {
            publishes: Kind::ALL.map(
                |k| metrics::counter!("wincc_gateway_mqtt_publishes_total", "kind" => k.label()),
            ),
            latency: metrics::histogram!("wincc_gateway_publish_latency_seconds", "sink" => "mqtt"),
            pending: metrics::gauge!("wincc_gateway_mqtt_pending"),
        }
    }
}

/// The outbox; lives behind a mutex shared by the sink and its event loop.
pub(crate) struct Outbox<P> {
    publisher: P,
    connected: bool,
    max_packet: usize,
    /// The broker's own limit, from its CONNACK (MQTT 5).
    broker_max_packet: Option<usize>,
    stream_capacity: usize,
    topics: HashMap<Arc<str>, Slot>,
    streams: BTreeMap<u64, Slot>,
    next_version: u64,
    dirty: VecDeque<Key>,
    /// Handed to rumqttc, no `Outgoing::Publish` seen yet (channel order).
    handed: VecDeque<Sent>,
    /// Written with QoS > 0, waiting for the broker's acknowledgement.
    inflight: HashMap<u16, Sent>,
    /// A publish rumqttc parked because its packet id was still in use.
    collided: Option<(u16, Sent)>,
    unconfirmed: usize,
    /// `[mqtt.buffer]`, when enabled.
    backlog: Option<Backlog>,
    meters: Meters,
}

impl<P: Publisher> Outbox<P> {
    pub(crate) fn new(publisher: P, max_packet: usize) -> Self {
        Outbox {
            publisher,
            connected: false,
            max_packet,
            broker_max_packet: None,
            stream_capacity: STREAM_CAPACITY,
            topics: HashMap::new(),
            streams: BTreeMap::new(),
            next_version: 1,
            dirty: VecDeque::new(),
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            collided: None,
            unconfirmed: 0,
            backlog: None,
            meters: Meters::new(),
        }
    }

    /// Sets the `wincc_gateway_mqtt_pending` gauge to [`unconfirmed`](Self::unconfirmed).
    pub(crate) fn update_pending_gauge(&self) {
        self.meters.pending.set(self.unconfirmed as f64);
    }

    /// Messages not yet confirmed by the broker (the `pending` gauge).
    pub(crate) fn unconfirmed(&self) -> usize {
        self.unconfirmed
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected
    }

    /// True once the newest payload of `topic` was confirmed (or the topic is unknown).
    pub(crate) fn is_confirmed(&self, topic: &str) -> bool {
        self.topics.get(topic).is_none_or(Slot::confirmed)
    }

    fn bump(&mut self) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        v
    }

    /// Sets the newest payload of a state topic; older unsent payloads of the
    /// same topic are superseded.
    pub(crate) fn set(
        &mut self,
        kind: Kind,
        topic: Arc<str>,
        payload: Bytes,
        qos: Qos,
        retain: bool,
        received_at: Option<Instant>,
    ) {
        let version = self.bump();
        let slot = self.topics.entry(topic.clone()).or_insert_with(|| Slot {
            kind,
            topic: topic.clone(),
            qos,
            retain,
            payload: Bytes::new(),
            correlation: None,
            version: 0,
            delivered: 0,
            queued: false,
            received_at: None,
            record: None,
            logged: 0,
            flying: Vec::new(),
        });
        if slot.confirmed() {
            self.unconfirmed += 1;
        }
        slot.kind = kind;
        slot.qos = qos;
        slot.retain = retain;
        slot.payload = payload;
        slot.version = version;
        slot.received_at = received_at;
        if !slot.queued {
            slot.queued = true;
            self.dirty.push_back(Key::Topic(topic));
        }
    }

    /// Queues a non-state message (kept in order until confirmed).
    pub(crate) fn push_stream(
        &mut self,
        kind: Kind,
        topic: Arc<str>,
        payload: Bytes,
        qos: Qos,
        correlation: Option<Bytes>,
    ) {
        let version = self.bump();
        if self.streams.len() >= self.stream_capacity {
            if let Some((_, old)) = self.streams.pop_first() {
                self.unconfirmed -= 1;
                metrics::counter!("wincc_gateway_mqtt_dropped_total", "kind" => old.kind.label(), "reason" => "queue_full")
                    .increment(1);
            }
        }
        self.streams.insert(
            version,
            Slot {
                kind,
                topic,
                qos,
                retain: false,
                payload,
                correlation,
                version,
                delivered: 0,
                queued: true,
                received_at: None,
                record: None,
                logged: 0,
                flying: Vec::new(),
            },
        );
        self.unconfirmed += 1;
        self.dirty.push_back(Key::Stream(version));
    }

    /// Forgets confirmed tag topics that `keep` rejects (tags gone from the station).
    pub(crate) fn prune_tags(&mut self, keep: impl Fn(&str) -> bool) {
        self.topics
            .retain(|t, s| s.kind != Kind::Tag || !s.confirmed() || keep(t));
    }

    /// Hands queued messages to rumqttc until its channel is full. Does
    /// nothing while disconnected.
    pub(crate) fn pump(&mut self) {
        if !self.connected {
            return;
        }
        while let Some(key) = self.dirty.front().cloned() {
            let slot = match &key {
                Key::Topic(t) => self.topics.get_mut(t),
                Key::Stream(v) => self.streams.get_mut(v),
                Key::Backfill(_) => None,
            };
            let Some(slot) = slot.filter(|s| s.queued) else {
                self.dirty.pop_front();
                continue;
            };
            let sent = Sent {
                key,
                version: slot.version,
                kind: slot.kind,
                received_at: slot.received_at,
            };
            let msg = Message {
                kind: slot.kind,
                topic: &slot.topic,
                qos: slot.qos,
                retain: slot.retain,
                payload: &slot.payload,
                correlation: slot.correlation.as_ref(),
            };
            let size = self.publisher.packet_size(&msg);
            let max = self
                .broker_max_packet
                .map_or(self.max_packet, |b| b.min(self.max_packet));
            if size > max || !crate::topic::is_valid_publish_topic(&slot.topic) {
                tracing::error!(
                    topic = %slot.topic,
                    size,
                    max_packet_size = max,
                    "MQTT message dropped: larger than max_packet_size or invalid topic"
                );
                metrics::counter!("wincc_gateway_mqtt_dropped_total", "kind" => slot.kind.label(), "reason" => "invalid")
                    .increment(1);
                slot.queued = false;
                self.dirty.pop_front();
                self.confirm(sent, false);
                continue;
            }
            if !self.publisher.try_publish(&msg) {
                break;
            }
            slot.queued = false;
            self.dirty.pop_front();
            self.handed.push_back(sent);
        }
        if self.dirty.is_empty() && self.handed.is_empty() && self.collided.is_none() {
            self.pump_backfill();
        }
    }

    /// rumqttc wrote a publish (`Outgoing::Publish(pkid)`; 0 for QoS 0).
    pub(crate) fn on_outgoing_publish(&mut self, pkid: u16) {
        let sent = match self.collided.take() {
            Some((p, sent)) if p == pkid => sent,
            other => {
                self.collided = other;
                match self.handed.pop_front() {
                    Some(s) => s,
                    None => {
                        tracing::warn!(pkid, "MQTT publish event with no matching message");
                        return;
                    }
                }
            }
        };
        if pkid == 0 {
            self.confirm(sent, true);
        } else {
            self.inflight.insert(pkid, sent);
        }
    }

    /// rumqttc parked a publish until packet id `pkid` is acknowledged.
    pub(crate) fn on_await_ack(&mut self, pkid: u16) {
        if let Some(sent) = self.handed.pop_front() {
            self.collided = Some((pkid, sent));
        }
    }

    /// The broker acknowledged `pkid` (PUBACK for QoS 1, PUBCOMP for QoS 2).
    pub(crate) fn on_ack(&mut self, pkid: u16) {
        if let Some(sent) = self.inflight.remove(&pkid) {
            self.confirm(sent, true);
        }
    }

    /// The broker refused `pkid` with an MQTT 5 reason code. Sending it again
    /// would be refused again, so it is dropped (a newer value still goes out).
    pub(crate) fn on_refused(&mut self, pkid: u16, reason: &str) {
        if let Some(sent) = self.inflight.remove(&pkid) {
            tracing::warn!(
                pkid,
                reason,
                kind = sent.kind.label(),
                "the MQTT broker refused a message"
            );
            metrics::counter!("wincc_gateway_mqtt_dropped_total", "kind" => sent.kind.label(), "reason" => "refused")
                .increment(1);
            self.confirm(sent, false);
        }
    }

    /// The broker's maximum packet size from its CONNACK (MQTT 5), if any;
    /// larger messages are dropped like those above `max_packet_size`.
    pub(crate) fn set_broker_max_packet(&mut self, max: Option<u32>) {
        self.broker_max_packet = max.map(|m| m as usize);
    }

    fn confirm(&mut self, sent: Sent, delivered: bool) {
        if delivered {
            // `Kind::ALL` lists the kinds in declaration order.
            self.meters.publishes[sent.kind as usize].increment(1);
            if let Some(at) = sent.received_at {
                self.meters.latency.record(at.elapsed().as_secs_f64());
            }
        }
        match &sent.key {
            Key::Backfill(id) => {
                if let Some(b) = self.backlog.as_mut() {
                    b.acked(*id);
                }
            }
            Key::Stream(v) => {
                if self.streams.remove(v).is_some() {
                    self.unconfirmed -= 1;
                }
            }
            Key::Topic(t) => {
                let Some(slot) = self.topics.get_mut(t) else {
                    return;
                };
                if sent.version <= slot.delivered {
                    return;
                }
                slot.delivered = sent.version;
                slot.flying.retain(|(v, _)| *v > sent.version);
                if slot.confirmed() {
                    self.unconfirmed -= 1;
                    // Only a retained payload is ever sent again (after a
                    // reconnect without a session); the buffer record of a
                    // confirmed value is never needed. 100 000 tags kept
                    // ~100 bytes each of both for nothing.
                    slot.record = None;
                    if !slot.retain && slot.kind == Kind::Tag {
                        slot.payload = Bytes::new();
                    }
                    // A cleared alarm's empty retained message, once delivered,
                    // needs no memory: the broker dropped the retained alarm.
                    // A dropped payload (too large, refused) is forgotten too,
                    // so a reconnect does not try it again.
                    if !delivered || (slot.kind == Kind::AlarmActive && slot.payload.is_empty()) {
                        self.topics.remove(t);
                    }
                }
            }
        }
    }

    /// A new connection is up: queue every unconfirmed message again, the
    /// status topic (already set by the caller) first, then state topics,
    /// then non-state messages in order.
    ///
    /// Without a session (`session_present` false) the broker may also have
    /// lost its retained messages (a restart without persistence), so every
    /// retained topic counts as unconfirmed again and its newest payload is
    /// republished: a subscriber that arrives later still finds every tag's
    /// newest value (much like a Sparkplug rebirth). Never an older one.
    pub(crate) fn on_connected(&mut self, status_topic: &str, session_present: bool) {
        self.connected = true;
        if let Some(b) = self.backlog.as_mut() {
            b.on_disconnected();
        }
        self.handed.clear();
        self.inflight.clear();
        self.collided = None;
        self.dirty.clear();
        if !session_present {
            for s in self.topics.values_mut() {
                if s.retain && s.confirmed() {
                    s.delivered = 0;
                    self.unconfirmed += 1;
                }
            }
        }
        if let Some(s) = self.topics.get_mut(status_topic) {
            s.queued = !s.confirmed();
            if s.queued {
                self.dirty.push_back(Key::Topic(s.topic.clone()));
            }
        }
        for (t, s) in self.topics.iter_mut() {
            if &**t == status_topic {
                continue;
            }
            s.queued = !s.confirmed();
            if s.queued {
                self.dirty.push_back(Key::Topic(t.clone()));
            }
        }
        for (v, s) in self.streams.iter_mut() {
            s.queued = true;
            self.dirty.push_back(Key::Stream(*v));
        }
    }

    /// The connection is gone: nothing handed over on it counts any more.
    pub(crate) fn on_disconnected(&mut self) {
        self.connected = false;
        self.handed.clear();
        self.inflight.clear();
        self.collided = None;
        self.spill_unconfirmed();
        if let Some(b) = self.backlog.as_mut() {
            b.on_disconnected();
        }
    }
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
