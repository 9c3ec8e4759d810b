//! Store-and-forward for the MQTT sink (`[mqtt.buffer]`, contract §9): what
//! the outbox could not deliver goes to the on-disk [`crate::buffer::Log`],
//! and comes back on `{prefix}/backfill/{tag}` once the broker is there.
//!
//! The outbox decides *what* is buffered (every tag change that arrives
//! while the broker is away, and every one that was superseded or lost
//! before its acknowledgement); this module owns the log, the record
//! format and the replay: entries are read oldest first, handed over one
//! at a time only when no live message waits (so a live value waits behind
//! at most one backfill publish), paced by a token bucket at
//! `replay_per_second`, and acknowledged in the log only once the broker
//! acknowledged them (QoS 1), in order. After a lost connection every
//! unacknowledged entry is sent again.
//!
//! A record is compact (about 25 bytes plus the tag name and the value's
//! JSON): flags (quality, whether a quality code follows), the source
//! timestamp in ms (i64 LE), the quality code (u32 LE, optional), the tag
//! name (u16 LE length + UTF-8) and the value as JSON text. The payload on
//! `backfill/` is rebuilt from it exactly as on `tags/`, plus `"replay":true`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::buffer::{change, Log, Position};
use crate::config::MqttBufferSettings;
use crate::model::{format_ts, TagChange};

/// At most this many entries are held in memory for the replay.
const MAX_LOADED: usize = 8192;
/// Errors writing the buffer are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// The buffer as `/healthz` and `/metrics` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BacklogStatus {
    /// Changes on disk waiting for the broker's acknowledgement.
    pub entries: u64,
    pub bytes: u64,
    /// Replayed and acknowledged since start.
    pub replayed: u64,
    /// Dropped because the buffer was full (since start).
    pub dropped: u64,
    /// Damaged records skipped (found at start).
    pub corrupt: u64,
    /// Changes that could not be written to the buffer (disk full, I/O error).
    pub unbuffered: u64,
    /// The last write or sync error, until a write succeeds again.
    pub error: Option<String>,
}

impl BacklogStatus {
    /// False while writing the buffer fails.
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "state": if self.is_ok() { "ok" } else { "failing" },
            "entries": self.entries,
            "bytes": self.bytes,
            "replayed": self.replayed,
            "dropped": self.dropped,
            "corrupt": self.corrupt,
            "unbuffered": self.unbuffered,
            "error": self.error,
        })
    }
}

/// Encodes one change as a buffer record (`buffer::change`'s fields alone).
pub(crate) fn encode(c: &TagChange) -> Bytes {
    let mut b = vec![change::flags(c)];
    change::put(&mut b, c);
    Bytes::from(b)
}

/// A decoded record: tag name and the `backfill/` payload.
pub(crate) fn decode(r: &[u8]) -> Option<(String, Bytes)> {
    let f = change::read(*r.first()?, &r[1..])?;
    let ts = chrono::DateTime::from_timestamp_millis(f.ms)?;
    let mut m = serde_json::Map::with_capacity(5);
    m.insert("value".into(), f.value);
    m.insert("quality".into(), f.quality.as_str().into());
    m.insert("timestamp".into(), format_ts(&ts).into());
    if let Some(c) = f.quality_code {
        m.insert("quality_code".into(), c.into());
    }
    m.insert("replay".into(), true.into());
    let payload = serde_json::to_vec(&serde_json::Value::Object(m)).ok()?;
    Some((f.name.to_string(), Bytes::from(payload)))
}

/// One entry loaded for the replay.
#[derive(Debug)]
struct Entry {
    end: Position,
    topic: Arc<str>,
    payload: Bytes,
    acked: bool,
}

/// A backfill publish handed to rumqttc.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub id: u64,
    pub topic: Arc<str>,
    pub payload: Bytes,
}

