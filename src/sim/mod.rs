//! A faithful WinCC REST station simulator, for the demo, every test and
//! every benchmark.
//!
//! The `generic` dialect (contract §5) is served at the root of the
//! listening address, with `/_sim/*` for statistics, fault switches and
//! alarm control. The tag store ([`store`]), sessions ([`auth`]), faults
//! ([`faults`]), statistics ([`stats`]) and alarms ([`alarms`]) are shared,
//! so that other dialects can be added as sibling route files next to
//! [`generic`]: [`wincc_v7`] serves `/WinCCRestService` (WINCC-DIALECTS.md
//! §1 and §7). [`tls::start_tls`] serves any dialect over HTTPS with a
//! fresh self-signed certificate.
//!
//! `/_sim/*` (never authenticated, faulted or counted):
//!
//! | method, path | does |
//! |---|---|
//! | `GET /_sim/stats`, `POST /_sim/stats/reset` | [`SimStats`] (per-endpoint counts keyed like `"POST /tags/values"`, tags read/written, logins, `max_requests_per_second` over an exact sliding 1 s window, `max_in_flight`, 401/429/500/503 counts) |
//! | `GET/POST /_sim/faults`, `POST /_sim/faults/reset` | [`Faults`]: a POST replaces every switch (missing ones are off) |
//! | `POST /_sim/alarms` | [`AlarmCommand`] `{"action":"raise"\|"ack"\|"clear","id":..,"name":..,"text":..,"class":..,"priority":..}` → the alarm |
//! | `POST /_sim/tags/set` | `{"name":N,"value":V,"quality":"Uncertain","qualityCode":72}` sets any tag (value optional) |
//!
//! Station behaviour worth knowing: in `session` mode only `Authorization:
//! Bearer` is accepted, in `cookie` mode only the `session` cookie; `basic`
//! answers 401 with `WWW-Authenticate`. The ticker changes only read-only
//! tags, so written values stay. Single-tag errors are 404 `UnknownTag`,
//! 403 `ReadOnly`, 400 `TypeMismatch`/`OutOfRange`; String tags take at most
//! 255 characters, like a WinCC text tag.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use wincc_gateway::sim::{self, SimOptions};
//! let sim = sim::start("127.0.0.1:0".parse().unwrap(), SimOptions::default()).await?;
//! println!("base_url = {}", sim.base_url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

pub mod alarms;
pub mod auth;
mod control;
pub mod faults;
pub mod generic;
pub mod http;
mod listener;
pub mod names;
pub mod stats;
pub mod store;
pub mod tls;
pub mod unified;
mod unified_gql;
mod unified_ws;
pub mod wincc_v7;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use chrono::Utc;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use alarms::{AlarmAction, AlarmCommand, AlarmError};
pub use faults::{Faults, TooManyRequests};
pub use names::HOSTILE;
pub use stats::SimStats;
pub use store::TagError;
pub use tls::{run_tls, start_tls};

use crate::config::{AuthMode, Dialect};
use crate::model::{Alarm, Quality, TagInfo};
use auth::Sessions;
use faults::FaultState;
use listener::{ConnId, Net, SimListener};
use stats::Stats;
use store::TagStore;

/// How the simulated station behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Number of tags (hostile names included from 20 on).
    pub tags: usize,
    /// Fraction of the tags that change per second.
    pub change_rate: f64,
    pub auth: AuthMode,
    /// `(username, password)` pairs accepted by login and Basic auth.
    pub users: Vec<(String, String)>,
    /// Lifetime of a session token.
    pub token_ttl: Duration,
    /// Seed of every random choice (names, values, changes, alarms, faults).
    pub seed: u64,
    /// Larger request bodies are answered 413.
    pub max_body_bytes: usize,
    /// Whether the ticker raises, acknowledges and clears alarms by itself.
    pub alarms: bool,
    /// Which station API is served (contract §5 and §6).
    pub dialect: Dialect,
    /// wincc-v7: `dataType` codes served instead of the tag's own, by tag
    /// name (e.g. 12, a raw data type the gateway cannot convert); such a
    /// tag's browse row has no `typeName`.
    pub v7_type_codes: Vec<(String, i64)>,
    /// wincc-v7: browse rows carry only `variableName` (no `dataType`,
    /// no `typeName`), the type is only in the `Values` rows.
    pub v7_untyped_browse: bool,
    /// unified: `POST /graphql` (no trailing slash) is answered 301 to
    /// `/graphql/`, as observed on a V20 runtime.
    pub unified_require_trailing_slash: bool,
    /// unified: users who log in but lack the runtime right "Openness
    /// Runtime - read and write access": every other operation answers
    /// `FORBIDDEN` "Access denied".
    pub unified_users_without_rights: Vec<String>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            tags: 1000,
            change_rate: 0.1,
            auth: AuthMode::None,
            users: vec![("gateway".into(), "gateway".into())],
            token_ttl: Duration::from_secs(3600),
            seed: 1,
            max_body_bytes: 1024 * 1024,
            alarms: true,
            dialect: Dialect::Generic,
            v7_type_codes: Vec::new(),
            v7_untyped_browse: false,
            unified_require_trailing_slash: false,
            unified_users_without_rights: Vec::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the simulated station knows; shared by all its tasks.
