"""Export the three networks to ONNX, each checked against torch.

    python -m export.onnx --out DIR [--size 512] [--checkpoint CKPT] [--no-fp16-check]

writes into DIR
    audio_encoder.onnx       mel [B, 80, 2n] -> features [B, n, 384]          B windows
    motion.onnx              the student's steps unrolled: noise [B, n, D], carry [B, K, D],
                             carry_audio, audio, style -> motion [B, n, D]     B sessions
    renderer{S}.onnx         the avatar's tensors + motion [N, D] -> frames    N frames
    renderer{S}-cpu.onnx     onnxruntime's CPU renderer in two graphs laid out for its CPU
    renderer{S}-cpu-overlays.onnx   provider (export.ort_cpu): the avatar's tensors + motion
                             -> each frame's geometry; then, over the whole frames torch's
                             models.render.composite draws from it, the eyes and the mouth
                             -> frames (export.renderer.OnnxRenderer runs the three)
    manifest.json            file names, sizes, opset, the parity figures
All at opset 23 except the renderer (opset 20: it has no attention); attention is one ONNX
`Attention` node. Parity: each graph on onnxruntime's CPU provider against torch on the same
inputs, and the fp16 forms TensorRT builds (export.trt) likewise; the maximum absolute error
is printed, and the exit status is 1 if any exceeds its bound. The graphs are exported once
into the user cache (keyed by the configuration, checkpoint hash and renderer source) and
copied from there: the trt engine builds from the same files. (The onnx engine's encoder and
motion sampler are the same networks written by the quicker TorchScript exporter at opset 20,
attention as MatMul and Softmax: export.exporter.)
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

# Parity bounds (max abs error). Features and motion are O(1..10); frames are uint8 levels.
BOUNDS = {"audio_encoder": 1e-3, "motion": 1e-3, "renderer": 3.0, "renderer_cpu": 3.0,
          "audio_encoder_fp16": 0.1, "motion_fp16": 0.1}


def _session(path_or_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3                 # not the exporter's unused initializers
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def fp16_bytes(path: Path) -> bytes:
    from export.trt import prepare_graph

    return prepare_graph(path, fp16=True)


def check_encoder(path: Path, config, fp16: bool) -> dict[str, float]:
    from models.audio import TorchEncoder, load_window_encoder

    rng = np.random.default_rng(0)
    mel = rng.uniform(-1.0, 1.0, (3, 80, 2 * config.encoder_frames)).astype(np.float32)
    ref = TorchEncoder(load_window_encoder(config))(mel)
    errors = {}
    graphs = {"audio_encoder": path} | ({"audio_encoder_fp16": fp16_bytes(path)} if fp16 else {})
    for name, graph in graphs.items():
        out = _session(graph).run(["features"], {"mel": mel})[0]
        errors[name] = float(np.abs(out - ref).max())
    return errors


def check_motion(path: Path, model, fp16: bool) -> dict[str, float]:
    from models.generator import TorchMotionSampler

    c = model.config
    rng = np.random.default_rng(0)
    b, n = 3, c.chunk_frames
    args = (rng.standard_normal((b, n, c.motion_dim)), rng.standard_normal((b, c.context_frames,
            c.motion_dim)) * 0.3, rng.standard_normal((b, c.carry_frames, c.audio_stack,
            c.audio_dim)) * 0.5, rng.standard_normal((b, n, c.audio_stack, c.audio_dim)) * 0.5,
            np.ones((b, c.style_dim)))
    args = tuple(a.astype(np.float32) for a in args)
    ref = TorchMotionSampler(model)(*args)
    names = ("noise", "carry", "carry_audio", "audio", "style")
    errors = {}
    graphs = {"motion": path} | ({"motion_fp16": fp16_bytes(path)} if fp16 else {})
    for name, graph in graphs.items():
        out = _session(graph).run(["motion"], dict(zip(names, args, strict=True)))[0]
        errors[name] = float(np.abs(out - ref).max())
    return errors


def check_renderer(path: Path, cpu_path: Path, avatar) -> dict[str, float]:
    from export.renderer import OnnxRenderer
    from models import motion_space as ms
    from models.render import INPUT_NAMES, render_tensors

    rng = np.random.default_rng(0)
    motion = (rng.uniform(ms.LOW, ms.HIGH, (4, ms.D)) * 0.5).astype(np.float32)
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, avatar.tensors(), strict=False)}
    feeds["motion"] = motion
    with torch.no_grad():
        ref = render_tensors(*avatar.tensors(), torch.from_numpy(motion)).numpy().astype(int)
    drawn = {"renderer": _session(path).run(["frames"], feeds)[0],
             "renderer_cpu": OnnxRenderer(cpu_path)(avatar, motion)}
    return {name: float(np.abs(out.astype(int) - ref).max()) for name, out in drawn.items()}


def export_all(out: Path, size: int = 512, checkpoint: str | Path | None = None,
               fp16_check: bool = True, log=print) -> dict:
    """Export the three graphs into `out` and check each against torch. Returns the
    manifest (also written to out/manifest.json); manifest["failed"] lists graphs out of
    bounds. The graphs are the engines' own exports from the user cache (made on a miss),
    so what is checked here is what --engine onnx and --engine trt run."""
    from export.audio_encoder import cached_audio_encoder
    from export.exporter import DYNAMO_OPSET
    from export.motion import cached_motion_export
    from export.renderer import (
        cached_cpu_renderer_export,
        cached_renderer_export,
        overlay_graph_path,
    )
    from models.audio import FeatureConfig
    from models.avatar import prepare_avatar
    from models.generator import load_motion_model
    from stream.engine import DEFAULT_CHECKPOINT

    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoint or DEFAULT_CHECKPOINT)
    model = load_motion_model(checkpoint)
    config = FeatureConfig.of(model.feature_config)
    files = {"audio_encoder": "audio_encoder.onnx", "motion": "motion.onnx",
             "renderer": f"renderer{size}.onnx", "renderer_cpu": f"renderer{size}-cpu.onnx",
             "renderer_cpu_overlays": f"renderer{size}-cpu-overlays.onnx"}
    errors: dict[str, float] = {}

    def place(name: str, source: Path) -> Path:
        shutil.copyfile(source, out / files[name])
        return out / files[name]

    start = time.perf_counter()
    path = place("audio_encoder", cached_audio_encoder(config, fused_attention=True))
    errors |= check_encoder(path, config, fp16_check)
    log(f"audio encoder  exported and checked in {time.perf_counter() - start:.0f} s")

    start = time.perf_counter()
    path = place("motion", cached_motion_export(model, checkpoint, fused_attention=True))
    errors |= check_motion(path, model, fp16_check)
    log(f"motion         exported and checked in {time.perf_counter() - start:.0f} s")

    start = time.perf_counter()
    avatar = prepare_avatar(size=size)
    path = place("renderer", cached_renderer_export(avatar))
    cpu_graphs = cached_cpu_renderer_export(avatar)
    cpu_path = place("renderer_cpu", cpu_graphs)
    place("renderer_cpu_overlays", overlay_graph_path(cpu_graphs))
    errors |= check_renderer(path, cpu_path, avatar)
    log(f"renderer {size}   exported and checked in {time.perf_counter() - start:.0f} s")

    failed = [name for name, e in errors.items() if not e <= BOUNDS[name]]
    for name, e in errors.items():
        log(f"  {name:20s} max abs error {e:.3g} (bound {BOUNDS[name]:g})"
            f"{'  FAILED' if name in failed else ''}")
    manifest = {"files": files, "size": size, "opset": DYNAMO_OPSET, "renderer_opset": 20,
                "chunk_frames": model.config.chunk_frames, "checkpoint": str(checkpoint),
                "max_abs_error": errors, "bounds": {k: BOUNDS[k] for k in errors},
                "failed": failed}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int, default=512, choices=[256, 512],
                        help="renderer working size")
    parser.add_argument("--checkpoint", help="motion checkpoint (default: assets/)")
    parser.add_argument("--no-fp16-check", action="store_true",
                        help="skip the parity check of the fp16 forms TensorRT builds")
    args = parser.parse_args(argv)
    try:
        manifest = export_all(Path(args.out), args.size, args.checkpoint,
                              fp16_check=not args.no_fp16_check)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if manifest["failed"]:
        print(f"error: parity check failed for {', '.join(manifest['failed'])}",
              file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
