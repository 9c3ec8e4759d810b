//! The rustls client configuration for `mqtts://`: the system's trust store
//! plus the certificates in `ca_file` (in addition, not instead), and the
//! optional client certificate. The same for MQTT 3.1.1 and 5.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::MqttError;
use crate::config::MqttSettings;

/// The trust anchors and where they came from.
pub(crate) struct Roots {
    pub store: RootCertStore,
    pub from_system: usize,
    pub from_ca_file: usize,
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|e| MqttError::config(key, path, &format!("cannot read: {e}")))
}

/// The certificates of a PEM file (`key` names the setting in errors).
fn certificates(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MqttError::config(key, path, &format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(MqttError::config(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The system's trust store plus `ca_file`.
pub(crate) fn roots(s: &MqttSettings) -> Result<Roots, MqttError> {
    roots_with(s, rustls_native_certs::load_native_certs())
}

/// [`roots`] with the system store already loaded (tests pass a broken one).
fn roots_with(
    s: &MqttSettings,
    system: rustls_native_certs::CertificateResult,
) -> Result<Roots, MqttError> {
    let mut store = RootCertStore::empty();
    let mut from_ca_file = 0;
    if !s.ca_file.is_empty() {
        let (added, _) = store.add_parsable_certificates(certificates("ca_file", &s.ca_file)?);
        if added == 0 {
            return Err(MqttError::config(
                "ca_file",
                &s.ca_file,
                "holds no usable CA certificate",
            ));
        }
        from_ca_file = added;
    }
    let (from_system, _) = store.add_parsable_certificates(system.certs);
    let errors = system
        .errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if from_system == 0 {
        if from_ca_file == 0 {
            return Err(MqttError::config(
                "ca_file",
                "",
                &format!(
                    "is not set and the system trust store could not be read ({}); set ca_file to the broker's CA (PEM)",
                    if errors.is_empty() { "it is empty" } else { &errors }
                ),
            ));
        }
        tracing::warn!(
            errors = %errors,
            "the system trust store could not be read; trusting only mqtt.ca_file"
        );
    } else if !errors.is_empty() {
        tracing::debug!(errors = %errors, "parts of the system trust store could not be read");
    }
    Ok(Roots {
        store,
        from_system,
        from_ca_file,
    })
}

/// The client configuration for `mqtts://` (ring, TLS 1.2 and 1.3).
pub(crate) fn client_config(s: &MqttSettings) -> Result<ClientConfig, MqttError> {
    let client_auth = match (s.client_cert_file.is_empty(), s.client_key_file.is_empty()) {
        (true, true) => None,
        (false, false) => {
            let certs = certificates("client_cert_file", &s.client_cert_file)?;
            let pem = read("client_key_file", &s.client_key_file)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                MqttError::config(
                    "client_key_file",
                    &s.client_key_file,
                    &format!("holds no usable PEM private key: {e}"),
                )
            })?;
            Some((certs, key))
        }
        _ => {
            return Err(MqttError::config(
                "client_key_file",
                &s.client_key_file,
                "client_cert_file and client_key_file go together",
            ))
        }
    };
    let roots = roots(s)?;
    tracing::debug!(
        system = roots.from_system,
        ca_file = roots.from_ca_file,
        "MQTT TLS trust anchors loaded"
    );
    let provider = crate::crypto::provider();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::config("url", "", &format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots.store);
    match client_auth {
        None => Ok(builder.with_no_client_auth()),
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            MqttError::config(
                "client_key_file",
                &s.client_key_file,
                &format!("does not fit client_cert_file: {e}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(dir: &std::path::Path) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let f = dir.join("ca.pem");
        std::fs::write(&f, cert.pem()).unwrap();
        f.display().to_string()
    }

    #[test]
    fn ca_file_is_trusted_in_addition_to_the_system_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = MqttSettings {
            ca_file: ca_pem(dir.path()),
            ..MqttSettings::default()
        };
        let system = rustls_native_certs::load_native_certs();
        let system_certs = system.certs.len();
        let r = roots(&s).unwrap();
        assert_eq!(r.from_ca_file, 1);
        if system_certs > 0 {
            // This machine has a system store: both are trusted.
            assert!(r.from_system > 0);
            assert_eq!(r.store.len(), r.from_system + 1);
            assert!(r.store.len() > 1);
        }
        assert!(client_config(&s).is_ok());
    }

    #[test]
    fn an_unreadable_system_store_is_an_error_only_without_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let broken = || rustls_native_certs::CertificateResult::default();
        let mut s = MqttSettings::default();
        let e = roots_with(&s, broken()).err().unwrap().to_string();
        assert!(
            e.contains("mqtt.ca_file") && e.contains("system trust store"),
            "{e}"
        );
        s.ca_file = ca_pem(dir.path());
        let r = roots_with(&s, broken()).unwrap();
        assert_eq!((r.from_system, r.from_ca_file, r.store.len()), (0, 1, 1));
    }

    #[test]
    fn client_certificate_and_key_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k, junk) = (
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            dir.path().join("junk.pem"),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(&junk, "nothing here").unwrap();
        let mut s = MqttSettings {
            ca_file: ca_pem(dir.path()),
            client_cert_file: c.display().to_string(),
            client_key_file: k.display().to_string(),
            ..MqttSettings::default()
        };
        assert!(client_config(&s).is_ok());
        s.client_key_file = junk.display().to_string();
        let e = client_config(&s).err().unwrap().to_string();
        assert!(e.contains("mqtt.client_key_file"), "{e}");
        s.client_key_file = k.display().to_string();
        s.client_cert_file = junk.display().to_string();
        let e = client_config(&s).err().unwrap().to_string();
        assert!(
            e.contains("mqtt.client_cert_file") && e.contains("no PEM"),
            "{e}"
        );
    }
}
