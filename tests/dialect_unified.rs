//! The `unified` dialect (WinCC Unified GraphQL) against the simulator over
//! real HTTP (loopback): the poller's output equals the generic dialect's
//! for the same station data, login refusal without a tight loop, exactly
//! one re-login after expiry, extendSession, per-name errors, writes,
//! alarms, and the simulator's GraphQL rules. Round 2 (WINCC-DIALECTS.md
//! §10): trailing slash, redirects, the CSRF header, errors by code, the
//! missing Openness right, one tag per `next` frame and `Removed`, session
//! lifetimes of seconds or years.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::station::{
    arcs, logging_in, poll_group, quiet, requests, spoiled_bodies, start_sim, wincc_settings,
    Polling,
};
use serde_json::{json, Value};
use wincc_gateway::bus::Event;
use wincc_gateway::config::{AuthMode, Dialect, RateLimit, WinccSettings};
use wincc_gateway::model::{AlarmState, BadReason, Quality, TagChange, TagType};
use wincc_gateway::sim::{self, AlarmAction, AlarmCommand, SimHandle, SimOptions};
use wincc_gateway::wincc::unified::UnifiedClient;
use wincc_gateway::wincc::{Station, StationError};

const PASSWORD: &str = "Un1f1ed-Pa55!";

async fn sim_with(dialect: Dialect, tags: usize, ttl: Duration) -> SimHandle {
    start_sim(SimOptions {
        token_ttl: ttl,
        seed: 7,
        dialect,
        ..quiet(tags, AuthMode::Session, PASSWORD)
    })
    .await
}

fn wincc(
    sim: &SimHandle,
    dialect: Dialect,
    password: &str,
    dir: &tempfile::TempDir,
) -> WinccSettings {
    logging_in(
        wincc_settings(sim, dialect),
        AuthMode::Session,
        password,
        dir.path(),
    )
}

async fn unified(ttl: Duration) -> (SimHandle, Arc<UnifiedClient>, tempfile::TempDir) {
    let sim = sim_with(Dialect::Unified, 60, ttl).await;
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(UnifiedClient::new(&wincc(&sim, Dialect::Unified, PASSWORD, &dir)).unwrap());
    (sim, c, dir)
}

fn count(sim: &SimHandle, op: &str) -> u64 {
    requests(sim, &format!("POST /graphql {op}"))
}

/// What the poller published for one station: every tag's last change
/// (timestamp aside) and the tag list, after the output has settled.
async fn poller_output(
    sim: &SimHandle,
    dialect: Dialect,
) -> (BTreeMap<String, TagChange>, Vec<(String, TagType)>) {
    let dir = tempfile::tempdir().unwrap();
    let s = common::station::settings(
        wincc(sim, dialect, PASSWORD, &dir),
        vec![poll_group("all", &["**"], 100)],
    );
    let mut poller = Polling::start(&s);
    let mut changes = BTreeMap::new();
    let mut tags = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(700), poller.sub.recv()).await {
            Ok(Some(Event::Changes(b))) => {
                for c in &b.changes {
                    changes.insert(c.name.to_string(), c.clone());
                }
            }
            Ok(Some(Event::Tags(t))) => {
                tags = t.iter().map(|t| (t.name.clone(), t.ty)).collect();
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) if !changes.is_empty() => break,
            Err(_) => {}
        }
    }
    poller.stop().await;
    tags.sort_by(|a, b| a.0.cmp(&b.0));
    (changes, tags)
}

