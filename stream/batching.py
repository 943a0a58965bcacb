"""Sessions share one engine, and its network calls are batched across sessions.

Every session has its own threads (features + motion, render) and its own state (audio,
carry, avatar). What they share is the three networks. Run one call per session and a
machine spends most of its time on per-call overhead (Python, small matrices, the GIL);
stack the sessions' requests into one call and it does the same work at once. That is what
lets one process (and one GPU) carry many sessions.

    Batcher         continuous batching: whoever calls while the worker is busy waits, and
                    the worker then takes every waiting request of the same kind in one call.
                    A lone session never waits for company: no timer, no added latency
                    beyond the hand-over to the worker thread.
    BatchedEngine   an Engine whose encoder, motion sampler and renderer go through Batchers.
                    Same interface as the engine it wraps, so a Session cannot tell.

What is batched with what: encoder windows with encoder windows (any sessions), motion chunks
with motion chunks of the same length, frames with frames of the same avatar (the renderer
takes one portrait per call; sessions of a server mostly share the bundled one).
Batched rows are numerically the same computation; float rounding may differ at the 1e-6
level from an unbatched call, so bit-exact reproducibility tests use the plain engine.
"""

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from models.audio import AudioFeatureExtractor
from models.generator import MotionGenerator


@dataclass
class _Request:
    key: object
    context: object
    arrays: tuple            # each [rows, ...]
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class Batcher:
    """fn(context, *arrays) -> result, called on the rows of many requests at once.

    A request is (key, context, arrays): requests with equal keys may share a call (their
    arrays are concatenated along axis 0 and the result split back by rows); the context of
    the first request of a batch is passed to fn (e.g. the avatar, when the key is its id).
    """

    def __init__(self, fn, max_rows: int = 64, name: str = "batcher"):
        self.fn, self.max_rows = fn, max_rows
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.calls = 0                   # network calls made
        self.requests = 0                # requests served (requests / calls = mean batch)
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def __call__(self, key, context, *arrays) -> np.ndarray:
        request = _Request(key, context, tuple(np.asarray(a) for a in arrays))
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine was closed")
            self._waiting.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _take(self) -> list[_Request]:
        """Under the lock: the oldest waiting request and every later one with its key."""
        first = self._waiting.popleft()
        batch, rows, rest = [first], len(first.arrays[0]), deque()
        while self._waiting:
            r = self._waiting.popleft()
            if r.key == first.key and rows + len(r.arrays[0]) <= self.max_rows:
                batch.append(r)
                rows += len(r.arrays[0])
            else:
                rest.append(r)
        self._waiting = rest
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for r in self._waiting:
                        r.error = RuntimeError("the engine was closed")
                        r.done.set()
                    return
                batch = self._take()
            try:
                stacked = [np.concatenate(parts) for parts in zip(*(r.arrays for r in batch),
                                                                    strict=True)]
                out = self.fn(batch[0].context, *stacked)
                at = 0
                for r in batch:
                    n = len(r.arrays[0])
                    r.result = out[at:at + n]
                    at += n
            except Exception as e:       # noqa: BLE001 - handed to every caller of the batch
                for r in batch:
                    r.error = e
            self.calls += 1
            self.requests += len(batch)
            for r in batch:
                r.done.set()


class BatchedEngine:
    """An Engine whose networks are shared by sessions through Batchers (see module doc)."""

    def __init__(self, engine):
        self.engine = engine
        self.name, self.checkpoint = engine.name, engine.checkpoint
        self.motion = engine.motion
        self.feature_config = engine.feature_config
        self.silence_feature = engine.silence_feature
        inner = engine.features
        self._encode = Batcher(lambda _, mel: inner.encoder(mel), name="encoder-batcher")
        self.features = AudioFeatureExtractor(
            self.feature_config, encoder=lambda mel: self._encode(mel.shape[1:], None, mel),
            batch=inner.batch)
        sampler = engine.generator().sampler                   # the engine's own runner
        self._sample = Batcher(lambda _, *a: sampler(*a), name="motion-batcher")
        self._render = Batcher(lambda avatar, motion: engine.render(avatar, motion),
                               name="render-batcher")

    def generator(self, seed: int = 0, style: dict | None = None) -> MotionGenerator:
        return MotionGenerator(self.motion, self.silence_feature, seed=seed, style=style,
                               sampler=self._sample_rows)

    def _sample_rows(self, noise, carry, carry_audio, audio, style) -> np.ndarray:
        # noise [B, n, D], ...: chunks of the same length n share a call
        return self._sample(noise.shape[1], None, noise, carry, carry_audio, audio, style)

    def render(self, avatar, motion: np.ndarray) -> np.ndarray:
        return self._render(id(avatar), avatar, motion)

    def draws_windows(self, size: int) -> bool:
        return self.engine.draws_windows(size)

    def counts(self) -> dict:
        """(network calls, requests) of each batcher so far."""
        return {name: (b.calls, b.requests) for name, b in
                (("encoder", self._encode), ("motion", self._sample), ("render", self._render))}

    def stats(self) -> dict:
        """Requests per network call of each batcher (1.0 = no batching happened)."""
        return {name: requests / max(calls, 1) for name, (calls, requests) in
                self.counts().items()}

    def close(self) -> None:
        for b in (self._encode, self._sample, self._render):
            b.close()
