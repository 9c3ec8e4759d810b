//! HTTP plumbing shared by the REST dialects: the reqwest client with the
//! configured TLS trust, error classification, bounded body reading,
//! `Retry-After` parsing, and the secrets scrubbed from station text (the
//! password, the Basic credential, and the session tokens and cookies the
//! station issued, so a station that echoes one cannot leak it into logs,
//! `/healthz` or the retained station message).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER, SET_COOKIE};

use super::{ConnectError, StationError};
use crate::config::{AuthMode, Secret, WinccSettings};

/// The `Authorization: Basic ...` value for a base64 credential, marked
/// sensitive so that neither reqwest nor hyper ever prints it (in `Debug`
/// output of a request, or in HTTP/2 header compression tables).
pub fn basic_header(credential: &Secret) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Basic {}", credential.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// Session tokens and cookie values kept at once: the current session's
/// and a few before it (a station may echo an old one).
const ISSUED_KEPT: usize = 4;

/// The credentials a station issued (session tokens, cookie values). They
/// are secrets like the password: text from the station is scrubbed of
/// them too. Holds the newest [`ISSUED_KEPT`].
#[derive(Default)]
pub struct Issued(Mutex<VecDeque<Secret>>);

impl Issued {
    /// Remembers a token or cookie value (empty ones are ignored).
    pub fn remember(&self, value: &str) {
        if value.is_empty() {
            return;
        }
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.iter().any(|s| s.expose() == value) {
            return;
        }
        if q.len() == ISSUED_KEPT {
            q.pop_front();
        }
        q.push_back(Secret::new(value));
    }

    /// Remembers the value of every cookie a reply sets.
    pub fn remember_cookies(&self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let pair = v.split(';').next().unwrap_or_default();
            if let Some((_, value)) = pair.split_once('=') {
                self.remember(value.trim().trim_matches('"'));
            }
        }
    }

    /// `fixed` plus every issued credential, for [`super::scrub_text`] and
    /// [`StationError::scrubbed`].
    fn with<R>(&self, fixed: &[Option<&Secret>], f: impl FnOnce(&[Option<&Secret>]) -> R) -> R {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Option<&Secret>> = Vec::with_capacity(fixed.len() + q.len());
        all.extend_from_slice(fixed);
        // Longest first, so a token that contains another is replaced whole.
        let mut issued: Vec<&Secret> = q.iter().collect();
        issued.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        all.extend(issued.into_iter().map(Some));
        f(&all)
    }

    /// `text` with `fixed` secrets and every issued credential replaced by `***`.
    pub fn scrub(&self, fixed: &[Option<&Secret>], text: String) -> String {
        self.with(fixed, |all| super::scrub_text(text, all))
    }

    /// The error with `fixed` secrets and every issued credential scrubbed.
    pub fn scrub_err(&self, fixed: &[Option<&Secret>], e: StationError) -> StationError {
        self.with(fixed, |all| e.scrubbed(all))
    }
}

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
/// `accept_invalid_certs` says so (with a warning), with the given
/// redirect policy (reqwest's default turns a 301/302 POST into a GET; the
/// unified dialect follows redirects itself, keeping the POST).
pub fn build_client_with(
    w: &WinccSettings,
    redirects: reqwest::redirect::Policy,
) -> Result<reqwest::Client, ConnectError> {
    // reqwest takes the process default crypto provider (ring).
    crate::crypto::install_default();
    let timeout = Duration::from_millis(w.timeout_ms.max(1));
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("wincc-gateway/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(w.rate_limit.max_in_flight.max(1) as usize)
        .redirect(redirects)
        .cookie_store(w.auth == AuthMode::Cookie);
    let built = |b: reqwest::ClientBuilder| {
        b.build().map_err(|e| ConnectError::Setting {
            key: "wincc.base_url",
            why: format!("cannot build the HTTP client: {}", chain(&e)),
        })
    };
    if super::tls::needs_own_config(w) {
        // A pin trusts exactly one certificate: it replaces the CA roots
        // and the accept_invalid_certs switch. ca_file without the host
        // name check: see wincc::tls.
        if w.accept_invalid_certs {
            tracing::warn!(
                "wincc.accept_invalid_certs is ignored: wincc.pinned_cert_sha256 or tls_skip_hostname_check is set"
            );
        }
        let config = super::tls::client_config(w, &[b"h2", b"http/1.1"])?;
        return built(b.tls_backend_preconfigured(config));
    }
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
    if w.accept_invalid_certs {
        tracing::warn!(
            base_url = %w.base_url,
            "wincc.accept_invalid_certs = true: the station's TLS certificate is NOT verified"
        );
        b = b.tls_danger_accept_invalid_certs(true);
    }
    built(b)
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

/// Where a 301/307/308 answer sends a POST: its `Location`, resolved
/// against `from`, within the same origin (the Bearer token never goes to
/// another host or scheme), and only once per request.
pub(crate) fn redirect_target(
    from: &reqwest::Url,
    headers: &HeaderMap,
    status: reqwest::StatusCode,
    followed: bool,
) -> Result<reqwest::Url, StationError> {
    let fail = |why: String| StationError::Http {
        status: status.as_u16(),
        message: why,
    };
    if followed {
        return Err(fail(
            "the station redirected the GraphQL endpoint twice; set wincc.base_url to the final URL"
                .into(),
        ));
    }
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| fail("a redirect without a Location header".into()))?;
    let target = from.join(location).map_err(|e| {
        fail(format!(
            "a redirect to an unusable Location {location:?}: {e}"
        ))
    })?;
    if target.origin() != from.origin() {
        return Err(fail(format!(
            "the station redirects to another origin ({}); not followed with the session token, set wincc.base_url to it if it is right",
            target.origin().ascii_serialization()
        )));
    }
    Ok(target)
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

    #[test]
    fn issued_tokens_and_cookies_are_scrubbed() {
        let issued = Issued::default();
        let pw = Secret::new("pw-123");
        issued.remember("tok-AAAA");
        let mut h = HeaderMap::new();
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("session=cookie-BBBB; Path=/; HttpOnly"),
        );
        issued.remember_cookies(&h);
        let text = "echo tok-AAAA and cookie-BBBB and pw-123".to_string();
        assert_eq!(issued.scrub(&[Some(&pw)], text), "echo *** and *** and ***");
        let e = issued.scrub_err(
            &[],
            StationError::Http {
                status: 500,
                message: "bad session tok-AAAA".into(),
            },
        );
        assert!(!e.to_string().contains("tok-AAAA"), "{e}");
        // Bounded: only the newest few are kept.
        for i in 0..10 {
            issued.remember(&format!("t{i:04}"));
        }
        assert_eq!(issued.0.lock().unwrap().len(), ISSUED_KEPT);
        assert_eq!(
            issued.scrub(&[], "t0009 t0000".into()),
            "*** t0000".to_string()
        );
    }

    #[test]
    fn the_basic_header_is_sensitive() {
        let v = basic_header(&Secret::new("dXNlcjpwdw=="));
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "Basic dXNlcjpwdw==");
        assert!(!format!("{v:?}").contains("dXNlcjpwdw"), "{v:?}");
    }

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
