//! `wincc-gateway demo`: the whole gateway on loopback with nothing
//! installed beyond the Rust toolchain — the built-in simulator (with
//! session login), the embedded MQTT broker, the OPC UA server and the
//! metrics endpoint — then prints where to connect.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::cli::DemoArgs;
use crate::config::{AuthMode, Settings};

/// The demo station's login (only on loopback; written to a private file, never logged).
const DEMO_USER: &str = "gateway";

/// The demo's OPC UA user with role `write` (anonymous sessions only read).
const DEMO_OPCUA_WRITER: &str = "operator";

/// Builds the demo's settings as a TOML document, validated like any file.
#[allow(clippy::too_many_arguments)] // the demo's ports, paths and flags, each a CLI flag; callers name them
pub fn demo_settings(
    sim_url: &str,
    mqtt_port: u16,
    opcua_port: u16,
    http_port: u16,
    pki_dir: &Path,
    secret_file: &Path,
    opcua_secret_file: &Path,
    trust_clients: bool,
) -> anyhow::Result<Settings> {
    let toml = format!(
        r#"
[wincc]
base_url = "{sim_url}"
auth = "session"
username = "{DEMO_USER}"
password_file = {secret:?}
timeout_ms = 5000
max_tags_per_request = 100

[wincc.rate_limit]
requests_per_second = 50
burst = 10
max_in_flight = 2

[[poll_group]]
name = "fast"
interval_ms = 500
tags = ["Line1/Mixer/**", "Line1/Filler/**"]
heartbeat_s = 60

[[poll_group]]
name = "slow"
interval_ms = 2000
tags = ["**"]
deadband_pct = 0.5
heartbeat_s = 300

[alarms]
enabled = true
interval_ms = 1000

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "wincc-gateway-demo"
topic_prefix = "wincc/demo"
qos = 1
retain = true
write_enabled = true
writable_tags = ["**/*Setpoint*", "**/*Mode*"]

[opcua]
endpoint = "opc.tcp://127.0.0.1:{opcua_port}/"
namespace_uri = "urn:wincc-gateway:demo"
security_policies = ["None", "Basic256Sha256"]
allow_anonymous = true
users = [{{ username = "{DEMO_OPCUA_WRITER}", password_file = {opcua_secret:?}, role = "write" }}]
pki_dir = {pki:?}
trust_client_certs = {trust_clients}
write_enabled = true
writable_tags = ["**/*Setpoint*", "**/*Mode*"]

[sparkplug]
enabled = true
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "wincc-gateway-demo-spb"
group_id = "WinCC"
edge_node_id = "demo"
device_id = "wincc"
state_dir = {pki:?}
write_enabled = true
writable_tags = ["**/*Setpoint*", "**/*Mode*"]

[http]
listen = "127.0.0.1:{http_port}"
"#,
        secret = secret_file.display().to_string(),
        opcua_secret = opcua_secret_file.display().to_string(),
        pki = pki_dir.display().to_string(),
    );
    Settings::from_toml_with_env(&toml, "(demo settings)", std::iter::empty())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // A random password for the simulated station, kept in a private file.
    let password: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..24)
            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
            .collect()
    };
    let secret_dir =
        std::env::temp_dir().join(format!("wincc-gateway-demo-{}", std::process::id()));
    std::fs::create_dir_all(&secret_dir).context("cannot create the demo's temp dir")?;
    let secret_file = secret_dir.join("station-password");
    write_private(&secret_file, &password)?;
    // The OPC UA writer's password: printed below (a loopback demo).
    let opcua_password: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..12)
            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
            .collect()
    };
    let opcua_secret_file = secret_dir.join("opcua-operator-password");
    write_private(&opcua_secret_file, &opcua_password)?;

    let sim_opts = crate::sim::SimOptions {
        tags: args.tags,
        change_rate: args.change_rate,
        auth: AuthMode::Session,
        users: vec![(DEMO_USER.to_string(), password)],
        ..Default::default()
    };
    let sim = crate::sim::start(SocketAddr::from(([127, 0, 0, 1], args.sim_port)), sim_opts)
        .await
        .context("cannot start the simulator")?;

    let broker_addr = SocketAddr::from(([127, 0, 0, 1], args.mqtt_port));
    let _broker = start_broker(broker_addr)?;

    std::fs::create_dir_all(&args.pki_dir)
        .with_context(|| format!("cannot create {}", args.pki_dir.display()))?;
    let settings = demo_settings(
        &sim.base_url(),
        args.mqtt_port,
        args.opcua_port,
        args.http_port,
        &args.pki_dir,
        &secret_file,
        &opcua_secret_file,
        args.trust_clients,
    )?;
    let prefix = settings.mqtt.topic_prefix.clone();
    let trust = if args.trust_clients {
        "every client certificate is trusted (--trust-clients)".to_string()
    } else {
        format!(
            "secure connections: a client's certificate lands in {0}/rejected; the log says which file to move to {0}/trusted (or start with --trust-clients)",
            args.pki_dir.display()
        )
    };
    let running = crate::gateway::start(settings).await?;
    // The contract's command on the default port; the port flag otherwise.
    let port = if args.mqtt_port == 1883 {
        String::new()
    } else {
        format!(" -p {}", args.mqtt_port)
    };

    let colon_port = format!(":{}", args.mqtt_port);
    println!(
        "\nwincc-gateway demo is running ({} simulated tags at {}).\n\
         \n  MQTT:     mosquitto_sub -h 127.0.0.1{port} -t 'wincc/#' -v   (MQTT 3.1.1 or 5, no login)\
         \n  write:    mosquitto_pub -h 127.0.0.1{port} -t '{prefix}/write/Line1/Mixer/Speed Setpoint' -m '{{\"value\":42.5,\"id\":\"1\"}}'\
         \n  Sparkplug B: edge node spBv1.0/WinCC/+/demo, device wincc (binary payloads; decode one with the schema in tests/fixtures):\
         \n            mosquitto_sub -h 127.0.0.1{port} -N -C 1 -t 'spBv1.0/WinCC/DDATA/demo/wincc' | protoc --decode=org.eclipse.tahu.protobuf.Payload --proto_path=tests/fixtures sparkplug_b.proto\
         \n            or point an Ignition MQTT Engine / any Sparkplug host at mqtt://127.0.0.1{colon_port}\
         \n  OPC UA:   opc.tcp://127.0.0.1:{}/  (anonymous reads; writes as user {DEMO_OPCUA_WRITER}, password {opcua_password}; security None or Basic256Sha256; tags under Objects/WinCC)\
         \n            {trust}\
         \n  metrics:  http://127.0.0.1:{}/metrics   health: http://127.0.0.1:{}/healthz\
         \n  station:  {}/_sim/stats  (the simulator's view)\
         \n\nPress Ctrl-C to stop.\n",
        args.tags,
        sim.base_url(),
        args.opcua_port,
        args.http_port,
        args.http_port,
        sim.base_url(),
    );

    shutdown.await;
    running.shutdown().await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&secret_dir);
    Ok(())
}

#[cfg(feature = "demo")]
fn start_broker(addr: SocketAddr) -> anyhow::Result<crate::sinks::broker::EmbeddedBroker> {
    crate::sinks::broker::start_embedded_broker(addr).with_context(|| {
        format!("cannot start the embedded MQTT broker on {addr} (use --mqtt-port)")
    })
}

#[cfg(not(feature = "demo"))]
fn start_broker(addr: SocketAddr) -> anyhow::Result<()> {
    anyhow::bail!(
        "this build has no embedded MQTT broker (cargo feature `demo`); start one on {addr} or rebuild with default features"
    )
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}
