"""A video avatar's own mouth interior: its teeth, tongue and dark, from its open-mouth frames.

A recording shows the person's mouth open at many sizes. Preparation keeps a few of those
frames' openings (a bank, from barely to widest open, frontal frames only); at playback,
wherever the generated lips part, the opening is filled from the bank entry that parts them
most alike (relative to the mouth's width), mapped into the new opening along its own lip
lines (u from corner to corner): the upper part keeps its distance below the upper lip and
the lower part its distance above the lower lip, so the upper teeth stay under the upper
lip and the lower teeth over the lower lip at the size the person's own frames show them.
A narrower opening than the entry's squeezes it; in a wider one the renderer's painted dark
(models.mouth) shows in the middle, where the entry has nothing. The fill covers the upper
three quarters of the opening and fades into the painted dark towards the lower lip: filled
to the lower lip from a smiling frame, the opening read as teeth between pressed lips (in
self-reenactment dlib's mouth opening followed the real one at 0.82 with the full fill, 0.90
with this; benchmarks/RESULTS.md). The painted interior is
all there is only for a recording that never opens its mouth.

Everything here is numpy on one frame's mouth region (a few thousand pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import motion_space as ms

# Inner-lip landmarks 60..67 as positions 0..7 of an [8, 2] array, corner to corner.
UPPER = (0, 1, 2, 3, 4)          # 60 61 62 63 64
LOWER = (0, 7, 6, 5, 4)          # 60 67 66 65 64
MIN_GAP = 0.025                  # an opening smaller than this (face widths) is not banked
ENTRIES = 8                      # openings kept, spread over the sizes the recording shows
MAX_YAW = 12.0                   # banked frames face the camera (degrees) ...
MAX_ROLL = 12.0
MARGIN = 0.12                    # a bank patch reaches this far (face widths) past the lips
FEATHER = 0.8                    # pixels: the soft edge along the lip lines (centred on
                                 #   them, as the renderer's opening: models.mouth.EDGE)
MIDDLE_FADE = 0.3                # share of an entry's opening over which it fades into the
                                 #   renderer's dark where the new opening is wider
UPPER_SHARE = 0.75               # the fill covers the opening from the upper lip down to this
UPPER_FADE = 0.3                 #   share of it, fading into the renderer's dark over this


@dataclass
class MouthBank:
    """Openings of the recorded mouth: patches [B, H, W, 3] uint8 (zero padded to the
    largest) and their inner lips [B, 8, 2] in patch pixels, ordered by how far the lips
    part. Each entry's lip curves (lip_tables) and opening are worked out once, here."""
    patches: np.ndarray
    lips: np.ndarray

    def __post_init__(self):
        self.tables = [lip_tables(lips.astype(np.float64)) for lips in self.lips]
        self.openings = np.array([relative_gap(lips) for lips in self.lips])

    def __len__(self) -> int:
        return len(self.lips)

    def nearest(self, lips: np.ndarray) -> int:
        """The entry whose lips part most like lips [8, 2] (relative to the mouth's width)."""
        return int(np.argmin(np.abs(self.openings - relative_gap(lips))))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"bank_patches": self.patches, "bank_lips": self.lips}

    @classmethod
    def from_arrays(cls, arrays) -> MouthBank | None:
        """From arrays() as stored (an npz); None when there is no entry."""
        if "bank_lips" not in arrays or len(arrays["bank_lips"]) == 0:
            return None
        return cls(np.asarray(arrays["bank_patches"]), np.asarray(arrays["bank_lips"]))


def lip_gap(lips: np.ndarray, face_width) -> np.ndarray:
    """How far the inner lips [..., 8, 2] part: the mean of the three pairs' distances, in
    face widths [...]."""
    pairs = ms.LIP_PAIRS - 60
    d = np.linalg.norm(lips[..., pairs[:, 1], :] - lips[..., pairs[:, 0], :], axis=-1)
    return d.mean(-1) / face_width


def relative_gap(lips: np.ndarray) -> float:
    """How far the inner lips [8, 2] part over the mouth's width (what picks an entry)."""
    return float(lip_gap(lips, max(float(np.linalg.norm(lips[4] - lips[0])), 1e-3)))


