// What a browser receives, sampled from getStats inside the page, and the figures the rural-link
// tests assert: concealment, gaps, one-way delay, frame rate and size per track label.

/**
 * Start sampling the page's subscriber connection every `intervalMs` (kept in the page). The
 * series of a track runs on across a reconnection (a new client, counters from zero): its
 * counters are carried over, and while it is not received at all its audio counts as concealed
 * (what the physician hears is silence).
 */
export async function startSampling(page, intervalMs = 100) {
  await page.evaluate((interval) => {
    const samples = [];
    const last = {}; // key → latest raw counters and cumulative figures
    let lastT = Date.now();
    window.__reception = { samples };
    const COUNTERS = ["recv", "lost", "bytes", "concealed", "total", "jbDelay", "jbEmitted", "frames"];
    const take = async () => {
      const c = window.consult.client;
      const t = Date.now();
      const dt = t - lastT;
      lastT = t;
      const report = c.subscriber ? await c.subscriber.getStats() : new Map();
      const tracks = {};
      let rttMs = null;
      report.forEach((s) => {
        if (s.type === "inbound-rtp") {
          const info = c.subscribed.get(s.mid) || {};
          const label = info.label || s.kind;
          const key = `${info.participant_id || "?"}/${label}`;
          const paused = !!(c.bandwidth && (c.bandwidth.paused_track_ids || []).includes(info.track_id));
          tracks[key] = {
            label,
            kind: s.kind,
            paused,
            recv: s.packetsReceived || 0,
            lost: s.packetsLost || 0,
            bytes: s.bytesReceived || 0,
            concealed: s.concealedSamples || 0,
            total: s.totalSamplesReceived || 0,
            jbDelay: s.jitterBufferDelay || 0,
            jbEmitted: s.jitterBufferEmittedCount || 0,
            frames: s.framesDecoded || 0,
            width: s.frameWidth || 0,
            height: s.frameHeight || 0,
          };
        } else if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
          rttMs = s.currentRoundTripTime * 1000;
        }
      });
      // Cumulative counters per track: what this session's counters added since the last
      // sample (all of them in a new session: its counters start from zero).
      const session = c.participantId;
      for (const [key, r] of Object.entries(tracks)) {
        const l = last[key];
        const raw = { ...r };
        if (l) {
          for (const k of COUNTERS) r[k] = l.cum[k] + (l.session === session ? Math.max(0, raw[k] - l.raw[k]) : raw[k]);
        }
        last[key] = { session, raw, cum: { ...r } };
      }
      // A track seen before and not received now (a reconnection under way): silence.
      for (const [key, l] of Object.entries(last)) {
        if (tracks[key]) continue;
        const silent = l.cum.kind === "audio" ? Math.round(48 * dt) : 0;
        l.cum = { ...l.cum, concealed: l.cum.concealed + silent, total: l.cum.total + silent };
        tracks[key] = { ...l.cum, missing: true };
      }
      const bw = c.bandwidth || null;
      samples.push({ t, tracks, rttMs, bandwidth: bw && { audio_only: bw.audio_only, estimate_kbps: bw.estimate_kbps } });
    };
    window.__reception.timer = setInterval(() => take().catch(() => {}), interval);
  }, intervalMs);
}

export async function samples(page) {
  return page.evaluate(() => window.__reception.samples);
}

function percentile(values, p) {
  if (!values.length) return null;
  const v = [...values].sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.floor((p / 100) * v.length))];
}

/** The queueing delay (ms) of the link toward the page at `t`, from `queue` samples [[t, ms]]. */
function queueAt(queue, t) {
  let best = null;
  for (const [qt, ms] of queue) {
    if (qt > t) break;
    best = ms;
  }
  return best;
}

/**
 * Figures per track over [from, to] (ms since the epoch): for audio the share of samples
 * concealed, the longest run concealed (a gap), the one-way delay p50/p95 (the link's queue
 * when the audio entered it, from `queue` [[t, ms]], plus the receiver's jitter buffer; the
 * sending side and the SFU sit on a good link and add ~1 ms); for video the frame rate and the
 * last frame size.
 */
export function summarize(all, from, to, queue = []) {
  const window = all.filter((s) => s.t >= from && s.t <= to);
  const out = {};
  if (window.length < 2) return out;
  const keys = new Set(window.flatMap((s) => Object.keys(s.tracks)));
  for (const key of keys) {
    const series = window.filter((s) => s.tracks[key]).map((s) => ({ t: s.t, ...s.tracks[key] }));
    if (series.length < 2) continue;
    const a = series[0];
    const b = series[series.length - 1];
    const seconds = (b.t - a.t) / 1000;
    const r = { label: a.label, kind: a.kind, seconds: +seconds.toFixed(1) };
    r.lostPct = +((100 * (b.lost - a.lost)) / Math.max(1, b.recv - a.recv + b.lost - a.lost)).toFixed(2);
    r.kbps = +((8 * (b.bytes - a.bytes)) / 1000 / Math.max(0.001, seconds)).toFixed(1);
    if (a.kind === "audio") {
      // Concealment while forwarded: intervals in which the server said it paused the track
      // (a `bandwidth` notice naming it) are counted apart, as the share of time paused.
      let total = 0;
      let concealed = 0;
      let pausedMs = 0;
      for (let i = 1; i < series.length; i++) {
        if (series[i].paused || series[i - 1].paused) {
          pausedMs += series[i].t - series[i - 1].t;
          continue;
        }
        total += series[i].total - series[i - 1].total;
        concealed += series[i].concealed - series[i - 1].concealed;
      }
      r.pausedPct = +((100 * pausedMs) / Math.max(1, b.t - a.t)).toFixed(1);
      r.concealedPct = total > 0 ? +((100 * concealed) / total).toFixed(2) : 100;
      // A gap: consecutive sampling intervals (almost) all concealed, or with no output at all.
      let gap = 0;
      let longest = 0;
      for (let i = 1; i < series.length; i++) {
        if (series[i].paused) {
          gap = 0;
          continue;
        }
        const dt = series[i].t - series[i - 1].t;
        const dTotal = series[i].total - series[i - 1].total;
        const dConcealed = series[i].concealed - series[i - 1].concealed;
        const concealed = dTotal <= 0 || dConcealed >= 0.8 * dTotal;
        gap = concealed ? gap + dt : 0;
        longest = Math.max(longest, gap);
      }
      r.longestGapMs = longest;
      const delays = [];
      for (let i = 1; i < series.length; i++) {
        const emitted = series[i].jbEmitted - series[i - 1].jbEmitted;
        if (emitted <= 0) continue;
        const jbMs = (1000 * (series[i].jbDelay - series[i - 1].jbDelay)) / emitted;
        // Audio played out now entered the link's queue about a jitter buffer ago.
        const q = queueAt(queue, series[i].t - jbMs);
        if (q !== null) delays.push(Math.round(q + jbMs));
      }
      r.delayP50Ms = percentile(delays, 50);
      r.delayP95Ms = percentile(delays, 95);
    } else {
      r.fps = +((b.frames - a.frames) / Math.max(0.001, seconds)).toFixed(2);
      r.width = b.width;
      r.height = b.height;
    }
    out[key] = r;
  }
  return out;
}

/** The figures of every track with `label` (the first one when several publish it). */
export function byLabel(summary, label) {
  return Object.values(summary).find((r) => r.label === label) || null;
}
