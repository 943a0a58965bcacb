"""The motion DiT: a diffusion transformer over one chunk of motion frames.

Tokens, one per frame (width W):

    [ carry_1 ... carry_K | x_1 ... x_n ]        n <= N (a first chunk may be shorter)
      K carried-over frames   n frames being generated (noisy motion at flow time t)

    carry token = Linear(carry motion) + audio(its features) + carry-type + position
    chunk token = Linear(noisy motion) + audio(its features) + chunk-type + position

The carried frames are the last K frames already sent (a clean causal prefix, noise-augmented
in training so errors do not accumulate; EMO's motion frames, done causally). Attention is
full inside the K + n tokens. The flow time t and the style controls condition every block
through adaLN-Zero (DiT). The output is the flow-matching velocity of the n chunk frames.

Motion history (history_frames H > 0): the H frames sent before the carry, every
history_stride-th of them taken relative to the last carried frame, summarised by an MLP into
the same adaLN conditioning. It costs no tokens, and tells the model where the head has been
over the last seconds, which K = 8 frames (320 ms) cannot: with the carry alone each step's
head move is right but moves over a second or more come out at half their size (the slow
posture shifts and drift; benchmarks/RESULTS.md, session 4). The motion a chunk is
conditioned on is then H + K frames (`context_frames`): the model's `carry` input holds them
all, oldest first, and only its last K become tokens.

Classifier-free guidance: the audio embedding is replaced by a learned null embedding, and
the style by a learned null style, when dropped (training) or unconditioned (sampling).
Motion enters and leaves normalised (per-parameter mean/std of the training data).
"""

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kernels import dispatch
from models import motion_space

STYLE_NAMES = ("head_amplitude", "mouth_amplitude")


