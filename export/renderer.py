"""The renderer as ONNX (one graph per working size, the avatar's tensors as inputs) and its
onnxruntime runner. The graph itself is written by models.render.export_onnx; here it is
cached by working size (and frame size: a close-up, an AvatarWindow) and renderer source
hash. TensorRT and onnxruntime's CUDA provider take that graph whole. onnxruntime's CPU
provider runs the renderer in three steps instead (models.render.export_onnx_split): a graph
from the motion to each frame's geometry, torch's composite of the whole frames (one fused
grid_sample), and a graph of the eyes' and the mouth's windows, which torch paints over
them; both graphs rewritten by export.ort_cpu (planar layout, GridSample as gathers).
onnxruntime has no fused bilinear lookup on the CPU: as gathers and lerps the whole frames'
lookup took half of a frame's render (benchmarks/RESULTS.md, "The whole frames' lookup in
torch").
"""

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.avatar import Avatar


def _renderer_source_hash() -> str:
    """Hash of the models/ sources: a changed renderer gets a new graph."""
    import models

    h = hashlib.sha256()
    for path in sorted(Path(models.__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def renderer_export_path(size: int, frame_size: int | None = None) -> Path:
    """Where cached_renderer_export keeps the graph of this working size (and, for windows
    of larger frames, frame size: Avatar.frame_size)."""
    from models.whisper_weights import cache_dir

    shape = str(size) if frame_size in (None, size) else f"{size}in{frame_size}"
    return cache_dir() / "onnx" / f"renderer-{shape}-{_renderer_source_hash()}-raw.onnx"


def cpu_renderer_path(size: int, frame_size: int | None = None) -> Path:
    """Where cached_cpu_renderer_export keeps the CPU renderer's geometry graph of this
    working size; its overlay graph is beside it (overlay_graph_path), written first, so
    this file's presence means both are there."""
    source = renderer_export_path(size, frame_size)
    rewrite = hashlib.sha256()                  # how the graphs are split and rewritten
    for name in ("ort_cpu.py", "renderer.py"):
        rewrite.update(Path(__file__).with_name(name).read_bytes())
    return source.with_name(f"{source.stem}-cpu{rewrite.hexdigest()[:8]}.onnx")


def overlay_graph_path(geometry: Path) -> Path:
    """The CPU renderer's overlay graph beside its geometry graph (cpu_renderer_path)."""
    return geometry.with_name(f"{geometry.stem}-overlays.onnx")


def drop_older_graphs(path: Path, kin: str) -> None:
    """Delete the cached graphs named `kin`* other than `path` and its own CPU forms: what an
    older renderer source (or CPU rewrite) left for the same shape, so an upgrade does not
    leave ~10 MB behind per size each time. A process still running an older graph holds it
    in memory, not on disk."""
    for old in path.parent.glob(f"{kin}*.onnx"):
        if not old.name.startswith(path.stem):
            old.unlink(missing_ok=True)


def cached_renderer_export(avatar: Avatar) -> Path:
    from models.render import export_onnx

    path = renderer_export_path(avatar.size, avatar.frame_size)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
        export_onnx(avatar, tmp)
        tmp.replace(path)
        shape = path.name.split("-")[1]                   # renderer-{shape}-{source}-raw
        drop_older_graphs(path, f"renderer-{shape}-")
    return path


def avatar_inputs(avatar: Avatar) -> dict:
    """The renderer graph's inputs from the avatar (every input but the motion), as torch
    tensors by input name."""
    from models.render import INPUT_NAMES

    return dict(zip(INPUT_NAMES[:-1], avatar.tensors(), strict=True))


def cached_cpu_renderer_export(avatar: Avatar) -> Path:
    """The CPU renderer's two graphs for the avatar's working size and frame size, from the
    cache or written there (write_cpu_renderer). Returns the geometry graph's path
    (cpu_renderer_path)."""
    path = cpu_renderer_path(avatar.size, avatar.frame_size)
    if not path.is_file():
        write_cpu_renderer(avatar, path)
        drop_older_graphs(path, f"{renderer_export_path(avatar.size, avatar.frame_size).stem}-cpu")
    return path


def write_cpu_renderer(avatar: Avatar, path: Path) -> None:
    """Write the CPU renderer's two graphs (models.render.export_onnx_split), constants
    folded, rewritten for onnxruntime's CPU provider (export.ort_cpu), their shapes measured
    on the avatar's own tensors: the geometry graph at `path`, the overlay graph beside it
    (overlay_graph_path) and first, each written whole or not at all."""
    import tempfile

    import onnx
    import torch

    from models import motion_space as ms
    from models.render import GEOMETRY_NAMES, export_onnx_split, frame_geometry

    fields = avatar_inputs(avatar)

    def geometry_feeds(n: int) -> dict[str, np.ndarray]:
        return {**{name: t.numpy() for name, t in fields.items()}, "motion": ms.neutral(n)}

    def overlay_feeds(n: int) -> dict[str, np.ndarray]:
        with torch.no_grad():
            geometry = frame_geometry(*fields.values(), torch.from_numpy(ms.neutral(n)))
        return ({name: t.numpy() for name, t in fields.items()}
                | {name: t.numpy() for name, t in zip(GEOMETRY_NAMES, geometry, strict=True)})

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        raw = Path(folder) / "geometry.onnx", Path(folder) / "overlays.onnx"
        export_onnx_split(avatar, *raw)
        written = []
        for source, feeds, final in ((raw[1], overlay_feeds, overlay_graph_path(path)),
                                     (raw[0], geometry_feeds, path)):
            onnx.save(for_cpu(source, feeds), str(Path(folder) / final.name))
            written.append((Path(folder) / final.name, final))
        for done, final in written:                         # the overlays first: see above
            done.replace(final)


def for_cpu(source: Path, feeds):
    """The graph at `source` folded, its shapes measured with feeds(n) (values by input name;
    those the graph does not take are left out) and rewritten for the CPU (export.ort_cpu)."""
    from export.ort_cpu import fold_constants, rewrite_for_cpu, shapes_by_example

    model = fold_constants(source)
    inputs = {value.name for value in model.graph.input}
    return rewrite_for_cpu(shapes_by_example(model, lambda n: {
        name: value for name, value in feeds(n).items() if name in inputs}))


# onnxruntime's transpose optimizers would push the planar layout's Transposes back through
# the element-wise ops, undoing export.ort_cpu's rewrite.
KEEP_LAYOUT = ["TransposeOptimizer", "TransposeOptimizer_CPUExecutionProvider"]


class AvatarFeeds:
    """An avatar's tensors as a renderer's inputs (convert: avatar -> {input name: array}),
    converted once per avatar and kept for the `keep` newest avatars.

    Sessions of a server share one renderer per working size, each calling it from its own
    render thread with its own avatar. Each call gets the feed of the avatar it names: a
    single cached slot, swapped by one thread while another was between checking and reading
    it, once rendered one session's motion on another session's avatar (or a broken one)."""

    def __init__(self, convert, keep: int = 4):
        self.convert, self.keep = convert, keep
        self._feeds: dict[int, tuple[Avatar, dict]] = {}   # by id(avatar), newest last;
        self._lock = threading.Lock()                      # the avatar held: ids come back

    def __call__(self, avatar: Avatar) -> dict:
        with self._lock:
            held = self._feeds.pop(id(avatar), None)
            if held is None or held[0] is not avatar:
                held = (avatar, self.convert(avatar))
            self._feeds[id(avatar)] = held
            while len(self._feeds) > self.keep:
                self._feeds.pop(next(iter(self._feeds)))
            return held[1]


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of handing it back to the OS at once,
    in few arenas. OnnxRenderer's torch composite allocates MBs of whole-frame tensors every
    call; with glibc's defaults each is mapped and unmapped again, every frame faults its
    pages in anew (a 2-frame composite at 512 px: 17 ms against 9), and on a loaded machine a
    microphone session's sound came back cut until this was set (the unmapping takes the
    process's memory-map lock, which the other threads' page faults wait for: inferred, not
    traced). Blocks up to 32 MB come from the heap, and up to 1 GB of free heap is kept.
    Arenas: what a thread's arena keeps at its top, malloc_trim does not give back, and each
    session renders in a thread of its own; with glibc's 8 arenas a core, a server kept a
    composite's working set in each of up to 16 arenas on 2 cores. So at most twice as many
    arenas as cores (only as many threads as cores run at once; a thread finding its arena
    taken uses another). benchmarks/RESULTS.md, "The whole frames' lookup in torch" and
    "Arenas". Process-wide; a no-op without glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8       # malloc.h
    mallopt(m_mmap_threshold, 32 << 20)                  # glibc's largest allowed
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_arena_max, 2 * len(os.sched_getaffinity(0)))


