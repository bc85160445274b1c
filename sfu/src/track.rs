//! Published tracks (in) and their per-subscriber copies (out).

use crate::forwarder::Forwarder;
use consult_protocol::{TrackKind, TrackLabel};
use std::time::{Duration, Instant};
use str0m::format::{Codec, CodecSpec, PayloadParams};
use str0m::media::Mid;
use str0m::media::Pt;
use str0m::media::Rid;
use str0m::rtp::SeqNo;

/// Shortest gap between two keyframe requests sent to one publisher track.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Most simulcast layers taken from one track (browsers send three).
pub const MAX_LAYERS: usize = 4;

/// One encoding of a published track: the only one, or a simulcast layer (rid).
#[derive(Debug)]
pub struct LayerIn {
    pub rid: Option<Rid>,
    /// What the publisher sends on it, for the allocator.
    pub rate: RateMeter,
    pub last_keyframe_request: Option<Instant>,
    /// A keyframe was asked for while rate-limited; send it when the interval has passed.
    pub keyframe_pending: bool,
    /// The publisher was told it may pause this layer (nobody received it).
    pub hinted_off: bool,
    /// Since when no subscriber has wanted it.
    pub unwanted_since: Option<Instant>,
    /// When it was last asked back after a pause hint.
    pub resumed_at: Option<Instant>,
    /// Its rate when it was hinted off: the allocator can still choose it.
    pub last_rate: u64,
}

/// After a layer is asked back, its remembered rate stands in until it flows again.
pub const RESUME_GRACE: Duration = Duration::from_secs(2);

impl LayerIn {
    pub fn new(rid: Option<Rid>, now: Instant) -> LayerIn {
        LayerIn {
            rid,
            rate: RateMeter::new(now),
            last_keyframe_request: None,
            keyframe_pending: false,
            hinted_off: false,
            unwanted_since: None,
            resumed_at: None,
            last_rate: 0,
        }
    }

    /// The rate the allocator counts: what flows (1 bit/s while not measured long enough), or
    /// for a layer paused on our hint (or just asked back) the rate it had.
    pub fn effective_bps(&self, now: Instant) -> u64 {
        let measured = self
            .rate
            .settled_bps(now)
            .unwrap_or(self.rate.bps(now).min(1));
        let remembered = self.hinted_off
            || self
                .resumed_at
                .is_some_and(|t| now.saturating_duration_since(t) < RESUME_GRACE);
        if remembered {
            measured.max(self.last_rate)
        } else {
            measured
        }
    }

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

/// A track a participant publishes, identified by the mid of its publisher peer.
#[derive(Debug)]
pub struct TrackIn {
    pub mid: Mid,
    pub label: TrackLabel,
    pub kind: TrackKind,
    /// Its encodings: one, or the simulcast layers in the order the offer declared them
    /// (never removed: indices are stable).
    pub layers: Vec<LayerIn>,
    /// Subscribers that receive it: (participant key, index into their `outs`).
    pub subscribers: Vec<u64>,
    /// Recorders receiving a copy of every packet (of one layer).
    pub taps: Vec<tokio::sync::mpsc::Sender<crate::api::TapPacket>>,
    /// The layer recorders get: the only one, or the best simulcast layer once measured.
    pub tap_layer: Option<usize>,
    /// Audio: the last plain packet, carried again in the next one toward RED subscribers.
    pub red_prev: Option<crate::red::Previous>,
    /// Audio: loss its receivers see (uplink + worst downlink, smoothed fraction), and the
    /// last hint sent to the publisher (percent, when).
    pub loss_ewma: f32,
    pub loss_hint: Option<(u8, Instant)>,
    /// Audio: the publisher counts as speaking until then (voice activity plus a hangover).
    pub speaking_until: Option<Instant>,
    /// Audio: the encoding step its publisher was told (see `audio_steps`).
    pub audio_step: AudioStepChoice,
    /// Video: the publisher was told to send none of it (its uplink cannot carry it).
    pub uplink_paused: bool,
    /// Audio: whether its publisher was last told it may send redundancy (RED).
    pub redundancy_told: bool,
}

/// How long a thinnest receiver's downlink must stay above a better audio step before the
/// publisher is moved up to it (down is at once).
pub const AUDIO_STEP_UP_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// The audio encoding step chosen for a publisher's track (sans-I/O): down at once when its
/// thinnest receiver's link falls, up after [`AUDIO_STEP_UP_HOLD`]; nothing is said while the
/// track stays at the top step (the publisher's own default).
#[derive(Debug, Default)]
pub struct AudioStepChoice {
    current: Option<usize>,
    up_since: Option<Instant>,
}

impl AudioStepChoice {
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// The thinnest receiver's link is `link_bps`: whether the step changed.
    pub fn update(
        &mut self,
        now: Instant,
        steps: &[consult_protocol::audio_steps::AudioStep],
        link_bps: u64,
    ) -> bool {
        let fits = consult_protocol::audio_steps::step_for(steps, link_bps);
        let current = self.current.unwrap_or(0);
        if fits > current {
            self.current = Some(fits);
            self.up_since = None;
            return true;
        }
        if fits == current {
            self.up_since = None;
            return false;
        }
        let since = *self.up_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= AUDIO_STEP_UP_HOLD && self.current.is_some() {
            self.current = Some(fits);
            self.up_since = None;
            return true;
        }
        false
    }
}

/// Audio louder than this (−dBov, RFC 6464) counts as speech when the publisher does not set
/// the voice-activity bit (or sets it only from its own detector).
pub const SPEECH_LEVEL_DBOV: u8 = 50;
/// Speech keeps its rank this long after the last voiced packet: pauses between words do not
/// hand the link to someone else.
pub const SPEAKING_HANGOVER: std::time::Duration = std::time::Duration::from_millis(2_000);

impl TrackIn {
    /// A track with the given simulcast rids (none: a plain track).
    pub fn new(mid: Mid, label: TrackLabel, rids: &[Rid], now: Instant) -> TrackIn {
        let layers: Vec<LayerIn> = if rids.is_empty() {
            vec![LayerIn::new(None, now)]
        } else {
            rids.iter()
                .take(MAX_LAYERS)
                .map(|r| LayerIn::new(Some(*r), now))
                .collect()
        };
        TrackIn {
            mid,
            label,
            kind: label.kind(),
            tap_layer: (layers.len() == 1).then_some(0),
            layers,
            subscribers: Vec::new(),
            taps: Vec::new(),
            red_prev: None,
            loss_ewma: 0.0,
            loss_hint: None,
            speaking_until: None,
            audio_step: AudioStepChoice::default(),
            uplink_paused: false,
            redundancy_told: true,
        }
    }

