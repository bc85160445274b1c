// The WebSocket to the server drops in the middle of a consultation (a thin or flapping rural
// link): the page joins again with its token, is admitted again at once (the server keeps an
// admitted participant's place for two minutes), publishes again, and media flows both ways.
// Run by tests/run.sh, inside a network namespace that has only a loopback interface.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import {
  ARTIFACTS,
  basicAuth,
  createConsultation,
  inbound,
  launchChromium,
  openPage,
  startServer,
  waitFor,
  waitStats,
} from "./harness.mjs";

const API = basicAuth("devkey", "dev-secret-change-me");

let server;
let browser;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer(["--insecure-http", "--http-bind", "127.0.0.1:0", "--udp-bind", "127.0.0.1:0"]);
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.stop();
});

const framesFrom = (s, label) => Math.max(0, ...inbound(s, label).map((i) => i.framesDecoded || 0));

test("a dropped or stalled WebSocket: the patient's page joins again and media flows again", { timeout: 180000 }, async () => {
  const links = await createConsultation(server.baseUrl, API);
  const doc = await openPage(browser, links.physician, "physician");
  await doc.click("#join");
  await doc.waitForSelector("body[data-state=admitted]");
  const patient = await openPage(browser, links.patient, "patient");
  await patient.click("#join");
  await patient.waitForSelector("body[data-state=waiting]");
  const patientId = await patient.evaluate(() => window.consult.client.participantId);
  await doc.click(`#waiting-list li[data-participant="${patientId}"] button[data-action=admit]`);
  await patient.waitForSelector("body[data-state=admitted]");
  await waitStats(doc, "physician receives the patient", (s) => framesFrom(s, "camera") > 10);
  await waitStats(patient, "patient receives the physician", (s) => framesFrom(s, "camera") > 10);

  // The connection drops (closed under the page, as a dead link would end it).
  const droppedAt = Date.now();
  await patient.evaluate(() => window.consult.client.ws.close());
  await patient.waitForSelector("body[data-reconnecting]", { timeout: 5000 });
  await patient.waitForSelector("body[data-state=admitted]:not([data-reconnecting])", { timeout: 20000 });
  const backAt = Date.now();
  const newId = await patient.evaluate(() => window.consult.client.participantId);
  assert.notEqual(newId, patientId, "a new session");
  // Admitted again without the physician's click, and media both ways on the new session.
  await waitStats(patient, "patient receives the physician again", (s) => framesFrom(s, "camera") > 10, 20000);
  await waitFor(async () => {
    const s = await doc.evaluate(() => window.consult.client.rtpStats());
    return s.inbound.some((i) => i.participant_id === newId && i.label === "camera" && i.framesDecoded > 10);
  }, 20000);
  const doneAt = Date.now();
  console.log(`rejoined ${backAt - droppedAt} ms after the drop; video both ways after ${doneAt - droppedAt} ms`);
  assert.equal(await patient.evaluate(() => window.consult.client.state), "admitted");
  assert.equal(await doc.locator(`#waiting-list li[data-participant="${newId}"]`).count(), 0, "not in the waiting room");

  // A connection that stalls without closing (nothing more heard from the server, as on a
  // saturated link): given up after 30 s of silence, and joined again.
  const stalledAt = Date.now();
  await patient.evaluate(() => {
    window.consult.client.ws.onmessage = () => {};
  });
  await patient.waitForSelector("body[data-reconnecting]", { timeout: 45000 });
  const gaveUpMs = Date.now() - stalledAt;
  await patient.waitForSelector("body[data-state=admitted]:not([data-reconnecting])", { timeout: 20000 });
  const third = await patient.evaluate(() => window.consult.client.participantId);
  assert.notEqual(third, newId, "a new session after the stall");
  await waitStats(patient, "patient receives the physician after the stall", (s) => framesFrom(s, "camera") > 10, 20000);
  console.log(`stalled connection given up after ${gaveUpMs} ms`);
  assert.ok(gaveUpMs >= 29000, `not before 30 s of silence (${gaveUpMs} ms)`);

  // A reload (the token is out of the address bar by now) comes back to the device check.
  assert.ok(!patient.url().includes("token="));
  await patient.reload();
  await patient.waitForSelector("#screen-check:not([hidden])", { timeout: 10000 });
  await Promise.all([doc, patient].map((p) => p.context().close()));
});
