//! OPC UA sink benchmark: 100 000 variables, 10 000 changes/s, one client
//! monitoring 10 000 of them with a 250 ms publishing interval.
//!
//! `cargo bench --bench opcua` (release). Environment: `OPCUA_BENCH_SECONDS`
//! (measured seconds, default 30), `OPCUA_BENCH_WARMUP` (default 5).
//!
//! The server (sink, bus, a feeder publishing 10 batches of 1 000 changes a
//! second) runs in this process; the client runs in a child process (this
//! binary again), so the CPU and RSS figures are the server's own. Each
//! changed value is the wall-clock time (µs since the Unix epoch) at which
//! its batch was created, i.e. the batch's `received_at`; the client takes
//! latency = its receipt time − that value.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, ReadValueId, StatusCode, TimestampsToReturn, Variant,
};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::{Bus, Event};
use wincc_gateway::config::OpcuaSettings;
use wincc_gateway::model::{ChangeBatch, Quality, TagChange, TagInfo, TagType};
use wincc_gateway::sinks::opcua::OpcuaSink;

const TAGS: usize = 100_000;
const MONITORED: usize = 10_000;
const CHANGES_PER_S: usize = 10_000;
const BATCHES_PER_S: usize = 10;
const NS: &str = "urn:wincc-gateway:bench";

fn tag_name(i: usize) -> String {
    format!("Area{:02}/Line{}/Tag{:05}", i / 1000, (i / 100) % 10, i)
}

fn now_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as f64
}