#[tokio::test]
async fn poller_output_matches_the_generic_dialect_for_the_same_station() {
    let generic = sim_with(Dialect::Generic, 60, Duration::from_secs(3600)).await;
    let unified = sim_with(Dialect::Unified, 60, Duration::from_secs(3600)).await;
    // Same seed: same names, types and values; one uncertain tag on both.
    let names = generic.tag_names();
    assert_eq!(names, unified.tag_names());
    // DateTime tags start at "generation time minus a random span": make them identical.
    for t in generic.tags().iter().filter(|t| t.ty == TagType::DateTime) {
        unified.set_value(&t.name, generic.value(&t.name).unwrap());
    }
    generic
        .set_quality(&names[3], Quality::Uncertain, None)
        .unwrap();
    unified
        .set_quality(&names[3], Quality::Uncertain, None)
        .unwrap();
    let (g, g_tags) = poller_output(&generic, Dialect::Generic).await;
    let (u, u_tags) = poller_output(&unified, Dialect::Unified).await;
    assert_eq!(g_tags.len(), 60, "hostile names included");
    assert_eq!(g_tags, u_tags);
    assert_eq!(g.len(), 60);
    assert_eq!(g.keys().collect::<Vec<_>>(), u.keys().collect::<Vec<_>>());
    for (name, gc) in &g {
        let uc = &u[name];
        assert_eq!(
            (&gc.ty, &gc.value, gc.quality, gc.quality_code, &gc.error),
            (&uc.ty, &uc.value, uc.quality, uc.quality_code, &uc.error),
            "{name:?}"
        );
        // Each carries its own station's source timestamp, to the millisecond.
        let ts = |sim: &SimHandle| sim.state().store().get(name).unwrap().timestamp();
        assert_eq!(gc.timestamp, ts(&generic), "{name:?}");
        assert_eq!(uc.timestamp, ts(&unified), "{name:?}");
    }
    assert_eq!(u[&names[3]].quality, Quality::Uncertain);
}

#[tokio::test]
async fn refused_login_is_an_auth_error_without_a_tight_loop() {
    let sim = sim_with(Dialect::Unified, 30, Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let c = UnifiedClient::new(&wincc(&sim, Dialect::Unified, "wrong-password", &dir)).unwrap();
    let names = vec![sim.tag_names()[0].clone()];
    for _ in 0..20 {
        match c.read_values(&arcs(&names)).await {
            Err(StationError::Auth(m)) => {
                assert!(m.contains("101"), "{m}");
                assert!(!m.contains("wrong-password"), "{m}");
            }
            other => panic!("expected an auth error, got {other:?}"),
        }
    }
    let st = sim.stats();
    assert_eq!(st.login_failures, 1, "one login, then the backoff gate");
    assert_eq!(count(&sim, "login"), 1);
    assert_eq!(count(&sim, "tagValues"), 0);
}

#[tokio::test]
async fn expired_session_means_exactly_one_relogin() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    let names = sim.tag_names()[..5].to_vec();
    assert!(c
        .read_values(&arcs(&names))
        .await
        .unwrap()
        .iter()
        .all(|r| r.error.is_none()));
    assert_eq!(sim.stats().logins, 1);
    sim.expire_tokens();
    let r = c.read_values(&arcs(&names)).await.unwrap();
    assert!(r
        .iter()
        .all(|r| r.quality == Quality::Good && r.error.is_none()));
    assert_eq!(sim.stats().logins, 2);
    assert_eq!(
        count(&sim, "tagValues"),
        3,
        "the rejected read is retried once"
    );
    c.read_values(&arcs(&names)).await.unwrap();
    assert_eq!(sim.stats().logins, 2);
    c.logout().await;
    assert_eq!(count(&sim, "logout"), 1);
    assert_eq!(sim.state().sessions().live(), 0);
}

#[tokio::test]
async fn session_is_extended_before_it_expires() {
    let (sim, c, _dir) = unified(Duration::from_millis(2000)).await;
    let names = sim.tag_names()[..3].to_vec();
    for _ in 0..3 {
        c.read_values(&arcs(&names)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1400)).await;
    }
    c.read_values(&arcs(&names)).await.unwrap();
    let st = sim.stats();
    assert_eq!(st.logins, 1, "{st:?}");
    assert!(count(&sim, "extendSession") >= 3, "{st:?}");
}

#[tokio::test]
async fn per_name_errors_and_qualities() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    let all = sim.tag_names();
    sim.set_quality(&all[1], Quality::Bad, Some(0x18)).unwrap();
    sim.set_quality(&all[2], Quality::Uncertain, Some(0x48))
        .unwrap();
    let mut names = all.clone();
    names.insert(5, "HMI_RT_1::Nope".into());
    let r = c.read_values(&arcs(&names)).await.unwrap();
    assert_eq!(r.len(), names.len());
    for (reading, name) in r.iter().zip(&names) {
        assert_eq!(&*reading.name, name.as_str());
        let want = match name.as_str() {
            n if n == all[1] => Quality::Bad,
            n if n == all[2] => Quality::Uncertain,
            "HMI_RT_1::Nope" => Quality::Bad,
            _ => Quality::Good,
        };
        assert_eq!(reading.quality, want, "{name:?}");
        if name == "HMI_RT_1::Nope" {
            assert!(
                matches!(&reading.error, Some(BadReason::TagError { code, .. }) if code == "2")
            );
            assert_eq!(reading.value, Value::Null);
        } else {
            assert!(reading.error.is_none(), "{name:?}");
            assert_eq!(Some(&reading.value), sim.value(name).as_ref(), "{name:?}");
        }
    }
}

