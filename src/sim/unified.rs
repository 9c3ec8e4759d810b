//! The `unified` dialect: WinCC Unified's GraphQL API on `POST /graphql`
//! (WINCC-DIALECTS.md §2 and §7), backed by the shared tag store,
//! sessions, alarms, statistics and faults. `/_sim/*` is served as in the
//! generic dialect.
//!
//! Operations: `login`, `extendSession`, `logout` (mutations), `tagValues`,
//! `browse`, `activeAlarms` (queries) and `writeTagValues` (mutation). Each
//! request carries one operation whose arguments are variables (see
//! [`super::unified_gql`]); anything else is answered with a GraphQL
//! `errors[]`. Statistics count requests as `"POST /graphql <field>"`.
//!
//! Auth (any `--auth` other than `none`): `login` answers error code "101"
//! on bad credentials; every other operation needs `Authorization: Bearer`,
//! and a missing, unknown or expired token gets HTTP 200 with
//! `errors[0].extensions.code = "UNAUTHENTICATED"`. `extendSession` hands out
//! a fresh token with a full lifetime and ends the old one. Fault switches
//! act as in the generic dialect (HTTP 429/500/503, latency, outage; body
//! faults spoil `tagValues`, `browse` and `activeAlarms` answers).
//! `GET /graphql` is the WebSocket side (`super::unified_ws`).
//!
//! Like a V20 runtime (WINCC-DIALECTS.md §10): `/graphql/` serves the same
//! (with `SimOptions::unified_require_trailing_slash`, `POST /graphql` is
//! answered 301 to `/graphql/`); a POST without a non-empty
//! `apollo-require-preflight` (or `x-apollo-operation-name`) header is
//! answered 400 "potential Cross-Site Request Forgery" (Apollo's CSRF
//! prevention); a user listed in `SimOptions::unified_users_without_rights`
//! logs in, then every data operation answers `FORBIDDEN` "Access denied".
//! Timestamps are `YYYY-MM-DDTHH:MM:SS.mmmZ`; unset ones are the epoch.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use serde_json::{json, Value};

use super::faults::Refusal;
use super::http::{json_ok, read_body, spoil, ApiError};
use super::store::{SimTag, TagError};
use super::unified_gql::{self as gql, Kind, Operation};
use super::{auth, control, SimState};
use crate::config::AuthMode;
use crate::model::{format_ts, parse_ts, AlarmState, Quality};
use crate::wincc::unified::reply::unified_type_name;

#[path = "unified_transport.rs"]
mod transport;
pub(crate) use transport::lacks_rights;
use transport::transport_refusal;

type St = State<Arc<SimState>>;

/// The unset timestamp of Unified.
const EPOCH: &str = "1970-01-01T00:00:00.000Z";

/// `POST /graphql` plus `/_sim/*`.
pub fn router(state: Arc<SimState>) -> Router {
    control::router()
        .route("/graphql", post(graphql).get(super::unified_ws::upgrade))
        .route("/graphql/", post(graphql).get(super::unified_ws::upgrade))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route for {method} {}; the GraphQL endpoint is POST /graphql",
        uri.path()
    ))
}

/// The statistics label of an operation, and whether its answer is a read
/// (spoiled by body faults).
fn label(field: Option<&str>) -> (&'static str, bool) {
    match field {
        Some("login") => ("POST /graphql login", false),
        Some("extendSession") => ("POST /graphql extendSession", false),
        Some("logout") => ("POST /graphql logout", false),
        Some("tagValues") => ("POST /graphql tagValues", true),
        Some("browse") => ("POST /graphql browse", true),
        Some("writeTagValues") => ("POST /graphql writeTagValues", false),
        Some("activeAlarms") => ("POST /graphql activeAlarms", true),
        _ => ("POST /graphql", false),
    }
}

