"""A session as a stream of whole slots and events, for a client without WebRTC.

    HeadlessClock(session, feed, loop, rate)   the WebRTC path's MediaClock (stream/webrtc.py:
                                               real-time pacing, repeats, resync, barge-in
                                               padding), its slots sent whole instead of onto
                                               tracks
    FastClock(...)                             "fast" pacing: every frame leaves as soon as it
                                               is rendered, queued audio is fed as fast as the
                                               frames are taken (a bounded lead), for offline use
    clock.out                                  a SlotQueue on the event loop: Slot, and event
                                               dicts, in the order they happened

A Slot is one 40 ms slot: its picture, and its own 40 ms of sound (the audio of the same session
frame, so lips and sound leave together and the input audio is played once), resampled to the
client's rate (exactly rate / 25 samples per slot), with the slot's index and media time.

Events, computed where the slots are made so that they are in order with them:
    {"type": "speech_started", "slot", "frame", "utterance"}   before the first slot whose
        sound is queued audio (websocket PCM, TTS, a file)
    {"type": "speech_ended", "slot", "frame", "utterance", "interrupted"}   after the last
        slot of that audio (it has left when the event is sent: "playback finished")
    {"type": "interrupted", "cut_frame", "slot"}   a barge-in was carried out; the slots
        after it play the new timeline (speech_ended follows once the slots before the cut
        have left, within one chunk)

A client that reads slower than slots are made loses the oldest slots (never events; counted
as a WebRTC track's would be: one video and two 20 ms audio frames per slot). In fast pacing
the clock waits instead (the queue is the back-pressure), up to the session's own bounds.
"""

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from stream.audio import RATE, Resampler
from stream.player import FPS
from stream.session import PLAYBACK_PER_FRAME, Session
from stream.sources import AudioFeed
from stream.webrtc import AUDIO_FRAME, AUDIO_RATE, MediaClock

REALTIME_QUEUE = 25            # slots waiting for a slow reader (1 s) before the oldest go
FAST_QUEUE = 8                 # fast: the clock takes no more frames while this many wait
FAST_LEAD_FRAMES = 25          # fast: queued audio fed this far ahead of the frames taken
FAST_TAIL_WAIT = 0.1           # fast: the queue empty this long ends an utterance (s) ...
FAST_TAIL_FRAMES = 8           # ... and this much silence follows it at once, so that its
                               #   last frames (which need look-ahead audio) render now


@dataclass
class Slot:
    index: int                 # output slot n, 25 a second, continuous (media time n / 25 s)
    frame: int | None          # the session frame whose audio it plays (None: output held)
    image: np.ndarray | None   # [S, S, 3] uint8 (None before the first frame)
    pcm: bytes                 # rate / 25 samples, int16 little-endian mono
    speech: bool               # its sound is queued audio (an utterance)
    made: float                # perf_counter() when the clock made it


class SlotQueue:
    """Slots and events from a clock thread to the event loop's sender. While no client is
    attached nothing is kept; beyond `capacity` slots the oldest slot goes (`on_drop`)."""

    def __init__(self, capacity: int, on_drop=None):
        self.capacity, self.on_drop = capacity, on_drop
        self.items: deque = deque()
        self.slots = 0                    # Slots in items
        self.attached = False
        self.ended = False
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return self.slots

    def put(self, item) -> None:
        """On the event loop. None ends the queue."""
        if item is None:
            self.ended = True
        elif self.attached:
            self.items.append(item)
            if isinstance(item, Slot):
                self.slots += 1
            while self.slots > self.capacity:
                oldest = next(i for i, x in enumerate(self.items) if isinstance(x, Slot))
                del self.items[oldest]
                self.slots -= 1
                if self.on_drop:
                    self.on_drop()
        self._ready.set()

    async def get(self):
        """The next Slot or event dict; None once ended."""
        while not self.items:
            if self.ended:
                return None
            self._ready.clear()
            await self._ready.wait()
        item = self.items.popleft()
        if isinstance(item, Slot):
            self.slots -= 1
        return item

    def attach(self, attached: bool) -> None:
        self.attached = attached
        if not attached:
            self.items.clear()
            self.slots = 0


