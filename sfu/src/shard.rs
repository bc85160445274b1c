//! One shard of the media plane: a thread owning an [`Engine`] (whole rooms), fed datagrams by
//! the dispatcher and commands by the [`crate::SfuHandle`], sending straight on the shared UDP
//! socket. Sends never wait: a full socket buffer drops the datagram, as a network would.

use crate::api::Command;
use crate::delay::DelayHistogram;
use crate::engine::Engine;
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;
use tracing::{error, warn};

pub(crate) enum ShardInput {
    Datagram {
        source: SocketAddr,
        data: Vec<u8>,
        /// When the dispatcher read it from the socket.
        received: Instant,
    },
    Command(Command),
}

/// Inputs handled before timers get a turn, so a flood cannot starve them.
const BATCH: usize = 256;

#[derive(Default)]
struct IoStats {
    send_failures: u64,
    forward_delay: DelayHistogram,
}

impl IoStats {
    fn send(&mut self, socket: &socket2::Socket, to: SocketAddr, data: &[u8]) {
        // The socket is shared with the dispatcher's blocking reads: never block here.
        if let Err(e) = socket.send_to_with_flags(data, &to.into(), libc::MSG_DONTWAIT) {
            self.send_failures += 1;
            if e.kind() != std::io::ErrorKind::WouldBlock {
                warn!(%to, "UDP send failed: {e}");
            }
        }
    }
}

pub(crate) fn run(mut engine: Engine, socket: socket2::Socket, inputs: Receiver<ShardInput>) {
    let mut io = IoStats::default();
    loop {
        let now = Instant::now();
        let wait = engine.next_timeout(now).saturating_duration_since(now);
        let mut next = match inputs.recv_timeout(wait) {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut budget = BATCH;
        while let Some(input) = next.take() {
            handle(&mut engine, &socket, &mut io, input);
            budget -= 1;
            if budget > 0 {
                next = inputs.try_recv().ok();
            }
        }
        let now = Instant::now();
        if engine.next_timeout(now) <= now {
            let mut send = |to: SocketAddr, data: &[u8]| io.send(&socket, to, data);
            contain("timeout", || engine.handle_timeout(now, &mut send));
        }
    }
}

fn handle(engine: &mut Engine, socket: &socket2::Socket, io: &mut IoStats, input: ShardInput) {
    match input {
        ShardInput::Datagram {
            source,
            data,
            received,
        } => {
            let mut send = |to: SocketAddr, d: &[u8]| {
                io.send(socket, to, d);
                io.forward_delay.record(received.elapsed());
            };
            // The engine's clock is read here, not at the socket: it must never go back.
            contain("datagram", || {
                engine.handle_datagram(Instant::now(), source, &data, &mut send)
            });
        }
        ShardInput::Command(Command::Stats { reply }) => {
            let mut stats = engine.stats();
            stats.send_failures = io.send_failures;
            stats.forward_delay = io.forward_delay.clone();
            let _ = reply.send(stats);
        }
        ShardInput::Command(cmd) => {
            let mut send = |to: SocketAddr, d: &[u8]| io.send(socket, to, d);
            contain("command", || {
                engine.handle_command(Instant::now(), cmd, &mut send)
            });
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
