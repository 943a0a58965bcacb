"""The websocket of a session (GET /ws/{session}): PCM and control messages in, stats out.

    client -> server
      {"type": "format", "rate": 16000, "channels": 1, "sample": "s16" | "f32"}
                    declares the PCM of the binary messages that follow
      binary        PCM, little-endian, interleaved, in the declared format; queued and spoken
                    at real-time pace (push as fast as you like, up to 120 s ahead)
      {"type": "speak", "text": "...", "voice": "espeak/en-us"}    local TTS
      {"type": "interrupt"}                                         barge-in
      {"type": "style", "values": {"head_amplitude": 1.2, "mouth_amplitude": 0.8}}
                                          (a video avatar also "video_head_motion": 0..1)
      {"type": "avatar", "id": "grace_hopper"}                     photo or video avatar
    server -> client
      {"type": "ready", "session", "styles", "voices", "avatar"}      once, on connect
      {"type": "ok", "for": TYPE, ...}          a control message was carried out
      {"type": "error", "message": "..."}       a refused message; the socket stays open
      {"type": "stats", "fps", "slots_per_second", "latency_ms", "queued_seconds",
       "hearing_speech", ...}                    once a second
      {"type": "error", "fatal": true, "message": "..."}   the session failed; it ends
    The server closes with 4404 (no such session), 4410 (on Ray: the
    replica that held the session is gone), 1001 (session ended), 1008 (20 refused
    messages in a row), 1009 (a message over --max-ws-message), 1011 (the session failed),
    1013 (too many websockets on the session). A client that stops reading is dropped.
"""

import asyncio
import dataclasses
import logging
import socket
import time

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from models.audio_io import AudioInputError, check_rate
from models.face import PortraitError
from models.video_avatar import VideoAvatar
from serve.http import ClientError, mib, parse_json, quote, server_of, short
from serve.sessions import LiveSession, Server
from stream.tts import DEFAULT_VOICE, FESTIVAL_VOICES, SpeechError, speak

log = logging.getLogger("server")

MAX_BAD_MESSAGES = 20
WS_SEND_BUFFER = 64 * 1024     # kernel send buffer of a websocket
SAMPLE_TYPES = {"s16": np.dtype("<i2"), "f32": np.dtype("<f4")}
OVERSIZE_READ = 4          # messages up to this many times --max-ws-message are read, then refused
SLOW_RENDER = 0.06         # seconds a frame of the "slow" fault's renderer (real time: 0.04)


async def websocket(request):
    return await serve_channel(request, ControlChannel)


async def serve_channel(request, make_channel):
    """Run one websocket of a session with a channel made by make_channel(server, live, ws,
    transport): this module's ControlChannel, or one built on it (serve/headless.py)."""
    server = server_of(request)
    limits = server.limits
    # A message over the limit is read whole (up to OVERSIZE_READ times the limit) and then
    # refused with 1009: had aiohttp cut the connection at the frame header, the unread rest
    # would reset it and the client would see 1006 instead of the close frame.
    ws = web.WebSocketResponse(heartbeat=20.0, compress=make_channel.compress,
                               max_msg_size=OVERSIZE_READ * limits.max_ws_message)
    if not ws.can_prepare(request).ok:
        raise ClientError(400, "this is a websocket endpoint")
    await ws.prepare(request)
    live = server.sessions.get(request.match_info["id"])
    if live is None or live.closed:       # 4404 (no such session), 4410 (its replica is gone)
        missing = server.ids.missing(request.match_info["id"])
        await ws.close(code=4000 + missing.status, message=str(missing).encode())
        return ws
    if len(live.channels) >= limits.max_sockets_per_session:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER,
                       message=f"at most {limits.max_sockets_per_session} websockets per "
                               "session".encode())
        return ws
    refused = make_channel.refuse(live)
    if refused:
        await ws.close(code=refused[0], message=refused[1].encode())
        return ws
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:     # a client that stops reading is noticed after this much kernel
        try:                 # buffer, not after megabytes of it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, make_channel.send_buffer)
        except OSError:
            pass
    channel = make_channel(server, live, ws, request.transport)
    live.channels.add(channel)
    live.active = time.monotonic()
    tasks = []
    try:
        await channel.send(channel.ready())              # first, before anything else
        tasks = [asyncio.ensure_future(task) for task in channel.background()]
        async for msg in ws:
            if channel.dropped or live.closed:
                break
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                if len(msg.data) > limits.max_ws_message:
                    await channel.close(WSCloseCode.MESSAGE_TOO_BIG,
                                        f"a websocket message is at most "
                                        f"{mib(limits.max_ws_message)} (--max-ws-message): "
                                        "send audio in smaller pieces")
                    break
                live.active = time.monotonic()
                await channel.handle(msg)
                if channel.bad_in_a_row >= MAX_BAD_MESSAGES:
                    await channel.close(WSCloseCode.POLICY_VIOLATION, "too many bad messages")
                    break
            elif msg.type == WSMsgType.ERROR:
                break
    except Exception as e:                               # never a traceback to the client
        log.warning("websocket of session %s: %s", live.label, short(e))
        await channel.close(WSCloseCode.INTERNAL_ERROR, "internal error")
    finally:
        for task in tasks:
            task.cancel()
        live.channels.discard(channel)
        channel.closed()
    return ws


