//! The whole gateway (`gateway::start`) against the simulator over HTTP and a
//! real mosquitto: alarms raised / acknowledged / cleared, reconciliation
//! after a station outage and after a gateway restart, and `/healthz`.

use crate::common;

use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::{wait, TestSubscriber};
use wincc_gateway::config::Settings;
use wincc_gateway::sim::{self, AlarmAction, AlarmCommand, Faults, SimOptions};

fn settings(sim_url: &str, mqtt_port: u16, prefix: &str) -> Settings {
    let toml = format!(
        r#"
[wincc]
base_url = "{sim_url}"
timeout_ms = 500
[wincc.rate_limit]
requests_per_second = 100
burst = 20
max_in_flight = 4
[[poll_group]]
name = "all"
interval_ms = 200
tags = ["Line1/Mixer/**"]
[alarms]
interval_ms = 100
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "gw-{prefix}"
topic_prefix = "{prefix}"
[opcua]
enabled = false
[http]
listen = "127.0.0.1:0"
unhealthy_after_s = 1
"#
    );
    Settings::from_toml_with_env(&toml, "test", std::iter::empty()).unwrap()
}

fn cmd(action: AlarmAction, id: &str) -> AlarmCommand {
    AlarmCommand {
        action,
        id: Some(id.into()),
        name: Some(format!("Line1/Mixer/Alarm {id}")),
        text: Some(format!("Alarm {id} text")),
        class: Some("Alarm".into()),
        priority: Some(7),
    }
}

fn events(sub: &TestSubscriber, prefix: &str) -> Vec<(String, String)> {
    sub.on(&format!("{prefix}/alarms/events"))
        .iter()
        .map(|m| {
            let j = m.json();
            (
                j["alarm"]["id"].as_str().unwrap_or_default().to_string(),
                j["event"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = common::sim::client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_flow_reconcile_after_outage_and_restart() {
    let broker = Mosquitto::start();
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: 50,
            change_rate: 0.0,
            alarms: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let prefix = "gwalarms";
    let sub = TestSubscriber::connect(broker.port, &format!("{prefix}/#")).await;
    let gw = wincc_gateway::gateway::start(settings(&sim.base_url(), broker.port, prefix))
        .await
        .unwrap();
    let http = gw.http_addr.expect("http enabled");

    // Values and status flow.
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| m
            .iter()
            .any(|m| m.topic.starts_with(&format!("{prefix}/tags/Line1/Mixer/"))))
            .await
    );
    assert!(
        wait(Duration::from_secs(5), || sub
            .last(&format!("{prefix}/status"))
            .map(|m| m.text())
            == Some("online".into()))
        .await
    );
    let (code, body) = http_get(http, "/healthz").await;
    assert_eq!(code, 200, "{body}");

    // Raised, acknowledged, cleared.
    sim.alarm(cmd(AlarmAction::Raise, "A1")).unwrap();
    sim.alarm(cmd(AlarmAction::Raise, "A2")).unwrap();
    let active = |id: &str| format!("{prefix}/alarms/active/{id}");
    assert!(
        wait(Duration::from_secs(5), || sub.last(&active("A1")).is_some()
            && sub.last(&active("A2")).is_some())
        .await
    );
    let a1 = sub.last(&active("A1")).unwrap();
    assert_eq!(a1.json()["state"], "raised");
    // Retained: a late subscriber gets it too.
    let late = TestSubscriber::connect(broker.port, &format!("{prefix}/alarms/active/#")).await;
    assert!(
        wait(Duration::from_secs(5), || late
            .last(&active("A1"))
            .is_some_and(|m| m.retain))
        .await
    );
    assert_eq!(a1.json()["priority"], 7);
    sim.alarm(cmd(AlarmAction::Ack, "A1")).unwrap();
    assert!(
        wait(Duration::from_secs(5), || events(&sub, prefix)
            .contains(&("A1".into(), "acknowledged".into())))
        .await
    );
    assert_eq!(
        sub.last(&active("A1")).unwrap().json()["state"],
        "acknowledged"
    );
    sim.alarm(cmd(AlarmAction::Clear, "A1")).unwrap();
    assert!(
        wait(Duration::from_secs(5), || events(&sub, prefix)
            .contains(&("A1".into(), "cleared".into())))
        .await
    );
    assert!(
        sub.last(&active("A1")).unwrap().payload.is_empty(),
        "cleared alarm's retained topic is emptied"
    );

    // Station outage: A2 clears and A3 is raised while the gateway cannot see.
    sim.set_faults(Faults {
        outage_s: 2.0,
        ..Default::default()
    });
    sim.alarm(cmd(AlarmAction::Clear, "A2")).unwrap();
    sim.alarm(cmd(AlarmAction::Raise, "A3")).unwrap();
    assert!(
        wait(Duration::from_secs(5), || sub
            .last(&format!("{prefix}/station"))
            .is_some_and(|m| m.json()["wincc"] == "disconnected"))
        .await,
        "station state goes disconnected"
    );
    // Unhealthy once down longer than unhealthy_after_s (1 s).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (code, body) = http_get(http, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"degraded\""), "{body}");
    assert!(
        wait(Duration::from_secs(10), || events(&sub, prefix)
            .contains(&("A2".into(), "cleared".into()))
            && events(&sub, prefix)
                .contains(&("A3".into(), "raised".into())))
        .await,
        "reconciled after the outage: {:?}",
        events(&sub, prefix)
    );
    assert!(
        wait(Duration::from_secs(5), || sub
            .last(&format!("{prefix}/station"))
            .is_some_and(|m| m.json()["wincc"] == "connected"))
        .await
    );
    let (code, _) = http_get(http, "/healthz").await;
    assert_eq!(code, 200);

    // Gateway restart: A3 stays active across it and must not be announced
    // again; A4, raised while the gateway was down, is; A3 clears afterwards.
    gw.shutdown().await;
    assert!(
        wait(Duration::from_secs(5), || sub
            .last(&format!("{prefix}/status"))
            .map(|m| m.text())
            == Some("offline".into()))
        .await
    );
    sim.alarm(cmd(AlarmAction::Raise, "A4")).unwrap();
    let before = events(&sub, prefix);
    let gw = wincc_gateway::gateway::start(settings(&sim.base_url(), broker.port, prefix))
        .await
        .unwrap();
    assert!(
        wait(Duration::from_secs(10), || events(&sub, prefix)
            .contains(&("A4".into(), "raised".into())))
        .await
    );
    sim.alarm(cmd(AlarmAction::Clear, "A3")).unwrap();
    assert!(
        wait(Duration::from_secs(10), || events(&sub, prefix)
            .contains(&("A3".into(), "cleared".into())))
        .await
    );
    let after: Vec<_> = events(&sub, prefix)[before.len()..].to_vec();
    assert!(
        !after.contains(&("A3".into(), "raised".into())),
        "A3 was announced twice after the restart: {after:?}"
    );
    assert!(sub.last(&active("A3")).unwrap().payload.is_empty());
    assert_eq!(sub.last(&active("A4")).unwrap().json()["state"], "raised");

    // /metrics has the gateway's counters.
    let (code, body) = http_get(gw.http_addr.unwrap(), "/metrics").await;
    assert_eq!(code, 200);
    for m in [
        "wincc_gateway_station_requests_total",
        "wincc_gateway_alarm_events_total",
        "wincc_gateway_polls_total",
    ] {
        assert!(body.contains(m), "{m} missing from /metrics");
    }
    gw.shutdown().await;
}
