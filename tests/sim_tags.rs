//! The simulator's tag endpoints over real HTTP on loopback (contract §5):
//! browse and paging, batch reads, single-tag get/put with hostile names,
//! the write checks a station makes, and the error JSON of bad requests.

use crate::common;

use std::time::Duration;

use common::sim::{assert_error, client, json_of, opts, read, start, stats, tag_url, url};
use reqwest::StatusCode;
use serde_json::{json, Value};
use wincc_gateway::model::{TagInfo, TagType};
use wincc_gateway::sim::{SimOptions, HOSTILE};

#[tokio::test]
async fn browse_lists_and_pages_every_type_and_hostile_name() {
    let sim = start(opts()).await;
    let c = client();
    let all = json_of(c.get(url(&sim, "/tags"))).await;
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
    let page = json_of(c.get(url(&sim, "/tags?offset=190&limit=50"))).await;
    assert_eq!(page["total"], 200);
    assert_eq!(page["tags"].as_array().unwrap().len(), 10);
    assert_eq!(page["tags"][0]["name"], tags[190].name.as_str());
    let past = json_of(c.get(url(&sim, "/tags?offset=999"))).await;
    assert_eq!(past["tags"].as_array().unwrap().len(), 0);
    assert_error(
        c.get(url(&sim, "/tags?limit=many")),
        StatusCode::BAD_REQUEST,
        "BadRequest",
    )
    .await;
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
    let v = json_of(c.get(url(&sim, &format!("/tags/{plain}/value")))).await;
    assert_eq!(v["name"], plain.as_str());
    // `%2F` inside a name is data: decoded exactly once.
    let mut literal = reqwest::Url::parse(&sim.base_url()).unwrap();
    literal
        .path_segments_mut()
        .unwrap()
        .extend(["tags", "Percent%2FLiteral", "value"]);
    assert_eq!(json_of(c.get(literal)).await["name"], "Percent%2FLiteral");
    assert_error(
        c.get(tag_url(&sim, "Percent/Literal")),
        StatusCode::NOT_FOUND,
        "UnknownTag",
    )
    .await;
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
    let put = |name: &str, body: Value| c.put(tag_url(&sim, name)).json(&body);
    let before = sim.value(&i16w);
    for (name, body, status, code) in [
        (
            &*i16w,
            json!({"value": "5"}),
            StatusCode::BAD_REQUEST,
            "TypeMismatch",
        ),
        (
            &*i16w,
            json!({"value": 1.5}),
            StatusCode::BAD_REQUEST,
            "TypeMismatch",
        ),
        (
            &*i16w,
            json!({"value": 40000}),
            StatusCode::BAD_REQUEST,
            "OutOfRange",
        ),
        (
            &*ro,
            json!({"value": 1.0}),
            StatusCode::FORBIDDEN,
            "ReadOnly",
        ),
        (
            "Nope",
            json!({"value": 1}),
            StatusCode::NOT_FOUND,
            "UnknownTag",
        ),
        (
            &*i16w,
            json!({"val": 1}),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
    ] {
        assert_error(put(name, body), status, code).await;
    }
    assert_eq!(sim.value(&i16w), before);
    let ts_before = read(&c, &sim, &[&i16w]).await["values"][0]["timestamp"].clone();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        put(&i16w, json!({"value": 5.0}))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let row = read(&c, &sim, &[&i16w]).await["values"][0].clone();
    assert_eq!(row["value"], json!(5));
    assert_ne!(row["timestamp"], ts_before);

    let r = c
        .put(url(&sim, "/tags/values"))
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
    let values = url(&sim, "/tags/values");
    let post_raw = |body: Vec<u8>| {
        c.post(&values)
            .header("content-type", "application/json")
            .body(body)
    };
    for (body, code) in [
        ("{\"tags\":[", "MalformedJson"),
        ("not json", "MalformedJson"),
        ("{\"tags\":\"x\"}", "BadRequest"),
        ("{\"tags\":[1,2]}", "BadRequest"),
    ] {
        let r = post_raw(body.as_bytes().to_vec());
        assert_error(r, StatusCode::BAD_REQUEST, code).await;
    }
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("Some/Long/Tag Name {i}"))
        .collect();
    let big = serde_json::to_vec(&json!({ "tags": names })).unwrap();
    assert!(big.len() > 64 * 1024);
    assert_error(
        post_raw(big),
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
    )
    .await;
    for (rb, status, code) in [
        (
            c.put(&values).body("{\"values\":[{\"name\":\"x\"}]}"),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            c.get(url(&sim, "/nowhere")),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
        (
            c.delete(url(&sim, "/tags")),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        ),
        (
            c.get(url(&sim, "/tags/%FF%FE/value")),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
        (
            c.post(url(&sim, "/auth/login")).body("{\"username\":1}"),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        ),
    ] {
        assert_error(rb, status, code).await;
    }
    // The server is still fine afterwards.
    assert_eq!(read(&c, &sim, &[]).await, json!({"values": []}));
    sim.shutdown().await;
}