#[tokio::test]
async fn browse_writes_and_their_refusals() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    let listed = c.list_tags().await.unwrap();
    let expect: Vec<(String, TagType)> = sim.tags().into_iter().map(|t| (t.name, t.ty)).collect();
    assert_eq!(
        listed
            .iter()
            .map(|t| (t.name.clone(), t.ty))
            .collect::<Vec<_>>(),
        expect
    );
    let tags = sim.tags();
    let int = tags
        .iter()
        .find(|t| t.writable && t.ty == TagType::Int16)
        .unwrap();
    c.write_value(&int.name, int.ty, &json!(5)).await.unwrap();
    assert_eq!(sim.value(&int.name), Some(json!(5)));
    for (name, ty, value, want) in [
        (&*int.name, int.ty, json!("five"), "201"),
        (&*int.name, int.ty, json!(70000), "201"),
        ("HMI_RT_1::Nope", TagType::Bool, json!(true), "2"),
    ] {
        let e = c.write_value(name, ty, &value).await.unwrap_err();
        assert!(
            matches!(&e, StationError::Refused { code, .. } if code == want),
            "{name:?} = {value}: {e:?}"
        );
    }
    let ro = tags.iter().find(|t| !t.writable).unwrap();
    let before = sim.value(&ro.name);
    assert!(matches!(
        c.write_value(&ro.name, ro.ty, &before.clone().unwrap())
            .await,
        Err(StationError::Refused { .. })
    ));
    assert_eq!(sim.value(&int.name), Some(json!(5)));
    assert_eq!(sim.stats().tags_written, 1);
}

#[tokio::test]
async fn active_alarms_are_listed() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    assert!(c.active_alarms().await.unwrap().is_empty());
    let raise = |id: &str, name: &str| AlarmCommand {
        action: AlarmAction::Raise,
        id: Some(json!(id)),
        name: Some(name.into()),
        text: Some(format!("{name} too high")),
        class: Some("Warning".into()),
        priority: Some(7),
    };
    let a = sim.alarm(raise("11", "HMI_RT_1::Tank1:High")).unwrap();
    sim.alarm(raise("12", "HMI_RT_1::Tank2:High")).unwrap();
    sim.alarm(AlarmCommand {
        action: AlarmAction::Ack,
        id: Some(json!("12")),
        name: None,
        text: None,
        class: None,
        priority: None,
    })
    .unwrap();
    let mut got = c.active_alarms().await.unwrap();
    got.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, "HMI_RT_1::Tank1:High@11");
    assert_eq!(got[0].name, "HMI_RT_1::Tank1:High");
    assert_eq!(got[0].text, "HMI_RT_1::Tank1:High too high");
    assert_eq!((got[0].class.as_str(), got[0].priority), ("Warning", 7));
    assert_eq!(got[0].state, AlarmState::Raised);
    assert_eq!(got[0].raised_at, a.raised_at);
    assert_eq!(got[0].acknowledged_at, None);
    assert_eq!(got[1].state, AlarmState::Acknowledged);
    assert!(got[1].acknowledged_at.is_some());
}

