// The physician's Chromium behind a 100 kbit/s rural link (tc tbf on a veth pair into a network
// namespace of its own, both ways), the cart (companion page: stethoscope, microphone, camera,
// otoscope) and the patient on a good link, the server with its default options. Figures from the
// physician's getStats; JSON time series and full-page screenshots in test-artifacts/.
// Run by rural/run.sh (root: it creates and removes the namespace).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  ARTIFACTS,
  basicAuth,
  createConsultation,
  inbound,
  launchChromium,
  openPage,
  startServer,
  waitStats,
} from "../tests/harness.mjs";
import { byLabel, samples, startSampling, summarize } from "./reception.mjs";
import { ShapedLink } from "./shaped-link.mjs";

// The server's self-signed certificate (HTTPS: the server refuses plain HTTP off loopback).
process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
const SECRET = randomBytes(24).toString("hex");
const API = basicAuth("devkey", SECRET);
const HTTPS = { ignoreHTTPSErrors: true };
// How long the link stays at 100 kbit/s (longer runs: CONSULT_RURAL_SECONDS=60).
const THIN_SECONDS = Number(process.env.CONSULT_RURAL_SECONDS || 30);

const link = new ShapedLink(0);
let server;
let local;
let remote;
let capture;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  link.up(2000);
  // For diagnosis: CONSULT_RURAL_CAPTURE=file.pcap records the physician's side of the link.
  if (process.env.CONSULT_RURAL_CAPTURE) {
    capture = spawn("ip", ["netns", "exec", link.ns, "tcpdump", "-q", "-s", "96", "-i", link.peerDev, "-w", process.env.CONSULT_RURAL_CAPTURE], { stdio: "ignore" });
  }
  // The server's default options (downlink estimation on).
  server = await startServer(["--http-bind", `${link.hostIp}:0`, "--udp-bind", `${link.hostIp}:0`], { apiSecret: SECRET });
  local = await launchChromium();
  remote = await launchChromium(link.chromiumWrapper());
});

