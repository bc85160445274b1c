//! The I/O shell around [`Engine`]: one tokio task owning the UDP socket and the clock.

use crate::api::{Command, SfuHandle};
use crate::delay::DelayHistogram;
use crate::engine::Engine;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

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
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_addr: None,
            downlink_estimation: false,
        }
    }
}

/// Bind the socket and spawn the media loop on the current tokio runtime.
pub async fn start(config: SfuConfig) -> io::Result<SfuHandle> {
    let socket = UdpSocket::bind(config.bind).await?;
    let local = socket.local_addr()?;
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
    let (commands, rx) = mpsc::unbounded_channel();
    info!(%local, %advertised, "SFU listening on UDP");
    tokio::spawn(run(
        socket,
        Engine::new(advertised, config.downlink_estimation),
        rx,
    ));
    Ok(SfuHandle {
        commands,
        local_addr: local,
    })
}

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

async fn run(
    socket: UdpSocket,
    mut engine: Engine,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut buf = vec![0u8; 2048];
    // Measured here, not in the engine (which has no clock): time inside the SFU, and sends
    // the socket refused.
    let mut io = IoStats::default();
    loop {
        let deadline = engine.next_timeout(Instant::now());
        // A panic on one input (a bug met by a strange packet or SDP) is contained: it is
        // logged and the loop goes on serving every other consultation.
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, source)) => {
                    let received = Instant::now();
                    let mut send = |to: SocketAddr, data: &[u8]| {
                        io.send(&socket, to, data);
                        io.forward_delay.record(received.elapsed());
                    };
                    contain("datagram", || {
                        engine.handle_datagram(received, source, &buf[..n], &mut send)
                    })
                }
                // ICMP port unreachable and the like surface here on some systems: not fatal.
                Err(e) => warn!("UDP receive failed: {e}"),
            },
            cmd = commands.recv() => match cmd {
                Some(Command::Stats { reply }) => {
                    let mut stats = engine.stats();
                    stats.send_failures = io.send_failures;
                    stats.forward_delay = io.forward_delay.clone();
                    let _ = reply.send(stats);
                }
                Some(cmd) => {
                    let mut send = |to: SocketAddr, data: &[u8]| io.send(&socket, to, data);
                    contain("command", || engine.handle_command(Instant::now(), cmd, &mut send))
                }
                None => {
                    info!("SFU stopping: no more handles");
                    return;
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        if engine.next_timeout(now) <= now {
            let mut send = |to: SocketAddr, data: &[u8]| io.send(&socket, to, data);
            contain("timeout", || engine.handle_timeout(now, &mut send));
        }
    }
}

#[derive(Default)]
struct IoStats {
    send_failures: u64,
    forward_delay: DelayHistogram,
}

impl IoStats {
    /// Sends never wait: a full socket buffer drops the datagram, as the network would.
    fn send(&mut self, socket: &UdpSocket, to: SocketAddr, data: &[u8]) {
        if let Err(e) = socket.try_send_to(data, to) {
            self.send_failures += 1;
            if e.kind() != io::ErrorKind::WouldBlock {
                warn!(%to, "UDP send failed: {e}");
            }
        }
    }
}
