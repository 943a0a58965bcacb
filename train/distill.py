"""Distil the guided teacher into a 1-2 step student (trajectory distillation).

    python -m train.distill --teacher runs/teacher/teacher.pt --data DATA_DIR --out runs/student

Why this method: the teacher's guided sampler is a deterministic ODE from noise to motion,
so each (noise, condition) has one right answer. The student (same architecture, initialised
from the teacher) learns to jump along the teacher's own trajectory in `student_steps` equal
steps: from the teacher's state at t_i it predicts the velocity (x_{t_i+1} - x_{t_i}) / dt
that lands on the teacher's state at t_i+1. Guidance is folded in because the targets come
from the guided teacher (3 evaluations per teacher step become 1 per student step). Compared
with consistency or distribution-matching distillation this needs no discriminator, no extra
networks and no fragile schedules, which suits a small model trained on a CPU; with a
motion chunk of only n x D numbers a 2-step jump loses little.

Teacher trajectories are generated in blocks as the run goes (OUT/pairs_*.pt, resumable) and
reused for several epochs. Writes OUT/last.pt, OUT/student.pt (EMA) and OUT/loss.png.
"""

import argparse
import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.generator import load_motion_model, save_checkpoint
from models.sampler import ChunkCondition, conditional_velocity, sample_teacher
from train.dataset import load_examples, silence_feature_for
from train.teacher import lr_at, optimizer_step, save_loss_plot
from train.windows import WindowSampler


@dataclass
class DistillConfig:
    teacher: str = "runs/teacher/teacher.pt"
    data: str = "data/synth"
    out: str = "runs/student"
    student_steps: int = 2
    pairs: int = 8192              # teacher trajectories generated
    pair_block: int = 1024         # generated (and saved) per block
    steps: int = 3000
    batch: int = 128
    lr: float = 1e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema: float = 0.999
    seed: int = 1
    threads: int = 1
    save_every: int = 500
    device: str = "cpu"            # "cuda": the same run on a GPU (random draws on the CPU)


def generate_pairs(teacher, sampler: WindowSampler, count: int, student_steps: int,
                   seed: int) -> dict:
    """Teacher trajectories: conditions, and the states at the student's grid times."""
    torch.manual_seed(seed)
    rows = []
    while sum(r["noise"].shape[0] for r in rows) < count:
        picks, starts, n = sampler.pick(128)
        cond = sampler.batch_at(picks, starts, n).cond
        noise = torch.randn((len(picks), n, teacher.config.motion_dim))
        device = teacher.net.final.weight.device
        _, path = sample_teacher(teacher.net, cond.to(device), noise.to(device),
                                 steps=teacher.steps, guidance=teacher.guidance, return_path=True)
        stride = teacher.steps // student_steps
        states = torch.stack(path[::stride], dim=1).cpu()  # [B, student_steps + 1, n, D]
        # the conditions are kept as window positions (the features stay in the dataset)
        rows.append({"picks": torch.from_numpy(picks), "starts": torch.from_numpy(starts),
                     "noise": noise, "states": states})
    # chunks of different lengths n cannot be stacked: keep them as a list of batches
    return {"batches": rows}


def distill_loss(student, cond: ChunkCondition, batch: dict, rng: torch.Generator,
                 steps: int) -> torch.Tensor:
    states = batch["states"]                                  # [B, steps + 1, n, D]
    b = states.shape[0]
    i = torch.randint(0, steps, (b,), generator=rng)          # which jump each row learns
    dt = 1.0 / steps
    device = student.final.weight.device
    states, i = states.to(device), i.to(device)
    x = states[torch.arange(b, device=device), i]
    target = (states[torch.arange(b, device=device), i + 1] - x) / dt
    v = conditional_velocity(student, x, i.float() * dt, cond.to(device))
    return torch.mean((v - target) ** 2)


def distill(cfg: DistillConfig) -> Path:
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_motion_model(cfg.teacher, kind="teacher")
    teacher.net.to(cfg.device)
    if teacher.steps % cfg.student_steps:
        raise ValueError(f"teacher steps {teacher.steps} must be a multiple of "
                         f"student steps {cfg.student_steps}")
    examples, feature_config = load_examples(cfg.data, "train")
    sampler = WindowSampler(examples, teacher.config, teacher.normalizer,
                            silence_feature_for(feature_config), seed=cfg.seed,
                            block_frames=feature_config["block_frames"])

    blocks = -(-cfg.pairs // cfg.pair_block)
    pair_batches = []
    for k in tqdm(range(blocks), desc="teacher trajectories", unit="block"):
        path = out / f"pairs_{k:03d}.pt"
        if path.is_file():
            pair_batches += torch.load(path, weights_only=False)["batches"]
            continue
        sampler.rng = np.random.default_rng([cfg.seed, k])
        block = generate_pairs(teacher, sampler, cfg.pair_block, cfg.student_steps,
                               seed=cfg.seed * 1000 + k)
        tmp = path.with_suffix(".tmp")
        torch.save(block, tmp)
        tmp.replace(path)
        pair_batches += block["batches"]

    student = copy.deepcopy(teacher.net).train()
    ema = copy.deepcopy(student).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = torch.Generator().manual_seed(cfg.seed)
    pick = np.random.default_rng(cfg.seed)
    step, history = 0, []
    last = out / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        student.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        pick.bit_generator.state = state["pick_rng"]
        step, history = state["step"], state["history"]
        print(f"resumed from {last} at step {step}")

    def checkpoint() -> None:
        tmp = last.with_suffix(".tmp")
        torch.save({"config": asdict(cfg), "model": student.state_dict(),
                    "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                    "rng": rng.get_state(), "pick_rng": pick.bit_generator.state,
                    "step": step, "history": history}, tmp)
        tmp.replace(last)
        save_checkpoint(out / "student.pt", "student", ema, teacher.normalizer,
                        teacher.feature_config, cfg.student_steps, teacher.guidance,
                        train={"distill_config": asdict(cfg), "step": step,
                               "teacher_steps": teacher.steps},
                        half=True)
        save_loss_plot(history, out / "loss.png", f"distillation loss ({step} steps)")

    bar = tqdm(total=cfg.steps, initial=step, desc="student", unit="step")
    t_last = time.time()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        source = pair_batches[int(pick.integers(len(pair_batches)))]
        rows = torch.from_numpy(pick.choice(source["noise"].shape[0],
                                            size=min(cfg.batch, source["noise"].shape[0]),
                                            replace=False))
        batch = {k: v[rows] for k, v in source.items()}
        n = batch["states"].shape[2]
        cond = sampler.batch_at(batch["picks"].numpy(), batch["starts"].numpy(), n).cond
        loss = distill_loss(student, cond, batch, rng, cfg.student_steps)
        optimizer_step(student, ema, opt, loss, cfg.ema)
        step += 1
        history.append((step, loss.item()))
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean([h[1] for h in history[-50:]]):.4f}")
        if step % cfg.save_every == 0 or time.time() - t_last > 600:
            checkpoint()
            t_last = time.time()
    bar.close()
    checkpoint()
    return out / "student.pt"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(DistillConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    print(distill(DistillConfig(**vars(parser.parse_args(argv)))))


if __name__ == "__main__":
    main()
