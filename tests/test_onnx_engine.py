"""The onnx engine against the torch engine, and the export command line.

render_file through the onnx engine (onnxruntime's CPU provider: the encoder, the unrolled
student, the renderer's two graphs rewritten by export.ort_cpu with torch's composite of the
whole frames between them) gives the frames the torch engine gives, to PSNR >= 35 dB, on the
same audio and seed.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from models.audio_io import load_audio
from stream.render_file import render_file
from stream.session import Session


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def frames_of(engine, avatar, audio, rate):
    images: list[np.ndarray] = []
    session = Session(engine, avatar, seed=3)
    try:
        render_file(session, audio, rate, lambda image, _sound: images.append(image))
    finally:
        session.close()
    return np.stack(images)


def test_render_file_onnx_frames_match_torch(real_speech_path):
    from models.avatar import prepare_avatar
    from stream.engine import make_engine

    avatar = prepare_avatar(size=256)
    audio = load_audio(real_speech_path, rate=48000)                   # ~1.5 s of speech
    ours = frames_of(make_engine("onnx"), avatar, audio, 48000)
    ref = frames_of(make_engine("torch"), avatar, audio, 48000)
    assert ours.shape == ref.shape and len(ref) >= 30
    quality = psnr(ours, ref)
    print(f"onnx vs torch engine frames: PSNR {quality:.1f} dB over {len(ref)} frames")
    assert quality >= 35.0
    # the mouth moved (the comparison is not between two still images)
    assert np.abs(ref.astype(int) - ref[0].astype(int)).max() > 40


def test_export_command_writes_three_checked_graphs(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    import onnx

    from export.onnx import main

    assert main(["--out", str(tmp_path), "--size", "256"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["failed"] == []
    assert set(manifest["max_abs_error"]) == {"audio_encoder", "motion", "renderer",
                                              "renderer_cpu", "audio_encoder_fp16",
                                              "motion_fp16"}
    printed = capsys.readouterr().out
    for name in manifest["max_abs_error"]:
        assert f"{name} " in printed and "max abs error" in printed
    ops = {name: {n.op_type for n in onnx.load(str(tmp_path / file)).graph.node}
           for name, file in manifest["files"].items()}
    assert "Attention" in ops["audio_encoder"] and "Attention" in ops["motion"]
    assert "GridSample" in ops["renderer"]
    assert "GridSample" not in ops["renderer_cpu"] | ops["renderer_cpu_overlays"]
    # a batch axis on every graph: windows, sessions, frames
    for file, name in (("audio_encoder", "mel"), ("motion", "noise"), ("renderer", "motion")):
        graph = onnx.load(str(tmp_path / manifest["files"][file])).graph
        dim = next(i for i in graph.input if i.name == name).type.tensor_type.shape.dim[0]
        assert dim.dim_param, (file, dim)


def test_export_from_an_avatar_with_shared_tensors_serves_every_avatar(tmp_path):
    """A video frame's avatar passes one tensor as image, smooth_image and plate; a graph
    exported from it (whoever renders first after a change exports) must still take them
    as separate inputs and render a photo avatar as torch does; so must the CPU renderer's
    graphs."""
    import dataclasses

    import onnxruntime as ort

    from export.renderer import OnnxRenderer, write_cpu_renderer
    from models.avatar import prepare_avatar
    from models.render import INPUT_NAMES, export_onnx, render

    photo = prepare_avatar(size=256)
    shared = dataclasses.replace(photo, plate=photo.image, smooth_image=photo.image)
    export_onnx(shared, tmp_path / "renderer.onnx")
    session = ort.InferenceSession(str(tmp_path / "renderer.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(INPUT_NAMES)
    motion = np.zeros((1, 17), np.float32)
    motion[0, 0] = 20.0                                        # a head turn uncovers the plate
    feed = {name: t.numpy() for name, t in zip(INPUT_NAMES[:-1], photo.tensors(), strict=True)}
    frames = session.run(["frames"], {**feed, "motion": motion})[0]
    assert np.abs(frames.astype(int) - render(photo, motion).numpy()).max() <= 1
    # the CPU renderer's two graphs (export.renderer.OnnxRenderer) likewise
    write_cpu_renderer(shared, tmp_path / "cpu.onnx")
    frames = OnnxRenderer(tmp_path / "cpu.onnx")(photo, motion)
    assert np.abs(frames.astype(int) - render(photo, motion).numpy()).max() <= 1


def test_one_cpu_renderer_draws_each_threads_own_avatar():
    """Sessions share one renderer per shape, each calling it from its own render thread with
    its own avatar: called at once from two threads, every call draws its own avatar's
    frames (torch's, within 1 grey level), however the three steps of the calls interleave."""
    import threading

    from export.renderer import OnnxRenderer, cached_cpu_renderer_export
    from models import motion_space as ms
    from models.avatar import prepare_avatar
    from models.render import render

    hopper = Path(__file__).resolve().parent.parent / "assets" / "grace_hopper.jpg"
    avatars = [prepare_avatar(size=256), prepare_avatar(hopper, 256)]
    renderer = OnnxRenderer(cached_cpu_renderer_export(avatars[0]))
    motion = np.zeros((2, ms.D), np.float32)
    motion[:, ms.index("jaw_open")] = (0.2, 0.6)
    motion[:, ms.index("head_yaw")] = (-5.0, 5.0)
    expected = [render(a, motion).numpy().astype(int) for a in avatars]
    worst, drawn = [0, 0], [0, 0]

    def draw(k: int) -> None:
        for _ in range(12):
            frames = renderer(avatars[k], motion)
            worst[k] = max(worst[k], int(np.abs(frames.astype(int) - expected[k]).max()))
            drawn[k] += 1

    threads = [threading.Thread(target=draw, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert drawn == [12, 12] and max(worst) <= 1, (drawn, worst)


def test_warm_finds_what_the_engine_exported():
    """export.warm's view of the cache (what a first start must export) is the engine's own:
    after an onnx engine has served a 256 px frame nothing is missing at 256 px; at a size
    never exported the renderer is."""
    from export.warm import ENCODER, MOTION, RENDERER, missing_exports
    from models.avatar import prepare_avatar
    from stream.engine import DEFAULT_CHECKPOINT, make_engine

    engine = make_engine("onnx")
    engine.render(prepare_avatar(size=256), np.zeros((1, engine.motion.config.motion_dim),
                                                     np.float32))
    assert missing_exports(DEFAULT_CHECKPOINT, 256) == []
    assert missing_exports(DEFAULT_CHECKPOINT, 320) == [RENDERER]
    assert ENCODER not in missing_exports(DEFAULT_CHECKPOINT, 256, windows=True)
    assert MOTION not in missing_exports(DEFAULT_CHECKPOINT, 256, windows=True)


def cpu_graphs(geometry) -> tuple[str, str]:
    """The names of the CPU renderer's two graphs, by its geometry graph's path."""
    from export.renderer import overlay_graph_path

    return geometry.name, overlay_graph_path(geometry).name


def cache_without(graphs: set[str], tmp_path, monkeypatch) -> None:
    """Point the cache at tmp_path: a cache of its own, everything of the real one but these
    graph files (onnx/ names)."""
    from models.whisper_weights import cache_dir

    real = cache_dir()
    (real / "onnx").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    own = cache_dir()
    (own / "onnx").mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name != "onnx":
            (own / entry.name).symlink_to(entry)
    for entry in (real / "onnx").iterdir():
        if entry.name not in graphs:
            (own / "onnx" / entry.name).symlink_to(entry)


def test_window_renderer_is_exported_in_the_background(tmp_path, monkeypatch):
    """A video avatar's mouth window needs a renderer graph of its own: the first time it is
    asked for, the onnx engine says "not yet" at once and exports it in a child process (the
    sessions meanwhile draw whole frames); then it renders windows as torch does."""
    import time

    from export.renderer import cpu_renderer_path, renderer_export_path
    from models import motion_space as ms
    from models.avatar import prepare_avatar
    from models.render import render
    from models.video_avatar import WINDOW, frame_avatar
    from stream.engine import make_engine

    photo = prepare_avatar(size=256)
    cache_without({renderer_export_path(WINDOW[256], 256).name,
                   *cpu_graphs(cpu_renderer_path(WINDOW[256], 256))}, tmp_path, monkeypatch)

    engine = make_engine("onnx")
    started = time.monotonic()
    assert not engine.draws_windows(256)
    assert time.monotonic() - started < 1.0, "the export must not hold the caller"
    while not engine.draws_windows(256):
        assert time.monotonic() - started < 240, "the window renderer was not exported"
        time.sleep(0.5)
    assert cpu_renderer_path(WINDOW[256], 256).is_file()

    window = frame_avatar(photo, photo.crop(), photo.landmarks.numpy(), window=(32, 64))
    motion = np.zeros((2, engine.motion.config.motion_dim), np.float32)
    motion[:, ms.index("jaw_open")] = (0.3, 0.7)
    assert np.abs(engine.render(window, motion).astype(int)
                  - render(window, motion).numpy()).max() <= 3


def test_close_ups_are_drawn_by_torch_until_their_renderer_is_exported(
        tmp_path, monkeypatch, wolfgang_langer_frames):
    """A close-up's eye and mouth windows are larger (Avatar.frame_size), so it needs a
    renderer graph of its own: the first close-up an onnx engine draws, it draws with the
    torch renderer at once while that graph is exported in a child process; then with it,
    as torch does."""
    import time

    from export import warm
    from export.renderer import cpu_renderer_path, renderer_export_path
    from models import motion_space as ms
    from models.avatar import prepare_avatar
    from models.render import render
    from stream.engine import make_engine

    close_up = prepare_avatar(wolfgang_langer_frames[300], 256, cache=False)
    assert close_up.close_up and close_up.frame_size == 384
    cache_without({renderer_export_path(256, 384).name, *cpu_graphs(cpu_renderer_path(256, 384))},
                  tmp_path, monkeypatch)
    motion = np.zeros((3, ms.D), np.float32)
    motion[:, ms.index("jaw_open")] = (0.0, 0.4, 0.8)
    motion[:, ms.index("blink_left")] = motion[:, ms.index("blink_right")] = (0.0, 1.0, 0.5)
    motion[:, ms.index("head_yaw")] = (0.0, -8.0, 8.0)
    expected = render(close_up, motion).numpy()

    engine = make_engine("onnx")
    started = time.monotonic()
    assert np.array_equal(engine.render(close_up, motion), expected)      # by torch
    assert time.monotonic() - started < 10.0, "the export must not hold the first frames"
    while not engine.draws_close_ups(256):
        assert time.monotonic() - started < 240, "the close-ups' renderer was not exported"
        time.sleep(0.5)
    assert warm.close_up_renderer_ready(256)
    drawn = engine.render(close_up, motion)                               # by its graph
    assert np.abs(drawn.astype(int) - expected).max() <= 3


@pytest.mark.parametrize("torchscript_fails", [False, True], ids=["torchscript", "dynamo"])
def test_export_graph_writes_a_dynamic_graph_either_way(tmp_path, monkeypatch, caplog,
                                                        torchscript_fails):
    """export.exporter: the quick TorchScript export, or, when that exporter fails, the
    dynamo one (logged); either graph takes any batch along the dynamic axis and computes
    what the module does."""
    import onnx
    import onnxruntime as ort
    import torch

    from export.exporter import TORCHSCRIPT_OPSET, export_graph

    if torchscript_fails:
        real = torch.onnx.export

        def export(*args, dynamo=True, **kwargs):
            if not dynamo:
                raise RuntimeError("an op this exporter does not know")
            return real(*args, dynamo=dynamo, **kwargs)

        monkeypatch.setattr(torch.onnx, "export", export)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh()).eval()
    path = export_graph(module, (torch.zeros(2, 6),), tmp_path / "tiny.onnx", ["x"], ["y"],
                        {"x": {0: ("batch", 1, 64)}, "y": {0: ("batch", 1, 64)}})
    assert ("TorchScript exporter failed" in caplog.text) == torchscript_fails
    opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert (opsets[""] == TORCHSCRIPT_OPSET) != torchscript_fails
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 17):
        x = np.random.default_rng(batch).standard_normal((batch, 6)).astype(np.float32)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        assert np.abs(session.run(["y"], {"x": x})[0] - ref).max() < 1e-5


def test_sessions_rendering_at_once_each_get_their_own_avatar():
    """A server's sessions share one renderer per working size and call it from their own
    threads, each with its own avatar. Each must get its own avatar's frames, whatever the
    others do meanwhile; thread switches are forced every microsecond so that a renderer
    which keeps per-call state between threads (one cached avatar slot did) is caught."""
    import dataclasses
    import sys
    import threading

    from serve.avatars import BUNDLED_AVATARS
    from serve.preparation import prepare_photo
    from stream.engine import make_engine

    engine = make_engine("onnx")
    astronaut = prepare_photo(BUNDLED_AVATARS["astronaut"], 256)
    avatars = (astronaut, prepare_photo(BUNDLED_AVATARS["grace_hopper"], 256),
               dataclasses.replace(astronaut, image=astronaut.image.flip(-1)))
    motion = np.zeros((2, 17), np.float32)
    motion[:, 0] = [5.0, -5.0]
    alone = [engine.render(avatar, motion) for avatar in avatars]
    wrong = [0] * len(avatars)

    def session(k: int) -> None:
        for _ in range(150):
            try:
                frames = engine.render(avatars[k], motion)
                wrong[k] += int(np.abs(frames.astype(int) - alone[k]).max() > 1)
            except Exception:                       # noqa: BLE001 - counted as wrong
                wrong[k] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=session, args=(k,)) for k in range(len(avatars))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == [0, 0, 0]