/// The buffer and its replay; lives in the outbox, behind its lock.
pub(crate) struct Backlog {
    log: Log,
    prefix: String,
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    /// Loaded from the log, not yet acknowledged, in log order;
    /// `loaded[i]` has id `base_id + i`.
    loaded: VecDeque<Entry>,
    base_id: u64,
    /// `loaded[..sent]` was handed over on this connection (or acked).
    sent: usize,
    /// Where the next read from the log starts.
    read_pos: Position,
    /// Records waiting for [`Backlog::flush`].
    spill: Vec<Bytes>,
    replayed: u64,
    unbuffered: u64,
    error: Option<String>,
    last_error_log: Option<Instant>,
    status: watch::Sender<BacklogStatus>,
}

impl Backlog {
    /// Opens (or creates) the buffer directory and scans it.
    pub(crate) fn open(
        s: &MqttBufferSettings,
        prefix: &str,
    ) -> Result<Self, crate::buffer::BufferError> {
        let log = Log::open("mqtt", Path::new(&s.dir), s.max_bytes)?;
        let st = log.stats();
        if st.entries > 0 {
            tracing::info!(
                dir = %s.dir,
                entries = st.entries,
                bytes = st.bytes,
                "the MQTT buffer holds changes from before the restart; they are replayed on backfill/ once the broker is reachable"
            );
        }
        let rate = f64::from(s.replay_per_second.max(1));
        let (status, _) = watch::channel(BacklogStatus::default());
        let b = Backlog {
            read_pos: log.acked(),
            log,
            prefix: prefix.to_string(),
            rate,
            // 200 ms of pace: a tick delayed by a busy machine (the replay
            // is driven by a 10 ms timer) is made up within the second
            // instead of lost; the outbox still hands over one backfill
            // publish at a time, only while no live value waits.
            burst: (rate / 5.0).max(1.0),
            tokens: 0.0,
            refilled: Instant::now(),
            loaded: VecDeque::new(),
            base_id: 0,
            sent: 0,
            spill: Vec::new(),
            replayed: 0,
            unbuffered: 0,
            error: None,
            last_error_log: None,
            status,
        };
        b.publish_status();
        Ok(b)
    }

    pub(crate) fn status(&self) -> watch::Receiver<BacklogStatus> {
        self.status.subscribe()
    }

    /// Queues a record for the next [`flush`](Self::flush).
    pub(crate) fn spill(&mut self, record: Bytes) {
        self.spill.push(record);
    }

    /// Writes the queued records (one write). On failure they are counted
    /// as unbuffered and the error is kept for `/healthz`.
    pub(crate) fn flush(&mut self) {
        if self.spill.is_empty() {
            return;
        }
        let n = self.spill.len() as u64;
        let r = self.log.append_batch(self.spill.iter().map(|b| &b[..]));
        self.spill.clear();
        match r {
            Ok(()) => {
                metrics::counter!("wincc_gateway_mqtt_buffer_appended_total").increment(n);
                if self.error.take().is_some() {
                    tracing::info!(dir = %self.log.dir().display(), "writing the MQTT buffer works again");
                    self.publish_status();
                }
            }
            Err(e) => {
                self.unbuffered += n;
                metrics::counter!("wincc_gateway_mqtt_buffer_unbuffered_total").increment(n);
                self.fail(format!("cannot write the MQTT buffer: {e}"));
            }
        }
    }

