//! The simulator's auth modes over real HTTP on loopback (contract §5):
//! session tokens that expire and log out, the session cookie, Basic auth
//! on every request, and the expire-tokens fault.

use crate::common;

use std::time::Duration;

use common::sim::{
    assert_error, client, error_code, json_of, login, opts, post_faults, start, stats, status_of,
    token_of, url,
};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use wincc_gateway::config::AuthMode;
use wincc_gateway::sim::SimOptions;

#[tokio::test]
async fn session_auth_tokens_expire_and_logout_invalidates() {
    let sim = start(SimOptions {
        auth: AuthMode::Session,
        token_ttl: Duration::from_millis(800),
        users: vec![
            ("gateway".into(), "s3cret".into()),
            ("admin".into(), "root".into()),
        ],
        ..opts()
    })
    .await;
    let c = client();
    let tags = url(&sim, "/tags");
    let unauthorized = StatusCode::UNAUTHORIZED;
    assert_error(c.get(&tags), unauthorized, "Unauthorized").await;
    let refused = login(&c, &sim, "gateway", "nope").await;
    assert_eq!(error_code(refused, unauthorized).await, "Unauthorized");
    let r = login(&c, &sim, "gateway", "s3cret").await;
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert!(cookie.starts_with(&format!("session={token}")), "{cookie}");
    assert_eq!(v["expiresIn"], 1);
    assert_eq!(status_of(c.get(&tags).bearer_auth(&token)).await, 200);
    // Session mode wants the header; the cookie alone does not do.
    let cookie_only = c.get(&tags).header("cookie", format!("session={token}"));
    assert_eq!(status_of(cookie_only).await, 401);
    let me = json_of(c.get(url(&sim, "/users/current")).bearer_auth(&token)).await;
    assert_eq!(me, json!({"username": "gateway", "groups": ["Operators"]}));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_error(
        c.get(&tags).bearer_auth(&token),
        unauthorized,
        "Unauthorized",
    )
    .await;
    let token2 = token_of(login(&c, &sim, "admin", "root").await).await;
    assert_ne!(token2, token);
    assert_eq!(status_of(c.get(&tags).bearer_auth(&token2)).await, 200);
    let logout = c.post(url(&sim, "/auth/logout")).bearer_auth(&token2);
    assert_eq!(status_of(logout).await, 204);
    assert_eq!(status_of(c.get(&tags).bearer_auth(&token2)).await, 401);
    // /_sim/* never needs auth.
    let s = stats(&c, &sim).await;
    assert_eq!((s.logins, s.login_failures), (2, 1));
    assert_eq!(s.unauthorized, 5);
    assert_eq!(s.requests["POST /auth/login"], 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn cookie_auth_uses_the_session_cookie() {
    let sim = start(SimOptions {
        auth: AuthMode::Cookie,
        ..opts()
    })
    .await;
    wincc_gateway::crypto::install_default();
    let jar = Client::builder().cookie_store(true).build().unwrap();
    let tags = url(&sim, "/tags");
    assert_eq!(status_of(jar.get(&tags)).await, 401);
    let token = token_of(login(&jar, &sim, "gateway", "gateway").await).await;
    assert_eq!(status_of(jar.get(&tags)).await, 200);
    // Cookie mode wants the cookie; a bearer header alone does not do.
    assert_eq!(
        status_of(client().get(&tags).bearer_auth(&token)).await,
        401
    );
    sim.expire_tokens();
    assert_error(jar.get(&tags), StatusCode::UNAUTHORIZED, "Unauthorized").await;
    login(&jar, &sim, "gateway", "gateway").await;
    assert_eq!(status_of(jar.get(&tags)).await, 200);
    assert_eq!(status_of(jar.post(url(&sim, "/auth/logout"))).await, 204);
    assert_eq!(status_of(jar.get(&tags)).await, 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn basic_auth_is_checked_on_every_request() {
    let sim = start(SimOptions {
        auth: AuthMode::Basic,
        users: vec![("op".into(), "pw:with:colons".into())],
        ..opts()
    })
    .await;
    let c = client();
    let tags = url(&sim, "/tags");
    let r = c.get(&tags).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"WinCC\"");
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "Unauthorized"
    );
    assert_eq!(
        status_of(c.get(&tags).basic_auth("op", Some("wrong"))).await,
        401
    );
    let good = |rb: reqwest::RequestBuilder| rb.basic_auth("op", Some("pw:with:colons"));
    assert_eq!(status_of(good(c.get(&tags))).await, 200);
    let me = json_of(good(c.get(url(&sim, "/users/current")))).await;
    assert_eq!(me["username"], "op");
    assert_eq!(status_of(c.get(url(&sim, "/_sim/faults"))).await, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn expire_tokens_fault_ends_every_session() {
    let sim = start(SimOptions {
        auth: AuthMode::Session,
        ..opts()
    })
    .await;
    let c = client();
    let token = token_of(login(&c, &sim, "gateway", "gateway").await).await;
    let me = url(&sim, "/users/current");
    assert_eq!(status_of(c.get(&me).bearer_auth(&token)).await, 200);
    let r = post_faults(&c, &sim, json!({"expire_tokens": true})).await;
    assert_eq!(r.json::<Value>().await.unwrap()["expire_tokens"], false);
    assert_eq!(status_of(c.get(&me).bearer_auth(&token)).await, 401);
    sim.shutdown().await;
}
