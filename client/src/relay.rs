//! A UDP relay between a client and the SFU that drops a share of the RTP packets it carries
//! toward the client. The client is pointed at it by rewriting the SFU's candidate in the SDP
//! it receives (see [`crate::ClientOptions::media_via`]).
//!
//! Only RTP is dropped (not STUN, DTLS or RTCP), with a seeded generator, so a run is
//! repeatable and the loss falls on the media the NACK path must recover.
//!
//! The link can also go dark (nothing passes either way) and change path: after
//! [`LossyRelay::change_path`] the SFU sees the client from a new address, as after a NAT
//! rebinding or a switch from one uplink to another, and the old path is dead.

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

impl LossyRelay {
    /// Relay to `upstream`, dropping `loss` (0..1) of RTP packets sent toward the client.
    pub async fn start(upstream: SocketAddr, loss: f64, seed: u64) -> std::io::Result<LossyRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(RelayStats::default());
        let rng = Arc::new(Mutex::new(Rng(seed | 1)));
        let link = Arc::new(LinkState::default());
        // One upstream socket per client address and path, so the SFU sees distinct 5-tuples.
        let mut backs: HashMap<(SocketAddr, u64), Arc<UdpSocket>> = HashMap::new();
        let st = stats.clone();
        let lk = link.clone();
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
                        let Ok(b) = UdpSocket::bind("127.0.0.1:0").await else {
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
                            (lk.clone(), path),
                        ));
                        b
                    }
                };
                let _ = back.send_to(&buf[..n], upstream).await;
            }
        });
        Ok(LossyRelay {
            addr,
            stats,
            link,
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
    (link, path): (Arc<LinkState>, u64),
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
        let _ = front.send_to(&buf[..n], client).await;
    }
}
