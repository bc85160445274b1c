// The consult room UI. Protocol and media live in protocol.js; this file only draws and reacts.

import { ConsultClient, tokenClaims } from "./protocol.js";
import { applyStrings, currentLang, t, toggleLang } from "./i18n.js";

const $ = (id) => document.getElementById(id);
/** How long to try to join again after the connection dropped (the server keeps an admitted
 * participant's place for two minutes). */
const RECONNECT_FOR_MS = 110000;
const state = {
  client: null,
  claims: null,
  localTracks: {}, // label → MediaStreamTrack
  previewStream: null,
  meter: null,
  remote: new Map(), // track_id → {tile, info, track}
  stats: new Map(), // participant_id → last {packetsReceived, packetsLost}
};
window.consult = state; // for tests and support

function show(screen) {
  for (const s of ["none", "check", "waiting", "room", "end"]) $(`screen-${s}`).hidden = s !== screen;
}

function problem(msg) {
  $("problem").textContent = msg ? `${t("error")} : ${msg}` : "";
}

function roleText(role, kind) {
  return kind ? t(kind) : t(role);
}

// ---------- device check ----------

async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const fill = (sel, kind) => {
    sel.innerHTML = "";
    for (const d of devices.filter((d) => d.kind === kind)) {
      const o = document.createElement("option");
      o.value = d.deviceId;
      o.textContent = d.label || d.deviceId.slice(0, 8);
      sel.appendChild(o);
    }
  };
  fill($("sel-camera"), "videoinput");
  fill($("sel-microphone"), "audioinput");
  fill($("sel-stethoscope"), "audioinput");
  fill($("sel-otoscope"), "videoinput");
}

async function startPreview() {
  if (state.previewStream) state.previewStream.getTracks().forEach((tr) => tr.stop());
  const cam = $("sel-camera").value;
  const mic = $("sel-microphone").value;
  state.previewStream = await navigator.mediaDevices.getUserMedia({
    // 720p, so the camera can be sent as three simulcast layers (720p, 360p, 180p).
    video: { ...(cam ? { deviceId: { exact: cam } } : {}), width: { ideal: 1280 }, height: { ideal: 720 } },
    audio: mic ? { deviceId: { exact: mic } } : true,
  });
  $("preview").srcObject = state.previewStream;
  startLevelMeter(state.previewStream);
}

function startLevelMeter(stream) {
  if (state.meter) state.meter.ctx.close();
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  state.meter = { ctx };
  const tick = () => {
    if (ctx.state === "closed") return;
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    $("level").value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
    requestAnimationFrame(tick);
  };
  tick();
}

/** Capture what the participant chose, with the stethoscope left untouched. */
async function captureTracks() {
  const tracks = [];
  const [video] = state.previewStream.getVideoTracks();
  const [audio] = state.previewStream.getAudioTracks();
  if (audio) tracks.push({ track: audio, label: "microphone" });
  if (video) tracks.push({ track: video, label: "camera" });
  if (!$("cart-devices").hidden && $("use-stethoscope").checked) {
    const s = await navigator.mediaDevices.getUserMedia({
      audio: {
        deviceId: $("sel-stethoscope").value ? { exact: $("sel-stethoscope").value } : undefined,
        echoCancellation: false,
        noiseSuppression: false,
        autoGainControl: false,
        sampleRate: 48000,
        channelCount: 1,
      },
    });
    tracks.push({ track: s.getAudioTracks()[0], label: "stethoscope" });
  }
  if (!$("cart-devices").hidden && $("use-otoscope").checked) {
    const o = await navigator.mediaDevices.getUserMedia({
      video: {
        deviceId: $("sel-otoscope").value ? { exact: $("sel-otoscope").value } : undefined,
        width: { ideal: 1920 },
        height: { ideal: 1080 },
      },
    });
    tracks.push({ track: o.getVideoTracks()[0], label: "otoscope" });
  }
  for (const { track, label } of tracks) state.localTracks[label] = track;
  return tracks;
}

// ---------- room ----------

function participantName(id) {
  const c = state.client;
  if (id === c.participantId) return t("you");
  const p = c.participants.get(id);
  return p ? `${p.name} (${roleText(p.role, p.companion_kind)})` : id;
}

