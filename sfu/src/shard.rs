//! One shard of the media plane: a thread with its own single-threaded tokio runtime, owning
//! an [`Engine`] (whole rooms). Every shard reads the one UDP socket: a datagram for a room it
//! owns is handled at once; one for another shard's room is handed to that shard (see
//! [`crate::router`]). With one shard nothing is ever handed over. Sends never wait: a full
//! socket buffer drops the datagram, as a network would.

use crate::api::Command;
use crate::delay::DelayHistogram;
use crate::engine::Engine;
use crate::router::{Router, ShardId};
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
}

#[derive(Default)]
struct IoStats {
    send_failures: u64,
    forward_delay: DelayHistogram,
}

impl IoStats {
    fn send(&mut self, socket: &UdpSocket, to: SocketAddr, data: &[u8]) {
        if let Err(e) = socket.try_send_to(data, to) {
            self.send_failures += 1;
            if e.kind() != io::ErrorKind::WouldBlock {
                warn!(%to, "UDP send failed: {e}");
            }
        }
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
    while !shard.stop.load(Ordering::Relaxed) {
        let deadline = shard.engine.next_timeout(Instant::now());
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
        let now = Instant::now();
        if shard.engine.next_timeout(now) <= now {
            let mut send = |to: SocketAddr, data: &[u8]| io.send(&socket, to, data);
            contain("timeout", || shard.engine.handle_timeout(now, &mut send));
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
        let mut send = |to: SocketAddr, d: &[u8]| {
            io.send(socket, to, d);
            io.forward_delay.record(received.elapsed());
        };
        // The engine's clock is read here, not at the socket: it must never go back.
        let engine = &mut self.engine;
        contain("datagram", || {
            engine.handle_datagram(Instant::now(), source, buf, &mut send)
        });
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
                stats.forward_delay = io.forward_delay.clone();
                let _ = reply.send(stats);
            }
            ShardInput::Command(cmd) => {
                let mut send = |to: SocketAddr, d: &[u8]| io.send(socket, to, d);
                let engine = &mut self.engine;
                contain("command", || {
                    engine.handle_command(Instant::now(), cmd, &mut send)
                });
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
