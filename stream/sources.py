"""A session's audio sources on its one timeline, fed at the media clock.

    live(pcm, rate, channels)   the peer's microphone: real time by nature, pushed as it comes
    queue(audio, rate)          websocket PCM, local TTS, a file: spoken in arrival order, fed
                                at real-time pace (with a small lead), however fast it arrived
    feed(now)                   called by the media clock every 20 ms: pushes what is due into
                                the session, then session.tick() fills silence if nothing came
    feed(now, budget=s)         "fast" pacing (stream/headless.py): up to s seconds of queued
                                audio now, whatever the wall clock
    interrupt()                 barge-in: drops queued audio and cuts the session's timeline
    queued_in(start, end)       whether queued audio (an utterance) fills most of that stretch
                                of the session's 16 kHz timeline (what was pushed where is kept
                                as spans, cut with the timeline); queued_overlaps: any of it

While queued audio is being spoken the microphone is ducked (its audio is dropped), so the
microphone never waits behind a long utterance and its latency never grows. Feeding queued
audio at real-time pace keeps the timeline level with the wall clock: a voice agent may push
a whole reply at once and the avatar still speaks it at the speed it was recorded.

live() and queue() are called on the event loop; feed() and interrupt() on other threads.
"""

import io
import threading
import time
from collections import deque

import av
import numpy as np

from models.audio_io import MAX_RATE, MIN_RATE, AudioInputError, check_rate, to_float_mono
from stream.session import Session

LEAD_SECONDS = 0.2            # queued audio is fed this far ahead of the wall clock: more
#                               than a block and the look-ahead (160 ms), so the first frames
#                               of an utterance wait for no audio
MAX_QUEUED_SECONDS = 120.0    # queued audio not yet spoken
MAX_QUEUED_PIECES = 20000     # pieces queued (1-sample messages must not cost 100 B each)
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_DECODE_SECONDS = 30.0     # wall time to decode one uploaded file
SPAN_GAP = 320                # 16 kHz samples (20 ms) between queued pieces of one utterance


