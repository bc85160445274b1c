//! The I/O shell around the engines: the UDP socket and one shard thread per core, each
//! owning an [`Engine`] and whole rooms (see [`crate::shard`] and [`crate::router`]).

use crate::api::SfuHandle;
use crate::engine::Engine;
use crate::router::Router;
use crate::shard::{self, Shard};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Configuration of the media plane.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Where the UDP socket binds (port 0 picks a free one).
    pub bind: SocketAddr,
    /// The address advertised to clients as the ICE candidate. Defaults to `bind` (with the
    /// bound port), which must then not be an unspecified address such as `0.0.0.0`.
    pub public_addr: Option<SocketAddr>,
    /// Estimate subscribers' downlinks (str0m BWE) and run the allocator.
    pub downlink_estimation: bool,
    /// Shard threads (each owns whole rooms); `None`: one per core.
    pub threads: Option<usize>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_addr: None,
            downlink_estimation: true,
            threads: None,
        }
    }
}

/// Bind the port and start the shard threads.
pub async fn start(config: SfuConfig) -> io::Result<SfuHandle> {
    // SO_REUSEPORT would let a second server on the same port silently share the traffic:
    // claim the port without it first, so that a port in use is an error as usual.
    let port = std::net::UdpSocket::bind(config.bind)?.local_addr()?.port();
    let socket = bind_udp(SocketAddr::new(config.bind.ip(), port), true)?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("UDP socket without an IP address"))?;
    let advertised = match config.public_addr {
        Some(mut a) => {
            if a.port() == 0 {
                a.set_port(local.port());
            }
            a
        }
        None if local.ip().is_unspecified() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the SFU binds an unspecified address: set its public address",
            ))
        }
        None => local,
    };
    let threads = config
        .threads
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Half of the descriptors go to connected sockets (one per client address, spread over
    // the shards), the rest stays for connections, files and recordings.
    let steering_sockets = raise_descriptor_limit() / 2 / threads;
    let router = Arc::new(Router::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    for (id, inputs) in receivers.into_iter().enumerate() {
        let shard = Shard {
            id,
            engine: Engine::shard(advertised, config.downlink_estimation, router.clone(), id),
            router: router.clone(),
            peers: senders.clone(),
            inputs,
            stop: stop.clone(),
            steering_sockets,
        };
        // One socket per shard on the same port (SO_REUSEPORT): the kernel spreads clients
        // across them by address, and wakes one shard per datagram, until the owning shard
        // has a socket connected to the client (`steering`), which the kernel prefers.
        let socket: std::net::UdpSocket = if id == 0 {
            socket.try_clone()?.into()
        } else {
            bind_udp(local, false)?.into()
        };
        std::thread::Builder::new()
            .name(format!("sfu-shard-{id}"))
            .spawn(move || shard::run(shard, socket))?;
    }
    info!(%local, %advertised, threads, "SFU listening on UDP");
    Ok(SfuHandle::new(local, senders, router, stop))
}

/// Raise the soft limit on open descriptors to the hard one (the soft default, 1024, is low
/// for a server holding a socket per client); returns the limit now in force.
fn raise_descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the hard one is
        // allowed without privileges.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    usize::try_from(limit.rlim_cur)
        .unwrap_or(usize::MAX)
        .min(1 << 20)
}

/// Socket buffers asked for: one socket carries every consultation, and a few milliseconds of
/// scheduling delay at tens of thousands of packets per second overflow the kernel default
/// (~208 KiB). The kernel caps the request at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// A non-blocking UDP socket on `addr` with SO_REUSEPORT and large buffers; `first` logs the
/// buffer sizes the kernel granted.
pub(crate) fn bind_udp(addr: SocketAddr, first: bool) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    for (what, r) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER_BYTES)),
    ] {
        if let Err(e) = r {
            warn!("UDP {what} buffer not enlarged: {e}");
        }
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    if !first {
        return Ok(socket);
    }
    info!(
        receive = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_sfu_on_the_same_port_is_refused() {
        let first = start(SfuConfig {
            threads: Some(2),
            ..SfuConfig::default()
        })
        .await
        .expect("first SFU");
        let taken = first.local_addr();
        // Even though every shard's socket has SO_REUSEPORT, the port is not shared.
        let second = start(SfuConfig {
            bind: taken,
            ..SfuConfig::default()
        })
        .await;
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
        // And a plain socket cannot take it either.
        assert!(std::net::UdpSocket::bind(taken).is_err());
    }
}
