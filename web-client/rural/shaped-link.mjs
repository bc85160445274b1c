// A thin link for one browser: a network namespace joined to the test's own namespace by a veth
// pair, shaped both ways with `tc tbf` (and, when asked, random loss through an nftables rule).
// The server listens on the host end; a Chromium launched through `chromiumWrapper()` runs inside
// the namespace, so all of its traffic (HTTPS, WebSocket, media) crosses the shaped link.
// Needs root (CI runs as root); tests/run.sh runs the tests in a namespace of their own.

import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

function run(cmd, args) {
  return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] }).toString();
}

/** tbf's bucket: at least one full packet, else ~20 ms at the rate. */
function burstBytes(kbit) {
  return Math.max(3000, Math.round((kbit * 1000) / 8 / 50));
}

export class ShapedLink {
  /** `index` keeps several links apart (0..250). */
  constructor(index = 0) {
    this.ns = `consult-rl${index}`;
    this.hostDev = `crl${index}h`;
    this.peerDev = `crl${index}p`;
    this.hostIp = `10.200.${index}.1`;
    this.peerIp = `10.200.${index}.2`;
    this.dir = null;
    this.lossPct = 0;
  }

  /** Create the namespace and the veth pair, shaped to `kbit` both ways. */
  up(kbit) {
    this.down();
    run("ip", ["netns", "add", this.ns]);
    run("ip", ["link", "add", this.hostDev, "type", "veth", "peer", "name", this.peerDev]);
    run("ip", ["link", "set", this.peerDev, "netns", this.ns]);
    // IPv4 only: an IPv6 link-local address appearing a moment after the link comes up makes
    // Chromium abort its requests in flight (ERR_NETWORK_CHANGED).
    run("sysctl", ["-qw", `net.ipv6.conf.${this.hostDev}.disable_ipv6=1`]);
    this.inNs("sysctl", ["-qw", `net.ipv6.conf.${this.peerDev}.disable_ipv6=1`]);
    run("ip", ["addr", "add", `${this.hostIp}/30`, "dev", this.hostDev]);
    run("ip", ["link", "set", this.hostDev, "up"]);
    this.inNs("ip", ["addr", "add", `${this.peerIp}/30`, "dev", this.peerDev]);
    this.inNs("ip", ["link", "set", this.peerDev, "up"]);
    this.inNs("ip", ["link", "set", "lo", "up"]);
    this.setRate(kbit);
    this.dir = mkdtempSync(join(tmpdir(), "consult-rl-"));
  }

  inNs(cmd, args) {
    return run("ip", ["netns", "exec", this.ns, cmd, ...args]);
  }

  /** Shape both directions to `kbit`, with a queue of at most 300 ms. */
  setRate(kbit) {
    const tbf = ["root", "tbf", "rate", `${kbit}kbit`, "burst", String(burstBytes(kbit)), "latency", "300ms"];
    run("tc", ["qdisc", "replace", "dev", this.hostDev, ...tbf]);
    this.inNs("tc", ["qdisc", "replace", "dev", this.peerDev, ...tbf]);
    this.kbit = kbit;
  }

  /** Drop `pct` % of the packets each way, at random (0 removes the rule). */
  setLoss(pct) {
    try {
      this.inNs("nft", ["delete", "table", "inet", "consult_loss"]);
    } catch {
      // no table yet
    }
    this.lossPct = pct;
    if (!pct) return;
    const rules = [
      "table inet consult_loss {",
      "  chain in { type filter hook input priority 0; policy accept;",
      `    iifname "${this.peerDev}" numgen random mod 1000 < ${Math.round(pct * 10)} drop }`,
      "  chain out { type filter hook output priority 0; policy accept;",
      `    oifname "${this.peerDev}" numgen random mod 1000 < ${Math.round(pct * 10)} drop }`,
      "}",
    ].join("\n");
    const file = join(this.dir, "loss.nft");
    writeFileSync(file, rules);
    this.inNs("nft", ["-f", file]);
  }

  /** Queueing delay (ms) toward the namespace now: the host end's tbf backlog at the rate. */
  downlinkQueueMs() {
    const out = run("tc", ["-s", "qdisc", "show", "dev", this.hostDev]);
    const m = out.match(/backlog (\d+)b/);
    return m ? (Number(m[1]) * 8) / this.kbit : 0;
  }

  /** Sample `downlinkQueueMs` every `intervalMs` into `this.queue` ([[t, ms]]) until stopped. */
  startQueueSampling(intervalMs = 50) {
    this.queue = [];
    this.queueTimer = setInterval(() => {
      try {
        this.queue.push([Date.now(), this.downlinkQueueMs()]);
      } catch {
        // the link is being torn down
      }
    }, intervalMs);
  }

  stopQueueSampling() {
    clearInterval(this.queueTimer);
    return this.queue || [];
  }

  /** An executable that runs Debian's Chromium inside the namespace (for playwright). */
  chromiumWrapper() {
    const path = join(this.dir, "chromium-in-netns");
    const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
    writeFileSync(path, `#!/bin/sh\nexec ip netns exec ${this.ns} ${chromium} "$@"\n`);
    chmodSync(path, 0o755);
    return path;
  }

  down() {
    clearInterval(this.queueTimer);
    for (const [cmd, args] of [
      ["ip", ["link", "del", this.hostDev]],
      ["ip", ["netns", "del", this.ns]],
    ]) {
      try {
        run(cmd, args);
      } catch {
        // already gone
      }
    }
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = null;
  }
}
