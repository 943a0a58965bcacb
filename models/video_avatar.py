"""Video avatars: a person's own short recording as the avatar.

Real head motion, blinks, hair and shoulders come from the recording; only the mouth is
generated. Preparation runs once per clip and is cached by the file's content hash:

    probe            a readable video, within the limits (seconds, pixels, bytes)
    track            the face on every frame (models.face_track), onto 25 fps ticks
    play range       the longest run of ticks that show the face (at least MIN_SECONDS)
                     with no hand over its mouth and jaw (models.hands)
    crop             one square box for the whole clip (axis-aligned: the camera stands
                     still, the head moves inside it), every tick's frame cropped to
                     size x size and kept as JPEG in one file (random access, bounded memory)
    reference        the tick an avatar is made from (models.recording.pick_source_frame)
                     and its full Avatar (models.avatar.build_avatar)
    motion           every tick's motion against the reference (fit_clip_motion)
    turning points   ping-pong playback over the calmest PLAY_SECONDS of the range (the
                     least mouth activity; a laugh in it left out where that leaves at
                     least half), between two still ticks near its ends
    mouth at rest    each played tick whose mouth moved, with its mouth motion undone by the
                     renderer (all but a smile held for a second or more: held_smile) and
                     the nearest closed ticks' lips laid over it
                     (models.mouth_rest: a warp cannot close an open mouth), the window
                     around the mouth kept as JPEG beside the recording
    mouth fields     each played tick's own expression fields for the mouth at rest (stored,
                     float16: playback then needs ~5 ms a frame besides the render, not ~20)
    mouth bank       a few frontal ticks with the mouth open, from barely to widest
                     (models.mouth_bank): the person's own teeth, tongue and dark

Playback (VideoPlayback, one per session): session frame t shows the recorded tick
`tick_at(t)`, going back and forth between the turning points (the head slows to a stop
there, so reversing is not seen as a jump), with its mouth at rest (VideoAvatar.shown). Its
mouth is brought to the generated state: the tick's crop and landmarks become an Avatar
(frame_avatar: its own expression fields, the reference's colours) rendered with a motion
that changes only the mouth, by (generated - shown; the held smile the tick keeps at rest
stays, and the generated stretch of the lips adds to it), its opening kept within the widest the
recording opens the mouth (models.mouth_reach). Where the two already agree the crop is
shown as it is. With the head as recorded, only a window around the mouth is drawn
(mouth_window) and pasted into the crop. Where the generated lips part, the opening is
filled from the mouth bank entry that parts them most alike. The recording's own sound is
never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import motion_space as ms
from models import video_cache, warp
from models.avatar import (
    EYE_LINE,
    FACE_FRACTION,
    MIN_FACE_WIDTH,
    SIZES,
    Avatar,
    AvatarWindow,
    build_avatar,
    cache_root,
)
from models.face import PortraitError, detect_faces
from models.face_track import (
    LOST,
    TrackConfig,
    VideoInputError,
    on_ticks,
    probe,
    read_frames,
    track_faces,
)
from models.hands import HAND_REACH, covered, find_hands
from models.mouth_bank import MouthBank, build_bank, choose_entries, fill_opening
from models.mouth_reach import mouth_reach
from models.mouth_rest import closed_inner_lips, closed_neighbours, lay_closed_lips, lips_closed
from models.recording import (
    FPS,
    LOOK_GRID,
    RecordingError,
    appearance_samples,
    deviation_from_usual,
    fit_clip_motion,
    pick_source_frame,
    source_measures,
    ticks_onto_frames,
)

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".m4v", ".avi")
MIN_SECONDS = 2.0              # the face must be seen this long in a row (10 s+ recommended)
MAX_SECONDS = 300.0            # default limit on a clip's length
MAX_PIXELS = 3840 * 2160       # default limit on a frame's size
MAX_BYTES = 500 << 20          # default limit on the file's size
JPEG_QUALITY = 95
MAX_GAP = 0.3                  # seconds without a face that are bridged (as the training data)
TRACK_MIN_FACE = 24.0          # faces down to this width are tracked (working pixels), so that
                               #   a clip of small faces is refused as such, not as "no face"
TURN_SEARCH = 0.15             # turning points are searched in this share at each end
PLAY_SECONDS = 30.0            # playback goes back and forth over the calmest stretch this long
MAX_FACE_SHARE = 0.6           # face width / crop side at most (the renderer's mouth window);
                               #   a closer recording is refused, never padded
HAND_EVERY = 2                 # ticks between looks for a hand (a hand takes longer to pass)
HAND_COVERS = 0.1              # share of the lower face under a hand: that tick is hidden
HAND_MARGIN = 3                # ticks either side of a hidden one are left out too
HAND_BRIDGE = 25               # hidden ticks this close: the ones between are hidden too (the
                               #   hand detector misses a hand in some frames)
LOWER_FACE = (*range(4, 13), 35, 33, 31)   # the jaw line and the nose's base: what the mouth
                                           #   moves (68-point layout)
SECOND_FACE = 0.6              # another face this large (share of the main face's width):
                               #   two people
MOUTH = [ms.index(n) for n in ms.MOUTH]
WIDE = ms.index("mouth_wide")
LAUGH = 0.6                    # a held smile (held_smile) this broad is a laugh: playback
LAUGH_KEEP = 0.5               #   keeps out of it where that leaves this share of the range
SMILE_HOLD = 25                # ticks: mouth_wide held this long (its running median) is a
                               #   smile, kept when the mouth is brought to rest (held_smile)
POSE = [ms.index(n) for n in ms.POSE]
HEAD_MOTION_STYLE = "video_head_motion"    # a session style control: see VideoPlayback
MOUTH_FIELDS = [ms.EXPRESSION.index(ms.NAMES[i]) for i in MOUTH]   # their expression rows
UNCHANGED = 0.02               # a mouth change below this (every parameter): no render
WINDOW = {512: 384, 256: 192}  # side of the window drawn around the mouth (mouth_window): a
                               #   multiple of the coarse grid's step, ~0.56 of the frame
WINDOW_REACH = 1.5             # face widths the window must span: the mouth fields move pixels
                               #   > 0.5 px up to 0.7 face widths either side of the mouth,
                               #   0.4 above and 0.65 below it (franck.mp4, full amplitude)
WINDOW_DROP = 0.11             # the window's centre this far below the mouth's (face widths)
WINDOW_FADE = 3                # coarse nodes over which the mouth fields fade out at its edges
PREP_VERSION = 20              # bump when preparation changes: old cache entries are ignored


class VideoAvatarError(PortraitError):
    """A clip that cannot be made into an avatar; the message says why, in plain words."""


class VideoTooLargeError(VideoAvatarError):
    """A clip over one of the limits (bytes, pixels, seconds)."""


@dataclass(frozen=True)
class VideoLimits:
    max_seconds: float = MAX_SECONDS
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES
    min_seconds: float = MIN_SECONDS


def is_video(path) -> bool:
    """Whether a path names a video avatar (by its suffix)."""
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() in VIDEO_SUFFIXES


# ---------------------------------------------------------------------------------------------
# The prepared clip
# ---------------------------------------------------------------------------------------------

@dataclass
class VideoAvatar:
    """A prepared recording. Ticks are the 25 fps frames of the longest stretch that shows
    the face, 0..F-1; playback uses those between the turns."""
    folder: Path                 # the cache entry: frames.jpg, ticks.npz, fields.npy,
                                 #   reference.npz, info.json
    reference: Avatar            # the avatar of the reference tick (its crop, fields)
    reference_tick: int
    landmarks: np.ndarray        # [F, 68, 2] crop pixels, smoothed over time
    motion: np.ndarray           # [F, D] fitted against the reference's landmarks
    offsets: np.ndarray          # [F + 1] byte offsets of each tick's JPEG in frames.jpg
    turns: tuple[int, int]       # ping-pong between these ticks
    fields: np.ndarray           # [P, 2, M, 2, h, w] float16, memory-mapped: mouth_fields of
                                 #   the P = turns[1] - turns[0] + 1 played ticks, at rest
    rest_offsets: np.ndarray     # [P + 1] byte offsets in rest.jpg of the windows around the
                                 #   played ticks' mouths at rest (an empty entry: the recorded
                                 #   crop, its mouth did not move)
    rest_origins: np.ndarray     # [P, 2] each window's top-left pixel (x, y) in the crop
    rest_landmarks: np.ndarray   # [P, 68, 2] their landmarks at rest
    rest_mouth: np.ndarray       # [P, len(MOUTH)] their mouth motion at rest (0 where closed)
    info: dict                   # what preparation found (for people: clip, range, timings)
    bank: MouthBank | None = None  # the person's own open mouths (models.mouth_bank)

    @property
    def size(self) -> int:
        return self.reference.size

    @property
    def ticks(self) -> int:
        return len(self.motion)

    def tick_at(self, frame: int) -> int:
        """The recorded tick shown at session frame `frame` (ping-pong between the turns)."""
        a, b = self.turns
        span = b - a
        if span <= 0:
            return a
        u = frame % (2 * span)
        return a + u if u < span else b - (u - span)

    def tick_crop(self, tick: int) -> np.ndarray:
        """A tick's crop [S, S, 3] uint8."""
        return _read_jpeg(self.folder / "frames.jpg", self.offsets, tick)

    def crop(self) -> np.ndarray:
        """The reference tick's crop (what a list of avatars shows, as Avatar.crop)."""
        return self.tick_crop(self.reference_tick)

    def mouth_flow(self, tick: int) -> np.ndarray | None:
        """The tick's stored mouth_fields at rest (every tick between the turns), else None."""
        k = tick - self.turns[0]
        if not 0 <= k < len(self.fields):
            return None
        return np.asarray(self.fields[k], np.float32)

    def shown(self, tick: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What playback draws tick `tick` from: its crop [S, S, 3] uint8, landmarks [68, 2]
        and mouth motion [len(MOUTH)], at rest (models.mouth_rest) between the turns, else
        as recorded."""
        k = tick - self.turns[0]
        if not 0 <= k < len(self.rest_landmarks):
            return self.tick_crop(tick), self.landmarks[tick], self.motion[tick, MOUTH]
        crop = np.array(self.tick_crop(tick))
        if self.rest_offsets[k + 1] > self.rest_offsets[k]:
            window = _read_jpeg(self.folder / "rest.jpg", self.rest_offsets, k)
            x0, y0 = self.rest_origins[k]
            crop[y0:y0 + window.shape[0], x0:x0 + window.shape[1]] = window
        return crop, self.rest_landmarks[k], self.rest_mouth[k]


def mouth_fields(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The expression fields of a recorded frame (landmarks [68, 2]) for the mouth's
    parameters only: [2, M, 2, h, w] float16 (models.warp.expression_fields' layout; the
    frame's own: they must sit on its lips, the reference's carried over by the similarity
    between the faces were 15-45 % off on the development clip). ~11 ms at 512 px, so
    preparation stores them for the ticks playback uses (VideoAvatar.mouth_flow)."""
    place = ms.place(landmarks)
    face = np.concatenate([place.to_canonical(landmarks), ms.CANONICAL[:, 2:]], 1)
    flow, _ = warp.expression_fields(face, ms.personal_basis(face), place, size)
    return flow[:, MOUTH_FIELDS].astype(np.float16)


def mouth_window(landmarks: np.ndarray, size: int) -> tuple[int, int] | None:
    """Where the window drawn around a recorded frame's mouth (landmarks [68, 2]) lies: its
    top-left pixel (x, y), on the coarse grid, inside the frame; None when the face is too
    large for it (the whole frame is drawn then)."""
    side = WINDOW.get(size)
    width = ms.place(landmarks).scale
    if side is None or WINDOW_REACH * width > side:
        return None
    step = size // warp.COARSE
    centre = landmarks[60:68].mean(0) + np.array([0.0, WINDOW_DROP * width])
    origin = np.clip(np.round((centre - side / 2) / step) * step, 0, size - side)
    return int(origin[0]), int(origin[1])


def _fade(start: int, cells: int, coarse: int) -> np.ndarray:
    """Weights [cells] along one axis of a window starting at coarse node `start`: 0 at an
    edge inside the frame, rising to 1 over WINDOW_FADE nodes (1 at the frame's own edge)."""
    ramp = np.ones(cells, np.float32)
    rise = warp.smoothstep(0.0, float(WINDOW_FADE), np.arange(WINDOW_FADE, dtype=np.float32))
    if start > 0:
        ramp[:WINDOW_FADE] = rise
    if start + cells < coarse:
        ramp[-WINDOW_FADE:] = np.minimum(ramp[-WINDOW_FADE:], rise[::-1])
    return ramp


def frame_avatar(reference: Avatar, crop: np.ndarray, landmarks: np.ndarray,
                 mouth_flow: np.ndarray | None = None,
                 window: tuple[int, int] | None = None) -> Avatar:
    """The render state of one recorded frame: its crop [S, S, 3] uint8 and landmarks [68, 2].
    Its own landmark basis and mouth fields (mouth_fields, or `mouth_flow` stored by
    preparation; every other expression field zero: only the mouth changes); the reference's
    depth and head mask carried over by the similarity between the faces (the head does not
    move here, so they only have to be plausible); colours and lid heights the reference's.
    The eyes are left as recorded (blinks come from the recording), so the eyelid textures
    are the crop itself; matte 1 and the crop as plate: with no head motion the frame is the
    crop wherever the mouth does not change.

    An AvatarWindow, its overlays sized for the frame S whatever the face's width (a close
    face is not a close-up here: Avatar.frame_size; only the mouth is drawn, MAX_FACE_SHARE).
    With `window` (mouth_window's origin) it is one of WINDOW[S] pixels around the mouth: the
    fields cut to it and faded out towards its edges inside the frame, so that the drawn
    window, pasted back into the crop, meets it without a seam (~2x less to draw at 512 px).
    """
    size = crop.shape[0]
    place = ms.place(landmarks)
    face = np.concatenate([place.to_canonical(landmarks), ms.CANONICAL[:, 2:]], 1)
    basis = ms.personal_basis(face)
    if mouth_flow is None:
        mouth_flow = mouth_fields(landmarks, size)
    coarse = reference.flow.shape[-1]
    step = size // coarse
    x0, y0 = window or (0, 0)
    side = WINDOW[size] if window else size
    cells = side // step
    cx, cy = x0 // step, y0 // step
    flow = np.zeros((2, len(ms.EXPRESSION), 2, cells, cells), np.float32)
    flow[:, MOUTH_FIELDS] = mouth_flow[..., cy:cy + cells, cx:cx + cells]
    if window:
        flow *= _fade(cy, cells, coarse)[:, None] * _fade(cx, cells, coarse)[None, :]
    jacobian = warp.field_jacobian(flow, side).astype(np.float32)
    expression = [ms.index(n) for n in ms.EXPRESSION]

    ref_place = ms.place(reference.landmarks.numpy())
    a = place.matrix() @ np.linalg.inv(ref_place.matrix())                # ref -> this, [2, 2]
    c = place.offset - a @ ref_place.offset
    centres = (np.arange(cells) + 0.5) * step - 0.5
    gx, gy = np.meshgrid(centres + x0, centres + y0)
    nodes = np.stack([gx, gy], -1).reshape(-1, 2)                          # [Q, 2] frame px
    pulled = torch.from_numpy(((nodes - c) @ np.linalg.inv(a).T).astype(np.float32))

    def carry(field: torch.Tensor) -> torch.Tensor:
        """field [1, C, h, w] looked up at the pulled-back nodes -> [1, C, cells, cells]."""
        return warp.sample(field, pulled[None], size).reshape(1, -1, cells, cells)

    scale = float(np.sqrt(abs(np.linalg.det(a))))
    rotation = torch.from_numpy((a / scale).astype(np.float32))
    depth = carry(reference.depth)                                         # [1, 3, h, w]
    slopes = torch.einsum("ij,njhw->nihw", rotation, depth[:, 1:])         # turned with it
    cut = crop[y0:y0 + side, x0:x0 + side]
    image = torch.from_numpy(np.ascontiguousarray(cut.transpose(2, 0, 1))).float()
    shift = np.array([x0, y0], np.float32)
    cos, sin = np.cos(place.angle), np.sin(place.angle)
    pivot = place.to_image(ms.PIVOT[:2]) - shift
    tensors = dict(
        image=image,
        landmarks=torch.from_numpy((landmarks - shift).astype(np.float32)),
        landmark_depth=torch.from_numpy((ms.CANONICAL[:, 2] * place.scale).astype(np.float32)),
        basis=torch.from_numpy((basis[expression, :, :2] @ place.matrix().T).astype(np.float32)),
        flow=torch.from_numpy(flow),
        flow_jacobian=torch.from_numpy(jacobian),
        depth=torch.cat([depth[:, :1] * scale, slopes], 1).contiguous(),
        head_mask=carry(reference.head_mask),
        face_rotation=torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float32),
        pivot=torch.tensor([pivot[0], pivot[1], ms.PIVOT[2] * place.scale], dtype=torch.float32),
        face_width=torch.tensor(place.scale, dtype=torch.float32),
        colors=reference.colors,
        lid_skin=reference.lid_skin,
        smooth_image=image,
        plate=image,
        matte=_ones(side),
        own_mouth=image,
        own_lips=torch.from_numpy((landmarks[60:68] - shift).astype(np.float32)),
    )
    return AvatarWindow(size, **tensors)


