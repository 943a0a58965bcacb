"""A session's audio sources on its one timeline, fed at the media clock.

    live(pcm, rate, channels)   the peer's microphone: real time by nature, pushed as it comes
    queue(audio, rate)          websocket PCM, local TTS, a file: spoken in arrival order, fed
                                at real-time pace (with a small lead), however fast it arrived
    feed(now)                   called by the media clock every 20 ms: pushes what is due into
                                the session, then session.tick() fills silence if nothing came
    interrupt()                 barge-in: drops queued audio and cuts the session's timeline

While queued audio is being spoken the microphone is ducked (its audio is dropped), so the
microphone never waits behind a long utterance and its latency never grows. Feeding queued
audio at real-time pace keeps the timeline level with the wall clock: a voice agent may push
a whole reply at once and the avatar still speaks it at the speed it was recorded.

live() and queue() are called on the event loop; feed() and interrupt() on other threads.
"""

import os
import tempfile
import threading
import time
from collections import deque

import numpy as np

from models.audio_io import AudioInputError, check_rate, decode_audio, to_float_mono
from stream.session import Session

LEAD_SECONDS = 0.1            # queued audio is fed this far ahead of the wall clock
MAX_QUEUED_SECONDS = 120.0    # queued audio not yet spoken
MAX_FILE_BYTES = 20 * 1024 * 1024


class AudioFeed:
    def __init__(self, session: Session):
        self.session = session
        self._lock = threading.Lock()            # the lists below
        self._feeding = threading.Lock()         # one feed() or interrupt() at a time
        self._queued: deque[tuple[np.ndarray, int]] = deque()   # (float32 mono, rate)
        self._queued_seconds = 0.0
        self._live: list[tuple[np.ndarray, int]] = []
        self._spoken_until: float | None = None   # wall time up to which queued audio was fed
        self.ducked_seconds = 0.0                 # microphone audio dropped while speaking

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
            if self._queued_seconds + audio.size / rate > MAX_QUEUED_SECONDS:
                raise AudioInputError(f"more than {MAX_QUEUED_SECONDS:.0f} s of audio queued: "
                                      "send audio no faster than it is spoken, or interrupt")
            self._queued.append((audio, rate))
            self._queued_seconds += audio.size / rate
            return self._queued_seconds

    @property
    def queued_seconds(self) -> float:
        return self._queued_seconds

    def speaking(self, now: float | None = None) -> bool:
        """Queued audio is being (or waiting to be) spoken."""
        now = time.perf_counter() if now is None else now
        return bool(self._queued) or (self._spoken_until is not None and self._spoken_until > now)

    # ---------------------------------------------------------------- the clock side

    def feed(self, now: float) -> None:
        with self._feeding:
            with self._lock:                     # short: the event loop takes it too
                live, self._live = self._live, []
                pieces = []
                if self._queued:
                    if self._spoken_until is None or self._spoken_until < now:
                        self._spoken_until = now
                    while self._queued and self._spoken_until < now + LEAD_SECONDS:
                        piece, rate = self._take_queued(now + LEAD_SECONDS - self._spoken_until)
                        pieces.append((piece, rate))
                        self._spoken_until += piece.size / rate
                if self.speaking(now):              # queued audio speaks: duck the mic
                    self.ducked_seconds += sum(a.size / r for a, r in live)
                else:
                    self._spoken_until = None
                    pieces = live
            for audio, rate in pieces:           # may wait for the session's lock
                self.session.push_audio(audio, rate)
            self.session.tick(now)

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
        the frame index of the cut."""
        with self._feeding:
            with self._lock:
                self._queued.clear()
                self._queued_seconds = 0.0
                self._live = []
                self._spoken_until = None
            return self.session.interrupt()


def decode_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """An uploaded audio file (any format FFmpeg reads) -> (float32 mono, rate)."""
    if not data:
        raise AudioInputError("the audio file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise AudioInputError(f"the audio file is {len(data) / 2**20:.1f} MiB; "
                              f"at most {MAX_FILE_BYTES // 2**20} MiB")
    fd, path = tempfile.mkstemp(prefix="upload-", suffix=".audio")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        audio, rate = decode_audio(path)
    except AudioInputError as e:
        raise AudioInputError(str(e).replace(path, "the audio file")) from None
    finally:
        os.unlink(path)
    if audio.size / rate > MAX_QUEUED_SECONDS:
        raise AudioInputError(f"the audio file is {audio.size / rate:.0f} s long; "
                              f"at most {MAX_QUEUED_SECONDS:.0f} s")
    return audio, rate