class OnnxRenderer:
    """avatar + motion [N, D] -> frames [N, S, S, 3] uint8 with onnxruntime: the CPU
    renderer's geometry graph, torch's composite of the whole frames, its overlay graph's
    windows painted over them by torch (cached_cpu_renderer_export; path: the geometry
    graph's)."""

    def __init__(self, path: str | Path, threads: int = 1, providers: list[str] | None = None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3          # errors only: not "Removing initializer ..."
        self.geometry, self.overlays = (
            ort.InferenceSession(str(graph), sess_options=opts,
                                 providers=providers or ["CPUExecutionProvider"],
                                 disabled_optimizers=KEEP_LAYOUT)
            for graph in (path, overlay_graph_path(Path(path))))
        self.feeds = AvatarFeeds(lambda avatar: {
            name: t.numpy() for name, t in avatar_inputs(avatar).items()})
        keep_freed_memory()

    def __call__(self, avatar: Avatar, motion: np.ndarray) -> np.ndarray:
        import torch

        from models.render import (
            GEOMETRY_NAMES,
            WINDOW_NAMES,
            composite,
            paint_overlays,
            to_frames,
        )

        fields = self.feeds(avatar) | {"motion": np.ascontiguousarray(motion, np.float32)}
        geometry = dict(zip(GEOMETRY_NAMES, self.geometry.run(
            list(GEOMETRY_NAMES), self._inputs(self.geometry, fields)), strict=True))
        windows = self.overlays.run(list(WINDOW_NAMES), self._inputs(self.overlays,
                                                                     fields | geometry))
        offset = torch.from_numpy(geometry["offset"])
        with torch.no_grad():
            frame = composite(*(torch.from_numpy(fields[name])
                                for name in ("image", "plate", "matte")), offset)  # [3, N*S*S]
            paint_overlays(frame, *map(torch.from_numpy, windows))
            return to_frames(frame, len(motion), fields["image"].shape[-1]).numpy()

    @staticmethod
    def _inputs(session, values: dict) -> dict:
        """The values a session takes (the exporter leaves out inputs a graph never reads)."""
        return {value.name: values[value.name] for value in session.get_inputs()}
