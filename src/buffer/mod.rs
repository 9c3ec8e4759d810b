//! The durable store-and-forward log (contract §9): an append-only,
//! segmented, checksummed record log on local disk, bounded in bytes.
//!
//! It knows nothing about MQTT: records are opaque byte strings, so any
//! sink that must keep what it could not deliver (the MQTT sink's
//! `[mqtt.buffer]`, and Sparkplug's historical replay) uses the same API:
//!
//! - [`Log::open`]`(sink, dir, max_bytes)` creates the directory if missing,
//!   scans what is there (torn tails and corrupt records are skipped and
//!   counted) and starts a fresh segment for new appends;
//! - [`Log::append_batch`] writes records in order with one `write` call
//!   (they survive a kill -9 at once, a power cut once synced);
//! - [`Log::sync`] fsyncs what was written since the last sync and saves
//!   the acknowledged position (call it every `sync_interval_ms`;
//!   [`Log::take_unsynced`] lets the caller fsync outside its own locks);
//! - [`Log::read_from`]`(position, max)` returns the next records after
//!   `position` (start at [`Log::acked`]), each with the position after it;
//! - [`Log::ack`]`(position, count)` says everything before `position` was
//!   delivered: whole segments before it are deleted, the position is saved
//!   at the next sync (a crash replays at most what was acknowledged since);
//! - [`Log::stats`]: entries, bytes, dropped (full), corrupt.
//!
//! On disk: `dir/NNNNNNNNNNNNNNNN.seg` files (hex segment id, an 8-byte
//! magic header, then records) and `dir/ack` (the acknowledged position
//! with a CRC). A record is `0xA5`, a little-endian `u32` length and the
//! CRC-32 (`crc32fast`) of length and payload, then the payload. A reader
//! that meets a bad frame searches forward for the next frame whose CRC
//! holds, so one damaged record never hides the ones after it. When the
//! log would grow past `max_bytes` its oldest segments are deleted (their
//! records counted as dropped); segments are `max_bytes / 16` (64 KiB to
//! 64 MiB), so at most a sixteenth goes at once.
//!
//! The log is synchronous (std::fs) and not thread-safe: callers hold it
//! behind their own lock and keep every call short (no call blocks on the
//! network; `sync` is the only one that waits for the disk).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) mod change;
mod frame;

use frame::{frame, parse, read_ack, walk, write_ack, Frame, RECORD_MAGIC};
pub use frame::{FRAME_OVERHEAD, MAX_RECORD};

/// First bytes of every segment file.
const SEGMENT_MAGIC: &[u8; 8] = b"WGWBUF01";
/// How much a read takes from a segment at once.
const READ_CHUNK: usize = 256 << 10;
const MIN_SEGMENT: u64 = 64 << 10;
const MAX_SEGMENT: u64 = 64 << 20;
/// "Full: dropped the oldest" is logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// What can go wrong with the log; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a record of {0} bytes is larger than the {MAX_RECORD} bytes allowed")]
    TooLarge(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A place in the log: segment id and byte offset in it. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Counters and sizes for metrics and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records not yet acknowledged.
    pub entries: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    /// Records deleted unacknowledged because the log was full (since open).
    pub dropped: u64,
    /// Damaged records and torn tails skipped (found at open).
    pub corrupt: u64,
}

/// One record read back, with the position right after it (ack up to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub end: Position,
    pub data: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    len: u64,
    records: u64,
}

