//! A UDP relay between a client and the SFU that drops a share of the RTP packets it carries
//! toward the client. The client is pointed at it by rewriting the SFU's candidate in the SDP
//! it receives (see [`crate::ClientOptions::media_via`]).
//!
//! Only RTP is dropped (not STUN, DTLS or RTCP), with a seeded generator, so a run is
//! repeatable and the loss falls on the media the NACK path must recover.
//!
//! [`LossyRelay::start_impaired`] puts an impaired link (`impair.rs`: rate limit, queue,
//! delay, jitter, random or bursty loss, reordering, scheduled over time) in each direction.
//!
//! The link can also go dark (nothing passes either way) and change path: after
//! [`LossyRelay::change_path`] the SFU sees the client from a new address, as after a NAT
//! rebinding or a switch from one uplink to another, and the old path is dead.

use crate::impair::{LinkModel, LinkStats, Profile, Verdict};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// Counters of what the relay did toward the client.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub rtp_to_client: AtomicU64,
    pub rtp_dropped: AtomicU64,
    /// Datagrams dropped (both ways) while the link was dark.
    pub dark_dropped: AtomicU64,
}

/// The link's switches, shared with its tasks.
#[derive(Debug, Default)]
struct LinkState {
    dark: AtomicBool,
    /// Bumped by `change_path`: upstream sockets of an older path stop carrying anything.
    path: AtomicU64,
}

pub struct LossyRelay {
    addr: SocketAddr,
    pub stats: Arc<RelayStats>,
    link: Arc<LinkState>,
    shapers: Shapers,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Is this datagram RTP (not RTCP), by RFC 7983 and RFC 5761 rules?
fn is_rtp(buf: &[u8]) -> bool {
    buf.len() >= 12 && (128..192).contains(&buf[0]) && !(64..96).contains(&(buf[1] & 0x7f))
}

/// xorshift64*: tiny, seeded, good enough for loss patterns.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a link was offered, by kind of datagram (headers are in the clear under SRTP), to see
/// what fills a thin link: media, retransmissions, padding or RTCP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficMix {
    /// RTP bytes and packets by payload type.
    pub rtp_bytes_by_pt: [u64; 128],
    pub rtp_packets_by_pt: [u64; 128],
    /// RTP packets with the padding bit set (padding-only probes are among them).
    pub padded_packets: u64,
    pub padded_bytes: u64,
    pub rtcp_bytes: u64,
    /// RTCP bytes by the packet type of each datagram's first packet (200 SR, 201 RR, 205
    /// transport feedback: NACK, TWCC; 206 payload-specific: PLI, REMB), from 200.
    pub rtcp_bytes_by_first_pt: [u64; 8],
    /// STUN, DTLS and anything else.
    pub other_bytes: u64,
}

impl Default for TrafficMix {
    fn default() -> Self {
        TrafficMix {
            rtp_bytes_by_pt: [0; 128],
            rtp_packets_by_pt: [0; 128],
            padded_packets: 0,
            padded_bytes: 0,
            rtcp_bytes: 0,
            rtcp_bytes_by_first_pt: [0; 8],
            other_bytes: 0,
        }
    }
}

impl TrafficMix {
    fn count(&mut self, buf: &[u8]) {
        let len = buf.len() as u64;
        if is_rtp(buf) {
            let pt = usize::from(buf[1] & 0x7f);
            self.rtp_bytes_by_pt[pt] += len;
            self.rtp_packets_by_pt[pt] += 1;
            if buf[0] & 0x20 != 0 {
                self.padded_packets += 1;
                self.padded_bytes += len;
            }
        } else if buf.len() >= 2 && (128..192).contains(&buf[0]) {
            self.rtcp_bytes += len;
            if let Some(slot) = usize::from(buf[1])
                .checked_sub(200)
                .and_then(|i| self.rtcp_bytes_by_first_pt.get_mut(i))
            {
                *slot += len;
            }
        } else {
            self.other_bytes += len;
        }
    }