_ONES: dict[int, torch.Tensor] = {}


def _ones(size: int) -> torch.Tensor:
    """A matte of ones [1, S, S], made once per size (never written to)."""
    if size not in _ONES:
        _ONES[size] = torch.ones(1, size, size)
    return _ONES[size]


def mouth_change(generated: np.ndarray, recorded: np.ndarray) -> np.ndarray:
    """The motion [N, D] that brings recorded frames' mouths (their fitted motion [N, D]) to
    the generated ones [N, D]: the mouth parameters' difference, everything else zero (head
    and eyes stay as recorded; VideoPlayback may add some generated head motion)."""
    change = np.zeros_like(generated, dtype=np.float32)
    change[:, MOUTH] = generated[:, MOUTH] - recorded[:, MOUTH]
    return change


class VideoPlayback:
    """One session's view of a video avatar (see the module doc). `head_motion` (0..1, the
    session's style control HEAD_MOTION_STYLE) adds that share of the generated head motion
    to the recording's own (the background then moves with the head: a recorded frame has
    no plate behind the person)."""

    def __init__(self, avatar: VideoAvatar, head_motion: float = 0.0):
        self.avatar = avatar
        self.head_motion = head_motion
        self.reach = mouth_reach(avatar.landmarks)   # how wide this person opens their mouth
        self.rendered = 0          # frames that needed the renderer (the rest: the crop)

    def frames(self, engine, index: np.ndarray, motion: np.ndarray) -> np.ndarray:
        """Frames [N, S, S, 3] uint8 for session frames index [N] with the generated motion
        [N, D]; engine.render(avatar, motion) draws the ones whose mouth changes (the window
        around the mouth where engine.draws_windows(size))."""
        v = self.avatar
        ticks = [v.tick_at(int(k)) for k in index]
        shown = [v.shown(tick) for tick in ticks]           # (crop, landmarks, mouth) each
        recorded = v.motion[ticks].copy()
        recorded[:, MOUTH] = [mouth for _, _, mouth in shown]
        target = np.array(motion, np.float32)       # the generated stretch on the held smile
        target[:, WIDE] = np.clip(target[:, WIDE] + recorded[:, WIDE], ms.LOW[WIDE], ms.HIGH[WIDE])
        change = mouth_change(target, recorded)
        change[:, POSE] = self.head_motion * np.asarray(motion, np.float32)[:, POSE]
        out = np.empty((len(motion), v.size, v.size, 3), np.uint8)
        # the head as recorded: only a window around the mouth changes
        windowed = not change[:, POSE].any() and engine.draws_windows(v.size)
        for k, (tick, (crop, landmarks, _)) in enumerate(zip(ticks, shown, strict=True)):
            out[k] = crop
            change[k] = self.reach.limit(change[k], landmarks)
            if np.abs(change[k]).max() < UNCHANGED:
                continue
            window = mouth_window(landmarks, v.size) if windowed else None
            avatar = frame_avatar(v.reference, crop, landmarks, v.mouth_flow(tick), window)
            drawn = engine.render(avatar, change[k:k + 1])[0]
            x0, y0 = window or (0, 0)
            out[k, y0:y0 + drawn.shape[0], x0:x0 + drawn.shape[1]] = drawn
            if v.bank is not None:
                lips = ms.landmarks(landmarks, change[k])[60:68]
                fill_opening(out[k], lips, v.bank)
            self.rendered += 1
        return out


