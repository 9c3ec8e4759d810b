//! Certificate pinning against the simulator over HTTPS with a fresh
//! self-signed certificate (loopback): the pinned fingerprint is accepted
//! in any spelling; any other one is refused with an error naming both
//! fingerprints; without pinning or a CA the certificate is refused;
//! `accept_invalid_certs` accepts it. Pinning works for every dialect.

use wincc_gateway::config::{AlarmSettings, AuthMode, Dialect, RateLimit, Settings, WinccSettings};
use wincc_gateway::sim::{self, SimHandle, SimOptions};
use wincc_gateway::wincc::tls::fingerprint;
use wincc_gateway::wincc::{self, StationError};

async fn https_sim(dialect: Dialect) -> (SimHandle, Vec<u8>) {
    sim::tls::start_tls(
        "127.0.0.1:0".parse().unwrap(),
        SimOptions {
            tags: 50,
            change_rate: 0.0,
            auth: AuthMode::None,
            alarms: false,
            dialect,
            users: vec![("gateway".into(), "pw".into())],
            ..SimOptions::default()
        },
    )
    .await
    .unwrap()
}

fn settings(base_url: String, dialect: Dialect) -> Settings {
    let auth = if dialect == Dialect::WinccV7 {
        AuthMode::Basic
    } else {
        AuthMode::None
    };
    let dir = std::env::temp_dir().join(format!("tls-pin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "pw").unwrap();
    Settings {
        wincc: WinccSettings {
            base_url,
            dialect,
            auth,
            username: "gateway".into(),
            password_file: pw.to_string_lossy().into_owned(),
            timeout_ms: 3000,
            rate_limit: RateLimit {
                requests_per_second: 100,
                burst: 10,
                max_in_flight: 2,
            },
            ..WinccSettings::default()
        },
        poll_groups: vec![],
        alarms: AlarmSettings::default(),
        mqtt: Default::default(),
        opcua: Default::default(),
        sparkplug: Default::default(),
        http: Default::default(),
        log: Default::default(),
    }
}

async fn browse(s: &Settings) -> Result<usize, StationError> {
    let station = wincc::connect(s).expect("client builds");
    station.list_tags().await.map(|t| t.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pinned_certificate_is_accepted_in_any_spelling() {
    let (sim, der) = https_sim(Dialect::Generic).await;
    let fp = fingerprint(&der);
    for spelling in [fp.clone(), fp.to_uppercase(), fp.replace(':', "")] {
        let mut s = settings(sim.https_base_url(), Dialect::Generic);
        s.wincc.pinned_cert_sha256 = spelling.clone();
        assert_eq!(browse(&s).await.unwrap(), 50, "{spelling}");
    }
    // Pinning wins over accept_invalid_certs, which is then ignored.
    let mut s = settings(sim.https_base_url(), Dialect::Generic);
    s.wincc.pinned_cert_sha256 = fp;
    s.wincc.accept_invalid_certs = true;
    assert_eq!(browse(&s).await.unwrap(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_fingerprint_is_refused_naming_both() {
    let (sim, der) = https_sim(Dialect::Generic).await;
    let presented = fingerprint(&der);
    let other = fingerprint(b"some other certificate");
    for accept_invalid in [false, true] {
        let mut s = settings(sim.https_base_url(), Dialect::Generic);
        s.wincc.pinned_cert_sha256 = other.to_uppercase();
        s.wincc.accept_invalid_certs = accept_invalid;
        let e = browse(&s).await.unwrap_err();
        assert!(matches!(e, StationError::Unreachable(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("pinned_cert_sha256"), "{text}");
        assert!(text.contains(&format!("expected {other}")), "{text}");
        assert!(text.contains(&format!("presented {presented}")), "{text}");
    }
    assert_eq!(sim.stats().total_requests, 0, "no request got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_is_refused_without_pin_or_ca() {
    let (sim, _) = https_sim(Dialect::Generic).await;
    let e = browse(&settings(sim.https_base_url(), Dialect::Generic))
        .await
        .unwrap_err();
    assert!(matches!(e, StationError::Unreachable(_)), "{e:?}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert_eq!(sim.stats().total_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_invalid_certs_accepts_it() {
    let (sim, _) = https_sim(Dialect::Generic).await;
    let mut s = settings(sim.https_base_url(), Dialect::Generic);
    s.wincc.accept_invalid_certs = true;
    assert_eq!(browse(&s).await.unwrap(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wincc_v7_over_https_with_a_pinned_certificate() {
    let (sim, der) = https_sim(Dialect::WinccV7).await;
    let mut s = settings(
        format!("{}/WinCCRestService", sim.https_base_url()),
        Dialect::WinccV7,
    );
    s.wincc.pinned_cert_sha256 = fingerprint(&der);
    let station = wincc::connect(&s).unwrap();
    let tags = station.list_tags().await.unwrap();
    let names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
    let readings = station.read_values(&arcs(&names)).await.unwrap();
    assert_eq!(readings.len(), 50);
    assert!(readings.iter().all(|r| r.error.is_none()));
}

#[test]
fn a_malformed_pin_is_a_located_setting_error() {
    let mut s = settings("https://127.0.0.1:1/".into(), Dialect::Generic);
    s.wincc.pinned_cert_sha256 = "12:34".into();
    let e = wincc::connect(&s).err().unwrap().to_string();
    assert!(e.starts_with("wincc.pinned_cert_sha256"), "{e}");
}

/// Tag names as the station clients take them.
fn arcs(names: &[String]) -> Vec<std::sync::Arc<str>> {
    names.iter().map(|n| n.as_str().into()).collect()
}
