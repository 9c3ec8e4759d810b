//! Broker outages: the broker goes away mid-stream while values keep
//! changing; once it is back, every tag's newest value arrives and no tag
//! ever goes back to an older value (scenario in `common::outage`, also run
//! under MQTT 5 by `mqtt_v5.rs`).

use crate::common;

use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::outage::outage;
use common::{change, mqtt_settings, Gateway, TestSubscriber};
use serde_json::json;
use wincc_gateway::config::MqttProtocol;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_broker_without_session_gets_every_newest_value_after_restart() {
    outage(false, MqttProtocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_broker_with_persistent_session_gets_every_newest_value() {
    outage(true, MqttProtocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_started_before_the_broker_publishes_once_it_appears() {
    let mut broker = Mosquitto::start();
    broker.stop();
    let mut gw = Gateway::start(&mqtt_settings(broker.port, "late"), None);
    gw.send(vec![change("A", json!(1)), change("B", json!(1))]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.send(vec![change("A", json!(2))]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!gw.state.borrow().is_connected());
    broker.restart();
    gw.wait_connected().await;
    let sub = TestSubscriber::connect(broker.port, "late/#").await;
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| m.len() >= 3)
            .await
    );
    assert_eq!(sub.last("late/status").unwrap().text(), "online");
    assert_eq!(sub.last("late/tags/A").unwrap().json()["value"], 2);
    assert_eq!(sub.last("late/tags/B").unwrap().json()["value"], 1);
    assert_eq!(
        sub.on("late/tags/A").len(),
        1,
        "the stale value 1 was published"
    );
    gw.stop().await;
}
