//! The birth/death sequence number (`bdSeq`) kept on disk, so that a host
//! can tell this session's NDEATH from an older one even across a restart
//! or a crash.
//!
//! The number for the next MQTT session is reserved *before* its CONNECT
//! is sent (it is in the will), and the file then already holds the one
//! after it: a `kill -9` right after the CONNECT still leaves the next run
//! a fresh number. A connection attempt that never got a CONNACK was no
//! session, so the next attempt reuses its number. Rebirths never touch it.
//! The file is one decimal number, replaced atomically (write a temporary
//! file, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

/// bdSeq runs 0..=255 and wraps, like `seq`.
pub(crate) struct BdSeq {
    path: PathBuf,
    /// The number the next new session takes.
    next: u8,
    /// Reserved for an attempt that has not (yet) got a CONNACK.
    pending: Option<u8>,
}

/// The file for one edge node inside `dir`.
pub(crate) fn file_in(dir: &Path, group_id: &str, edge_node_id: &str) -> PathBuf {
    // The ids hold no `/` (checked by the configuration), so this is one
    // file name.
    dir.join(format!("sparkplug-bdseq-{group_id}-{edge_node_id}"))
}

impl BdSeq {
    /// Reads the stored number (0 when there is no file yet). A file that
    /// does not hold a number 0..=255 is reported and replaced.
    pub(crate) fn open(path: PathBuf) -> std::io::Result<BdSeq> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<u8>() {
                Ok(n) => n,
                Err(_) => {
                    tracing::warn!(
                        file = %path.display(),
                        content = %text.chars().take(40).collect::<String>(),
                        "the bdSeq file does not hold a number 0..=255; starting again from 0"
                    );
                    0
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(BdSeq {
            path,
            next,
            pending: None,
        })
    }

    /// The number for the next CONNECT: the one reserved by an attempt
    /// that got no CONNACK, else a new one, stored (its successor is
    /// written to disk) before it is returned.
    pub(crate) fn reserve(&mut self) -> std::io::Result<u8> {
        if let Some(n) = self.pending {
            return Ok(n);
        }
        let n = self.next;
        self.next = n.wrapping_add(1);
        self.pending = Some(n);
        self.store()?;
        Ok(n)
    }

    /// [`reserve`](Self::reserve) when the file cannot be written: the
    /// number advances in memory only.
    pub(crate) fn reserve_in_memory(&mut self) -> u8 {
        if let Some(n) = self.pending {
            return n;
        }
        let n = self.next;
        self.next = n.wrapping_add(1);
        self.pending = Some(n);
        n
    }

    /// The attempt that reserved the current number got its CONNACK: the
    /// next session takes a new number.
    pub(crate) fn session_started(&mut self) {
        self.pending = None;
    }

    fn store(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{}", self.next)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename itself survives a power cut only once the
            // directory is synced; not every platform can open one.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_once_per_session_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_in(&dir.path().join("state"), "G", "N");
        let mut b = BdSeq::open(path.clone()).unwrap();
        assert_eq!(b.reserve().unwrap(), 0);
        // No CONNACK yet: the retry reuses it.
        assert_eq!(b.reserve().unwrap(), 0);
        b.session_started();
        assert_eq!(b.reserve().unwrap(), 1);
        // A crash now: the next run must not reuse 1.
        drop(b);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
        let mut b = BdSeq::open(path.clone()).unwrap();
        assert_eq!(b.reserve().unwrap(), 2);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn wraps_after_255_and_replaces_a_spoiled_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_in(dir.path(), "G", "N");
        std::fs::write(&path, "255\n").unwrap();
        let mut b = BdSeq::open(path.clone()).unwrap();
        assert_eq!(b.reserve().unwrap(), 255);
        b.session_started();
        assert_eq!(b.reserve().unwrap(), 0);
        std::fs::write(&path, "minus one").unwrap();
        let mut b = BdSeq::open(path.clone()).unwrap();
        assert_eq!(b.reserve().unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
    }
}
