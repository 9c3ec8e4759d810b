//! The edge node's Sparkplug state machine, free of I/O: it takes what
//! happens (a new MQTT session, the primary host's STATE, an NCMD, the
//! station's tags, values and state) and answers with the messages to
//! publish, so every rule of contract §10 is checked here without a broker.
//!
//! - NBIRTH (seq 0, `bdSeq`, `Node Control/Rebirth`) once per session, when
//!   the primary host (if configured) is online; the NDEATH will of the
//!   session carries the same `bdSeq` ([`Node::ndeath`]).
//! - `seq` counts 0..=255 over every message after the NBIRTH and wraps.
//! - DBIRTH lists every polled tag (sorted by name; alias = position + 1, so
//!   the same tag set always gets the same aliases, across restarts too);
//!   it waits until every tag was read since the station (re)connected, or
//!   [`BIRTH_SETTLE`] passed, so a host starts with current values rather
//!   than nulls or values from before an outage.
//! - DDATA: one message per change batch, by alias, only the changed tags.
//!   `Quality` is sent when it is not good or was not good before; a bad
//!   reading keeps the last value (or `is_null` when there never was one).
//! - Station down: DDEATH; back: a fresh DBIRTH. A different tag set: a
//!   fresh DBIRTH at once (new tags `is_null` until their first value).
//! - NCMD `Node Control/Rebirth`: NBIRTH + DBIRTH with the same `bdSeq`, at
//!   most once per [`REBIRTH_MIN_GAP`] (more requests within it coalesce).
//! - STATE offline from the primary host: NDEATH and disconnect
//!   ([`Out::GoOffline`]); older STATE messages (by timestamp) are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use super::convert::{datatype, metric_value, millis, quality_property};
use super::proto::{DataType, Metric, Payload, Value};
use crate::model::{ChangeBatch, Quality, TagChange, TagInfo, TagType};

/// The longest a DBIRTH waits for tags that have no value yet.
pub(crate) const BIRTH_SETTLE: Duration = Duration::from_secs(2);
/// Rebirth requests closer together than this are answered once.
pub(crate) const REBIRTH_MIN_GAP: Duration = Duration::from_secs(1);

pub(crate) const BDSEQ: &str = "bdSeq";
pub(crate) const REBIRTH: &str = "Node Control/Rebirth";

/// The edge node's topics (contract §10).
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub nbirth: Arc<str>,
    pub ndeath: Arc<str>,
    pub ncmd: Arc<str>,
    pub dbirth: Arc<str>,
    pub ddeath: Arc<str>,
    pub ddata: Arc<str>,
    pub dcmd: Arc<str>,
    /// `spBv1.0/STATE/{primary_host_id}` when a primary host is configured.
    pub state: Option<Arc<str>>,
}

impl Topics {
    pub(crate) fn new(group: &str, node: &str, device: &str, primary_host: &str) -> Topics {
        let n = |kind: &str| Arc::from(format!("spBv1.0/{group}/{kind}/{node}"));
        let d = |kind: &str| Arc::from(format!("spBv1.0/{group}/{kind}/{node}/{device}"));
        Topics {
            nbirth: n("NBIRTH"),
            ndeath: n("NDEATH"),
            ncmd: n("NCMD"),
            dbirth: d("DBIRTH"),
            ddeath: d("DDEATH"),
            ddata: d("DDATA"),
            dcmd: d("DCMD"),
            state: (!primary_host.is_empty())
                .then(|| Arc::from(format!("spBv1.0/STATE/{primary_host}"))),
        }
    }
}

/// What the node asks the connection to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Out {
    /// Publish with QoS 0, not retained (Sparkplug's rule for births and data).
    Publish { topic: Arc<str>, payload: Vec<u8> },
    /// Publish this NDEATH (QoS 1), then DISCONNECT and start a new session.
    GoOffline { ndeath: Vec<u8> },
}

/// The last known state of one tag.
#[derive(Debug, Clone)]
struct Slot {
    name: Arc<str>,
    ty: TagType,
    value: Option<Value>,
    quality: Quality,
    /// Source timestamp, ms; `None` until the first reading.
    timestamp: Option<u64>,
    /// The quality the host last learned (DBIRTH or DDATA).
    sent_quality: Quality,
    /// Read since the station (re)connected: a DBIRTH waits for this.
    fresh: bool,
}

pub(crate) struct Node {
    topics: Topics,
    primary_host: bool,
    connected: bool,
    bdseq: u8,
    seq: u8,
    node_born: bool,
    device_born: bool,
    host_online: bool,
    host_state_ts: Option<u64>,
    station_up: bool,
    /// Sorted by name; alias = index + 1.
    slots: Vec<Slot>,
    index: HashMap<Arc<str>, usize>,
    dbirth_due: Option<Instant>,
    last_rebirth: Option<Instant>,
    rebirth_pending: bool,
}