function addLocalTile(label, track) {
  const tile = document.createElement("div");
  tile.className = "tile local";
  tile.dataset.label = label;
  const v = document.createElement("video");
  v.autoplay = v.muted = v.playsInline = true;
  v.srcObject = new MediaStream([track]);
  tile.append(v, labelEl(`${t("you")} — ${t(label)}`));
  if (label === "otoscope" || label === "camera") {
    const actions = document.createElement("div");
    actions.className = "actions";
    const b = document.createElement("button");
    b.textContent = t("take_still");
    b.dataset.still = label;
    b.onclick = () => takeLocalStill(label);
    actions.append(b);
    tile.append(actions);
  }
  $("tiles").append(tile);
}

function labelEl(text) {
  const s = document.createElement("span");
  s.className = "label";
  s.textContent = text;
  return s;
}

function addRemoteTile({ info, track }) {
  const old = state.remote.get(info.track_id);
  if (old) old.tile.remove();
  const tile = document.createElement("div");
  tile.className = "tile remote";
  tile.dataset.trackId = info.track_id;
  tile.dataset.label = info.label;
  tile.dataset.participant = info.participant_id;
  const quality = document.createElement("span");
  quality.className = "quality";
  quality.dataset.participant = info.participant_id;
  if (info.kind === "video") {
    const v = document.createElement("video");
    v.autoplay = v.playsInline = true;
    v.muted = true;
    v.srcObject = new MediaStream([track]);
    tile.append(v);
    if (state.client.role === "physician") {
      const actions = document.createElement("div");
      actions.className = "actions";
      const big = document.createElement("button");
      big.textContent = t("enlarge");
      big.onclick = () => tile.classList.toggle("enlarged");
      const photo = document.createElement("button");
      photo.textContent = t("take_still");
      photo.onclick = () => takeFrameStill(v, info.label);
      // Pin: when the link is short, this video keeps its place ahead of others.
      const pin = document.createElement("button");
      pin.textContent = t("pin");
      pin.dataset.pin = info.track_id;
      pin.onclick = () => {
        const pinned = tile.dataset.pinned !== "true";
        state.client.pinTrack(info.track_id, pinned);
        tile.dataset.pinned = String(pinned);
        pin.textContent = t(pinned ? "unpin" : "pin");
      };
      actions.append(big, photo, pin);
      if (info.label === "otoscope" || info.label === "camera") {
        // Far-end control of the cart's device.
        const steer = (key, command) => {
          const b = document.createElement("button");
          b.textContent = t(key);
          b.dataset.control = command.action;
          b.onclick = () => state.client.deviceControl(info.participant_id, { label: info.label, ...command });
          return b;
        };
        actions.append(
          steer("zoom_in", { action: "zoom", level: 2 }),
          steer("zoom_out", { action: "zoom", level: 1 }),
          steer("freeze", { action: "freeze" }),
          steer("unfreeze", { action: "unfreeze" }),
          steer("request_still", { action: "capture" }),
        );
      }
      tile.append(actions);
      if (info.label === "otoscope") tile.classList.add("enlarged");
    }
  } else {
    tile.classList.add("audio");
    const a = document.createElement("audio");
    a.autoplay = true;
    a.srcObject = new MediaStream([track]);
    tile.append(a);
    if (info.label === "stethoscope") tile.append(stethoscopePanel(track, a));
    if (state.client.claims.role === "physician") {
      // Record this track (the stethoscope for the file); every participant must consent.
      const rec = document.createElement("button");
      rec.textContent = t("record");
      rec.dataset.record = info.track_id;
      rec.onclick = () => state.client.requestRecording([info.track_id]);
      tile.append(rec);
    }
  }
  tile.append(labelEl(`${participantName(info.participant_id)} — ${t(info.label)}`), quality);
  $("tiles").append(tile);
  state.remote.set(info.track_id, { tile, info, track });
}

