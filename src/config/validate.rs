//! Semantic validation of settings: every problem located by key, with the
//! bad value and why. Makes no connection.

use std::collections::BTreeSet;
use std::path::Path;

use super::{
    resolve_secret, AuthMode, Dialect, MqttProtocol, OpcuaRole, PollMode, Problem, Settings,
};
use crate::glob;

impl Settings {
    /// Semantic checks, one function per section; makes no connection.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        check_wincc(&mut p, &self.wincc);
        check_poll_groups(&mut p, &self.poll_groups, self.wincc.dialect);
        if self.alarms.enabled && self.alarms.interval_ms == 0 {
            p.push(prob(
                "alarms.interval_ms".into(),
                "0".into(),
                "must be at least 1",
            ));
        }
        if self.mqtt.enabled {
            check_mqtt(&mut p, &self.mqtt);
        }
        if self.opcua.enabled {
            check_opcua_endpoint(&mut p, &self.opcua);
            check_opcua_identities(&mut p, &self.opcua);
            check_opcua_limits(&mut p, &self.opcua);
        }
        p.extend(self.sparkplug.problems(&self.mqtt));
        if self.http.enabled && self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(prob(
                "http.listen".into(),
                q(&self.http.listen),
                "must be IP:PORT, e.g. 127.0.0.1:9100",
            ));
        }
        if self.http.enabled {
            check_http_users(&mut p, &self.http);
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.push(prob(
                "log.level".into(),
                q(&self.log.level),
                &format!("not a log filter: {e}"),
            ));
        }
        p
    }
}

/// `[wincc]`: the station's URL, dialect and auth, limits, TLS, secret.
fn check_wincc(p: &mut Vec<Problem>, w: &super::WinccSettings) {
    let mut bad = |key: &str, value: String, why: &str| {
        p.push(Problem {
            key: key.into(),
            value,
            why: why.into(),
        })
    };
    if w.base_url.is_empty() {
        bad(
            "wincc.base_url",
            String::new(),
            "is required (e.g. \"https://scada01:34569/api\")",
        );
    } else {
        match reqwest::Url::parse(&w.base_url) {
            Ok(u) if has_credentials(&u) => bad(
                "wincc.base_url",
                q(&without_credentials(&u)),
                "must not carry user:password@ (it would be logged and sent in clear); \
                 use wincc.username with wincc.password_env or wincc.password_file",
            ),
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                if u.host_str().is_none() {
                    bad("wincc.base_url", q(&w.base_url), "has no host");
                }
            }
            Ok(u) => bad(
                "wincc.base_url",
                q(&w.base_url),
                &format!("scheme {:?} is not http or https", u.scheme()),
            ),
            Err(e) => bad("wincc.base_url", q(&w.base_url), &format!("not a URL: {e}")),
        }
    }
    let auth_fits = match w.dialect {
        Dialect::Generic => true,
        Dialect::WinccV7 => matches!(w.auth, AuthMode::Basic | AuthMode::None),
        Dialect::Unified => matches!(w.auth, AuthMode::Session | AuthMode::None),
    };
    if !auth_fits {
        bad(
            "wincc.auth",
            format!("\"{}\"", w.auth.as_str()),
            match w.dialect {
                Dialect::WinccV7 => "the wincc-v7 REST service uses Basic auth on every request; use \"basic\"",
                _ => "WinCC Unified logs in with the login mutation and a Bearer token; use \"session\"",
            },
        );
    }
    if w.auth != AuthMode::None && w.username.is_empty() {
        bad(
            "wincc.username",
            String::new(),
            &format!("is required with auth = \"{}\"", w.auth.as_str()),
        );
    }
    if w.timeout_ms == 0 {
        bad("wincc.timeout_ms", "0".into(), "must be at least 1");
    }
    if w.max_tags == 0 {
        bad(
            "wincc.max_tags",
            "0".into(),
            "must be at least 1 (default 200000)",
        );
    }
    if w.write_timeout_ms > 600_000 {
        bad(
            "wincc.write_timeout_ms",
            w.write_timeout_ms.to_string(),
            "must be at most 600000 (10 min; 0 means timeout_ms): a write must not wait longer",
        );
    }
    if w.max_tags_per_request == 0 {
        bad(
            "wincc.max_tags_per_request",
            "0".into(),
            "must be at least 1",
        );
    }
    if w.rate_limit.requests_per_second == 0 {
        bad(
            "wincc.rate_limit.requests_per_second",
            "0".into(),
            "must be at least 1 (a rate of 0 would never poll)",
        );
    }
    if w.rate_limit.burst == 0 {
        bad("wincc.rate_limit.burst", "0".into(), "must be at least 1");
    }
    if w.rate_limit.max_in_flight == 0 {
        bad(
            "wincc.rate_limit.max_in_flight",
            "0".into(),
            "must be at least 1",
        );
    }
    if !w.pinned_cert_sha256.is_empty() && parse_fingerprint(&w.pinned_cert_sha256).is_none() {
        bad(
            "wincc.pinned_cert_sha256",
            q(&w.pinned_cert_sha256),
            "must be 64 hex digits (SHA-256 of the certificate's DER), colons allowed",
        );
    }
    if !w.ca_file.is_empty() && !Path::new(&w.ca_file).is_file() {
        bad("wincc.ca_file", q(&w.ca_file), "file does not exist");
    }
    if w.tls_skip_hostname_check && w.pinned_cert_sha256.trim().is_empty() && w.ca_file.is_empty() {
        bad(
            "wincc.tls_skip_hostname_check",
            "true".into(),
            "needs wincc.pinned_cert_sha256 or wincc.ca_file: without the host name, only a pin or your own CA says which certificate is the station's",
        );
    }
    if w.auth != AuthMode::None {
        if let Err(e) = resolve_secret("wincc.password", &w.password_env, &w.password_file) {
            p.push(e);
        }
    }
}

