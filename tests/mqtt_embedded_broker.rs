//! The embedded rumqttd broker (feature `demo-broker`) with the real sink and
//! an independent subscriber.
#![cfg(feature = "demo-broker")]

use crate::common;

use std::time::Duration;

use common::{change, mqtt_settings, Gateway, TestSubscriber};
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
