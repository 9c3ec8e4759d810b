//! The `generic` dialect's routes (contract §5), served at the root, plus
//! the middleware every station request goes through: statistics, faults,
//! authentication, body faults.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use super::auth::{self, AuthFailure, Sessions};
use super::faults::Refusal;
use super::http::{json_ok, json_response, parse_json, read_body, spoil, ApiError};
use super::store::{TagError, TagStore};
use super::{control, SimState};
use crate::config::AuthMode;
use crate::model::{parse_ts, Alarm};

type St = State<Arc<SimState>>;

/// The user a request is authenticated as (`anonymous` without auth).
#[derive(Debug, Clone)]
pub struct User(pub String);

/// The station routes plus `/_sim/*`.
pub fn router(state: Arc<SimState>) -> Router {
    let station = Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/tags", get(list_tags))
        .route("/tags/values", post(read_values).put(write_values))
        .route("/tags/{*rest}", get(get_value).put(put_value))
        .route("/alarms/current", get(alarms_current))
        .route("/alarms/archive", get(alarms_archive))
        .route("/users/current", get(current_user))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    control::router()
        .merge(station)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            station_layer,
        ))
        .with_state(state)
}

/// The statistics label of a request, and whether it is a read (which the
/// body faults spoil).
pub fn classify(method: &Method, path: &str) -> (&'static str, bool) {
    let m = method.as_str();
    match (m, path) {
        ("POST", "/auth/login") => ("POST /auth/login", false),
        ("POST", "/auth/logout") => ("POST /auth/logout", false),
        ("GET", "/tags") => ("GET /tags", true),
        ("POST", "/tags/values") => ("POST /tags/values", true),
        ("PUT", "/tags/values") => ("PUT /tags/values", false),
        ("GET", "/alarms/current") => ("GET /alarms/current", true),
        ("GET", "/alarms/archive") => ("GET /alarms/archive", true),
        ("GET", "/users/current") => ("GET /users/current", true),
        ("GET", p) if raw_tag_name(p).is_some() => ("GET /tags/{name}/value", true),
        ("PUT", p) if raw_tag_name(p).is_some() => ("PUT /tags/{name}/value", false),
        _ => ("other", false),
    }
}

/// The still-encoded `{name}` of `/tags/{name}/value`.
fn raw_tag_name(path: &str) -> Option<&str> {
    path.strip_prefix("/tags/")?
        .strip_suffix("/value")
        .filter(|n| !n.is_empty())
}

/// Decodes the tag name of `/tags/{name}/value` from the raw path: names
/// contain `/`, so it is everything between the prefix and the suffix,
/// percent-decoded exactly once.
pub fn tag_name(path: &str) -> Result<String, ApiError> {
    let raw =
        raw_tag_name(path).ok_or_else(|| ApiError::not_found(format!("no route for {path}")))?;
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("tag name is not valid UTF-8 after percent-decoding"))
}

pub(crate) fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::Unavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "RuntimeStopped",
            "the WinCC runtime is not running",
        ),
        Refusal::TooMany { retry_after_s } => ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "too many requests",
            )
        },
        Refusal::ServerError => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "simulated internal server error",
        ),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let h = headers.get(AUTHORIZATION)?.to_str().ok()?;
    auth::strip_scheme(h, "bearer")
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| auth::cookie(h, "session"))
}

/// The token a request presents in the configured mode.
fn presented_token(mode: AuthMode, headers: &HeaderMap) -> Option<&str> {
    match mode {
        AuthMode::Session => bearer(headers),
        AuthMode::Cookie => session_cookie(headers),
        AuthMode::Basic | AuthMode::None => None,
    }
}

fn authenticate(st: &SimState, headers: &HeaderMap) -> Result<String, ApiError> {
    let mode = st.opts.auth;
    let result = match mode {
        AuthMode::None => Ok("anonymous".to_string()),
        AuthMode::Basic => st
            .sessions()
            .check_basic(headers.get(AUTHORIZATION).and_then(|h| h.to_str().ok())),
        AuthMode::Session | AuthMode::Cookie => match presented_token(mode, headers) {
            None => Err(AuthFailure::Missing),
            Some(t) => st.sessions().check(t),
        },
    };
    result.map_err(|f| ApiError {
        basic_challenge: mode == AuthMode::Basic,
        ..ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", f.message())
    })
}

