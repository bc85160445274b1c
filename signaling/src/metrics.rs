//! `/metrics` in the Prometheus text format: rooms and participants from the hub, media
//! counters and each connection's link (estimate, RTT, loss) from the SFU.
//!
//! Values are read at scrape time. SFU totals are Prometheus counters, advanced by the
//! difference since the last scrape; per-connection gauges are rebuilt on every scrape, so a
//! connection that closed disappears.

use crate::server::AppState;
use consult_sfu::SfuStats;
use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Mutex;

/// Reads one counter out of the SFU's statistics.
type ReadCounter = fn(&SfuStats) -> u64;

pub struct Metrics {
    registry: Registry,
    rooms: IntGauge,
    participants: IntGaugeVec,
    tracks: IntGauge,
    sessions: IntGauge,
    recordings: IntGauge,
    sfu_participants: IntGauge,
    counters: Vec<(IntCounter, ReadCounter)>,
    estimate: prometheus::GaugeVec,
    allocated: prometheus::GaugeVec,
    allocation_estimate: prometheus::GaugeVec,
    audio_only: prometheus::GaugeVec,
    rtt: prometheus::GaugeVec,
    loss: prometheus::GaugeVec,
    /// One scrape at a time: counters advance by differences.
    scrape: Mutex<()>,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let participants = IntGaugeVec::new(
            Opts::new(
                "consult_participants",
                "Participants in open rooms, by state",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(participants.clone()))
            .expect("unique metric");
        let counter_defs: [(&str, &str, ReadCounter); 18] = [
            (
                "consult_sfu_datagrams_in_total",
                "UDP datagrams received",
                |s| s.datagrams_in,
            ),
            (
                "consult_sfu_datagrams_dropped_total",
                "Datagrams dropped before any peer (unknown sender, not STUN/DTLS/RTP/RTCP)",
                |s| s.datagrams_dropped,
            ),
            (
                "consult_sfu_rtp_in_total",
                "RTP packets received from publishers",
                |s| s.rtp_in,
            ),
            (
                "consult_sfu_rtp_forwarded_total",
                "RTP packets forwarded to subscribers",
                |s| s.rtp_forwarded,
            ),
            (
                "consult_sfu_rtp_malformed_red_total",
                "RTP packets dropped because their RED (RFC 2198) payload was broken",
                |s| s.rtp_malformed_red,
            ),
            (
                "consult_sfu_red_recovered_total",
                "Audio packets lost upstream, rebuilt from RED redundancy for plain-Opus subscribers",
                |s| s.red_recovered,
            ),
            (
                "consult_sfu_keyframe_requests_sent_total",
                "Keyframe requests (PLI/FIR) the SFU sent to publishers",
                |s| s.keyframe_requests_sent,
            ),
            (
                "consult_sfu_bytes_in_total",
                "Media bytes received from publishers",
                |s| s.media.ingress.bytes,
            ),
            (
                "consult_sfu_bytes_out_total",
                "Media bytes sent to subscribers",
                |s| s.media.egress.bytes,
            ),
            (
                "consult_sfu_nacks_received_total",
                "NACKs received from subscribers",
                |s| s.media.egress.nacks,
            ),
            (
                "consult_sfu_nacks_sent_total",
                "NACKs sent to publishers",
                |s| s.media.ingress.nacks,
            ),
            (
                "consult_sfu_plis_received_total",
                "Keyframe requests (PLI/FIR) received from subscribers",
                |s| s.media.egress.keyframe_requests,
            ),
            (
                "consult_sfu_packets_out_total",
                "Media packets sent to subscribers (with retransmissions)",
                |s| s.media.egress.packets,
            ),
            (
                "consult_sfu_dropped_unknown_sender_total",
                "Datagrams dropped: from an address or STUN username no peer has",
                |s| s.dropped_unknown_sender,
            ),
            (
                "consult_sfu_dropped_malformed_total",
                "Datagrams dropped: not STUN, DTLS, RTP or RTCP",
                |s| s.dropped_malformed,
            ),
            (
                "consult_sfu_stale_video_dropped_total",
                "Video packets of a just-paused copy still queued in the pacer, dropped instead of sent",
                |s| s.stale_video_dropped,
            ),
            (
                "consult_sfu_send_failures_total",
                "Datagrams the UDP socket refused to send (buffer full)",
                |s| s.send_failures,
            ),
            (
                "consult_sfu_datagrams_handed_over_total",
                "Datagrams read by one SFU shard for another shard's room",
                |s| s.datagrams_handed_over,
            ),
        ];
        let counters = counter_defs
            .into_iter()
            .map(|(name, help, get)| {
                let c = IntCounter::new(name, help).expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                (c, get)
            })
            .collect();
        let per_peer = |name: &str, help: &str, extra: &[&str]| {
            let mut labels = vec!["room", "participant", "connection"];
            labels.extend_from_slice(extra);
            let g =
                prometheus::GaugeVec::new(Opts::new(name, help), &labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        Metrics {
            rooms: gauge(&r, "consult_rooms", "Consultation rooms not ended"),
            tracks: gauge(&r, "consult_tracks", "Tracks published in open rooms"),
            sessions: gauge(&r, "consult_sessions", "Signaling sessions connected"),
            recordings: gauge(
                &r,
                "consult_recordings_active",
                "Consented recordings being written",
            ),
            sfu_participants: gauge(
                &r,
                "consult_sfu_participants",
                "Participants with a media session",
            ),
            estimate: per_peer(
                "consult_peer_estimate_bps",
                "Bandwidth estimate toward the client, bits per second",
                &[],
            ),
            allocation_estimate: per_peer(
                "consult_peer_allocation_estimate_bps",
                "The estimate the allocator splits toward the client (after the congestion gate), bits per second",
                &[],
            ),
            allocated: per_peer(
                "consult_peer_allocated_bps",
                "What the allocator forwards toward the client, bits per second",
                &[],
            ),
            audio_only: per_peer(
                "consult_peer_audio_only",
                "1 when every video track toward the client is paused for lack of bandwidth",
                &[],
            ),
            rtt: per_peer("consult_peer_rtt_ms", "Round-trip time, milliseconds", &[]),
            loss: per_peer(
                "consult_peer_loss_fraction",
                "Packet loss (0..1), to or from the client",
                &["direction"],
            ),
            participants,
            counters,
            registry: r,
            scrape: Mutex::new(()),
        }
    }

    /// Read the current values and encode them.
    pub async fn render(&self, state: &AppState) -> anyhow::Result<String> {
        let sfu = state.hub.sfu().stats().await?;
        let (rooms, census, sessions) = state.hub.census();
        let _one = self
            .scrape
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        self.rooms.set(rooms as i64);
        self.participants
            .with_label_values(&["waiting"])
            .set(census.waiting as i64);
        self.participants
            .with_label_values(&["admitted"])
            .set(census.admitted as i64);
        self.tracks.set(census.tracks as i64);
        self.sessions.set(sessions as i64);
        self.recordings.set(state.hub.recordings.active() as i64);
        self.sfu_participants.set(sfu.participants as i64);
        for (c, get) in &self.counters {
            let now = get(&sfu);
            let before = c.get();
            if now > before {
                c.inc_by(now - before);
            }
        }
        self.estimate.reset();
        self.allocated.reset();
        self.allocation_estimate.reset();
        self.audio_only.reset();
        self.rtt.reset();
        self.loss.reset();
        for p in &sfu.peers {
            let conn = match p.target {
                consult_protocol::PeerTarget::Publisher => "publisher",
                consult_protocol::PeerTarget::Subscriber => "subscriber",
            };
            let labels = [p.room.as_str(), p.participant.as_str(), conn];
            if let Some(e) = p.link.estimate_bps {
                self.estimate.with_label_values(&labels).set(e as f64);
            }
            if let Some(e) = p.allocation_estimate_bps {
                self.allocation_estimate
                    .with_label_values(&labels)
                    .set(e as f64);
            }
            if let Some(a) = p.allocated_bps {
                self.allocated.with_label_values(&labels).set(a as f64);
                let on = if p.audio_only { 1.0 } else { 0.0 };
                self.audio_only.with_label_values(&labels).set(on);
            }
            if let Some(r) = p.link.rtt_ms {
                self.rtt.with_label_values(&labels).set(f64::from(r));
            }
            for (dir, v) in [
                ("to_client", p.link.loss_to_client),
                ("from_client", p.link.loss_from_client),
            ] {
                if let Some(v) = v {
                    let l = [labels[0], labels[1], labels[2], dir];
                    self.loss.with_label_values(&l).set(f64::from(v));
                }
            }
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        let mut text = String::from_utf8(out)?;
        forward_delay_histogram(&mut text, &sfu.forward_delay);
        Ok(text)
    }
}

/// The SFU's own fixed-bucket histogram, in the Prometheus text format (the `prometheus`
/// crate only encodes histograms it observed itself).
fn forward_delay_histogram(out: &mut String, h: &consult_sfu::delay::DelayHistogram) {
    use std::fmt::Write as _;
    const NAME: &str = "consult_sfu_forward_delay_seconds";
    let _ = writeln!(
        out,
        "# HELP {NAME} Time from reading a datagram to each send it causes (forwarded packets, feedback)"
    );
    let _ = writeln!(out, "# TYPE {NAME} histogram");
    let mut cumulative = 0;
    for (bound, count) in consult_sfu::delay::BOUNDS_US.iter().zip(h.counts.iter()) {
        cumulative += count;
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "{NAME}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{NAME}_bucket{{le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{NAME}_sum {}", h.sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{NAME}_count {}", h.count());
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