/** Volume and a live spectrum of 20–2000 Hz, where heart and lung sounds live. */
function stethoscopePanel(track, audioEl) {
  const panel = document.createElement("div");
  panel.className = "steth";
  const canvas = document.createElement("canvas");
  canvas.width = 600;
  canvas.height = 120;
  const vol = document.createElement("input");
  vol.type = "range";
  vol.min = "0";
  vol.max = "1";
  vol.step = "0.01";
  vol.value = "1";
  vol.oninput = () => (audioEl.volume = Number(vol.value));
  const label = document.createElement("label");
  label.append(t("volume"), vol);
  panel.append(canvas, label);
  const ctx = new AudioContext({ sampleRate: 48000 });
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 16384; // 2.9 Hz bins at 48 kHz
  ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const bins = new Uint8Array(analyser.frequencyBinCount);
  const g = canvas.getContext("2d");
  const binHz = ctx.sampleRate / analyser.fftSize;
  let attached = false;
  const draw = () => {
    // Stop (and free the audio context) once the tile is gone.
    if (panel.isConnected) attached = true;
    else if (attached) return ctx.close();
    analyser.getByteFrequencyData(bins);
    g.fillStyle = "#000";
    g.fillRect(0, 0, canvas.width, canvas.height);
    g.fillStyle = "#4caf50";
    // Log frequency axis from 20 Hz to 2 kHz.
    for (let x = 0; x < canvas.width; x++) {
      const f = 20 * Math.pow(100, x / canvas.width);
      const v = bins[Math.min(bins.length - 1, Math.round(f / binHz))] / 255;
      g.fillRect(x, canvas.height * (1 - v), 1, canvas.height * v);
    }
    requestAnimationFrame(draw);
  };
  draw();
  return panel;
}

function renderWaiting(waiting) {
  const ul = $("waiting-list");
  ul.innerHTML = "";
  if (!waiting.length) {
    const li = document.createElement("li");
    li.textContent = t("nobody_waiting");
    ul.append(li);
  }
  for (const p of waiting) {
    const li = document.createElement("li");
    li.dataset.participant = p.participant_id;
    const name = document.createElement("span");
    name.textContent = `${p.name} (${roleText(p.role, p.companion_kind)})`;
    const admit = document.createElement("button");
    admit.className = "primary";
    admit.textContent = t("admit");
    admit.dataset.action = "admit";
    admit.onclick = () => state.client.admit(p.participant_id);
    const refuse = document.createElement("button");
    refuse.textContent = t("refuse");
    refuse.dataset.action = "refuse";
    refuse.onclick = () => state.client.refuse(p.participant_id);
    li.append(name, admit, refuse);
    ul.append(li);
  }
}

function renderParticipants() {
  const ul = $("participant-list");
  ul.innerHTML = "";
  for (const [id, p] of state.client.participants) {
    if (id === state.client.participantId) continue;
    const li = document.createElement("li");
    li.dataset.participant = id;
    const name = document.createElement("span");
    name.textContent = `${p.name} (${roleText(p.role, p.companion_kind)})`;
    li.append(name);
    if (state.client.role === "physician") {
      const rm = document.createElement("button");
      rm.textContent = t("remove");
      rm.dataset.action = "remove";
      rm.onclick = () => state.client.remove(id);
      li.append(rm);
    }
    ul.append(li);
  }
  // Names may have arrived after tiles.
  for (const { tile, info } of state.remote.values()) {
    tile.querySelector(".label").textContent = `${participantName(info.participant_id)} — ${t(info.label)}`;
  }
}

async function addToGallery(still) {
  if ($("gallery").querySelector(`[data-still-id="${still.still_id}"]`)) return;
  const fig = document.createElement("figure");
  fig.dataset.stillId = still.still_id;
  fig.dataset.size = String(still.size);
  fig.dataset.sha256 = still.sha256;
  const img = document.createElement("img");
  img.alt = `${t(still.label)} — ${still.author_name}`;
  const cap = document.createElement("figcaption");
  cap.textContent = `${t(still.label)} · ${still.author_name} · ${new Date(still.taken_at_ms).toLocaleTimeString(currentLang())} · ${(still.size / 1024).toFixed(0)} Ko`;
  fig.append(img, cap);
  $("gallery").prepend(fig);
  try {
    const blob = await state.client.fetchStill(still.still_id);
    img.src = URL.createObjectURL(blob);
    fig.dataset.loadedBytes = String(blob.size);
  } catch (e) {
    problem(String(e));
  }
}

// ---------- stills ----------

async function frameToBlob(source, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(source, 0, 0, width, height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.95));
}

/** Full-resolution still from a local camera: ImageCapture.takePhoto, else the full frame. */
async function takeLocalStill(label) {
  const track = state.localTracks[label];
  if (!track) return;
  let blob = null;
  if (typeof ImageCapture !== "undefined") {
    try {
      const photo = await new ImageCapture(track).takePhoto();
      if (photo.type === "image/jpeg" || photo.type === "image/png") blob = photo;
      else blob = await frameToBlob(await createImageBitmap(photo), ...(await bitmapSize(photo)));
    } catch {
      try {
        const bmp = await new ImageCapture(track).grabFrame();
        blob = await frameToBlob(bmp, bmp.width, bmp.height);
      } catch {
        blob = null;
      }
    }
  }
  if (!blob) {
    const v = document.querySelector(`.tile.local[data-label="${label}"] video`);
    blob = await frameToBlob(v, v.videoWidth, v.videoHeight);
  }
  await state.client.queueStill(blob, { label, device: track.label, takenAt: Date.now() });
}

