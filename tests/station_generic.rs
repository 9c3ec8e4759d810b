//! The generic REST client against the simulator over real HTTP (loopback):
//! paging, name matching, auth modes, re-login, Retry-After, the rate
//! limiter, malformed and truncated replies, and secrets in errors.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::station::{
    a_tag_of, arcs, logging_in, quiet, spoiled_bodies, start_sim, wincc_settings,
};
use serde_json::json;
use wincc_gateway::config::{AuthMode, Dialect, RateLimit, WinccSettings};
use wincc_gateway::model::{BadReason, Quality, TagType};
use wincc_gateway::sim::{self, Faults, SimHandle, TooManyRequests};
use wincc_gateway::wincc::generic::GenericClient;
use wincc_gateway::wincc::{Station, StationError};

const PASSWORD: &str = "S3cr3t-Pa55w0rd!";

async fn sim_with(tags: usize, auth: AuthMode) -> SimHandle {
    start_sim(quiet(tags, auth, PASSWORD)).await
}

/// Client settings; the password goes through a file, as in production.
fn settings(
    sim: &SimHandle,
    auth: AuthMode,
    password: &str,
    dir: &tempfile::TempDir,
) -> WinccSettings {
    logging_in(
        wincc_settings(sim, Dialect::Generic),
        auth,
        password,
        dir.path(),
    )
}

fn client(s: &WinccSettings) -> Arc<GenericClient> {
    Arc::new(GenericClient::new(s).unwrap())
}

#[tokio::test]
async fn browse_pages_and_hostile_names_read_and_write() {
    let sim = sim_with(2500, AuthMode::None).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&settings(&sim, AuthMode::None, "", &dir));
    let tags = c.list_tags().await.unwrap();
    assert_eq!(tags.len(), 2500);
    assert_eq!(sim.stats().requests["GET /tags"], 3, "1000 per page");
    let hostile: Vec<String> = sim::HOSTILE.iter().map(|h| h.0.to_string()).collect();
    for h in &hostile {
        assert!(tags.iter().any(|t| &t.name == h), "{h:?} missing");
    }
    let readings = c.read_values(&arcs(&hostile)).await.unwrap();
    for (r, h) in readings.iter().zip(&hostile) {
        assert_eq!(&*r.name, h.as_str());
        assert_eq!(r.quality, Quality::Good, "{h:?}: {:?}", r.error);
        assert_eq!(Some(&r.value), sim.value(h).as_ref(), "{h:?}");
    }
    // Write every writable hostile tag through its percent-encoded URL.
    for (name, ty, writable) in sim::HOSTILE {
        if !writable {
            continue;
        }
        let v = match ty {
            TagType::Bool => json!(true),
            TagType::String => json!("written #1 +%"),
            TagType::UInt16 => json!(7),
            _ => json!(12.5),
        };
        c.write_value(name, *ty, &v)
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(sim.value(name), Some(v), "{name:?}");
    }
}

#[tokio::test]
async fn rows_are_matched_by_name_and_unknown_tags_are_bad() {
    let sim = sim_with(50, AuthMode::None).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&settings(&sim, AuthMode::None, "", &dir));
    let a = a_tag_of(&sim, TagType::Double);
    let b = a_tag_of(&sim, TagType::Bool);
    sim.set_value(&a, json!(3.25));
    let names = vec![b.clone(), "No/Such Tag".to_string(), a.clone()];
    let r = c.read_values(&arcs(&names)).await.unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(&*r[0].name, b.as_str());
    assert_eq!(r[0].quality, Quality::Good);
    assert_eq!(&*r[1].name, "No/Such Tag");
    assert_eq!(r[1].quality, Quality::Bad);
    assert!(
        matches!(r[1].error, Some(BadReason::TagError { .. })),
        "{:?}",
        r[1].error
    );
    assert_eq!(r[2].value, json!(3.25));
    // A refused write is Refused, with the station's reason.
    let e = c
        .write_value(&a, TagType::Double, &json!(1.0))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StationError::Refused { .. }),
        "read-only tag: {e:?}"
    );
}