/// `[[poll_group]]`: unique names, intervals, globs, deadbands, modes.
fn check_poll_groups(p: &mut Vec<Problem>, groups: &[super::PollGroup], dialect: Dialect) {
    let mut names = BTreeSet::new();
    for (i, g) in groups.iter().enumerate() {
        let k = |f: &str| format!("poll_group[{i}].{f}");
        if g.name.trim().is_empty() {
            p.push(prob(k("name"), q(&g.name), "must not be empty"));
        } else if !names.insert(g.name.clone()) {
            p.push(prob(k("name"), q(&g.name), "is used by another poll group"));
        }
        if g.interval_ms == 0 {
            p.push(prob(k("interval_ms"), "0".into(), "must be at least 1"));
        }
        if g.tags.is_empty() {
            p.push(prob(
                k("tags"),
                "[]".into(),
                "an empty poll group polls nothing; list tag globs",
            ));
        }
        for (j, t) in g.tags.iter().enumerate() {
            if let Err(e) = glob::validate(t) {
                p.push(prob(
                    format!("poll_group[{i}].tags[{j}]"),
                    q(t),
                    &format!("glob does not parse: {}", e.reason),
                ));
            }
        }
        if !(g.deadband_abs >= 0.0 && g.deadband_abs.is_finite()) {
            p.push(prob(
                k("deadband_abs"),
                g.deadband_abs.to_string(),
                "must be a finite number >= 0",
            ));
        }
        if !(g.deadband_pct >= 0.0 && g.deadband_pct.is_finite()) {
            p.push(prob(
                k("deadband_pct"),
                g.deadband_pct.to_string(),
                "must be a finite number >= 0",
            ));
        }
        if g.mode == PollMode::Subscribe && dialect != Dialect::Unified {
            p.push(prob(
                k("mode"),
                "\"subscribe\"".into(),
                &format!(
                    "needs wincc.dialect = \"unified\" (it is \"{}\")",
                    dialect.as_str()
                ),
            ));
        }
    }
}

