//! The `wincc-v7` dialect (WINCC-DIALECTS.md §1 and §7): the WinCC V7.5 SP2
//! / V8.x REST service under `/WinCCRestService`, paths matched without
//! regard to case, HTTP Basic required on every request (401 with
//! `WWW-Authenticate: Basic` otherwise, whatever `SimOptions::auth` says;
//! the users are `SimOptions::users`), no login route. Paths outside
//! `/WinCCRestService` are 404 without authentication, like HTTP.sys.
//!
//! | method, path (under `/WinCCRestService`) | answer |
//! |---|---|
//! | `POST /tagManagement/Values` `{"variableNames":[..]}` | array of `{variableName, dataType, value, timestamp, qualitycode, errorcode}`; unknown names `{variableName, error, errorcode}` |
//! | `GET /tagManagement/Variables?itemLimit=N&continuationPoint=C` | `{"variables":[{variableName, dataType, typeName}], "continuationPoint": C' or null}`: no writability field, like a real station (WINCC-DIALECTS.md §10); `SimOptions::v7_untyped_browse` leaves the types out, `v7_type_codes` serves other codes |
//! | `GET /tagManagement/Value/{name}` | one row as above |
//! | `PUT /tagManagement/Value/{name}` `{"value":V}` | `{variableName, errorcode}`: 0 accepted, 2 read-only, 3 wrong type or range; unknown tag 404 with errorcode 1 |
//! | `GET /alarmLogging/MessageList/{filter}` | array of the active alarms in WinCC's words (any non-empty filter), see [`message_row`] |
//!
//! `dataType` codes: 1 Bool, 2 Int8, 3 UInt8, 4 Int16, 5 UInt16, 6 Int32,
//! 7 UInt32, 8 Float, 9 Double, 10 String; Int64 and DateTime have no WinCC
//! code and are sent as 0 (clients take the type from browsing's
//! `typeName`). `qualitycode` is the stored
//! raw code, else 0x80 / 0x40 / 0x00 for good / uncertain / bad.
//!
//! The quirks (switched through `/_sim/faults`, see [`super::Faults`]):
//! `drop_rows`, `empty_body`, `mixed_key_case`, `values_as_strings`,
//! `slow_batch_ms` + `slow_batch_min_names`; the generic faults (latency,
//! 429/500/503, malformed and truncated bodies, outage) apply as well.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::faults::BatchQuirks;
use super::generic::{refusal, User};
use super::http::{json_ok, json_response, parse_json, read_body, spoil, ApiError};
use super::store::{SimTag, TagStore};
use super::{control, SimState};
use crate::model::{format_ts, Alarm, AlarmState, Quality, TagType};

type St = State<Arc<SimState>>;

/// The service's path prefix.
pub const PREFIX: &str = "/WinCCRestService";

/// The station routes plus `/_sim/*`.
pub fn router(state: Arc<SimState>) -> Router {
    control::router()
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), layer))
        .with_state(state)
}

/// A request's route: the endpoint and the still-encoded rest of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Values,
    Variables,
    Value(&'a str),
    MessageList(&'a str),
    Other,
}

/// Strips `prefix` from `s` ignoring ASCII case.
fn strip_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The route of a raw path; `None` when it is outside the service.
fn route(path: &str) -> Option<Route<'_>> {
    let rest = strip_ci(path, PREFIX)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = rest.trim_end_matches('/');
    Some(if rest.eq_ignore_ascii_case("/tagManagement/Values") {
        Route::Values
    } else if rest.eq_ignore_ascii_case("/tagManagement/Variables") {
        Route::Variables
    } else if let Some(n) = strip_ci(rest, "/tagManagement/Value/").filter(|n| !n.is_empty()) {
        Route::Value(n)
    } else if let Some(f) = strip_ci(rest, "/alarmLogging/MessageList/").filter(|f| !f.is_empty()) {
        Route::MessageList(f)
    } else {
        Route::Other
    })
}

