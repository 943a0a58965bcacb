"""Audio features: Whisper tiny.en encoder on fixed sliding windows -> per-frame stacks.

The windowing is part of the model (Whisper's features depend strongly on absolute position
in the window), so it is fixed here and used identically for training data and at run time:

    video frames are grouped in blocks of H frames (block b = frames [bH, (b+1)H)).
    Block b is encoded in one window of W video frames of audio that ends L frames
    (the look-ahead) after the block:

        |<------------------------- window: W frames ------------------------->|
        | ... past audio ... | ctx | block b: H frames | look-ahead: L frames |
                                                        ^ block end   window end ^

    Audio before the stream start is silence (zeros). The encoder runs on that window
    alone (its positional embedding sliced to the window), giving 2 encoder frames per
    video frame (50 Hz). Frame t's feature is the stack of encoder frames for video frames
    t-m .. t+m (m = context frames), i.e. [2(2m+1), 384] (EMO's audio context).

    With all_layers, each encoder frame gives the outputs of every encoder stage (the
    embedded input, blocks 1-3, and the normed last block: 5 for tiny.en), so a frame's
    feature is [2(2m+1) * 5, 384], ordered (encoder frame, stage). Sonic, EchoMimic and
    Hallo condition on Whisper's layer stack: the lower stages keep more of the sound itself,
    the last one is the most about words.

So a frame's feature depends only on the audio up to its block's window end, and on
nothing about how that audio arrived: streaming (FeatureStream, any chunk sizes) and
offline (AudioFeatureExtractor.features) give the same numbers.

    python -m models.audio --transcribe FILE    prints Whisper's transcript of FILE
"""

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from whisper.audio import HOP_LENGTH, N_FFT, mel_filters

from kernels import dispatch

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class FeatureConfig:
    fps: int = 25
    window_frames: int = 25     # W: encoder window, in video frames (1.0 s)
    block_frames: int = 2       # H: video frames whose features one window gives (80 ms)
    lookahead_frames: int = 2   # L: audio after the block inside the window (80 ms)
    context_frames: int = 2     # m: +-m video frames of context stacked per frame
    all_layers: bool = False    # every encoder stage per encoder frame, not the last alone

    @classmethod
    def of(cls, settings: dict) -> "FeatureConfig":
        """The configuration stored with a motion model (its extra keys ignored)."""
        return cls(**{k: v for k, v in settings.items() if k in cls.__dataclass_fields__})

    def __post_init__(self):
        if SAMPLE_RATE % self.fps:
            raise ValueError(f"fps {self.fps} must divide {SAMPLE_RATE}")
        if self.lookahead_frames < self.context_frames:
            raise ValueError("look-ahead must cover the context after the last frame of a block")
        if self.context_frames + self.block_frames + self.lookahead_frames > self.window_frames:
            raise ValueError("block, context and look-ahead must fit in the window")

    @property
    def samples_per_frame(self) -> int:
        return SAMPLE_RATE // self.fps                    # 640 at 25 fps

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.samples_per_frame

    @property
    def encoder_frames(self) -> int:
        return self.window_samples // (2 * HOP_LENGTH)    # 50 Hz: 2 per video frame at 25 fps

    @property
    def layers(self) -> int:
        return ENCODER_STAGES if self.all_layers else 1

    @property
    def stack(self) -> int:
        """Feature vectors per video frame: encoder frames (2 per frame) x stages."""
        return 2 * (2 * self.context_frames + 1) * self.layers

    @property
    def latency_ms(self) -> float:
        """Audio a frame may wait for: the rest of its block plus the look-ahead."""
        return 1000.0 * (self.block_frames + self.lookahead_frames) / self.fps

    def window_end(self, block: int) -> int:
        """Sample index (exclusive) where block b's window ends."""
        return ((block + 1) * self.block_frames + self.lookahead_frames) * self.samples_per_frame

    def to_dict(self) -> dict:
        return {"encoder": "whisper-tiny.en", "sample_rate": SAMPLE_RATE, **asdict(self)}


FEATURE_DIM = 384
ENCODER_STAGES = 5      # tiny.en: the embedded input and 4 blocks