/// `[mqtt]` (when enabled): URL, QoS, prefixes, client id, secrets, TLS
/// files, response topics, buffer.
fn check_mqtt(p: &mut Vec<Problem>, m: &super::MqttSettings) {
    match reqwest::Url::parse(&m.url) {
        Ok(u) if has_credentials(&u) => p.push(prob(
            "mqtt.url".into(),
            q(&without_credentials(&u)),
            "must not carry user:password@ (it would be logged); \
             use mqtt.username with mqtt.password_env or mqtt.password_file",
        )),
        Ok(u) if matches!(u.scheme(), "mqtt" | "mqtts" | "tcp" | "ssl") => {
            if u.host_str().is_none_or(str::is_empty) {
                p.push(prob("mqtt.url".into(), q(&m.url), "has no host"));
            }
        }
        Ok(u) => p.push(prob(
            "mqtt.url".into(),
            q(&m.url),
            &format!("scheme {:?} is not mqtt or mqtts", u.scheme()),
        )),
        Err(e) => p.push(prob(
            "mqtt.url".into(),
            q(&m.url),
            &format!("not a URL: {e}"),
        )),
    }
    if m.qos > 2 {
        p.push(prob(
            "mqtt.qos".into(),
            m.qos.to_string(),
            "must be 0, 1 or 2",
        ));
    }
    if m.topic_prefix.is_empty() || m.topic_prefix.contains(['+', '#', '\0']) {
        p.push(prob(
            "mqtt.topic_prefix".into(),
            q(&m.topic_prefix),
            "must be non-empty and contain no + # or NUL",
        ));
    }
    if m.client_id.is_empty() {
        p.push(prob(
            "mqtt.client_id".into(),
            String::new(),
            "must not be empty",
        ));
    }
    if let Err(e) = resolve_secret("mqtt.password", &m.password_env, &m.password_file) {
        p.push(e);
    }
    for (key, f) in [
        ("mqtt.ca_file", &m.ca_file),
        ("mqtt.client_cert_file", &m.client_cert_file),
        ("mqtt.client_key_file", &m.client_key_file),
    ] {
        if !f.is_empty() && !Path::new(f).is_file() {
            p.push(prob(key.into(), q(f), "file does not exist"));
        }
    }
    if m.client_cert_file.is_empty() != m.client_key_file.is_empty() {
        p.push(prob(
            "mqtt.client_key_file".into(),
            q(&m.client_key_file),
            "client_cert_file and client_key_file go together",
        ));
    }
    if m.keep_alive_s == 0 {
        p.push(prob(
            "mqtt.keep_alive_s".into(),
            "0".into(),
            "must be at least 1",
        ));
    }
    check_globs(p, "mqtt.writable_tags", &m.writable_tags);
    let own = m.topic_prefix.trim_end_matches('/');
    let r = &m.response_topic_prefix;
    if !r.is_empty() {
        if !crate::topic::is_valid_publish_topic(r) {
            p.push(prob(
                "mqtt.response_topic_prefix".into(),
                q(r),
                "must contain no + # or NUL",
            ));
        } else if !own.is_empty()
            && (r.as_str() == own
                || r.starts_with(&format!("{own}/"))
                || own.starts_with(r.as_str()))
        {
            p.push(prob(
                "mqtt.response_topic_prefix".into(),
                q(r),
                "must lie outside topic_prefix (the gateway's own topics)",
            ));
        }
        if m.protocol != MqttProtocol::V5 {
            p.push(prob(
                "mqtt.response_topic_prefix".into(),
                q(r),
                "response topics exist in MQTT 5 only; set protocol = \"5\"",
            ));
        }
    }
    if m.buffer.enabled {
        check_buffer(p, &m.buffer);
    }
}

/// `[opcua]` endpoint (when enabled).
fn check_opcua_endpoint(p: &mut Vec<Problem>, o: &super::OpcuaSettings) {
    match reqwest::Url::parse(&o.endpoint) {
        Ok(u) if u.scheme() == "opc.tcp" && u.host_str().is_some() && u.port().is_some() => {}
        Ok(_) => p.push(prob(
            "opcua.endpoint".into(),
            q(&o.endpoint),
            "must look like opc.tcp://HOST:PORT/",
        )),
        Err(e) => p.push(prob(
            "opcua.endpoint".into(),
            q(&o.endpoint),
            &format!("not a URL: {e}"),
        )),
    }
}

