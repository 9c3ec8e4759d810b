//! `GET /healthz`, `/livez`, `/readyz` and `/metrics` (Prometheus text
//! format).
//!
//! Health (contract §7): `/healthz` is `degraded` (503) at once while the
//! station is not connected (or a poll group is failing: the station is
//! then shown degraded with the first failing group named) or an enabled
//! sink is down; the JSON says which part and why. `/readyz` is 200 only
//! when `/healthz` is ok. `/livez` is 200 while every task of the gateway
//! runs, 503 once one ended unexpectedly (the process then exits non-zero
//! for its service manager to restart it).
//!
//! Metrics are recorded everywhere with the `metrics` crate's macros; this
//! module installs the Prometheus recorder once per process and serves what
//! it renders. Health is assembled from `watch` channels owned by the parts
//! that know: the station state (tracked from the bus), the MQTT connection
//! and the OPC UA server, plus the MQTT store-and-forward buffer's backlog,
//! and the configuration's version and load time (`config`). The status
//! page at `/` is [`crate::status`]; these four endpoints answer without a
//! login wherever the server is bound (probes and Prometheus scrapers
//! carry none).

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::format_ts;
use crate::poll::StationState;

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("static, non-empty bucket list")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample (a publish latency per MQTT
/// message, a duration per station request) until upkeep folds them into
/// the buckets. Without this thread that happened only when `/metrics` was
/// scraped: a gateway nobody scraped grew by every sample (about 1 MB a
/// minute at 2 000 changes/s, more during faults). A plain thread, so it
/// needs no runtime and outlives none.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram samples are folded only when /metrics is scraped");
    }
}

/// State of one component for `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentState {
    Disabled,
    Up,
    /// Up, with this many client sessions open (the OPC UA server).
    Serving {
        sessions: usize,
    },
    Down(String),
}

impl ComponentState {
    fn to_json(&self) -> serde_json::Value {
        match self {
            ComponentState::Disabled => json!({"state": "disabled"}),
            ComponentState::Up => json!({"state": "up"}),
            ComponentState::Serving { sessions } => json!({"state": "up", "sessions": sessions}),
            ComponentState::Down(e) => json!({"state": "down", "error": e}),
        }
    }
}

/// Where `/healthz`, `/livez` and `/readyz` read from.
#[derive(Clone)]
pub struct HealthSources {
    /// The station's one state (kept by the station monitor).
    pub station: watch::Receiver<StationState>,
    pub mqtt: watch::Receiver<ComponentState>,
    pub opcua: watch::Receiver<ComponentState>,
    /// The Sparkplug B sink's own MQTT connection (`Disabled` when off).
    pub sparkplug: watch::Receiver<ComponentState>,
    /// `[mqtt.buffer]`, when enabled: shown as `mqtt_buffer`; a buffer that
    /// cannot be written makes the gateway degraded.
    pub mqtt_buffer: Option<watch::Receiver<crate::sinks::mqtt::BacklogStatus>>,
    /// The first task that ended unexpectedly, with why (for `/livez`).
    pub failed: watch::Receiver<Option<String>>,
    /// The configuration in force (version, when loaded), shown as `config`.
    pub config: Option<watch::Receiver<crate::status::ConfigInfo>>,
}

fn station_json(s: &StationState) -> (bool, serde_json::Value) {
    match s.connected {
        None => (
            false,
            json!({"state": "connecting", "since": format_ts(&s.since)}),
        ),
        Some(false) => (
            false,
            json!({"state": "disconnected", "since": format_ts(&s.since), "error": s.why}),
        ),
        Some(true) => match s.failing_groups.iter().next() {
            None => (
                true,
                json!({"state": "connected", "since": format_ts(&s.since)}),
            ),
            // Named in a stable order (by name), so the document does not
            // flap between groups.
            Some((group, why)) => (
                false,
                json!({
                    "state": "degraded",
                    "since": format_ts(&s.since),
                    "error": format!("poll group {group:?}: {why}"),
                    "failing_groups": s.failing_groups.keys().map(|g| g.to_string()).collect::<Vec<_>>(),
                }),
            ),
        },
    }
}

/// The health document and whether it is healthy.
pub fn health(src: &HealthSources) -> (bool, serde_json::Value) {
    let (station_ok, station) = station_json(&src.station.borrow());
    let mqtt = src.mqtt.borrow().clone();
    let opcua = src.opcua.borrow().clone();
    let sparkplug = src.sparkplug.borrow().clone();
    let buffer = src.mqtt_buffer.as_ref().map(|b| b.borrow().clone());
    let ok = station_ok
        && !matches!(mqtt, ComponentState::Down(_))
        && !matches!(opcua, ComponentState::Down(_))
        && !matches!(sparkplug, ComponentState::Down(_))
        && buffer.as_ref().is_none_or(|b| b.is_ok());
    let mut body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "station": station,
        "mqtt": mqtt.to_json(),
        "opcua": opcua.to_json(),
    });
    if !matches!(sparkplug, ComponentState::Disabled) {
        body["sparkplug"] = sparkplug.to_json();
    }
    if let Some(b) = buffer {
        body["mqtt_buffer"] = b.to_json();
    }
    if let Some(c) = &src.config {
        body["config"] = c.borrow().to_json();
    }
    (ok, body)
}

