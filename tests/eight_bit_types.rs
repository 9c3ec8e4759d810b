//! Int8 and UInt8 tags end to end: the simulator over real HTTP, the
//! station clients, the poller, the OPC UA sink with the real async-opcua
//! client over TCP (SByte / Byte variables), and MQTT write commands
//! through a real mosquitto (out-of-range values refused before any station
//! call). Also a wincc-v7 station, whose variables say nothing about
//! writability: CurrentWrite follows `writable_tags`, and the station's
//! own refusal decides.

use crate::common;
use crate::opcua_support;

use std::sync::Arc;
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::rig::sim_with_writer;
use opcua::nodes::AccessLevel;
use opcua::types::{
    AttributeId, DataTypeId, DataValue, NodeId, NumericRange, StatusCode, Variant, WriteValue,
};
use opcua_support::{connect_user, eventually_read, read, start_on, NS};

const OPERATOR_PW: &str = "operator-Secret-1";

/// A session of the write user (anonymous sessions never write).
async fn connect_operator(url: &str, client_pki: &std::path::Path) -> opcua_support::Client {
    connect_user(url, "operator", OPERATOR_PW, client_pki).await
}
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::Bus;
use wincc_gateway::config::{Dialect, Settings};
use wincc_gateway::model::{TagInfo, TagType};
use wincc_gateway::poll::Poller;
use wincc_gateway::sim::{self, SimHandle, SimOptions};
use wincc_gateway::writes::{TagMap, Writer};

/// The simulator speaking `dialect` with two 8-bit tags and two Double
/// ones (one read-only at the station), the station client, the poller and
/// the OPC UA sink with writes allowed on `Small/**`.
async fn plant(
    dialect: Dialect,
) -> (
    SimHandle,
    opcua_support::Gateway,
    CancellationToken,
    tempfile::TempDir,
) {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: 5,
            change_rate: 0.0,
            alarms: false,
            dialect,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    for (name, ty, writable, v) in [
        ("Small/I8", TagType::Int8, true, json!(-5)),
        ("Small/U8", TagType::UInt8, true, json!(200)),
        ("Small/Setpoint", TagType::Double, true, json!(1.0)),
        ("Small/Locked", TagType::Double, false, json!(5.0)),
    ] {
        sim.add_tag(
            TagInfo {
                name: name.into(),
                ty,
                writable,
            },
            v,
        );
    }
    let pki = tempfile::tempdir().unwrap();
    let pw = pki.path().join("station-password");
    std::fs::write(&pw, "gateway").unwrap();
    // Only a user with role "write" may write over OPC UA (contract §8).
    let op_pw = pki.path().join("operator-password");
    std::fs::write(&op_pw, OPERATOR_PW).unwrap();
    let (base, auth) = match dialect {
        Dialect::WinccV7 => (
            format!("{}/WinCCRestService", sim.base_url()),
            format!("auth = \"basic\"\nusername = \"gateway\"\npassword_file = {pw:?}"),
        ),
        _ => (sim.base_url(), "auth = \"none\"".to_string()),
    };
    let toml = format!(
        r#"
[wincc]
base_url = "{base}"
dialect = "{dialect}"
{auth}
timeout_ms = 1000
[wincc.rate_limit]
requests_per_second = 500
burst = 50
max_in_flight = 4
[[poll_group]]
name = "fast"
interval_ms = 100
tags = ["Small/**"]
[alarms]
enabled = false
[mqtt]
enabled = false
[opcua]
endpoint = "opc.tcp://127.0.0.1:0/"
namespace_uri = "{NS}"
pki_dir = "{pki}"
users = [{{ username = "operator", password_file = {op_pw:?}, role = "write" }}]
write_enabled = true
writable_tags = ["Small/**"]
[http]
enabled = false
"#,
        dialect = dialect.as_str(),
        pki = pki.path().display(),
    );
    let settings = Settings::from_toml_with_env(&toml, "test", std::iter::empty()).unwrap();
    let station = wincc_gateway::wincc::connect(&settings).unwrap();
    let (tags_tx, tags_rx) = watch::channel(Arc::new(TagMap::new()));
    let writer = Writer::new(station.clone(), tags_rx);
    let bus = Bus::new();
    let gw = start_on(bus.clone(), &settings.opcua, Some(writer)).await;
    let stop = CancellationToken::new();
    let poller = Poller::new(&settings, station, bus, tags_tx);
    let token = stop.clone();
    tokio::spawn(async move { poller.run(token).await });
    (sim, gw, stop, pki)
}

fn write_value(node: &NodeId, value: Variant) -> WriteValue {
    WriteValue {
        node_id: node.clone(),
        attribute_id: AttributeId::Value as u32,
        index_range: NumericRange::None,
        value: DataValue::new_now(value),
    }
}

