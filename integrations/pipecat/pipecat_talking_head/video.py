"""TalkingHeadVideoService: the self-hosted talking-head engine as a Pipecat video service.

    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts,
                         TalkingHeadVideoService(url="http://127.0.0.1:8080"),
                         transport.output(), assistant_aggregator])

It sits between the TTS and the transport's output, as Pipecat's hosted avatar services do
(services/simli/video.py, services/tavus/video.py), and talks to the engine's headless session
API through talking_head_client (one session per pipeline; never the engine's own modules):

- TTS audio in: every TTSAudioRawFrame's PCM goes to the engine and the frame goes no further.
  The engine sends back, for every 40 ms slot, its picture and its own 40 ms of sound; each
  slot becomes an OutputImageRawFrame (sync_with_audio=True) followed by that sound, so the
  transport shows the picture when the audio before it has been played: picture and sound
  stay paired and the speech is played once, from the engine.
- Before the first TTS and between replies the engine's generated idle motion flows (its
  pictures only: the transport plays silence by itself); the speech slots' sound goes out
  as TTSAudioRawFrames, so the transport's BotStartedSpeaking / BotStoppedSpeaking follow
  the avatar, not the TTS.
- InterruptionFrame: the engine is told at once (it cuts its timeline within one chunk); the
  transport drops the slots it had queued; the speech slots still on their way are shown
  with their sound muted until the engine's cut has passed. Audio after the interruption is a
  new utterance, spoken as usual (never "deaf after an interruption").
- TTSStoppedFrame is held back until the engine says the avatar has spoken the last of the
  audio (its speech_ended event), then pushed right after that slot's sound: "bot stopped
  speaking" comes when the avatar stops, not when the TTS did.
- The transcript keeps pace with the avatar, not with the TTS (livekit/agents #4406 is the
  same complaint there). A frame with a presentation time (the word-by-word TTSTextFrames of
  TTS services with word timestamps) is placed in the audio sent to the engine: a TTS times
  a context's words from its first audio, or from the previous context's last word if that
  is later (pipecat's WordTimestampTracker), and the context starts after the audio sent
  before its TTSStartedFrame. The frame goes out, its pts cleared, right after the sound of
  the avatar's speech slot that plays that position: the transport writes it in order with
  the avatar's audio, so a word keeps pace with the face even when the avatar falls behind
  real time (a clock delay measured on the first slot did not: 0.7 s ahead on a loaded host)
  and when a fast TTS has sent several contexts ahead of it. Untimed text frames
  (AggregatedTextFrame, TTSTextFrame) go out after the avatar has spoken the audio sent
  before them. What an interruption cuts off is never sent.
- Metrics (PipelineParams(enable_metrics=True)): TTFB = first TTS audio in -> first speech
  slot out of this service (the engine's look-ahead, rendering and media clock).
"""

import asyncio
import io
import time

import aiohttp
from loguru import logger
from PIL import Image
from pipecat.frames.frames import (
    AggregatedTextFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    SystemFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings
from talking_head_client import Session, Slot, TalkingHeadClient

OUTPUT_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)   # the server's choices
MAX_MUTED_SLOTS = 25        # speech slots muted at most once the engine's cut has passed
# A held TTSStoppedFrame goes at the speech_ended that follows the last audio sent. When no
# such speech_ended can be trusted to come (the stop came while the engine was silent, or a
# speech_ended came within RACE_SECONDS of audio sent: it may have crossed that audio on its
# way), it goes after RELEASE_AFTER_SLOTS silent slots unless speech starts meanwhile.
RELEASE_AFTER_SLOTS = 25
RACE_SECONDS = 0.3
SLACK_SECONDS = 1.0         # spoken vs sent audio: the trailing silence the engine may skip


