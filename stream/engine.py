"""Engines: how the three networks execute. The streaming code is the same for all.

An Engine gives a session
    features     an AudioFeatureExtractor (Whisper window encoder on this engine)
    generator()  a MotionGenerator for one stream (the motion sampler on this engine)
    render()     avatar + motion [N, D] -> frames [N, S, S, 3] uint8

    torch   eager PyTorch (CPU here; CUDA where present)
    onnx    onnxruntime: the encoder, the unrolled student sampler and the renderer exported
            to ONNX once and cached in the user cache directory
    trt     TensorRT engines built from the same ONNX graphs (export.trt), cached on disk,
            run on CUDA streams; needs TensorRT 10.14+ or TensorRT-RTX and a CUDA GPU
"""

import itertools
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.audio import AudioFeatureExtractor, FeatureConfig
from models.avatar import Avatar
from models.generator import MotionGenerator, load_motion_model

log = logging.getLogger("server")

ENGINES = ("torch", "onnx", "trt")
# the bundled checkpoint, unless TALKING_HEAD_CHECKPOINT names another
DEFAULT_CHECKPOINT = Path(os.environ.get(
    "TALKING_HEAD_CHECKPOINT",
    Path(__file__).resolve().parent.parent / "assets" / "motion_student.pt"))


class EngineError(RuntimeError):
    pass


class Engine:
    """Shared by every session of a process: one loaded model, per-session state elsewhere.
    Each engine below adds _draw(avatar, motion [N, D]) -> frames [N, S, S, 3] uint8, its
    renderer; render() is that with the photo's hand in front (models.render.hand_in_front)."""

    name = "base"

    def __init__(self, checkpoint: str | Path = DEFAULT_CHECKPOINT):
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise EngineError(f"motion checkpoint {checkpoint} not found (make weights builds it)")
        self.checkpoint = checkpoint
        self.motion = load_motion_model(checkpoint)
        self.feature_config = FeatureConfig.of(self.motion.feature_config)
        self.features = AudioFeatureExtractor(self.feature_config, encoder=self._encoder())
        zeros = np.zeros(self.feature_config.window_samples, np.float32)
        self.silence_feature = self.features.features(zeros)[0]     # [stack, 384]

    def _encoder(self):
        return None                               # the extractor's torch default

    def _sampler(self):
        return None                               # MotionGenerator's torch default

    def generator(self, seed: int = 0, style: dict | None = None) -> MotionGenerator:
        return MotionGenerator(self.motion, self.silence_feature, seed=seed, style=style,
                               sampler=self._sampler())

    def render(self, avatar: Avatar, motion: np.ndarray) -> np.ndarray:
        from models.render import hand_in_front

        return hand_in_front(avatar, self._draw(avatar, motion), motion)

    def draws_windows(self, size: int) -> bool:
        """Whether render() takes an AvatarWindow of a `size` frame now (video avatars draw
        only the window around the mouth: models.video_avatar.mouth_window)."""
        return True


