"""On a GPU: the Triton kernels checked against their torch references, then timed.

    python -m benchmarks.gpu_check                        # checks + timings, writes JSON
    python -m benchmarks.gpu_check --quick                # fewer repeats and batch sizes
    python -m benchmarks.gpu_check --save-avatar out/avatar512.pt   (where dlib and LiteRT are)
    python -m benchmarks.gpu_check --avatar out/avatar512.pt        (on a GPU machine without)

1. checks, on fresh random inputs, with the kernels compiled for this GPU:
   attention at the motion DiT's and Whisper's shapes (fp32, fp16, bf16) against
   kernels/attention_reference.py; the fused warp-render against the renderer's own
   per-pixel pass (models/render.py compose) in float and in uint8 frames; the motion DiT
   (and Whisper's encoder, if openai-whisper is installed) with the kernels on and off; the
   ahead-of-time compilation for TensorRT's plugins; the torch engine on the GPU against
   the same engine on the CPU (the same speech through a session of each)
2. timings (CUDA events, median ms per call): torch eager, torch with CUDA graphs, the Triton
   kernels, and the Triton kernels with CUDA graphs, for the renderer (512 x 512), the motion
   DiT, attention alone, and the audio encoder when whisper is importable
3. sessions: how many concurrent 25 fps 512 x 512 sessions one GPU's compute sustains, from
   the per-item costs at the largest batch (sessions batched together) and at batch 1

Needs torch with CUDA, triton, numpy and this repository (the avatar comes from --avatar: a
portrait image, prepared here with dlib and ai-edge-litert, or a file written by
--save-avatar). Prints a table and writes JSON (--out). Exits with a message on a machine
without CUDA.
"""

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from kernels import dispatch
from kernels.attention_reference import attention_reference
from models import motion_space as ms

FPS = 25
STUDENT_STEPS = 2          # network evaluations per chunk (the distilled student)
ENCODER_BLOCK = 2          # video frames per encoder window (models.audio FeatureConfig)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
ATTENTION_SHAPES = {"dit": (64, 4, 12, 12, 48, False), "whisper": (16, 6, 50, 50, 64, False),
                    "causal": (4, 2, 300, 300, 64, True), "ragged": (3, 3, 37, 53, 48, False)}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def load_avatar(source: str, size: int = 512):
    """An Avatar from a --save-avatar file or from a portrait (prepared here)."""
    from models.avatar import Avatar, prepare_avatar

    if source.endswith(".pt"):
        saved = torch.load(source, map_location="cpu", weights_only=True)
        return Avatar(**saved)
    try:
        return prepare_avatar(source, size)
    except ImportError as e:
        sys.exit(f"gpu_check: cannot prepare the portrait here ({e}); write an avatar file with "
                 f"--save-avatar where it can be and pass it with --avatar FILE.pt")


def save_avatar(source: str, path: str) -> None:
    avatar = load_avatar(source)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({f.name: getattr(avatar, f.name) for f in fields(avatar)}, path)
    print(f"wrote {path} ({avatar.size} px avatar)")


def random_motion(frames: int, generator: np.random.Generator) -> torch.Tensor:
    """Motion over the documented ranges, some frames with the mouth wide open and the eyes
    shut so every overlay is drawn."""
    low, high = np.array(ms.LOW), np.array(ms.HIGH)
    motion = (low + (high - low) * generator.random((frames, ms.D))).astype(np.float32)
    motion[::3, ms.index("jaw_open")] = high[ms.index("jaw_open")]
    motion[1::3, ms.index("blink_left")] = motion[1::3, ms.index("blink_right")] = 1.0
    return torch.from_numpy(motion)


def motion_model(device):
    from models.motion import MotionConfig, MotionDiT

    model = MotionDiT(MotionConfig()).to(device).eval()
    with torch.no_grad():                  # random, non-zero weights: every block does work
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def motion_inputs(model, batch: int, device):
    c = model.config
    return (torch.randn(batch, c.chunk_frames, c.motion_dim, device=device),
            torch.rand(batch, device=device),
            torch.randn(batch, c.context_frames, c.motion_dim, device=device),
            torch.randn(batch, c.chunk_frames, c.audio_stack, c.audio_dim, device=device),
            torch.randn(batch, c.carry_frames, c.audio_stack, c.audio_dim, device=device),
            torch.rand(batch, c.style_dim, device=device),
            torch.ones(batch, device=device), torch.ones(batch, device=device))


