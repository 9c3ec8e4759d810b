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
    /// Validates configuration files (and their environment overrides); exit 0 or 2.
    /// With several `-c`, also warns when two of them would clash on one machine or
    /// broker (same MQTT client id or topic prefix, same listening port).
    CheckConfig {
        #[arg(short = 'c', long = "config", value_name = "FILE", required = true)]
        config: Vec<PathBuf>,
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
    /// Trust every OPC UA client certificate (Sign / SignAndEncrypt without
    /// moving files in the PKI directory). For trials on loopback only.
    #[arg(long)]
    pub trust_clients: bool,
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
/// `RUST_LOG` or the given default. Colour only when stderr is a terminal
/// (never into a file, a pipe or journald) and never in JSON; `NO_COLOR`
/// turns it off on a terminal too.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = log_colour(
        format,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // `RUST_LOG` wins over `log.level`, at start and at a reload.
    let fixed = std::env::var_os("RUST_LOG").is_some();
    let _ = match format {
        LogFormat::Json => {
            let b = builder.json().flatten_event(true).with_filter_reloading();
            let handle = b.reload_handle();
            set_log_reloader(fixed, move |f| handle.reload(f).map_err(|e| e.to_string()));
            b.try_init()
        }
        LogFormat::Human => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            set_log_reloader(fixed, move |f| handle.reload(f).map_err(|e| e.to_string()));
            b.try_init()
        }
    };
}

type LogReloader = Box<dyn Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync>;

/// How a reload changes the log filter (set once, by [`init_logging`]);
/// `None` inside when `RUST_LOG` fixes the filter.
static LOG_RELOAD: std::sync::OnceLock<Option<LogReloader>> = std::sync::OnceLock::new();

fn set_log_reloader(
    fixed: bool,
    f: impl Fn(tracing_subscriber::EnvFilter) -> Result<(), String> + Send + Sync + 'static,
) {
    let _ = LOG_RELOAD.set((!fixed).then(|| Box::new(f) as LogReloader));
}

/// Applies `level` (a `log.level` filter) to the running log: `Ok(false)`
/// when `RUST_LOG` or no reloadable logger fixes the filter.
pub fn reload_log_level(level: &str) -> Result<bool, String> {
    match LOG_RELOAD.get() {
        Some(Some(reload)) => {
            let f = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            reload(f).map(|()| true)
        }
        _ => Ok(false),
    }
}

/// Whether log lines carry ANSI colour codes.
pub(crate) fn log_colour(format: LogFormat, terminal: bool, no_color: bool) -> bool {
    format == LogFormat::Human && terminal && !no_color
}

