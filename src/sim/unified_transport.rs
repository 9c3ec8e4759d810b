//! What the simulated Unified runtime checks before it reads a GraphQL
//! body, like a V20 runtime (WINCC-DIALECTS.md §10): the trailing slash
//! (301 to `/graphql/` when required), Apollo's CSRF prevention (400
//! without a preflight header), and the Openness runtime right of a user.

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::sim::SimState;

/// Apollo's answer to a POST that is not preflighted.
const CSRF: &str = "This operation has been blocked as a potential Cross-Site Request Forgery (CSRF). Please either specify a 'content-type' header (with a type that is not one of application/x-www-form-urlencoded, multipart/form-data, text/plain) or provide a non-empty value for one of the following headers: x-apollo-operation-name, apollo-require-preflight";

/// Whether a request carries one of Apollo's preflight headers, non-empty.
fn preflighted(headers: &HeaderMap) -> bool {
    ["apollo-require-preflight", "x-apollo-operation-name"]
        .iter()
        .any(|h| headers.get(*h).is_some_and(|v| !v.is_empty()))
}

/// The answers a V20 runtime gives before looking at the body: 301 to the
/// trailing slash (when required), 400 without a preflight header.
pub(super) fn transport_refusal(st: &SimState, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    if st.opts.unified_require_trailing_slash && uri.path() == "/graphql" {
        let location = match uri.query() {
            Some(q) => format!("/graphql/?{q}"),
            None => "/graphql/".to_string(),
        };
        return Some(
            (
                StatusCode::MOVED_PERMANENTLY,
                [(axum::http::header::LOCATION, location)],
                "Moved Permanently",
            )
                .into_response(),
        );
    }
    if !preflighted(headers) {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                json!({"errors": [{"message": CSRF, "extensions": {"code": "BAD_REQUEST"}}]})
                    .to_string(),
            )
                .into_response(),
        );
    }
    None
}

/// Whether `user` lacks the runtime right "Openness Runtime - read and
/// write access" (`SimOptions::unified_users_without_rights`).
pub(crate) fn lacks_rights(st: &SimState, user: &str) -> bool {
    st.opts
        .unified_users_without_rights
        .iter()
        .any(|u| u == user)
}
