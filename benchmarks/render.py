"""Renderer speed: ms per frame at 512 and 256, batched, torch vs onnxruntime, on this CPU.

    python -m benchmarks.render                       # both sizes, batch 8, 1 and 2 threads
    python -m benchmarks.render --sizes 256 --batch 16 --threads 2 --no-onnx

Each measurement renders `repeats` batches of moderate random motion (the default avatar)
after one warm-up batch and reports the best and the median batch, divided by the batch
size. The machine's load average is printed: on a shared machine the median moves with
it, the best time less so. The ONNX graph is exported once per size (dynamo, opset 20)
and checked against torch before it is timed.
"""

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models import motion_space as ms
from models.avatar import prepare_avatar
from models.render import INPUT_NAMES, export_onnx, render_tensors


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def motion_batch(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(ms.LOW, ms.HIGH, (frames, ms.D)) * 0.4).astype(np.float32)


def measure(run, frames: int, repeats: int) -> tuple[float, float]:
    """(best, median) milliseconds per frame of run(), which renders `frames` frames."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0 / frames)
    return min(times), float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args(argv)

    import onnxruntime

    print(f"date      {datetime.date.today()}")
    print(f"cpu       {cpu_model()}, {os.cpu_count()} cores")
    print(f"load      {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    print(f"versions  torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"batch     {args.batch} frames, {args.repeats} batches per row\n")
    print(f"{'size':>5} {'engine':>12} {'threads':>7} {'best ms/frame':>14} {'median':>8}")

    motion = motion_batch(args.batch)
    for size in args.sizes:
        avatar = prepare_avatar(size=size)
        tensors = avatar.tensors()
        with torch.no_grad():
            expected = render_tensors(*tensors, torch.from_numpy(motion)).numpy()
        for threads in args.threads:
            torch.set_num_threads(threads)

            def run_torch(tensors=tensors):
                with torch.no_grad():
                    render_tensors(*tensors, torch.from_numpy(motion))

            best, median = measure(run_torch, args.batch, args.repeats)
            print(f"{size:>5} {'torch':>12} {threads:>7} {best:>14.1f} {median:>8.1f}", flush=True)
        if args.no_onnx:
            continue
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            path = export_onnx(avatar, Path(folder) / f"render{size}.onnx")
            exported = time.perf_counter() - start
            feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, tensors, strict=False)}
            feeds["motion"] = motion
            for threads in args.threads:
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                session = onnxruntime.InferenceSession(str(path), options,
                                                       providers=["CPUExecutionProvider"])
                (frames,) = session.run(["frames"], feeds)
                diff = np.abs(frames.astype(int) - expected.astype(int))
                best, median = measure(lambda s=session, f=feeds: s.run(["frames"], f),
                                       args.batch, args.repeats)
                print(f"{size:>5} {'onnxruntime':>12} {threads:>7} {best:>14.1f} {median:>8.1f}"
                      f"   (vs torch: max diff {diff.max()}, mean {diff.mean():.4f};"
                      f" export {exported:.0f} s)", flush=True)
        torch.set_num_threads(max(args.threads))


if __name__ == "__main__":
    main()
