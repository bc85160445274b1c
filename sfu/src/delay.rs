//! How long a datagram spends inside the SFU: from the moment it is read from the socket to
//! the send of each datagram it causes (forwarded copies, feedback). A fixed-bucket histogram
//! so that recording costs one comparison loop and an increment on the data path.

use std::time::Duration;

/// Upper bounds of the buckets, microseconds; a last bucket holds everything above.
pub const BOUNDS_US: [u64; 12] = [
    5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000,
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DelayHistogram {
    /// Per bucket (not cumulative); the last one is above every bound.
    pub counts: [u64; BOUNDS_US.len() + 1],
    pub sum_ns: u64,
}

impl DelayHistogram {
    pub fn record(&mut self, d: Duration) {
        self.record_n(d, 1);
    }

    /// `n` samples of the same delay (the copies of one packet sent together).
    pub fn record_n(&mut self, d: Duration, n: u64) {
        let us = d.as_micros() as u64;
        let i = BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BOUNDS_US.len());
        self.counts[i] += n;
        self.sum_ns = self
            .sum_ns
            .saturating_add((d.as_nanos() as u64).saturating_mul(n));
    }

    pub fn add(&mut self, other: &DelayHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_by_upper_bound() {
        let mut h = DelayHistogram::default();
        h.record(Duration::from_micros(3));
        h.record(Duration::from_micros(5));
        h.record(Duration::from_micros(6));
        h.record(Duration::from_millis(80));
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BOUNDS_US.len()], 1);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_ns, 80_014_000);
    }
}
