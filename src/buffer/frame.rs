//! The bytes on disk: record frames and the acknowledged-position file.
//!
//! A record is `0xA5`, its length (u32 LE) and the CRC-32 (`crc32fast`)
//! of length and payload, then the payload. [`parse`] checks one frame;
//! [`walk`] goes through a whole segment, searching forward past damage
//! for the next frame whose CRC holds. The `ack` file is the position
//! (two u64 LE) and their CRC-32, replaced by a rename.

use std::fs;
use std::path::{Path, PathBuf};

use super::Position;

/// First byte of every record frame.
pub(super) const RECORD_MAGIC: u8 = 0xA5;
/// Magic, length, CRC.
pub const FRAME_OVERHEAD: usize = 9;
/// Larger records are refused (a corrupt length cannot make us read more).
pub const MAX_RECORD: usize = 16 << 20;

/// Frames a record into `out`.
pub(super) fn frame(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(data);
    out.push(RECORD_MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(data);
}

/// What [`parse`] found at the start of `buf`.
pub(super) enum Frame<'a> {
    /// A good record of `len` bytes in all.
    Good(&'a [u8], usize),
    /// Needs more bytes than `buf` has.
    Short,
    /// Not a record start.
    Bad,
}

pub(super) fn parse(buf: &[u8]) -> Frame<'_> {
    if buf.len() < FRAME_OVERHEAD {
        return Frame::Short;
    }
    if buf[0] != RECORD_MAGIC {
        return Frame::Bad;
    }
    let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_RECORD {
        return Frame::Bad;
    }
    let total = FRAME_OVERHEAD + len;
    if buf.len() < total {
        return Frame::Short;
    }
    let crc = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]);
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[1..5]);
    h.update(&buf[FRAME_OVERHEAD..total]);
    if h.finalize() != crc {
        return Frame::Bad;
    }
    Frame::Good(&buf[FRAME_OVERHEAD..total], total)
}

/// Walks a whole segment image: calls `good(offset_after, payload)` for
/// each good record and returns how many damaged stretches were skipped.
pub(super) fn walk(buf: &[u8], base: u64, mut good: impl FnMut(u64, &[u8])) -> u64 {
    let mut at = 0;
    let mut damaged = 0;
    let mut in_damage = false;
    while at < buf.len() {
        match parse(&buf[at..]) {
            Frame::Good(data, n) => {
                at += n;
                in_damage = false;
                good(base + at as u64, data);
            }
            Frame::Short | Frame::Bad => {
                if !in_damage {
                    damaged += 1;
                    in_damage = true;
                }
                at += 1;
            }
        }
    }
    damaged
}

fn ack_path(dir: &Path) -> PathBuf {
    dir.join("ack")
}

pub(super) fn read_ack(dir: &Path) -> Position {
    let Ok(b) = fs::read(ack_path(dir)) else {
        return Position::default();
    };
    if b.len() != 20 || crc32fast::hash(&b[..16]).to_le_bytes() != b[16..20] {
        tracing::warn!(dir = %dir.display(), "the buffer's ack file is damaged; replaying from the oldest record");
        return Position::default();
    }
    let n = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    Position {
        segment: n(0),
        offset: n(8),
    }
}

pub(super) fn write_ack(dir: &Path, p: Position) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&p.segment.to_le_bytes());
    b.extend_from_slice(&p.offset.to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
    let tmp = dir.join("ack.tmp");
    fs::write(&tmp, &b)?;
    fs::rename(&tmp, ack_path(dir))
}