#[derive(Clone)]
struct AppState {
    health: HealthSources,
    metrics: PrometheusHandle,
}

async fn healthz(State(st): State<AppState>) -> Response {
    let (ok, body) = health(&st.health);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn readyz(State(st): State<AppState>) -> Response {
    let (ok, body) = health(&st.health);
    if ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

async fn livez(State(st): State<AppState>) -> Response {
    match st.health.failed.borrow().clone() {
        None => (StatusCode::OK, "alive\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "failed", "error": why})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    st.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// Binds `listen` and serves until `shutdown`, with `page` (the status
/// page's routes, see [`crate::status::web`]) merged in when given.
/// Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    health: HealthSources,
    page: Option<Router>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state = AppState {
        health,
        metrics: metrics_handle(),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let app = match page {
        Some(page) => app.merge(page),
        None => app,
    };
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn state(connected: Option<bool>) -> StationState {
        StationState {
            connected,
            since: chrono::Utc::now(),
            why: connected
                .is_some_and(|c| !c)
                .then(|| "read failed: refused".into()),
            failing_groups: BTreeMap::new(),
            outages: 0,
        }
    }

    fn sources(station: StationState) -> HealthSources {
        HealthSources {
            station: watch::channel(station).1,
            mqtt: watch::channel(ComponentState::Up).1,
            opcua: watch::channel(ComponentState::Disabled).1,
            sparkplug: watch::channel(ComponentState::Disabled).1,
            mqtt_buffer: None,
            failed: watch::channel(None).1,
            config: None,
        }
    }

    #[test]
    fn degraded_at_once_while_the_station_is_not_connected_with_the_reason() {
        let (ok, body) = health(&sources(state(Some(true))));
        assert!(ok, "{body}");
        assert_eq!(body["station"]["state"], "connected");
        let (ok, body) = health(&sources(state(Some(false))));
        assert!(!ok);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["station"]["error"], "read failed: refused");
        let (ok, body) = health(&sources(state(None)));
        assert!(!ok, "{body}");
        assert_eq!(body["station"]["state"], "connecting");
    }

    #[test]
    fn a_failing_group_degrades_the_station_naming_the_first_group_by_name() {
        let mut s = state(Some(true));
        s.failing_groups
            .insert("slow".into(), "1 of 2 requests failed".into());
        s.failing_groups
            .insert("fast".into(), "2 of 2 requests failed".into());
        let (ok, body) = health(&sources(s));
        assert!(!ok);
        assert_eq!(body["station"]["state"], "degraded");
        let e = body["station"]["error"].as_str().unwrap();
        assert!(e.starts_with("poll group \"fast\""), "{e}");
        assert_eq!(body["station"]["failing_groups"], json!(["fast", "slow"]));
    }

    #[test]
    fn a_sparkplug_connection_that_is_down_degrades_with_its_reason() {
        let mut src = sources(state(Some(true)));
        let (ok, body) = health(&src);
        assert!(ok && body.get("sparkplug").is_none(), "{body}");
        src.sparkplug = watch::channel(ComponentState::Up).1;
        let (ok, body) = health(&src);
        assert!(ok, "{body}");
        assert_eq!(body["sparkplug"], ComponentState::Up.to_json());
        src.sparkplug = watch::channel(ComponentState::Down("connection refused".into())).1;
        let (ok, body) = health(&src);
        assert!(!ok, "{body}");
        assert_eq!(body["status"], "degraded");
        assert!(
            body["sparkplug"].to_string().contains("connection refused"),
            "{body}"
        );
    }

    #[test]
    fn the_mqtt_buffer_backlog_shows_and_a_failing_buffer_degrades() {
        let mut src = sources(state(Some(true)));
        let (ok, body) = health(&src);
        assert!(ok && body.get("mqtt_buffer").is_none(), "{body}");
        let mut st = crate::sinks::mqtt::BacklogStatus {
            entries: 5,
            bytes: 100,
            ..Default::default()
        };
        src.mqtt_buffer = Some(watch::channel(st.clone()).1);
        let (ok, body) = health(&src);
        assert!(ok, "{body}");
        assert_eq!(body["mqtt_buffer"]["state"], "ok");
        assert_eq!(body["mqtt_buffer"]["entries"], 5);
        st.error = Some("disk full".into());
        st.unbuffered = 3;
        src.mqtt_buffer = Some(watch::channel(st).1);
        let (ok, body) = health(&src);
        assert!(!ok);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["mqtt_buffer"]["state"], "failing");
        assert_eq!(body["mqtt_buffer"]["unbuffered"], 3);
        assert_eq!(body["mqtt_buffer"]["error"], "disk full");
    }

    #[test]
    fn opcua_shows_its_session_count() {
        let mut src = sources(state(Some(true)));
        src.opcua = watch::channel(ComponentState::Serving { sessions: 3 }).1;
        let (ok, body) = health(&src);
        assert!(ok, "{body}");
        assert_eq!(body["opcua"], json!({"state": "up", "sessions": 3}));
        src.opcua = watch::channel(ComponentState::Down("stopped".into())).1;
        let (ok, body) = health(&src);
        assert!(!ok);
        assert_eq!(body["opcua"], json!({"state": "down", "error": "stopped"}));
    }
}
