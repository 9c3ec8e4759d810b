//! Typed settings (contract §2), layered from a TOML file and
//! `WINCC_GW__SECTION__KEY` environment overrides, and validated with
//! located errors: every problem names its key, the bad value and why.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod enums;
mod sparkplug;
mod validate;

pub use sparkplug::SparkplugSettings;

pub use validate::{parse_fingerprint, OPCUA_POLICIES};

/// Prefix of environment overrides: `WINCC_GW__MQTT__URL`.
pub const ENV_PREFIX: &str = "WINCC_GW";

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub wincc: WinccSettings,
    #[serde(default, rename = "poll_group")]
    pub poll_groups: Vec<PollGroup>,
    #[serde(default)]
    pub alarms: AlarmSettings,
    #[serde(default)]
    pub mqtt: MqttSettings,
    #[serde(default)]
    pub opcua: OpcuaSettings,
    #[serde(default)]
    pub sparkplug: SparkplugSettings,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub log: LogSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Dialect {
    #[serde(rename = "generic")]
    Generic,
    #[serde(rename = "wincc-v7")]
    WinccV7,
    #[serde(rename = "unified")]
    Unified,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Generic => "generic",
            Dialect::WinccV7 => "wincc-v7",
            Dialect::Unified => "unified",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Session,
    Cookie,
    Basic,
    None,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Session => "session",
            AuthMode::Cookie => "cookie",
            AuthMode::Basic => "basic",
            AuthMode::None => "none",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WinccSettings {
    pub base_url: String,
    pub dialect: Dialect,
    pub auth: AuthMode,
    pub username: String,
    pub password_env: String,
    pub password_file: String,
    pub timeout_ms: u64,
    pub ca_file: String,
    pub pinned_cert_sha256: String,
    pub accept_invalid_certs: bool,
    /// Skip the host-name check of a certificate trusted by
    /// `pinned_cert_sha256` or `ca_file` (a Unified runtime's self-signed
    /// certificate names only `localhost`). Refused without either.
    pub tls_skip_hostname_check: bool,
    pub max_tags_per_request: usize,
    /// The most tags the gateway takes from the station's tag list; a
    /// station with more gets a clear error and the first `max_tags` are
    /// polled (bounded memory whatever the station sends).
    pub max_tags: usize,
    /// How often poll-group globs are re-resolved against `GET /tags` (0: only at start).
    pub discovery_interval_s: u64,
    /// How long a write may wait for a rate-limit permit (0: `timeout_ms`).
    pub write_timeout_ms: u64,
    pub rate_limit: RateLimit,
}

impl WinccSettings {
    /// `write_timeout_ms`, or `timeout_ms` where it is 0 (contract §7).
    pub fn write_timeout(&self) -> std::time::Duration {
        let ms = if self.write_timeout_ms == 0 {
            self.timeout_ms
        } else {
            self.write_timeout_ms
        };
        std::time::Duration::from_millis(ms.max(1))
    }
}

impl Default for WinccSettings {
    fn default() -> Self {
        WinccSettings {
            base_url: String::new(),
            dialect: Dialect::Generic,
            auth: AuthMode::None,
            username: String::new(),
            password_env: String::new(),
            password_file: String::new(),
            timeout_ms: 5000,
            ca_file: String::new(),
            pinned_cert_sha256: String::new(),
            accept_invalid_certs: false,
            tls_skip_hostname_check: false,
            max_tags_per_request: 500,
            max_tags: 200_000,
            discovery_interval_s: 300,
            write_timeout_ms: 0,
            rate_limit: RateLimit::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
    pub max_in_flight: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            requests_per_second: 20,
            burst: 5,
            max_in_flight: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    Poll,
    Subscribe,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PollGroup {
    pub name: String,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub deadband_abs: f64,
    #[serde(default)]
    pub deadband_pct: f64,
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u64,
    #[serde(default = "default_poll_mode")]
    pub mode: PollMode,
}

fn default_interval_ms() -> u64 {
    1000
}
fn default_heartbeat_s() -> u64 {
    60
}
fn default_poll_mode() -> PollMode {
    PollMode::Poll
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AlarmSettings {
    pub enabled: bool,
    pub interval_ms: u64,
    pub filter: String,
}

impl Default for AlarmSettings {
    fn default() -> Self {
        AlarmSettings {
            enabled: true,
            interval_ms: 1000,
            filter: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MqttProtocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MqttSettings {
    pub enabled: bool,
    pub url: String,
    pub protocol: MqttProtocol,
    pub client_id: String,
    pub username: String,
    pub password_env: String,
    pub password_file: String,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
    pub keep_alive_s: u64,
    pub clean_session: bool,
    pub topic_prefix: String,
    pub qos: u8,
    pub retain: bool,
    pub max_packet_size: usize,
    pub write_enabled: bool,
    pub writable_tags: Vec<String>,
    /// MQTT 5 only: a write command's response topic is answered only when
    /// it starts with this prefix (empty: response topics are ignored).
    pub response_topic_prefix: String,
    /// Store-and-forward of undelivered changes (contract §9).
    pub buffer: MqttBufferSettings,
}

/// `[mqtt.buffer]`: the on-disk store-and-forward buffer (contract §9).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MqttBufferSettings {
    pub enabled: bool,
    /// On local disk; created if missing.
    pub dir: String,
    /// Bound of the buffer on disk; when full the oldest entries go.
    pub max_bytes: u64,
    /// Pace of the replay on `backfill/`.
    pub replay_per_second: u32,
    /// Fsync at least this often.
    pub sync_interval_ms: u64,
}

impl Default for MqttBufferSettings {
    fn default() -> Self {
        MqttBufferSettings {
            enabled: false,
            dir: "buffer".into(),
            max_bytes: 1 << 30,
            replay_per_second: 2000,
            sync_interval_ms: 1000,
        }
    }
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            enabled: true,
            url: "mqtt://127.0.0.1:1883".into(),
            protocol: MqttProtocol::V311,
            client_id: "wincc-gateway".into(),
            username: String::new(),
            password_env: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            keep_alive_s: 30,
            clean_session: true,
            topic_prefix: "wincc/station1".into(),
            qos: 1,
            retain: true,
            max_packet_size: 1024 * 1024,
            write_enabled: false,
            writable_tags: Vec::new(),
            response_topic_prefix: String::new(),
            buffer: MqttBufferSettings::default(),
        }
    }
}

/// What an OPC UA user may do (contract §8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpcuaRole {
    /// Browse, read and subscribe; never write.
    #[default]
    Read,
    /// Also write the tags `opcua.writable_tags` allows.
    Write,
}

impl OpcuaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OpcuaRole::Read => "read",
            OpcuaRole::Write => "write",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OpcuaUser {
    pub username: String,
    #[serde(default)]
    pub password_env: String,
    #[serde(default)]
    pub password_file: String,
    #[serde(default)]
    pub role: OpcuaRole,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OpcuaSettings {
    pub enabled: bool,
    pub endpoint: String,
    pub namespace_uri: String,
    pub security_policies: Vec<String>,
    pub allow_anonymous: bool,
    pub users: Vec<OpcuaUser>,
    pub pki_dir: String,
    pub trust_client_certs: bool,
    pub write_enabled: bool,
    pub writable_tags: Vec<String>,
    /// The shortest publishing interval a subscription is granted (ms);
    /// values are pushed into subscriptions as they arrive, so a change
    /// waits at most this long (plus a tick of a tenth of it).
    pub min_publishing_interval_ms: u64,
    pub limits: OpcuaLimits,
}

impl Default for OpcuaSettings {
    fn default() -> Self {
        OpcuaSettings {
            enabled: true,
            endpoint: "opc.tcp://0.0.0.0:4840/".into(),
            namespace_uri: "urn:wincc-gateway:station1".into(),
            security_policies: vec!["None".into(), "Basic256Sha256".into()],
            allow_anonymous: true,
            users: Vec::new(),
            pki_dir: "pki".into(),
            trust_client_certs: false,
            write_enabled: false,
            writable_tags: Vec::new(),
            min_publishing_interval_ms: 50,
            limits: OpcuaLimits::default(),
        }
    }
}

/// Server limits, sized for 100 000 tags (the crate's defaults are 1000),
/// and bounding what clients can make the server hold (contract §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OpcuaLimits {
    /// Sessions open at once, all clients together (`Bad_TooManySessions`).
    pub max_sessions: usize,
    pub max_session_timeout_ms: u64,
    /// `Bad_TooManySubscriptions` beyond this.
    pub max_subscriptions_per_session: usize,
    /// Monitored items one session may hold, over all its subscriptions
    /// (`Bad_TooManyMonitoredItems`); 0: the tag count + 1 000.
    pub max_monitored_items_per_session: usize,
    pub max_monitored_items_per_sub: usize,
    pub max_monitored_items_per_call: usize,
    pub max_nodes_per_read: usize,
    pub max_nodes_per_write: usize,
    pub max_nodes_per_browse: usize,
    pub max_array_length: usize,
    pub max_message_size: usize,
}

impl Default for OpcuaLimits {
    fn default() -> Self {
        OpcuaLimits {
            max_sessions: 50,
            max_session_timeout_ms: 3_600_000,
            max_subscriptions_per_session: 20,
            max_monitored_items_per_session: 0,
            max_monitored_items_per_sub: 200_000,
            max_monitored_items_per_call: 100_000,
            max_nodes_per_read: 100_000,
            max_nodes_per_write: 10_000,
            max_nodes_per_browse: 100_000,
            max_array_length: 200_000,
            max_message_size: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    pub enabled: bool,
    pub listen: String,
    /// `/healthz` answers 503 once the station has been unreachable this long.
    pub unhealthy_after_s: u64,
    /// The live status page at `/` (read-only).
    pub status_page: bool,
    /// Who may open the status page when `listen` is not a loopback
    /// address (HTTP Basic); on loopback the page needs no login.
    pub users: Vec<HttpUser>,
}

/// One user of the status page: a name and a password from the
/// environment or a file (never the config file itself).
#[derive(Debug, Clone, Deserialize)]
pub struct HttpUser {
    pub username: String,
    #[serde(default)]
    pub password_env: String,
    #[serde(default)]
    pub password_file: String,
}

impl HttpSettings {
    /// True when `listen` is a loopback address (the page needs no login).
    pub fn is_loopback(&self) -> bool {
        self.listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            enabled: true,
            listen: "127.0.0.1:9100".into(),
            unhealthy_after_s: 30,
            status_page: true,
            users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `wincc_gateway=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// One located configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `poll_group[0].interval_ms`.
    pub key: String,
    /// The offending value as written (may be empty when the key is missing).
    pub value: String,
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.key, self.why)
        } else {
            write!(f, "{} = {}: {}", self.key, self.value, self.why)
        }
    }
}

/// Everything wrong with a configuration, each problem located.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem{}:",
            self.source_name,
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(source_name: &str, key: &str, value: &str, why: impl Into<String>) -> Self {
        ConfigError {
            source_name: source_name.to_string(),
            problems: vec![Problem {
                key: key.into(),
                value: value.into(),
                why: why.into(),
            }],
        }
    }
}

/// A secret read from the environment or a file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Resolves a `*_env` / `*_file` pair. `Ok(None)` when neither is given.
pub fn resolve_secret(key: &str, env: &str, file: &str) -> Result<Option<Secret>, Problem> {
    if !env.is_empty() {
        return match std::env::var(env) {
            Ok(v) => Ok(Some(Secret(v))),
            Err(_) => Err(Problem {
                key: format!("{key}_env"),
                value: format!("{env:?}"),
                why: format!("environment variable {env} is not set; set it or clear this key"),
            }),
        };
    }
    if !file.is_empty() {
        return match std::fs::read_to_string(file) {
            Ok(v) => Ok(Some(Secret(v.trim_end_matches(['\r', '\n']).to_string()))),
            Err(e) => Err(Problem {
                key: format!("{key}_file"),
                value: format!("{file:?}"),
                why: format!("cannot read the secret file: {e}"),
            }),
        };
    }
    Ok(None)
}

impl Settings {
    /// Loads a file plus the process environment, then validates.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::one(
                &source_name,
                "(file)",
                &source_name,
                format!("cannot read: {e}"),
            )
        })?;
        Self::from_toml_with_env(&text, &source_name, std::env::vars())
    }

    /// Parses TOML text with the given environment (for tests), then validates.
    pub fn from_toml_with_env(
        text: &str,
        source_name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        // TOML syntax errors first, with their line and column.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError::one(
                source_name,
                "(syntax)",
                "",
                e.to_string().trim().replace('\n', " "),
            ));
        }
        let env_map: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        let built = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(false)
                    .source(Some(env_map)),
            )
            .build()
            .map_err(|e| ConfigError::one(source_name, "(config)", "", e.to_string()))?;

        let mut unknown = Vec::new();
        let settings: Settings = serde_ignored::deserialize(built, |path| {
            unknown.push(path.to_string());
        })
        .map_err(|e| located_serde_error(source_name, e))?;

        let mut problems: Vec<Problem> = unknown
            .into_iter()
            .map(|k| Problem {
                key: k,
                value: String::new(),
                why: "unknown key (check the spelling against config/gateway.toml)".into(),
            })
            .collect();
        problems.extend(settings.validate());
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError {
                source_name: source_name.into(),
                problems,
            })
        }
    }

    /// The pki directory as a path.
    pub fn pki_dir(&self) -> PathBuf {
        PathBuf::from(&self.opcua.pki_dir)
    }
}

/// The first 12 hex digits of the SHA-256 of `text` (a configuration's
/// short identity on the status page and `/healthz`).
pub fn sha256_prefix(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Turns a `config` deserialization error into a located problem.
fn located_serde_error(source_name: &str, e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    // config's messages look like: `invalid type: string "x", expected u64 for key `wincc.timeout_ms``
    let (why, key) = match text.rfind(" for key `") {
        Some(i) => (
            text[..i].to_string(),
            text[i + 10..].trim_end_matches(['`', ' ']).to_string(),
        ),
        None => match text.find("missing field `") {
            Some(_) => (text.clone(), "(missing)".to_string()),
            None => (text.clone(), "(value)".to_string()),
        },
    };
    let key = key.split('`').next().unwrap_or_default().to_string();
    // An enum value: name the valid values, not the Rust type.
    if let Some((value, why)) = enums::explain(&why) {
        let key = if key.is_empty() {
            "(value)".into()
        } else {
            key
        };
        return ConfigError {
            source_name: source_name.into(),
            problems: vec![Problem { key, value, why }],
        };
    }
    let key = if key.is_empty() {
        "(value)".into()
    } else {
        key
    };
    let value = why
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once(", expected").map(|(v, _)| v.to_string()))
        .unwrap_or_default();
    ConfigError {
        source_name: source_name.into(),
        problems: vec![Problem { key, value, why }],
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
