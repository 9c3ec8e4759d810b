//! The demo as clients nobody here wrote see it: mqtt.js (MQTT 5, its
//! default) and node-opcua, run with Node.js from `tests/js` (installed by
//! `scripts/setup.sh`). A late `wincc/demo/#` subscriber must find every one
//! of the demo's 200 tags retained plus `status` and `station`, at QoS 0 and
//! 1, on MQTT 5 (mqtt.js) and MQTT 3.1.1 (rumqttc); node-opcua reads a live
//! ServerStatus with this build's BuildInfo and browses the tags.
#![cfg(feature = "demo")]

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TAGS: usize = 200;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/mqtt").is_dir()
            && dir.join("node_modules/node-opcua-client").is_dir(),
        "tests/js/node_modules is missing: run scripts/setup.sh (npm ci --prefix tests/js)"
    );
    dir
}

/// Runs `node SCRIPT ARGS` in tests/js and parses its one JSON line.
fn node(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("node")
        .current_dir(js_dir())
        .arg(script)
        .args(args)
        .output()
        .expect("node (Node.js) on PATH: run scripts/setup.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "{script}: no JSON line\nstdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

struct Demo {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo(mqtt: u16, opcua: u16, http: u16) -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wincc-gateway"))
        .args(["demo", "--mqtt-port", &mqtt.to_string()])
        .args([
            "--opcua-port",
            &opcua.to_string(),
            "--http-port",
            &http.to_string(),
        ])
        .args(["--tags", &TAGS.to_string(), "--pki-dir"])
        .arg(dir.path().join("pki"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the demo");
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 4096];
    while !banner.contains("Ctrl-C") {
        assert!(Instant::now() < deadline, "the demo did not start");
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "demo exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        banner.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    std::thread::spawn(move || while stdout.read(&mut buf).map(|n| n > 0).unwrap_or(false) {});
    Demo {
        child,
        log,
        _dir: dir,
    }
}

/// What a late subscriber found: tags, and whether status and station were there.
fn summary(topics: &[String]) -> (usize, bool, bool) {
    let tags = topics
        .iter()
        .filter(|t| t.starts_with("wincc/demo/tags/"))
        .count();
    let status = topics.iter().any(|t| t == "wincc/demo/status");
    let station = topics.iter().any(|t| t == "wincc/demo/station");
    (tags, status, station)
}

fn mqttjs_late(port: u16, qos: u8) -> (usize, bool, bool) {
    let v = node(
        "mqtt5_retained.js",
        &[
            &port.to_string(),
            "wincc/demo/#",
            &(TAGS + 2).to_string(),
            &qos.to_string(),
        ],
    );
    assert!(v["error"].is_null(), "mqtt.js: {v}");
    let topics: Vec<String> = v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    summary(&topics)
}

fn rumqttc_v4_late(port: u16, qos: rumqttc::QoS) -> (usize, bool, bool) {
    let mut opts = rumqttc::MqttOptions::new(format!("late-{qos:?}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = rumqttc::Client::new(opts, 100);
    client.subscribe("wincc/demo/#", qos).unwrap();
    let mut topics = std::collections::BTreeSet::new();
    // Retained alarms come too: once status, station and the tags could all
    // be there, collect what is still arriving for a short grace period.
    let mut deadline = Instant::now() + Duration::from_secs(20);
    let mut grace = false;
    while Instant::now() < deadline {
        match conn.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) if p.retain => {
                topics.insert(p.topic);
                if !grace && topics.len() >= TAGS + 2 {
                    grace = true;
                    deadline = Instant::now() + Duration::from_millis(500);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("rumqttc: {e}"),
            Err(_) if grace => break,
            Err(_) => {}
        }
    }
    let _ = client.disconnect();
    summary(&topics.into_iter().collect::<Vec<_>>())
}

#[test]
fn mqttjs_and_node_opcua_see_the_whole_demo() {
    let (mqtt, opcua, http) = (free_port(), free_port(), free_port());
    let demo = start_demo(mqtt, opcua, http);

    // Once the gateway has published every tag, every late subscriber gets
    // all of them; wait for the first complete view (the first poll cycle).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = mqttjs_late(mqtt, 1);
        if got == (TAGS, true, true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mqtt.js (MQTT 5, QoS 1) never saw all {TAGS} tags, status and station: {got:?}\n{}",
            std::fs::read_to_string(&demo.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Then, every time, on both protocols and both QoS levels.
    for round in 0..2 {
        assert_eq!(
            mqttjs_late(mqtt, 0),
            (TAGS, true, true),
            "mqtt.js QoS 0, round {round}"
        );
        assert_eq!(
            mqttjs_late(mqtt, 1),
            (TAGS, true, true),
            "mqtt.js QoS 1, round {round}"
        );
        assert_eq!(
            rumqttc_v4_late(mqtt, rumqttc::QoS::AtMostOnce),
            (TAGS, true, true),
            "MQTT 3.1.1 QoS 0, round {round}"
        );
        assert_eq!(
            rumqttc_v4_late(mqtt, rumqttc::QoS::AtLeastOnce),
            (TAGS, true, true),
            "MQTT 3.1.1 QoS 1, round {round}"
        );
    }

    // node-opcua: a live ServerStatus with this build's BuildInfo, the tags.
    let endpoint = format!("opc.tcp://127.0.0.1:{opcua}/");
    let first = node(
        "opcua_read.js",
        &[&endpoint, "urn:wincc-gateway:demo", "Line1/Mixer/Speed"],
    );
    assert!(first["error"].is_null(), "node-opcua: {first}");
    assert_eq!(first["status"], "Good", "{first}");
    assert_eq!(first["state"], 0, "Running: {first}");
    assert_eq!(
        first["softwareVersion"],
        env!("CARGO_PKG_VERSION"),
        "{first}"
    );
    assert_eq!(first["productName"], "WinCC Gateway", "{first}");
    assert!(first["buildDate"].as_str().unwrap() > "2024", "{first}");
    assert!(
        first["winccChildren"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "Line1"),
        "{first}"
    );
    assert_eq!(first["tagStatus"], "Good", "{first}");
    assert!(first["tagValue"].is_number(), "{first}");
    std::thread::sleep(Duration::from_millis(1500));
    let second = node(
        "opcua_read.js",
        &[&endpoint, "urn:wincc-gateway:demo", "Line1/Mixer/Speed"],
    );
    assert!(
        second["currentTime"].as_str() > first["currentTime"].as_str(),
        "CurrentTime does not move: {first} then {second}"
    );
}
