//! RFC 2198 redundancy (RED) for Opus, per subscriber (sans-I/O).
//!
//! - A publisher that sends RED (a browser that negotiated it) has it passed through to
//!   subscribers that negotiated RED, and stripped to the primary Opus packet for the others.
//! - A publisher that sends plain Opus (the cart) has RED added by the SFU toward a subscriber
//!   that negotiated it *and* whose link loses packets: each packet then also carries the
//!   previous one, so one loss in a row costs nothing. That doubles the audio rate toward that
//!   subscriber, so it is switched on by measured loss ([`RedPolicy`]) and, when the link has
//!   an estimate, only where it fits — the stethoscope first (the engine decides).

use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::rtp::{RedDecoder, RedEncoder, RedundantBlock, SeqNo};

/// Loss toward a subscriber (fraction, from its receiver reports) from which RED is added.
pub const RED_ON_LOSS: f32 = 0.01;
/// RED stops once the loss has stayed under this…
pub const RED_OFF_LOSS: f32 = 0.005;
/// …for this long.
pub const RED_OFF_AFTER: Duration = Duration::from_secs(10);

/// Whether a subscriber's link loses enough to add redundancy, with hysteresis.
#[derive(Debug, Default)]
pub struct RedPolicy {
    on: bool,
    quiet_since: Option<Instant>,
}

impl RedPolicy {
    /// Update with the latest loss fraction toward the subscriber; returns whether RED is on.
    pub fn update(&mut self, now: Instant, loss: Option<f32>) -> bool {
        let loss = loss.unwrap_or(0.0);
        if loss >= RED_ON_LOSS {
            self.on = true;
            self.quiet_since = None;
        } else if self.on {
            if loss >= RED_OFF_LOSS {
                self.quiet_since = None;
            } else {
                let since = *self.quiet_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= RED_OFF_AFTER {
                    self.on = false;
                    self.quiet_since = None;
                }
            }
        }
        self.on
    }
}

/// The last plain Opus packet of a track, to send again inside the next one.
#[derive(Debug, Clone)]
pub struct Previous {
    pub seq: SeqNo,
    pub timestamp: u32,
    pub payload: Arc<[u8]>,
}

/// The primary (last) block of a RED payload; `None` if it is not valid RED.
pub fn primary(payload: &[u8]) -> Option<&[u8]> {
    split(payload).map(|(p, _)| p)
}

/// A redundant block: its timestamp offset before the primary, and its bytes.
pub type Redundant<'a> = (u32, &'a [u8]);

/// The primary block of a RED payload and the redundant block just before it: the packet
/// before this one, when the publisher's redundancy distance is one packet. `None` if it is
/// not valid RED.
pub fn split(payload: &[u8]) -> Option<(&[u8], Option<Redundant<'_>>)> {
    let blocks = RedDecoder::decode(payload).ok()?;
    let primary = blocks.iter().find(|b| b.is_primary)?.payload;
    let previous = blocks
        .iter()
        .rev()
        .find(|b| !b.is_primary && b.timestamp_offset > 0)
        .map(|b| (b.timestamp_offset, b.payload));
    Some((primary, previous))
}

/// A RED payload carrying `payload` (payload type `pt`) and, when it is the packet just
/// before, `previous` as the redundant block.
pub fn encode(
    pt: u8,
    seq: SeqNo,
    timestamp: u32,
    payload: &[u8],
    previous: Option<&Previous>,
) -> Arc<[u8]> {
    let redundant: Vec<RedundantBlock> = previous
        .filter(|p| *p.seq + 1 == *seq)
        .map(|p| RedundantBlock {
            pt,
            timestamp_offset: timestamp.wrapping_sub(p.timestamp),
            payload: p.payload.to_vec(),
        })
        .into_iter()
        .collect();
    RedEncoder::encode(pt, payload, &redundant).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_switches_on_with_loss_and_off_after_a_quiet_spell() {
        let t0 = Instant::now();
        let mut p = RedPolicy::default();
        assert!(!p.update(t0, None));
        assert!(!p.update(t0, Some(0.005)));
        assert!(p.update(t0, Some(0.02)));
        // A short clean spell keeps it.
        let t1 = t0 + Duration::from_secs(5);
        assert!(p.update(t1, Some(0.0)));
        assert!(p.update(t1 + Duration::from_secs(4), Some(0.007)));
        // Ten seconds under 0.5 %: off.
        let t2 = t1 + Duration::from_secs(5);
        assert!(p.update(t2, Some(0.001)));
        assert!(!p.update(t2 + RED_OFF_AFTER, Some(0.001)));
    }

    #[test]
    fn red_round_trips_and_only_carries_the_packet_just_before() {
        let prev = Previous {
            seq: SeqNo::from(41),
            timestamp: 1_000,
            payload: Arc::from(&b"previous"[..]),
        };
        let red = encode(111, SeqNo::from(42), 1_960, b"primary", Some(&prev));
        let blocks = RedDecoder::decode(&red).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].payload, b"previous");
        assert_eq!(blocks[0].timestamp_offset, 960);
        assert_eq!(blocks[0].pt, 111);
        assert_eq!(primary(&red), Some(&b"primary"[..]));
        assert_eq!(
            split(&red),
            Some((&b"primary"[..], Some((960, &b"previous"[..]))))
        );
        // A gap before: nothing redundant to carry.
        let red = encode(111, SeqNo::from(43), 2_920, b"next", Some(&prev));
        assert_eq!(RedDecoder::decode(&red).unwrap().len(), 1);
        assert_eq!(primary(b""), None);
    }
}
