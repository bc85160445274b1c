//! Published tracks (in) and their per-subscriber copies (out).

use consult_protocol::{TrackKind, TrackLabel};
use std::time::{Duration, Instant};
use str0m::format::{Codec, CodecSpec, PayloadParams};
use str0m::media::Mid;
use str0m::media::Pt;
use str0m::rtp::SeqNo;

/// Shortest gap between two keyframe requests sent to one publisher track.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// A track a participant publishes, identified by the mid of its publisher peer.
#[derive(Debug)]
pub struct TrackIn {
    pub mid: Mid,
    pub label: TrackLabel,
    pub kind: TrackKind,
    /// Subscribers that receive it: (participant key, index into their `outs`).
    pub subscribers: Vec<u64>,
    /// Recorders receiving a copy of every packet.
    pub taps: Vec<tokio::sync::mpsc::Sender<crate::api::TapPacket>>,
    pub last_keyframe_request: Option<Instant>,
    /// A keyframe was asked for while rate-limited; send it when the interval has passed.
    pub keyframe_pending: bool,
}

impl TrackIn {
    /// Whether a keyframe request may go to the publisher now; records it if so.
    pub fn take_keyframe_slot(&mut self, now: Instant) -> bool {
        let free = self
            .last_keyframe_request
            .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_REQUEST_INTERVAL);
        if free {
            self.last_keyframe_request = Some(now);
            self.keyframe_pending = false;
        } else {
            self.keyframe_pending = true;
        }
        free
    }
}

/// Where a subscriber's copy of a track stands in the subscriber connection's negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// Not yet in an offer.
    ToOpen,
    /// In an offer that is not answered yet.
    Negotiating,
    Open,
    /// Source gone: to be set inactive in the next offer.
    ToStop,
    /// Set inactive in an offer that is not answered yet.
    Stopping,
}

/// One subscriber's copy of a published track.
#[derive(Debug)]
pub struct TrackOut {
    /// Publisher participant key and the mid on its publisher peer.
    pub source: (u64, Mid),
    pub source_participant: String,
    pub label: TrackLabel,
    pub kind: TrackKind,
    /// Mid on the subscriber peer, once in an offer.
    pub mid: Option<Mid>,
    pub state: OutState,
    pub seq: SeqRebase,
    /// Publisher payload type → subscriber payload type, learnt on first use.
    pub pt_map: Vec<(Pt, Pt)>,
}

impl TrackOut {
    pub fn new(source: (u64, Mid), source_participant: String, label: TrackLabel) -> TrackOut {
        TrackOut {
            source,
            source_participant,
            label,
            kind: label.kind(),
            mid: None,
            state: OutState::ToOpen,
            seq: SeqRebase::default(),
            pt_map: Vec::new(),
        }
    }

    pub fn track_id(&self) -> String {
        format!("{}/{}", self.source_participant, self.source.1)
    }
}

/// Rewrites a publisher's extended sequence numbers into a subscriber's own space starting at 1.
///
/// str0m takes the upper bits of the number we write as the SRTP rollover counter, so passing
/// the publisher's numbers through would break a subscriber who joins after 65,536 packets.
/// Gaps are kept, so loss upstream shows as loss downstream.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqRebase {
    offset: Option<u64>,
}

impl SeqRebase {
    /// The subscriber's sequence number for a publisher's, or `None` for a packet older than
    /// the first one this subscriber got (it cannot be placed before sequence number 1).
    pub fn map(&mut self, seq: SeqNo) -> Option<SeqNo> {
        let seq = *seq;
        let offset = *self.offset.get_or_insert(seq.saturating_sub(1));
        seq.checked_sub(offset).filter(|s| *s > 0).map(SeqNo::from)
    }
}

/// The subscriber's payload type for the codec of `pt` on the publisher side.
pub fn map_payload_type(
    publisher: &[PayloadParams],
    subscriber: &[PayloadParams],
    pt: Pt,
) -> Option<Pt> {
    let spec = publisher.iter().find(|p| p.pt() == pt)?.spec();
    subscriber
        .iter()
        .find(|p| p.spec() == spec)
        .or_else(|| subscriber.iter().find(|p| same_codec(&p.spec(), &spec)))
        .map(|p| p.pt())
}

fn same_codec(a: &CodecSpec, b: &CodecSpec) -> bool {
    if a.codec != b.codec || a.clock_rate != b.clock_rate {
        return false;
    }
    match a.codec {
        Codec::H264 => {
            a.format.packetization_mode == b.format.packetization_mode
                && a.format.profile_level_id.map(|p| p >> 8)
                    == b.format.profile_level_id.map(|p| p >> 8)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::format::CodecConfig;

    #[test]
    fn rebase_starts_at_one_and_keeps_gaps() {
        let mut r = SeqRebase::default();
        let base = 70_000u64; // past one rollover on the publisher side
        assert_eq!(r.map(SeqNo::from(base)).map(|s| *s), Some(1));
        assert_eq!(r.map(SeqNo::from(base + 1)).map(|s| *s), Some(2));
        assert_eq!(r.map(SeqNo::from(base + 5)).map(|s| *s), Some(6));
        // late packet from before the subscriber's first one
        assert_eq!(r.map(SeqNo::from(base - 3)), None);
        assert_eq!(r.map(SeqNo::from(base + 3)).map(|s| *s), Some(4));
    }

    #[test]
    fn keyframe_requests_are_rate_limited_and_remembered() {
        let now = Instant::now();
        let mut t = TrackIn {
            mid: Mid::from("0"),
            label: TrackLabel::Camera,
            kind: TrackKind::Video,
            subscribers: vec![],
            taps: vec![],
            last_keyframe_request: None,
            keyframe_pending: false,
        };
        assert!(t.take_keyframe_slot(now));
        assert!(!t.take_keyframe_slot(now + Duration::from_millis(100)));
        assert!(t.keyframe_pending);
        assert!(t.take_keyframe_slot(now + KEYFRAME_REQUEST_INTERVAL));
        assert!(!t.keyframe_pending);
    }

    #[test]
    fn payload_types_map_by_codec() {
        let mut a = CodecConfig::empty();
        a.enable_opus(true, false);
        a.enable_vp8(true);
        let b = CodecConfig::new_with_defaults();
        let opus_a = a
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap();
        let opus_b = b
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap();
        assert_eq!(
            map_payload_type(a.params(), b.params(), opus_a.pt()),
            Some(opus_b.pt())
        );
        assert_eq!(map_payload_type(a.params(), b.params(), Pt::from(1)), None);
    }
}
