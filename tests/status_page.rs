//! The status page at `/` in a real headless browser (Debian's chromium,
//! driven over the DevTools protocol) against the gateway polling the
//! simulator: the station state and a tag value the page shows match the
//! simulator's and follow it live (Server-Sent Events), a screenshot is kept
//! as `target/status-page.png`, and the page requests nothing but its own
//! origin. Without chromium the browser test is skipped with a message,
//! except under CI, where it fails. The login off loopback is checked with a
//! plain HTTP client.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use wincc_gateway::config::{AuthMode, Dialect, HttpUser, Settings};
use wincc_gateway::model::TagType;
use wincc_gateway::sim::{Faults, SimHandle};

use crate::common::chromium::{self, Browser};
use crate::common::station::{a_tag_of, poll_group, quiet, settings, start_sim, wincc_settings};

fn gateway_settings(sim: &SimHandle) -> Settings {
    let mut s = settings(
        wincc_settings(sim, Dialect::Generic),
        vec![poll_group("all", &["**"], 200)],
    );
    s.mqtt.enabled = false;
    s.opcua.enabled = false;
    s.http.listen = "127.0.0.1:0".into();
    s
}

fn artifact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join(name)
}

const STATION_STATE: &str =
    "(function(){var e=document.getElementById('station-state');return e?e.dataset.state:null})()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_station_and_live_tag_values_in_a_real_browser() {
    let Some(bin) = chromium::find() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI for the status-page test: run scripts/setup.sh"
        );
        eprintln!(
            "SKIPPED status_page browser test: chromium is not installed (run scripts/setup.sh)"
        );
        return;
    };
    let sim = start_sim(quiet(30, AuthMode::None, "")).await;
    let tag = a_tag_of(&sim, TagType::Int32);
    let gw = wincc_gateway::gateway::start(gateway_settings(&sim))
        .await
        .expect("gateway starts");
    let addr = gw.http_addr.expect("http enabled");
    let origin = format!("http://{addr}");

    let browser = Browser::start(&bin).await;
    browser.navigate(&format!("{origin}/?filter={tag}")).await;

    let (ok, v) = browser
        .wait_for(
            "document.getElementById('live') && document.getElementById('live').dataset.live",
            Duration::from_secs(20),
            |v| v == "true",
        )
        .await;
    assert!(ok, "the page's event stream is live: {v}");
    let (ok, v) = browser
        .wait_for(STATION_STATE, Duration::from_secs(10), |v| v == "connected")
        .await;
    assert!(
        ok,
        "the simulator answers: the page shows connected, shows {v}"
    );

    // The value shown is the simulator's, then follows it live.
    let cell = format!(
        "(function(){{var r=document.querySelector('#tags tr[data-tag=\"{tag}\"]');return r?r.children[1].textContent:null}})()"
    );
    let at_sim = sim.value(&tag).expect("the tag exists").to_string();
    let (ok, v) = browser
        .wait_for(&cell, Duration::from_secs(10), |v| v == at_sim.as_str())
        .await;
    if !ok {
        let dbg = browser
            .eval("document.getElementById('tag-browser').outerHTML + ' URL=' + location.href")
            .await;
        let mut r = crate::common::sim::client()
            .get(format!("{origin}/events?filter={tag}"))
            .send()
            .await
            .unwrap();
        let mut text = String::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(Some(c))) = tokio::time::timeout_at(end, r.chunk()).await {
            text.push_str(&String::from_utf8_lossy(&c));
        }
        let text: String = text
            .lines()
            .filter(|l| !l.contains("html"))
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "{tag}: the page shows {v}, the simulator has {at_sim}; page: {dbg}; events: {text}"
        );
    }
    for n in [424_242, -17] {
        sim.set_value(&tag, json!(n));
        let want = sim.value(&tag).unwrap().to_string();
        assert_eq!(want, n.to_string());
        let (ok, v) = browser
            .wait_for(&cell, Duration::from_secs(10), |v| v == want.as_str())
            .await;
        assert!(
            ok,
            "{tag} set to {want} at the simulator; the page shows {v}"
        );
    }
    let rows = browser
        .eval("document.querySelectorAll('#tags tbody tr').length")
        .await;
    assert_eq!(rows, json!(1), "the filter {tag:?} shows that one tag");

    // The station goes away and comes back: the page follows.
    sim.set_faults(Faults {
        outage_s: 3600.0,
        ..Faults::default()
    });
    let (ok, v) = browser
        .wait_for(STATION_STATE, Duration::from_secs(15), |v| {
            v == "disconnected"
        })
        .await;
    assert!(ok, "the simulator is down: the page shows {v}");
    sim.set_faults(Faults::default());
    let (ok, v) = browser
        .wait_for(STATION_STATE, Duration::from_secs(15), |v| v == "connected")
        .await;
    assert!(ok, "the simulator is back: the page shows {v}");
    let groups = browser
        .eval("document.querySelector('#groups tr[data-group=\"all\"]').children[2].textContent")
        .await;
    assert_eq!(groups, json!("30"), "poll group \"all\" polls the 30 tags");

    let shot = artifact("status-page.png");
    browser.screenshot(&shot).await;
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());

    // Nothing but the gateway itself was asked for anything.
    let requests = browser.requests.lock().unwrap().clone();
    for path in ["/?filter=", "/status.js", "/status.css", "/events?filter="] {
        assert!(
            requests
                .iter()
                .any(|u| u.starts_with(&format!("{origin}{path}"))),
            "{path} requested: {requests:?}"
        );
    }
    let off_box: Vec<&String> = requests
        .iter()
        .filter(|u| !u.starts_with(&format!("{origin}/")) && *u != "about:blank")
        .collect();
    assert!(off_box.is_empty(), "requests off the gateway: {off_box:?}");
    let responses = browser.responses.lock().unwrap().clone();
    let (_, page_headers) = responses
        .iter()
        .find(|(u, _)| u.starts_with(&format!("{origin}/?")))
        .expect("the page's response");
    let csp = page_headers["content-security-policy"]
        .as_str()
        .unwrap_or("");
    assert!(csp.contains("default-src 'self'"), "CSP: {csp:?}");

    drop(browser);
    gw.shutdown().await;
}