/// `check-config -c A [-c B ...]`: every file's verdict, then the clashes
/// between the valid ones (warnings: exit 0 when every file is valid).
fn check_configs(paths: &[PathBuf]) -> ExitCode {
    let mut valid = Vec::new();
    let mut failed = false;
    for path in paths {
        match load(path) {
            Ok(s) => {
                for w in s.cleartext_warnings() {
                    eprintln!("warning: {}: credentials in clear: {w}", path.display());
                }
                println!(
                    "{}: ok ({} poll group{}, dialect {}, mqtt {}, opcua {}, sparkplug {})",
                    path.display(),
                    s.poll_groups.len(),
                    if s.poll_groups.len() == 1 { "" } else { "s" },
                    s.wincc.dialect.as_str(),
                    if s.mqtt.enabled { "on" } else { "off" },
                    if s.opcua.enabled { "on" } else { "off" },
                    if s.sparkplug.enabled { "on" } else { "off" },
                );
                valid.push((path.display().to_string(), s));
            }
            Err(_) => failed = true,
        }
    }
    for w in clashes(&valid) {
        eprintln!("warning: {w}");
    }
    if failed {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

/// What two gateways on one machine and one broker must not share: the
/// MQTT client id (the broker would disconnect one for the other, in a
/// loop), the topic prefix (their status and tags would overwrite each
/// other) and listening ports (OPC UA, HTTP).
pub(crate) fn clashes(configs: &[(String, Settings)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: std::collections::HashMap<(&str, String), &str> =
        std::collections::HashMap::new();
    for (name, s) in configs {
        let mut keys: Vec<(&str, String)> = Vec::new();
        if s.mqtt.enabled {
            keys.push(("mqtt.client_id", s.mqtt.client_id.clone()));
            keys.push(("mqtt.topic_prefix", s.mqtt.topic_prefix.clone()));
        }
        if s.opcua.enabled {
            if let Ok((_, port, _)) = crate::sinks::opcua::server::parse_endpoint(&s.opcua.endpoint)
            {
                keys.push(("port", port.to_string()));
            }
        }
        if s.http.enabled {
            if let Some(port) = s.http.listen.rsplit_once(':').map(|(_, p)| p.to_string()) {
                keys.push(("port", port));
            }
        }
        let mut own = std::collections::HashSet::new();
        for (key, value) in keys {
            if !own.insert((key, value.clone())) {
                out.push(format!(
                    "{name}: opcua.endpoint and http.listen both use port {value}"
                ));
                continue;
            }
            match seen.get(&(key, value.clone())) {
                Some(other) if key == "port" => out.push(format!(
                    "{other} and {name} both listen on port {value} (opcua.endpoint or http.listen): give each gateway its own"
                )),
                Some(other) => out.push(format!(
                    "{other} and {name} share {key} = {value:?}: give each gateway its own"
                )),
                None => {
                    seen.insert((key, value), name.as_str());
                }
            }
        }
    }
    out
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
    // One TLS crypto backend for the whole process (see crate::crypto).
    crate::crypto::install_default();
    match cli.command {
        Command::CheckConfig { config } => check_configs(&config),
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
            runtime(|| async move {
                crate::reload::run_with_reload(&config, settings, shutdown_signal()).await
            })
        }
        Command::Demo(args) => {
            init_logging(LogFormat::Human, "info");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_for_human_logs_on_a_terminal_without_no_color() {
        assert!(log_colour(LogFormat::Human, true, false));
        assert!(
            !log_colour(LogFormat::Human, false, false),
            "file, pipe, journald"
        );
        assert!(!log_colour(LogFormat::Human, true, true), "NO_COLOR");
        assert!(!log_colour(LogFormat::Json, true, false), "never in JSON");
    }

    fn settings(client: &str, prefix: &str, opcua: u16, http: u16) -> Settings {
        let toml = format!(
            "[wincc]\nbase_url = \"http://127.0.0.1:1\"\nauth = \"none\"\n\
             [[poll_group]]\nname = \"a\"\ntags = [\"**\"]\n\
             [mqtt]\nclient_id = \"{client}\"\ntopic_prefix = \"{prefix}\"\n\
             [opcua]\nendpoint = \"opc.tcp://0.0.0.0:{opcua}/\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n"
        );
        Settings::from_toml_with_env(&toml, "t", std::iter::empty()).unwrap()
    }

    #[test]
    fn clashes_name_both_files_and_what_they_share() {
        let a = ("a.toml".to_string(), settings("gw-a", "w/a", 4840, 9100));
        let b = ("b.toml".to_string(), settings("gw-b", "w/b", 4841, 9101));
        assert!(clashes(&[a.clone(), b.clone()]).is_empty());
        let c = ("c.toml".to_string(), settings("gw-a", "w/b", 9101, 9102));
        let w = clashes(&[a, b, c]);
        assert!(
            w.iter()
                .any(|w| w.contains("a.toml and c.toml share mqtt.client_id")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("b.toml and c.toml share mqtt.topic_prefix")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.contains("b.toml and c.toml both listen on port 9101")),
            "{w:?}"
        );
        let own = ("d.toml".to_string(), settings("gw-d", "w/d", 9200, 9200));
        assert!(clashes(&[own])[0].contains("both use port 9200"));
    }
}
