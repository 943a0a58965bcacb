"""The talking-head server: a web page, WebRTC sessions, and a websocket per session.

    python server.py [--engine torch|onnx|trt] [--device cpu|cuda] [--avatar IMG]
                     [--host 127.0.0.1] [--port 8080] [--max-sessions N] [--size 512|256]
                     [--checkpoint CKPT] [--threads N] [--peer-timeout S]

HTTP
    GET    /                    the browser client (web/)
    GET    /avatars             portraits to choose from: [{"id", "name", "preview"}]
    POST   /avatars             upload a portrait (raw image bytes, or multipart field "image")
                                -> {"avatar", "name", "preview"}
    GET    /avatars/{id}.jpg    a prepared (aligned) portrait
    POST   /offer               {"sdp", "type": "offer"[, "avatar"]}
                                -> {"sdp", "type": "answer", "session"}
    POST   /sessions/{id}/audio an audio file to speak (any format FFmpeg reads)
    DELETE /sessions/{id}       end a session (also POST /sessions/{id}/close)
    GET    /health              {"status": "ok", "sessions", "max_sessions", ...}
    GET    /metrics             Prometheus text: sessions, fps, latency histograms, frames
Errors are JSON {"error": "..."} with a 4xx/5xx status; no traceback ever reaches a client.

Websocket  GET /ws/{session}
    client -> server
      {"type": "format", "rate": 16000, "channels": 1, "sample": "s16" | "f32"}
                    declares the PCM of the binary messages that follow
      binary        PCM, little-endian, interleaved, in the declared format; queued and spoken
                    at real-time pace (push as fast as you like, up to 120 s ahead)
      {"type": "speak", "text": "...", "voice": "espeak/en-us"}    local TTS
      {"type": "interrupt"}                                         barge-in
      {"type": "style", "values": {"head_amplitude": 1.2, "mouth_amplitude": 0.8}}
      {"type": "avatar", "id": "grace_hopper"}
    server -> client
      {"type": "ready", "session", "styles", "voices", "avatar"}      once, on connect
      {"type": "ok", "for": TYPE, ...}          a control message was carried out
      {"type": "error", "message": "..."}       a refused message; the socket stays open
      {"type": "stats", "fps", "slots_per_second", "latency_ms", "queued_seconds",
       "hearing_speech", ...}                    once a second
    The server closes with 4404 (no such session), 1001 (session ended), 1008 (20 refused
    messages in a row) or 1009 (a message over 1 MiB).

Each session: a Session (shared engine, its own avatar and state) + an AudioFeed (microphone,
websocket PCM, TTS, files) + a MediaClock (one clock paces its video and audio tracks).
"""

import argparse
import asyncio
import hashlib
import io
import json
import logging
import multiprocessing
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from aiohttp import WSCloseCode, WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamError
from PIL import Image

from models.audio_io import AudioInputError, check_rate
from models.avatar import DEFAULT_AVATAR, Avatar, prepare_avatar
from models.face import PortraitError
from stream.engine import DEFAULT_CHECKPOINT, ENGINES, Engine, EngineError, make_engine
from stream.metrics import Metrics
from stream.session import Session
from stream.sources import AudioFeed, decode_audio_bytes
from stream.tts import DEFAULT_VOICE, FESTIVAL_VOICES, SpeechError, speak
from stream.webrtc import MediaClock, is_loopback, use_loopback_for_media

log = logging.getLogger("server")

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
BUNDLED_AVATARS = {"astronaut": DEFAULT_AVATAR,
                   "grace_hopper": ROOT / "assets" / "grace_hopper.jpg"}
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOADED_AVATARS = 64
MAX_WS_MESSAGE = 1024 * 1024
MAX_BAD_MESSAGES = 20
CONNECT_TIMEOUT = 15.0         # an answered offer must connect within this
COMPUTE_NICE = 10             # sessions' compute threads run this much below the media path
SAMPLE_TYPES = {"s16": np.dtype("<i2"), "f32": np.dtype("<f4")}


