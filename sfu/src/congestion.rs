//! Which estimate the allocator should act on (sans-I/O).
//!
//! str0m's estimate is trusted when the link shows the mark of a bottleneck: round-trip time
//! above its minimum by [`QUEUEING_MS`] (a queue is building). Without that mark the estimate
//! is not allowed to pull forwarded tracks down: webrtc-rs peers leave str0m's probe packets
//! out of their TWCC feedback, which reads as loss and sinks the estimate on a healthy link
//! (see the closing notes of the bandwidth issue).
//!
//! A link without queueing for [`HEALTHY_HOLD`] is probed with media: the allocator is let
//! take one step up (it takes at most one per hold); if that step builds a queue, the now
//! trusted estimate takes it back, and the next probe waits twice as long (up to
//! [`MAX_HOLD`]).
//!
//! A link that collapses (a deep queue that also overflows: RTT far above its minimum and
//! receiver reports losing [`OVERFLOW_LOSS`] or more) is cut at once to what the reports say
//! got through, without waiting for str0m's estimate, which took 3–4 s to come down from
//! 1.7 Mbit/s to 150 kbit/s when the physician's link fell to 100 kbit/s, while video kept
//! the link's queue full ahead of the stethoscope.

use std::time::{Duration, Instant};

/// RTT above the minimum seen that means a queue is building…
pub const QUEUEING_MS: f32 = 40.0;
/// …when it lasts this long.
pub const SUSTAINED: Duration = Duration::from_millis(500);
/// How long the link must stay free of queueing before a step up is tried without the
/// estimate's consent.
pub const HEALTHY_HOLD: Duration = Duration::from_secs(3);
pub const MAX_HOLD: Duration = Duration::from_secs(24);
/// Queueing this soon after a probe step is blamed on the step…
pub const PROBE_BLAME: Duration = Duration::from_secs(5);
/// …if it lasts this long or loses this much: a short lossless queue right after a step (a
/// burst of keyframes, str0m's pacer draining) says nothing about the step.
pub const BLAME_MIN_QUEUE: Duration = Duration::from_millis(1_500);
pub const BLAME_MIN_LOSS: f32 = 0.05;
/// A queue this deep (RTT above its minimum) that also overflows…
pub const DEEP_QUEUE_MS: f32 = 150.0;
/// …losing this share of what is sent, means the link collapsed under what flows.
pub const OVERFLOW_LOSS: f32 = 0.10;
/// At most one cut per round trip, and per this at least (each cut must show in the reports
/// before the next: our peers report 4 times a second, a collapsed link's RTT is ~0.5 s).
pub const CUT_INTERVAL: Duration = Duration::from_millis(500);
/// A cut aims this far under what the reports say got through.
pub const CUT_MARGIN: f64 = 0.85;
/// Losing this much on a deep queue, the link carries a fraction of what flows: cut to audio
/// at once. A report's loss covers the second before it, partly before the drop, so it
/// understates the collapse (50-74 % reported when a 1.5 Mbit/s flow met a 100 kbit/s link,
/// 93 % lost): cutting in proportion took 3-4 round trips, seconds in which the stethoscope
/// lost half its packets in the full queue. Video that loses this much is not decodable
/// anyway; it comes back as the link allows once the queue has drained.
pub const COLLAPSE_LOSS: f32 = 0.40;

#[derive(Debug)]
pub struct CongestionGate {
    min_rtt_ms: Option<f32>,
    queue_ms: Option<f32>,
    healthy_since: Option<Instant>,
    hold: Duration,
    congested: bool,
    /// When a step up without the estimate's consent was last allowed.
    probed_at: Option<Instant>,
    /// Since when the RTT has been above its minimum by [`QUEUEING_MS`].
    queued_since: Option<Instant>,
    /// A collapse cut: (what is let flow, when), until the queue drains.
    cut: Option<(u64, Instant)>,
    /// The queue being lived through began this soon after a probe step: (when it began, the
    /// worst loss reported during it), to decide at its end whether the step is to blame.
    probe_queue: Option<(Instant, f32)>,
}

impl Default for CongestionGate {
    fn default() -> Self {
        CongestionGate {
            min_rtt_ms: None,
            queue_ms: None,
            healthy_since: None,
            hold: HEALTHY_HOLD,
            congested: false,
            probed_at: None,
            queued_since: None,
            cut: None,
            probe_queue: None,
        }
    }
}

impl CongestionGate {
    /// Whether the last update saw queueing.
    pub fn congested(&self) -> bool {
        self.congested
    }

    /// RTT above its minimum at the last update, ms.
    pub fn queue_ms(&self) -> Option<f32> {
        self.queue_ms
    }