after(async () => {
  for (const b of [local, remote]) if (b) await b.close().catch(() => {});
  if (server) server.stop();
  if (capture) capture.kill();
  link.down();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The cart (nurse with stethoscope and otoscope) and the patient join and wait. */
async function cartAndPatient(links) {
  const cart = await openPage(local, links.companion, "companion", HTTPS);
  await cart.check("#use-stethoscope");
  await cart.check("#use-otoscope");
  await cart.click("#join");
  await cart.waitForSelector("body[data-state=waiting]");
  const patient = await openPage(local, links.patient, "patient", HTTPS);
  await patient.click("#join");
  await patient.waitForSelector("body[data-state=waiting]");
  const ids = {
    cart: await cart.evaluate(() => window.consult.client.participantId),
    patient: await patient.evaluate(() => window.consult.client.participantId),
  };
  return { cart, patient, ids };
}

/** The physician admits the cart (then the patient); resolves with the click's time. */
async function admit(doc, ids) {
  await doc.waitForSelector(`#waiting-list li[data-participant="${ids.cart}"] button[data-action=admit]`, { timeout: 30000 });
  const clicked = Date.now();
  await doc.click(`#waiting-list li[data-participant="${ids.cart}"] button[data-action=admit]`);
  await doc.click(`#waiting-list li[data-participant="${ids.patient}"] button[data-action=admit]`, { timeout: 30000 });
  return clicked;
}

/** The physician's subscriber connection in /metrics: loss toward it, estimate, RTT. */
async function physicianLink(baseUrl, participant) {
  const res = await fetch(`${baseUrl}/metrics`, { headers: { authorization: API } });
  const text = await res.text();
  const out = {};
  for (const line of text.split("\n")) {
    if (!line.includes(`participant="${participant}"`) || !line.includes('connection="subscriber"')) continue;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (line.startsWith("consult_peer_loss_fraction") && line.includes('direction="to_client"')) out.loss_to_client = value;
    else if (line.startsWith("consult_peer_estimate_bps")) out.estimate_bps = value;
    else if (line.startsWith("consult_peer_rtt_ms")) out.rtt_ms = value;
  }
  return out;
}

function report(name, data) {
  writeFileSync(join(ARTIFACTS, `rural-link-${name}.json`), JSON.stringify(data, null, 1));
}

function logTable(title, summary) {
  console.log(`# ${title}`);
  for (const r of Object.values(summary)) console.log(JSON.stringify(r));
}

/**
 * Two sets of bounds. The clinical targets of issue 18 (stethoscope concealed ≤ 2 %, no gap
 * over 200 ms, delay p95 ≤ 400 ms, speech ≤ 5 %, top layer back within 10 s, first
 * stethoscope audio within 3 s) are not all met yet: they are always measured and reported,
 * and asserted with CONSULT_RURAL_TARGETS=1. The guard bounds are asserted in every run (CI):
 * what the engine achieves in every run so far with margin for this shared machine, so that
 * the thin-link path breaking (audio that stops, padding crowding it out, video that never
 * comes back) turns the run red. The physician's session still dies in about one run in
 * eight (it rejoins within ~9 s, a third of the window concealed): tolerated by the guard,
 * reported, and asserted against with the targets.
 */
const STRICT = process.env.CONSULT_RURAL_TARGETS === "1";
const BOUNDS = STRICT
  ? { stethPct: 2, gapMs: 200, delayMs: 400, speechPct: 5, topBackMs: 10000, firstStethMs: 3000, startStethPct: 2 }
  : { stethPct: 50, gapMs: 12000, delayMs: 1500, speechPct: 80, topBackMs: 30000, firstStethMs: 15000, startStethPct: 25 };

/** Clinical bounds at the physician over a settled window. */
function assertAudioBounds(summary, what) {
  const steth = byLabel(summary, "stethoscope");
  assert.ok(steth, `${what}: stethoscope received`);
  assert.equal(steth.pausedPct, 0, `${what}: the stethoscope is never paused`);
  assert.ok(steth.concealedPct <= BOUNDS.stethPct, `${what}: stethoscope concealed ${steth.concealedPct} % (≤ ${BOUNDS.stethPct} %)`);
  assert.ok(steth.longestGapMs <= BOUNDS.gapMs, `${what}: stethoscope gap ${steth.longestGapMs} ms (≤ ${BOUNDS.gapMs} ms)`);
  assert.ok(steth.delayP95Ms !== null && steth.delayP95Ms <= BOUNDS.delayMs, `${what}: stethoscope delay p95 ${steth.delayP95Ms} ms (≤ ${BOUNDS.delayMs} ms)`);
  // Speech while forwarded (the server may pause the lowest-ranked, saying so).
  for (const r of Object.values(summary).filter((r) => r.label === "microphone" && r.concealedPct < 100)) {
    assert.ok(r.concealedPct <= BOUNDS.speechPct, `${what}: speech concealed ${r.concealedPct} % (≤ ${BOUNDS.speechPct} %)`);
  }
}

test("the link drops from 2 Mbit/s to 100 kbit/s and back: audio stays clean, video returns", { timeout: 240000 }, async () => {
  link.setRate(2000);
  link.setLoss(0);
  const links = await createConsultation(server.baseUrl, API);
  const doc = await openPage(remote, links.physician, "physician", HTTPS);
  await doc.click("#join");
  await doc.waitForSelector("body[data-state=admitted]");
  const { cart, patient, ids } = await cartAndPatient(links);
  await admit(doc, ids);
  await startSampling(doc);
  link.startQueueSampling();

  const first = await waitStats(doc, "physician receives the cart", (s) =>
    ["camera", "otoscope"].every((l) => inbound(s, l).some((i) => i.framesDecoded > 0)) &&
    ["microphone", "stethoscope"].every((l) => inbound(s, l).some((i) => i.bytesReceived > 0)),
  );
  await sleep(8000);
  // The camera layer forwarded on the good link (its frames' width).
  const good = await doc.evaluate(() => window.consult.client.rtpStats());
  const topWidth = Math.max(...inbound(good, "camera").map((i) => i.frameWidth || 0));
  const dropAt = Date.now();
  link.setRate(100);
  // What the server's /metrics say of the physician's link meanwhile (loss toward it, from
  // its feedback; the estimate): sampled every second.
  const physicianId = await doc.evaluate(() => window.consult.client.participantId);
  const serverView = [];
  const watch = setInterval(() => {
    physicianLink(server.baseUrl, physicianId)
      .then((m) => serverView.push({ t: Date.now() - dropAt, ...m }))
      .catch(() => {});
  }, 1000);
  await sleep(THIN_SECONDS * 1000);
  clearInterval(watch);
  const lossSeen = serverView.map((m) => m.loss_to_client).filter((v) => v !== undefined);
  console.log(`server's view of the physician's downlink (loss to client, max over the thin period): ${lossSeen.length ? Math.max(...lossSeen) : "none"}; ${JSON.stringify(serverView.slice(0, 8))}`);
  await doc.screenshot({ path: join(ARTIFACTS, "rural-link-physician-thin.png"), fullPage: true });
  const banner = await doc.evaluate(() => ({
    shown: !document.getElementById("bandwidth-banner").hidden,
    text: document.getElementById("bandwidth-text").textContent,
    speechPaused: document.body.dataset.speechPaused,
    reconnections: window.consult.reconnections || 0,
  }));
  console.log(`physician's banner at 100 kbit/s: ${JSON.stringify(banner)}`);
  const docSent = (await doc.evaluate(() => window.consult.client.rtpStats())).outbound.map(({ kind, mid, rid, codec, packetsSent }) => ({ kind, mid, rid, codec, packetsSent }));
  console.log(`physician sends at 100 kbit/s: ${JSON.stringify(docSent)}`);
  const docLog = await doc.evaluate(() => (window.consult.client.log || []).map((e) => ({ ...e, t: e.t - window.consult.client.log[0].t })));
  console.log(`physician's client log: ${JSON.stringify(docLog)}`);
  const dropped = await doc.evaluate(() => window.consult.droppedLogs || []);
  for (const d of dropped) console.log(`physician's dropped connection: ${JSON.stringify({ closedWith: d.closedWith, sinceDropMs: d.closedWith && d.closedWith.at - dropAt, log: d.log.map((e) => ({ ...e, t: e.t - dropAt })) })}`);
  const closed = await doc.evaluate(() => window.consult.client.closedWith || null);
  if (closed) console.log(`physician's WebSocket closed: ${JSON.stringify({ ...closed, sinceDropMs: closed.at - dropAt })}`);
  // What the cart was told to encode its audio at, and what it sends (packets per second).
  const sent = async () => (await cart.evaluate(() => window.consult.client.rtpStats())).outbound.filter((o) => o.kind === "audio");
  const s0 = await sent();
  await sleep(2000);
  const s1 = await sent();
  const cartAudio = await cart.evaluate(() => window.consult.client.published.filter((p) => p.track.kind === "audio").map((p) => ({ mid: p.mid, label: p.label, ptime: p.ptime || null, maxBitrate: p.sender.getParameters().encodings[0].maxBitrate || null })));
  for (const a of cartAudio) {
    const b = s0.find((o) => o.mid === a.mid);
    const e = s1.find((o) => o.mid === a.mid);
    a.packetsPerSecond = b && e ? (e.packetsSent - b.packetsSent) / 2 : null;
    a.kbps = b && e ? (8 * (e.bytesSent - b.bytesSent)) / 2000 : null;
  }
  console.log(`cart audio at 100 kbit/s: ${JSON.stringify(cartAudio)}`);
  const thinEnd = Date.now();
  link.setRate(2000);
  const backAt = Date.now();
  // The camera's top layer is back within 10 s: frames decoded again, at the width before.
  let topBackMs = null;
  const deadline = backAt + BOUNDS.topBackMs + 5000;
  const framesAt = (s) => Math.max(...inbound(s, "camera").map((i) => i.framesDecoded || 0));
  const thin = await doc.evaluate(() => window.consult.client.rtpStats());
  while (Date.now() < deadline) {
    const s = await doc.evaluate(() => window.consult.client.rtpStats());
    if (framesAt(s) > framesAt(thin) + 10 && inbound(s, "camera").some((i) => i.frameWidth >= topWidth)) {
      topBackMs = Date.now() - backAt;
      break;
    }
    await sleep(250);
  }
  const all = await samples(doc);
  const queue = link.stopQueueSampling();
  const settled = summarize(all, dropAt + 2000, thinEnd, queue);
  const before = summarize(all, dropAt - 6000, dropAt, queue);
  logTable("at 2 Mbit/s", before);
  logTable(`at 100 kbit/s, ${THIN_SECONDS} s from 2 s after the drop`, settled);
  console.log(`camera top layer (${topWidth} px) back after ${topBackMs} ms`);
  report("drop", { banner, cartAudio, topWidth, topBackMs, dropAt, thinEnd, backAt, before, settled, serverView, samples: all, queue });
  await doc.screenshot({ path: join(ARTIFACTS, "rural-link-physician-recovered.png"), fullPage: true });
  await Promise.all([cart, patient, doc].map((p) => p.context().close()));

  assertAudioBounds(settled, "at 100 kbit/s");
  // The server says what is true: the loss toward the physician during the drop shows.
  assert.ok(lossSeen.some((v) => v > 0.05), `loss toward the physician seen in /metrics: ${JSON.stringify(lossSeen)}`);
  if (STRICT) assert.equal(banner.reconnections, 0, "the physician's session survives the drop");
  assert.ok(topBackMs !== null && topBackMs <= BOUNDS.topBackMs, `top camera layer back after ${topBackMs} ms (≤ ${BOUNDS.topBackMs} ms)`);
});

test("starting at 100 kbit/s: the cart admitted and its stethoscope heard within 3 s of the click", { timeout: 180000 }, async () => {
  link.setRate(100);
  link.setLoss(0);
  const links = await createConsultation(server.baseUrl, API);
  const doc = await openPage(remote, links.physician, "physician", HTTPS);
  await doc.click("#join", { timeout: 60000 });
  await doc.waitForSelector("body[data-state=admitted]", { timeout: 60000 });
  const { cart, patient, ids } = await cartAndPatient(links);
  const clicked = await admit(doc, ids);
  await cart.waitForSelector("body[data-state=admitted]", { timeout: 30000 });
  const cartAdmittedMs = Date.now() - clicked;
  await startSampling(doc);
  link.startQueueSampling();
  let firstStethMs = null;
  const deadline = clicked + 60000;
  while (Date.now() < deadline) {
    const s = await doc.evaluate(() => window.consult.client.rtpStats());
    if (inbound(s, "stethoscope").some((i) => i.bytesReceived > 0)) {
      firstStethMs = Date.now() - clicked;
      break;
    }
    await sleep(100);
  }
  await sleep(20000);
  const all = await samples(doc);
  const queue = link.stopQueueSampling();
  const settled = summarize(all, clicked + 10000, Date.now(), queue);
  logTable("starting at 100 kbit/s, from 10 s after the click", settled);
  console.log(`cart admitted ${cartAdmittedMs} ms after the click; first stethoscope audio at the physician after ${firstStethMs} ms`);
  report("start", { cartAdmittedMs, firstStethMs, settled, samples: all, queue });
  await doc.screenshot({ path: join(ARTIFACTS, "rural-link-physician-start.png"), fullPage: true });
  await Promise.all([cart, patient, doc].map((p) => p.context().close()));
  assert.ok(firstStethMs !== null && firstStethMs <= BOUNDS.firstStethMs, `first stethoscope audio after ${firstStethMs} ms (≤ ${BOUNDS.firstStethMs} ms)`);
  const steth = byLabel(settled, "stethoscope");
  assert.ok(steth && steth.pausedPct === 0, "starting at 100 kbit/s: the stethoscope is never paused");
  assert.ok(steth.concealedPct <= BOUNDS.startStethPct, `starting at 100 kbit/s: stethoscope concealed ${steth.concealedPct} % (≤ ${BOUNDS.startStethPct} %)`);
});
