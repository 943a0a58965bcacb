"""The torch engine's networks on a GPU, replayed as CUDA graphs.

On a GPU the networks' own arithmetic is small (the 512 px renderer draws a frame in well
under a millisecond of GPU time), and what limits the sessions one GPU carries is the host:
torch launches the renderer's few thousand small kernels one by one from Python, ~15 ms
of CPU time per call whatever the batch, under the GIL that every session's threads share
(benchmarks/RESULTS.md, "The torch engine on a GPU"). A CUDA graph records those launches
once and replays them with one call.

    CudaGraphs      fn(*inputs) captured per (key, input shapes, batch bucket); a call pads
                    its batch to the next bucket (repeating its last row: every row of these
                    networks is computed alone), copies its inputs into the graph's own,
                    replays, and returns the first rows of the output on the CPU. A batch
                    above the largest bucket, or a capture that fails, runs eagerly (once
                    logged).

All GPU work of an engine goes through one lock (`gpu`): a capture must not see another
thread's launches, and a replay's static inputs and outputs belong to one call at a time.
The GPU itself runs one kernel stream at a time either way.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

import torch

log = logging.getLogger("server")

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MAX_GRAPHS = 48               # captured graphs kept (the oldest dropped), each its own memory


class _Graph:
    def __init__(self, fn: Callable, inputs: list[torch.Tensor]):
        self.fn = fn                           # kept: the graph reads what fn closes over
        self.inputs = inputs                   # static: the graph reads these
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):                 # compile kernels, cache constants, warm cuBLAS
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.output = fn(*inputs)          # static: the graph writes here

    def __call__(self, inputs: tuple[torch.Tensor, ...], n: int) -> torch.Tensor:
        for static, x in zip(self.inputs, inputs, strict=True):
            static[:n].copy_(x)                                     # from the host
            static[n:].copy_(static[n - 1:n].expand_as(static[n:]))  # padding rows
        self.graph.replay()
        return self.output[:n].cpu()


class CudaGraphs:
    """One network's graphs (see the module doc)."""

    def __init__(self, name: str, device: torch.device, gpu: threading.Lock,
                 enabled: bool = True):
        self.name, self.device, self.gpu, self.enabled = name, device, gpu, enabled
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._failed: set[tuple] = set()
        self.replays = self.eager = 0

    def __call__(self, key, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """fn(*inputs on the device) -> the output on the CPU. inputs: CPU tensors whose first
        axis is the batch; key: what else fn depends on (the same key, the same fn)."""
        n = inputs[0].shape[0]
        bucket = next((b for b in BUCKETS if b >= n), None)
        shape = (key, bucket, *(tuple(x.shape[1:]) for x in inputs))
        with self.gpu:
            if not self.enabled or bucket is None or shape in self._failed:
                return self._eager(fn, inputs)
            graph = self._graphs.pop(shape, None)
            if graph is None:
                graph = self._capture(shape, fn, inputs, bucket)
                if graph is None:
                    return self._eager(fn, inputs)
            self._graphs[shape] = graph                         # newest last
            while len(self._graphs) > MAX_GRAPHS:
                self._graphs.popitem(last=False)
            self.replays += 1
            return graph(inputs, n)

    def _capture(self, shape: tuple, fn, inputs, bucket: int) -> _Graph | None:
        static = [torch.zeros((bucket, *x.shape[1:]), dtype=x.dtype, device=self.device)
                  for x in inputs]
        try:
            return _Graph(fn, static)
        except Exception as e:              # noqa: BLE001 - any capture failure: run eagerly
            torch.cuda.synchronize()
            self._failed.add(shape)
            log.warning("%s: CUDA graph capture failed (%s); this shape runs eagerly",
                        self.name, str(e).splitlines()[0][:200])
            return None

    def _eager(self, fn, inputs) -> torch.Tensor:
        self.eager += 1
        with torch.inference_mode():
            return fn(*(x.to(self.device) for x in inputs)).cpu()
