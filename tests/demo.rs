//! `wincc-gateway demo` as a user runs it: the built binary with its embedded
//! broker, simulator and OPC UA server; a separate MQTT client watches.
#![cfg(feature = "demo")]

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Demo {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn demo_publishes_values_alarms_and_status_and_stops_cleanly() {
    let (mqtt, opcua, http) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let child = Command::new(env!("CARGO_BIN_EXE_wincc-gateway"))
        .args([
            "demo",
            "--mqtt-port",
            &mqtt.to_string(),
            "--opcua-port",
            &opcua.to_string(),
            "--http-port",
            &http.to_string(),
            "--tags",
            "100",
            "--change-rate",
            "0.5",
            "--pki-dir",
        ])
        .arg(dir.path().join("pki"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the demo");
    let mut demo = Demo { child, log };

    // The demo prints how to watch it.
    let mut stdout = demo.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = tx.send(text.clone());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let banner = loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(t) if t.contains("Ctrl-C") => break t,
            _ if Instant::now() > deadline => panic!(
                "demo did not start; log:\n{}",
                std::fs::read_to_string(&demo.log).unwrap_or_default()
            ),
            _ => {}
        }
    };
    assert!(
        banner.contains(&format!(
            "mosquitto_sub -h 127.0.0.1 -p {mqtt} -t 'wincc/#' -v"
        )),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("opc.tcp://127.0.0.1:{opcua}/")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("http://127.0.0.1:{http}/metrics")),
        "{banner}"
    );

    // Watch it like a user would.
    let mut opts = MqttOptions::new("demo-test-watcher", "127.0.0.1", mqtt);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(opts, 100);
    client.subscribe("wincc/demo/#", QoS::AtLeastOnce).unwrap();
    let mut seen: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for ev in conn.iter() {
        if let Ok(Event::Incoming(Packet::Publish(p))) = ev {
            seen.insert(
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).to_string(),
            );
        }
        let tags = seen
            .keys()
            .filter(|t| t.starts_with("wincc/demo/tags/"))
            .count();
        let alarms = seen.keys().any(|t| t.starts_with("wincc/demo/alarms/"));
        if tags >= 50
            && alarms
            && seen.contains_key("wincc/demo/status")
            && seen.contains_key("wincc/demo/station")
        {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(
        seen.get("wincc/demo/status").map(String::as_str),
        Some("online"),
        "{:?}",
        seen.keys()
    );
    let station = seen.get("wincc/demo/station").unwrap_or_else(|| {
        panic!(
            "no station topic; seen {:?}\nlog:\n{}",
            seen.keys(),
            std::fs::read_to_string(&demo.log).unwrap_or_default()
        )
    });
    assert!(station.contains("\"connected\""), "{station}");
    let tag_topics: Vec<_> = seen
        .keys()
        .filter(|t| t.starts_with("wincc/demo/tags/"))
        .collect();
    assert!(
        tag_topics.len() >= 50,
        "only {} tag topics",
        tag_topics.len()
    );
    let payload: serde_json::Value = serde_json::from_str(&seen[tag_topics[0]]).unwrap();
    assert!(
        payload.get("value").is_some() && payload.get("timestamp").is_some(),
        "{payload}"
    );
    assert!(
        seen.keys().any(|t| t.starts_with("wincc/demo/alarms/")),
        "no alarm topic in {:?}",
        seen.keys()
    );

    // Health and metrics.
    let (code, body) = http_get(http, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (code, body) = http_get(http, "/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains("wincc_gateway_station_requests_total"),
        "{body}"
    );

    // The station password never reaches the log.
    let secret_file = std::env::temp_dir()
        .join(format!("wincc-gateway-demo-{}", demo.child.id()))
        .join("station-password");
    let password = std::fs::read_to_string(&secret_file).expect("the demo's secret file");
    assert!(password.len() >= 16);

    // SIGTERM: clean stop within a few seconds, exit 0 (the embedded broker
    // goes with the process, so `offline` is checked in the MQTT tests).
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = demo.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop within 15 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&demo.log).unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        !log.contains(password.trim()),
        "the station password appears in the log"
    );
    assert!(
        !secret_file.exists(),
        "the demo left its secret file behind"
    );
}
