//! Rate limits (sans-I/O, time passed in): authentication failures per address and per API
//! key, and joins per identity, each a token bucket per key. A key that runs dry is refused
//! (429 with Retry-After, or a `rate_limited` error) until the bucket refills; each burst of
//! refusals is audited once, with its count, when it ends (not one record per attempt).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Attempts allowed at once.
    pub burst: u32,
    /// One more attempt allowed per this.
    pub refill: Duration,
}

/// Wrong credentials (API secret, token) from one address or for one key: 10 at once, then
/// one every 6 s.
pub const AUTH_FAILURES: Limit = Limit {
    burst: 10,
    refill: Duration::from_secs(6),
};

/// Joins of one identity: a reconnecting client (1, 2, 4, 8 s apart) stays well under it; a
/// loop reconnecting as fast as it can is held to one join every 3 s.
pub const JOINS: Limit = Limit {
    burst: 20,
    refill: Duration::from_secs(3),
};

/// A wait in whole seconds, rounded up (what `Retry-After` and messages say).
pub fn whole_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Refusals since the bucket ran dry (the burst being lived through).
    refused: u32,
}

impl Bucket {
    fn refill(&mut self, limit: Limit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed / limit.refill.as_secs_f64()).min(f64::from(limit.burst));
        self.at = now;
    }
}

/// A burst of refusals that ended (the key has tokens again): to audit once.
#[derive(Debug, Clone, PartialEq)]
pub struct Burst<K> {
    pub key: K,
    pub refused: u32,
}

#[derive(Debug)]
pub struct Limiter<K> {
    limit: Limit,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(limit: Limit) -> Self {
        Limiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Whether `key` may try now (without spending anything): `Err(retry_after)` if not, and
    /// the refusal is counted in its burst.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let limit = self.limit;
        let Some(b) = self.buckets.get_mut(key) else {
            return Ok(());
        };
        b.refill(limit, now);
        if b.tokens >= 1.0 {
            return Ok(());
        }
        b.refused += 1;
        let missing = 1.0 - b.tokens;
        Err(
            Duration::from_secs_f64(missing * limit.refill.as_secs_f64())
                .max(Duration::from_secs(1)),
        )
    }

    /// Spend one attempt of `key` (a failure, or a join). Returns the burst of refusals that
    /// this attempt ends, if any (the key was refused before and may try again now).
    pub fn spend(&mut self, key: &K, now: Instant) -> Option<Burst<K>> {
        let limit = self.limit;
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            at: now,
            refused: 0,
        });
        b.refill(limit, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
        (b.refused > 0).then(|| Burst {
            key: key.clone(),
            refused: std::mem::take(&mut b.refused),
        })
    }

    /// Forget keys whose bucket is full again, returning the bursts they had not reported
    /// (call now and then: this bounds the map by the keys active lately).
    pub fn sweep(&mut self, now: Instant) -> Vec<Burst<K>> {
        let mut ended = Vec::new();
        let limit = self.limit;
        self.buckets.retain(|key, b| {
            b.refill(limit, now);
            if b.tokens < f64::from(limit.burst) {
                return true;
            }
            if b.refused > 0 {
                ended.push(Burst {
                    key: key.clone(),
                    refused: b.refused,
                });
            }
            false
        });
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_until_the_bucket_refills() {
        let t = Instant::now();
        let mut l = Limiter::new(AUTH_FAILURES);
        let k = "10.0.0.1".to_string();
        for _ in 0..10 {
            assert!(l.check(&k, t).is_ok());
            l.spend(&k, t);
        }
        // 1000 more wrong secrets in the same second: all refused.
        let refused = (0..1000).filter(|_| l.check(&k, t).is_err()).count();
        assert_eq!(refused, 1000);
        let retry = l.check(&k, t).unwrap_err();
        assert!(
            retry >= Duration::from_secs(5) && retry <= AUTH_FAILURES.refill,
            "{retry:?}"
        );
        // Another address is not held back.
        assert!(l.check(&"10.0.0.2".to_string(), t).is_ok());
        // One refill later, one more attempt; it reports the burst once, with its count.
        let later = t + AUTH_FAILURES.refill;
        assert!(l.check(&k, later).is_ok());
        let burst = l.spend(&k, later).expect("the burst ended");
        assert_eq!(burst.refused, 1001);
        // No refusal since: nothing more to report.
        let t2 = later + AUTH_FAILURES.refill;
        l.check(&k, t2).unwrap();
        assert_eq!(l.spend(&k, t2), None, "reported once");
        // A refusal makes a new burst, of one.
        assert!(l.check(&k, t2).is_err());
        let t3 = t2 + AUTH_FAILURES.refill;
        assert_eq!(l.spend(&k, t3).map(|b| b.refused), Some(1));
    }

    #[test]
    fn a_reconnecting_client_is_never_held_back_and_keys_are_forgotten() {
        let t = Instant::now();
        let mut l = Limiter::new(JOINS);
        let k = "ide-1";
        // 30 rejoins with the clients' backoff (1, 2, 4, 8 s, then every 8 s).
        let mut at = t;
        for i in 0..30u32 {
            assert!(l.check(&k, at).is_ok(), "join {i} held back");
            l.spend(&k, at);
            at += Duration::from_secs(u64::from(1u32 << i.min(3)));
        }
        assert!(l.sweep(at + JOINS.refill * 10).is_empty());
        assert!(l.buckets.is_empty());
    }
}