/// Raw GraphQL against the simulator.
async fn post(sim: &SimHandle, body: Value, token: Option<&str>) -> Value {
    let mut rb = common::sim::client()
        .post(format!("{}/graphql", sim.base_url()))
        .header("apollo-require-preflight", "true")
        .json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn simulator_speaks_graphql_strictly() {
    let sim = sim_with(Dialect::Unified, 30, Duration::from_secs(3600)).await;
    let login = "mutation L($u: String!, $p: String!) { login(username: $u, password: $p) { token expires error { code description } } }";
    let bad = post(
        &sim,
        json!({"query": login, "variables": {"u": "gateway", "p": "x"}}),
        None,
    )
    .await;
    assert_eq!(bad["data"]["login"]["error"]["code"], "101");
    assert!(bad["data"]["login"]["token"].is_null());
    let ok = post(
        &sim,
        json!({"query": login, "variables": {"u": "gateway", "p": PASSWORD}}),
        None,
    )
    .await;
    assert_eq!(ok["data"]["login"]["error"]["code"], "0");
    let expires = ok["data"]["login"]["expires"].as_str().unwrap();
    assert_eq!(expires.len(), 24, "{expires}");
    assert!(
        expires.ends_with('Z') && expires.as_bytes()[19] == b'.',
        "{expires}"
    );
    let token = ok["data"]["login"]["token"].as_str().unwrap().to_string();
    let read = "query T($n: [String!]!) { tagValues(names: $n) { name value { value timestamp quality { quality } } error { code } } }";
    let name = sim.tag_names()[0].clone();
    let unauth = post(
        &sim,
        json!({"query": read, "variables": {"n": [name]}}),
        None,
    )
    .await;
    assert_eq!(unauth["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let v = post(
        &sim,
        json!({"query": read, "variables": {"n": [name]}}),
        Some(&token),
    )
    .await;
    assert_eq!(v["data"]["tagValues"][0]["name"], name.as_str());
    assert_eq!(
        v["data"]["tagValues"][0]["value"]["timestamp"]
            .as_str()
            .unwrap()
            .len(),
        24
    );
    let literal = post(
        &sim,
        json!({"query": "{ tagValues(names: [\"a\"]) { name } }"}),
        Some(&token),
    )
    .await;
    assert!(literal["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("inline literal"));
    let unknown = post(
        &sim,
        json!({"query": "query { loggedAlarms { name } }"}),
        Some(&token),
    )
    .await;
    assert!(unknown["errors"][0]["message"].is_string());
    let wrong_kind = post(&sim, json!({"query": "query L($u: String!, $p: String!) { login(username: $u, password: $p) { token } }", "variables": {"u": "gateway", "p": PASSWORD}}), None).await;
    assert!(wrong_kind["errors"].is_array());
    assert_eq!(sim.stats().logins, 1);
}

#[tokio::test]
async fn station_faults_become_clear_errors() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    let names = sim.tag_names()[..3].to_vec();
    c.read_values(&arcs(&names)).await.unwrap();
    for f in spoiled_bodies() {
        sim.set_faults(f.clone());
        let e = c.read_values(&arcs(&names)).await.unwrap_err();
        assert!(matches!(e, StationError::Malformed(_)), "{f:?}: {e:?}");
    }
    sim.set_faults(sim::Faults {
        unavailable: true,
        ..sim::Faults::default()
    });
    let e = c.read_values(&arcs(&names)).await.unwrap_err();
    assert!(e.is_outage(), "{e:?}");
    sim.set_faults(sim::Faults::default());
    assert_eq!(c.read_values(&arcs(&names)).await.unwrap().len(), 3);
    assert_eq!(sim.stats().logins, 1, "faults are not auth failures");
}

/// Readings from a subscription until `pred` holds for one of them.
async fn sub_until(
    sub: &mut wincc_gateway::wincc::unified::TagSubscription,
    what: &str,
    mut pred: impl FnMut(&wincc_gateway::model::Reading) -> bool,
) -> Vec<wincc_gateway::model::Reading> {
    use wincc_gateway::wincc::unified::SubscriptionEvent;
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(SubscriptionEvent::Readings(r))) => {
                let hit = r.iter().any(&mut pred);
                seen.extend(r);
                if hit {
                    return seen;
                }
            }
            other => panic!("no {what}: {other:?} after {seen:?}"),
        }
    }
}

