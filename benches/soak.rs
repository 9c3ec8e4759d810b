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
//! client), `SOAK_RATE` (0.1 of the tags changing per second). The rig is
//! `tests/common/soak.rs`.
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
    let mut opts = soak::SoakOptions::new(env!("CARGO_BIN_EXE_wincc-gateway"));
    opts.duration = Duration::from_secs(env_or("SOAK_SECS", 3600));
    opts.tags = env_or("SOAK_TAGS", 20_000);
    opts.faults = env_or("SOAK_FAULTS", 1u8) != 0;
    opts.sample_every = Duration::from_secs(env_or("SOAK_SAMPLE_SECS", 60));
    opts.qos = env_or("SOAK_QOS", 1);
    opts.retain = env_or("SOAK_RETAIN", 1u8) != 0;
    opts.opcua = env_or("SOAK_OPCUA", 1u8) != 0;
    opts.opcua_items = env_or("SOAK_OPCUA_ITEMS", 300);
    opts.change_rate = env_or("SOAK_RATE", 0.1);
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
    for l in r.lost.iter().take(10) {
        println!("soak: lost {l}");
    }
    for b in r.backwards.iter().take(10) {
        println!("soak: backwards {b}");
    }
}
