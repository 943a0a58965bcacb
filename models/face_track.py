"""Follow one face through a video: decoded frames -> landmarks per frame -> a 25 fps track.

    frames (any rate, variable too)  --track_faces-->  FaceTrack: landmarks [n, 68, 2] at the
    frames' own times, NaN where no face   --on_ticks-->  TickTrack: landmarks [T, 68, 2] at
    the motion frame rate, short gaps filled, long gaps marked   --segments-->  runs to keep

Tracking: the detector (dlib HOG, ~30-110 ms a frame) runs when the track is lost and every
`detect_every` seconds to confirm it; in between, the landmark model alone (the face mesh,
~8 ms: models.face.find_landmarks) runs in a box predicted from the previous frame's
landmarks. The box is kept in the detector's convention: at each detection it is stored
relative to the face's placement (centre and face width) and carried with the face.

The mesh refuses a box without a face, but a box on the wrong face or half off it still gives
68 points, so every frame without the detector is checked: the face must not jump or
resize, and its appearance (a small grey patch sampled from eyes to chin in the face's own
frame) must correlate with the previous frame's (> 0.6; consecutive frames of one face give
> 0.95, two different aligned faces ~0.4, a blank 0).
A failed check sends the frame to the detector. A frame is lost when the detector finds no
face consistent with the tracked one (the largest consistent face is taken). When a routine
confirmation fails, the predictor-only frames since the last confirmation are dropped too:
nothing says when the track went wrong.

Timing convention (the same as train.visemes): motion frame k shows the face at the middle
of audio samples [640 k, 640 (k + 1)), i.e. at (k + 0.5) / 25 s after the audio starts. A
video frame is taken to show the face at the middle of its display interval, pts + half a
frame: so a 25 fps video whose frame k is shown with audio [k/25, (k+1)/25) (stream.mp4's
convention) maps frame k to motion frame k exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from models import face
from models import motion_space as ms


class VideoInputError(ValueError):
    """A video that cannot be used; the message says why, in plain words."""


@dataclass(frozen=True)
class TrackConfig:
    detect_every: float = 0.4      # seconds between confirming detections while tracking
    search_every: int = 3          # while no face is tracked, detect on every n-th frame
    max_fps: float = 30.0          # frames closer than 1/max_fps to the last used are skipped
    max_side: int = 960            # frames are scaled down to this longest side first
    min_face: float = 48.0         # face width (jaw 0 to 16) in working pixels; smaller: lost
    detector: str = "hog"
    landmarker: str = "mesh"       # models.face.LANDMARKERS ("dlib": measuring and tests only)


@dataclass
class Frame:
    time: float              # presentation time, seconds on the container's clock
    image: np.ndarray        # [H, W, 3] uint8 RGB at working size
    scale: float             # working pixels per source pixel


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float               # average frame rate the container declares (0 when unknown)
    duration: float          # seconds (0 when unknown)
    audio_start: float       # start of the first audio track on the container's clock
    has_audio: bool
    codec: str


def probe(path: str | Path) -> VideoInfo:
    """What a video holds, without decoding it. Raises VideoInputError."""
    path = Path(path)
    if not path.is_file():
        raise VideoInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoInputError("the file is empty (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoInputError("the file has no video track")
            video = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            audio_start = 0.0
            if audio is not None and audio.start_time is not None:
                audio_start = float(audio.start_time * audio.time_base)
            duration = (container.duration or 0) / av.time_base
            return VideoInfo(width=video.width, height=video.height,
                             fps=float(video.average_rate or 0), duration=float(duration),
                             audio_start=audio_start, has_audio=audio is not None,
                             codec=video.codec_context.name)
    except VideoInputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise VideoInputError(f"not a readable video ({_plain(e)})") from e


def read_frames(path: str | Path, config: TrackConfig = TrackConfig(),
                problems: list[str] | None = None) -> Iterator[Frame]:
    """Decoded frames at working size (longest side <= max_side), upright (display rotation
    applied), at most max_fps of them a second. A decoding error after the first frames ends
    the video there (a note goes to `problems`); before any frame it raises VideoInputError."""
    last = -np.inf
    count = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for k, frame in enumerate(container.decode(stream)):
                time = frame.time
                if time is None:           # no timestamps: fall back to the declared rate
                    time = k / float(stream.average_rate or 25)
                if time < last + 1.0 / config.max_fps - 1e-4:
                    continue
                last = time
                scale = min(1.0, config.max_side / max(frame.width, frame.height))
                width = max(2, int(round(frame.width * scale / 2)) * 2)
                height = max(2, int(round(frame.height * scale / 2)) * 2)
                image = frame.to_ndarray(format="rgb24", width=width, height=height)
                turns = int(round((getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
                if turns:
                    image = np.ascontiguousarray(np.rot90(image, k=turns))
                count += 1
                yield Frame(float(time), image, width / frame.width)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        if count == 0:
            raise VideoInputError(f"no frame could be decoded ({_plain(e)})") from e
        if problems is not None:
            problems.append(f"decoding stopped after {count} frames ({_plain(e)})")


def _plain(error: Exception) -> str:
    """FFmpeg's own words without the file name it appends."""
    text = getattr(error, "strerror", None) or str(error)
    return f"{type(error).__name__}: {text}"