# ---------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------

Progress = Callable[[str, float], None]    # (stage, fraction of the whole preparation 0..1)


@dataclass(frozen=True)
class ClipBox:
    """An axis-aligned square of the (working-size) frames: left, top, side in pixels."""
    left: float
    top: float
    side: float

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Frame pixels (centres at integers) -> crop pixels."""
        origin = np.array([self.left, self.top])
        return (np.asarray(points, np.float64) + 0.5 - origin) * (size / self.side) - 0.5

    def cut(self, image: np.ndarray, size: int) -> np.ndarray:
        """The box resampled to [size, size, 3] uint8 (bicubic, box-filtered when shrinking);
        beyond the frame's edge its edge pixels are repeated."""
        from PIL import Image

        h, w = image.shape[:2]
        pad = int(np.ceil(max(0.0, -self.left, -self.top, self.left + self.side - w,
                              self.top + self.side - h)))
        if pad:
            image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        box = (self.left + pad, self.top + pad, self.left + pad + self.side,
               self.top + pad + self.side)
        return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box,
                                                        reducing_gap=2.0))


def clip_box(landmarks: np.ndarray, width: int, height: int) -> ClipBox:
    """One box for the whole clip from its ticks' landmarks [T, 68, 2] (frame pixels): the
    face's median width FACE_FRACTION of the side, or as much of it as the frame holds (the
    box never leaves the frame: padding would show as smears below a moving head), the
    eyes' median midpoint at EYE_LINE height, kept inside the frame. Raises VideoAvatarError
    when the face fills more than MAX_FACE_SHARE of the largest square the frame holds."""
    places = [ms.place(lm) for lm in landmarks]
    scale = float(np.median([p.scale for p in places]))
    eyes = np.median([p.offset for p in places], axis=0)
    side = min(scale / FACE_FRACTION, float(min(width, height)))
    if scale / side > MAX_FACE_SHARE:
        raise VideoAvatarError(
            f"the face fills the frame ({scale / side:.0%} of its height): record from a little "
            "further away, with the shoulders in the picture")
    centre = eyes + np.array([0.0, (0.5 - EYE_LINE) * side])
    left = float(np.clip(centre[0] - side / 2, 0.0, width - side))
    top = float(np.clip(centre[1] - side / 2, 0.0, height - side))
    return ClipBox(left, top, side)


