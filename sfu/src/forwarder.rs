//! One subscriber's copy of a track as one continuous stream (sans-I/O): which layer of a
//! simulcast publication it follows, when it may switch, and the rewrite that hides the
//! switches and pauses from the subscriber.
//!
//! A simulcast publisher sends the same picture as several independent streams (layers), each
//! with its own SSRC, sequence numbers, RTP timestamps and VP8 picture ids. The subscriber gets
//! one stream: the forwarder switches from one layer to another only at a keyframe of the new
//! one (a decoder cannot start elsewhere), and rewrites
//! - sequence numbers, so they continue without a gap the subscriber would NACK,
//! - RTP timestamps, so the new layer continues the old one's clock by the time that passed,
//! - VP8 picture id, TL0PICIDX and KEYIDX, so the decoder sees them go on by one.
//!
//! A pause (the allocator could not fit the track) is a switch to nothing; resuming is a
//! switch back, again at a keyframe.

use crate::track::SeqRebase;
use std::time::Instant;
use str0m::rtp::SeqNo;

/// VP8 payload descriptor fields that must run on across a layer switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Ids {
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
    pub key_idx: Option<u8>,
}

/// One packet of the source track, as the forwarder needs it.
#[derive(Debug, Clone, Copy)]
pub struct SourcePacket {
    /// Index of the layer it belongs to (0 for a track without simulcast).
    pub layer: usize,
    pub seq: SeqNo,
    pub timestamp: u32,
    pub vp8: Option<Vp8Ids>,
}

/// What to write for a forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: SeqNo,
    pub timestamp: u32,
    /// New descriptor values, when they differ from the packet's.
    pub vp8: Option<Vp8Ids>,
}

/// The last packet sent, to continue from on a switch.
#[derive(Debug, Clone, Copy)]
struct Sent {
    layer: usize,
    timestamp: u32,
    at: Instant,
    vp8: Vp8Ids,
}

#[derive(Debug)]
pub struct Forwarder {
    /// RTP clock rate of the track (90 kHz for video).
    clock_rate: u32,
    /// May the copy start on any packet (audio; video without simulcast on first
    /// subscription, the subscriber's PLI brings a keyframe anyway)? After a pause, video
    /// always waits for a keyframe.
    start_anywhere: bool,
    /// The layer being forwarded.
    current: Option<usize>,
    /// The layer wanted; `None` = paused.
    target: Option<usize>,
    seq: SeqRebase,
    ts_offset: u32,
    pid_offset: u16,
    tl0_offset: u8,
    keyidx_offset: u8,
    last: Option<Sent>,
    /// Highest source sequence number forwarded (of the current layer).
    last_source_seq: Option<SeqNo>,
    /// Layer switches done (for tests and logs).
    pub switches: u32,
}

const PICTURE_ID_MASK: u16 = 0x7fff;
const KEY_IDX_MASK: u8 = 0x1f;

impl Forwarder {
    pub fn new(clock_rate: u32, start_anywhere: bool) -> Forwarder {
        Forwarder {
            clock_rate,
            start_anywhere,
            current: None,
            target: Some(0),
            seq: SeqRebase::default(),
            ts_offset: 0,
            pid_offset: 0,
            tl0_offset: 0,
            keyidx_offset: 0,
            last: None,
            last_source_seq: None,
            switches: 0,
        }
    }

    /// The layer wanted (`None` pauses). Returns true when a keyframe of the new target is
    /// needed to get there (ask the publisher for one).
    pub fn set_target(&mut self, target: Option<usize>) -> bool {
        if target == self.target {
            return target.is_some() && self.current != target;
        }
        self.target = target;
        match target {
            None => {
                // Paused: nothing more goes out; coming back needs a keyframe.
                self.current = None;
                self.start_anywhere = false;
                false
            }
            Some(t) => self.current != Some(t),
        }
    }

    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// The layer being forwarded now.
    pub fn current(&self) -> Option<usize> {
        self.current
    }

    /// When the last packet (later than those before it) was let through.
    pub fn last_forwarded(&self) -> Option<Instant> {
        self.last.map(|l| l.at)
    }

    /// Not paused.
    pub fn forwarding(&self) -> bool {
        self.target.is_some()
    }

    /// Waiting for a keyframe of the target layer.
    pub fn switching(&self) -> bool {
        self.target.is_some() && self.current != self.target
    }

