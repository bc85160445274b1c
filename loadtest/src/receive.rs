//! What one participant measures on one received track: packets, loss from the synthetic
//! packet counters, one-way latency from the send timestamps (same clock on one machine) and
//! RFC 3550 interarrival jitter.

use consult_client::synthetic::{check_payload, now_us, split_tag};
use consult_protocol::{Role, TrackKind, TrackLabel};
use hdrhistogram::Histogram;
use std::time::Instant;

/// Latencies are kept in microseconds, up to a minute, to 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The period in which latency and loss count (after the ramp and warm-up, before the end).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub until: Instant,
}

impl Window {
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.until
    }
}

/// Distinct packet counters seen, to tell loss from duplicates.
#[derive(Debug, Default)]
struct CounterSet {
    base: Option<u32>,
    bits: Vec<u64>,
    lowest: u32,
    highest: u32,
    distinct: u64,
    duplicates: u64,
}

impl CounterSet {
    fn insert(&mut self, counter: u32) {
        let base = *self.base.get_or_insert(counter);
        // Counters before the first one seen in the window are late arrivals: ignore them.
        let Some(offset) = counter.checked_sub(base) else {
            return;
        };
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        if word >= self.bits.len() {
            // Bounded: a corrupted counter would have failed the checksum.
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.bits[word] |= 1 << bit;
        if self.distinct == 0 {
            self.lowest = counter;
            self.highest = counter;
        }
        self.lowest = self.lowest.min(counter);
        self.highest = self.highest.max(counter);
        self.distinct += 1;
    }

    /// Packets between the first and last seen that never came.
    fn lost(&self) -> u64 {
        if self.distinct == 0 {
            return 0;
        }
        u64::from(self.highest - self.lowest + 1) - self.distinct
    }
}

/// One received track's measures.
#[derive(Debug)]
pub struct TrackStats {
    pub label: TrackLabel,
    pub kind: TrackKind,
    pub from_role: Role,
    pub received: u64,
    /// Payloads that were not intact synthetic packets.
    pub corrupt: u64,
    pub first_at: Option<Instant>,
    /// Packet counters per run of one simulcast layer (a plain track has one run): each
    /// layer has its own counters, and a switch leaves gaps that are not loss.
    runs: Vec<(u8, CounterSet)>,
    /// Packets received in the window per simulcast layer (0 = lowest, or a plain track).
    pub layer_packets: [u64; 4],
    /// One-way delay sender → receiver, µs, packets in the window.
    pub latency_us: Histogram<u64>,
    jitter_us: f64,
    last_transit_us: Option<i64>,
    window: Window,
}

impl TrackStats {
    pub fn new(label: TrackLabel, kind: TrackKind, from_role: Role, window: Window) -> TrackStats {
        TrackStats {
            label,
            kind,
            from_role,
            received: 0,
            corrupt: 0,
            first_at: None,
            runs: Vec::new(),
            layer_packets: [0; 4],
            latency_us: latency_histogram(),
            jitter_us: 0.0,
            last_transit_us: None,
            window,
        }
    }

