"""TensorRT engines from the exported ONNX graphs: build, cache on disk, run on CUDA streams.

    graph            precision   inputs (batch axis first)                       profile
    audio encoder    fp16        mel [B, 80, 2n]                                  B 1..MAX_WINDOWS
    motion sampler   fp16        noise [B, n, D], carry, carry_audio, audio,     B 1..MAX_SESSIONS,
                                 style (B sessions, n frames)                    n 1..chunk
    renderer         fp32        the avatar's tensors, motion [N, D]              N 1..MAX_FRAMES

fp16 comes from the graph itself (converted with keep_io_types, so inputs and outputs stay
float32): networks are built strongly typed, which TensorRT 11 and TensorRT-RTX require. The
renderer stays fp32: it computes pixel coordinates up to 512, where fp16 has half a pixel of
resolution. Attention is the ONNX `Attention` op (opset 23), which the ONNX parser maps to
TensorRT's fused attention layer (IAttention); in fp16 it has dedicated kernels.

Works with `tensorrt` (TensorRT 10.14+ / 11) and `tensorrt_rtx` (TensorRT-RTX) behind
`load_tensorrt`. TensorRT-RTX builds without a GPU for a named compute capability (the test
suite does so). Engines are cached under the user cache directory, keyed by the ONNX file's
sha256, the TensorRT flavour and version, the GPU (name and compute capability) and the
profile.

    python -m export.onnx --out graphs/                   the ONNX graphs (checked)
    python -m export.trt --onnx graphs/ --out engines/    their engines for the local GPU
    python -m export.trt --onnx graphs/ --out engines/ --target sm89 --flavour tensorrt_rtx
                                                          the same without a GPU
"""

import argparse
import hashlib
import importlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

MIN_TENSORRT = (10, 14)          # first TensorRT whose ONNX parser maps Attention to IAttention
MAX_WINDOWS = 64                 # audio windows per encoder call (a chunk needs 5)
MAX_SESSIONS = 32                # sessions sampled in one motion call
MAX_FRAMES = 32                  # frames per renderer call
FLAVOURS = ("tensorrt", "tensorrt_rtx")


class TensorRTUnavailable(RuntimeError):
    """TensorRT, a GPU, or a usable version of either is missing."""


def load_tensorrt(flavour: str | None = None):
    """The TensorRT Python module: `tensorrt` (10.14+/11) or, failing that, `tensorrt_rtx`.
    flavour (or $TALKING_HEAD_TENSORRT) picks one."""
    flavour = flavour or os.environ.get("TALKING_HEAD_TENSORRT")
    missing = []
    for name in [flavour] if flavour else FLAVOURS:
        if name not in FLAVOURS:
            raise TensorRTUnavailable(f"unknown TensorRT flavour {name!r}; one of {FLAVOURS}")
        try:
            trt = importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e.msg})")
            continue
        if name == "tensorrt":
            version = tuple(int(v) for v in trt.__version__.split(".")[:2])
            if version < MIN_TENSORRT:
                missing.append(f"tensorrt {trt.__version__} (needs 10.14 or later)")
                continue
        return trt
    raise TensorRTUnavailable(
        "TensorRT is not installed: " + "; ".join(missing) + ". Install TensorRT 10.14+ "
        "(pip install tensorrt-cu13) or TensorRT-RTX (pip install tensorrt-rtx-cu13).")


def flavour_of(trt) -> str:
    return f"{trt.__name__}-{trt.__version__}"


# ---------------------------------------------------------------------------------------------
# Graph preparation
# ---------------------------------------------------------------------------------------------

