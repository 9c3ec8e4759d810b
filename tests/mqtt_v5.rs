//! The MQTT sink with `protocol = "5"` against a real mosquitto, checked by
//! an independent MQTT 5 subscriber: contract payloads and topics, the v5
//! properties (content type, UTF-8 payload format), retained status and last
//! will, the retained-alarm read at start, a broker outage, and write
//! commands answered on the contract topic and on a v5 response topic.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use common::mosquitto::Mosquitto;
use common::outage::outage;
use common::rig::{alarm, sim_with_writer};
use common::{change, mqtt_settings, rand_id, Gateway};
use wincc_gateway::bus::{AlarmEvent, AlarmEventKind, Event as BusEvent};
use wincc_gateway::config::{MqttProtocol, MqttSettings};
use wincc_gateway::model::{AlarmState, StationStatus, TagType};
use wincc_gateway::sinks::mqtt::announced_alarms;
use wincc_gateway::topic;

const T: Duration = Duration::from_secs(10);

/// One message as the MQTT 5 subscriber received it, with its properties.
#[derive(Debug, Clone)]
struct Msg5 {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    content_type: Option<String>,
    payload_format: Option<u8>,
    correlation: Option<Bytes>,
}

impl Msg5 {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.topic, self.text()))
    }
    /// JSON, marked as such: content type and the UTF-8 indicator.
    fn assert_json_props(&self) {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{self:?}"
        );
        assert_eq!(self.payload_format, Some(1), "{self:?}");
    }
}

