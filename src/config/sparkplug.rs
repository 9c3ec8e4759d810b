//! `[sparkplug]` (contract §10): the Sparkplug B edge node's own MQTT
//! connection and identity, and its checks for `check-config`.

use std::path::Path;

use serde::Deserialize;

use super::{resolve_secret, MqttProtocol, MqttSettings, Problem};

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SparkplugSettings {
    pub enabled: bool,
    /// Its own connection: `mqtt://` or `mqtts://`, MQTT 3.1.1 always.
    pub url: String,
    pub client_id: String,
    pub username: String,
    pub password_env: String,
    pub password_file: String,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
    pub keep_alive_s: u64,
    pub max_packet_size: usize,
    pub group_id: String,
    pub edge_node_id: String,
    /// The WinCC station as a Sparkplug device.
    pub device_id: String,
    /// If set: births only while `spBv1.0/STATE/{primary_host_id}` is online.
    pub primary_host_id: String,
    /// Where the `bdSeq` of this edge node is kept across restarts.
    pub state_dir: String,
    pub write_enabled: bool,
    pub writable_tags: Vec<String>,
}

impl Default for SparkplugSettings {
    fn default() -> Self {
        SparkplugSettings {
            enabled: false,
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "wincc-gateway-station1-spb".into(),
            username: String::new(),
            password_env: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            keep_alive_s: 30,
            max_packet_size: 16 * 1024 * 1024,
            group_id: "WinCC".into(),
            edge_node_id: "station1".into(),
            device_id: "wincc".into(),
            primary_host_id: String::new(),
            state_dir: "state".into(),
            write_enabled: false,
            writable_tags: Vec::new(),
        }
    }
}

impl SparkplugSettings {
    /// The connection part as `[mqtt]` settings (MQTT 3.1.1, clean
    /// session), so the MQTT sink's option and TLS code serves both.
    pub fn connection(&self) -> MqttSettings {
        MqttSettings {
            enabled: self.enabled,
            url: self.url.clone(),
            protocol: MqttProtocol::V311,
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            keep_alive_s: self.keep_alive_s,
            clean_session: true,
            max_packet_size: self.max_packet_size,
            write_enabled: self.write_enabled,
            writable_tags: self.writable_tags.clone(),
            ..MqttSettings::default()
        }
    }