def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and activations in float16, inputs and outputs still float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def sink_uint8_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """TensorRT takes uint8 only at the network's edges; the renderer casts its frames to
    uint8 before the last Transpose/Reshape. Move that Cast to the output, with a Floor
    before it (the values are x + 0.5 >= 0, so Floor is the truncating cast exactly)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    for output in graph.output:
        if output.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
            continue
        chain, node = [], producer.get(output.name)
        while node is not None and node.op_type in ("Transpose", "Reshape", "Identity"):
            chain.append(node)
            node = producer.get(node.input[0])
        if node is None or node.op_type != "Cast" or not chain:
            continue
        cast, source = node, node.input[0]
        consumers = [n for n in graph.node if cast.output[0] in n.input]
        if consumers != [chain[-1]]:
            continue
        floor = onnx.helper.make_node("Floor", [source], [source + "__floor"])
        chain[-1].input[0] = source + "__floor"
        last = chain[0]
        moved = last.output[0] + "__float"
        new_cast = onnx.helper.make_node("Cast", [moved], [last.output[0]],
                                         to=onnx.TensorProto.UINT8)
        last.output[0] = moved
        nodes = [n for n in graph.node if n is not cast]
        nodes.insert(nodes.index(chain[-1]), floor)
        nodes.append(new_cast)
        del graph.node[:]
        graph.node.extend(nodes)
        keep = {v.name for v in graph.value_info} - {cast.output[0]}
        kept = [v for v in graph.value_info if v.name in keep]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return model


def prepare_graph(path: str | Path, fp16: bool) -> bytes:
    """The ONNX bytes TensorRT builds from: constants folded, uint8 only at the output,
    fp16 inside if asked."""
    from export.ort_cpu import fold_constants

    model = sink_uint8_output(fold_constants(path))
    if fp16:
        model = to_fp16(model)
    return model.SerializeToString()


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------

@dataclass
class Profile:
    """Shape ranges of the dynamic axes: name -> (min, opt, max) per input axis that is -1."""
    axes: dict[str, tuple[int, int, int]]       # axis name: batch, frames
    bind: dict[str, tuple[str, ...]]            # input -> axis name for each dynamic axis

    def key(self) -> str:
        return ",".join(f"{k}{v[0]}-{v[1]}-{v[2]}" for k, v in sorted(self.axes.items()))


def encoder_profile(max_windows: int = MAX_WINDOWS) -> Profile:
    return Profile({"batch": (1, 8, max_windows)}, {"mel": ("batch",)})


def motion_profile(chunk_frames: int, max_sessions: int = MAX_SESSIONS) -> Profile:
    frames = (1, chunk_frames, chunk_frames)
    return Profile({"batch": (1, min(4, max_sessions), max_sessions), "frames": frames},
                   {"noise": ("batch", "frames"), "carry": ("batch",),
                    "carry_audio": ("batch",), "audio": ("batch", "frames"),
                    "style": ("batch",)})


def renderer_profile(max_frames: int = MAX_FRAMES) -> Profile:
    return Profile({"frames": (1, min(8, max_frames), max_frames)}, {"motion": ("frames",)})


@dataclass
class Target:
    """The GPU an engine is built for: the local one, or (TensorRT-RTX, no GPU needed) a
    compute capability such as "sm89"."""
    name: str
    capability: str                            # "sm89"

    @classmethod
    def local(cls) -> "Target":
        import torch

        if not torch.cuda.is_available():
            raise TensorRTUnavailable("no CUDA GPU: torch sees none (the trt engine needs one)")
        major, minor = torch.cuda.get_device_capability()
        return cls(torch.cuda.get_device_name(), f"sm{major}{minor}")


_LOGGERS: dict = {}


def _logger(trt):
    """One logger per TensorRT module: TensorRT keeps the first one it is given."""
    if trt.__name__ not in _LOGGERS:
        _LOGGERS[trt.__name__] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[trt.__name__]


def parse(trt, onnx_bytes: bytes):
    """(builder, network, parser) for a strongly typed network from ONNX bytes."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser refused the graph: {errors}")
    return builder, network, parser