/// A GraphQL error answer (HTTP 200, like a GraphQL server).
fn gql_error(code: &str, message: impl Into<String>) -> Response {
    json_ok(&json!({
        "data": null,
        "errors": [{"message": message.into(), "extensions": {"code": code}}],
    }))
}

fn data(field: &str, v: Value) -> Response {
    let mut d = serde_json::Map::new();
    d.insert(field.to_string(), v);
    json_ok(&json!({ "data": d }))
}

fn refusal(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "RuntimeStopped",
            "the WinCC Unified runtime is not running",
        )
        .into_response(),
        Refusal::TooMany { retry_after_s } => ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "too many requests",
            )
        }
        .into_response(),
        Refusal::ServerError => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "simulated internal server error",
        )
        .into_response(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let h = headers.get(AUTHORIZATION)?.to_str().ok()?;
    auth::strip_scheme(h, "bearer")
}

async fn graphql(State(st): St, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    if let Some(r) = transport_refusal(&st, &uri, &headers) {
        let _f = st.stats.begin("POST /graphql");
        st.stats.status(r.status().as_u16());
        return r;
    }
    let bytes = match read_body(body, &headers, st.opts.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            let _f = st.stats.begin("POST /graphql");
            st.stats.status(e.status.as_u16());
            return e.into_response();
        }
    };
    let req: Result<Value, _> = serde_json::from_slice(&bytes);
    let op = req
        .as_ref()
        .ok()
        .and_then(|r| r.get("query").and_then(Value::as_str).map(gql::parse));
    let field = match &op {
        Some(Ok(o)) => Some(o.field.as_str()),
        _ => None,
    };
    let (label, is_read) = label(field);
    let _in_flight = st.stats.begin(label);
    let (latency, refused) = st.faults().before_request();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = match (refused, req, op) {
        (Some(r), _, _) => refusal(r),
        (None, Err(e), _) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "MalformedJson",
            format!("malformed JSON: {e}"),
        )
        .into_response(),
        (None, Ok(_), None) => {
            ApiError::bad_request("the body must be {\"query\": \"...\", \"variables\": {...}}")
                .into_response()
        }
        (None, Ok(_), Some(Err(msg))) => gql_error("GRAPHQL_PARSE_FAILED", msg),
        (None, Ok(req), Some(Ok(op))) => {
            let empty = json!({});
            let vars = match req.get("variables") {
                None | Some(Value::Null) => &empty,
                Some(v @ Value::Object(_)) => v,
                Some(_) => {
                    return finish(
                        &st,
                        gql_error("BAD_USER_INPUT", "variables must be an object"),
                        false,
                    )
                    .await
                }
            };
            execute(&st, &headers, &op, vars)
        }
    };
    finish(&st, resp, is_read).await
}

async fn finish(st: &SimState, resp: Response, is_read: bool) -> Response {
    st.stats.status(resp.status().as_u16());
    if is_read && resp.status() == StatusCode::OK {
        let fault = st.faults().body_fault();
        if let Some(f) = fault {
            return spoil(resp, f).await;
        }
    }
    resp
}

