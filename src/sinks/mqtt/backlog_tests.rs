//! Unit tests of the backlog: the record format, and the outbox with a
//! buffer (what is buffered, replay order, live values first).

use super::super::link::{Message, Publisher, Qos};
use super::super::outbox::Outbox;
use super::*;
use crate::model::{Quality, TagType};
use serde_json::json;
use std::cell::RefCell;
use std::rc::Rc;

/// Records `topic=value` of what would go on the wire.
#[derive(Clone, Default)]
struct Wire(Rc<RefCell<Vec<String>>>);

impl Publisher for Wire {
    fn try_publish(&self, m: &Message<'_>) -> bool {
        let v: serde_json::Value = serde_json::from_slice(m.payload).unwrap();
        self.0
            .borrow_mut()
            .push(format!("{}={}", m.topic, v["value"]));
        true
    }
}

fn tag(name: &str, v: i64) -> TagChange {
    TagChange {
        name: name.into(),
        ty: TagType::Int32,
        value: json!(v),
        quality: Quality::Good,
        quality_code: None,
        timestamp: chrono::Utc::now(),
        error: None,
    }
}

fn set(o: &mut Outbox<Wire>, name: &str, v: i64) {
    let c = tag(name, v);
    let payload = Bytes::from(serde_json::to_vec(&c.to_json()).unwrap());
    let topic: Arc<str> = Arc::from(format!("p/tags/{name}"));
    o.set_change(
        topic,
        payload,
        Qos::AtLeastOnce,
        true,
        None,
        Some(encode(&c)),
    );
    o.flush_backlog();
    o.pump();
}

#[test]
fn an_outage_is_replayed_after_the_newest_values_and_live_values_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let settings = MqttBufferSettings {
        enabled: true,
        dir: dir.path().display().to_string(),
        max_bytes: 1 << 20,
        replay_per_second: 100_000,
        sync_interval_ms: 100,
    };
    let wire = Wire::default();
    let mut o = Outbox::new(wire.clone(), 1 << 20);
    o.set_backlog(Backlog::open(&settings, "p").unwrap());
    for (t, v) in [("A", 1), ("B", 1), ("A", 2), ("A", 3), ("B", 2)] {
        set(&mut o, t, v);
    }
    assert_eq!(o.backlog_mut().unwrap().entries(), 5);
    o.on_connected("p/status", true);
    o.pump();
    // The newest values first, nothing from the backlog yet.
    let mut first = wire.0.borrow().clone();
    first.sort();
    assert_eq!(first, ["p/tags/A=3", "p/tags/B=2"]);
    o.on_outgoing_publish(1);
    o.on_outgoing_publish(2);
    std::thread::sleep(Duration::from_millis(20));
    o.backlog_tick();
    // One backfill publish at a time; a live value goes right after it.
    assert_eq!(wire.0.borrow().len(), 3);
    assert_eq!(wire.0.borrow()[2], "p/backfill/A=1");
    set(&mut o, "B", 3);
    o.pump();
    assert_eq!(wire.0.borrow()[3], "p/tags/B=3");
    let mut pkid = 3;
    while wire.0.borrow().len() > pkid as usize - 1 {
        o.on_outgoing_publish(pkid);
        o.on_ack(pkid);
        o.pump();
        pkid += 1;
    }
    let backfill: Vec<String> = wire
        .0
        .borrow()
        .iter()
        .filter(|m| m.starts_with("p/backfill/"))
        .cloned()
        .collect();
    assert_eq!(
        backfill,
        [
            "p/backfill/A=1",
            "p/backfill/B=1",
            "p/backfill/A=2",
            "p/backfill/A=3",
            "p/backfill/B=2"
        ]
    );
    assert_eq!(o.backlog_mut().unwrap().entries(), 0);
}

#[test]
fn values_lost_in_flight_are_buffered_when_the_connection_drops() {
    let dir = tempfile::tempdir().unwrap();
    let settings = MqttBufferSettings {
        enabled: true,
        dir: dir.path().display().to_string(),
        ..MqttBufferSettings::default()
    };
    let wire = Wire::default();
    let mut o = Outbox::new(wire.clone(), 1 << 20);
    o.set_backlog(Backlog::open(&settings, "p").unwrap());
    o.on_connected("p/status", true);
    set(&mut o, "A", 1);
    o.on_outgoing_publish(1);
    set(&mut o, "A", 2); // A=1 in flight, superseded
    o.on_outgoing_publish(2);
    set(&mut o, "B", 1);
    o.on_outgoing_publish(3);
    o.on_ack(3); // B=1 delivered: not buffered
    assert_eq!(o.backlog_mut().unwrap().entries(), 0);
    o.on_disconnected();
    assert_eq!(o.backlog_mut().unwrap().entries(), 2);
    let (recs, _) = {
        let b = o.backlog_mut().unwrap();
        b.log.read_from(b.log.acked(), 10).unwrap()
    };
    let names: Vec<String> = recs
        .iter()
        .map(|r| {
            let (n, p) = decode(&r.data).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            format!("{n}={}", v["value"])
        })
        .collect();
    assert_eq!(names, ["A=1", "A=2"]);
}

#[test]
fn a_record_comes_back_as_the_tags_payload_plus_replay() {
    let c = TagChange {
        name: "Area/Tank 1".into(),
        ty: TagType::Double,
        value: json!(12.5),
        quality: Quality::Uncertain,
        quality_code: Some(0x48),
        timestamp: crate::model::parse_ts("2026-01-02T03:04:05.678Z").unwrap(),
        error: None,
    };
    let rec = encode(&c);
    assert!(rec.len() < 40, "{} bytes", rec.len());
    let (name, payload) = decode(&rec).unwrap();
    assert_eq!(name, "Area/Tank 1");
    let mut want = c.to_json();
    want["replay"] = json!(true);
    assert_eq!(payload, serde_json::to_vec(&want).unwrap());
    // "12." is no JSON number: a cut record does not decode.
    assert!(decode(&rec[..rec.len() - 1]).is_none());
    assert!(decode(&[7, 0]).is_none());
}
