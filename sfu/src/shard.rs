//! One shard of the media plane: a thread with its own single-threaded tokio runtime, owning
//! an [`Engine`] (whole rooms). Every shard reads the one UDP port: a datagram for a room it
//! owns is handled at once; one for another shard's room is handed to that shard (see
//! [`crate::router`]). With several shards, each also reads the sockets it connected to its
//! clients' verified addresses (see [`crate::steering`]), so that once a client is known its
//! datagrams come straight to its shard. With one shard nothing is ever handed over. Sends
//! never wait: a full socket buffer drops the datagram, as a network would.

use crate::api::Command;
use crate::delay::DelayHistogram;
use crate::engine::Engine;
use crate::router::{Router, ShardId};
use crate::steering::Steering;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::{error, info, warn};

pub(crate) enum ShardInput {
    /// A datagram another shard read for one of our rooms.
    Datagram {
        source: SocketAddr,
        data: Vec<u8>,
        /// When it was read from the socket.
        received: Instant,
    },
    Command(Command),
}

/// Datagrams read per readiness, and inputs taken per turn, before timers get a turn.
const BATCH: usize = 64;

pub(crate) struct Shard {
    pub id: ShardId,
    pub engine: Engine,
    pub router: Arc<Router>,
    /// Every shard's input, ours included (index = shard id).
    pub peers: Vec<UnboundedSender<ShardInput>>,
    pub inputs: UnboundedReceiver<ShardInput>,
    pub stop: Arc<AtomicBool>,
    /// Connected sockets this shard may open (see `crate::steering`).
    pub steering_sockets: usize,
}

#[derive(Default)]
struct IoStats {
    send_failures: u64,
    handed_over: u64,
    forward_delay: DelayHistogram,
    /// What the engine sends while handling one input, sent together afterwards.
    batch: SendBatch,
}

impl IoStats {
    fn queue(&mut self, to: SocketAddr, data: &[u8]) {
        self.batch.push(to, data);
    }

    /// Send what was queued; `received`: when the input that caused it was read.
    fn flush(&mut self, socket: &UdpSocket, received: Option<Instant>) {
        let n = self.batch.items.len();
        if n == 0 {
            return;
        }
        self.send_failures += self.batch.send(socket);
        if let Some(at) = received {
            self.forward_delay.record_n(at.elapsed(), n as u64);
        }
    }
}

/// Datagrams gathered for one `sendmmsg` (a packet forwarded to 50 subscribers is one system
/// call, not 50). Buffers are kept between batches.
#[derive(Default)]
struct SendBatch {
    bytes: Vec<u8>,
    /// Destination, offset and length in `bytes`.
    items: Vec<(SocketAddr, usize, usize)>,
    /// The system call's arrays, refilled for each call without allocating.
    #[cfg(target_os = "linux")]
    scratch: MmsgScratch,
}

/// Datagrams per `sendmmsg` call.
const SEND_CHUNK: usize = 64;

impl SendBatch {
    fn push(&mut self, to: SocketAddr, data: &[u8]) {
        self.items.push((to, self.bytes.len(), data.len()));
        self.bytes.extend_from_slice(data);
    }

    /// Send everything queued, never waiting; returns how many datagrams were refused.
    fn send(&mut self, socket: &UdpSocket) -> u64 {
        let mut failed = 0;
        let mut i = 0;
        while i < self.items.len() {
            let end = (i + SEND_CHUNK).min(self.items.len());
            match self.send_chunk(socket, i..end) {
                Ok(0) => {
                    failed += 1;
                    i += 1;
                }
                Ok(sent) => i += sent,
                Err(e) => {
                    // This datagram is refused (full buffer, unreachable): drop it, go on.
                    if e.kind() != io::ErrorKind::WouldBlock {
                        warn!(to = %self.items[i].0, "UDP send failed: {e}");
                    }
                    failed += 1;
                    i += 1;
                }
            }
        }
        self.items.clear();
        self.bytes.clear();
        failed
    }
}