#[tokio::test]
async fn expired_session_means_exactly_one_login_even_for_concurrent_requests() {
    for mode in [AuthMode::Session, AuthMode::Cookie] {
        let sim = sim_with(50, mode).await;
        let dir = tempfile::tempdir().unwrap();
        let c = client(&settings(&sim, mode, PASSWORD, &dir));
        let names = vec![a_tag_of(&sim, TagType::Double)];
        c.read_values(&arcs(&names)).await.unwrap();
        assert_eq!(sim.stats().logins, 1, "{mode:?}");
        sim.expire_tokens();
        let names = arcs(&names);
        let (x, y) = tokio::join!(c.read_values(&names), c.read_values(&names));
        x.unwrap();
        y.unwrap();
        c.read_values(&names).await.unwrap();
        let st = sim.stats();
        assert_eq!(st.logins, 2, "{mode:?}: exactly one re-login: {st:?}");
        assert!(st.unauthorized >= 1, "{mode:?}");
        c.logout().await;
        assert_eq!(sim.stats().requests["POST /auth/logout"], 1);
    }
}

#[tokio::test]
async fn basic_auth_works_and_a_refused_login_backs_off_without_requests() {
    let sim = sim_with(50, AuthMode::Basic).await;
    let dir = tempfile::tempdir().unwrap();
    let names = vec![a_tag_of(&sim, TagType::Double)];
    let good = client(&settings(&sim, AuthMode::Basic, PASSWORD, &dir));
    good.read_values(&arcs(&names)).await.unwrap();

    for mode in [AuthMode::Basic, AuthMode::Session] {
        let sim = sim_with(50, mode).await;
        let bad = client(&settings(&sim, mode, "wrong-password", &dir));
        let e1 = bad.read_values(&arcs(&names)).await.unwrap_err();
        assert!(matches!(e1, StationError::Auth(_)), "{e1:?}");
        let sent = sim.stats().total_requests;
        assert_eq!(sent, 1);
        // Within the backoff (>= 5 s) nothing is sent, the caller still sees Auth.
        for _ in 0..5 {
            let e = bad.read_values(&arcs(&names)).await.unwrap_err();
            assert!(matches!(e, StationError::Auth(_)), "{e:?}");
            assert!(e.to_string().contains("next login attempt in"), "{e}");
        }
        assert_eq!(sim.stats().total_requests, sent, "{mode:?}: no tight loop");
    }
}

