"""Train the motion DiT teacher with flow matching.

    python -m train.teacher --data DATA_DIR[,DATA_DIR...] --out runs/teacher [--steps 20000]
                            [--batch 128] [--init runs/teacher/last.pt]
                            [--width W --depth L --history-frames H --history-stride S]

Config is plain values (TeacherConfig); every checkpoint carries it. The run resumes from
OUT/last.pt if it exists; otherwise --init starts it from another run's weights (network,
EMA and normaliser; a fresh optimiser and learning-rate schedule): the second stage of a
curriculum, e.g. clean data first, then clean + degraded audio. Writes OUT/last.pt (for
resuming), OUT/teacher.pt (EMA weights, for sampling and distillation) and OUT/loss.png.

Objective: x_0 ~ N(0, I), x_1 = normalised motion chunk, t ~ U(0, 1),
x_t = (1 - t) x_0 + t x_1, loss = |v(x_t, t, cond) - (x_1 - x_0)|^2.
Audio and style are dropped (replaced by learned null embeddings) with probability p_drop
each for classifier-free guidance. The carry gets Gaussian noise (sigma ~ U(0, carry_noise))
so the model learns to tolerate its own imperfect past (Hallo2-style augmentation).
"""

import argparse
import copy
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.audio import FeatureConfig
from models.motion import MotionConfig, MotionDiT, count_parameters
from models.sampler import Guidance
from train.dataset import load_examples, silence_feature_for
from train.windows import WindowSampler, fit_normalizer


@dataclass
class TeacherConfig:
    data: str = "data/synth"
    out: str = "runs/teacher"
    steps: int = 7000
    batch: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 500
    ema: float = 0.999
    p_drop_audio: float = 0.1
    p_drop_style: float = 0.1
    carry_noise: float = 0.15
    seed: int = 0
    threads: int = 1
    save_every: int = 500
    sample_steps: int = 24            # teacher sampler defaults stored in the checkpoint
    guidance_audio: float = 2.0
    guidance_style: float = 1.5
    model: dict | None = None         # MotionConfig overrides, e.g. {"width": 256}
    init: str = ""                    # a last.pt to start from (fine-tuning stage)
    device: str = "cpu"               # "cuda": the same run on a GPU (random draws stay on
                                      # the CPU, so a seed gives the same batches)


def flow_matching_loss(net: MotionDiT, batch, p_drop_audio: float, p_drop_style: float,
                       carry_noise: float, rng: torch.Generator) -> torch.Tensor:
    cond, x1 = batch.cond, batch.target
    b = x1.shape[0]
    x0 = torch.randn(x1.shape, generator=rng)
    t = torch.rand(b, generator=rng)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    sigma = torch.rand(b, 1, 1, generator=rng) * carry_noise
    carry = cond.carry + sigma * torch.randn(cond.carry.shape, generator=rng)
    use_audio = (torch.rand(b, generator=rng) >= p_drop_audio).float()
    use_style = (torch.rand(b, generator=rng) >= p_drop_style).float()
    device = net.final.weight.device
    x0, x1, t, xt, carry, use_audio, use_style = (
        x.to(device) for x in (x0, x1, t, xt, carry, use_audio, use_style))
    cond = cond.to(device)
    v = net(xt, t, carry, cond.audio, cond.carry_audio, cond.style, use_audio, use_style)
    return torch.mean((v - (x1 - x0)) ** 2)


def save_loss_plot(history: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    steps, losses = zip(*history, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="loss")
    if len(losses) > 20:
        k = max(len(losses) // 50, 5)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def optimizer_step(net, ema, opt, loss: torch.Tensor, ema_decay: float) -> None:
    """Backward, clip, step, then move the EMA copy towards the weights."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
            pe.lerp_(p, 1 - ema_decay)


def lr_at(step: int, cfg) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0))))


def train(cfg: TeacherConfig) -> Path:
    from models.generator import save_checkpoint

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    examples, feature_config = load_examples(cfg.data, "train")
    # the audio input's stack follows the data's features (models.audio.FeatureConfig)
    features = FeatureConfig.of(feature_config)
    audio = {"audio_stack": features.stack, "audio_layers": features.layers}
    model_cfg = replace(MotionConfig(), **(audio | (cfg.model or {})))
    last = out / "last.pt"
    init = None
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state["config"] != asdict(cfg) | {"steps": state["config"]["steps"]}:
            print("note: resuming with a changed config; the stored one is kept except steps")
        model_cfg = MotionConfig.from_dict(state["model_config"])
        normalizer = state["normalizer"]
    elif cfg.init:
        state = None
        init = torch.load(cfg.init, map_location="cpu", weights_only=False)
        model_cfg = MotionConfig.from_dict(init["model_config"])
        normalizer = init["normalizer"]
        print(f"starting from {cfg.init} (step {init['step']})")
    else:
        state = None
        normalizer = fit_normalizer(examples)
    torch.manual_seed(cfg.seed)
    net = MotionDiT(model_cfg).to(cfg.device)
    ema = copy.deepcopy(net).eval()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = torch.Generator().manual_seed(cfg.seed)
    sampler = WindowSampler(examples, model_cfg, normalizer, silence_feature_for(feature_config),
                            seed=cfg.seed, block_frames=feature_config["block_frames"])
    step, history = 0, []
    if state is None and init is not None:
        net.load_state_dict(init["model"])
        ema.load_state_dict(init["ema"])
    if state is not None:
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        rng.set_state(state["rng"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        step, history = state["step"], state["history"]
        print(f"resumed from {last} at step {step}")
    print(f"teacher: {count_parameters(net) / 1e6:.2f} M parameters, "
          f"{len(examples)} training examples, {cfg.steps} steps of {cfg.batch}")

    def checkpoint() -> None:
        tmp = last.with_suffix(".tmp")
        torch.save({"config": asdict(cfg), "model_config": model_cfg.to_dict(),
                    "normalizer": normalizer, "model": net.state_dict(), "ema": ema.state_dict(),
                    "optimizer": opt.state_dict(), "rng": rng.get_state(),
                    "sampler_rng": sampler.rng.bit_generator.state, "step": step,
                    "history": history}, tmp)
        tmp.replace(last)
        save_checkpoint(out / "teacher.pt", "teacher", ema, normalizer, feature_config,
                        cfg.sample_steps, Guidance(cfg.guidance_audio, cfg.guidance_style),
                        train={"teacher_config": asdict(cfg), "step": step})
        save_loss_plot(history, out / "loss.png", f"teacher flow-matching loss ({step} steps)")

    net.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="teacher", unit="step")
    t_last = time.time()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = sampler.batch(cfg.batch)
        loss = flow_matching_loss(net, batch, cfg.p_drop_audio, cfg.p_drop_style,
                                  cfg.carry_noise, rng)
        optimizer_step(net, ema, opt, loss, cfg.ema)
        step += 1
        history.append((step, loss.item()))
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean([h[1] for h in history[-50:]]):.4f}")
        if step % cfg.save_every == 0 or step == cfg.steps or time.time() - t_last > 600:
            checkpoint()
            t_last = time.time()
    bar.close()
    checkpoint()
    return out / "teacher.pt"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TeacherConfig()
    for name, value in asdict(defaults).items():
        if name == "model":
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    shape = ("width", "depth", "history_frames", "history_stride")   # MotionConfig overrides
    for name in shape:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    args = vars(parser.parse_args(argv))
    model = {k: args[k] for k in shape if args.get(k) is not None}
    args = {k: v for k, v in args.items() if k not in shape}
    print(train(TeacherConfig(**args, model=model or None)))


if __name__ == "__main__":
    main()