async function bitmapSize(blob) {
  const b = await createImageBitmap(blob);
  return [b.width, b.height];
}

async function takeFrameStill(video, label) {
  const blob = await frameToBlob(video, video.videoWidth, video.videoHeight);
  await state.client.queueStill(blob, { label, device: null, takenAt: Date.now() });
}

// ---------- bandwidth ----------

/**
 * The link toward us is short: say what the server paused (video, and speech it could not
 * carry beside the stethoscope), and mark those tiles. It claims nothing about what still
 * flows: the quality indicator measures that.
 */
function renderBandwidth(msg) {
  state.lastBandwidth = msg;
  const banner = $("bandwidth-banner");
  const mode = msg.audio_only ? "audio-only" : msg.low_link ? "low" : "ok";
  const paused = new Set(msg.paused_track_ids);
  const remote = [...state.remote.values()];
  const speech = remote.filter(({ info }) => info.kind === "audio" && paused.has(info.track_id));
  document.body.dataset.bandwidth = mode;
  document.body.dataset.speechPaused = String(speech.length);
  // Our own video held back by the server: our uplink cannot carry it.
  const ownPaused = (state.client?.published || []).some((p) => p.uplinkPaused);
  document.body.dataset.uplinkPaused = ownPaused ? "1" : "0";
  banner.hidden = mode === "ok" && !speech.length && !ownPaused;
  let text = mode === "audio-only" ? t("bandwidth_audio_only") : mode === "low" ? t("bandwidth_low") : "";
  if (speech.length) {
    const names = speech.map(({ info }) => participantName(info.participant_id)).join(", ");
    text = `${text} ${t("bandwidth_speech_paused")} ${names}.`.trim();
  }
  if (ownPaused) text = `${text} ${t("uplink_paused")}`.trim();
  $("bandwidth-text").textContent = text;
  for (const { tile, info } of remote) tile.classList.toggle("paused", paused.has(info.track_id));
}

// ---------- recording consent ----------

function renderRecording(msg) {
  const me = state.client.participantId;
  const banner = $("recording-banner");
  const asked = msg.phase === "pending" && msg.waiting_for.includes(me);
  const what = msg.tracks.map((tr) => `${t(tr.label)} (${participantName(tr.participant_id)})`).join(", ");
  let text;
  if (msg.phase === "pending") text = asked ? t("consent_asked").replace("{what}", what) : t("consent_waiting").replace("{n}", msg.waiting_for.length);
  else if (msg.phase === "recording") text = `● ${t("recording_on")}: ${what}`;
  else {
    // The server's reason names participants by id: show their names.
    const reason = (msg.reason || "").replace(/p[0-9a-f]{16}/g, (id) => participantName(id));
    text = `${t("recording_off")}${reason ? ` (${reason})` : ""}`;
  }
  $("recording-text").textContent = text;
  $("recording-accept").hidden = !asked;
  $("recording-refuse").hidden = !asked;
  $("recording-withdraw").hidden = msg.phase !== "recording" || msg.requested_by === me;
  $("recording-stop").hidden = msg.phase === "stopped" || state.client.claims.role !== "physician";
  banner.hidden = false;
  banner.dataset.phase = msg.phase;
  document.body.dataset.recording = msg.phase;
}

function setupRecordingBanner() {
  const answer = (accept) => () => state.client.recordingConsent(state.client.recording.recording_id, accept);
  $("recording-accept").onclick = answer(true);
  $("recording-refuse").onclick = answer(false);
  $("recording-withdraw").onclick = answer(false);
  $("recording-stop").onclick = () => state.client.stopRecording();
}

// ---------- far-end control (cart side) ----------

const frozen = {}; // label → {canvasTrack}

