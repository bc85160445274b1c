//! Per-subscriber bandwidth allocation by clinical priority (sans-I/O).
//!
//! Each subscriber's downlink estimate is split across the tracks it receives: audio first —
//! the stethoscope (never paused), then the participant speaking (voice activity), then other
//! speech — then video by rank: a track the physician pinned, then examination video
//! (otoscope), shared screen, faces (camera). Audio is never paused for want of estimate;
//! speech the link shows it cannot carry (`crate::audio_shed`) is paused for that subscriber,
//! lowest rank first, so it does not delay the stethoscope. A video track gets the highest
//! layer that fits what is left; one whose lowest layer does not fit is paused rather than
//! sent at a rate the link cannot carry. With every video track paused the subscriber is in
//! *audio-only* mode.
//!
//! Against oscillation: going down is immediate (audio must not queue behind video), going up
//! needs [`UP_MARGIN`] of room above the layer's rate, held for [`UPGRADE_HOLD`].

use consult_protocol::TrackLabel;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Share of the estimate media may use; the rest is left for RTCP, retransmissions and
/// estimation error.
pub const USABLE_SHARE: f64 = 0.9;
/// Kept out of every budget besides that share: the signaling WebSocket and RTCP of a thin
/// link must get through the queue media would otherwise fill (admission, renegotiation).
pub const SIGNALING_RESERVE_BPS: i64 = 8_000;

/// A layer above the current one must fit with this much to spare before switching up.
pub const UP_MARGIN: f64 = 1.25;
/// Room a paused video track needs to come back, however little it measured: it resumes with
/// a keyframe (tens of kilobytes at 720p, seconds of a 100 kbit/s link), and a still image's
/// few kbit/s between keyframes says nothing about that burst.
pub const VIDEO_RESUME_BPS: i64 = 80_000;
/// How long the room for a higher layer must last before switching up.
pub const UPGRADE_HOLD: Duration = Duration::from_millis(1500);

/// What the allocator knows of one track a subscriber receives.
#[derive(Debug, Clone)]
pub struct TrackDemand<K> {
    pub key: K,
    pub label: TrackLabel,
    /// Rate of each layer the publisher sends now (bits/s), lowest first; a layer at 0 is
    /// not being sent and cannot be chosen. Audio has one layer.
    pub layers: Vec<u64>,
    pub pinned: bool,
    /// Audio: its publisher is speaking now (voice activity, with a hangover).
    pub speaking: bool,
}

/// The layer chosen for a track, or `None` when it is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<K> {
    pub key: K,
    pub layer: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Allocation<K> {
    pub decisions: Vec<Decision<K>>,
    /// Every video track is paused (and there is at least one).
    pub audio_only: bool,
    /// Some audio track is paused (the link cannot carry all of it).
    pub audio_paused: bool,
    /// Rate of what is forwarded (bits/s).
    pub allocated_bps: u64,
    /// Rate needed for the next step up (current allocation plus the next layer or track),
    /// for the estimator to probe toward; equals `allocated_bps` when nothing is held back.
    pub next_step_bps: u64,
    /// Rate of everything at its top layer: what the subscriber would take on a good link.
    pub desired_bps: u64,
}

impl<K: Copy> Allocation<K> {
    pub fn layer_of(&self, key: K) -> Option<usize>
    where
        K: PartialEq,
    {
        self.decisions
            .iter()
            .find(|d| d.key == key)
            .and_then(|d| d.layer)
    }
}

