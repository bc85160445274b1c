//! The report of a run: JSON for benches, a table for people.

use crate::receive::latency_histogram;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Percentiles of a set of values (milliseconds unless the name says otherwise).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub n: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// From a histogram of microseconds, in milliseconds.
    pub fn from_us(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            n: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    /// From values in milliseconds.
    pub fn from_ms(values: impl IntoIterator<Item = f64>) -> Summary {
        let mut h = latency_histogram();
        for v in values {
            let _ = h.record((v * 1000.0).max(1.0) as u64);
        }
        Summary::from_us(&h)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Participants {
    pub planned: usize,
    pub joined: usize,
    pub admitted: usize,
    pub failed: usize,
    /// The first errors met (at most 20).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LabelSummary {
    pub streams: usize,
    pub packets_received: u64,
    pub window_received: u64,
    pub window_lost: u64,
    pub loss_pct: f64,
    pub latency_ms: Summary,
    /// Packets received per simulcast layer (lowest first; a plain track counts as layer 0),
    /// and layer switches seen.
    pub layer_packets: [u64; 4],
    pub layer_switches: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Media {
    pub tracks_published: usize,
    pub packets_sent: u64,
    /// Streams each participant should receive (every other participant's tracks), summed.
    pub streams_expected: usize,
    pub streams_received: usize,
    pub packets_received: u64,
    pub corrupt: u64,
    pub duplicates: u64,
    /// Distinct packets received within the measuring window, and the gaps between them.
    pub window_received: u64,
    pub window_lost: u64,
    pub loss_pct: f64,
    /// One-way delay sender → SFU → receiver (same clock), within the window.
    pub latency_ms: Summary,
    pub jitter_ms_mean: f64,
    pub jitter_ms_max: f64,
    /// By track label of the sender (stethoscope, microphone, otoscope, camera, screen).
    pub by_label: BTreeMap<String, LabelSummary>,
    /// By role of the receiver (e.g. the physician behind an impaired link).
    pub by_receiver: BTreeMap<String, LabelSummary>,
    /// By receiver and label, keyed `physician<-stethoscope`.
    pub by_receiver_label: BTreeMap<String, LabelSummary>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerCounters {
    pub datagrams_in: f64,
    pub datagrams_dropped: f64,
    pub send_failures: f64,
    /// Datagrams one SFU shard read for another's room.
    pub datagrams_handed_over: f64,
    pub rtp_in: f64,
    pub rtp_forwarded: f64,
    pub packets_out: f64,
    pub nacks_received: f64,
    pub nacks_sent: f64,
    pub plis_received: f64,
    pub keyframe_requests_sent: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    pub pid: Option<u32>,
    /// Whole process, percent of one core, over the measuring window.
    pub cpu_pct: Option<f64>,
    /// Highest one-second sample.
    pub cpu_pct_max: Option<f64>,
    /// The busiest thread over the window: name and percent of one core.
    pub busiest_thread: Option<(String, f64)>,
    /// Threads that used more than 10 % of a core over the window.
    pub threads_over_10pct: Option<usize>,
    pub rss_mib_before: Option<f64>,
    pub rss_mib_max: Option<f64>,
    /// (RSS in the window − RSS before the run) / forwarded streams.
    pub rss_kib_per_forwarded_stream: Option<f64>,
    /// Counters from `/metrics` over the window.
    pub counters: Option<ServerCounters>,
    pub forwarded_pps: Option<f64>,
    /// Server CPU time / (packets forwarded) over the window, µs.
    pub cpu_us_per_forwarded_packet: Option<f64>,
    /// Server CPU time / (packets the subscribers received) over the window, µs: the same
    /// measure for a server without our counters (Janus), and for ours when nothing is lost.
    pub cpu_us_per_received_packet: Option<f64>,
    /// The measuring window, seconds.
    pub window_s: Option<f64>,
    /// Time from a datagram's read to the send of each forwarded copy inside the SFU, from its
    /// histogram (bucket upper bounds), µs.
    pub forward_delay_us_p50: Option<f64>,
    pub forward_delay_us_p99: Option<f64>,
    /// Machine-wide, over the window (`/proc/net/snmp`): datagrams dropped by the kernel for a
    /// full socket receive buffer (the SFU's or the load tester's), and refused sends.
    pub udp_receive_buffer_drops: Option<u64>,
    pub udp_send_buffer_drops: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub admitted: u64,
    pub packets_received_per_s: f64,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub rooms: usize,
    pub roster: Vec<String>,
    pub tracks_per_role: BTreeMap<String, Vec<String>>,
    pub forwarded_streams: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub impaired: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub label: String,
    pub unix_ms: u64,
    pub url: String,
    pub machine: Machine,
    pub plan: Plan,
    pub participants: Participants,
    pub join_ms: Summary,
    pub admit_ms: Summary,
    pub first_media_ms: Summary,
    pub connect_to_media_ms: Summary,
    pub media: Media,
    pub server: Server,
    /// The load tester's own CPU over the window, percent of one core: near the machine's
    /// core count, the load generator (not the server) is the limit.
    pub loadtest_cpu_pct: Option<f64>,
    pub timeline: Vec<Sample>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn row(out: &mut String, name: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "  {name:<28} n={:<6} p50 {:>8.2}  p95 {:>8.2}  p99 {:>8.2}  max {:>8.2}",
        s.n, s.p50, s.p95, s.p99, s.max
    );
}

impl Report {
    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let p = &self.participants;
        let _ = writeln!(
            s,
            "consult-loadtest {}: {} rooms × {} participants, {} forwarded streams, {:.0} s",
            self.label,
            self.plan.rooms,
            self.plan.roster.len(),
            self.plan.forwarded_streams,
            self.plan.duration_s
        );
        let _ = writeln!(
            s,
            "participants: {} planned, {} joined, {} admitted, {} failed",
            p.planned, p.joined, p.admitted, p.failed
        );
        for e in p.errors.iter().take(5) {
            let _ = writeln!(s, "  error: {e}");
        }
        let _ = writeln!(s, "times (ms):");
        row(&mut s, "connect → joined", &self.join_ms);
        row(&mut s, "joined → admitted", &self.admit_ms);
        row(&mut s, "admitted → first media", &self.first_media_ms);
        row(&mut s, "connect → first media", &self.connect_to_media_ms);
        let m = &self.media;
        let _ = writeln!(
            s,
            "media: {} tracks published, {} packets sent; {}/{} streams received, {} packets",
            m.tracks_published,
            m.packets_sent,
            m.streams_received,
            m.streams_expected,
            m.packets_received
        );
        let _ = writeln!(
            s,
            "  window: {} received, {} lost ({:.3} %), {} duplicates, {} corrupt; jitter mean {:.2} ms, max {:.2} ms",
            m.window_received, m.window_lost, m.loss_pct, m.duplicates, m.corrupt, m.jitter_ms_mean, m.jitter_ms_max
        );
        row(&mut s, "one-way latency (ms)", &m.latency_ms);
        for (label, l) in &m.by_label {
            let layers = if l.layer_packets[1..].iter().any(|n| *n > 0) {
                let total = l.layer_packets.iter().sum::<u64>().max(1) as f64;
                let shares: Vec<String> = l.layer_packets[..3]
                    .iter()
                    .map(|n| format!("{:.0}", *n as f64 * 100.0 / total))
                    .collect();
                format!(
                    ", layers q/h/f {} %, {} switches",
                    shares.join("/"),
                    l.layer_switches
                )
            } else {
                String::new()
            };
            row(
                &mut s,
                &format!(
                    "  {label} ({} streams, {:.2} % lost{layers})",
                    l.streams, l.loss_pct
                ),
                &l.latency_ms,
            );
        }
        for (role, l) in &m.by_receiver {
            row(
                &mut s,
                &format!(
                    "  to {role} ({} streams, {:.2} % lost)",
                    l.streams, l.loss_pct
                ),
                &l.latency_ms,
            );
        }
        let v = &self.server;
        let _ = writeln!(
            s,
            "server (pid {}): CPU {} % of a core (max 1 s {} %), busiest thread {}, {} threads > 10 %",
            v.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            opt(v.cpu_pct, 1),
            opt(v.cpu_pct_max, 1),
            v.busiest_thread
                .as_ref()
                .map(|(n, p)| format!("{n} {p:.1} %"))
                .unwrap_or_else(|| "–".into()),
            v.threads_over_10pct
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
        );
        let _ = writeln!(
            s,
            "  RSS {} MiB before, {} MiB max, {} KiB per forwarded stream",
            opt(v.rss_mib_before, 1),
            opt(v.rss_mib_max, 1),
            opt(v.rss_kib_per_forwarded_stream, 0)
        );
        let _ = writeln!(
            s,
            "  {} packets/s forwarded, {} µs CPU per forwarded packet, in-SFU forward delay p50 ≤ {} µs, p99 ≤ {} µs",
            opt(v.forwarded_pps, 0),
            opt(v.cpu_us_per_forwarded_packet, 2),
            opt(v.forward_delay_us_p50, 0),
            opt(v.forward_delay_us_p99, 0)
        );
        let _ = writeln!(
            s,
            "  kernel UDP drops in the window (whole machine): {} receive buffer full, {} send buffer full",
            v.udp_receive_buffer_drops
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
            v.udp_send_buffer_drops
                .map(|n| n.to_string())
                .unwrap_or_else(|| "–".into()),
        );
        let _ = writeln!(
            s,
            "load tester CPU {} % of a core ({} cores here)",
            opt(self.loadtest_cpu_pct, 1),
            self.machine.cpus
        );
        if let Some(c) = &v.counters {
            let _ = writeln!(
                s,
                "  window counters: rtp in {}, forwarded {}, datagrams dropped {}, send failures {}, handed between shards {}, NACKs in {} out {}, PLIs in {}, keyframe requests out {}",
                c.rtp_in, c.rtp_forwarded, c.datagrams_dropped, c.send_failures, c.datagrams_handed_over, c.nacks_received, c.nacks_sent, c.plis_received, c.keyframe_requests_sent
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_table() {
        let s = Summary::from_ms([1.0, 2.0, 3.0, 4.0, 100.0]);
        assert_eq!(s.n, 5);
        assert!((s.p50 - 3.0).abs() < 0.01);
        assert!((s.max - 100.0).abs() < 0.1);
        let r = Report {
            join_ms: s,
            ..Report::default()
        };
        let t = r.table();
        assert!(t.contains("connect → joined"));
        assert!(t.contains("n=5"));
    }
}