fn now_ms() -> u64 {
    millis(&chrono::Utc::now())
}

impl Node {
    pub(crate) fn new(topics: Topics) -> Node {
        Node {
            primary_host: topics.state.is_some(),
            topics,
            connected: false,
            bdseq: 0,
            seq: 0,
            node_born: false,
            device_born: false,
            host_online: false,
            host_state_ts: None,
            station_up: false,
            slots: Vec::new(),
            index: HashMap::new(),
            dbirth_due: None,
            last_rebirth: None,
            rebirth_pending: false,
        }
    }

    pub(crate) fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The `bdSeq` of the current (or last) session.
    pub(crate) fn bdseq(&self) -> u8 {
        self.bdseq
    }

    /// The NDEATH of `bdseq`: the session's will, and what is published on
    /// a clean shutdown or when the primary host goes offline.
    pub(crate) fn ndeath(bdseq: u8) -> Vec<u8> {
        Payload {
            timestamp: Some(now_ms()),
            metrics: vec![bdseq_metric(bdseq)],
            ..Payload::default()
        }
        .encode_to_vec()
    }

    /// A new MQTT session (CONNACK) whose will carries `bdseq`.
    pub(crate) fn session_up(&mut self, bdseq: u8, now: Instant) -> Vec<Out> {
        self.connected = true;
        self.bdseq = bdseq;
        self.node_born = false;
        self.device_born = false;
        self.host_online = !self.primary_host;
        self.births(now)
    }

    pub(crate) fn session_down(&mut self) {
        self.connected = false;
        self.node_born = false;
        self.device_born = false;
        self.rebirth_pending = false;
    }

