//! `/_sim/*`: statistics, fault switches, alarm control and value setting.
//! Served by every dialect, never authenticated, never faulted, never counted.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use serde::Deserialize;

use super::alarms::{AlarmCommand, AlarmError};
use super::faults::Faults;
use super::generic::closing;
use super::http::{json_ok, parse_json, read_body, ApiError};
use super::listener::ConnId;
use super::SimState;
use crate::model::Quality;

type St = State<Arc<SimState>>;

pub(crate) fn router() -> Router<Arc<SimState>> {
    Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/stats/reset", post(reset_stats))
        .route("/_sim/faults", get(get_faults).post(set_faults))
        .route("/_sim/faults/reset", post(reset_faults))
        .route("/_sim/alarms", post(alarm_command))
        .route("/_sim/tags/set", post(set_tag))
}

async fn body_of(st: &SimState, req: Request) -> Result<Vec<u8>, ApiError> {
    let (parts, body) = req.into_parts();
    read_body(body, &parts.headers, st.opts.max_body_bytes).await
}

async fn stats(State(st): St) -> Response {
    json_ok(&st.stats.snapshot())
}

async fn reset_stats(State(st): St) -> StatusCode {
    st.stats.reset();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(st): St) -> Response {
    json_ok(&st.faults().get())
}

fn apply(st: &Arc<SimState>, f: Faults, conn: Option<ConnId>) -> Result<Response, ApiError> {
    let outage = f.outage().is_some();
    st.apply_faults(f, conn).map_err(ApiError::bad_request)?;
    let resp = json_ok(&st.faults().get());
    // The asking connection survives the outage only to carry this answer.
    Ok(if outage { closing(resp) } else { resp })
}

async fn set_faults(State(st): St, req: Request) -> Result<Response, ApiError> {
    let conn = req.extensions().get::<ConnectInfo<ConnId>>().map(|c| c.0);
    let bytes = body_of(&st, req).await?;
    let f: Faults = parse_json(&bytes)?;
    apply(&st, f, conn)
}

async fn reset_faults(State(st): St) -> Result<Response, ApiError> {
    apply(&st, Faults::default(), None)
}

async fn alarm_command(State(st): St, req: Request) -> Result<Response, ApiError> {
    let bytes = body_of(&st, req).await?;
    let cmd: AlarmCommand = parse_json(&bytes)?;
    let result = st.alarms().command(cmd, Utc::now());
    match result {
        Ok(alarm) => Ok(json_ok(&alarm)),
        Err(e @ AlarmError::NotFound(_)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownAlarm",
            e.to_string(),
        )),
        Err(e @ AlarmError::Active(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "AlarmActive",
            e.to_string(),
        )),
        Err(e @ AlarmError::Invalid(_)) => Err(ApiError::bad_request(e.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SetTag {
    name: String,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    quality: Option<String>,
    #[serde(default)]
    quality_code: Option<u32>,
}

/// `{"name":N,"value":V,"quality":"Good"|"Uncertain"|"Bad","qualityCode":C}`:
/// sets a tag's value and/or quality, writable or not.
async fn set_tag(State(st): St, req: Request<Body>) -> Result<Response, ApiError> {
    let bytes = body_of(&st, req).await?;
    let cmd: SetTag = parse_json(&bytes)?;
    let quality = match cmd.quality.as_deref() {
        None => Quality::Good,
        Some(q) => Quality::parse(q)
            .ok_or_else(|| ApiError::bad_request(format!("unknown quality {q:?}")))?,
    };
    st.store_mut()
        .force(&cmd.name, cmd.value.as_ref(), quality, cmd.quality_code)
        .map_err(|e| {
            let status = if e.code == "UnknownTag" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            ApiError::new(status, e.code, e.message)
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
