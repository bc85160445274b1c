//! How many speech tracks a subscriber stops receiving because its link cannot carry all of
//! its audio (sans-I/O). The stethoscope is never shed; the allocator pauses the lowest-ranked
//! speech first (`Allocator::set_speech_shed`).
//!
//! On evidence, not arithmetic: an estimate can be wrong (webrtc-rs peers sink str0m's), and
//! audio that flows without a growing queue evidently fits. Speech is shed only when, with
//! every video track already paused for a while, the link still overflows: a deep queue that
//! does not drain and receiver reports that keep losing. One more track at most every
//! [`SHED_INTERVAL`]; one comes back each time the congestion gate lets a step up be tried
//! (the link free of queueing for its hold), and if that builds a queue again the gate's next
//! try waits longer.

use std::time::{Duration, Instant};

/// Video must have been paused this long before audio is judged (its queue drains first).
pub const JUDGE_AFTER: Duration = Duration::from_secs(2);
/// At most one change (shed or restore) per this.
pub const SHED_INTERVAL: Duration = Duration::from_secs(2);
/// A queue this deep (RTT above its minimum, ms)…
pub const OVERFLOW_QUEUE_MS: f32 = 150.0;
/// …that is not draining (RTT this much lower than a second before means it drains)…
pub const DRAINING_MS: f32 = 20.0;
/// …while the reports lose this share, smoothed over [`LOSS_SMOOTHING`] (a link that only
/// drops at random, or the tail of the queue video left, loses less).
pub const OVERFLOW_LOSS: f32 = 0.20;
pub const LOSS_SMOOTHING: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct AudioShedder {
    shed: usize,
    last_change: Option<Instant>,
    audio_only_since: Option<Instant>,
    loss_ewma: f32,
    last_update: Option<Instant>,
    /// An RTT sample at least a second old, to tell a draining queue.
    rtt_ref: Option<(Instant, f32)>,
    draining: bool,
}

/// What the subscriber's link shows, for one decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkView {
    /// No video forwarded to the subscriber now.
    pub audio_only: bool,
    /// RTT above its (windowed) minimum, ms.
    pub queue_ms: Option<f32>,
    pub rtt_ms: Option<f32>,
    /// Share of what is sent that the receiver reports lost.
    pub loss: Option<f32>,
    /// The congestion gate lets a step up be tried now (no queue for its hold).
    pub may_step_up: bool,
}

impl AudioShedder {
    /// How many speech tracks (of `speech`) to pause after seeing `link` at `now`.
    pub fn update(&mut self, now: Instant, link: LinkView, speech: usize) -> usize {
        let dt = self
            .last_update
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last_update = Some(now);
        if let Some(l) = link.loss {
            // Smoothing by time: the reports arrive at no fixed rate.
            let a = dt.as_secs_f32() / (LOSS_SMOOTHING.as_secs_f32() + dt.as_secs_f32());
            self.loss_ewma += (l - self.loss_ewma) * a;
        }
        if let Some(rtt) = link.rtt_ms {
            match self.rtt_ref {
                Some((at, old)) if now.saturating_duration_since(at) >= Duration::from_secs(1) => {
                    self.draining = rtt < old - DRAINING_MS;
                    self.rtt_ref = Some((now, rtt));
                }
                None => self.rtt_ref = Some((now, rtt)),
                _ => {}
            }
        }
        if link.audio_only {
            self.audio_only_since.get_or_insert(now);
        } else {
            self.audio_only_since = None;
        }
        let judged = self
            .audio_only_since
            .is_some_and(|t| now.saturating_duration_since(t) >= JUDGE_AFTER);
        // The latest report and the smoothed loss both: the tail of a drained queue (one lossy
        // report, then clean ones) is not an overflow.
        let overflow = judged
            && link.queue_ms.is_some_and(|q| q >= OVERFLOW_QUEUE_MS)
            && !self.draining
            && self.loss_ewma >= OVERFLOW_LOSS
            && link.loss.is_some_and(|l| l >= OVERFLOW_LOSS);
        let due = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= SHED_INTERVAL);
        if due && overflow && self.shed < speech {
            self.shed += 1;
            self.last_change = Some(now);
        } else if due && !overflow && link.may_step_up && self.shed > 0 {
            self.shed -= 1;
            self.last_change = Some(now);
        }
        self.shed = self.shed.min(speech);
        self.shed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overflowing() -> LinkView {
        LinkView {
            audio_only: true,
            queue_ms: Some(800.0),
            rtt_ms: Some(900.0),
            loss: Some(0.4),
            may_step_up: false,
        }
    }

    #[test]
    fn an_overflowing_audio_only_link_sheds_speech_one_track_at_a_time() {
        let t = Instant::now();
        let mut s = AudioShedder::default();
        let ms = |n| t + Duration::from_millis(n);
        // Not before video has been off for a while (and the loss has lasted).
        let mut shed = Vec::new();
        for i in 0..=32u64 {
            shed.push(s.update(ms(250 * i), overflowing(), 2));
        }
        assert_eq!(shed[7], 0, "{shed:?}");
        assert_eq!(shed[8], 1, "{shed:?}");
        assert_eq!(shed[15], 1, "one change per interval: {shed:?}");
        assert_eq!(shed[16], 2, "{shed:?}");
        assert_eq!(shed[32], 2, "never more than there is");
        // The link recovers: one back each time a step up may be tried.
        let healthy = LinkView {
            queue_ms: Some(5.0),
            rtt_ms: Some(60.0),
            loss: Some(0.0),
            may_step_up: true,
            ..overflowing()
        };
        assert_eq!(s.update(ms(10_000), healthy, 2), 1);
        assert_eq!(s.update(ms(11_000), healthy, 2), 1);
        assert_eq!(s.update(ms(12_000), healthy, 2), 0);
    }

    #[test]
    fn a_queue_that_drains_or_a_link_that_does_not_lose_sheds_nothing() {
        let t = Instant::now();
        let mut s = AudioShedder::default();
        // The queue left by paused video drains: RTT falls second after second.
        for i in 0..10u64 {
            let link = LinkView {
                rtt_ms: Some(900.0 - 60.0 * i as f32),
                queue_ms: Some(850.0 - 60.0 * i as f32),
                ..overflowing()
            };
            assert_eq!(s.update(t + Duration::from_secs(i), link, 2), 0, "at {i} s");
        }
        // The last report of a queue that drained (smoothed loss still high): kept.
        let mut s = AudioShedder::default();
        for i in 0..12u64 {
            let loss = if i < 8 { 0.5 } else { 0.01 };
            let link = LinkView {
                loss: Some(loss),
                ..overflowing()
            };
            let at = t + Duration::from_millis(250 * i);
            assert_eq!(s.update(at, link, 2), 0, "at {i}");
        }
        // A long path (deep "queue" against an old minimum) that loses 2 %: kept.
        let mut s = AudioShedder::default();
        for i in 0..10u64 {
            let link = LinkView {
                loss: Some(0.02),
                ..overflowing()
            };
            assert_eq!(s.update(t + Duration::from_secs(i), link, 2), 0);
        }
        // With video still flowing, the allocator pauses video first.
        let mut s = AudioShedder::default();
        for i in 0..10u64 {
            let link = LinkView {
                audio_only: false,
                ..overflowing()
            };
            assert_eq!(s.update(t + Duration::from_secs(i), link, 2), 0);
        }
    }
}
