//! Unit tests of the simulator's tag store.

use super::*;
use serde_json::json;

#[test]
fn write_checks_types_ranges_and_writability() {
    let mut s = TagStore::default();
    let now = Utc::now();
    let add = |s: &mut TagStore, n: &str, ty, w| {
        s.push(SimTag::new(
            TagInfo {
                name: n.into(),
                ty,
                writable: w,
            },
            SimValue::Int(0),
            names::default_behaviour(ty),
            now,
        ))
    };
    add(&mut s, "i16", TagType::Int16, true);
    add(&mut s, "ro", TagType::Int16, false);
    add(&mut s, "f", TagType::Float, true);
    add(&mut s, "dt", TagType::DateTime, true);
    add(&mut s, "s", TagType::String, true);
    assert_eq!(s.write("i16", &json!(5.0)), Ok(()));
    assert_eq!(s.get("i16").unwrap().value, SimValue::Int(5));
    assert_eq!(
        s.write("i16", &json!(40000)).unwrap_err().code,
        "OutOfRange"
    );
    assert_eq!(
        s.write("i16", &json!(1.5)).unwrap_err().code,
        "TypeMismatch"
    );
    assert_eq!(
        s.write("i16", &json!("5")).unwrap_err().code,
        "TypeMismatch"
    );
    assert_eq!(s.write("ro", &json!(1)).unwrap_err().code, "ReadOnly");
    assert_eq!(s.write("nope", &json!(1)).unwrap_err().code, "UnknownTag");
    assert_eq!(s.write("f", &json!(1e39)).unwrap_err().code, "OutOfRange");
    assert_eq!(s.write("dt", &json!("2026-01-01T01:00:00+01:00")), Ok(()));
    assert_eq!(
        s.get("dt").unwrap().value.to_json(),
        json!("2026-01-01T00:00:00.000Z")
    );
    assert_eq!(
        s.write("s", &json!("x".repeat(256))).unwrap_err().code,
        "OutOfRange"
    );
    let mut out = Vec::new();
    s.get("f").unwrap().write_reading(&mut out);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["quality"], "Good");
    assert!(v.get("qualityCode").is_none());
}

#[test]
fn rows_are_valid_json_even_for_hostile_names() {
    let s = TagStore::generate(100, 9);
    let mut out = b"[".to_vec();
    for (i, t) in s.tags().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        s.write_row(&t.info.name, &mut out);
    }
    out.extend_from_slice(b",");
    s.write_row("No \"such\" tag", &mut out);
    out.push(b']');
    let rows: Vec<Value> = serde_json::from_slice(&out).unwrap();
    for (row, t) in rows.iter().zip(s.tags()) {
        assert_eq!(row["name"], t.info.name.as_str());
        assert_eq!(row["value"], t.value.to_json());
        assert!(crate::model::parse_ts(row["timestamp"].as_str().unwrap()).is_some());
    }
    assert_eq!(rows[100]["error"]["code"], "UnknownTag");
}

#[test]
fn tick_changes_only_read_only_tags_within_range() {
    let mut s = TagStore::generate(1000, 5);
    let before: Vec<_> = s.tags().iter().map(|t| t.value.clone()).collect();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let later = Utc::now() + chrono::Duration::seconds(5);
    assert_eq!(s.tick(200, &mut rng, later), 200);
    let mut changed = 0;
    for (t, b) in s.tags().iter().zip(&before) {
        if t.timestamp() == later.with_timezone(&Utc).trunc_subsecs_ms() {
            assert!(!t.info.writable);
            changed += 1;
        } else {
            assert_eq!(&t.value, b);
        }
        if let (Some((lo, hi)), SimValue::Int(i)) = (t.info.ty.integer_range(), &t.value) {
            assert!((lo..=hi).contains(&(*i as i128)));
        }
    }
    assert!(changed > 150, "{changed}");
}

trait TruncMs {
    fn trunc_subsecs_ms(self) -> Self;
}
impl TruncMs for DateTime<Utc> {
    fn trunc_subsecs_ms(self) -> Self {
        Utc.timestamp_millis_opt(self.timestamp_millis()).unwrap()
    }
}

#[test]
fn remove_keeps_order_and_index() {
    let mut s = TagStore::generate(30, 2);
    let name = s.tags()[3].info.name.clone();
    let next = s.tags()[4].info.name.clone();
    assert!(s.remove(&name));
    assert!(!s.remove(&name));
    assert_eq!(s.tags()[3].info.name, next);
    assert_eq!(s.get(&next).unwrap().info.name, next);
    assert!(s.get(&name).is_none());
    let last = s.tags().last().unwrap().info.name.clone();
    assert_eq!(s.get(&last).unwrap().info.name, last);
}
