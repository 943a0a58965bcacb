"""A client for the talking-head server's headless session API (aiohttp only; numpy optional).

    async with TalkingHeadClient("http://127.0.0.1:8080", token=None) as client:
        session = await client.create_session(rate=24000, format="jpeg", pacing="realtime")
        await session.send_pcm(pcm, rate=16000)        # bytes (int16 LE) or a numpy array
        await session.interrupt()
        async for item in session:                     # Slot or Event, in the server's order
            ...
        await session.close()                          # DELETE /sessions/{id}

The wire format (the server's serve/headless.py): each 40 ms slot is one binary message,
uint32 little-endian H | H bytes of JSON header | image bytes | PCM (int16 LE mono, exactly
header["samples"] of them); everything else is a JSON text message: "ready", "ok", "error",
"stats", and the events "speech_started", "speech_ended" (after the utterance's last slot was
sent), "interrupted". This package never imports the engine.
"""

import asyncio
import json
import struct
from dataclasses import dataclass, field

import aiohttp

__all__ = ["TalkingHeadClient", "Session", "Slot", "Event", "ServerError", "parse_slot"]


class ServerError(Exception):
    """The server refused a request: its HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


@dataclass
class Slot:
    """One 40 ms slot: its picture and its own 40 ms of sound."""
    index: int               # output slot n (media time n / 25 s)
    frame: int | None        # the session frame it plays
    pts: float               # media time, s
    time: float              # unix time the server sent it
    speech: bool             # its sound is the audio this client sent
    format: str              # "jpeg" | "rgb"
    width: int
    height: int
    rate: int
    image: bytes             # JPEG, or height x width x 3 RGB bytes (empty: no picture yet)
    pcm: bytes               # int16 little-endian mono, rate / 25 samples
    kind: str = field(default="slot", init=False)

    def samples(self):
        """The PCM as a numpy int16 array."""
        import numpy as np

        return np.frombuffer(self.pcm, "<i2")

    def rgb(self):
        """The picture as a numpy [height, width, 3] uint8 array (format "rgb" only)."""
        import numpy as np

        if self.format != "rgb":
            raise ValueError("a JPEG slot: decode self.image with an image library")
        return np.frombuffer(self.image, np.uint8).reshape(self.height, self.width, 3)


@dataclass
class Event:
    """A JSON message from the server ("ready", "ok", "error", "stats", "speech_started",
    "speech_ended", "interrupted"); `data` holds all of it."""
    type: str
    data: dict
    kind: str = field(default="event", init=False)

    def __getitem__(self, key):
        return self.data[key]

    def get(self, key, default=None):
        return self.data.get(key, default)


def parse_slot(data: bytes) -> Slot:
    """A binary slot message as a Slot (ValueError when it is not one)."""
    if len(data) < 4:
        raise ValueError("a slot message is at least 4 bytes")
    (size,) = struct.unpack_from("<I", data)
    header = json.loads(data[4:4 + size])
    start = 4 + size
    image_end = start + header["image_bytes"]
    pcm = data[image_end:]
    if len(pcm) != 2 * header["samples"]:
        raise ValueError(f"a slot carries {header['samples']} samples, this one "
                         f"{len(pcm) // 2}")
    return Slot(header["slot"], header["frame"], header["pts"], header["time"],
                header["speech"], header["format"], header["width"], header["height"],
                header["rate"], data[start:image_end], pcm)


class Session:
    """One headless session: its media websocket open (see TalkingHeadClient)."""

    def __init__(self, client: "TalkingHeadClient", reply: dict):
        self.client = client
        self.id: str = reply["session"]
        self.media: dict = reply["media"]
        self.path: str = reply["websocket"]
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ready: dict = {}
        self.close_code: int | None = None
        self._format = None

    async def connect(self) -> None:
        self.ws = await self.client.http.ws_connect(
            self.client.url + self.path, headers=self.client.headers, compress=0,
            max_msg_size=0, heartbeat=20.0)
        first = await self.ws.receive()
        if first.type != aiohttp.WSMsgType.TEXT:
            raise ServerError(first.data or 0, f"the media websocket closed: {first.extra}")
        self.ready = json.loads(first.data)

    async def send_pcm(self, pcm, rate: int, channels: int = 1) -> None:
        """Audio to speak, queued after what was sent before: bytes of int16 little-endian
        PCM, or a numpy array (int16, or float in -1..1, sent as float32)."""
        sample = "s16"
        if not isinstance(pcm, (bytes, bytearray, memoryview)):
            import numpy as np

            pcm = np.asarray(pcm)
            if pcm.dtype == np.int16:
                pcm = pcm.astype("<i2").tobytes()
            else:
                pcm, sample = pcm.astype("<f4").tobytes(), "f32"
        if self._format != (rate, channels, sample):
            await self.send({"type": "format", "rate": rate, "channels": channels,
                             "sample": sample})
            self._format = (rate, channels, sample)
        step = 4 * channels
        piece = self.ready.get("limits", {}).get("max_ws_message", 2**20) // step * step
        data = bytes(pcm)
        for i in range(0, len(data), piece):
            await self.ws.send_bytes(data[i:i + piece])

    async def send(self, message: dict) -> None:
        await self.ws.send_str(json.dumps(message))

    async def interrupt(self) -> None:
        """Barge-in: the avatar stops speaking within one chunk (an "interrupted" event
        follows, then "speech_ended" with "interrupted": true)."""
        await self.send({"type": "interrupt"})

    async def speak(self, text: str, voice: str | None = None) -> None:
        """The server's local TTS speaks `text`."""
        await self.send({"type": "speak", "text": text, **({"voice": voice} if voice else {})})

    async def style(self, values: dict) -> None:
        await self.send({"type": "style", "values": values})

    async def set_avatar(self, avatar: str) -> None:
        await self.send({"type": "avatar", "id": avatar})

    async def receive(self, timeout: float | None = None) -> Slot | Event | None:
        """The next slot or event; None once the websocket closed (see close_code)."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.BINARY:
                return parse_slot(msg.data)
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                return Event(data.get("type", ""), data)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                self.close_code = self.ws.close_code
                return None

    def __aiter__(self):
        return self

    async def __anext__(self) -> Slot | Event:
        item = await self.receive()
        if item is None:
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        """End the session (DELETE /sessions/{id}) and close the websocket."""
        try:
            async with self.client.http.delete(f"{self.client.url}/sessions/{self.id}",
                                               headers=self.client.headers) as r:
                await r.read()
        except aiohttp.ClientError:
            pass
        if self.ws is not None:
            await self.ws.close()


class TalkingHeadClient:
    """The server at `url` (e.g. "http://127.0.0.1:8080"), with its access token if it has
    one. Use `async with`, or pass an aiohttp.ClientSession of your own as `http`."""

    def __init__(self, url: str, token: str | None = None,
                 http: aiohttp.ClientSession | None = None):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._own = http is None
        self.http = http

    async def __aenter__(self) -> "TalkingHeadClient":
        if self.http is None:
            self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own and self.http is not None:
            await self.http.close()

    async def create_session(self, avatar: str | None = None, rate: int | None = None,
                             format: str | None = None, quality: int | None = None,
                             pacing: str | None = None, connect: bool = True) -> Session:
        """POST /sessions (see the server's serve/headless.py), then its media websocket
        opened (unless connect=False). What is not given is the server's default (48 kHz or
        its --max-output-rate, JPEG, real time). Raises ServerError when refused (a full
        server: 503)."""
        body = {key: value for key, value in [("avatar", avatar), ("rate", rate),
                                              ("format", format), ("quality", quality),
                                              ("pacing", pacing)] if value is not None}
        async with self.http.post(self.url + "/sessions", json=body,
                                  headers=self.headers) as r:
            reply = await r.json(content_type=None)
            if r.status >= 300:
                raise ServerError(r.status, reply.get("error", r.reason))
        session = Session(self, reply)
        if connect:
            try:
                await session.connect()
            except BaseException:
                await asyncio.shield(session.close())
                raise
        return session