#[derive(Debug)]
pub struct SimState {
    pub opts: SimOptions,
    store: RwLock<TagStore>,
    sessions: Mutex<Sessions>,
    faults: Mutex<FaultState>,
    pub stats: Stats,
    alarms: Mutex<alarms::Alarms>,
    net: Arc<Net>,
}

impl SimState {
    pub fn store(&self) -> RwLockReadGuard<'_, TagStore> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store_mut(&self) -> RwLockWriteGuard<'_, TagStore> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sessions(&self) -> MutexGuard<'_, Sessions> {
        lock(&self.sessions)
    }

    pub fn faults(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.faults)
    }

    pub fn alarms(&self) -> MutexGuard<'_, alarms::Alarms> {
        lock(&self.alarms)
    }

    /// Replaces the fault switches and carries out the one-shots. `keep` is
    /// the connection asking (spared by an outage so that it gets its answer).
    pub(crate) fn apply_faults(
        self: &Arc<Self>,
        f: Faults,
        keep: Option<ConnId>,
    ) -> Result<(), String> {
        let expire = f.expire_tokens;
        let outage = f.outage();
        self.faults().set(f)?;
        if expire {
            self.sessions().expire_all();
        }
        match outage {
            Some(length) => self.net.start_outage(length, keep.map(|c| c.0)),
            None if self.net.in_outage() => {
                let net = Arc::clone(&self.net);
                tokio::spawn(async move { net.end_outage().await });
            }
            None => {}
        }
        Ok(())
    }

    async fn ticker(self: Arc<Self>, cancel: CancellationToken) {
        let mut rng = StdRng::seed_from_u64(self.opts.seed ^ 0x7469_636b);
        let mut every = tokio::time::interval(Duration::from_millis(100));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut due = 0.0f64;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let now = Utc::now();
            let store = {
                let mut store = self.store_mut();
                due += self.opts.change_rate * store.len() as f64 / 10.0;
                let n = due.floor();
                due -= n;
                store.tick(n as usize, &mut rng, now);
                store
            };
            if self.opts.alarms {
                let tags = store.tags();
                self.alarms().tick(now, |r| {
                    (!tags.is_empty())
                        .then(|| tags[(r % tags.len() as u64) as usize].info.name.clone())
                });
            }
        }
    }
}

