//! The Sparkplug rules of [`Node`] without a broker (the payloads are read
//! back with the gateway's own prost types here; the integration tests in
//! tests/sparkplug.rs decode with protoc instead).

use super::*;
use serde_json::json;

fn topics(host: &str) -> Topics {
    Topics::new("G", "N", "D", host)
}

fn tag(name: &str, ty: TagType) -> TagInfo {
    TagInfo {
        name: name.into(),
        ty,
        writable: true,
    }
}

fn change(name: &str, value: serde_json::Value, q: Quality) -> TagChange {
    TagChange {
        name: name.into(),
        ty: TagType::Double,
        value,
        quality: q,
        quality_code: None,
        timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        error: None,
    }
}

fn batch(changes: Vec<TagChange>) -> ChangeBatch {
    ChangeBatch {
        group: "g".into(),
        changes,
        received_at: Instant::now(),
    }
}

/// (topic kind, payload) of each publish.
fn decode(out: &[Out]) -> Vec<(String, Payload)> {
    out.iter()
        .map(|o| match o {
            Out::Publish { topic, payload } => (
                topic.split('/').nth(2).unwrap().to_string(),
                Payload::decode(payload.as_slice()).unwrap(),
            ),
            Out::GoOffline { ndeath } => (
                "GoOffline".into(),
                Payload::decode(ndeath.as_slice()).unwrap(),
            ),
        })
        .collect()
}

fn kinds(out: &[Out]) -> Vec<String> {
    decode(out).into_iter().map(|(k, _)| k).collect()
}

fn quality(m: &Metric) -> Option<u32> {
    let p = m.properties.as_ref()?;
    assert_eq!(p.keys, vec!["Quality".to_string()]);
    match p.values[0].value {
        Some(super::super::proto::PropertyKind::Int(q)) => Some(q),
        _ => None,
    }
}

/// A node with a session, the station up and tags A (Double), B (Int16).
fn born() -> (Node, Instant) {
    let now = Instant::now();
    let mut n = Node::new(topics(""));
    assert_eq!(kinds(&n.session_up(7, now)), vec!["NBIRTH"]);
    assert!(n.on_station(true, now).is_empty());
    let tags = [tag("B", TagType::Int16), tag("A", TagType::Double)];
    assert!(n.on_tags(&tags, now).is_empty(), "waits for values");
    let out = n.on_changes(
        &batch(vec![
            change("A", json!(1.5), Quality::Good),
            change("B", json!(-3), Quality::Uncertain),
        ]),
        now,
    );
    assert_eq!(kinds(&out), vec!["DBIRTH"]);
    (n, now)
}

#[test]
fn nbirth_carries_bdseq_and_rebirth_control_with_seq_0() {
    let mut n = Node::new(topics(""));
    let out = decode(&n.session_up(42, Instant::now()));
    let (kind, p) = &out[0];
    assert_eq!(kind, "NBIRTH");
    assert_eq!(p.seq, Some(0));
    assert_eq!(p.metrics[0].name.as_deref(), Some(BDSEQ));
    assert_eq!(p.metrics[0].datatype, Some(4));
    assert_eq!(p.metrics[0].value, Some(Value::Long(42)));
    assert_eq!(p.metrics[1].name.as_deref(), Some(REBIRTH));
    assert_eq!(p.metrics[1].datatype, Some(11));
    assert_eq!(p.metrics[1].value, Some(Value::Boolean(false)));
    let death = Payload::decode(Node::ndeath(42).as_slice()).unwrap();
    assert_eq!(death.seq, None);
    assert_eq!(death.metrics[0].value, Some(Value::Long(42)));
}

#[test]
fn dbirth_lists_every_tag_sorted_with_alias_type_value_and_quality() {
    let now = Instant::now();
    let mut n = Node::new(topics(""));
    n.session_up(0, now);
    n.on_station(true, now);
    n.on_tags(&[tag("B", TagType::Int16), tag("A", TagType::Double)], now);
    let out = n.on_changes(
        &batch(vec![
            change("A", json!(1.5), Quality::Good),
            change("B", json!(-3), Quality::Uncertain),
        ]),
        now,
    );
    let (kind, p) = &decode(&out)[0];
    assert_eq!(kind, "DBIRTH");
    assert_eq!(p.seq, Some(1));
    let a = &p.metrics[0];
    assert_eq!(
        (a.name.as_deref(), a.alias, a.datatype),
        (Some("A"), Some(1), Some(10))
    );
    assert_eq!(a.value, Some(Value::Double(1.5)));
    assert_eq!(a.timestamp, Some(1_700_000_000_123));
    assert_eq!(quality(a), Some(192));
    let b = &p.metrics[1];
    assert_eq!(
        (b.name.as_deref(), b.alias, b.datatype),
        (Some("B"), Some(2), Some(2))
    );
    assert_eq!(b.value, Some(Value::Int(-3i32 as u32)));
    assert_eq!(quality(b), Some(64));
}

