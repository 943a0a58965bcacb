"""Renderer speed: ms per frame, torch vs onnxruntime side by side, on this CPU.

    python -m benchmarks.render                       # 512 and 256, batch 8, 1 thread
    python -m benchmarks.render --sizes 256 --batch 16 --threads 1 2 --as-exported
    python -m benchmarks.render --render-file speech.wav --sizes 512

Each measurement renders `repeats` batches of moderate random motion (the default avatar)
after one warm-up batch and reports the best and the median batch, divided by the batch
size. The engines are timed in turns (torch, onnxruntime, torch, ...) so that both see the
same load; the machine's load average is printed before and after, since on a shared
machine the median moves with it, the best time less so.

onnxruntime runs the renderer as the onnx engine does (export.renderer.OnnxRenderer: two
graphs rewritten for its CPU provider by export.ort_cpu, torch's composite of the whole
frames between them); --as-exported adds the renderer as one graph, as exported and as
export.ort_cpu rewrites it (the onnx engine's renderer before the whole frames' lookup moved
to torch), for comparison. Every renderer is checked against torch before it is timed.

--render-file AUDIO runs the whole offline path, stream.render_file, once per engine and
repeat: frames per second of wall time, the process's CPU time per frame (all its threads;
robust to other jobs), and the PSNR of the onnx engine's frames against the torch engine's.
"""

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from models import motion_space as ms
from models.avatar import prepare_avatar
from models.render import INPUT_NAMES, render_tensors


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def motion_batch(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(ms.LOW, ms.HIGH, (frames, ms.D)) * 0.4).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def side_by_side(runs: dict, frames: int, repeats: int) -> dict[str, tuple[float, ...]]:
    """(best, median, best CPU) milliseconds per frame of each run(), which renders `frames`
    frames on the calling thread; the runs take turns. The thread's CPU time leaves out the
    time other jobs on a shared machine took the core away."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            run()
            times[name].append((time.perf_counter() - start) * 1000.0 / frames)
            cpu[name].append((time.thread_time() - start_cpu) * 1000.0 / frames)
    return {name: (min(t), float(np.median(t)), min(cpu[name])) for name, t in times.items()}


def one_graph_for_cpu(path: Path, feeds: dict) -> bytes:
    """The renderer as one graph (`path`, as exported) rewritten by export.ort_cpu, as
    serialized bytes (feeds: its inputs but the motion)."""
    from export.renderer import for_cpu

    return for_cpu(path, lambda n: feeds | {"motion": ms.neutral(n)}).SerializeToString()


def renderer_rows(args) -> None:
    import onnxruntime

    from export.renderer import (
        KEEP_LAYOUT,
        OnnxRenderer,
        cached_cpu_renderer_export,
        cached_renderer_export,
    )

    print(f"batch     {args.batch} frames, {args.repeats} batches per row\n")
    print(f"{'size':>5} {'engine':>24} {'threads':>7} {'best ms/frame':>14} {'median':>8}"
          f" {'best CPU':>9}")
    motion = motion_batch(args.batch)
    for size in args.sizes:
        avatar = prepare_avatar(size=size)
        tensors = avatar.tensors()
        with torch.no_grad():
            expected = render_tensors(*tensors, torch.from_numpy(motion)).numpy()
        feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, tensors, strict=False)}
        feeds["motion"] = motion
        graphs = {}
        if args.as_exported:
            whole = cached_renderer_export(avatar)
            graphs = {"onnxruntime, one graph": (one_graph_for_cpu(whole, feeds), KEEP_LAYOUT),
                      "onnxruntime as exported": (str(whole), [])}
        for threads in args.threads:
            torch.set_num_threads(threads)

            def run_torch(tensors=tensors, motion=motion):
                with torch.no_grad():
                    render_tensors(*tensors, torch.from_numpy(motion))

            renderer = OnnxRenderer(cached_cpu_renderer_export(avatar), threads=threads)
            runs = {"torch": run_torch,
                    "onnxruntime": lambda r=renderer, a=avatar: r(a, motion)}
            for name, (path, disabled) in graphs.items():
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                session = onnxruntime.InferenceSession(
                    path, options, providers=["CPUExecutionProvider"],
                    disabled_optimizers=disabled)
                runs[name] = lambda s=session, f=feeds: s.run(["frames"], f)[0]
            notes = {}
            for name, run in list(runs.items())[1:]:
                frames = run()
                diff = np.abs(frames.astype(int) - expected.astype(int))
                notes[name] = (f"   (vs torch: max diff {diff.max()}, "
                               f"PSNR {psnr(frames, expected):.1f} dB)")
            timed = side_by_side(runs, args.batch, args.repeats)
            for name, (best, median, best_cpu) in timed.items():
                print(f"{size:>5} {name:>24} {threads:>7} {best:>14.1f} {median:>8.1f}"
                      f" {best_cpu:>9.1f}{notes.get(name, '')}", flush=True)
    torch.set_num_threads(1)


def render_file_rows(args) -> None:
    """stream.render_file on both engines: fps of wall time, PSNR of onnx vs torch frames."""
    from models.audio_io import decode_audio
    from stream.engine import make_engine
    from stream.render_file import render_file
    from stream.session import Session

    audio, rate = decode_audio(args.render_file)
    size = args.sizes[0]
    avatar = prepare_avatar(size=size)
    engines = {name: make_engine(name) for name in ("torch", "onnx")}
    frames: dict[str, np.ndarray] = {}
    fps: dict[str, list[float]] = {name: [] for name in engines}
    stages: dict[str, dict[str, float]] = {}
    cpu: dict[str, list[float]] = {name: [] for name in engines}   # process CPU ms per frame
    for _ in range(args.render_repeats):
        for name, engine in engines.items():
            images: list[np.ndarray] = []
            session = Session(engine, avatar, seed=0)
            start_cpu = time.process_time()
            try:
                _, report = render_file(session, audio, rate,
                                        lambda image, _sound, keep=images: keep.append(image))
            finally:
                session.close()
            frames[name] = np.stack(images)
            fps[name].append(report["fps"])
            stages[name] = report["stages_ms"]
            cpu[name].append((time.process_time() - start_cpu) * 1000.0 / len(images))
    seconds = len(audio) / rate
    print(f"\nrender_file: {seconds:.1f} s of audio, {len(frames['torch'])} frames at {size} px, "
          f"{args.render_repeats} runs per engine, engines in turns")
    for name in engines:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in stages[name].items())
        print(f"  {name:6s} best {max(fps[name]):5.1f} fps, median {np.median(fps[name]):5.1f} fps,"
              f" best CPU {min(cpu[name]):5.1f} ms/frame (all threads)"
              f"  (last run, wall ms per frame: {parts})")
    print(f"  onnx vs torch frames: PSNR {psnr(frames['onnx'], frames['torch']):.1f} dB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--as-exported", action="store_true",
                        help="also time the graph as exported (before export.ort_cpu)")
    parser.add_argument("--render-file", metavar="AUDIO",
                        help="also time stream.render_file on this audio with both engines")
    parser.add_argument("--render-repeats", type=int, default=3)
    parser.add_argument("--no-renderer", action="store_true", help="only --render-file")
    args = parser.parse_args(argv)

    import onnxruntime

    print(f"date      {datetime.date.today()}")
    print(f"cpu       {cpu_model()}, {os.cpu_count()} cores")
    print(f"load      {load()} (1, 5, 15 min) before")
    print(f"versions  torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    if not args.no_renderer:
        renderer_rows(args)
    if args.render_file:
        render_file_rows(args)
    print(f"\nload      {load()} (1, 5, 15 min) after")


if __name__ == "__main__":
    main()