fn env_u64(k: &str, default: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of this process, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/PID/stat; index 11 and 12 after the ")".
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if let Ok(url) = std::env::var("OPCUA_BENCH_CLIENT") {
        return client(&url);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(server());
}

async fn server() {
    let seconds = env_u64("OPCUA_BENCH_SECONDS", 30);
    let warmup = env_u64("OPCUA_BENCH_WARMUP", 5);
    let pki = tempfile::tempdir().unwrap();
    let settings = OpcuaSettings {
        endpoint: "opc.tcp://127.0.0.1:0/".into(),
        namespace_uri: NS.into(),
        security_policies: vec!["None".into()],
        pki_dir: pki.path().to_string_lossy().into_owned(),
        ..Default::default()
    };
    let sink = OpcuaSink::new(&settings, None).await.expect("sink");
    let status = sink.status();
    let bus = Bus::new();
    let sub = bus.subscribe("opcua", 256);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { sink.run(sub, token).await });
    let url = format!("opc.tcp://127.0.0.1:{}/", status.local_addr().port());

    let names: Vec<Arc<str>> = (0..TAGS).map(|i| Arc::from(tag_name(i))).collect();
    let rss_empty = status_kb("VmRSS:");
    let t = Instant::now();
    bus.publish(Event::Tags(Arc::new(
        names
            .iter()
            .map(|n| TagInfo {
                name: n.to_string(),
                ty: TagType::Double,
                writable: false,
            })
            .collect(),
    )));
    let change = |i: usize, v: f64| TagChange {
        name: names[i].clone(),
        ty: TagType::Double,
        value: serde_json::json!(v),
        quality: Quality::Good,
        quality_code: None,
        timestamp: chrono::Utc::now(),
        error: None,
    };
    for chunk in (0..TAGS).collect::<Vec<_>>().chunks(1000) {
        bus.publish(Event::Changes(Arc::new(ChangeBatch {
            group: Arc::from("bench"),
            changes: chunk.iter().map(|&i| change(i, 0.0)).collect(),
            received_at: Instant::now(),
        })));
    }

    // The client: a separate process.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("OPCUA_BENCH_CLIENT", &url)
        .env("OPCUA_BENCH_SECONDS", seconds.to_string())
        .env("OPCUA_BENCH_WARMUP", warmup.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::task::spawn_blocking(move || {
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        (first, lines)
    })
    .await
    .unwrap();
    let (ready_line, mut lines) = ready;
    assert!(
        ready_line.starts_with("READY"),
        "client said {ready_line:?}"
    );
    let load_s = t.elapsed().as_secs_f64();
    let rss_loaded = status_kb("VmRSS:");

    // Feeder: 10 batches of 1 000 random changes a second.
    let feed_stop = CancellationToken::new();
    let feeder = {
        let bus = bus.clone();
        let names = names.clone();
        let feed_stop = feed_stop.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(1000 / BATCHES_PER_S as u64));
            let mut sent = 0u64;
            loop {
                tokio::select! {
                    _ = feed_stop.cancelled() => return sent,
                    _ = tick.tick() => {}
                }
                let stamp = now_us();
                let received_at = Instant::now();
                let mut rng = rand::rng();
                let changes = (0..CHANGES_PER_S / BATCHES_PER_S)
                    .map(|_| {
                        let i = rng.random_range(0..TAGS);
                        TagChange {
                            name: names[i].clone(),
                            ty: TagType::Double,
                            value: serde_json::json!(stamp),
                            quality: Quality::Good,
                            quality_code: None,
                            timestamp: chrono::Utc::now(),
                            error: None,
                        }
                    })
                    .collect::<Vec<_>>();
                sent += changes.len() as u64;
                bus.publish(Event::Changes(Arc::new(ChangeBatch {
                    group: Arc::from("bench"),
                    changes,
                    received_at,
                })));
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, wall) = (cpu_seconds(), t0.elapsed().as_secs_f64());
    let rss_end = status_kb("VmRSS:");
    let rss_peak = status_kb("VmHWM:");
    let result =
        tokio::task::spawn_blocking(move || lines.next().and_then(|l| l.ok()).unwrap_or_default())
            .await
            .unwrap();
    feed_stop.cancel();
    let sent = feeder.await.unwrap();
    let _ = child.wait();
    stop.cancel();
    let _ = task.await;

    let cpu_pct = 100.0 * (cpu1 - cpu0) / wall;
    println!("OPC UA sink: {TAGS} variables, {CHANGES_PER_S} changes/s, 1 client monitoring {MONITORED} items @ 250 ms");
    println!("  address space + initial values + client connect/subscribe: {load_s:.1} s");
    println!(
        "  changes published: {sent} ({:.0}/s)",
        sent as f64 / (wall + warmup as f64)
    );
    println!("  server CPU: {cpu_pct:.1} % of one core (measured over {wall:.0} s)");
    println!(
        "  server RSS: {} MiB before tags, {} MiB loaded, {} MiB at end, peak {} MiB",
        rss_empty / 1024,
        rss_loaded / 1024,
        rss_end / 1024,
        rss_peak / 1024
    );
    println!("  client: {result}");
}

/// The client process: subscribe, then report latency percentiles as one line.
fn client(url: &str) {
    let seconds = env_u64("OPCUA_BENCH_SECONDS", 30);
    let warmup = env_u64("OPCUA_BENCH_WARMUP", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pki = tempfile::tempdir().unwrap();
        let mut client = ClientBuilder::new()
            .application_name("opcua bench client")
            .application_uri("urn:wincc-gateway:bench-client")
            .product_uri("urn:wincc-gateway:bench-client")
            .create_sample_keypair(false)
            .trust_server_certs(true)
            .pki_dir(pki.path())
            .session_retry_limit(0)
            .max_array_length(200_000)
            .max_message_size(64 * 1024 * 1024)
            .max_chunk_count(2048)
            .request_timeout(Duration::from_secs(60))
            .client()
            .unwrap();
        let (session, event_loop) = client
            .connect_to_matching_endpoint(
                (
                    url,
                    SecurityPolicy::None.to_str(),
                    MessageSecurityMode::None,
                ),
                IdentityToken::Anonymous,
            )
            .await
            .expect("connect");
        let _loop = event_loop.spawn();
        session.wait_for_connection().await;
        let ns = session.get_namespace_index(NS).await.unwrap();
        let ids: Vec<NodeId> = (0..MONITORED)
            .map(|k| NodeId::new(ns, tag_name(k * (TAGS / MONITORED))))
            .collect();
        // Wait until the whole address space and the initial values are in.
        let last = NodeId::new(ns, tag_name(TAGS - 1));
        loop {
            let dv = session
                .read(
                    &[ReadValueId::new(last.clone(), AttributeId::Value)],
                    TimestampsToReturn::Both,
                    0.0,
                )
                .await
                .unwrap()
                .remove(0);
            if dv.status() == StatusCode::Good {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let samples: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, m2) = (samples.clone(), measuring.clone());
        let sub = session
            .create_subscription(
                Duration::from_millis(250),
                120,
                20,
                0,
                0,
                true,
                DataChangeCallback::new(move |dv, _item| {
                    if !m2.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if let Some(Variant::Double(sent)) = dv.value {
                        if sent > 0.0 {
                            s2.lock().unwrap().push((now_us() - sent) / 1000.0);
                        }
                    }
                }),
            )
            .await
            .unwrap();
        let items: Vec<MonitoredItemCreateRequest> = ids
            .iter()
            .enumerate()
            .map(|(i, n)| {
                MonitoredItemCreateRequest::new(
                    n.clone().into(),
                    MonitoringMode::Reporting,
                    MonitoringParameters {
                        client_handle: i as u32 + 1,
                        sampling_interval: 250.0,
                        queue_size: 1,
                        discard_oldest: true,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let created = session
            .create_monitored_items(sub, TimestampsToReturn::Both, items)
            .await
            .unwrap();
        assert_eq!(created.len(), MONITORED);
        assert!(created.iter().all(|c| c.result.status_code.is_good()));
        println!("READY");
        std::io::stdout().flush().unwrap();
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        measuring.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        measuring.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut v = std::mem::take(&mut *samples.lock().unwrap());
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "{} notifications ({:.0}/s), latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            v.len(),
            v.len() as f64 / seconds as f64,
            pct(0.50),
            pct(0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
        std::io::stdout().flush().unwrap();
        let _ = session.disconnect().await;
    });
}
