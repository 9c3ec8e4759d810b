//! The write audit trail: every write from any sink, accepted or refused,
//! is one log line and one count of
//! `wincc_gateway_writes_total{sink,result,reason}`. Driven by real clients:
//! the async-opcua client over TCP against the OPC UA sink, and rumqttc
//! (MQTT 5) through the embedded broker against the MQTT sink, both with
//! the simulator as the station. Also: a retained MQTT 5 write command is
//! refused while the gateway is connected (Retain-As-Published).
#![cfg(feature = "demo")]

use crate::common;
use crate::opcua_support;
use common::log_capture::{lines_with, log};

use std::time::Duration;

use opcua::types::{AttributeId, DataValue, NodeId, NumericRange, StatusCode, Variant, WriteValue};
use serde_json::json;
use wincc_gateway::config::MqttProtocol;
use wincc_gateway::model::TagType;

fn count(sink: &str, result: &str, reason: &str) -> u64 {
    let text = wincc_gateway::http::metrics_handle().render();
    text.lines()
        .filter(|l| l.starts_with("wincc_gateway_writes_total{"))
        .filter(|l| {
            l.contains(&format!("sink=\"{sink}\""))
                && l.contains(&format!("result=\"{result}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const TAGS: &[(&str, TagType, bool)] = &[
    ("Audit/Setpoint", TagType::Double, true),
    ("Audit/NotListed", TagType::Double, true),
    ("Audit/ReadOnly", TagType::Double, false),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_writes_accepted_and_refused_are_logged_and_counted() {
    use opcua_support::*;
    let _ = log();
    let tags: Vec<(&str, TagType, bool, serde_json::Value)> = TAGS
        .iter()
        .map(|(n, t, w)| (*n, *t, *w, json!(1.0)))
        .collect();
    let (sim, writer) = common::rig::sim_with_writer(0, &tags).await;
    let pki = tempfile::tempdir().unwrap();
    let client_pki = tempfile::tempdir().unwrap();
    let mut s = settings(pki.path());
    // Only a user with role "write" may write (contract §8).
    let op_pw = pki.path().join("operator-password");
    std::fs::write(&op_pw, "audit-Secret-1").unwrap();
    s.users = vec![wincc_gateway::config::OpcuaUser {
        username: "operator".into(),
        password_env: String::new(),
        password_file: op_pw.display().to_string(),
        role: wincc_gateway::config::OpcuaRole::Write,
    }];
    s.write_enabled = true;
    s.writable_tags = vec!["Audit/Setpoint".into(), "Audit/ReadOnly".into()];
    let gw = start(&s, Some(writer)).await;
    gw.tags(TAGS);
    let c = connect_user(&gw.url, "operator", "audit-Secret-1", client_pki.path()).await;
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    let write = |tag: &str, v: Variant| WriteValue {
        node_id: NodeId::new(ns, tag),
        attribute_id: AttributeId::Value as u32,
        index_range: NumericRange::None,
        value: DataValue::new_now(v),
    };

    let before = (
        count("opcua", "accepted", "none"),
        count("opcua", "refused", "not_allowed"),
        count("opcua", "refused", "type_mismatch"),
        count("opcua", "refused", "unknown_tag"),
    );
    let results = c
        .session
        .write(&[
            write("Audit/Setpoint", Variant::Double(2.5)),
            write("Audit/NotListed", Variant::Double(2.5)),
            write("Audit/ReadOnly", Variant::Double(2.5)),
            write("Audit/Setpoint", Variant::String("x".into())),
            write("Audit/Nowhere", Variant::Double(2.5)),
        ])
        .await
        .unwrap();
    assert_eq!(results[0], StatusCode::Good);
    assert_eq!(results[1], StatusCode::BadUserAccessDenied);
    assert_eq!(results[2], StatusCode::BadUserAccessDenied);
    assert_eq!(results[3], StatusCode::BadTypeMismatch);
    assert_eq!(results[4], StatusCode::BadNodeIdUnknown);
    assert_eq!(sim.value("Audit/Setpoint"), Some(json!(2.5)));
    assert_eq!(sim.value("Audit/NotListed"), Some(json!(1.0)));

    // Counted: read-only at the station and not listed are both "not_allowed".
    assert_eq!(count("opcua", "accepted", "none"), before.0 + 1);
    assert_eq!(count("opcua", "refused", "not_allowed"), before.1 + 2);
    assert_eq!(count("opcua", "refused", "type_mismatch"), before.2 + 1);
    assert_eq!(count("opcua", "refused", "unknown_tag"), before.3 + 1);
    // Logged: one line per write, naming the sink, tag and reason.
    let accepted = lines_with("tag=\"Audit/Setpoint\"");
    assert!(
        accepted
            .iter()
            .any(|l| l.contains("write accepted") && l.contains("value=\"2.5\"")),
        "{accepted:#?}"
    );
    for (tag, reason) in [
        ("Audit/NotListed", "not_allowed"),
        ("Audit/ReadOnly", "not_allowed"),
        ("Audit/Nowhere", "unknown_tag"),
    ] {
        let lines = lines_with(&format!("tag=\"{tag}\""));
        assert_eq!(lines.len(), 1, "{tag}: {lines:#?}");
        assert!(lines[0].contains("sink=\"opcua\""), "{}", lines[0]);
        assert!(
            lines[0].contains(&format!("reason=\"{reason}\"")),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("write refused"), "{}", lines[0]);
    }
    assert!(!lines_with("Some(").iter().any(|l| l.contains("write")));
    c.close().await;
    gw.shutdown().await;
    sim.shutdown().await;
}

/// MQTT: a malformed command and a retained one (MQTT 5 keeps the retain
/// flag with Retain-As-Published) are refused, logged and counted; the
/// station is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_malformed_and_retained_commands_are_refused_logged_and_counted() {
    use common::{mqtt_settings, Gateway, TestSubscriber};
    let _ = log();
    let (sim, writer) =
        common::rig::sim_with_writer(0, &[("Audit/Mqtt", TagType::Double, true, json!(1.0))]).await;
    let broker =
        wincc_gateway::sinks::broker::start_embedded_broker("127.0.0.1:0".parse().unwrap())
            .unwrap();
    let port = broker.addr.port();
    let mut settings = mqtt_settings(port, "audit");
    settings.protocol = MqttProtocol::V5;
    settings.write_enabled = true;
    settings.writable_tags = vec!["Audit/**".into()];
    let mut gw = Gateway::start(&settings, Some(writer));
    gw.wait_connected().await;
    let results = TestSubscriber::connect(port, "audit/write-result/#").await;
    // The write subscription is in place once a command gets an answer.
    let mut opts = rumqttc::MqttOptions::new("commander", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

    let before = (
        count("mqtt", "refused", "malformed"),
        count("mqtt", "refused", "retained"),
        count("mqtt", "accepted", "none"),
    );
    let topic = "audit/write/Audit/Mqtt";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, "not json")
            .await
            .unwrap();
        if results
            .wait_msg(
                "audit/write-result/Audit/Mqtt",
                Duration::from_secs(1),
                |_| true,
            )
            .await
            .is_some()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no write result");
    }
    results.clear();
    client
        .publish(
            topic,
            rumqttc::QoS::AtLeastOnce,
            true,
            r#"{"value":9.5,"id":"r"}"#,
        )
        .await
        .unwrap();
    let r = results
        .wait_msg(
            "audit/write-result/Audit/Mqtt",
            Duration::from_secs(10),
            |m| m.json()["id"] == "r",
        )
        .await
        .expect("a result for the retained command");
    assert_eq!(r.json()["ok"], false, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("retained"),
        "{}",
        r.text()
    );
    assert_eq!(sim.value("Audit/Mqtt"), Some(json!(1.0)), "never written");
    // A proper command goes through (the retained one stays stored in the
    // broker; the existing subscription does not get it again).
    results.clear();
    client
        .publish(
            topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            r#"{"value":3.5,"id":"ok"}"#,
        )
        .await
        .unwrap();
    let r = results
        .wait_msg(
            "audit/write-result/Audit/Mqtt",
            Duration::from_secs(10),
            |m| m.json()["id"] == "ok",
        )
        .await
        .expect("a result for the proper command");
    assert_eq!(r.json()["ok"], true, "{}", r.text());
    assert_eq!(sim.value("Audit/Mqtt"), Some(json!(3.5)));

    assert!(count("mqtt", "refused", "malformed") > before.0);
    assert_eq!(count("mqtt", "refused", "retained"), before.1 + 1);
    assert_eq!(count("mqtt", "accepted", "none"), before.2 + 1);
    let retained = lines_with("reason=\"retained\"");
    assert_eq!(retained.len(), 1, "{retained:#?}");
    assert!(retained[0].contains("Audit/Mqtt"), "{}", retained[0]);
    gw.stop().await;
    sim.shutdown().await;
}
