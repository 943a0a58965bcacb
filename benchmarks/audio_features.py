"""Audio front-end speed: ms per feature block and per motion chunk, torch vs onnxruntime (CPU).

    python -m benchmarks.audio_features [--threads 1 2] [--repeats 30]

A block is the H video frames one encoder window gives (the streaming step); a chunk is
the frames one motion-sampler call needs (blocks batched in one encoder call). Times include
the log-mel spectrogram and the per-frame stacking, i.e. everything FeatureStream does.
"""

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_blocks(extractor, audio: np.ndarray, blocks: int, repeats: int) -> float:
    """Median ms to compute `blocks` consecutive blocks (one encoder call)."""
    times = []
    for r in range(repeats + 3):
        first = 10 + r
        t0 = time.perf_counter()
        extractor.encode_blocks(audio, range(first, first + blocks))
        if r >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--chunk-frames", type=int, default=10)
    args = parser.parse_args(argv)

    from export.audio_encoder import OnnxEncoder, export_audio_encoder
    from models.audio import AudioFeatureExtractor

    torch_fx = AudioFeatureExtractor()
    c = torch_fx.config
    audio = np.random.default_rng(0).standard_normal(60 * 16000).astype(np.float32) * 0.1
    onnx_path = Path(tempfile.mkdtemp()) / "audio_encoder.onnx"
    export_audio_encoder(onnx_path, c)
    chunk_blocks = -(-args.chunk_frames // c.block_frames)

    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads available")
    print(f"window {c.window_frames / c.fps:.2f} s, block {c.block_frames} frames "
          f"({1000 * c.block_frames / c.fps:.0f} ms), "
          f"look-ahead {1000 * c.lookahead_frames / c.fps:.0f} ms, "
          f"chunk {chunk_blocks * c.block_frames} frames")
    print(f"{'engine':<8}{'threads':>8}{'ms/block':>10}{'ms/chunk':>10}"
          f"{'% of real time (block)':>24}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        onnx_fx = AudioFeatureExtractor(c, encoder=OnnxEncoder(onnx_path, threads=threads))
        for name, fx in (("torch", torch_fx), ("onnx", onnx_fx)):
            block = time_blocks(fx, audio, 1, args.repeats)
            chunk = time_blocks(fx, audio, chunk_blocks, args.repeats)
            share = 100 * block / (1000 * c.block_frames / c.fps)
            print(f"{name:<8}{threads:>8}{block:>10.1f}{chunk:>10.1f}{share:>23.0f}%")


if __name__ == "__main__":
    main()
