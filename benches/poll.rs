//! Polling benchmark: `cargo bench --bench poll`.
//!
//! A simulator with 100 000 tags, 10 % of them changing per second; one
//! poll group polls all of them every second in batches of 500 under a rate
//! limit that allows it. After a warm-up (discovery and the first full
//! cycle) it measures, for `POLL_BENCH_SECS` (default 20) seconds, the
//! gateway's CPU time and resident memory, poll cycles run and skipped,
//! requests per cycle, changes per second and cycle durations.
//!
//! The simulator runs in a CHILD PROCESS (this same executable re-run with
//! `POLL_BENCH_SIM=1`), so the parent's CPU time (`/proc/self/stat`, all
//! threads) and RSS (`/proc/self/status`) are the gateway's alone: HTTP
//! client, JSON parsing, change detection and the bus. The child's CPU is
//! reported separately for context. Both share the machine's cores.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wincc_gateway::bus::{Bus, Event};
use wincc_gateway::config::{
    AlarmSettings, PollGroup, PollMode, RateLimit, Settings, WinccSettings,
};
use wincc_gateway::poll::Poller;
use wincc_gateway::sim::{self, SimOptions, SimStats};
use wincc_gateway::writes::TagMap;

const TAGS: usize = 100_000;
const CHANGE_RATE: f64 = 0.1;
const BATCH: usize = 500;
const INTERVAL_MS: u64 = 1000;

fn main() {
    if std::env::var_os("POLL_BENCH_SIM").is_some() {
        run_simulator();
    } else {
        run_gateway();
    }
}

/// Child: serve the simulator until stdin closes.
fn run_simulator() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = sim::start(
            "127.0.0.1:0".parse().unwrap(),
            SimOptions {
                tags: TAGS,
                change_rate: CHANGE_RATE,
                alarms: false,
                max_body_bytes: 16 * 1024 * 1024,
                ..SimOptions::default()
            },
        )
        .await
        .expect("the simulator starts");
        println!("BASE_URL {}", sim.base_url());
        std::io::stdout().flush().unwrap();
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .unwrap();
        sim.shutdown().await;
    });
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str, tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / tck
}

