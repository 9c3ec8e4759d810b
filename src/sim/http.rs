//! HTTP plumbing shared by every dialect: the contract's error JSON, body
//! reading with a size limit (413 answered after draining, so clients see
//! it), JSON parsing that answers 400, and the body faults.

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::faults::BodyFault;

/// Oversized bodies are read and discarded up to this size before the 413
/// goes out (so that the client is not cut off while still sending).
const DRAIN_CAP: u64 = 64 * 1024 * 1024;

/// An error answer: `{"error":{"code":C,"message":M}}` with a 4xx/5xx status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Adds `Retry-After: N`.
    pub retry_after_s: Option<u64>,
    /// Adds `WWW-Authenticate: Basic realm="WinCC"`.
    pub basic_challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            basic_challenge: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// The body alone, for tests and benchmarks.
    pub fn body(&self) -> Vec<u8> {
        let v = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status, self.body());
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if self.basic_challenge {
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"WinCC\""),
            );
        }
        resp
    }
}

/// A JSON answer from already serialised bytes.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A 200 JSON answer from a serialisable value.
pub fn json_ok<T: serde::Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
        .into_response(),
    }
}

/// Reads a request body of at most `limit` bytes; a larger one is answered
/// 413 (after draining it, up to a cap).
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_CAP) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    let mut total = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        total += chunk.len() as u64;
        if total > limit as u64 {
            buf = Vec::new();
            if total > DRAIN_CAP {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&chunk);
    }
    if total > limit as u64 {
        return Err(too_large());
    }
    Ok(buf)
}

/// Parses a JSON request body; malformed JSON and wrong shapes are 400s.
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request(format!("unexpected JSON shape: {e}"))
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "MalformedJson",
                format!("malformed JSON: {e}"),
            )
        }
    })
}

/// Spoils a successful answer's body as the fault asks.
pub async fn spoil(resp: Response, fault: BodyFault) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let half = bytes.slice(..bytes.len() / 2);
    match fault {
        BodyFault::Malformed => {
            let mut v = half.to_vec();
            v.extend_from_slice(b"<!-- malformed -->");
            parts.headers.remove(CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(v))
        }
        BodyFault::Truncated => {
            // Announce the full length, send half, then fail the stream:
            // hyper closes the connection mid-body. The pause lets hyper
            // flush the half before it aborts.
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            let first = futures::stream::iter([Ok::<_, std::io::Error>(half)]);
            let fail = futures::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "simulated truncation",
                ))
            });
            Response::from_parts(parts, Body::from_stream(first.chain(fail)))
        }
    }
}
