"""Sampling motion chunks: the teacher (many Euler steps + multi-condition CFG) and the
distilled student (1-2 steps, guidance folded in).

Flow matching convention: x_0 is Gaussian noise, x_1 is (normalised) motion,
x_t = (1 - t) x_0 + t x_1, and the network predicts v = x_1 - x_0.

Multi-condition guidance (audio, then style on top; Sonic/InstructPix2Pix style):
    v = v(0, 0) + g_audio * (v(a, 0) - v(0, 0)) + g_style * (v(a, s) - v(a, 0))
The three evaluations run as one batch.
"""

from dataclasses import asdict, dataclass

import torch

from models.motion import MotionDiT


@dataclass(frozen=True)
class Guidance:
    audio: float = 2.0
    style: float = 1.5

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ChunkCondition:
    """Everything a chunk is conditioned on (batched, normalised motion).

    carry [B, K, D]; carry_audio [B, K, stack, 384]; audio [B, n, stack, 384]; style [B, S].
    """

    carry: torch.Tensor
    carry_audio: torch.Tensor
    audio: torch.Tensor
    style: torch.Tensor

    @property
    def batch(self) -> int:
        return self.audio.shape[0]

    @property
    def frames(self) -> int:
        return self.audio.shape[1]

    def to(self, device: str | torch.device) -> "ChunkCondition":
        return ChunkCondition(*(x.to(device) for x in (self.carry, self.carry_audio,
                                                        self.audio, self.style)))

    def repeat(self, times: int) -> "ChunkCondition":
        return ChunkCondition(*(x.repeat(times, *([1] * (x.dim() - 1)))
                                for x in (self.carry, self.carry_audio, self.audio, self.style)))


def guided_velocity(model: MotionDiT, x: torch.Tensor, t: torch.Tensor,
                    cond: ChunkCondition, guidance: Guidance) -> torch.Tensor:
    """CFG velocity; x [B, n, D], t [B] -> [B, n, D]. One batched call of 3B."""
    b = x.shape[0]
    c3 = cond.repeat(3)
    ones, zeros = torch.ones(b, device=x.device), torch.zeros(b, device=x.device)
    use_audio = torch.cat([zeros, ones, ones])
    use_style = torch.cat([zeros, zeros, ones])
    v = model(x.repeat(3, 1, 1), t.repeat(3), c3.carry, c3.audio, c3.carry_audio, c3.style,
              use_audio, use_style)
    v_none, v_audio, v_both = v.chunk(3)
    return (v_none + guidance.audio * (v_audio - v_none)
            + guidance.style * (v_both - v_audio))


def conditional_velocity(model: MotionDiT, x: torch.Tensor, t: torch.Tensor,
                         cond: ChunkCondition) -> torch.Tensor:
    """Fully conditioned velocity (the student: guidance is folded into its weights)."""
    ones = torch.ones(x.shape[0], device=x.device)
    return model(x, t, cond.carry, cond.audio, cond.carry_audio, cond.style, ones, ones)


def time_grid(steps: int) -> list[float]:
    return [i / steps for i in range(steps + 1)]


@torch.inference_mode()
def sample_teacher(model: MotionDiT, cond: ChunkCondition, noise: torch.Tensor,
                   steps: int = 24, guidance: Guidance | None = None,
                   return_path: bool = False):
    """Euler integration of the guided flow from noise (t=0) to motion (t=1).

    With return_path, also returns the states at every grid time (for distillation).
    """
    guidance = guidance or Guidance()
    x = noise
    path = [x]
    grid = time_grid(steps)
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        t = torch.full((x.shape[0],), t0, device=x.device)
        x = x + (t1 - t0) * guided_velocity(model, x, t, cond, guidance)
        path.append(x)
    return (x, path) if return_path else x


@torch.inference_mode()
def sample_student(model: MotionDiT, cond: ChunkCondition, noise: torch.Tensor,
                   steps: int = 2) -> torch.Tensor:
    """The distilled sampler: `steps` (1 or 2) network evaluations, no guidance batch."""
    x = noise
    grid = time_grid(steps)
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        t = torch.full((x.shape[0],), t0, device=x.device)
        x = x + (t1 - t0) * conditional_velocity(model, x, t, cond)
    return x