/// A running simulator. Dropping it stops it (like [`SimHandle::shutdown`],
/// without waiting).
pub struct SimHandle {
    state: Arc<SimState>,
    cancel: CancellationToken,
    server: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.state.net.addr()
    }

    /// `http://ADDR`: the gateway's `base_url` for this station.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The shared state (tag store, stats, ...).
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Stops serving, drops every connection and waits for the server task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.state.net.close();
        if let Some(task) = self.server.take() {
            let _ = task.await;
        }
    }

    /// Sets a tag's value (quality Good, timestamp now), writable or not.
    ///
    /// # Panics
    /// When the tag is unknown or the value does not fit its type (a test bug).
    pub fn set_value(&self, name: &str, v: serde_json::Value) {
        if let Err(e) = self.try_set_value(name, v) {
            panic!("sim.set_value({name:?}): {}: {}", e.code, e.message);
        }
    }

    /// [`SimHandle::set_value`] without the panic.
    pub fn try_set_value(&self, name: &str, v: serde_json::Value) -> Result<(), TagError> {
        self.state
            .store_mut()
            .force(name, Some(&v), Quality::Good, None)
    }

    /// Sets a tag's quality (and raw quality code), keeping its value; the
    /// timestamp becomes now.
    pub fn set_quality(
        &self,
        name: &str,
        quality: Quality,
        code: Option<u32>,
    ) -> Result<(), TagError> {
        self.state.store_mut().force(name, None, quality, code)
    }

    /// A tag's current value as the station serves it.
    pub fn value(&self, name: &str) -> Option<serde_json::Value> {
        self.state.store().get(name).map(|t| t.value.to_json())
    }

    /// Every tag name, in listing order.
    pub fn tag_names(&self) -> Vec<String> {
        self.state
            .store()
            .tags()
            .iter()
            .map(|t| t.info.name.clone())
            .collect()
    }

    /// Every tag's metadata, in listing order.
    pub fn tags(&self) -> Vec<TagInfo> {
        self.state
            .store()
            .tags()
            .iter()
            .map(|t| t.info.clone())
            .collect()
    }

    pub fn stats(&self) -> SimStats {
        self.state.stats.snapshot()
    }

    pub fn reset_stats(&self) {
        self.state.stats.reset();
    }

    /// The fault switches as they stand.
    pub fn faults(&self) -> Faults {
        self.state.faults().get()
    }

    /// Replaces the fault switches (see [`Faults`]); an outage starts at once.
    ///
    /// # Panics
    /// When a switch is out of range (a test bug).
    pub fn set_faults(&self, f: Faults) {
        if let Err(e) = self.state.apply_faults(f, None) {
            panic!("sim.set_faults: {e}");
        }
    }

    /// Adds a tag.
    ///
    /// # Panics
    /// When the name exists or the value does not fit the type (a test bug).
    pub fn add_tag(&self, info: TagInfo, v: serde_json::Value) {
        let name = info.name.clone();
        if let Err(e) = self.state.store_mut().add(info, &v) {
            panic!("sim.add_tag({name:?}): {}: {}", e.code, e.message);
        }
    }

    /// Removes a tag; false when there was none of that name.
    pub fn remove_tag(&self, name: &str) -> bool {
        self.state.store_mut().remove(name)
    }

    /// Raises, acknowledges or clears an alarm exactly.
    pub fn alarm(&self, cmd: AlarmCommand) -> Result<Alarm, AlarmError> {
        self.state.alarms().command(cmd, Utc::now())
    }

    /// The active alarms.
    pub fn active_alarms(&self) -> Vec<Alarm> {
        self.state.alarms().current()
    }

    /// Ends every session now (the `expire_tokens` fault).
    pub fn expire_tokens(&self) {
        self.state.sessions().expire_all();
    }
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr())
            .field("tags", &self.state.store().len())
            .field("auth", &self.state.opts.auth)
            .finish()
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.state.net.close();
    }
}

fn check_options(opts: &SimOptions) -> std::io::Result<()> {
    let bad = |m: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, m));
    if !opts.change_rate.is_finite() || opts.change_rate < 0.0 {
        return bad(format!(
            "change_rate must be a number >= 0, got {}",
            opts.change_rate
        ));
    }
    if opts.token_ttl.is_zero() {
        return bad("token_ttl must be longer than zero".into());
    }
    if opts.max_body_bytes == 0 {
        return bad("max_body_bytes must be at least 1".into());
    }
    if opts.auth != AuthMode::None && opts.users.is_empty() {
        return bad(format!(
            "auth {} needs at least one user",
            opts.auth.as_str()
        ));
    }
    Ok(())
}

/// Binds `listen` (port 0 picks one) and serves the simulator in the
/// background until the handle is shut down or dropped.
pub async fn start(listen: SocketAddr, opts: SimOptions) -> std::io::Result<SimHandle> {
    start_with(listen, opts, None).await
}

