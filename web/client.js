// The browser client: one WebRTC peer connection (microphone up, avatar video + audio down)
// and one websocket to the same session (text, files, interrupt, style, avatar, stats).
// Plain JavaScript, no build step. State is kept in `app` (also window.talkingHead, which
// the browser test reads).
"use strict";

const app = {
  pc: null,
  ws: null,
  session: null,
  avatar: null,            // chosen avatar id (a photo or a video)
  mic: null,               // the microphone MediaStreamTrack while it is on
  audioSender: null,
  server: {},              // the last {"type": "stats"} message from the server
  stats: {},               // what the overlay shows (numbers), updated every second
  previous: null,          // the previous getStats() sample, for rates
  timer: null,
};
window.talkingHead = app;

const $ = (id) => document.getElementById(id);

// A server that listens beyond this machine needs its access token: the page is opened as
// /?token=..., and passes the token on (a header for fetch; the query for what cannot send
// headers: websocket, images, beacons).
const token = new URLSearchParams(location.search).get("token");
const withToken = (url) =>
  token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
const uploaded = [];       // avatars this page uploaded (the server lists only its own)

function say(text, error = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", error);
}

async function requestJSON(url, options = {}) {
  if (token) options.headers = { ...(options.headers || {}), Authorization: `Bearer ${token}` };
  const response = await fetch(url, options);
  let body = {};
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// ------------------------------------------------------------------ avatars

async function loadAvatars(select) {
  const avatars = [...(await requestJSON("/avatars")), ...uploaded];
  app.kinds = Object.fromEntries(avatars.map((a) => [a.id, a.kind]));
  const box = $("avatars");
  box.replaceChildren();
  for (const a of avatars) {
    const button = document.createElement("button");
    button.title = a.kind === "video" ? `${a.name} (video)` : a.name;
    button.dataset.id = a.id;
    button.classList.toggle("video", a.kind === "video");
    const img = document.createElement("img");
    img.src = withToken(a.preview);
    img.alt = a.name;
    button.append(img);
    button.addEventListener("click", () => chooseAvatar(a.id));
    box.append(button);
  }
  const fallback = (avatars.find((a) => a.default) || avatars[0] || {}).id;
  chooseAvatar(select || app.avatar || fallback);
}

function chooseAvatar(id) {
  app.avatar = id;
  for (const b of $("avatars").children) b.classList.toggle("selected", b.dataset.id === id);
  showVideoControls();
  if (app.ws && app.ws.readyState === WebSocket.OPEN) send({ type: "avatar", id });
}

const VIDEO_NAME = /\.(mp4|mov|webm|mkv|m4v|avi)$/i;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function uploadAvatar(file) {
  // A photo is ready when the upload answers; a video is prepared on the server (seconds to
  // minutes): the answer is a job, followed here until its avatar is ready or it fails.
  const video = file.type.startsWith("video/") || VIDEO_NAME.test(file.name);
  const picture = $("upload-preview"), clip = $("upload-video");
  URL.revokeObjectURL(picture.src);
  URL.revokeObjectURL(clip.src);
  picture.hidden = video;
  clip.hidden = !video;
  (video ? clip : picture).src = URL.createObjectURL(file);   // (the clip plays muted)
  say(`Uploading ${file.name}…`);
  const form = new FormData();
  form.append(video ? "video" : "image", file);
  try {
    let result = await requestJSON("/avatars", { method: "POST", body: form });
    if (result.job) result = await followJob(result, file.name);
    uploaded.push({ id: result.avatar, name: result.name, kind: result.kind,
                    preview: result.preview });
    await loadAvatars(result.avatar);
    say(`${result.kind === "video" ? "Video avatar" : "Portrait"} ready: ${file.name}`);
  } catch (e) {
    say(`${file.name} refused: ${e.message}`, true);
  } finally {
    $("upload-progress").hidden = true;
  }
}

async function followJob(job, name) {
  // GET /avatars/jobs/{id} twice a second; a failed job answers with its error (thrown)
  const box = $("upload-progress");
  box.hidden = false;
  for (;;) {
    box.querySelector("progress").value = job.progress || 0;
    const step = job.state === "queued" ? "waiting for other videos" : job.stage;
    box.querySelector("span").textContent = `${step} ${Math.round(100 * (job.progress || 0))}%`;
    say(`Preparing ${name}: ${step}…`);
    if (job.state === "done") return job;
    await sleep(500);
    job = await requestJSON(`/avatars/jobs/${job.job}`);
  }
}

// ------------------------------------------------------------------ connection

function waitForIceGathering(pc) {
  // aiortc does not trickle candidates: send the offer with all of them
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 3000);
  });
}