@dataclass(frozen=True)
class MotionConfig:
    motion_dim: int = motion_space.D
    audio_stack: int = 10          # feature vectors per video frame (models/audio.py)
    audio_layers: int = 1          # encoder stages among them (FeatureConfig.all_layers: 5)
    audio_dim: int = 384
    style_names: tuple[str, ...] = STYLE_NAMES
    chunk_frames: int = 4          # N: frames generated per call (max)
    carry_frames: int = 8          # K: carried-over frames
    history_frames: int = 0        # H: older frames summarised into the conditioning (0: none)
    history_stride: int = 4        # every history_stride-th history frame is used
    width: int = 192
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    audio_proj: int = 48           # per encoder frame, before flattening the stack

    @property
    def style_dim(self) -> int:
        return len(self.style_names)

    @property
    def context_frames(self) -> int:
        """Motion frames a chunk is conditioned on: history, then carry."""
        return self.history_frames + self.carry_frames

    @property
    def history_samples(self) -> int:
        return self.history_frames // self.history_stride

    def to_dict(self) -> dict:
        d = asdict(self)
        d["style_names"] = list(self.style_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MotionConfig":
        d = dict(d)
        d["style_names"] = tuple(d["style_names"])
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in [0, 1]: [B] -> [B, dim]."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(10000.0) * steps / half)
    args = 1000.0 * t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, w // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                  # each [B, heads, n, w/heads]
        y = dispatch.attention(q, k, v)                         # SDPA, or Triton on CUDA
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """DiT block with adaLN-Zero conditioning."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[-1].weight)        # adaLN-Zero: blocks start as identity
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class AudioEmbedding(nn.Module):
    """Per-frame audio feature stack [.., stack, 384] -> [.., width].

    With several encoder stages per encoder frame (audio_layers L > 1, the stack ordered
    (frame, stage)), each frame's stages are brought to one scale (a layer norm without
    parameters: the features are constants, so nothing of it is kept for the backward pass)
    and mixed by learned softmax weights first, as Sonic and Hallo weight Whisper's layers;
    the rest is the same as with the last stage alone.
    """

    def __init__(self, config: MotionConfig):
        super().__init__()
        self.layers = config.audio_layers
        frames = config.audio_stack // config.audio_layers
        self.norm = nn.LayerNorm(config.audio_dim)
        if self.layers > 1:
            self.layer_weights = nn.Parameter(torch.zeros(config.audio_layers))
        self.proj = nn.Linear(config.audio_dim, config.audio_proj)
        self.mlp = nn.Sequential(
            nn.Linear(frames * config.audio_proj, config.width), nn.GELU(),
            nn.Linear(config.width, config.width))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio                                              # [B, T, stack, 384]
        if self.layers > 1:
            b, t, stack, dim = x.shape
            x = x.view(b, t, stack // self.layers, self.layers, dim)   # [B, T, F, L, 384]
            x = F.layer_norm(x, (dim,))
            x = (x * self.layer_weights.softmax(0)[:, None]).sum(-2)   # [B, T, F, 384]
        x = self.proj(self.norm(x))                            # [B, T, F, audio_proj]
        return self.mlp(x.flatten(-2))                         # [B, T, width]


@dataclass
class Normalizer:
    """Per-parameter mean/std of the training motion (stored in the checkpoint)."""

    mean: list[float] = field(default_factory=lambda: [0.0] * motion_space.D)
    std: list[float] = field(default_factory=lambda: [1.0] * motion_space.D)

    def to_model(self, motion: torch.Tensor) -> torch.Tensor:
        return (motion - torch.tensor(self.mean)) / torch.tensor(self.std)

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tensor(self.std) + torch.tensor(self.mean)


class MotionDiT(nn.Module):
    def __init__(self, config: MotionConfig):
        super().__init__()
        self.config = c = config
        w = c.width
        self.carry_in = nn.Linear(c.motion_dim, w)
        self.chunk_in = nn.Linear(c.motion_dim, w)
        self.audio = AudioEmbedding(c)
        self.null_audio = nn.Parameter(torch.zeros(w))
        self.position = nn.Parameter(torch.randn(c.carry_frames + c.chunk_frames, w) * 0.02)
        self.kind = nn.Parameter(torch.randn(2, w) * 0.02)     # 0: carry token, 1: chunk token
        self.time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.style = nn.Sequential(nn.Linear(c.style_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.null_style = nn.Parameter(torch.zeros(w))
        if c.history_frames:
            if c.history_frames % c.history_stride:
                raise ValueError("history_frames must be a multiple of history_stride")
            self.history = nn.Sequential(nn.Linear(c.history_samples * c.motion_dim, w),
                                         nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(Block(w, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))
        self.final = nn.Linear(w, c.motion_dim)
        nn.init.zeros_(self.final_ada[-1].weight)
        nn.init.zeros_(self.final_ada[-1].bias)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, carry: torch.Tensor,
                audio: torch.Tensor, carry_audio: torch.Tensor, style: torch.Tensor,
                use_audio: torch.Tensor, use_style: torch.Tensor) -> torch.Tensor:
        """Velocity of the chunk frames.

        x [B, n, D] noisy normalised motion at time t [B]; carry [B, H + K, D] normalised
        (history, then the carried frames; H = 0 without history);
        audio [B, n, stack, 384]; carry_audio [B, K, stack, 384]; style [B, S];
        use_audio, use_style [B] in {0, 1} (0 = null condition, for guidance/dropout).
        Returns [B, n, D].
        """
        c = self.config
        history, carry = carry[:, :c.history_frames], carry[:, c.history_frames:]
        n, k = x.shape[1], carry.shape[1]
        a = self.audio(torch.cat([carry_audio, audio], dim=1))  # [B, K+n, W]
        ua = use_audio.to(a.dtype)[:, None, None]
        a = ua * a + (1 - ua) * self.null_audio
        tokens = torch.cat([self.carry_in(carry) + self.kind[0],
                            self.chunk_in(x) + self.kind[1]], dim=1)   # [B, K+n, W]
        tokens = tokens + a + self.position[c.carry_frames - k: c.carry_frames + n]
        us = use_style.to(a.dtype)[:, None]
        cond = self.time(timestep_embedding(t, c.width))
        cond = cond + us * self.style(style) + (1 - us) * self.null_style
        if c.history_frames:
            # every stride-th history frame, ending one stride before the carry, relative to
            # the last carried frame: [B, H, D] -> [B, H / stride, D] -> [B, H / stride * D]
            past = history[:, c.history_stride - 1::c.history_stride] - carry[:, -1:]
            cond = cond + self.history(past.flatten(1))
        for block in self.blocks:
            tokens = block(tokens, cond)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))
        return out[:, k:]                                        # [B, n, D]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