/// The log. See the module documentation.
pub struct Log {
    /// Whose log this is (`mqtt`, `sparkplug`): names its metrics
    /// (`wincc_gateway_{sink}_buffer_dropped_total`, `..._corrupt_total`)
    /// and its log lines.
    sink: &'static str,
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is the one appended to.
    segments: VecDeque<Segment>,
    active: Option<Arc<File>>,
    acked: Position,
    /// Records before `acked` that are still in the first segments.
    acked_records: u64,
    ack_saved: bool,
    unsynced: Vec<Arc<File>>,
    dropped: u64,
    corrupt: u64,
    last_drop_log: Option<Instant>,
    scratch: Vec<u8>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

impl Log {
    /// Opens (creating `dir` if missing) and scans the log; appends go to a
    /// new segment. `max_bytes` bounds the sum of the segment files.
    pub fn open(sink: &'static str, dir: &Path, max_bytes: u64) -> Result<Log, BufferError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut ids = Vec::new();
        for e in fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            let name = e.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            if let Ok(id) = u64::from_str_radix(stem, 16) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let acked = read_ack(dir);
        let mut log = Log {
            sink,
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(MIN_SEGMENT, MAX_SEGMENT),
            segments: VecDeque::new(),
            active: None,
            acked,
            acked_records: 0,
            ack_saved: true,
            unsynced: Vec::new(),
            dropped: 0,
            corrupt: 0,
            last_drop_log: None,
            scratch: Vec::new(),
        };
        for id in ids {
            let path = segment_path(dir, id);
            let buf = fs::read(&path).map_err(io(&path))?;
            if id < acked.segment {
                // Fully acknowledged before the restart: its deletion was lost.
                let _ = fs::remove_file(&path);
                continue;
            }
            let mut records = 0;
            let mut before_ack = 0;
            let body = if buf.starts_with(SEGMENT_MAGIC) {
                &buf[SEGMENT_MAGIC.len()..]
            } else {
                log.corrupt += 1;
                tracing::warn!(path = %path.display(), "buffer segment has no valid header; reading what can be read");
                &buf[..]
            };
            let base = (buf.len() - body.len()) as u64;
            log.corrupt += walk(body, base, |end, _| {
                records += 1;
                if id == acked.segment && end <= acked.offset {
                    before_ack += 1;
                }
            });
            log.acked_records += before_ack;
            log.segments.push_back(Segment {
                id,
                len: buf.len() as u64,
                records,
            });
        }
        if log.corrupt > 0 {
            tracing::warn!(
                sink,
                dir = %dir.display(),
                corrupt = log.corrupt,
                "the buffer had damaged records or a torn tail (a crash mid-write); they are skipped"
            );
        }
        metrics::counter!(format!("wincc_gateway_{sink}_buffer_corrupt_total"))
            .increment(log.corrupt);
        Ok(log)
    }

    /// Where a reader starts: everything before it was acknowledged.
    pub fn acked(&self) -> Position {
        let first = self.first_position();
        self.acked.max(first)
    }