def choose_entries(landmarks: np.ndarray, motion: np.ndarray, ticks: np.ndarray,
                   entries: int = ENTRIES) -> np.ndarray:
    """Which ticks to bank: of `ticks` (landmarks [F, 68, 2], motion [F, D]), frontal ones
    with the mouth open at least MIN_GAP, one per equal share of the openings' range (the
    one nearest its middle). Returns tick indices, ordered by gap (maybe none)."""
    width = np.linalg.norm(landmarks[ticks, 16] - landmarks[ticks, 0], axis=-1)
    gaps = lip_gap(landmarks[ticks, 60:68], width)
    frontal = ((np.abs(motion[ticks, ms.index("head_yaw")]) <= MAX_YAW)
               & (np.abs(motion[ticks, ms.index("head_roll")]) <= MAX_ROLL))
    usable = frontal & (gaps >= MIN_GAP) & np.isfinite(gaps)
    if not usable.any():
        return np.zeros(0, int)
    candidates, open_by = ticks[usable], gaps[usable]
    levels = np.linspace(open_by.min(), open_by.max(), entries + 1)
    chosen = []
    for low, high in zip(levels[:-1], levels[1:], strict=True):
        inside = (open_by >= low) & (open_by <= high)
        if inside.any():
            best = np.flatnonzero(inside)[np.argmin(np.abs(open_by[inside] - (low + high) / 2))]
            chosen.append(int(candidates[best]))
    order = np.argsort([relative_gap(landmarks[t, 60:68]) for t in chosen])
    return np.array(chosen, int)[order]


def build_bank(crops, landmarks: np.ndarray) -> MouthBank | None:
    """The bank from the chosen ticks' crops [S, S, 3] (an iterable) and landmarks
    [B, 68, 2] (crop pixels)."""
    patches, lips = [], []
    for crop, points in zip(crops, landmarks, strict=True):
        width = float(np.linalg.norm(points[16] - points[0]))
        inner = points[60:68]
        reach = MARGIN * width
        x0, y0 = np.floor(inner.min(0) - reach).astype(int)
        x1, y1 = np.ceil(inner.max(0) + reach).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, crop.shape[1]), min(y1, crop.shape[0])
        patches.append(crop[y0:y1, x0:x1])
        lips.append(inner - [x0, y0])
    if not patches:
        return None
    height = max(p.shape[0] for p in patches)
    width = max(p.shape[1] for p in patches)
    padded = np.zeros((len(patches), height, width, 3), np.uint8)
    for k, p in enumerate(patches):
        padded[k, :p.shape[0], :p.shape[1]] = p
    return MouthBank(padded, np.array(lips, np.float32))


def _frame(lips: np.ndarray):
    """The mouth's own frame from its corners: centre [2], axis [2], normal [2] (towards
    the chin), half width."""
    left, right = lips[0], lips[4]
    centre = (left + right) / 2
    half = max(float(np.linalg.norm(right - left)) / 2, 1e-3)
    axis = (right - left) / (2 * half)
    return centre, axis, np.array([-axis[1], axis[0]]), half


def lip_tables(lips: np.ndarray):
    """The upper and lower inner lip of lips [8, 2] as curves over u (corner -1 to corner
    +1) in the mouth's own frame: the renderer's smooth curves through the landmarks
    (models.curves.curve_table, both in one call), so the fill meets the lips the renderer
    drew. Returns ((u samples, across-distances in pixels) for the upper, for the lower)."""
    import torch

    from models.curves import CURVE_SAMPLES, curve_table

    centre, axis, normal, half = _frame(lips)
    d = lips - centre
    ku, kv = d @ axis / half, d @ normal
    knots = [(ku[list(side)], kv[list(side)]) for side in (UPPER, LOWER)]
    knots = [(u[np.argsort(u)], v[np.argsort(u)]) for u, v in knots]
    knot_u = torch.from_numpy(np.stack([u for u, _ in knots]))                   # [2, 5]
    knot_v = torch.from_numpy(np.stack([v for _, v in knots]))
    table = curve_table(knot_u, knot_v, knot_u[:, :1], knot_u[:, -1:]).numpy()  # [2, C]
    at = [np.linspace(u[0], u[-1], CURVE_SAMPLES) for u, _ in knots]
    return (at[0], table[0]), (at[1], table[1])


