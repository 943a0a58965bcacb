"""Training windows: random (carry, chunk) pairs cut from examples of (audio features, motion).

An example is one continuous recording: features [T, stack, 384], motion [T, D] (raw units)
and a style vector [S]. A window starting at frame s is
    carry = motion[s-H-K : s]     (H history frames, then K carried ones; frames before the
                                  stream start: neutral motion, silence audio)
    chunk = motion[s : s+n]       n = chunk_frames, or shorter (a first chunk)
with the audio features of the K carried frames and of the chunk. Chunk lengths are mixed
(mostly one feature block, the run-time chunk on a CPU: 2 frames by default; 4, a GPU's; any
length 1..N) so one model serves every chunk size.
"""

from dataclasses import dataclass

import numpy as np
import torch

from models.motion import MotionConfig, Normalizer
from models.sampler import ChunkCondition


@dataclass
class Example:
    features: np.ndarray     # [T, stack, 384] float16 or float32
    motion: np.ndarray       # [T, D] float32, raw motion-space units
    style: np.ndarray        # [S] float32, in the order of MotionConfig.style_names
    voice: str = ""
    text: str = ""

    @property
    def frames(self) -> int:
        return min(len(self.features), len(self.motion))


def fit_normalizer(examples: list[Example], floor: float = 0.02) -> Normalizer:
    """Per-parameter mean/std of the training motion (std floored so constant ones stay finite)."""
    motion = np.concatenate([e.motion[: e.frames] for e in examples])
    std = np.maximum(motion.std(axis=0), floor)
    return Normalizer(mean=motion.mean(axis=0).tolist(), std=std.tolist())


@dataclass
class WindowBatch:
    cond: ChunkCondition     # normalised carry, audio, style
    target: torch.Tensor     # [B, n, D] normalised motion of the chunk


class WindowSampler:
    """Random training windows, deterministic for a seed."""

    def __init__(self, examples: list[Example], config: MotionConfig, normalizer: Normalizer,
                 silence_feature: np.ndarray, seed: int = 0, block_frames: int = 2,
                 chunk_mix: tuple[tuple[int, float], ...] | None = None,
                 stream_start_p: float = 0.05):
        self.examples = [e for e in examples if e.frames > config.chunk_frames]
        if not self.examples:
            raise ValueError("no example is longer than one chunk")
        self.config = config
        self.normalizer = normalizer
        self.silence = np.asarray(silence_feature, np.float32)
        self.rng = np.random.default_rng(seed)
        # (n, probability); n = 0: uniform over 1..N. Half are the run-time chunk on a CPU,
        # one feature block (block_frames of the data's FeatureConfig)
        self.chunk_mix = chunk_mix or ((block_frames, 0.5), (4, 0.3), (0, 0.2))
        self.stream_start_p = stream_start_p
        weights = np.array([e.frames for e in self.examples], np.float64)
        self.weights = weights / weights.sum()

    def window(self, example: Example, start: int, n: int):
        k, h = self.config.carry_frames, self.config.context_frames
        stack = self.silence.shape
        carry = np.zeros((h, example.motion.shape[1]), np.float32)          # [H + K, D]
        carry_audio = np.broadcast_to(self.silence, (k, *stack)).copy()    # [K, stack, 384]
        lo = max(start - h, 0)
        if start - lo:
            carry[h - (start - lo):] = example.motion[lo:start]
        lo = max(start - k, 0)
        if start - lo:
            carry_audio[k - (start - lo):] = example.features[lo:start]
        return (carry, carry_audio, example.features[start:start + n].astype(np.float32),
                example.motion[start:start + n])

    def pick(self, size: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Random windows: (example indices [B], start frames [B], chunk length n)."""
        c = self.config
        sizes, p = zip(*self.chunk_mix, strict=True)
        n = int(sizes[self.rng.choice(len(sizes), p=np.array(p) / sum(p))])
        n = min(n, c.chunk_frames) if n else int(self.rng.integers(1, c.chunk_frames + 1))
        picks = self.rng.choice(len(self.examples), size=size, p=self.weights)
        starts = np.array([0 if self.rng.random() < self.stream_start_p
                           else int(self.rng.integers(0, self.examples[i].frames - n + 1))
                           for i in picks])
        return picks, starts, n

    def batch(self, size: int) -> WindowBatch:
        return self.batch_at(*self.pick(size))

    def batch_at(self, picks: np.ndarray, starts: np.ndarray, n: int) -> WindowBatch:
        rows = [self.window(self.examples[i], int(s), n) + (self.examples[i].style,)
                for i, s in zip(picks, starts, strict=True)]
        carry, carry_audio, audio, motion, style = (np.stack(x) for x in zip(*rows, strict=True))
        norm = self.normalizer
        cond = ChunkCondition(
            carry=norm.to_model(torch.from_numpy(carry)),
            carry_audio=torch.from_numpy(carry_audio),
            audio=torch.from_numpy(audio),
            style=torch.from_numpy(style.astype(np.float32)))
        return WindowBatch(cond=cond, target=norm.to_model(torch.from_numpy(motion)))