#[tokio::test]
async fn off_loopback_the_page_needs_a_login_and_the_probes_do_not() {
    let sim = start_sim(quiet(5, AuthMode::None, "")).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "op-secret\n").unwrap();
    let mut s = gateway_settings(&sim);
    // Bound to every interface (the traffic of the test stays on loopback).
    s.http.listen = "0.0.0.0:0".into();
    s.http.users = vec![HttpUser {
        username: "operator".into(),
        password_env: String::new(),
        password_file: pw.to_string_lossy().into_owned(),
    }];
    let gw = wincc_gateway::gateway::start(s).await.unwrap();
    let port = gw.http_addr.unwrap().port();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let c = crate::common::sim::client();

    let r = c.get(url("/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    for (user, pass) in [
        ("operator", "wrong"),
        ("someone", "op-secret"),
        ("operator", ""),
    ] {
        let r = c
            .get(url("/"))
            .basic_auth(user, Some(pass))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{user}:{pass}");
    }
    for p in ["/", "/status.js", "/status.css"] {
        let r = c
            .get(url(p))
            .basic_auth("operator", Some("op-secret"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    let r = c.get(url("/events")).send().await.unwrap();
    assert_eq!(r.status(), 401, "the event stream needs the login too");
    // Probes and scrapers carry no credentials: unchanged.
    for p in ["/livez", "/metrics"] {
        let r = c.get(url(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    let r = c.get(url("/healthz")).send().await.unwrap();
    assert!(matches!(r.status().as_u16(), 200 | 503));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["config"]["version"], 1, "{body}");
    gw.shutdown().await;

    // No user configured: the page is refused with what to configure.
    let mut s = gateway_settings(&sim);
    s.http.listen = "0.0.0.0:0".into();
    let gw = wincc_gateway::gateway::start(s).await.unwrap();
    let port = gw.http_addr.unwrap().port();
    let r = c
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("[[http.users]]"));
    gw.shutdown().await;
}

#[tokio::test]
async fn on_loopback_a_foreign_host_name_is_refused() {
    let sim = start_sim(quiet(5, AuthMode::None, "")).await;
    let gw = wincc_gateway::gateway::start(gateway_settings(&sim))
        .await
        .unwrap();
    let addr = gw.http_addr.unwrap();
    let c = crate::common::sim::client();
    let r = c
        .get(format!("http://{addr}/"))
        .header("host", format!("attacker.example:{}", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421, "DNS rebinding is refused");
    let r = c.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("http://{addr}/events?filter=%5B"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a bad glob is refused");
    assert!(r.text().await.unwrap().contains("filter"));
    gw.shutdown().await;
}
