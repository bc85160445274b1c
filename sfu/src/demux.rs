//! O(1) demultiplexing of the one UDP port to the peer a datagram belongs to.
//!
//! A STUN binding request names its peer by the USERNAME attribute (`<our ufrag>:<theirs>`).
//! Every other datagram (DTLS, SRTP, SRTCP) is routed by its source address, and an address is
//! learned only once the peer has answered a STUN request from it, which str0m does only
//! after the request's MESSAGE-INTEGRITY checked out.

use crate::router::{Router, ShardId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use str0m::ice::StunMessage;

/// A peer: the participant's key and which of its two connections.
pub type PeerKey = (u64, consult_protocol::PeerTarget);

/// What the first byte says a datagram is (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    Stun,
    /// DTLS, RTP or RTCP: routed by source address.
    Other,
    Garbage,
}

pub fn classify(buf: &[u8]) -> DatagramKind {
    match buf.first() {
        Some(0..=1) if buf.len() >= 20 => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Other,
        Some(128..=191) if buf.len() >= 12 => DatagramKind::Other,
        _ => DatagramKind::Garbage,
    }
}

/// Our ufrag from a STUN binding request, if it parses.
pub fn stun_local_ufrag(buf: &[u8]) -> Option<&str> {
    let msg = StunMessage::parse(buf).ok()?;
    if !msg.is_binding_request() {
        return None;
    }
    let username = msg.username()?;
    username.split_once(':').map(|(local, _)| local)
}

#[derive(Debug, Default)]
pub struct Demux {
    by_ufrag: HashMap<String, PeerKey>,
    by_addr: HashMap<SocketAddr, PeerKey>,
    /// The shards' shared routing table, when this engine is one shard of several: our ufrags are
    /// registered there so that STUN for them reaches this shard.
    shared: Option<(Arc<Router>, ShardId)>,
    /// Addresses learned (true) or forgotten (false) since last taken, when shared: the
    /// shard opens or closes a connected socket for each (see `crate::steering`).
    changes: Vec<(SocketAddr, bool)>,
}

impl Demux {
    pub fn shared(router: Arc<Router>, shard: ShardId) -> Demux {
        Demux {
            shared: Some((router, shard)),
            ..Demux::default()
        }
    }

    pub fn add_peer(&mut self, ufrag: String, key: PeerKey) {
        if let Some((r, shard)) = &self.shared {
            r.add_ufrag(&ufrag, *shard);
        }
        self.by_ufrag.insert(ufrag, key);
    }

    /// The peer's ufrag changed (ICE restart); its learned addresses stay.
    pub fn rename_peer(&mut self, old: &str, new: String, key: PeerKey) {
        if self.by_ufrag.get(old) == Some(&key) {
            self.by_ufrag.remove(old);
            if let Some((r, shard)) = &self.shared {
                r.remove_ufrag(old, *shard);
            }
        }
        self.add_peer(new, key);
    }

    pub fn remove_peer(&mut self, ufrag: &str, key: PeerKey) {
        self.by_ufrag.remove(ufrag);
        let shared = &self.shared;
        if let Some((r, shard)) = shared {
            r.remove_ufrag(ufrag, *shard);
        }
        let changes = &mut self.changes;
        self.by_addr.retain(|addr, k| {
            let keep = *k != key;
            if let (false, Some((r, shard))) = (keep, shared) {
                r.forget_addr(addr, *shard);
                changes.push((*addr, false));
            }
            keep
        });
    }

    /// Called for every datagram a peer sends: its destination is a verified address.
    pub fn learn(&mut self, addr: SocketAddr, key: PeerKey) {
        if self.by_addr.get(&addr) != Some(&key)
            && self.by_addr.insert(addr, key).is_none()
            && self.shared.is_some()
        {
            self.changes.push((addr, true));
        }
    }

    /// Addresses learned (true) or forgotten (false) since the last call.
    pub fn take_changes(&mut self) -> std::vec::Drain<'_, (SocketAddr, bool)> {
        self.changes.drain(..)
    }

    /// The peer a datagram belongs to, or `None` to drop it.
    pub fn route(&self, source: SocketAddr, buf: &[u8]) -> Option<PeerKey> {
        match classify(buf) {
            DatagramKind::Stun => {
                let ufrag = stun_local_ufrag(buf)?;
                self.by_ufrag.get(ufrag).copied()
            }
            DatagramKind::Other => self.by_addr.get(&source).copied(),
            DatagramKind::Garbage => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consult_protocol::PeerTarget;
    use str0m::ice::TransId;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0u8; 20]), DatagramKind::Stun);
        assert_eq!(classify(&[0u8; 5]), DatagramKind::Garbage);
        assert_eq!(classify(&[22, 254, 253]), DatagramKind::Other);
        assert_eq!(classify(&[0x80; 12]), DatagramKind::Other);
        assert_eq!(classify(&[0x80; 3]), DatagramKind::Garbage);
        assert_eq!(classify(&[200, 1, 2]), DatagramKind::Garbage);
        assert_eq!(classify(&[]), DatagramKind::Garbage);
    }

    #[test]
    fn non_stun_from_unknown_address_is_dropped_until_learned() {
        let mut d = Demux::default();
        let key = (7, PeerTarget::Publisher);
        d.add_peer("abcd".into(), key);
        let rtp = [0x80u8; 40];
        assert_eq!(d.route(addr(5000), &rtp), None);
        d.learn(addr(5000), key);
        assert_eq!(d.route(addr(5000), &rtp), Some(key));
        d.remove_peer("abcd", key);
        assert_eq!(d.route(addr(5000), &rtp), None);
    }

    #[test]
    fn a_shard_hears_of_addresses_learned_and_forgotten() {
        let mut d = Demux::shared(Arc::new(Router::default()), 0);
        let key = (3, PeerTarget::Subscriber);
        d.add_peer("abcd".into(), key);
        d.learn(addr(6000), key);
        d.learn(addr(6000), key);
        d.learn(addr(6001), key);
        let learned: Vec<_> = d.take_changes().collect();
        assert_eq!(learned, [(addr(6000), true), (addr(6001), true)]);
        d.remove_peer("abcd", key);
        let mut forgotten: Vec<_> = d.take_changes().collect();
        forgotten.sort();
        assert_eq!(forgotten, [(addr(6000), false), (addr(6001), false)]);
        // A lone engine keeps no such list.
        let mut alone = Demux::default();
        alone.learn(addr(6000), key);
        assert_eq!(alone.take_changes().count(), 0);
    }

    #[test]
    fn garbage_stun_is_dropped_without_panicking() {
        let d = Demux::default();
        let mut buf = [0u8; 64];
        buf[1] = 1; // binding request type, garbage after
        for len in 0..buf.len() {
            assert_eq!(d.route(addr(1), &buf[..len]), None);
        }
    }

    #[test]
    fn stun_is_routed_by_username() {
        let mut d = Demux::default();
        let key = (1, PeerTarget::Subscriber);
        d.add_peer("srvufrag".into(), key);
        let mut buf = vec![0u8; 200];
        let msg = StunMessage::binding_request("srvufrag:cli", TransId::new(), true, 1, 1, false);
        // A dummy HMAC: routing only reads USERNAME; str0m checks integrity afterwards.
        let n = msg
            .to_bytes(Some(b"pass"), &mut buf, |_, _| [7u8; 20])
            .expect("stun message builds");
        assert_eq!(d.route(addr(9), &buf[..n]), Some(key));
    }
}
