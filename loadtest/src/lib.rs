//! Load tester (like `lk load-test`): N consultation rooms of synthetic participants against a
//! running server, measuring join and admission times, time to first media, one-way latency
//! through the SFU, loss, jitter, and the server's CPU and memory.
//!
//! The `consult-loadtest` binary wraps [`run`]; benches drive it with their own options.

pub mod api;
pub mod janus;
pub mod options;
pub mod participant;
pub mod procstat;
pub mod receive;
pub mod report;

use anyhow::Context;
use options::Options;
use participant::{Outcome, Progress, RoomShared, RunContext, Seat};
use receive::{latency_histogram, Window};
use report::{
    LabelSummary, Media, Participants, Plan, Report, Sample, Server, ServerCounters, Summary,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Run a load test to the end and report.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    options.validate().map_err(anyhow::Error::msg)?;
    let trusted_cert_pem = match &options.trusted_cert {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let api = api::Api::new(
        &options.url,
        &options.api_key,
        &options.api_secret,
        trusted_cert_pem.as_deref(),
    )?;
    let run_id = format!(
        "{:08x}",
        std::process::id() ^ (consult_client::synthetic::now_us() as u32)
    );
    let roster = options.room_roster();
    let ttl = (options.duration + options.rooms as f64 * 2.0) as u64 + 600;

    // Every token first: minting is not what we measure.
    let mut seats = Vec::new();
    let mut index = 0u32;
    for room in 0..options.rooms {
        let name = format!("load-{run_id}-{room}");
        let mut room_seats = Vec::new();
        for role in &roster {
            let identity = format!("{}-{index}", role.as_str());
            // Janus takes no token.
            let token = match options.janus_ws {
                Some(_) => String::new(),
                None => api.token(&name, &identity, *role, ttl).await?,
            };
            room_seats.push(Seat {
                room,
                role: *role,
                index,
                token,
            });
            index += 1;
        }
        seats.push(room_seats);
    }

    let pid = options
        .server_pid
        .or_else(|| procstat::find_by_name("consult-server"));
    let before = pid.and_then(procstat::read);
    let start = Instant::now();
    let ramp = Duration::from_millis(options.room_interval_ms) * options.rooms as u32;
    let window = Window {
        from: start + ramp + Duration::from_secs_f64(options.warmup),
        until: start + ramp + Duration::from_secs_f64(options.duration),
    };
    let ctx = Arc::new(RunContext {
        ws_url: options.ws_url(),
        trusted_cert_pem,
        window,
        media_end: window.until,
        receive_end: window.until + Duration::from_secs(1),
        progress: Progress::default(),
        options: options.clone(),
    });

    let sampler = tokio::spawn(sample(ctx.clone(), pid, start));
    // Janus has no counters of ours: asking the default URL could read another server's.
    let metrics_api = options.janus_ws.is_none().then_some(api);
    let window_probe = tokio::spawn(probe_window(metrics_api, pid, window));

    let mut rooms = Vec::new();
    for (i, room_seats) in seats.into_iter().enumerate() {
        let ctx = ctx.clone();
        let at = start + Duration::from_millis(options.room_interval_ms) * i as u32;
        rooms.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            run_room(ctx, room_seats).await
        }));
    }
    let mut outcomes = Vec::new();
    for r in rooms {
        outcomes.extend(r.await.context("room task")?);
    }
    let timeline = sampler.await.unwrap_or_default();
    let probe = window_probe.await.unwrap_or_default();
    Ok(build_report(
        &options, &roster, outcomes, timeline, before, probe, pid,
    ))
}

/// Participants of one room in order: each starts once the one before it publishes, so the
/// later ones measure how fast media already flowing reaches them.
async fn run_room(ctx: Arc<RunContext>, seats: Vec<Seat>) -> Vec<Outcome> {
    let room = Arc::new(RoomShared::default());
    let mut handles = Vec::new();
    let mut previous_role = None;
    let mut waiting_for: Vec<oneshot::Receiver<()>> = Vec::new();
    for seat in seats {
        // Everyone of the same role starts together; the next role after they publish.
        if previous_role != Some(seat.role) {
            for w in waiting_for.drain(..) {
                let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
            }
        }
        previous_role = Some(seat.role);
        let (tx, rx) = oneshot::channel();
        waiting_for.push(rx);
        handles.push(tokio::spawn(participant::run(
            ctx.clone(),
            room.clone(),
            seat,
            tx,
        )));
    }
    let mut out = Vec::new();
    for h in handles {
        if let Ok(o) = h.await {
            out.push(o);
        }
    }
    out
}

