"""ONNX nodes that name the TensorRT plugins of kernels/trt_plugins.py.

An ONNX export made inside `kernels.dispatch.plugin_export()` emits these where the fused
kernels would run on CUDA. TensorRT's ONNX parser looks an unknown op up in its plugin
registry by op name and the node's "plugin_namespace" attribute; "aot" = 1 asks for the
ahead-of-time (Triton PTX) implementation, so the engine needs no Python at run time.
"""

import torch

NAMESPACE = "talking_head"
ATTENTION = "fused_attention"
WARP_RENDER = "warp_render"


def _plugin_attrs(**attrs) -> dict:
    return {"plugin_namespace": NAMESPACE, "aot": 1, **attrs}


def attention_node(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   causal: bool) -> torch.Tensor:
    """talking_head::fused_attention(q, k, v) [B, H, Lq, D]; causal as an int attribute."""
    return torch.onnx.ops.symbolic(f"{NAMESPACE}::{ATTENTION}", (q, k, v),
                                   _plugin_attrs(causal=int(causal)), dtype=q.dtype,
                                   shape=q.shape, version=1)


def warp_render_node(portrait: torch.Tensor, layers: torch.Tensor, offset: torch.Tensor,
                     params: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """talking_head::warp_render(portrait, layers, offset, params, tables) -> frames [N, S, S, 3]
    uint8 (inputs as kernels/warp_render.py takes them)."""
    n, size = offset.shape[0], portrait.shape[-1]
    return torch.onnx.ops.symbolic(f"{NAMESPACE}::{WARP_RENDER}",
                                   (portrait, layers, offset, params, tables), _plugin_attrs(),
                                   dtype=torch.uint8, shape=(n, size, size, 3), version=1)