class SlotAudio:
    """48 kHz slot audio -> exactly rate / 25 int16 samples per slot (a streaming resampler
    and a small FIFO: the resampler's ~1 ms delay is the only offset)."""

    def __init__(self, rate: int):
        self.rate, self.per_slot = rate, rate // FPS
        self.resample = Resampler(AUDIO_RATE, rate)
        self.fifo = np.zeros(0, np.float32)

    def __call__(self, audio: np.ndarray) -> bytes:
        fifo = np.concatenate([self.fifo, self.resample(audio.astype(np.float32))])
        out = np.zeros(self.per_slot, np.float32)
        n = min(fifo.size, self.per_slot)
        out[self.per_slot - n:] = fifo[:n]                  # (short only at the very start)
        self.fifo = fifo[n:][-4 * self.per_slot:]
        return (np.clip(out, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class HeadlessClock(MediaClock):
    """The media clock of stream/webrtc.py with whole slots out (see the module docstring)."""

    def __init__(self, session: Session, feed: AudioFeed, loop: asyncio.AbstractEventLoop,
                 rate: int = AUDIO_RATE, capacity: int = REALTIME_QUEUE):
        super().__init__(session, feed, loop)
        self.out = SlotQueue(capacity, on_drop=self._dropped)
        self.slot_audio = SlotAudio(rate)
        self.spf = session.engine.feature_config.samples_per_frame     # 16 kHz per frame
        self.utterance = 0                 # utterances started
        self._speaking = False             # the last slot out played queued audio
        self._interrupted = False          # ... and a barge-in came during its utterance
        self._cutting = False              # a barge-in is being carried out ...
        self._ended_while_cutting: dict | None = None   # ... and ended the utterance meanwhile

    def _dropped(self) -> None:
        self.video.dropped += 1
        self.audio.dropped += PLAYBACK_PER_FRAME // AUDIO_FRAME

    def end_tracks(self) -> None:
        super().end_tracks()
        self.out.put(None)

    def stop(self) -> None:
        super().stop()
        if not self._thread.is_alive():            # (a step still running keeps its resampler)
            self.slot_audio.resample.close()

    def _output(self, n: int, frame: int | None, image: np.ndarray | None,
                audio: np.ndarray) -> None:
        speech = frame is not None and self.feed.queued_in(frame * self.spf,
                                                           (frame + 1) * self.spf)
        items = []
        if speech and not self._speaking:
            self.utterance += 1
            self._interrupted = False
            items.append({"type": "speech_started", "slot": n, "frame": frame,
                          "utterance": self.utterance})
        elif self._speaking and not speech:
            ended = {"type": "speech_ended", "slot": n - 1, "frame": frame,
                     "utterance": self.utterance, "interrupted": self._interrupted}
            if self._cutting:              # the barge-in's doing: it follows "interrupted"
                self._ended_while_cutting = {**ended, "interrupted": True}
            else:
                items.append(ended)
        self._speaking = speech
        items.append(Slot(n, frame, image, self.slot_audio(audio), speech, time.perf_counter()))
        self._post(items)

    def _post(self, items: list) -> None:
        try:
            self.loop.call_soon_threadsafe(_put_all, self.out, items)
        except RuntimeError:               # the event loop is closed: the server is stopping
            self._stop.set()

    def interrupt(self) -> int:
        """The queued audio stops being fed at once, while the cut may wait for the
        session's workers: an utterance that runs out meanwhile ends as interrupted, and its
        speech_ended follows the "interrupted" event."""
        with self._step:
            self._cutting = True
        cut = None
        try:
            cut = super().interrupt()
        finally:
            with self._step:
                self._cutting = False
                items = [] if cut is None else [{"type": "interrupted", "cut_frame": cut,
                                                 "slot": self.slots_sent}]
                if self._ended_while_cutting is not None:
                    items.append(self._ended_while_cutting)
                    self._ended_while_cutting = None
                self._interrupted = self._speaking
                self._post(items)
        return cut


class FastClock(HeadlessClock):
    """"fast" pacing: frames leave as soon as they are rendered, each with its own audio;
    queued audio goes into the session FAST_LEAD_FRAMES ahead of the frames taken, and the
    clock takes no frame while FAST_QUEUE slots wait for the client. With nothing queued the
    session idles at wall-clock pace, as in real time; an utterance that comes then replaces
    the idle silence not generated yet (Session.cut), so its first frame does not wait for
    the idle frames of that silence."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, capacity=10**9, **kwargs)       # never drops: it waits
        self.session.thin_when_behind = False     # each frame leaves with its own sound
        self._next = 0                     # next session frame to take
        self._empty_since: float | None = None

    def _step_once(self, now: float) -> None:
        s, feed = self.session, self.feed
        end = s.audio_end
        if feed.queued_seconds > 0 and feed.spoken_end <= self._next * self.spf < end:
            s.cut()        # an utterance waits behind idle silence no frame was taken from:
            end = s.audio_end   # it starts at the first block not generated yet, not after it
        feed.feed(now, budget=max((self._next + FAST_LEAD_FRAMES) * self.spf - end, 0) / RATE)
        if feed.queued_seconds > 0 or s.audio_end > end:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = now
        elif now - self._empty_since > FAST_TAIL_WAIT:
            tail = feed.spoken_end + FAST_TAIL_FRAMES * self.spf - s.audio_end
            if feed.spoken_end and tail > 0:          # an utterance ended: render it all now
                s.push_audio(np.zeros(tail, np.float32), RATE)
        taken = 0
        while len(self.out) + taken < FAST_QUEUE or not self.out.attached:
            frame = s.next_frame(timeout=0)
            if frame is None:
                break
            if frame.index < self._next:             # (kept across a barge-in's cut)
                continue
            self._next = frame.index + 1
            self.player.next_slot = self._next
            self.player.stats.slots += 1
            self.player.stats.shown += 1
            self.latency_s.append(time.perf_counter() - frame.audio_arrived)
            self.render_latency_s.append(frame.rendered - frame.own_audio_arrived)
            self._emit(frame.image, s.frame_audio(frame.index), frame.index)
            taken += 1
        self._count(now, taken, taken)


def _put_all(out: SlotQueue, items: list) -> None:
    for item in items:
        out.put(item)