/// The statistics label of a request, and whether it is a read.
pub fn classify(method: &Method, path: &str) -> (&'static str, bool) {
    match (method.as_str(), route(path)) {
        ("POST", Some(Route::Values)) => ("POST /tagManagement/Values", true),
        ("GET", Some(Route::Variables)) => ("GET /tagManagement/Variables", true),
        ("GET", Some(Route::Value(_))) => ("GET /tagManagement/Value/{name}", true),
        ("PUT", Some(Route::Value(_))) => ("PUT /tagManagement/Value/{name}", false),
        ("PUT", Some(Route::Values)) => ("PUT /tagManagement/Values", false),
        ("GET", Some(Route::MessageList(_))) => ("GET /alarmLogging/MessageList/{filter}", true),
        _ => ("other", false),
    }
}

/// Statistics, faults and Basic auth for every station request.
async fn layer(State(st): St, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/_sim" || path.starts_with("/_sim/") {
        return next.run(req).await;
    }
    let (label, is_read) = classify(req.method(), path);
    let inside = route(path).is_some();
    let _in_flight = st.stats.begin(label);
    let (latency, refused) = st.faults().before_request();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = if let Some(r) = refused {
        refusal(r).into_response()
    } else if !inside {
        ApiError::not_found(format!("no service at {}", req.uri().path())).into_response()
    } else {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let checked = st.sessions().check_basic(header);
        match checked {
            Ok(user) => {
                req.extensions_mut().insert(User(user));
                next.run(req).await
            }
            Err(f) => ApiError {
                basic_challenge: true,
                ..ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", f.message())
            }
            .into_response(),
        }
    };
    st.stats.status(resp.status().as_u16());
    if is_read && resp.status() == StatusCode::OK {
        let fault = st.faults().body_fault();
        if let Some(f) = fault {
            return spoil(resp, f).await;
        }
    }
    resp
}

async fn dispatch(State(st): St, req: Request) -> Result<Response, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (parts, body) = req.into_parts();
    match (method.as_str(), route(&path).unwrap_or(Route::Other)) {
        ("POST", Route::Values) => {
            let bytes = read_body(body, &parts.headers, st.opts.max_body_bytes).await?;
            read_values(&st, &bytes).await
        }
        ("PUT", Route::Values) => {
            let bytes = read_body(body, &parts.headers, st.opts.max_body_bytes).await?;
            put_values(&st, &bytes)
        }
        ("GET", Route::Variables) => variables(&st, &query),
        ("GET", Route::Value(raw)) => {
            let name = decode(raw)?;
            st.stats.tags_read(1);
            let store = st.store();
            let mut out = Vec::with_capacity(160);
            write_row(
                &store,
                &st.opts.v7_type_codes,
                &name,
                BatchQuirks::default(),
                0,
                &mut out,
            );
            Ok(json_response(StatusCode::OK, out))
        }
        ("PUT", Route::Value(raw)) => {
            let name = decode(raw)?;
            let bytes = read_body(body, &parts.headers, st.opts.max_body_bytes).await?;
            put_value(&st, &name, &bytes)
        }
        ("GET", Route::MessageList(raw)) => {
            decode(raw)?;
            let rows: Vec<serde_json::Value> =
                st.alarms().current().iter().map(message_row).collect();
            Ok(json_ok(&rows))
        }
        (_, Route::Other) => Err(ApiError::not_found(format!("no resource at {path}"))),
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not allowed on {path}"),
        )),
    }
}

/// An alarm as a `MessageList` row in WinCC's own words: the message
/// number `MsgNr` (a number where the id is numeric, else a string), the
/// state as WinCC's words ("came in", "came in acknowledged", "went
/// out"), one time stamp per state change.
pub fn message_row(a: &Alarm) -> serde_json::Value {
    let number = a.id.parse::<u64>().map_or_else(
        |_| serde_json::Value::from(a.id.clone()),
        serde_json::Value::from,
    );
    let state = match a.state {
        AlarmState::Raised => "came in",
        AlarmState::Acknowledged => "came in acknowledged",
        AlarmState::Cleared => "went out",
    };
    let state_time = match a.state {
        AlarmState::Raised => Some(&a.raised_at),
        AlarmState::Acknowledged => a.acknowledged_at.as_ref(),
        AlarmState::Cleared => a.cleared_at.as_ref(),
    };
    serde_json::json!({
        "MsgNr": number,
        "State": state,
        "Text1": a.text,
        "ClassName": a.class,
        "Priority": a.priority,
        "Source": a.name,
        "TimeStamp": a.raised_at,
        "StateTime": state_time,
    })
}

