"""The headless session API: a session without WebRTC, its media over one websocket.

    POST /sessions   {"avatar": id, "rate": 48000, "format": "jpeg" | "rgb", "quality": 80,
                      "pacing": "realtime" | "fast"}   (every field optional)
        -> {"session": id, "websocket": "/sessions/{id}/media", "control": "/ws/{id}",
            "media": {"size", "fps": 25, "format", "quality", "rate", "samples_per_slot",
                      "pacing"}}
        It counts against --max-sessions like a WebRTC session; DELETE /sessions/{id}, the idle
        timeout and the server's shutdown end it the same way. The media websocket must open
        within --connect-timeout, and once closed the session ends after --peer-timeout
        unless it opens again.
    GET /sessions/{id}/media   the session's media websocket (one at a time)

In: everything serve/control.py's websocket takes (binary PCM after a "format" message,
speak, interrupt, style, avatar), with its replies ("ready" first, then "ok", "error",
"stats"): the same channel, with media added.

Out, for every 40 ms slot, one binary message:

    uint32 little-endian H | H bytes of JSON header | image bytes | PCM bytes
    header: {"slot": n (0, 1, 2 ...), "frame": session frame index or null, "pts": n / 25 (s,
             the slot's media time), "time": unix time sent (s), "speech": its sound is your
             audio, "format": "jpeg" | "rgb", "width", "height", "image_bytes": length (0: no
             picture yet), "rate": Hz, "samples": rate / 25}
    image:  a JPEG, or width x height x 3 bytes of RGB (row-major)
    PCM:    the slot's own 40 ms of sound, int16 little-endian mono, exactly `samples` of them

plus JSON events (text messages) in order with the slots: "speech_started" (before the first
slot of your audio), "speech_ended" (after the last one has been sent: playback finished;
"interrupted": true when a barge-in cut it), "interrupted" (a barge-in was carried out).
See stream/headless.py. Pacing "realtime" (default): the WebRTC path's media clock, 25 slots
a second, idle motion before and between utterances. "fast": every frame leaves as soon as it
is rendered, the audio is taken as fast as the client reads (offline use); without audio the
session idles at 25 slots a second as in real time.

A client that stops reading loses the oldest slots after 1 s and is cut after --send-timeout
(as serve/control.py cuts one); the session then ends after --peer-timeout.
"""

import asyncio
import io
import json
import struct
import time

from aiohttp import WSCloseCode, web
from PIL import Image

from serve.control import ControlChannel, serve_channel
from serve.http import ClientError, parse_json, quote, read_body, server_of
from stream.headless import Slot
from stream.player import FPS

OUTPUT_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
FORMATS = ("jpeg", "rgb")
PACINGS = ("realtime", "fast")
DEFAULT_QUALITY = 80
MEDIA_SEND_BUFFER = 256 * 1024      # kernel send buffer of a media websocket
FIELDS = ("avatar", "rate", "format", "quality", "pacing")


