"""A recording of a person, as the project reads it: the face on every 25 fps tick, the frame
to make an avatar from, and the motion of every tick.

    frames_in_range / ticks_onto_frames   which decoded frame each 25 fps tick shows
    pick_source_frame                     the frame an avatar is made from: face found, big
                                          enough, frontal, eyes open, mouth closed, still,
                                          nothing unusual in front of or beside the face
    fit_clip_motion                       motion [K, D] of every tick against that frame's
                                          landmarks, Savitzky-Golay smoothed (no lag)

Used by video avatars (models.video_avatar), the self-reenactment benchmark
(benchmarks.reenact) and the training-data preparation (train.prepare_videos). Tracking
itself is models.face_track.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import motion_space as ms
from models.avatar import MIN_FACE_WIDTH
from models.face import FaceTooSmallError
from models.face_track import Frame, TrackConfig, read_frames

FPS = 25
FIT_CHUNK = 500                # frames per fit_motion call (memory)
SMOOTH_FRAMES = 5              # Savitzky-Golay window (motion frames); 1: none
SMOOTH_ORDER = 2
LUMA = np.array([0.299, 0.587, 0.114])
FOREHEAD = 0.25                # the face box is raised by this share of the landmarks' height


class RecordingError(ValueError):
    """A recording that cannot be used; the message says why, in plain words."""


# ---------------------------------------------------------------------------------------------
# Measures and smoothing
# ---------------------------------------------------------------------------------------------

def face_measures(canonical: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame, from landmarks in canonical units [T, 68, 2] (in-plane pose removed):
    mouth gap, eye opening (aspect ratio), yaw and pitch proxies. Each [T]."""
    c = canonical
    gap = np.mean([np.linalg.norm(c[:, a] - c[:, b], axis=-1)
                   for a, b in ms.LIP_PAIRS], axis=0)
    eyes = []
    for s in (36, 42):
        p = c[:, s:s + 6]
        eyes.append((np.linalg.norm(p[:, 1] - p[:, 5], axis=-1)
                     + np.linalg.norm(p[:, 2] - p[:, 4], axis=-1))
                    / (2 * np.linalg.norm(p[:, 0] - p[:, 3], axis=-1)))
    yaw = c[:, 30, 0] - 0.5 * (c[:, 0, 0] + c[:, 16, 0])     # nose tip off the jaw's middle
    pitch = c[:, 30, 1] - 0.5 * (c[:, 27, 1] + c[:, 8, 1])   # nose tip against brow-chin line
    return {"mouth_gap": gap, "eye_opening": np.mean(eyes, axis=0), "yaw": yaw, "pitch": pitch}



def smooth(motion: np.ndarray, frames: int = 5, order: int = 2) -> np.ndarray:
    """Savitzky-Golay filter over `frames` (odd) along time, then clipped to the documented
    ranges. Each output is a least-squares polynomial of degree `order` through the window
    around it, evaluated at its own frame: centred, so no lag, and peaks such as blinks keep
    far more of their depth than under a moving average. The first and last frames use the
    first and last full window (scipy's mode="interp")."""
    motion = np.asarray(motion, np.float64)                        # [T, D]
    T = len(motion)
    if frames <= order or frames < 3 or T < frames:
        return ms.clip(motion.astype(np.float32))
    half = frames // 2
    offsets = np.arange(frames, dtype=np.float64)
    vander = offsets[:, None] ** np.arange(order + 1)             # [frames, order + 1]
    fit = vander @ np.linalg.pinv(vander)                          # [frames, frames]: row j
    starts = np.clip(np.arange(T) - half, 0, T - frames)           #   evaluates at offset j
    windows = motion[starts[:, None] + np.arange(frames)]          # [T, frames, D]
    rows = fit[np.arange(T) - starts]                              # [T, frames]
    return ms.clip(np.einsum("tf,tfd->td", rows, windows).astype(np.float32))