/// One sample a second: progress on the terminal and the report's timeline.
async fn sample(ctx: Arc<RunContext>, pid: Option<u32>, start: Instant) -> Vec<Sample> {
    let mut timeline = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), 0u64, pid.and_then(procstat::read));
    let p = &ctx.progress;
    while Instant::now() < ctx.receive_end {
        tick.tick().await;
        let now = Instant::now();
        let packets = p.packets_received.load(Ordering::Relaxed);
        let reading = pid.and_then(procstat::read);
        let secs = (now - last.0).as_secs_f64().max(1e-3);
        let cpu = match (&last.2, &reading) {
            (Some(a), Some(b)) => Some(procstat::cpu_between(a, b, secs).0),
            _ => None,
        };
        let s = Sample {
            t_s: (now - start).as_secs_f64(),
            admitted: p.admitted.load(Ordering::Relaxed),
            packets_received_per_s: (packets - last.1) as f64 / secs,
            server_cpu_pct: cpu,
            server_rss_mib: reading.as_ref().map(|r| r.rss_bytes as f64 / 1048576.0),
        };
        if !ctx.options.quiet {
            eprintln!(
                "[{:>5.1} s] joined {} admitted {} failed {} | streams {} | {:>7.0} packets/s received | server CPU {} % RSS {} MiB",
                s.t_s,
                p.joined.load(Ordering::Relaxed),
                s.admitted,
                p.failed.load(Ordering::Relaxed),
                p.tracks_received.load(Ordering::Relaxed),
                s.packets_received_per_s,
                s.server_cpu_pct.map(|c| format!("{c:.0}")).unwrap_or_else(|| "?".into()),
                s.server_rss_mib.map(|c| format!("{c:.0}")).unwrap_or_else(|| "?".into()),
            );
        }
        timeline.push(s);
        last = (now, packets, reading);
    }
    timeline
}

/// The server at both ends of the measuring window.
#[derive(Default)]
struct WindowProbe {
    /// This process's CPU ticks at both ends.
    own: Option<(u64, u64)>,
    udp: Option<(procstat::UdpDrops, procstat::UdpDrops)>,
    /// When the window was probed (start, end).
    times: Option<(Instant, Instant)>,
    at_start: Option<procstat::ProcReading>,
    at_end: Option<procstat::ProcReading>,
    metrics_start: Option<api::Metrics>,
    metrics_end: Option<api::Metrics>,
}

async fn probe_window(api: Option<api::Api>, pid: Option<u32>, window: Window) -> WindowProbe {
    let mut p = WindowProbe::default();
    tokio::time::sleep_until(window.from.into()).await;
    if let Some(api) = &api {
        p.metrics_start = api.metrics().await.ok();
    }
    let t0 = Instant::now();
    p.at_start = pid.and_then(procstat::read);
    let own_start = procstat::own_cpu_ticks();
    let udp_start = procstat::udp_drops();
    tokio::time::sleep_until(window.until.into()).await;
    p.udp = udp_start.zip(procstat::udp_drops());
    p.at_end = pid.and_then(procstat::read);
    p.times = Some((t0, Instant::now()));
    p.own = own_start.zip(procstat::own_cpu_ticks());
    if let Some(api) = &api {
        p.metrics_end = api.metrics().await.ok();
    }
    p
}

type Breakdown = std::collections::BTreeMap<String, (LabelSummary, hdrhistogram::Histogram<u64>)>;

fn add_to(b: &mut Breakdown, key: &str, r: &receive::TrackStats) {
    let (l, h) = b
        .entry(key.to_owned())
        .or_insert_with(|| (LabelSummary::default(), latency_histogram()));
    l.streams += 1;
    l.packets_received += r.received;
    l.window_received += r.window_received();
    l.window_lost += r.window_lost();
    for (sum, n) in l.layer_packets.iter_mut().zip(r.layer_packets) {
        *sum += n;
    }
    l.layer_switches += r.layer_switches();
    let _ = h.add(&r.latency_us);
}

