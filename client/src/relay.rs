//! A UDP relay between a client and the SFU that drops a share of the RTP packets it carries
//! toward the client. The client is pointed at it by rewriting the SFU's candidate in the SDP
//! it receives (see [`crate::ClientOptions::media_via`]).
//!
//! Only RTP is dropped (not STUN, DTLS or RTCP), with a seeded generator, so a run is
//! repeatable and the loss falls on the media the NACK path must recover.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// Counters of what the relay did toward the client.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub rtp_to_client: AtomicU64,
    pub rtp_dropped: AtomicU64,
}

pub struct LossyRelay {
    addr: SocketAddr,
    pub stats: Arc<RelayStats>,
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
        // One upstream socket per client address, so the SFU sees distinct 5-tuples.
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let st = stats.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let back = match backs.get(&client) {
                    Some(b) => b.clone(),
                    None => {
                        let Ok(b) = UdpSocket::bind("127.0.0.1:0").await else {
                            return;
                        };
                        let b = Arc::new(b);
                        backs.insert(client, b.clone());
                        tokio::spawn(downstream(
                            b.clone(),
                            front.clone(),
                            client,
                            loss,
                            rng.clone(),
                            st.clone(),
                        ));
                        b
                    }
                };
                let _ = back.send_to(&buf[..n], upstream).await;
            }
        });
        Ok(LossyRelay { addr, stats, task })
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
) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, _)) = back.recv_from(&mut buf).await {
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