def layer_types(network) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(network.num_layers):
        kind = str(network.get_layer(i).type).rsplit(".", 1)[-1]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def build_engine(trt, onnx_bytes: bytes, profile: Profile, target: Target | None = None,
                 workspace_gb: float = 4.0, optimization_level: int | None = None) -> bytes:
    """Serialized engine for one ONNX graph. TensorRT builds for the local GPU; TensorRT-RTX
    builds for target's compute capability, with or without a GPU (target=None: its default
    set of capabilities). optimization_level 0..5 (TensorRT's default 3) trades build time
    for engine speed."""
    builder, network, _ = parse(trt, onnx_bytes)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if optimization_level is not None:
        config.builder_optimization_level = optimization_level
    if target is not None and hasattr(config, "set_compute_capability"):   # TensorRT-RTX
        capability = getattr(trt.ComputeCapability, target.capability.upper(), None)
        if capability is None:
            raise TensorRTUnavailable(
                f"{flavour_of(trt)} cannot build for {target.capability} ({target.name}); "
                "install TensorRT 10.14+ (pip install tensorrt-cu13) for this GPU")
        config.num_compute_capabilities = 1
        config.set_compute_capability(capability, 0)
    shapes = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        if -1 not in dims:
            continue                            # static (the avatar's tensors): no range
        names = iter(profile.bind.get(tensor.name, ()))
        low, opt, high = [], [], []
        for d in dims:
            if d == -1:
                name = next(names, None)
                if name is None:
                    raise ValueError(f"input {tensor.name} {dims}: no range for a dynamic axis")
                lo, op, hi = profile.axes[name]
                low.append(lo), opt.append(op), high.append(hi)
            else:
                low.append(d), opt.append(d), high.append(d)
        shapes.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT could not build an engine from the graph (see its log)")
    return bytes(plan)


def cache_path(onnx_bytes: bytes, trt, target: Target, profile: Profile, stem: str) -> Path:
    from models.whisper_weights import cache_dir

    key = hashlib.sha256(b"|".join([
        hashlib.sha256(onnx_bytes).digest(), flavour_of(trt).encode(), target.name.encode(),
        target.capability.encode(), profile.key().encode()])).hexdigest()[:16]
    return cache_dir() / "trt" / f"{stem}-{target.capability}-{key}.engine"


def cached_engine(trt, onnx_path: str | Path, profile: Profile, fp16: bool,
                  target: Target, stem: str) -> bytes:
    """The engine from the disk cache, built (and stored) on a miss."""
    onnx_bytes = prepare_graph(onnx_path, fp16)
    path = cache_path(onnx_bytes, trt, target, profile, stem)
    if path.is_file():
        return path.read_bytes()
    plan = build_engine(trt, onnx_bytes, profile, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(plan)
    tmp.replace(path)
    return plan


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

class TrtRunner:
    """One engine with one execution context on its own CUDA stream. Buffers are torch CUDA
    tensors; calls are serialised by a lock (sessions share the runner)."""

    def __init__(self, trt, plan: bytes, device: str = "cuda"):
        import torch

        self.trt, self.torch, self.device = trt, torch, torch.device(device)
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not load the engine (built for another GPU or "
                               "TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == mode.OUTPUT]
        self.dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self.lock = threading.Lock()

    def _torch_dtype(self, dtype):
        torch = self.torch
        names = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                 "INT32": torch.int32, "INT64": torch.int64, "UINT8": torch.uint8,
                 "INT8": torch.int8, "BOOL": torch.bool}
        for name, torch_dtype in names.items():
            if getattr(self.trt.DataType, name, None) == dtype:
                return torch_dtype
        raise RuntimeError(f"engine tensor of type {dtype}: no torch buffer type for it")

    def __call__(self, feeds: dict) -> dict:
        """feeds: input name -> array or tensor (moved to the GPU). Returns output name ->
        CUDA tensor, complete (the stream is synchronised)."""
        torch = self.torch
        with self.lock, torch.cuda.stream(self.stream):
            keep = []
            for name in self.inputs:
                value = torch.as_tensor(feeds[name]).to(self.device, self.dtypes[name],
                                                        non_blocking=True).contiguous()
                keep.append(value)
                self.context.set_input_shape(name, tuple(value.shape))
                self.context.set_tensor_address(name, value.data_ptr())
            results = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, out.data_ptr())
                results[name] = out
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            self.stream.synchronize()
        return results