/// Percent-decodes a name taken from the raw path, exactly once.
fn decode(raw: &str) -> Result<String, ApiError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("name is not valid UTF-8 after percent-decoding"))
}

/// The `dataType` code served for a tag: its override from
/// `SimOptions::v7_type_codes`, else [`type_code`].
fn served_code(codes: &[(String, i64)], name: &str, ty: TagType) -> i64 {
    codes
        .iter()
        .find(|(n, _)| n == name)
        .map_or(i64::from(type_code(ty)), |(_, c)| *c)
}

/// WinCC's `dataType` code of a type (0: WinCC has none).
pub fn type_code(ty: TagType) -> u32 {
    match ty {
        TagType::Bool => 1,
        TagType::Int8 => 2,
        TagType::UInt8 => 3,
        TagType::Int16 => 4,
        TagType::UInt16 => 5,
        TagType::Int32 => 6,
        TagType::UInt32 => 7,
        TagType::Float => 8,
        TagType::Double => 9,
        TagType::String => 10,
        TagType::Int64 | TagType::DateTime => 0,
    }
}

/// The raw quality byte of a tag.
pub fn quality_code(tag: &SimTag) -> u32 {
    tag.quality_code.unwrap_or(match tag.quality {
        Quality::Good => 0x80,
        Quality::Uncertain => 0x40,
        Quality::Bad => 0x00,
    })
}

/// Row keys in the documented spelling and two others (`mixed_key_case`).
const KEYS: [[&str; 7]; 3] = [
    [
        "variableName",
        "dataType",
        "value",
        "timestamp",
        "qualitycode",
        "errorcode",
        "error",
    ],
    [
        "VariableName",
        "DataType",
        "Value",
        "TimeStamp",
        "QualityCode",
        "ErrorCode",
        "Error",
    ],
    [
        "VARIABLENAME",
        "DATATYPE",
        "VALUE",
        "TIMESTAMP",
        "QUALITYCODE",
        "ERRORCODE",
        "ERROR",
    ],
];

fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends one row for `name`; `i` picks the key spelling when keys are mixed.
fn write_row(
    store: &TagStore,
    codes: &[(String, i64)],
    name: &str,
    q: BatchQuirks,
    i: usize,
    out: &mut Vec<u8>,
) {
    let k = &KEYS[if q.mixed_key_case { i % 3 } else { 0 }];
    out.push(b'{');
    key(out, k[0]);
    let _ = serde_json::to_writer(&mut *out, name);
    let Some(tag) = store.get(name) else {
        out.push(b',');
        key(out, k[5]);
        out.extend_from_slice(b"1,");
        key(out, k[6]);
        let _ = serde_json::to_writer(&mut *out, &format!("variable {name:?} does not exist"));
        out.push(b'}');
        return;
    };
    out.push(b',');
    key(out, k[1]);
    let _ = serde_json::to_writer(&mut *out, &served_code(codes, &tag.info.name, tag.info.ty));
    out.push(b',');
    key(out, k[2]);
    let v = tag.value.to_json();
    match v {
        serde_json::Value::String(_) => drop(serde_json::to_writer(&mut *out, &v)),
        other if q.values_as_strings => drop(serde_json::to_writer(&mut *out, &other.to_string())),
        other => drop(serde_json::to_writer(&mut *out, &other)),
    }
    out.push(b',');
    key(out, k[3]);
    let _ = serde_json::to_writer(&mut *out, &format_ts(&tag.timestamp()));
    out.push(b',');
    key(out, k[4]);
    let _ = serde_json::to_writer(&mut *out, &quality_code(tag));
    out.push(b',');
    key(out, k[5]);
    out.extend_from_slice(b"0}");
}