#[cfg(target_os = "linux")]
#[derive(Default)]
struct MmsgScratch {
    addrs: Vec<socket2::SockAddr>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    /// Send `self.items[range]` with one `sendmmsg`; returns how many went out. An error is
    /// the first datagram's.
    #[cfg(target_os = "linux")]
    fn send_chunk(
        &mut self,
        socket: &UdpSocket,
        range: std::ops::Range<usize>,
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let items = &self.items[range];
        let bytes = &self.bytes;
        let MmsgScratch {
            addrs,
            iovecs,
            msgs,
        } = &mut self.scratch;
        addrs.clear();
        iovecs.clear();
        msgs.clear();
        addrs.extend(items.iter().map(|(to, _, _)| socket2::SockAddr::from(*to)));
        iovecs.extend(items.iter().map(|(_, start, len)| libc::iovec {
            iov_base: bytes[*start..*start + *len].as_ptr() as *mut libc::c_void,
            iov_len: *len,
        }));
        msgs.extend(addrs.iter().zip(iovecs.iter_mut()).map(|(addr, iov)| {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            hdr.msg_namelen = addr.len();
            hdr.msg_iov = iov as *mut libc::iovec;
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        }));
        // SAFETY: every pointer in `msgs` points into `addrs`, `iovecs` and `bytes`, which are
        // not touched until the call returns; the count is the length of `msgs`.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn send_chunk(
        &mut self,
        socket: &UdpSocket,
        range: std::ops::Range<usize>,
    ) -> io::Result<usize> {
        let (to, start, len) = self.items[range.start];
        socket
            .try_send_to(&self.bytes[start..start + len], to)
            .map(|_| 1)
    }
}

/// Run the shard on this thread until the SFU handle is dropped.
pub(crate) fn run(shard: Shard, socket: std::net::UdpSocket) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("SFU shard {} cannot start its runtime: {e}", shard.id);
            return;
        }
    };
    runtime.block_on(async move {
        match UdpSocket::from_std(socket) {
            Ok(socket) => serve(shard, socket).await,
            Err(e) => error!("SFU shard {} cannot use the socket: {e}", shard.id),
        }
    });
}

