//! The HTTP transport of the `unified` dialect (WINCC-DIALECTS.md §10):
//! one POST of a GraphQL body to the endpoint used verbatim (a trailing
//! slash kept), with `Content-Type: application/json` and
//! `apollo-require-preflight: true`, under a limiter permit; a 301/307/308
//! answer is followed once, as a POST, within the same origin (a permanent
//! one is remembered, with a warning naming the `base_url` to configure).

use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::UnifiedClient;
use crate::wincc::http;
use crate::wincc::StationError;

impl UnifiedClient {
    /// The endpoint: `base_url` verbatim, or where a permanent redirect
    /// moved it.
    pub(super) fn endpoint(&self) -> Url {
        let moved = self.moved_to.lock().unwrap_or_else(|e| e.into_inner());
        moved.clone().unwrap_or_else(|| self.url.clone())
    }

    /// One POST under a limiter permit: status, headers, body. A
    /// 301/307/308 is followed once, as a POST, within the same origin.
    pub(super) async fn post(
        &self,
        endpoint: &'static str,
        body: &Value,
        bearer: Option<&str>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), StationError> {
        let mut url = self.endpoint();
        let mut followed = false;
        loop {
            // `json` sets Content-Type: application/json.
            let mut rb = self
                .http
                .post(url.clone())
                .json(body)
                .header("apollo-require-preflight", "true");
            if let Some(t) = bearer {
                rb = rb.bearer_auth(t);
            }
            let (status, headers, bytes) =
                http::exchange(&self.limiter, rb, endpoint, self.timeout)
                    .await
                    .map_err(|e| self.scrub_err(e))?;
            if !matches!(status.as_u16(), 301 | 307 | 308) {
                return Ok((status, headers, bytes));
            }
            let target = redirect_target(&url, &headers, status, followed)?;
            if status != StatusCode::TEMPORARY_REDIRECT {
                let mut moved = self.moved_to.lock().unwrap_or_else(|e| e.into_inner());
                if moved.as_ref() != Some(&target) {
                    tracing::warn!(
                        configured = %self.url,
                        moved_to = %target,
                        status = status.as_u16(),
                        "the station moved its GraphQL endpoint permanently; following it as a POST (set wincc.base_url = \"{target}\" to save the extra request)"
                    );
                    *moved = Some(target.clone());
                }
            }
            url = target;
            followed = true;
        }
    }
}

/// Where a 301/307/308 answer sends a POST: its `Location`, resolved
/// against `from`, within the same origin (the Bearer token never goes to
/// another host or scheme), and only once per request.
fn redirect_target(
    from: &Url,
    headers: &reqwest::header::HeaderMap,
    status: StatusCode,
    followed: bool,
) -> Result<Url, StationError> {
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
