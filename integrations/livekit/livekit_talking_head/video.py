"""TalkingHeadVideoGenerator: the self-hosted talking-head engine as a LiveKit VideoGenerator.

    generator = TalkingHeadVideoGenerator(url="http://127.0.0.1:8080")
    await generator.start()                       # the engine's session opens: idle video
    runner = AvatarRunner(room, audio_recv=QueueAudioOutput(wait_playback_start=True),
                          video_gen=generator, options=generator.avatar_options())

LiveKit Agents' avatar contract (livekit/agents/voice/avatar/): the AvatarRunner pushes the
agent's TTS audio in (push_audio: rtc.AudioFrame, and AudioSegmentEnd after each reply), calls
clear_buffer() on an interruption, and plays whatever the generator yields through its
AVSynchronizer. This generator talks to the engine's headless session API through
talking_head_client (one session per generator; never the engine's own modules):

- Audio in: every frame's PCM goes to the engine, queued after what was sent before. The engine
  sends back, for every 40 ms slot, its picture and its own 40 ms of sound; the generator yields
  the picture as an RGBA rtc.VideoFrame and, when the slot plays the agent's audio, that sound
  as an rtc.AudioFrame: picture and sound leave paired and the speech is played once, from the
  engine, in step with the lips.
- Before the first reply and between replies the engine's generated idle motion flows
  (pictures only: the runner's audio track plays silence by itself), from start() on: the
  video never waits for the TTS.
- AudioSegmentEnd in is held back until the engine says the avatar has spoken that reply's
  last audible sample (its speech_ended event, checked against the audio sent and spoken), and
  yielded right after that slot's sound: the agent's "playback finished" comes when the face
  stops, never earlier (livekit/agents #3576, #4406).
- clear_buffer(): the engine is told at once (it cuts its timeline within one chunk) and every
  slot of the old timeline still on its way is yielded muted (picture only); the interrupted
  reply's AudioSegmentEnd is dropped (the runner reports the interruption itself). Audio after
  it is a new reply, spoken as usual, however often it happens (never "deaf after repeated
  interruptions", #3434).
- first_audio_latencies: for each reply, the seconds from its first audio in to its first
  speech slot out of the generator (the engine's look-ahead, rendering and media clock).
"""

import asyncio
import collections
import io
import logging
import time

import aiohttp
import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator
from PIL import Image
from talking_head_client import ServerError, Session, Slot, TalkingHeadClient

logger = logging.getLogger("livekit_talking_head")

OUTPUT_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)   # the server's choices
IMAGE_FORMATS = ("jpeg", "rgb")
FPS = 25                       # the engine's slot rate
QUEUE_SLOTS = 25               # slots kept for a consumer that lags (1 s); older ones go
AUDIBLE = 300                  # int16 peak above which a sample counts as sound (~1 % FS)
END_TOLERANCE = 0.1            # s: spoken vs sent audible audio at speech_ended (slot rounding)
RELEASE_AFTER_SLOTS = 25       # silent slots after a speech_ended that does not account for
                               #   the reply (audio refused, slots lost): then it ends anyway
MAX_MUTED_WAIT_SLOTS = 75      # slots to wait for the server's reply to an interrupt
SOUND_TAKEN_WAIT = 0.5         # s: the most clear_buffer waits for the runner's last sound


class TalkingHeadError(Exception):
    """The talking-head server could not be reached or refused the session."""