/// `[opcua]` namespace, security policies and users (when enabled).
fn check_opcua_identities(p: &mut Vec<Problem>, o: &super::OpcuaSettings) {
    if o.namespace_uri.is_empty() {
        p.push(prob(
            "opcua.namespace_uri".into(),
            String::new(),
            "must not be empty",
        ));
    }
    if o.security_policies.is_empty() {
        p.push(prob(
            "opcua.security_policies".into(),
            "[]".into(),
            "list at least one policy",
        ));
    }
    for (i, pol) in o.security_policies.iter().enumerate() {
        if !OPCUA_POLICIES.contains(&pol.as_str()) {
            p.push(prob(
                format!("opcua.security_policies[{i}]"),
                q(pol),
                &format!("unknown policy; use one of {}", OPCUA_POLICIES.join(", ")),
            ));
        }
    }
    if !o.allow_anonymous && o.users.is_empty() {
        p.push(prob(
            "opcua.allow_anonymous".into(),
            "false".into(),
            "with no users nobody could connect; add [[opcua.users]]",
        ));
    }
    for (i, u) in o.users.iter().enumerate() {
        if u.username.is_empty() {
            p.push(prob(
                format!("opcua.users[{i}].username"),
                String::new(),
                "must not be empty",
            ));
        }
        match resolve_secret(
            &format!("opcua.users[{i}].password"),
            &u.password_env,
            &u.password_file,
        ) {
            Ok(Some(_)) => {}
            Ok(None) => p.push(prob(
                format!("opcua.users[{i}].password_env"),
                String::new(),
                "a user needs password_env or password_file",
            )),
            Err(e) => p.push(e),
        }
    }
    if o.write_enabled && !o.users.iter().any(|u| u.role == OpcuaRole::Write) {
        p.push(prob(
            "opcua.write_enabled".into(),
            "true".into(),
            "no user in opcua.users has role = \"write\": nobody could write \
             (anonymous sessions never write); add one, e.g. users = [{ username = \
             \"operator\", password_env = \"OPCUA_OPERATOR_PASSWORD\", role = \"write\" }]",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, u) in o.users.iter().enumerate() {
        if !u.username.is_empty() && !seen.insert(u.username.as_str()) {
            p.push(prob(
                format!("opcua.users[{i}].username"),
                q(&u.username),
                "is listed twice",
            ));
        }
    }
}

/// `[opcua]` publishing interval, limits, PKI directory and writable
/// globs (when enabled).
fn check_opcua_limits(p: &mut Vec<Problem>, o: &super::OpcuaSettings) {
    if !(10..=60_000).contains(&o.min_publishing_interval_ms) {
        p.push(prob(
            "opcua.min_publishing_interval_ms".into(),
            o.min_publishing_interval_ms.to_string(),
            "must be between 10 and 60000 (ms)",
        ));
    }
    let l = &o.limits;
    for (key, v, min) in [
        ("opcua.limits.max_sessions", l.max_sessions, 1),
        (
            "opcua.limits.max_subscriptions_per_session",
            l.max_subscriptions_per_session,
            1,
        ),
        (
            "opcua.limits.max_monitored_items_per_sub",
            l.max_monitored_items_per_sub,
            1,
        ),
        (
            "opcua.limits.max_monitored_items_per_call",
            l.max_monitored_items_per_call,
            1,
        ),
        ("opcua.limits.max_nodes_per_read", l.max_nodes_per_read, 1),
        ("opcua.limits.max_nodes_per_write", l.max_nodes_per_write, 1),
        (
            "opcua.limits.max_nodes_per_browse",
            l.max_nodes_per_browse,
            1,
        ),
        ("opcua.limits.max_array_length", l.max_array_length, 1),
        ("opcua.limits.max_message_size", l.max_message_size, 8192),
    ] {
        if v < min {
            p.push(prob(
                key.into(),
                v.to_string(),
                &format!("must be at least {min}"),
            ));
        }
    }
    if l.max_session_timeout_ms == 0 {
        p.push(prob(
            "opcua.limits.max_session_timeout_ms".into(),
            "0".into(),
            "must be at least 1",
        ));
    }
    if o.pki_dir.is_empty() {
        p.push(prob(
            "opcua.pki_dir".into(),
            String::new(),
            "must not be empty",
        ));
    }
    check_globs(p, "opcua.writable_tags", &o.writable_tags);
}

impl Settings {
    /// Credentials this configuration would send in clear: one line each,
    /// logged as a warning at every start (and shown by `check-config`).
    pub fn cleartext_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let w = &self.wincc;
        let scheme = |url: &str| reqwest::Url::parse(url).map(|u| u.scheme().to_string());
        if w.auth != AuthMode::None && scheme(&w.base_url).is_ok_and(|s| s == "http") {
            let what = if w.auth == AuthMode::Basic {
                "the station user name and password go in clear with every request"
            } else {
                "the station password (at login) and the session token travel in clear"
            };
            out.push(format!(
                "wincc.auth = \"{}\" over http:// ({}): {what}; use https://",
                w.auth.as_str(),
                w.base_url,
            ));
        }
        let m = &self.mqtt;
        let mqtt_password = !m.password_env.is_empty() || !m.password_file.is_empty();
        if m.enabled && mqtt_password && scheme(&m.url).is_ok_and(|s| s == "mqtt" || s == "tcp") {
            out.push(format!(
                "mqtt.url = {:?} with a password: the broker password travels in clear; use mqtts://",
                m.url
            ));
        }
        out
    }
}

/// True if a URL carries a user name or password (`user:password@host`).
fn has_credentials(u: &reqwest::Url) -> bool {
    !u.username().is_empty() || u.password().is_some()
}

/// The URL with its user name and password replaced, for error messages.
fn without_credentials(u: &reqwest::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("***");
    let _ = u.set_password(None);
    u.to_string()
}

/// Security policies the OPC UA server offers.
pub const OPCUA_POLICIES: [&str; 5] = [
    "None",
    "Basic256Sha256",
    "Aes128_Sha256_RsaOaep",
    "Aes256_Sha256_RsaPss",
    "Basic256",
];

/// Smallest `mqtt.buffer.max_bytes`: a few segments of the smallest size.
pub const MIN_BUFFER_BYTES: u64 = 1 << 20;

/// `[mqtt.buffer]`: sizes and pace in range, and the directory writable
/// (a probe file is created and removed; nothing else is created).
fn check_buffer(p: &mut Vec<Problem>, b: &super::MqttBufferSettings) {
    if b.dir.trim().is_empty() {
        p.push(prob(
            "mqtt.buffer.dir".into(),
            q(&b.dir),
            "must name a directory on local disk",
        ));
    } else if let Err(why) = crate::buffer::check_writable(Path::new(&b.dir)) {
        p.push(prob(
            "mqtt.buffer.dir".into(),
            q(&b.dir),
            &format!("is not writable: {why}; fix the path or its permissions"),
        ));
    }
    if b.max_bytes < MIN_BUFFER_BYTES {
        p.push(prob(
            "mqtt.buffer.max_bytes".into(),
            b.max_bytes.to_string(),
            "must be at least 1048576 (1 MiB)",
        ));
    }
    if !(1..=1_000_000).contains(&b.replay_per_second) {
        p.push(prob(
            "mqtt.buffer.replay_per_second".into(),
            b.replay_per_second.to_string(),
            "must be between 1 and 1000000",
        ));
    }
    if !(1..=60_000).contains(&b.sync_interval_ms) {
        p.push(prob(
            "mqtt.buffer.sync_interval_ms".into(),
            b.sync_interval_ms.to_string(),
            "must be between 1 and 60000 (a power cut loses at most this much)",
        ));
    }
}

/// `[[http.users]]`: each named once, each with a password that resolves.
fn check_http_users(p: &mut Vec<Problem>, h: &super::HttpSettings) {
    let mut seen = BTreeSet::new();
    for (i, u) in h.users.iter().enumerate() {
        let key = format!("http.users[{i}]");
        if u.username.is_empty()
            || u.username.contains(':')
            || u.username.chars().any(char::is_control)
        {
            p.push(prob(
                format!("{key}.username"),
                q(&u.username),
                "must be non-empty, without ':' or control characters (HTTP Basic)",
            ));
        } else if !seen.insert(u.username.as_str()) {
            p.push(prob(
                format!("{key}.username"),
                q(&u.username),
                "is listed twice",
            ));
        }
        match resolve_secret(
            &format!("{key}.password"),
            &u.password_env,
            &u.password_file,
        ) {
            Ok(Some(s)) if s.expose().is_empty() => p.push(prob(
                format!("{key}.password_env"),
                q(&u.password_env),
                "the password is empty; set a non-empty one",
            )),
            Ok(Some(_)) => {}
            Ok(None) => p.push(prob(
                format!("{key}.password_env"),
                String::new(),
                "a user needs password_env or password_file",
            )),
            Err(e) => p.push(e),
        }
    }
}

fn check_globs(p: &mut Vec<Problem>, key: &str, globs: &[String]) {
    for (i, g) in globs.iter().enumerate() {
        if let Err(e) = glob::validate(g) {
            p.push(prob(
                format!("{key}[{i}]"),
                q(g),
                &format!("glob does not parse: {}", e.reason),
            ));
        }
    }
}

fn prob(key: String, value: String, why: &str) -> Problem {
    Problem {
        key,
        value,
        why: why.into(),
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

/// Parses `pinned_cert_sha256`: 64 hex digits, any case, colons allowed.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
