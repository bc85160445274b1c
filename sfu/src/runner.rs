//! The I/O shell around the engines: the UDP socket, a dispatcher thread reading it, and one
//! shard thread per core, each owning an [`Engine`] and whole rooms (see [`crate::router`]).

use crate::api::SfuHandle;
use crate::engine::Engine;
use crate::router::Router;
use crate::shard::{self, ShardInput};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
            downlink_estimation: false,
            threads: None,
        }
    }
}

/// Bind the socket and start the dispatcher and shard threads.
pub async fn start(config: SfuConfig) -> io::Result<SfuHandle> {
    let socket = bind_udp(config.bind)?;
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
    let router = Arc::new(Router::default());
    let mut inputs = Vec::with_capacity(threads);
    for id in 0..threads {
        let (tx, rx) = std::sync::mpsc::channel();
        let engine = Engine::shard(advertised, config.downlink_estimation, router.clone(), id);
        let socket = socket.try_clone()?;
        std::thread::Builder::new()
            .name(format!("sfu-shard-{id}"))
            .spawn(move || shard::run(engine, socket, rx))?;
        inputs.push(tx);
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (router, inputs, stop) = (router.clone(), inputs.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sfu-dispatch".into())
            .spawn(move || dispatch(socket, router, inputs, stop))?;
    }
    info!(%local, %advertised, threads, "SFU listening on UDP");
    Ok(SfuHandle::new(local, inputs, router, stop))
}

/// Socket buffers asked for: one socket carries every consultation, and a few milliseconds of
/// scheduling delay at tens of thousands of packets per second overflow the kernel default
/// (~208 KiB). The kernel caps the request at `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// How often the dispatcher looks up from a quiet socket to see whether the SFU was dropped.
const STOP_CHECK: Duration = Duration::from_millis(200);

fn bind_udp(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    for (what, r) in [
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES)),
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER_BYTES)),
    ] {
        if let Err(e) = r {
            warn!("UDP {what} buffer not enlarged: {e}");
        }
    }
    socket.bind(&addr.into())?;
    socket.set_read_timeout(Some(STOP_CHECK))?;
    info!(
        receive = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    Ok(socket)
}

/// Read the socket and hand each datagram to its shard, until the SFU handle is dropped.
fn dispatch(
    socket: socket2::Socket,
    router: Arc<Router>,
    shards: Vec<Sender<ShardInput>>,
    stop: Arc<AtomicBool>,
) {
    let socket: std::net::UdpSocket = socket.into();
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let (n, source) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            // ICMP port unreachable and the like surface here on some systems: not fatal.
            Err(e) => {
                warn!("UDP receive failed: {e}");
                continue;
            }
        };
        let received = Instant::now();
        let Some(shard) = router.route(source, &buf[..n]) else {
            continue;
        };
        let input = ShardInput::Datagram {
            source,
            data: buf[..n].to_vec(),
            received,
        };
        if shards[shard].send(input).is_err() {
            return;
        }
    }
    info!("SFU stopping: no more handles");
}