async function connect() {
  $("connect").disabled = true;
  say("Connecting…");
  const pc = new RTCPeerConnection({ iceServers: [] });
  app.pc = pc;
  app.audioSender = pc.addTransceiver("audio", { direction: "sendrecv" }).sender;
  pc.addTransceiver("video", { direction: "recvonly" });
  const stream = new MediaStream();
  pc.addEventListener("track", (event) => {
    stream.addTrack(event.track);
    $("video").srcObject = stream;
    $("placeholder").hidden = true;
  });
  pc.addEventListener("connectionstatechange", () => {
    const state = pc.connectionState;
    $("status").textContent = state === "connected" ? `live · session ${app.session}` : state;
    $("status").classList.toggle("live", state === "connected");
    if (state === "failed") disconnect("The connection failed.");
  });
  try {
    if ($("mic").checked) await microphone(true);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    const answer = await requestJSON("/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", avatar: app.avatar }),
    });
    app.session = answer.session;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    openSocket(answer.session);
    app.timer = setInterval(updateStats, 1000);
    $("connect").textContent = "Disconnect";
    $("connect").disabled = false;
    for (const id of ["interrupt", "speak", "audio-file"]) $(id).disabled = false;
    say("Connected. Talk, type, or play a file.");
  } catch (e) {
    disconnect(`Could not connect: ${e.message}`, true);
  }
}

function openSocket(session) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(withToken(`${scheme}://${location.host}/ws/${session}`));
  app.ws = ws;
  ws.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      buildStyles(message.styles);
      buildVoices(message.voices);
    } else if (message.type === "stats") {
      app.server = message;
    } else if (message.type === "error") {
      if (message.fatal) ws.fatal = message.message;     // the session failed: it ends
      say(message.message, true);
    } else if (message.type === "ok" && message.for === "speak") {
      say(`Speaking ${message.seconds.toFixed(1)} s of text.`);
    }
  });
  ws.addEventListener("close", (event) => {
    const why = ws.fatal || `Session closed by the server: ${event.reason || event.code}`;
    if (app.ws === ws) disconnect(why, true, true);
  });
}

function send(message) {
  if (app.ws && app.ws.readyState === WebSocket.OPEN) app.ws.send(JSON.stringify(message));
}

async function disconnect(reason = "Disconnected.", error = false, serverEnded = false) {
  clearInterval(app.timer);
  const { session, ws, pc, mic } = app;
  Object.assign(app, { pc: null, ws: null, session: null, mic: null, previous: null,
                       server: {}, stats: {} });
  // end the session first, so that closing the connection does not race it
  if (session && !serverEnded) {
    await requestJSON(`/sessions/${session}`, { method: "DELETE" }).catch(() => {});
  }
  if (ws) ws.close(1000);
  if (pc) pc.close();
  if (mic) mic.stop();
  $("connect").textContent = "Connect";
  $("connect").disabled = false;
  for (const id of ["interrupt", "speak", "audio-file"]) $(id).disabled = true;
  $("status").textContent = "not connected";
  $("status").classList.remove("live");
  $("placeholder").hidden = false;
  say(reason, error);
}

async function microphone(on) {
  if (!on) {
    if (app.audioSender) await app.audioSender.replaceTrack(null);
    if (app.mic) app.mic.stop();
    app.mic = null;
    return;
  }
  const echo = $("echo").checked;
  try {
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: echo, noiseSuppression: echo, autoGainControl: echo },
    });
    app.mic = media.getAudioTracks()[0];
    if (app.audioSender) await app.audioSender.replaceTrack(app.mic);
  } catch (e) {
    $("mic").checked = false;
    say(`Microphone unavailable: ${e.message}`, true);
  }
}

// ------------------------------------------------------------------ speech sources and style

function buildVoices(voices) {
  const select = $("voice");
  select.replaceChildren();
  for (const v of voices || []) select.append(new Option(v, v));
}

// The model's style controls (0..2, 1 = as trained), and for a video avatar the share of
// generated head motion added to its recording's (0..1, 0 = the recording's own alone).
function buildStyles(names) {
  const box = $("styles");
  box.replaceChildren();
  const values = {};
  for (const name of names || []) box.append(slider(name, values, 0, 2, 1));
  const head = slider("video_head_motion", values, 0, 1, 0);
  head.classList.add("video-only");
  box.append(head);
  showVideoControls();
}

function slider(name, values, min, max, initial) {
  values[name] = initial;
  const label = document.createElement("label");
  const title = document.createElement("span");
  const input = Object.assign(document.createElement("input"),
    { type: "range", min: String(min), max: String(max), step: "0.05", value: String(initial) });
  title.textContent = `${name.replace(/_/g, " ")}: ${initial.toFixed(2)}`;
  input.addEventListener("input", () => {
    values[name] = Number(input.value);
    title.textContent = `${name.replace(/_/g, " ")}: ${values[name].toFixed(2)}`;
    send({ type: "style", values });
  });
  label.append(title, input);
  return label;
}