fn execute(st: &SimState, headers: &HeaderMap, op: &Operation, vars: &Value) -> Response {
    let want = match op.field.as_str() {
        "login" | "extendSession" | "logout" | "writeTagValues" => Kind::Mutation,
        "tagValues" | "browse" | "activeAlarms" => Kind::Query,
        other => {
            return gql_error(
                "GRAPHQL_VALIDATION_FAILED",
                format!("Cannot query field \"{other}\": the simulator does not implement it"),
            )
        }
    };
    if op.kind != want {
        return gql_error(
            "GRAPHQL_VALIDATION_FAILED",
            format!("{} is a {:?}, not a {:?}", op.field, want, op.kind),
        );
    }
    if op.field == "login" {
        return login(st, op, vars);
    }
    let needs_auth = st.opts.auth != AuthMode::None;
    let token = bearer(headers);
    if needs_auth {
        let checked = match token {
            None => Err(auth::AuthFailure::Missing),
            Some(t) => st.sessions().check(t),
        };
        match checked {
            Err(f) => {
                return gql_error("UNAUTHENTICATED", format!("Unauthorized: {}", f.message()))
            }
            Ok(user)
                if lacks_rights(st, &user)
                    && !matches!(op.field.as_str(), "extendSession" | "logout") =>
            {
                return json_ok(&json!({
                    "data": null,
                    "errors": [{"message": "Access denied", "path": [op.field],
                        "extensions": {"code": "FORBIDDEN"}}],
                }));
            }
            Ok(_) => {}
        }
    }
    match op.field.as_str() {
        "extendSession" => extend(st, token.unwrap_or("")),
        "logout" => {
            let ok = token.is_some_and(|t| st.sessions().logout(t));
            data("logout", Value::Bool(ok || !needs_auth))
        }
        "tagValues" => tag_values(st, op.arg("names", vars)),
        "browse" => browse(
            st,
            op.arg("nameFilters", vars),
            op.arg("objectTypeFilters", vars),
        ),
        "writeTagValues" => write(st, op.arg("input", vars)),
        _ => active_alarms(st, op.arg("filterString", vars)),
    }
}

fn session_json(
    token: Option<&str>,
    user: Option<&str>,
    expires: Value,
    code: &str,
    description: &str,
) -> Value {
    json!({
        "token": token,
        "expires": expires,
        "user": user.map(|u| json!({"name": u, "fullName": u})),
        "error": {"code": code, "description": description},
    })
}

fn login(st: &SimState, op: &Operation, vars: &Value) -> Response {
    let (Some(user), Some(pw)) = (
        op.arg("username", vars).as_str(),
        op.arg("password", vars).as_str(),
    ) else {
        return gql_error(
            "BAD_USER_INPUT",
            "login needs the variables username and password (strings)",
        );
    };
    let (token, ttl) = {
        let mut s = st.sessions();
        (s.login(user, pw), s.ttl())
    };
    st.stats.login(token.is_some());
    match token {
        Some(t) => data(
            "login",
            session_json(Some(&t), Some(user), expires(ttl), "0", ""),
        ),
        None => data(
            "login",
            session_json(
                None,
                None,
                Value::Null,
                "101",
                "Incorrect credentials provided",
            ),
        ),
    }
}

fn expires(ttl: std::time::Duration) -> Value {
    let at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
    Value::String(format_ts(&at))
}

fn extend(st: &SimState, token: &str) -> Response {
    let mut s = st.sessions();
    let Ok(user) = s.check(token) else {
        return gql_error("UNAUTHENTICATED", "Unauthorized: session expired");
    };
    let pw = st
        .opts
        .users
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| p.clone())
        .unwrap_or_default();
    let Some(fresh) = s.login(&user, &pw) else {
        return data(
            "extendSession",
            session_json(None, None, Value::Null, "102", "UMC error"),
        );
    };
    s.logout(token);
    let ttl = s.ttl();
    drop(s);
    data(
        "extendSession",
        session_json(Some(&fresh), Some(&user), expires(ttl), "0", ""),
    )
}