def longest_run(status: np.ndarray, track: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the longest run of ticks with the one face (not LOST, same track)."""
    best, k, T = (0, 0), 0, len(status)
    while k < T:
        if status[k] == LOST:
            k += 1
            continue
        start = k
        while k < T and status[k] != LOST and track[k] == track[start]:
            k += 1
        if k - start > best[1] - best[0]:
            best = (start, k)
    return best


def longest_without(mask: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the longest run of ticks where mask [T] (bool) is False."""
    return longest_run(np.where(mask, LOST, 0), np.zeros(len(mask), int))


def turning_points(measures: dict, start: int, stop: int) -> tuple[int, int]:
    """Two ticks of the run [start, stop) to play back and forth between: in its first and
    last TURN_SEARCH, where the face is stillest with its eyes open (a turn in mid blink or
    mid movement would show). measures: models.recording.source_measures of all ticks."""
    T = stop - start
    if T < 4:
        return start, stop - 1
    reach = max(1, int(TURN_SEARCH * T))
    eyes = np.minimum(measures["eye_left"], measures["eye_right"])[start:stop]
    shut = np.maximum(np.nanpercentile(eyes, 90) - eyes, 0.0)
    cost = np.nan_to_num(measures["speed"][start:stop] / 0.01 + shut / 0.05, nan=1e9)
    a = int(np.argmin(cost[:reach]))
    b = T - reach + int(np.argmin(cost[T - reach:]))
    return start + a, start + b


def without_laughs(smile: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    """The longest stretch of [start, stop) with no laugh in it (a held smile, smile [T] from
    held_smile, of LAUGH or more, and SMILE_HOLD / 2 ticks either side, where it builds up and
    fades), or all of [start, stop) when that would keep less than LAUGH_KEEP of it. A laugh
    played under a generated mouth is a laughing face that speaks: its eyes and cheeks stay
    while the mouth says something else (franck.mp4 laughs for 3 s at the start of his first
    20 s, the farthest frames from him by a face recognition network)."""
    laughing = np.zeros(stop - start, bool)
    for k in np.flatnonzero(smile[start:stop] >= LAUGH):
        laughing[max(k - SMILE_HOLD // 2, 0): k + SMILE_HOLD // 2 + 1] = True
    a, b = longest_without(laughing)
    if b - a < LAUGH_KEEP * (stop - start):
        return start, stop
    return start + a, start + b


def calmest(motion: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    """The stretch of PLAY_SECONDS (or all of [start, stop) if shorter) whose mouth is
    calmest: the least mean |mouth parameters| of the fitted motion [T, D] (the reference
    frame's mouth is 0). What the recording's mouth does is undone frame by frame, but
    what comes with it (a laugh's cheeks, a smile's creases) is not, so playback keeps to
    the part where the person is quietest."""
    length = min(stop - start, int(PLAY_SECONDS * FPS))
    busy = np.abs(motion[start:stop][:, MOUTH]).sum(1)
    window = np.convolve(busy, np.ones(length), mode="valid")             # [T - length + 1]
    first = start + int(np.argmin(window))
    return first, first + length


def hidden_mouths(shares: np.ndarray, looked: np.ndarray) -> np.ndarray:
    """Ticks [T] bool whose mouth a hand hides: the share of the lower face under a hand,
    shares [T], known where `looked` [T] (every HAND_EVERY-th tick), above HAND_COVERS at
    the nearest look, gaps of up to HAND_BRIDGE ticks between such ticks filled, widened by
    HAND_MARGIN ticks either side."""
    seen = np.flatnonzero(looked)
    nearest = seen[np.clip(np.searchsorted(seen, np.arange(len(shares))), 0, len(seen) - 1)]
    before = seen[np.clip(np.searchsorted(seen, np.arange(len(shares))) - 1, 0, len(seen) - 1)]
    hidden = (shares[nearest] > HAND_COVERS) | (shares[before] > HAND_COVERS)
    at = np.flatnonzero(hidden)
    for a, b in zip(at[:-1], at[1:], strict=True):     # the hand was there in between too
        if b - a <= HAND_BRIDGE:
            hidden[a:b] = True
    widened = hidden.copy()
    for shift in range(1, HAND_MARGIN + 1):
        widened[shift:] |= hidden[:-shift]
        widened[:-shift] |= hidden[shift:]
    return widened


def _file_key(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(repr((size, PREP_VERSION)).encode() + ms.BASIS.tobytes()
                  + ms.CANONICAL.tobytes())
    return digest.hexdigest()[:32]


def video_cache_dir() -> Path:
    """Where prepared video avatars are kept: cache_root()/videos."""
    return cache_root() / "videos"


def prepare_video_avatar(path, size: int = 512, *, limits: VideoLimits = VideoLimits(),
                         progress: Progress | None = None) -> VideoAvatar:
    """A recording (path) -> VideoAvatar at size x size (512 or 256); see the module doc.
    Raises VideoAvatarError (a PortraitError) with a plain message; nothing half-written
    stays in the cache."""
    if size not in SIZES:
        raise ValueError(f"working size must be one of {SIZES}, got {size}")
    path = Path(path)
    if path.is_dir():
        raise VideoAvatarError(f"{path.name}: is a folder, not a video")
    if not path.is_file():
        raise VideoAvatarError(f"{path.name}: no such file")
    if path.stat().st_size > limits.max_bytes:
        raise VideoTooLargeError(
            f"the video is {path.stat().st_size / 2**20:.0f} MB; the limit is "
            f"{limits.max_bytes / 2**20:.0f} MB")
    return cached_video_avatar(_file_key(path, size), lambda work: _prepare(
        path, size, limits, work, progress or (lambda stage, done: None)))


def cached_video_avatar(key: str, fill: Callable[[Path], None]) -> VideoAvatar:
    """The video avatar cached under `key` (video_cache_dir()/key); when it is not there,
    `fill(work)` writes its files into a work folder beside it, renamed into place once
    complete: nothing half-written is ever under `key`, and a failure removes the work."""
    loaded = load_video_avatar(video_cache_dir() / key)
    if loaded is not None:
        return loaded
    folder = video_cache_dir() / key
    video_cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=video_cache_dir()))
    try:
        fill(work)
        try:
            os.replace(work, folder)
        except OSError:                   # another process made it meanwhile
            shutil.rmtree(work, ignore_errors=True)
        avatar = load_video_avatar(folder)
        if avatar is None:
            raise VideoAvatarError("the prepared video avatar could not be read back")
        return avatar
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _prepare(path: Path, size: int, limits: VideoLimits, work: Path, progress: Progress) -> dict:
    """The preparation itself (see the module doc), written into the folder `work`."""
    started = time.perf_counter()
    try:
        clip = probe(path)
    except VideoInputError as e:
        raise VideoAvatarError(str(e)) from None
    if clip.width * clip.height > limits.max_pixels:
        raise VideoTooLargeError(
            f"the video is {clip.width}x{clip.height}; the limit is "
            f"{limits.max_pixels / 1e6:.1f} megapixels")
    if clip.duration > limits.max_seconds + 1.0:
        raise VideoTooLargeError(
            f"the video is {clip.duration:.0f} s long; the limit is {limits.max_seconds:.0f} s: "
            "use a shorter clip (10 s to a few minutes is plenty)")
    duration = clip.duration or limits.max_seconds
    config = TrackConfig(max_side=960, min_face=TRACK_MIN_FACE)

    # 1. track the face (frames read at the tracker's working size)
    problems: list[str] = []
    count = [0]
    first_frame = None

    def frames():
        nonlocal first_frame
        for frame in read_frames(path, config, problems):
            first_frame = first_frame or frame
            if frame.time > limits.max_seconds + 1.0:
                raise VideoTooLargeError(f"the video is longer than the limit of "
                                       f"{limits.max_seconds:.0f} s")
            count[0] += 1
            yield frame

    def tracked(seconds: float) -> None:
        progress("tracking the face", 0.6 * min(1.0, tracked.done / duration))
        tracked.done += seconds
    tracked.done = 0.0
    try:
        track = track_faces(frames(), config, fps=clip.fps or FPS, progress=tracked)
    except VideoInputError as e:
        raise VideoAvatarError(str(e)) from None
    if problems:
        raise VideoAvatarError(f"the video is damaged or truncated: {problems[0]}")
    if count[0] < 2:
        raise VideoAvatarError("the file holds a single picture, not a video: use it as a "
                               "photo avatar, or give a recording")
    if not track.found.any():
        raise VideoAvatarError(f"no face found in any of the {count[0]} frames: use a clip of "
                               "one person facing the camera")
    frame_times = track.times - track.frame_interval / 2
    end = frame_times[-1] + track.frame_interval
    tick_frames = ticks_onto_frames(frame_times, 0.0, end)
    ticks = on_ticks(track, track.times[tick_frames], MAX_GAP)
    start, stop = longest_run(ticks.status, ticks.track)
    if (stop - start) / FPS < limits.min_seconds:
        seen = (stop - start) / FPS
        raise VideoAvatarError(
            f"the face is seen for at most {seen:.1f} s in a row (it leaves the frame, is "
            f"hidden, or the clip is short); at least {limits.min_seconds:g} s is needed")
    tick_frames, tick_landmarks = tick_frames[start:stop], ticks.landmarks[start:stop]
    scale = first_frame.scale                       # working pixels per source pixel
    height, width = first_frame.image.shape[:2]
    box = clip_box(tick_landmarks * scale, width, height)
    landmarks = box.to_crop(tick_landmarks * scale, size).astype(np.float64)   # [F, 68, 2]
    measures = source_measures(landmarks)
    if np.nanmedian(measures["width"]) * box.side / size < MIN_FACE_WIDTH:
        raise VideoAvatarError(
            f"the face is too small: {np.nanmedian(measures['width']) * box.side / size:.0f} px "
            f"wide, at least {MIN_FACE_WIDTH} px is needed: use a closer or larger video")

    # 2. crop every tick, look for a second person, note the appearance near the face
    progress("cropping", 0.6)
    offsets = [0]
    every = 5                                       # appearance on every 5th tick
    samples = np.full((len(tick_frames), len(LOOK_GRID)), np.nan, np.float32)
    shares = np.zeros(len(tick_frames))                 # lower face under a hand
    looked = np.arange(len(tick_frames)) % HAND_EVERY == 0
    people = []
    check = set(np.linspace(0, len(tick_frames) - 1, 5).round().astype(int).tolist())
    wanted = {}
    for k, f in enumerate(tick_frames):
        wanted.setdefault(int(f), []).append(k)
    with open(work / "frames.jpg", "wb") as out:
        for index, frame in enumerate(read_frames(path, config)):
            if index > tick_frames[-1]:
                break
            for k in wanted.get(index, ()):
                crop = box.cut(frame.image, size)
                out.write(_jpeg(crop))
                offsets.append(out.tell())
                if k % every == 0:
                    samples[k] = appearance_samples(crop, landmarks[k])
                if looked[k]:       # in the whole frame: a hand cut off by the crop is
                    hands = [box.to_crop(h.hull(), size) for h in find_hands(frame.image)
                             if h.reach() >= HAND_REACH]
                    shares[k] = covered(hands, landmarks[k][list(LOWER_FACE)])  # missed
                if k in check:
                    people.append(_second_face(frame.image, tick_landmarks[k] * scale))
                if k % 25 == 0:
                    progress("cropping", 0.6 + 0.3 * k / len(tick_frames))
    if len(offsets) != len(tick_frames) + 1:
        raise VideoAvatarError("the video changed while it was read")
    second = [p for p in people if p is not None]
    if len(second) > len(people) // 2:
        raise VideoAvatarError(
            f"two people are in the clip (another face {max(second):.0%} as wide as the main "
            "one): use a clip of one person")

    # 3. playback stays where no hand hides the mouth
    hidden = hidden_mouths(shares, looked)
    play = longest_without(hidden)
    if (play[1] - play[0]) / FPS < limits.min_seconds:
        raise VideoAvatarError(
            f"a hand covers the mouth too often: the longest stretch without is "
            f"{(play[1] - play[0]) / FPS:.1f} s; at least {limits.min_seconds:g} s is needed")

    # 4. the reference tick and its avatar, motion of every tick against it
    progress("building the avatar", 0.9)
    appearance = deviation_from_usual(samples)
    playable = np.arange(*play)
    try:
        pick = pick_source_frame(landmarks, playable[np.isfinite(appearance[playable])],
                                 appearance=appearance)
    except (RecordingError, PortraitError):
        try:
            pick = pick_source_frame(landmarks, playable)
        except RecordingError as e:
            raise VideoAvatarError(str(e)) from None
    offsets = np.array(offsets, np.int64)
    reference_crop = _read_jpeg(work / "frames.jpg", offsets, pick.index)
    reference = build_avatar(reference_crop, landmarks[pick.index].astype(np.float32))
    motion = fit_clip_motion(landmarks, landmarks[pick.index])
    reference.colors[2] = torch.from_numpy(own_teeth(work / "frames.jpg", offsets, landmarks,
                                                     motion, playable, reference))
    banked = choose_entries(landmarks, motion, playable)
    bank = build_bank((_read_jpeg(work / "frames.jpg", offsets, t) for t in banked),
                      landmarks[banked])
    smoothed = _smooth_landmarks(landmarks)
    smile = held_smile(motion[:, WIDE])
    turns = turning_points(measures, *without_laughs(smile, *calmest(motion, *play)))
    info = {
        "clip": path.name, "size": size, "width": clip.width, "height": clip.height,
        "fps": clip.fps, "duration_s": round(float(clip.duration), 2),
        "range_s": [round(float(frame_times[tick_frames[0]]), 2),
                    round(float(frame_times[tick_frames[-1]]), 2)],
        "ticks": int(len(tick_frames)), "reference_tick": int(pick.index),
        "turns": [int(turns[0]), int(turns[1])],
        "hand_over_mouth_ticks": int(hidden.sum()),
        "mouth_bank_ticks": banked.tolist(),
        "box": [box.left / scale, box.top / scale, box.side / scale],
    }
    # 5. the played ticks' mouths at rest, and their fields
    progress("the mouth at rest", 0.92)
    played = range(turns[0], turns[1] + 1)
    fields = np.lib.format.open_memmap(work / "fields.npy", "w+", np.float16,
                                       (len(played), 2, len(MOUTH), 2, *reference.flow.shape[-2:]))
    rest_landmarks = smoothed[played.start:played.stop].astype(np.float32)
    rest_mouth = motion[played.start:played.stop][:, MOUTH].astype(np.float32)
    rest_offsets, rest_origins = [0], np.zeros((len(played), 2), np.int32)
    # the lips laid over each come from the closed ticks nearest in time (the light and the
    # lips' look drift over a recording), faded from one to the next; else the reference's
    closed = np.zeros(len(smoothed), bool)
    closed[playable] = lips_closed(smoothed[playable], motion[playable])
    decoded: dict[int, np.ndarray] = {}

    def closed_lips(tick: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
        near = dict(closed_neighbours(closed, tick) or [(pick.index, 1.0)])
        for t in [t for t in decoded if t not in near]:          # ticks only go forward
            del decoded[t]
        for t in near:
            if t not in decoded:
                decoded[t] = _read_jpeg(work / "frames.jpg", offsets, t)
        return [(decoded[t], smoothed[t], share) for t, share in near.items()]

    def at_rest(tick: int) -> tuple[bytes, tuple[int, int], np.ndarray, np.ndarray]:
        """(the JPEG of the window around the tick's mouth at rest, or b"" where its mouth
        did not move; that window's origin; its landmarks at rest; its mouth fields)"""
        undone = _to_undo(motion[tick], smile[tick])
        if np.abs(undone[MOUTH]).max() < UNCHANGED:
            return b"", (0, 0), smoothed[tick], mouth_fields(smoothed[tick], size)
        rest = landmarks_at_rest(smoothed[tick], undone)
        flow = mouth_fields(rest, size)
        window, origin = mouth_at_rest(reference, closed_lips(tick),
                                       _read_jpeg(work / "frames.jpg", offsets, tick),
                                       smoothed[tick].astype(np.float32), undone,
                                       rest, flow)
        return _jpeg(window), origin, rest, flow

    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # small tensors: 1.6x faster than with two threads
    try:
        with open(work / "rest.jpg", "wb") as out:
            for k, tick in enumerate(played):
                data, rest_origins[k], rest_landmarks[k], fields[k] = at_rest(tick)
                if data:
                    out.write(data)
                    rest_mouth[k] = 0.0
                    rest_mouth[k, MOUTH.index(WIDE)] = smile[tick]
                rest_offsets.append(out.tell())
                if k % 25 == 0:
                    progress("the mouth at rest", 0.92 + 0.07 * k / len(played))
    finally:
        torch.set_num_threads(threads)
    fields.flush()
    del fields
    np.savez(work / "ticks.npz", landmarks=smoothed.astype(np.float32),
             motion=motion.astype(np.float32), offsets=offsets,
             turns=np.array(turns), reference_tick=np.array(pick.index),
             rest_offsets=np.array(rest_offsets, np.int64), rest_origins=rest_origins,
             rest_landmarks=rest_landmarks,
             rest_mouth=rest_mouth, **(bank.arrays() if bank is not None else {}))
    np.savez(work / "reference.npz", **reference.arrays())
    info["ticks_at_rest"] = int(np.count_nonzero(np.diff(rest_offsets)))
    info["prepare_s"] = round(time.perf_counter() - started, 2)
    (work / "info.json").write_text(json.dumps(info, indent=1))
    progress("done", 1.0)
    return info


def mouth_at_rest(reference: Avatar, lips: list[tuple[np.ndarray, np.ndarray, float]],
                  crop: np.ndarray, landmarks: np.ndarray, motion: np.ndarray,
                  rest: np.ndarray, rest_flow: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A recorded tick's mouth at rest (see models.mouth_rest): the window around its mouth
    (mouth_window; the whole crop for a face too large) [W, W, 3] uint8 and its origin (x, y)
    in the crop [S, S, 3] uint8, with its mouth motion (of motion [D]) undone by the
    renderer's warp, then closed lips laid over what is left of the opening at the landmarks
    at rest `rest` [68, 2] (landmarks_at_rest): `lips`, other ticks' (crop, landmarks,
    weight), models.mouth_rest.lay_closed_lips; outside the window the crop is unchanged. The warp
    uses the fields at rest, rest_flow (mouth_fields(rest), which playback needs anyway):
    smooth fields, alike either way outside the lips, which the laid lips cover."""
    from models.render import frame_layers, warp_layers

    window = mouth_window(landmarks, crop.shape[0])
    avatar = frame_avatar(reference, crop, landmarks, rest_flow, window)
    with torch.no_grad():         # the warp alone: the eyes do not move, no opening to paint
        offset, _ = frame_layers(*avatar.tensors(), torch.from_numpy(_undo(motion)))
        drawn = warp_layers(avatar.image, offset)[:, 0]                    # [3, W*W]
    side = avatar.image.shape[-1]
    image = crop.copy()
    x0, y0 = window or (0, 0)
    image[y0:y0 + side, x0:x0 + side] = (drawn.t().reshape(side, side, 3) + 0.5).clamp(
        0, 255).to(torch.uint8).numpy()
    lay_closed_lips(image, rest, lips)
    return image[y0:y0 + side, x0:x0 + side], (x0, y0)


def landmarks_at_rest(landmarks: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """A recorded tick's landmarks [68, 2] with its mouth motion (of motion [D]) undone and
    the inner lips touching: where mouth_at_rest puts them."""
    return closed_inner_lips(ms.landmarks(landmarks, _undo(motion)[0])).astype(np.float32)


def held_smile(wide: np.ndarray) -> np.ndarray:
    """The part of each tick's mouth_wide [T] its mouth keeps at rest [T]: a smile held for a
    second or more (the running median over SMILE_HOLD ticks, never more than the tick's own,
    never below 0). Speech's quick stretches and narrowings are undone with the rest of the
    mouth; a held smile undone left its raised cheeks around lips pulled in to neutral (a
    grimace: franck.mp4's laugh, its identity distance 0.40-0.46 raised to 0.47-0.51)."""
    wide = np.asarray(wide, np.float64)
    half = SMILE_HOLD // 2
    padded = np.pad(wide, half, mode="edge")
    running = np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)
    return np.clip(np.minimum(running, wide), 0.0, None).astype(np.float32)


def _to_undo(motion: np.ndarray, smile: float) -> np.ndarray:
    """A tick's motion [D] less the held smile it keeps at rest: the mouth motion to undo."""
    undone = np.array(motion, np.float32)
    undone[WIDE] -= smile
    return undone


def _undo(motion: np.ndarray) -> np.ndarray:
    """The motion [1, D] that undoes the mouth of motion [D]."""
    undo = np.zeros((1, ms.D), np.float32)
    undo[0, MOUTH] = -np.asarray(motion)[MOUTH]
    return undo


def own_teeth(frames: Path, offsets: np.ndarray, landmarks: np.ndarray, motion: np.ndarray,
              ticks: np.ndarray, reference: Avatar) -> np.ndarray:
    """The teeth colour [3] the renderer paints an opening with: the person's own, from the
    tick of `ticks` whose mouth is open widest (jaw_open > 0.1), by whitest_between_lips;
    else the reference's (a shaded ivory from the light on the face)."""
    widest = int(ticks[np.argmax(motion[ticks, ms.index("jaw_open")])])
    if motion[widest, ms.index("jaw_open")] <= 0.1:
        return reference.colors[2].numpy()
    crop = _read_jpeg(frames, offsets, widest)
    teeth = whitest_between_lips(crop, landmarks[widest][60:68])
    return reference.colors[2].numpy() if teeth is None else teeth


def whitest_between_lips(image: np.ndarray, inner: np.ndarray) -> np.ndarray | None:
    """The mean colour [3] of the whitest 15 % of the pixels between the inner lips [8, 2]
    (luminance minus saturation: the lips' edge is as bright but redder): the teeth, where
    the lips part. None where they enclose fewer than 20 pixels."""
    from skimage.draw import polygon

    rows, cols = polygon(inner[:, 1], inner[:, 0], image.shape[:2])
    pixels = image[rows, cols].astype(np.float64)
    if len(pixels) < 20:
        return None
    luminance = pixels @ np.array([0.299, 0.587, 0.114]) / 255.0
    saturation = (pixels.max(1) - pixels.min(1)) / np.maximum(pixels.max(1), 1.0)
    white = luminance - saturation
    return pixels[white >= np.percentile(white, 85)].mean(0).astype(np.float32)


def _second_face(image: np.ndarray, main: np.ndarray) -> float | None:
    """The width of the largest other face in image, as a share of the main face's
    (landmarks main [68, 2] in its pixels), if it is at least SECOND_FACE of it; else None."""
    width = float(np.linalg.norm(main[16] - main[0]))
    centre = ms.place(main).offset
    others = [f for f in detect_faces(image)
              if np.linalg.norm(ms.place(f.landmarks).offset - centre) > 0.5 * width]
    shares = [f.width / width for f in others]
    best = max(shares, default=0.0)
    return best if best >= SECOND_FACE else None


def _smooth_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks [T, 68, 2] through the same 5-tick Savitzky-Golay filter as the motion."""
    from scipy.signal import savgol_filter

    if len(landmarks) < 5:
        return landmarks
    return savgol_filter(landmarks, 5, 2, axis=0, mode="interp")


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    data = io.BytesIO()
    Image.fromarray(image).save(data, "JPEG", quality=JPEG_QUALITY)
    return data.getvalue()


def _read_jpeg(file: Path, offsets: np.ndarray, tick: int) -> np.ndarray:
    from PIL import Image

    with open(file, "rb") as f:
        f.seek(int(offsets[tick]))
        data = f.read(int(offsets[tick + 1] - offsets[tick]))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def load_video_avatar(folder: Path, info: dict | None = None) -> VideoAvatar | None:
    """A prepared clip from its folder, or None when it is missing or unreadable."""
    try:
        with np.load(folder / "ticks.npz") as t, np.load(folder / "reference.npz") as r:
            reference = Avatar.from_arrays(r)
            if info is None:
                info = json.loads((folder / "info.json").read_text())
            if not all((folder / name).is_file() for name in ("frames.jpg", "rest.jpg")):
                return None
            avatar = VideoAvatar(folder=folder, reference=reference,
                                 reference_tick=int(t["reference_tick"]),
                                 landmarks=t["landmarks"], motion=t["motion"],
                                 offsets=t["offsets"], turns=tuple(int(x) for x in t["turns"]),
                                 fields=np.load(folder / "fields.npy", mmap_mode="r"),
                                 rest_offsets=t["rest_offsets"],
                                 rest_origins=t["rest_origins"],
                                 rest_landmarks=t["rest_landmarks"], rest_mouth=t["rest_mouth"],
                                 info=info, bank=MouthBank.from_arrays(t))
        video_cache.in_use(avatar, folder)        # (kept on disk while it is in use)
        return avatar
    except (OSError, KeyError, ValueError, EOFError, TypeError):
        return None


def print_progress(stage: str, done: float) -> None:
    """A one-line bar on stderr (for the command lines)."""
    import sys

    bar = "#" * int(30 * done)
    end = "\n" if done >= 1.0 else ""
    sys.stderr.write(f"\rpreparing the video avatar [{bar:<30}] {100 * done:3.0f}% {stage:<22}"
                     + end)
    sys.stderr.flush()



def prepare_any_avatar(source, size: int = 512, *, limits: VideoLimits = VideoLimits(),
                       progress: Progress | None = None) -> Avatar | VideoAvatar:
    """A photo or a recording (chosen by the path's suffix, VIDEO_SUFFIXES) -> its avatar."""
    from models.avatar import prepare_avatar

    if is_video(source):
        return prepare_video_avatar(source, size, limits=limits, progress=progress)
    return prepare_avatar(source, size)