    /// Account for one payload received at `at` (`recv_us`: wall clock µs at that moment).
    pub fn on_payload(&mut self, at: Instant, recv_us: u64, payload: &[u8]) {
        self.received += 1;
        self.first_at.get_or_insert(at);
        let Some(info) = check_payload(self.kind, payload) else {
            self.corrupt += 1;
            return;
        };
        if !self.window.contains(at) {
            return;
        }
        let layer = split_tag(info.tag).1;
        if let Some(n) = self.layer_packets.get_mut(usize::from(layer)) {
            *n += 1;
        }
        match self.runs.last_mut() {
            Some((l, run)) if *l == layer => run.insert(info.counter),
            _ => {
                // A switch: a new run (a late packet of the previous layer makes a short one).
                if self.runs.len() < 10_000 {
                    let mut run = CounterSet::default();
                    run.insert(info.counter);
                    self.runs.push((layer, run));
                }
            }
        }
        let transit = recv_us as i64 - info.sent_us as i64;
        let _ = self.latency_us.record(transit.max(1) as u64);
        if let Some(prev) = self.last_transit_us {
            let d = (transit - prev).abs() as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit_us = Some(transit);
    }

    pub fn on_packet_now(&mut self, payload: &[u8]) {
        self.on_payload(Instant::now(), now_us(), payload);
    }

    /// Distinct packets received in the window.
    pub fn window_received(&self) -> u64 {
        self.runs.iter().map(|r| r.1.distinct).sum()
    }

    pub fn window_lost(&self) -> u64 {
        self.runs.iter().map(|r| r.1.lost()).sum()
    }

    pub fn duplicates(&self) -> u64 {
        self.runs.iter().map(|r| r.1.duplicates).sum()
    }

    /// Simulcast layer switches seen in the window.
    pub fn layer_switches(&self) -> usize {
        self.runs.len().saturating_sub(1)
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter_us / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consult_client::synthetic::make_payload;
    use std::time::Duration;

    fn window(start: Instant) -> Window {
        Window {
            from: start,
            until: start + Duration::from_secs(10),
        }
    }

    #[test]
    fn loss_duplicates_latency_and_jitter() {
        let t0 = Instant::now();
        let mut s = TrackStats::new(
            TrackLabel::Stethoscope,
            TrackKind::Audio,
            Role::Companion,
            window(t0),
        );
        // Packets 0..10 sent 20 ms apart, 5 lost, 3 duplicated, each 1 ms in flight except
        // packet 7 (4 ms).
        for c in (0u32..10).filter(|c| *c != 5) {
            let sent = 1_000_000 + u64::from(c) * 20_000;
            let delay = if c == 7 { 4_000 } else { 1_000 };
            let p = make_payload(TrackKind::Audio, 1, c, sent, 100);
            let at = t0 + Duration::from_millis(u64::from(c) * 20);
            s.on_payload(at, sent + delay, &p);
            if c == 3 {
                s.on_payload(at, sent + delay, &p);
            }
        }
        s.on_payload(t0, 5, b"not a synthetic packet at all, far too short?");
        assert_eq!(s.received, 11);
        assert_eq!(s.corrupt, 1);
        assert_eq!(s.window_received(), 9);
        assert_eq!(s.window_lost(), 1);
        assert_eq!(s.duplicates(), 1);
        assert_eq!(s.layer_switches(), 0);
        assert_eq!(s.layer_packets[0], 10);
        assert_eq!(s.latency_us.value_at_quantile(0.5), 1_000);
        assert!(s.latency_us.max() >= 3_990);
        // The 3 ms step in and out of packet 7 shows as jitter.
        assert!(
            s.jitter_ms() > 0.2 && s.jitter_ms() < 1.0,
            "{}",
            s.jitter_ms()
        );
    }

    #[test]
    fn packets_outside_the_window_count_as_received_only() {
        let t0 = Instant::now();
        let w = Window {
            from: t0 + Duration::from_secs(1),
            until: t0 + Duration::from_secs(2),
        };
        let mut s = TrackStats::new(TrackLabel::Camera, TrackKind::Video, Role::Physician, w);
        let p = make_payload(TrackKind::Video, 1, 0, 10, 300);
        s.on_payload(t0, 20, &p);
        s.on_payload(t0 + Duration::from_secs(3), 20, &p);
        assert_eq!(s.received, 2);
        assert_eq!(s.window_received(), 0);
        assert_eq!(s.latency_us.len(), 0);
    }

    #[test]
    fn simulcast_switches_are_not_loss() {
        use consult_client::synthetic::layer_tag;
        let t0 = Instant::now();
        let mut s = TrackStats::new(
            TrackLabel::Camera,
            TrackKind::Video,
            Role::Companion,
            window(t0),
        );
        let mut feed = |layer: u8, counters: std::ops::Range<u32>| {
            for c in counters {
                let p = make_payload(TrackKind::Video, layer_tag(4, layer), c, 1_000, 200);
                s.on_payload(t0 + Duration::from_millis(u64::from(c)), 2_000, &p);
            }
        };
        // Top layer, then the middle one for a while (one packet lost), then the top again.
        feed(2, 0..100);
        feed(1, 500..550);
        feed(1, 551..600);
        feed(2, 300..400);
        assert_eq!(s.layer_switches(), 2);
        assert_eq!(s.window_lost(), 1);
        assert_eq!(s.layer_packets, [0, 99, 200, 0]);
    }
}