    /// No queue for the current hold: a step up may be tried now.
    pub fn may_step_up(&self, now: Instant) -> bool {
        !self.congested
            && self
                .healthy_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.hold)
    }

    /// The cut in force after a collapse, if any.
    pub fn cut_bps(&self) -> Option<u64> {
        self.cut.map(|c| c.0)
    }

    /// The estimate to allocate with. `loss` is the share of what is sent that the receiver
    /// reports lost, `allocated_bps` what is forwarded now, `wanted_bps` what forwarding
    /// everything would need (both as the allocator counts them).
    pub fn effective_estimate(
        &mut self,
        now: Instant,
        estimate_bps: u64,
        rtt_ms: Option<f32>,
        loss: Option<f32>,
        allocated_bps: u64,
        wanted_bps: u64,
    ) -> u64 {
        if let Some(rtt) = rtt_ms {
            let min = self.min_rtt_ms.map_or(rtt, |m| m.min(rtt));
            self.min_rtt_ms = Some(min);
            self.queue_ms = Some(rtt - min);
            // A queue is a sustained rise, not one delayed report (a keyframe burst).
            let queued = rtt > min + QUEUEING_MS;
            if !queued {
                self.queued_since = None;
            } else if self.queued_since.is_none() {
                self.queued_since = Some(now);
            }
            let congested = self
                .queued_since
                .is_some_and(|t| now.saturating_duration_since(t) >= SUSTAINED);
            if congested && !self.congested {
                // A queue soon after our own probe: judged when it ends; otherwise the link
                // changed.
                let ours = self
                    .probed_at
                    .is_some_and(|t| now.saturating_duration_since(t) < PROBE_BLAME);
                if ours {
                    let began = self.queued_since.unwrap_or(now);
                    self.probe_queue = Some((began, loss.unwrap_or(0.0)));
                } else {
                    self.probe_queue = None;
                    self.hold = HEALTHY_HOLD;
                }
            }
            if let Some((_, worst)) = self.probe_queue.as_mut() {
                *worst = worst.max(loss.unwrap_or(0.0));
            }
            if !congested && self.congested {
                if let Some((began, worst)) = self.probe_queue.take() {
                    // The step built a lasting or lossy queue: back off.
                    let lasted = now.saturating_duration_since(began) >= BLAME_MIN_QUEUE;
                    if lasted || worst >= BLAME_MIN_LOSS {
                        self.hold = (self.hold * 2).min(MAX_HOLD);
                    }
                }
            }
            self.congested = congested;
            let deep = rtt > min + DEEP_QUEUE_MS;
            let overflowing = loss.is_some_and(|l| l >= OVERFLOW_LOSS);
            if congested && deep && overflowing {
                let due = self.cut.is_none_or(|(_, at)| {
                    let round_trip = Duration::from_secs_f32(rtt.max(0.0) / 1000.0);
                    now.saturating_duration_since(at) >= CUT_INTERVAL.max(round_trip)
                });
                if due {
                    let lost = loss.unwrap_or(0.0);
                    let delivered = allocated_bps as f64 * f64::from(1.0 - lost);
                    let cap = match lost >= COLLAPSE_LOSS {
                        // Audio only: the allocator never pauses audio for want of estimate.
                        true => 0,
                        false => (delivered * CUT_MARGIN / crate::allocator::USABLE_SHARE) as u64,
                    };
                    self.cut = Some((cap, now));
                }
            }
        }
        if !self.congested {
            self.cut = None;
        }
        // What flows now, as an estimate that fits it and nothing more.
        let keep = estimate_carrying(allocated_bps as f64 * 1.05);
        if self.congested {
            self.healthy_since = None;
            // A queue is building: the estimate may take tracks down, but nothing is added
            // until it drains (str0m's estimate lags the queue by seconds).
            let cut = self.cut.map_or(u64::MAX, |c| c.0);
            return estimate_bps.min(keep).min(cut);
        }
        let since = *self.healthy_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= MAX_HOLD {
            // A long healthy spell earns the short hold back.
            self.hold = HEALTHY_HOLD;
        }
        // No queue: what flows now evidently fits.
        if now.saturating_duration_since(since) >= self.hold {
            // Healthy long enough: let the next step be tried (if anything is held back).
            if wanted_bps > allocated_bps {
                self.probed_at = Some(now);
            }
            let all = estimate_carrying(wanted_bps as f64 * crate::allocator::UP_MARGIN);
            return estimate_bps.max(keep).max(all);
        }
        estimate_bps.max(keep)
    }
}

