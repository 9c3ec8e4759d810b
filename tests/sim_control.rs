//! Driving and running the simulator over real HTTP on loopback (contract
//! §5): alarms raised, acknowledged and cleared exactly, the ticker that
//! moves values and raises alarms by itself, values and tags set from the
//! handle and `/_sim`, and shutdown.

use crate::common;

use std::time::{Duration, Instant};

use common::sim::{assert_error, client, json_of, opts, read, start, tag_url, url};
use reqwest::StatusCode;
use serde_json::{json, Value};
use wincc_gateway::model::{TagInfo, TagType};
use wincc_gateway::sim::{self, SimOptions};

#[tokio::test]
async fn alarms_are_served_and_driven_exactly() {
    let sim = start(opts()).await;
    let c = client();
    let ctl = url(&sim, "/_sim/alarms");
    let act = |body: Value| c.post(&ctl).json(&body);
    let current = url(&sim, "/alarms/current");
    assert_eq!(json_of(c.get(&current)).await, json!({"alarms": []}));
    let raised = json_of(act(
        json!({"action": "raise", "id": "A 1/#", "name": "Tank #4/Level", "text": "Level low", "priority": 9}),
    ))
    .await;
    let cur = json_of(c.get(&current)).await;
    assert_eq!(cur["alarms"][0], raised);
    let a = cur["alarms"][0].as_object().unwrap();
    let mut keys: Vec<_> = a.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "acknowledgedAt",
            "class",
            "clearedAt",
            "id",
            "name",
            "priority",
            "raisedAt",
            "state",
            "text"
        ]
    );
    assert_eq!(
        (a["id"].clone(), a["state"].clone(), a["priority"].clone()),
        (json!("A 1/#"), json!("raised"), json!(9))
    );
    assert!(a["acknowledgedAt"].is_null() && a["clearedAt"].is_null());
    assert_error(
        act(json!({"action": "raise", "id": "A 1/#"})),
        StatusCode::CONFLICT,
        "AlarmActive",
    )
    .await;
    let acked = json_of(act(json!({"action": "ack", "id": "A 1/#"}))).await;
    assert_eq!(acked["state"], "acknowledged");
    assert!(acked["acknowledgedAt"].is_string());
    let cleared = json_of(act(json!({"action": "clear", "id": "A 1/#"}))).await;
    assert_eq!(cleared["state"], "cleared");
    assert_eq!(json_of(c.get(&current)).await, json!({"alarms": []}));
    for (body, status, code) in [
        (
            json!({"action": "ack", "id": "missing"}),
            StatusCode::NOT_FOUND,
            "UnknownAlarm",
        ),
        (
            json!({"action": "explode"}),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
    ] {
        assert_error(act(body), status, code).await;
    }
    act(json!({"action": "raise", "id": 2}))
        .send()
        .await
        .unwrap();

    let archive = url(&sim, "/alarms/archive");
    let all = json_of(c.get(&archive)).await;
    assert_eq!(all["alarms"].as_array().unwrap().len(), 2);
    assert_eq!(all["alarms"][0]["state"], "cleared");
    let limited = json_of(c.get(&archive).query(&[("limit", "1")])).await;
    assert_eq!(limited["alarms"].as_array().unwrap().len(), 1);
    let future = json_of(c.get(&archive).query(&[
        ("from", "2999-01-01T00:00:00Z"),
        ("to", "2999-12-31T00:00:00Z"),
    ]))
    .await;
    assert_eq!(future, json!({"alarms": []}));
    assert_error(
        c.get(&archive).query(&[("from", "yesterday")]),
        StatusCode::BAD_REQUEST,
        "BadRequest",
    )
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn the_ticker_raises_alarms_and_changes_values_by_itself() {
    let sim = start(SimOptions {
        tags: 200,
        change_rate: 1.0,
        alarms: true,
        seed: 3,
        ..SimOptions::default()
    })
    .await;
    let c = client();
    let names = sim.tag_names();
    let ask: Vec<&str> = names.iter().map(String::as_str).collect();
    let first = read(&c, &sim, &ask).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = read(&c, &sim, &ask).await;
    let changed = (0..names.len())
        .filter(|&i| first["values"][i]["timestamp"] != second["values"][i]["timestamp"])
        .count();
    // 200 tags at 100 %/s for 0.6 s is ~120 changes (some hit the same tag).
    assert!(changed > 20, "only {changed} tags changed");
    let t = Instant::now();
    loop {
        let a = json_of(c.get(url(&sim, "/alarms/archive"))).await;
        if let Some(first) = a["alarms"].as_array().and_then(|a| a.first()) {
            assert!(names.iter().any(|n| first["name"] == n.as_str()));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no alarm raised");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.shutdown().await;

    // change_rate 0: nothing moves.
    let still = start(opts()).await;
    let ask: Vec<String> = still.tag_names();
    let ask: Vec<&str> = ask.iter().map(String::as_str).collect();
    let a = read(&c, &still, &ask).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a, read(&c, &still, &ask).await);
    still.shutdown().await;
}

#[tokio::test]
async fn handle_and_sim_endpoints_set_values_and_tags() {
    let sim = start(opts()).await;
    let c = client();
    let ro = sim
        .tags()
        .into_iter()
        .find(|t| t.ty == TagType::Float && !t.writable)
        .unwrap()
        .name;
    sim.set_value(&ro, json!(21.5));
    assert_eq!(
        read(&c, &sim, &[&ro]).await["values"][0]["value"],
        json!(21.5)
    );
    let set = |body: Value| c.post(url(&sim, "/_sim/tags/set")).json(&body);
    let r = set(json!({"name": ro, "value": 3.25, "quality": "Uncertain", "qualityCode": 72}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let row = read(&c, &sim, &[&ro]).await["values"][0].clone();
    assert_eq!(
        (
            row["value"].clone(),
            row["quality"].clone(),
            row["qualityCode"].clone()
        ),
        (json!(3.25), json!("Uncertain"), json!(72))
    );
    assert_error(
        set(json!({"name": ro, "value": "x"})),
        StatusCode::BAD_REQUEST,
        "TypeMismatch",
    )
    .await;

    let info = TagInfo {
        name: "New/Tag #1".into(),
        ty: TagType::UInt32,
        writable: true,
    };
    sim.add_tag(info.clone(), json!(7));
    assert_eq!(sim.tag_names().last().unwrap(), "New/Tag #1");
    assert_eq!(
        json_of(c.get(tag_url(&sim, "New/Tag #1"))).await["value"],
        7
    );
    assert!(sim.remove_tag("New/Tag #1"));
    assert!(!sim.remove_tag("New/Tag #1"));
    assert_error(
        c.get(tag_url(&sim, "New/Tag #1")),
        StatusCode::NOT_FOUND,
        "UnknownTag",
    )
    .await;
    assert_eq!(sim.tag_names().len(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_port_and_run_serves_until_told() {
    let sim = start(opts()).await;
    let addr = sim.addr();
    sim.shutdown().await;
    assert!(client()
        .get(format!("http://{addr}/tags"))
        .send()
        .await
        .unwrap_err()
        .is_connect());

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let task = tokio::spawn(sim::run(listen, opts(), async move {
        let _ = rx.await;
    }));
    let t = Instant::now();
    while client()
        .get(format!("http://{listen}/tags"))
        .send()
        .await
        .is_err()
    {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(client()
        .get(format!("http://{listen}/tags"))
        .send()
        .await
        .is_err());
    assert!(sim::start(
        listen,
        SimOptions {
            change_rate: f64::NAN,
            ..opts()
        }
    )
    .await
    .is_err());
}
