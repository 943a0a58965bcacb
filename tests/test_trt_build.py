"""Every exported graph builds with TensorRT-RTX, which needs no GPU, for one GPU target.

A graph TensorRT cannot take fails here, not on the first GPU machine. Each graph is the one
the engines use (the user-cache exports), prepared as export.trt prepares it (fp16 for the
encoder and the motion sampler, the renderer's uint8 cast moved to the output), parsed, and
built for SM86 with the batch profile the trt engine uses. Building needs no GPU; running the
engines does, so that part is not tested here.
"""

import os
import time

import pytest

if os.environ.get("CI"):
    import tensorrt_rtx  # noqa: F401  (the test extra installs it; in CI a missing one fails)
else:
    pytest.importorskip("tensorrt_rtx")

from export import trt as T  # noqa: E402

TARGET = T.Target("sm86", "sm86")
# The fastest build (TensorRT's own optimisation level 0): the test is about whether the
# graph builds, not how fast the engine runs.
LEVEL = 0


@pytest.fixture(scope="module")
def tensorrt():
    return T.load_tensorrt("tensorrt_rtx")


@pytest.fixture(scope="module")
def engine_parts():
    """The default checkpoint's motion model and feature configuration (what the engines
    export), without loading Whisper."""
    from types import SimpleNamespace

    from models.audio import FeatureConfig
    from models.generator import load_motion_model
    from stream.engine import DEFAULT_CHECKPOINT

    motion = load_motion_model(DEFAULT_CHECKPOINT)
    fields = {k: v for k, v in motion.feature_config.items()
              if k in FeatureConfig.__dataclass_fields__}
    return SimpleNamespace(motion=motion, feature_config=FeatureConfig(**fields))


def build(tensorrt, path, profile, fp16):
    onnx_bytes = T.prepare_graph(path, fp16)
    _, network, _ = T.parse(tensorrt, onnx_bytes)
    layers = T.layer_types(network)
    start = time.perf_counter()
    plan = T.build_engine(tensorrt, onnx_bytes, profile, TARGET, optimization_level=LEVEL)
    print(f"{path.name}: {sum(layers.values())} layers, built in "
          f"{time.perf_counter() - start:.0f} s, {len(plan) / 1e6:.1f} MB")
    return layers, plan


def test_audio_encoder_builds_with_fused_attention(tensorrt, engine_parts):
    from export.audio_encoder import cached_audio_encoder

    path = cached_audio_encoder(engine_parts.feature_config, fused_attention=True)
    layers, plan = build(tensorrt, path, T.encoder_profile(), fp16=True)
    # the ONNX Attention nodes became TensorRT's fused attention layer (IAttention), and
    # the build found a dedicated kernel for it (otherwise it refuses: not decomposable)
    assert layers.get("ATTENTION_INPUT") == 4 and layers.get("ATTENTION_OUTPUT") == 4
    assert len(plan) > 1_000_000


def test_motion_sampler_builds_with_fused_attention(tensorrt, engine_parts):
    from export.motion import cached_motion_export
    from stream.engine import DEFAULT_CHECKPOINT

    model = engine_parts.motion
    path = cached_motion_export(model, DEFAULT_CHECKPOINT, fused_attention=True)
    layers, plan = build(tensorrt, path, T.motion_profile(model.config.chunk_frames),
                         fp16=True)
    # two unrolled steps, each with the DiT's attention layers
    assert layers.get("ATTENTION_INPUT", 0) >= 2 * model.steps
    assert len(plan) > 1_000_000


def test_renderer_builds(tensorrt):
    from export.renderer import cached_renderer_export
    from models.avatar import prepare_avatar

    path = cached_renderer_export(prepare_avatar(size=256))
    layers, plan = build(tensorrt, path, T.renderer_profile(), fp16=False)
    assert layers.get("GRID_SAMPLE", 0) >= 1           # GridSample as TensorRT's own layer
    assert len(plan) > 100_000


def test_engine_cache_key_changes_with_graph_gpu_and_version(tensorrt, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    profile = T.encoder_profile()
    base = T.cache_path(b"graph", tensorrt, TARGET, profile, "enc")
    assert T.cache_path(b"graph", tensorrt, TARGET, profile, "enc") == base
    assert T.cache_path(b"graph2", tensorrt, TARGET, profile, "enc") != base
    assert T.cache_path(b"graph", tensorrt, T.Target("sm89", "sm89"), profile, "enc") != base
    assert T.cache_path(b"graph", tensorrt, T.Target("RTX A6000", "sm86"), profile, "enc") != base
    assert T.cache_path(b"graph", tensorrt, TARGET, T.encoder_profile(16), "enc") != base

    class OtherVersion:
        __name__, __version__ = tensorrt.__name__, "0.0.1"

    assert T.cache_path(b"graph", OtherVersion, TARGET, profile, "enc") != base


def test_trt_engine_without_a_gpu_says_what_is_missing():
    import torch

    from stream.engine import EngineError, make_engine

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(EngineError, match="no CUDA GPU"):
        make_engine("trt")