class TrtEncoder:
    """AudioFeatureExtractor backend: mel [B, 80, 2n] -> features [B, n, 384] (numpy)."""

    def __init__(self, runner: TrtRunner):
        self.runner = runner

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(mel), MAX_WINDOWS):
            out.append(self.runner({"mel": mel[i:i + MAX_WINDOWS]})["features"].float().cpu())
        return np.concatenate([o.numpy() for o in out])


class TrtMotionSampler:
    """MotionGenerator's sampler: the unrolled student on TensorRT (B sessions at once)."""

    def __init__(self, runner: TrtRunner):
        self.runner = runner

    def __call__(self, noise, carry, carry_audio, audio, style) -> np.ndarray:
        feeds = {"noise": noise, "carry": carry, "carry_audio": carry_audio, "audio": audio,
                 "style": style}
        return self.runner(feeds)["motion"].float().cpu().numpy()


class TrtRenderer:
    """avatar + motion [N, D] -> frames [N, S, S, 3] uint8; the avatar's tensors are uploaded
    once per avatar and stay on the GPU."""

    def __init__(self, runner: TrtRunner):
        from export.renderer import AvatarFeeds, avatar_inputs

        self.runner = runner
        self.feeds = AvatarFeeds(lambda avatar: {
            name: t.to(runner.device) for name, t in avatar_inputs(avatar).items()})

    def __call__(self, avatar, motion: np.ndarray) -> np.ndarray:
        on_gpu = self.feeds(avatar)
        frames = []
        for i in range(0, len(motion), MAX_FRAMES):
            feed = dict(on_gpu, motion=np.ascontiguousarray(motion[i:i + MAX_FRAMES],
                                                                np.float32))
            frames.append(self.runner(feed)["frames"].cpu().numpy())
        return np.concatenate(frames)


# ---------------------------------------------------------------------------------------------
# Command line: build the three engines (for the local GPU, or a compute capability with
# TensorRT-RTX)
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.trt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="folder written by python -m export.onnx")
    parser.add_argument("--out", required=True, help="folder for the engines")
    parser.add_argument("--target", help="compute capability, e.g. sm89 (TensorRT-RTX builds "
                        "without a GPU); default: the local GPU")
    parser.add_argument("--flavour", choices=FLAVOURS)
    args = parser.parse_args(argv)
    try:
        trt = load_tensorrt(args.flavour)
        if args.target and not hasattr(trt.IBuilderConfig, "set_compute_capability"):
            raise TensorRTUnavailable(f"--target needs TensorRT-RTX; {flavour_of(trt)} "
                                      "builds for the local GPU only")
        target = Target(args.target, args.target) if args.target else Target.local()
    except TensorRTUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import json

    folder, out = Path(args.onnx), Path(args.out)
    manifest = json.loads((folder / "manifest.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    profiles = {"audio_encoder": encoder_profile(),
                "motion": motion_profile(manifest["chunk_frames"]),
                "renderer": renderer_profile()}
    for stem, profile in profiles.items():
        fp16 = stem != "renderer"
        onnx_bytes = prepare_graph(folder / manifest["files"][stem], fp16)
        builder, network, _ = parse(trt, onnx_bytes)
        attention = layer_types(network).get("ATTENTION_INPUT", 0)
        plan = build_engine(trt, onnx_bytes, profile, target)
        (out / f"{stem}.engine").write_bytes(plan)
        print(f"{stem}: {'fp16' if fp16 else 'fp32'}, {attention} fused attention layers, "
              f"{len(plan) / 1e6:.1f} MB engine for {target.capability} ({flavour_of(trt)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