    /// A message on the primary host's STATE topic (Sparkplug 3.0 JSON
    /// `{"online": bool, "timestamp": ms}`).
    pub(crate) fn on_state(&mut self, payload: &[u8], now: Instant) -> Vec<Out> {
        #[derive(serde::Deserialize)]
        struct State {
            online: bool,
            timestamp: u64,
        }
        let state: State = match serde_json::from_slice(payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    payload = %String::from_utf8_lossy(&payload[..payload.len().min(80)]),
                    "ignoring a STATE message that is not Sparkplug 3.0 JSON {{\"online\":bool,\"timestamp\":ms}}"
                );
                return Vec::new();
            }
        };
        if self.host_state_ts.is_some_and(|t| state.timestamp < t) {
            tracing::debug!(
                timestamp = state.timestamp,
                "ignoring a STATE message older than the last one"
            );
            return Vec::new();
        }
        self.host_state_ts = Some(state.timestamp);
        self.host_online = state.online;
        if state.online {
            tracing::info!("the primary host is online");
            return self.births(now);
        }
        tracing::info!("the primary host is offline");
        if !self.node_born {
            return Vec::new();
        }
        self.node_born = false;
        self.device_born = false;
        vec![Out::GoOffline {
            ndeath: Node::ndeath(self.bdseq),
        }]
    }

    /// An NCMD. Only `Node Control/Rebirth` = true does something.
    pub(crate) fn on_ncmd(&mut self, payload: &[u8], now: Instant) -> Vec<Out> {
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an NCMD that is not a Sparkplug B payload");
                return Vec::new();
            }
        };
        let rebirth = p
            .metrics
            .iter()
            .any(|m| m.name.as_deref() == Some(REBIRTH) && m.value == Some(Value::Boolean(true)));
        for m in &p.metrics {
            if m.name.as_deref() != Some(REBIRTH) {
                tracing::warn!(metric = ?m.name, "ignoring an NCMD metric this edge node does not have");
            }
        }
        if !rebirth || !self.node_born {
            return Vec::new();
        }
        match self.last_rebirth {
            Some(t) if now.duration_since(t) < REBIRTH_MIN_GAP => {
                self.rebirth_pending = true;
                Vec::new()
            }
            _ => self.rebirth(now),
        }
    }

    fn rebirth(&mut self, now: Instant) -> Vec<Out> {
        tracing::info!("rebirth requested: NBIRTH and DBIRTH again");
        self.rebirth_pending = false;
        self.last_rebirth = Some(now);
        self.node_born = false;
        self.device_born = false;
        let mut out = self.births(now);
        if self.node_born && !self.device_born && self.wants_device() {
            out.extend(self.dbirth());
        }
        out
    }

    /// The station's polled tags (at start and after each re-discovery).
    pub(crate) fn on_tags(&mut self, tags: &[TagInfo], now: Instant) -> Vec<Out> {
        let mut sorted: Vec<(&str, TagType)> =
            tags.iter().map(|t| (t.name.as_str(), t.ty)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        let same = sorted.len() == self.slots.len()
            && sorted
                .iter()
                .zip(&self.slots)
                .all(|((n, t), s)| *n == &*s.name && *t == s.ty);
        if same {
            return Vec::new();
        }
        let mut old: HashMap<Arc<str>, Slot> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        self.slots = sorted
            .into_iter()
            .map(|(n, ty)| match old.remove(n) {
                Some(s) if s.ty == ty => s,
                _ => Slot {
                    name: Arc::from(n),
                    ty,
                    value: None,
                    quality: Quality::Bad,
                    timestamp: None,
                    sent_quality: Quality::Bad,
                    fresh: false,
                },
            })
            .collect();
        self.index = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        tracing::info!(tags = self.slots.len(), "Sparkplug device tag set changed");
        if self.device_born {
            // The old aliases are void: a fresh DBIRTH at once.
            self.device_born = false;
            return self.dbirth();
        }
        self.schedule_dbirth(now);
        self.tick(now)
    }

    /// The station's connection state.
    pub(crate) fn on_station(&mut self, up: bool, now: Instant) -> Vec<Out> {
        self.station_up = up;
        if !up {
            self.dbirth_due = None;
            if self.device_born {
                self.device_born = false;
                let p = Payload {
                    timestamp: Some(now_ms()),
                    seq: Some(self.next_seq()),
                    ..Payload::default()
                };
                return vec![self.publish(self.topics.ddeath.clone(), &p)];
            }
            return Vec::new();
        }
        // What is known dates from before the outage: wait for fresh values.
        for s in &mut self.slots {
            s.fresh = false;
        }
        self.schedule_dbirth(now);
        self.tick(now)
    }

    /// One poll cycle's changes: remembered, and one DDATA while the device
    /// is born.
    pub(crate) fn on_changes(&mut self, batch: &ChangeBatch, now: Instant) -> Vec<Out> {
        let mut metrics = Vec::new();
        for c in &batch.changes {
            let Some(&i) = self.index.get(&c.name) else {
                continue;
            };
            let slot = &mut self.slots[i];
            apply(slot, c);
            if self.device_born {
                let mut m = data_metric(i, slot);
                if slot.quality != Quality::Good || slot.sent_quality != Quality::Good {
                    m.properties = Some(quality_property(slot.quality));
                }
                slot.sent_quality = slot.quality;
                metrics.push(m);
            }
        }
        if !self.device_born {
            return self.tick(now);
        }
        if metrics.is_empty() {
            return Vec::new();
        }
        let p = Payload {
            timestamp: Some(now_ms()),
            metrics,
            seq: Some(self.next_seq()),
            ..Payload::default()
        };
        vec![self.publish(self.topics.ddata.clone(), &p)]
    }

    /// Changes replayed from the store-and-forward buffer ([`super::history`]),
    /// oldest first: one DDATA with `is_historical` (hosts store them but
    /// keep the live value), sent only while the device is born. The live
    /// slots are not touched. A change whose tag is no longer in the DBIRTH,
    /// or has another type there now, is left out; the second value says how
    /// many were.
    pub(crate) fn historical(&mut self, changes: &[TagChange]) -> (Vec<Out>, usize) {
        if !self.device_born {
            return (Vec::new(), 0);
        }
        let metrics: Vec<Metric> = changes
            .iter()
            .filter_map(|c| {
                let i = *self.index.get(&c.name)?;
                let mut slot = self.slots[i].clone();
                if slot.ty != c.ty {
                    return None;
                }
                slot.value = None;
                apply(&mut slot, c);
                let mut m = data_metric(i, &slot);
                m.is_historical = Some(true);
                m.properties = Some(quality_property(slot.quality));
                Some(m)
            })
            .collect();
        let skipped = changes.len() - metrics.len();
        if metrics.is_empty() {
            return (Vec::new(), skipped);
        }
        let p = Payload {
            timestamp: Some(now_ms()),
            metrics,
            seq: Some(self.next_seq()),
            ..Payload::default()
        };
        (vec![self.publish(self.topics.ddata.clone(), &p)], skipped)
    }

    /// The session is up and the device born: DDATA reaches the host live.
    pub(crate) fn is_live(&self) -> bool {
        self.connected && self.device_born
    }

    /// Timed work: a DBIRTH whose settle time passed, a coalesced rebirth.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Out> {
        if self.rebirth_pending
            && self
                .last_rebirth
                .is_none_or(|t| now.duration_since(t) >= REBIRTH_MIN_GAP)
        {
            return self.rebirth(now);
        }
        if self.node_born && !self.device_born && self.wants_device() {
            if let Some(due) = self.dbirth_due {
                if now >= due || self.slots.iter().all(|s| s.fresh) {
                    return self.dbirth();
                }
            }
        }
        Vec::new()
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let rebirth = self
            .rebirth_pending
            .then(|| self.last_rebirth.map(|t| t + REBIRTH_MIN_GAP))
            .flatten();
        let dbirth = (self.node_born && !self.device_born)
            .then_some(self.dbirth_due)
            .flatten();
        match (rebirth, dbirth) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The tag a DCMD metric addresses: by name, or by the alias of the
    /// current DBIRTH.
    pub(crate) fn command_target(&self, m: &Metric) -> Result<String, String> {
        if let Some(name) = m.name.as_deref().filter(|n| !n.is_empty()) {
            return Ok(name.to_string());
        }
        let Some(alias) = m.alias else {
            return Err("the metric has neither a name nor an alias".into());
        };
        usize::try_from(alias)
            .ok()
            .and_then(|a| a.checked_sub(1))
            .and_then(|i| self.slots.get(i))
            .map(|s| s.name.to_string())
            .ok_or_else(|| format!("alias {alias} is not in the current DBIRTH"))
    }

    fn wants_device(&self) -> bool {
        self.station_up && !self.slots.is_empty()
    }

    fn schedule_dbirth(&mut self, now: Instant) {
        if self.dbirth_due.is_none() {
            self.dbirth_due = Some(now + BIRTH_SETTLE);
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        u64::from(self.seq)
    }

    fn publish(&self, topic: Arc<str>, p: &Payload) -> Out {
        Out::Publish {
            topic,
            payload: p.encode_to_vec(),
        }
    }

    /// NBIRTH (and DBIRTH when the device is ready) if the session allows.
    fn births(&mut self, now: Instant) -> Vec<Out> {
        if !self.connected || !self.host_online || self.node_born {
            return Vec::new();
        }
        self.node_born = true;
        self.seq = 0;
        let ts = now_ms();
        let rebirth = Metric {
            name: Some(REBIRTH.into()),
            timestamp: Some(ts),
            datatype: Some(DataType::Boolean.code()),
            value: Some(Value::Boolean(false)),
            ..Metric::default()
        };
        let p = Payload {
            timestamp: Some(ts),
            metrics: vec![bdseq_metric(self.bdseq), rebirth],
            seq: Some(0),
            ..Payload::default()
        };
        let mut out = vec![self.publish(self.topics.nbirth.clone(), &p)];
        if self.wants_device() {
            self.schedule_dbirth(now);
            out.extend(self.tick(now));
        }
        out
    }

    fn dbirth(&mut self) -> Vec<Out> {
        let now = now_ms();
        let metrics = self
            .slots
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                let mut m = data_metric(i, s);
                m.name = Some(s.name.to_string());
                m.datatype = Some(datatype(s.ty).code());
                m.timestamp = Some(s.timestamp.unwrap_or(now));
                m.properties = Some(quality_property(s.quality));
                s.sent_quality = s.quality;
                m
            })
            .collect();
        let p = Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(self.next_seq()),
            ..Payload::default()
        };
        self.device_born = true;
        self.dbirth_due = None;
        vec![self.publish(self.topics.dbirth.clone(), &p)]
    }
}

fn bdseq_metric(bdseq: u8) -> Metric {
    Metric {
        name: Some(BDSEQ.into()),
        timestamp: Some(now_ms()),
        datatype: Some(DataType::Int64.code()),
        value: Some(Value::Long(u64::from(bdseq))),
        ..Metric::default()
    }
}

/// Takes a reading into the slot: a bad one keeps the last value.
fn apply(slot: &mut Slot, c: &TagChange) {
    slot.quality = c.quality;
    slot.timestamp = Some(millis(&c.timestamp));
    slot.fresh = true;
    if c.quality != Quality::Bad {
        if let Some(v) = metric_value(slot.ty, &c.value) {
            slot.value = Some(v);
        }
    }
}

/// A data metric: alias, timestamp, value or `is_null`.
fn data_metric(i: usize, s: &Slot) -> Metric {
    Metric {
        alias: Some(i as u64 + 1),
        timestamp: s.timestamp,
        is_null: s.value.is_none().then_some(true),
        value: s.value.clone(),
        ..Metric::default()
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
