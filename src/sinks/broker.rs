//! An embedded MQTT broker (rumqttd) for `wincc-gateway demo`, so the demo
//! needs nothing installed. Not meant for production: it keeps messages in
//! memory only and has no authentication.
//!
//! rumqttd's `Broker::start` blocks and spawns its own threads (a router and
//! one per listener), so it runs on a dedicated std thread. Segments are kept
//! small (DEPENDENCIES.md §4: 1 MiB × 10) to bound memory.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// A running embedded broker. rumqttd cannot be stopped; it lives as long
/// as the process.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// Where the MQTT 3.1.1 listener accepts connections.
    pub addr: SocketAddr,
    /// The thread running `Broker::start`.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts an MQTT 3.1.1 broker on `listen` (port 0 picks a free port) and
/// returns once it accepts connections.
pub fn start_embedded_broker(listen: SocketAddr) -> anyhow::Result<EmbeddedBroker> {
    // rumqttd only logs a failed bind from its own thread, so check the
    // address first (this also resolves port 0 to a free port).
    let addr = {
        let probe = TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen} for the embedded MQTT broker"))?;
        probe.local_addr()?
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 1024 * 1024,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Config::default()
    };
    let thread = std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .context("cannot start the embedded MQTT broker thread")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if thread.is_finished() || Instant::now() >= deadline {
            anyhow::bail!("the embedded MQTT broker did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%addr, "embedded MQTT broker listening (MQTT 3.1.1, no persistence)");
    Ok(EmbeddedBroker { addr, thread })
}