#[test]
fn dbirth_waits_at_most_the_settle_time_then_sends_nulls() {
    let now = Instant::now();
    let mut n = Node::new(topics(""));
    n.session_up(0, now);
    n.on_station(true, now);
    n.on_tags(&[tag("A", TagType::Double), tag("B", TagType::Bool)], now);
    assert!(n
        .on_changes(&batch(vec![change("A", json!(1), Quality::Good)]), now)
        .is_empty());
    assert_eq!(n.next_deadline(), Some(now + BIRTH_SETTLE));
    assert!(n.tick(now + BIRTH_SETTLE / 2).is_empty());
    let out = n.tick(now + BIRTH_SETTLE);
    let (_, p) = &decode(&out)[0];
    assert_eq!(p.metrics[1].is_null, Some(true));
    assert_eq!(p.metrics[1].value, None);
    assert_eq!(quality(&p.metrics[1]), Some(0));
}

#[test]
fn ddata_by_alias_only_what_changed_one_message_per_batch() {
    let (mut n, now) = born();
    let out = n.on_changes(
        &batch(vec![
            change("B", json!(4), Quality::Good),
            change("Unknown", json!(4), Quality::Good),
        ]),
        now,
    );
    let d = decode(&out);
    assert_eq!(d.len(), 1);
    let (kind, p) = &d[0];
    assert_eq!(kind, "DDATA");
    assert_eq!(p.seq, Some(2));
    assert_eq!(p.metrics.len(), 1);
    let m = &p.metrics[0];
    assert_eq!((m.name.as_ref(), m.alias), (None, Some(2)));
    assert_eq!(m.value, Some(Value::Int(4)));
    // It was uncertain: good again is said explicitly.
    assert_eq!(quality(m), Some(192));
    // Good after good: no property.
    let out = n.on_changes(&batch(vec![change("B", json!(5), Quality::Good)]), now);
    assert_eq!(quality(&decode(&out)[0].1.metrics[0]), None);
}

#[test]
fn bad_quality_keeps_the_last_value_with_quality_0() {
    let (mut n, now) = born();
    let out = n.on_changes(&batch(vec![change("A", json!(null), Quality::Bad)]), now);
    let m = &decode(&out)[0].1.metrics[0];
    assert_eq!(m.value, Some(Value::Double(1.5)));
    assert_eq!(m.is_null, None);
    assert_eq!(quality(m), Some(0));
}

#[test]
fn seq_wraps_after_255() {
    let (mut n, now) = born();
    let mut seqs = Vec::new();
    for i in 0..300 {
        let out = n.on_changes(&batch(vec![change("A", json!(i), Quality::Good)]), now);
        seqs.push(decode(&out)[0].1.seq.unwrap());
    }
    assert_eq!(seqs[0], 2);
    assert_eq!(seqs[253], 255);
    assert_eq!(seqs[254], 0);
    assert_eq!(seqs[255], 1);
}

#[test]
fn station_outage_is_ddeath_then_a_fresh_dbirth() {
    let (mut n, now) = born();
    let out = n.on_station(false, now);
    assert_eq!(kinds(&out), vec!["DDEATH"]);
    assert_eq!(decode(&out)[0].1.seq, Some(2));
    // Values seen meanwhile are kept but not sent.
    assert!(n
        .on_changes(&batch(vec![change("A", json!(2), Quality::Bad)]), now)
        .is_empty());
    // Back: the DBIRTH waits for values read after the outage.
    assert!(n.on_station(true, now).is_empty());
    assert!(n
        .on_changes(&batch(vec![change("A", json!(3), Quality::Good)]), now)
        .is_empty());
    let out = n.on_changes(&batch(vec![change("B", json!(1), Quality::Good)]), now);
    assert_eq!(kinds(&out), vec!["DBIRTH"]);
    let p = &decode(&out)[0].1;
    assert_eq!(p.seq, Some(3));
    assert_eq!(p.metrics[0].value, Some(Value::Double(3.0)));
}

#[test]
fn a_new_tag_set_is_a_fresh_dbirth_at_once() {
    let (mut n, now) = born();
    let out = n.on_tags(&[tag("A", TagType::Double), tag("C", TagType::Bool)], now);
    let (kind, p) = &decode(&out)[0];
    assert_eq!(kind, "DBIRTH");
    let names: Vec<_> = p.metrics.iter().map(|m| m.name.clone().unwrap()).collect();
    assert_eq!(names, vec!["A", "C"]);
    assert_eq!(p.metrics[0].value, Some(Value::Double(1.5)));
    assert_eq!(p.metrics[1].is_null, Some(true));
    // The same set again changes nothing.
    assert!(n
        .on_tags(&[tag("C", TagType::Bool), tag("A", TagType::Double)], now)
        .is_empty());
}

