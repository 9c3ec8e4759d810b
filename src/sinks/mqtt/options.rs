//! `[mqtt]` settings → rumqttc options for MQTT 3.1.1 or 5 (URL, TLS,
//! credentials, session, keep-alive, packet size, last will).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{TlsConfiguration, Transport};

use super::link::Qos;
use super::MqttError;
use crate::config::{resolve_secret, MqttProtocol, MqttSettings};

/// Publishes that may be in flight at once (rumqttc's `inflight`; under
/// MQTT 5 the broker's receive maximum may lower it).
pub(crate) const MAX_INFLIGHT: u16 = 100;

/// rumqttc options of the configured protocol.
pub(crate) enum Options {
    V4(Box<rumqttc::MqttOptions>),
    V5(Box<rumqttc::v5::MqttOptions>),
}

impl Options {
    /// `(host, port)` as rumqttc connects to it.
    pub(crate) fn broker_address(&self) -> (String, u16) {
        match self {
            Options::V4(o) => o.broker_address(),
            Options::V5(o) => o.broker_address(),
        }
    }
}

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

pub(crate) fn qos(s: &MqttSettings) -> Result<Qos, MqttError> {
    match s.qos {
        0 => Ok(Qos::AtMostOnce),
        1 => Ok(Qos::AtLeastOnce),
        2 => Ok(Qos::ExactlyOnce),
        q => Err(MqttError::config(
            "qos",
            &q.to_string(),
            "must be 0, 1 or 2",
        )),
    }
}

