//! Gives up NACKing a packet after a few tries, as browsers do (libwebrtc: 10 retries).
//!
//! webrtc-rs 0.17's NACK generator asks again for every missing packet of its window every
//! 100 ms, with no retry limit: when a stream stops (the SFU pauses a video track toward a
//! thin link), the packets missing just before the pause are asked for until it resumes. In the
//! 100 kbps scenario that was ~5,200 sequence numbers a second and 23 kbit/s of RTCP on the
//! physician's 100 kbit/s uplink, which sent no media — on a cart, that uplink carries the
//! stethoscope. This interceptor sits between the generator and the network and drops a
//! sequence number from outgoing NACKs once it has been asked for [`MAX_TRIES`] times or for
//! longer than [`MAX_AGE`].
//!
//! Register it *before* `configure_nack`: interceptors registered first wrap the writer that
//! later ones write to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use webrtc::rtcp::packet::Packet;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};

/// Times one packet may be asked for.
pub const MAX_TRIES: u8 = 10;
/// How long after the first request a packet may still be asked for (a retransmission later
/// than this misses any playout anyway).
pub const MAX_AGE: Duration = Duration::from_secs(2);
/// A packet not asked for this long is forgotten (received, or out of the generator's window).
const FORGET_AFTER: Duration = Duration::from_secs(3);

/// Requests made per (media SSRC, sequence number), sans-I/O.
#[derive(Debug, Default)]
pub struct NackBudget {
    asked: HashMap<(u32, u16), Asked>,
    last_prune: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Asked {
    first: Instant,
    last: Instant,
    tries: u8,
}

impl NackBudget {
    /// The sequence numbers of `seqs` (missing on `ssrc`) still worth asking for at `now`.
    pub fn filter(&mut self, now: Instant, ssrc: u32, seqs: &[u16]) -> Vec<u16> {
        if self
            .last_prune
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.asked
                .retain(|_, a| now.saturating_duration_since(a.last) < FORGET_AFTER);
            self.last_prune = Some(now);
        }
        seqs.iter()
            .copied()
            .filter(|seq| {
                let a = self.asked.entry((ssrc, *seq)).or_insert(Asked {
                    first: now,
                    last: now,
                    tries: 0,
                });
                a.last = now;
                if a.tries >= MAX_TRIES || now.saturating_duration_since(a.first) > MAX_AGE {
                    return false;
                }
                a.tries += 1;
                true
            })
            .collect()
    }

    /// Packets being tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.asked.len()
    }
}

#[derive(Default)]
pub struct NackLimitBuilder;

impl InterceptorBuilder for NackLimitBuilder {
    fn build(
        &self,
        _id: &str,
    ) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(NackLimit::default()))
    }
}

#[derive(Default)]
pub struct NackLimit {
    budget: Arc<Mutex<NackBudget>>,
}

struct LimitedWriter {
    inner: Arc<dyn RTCPWriter + Send + Sync>,
    budget: Arc<Mutex<NackBudget>>,
}

#[async_trait::async_trait]
impl RTCPWriter for LimitedWriter {
    async fn write(
        &self,
        pkts: &[Box<dyn Packet + Send + Sync>],
        attributes: &Attributes,
    ) -> Result<usize, webrtc::interceptor::Error> {
        let has_nack = pkts
            .iter()
            .any(|p| p.as_any().downcast_ref::<TransportLayerNack>().is_some());
        if !has_nack {
            return self.inner.write(pkts, attributes).await;
        }
        let now = Instant::now();
        let mut out: Vec<Box<dyn Packet + Send + Sync>> = Vec::with_capacity(pkts.len());
        {
            let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
            for p in pkts {
                let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                    out.push(p.cloned());
                    continue;
                };
                let seqs: Vec<u16> = nack.nacks.iter().flat_map(|n| n.packet_list()).collect();
                let kept = budget.filter(now, nack.media_ssrc, &seqs);
                if !kept.is_empty() {
                    out.push(Box::new(TransportLayerNack {
                        sender_ssrc: nack.sender_ssrc,
                        media_ssrc: nack.media_ssrc,
                        nacks: nack_pairs_from_sequence_numbers(&kept),
                    }));
                }
            }
        }
        if out.is_empty() {
            return Ok(0);
        }
        self.inner.write(&out, attributes).await
    }
}

#[async_trait::async_trait]
impl Interceptor for NackLimit {
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
        Arc::new(LimitedWriter {
            inner: writer,
            budget: self.budget.clone(),
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
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_packet_is_asked_for_ten_times_then_given_up() {
        let t = Instant::now();
        let mut b = NackBudget::default();
        let every_100ms = |i: u64| t + Duration::from_millis(100 * i);
        for i in 0..10 {
            assert_eq!(b.filter(every_100ms(i), 7, &[100, 101]), vec![100, 101]);
        }
        // The generator keeps asking every 100 ms while the stream is stopped: nothing goes out.
        for i in 10..100 {
            assert!(b.filter(every_100ms(i), 7, &[100, 101]).is_empty());
        }
        // Another stream, or a new loss, has its own budget.
        assert_eq!(b.filter(every_100ms(100), 8, &[100]), vec![100]);
        assert_eq!(b.filter(every_100ms(100), 7, &[102]), vec![102]);
    }

    #[test]
    fn a_packet_asked_for_rarely_still_stops_after_max_age() {
        let t = Instant::now();
        let mut b = NackBudget::default();
        assert_eq!(b.filter(t, 1, &[5]), vec![5]);
        assert_eq!(b.filter(t + Duration::from_secs(1), 1, &[5]), vec![5]);
        assert!(b
            .filter(t + MAX_AGE + Duration::from_millis(1), 1, &[5])
            .is_empty());
    }

    #[test]
    fn packets_no_longer_asked_for_are_forgotten() {
        let t = Instant::now();
        let mut b = NackBudget::default();
        b.filter(t, 1, &[1, 2, 3]);
        assert_eq!(b.tracked(), 3);
        b.filter(t + FORGET_AFTER, 1, &[9]);
        assert_eq!(b.tracked(), 1);
        // Forgotten: the same number, lost again much later (after a wrap), is asked for.
        assert_eq!(b.filter(t + FORGET_AFTER * 2, 1, &[2]), vec![2]);
    }
}
