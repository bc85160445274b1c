// End-to-end test of the consult room in Debian's Chromium (fake camera and microphone):
// physician, companion (cart) and patient pages against a real server. Run by tests/run.sh,
// inside a network namespace that has only a loopback interface.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import {
  ARTIFACTS,
  basicAuth,
  createConsultation as create,
  inbound,
  launchChromium,
  openPage as open,
  startServer,
  stats,
  waitFor,
  waitStats,
} from "./harness.mjs";

const API = basicAuth("devkey", "dev-secret-change-me");

let server;
let baseUrl;
let browser;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer(["--insecure-http", "--http-bind", "127.0.0.1:0", "--udp-bind", "127.0.0.1:0"]);
  baseUrl = server.baseUrl;
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.stop();
});

const createConsultation = () => create(baseUrl, API);
const openPage = (url, name) => open(browser, url, name);

test("waiting room, admission, media both ways, stethoscope settings and a still", { timeout: 180000 }, async () => {
  const links = await createConsultation();

  const doc = await openPage(links.physician, "physician");
  await doc.click("#join");
  await doc.waitForSelector("body[data-state=admitted]");

  const cart = await openPage(links.companion, "companion");
  await cart.check("#use-stethoscope");
  await cart.check("#use-otoscope");
  await cart.click("#join");
  await cart.waitForSelector("body[data-state=waiting]");
  assert.match(await cart.textContent("#waiting-text"), /attente/);

  const patient = await openPage(links.patient, "patient");
  await patient.click("#join");
  await patient.waitForSelector("body[data-state=waiting]");

  const cartId = await cart.evaluate(() => window.consult.client.participantId);
  const patientId = await patient.evaluate(() => window.consult.client.participantId);
  await doc.waitForSelector(`#waiting-list li[data-participant="${cartId}"]`);
  await doc.waitForSelector(`#waiting-list li[data-participant="${patientId}"]`);
  await doc.screenshot({ path: join(ARTIFACTS, "physician-waiting-room.png") });

  // The physician refuses the patient link and admits the nurse's cart.
  await doc.click(`#waiting-list li[data-participant="${patientId}"] button[data-action=refuse]`);
  await patient.waitForSelector("body[data-state=refused]");
  await doc.click(`#waiting-list li[data-participant="${cartId}"] button[data-action=admit]`);
  await cart.waitForSelector("body[data-state=admitted]");

  // The physician decodes the cart's camera and otoscope and hears its microphone and stethoscope.
  const first = await waitStats(doc, "physician receives the cart", (s) =>
    ["camera", "otoscope"].every((l) => inbound(s, l).some((i) => i.framesDecoded > 0)) &&
    ["microphone", "stethoscope"].every((l) => inbound(s, l).some((i) => i.bytesReceived > 0)),
  );
  await waitStats(doc, "physician's audio keeps flowing", (s) =>
    ["microphone", "stethoscope"].every((l) => {
      const before = inbound(first, l)[0].bytesReceived;
      return inbound(s, l).some((i) => i.bytesReceived > before + 1000);
    }),
  );
  // And the cart sees and hears the physician.
  const cartFirst = await waitStats(cart, "cart receives the physician", (s) =>
    inbound(s, "camera").some((i) => i.framesDecoded > 0) && inbound(s, "microphone").some((i) => i.bytesReceived > 0),
  );
  await waitStats(cart, "cart's audio keeps flowing", (s) =>
    inbound(s, "microphone").some((i) => i.bytesReceived > inbound(cartFirst, "microphone")[0].bytesReceived + 1000),
  );

  // The cart's camera goes out as simulcast layers; the physician is forwarded the best one,
  // and the layers nobody receives are paused on the SFU's hint.
  const camMid = await cart.evaluate(() => window.consult.client.published.find((p) => p.label === "camera").mid);
  const layersSent = await waitStats(cart, "cart sends camera layers", (s) =>
    s.outbound.filter((o) => o.mid === camMid && o.rid && o.framesEncoded > 0).length >= 2,
  );
  const sentLayers = layersSent.outbound.filter((o) => o.mid === camMid && o.rid);
  const topWidth = Math.max(...sentLayers.map((o) => o.frameWidth || 0));
  console.log(`camera layers sent: ${JSON.stringify(sentLayers.map((o) => [o.rid, o.frameWidth]))}`);
  await waitStats(doc, "physician gets the top camera layer", (s) =>
    // (at least as wide as the top layer now: Chromium may scale it down under CPU load)
    inbound(s, "camera").some((i) => i.frameWidth >= topWidth && i.framesDecoded > 0),
  );
  const encodings = await waitFor(async () => {
    const e = await cart.evaluate((mid) => {
      const p = window.consult.client.published.find((x) => x.mid === mid);
      return p.sender.getParameters().encodings.map((x) => [x.rid, x.active]);
    }, camMid);
    return e.every(([rid, active]) => active === (rid === "f")) ? e : null;
  }, 20000);
  console.log(`camera encodings after the SFU's hints: ${JSON.stringify(encodings)}`);

  // The stethoscope is captured raw and sent as fullband Opus without DTX.
  const steth = await cart.evaluate(() => {
    const c = window.consult;
    const settings = c.localTracks.stethoscope.getSettings();
    const p = c.client.published.find((x) => x.label === "stethoscope");
    const section = c.client.publisher.remoteDescription.sdp.split("\r\nm=").find((s) => s.includes(`a=mid:${p.mid}\r\n`));
    return { settings, section };
  });
  assert.equal(steth.settings.echoCancellation, false);
  assert.equal(steth.settings.noiseSuppression, false);
  assert.equal(steth.settings.autoGainControl, false);
  assert.match(steth.section, /usedtx=0/);
  assert.match(steth.section, /maxaveragebitrate=128000/);
  assert.match(steth.section, /stereo=0/);

  // The refused patient got no media at all.
  const patientMedia = await patient.evaluate(async () => {
    const c = window.consult.client;
    return { tiles: document.querySelectorAll(".tile.remote").length, subscribed: c.subscribed.size, published: c.published.length };
  });
  assert.deepEqual(patientMedia, { tiles: 0, subscribed: 0, published: 0 });

  // A still from the otoscope, taken on the cart, reaches the physician's gallery intact, even
  // though the link drops during its upload: the queue retries and resumes.
  let dropped = 0;
  await cart.route("**/api/stills/uploads/**", (route) => {
    if (route.request().method() === "PUT" && dropped === 0) {
      dropped += 1;
      return route.abort("connectionreset");
    }
    return route.continue();
  });
  await cart.click("button[data-still=otoscope]");
  await cart.waitForFunction(() => /essai|retry/i.test(document.getElementById("upload-status").textContent), null, { timeout: 15000 });
  const stillId = await cart.waitForFunction(() => document.getElementById("upload-status").dataset.lastStill, null, { timeout: 30000 });
  const id = await stillId.jsonValue();
  assert.equal(dropped, 1, "the upload was cut once");
  const fig = await doc.waitForSelector(`#gallery figure[data-still-id="${id}"][data-loaded-bytes]`, { timeout: 30000 });
  const shown = await fig.evaluate((f) => ({ size: Number(f.dataset.size), loaded: Number(f.dataset.loadedBytes), sha256: f.dataset.sha256 }));
  assert.equal(shown.loaded, shown.size);
  // With the API secret the room is named in the query.
  const room = await doc.evaluate(() => window.consult.client.claims.room);
  const bytes = Buffer.from(await (await fetch(`${baseUrl}/api/stills/${id}?room=${room}`, { headers: { authorization: API } })).arrayBuffer());
  assert.equal(bytes.length, shown.size);
  assert.equal(createHash("sha256").update(bytes).digest("hex"), shown.sha256);
  const dims = await doc.evaluate((sid) => {
    const img = document.querySelector(`#gallery figure[data-still-id="${sid}"] img`);
    return img.decode().then(() => ({ w: img.naturalWidth, h: img.naturalHeight }));
  }, id);
  const track = await cart.evaluate(() => window.consult.localTracks.otoscope.getSettings());
  assert.ok(dims.w >= track.width && dims.h >= track.height, `still ${dims.w}x${dims.h} vs track ${track.width}x${track.height}`);

  // Far-end control: the physician freezes the cart's otoscope; the cart holds the frame.
  await doc.click(`.tile.remote[data-label=otoscope] button[data-control=freeze]`);
  await cart.waitForSelector("body[data-last-control='freeze:otoscope']");
  await doc.click(`.tile.remote[data-label=otoscope] button[data-control=unfreeze]`);
  await cart.waitForSelector("body[data-last-control='unfreeze:otoscope']");
  // The physician asks the cart for a full-resolution still: it reaches the gallery.
  const stillsBefore = await doc.$$eval("#gallery figure", (f) => f.length);
  await doc.click(`.tile.remote[data-label=otoscope] button[data-control=capture]`);
  await cart.waitForSelector("body[data-last-control='capture:otoscope']");
  await doc.waitForFunction((n) => document.querySelectorAll("#gallery figure[data-loaded-bytes]").length > n, stillsBefore, { timeout: 30000 });

  // The physician pins the cart's camera: accepted by the server (no error shown).
  // (a DOM click: the button may sit outside the small test viewport)
  await doc.$eval(`.tile.remote[data-label=camera] button[data-pin]`, (b) => b.click());
  await doc.waitForSelector(`.tile.remote[data-label=camera][data-pinned=true]`);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(await doc.$eval("#problem", (p) => p.textContent), "");

  // A `bandwidth` notice as the server sends it when the physician's link is short: the banner
  // says video is paused and the paused tile is dimmed; the next notice clears both.
  const camId = await doc.$eval(`.tile.remote[data-label=camera]`, (t) => t.dataset.trackId);
  await doc.evaluate((id) => window.consult.client.handle({
    type: "bandwidth", audio_only: true, low_link: true, estimate_kbps: 80, paused_track_ids: [id],
  }), camId);
  await doc.waitForSelector("#bandwidth-banner:not([hidden])");
  assert.match(await doc.$eval("#bandwidth-text", (e) => e.textContent), /vidéo suspendue/);
  assert.ok(await doc.$eval(`.tile.remote[data-label=camera]`, (t) => t.classList.contains("paused")));
  assert.ok(!(await doc.$eval(`.tile.remote[data-label=otoscope]`, (t) => t.classList.contains("paused"))));
  await doc.evaluate(() => window.consult.client.handle({
    type: "bandwidth", audio_only: false, low_link: false, estimate_kbps: 1500, paused_track_ids: [],
  }));
  await doc.waitForSelector("#bandwidth-banner", { state: "hidden" });
  assert.equal(await doc.evaluate(() => document.body.dataset.bandwidth), "ok");

  // An ICE restart of both of the cart's connections (as after a network change): the media
  // keeps flowing both ways, without leaving the room.
  const beforeRestart = await stats(doc);
  const cartBeforeRestart = await stats(cart);
  await cart.evaluate(() => window.consult.client.restartIce());
  await waitStats(doc, "stethoscope flows after the ICE restart", (s) =>
    inbound(s, "stethoscope").some((i) => i.bytesReceived > inbound(beforeRestart, "stethoscope")[0].bytesReceived + 5000),
  );
  await waitStats(cart, "the physician's voice flows after the ICE restart", (s) =>
    inbound(s, "microphone").some((i) => i.bytesReceived > inbound(cartBeforeRestart, "microphone")[0].bytesReceived + 5000),
  );
  assert.equal(await cart.evaluate(() => window.consult.client.iceRestarts), 1);
  assert.equal(await cart.evaluate(() => document.body.dataset.state), "admitted");

  // Recording the stethoscope: the cart is asked, nothing runs until it consents, and its
  // withdrawal stops it.
  await doc.click(`.tile.remote[data-label=stethoscope] button[data-record]`);
  await cart.waitForSelector("#recording-accept:not([hidden])");
  // (the physician's copy of the same message may land a moment after the cart's)
  await doc.waitForSelector("body[data-recording=pending]", { timeout: 5000 });
  await cart.click("#recording-accept");
  await doc.waitForSelector("body[data-recording=recording]");
  await cart.waitForSelector("#recording-withdraw:not([hidden])");
  await new Promise((r) => setTimeout(r, 2000));
  await cart.click("#recording-withdraw");
  await doc.waitForSelector("body[data-recording=stopped]");
  const recAudit = await waitFor(async () => {
    const rows = await (await fetch(`${baseUrl}/api/audit?room=${encodeURIComponent(await doc.evaluate(() => window.consult.client.claims.room))}`, { headers: { authorization: API } })).json();
    return rows.find((r) => r.action === "recording_file") ? rows : null;
  });
  const recActions = recAudit.map((r) => r.action).filter((a) => a.startsWith("recording"));
  assert.deepEqual(recActions, ["recording_requested", "recording_consent", "recording_started", "recording_consent", "recording_stopped", "recording_file"]);
  const recFile = recAudit.find((r) => r.action === "recording_file").detail;
  assert.ok(recFile.stats.seconds > 1.5, `recorded ${recFile.stats.seconds} s`);

  await doc.screenshot({ path: join(ARTIFACTS, "physician.png") });
  await cart.screenshot({ path: join(ARTIFACTS, "companion.png") });
  await patient.screenshot({ path: join(ARTIFACTS, "patient-refused.png") });

  // Everything above ran under the server's content security policy, and the join token left
  // the address bar once read (a reload still joins: the tab keeps it).
  for (const p of [doc, cart, patient]) {
    assert.deepEqual(p.cspViolations, [], "nothing refused by the content security policy");
    assert.ok(!p.url().includes("token="), `token out of the address bar: ${p.url()}`);
  }
  const headers = (await fetch(links.physician)).headers;
  assert.match(headers.get("content-security-policy"), /frame-ancestors 'none'/);
  assert.equal(headers.get("referrer-policy"), "no-referrer");

  // Ending the consultation reaches the cart.
  await doc.click("#end");
  await cart.waitForSelector("body[data-state=ended]");
});