async function onDeviceControl({ command }) {
  const { action, label } = command;
  const track = state.localTracks[label];
  if (!track) return;
  if (action === "disable" || action === "enable") {
    state.client.setMuted(label, action === "disable");
  } else if (action === "zoom") {
    const caps = track.getCapabilities ? track.getCapabilities() : {};
    if (caps.zoom) {
      const level = Math.min(caps.zoom.max, Math.max(caps.zoom.min, command.level));
      await track.applyConstraints({ advanced: [{ zoom: level }] });
    } else {
      problem(`zoom: ${t(label)}`);
    }
  } else if (action === "capture") {
    // The physician asks for a full-resolution still of this device.
    await takeLocalStill(label);
  } else if (action === "freeze" && !frozen[label]) {
    // Send the current frame, held, instead of the live camera.
    const v = document.querySelector(`.tile.local[data-label="${label}"] video`);
    const canvas = document.createElement("canvas");
    canvas.width = v.videoWidth;
    canvas.height = v.videoHeight;
    canvas.getContext("2d").drawImage(v, 0, 0);
    const held = canvas.captureStream(5).getVideoTracks()[0];
    frozen[label] = held;
    await state.client.replaceTrack(label, held);
  } else if (action === "unfreeze" && frozen[label]) {
    await state.client.replaceTrack(label, track);
    frozen[label].stop();
    delete frozen[label];
  }
  document.body.dataset.lastControl = `${action}:${label}`;
}

// ---------- quality ----------

async function updateQuality() {
  if (!state.client || state.client.state !== "admitted") return;
  const { inbound } = await state.client.rtpStats();
  const per = new Map();
  for (const s of inbound) {
    if (!s.participant_id) continue;
    const a = per.get(s.participant_id) || { received: 0, lost: 0 };
    a.received += s.packetsReceived || 0;
    a.lost += s.packetsLost || 0;
    per.set(s.participant_id, a);
  }
  for (const [id, now] of per) {
    const before = state.stats.get(id) || { received: 0, lost: 0 };
    state.stats.set(id, now);
    const rec = now.received - before.received;
    const lost = now.lost - before.lost;
    const ratio = rec + lost > 0 ? lost / (rec + lost) : 0;
    const level = rec === 0 ? "poor" : ratio > 0.05 ? "poor" : ratio > 0.01 ? "fair" : "good";
    for (const el of document.querySelectorAll(`.quality[data-participant="${id}"]`)) {
      el.textContent = t(`quality_${level}`);
      el.className = `quality ${level}`;
      el.dataset.level = level;
    }
  }
}

// ---------- flow ----------

function endScreen(key) {
  $("end-text").textContent = t(key);
  show("end");
}

async function enterRoom() {
  const c = state.client;
  show("room");
  $("physician-panel").hidden = c.role !== "physician";
  $("gallery-panel").hidden = c.role !== "physician";
  renderParticipants();
  // After a reconnection the tracks captured the first time are published again.
  if (!state.captured) {
    state.captured = await captureTracks();
    for (const { track, label } of state.captured) if (track.kind === "video") addLocalTile(label, track);
  }
  await c.publish(state.captured);
  if (c.role === "physician") for (const s of await c.listStills()) addToGallery(s);
}

async function join() {
  $("join").disabled = true;
  $("join").textContent = t("joining");
  const c = new ConsultClient({ baseUrl: location.origin, token: state.token });
  state.client = c;
  c.addEventListener("track", (e) => addRemoteTile(e.detail));
  c.addEventListener("waiting", (e) => renderWaiting(e.detail.waiting));
  c.addEventListener("participants", (e) => {
    renderParticipants();
    if (e.detail.left) {
      for (const [id, r] of state.remote) {
        if (r.info.participant_id === e.detail.left) {
          r.tile.remove();
          state.remote.delete(id);
        }
      }
    }
  });
  c.addEventListener("unpublished", (e) => {
    const r = state.remote.get(e.detail.track_id);
    if (r) r.tile.remove();
    state.remote.delete(e.detail.track_id);
  });
  c.addEventListener("still", (e) => addToGallery(e.detail.still));
  c.addEventListener("recording", (e) => renderRecording(e.detail));
  c.addEventListener("bandwidth", (e) => renderBandwidth(e.detail));
  c.addEventListener("layers", () => renderBandwidth(state.lastBandwidth || { audio_only: false, low_link: false, paused_track_ids: [] }));
  setupRecordingBanner();
  c.addEventListener("device", (e) => onDeviceControl(e.detail).catch((err) => problem(String(err))));
  c.addEventListener("upload", (e) => {
    const d = e.detail;
    $("upload-status").textContent = d.done ? t("upload_done") : d.retrying ? t("upload_retry") : d.failed ? `${t("error")} : ${d.failed}` : d.queued ? t("uploading") : "";
    if (d.done) $("upload-status").dataset.lastStill = d.done.still_id;
  });
  c.addEventListener("problem", (e) => problem(e.detail.message));
  c.addEventListener("state", async (e) => {
    const s = e.detail.state;
    document.body.dataset.state = s;
    if (s === "admitted" || s === "waiting") reconnected();
    if (s === "waiting") show("waiting");
    else if (s === "admitted") await enterRoom().catch((err) => problem(String(err)));
    else if (s === "refused" || s === "removed" || s === "ended") endScreen(s);
  });
  c.addEventListener("closed", () => {
    if (c !== state.client || state.leaving) return;
    if (c.state === "admitted" || c.state === "waiting") reconnect(c);
  });
  try {
    await c.connect();
  } catch (e) {
    if (state.reconnectSince) return reconnect(c);
    problem(`${e.code || ""} ${e.message}`);
    $("join").disabled = false;
    $("join").textContent = t("join");
  }
}

