"""When model code runs the Triton kernels instead of plain torch.

    use_triton(x)   x is on CUDA, triton imports, the kernels are switched on, and nothing is
                    exporting or compiling the model (ONNX export always sees plain torch)
    attention()     scaled dot-product attention through the Triton kernel or torch's SDPA

Nothing here imports triton until a CUDA tensor asks for it, so the runtime does not need it.
`TALKING_HEAD_TRITON=0` or `with triton_kernels(False):` switches the kernels off (the
benchmarks compare both ways). `with plugin_export():` makes an ONNX export emit the
TensorRT plugin nodes of kernels/plugin_nodes.py where the kernels would run.
"""

import importlib.util
import os
from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F

_switch = {"triton": os.environ.get("TALKING_HEAD_TRITON", "1") != "0", "plugins": False}


@cache
def triton_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(x: torch.Tensor) -> bool:
    return (_switch["triton"] and x.is_cuda and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling() and triton_available())


def exporting_plugins() -> bool:
    return _switch["plugins"] and torch.onnx.is_in_onnx_export()


def fused(x: torch.Tensor) -> bool:
    """Whether a fused kernel (or its plugin node, in an export) replaces plain torch here."""
    return use_triton(x) or exporting_plugins()


@contextmanager
def triton_kernels(enabled: bool):
    """Switch the Triton kernels on or off inside the block."""
    before = _switch["triton"]
    _switch["triton"] = enabled
    try:
        yield
    finally:
        _switch["triton"] = before


@contextmanager
def plugin_export():
    """Inside the block, an ONNX export emits TensorRT plugin nodes for the fused kernels."""
    before = _switch["plugins"]
    _switch["plugins"] = True
    try:
        yield
    finally:
        _switch["plugins"] = before


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q [B, H, Lq, D], k, v [B, H, Lk, D] -> [B, H, Lq, D]."""
    if exporting_plugins():
        from kernels.plugin_nodes import attention_node

        return attention_node(q, k, v, causal)
    if use_triton(q):
        from kernels.attention import attention as fused_attention

        return fused_attention(q, k, v, causal=causal)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
