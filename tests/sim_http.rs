//! The WinCC simulator over real HTTP on loopback: every endpoint of
//! contract §5, every auth mode, every fault switch, the statistics and the
//! error answers.

use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use wincc_gateway::config::AuthMode;
use wincc_gateway::model::{TagInfo, TagType};
use wincc_gateway::sim::{self, Faults, SimHandle, SimOptions, SimStats, TooManyRequests, HOSTILE};

fn opts() -> SimOptions {
    SimOptions {
        tags: 200,
        change_rate: 0.0,
        alarms: false,
        seed: 7,
        ..SimOptions::default()
    }
}

async fn start(o: SimOptions) -> SimHandle {
    sim::start("127.0.0.1:0".parse().unwrap(), o)
        .await
        .expect("simulator starts")
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn tag_url(sim: &SimHandle, name: &str) -> String {
    format!(
        "{}/tags/{}/value",
        sim.base_url(),
        utf8_percent_encode(name, NON_ALPHANUMERIC)
    )
}

/// Asserts the contract's error shape and returns the code.
async fn error_code(resp: Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status);
    let v: Value = resp.json().await.expect("error body is JSON");
    let code = v["error"]["code"].as_str().expect("error.code").to_string();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    code
}

async fn read(c: &Client, sim: &SimHandle, names: &[&str]) -> Value {
    let r = c
        .post(format!("{}/tags/values", sim.base_url()))
        .json(&json!({ "tags": names }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn stats(c: &Client, sim: &SimHandle) -> SimStats {
    c.get(format!("{}/_sim/stats", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn browse_lists_and_pages_every_type_and_hostile_name() {
    let sim = start(opts()).await;
    let c = client();
    let all: Value = c
        .get(format!("{}/tags", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["total"], 200);
    let tags: Vec<TagInfo> = serde_json::from_value(all["tags"].clone()).unwrap();
    assert_eq!(tags.len(), 200);
    assert_eq!(tags, sim.tags());
    for ty in TagType::ALL {
        assert!(tags.iter().any(|t| t.ty == ty), "{ty} missing");
    }
    for (name, ty, writable) in HOSTILE {
        let t = tags
            .iter()
            .find(|t| t.name == *name)
            .expect("hostile name listed");
        assert_eq!((t.ty, t.writable), (*ty, *writable));
    }
    assert!(tags
        .iter()
        .any(|t| t.name.ends_with("Setpoint") && t.writable));
    let page: Value = c
        .get(format!("{}/tags?offset=190&limit=50", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 200);
    assert_eq!(page["tags"].as_array().unwrap().len(), 10);
    assert_eq!(page["tags"][0]["name"], tags[190].name.as_str());
    let past: Value = c
        .get(format!("{}/tags?offset=999", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(past["tags"].as_array().unwrap().len(), 0);
    let bad = c
        .get(format!("{}/tags?limit=many", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(bad, StatusCode::BAD_REQUEST).await, "BadRequest");
    sim.shutdown().await;
}

#[tokio::test]
async fn batch_read_returns_readings_and_per_tag_errors() {
    let sim = start(opts()).await;
    let c = client();
    let names = sim.tag_names();
    let mut ask: Vec<&str> = names.iter().map(String::as_str).collect();
    ask.push("No/Such Tag");
    let v = read(&c, &sim, &ask).await;
    let rows = v["values"].as_array().unwrap();
    assert_eq!(rows.len(), 201);
    for (row, name) in rows.iter().zip(&names) {
        assert_eq!(row["name"], name.as_str());
        assert_eq!(row["value"], sim.value(name).unwrap());
        assert!(matches!(
            row["quality"].as_str(),
            Some("Good" | "Uncertain" | "Bad")
        ));
        let ts = row["timestamp"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
    }
    assert_eq!(
        rows[200],
        json!({"name": "No/Such Tag", "error": {"code": "UnknownTag", "message": rows[200]["error"]["message"]}})
    );
    assert_eq!(stats(&c, &sim).await.tags_read, 201);
    sim.shutdown().await;
}

#[tokio::test]
async fn single_get_and_put_with_percent_encoded_hostile_names() {
    let sim = start(opts()).await;
    let c = client();
    for (name, ty, writable) in HOSTILE {
        let r = c.get(tag_url(&sim, name)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["name"], *name);
        assert_eq!(v["value"], sim.value(name).unwrap());
        if *writable {
            let value = match ty {
                TagType::Bool => json!(true),
                TagType::String => json!("a+b #%/ü"),
                TagType::Float | TagType::Double => json!(42.5),
                _ => json!(42),
            };
            let r = c
                .put(tag_url(&sim, name))
                .json(&json!({ "value": value }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{name:?}");
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"name": name, "ok": true})
            );
            assert_eq!(sim.value(name).unwrap(), value);
        }
    }
    // A client that leaves the `/` of a plain name unencoded is understood too.
    let plain = sim
        .tag_names()
        .into_iter()
        .find(|n| n.starts_with("Line1/Mixer/"))
        .unwrap();
    let r = c
        .get(format!("{}/tags/{plain}/value", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["name"], plain.as_str());
    // `%2F` inside a name is data: decoded exactly once.
    let mut url = reqwest::Url::parse(&sim.base_url()).unwrap();
    url.path_segments_mut()
        .unwrap()
        .extend(["tags", "Percent%2FLiteral", "value"]);
    let r = c.get(url).send().await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["name"],
        "Percent%2FLiteral"
    );
    let r = c
        .get(tag_url(&sim, "Percent/Literal"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "UnknownTag");
    let s = stats(&c, &sim).await;
    assert_eq!(
        s.requests["GET /tags/{name}/value"],
        HOSTILE.len() as u64 + 3
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn writes_are_checked_like_a_station_does() {
    let sim = start(opts()).await;
    let c = client();
    let tags = sim.tags();
    let find = |ty: TagType, w: bool| {
        tags.iter()
            .find(|t| t.ty == ty && t.writable == w)
            .unwrap()
            .name
            .clone()
    };
    let (i16w, dblw, ro) = (
        find(TagType::Int16, true),
        find(TagType::Double, true),
        find(TagType::Double, false),
    );
    let put = |name: &str, body: Value| c.put(tag_url(&sim, name)).json(&body).send();
    let before = sim.value(&i16w);
    assert_eq!(
        error_code(
            put(&i16w, json!({"value": "5"})).await.unwrap(),
            StatusCode::BAD_REQUEST
        )
        .await,
        "TypeMismatch"
    );
    assert_eq!(
        error_code(
            put(&i16w, json!({"value": 1.5})).await.unwrap(),
            StatusCode::BAD_REQUEST
        )
        .await,
        "TypeMismatch"
    );
    assert_eq!(
        error_code(
            put(&i16w, json!({"value": 40000})).await.unwrap(),
            StatusCode::BAD_REQUEST
        )
        .await,
        "OutOfRange"
    );
    assert_eq!(
        error_code(
            put(&ro, json!({"value": 1.0})).await.unwrap(),
            StatusCode::FORBIDDEN
        )
        .await,
        "ReadOnly"
    );
    assert_eq!(
        error_code(
            put("Nope", json!({"value": 1})).await.unwrap(),
            StatusCode::NOT_FOUND
        )
        .await,
        "UnknownTag"
    );
    assert_eq!(
        error_code(
            put(&i16w, json!({"val": 1})).await.unwrap(),
            StatusCode::BAD_REQUEST
        )
        .await,
        "BadRequest"
    );
    assert_eq!(sim.value(&i16w), before);
    let ts_before = read(&c, &sim, &[&i16w]).await["values"][0]["timestamp"].clone();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        put(&i16w, json!({"value": 5.0})).await.unwrap().status(),
        200
    );
    let row = read(&c, &sim, &[&i16w]).await["values"][0].clone();
    assert_eq!(row["value"], json!(5));
    assert_ne!(row["timestamp"], ts_before);

    let r = c
        .put(format!("{}/tags/values", sim.base_url()))
        .json(&json!({"values": [
            {"name": dblw, "value": 12.5},
            {"name": ro, "value": 1.0},
            {"name": i16w, "value": true},
            {"name": "Nope", "value": 1},
            {"name": "Wildcard/+/#/Command", "value": true},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0], json!({"name": dblw, "ok": true}));
    let codes: Vec<_> = results[1..4]
        .iter()
        .map(|r| (r["ok"].clone(), r["error"]["code"].clone()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (json!(false), json!("ReadOnly")),
            (json!(false), json!("TypeMismatch")),
            (json!(false), json!("UnknownTag"))
        ]
    );
    assert_eq!(results[4]["ok"], true);
    assert_eq!(sim.value(&dblw).unwrap(), json!(12.5));
    assert_eq!(sim.value("Wildcard/+/#/Command").unwrap(), json!(true));
    assert_eq!(stats(&c, &sim).await.tags_written, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_the_contract_error_json() {
    let sim = start(SimOptions {
        max_body_bytes: 64 * 1024,
        ..opts()
    })
    .await;
    let c = client();
    let url = format!("{}/tags/values", sim.base_url());
    let post_raw = |body: Vec<u8>| {
        c.post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        error_code(
            post_raw(b"{\"tags\":[".to_vec()).await.unwrap(),
            StatusCode::BAD_REQUEST
        )
        .await,
        "MalformedJson"
    );
    assert_eq!(
        error_code(
            post_raw(b"not json".to_vec()).await.unwrap(),
            StatusCode::BAD_REQUEST
        )
        .await,
        "MalformedJson"
    );
    assert_eq!(
        error_code(
            post_raw(b"{\"tags\":\"x\"}".to_vec()).await.unwrap(),
            StatusCode::BAD_REQUEST
        )
        .await,
        "BadRequest"
    );
    assert_eq!(
        error_code(
            post_raw(b"{\"tags\":[1,2]}".to_vec()).await.unwrap(),
            StatusCode::BAD_REQUEST
        )
        .await,
        "BadRequest"
    );
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("Some/Long/Tag Name {i}"))
        .collect();
    let big = serde_json::to_vec(&json!({ "tags": names })).unwrap();
    assert!(big.len() > 64 * 1024);
    assert_eq!(
        error_code(post_raw(big).await.unwrap(), StatusCode::PAYLOAD_TOO_LARGE).await,
        "PayloadTooLarge"
    );
    let r = c
        .put(format!("{}/tags/values", sim.base_url()))
        .body("{\"values\":[{\"name\":\"x\"}]}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "BadRequest");
    let r = c
        .get(format!("{}/nowhere", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "NotFound");
    let r = c
        .delete(format!("{}/tags", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::METHOD_NOT_ALLOWED).await,
        "MethodNotAllowed"
    );
    let r = c
        .get(format!("{}/tags/%FF%FE/value", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "BadRequest");
    let r = c
        .post(format!("{}/auth/login", sim.base_url()))
        .body("{\"username\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "BadRequest");
    // The server is still fine afterwards.
    assert_eq!(read(&c, &sim, &[]).await, json!({"values": []}));
    sim.shutdown().await;
}

async fn login(c: &Client, sim: &SimHandle, user: &str, pass: &str) -> Response {
    c.post(format!("{}/auth/login", sim.base_url()))
        .json(&json!({"username": user, "password": pass}))
        .send()
        .await
        .unwrap()
}

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
    let tags = format!("{}/tags", sim.base_url());
    assert_eq!(
        error_code(c.get(&tags).send().await.unwrap(), StatusCode::UNAUTHORIZED).await,
        "Unauthorized"
    );
    assert_eq!(
        error_code(
            login(&c, &sim, "gateway", "nope").await,
            StatusCode::UNAUTHORIZED
        )
        .await,
        "Unauthorized"
    );
    let r = login(&c, &sim, "gateway", "s3cret").await;
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert!(cookie.starts_with(&format!("session={token}")), "{cookie}");
    assert_eq!(v["expiresIn"], 1);
    assert_eq!(
        c.get(&tags)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Session mode wants the header; the cookie alone does not do.
    let r = c
        .get(&tags)
        .header("cookie", format!("session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let me: Value = c
        .get(format!("{}/users/current", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me, json!({"username": "gateway", "groups": ["Operators"]}));
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = c.get(&tags).bearer_auth(&token).send().await.unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "Unauthorized"
    );
    let token2: Value = login(&c, &sim, "admin", "root").await.json().await.unwrap();
    let token2 = token2["token"].as_str().unwrap().to_string();
    assert_ne!(token2, token);
    assert_eq!(
        c.get(&tags)
            .bearer_auth(&token2)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(format!("{}/auth/logout", sim.base_url()))
        .bearer_auth(&token2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        c.get(&tags)
            .bearer_auth(&token2)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
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
    let jar = Client::builder().cookie_store(true).build().unwrap();
    let tags = format!("{}/tags", sim.base_url());
    assert_eq!(jar.get(&tags).send().await.unwrap().status(), 401);
    let r = login(&jar, &sim, "gateway", "gateway").await;
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(jar.get(&tags).send().await.unwrap().status(), 200);
    // Cookie mode wants the cookie; a bearer header alone does not do.
    assert_eq!(
        client()
            .get(&tags)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    sim.expire_tokens();
    let r = jar.get(&tags).send().await.unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "Unauthorized"
    );
    login(&jar, &sim, "gateway", "gateway").await;
    assert_eq!(jar.get(&tags).send().await.unwrap().status(), 200);
    assert_eq!(
        jar.post(format!("{}/auth/logout", sim.base_url()))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(jar.get(&tags).send().await.unwrap().status(), 401);
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
    let tags = format!("{}/tags", sim.base_url());
    let r = c.get(&tags).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"WinCC\"");
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "Unauthorized"
    );
    let r = c
        .get(&tags)
        .basic_auth("op", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        c.get(&tags)
            .basic_auth("op", Some("pw:with:colons"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let me: Value = c
        .get(format!("{}/users/current", sim.base_url()))
        .basic_auth("op", Some("pw:with:colons"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "op");
    assert_eq!(
        c.get(format!("{}/_sim/faults", sim.base_url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
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
    let token = login(&c, &sim, "gateway", "gateway")
        .await
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let me = format!("{}/users/current", sim.base_url());
    assert_eq!(
        c.get(&me)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(format!("{}/_sim/faults", sim.base_url()))
        .json(&json!({"expire_tokens": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["expire_tokens"], false);
    assert_eq!(
        c.get(&me)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_error_rate_and_unavailable_faults() {
    let sim = start(opts()).await;
    let c = client();
    let tags = format!("{}/tags", sim.base_url());
    let faults = format!("{}/_sim/faults", sim.base_url());
    c.post(&faults)
        .json(&json!({"latency_ms": 300}))
        .send()
        .await
        .unwrap();
    let t = Instant::now();
    assert_eq!(c.get(&tags).send().await.unwrap().status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    c.post(&faults)
        .json(&json!({"error_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(
            c.get(&tags).send().await.unwrap(),
            StatusCode::INTERNAL_SERVER_ERROR
        )
        .await,
        "InternalError"
    );
    c.post(&faults)
        .json(&json!({"unavailable": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(
            c.get(&tags).send().await.unwrap(),
            StatusCode::SERVICE_UNAVAILABLE
        )
        .await,
        "RuntimeStopped"
    );
    let r = c
        .post(&faults)
        .json(&json!({"error_rate": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "BadRequest");
    let r = c
        .post(&faults)
        .json(&json!({"no_such_switch": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "BadRequest");
    assert_eq!(
        c.post(format!("{faults}/reset"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(&faults)
            .send()
            .await
            .unwrap()
            .json::<Faults>()
            .await
            .unwrap(),
        Faults::default()
    );
    assert_eq!(c.get(&tags).send().await.unwrap().status(), 200);
    let s = sim.stats();
    assert_eq!((s.server_errors, s.unavailable), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn too_many_requests_fault_answers_429_with_retry_after() {
    let sim = start(opts()).await;
    let c = client();
    sim.set_faults(Faults {
        too_many_requests: Some(TooManyRequests {
            count: 2,
            retry_after_s: 7,
        }),
        ..Faults::default()
    });
    let tags = format!("{}/tags", sim.base_url());
    for _ in 0..2 {
        let r = c.get(&tags).send().await.unwrap();
        assert_eq!(r.headers()["retry-after"], "7");
        assert_eq!(
            error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
            "TooManyRequests"
        );
    }
    assert_eq!(c.get(&tags).send().await.unwrap().status(), 200);
    assert_eq!(sim.stats().too_many_requests, 2);
    assert_eq!(sim.faults().too_many_requests, None);
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_and_truncated_body_faults_spoil_reads() {
    let sim = start(opts()).await;
    let c = client();
    let name = sim.tag_names()[0].clone();
    let faults = format!("{}/_sim/faults", sim.base_url());
    c.post(&faults)
        .json(&json!({"malformed_body": 1}))
        .send()
        .await
        .unwrap();
    let body = c
        .post(format!("{}/tags/values", sim.base_url()))
        .json(&json!({"tags": [name]}))
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), 200);
    let text = body.bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&text).is_err(), "{text:?}");
    read(&c, &sim, &[&name]).await; // one shot: fine again
    c.post(&faults)
        .json(&json!({"truncated_body": true}))
        .send()
        .await
        .unwrap();
    for _ in 0..2 {
        let r = c
            .get(format!("{}/tags", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_err(), "the body must be cut off");
    }
    // Writes are not reads: untouched.
    let w = c
        .put(format!("{}/tags/values", sim.base_url()))
        .json(&json!({"values": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(w.json::<Value>().await.unwrap(), json!({"results": []}));
    c.post(format!("{faults}/reset")).send().await.unwrap();
    read(&c, &sim, &[&name]).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn outage_refuses_connections_then_the_same_port_comes_back() {
    let sim = start(opts()).await;
    let warm = client();
    let tags = format!("{}/tags", sim.base_url());
    assert_eq!(warm.get(&tags).send().await.unwrap().status(), 200);
    let r = warm
        .post(format!("{}/_sim/faults", sim.base_url()))
        .json(&json!({"outage_s": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the asking connection gets its answer");
    let started = Instant::now();
    let e = client().get(&tags).send().await.unwrap_err();
    assert!(e.is_connect(), "connection must be refused, got {e:?}");
    assert!(
        warm.get(&tags).send().await.is_err(),
        "kept-alive connections are gone too"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(client().get(&tags).send().await.unwrap_err().is_connect());
    let back = loop {
        if let Ok(r) = client().get(&tags).send().await {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(back.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(warm.get(&tags).send().await.unwrap().status(), 200);

    // From the handle: starts at once, and resetting the faults ends it early.
    sim.set_faults(Faults {
        outage_s: 30.0,
        ..Faults::default()
    });
    assert!(client().get(&tags).send().await.unwrap_err().is_connect());
    sim.set_faults(Faults::default());
    let t = Instant::now();
    while client().get(&tags).send().await.is_err() {
        assert!(t.elapsed() < Duration::from_secs(5), "never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn stats_count_requests_tags_rate_and_concurrency() {
    let sim = start(opts()).await;
    let c = client();
    let names = sim.tag_names();
    let ten: Vec<&str> = names[..10].iter().map(String::as_str).collect();
    for _ in 0..5 {
        read(&c, &sim, &ten).await;
    }
    for _ in 0..3 {
        c.get(format!("{}/tags", sim.base_url()))
            .send()
            .await
            .unwrap();
    }
    c.get(format!("{}/nowhere", sim.base_url()))
        .send()
        .await
        .unwrap();
    let s = stats(&c, &sim).await;
    assert_eq!(s.total_requests, 9);
    assert_eq!(s.requests["POST /tags/values"], 5);
    assert_eq!(s.requests["GET /tags"], 3);
    assert_eq!(s.requests["other"], 1);
    assert_eq!(s.tags_read, 50);
    assert_eq!(s.max_requests_per_second, 9);
    assert_eq!(s.statuses["200"], 8);
    assert_eq!(s.statuses["404"], 1);

    // The window slides: two bursts more than a second apart do not add up.
    assert_eq!(
        c.post(format!("{}/_sim/stats/reset", sim.base_url()))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    for _ in 0..5 {
        read(&c, &sim, &ten).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        read(&c, &sim, &ten).await;
    }
    let s = sim.stats();
    assert_eq!((s.total_requests, s.max_requests_per_second), (8, 5));

    // Concurrency: four slow requests at once.
    sim.reset_stats();
    sim.set_faults(Faults {
        latency_ms: 400,
        ..Faults::default()
    });
    let reqs = (0..4).map(|_| c.get(format!("{}/tags", sim.base_url())).send());
    for r in futures::future::join_all(reqs).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let s = sim.stats();
    assert_eq!((s.max_in_flight, s.in_flight), (4, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn alarms_are_served_and_driven_exactly() {
    let sim = start(opts()).await;
    let c = client();
    let ctl = format!("{}/_sim/alarms", sim.base_url());
    let current = format!("{}/alarms/current", sim.base_url());
    assert_eq!(
        c.get(&current)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
        json!({"alarms": []})
    );
    let raised: Value = c
        .post(&ctl)
        .json(&json!({"action": "raise", "id": "A 1/#", "name": "Tank #4/Level", "text": "Level low", "priority": 9}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cur: Value = c.get(&current).send().await.unwrap().json().await.unwrap();
    assert_eq!(cur["alarms"][0], raised);
    let a = cur["alarms"][0].as_object().unwrap();
    let mut keys: Vec<_> = a.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "acknowledgedAt",
            "class",
            "clearedAt",
            "id",
            "name",
            "priority",
            "raisedAt",
            "state",
            "text"
        ]
    );
    assert_eq!(
        (a["id"].clone(), a["state"].clone(), a["priority"].clone()),
        (json!("A 1/#"), json!("raised"), json!(9))
    );
    assert!(a["acknowledgedAt"].is_null() && a["clearedAt"].is_null());
    let r = c
        .post(&ctl)
        .json(&json!({"action": "raise", "id": "A 1/#"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "AlarmActive");
    let acked: Value = c
        .post(&ctl)
        .json(&json!({"action": "ack", "id": "A 1/#"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(acked["state"], "acknowledged");
    assert!(acked["acknowledgedAt"].is_string());
    let cleared: Value = c
        .post(&ctl)
        .json(&json!({"action": "clear", "id": "A 1/#"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["state"], "cleared");
    assert_eq!(
        c.get(&current)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
        json!({"alarms": []})
    );
    let r = c
        .post(&ctl)
        .json(&json!({"action": "ack", "id": "missing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "UnknownAlarm");
    let r = c
        .post(&ctl)
        .json(&json!({"action": "explode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "BadRequest");
    c.post(&ctl)
        .json(&json!({"action": "raise", "id": 2}))
        .send()
        .await
        .unwrap();

    let archive = format!("{}/alarms/archive", sim.base_url());
    let all: Value = c.get(&archive).send().await.unwrap().json().await.unwrap();
    assert_eq!(all["alarms"].as_array().unwrap().len(), 2);
    assert_eq!(all["alarms"][0]["state"], "cleared");
    let limited: Value = c
        .get(&archive)
        .query(&[("limit", "1")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(limited["alarms"].as_array().unwrap().len(), 1);
    let future: Value = c
        .get(&archive)
        .query(&[
            ("from", "2999-01-01T00:00:00Z"),
            ("to", "2999-12-31T00:00:00Z"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(future, json!({"alarms": []}));
    let r = c
        .get(&archive)
        .query(&[("from", "yesterday")])
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "BadRequest");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_ticker_raises_alarms_and_changes_values_by_itself() {
    let sim = start(SimOptions {
        tags: 200,
        change_rate: 1.0,
        alarms: true,
        seed: 3,
        ..SimOptions::default()
    })
    .await;
    let c = client();
    let names = sim.tag_names();
    let ask: Vec<&str> = names.iter().map(String::as_str).collect();
    let first = read(&c, &sim, &ask).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = read(&c, &sim, &ask).await;
    let changed = (0..names.len())
        .filter(|&i| first["values"][i]["timestamp"] != second["values"][i]["timestamp"])
        .count();
    // 200 tags at 100 %/s for 0.6 s is ~120 changes (some hit the same tag).
    assert!(changed > 20, "only {changed} tags changed");
    let t = Instant::now();
    loop {
        let a: Value = c
            .get(format!("{}/alarms/archive", sim.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(first) = a["alarms"].as_array().and_then(|a| a.first()) {
            assert!(names.iter().any(|n| first["name"] == n.as_str()));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no alarm raised");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.shutdown().await;

    // change_rate 0: nothing moves.
    let still = start(opts()).await;
    let ask: Vec<String> = still.tag_names();
    let ask: Vec<&str> = ask.iter().map(String::as_str).collect();
    let a = read(&c, &still, &ask).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a, read(&c, &still, &ask).await);
    still.shutdown().await;
}

#[tokio::test]
async fn handle_and_sim_endpoints_set_values_and_tags() {
    let sim = start(opts()).await;
    let c = client();
    let ro = sim
        .tags()
        .into_iter()
        .find(|t| t.ty == TagType::Float && !t.writable)
        .unwrap()
        .name;
    sim.set_value(&ro, json!(21.5));
    assert_eq!(
        read(&c, &sim, &[&ro]).await["values"][0]["value"],
        json!(21.5)
    );
    let r = c
        .post(format!("{}/_sim/tags/set", sim.base_url()))
        .json(&json!({"name": ro, "value": 3.25, "quality": "Uncertain", "qualityCode": 72}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let row = read(&c, &sim, &[&ro]).await["values"][0].clone();
    assert_eq!(
        (
            row["value"].clone(),
            row["quality"].clone(),
            row["qualityCode"].clone()
        ),
        (json!(3.25), json!("Uncertain"), json!(72))
    );
    let r = c
        .post(format!("{}/_sim/tags/set", sim.base_url()))
        .json(&json!({"name": ro, "value": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "TypeMismatch");

    let info = TagInfo {
        name: "New/Tag #1".into(),
        ty: TagType::UInt32,
        writable: true,
    };
    sim.add_tag(info.clone(), json!(7));
    assert_eq!(sim.tag_names().last().unwrap(), "New/Tag #1");
    assert_eq!(
        c.get(tag_url(&sim, "New/Tag #1"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["value"],
        7
    );
    assert!(sim.remove_tag("New/Tag #1"));
    assert!(!sim.remove_tag("New/Tag #1"));
    let r = c.get(tag_url(&sim, "New/Tag #1")).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "UnknownTag");
    assert_eq!(sim.tag_names().len(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_port_and_run_serves_until_told() {
    let sim = start(opts()).await;
    let addr = sim.addr();
    sim.shutdown().await;
    assert!(client()
        .get(format!("http://{addr}/tags"))
        .send()
        .await
        .unwrap_err()
        .is_connect());

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let task = tokio::spawn(sim::run(listen, opts(), async move {
        let _ = rx.await;
    }));
    let t = Instant::now();
    while client()
        .get(format!("http://{listen}/tags"))
        .send()
        .await
        .is_err()
    {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(client()
        .get(format!("http://{listen}/tags"))
        .send()
        .await
        .is_err());
    assert!(sim::start(
        listen,
        SimOptions {
            change_rate: f64::NAN,
            ..opts()
        }
    )
    .await
    .is_err());
}
