//! The soak benchmark (issue "An hour of faults"): the release binary as
//! station (`simulate`) and gateway (`run`), a persistent mosquitto, a
//! subscriber recording every tag message and an OPC UA client on a few
//! hundred tags; a fault cycle a minute. Prints RSS and CPU per sample and
//! a summary: RSS growth from minute 5, values backwards, settled values
//! never delivered, CPU per delivered change.
//!
//! `cargo bench --bench soak` (one hour with faults), or set
//! `SOAK_SECS` (duration), `SOAK_TAGS` (20 000), `SOAK_FAULTS=0` (the
//! baseline), `SOAK_SAMPLE_SECS` (60), `SOAK_QOS` (1), `SOAK_RETAIN` (1),
//! `SOAK_OPCUA` (1: server on), `SOAK_OPCUA_ITEMS` (300 tags subscribed by the
//! client), `SOAK_BIN` (another gateway binary), `SOAK_RATE` (0.1 of the tags changing per second),
//! `SOAK_OPCUA_PUB_MS` (100: the client's publishing interval),
//! `SOAK_OPCUA_MIN_PUB_MS` (unset: the gateway's
//! `opcua.min_publishing_interval_ms`), `SOAK_LATENCY=1` (OPC UA arrival
//! minus MQTT arrival per change of the client's tags, p50/p99). The rig is
//! `tests/common/soak.rs`.
//!
//! The OPC UA vs MQTT latency run (issue "Performance at plant scale"):
//! `SOAK_FAULTS=0 SOAK_TAGS=5000 SOAK_OPCUA_ITEMS=1000 SOAK_OPCUA_PUB_MS=50
//! SOAK_OPCUA_MIN_PUB_MS=50 SOAK_LATENCY=1 SOAK_SECS=120 cargo bench --bench soak`.
//!
//! Without faults it is also the whole-process performance benchmark
//! (issue "Performance at plant scale"), e.g. 100 000 tags, QoS 0, no retain,
//! OPC UA off: `SOAK_FAULTS=0 SOAK_TAGS=100000 SOAK_QOS=0 SOAK_RETAIN=0
//! SOAK_OPCUA=0 SOAK_SECS=300 SOAK_SAMPLE_SECS=30 cargo bench --bench soak`.

#[path = "../tests/common/mosquitto.rs"]
#[allow(dead_code)]
mod mosquitto;
#[path = "../tests/common/soak.rs"]
mod soak;

use std::time::Duration;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // SOAK_BIN runs another build of the gateway (e.g. a copy of the
    // baseline's binary) through the same rig.
    let bin =
        std::env::var("SOAK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wincc-gateway").into());
    let mut opts = soak::SoakOptions::new(bin);
    opts.duration = Duration::from_secs(env_or("SOAK_SECS", 3600));
    opts.tags = env_or("SOAK_TAGS", 20_000);
    opts.faults = env_or("SOAK_FAULTS", 1u8) != 0;
    opts.sample_every = Duration::from_secs(env_or("SOAK_SAMPLE_SECS", 60));
    opts.qos = env_or("SOAK_QOS", 1);
    opts.retain = env_or("SOAK_RETAIN", 1u8) != 0;
    opts.opcua = env_or("SOAK_OPCUA", 1u8) != 0;
    opts.opcua_items = env_or("SOAK_OPCUA_ITEMS", 300);
    opts.change_rate = env_or("SOAK_RATE", 0.1);
    opts.opcua_publish_ms = env_or("SOAK_OPCUA_PUB_MS", 100);
    opts.opcua_min_publish_ms = std::env::var("SOAK_OPCUA_MIN_PUB_MS")
        .ok()
        .and_then(|v| v.parse().ok());
    opts.latency = env_or("SOAK_LATENCY", 0u8) != 0;
    println!(
        "soak: {} tags, {:.0} %/s changing, {} s, faults {}",
        opts.tags,
        opts.change_rate * 100.0,
        opts.duration.as_secs(),
        if opts.faults {
            "every minute"
        } else {
            "off (baseline)"
        }
    );
    let opts_latency = opts.latency;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(soak::run(opts));
    let growth = r
        .rss_growth_pct(300)
        .map_or("n/a (run shorter than 5 min)".into(), |g| {
            format!("{g:+.1} %")
        });
    println!("soak: RSS growth from minute 5 to the end: {growth}");
    let cores = r.cores_from(60).map_or("n/a".into(), |c| format!("{c:.3}"));
    println!(
        "soak: CPU from minute 1 to the end: {cores} cores; peak RSS {:.1} MiB",
        r.peak_rss_mib()
    );
    println!(
        "soak: messages {}, OPC UA changes {}, CPU {:.1} s = {:.3} ms per message",
        r.messages,
        r.opcua_changes,
        r.cpu_s,
        r.cpu_ms_per_message()
    );
    println!(
        "soak: backwards {}, settled values checked {}, lost {}, clean exit {}, panicked {}",
        r.backwards.len(),
        r.settled_checked,
        r.lost.len(),
        r.clean_exit,
        r.panicked
    );
    let secs =
        |d: Option<Duration>| d.map_or("n/a".into(), |d| format!("{:.3} s", d.as_secs_f64()));
    println!(
        "soak: start to first tag message {}, to every tag's first value {}; SIGTERM to exit {}",
        secs(r.first_message),
        secs(r.all_tags),
        secs(r.exit_after)
    );
    if opts_latency {
        let ms = |d: Option<f64>| d.map_or("n/a".into(), |d| format!("{d:.1} ms"));
        println!(
            "soak: OPC UA arrival minus MQTT arrival, {} changes matched: p50 {}, p99 {}, max {}; {} seen by OPC UA first",
            r.opcua_minus_mqtt.len(),
            ms(r.latency_quantile(0.5)),
            ms(r.latency_quantile(0.99)),
            ms(r.latency_quantile(1.0)),
            r.opcua_first
        );
    }
    if !r.clean_exit || r.panicked {
        println!("soak: the gateway's log, last lines first:\n{}", r.log_tail);
    }
    for l in r.lost.iter().take(10) {
        println!("soak: lost {l}");
    }
    for b in r.backwards.iter().take(10) {
        println!("soak: backwards {b}");
    }
}
