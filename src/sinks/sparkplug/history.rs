//! Store-and-forward for the Sparkplug sink (contract §10, last point):
//! with `[mqtt.buffer]` enabled, every change the sink receives while the
//! host cannot get it live (MQTT session down, not yet born, device dead,
//! primary host offline) goes to an on-disk [`crate::buffer::Log`] of its
//! own (`{mqtt.buffer.dir}/sparkplug`, never shared with the MQTT sink),
//! and comes back after the fresh NBIRTH + DBIRTH as DDATA with
//! `is_historical = true`, oldest first.
//!
//! - Records hold the tag *name* and type, not the alias, so a tag set that
//!   changed across a restart still maps; a tag no longer in the DBIRTH (or
//!   now of another type) is skipped and counted.
//! - The replay is paced by a token bucket at `replay_per_second` metrics
//!   (one DDATA carries up to a tenth of a second's worth), and only one
//!   replay message is ever waiting in the connection's queue, so a live
//!   DDATA waits behind at most one historical message.
//! - Sparkplug data is QoS 0: an entry leaves the log once the DDATA that
//!   carried it was written to the live connection (the session's
//!   [`written`](super::session::Session::written) count passed it). A
//!   disconnect before that leaves it (and the rest) for the next session.
//! - Appends are one `write` per change batch (they survive a kill -9 at
//!   once) and fsynced every `sync_interval_ms` off the sink's task.
//!
//! A record: a version byte (1), flags (quality in bits 0-1, bit 2: a
//! quality code follows), the tag type (index in [`TagType::ALL`]), the
//! source timestamp in ms (i64 LE), the quality code (u32 LE, optional), the
//! tag name (u16 LE length + UTF-8) and the value as JSON text.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::buffer::{change, Log, Position, MAX_RECORD};
use crate::config::MqttBufferSettings;
use crate::model::{ChangeBatch, TagChange, TagType};

/// At most this many entries are held in memory for the replay.
const MAX_LOADED: usize = 4096;
/// At most this many metrics go in one historical DDATA.
const MAX_BATCH: usize = 1000;
/// Write errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

const VERSION: u8 = 1;

/// Encodes one change as a record: the version, `buffer::change`'s flags,
/// the tag's type (its index in `TagType::ALL`), then the change's fields.
pub(crate) fn encode(c: &TagChange) -> Vec<u8> {
    let ty = TagType::ALL.iter().position(|t| *t == c.ty).unwrap_or(0);
    let mut b = vec![VERSION, change::flags(c), ty as u8];
    change::put(&mut b, c);
    b
}

/// Decodes a record; `None` if it is not one of ours.
pub(crate) fn decode(r: &[u8]) -> Option<TagChange> {
    if *r.first()? != VERSION {
        return None;
    }
    let ty = *TagType::ALL.get(usize::from(*r.get(2)?))?;
    let f = change::read(*r.get(1)?, &r[3..])?;
    Some(TagChange {
        name: Arc::from(f.name),
        ty,
        value: f.value,
        quality: f.quality,
        quality_code: f.quality_code,
        timestamp: chrono::DateTime::from_timestamp_millis(f.ms)?,
        error: None,
    })
}

/// The Sparkplug log's directory under `[mqtt.buffer] dir`.
pub(crate) fn dir_in(buffer_dir: &Path) -> PathBuf {
    buffer_dir.join("sparkplug")
}

/// One entry loaded for the replay (`None`: a record that does not decode).
struct Loaded {
    end: Position,
    change: Option<TagChange>,
    bytes: usize,
}

/// A historical DDATA handed to the connection, not yet written.
struct InFlight {
    /// The session's publish count once it is written.
    publish: u64,
    end: Position,
    entries: u64,
}

/// A batch to replay: the changes, and what to acknowledge once sent.
pub(crate) struct Batch {
    pub changes: Vec<TagChange>,
    pub end: Position,
    /// Records in it: the changes, and any that did not decode (counted,
    /// and acknowledged with the rest).
    pub entries: u64,
}