#[tokio::test]
async fn retry_after_pauses_every_request() {
    let sim = sim_with(50, AuthMode::None).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&settings(&sim, AuthMode::None, "", &dir));
    let names = vec![a_tag_of(&sim, TagType::Double)];
    c.read_values(&arcs(&names)).await.unwrap();
    sim.set_faults(Faults {
        too_many_requests: Some(TooManyRequests {
            count: 1,
            retry_after_s: 1,
        }),
        ..Faults::default()
    });
    let start = Instant::now();
    let first = {
        let (c, names) = (c.clone(), names.clone());
        tokio::spawn(async move {
            c.read_values(&arcs(&names)).await.unwrap();
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Issued while the pause is in force: waits for it too.
    c.list_tags().await.unwrap();
    let second = start.elapsed();
    let first = first.await.unwrap();
    assert!(first >= Duration::from_millis(950), "{first:?}");
    assert!(second >= Duration::from_millis(950), "{second:?}");
    assert_eq!(sim.stats().too_many_requests, 1);
}

#[tokio::test]
async fn rate_limit_and_in_flight_hold_under_a_load_that_would_exceed_them() {
    let sim = sim_with(50, AuthMode::None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&sim, AuthMode::None, "", &dir);
    s.rate_limit = RateLimit {
        requests_per_second: 20,
        burst: 3,
        max_in_flight: 2,
    };
    sim.set_faults(Faults {
        latency_ms: 30,
        ..Faults::default()
    });
    let c = client(&s);
    let names = vec![a_tag_of(&sim, TagType::Double)];
    // 36 requests at once: without the limiter 36 in flight and 36 within a second.
    let mut tasks = Vec::new();
    for _ in 0..36 {
        let (c, names) = (c.clone(), names.clone());
        tasks.push(tokio::spawn(async move {
            c.read_values(&arcs(&names)).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = sim.stats();
    assert_eq!(st.requests["POST /tags/values"], 36);
    assert!(st.max_in_flight <= 2, "{st:?}");
    assert!(st.max_requests_per_second <= 20 + 3, "{st:?}");
    assert!(
        st.max_requests_per_second >= 15,
        "the load really pressed on the limit: {st:?}"
    );
}

#[tokio::test]
async fn malformed_and_truncated_replies_are_errors_and_the_next_call_works() {
    let sim = sim_with(50, AuthMode::None).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&settings(&sim, AuthMode::None, "", &dir));
    let names = vec![a_tag_of(&sim, TagType::Double)];
    for f in spoiled_bodies() {
        sim.set_faults(f.clone());
        let e = c.read_values(&arcs(&names)).await.unwrap_err();
        assert!(matches!(e, StationError::Malformed(_)), "{f:?}: {e:?}");
        assert!(c.read_values(&arcs(&names)).await.is_ok());
        sim.set_faults(f.clone());
        let e = c.list_tags().await.unwrap_err();
        assert!(matches!(e, StationError::Malformed(_)), "{f:?}: {e:?}");
    }
}

/// Collects one error of every kind the client can produce and checks that
/// neither the password nor the Basic credential is in any of them.
#[tokio::test]
async fn the_password_is_in_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let basic_cred = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("gateway:{PASSWORD}"))
    };
    let mut errors: Vec<StationError> = Vec::new();
    for mode in [AuthMode::Session, AuthMode::Cookie, AuthMode::Basic] {
        let sim = sim_with(50, mode).await;
        let names = vec![a_tag_of(&sim, TagType::Double)];
        // Refused login: the client's password is the secret here.
        let mut s = settings(&sim, mode, PASSWORD, &dir);
        let other = tempfile::tempdir().unwrap();
        let wrong = settings(&sim, mode, &format!("{PASSWORD}x"), &other);
        errors.push(client(&wrong).read_values(&arcs(&names)).await.unwrap_err());
        s.timeout_ms = 300;
        let c = client(&s);
        c.read_values(&arcs(&names)).await.unwrap();
        let failing = [
            Faults {
                error_rate: 1.0,
                ..Faults::default()
            },
            Faults {
                unavailable: true,
                ..Faults::default()
            },
        ];
        let slow = Faults {
            latency_ms: 600,
            ..Faults::default()
        };
        for f in failing.into_iter().chain(spoiled_bodies()).chain([slow]) {
            sim.set_faults(f);
            errors.push(c.read_values(&arcs(&names)).await.unwrap_err());
        }
        sim.set_faults(Faults::default());
        errors.push(
            c.write_value(&names[0], TagType::Double, &json!(PASSWORD))
                .await
                .unwrap_err(),
        );
        // The station echoes the unknown name, which holds the secret here.
        let echo = c
            .write_value(&format!("Echo {PASSWORD}"), TagType::Double, &json!(1))
            .await
            .unwrap_err();
        assert!(echo.to_string().contains("Echo ***"), "{echo}");
        errors.push(echo);
        let r = c
            .read_values(&[format!("Echo {PASSWORD}").into()])
            .await
            .unwrap();
        match &r[0].error {
            Some(BadReason::TagError { message, .. }) => {
                assert!(!message.contains(PASSWORD), "{message}")
            }
            other => panic!("{other:?}"),
        }
        sim.set_faults(Faults {
            outage_s: 5.0,
            ..Faults::default()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        errors.push(c.read_values(&arcs(&names)).await.unwrap_err());
        sim.set_faults(Faults::default());
    }
    let kinds: std::collections::BTreeSet<&str> = errors.iter().map(|e| e.kind()).collect();
    for k in [
        "auth",
        "http",
        "busy",
        "malformed",
        "timeout",
        "refused",
        "unreachable",
    ] {
        assert!(kinds.contains(k), "no {k} error among {errors:?}");
    }
    for e in &errors {
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains(PASSWORD), "{text}");
            assert!(!text.contains(&basic_cred), "{text}");
        }
    }
}