def media_options(body: dict, limits, size: int) -> dict:
    """The media options of POST /sessions, checked (ClientError 400 with what is allowed)."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ClientError(400, f"unknown field {quote(unknown[0])}: a session takes "
                               f"{', '.join(FIELDS)}")
    rates = [r for r in OUTPUT_RATES if r <= limits.max_output_rate]
    rate = body.get("rate", rates[-1] if rates else 0)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate not in OUTPUT_RATES:
        raise ClientError(400, f"rate must be one of {list(OUTPUT_RATES)} (Hz)")
    if rate > limits.max_output_rate:
        raise ClientError(400, f"rate {rate} Hz is above this server's --max-output-rate "
                               f"({limits.max_output_rate} Hz)")
    image = body.get("format", "jpeg")
    if image not in FORMATS:
        raise ClientError(400, 'format must be "jpeg" or "rgb" (raw, for loopback)')
    if image == "rgb" and size * size * 3 > limits.max_raw_frame_bytes:
        raise ClientError(400, f"a raw frame here is {size * size * 3} bytes, above "
                               f"--max-raw-frame-bytes ({limits.max_raw_frame_bytes}): "
                               'ask for "jpeg"')
    quality = body.get("quality", DEFAULT_QUALITY)
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 95:
        raise ClientError(400, "quality must be a whole number 1..95 (JPEG)")
    pacing = body.get("pacing", "realtime")
    if pacing not in PACINGS:
        raise ClientError(400, 'pacing must be "realtime" (default) or "fast" (as fast as '
                               'frames are made, for offline use)')
    return {"size": size, "fps": FPS, "format": image, "quality": quality, "rate": rate,
            "samples_per_slot": rate // FPS, "pacing": pacing}


async def create_session(request):
    server = server_of(request)
    data = await read_body(request, server.limits.max_control_bytes, "the request body")
    body = parse_json(data) if data.strip() else {}
    if not isinstance(body, dict):
        raise ClientError(400, "the request body must be a JSON object (or empty)")
    options = media_options(body, server.limits, server.size)
    avatar = await server.avatars.find(body.get("avatar"))
    live = await server.start_headless(avatar, options)
    return web.json_response({"session": live.id, "websocket": f"/sessions/{live.id}/media",
                              "control": f"/ws/{live.id}", "media": options})


async def media_websocket(request):
    return await serve_channel(request, MediaChannel)


def encode_slot(slot: Slot, options: dict) -> bytes:
    """One slot as its binary message (see the module docstring)."""
    image = b""
    height = width = 0
    if slot.image is not None:
        height, width = slot.image.shape[:2]
        if options["format"] == "rgb":
            image = slot.image.tobytes()
        else:
            out = io.BytesIO()
            Image.fromarray(slot.image).save(out, "JPEG", quality=options["quality"])
            image = out.getvalue()
    header = json.dumps({"slot": slot.index, "frame": slot.frame,
                         "pts": round(slot.index / FPS, 3), "time": round(time.time(), 4),
                         "speech": slot.speech, "format": options["format"], "width": width,
                         "height": height, "image_bytes": len(image),
                         "rate": options["rate"], "samples": options["samples_per_slot"]},
                        separators=(",", ":")).encode()
    return b"".join([struct.pack("<I", len(header)), header, image, slot.pcm])


class MediaChannel(ControlChannel):
    """The media websocket of a headless session: a ControlChannel (the same messages in,
    replies and stats out) that also sends the session's slots and events."""

    send_buffer = MEDIA_SEND_BUFFER
    compress = False                    # JPEG and PCM do not compress; raw frames cost CPU

    def __init__(self, server, live, ws, transport):
        super().__init__(server, live, ws, transport)
        live.media, live.media_left = self, None
        if live.connected is None:
            live.connected = time.monotonic()
        live.clock.out.attach(True)

    @staticmethod
    def refuse(live) -> tuple[int, str] | None:
        if live.headless is None:
            return 4400, "a WebRTC session: its media goes over its peer connection (use /ws)"
        if live.media is not None and not (live.media.ws.closed or live.media.dropped):
            return WSCloseCode.TRY_AGAIN_LATER, "this session's media websocket is open already"
        return None

    def ready(self) -> dict:
        return {**super().ready(), "media": self.live.headless}

    def background(self) -> list:
        return [*super().background(), self.send_media()]

    def closed(self) -> None:
        if self.live.media is self:
            self.live.clock.out.attach(False)
            self.live.media, self.live.media_left = None, time.monotonic()

    async def send_media(self) -> None:
        out, options = self.live.clock.out, self.live.headless
        loop = asyncio.get_running_loop()
        while not self.ws.closed and not self.dropped:
            item = await out.get()
            if item is None:
                return
            if isinstance(item, dict):
                await self.send(item)
            elif options["format"] == "jpeg" and item.image is not None:
                await self.send_bytes(await loop.run_in_executor(None, encode_slot, item,
                                                                 options))
            else:
                await self.send_bytes(encode_slot(item, options))
