//! Limits on the HTTP(S) listener's connections, against one client holding hundreds of them
//! (slowloris): at most [`ConnLimits::per_address`] open connections per remote address (more
//! are closed at once), and a connection that sends nothing for [`ConnLimits::idle_read`] is
//! closed (counted on the raw TCP stream, under TLS: an idle connection after the TLS
//! handshake, or one stuck before its first request, sends nothing). WebSockets stay busy: the
//! server pings them (see `ws`). Headers sent too slowly are cut by hyper's header read
//! timeout, the TLS handshake by axum-server's.

use axum_server::accept::Accept;
use dashmap::DashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnLimits {
    /// Open connections one remote address may hold.
    pub per_address: usize,
    /// Longest silence (nothing received) before a connection is closed.
    pub idle_read: Duration,
    /// Longest time to receive a request's headers.
    pub header_read: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            per_address: 64,
            idle_read: Duration::from_secs(45),
            header_read: Duration::from_secs(10),
        }
    }
}

/// Wraps an acceptor of TCP streams (`inner`) with the limits.
#[derive(Clone)]
pub struct GuardAcceptor<A> {
    inner: A,
    limits: ConnLimits,
    open: Arc<DashMap<IpAddr, usize>>,
}

impl<A> GuardAcceptor<A> {
    pub fn new(inner: A, limits: ConnLimits) -> Self {
        GuardAcceptor {
            inner,
            limits,
            open: Arc::new(DashMap::new()),
        }
    }
}

impl<A, S> Accept<TcpStream, S> for GuardAcceptor<A>
where
    A: Accept<TcpStream, S, Stream = TcpStream> + Clone + Send + 'static,
    A::Future: Send,
    S: Send + 'static,
{
    type Stream = Guarded;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Guarded, A::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let ip = stream.peer_addr().map(|a| a.ip());
        let slot = ip
            .ok()
            .and_then(|ip| Slot::take(&self.open, ip, self.limits.per_address));
        let inner = self.inner.clone();
        let idle = self.limits.idle_read;
        Box::pin(async move {
            let Some(slot) = slot else {
                // Over the cap (or no peer address): closed at once.
                return Err(io::Error::other("too many connections from this address"));
            };
            let (stream, service) = inner.accept(stream, service).await?;
            Ok((Guarded::new(stream, slot, idle), service))
        })
    }
}

/// One open connection counted against its address; given back when dropped.
struct Slot {
    open: Arc<DashMap<IpAddr, usize>>,
    ip: IpAddr,
}

impl Slot {
    fn take(open: &Arc<DashMap<IpAddr, usize>>, ip: IpAddr, cap: usize) -> Option<Slot> {
        let mut n = open.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: open.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let empty = self.open.get_mut(&self.ip).is_some_and(|mut n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
        if empty {
            self.open.remove_if(&self.ip, |_, n| *n == 0);
        }
    }
}

/// A TCP stream that fails its reads after `idle` without receiving anything.
pub struct Guarded {
    inner: TcpStream,
    _slot: Slot,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(inner: TcpStream, slot: Slot, idle: Duration) -> Guarded {
        Guarded {
            inner,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing received for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_given_back() {
        let open = Arc::new(DashMap::new());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<Slot> = (0..3).filter_map(|_| Slot::take(&open, a, 3)).collect();
        assert_eq!(held.len(), 3);
        assert!(Slot::take(&open, a, 3).is_none(), "a fourth is refused");
        assert!(Slot::take(&open, b, 3).is_some(), "another address is not");
        drop(held);
        assert!(open.get(&a).is_none(), "forgotten once all are closed");
        assert!(Slot::take(&open, a, 3).is_some());
    }
}
