//! The command line (contract §1): parse, load configuration, hand over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{AuthMode, LogFormat, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "wincc-gateway",
    version,
    about = "Siemens WinCC station → MQTT and OPC UA gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole gateway on loopback: simulator, embedded MQTT broker, OPC UA server, metrics.
    Demo(DemoArgs),
    /// The production service (foreground; SIGINT/SIGTERM: flush, publish offline, exit 0).
    Run {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Log level for this run (e.g. `debug` for a capture of what the
        /// station answers); overrides `log.level`, `RUST_LOG` overrides it.
        #[arg(long = "log-level", value_name = "LEVEL")]
        log_level: Option<String>,
    },
    /// Validates a configuration file (and its environment overrides); exit 0 or 2.
    CheckConfig {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
    /// Lists the station's tags: name, type, rw|ro.
    Browse {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Only tags matching this glob.
        #[arg(long)]
        filter: Option<String>,
        /// Print a JSON array instead of lines.
        #[arg(long)]
        json: bool,
        /// Log level (default `warn`; `debug` shows what the station answers).
        #[arg(long = "log-level", value_name = "LEVEL")]
        log_level: Option<String>,
    },
    /// Only the WinCC REST simulator (for tests, benchmarks, trials).
    Simulate(SimulateArgs),
    /// Windows service management (Windows builds only).
    Service {
        #[arg(value_parser = ["install", "uninstall", "run"])]
        action: String,
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Port of the embedded MQTT broker.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Port of the OPC UA server.
    #[arg(long, default_value_t = 4840)]
    pub opcua_port: u16,
    /// Port of /healthz and /metrics.
    #[arg(long, default_value_t = 9100)]
    pub http_port: u16,
    /// Port of the built-in simulator (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub sim_port: u16,
    /// Number of simulated tags.
    #[arg(long, default_value_t = 200)]
    pub tags: usize,
    /// Fraction of tags changing per second.
    #[arg(long, default_value_t = 0.2)]
    pub change_rate: f64,
    /// Directory for the OPC UA PKI (created if missing).
    #[arg(long, default_value = "pki-demo")]
    pub pki_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub tags: usize,
    #[arg(long, default_value_t = 0.1)]
    pub change_rate: f64,
    /// generic | wincc-v7 | unified
    #[arg(long, default_value = "generic")]
    pub dialect: String,
    /// none | session | cookie | basic
    #[arg(long, default_value = "none")]
    pub auth: String,
    /// A user as NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    pub users: Vec<String>,
    /// Lifetime of session tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub token_ttl_s: u64,
    /// Seed of the simulated plant (same seed, same tags).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Serve HTTPS with a fresh self-signed certificate; its SHA-256
    /// fingerprint (for `pinned_cert_sha256`) is printed at start.
    #[arg(long)]
    pub tls: bool,
}

/// Exit code for configuration and usage errors.
pub const EXIT_CONFIG: u8 = 2;

/// Sets up `tracing` to stderr: human-readable or JSON, filter from
/// `RUST_LOG` or the given default.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// Loads a configuration or prints its problems (exit 2).
fn load(path: &std::path::Path) -> Result<Settings, ExitCode> {
    Settings::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn parse_auth(s: &str) -> Result<AuthMode, String> {
    match s {
        "none" => Ok(AuthMode::None),
        "session" => Ok(AuthMode::Session),
        "cookie" => Ok(AuthMode::Cookie),
        "basic" => Ok(AuthMode::Basic),
        other => Err(format!(
            "--auth {other:?}: use none, session, cookie or basic"
        )),
    }
}

fn parse_users(users: &[String]) -> Result<Vec<(String, String)>, String> {
    users
        .iter()
        .map(|u| match u.split_once(':') {
            Some((n, p)) if !n.is_empty() => Ok((n.to_string(), p.to_string())),
            _ => Err(format!(
                "--user must be NAME:PASSWORD (got {:?})",
                u.split(':').next().unwrap_or("")
            )),
        })
        .collect()
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(s) => {
                for w in s.cleartext_warnings() {
                    eprintln!("warning: credentials in clear: {w}");
                }
                println!(
                    "{}: ok ({} poll group{}, dialect {}, mqtt {}, opcua {})",
                    config.display(),
                    s.poll_groups.len(),
                    if s.poll_groups.len() == 1 { "" } else { "s" },
                    s.wincc.dialect.as_str(),
                    if s.mqtt.enabled { "on" } else { "off" },
                    if s.opcua.enabled { "on" } else { "off" },
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Simulate(args) => {
            init_logging(LogFormat::Human, "info");
            let opts = match sim_options(&args) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("simulate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let (listen, tls) = (args.listen, args.tls);
            runtime(|| async move {
                if tls {
                    crate::sim::run_tls(listen, opts, shutdown_signal()).await
                } else {
                    crate::sim::run(listen, opts, shutdown_signal()).await
                }
            })
        }
        Command::Browse {
            config,
            filter,
            json,
            log_level,
        } => {
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            init_logging(settings.log.format, log_level.as_deref().unwrap_or("warn"));
            runtime(
                || async move { crate::gateway::browse(&settings, filter.as_deref(), json).await },
            )
        }
        Command::Run { config, log_level } => {
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let level = log_level.unwrap_or_else(|| settings.log.level.clone());
            init_logging(settings.log.format, &level);
            runtime(|| async move { crate::gateway::run(settings, shutdown_signal()).await })
        }
        Command::Demo(args) => {
            // rumqttd logs every probe and disconnect as an error; RUST_LOG can bring it back.
            init_logging(LogFormat::Human, "info,rumqttd=off");
            runtime(|| async move { crate::demo::run(args, shutdown_signal()).await })
        }
        Command::Service { action, config } => crate::service::main(&action, config),
    }
}

fn sim_options(args: &SimulateArgs) -> Result<crate::sim::SimOptions, String> {
    let dialect = match args.dialect.as_str() {
        "generic" => crate::config::Dialect::Generic,
        "wincc-v7" => crate::config::Dialect::WinccV7,
        "unified" => crate::config::Dialect::Unified,
        other => {
            return Err(format!(
                "--dialect {other:?}: use generic, wincc-v7 or unified"
            ))
        }
    };
    if !(0.0..=1.0).contains(&args.change_rate) {
        return Err(format!(
            "--change-rate {} must be between 0 and 1",
            args.change_rate
        ));
    }
    let mut opts = crate::sim::SimOptions {
        tags: args.tags,
        change_rate: args.change_rate,
        auth: parse_auth(&args.auth)?,
        token_ttl: std::time::Duration::from_secs(args.token_ttl_s),
        seed: args.seed,
        dialect,
        ..Default::default()
    };
    let users = parse_users(&args.users)?;
    if !users.is_empty() {
        opts.users = users;
    }
    Ok(opts)
}

/// Builds a multi-threaded runtime, runs `f`, maps errors to exit codes.
fn runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT, SIGTERM (Unix) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
}
