//! The soak rig: the gateway run as a user runs it, under a plant's faults.
//!
//! Three real processes and two real clients: `wincc-gateway simulate` as the
//! station (session auth, its `/_sim/faults` switches), a persistent
//! mosquitto, and `wincc-gateway run -c FILE`; an MQTT subscriber that records
//! every tag message, and an OPC UA client subscribed to a few hundred tags.
//! Every fault cycle (a minute by default) brings a station outage (8 s),
//! 10 s of HTTP 500 on 30 % of requests, expired sessions and a broker
//! restart (3 s down). It samples the gateway's RSS and CPU from /proc,
//! counts values that went backwards at the subscriber (a source timestamp
//! older than the one before it), and at the end compares every settled
//! station value (unchanged for `settle`) with the last one delivered.
//!
//! It also times start to first publish (and to every tag's first value),
//! SIGTERM to exit, and with `latency` when each change of the OPC UA
//! client's tags reaches the MQTT subscriber and the OPC UA client, matched
//! by tag and source timestamp.
//!
//! Shared by the smoke test in the suite (`soak_smoke`, two minutes, asserts
//! only loss, order and a clean exit) and `benches/soak.rs` (the hour-long
//! runs, figures in BENCHMARKS.md): timing and memory are never asserted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

use super::mosquitto::{free_port, Mosquitto, MosquittoOptions};

const PASSWORD: &str = "soak-Secret-1";
const PREFIX: &str = "soak";

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The `wincc-gateway` binary (debug in the suite, release in the bench).
    pub bin: PathBuf,
    pub tags: usize,
    /// Fraction of tags changing per second at the station.
    pub change_rate: f64,
    pub interval_ms: u64,
    pub duration: Duration,
    /// Faults every `cycle`; `false` is the baseline.
    pub faults: bool,
    pub cycle: Duration,
    /// The OPC UA server on or off, and how many tags its client subscribes
    /// to (0: no client).
    pub opcua: bool,
    pub opcua_items: usize,
    /// MQTT QoS and retain of tag messages.
    pub qos: u8,
    pub retain: bool,
    /// A settled value is one the station has not changed for this long.
    pub settle: Duration,
    /// Print a line per sample (the bench) or stay quiet (the test).
    pub print: bool,
    /// How often RSS and CPU are sampled.
    pub sample_every: Duration,
    /// The publishing interval the OPC UA client asks for.
    pub opcua_publish_ms: u64,
    /// `opcua.min_publishing_interval_ms` in the gateway's config (`None`:
    /// the key is left out, so older binaries still start).
    pub opcua_min_publish_ms: Option<u64>,
    /// Record when each change of the OPC UA client's tags reaches the MQTT
    /// subscriber and the OPC UA client (the side-by-side latency).
    pub latency: bool,
}

impl SoakOptions {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        SoakOptions {
            bin: bin.into(),
            tags: 20_000,
            change_rate: 0.1,
            interval_ms: 1000,
            duration: Duration::from_secs(3600),
            faults: true,
            cycle: Duration::from_secs(60),
            opcua: true,
            opcua_items: 300,
            qos: 1,
            retain: true,
            settle: Duration::from_secs(10),
            print: true,
            sample_every: Duration::from_secs(60),
            opcua_publish_ms: 100,
            opcua_min_publish_ms: None,
            latency: false,
        }
    }
}

/// One sample of the gateway process.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_s: u64,
    pub rss_kib: u64,
    pub cpu_s: f64,
    pub messages: u64,
}

/// What the run saw.
#[derive(Debug, Default)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    /// Tag messages received by the subscriber.
    pub messages: u64,
    /// Messages whose source timestamp was older than the tag's previous one.
    pub backwards: Vec<String>,
    /// Settled station values compared with the subscriber's last message.
    pub settled_checked: usize,
    /// Settled values the subscriber never got (tag: station vs seen).
    pub lost: Vec<String>,
    pub opcua_changes: u64,
    /// The gateway's CPU seconds over the whole run.
    pub cpu_s: f64,
    /// Exit status after SIGTERM and whether the log shows a panic.
    pub clean_exit: bool,
    pub panicked: bool,
    pub log_tail: String,
    /// From starting the gateway to the subscriber's first tag message, and
    /// to the first message of every tag (the first full cycle).
    pub first_message: Option<Duration>,
    pub all_tags: Option<Duration>,
    /// From SIGTERM to the process's exit.
    pub exit_after: Option<Duration>,
    /// Per change seen on both sides: OPC UA arrival minus MQTT arrival,
    /// in ms (negative: OPC UA was first).
    pub opcua_minus_mqtt: Vec<f64>,
    /// How many of them OPC UA saw first.
    pub opcua_first: usize,
}

