//! Station faults that are about single requests rather than the whole
//! station going away (issue 11, contract §7): a write's deadline during a
//! long `Retry-After`, and a station that takes the login but rejects the
//! session on every request (auth loop), both through the station monitor
//! every part of the gateway uses (generic and Unified).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::Bus;
use wincc_gateway::config::{AuthMode, WinccSettings};
use wincc_gateway::model::{TagInfo, TagType};
use wincc_gateway::poll::station;
use wincc_gateway::sim::{self, Faults, SimOptions, TooManyRequests};
use wincc_gateway::wincc::generic::GenericClient;
use wincc_gateway::wincc::unified::UnifiedClient;
use wincc_gateway::wincc::Station;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_get_a_permit_in_time_is_refused_with_the_reason_never_sent_late() {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: 20,
            change_rate: 0.0,
            alarms: false,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let wincc = WinccSettings {
        base_url: sim.base_url(),
        timeout_ms: 1000,
        write_timeout_ms: 500,
        ..WinccSettings::default()
    };
    let client = Arc::new(GenericClient::new(&wincc).unwrap());
    let stop = CancellationToken::new();
    let (st, link, task) = station::start(
        client,
        Bus::new(),
        Duration::from_millis(500),
        wincc.write_timeout(),
        stop.clone(),
    );
    let tag = TagInfo {
        name: "Setpoint".into(),
        ty: TagType::Int32,
        writable: true,
    };
    sim.add_tag(tag.clone(), json!(0));
    assert!(!st.list_tags().await.unwrap().is_empty());
    // The station asks for a 600 s pause.
    sim.set_faults(Faults {
        too_many_requests: Some(TooManyRequests {
            count: 1,
            retry_after_s: 600,
        }),
        ..Faults::default()
    });
    let e = st
        .read_values(&[Arc::from(tag.name.as_str())])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("429"), "{e}");
    assert!(!link.current().is_down(), "a 429 is pacing, not an outage");
    let before = sim.stats();

    let started = Instant::now();
    let e = st
        .write_value(&tag.name, tag.ty, &json!(5))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "refused at once, not after waiting: {:?}",
        started.elapsed()
    );
    let text = e.to_string();
    assert!(
        text.contains("Retry-After") && text.contains("wincc.write_timeout_ms"),
        "{text}"
    );
    // Nothing reached the station, now or later.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = sim.stats();
    assert_eq!(after.total_requests, before.total_requests, "{after:?}");
    assert_eq!(after.tags_written, 0);
    stop.cancel();
    task.await.unwrap();
    sim.shutdown().await;
}

/// A station that takes every login and answers 401 to everything else.
#[derive(Default)]
struct Counts {
    logins: AtomicU64,
    logouts: AtomicU64,
    other: AtomicU64,
}

async fn rejecting_station(counts: Arc<Counts>) -> String {
    let (a, b, c) = (counts.clone(), counts.clone(), counts);
    let app = Router::new()
        .route(
            "/auth/login",
            post(move || async move {
                let n = a.logins.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"token": format!("t{n}"), "expiresIn": 3600}))
            }),
        )
        .route(
            "/auth/logout",
            post(move || async move {
                b.logouts.fetch_add(1, Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }),
        )
        .fallback(move || async move {
            c.other.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(
                    json!({"error": {"code": "Unauthorized", "message": "session unknown"}}),
                ),
            )
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// The same for WinCC Unified: the `login` mutation answers a token, every
/// other operation is refused (HTTP 401), `logout` is counted.
async fn rejecting_unified_station(counts: Arc<Counts>) -> String {
    let app = Router::new().route(
        "/graphql",
        post(move |body: axum::Json<serde_json::Value>| {
            let counts = counts.clone();
            async move {
                match body["operationName"].as_str() {
                    Some("Login") => {
                        let n = counts.logins.fetch_add(1, Ordering::SeqCst);
                        let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
                        let token = format!("t{n}");
                        let login = json!({"token": token, "expires": expires, "error": null});
                        (StatusCode::OK, axum::Json(json!({"data": {"login": login}})))
                    }
                    Some("Logout") => {
                        counts.logouts.fetch_add(1, Ordering::SeqCst);
                        (StatusCode::OK, axum::Json(json!({"data": {"logout": true}})))
                    }
                    _ => {
                        counts.other.fetch_add(1, Ordering::SeqCst);
                        let e = json!({"errors": [{"message": "Unauthorized", "extensions": {"code": "UNAUTHENTICATED"}}]});
                        (StatusCode::UNAUTHORIZED, axum::Json(e))
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/graphql")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_station_that_rejects_every_session_costs_one_login_per_login_pause() {
    let counts = Arc::new(Counts::default());
    let base = rejecting_station(counts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let wincc = rejecting_settings(base, &dir);
    let client = Arc::new(GenericClient::new(&wincc).unwrap());
    hammer_and_check(client, &wincc, &counts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unified_station_that_rejects_every_session_costs_one_login_per_login_pause() {
    let counts = Arc::new(Counts::default());
    let base = rejecting_unified_station(counts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let wincc = rejecting_settings(base, &dir);
    let client = Arc::new(UnifiedClient::new(&wincc).unwrap());
    hammer_and_check(client, &wincc, &counts).await;
}

fn rejecting_settings(base_url: String, dir: &tempfile::TempDir) -> WinccSettings {
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret-pw").unwrap();
    WinccSettings {
        base_url,
        auth: AuthMode::Session,
        username: "gateway".into(),
        password_file: pw.to_string_lossy().into_owned(),
        timeout_ms: 1000,
        ..WinccSettings::default()
    }
}

/// Reads, alarm polls and writes as fast as they like for 12 s through the
/// station monitor: at most one login per login pause, each rejected
/// session logged out, the station reported down with the reason.
async fn hammer_and_check(client: Arc<dyn Station>, wincc: &WinccSettings, counts: &Counts) {
    let stop = CancellationToken::new();
    let (st, link, task) = station::start(
        client,
        Bus::new(),
        Duration::from_millis(100),
        wincc.write_timeout(),
        stop.clone(),
    );
    link.set_probe_tag("Tank1.Level".into());
    // Everyone asks, as fast as they like: groups, the alarm poll, writes.
    let t0 = Instant::now();
    let mut callers = Vec::new();
    for i in 0..3 {
        let st = st.clone();
        callers.push(tokio::spawn(async move {
            while t0.elapsed() < Duration::from_secs(12) {
                let _ = match i {
                    0 => st.read_values(&[Arc::from("Tank1.Level")]).await.map(drop),
                    1 => st.active_alarms().await.map(drop),
                    _ => {
                        st.write_value("Tank1.Level", TagType::Int32, &json!(1))
                            .await
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    // Login pauses 5 s, 10 s: logins at about 0 s and 5 s (and 15 s) —
    // at most 2 in 12 s, whoever asked.
    let logins = counts.logins.load(Ordering::SeqCst);
    assert!((1..=2).contains(&logins), "{logins} logins in 12 s");
    // Every session the station opened and that was discarded is logged out.
    assert_eq!(counts.logouts.load(Ordering::SeqCst), logins);
    // The station is reported down with the reason, not hammered.
    let s = link.current();
    assert!(s.is_down());
    let why = s.why.as_deref().unwrap_or_default();
    assert!(
        why.contains("401") || why.contains("UNAUTHENTICATED"),
        "{s:?}"
    );
    let other = counts.other.load(Ordering::SeqCst);
    assert!(other <= 2 * logins + 1, "{other} rejected requests");
    stop.cancel();
    task.await.unwrap();
}
