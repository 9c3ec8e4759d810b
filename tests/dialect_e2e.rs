//! The same end-to-end path — station → poller → MQTT (real mosquitto) and
//! OPC UA (real client over TCP) — against all three dialects of the
//! simulator with identical station data: the output must be identical.

use crate::common;
use crate::opcua_support;

use std::collections::BTreeMap;
use std::time::Duration;

use common::mosquitto::{free_port, Mosquitto};
use common::{wait, TestSubscriber};
use opcua::types::{AttributeId, NodeId};
use wincc_gateway::config::{Dialect, Settings};
use wincc_gateway::sim::{self, SimOptions};

const TAGS: usize = 60;
const PASSWORD: &str = "e2e-Secret-1";

/// What a subscriber or client sees of one tag (timestamps aside: each
/// simulator instance stamps its own start time).
type Seen = BTreeMap<String, String>;

fn settings(
    base_url: &str,
    dialect: Dialect,
    mqtt: u16,
    opcua: u16,
    pki: &std::path::Path,
    pw: &std::path::Path,
) -> Settings {
    let (dialect_name, auth) = match dialect {
        Dialect::Generic => ("generic", "session"),
        Dialect::WinccV7 => ("wincc-v7", "basic"),
        Dialect::Unified => ("unified", "session"),
    };
    let toml = format!(
        r#"
[wincc]
base_url = "{base_url}"
dialect = "{dialect_name}"
auth = "{auth}"
username = "gateway"
password_file = {pw:?}
timeout_ms = 3000
[wincc.rate_limit]
requests_per_second = 200
burst = 50
max_in_flight = 2
[[poll_group]]
name = "all"
interval_ms = 300
tags = ["**"]
heartbeat_s = 0
[alarms]
enabled = false
[mqtt]
url = "mqtt://127.0.0.1:{mqtt}"
client_id = "e2e-{dialect_name}"
topic_prefix = "e2e/{dialect_name}"
[opcua]
endpoint = "opc.tcp://127.0.0.1:{opcua}/"
namespace_uri = "urn:wincc-gateway:e2e"
security_policies = ["None"]
pki_dir = {pki:?}
trust_client_certs = true
[http]
enabled = false
"#,
        pw = pw.display().to_string(),
        pki = pki.display().to_string(),
    );
    Settings::from_toml_with_env(&toml, "e2e", std::iter::empty()).unwrap()
}

async fn output(dialect: Dialect, broker: &Mosquitto) -> (Seen, Seen) {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: TAGS,
            change_rate: 0.0,
            alarms: false,
            dialect,
            auth: wincc_gateway::config::AuthMode::Session,
            users: vec![("gateway".into(), PASSWORD.into())],
            seed: 7,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // DateTime values are made from each simulator's start time: pin them.
    for t in sim.tags() {
        if t.ty == wincc_gateway::model::TagType::DateTime {
            sim.set_value(&t.name, serde_json::json!("2026-01-02T03:04:05.678Z"));
        }
    }
    let base_url = match dialect {
        Dialect::Generic => sim.base_url(),
        Dialect::WinccV7 => format!("{}/WinCCRestService", sim.base_url()),
        Dialect::Unified => format!("{}/graphql", sim.base_url()),
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let opcua_port = free_port();
    let s = settings(
        &base_url,
        dialect,
        broker.port,
        opcua_port,
        &dir.path().join("pki"),
        &pw,
    );
    let prefix = s.mqtt.topic_prefix.clone();
    let sub = TestSubscriber::connect(broker.port, &format!("{prefix}/tags/#")).await;
    let gw = wincc_gateway::gateway::start(s).await.unwrap();

    // MQTT: every tag's payload, less its timestamp.
    let names = sim.tag_names();
    assert!(
        wait(Duration::from_secs(20), || {
            let topics: std::collections::HashSet<String> =
                sub.messages().into_iter().map(|m| m.topic).collect();
            topics.len() >= names.len()
        })
        .await,
        "{dialect:?}: only {} of {} tag topics",
        sub.messages().len(),
        names.len()
    );
    let mut mqtt = Seen::new();
    for m in sub.messages() {
        let mut j = m.json();
        let ts = j.as_object_mut().unwrap().remove("timestamp");
        assert!(
            ts.is_some_and(|t| t.as_str().is_some_and(|t| t.ends_with('Z'))),
            "{}",
            m.topic
        );
        mqtt.insert(m.topic[prefix.len()..].to_string(), j.to_string());
    }

    // OPC UA: value, status and data type of every tag's variable.
    let client_pki = dir.path().join("client-pki");
    let url = format!("opc.tcp://127.0.0.1:{opcua_port}/");
    let client = opcua_support::connect_anonymous(&url, &client_pki).await;
    let ns = client
        .session
        .get_namespace_index("urn:wincc-gateway:e2e")
        .await
        .unwrap();
    let nodes: Vec<NodeId> = names.iter().map(|n| NodeId::new(ns, n.clone())).collect();
    let values = opcua_support::read(&client.session, &nodes, AttributeId::Value).await;
    let types = opcua_support::read(&client.session, &nodes, AttributeId::DataType).await;
    let mut opcua = Seen::new();
    for ((name, v), t) in names.iter().zip(values).zip(types) {
        opcua.insert(
            name.clone(),
            format!(
                "{:?} {:?} {:?}",
                v.value,
                v.status.unwrap_or_default(),
                t.value
            ),
        );
    }
    client.close().await;
    gw.shutdown().await;
    sim.shutdown().await;
    (mqtt, opcua)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_gives_the_same_mqtt_and_opcua_output() {
    let broker = Mosquitto::start();
    let (generic_mqtt, generic_opcua) = output(Dialect::Generic, &broker).await;
    assert_eq!(generic_mqtt.len(), TAGS);
    assert!(
        generic_mqtt
            .keys()
            .any(|t| t.contains("%23") || t.contains("%2B")),
        "hostile names included"
    );
    for dialect in [Dialect::WinccV7, Dialect::Unified] {
        let (mqtt, opcua) = output(dialect, &broker).await;
        assert_eq!(mqtt.len(), generic_mqtt.len(), "{dialect:?}");
        for (topic, payload) in &generic_mqtt {
            let theirs = mqtt
                .get(topic)
                .unwrap_or_else(|| panic!("{dialect:?}: no {topic}"));
            // `quality_code` is the station's own code where it gives one
            // (contract §6): wincc-v7 always sends its raw quality byte,
            // Unified reports quality as an enum and gives none.
            let mut a: serde_json::Value = serde_json::from_str(payload).unwrap();
            let mut b: serde_json::Value = serde_json::from_str(theirs).unwrap();
            a.as_object_mut().unwrap().remove("quality_code");
            let code = b.as_object_mut().unwrap().remove("quality_code");
            match dialect {
                Dialect::WinccV7 => assert!(
                    code.is_some_and(|c| c.as_u64().is_some_and(|c| c <= 0xFF)),
                    "{topic}: {theirs}"
                ),
                _ => assert!(code.is_none(), "{topic}: {theirs}"),
            }
            assert_eq!(a, b, "{dialect:?} {topic}");
        }
        assert_eq!(opcua, generic_opcua, "{dialect:?}: OPC UA output differs");
    }
}