class TalkingHeadVideoGenerator(VideoGenerator):
    """A talking head for LiveKit's AvatarRunner, from a talking-head server (see the module
    docstring). `url`: the server ("http://127.0.0.1:8080"); `token`: its access token if it
    has one; `avatar`: an avatar id the server knows (None: its default); `image_format`:
    "jpeg" (default) or "rgb" (raw frames: no encoding, for a server on the same machine);
    `quality`: the JPEG quality; `rate`: the audio rate of the frames it yields (None: the
    server's default); `http`: an aiohttp.ClientSession of yours."""

    def __init__(self, *, url: str = "http://127.0.0.1:8080", token: str | None = None,
                 avatar: str | None = None, image_format: str = "jpeg",
                 quality: int | None = None, rate: int | None = 24000,
                 http: aiohttp.ClientSession | None = None):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f'image_format must be "jpeg" or "rgb", not {image_format!r}')
        if rate is not None and rate not in OUTPUT_RATES:
            raise ValueError(f"rate must be one of {list(OUTPUT_RATES)} (Hz) or None, not "
                             f"{rate!r}")
        if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 100):
            raise ValueError(f"quality must be an integer 1-100, not {quality!r}")
        self._client = TalkingHeadClient(url, token=token, http=http)
        self._avatar, self._image_format = avatar, image_format
        self._quality, self._rate = quality, rate
        self._session: Session | None = None
        self._reader: asyncio.Task | None = None
        self.media: dict = {}                    # the server's media options, once started
        # what the reader hands to the iterator, in order: (Slot, epoch, the time its reply's
        # first audio came when it is that reply's first speech) | AudioSegmentEnd | an
        # Exception (the session ended)
        self._out: collections.deque = collections.deque()
        self._queued_slots = 0
        self._ready = asyncio.Event()
        # the current reply(s) since the last clear_buffer (the epoch): seconds of audio sent,
        # where its last audible sample lies, and the speech the engine has sent back
        self._epoch = 0
        self._sent = self._audible_end = self._spoken = 0.0
        self._segment_sent = False               # audio sent since the last AudioSegmentEnd
        # per reply not yet ended: (where its last audible sample lies, audio sent by its end)
        self._ends: collections.deque[tuple[float, float]] = collections.deque()
        self._engine_speaking = False            # between speech_started and speech_ended
        self._release_countdown: int | None = None
        self._progress = asyncio.Event()         # speech spoken or cleared (back-pressure)
        # barge-in: interrupts sent whose "interrupted" event has not come yet (the speech
        # slots before it are the old timeline, and those after it of frames before its
        # `_cut_frame`), and whether the runner still holds the last sound yielded
        self._interrupts_pending = 0
        self._pending_slots = 0
        self._cut_frame: int | None = None
        self._sound_taken = asyncio.Event()
        self._sound_taken.set()
        # metrics and counters (for tests and logs)
        self._first_audio_at: float | None = None
        self.first_audio_latencies: list[float] = []
        self.slots_in = self.slots_dropped = self.muted_slots = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> "TalkingHeadVideoGenerator":
        """Open the engine's session (its idle video starts to flow). Raises TalkingHeadError
        when the server cannot be reached or refuses (a full server: 503)."""
        if self._session is not None:
            return self
        if self._client.http is None:
            await self._client.__aenter__()
        try:
            self._session = await self._client.create_session(
                avatar=self._avatar, rate=self._rate, format=self._image_format,
                quality=self._quality)
        except (ServerError, aiohttp.ClientError, OSError) as e:
            await self._client.__aexit__(None, None, None)
            raise TalkingHeadError(f"no talking-head session from {self._client.url}: "
                                   f"{e}") from e
        self.media = self._session.media
        self._reader = asyncio.create_task(self._read(), name="talking-head-reader")
        logger.info("talking-head session %s (%s)", self._session.id, self.media)
        return self

    async def aclose(self) -> None:
        """End the engine's session and close its websocket."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        await self._client.__aexit__(None, None, None)
        self._put(ConnectionError("the talking-head generator was closed"))

    @property
    def size(self) -> int:
        return self._started()["size"]

    @property
    def sample_rate(self) -> int:
        return self._started()["rate"]

    def avatar_options(self) -> AvatarOptions:
        """The AvatarRunner's options for this session: its picture size, 25 fps, its audio
        rate, mono."""
        media = self._started()
        return AvatarOptions(video_width=media["size"], video_height=media["size"],
                             video_fps=media.get("fps", FPS), audio_sample_rate=media["rate"],
                             audio_channels=1)

    def _started(self) -> dict:
        if not self.media:
            raise RuntimeError("the generator is not started: await generator.start() first")
        return self.media

    # ------------------------------------------------------------------ audio in

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        """A frame of the agent's audio, spoken after what was sent before; AudioSegmentEnd
        marks the end of a reply (yielded back once the engine has spoken it)."""
        if self._session is None:
            raise RuntimeError("the generator is not started: await generator.start() first")
        if isinstance(frame, AudioSegmentEnd):
            if self._segment_sent:            # (none after a clear_buffer: nothing to end)
                self._segment_sent = False
                self._ends.append((self._audible_end, self._sent))
            return
        if not isinstance(frame, rtc.AudioFrame):
            raise TypeError(f"push_audio takes rtc.AudioFrame or AudioSegmentEnd, not "
                            f"{type(frame).__name__}")
        if frame.samples_per_channel == 0:
            return
        epoch = self._epoch
        await self._wait_for_room(epoch)
        if epoch != self._epoch:              # cleared while waiting: old audio
            return
        samples = np.frombuffer(frame.data, np.int16)
        loud = np.nonzero(np.abs(samples.astype(np.int32)) > AUDIBLE)[0]
        rate, channels = frame.sample_rate, frame.num_channels
        if loud.size:
            self._audible_end = self._sent + (loud[-1] // channels + 1) / rate
        if not (self._segment_sent or self._ends or self._engine_speaking):
            self._first_audio_at = time.perf_counter()     # a reply starts after silence
        self._sent += frame.samples_per_channel / rate
        self._segment_sent = True
        await self._session.send_pcm(samples.tobytes(), rate=rate, channels=channels)

    async def _wait_for_room(self, epoch: int) -> None:
        """Keep at most half the server's queue limit ahead of the speech (120 s by default):
        a long reply pushed at once waits here instead of being refused."""
        ahead = self._session.ready.get("limits", {}).get("max_queued_seconds", 120) / 2
        while self._sent - self._spoken > ahead and epoch == self._epoch:
            self._progress.clear()
            await self._progress.wait()

    async def clear_buffer(self) -> None:
        """Interruption: the engine cuts its speech within one chunk; the slots of the old
        speech still on their way are yielded muted, and the interrupted reply's end too."""
        self._epoch += 1
        self._sent = self._audible_end = self._spoken = 0.0
        self._segment_sent = False
        self._ends.clear()
        self._release_countdown = None
        self._first_audio_at = None
        self._engine_speaking = False            # (its speech_ended follows, interrupted)
        self._progress.set()
        self._out = collections.deque(x for x in self._out
                                      if not isinstance(x, AudioSegmentEnd))
        if self._session is None:
            return
        self._interrupts_pending += 1
        self._pending_slots = 0
        await self._session.interrupt()
        # The runner resets its playback position when this returns: a sound of the old
        # reply it is still pushing would otherwise count after the reset, and the next
        # reply would get no "playback started" (seen under load, ~1 run in 10).
        try:
            await asyncio.wait_for(self._sound_taken.wait(), SOUND_TAKEN_WAIT)
        except TimeoutError:
            pass

    # ------------------------------------------------------------------ slots out

    def __aiter__(self):
        return self._frames()

    async def _frames(self):
        """The iterator the AvatarRunner reads: for every slot its RGBA picture and, when it
        plays the agent's audio, its sound; AudioSegmentEnd after a reply's last sound."""
        while True:
            while not self._out:
                self._ready.clear()
                await self._ready.wait()
            item = self._out.popleft()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, AudioSegmentEnd):
                yield item
                continue
            self._queued_slots -= 1
            slot, epoch, reply_started = item
            if slot.image:
                yield self._video_frame(slot)
            if slot.speech:
                if epoch != self._epoch:      # cleared after it arrived: the old speech
                    self.muted_slots += 1
                    continue
                if reply_started is not None:
                    self.first_audio_latencies.append(time.perf_counter() - reply_started)
                self._sound_taken.clear()
                yield rtc.AudioFrame(slot.pcm, slot.rate, 1, len(slot.pcm) // 2)
                self._sound_taken.set()       # (the runner asks for more: it is done with it)

    def _put(self, item) -> None:
        """Hand an item to the iterator; beyond QUEUE_SLOTS slots the oldest slot goes (a
        consumer that lags sees the newest picture; ends and errors are never dropped)."""
        self._out.append(item)
        if isinstance(item, tuple):
            self._queued_slots += 1
            if self._queued_slots > QUEUE_SLOTS:
                oldest = next(i for i, x in enumerate(self._out) if isinstance(x, tuple))
                del self._out[oldest]
                self._queued_slots -= 1
                self.slots_dropped += 1
        self._ready.set()

    async def _read(self) -> None:
        """The engine's slots and events, in its order, for as long as the session lives."""
        try:
            while self._session is not None:
                item = await self._session.receive()
                if item is None:
                    raise ConnectionError("the talking-head server closed the session's media "
                                          f"websocket ({self._session.close_code})")
                if item.kind == "slot":
                    self._on_slot(item)
                else:
                    self._on_event(item.type, item.data)
        except asyncio.CancelledError:
            raise
        except Exception as e:                # the iterator raises it: the runner logs it
            logger.error("talking-head session ended: %s", e)
            self._put(e)

    def _on_slot(self, slot: Slot) -> None:
        self.slots_in += 1
        reply_started = None
        if slot.speech and self._old_timeline(slot):
            slot.speech = False               # the interrupted speech: its picture only
            self.muted_slots += 1
        elif slot.speech:
            self._spoken += len(slot.pcm) / (2 * slot.rate)
            self._progress.set()
            self._release_countdown = None
            reply_started, self._first_audio_at = self._first_audio_at, None
        self._put((slot, self._epoch, reply_started))
        if not slot.speech and self._release_countdown is not None:
            self._release_countdown -= 1
            if self._release_countdown <= 0:
                logger.warning("talking-head: a reply's end released after %d silent slots "
                               "(spoken %.2f s of %.2f s sent)", RELEASE_AFTER_SLOTS,
                               self._spoken, self._sent)
                self._release_ends(all_of_them=True)

    def _old_timeline(self, slot: Slot) -> bool:
        """Whether a speech slot belongs to speech cut by a clear_buffer: every slot before the
        server's "interrupted" event, which comes in order with the slots (its "ok" comes
        straight from the websocket handler and may overtake slots of the old timeline), then
        the slots of frames before its cut (rendered before the cut, they still leave)."""
        if self._interrupts_pending:
            self._pending_slots += 1
            if self._pending_slots <= MAX_MUTED_WAIT_SLOTS:
                return True
            logger.warning("talking-head: no reply to an interrupt; unmuting")
            self._interrupts_pending = 0
        if self._cut_frame is not None and slot.frame is not None:
            if slot.frame < self._cut_frame:
                return True
            self._cut_frame = None
        return False

    def _on_event(self, kind: str, data: dict) -> None:
        if kind == "interrupted":
            self._interrupts_pending = max(self._interrupts_pending - 1, 0)
            self._pending_slots = 0
            if data.get("cut_frame") is not None:
                self._cut_frame = max(self._cut_frame or 0, data["cut_frame"])
        elif kind == "speech_started":
            self._engine_speaking = True
        elif kind == "speech_ended":
            self._engine_speaking = False
            if self._ends and not data.get("interrupted"):
                self._release_ends()
                if self._ends:                # it does not account for a reply: wait a bit
                    self._release_countdown = RELEASE_AFTER_SLOTS
        elif kind == "error":
            logger.warning("talking-head server: %s", data.get("message"))
            if self._ends and self._release_countdown is None:
                self._release_countdown = RELEASE_AFTER_SLOTS

    def _release_ends(self, all_of_them: bool = False) -> None:
        """AudioSegmentEnd out for every reply whose audible audio has all been spoken. What
        the engine skipped of a released reply (trailing silence) counts as spoken, so that
        the next reply is measured from its own start."""
        while self._ends and (all_of_them or self._ends[0][0] <= self._spoken + END_TOLERANCE):
            _, sent = self._ends.popleft()
            self._spoken = max(self._spoken, sent)
            self._put(AudioSegmentEnd())
        if not self._ends:
            self._release_countdown = None

    # ------------------------------------------------------------------ pictures

    def _video_frame(self, slot: Slot) -> rtc.VideoFrame:
        """The slot's picture as an RGBA rtc.VideoFrame (what LiveKit's examples give the
        AVSynchronizer; its VideoSource converts it for the encoder)."""
        if slot.format == "rgb":
            rgba = np.empty((slot.height, slot.width, 4), np.uint8)
            rgba[..., :3] = slot.rgb()
            rgba[..., 3] = 255
            data = rgba.tobytes()
        else:
            data = Image.open(io.BytesIO(slot.image)).convert("RGBA").tobytes()
        return rtc.VideoFrame(slot.width, slot.height, rtc.VideoBufferType.RGBA, data)
