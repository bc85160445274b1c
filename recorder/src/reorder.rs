//! Puts packets back in sequence order within a small window, dropping duplicates and packets
//! that arrive after their place has passed.

use std::collections::BTreeMap;

/// One RTP packet as the recorder gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<P> {
    /// Extended (never wrapping) sequence number.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: P,
}

pub struct Reorder<P> {
    window: usize,
    held: BTreeMap<u64, Packet<P>>,
    last_out: Option<u64>,
}

impl<P> Reorder<P> {
    pub fn new(window: usize) -> Reorder<P> {
        Reorder {
            window: window.max(1),
            held: BTreeMap::new(),
            last_out: None,
        }
    }

    /// Take a packet; returns those now due, in order.
    pub fn push(&mut self, p: Packet<P>, out: &mut Vec<Packet<P>>) {
        if self.last_out.is_some_and(|l| p.seq <= l) || self.held.contains_key(&p.seq) {
            return;
        }
        self.held.insert(p.seq, p);
        // Release the next packets in sequence at once; hold the rest until the window fills.
        while let Some((&seq, _)) = self.held.first_key_value() {
            let next = self.last_out.map(|l| l + 1);
            if next == Some(seq) || self.held.len() > self.window {
                let (_, p) = self.held.pop_first().expect("non-empty");
                self.last_out = Some(seq);
                out.push(p);
            } else {
                break;
            }
        }
    }

    /// Everything held, in order (end of recording).
    pub fn drain(&mut self, out: &mut Vec<Packet<P>>) {
        while let Some((seq, p)) = self.held.pop_first() {
            self.last_out = Some(seq);
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(seq: u64) -> Packet<()> {
        Packet {
            seq,
            timestamp: 0,
            marker: false,
            payload: (),
        }
    }

    fn seqs(v: &[Packet<()>]) -> Vec<u64> {
        v.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn in_order_passes_straight_through_after_the_first_window() {
        let mut r = Reorder::new(3);
        let mut out = Vec::new();
        for s in 1..=4 {
            r.push(pk(s), &mut out);
        }
        // The first packet waited for the window to fill (it may not be the first sent),
        // then everything in sequence went at once.
        assert_eq!(seqs(&out), [1, 2, 3, 4]);
        r.drain(&mut out);
        assert_eq!(seqs(&out), [1, 2, 3, 4]);
    }

    #[test]
    fn reorders_drops_duplicates_and_late_packets() {
        let mut r = Reorder::new(2);
        let mut out = Vec::new();
        for s in [10, 12, 11, 11, 14, 15, 16, 13, 17] {
            r.push(pk(s), &mut out);
        }
        r.drain(&mut out);
        // 13 came after 14 had to go: dropped, the gap stays.
        assert_eq!(seqs(&out), [10, 11, 12, 14, 15, 16, 17]);
    }
}