    /// Located problems (`sparkplug.KEY`); none when disabled.
    pub(crate) fn problems(&self, mqtt: &MqttSettings) -> Vec<Problem> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        // `value` as written in the file: strings quoted, numbers not.
        let mut bad = |key: &str, value: String, why: &str| {
            p.push(Problem {
                key: format!("sparkplug.{key}"),
                value,
                why: why.into(),
            })
        };
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "mqtt" | "mqtts" | "tcp" | "ssl") => {
                if u.host_str().is_none_or(str::is_empty) {
                    bad("url", q(&self.url), "has no host");
                }
                if !u.username().is_empty() || u.password().is_some() {
                    bad(
                        "url",
                        "(hidden)".into(),
                        "must not contain credentials; use username and password_env / password_file",
                    );
                }
            }
            Ok(u) => bad(
                "url",
                q(&self.url),
                &format!("scheme {:?} is not mqtt or mqtts", u.scheme()),
            ),
            Err(e) => bad("url", q(&self.url), &format!("not a URL: {e}")),
        }
        for (key, id) in [
            ("group_id", &self.group_id),
            ("edge_node_id", &self.edge_node_id),
            ("device_id", &self.device_id),
        ] {
            if !is_sparkplug_id(id) {
                bad(
                    key,
                    q(id),
                    "must be non-empty and contain no / + # or NUL (it is a topic level)",
                );
            }
        }
        if !self.primary_host_id.is_empty() && !is_sparkplug_id(&self.primary_host_id) {
            bad(
                "primary_host_id",
                q(&self.primary_host_id),
                "must contain no / + # or NUL (it is a topic level); empty means no primary host",
            );
        }
        if self.client_id.is_empty() {
            bad("client_id", String::new(), "must not be empty");
        } else if mqtt.enabled && mqtt.client_id == self.client_id && same_broker(mqtt, &self.url) {
            bad(
                "client_id",
                q(&self.client_id),
                "is also mqtt.client_id on the same broker: the two connections would throw each other off; pick another",
            );
        }
        if self.keep_alive_s == 0 || self.keep_alive_s > u64::from(u16::MAX) {
            bad(
                "keep_alive_s",
                self.keep_alive_s.to_string(),
                "must be between 1 and 65535",
            );
        }
        if self.max_packet_size < 1024 || self.max_packet_size > 268_435_455 {
            bad(
                "max_packet_size",
                self.max_packet_size.to_string(),
                "must be between 1024 and 268435455 bytes (a DBIRTH lists every tag: allow about 100 bytes per tag)",
            );
        }
        if self.state_dir.is_empty() {
            bad(
                "state_dir",
                String::new(),
                "must not be empty: bdSeq is kept there across restarts",
            );
        } else if Path::new(&self.state_dir).is_file() {
            bad(
                "state_dir",
                q(&self.state_dir),
                "is a file, not a directory",
            );
        }
        for (key, f) in [
            ("ca_file", &self.ca_file),
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        ] {
            if !f.is_empty() && !Path::new(f).is_file() {
                bad(key, q(f), "file does not exist");
            }
        }
        if self.client_cert_file.is_empty() != self.client_key_file.is_empty() {
            bad(
                "client_key_file",
                q(&self.client_key_file),
                "client_cert_file and client_key_file go together",
            );
        }
        for (i, g) in self.writable_tags.iter().enumerate() {
            if let Err(e) = crate::glob::validate(g) {
                bad(
                    &format!("writable_tags[{i}]"),
                    q(g),
                    &format!("glob does not parse: {}", e.reason),
                );
            }
        }
        // The JSON sink checks [mqtt.buffer] when it runs; without it the
        // Sparkplug sink is the one using the buffer.
        if mqtt.buffer.enabled && !mqtt.enabled {
            buffer_problems(&mut p, &mqtt.buffer);
        }
        if let Err(e) = resolve_secret(
            "sparkplug.password",
            &self.password_env,
            &self.password_file,
        ) {
            p.push(e);
        } else if self.username.is_empty()
            && !(self.password_env.is_empty() && self.password_file.is_empty())
        {
            p.push(Problem {
                key: "sparkplug.username".into(),
                value: String::new(),
                why: "a password is configured but no username (MQTT 3.1.1 needs both)".into(),
            });
        }
        p
    }
}