    /// Decide on one source packet: `None` drops it for this subscriber. `keyframe` tells
    /// whether it starts a keyframe; it is only asked when that decides.
    pub fn accept(
        &mut self,
        now: Instant,
        pkt: SourcePacket,
        keyframe: impl FnOnce() -> bool,
    ) -> Option<Rewritten> {
        let target = self.target?;
        if self.current != Some(pkt.layer) {
            if pkt.layer != target {
                // Another layer (still flowing until the switch is done) or a stale one.
                return None;
            }
            let may_start_here = self.last.is_none() && self.start_anywhere;
            if !may_start_here && !keyframe() {
                return None;
            }
            self.switch_to(now, pkt);
        }
        let seq = self.seq.map(pkt.seq)?;
        if self.last_source_seq.is_none_or(|l| *pkt.seq > *l) {
            self.last_source_seq = Some(pkt.seq);
        }
        let timestamp = pkt.timestamp.wrapping_add(self.ts_offset);
        let vp8 = pkt.vp8.map(|ids| Vp8Ids {
            picture_id: ids
                .picture_id
                .map(|p| p.wrapping_add(self.pid_offset) & PICTURE_ID_MASK),
            tl0_pic_idx: ids.tl0_pic_idx.map(|t| t.wrapping_add(self.tl0_offset)),
            key_idx: ids
                .key_idx
                .map(|k| k.wrapping_add(self.keyidx_offset) & KEY_IDX_MASK),
        });
        let changed = vp8.filter(|out| Some(*out) != pkt.vp8);
        let newer = self.last.is_none_or(|l| {
            // Only a packet later than the last one sent moves the continuation point.
            timestamp.wrapping_sub(l.timestamp) < u32::MAX / 2 || l.layer != pkt.layer
        });
        if newer {
            self.last = Some(Sent {
                layer: pkt.layer,
                timestamp,
                at: now,
                vp8: vp8.unwrap_or_default(),
            });
        }
        Some(Rewritten {
            seq,
            timestamp,
            vp8: changed,
        })
    }

    /// Whether exactly the packet before `seq` (of the layer forwarded) never came: a copy
    /// carried in `seq`'s redundancy can take its place.
    pub fn lost_just_before(&self, layer: usize, seq: SeqNo) -> bool {
        self.current == Some(layer) && self.last_source_seq.is_some_and(|l| *l + 2 == *seq)
    }

    /// Start forwarding `pkt.layer` at `pkt` (a keyframe, or the very first packet).
    fn switch_to(&mut self, now: Instant, pkt: SourcePacket) {
        if let Some(last) = self.last {
            // Continue right after what was sent: no sequence gap, so no NACK for it.
            self.seq.resume(pkt.seq);
            if last.layer != pkt.layer {
                // The new layer has its own clock: go on from the last timestamp by the time
                // that passed (at least one tick, so frames never share a timestamp).
                let elapsed = now.saturating_duration_since(last.at);
                let ticks =
                    (elapsed.as_micros() as u64 * u64::from(self.clock_rate) / 1_000_000).max(1);
                let want = last.timestamp.wrapping_add(ticks as u32);
                self.ts_offset = want.wrapping_sub(pkt.timestamp);
                if let Some(ids) = pkt.vp8 {
                    if let (Some(prev), Some(p)) = (last.vp8.picture_id, ids.picture_id) {
                        self.pid_offset = prev.wrapping_add(1).wrapping_sub(p) & PICTURE_ID_MASK;
                    }
                    if let (Some(prev), Some(t)) = (last.vp8.tl0_pic_idx, ids.tl0_pic_idx) {
                        self.tl0_offset = prev.wrapping_add(1).wrapping_sub(t);
                    }
                    if let (Some(prev), Some(k)) = (last.vp8.key_idx, ids.key_idx) {
                        self.keyidx_offset = prev.wrapping_add(1).wrapping_sub(k) & KEY_IDX_MASK;
                    }
                }
                self.switches += 1;
            }
        }
        self.current = Some(pkt.layer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A layer's packets: one per frame at 30 fps, its own sequence/timestamp/picture id base.
    struct Layer {
        index: usize,
        seq: u64,
        ts: u32,
        pid: u16,
        tl0: u8,
    }

    impl Layer {
        fn new(index: usize, seq: u64, ts: u32, pid: u16) -> Layer {
            Layer {
                index,
                seq,
                ts,
                pid,
                tl0: (pid % 251) as u8,
            }
        }

        fn next(&mut self) -> SourcePacket {
            let p = SourcePacket {
                layer: self.index,
                seq: SeqNo::from(self.seq),
                timestamp: self.ts,
                vp8: Some(Vp8Ids {
                    picture_id: Some(self.pid),
                    tl0_pic_idx: Some(self.tl0),
                    key_idx: None,
                }),
            };
            self.seq += 1;
            self.ts = self.ts.wrapping_add(3000);
            self.pid = (self.pid + 1) & PICTURE_ID_MASK;
            self.tl0 = self.tl0.wrapping_add(1);
            p
        }
    }

    #[test]
    fn switches_only_at_a_keyframe_and_stays_continuous() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, false);
        let mut low = Layer::new(0, 100, 1_000, 32_760);
        let mut high = Layer::new(2, 50_000, 4_000_000_000, 7);
        assert!(f.set_target(Some(0)));
        // Video without a keyframe is not forwarded.
        assert_eq!(f.accept(t0, low.next(), || false), None);
        let a = f.accept(t0, low.next(), || true).unwrap();
        assert_eq!(*a.seq, 1);
        let b = f
            .accept(t0 + Duration::from_millis(33), low.next(), || false)
            .unwrap();
        assert_eq!(*b.seq, 2);
        assert_eq!(b.timestamp, a.timestamp + 3000);
        // The high layer is wanted: the low one keeps flowing until its keyframe.
        assert!(f.set_target(Some(2)));
        assert!(f.switching());
        let t1 = t0 + Duration::from_millis(66);
        assert_eq!(f.accept(t1, high.next(), || false), None);
        let c_in = low.next();
        let c = f.accept(t1, c_in, || false).unwrap();
        assert_eq!(*c.seq, 3);
        // Nothing to rewrite on the first layer.
        assert_eq!(c.vp8, None);
        let c_ids = c_in.vp8.unwrap();
        let last_pid = c_ids.picture_id.unwrap();
        let t2 = t0 + Duration::from_millis(100);
        let d = f.accept(t2, high.next(), || true).unwrap();
        assert!(!f.switching());
        assert_eq!(f.switches, 1);
        // Sequence numbers go on by one; the clock by the 34 ms that passed.
        assert_eq!(*d.seq, 4);
        assert_eq!(d.timestamp, c.timestamp.wrapping_add(34 * 90));
        let ids = d.vp8.expect("picture id rewritten");
        assert_eq!(ids.picture_id, Some((last_pid + 1) & PICTURE_ID_MASK));
        assert_eq!(
            ids.tl0_pic_idx,
            Some(c_ids.tl0_pic_idx.unwrap().wrapping_add(1))
        );
        // The old layer is no longer forwarded.
        assert_eq!(f.accept(t2, low.next(), || true), None);
        let e = f
            .accept(t2 + Duration::from_millis(33), high.next(), || false)
            .unwrap();
        assert_eq!(*e.seq, 5);
        assert_eq!(e.timestamp, d.timestamp.wrapping_add(3000));
        assert_eq!(
            e.vp8.unwrap().picture_id,
            Some((ids.picture_id.unwrap() + 1) & PICTURE_ID_MASK)
        );
    }

