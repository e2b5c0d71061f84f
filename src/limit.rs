//! A cap on the connections a server of rcptsync keeps open (the socketmap
//! server, the metrics endpoint), and an idle timeout for each.
//!
//! Both listen where a misbehaving or hostile local client can open sockets and
//! keep them open. A plain cap would let 1,000 idle sockets lock out Postfix's
//! next lookup, so at the cap the connection that has been idle longest is told
//! to close (its reads end, as if the peer had closed) and the new one is
//! served: the clients that are asking something are always answered, and
//! Postfix reconnects a closed socketmap connection by itself. A connection
//! that sends nothing for the idle timeout is closed the same way, which also
//! bounds how long a request may trickle in.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Default number of connections a server keeps.
pub const MAX_CONNECTIONS: usize = 256;
/// Default time a connection may send nothing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Admits connections under a cap, closing the idlest one when full.
#[derive(Clone)]
pub struct Limiter {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    idle: Duration,
    started: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

struct ConnState {
    /// Milliseconds since `Shared::started` of the last byte read or written.
    last_active: AtomicU64,
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl ConnState {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            w.wake();
        }
    }
}

impl Limiter {
    pub fn new(max: usize, idle: Duration) -> Limiter {
        Limiter {
            shared: Arc::new(Shared {
                max: max.max(1),
                idle,
                started: Instant::now(),
                next_id: AtomicU64::new(0),
                conns: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.shared.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Admits a new connection; at the cap, the connection idle longest is
    /// closed first.
    pub fn admit<T>(&self, io: T) -> Limited<T> {
        let now = self.shared.now();
        let state = Arc::new(ConnState {
            last_active: AtomicU64::new(now),
            closed: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut conns) = self.shared.conns.lock() {
            while conns.len() >= self.shared.max {
                let Some(idlest) =
                    conns.iter().min_by_key(|(_, c)| c.last_active.load(Ordering::Relaxed)).map(|(id, _)| *id)
                else {
                    break;
                };
                if let Some(c) = conns.remove(&idlest) {
                    c.close();
                }
            }
            conns.insert(id, state.clone());
        }
        let sleep = Box::pin(tokio::time::sleep(self.shared.idle));
        Limited { io, id, state, shared: self.shared.clone(), sleep }
    }
}

impl Shared {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// A connection admitted by a [`Limiter`]. Its reads end (as at end of stream)
/// when it is closed for the cap or has been idle too long.
pub struct Limited<T> {
    io: T,
    id: u64,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Limited<T> {
    fn touch(&mut self) {
        self.state.last_active.store(self.shared.now(), Ordering::Relaxed);
        self.sleep.as_mut().reset(tokio::time::Instant::now() + self.shared.idle);
    }
}

impl<T> Drop for Limited<T> {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.shared.conns.lock() {
            conns.remove(&self.id);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.state.closed.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Ok(mut w) = self.state.waker.lock() {
                    *w = Some(cx.waker().clone());
                }
                if self.sleep.as_mut().poll(cx).is_ready() {
                    self.state.closed.store(true, Ordering::SeqCst);
                    return Poll::Ready(Ok(()));
                }
                // Closed for the cap while this read was being registered.
                if self.state.closed.load(Ordering::SeqCst) {
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A TCP listener for axum whose connections go through a [`Limiter`].
pub struct LimitedListener {
    pub inner: tokio::net::TcpListener,
    pub limiter: Limiter,
}

impl axum::serve::Listener for LimitedListener {
    type Io = Limited<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((s, a)) => return (self.limiter.admit(s), a),
                // Out of file descriptors or a reset before accept: wait a
                // moment rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn at_the_cap_the_idlest_connection_is_closed() {
        let l = Limiter::new(2, Duration::from_secs(60));
        let (a, mut a_peer) = duplex(64);
        let (b, mut b_peer) = duplex(64);
        let mut a = l.admit(a);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut b = l.admit(b);
        // b is active, a is the idlest.
        b_peer.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        b.read_exact(&mut buf).await.unwrap();
        let (c, _c_peer) = duplex(64);
        let _c = l.admit(c);
        assert_eq!(l.open(), 2);
        // a's read ends; b still reads.
        assert_eq!(tokio::time::timeout(Duration::from_secs(1), a.read(&mut buf)).await.unwrap().unwrap(), 0);
        b_peer.write_all(b"y").await.unwrap();
        assert_eq!(b.read(&mut buf).await.unwrap(), 1);
        a_peer.write_all(b"z").await.unwrap();
        assert_eq!(a.read(&mut buf).await.unwrap(), 0, "closed stays closed");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_timeout() {
        let l = Limiter::new(10, Duration::from_millis(100));
        let (a, _peer) = duplex(64);
        let mut a = l.admit(a);
        let mut buf = [0u8; 1];
        let started = Instant::now();
        assert_eq!(a.read(&mut buf).await.unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(a);
        assert_eq!(l.open(), 0);
    }
}