class ClientError(Exception):
    """A request refused with a message for the client (status, message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class AvatarEntry:
    id: str
    name: str
    avatar: Avatar
    preview: bytes             # JPEG of the aligned crop


@dataclass
class LiveSession:
    id: str
    pc: RTCPeerConnection
    session: Session
    feed: AudioFeed
    clock: MediaClock
    avatar_id: str
    created: float = field(default_factory=time.monotonic)
    connected: float | None = None
    sockets: set = field(default_factory=set)
    tasks: list = field(default_factory=list)
    counted: dict = field(default_factory=dict)      # player/session counters already reported
    recent_latency: list = field(default_factory=list)   # seconds, the last second's frames
    closed: bool = False


class Server:
    def __init__(self, engine: Engine, size: int, max_sessions: int, peer_timeout: float):
        self.engine, self.size = engine, size
        self.max_sessions, self.peer_timeout = max_sessions, peer_timeout
        self.avatars: OrderedDict[str, AvatarEntry] = OrderedDict()
        self.bundled: set[str] = set()
        self.default_avatar = "astronaut"
        self.sessions: dict[str, LiveSession] = {}
        self.starting = 0                                  # offers being answered now
        self.metrics = Metrics()
        self.portraits: ProcessPoolExecutor | None = None     # started by the first upload

    # ---------------------------------------------------------------- avatars

    def add_avatar(self, avatar_id: str, name: str, avatar: Avatar, bundled: bool = False) -> None:
        preview = io.BytesIO()
        Image.fromarray(avatar.crop()).save(preview, "JPEG", quality=88)
        self.avatars[avatar_id] = AvatarEntry(avatar_id, name, avatar, preview.getvalue())
        self.avatars.move_to_end(avatar_id)
        if bundled:
            self.bundled.add(avatar_id)
        uploads = [k for k in self.avatars if k not in self.bundled]
        for old in uploads[:-MAX_UPLOADED_AVATARS]:
            del self.avatars[old]                          # sessions keep their own reference

    def avatar(self, avatar_id) -> AvatarEntry:
        if avatar_id is None:
            avatar_id = self.default_avatar
        if not isinstance(avatar_id, str) or avatar_id not in self.avatars:
            raise ClientError(400, f"unknown avatar {avatar_id!r}: GET /avatars lists them, "
                                   "POST /avatars adds one")
        return self.avatars[avatar_id]

    async def prepare_upload(self, data: bytes) -> Avatar:
        """Uploaded portraits are prepared in a child process: face detection holds the GIL
        for up to seconds, which would stall every session's media clock."""
        if self.portraits is None:
            self.portraits = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(
                "spawn"), initializer=_portrait_process_start)
        loop = asyncio.get_running_loop()
        try:
            arrays = await loop.run_in_executor(self.portraits, _prepare_arrays, data,
                                                self.size)
        except PortraitError as e:
            raise ClientError(422, str(e)) from None
        except BrokenProcessPool:                      # the child died on this image
            self.portraits = None
            raise ClientError(422, "this image could not be processed") from None
        return Avatar(**{k: torch.from_numpy(v) for k, v in arrays.items()})

    def live(self, session_id: str) -> LiveSession:
        live = self.sessions.get(session_id)
        if live is None:
            raise ClientError(404, f"no session {session_id!r} (it ended or never existed)")
        return live

    # ---------------------------------------------------------------- sessions

    async def start_session(self, sdp: str, avatar: AvatarEntry) -> tuple[LiveSession, str]:
        if len(self.sessions) + self.starting >= self.max_sessions:
            self.metrics.count("sessions_rejected_total")
            raise ClientError(503, f"the server is full: {self.max_sessions} sessions at once "
                                   "(--max-sessions); try again later")
        self.starting += 1
        loop = asyncio.get_running_loop()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        remote_tracks = []                          # announced while the offer is applied
        pc.on("track", remote_tracks.append)
        live = None
        try:
            try:
                check_sdp(sdp)
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as e:
                raise ClientError(400, f"malformed SDP offer: {_short(e)}") from None
            kinds = {t.kind for t in pc.getTransceivers()}
            if not {"audio", "video"} <= kinds:
                raise ClientError(400, "the offer must have an audio and a video section "
                                       "(the avatar is sent as video + audio)")
            session = await loop.run_in_executor(None, at_lower_priority, lambda: Session(
                self.engine, avatar.avatar, realtime=True))
            feed = AudioFeed(session)
            clock = MediaClock(session, feed, loop)
            live = LiveSession(secrets.token_urlsafe(8), pc, session, feed, clock, avatar.id)
            self._wire(live, remote_tracks)
            pc.addTrack(clock.video)
            pc.addTrack(clock.audio)
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await pc.close()
            if live is not None:
                await loop.run_in_executor(None, _stop_threads, live)
            raise
        finally:
            self.starting -= 1
        self.sessions[live.id] = live
        clock.start()
        self.metrics.count("sessions_started_total")
        log.info("session %s started (avatar %s); %d live", live.id, avatar.id,
                 len(self.sessions))
        return live, pc.localDescription.sdp

    def _wire(self, live: LiveSession, remote_tracks: list) -> None:
        pc = live.pc
        for track in remote_tracks:
            if track.kind == "audio":
                live.tasks.append(asyncio.ensure_future(_microphone(track, live.feed)))
            else:                                 # a camera is not used: drain it
                sink = MediaBlackhole()
                sink.addTrack(track)
                live.tasks.append(asyncio.ensure_future(sink.start()))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState == "connected" and live.connected is None:
                live.connected = time.monotonic()
            elif pc.connectionState in ("failed", "closed"):
                await self.end_session(live, f"connection {pc.connectionState}")

    async def end_session(self, live: LiveSession, reason: str) -> None:
        if live.closed:
            return
        live.closed = True
        self.sessions.pop(live.id, None)
        log.info("session %s ended: %s; %d live", live.id, reason, len(self.sessions))
        try:
            self._collect(live)
        except Exception:
            log.exception("final metrics of session %s", live.id)
        live.clock.end_tracks()
        for task in live.tasks:
            task.cancel()
        message = f"session ended: {reason}"[:120].encode()
        for ws in list(live.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=message)
        await asyncio.get_running_loop().run_in_executor(None, _stop_threads, live)
        await live.pc.close()

    async def watch(self) -> None:
        """Once a second: collect metrics and end sessions whose peer is gone."""
        while True:
            await asyncio.sleep(1.0)
            for live in list(self.sessions.values()):
                try:
                    self._collect(live)
                    reason = await self._gone(live)
                    if reason:
                        if live.clock.error:
                            self.metrics.count("session_errors_total")
                        await self.end_session(live, reason)
                except Exception:               # the watchdog itself must keep running
                    log.exception("watching session %s", live.id)

    async def _gone(self, live: LiveSession) -> str | None:
        now = time.monotonic()
        if live.clock.error:
            return f"internal error ({live.clock.error})"
        if live.connected is None:
            return "never connected" if now - live.created > CONNECT_TIMEOUT else None
        if live.clock.first_sent is None:
            return None                   # nothing sent yet: the peer has nothing to report on
        heard = max(live.connected, live.clock.first_sent)
        for stats in (await live.pc.getStats()).values():
            if stats.type == "remote-inbound-rtp":        # an RTCP receiver report from the peer
                heard = max(heard, now - (time.time() - stats.timestamp.timestamp()))
        if now - heard > self.peer_timeout:
            return f"peer silent for {now - heard:.0f} s"
        return None

    def _collect(self, live: LiveSession) -> None:
        """Move a session's new counts into the server metrics."""
        p, c = live.clock.player.stats, live.counted
        now = {"frames_shown_total": p.shown, "frames_repeated_total": p.repeated,
               "frames_skipped_total": p.skipped,
               "frames_dropped_total": live.session.dropped_frames + live.clock.video.dropped,
               "audio_frames_dropped_total": live.clock.audio.dropped}
        for name, value in now.items():
            self.metrics.count(name, value - c.get(name, 0))
            c[name] = value
        latencies = _drain(live.clock.latency_s)
        self.metrics.observe_latency(latencies, _drain(live.clock.render_latency_s))
        if latencies:
            live.recent_latency = latencies

    def session_stats(self, live: LiveSession) -> dict:
        fps, slots = live.clock.rates()
        p = live.clock.player.stats
        recent = live.recent_latency
        return {"type": "stats", "fps": round(fps, 2), "slots_per_second": round(slots, 2),
                "latency_ms": round(1000 * float(np.median(recent)), 1) if recent else None,
                "queued_seconds": round(live.feed.queued_seconds, 2),
                "hearing_speech": live.session.audio.speaking(),
                "shown": p.shown, "repeated": p.repeated, "skipped": p.skipped,
                "dropped": live.session.dropped_frames + live.clock.video.dropped,
                "added_delay_ms": round(1000 * live.clock.added_delay),
                "stages_ms": {k: round(v, 1) for k, v in live.session.stats.stage_means().items()},
                "avatar": live.avatar_id}