#[tokio::test]
async fn tag_values_subscription_sends_added_then_modified() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    let tags = sim.tags();
    let int = tags
        .iter()
        .find(|t| t.writable && t.ty == TagType::Int16)
        .unwrap();
    let names = vec![int.name.clone(), "HMI_RT_1::Nope".to_string()];
    let mut sub = c.subscribe_tag_values(&arcs(&names)).await.unwrap();
    let added = sub_until(&mut sub, "Added for the unknown tag", |r| {
        *r.name == *names[1]
    })
    .await;
    assert_eq!(added.len(), 2, "{added:?}");
    assert_eq!(Some(&added[0].value), sim.value(&int.name).as_ref());
    assert_eq!(added[0].quality, Quality::Good);
    assert!(matches!(&added[1].error, Some(BadReason::TagError { code, .. }) if code == "2"));
    let v = if sim.value(&int.name) == Some(json!(1234)) {
        4321
    } else {
        1234
    };
    sim.set_value(&int.name, json!(v));
    let modified = sub_until(&mut sub, "Modified", |r| r.value == json!(v)).await;
    assert!(
        modified.iter().all(|r| *r.name == *int.name),
        "{modified:?}"
    );
    assert_eq!(sim.stats().logins, 1);
    assert_eq!(requests(&sim, "WS subscribe tagValues"), 1);
    // The station going away ends the subscription with a Closed event.
    sim.set_faults(sim::Faults {
        outage_s: 1.0,
        ..sim::Faults::default()
    });
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sub.next().await {
                Some(wincc_gateway::wincc::unified::SubscriptionEvent::Closed(e)) => return e,
                Some(_) => {}
                None => panic!("ended without a Closed event"),
            }
        }
    })
    .await
    .unwrap();
    assert!(end.is_outage(), "{end:?}");
}

#[tokio::test]
async fn subscription_with_a_dead_session_logs_in_once_more() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    let names = sim.tag_names()[..2].to_vec();
    c.read_values(&arcs(&names)).await.unwrap();
    sim.expire_tokens();
    let mut sub = c.subscribe_tag_values(&arcs(&names)).await.unwrap();
    sub_until(&mut sub, "Added", |r| *r.name == *names[1]).await;
    assert_eq!(sim.stats().logins, 2);
    let dir = tempfile::tempdir().unwrap();
    let bad = UnifiedClient::new(&wincc(&sim, Dialect::Unified, "nope", &dir)).unwrap();
    assert!(matches!(
        bad.subscribe_tag_values(&arcs(&names)).await,
        Err(StationError::Auth(_))
    ));
}

