//! Sends the receiver reports of one tick as one RTCP packet.
//!
//! webrtc-rs 0.17's receiver-report interceptor writes one `ReceiverReport` per received stream
//! at each tick, and each write is a datagram of its own (SRTCP and IP/UDP headers included,
//! ~74 bytes for a 24-byte report block). Our peers report four times a second (the SFU reads
//! the round-trip time from them), so a cart receiving four tracks spent ~9.5 kbit/s of a
//! 100 kbit/s uplink — the one that carries its stethoscope — on them. A report packet can
//! carry 31 blocks: this interceptor holds the reports of a tick for [`GATHER`] and sends them
//! as one packet (~4.7 kbit/s for the same four tracks).
//!
//! Blocks about repair (RTX) streams are left out: the SFU reads loss and round-trip time
//! from the main streams' blocks, and a repaired packet already counts as received there.
//!
//! Register it *before* the receiver-report interceptor: interceptors registered first wrap
//! the writer that later ones write to.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use webrtc::rtcp::packet::Packet;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::reception_report::ReceptionReport;

/// How long the reports of one tick are gathered: the interceptor writes them back to back,
/// and a 2 ms older report does not change what the sender reads from it.
pub const GATHER: Duration = Duration::from_millis(2);
/// Report blocks one RTCP receiver report can carry (5-bit count).
pub const MAX_BLOCKS: usize = 31;

/// Reports gathered and not sent yet, sans-I/O.
#[derive(Debug, Default)]
pub struct ReportGather {
    sender_ssrc: Option<u32>,
    blocks: Vec<ReceptionReport>,
}

impl ReportGather {
    /// Take a report's blocks; true if it is the first since the last [`ReportGather::take`]
    /// (the caller then schedules one).
    pub fn add(&mut self, rr: &ReceiverReport, is_repair: impl Fn(u32) -> bool) -> bool {
        let first = self.sender_ssrc.is_none() && self.blocks.is_empty();
        self.sender_ssrc.get_or_insert(rr.ssrc);
        self.blocks
            .extend(rr.reports.iter().filter(|b| !is_repair(b.ssrc)).cloned());
        first
    }

    /// Everything gathered, as few receiver reports as the block limit allows.
    pub fn take(&mut self) -> Vec<ReceiverReport> {
        let ssrc = self.sender_ssrc.take().unwrap_or(0);
        let blocks = std::mem::take(&mut self.blocks);
        if blocks.is_empty() {
            // A report without blocks (nothing received yet) still says we are here.
            return vec![ReceiverReport {
                ssrc,
                ..Default::default()
            }];
        }
        blocks
            .chunks(MAX_BLOCKS)
            .map(|c| ReceiverReport {
                ssrc,
                reports: c.to_vec(),
                ..Default::default()
            })
            .collect()
    }
}

#[derive(Default)]
pub struct RrMergeBuilder;

impl InterceptorBuilder for RrMergeBuilder {
    fn build(
        &self,
        _id: &str,
    ) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(RrMerge::default()))
    }
}

#[derive(Default)]
pub struct RrMerge {
    /// SSRCs of the repair (RTX) streams received.
    repair: Arc<Mutex<HashSet<u32>>>,
}

struct MergingWriter {
    inner: Arc<dyn RTCPWriter + Send + Sync>,
    gather: Arc<Mutex<ReportGather>>,
    repair: Arc<Mutex<HashSet<u32>>>,
}

fn lock(m: &Mutex<ReportGather>) -> std::sync::MutexGuard<'_, ReportGather> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl RTCPWriter for MergingWriter {
    async fn write(
        &self,
        pkts: &[Box<dyn Packet + Send + Sync>],
        attributes: &Attributes,
    ) -> Result<usize, webrtc::interceptor::Error> {
        // Only a write of receiver reports alone is held back; anything else (NACKs, TWCC,
        // keyframe requests, sender reports) goes out as it comes.
        let reports: Vec<&ReceiverReport> = pkts
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<ReceiverReport>())
            .collect();
        if reports.is_empty() || reports.len() != pkts.len() {
            return self.inner.write(pkts, attributes).await;
        }
        let first = {
            let repair = self.repair.lock().unwrap_or_else(|p| p.into_inner());
            let mut g = lock(&self.gather);
            reports.iter().fold(false, |first, rr| {
                g.add(rr, |ssrc| repair.contains(&ssrc)) | first
            })
        };
        if first {
            let (inner, gather) = (self.inner.clone(), self.gather.clone());
            tokio::spawn(async move {
                tokio::time::sleep(GATHER).await;
                let merged = lock(&gather).take();
                let pkts: Vec<Box<dyn Packet + Send + Sync>> = merged
                    .into_iter()
                    .map(|rr| Box::new(rr) as Box<dyn Packet + Send + Sync>)
                    .collect();
                // A closed connection refuses the write: nothing to report to any more.
                let _ = inner.write(&pkts, &Attributes::new()).await;
            });
        }
        Ok(0)
    }
}

#[async_trait::async_trait]
impl Interceptor for RrMerge {
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
        Arc::new(MergingWriter {
            inner: writer,
            gather: Arc::default(),
            repair: self.repair.clone(),
        })
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
        // webrtc-rs gives a repair stream its main stream as `associated_stream` (see `rtx`).
        if info.associated_stream.is_some() {
            let mut repair = self.repair.lock().unwrap_or_else(|p| p.into_inner());
            repair.insert(info.ssrc);
        }
        reader
    }

    async fn unbind_remote_stream(&self, info: &StreamInfo) {
        let mut repair = self.repair.lock().unwrap_or_else(|p| p.into_inner());
        repair.remove(&info.ssrc);
    }

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(ssrc: u32, sources: &[u32]) -> ReceiverReport {
        ReceiverReport {
            ssrc,
            reports: sources
                .iter()
                .map(|s| ReceptionReport {
                    ssrc: *s,
                    fraction_lost: 5,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn none(_: u32) -> bool {
        false
    }

    #[test]
    fn the_reports_of_a_tick_become_one_packet() {
        let mut g = ReportGather::default();
        assert!(g.add(&rr(1, &[10]), none));
        assert!(!g.add(&rr(1, &[11]), none));
        // Repair streams' blocks are left out.
        assert!(!g.add(&rr(1, &[12, 77, 13]), |s| s == 77));
        let out = g.take();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ssrc, 1);
        let sources: Vec<u32> = out[0].reports.iter().map(|r| r.ssrc).collect();
        assert_eq!(sources, vec![10, 11, 12, 13]);
        assert!(out[0].reports.iter().all(|r| r.fraction_lost == 5));
        // And the next tick starts afresh.
        assert!(g.add(&rr(1, &[10]), none));
        assert_eq!(g.take()[0].reports.len(), 1);
    }

    #[test]
    fn more_than_31_blocks_take_more_packets_and_each_one_marshals() {
        let mut g = ReportGather::default();
        let sources: Vec<u32> = (0..40).collect();
        for s in &sources {
            g.add(&rr(9, &[*s]), none);
        }
        let out = g.take();
        assert_eq!(
            out.iter().map(|r| r.reports.len()).collect::<Vec<_>>(),
            vec![31, 9]
        );
        for r in &out {
            use webrtc::util::Marshal;
            assert!(r.marshal().is_ok());
        }
        // A report without blocks is passed on as one.
        assert!(g.add(&rr(3, &[]), none));
        let empty = g.take();
        assert_eq!((empty.len(), empty[0].ssrc), (1, 3));
        assert!(empty[0].reports.is_empty());
    }
}
