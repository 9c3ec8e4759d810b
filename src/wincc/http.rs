//! HTTP plumbing shared by the REST dialects: the reqwest client with the
//! configured TLS trust, error classification, bounded body reading and
//! `Retry-After` parsing.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::{ConnectError, StationError};
use crate::config::{AuthMode, WinccSettings};

/// Largest reply body accepted from a station; anything longer is refused
/// as malformed instead of filling memory.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `base` + path segments, each percent-encoded (all but `A-Z a-z 0-9 - .
/// _ ~`), so a `/`, `%`, `#`, `?` or `::` in a tag name stays inside its
/// segment.
pub fn with_segments(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut path = base.path().trim_end_matches('/').to_string();
    for s in segments {
        path.push('/');
        path.extend(utf8_percent_encode(s, SEGMENT));
    }
    let mut u = base.clone();
    u.set_path(&path);
    u
}

/// Parses `wincc.base_url`: an absolute http(s) URL, fragment dropped.
/// `what` is appended to the error to say which URL is meant.
pub fn base_url(raw: &str, what: &str) -> Result<reqwest::Url, ConnectError> {
    let mut url = reqwest::Url::parse(raw).map_err(|e| ConnectError::Setting {
        key: "wincc.base_url",
        why: format!("not a URL: {e}"),
    })?;
    if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") {
        return Err(ConnectError::Setting {
            key: "wincc.base_url",
            why: format!("must be an http:// or https:// URL{what}"),
        });
    }
    url.set_fragment(None);
    Ok(url)
}

/// Builds the HTTP client: per-request timeout, cookie store for cookie
/// auth, system roots plus `ca_file`, and verification off only when
/// `accept_invalid_certs` says so (with a warning).
pub fn build_client(w: &WinccSettings) -> Result<reqwest::Client, ConnectError> {
    let timeout = Duration::from_millis(w.timeout_ms.max(1));
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("wincc-gateway/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(w.rate_limit.max_in_flight.max(1) as usize)
        .cookie_store(w.auth == AuthMode::Cookie);
    if !w.ca_file.is_empty() {
        let pem = std::fs::read(&w.ca_file).map_err(|e| ConnectError::Setting {
            key: "wincc.ca_file",
            why: format!("cannot read {:?}: {e}", w.ca_file),
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ConnectError::Setting {
                key: "wincc.ca_file",
                why: format!("{:?} is not a PEM certificate bundle: {e}", w.ca_file),
            })?;
        if certs.is_empty() {
            return Err(ConnectError::Setting {
                key: "wincc.ca_file",
                why: format!("{:?} holds no certificate", w.ca_file),
            });
        }
        b = b.tls_certs_merge(certs);
    }
    if !w.pinned_cert_sha256.trim().is_empty() {
        // Pinning trusts exactly one certificate: it replaces the CA roots
        // and the accept_invalid_certs switch.
        if w.accept_invalid_certs {
            tracing::warn!(
                "wincc.accept_invalid_certs is ignored: wincc.pinned_cert_sha256 is set"
            );
        }
        let config = super::tls::pinned_client_config(&w.pinned_cert_sha256)?;
        return b
            .tls_backend_preconfigured(config)
            .build()
            .map_err(|e| ConnectError::Setting {
                key: "wincc.base_url",
                why: format!("cannot build the HTTP client: {}", chain(&e)),
            });
    }
    if w.accept_invalid_certs {
        tracing::warn!(
            base_url = %w.base_url,
            "wincc.accept_invalid_certs = true: the station's TLS certificate is NOT verified"
        );
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| ConnectError::Setting {
        key: "wincc.base_url",
        why: format!("cannot build the HTTP client: {}", chain(&e)),
    })
}

/// hyper's text for a connection closed before the reply was complete.
const INCOMPLETE: &str = "connection closed before message completed";

/// Classifies a transport error (no URL in the message).
pub fn transport_error(e: reqwest::Error, timeout: Duration) -> StationError {
    if e.is_timeout() {
        return StationError::Timeout(timeout);
    }
    let e = e.without_url();
    let text = chain(&e);
    // The request went out and the connection closed before a complete
    // reply (hyper's IncompleteMessage): the reply was cut off. Connect
    // errors (refused, reset before sending, TLS) stay `Unreachable`.
    if e.is_body() || e.is_decode() || (!e.is_connect() && text.contains(INCOMPLETE)) {
        return StationError::Malformed(format!("reply cut off: {text}"));
    }
    StationError::Unreachable(text)
}

/// Reads the whole body, at most [`MAX_BODY`] bytes. A connection closed
/// mid-body is a truncated (malformed) reply.
pub async fn read_body(
    mut resp: reqwest::Response,
    timeout: Duration,
) -> Result<Vec<u8>, StationError> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(StationError::Malformed(format!(
            "reply of {} bytes is larger than the {MAX_BODY}-byte limit",
            resp.content_length().unwrap_or_default()
        )));
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_BODY {
                    return Err(StationError::Malformed(format!(
                        "reply larger than the {MAX_BODY}-byte limit"
                    )));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(StationError::Timeout(timeout)),
            Err(e) => {
                return Err(StationError::Malformed(format!(
                    "reply cut off after {} bytes: {}",
                    body.len(),
                    chain(&e.without_url())
                )))
            }
        }
    }
}