    /// What was offered between `earlier` and this one.
    pub fn since(&self, earlier: &TrafficMix) -> TrafficMix {
        let mut d = *self;
        for pt in 0..128 {
            d.rtp_bytes_by_pt[pt] -= earlier.rtp_bytes_by_pt[pt];
            d.rtp_packets_by_pt[pt] -= earlier.rtp_packets_by_pt[pt];
        }
        d.padded_packets -= earlier.padded_packets;
        d.padded_bytes -= earlier.padded_bytes;
        d.rtcp_bytes -= earlier.rtcp_bytes;
        for i in 0..8 {
            d.rtcp_bytes_by_first_pt[i] -= earlier.rtcp_bytes_by_first_pt[i];
        }
        d.other_bytes -= earlier.other_bytes;
        d
    }

    /// (payload type, packets, bytes) of the payload types seen.
    pub fn by_pt(&self) -> Vec<(u8, u64, u64)> {
        (0..128u8)
            .filter(|pt| self.rtp_packets_by_pt[usize::from(*pt)] > 0)
            .map(|pt| {
                let i = usize::from(pt);
                (pt, self.rtp_packets_by_pt[i], self.rtp_bytes_by_pt[i])
            })
            .collect()
    }
}

/// One direction of an impaired link: the [`LinkModel`] decides, a task delivers on time.
pub struct Shaper {
    /// The link's model and what it was offered, under one lock per datagram.
    link: std::sync::Mutex<(LinkModel, TrafficMix)>,
    deliveries: tokio::sync::mpsc::UnboundedSender<Delivery>,
}