/// `[mqtt.buffer]` as the Sparkplug sink uses it (`{dir}/sparkplug`).
fn buffer_problems(p: &mut Vec<Problem>, b: &super::MqttBufferSettings) {
    let mut bad = |key: &str, value: String, why: String| {
        p.push(Problem {
            key: format!("mqtt.buffer.{key}"),
            value,
            why,
        })
    };
    if b.dir.trim().is_empty() {
        bad(
            "dir",
            q(&b.dir),
            "must name a directory on local disk".into(),
        );
    } else if let Err(why) = crate::buffer::check_writable(Path::new(&b.dir)) {
        bad(
            "dir",
            q(&b.dir),
            format!("is not writable (the Sparkplug buffer goes in its subdirectory sparkplug): {why}; fix the path or its permissions"),
        );
    }
    if b.max_bytes < super::validate::MIN_BUFFER_BYTES {
        bad(
            "max_bytes",
            b.max_bytes.to_string(),
            "must be at least 1048576 (1 MiB)".into(),
        );
    }
    if !(1..=1_000_000).contains(&b.replay_per_second) {
        bad(
            "replay_per_second",
            b.replay_per_second.to_string(),
            "must be between 1 and 1000000".into(),
        );
    }
    if !(1..=60_000).contains(&b.sync_interval_ms) {
        bad(
            "sync_interval_ms",
            b.sync_interval_ms.to_string(),
            "must be between 1 and 60000 (a power cut loses at most this much)".into(),
        );
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

/// A Sparkplug id is one topic level: non-empty, no `/ + #` or NUL.
fn is_sparkplug_id(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

fn same_broker(mqtt: &MqttSettings, url: &str) -> bool {
    let addr = |u: &str| {
        reqwest::Url::parse(u)
            .ok()
            .map(|u| (u.host_str().map(str::to_string), u.port()))
    };
    addr(&mqtt.url) == addr(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> SparkplugSettings {
        SparkplugSettings {
            enabled: true,
            ..SparkplugSettings::default()
        }
    }

    fn keys(s: &SparkplugSettings, m: &MqttSettings) -> Vec<String> {
        s.problems(m).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn defaults_are_valid_and_disabled_is_never_checked() {
        let m = MqttSettings::default();
        assert!(keys(&enabled(), &m).is_empty());
        let off = SparkplugSettings {
            url: "http://x".into(),
            ..SparkplugSettings::default()
        };
        assert!(keys(&off, &m).is_empty());
    }

    #[test]
    fn problems_are_located() {
        let m = MqttSettings::default();
        let s = SparkplugSettings {
            url: "http://broker".into(),
            group_id: "a/b".into(),
            edge_node_id: String::new(),
            device_id: "d#".into(),
            primary_host_id: "h+".into(),
            keep_alive_s: 0,
            max_packet_size: 10,
            state_dir: String::new(),
            writable_tags: vec!["[".into()],
            client_cert_file: "/nonexistent".into(),
            password_env: "WINCC_GW_TEST_SURELY_UNSET_VAR".into(),
            ..enabled()
        };
        let k = keys(&s, &m);
        for want in [
            "sparkplug.url",
            "sparkplug.group_id",
            "sparkplug.edge_node_id",
            "sparkplug.device_id",
            "sparkplug.primary_host_id",
            "sparkplug.keep_alive_s",
            "sparkplug.max_packet_size",
            "sparkplug.state_dir",
            "sparkplug.writable_tags[0]",
            "sparkplug.client_cert_file",
            "sparkplug.client_key_file",
            "sparkplug.password_env",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} missing in {k:?}");
        }
    }

    #[test]
    fn the_buffer_is_checked_for_sparkplug_when_the_json_sink_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let mut m = MqttSettings {
            enabled: false,
            ..MqttSettings::default()
        };
        m.buffer = crate::config::MqttBufferSettings {
            enabled: true,
            dir: file.join("sub").display().to_string(),
            max_bytes: 10,
            replay_per_second: 0,
            sync_interval_ms: 0,
        };
        let k = keys(&enabled(), &m);
        for want in [
            "mqtt.buffer.dir",
            "mqtt.buffer.max_bytes",
            "mqtt.buffer.replay_per_second",
            "mqtt.buffer.sync_interval_ms",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} missing in {k:?}");
        }
        m.buffer.dir = dir.path().join("buffer").display().to_string();
        m.buffer.max_bytes = 1 << 20;
        m.buffer.replay_per_second = 10;
        m.buffer.sync_interval_ms = 100;
        assert!(keys(&enabled(), &m).is_empty());
    }

    #[test]
    fn the_json_sinks_client_id_on_the_same_broker_is_refused() {
        let m = MqttSettings::default();
        let s = SparkplugSettings {
            client_id: m.client_id.clone(),
            ..enabled()
        };
        assert_eq!(keys(&s, &m), vec!["sparkplug.client_id".to_string()]);
        let elsewhere = SparkplugSettings {
            url: "mqtt://other:1883".into(),
            ..s
        };
        assert!(keys(&elsewhere, &m).is_empty());
    }
}