/// The estimate whose budget (its usable share, less the signaling reserve) carries `bps`.
fn estimate_carrying(bps: f64) -> u64 {
    ((bps + crate::allocator::SIGNALING_RESERVE_BPS as f64) / crate::allocator::USABLE_SHARE) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_queueing_the_estimate_cannot_take_tracks_down() {
        let t = Instant::now();
        let mut g = CongestionGate::default();
        // A bogus low estimate on a 1 ms link: what flows (900 k) is kept.
        let e = g.effective_estimate(t, 300_000, Some(1.0), None, 900_000, 1_500_000);
        assert_eq!(e, estimate_carrying(900_000.0 * 1.05));
        assert!(!g.congested());
    }

    #[test]
    fn queueing_makes_the_estimate_count() {
        let t = Instant::now();
        let mut g = CongestionGate::default();
        g.effective_estimate(t, 2_000_000, Some(50.0), None, 900_000, 1_500_000);
        // One late report is not a queue.
        let e = g.effective_estimate(t, 80_000, Some(230.0), None, 900_000, 1_500_000);
        assert!(e > 80_000);
        let e = g.effective_estimate(t + SUSTAINED, 80_000, Some(230.0), None, 900_000, 1_500_000);
        assert_eq!(e, 80_000);
        assert!(g.congested());
        // While the queue lasts, a higher (lagging) estimate adds nothing beyond what flows.
        let e = g.effective_estimate(
            t + SUSTAINED * 2,
            500_000,
            Some(400.0),
            None,
            72_000,
            1_500_000,
        );
        assert_eq!(e, estimate_carrying(72_000f64 * 1.05));
    }

    #[test]
    fn a_healthy_link_is_probed_with_media_and_backs_off() {
        let t = Instant::now();
        let mut g = CongestionGate::default();
        g.effective_estimate(t, 300_000, Some(50.0), None, 72_000, 1_200_000);
        // Not yet: only what flows is kept.
        let e = g.effective_estimate(
            t + Duration::from_secs(1),
            300_000,
            Some(50.0),
            None,
            72_000,
            1_200_000,
        );
        assert_eq!(e, 300_000);
        // After the hold, room for everything: the allocator steps up (one step per hold).
        let e = g.effective_estimate(
            t + HEALTHY_HOLD,
            300_000,
            Some(50.0),
            None,
            72_000,
            1_200_000,
        );
        assert!(e >= 1_200_000);
        // The step builds a queue: the estimate counts again, and the next try waits longer.
        let t2 = t + HEALTHY_HOLD + Duration::from_secs(1);
        // One late report is not a queue; half a second of them is.
        let e = g.effective_estimate(
            t2 - SUSTAINED,
            250_000,
            Some(120.0),
            None,
            500_000,
            1_200_000,
        );
        assert!(e > 250_000);
        assert_eq!(
            g.effective_estimate(t2, 250_000, Some(120.0), None, 500_000, 1_200_000),
            250_000
        );
        let t3 = t2 + Duration::from_secs(1);
        g.effective_estimate(t3, 250_000, Some(50.0), None, 72_000, 1_200_000);
        let e = g.effective_estimate(
            t3 + HEALTHY_HOLD,
            250_000,
            Some(50.0),
            None,
            72_000,
            1_200_000,
        );
        assert!(e < 1_200_000, "backed off: {e}");
        let e = g.effective_estimate(
            t3 + HEALTHY_HOLD * 2,
            250_000,
            Some(50.0),
            None,
            72_000,
            1_200_000,
        );
        assert!(e >= 1_200_000);
    }

    #[test]
    fn a_collapsing_link_is_cut_to_what_got_through_once_per_round_trip() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut g = CongestionGate::default();
        g.effective_estimate(t, 1_700_000, Some(50.0), Some(0.0), 1_100_000, 1_300_000);
        // The queue deepens; str0m's estimate has not moved yet.
        g.effective_estimate(
            ms(500),
            1_700_000,
            Some(450.0),
            Some(0.0),
            1_100_000,
            1_300_000,
        );
        let e = g.effective_estimate(
            ms(1_000),
            1_700_000,
            Some(450.0),
            Some(0.02),
            1_100_000,
            1_300_000,
        );
        assert!(e > 1_000_000, "a deep queue alone is not a collapse: {e}");
        assert_eq!(g.cut_bps(), None);
        // Reports show a third of it lost: cut to what got through, with margin.
        let e = g.effective_estimate(
            ms(1_250),
            1_700_000,
            Some(450.0),
            Some(0.3),
            1_100_000,
            1_300_000,
        );
        let expected = (1_100_000.0 * 0.7 * CUT_MARGIN / crate::allocator::USABLE_SHARE) as u64;
        assert_eq!(e, expected);
        // The same reports a moment later do not cut again…
        let e = g.effective_estimate(
            ms(1_500),
            1_700_000,
            Some(450.0),
            Some(0.3),
            470_000,
            1_300_000,
        );
        assert_eq!(e, expected.min(estimate_carrying(470_000f64 * 1.05)));
        // …a round trip later (0.5 s at least), still overflowing, they do.
        let e = g.effective_estimate(
            ms(1_750),
            1_700_000,
            Some(450.0),
            Some(0.35),
            470_000,
            1_300_000,
        );
        assert_eq!(
            e,
            (470_000.0 * 0.65 * CUT_MARGIN / crate::allocator::USABLE_SHARE) as u64
        );
        // The queue drains: no cut any more (the estimate and the hold take over).
        g.effective_estimate(ms(4_000), 90_000, Some(60.0), Some(0.02), 72_000, 1_300_000);
        assert_eq!(g.cut_bps(), None);
    }

    #[test]
    fn a_link_losing_most_of_what_flows_is_cut_to_audio_at_once() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut g = CongestionGate::default();
        g.effective_estimate(t, 1_700_000, Some(50.0), Some(0.0), 1_500_000, 1_500_000);
        g.effective_estimate(
            ms(500),
            1_700_000,
            Some(450.0),
            Some(0.0),
            1_500_000,
            1_500_000,
        );
        let e = g.effective_estimate(
            ms(1_000),
            1_700_000,
            Some(450.0),
            Some(0.55),
            1_500_000,
            1_500_000,
        );
        assert_eq!(
            e, 0,
            "nothing but audio (which is never paused for want of estimate)"
        );
        // Until the queue has drained.
        g.effective_estimate(ms(3_000), 90_000, Some(60.0), Some(0.0), 60_000, 1_500_000);
        assert_eq!(g.cut_bps(), None);
    }

    #[test]
    fn random_loss_without_a_deep_queue_cuts_nothing() {
        let t = Instant::now();
        let mut g = CongestionGate::default();
        g.effective_estimate(t, 1_000_000, Some(50.0), Some(0.0), 800_000, 900_000);
        for i in 1..20u64 {
            let now = t + Duration::from_millis(250 * i);
            // 15 % loss on a link whose queue stays shallow (RTT +60 ms: congested, not deep).
            let e = g.effective_estimate(now, 1_000_000, Some(110.0), Some(0.15), 800_000, 900_000);
            assert!(e >= 800_000, "{e}");
        }
        assert_eq!(g.cut_bps(), None);
    }

    #[test]
    fn a_short_lossless_queue_after_a_step_does_not_lengthen_the_hold() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut g = CongestionGate::default();
        g.effective_estimate(t, 300_000, Some(50.0), Some(0.0), 72_000, 1_200_000);
        // The hold passes: a step up is let through.
        let e = g.effective_estimate(
            t + HEALTHY_HOLD,
            300_000,
            Some(50.0),
            Some(0.0),
            72_000,
            1_200_000,
        );
        assert!(e >= 1_200_000);
        // A keyframe burst: the RTT is up for 0.75 s, nothing lost.
        let b = HEALTHY_HOLD.as_millis() as u64 + 1_000;
        g.effective_estimate(ms(b), 900_000, Some(120.0), Some(0.0), 1_100_000, 1_200_000);
        g.effective_estimate(
            ms(b + 500),
            900_000,
            Some(120.0),
            Some(0.0),
            1_100_000,
            1_200_000,
        );
        assert!(g.congested());
        g.effective_estimate(
            ms(b + 750),
            900_000,
            Some(50.0),
            Some(0.0),
            1_100_000,
            1_200_000,
        );
        assert!(!g.congested());
        // The next step is tried after the usual hold, not twice that.
        let e = g.effective_estimate(
            ms(b + 750) + HEALTHY_HOLD,
            900_000,
            Some(50.0),
            Some(0.0),
            1_100_000,
            1_300_000,
        );
        assert!(e >= 1_300_000, "{e}");
    }

    #[test]
    fn a_link_that_degrades_by_itself_does_not_lengthen_the_hold() {
        let t = Instant::now();
        let mut g = CongestionGate::default();
        g.effective_estimate(t, 2_000_000, Some(50.0), None, 1_000_000, 1_000_000);
        // Long after any probe, the link gets slow: trusted estimate, short hold kept.
        let t1 = t + Duration::from_secs(30);
        g.effective_estimate(
            t1 - SUSTAINED,
            80_000,
            Some(250.0),
            None,
            1_000_000,
            1_000_000,
        );
        assert_eq!(
            g.effective_estimate(t1, 80_000, Some(250.0), None, 1_000_000, 1_000_000),
            80_000
        );
        let t2 = t1 + Duration::from_secs(10);
        g.effective_estimate(t2, 80_000, Some(50.0), None, 72_000, 1_000_000);
        let e = g.effective_estimate(
            t2 + HEALTHY_HOLD,
            80_000,
            Some(50.0),
            None,
            72_000,
            1_000_000,
        );
        assert!(e >= 1_000_000);
    }
}