/// Lower ranks are served first.
pub fn clinical_rank(label: TrackLabel) -> u8 {
    match label {
        TrackLabel::Stethoscope => 0,
        TrackLabel::Microphone => 1,
        TrackLabel::Otoscope => 2,
        TrackLabel::Screen => 3,
        TrackLabel::Camera => 4,
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct TrackState {
    layer: Option<usize>,
    /// Since when a higher layer than `layer` has fitted (with margin).
    up_since: Option<Instant>,
}

/// One subscriber's allocator.
#[derive(Debug)]
pub struct Allocator<K> {
    tracks: HashMap<K, TrackState>,
    /// The last step up: the next waits [`UPGRADE_HOLD`] more, so the estimator sees the
    /// effect of one step (a resumed track starts with a keyframe burst) before the next.
    last_upgrade: Option<Instant>,
    /// How many speech tracks (the lowest ranked) the link cannot carry now.
    speech_shed: usize,
    /// Whether a paused video track may come back (not while the link is reported low).
    video_resume: bool,
}

impl<K> Default for Allocator<K> {
    fn default() -> Self {
        Allocator {
            tracks: HashMap::new(),
            last_upgrade: None,
            speech_shed: 0,
            video_resume: true,
        }
    }
}

impl<K: Copy + Eq + Hash> Allocator<K> {
    /// Pause the `n` lowest-ranked speech tracks (never the stethoscope) from the next
    /// allocation on: the link showed it cannot carry all the audio (`crate::audio_shed`).
    pub fn set_speech_shed(&mut self, n: usize) {
        self.speech_shed = n;
    }

    /// Whether a paused video track may come back (the engine says not while the link is
    /// reported low, except as a step-up trial): there the estimate is at its least reliable
    /// and a resumed track's keyframe fills the queue ahead of the audio for seconds.
    pub fn set_video_resume(&mut self, allowed: bool) {
        self.video_resume = allowed;
    }

    /// Split `estimate_bps` across `tracks` at `now`.
    pub fn allocate(
        &mut self,
        now: Instant,
        estimate_bps: u64,
        tracks: &[TrackDemand<K>],
    ) -> Allocation<K> {
        self.tracks
            .retain(|k, _| tracks.iter().any(|t| t.key == *k));
        let mut budget = (estimate_bps as f64 * USABLE_SHARE) as i64 - SIGNALING_RESERVE_BPS;
        let mut decisions = Vec::with_capacity(tracks.len());
        let mut allocated = 0u64;
        let mut desired = 0u64;

        // Audio first, the stethoscope before speech (the pinned, then whoever speaks, then
        // the others). Audio is forwarded whatever the estimate says: an estimate can be wrong,
        // and audio that flows without a queue evidently fits. Speech is paused only on the
        // link's evidence (`set_speech_shed`, from `audio_shed`): the lowest ranked first.
        let mut order: Vec<&TrackDemand<K>> = tracks.iter().collect();
        order.sort_by_key(|t| (!is_audio(t), !t.pinned, !t.speaking, clinical_rank(t.label)));
        let speech = order
            .iter()
            .filter(|t| is_audio(t) && t.label != TrackLabel::Stethoscope)
            .count();
        let kept_speech = speech.saturating_sub(self.speech_shed);
        let mut audio_paused = false;
        // The smallest paused audio track: what probing should aim at first.
        let mut next_step: Option<u64> = None;
        let mut speech_seen = 0;
        for t in order.iter().filter(|t| is_audio(t)) {
            let rate = t.layers.first().copied().unwrap_or(0);
            desired += rate;
            let keep = t.label == TrackLabel::Stethoscope || {
                speech_seen += 1;
                speech_seen <= kept_speech
            };
            let layer = keep.then_some(0);
            if keep {
                budget -= rate as i64;
                allocated += rate;
            } else {
                audio_paused = true;
                next_step = Some(next_step.map_or(rate, |s| s.min(rate)));
            }
            self.tracks.entry(t.key).or_default().layer = layer;
            decisions.push(Decision { key: t.key, layer });
        }

        let videos: Vec<&TrackDemand<K>> = order.into_iter().filter(|t| !is_audio(t)).collect();
        let mut chosen: Vec<Option<usize>> = vec![None; videos.len()];
        // First every video track at its lowest layer, by rank; then upgrades by rank.
        for (i, t) in videos.iter().enumerate() {
            desired += t.layers.iter().copied().max().unwrap_or(0);
            let Some(lowest) = lowest_layer(t) else {
                continue;
            };
            let current = self.tracks.get(&t.key).and_then(|s| s.layer);
            let need = needed(t.layers[lowest], current.is_some());
            if need <= budget && (current.is_some() || self.video_resume) {
                chosen[i] = Some(lowest);
                budget -= t.layers[lowest] as i64;
            }
        }
        for (i, t) in videos.iter().enumerate() {
            let Some(base) = chosen[i] else { continue };
            let current = self.tracks.get(&t.key).and_then(|s| s.layer);
            let mut best = base;
            for l in (base + 1)..t.layers.len() {
                let rate = t.layers[l];
                if rate == 0 {
                    continue;
                }
                let extra = rate as i64 - t.layers[best] as i64;
                let spare = current.is_some_and(|c| l <= c);
                if needed_extra(extra, rate, spare) <= budget {
                    best = l;
                }
            }
            budget -= t.layers[best] as i64 - t.layers[base] as i64;
            chosen[i] = Some(best);
        }

        // Hysteresis: down (or paused) at once, up only after the room has lasted.
        for (i, t) in videos.iter().enumerate() {
            let target = chosen[i];
            // A track seen for the first time starts where it fits: that is no step up.
            let new = !self.tracks.contains_key(&t.key);
            let state = self.tracks.entry(t.key).or_default();
            let going_up = match (state.layer, target) {
                (None, Some(_)) => true,
                (Some(c), Some(n)) => n > c && c < t.layers.len() && t.layers[c] > 0,
                _ => false,
            };
            if going_up && !new {
                let since = *state.up_since.get_or_insert(now);
                let step_allowed = self
                    .last_upgrade
                    .is_none_or(|t| now.saturating_duration_since(t) >= UPGRADE_HOLD);
                if step_allowed && now.saturating_duration_since(since) >= UPGRADE_HOLD {
                    self.last_upgrade = Some(now);
                } else {
                    // Hold the current layer (it fits: the target is above it).
                    let hold = state.layer;
                    let step = target
                        .map(|n| t.layers[n])
                        .unwrap_or(0)
                        .saturating_sub(hold.map(|c| t.layers[c]).unwrap_or(0));
                    next_step = Some(next_step.map_or(step, |s| s.min(step)));
                    chosen[i] = hold;
                }
            } else {
                state.up_since = None;
            }
            // Whatever the decision, the layer above it is what probing should aim at.
            if let Some(n) = next_layer_rate(t, chosen[i]) {
                next_step = Some(next_step.map_or(n, |s| s.min(n)));
            }
            let state = self.tracks.entry(t.key).or_default();
            if state.layer != chosen[i] {
                state.layer = chosen[i];
                if !going_up {
                    state.up_since = None;
                }
            }
            if let Some(l) = chosen[i] {
                allocated += t.layers[l];
            }
            decisions.push(Decision {
                key: t.key,
                layer: chosen[i],
            });
        }
        // Restore input order for the caller.
        decisions.sort_by_key(|d| tracks.iter().position(|t| t.key == d.key));
        let audio_only = !videos.is_empty() && chosen.iter().all(Option::is_none);
        Allocation {
            decisions,
            audio_only,
            audio_paused,
            allocated_bps: allocated,
            next_step_bps: allocated + next_step.unwrap_or(0),
            desired_bps: desired,
        }
    }
}

fn is_audio(t: &TrackDemand<impl Sized>) -> bool {
    matches!(t.label, TrackLabel::Stethoscope | TrackLabel::Microphone)
}

fn lowest_layer<K>(t: &TrackDemand<K>) -> Option<usize> {
    t.layers.iter().position(|r| *r > 0)
}

/// Rate the layer above `layer` would add (from paused: the lowest layer's rate).
fn next_layer_rate<K>(t: &TrackDemand<K>, layer: Option<usize>) -> Option<u64> {
    let from = layer.map_or(0, |l| l + 1);
    let base = layer.map_or(0, |l| t.layers[l]);
    t.layers[from.min(t.layers.len())..]
        .iter()
        .find(|r| **r > base)
        .map(|r| r - base)
}

/// Budget needed to forward a track's lowest layer: with margin (and at least
/// [`VIDEO_RESUME_BPS`]) unless it is forwarded now.
fn needed(rate: u64, forwarded_now: bool) -> i64 {
    if forwarded_now {
        rate as i64
    } else {
        ((rate as f64 * UP_MARGIN) as i64).max(VIDEO_RESUME_BPS)
    }
}

/// Budget needed for `extra` bits/s to move up to a layer of `rate`: the margin is on the
/// layer's whole rate, so a small step up still needs real room.
fn needed_extra(extra: i64, rate: u64, at_or_below_current: bool) -> i64 {
    if at_or_below_current {
        extra
    } else {
        extra + ((UP_MARGIN - 1.0) * rate as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn demand() -> Vec<TrackDemand<u8>> {
        vec![
            TrackDemand {
                key: 1,
                label: TrackLabel::Camera,
                layers: vec![100_000, 300_000, 1_200_000],
                pinned: false,
                speaking: false,
            },
            TrackDemand {
                key: 2,
                label: TrackLabel::Stethoscope,
                layers: vec![40_000],
                pinned: false,
                speaking: false,
            },
            TrackDemand {
                key: 3,
                label: TrackLabel::Otoscope,
                layers: vec![150_000, 500_000],
                pinned: false,
                speaking: false,
            },
            TrackDemand {
                key: 4,
                label: TrackLabel::Microphone,
                layers: vec![30_000],
                pinned: false,
                speaking: false,
            },
        ]
    }

    /// Run the allocator long enough at one estimate for upgrades to pass their hold.
    fn settle(
        a: &mut Allocator<u8>,
        start: Instant,
        bps: u64,
        d: &[TrackDemand<u8>],
    ) -> Allocation<u8> {
        let mut out = a.allocate(start, bps, d);
        for i in 1..=16 {
            out = a.allocate(start + UPGRADE_HOLD / 2 * i, bps, d);
        }
        out
    }

    #[test]
    fn a_good_link_gets_every_top_layer() {
        let mut a = Allocator::default();
        let out = settle(&mut a, t0(), 5_000_000, &demand());
        assert_eq!(out.layer_of(1), Some(2));
        assert_eq!(out.layer_of(3), Some(1));
        assert_eq!(out.layer_of(2), Some(0));
        assert!(!out.audio_only);
        assert_eq!(out.allocated_bps, 1_200_000 + 500_000 + 40_000 + 30_000);
        assert_eq!(out.next_step_bps, out.allocated_bps);
        assert_eq!(out.desired_bps, out.allocated_bps);
    }

    #[test]
    fn at_100_kbps_audio_only_and_the_stethoscope_is_kept() {
        let mut a = Allocator::default();
        let out = settle(&mut a, t0(), 100_000, &demand());
        assert_eq!(out.layer_of(2), Some(0), "stethoscope");
        assert_eq!(out.layer_of(4), Some(0), "speech");
        assert_eq!(out.layer_of(1), None);
        assert_eq!(out.layer_of(3), None);
        assert!(out.audio_only);
        assert_eq!(out.allocated_bps, 70_000);
        // Probing aims at the first video layer that would come back: the otoscope's.
        assert_eq!(out.next_step_bps, 70_000 + 100_000);
    }

    #[test]
    fn a_still_image_measured_at_a_few_kbps_does_not_come_back_on_a_thin_link() {
        let mut tracks = demand();
        tracks[2].layers = vec![6_000];
        let mut a = Allocator::default();
        let out = settle(&mut a, t0(), 100_000, &tracks);
        assert_eq!(out.layer_of(3), None, "otoscope stays paused");
        assert!(out.audio_only);
        // With room for its keyframe it comes back.
        let out = settle(&mut a, t0() + Duration::from_secs(60), 200_000, &tracks);
        assert_eq!(out.layer_of(3), Some(0));
    }

    #[test]
    fn no_video_comes_back_while_the_link_is_reported_low() {
        let mut a = Allocator::default();
        let out = settle(&mut a, t0(), 100_000, &demand());
        assert!(out.audio_only);
        a.set_video_resume(false);
        let out = settle(&mut a, t0() + Duration::from_secs(60), 400_000, &demand());
        assert!(
            out.audio_only,
            "a probe reading 400 kbit/s on a low link brings no video"
        );
        a.set_video_resume(true);
        let out = settle(&mut a, t0() + Duration::from_secs(120), 400_000, &demand());
        assert!(!out.audio_only);
    }

    #[test]
    fn even_below_the_audio_rate_the_stethoscope_is_never_paused() {
        let mut a = Allocator::default();
        let out = settle(&mut a, t0(), 20_000, &demand());
        assert_eq!(out.layer_of(2), Some(0), "stethoscope");
        // An estimate alone does not pause audio: only the link's evidence does.
        assert_eq!(out.layer_of(4), Some(0), "speech kept");
        assert!(out.audio_only && !out.audio_paused);
        a.set_speech_shed(5);
        let out = a.allocate(t0() + Duration::from_secs(30), 20_000, &demand());
        assert_eq!(out.layer_of(2), Some(0), "stethoscope");
        assert_eq!(out.layer_of(4), None, "speech paused");
        assert!(out.audio_only && out.audio_paused);
        // Probing aims at the speech that would come back.
        assert_eq!(out.next_step_bps, 40_000 + 30_000);
    }

    fn two_speakers() -> Vec<TrackDemand<u8>> {
        let speech = |key, speaking| TrackDemand {
            key,
            label: TrackLabel::Microphone,
            layers: vec![30_000],
            pinned: false,
            speaking,
        };
        let mut d = demand();
        d.retain(|t| t.key != 4);
        d.push(speech(4, false));
        d.push(speech(5, true));
        d
    }

    #[test]
    fn when_speech_is_shed_the_one_speaking_is_kept() {
        let mut a = Allocator::default();
        let d = two_speakers();
        a.set_speech_shed(1);
        let out = settle(&mut a, t0(), 100_000, &d);
        assert_eq!(out.layer_of(2), Some(0), "stethoscope");
        assert_eq!(out.layer_of(5), Some(0), "the speaker");
        assert_eq!(out.layer_of(4), None, "the silent one");
        assert!(out.audio_paused);
        // The other one starts speaking: the two swap at once (no hold for audio).
        let mut d2 = d.clone();
        d2[3].speaking = true;
        d2[4].speaking = false;
        let out = a.allocate(t0() + Duration::from_secs(30), 100_000, &d2);
        assert_eq!((out.layer_of(4), out.layer_of(5)), (Some(0), None));
        // Shedding released: both flow.
        a.set_speech_shed(0);
        let out = settle(&mut a, t0() + Duration::from_secs(60), 200_000, &d);
        assert_eq!((out.layer_of(4), out.layer_of(5)), (Some(0), Some(0)));
        assert!(!out.audio_paused);
    }

    #[test]
    fn examination_video_goes_before_faces() {
        let mut a = Allocator::default();
        // Audio 70 k; usable 0.9 × 330 k = 297 k → 227 k for video: the otoscope's 150 k
        // layer with margin (187.5 k), then the camera's 100 k would need 125 k: no room.
        let out = settle(&mut a, t0(), 330_000, &demand());
        assert_eq!(out.layer_of(3), Some(0));
        assert_eq!(out.layer_of(1), None);
        assert!(!out.audio_only);
    }

    #[test]
    fn a_pinned_face_goes_before_the_otoscope() {
        let mut a = Allocator::default();
        let mut d = demand();
        d[0].pinned = true;
        let out = settle(&mut a, t0(), 330_000, &d);
        assert_eq!(out.layer_of(1), Some(0), "pinned camera");
        assert_eq!(out.layer_of(3), None);
    }

    #[test]
    fn down_at_once_up_only_after_the_hold() {
        let start = t0();
        let mut a = Allocator::default();
        let d = demand();
        let out = settle(&mut a, start, 5_000_000, &d);
        assert_eq!(out.layer_of(1), Some(2));
        // The link collapses: video paused on the very next call.
        let t = start + Duration::from_secs(10);
        let out = a.allocate(t, 100_000, &d);
        assert!(out.audio_only);
        // It recovers: nothing comes back before the hold has passed.
        let out = a.allocate(t + Duration::from_millis(100), 5_000_000, &d);
        assert!(out.audio_only, "no upgrade before the hold");
        let t = t + Duration::from_millis(100) + UPGRADE_HOLD;
        let out = a.allocate(t, 5_000_000, &d);
        assert!(!out.audio_only);
        // One step at a time: the otoscope first, the camera a hold later.
        assert_eq!((out.layer_of(3), out.layer_of(1)), (Some(1), None));
        let out = a.allocate(t + UPGRADE_HOLD, 5_000_000, &d);
        assert_eq!(out.layer_of(1), Some(2));
    }

    #[test]
    fn an_estimate_wobbling_around_a_layer_does_not_flap() {
        let start = t0();
        let mut a = Allocator::default();
        let d = demand();
        // Usable 900 k − 70 k audio: otoscope top (500 k), camera lowest (100 k); the camera's
        // 300 k layer would need 200 k more plus 75 k margin.
        let out = settle(&mut a, start, 1_000_000, &d);
        assert_eq!((out.layer_of(3), out.layer_of(1)), (Some(1), Some(0)));
        // ±5 %: at the top the camera's next layer just fits, never for long enough.
        let mut changes = 0;
        let mut last = (out.layer_of(3), out.layer_of(1));
        for i in 0..100u32 {
            let bps = if i % 2 == 0 { 1_050_000 } else { 950_000 };
            let at = start + Duration::from_secs(10) + Duration::from_millis(500) * i;
            let out = a.allocate(at, bps, &d);
            let now = (out.layer_of(3), out.layer_of(1));
            if now != last {
                changes += 1;
                last = now;
            }
        }
        assert_eq!(changes, 0);
    }

    #[test]
    fn a_layer_the_publisher_stopped_is_skipped() {
        let mut a = Allocator::default();
        let mut d = demand();
        d[0].layers = vec![0, 300_000, 0];
        let out = settle(&mut a, t0(), 5_000_000, &d);
        assert_eq!(out.layer_of(1), Some(1));
    }

    #[test]
    fn a_new_track_that_fits_starts_at_once() {
        let mut a = Allocator::default();
        let d = demand();
        let out = a.allocate(t0(), 5_000_000, &d);
        assert_eq!(out.layer_of(1), Some(2));
        assert_eq!(out.layer_of(3), Some(1));
        // One that does not fit waits like any step up once it would.
        let mut a = Allocator::default();
        let out = a.allocate(t0(), 100_000, &d);
        assert!(out.audio_only);
        let out = a.allocate(t0() + Duration::from_millis(10), 5_000_000, &d);
        assert!(out.audio_only);
    }

    #[test]
    fn tracks_that_left_are_forgotten() {
        let mut a = Allocator::default();
        let d = demand();
        settle(&mut a, t0(), 5_000_000, &d);
        let out = a.allocate(t0(), 5_000_000, &d[1..2]);
        assert_eq!(out.decisions.len(), 1);
        assert_eq!(a.tracks.len(), 1);
    }
}