def check_sdp(sdp: str) -> None:
    """What aiortc's lenient parser lets through but no WebRTC offer lacks."""
    lines = [line for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise ValueError("it does not start with v=0")
    bad = next((line for line in lines if len(line) < 2 or line[1] != "=" or
                not line[0].isalpha()), None)
    if bad is not None:
        raise ValueError(f"line {bad[:40]!r} is not SDP")
    for needed, what in (("m=", "media sections"), ("a=ice-ufrag:", "ICE credentials"),
                         ("a=fingerprint:", "DTLS fingerprint")):
        if not any(line.startswith(needed) for line in lines):
            raise ValueError(f"no {what}")


def at_lower_priority(make):
    """make() in a fresh thread that first lowers its own priority (nice + COMPUTE_NICE): the
    threads it starts, a session's motion and render workers, inherit that priority. When
    the CPU is short, the media clocks and the network (event loop, encoders) come first:
    pictures may repeat, but sound and pacing go on."""
    result = {}

    def run():
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid)
                           + COMPUTE_NICE)
        except (AttributeError, OSError):          # not Linux: same priority, still works
            pass
        try:
            result["value"] = make()
        except BaseException as e:
            result["error"] = e

    worker = threading.Thread(target=run, name="session-start")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _stop_threads(live: LiveSession) -> None:
    live.clock.stop()
    live.session.close()