struct Delivery {
    at: tokio::time::Instant,
    order: u64,
    bytes: Vec<u8>,
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl PartialEq for Delivery {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Delivery {}
impl PartialOrd for Delivery {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delivery {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: the heap pops the earliest first.
        (o.at, o.order).cmp(&(self.at, self.order))
    }
}

impl Shaper {
    pub fn new(schedule: Vec<(std::time::Duration, Profile)>, seed: u64) -> Arc<Shaper> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
        tokio::spawn(async move {
            let mut heap = std::collections::BinaryHeap::<Delivery>::new();
            loop {
                let next = heap.peek().map(|d| d.at);
                tokio::select! {
                    d = rx.recv() => match d {
                        Some(d) => heap.push(d),
                        None => return,
                    },
                    _ = async {
                        match next {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let now = tokio::time::Instant::now();
                        while heap.peek().is_some_and(|d| d.at <= now) {
                            let d = heap.pop().expect("peeked");
                            let _ = d.socket.send_to(&d.bytes, d.to).await;
                        }
                    }
                }
            }
        });
        Arc::new(Shaper {
            link: std::sync::Mutex::new((
                LinkModel::scheduled(std::time::Instant::now(), schedule, seed),
                TrafficMix::default(),
            )),
            deliveries: tx,
        })
    }

    /// Pass a datagram through the link: dropped, or sent from `socket` to `to` when due.
    pub fn send(&self, bytes: &[u8], socket: &Arc<UdpSocket>, to: SocketAddr) {
        let now = std::time::Instant::now();
        let (verdict, order) = {
            let Ok(mut link) = self.link.lock() else {
                return;
            };
            let (m, mix) = &mut *link;
            mix.count(bytes);
            let v = m.on_packet(now, bytes.len());
            (v, m.stats.packets)
        };
        if let Verdict::Deliver(at) = verdict {
            let at = tokio::time::Instant::now() + at.saturating_duration_since(now);
            let _ = self.deliveries.send(Delivery {
                at,
                order,
                bytes: bytes.to_vec(),
                socket: socket.clone(),
                to,
            });
        }
    }

    pub fn stats(&self) -> LinkStats {
        self.link.lock().map(|l| l.0.stats).unwrap_or_default()
    }

    /// What the link was offered so far, by kind of datagram.
    pub fn mix(&self) -> TrafficMix {
        self.link.lock().map(|l| l.1).unwrap_or_default()
    }
}

/// The two directions of an impaired link.
#[derive(Clone, Default)]
struct Shapers {
    to_server: Option<Arc<Shaper>>,
    to_client: Option<Arc<Shaper>>,
}

impl LossyRelay {
    /// Relay to `upstream` through an impaired link: each direction follows its schedule of
    /// profiles (rate, queue, delay, jitter, loss, reordering) from now on.
    pub async fn start_impaired(
        upstream: SocketAddr,
        to_server: Vec<(std::time::Duration, Profile)>,
        to_client: Vec<(std::time::Duration, Profile)>,
        seed: u64,
    ) -> std::io::Result<LossyRelay> {
        let shapers = Shapers {
            to_server: Some(Shaper::new(to_server, seed)),
            to_client: Some(Shaper::new(to_client, seed.wrapping_add(1))),
        };
        Self::start_with(upstream, 0.0, seed, shapers).await
    }

    /// What each direction's link did: (toward the server, toward the client).
    pub fn link_stats(&self) -> (LinkStats, LinkStats) {
        let s = |x: &Option<Arc<Shaper>>| x.as_ref().map(|s| s.stats()).unwrap_or_default();
        (s(&self.shapers.to_server), s(&self.shapers.to_client))
    }

    /// What each direction's link was offered, by kind: (toward the server, toward the client).
    pub fn traffic_mix(&self) -> (TrafficMix, TrafficMix) {
        let s = |x: &Option<Arc<Shaper>>| x.as_ref().map(|s| s.mix()).unwrap_or_default();
        (s(&self.shapers.to_server), s(&self.shapers.to_client))
    }

    /// Relay to `upstream`, dropping `loss` (0..1) of RTP packets sent toward the client.
    pub async fn start(upstream: SocketAddr, loss: f64, seed: u64) -> std::io::Result<LossyRelay> {
        Self::start_with(upstream, loss, seed, Shapers::default()).await
    }

    async fn start_with(
        upstream: SocketAddr,
        loss: f64,
        seed: u64,
        shapers: Shapers,
    ) -> std::io::Result<LossyRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let rng = Arc::new(Mutex::new(Rng(seed | 1)));
        let link = Arc::new(LinkState::default());
        // One upstream socket per client address and path, so the SFU sees distinct 5-tuples.
        let mut backs: HashMap<(SocketAddr, u64), Arc<UdpSocket>> = HashMap::new();
        let st = stats.clone();
        let lk = link.clone();
        let sh = shapers.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                if lk.dark.load(Ordering::Relaxed) {
                    st.dark_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let path = lk.path.load(Ordering::Relaxed);
                let back = match backs.get(&(client, path)) {
                    Some(b) => b.clone(),
                    None => {
                        // Toward a server on loopback, from loopback; toward another local
                        // address, from any (Linux drops packets between 127/8 and other
                        // sources, and Janus's candidates are never on loopback).
                        let bind = if upstream.ip().is_loopback() {
                            "127.0.0.1:0"
                        } else {
                            "0.0.0.0:0"
                        };
                        let Ok(b) = UdpSocket::bind(bind).await else {
                            return;
                        };
                        let b = Arc::new(b);
                        backs.insert((client, path), b.clone());
                        tokio::spawn(downstream(
                            b.clone(),
                            front.clone(),
                            client,
                            loss,
                            rng.clone(),
                            st.clone(),
                            (lk.clone(), path, sh.to_client.clone()),
                        ));
                        b
                    }
                };
                match &sh.to_server {
                    Some(s) => s.send(&buf[..n], &back, upstream),
                    None => {
                        let _ = back.send_to(&buf[..n], upstream).await;
                    }
                }
            }
        });
        Ok(LossyRelay {
            addr,
            stats,
            link,
            shapers,
            task,
        })
    }

    /// Cut the link (`true`: nothing passes either way) or bring it back.
    pub fn set_dark(&self, dark: bool) {
        self.link.dark.store(dark, Ordering::Relaxed);
    }

    /// Move the client to a new path: the SFU sees it from a new address from now on.
    pub fn change_path(&self) {
        self.link.path.fetch_add(1, Ordering::Relaxed);
    }

    /// The address the client must send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn downstream(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    loss: f64,
    rng: Arc<Mutex<Rng>>,
    stats: Arc<RelayStats>,
    // The link's switches, this socket's path, and the link toward the client.
    (link, path, shaper): (Arc<LinkState>, u64, Option<Arc<Shaper>>),
) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, _)) = back.recv_from(&mut buf).await {
        if link.path.load(Ordering::Relaxed) != path {
            return; // an old path: dead
        }
        if link.dark.load(Ordering::Relaxed) {
            stats.dark_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if is_rtp(&buf[..n]) {
            stats.rtp_to_client.fetch_add(1, Ordering::Relaxed);
            if rng.lock().await.unit() < loss {
                stats.rtp_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        match &shaper {
            Some(s) => s.send(&buf[..n], &front, client),
            None => {
                let _ = front.send_to(&buf[..n], client).await;
            }
        }
    }
}
