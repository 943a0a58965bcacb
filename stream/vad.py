"""Voice activity: silero-vad's bundled ONNX model run with onnxruntime (no torch).

The model takes 512 new samples at 16 kHz (32 ms) plus the previous 64 as context, and a
recurrent state; it returns the probability that the 32 ms frame contains speech.
Speech/silence decisions use hysteresis (a higher threshold to start than to stay) and a
hangover so short pauses between words do not count as silence.
"""

import importlib.util
from collections import deque
from pathlib import Path

import numpy as np
import onnxruntime as ort

FRAME = 512        # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64       # samples of the previous frame the model sees


def silero_model_path() -> Path:
    """silero_vad.onnx inside the silero-vad package, found without importing it (that imports
    torch and prints warnings)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package silero-vad is not installed: pip install silero-vad")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the silero-vad package")
    return path


_SESSION: ort.InferenceSession | None = None


def _session() -> ort.InferenceSession:
    """One shared onnxruntime session (it is thread-safe for run); each VAD keeps its own state."""
    global _SESSION
    if _SESSION is None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        _SESSION = ort.InferenceSession(str(silero_model_path()), sess_options=opts,
                                        providers=["CPUExecutionProvider"])
    return _SESSION


class VoiceActivity:
    """Streaming VAD over 16 kHz mono float32 audio.

    push() any number of samples; `probabilities` gets one value per complete 32 ms frame,
    `speech` one decision per frame (after hysteresis and hangover). Only the last `history`
    frames are kept (an open-ended stream must not grow); `frames` counts all of them.
    """

    def __init__(self, start_threshold: float = 0.5, stop_threshold: float = 0.35,
                 hangover_ms: float = 200.0, history: int = 4096):
        self.history = history
        self.start_threshold = start_threshold
        self.stop_threshold = stop_threshold
        self.hangover_frames = int(round(hangover_ms / 32.0))
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)
        self.probabilities: deque[float] = deque(maxlen=self.history)
        self.speech: deque[bool] = deque(maxlen=self.history)
        self.frames = 0
        self.in_speech = False
        self.quiet_frames = 0

    def push(self, audio: np.ndarray) -> int:
        """Feed samples; returns how many new 32 ms frames were classified."""
        self.pending = np.concatenate([self.pending, np.asarray(audio, dtype=np.float32)])
        n = self.pending.size // FRAME
        for i in range(n):
            frame = self.pending[i * FRAME:(i + 1) * FRAME]
            self._classify(frame)
        self.pending = self.pending[n * FRAME:]
        return n

    def _classify(self, frame: np.ndarray) -> None:
        x = np.concatenate([self.context, frame])[None]              # [1, 576]
        prob, self.state = _session().run(
            None, {"input": x, "state": self.state, "sr": np.array(16000, dtype=np.int64)})
        self.context = frame[-CONTEXT:]
        p = float(prob.reshape(-1)[0])
        self.probabilities.append(p)
        if self.in_speech:
            self.quiet_frames = self.quiet_frames + 1 if p < self.stop_threshold else 0
            if self.quiet_frames > self.hangover_frames:
                self.in_speech = False
        elif p >= self.start_threshold:
            self.in_speech, self.quiet_frames = True, 0
        self.speech.append(self.in_speech)
        self.frames += 1

    def truncate(self, sample: int, before: np.ndarray) -> None:
        """Barge-in: forget the decisions from 16 kHz sample `sample` on, so that the audio
        pushed next is classified where it lies on the cut timeline (not where the cut-away
        audio ended). `before`: the samples kept just before `sample` (at least the part of
        its frame, and the context, when they exist). The recurrent state is kept: it has
        heard the audio before the cut, and a few frames of the new audio settle it."""
        frame = sample // FRAME
        if sample >= self.frames * FRAME + self.pending.size:
            return                                    # nothing after the cut was pushed
        for _ in range(min(max(self.frames - frame, 0), len(self.speech))):
            self.speech.pop()
            self.probabilities.pop()
        self.frames = min(self.frames, frame)
        part = sample - frame * FRAME                 # samples of the cut frame before it
        self.pending = np.array(before[before.size - part:] if part else [], np.float32)
        context = before[:before.size - part][-CONTEXT:]
        self.context = np.concatenate([np.zeros(CONTEXT - context.size, np.float32),
                                       context.astype(np.float32)])
        self.in_speech = bool(self.speech[-1]) if self.speech else False
        self.quiet_frames = 0

    def speech_at(self, sample: int) -> bool | None:
        """Speech decision for the frame holding 16 kHz sample `sample`; None if unknown."""
        i = sample // FRAME - (self.frames - len(self.speech))
        return self.speech[i] if 0 <= i < len(self.speech) else None


def speech_fraction(audio: np.ndarray) -> float:
    """Share of 32 ms frames judged speech in a whole 16 kHz clip (offline helper)."""
    vad = VoiceActivity(history=audio.size // FRAME + 1)
    vad.push(audio)
    return float(np.mean(vad.speech)) if vad.speech else 0.0