function showVideoControls() {
  const video = (app.kinds || {})[app.avatar] === "video";
  for (const e of document.querySelectorAll(".video-only")) e.hidden = !video;
}

async function playFile(file) {
  if (!app.session) return;
  say(`Sending ${file.name}…`);
  try {
    const result = await requestJSON(`/sessions/${app.session}/audio`, { method: "POST", body: file });
    say(`Playing ${file.name} (${result.seconds.toFixed(1)} s).`);
  } catch (e) {
    say(`Audio file refused: ${e.message}`, true);
  }
}

// ------------------------------------------------------------------ statistics overlay

async function updateStats() {
  if (!app.pc) return;
  const report = await app.pc.getStats();
  let video = null, audio = null, pair = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") video = s;
    if (s.type === "inbound-rtp" && s.kind === "audio") audio = s;
    if (s.type === "candidate-pair" && (s.selected || (s.nominated && s.state === "succeeded"))) pair = s;
  });
  if (!video) return;
  const before = app.previous;
  app.previous = { video, audio };
  const stats = app.stats;
  stats.framesDecoded = video.framesDecoded || 0;
  if (before) {
    const seconds = (video.timestamp - before.video.timestamp) / 1000;
    const frames = stats.framesDecoded - (before.video.framesDecoded || 0);
    stats.fps = seconds > 0 ? frames / seconds : 0;
    const emitted = (video.jitterBufferEmittedCount || 0) - (before.video.jitterBufferEmittedCount || 0);
    const buffered = (video.jitterBufferDelay || 0) - (before.video.jitterBufferDelay || 0);
    const decoding = (video.totalDecodeTime || 0) - (before.video.totalDecodeTime || 0);
    stats.jitterBufferMs = emitted > 0 ? 1000 * buffered / emitted : null;
    stats.decodeMs = frames > 0 ? 1000 * decoding / frames : null;
  }
  // audio in -> frame shown: the network both ways (one round trip), the server's pipeline
  // (audio arrived -> frame out, reported over the websocket), the jitter buffer, decoding.
  stats.rttMs = pair && pair.currentRoundTripTime != null ? 1000 * pair.currentRoundTripTime : null;
  const parts = [app.server.latency_ms, stats.rttMs, stats.jitterBufferMs, stats.decodeMs];
  stats.latencyMs = parts.every((p) => p != null) ? parts.reduce((a, b) => a + b, 0) : null;
  // A/V offset: capture time (sender clock) of the picture shown minus that of the sound
  // played; positive = the picture is ahead of the sound.
  const vt = video.estimatedPlayoutTimestamp, at = audio && audio.estimatedPlayoutTimestamp;
  stats.avOffsetMs = vt && at ? vt - at : null;
  stats.freshFps = app.server.fps;
  stats.renderStride = app.server.render_stride;
  showStats(stats);
}

function showStats(s) {
  const ms = (v) => (v == null ? "–" : `${Math.round(v)} ms`);
  $("stat-fps").textContent = s.fps == null ? "–" : `${s.fps.toFixed(1)} fps`;
  $("stat-fresh").textContent = s.freshFps == null ? "–" : `${s.freshFps.toFixed(1)} fps` +
    (s.renderStride > 1 ? ` (every ${s.renderStride === 2 ? "2nd" : "3rd"} frame: the server ` +
     "is short of compute)" : "");
  $("stat-latency").textContent = ms(s.latencyMs);
  $("stat-offset").textContent = s.avOffsetMs == null ? "–" :
    `${s.avOffsetMs > 0 ? "+" : ""}${Math.round(s.avOffsetMs)} ms`;
  $("stat-decoded").textContent = `${s.framesDecoded} frames`;
}

// ------------------------------------------------------------------ wiring

$("connect").addEventListener("click", () => (app.pc ? disconnect() : connect()));
$("interrupt").addEventListener("click", () => send({ type: "interrupt" }));
$("mic").addEventListener("change", (e) => { if (app.pc) microphone(e.target.checked); });
$("upload").addEventListener("change", (e) => { if (e.target.files[0]) uploadAvatar(e.target.files[0]); });
$("audio-file").addEventListener("change", (e) => { if (e.target.files[0]) playFile(e.target.files[0]); });
$("speak").addEventListener("click", () => {
  const text = $("text").value.trim();
  if (text) send({ type: "speak", text, voice: $("voice").value });
});
window.addEventListener("pagehide", () => {
  if (app.session) navigator.sendBeacon(withToken(`/sessions/${app.session}/close`));
});

loadAvatars().catch((e) => say(`Cannot list avatars: ${e.message}`, true));
