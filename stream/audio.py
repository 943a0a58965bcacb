"""Session audio input: PCM pieces of any size, rate and layout in; 16 kHz mono out.

Every source (WebRTC microphone at 48 kHz, websocket PCM from a TTS, a file, local TTS)
pushes into one AudioInput. It converts to float32 mono, resamples to 16 kHz with FFmpeg's
band-limited resampler (libswresample through av: ~1 ms of look-ahead, chunk-size
independent output, time-aligned), runs voice activity detection, and keeps the samples
addressed by absolute index: sample i of the session is at time i / 16000 s.
"""

import av
import numpy as np

from models.audio_io import AudioInputError, check_rate, to_float_mono
from stream.vad import VoiceActivity

RATE = 16000


class Resampler:
    """Streaming float32 mono resampler to 16 kHz (passes 16 kHz through untouched)."""

    def __init__(self, rate: int):
        self.rate = rate
        self._swr = None if rate == RATE else av.AudioResampler(format="flt", layout="mono",
                                                                rate=RATE)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._swr is None:
            return x
        frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        frame.sample_rate = self.rate
        return self._collect(self._swr.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds (call when the source ends or changes rate)."""
        if self._swr is None:
            return np.zeros(0, dtype=np.float32)
        out = self._collect(self._swr.resample(None))
        self._swr = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        return out

    @staticmethod
    def _collect(frames) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)


class AudioInput:
    """The session's 16 kHz audio, with absolute sample indices and voice activity.

    push() validates before it changes anything, so a bad piece raises AudioInputError and
    the buffer stays usable. Samples are kept from `start` (absolute index) to `end`;
    consumers call discard_before() once they no longer need older audio.
    """

    def __init__(self, vad: bool = True, max_seconds: float = 120.0):
        self.vad = VoiceActivity() if vad else None
        self.max_samples = int(max_seconds * RATE)
        self.samples = np.zeros(0, dtype=np.float32)
        self.start = 0                 # absolute index of self.samples[0]
        self.resampler: Resampler | None = None

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample (= samples received so far)."""
        return self.start + self.samples.size

    def push(self, pcm: np.ndarray, rate: int, channels: int = 1) -> int:
        """Add a piece of PCM (int16 or float32, interleaved or [n, channels]).

        Returns how many 16 kHz samples became available.
        """
        rate = check_rate(rate)
        mono = to_float_mono(pcm, channels)
        if mono.size == 0:
            raise AudioInputError("empty audio chunk: it holds no samples")
        if self.samples.size + mono.size * RATE / rate > self.max_samples:
            raise AudioInputError(
                f"audio buffer full ({self.max_samples / RATE:.0f} s unconsumed): "
                "audio arrives faster than it is used")
        tail = np.zeros(0, dtype=np.float32)
        if self.resampler is None or self.resampler.rate != rate:
            if self.resampler is not None:
                tail = self.resampler.flush()
            self.resampler = Resampler(rate)
        return self._append(np.concatenate([tail, self.resampler(mono)]))

    def flush(self) -> int:
        """The source ended: release what the resampler holds back."""
        if self.resampler is None:
            return 0
        return self._append(self.resampler.flush())

    def push_silence(self, seconds: float) -> int:
        """Silence at 16 kHz (idle time with no source)."""
        self.flush()
        return self._append(np.zeros(int(round(seconds * RATE)), dtype=np.float32))

    def _append(self, x: np.ndarray) -> int:
        if x.size:
            self.samples = np.concatenate([self.samples, x])
            if self.vad is not None:
                self.vad.push(x)
        return x.size

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) by absolute index; zeros where before the session start."""
        if max(start, 0) < self.start:
            raise IndexError(f"samples before {self.start} were discarded (asked for {start})")
        if end > self.end:
            raise IndexError(f"samples up to {end} asked, only {self.end} received")
        out = np.zeros(max(end - start, 0), dtype=np.float32)
        lo = max(start, 0)
        out[lo - start:] = self.samples[lo - self.start:end - self.start]
        return out

    def discard_before(self, index: int) -> None:
        cut = min(max(index - self.start, 0), self.samples.size)
        if cut:
            self.samples = self.samples[cut:]
            self.start += cut

    def clear(self) -> None:
        """Barge-in: drop everything queued (indices keep counting)."""
        self.discard_before(self.end)
        if self.resampler is not None:
            self.resampler = Resampler(self.resampler.rate)

    def speaking(self) -> bool:
        """Whether the most recent audio is speech (False without VAD or before any frame)."""
        return bool(self.vad and self.vad.speech and self.vad.speech[-1])