    fn first_position(&self) -> Position {
        self.segments.front().map_or(self.acked, |s| Position {
            segment: s.id,
            offset: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> Stats {
        let records: u64 = self.segments.iter().map(|s| s.records).sum();
        Stats {
            entries: records.saturating_sub(self.acked_records),
            bytes: self.segments.iter().map(|s| s.len).sum(),
            dropped: self.dropped,
            corrupt: self.corrupt,
        }
    }

    /// Starts a new segment file for appends.
    fn rotate(&mut self) -> Result<(), BufferError> {
        if let Some(f) = self.active.take() {
            self.unsynced.push(f);
        }
        let id = self
            .segments
            .back()
            .map_or(self.acked.segment, |s| s.id + 1);
        let path = segment_path(&self.dir, id);
        let mut f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if let Err(e) = f.write_all(SEGMENT_MAGIC) {
            let _ = fs::remove_file(&path);
            return Err(io(&path)(e));
        }
        self.segments.push_back(Segment {
            id,
            len: SEGMENT_MAGIC.len() as u64,
            records: 0,
        });
        self.active = Some(Arc::new(f));
        Ok(())
    }

    /// Appends `records` in order with one write. On an error nothing of
    /// the batch counts as written (a partial write is cut off again).
    pub fn append_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), BufferError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let mut count = 0;
        for r in records {
            if r.len() > MAX_RECORD {
                self.scratch = buf;
                return Err(BufferError::TooLarge(r.len()));
            }
            frame(&mut buf, r);
            count += 1;
        }
        let result = self.write(&buf, count);
        self.scratch = buf;
        result
    }

    fn write(&mut self, buf: &[u8], count: u64) -> Result<(), BufferError> {
        if count == 0 {
            return Ok(());
        }
        let full = self.segments.back().is_some_and(|s| {
            s.len > SEGMENT_MAGIC.len() as u64 && s.len + buf.len() as u64 > self.segment_bytes
        });
        if self.active.is_none() || full {
            self.rotate()?;
        }
        self.make_room(buf.len() as u64);
        let (Some(f), Some(seg)) = (self.active.as_ref(), self.segments.back_mut()) else {
            unreachable!("rotate() leaves an active segment");
        };
        let path = segment_path(&self.dir, seg.id);
        if let Err(e) = (&**f).write_all(buf) {
            // Cut a partial write off, so the next batch starts clean.
            let _ = f.set_len(seg.len);
            let _ = (&**f).seek(SeekFrom::Start(seg.len));
            return Err(io(&path)(e));
        }
        seg.len += buf.len() as u64;
        seg.records += count;
        Ok(())
    }

    /// Deletes the oldest segments (never the active one) until `extra`
    /// more bytes fit under `max_bytes`.
    fn make_room(&mut self, extra: u64) {
        let mut dropped = 0;
        while self.segments.len() > 1 && self.stats().bytes + extra > self.max_bytes {
            let Some(s) = self.segments.pop_front() else {
                break;
            };
            let lost = s.records.saturating_sub(self.acked_records);
            self.acked_records = self.acked_records.saturating_sub(s.records);
            dropped += lost;
            let _ = fs::remove_file(segment_path(&self.dir, s.id));
        }
        if dropped > 0 {
            self.dropped += dropped;
            metrics::counter!(format!("wincc_gateway_{}_buffer_dropped_total", self.sink))
                .increment(dropped);
            let now = Instant::now();
            if self
                .last_drop_log
                .is_none_or(|t| now.duration_since(t) >= DROP_LOG_EVERY)
            {
                self.last_drop_log = Some(now);
                tracing::warn!(
                    sink = self.sink,
                    dir = %self.dir.display(),
                    max_bytes = self.max_bytes,
                    dropped_total = self.dropped,
                    "the buffer is full: the oldest buffered changes were dropped"
                );
            }
        }
    }

    /// Files written since the last call, for the caller to fsync outside
    /// its locks; the acknowledged position is saved (not fsynced: losing
    /// it only replays acknowledged records again).
    pub fn take_unsynced(&mut self) -> Vec<Arc<File>> {
        if !self.ack_saved {
            self.ack_saved = write_ack(&self.dir, self.acked).is_ok();
        }
        let mut files = std::mem::take(&mut self.unsynced);
        files.extend(self.active.clone());
        files
    }

    /// Fsyncs everything written so far and saves the acknowledged position.
    pub fn sync(&mut self) -> Result<(), BufferError> {
        for f in self.take_unsynced() {
            f.sync_data().map_err(io(&self.dir))?;
        }
        Ok(())
    }

    /// Up to `max` records after `from` (in order), and where to continue.
    pub fn read_from(
        &self,
        from: Position,
        max: usize,
    ) -> Result<(Vec<Record>, Position), BufferError> {
        let mut out = Vec::new();
        let mut pos = from.max(self.first_position());
        let first = pos.segment;
        for seg in self.segments.iter().filter(|s| s.id >= first) {
            if seg.id > pos.segment {
                pos = Position {
                    segment: seg.id,
                    offset: 0,
                };
            }
            let start = pos.offset.max(SEGMENT_MAGIC.len() as u64);
            if start >= seg.len {
                continue;
            }
            let (buf, last_chunk) = self.read_chunk(seg, start)?;
            let mut at = 0;
            while at < buf.len() && out.len() < max {
                match parse(&buf[at..]) {
                    Frame::Good(data, n) => {
                        at += n;
                        out.push(Record {
                            end: Position {
                                segment: seg.id,
                                offset: start + at as u64,
                            },
                            data: data.to_vec(),
                        });
                    }
                    // Not enough bytes in this chunk: the next read starts here.
                    Frame::Short if !last_chunk => break,
                    // Damage (counted at open) or a torn tail: search on.
                    Frame::Short | Frame::Bad => at += 1,
                }
            }
            pos = Position {
                segment: seg.id,
                offset: start + at as u64,
            };
            if out.len() >= max || !last_chunk || at < buf.len() {
                break;
            }
        }
        Ok((out, pos))
    }

    /// Reads from `start` in `seg`: a chunk, or more if the first record
    /// there is larger. Also says whether it reaches the segment's end.
    fn read_chunk(&self, seg: &Segment, start: u64) -> Result<(Vec<u8>, bool), BufferError> {
        let path = segment_path(&self.dir, seg.id);
        let mut f = File::open(&path).map_err(io(&path))?;
        let left = seg.len - start;
        let mut want = left.min(READ_CHUNK as u64);
        loop {
            f.seek(SeekFrom::Start(start)).map_err(io(&path))?;
            let mut buf = vec![0; want as usize];
            f.read_exact(&mut buf).map_err(io(&path))?;
            let last_chunk = want == left;
            let need = match buf.get(..5) {
                Some(h) if h[0] == RECORD_MAGIC => {
                    let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as u64;
                    (len <= MAX_RECORD as u64).then_some(len + FRAME_OVERHEAD as u64)
                }
                _ => None,
            };
            match need {
                Some(n) if !last_chunk && n > want => want = n.min(left),
                _ => return Ok((buf, last_chunk)),
            }
        }
    }

    /// Everything before `upto` was delivered (`count` records since the
    /// last call): fully acknowledged segments are deleted.
    pub fn ack(&mut self, upto: Position, count: u64) {
        if upto <= self.acked {
            return;
        }
        if self.segments.front().is_some_and(|s| upto.segment < s.id) {
            // Its segment was dropped (full) meanwhile: already counted.
            self.acked = upto;
            return;
        }
        self.acked = upto;
        self.acked_records += count;
        self.ack_saved = false;
        while self.segments.len() > 1 && self.segments[0].id < upto.segment {
            if let Some(s) = self.segments.pop_front() {
                self.acked_records = self.acked_records.saturating_sub(s.records);
                let _ = fs::remove_file(segment_path(&self.dir, s.id));
            }
        }
        // The active segment, fully acknowledged: start afresh.
        if let Some(s) = self.segments.front() {
            if self.segments.len() == 1
                && s.id == upto.segment
                && upto.offset >= s.len
                && s.len > SEGMENT_MAGIC.len() as u64
            {
                let id = s.id;
                self.segments.clear();
                self.acked_records = 0;
                if let Some(f) = self.active.take() {
                    self.unsynced.retain(|u| !Arc::ptr_eq(u, &f));
                }
                let _ = fs::remove_file(segment_path(&self.dir, id));
                self.acked = Position {
                    segment: id + 1,
                    offset: 0,
                };
            }
        }
    }
}

/// Checks that `dir` can hold the buffer: it exists (or can be created
/// under an existing parent) and a file can be written in it. Creates
/// nothing that stays.
pub fn check_writable(dir: &Path) -> Result<(), String> {
    let mut probe_dir = dir;
    while !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_dir = p,
            _ => {
                probe_dir = Path::new(".");
                break;
            }
        }
    }
    if !probe_dir.is_dir() {
        return Err(format!("{} is not a directory", probe_dir.display()));
    }
    let probe = probe_dir.join(format!(".wincc-gateway-probe-{}", std::process::id()));
    let r = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"probe"));
    let _ = fs::remove_file(&probe);
    r.map_err(|e| format!("cannot write in {}: {e}", probe_dir.display()))
}

#[cfg(test)]
mod tests;