def log_mel(windows: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Whisper's log-mel spectrogram, normalised per window.

    windows [B, S] float32 at 16 kHz -> [B, 80, S // 160]. Unlike whisper.log_mel_spectrogram,
    the dynamic-range clamp uses each window's own maximum, so a window's features do not
    depend on the other windows in the batch.
    """
    stft = torch.stft(windows, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT),
                      return_complex=True)                 # [B, 201, S/160 + 1]
    power = stft[..., :-1].abs() ** 2                      # [B, 201, S/160]
    mel = filters @ power                                  # [B, 80, S/160]
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


class WindowEncoder(nn.Module):
    """Whisper's audio encoder on a short fixed window: the positional embedding is sliced.

    mel [B, 80, 2n] -> features [B, n, 384], n = encoder frames in the window; with
    all_layers, [B, n, stages, 384] (the embedded input, each block, the last one normed).
    """

    def __init__(self, encoder: nn.Module, n_frames: int, all_layers: bool = False):
        super().__init__()
        self.conv1, self.conv2 = encoder.conv1, encoder.conv2
        self.blocks, self.ln_post = encoder.blocks, encoder.ln_post
        self.all_layers = all_layers
        self.register_buffer("positional_embedding",
                             encoder.positional_embedding[:n_frames].clone())

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))                          # [B, 384, n]
        x = x.permute(0, 2, 1) + self.positional_embedding  # [B, n, 384]
        stages = [x]
        for block in self.blocks:
            x = encoder_block(block, x) if dispatch.fused(x) else block(x)
            stages.append(x)
        stages[-1] = self.ln_post(x)
        if not self.all_layers:
            return stages[-1]
        return torch.stack(stages, dim=2)                   # [B, n, stages, 384]


def encoder_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Whisper's ResidualAttentionBlock as the encoder runs it (no mask, no cross-attention),
    with its attention through kernels.dispatch: the Triton kernel on CUDA, or a TensorRT
    plugin node in a plugin export. x [B, n, 384] -> [B, n, 384]."""
    attn = block.attn
    h = block.attn_ln(x)
    b, n, _ = h.shape
    q, k, v = (proj(h).view(b, n, attn.n_head, -1).permute(0, 2, 1, 3)   # [B, heads, n, 64]
               for proj in (attn.query, attn.key, attn.value))
    y = dispatch.attention(q, k, v).permute(0, 2, 1, 3).flatten(start_dim=2)
    x = x + attn.out(y)
    return x + block.mlp(block.mlp_ln(x))


def load_window_encoder(config: FeatureConfig) -> WindowEncoder:
    from models.whisper_weights import load_whisper_tiny_en

    whisper = load_whisper_tiny_en()
    return WindowEncoder(whisper.encoder, config.encoder_frames, config.all_layers).eval()


# A backend maps mel [B, 80, 2n] (float32 numpy) to encoder features [B, n, 384]
# ([B, n, stages, 384] with all_layers).
EncoderBackend = Callable[[np.ndarray], np.ndarray]


class TorchEncoder:
    def __init__(self, module: WindowEncoder):
        self.module = module

    @torch.inference_mode()
    def __call__(self, mel: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(mel)).numpy()


class AudioFeatureExtractor:
    """Per-frame Whisper feature stacks for 16 kHz mono audio, with the fixed windowing."""

    def __init__(self, config: FeatureConfig | None = None,
                 encoder: EncoderBackend | None = None, batch: int = 16):
        self.config = config or FeatureConfig()
        self.encoder = encoder or TorchEncoder(load_window_encoder(self.config))
        self.filters = mel_filters("cpu", 80)
        self.batch = batch

    def encode_blocks(self, audio: np.ndarray, blocks: range, offset: int = 0,
                      batch: int | None = None) -> np.ndarray:
        """Features of whole blocks: [len(blocks) * H, stack, 384].

        `audio` holds samples from absolute index `offset` on and must reach the last
        block's window end; samples before the stream start are zeros. Windows are encoded
        `batch` at a time (batching changes the float rounding slightly, ~1e-6).
        """
        c = self.config
        n_win = c.window_samples
        batch = batch or self.batch
        out = []
        for first in range(blocks.start, blocks.stop, batch):
            chunk = range(first, min(first + batch, blocks.stop))
            windows = np.zeros((len(chunk), n_win), dtype=np.float32)
            for row, b in enumerate(chunk):
                end = c.window_end(b)
                start = end - n_win
                lo = max(start, 0)
                windows[row, lo - start:] = audio[lo - offset: end - offset]
            with torch.inference_mode():
                mel = log_mel(torch.from_numpy(windows), self.filters).numpy()
            enc = self.encoder(mel)                          # [B, n, (stages,) 384]
            out.append(self._stack(enc))
        if not out:
            return np.zeros((0, c.stack, FEATURE_DIM), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _stack(self, enc: np.ndarray) -> np.ndarray:
        """Encoder frames of each window -> per-frame stacks of its block's frames.

        enc [B, n, 384] -> [B * H, 2(2m+1), 384]; with all_layers
        enc [B, n, stages, 384] -> [B * H, 2(2m+1) * stages, 384], (frame, stage) order.
        """
        c = self.config
        first = c.window_frames - c.lookahead_frames - c.block_frames  # block start, in frames
        stacks = []
        for k in range(c.block_frames):
            p = first + k
            lo, hi = 2 * (p - c.context_frames), 2 * (p + c.context_frames + 1)
            stacks.append(enc[:, lo:hi])                     # [B, 2(2m+1), (stages,) 384]
        return np.stack(stacks, axis=1).reshape(-1, c.stack, enc.shape[-1])

    def features(self, audio: np.ndarray) -> np.ndarray:
        """Offline: the whole of `audio` (16 kHz mono float32) -> [T, stack, 384].

        T = ceil(len(audio) / samples_per_frame); the tail is padded with silence.
        """
        audio = _check_audio(audio)
        c = self.config
        frames = -(-audio.size // c.samples_per_frame)
        blocks = -(-frames // c.block_frames)
        padded = np.zeros(max(c.window_end(blocks - 1), audio.size), dtype=np.float32)
        padded[: audio.size] = audio
        return self.encode_blocks(padded, range(blocks))[:frames]

    def stream(self) -> "FeatureStream":
        return FeatureStream(self)


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float samples at 16 kHz, got {audio.dtype}")
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples")
    return audio


class FeatureStream:
    """Streaming features: push 16 kHz audio in pieces of any size, pull frames as they are ready.

    Block b is ready once the audio reaches its window end (block end + look-ahead). Only the
    audio still needed by a future window is kept. Each block is encoded on its own (batch 1),
    so the numbers are bit-identical however the audio was cut into pieces.
    """

    def __init__(self, extractor: AudioFeatureExtractor):
        self.extractor = extractor
        self.config = extractor.config
        self.audio = np.zeros(0, dtype=np.float32)
        self.offset = 0          # absolute sample index of self.audio[0]
        self.received = 0        # samples pushed so far
        self.next_block = 0
        self.frames_out = 0

    def push(self, audio: np.ndarray) -> None:
        audio = _check_audio(audio)
        self.audio = np.concatenate([self.audio, audio])
        self.received += audio.size

    def ready_blocks(self) -> int:
        b = self.next_block
        while self.config.window_end(b) <= self.received:
            b += 1
        return b - self.next_block

    def pull(self, max_blocks: int | None = None) -> np.ndarray:
        """Features of every frame whose audio (plus look-ahead) has arrived: [n, stack, 384]."""
        n = self.ready_blocks()
        if max_blocks is not None:
            n = min(n, max_blocks)
        return self._emit(n)

    def finish(self) -> np.ndarray:
        """End of stream: pad with silence, return the remaining frames (up to the audio's end)."""
        c = self.config
        frames = -(-self.received // c.samples_per_frame)
        blocks = -(-frames // c.block_frames)
        pad = max(c.window_end(blocks - 1) - self.received, 0) if blocks else 0
        self.audio = np.concatenate([self.audio, np.zeros(pad, dtype=np.float32)])
        before = self.frames_out
        out = self._emit(max(blocks - self.next_block, 0))
        self.frames_out = max(frames, before)
        return out[: max(frames - before, 0)]

    def restart_at(self, block: int, history: np.ndarray) -> None:
        """Rewind (barge-in): continue as if the stream had ended right before `block`.

        `history` holds the audio samples [window_end(block) - window, block start), the
        past that block's window sees (zeros before the stream start are added here).
        """
        c = self.config
        start = c.window_end(block) - c.window_samples
        stop = block * c.block_frames * c.samples_per_frame
        if history.size != stop - start:
            raise ValueError(f"restart needs {stop - start} samples of history, got {history.size}")
        self.audio = np.asarray(history, np.float32).copy()
        self.offset = start
        self.received = stop
        self.next_block = block
        self.frames_out = block * c.block_frames

    def _emit(self, n: int) -> np.ndarray:
        c = self.config
        blocks = range(self.next_block, self.next_block + n)
        feats = self.extractor.encode_blocks(self.audio, blocks, self.offset, batch=1)
        self.next_block += n
        self.frames_out += len(feats)
        # drop audio no future window needs
        keep_from = max(c.window_end(self.next_block) - c.window_samples, 0)
        if keep_from > self.offset:
            self.audio = self.audio[keep_from - self.offset:]
            self.offset = keep_from
        return feats


def transcribe(path: str) -> str:
    """Whisper tiny.en's transcript of an audio file (proves the converted weights)."""
    from models.audio_io import load_audio
    from models.whisper_weights import load_whisper_tiny_en

    audio = load_audio(path)
    if np.abs(audio).max() < 1e-4:
        return ""
    model = load_whisper_tiny_en()
    return model.transcribe(audio, fp16=False, language="en")["text"].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.audio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transcribe", metavar="FILE", required=True,
                        help="print Whisper tiny.en's transcript of an audio file")
    args = parser.parse_args(argv)
    from models.audio_io import AudioInputError

    try:
        print(transcribe(args.transcribe))
    except (AudioInputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
