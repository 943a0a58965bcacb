"""torch's two ONNX exporters, and which graphs each writes.

    export_graph(module, args, path, inputs, outputs, axes, fused_attention=False)

TorchScript (`torch.onnx.export(dynamo=False)`, opset 20) traces the module once: 1-7 s for
each of our graphs on 2 cores. Attention comes out as MatMul and Softmax, which onnxruntime's
CPU provider runs as fast as the fused form (the audio encoder 12-13 ms a window either way;
the motion sampler 3.1 against 2.5 ms a chunk, a small share of a frame's 40 ms). Every graph
the onnx engine loads is written this way, so a first start exports in seconds.

dynamo (`dynamo=True`, opset 23) traces symbolically and is 5-10x slower (the motion sampler
15 s against 1.7 s, the renderer 25-40 s against 4 s), and it turns
scaled_dot_product_attention into one ONNX `Attention` node, which TensorRT maps to its fused
attention layer: the graphs TensorRT builds from are written this way (fused_attention=True).

The TorchScript exporter is deprecated upstream; torch is pinned here, and should it fail on a
graph, dynamo writes that graph (logged).
"""

import logging
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TORCHSCRIPT_OPSET, DYNAMO_OPSET = 20, 23


def opset(fused_attention: bool) -> int:
    """The opset of the graphs written with or without fused attention."""
    return DYNAMO_OPSET if fused_attention else TORCHSCRIPT_OPSET


def export_graph(module: torch.nn.Module, args: tuple, path: str | Path, inputs: list[str],
                 outputs: list[str], axes: dict[str, dict[int, tuple[str, int, int]]],
                 fused_attention: bool = False) -> Path:
    """Write `module` called on `args` as ONNX at `path`. inputs / outputs: the graph's names,
    in order; axes: the dynamic axes of inputs and outputs, {name: {axis: (axis name, min,
    max)}} (an axis name shared by several inputs is one dimension)."""
    path = Path(path)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        if not fused_attention:
            try:
                torch.onnx.export(module, args, str(path), dynamo=False,
                                  opset_version=TORCHSCRIPT_OPSET, input_names=inputs,
                                  output_names=outputs,
                                  dynamic_axes={name: {axis: dim[0] for axis, dim in
                                                       given.items()}
                                                for name, given in axes.items()})
                return path
            except Exception as e:                       # deprecated upstream: dynamo then
                log.warning("the TorchScript exporter failed on %s (%s: %s); exporting with "
                            "dynamo", path.name, e.__class__.__name__, e)
        dims = {name: torch.export.Dim(name, min=low, max=high)
                for given in axes.values() for name, low, high in given.values()}
        shapes = tuple({axis: dims[dim[0]] for axis, dim in axes[name].items()}
                       if name in axes else None for name in inputs)
        program = torch.onnx.export(module, args, input_names=inputs, output_names=outputs,
                                    dynamic_shapes=shapes, opset_version=DYNAMO_OPSET,
                                    dynamo=True, verbose=False,
                                    optimize=fused_attention)   # (a fallback: the quick way)
    program.save(str(path))
    return path