class AudioFeed:
    def __init__(self, session: Session, max_queued_seconds: float = MAX_QUEUED_SECONDS,
                 max_pieces: int = MAX_QUEUED_PIECES):
        self.session = session
        self.max_queued_seconds, self.max_pieces = max_queued_seconds, max_pieces
        self._lock = threading.Lock()            # the lists below
        self._feeding = threading.Lock()         # one feed() or interrupt() at a time
        self._queued: deque[tuple[np.ndarray, int]] = deque()   # (float32 mono, rate)
        self._queued_seconds = 0.0
        self._live: list[tuple[np.ndarray, int]] = []
        self._spoken_until: float | None = None   # wall time up to which queued audio was fed
        self.ducked_seconds = 0.0                 # microphone audio dropped while speaking
        self._spans: deque[list[int]] = deque()   # [start, end): 16 kHz timeline of queued audio

    # ---------------------------------------------------------------- sources (event loop)

    def live(self, pcm: np.ndarray, rate: int, channels: int = 1) -> None:
        """A piece of microphone audio (int16 or float, interleaved)."""
        audio = to_float_mono(pcm, channels)
        with self._lock:
            self._live.append((audio, check_rate(rate)))

    def queue(self, pcm: np.ndarray, rate: int, channels: int = 1) -> float:
        """Queue a piece to be spoken after what is already queued. Raises AudioInputError
        on bad audio or when too much is queued. Returns the seconds now queued."""
        rate = check_rate(rate)
        audio = to_float_mono(pcm, channels)
        if audio.size == 0:
            raise AudioInputError("empty audio: it holds no samples")
        with self._lock:
            if self._queued_seconds + audio.size / rate > self.max_queued_seconds:
                raise AudioInputError(f"more than {self.max_queued_seconds:.0f} s of audio "
                                      "queued: send audio no faster than it is spoken, or "
                                      "interrupt")
            if len(self._queued) >= self.max_pieces:
                raise AudioInputError(f"{self.max_pieces} pieces of audio are queued: send "
                                      "fewer, longer pieces (20 ms or more each)")
            self._queued.append((audio, rate))
            self._queued_seconds += audio.size / rate
            return self._queued_seconds

    @property
    def queued_seconds(self) -> float:
        return self._queued_seconds

    @property
    def feeding_queued(self) -> bool:
        """An utterance is being fed (its audio pushed at real-time pace): from its first
        piece pushed until a feed() after its last one has been spoken."""
        return self._spoken_until is not None

    def speaking(self, now: float | None = None) -> bool:
        """Queued audio is being (or waiting to be) spoken."""
        now = time.perf_counter() if now is None else now
        return bool(self._queued) or (self._spoken_until is not None and self._spoken_until > now)

    # ---------------------------------------------------------------- the clock side

    def feed(self, now: float, budget: float | None = None) -> None:
        with self._feeding:
            with self._lock:                     # short: the event loop takes it too
                live, self._live = self._live, []
                pieces = []
                if self._queued and budget is not None:      # fast: what the budget allows
                    self._spoken_until = max(self._spoken_until or now, now)
                    while self._queued and budget > 0:
                        piece, rate = self._take_queued(budget)
                        pieces.append((piece, rate))
                        budget -= piece.size / rate
                        self._spoken_until += piece.size / rate
                elif self._queued:
                    if self._spoken_until is None or self._spoken_until < now:
                        self._spoken_until = now
                    while self._queued and self._spoken_until < now + LEAD_SECONDS:
                        piece, rate = self._take_queued(now + LEAD_SECONDS - self._spoken_until)
                        pieces.append((piece, rate))
                        self._spoken_until += piece.size / rate
                queued = bool(pieces)
                if self.speaking(now):              # queued audio speaks: duck the mic
                    self.ducked_seconds += sum(a.size / r for a, r in live)
                else:
                    self._spoken_until = None
                    pieces, queued = live, False
                waiting = bool(self._queued)
            for audio, rate in pieces:           # may wait for the session's lock
                span = self.session.push_audio(audio, rate)
                if queued:
                    self._add_span(*span)
            if budget is None or not waiting:    # fast: no silence between queued pieces
                self.session.tick(now)

    def _add_span(self, start: int, end: int) -> None:
        with self._lock:
            if self._spans and start - self._spans[-1][1] <= SPAN_GAP:
                self._spans[-1][1] = end             # one utterance goes on
            elif end > start:
                self._spans.append([start, end])

    def queued_in(self, start: int, end: int) -> bool:
        """Whether queued audio fills at least half of 16 kHz samples [start, end) of the
        session's timeline. Asked in increasing order: spans before `start` are forgotten."""
        with self._lock:
            while self._spans and self._spans[0][1] <= start:
                self._spans.popleft()
            covered = sum(max(min(e, end) - max(s, start), 0) for s, e in self._spans)
            return 2 * covered >= end - start

    def queued_overlaps(self, start: int, end: int) -> bool:
        """Whether any queued audio lies in 16 kHz samples [start, end) (changes nothing)."""
        with self._lock:
            return any(s < end and e > start for s, e in self._spans)

    @property
    def spoken_end(self) -> int:
        """16 kHz timeline index where the last queued audio pushed ends (0: none)."""
        with self._lock:
            return self._spans[-1][1] if self._spans else 0

    def _take_queued(self, seconds: float) -> tuple[np.ndarray, int]:
        """Up to `seconds` of the queue head (under the lock)."""
        audio, rate = self._queued[0]
        n = max(int(round(seconds * rate)), 1)
        piece, rest = audio[:n], audio[n:]
        if rest.size:
            self._queued[0] = (rest, rate)
        else:
            self._queued.popleft()
        self._queued_seconds = max(self._queued_seconds - piece.size / rate, 0.0)
        return piece, rate

    def interrupt(self) -> int:
        """Barge-in: forget queued and pending audio and cut the session's timeline. Returns
        the frame index of the cut. feed() is not held up while the session cuts (that may
        wait for its workers): with nothing queued it only ticks, and whatever it pushes
        meanwhile lies after the cut and is cut too."""
        with self._feeding:
            with self._lock:
                self._queued.clear()
                self._queued_seconds = 0.0
                self._live = []
                self._spoken_until = None
        cut = self.session.interrupt()
        end = cut * self.session.engine.feature_config.samples_per_frame
        with self._lock:                         # queued audio after the cut is gone too
            while self._spans and self._spans[-1][0] >= end:
                self._spans.pop()
            if self._spans:
                self._spans[-1][1] = min(self._spans[-1][1], end)
        return cut


def decode_audio_bytes(data: bytes, max_bytes: int = MAX_FILE_BYTES,
                       max_seconds: float = MAX_QUEUED_SECONDS) -> tuple[np.ndarray, int]:
    """An uploaded audio file (any format FFmpeg reads) -> (float32 mono, rate), decoded
    from memory (nothing is written to disk). Decoding stops as soon as the audio runs past
    `max_seconds`: a small file of compressed silence must not expand to gigabytes."""
    if not data:
        raise AudioInputError("the audio file is empty")
    if len(data) > max_bytes:
        raise AudioInputError(f"the audio file is {len(data) / 2**20:.1f} MiB; "
                              f"at most {max_bytes / 2**20:g} MiB")
    started = time.monotonic()
    pieces, samples = [], 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise AudioInputError("the audio file has no audio track")
            stream = container.streams.audio[0]
            rate = min(max(stream.rate or MAX_RATE, MIN_RATE), MAX_RATE)
            limit = int(max_seconds * rate)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    samples += pieces[-1].size
                if samples > limit:
                    raise AudioInputError(f"the audio file is longer than {max_seconds:.0f} s; "
                                          f"at most {max_seconds:.0f} s")
                if time.monotonic() - started > MAX_DECODE_SECONDS:
                    raise AudioInputError("the audio file takes too long to decode")
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except AudioInputError:
        raise
    except MemoryError:
        raise AudioInputError("the audio file is too large to decode") from None
    except Exception as e:              # hostile bytes may fail anywhere inside FFmpeg
        raise AudioInputError(f"not a readable audio file ({e.__class__.__name__})") from None
    audio = np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)
    if audio.size == 0:
        raise AudioInputError("the audio file contains no audio samples")
    if audio.size > limit:
        raise AudioInputError(f"the audio file is longer than {max_seconds:.0f} s; "
                              f"at most {max_seconds:.0f} s")
    if not np.isfinite(audio).all():
        raise AudioInputError("the audio file decodes to NaN or infinite samples")
    return audio, rate
