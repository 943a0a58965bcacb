"""A video avatar's recorded mouths brought to rest, once, at preparation.

Playback shows each recorded frame with its mouth brought to the generated one. A warp can
open a closed mouth (the lips part along a cut and the opening is painted), but it cannot
close one the recording shows open: its smooth fields squeeze the opening rather than remove
it, and on franck.mp4 about half of the recorded lip gap stayed in the output (dlib's
inner-lip gap regressed on the generated jaw and the recorded gap: 0.52 of the recorded one),
so a short recording's own speaking showed through the generated speech.

So preparation stores every played frame whose mouth moved at rest: its mouth motion undone
by the renderer (jaw, chin and corners go back; models.video_avatar), then closed lips laid
over what is left of the opening: those of the recording's closed frames nearest in time
before and after it (lips_closed, closed_neighbours), faded from one to the next, each one's
lower face mapped onto the undone landmarks by a thin-plate spline through the jaw, the nose's
base and the lips, kept inside the outer lips and a margin of skin, faded into the frame
around it, its colour offset to the frame's in that fade. (The reference frame's lips for
every frame made one look of the lips for all, and the self-reenactment's mouth SSIM fell
from 0.66 to 0.58.) Playback then only ever opens a closed mouth, as it does for a photo.
Everything here is numpy on one frame's mouth region.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models import motion_space as ms
from models import warp
from models.mouth_bank import bilinear

# the lower face's landmarks (68-point layout) the closed lips are mapped by: the jaw
# line, the nose's base and the lips
ANCHORS = (*range(3, 14), *range(31, 36), *range(48, 68))
MARGIN = 0.05        # skin around the outer lips taken whole from the sources (face widths)
FADE = 0.05          # then faded out into the frame over this (face widths)
SMOOTHING = 1e-3     # of the thin-plate spline, in face widths (tracking noise)
STEP = 4             # pixels between the points the spline is evaluated at
INNER_PAIRS = ((61, 67), (62, 66), (63, 65))     # upper and lower inner lip, left to right
CLOSED_GAP = 0.005   # a frame whose inner lips are this close (face widths) is closed, ...
CLOSED_OPEN = 0.1    # ... if its fitted opening parameters are all below this
OPENING = ("jaw_open", "upper_lip_raise", "lower_lip_depress")


def lips_closed(landmarks: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """Which frames (landmarks [T, 68, 2], motion [T, D]) show the mouth closed [T] bool:
    the inner lips within CLOSED_GAP face widths and no opening parameter over CLOSED_OPEN."""
    pairs = np.array(INNER_PAIRS)
    gap = np.linalg.norm(landmarks[:, pairs[:, 0]] - landmarks[:, pairs[:, 1]], axis=-1)
    width = np.array([ms.place(points).scale for points in landmarks])
    opening = motion[:, [ms.index(n) for n in OPENING]].max(1)
    return (gap.mean(1) / width < CLOSED_GAP) & (opening < CLOSED_OPEN)


def closed_neighbours(closed: np.ndarray, tick: int) -> list[tuple[int, float]]:
    """The closed frames (closed [T] bool, lips_closed) nearest before and after `tick`,
    with weights that fade from one to the other [(frame, weight)]; [] when none is."""
    frames = np.flatnonzero(closed)
    if len(frames) == 0:
        return []
    k = int(np.searchsorted(frames, tick))                  # frames[k - 1] < tick <= frames[k]
    if k == len(frames) or frames[k] == tick or k == 0:
        return [(int(frames[min(k, len(frames) - 1)]), 1.0)]
    before, after = int(frames[k - 1]), int(frames[k])
    share = (tick - before) / (after - before)
    return [(before, 1.0 - share), (after, share)]


def closed_inner_lips(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks [68, 2] with each upper and lower inner-lip pair moved to their midpoint:
    the lips touching."""
    closed = np.array(landmarks, copy=True)
    for a, b in INNER_PAIRS:
        closed[a] = closed[b] = (closed[a] + closed[b]) / 2
    return closed


def lay_closed_lips(image: np.ndarray, landmarks: np.ndarray,
                    sources: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    """Lay closed lips over image [S, S, 3] uint8 at its landmarks [68, 2], in place: a
    weighted blend of other frames' (sources: (crop [S, S, 3] uint8, its landmarks [68, 2],
    weight), the same crop as the frame, weights summing to 1), each mapped onto the
    landmarks and offset to the light where it meets the frame."""
    target = closed_inner_lips(np.asarray(landmarks, np.float64))
    width = ms.place(target).scale
    lips = target[48:60]
    size = image.shape[0]
    reach = (MARGIN + FADE) * width
    x0, y0 = np.clip(np.floor(lips.min(0) - reach).astype(int), 0, size)
    x1, y1 = np.clip(np.ceil(lips.max(0) + reach).astype(int), 0, size)
    if x1 <= x0 or y1 <= y0:
        return
    h, w = y1 - y0, x1 - x0
    # weight: 1 inside the outer lips and MARGIN beyond them, fading out over FADE
    inside = np.zeros((h, w), np.uint8)
    cv2.fillPoly(inside, [np.round(lips - [x0, y0]).astype(np.int32)], 1)
    beyond = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3) / width     # face widths
    weight = np.clip(1.0 - (beyond - MARGIN) / FADE, 0.0, 1.0)[..., None]
    here = image[y0:y1, x0:x1].astype(np.float64)
    fade = (weight[..., 0] > 0.05) & (weight[..., 0] < 0.6)    # the light on the face where
    light = here[fade].mean(0) if fade.any() else None         # they meet
    # where each pixel comes from in a source: the spline on every STEP-th pixel, bilinear
    # between (it is smooth at that scale); one spline matrix for all sources
    ys, xs = np.arange(y0, y1 + STEP, STEP), np.arange(x0, x1 + STEP, STEP)
    nodes = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float64)   # [Q, 2]
    anchors = list(ANCHORS)
    spline = warp.tps_interpolator(target[anchors] / width, nodes / width, SMOOTHING)
    taken = np.zeros_like(here)
    for crop, points, share in sources:
        source = closed_inner_lips(np.asarray(points, np.float64))
        coarse = (spline @ source[anchors]).reshape(len(ys), len(xs), 2).astype(np.float32)
        fine = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None],
                             size=((len(ys) - 1) * STEP + 1, (len(xs) - 1) * STEP + 1),
                             mode="bilinear", align_corners=True)[0]   # node k at pixel k*STEP
        one = bilinear(crop, fine.permute(1, 2, 0).numpy()[:h, :w])                # [h, w, 3]
        if light is not None:
            one += light - one[fade].mean(0)
        taken += share * one
    blended = here + (taken - here) * weight
    image[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