/// Sends a prepared request under a permit of the client's `limiter` and
/// reads the whole reply, counting the request and recording its latency
/// (without the wait for the permit) for `endpoint`. Transport failures
/// and timeouts become `StationError`s; the caller scrubs secrets.
pub async fn exchange(
    limiter: &super::limiter::Limiter,
    rb: reqwest::RequestBuilder,
    endpoint: &'static str,
    timeout: Duration,
) -> Result<(reqwest::StatusCode, HeaderMap, Vec<u8>), StationError> {
    // Inside a write: no permit by its deadline refuses it (never sent late).
    let deadline = super::limiter::WRITE_DEADLINE.try_with(|d| *d).ok();
    let _permit = limiter.acquire_by(deadline).await?;
    metrics::counter!("wincc_gateway_station_requests_total", "endpoint" => endpoint).increment(1);
    let start = std::time::Instant::now();
    let result = async {
        let resp = rb.send().await.map_err(|e| transport_error(e, timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = read_body(resp, timeout).await?;
        Ok((status, headers, bytes))
    }
    .await;
    metrics::histogram!("wincc_gateway_station_request_seconds", "endpoint" => endpoint)
        .record(start.elapsed().as_secs_f64());
    result
}

/// True for the statuses a station uses to say "not now" (429, 503).
pub fn is_busy(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::SERVICE_UNAVAILABLE
}

/// A 429/503 reply: its `Retry-After` pauses every request of the client
/// (through the limiter). `Ok` means "send it again now": the pause was
/// no longer than the request timeout and this request had not waited yet
/// (`waited` is set). Otherwise the `Busy` error to return.
pub fn busy(
    limiter: &super::limiter::Limiter,
    endpoint: &'static str,
    status: reqwest::StatusCode,
    headers: &HeaderMap,
    timeout: Duration,
    waited: &mut bool,
) -> Result<(), StationError> {
    let ra = retry_after(headers);
    if let Some(d) = ra {
        tracing::warn!(
            endpoint,
            status = status.as_u16(),
            pause_ms = d.as_millis() as u64,
            "station asked to retry later; pausing all requests"
        );
        limiter.pause_for(d);
        if !*waited && d <= timeout {
            *waited = true;
            return Ok(());
        }
    }
    Err(StationError::Busy {
        status: status.as_u16(),
        retry_after: ra,
    })
}

/// `Retry-After` as seconds or an HTTP date; `None` when absent or unreadable.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs.min(1e6)));
        }
        return None;
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// An error and its sources, joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        let later = chrono::Utc::now() + chrono::Duration::seconds(30);
        let date = later.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