// ---------- reconnection ----------

/**
 * The connection to the server dropped (a thin or flapping link): join again with the same
 * token, 1, 2, 4, 8 s apart, while the server keeps our place (an admitted participant who
 * comes back within two minutes is admitted again at once). The room stays on screen.
 */
function reconnect(old) {
  const now = Date.now();
  state.reconnectSince = state.reconnectSince || now;
  state.reconnectAttempts = (state.reconnectAttempts || 0) + 1;
  if (now - state.reconnectSince > RECONNECT_FOR_MS) {
    state.reconnectSince = null;
    return endScreen("closed");
  }
  document.body.dataset.reconnecting = "1";
  problem(t("reconnecting"));
  // What the dropped connection saw, for support (and the rural-link test's report).
  state.droppedLogs = [...(state.droppedLogs || []).slice(-4), { closedWith: old.closedWith || null, log: old.log || [] }];
  old.close();
  for (const [, r] of state.remote) r.tile.remove();
  state.remote.clear();
  const delay = Math.min(8000, 1000 * 2 ** Math.min(3, state.reconnectAttempts - 1));
  setTimeout(() => join().catch((e) => problem(String(e))), delay);
}

function reconnected() {
  if (!state.reconnectSince) return;
  state.reconnectSince = null;
  state.reconnectAttempts = 0;
  state.reconnections = (state.reconnections || 0) + 1;
  delete document.body.dataset.reconnecting;
  problem("");
}

async function main() {
  applyStrings();
  $("lang").onclick = () => {
    toggleLang();
    applyStrings();
    if (state.client) renderParticipants();
  };
  // The join link carries the token: out of the address bar (and so of the history, of a
  // screen share, of a bookmark) once read, kept for this tab only so that a reload still works.
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || sessionStorage.getItem("consult-token");
  if (!token) return show("none");
  if (params.has("token")) {
    sessionStorage.setItem("consult-token", token);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  state.token = token;
  state.claims = tokenClaims(token) || {};
  $("who").textContent = `${state.claims.name || ""} — ${roleText(state.claims.role, state.claims.companion_kind)}`;
  $("cart-devices").hidden = state.claims.role !== "companion";
  show("check");
  try {
    await startPreview();
    await listDevices();
  } catch (e) {
    problem(String(e));
  }
  for (const id of ["sel-camera", "sel-microphone"]) $(id).onchange = () => startPreview().catch((e) => problem(String(e)));
  $("join").onclick = join;
  $("mute-mic").onclick = () => {
    const m = state.localTracks.microphone;
    if (!m) return;
    const muted = m.enabled;
    state.client.setMuted("microphone", muted);
    $("mute-mic").textContent = t(muted ? "unmute" : "mute");
  };
  $("toggle-cam").onclick = () => {
    const cam = state.localTracks.camera;
    if (!cam) return;
    const off = cam.enabled;
    state.client.setMuted("camera", off);
    $("toggle-cam").textContent = t(off ? "camera_on" : "camera_off");
  };
  $("leave").onclick = () => {
    state.leaving = true;
    state.client.leave();
    endScreen("ended");
  };
  $("end").onclick = () => state.client.endConsultation();
  setInterval(() => updateQuality().catch(() => {}), 2000);
}

main();