/// Statistics, faults and authentication for every station request;
/// `/_sim/*` passes untouched.
async fn station_layer(State(st): St, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/_sim" || path.starts_with("/_sim/") {
        return next.run(req).await;
    }
    let (label, is_read) = classify(req.method(), path);
    let _in_flight = st.stats.begin(label);
    let (latency, refused) = st.faults().before_request();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = if let Some(r) = refused {
        refusal(r).into_response()
    } else if label == "POST /auth/login" {
        next.run(req).await
    } else {
        match authenticate(&st, req.headers()) {
            Ok(user) => {
                req.extensions_mut().insert(User(user));
                next.run(req).await
            }
            Err(e) => e.into_response(),
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

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[derive(Deserialize)]
struct LoginReq {
    username: String,
    password: String,
}

async fn login(State(st): St, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, st.opts.max_body_bytes).await?;
    let req: LoginReq = parse_json(&bytes)?;
    let (token, ttl) = {
        let mut s = st.sessions();
        (s.login(&req.username, &req.password), s.ttl())
    };
    st.stats.login(token.is_some());
    let Some(token) = token else {
        tracing::debug!(user = %req.username, "simulator refused a login");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            AuthFailure::BadCredentials.message(),
        ));
    };
    let expires_in = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let mut resp = json_ok(&serde_json::json!({"token": token, "expiresIn": expires_in}));
    let cookie = format!("session={token}; Path=/; HttpOnly; Max-Age={expires_in}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    Ok(resp)
}

async fn logout(State(st): St, headers: HeaderMap) -> Response {
    if let Some(t) = presented_token(st.opts.auth, &headers) {
        st.sessions().logout(t);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("session=; Path=/; HttpOnly; Max-Age=0"),
    );
    resp
}

#[derive(Deserialize)]
struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn list_tags(
    State(st): St,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) =
        page.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let store = st.store();
    let tags = store.tags();
    let start = page.offset.unwrap_or(0).min(tags.len());
    let end = page
        .limit
        .map_or(tags.len(), |l| start.saturating_add(l).min(tags.len()));
    let mut out = Vec::with_capacity(32 + (end - start) * 64);
    out.extend_from_slice(b"{\"tags\":[");
    for (i, t) in tags[start..end].iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        t.write_info(&mut out);
    }
    out.extend_from_slice(b"],\"total\":");
    out.extend_from_slice(tags.len().to_string().as_bytes());
    out.push(b'}');
    Ok(json_response(StatusCode::OK, out))
}

async fn get_value(State(st): St, uri: Uri) -> Result<Response, ApiError> {
    let name = tag_name(uri.path())?;
    st.stats.tags_read(1);
    let store = st.store();
    let tag = store
        .get(&name)
        .ok_or_else(|| tag_error(TagError::unknown(&name)))?;
    let mut out = Vec::with_capacity(128);
    tag.write_reading(&mut out);
    Ok(json_response(StatusCode::OK, out))
}

fn tag_error(e: TagError) -> ApiError {
    let status = match e.code {
        "UnknownTag" => StatusCode::NOT_FOUND,
        "ReadOnly" => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.code, e.message)
}

async fn put_value(
    State(st): St,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = tag_name(uri.path())?;
    let bytes = read_body(body, &headers, st.opts.max_body_bytes).await?;
    let req: serde_json::Value = parse_json(&bytes)?;
    let value = req
        .get("value")
        .ok_or_else(|| ApiError::bad_request("body must be {\"value\": V}"))?;
    st.store_mut().write(&name, value).map_err(tag_error)?;
    st.stats.tags_written(1);
    Ok(json_ok(&serde_json::json!({"name": name, "ok": true})))
}

#[derive(Deserialize)]
struct ReadReq<'a> {
    #[serde(borrow)]
    tags: Vec<std::borrow::Cow<'a, str>>,
}

/// Answers a `POST /tags/values` body from the store: the response body and
/// the number of names asked for. Public so that benchmarks can time the
/// work of one request without HTTP.
pub fn read_values_json(store: &TagStore, body: &[u8]) -> Result<(Vec<u8>, usize), ApiError> {
    let req: ReadReq = parse_json(body)?;
    let mut out = Vec::with_capacity(16 + req.tags.len() * 110);
    out.extend_from_slice(b"{\"values\":[");
    for (i, name) in req.tags.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        store.write_row(name, &mut out);
    }
    out.extend_from_slice(b"]}");
    Ok((out, req.tags.len()))
}

async fn read_values(State(st): St, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, st.opts.max_body_bytes).await?;
    let (out, n) = read_values_json(&st.store(), &bytes)?;
    st.stats.tags_read(n);
    Ok(json_response(StatusCode::OK, out))
}

#[derive(Deserialize)]
struct WriteReq {
    values: Vec<WriteItem>,
}

#[derive(Deserialize)]
struct WriteItem {
    name: String,
    value: serde_json::Value,
}

