"""Audio file decoding and resampling shared by every stage.

Files are decoded with av (FFmpeg), so any format it knows works (wav, mp3, ogg/opus, flac,
m4a, the audio track of a video). Resampling uses soxr, a proper band-limited resampler.
"""

from pathlib import Path

import av
import numpy as np
import soxr

MIN_RATE = 8000
MAX_RATE = 48000


class AudioInputError(ValueError):
    """Audio that cannot be used; the message says why, in words a user understands."""


def check_rate(rate: int) -> int:
    if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool):
        raise AudioInputError(f"sample rate must be an integer in Hz, got {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioInputError(
            f"unsupported sample rate {rate} Hz: supported are {MIN_RATE}-{MAX_RATE} Hz"
        )
    return int(rate)


def to_float_mono(pcm: np.ndarray, channels: int = 1) -> np.ndarray:
    """PCM samples (int16 or float, interleaved or [n, channels]) -> float32 mono in [-1, 1].

    Raises AudioInputError for NaN/inf samples, a wrong dtype, or a length that is not a
    whole number of frames.
    """
    pcm = np.asarray(pcm)
    if channels not in (1, 2):
        raise AudioInputError(f"unsupported channel count {channels}: use 1 (mono) or 2 (stereo)")
    if pcm.dtype == np.int16:
        x = pcm.astype(np.float32) / 32768.0
    elif pcm.dtype in (np.float32, np.float64):
        x = pcm.astype(np.float32, copy=False)
        if not np.isfinite(x).all():
            raise AudioInputError("audio contains NaN or infinite samples")
    else:
        raise AudioInputError(f"unsupported sample type {pcm.dtype}: use int16 or float32")
    if x.ndim == 2:
        if x.shape[1] != channels:
            raise AudioInputError(f"audio has {x.shape[1]} channels, {channels} declared")
        x = x.reshape(-1)
    if x.ndim != 1:
        raise AudioInputError(f"audio must be interleaved or [samples, channels], got {x.shape}")
    if x.size % channels:
        raise AudioInputError(
            f"{x.size} samples is not a whole number of {channels}-channel frames")
    if channels == 2:
        x = x.reshape(-1, 2).mean(axis=1)  # [n, 2] -> [n]
    return np.clip(x, -1.0, 1.0)


def resample(x: np.ndarray, rate: int, target: int = 16000) -> np.ndarray:
    """Resample float32 mono audio (whole signal at once)."""
    if rate == target:
        return np.asarray(x, dtype=np.float32)
    return soxr.resample(np.asarray(x, dtype=np.float32), rate, target, quality="HQ")


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file to float32 mono at its own sample rate (48 kHz if above 48 kHz)."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioInputError(f"{path}: the file has no audio track")
            rate = container.streams.audio[0].rate or MAX_RATE
    except AudioInputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise AudioInputError(f"{path}: not a readable audio file ({e.__class__.__name__})") from e
    rate = min(max(rate, MIN_RATE), MAX_RATE)
    return load_audio(path, rate), rate


def load_audio(path: str | Path, rate: int = 16000) -> np.ndarray:
    """Decode an audio (or video) file to float32 mono at `rate` Hz.

    Raises AudioInputError with a plain message for a missing, truncated, empty or
    non-audio file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: no such file")
    pieces: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioInputError(f"{path}: the file has no audio track")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except AudioInputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        reason = f"{e.__class__.__name__}: {e}"
        raise AudioInputError(f"{path}: not a readable audio file ({reason})") from e
    if not pieces:
        raise AudioInputError(f"{path}: the file contains no audio samples")
    audio = np.concatenate(pieces).astype(np.float32)
    if audio.size == 0:
        raise AudioInputError(f"{path}: the file contains no audio samples")
    if not np.isfinite(audio).all():
        raise AudioInputError(f"{path}: decoded audio contains NaN or infinite samples")
    return audio