async def _microphone(track, feed: AudioFeed) -> None:
    """The peer's microphone into the session's audio feed."""
    try:
        while True:
            frame = await track.recv()
            pcm = frame.to_ndarray()                       # packed [1, n*ch] / planar [ch, n]
            channels = len(frame.layout.channels)
            if frame.format.is_planar:
                pcm = pcm.T
            try:
                feed.live(pcm.reshape(-1), frame.sample_rate, min(channels, 2))
            except AudioInputError as e:
                log.warning("microphone audio refused: %s", e)
    except MediaStreamError:
        pass
    except Exception as e:                          # this session's microphone only
        log.warning("microphone stopped: %s", _short(e))


def _drain(values) -> list:
    out = []
    while values:
        out.append(values.popleft())
    return out


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return text[:200]


# ------------------------------------------------------------------------------ HTTP handlers

routes = web.RouteTableDef()


def server_of(request) -> Server:
    return request.app["server"]


async def read_json(request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ClientError(400, "the request body must be JSON") from None
    if not isinstance(body, dict):
        raise ClientError(400, "the request body must be a JSON object")
    return body


@routes.get("/")
async def index(request):
    return web.FileResponse(WEB / "index.html")


@routes.post("/offer")
async def offer(request):
    server = server_of(request)
    params = await read_json(request)
    if params.get("type") != "offer" or not isinstance(params.get("sdp"), str):
        raise ClientError(400, 'expected {"sdp": "...", "type": "offer"[, "avatar": id]}')
    avatar = server.avatar(params.get("avatar"))
    live, sdp = await server.start_session(params["sdp"], avatar)
    return web.json_response({"sdp": sdp, "type": "answer", "session": live.id})


@routes.get("/avatars")
async def list_avatars(request):
    server = server_of(request)
    return web.json_response([{"id": a.id, "name": a.name, "preview": f"/avatars/{a.id}.jpg",
                               "default": a.id == server.default_avatar}
                              for a in server.avatars.values()])


@routes.post("/avatars")
async def upload_avatar(request):
    server = server_of(request)
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES + 4096:
        raise ClientError(413, f"the upload is too large: at most {MAX_UPLOAD_BYTES // 2**20} MiB")
    name = "upload"
    if request.content_type.startswith("multipart/"):
        data = None
        async for part in await request.multipart():
            if part.name == "image":
                name = Path(part.filename or name).stem[:40] or name
                data = await part.read()
        if data is None:
            raise ClientError(400, 'the multipart upload has no "image" field')
    else:
        data = await request.read()
    if len(data) > MAX_UPLOAD_BYTES:
        raise ClientError(413, f"the upload is too large: at most {MAX_UPLOAD_BYTES // 2**20} MiB")
    if not data:
        raise ClientError(400, "the upload is empty: send the image bytes as the body")
    avatar_id = hashlib.sha256(data).hexdigest()[:12]
    if avatar_id not in server.avatars:
        server.add_avatar(avatar_id, name, await server.prepare_upload(data))
    return web.json_response({"avatar": avatar_id, "name": server.avatars[avatar_id].name,
                              "preview": f"/avatars/{avatar_id}.jpg"})


def _prepare(source, size: int) -> Avatar:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # several faces: the largest is used
        return prepare_avatar(source, size=size)


def _prepare_arrays(source, size: int) -> dict[str, np.ndarray]:
    """In the portrait process: an avatar as plain arrays (cheap to send back)."""
    avatar = _prepare(source, size)
    return {f.name: getattr(avatar, f.name).numpy() for f in fields(Avatar)}


def _portrait_process_start() -> None:
    os.nice(COMPUTE_NICE)


@routes.get("/avatars/{id}.jpg")
async def avatar_preview(request):
    entry = server_of(request).avatar(request.match_info["id"])
    return web.Response(body=entry.preview, content_type="image/jpeg")


@routes.post("/sessions/{id}/audio")
async def session_audio(request):
    live = server_of(request).live(request.match_info["id"])
    data = await request.read()
    loop = asyncio.get_running_loop()
    try:
        audio, rate = await loop.run_in_executor(None, decode_audio_bytes, data)
        queued = live.feed.queue(audio, rate)
    except AudioInputError as e:
        raise ClientError(422, str(e)) from None
    return web.json_response({"seconds": round(audio.size / rate, 3),
                              "queued_seconds": round(queued, 3)})


@routes.delete("/sessions/{id}")
@routes.post("/sessions/{id}/close")              # navigator.sendBeacon when a page closes
async def delete_session(request):
    server = server_of(request)
    await server.end_session(server.live(request.match_info["id"]), "closed by the client")
    return web.json_response({"ended": request.match_info["id"]})


@routes.get("/health")
async def health(request):
    server = server_of(request)
    return web.json_response({"status": "ok", "sessions": len(server.sessions),
                              "max_sessions": server.max_sessions, "engine": server.engine.name,
                              "size": server.size, "avatars": len(server.avatars)})


@routes.get("/metrics")
async def metrics(request):
    server = server_of(request)
    for live in list(server.sessions.values()):
        server._collect(live)
    rates = {live.id: live.clock.rates() for live in server.sessions.values()}
    text = server.metrics.render(
        gauges={"sessions": len(server.sessions), "sessions_max": server.max_sessions},
        labelled={"session_fps": {k: round(v[0], 2) for k, v in rates.items()},
                  "session_slots_per_second": {k: round(v[1], 2) for k, v in rates.items()}})
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Version": "0.0.4"})


# ------------------------------------------------------------------------------ websocket

@routes.get("/ws/{id}")
async def websocket(request):
    server = server_of(request)
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_WS_MESSAGE)
    if not ws.can_prepare(request).ok:
        raise ClientError(400, "this is a websocket endpoint")
    await ws.prepare(request)
    live = server.sessions.get(request.match_info["id"])
    if live is None or live.closed:
        await ws.close(code=4404, message=b"no such session (it ended or never existed)")
        return ws
    live.sockets.add(ws)
    channel = ControlChannel(server, live, ws)
    stats = asyncio.ensure_future(channel.send_stats())
    try:
        await channel.send({"type": "ready", "session": live.id, "avatar": live.avatar_id,
                            "styles": list(server.engine.motion.config.style_names),
                            "voices": [DEFAULT_VOICE, "espeak/en-gb", "espeak/en-us+f3"]
                            + [f"festival/{v}" for v in FESTIVAL_VOICES]})
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await channel.handle(msg)
                if channel.bad_in_a_row >= MAX_BAD_MESSAGES:
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION,
                                   message=b"too many bad messages")
                    break
            elif msg.type == WSMsgType.ERROR:
                break
    except Exception as e:                               # never a traceback to the client
        log.warning("websocket of session %s: %s", live.id, _short(e))
        if not ws.closed:
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
    finally:
        stats.cancel()
        live.sockets.discard(ws)
    return ws