# --- tracking -------------------------------------------------------------------------------

@dataclass
class FaceTrack:
    """One face followed through a video, at the frames' own times."""
    times: np.ndarray        # [n] seconds, the moment each frame shows (pts + half a frame)
    landmarks: np.ndarray    # [n, 68, 2] float32 source-video pixels, NaN where lost
    track: np.ndarray        # [n] int: which continuous track (-1 where lost)
    detected: np.ndarray     # [n] bool: the detector (not only the predictor) saw the face
    frame_interval: float    # median seconds between decoded frames
    detections: int          # detector runs (for timing)

    @property
    def found(self) -> np.ndarray:
        return self.track >= 0


def _placement(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (eye midpoint) [2] and face width of landmarks [68, 2]."""
    p = ms.place(landmarks)
    return p.offset, p.scale


def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# the appearance patch: a grid in canonical units (face widths, origin between the eyes)
_PATCH_Y, _PATCH_X = np.meshgrid(np.linspace(-0.3, 0.75, 20), np.linspace(-0.55, 0.55, 20),
                                 indexing="ij")
_PATCH_GRID = np.stack([_PATCH_X, _PATCH_Y], -1).reshape(-1, 2)      # [400, 2]
SAME_FACE_CORRELATION = 0.6


def face_patch(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Grey values [400] sampled on a grid fixed to the face (nearest pixel)."""
    points = ms.place(landmarks).to_image(_PATCH_GRID)
    h, w = image.shape[:2]
    x = np.clip(np.round(points[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.round(points[:, 1]).astype(int), 0, h - 1)
    return image[y, x].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two patches (0 when either is flat)."""
    a, b = a - a.mean(), b - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 1e-6 else 0.0


class _Tracker:
    """The state of one face being followed (see the module doc)."""

    def __init__(self, config: TrackConfig, fps: float):
        self.config = config
        self.detect_every = max(1, int(round(config.detect_every * fps)))
        self.landmarks: np.ndarray | None = None     # last frame's [68, 2], working pixels
        self.patch: np.ndarray | None = None         # last frame's appearance patch
        self.anchored: tuple | None = None           # (landmarks, patch) at the last detection
        self.last_seen: tuple | None = None          # (landmarks, patch) before the face was lost
        self.box_offset = np.zeros(4)                # detector box - centre, in face widths
        self.since_detection = 0
        self.track = -1
        self.detections = 0

    def predicted_box(self) -> tuple[float, float, float, float]:
        centre, width = _placement(self.landmarks)
        box = np.concatenate([centre, centre]) + self.box_offset * width
        return tuple(float(v) for v in box)

    def anchor(self, image: np.ndarray, found: face.Face) -> None:
        centre, width = _placement(found.landmarks)
        self.box_offset = (np.array(found.box) - np.concatenate([centre, centre])) / width
        self.landmarks = found.landmarks
        self.patch = face_patch(image, found.landmarks)
        self.anchored = (self.landmarks, self.patch)
        self.since_detection = 0

    def lose(self, back_to_anchor: bool) -> None:
        """No face now; remember the last trusted one (the last detection's when the frames
        since it are dropped)."""
        self.last_seen = self.anchored if back_to_anchor else (self.landmarks, self.patch)
        self.landmarks = self.patch = None

    def same_as_last_seen(self, image: np.ndarray, found: face.Face) -> bool:
        """A face found after a loss is the one lost: where it was, looking as it did."""
        if self.last_seen is None:
            return False
        landmarks, patch = self.last_seen
        centre, width = _placement(landmarks)
        expected = np.concatenate([centre, centre]) + self.box_offset * width
        return (_iou(found.box, expected) >= 0.3
                and correlation(face_patch(image, found.landmarks), patch)
                >= SAME_FACE_CORRELATION)

    def detect(self, image: np.ndarray) -> face.Face | None:
        """The largest face (big enough) consistent with the tracked one, else None. While
        searching: the face last seen if it is back, else the largest."""
        self.detections += 1
        faces = [f for f in face.detect_faces(image, self.config.detector,
                                              self.config.landmarker)
                 if f.width >= self.config.min_face]
        if self.landmarks is None:
            back = [f for f in faces if self.same_as_last_seen(image, f)]
            return (back or faces or [None])[0]
        expected = self.predicted_box()
        consistent = [f for f in faces if _iou(f.box, expected) >= 0.3]
        return consistent[0] if consistent else None

    def follow(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks from the landmark model alone in the predicted box, or None when it sees
        no face there or the result moved, resized or changed its looks implausibly (then
        the caller detects)."""
        try:
            lm = face.find_landmarks(image, self.predicted_box(), self.config.landmarker)
        except face.FaceNotFoundError:     # the mesh sees no face in the box
            return None
        (c0, w0), (c1, w1) = _placement(self.landmarks), _placement(lm)
        if not (0.85 < w1 / w0 < 1.18) or np.linalg.norm(c1 - c0) > 0.25 * w0:
            return None
        if w1 < self.config.min_face:
            return None
        patch = face_patch(image, lm)
        if correlation(patch, self.patch) < SAME_FACE_CORRELATION:
            return None
        self.landmarks, self.patch = lm, patch
        return lm


def track_faces(frames: Iterator[Frame], config: TrackConfig = TrackConfig(), fps: float = 25.0,
                progress: Callable[[float], None] | None = None) -> FaceTrack:
    """Follow the largest face through `frames` (see the module doc). `progress` is called
    with seconds of video done."""
    tracker = _Tracker(config, fps)
    times: list[float] = []
    marks: list[np.ndarray | None] = []      # working-pixel landmarks per frame
    scales: list[float] = []
    tracks: list[int] = []
    detected: list[bool] = []
    next_track = 0
    search_wait = 0
    confirmed = -1                           # index of the last frame the detector confirmed
    reported = 0.0
    for frame in frames:
        i = len(times)
        times.append(frame.time)
        scales.append(frame.scale)
        lm, by_detector = None, False
        if tracker.landmarks is None:        # searching
            if search_wait > 0:
                search_wait -= 1
            else:
                found = tracker.detect(frame.image)
                if found is None:
                    search_wait = config.search_every - 1
                else:
                    if not tracker.same_as_last_seen(frame.image, found):
                        tracker.track = next_track       # a new face (or a new shot)
                        next_track += 1
                    tracker.anchor(frame.image, found)
                    lm, by_detector = found.landmarks, True
        else:
            tracker.since_detection += 1
            routine = tracker.since_detection >= tracker.detect_every
            if not routine:
                lm = tracker.follow(frame.image)
            if lm is None:                   # time to confirm, or the predictor's face failed
                found = tracker.detect(frame.image)      # its checks
                if found is None:
                    if routine:              # lost at some unknown frame since the last
                        for j in range(confirmed + 1, i):        # confirmation
                            marks[j], tracks[j], detected[j] = None, -1, False
                    tracker.lose(back_to_anchor=routine)
                else:
                    tracker.anchor(frame.image, found)
                    lm, by_detector = found.landmarks, True
        if by_detector:
            confirmed = i
        marks.append(lm)
        tracks.append(tracker.track if lm is not None else -1)
        detected.append(by_detector)
        if progress is not None and frame.time - reported >= 1.0:
            progress(frame.time - reported)
            reported = frame.time
    # frames after the last confirmation are kept: the video ended, nothing contradicted them

    n = len(times)
    t = np.array(times, np.float64)
    interval = float(np.median(np.diff(t))) if n > 1 else 1.0 / max(fps, 1.0)
    landmarks = np.full((n, 68, 2), np.nan, np.float32)
    for i, lm in enumerate(marks):
        if lm is not None:
            landmarks[i] = lm / scales[i]          # back to source-video pixels
    return FaceTrack(times=t + interval / 2, landmarks=landmarks,
                     track=np.array(tracks, np.int64), detected=np.array(detected, bool),
                     frame_interval=interval, detections=tracker.detections)


# --- onto the motion frame rate ------------------------------------------------------------

OBSERVED, BRIDGED, LOST = 0, 1, 2


@dataclass
class TickTrack:
    """A face track resampled to the motion frame rate."""
    landmarks: np.ndarray    # [T, 68, 2] float32 pixels (NaN where LOST)
    status: np.ndarray       # [T] int8: OBSERVED (between neighbouring frames), BRIDGED (a gap
                             #   of at most max_gap filled by interpolation) or LOST
    track: np.ndarray        # [T] int: track id (-1 where LOST)


def on_ticks(track: FaceTrack, ticks: np.ndarray, max_gap: float) -> TickTrack:
    """Landmarks at the times `ticks` [T] (seconds, the same clock as track.times), linear in
    time between the nearest frames with a face before and after a tick. The two must belong
    to one track; they are OBSERVED when no frame between them was lost, BRIDGED when the
    stretch without a face between them is at most `max_gap` seconds, else the tick is LOST.
    Ticks within half a frame outside the first or last face of a track take that face."""
    T = len(ticks)
    out = np.full((T, 68, 2), np.nan, np.float32)
    status = np.full(T, LOST, np.int8)
    ids = np.full(T, -1, np.int64)
    found = np.flatnonzero(track.found)
    if found.size == 0:
        return TickTrack(out, status, ids)
    t = track.times[found]
    half = 0.5 * track.frame_interval + 1e-6
    after = np.searchsorted(t, ticks, side="left")              # first face at or after tick
    for k, tick in enumerate(ticks):
        a = after[k]
        if a < len(t) and abs(t[a] - tick) <= 1e-6:             # a frame exactly on the tick
            i = found[a]
            out[k], status[k], ids[k] = track.landmarks[i], OBSERVED, track.track[i]
            continue
        if a == 0 or a == len(t):                               # before the first / after last
            j = found[0] if a == 0 else found[-1]
            if abs(track.times[j] - tick) <= half:
                out[k], status[k], ids[k] = track.landmarks[j], OBSERVED, track.track[j]
            continue
        i, j = found[a - 1], found[a]
        if track.track[i] != track.track[j]:                     # a different face
            for edge in (i, j):                                  # (or hold the edge one)
                if abs(track.times[edge] - tick) <= half:
                    out[k], status[k], ids[k] = track.landmarks[edge], OBSERVED, track.track[edge]
            continue
        missing = j - i - 1                                      # frames without a face between
        span = track.times[j] - track.times[i]
        if missing and span - track.frame_interval > max_gap + 1e-6:
            continue
        w = (tick - track.times[i]) / span
        out[k] = (1 - w) * track.landmarks[i] + w * track.landmarks[j]
        status[k] = BRIDGED if missing else OBSERVED
        ids[k] = track.track[i]
    return TickTrack(out, status, ids)


def segments(ticks: TickTrack, min_frames: int, max_frames: int
             ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Runs [start, stop) of ticks with one face, split into pieces of at most max_frames
    (equal lengths). Returns (kept, too_short): runs shorter than min_frames are not kept."""
    kept, short = [], []
    T = len(ticks.status)
    k = 0
    while k < T:
        if ticks.status[k] == LOST:
            k += 1
            continue
        start = k
        while k < T and ticks.status[k] != LOST and ticks.track[k] == ticks.track[start]:
            k += 1
        length = k - start
        if length < min_frames:
            short.append((start, k))
            continue
        pieces = -(-length // max_frames)
        bounds = np.linspace(start, k, pieces + 1).round().astype(int)
        kept += [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return kept, short