/// The Sparkplug buffer and its replay.
pub(crate) struct History {
    log: Log,
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    max_bytes_per_message: usize,
    loaded: VecDeque<Loaded>,
    read_pos: Position,
    /// The log had nothing more to read after `read_pos`.
    exhausted: bool,
    in_flight: Option<InFlight>,
    sync_every: Duration,
    /// Written (or acknowledged) since the last sync.
    dirty_since: Option<Instant>,
    unbuffered: u64,
    last_error_log: Option<std::time::Instant>,
}

impl History {
    /// Opens (or creates) the log in `{dir}/sparkplug`; `None` when the
    /// buffer is disabled.
    pub(crate) fn open(
        s: &MqttBufferSettings,
        max_packet_size: usize,
    ) -> Result<Option<History>, String> {
        if !s.enabled {
            return Ok(None);
        }
        let dir = dir_in(Path::new(&s.dir));
        let log = Log::open("sparkplug", &dir, s.max_bytes).map_err(|e| e.to_string())?;
        let st = log.stats();
        if st.entries > 0 {
            tracing::info!(
                dir = %dir.display(),
                entries = st.entries,
                "the Sparkplug buffer holds changes from before the restart; they are replayed as historical DDATA after the next births"
            );
        }
        let rate = f64::from(s.replay_per_second.max(1));
        let h = History {
            read_pos: log.acked(),
            log,
            rate,
            burst: (rate / 10.0).clamp(1.0, MAX_BATCH as f64),
            tokens: 0.0,
            refilled: Instant::now(),
            max_bytes_per_message: (max_packet_size / 2).max(512),
            loaded: VecDeque::new(),
            exhausted: false,
            in_flight: None,
            sync_every: Duration::from_millis(s.sync_interval_ms.max(1)),
            dirty_since: None,
            unbuffered: 0,
            last_error_log: None,
        };
        h.gauges();
        Ok(Some(h))
    }

    /// Appends a batch of changes the host did not get live.
    pub(crate) fn record(&mut self, batch: &ChangeBatch) {
        let records: Vec<Vec<u8>> = batch
            .changes
            .iter()
            .map(encode)
            .filter(|r| r.len() <= MAX_RECORD)
            .collect();
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        match self.log.append_batch(records.iter().map(|r| &r[..])) {
            Ok(()) => {
                metrics::counter!("wincc_gateway_sparkplug_buffer_appended_total").increment(n);
                self.exhausted = false;
                self.dirty_since.get_or_insert_with(Instant::now);
            }
            Err(e) => {
                self.unbuffered += n;
                metrics::counter!("wincc_gateway_sparkplug_buffer_unbuffered_total").increment(n);
                let now = std::time::Instant::now();
                if self
                    .last_error_log
                    .is_none_or(|t| now.duration_since(t) >= ERROR_LOG_EVERY)
                {
                    self.last_error_log = Some(now);
                    tracing::error!(
                        error = %e,
                        unbuffered = self.unbuffered,
                        "cannot write the Sparkplug buffer (check mqtt.buffer.dir and free disk space): changes made while the host is away are NOT kept"
                    );
                }
            }
        }
        self.gauges();
    }

    fn gauges(&self) {
        let st = self.log.stats();
        metrics::gauge!("wincc_gateway_sparkplug_buffer_entries").set(st.entries as f64);
        metrics::gauge!("wincc_gateway_sparkplug_buffer_bytes").set(st.bytes as f64);
    }

    /// When the log should next be fsynced.
    pub(crate) fn sync_deadline(&self) -> Option<Instant> {
        self.dirty_since.map(|t| t + self.sync_every)
    }

