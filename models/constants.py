"""Small constant tensors the renderer meets per call (index lists, colour factors, tables)
on the device of the data they meet.

On the CPU a fresh tensor each call, as `torch.tensor(...)` or `x[:, [i, j]]` make (and as
the ONNX export records them). On a CUDA device one copy per device, made on first use and
kept: a CUDA graph cannot copy from the host while it is being captured, so a renderer that
is replayed as a graph (stream/cuda_graphs.py) must make no host tensor per call
(tests/test_render.py checks that it makes none).
"""

from collections.abc import Callable, Sequence
from functools import cache

import torch


@cache
def _on_device(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


@cache
def _table_on_device(make: Callable[[], torch.Tensor], dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    return make().to(dtype=dtype, device=device)


def constant(values: Sequence[float], like: torch.Tensor,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """torch.tensor(values) in like's dtype (or dtype) on like's device."""
    dtype = dtype or like.dtype
    if like.device.type == "cpu":
        return torch.tensor(values, dtype=dtype)
    return _on_device(tuple(values), dtype, like.device)


def take(x: torch.Tensor, indices: Sequence[int], dim: int = 1) -> torch.Tensor:
    """x's entries at indices along dim: x[:, list(indices)] for dim 1."""
    if x.device.type == "cpu":
        return x[(slice(None),) * dim + (list(indices),)]
    return x.index_select(dim, constant(indices, x, torch.int64))


def table(make: Callable[[], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """make() (a constant table computed on the CPU) in like's dtype on like's device."""
    if like.device.type == "cpu":
        return make().to(like.dtype)
    return _table_on_device(make, like.dtype, like.device)
