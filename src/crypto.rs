//! The one TLS crypto backend of the process: ring, for every rustls user
//! (the station's HTTPS and WebSocket clients, `mqtts://`, the simulator's
//! HTTPS, rcgen's certificates). One backend keeps one copy of the crypto
//! code in the binary and one C build in the build; aws-lc-rs is not built.
//!
//! Code that builds a rustls configuration asks [`provider`] for it
//! explicitly. Crates that look up the process default instead (reqwest
//! without a preconfigured TLS backend) get it from [`install_default`],
//! which every such caller runs first; it is idempotent and thread-safe.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider every rustls configuration of the gateway uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes [`provider`] the process-wide default, unless one is set already
/// (a second call, or an embedding program that chose its own).
pub fn install_default() {
    if CryptoProvider::get_default().is_none() {
        // A race with another thread installing one is harmless: either
        // provider is ring's, and the loser's error only says "already set".
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
