"""Session audio input: PCM pieces of any size, rate and layout in; 16 kHz mono out.

Every source (WebRTC microphone at 48 kHz, websocket PCM from a TTS, a file, local TTS)
pushes into one AudioInput. It converts to float32 mono, resamples to 16 kHz with FFmpeg's
band-limited resampler (libswresample through av: ~1 ms of look-ahead, chunk-size
independent output, time-aligned), runs voice activity detection, and keeps the samples
addressed by absolute index: sample i of the session is at time i / 16000 s.

It also keeps the playback copy of the same timeline at 48 kHz (the rate WebRTC/Opus and
the mp4 writer use): a 48 kHz source passes through bit for bit, so the output audio is the
input audio, only delayed. Sample j of the playback copy is at time j / 48000 s.
"""

import errno

import av
import numpy as np

from models.audio_io import AudioInputError, check_rate, to_float_mono
from stream.vad import CONTEXT, FRAME, VoiceActivity

RATE = 16000
PLAYBACK_RATE = 48000


class OneThreadResampler:
    """av.AudioResampler's conversion (sample format, layout, rate and, if given, a fixed
    frame size), its FFmpeg filter graph on one thread. av's graph keeps a thread pool of one
    thread per core (2 a resampler on 2 cores) for filters that run on the caller's thread,
    and a server has several resamplers a session. resample(None) flushes; the graph opens
    at the first frame, from its format, layout, rate and time base."""

    def __init__(self, format: str, layout: str, rate: int, frame_size: int = 0):
        self.format, self.layout, self.rate, self.frame_size = format, layout, rate, frame_size
        self._graph = None

    def _open(self, frame: av.AudioFrame) -> av.filter.Graph:
        graph = av.filter.Graph()
        graph.threads = 1                               # before any filter is added
        extra = {} if frame.time_base is None else {"time_base": str(frame.time_base)}
        source = graph.add("abuffer", sample_rate=str(frame.sample_rate),
                           sample_fmt=frame.format.name, channel_layout=frame.layout.name,
                           **extra)
        convert = graph.add("aformat", sample_rates=str(self.rate), sample_fmts=self.format,
                            channel_layouts=self.layout)
        sink = graph.add("abuffersink")
        source.link_to(convert)
        convert.link_to(sink)
        graph.configure()
        if self.frame_size:
            graph.set_audio_frame_size(self.frame_size)
        return graph

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        if self._graph is None:
            if frame is None:
                return []
            self._graph = self._open(frame)
        self._graph.push(frame)
        frames = []
        while True:
            try:
                frames.append(self._graph.pull())
            except EOFError:
                break
            except av.FFmpegError as e:
                if e.errno != errno.EAGAIN:                # EAGAIN: it wants more input
                    raise
                break
        return frames


class Resampler:
    """Streaming float32 mono resampler (passes the target rate through untouched)."""

    def __init__(self, rate: int, target: int = RATE):
        self.rate, self.target = rate, target
        self._swr = None if rate == target else self._new()

    def _new(self) -> OneThreadResampler:
        return OneThreadResampler("flt", "mono", self.target)

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
        self._swr = self._new()
        return out

    def close(self) -> None:
        """Free FFmpeg's resampler now, whoever still holds this object; it must not be used
        after."""
        self._swr = None

    @staticmethod
    def _collect(frames) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)


