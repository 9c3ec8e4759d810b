//! The log on real files: order, acknowledgement, restart, the size bound,
//! and damage done on purpose (torn tails, flipped bytes, lost ack file).

use super::*;

fn recs(n: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    n.map(|i| format!("record {i:05}").into_bytes()).collect()
}

fn append(log: &mut Log, r: &[Vec<u8>]) {
    log.append_batch(r.iter().map(Vec::as_slice)).unwrap();
}

/// Everything readable from `from`, in order.
fn read_all(log: &Log, from: Position) -> Vec<Record> {
    let mut out = Vec::new();
    let mut pos = from;
    loop {
        let (r, next) = log.read_from(pos, 100).unwrap();
        if r.is_empty() && next == pos {
            return out;
        }
        pos = next;
        out.extend(r);
    }
}

fn texts(r: &[Record]) -> Vec<String> {
    r.iter()
        .map(|r| String::from_utf8(r.data.clone()).unwrap())
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn records_come_back_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open("mqtt", dir.path(), 1 << 30).unwrap();
    append(&mut log, &recs(0..10));
    append(&mut log, &recs(10..25));
    let got = read_all(&log, log.acked());
    assert_eq!(texts(&got), texts_of(0..25));
    assert_eq!(log.stats().entries, 25);
    // Acknowledge the first ten, sync, reopen: fifteen are left.
    log.ack(got[9].end, 10);
    log.sync().unwrap();
    drop(log);
    let log = Log::open("mqtt", dir.path(), 1 << 30).unwrap();
    assert_eq!(log.stats().entries, 15);
    assert_eq!(log.stats().corrupt, 0);
    assert_eq!(texts(&read_all(&log, log.acked())), texts_of(10..25));
}

fn texts_of(r: std::ops::Range<u32>) -> Vec<String> {
    recs(r)
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect()
}

#[test]
fn a_fully_acknowledged_log_deletes_its_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open("mqtt", dir.path(), 1 << 20).unwrap();
    // 64 KiB segments: ~3000 records of ~30 bytes fill several.
    for i in 0..10 {
        append(&mut log, &recs(i * 1000..(i + 1) * 1000));
    }
    assert!(segments(dir.path()).len() > 2);
    let all = read_all(&log, log.acked());
    assert_eq!(all.len(), 10_000);
    log.ack(all[4999].end, 5000);
    assert_eq!(log.stats().entries, 5000);
    log.ack(all.last().unwrap().end, 5000);
    assert_eq!(log.stats().entries, 0);
    assert!(segments(dir.path()).is_empty());
    log.sync().unwrap();
    // New appends after that, and a reopen, still work and start clean.
    append(&mut log, &recs(0..3));
    drop(log);
    let log = Log::open("mqtt", dir.path(), 1 << 20).unwrap();
    assert_eq!(texts(&read_all(&log, log.acked())), texts_of(0..3));
}

