//! Media counters from str0m's periodic stats events, per peer, summed for metrics.
//!
//! str0m reports cumulative counts per media line (bytes, packets, NACKs, PLIs) once a second;
//! each peer keeps the latest report per mid, and counts of peers that left are folded into
//! `departed` so totals never go down.

use std::collections::HashMap;
use str0m::media::Mid;
use str0m::stats::{MediaEgressStats, MediaIngressStats, PeerStats};

/// Counters of one media line, as last reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MediaCounts {
    pub packets: u64,
    pub bytes: u64,
    pub nacks: u64,
    /// PLI and FIR.
    pub keyframe_requests: u64,
}

impl MediaCounts {
    fn add(&mut self, o: &MediaCounts) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.nacks += o.nacks;
        self.keyframe_requests += o.keyframe_requests;
    }
}

/// What one peer connection reported.
#[derive(Debug, Default, Clone)]
pub struct PeerCounters {
    /// Received from the client per mid (our NACKs/PLIs toward it are counted here).
    ingress: HashMap<Mid, MediaCounts>,
    /// Sent to the client per mid (its NACKs/PLIs toward us are counted here).
    egress: HashMap<Mid, MediaCounts>,
    /// Per mid sent to the client: the loss its latest receiver reports show (fraction).
    egress_loss: HashMap<Mid, f32>,
    pub link: LinkReport,
}

/// The latest view of a connection's link.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct LinkReport {
    pub bytes_rx: u64,
    pub bytes_tx: u64,
    pub rtt_ms: Option<f32>,
    /// Send-side bandwidth estimate toward the client, bits per second.
    pub estimate_bps: Option<u64>,
    /// Loss the client reports on what we send (0..1).
    pub loss_to_client: Option<f32>,
    /// Loss on what the client sends us (0..1).
    pub loss_from_client: Option<f32>,
}

impl PeerCounters {
    pub fn on_ingress(&mut self, s: &MediaIngressStats) {
        self.ingress.insert(
            s.mid,
            MediaCounts {
                packets: s.packets,
                bytes: s.bytes,
                nacks: s.nacks,
                keyframe_requests: s.plis + s.firs,
            },
        );
    }

    /// The loss the client reports on what it gets on `mid`, if reported.
    pub fn egress_loss(&self, mid: Mid) -> Option<f32> {
        self.egress_loss.get(&mid).copied()
    }

    pub fn on_egress(&mut self, s: &MediaEgressStats) {
        if let Some(loss) = s.loss {
            self.egress_loss.insert(s.mid, loss);
        }
        self.egress.insert(
            s.mid,
            MediaCounts {
                packets: s.packets,
                bytes: s.bytes,
                nacks: s.nacks,
                keyframe_requests: s.plis + s.firs,
            },
        );
    }

    pub fn on_peer(&mut self, s: &PeerStats) {
        self.link = LinkReport {
            bytes_rx: s.peer_bytes_rx,
            bytes_tx: s.peer_bytes_tx,
            rtt_ms: s.rtt.map(|d| d.as_secs_f32() * 1000.0),
            estimate_bps: s.bwe_tx.map(|b| b.as_u64()),
            loss_to_client: s.egress_loss_fraction,
            loss_from_client: s.ingress_loss_fraction,
        };
    }

    pub fn ingress_total(&self) -> MediaCounts {
        let mut t = MediaCounts::default();
        self.ingress.values().for_each(|c| t.add(c));
        t
    }

    pub fn egress_total(&self) -> MediaCounts {
        let mut t = MediaCounts::default();
        self.egress.values().for_each(|c| t.add(c));
        t
    }
}

/// Totals over every connection, live and departed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MediaTotals {
    /// From publishers; `nacks`/`keyframe_requests`: what the SFU asked of them.
    pub ingress: MediaCounts,
    /// To subscribers; `nacks`/`keyframe_requests`: what they asked of the SFU.
    pub egress: MediaCounts,
}

impl MediaTotals {
    pub fn add(&mut self, other: &MediaTotals) {
        self.ingress.add(&other.ingress);
        self.egress.add(&other.egress);
    }

    pub fn add_peer(&mut self, p: &PeerCounters) {
        self.ingress.add(&p.ingress_total());
        self.egress.add(&p.egress_total());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_the_latest_report_of_each_media_line() {
        let mut p = PeerCounters::default();
        let mid = Mid::from("0");
        p.ingress.insert(
            mid,
            MediaCounts {
                packets: 10,
                bytes: 1000,
                nacks: 1,
                keyframe_requests: 0,
            },
        );
        // A later, cumulative report replaces the earlier one.
        p.ingress.insert(
            mid,
            MediaCounts {
                packets: 20,
                bytes: 2000,
                nacks: 2,
                keyframe_requests: 1,
            },
        );
        p.egress.insert(
            Mid::from("1"),
            MediaCounts {
                packets: 5,
                ..Default::default()
            },
        );
        let mut t = MediaTotals::default();
        t.add_peer(&p);
        t.add_peer(&p);
        assert_eq!(t.ingress.packets, 40);
        assert_eq!(t.ingress.nacks, 4);
        assert_eq!(t.ingress.keyframe_requests, 2);
        assert_eq!(t.egress.packets, 10);
    }
}
