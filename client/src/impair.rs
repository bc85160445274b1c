//! A network link's behaviour, without I/O: rate limit with a bounded queue, delay, jitter,
//! random or bursty (Gilbert–Elliott) loss, reordering, and a schedule of profiles over time
//! (e.g. 2 Mbps → 100 kbps → 2 Mbps). [`LinkModel::on_packet`] says, for one packet at `now`,
//! whether it is dropped (and why) or when it comes out of the link. The relay applies it to
//! real datagrams; tests drive it with virtual time.
//!
//! Linux `netem` is not available on these machines; this plays its part in process.

use std::time::{Duration, Instant};

/// Loss applied to packets that made it through the queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    None,
    /// Each packet lost with this probability.
    Random(f64),
    /// Two-state bursty loss: in the good state packets are lost with `loss_good`, in the bad
    /// one with `loss_bad`; the state changes before each packet with the given probabilities.
    GilbertElliott {
        good_to_bad: f64,
        bad_to_good: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

/// What the link does during one period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Bits per second; `None`: unlimited.
    pub rate_bps: Option<u64>,
    /// Bytes the bottleneck queue holds; a packet that would overflow it is dropped.
    pub queue_bytes: usize,
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Each packet's delay varies uniformly within ± this.
    pub jitter: Duration,
    pub loss: Loss,
    /// Probability that a packet may overtake the ones before it (otherwise order is kept
    /// even with jitter).
    pub reorder: f64,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            rate_bps: None,
            queue_bytes: 64 * 1024,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            reorder: 0.0,
        }
    }
}

impl Profile {
    /// A rate-limited link with a queue of `queue_ms` at that rate.
    pub fn rate(bps: u64, queue_ms: u64) -> Profile {
        Profile {
            rate_bps: Some(bps),
            queue_bytes: (bps * queue_ms / 8000).max(1500) as usize,
            ..Profile::default()
        }
    }
}

/// Why a packet did not get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    Loss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop(DropReason),
    Deliver(Instant),
}

/// Counts of what the link did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub packets: u64,
    pub bytes: u64,
    pub delivered: u64,
    pub dropped_queue: u64,
    pub dropped_loss: u64,
}

pub struct LinkModel {
    /// Profiles from their start offset; the first starts at 0.
    schedule: Vec<(Duration, Profile)>,
    start: Instant,
    rng: u64,
    /// When the bottleneck finishes sending what is queued.
    busy_until: Instant,
    ge_bad: bool,
    last_delivery: Instant,
    pub stats: LinkStats,
}

impl LinkModel {
    pub fn new(start: Instant, profile: Profile, seed: u64) -> LinkModel {
        LinkModel::scheduled(start, vec![(Duration::ZERO, profile)], seed)
    }

    /// Profiles taking effect at their offsets from `start` (sorted; the first at zero).
    pub fn scheduled(
        start: Instant,
        mut schedule: Vec<(Duration, Profile)>,
        seed: u64,
    ) -> LinkModel {
        schedule.sort_by_key(|(at, _)| *at);
        if schedule.first().is_none_or(|(at, _)| !at.is_zero()) {
            schedule.insert(0, (Duration::ZERO, Profile::default()));
        }
        LinkModel {
            schedule,
            start,
            rng: seed | 1,
            busy_until: start,
            ge_bad: false,
            last_delivery: start,
            stats: LinkStats::default(),
        }
    }

