//! The station's TLS trust, one rustls configuration for every connection
//! to it (HTTPS and the Unified `wss://` subscriptions alike).
//!
//! Certificate pinning (`wincc.pinned_cert_sha256`) trusts exactly one
//! end-entity certificate, named by the SHA-256 of its DER encoding,
//! whatever its issuer, host name or validity dates (WinCC stations present
//! self-signed certificates made by the WinCC Certificate Manager; a
//! Unified runtime's names only `localhost`). The handshake signatures are
//! still verified with the crypto provider's algorithms, so only the holder
//! of that certificate's private key can complete the handshake.
//!
//! `wincc.ca_file` adds trust anchors to the system's; with
//! `wincc.tls_skip_hostname_check = true` the chain must lead to `ca_file`
//! alone (never to a public CA, whose certificates for other hosts would
//! otherwise pass) and only the host-name check is skipped.
//! `accept_invalid_certs` verifies nothing but the handshake signature.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::ConnectError;
use crate::config::WinccSettings;

/// Lower-case hex of the SHA-256 of `der`, bytes separated by `:`
/// (the form certificate tools print).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut s = String::with_capacity(95);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The presented certificate is not the pinned one. Its `Debug` is its
/// message too, because rustls shows the cause of a refused certificate
/// with `{:?}`.
pub struct PinMismatch {
    /// Fingerprint from the configuration.
    pub expected: String,
    /// Fingerprint of the certificate the station presented.
    pub presented: String,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the station's certificate does not match wincc.pinned_cert_sha256: expected {}, presented {}",
            self.expected, self.presented
        )
    }
}

impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

/// Which end-entity certificates a [`StationVerifier`] accepts.
#[derive(Debug)]
enum Accept {
    /// Exactly the one with this SHA-256 (`pinned_cert_sha256`), whatever
    /// its issuer, names or dates.
    Pinned([u8; 32]),
    /// Any (`accept_invalid_certs`).
    Any,
    /// One that chains to these roots, whatever its host name (see the
    /// module docs: only ever built over `ca_file` alone).
    AnyName(Arc<WebPkiServerVerifier>),
}

/// Accepts the end-entity certificates [`Accept`] names; the handshake
/// signatures are always verified with the provider's algorithms.
#[derive(Debug)]
struct StationVerifier {
    accept: Accept,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for StationVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin = match &self.accept {
            Accept::Any => return Ok(ServerCertVerified::assertion()),
            Accept::AnyName(chain) => {
                return match chain.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ) {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) => Ok(ServerCertVerified::assertion()),
                    other => other,
                }
            }
            Accept::Pinned(pin) => pin,
        };
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if bool::from(subtle::ConstantTimeEq::ct_eq(&got[..], &pin[..])) {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            expected: fingerprint_of_digest(pin),
            presented: fingerprint(end_entity.as_ref()),
        };
        tracing::warn!(expected = %mismatch.expected, presented = %mismatch.presented, "station certificate does not match the pinned fingerprint");
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn fingerprint_of_digest(d: &[u8; 32]) -> String {
    d.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A rustls client configuration trusting only the certificate whose DER
/// has the SHA-256 `pinned` (hex, any case, colons allowed).
pub fn pinned_client_config(pinned: &str) -> Result<rustls::ClientConfig, ConnectError> {
    let pin =
        crate::config::parse_fingerprint(pinned.trim()).ok_or_else(|| ConnectError::Setting {
            key: "wincc.pinned_cert_sha256",
            why: format!("{pinned:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"),
        })?;
    let provider = crate::crypto::provider();
    let verifier = StationVerifier {
        accept: Accept::Pinned(pin),
        provider: Arc::clone(&provider),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Setting {
            key: "wincc.pinned_cert_sha256",
            why: format!("cannot set up TLS: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificates of `wincc.ca_file`.
fn ca_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let bad = |why: String| ConnectError::Setting {
        key: "wincc.ca_file",
        why,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("cannot read {path:?}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{path:?} is not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(bad(format!("{path:?} holds no certificate")));
    }
    Ok(certs)
}

/// Whether the settings need the gateway's own TLS configuration for
/// HTTPS (reqwest's own trust handles the rest: system roots, `ca_file`
/// merged in, `accept_invalid_certs`).
pub fn needs_own_config(w: &WinccSettings) -> bool {
    !w.pinned_cert_sha256.trim().is_empty() || (w.tls_skip_hostname_check && !w.ca_file.is_empty())
}

/// The rustls client configuration for the station with the configured
/// trust (module docs), offering `alpn` (HTTPS: `h2`, `http/1.1`;
/// WebSocket: `http/1.1`). The pin wins over everything else; then
/// `accept_invalid_certs`; then `ca_file` (alone when the host name is not
/// checked, else with the system roots).
pub fn client_config(
    w: &WinccSettings,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, ConnectError> {
    let setup = |e: rustls::Error| ConnectError::Setting {
        key: "wincc.base_url",
        why: format!("cannot set up TLS: {e}"),
    };
    let mut config = if !w.pinned_cert_sha256.trim().is_empty() {
        pinned_client_config(&w.pinned_cert_sha256)?
    } else {
        let provider = crate::crypto::provider();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(setup)?;
        let verifier: Arc<dyn ServerCertVerifier> = if w.accept_invalid_certs {
            Arc::new(StationVerifier {
                accept: Accept::Any,
                provider,
            })
        } else {
            let any_name = w.tls_skip_hostname_check && !w.ca_file.is_empty();
            let mut roots = RootCertStore::empty();
            if !w.ca_file.is_empty() {
                let (added, _) = roots.add_parsable_certificates(ca_certificates(&w.ca_file)?);
                if added == 0 {
                    return Err(ConnectError::Setting {
                        key: "wincc.ca_file",
                        why: format!("{:?} holds no usable CA certificate", w.ca_file),
                    });
                }
            }
            if !any_name {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| ConnectError::Setting {
                        key: "wincc.ca_file",
                        why: format!("no usable trust anchor: {e}"),
                    })?;
            if any_name {
                Arc::new(StationVerifier {
                    accept: Accept::AnyName(inner),
                    provider,
                })
            } else {
                inner
            }
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_colon_separated_lower_hex() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 95);
        assert!(f.starts_with("ba:78:16:bf:8f:01:cf:ea"), "{f}");
        let parsed = crate::config::parse_fingerprint(&f.to_uppercase()).unwrap();
        assert_eq!(fingerprint_of_digest(&parsed), f);
    }

    #[test]
    fn bad_fingerprints_name_the_setting() {
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(31)] {
            let e = pinned_client_config(bad).unwrap_err().to_string();
            assert!(e.starts_with("wincc.pinned_cert_sha256"), "{e}");
        }
        assert!(pinned_client_config(&format!("{}AB", "AB:".repeat(31))).is_ok());
    }
}