async fn write(c: &opcua_support::Client, node: &NodeId, value: Variant) -> StatusCode {
    c.session
        .write(&[write_value(node, value)])
        .await
        .expect("write service")[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_tags_are_sbyte_and_byte_variables_over_opcua() {
    for dialect in [Dialect::Generic, Dialect::WinccV7] {
        let (sim, gw, stop, _pki) = plant(dialect).await;
        let client_pki = tempfile::tempdir().unwrap();
        let c = connect_operator(&gw.url, client_pki.path()).await;
        let ns = c.session.get_namespace_index(NS).await.unwrap();
        let (i8n, u8n) = (NodeId::new(ns, "Small/I8"), NodeId::new(ns, "Small/U8"));
        eventually_read(&c.session, &u8n, |dv| dv.value == Some(Variant::Byte(200))).await;
        let v = read(&c.session, &[i8n.clone(), u8n.clone()], AttributeId::Value).await;
        assert_eq!(v[0].value, Some(Variant::SByte(-5)), "{dialect:?}");
        let types = read(
            &c.session,
            &[i8n.clone(), u8n.clone()],
            AttributeId::DataType,
        )
        .await;
        assert_eq!(
            types.iter().map(|d| d.value.clone()).collect::<Vec<_>>(),
            [
                Some(Variant::from(NodeId::from(DataTypeId::SByte))),
                Some(Variant::from(NodeId::from(DataTypeId::Byte)))
            ],
            "{dialect:?}"
        );
        assert_eq!(
            write(&c, &i8n, Variant::SByte(-128)).await,
            StatusCode::Good
        );
        assert_eq!(sim.value("Small/I8"), Some(json!(-128)));
        assert_eq!(write(&c, &u8n, Variant::Byte(255)).await, StatusCode::Good);
        assert_eq!(sim.value("Small/U8"), Some(json!(255)));
        // Exactly the variable's type: an Int16 of 7 is not an SByte.
        assert_eq!(
            write(&c, &i8n, Variant::Int16(7)).await,
            StatusCode::BadTypeMismatch
        );
        assert_eq!(sim.value("Small/I8"), Some(json!(-128)));
        c.close().await;
        stop.cancel();
        gw.shutdown().await;
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v7_station_decides_writability_and_current_write_follows_writable_tags() {
    let (sim, gw, stop, _pki) = plant(Dialect::WinccV7).await;
    let client_pki = tempfile::tempdir().unwrap();
    let c = connect_operator(&gw.url, client_pki.path()).await;
    let ns = c.session.get_namespace_index(NS).await.unwrap();
    let (set, locked) = (
        NodeId::new(ns, "Small/Setpoint"),
        NodeId::new(ns, "Small/Locked"),
    );
    eventually_read(&c.session, &locked, |dv| {
        dv.value == Some(Variant::Double(5.0))
    })
    .await;
    // Both allow-listed and neither said read-only by the station's
    // variable list: CurrentWrite on both.
    let rw = (AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE).bits();
    let levels: Vec<_> = read(
        &c.session,
        &[set.clone(), locked.clone()],
        AttributeId::UserAccessLevel,
    )
    .await
    .into_iter()
    .map(|d| d.value)
    .collect();
    assert_eq!(levels, [Some(Variant::Byte(rw)), Some(Variant::Byte(rw))]);
    assert_eq!(
        write(&c, &set, Variant::Double(2.5)).await,
        StatusCode::Good
    );
    assert_eq!(sim.value("Small/Setpoint"), Some(json!(2.5)));
    // The station refuses the read-only one with its error code: not Good,
    // and the value stays.
    let status = write(&c, &locked, Variant::Double(9.0)).await;
    assert!(status.is_bad(), "{status}");
    assert_eq!(sim.value("Small/Locked"), Some(json!(5.0)));
    c.close().await;
    stop.cancel();
    gw.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_writes_of_8_bit_values_are_refused_out_of_range_before_the_station() {
    let (sim, writer) = sim_with_writer(
        5,
        &[
            ("Small/I8", TagType::Int8, true, json!(0)),
            ("Small/U8", TagType::UInt8, true, json!(0)),
        ],
    )
    .await;
    let broker = Mosquitto::start();
    let sub = common::TestSubscriber::connect(broker.port, "b/write-result/#").await;
    let mut settings = common::mqtt_settings(broker.port, "b");
    settings.write_enabled = true;
    settings.writable_tags = vec!["Small/**".into()];
    let mut gw = common::Gateway::start(&settings, Some(writer));
    gw.wait_connected().await;
    let mut answered = 0;
    let mut command = |tag: &'static str, value: serde_json::Value| {
        answered += 1;
        let n = answered;
        let sub = &sub;
        async move {
            let topic = format!("b/write-result/{tag}");
            // The first command may race the sink's SUBSCRIBE: repeat until answered.
            for _ in 0..20 {
                sub.client
                    .publish(
                        format!("b/write/{tag}"),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        json!({"value": value, "id": n}).to_string(),
                    )
                    .await
                    .unwrap();
                if let Some(m) = sub
                    .wait_msg(&topic, Duration::from_millis(500), |m| m.json()["id"] == n)
                    .await
                {
                    return m.json();
                }
            }
            panic!("no write result for {tag}");
        }
    };
    let ok = command("Small/I8", json!(-128)).await;
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(sim.value("Small/I8"), Some(json!(-128)));
    let ok = command("Small/U8", json!(255)).await;
    assert_eq!(ok["ok"], true, "{ok}");
    let written = sim.stats().tags_written;
    for (tag, v) in [
        ("Small/I8", json!(128)),
        ("Small/I8", json!(-129)),
        ("Small/U8", json!(256)),
        ("Small/U8", json!(-1)),
    ] {
        let r = command(tag, v.clone()).await;
        assert_eq!(r["ok"], false, "{tag} <- {v}: {r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains("out of range"), "{e}");
        assert!(
            e.contains(if tag.ends_with("I8") {
                "-128..=127"
            } else {
                "0..=255"
            }),
            "{e}"
        );
    }
    assert_eq!(
        sim.stats().tags_written,
        written,
        "no refused write reached the station"
    );
    assert_eq!(sim.value("Small/I8"), Some(json!(-128)));
    assert_eq!(sim.value("Small/U8"), Some(json!(255)));
    gw.stop().await;
}