class ControlChannel:
    """One websocket of one session: PCM in, control messages in, stats out."""

    def __init__(self, server: Server, live: LiveSession, ws):
        self.server, self.live, self.ws = server, live, ws
        self.format: tuple[int, int, np.dtype] | None = None    # rate, channels, sample type
        self.bad_in_a_row = 0

    async def send(self, message: dict) -> None:
        if not self.ws.closed:
            await self.ws.send_json(message)

    async def send_stats(self) -> None:
        while not self.ws.closed:
            await asyncio.sleep(1.0)
            await self.send(self.server.session_stats(self.live))

    async def handle(self, msg) -> None:
        try:
            if msg.type == WSMsgType.BINARY:
                self.push_pcm(msg.data)
            else:
                await self.control(msg.data)
            self.bad_in_a_row = 0
        except (ClientError, AudioInputError, SpeechError, PortraitError, ValueError) as e:
            self.bad_in_a_row += 1
            self.server.metrics.count("websocket_errors_total")
            await self.send({"type": "error", "message": str(e)})

    def push_pcm(self, data: bytes) -> None:
        if self.format is None:
            raise ClientError(400, 'binary audio before a format: send {"type": "format", '
                                   '"rate": 16000, "channels": 1, "sample": "s16"} first')
        rate, channels, dtype = self.format
        if len(data) % (dtype.itemsize * channels):
            raise AudioInputError(f"{len(data)} bytes is not a whole number of "
                                  f"{channels}-channel {dtype.itemsize * 8}-bit samples")
        pcm = np.frombuffer(data, dtype).astype(dtype.newbyteorder("="))
        self.live.feed.queue(pcm, rate, channels)

    async def control(self, text: str) -> None:
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            raise ClientError(400, "text messages must be JSON objects") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ClientError(400, 'a control message is a JSON object with a "type"')
        kind = message["type"]
        loop = asyncio.get_running_loop()
        live = self.live
        if kind == "format":
            rate, channels = message.get("rate"), message.get("channels", 1)
            sample = message.get("sample", "s16")
            if sample not in SAMPLE_TYPES:
                raise ClientError(400, f"sample must be one of {sorted(SAMPLE_TYPES)}")
            check_rate(rate)
            if channels not in (1, 2):
                raise ClientError(400, "channels must be 1 or 2")
            self.format = (rate, channels, SAMPLE_TYPES[sample])
            await self.send({"type": "ok", "for": "format"})
        elif kind == "speak":
            text = message.get("text")
            if not isinstance(text, str):
                raise ClientError(400, 'speak needs "text"')
            voice = message.get("voice") or DEFAULT_VOICE
            audio, rate = await loop.run_in_executor(None, speak, text, str(voice))
            queued = live.feed.queue(audio, rate)
            await self.send({"type": "ok", "for": "speak", "seconds": round(audio.size / rate, 3),
                             "queued_seconds": round(queued, 3)})
        elif kind == "interrupt":
            cut = await loop.run_in_executor(None, live.clock.interrupt)
            await self.send({"type": "ok", "for": "interrupt", "cut_frame": cut})
        elif kind == "style":
            values = message.get("values")
            if not isinstance(values, dict) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 3
                    for v in values.values()):
                raise ClientError(400, 'style needs "values": {name: number in 0..3}')
            await loop.run_in_executor(None, live.session.set_style, values)
            await self.send({"type": "ok", "for": "style", "values": values})
        elif kind == "avatar":
            entry = self.server.avatar(message.get("id"))
            live.session.avatar = entry.avatar              # the next chunk renders it
            live.avatar_id = entry.id
            await self.send({"type": "ok", "for": "avatar", "id": entry.id})
        else:
            raise ClientError(400, f"unknown message type {kind!r}: use format, speak, "
                                   "interrupt, style or avatar")


