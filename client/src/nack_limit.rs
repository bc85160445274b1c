//! Spaces the NACKs for one packet by about a round trip, and gives up after a few tries, as
//! browsers do (libwebrtc: 10 retries).
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
/// A packet asked for is asked again only once a round trip has passed (the request to the
/// SFU and its retransmission back), so the generator's fast ticks (`peer::NACK_INTERVAL`)
/// do not ask for a copy already on its way: the SFU sends each one asked for. The round
/// trip is measured as first request → repaired packet (see [`NackBudget::received`]).
pub const RETRY_BEFORE_MEASURED: Duration = Duration::from_millis(200);
/// Bounds of the spacing between two requests for the same packet.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(1000);
/// A packet not asked for this long is forgotten (received, or out of the generator's window).
const FORGET_AFTER: Duration = Duration::from_secs(3);

/// Requests made per (media SSRC, sequence number), sans-I/O.
#[derive(Debug, Default)]
pub struct NackBudget {
    asked: HashMap<(u32, u16), Asked>,
    last_prune: Option<Instant>,
    /// Smoothed request → retransmission time (as TCP's SRTT, gain 1/8).
    srtt: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Asked {
    /// First request (it always goes out).
    first: Instant,
    /// Last time the generator asked (sent or not).
    last: Instant,
    /// Last time a request went out.
    sent: Instant,
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
        let retry = self.retry_after();
        seqs.iter()
            .copied()
            .filter(|seq| {
                let a = self.asked.entry((ssrc, *seq)).or_insert(Asked {
                    first: now,
                    last: now,
                    sent: now,
                    tries: 0,
                });
                a.last = now;
                if a.tries >= MAX_TRIES || now.saturating_duration_since(a.first) > MAX_AGE {
                    return false;
                }
                if a.tries > 0 && now.saturating_duration_since(a.sent) < retry {
                    return false;
                }
                a.tries += 1;
                a.sent = now;
                true
            })
            .collect()
    }

    /// A packet of `ssrc` arrived (first copy or retransmission): no more requests for it,
    /// and the time since it was first asked for is a round-trip sample. When it was asked
    /// for more than once that may be more than one round trip (a lost request or copy):
    /// the spacing errs long, never short, so a spacing shorter than the round trip (every
    /// loss asked for twice) still corrects itself.
    pub fn received(&mut self, now: Instant, ssrc: u32, seq: u16) {
        if self.asked.is_empty() {
            return;
        }
        let Some(a) = self.asked.remove(&(ssrc, seq)) else {
            return;
        };
        let sample = now.saturating_duration_since(a.first);
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    /// How long after a request the same packet may be asked for again: the measured round
    /// trip with a quarter's margin.
    pub fn retry_after(&self) -> Duration {
        match self.srtt {
            None => RETRY_BEFORE_MEASURED,
            Some(s) => (s + s / 4).clamp(RETRY_MIN, RETRY_MAX),
        }
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

/// Tells the budget of each packet read (repaired ones included: `rtx` sits below).
struct ArrivalReader {
    inner: Arc<dyn RTPReader + Send + Sync>,
    budget: Arc<Mutex<NackBudget>>,
}

#[async_trait::async_trait]
impl RTPReader for ArrivalReader {
    async fn read(
        &self,
        buf: &mut [u8],
        attributes: &Attributes,
    ) -> Result<(webrtc::rtp::packet::Packet, Attributes), webrtc::interceptor::Error> {
        let (pkt, attr) = self.inner.read(buf, attributes).await?;
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        budget.received(Instant::now(), pkt.header.ssrc, pkt.header.sequence_number);
        Ok((pkt, attr))
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
        Arc::new(ArrivalReader {
            inner: reader,
            budget: self.budget.clone(),
        })
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
        let every_retry = |i: u64| t + RETRY_BEFORE_MEASURED * i as u32;
        for i in 0..10 {
            assert_eq!(b.filter(every_retry(i), 7, &[100, 101]), vec![100, 101]);
        }
        // The generator keeps asking while the stream is stopped: nothing goes out.
        for i in 10..100 {
            assert!(b.filter(every_retry(i), 7, &[100, 101]).is_empty());
        }
        // Another stream, or a new loss, has its own budget.
        assert_eq!(b.filter(every_retry(100), 8, &[100]), vec![100]);
        assert_eq!(b.filter(every_retry(100), 7, &[102]), vec![102]);
    }

    #[test]
    fn fast_ticks_ask_at_once_then_once_a_round_trip() {
        let t = Instant::now();
        let mut b = NackBudget::default();
        let tick = |i: u32| t + Duration::from_millis(20) * i;
        let sent: Vec<u32> = (0..25)
            .filter(|i| !b.filter(tick(*i), 3, &[9]).is_empty())
            .collect();
        // 20 ms ticks over 480 ms: at once, then every RETRY_BEFORE_MEASURED.
        assert_eq!(sent, vec![0, 10, 20]);
        // A loss noticed later is asked for at its first tick.
        assert_eq!(b.filter(tick(25), 3, &[9, 10]), vec![10]);
    }

    #[test]
    fn repeats_are_spaced_by_the_measured_round_trip() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut b = NackBudget::default();
        // Asked once, repaired 300 ms later: a sample.
        b.filter(ms(0), 1, &[10]);
        b.received(ms(300), 1, 10);
        assert_eq!(b.retry_after(), Duration::from_millis(375));
        // Asked twice: the sample runs from the first request (700 ms here); and the packet
        // is forgotten.
        b.filter(ms(1000), 1, &[11]);
        b.filter(ms(1400), 1, &[11]);
        b.received(ms(1700), 1, 11);
        // (300 × 7 + 700) / 8 = 350, × 1.25
        assert_eq!(b.retry_after(), Duration::from_micros(437_500));
        assert_eq!(b.tracked(), 0);
        // A repeat waits for the round trip.
        b.filter(ms(2000), 1, &[12]);
        assert!(b.filter(ms(2430), 1, &[12]).is_empty());
        assert_eq!(b.filter(ms(2440), 1, &[12]), vec![12]);
        // Samples are smoothed; the spacing has a floor.
        for i in 0..40 {
            b.filter(ms(3000 + i * 10), 2, &[i as u16]);
            b.received(ms(3000 + i * 10 + 1), 2, i as u16);
        }
        assert_eq!(b.retry_after(), RETRY_MIN);
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
