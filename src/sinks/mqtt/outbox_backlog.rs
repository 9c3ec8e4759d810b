//! The outbox's side of store-and-forward ([`super::super::backlog`]):
//! which tag changes go to the buffer (arriving while disconnected,
//! superseded before their acknowledgement, lost in flight), and handing
//! backfill entries to rumqttc only when no live message waits.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::super::backlog::Backlog;
use super::super::link::{Message, Publisher, Qos};
use super::{Key, Kind, Outbox, Sent};

impl<P: Publisher> Outbox<P> {
    /// Buffers undeliverable tag changes in `backlog` and replays them.
    pub(crate) fn set_backlog(&mut self, backlog: Backlog) {
        self.backlog = Some(backlog);
    }

    pub(crate) fn backlog_mut(&mut self) -> Option<&mut Backlog> {
        self.backlog.as_mut()
    }

    /// Sets a tag's newest value (like [`set`](Self::set)) together with
    /// its buffer record: while disconnected the change is buffered at
    /// once; an unacknowledged older value it supersedes is buffered now
    /// (never handed over) or when the connection drops (in flight).
    /// Call [`flush_backlog`](Self::flush_backlog) after a batch.
    pub(crate) fn set_change(
        &mut self,
        topic: Arc<str>,
        payload: Bytes,
        qos: Qos,
        retain: bool,
        received_at: Option<Instant>,
        record: Option<Bytes>,
    ) {
        let (Some(b), Some(record)) = (self.backlog.as_mut(), record) else {
            self.set(Kind::Tag, topic, payload, qos, retain, received_at);
            return;
        };
        if let Some(s) = self.topics.get_mut(&topic) {
            if !s.confirmed() && s.logged < s.version {
                if let Some(r) = s.record.take() {
                    if s.queued {
                        b.spill(r);
                        s.logged = s.version;
                    } else {
                        s.flying.push((s.version, r));
                    }
                }
            }
        }
        self.set(Kind::Tag, topic.clone(), payload, qos, retain, received_at);
        if let Some(s) = self.topics.get_mut(&topic) {
            if !self.connected {
                if let Some(b) = self.backlog.as_mut() {
                    b.spill(record.clone());
                }
                s.logged = s.version;
            }
            s.record = Some(record);
        }
    }

    /// Writes what was queued for the buffer (one write per batch).
    pub(crate) fn flush_backlog(&mut self) {
        if let Some(b) = self.backlog.as_mut() {
            b.flush();
        }
    }

    /// Buffers every tag value not acknowledged and not yet buffered, in
    /// the order they were set (connection lost, or shutting down).
    pub(crate) fn spill_unconfirmed(&mut self) {
        let Some(b) = self.backlog.as_mut() else {
            return;
        };
        let mut lost: Vec<(u64, Bytes)> = Vec::new();
        for s in self.topics.values_mut() {
            lost.append(&mut s.flying);
            if !s.confirmed() && s.logged < s.version {
                if let Some(r) = &s.record {
                    lost.push((s.version, r.clone()));
                    s.logged = s.version;
                }
            }
        }
        lost.sort_unstable_by_key(|(v, _)| *v);
        for (_, r) in lost {
            b.spill(r);
        }
        b.flush();
    }

    /// Paces and loads the replay, then hands over what may go.
    pub(crate) fn backlog_tick(&mut self) {
        if let Some(b) = self.backlog.as_mut() {
            b.tick(Instant::now());
        }
        self.pump();
    }

    /// Hands over one backfill entry, if the pace allows: only when nothing
    /// live waits, so a live value waits behind at most this one publish.
    pub(super) fn pump_backfill(&mut self) {
        let Some(b) = self.backlog.as_mut() else {
            return;
        };
        while let Some(out) = b.next() {
            let msg = Message {
                kind: Kind::Backfill,
                topic: &out.topic,
                qos: Qos::AtLeastOnce,
                retain: false,
                payload: &out.payload,
                correlation: None,
            };
            let max = self
                .broker_max_packet
                .map_or(self.max_packet, |m| m.min(self.max_packet));
            if self.publisher.packet_size(&msg) > max
                || !crate::topic::is_valid_publish_topic(&out.topic)
            {
                tracing::error!(topic = %out.topic, "buffered change dropped: larger than max_packet_size or invalid topic");
                metrics::counter!("wincc_gateway_mqtt_dropped_total", "kind" => "backfill", "reason" => "invalid")
                    .increment(1);
                b.acked(out.id);
                continue;
            }
            if self.publisher.try_publish(&msg) {
                self.handed.push_back(Sent {
                    key: Key::Backfill(out.id),
                    version: 0,
                    kind: Kind::Backfill,
                    received_at: None,
                });
            } else {
                b.unsend(out.id);
            }
            return;
        }
    }
}
