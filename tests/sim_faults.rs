//! The simulator's fault switches over real HTTP on loopback (contract §5):
//! latency, error rate and unavailability, 429 with Retry-After, malformed
//! and truncated bodies, a whole outage, and the statistics it keeps.

use crate::common;

use std::time::{Duration, Instant};

use common::sim::{
    assert_error, client, error_code, json_of, opts, post_faults, read, start, stats, status_of,
    url,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use wincc_gateway::sim::{Faults, TooManyRequests};

#[tokio::test]
async fn latency_error_rate_and_unavailable_faults() {
    let sim = start(opts()).await;
    let c = client();
    let tags = url(&sim, "/tags");
    let faults = url(&sim, "/_sim/faults");
    post_faults(&c, &sim, json!({"latency_ms": 300})).await;
    let t = Instant::now();
    assert_eq!(status_of(c.get(&tags)).await, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    post_faults(&c, &sim, json!({"error_rate": 1.0})).await;
    assert_error(
        c.get(&tags),
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
    )
    .await;
    post_faults(&c, &sim, json!({"unavailable": true})).await;
    assert_error(
        c.get(&tags),
        StatusCode::SERVICE_UNAVAILABLE,
        "RuntimeStopped",
    )
    .await;
    for bad in [json!({"error_rate": 2}), json!({"no_such_switch": 1})] {
        let r = post_faults(&c, &sim, bad).await;
        assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "BadRequest");
    }
    assert_eq!(status_of(c.post(format!("{faults}/reset"))).await, 200);
    assert_eq!(
        c.get(&faults)
            .send()
            .await
            .unwrap()
            .json::<Faults>()
            .await
            .unwrap(),
        Faults::default()
    );
    assert_eq!(status_of(c.get(&tags)).await, 200);
    let s = sim.stats();
    assert_eq!((s.server_errors, s.unavailable), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn too_many_requests_fault_answers_429_with_retry_after() {
    let sim = start(opts()).await;
    let c = client();
    sim.set_faults(Faults {
        too_many_requests: Some(TooManyRequests {
            count: 2,
            retry_after_s: 7,
        }),
        ..Faults::default()
    });
    let tags = url(&sim, "/tags");
    for _ in 0..2 {
        let r = c.get(&tags).send().await.unwrap();
        assert_eq!(r.headers()["retry-after"], "7");
        assert_eq!(
            error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
            "TooManyRequests"
        );
    }
    assert_eq!(status_of(c.get(&tags)).await, 200);
    assert_eq!(sim.stats().too_many_requests, 2);
    assert_eq!(sim.faults().too_many_requests, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_and_truncated_body_faults_spoil_reads() {
    let sim = start(opts()).await;
    let c = client();
    let name = sim.tag_names()[0].clone();
    post_faults(&c, &sim, json!({"malformed_body": 1})).await;
    let body = c
        .post(url(&sim, "/tags/values"))
        .json(&json!({"tags": [name]}))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    let text = body.bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&text).is_err(), "{text:?}");
    read(&c, &sim, &[&name]).await; // one shot: fine again
    post_faults(&c, &sim, json!({"truncated_body": true})).await;
    for _ in 0..2 {
        let r = c.get(url(&sim, "/tags")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_err(), "the body must be cut off");
    }
    // Writes are not reads: untouched.
    let w = c
        .put(url(&sim, "/tags/values"))
        .json(&json!({"values": []}));
    assert_eq!(json_of(w).await, json!({"results": []}));
    c.post(url(&sim, "/_sim/faults/reset"))
        .send()
        .await
        .unwrap();
    read(&c, &sim, &[&name]).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn outage_refuses_connections_then_the_same_port_comes_back() {
    let sim = start(opts()).await;
    let warm = client();
    let tags = url(&sim, "/tags");
    assert_eq!(status_of(warm.get(&tags)).await, 200);
    let r = post_faults(&warm, &sim, json!({"outage_s": 1.0})).await;
    assert_eq!(r.status(), 200, "the asking connection gets its answer");
    let started = Instant::now();
    let e = client().get(&tags).send().await.unwrap_err();
    assert!(e.is_connect(), "connection must be refused, got {e:?}");
    assert!(
        warm.get(&tags).send().await.is_err(),
        "kept-alive connections are gone too"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(client().get(&tags).send().await.unwrap_err().is_connect());
    let back = loop {
        if let Ok(r) = client().get(&tags).send().await {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(back.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(status_of(warm.get(&tags)).await, 200);

    // From the handle: starts at once, and resetting the faults ends it early.
    sim.set_faults(Faults {
        outage_s: 30.0,
        ..Faults::default()
    });
    assert!(client().get(&tags).send().await.unwrap_err().is_connect());
    sim.set_faults(Faults::default());
    let t = Instant::now();
    while client().get(&tags).send().await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(5), "never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn stats_count_requests_tags_rate_and_concurrency() {
    let sim = start(opts()).await;
    let c = client();
    let names = sim.tag_names();
    let ten: Vec<&str> = names[..10].iter().map(String::as_str).collect();
    for _ in 0..5 {
        read(&c, &sim, &ten).await;
    }
    for _ in 0..3 {
        c.get(url(&sim, "/tags")).send().await.unwrap();
    }
    c.get(url(&sim, "/nowhere")).send().await.unwrap();
    let s = stats(&c, &sim).await;
    assert_eq!(s.total_requests, 9);
    assert_eq!(s.requests["POST /tags/values"], 5);
    assert_eq!(s.requests["GET /tags"], 3);
    assert_eq!(s.requests["other"], 1);
    assert_eq!(s.tags_read, 50);
    assert_eq!(s.max_requests_per_second, 9);
    assert_eq!(s.statuses["200"], 8);
    assert_eq!(s.statuses["404"], 1);

    // The window slides: two bursts more than a second apart do not add up.
    assert_eq!(status_of(c.post(url(&sim, "/_sim/stats/reset"))).await, 204);
    for _ in 0..5 {
        read(&c, &sim, &ten).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        read(&c, &sim, &ten).await;
    }
    let s = sim.stats();
    assert_eq!((s.total_requests, s.max_requests_per_second), (8, 5));

    // Concurrency: four slow requests at once.
    sim.reset_stats();
    sim.set_faults(Faults {
        latency_ms: 400,
        ..Faults::default()
    });
    let reqs = (0..4).map(|_| c.get(url(&sim, "/tags")).send());
    for r in futures::future::join_all(reqs).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let s = sim.stats();
    assert_eq!((s.max_in_flight, s.in_flight), (4, 0));
    sim.shutdown().await;
}
