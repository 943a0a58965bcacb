"""Training speed of `make weights`' two networks on a CPU core and on a GPU, side by side.

    python -m benchmarks.train_speed --data data/synth --devices cpu cuda --steps 200
        [--json out/benchmarks/train_speed.json]

For each device the motion teacher (train.teacher, the shipped recipe's model: history 96
frames, stride 8, batch 128) trains `--steps` steps from scratch, then the student
(train.distill) generates `--pairs` teacher trajectories and trains `--steps` steps on them,
each in a new temporary folder. Reported per device: seconds per teacher step, seconds per
1024 trajectories, seconds per student step, and the final losses (finite, falling: the
device trains, not only runs). A CPU run uses one thread, as `make weights` does.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from train.distill import DistillConfig, distill
from train.teacher import TeacherConfig, train


def measure(data: str, device: str, steps: int, pairs: int) -> dict:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--devices cuda: no CUDA device here")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        teacher = train(TeacherConfig(data=data, out=f"{tmp}/t", steps=steps, warmup=steps // 10,
                                      save_every=steps, device=device,
                                      model={"history_frames": 96, "history_stride": 8}))
        teacher_s = time.perf_counter() - started
        state = torch.load(f"{tmp}/t/last.pt", map_location="cpu", weights_only=False)
        teacher_loss = [loss for _, loss in state["history"]]
        started = time.perf_counter()
        distill(DistillConfig(teacher=str(teacher), data=data, out=f"{tmp}/s", pairs=pairs,
                              pair_block=min(pairs, 1024), steps=steps, warmup=steps // 10,
                              save_every=steps, device=device))
        distill_s = time.perf_counter() - started
        state = torch.load(f"{tmp}/s/last.pt", map_location="cpu", weights_only=False)
        student_loss = [loss for _, loss in state["history"]]
        pair_files = sorted(Path(f"{tmp}/s").glob("pairs_*.pt"))
        pairs_made = sum(b["noise"].shape[0] for p in pair_files
                         for b in torch.load(p, weights_only=False)["batches"])
    tenth = max(steps // 10, 1)
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu, 1 thread",
        "teacher_s_per_step": teacher_s / steps,
        "distill_s": distill_s, "pairs": pairs_made,
        "teacher_loss_first_tenth": sum(teacher_loss[:tenth]) / tenth,
        "teacher_loss_last_tenth": sum(teacher_loss[-tenth:]) / tenth,
        "student_loss_last_tenth": sum(student_loss[-tenth:]) / tenth,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="shard folder (train.synth output)")
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    results = {d: measure(args.data, d, args.steps, args.pairs) for d in args.devices}
    print(f"\n{args.steps} teacher steps (batch 128), {args.pairs} trajectories, "
          f"{args.steps} student steps")
    print("| device | s / teacher step | distillation s | teacher loss first / last tenth "
          "| student loss last tenth |")
    print("|---|---|---|---|---|")
    for r in results.values():
        print(f"| {r['device']} | {r['teacher_s_per_step']:.3f} | {r['distill_s']:.1f} | "
              f"{r['teacher_loss_first_tenth']:.3f} / {r['teacher_loss_last_tenth']:.3f} | "
              f"{r['student_loss_last_tenth']:.2e} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
