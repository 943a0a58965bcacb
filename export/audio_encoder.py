"""The audio encoder at the fixed feature window as ONNX, and its onnxruntime backend.

Written by export.exporter: TorchScript (opset 20) for onnxruntime, dynamo with
fused_attention for TensorRT (opset 23, where scaled_dot_product_attention becomes one ONNX
`Attention` node, which TensorRT maps to its fused attention layer).
Input  `mel`       [batch, 80, 2n] float32 (log-mel of one window each)
Output `features`  [batch, n, 384] float32 (n = encoder frames in the window), or
                   [batch, n, 5, 384] with FeatureConfig.all_layers (every encoder stage)
"""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.exporter import export_graph, opset
from models.audio import FeatureConfig, load_window_encoder


def export_audio_encoder(path: str | Path, config: FeatureConfig | None = None,
                         fused_attention: bool = False) -> Path:
    config = config or FeatureConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = load_window_encoder(config)
    mel = torch.zeros(2, 80, 2 * config.encoder_frames)
    batch = {0: ("batch", 1, 256)}
    return export_graph(module, (mel,), path, ["mel"], ["features"],
                        {"mel": batch, "features": batch}, fused_attention)


class OnnxEncoder:
    """onnxruntime backend for AudioFeatureExtractor: mel [B, 80, 2n] -> [B, n, (5,) 384]."""

    def __init__(self, path: str | Path, threads: int | None = None,
                 providers: list[str] | None = None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=providers or ["CPUExecutionProvider"])

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        return self.session.run(["features"], {"mel": np.ascontiguousarray(mel, np.float32)})[0]


def audio_encoder_path(config: FeatureConfig, fused_attention: bool = False) -> Path:
    """Where cached_audio_encoder keeps the graph of this configuration."""
    from models.whisper_weights import cache_dir

    stages = "_layers" if config.all_layers else ""
    name = f"audio_encoder_w{config.window_frames}{stages}_op{opset(fused_attention)}.onnx"
    return cache_dir() / "onnx" / name


def cached_audio_encoder(config: FeatureConfig | None = None,
                         fused_attention: bool = False) -> Path:
    """Export once per configuration into the user cache; reuse afterwards."""
    config = config or FeatureConfig()
    path = audio_encoder_path(config, fused_attention)
    if not path.is_file():
        tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
        export_audio_encoder(tmp, config, fused_attention)
        tmp.replace(path)
    return path