    /// Fsyncs what was written, on a blocking thread; saves the ack position.
    pub(crate) fn sync(&mut self) {
        self.dirty_since = None;
        let files = self.log.take_unsynced();
        let dir = self.log.dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            for f in files {
                if let Err(e) = f.sync_data() {
                    metrics::counter!("wincc_gateway_sparkplug_buffer_sync_errors_total")
                        .increment(1);
                    tracing::error!(dir = %dir.display(), error = %e, "cannot sync the Sparkplug buffer; a power cut may lose buffered changes");
                    return;
                }
            }
        });
    }

    /// Fsyncs now, waiting for it (at shutdown).
    pub(crate) fn sync_now(&mut self) {
        self.dirty_since = None;
        if let Err(e) = self.log.sync() {
            tracing::error!(error = %e, "cannot sync the Sparkplug buffer at shutdown");
        }
    }

    /// The session ended: what was not written goes again next time.
    pub(crate) fn session_ended(&mut self) {
        self.loaded.clear();
        self.in_flight = None;
        self.read_pos = self.log.acked();
        self.exhausted = false;
        self.tokens = 0.0;
    }

    /// A historical DDATA is waiting to be written.
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Something waits to be replayed (and none is in flight).
    pub(crate) fn pending(&self) -> bool {
        self.in_flight.is_none()
            && (!self.loaded.is_empty() || (!self.exhausted && self.log.stats().entries > 0))
    }

    /// When the pace allows the next replay message.
    pub(crate) fn replay_deadline(&mut self, now: Instant) -> Instant {
        self.refill(now);
        let want = self.burst.min(self.backlog_guess() as f64).max(1.0);
        if self.tokens >= want {
            return now;
        }
        now + Duration::from_secs_f64((want - self.tokens) / self.rate)
    }

    fn backlog_guess(&self) -> u64 {
        self.log.stats().entries.max(self.loaded.len() as u64)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    fn load(&mut self) {
        if self.loaded.len() >= MAX_BATCH {
            return;
        }
        match self
            .log
            .read_from(self.read_pos, MAX_LOADED - self.loaded.len())
        {
            Ok((records, next)) => {
                self.read_pos = next;
                if records.is_empty() {
                    self.exhausted = true;
                }
                for r in records {
                    self.loaded.push_back(Loaded {
                        end: r.end,
                        bytes: r.data.len(),
                        change: decode(&r.data),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Sparkplug buffer; retrying");
            }
        }
    }

    /// The next batch the pace allows, oldest first.
    pub(crate) fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        self.refill(now);
        if self.in_flight.is_some() || self.tokens < 1.0 {
            return None;
        }
        self.load();
        let max = (self.tokens as usize).clamp(1, MAX_BATCH);
        let mut changes = Vec::new();
        let mut bytes = 0;
        let mut entries = 0;
        let mut corrupt = 0;
        let mut end = None;
        while let Some(e) = self.loaded.front() {
            if changes.len() >= max
                || (!changes.is_empty() && bytes + e.bytes > self.max_bytes_per_message)
            {
                break;
            }
            let Some(e) = self.loaded.pop_front() else {
                break;
            };
            bytes += e.bytes;
            entries += 1;
            end = Some(e.end);
            match e.change {
                Some(c) => changes.push(c),
                None => corrupt += 1,
            }
        }
        self.tokens -= changes.len().max(1) as f64;
        if corrupt > 0 {
            tracing::warn!(
                corrupt,
                "skipping Sparkplug buffer records that do not decode"
            );
            metrics::counter!("wincc_gateway_sparkplug_buffer_corrupt_total").increment(corrupt);
        }
        Some(Batch {
            changes,
            end: end?,
            entries,
        })
    }

    /// The batch went out as the session's `publish`-th PUBLISH.
    pub(crate) fn sent(&mut self, b: &Batch, publish: u64) {
        self.in_flight = Some(InFlight {
            publish,
            end: b.end,
            entries: b.entries,
        });
    }

    /// Nothing of the batch could be sent (every tag unknown): done with it.
    pub(crate) fn done(&mut self, b: &Batch) {
        self.ack(b.end, b.entries);
    }

    /// The session has written `written` PUBLISH packets so far.
    pub(crate) fn written(&mut self, written: u64) {
        if let Some(f) = self.in_flight.take_if(|f| f.publish <= written) {
            metrics::counter!("wincc_gateway_sparkplug_buffer_replayed_total").increment(f.entries);
            self.ack(f.end, f.entries);
        }
    }

    fn ack(&mut self, end: Position, entries: u64) {
        self.log.ack(end, entries);
        self.dirty_since.get_or_insert_with(Instant::now);
        self.gauges();
    }

    /// Changes on disk not yet replayed.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> u64 {
        self.log.stats().entries
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
