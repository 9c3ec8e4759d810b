//! Write commands over MQTT, end to end: a test client publishes to
//! `{prefix}/write/{tag}`, the sink checks and forwards through the guarded
//! write path and the generic REST client to the WinCC simulator over real
//! HTTP, and the result comes back on `{prefix}/write-result/{tag}`.

use crate::common;

use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::rig::sim_with_writer;
use common::{mqtt_settings, Gateway, Msg, TestSubscriber};
use rumqttc::QoS;
use serde_json::{json, Value};
use wincc_gateway::model::TagType;
use wincc_gateway::sim::{Faults, SimHandle};
use wincc_gateway::sinks::mqtt::{MqttSink, MAX_COMMAND_BYTES};
use wincc_gateway::topic;

const T: Duration = Duration::from_secs(10);
const HOSTILE: &str = "Setpoints/a+b #%/ü\u{1}";

struct Rig {
    _broker: Mosquitto,
    sim: SimHandle,
    gw: Gateway,
    sub: TestSubscriber,
}

/// Simulator + generic client + mosquitto + the sink with writes enabled.
/// `retained_before` is published (retained) to a write topic before the sink
/// connects, so the sink gets it as a replay on subscribe.
async fn rig(retained_before: Option<(&str, &[u8])>) -> Rig {
    let (sim, writer) = sim_with_writer(
        5,
        &[
            ("Setpoints/Speed", TagType::Int16, true, json!(0)),
            ("Setpoints/Temp", TagType::Double, true, json!(0.0)),
            ("Setpoints/Flag", TagType::Bool, true, json!(false)),
            ("Setpoints/Locked", TagType::Int16, false, json!(0)),
            ("Other/Level", TagType::Double, true, json!(0.0)),
            (HOSTILE, TagType::String, true, json!("")),
        ],
    )
    .await;

    let broker = Mosquitto::start();
    let sub = TestSubscriber::connect(broker.port, "w/write-result/#").await;
    if let Some((suffix, payload)) = retained_before {
        sub.client
            .publish(
                format!("w/write/{suffix}"),
                QoS::AtLeastOnce,
                true,
                payload.to_vec(),
            )
            .await
            .unwrap();
        // The publish above is only queued: retry until the broker has stored it.
        let mut stored = false;
        for _ in 0..20 {
            let probe = TestSubscriber::connect(broker.port, "w/write/#").await;
            if probe
                .wait_msg(
                    &format!("w/write/{suffix}"),
                    Duration::from_millis(250),
                    |m| m.retain,
                )
                .await
                .is_some()
            {
                stored = true;
                break;
            }
        }
        assert!(stored, "the retained command never reached the broker");
    }
    let mut settings = mqtt_settings(broker.port, "w");
    settings.write_enabled = true;
    settings.writable_tags = vec!["Setpoints/**".into()];
    let mut gw = Gateway::start(&settings, Some(writer));
    gw.wait_connected().await;
    // The sink subscribes right after CONNACK; give the SUBACK a moment by
    // round-tripping one command that must come back.
    let r = Rig {
        _broker: broker,
        sim,
        gw,
        sub,
    };
    r.command("Setpoints/Temp", br#"{"value":0.5,"id":"warmup"}"#)
        .await;
    r
}

impl Rig {
    async fn publish(&self, topic_suffix: &str, payload: &[u8], retain: bool) {
        self.sub
            .client
            .publish(
                format!("w/write/{topic_suffix}"),
                QoS::AtLeastOnce,
                retain,
                payload.to_vec(),
            )
            .await
            .unwrap();
    }

    /// Sends one command for `tag` and returns its result message.
    async fn command(&self, tag: &str, payload: &[u8]) -> Value {
        self.raw(&topic::encode(tag), payload, false).await
    }

    async fn raw(&self, suffix: &str, payload: &[u8], retain: bool) -> Value {
        let result_topic = format!("w/write-result/{suffix}");
        let before = self.sub.on(&result_topic).len();
        // The first command may race the sink's SUBSCRIBE; retry until answered.
        for _ in 0..20 {
            self.publish(suffix, payload, retain).await;
            let got = self
                .sub
                .wait_for(Duration::from_millis(500), |m| {
                    m.iter().filter(|m| m.topic == result_topic).count() > before
                })
                .await;
            if got {
                let msgs: Vec<Msg> = self.sub.on(&result_topic);
                let m = &msgs[before];
                assert!(!m.retain, "write results are not retained");
                return m.json();
            }
        }
        panic!("no write result on {result_topic}");
    }

    fn writes_at_station(&self) -> u64 {
        self.sim.stats().tags_written
    }
}

fn error_of(v: &Value) -> String {
    assert_eq!(v["ok"], false, "{v}");
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {v}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_writes_reach_the_station_and_answer_ok() {
    let r = rig(None).await;
    let v = r
        .command("Setpoints/Speed", br#"{"value":1234,"id":"w1"}"#)
        .await;
    assert_eq!(v, json!({"id":"w1","ok":true}));
    assert_eq!(r.sim.value("Setpoints/Speed"), Some(json!(1234)));
    // 5.0 is 5 for an integer tag; no id means a null id.
    let v = r.command("Setpoints/Speed", br#"{"value":5.0}"#).await;
    assert_eq!(v, json!({"id":null,"ok":true}));
    assert_eq!(r.sim.value("Setpoints/Speed"), Some(json!(5)));
    let v = r
        .command("Setpoints/Flag", br#"{"value":true,"id":7}"#)
        .await;
    assert_eq!(v, json!({"id":7,"ok":true}));
    assert_eq!(r.sim.value("Setpoints/Flag"), Some(json!(true)));
    // A hostile tag name travels escaped in the topic and back.
    let v = r.command(HOSTILE, br#"{"value":"hello","id":"h"}"#).await;
    assert_eq!(v, json!({"id":"h","ok":true}));
    assert_eq!(r.sim.value(HOSTILE), Some(json!("hello")));
    // Writes to one tag are carried out in order.
    for i in 0..20 {
        r.publish(
            "Setpoints/Speed",
            format!(r#"{{"value":{i}}}"#).as_bytes(),
            false,
        )
        .await;
    }
    assert!(
        r.sub
            .wait_for(T, |m| m
                .iter()
                .filter(|m| m.topic == "w/write-result/Setpoints/Speed")
                .count()
                >= 22)
            .await
    );
    assert_eq!(r.sim.value("Setpoints/Speed"), Some(json!(19)));
    r.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_malformed_commands_never_reach_the_station() {
    let r = rig(Some(("Setpoints/Flag", br#"{"value":true,"id":"ret"}"#))).await;
    // The retained command replayed on subscribe is not executed (it would be
    // replayed on every reconnect).
    let m = r
        .sub
        .wait_msg("w/write-result/Setpoints/Flag", T, |_| true)
        .await
        .expect("result for the retained command");
    assert!(error_of(&m.json()).contains("retained"), "{}", m.text());
    assert_eq!(m.json()["id"], "ret");
    r.publish("Setpoints/Flag", b"", true).await; // clear the retained command
    assert_eq!(r.sim.value("Setpoints/Flag"), Some(json!(false)));
    let written = r.writes_at_station();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "Other/Level",
            br#"{"value":1.5,"id":"a"}"#.to_vec(),
            "not in writable_tags",
        ),
        ("Setpoints/Locked", br#"{"value":1}"#.to_vec(), "read-only"),
        ("Setpoints/Nope", br#"{"value":1}"#.to_vec(), "unknown"),
        (
            "Setpoints/Speed",
            br#"{"value":"fast"}"#.to_vec(),
            "type mismatch",
        ),
        (
            "Setpoints/Flag",
            br#"{"value":1}"#.to_vec(),
            "type mismatch",
        ),
        (
            "Setpoints/Speed",
            br#"{"value":1.5}"#.to_vec(),
            "type mismatch",
        ),
        (
            "Setpoints/Speed",
            br#"{"value":70000}"#.to_vec(),
            "out of range",
        ),
        (
            "Setpoints/Speed",
            br#"{"value":null}"#.to_vec(),
            "type mismatch",
        ),
        ("Setpoints/Speed", b"not json".to_vec(), "malformed"),
        ("Setpoints/Speed", b"".to_vec(), "malformed"),
        (
            "Setpoints/Speed",
            br#"{"id":"m"}"#.to_vec(),
            "missing field `value`",
        ),
        (
            "Setpoints/Speed",
            br#"{"value":1,"force":true}"#.to_vec(),
            "unknown field",
        ),
        (
            "Setpoints/Speed",
            br#"{"value":1} {"value":2}"#.to_vec(),
            "trailing characters",
        ),
        ("Setpoints/Speed", br#"[1]"#.to_vec(), "malformed"),
        (
            "Setpoints/Speed",
            format!(r#"{{"value":"{}"}}"#, "x".repeat(MAX_COMMAND_BYTES)).into_bytes(),
            "exceeds",
        ),
    ];
    for (tag, payload, want) in &cases {
        let v = r.command(tag, payload).await;
        assert_eq!(
            v["ok"],
            false,
            "{tag} {:?}: {v}",
            String::from_utf8_lossy(&payload[..payload.len().min(40)])
        );
        let e = error_of(&v);
        assert!(
            e.contains(want),
            "{tag} {:?}: {e}",
            String::from_utf8_lossy(&payload[..payload.len().min(40)])
        );
    }
    // The id comes back even when the command is refused.
    let v = r.command("Other/Level", br#"{"value":1.5,"id":"a"}"#).await;
    assert_eq!(v["id"], "a");
    // A topic with a bad escape is answered on the same (raw) level.
    let v = r
        .raw("Setpoints/%ZZ", br#"{"value":1,"id":"esc"}"#, false)
        .await;
    assert!(error_of(&v).contains("percent escape"));
    assert_eq!(v["id"], "esc");
    assert_eq!(
        r.writes_at_station(),
        written,
        "a refused command reached the station"
    );
    assert_eq!(r.sim.value("Other/Level"), Some(json!(0.0)));
    assert_eq!(r.sim.value("Setpoints/Temp"), Some(json!(0.5)));
    r.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_outage_is_reported_and_writes_work_again_after_it() {
    let r = rig(None).await;
    r.sim.set_faults(Faults {
        outage_s: 3.0,
        ..Faults::default()
    });
    let v = r
        .command("Setpoints/Temp", br#"{"value":21.5,"id":"down"}"#)
        .await;
    assert!(error_of(&v).contains("station unavailable"), "{v}");
    assert_eq!(v["id"], "down");
    r.sim.set_faults(Faults::default());
    let mut ok = false;
    for _ in 0..50 {
        let v = r
            .command("Setpoints/Temp", br#"{"value":22.5,"id":"up"}"#)
            .await;
        if v["ok"] == true {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "writes did not work again after the outage");
    assert_eq!(r.sim.value("Setpoints/Temp"), Some(json!(22.5)));
    r.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_writes_disabled_no_write_topic_is_subscribed() {
    let broker = Mosquitto::start();
    let sub = TestSubscriber::connect(broker.port, "d/#").await;
    let mut gw = Gateway::start(&mqtt_settings(broker.port, "d"), None);
    gw.wait_connected().await;
    assert!(sub
        .wait_msg("d/status", T, |m| m.text() == "online")
        .await
        .is_some());
    sub.client
        .publish(
            "d/write/A",
            QoS::AtLeastOnce,
            false,
            br#"{"value":1}"#.to_vec(),
        )
        .await
        .unwrap();
    // The subscriber sees its own command; the sink must not answer it. A
    // marker published afterwards through the sink bounds the wait.
    assert!(sub.wait_msg("d/write/A", T, |_| true).await.is_some());
    gw.send(vec![common::change("marker", json!(1))]);
    assert!(sub.wait_msg("d/tags/marker", T, |_| true).await.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sub
        .messages()
        .iter()
        .all(|m| !m.topic.starts_with("d/write-result")));
    gw.stop().await;

    // write_enabled without a station writer is a configuration error.
    let mut s = mqtt_settings(broker.port, "d");
    s.write_enabled = true;
    let e = MqttSink::new(&s, None).err().expect("refused").to_string();
    assert!(e.contains("mqtt.write_enabled"), "{e}");
}

/// Contract §7: a write topic that is not exactly the encoding of a tag name
/// is refused and counted, never mapped to the tag it would decode to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_write_topics_are_refused_never_guessed() {
    let metrics = wincc_gateway::http::metrics_handle();
    let counted = || -> u64 {
        metrics
            .render()
            .lines()
            .filter(|l| {
                l.starts_with("wincc_gateway_writes_total{")
                    && l.contains("sink=\"mqtt\"")
                    && l.contains("reason=\"non_canonical_topic\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let r = rig(None).await;
    let before_count = counted();
    let written = r.writes_at_station();
    let hostile = topic::encode(HOSTILE);
    assert!(hostile.contains("%2B"), "{hostile}");
    let lower = hostile.replace("%2B", "%2b");
    let spellings = [
        "Setpoints%2FSpeed".to_string(), // the level separator escaped
        "Setpoints/Sp%65ed".to_string(), // a needless escape of 'e'
        "Setpoints%2fSpeed".to_string(), // the same, in lower-case hex
        "Setpoints//Speed".to_string(),  // an empty level
        lower,                           // lower-case hex of a hostile name
        "Setpoints/%C3%BC".to_string(),  // 'ü' needs no escape
    ];
    for s in &spellings {
        let v = r.raw(s, br#"{"value":77,"id":"nc"}"#, false).await;
        let e = error_of(&v);
        assert!(e.contains("not the canonical encoding"), "{s}: {e}");
        assert_eq!(v["id"], "nc");
    }
    assert_eq!(
        r.writes_at_station(),
        written,
        "a non-canonical topic reached the station"
    );
    assert_eq!(r.sim.value("Setpoints/Speed"), Some(json!(0)));
    assert_eq!(r.sim.value(HOSTILE), Some(json!("")));
    assert!(
        counted() >= before_count + spellings.len() as u64,
        "refusals not counted: {} -> {}",
        before_count,
        counted()
    );
    // The canonical spelling still works.
    let v = r.raw(&hostile, br#"{"value":"ok","id":"c"}"#, false).await;
    assert_eq!(v, json!({"id":"c","ok":true}));
    r.gw.stop().await;
}