#[tokio::test]
async fn every_graphql_request_goes_through_the_rate_limiter() {
    let sim = sim_with(Dialect::Unified, 30, Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = wincc(&sim, Dialect::Unified, PASSWORD, &dir);
    s.rate_limit = RateLimit {
        requests_per_second: 8,
        burst: 2,
        max_in_flight: 1,
    };
    let c = Arc::new(UnifiedClient::new(&s).unwrap());
    let names = sim.tag_names()[..4].to_vec();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (c, names) = (Arc::clone(&c), names.clone());
        tasks.push(tokio::spawn(
            async move { c.read_values(&arcs(&names)).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let st = sim.stats();
    assert_eq!(st.total_requests, 13, "12 reads and one login: {st:?}");
    // GCRA: at most rate + burst arrivals in any one-second window.
    assert!(st.max_requests_per_second <= 8 + 2, "{st:?}");
    assert!(
        st.max_requests_per_second >= 6,
        "the limit was pressed: {st:?}"
    );
    assert_eq!(st.max_in_flight, 1, "{st:?}");
}

/// A unified station with its options changed by `f`, and a client of it
/// at `path` (e.g. "/graphql/").
async fn unified_at(
    path: &str,
    f: impl FnOnce(&mut SimOptions),
) -> (SimHandle, Arc<UnifiedClient>, tempfile::TempDir) {
    let mut o = SimOptions {
        token_ttl: Duration::from_secs(3600),
        seed: 7,
        dialect: Dialect::Unified,
        ..quiet(30, AuthMode::Session, PASSWORD)
    };
    f(&mut o);
    let sim = start_sim(o).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = wincc(&sim, Dialect::Unified, PASSWORD, &dir);
    s.base_url = format!("{}{path}", sim.base_url());
    let c = Arc::new(UnifiedClient::new(&s).unwrap());
    (sim, c, dir)
}

#[tokio::test]
async fn the_endpoint_is_used_verbatim_and_a_redirect_is_followed_once_as_a_post() {
    // A station that wants the trailing slash: configured with it, no redirect.
    let (sim, c, _dir) = unified_at("/graphql/", |o| o.unified_require_trailing_slash = true).await;
    let names = sim.tag_names()[..3].to_vec();
    assert!(c
        .read_values(&arcs(&names))
        .await
        .unwrap()
        .iter()
        .all(|r| r.error.is_none()));
    assert_eq!(sim.stats().statuses.get("301"), None);
    assert_eq!(count(&sim, "tagValues"), 1);
    assert_eq!(count(&sim, "login"), 1);

    // Configured without it: the 301 is followed as a POST (reqwest's own
    // redirect would have made it a GET, answered 405), once, and remembered.
    let (sim, c, _dir) = unified_at("/graphql", |o| o.unified_require_trailing_slash = true).await;
    let r = c.read_values(&arcs(&names)).await.unwrap();
    assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    c.read_values(&arcs(&names)).await.unwrap();
    assert_eq!(count(&sim, "tagValues"), 2);
    assert_eq!(count(&sim, "login"), 1);
    assert_eq!(
        requests(&sim, "POST /graphql"),
        1,
        "one redirected request, then the remembered endpoint"
    );
    // And the subscription goes to the same endpoint.
    let mut sub = c.subscribe_tag_values(&arcs(&names)).await.unwrap();
    sub_until(&mut sub, "Added", |r| *r.name == *names[2]).await;
}

#[tokio::test]
async fn every_request_carries_the_csrf_header_and_the_station_refuses_others() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    let names = sim.tag_names()[..2].to_vec();
    c.read_values(&arcs(&names)).await.unwrap();
    assert_eq!(sim.stats().statuses.get("400"), None, "no request refused");
    // Without the header: 400, in Apollo's words.
    let r = common::sim::client()
        .post(format!("{}/graphql", sim.base_url()))
        .json(&json!({"query": "query { browse { name } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("potential Cross-Site Request Forgery"));
}

#[tokio::test]
async fn a_user_without_the_openness_right_is_reported_not_logged_in_again() {
    let (sim, c, _dir) = unified_at("/graphql", |o| {
        o.unified_users_without_rights = vec!["gateway".into()]
    })
    .await;
    let names = sim.tag_names()[..2].to_vec();
    let e = c.read_values(&arcs(&names)).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StationError::Auth(_)), "{e:?}");
    assert!(
        text.contains("Openness Runtime - read and write access") && text.contains("Access denied"),
        "{text}"
    );
    assert!(e.is_outage(), "the station is reported as refusing");
    // Held back on the login backoff: no request, no new login.
    for _ in 0..5 {
        let again = c.read_values(&arcs(&names)).await.unwrap_err();
        assert!(again.to_string().contains("Openness Runtime"), "{again}");
    }
    assert_eq!(
        sim.stats().logins,
        1,
        "a live session is not a reason to log in"
    );
    assert_eq!(count(&sim, "tagValues"), 1);
    assert!(!text.contains(PASSWORD));
    // The subscription says the same.
    let sim2 = start_sim(SimOptions {
        seed: 7,
        dialect: Dialect::Unified,
        unified_users_without_rights: vec!["gateway".into()],
        ..quiet(30, AuthMode::Session, PASSWORD)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c2 = UnifiedClient::new(&wincc(&sim2, Dialect::Unified, PASSWORD, &dir)).unwrap();
    let mut sub = c2.subscribe_tag_values(&arcs(&names)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(wincc_gateway::wincc::SubscriptionEvent::Closed(e))) => {
            assert!(e.to_string().contains("Openness Runtime"), "{e}");
        }
        other => panic!("expected the subscription to end: {other:?}"),
    }
}

#[tokio::test]
async fn removed_tags_are_bad_with_the_stations_reason() {
    let (sim, c, _dir) = unified(Duration::from_secs(3600)).await;
    let names = sim.tag_names()[..2].to_vec();
    let mut sub = c.subscribe_tag_values(&arcs(&names)).await.unwrap();
    sub_until(&mut sub, "Added", |r| *r.name == *names[1]).await;
    assert!(sim.remove_tag(&names[0]));
    let seen = sub_until(&mut sub, "Removed", |r| *r.name == *names[0]).await;
    let r = seen.iter().find(|r| *r.name == *names[0]).unwrap();
    assert_eq!(r.quality, Quality::Bad);
    assert!(
        matches!(&r.error, Some(BadReason::TagError { code, message }) if code == "removed" && message.starts_with("Removed")),
        "{r:?}"
    );
}

#[tokio::test]
async fn sessions_of_years_are_not_extended_early_nor_overflow() {
    let years = Duration::from_secs(20 * 365 * 24 * 3600);
    let (sim, c, _dir) = unified(years).await;
    let names = sim.tag_names()[..2].to_vec();
    for _ in 0..3 {
        c.read_values(&arcs(&names)).await.unwrap();
    }
    assert_eq!(sim.stats().logins, 1);
    assert_eq!(count(&sim, "extendSession"), 0);
}