#[test]
fn rebirth_repeats_both_births_with_the_same_bdseq_and_coalesces() {
    let (mut n, now) = born();
    let cmd = Payload {
        metrics: vec![Metric {
            name: Some(REBIRTH.into()),
            value: Some(Value::Boolean(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
    .encode_to_vec();
    let out = n.on_ncmd(&cmd, now);
    let d = decode(&out);
    assert_eq!(kinds(&out), vec!["NBIRTH", "DBIRTH"]);
    assert_eq!(d[0].1.metrics[0].value, Some(Value::Long(7)));
    assert_eq!((d[0].1.seq, d[1].1.seq), (Some(0), Some(1)));
    // A second request within the gap is answered once, later.
    assert!(n.on_ncmd(&cmd, now).is_empty());
    assert!(n.on_ncmd(&cmd, now).is_empty());
    assert_eq!(n.next_deadline(), Some(now + REBIRTH_MIN_GAP));
    assert_eq!(
        kinds(&n.tick(now + REBIRTH_MIN_GAP)),
        vec!["NBIRTH", "DBIRTH"]
    );
    assert!(n.tick(now + REBIRTH_MIN_GAP * 3).is_empty());
    // Rebirth = false and garbage do nothing.
    let no = Payload {
        metrics: vec![Metric {
            name: Some(REBIRTH.into()),
            value: Some(Value::Boolean(false)),
            ..Metric::default()
        }],
        ..Payload::default()
    }
    .encode_to_vec();
    assert!(n.on_ncmd(&no, now + REBIRTH_MIN_GAP * 5).is_empty());
    assert!(n.on_ncmd(b"\xff\xff\xff", now).is_empty());
}

#[test]
fn births_wait_for_the_primary_host_and_its_offline_ends_the_session() {
    let now = Instant::now();
    let mut n = Node::new(topics("SCADA"));
    assert_eq!(n.topics().state.as_deref(), Some("spBv1.0/STATE/SCADA"));
    n.on_station(true, now);
    n.on_tags(&[tag("A", TagType::Double)], now);
    n.on_changes(&batch(vec![change("A", json!(1), Quality::Good)]), now);
    assert!(n.session_up(3, now).is_empty(), "host not online yet");
    assert!(n.on_state(b"ONLINE", now).is_empty(), "not 3.0 JSON");
    let out = n.on_state(br#"{"online":true,"timestamp":1000}"#, now);
    assert_eq!(kinds(&out), vec!["NBIRTH", "DBIRTH"]);
    // An older offline is stale.
    assert!(n
        .on_state(br#"{"online":false,"timestamp":999}"#, now)
        .is_empty());
    let out = n.on_state(br#"{"online":false,"timestamp":1001}"#, now);
    let d = decode(&out);
    assert_eq!(d[0].0, "GoOffline");
    assert_eq!(d[0].1.metrics[0].value, Some(Value::Long(3)));
    assert!(!n.node_born);
    // The next session waits for online again.
    n.session_down();
    assert!(n.session_up(4, now).is_empty());
    let out = n.on_state(br#"{"online":true,"timestamp":1001}"#, now);
    assert_eq!(decode(&out)[0].1.metrics[0].value, Some(Value::Long(4)));
}

#[test]
fn historical_changes_are_flagged_and_leave_live_values_alone() {
    let (mut n, now) = born();
    let mut other_type = change("A", json!(true), Quality::Good);
    other_type.ty = TagType::Bool;
    let (out, skipped) = n.historical(&[
        change("A", json!(9.5), Quality::Good),
        change("Gone", json!(1), Quality::Good),
        other_type,
    ]);
    assert_eq!(skipped, 2, "an unknown tag and a changed type are left out");
    assert!(n.is_live());
    let p = &decode(&out)[0].1;
    assert_eq!(p.metrics.len(), 1);
    assert_eq!(p.metrics[0].is_historical, Some(true));
    assert_eq!(p.metrics[0].value, Some(Value::Double(9.5)));
    // The live value is still 1.5: a bad reading keeps it.
    let out = n.on_changes(&batch(vec![change("A", json!(null), Quality::Bad)]), now);
    assert_eq!(decode(&out)[0].1.metrics[0].value, Some(Value::Double(1.5)));
    n.session_down();
    assert!(!n.is_live());
    assert!(n
        .historical(&[change("A", json!(1), Quality::Good)])
        .0
        .is_empty());
}

#[test]
fn command_targets_by_name_or_current_alias() {
    let (n, _) = born();
    let by = |name: Option<&str>, alias: Option<u64>| {
        n.command_target(&Metric {
            name: name.map(String::from),
            alias,
            ..Metric::default()
        })
    };
    assert_eq!(by(Some("X"), None).unwrap(), "X");
    assert_eq!(by(None, Some(2)).unwrap(), "B");
    assert!(by(None, Some(0)).is_err());
    assert!(by(None, Some(3)).is_err());
    assert!(by(None, None).is_err());
}