def _lip_lines(tables, u: np.ndarray):
    """The upper and lower lip (lip_tables) at u: two arrays shaped as u."""
    return [np.interp(u, at, line) for at, line in tables]


def fill_opening(frame: np.ndarray, lips: np.ndarray, bank: MouthBank) -> None:
    """Paint the opening between the inner lips [8, 2] (frame pixels) of frame [S, S, 3]
    uint8 from the bank entry that parts the lips most like it, in place. A closed mouth is
    left alone."""
    centre, axis, normal, half = _frame(lips)
    x0, y0 = np.floor(lips.min(0) - 2).astype(int)
    x1, y1 = np.ceil(lips.max(0) + 2).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1]
    d = np.stack([xs, ys], -1).astype(np.float64) - centre                 # [h, w, 2]
    # below, arrays [h, w] over the lips' box, then [P] for the pixels of the opening
    u, v = d @ axis / half, d @ normal
    upper, lower = _lip_lines(lip_tables(lips), u)
    gap = lower - upper
    inside = ((np.abs(u) < 1.0) & (gap > 0.0)).astype(np.float64)
    weight = inside * _soft(v - upper) * _soft(lower - v) * _soft((1.0 - np.abs(u)) * half)
    shown = weight > 0.0
    if not shown.any():
        return
    u, v, upper, lower, gap, weight = (a[shown] for a in (u, v, upper, lower, gap, weight))

    # where each pixel of the opening comes from in the bank entry: the upper part keeps its
    # distance below the upper lip, the lower part its distance above the lower lip (teeth
    # keep their size, scaled with the mouth's width); a narrower opening than the entry's
    # squeezes it, a wider one keeps the renderer's dark of the mouth (models.mouth) in the
    # middle, where the entry has nothing to show
    entry = bank.nearest(lips)
    source_lips = bank.lips[entry].astype(np.float64)
    b_centre, b_axis, b_normal, b_half = _frame(source_lips)
    b_upper, b_lower = _lip_lines(bank.tables[entry], u)
    b_gap = np.maximum(b_lower - b_upper, 0.0)
    k = b_half / half                                                      # bank px per px
    from_upper, from_lower = (v - upper) * k, (lower - v) * k
    squeezed = b_upper + (v - upper) / np.maximum(gap, 1e-3) * b_gap
    anchored = np.where(from_upper <= from_lower,
                        b_upper + np.minimum(from_upper, b_gap / 2),
                        b_lower - np.minimum(from_lower, b_gap / 2))
    wider = gap * k > b_gap
    b_v = np.where(wider, anchored, squeezed)
    middle = np.minimum(from_upper, from_lower)                            # bank pixels
    weight = weight * np.where(wider, np.clip((b_gap / 2 - middle) / (MIDDLE_FADE * b_gap + 1e-3)
                                              + 0.5, 0.0, 1.0), 1.0)
    # the upper teeth under the upper lip; towards the lower lip the renderer's dark (a
    # speaking mouth mostly hides its lower teeth, and a full fill from a smiling frame
    # read as lips pressed together)
    weight = weight * np.clip((UPPER_SHARE - (v - upper) / np.maximum(gap, 1e-3)) / UPPER_FADE,
                              0.0, 1.0)
    at = b_centre + (u * b_half)[:, None] * b_axis + b_v[:, None] * b_normal      # [P, 2]
    colour = bilinear(bank.patches[entry], at)
    region = frame[y0:y1, x0:x1]
    old = region[shown].astype(np.float64)
    region[shown] = np.clip(old + weight[:, None] * (colour - old) + 0.5, 0, 255).astype(np.uint8)


def _soft(x: np.ndarray) -> np.ndarray:
    return np.clip(x / FEATHER + 0.5, 0.0, 1.0)


def bilinear(image: np.ndarray, at: np.ndarray) -> np.ndarray:
    """image [H, W, 3] at positions at [..., 2] (x, y), clamped to the image -> [..., 3]."""
    h, w = image.shape[:2]
    x = np.clip(at[..., 0], 0, w - 1.001)
    y = np.clip(at[..., 1], 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy
