// DOM-free client of the consultation protocol (docs/protocol.md): signaling WebSocket, the
// publisher and subscriber peer connections, and the still upload queue. The UI (app.js) only
// listens to its events and calls its methods.

export const PROTOCOL_VERSION = 1;

// Opus settings for the stethoscope m-line: fullband, mono, no DTX, high bitrate, FEC on.
const STETHOSCOPE_OPUS_FMTP =
  "minptime=10;useinbandfec=1;usedtx=0;stereo=0;sprop-stereo=0;maxplaybackrate=48000;maxaveragebitrate=128000";

// Simulcast layers of the room camera, lowest first (rids as the SFU and the Rust client use).
const CAMERA_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1500000 },
];

/** Decode a JWT's claims for display (the server verifies the token, not us). */
export function tokenClaims(token) {
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      [...atob(b64)].map((c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    return JSON.parse(json);
  } catch {
    return null;
  }
}

/** The SDP's sections (the session part, then one per m-line, each starting at its `\r\nm=`). */
function sdpSections(sdp) {
  return sdp.split(/(?=\r\nm=)/);
}

function isSectionOf(section, mid) {
  return section.includes(`\r\na=mid:${mid}\r\n`) || section.endsWith(`\r\na=mid:${mid}`);
}

/** The kind and mid of each m-section, in order ("audio:0 video:1"): whether an answer to one
 * offer fits another. */
export function mediaSections(sdp) {
  return sdpSections(sdp)
    .slice(1)
    .map((s) => `${(s.match(/^\r\nm=(\w+)/) || [])[1]}:${(s.match(/\r\na=mid:([^\r\n]*)/) || [])[1]}`)
    .join(" ");
}

/** `sdp` with the m-section of `mid` replaced by `edit(section)`. */
function editSection(sdp, mid, edit) {
  return sdpSections(sdp)
    .map((s) => (isSectionOf(s, mid) ? edit(s) : s))
    .join("");
}

/** Replace the Opus fmtp of the m-section with `mid` (per-track settings live in the SDP). */
export function setOpusFmtp(sdp, mid, fmtp) {
  return editSection(sdp, mid, (s) => {
    const pt = (s.match(/a=rtpmap:(\d+) opus\/48000/i) || [])[1];
    if (!pt) return s;
    if (s.includes(`a=fmtp:${pt} `)) {
      return s.replace(new RegExp(`a=fmtp:${pt} [^\\r\\n]*`), `a=fmtp:${pt} ${fmtp}`);
    }
    return s.replace(`a=rtpmap:${pt} opus/48000/2`, `a=rtpmap:${pt} opus/48000/2\r\na=fmtp:${pt} ${fmtp}`);
  });
}

/** Set one Opus fmtp parameter of the m-section with `mid`, keeping the others. */
export function setOpusParam(sdp, mid, key, value) {
  const section = sdpSections(sdp).find((s) => isSectionOf(s, mid));
  const pt = section && (section.match(/a=rtpmap:(\d+) opus\/48000/i) || [])[1];
  if (!pt) return sdp;
  const current = (section.match(new RegExp(`a=fmtp:${pt} ([^\\r\\n]*)`)) || [])[1] || "";
  const params = current.split(";").filter((p) => p && !p.startsWith(`${key}=`));
  params.push(`${key}=${value}`);
  return setOpusFmtp(sdp, mid, params.join(";"));
}

/** Set the frame duration (`a=ptime`) of the m-section with `mid`: the sender's Opus encoder
 * takes its frame size from the answer it applies. */
export function setPtime(sdp, mid, ptimeMs) {
  return editSection(sdp, mid, (s) => {
    const kept = s.replace(/\r\na=(max)?ptime:[^\r\n]*/g, "");
    return kept.replace(`\r\na=mid:${mid}`, `\r\na=mid:${mid}\r\na=ptime:${ptimeMs}`);
  });
}

/** Take audio redundancy (RED) out of the m-section with `mid` of an answer: the sender then
 * sends plain Opus (its uplink is thin and RED would double the audio on it). */
export function dropRed(sdp, mid) {
  return editSection(sdp, mid, (s) => {
    const pt = (s.match(/a=rtpmap:(\d+) red\/48000/i) || [])[1];
    if (!pt) return s;
    return s
      .replace(/(\r\nm=audio \S+ \S+)([ \d]*)/, (_, head, pts) => head + pts.split(" ").filter((x) => x && x !== pt).map((x) => " " + x).join(""))
      .replace(new RegExp(`\\r\\na=(rtpmap|fmtp|rtcp-fb):${pt} [^\\r\\n]*`, "g"), "");
  });
}

async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** How long joining may take before the attempt is given up (and, when reconnecting, retried). */
const CONNECT_TIMEOUT_MS = 8000;
/** A ping every this often once joined; nothing heard for `SILENT_MS` (a connection stalled on
 * a dead or saturated link, which TCP may take minutes to give up) ends it, to join again. */
const PING_EVERY_MS = 10000;
const SILENT_MS = 30000;

export class ConsultClient extends EventTarget {
  constructor({ baseUrl, token }) {
    super();
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.token = token;
    this.claims = tokenClaims(token);
    this.participantId = null;
    this.state = null; // "waiting" | "admitted" | "ended" | "refused" | "removed"
    this.participants = new Map(); // id → participant info
    this.subscribed = new Map(); // subscriber mid → {track_id, participant_id, label, kind}
    this.published = []; // [{mid, label, muted, sender, track}]
    this.publisher = null;
    this.subscriber = null;
    this.pendingPublish = null;
    this.uploads = []; // queued stills
    this.uploading = false;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /** Open the WebSocket and join; resolves with the `joined` message. */
  connect() {
    const wsUrl = this.baseUrl.replace(/^http/, "ws") + "/ws";
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl);
      this.ws = ws;
      let joined = false;
      let lastHeard = Date.now();
      const keepalive = setInterval(() => {
        if (!joined || ws.readyState !== WebSocket.OPEN) return;
        if (Date.now() - lastHeard > SILENT_MS) {
          // Not waiting for a closing handshake that cannot get through either.
          this.note("silent", { ms: Date.now() - lastHeard });
          clearInterval(keepalive);
          ws.onclose = null;
          ws.close();
          this.closed(4000, "nothing heard");
          return;
        }
        ws.send(JSON.stringify({ type: "ping" }));
      }, PING_EVERY_MS);
      // Not joined in time (a SYN lost on a full link waits seconds before its retry): give
      // up on this attempt so that the caller can try a fresh connection.
      const timer = setTimeout(() => {
        if (!joined) ws.close();
      }, CONNECT_TIMEOUT_MS);
      ws.onopen = () => ws.send(JSON.stringify({ type: "join", version: PROTOCOL_VERSION, token: this.token }));
      ws.onmessage = (ev) => {
        lastHeard = Date.now();
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (!joined) {
          if (msg.type === "joined") {
            joined = true;
            clearTimeout(timer);
            this.onJoined(msg);
            resolve(msg);
          } else if (msg.type === "error") {
            reject(Object.assign(new Error(msg.message), { code: msg.code }));
          }
          return;
        }
        this.handle(msg).catch((e) => this.problem(msg.type, e));
      };
      ws.onclose = (ev) => {
        clearTimeout(timer);
        clearInterval(keepalive);
        if (!joined) reject(new Error("connection closed"));
        this.closed(ev.code, ev.reason);
      };
      ws.onerror = () => this.emit("problem", { message: "websocket error" });
    });
  }

  onJoined(msg) {
    this.participantId = msg.participant_id;
    this.role = msg.role;
    this.state = msg.state;
    this.participants = new Map(msg.participants.map((p) => [p.participant_id, p]));
    this.subscriber = this.newPeer("subscriber");
    this.subscriber.ontrack = (ev) => {
      const info = this.subscribed.get(ev.transceiver.mid);
      if (!info) return;
      const stream = ev.streams[0] || new MediaStream([ev.track]);
      this.emit("track", { info, track: ev.track, stream });
    };
    this.emit("state", { state: this.state });
  }

  newPeer(target) {
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    pc.onicecandidate = (ev) => {
      if (ev.candidate) this.send({ type: "candidate", target, candidate: ev.candidate.toJSON() });
    };
    pc.onconnectionstatechange = () => this.emit("connection", { target, state: pc.connectionState });
    // A failed media path (network change, long outage) is restarted without leaving the room.
    pc.oniceconnectionstatechange = () => {
      if (pc.iceConnectionState === "failed") this.restartIce(target).catch(() => {});
    };
    return pc;
  }

  /**
   * ICE restart of one connection ("publisher", "subscriber") or both: the publisher offers new
   * credentials, the server is asked to do so on the subscriber (its offer follows).
   */
  async restartIce(target) {
    if (!target || target === "subscriber") this.send({ type: "ice_restart" });
    if ((!target || target === "publisher") && this.publisher) await this.negotiatePublisher(true);
    this.iceRestarts = (this.iceRestarts || 0) + 1;
  }

  async handle(msg) {
    switch (msg.type) {
      case "admitted":
        this.state = "admitted";
        for (const p of msg.participants) this.participants.set(p.participant_id, p);
        this.emit("state", { state: this.state });
        break;
      case "refused":
      case "removed":
        this.state = msg.type;
        this.emit("state", { state: this.state, reason: msg.reason });
        this.close();
        break;
      case "server_shutdown":
        // The server is stopping (a deploy, a restart): the connection closes next, and the
        // page joins again as after any drop (its backoff covers the restart).
        this.note("server_shutdown", { retry_after_ms: msg.retry_after_ms });
        break;
      case "consultation_ended":
        this.state = "ended";
        this.emit("state", { state: this.state });
        this.close();
        break;
      case "waiting_room":
        this.emit("waiting", { waiting: msg.waiting });
        break;
      case "participant_joined":
        this.participants.set(msg.participant.participant_id, msg.participant);
        this.emit("participants", {});
        break;
      case "participant_left":
        this.participants.delete(msg.participant_id);
        this.emit("participants", { left: msg.participant_id, reason: msg.reason });
        break;
      case "track_published": {
        const p = this.participants.get(msg.participant_id);
        if (p) p.tracks = [...(p.tracks || []).filter((t) => t.track_id !== msg.track.track_id), msg.track];
        this.emit("participants", {});
        break;
      }
      case "track_unpublished":
        this.emit("unpublished", { track_id: msg.track_id });
        break;
      case "mute_changed":
        this.emit("mute", msg);
        break;
      case "publish_answer":
        if (this.pendingPublish) this.pendingPublish.resolve(msg.sdp);
        break;
      case "subscriber_offer":
        this.note("subscriber_offer", {});
        await this.answerSubscriber(msg);
        this.note("subscriber_answered", {});
        break;
      case "device_control":
        this.emit("device", { from: msg.from, command: msg.command });
        break;
      case "still_available":
        this.emit("still", { still: msg.still });
        break;
      case "recording":
        this.recording = msg;
        this.emit("recording", msg);
        break;
      case "bandwidth":
        this.note("bandwidth", { audio_only: msg.audio_only, low_link: msg.low_link, estimate_kbps: msg.estimate_kbps });
        this.bandwidth = msg;
        this.emit("bandwidth", msg);
        break;
      case "publisher_audio":
        this.applyAudioHint(msg).catch((e) => this.problem(msg.type, e, "internal"));
        break;
      case "publisher_layers":
        this.setActiveLayers(msg.mid, msg.active_rids, msg.uplink_paused || false).catch((e) => this.problem(msg.type, e, "internal"));
        break;
      case "error":
        if (this.pendingPublish && (msg.code === "bad_sdp" || msg.code === "not_admitted")) {
          this.pendingPublish.reject(new Error(msg.message));
        }
        this.emit("problem", { code: msg.code, message: msg.message });
        break;
      default:
        break;
    }
  }

  async answerSubscriber(msg) {
    for (const t of msg.tracks) this.subscribed.set(t.mid, t);
    await this.subscriber.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    const answer = await this.subscriber.createAnswer();
    await this.subscriber.setLocalDescription(answer);
    this.send({ type: "subscriber_answer", sdp: this.subscriber.localDescription.sdp });
  }

  /**
   * Publish tracks: [{track: MediaStreamTrack, label}] with label camera, microphone,
   * stethoscope, otoscope or screen. One offer for all.
   */
  async publish(items) {
    if (!this.publisher) this.publisher = this.newPeer("publisher");
    const stream = new MediaStream();
    const added = [];
    for (const { track, label } of items) {
      if (label === "otoscope") track.contentHint = "detail";
      if (label === "stethoscope") track.contentHint = "music";
      stream.addTrack(track);
      const init = { direction: "sendonly", streams: [stream] };
      if (label === "stethoscope") init.sendEncodings = [{ maxBitrate: 128000, priority: "high", networkPriority: "high" }];
      // The room camera as simulcast: the SFU forwards each subscriber the layer its link
      // carries, and tells us (publisher_layers) which layers nobody receives.
      if (label === "camera") init.sendEncodings = CAMERA_LAYERS.map((l) => ({ ...l }));
      const tr = this.publisher.addTransceiver(track, init);
      added.push({ transceiver: tr, label, track });
    }
    await this.negotiatePublisher(false, () => {
      for (const a of added) {
        this.published.push({ mid: a.transceiver.mid, label: a.label, muted: false, sender: a.transceiver.sender, track: a.track });
      }
    });
    return this.published;
  }

  /** Pause the simulcast layers of a published track that nobody receives (SFU hint). */
  /**
   * The SFU's `publisher_layers`: the simulcast layers someone receives, or (`uplinkPaused`)
   * no video at all on this track, our uplink cannot carry it.
   */
  async setActiveLayers(mid, activeRids, uplinkPaused) {
    const p = this.published.find((x) => x.mid === mid);
    if (!p) return;
    p.activeRids = activeRids;
    p.uplinkPaused = !!uplinkPaused;
    await this.applyLayers(p);
    this.emit("layers", { mid, active_rids: activeRids, uplink_paused: !!uplinkPaused });
  }

  /** Set a published video's encodings as the SFU last asked (also after a renegotiation,
   * whose answer makes Chromium send every layer again). */
  async applyLayers(p, force = false) {
    if (!p.activeRids) return;
    const params = p.sender.getParameters();
    if (!params.encodings || !params.encodings.length) return;
    const simulcast = params.encodings.some((e) => e.rid);
    let changed = false;
    for (const e of params.encodings) {
      const active = !p.uplinkPaused && (!simulcast || p.activeRids.includes(e.rid));
      changed ||= e.active !== active;
      e.active = active;
    }
    if (changed || force) await p.sender.setParameters(params);
    this.note("layers", { mid: p.mid, active: params.encodings.map((e) => e.active), force });
  }

  /** The WebSocket is gone (`closedWith` says how, for tests and support). */
  closed(code, reason) {
    this.note("closed", { code, reason });
    this.closedWith = { code, reason, at: Date.now() };
    this.emit("closed", this.closedWith);
  }

  /** Handling message `type` failed: noted, and shown. */
  problem(type, e, code) {
    this.note("problem", { type, message: String(e) });
    this.emit("problem", code ? { code, message: String(e) } : { message: String(e) });
  }

  /** A short record of what the client applied, for diagnosis (`window.consult.client.log`). */
  note(what, detail) {
    this.log = this.log || [];
    this.log.push({ t: Date.now(), what, ...detail });
    if (this.log.length > 100) this.log.shift();
  }

  /**
   * The SFU's encoding for the thinnest receiver of one of our audio tracks: the bitrate at
   * once (`setParameters`), then both the bitrate and the frame duration through a
   * renegotiation whose answer carries them (`maxaveragebitrate`, `a=ptime`: the Opus
   * encoder is configured from the answer). The browser sizes its FEC from the SFU's receiver
   * reports by itself. `redundancy: false` (our uplink is thin): plain Opus instead of RED,
   * through the answer as well (`setParameters` codec selection does not switch RED off).
   * All three are edits of the SFU's last answer, made here: no round trip to the server
   * (see `renegotiatePublisherLocally`).
   */
  async applyAudioHint(msg) {
    const p = this.published.find((x) => x.mid === msg.mid);
    if (!p) return;
    if (msg.max_bitrate_bps) {
      const params = p.sender.getParameters();
      if (params.encodings && params.encodings.length) {
        params.encodings[0].maxBitrate = msg.max_bitrate_bps;
        await p.sender.setParameters(params);
      }
    }
    // RED off (or back) goes through the answer too: Chromium cannot switch it otherwise.
    const current = p.redundancy !== false; // the browser's default until told otherwise
    const redundancy = typeof msg.redundancy === "boolean" ? msg.redundancy : current;
    const changed = redundancy !== current || (msg.ptime_ms && msg.ptime_ms !== p.ptime) || (msg.max_bitrate_bps && msg.max_bitrate_bps !== p.maxBitrate);
    if (changed) {
      p.ptime = msg.ptime_ms || p.ptime;
      p.maxBitrate = msg.max_bitrate_bps || p.maxBitrate;
      p.redundancy = redundancy;
      await this.renegotiatePublisherLocally();
    }
    this.emit("audio_hint", msg);
  }

  /** Offer on the publisher connection and apply the answer; one negotiation at a time. */
  async negotiatePublisher(iceRestart, afterOffer) {
    const previous = this.negotiation || Promise.resolve();
    const run = previous.catch(() => {}).then(async () => {
      const offer = await this.publisher.createOffer({ iceRestart });
      await this.publisher.setLocalDescription(offer);
      if (afterOffer) afterOffer();
      const answerSdp = await new Promise((resolve, reject) => {
        this.pendingPublish = { resolve, reject };
        this.send({
          type: "publish_offer",
          sdp: this.publisher.localDescription.sdp,
          tracks: this.published.map(({ mid, label, muted }) => ({ mid, label, muted })),
        });
        setTimeout(() => reject(new Error("no publish answer")), 15000);
      }).finally(() => (this.pendingPublish = null));
      this.publishAnswer = { sdp: answerSdp, sections: mediaSections(answerSdp) };
      await this.applyPublishAnswer("publish_answer");
    });
    this.negotiation = run;
    return run;
  }

  /**
   * The SFU's last answer, with our per-track Opus settings (the sender encodes as the
   * answer's fmtp says), applied to the publisher connection.
   */
  async applyPublishAnswer(what) {
    let sdp = this.publishAnswer.sdp;
    for (const p of this.published) {
      if (p.label === "stethoscope") sdp = setOpusFmtp(sdp, p.mid, STETHOSCOPE_OPUS_FMTP);
      if (p.maxBitrate) sdp = setOpusParam(sdp, p.mid, "maxaveragebitrate", p.maxBitrate);
      if (p.ptime) sdp = setPtime(sdp, p.mid, p.ptime);
      if (p.redundancy === false) sdp = dropRed(sdp, p.mid);
    }
    await this.publisher.setRemoteDescription({ type: "answer", sdp });
    this.note(what, { red: this.published.filter((p) => p.redundancy === false).map((p) => p.mid) });
    for (const p of this.published) await this.applyLayers(p, true).catch(() => {});
  }

  /**
   * Audio settings changed (bitrate, frame duration, redundancy) and nothing else: a new
   * offer answered with the SFU's last answer, edited here. The SFU negotiated every codec
   * already and takes whichever the packets carry, so it need not see this offer; what
   * matters is that nothing waits on the WebSocket: on a thin uplink the one reason to drop
   * RED is that the link is full, and a full link is what delays an offer sent to the server
   * (18 s and more, measured on the rural-link test). Falls back to a full negotiation when
   * the sections differ from the last answer's (a track added meanwhile).
   */
  async renegotiatePublisherLocally() {
    const previous = this.negotiation || Promise.resolve();
    const run = previous.catch(() => {}).then(async () => {
      if (!this.publishAnswer) return false;
      const offer = await this.publisher.createOffer();
      if (mediaSections(offer.sdp) !== this.publishAnswer.sections) return false;
      await this.publisher.setLocalDescription(offer);
      await this.applyPublishAnswer("publish_answer_local");
      return true;
    });
    this.negotiation = run;
    if (!(await run.catch(() => false))) await this.negotiatePublisher(false);
  }

  setMuted(label, muted) {
    for (const p of this.published.filter((p) => p.label === label)) {
      p.track.enabled = !muted;
      p.muted = muted;
      this.send({ type: "mute", mid: p.mid, muted });
    }
  }

  /** Physician: steer a cart's camera or otoscope ({action, label, level?}). */
  deviceControl(id, command) { this.send({ type: "device_control", participant_id: id, command }); }

  /** Swap what a published track sends (e.g. a frozen frame) without renegotiating. */
  async replaceTrack(label, track) {
    const p = this.published.find((x) => x.label === label);
    if (p) await p.sender.replaceTrack(track);
  }

  /** Physician: ask to record these tracks; everyone admitted must consent first. */
  requestRecording(trackIds) { this.send({ type: "request_recording", track_ids: trackIds }); }
  /** Consent to a recording, or refuse / withdraw it (accept = false). */
  recordingConsent(recordingId, accept) { this.send({ type: "recording_consent", recording_id: recordingId, accept }); }
  stopRecording() { this.send({ type: "stop_recording" }); }
  /** Physician: keep this track ahead of others when bandwidth is short. */
  pinTrack(trackId, pinned) { this.send({ type: "pin_track", track_id: trackId, pinned }); }

  admit(id) { this.send({ type: "admit", participant_id: id }); }
  refuse(id, reason) { this.send({ type: "refuse", participant_id: id, reason: reason || null }); }
  remove(id) { this.send({ type: "remove", participant_id: id }); }
  endConsultation() { this.send({ type: "end_consultation" }); }

  leave() {
    this.send({ type: "leave" });
    this.close();
  }

  close() {
    for (const pc of [this.publisher, this.subscriber]) if (pc) pc.close();
    if (this.ws) this.ws.close();
  }

  authHeaders() {
    return { authorization: `Bearer ${this.token}` };
  }

  /** Queue a still (a Blob) for upload; the queue retries and resumes until it arrives. */
  async queueStill(blob, { label, device, takenAt }) {
    const item = {
      blob,
      meta: {
        label,
        content_type: blob.type,
        size: blob.size,
        sha256: await sha256Hex(blob),
        taken_at_ms: takenAt || Date.now(),
        device: device || null,
      },
      uploadId: null,
      offset: 0,
    };
    this.uploads.push(item);
    this.emit("upload", { queued: this.uploads.length });
    this.drainUploads();
    return item;
  }

  async drainUploads() {
    if (this.uploading) return;
    this.uploading = true;
    try {
      while (this.uploads.length) {
        const item = this.uploads[0];
        try {
          const still = await this.uploadOne(item);
          this.uploads.shift();
          this.emit("upload", { queued: this.uploads.length, done: still });
        } catch (e) {
          if (e.permanent) {
            this.uploads.shift();
            this.emit("upload", { queued: this.uploads.length, failed: e.message });
          } else {
            // The link dropped: wait and resume where the server says we stopped.
            this.emit("upload", { queued: this.uploads.length, retrying: e.message });
            await new Promise((r) => setTimeout(r, 2000));
          }
        }
      }
    } finally {
      this.uploading = false;
    }
  }

  async uploadOne(item) {
    const api = async (path, init) => {
      let r;
      try {
        r = await fetch(this.baseUrl + path, init);
      } catch (e) {
        throw Object.assign(new Error("network: " + e.message), { permanent: false });
      }
      const body = await r.json().catch(() => ({}));
      if (!r.ok && r.status !== 409) {
        throw Object.assign(new Error(body.message || r.statusText), { permanent: r.status < 500 });
      }
      return body;
    };
    if (!item.uploadId) {
      const st = await api("/api/stills", {
        method: "POST",
        headers: { ...this.authHeaders(), "content-type": "application/json" },
        body: JSON.stringify(item.meta),
      });
      item.uploadId = st.upload_id;
      item.offset = st.offset;
    } else {
      const st = await api(`/api/stills/uploads/${item.uploadId}`, { headers: this.authHeaders() });
      item.offset = st.offset;
    }
    const CHUNK = 256 * 1024;
    for (;;) {
      const chunk = item.blob.slice(item.offset, item.offset + CHUNK);
      const st = await api(`/api/stills/uploads/${item.uploadId}?offset=${item.offset}`, {
        method: "PUT",
        headers: { ...this.authHeaders(), "content-type": "application/octet-stream" },
        body: chunk,
      });
      if (st.code === "conflict") {
        const s = await api(`/api/stills/uploads/${item.uploadId}`, { headers: this.authHeaders() });
        item.offset = s.offset;
        continue;
      }
      item.offset = st.offset;
      this.emit("upload", { queued: this.uploads.length, progress: item.offset / item.meta.size });
      if (st.still) return st.still;
    }
  }

  async listStills() {
    const r = await fetch(this.baseUrl + "/api/stills", { headers: this.authHeaders() });
    return r.ok ? r.json() : [];
  }

  async fetchStill(id) {
    const r = await fetch(`${this.baseUrl}/api/stills/${id}`, { headers: this.authHeaders() });
    if (!r.ok) throw new Error(r.statusText);
    return r.blob();
  }

  /** Inbound and outbound RTP stats of both connections, for the quality indicator and tests. */
  async rtpStats() {
    const out = { inbound: [], outbound: [] };
    for (const pc of [this.subscriber, this.publisher]) {
      if (!pc) continue;
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === "inbound-rtp") {
          const info = this.subscribed.get(s.mid) || {};
          out.inbound.push({ ...info, kind: s.kind, mid: s.mid, bytesReceived: s.bytesReceived, packetsReceived: s.packetsReceived, packetsLost: s.packetsLost, jitter: s.jitter, framesDecoded: s.framesDecoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight });
        } else if (s.type === "outbound-rtp") {
          const codec = s.codecId && report.get(s.codecId);
          out.outbound.push({ kind: s.kind, mid: s.mid, rid: s.rid, bytesSent: s.bytesSent, packetsSent: s.packetsSent, framesEncoded: s.framesEncoded, frameWidth: s.frameWidth, codec: codec ? codec.mimeType : null });
        }
      });
    }
    return out;
  }
}