def audio_encoder(device):
    """Whisper tiny.en's window encoder (random weights: timing only), or None without
    openai-whisper."""
    try:
        from whisper.model import AudioEncoder

        from models.audio import WindowEncoder
    except ImportError:
        return None
    encoder = AudioEncoder(80, 1500, 384, 6, 4)
    return WindowEncoder(encoder, 50).to(device).eval()   # 1 s window: 50 encoder frames


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def check_attention(device, seed: int) -> list[dict]:
    from kernels.attention import attention

    g = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for name, (b, h, lq, lk, d, causal) in ATTENTION_SHAPES.items():
        for dtype in TOLERANCE:
            q = torch.randn(b, h, lq, d, device=device, generator=g).to(dtype)
            k = torch.randn(b, h, lk, d, device=device, generator=g).to(dtype)
            v = torch.randn(b, h, lk, d, device=device, generator=g).to(dtype)
            error = relative_error(attention(q, k, v, causal), attention_reference(q, k, v, causal))
            rows.append(dict(check=f"attention {name} {str(dtype)[6:]}", error=error,
                             limit=TOLERANCE[dtype], ok=error < TOLERANCE[dtype]))
    return rows


def check_warp_render(avatar_tensors, seed: int) -> list[dict]:
    from models.render import compose, frame_layers, render_tensors
    from models.render_fused import render_fused

    motion = random_motion(12, np.random.default_rng(seed)).to(avatar_tensors[0].device)
    from models.avatar import Avatar

    named = dict(zip((f.name for f in fields(Avatar)), avatar_tensors, strict=True))
    textures = [named[name] for name in ("image", "smooth_image", "plate", "matte", "own_mouth")]
    n, size = motion.shape[0], textures[0].shape[-1]
    with torch.no_grad():
        offset, overlays = frame_layers(*avatar_tensors, motion)
        ref = compose(*textures, offset, *overlays).t().reshape(n, size, size, 3)
        out = render_fused(*textures, offset, *overlays, out_float=True)
        diff = (out - ref).abs()
        frames = render_fused(*textures, offset, *overlays)
        with dispatch.triton_kernels(False):
            torch_frames = render_tensors(*avatar_tensors, motion)
    levels = (frames.int() - torch_frames.int()).abs()
    return [
        dict(check="warp-render float, max |diff| (0..255)", error=float(diff.max()),
             limit=0.05, ok=float(diff.max()) < 0.05),
        dict(check="warp-render float, relative", error=relative_error(out, ref), limit=1e-5,
             ok=relative_error(out, ref) < 1e-5),
        dict(check="warp-render uint8, max level difference", error=float(levels.max()),
             limit=1, ok=int(levels.max()) <= 1),
        dict(check="warp-render uint8, share of pixels differing",
             error=float((levels > 0).float().mean()), limit=1e-3,
             ok=float((levels > 0).float().mean()) < 1e-3)]


