//! When to empty a video copy's resend (RTX) cache (sans-I/O).
//!
//! str0m evicts old packets from a stream's resend cache only when a new packet is cached, so
//! a copy the allocator paused keeps its last packets for good; and webrtc-rs receivers NACK
//! the packets missing before a stream stopped for as long as it stays stopped (its NACK
//! generator has no retry limit). Together: the SFU answered those NACKs with a burst of
//! retransmitted video about once a second (when str0m's retransmission-ratio cap let it) for
//! the rest of the pause — on a 100 kbit/s link that is ~50 kbit/s of stale video that fills
//! the queue ahead of the stethoscope. A packet not forwarded for a second is too old to be
//! worth resending, so an idle copy's cache is emptied; once when it has been idle for
//! [`IDLE`], and once more after str0m's pacer had time to send what was still queued.

use std::time::{Duration, Instant};

/// A copy that has forwarded nothing for this long is idle.
pub const IDLE: Duration = Duration::from_secs(1);
/// str0m's pacer lets a queued packet wait up to 2 s: clear again once that has passed.
pub const AGAIN_AFTER: Duration = Duration::from_millis(2_500);

/// Empties of one copy's cache since it last forwarded.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResendCacheState {
    /// When the cache was last emptied (if since the last forwarded packet).
    cleared_at: Option<Instant>,
    times: u8,
}

impl ResendCacheState {
    /// Whether to empty the cache now, given when the copy last forwarded a packet (`None`:
    /// never). Records the clearing when it says yes.
    pub fn due(&mut self, now: Instant, last_forwarded: Option<Instant>) -> bool {
        let Some(last) = last_forwarded else {
            return false;
        };
        if self.cleared_at.is_some_and(|c| c < last) {
            // Forwarding resumed since: start over.
            *self = ResendCacheState::default();
        }
        if now.saturating_duration_since(last) < IDLE {
            return false;
        }
        let due = match (self.cleared_at, self.times) {
            (None, _) => true,
            (Some(c), 1) => now.saturating_duration_since(c) >= AGAIN_AFTER,
            _ => false,
        };
        if due {
            self.cleared_at = Some(now);
            self.times += 1;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_copy_is_cleared_twice_then_left_alone_until_it_forwards_again() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut s = ResendCacheState::default();
        assert!(!s.due(t, None), "never forwarded: nothing cached");
        assert!(!s.due(ms(500), Some(t)), "not idle yet");
        assert!(s.due(ms(1_000), Some(t)));
        assert!(!s.due(ms(1_250), Some(t)));
        assert!(!s.due(ms(3_000), Some(t)));
        assert!(s.due(ms(3_500), Some(t)), "after the pacer's queue");
        assert!(!s.due(ms(10_000), Some(t)));
        assert!(!s.due(ms(60_000), Some(t)));
        // It forwards again, then stops: the same again.
        let back = ms(61_000);
        assert!(!s.due(ms(61_500), Some(back)));
        assert!(s.due(ms(62_000), Some(back)));
        assert!(!s.due(ms(62_100), Some(back)));
    }

    #[test]
    fn a_copy_that_keeps_forwarding_is_never_cleared() {
        let t = Instant::now();
        let mut s = ResendCacheState::default();
        for i in 0..100u64 {
            let now = t + Duration::from_millis(i * 250);
            assert!(!s.due(now, Some(now - Duration::from_millis(20))));
        }
    }
}
