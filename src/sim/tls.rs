//! HTTPS for the simulator: a self-signed certificate made with `rcgen`
//! (like the one a WinCC Certificate Manager binds to port 34568), served
//! through tokio-rustls over the simulator's own listener, so outages and
//! connection ids work as over plain HTTP.
//!
//! The TLS handshake runs inside `accept`, one at a time, bounded by
//! [`HANDSHAKE_TIMEOUT`]; a client that refuses the certificate only ends
//! its own connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::listener::{ConnId, SimIo, SimListener};
use super::{start_with, SimHandle, SimOptions};

/// Longest wait for one client's TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A self-signed certificate and its private key, both DER.
pub struct SelfSigned {
    /// The certificate (what `pinned_cert_sha256` fingerprints).
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

/// Makes a self-signed end-entity certificate for `names` (DNS names or IP
/// addresses), like `localhost` and `127.0.0.1`.
pub fn self_signed(names: &[&str]) -> io::Result<SelfSigned> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| io::Error::other(format!("cannot make a certificate: {e}")))?;
    Ok(SelfSigned {
        cert_der: ck.cert.der().to_vec(),
        key_der: ck.signing_key.serialize_der(),
    })
}

/// The acceptor serving `cert` (HTTP/1.1 only, like the simulator).
pub fn acceptor(cert: &SelfSigned) -> io::Result<TlsAcceptor> {
    let provider = crate::crypto::provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Starts the simulator over HTTPS with a fresh self-signed certificate for
/// `localhost` and `127.0.0.1`; returns the handle and the certificate's
/// DER (use [`SimHandle::https_base_url`] as the base URL).
pub async fn start_tls(listen: SocketAddr, opts: SimOptions) -> io::Result<(SimHandle, Vec<u8>)> {
    start_tls_named(listen, opts, &["localhost", "127.0.0.1"]).await
}

/// [`start_tls`] with a certificate for `names` only: `&["localhost"]`
/// is what a WinCC Unified runtime presents, whatever its address.
pub async fn start_tls_named(
    listen: SocketAddr,
    opts: SimOptions,
    names: &[&str],
) -> io::Result<(SimHandle, Vec<u8>)> {
    let cert = self_signed(names)?;
    let sim = start_with(listen, opts, Some(acceptor(&cert)?)).await?;
    Ok((sim, cert.cert_der))
}

impl SimHandle {
    /// `https://ADDR`: the base URL of a simulator started with [`start_tls`].
    pub fn https_base_url(&self) -> String {
        format!("https://{}", self.addr())
    }
}

/// The simulator's listener with a TLS handshake on every connection.
pub struct TlsSimListener {
    inner: SimListener,
    acceptor: TlsAcceptor,
}

impl TlsSimListener {
    pub fn new(inner: SimListener, acceptor: TlsAcceptor) -> Self {
        TlsSimListener { inner, acceptor }
    }
}

impl Listener for TlsSimListener {
    type Io = TlsStream<SimIo>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let (io, peer) = self.inner.accept().await;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(io)).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "simulator TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "simulator TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, TlsSimListener>> for ConnId {
    fn connect_info(stream: IncomingStream<'_, TlsSimListener>) -> Self {
        ConnId(stream.io().get_ref().0.id())
    }
}

/// Runs the HTTPS simulator until `shutdown` completes (`simulate --tls`),
/// printing the certificate's fingerprint for `pinned_cert_sha256`.
pub async fn run_tls(
    listen: SocketAddr,
    opts: SimOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let banner_opts = (
        opts.tags,
        opts.change_rate,
        opts.dialect,
        opts.auth,
        opts.users.clone(),
    );
    let (sim, der) = start_tls(listen, opts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the HTTPS simulator on {listen}: {e}"))?;
    use sha2::Digest;
    let fingerprint: Vec<String> = sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let (tags, rate, dialect, auth, users) = banner_opts;
    print!(
        "{}",
        super::banner(
            &sim.https_base_url(),
            tags,
            rate,
            dialect,
            auth,
            &users,
            Some(&fingerprint.join(":")),
        )
    );
    shutdown.await;
    sim.shutdown().await;
    Ok(())
}
