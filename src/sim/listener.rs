//! The simulator's TCP side: an axum [`Listener`] whose socket can be
//! closed for a real outage (connections refused, open connections dropped)
//! and bound again on the same port afterwards.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shared control over the socket and the open connections.
#[derive(Debug)]
pub struct Net {
    addr: SocketAddr,
    listener: Mutex<Option<TcpListener>>,
    waker: Mutex<Option<Waker>>,
    conns: Mutex<Conns>,
    /// End of the current outage, if one is going on.
    outage_until: Mutex<Option<Instant>>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

#[derive(Debug, Default)]
struct Conns {
    next_id: u64,
    live: HashMap<u64, CancellationToken>,
}

impl Net {
    /// Binds `listen` (port 0 picks a free port).
    pub async fn bind(listen: SocketAddr, shutdown: CancellationToken) -> io::Result<Arc<Net>> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        Ok(Arc::new(Net {
            addr,
            listener: Mutex::new(Some(listener)),
            waker: Mutex::new(None),
            conns: Mutex::new(Conns::default()),
            outage_until: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            shutdown,
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn wake(&self) {
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }

    /// Drops every open connection except `keep`.
    pub fn kill_connections(&self, keep: Option<u64>) {
        for (id, token) in lock(&self.conns).live.iter() {
            if Some(*id) != keep {
                token.cancel();
            }
        }
    }

    /// Starts a full outage now: the socket is closed at once, so new
    /// connections are refused; open ones (except `keep`, the one asking)
    /// are dropped. After `length` the same port is bound again.
    pub fn start_outage(self: &Arc<Self>, length: Duration, keep: Option<u64>) {
        let until = Instant::now() + length;
        *lock(&self.outage_until) = Some(until);
        drop(lock(&self.listener).take());
        self.wake();
        self.kill_connections(keep);
        tracing::info!(addr = %self.addr, seconds = length.as_secs_f64(), "simulated outage started");
        let net = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = net.shutdown.cancelled() => return,
            }
            // Only the latest outage ends itself.
            if *lock(&net.outage_until) == Some(until) {
                net.end_outage().await;
            }
        });
    }

    /// Whether an outage is going on.
    pub fn in_outage(&self) -> bool {
        lock(&self.outage_until).is_some()
    }

    /// Binds the port again (retrying while it is taken) and ends the outage.
    pub async fn end_outage(&self) {
        if lock(&self.outage_until).take().is_none() {
            return;
        }
        loop {
            match std::net::TcpListener::bind(self.addr)
                .and_then(|l| l.set_nonblocking(true).map(|_| l))
                .and_then(TcpListener::from_std)
            {
                Ok(l) => {
                    *lock(&self.listener) = Some(l);
                    self.wake();
                    tracing::info!(addr = %self.addr, "simulated outage over, listening again");
                    return;
                }
                Err(e) => {
                    tracing::warn!(addr = %self.addr, error = %e, "cannot bind again after the outage; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Closes the socket and every connection for good.
    pub fn close(&self) {
        drop(lock(&self.listener).take());
        self.wake();
        self.kill_connections(None);
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        *lock(&self.waker) = Some(cx.waker().clone());
        match lock(&self.listener).as_ref() {
            Some(l) => l.poll_accept(cx),
            None => Poll::Pending,
        }
    }

    fn register(&self) -> (u64, CancellationToken) {
        let mut c = lock(&self.conns);
        c.next_id += 1;
        let id = c.next_id;
        let token = self.shutdown.child_token();
        c.live.insert(id, token.clone());
        (id, token)
    }
}

/// The axum listener over [`Net`].
#[derive(Debug)]
pub struct SimListener {
    pub net: Arc<Net>,
}

impl Listener for SimListener {
    type Io = SimIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SimIo, SocketAddr) {
        loop {
            match poll_fn(|cx| self.net.poll_accept(cx)).await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (id, token) = self.net.register();
                    let cancelled = Box::pin(token.clone().cancelled_owned());
                    let io = SimIo {
                        inner: stream,
                        id,
                        token,
                        cancelled,
                        net: Arc::clone(&self.net),
                    };
                    return (io, peer);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.net.addr)
    }
}

/// One accepted connection; fails all I/O once it is killed.
pub struct SimIo {
    inner: TcpStream,
    id: u64,
    token: CancellationToken,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    net: Arc<Net>,
}

impl SimIo {
    /// The connection's id (what [`ConnId`] carries).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for SimIo {
    fn drop(&mut self) {
        lock(&self.net.conns).live.remove(&self.id);
    }
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "simulated outage")
}

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Polling the token also registers the waker, so that an idle
        // keep-alive connection is woken up and dropped by an outage.
        if self.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Which connection a request came on (request extension via `ConnectInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId(pub u64);

impl Connected<IncomingStream<'_, SimListener>> for ConnId {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        ConnId(stream.io().id)
    }
}