/// Unified's quality object for a tag (the quality byte's sub-status where
/// the store has a raw code).
fn quality_json(q: Quality, code: Option<u32>) -> Value {
    let sub = code.map(|c| (c >> 2) & 0x0F).unwrap_or(0);
    let (quality, sub_status) = match q {
        Quality::Good => (
            if code.is_some_and(|c| c & 0xC0 == 0x80) {
                "GOOD_NON_CASCADE"
            } else {
                "GOOD_CASCADE"
            },
            "NON_SPECIFIC",
        ),
        Quality::Uncertain => (
            "UNCERTAIN",
            [
                "NON_SPECIFIC",
                "LAST_USABLE_VALUE",
                "SUBSTITUTE_VALUE",
                "INITIAL_VALUE",
                "SENSOR_CONVERSION",
                "RANGE_VIOLATION",
                "SUB_NORMAL",
            ]
            .get(sub as usize)
            .copied()
            .unwrap_or("NON_SPECIFIC"),
        ),
        Quality::Bad => (
            "BAD",
            [
                "NON_SPECIFIC",
                "CONFIGURATION_ERROR",
                "NOT_CONNECTED",
                "DEVICE_FAILURE",
                "SENSOR_FAILURE",
                "NO_COMMUNICATION_WITH_LAST_USABLE_VALUE",
                "NO_COMMUNICATION_NO_USABLE_VALUE",
                "OUT_OF_SERVICE",
            ]
            .get(sub as usize)
            .copied()
            .unwrap_or("NON_SPECIFIC"),
        ),
    };
    json!({"quality": quality, "subStatus": sub_status, "limit": "OK"})
}

pub(crate) fn tag_row(tag: &SimTag) -> Value {
    json!({
        "name": tag.info.name,
        "value": {
            "value": tag.value.to_json(),
            "timestamp": format_ts(&tag.timestamp()),
            "quality": quality_json(tag.quality, tag.quality_code),
        },
        "error": {"code": "0", "description": ""},
    })
}

fn tag_values(st: &SimState, names: &Value) -> Response {
    let Some(names) = names.as_array() else {
        return gql_error(
            "BAD_USER_INPUT",
            "tagValues needs the variable names: [String!]!",
        );
    };
    let store = st.store();
    let mut rows = Vec::with_capacity(names.len());
    for n in names {
        let Some(n) = n.as_str() else {
            return gql_error("BAD_USER_INPUT", "names must be strings");
        };
        rows.push(match store.get(n) {
            Some(tag) => tag_row(tag),
            None => json!({"name": n, "value": null,
                "error": {"code": "2", "description": "Cannot resolve provided name"}}),
        });
    }
    drop(store);
    st.stats.tags_read(rows.len());
    data("tagValues", Value::Array(rows))
}

/// `*` any run of characters, `?` exactly one.
fn wildcard(pattern: &[char], name: &[char]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some('*'), _) => {
            wildcard(&pattern[1..], name) || (!name.is_empty() && wildcard(pattern, &name[1..]))
        }
        (Some('?'), Some(_)) => wildcard(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => wildcard(&pattern[1..], &name[1..]),
        _ => false,
    }
}

fn browse(st: &SimState, name_filters: &Value, type_filters: &Value) -> Response {
    let strings = |v: &Value| -> Option<Vec<String>> {
        match v {
            Value::Null => Some(Vec::new()),
            Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
            _ => None,
        }
    };
    let (Some(filters), Some(types)) = (strings(name_filters), strings(type_filters)) else {
        return gql_error(
            "BAD_USER_INPUT",
            "nameFilters and objectTypeFilters must be lists of strings",
        );
    };
    let tags_wanted = types.is_empty()
        || types
            .iter()
            .any(|t| t.eq_ignore_ascii_case("TAG") || t.eq_ignore_ascii_case("SIMPLETAG"));
    let all = filters.is_empty() || filters.iter().any(|f| f == "*");
    let patterns: Vec<Vec<char>> = filters.iter().map(|f| f.chars().collect()).collect();
    let store = st.store();
    let rows: Vec<Value> = store
        .tags()
        .iter()
        .filter(|_| tags_wanted)
        .filter(|t| {
            all || {
                let n: Vec<char> = t.info.name.chars().collect();
                patterns.iter().any(|p| wildcard(p, &n))
            }
        })
        .map(|t| {
            json!({"name": t.info.name, "displayName": t.info.name,
                "objectType": "SIMPLETAG", "dataType": unified_type_name(t.info.ty)})
        })
        .collect();
    data("browse", Value::Array(rows))
}

