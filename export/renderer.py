"""The renderer as ONNX (one graph per working size, the avatar's tensors as inputs) and its
onnxruntime runner. The graph itself is written by models.render.export_onnx; here it is
cached by working size (and frame size: a close-up, an AvatarWindow) and renderer source
hash, and run. onnxruntime's CPU provider runs the graph rewritten by export.ort_cpu
(planar layout, GridSample as gathers): as exported, it is about 3x slower than torch on a
CPU; rewritten, it is not slower.
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
    """Where cached_cpu_renderer_export keeps the CPU graph of this working size."""
    source = renderer_export_path(size, frame_size)
    rewrite = hashlib.sha256(Path(__file__).with_name("ort_cpu.py").read_bytes()).hexdigest()
    return source.with_name(f"{source.stem}-cpu{rewrite[:8]}.onnx")


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
    """The renderer graph, constants folded, rewritten for onnxruntime's CPU provider
    (export.ort_cpu), its shapes measured on the avatar's own tensors."""
    import onnx

    from export.ort_cpu import fold_constants, rewrite_for_cpu, shapes_by_example
    from models import motion_space as ms

    def feeds(n: int) -> dict[str, np.ndarray]:
        return {**{name: t.numpy() for name, t in avatar_inputs(avatar).items()},
                "motion": ms.neutral(n)}

    path = cpu_renderer_path(avatar.size, avatar.frame_size)
    if not path.is_file():
        source = cached_renderer_export(avatar)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
        onnx.save(rewrite_for_cpu(shapes_by_example(fold_constants(source), feeds)), str(tmp))
        tmp.replace(path)
        drop_older_graphs(path, f"{source.stem}-cpu")
    return path


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


class OnnxRenderer:
    """avatar + motion [N, D] -> frames [N, S, S, 3] uint8 with onnxruntime."""

    def __init__(self, path: str | Path, threads: int = 1, providers: list[str] | None = None):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3          # errors only: not "Removing initializer ..."
        self.session = ort.InferenceSession(str(path), sess_options=opts,
                                            providers=providers or ["CPUExecutionProvider"],
                                            disabled_optimizers=KEEP_LAYOUT)
        self.feeds = AvatarFeeds(lambda avatar: {
            name: t.numpy() for name, t in avatar_inputs(avatar).items()})

    def __call__(self, avatar: Avatar, motion: np.ndarray) -> np.ndarray:
        feed = dict(self.feeds(avatar), motion=np.ascontiguousarray(motion, np.float32))
        return self.session.run(["frames"], feed)[0]