#[derive(Deserialize)]
struct ReadReq {
    #[serde(
        rename = "variableNames",
        alias = "VariableNames",
        alias = "variablenames"
    )]
    variable_names: Vec<String>,
}

/// Answers a `POST tagManagement/Values` body from the store with the given
/// quirks: the body and the number of names asked for.
pub fn read_values_json(
    store: &TagStore,
    codes: &[(String, i64)],
    body: &[u8],
    q: BatchQuirks,
) -> Result<(Vec<u8>, usize), ApiError> {
    let req: ReadReq = parse_json(body)?;
    let n = req.variable_names.len();
    if q.empty_body {
        return Ok((Vec::new(), n));
    }
    let mut out = Vec::with_capacity(2 + n * 130);
    out.push(b'[');
    let mut first = true;
    for (i, name) in req.variable_names.iter().enumerate() {
        if q.drop_rows && i % 2 == 1 {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_row(store, codes, name, q, i, &mut out);
    }
    out.push(b']');
    Ok((out, n))
}

async fn read_values(st: &Arc<SimState>, bytes: &[u8]) -> Result<Response, ApiError> {
    let names = parse_json::<ReadReq>(bytes)?.variable_names.len();
    let q = st.faults().batch_quirks(names);
    if !q.delay.is_zero() {
        tokio::time::sleep(q.delay).await;
    }
    let (out, n) = read_values_json(&st.store(), &st.opts.v7_type_codes, bytes, q)?;
    st.stats.tags_read(n);
    Ok(json_response(StatusCode::OK, out))
}

/// Default and largest `itemLimit`.
const ITEM_LIMIT: usize = 1000;

fn variables(st: &SimState, query: &str) -> Result<Response, ApiError> {
    let mut limit = ITEM_LIMIT;
    let mut start = 0usize;
    for (k, v) in url_pairs(query) {
        let bad = || ApiError::bad_request(format!("{k}={v:?} is not a number"));
        if k.eq_ignore_ascii_case("itemLimit") {
            limit = v.parse::<usize>().map_err(|_| bad())?.clamp(1, ITEM_LIMIT);
        } else if k.eq_ignore_ascii_case("continuationPoint") && !v.is_empty() {
            start = v.parse::<usize>().map_err(|_| bad())?;
        }
    }
    let store = st.store();
    let tags = store.tags();
    let start = start.min(tags.len());
    let end = start.saturating_add(limit).min(tags.len());
    let rows: Vec<serde_json::Value> = tags[start..end]
        .iter()
        .map(|t| {
            let name = &t.info.name;
            let overridden = st.opts.v7_type_codes.iter().any(|(n, _)| n == name);
            if st.opts.v7_untyped_browse {
                serde_json::json!({ "variableName": name })
            } else if overridden {
                serde_json::json!({
                    "variableName": name,
                    "dataType": served_code(&st.opts.v7_type_codes, name, t.info.ty),
                })
            } else {
                serde_json::json!({
                    "variableName": name,
                    "dataType": type_code(t.info.ty),
                    "typeName": t.info.ty.as_str(),
                })
            }
        })
        .collect();
    let next = (end < tags.len()).then(|| end.to_string());
    Ok(json_ok(
        &serde_json::json!({"variables": rows, "continuationPoint": next}),
    ))
}

fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let d = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (d(k), d(v))
    })
}

