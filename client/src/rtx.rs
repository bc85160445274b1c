//! Repairs a video or audio stream from its RTX stream (RFC 4588) on the receiving side.
//!
//! webrtc-rs 0.17 negotiates RTX and reads the repair stream, but drops what it reads
//! ("These packets aren't exposed to the user yet", `RTCRtpReceiver::receive_for_rtx`): a packet
//! resent over RTX after a NACK never reaches the track. This interceptor unwraps each RTX packet
//! (original sequence number in the first two payload bytes) and hands it to the reader of the
//! original stream, so NACK + RTX really recovers losses for our Rust peers.
//!
//! A repaired packet whose original already reached the reader is dropped: str0m also resends
//! cached packets as padding when it probes the link, and a copy asked for twice comes twice.
//!
//! Register it *before* the default interceptors: it then sits next to the network, and the NACK
//! generator above it sees repaired packets as received.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use webrtc::rtp::packet::Packet;
use webrtc::util::Marshal;

/// Repaired packets waiting for the reader of their original stream, by original SSRC.
#[derive(Default)]
struct Shared {
    repaired: HashMap<u32, VecDeque<Packet>>,
    /// Payload type of each original stream, as last seen on the wire.
    main_pt: HashMap<u32, u8>,
    /// Wakes the reader of an original stream when a repaired packet is queued for it.
    wake: HashMap<u32, Arc<Notify>>,
    /// Sequence numbers each original stream's reader got lately.
    seen: HashMap<u32, SeenWindow>,
}

/// Which of the last [`SeenWindow::SPAN`] sequence numbers of a stream were delivered
/// (sans-I/O).
#[derive(Debug, Default, Clone)]
pub struct SeenWindow {
    /// Highest sequence number seen, extended past wraps.
    top: Option<i64>,
    bits: [u64; SeenWindow::SPAN / 64],
}

impl SeenWindow {
    pub const SPAN: usize = 1024;

    fn slot(seq: i64) -> (usize, u64) {
        let i = seq.rem_euclid(Self::SPAN as i64) as usize;
        (i / 64, 1 << (i % 64))
    }

    /// Record `seq`; false if it was already delivered, or is too old to tell (then it is
    /// of no use to a reader anyway).
    pub fn insert(&mut self, seq: u16) -> bool {
        let Some(top) = self.top else {
            self.top = Some(i64::from(seq));
            let (w, b) = Self::slot(i64::from(seq));
            self.bits[w] |= b;
            return true;
        };
        // The extended number nearest to the top.
        let delta = i64::from(seq.wrapping_sub(top as u16) as i16);
        let ext = top + delta;
        if delta > 0 {
            // Clear the slots the window moves past.
            for s in (top + 1..=ext).take(Self::SPAN) {
                let (w, b) = Self::slot(s);
                self.bits[w] &= !b;
            }
            self.top = Some(ext);
        } else if -delta >= Self::SPAN as i64 {
            return false;
        }
        let (w, b) = Self::slot(ext);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}

impl Shared {
    fn wake(&mut self, ssrc: u32) -> Arc<Notify> {
        self.wake.entry(ssrc).or_default().clone()
    }
}

/// Bound on queued repaired packets per stream, so a stalled reader cannot grow memory.
const MAX_QUEUED: usize = 512;

#[derive(Default)]
pub struct RtxRepairBuilder;

impl InterceptorBuilder for RtxRepairBuilder {
    fn build(
        &self,
        _id: &str,
    ) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(RtxRepair::default()))
    }
}

#[derive(Default)]
pub struct RtxRepair {
    shared: Arc<Mutex<Shared>>,
}

struct RepairStreamReader {
    inner: Arc<dyn RTPReader + Send + Sync>,
    main_ssrc: u32,
    shared: Arc<Mutex<Shared>>,
}

#[async_trait::async_trait]
impl RTPReader for RepairStreamReader {
    async fn read(
        &self,
        buf: &mut [u8],
        attributes: &Attributes,
    ) -> Result<(Packet, Attributes), webrtc::interceptor::Error> {
        let (pkt, attr) = self.inner.read(buf, attributes).await?;
        // Padding-only RTX packets (probes) carry no original packet.
        if pkt.payload.len() > 2 {
            let osn = u16::from_be_bytes([pkt.payload[0], pkt.payload[1]]);
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let pt = shared.main_pt.get(&self.main_ssrc).copied();
            if let Some(pt) = pt {
                let mut original = pkt.clone();
                original.header.ssrc = self.main_ssrc;
                original.header.sequence_number = osn;
                original.header.payload_type = pt;
                original.header.padding = false;
                original.payload = pkt.payload.slice(2..);
                let q = shared.repaired.entry(self.main_ssrc).or_default();
                if q.len() < MAX_QUEUED {
                    q.push_back(original);
                    // At once, not with the stream's next packet: a retransmission has
                    // little time left before its playout (20 ms is a whole audio packet).
                    shared.wake(self.main_ssrc).notify_one();
                }
            }
        }
        Ok((pkt, attr))
    }
}