    /// Audio: note the voice activity of a packet (RFC 6464 header extension).
    pub fn note_voice(&mut self, now: Instant, level: Option<i8>, voice_activity: Option<bool>) {
        // Either says so: some senders never set the bit (or set it on everything loud).
        let voiced = voice_activity == Some(true)
            || level.is_some_and(|l| l.unsigned_abs() <= SPEECH_LEVEL_DBOV);
        if voiced {
            self.speaking_until = Some(now + SPEAKING_HANGOVER);
        }
    }

    pub fn speaking(&self, now: Instant) -> bool {
        self.speaking_until.is_some_and(|t| t > now)
    }

    pub fn simulcast(&self) -> bool {
        self.layers.len() > 1
    }

    /// The layer a packet with `rid` belongs to. A plain track takes every packet; a
    /// simulcast one learns a rid it was not told of, up to [`MAX_LAYERS`].
    pub fn layer_of(&mut self, rid: Option<Rid>, now: Instant) -> Option<usize> {
        if !self.simulcast() && (rid.is_none() || self.layers[0].rid.is_none()) {
            return Some(0);
        }
        if let Some(i) = self.layers.iter().position(|l| l.rid == rid) {
            return Some(i);
        }
        if self.layers.len() < MAX_LAYERS && rid.is_some() {
            self.layers.push(LayerIn::new(rid, now));
            return Some(self.layers.len() - 1);
        }
        None
    }

    /// Layers that can be forwarded, by rate, lowest first: (layer index, bits/s). A layer
    /// not measured long enough counts as 1 bit/s when it has sent something; a silent one is
    /// left out, unless it is silent on our hint (see [`LayerIn::effective_bps`]).
    pub fn layers_by_rate(&self, now: Instant) -> Vec<(usize, u64)> {
        let mut v: Vec<(usize, u64)> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (i, l.effective_bps(now)))
            .filter(|(_, r)| *r > 0)
            .collect();
        v.sort_by_key(|(i, r)| (*r, *i));
        v
    }

    /// The best layer being sent now.
    pub fn top_layer(&self, now: Instant) -> Option<usize> {
        self.layers_by_rate(now).last().map(|(i, _)| *i)
    }

    /// What the track costs at the given layer (bits/s).
    pub fn rate_of(&self, layer: Option<usize>, now: Instant) -> u64 {
        layer
            .and_then(|i| self.layers.get(i))
            .map_or(0, |l| l.rate.bps(now))
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
    /// Layer choice and the rewrite into one continuous stream.
    pub fwd: Forwarder,
    /// Publisher payload type → subscriber payload type, learnt on first use.
    pub pt_map: Vec<(Pt, Pt)>,
    /// The subscriber's RED payload type for this audio, if it negotiated RED.
    pub red_pt: Option<Pt>,
    /// Send it as RED now (the link loses packets, and the redundancy fits).
    pub red: bool,
    /// When `red` last went off: it comes back no sooner than `RED_REARM` after (the room
    /// it needs comes and goes with every allocation on a thin link).
    pub red_off_at: Option<std::time::Instant>,
    /// Strip the publisher's own RED to plain Opus for this subscriber: its link queues, and
    /// only the stethoscope keeps its redundancy there.
    pub strip_red: bool,
    /// Emptying of the subscriber stream's resend cache while this copy is idle.
    pub resend_cache: crate::resend::ResendCacheState,
    /// Audio: the RTX SSRC offered for its retransmissions (see `audio_rtx`).
    pub audio_rtx: Option<str0m::rtp::Ssrc>,
}

impl TrackOut {
    /// A copy of `track` (published by `source_participant`).
    pub fn new(source: (u64, Mid), source_participant: String, track: &TrackIn) -> TrackOut {
        let kind = track.kind;
        let clock_rate = match kind {
            TrackKind::Audio => 48_000,
            TrackKind::Video => 90_000,
        };
        // A simulcast copy starts on a keyframe of its layer; a plain one anywhere (the
        // subscriber's first PLI brings a keyframe soon).
        let start_anywhere = kind == TrackKind::Audio || !track.simulcast();
        TrackOut {
            source,
            source_participant,
            label: track.label,
            kind,
            mid: None,
            state: OutState::ToOpen,
            fwd: Forwarder::new(clock_rate, start_anywhere),
            pt_map: Vec::new(),
            red_pt: None,
            red: false,
            red_off_at: None,
            strip_red: false,
            resend_cache: Default::default(),
            audio_rtx: None,
        }
    }