async fn serve(mut shard: Shard, socket: UdpSocket) {
    let mut io = IoStats::default();
    let mut buf = vec![0u8; 2048];
    // With one shard nothing is ever handed over: no connected sockets needed.
    let mut steering = match socket.local_addr() {
        Ok(local) if shard.peers.len() > 1 => Steering::new(local, shard.steering_sockets)
            .map_err(|e| warn!("SFU shard {}: no connected sockets: {e}", shard.id))
            .ok(),
        _ => None,
    };
    while !shard.stop.load(Ordering::Relaxed) {
        let deadline = shard.engine.next_timeout(Instant::now());
        let steered_ready = steering.as_ref().is_some_and(|s| s.has_ready());
        let steered_wait = steering.as_ref().is_some_and(|s| !s.is_empty()) && !steered_ready;
        tokio::select! {
            r = socket.readable() => {
                if let Err(e) = r {
                    warn!("UDP socket not readable: {e}");
                    continue;
                }
                for _ in 0..BATCH {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, source)) => shard.on_datagram(&socket, &mut io, source, &buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP port unreachable and the like surface here: not fatal.
                        Err(e) => {
                            warn!("UDP receive failed: {e}");
                            break;
                        }
                    }
                }
            }
            r = async {
                match steering.as_mut() {
                    Some(s) => s.wait().await,
                    None => std::future::pending().await,
                }
            }, if steered_wait => {
                if let Err(e) = r {
                    warn!("connected sockets not readable: {e}");
                }
            }
            _ = std::future::ready(()), if steered_ready => {}
            input = shard.inputs.recv() => {
                let Some(input) = input else { break };
                shard.on_input(&socket, &mut io, input);
                for _ in 1..BATCH {
                    match shard.inputs.try_recv() {
                        Ok(input) => shard.on_input(&socket, &mut io, input),
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        // Datagrams of peers that have a connected socket (bounded, as above).
        if let Some(s) = steering.as_mut() {
            for _ in 0..BATCH {
                let Some((n, source)) = s.recv(&mut buf) else {
                    break;
                };
                shard.on_datagram(&socket, &mut io, source, &buf[..n]);
            }
        }
        // One connected socket per peer address the engine verified, closed when forgotten.
        for (addr, learned) in shard.engine.take_address_changes() {
            match steering.as_mut() {
                Some(s) if learned => s.add(addr),
                Some(s) => s.remove(addr),
                None => {}
            }
        }
        let now = Instant::now();
        if shard.engine.next_timeout(now) <= now {
            let mut send = |to: SocketAddr, data: &[u8]| io.queue(to, data);
            contain("timeout", || shard.engine.handle_timeout(now, &mut send));
            io.flush(&socket, None);
        }
    }
    info!("SFU shard {} stopping", shard.id);
}

impl Shard {
    fn on_datagram(
        &mut self,
        socket: &UdpSocket,
        io: &mut IoStats,
        source: SocketAddr,
        buf: &[u8],
    ) {
        let received = Instant::now();
        match self.router.route(source, buf) {
            Some(owner) if owner == self.id => {
                self.handle_datagram(socket, io, source, buf, received)
            }
            Some(owner) => {
                io.handed_over += 1;
                let _ = self.peers[owner].send(ShardInput::Datagram {
                    source,
                    data: buf.to_vec(),
                    received,
                });
            }
            None => {}
        }
    }

    fn handle_datagram(
        &mut self,
        socket: &UdpSocket,
        io: &mut IoStats,
        source: SocketAddr,
        buf: &[u8],
        received: Instant,
    ) {
        let mut send = |to: SocketAddr, d: &[u8]| io.queue(to, d);
        // The engine's clock is read here, not at the socket: it must never go back.
        let engine = &mut self.engine;
        contain("datagram", || {
            engine.handle_datagram(Instant::now(), source, buf, &mut send)
        });
        io.flush(socket, Some(received));
    }

    fn on_input(&mut self, socket: &UdpSocket, io: &mut IoStats, input: ShardInput) {
        match input {
            ShardInput::Datagram {
                source,
                data,
                received,
            } => self.handle_datagram(socket, io, source, &data, received),
            ShardInput::Command(Command::Stats { reply }) => {
                let mut stats = self.engine.stats();
                stats.send_failures = io.send_failures;
                stats.datagrams_handed_over = io.handed_over;
                stats.forward_delay = io.forward_delay.clone();
                let _ = reply.send(stats);
            }
            ShardInput::Command(cmd) => {
                let mut send = |to: SocketAddr, d: &[u8]| io.queue(to, d);
                let engine = &mut self.engine;
                contain("command", || {
                    engine.handle_command(Instant::now(), cmd, &mut send)
                });
                io.flush(socket, None);
            }
        }
    }
}

/// A panic on one input (a bug met by a strange packet or SDP) is contained: it is logged and
/// the shard goes on serving every other consultation.
fn contain(what: &str, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        error!("SFU recovered from a panic while handling a {what}: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_reaches_every_destination_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let mut batch = SendBatch::default();
        // More than one sendmmsg chunk.
        for i in 0..(SEND_CHUNK + 6) as u32 {
            let to = if i % 2 == 0 { &a } else { &b };
            batch.push(to.local_addr().expect("addr"), &i.to_be_bytes());
        }
        assert_eq!(batch.send(&sender), 0);
        assert!(batch.items.is_empty() && batch.bytes.is_empty());
        let mut buf = [0u8; 16];
        for (socket, first) in [(&a, 0u32), (&b, 1)] {
            for k in 0..(SEND_CHUNK as u32 + 6) / 2 {
                let (n, _) = socket.recv_from(&mut buf).await.expect("datagram");
                assert_eq!(&buf[..n], &(first + 2 * k).to_be_bytes());
            }
        }
    }
}