#[test]
fn a_full_log_drops_its_oldest_records_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open("mqtt", dir.path(), 1 << 20).unwrap();
    for i in 0..100 {
        append(&mut log, &recs(i * 1000..(i + 1) * 1000));
    }
    let st = log.stats();
    assert!(st.bytes <= 1 << 20, "{st:?}");
    assert!(st.dropped > 0);
    assert_eq!(st.entries + st.dropped, 100_000, "{st:?}");
    let all = read_all(&log, log.acked());
    assert_eq!(all.len() as u64, st.entries);
    // What is left is the newest, still in order.
    assert_eq!(texts(&all).last().unwrap(), "record 99999");
    assert!(texts(&all).windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_torn_tail_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open("mqtt", dir.path(), 1 << 30).unwrap();
    append(&mut log, &recs(0..20));
    drop(log);
    let seg = segments(dir.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    // A crash in the middle of the last record.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let mut log = Log::open("mqtt", dir.path(), 1 << 30).unwrap();
    assert_eq!(log.stats().corrupt, 1);
    assert_eq!(log.stats().entries, 19);
    // Appends after the torn tail come back after the 19 good ones.
    append(&mut log, &recs(20..25));
    let mut want = texts_of(0..19);
    want.extend(texts_of(20..25));
    assert_eq!(texts(&read_all(&log, log.acked())), want);
}

#[test]
fn a_corrupt_record_is_skipped_and_the_ones_around_it_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open("mqtt", dir.path(), 1 << 30).unwrap();
    append(&mut log, &recs(0..30));
    let all = read_all(&log, log.acked());
    drop(log);
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // Flip a payload byte of record 10 and the length of record 20.
    bytes[all[9].end.offset as usize + FRAME_OVERHEAD + 3] ^= 0xFF;
    bytes[all[19].end.offset as usize + 2] ^= 0x40;
    fs::write(&seg, &bytes).unwrap();
    let log = Log::open("mqtt", dir.path(), 1 << 30).unwrap();
    assert_eq!(log.stats().corrupt, 2);
    assert_eq!(log.stats().entries, 28);
    let mut want = texts_of(0..10);
    want.extend(texts_of(11..20));
    want.extend(texts_of(21..30));
    assert_eq!(texts(&read_all(&log, log.acked())), want);
}

#[test]
fn garbage_and_a_damaged_ack_file_lose_nothing_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open("mqtt", dir.path(), 1 << 30).unwrap();
    append(&mut log, &recs(0..5));
    let all = read_all(&log, log.acked());
    log.ack(all[2].end, 3);
    log.sync().unwrap();
    drop(log);
    // A damaged ack file replays from the start (at least once), a foreign
    // file is ignored, a segment with a bad header is read as far as it goes.
    fs::write(dir.path().join("ack"), b"nonsense").unwrap();
    fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[0] = b'X';
    fs::write(&seg, &bytes).unwrap();
    let log = Log::open("mqtt", dir.path(), 1 << 30).unwrap();
    assert_eq!(texts(&read_all(&log, log.acked())), texts_of(0..5));
    assert!(log.stats().corrupt >= 1);
}

#[test]
fn reads_continue_across_segments_and_chunk_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open("mqtt", dir.path(), 1 << 20).unwrap();
    let big: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10_000]).collect();
    for b in &big {
        log.append_batch([b.as_slice()]).unwrap();
    }
    let got = read_all(&log, log.acked());
    assert_eq!(got.len(), 40);
    assert!(got.iter().zip(&big).all(|(g, b)| &g.data == b));
    assert!(matches!(
        log.append_batch([vec![0; MAX_RECORD + 1].as_slice()]),
        Err(BufferError::TooLarge(_))
    ));
}

#[test]
fn writability_is_checked_without_leaving_anything() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a/b");
    check_writable(&sub).unwrap();
    assert!(!dir.path().join("a").exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = check_writable(&file.join("buf")).unwrap_err();
    assert!(err.contains("not a directory"), "{err}");
    assert!(Log::open("mqtt", &file.join("buf"), 1 << 20).is_err());
}

#[test]
fn an_unwritable_directory_fails_appends_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buf");
    let mut log = Log::open("mqtt", &path, 1 << 20).unwrap();
    append(&mut log, &recs(0..10));
    // The directory disappears under the log (a file takes its place):
    // the next segment cannot be created.
    let old = dir.path().join("moved");
    fs::rename(&path, &old).unwrap();
    fs::write(&path, b"not a dir").unwrap();
    let mut failed = 0;
    for i in 0..100 {
        if log
            .append_batch(recs(i * 1000..(i + 1) * 1000).iter().map(Vec::as_slice))
            .is_err()
        {
            failed += 1;
        }
    }
    assert!(failed > 0);
    fs::remove_file(&path).unwrap();
    fs::rename(&old, &path).unwrap();
    append(&mut log, &recs(0..1));
}