    /// The profile in force at `now`.
    pub fn profile(&self, now: Instant) -> Profile {
        let t = now.saturating_duration_since(self.start);
        self.schedule
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(_, p)| *p)
            .unwrap_or_default()
    }

    fn unit(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn on_packet(&mut self, now: Instant, len: usize) -> Verdict {
        let p = self.profile(now);
        self.stats.packets += 1;
        self.stats.bytes += len as u64;
        // The bottleneck: a FIFO drained at the rate.
        let mut out_of_queue = now;
        if let Some(rate) = p.rate_bps.filter(|r| *r > 0) {
            let start = self.busy_until.max(now);
            let backlog = start - now;
            let queued_bytes = (backlog.as_secs_f64() * rate as f64 / 8.0) as usize;
            if queued_bytes + len > p.queue_bytes {
                self.stats.dropped_queue += 1;
                return Verdict::Drop(DropReason::QueueFull);
            }
            let serialize = Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
            self.busy_until = start + serialize;
            out_of_queue = self.busy_until;
        }
        // Loss on the path.
        let lost = match p.loss {
            Loss::None => false,
            Loss::Random(q) => self.unit() < q,
            Loss::GilbertElliott {
                good_to_bad,
                bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let flip = self.unit();
                if self.ge_bad && flip < bad_to_good {
                    self.ge_bad = false;
                } else if !self.ge_bad && flip < good_to_bad {
                    self.ge_bad = true;
                }
                self.unit() < if self.ge_bad { loss_bad } else { loss_good }
            }
        };
        if lost {
            self.stats.dropped_loss += 1;
            return Verdict::Drop(DropReason::Loss);
        }
        // Delay and jitter; order kept unless this packet may overtake.
        let jitter = if p.jitter.is_zero() {
            0.0
        } else {
            (self.unit() * 2.0 - 1.0) * p.jitter.as_secs_f64()
        };
        let delay = (p.delay.as_secs_f64() + jitter).max(0.0);
        let mut at = out_of_queue + Duration::from_secs_f64(delay);
        let overtakes = p.reorder > 0.0 && self.unit() < p.reorder;
        if !overtakes {
            at = at.max(self.last_delivery);
            self.last_delivery = at;
        }
        self.stats.delivered += 1;
        Verdict::Deliver(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rate_limit_paces_and_a_full_queue_drops() {
        let t0 = Instant::now();
        // 100 kbps, 200 ms of queue (2500 bytes).
        let mut link = LinkModel::new(t0, Profile::rate(100_000, 200), 1);
        // 1000-byte packets take 80 ms each at 100 kbps.
        assert_eq!(link.on_packet(t0, 1000), Verdict::Deliver(t0 + ms(80)));
        assert_eq!(link.on_packet(t0, 1000), Verdict::Deliver(t0 + ms(160)));
        // 2 × 1000 bytes queued; one more would exceed 2500.
        assert_eq!(
            link.on_packet(t0, 1000),
            Verdict::Drop(DropReason::QueueFull)
        );
        // Once drained, it goes through.
        assert_eq!(
            link.on_packet(t0 + ms(200), 1000),
            Verdict::Deliver(t0 + ms(280))
        );
        assert_eq!(link.stats.dropped_queue, 1);
    }

    #[test]
    fn throughput_matches_the_rate_under_overload() {
        let t0 = Instant::now();
        let mut link = LinkModel::new(t0, Profile::rate(100_000, 100), 2);
        // Offer 400 kbps of 500-byte packets for 10 s.
        let mut delivered_bytes = 0;
        for i in 0..1000u64 {
            if let Verdict::Deliver(_) = link.on_packet(t0 + ms(i * 10), 500) {
                delivered_bytes += 500;
            }
        }
        let kbps = delivered_bytes as f64 * 8.0 / 10.0 / 1000.0;
        assert!((95.0..=106.0).contains(&kbps), "{kbps} kbps");
    }

    #[test]
    fn delay_jitter_and_order() {
        let t0 = Instant::now();
        let p = Profile {
            delay: ms(100),
            jitter: ms(30),
            ..Profile::default()
        };
        let mut link = LinkModel::new(t0, p, 3);
        let mut last = t0;
        for i in 0..500u64 {
            let now = t0 + ms(i);
            let Verdict::Deliver(at) = link.on_packet(now, 100) else {
                panic!("no loss configured")
            };
            let d = at - now;
            assert!(d >= ms(70) && d <= ms(130) + ms(30), "{d:?}");
            assert!(at >= last, "order kept without reordering");
            last = at;
        }
    }

    #[test]
    fn random_and_bursty_loss_rates() {
        let t0 = Instant::now();
        let mut link = LinkModel::new(
            t0,
            Profile {
                loss: Loss::Random(0.02),
                ..Profile::default()
            },
            4,
        );
        for i in 0..50_000u64 {
            link.on_packet(t0 + Duration::from_micros(i), 100);
        }
        let rate = link.stats.dropped_loss as f64 / 50_000.0;
        assert!((0.017..0.023).contains(&rate), "{rate}");

        // Gilbert–Elliott: 1 % chance to enter a burst, bursts of 4 packets on average,
        // everything lost in a burst: ~3.8 % loss, in runs.
        let ge = Loss::GilbertElliott {
            good_to_bad: 0.01,
            bad_to_good: 0.25,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let mut link = LinkModel::new(
            t0,
            Profile {
                loss: ge,
                ..Profile::default()
            },
            5,
        );
        let mut runs = 0;
        let mut prev_lost = false;
        for i in 0..100_000u64 {
            let lost = link.on_packet(t0 + Duration::from_micros(i), 100)
                == Verdict::Drop(DropReason::Loss);
            if lost && !prev_lost {
                runs += 1;
            }
            prev_lost = lost;
        }
        let rate = link.stats.dropped_loss as f64 / 100_000.0;
        let mean_run = link.stats.dropped_loss as f64 / runs as f64;
        assert!((0.03..0.05).contains(&rate), "{rate}");
        assert!((3.0..5.0).contains(&mean_run), "bursts of {mean_run}");
    }

    #[test]
    fn a_schedule_steps_the_rate_down_and_up() {
        let t0 = Instant::now();
        let mut link = LinkModel::scheduled(
            t0,
            vec![
                (Duration::ZERO, Profile::rate(2_000_000, 100)),
                (Duration::from_secs(10), Profile::rate(100_000, 100)),
                (Duration::from_secs(20), Profile::rate(2_000_000, 100)),
            ],
            6,
        );
        assert_eq!(link.profile(t0 + ms(9_999)).rate_bps, Some(2_000_000));
        assert_eq!(link.profile(t0 + ms(10_000)).rate_bps, Some(100_000));
        assert_eq!(link.profile(t0 + ms(25_000)).rate_bps, Some(2_000_000));
        // 1000 bytes take 4 ms at 2 Mbps, 80 ms at 100 kbps.
        assert_eq!(link.on_packet(t0, 1000), Verdict::Deliver(t0 + ms(4)));
        let at = t0 + Duration::from_secs(11);
        assert_eq!(link.on_packet(at, 1000), Verdict::Deliver(at + ms(80)));
    }

    #[test]
    fn reordering_lets_some_packets_overtake() {
        let t0 = Instant::now();
        let p = Profile {
            delay: ms(50),
            jitter: ms(20),
            reorder: 0.1,
            ..Profile::default()
        };
        let mut link = LinkModel::new(t0, p, 7);
        let mut times = Vec::new();
        for i in 0..1000u64 {
            if let Verdict::Deliver(at) = link.on_packet(t0 + ms(i), 100) {
                times.push(at);
            }
        }
        let inversions = times.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 10, "{inversions} packets overtaken");
    }
}