/// VmRSS and VmHWM of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// A metric's value from the Prometheus text (first line starting with `prefix`).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn sim_stats(http: &reqwest::Client, base: &str) -> SimStats {
    http.get(format!("{base}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn run_gateway() {
    let secs: u64 = std::env::var("POLL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("POLL_BENCH_SIM", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the simulator child starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .strip_prefix("BASE_URL ")
        .expect("the child prints its address")
        .trim()
        .to_string();
    let child_pid = child.id().to_string();
    let prom = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let tck = clk_tck();

    let settings = Settings {
        wincc: WinccSettings {
            base_url: base.clone(),
            timeout_ms: 5000,
            max_tags_per_request: BATCH,
            rate_limit: RateLimit {
                requests_per_second: 300,
                burst: 20,
                max_in_flight: 4,
            },
            ..WinccSettings::default()
        },
        poll_groups: vec![PollGroup {
            name: "all".into(),
            interval_ms: INTERVAL_MS,
            tags: vec!["**".into()],
            deadband_abs: 0.0,
            deadband_pct: 0.0,
            heartbeat_s: 0,
            mode: PollMode::Poll,
        }],
        alarms: AlarmSettings {
            enabled: false,
            ..AlarmSettings::default()
        },
        mqtt: Default::default(),
        opcua: Default::default(),
        sparkplug: Default::default(),
        http: Default::default(),
        log: Default::default(),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let station = wincc_gateway::wincc::connect(&settings).unwrap();
        let bus = Bus::new();
        let mut sub = bus.subscribe("bench", 100_000);
        let (tx, _rx) = watch::channel(Arc::new(TagMap::new()));
        let cancel = CancellationToken::new();
        let poller = tokio::spawn(Poller::new(&settings, station, bus, tx).run(cancel.clone()));

        let changes = Arc::new(AtomicU64::new(0));
        let lag_max_us = Arc::new(AtomicU64::new(0));
        let warm = Arc::new(tokio::sync::Notify::new());
        {
            let (changes, lag_max_us, warm) = (changes.clone(), lag_max_us.clone(), warm.clone());
            tokio::spawn(async move {
                let mut first_cycle = 0usize;
                let mut warmed = false;
                while let Some(e) = sub.recv().await {
                    if let Event::Changes(b) = e {
                        changes.fetch_add(b.changes.len() as u64, Ordering::Relaxed);
                        lag_max_us.fetch_max(b.received_at.elapsed().as_micros() as u64, Ordering::Relaxed);
                        if !warmed {
                            first_cycle += b.changes.len();
                            if first_cycle >= TAGS {
                                warmed = true;
                                warm.notify_one();
                            }
                        }
                    }
                }
            });
        }
        let t_start = Instant::now();
        tokio::time::timeout(Duration::from_secs(120), warm.notified())
            .await
            .expect("discovery and the first full cycle within 120 s");
        let warmup = t_start.elapsed();
        // Let the first cycle's tail settle, then measure.
        tokio::time::sleep(Duration::from_millis(500)).await;

        wincc_gateway::crypto::install_default();
        let http = reqwest::Client::new();
        let s0 = sim_stats(&http, &base).await;
        let p0 = prom.render();
        let (cpu0, child0) = (cpu_seconds("self", tck), cpu_seconds(&child_pid, tck));
        let c0 = changes.load(Ordering::Relaxed);
        lag_max_us.store(0, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut rss_peak: f64 = 0.0;
        // RSS at the end of each minute, to see whether memory settles (soak runs).
        let mut rss_by_minute: Vec<f64> = Vec::new();
        while t0.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let rss = memory_mib().0;
            rss_peak = rss_peak.max(rss);
            if t0.elapsed() >= Duration::from_secs(60 * (rss_by_minute.len() as u64 + 1)) {
                rss_by_minute.push(rss);
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, child1) = (cpu_seconds("self", tck), cpu_seconds(&child_pid, tck));
        let c1 = changes.load(Ordering::Relaxed);
        let s1 = sim_stats(&http, &base).await;
        let p1 = prom.render();
        cancel.cancel();
        poller.await.unwrap();

        let polls = metric(&p1, "wincc_gateway_polls_total{group=\"all\"}")
            - metric(&p0, "wincc_gateway_polls_total{group=\"all\"}");
        let skipped = metric(&p1, "wincc_gateway_poll_cycles_skipped_total{group=\"all\"}")
            - metric(&p0, "wincc_gateway_poll_cycles_skipped_total{group=\"all\"}");
        let reads = s1.requests.get("POST /tags/values").copied().unwrap_or(0)
            - s0.requests.get("POST /tags/values").copied().unwrap_or(0);
        let (rss, hwm) = memory_mib();
        let q = |k: &str| metric(&p1, &format!("wincc_gateway_poll_cycle_seconds{{group=\"all\",quantile=\"{k}\"}}"));
        println!("polling benchmark: {TAGS} tags, {:.0} % changing per second, 1 group every {INTERVAL_MS} ms, {BATCH} tags per request", CHANGE_RATE * 100.0);
        println!("warm-up (discovery + first full cycle): {:.2} s", warmup.as_secs_f64());
        println!("measured for {wall:.1} s:");
        println!("  gateway CPU          {:.2} s = {:.1} % of one core", cpu1 - cpu0, (cpu1 - cpu0) / wall * 100.0);
        println!("  simulator CPU        {:.2} s = {:.1} % of one core (child process, for context)", child1 - child0, (child1 - child0) / wall * 100.0);
        println!("  gateway RSS          {rss:.1} MiB now, {rss_peak:.1} MiB peak while measuring, {hwm:.1} MiB high-water mark");
        println!("  poll cycles          {polls:.0} run, {skipped:.0} skipped (expected about {:.0})", wall * 1000.0 / INTERVAL_MS as f64);
        println!("  requests per cycle   {:.1} (expected {})", reads as f64 / polls.max(1.0), TAGS.div_ceil(BATCH));
        println!("  station max req/s    {} (limit 300 + burst 20), max in flight {} (limit 4)", s1.max_requests_per_second, s1.max_in_flight);
        println!("  changes published    {:.0} per second (simulator changes about {:.0} per second)", (c1 - c0) as f64 / wall, TAGS as f64 * CHANGE_RATE);
        println!("  cycle duration       p50 {:.3} s, p99 {:.3} s, max {:.3} s", q("0.5"), q("0.99"), q("1"));
        println!("  bus lag (max)        {:.1} ms from response to subscriber", lag_max_us.load(Ordering::Relaxed) as f64 / 1000.0);
        if !rss_by_minute.is_empty() {
            let list: Vec<String> = rss_by_minute.iter().map(|r| format!("{r:.0}")).collect();
            println!("  RSS each minute      {} MiB", list.join(", "));
        }
    });
    drop(child.stdin.take());
    let _ = child.wait();
}
