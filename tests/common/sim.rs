//! Helpers for the tests that talk to the simulator over raw HTTP (the
//! `sim_*` test files): a quiet 200-tag station, a plain client, and
//! short forms of the requests and checks those tests repeat.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use wincc_gateway::config::AuthMode;
use wincc_gateway::sim::{SimHandle, SimOptions, SimStats};

use super::station;

/// 200 tags (every type, the hostile names), seed 7, no value changes and
/// no alarms by themselves, no auth (user `gateway`/`gateway`).
pub fn opts() -> SimOptions {
    SimOptions {
        seed: 7,
        ..station::quiet(200, AuthMode::None, "gateway")
    }
}

/// The simulator on a free loopback port.
pub async fn start(o: SimOptions) -> SimHandle {
    station::start_sim(o).await
}

/// A plain HTTP client (10 s timeout, no cookie store).
pub fn client() -> Client {
    // reqwest uses the process default crypto provider (ring; no other is built).
    wincc_gateway::crypto::install_default();
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `path` (starting with `/`) on `sim`.
pub fn url(sim: &SimHandle, path: &str) -> String {
    format!("{}{path}", sim.base_url())
}

/// The single-tag URL of `name`, percent-encoded as one path segment.
pub fn tag_url(sim: &SimHandle, name: &str) -> String {
    format!(
        "{}/tags/{}/value",
        sim.base_url(),
        utf8_percent_encode(name, NON_ALPHANUMERIC)
    )
}

/// Asserts the contract's error shape and returns the code.
pub async fn error_code(resp: Response, status: StatusCode) -> String {
    let got = resp.status();
    let text = resp.text().await.expect("error body");
    assert_eq!(got, status, "{text}");
    let v: Value = serde_json::from_str(&text).expect("error body is JSON");
    let code = v["error"]["code"].as_str().expect("error.code").to_string();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    code
}

/// Sends `rb` and asserts the contract's error answer: `status` and `code`.
pub async fn assert_error(rb: RequestBuilder, status: StatusCode, code: &str) {
    let (c, req) = rb.build_split();
    let req = req.unwrap();
    let what = format!("{} {}", req.method(), req.url());
    let resp = c.execute(req).await.unwrap();
    assert_eq!(error_code(resp, status).await, code, "{what}");
}

/// Sends `rb` and returns the answer's status.
pub async fn status_of(rb: RequestBuilder) -> StatusCode {
    rb.send().await.unwrap().status()
}

/// Sends `rb` and returns the answer's JSON body.
pub async fn json_of(rb: RequestBuilder) -> Value {
    rb.send().await.unwrap().json().await.unwrap()
}

/// `POST /tags/values` for `names`; asserts a 200 and returns the body.
pub async fn read(c: &Client, sim: &SimHandle, names: &[&str]) -> Value {
    let r = c
        .post(url(sim, "/tags/values"))
        .json(&json!({ "tags": names }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The statistics as `GET /_sim/stats` reports them.
pub async fn stats(c: &Client, sim: &SimHandle) -> SimStats {
    c.get(url(sim, "/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Switches faults on through `POST /_sim/faults`.
pub async fn post_faults(c: &Client, sim: &SimHandle, faults: Value) -> Response {
    c.post(url(sim, "/_sim/faults"))
        .json(&faults)
        .send()
        .await
        .unwrap()
}

/// `POST /auth/login` with `user` and `pass`.
pub async fn login(c: &Client, sim: &SimHandle, user: &str, pass: &str) -> Response {
    c.post(url(sim, "/auth/login"))
        .json(&json!({"username": user, "password": pass}))
        .send()
        .await
        .unwrap()
}

/// The token of a successful login answer.
pub async fn token_of(login: Response) -> String {
    login.json::<Value>().await.unwrap()["token"]
        .as_str()
        .expect("a token")
        .to_string()
}