class TorchEngine(Engine):
    """The networks in torch, on the CPU or on a CUDA device. On a GPU the encoder, the motion
    network and the renderer run there (attention and the renderer's per-pixel pass as
    Triton kernels, kernels.dispatch), each replayed as CUDA graphs (stream/cuda_graphs.py);
    only numpy arrays cross: mel windows and features, chunks of motion, uint8 frames."""

    name = "torch"
    AVATARS_ON_DEVICE = 32          # avatars whose tensors stay on the GPU between calls
    GRAPH_AFTER_USES = 3            # an avatar is drawn from a graph from its 3rd call on

    def __init__(self, checkpoint: str | Path = DEFAULT_CHECKPOINT, device: str = "cpu",
                 threads: int = 1, cuda_graphs: bool = True):
        if device != "cpu" and not torch.cuda.is_available():
            raise EngineError(f"device {device!r} asked for, but torch sees no CUDA device")
        self.device = torch.device(device)
        # One intra-op thread: a session's stages already run in parallel threads (features
        # + motion, render), and OpenMP teams oversubscribe badly on a busy 2-core machine.
        torch.set_num_threads(threads)
        self._avatars: dict[int, _AvatarOnDevice] = {}       # by id(avatar), newest last
        self._avatars_lock = threading.Lock()
        self._tokens = itertools.count()
        if self.device.type == "cuda":
            from stream.cuda_graphs import CudaGraphs

            gpu = threading.Lock()
            self.graphs = {name: CudaGraphs(name, self.device, gpu, enabled=cuda_graphs)
                           for name in ("encoder", "motion", "render")}
        super().__init__(checkpoint)
        self.motion.net.to(self.device)

    def _encoder(self):
        if self.device.type == "cpu":
            return None                              # the extractor's torch default
        from models.audio import load_window_encoder

        module = load_window_encoder(FeatureConfig.of(self.motion.feature_config))
        module = module.to(self.device)

        def encode(mel: np.ndarray) -> np.ndarray:   # [B, 80, 2n] -> [B, n, 384]
            return self.graphs["encoder"](None, module, torch.from_numpy(mel)).numpy()

        return encode

    def _sampler(self):
        if self.device.type == "cpu":
            return None                              # MotionGenerator's torch default
        from models.sampler import ChunkCondition

        model = self.motion

        def sample_on_device(noise, carry, carry_audio, audio, style):
            cond = ChunkCondition(carry=carry, carry_audio=carry_audio, audio=audio, style=style)
            return model.sample(cond, noise)

        def sample(noise, carry, carry_audio, audio, style) -> np.ndarray:
            def tensor(a) -> torch.Tensor:
                return torch.from_numpy(np.asarray(a, np.float32))

            norm = model.normalizer                  # applied here, on the host
            x = self.graphs["motion"](None, sample_on_device, tensor(noise),
                                      norm.to_model(tensor(carry)), tensor(carry_audio),
                                      tensor(audio), tensor(style))
            return norm.from_model(x).numpy().astype(np.float32)

        return sample

    def _draw(self, avatar: Avatar, motion: np.ndarray) -> np.ndarray:
        from models.render import render, render_tensors

        motion = torch.from_numpy(np.asarray(motion, np.float32))
        if self.device.type == "cpu":
            with torch.inference_mode():
                return render(avatar, motion, hand=False).numpy()
        on_device = self._on_device(avatar)

        def draw(m: torch.Tensor) -> torch.Tensor:
            return render_tensors(*on_device.tensors, m, frame_size=avatar.frame_size)

        if on_device.uses < self.GRAPH_AFTER_USES:   # e.g. a video avatar's windows: new
            with self.graphs["render"].gpu, torch.inference_mode():     # objects each call
                return draw(motion.to(self.device)).cpu().numpy()
        return self.graphs["render"](on_device.token, draw, motion).numpy()

    def _on_device(self, avatar: Avatar) -> "_AvatarOnDevice":
        """The avatar's tensors on the device, moved once per avatar (a photo's 512 px
        tensors are ~13 MB); the newest AVATARS_ON_DEVICE are kept."""
        with self._avatars_lock:
            entry = self._avatars.pop(id(avatar), None)
            if entry is None or entry.avatar() is not avatar:
                entry = _AvatarOnDevice(weakref.ref(avatar), next(self._tokens),
                                        tuple(t.to(self.device) for t in avatar.tensors()))
            entry.uses += 1
            self._avatars[id(avatar)] = entry
            while len(self._avatars) > self.AVATARS_ON_DEVICE:
                self._avatars.pop(next(iter(self._avatars)))
            return entry


@dataclass
class _AvatarOnDevice:
    avatar: weakref.ref
    token: int                      # names this avatar's render graphs (ids can be reused)
    tensors: tuple
    uses: int = 0


class OnnxEngine(Engine):
    name = "onnx"

    def __init__(self, checkpoint: str | Path = DEFAULT_CHECKPOINT, threads: int = 1):
        # one intra-op thread per network, as the torch engine: a session's stages already
        # run in parallel threads (torch draws the renderer's whole frames: OnnxRenderer)
        self.threads = threads
        torch.set_num_threads(threads)
        self._renderers: dict[tuple[int, int], object] = {}   # by (size, frame size)
        self._renderers_lock = threading.Lock()               # one per size, whoever asks
        super().__init__(checkpoint)
        from export.motion import OnnxMotionSampler, cached_motion_export

        self._motion_path = cached_motion_export(self.motion, checkpoint)
        self._motion_runner = OnnxMotionSampler(self._motion_path, threads=1)
        # graphs exported when first needed (export.warm.WINDOWS, CLOSE_UP), by (job, size):
        # the running export, or None once one failed; and those cached
        self._exports: dict[tuple[str, int], tuple | None] = {}
        self._exported: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def _encoder(self):
        from export.audio_encoder import OnnxEncoder, cached_audio_encoder

        return OnnxEncoder(cached_audio_encoder(self.feature_config), threads=self.threads)

    def _sampler(self):
        return self._motion_runner

    def draws_windows(self, size: int) -> bool:
        """True once the window renderer of this size is cached. The first time it is not,
        it is exported in a child process (~10 s on 2 cores; export.warm) while sessions go
        on drawing video frames whole; an export that fails is reported once and not tried
        again (frames stay whole)."""
        from export import warm

        return self._graph_ready(warm.WINDOWS, size, "video frames are drawn whole")

    def draws_close_ups(self, size: int) -> bool:
        """True once the renderer of close-ups of this size (Avatar.close_up) is cached; the
        first time it is not, it is exported in a child process as draws_windows' is, and
        close-ups are drawn by the torch renderer meanwhile."""
        from export import warm

        return self._graph_ready(warm.CLOSE_UP, size, "close-ups are drawn by torch")

    def _graph_ready(self, job: str, size: int, meanwhile: str) -> bool:
        """Whether the graph of export.warm's `job` for `size` is cached; if not, its export
        is started in the background (once; `meanwhile` says what is drawn instead)."""
        from export import warm

        key = (job, size)
        with self._lock:
            if key in self._exported:
                return True
            if key not in self._exports:
                if warm.ready(job, size):
                    self._exported.add(key)
                    return True
                log.info("exporting the %s (%d px) in the background; %s until then",
                         job, size, meanwhile)
                self._exports[key] = warm.start_export(job, self.checkpoint, size)
            running = self._exports[key]
            if running is None:
                return False
            outcome = warm.finished(*running)
            if outcome is None:
                return False
            if outcome:
                log.warning("exporting the %s failed; %s from now on:\n%s", job, meanwhile,
                            outcome)
                self._exports[key] = None
                return False
            del self._exports[key]                         # done: cached from now on
            self._exported.add(key)
            return True

    def _draw(self, avatar: Avatar, motion: np.ndarray) -> np.ndarray:
        from export.renderer import OnnxRenderer, cached_cpu_renderer_export

        if avatar.close_up and not self.draws_close_ups(avatar.size):
            from models.render import render

            with torch.inference_mode():
                return render(avatar, torch.from_numpy(np.asarray(motion, np.float32)),
                              hand=False).numpy()
        shape = (avatar.size, avatar.frame_size)
        with self._renderers_lock:
            runner = self._renderers.get(shape)
            if runner is None:
                runner = OnnxRenderer(cached_cpu_renderer_export(avatar), threads=self.threads)
                self._renderers[shape] = runner
        return runner(avatar, np.asarray(motion, np.float32))


