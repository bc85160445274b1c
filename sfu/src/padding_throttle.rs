//! Work-around for str0m 0.25's padding on a thin link (sans-I/O).
//!
//! str0m's pacer pads toward a 50 kbit/s floor whenever its queues are empty, one blank RTX
//! packet per pacer wake-up, each sized for 5 ms at the padding rate (~31 bytes) but costing
//! ~110 bytes on the wire (IP, UDP, RTP header and extensions, SRTP tag) that the pacer does
//! not count. It then asks to be woken as soon as that small debt is paid, so the padding rate
//! on the wire follows how promptly its timeouts are fed: ~50 packets/s here, 40-50 kbit/s,
//! half of a 100 kbit/s link, ahead of the stethoscope in the link's queue (measured on the
//! rural-link test's capture). Nothing in str0m's API turns it off while estimation runs.
//!
//! So, toward a subscriber whose link queues, timer-driven timeouts are
//! fed at most every [`MIN_GAP`]: padding falls to one packet per gap (~9 kbit/s). Timeouts that
//! flush media just written are still fed at once (the engine does so right after a write),
//! so audio is not held back. str0m also runs its timers on every input: what the subscriber
//! connection receives meanwhile (RTCP) is held until the next tick (the engine does so).
//! Probing needs prompt timeouts (a probe cluster is paced in milliseconds), so the throttle
//! lifts for [`FREE`] out of every [`CYCLE`], and the engine asks str0m for a probe at the
//! start of that window (by raising its desired rate): str0m's own periodic probes come every
//! 5 s or more and would keep falling in the throttled part of a 5 s cycle.

use std::time::{Duration, Instant};

/// Shortest gap between two timer-driven timeouts while throttled.
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// Throttled for `CYCLE - FREE`, then free for `FREE`.
pub const CYCLE: Duration = Duration::from_secs(5);
pub const FREE: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub struct TimerThrottle {
    thin_since: Option<Instant>,
    last_tick: Option<Instant>,
}

impl TimerThrottle {
    /// Whether the subscriber's link is thin now.
    pub fn set_thin(&mut self, now: Instant, thin: bool) {
        match (thin, self.thin_since) {
            (true, None) => self.thin_since = Some(now),
            (false, Some(_)) => self.thin_since = None,
            _ => {}
        }
    }

    pub fn throttling(&self) -> bool {
        self.thin_since.is_some()
    }

    /// Whether `now` falls in a free window of the throttle (the time for a probe).
    pub fn in_free_window(&self, now: Instant) -> bool {
        self.thin_since
            .is_some_and(|since| cycle_position(since, now) >= CYCLE - FREE)
    }

    /// The earliest a timeout str0m wants at `wanted` may be fed.
    pub fn allowed_at(&self, wanted: Instant) -> Instant {
        let Some(since) = self.thin_since else {
            return wanted;
        };
        let throttled_for = CYCLE - FREE;
        let in_cycle = cycle_position(since, wanted);
        if in_cycle >= throttled_for {
            return wanted;
        }
        let gap_end = self.last_tick.map_or(wanted, |t| t + MIN_GAP);
        // The next free window, if it comes before the gap ends.
        wanted.max(gap_end).min(wanted + (throttled_for - in_cycle))
    }

    /// Whether a timer-driven timeout may be fed `now`; call [`TimerThrottle::ticked`] when it is.
    pub fn may_tick(&self, now: Instant) -> bool {
        self.allowed_at(now) <= now
    }

    pub fn ticked(&mut self, now: Instant) {
        self.last_tick = Some(now);
    }
}

/// Where `t` falls in the current throttle cycle begun at `since`.
fn cycle_position(since: Instant, t: Instant) -> Duration {
    let nanos = t.saturating_duration_since(since).as_nanos() % CYCLE.as_nanos();
    Duration::from_nanos(nanos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed every timeout str0m would ask for every 5 ms over `secs`; count those fed.
    fn ticks(th: &mut TimerThrottle, start: Instant, secs: u64) -> usize {
        let mut fed = 0;
        let mut t = start;
        while t < start + Duration::from_secs(secs) {
            if th.may_tick(t) {
                th.ticked(t);
                fed += 1;
            }
            t += Duration::from_millis(5);
        }
        fed
    }

    #[test]
    fn not_thin_feeds_everything() {
        let mut th = TimerThrottle::default();
        assert_eq!(ticks(&mut th, Instant::now(), 1), 200);
    }

    #[test]
    fn thin_feeds_one_per_gap_then_all_in_the_free_window() {
        let mut th = TimerThrottle::default();
        let t0 = Instant::now();
        th.set_thin(t0, true);
        // 4.5 s throttled (one per 100 ms), 0.5 s free (one per 5 ms).
        let fed = ticks(&mut th, t0, 5);
        assert!((140..=150).contains(&fed), "fed {fed}");
        assert!(!th.in_free_window(t0 + Duration::from_millis(4400)));
        assert!(th.in_free_window(t0 + Duration::from_millis(4600)));
        th.set_thin(t0 + Duration::from_secs(5), false);
        assert_eq!(ticks(&mut th, t0 + Duration::from_secs(5), 1), 200);
    }

    #[test]
    fn allowed_at_says_when_to_wake() {
        let mut th = TimerThrottle::default();
        let t0 = Instant::now();
        th.set_thin(t0, true);
        th.ticked(t0);
        let wanted = t0 + Duration::from_millis(5);
        assert_eq!(th.allowed_at(wanted), t0 + MIN_GAP);
        // Just before the free window: not later than its start.
        let late = t0 + CYCLE - FREE - Duration::from_millis(20);
        th.ticked(late);
        assert_eq!(
            th.allowed_at(late + Duration::from_millis(1)),
            t0 + CYCLE - FREE
        );
    }
}
