//! `[mqtt]` settings → rumqttc options (URL, TLS, credentials, session,
//! keep-alive, packet size, last will).

use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};

use super::MqttError;
use crate::config::{resolve_secret, MqttProtocol, MqttSettings};

/// Publishes that may be in flight at once (rumqttc's `inflight`).
pub(crate) const MAX_INFLIGHT: u16 = 100;

/// The topic prefix without trailing slashes, checked.
pub(crate) fn prefix(s: &MqttSettings) -> Result<String, MqttError> {
    let p = s.topic_prefix.trim_end_matches('/');
    if p.is_empty() || !crate::topic::is_valid_publish_topic(p) {
        return Err(MqttError::config(
            "topic_prefix",
            &s.topic_prefix,
            "must be non-empty and contain no + # or NUL",
        ));
    }
    Ok(p.to_string())
}

pub(crate) fn qos(s: &MqttSettings) -> Result<QoS, MqttError> {
    match s.qos {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        q => Err(MqttError::config(
            "qos",
            &q.to_string(),
            "must be 0, 1 or 2",
        )),
    }
}

/// Builds the rumqttc options, with `{prefix}/status` = `offline` as last will.
pub(crate) fn build(s: &MqttSettings, status_topic: &str) -> Result<MqttOptions, MqttError> {
    if s.protocol == MqttProtocol::V5 {
        return Err(MqttError::config(
            "protocol",
            "5",
            "MQTT 5 is not supported yet; use protocol = \"3.1.1\"",
        ));
    }
    let url = reqwest::Url::parse(&s.url)
        .map_err(|e| MqttError::config("url", &s.url, &format!("not a URL: {e}")))?;
    let tls = match url.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(MqttError::config(
                "url",
                &s.url,
                &format!("scheme {other:?} is not mqtt or mqtts"),
            ))
        }
    };
    if url.password().is_some() || !url.username().is_empty() {
        return Err(MqttError::config(
            "url",
            "(hidden)",
            "must not contain credentials; use username and password_env / password_file",
        ));
    }
    // IPv6 stays in brackets: rumqttc connects to "{host}:{port}".
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => return Err(MqttError::config("url", &s.url, "has no host")),
    };
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    if s.client_id.is_empty() {
        return Err(MqttError::config("client_id", "", "must not be empty"));
    }
    if s.keep_alive_s == 0 || s.keep_alive_s > u64::from(u16::MAX) {
        return Err(MqttError::config(
            "keep_alive_s",
            &s.keep_alive_s.to_string(),
            "must be between 1 and 65535",
        ));
    }
    if s.max_packet_size < 1024 || s.max_packet_size > 268_435_455 {
        return Err(MqttError::config(
            "max_packet_size",
            &s.max_packet_size.to_string(),
            "must be between 1024 and 268435455 bytes",
        ));
    }
    qos(s)?;

    let mut o = MqttOptions::new(s.client_id.clone(), host, port);
    o.set_keep_alive(Duration::from_secs(s.keep_alive_s));
    o.set_clean_session(s.clean_session);
    o.set_max_packet_size(s.max_packet_size, s.max_packet_size);
    o.set_inflight(MAX_INFLIGHT);
    o.set_last_will(LastWill::new(
        status_topic,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));

    let password =
        resolve_secret("mqtt.password", &s.password_env, &s.password_file).map_err(|p| {
            MqttError::Config {
                key: p.key,
                why: p.why,
            }
        })?;
    match (s.username.is_empty(), password) {
        (false, pw) => {
            let pw = pw
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default();
            o.set_credentials(s.username.clone(), pw);
        }
        (true, Some(_)) => {
            return Err(MqttError::config(
                "username",
                "",
                "a password is configured but no username (MQTT 3.1.1 needs both)",
            ))
        }
        (true, None) => {}
    }

    if tls {
        o.set_transport(tls_transport(s)?);
    } else if !s.ca_file.is_empty() || !s.client_cert_file.is_empty() {
        return Err(MqttError::config(
            "url",
            &s.url,
            "ca_file / client_cert_file are set but the URL is not mqtts://",
        ));
    }
    Ok(o)
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|e| MqttError::config(key, path, &format!("cannot read: {e}")))
}

fn tls_transport(s: &MqttSettings) -> Result<Transport, MqttError> {
    let client_auth = match (s.client_cert_file.is_empty(), s.client_key_file.is_empty()) {
        (true, true) => None,
        (false, false) => Some((
            read("client_cert_file", &s.client_cert_file)?,
            read("client_key_file", &s.client_key_file)?,
        )),
        _ => {
            return Err(MqttError::config(
                "client_key_file",
                &s.client_key_file,
                "client_cert_file and client_key_file go together",
            ))
        }
    };
    if !s.ca_file.is_empty() {
        let ca = read("ca_file", &s.ca_file)?;
        if !String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----") {
            return Err(MqttError::config(
                "ca_file",
                &s.ca_file,
                "holds no PEM certificate",
            ));
        }
        return Ok(Transport::tls(ca, client_auth, None));
    }
    if client_auth.is_some() {
        return Err(MqttError::config(
            "ca_file",
            "",
            "a client certificate needs ca_file (the broker's CA, PEM)",
        ));
    }
    // The system's trust store. rumqttc panics if the store cannot be read,
    // which must not take the gateway down.
    match std::panic::catch_unwind(TlsConfiguration::default) {
        Ok(cfg) => Ok(Transport::tls_with_config(cfg)),
        Err(_) => Err(MqttError::config(
            "ca_file",
            "",
            "the system trust store could not be read; set ca_file",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> MqttSettings {
        MqttSettings {
            url: url.into(),
            ..MqttSettings::default()
        }
    }

    #[test]
    fn urls_map_to_host_port_and_errors_name_the_key() {
        let o = build(&settings("mqtt://127.0.0.1:1999"), "p/status").unwrap();
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1999));
        let o = build(&settings("mqtt://[::1]"), "p/status").unwrap();
        assert_eq!(o.broker_address(), ("[::1]".to_string(), 1883));
        let e = build(&settings("http://x"), "p/status")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.url") && e.contains("http"), "{e}");
        let e = build(&settings("mqtt://u:secret@x"), "p/status")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        let mut s = settings("mqtt://x");
        s.protocol = MqttProtocol::V5;
        assert!(build(&s, "p/status")
            .unwrap_err()
            .to_string()
            .contains("MQTT 5"));
        s.protocol = MqttProtocol::V311;
        s.keep_alive_s = 0;
        assert!(build(&s, "p/status")
            .unwrap_err()
            .to_string()
            .contains("keep_alive_s"));
    }

    #[test]
    fn tls_needs_readable_pem_and_paired_client_files() {
        let mut s = settings("mqtts://localhost");
        s.ca_file = "/nonexistent/ca.pem".into();
        assert!(build(&s, "p/status")
            .unwrap_err()
            .to_string()
            .contains("mqtt.ca_file"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a cert").unwrap();
        s.ca_file = f.display().to_string();
        assert!(build(&s, "p/status")
            .unwrap_err()
            .to_string()
            .contains("no PEM"));
        s.client_cert_file = f.display().to_string();
        assert!(build(&s, "p/status")
            .unwrap_err()
            .to_string()
            .contains("go together"));
    }

    #[test]
    fn prefix_is_trimmed_and_checked() {
        let mut s = MqttSettings {
            topic_prefix: "a/b/".into(),
            ..MqttSettings::default()
        };
        assert_eq!(prefix(&s).unwrap(), "a/b");
        s.topic_prefix = "a/#".into();
        assert!(prefix(&s).is_err());
    }
}