/// An rumqttc::v5 client recording every message on its filters.
struct Sub5 {
    msgs: Arc<Mutex<Vec<Msg5>>>,
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Sub5 {
    async fn connect(port: u16, filters: &[&str]) -> Self {
        let mut opts = MqttOptions::new(format!("v5-sub-{}", rand_id()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(Some(1 << 20));
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let subacks = Arc::new(Mutex::new(0usize));
        let (m, s, c) = (msgs.clone(), subacks.clone(), client.clone());
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let n = filters.len();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &filters {
                            let _ = c.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().unwrap() += 1,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let props = p.properties.unwrap_or_default();
                        m.lock().unwrap().push(Msg5 {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            content_type: props.content_type,
                            payload_format: props.payload_format_indicator,
                            correlation: props.correlation_data,
                        })
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        assert!(
            common::wait(T, || *subacks.lock().unwrap() >= n).await,
            "the MQTT 5 subscriber could not subscribe"
        );
        Sub5 { msgs, client, task }
    }

    fn on(&self, topic: &str) -> Vec<Msg5> {
        let msgs = self.msgs.lock().unwrap();
        msgs.iter().filter(|m| m.topic == topic).cloned().collect()
    }

    fn clear(&self) {
        self.msgs.lock().unwrap().clear();
    }

    async fn wait_msg(&self, topic: &str, pred: impl Fn(&Msg5) -> bool) -> Option<Msg5> {
        let deadline = Instant::now() + T;
        loop {
            if let Some(m) = self.on(topic).into_iter().find(|m| pred(m)) {
                return Some(m);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Sub5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn v5_settings(port: u16, prefix: &str) -> MqttSettings {
    MqttSettings {
        protocol: MqttProtocol::V5,
        ..mqtt_settings(port, prefix)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_station_alarms_status_and_last_will_carry_v5_properties() {
    let broker = Mosquitto::start();
    let sub = Sub5::connect(broker.port, &["v5/#"]).await;
    let settings = v5_settings(broker.port, "v5");
    let mut gw = Gateway::start(&settings, None);
    gw.wait_connected().await;
    let m = sub
        .wait_msg("v5/status", |m| m.text() == "online")
        .await
        .expect("online");
    assert_eq!(m.content_type.as_deref(), Some("text/plain"));
    assert_eq!(m.payload_format, Some(1));

    // Tag values: the contract payloads on the contract topics.
    let mut c = change("Line1/Mixer/Speed", json!(42.5));
    c.quality_code = Some(192);
    let expected = c.to_json();
    let hostile = "Tank +#/ü%";
    gw.send(vec![c, change(hostile, json!("x"))]);
    let m = sub
        .wait_msg("v5/tags/Line1/Mixer/Speed", |_| true)
        .await
        .expect("tag value");
    assert_eq!(m.json(), expected);
    m.assert_json_props();
    let hostile_topic = format!("v5/tags/{}", topic::encode(hostile));
    let m = sub
        .wait_msg(&hostile_topic, |_| true)
        .await
        .expect("hostile tag");
    assert_eq!(m.json()["value"], "x");
    assert_eq!(m.json()["quality"], "good");
    m.assert_json_props();

    let st = StationStatus {
        connected: false,
        since: chrono::Utc::now(),
        error: Some("station unreachable".into()),
    };
    gw.bus.publish(BusEvent::Station(st.clone()));
    let m = sub.wait_msg("v5/station", |_| true).await.expect("station");
    assert_eq!(m.json(), st.to_json());
    m.assert_json_props();

    // An alarm: active (retained JSON), the event, and the retained-alarm
    // read at start speaking MQTT 5 too.
    gw.bus.publish(BusEvent::Alarms(Arc::new(vec![AlarmEvent {
        kind: AlarmEventKind::Raised,
        alarm: alarm("A1", AlarmState::Raised),
    }])));
    let m = sub
        .wait_msg("v5/alarms/active/A1", |_| true)
        .await
        .expect("active alarm");
    assert_eq!(m.json()["state"], "raised");
    m.assert_json_props();
    let m = sub
        .wait_msg("v5/alarms/events", |_| true)
        .await
        .expect("alarm event");
    assert_eq!(m.json()["event"], "raised");
    m.assert_json_props();
    let seeded = announced_alarms(&settings, Duration::from_secs(5))
        .await
        .expect("retained alarms over MQTT 5");
    assert_eq!(
        seeded.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["A1"]
    );
    gw.bus.publish(BusEvent::Alarms(Arc::new(vec![AlarmEvent {
        kind: AlarmEventKind::Cleared,
        alarm: alarm("A1", AlarmState::Cleared),
    }])));
    let m = sub
        .wait_msg("v5/alarms/active/A1", |m| m.payload.is_empty())
        .await
        .expect("cleared alarm");
    assert_eq!(m.content_type, None, "an empty payload describes nothing");

    // A late subscriber gets the values retained, properties included.
    let late = Sub5::connect(broker.port, &["v5/tags/#"]).await;
    let m = late
        .wait_msg("v5/tags/Line1/Mixer/Speed", |_| true)
        .await
        .expect("retained value");
    assert!(m.retain);
    assert_eq!(m.json(), expected);
    m.assert_json_props();

    // Connection cut without DISCONNECT: the broker publishes the will.
    sub.clear();
    gw.handle.abort();
    let m = sub
        .wait_msg("v5/status", |_| true)
        .await
        .expect("last will");
    assert_eq!(m.text(), "offline");
    assert_eq!(m.content_type.as_deref(), Some("text/plain"));
    let late = Sub5::connect(broker.port, &["v5/status"]).await;
    let m = late
        .wait_msg("v5/status", |_| true)
        .await
        .expect("retained will");
    assert!(m.retain && m.text() == "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_without_session_gets_every_newest_value_under_v5() {
    outage(false, MqttProtocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_broker_with_persistent_v5_session_gets_every_newest_value() {
    outage(true, MqttProtocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_on_the_contract_topic_and_on_the_v5_response_topic() {
    let (sim, writer) = sim_with_writer(
        2,
        &[
            ("Setpoints/Speed", TagType::Int16, true, json!(0)),
            ("Other/Level", TagType::Double, true, json!(0.0)),
        ],
    )
    .await;

    let broker = Mosquitto::start();
    let sub = Sub5::connect(broker.port, &["w5/#", "replies/#"]).await;
    let mut settings = v5_settings(broker.port, "w5");
    settings.write_enabled = true;
    settings.writable_tags = vec!["Setpoints/**".into()];
    settings.response_topic_prefix = "replies/".into();
    let mut gw = Gateway::start(&settings, Some(writer));
    gw.wait_connected().await;

    let command = |tag: &str, body: Value, reply: Option<(&str, &'static [u8])>| {
        let props = reply.map(|(t, c)| PublishProperties {
            response_topic: Some(t.into()),
            correlation_data: Some(Bytes::from_static(c)),
            ..PublishProperties::default()
        });
        let (client, topic) = (sub.client.clone(), format!("w5/write/{tag}"));
        async move {
            let payload = body.to_string();
            match props {
                Some(p) => client
                    .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, p)
                    .await
                    .unwrap(),
                None => client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap(),
            }
        }
    };
    // The sink subscribes right after CONNACK: retry until it answers.
    let result_topic = "w5/write-result/Setpoints/Speed";
    let mut ready = false;
    for _ in 0..20 {
        command("Setpoints/Speed", json!({"value": 1, "id": "warm"}), None).await;
        if common::wait(Duration::from_millis(500), || {
            !sub.on(result_topic).is_empty()
        })
        .await
        {
            ready = true;
            break;
        }
    }
    assert!(ready, "no write result for the warm-up command");

    // Allowed: carried out, answered on both topics, with the correlation data.
    let reply: (&str, &'static [u8]) = ("replies/me", b"\x00corr-1");
    command(
        "Setpoints/Speed",
        json!({"value": 1234, "id": "w1"}),
        Some(reply),
    )
    .await;
    let m = sub
        .wait_msg(result_topic, |m| m.json()["id"] == "w1")
        .await
        .expect("contract result");
    assert_eq!(m.json(), json!({"id": "w1", "ok": true}));
    assert!(!m.retain);
    m.assert_json_props();
    let r = sub
        .wait_msg("replies/me", |m| m.json()["id"] == "w1")
        .await
        .expect("result on the response topic");
    assert_eq!(r.payload, m.payload);
    assert_eq!(r.correlation.as_deref(), Some(&b"\x00corr-1"[..]));
    r.assert_json_props();
    assert_eq!(sim.value("Setpoints/Speed"), Some(json!(1234)));

    // Refused (not in writable_tags): never reaches the station, answered on both.
    let written = sim.stats().tags_written;
    command(
        "Other/Level",
        json!({"value": 1.5, "id": "r1"}),
        Some(("replies/me", b"corr-2")),
    )
    .await;
    let m = sub
        .wait_msg("w5/write-result/Other/Level", |m| m.json()["id"] == "r1")
        .await
        .expect("refusal");
    assert_eq!(m.json()["ok"], false);
    let error = m.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("not in writable_tags"), "{error}");
    let r = sub
        .wait_msg("replies/me", |m| m.json()["id"] == "r1")
        .await
        .expect("refusal on the response topic");
    assert_eq!(r.payload, m.payload);
    assert_eq!(r.correlation.as_deref(), Some(&b"corr-2"[..]));
    assert_eq!(sim.stats().tags_written, written);
    assert_eq!(sim.value("Other/Level"), Some(json!(0.0)));

    // A response topic outside mqtt.response_topic_prefix (here one of the
    // gateway's own topics) is ignored; the contract result still comes.
    command(
        "Setpoints/Speed",
        json!({"value": 7, "id": "own"}),
        Some(("w5/status", b"x")),
    )
    .await;
    let m = sub
        .wait_msg(result_topic, |m| m.json()["id"] == "own")
        .await
        .expect("contract result");
    assert_eq!(m.json()["ok"], true);
    gw.stop().await;
    assert!(
        sub.on("w5/status")
            .iter()
            .all(|m| m.text() == "online" || m.text() == "offline"),
        "a write result landed on the status topic"
    );
    assert_eq!(sub.on("w5/status").last().unwrap().text(), "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_under_v5_with_a_private_ca_in_ca_file() {
    // A private CA and a server certificate for 127.0.0.1, made here.
    let pki = tempfile::tempdir().unwrap();
    let p = |f: &str| pki.path().join(f).display().to_string();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wincc-gateway test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &*ca)
        .unwrap();
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("server.pem"), server.pem()).unwrap();
    std::fs::write(p("server.key"), server_key.serialize_pem()).unwrap();

    let tls_port = common::mosquitto::free_port();
    let broker = Mosquitto::start_with(common::mosquitto::MosquittoOptions {
        extra_config: vec![
            format!("listener {tls_port} 127.0.0.1"),
            format!("certfile {}", p("server.pem")),
            format!("keyfile {}", p("server.key")),
        ],
        ..Default::default()
    });
    let sub = Sub5::connect(broker.port, &["tls5/tags/#"]).await;
    let mut s = v5_settings(tls_port, "tls5");
    s.url = format!("mqtts://127.0.0.1:{tls_port}");
    s.ca_file = p("ca.pem");
    let mut gw = Gateway::start(&s, None);
    gw.wait_connected().await;
    gw.send(vec![change("Secure/Value", json!(5))]);
    let m = sub
        .wait_msg("tls5/tags/Secure/Value", |_| true)
        .await
        .expect("value over TLS");
    assert_eq!(m.json()["value"], 5);
    m.assert_json_props();
    gw.stop().await;
}