class AudioInput:
    """The session's 16 kHz audio, with absolute sample indices and voice activity.

    push() validates before it changes anything, so a bad piece raises AudioInputError and
    the buffer stays usable. Samples are kept from `start` (absolute index) to `end`;
    consumers call discard_before() once they no longer need older audio. With
    `playback=True` the same audio is also kept at 48 kHz (`playback`, from index
    `playback_start`), for output.
    """

    def __init__(self, vad: bool = True, max_seconds: float = 120.0, playback: bool = False):
        self.vad = VoiceActivity() if vad else None
        self.max_samples = int(max_seconds * RATE)
        self.samples = np.zeros(0, dtype=np.float32)
        self.start = 0                 # absolute index of self.samples[0]
        self.resampler: Resampler | None = None
        self.keep_playback = playback
        self.playback = np.zeros(0, dtype=np.float32)
        self.playback_start = 0
        self.playback_resampler: Resampler | None = None

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
            self._flush_playback()
            if self.resampler is not None:
                tail = self.resampler.flush()
            self.resampler = Resampler(rate)
            if self.keep_playback:
                self.playback_resampler = Resampler(rate, PLAYBACK_RATE)
        if self.keep_playback:
            self._append_playback(self.playback_resampler(mono))
        return self._append(np.concatenate([tail, self.resampler(mono)]))

    def flush(self) -> int:
        """The source ended: release what the resamplers hold back."""
        self._flush_playback()
        if self.resampler is None:
            return 0
        return self._append(self.resampler.flush())

    def _flush_playback(self) -> None:
        if self.playback_resampler is not None:
            self._append_playback(self.playback_resampler.flush())

    def push_silence(self, seconds: float) -> int:
        """Silence (idle time with no source)."""
        self.flush()
        n = int(round(seconds * RATE))
        if self.keep_playback:
            self._append_playback(np.zeros(self._playback_gap(self.end + n), np.float32))
        return self._append(np.zeros(n, dtype=np.float32))

    def _playback_gap(self, end16: int) -> int:
        """48 kHz samples that bring the playback copy level with 16 kHz index end16."""
        return max(end16 * (PLAYBACK_RATE // RATE) - self.playback_end, 0)

    @property
    def playback_end(self) -> int:
        return self.playback_start + self.playback.size

    def _append_playback(self, x: np.ndarray) -> None:
        if x.size:
            self.playback = np.concatenate([self.playback, x])

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

    def read_playback(self, start: int, end: int) -> np.ndarray:
        """48 kHz samples [start, end); zeros where not (or no longer) held."""
        out = np.zeros(max(end - start, 0), dtype=np.float32)
        lo, hi = max(start, self.playback_start), min(end, self.playback_end)
        if hi > lo:
            out[lo - start:hi - start] = self.playback[lo - self.playback_start:
                                                       hi - self.playback_start]
        return out

    def discard_before(self, index: int) -> None:
        cut = min(max(index - self.start, 0), self.samples.size)
        if cut:
            self.samples = self.samples[cut:]
            self.start += cut

    def discard_playback_before(self, index: int) -> None:
        cut = min(max(index - self.playback_start, 0), self.playback.size)
        if cut:
            self.playback = self.playback[cut:]
            self.playback_start += cut

    def truncate(self, index: int) -> None:
        """Barge-in: forget everything from 16 kHz sample `index` on (and the same time in
        the playback copy); what the resamplers hold is dropped. Later audio continues here."""
        index = max(index, self.start)
        self.samples = self.samples[: index - self.start]
        if self.vad is not None:
            self.vad.truncate(min(index, self.end), self.samples[-FRAME - CONTEXT:])
        self.playback = self.playback[: max(index * (PLAYBACK_RATE // RATE)
                                            - self.playback_start, 0)]
        if self.resampler is not None:
            self.resampler = Resampler(self.resampler.rate)
        if self.playback_resampler is not None:
            self.playback_resampler = Resampler(self.playback_resampler.rate, PLAYBACK_RATE)
        if self.keep_playback:
            self._append_playback(np.zeros(self._playback_gap(index), np.float32))

    def close(self) -> None:
        """The session ended: free the resamplers' native resources (see Resampler.close)."""
        for resampler in (self.resampler, self.playback_resampler):
            if resampler is not None:
                resampler.close()
        self.resampler = self.playback_resampler = None

    def speaking(self) -> bool:
        """Whether the most recent audio is speech (False without VAD or before any frame)."""
        return bool(self.vad and self.vad.speech and self.vad.speech[-1])
