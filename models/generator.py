"""Chunk-by-chunk motion generation with causal carryover (raw motion-space units).

A MotionGenerator holds one stream's state: the last generated frames (the carry: K frames, or
H + K with a motion history, see models.motion), the last K frames' audio features, and a
seeded noise source. Each call generates the next chunk from that chunk's audio features;
nothing ever waits for future audio beyond the feature look-ahead. Streams sharing one model
keep their own MotionGenerator.

Seam continuity: the few-step student starts each chunk from fresh noise, and its first frames
land a little off the course the carried frames were on (seam jumps ~1.2x the jumps inside a
chunk, blinks starting at chunk starts). Each new chunk's frame k is pulled towards the linear
extrapolation of the last two carried frames by SEAM_PULL[k] (30 %, then 10 %); the rest of
the chunk is the model's. On real speech this brings seam jumps to the size of those inside a
chunk and leaves jaw_open's correlation with the uncorrected output at >= 0.99.

Two guards keep an open-ended stream where the model was trained, without visible effect:
  - every frame is clamped to the motion space's documented ranges;
  - posture anchoring: the model continues whatever posture its carry shows, so over minutes
    small biases could add up (a head that slowly sinks), and in long pure silence models
    without the motion history turned the head away by 10-15 degrees and kept it there (the
    default model, with its 4 s history: 3-5 degrees after 40 s, unguarded).
    The slow mean of the head pose (an EMA over POSTURE_AVERAGE_S) is pulled back towards
    the portrait's pose (zero) with time constant POSTURE_PULL_S, and its 0.5 s mean is held
    inside soft bounds (POSTURE_BOUND), as a smooth ramp inside each chunk; the carry holds
    the corrected frames, so the model continues from them. The pull is slow (20 s): a
    faster one (6 s) took 8 % of the head's motion away (the postures a speaker holds for a
    phrase or two), and 20 s still holds a 10-minute run (benchmarks/RESULTS.md).

Sampling temperature (students): the noise a chunk starts from is scaled per parameter,
NOISE_SCALE: the mouth's by MOUTH_NOISE, the head pose's by HEAD_NOISE, the rest by 1. With
less noise in the mouth it follows the audio more closely (validation sync_corr 0.870 ->
0.888, real speech 0.805 -> 0.816, as much jaw movement as before), but the mouth's noise had
also moved the head (head_std_ratio 0.766 -> 0.718 with half of it), which the head's noise
gives back (0.769 at 1.085); benchmarks/RESULTS.md, issue 20. Teachers sample as trained.

Checkpoint (a torch.save dict, see save_checkpoint):
    kind ("teacher" | "student"), config (MotionConfig), normalizer, feature_config,
    sampler ({"steps", "guidance"}), model (state dict), train (provenance, optional).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import motion_space
from models.motion import MotionConfig, MotionDiT, Normalizer
from models.sampler import ChunkCondition, Guidance, sample_student, sample_teacher

HEAD = [motion_space.index(n) for n in motion_space.POSE]
MOUTH = [motion_space.index(n) for n in motion_space.MOUTH]
SEAM_PULL = (0.3, 0.1)
MOUTH_NOISE = 0.5        # a student's sampling temperature for the mouth parameters ...
HEAD_NOISE = 1.085       # ... and for the head pose (the rest: 1)
NOISE_SCALE = np.ones(motion_space.D, np.float32)
NOISE_SCALE[MOUTH] = MOUTH_NOISE
NOISE_SCALE[HEAD] = HEAD_NOISE
POSTURE_AVERAGE_S = 4.0
POSTURE_PULL_S = 20.0
# the posture's soft bounds (yaw, pitch, roll in degrees; translation unbounded): between the
# 95th and 99th percentiles of the training data's 0.5 s mean head pose (synthetic format 3:
# yaw 8.7-13.1, pitch 4.9-7.1, roll 4.6-6.8). Beyond them the 0.5 s mean is pulled back with
# a 0.5 s time constant.
POSTURE_BOUND = np.array([9.0, 7.0, 5.0, np.inf, np.inf, np.inf], np.float32)
POSTURE_BOUND_S = 0.5
FPS = 25


@dataclass
class MotionModel:
    """A loaded checkpoint: the network plus what it needs to be used."""

    kind: str
    net: MotionDiT
    normalizer: Normalizer
    feature_config: dict
    steps: int
    guidance: Guidance

    @property
    def config(self) -> MotionConfig:
        return self.net.config

    def sample(self, cond: ChunkCondition, noise: torch.Tensor) -> torch.Tensor:
        if self.kind == "student":
            return sample_student(self.net, cond, noise, steps=self.steps)
        return sample_teacher(self.net, cond, noise, steps=self.steps, guidance=self.guidance)

    @property
    def nfe(self) -> int:
        """Network evaluations per chunk (a guided teacher step costs 3, batched)."""
        return self.steps if self.kind == "student" else 3 * self.steps


def save_checkpoint(path: str | Path, kind: str, net: MotionDiT, normalizer: Normalizer,
                    feature_config: dict, steps: int, guidance: Guidance,
                    train: dict | None = None, half: bool = False) -> None:
    state = {k: (v.half() if half and v.is_floating_point() else v)
             for k, v in net.state_dict().items()}
    torch.save({
        "kind": kind, "config": net.config.to_dict(),
        "normalizer": {"mean": list(normalizer.mean), "std": list(normalizer.std)},
        "feature_config": feature_config,
        "sampler": {"steps": steps, "guidance": guidance.to_dict()},
        "names": list(motion_space.NAMES),
        "model": state, "train": train or {},
    }, path)


def load_motion_model(path: str | Path, kind: str | None = None,
                      steps: int | None = None) -> MotionModel:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if list(ckpt["names"]) != list(motion_space.NAMES):
        raise ValueError(f"{path}: trained for motion parameters {ckpt['names']}, "
                         f"this code has {list(motion_space.NAMES)}")
    net = MotionDiT(MotionConfig.from_dict(ckpt["config"]))
    net.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    net.eval()
    return MotionModel(
        kind=kind or ckpt["kind"], net=net, normalizer=Normalizer(**ckpt["normalizer"]),
        feature_config=ckpt["feature_config"], steps=steps or ckpt["sampler"]["steps"],
        guidance=Guidance(**ckpt["sampler"]["guidance"]))


class TorchMotionSampler:
    """Batched sampling in raw units (numpy in, numpy out); export.motion.OnnxMotionSampler
    has the same call signature.

    noise [B, n, D], carry [B, H + K, D], carry_audio [B, K, stack, 384], audio [B, n, stack, 384],
    style [B, S] -> motion [B, n, D]
    """

    def __init__(self, model: MotionModel):
        self.model = model

    def __call__(self, noise, carry, carry_audio, audio, style) -> np.ndarray:
        norm = self.model.normalizer
        cond = ChunkCondition(
            carry=norm.to_model(torch.from_numpy(np.asarray(carry, np.float32))),
            carry_audio=torch.from_numpy(np.asarray(carry_audio, np.float32)),
            audio=torch.from_numpy(np.asarray(audio, np.float32)),
            style=torch.from_numpy(np.asarray(style, np.float32)))
        x = self.model.sample(cond, torch.from_numpy(np.asarray(noise, np.float32)))
        return norm.from_model(x).numpy().astype(np.float32)


class MotionGenerator:
    """One stream's motion: generate(features) -> next frames, carrying state over.

    `sampler` runs the network (TorchMotionSampler by default, or an ONNX runner).
    """

    def __init__(self, model: MotionModel, silence_feature: np.ndarray, seed: int = 0,
                 style: dict[str, float] | None = None, sampler=None):
        self.model = model
        self.sampler = sampler or TorchMotionSampler(model)
        self.silence_feature = np.asarray(silence_feature, np.float32)  # [stack, 384]
        self.style = self.style_vector(style or {})
        self.reset(seed)

    def style_vector(self, style: dict[str, float]) -> np.ndarray:
        names = self.model.config.style_names
        unknown = set(style) - set(names)
        if unknown:
            raise ValueError(f"unknown style controls {sorted(unknown)}; known: {list(names)}")
        return np.array([float(style.get(n, 1.0)) for n in names], np.float32)

    def set_style(self, style: dict[str, float]) -> None:
        self.style = self.style_vector(style)

    def reset(self, seed: int = 0) -> None:
        self.noise = torch.Generator().manual_seed(seed)
        self.reset_carry()

    def reset_carry(self) -> None:
        """Neutral face and silence as the carry (the stream's start)."""
        c = self.model.config
        k = c.carry_frames
        self.carry = np.zeros((c.context_frames, motion_space.D), np.float32)  # neutral face
        self.carry_audio = np.repeat(self.silence_feature[None], k, axis=0)
        self.posture = np.zeros(len(HEAD), np.float32)     # slow mean of the head pose
        self.recent_pose = np.zeros(len(HEAD), np.float32) # its 0.5 s mean

    def _continue_seam(self, motion: np.ndarray) -> np.ndarray:
        """Pull the chunk's first frames towards where the carried frames were heading."""
        miss = 2 * self.carry[-1] - self.carry[-2] - motion[0]     # [D]
        motion = motion.copy()
        for k, weight in enumerate(SEAM_PULL[: len(motion)]):
            motion[k] += weight * miss
        return motion

    def _anchor(self, motion: np.ndarray) -> np.ndarray:
        """Clamp to the documented ranges and pull the slow head posture towards zero."""
        keep = np.float32(np.exp(-1.0 / (POSTURE_AVERAGE_S * FPS)))
        keep_recent = np.float32(np.exp(-1.0 / (POSTURE_BOUND_S * FPS)))
        pull = np.float32(1.0 / (POSTURE_PULL_S * FPS))
        pull_back = np.float32(1.0 / (POSTURE_BOUND_S * FPS))
        motion = motion.copy()
        for k in range(len(motion)):
            self.posture = keep * self.posture + (1 - keep) * motion[k, HEAD]
            self.recent_pose = keep_recent * self.recent_pose + (1 - keep_recent) * motion[k, HEAD]
            excess = np.sign(self.recent_pose) * np.maximum(np.abs(self.recent_pose)
                                                            - POSTURE_BOUND, 0)
            # this frame and the rest of the chunk move together: a ramp, not a step
            motion[k:, HEAD] -= pull * self.posture + pull_back * excess
        return motion_space.clip(motion)

    def generate(self, features: np.ndarray) -> np.ndarray:
        """features [n, stack, 384] (n <= chunk_frames) -> motion [n, D] (raw units)."""
        features, noise = self.prepare(features)
        motion = self.sampler(noise[None], self.carry[None], self.carry_audio[None],
                              features[None], self.style[None])[0]
        return self.accept(motion, features)

    def prepare(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A chunk's features [n, stack, 384] (checked, float32) and its noise [n, D], drawn
        from this stream's generator (a student's scaled by NOISE_SCALE)."""
        c = self.model.config
        n = features.shape[0]
        if not 1 <= n <= c.chunk_frames:
            raise ValueError(f"a chunk has 1..{c.chunk_frames} frames, got {n}")
        noise = torch.randn((1, n, c.motion_dim), generator=self.noise).numpy()[0]
        if self.model.kind == "student":
            noise = noise * NOISE_SCALE
        return np.asarray(features, np.float32), noise

    def accept(self, motion: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The sampler's chunk [n, D] -> the stream's frames: seam continuity, anchoring, and
        the carry moves on."""
        c = self.model.config
        motion = self._anchor(self._continue_seam(motion))
        self.carry = np.concatenate([self.carry, motion])[-c.context_frames:]
        self.carry_audio = np.concatenate([self.carry_audio, features])[-c.carry_frames:]
        return motion


def chunk_sizes(frames: int, chunk: int, first: int | None = None) -> list[int]:
    """How a stream of `frames` frames is cut into chunks: a shorter first one, then `chunk`."""
    sizes, done = [], 0
    first = first or chunk
    while done < frames:
        n = min(first if not sizes else chunk, frames - done)
        sizes.append(n)
        done += n
    return sizes


def generate_sequence(generator: MotionGenerator, features: np.ndarray, chunk: int = 2,
                      first_chunk: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Generate a whole feature sequence [T, stack, 384] chunk by chunk -> ([T, D], sizes)."""
    sizes = chunk_sizes(len(features), chunk, first_chunk)
    out, at = [], 0
    for n in sizes:
        out.append(generator.generate(features[at:at + n]))
        at += n
    return np.concatenate(out) if out else np.zeros((0, motion_space.D), np.float32), sizes


def generate_sequences(generators: list[MotionGenerator], features: list[np.ndarray],
                       chunk: int = 2, first_chunk: int | None = None
                       ) -> list[tuple[np.ndarray, list[int]]]:
    """Several independent streams at once (evaluation): stream i is generate_sequence(
    generators[i], features[i], ...), but at every step the chunks of equal length go through
    the network in one batched call. Each stream draws its own noise, so its frames equal the
    one-stream result up to float rounding. All generators share one model and sampler."""
    sizes = [chunk_sizes(len(f), chunk, first_chunk) for f in features]
    outputs: list[list[np.ndarray]] = [[] for _ in generators]
    at = [0] * len(generators)
    for step in range(max((len(s) for s in sizes), default=0)):
        by_length: dict[int, list[int]] = {}
        for i, s in enumerate(sizes):
            if step < len(s):
                by_length.setdefault(s[step], []).append(i)
        for n, streams in by_length.items():
            prepared = [generators[i].prepare(features[i][at[i]:at[i] + n]) for i in streams]
            motion = generators[streams[0]].sampler(                          # [B, n, D]
                np.stack([noise for _, noise in prepared]),
                np.stack([generators[i].carry for i in streams]),
                np.stack([generators[i].carry_audio for i in streams]),
                np.stack([feats for feats, _ in prepared]),
                np.stack([generators[i].style for i in streams]))
            for row, i in enumerate(streams):
                outputs[i].append(generators[i].accept(motion[row], prepared[row][0]))
                at[i] += n
    return [(np.concatenate(out) if out else np.zeros((0, motion_space.D), np.float32), s)
            for out, s in zip(outputs, sizes, strict=True)]