    /// Not paused by the allocator.
    pub fn forwarding(&self) -> bool {
        self.fwd.forwarding()
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
    offset: Option<i128>,
    /// Highest number handed out.
    last: u64,
    /// Lowest number still to hand out: after a resume, late packets from before it would
    /// reuse numbers already sent.
    floor: u64,
}

impl SeqRebase {
    /// The subscriber's sequence number for a publisher's, or `None` for a packet older than
    /// the first one this subscriber got (it cannot be placed before sequence number 1).
    pub fn map(&mut self, seq: SeqNo) -> Option<SeqNo> {
        let seq = *seq as i128;
        // publisher number − offset = subscriber number; signed, as a new simulcast layer's
        // numbers may be below the ones already handed out.
        let offset = *self.offset.get_or_insert(seq - 1);
        let out = u64::try_from(seq - offset)
            .ok()
            .filter(|s| *s > 0 && *s >= self.floor)?;
        self.last = self.last.max(out);
        Some(SeqNo::from(out))
    }

    /// Continue right after the last number handed out with the publisher's `seq` (of the
    /// same stream, or of another layer), skipping what was dropped in between.
    pub fn resume(&mut self, seq: SeqNo) {
        if self.offset.is_some() {
            self.offset = Some(*seq as i128 - (self.last as i128 + 1));
            self.floor = self.last + 1;
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
        // A late packet from before the resume would reuse 6: dropped.
        assert_eq!(r.map(SeqNo::from(base + 99)), None);
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
        let mut t = LayerIn::new(None, now);
        assert!(t.take_keyframe_slot(now));
        assert!(!t.take_keyframe_slot(now + Duration::from_millis(100)));
        assert!(t.keyframe_pending);
        assert!(t.take_keyframe_slot(now + KEYFRAME_REQUEST_INTERVAL));
        assert!(!t.keyframe_pending);
    }

    #[test]
    fn simulcast_layers_are_ranked_by_rate_and_remembered_while_paused_on_a_hint() {
        let t0 = Instant::now();
        let rids: Vec<Rid> = ["q", "h", "f"].iter().map(|r| Rid::from(*r)).collect();
        let mut t = TrackIn::new(Mid::from("1"), TrackLabel::Camera, &rids, t0);
        assert!(t.simulcast());
        assert_eq!(t.layer_of(Some(Rid::from("h")), t0), Some(1));
        // A plain packet on a simulcast track belongs nowhere; a new rid is learnt.
        assert_eq!(t.layer_of(None, t0), None);
        assert_eq!(t.layer_of(Some(Rid::from("x")), t0), Some(3));
        assert_eq!(t.layer_of(Some(Rid::from("y")), t0), None, "at most four");
        // f at 800, h at 300, q at 100 kbit/s for one second.
        for i in 0..100u64 {
            let at = t0 + Duration::from_millis(i * 10);
            t.layers[2].rate.add(at, 1000);
            t.layers[1].rate.add(at, 375);
            t.layers[0].rate.add(at, 125);
        }
        let now = t0 + Duration::from_millis(1000);
        let order: Vec<usize> = t.layers_by_rate(now).iter().map(|l| l.0).collect();
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(t.top_layer(now), Some(2));
        // f stops by itself: out of the ranking. h stops on our hint: still there.
        t.layers[1].hinted_off = true;
        t.layers[1].last_rate = 300_000;
        let later = now + Duration::from_secs(2);
        let ranked = t.layers_by_rate(later);
        assert_eq!(ranked, vec![(1, 300_000)]);
        assert_eq!(t.top_layer(later), Some(1));
    }

    #[test]
    fn a_plain_track_takes_every_packet() {
        let t0 = Instant::now();
        let mut t = TrackIn::new(Mid::from("0"), TrackLabel::Stethoscope, &[], t0);
        assert!(!t.simulcast());
        assert_eq!(t.layer_of(None, t0), Some(0));
        assert_eq!(t.layer_of(Some(Rid::from("a")), t0), Some(0));
        assert_eq!(t.tap_layer, Some(0));
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
