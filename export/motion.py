"""The motion sampler as one ONNX graph: the student's few steps unrolled, normalisation in.

Inputs   noise [B, n, D], carry [B, H + K, D] (raw units; H history frames, 0 without),
         carry_audio [B, K, stack, 384], audio [B, n, stack, 384], style [B, S]
Output   motion [B, n, D] (raw units)
B (sessions) and n (chunk frames, 1..N) are dynamic. Written by export.exporter: TorchScript
(opset 20) for onnxruntime, dynamo with fused_attention for TensorRT (opset 23: attention is
one `Attention` node). Only the distilled student is exported: the teacher's 24 guided steps
are for training.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.exporter import export_graph, opset
from models.generator import MotionModel
from models.sampler import ChunkCondition, conditional_velocity, time_grid


class UnrolledSampler(nn.Module):
    def __init__(self, model: MotionModel):
        super().__init__()
        if model.kind != "student":
            raise ValueError("only a distilled student checkpoint exports to ONNX")
        self.net = model.net
        self.steps = model.steps
        self.register_buffer("mean", torch.tensor(model.normalizer.mean))
        self.register_buffer("std", torch.tensor(model.normalizer.std))

    def forward(self, noise, carry, carry_audio, audio, style):
        cond = ChunkCondition((carry - self.mean) / self.std, carry_audio, audio, style)
        x = noise
        grid = time_grid(self.steps)
        for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
            t = torch.full((noise.shape[0],), t0, dtype=noise.dtype)
            x = x + (t1 - t0) * conditional_velocity(self.net, x, t, cond)
        return x * self.std + self.mean


def export_motion(model: MotionModel, path: str | Path, fused_attention: bool = False) -> Path:
    """The unrolled sampler as ONNX (export.exporter: fused_attention for TensorRT)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = model.config
    module = UnrolledSampler(model).eval()
    b, n, k = 2, c.chunk_frames, c.carry_frames
    args = (torch.randn(b, n, c.motion_dim), torch.zeros(b, c.context_frames, c.motion_dim),
            torch.zeros(b, k, c.audio_stack, c.audio_dim),
            torch.zeros(b, n, c.audio_stack, c.audio_dim), torch.ones(b, c.style_dim))
    batch, frames = ("batch", 1, 256), ("frames", 1, c.chunk_frames)
    axes = {"noise": {0: batch, 1: frames}, "carry": {0: batch}, "carry_audio": {0: batch},
            "audio": {0: batch, 1: frames}, "style": {0: batch}, "motion": {0: batch, 1: frames}}
    return export_graph(module, args, path, list(axes)[:-1], ["motion"], axes,
                        fused_attention)


def checkpoint_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class OnnxMotionSampler:
    """onnxruntime runner with the MotionModel.sample signature used by MotionGenerator."""

    def __init__(self, path: str | Path, threads: int = 1, providers: list[str] | None = None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=providers or ["CPUExecutionProvider"])

    def __call__(self, noise: np.ndarray, carry: np.ndarray, carry_audio: np.ndarray,
                 audio: np.ndarray, style: np.ndarray) -> np.ndarray:
        feed = {"noise": noise, "carry": carry, "carry_audio": carry_audio, "audio": audio,
                "style": style}
        feed = {k: np.ascontiguousarray(v, np.float32) for k, v in feed.items()}
        return self.session.run(["motion"], feed)[0]


def motion_export_path(model: MotionModel, checkpoint: str | Path,
                       fused_attention: bool = False) -> Path:
    """Where cached_motion_export keeps the graph of this checkpoint's model."""
    from models.whisper_weights import cache_dir

    key = f"{checkpoint_hash(checkpoint)}-{model.kind}{model.steps}"
    return cache_dir() / "onnx" / f"motion-{key}-op{opset(fused_attention)}.onnx"


def cached_motion_export(model: MotionModel, checkpoint: str | Path,
                         fused_attention: bool = False) -> Path:
    path = motion_export_path(model, checkpoint, fused_attention)
    if not path.is_file():
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
        export_motion(model, tmp, fused_attention)
        tmp.replace(path)
    return path
