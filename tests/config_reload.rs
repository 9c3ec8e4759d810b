//! Configuration reload under a running gateway (what SIGHUP does): a
//! deadband and the MQTT allow-list change take effect while the same MQTT
//! connection (no new `online` birth) and the same OPC UA session stay
//! open; a file with problems changes nothing; a key that needs a restart
//! is named and left alone. Real mosquitto, simulator and OPC UA client.

use std::time::Duration;

use opcua::types::{AttributeId, NodeId, Variant};
use serde_json::json;
use wincc_gateway::config::{AuthMode, Dialect, Settings};
use wincc_gateway::model::{TagInfo, TagType};
use wincc_gateway::topic;

use crate::common::mosquitto::{free_port, Mosquitto};
use crate::common::station::{poll_group, quiet, settings, start_sim, wincc_settings};
use crate::common::{mqtt_settings, TestSubscriber};
use crate::opcua_support::{self, connect_anonymous, read, NS};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadband_and_an_allow_list_change_without_dropping_mqtt_or_opcua_sessions() {
    let broker = Mosquitto::start();
    let sim = start_sim(quiet(20, AuthMode::None, "")).await;
    let (analog, writable) = ("Reload/Level".to_string(), "Reload/Setpoint".to_string());
    sim.add_tag(
        TagInfo {
            name: analog.clone(),
            ty: TagType::Double,
            writable: false,
        },
        json!(0.0),
    );
    sim.add_tag(
        TagInfo {
            name: writable.clone(),
            ty: TagType::Int32,
            writable: true,
        },
        json!(0),
    );
    let pki = tempfile::tempdir().unwrap();
    let mut s: Settings = settings(
        wincc_settings(&sim, Dialect::Generic),
        vec![poll_group("all", &["**"], 100)],
    );
    s.mqtt = mqtt_settings(broker.port, "r");
    s.mqtt.write_enabled = true;
    s.mqtt.writable_tags = vec![];
    s.opcua = opcua_support::settings(pki.path());
    s.opcua.endpoint = format!("opc.tcp://127.0.0.1:{}/", free_port());
    s.http.listen = "127.0.0.1:0".into();
    let sub = TestSubscriber::connect(broker.port, "r/#").await;
    let mut gw = wincc_gateway::gateway::start(s.clone()).await.unwrap();

    let value_topic = format!("r/tags/{}", topic::encode(&analog));
    let values_in = |msgs: &[crate::common::Msg]| -> Vec<f64> {
        msgs.iter()
            .filter(|m| m.topic == value_topic)
            .filter_map(|m| m.json()["value"].as_f64())
            .collect()
    };
    let values = |sub: &TestSubscriber| values_in(&sub.messages());
    sim.set_value(&analog, json!(100.0));
    assert!(
        sub.wait_for(T, |m| values_in(m).contains(&100.0)).await,
        "{analog} = 100 published: {:?}",
        values(&sub)
    );
    let client_pki = tempfile::tempdir().unwrap();
    let client = connect_anonymous(&s.opcua.endpoint, client_pki.path()).await;
    let ns = client.session.get_namespace_index(NS).await.unwrap();
    let node = NodeId::new(ns, analog.as_str());

    // A write to a tag not (yet) allowed is refused by the gateway.
    let result_topic = format!("r/write-result/{}", topic::encode(&writable));
    let command = |id: &str| {
        let c = sub.client.clone();
        let (t, p) = (
            format!("r/write/{}", topic::encode(&writable)),
            json!({"value": 7, "id": id}).to_string(),
        );
        async move {
            c.publish(t, rumqttc::QoS::AtLeastOnce, false, p)
                .await
                .unwrap()
        }
    };
    let result_in = |msgs: &[crate::common::Msg], id: &str| {
        msgs.iter()
            .filter(|m| m.topic == result_topic)
            .map(|m| m.json())
            .find(|j| j["id"] == id)
    };
    let result_of = |sub: &TestSubscriber, id: &str| result_in(&sub.messages(), id);
    for _ in 0..20 {
        command("before").await;
        if sub
            .wait_for(Duration::from_millis(500), |m| {
                result_in(m, "before").is_some()
            })
            .await
        {
            break;
        }
    }
    let before = result_of(&sub, "before").expect("a write result");
    assert_eq!(before["ok"], false, "{before}");
    assert!(
        before["error"].as_str().unwrap().contains("writable_tags"),
        "{before}"
    );

    // A file with problems changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[wincc]\nbase_url = \"ftp://x\"\n").unwrap();
    assert!(gw.reload_from(&bad).is_none());
    assert_eq!(gw.config().version, 1);

    // Reload: deadband 10 and the tag allowed; also a key that needs a restart.
    let births = sub.on("r/status").iter().filter(|m| !m.retain).count();
    let mut new = s.clone();
    new.poll_groups[0].deadband_abs = 10.0;
    new.mqtt.writable_tags = vec![writable.clone()];
    new.wincc.timeout_ms = 3000;
    let plan = gw.reload(new, "test");
    assert_eq!(plan.rules.len(), 1, "{plan:?}");
    assert!(plan.mqtt_writable.is_some(), "{plan:?}");
    assert_eq!(plan.restart, vec!["wincc".to_string()], "{plan:?}");
    assert_eq!(gw.config().version, 2);
    let health: serde_json::Value = crate::common::sim::client()
        .get(format!("http://{}/healthz", gw.http_addr.unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["config"]["version"], 2, "{health}");
    assert_eq!(health["config"]["sha256"], "test", "{health}");

    // Within the new deadband: not published (polled for at least 10 cycles).
    // (A cycle that began before the reload may still be reading: let it end.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set_value(&analog, json!(105.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    sim.set_value(&analog, json!(120.0));
    assert!(
        sub.wait_for(T, |m| values_in(m).contains(&120.0)).await,
        "{analog} = 120 published: {:?}",
        values(&sub)
    );
    let seen = values(&sub);
    assert!(
        !seen.contains(&105.0),
        "105 is within the deadband of 10 from 100: {seen:?}"
    );

    // The write is allowed now.
    for _ in 0..20 {
        command("after").await;
        if sub
            .wait_for(Duration::from_millis(500), |m| {
                result_in(m, "after").is_some()
            })
            .await
        {
            break;
        }
    }
    let after = result_of(&sub, "after").expect("a write result");
    assert_eq!(after["ok"], true, "{after}");
    assert_eq!(sim.value(&writable), Some(json!(7)));

    // The same OPC UA session sees the new value; the MQTT connection was
    // never re-established (no new `online` birth message).
    let mut shown = None;
    for _ in 0..50 {
        let dv = read(
            &client.session,
            std::slice::from_ref(&node),
            AttributeId::Value,
        )
        .await;
        shown = dv[0].value.clone();
        if shown == Some(Variant::Double(120.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown, Some(Variant::Double(120.0)));
    assert!(
        !client.event_loop.is_finished(),
        "the OPC UA session stayed open"
    );
    assert_eq!(
        sub.on("r/status").iter().filter(|m| !m.retain).count(),
        births,
        "no MQTT reconnect"
    );
    client.close().await;
    gw.shutdown().await;
}