async fn write_values(State(st): St, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, &headers, st.opts.max_body_bytes).await?;
    let req: WriteReq = parse_json(&bytes)?;
    let mut out = Vec::with_capacity(16 + req.values.len() * 64);
    out.extend_from_slice(b"{\"results\":[");
    let mut accepted = 0;
    {
        let mut store = st.store_mut();
        for (i, item) in req.values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            let _ = serde_json::to_writer(&mut out, &item.name);
            match store.write(&item.name, &item.value) {
                Ok(()) => {
                    accepted += 1;
                    out.extend_from_slice(b",\"ok\":true}");
                }
                Err(e) => {
                    out.extend_from_slice(b",\"ok\":false,\"error\":");
                    e.write_json(&mut out);
                    out.push(b'}');
                }
            }
        }
    }
    out.extend_from_slice(b"]}");
    st.stats.tags_written(accepted);
    Ok(json_response(StatusCode::OK, out))
}

#[derive(Serialize)]
struct AlarmList {
    alarms: Vec<Alarm>,
}

async fn alarms_current(State(st): St) -> Response {
    let alarms = st.alarms().current();
    json_ok(&AlarmList { alarms })
}

#[derive(Deserialize)]
struct ArchiveQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

/// Default and largest `limit` of `/alarms/archive`.
const ARCHIVE_LIMIT: usize = 1000;

async fn alarms_archive(
    State(st): St,
    q: Result<Query<ArchiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let ts = |s: &Option<String>, key: &str| match s {
        None => Ok(None),
        Some(s) => parse_ts(s).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{key}={s:?} is not an RFC 3339 timestamp"))
        }),
    };
    let (from, to) = (ts(&q.from, "from")?, ts(&q.to, "to")?);
    let limit = q.limit.unwrap_or(ARCHIVE_LIMIT).min(ARCHIVE_LIMIT);
    let alarms = st.alarms().archive(from, to, limit);
    Ok(json_ok(&AlarmList { alarms }))
}

async fn current_user(user: Option<Extension<User>>) -> Response {
    let name = user.map_or_else(|| "anonymous".to_string(), |Extension(User(u))| u);
    json_ok(&serde_json::json!({"username": name, "groups": Sessions::groups(&name)}))
}

/// `Connection: close` on an answer (the connection that started an outage).
pub(crate) fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_names_are_decoded_once_from_the_raw_path() {
        assert_eq!(
            tag_name("/tags/Line1%2FMixer%2FSpeed/value").unwrap(),
            "Line1/Mixer/Speed"
        );
        assert_eq!(
            tag_name("/tags/Line1/Mixer/Speed/value").unwrap(),
            "Line1/Mixer/Speed"
        );
        assert_eq!(tag_name("/tags/%2FLead/value").unwrap(), "/Lead");
        assert_eq!(tag_name("/tags/Trail%2F/value").unwrap(), "Trail/");
        assert_eq!(tag_name("/tags/A%2F%2FB/value").unwrap(), "A//B");
        assert_eq!(
            tag_name("/tags/Percent%252FLiteral/value").unwrap(),
            "Percent%2FLiteral"
        );
        assert_eq!(
            tag_name("/tags/Ctrl%01Char/value").unwrap(),
            "Ctrl\u{1}Char"
        );
        assert_eq!(tag_name("/tags/K%C3%BChlung/value").unwrap(), "Kühlung");
        assert!(tag_name("/tags/%FF/value").is_err());
        assert!(tag_name("/tags//value").is_err());
        assert!(tag_name("/tags/x").is_err());
    }

    #[test]
    fn requests_are_labelled_by_endpoint() {
        assert_eq!(
            classify(&Method::POST, "/tags/values"),
            ("POST /tags/values", true)
        );
        assert_eq!(
            classify(&Method::GET, "/tags/a%2Fb/value"),
            ("GET /tags/{name}/value", true)
        );
        assert_eq!(
            classify(&Method::PUT, "/tags/a/value"),
            ("PUT /tags/{name}/value", false)
        );
        assert_eq!(classify(&Method::DELETE, "/tags"), ("other", false));
    }

    #[test]
    fn batch_read_answers_rows_and_unknown_names() {
        let store = TagStore::generate(50, 1);
        let name = store.tags()[0].info.name.clone();
        let body = serde_json::to_vec(&serde_json::json!({"tags": [name, "Nope \"x\""]})).unwrap();
        let (out, n) = read_values_json(&store, &body).unwrap();
        assert_eq!(n, 2);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["values"][0]["name"], name.as_str());
        assert_eq!(v["values"][1]["error"]["code"], "UnknownTag");
        assert_eq!(
            read_values_json(&store, b"{\"tags\":").unwrap_err().code,
            "MalformedJson"
        );
        assert_eq!(
            read_values_json(&store, b"{\"tags\":[1]}")
                .unwrap_err()
                .code,
            "BadRequest"
        );
    }
}