    #[test]
    fn a_pause_resumes_at_a_keyframe_without_a_sequence_gap() {
        let t0 = Instant::now();
        // A track without simulcast starts anywhere the first time.
        let mut f = Forwarder::new(90_000, true);
        let mut only = Layer::new(0, 10, 0, 1);
        assert_eq!(*f.accept(t0, only.next(), || false).unwrap().seq, 1);
        assert!(!f.set_target(None));
        assert!(!f.forwarding());
        for _ in 0..50 {
            assert_eq!(f.accept(t0, only.next(), || true), None);
        }
        assert!(f.set_target(Some(0)));
        assert_eq!(f.accept(t0, only.next(), || false), None);
        let p = only.next();
        let r = f.accept(t0, p, || true).unwrap();
        assert_eq!(*r.seq, 2);
        // Same layer: its own timestamps and picture ids go on untouched.
        assert_eq!(r.timestamp, p.timestamp);
        assert_eq!(r.vp8, None);
    }

    #[test]
    fn audio_starts_anywhere_and_late_packets_do_not_reuse_numbers() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(48_000, true);
        let pkt = |seq: u64| SourcePacket {
            layer: 0,
            seq: SeqNo::from(seq),
            timestamp: (seq * 960) as u32,
            vp8: None,
        };
        assert_eq!(*f.accept(t0, pkt(500), || false).unwrap().seq, 1);
        assert_eq!(*f.accept(t0, pkt(502), || false).unwrap().seq, 3);
        // Reordered: fills the gap.
        assert_eq!(*f.accept(t0, pkt(501), || false).unwrap().seq, 2);
        // From before the first one: cannot be placed.
        assert_eq!(f.accept(t0, pkt(499), || false), None);
        // 503 never came: 504's redundancy may stand in for it.
        assert!(f.lost_just_before(0, SeqNo::from(504)));
        assert!(!f.lost_just_before(0, SeqNo::from(503)));
        assert!(!f.lost_just_before(1, SeqNo::from(504)));
        assert_eq!(*f.accept(t0, pkt(503), || false).unwrap().seq, 4);
    }

    #[test]
    fn a_keyframe_is_asked_only_when_the_target_is_not_reached() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, false);
        let mut l1 = Layer::new(1, 0, 0, 0);
        assert!(f.set_target(Some(1)));
        f.accept(t0, l1.next(), || true).unwrap();
        assert!(!f.set_target(Some(1)));
        assert!(!f.switching());
        assert!(f.set_target(Some(0)));
        assert!(f.switching() && f.target() == Some(0));
        // Still switching: asking again is right (the keyframe may have been lost).
        assert!(f.set_target(Some(0)));
    }
}