def check_networks(device, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    rows = []
    model = motion_model(device)
    inputs = motion_inputs(model, 8, device)
    with torch.no_grad():
        fused = model(*inputs)
        with dispatch.triton_kernels(False):
            plain = model(*inputs)
    error = relative_error(fused, plain)
    rows.append(dict(check="motion DiT, kernels on vs off (fp32)", error=error, limit=1e-5,
                     ok=error < 1e-5))
    encoder = audio_encoder(device)
    if encoder is not None:
        mel = torch.randn(4, 80, 100, device=device)
        with torch.no_grad():
            fused = encoder(mel)
            with dispatch.triton_kernels(False):
                plain = encoder(mel)
        error = relative_error(fused, plain)
        rows.append(dict(check="Whisper window encoder, kernels on vs off (fp32)", error=error,
                         limit=1e-5, ok=error < 1e-5))
    return rows


def check_engine(avatar, seconds: float = 3.0) -> list[dict]:
    """The torch engine on the GPU against the same engine on the CPU: the same speech
    through a session of each (features, motion network and renderer all on the device),
    the motion and the frames compared."""
    from benchmarks.latency import RATE, speech
    from stream.engine import TorchEngine
    from stream.render_file import render_file
    from stream.session import Session

    audio = speech(seconds).audio
    results, engines = {}, {}
    for device in ("cpu", "cuda"):
        frames: list[np.ndarray] = []
        engines[device] = TorchEngine(device=device)
        session = Session(engines[device], avatar, seed=0)
        try:
            motion, _ = render_file(session, audio, RATE,
                                    writer=lambda image, _sound, into=frames: into.append(image))
        finally:
            session.close()
        results[device] = (motion, np.stack(frames))
    (m_cpu, f_cpu), (m_gpu, f_gpu) = results["cpu"], results["cuda"]
    motion_error = float(np.abs(m_cpu - m_gpu).max())
    mse = float(((f_cpu.astype(np.float64) - f_gpu) ** 2).mean())
    psnr = 10 * math.log10(255.0 ** 2 / mse) if mse > 0 else math.inf
    graphs = engines["cuda"].graphs
    replayed = {name: f"{g.replays}/{g.replays + g.eager}" for name, g in graphs.items()}
    return [dict(check=f"torch engine cuda: calls replayed as CUDA graphs {replayed}",
                 error=min(g.replays for g in graphs.values()), limit=1,
                 ok=all(g.replays > 0 for g in graphs.values())),
            dict(check=f"torch engine cuda vs cpu, {len(f_cpu)} frames: motion max |diff|",
                 error=motion_error, limit=0.05, ok=motion_error < 0.05),
            dict(check="torch engine cuda vs cpu: frames PSNR dB (higher is better)",
                 error=psnr, limit=35.0, ok=psnr >= 35.0)]


def check_aot() -> list[dict]:
    """The TensorRT plugins' AOT compilation for this GPU: the PTX entry takes exactly the
    inputs, the int32 scalars and the outputs."""
    from kernels.trt_plugins import compile_attention, compile_warp_render

    rows = []
    for label, kernel, want in (
            ("attention fp16", lambda: compile_attention("float16", 12, 12, 48, False), 19),
            ("warp-render", compile_warp_render, 8)):
        try:
            compiled = kernel()
            entry = compiled.ptx[compiled.ptx.index(f".entry {compiled.name}("):]
            count = entry[:entry.index(")")].count(".param")
            rows.append(dict(check=f"AOT PTX for TensorRT, {label}: parameters",
                             error=count, limit=want, ok=count == want))
        except Exception as e:          # report it, keep checking the rest
            rows.append(dict(check=f"AOT PTX for TensorRT, {label}", error=repr(e)[:200],
                             limit=want, ok=False))
    return rows


# ---------------------------------------------------------------------------------------------
# Timings
# ---------------------------------------------------------------------------------------------

def time_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall time of fn() on the GPU, ms (CUDA events around each call)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed(fn):
    """fn (no arguments, fixed input tensors) captured as a CUDA graph: returns replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):             # warm up (and compile the Triton kernels) off-graph
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


MODES = (("torch", False, False), ("torch + CUDA graphs", False, True),
         ("triton", True, False), ("triton + CUDA graphs", True, True))


def time_modes(label: str, batch: int, items: int, fn, repeats: int) -> list[dict]:
    """fn under each mode; items = what one call produces (frames, chunks, windows)."""
    rows = []
    for mode, triton_on, use_graph in MODES:
        row = dict(network=label, batch=batch, mode=mode)
        try:
            with dispatch.triton_kernels(triton_on), torch.no_grad():
                call = graphed(fn) if use_graph else fn
                ms_call = time_ms(call, repeats)
            row |= dict(ms=ms_call, ms_per_item=ms_call / items)
        except Exception as e:          # e.g. an op that cannot be captured in a graph
            row |= dict(ms=None, ms_per_item=None, error=repr(e)[:200])
            torch.cuda.synchronize()
        rows.append(row)
    return rows


def timings(avatar_tensors, device, quick: bool) -> list[dict]:
    repeats = 10 if quick else 30
    rows = []
    rng = np.random.default_rng(0)
    from models.render import render_tensors

    for batch in ((1, 8) if quick else (1, 8, 32)):
        motion = random_motion(batch, rng).to(device)
        rows += time_modes("renderer 512", batch, batch,
                           lambda m=motion: render_tensors(*avatar_tensors, m), repeats)
    model = motion_model(device)
    for batch in ((1, 16) if quick else (1, 16, 64)):
        inputs = motion_inputs(model, batch, device)
        rows += time_modes("motion DiT (1 evaluation)", batch, batch,
                           lambda x=inputs: model(*x), repeats)
    encoder = audio_encoder(device)
    if encoder is not None:
        for batch in ((1, 8) if quick else (1, 8, 32)):
            mel = torch.randn(batch, 80, 100, device=device)
            rows += time_modes("Whisper window encoder (1 s)", batch, batch,
                               lambda m=mel: encoder(m), repeats)
    for name in ("dit", "whisper"):
        b, h, lq, lk, d, causal = ATTENTION_SHAPES[name]
        for dtype in (torch.float32, torch.float16):
            q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype) for n in (lq, lk, lk))
            rows += time_modes(f"attention {name} {str(dtype)[6:]}", b, b,
                               lambda q=q, k=k, v=v: dispatch.attention(q, k, v), repeats)
    return rows


def sessions(rows: list[dict]) -> dict:
    """Concurrent 25 fps sessions one GPU's compute sustains. Per session and second of
    video: FPS frames rendered, FPS / chunk * STUDENT_STEPS DiT evaluations, FPS /
    ENCODER_BLOCK encoder windows; each at its best mode's ms per item."""
    from models.motion import MotionConfig

    chunk = MotionConfig().chunk_frames
    need = {"renderer 512": FPS, "motion DiT (1 evaluation)": FPS / chunk * STUDENT_STEPS,
            "Whisper window encoder (1 s)": FPS / ENCODER_BLOCK}
    result = {"assumptions": f"{FPS} fps 512x512; {chunk}-frame chunks, {STUDENT_STEPS} DiT "
                             f"evaluations each; one 1 s encoder window per {ENCODER_BLOCK} "
                             f"frames; GPU compute only (no video encoding, no transfers)"}
    for label, pick in (("batched", max), ("unbatched", min)):
        per_second, parts = 0.0, {}
        for network, count in need.items():
            timed = [r for r in rows if r["network"] == network and r["ms_per_item"]]
            if not timed:
                continue
            batch = pick(r["batch"] for r in timed)
            best = min((r for r in timed if r["batch"] == batch), key=lambda r: r["ms_per_item"])
            parts[network] = dict(batch=batch, mode=best["mode"], ms_per_item=best["ms_per_item"],
                                  ms_per_session_second=count * best["ms_per_item"])
            per_second += count * best["ms_per_item"]
        result[label] = dict(parts=parts, ms_per_session_second=per_second,
                             sessions=math.floor(1000.0 / per_second) if per_second else None)
    return result


# ---------------------------------------------------------------------------------------------

def print_table(report: dict) -> None:
    print(f"\n{report['gpu']}  torch {report['torch']}  triton {report['triton']}\n")
    print(f"{'check':58s} {'value':>12s} {'limit':>10s}  ok")
    for row in report["checks"]:
        value = row["error"]
        value = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"{row['check']:58s} {value:>12s} {row['limit']:>10.3g}  "
              f"{'yes' if row['ok'] else 'NO'}")
    print(f"\n{'network':34s} {'batch':>5s} {'mode':22s} {'ms/call':>9s} {'ms/item':>9s}")
    for row in report["timings"]:
        ms_call = f"{row['ms']:.3f}" if row["ms"] is not None else "failed"
        per = f"{row['ms_per_item']:.3f}" if row["ms_per_item"] is not None else ""
        print(f"{row['network']:34s} {row['batch']:5d} {row['mode']:22s} {ms_call:>9s} {per:>9s}"
              + (f"  {row['error']}" if row.get("error") else ""))
    s = report["sessions"]
    print(f"\nsessions ({s['assumptions']}):")
    for label in ("batched", "unbatched"):
        if label in s:
            print(f"  {label}: {s[label]['sessions']} sessions "
                  f"({s[label]['ms_per_session_second']:.1f} GPU ms per session-second)")


