//! The Sparkplug buffer on a real directory: records round-trip, the
//! replay is oldest first and paced, an entry leaves the log only once its
//! DDATA was written, a lost session replays it again, a restart keeps it.

use super::*;
use crate::model::Quality;
use serde_json::json;

fn change(name: &str, value: serde_json::Value, ms: i64) -> TagChange {
    TagChange {
        name: name.into(),
        ty: TagType::Double,
        value,
        quality: Quality::Good,
        quality_code: None,
        timestamp: chrono::DateTime::from_timestamp_millis(ms).unwrap(),
        error: None,
    }
}

fn batch(changes: Vec<TagChange>) -> ChangeBatch {
    ChangeBatch {
        group: "g".into(),
        changes,
        received_at: std::time::Instant::now(),
    }
}

fn settings(dir: &Path, rate: u32) -> MqttBufferSettings {
    MqttBufferSettings {
        enabled: true,
        dir: dir.display().to_string(),
        max_bytes: 1 << 20,
        replay_per_second: rate,
        sync_interval_ms: 100,
    }
}

#[test]
fn records_round_trip_and_garbage_is_refused() {
    let mut c = change("Line/Ofen Größe", json!("heiß"), 1_700_000_000_123);
    c.ty = TagType::String;
    c.quality = Quality::Uncertain;
    c.quality_code = Some(0x4000_0000);
    let back = decode(&encode(&c)).unwrap();
    assert_eq!(back.name, c.name);
    assert_eq!(back.ty, c.ty);
    assert_eq!(back.value, c.value);
    assert_eq!(back.quality, c.quality);
    assert_eq!(back.quality_code, c.quality_code);
    assert_eq!(back.timestamp, c.timestamp);
    let r = encode(&c);
    assert!(decode(&r[..r.len() - 3]).is_none(), "torn JSON");
    assert!(decode(&[9, 0, 0]).is_none(), "another version");
    assert!(decode(&[]).is_none());
    let mut bad_type = r.clone();
    bad_type[2] = 200;
    assert!(decode(&bad_type).is_none());
}

#[test]
fn replay_is_oldest_first_paced_and_acked_once_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = History::open(&settings(dir.path(), 20), 1 << 20)
        .unwrap()
        .unwrap();
    assert!(dir.path().join("sparkplug").is_dir(), "a log of its own");
    for i in 0..10 {
        h.record(&batch(vec![change("A", json!(i), 1000 + i)]));
    }
    assert_eq!(h.entries(), 10);
    assert!(h.pending());

    // 20 per second, a tenth of a second per message: 2 metrics each.
    // (Time is passed in: `t` moves on by hand.)
    let mut t = Instant::now();
    let at = h.replay_deadline(t);
    assert!(at - t <= Duration::from_millis(100) && at - t >= Duration::from_millis(90));
    assert!(h.next_batch(t).is_none(), "nothing before the pace allows");
    t += Duration::from_millis(100);
    let b = h.next_batch(t).unwrap();
    let values: Vec<_> = b.changes.iter().map(|c| c.value.clone()).collect();
    assert_eq!(values, vec![json!(0), json!(1)], "oldest first");

    // Handed over as the 5th PUBLISH: not acknowledged before it is written.
    h.sent(&b, 5);
    assert!(h.in_flight() && !h.pending());
    t += Duration::from_secs(1);
    assert!(h.next_batch(t).is_none(), "one in flight at most");
    h.written(4);
    assert_eq!(h.entries(), 10);
    h.written(5);
    assert_eq!(h.entries(), 8);
    assert!(!h.in_flight());

    // The next one goes out, the session ends before it is written: it
    // comes again in the next session.
    let b = h.next_batch(t).unwrap();
    assert_eq!(b.changes[0].value, json!(2));
    h.sent(&b, 9);
    h.session_ended();
    assert_eq!(h.entries(), 8);
    t += Duration::from_secs(1);
    let b = h.next_batch(t).unwrap();
    assert_eq!(b.changes[0].value, json!(2), "replayed again");
    h.sent(&b, 1);
    h.written(1);
    h.sync_now();
    drop(h);

    // A restart keeps what was not replayed.
    let mut h = History::open(&settings(dir.path(), 1000), 1 << 20)
        .unwrap()
        .unwrap();
    let left = h.entries();
    assert_eq!(left, 10 - 2 - b.entries);
    let b2 = h
        .next_batch(Instant::now() + Duration::from_secs(1))
        .unwrap();
    assert_eq!(b2.entries, left, "the rest in one message at this pace");
    assert_eq!(b2.changes[0].value, json!(2 + b.entries as i64));
    h.done(&b2);
    assert_eq!(h.entries(), 0);
    assert!(!h.pending());
}

#[test]
fn disabled_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = MqttBufferSettings {
        enabled: false,
        ..settings(&dir.path().join("x"), 10)
    };
    assert!(History::open(&s, 1 << 20).unwrap().is_none());
    assert!(!dir.path().join("x").exists());
}

#[test]
fn an_unusable_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(History::open(&settings(&file, 10), 1 << 20).is_err());
}