# ------------------------------------------------------------------------------ the app

@web.middleware
async def json_errors(request, handler):
    """Every error is a JSON {"error": message}; tracebacks stay in the server log."""
    server = server_of(request)
    try:
        return await handler(request)
    except ClientError as e:
        server.metrics.count("bad_requests_total")
        return web.json_response({"error": str(e)}, status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        server.metrics.count("bad_requests_total")
        message = {413: f"the request is too large (at most {MAX_UPLOAD_BYTES // 2**20} MiB)"}
        return web.json_response({"error": message.get(e.status, e.reason)}, status=e.status)
    except Exception:
        log.exception("error in %s %s", request.method, request.path)
        return web.json_response({"error": "internal server error"}, status=500)


def make_app(server: Server) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_UPLOAD_BYTES + 65536)
    app["server"] = server
    app.add_routes(routes)
    app.router.add_static("/static/", WEB)

    async def start_watch(app):
        app["watch"] = asyncio.ensure_future(server.watch())

    async def stop_all(app):
        app["watch"].cancel()
        for live in list(server.sessions.values()):
            await server.end_session(live, "server stopping")
        if server.portraits is not None:
            server.portraits.shutdown(cancel_futures=True)

    app.on_startup.append(start_watch)
    app.on_shutdown.append(stop_all)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="torch", choices=[*ENGINES, "trt"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="motion checkpoint (default: assets/motion_student.pt)")
    parser.add_argument("--avatar", help="default portrait (default: the bundled astronaut)")
    parser.add_argument("--size", type=int, default=512, choices=[256, 512],
                        help="working size of the avatar, pixels")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-sessions", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per operation (default 1: every session runs "
                             "its stages on threads of their own; 0: torch's default)")
    parser.add_argument("--peer-timeout", type=float, default=10.0,
                        help="end a session when its peer sends nothing for this many seconds")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    if args.max_sessions < 1:
        parser.error("--max-sessions must be at least 1")

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        engine = make_engine(args.engine, args.checkpoint, args.device)
        server = Server(engine, args.size, args.max_sessions, args.peer_timeout)
        for avatar_id, path in BUNDLED_AVATARS.items():
            server.add_avatar(avatar_id, avatar_id.replace("_", " "), _prepare(path, args.size),
                              bundled=True)
        if args.avatar:
            server.add_avatar("default", Path(args.avatar).stem, _prepare(args.avatar, args.size),
                              bundled=True)
            server.default_avatar = "default"
        # warm up (the onnx engine exports its renderer on first use): no first-session stall
        engine.render(server.avatars[server.default_avatar].avatar,
                      np.zeros((2, engine.motion.config.motion_dim), np.float32))
    except (EngineError, PortraitError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if is_loopback(args.host):
        use_loopback_for_media()
    print(f"serving http://{args.host}:{args.port} ({engine.name} engine, {args.size} px, "
          f"up to {args.max_sessions} sessions)", flush=True)
    try:
        web.run_app(make_app(server), host=args.host, port=args.port, print=None,
                    access_log=None, handle_signals=True)
    except OSError as e:
        print(f"error: cannot serve on {args.host}:{args.port}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
