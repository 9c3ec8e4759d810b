//! `GET /healthz` and `GET /metrics` (Prometheus text format).
//!
//! Metrics are recorded everywhere with the `metrics` crate's macros; this
//! module installs the Prometheus recorder once per process and serves what
//! it renders. Health is assembled from `watch` channels owned by the parts
//! that know: the station state (tracked from the bus), the MQTT connection
//! and the OPC UA server, plus the MQTT store-and-forward buffer's backlog.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bus::{Event, Subscriber};
use crate::model::{format_ts, StationStatus};

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
            handle
        })
        .clone()
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

/// Where `/healthz` reads from.
#[derive(Clone)]
pub struct HealthSources {
    pub station: watch::Receiver<Option<StationStatus>>,
    pub mqtt: watch::Receiver<ComponentState>,
    pub opcua: watch::Receiver<ComponentState>,
    /// `[mqtt.buffer]`, when enabled: shown as `mqtt_buffer`; a buffer that
    /// cannot be written makes the gateway degraded.
    pub mqtt_buffer: Option<watch::Receiver<crate::sinks::mqtt::BacklogStatus>>,
    /// The station may be unreachable this long before `/healthz` says 503.
    pub unhealthy_after: Duration,
    pub started: Instant,
}

/// Follows `Event::Station` on the bus into a watch channel for `/healthz`.
pub fn track_station(mut events: Subscriber) -> watch::Receiver<Option<StationStatus>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let Event::Station(s) = e {
                metrics::gauge!("wincc_gateway_station_connected").set(if s.connected {
                    1.0
                } else {
                    0.0
                });
                tx.send_replace(Some(s));
            }
        }
    });
    rx
}

/// The health document and whether it is healthy.
pub fn health(src: &HealthSources) -> (bool, serde_json::Value) {
    let now = chrono::Utc::now();
    let station = src.station.borrow().clone();
    let (station_ok, station_json) = match station {
        None => {
            // Not yet known: healthy during the grace period after start.
            let ok = src.started.elapsed() < src.unhealthy_after;
            (ok, json!({"state": "connecting"}))
        }
        Some(s) if s.connected => (
            true,
            json!({"state": "connected", "since": format_ts(&s.since)}),
        ),
        Some(s) => {
            let down_for = (now - s.since).to_std().unwrap_or_default();
            (
                down_for < src.unhealthy_after,
                json!({"state": "disconnected", "since": format_ts(&s.since), "error": s.error}),
            )
        }
    };
    let mqtt = src.mqtt.borrow().clone();
    let opcua = src.opcua.borrow().clone();
    let buffer = src.mqtt_buffer.as_ref().map(|b| b.borrow().clone());
    let ok = station_ok
        && !matches!(mqtt, ComponentState::Down(_))
        && !matches!(opcua, ComponentState::Down(_))
        && buffer.as_ref().is_none_or(|b| b.is_ok());
    let mut body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "station": station_json,
        "mqtt": mqtt.to_json(),
        "opcua": opcua.to_json(),
    });
    if let Some(b) = buffer {
        body["mqtt_buffer"] = b.to_json();
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

/// Binds `listen` and serves until `shutdown`. Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    health: HealthSources,
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
        .route("/metrics", get(metrics_text))
        .with_state(state);
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

    fn sources(station: Option<StationStatus>, after: Duration) -> HealthSources {
        HealthSources {
            station: watch::channel(station).1,
            mqtt: watch::channel(ComponentState::Up).1,
            opcua: watch::channel(ComponentState::Disabled).1,
            mqtt_buffer: None,
            unhealthy_after: after,
            started: Instant::now(),
        }
    }

    #[test]
    fn unhealthy_only_after_the_station_was_down_long_enough() {
        let down = |secs: i64| StationStatus {
            connected: false,
            since: chrono::Utc::now() - chrono::Duration::seconds(secs),
            error: Some("refused".into()),
        };
        let (ok, body) = health(&sources(Some(down(1)), Duration::from_secs(30)));
        assert!(ok, "{body}");
        let (ok, body) = health(&sources(Some(down(60)), Duration::from_secs(30)));
        assert!(!ok);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["station"]["error"], "refused");
        let (ok, body) = health(&sources(None, Duration::from_secs(30)));
        assert!(ok, "{body}");
    }

    #[test]
    fn the_mqtt_buffer_backlog_shows_and_a_failing_buffer_degrades() {
        let mut src = sources(None, Duration::from_secs(30));
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
        let mut src = sources(None, Duration::from_secs(30));
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