fn write_error(e: &TagError) -> (&'static str, String) {
    match e.code {
        "UnknownTag" => ("2", "Cannot resolve provided name".into()),
        "TypeMismatch" | "OutOfRange" => (
            "201",
            format!("Cannot convert provided value to data type: {}", e.message),
        ),
        _ => ("1", e.message.clone()),
    }
}

fn write(st: &SimState, input: &Value) -> Response {
    let Some(items) = input.as_array() else {
        return gql_error(
            "BAD_USER_INPUT",
            "writeTagValues needs the variable input: [TagValueInput]!",
        );
    };
    let mut out = Vec::with_capacity(items.len());
    let mut accepted = 0;
    {
        let mut store = st.store_mut();
        for item in items {
            let (Some(name), Some(value)) =
                (item.get("name").and_then(Value::as_str), item.get("value"))
            else {
                return gql_error(
                    "BAD_USER_INPUT",
                    "each input needs name (String!) and value (Variant!)",
                );
            };
            let (code, description) = match store.write(name, value) {
                Ok(()) => {
                    accepted += 1;
                    ("0", String::new())
                }
                Err(e) => write_error(&e),
            };
            out.push(json!({"name": name, "error": {"code": code, "description": description}}));
        }
    }
    st.stats.tags_written(accepted);
    data("writeTagValues", Value::Array(out))
}

fn unified_ts(s: Option<&str>) -> String {
    s.and_then(parse_ts)
        .map(|t| format_ts(&t))
        .unwrap_or_else(|| EPOCH.to_string())
}

fn active_alarms(st: &SimState, filter: &Value) -> Response {
    if filter.as_str().is_some_and(|f| !f.trim().is_empty()) {
        return gql_error(
            "301",
            "filterString is not supported by the simulator; leave it empty",
        );
    }
    let rows: Vec<Value> = st
        .alarms()
        .current()
        .into_iter()
        .map(|a| {
            let state = match a.state {
                AlarmState::Raised => "RAISED",
                AlarmState::Acknowledged => "RAISED_ACKNOWLEDGED",
                AlarmState::Cleared => "RAISED_CLEARED",
            };
            let modified = [a.cleared_at.as_deref(), a.acknowledged_at.as_deref()]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or(&a.raised_at)
                .to_string();
            json!({
                "name": a.name,
                "instanceID": a.id.parse::<u64>().unwrap_or(0),
                "alarmClassName": a.class,
                "priority": a.priority,
                "state": state,
                "eventText": [a.text],
                "infoText": [""],
                "raiseTime": unified_ts(Some(&a.raised_at)),
                "acknowledgmentTime": unified_ts(a.acknowledged_at.as_deref()),
                "clearTime": unified_ts(a.cleared_at.as_deref()),
                "modificationTime": unified_ts(Some(&modified)),
            })
        })
        .collect();
    data("activeAlarms", Value::Array(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_qualities() {
        let w = |p: &str, n: &str| {
            wildcard(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(w("*", "a/b"));
        assert!(w("Line1*", "Line1/Mixer"));
        assert!(w("L?ne", "Line"));
        assert!(!w("L?ne", "Lne"));
        assert!(!w("a*c", "abd"));
        assert_eq!(
            quality_json(Quality::Uncertain, Some(0x48))["subStatus"],
            "SUBSTITUTE_VALUE"
        );
        assert_eq!(
            quality_json(Quality::Uncertain, Some(0x4C))["subStatus"],
            "INITIAL_VALUE"
        );
        assert_eq!(
            quality_json(Quality::Good, Some(0x80))["quality"],
            "GOOD_NON_CASCADE"
        );
        assert_eq!(quality_json(Quality::Good, None)["quality"], "GOOD_CASCADE");
        assert_eq!(
            quality_json(Quality::Bad, Some(0x18))["subStatus"],
            "NO_COMMUNICATION_NO_USABLE_VALUE"
        );
    }
}