    fn fail(&mut self, why: String) {
        let now = Instant::now();
        if self.error.is_none()
            || self
                .last_error_log
                .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY)
        {
            self.last_error_log = Some(now);
            tracing::error!(
                error = %why,
                unbuffered = self.unbuffered,
                "changes the broker did not get are NOT kept; live values still flow"
            );
        }
        self.error = Some(why);
        self.publish_status();
    }

    /// Files to fsync (outside the outbox lock); saves the ack position.
    pub(crate) fn take_unsynced(&mut self) -> Vec<Arc<std::fs::File>> {
        self.log.take_unsynced()
    }

    /// A sync failed.
    pub(crate) fn sync_failed(&mut self, e: &std::io::Error) {
        self.fail(format!(
            "cannot sync the MQTT buffer in {}: {e}",
            self.log.dir().display()
        ));
    }

    /// Updates the metrics and the health channel.
    pub(crate) fn publish_status(&self) {
        let st = self.log.stats();
        metrics::gauge!("wincc_gateway_mqtt_buffer_entries").set(st.entries as f64);
        metrics::gauge!("wincc_gateway_mqtt_buffer_bytes").set(st.bytes as f64);
        self.status.send_replace(BacklogStatus {
            entries: st.entries,
            bytes: st.bytes,
            replayed: self.replayed,
            dropped: st.dropped,
            corrupt: st.corrupt,
            unbuffered: self.unbuffered,
            error: self.error.clone(),
        });
    }

    /// Refills the pacing bucket and reads more entries from the log
    /// when few are left to send.
    pub(crate) fn tick(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let unsent = self.loaded.len() - self.sent;
        let want = (self.rate as usize / 10).max(64);
        if unsent >= want || self.loaded.len() >= MAX_LOADED {
            return;
        }
        let n = (MAX_LOADED - self.loaded.len()).min(want * 2);
        match self.log.read_from(self.read_pos, n) {
            Ok((records, next)) => {
                self.read_pos = next;
                for r in records {
                    let (topic, payload, acked) = match decode(&r.data) {
                        Some((name, payload)) => (
                            Arc::from(format!(
                                "{}/backfill/{}",
                                self.prefix,
                                crate::topic::encode(&name)
                            )),
                            payload,
                            false,
                        ),
                        None => {
                            tracing::warn!("skipping an MQTT buffer record that does not decode");
                            metrics::counter!("wincc_gateway_mqtt_buffer_corrupt_total")
                                .increment(1);
                            (Arc::from(""), Bytes::new(), true)
                        }
                    };
                    self.loaded.push_back(Entry {
                        end: r.end,
                        topic,
                        payload,
                        acked,
                    });
                }
                self.advance();
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the MQTT buffer; retrying"),
        }
    }

    /// The next entry to publish, if the pace allows one.
    pub(crate) fn next(&mut self) -> Option<Outgoing> {
        if self.tokens < 1.0 {
            return None;
        }
        while self.sent < self.loaded.len() && self.loaded[self.sent].acked {
            self.sent += 1;
        }
        let e = self.loaded.get(self.sent)?;
        self.tokens -= 1.0;
        let out = Outgoing {
            id: self.base_id + self.sent as u64,
            topic: e.topic.clone(),
            payload: e.payload.clone(),
        };
        self.sent += 1;
        Some(out)
    }

    /// rumqttc did not take `id` (its channel was full): send it later.
    pub(crate) fn unsend(&mut self, id: u64) {
        if let Some(i) = id.checked_sub(self.base_id) {
            self.sent = self.sent.min(i as usize);
            self.tokens += 1.0;
        }
    }

    /// The broker acknowledged `id` (or refused it: it is not tried again).
    pub(crate) fn acked(&mut self, id: u64) {
        let Some(i) = id.checked_sub(self.base_id) else {
            return;
        };
        if let Some(e) = self.loaded.get_mut(i as usize) {
            e.acked = true;
        }
        self.advance();
    }

    /// Removes the acknowledged front of `loaded` from the log.
    fn advance(&mut self) {
        let mut n = 0;
        let mut end = None;
        while self.loaded.front().is_some_and(|e| e.acked) {
            if let Some(e) = self.loaded.pop_front() {
                end = Some(e.end);
                n += 1;
            }
        }
        if let Some(end) = end {
            self.base_id += n;
            self.sent = self.sent.saturating_sub(n as usize);
            self.replayed += n;
            metrics::counter!("wincc_gateway_mqtt_buffer_replayed_total").increment(n);
            self.log.ack(end, n);
        }
    }

    /// The connection is gone: everything unacknowledged goes again.
    pub(crate) fn on_disconnected(&mut self) {
        self.sent = 0;
    }

    /// Changes waiting on disk (incl. the ones being replayed).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> u64 {
        self.log.stats().entries
    }
}

#[cfg(test)]
#[path = "backlog_tests.rs"]
mod tests;
