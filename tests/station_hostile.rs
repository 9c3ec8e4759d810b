//! A hostile or broken station cannot leak the gateway's secrets or exhaust
//! its memory: session tokens and cookies a station echoes are scrubbed like
//! the password, station error texts are cut to 500 characters, and a tag
//! list longer than `wincc.max_tags` is cut there (checked against the
//! simulator over real HTTP, and a small echoing station on loopback).

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use common::station::{poll_group, quiet, settings, start_sim, wincc_settings, Polling};
use serde_json::json;
use wincc_gateway::bus::Event;
use wincc_gateway::config::{AuthMode, Dialect};
use wincc_gateway::model::TagType;
use wincc_gateway::wincc::generic::GenericClient;
use wincc_gateway::wincc::Station;

const PASSWORD: &str = "Pa55-w0rd-of-the-gateway";
const TOKEN: &str = "tok-7f3a9c21e4b85d06";
const COOKIE: &str = "ck-0b1c2d3e4f5a6978";

/// Echoes whatever authenticated the request back in its error texts, the
/// way a careless station's diagnostics might.
fn echo(headers: &HeaderMap) -> String {
    let h = |k: header::HeaderName| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    format!(
        "invalid request (authorization: {}; cookie: {}; token {TOKEN}; cookie {COOKIE})",
        h(header::AUTHORIZATION),
        h(header::COOKIE)
    )
}

fn error(status: StatusCode, message: String) -> axum::response::Response {
    (
        status,
        Json(json!({"error": {"code": "E42", "message": message}})),
    )
        .into_response()
}

async fn hostile_station() -> SocketAddr {
    let app = Router::new()
        .route(
            "/auth/login",
            post(|| async {
                (
                    [(
                        header::SET_COOKIE,
                        format!("session={COOKIE}; Path=/; HttpOnly"),
                    )],
                    Json(json!({"token": TOKEN, "expiresIn": 3600})),
                )
            }),
        )
        .route(
            "/tags",
            get(|| async {
                Json(
                    json!({"tags": [{"name": "A", "type": "Int32", "writable": true}], "total": 1}),
                )
            }),
        )
        .route(
            "/tags/values",
            post(|headers: HeaderMap| async move {
                error(StatusCode::INTERNAL_SERVER_ERROR, echo(&headers))
            }),
        )
        .route(
            "/tags/{name}/value",
            put(|headers: HeaderMap, Path(_name): Path<String>| async move {
                // A huge diagnostic dump, the secrets in its middle and at its end.
                let mut m = "x".repeat(300);
                m.push_str(&echo(&headers));
                m.push_str(&"y".repeat(20_000));
                m.push_str(&echo(&headers));
                error(StatusCode::BAD_REQUEST, m)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn echoed_tokens_cookies_and_passwords_never_leave_the_client() {
    let addr = hostile_station().await;
    let dir = tempfile::tempdir().unwrap();
    for mode in [AuthMode::Session, AuthMode::Cookie, AuthMode::Basic] {
        let pw = dir.path().join("pw");
        std::fs::write(&pw, PASSWORD).unwrap();
        let s = wincc_gateway::config::WinccSettings {
            base_url: format!("http://{addr}"),
            auth: mode,
            username: "gateway".into(),
            password_file: pw.to_string_lossy().into_owned(),
            timeout_ms: 2000,
            ..Default::default()
        };
        let c = GenericClient::new(&s).unwrap();
        let basic = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!("gateway:{PASSWORD}"))
        };
        let read = c.read_values(&["A".into()]).await.unwrap_err().to_string();
        let write = c
            .write_value("A", TagType::Int32, &json!(1))
            .await
            .unwrap_err()
            .to_string();
        for text in [&read, &write] {
            for secret in [TOKEN, COOKIE, PASSWORD, basic.as_str()] {
                // In basic mode the station issued nothing: the token and
                // cookie in its text are not the gateway's secrets.
                if mode == AuthMode::Basic && (secret == TOKEN || secret == COOKIE) {
                    continue;
                }
                assert!(
                    !text.contains(secret),
                    "{mode:?}: {secret} leaked in {text}"
                );
            }
            assert!(text.contains("***"), "{mode:?}: {text}");
        }
        // The 20 kB diagnostic dump is cut to 500 characters (plus the
        // error's own words), the secrets replaced before the cut.
        assert!(
            write.chars().count() < 600,
            "{} chars",
            write.chars().count()
        );
        assert!(write.ends_with('…'), "{write}");
    }
}

#[tokio::test]
async fn a_tag_list_longer_than_max_tags_is_cut_and_the_first_are_polled() {
    let sim = start_sim(quiet(2500, AuthMode::None, "")).await;
    let mut w = wincc_settings(&sim, Dialect::Generic);
    w.max_tags = 1200;
    let c = GenericClient::new(&w).unwrap();
    let tags = c.list_tags().await.unwrap();
    assert_eq!(tags.len(), 1200);
    // Paging stopped at the cap: two pages of 1000, not three.
    assert_eq!(sim.stats().requests["GET /tags"], 2);
    let first: Vec<String> = sim.tags().into_iter().take(1200).map(|t| t.name).collect();
    let got: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
    assert_eq!(got, first, "the first max_tags in the station's order");

    // The poller publishes (and so the sinks hold) at most max_tags tags.
    let mut s = settings(w, vec![poll_group("all", &["**"], 200)]);
    s.wincc.max_tags = 1200;
    let mut p = Polling::start(&s);
    let e = p
        .until(Duration::from_secs(10), "the tag list", |e| {
            matches!(e, Event::Tags(_))
        })
        .await;
    let Event::Tags(polled) = e else {
        unreachable!()
    };
    assert_eq!(polled.len(), 1200);
    assert_eq!(p.tags.borrow().len(), 1200, "the write path's directory");
    p.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_station_that_pages_forever_is_refused_in_bounded_time() {
    // Every page has one new tag and says "more": max_tags = 50 stops it.
    let app = Router::new().route(
        "/tags",
        get(
            |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                let offset: usize = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
                Json(json!({
                    "tags": [{"name": format!("T{offset}"), "type": "Int32", "writable": false}],
                    "total": usize::MAX,
                }))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut w = wincc_gateway::config::WinccSettings {
        base_url: format!("http://{addr}"),
        timeout_ms: 2000,
        max_tags: 50,
        ..Default::default()
    };
    w.rate_limit.requests_per_second = 10_000;
    w.rate_limit.burst = 1000;
    let tags = GenericClient::new(&w).unwrap().list_tags().await.unwrap();
    assert_eq!(tags.len(), 50);
    // With a cap far above what it sends, the page budget ends it
    // (max_tags / 10 pages, at least 1000: here 2000 requests).
    w.max_tags = 20_000;
    let e = GenericClient::new(&w)
        .unwrap()
        .list_tags()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not end"), "{e}");
}