fn build_report(
    options: &Options,
    roster: &[consult_protocol::Role],
    outcomes: Vec<Outcome>,
    timeline: Vec<Sample>,
    before: Option<procstat::ProcReading>,
    probe: WindowProbe,
    pid: Option<u32>,
) -> Report {
    let forwarded_streams = options.forwarded_streams_per_room() * options.rooms;
    let participants = Participants {
        planned: roster.len() * options.rooms,
        joined: outcomes.iter().filter(|o| o.join_ms.is_some()).count(),
        admitted: outcomes.iter().filter(|o| o.admit_ms.is_some()).count(),
        failed: outcomes.iter().filter(|o| o.error.is_some()).count(),
        errors: outcomes
            .iter()
            .filter_map(|o| o.error.clone())
            .take(20)
            .collect(),
    };

    let mut media = Media {
        streams_expected: forwarded_streams,
        ..Media::default()
    };
    let mut latency = latency_histogram();
    let mut by_label: Breakdown = Default::default();
    let mut by_receiver: Breakdown = Default::default();
    let mut by_receiver_label: Breakdown = Default::default();
    let mut jitters = Vec::new();
    for o in &outcomes {
        media.tracks_published += o.sent.len();
        media.packets_sent += o.sent.iter().map(|s| s.1).sum::<u64>();
        for r in &o.received {
            media.streams_received += 1;
            media.packets_received += r.received;
            media.corrupt += r.corrupt;
            media.duplicates += r.duplicates();
            media.window_received += r.window_received();
            media.window_lost += r.window_lost();
            let _ = latency.add(&r.latency_us);
            jitters.push(r.jitter_ms());
            add_to(&mut by_label, r.label.as_str(), r);
            add_to(&mut by_receiver, o.role.as_str(), r);
            let key = format!("{}<-{}", o.role.as_str(), r.label.as_str());
            add_to(&mut by_receiver_label, &key, r);
        }
    }
    let pct = |lost: u64, got: u64| {
        if lost + got == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / (lost + got) as f64
        }
    };
    media.loss_pct = pct(media.window_lost, media.window_received);
    media.latency_ms = Summary::from_us(&latency);
    media.jitter_ms_mean = if jitters.is_empty() {
        0.0
    } else {
        jitters.iter().sum::<f64>() / jitters.len() as f64
    };
    media.jitter_ms_max = jitters.iter().copied().fold(0.0, f64::max);
    let finish = |b: Breakdown| {
        b.into_iter()
            .map(|(k, (mut l, h))| {
                l.loss_pct = pct(l.window_lost, l.window_received);
                l.latency_ms = Summary::from_us(&h);
                (k, l)
            })
            .collect()
    };
    media.by_label = finish(by_label);
    media.by_receiver = finish(by_receiver);
    media.by_receiver_label = finish(by_receiver_label);

    let mut server = Server {
        pid,
        rss_mib_before: before.as_ref().map(|r| r.rss_bytes as f64 / 1048576.0),
        rss_mib_max: timeline
            .iter()
            .filter_map(|s| s.server_rss_mib)
            .reduce(f64::max),
        cpu_pct_max: timeline
            .iter()
            .filter_map(|s| s.server_cpu_pct)
            .reduce(f64::max),
        ..Server::default()
    };
    let window_secs = probe
        .times
        .map(|(t0, t1)| (t1 - t0).as_secs_f64())
        .unwrap_or(options.duration - options.warmup)
        .max(1e-3);
    if let (Some(a), Some(b)) = (&probe.at_start, &probe.at_end) {
        let (cpu, threads) = procstat::cpu_between(a, b, window_secs);
        server.cpu_pct = Some(cpu);
        server.threads_over_10pct = Some(threads.iter().filter(|t| t.1 > 10.0).count());
        server.busiest_thread = threads.into_iter().next();
        if let (Some(r0), true) = (&before, forwarded_streams > 0) {
            let rss = (a.rss_bytes.max(b.rss_bytes)) as f64 - r0.rss_bytes as f64;
            server.rss_kib_per_forwarded_stream = Some(rss / 1024.0 / forwarded_streams as f64);
        }
    }
    if let (Some(m0), Some(m1)) = (&probe.metrics_start, &probe.metrics_end) {
        let d = |n: &str| m1.delta(m0, n);
        let c = ServerCounters {
            datagrams_in: d("consult_sfu_datagrams_in_total"),
            datagrams_dropped: d("consult_sfu_datagrams_dropped_total"),
            send_failures: d("consult_sfu_send_failures_total"),
            datagrams_handed_over: d("consult_sfu_datagrams_handed_over_total"),
            rtp_in: d("consult_sfu_rtp_in_total"),
            rtp_forwarded: d("consult_sfu_rtp_forwarded_total"),
            packets_out: d("consult_sfu_packets_out_total"),
            nacks_received: d("consult_sfu_nacks_received_total"),
            nacks_sent: d("consult_sfu_nacks_sent_total"),
            plis_received: d("consult_sfu_plis_received_total"),
            keyframe_requests_sent: d("consult_sfu_keyframe_requests_sent_total"),
        };
        if c.rtp_forwarded > 0.0 {
            server.forwarded_pps = Some(c.rtp_forwarded / window_secs);
            if let Some(cpu) = server.cpu_pct {
                let cpu_secs = cpu / 100.0 * window_secs;
                server.cpu_us_per_forwarded_packet = Some(cpu_secs * 1e6 / c.rtp_forwarded);
            }
        }
        let q = |x: f64| {
            m1.histogram_quantile(m0, "consult_sfu_forward_delay_seconds", x)
                .map(|s| s * 1e6)
        };
        server.forward_delay_us_p50 = q(0.5);
        server.forward_delay_us_p99 = q(0.99);
        server.counters = Some(c);
    }

    let plan = Plan {
        rooms: options.rooms,
        roster: roster.iter().map(|r| r.as_str().to_owned()).collect(),
        tracks_per_role: roster
            .iter()
            .map(|r| {
                (
                    r.as_str().to_owned(),
                    options
                        .tracks_of(*r)
                        .iter()
                        .map(|l| l.as_str().to_owned())
                        .collect(),
                )
            })
            .collect(),
        forwarded_streams,
        duration_s: options.duration,
        warmup_s: options.warmup,
        impaired: options.impair.map(|f| {
            format!(
                "{f:?}: {} kbit/s, queue {} ms, delay {} ms, jitter {} ms, loss {} %",
                options.impair_rate_kbps,
                options.impair_queue_ms,
                options.impair_delay_ms,
                options.impair_jitter_ms,
                options.impair_loss_pct
            )
        }),
    };
    server.window_s = Some(window_secs);
    if let (Some(cpu), true) = (server.cpu_pct, media.window_received > 0) {
        let received = media.window_received as f64;
        server.cpu_us_per_received_packet = Some(cpu / 100.0 * window_secs * 1e6 / received);
        if server.counters.is_none() {
            // A server without our counters (Janus): what the receivers got in the window is
            // what it forwarded, but for the loss.
            server.forwarded_pps = Some(received / window_secs);
            server.cpu_us_per_forwarded_packet = server.cpu_us_per_received_packet;
        }
    }
    let loadtest_cpu_pct = probe.own.map(|(a, b)| {
        b.saturating_sub(a) as f64 / procstat::clock_ticks_per_sec() / window_secs * 100.0
    });
    if let Some((a, b)) = probe.udp {
        server.udp_receive_buffer_drops = Some(b.receive_buffer.saturating_sub(a.receive_buffer));
        server.udp_send_buffer_drops = Some(b.send_buffer.saturating_sub(a.send_buffer));
    }
    Report {
        loadtest_cpu_pct,
        label: options.label.clone(),
        unix_ms: consult_client::synthetic::now_us() / 1000,
        url: options.url.clone(),
        machine: report::Machine::this(),
        plan,
        participants,
        join_ms: Summary::from_ms(outcomes.iter().filter_map(|o| o.join_ms)),
        admit_ms: Summary::from_ms(outcomes.iter().filter_map(|o| o.admit_ms)),
        first_media_ms: Summary::from_ms(outcomes.iter().filter_map(|o| o.first_media_ms)),
        connect_to_media_ms: Summary::from_ms(
            outcomes.iter().filter_map(|o| o.connect_to_media_ms),
        ),
        media,
        server,
        timeline,
    }
}