struct MainStreamReader {
    inner: Arc<dyn RTPReader + Send + Sync>,
    ssrc: u32,
    shared: Arc<Mutex<Shared>>,
}

#[async_trait::async_trait]
impl RTPReader for MainStreamReader {
    async fn read(
        &self,
        buf: &mut [u8],
        attributes: &Attributes,
    ) -> Result<(Packet, Attributes), webrtc::interceptor::Error> {
        loop {
            let (repaired, wake) = {
                let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                // The next repaired packet the reader has not had yet.
                let repaired = loop {
                    let next = shared
                        .repaired
                        .get_mut(&self.ssrc)
                        .and_then(VecDeque::pop_front);
                    let Some(pkt) = next else { break None };
                    let seen = shared.seen.entry(self.ssrc).or_default();
                    if seen.insert(pkt.header.sequence_number) {
                        break Some(pkt);
                    }
                };
                (repaired, shared.wake(self.ssrc))
            };
            if let Some(pkt) = repaired {
                // Readers above may re-parse `buf`: give them the packet's bytes too.
                if let Ok(bytes) = pkt.marshal() {
                    if bytes.len() <= buf.len() {
                        buf[..bytes.len()].copy_from_slice(&bytes);
                    }
                }
                return Ok((pkt, attributes.clone()));
            }
            // A repaired packet queued meanwhile wakes this read (`notify_one` keeps the
            // wake-up if nobody waits yet). Dropping the pending read loses nothing: the SRTP
            // stream's buffer hands a packet out only when the read completes.
            let read = tokio::select! {
                biased;
                _ = wake.notified() => None,
                r = self.inner.read(buf, attributes) => Some(r),
            };
            let Some(r) = read else { continue };
            let (pkt, attr) = r?;
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let seen = shared.seen.entry(self.ssrc).or_default();
            seen.insert(pkt.header.sequence_number);
            // The stream info's payload type can be 0 here: learn the real one from the
            // packets. Not RED's: a RED packet is never retransmitted over RTX (RED carries
            // its own redundancy; str0m does not cache it), so a repaired packet is plain.
            if pkt.header.payload_type != crate::PT_RED {
                shared.main_pt.insert(self.ssrc, pkt.header.payload_type);
            }
            return Ok((pkt, attr));
        }
    }
}

#[async_trait::async_trait]
impl Interceptor for RtxRepair {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        reader
    }

    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }

    async fn bind_local_stream(
        &self,
        _info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        writer
    }

    async fn unbind_local_stream(&self, _info: &StreamInfo) {}

    async fn bind_remote_stream(
        &self,
        info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        // webrtc-rs binds a repair stream with its main stream as `associated_stream` (and
        // nothing else with one). Its codec is the RTX codec whose apt is the track's first
        // codec, or that codec itself when there is none: audio that negotiated RED first
        // gets RED's. So video and audio (Opus) repair streams are told by the association.
        let is_rtx = info.associated_stream.is_some();
        match (&info.associated_stream, is_rtx) {
            (Some(main), true) => Arc::new(RepairStreamReader {
                inner: reader,
                main_ssrc: main.ssrc,
                shared: self.shared.clone(),
            }),
            _ => Arc::new(MainStreamReader {
                inner: reader,
                ssrc: info.ssrc,
                shared: self.shared.clone(),
            }),
        }
    }

    async fn unbind_remote_stream(&self, info: &StreamInfo) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.repaired.remove(&info.ssrc);
        shared.main_pt.remove(&info.ssrc);
        shared.wake.remove(&info.ssrc);
        shared.seen.remove(&info.ssrc);
    }

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_number_is_new_once_across_wraps_and_reordering() {
        let mut w = SeenWindow::default();
        assert!(w.insert(65_530));
        assert!(w.insert(65_532));
        // A repair of the gap, then the same again.
        assert!(w.insert(65_531));
        assert!(!w.insert(65_531));
        // Across the wrap.
        assert!(w.insert(3));
        assert!(w.insert(65_535));
        assert!(!w.insert(3));
        assert!(!w.insert(65_532));
        // Far ahead: the window moves, old slots are free again for new numbers.
        assert!(w.insert(2_000));
        assert!(w.insert(2_000 - 1_000));
        assert!(!w.insert(2_000 - 1_000));
        // Older than the window: not worth delivering.
        assert!(!w.insert(2_000 - 1_024));
    }
}
