"""The audio encoder at the fixed feature window as ONNX, and its onnxruntime backend.

Exported with torch's dynamo exporter at opset 23, where scaled_dot_product_attention
becomes one ONNX `Attention` node (TensorRT maps it to its fused attention layer).
Input  `mel`       [batch, 80, 2n] float32 (log-mel of one window each)
Output `features`  [batch, n, 384] float32 (n = encoder frames in the window)
"""

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.audio import FeatureConfig, load_window_encoder

OPSET = 23


def export_audio_encoder(path: str | Path, config: FeatureConfig | None = None) -> Path:
    config = config or FeatureConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = load_window_encoder(config)
    mel = torch.zeros(2, 80, 2 * config.encoder_frames)
    batch = torch.export.Dim("batch", min=1, max=256)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            module, (mel,), input_names=["mel"], output_names=["features"],
            dynamic_shapes={"mel": {0: batch}}, opset_version=OPSET, dynamo=True,
            verbose=False)
    program.save(str(path))
    return path


class OnnxEncoder:
    """onnxruntime backend for AudioFeatureExtractor: mel [B, 80, 2n] -> [B, n, 384]."""

    def __init__(self, path: str | Path, threads: int | None = None,
                 providers: list[str] | None = None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=providers or ["CPUExecutionProvider"])

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        return self.session.run(["features"], {"mel": np.ascontiguousarray(mel, np.float32)})[0]


def audio_encoder_path(config: FeatureConfig) -> Path:
    """Where cached_audio_encoder keeps the graph of this configuration."""
    from models.whisper_weights import cache_dir

    return cache_dir() / "onnx" / f"audio_encoder_w{config.window_frames}_op{OPSET}.onnx"


def cached_audio_encoder(config: FeatureConfig | None = None) -> Path:
    """Export once per configuration into the user cache; reuse afterwards."""
    config = config or FeatureConfig()
    path = audio_encoder_path(config)
    if not path.is_file():
        tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
        export_audio_encoder(tmp, config)
        tmp.replace(path)
    return path
