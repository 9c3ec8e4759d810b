//! Certificate pinning (`wincc.pinned_cert_sha256`): a rustls client
//! configuration that trusts exactly one end-entity certificate, named by
//! the SHA-256 of its DER encoding, whatever its issuer, host name or
//! validity dates (WinCC stations present self-signed certificates made by
//! the WinCC Certificate Manager). The handshake signatures are still
//! verified with the crypto provider's algorithms, so only the holder of
//! that certificate's private key can complete the handshake.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

use super::ConnectError;

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

/// Accepts exactly the end-entity certificate with the pinned SHA-256.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if bool::from(subtle::ConstantTimeEq::ct_eq(&got[..], &self.pin[..])) {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            expected: fingerprint_of_digest(&self.pin),
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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = PinnedVerifier {
        pin,
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