impl SoakReport {
    /// RSS growth from the first sample at or after `from_s` to the last.
    pub fn rss_growth_pct(&self, from_s: u64) -> Option<f64> {
        let first = self.samples.iter().find(|s| s.at_s >= from_s)?;
        let last = self.samples.last()?;
        Some((last.rss_kib as f64 / first.rss_kib as f64 - 1.0) * 100.0)
    }

    /// CPU cores used between the first sample at or after `from_s` and the
    /// last sample.
    pub fn cores_from(&self, from_s: u64) -> Option<f64> {
        let first = self.samples.iter().find(|s| s.at_s >= from_s)?;
        let last = self.samples.last()?;
        let wall = last.at_s.checked_sub(first.at_s).filter(|w| *w > 0)? as f64;
        Some((last.cpu_s - first.cpu_s) / wall)
    }

    /// The highest RSS sampled, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0
    }

    /// The `q` quantile (0..=1) of `opcua_minus_mqtt`, in ms.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let mut v = self.opcua_minus_mqtt.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        Some(v[i])
    }

    /// CPU milliseconds per delivered tag message.
    pub fn cpu_ms_per_message(&self) -> f64 {
        self.cpu_s * 1000.0 / self.messages.max(1) as f64
    }
}

/// Last message of one tag at the subscriber.
#[derive(Debug, Clone)]
struct Seen {
    value: Value,
    ts: String,
}