class TrtEngine(Engine):
    """TensorRT: the encoder and the unrolled student in fp16, the renderer in fp32, each an
    engine with a batch axis (windows, sessions, frames) shared by every session."""

    name = "trt"

    def __init__(self, checkpoint: str | Path = DEFAULT_CHECKPOINT, flavour: str | None = None):
        from export import trt

        try:
            self.trt = trt.load_tensorrt(flavour)
            self.target = trt.Target.local()
        except trt.TensorRTUnavailable as e:
            raise EngineError(str(e)) from None
        self._renderers: dict[tuple[int, int], object] = {}   # by (size, frame size)
        self._lock = threading.Lock()
        super().__init__(checkpoint)
        from export.motion import cached_motion_export

        self._motion_runner = trt.TrtMotionSampler(self._runner(
            cached_motion_export(self.motion, checkpoint, fused_attention=True),
            trt.motion_profile(self.motion.config.chunk_frames), fp16=True, stem="motion"))

    def _runner(self, onnx_path, profile, fp16: bool, stem: str):
        from export import trt

        try:
            plan = trt.cached_engine(self.trt, onnx_path, profile, fp16, self.target, stem)
            return trt.TrtRunner(self.trt, plan)
        except (trt.TensorRTUnavailable, RuntimeError) as e:
            raise EngineError(f"TensorRT engine {stem}: {e}") from None

    def draws_windows(self, size: int) -> bool:
        """No: a window renderer would be one more TensorRT build (minutes, inline), and a GPU
        draws whole video frames with room to spare."""
        return False

    def _encoder(self):
        from export import trt
        from export.audio_encoder import cached_audio_encoder

        return trt.TrtEncoder(self._runner(cached_audio_encoder(self.feature_config, True),
                                           trt.encoder_profile(), fp16=True,
                                           stem="audio_encoder"))

    def _sampler(self):
        return self._motion_runner

    def _draw(self, avatar: Avatar, motion: np.ndarray) -> np.ndarray:
        from export import trt
        from export.renderer import cached_renderer_export

        shape = (avatar.size, avatar.frame_size)
        with self._lock:                      # one build per (size, frame size)
            runner = self._renderers.get(shape)
            if runner is None:
                stem = f"renderer{avatar.size}" + (
                    "" if avatar.frame_size == avatar.size else f"in{avatar.frame_size}")
                runner = trt.TrtRenderer(self._runner(
                    cached_renderer_export(avatar), trt.renderer_profile(), fp16=False,
                    stem=stem))
                self._renderers[shape] = runner
        return runner(avatar, np.asarray(motion, np.float32))


def default_engine(device: str = "cpu") -> str:
    """The engine a user gets without asking: onnx on a CPU (less CPU time per frame than
    torch for the whole pipeline: 41 vs 44 ms at 512 px, 24 vs 28 ms at 256 px, the audio
    encoder and the motion sampler about 1.4x and 2x faster; benchmarks/RESULTS.md), torch on
    CUDA (Triton kernels; trt is asked for by name, its engines take minutes to build)."""
    return "onnx" if device == "cpu" else "torch"


def make_engine(name: str = "torch", checkpoint: str | Path = DEFAULT_CHECKPOINT,
                device: str = "cpu") -> Engine:
    if name == "torch":
        return TorchEngine(checkpoint, device=device)
    if name == "onnx":
        return OnnxEngine(checkpoint)
    if name == "trt":
        return TrtEngine(checkpoint)                  # always on the (first) CUDA device
    raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
