//! Simulator benchmark: `cargo bench --bench sim`.
//!
//! 1. In process: CPU time of answering one `POST /tags/values` body of 500
//!    names (parse, look up, serialise), for stores of 1 000 and 100 000 tags.
//! 2. Over HTTP on loopback: the simulator alone on one thread (a
//!    current-thread runtime), reqwest clients on another; tags/s served and
//!    the server thread's CPU time per request.
//!
//! CPU times come from `/proc/thread-self/schedstat` (nanoseconds on CPU),
//! so other load on the machine does not inflate them.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wincc_gateway::sim::generic::read_values_json;
use wincc_gateway::sim::store::TagStore;
use wincc_gateway::sim::{self, SimOptions};

const BATCH: usize = 500;

/// CPU time of the calling thread.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn request_body(names: &[String], seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let pick: Vec<&str> = (0..BATCH)
        .map(|_| names[rng.random_range(0..names.len())].as_str())
        .collect();
    serde_json::to_vec(&serde_json::json!({ "tags": pick })).expect("body")
}

fn in_process(tags: usize) {
    let t = Instant::now();
    let store = TagStore::generate(tags, 1);
    let generated = t.elapsed();
    let names: Vec<String> = store.tags().iter().map(|t| t.info.name.clone()).collect();
    let body = request_body(&names, 2);
    let mut bytes = 0;
    for _ in 0..200 {
        bytes = read_values_json(&store, &body).expect("answer").0.len();
    }
    let iterations = 5000;
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    for _ in 0..iterations {
        let (out, n) = read_values_json(&store, std::hint::black_box(&body)).expect("answer");
        std::hint::black_box((out, n));
    }
    let wall = wall0.elapsed();
    let cpu = match (cpu0, thread_cpu()) {
        (Some(a), Some(b)) => b - a,
        _ => wall,
    };
    let per = cpu / iterations;
    println!(
        "in-process  store={tags:>6} tags  generate={:>7.1} ms  500-tag request: {:>6.1} µs CPU ({:.1} µs wall), \
         response {bytes} B  => {:.1} M tags/s per core",
        generated.as_secs_f64() * 1e3,
        per.as_secs_f64() * 1e6,
        (wall / iterations).as_secs_f64() * 1e6,
        BATCH as f64 / per.as_secs_f64() / 1e6
    );
}

fn over_http(tags: usize, clients: usize, seconds: u64) {
    // The simulator on its own thread, one core at most.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (cpu_tx, mut cpu_rx) =
        tokio::sync::mpsc::unbounded_channel::<std::sync::mpsc::Sender<Option<Duration>>>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let opts = SimOptions {
                tags,
                change_rate: 0.1,
                alarms: true,
                ..SimOptions::default()
            };
            let sim = sim::start("127.0.0.1:0".parse().expect("addr"), opts)
                .await
                .expect("sim");
            addr_tx
                .send((sim.base_url(), sim.tag_names()))
                .expect("send");
            // Answer CPU-time queries from this thread until the bench is done.
            while let Some(reply) = cpu_rx.recv().await {
                let _ = reply.send(thread_cpu());
            }
            sim.shutdown().await;
        });
    });
    let (base, names) = addr_rx.recv().expect("simulator started");
    let server_cpu = || {
        let (tx, rx) = std::sync::mpsc::channel();
        cpu_tx.send(tx).expect("server alive");
        rx.recv().expect("answer")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("{base}/tags/values");
    wincc_gateway::crypto::install_default();
    let client = reqwest::Client::new();
    let bodies: Vec<bytes::Bytes> = (0..clients)
        .map(|i| request_body(&names, 10 + i as u64).into())
        .collect();
    let run = |secs: f64| {
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let tasks = bodies.iter().map(|body| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let r = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await
                            .expect("request");
                        assert_eq!(r.status(), 200);
                        let b = r.bytes().await.expect("body");
                        assert!(b.len() > BATCH * 50);
                        n += 1;
                    }
                    n
                }
            });
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .sum::<u64>()
        })
    };
    run(0.5); // warm up connections
    let cpu0 = server_cpu();
    let t = Instant::now();
    let requests = run(seconds as f64);
    let wall = t.elapsed();
    let cpu1 = server_cpu();
    let tags_per_s = (requests * BATCH as u64) as f64 / wall.as_secs_f64();
    let cpu_line = match (cpu0, cpu1) {
        (Some(a), Some(b)) => {
            let cpu = b - a;
            format!(
                "server CPU {:.0} % of one core, {:.0} µs per request => {:.2} M tags/s per server core",
                cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
                cpu.as_secs_f64() / requests as f64 * 1e6,
                (requests * BATCH as u64) as f64 / cpu.as_secs_f64() / 1e6
            )
        }
        _ => "server CPU time unavailable (no /proc/thread-self/schedstat)".into(),
    };
    println!(
        "over HTTP   store={tags:>6} tags  {clients} clients x 500-tag requests for {seconds} s: \
         {requests} requests, {:.0} tags/s end to end; {cpu_line}",
        tags_per_s
    );
    drop(cpu_tx);
    server.join().expect("server thread");
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments are ignored.
    println!(
        "wincc-gateway simulator benchmark ({} CPUs visible)",
        num_cpus()
    );
    in_process(1_000);
    in_process(100_000);
    over_http(100_000, 1, 3);
    over_http(100_000, 4, 3);
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
