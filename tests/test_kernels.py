"""The Triton kernels against their torch references, on CPU through Triton's interpreter
(TRITON_INTERPRET=1: the kernels run as numpy, block by block), and their ahead-of-time
compilation for TensorRT (PTX for an sm_90 GPU; ptxas ships with triton, no GPU needed).

benchmarks/gpu_check.py repeats the comparisons compiled, on a GPU, and times them.
"""

import os

_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"        # before triton is imported anywhere

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

triton = pytest.importorskip("triton")

from kernels.attention_reference import attention_reference  # noqa: E402
from models import motion_space as ms  # noqa: E402

# relative error (Frobenius norm) allowed per dtype: fp32 tight, fp16/bf16 at their epsilon
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    """Triton 3.6's interpreter turns loop bounds into ints with int(array of shape [1]),
    which NumPy >= 2.4 refuses (only 0-d arrays convert). Read the one element instead;
    the kernels themselves are unchanged."""
    from triton.runtime import interpreter as interp

    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched
    from kernels import attention, warp_render

    for kernel in (attention.attention_kernel, warp_render.warp_render_kernel):
        if not isinstance(kernel, interp.InterpretedFunction):
            pytest.skip("triton was imported before TRITON_INTERPRET=1 was set: run this file "
                        "on its own")
    yield
    interp._patch_lang_tensor = original
    if _INTERPRET_BEFORE is None:               # the kernels stay interpreted
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _INTERPRET_BEFORE


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


# (batch, heads, Lq, Lk, head dim, causal): the motion DiT (K + n = 12 tokens, width 192 over
# 4 heads), Whisper's encoder window (50 frames, 6 heads of 64), a causal case spanning
# several tiles, and ragged lengths that fill no tile
SHAPES = [(2, 4, 12, 12, 48, False), (1, 6, 50, 50, 64, False), (1, 2, 70, 70, 32, True),
          (2, 1, 5, 9, 16, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=["dit", "whisper", "causal", "ragged"])
def test_attention_matches_its_reference(shape, dtype):
    from kernels.attention import attention

    b, h, len_q, len_k, d, causal = shape
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for n in (len_q, len_k, len_k))
    out = attention(q, k, v, causal=causal)
    ref = attention_reference(q, k, v, causal=causal)
    assert out.shape == ref.shape and out.dtype == dtype
    assert relative_error(out, ref) < TOLERANCE[dtype]


def test_attention_reference_is_what_the_models_run():
    q, k, v = torch.randn(3, 2, 4, 11, 48).unbind(0)
    for causal in (False, True):
        sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert relative_error(attention_reference(q, k, v, causal), sdpa) < 1e-6


def test_attention_reads_strided_heads():
    """The DiT's q, k, v are strided views of one fused projection [B, n, 3, heads, d]."""
    from kernels.attention import attention

    qkv = torch.randn(2, 12, 3, 4, 48)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)                   # each [B, heads, n, d], strided
    assert not q.is_contiguous()
    out = attention(q, k, v)
    assert relative_error(out, attention_reference(q, k, v)) < TOLERANCE[torch.float32]


@pytest.fixture(scope="module")
def avatars():
    from models.avatar import DEFAULT_AVATAR, prepare_avatar

    return {size: prepare_avatar(DEFAULT_AVATAR, size) for size in (256, 512)}


def motions(frames: int) -> torch.Tensor:
    """Neutral, jaw wide open with a smile, both eyes shut with gaze, then random motion over
    the documented ranges (head turns, brows, everything at once)."""
    rng = np.random.default_rng(7)
    low, high = np.array(ms.LOW), np.array(ms.HIGH)
    motion = (low + (high - low) * rng.random((frames, ms.D))).astype(np.float32)
    motion[0] = 0.0
    motion[1] = 0.0
    motion[1, ms.index("jaw_open")] = high[ms.index("jaw_open")]
    motion[1, ms.index("mouth_wide")] = high[ms.index("mouth_wide")]
    motion[2, :] = 0.0
    motion[2, ms.index("blink_left")] = motion[2, ms.index("blink_right")] = 1.0
    motion[2, ms.index("gaze_x")] = high[ms.index("gaze_x")]
    return torch.from_numpy(motion)


