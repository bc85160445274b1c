// Shared helpers of the browser tests: the server, Chromium, consultations and getStats polling.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const ROOT = new URL("../../", import.meta.url).pathname;
export const SERVER = process.env.CONSULT_SERVER_BIN || join(ROOT, "target/debug/consult-server");
export const ARTIFACTS = join(ROOT, "test-artifacts");

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
  "--allow-loopback-in-peer-connection",
  "--autoplay-policy=no-user-gesture-required",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * Start `consult-server` with `args` (plus its own data dir); resolves with
 * `{ baseUrl, process, dataDir, stop() }` once it prints its URL.
 */
export function startServer(args, { apiKey = "devkey", apiSecret } = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), "consult-e2e-"));
  const secretArgs = apiSecret ? ["--api-key", apiKey, "--api-secret", apiSecret] : [];
  // CONSULT_SERVER_LOG=file keeps the server's log (node --test drops a child's stderr).
  const log = process.env.CONSULT_SERVER_LOG ? openSync(process.env.CONSULT_SERVER_LOG, "a") : "inherit";
  const proc = spawn(SERVER, [...args, ...secretArgs, "--data-dir", dataDir], {
    stdio: ["ignore", "pipe", log],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
  });
  const stop = () => {
    proc.kill();
    rmSync(dataDir, { recursive: true, force: true });
  };
  return new Promise((resolve, reject) => {
    let out = "";
    proc.stdout.on("data", (d) => {
      if (typeof log === "number") writeSync(log, d);
      out += d;
      const m = out.match(/Consultation server: (https?:\/\/\S+)/);
      if (m) resolve({ baseUrl: m[1], process: proc, dataDir, stop });
    });
    proc.on("exit", (code) => reject(new Error(`server exited with ${code}`)));
    setTimeout(() => reject(new Error("server did not start")), 20000);
  });
}

/** Debian's Chromium, or `executablePath` (e.g. a wrapper that runs it in a network namespace). */
export function launchChromium(executablePath) {
  return chromium.launch({
    executablePath: executablePath || process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

export function basicAuth(key, secret) {
  return "Basic " + Buffer.from(`${key}:${secret}`).toString("base64");
}

/** A consultation with a physician, a patient and a nurse; resolves with role → join URL. */
export async function createConsultation(baseUrl, auth) {
  const r = await fetch(`${baseUrl}/api/consultations`, {
    method: "POST",
    headers: { authorization: auth, "content-type": "application/json" },
    body: JSON.stringify({
      physician: { identity: "rpps-10001", name: "Dr Martin" },
      patient: { identity: "ins-1", name: "Mme Durand" },
      companion: { identity: "ide-7", name: "Julie", companion_kind: "nurse" },
    }),
  });
  assert.equal(r.status, 200);
  const c = await r.json();
  return Object.fromEntries(c.links.map((l) => [l.role, l.url]));
}

/** Open a join link in a new context of `browser` and wait for the device check's preview. */
export async function openPage(browser, url, name, contextOptions = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...contextOptions });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  // What the page's content security policy refused (a test asserts there is nothing).
  page.cspViolations = [];
  page.on("console", (m) => {
    if (m.type() === "error") console.error(`[${name}] ${m.text()}`);
    if (m.text().includes("Content Security Policy")) page.cspViolations.push(m.text());
  });
  page.on("response", (r) => {
    if (r.status() >= 400) console.error(`[${name}] ${r.status()} ${r.url()}`);
  });
  page.on("requestfailed", (r) => console.error(`[${name}] request failed: ${r.url()} ${r.failure()?.errorText}`));
  await page.goto(url);
  try {
    await page.waitForSelector("#screen-check:not([hidden])");
  } catch (e) {
    const shown = await page.evaluate(() => ({ state: document.body.dataset, text: document.body.innerText.slice(0, 400) })).catch(() => null);
    await page.screenshot({ path: join(ARTIFACTS, `open-failed-${name}.png`) }).catch(() => {});
    throw new Error(`${name}: the device check did not show (${JSON.stringify(shown)}): ${e.message}`);
  }
  // The device check shows a live preview before joining.
  await page.waitForFunction(() => document.getElementById("preview").videoWidth > 0);
  return page;
}

export const stats = (page) => page.evaluate(() => window.consult.client.rtpStats());

/** Wait until `check(stats)` holds on `page`, polling getStats. */
export async function waitStats(page, what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await stats(page);
    if (check(last)) return last;
    await new Promise((r) => setTimeout(r, 500));
  }
  // What the page's client saw (connection states, its last notes), for diagnosis.
  const client = await page
    .evaluate(() => {
      const c = window.consult.client;
      return {
        state: c.state,
        publisher: c.publisher ? c.publisher.connectionState : null,
        subscriber: c.subscriber ? c.subscriber.connectionState : null,
        log: (c.log || []).slice(-20),
      };
    })
    .catch((e) => String(e));
  assert.fail(`${what}: not reached; last stats ${JSON.stringify(last)}; client ${JSON.stringify(client)}`);
}

/** Poll `f` until it returns something truthy. */
export async function waitFor(f, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await f();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.fail("condition not reached");
}

export function inbound(s, label) {
  return s.inbound.filter((i) => i.label === label);
}