/// `PUT tagManagement/Values` `[{"variableName":N,"value":V}]`: one row per
/// write, `errorcode` as for a single write.
fn put_values(st: &SimState, bytes: &[u8]) -> Result<Response, ApiError> {
    let req: serde_json::Value = parse_json(bytes)?;
    let items = req.as_array().ok_or_else(|| {
        ApiError::bad_request("body must be [{\"variableName\": N, \"value\": V}]")
    })?;
    let mut rows = Vec::with_capacity(items.len());
    for item in items {
        let o = item
            .as_object()
            .ok_or_else(|| ApiError::bad_request("each write must be an object"))?;
        let field = |k: &str| {
            o.iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        };
        let name = field("variableName")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ApiError::bad_request("each write needs a variableName string"))?;
        let value = field("value")
            .cloned()
            .ok_or_else(|| ApiError::bad_request("each write needs a value"))?;
        let (code, error) = match st.store_mut().write(name, &value) {
            Ok(()) => {
                st.stats.tags_written(1);
                (0, None)
            }
            Err(e) if e.code == "UnknownTag" => (1, Some(e.message)),
            Err(e) if e.code == "ReadOnly" => (2, Some(e.message)),
            Err(e) => (3, Some(e.message)),
        };
        let mut row = serde_json::json!({"variableName": name, "errorcode": code});
        if let Some(e) = error {
            row["error"] = serde_json::Value::String(e);
        }
        rows.push(row);
    }
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_vec(&rows).unwrap_or_default(),
    ))
}

fn put_value(st: &SimState, name: &str, bytes: &[u8]) -> Result<Response, ApiError> {
    let req: serde_json::Value = parse_json(bytes)?;
    let value = req
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("value")))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ApiError::bad_request("body must be {\"value\": V}"))?;
    let result = st.store_mut().write(name, &value);
    let (status, code, error) = match result {
        Ok(()) => {
            st.stats.tags_written(1);
            (StatusCode::OK, 0, None)
        }
        Err(e) if e.code == "UnknownTag" => (StatusCode::NOT_FOUND, 1, Some(e.message)),
        Err(e) if e.code == "ReadOnly" => (StatusCode::OK, 2, Some(e.message)),
        Err(e) => (StatusCode::OK, 3, Some(e.message)),
    };
    let mut body = serde_json::json!({"variableName": name, "errorcode": code});
    if let Some(e) = error {
        body["error"] = serde_json::Value::String(e);
    }
    Ok(json_response(
        status,
        serde_json::to_vec(&body).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_ignore_case_and_keep_names_raw() {
        assert_eq!(
            route("/WinCCRestService/tagManagement/Values"),
            Some(Route::Values)
        );
        assert_eq!(
            route("/winccrestservice/TAGMANAGEMENT/values/"),
            Some(Route::Values)
        );
        assert_eq!(
            route("/WinccRestService/TagManagement/Value/A%2FB.C"),
            Some(Route::Value("A%2FB.C"))
        );
        assert_eq!(route("/auth/login"), None);
        assert_eq!(route("/WinCCRestServiceX/tagManagement/Values"), None);
        assert_eq!(
            classify(
                &Method::GET,
                "/wincCrestservice/alarmlogging/messagelist/F1"
            ),
            ("GET /alarmLogging/MessageList/{filter}", true)
        );
    }

    #[test]
    fn quirks_shape_the_batch_answer() {
        let store = TagStore::generate(30, 1);
        let names: Vec<String> = store.tags()[..4]
            .iter()
            .map(|t| t.info.name.clone())
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "variableNames": names })).unwrap();
        let parse = |q| {
            let (out, n) = read_values_json(&store, &[], &body, q).unwrap();
            assert_eq!(n, 4);
            out
        };
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&parse(BatchQuirks::default())).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[2]["variableName"], names[2].as_str());
        assert_eq!(v[0]["errorcode"], 0);
        let dropped = BatchQuirks {
            drop_rows: true,
            ..BatchQuirks::default()
        };
        let v: Vec<serde_json::Value> = serde_json::from_slice(&parse(dropped)).unwrap();
        assert_eq!(v.len(), 2);
        assert!(parse(BatchQuirks {
            empty_body: true,
            ..BatchQuirks::default()
        })
        .is_empty());
        let mixed = BatchQuirks {
            mixed_key_case: true,
            values_as_strings: true,
            ..BatchQuirks::default()
        };
        let v: Vec<serde_json::Value> = serde_json::from_slice(&parse(mixed)).unwrap();
        assert!(v[1].get("VariableName").is_some() && v[2].get("QUALITYCODE").is_some());
        assert!(v.iter().all(|r| r
            .as_object()
            .unwrap()
            .iter()
            .any(|(k, x)| k.eq_ignore_ascii_case("value") && x.is_string())));
    }
}
