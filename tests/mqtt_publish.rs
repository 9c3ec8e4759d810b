//! The MQTT sink against a real mosquitto, checked by an independent
//! subscriber: topics, payloads, retained state, status and last will.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::rig::alarm;
use common::{change, mqtt_settings, Gateway, TestSubscriber};
use serde_json::json;
use wincc_gateway::bus::{AlarmEvent, AlarmEventKind, Event};
use wincc_gateway::model::{AlarmState, StationStatus};
use wincc_gateway::topic;

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_station_and_alarms_reach_their_topics_and_stay_retained() {
    let broker = Mosquitto::start();
    let sub = TestSubscriber::connect(broker.port, "plant/#").await;
    let mut gw = Gateway::start(&mqtt_settings(broker.port, "plant"), None);
    gw.wait_connected().await;
    assert!(sub
        .wait_msg("plant/status", T, |m| m.text() == "online")
        .await
        .is_some());

    let mut c = change("Line1/Mixer/Speed", json!(42.5));
    c.quality_code = Some(192);
    let expected = c.to_json();
    gw.send(vec![c, change("Tank 3.Level", json!(7))]);
    let m = sub
        .wait_msg("plant/tags/Line1/Mixer/Speed", T, |_| true)
        .await
        .expect("tag message");
    assert_eq!(m.json(), expected);
    assert_eq!(m.json()["quality_code"], 192);
    let m = sub
        .wait_msg("plant/tags/Tank 3.Level", T, |_| true)
        .await
        .expect("tag message");
    assert_eq!(m.json()["value"], 7);
    assert_eq!(m.json()["quality"], "good");

    let st = StationStatus {
        connected: false,
        since: chrono::Utc::now(),
        error: Some("station unreachable: connection refused".into()),
    };
    gw.bus.publish(Event::Station(st.clone()));
    let m = sub
        .wait_msg("plant/station", T, |_| true)
        .await
        .expect("station message");
    assert_eq!(m.json(), st.to_json());
    assert_eq!(m.json()["wincc"], "disconnected");

    // Alarm A raised then acknowledged, alarm "B/+#" raised then cleared.
    let raised = |id: &str| AlarmEvent {
        kind: AlarmEventKind::Raised,
        alarm: alarm(id, AlarmState::Raised),
    };
    gw.bus
        .publish(Event::Alarms(Arc::new(vec![raised("A"), raised("B/+#")])));
    let b_topic = format!("plant/alarms/active/{}", topic::encode("B/+#"));
    assert_eq!(b_topic, "plant/alarms/active/B/%2B%23");
    let m = sub
        .wait_msg(&b_topic, T, |_| true)
        .await
        .expect("active alarm");
    assert_eq!(m.json()["id"], "B/+#");
    assert_eq!(m.json()["state"], "raised");
    gw.bus.publish(Event::Alarms(Arc::new(vec![
        AlarmEvent {
            kind: AlarmEventKind::Acknowledged,
            alarm: alarm("A", AlarmState::Acknowledged),
        },
        AlarmEvent {
            kind: AlarmEventKind::Cleared,
            alarm: alarm("B/+#", AlarmState::Cleared),
        },
    ])));
    assert!(sub
        .wait_msg(&b_topic, T, |m| m.payload.is_empty())
        .await
        .is_some());
    assert!(
        sub.wait_for(T, |msgs| msgs
            .iter()
            .filter(|m| m.topic == "plant/alarms/events")
            .count()
            == 4)
            .await
    );
    let events: Vec<_> = sub
        .on("plant/alarms/events")
        .iter()
        .map(|m| m.json())
        .collect();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["alarm"]["id"].as_str().unwrap(),
                e["event"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        ["A:raised", "B/+#:raised", "A:acknowledged", "B/+#:cleared"]
    );
    assert!(sub.on("plant/alarms/events").iter().all(|m| !m.retain));

    // A subscriber arriving now sees the retained state only.
    let late = TestSubscriber::connect(broker.port, "plant/#").await;
    assert!(late
        .wait_msg("plant/alarms/active/A", T, |_| true)
        .await
        .is_some());
    let retained = late.messages();
    let topics: Vec<_> = retained.iter().map(|m| m.topic.as_str()).collect();
    assert!(retained.iter().all(|m| m.retain), "{topics:?}");
    for t in [
        "plant/status",
        "plant/station",
        "plant/tags/Line1/Mixer/Speed",
        "plant/tags/Tank 3.Level",
    ] {
        assert!(topics.contains(&t), "{t} not retained: {topics:?}");
    }
    assert_eq!(
        late.last("plant/alarms/active/A").unwrap().json()["state"],
        "acknowledged"
    );
    assert!(
        !topics.contains(&b_topic.as_str()),
        "cleared alarm still retained"
    );
    assert!(!topics.contains(&"plant/alarms/events"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_says_offline_and_an_aborted_sink_leaves_its_last_will() {
    let broker = Mosquitto::start();
    let sub = TestSubscriber::connect(broker.port, "gw/status").await;
    let settings = mqtt_settings(broker.port, "gw");

    let mut gw = Gateway::start(&settings, None);
    gw.wait_connected().await;
    assert!(sub
        .wait_msg("gw/status", T, |m| m.text() == "online")
        .await
        .is_some());
    gw.send(vec![change("A", json!(1))]);
    gw.stop().await;
    assert_eq!(sub.last("gw/status").unwrap().text(), "offline");
    let late = TestSubscriber::connect(broker.port, "gw/#").await;
    let m = late.wait_msg("gw/status", T, |_| true).await.unwrap();
    assert!(m.retain && m.text() == "offline");
    // The flush before `offline` delivered the value.
    assert_eq!(
        late.wait_msg("gw/tags/A", T, |_| true)
            .await
            .unwrap()
            .json()["value"],
        1
    );

    // No clean shutdown: the task is aborted, the TCP connection is cut
    // without DISCONNECT, and the broker publishes the last will.
    sub.clear();
    let mut gw = Gateway::start(&settings, None);
    gw.wait_connected().await;
    assert!(sub
        .wait_msg("gw/status", T, |m| m.text() == "online")
        .await
        .is_some());
    sub.clear();
    gw.handle.abort();
    let m = sub
        .wait_msg("gw/status", T, |_| true)
        .await
        .expect("last will");
    assert_eq!(m.text(), "offline");
    let late = TestSubscriber::connect(broker.port, "gw/status").await;
    let m = late.wait_msg("gw/status", T, |_| true).await.unwrap();
    assert!(m.retain && m.text() == "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tag_names_make_valid_reversible_topics() {
    let names = [
        "Tank 3.Level",
        "a+b",
        "#",
        "x#y",
        "100%",
        "%2F",
        "/A",
        "A/",
        "A//B",
        "//",
        "/",
        "Line1/Mixer/Speed",
        "Kühlung/Temp°C",
        "日本/タグ",
        "tab\there",
        "nul\u{0}byte",
        "bell\u{7}",
        "c1\u{85}ctl",
        "emoji 🚀/ok",
        "+/#/+",
    ];
    let broker = Mosquitto::start();
    let sub = TestSubscriber::connect(broker.port, "h/tags/#").await;
    let mut gw = Gateway::start(&mqtt_settings(broker.port, "h"), None);
    gw.wait_connected().await;
    gw.send(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| change(n, json!(i)))
            .collect(),
    );
    assert!(
        sub.wait_for(T, |m| m.len() >= names.len()).await,
        "got {} of {} tag messages",
        sub.messages().len(),
        names.len()
    );
    let msgs = sub.messages();
    assert_eq!(msgs.len(), names.len());
    for m in &msgs {
        assert!(
            !m.topic.contains(['+', '#', '\0']),
            "wildcard or NUL in {:?}",
            m.topic
        );
        assert!(
            !m.topic.split('/').any(str::is_empty),
            "empty level in {:?}",
            m.topic
        );
        let suffix = m.topic.strip_prefix("h/tags/").expect("under the prefix");
        let name = topic::decode(suffix).expect("decodable");
        let i = names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name:?} not sent"));
        assert_eq!(m.json()["value"], i, "{name:?}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_without_retain_and_oversized_values_do_not_break_the_connection() {
    let broker = Mosquitto::start();
    let sub = TestSubscriber::connect(broker.port, "q/#").await;
    let mut settings = mqtt_settings(broker.port, "q");
    settings.qos = 0;
    settings.retain = false;
    settings.max_packet_size = 2048;
    let mut gw = Gateway::start(&settings, None);
    gw.wait_connected().await;
    gw.send(vec![
        change("Big", json!("x".repeat(4096))),
        change("Small", json!(1)),
    ]);
    gw.send(vec![change("Small", json!(2))]);
    assert!(sub
        .wait_msg("q/tags/Small", T, |m| m.json()["value"] == 2)
        .await
        .is_some());
    assert!(
        sub.on("q/tags/Big").is_empty(),
        "oversized message was published"
    );
    assert!(gw.state.borrow().is_connected());
    // Still the same connection: `online` was published once.
    assert_eq!(
        sub.on("q/status")
            .iter()
            .filter(|m| m.text() == "online")
            .count(),
        1
    );
    // Not retained: a late subscriber gets the status but no tag value.
    let late = TestSubscriber::connect(broker.port, "q/#").await;
    assert!(late.wait_msg("q/status", T, |_| true).await.is_some());
    assert!(late.on("q/tags/Small").is_empty());
    gw.stop().await;
}
