//! Connected sockets that make the kernel deliver a peer's datagrams to the shard that owns
//! its room.
//!
//! Every shard's socket listens on the one UDP port with SO_REUSEPORT, and the kernel spreads
//! datagrams across them by address, not by room: with two shards about half of them reach a
//! shard that must hand them over (a copy, a channel, a wake-up of the other thread). A UDP
//! socket bound to the same port and connected to a peer's address wins the kernel's lookup
//! for that peer's datagrams, so once a shard has learned a peer's address it opens one for
//! it. Sends still go out through the shard's port socket (one `sendmmsg` for many peers);
//! whatever misses the connected sockets (before the first is open, a new address) is still
//! routed as before, so a socket that cannot be opened (file descriptors exhausted) costs
//! only the hand-over.
//!
//! The connected sockets sit in an epoll set of their own, whose descriptor the shard's
//! runtime waits on next to its port socket.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

pub(crate) struct Steering {
    /// The port's address: each connected socket binds to it.
    local: SocketAddr,
    epoll: AsyncFd<OwnedFd>,
    by_addr: HashMap<SocketAddr, u64>,
    sockets: HashMap<u64, UdpSocket>,
    next_token: u64,
    /// Sockets the epoll set reported readable and not yet drained (it reports each once).
    ready: VecDeque<u64>,
    events: Vec<libc::epoll_event>,
    /// Set after a socket could not be opened: no more are tried (routing still works).
    gave_up: bool,
    /// At most this many sockets, so that the process keeps descriptors for its other work
    /// (connections, recordings).
    max_sockets: usize,
}

/// Readiness events taken from the epoll set per call.
const EVENTS: usize = 64;

impl Steering {
    /// Must be called within the shard's tokio runtime. `max_sockets`: this shard's share of
    /// the descriptors the process may spend on connected sockets.
    pub fn new(local: SocketAddr, max_sockets: usize) -> io::Result<Steering> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a non-negative result is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the descriptor is owned here and closed only when the `AsyncFd` is dropped.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        Ok(Steering {
            local,
            epoll,
            by_addr: HashMap::new(),
            sockets: HashMap::new(),
            next_token: 0,
            ready: VecDeque::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            gave_up: false,
            max_sockets,
        })
    }

    /// Open a connected socket for `peer`, if there is none yet.
    pub fn add(&mut self, peer: SocketAddr) {
        if self.gave_up
            || self.by_addr.contains_key(&peer)
            || peer.is_ipv4() != self.local.is_ipv4()
            || self.sockets.len() >= self.max_sockets
        {
            return;
        }
        match self.open(peer) {
            Ok(()) => debug!(%peer, "connected socket open"),
            Err(e) => {
                warn!(%peer, "no connected socket (datagrams are routed between shards instead): {e}");
                self.gave_up = true;
            }
        }
    }

    fn open(&mut self, peer: SocketAddr) -> io::Result<()> {
        let socket = crate::runner::bind_udp(self.local, false)?;
        socket.connect(&peer.into())?;
        let socket: UdpSocket = socket.into();
        let token = self.next_token;
        self.next_token += 1;
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; `event` outlives the call.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.get_ref().as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                socket.as_raw_fd(),
                &mut event,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.by_addr.insert(peer, token);
        self.sockets.insert(token, socket);
        // Datagrams may have been queued between bind and connect.
        self.ready.push_back(token);
        Ok(())
    }

    /// Close `peer`'s connected socket (closing removes it from the epoll set).
    pub fn remove(&mut self, peer: SocketAddr) {
        if let Some(token) = self.by_addr.remove(&peer) {
            self.sockets.remove(&token);
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Wait until some connected socket may have datagrams, and note which.
    pub async fn wait(&mut self) -> io::Result<()> {
        let mut guard = self.epoll.readable().await?;
        // SAFETY: `events` has room for EVENTS entries; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.get_ref().as_raw_fd(),
                self.events.as_mut_ptr(),
                EVENTS as libc::c_int,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            guard.clear_ready();
            return Err(e);
        }
        if (n as usize) < EVENTS {
            // The set's ready list is empty again: the next readiness comes with a new edge.
            guard.clear_ready();
        }
        for e in &self.events[..n as usize] {
            let token = e.u64;
            self.ready.push_back(token);
        }
        Ok(())
    }

    /// The next datagram from a ready socket, with its source; `None` when none is ready.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let mut errors = 0;
        while let Some(&token) = self.ready.front() {
            let Some(socket) = self.sockets.get(&token) else {
                self.ready.pop_front();
                continue;
            };
            match socket.recv_from(buf) {
                Ok(r) => return Some(r),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready.pop_front();
                }
                // ICMP port unreachable from the peer and the like: reported once, and the
                // datagrams behind it are still to be read (no new edge announces them).
                Err(e) => {
                    debug!("connected socket receive failed: {e}");
                    errors += 1;
                    if errors >= 4 {
                        self.ready.pop_front();
                        errors = 0;
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bind_reuse(addr: SocketAddr) -> UdpSocket {
        crate::runner::bind_udp(addr, false).expect("bind").into()
    }

    #[tokio::test]
    async fn a_peer_datagrams_reach_its_connected_socket() {
        // Two "shards" on one port, as the runner binds them.
        let first = bind_reuse("127.0.0.1:0".parse().expect("addr"));
        let local = first.local_addr().expect("addr");
        let second = bind_reuse(local);
        let peers: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("peer"))
            .collect();
        let mut steering = Steering::new(local, 100).expect("steering");
        for p in &peers {
            steering.add(p.local_addr().expect("addr"));
        }
        // Whatever the kernel's hash would have picked, every peer's datagram now reaches
        // its connected socket and none reaches the port sockets.
        for (i, p) in peers.iter().enumerate() {
            p.send_to(&[i as u8; 4], local).expect("send");
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while got.len() < peers.len() && tokio::time::Instant::now() < deadline {
            while let Some((n, from)) = steering.recv(&mut buf) {
                got.push((buf[..n].to_vec(), from));
            }
            if got.len() < peers.len() {
                let _ = tokio::time::timeout(Duration::from_millis(100), steering.wait()).await;
            }
        }
        assert_eq!(
            got.len(),
            peers.len(),
            "every datagram on its connected socket"
        );
        for (data, from) in got {
            let i = data[0] as usize;
            assert_eq!(from, peers[i].local_addr().expect("addr"));
        }
        for port_socket in [&first, &second] {
            assert!(
                port_socket.recv_from(&mut buf).is_err(),
                "nothing on the port sockets"
            );
        }
        // Closed: that peer's datagrams go back to the port sockets.
        steering.remove(peers[0].local_addr().expect("addr"));
        peers[0].send_to(b"back", local).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        let on_port = [&first, &second]
            .iter()
            .filter(|s| s.recv_from(&mut buf).is_ok())
            .count();
        assert_eq!(on_port, 1);
    }
}