class SlowRender:
    """--fault-injection's "slow" (and tests): `engine` with a render that takes
    `seconds_per_frame` a frame, a machine short of compute for that session alone; the real
    render padded with sleep to that time, so it is the same on a fast and a slow machine."""

    def __init__(self, engine, seconds_per_frame: float = SLOW_RENDER):
        self.engine, self.delay = engine, seconds_per_frame

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def render(self, avatar, motion):
        due = time.perf_counter() + self.delay * len(motion)
        frames = self.engine.render(avatar, motion)
        time.sleep(max(0.0, due - time.perf_counter()))
        return frames


class ControlChannel:
    """One websocket of one session: PCM in, control messages in, stats out. A client that
    stops reading (its sends stall for --send-timeout) is dropped, never waited for."""

    send_buffer = WS_SEND_BUFFER        # replies and stats are small
    compress = True                     # permessage-deflate when the client offers it

    def __init__(self, server: Server, live: LiveSession, ws, transport):
        self.server, self.live, self.ws, self.transport = server, live, ws, transport
        self.format: tuple[int, int, np.dtype] | None = None    # rate, channels, sample type
        self.bad_in_a_row = 0
        self.dropped = False

    @staticmethod
    def refuse(live: LiveSession) -> tuple[int, str] | None:
        """(close code, reason) when this kind of channel may not open on `live`."""
        return None

    def ready(self) -> dict:
        """The first message: the session and what it accepts."""
        server, live, limits = self.server, self.live, self.server.limits
        return {"type": "ready", "session": live.id, "avatar": live.avatar_id,
                "styles": list(server.engine.motion.config.style_names),
                "voices": [DEFAULT_VOICE, "espeak/en-gb", "espeak/en-us+f3"]
                + [f"festival/{v}" for v in FESTIVAL_VOICES],
                "limits": {"max_ws_message": limits.max_ws_message,
                           "max_queued_seconds": limits.max_queued_seconds,
                           "max_text_chars": limits.max_text_chars,
                           "rates": [limits.min_rate, limits.max_rate]}}

    def background(self) -> list:
        """Coroutines that run while the websocket is open."""
        return [self.send_stats()]

    def closed(self) -> None:
        """The websocket is gone."""

    async def send(self, message: dict) -> None:
        await self._send(self.ws.send_json, message)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(self.ws.send_bytes, data)

    async def _send(self, method, payload) -> None:
        if self.ws.closed or self.dropped:
            return
        try:
            await asyncio.wait_for(method(payload), self.server.limits.send_timeout)
        except TimeoutError:
            self.server.metrics.count("websockets_stalled_total")
            log.info("session %s: a websocket client stopped reading; dropped",
                     self.live.label)
            self.drop()
        except (ConnectionError, RuntimeError):      # the client went away meanwhile
            self.drop()

    def drop(self) -> None:
        """Cut the connection at once (nothing more is sent or waited for)."""
        self.dropped = True
        if self.transport is not None:
            self.transport.abort()

    async def close(self, code: int, reason: str, note: str | None = None) -> None:
        """Close with a reason (after a last error message when `note` is given); a client
        that does not take the close within the send timeout is cut off."""
        if note:
            await self.send({"type": "error", "fatal": True, "message": note})
        if self.ws.closed or self.dropped:
            return
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason[:120].encode()),
                                   self.server.limits.send_timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            self.drop()

    async def send_stats(self) -> None:
        while not self.ws.closed and not self.dropped:
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
        limits = self.server.limits
        if len(text) > limits.max_control_bytes:
            raise ClientError(400, f"a control message is at most {mib(limits.max_control_bytes)}"
                                   " (audio goes in binary messages)")
        message = parse_json(text)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ClientError(400, 'a control message is a JSON object with a "type"')
        kind = message["type"]
        loop = asyncio.get_running_loop()
        live = self.live
        if kind == "format":
            rate, channels = message.get("rate"), message.get("channels", 1)
            sample = message.get("sample", "s16")
            if not isinstance(sample, str) or sample not in SAMPLE_TYPES:
                raise ClientError(400, f"sample must be one of {sorted(SAMPLE_TYPES)}")
            check_rate(rate)
            if not limits.min_rate <= rate <= limits.max_rate:
                raise ClientError(400, f"rate must be {limits.min_rate}-{limits.max_rate} Hz "
                                       "on this server")
            if channels not in (1, 2) or isinstance(channels, bool):
                raise ClientError(400, "channels must be 1 or 2")
            self.format = (int(rate), int(channels), SAMPLE_TYPES[sample])
            await self.send({"type": "ok", "for": "format"})
        elif kind == "speak":
            text = message.get("text")
            if not isinstance(text, str):
                raise ClientError(400, 'speak needs "text"')
            voice = message.get("voice") or DEFAULT_VOICE
            if not isinstance(voice, str):
                raise ClientError(400, '"voice" must be a string such as "espeak/en-us"')
            if live.speaking:
                raise ClientError(429, "a text is being synthesised for this session: wait "
                                       "for its ok")
            live.speaking = True
            try:
                audio, rate = await loop.run_in_executor(self.server.work, lambda: speak(
                    text, voice, max_characters=limits.max_text_chars))
            finally:
                live.speaking = False
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
            entry = await self.server.avatars.find(message.get("id"))
            live.session.avatar = entry.avatar              # the next chunk renders it
            live.avatar_id = entry.id
            await self.send({"type": "ok", "for": "avatar", "id": entry.id})
        elif kind == "fault" and self.server.fault_injection:
            await self.inject(message.get("fault"))
        else:
            raise ClientError(400, f"unknown message type {quote(kind)}: use format, speak, "
                                   "interrupt, style or avatar")

    async def inject(self, fault) -> None:
        """--fault-injection only (tests): break this one session on purpose."""
        if fault == "engine":       # a corrupt avatar: the engine raises inside this session
            avatar = self.live.session.avatar
            if isinstance(avatar, VideoAvatar):
                self.live.session.avatar = dataclasses.replace(avatar, motion=avatar.motion[:0])
            else:
                self.live.session.avatar = dataclasses.replace(avatar,
                                                               basis=avatar.basis[:0, :1])
        elif fault == "handler":    # an unexpected exception in this websocket's handler
            raise RuntimeError("injected fault")
        elif fault == "slow":       # this session's renderer slower than real time
            self.live.session.engine = SlowRender(self.live.session.engine)
        else:
            raise ClientError(400, 'fault must be "engine", "handler" or "slow"')
        await self.send({"type": "ok", "for": "fault", "fault": fault})