/// Builds the rumqttc options, with `{prefix}/status` = `offline` (retained,
/// QoS 1) as last will.
pub(crate) fn build(s: &MqttSettings, status_topic: &str) -> Result<Options, MqttError> {
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

    let password =
        resolve_secret("mqtt.password", &s.password_env, &s.password_file).map_err(|p| {
            MqttError::Config {
                key: p.key,
                why: p.why,
            }
        })?;
    let credentials = match (s.username.is_empty(), password) {
        (false, pw) => Some((
            s.username.clone(),
            pw.map(|p| p.expose().to_string()).unwrap_or_default(),
        )),
        // MQTT 5 allows a password without a user name (e.g. a token).
        (true, Some(pw)) if s.protocol == MqttProtocol::V5 => {
            Some((String::new(), pw.expose().to_string()))
        }
        (true, Some(_)) => {
            return Err(MqttError::config(
                "username",
                "",
                "a password is configured but no username (MQTT 3.1.1 needs both)",
            ))
        }
        (true, None) => None,
    };

    let transport = if tls {
        let config = super::tls::client_config(s)?;
        Some(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )))
    } else if !s.ca_file.is_empty() || !s.client_cert_file.is_empty() {
        return Err(MqttError::config(
            "url",
            &s.url,
            "ca_file / client_cert_file are set but the URL is not mqtts://",
        ));
    } else {
        None
    };
    let keep_alive = Duration::from_secs(s.keep_alive_s);

    match s.protocol {
        MqttProtocol::V311 => {
            use rumqttc::{LastWill, MqttOptions, QoS};
            let mut o = MqttOptions::new(s.client_id.clone(), host, port);
            o.set_keep_alive(keep_alive);
            o.set_clean_session(s.clean_session);
            o.set_max_packet_size(s.max_packet_size, s.max_packet_size);
            o.set_inflight(MAX_INFLIGHT);
            o.set_last_will(LastWill::new(
                status_topic,
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
            if let Some((user, pw)) = credentials {
                o.set_credentials(user, pw);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            Ok(Options::V4(Box::new(o)))
        }
        MqttProtocol::V5 => {
            use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
            use rumqttc::v5::mqttbytes::QoS;
            use rumqttc::v5::MqttOptions;
            let mut o = MqttOptions::new(s.client_id.clone(), host, port);
            o.set_keep_alive(keep_alive);
            o.set_clean_start(s.clean_session);
            // Under MQTT 5 the session ends when the connection does unless
            // the client asks for a session expiry interval, so
            // `clean_session = false` alone would give no persistent session.
            // u32::MAX means "never expires", as a 3.1.1 persistent session.
            o.set_session_expiry_interval((!s.clean_session).then_some(u32::MAX));
            // Our limit for incoming packets, announced to the broker. The
            // broker's limit for ours comes in its CONNACK.
            o.set_max_packet_size(Some(s.max_packet_size as u32));
            o.set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
            let will = LastWillProperties {
                delay_interval: None,
                payload_format_indicator: Some(1),
                message_expiry_interval: None,
                content_type: Some("text/plain".into()),
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            };
            o.set_last_will(LastWill::new(
                status_topic,
                "offline",
                QoS::AtLeastOnce,
                true,
                Some(will),
            ));
            if let Some((user, pw)) = credentials {
                o.set_credentials(user, pw);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            Ok(Options::V5(Box::new(o)))
        }
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
        assert!(matches!(o, Options::V4(_)));
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1999));
        let o = build(&settings("mqtt://[::1]"), "p/status").unwrap();
        assert_eq!(o.broker_address(), ("[::1]".to_string(), 1883));
        let e = build(&settings("http://x"), "p/status")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("mqtt.url") && e.contains("http"), "{e}");
        let e = build(&settings("mqtt://u:secret@x"), "p/status")
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        let mut s = settings("mqtt://x");
        s.keep_alive_s = 0;
        for protocol in [MqttProtocol::V311, MqttProtocol::V5] {
            s.protocol = protocol;
            assert!(build(&s, "p/status")
                .err()
                .unwrap()
                .to_string()
                .contains("keep_alive_s"));
        }
    }

    fn v5(s: &MqttSettings) -> rumqttc::v5::MqttOptions {
        match build(s, "p/status").unwrap() {
            Options::V5(o) => *o,
            Options::V4(_) => panic!("protocol 5 gave MQTT 3.1.1 options"),
        }
    }

    #[test]
    fn protocol_5_maps_session_will_limits_and_credentials() {
        let mut s = settings("mqtt://127.0.0.1:1999");
        s.protocol = MqttProtocol::V5;
        s.client_id = "gw-1".into();
        s.keep_alive_s = 7;
        s.max_packet_size = 4096;
        let o = v5(&s);
        assert_eq!(o.broker_address(), ("127.0.0.1".to_string(), 1999));
        assert_eq!(o.client_id(), "gw-1");
        assert_eq!(o.keep_alive(), Duration::from_secs(7));
        assert!(o.clean_start());
        assert_eq!(o.session_expiry_interval(), None);
        assert_eq!(o.max_packet_size(), Some(4096));
        assert_eq!(o.get_outgoing_inflight_upper_limit(), Some(MAX_INFLIGHT));
        assert!(o.credentials().is_none());
        let will = o.last_will().expect("last will");
        assert_eq!(&will.topic[..], b"p/status");
        assert_eq!(&will.message[..], b"offline");
        assert!(will.retain);
        assert_eq!(will.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
        let props = will.properties.expect("will properties");
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.payload_format_indicator, Some(1));

        // A persistent session must outlive the connection under MQTT 5.
        s.clean_session = false;
        let o = v5(&s);
        assert!(!o.clean_start());
        assert_eq!(o.session_expiry_interval(), Some(u32::MAX));

        // A password without a user name: fine for 5, refused for 3.1.1.
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "token\n").unwrap();
        s.password_file = pw.display().to_string();
        let login = v5(&s).credentials().expect("credentials");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("", "token")
        );
        s.protocol = MqttProtocol::V311;
        let e = build(&s, "p/status").err().unwrap().to_string();
        assert!(e.contains("mqtt.username") && !e.contains("token"), "{e}");
        s.username = "u".into();
        assert!(matches!(build(&s, "p/status").unwrap(), Options::V4(_)));

        // mqtts:// gets the rustls configuration for either protocol.
        s.protocol = MqttProtocol::V5;
        s.url = "mqtts://localhost".into();
        s.ca_file = pw.display().to_string();
        let e = build(&s, "p/status").err().unwrap().to_string();
        assert!(e.contains("mqtt.ca_file") && e.contains("no PEM"), "{e}");
        s.ca_file.clear();
        if !rustls_native_certs::load_native_certs().certs.is_empty() {
            let o = v5(&s);
            assert_eq!(o.broker_address(), ("localhost".to_string(), 8883));
            assert!(matches!(
                o.transport(),
                Transport::Tls(TlsConfiguration::Rustls(_))
            ));
        }
    }

    #[test]
    fn tls_needs_readable_pem_and_paired_client_files() {
        let mut s = settings("mqtts://localhost");
        s.ca_file = "/nonexistent/ca.pem".into();
        assert!(build(&s, "p/status")
            .err()
            .unwrap()
            .to_string()
            .contains("mqtt.ca_file"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a cert").unwrap();
        s.ca_file = f.display().to_string();
        assert!(build(&s, "p/status")
            .err()
            .unwrap()
            .to_string()
            .contains("no PEM"));
        s.client_cert_file = f.display().to_string();
        assert!(build(&s, "p/status")
            .err()
            .unwrap()
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