def face_box(landmarks: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel bounds of landmarks [68, 2] in a size x size frame,
    raised by FOREHEAD of their height for the forehead, clipped to the frame: the face a
    rendered frame is compared with the real one on (benchmarks.reenact, models.pose_refine)."""
    (x0, y0), (x1, y1) = landmarks.min(0), landmarks.max(0)
    y0 -= FOREHEAD * (y1 - y0)
    left, top = (int(np.clip(np.floor(v), 0, size - 1)) for v in (x0, y0))
    right, bottom = (int(np.clip(np.ceil(v) + 1, 1, size)) for v in (x1, y1))
    return left, top, max(right, left + 8), max(bottom, top + 8)


# ---------------------------------------------------------------------------------------------
# Picking the source frame
# ---------------------------------------------------------------------------------------------

EYES_OPEN = 0.18           # eye aspect ratio (each eye) below this: closed or closing
EYES_SHUT = 0.12           # a photo whose eyes are both below this: shut (see portrait_flaw)
EYES_OPEN_SHARE = 0.8      # ... or below this share of the person's wide-open eyes (90th pct)
MAX_YAW = 0.25             # nose tip off the jaw's middle, face widths (~25 deg): profile
MAX_ROLL = 30.0            # degrees
# What counts as a clearly visible amount of each flaw (the penalties' units).
PENALTY_UNITS = {"mouth_gap": 0.02, "eyes_shut": 0.05, "yaw": 0.05, "roll": 5.0,
                 "pitch": 0.03, "speed": 0.01}


def portrait_flaw(landmarks: np.ndarray) -> str | None:
    """Why one photo cannot be an avatar's source, as a plain message, from its landmarks
    [68, 2] (pixels); None when it can. A recording offers other frames (pick_source_frame
    asks more of its pick); a photo is all there is, so only what no rendering can mend:
    both eyes shut (each eye's aspect ratio below EYES_SHUT: the renderer can close eyes,
    not open them; eyes looking down measure ~0.18) or the face turned beyond MAX_YAW
    (~30 degrees, where the renderer's own turns of up to 30 degrees begin)."""
    m = source_measures(np.asarray(landmarks, np.float64)[None])
    eyes = max(m["eye_left"][0], m["eye_right"][0])
    if eyes < EYES_SHUT:
        return (f"the eyes are closed in this photo (eye aspect ratio {eyes:.2f}; open eyes "
                f"measure 0.2-0.4): use a photo with the eyes open")
    if abs(m["yaw"][0]) > MAX_YAW:
        return ("the face is turned too far to the side: use a photo of a roughly frontal "
                "face (within about 30 degrees)")
    return None


@dataclass
class SourcePick:
    index: int                     # the chosen frame (into the landmarks given)
    order: np.ndarray              # all usable frames, best first (the chosen one first)
    measures: dict[str, np.ndarray]  # per frame [T] (NaN where no face): see source_measures


def source_measures(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame [T] from landmarks [T, 68, 2] (pixels, NaN where no face): face width
    (pixels), roll (degrees), yaw and pitch proxies, inner-lip gap (face widths, as
    face_measures), each eye's aspect ratio and landmark speed (mean
    point movement to the neighbouring frames, face widths)."""
    T = len(landmarks)
    found = np.isfinite(landmarks).all(axis=(1, 2))
    out = {k: np.full(T, np.nan) for k in ("width", "roll", "yaw", "pitch", "mouth_gap",
                                            "eye_left", "eye_right", "speed")}
    index = np.flatnonzero(found)
    if index.size == 0:
        return out
    places = [ms.place(landmarks[i]) for i in index]
    canonical = np.stack([p.to_canonical(landmarks[i]) for p, i in zip(places, index,
                                                                       strict=True)])
    m = face_measures(canonical)
    out["width"][index] = [p.scale for p in places]
    out["roll"][index] = np.degrees([p.angle for p in places])
    out["yaw"][index], out["pitch"][index] = m["yaw"], m["pitch"]
    out["mouth_gap"][index] = m["mouth_gap"]
    for name, start in (("eye_left", 36), ("eye_right", 42)):
        p = canonical[:, start:start + 6]
        out[name][index] = ((np.linalg.norm(p[:, 1] - p[:, 5], axis=-1)
                             + np.linalg.norm(p[:, 2] - p[:, 4], axis=-1))
                            / (2 * np.linalg.norm(p[:, 0] - p[:, 3], axis=-1)))
    moves = np.full((T, 2), np.nan)
    step = np.linalg.norm(np.diff(landmarks.astype(np.float64), axis=0), axis=-1).mean(-1)
    moves[1:, 0], moves[:-1, 1] = step, step
    with np.errstate(invalid="ignore"):
        speed = np.nanmax(np.where(np.isfinite(moves), moves, -np.inf), axis=1)
    speed[~np.isfinite(speed)] = 0.0                   # a lone frame: nothing says it moves
    out["speed"][index] = speed[index] / out["width"][index]
    return out


def pick_source_frame(landmarks: np.ndarray, candidates: np.ndarray | None = None,
                      min_face_width: float = MIN_FACE_WIDTH,
                      appearance: np.ndarray | None = None) -> SourcePick:
    """The frame of a recording to make the avatar from, as a video avatar would choose it,
    from landmarks [T, 68, 2] (source pixels, NaN where no face), optionally the frames
    allowed (`candidates`, indices; default all) and their appearance_deviation [T].

    Usable frames (all must hold):
      - a face was found;
      - it is big enough for an avatar: face width >= min_face_width (avatar.MIN_FACE_WIDTH);
      - it is not in profile: |yaw proxy| <= MAX_YAW (nose tip off the middle of the jaw,
        ~25 degrees) and |roll| <= MAX_ROLL degrees;
      - both eyes open: each eye's aspect ratio >= EYES_OPEN, absolute, and >=
        EYES_OPEN_SHARE of the person's wide-open eyes (their 90th percentile), so a blink
        or a squint is not chosen.
    Of those, the lowest sum of penalties, each in PENALTY_UNITS (a clearly visible amount):
    the mouth open (inner-lip gap), the eyes less open than wide open, yaw, roll, pitch away
    from the person's usual pitch, and landmark speed (a moving face is a blurred one); with
    `appearance`, also the picture around the face departing from its usual look (a raised
    hand, an object passing), in units of the usable frames' median departure above their
    smallest. A hand that is there most of the time is not seen by that: only a hand
    detector would.

    Raises FaceTooSmallError or RecordingError (no face, profile, eyes closed in every
    frame that is otherwise usable), with a plain message.
    """
    landmarks = np.asarray(landmarks, np.float64)
    m = source_measures(landmarks)
    T = len(landmarks)
    allowed = np.zeros(T, bool)
    allowed[np.arange(T) if candidates is None else np.asarray(candidates, int)] = True
    found = allowed & np.isfinite(m["width"])
    if not found.any():
        raise RecordingError("no face found in the frames the source may come from")
    big = found & (m["width"] >= min_face_width)
    if not big.any():
        raise FaceTooSmallError(
            f"the face is too small: at most {np.nanmax(m['width'][found]):.0f} px wide, at "
            f"least {min_face_width:.0f} px is needed: use a larger or closer video")
    frontal = big & (np.abs(m["yaw"]) <= MAX_YAW) & (np.abs(m["roll"]) <= MAX_ROLL)
    if not frontal.any():
        raise RecordingError(
            "the face is in profile (or tilted) in every frame: a roughly frontal face is "
            "needed")
    eyes = np.minimum(m["eye_left"], m["eye_right"])
    wide = np.nanpercentile(eyes[frontal], 90)
    usable = frontal & (eyes >= max(EYES_OPEN, EYES_OPEN_SHARE * wide))
    if not usable.any():
        raise RecordingError(
            f"the eyes are closed (or nearly) in every usable frame (eye aspect ratio at most "
            f"{np.nanmax(eyes[frontal]):.2f}, open is >= {EYES_OPEN}): no better source frame "
            "exists")
    u = PENALTY_UNITS
    penalty = (m["mouth_gap"] / u["mouth_gap"]
               + np.maximum(wide - eyes, 0.0) / u["eyes_shut"]
               + np.abs(m["yaw"]) / u["yaw"]
               + np.abs(m["roll"]) / u["roll"]
               + np.abs(m["pitch"] - np.nanmedian(m["pitch"][frontal])) / u["pitch"]
               + m["speed"] / u["speed"])
    if appearance is not None:
        seen = usable & np.isfinite(appearance)
        if seen.any():
            low, typical = np.min(appearance[seen]), np.median(appearance[seen])
            penalty = penalty + (appearance - low) / max(typical - low, 1e-6)
            m["appearance"] = np.asarray(appearance, np.float64)
    index = np.flatnonzero(usable)
    order = index[np.argsort(penalty[index], kind="stable")]
    m["penalty"] = np.where(usable, penalty, np.nan)
    return SourcePick(int(order[0]), order, m)


# a grid fixed to the face, canonical units (face widths from the eyes' midpoint): from above
# the brows to below the chin, beyond the cheeks on both sides
_LOOK_Y, _LOOK_X = np.meshgrid(np.linspace(-0.6, 1.3, 48), np.linspace(-0.9, 0.9, 48),
                               indexing="ij")
LOOK_GRID = np.stack([_LOOK_X, _LOOK_Y], -1).reshape(-1, 2)          # [2304, 2]
THUMBNAIL_SIDE = 256       # frames are looked at this small for appearance_deviation


def appearance_samples(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Grey values [G] of image [H, W, 3] uint8 on LOOK_GRID placed on its face (landmarks
    [68, 2] in its pixels), bilinear, mean removed (so light changes do not count)."""
    from scipy import ndimage

    points = ms.place(landmarks).to_image(LOOK_GRID)
    grey = image.astype(np.float32) @ LUMA.astype(np.float32)
    values = ndimage.map_coordinates(grey, [points[:, 1], points[:, 0]], order=1, mode="nearest")
    return (values - values.mean()).astype(np.float32)


def appearance_deviation(images: list[np.ndarray], landmarks: np.ndarray) -> np.ndarray:
    """Per frame [T]: how far the picture in and around the face departs from its usual look
    in these frames. appearance_samples (fixed to the face, so head motion does not count),
    mean absolute difference from their per-point median over the frames. Large where
    something passes in front of or beside the face (a raised hand, an object, hair blown
    across) that is not there most of the time. images: [H, W, 3] uint8 each; landmarks
    [T, 68, 2] in their pixels, NaN where no face (NaN out)."""
    samples = np.full((len(images), len(LOOK_GRID)), np.nan, np.float32)
    for i, (image, lm) in enumerate(zip(images, landmarks, strict=True)):
        if np.isfinite(lm).all():
            samples[i] = appearance_samples(image, lm)
    return deviation_from_usual(samples)


def deviation_from_usual(samples: np.ndarray) -> np.ndarray:
    """[T] mean absolute difference of appearance_samples [T, G] (NaN rows: no face) from
    their per-point median."""
    found = np.isfinite(samples).all(axis=1)
    out = np.full(len(samples), np.nan)
    if found.any():
        usual = np.median(samples[found], axis=0)
        out[found] = np.abs(samples[found] - usual).mean(axis=1)
    return out


def thumbnail(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The image with its longest side at most THUMBNAIL_SIDE, and its scale."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(1.0, THUMBNAIL_SIDE / max(h, w))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)), size[0] / w


# ---------------------------------------------------------------------------------------------
# Reading the clip: frames in the range, ticks onto frames
# ---------------------------------------------------------------------------------------------

def frames_in_range(path: Path, start: float, end: float, config: TrackConfig,
                    problems: list[str]) -> Iterator[Frame]:
    """read_frames from the frame shown at `start` up to the last frame shown before `end`."""
    held: Frame | None = None
    for frame in read_frames(path, config, problems):
        if frame.time >= end:
            break
        if frame.time <= start:                 # the frame shown at start may begin earlier
            held = frame
            continue
        if held is not None:
            yield held
            held = None
        yield frame
    if held is not None:
        yield held


def ticks_onto_frames(frame_times: np.ndarray, start: float, end: float) -> np.ndarray:
    """For the 25 fps ticks (k + 0.5) / 25 s after `start`, up to `end`, the index of the
    frame shown at each (the last frame starting at or before it) [K]."""
    ticks = start + (np.arange(int(np.floor((end - start) * FPS + 1e-6))) + 0.5) / FPS
    ticks = ticks[ticks >= frame_times[0]]
    return np.searchsorted(frame_times, ticks + 1e-9, side="right") - 1


# ---------------------------------------------------------------------------------------------
# Motion
# ---------------------------------------------------------------------------------------------

def fit_clip_motion(landmarks: np.ndarray, neutral: np.ndarray,
                    smooth_frames: int = SMOOTH_FRAMES) -> np.ndarray:
    """Motion [K, D] for tick landmarks [K, 68, 2] in crop pixels (NaN where the tracker
    lost the face: those ticks take the motion interpolated between their neighbours).

    Fitted against `neutral`, the avatar's own landmarks, because the renderer adds the
    motion to exactly those: another reference leaves its difference from them in every
    rendered frame. Then the Savitzky-Golay filter (smooth (5 frames, no lag),
    which takes out the landmarks' frame-to-frame jitter and keeps blinks. Compared on the
    development clip's first 20 s at 256 px, dlib's landmarks in the tracker, 2026-12-03
    (SSIM, landmark distance, mouth / eye correlation):
      avatar landmarks, filtered     0.861  0.0150  0.928  0.888   (this)
      avatar landmarks, unfiltered   0.860  0.0153  0.925  0.877
      tracked source frame, filtered 0.858  0.0155  0.910  0.888
      calm median face (as train.prepare_videos.fit_example), filtered: 0.276  0.173, as
      it sits at the clip's median head pose, not the source frame's
    """
    K = len(landmarks)
    motion = np.zeros((K, ms.D), np.float32)
    known = np.isfinite(landmarks).all(axis=(1, 2))
    index = np.flatnonzero(known)
    fitted = np.concatenate([ms.fit_motion(landmarks[index[i:i + FIT_CHUNK]], neutral)
                             for i in range(0, len(index), FIT_CHUNK)])
    motion[index] = fitted
    for d in range(ms.D):                       # lost ticks: between the neighbours
        motion[~known, d] = np.interp(np.flatnonzero(~known), index, fitted[:, d])
    return smooth(motion, smooth_frames, SMOOTH_ORDER)