#[derive(Default)]
struct Record {
    last: HashMap<String, Seen>,
    backwards: Vec<String>,
    first_message: Option<Instant>,
    all_tags: Option<Instant>,
    /// Topic key → index of the OPC UA client's tag (latency runs only).
    watched: HashMap<String, u32>,
    /// (tag index, source time in ms) → arrival, per side.
    mqtt_at: HashMap<(u32, i64), Instant>,
    opcua_at: HashMap<(u32, i64), Instant>,
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the whole scenario. Panics only on set-up failures.
pub async fn run(opts: SoakOptions) -> SoakReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        ..Default::default()
    });
    let sim_port = free_port();
    let sim_url = format!("http://127.0.0.1:{sim_port}");
    let _sim = start_simulator(&opts, sim_port, dir.path());
    wincc_gateway::crypto::install_default();
    let http = reqwest::Client::new();
    wait_http(&http, &format!("{sim_url}/_sim/stats")).await;

    let opcua_port = free_port();
    let cfg = write_config(&opts, dir.path(), &sim_url, broker.port, opcua_port);
    let log_path = dir.path().join("gateway.log");
    let started = Instant::now();
    let mut gateway = Proc(
        Command::new(&opts.bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("SOAK_WINCC_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("start the gateway"),
    );
    let pid = gateway.0.id();

    let names = station_names(&http, &sim_url, opts.opcua_items.max(1)).await;
    let mut record = Record::default();
    if opts.latency {
        record.watched = names
            .iter()
            .enumerate()
            .map(|(i, n)| (wincc_gateway::topic::encode(n), i as u32))
            .collect();
    }
    let record = Arc::new(Mutex::new(record));
    let messages = Arc::new(AtomicU64::new(0));
    let subscriber = subscribe(
        broker.port,
        opts.tags,
        Arc::clone(&record),
        Arc::clone(&messages),
    );
    let opcua_changes = Arc::new(AtomicU64::new(0));
    let opcua = if opts.opcua && opts.opcua_items > 0 {
        let seen = OpcuaSeen {
            changes: Arc::clone(&opcua_changes),
            record: opts.latency.then(|| Arc::clone(&record)),
        };
        Some(opcua_client(opcua_port, &names, dir.path(), opts.opcua_publish_ms, seen).await)
    } else {
        None
    };

    let mut report = SoakReport::default();
    let ticks = clock_ticks();
    let start = Instant::now();
    let mut next_sample = opts.sample_every;
    let mut second = 0u64;
    while start.elapsed() < opts.duration {
        tokio::time::sleep_until((start + Duration::from_secs(second + 1)).into()).await;
        second += 1;
        if opts.faults {
            fault_step(
                &http,
                &sim_url,
                &mut broker,
                second % opts.cycle.as_secs().max(60),
            )
            .await;
        }
        if start.elapsed() >= next_sample {
            next_sample += opts.sample_every;
            let s = sample(pid, ticks, start, &messages);
            if opts.print {
                let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
                let load: Vec<&str> = load.split_whitespace().take(3).collect();
                println!(
                    "soak: t={:>5}s rss={:>7.1} MiB cpu={:>8.2} s messages={} opcua={} load {}",
                    s.at_s,
                    s.rss_kib as f64 / 1024.0,
                    s.cpu_s,
                    s.messages,
                    opcua_changes.load(Ordering::Relaxed),
                    load.join(" ")
                );
            }
            report.samples.push(s);
        }
    }
    // Faults off, then let every group recover and deliver.
    let _ = post(&http, &format!("{sim_url}/_sim/faults/reset"), json!({})).await;
    if !broker.is_running() {
        broker.restart();
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    report.samples.push(sample(pid, ticks, start, &messages));
    compare_settled(&http, &sim_url, &opts, &record, &mut report).await;

    report.messages = messages.load(Ordering::Relaxed);
    report.opcua_changes = opcua_changes.load(Ordering::Relaxed);
    {
        let mut r = record.lock().unwrap();
        report.backwards = std::mem::take(&mut r.backwards);
        report.first_message = r.first_message.map(|t| t - started);
        report.all_tags = r.all_tags.map(|t| t - started);
        for (key, opcua_at) in &r.opcua_at {
            if let Some(mqtt_at) = r.mqtt_at.get(key) {
                let ms = if opcua_at >= mqtt_at {
                    (*opcua_at - *mqtt_at).as_secs_f64() * 1000.0
                } else {
                    report.opcua_first += 1;
                    -((*mqtt_at - *opcua_at).as_secs_f64() * 1000.0)
                };
                report.opcua_minus_mqtt.push(ms);
            }
        }
    }
    report.cpu_s = cpu_seconds(pid, ticks).unwrap_or(0.0);
    if let Some(opcua) = opcua {
        opcua.close().await;
    }
    subscriber.abort();
    let (clean, exit_after) = terminate(&mut gateway.0);
    report.clean_exit = clean;
    report.exit_after = exit_after;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    report.panicked = log.contains("panicked");
    report.log_tail = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
    report
}

fn start_simulator(opts: &SoakOptions, port: u16, dir: &Path) -> Proc {
    Proc(
        Command::new(&opts.bin)
            .arg("simulate")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--tags", &opts.tags.to_string()])
            .args(["--change-rate", &opts.change_rate.to_string()])
            .args(["--auth", "session"])
            .args(["--user", &format!("gateway:{PASSWORD}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sim.log")).expect("sim log"))
            .spawn()
            .expect("start the simulator"),
    )
}

fn write_config(
    opts: &SoakOptions,
    dir: &Path,
    sim_url: &str,
    mqtt_port: u16,
    opcua_port: u16,
) -> PathBuf {
    // Requests one poll cycle needs per second (500 tags each), with room
    // for alarms and retries: 100/s for the fault runs' 20 000 tags, the
    // poll bench's 300/s (burst 20, 4 in flight) for 100 000 tags a second.
    let per_s = opts.tags.div_ceil(500) as u64 * 1000 / opts.interval_ms.max(1);
    let (rps, burst, in_flight) = if per_s * 3 / 2 <= 100 {
        (100, 10, 2)
    } else {
        (per_s * 3 / 2, 20, 4)
    };
    let toml = format!(
        r#"
[wincc]
base_url = "{sim_url}"
dialect = "generic"
auth = "session"
username = "gateway"
password_env = "SOAK_WINCC_PASSWORD"
timeout_ms = 3000
max_tags_per_request = 500
[wincc.rate_limit]
requests_per_second = {rps}
burst = {burst}
max_in_flight = {in_flight}
[[poll_group]]
name = "all"
interval_ms = {interval}
tags = ["**"]
heartbeat_s = 0
[alarms]
enabled = true
interval_ms = 2000
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "soak-gateway"
topic_prefix = "{PREFIX}"
qos = {qos}
retain = {retain}
[opcua]
enabled = {opcua}
endpoint = "opc.tcp://127.0.0.1:{opcua_port}/"
namespace_uri = "urn:wincc-gateway:soak"
security_policies = ["None"]
allow_anonymous = true
pki_dir = {pki:?}
{min_publish}
[http]
enabled = false
"#,
        interval = opts.interval_ms,
        rps = rps,
        burst = burst,
        in_flight = in_flight,
        min_publish = opts
            .opcua_min_publish_ms
            .map(|ms| format!("min_publishing_interval_ms = {ms}"))
            .unwrap_or_default(),
        qos = opts.qos,
        retain = opts.retain,
        opcua = opts.opcua,
        pki = dir.join("pki"),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// One second of the fault cycle (`t` seconds into it).
async fn fault_step(http: &reqwest::Client, sim: &str, broker: &mut Mosquitto, t: u64) {
    let faults = format!("{sim}/_sim/faults");
    match t {
        5 => {
            let _ = post(http, &faults, json!({"outage_s": 8.0})).await;
        }
        20 => {
            let _ = post(http, &faults, json!({"error_rate": 0.3})).await;
        }
        30 => {
            let _ = post(http, &format!("{faults}/reset"), json!({})).await;
        }
        35 => {
            let _ = post(http, &faults, json!({"expire_tokens": true})).await;
        }
        // SIGTERM: a persistent broker keeps its sessions and retained messages.
        45 => broker.stop(),
        48 => broker.restart(),
        _ => {}
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Option<Value> {
    let resp = http.post(url).json(&body).send().await.ok()?;
    resp.json().await.ok()
}

async fn wait_http(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "{url} did not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subscribe(
    port: u16,
    tags: usize,
    record: Arc<Mutex<Record>>,
    messages: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let mut o = MqttOptions::new("soak-subscriber", "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 10_000);
    let topic_prefix = format!("{PREFIX}/tags/");
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe(format!("{topic_prefix}#"), QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Some(key) = p.topic.strip_prefix(&topic_prefix) else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    let now = Instant::now();
                    messages.fetch_add(1, Ordering::Relaxed);
                    let ts = v["timestamp"].as_str().unwrap_or_default().to_string();
                    let mut r = record.lock().unwrap();
                    r.first_message.get_or_insert(now);
                    if let Some(&i) = r.watched.get(key) {
                        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&ts) {
                            r.mqtt_at.entry((i, t.timestamp_millis())).or_insert(now);
                        }
                    }
                    if r.all_tags.is_none() && !r.last.contains_key(key) && r.last.len() + 1 == tags
                    {
                        r.all_tags = Some(now);
                    }
                    if let Some(prev) = r.last.get(key) {
                        // RFC 3339 UTC with milliseconds: text order is time order.
                        if ts < prev.ts {
                            let line = format!("{key}: {} after {}", ts, prev.ts);
                            r.backwards.push(line);
                        }
                    }
                    let seen = Seen {
                        value: v["value"].clone(),
                        ts,
                    };
                    r.last.insert(key.to_string(), seen);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

async fn login(http: &reqwest::Client, sim: &str) -> String {
    let body = json!({"username": "gateway", "password": PASSWORD});
    let v = post(http, &format!("{sim}/auth/login"), body)
        .await
        .expect("login at the simulator");
    v["token"].as_str().expect("token").to_string()
}

/// The station's tag names (the first `n`).
async fn station_names(http: &reqwest::Client, sim: &str, n: usize) -> Vec<String> {
    let token = login(http, sim).await;
    let v: Value = http
        .get(format!("{sim}/tags?offset=0&limit={n}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /tags")
        .json()
        .await
        .expect("tags JSON");
    v["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .take(n)
        .collect()
}

/// Every station value with its source timestamp, read over REST.
async fn station_values(http: &reqwest::Client, sim: &str, tags: usize) -> Vec<(String, Seen)> {
    let token = login(http, sim).await;
    let names = station_names(http, sim, tags).await;
    let mut out = Vec::with_capacity(names.len());
    for chunk in names.chunks(1000) {
        let v: Value = http
            .post(format!("{sim}/tags/values"))
            .bearer_auth(&token)
            .json(&json!({ "tags": chunk }))
            .send()
            .await
            .expect("POST /tags/values")
            .json()
            .await
            .expect("values JSON");
        for row in v["values"].as_array().into_iter().flatten() {
            let (Some(name), Some(ts)) = (row["name"].as_str(), row["timestamp"].as_str()) else {
                continue;
            };
            let seen = Seen {
                value: row["value"].clone(),
                ts: ts.to_string(),
            };
            out.push((name.to_string(), seen));
        }
    }
    out
}

async fn compare_settled(
    http: &reqwest::Client,
    sim: &str,
    opts: &SoakOptions,
    record: &Mutex<Record>,
    report: &mut SoakReport,
) {
    let values = station_values(http, sim, opts.tags).await;
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(opts.settle).expect("settle");
    let r = record.lock().unwrap();
    for (name, station) in values {
        let Ok(ts) = chrono::DateTime::parse_from_rfc3339(&station.ts) else {
            continue;
        };
        if ts > cutoff {
            continue; // still moving: not settled
        }
        report.settled_checked += 1;
        let key = wincc_gateway::topic::encode(&name);
        // Values only: the station may restamp a value it did not change,
        // and an unchanged value is no change to publish (heartbeat off).
        let same = r
            .last
            .get(&key)
            .is_some_and(|seen| same_value(&seen.value, &station.value));
        if !same {
            let seen = r.last.get(&key).map(|s| format!("{} @ {}", s.value, s.ts));
            report.lost.push(format!(
                "{name}: station {} @ {}, subscriber {}",
                station.value,
                station.ts,
                seen.unwrap_or_else(|| "nothing".into())
            ));
        }
    }
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

/// The OPC UA client of the rig: anonymous over None, one subscription of
/// `names` (sampling 0, 100 ms publishing), counting data changes. Self-
/// contained (the async-opcua client directly), so the bench can use it.
struct OpcuaClient {
    session: Arc<opcua::client::Session>,
    event_loop: tokio::task::JoinHandle<opcua::types::StatusCode>,
}

impl OpcuaClient {
    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.disconnect()).await;
        self.event_loop.abort();
    }
}

/// What the OPC UA client records: a count, and with `record` each
/// change's arrival (latency runs).
struct OpcuaSeen {
    changes: Arc<AtomicU64>,
    record: Option<Arc<Mutex<Record>>>,
}

async fn opcua_client(
    port: u16,
    names: &[String],
    dir: &Path,
    publish_ms: u64,
    seen: OpcuaSeen,
) -> OpcuaClient {
    use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken};
    use opcua::crypto::SecurityPolicy;
    use opcua::types::{
        MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters,
        NodeId, TimestampsToReturn,
    };
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The server comes up once the gateway has its tag list.
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "OPC UA server did not listen");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = ClientBuilder::new()
        .application_name("wincc-gateway soak client")
        .application_uri("urn:wincc-gateway:soak-client")
        .product_uri("urn:wincc-gateway:soak-client")
        .create_sample_keypair(true)
        .trust_server_certs(true)
        .pki_dir(dir.join("client-pki"))
        .session_retry_limit(0)
        .max_array_length(200_000)
        .max_message_size(64 * 1024 * 1024)
        .max_chunk_count(2048)
        .request_timeout(Duration::from_secs(20))
        .client()
        .expect("OPC UA client config");
    let (session, event_loop) = client
        .connect_to_matching_endpoint(
            (
                url.as_str(),
                SecurityPolicy::None.to_str(),
                MessageSecurityMode::None,
            ),
            IdentityToken::Anonymous,
        )
        .await
        .expect("OPC UA session");
    let event_loop = event_loop.spawn();
    tokio::time::timeout(Duration::from_secs(20), session.wait_for_connection())
        .await
        .expect("OPC UA session within 20 s");
    let ns = session
        .get_namespace_index("urn:wincc-gateway:soak")
        .await
        .expect("namespace");
    let OpcuaSeen { changes, record } = seen;
    let sub = session
        .create_subscription(
            Duration::from_millis(publish_ms),
            300,
            20,
            0,
            0,
            true,
            DataChangeCallback::new(move |dv, item| {
                let now = Instant::now();
                changes.fetch_add(1, Ordering::Relaxed);
                let (Some(record), Some(ts)) = (&record, dv.source_timestamp) else {
                    return;
                };
                let key = (item.client_handle() - 1, ts.as_chrono().timestamp_millis());
                record.lock().unwrap().opcua_at.entry(key).or_insert(now);
            }),
        )
        .await
        .expect("create_subscription");
    let items: Vec<MonitoredItemCreateRequest> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            MonitoredItemCreateRequest::new(
                NodeId::new(ns, n.clone()).into(),
                MonitoringMode::Reporting,
                MonitoringParameters {
                    client_handle: i as u32 + 1,
                    sampling_interval: 0.0,
                    queue_size: 10,
                    discard_oldest: true,
                    ..Default::default()
                },
            )
        })
        .collect();
    session
        .create_monitored_items(sub, TimestampsToReturn::Both, items)
        .await
        .expect("create_monitored_items");
    OpcuaClient {
        session,
        event_loop,
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn sample(pid: u32, ticks: f64, start: Instant, messages: &AtomicU64) -> Sample {
    Sample {
        at_s: start.elapsed().as_secs(),
        rss_kib: rss_kib(pid).unwrap_or(0),
        cpu_s: cpu_seconds(pid, ticks).unwrap_or(0.0),
        messages: messages.load(Ordering::Relaxed),
    }
}

/// SIGTERM, then wait up to 10 s: `true` for exit code 0, and how long
/// the exit took.
fn terminate(child: &mut Child) -> (bool, Option<Duration>) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return (status.success(), Some(start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (false, None)
}
