//! Which shard a datagram belongs to. The SFU runs one engine per shard (thread), each owning
//! whole rooms; whichever shard reads a datagram from the one UDP port looks its owner up
//! here. STUN is routed by our ICE username fragment (each shard registers the ufrags of its
//! peers here); everything else by the source address, learned from the STUN that came first.

use crate::demux::{classify, stun_local_ufrag, DatagramKind};
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

pub type ShardId = usize;

#[derive(Debug, Default)]
pub struct Router {
    by_ufrag: DashMap<String, ShardId>,
    by_addr: DashMap<SocketAddr, ShardId>,
    pub(crate) datagrams_in: AtomicU64,
    pub(crate) dropped_unknown_sender: AtomicU64,
    pub(crate) dropped_malformed: AtomicU64,
}

impl Router {
    pub fn add_ufrag(&self, ufrag: &str, shard: ShardId) {
        self.by_ufrag.insert(ufrag.to_owned(), shard);
    }

    pub fn remove_ufrag(&self, ufrag: &str, shard: ShardId) {
        self.by_ufrag.remove_if(ufrag, |_, s| *s == shard);
    }

    pub fn forget_addr(&self, addr: &SocketAddr, shard: ShardId) {
        self.by_addr.remove_if(addr, |_, s| *s == shard);
    }

    /// The shard `buf` from `source` goes to, or `None` (counted as dropped).
    pub fn route(&self, source: SocketAddr, buf: &[u8]) -> Option<ShardId> {
        self.datagrams_in.fetch_add(1, Ordering::Relaxed);
        let shard = match classify(buf) {
            DatagramKind::Stun => {
                let shard = stun_local_ufrag(buf).and_then(|u| self.by_ufrag.get(u).map(|s| *s));
                if let Some(s) = shard {
                    // A peer's address (or its new one after a network change).
                    if self.by_addr.get(&source).map(|x| *x) != Some(s) {
                        self.by_addr.insert(source, s);
                    }
                }
                shard
            }
            DatagramKind::Other => self.by_addr.get(&source).map(|s| *s),
            DatagramKind::Garbage => {
                self.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if shard.is_none() {
            self.dropped_unknown_sender.fetch_add(1, Ordering::Relaxed);
        }
        shard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(ufrag: &str) -> Vec<u8> {
        use str0m::ice::{StunMessage, TransId};
        let username = format!("{ufrag}:remote");
        let msg = StunMessage::binding_request(&username, TransId::new(), true, 0, 1, false);
        let mut buf = vec![0u8; 1500];
        let n = msg
            .to_bytes(Some(b"pass"), &mut buf, |_, _| [7u8; 20])
            .expect("encode");
        buf.truncate(n);
        buf
    }

    #[test]
    fn stun_by_ufrag_then_media_by_address() {
        let r = Router::default();
        let a = SocketAddr::from(([127, 0, 0, 1], 4000));
        let rtp = [0x80u8, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(r.route(a, &rtp), None, "address not known yet");
        r.add_ufrag("abcd", 1);
        assert_eq!(r.route(a, &binding_request("abcd")), Some(1));
        assert_eq!(r.route(a, &rtp), Some(1));
        assert_eq!(r.route(a, &binding_request("zzzz")), None);
        assert_eq!(r.route(a, b"\xff garbage"), None);
        r.remove_ufrag("abcd", 0);
        assert_eq!(
            r.route(a, &binding_request("abcd")),
            Some(1),
            "other shard's"
        );
        r.remove_ufrag("abcd", 1);
        r.forget_addr(&a, 1);
        assert_eq!(r.route(a, &rtp), None);
        assert_eq!(r.datagrams_in.load(Ordering::Relaxed), 7);
        assert_eq!(r.dropped_malformed.load(Ordering::Relaxed), 1);
        assert_eq!(r.dropped_unknown_sender.load(Ordering::Relaxed), 3);
    }
}