/// [`start`], serving HTTPS through `tls` when given (see [`tls::start_tls`]).
pub(crate) async fn start_with(
    listen: SocketAddr,
    opts: SimOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<SimHandle> {
    check_options(&opts)?;
    let cancel = CancellationToken::new();
    let net = Net::bind(listen, cancel.clone()).await?;
    let store = TagStore::generate(opts.tags, opts.seed);
    let state = Arc::new(SimState {
        store: RwLock::new(store),
        sessions: Mutex::new(Sessions::new(opts.users.clone(), opts.token_ttl)),
        faults: Mutex::new(FaultState::new(opts.seed)),
        stats: Stats::default(),
        alarms: Mutex::new(alarms::Alarms::new(opts.seed)),
        net: Arc::clone(&net),
        opts,
    });
    let router = match state.opts.dialect {
        Dialect::Generic => generic::router(Arc::clone(&state)),
        Dialect::WinccV7 => wincc_v7::router(Arc::clone(&state)),
        Dialect::Unified => unified::router(Arc::clone(&state)),
    };
    tokio::spawn(Arc::clone(&state).ticker(cancel.clone()));
    let app = router.into_make_service_with_connect_info::<ConnId>();
    let stop = cancel.clone();
    let server = tokio::spawn(async move {
        let served = match tls {
            None => {
                axum::serve(SimListener { net }, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }
            Some(acceptor) => {
                axum::serve(tls::TlsSimListener::new(SimListener { net }, acceptor), app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "simulator server failed");
        }
    });
    tracing::info!(
        addr = %state.net.addr(),
        tags = state.opts.tags,
        auth = state.opts.auth.as_str(),
        dialect = state.opts.dialect.as_str(),
        "WinCC simulator listening"
    );
    Ok(SimHandle {
        state,
        cancel,
        server: Some(server),
    })
}

/// Runs the simulator until `shutdown` completes (the CLI's `simulate`).
pub async fn run(
    listen: SocketAddr,
    opts: SimOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let banner_opts = (
        opts.tags,
        opts.change_rate,
        opts.dialect,
        opts.auth,
        opts.users.clone(),
    );
    let sim = start(listen, opts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the simulator on {listen}: {e}"))?;
    let (tags, rate, dialect, auth, users) = banner_opts;
    print!(
        "{}",
        banner(&sim.base_url(), tags, rate, dialect, auth, &users, None)
    );
    shutdown.await;
    sim.shutdown().await;
    Ok(())
}

/// What `simulate` prints at start: where it listens, how to log in, and a
/// `[wincc]` section to paste into a gateway configuration. Passwords given
/// with `--user` are not echoed (the snippet reads one from
/// `WINCC_PASSWORD`); only the built-in default user's is shown.
pub fn banner(
    base: &str,
    tags: usize,
    change_rate: f64,
    dialect: Dialect,
    auth: AuthMode,
    users: &[(String, String)],
    pinned_cert_sha256: Option<&str>,
) -> String {
    let api = match dialect {
        Dialect::Generic => base.to_string(),
        Dialect::WinccV7 => format!("{base}/WinCCRestService"),
        Dialect::Unified => format!("{base}/graphql"),
    };
    let auth_name = match auth {
        AuthMode::None => "none",
        AuthMode::Session => "session",
        AuthMode::Cookie => "cookie",
        AuthMode::Basic => "basic",
    };
    let default_users = users.len() == 1 && users[0] == ("gateway".into(), "gateway".into());
    let mut out = format!(
        "wincc-gateway simulate: {tags} tags, dialect {}, {:.0}% of them change per second\n\
         \n  base URL:  {api}\
         \n  stats:     {base}/_sim/stats\
         \n  auth:      {auth_name}",
        dialect.as_str(),
        change_rate * 100.0,
    );
    if auth != AuthMode::None {
        let names: Vec<&str> = users.iter().map(|(n, _)| n.as_str()).collect();
        if default_users {
            out.push_str("\n  users:     gateway (password \"gateway\"; set your own with --user NAME:PASSWORD)");
        } else {
            out.push_str(&format!(
                "\n  users:     {} (passwords as given with --user)",
                names.join(", ")
            ));
        }
    }
    out.push_str("\n\nPut this into the gateway's configuration");
    if auth != AuthMode::None {
        out.push_str(if default_users {
            " (and: export WINCC_PASSWORD=gateway)"
        } else {
            " (and export WINCC_PASSWORD with that user's password)"
        });
    }
    out.push_str(&format!(
        ":\n\n[wincc]\nbase_url = \"{api}\"\ndialect = \"{}\"\nauth = \"{auth_name}\"\n",
        dialect.as_str()
    ));
    if auth != AuthMode::None {
        let user = users.first().map(|(n, _)| n.as_str()).unwrap_or("gateway");
        out.push_str(&format!(
            "username = {user:?}\npassword_env = \"WINCC_PASSWORD\"\n"
        ));
    }
    if let Some(fp) = pinned_cert_sha256 {
        out.push_str(&format!("pinned_cert_sha256 = \"{fp}\"\n"));
    }
    out.push_str("\nPress Ctrl-C to stop.\n");
    out
}
