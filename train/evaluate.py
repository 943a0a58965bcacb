"""Evaluate motion checkpoints on the validation split (held-out voices and sentences).

    python -m train.evaluate --checkpoint runs/student/student.pt
                             [--teacher runs/teacher/teacher.pt] --data DATA_DIR --json OUT.json

For each model, every validation example is generated chunk by chunk exactly as a stream
would be (shorter first chunk, causal carryover) and compared with its ground truth:
    sync_corr       Pearson correlation of generated jaw_open with the ground truth
    lag_ms          lag of the cross-correlation peak (positive: generated mouth is late)
    seam_ratio      mean motion jump across chunk boundaries / mean jump inside chunks
                    (none with 1-frame chunks: every jump is a seam)
    jitter_ratio    mean size of the second difference of the normalised motion, generated
                    over ground truth: shaking whatever the chunk length
    head_std_ratio  std of generated head rotation / std of the ground truth, over all frames
                    pooled (head pose is relative to the speaker's rest, train.visemes; format
                    2 data also counted the differences between speakers' resting postures)
    head_std_ratio_within   the same within each example (its own mean removed), averaged:
                    the motion inside a recording alone
    head_change_1s_ratio    std of the head rotation's change over 1 s (25 frames), generated
                    over ground truth, pooled: the slow, large moves (posture shifts), blind to
                    resting postures
    nfe             network evaluations per chunk
    ms_per_chunk    mean wall time of one chunk of one stream alone on this machine (1 thread;
                    the first TIMED_CHUNKS chunks of the split's audio)
The examples are generated together, each its own stream, the chunks of a step batched
into one network call (models.generator.generate_sequences): the whole split in minutes,
the teacher's 72 evaluations per chunk included.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from models import motion_space
from models.generator import (
    MotionGenerator,
    generate_sequence,
    generate_sequences,
    load_motion_model,
)
from train.dataset import load_examples, silence_feature_for

HEAD = ("head_yaw", "head_pitch", "head_roll")
TIMED_CHUNKS = 200     # ms_per_chunk: one stream alone over this many chunks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def lag_ms(generated: np.ndarray, truth: np.ndarray, fps: int = 25, max_lag: int = 8) -> float:
    """Lag (ms) maximising the correlation of generated[t + lag] with truth[t]."""
    best, best_lag = -np.inf, 0
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            c = pearson(generated[lag:], truth[:len(truth) - lag])
        else:
            c = pearson(generated[:lag], truth[-lag:])
        if c > best:
            best, best_lag = c, lag
    return 1000.0 * best_lag / fps


def change_std_ratio(generated: list[np.ndarray], truth: list[np.ndarray],
                     frames: int = 25) -> float:
    """Std of x[t + frames] - x[t] of the generated sequences over that of the true ones, per
    column [T, C], pooled over sequences, averaged over columns."""
    def changes(seqs):
        return np.concatenate([x[frames:] - x[:-frames] for x in seqs if len(x) > frames])
    g, t = changes(generated), changes(truth)
    return float(np.mean(g.std(axis=0) / np.maximum(t.std(axis=0), 1e-6)))


def seam_ratio(motion_norm: list[np.ndarray], sizes: list[list[int]]) -> float:
    """Mean jump (L2 of the normalised frame difference) across chunk seams over inside chunks."""
    seam, inside = [], []
    for m, s in zip(motion_norm, sizes, strict=True):
        jumps = np.linalg.norm(np.diff(m, axis=0), axis=1)   # jumps[i]: frame i -> i + 1
        boundaries = set(np.cumsum(s)[:-1] - 1)
        for i, j in enumerate(jumps):
            (seam if i in boundaries else inside).append(j)
    return float(np.mean(seam) / np.mean(inside)) if seam and inside else float("nan")


def jitter_ratio(generated: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean L2 of the second difference (frame to frame acceleration) of the generated
    sequences [T, D] over that of the true ones, pooled over sequences."""
    def mean_accel(seqs):
        return np.mean(np.concatenate([np.linalg.norm(np.diff(x, 2, axis=0), axis=1)
                                       for x in seqs if len(x) > 2]))
    return float(mean_accel(generated) / max(mean_accel(truth), 1e-9))


