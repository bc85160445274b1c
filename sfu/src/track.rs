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
    /// What the publisher sends on it, for the allocator.
    pub rate: RateMeter,
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
    /// The allocator lets it through (false: paused for lack of bandwidth).
    pub forwarding: bool,
    /// Resumed after a pause: nothing goes out before the start of a keyframe.
    pub awaiting_keyframe: bool,
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
            forwarding: true,
            awaiting_keyframe: false,
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
///
/// Packets the SFU drops on purpose (a paused track) must not look like loss, or the
/// subscriber NACKs them: [`SeqRebase::resume`] closes that gap.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqRebase {
    offset: Option<u64>,
    /// Highest number handed out.
    last: u64,
}

impl SeqRebase {
    /// The subscriber's sequence number for a publisher's, or `None` for a packet older than
    /// the first one this subscriber got (it cannot be placed before sequence number 1).
    pub fn map(&mut self, seq: SeqNo) -> Option<SeqNo> {
        let seq = *seq;
        let offset = *self.offset.get_or_insert(seq.saturating_sub(1));
        let out = seq.checked_sub(offset).filter(|s| *s > 0)?;
        self.last = self.last.max(out);
        Some(SeqNo::from(out))
    }

    /// Continue right after the last number handed out with the publisher's `seq`, skipping
    /// what was dropped in between.
    pub fn resume(&mut self, seq: SeqNo) {
        if self.offset.is_some() {
            self.offset = Some((*seq).saturating_sub(self.last + 1));
        }
    }
}

/// Bits per second over the last one to two half-second windows.
#[derive(Debug, Clone, Copy)]
pub struct RateMeter {
    started: Instant,
    window_start: Instant,
    current: u64,
    previous: u64,
}

const RATE_WINDOW: Duration = Duration::from_millis(500);

impl RateMeter {
    pub fn new(now: Instant) -> RateMeter {
        RateMeter {
            started: now,
            window_start: now,
            current: 0,
            previous: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW * 2 {
            self.previous = 0;
            self.current = 0;
            self.window_start = now;
        } else if elapsed >= RATE_WINDOW {
            self.previous = self.current;
            self.current = 0;
            self.window_start += RATE_WINDOW;
        }
    }

    pub fn add(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.current += bytes as u64;
    }

    /// The rate, in bits/s, once at least one whole window has been measured.
    pub fn settled_bps(&self, now: Instant) -> Option<u64> {
        (now.saturating_duration_since(self.started) >= RATE_WINDOW).then(|| self.bps(now))
    }

    /// The rate, in bits/s.
    pub fn bps(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.window_start);
        let (bytes, span) = if elapsed >= RATE_WINDOW * 2 {
            return 0;
        } else if elapsed >= RATE_WINDOW {
            (self.current, elapsed)
        } else {
            (self.previous + self.current, RATE_WINDOW + elapsed)
        };
        (bytes * 8 * 1000) / (span.as_millis().max(1) as u64)
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
        // Paused from base + 6 to base + 99: the next one sent follows without a gap.
        r.resume(SeqNo::from(base + 100));
        assert_eq!(r.map(SeqNo::from(base + 100)).map(|s| *s), Some(7));
        assert_eq!(r.map(SeqNo::from(base + 101)).map(|s| *s), Some(8));
    }

    #[test]
    fn rate_meter_over_two_windows() {
        let t = Instant::now();
        let mut m = RateMeter::new(t);
        // 100 packets of 125 bytes over one second: 100 kbit/s.
        for i in 0..100u64 {
            m.add(t + Duration::from_millis(i * 10), 125);
        }
        let r = m.bps(t + Duration::from_millis(1000));
        assert!((95_000..=105_000).contains(&r), "{r}");
        // Silence empties it.
        assert_eq!(m.bps(t + Duration::from_secs(3)), 0);
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
            rate: RateMeter::new(now),
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
