//! The embedded broker (feature `demo`): the real MQTT sink through it, and
//! independent rumqttc clients of both protocols checking what a user of
//! the demo relies on: MQTT 3.1.1 and 5 on one port, every retained message
//! for a late subscriber at QoS 0 and 1 (200 and 10 000 topics),
//! Retain-As-Published, wills, and a clear refusal of other protocol levels.
#![cfg(feature = "demo")]

use crate::common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{change, mqtt_settings, Gateway, TestSubscriber};
use rumqttc::v5;
use serde_json::json;
use wincc_gateway::sinks::broker::start_embedded_broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_carries_the_sinks_messages() {
    let broker = start_embedded_broker("127.0.0.1:0".parse().unwrap()).expect("embedded broker");
    let port = broker.addr.port();
    assert_ne!(port, 0);
    let sub = TestSubscriber::connect(port, "demo/#").await;
    let mut gw = Gateway::start(&mqtt_settings(port, "demo"), None);
    gw.wait_connected().await;
    gw.send(vec![change("Line1/Speed", json!(3.5))]);
    let m = sub
        .wait_msg("demo/tags/Line1/Speed", Duration::from_secs(10), |_| true)
        .await
        .expect("tag value through the embedded broker");
    assert_eq!(m.json()["value"], 3.5);
    // Retained for a late subscriber too.
    let late = TestSubscriber::connect(port, "demo/tags/#").await;
    let m = late
        .wait_msg("demo/tags/Line1/Speed", Duration::from_secs(10), |_| true)
        .await
        .expect("retained value");
    assert!(m.retain);
    gw.stop().await;
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = start_embedded_broker(addr).unwrap_err();
    assert!(format!("{e:#}").contains(&addr.to_string()), "{e:#}");
}

/// Publishes `n` retained messages `r/{i}` at QoS 1 and waits for every PUBACK.
async fn publish_retained(port: u16, n: usize) {
    let opts = rumqttc::MqttOptions::new("retained-publisher", "127.0.0.1", port);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
    let feeder = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(
                    format!("r/{i}"),
                    rumqttc::QoS::AtLeastOnce,
                    true,
                    format!("{i}"),
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acks = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while acks < n {
        assert!(Instant::now() < deadline, "only {acks} of {n} PUBACKs");
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acks += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher: {e}"),
            Err(_) => panic!("publisher: no event for 30 s after {acks} PUBACKs"),
        }
    }
    let client = feeder.await.unwrap();
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
}

/// A late MQTT 3.1.1 subscriber: the distinct retained topics it gets.
async fn late_v4(port: u16, qos: rumqttc::QoS, want: usize) -> usize {
    let mut opts = rumqttc::MqttOptions::new(format!("late-v4-{qos:?}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
    client.subscribe("r/#", qos).await.unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => {
                assert!(p.retain, "a retained message without the retain flag");
                assert_eq!(p.qos, qos);
                seen.insert(p.topic);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("late v4 subscriber: {e}"),
            Err(_) => break,
        }
    }
    seen.len()
}

/// A late MQTT 5 subscriber: the distinct retained topics it gets.
async fn late_v5(port: u16, qos: v5::mqttbytes::QoS, want: usize) -> usize {
    let mut opts = v5::MqttOptions::new(format!("late-v5-{qos:?}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = v5::AsyncClient::new(opts, 100);
    client.subscribe("r/#", qos).await.unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(v5::Event::Incoming(v5::mqttbytes::v5::Packet::Publish(p)))) => {
                assert!(p.retain, "a retained message without the retain flag");
                assert_eq!(p.qos, qos);
                seen.insert(p.topic);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("late v5 subscriber: {e}"),
            Err(_) => break,
        }
    }
    seen.len()
}

async fn every_retained_message_for_late_subscribers(n: usize) {
    let broker = start_embedded_broker("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = broker.addr.port();
    publish_retained(port, n).await;
    use rumqttc::QoS as Q4;
    use v5::mqttbytes::QoS as Q5;
    for qos in [Q4::AtMostOnce, Q4::AtLeastOnce] {
        assert_eq!(late_v4(port, qos, n).await, n, "MQTT 3.1.1 at {qos:?}");
    }
    for qos in [Q5::AtMostOnce, Q5::AtLeastOnce] {
        assert_eq!(late_v5(port, qos, n).await, n, "MQTT 5 at {qos:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscribers_get_all_200_retained_messages_on_both_protocols() {
    every_retained_message_for_late_subscribers(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscribers_get_all_10000_retained_messages_on_both_protocols() {
    every_retained_message_for_late_subscribers(10_000).await;
}

/// MQTT 5 Retain-As-Published keeps the retain flag on live messages (the
/// gateway relies on it to refuse retained write commands); without it the
/// flag is cleared, as MQTT requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_is_honoured() {
    use v5::mqttbytes::v5::{Filter, Packet};
    use v5::mqttbytes::QoS;
    let broker = start_embedded_broker("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = broker.addr.port();
    let opts = v5::MqttOptions::new("rap", "127.0.0.1", port);
    let (client, mut eventloop) = v5::AsyncClient::new(opts, 10);
    let mut rap = Filter::new("cmd/rap", QoS::AtLeastOnce);
    rap.preserve_retain = true;
    client
        .subscribe_many([rap, Filter::new("cmd/plain", QoS::AtLeastOnce)])
        .await
        .unwrap();
    loop {
        if let v5::Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    client
        .publish("cmd/rap", QoS::AtLeastOnce, true, "1")
        .await
        .unwrap();
    client
        .publish("cmd/plain", QoS::AtLeastOnce, true, "1")
        .await
        .unwrap();
    let mut got = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < deadline {
        if let Ok(Ok(v5::Event::Incoming(Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await
        {
            got.insert(String::from_utf8(p.topic.to_vec()).unwrap(), p.retain);
        }
    }
    assert_eq!(got.get("cmd/rap"), Some(&true), "{got:?}");
    assert_eq!(got.get("cmd/plain"), Some(&false), "{got:?}");
}

/// A client that vanishes without DISCONNECT leaves its will (the gateway's
/// `status offline`), retained for later subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_of_a_vanished_client_is_published_and_retained() {
    let broker = start_embedded_broker("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = broker.addr.port();
    let mut opts = rumqttc::MqttOptions::new("mortal", "127.0.0.1", port);
    opts.set_last_will(rumqttc::LastWill::new(
        "w/status",
        "offline",
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) =
            eventloop.poll().await.unwrap()
        {
            break;
        }
    }
    drop(client);
    drop(eventloop); // closes the socket without DISCONNECT
    let late = TestSubscriber::connect(port, "w/#").await;
    let m = late
        .wait_msg("w/status", Duration::from_secs(10), |_| true)
        .await
        .expect("the will, retained");
    assert_eq!(m.text(), "offline");
    assert!(m.retain);
}

/// MQTT 3.1 (protocol level 3) gets CONNACK "unacceptable protocol version"
/// instead of a silently closed socket.
#[test]
fn an_unsupported_protocol_level_gets_a_connack_refusal() {
    let broker = start_embedded_broker("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut s = std::net::TcpStream::connect(broker.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // CONNECT, "MQIsdp", level 3, clean session, keep-alive 60, client id "x".
    let mut body = vec![0, 6];
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[3, 0x02, 0, 60, 0, 1, b'x']);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    s.write_all(&packet).unwrap();
    let mut answer = [0u8; 4];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(answer, [0x20, 0x02, 0x00, 0x01]);
}