def main(argv=None) -> int:
    from models.avatar import DEFAULT_AVATAR

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--avatar", default=str(DEFAULT_AVATAR),
                        help="portrait image (needs dlib) or a --save-avatar .pt file")
    parser.add_argument("--save-avatar", metavar="PATH.pt",
                        help="prepare --avatar at 512 px, save its tensors, exit (no GPU needed)")
    parser.add_argument("--out", default="out/gpu_check.json", help="JSON report")
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes and repeats")
    parser.add_argument("--seed", type=int, default=None, help="random inputs (default: time)")
    parser.add_argument("--random-encoder", action="store_true",
                        help="Whisper's encoder with random weights in the engine check, for a "
                             "machine without its weights package (benchmarks/timing_weights.py)")
    args = parser.parse_args(argv)
    if args.save_avatar:
        save_avatar(args.avatar, args.save_avatar)
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to "
              "check here. On CPU, tests/test_kernels.py checks the kernels in Triton's "
              "interpreter.", file=sys.stderr)
        return 2
    if not dispatch.triton_available():
        print("gpu_check: triton is not importable; the kernels need it", file=sys.stderr)
        return 2
    import triton

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False        # fp32 references stay fp32
    torch.backends.cudnn.allow_tf32 = False
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    if args.random_encoder:
        from benchmarks.timing_weights import use_random_whisper

        use_random_whisper()
    avatar = load_avatar(args.avatar)
    avatar_tensors = tuple(t.to(device) for t in avatar.tensors())

    started = time.time()
    checks = (check_attention(device, seed) + check_warp_render(avatar_tensors, seed)
              + check_networks(device, seed) + check_engine(avatar) + check_aot())
    rows = timings(avatar_tensors, device, args.quick)
    report = dict(gpu=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability(),
                  torch=torch.__version__, triton=triton.__version__,
                  python=platform.python_version(), seed=seed, avatar_size=avatar.size,
                  checks=checks, timings=rows, sessions=sessions(rows),
                  seconds=round(time.time() - started, 1),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0 if all(row["ok"] for row in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
