//! The broker-outage scenario, shared by the MQTT 3.1.1 and MQTT 5 tests.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use wincc_gateway::config::MqttProtocol;

use super::mosquitto::{Mosquitto, MosquittoOptions};
use super::{change, mqtt_settings, Gateway, Msg, TestSubscriber};

const TAGS: usize = 40;

/// Per tag, the sequence values in the order the subscriber got them.
fn sequences(msgs: &[Msg], prefix: &str) -> HashMap<String, Vec<i64>> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for m in msgs {
        if let Some(tag) = m.topic.strip_prefix(prefix) {
            out.entry(tag.to_string())
                .or_default()
                .push(m.json()["value"].as_i64().unwrap());
        }
    }
    out
}

/// The broker goes away mid-stream (SIGKILL without persistence, SIGTERM
/// with a persistent session) while 40 tags keep changing; afterwards every
/// tag's newest value arrives, none goes backwards, the outage's values are
/// coalesced and the broker holds the newest values retained.
pub async fn outage(persistent: bool, protocol: MqttProtocol) {
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: persistent,
        ..Default::default()
    });
    let sub = TestSubscriber::connect(broker.port, "o/tags/#").await;
    let mut settings = mqtt_settings(broker.port, "o");
    settings.clean_session = !persistent;
    settings.protocol = protocol;
    let mut gw = Gateway::start(&settings, None);
    gw.wait_connected().await;

    // Tags 0-9 change all the time, 10-19 only until the broker is back,
    // 20-39 only before the outage (their last values are in flight when the
    // broker dies: exactly what rumqttc would drop).
    let names: Vec<String> = (0..TAGS).map(|i| format!("Area/Tag{i:02}")).collect();
    let mut expected: HashMap<String, i64> = HashMap::new();
    let mut send = |gw: &Gateway, seq: i64, upto: usize| {
        let mut batch: Vec<_> = names[..upto]
            .iter()
            .map(|n| change(n, json!(seq)))
            .collect();
        batch.rotate_left(seq as usize % upto);
        for n in &names[..upto] {
            expected.insert(n.clone(), seq);
        }
        gw.send(batch);
    };
    let mut seq = 0;
    for _ in 0..20 {
        seq += 1;
        send(&gw, seq, TAGS);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seq += 1;
    send(&gw, seq, TAGS);
    let before_outage = seq;
    // Broker gone (SIGKILL for the volatile one: nothing is saved, in-flight
    // messages are lost; SIGTERM for the persistent one so the session is kept).
    if persistent {
        broker.stop();
    } else {
        broker.kill();
    }
    let mut state = gw.state.clone();
    assert!(
        tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| !s.is_connected())
        )
        .await
        .is_ok(),
        "sink did not notice the outage"
    );
    for _ in 0..150 {
        seq += 1;
        send(&gw, seq, 20);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.restart();
    // Tags 0-9 keep changing while the sink reconnects and catches up.
    for _ in 0..30 {
        seq += 1;
        send(&gw, seq, 10);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected_ok = |s: &HashMap<String, Vec<i64>>| {
        s.len() == TAGS
            && expected
                .iter()
                .all(|(k, v)| s.get(k).and_then(|x| x.last()) == Some(v))
    };
    let ok = sub
        .wait_for(Duration::from_secs(20), |msgs| {
            expected_ok(&sequences(msgs, "o/tags/"))
        })
        .await;
    let s = sequences(&sub.messages(), "o/tags/");
    assert!(
        ok,
        "not every tag reached its newest value: got {:?}, want {expected:?}",
        s.iter().map(|(k, v)| (k, v.last())).collect::<Vec<_>>()
    );
    for (tag, values) in &s {
        assert!(
            values.windows(2).all(|w| w[0] <= w[1]),
            "{tag} went backwards: {values:?}"
        );
    }
    // The outage's intermediate values were coalesced, not queued.
    let total: usize = s.values().map(Vec::len).sum();
    // Without coalescing it would be 21*40 + 150*20 + 30*10 = 4140.
    assert!(
        total < 21 * 40 + 30 * 10 + 20 * 10,
        "outage values were queued, not coalesced ({total} messages)"
    );
    assert!(s.values().all(|v| v[0] <= before_outage));

    // The broker holds the newest value retained.
    let late = TestSubscriber::connect(broker.port, "o/tags/#").await;
    assert!(
        late.wait_for(Duration::from_secs(10), |m| m.len() >= TAGS)
            .await
    );
    let r = sequences(&late.messages(), "o/tags/");
    assert!(r.iter().all(|(k, v)| v == &[expected[k]]), "{r:?}");
    gw.stop().await;
}