class TalkingHeadVideoService(AIService):
    """A talking head for a Pipecat pipeline, from a talking-head server (see the module
    docstring). `url`: the server ("http://127.0.0.1:8080"); `token`: its access token if it
    has one; `avatar`: an avatar id the server knows (None: its default); `image_format`:
    "jpeg" (default) or "rgb" (raw frames: no encoding, for a server on the same machine);
    `rate`: the engine's audio rate (None: the transport's output rate when the server offers
    it); `http`: an aiohttp.ClientSession of yours. Set the transport's video_out_width and
    video_out_height to the server's --size, or Pipecat resizes every frame."""

    def __init__(self, *, url: str = "http://127.0.0.1:8080", token: str | None = None,
                 avatar: str | None = None, image_format: str = "jpeg",
                 quality: int | None = None, rate: int | None = None,
                 http: aiohttp.ClientSession | None = None, **kwargs):
        super().__init__(settings=ServiceSettings(model=None), **kwargs)
        self._client = TalkingHeadClient(url, token=token, http=http)
        self._avatar, self._image_format, self._quality = avatar, image_format, quality
        self._rate = rate
        self._session: Session | None = None
        self._receive_task: asyncio.Task | None = None
        self._speaking = False             # the engine is playing our audio (its events)
        self._sent_seconds = 0.0           # audio sent to the engine ...
        self._spoken_seconds = 0.0         # ... and speech slots received (40 ms each)
        self._last_sent = 0.0              # monotonic time of the last audio sent
        self._held_stops: list[TTSStoppedFrame] = []
        self._release_countdown: int | None = None   # silent slots before releasing them
        self._cutting = False              # an interruption: mute speech slots ...
        self._cut_done = False             # ... until the engine's cut has passed
        self._muted = 0
        self._words_at: tuple[int, float] | None = None   # the TTS context's word clock:
        #   (clock ns its words are timed from, seconds of audio sent before the context)
        self._context_starting = False     # a TTSStartedFrame: the next audio starts a context
        self._last_pts = 0                 # the latest word time seen (a context's floor)
        self._held_timed: list[tuple[float, Frame]] = []  # (position in the audio sent, frame)
        self._held_text: list[tuple[float, Frame]] = []   # (audio sent before it, frame)
        self._ttfb_running = False
        self.slots_out = 0                 # slots pushed (counters, for tests and logs)
        self.muted_slots = 0

    def can_generate_metrics(self) -> bool:
        return True

    # ------------------------------------------------------------------ lifecycle

    async def setup(self, setup: FrameProcessorSetup):
        await super().setup(setup)
        if self._rate is None and setup.audio_out_sample_rate in OUTPUT_RATES:
            self._rate = setup.audio_out_sample_rate

    async def start(self, frame: StartFrame):
        """The engine's session opens with the pipeline, so the avatar idles before any TTS."""
        await super().start(frame)
        if self._client.http is None:
            await self._client.__aenter__()
        self._session = await self._client.create_session(
            avatar=self._avatar, rate=self._rate, format=self._image_format,
            quality=self._quality)
        self._rate = self._session.media["rate"]
        logger.info(f"{self}: talking-head session {self._session.id} "
                    f"({self._session.media})")

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        await self._close()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        await self._close()

    async def cleanup(self):
        await super().cleanup()
        await self._close()

    async def _close(self):
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        await self._client.__aexit__(None, None, None)

    # ------------------------------------------------------------------ frames in

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._session is not None and self._receive_task is None:
                self._receive_task = self.create_task(self._receive_slots())
        elif isinstance(frame, TTSAudioRawFrame):
            await self._send_audio(frame)
        elif isinstance(frame, TTSStartedFrame):
            self._context_starting = True
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStoppedFrame):
            if self._sent_seconds > self._spoken_seconds or self._speaking:
                self._held_stops.append(frame)     # pushed when the avatar has spoken it
                if not self._speaking:
                    self._release_countdown = RELEASE_AFTER_SLOTS
            else:
                await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
            await self._release_stops()
        elif direction == FrameDirection.DOWNSTREAM and not isinstance(frame, SystemFrame) \
                and frame.pts and (self._words_at is not None or self._context_starting):
            await self._push_timed(frame)
        elif isinstance(frame, AggregatedTextFrame) and not frame.pts and (
                self._sent_seconds > self._spoken_seconds or self._speaking):
            self._held_text.append((self._sent_seconds, frame))    # out with its audio
        else:
            await self.push_frame(frame, direction)

    async def _push_timed(self, frame: Frame):
        """A frame timed against the TTS's audio: held until the avatar speaks its position
        in the audio sent (pushed at once when it already has)."""
        if self._context_starting:         # (a TTS may time words cached before the audio)
            self._start_context()
        origin, before = self._words_at
        self._last_pts = max(self._last_pts, frame.pts)
        position = before + (frame.pts - origin) / 1e9
        frame.pts = None                   # untimed: the transport keeps it in audio order
        if position < self._spoken_seconds:
            await self.push_frame(frame)
        else:
            self._held_timed.append((position, frame))

    def _start_context(self):
        """A TTS context's first audio (or word): its word clock starts now, or at the last
        word before it if that is later, as the TTS's own does."""
        self._words_at = (max(self._last_pts, self.get_clock().get_time()), self._sent_seconds)
        self._context_starting = False

    async def _send_audio(self, frame: TTSAudioRawFrame):
        if self._session is None:
            return
        if not self._speaking and not self._ttfb_running:
            self._ttfb_running = True
            await self.start_ttfb_metrics()
        if self._words_at is None or self._context_starting:
            self._start_context()
        await self._session.send_pcm(frame.audio, rate=frame.sample_rate,
                                     channels=frame.num_channels)
        self._sent_seconds += len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
        self._last_sent = time.monotonic()

    async def _interrupt(self):
        """Barge-in: the engine cuts its timeline (within one chunk); what it already sent of
        the old one is muted (the transport drops what it had queued itself)."""
        if self._session is not None:
            await self._session.interrupt()
        self._cutting, self._cut_done, self._muted = True, False, 0
        self._ttfb_running = False
        self._sent_seconds = self._spoken_seconds = 0.0
        self._held_timed, self._held_text = [], []      # never spoken: never shown
        self._words_at, self._context_starting, self._last_pts = None, False, 0

    # ------------------------------------------------------------------ slots out

    async def _receive_slots(self):
        """The engine's slots and events, in its order, for as long as the session lives."""
        while self._session is not None:
            item = await self._session.receive()
            if item is None:
                await self.push_error(f"the talking-head server closed the session's media "
                                      f"websocket ({self._session.close_code})")
                return
            if item.kind == "slot":
                await self._push_slot(item)
            else:
                await self._on_event(item.type, item.data)

    async def _on_event(self, kind: str, data: dict):
        if kind == "interrupted":
            self._cut_done = self._cutting
        elif kind == "speech_started":
            self._speaking = True
            self._release_countdown = None
            if self._cut_done:                 # a new utterance after the cut
                self._cutting = self._cut_done = False
        elif kind == "speech_ended":
            self._speaking = False
            settled = (self._spoken_seconds >= self._sent_seconds - SLACK_SECONDS
                       and time.monotonic() - self._last_sent > RACE_SECONDS)
            if settled:                        # all audio sent has been spoken
                await self._release_stops()
            elif self._held_stops:
                self._release_countdown = RELEASE_AFTER_SLOTS
        elif kind == "error":
            logger.warning(f"{self}: the talking-head server says {data.get('message')}")

    async def _push_slot(self, slot: Slot):
        """One slot out: its picture, shown once the audio before it has played, then its
        sound when it is speech. Idle (and muted) slots carry no audio frame: the transport
        plays silence by itself, and its audio queue empties between replies. (Its track
        never plays faster than real time, and each time it finds the queue empty between
        two writes it plays 10 ms of silence instead: with silent slots queued too, that delay
        would add up for the whole session; this way it lasts one reply at most.)"""
        speech = slot.speech
        if self._cutting:
            if not speech and self._cut_done:
                self._cutting = self._cut_done = False
            elif speech:
                self._muted += self._cut_done
                if self._muted > MAX_MUTED_SLOTS:
                    self._cutting = self._cut_done = False
                else:
                    speech = False                 # the old timeline: muted
                    self.muted_slots += 1
        if slot.image:
            image = OutputImageRawFrame(self._rgb(slot), (slot.width, slot.height), "RGB")
            image.sync_with_audio = True
            await self.push_frame(image)
        if speech:
            while self._held_text and self._held_text[0][0] <= self._spoken_seconds + 1e-6:
                await self.push_frame(self._held_text.pop(0)[1])
            self._spoken_seconds += len(slot.pcm) / (2 * slot.rate)
            await self.push_frame(TTSAudioRawFrame(slot.pcm, slot.rate, 1))
            await self._push_timed_spoken()
            if self._ttfb_running:
                self._ttfb_running = False
                await self.stop_ttfb_metrics()
        elif self._release_countdown is not None:
            self._release_countdown -= 1
            if self._release_countdown <= 0:
                await self._release_stops()
        self.slots_out += 1

    async def _push_timed_spoken(self):
        """After the sound of a speech slot: the timed frames whose offset it played."""
        due = [frame for offset, frame in self._held_timed if offset < self._spoken_seconds]
        self._held_timed = [(o, f) for o, f in self._held_timed if o >= self._spoken_seconds]
        for frame in due:
            await self.push_frame(frame)

    async def _release_stops(self):
        """The reply has been spoken (or cut): what was held for it goes out, the text before
        the stop frames; the next audio starts a new reply."""
        self._release_countdown = None
        self._sent_seconds = self._spoken_seconds = 0.0
        timed, text, stops = self._held_timed, self._held_text, self._held_stops
        self._held_timed, self._held_text, self._held_stops = [], [], []
        self._words_at = None
        for _, frame in timed:
            await self.push_frame(frame)
        for _, frame in text:
            await self.push_frame(frame)
        for frame in stops:
            await self.push_frame(frame)

    @staticmethod
    def _rgb(slot: Slot) -> bytes:
        if slot.format == "rgb":
            return slot.image
        return Image.open(io.BytesIO(slot.image)).convert("RGB").tobytes()