def evaluate_model(path: str, examples, silence, kind: str | None = None, chunk: int = 2,
                   first_chunk: int | None = None, seed: int = 0,
                   timed_chunks: int = TIMED_CHUNKS) -> dict:
    torch.set_num_threads(1)
    model = load_motion_model(path, kind=kind)
    jaw, head = motion_space.index("jaw_open"), [motion_space.index(n) for n in HEAD]
    std = np.array(model.normalizer.std, np.float32)

    def generator(i: int) -> MotionGenerator:
        style = dict(zip(model.config.style_names, map(float, examples[i].style), strict=True))
        return MotionGenerator(model, silence, seed=seed + i, style=style)

    features = [e.features[: e.frames].astype(np.float32) for e in examples]
    # all examples at once, batched per step (each its own stream, noise and carry)
    generated = generate_sequences([generator(i) for i in range(len(examples))], features,
                                   chunk, first_chunk)
    gen_jaw, true_jaw, gen_head, true_head, normed, true_normed, sizes = [], [], [], [], [], [], []
    for e, (motion, s) in zip(examples, generated, strict=True):
        truth = e.motion[: e.frames]
        gen_jaw.append(motion[:, jaw])
        true_jaw.append(truth[:, jaw])
        gen_head.append(motion[:, head])
        true_head.append(truth[:, head])
        normed.append(motion / std)
        true_normed.append(truth / std)
        sizes.append(s)
    # wall time of one stream alone, as at run time: the first `timed_chunks` chunks of audio
    timed, need = [], timed_chunks * chunk
    for f in features:                      # only as many examples as that takes
        timed.append(f[:need - sum(map(len, timed))])
        if sum(map(len, timed)) >= need:
            break
    timed = np.concatenate(timed)
    t0 = time.perf_counter()
    _, timed_sizes = generate_sequence(generator(0), timed, chunk, first_chunk)
    ms_per_chunk = 1000.0 * (time.perf_counter() - t0) / max(len(timed_sizes), 1)

    gj, tj = np.concatenate(gen_jaw), np.concatenate(true_jaw)
    gh, th = np.concatenate(gen_head), np.concatenate(true_head)
    within = (np.mean([g.std(axis=0) for g in gen_head], axis=0)               # [3]
              / np.maximum(np.mean([t.std(axis=0) for t in true_head], axis=0), 1e-6))
    return {
        "kind": model.kind,
        "sync_corr": pearson(gj, tj),
        "lag_ms": lag_ms(gj, tj),
        "seam_ratio": seam_ratio(normed, sizes),
        "jitter_ratio": jitter_ratio(normed, true_normed),
        "head_std_ratio": float(np.mean(gh.std(axis=0) / np.maximum(th.std(axis=0), 1e-6))),
        "head_std_ratio_within": float(np.mean(within)),
        "head_change_1s_ratio": change_std_ratio(gen_head, true_head),
        "nfe": model.nfe,
        "chunk_frames": chunk,
        "ms_per_chunk": ms_per_chunk,
        "timed_chunks": len(timed_sizes),
        "examples": len(examples),
        "frames": int(len(gj)),
    }


def write_json(path: str | Path, result: dict) -> None:
    """Write a result to `path` (folders made as needed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="student (or any) checkpoint")
    parser.add_argument("--teacher", help="teacher checkpoint to evaluate beside it")
    parser.add_argument("--data", default="data/synth")
    parser.add_argument("--json", required=True)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N examples")
    parser.add_argument("--chunk", type=int, default=2, help="frames per chunk (run-time: 2)")
    args = parser.parse_args(argv)

    examples, feature_config = load_examples(args.data, "val")
    if args.limit:
        examples = examples[: args.limit]
    silence = silence_feature_for(feature_config)
    result = {"data": str(args.data), "checkpoint": {}}
    for name, path in (("student", args.checkpoint), ("teacher", args.teacher)):
        if path:
            result[name] = evaluate_model(path, examples, silence, chunk=args.chunk)
            result["checkpoint"][name] = str(path)
    if "teacher" in result and "student" in result:
        teacher_sync = result["teacher"]["sync_corr"]
        result["student_vs_teacher_sync"] = (result["student"]["sync_corr"] / teacher_sync
                                             if teacher_sync > 0 else float("nan"))
    write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