def per_pixel(avatar, motion, **kernel_options):
    """The reference (render.compose, frames [N, S, S, 3] float) and the fused kernel."""
    from models.render import compose, frame_layers
    from models.render_fused import render_fused

    textures = avatar.image, avatar.smooth_image, avatar.plate, avatar.matte, avatar.own_mouth
    n, size = motion.shape[0], avatar.size
    with torch.no_grad():
        offset, overlays = frame_layers(*avatar.tensors(), motion)
        ref = compose(*textures, offset, *overlays).t().reshape(n, size, size, 3)
        out = render_fused(*textures, offset, *overlays, **kernel_options)
    return ref, out


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
def test_warp_render_matches_the_renderer(avatars):
    """fp32 all the way: the fused pass gives the renderer's colours (0..255) to well under
    a grey level, eyes, mouth and border included."""
    ref, out = per_pixel(avatars[256], motions(4), out_float=True, block=(64, 256))
    assert out.shape == ref.shape and out.dtype == torch.float32
    diff = (out - ref).abs()
    assert float(diff.max()) < 0.05
    assert float(diff.mean()) < 1e-3
    assert relative_error(out, ref) < 1e-5


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
def test_warp_render_frames_are_the_renderers_frames(avatars):
    """uint8 frames at the engine's working size, smaller tiles (windows cut across tiles):
    every pixel within one level of render_tensors, nearly all equal."""
    from models.render import render_tensors

    avatar = avatars[512]
    motion = motions(4)[3:]                                 # random: head, mouth, eyes at once
    motion[:, ms.index("jaw_open")] = 0.8 * float(ms.HIGH[ms.index("jaw_open")])
    motion[:, ms.index("blink_left")] = 0.6
    _, out = per_pixel(avatar, motion, block=(32, 256))
    with torch.no_grad():
        ref = render_tensors(*avatar.tensors(), motion)
    assert out.dtype == torch.uint8 and out.shape == ref.shape
    diff = (out.int() - ref.int()).abs()
    assert int(diff.max()) <= 1
    assert float((diff > 0).float().mean()) < 1e-3


AOT_CHECK = """
from triton.backends.compiler import GPUTarget
from kernels.trt_plugins import compile_attention
kernel = compile_attention("float16", 12, 12, 48, False, target=GPUTarget("cuda", 90, 32))
entry = kernel.ptx[kernel.ptx.index(f".entry {kernel.name}("):]
print(entry[:entry.index(")")].count(".param"), kernel.threads,
      f".reqntid {kernel.threads}" in kernel.ptx)
"""


def test_aot_compile_for_tensorrt():
    """TensorRT launches an AOT kernel with (inputs, int32 scalars, outputs): the compiled
    entry has exactly those parameters once Triton's unused scratch pointers are dropped.
    (Compiled in a fresh process: this one's kernels are interpreted.)"""
    import subprocess
    import sys
    from pathlib import Path

    from kernels.trt_plugins import drop_unused_params

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", AOT_CHECK], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    params, threads, required = done.stdout.split()
    assert int(params) == 3 + 15 + 1                         # q, k, v; strides, lengths; out
    assert int(threads) == 128 and required == "True"

    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n{\n"
           "\tld.param.u64 %rd1, [k_param_1];\n}\n")
    with pytest.raises(ValueError, match="reads its extra parameter"):
        drop_unused_params(ptx, "k", 1)
    assert "k_param_1" not in drop_unused_params(ptx.replace("[k_param_1]", "[k_param_0]"),
                                                 "k", 1)


def test_plugin_export_names_the_tensorrt_plugin(tmp_path):
    """Inside plugin_export(), an ONNX export of attention emits the plugin node TensorRT's
    parser maps to talking_head::fused_attention; outside it, plain torch (SDPA)."""
    import onnx

    from kernels import dispatch

    class Attend(torch.nn.Module):
        def forward(self, q, k, v):
            return dispatch.attention(q, k, v)

    q = torch.randn(1, 4, 12, 48)
    with dispatch.plugin_export():
        program = torch.onnx.export(Attend(), (q, q, q), dynamo=True, opset_version=20,
                                    optimize=False, verbose=False)
    nodes = [n for n in program.model_proto.graph.node if n.op_type == "fused_attention"]
    assert len(nodes) == 1 and nodes[0].domain == "talking_head"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["plugin_namespace"] == b"talking_head" and attrs["aot"] == 1
    assert attrs["causal"] == 0
    assert torch.equal(Attend()(q, q, q), F.scaled_dot_product_attention(q, q, q))
