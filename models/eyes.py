"""Eyelids and gaze, computed for the pixels of a small window around each eye.

A blink is not a squeeze of the eye: the upper lid slides down over the eyeball and the
lower lid rises a little to meet it. Above the upper lid is a strip of lid skin (up to a
brow or a glasses frame, past the lashes). Its lower part, the lid margin with the lashes,
slides down rigidly with the margin: the lashes go with the lid, unstretched, and no lash
stays behind where the open eye had it. The rest of the strip stretches smoothly to follow
and is blended into smooth skin tone (taken above the lid and below the eye from a blurred
copy of the portrait), so a shut lid reads as skin, not streaks; the eyeball below stays
unsquashed until it is covered, and a darker lash line marks the margin. As the lid shuts,
its lashes turn to hang down: the band above the margin turns to lid skin too, and the band
is drawn again below the margin, mirrored (its roots at the margin, its tips as far below it
as they reached above), where it is darker than what lies there. Gaze slides the eyeball's
texture inside the visible opening, most in the middle, none at the corners. Everything is
an offset added to the output position before the warp's backward map is looked up, plus
colour weights.
"""

from dataclasses import dataclass

import numpy as np
import torch

from models.constants import take
from models.curves import feature_frame, project, smooth_curve

# Positions within one eye's six landmarks (36..41 or 42..47): left corner, upper lid left
# to right, right corner, lower lid left to right.
EYE = (0, (1, 2), 3, (5, 4))
EYE_STARTS = (36, 42)    # image-left eye, image-right eye

# Sizes in eye half-widths (half the corner-to-corner distance) unless noted.
LID_SKIN = (0.4, 0.8)    # range of the height of the skin strip that slides down
LASH_BAND = (0.15, 0.6)  # range of the height of the lash band (margin and lashes) that
                         #   slides down rigidly with the margin ...
LASH_SHARE = 0.7         # ... and at most this share of the strip
LOWER_LID_SKIN = 0.35    # the same for the rising lower lid
MEET = 0.9               # where the shut lids meet, from the upper lid line (0..1): the
                         #   upper lid does the blink, the lower one rises a little
LID_OVERSHOOT = 0.10     # a shut lid reaches this far past the lower lid line
LID_RAMP = 0.6           # the shut lid turns into smooth skin over this part of it (0..1)
LID_MIX = 0.5            # its tone shifts this far towards the skin below the eye (0..1)
LID_BELOW = 0.45         # where the skin below the eye is sampled
LID_MAX_CLOSED = 0.75    # slide / lid height of a typical shut lid (full smoothing)
LASH_WIDTH = 0.06        # dark band along a closing lid margin
LASH_DARKEN = 0.75
GAZE_X = 0.30            # iris travel at gaze_x = +-1
GAZE_Y = 0.12            # iris travel at gaze_y = +-1
LASHES_END = 0.8         # lashes end below this, above the lid (eye half-widths)
BAND_FADE = 0.3          # share of that band over which the lid's smoothing fades out
EDGE = 0.4               # anti-aliasing width of the lid margin, pixels


@dataclass
class EyeLook:
    """What one eye does to the pixels of its window (all [N, P] or [N, P, 2])."""
    shift: torch.Tensor        # where to sample the portrait instead, output pixels
    darken: torch.Tensor       # 0..1, the lash line of a closing lid
    lid: torch.Tensor          # 0..1, how much the pixel is smooth lid skin instead
    lid_above: torch.Tensor    # where the lid's skin tone is sampled: above the lid...
    lid_below: torch.Tensor    # ...and below the eye, output pixels
    lid_mix: torch.Tensor      # 0..1, weight of the tone below the eye
    lashes: torch.Tensor       # where the lashes hanging below the margin are sampled
    hanging: torch.Tensor      # 0..1, how much those lashes show (where darker)


def eyelid(points: torch.Tensor, eye: torch.Tensor, blink: torch.Tensor, gaze: torch.Tensor,
           lid_skin: torch.Tensor) -> EyeLook:
    """One eye. points [N, P, 2] output pixels; eye [N, 6, 2] its landmarks without the
    blink; blink [N, 1] 0..1; gaze [N, 2] (x, y) -1..1; lid_skin [2] the height of its
    lid-skin strip and of the lash band at its foot, in eye half-widths (lid_skin_heights)."""
    left, upper, right, lower = EYE
    u, v, half, frame = feature_frame(points, eye[:, left], eye[:, right])
    _, axis, normal = frame
    top_u, top_v = project(take(eye, (left, *upper, right)), frame, half)
    bottom_u, bottom_v = project(take(eye, (left, *lower, right)), frame, half)
    top = smooth_curve(u, top_u, top_v)                                    # [N, P]
    bottom = smooth_curve(u, bottom_u, bottom_v)
    opening = torch.relu(bottom - top)
    across = torch.clamp(1.0 - u * u, min=0.0)                             # 1 mid-eye, 0 corners
    hw = half[:, None]

    # The lids: the skin above the eye slides down over the eyeball, and the lower lid
    # rises a little to meet it (at MEET of the opening). The band of the strip right above
    # the margin (lashes) samples the portrait (margin - top) higher: it moves rigidly with
    # the margin. Pixels from (top - skin) to that band sample (margin - top) * h(t) higher,
    # with t = 0..1 down that span and h a smoothstep: no seam where the sliding starts
    # (h' = 0), none where the band starts (h' = 0 again). The lower lid is the mirror
    # image, from (bottom + skin_below) up to its margin.
    closure = opening + LID_OVERSHOOT * hw * torch.sqrt(across + 0.05)
    margin = top + blink * MEET * closure
    margin_below = bottom - blink * (1.0 - MEET) * closure
    skin = lid_skin[0] * hw
    band = lid_skin[1] * hw                                                # margin + lashes
    slide = margin - top                                                   # [N, P], >= 0
    lid = slide + skin - band                                              # the stretching part
    t = torch.clamp((v - top + skin) / lid, 0.0, 1.0)
    on_strip = v > top - skin
    lid_shift = -slide * t * t * (3.0 - 2.0 * t)
    closed = slide / (slide + skin)                                        # 0 open .. ~0.6 shut
    closing = torch.clamp((blink - 0.15) / 0.6, 0.0, 1.0)                 # 0 open .. 1 shut
    on_lid = torch.sigmoid((margin - v) / EDGE)
    ramp = torch.clamp(t / LID_RAMP, 0.0, 1.0)                            # sharp at the lid's top
    in_band = torch.clamp((v - margin + band) / (BAND_FADE * band + 1e-3) + 0.5, 0.0, 1.0)
    smoothing = (torch.clamp(closed / LID_MAX_CLOSED, max=1.0) * ramp * ramp * (3 - 2 * ramp)
                 * (1.0 - in_band * (1.0 - closing)))                      # the band folds away
    lid_weight = on_lid * torch.where(on_strip, smoothing, torch.zeros_like(v))
    rise = bottom - margin_below
    skin_below = LOWER_LID_SKIN * hw
    t_below = torch.clamp((bottom + skin_below - v) / (rise + skin_below), 0.0, 1.0)
    below_shift = rise * t_below * t_below * (3.0 - 2.0 * t_below)
    on_lower_lid = torch.sigmoid((v - margin_below) / EDGE)

    # Gaze: the eyeball's texture slides inside the opening that is still visible.
    visible = torch.sigmoid((v - margin) / EDGE) * torch.sigmoid((margin_below - v) / EDGE)
    along = -gaze[:, :1] * GAZE_X * hw * across * visible
    down = -gaze[:, 1:] * GAZE_Y * hw * across * visible
    shift_v = lid_shift * on_lid + below_shift * on_lower_lid + down
    offset = along[..., None] * axis[:, None, :] + shift_v[..., None] * normal[:, None, :]

    # The lashes of a shutting lid hang below its margin (the band above it folds into lid
    # skin, above): a pixel s of the band below the margin shows the open eye's band s above
    # its lid, the lashes s of the way from root to tip.
    s = (v - margin) / band
    hanging = closing * torch.sigmoid((v - margin) / EDGE) * torch.clamp(1.0 - s, 0.0, 1.0)
    lashes = (top - torch.clamp(s, 0.0, 1.0) * band - v)[..., None] * normal[:, None, :]

    # A darker lash line along the margin of a closing lid.
    lash = torch.clamp(LASH_WIDTH * hw, min=0.6)
    line = torch.exp(-(((v - margin + 0.5 * lash) / lash) ** 2))
    darken = LASH_DARKEN * closing * line * torch.clamp(opening / (0.15 * hw), 0, 1)

    # The shut lid's skin tone: between the skin above the strip and below the eye.
    above = (top - skin - v)[..., None] * normal[:, None, :]
    below = (bottom + LID_BELOW * hw - v)[..., None] * normal[:, None, :]
    return EyeLook(offset, darken, lid_weight, above, below, LID_MIX * t, lashes, hanging)


def lid_skin_heights(image: np.ndarray, landmarks: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Per eye, how tall a strip of skin above the upper lid can make the closing lid, and
    how tall the band of margin and lashes at its foot is, in eye half-widths. The lashes
    are the dark right above the lid, up to where the skin colour `skin` [3] first shows
    (within LASHES_END); the strip reaches up to LID_SKIN[1], stopping short of anything
    much darker than the skin beyond them (a brow, a glasses frame).
    image [S, S, 3] uint8, landmarks [68, 2] -> [2 eyes, (strip, band)]."""
    luminance = np.array([0.299, 0.587, 0.114])
    gray = image.astype(np.float64) @ luminance
    skin_gray = float(np.asarray(skin, np.float64) @ luminance)
    left, upper, right, _ = EYE
    heights = []
    for start in EYE_STARTS:
        corners = landmarks[start + left], landmarks[start + right]
        half = np.linalg.norm(corners[1] - corners[0]) / 2
        top = landmarks[[start + i for i in upper]].mean(0)
        xs = np.clip(np.round(top[0] + np.linspace(-0.3, 0.3, 5) * half), 0, gray.shape[1] - 1)
        reach = np.arange(1, int(LID_SKIN[1] * half) + 2)
        ys = np.clip(np.round(top[1] - reach), 0, gray.shape[0] - 1)
        profile = np.median(gray[ys.astype(int)[:, None], xs.astype(int)[None, :]], 1)
        # the lashes: dark right above the lid, up to where the skin shows; then skin up to
        # the next dark (a brow, a glasses frame)
        bright = profile >= 0.72 * skin_gray
        within = reach <= LASHES_END * half
        lashes_end = reach[bright & within][0] if (bright & within).any() else 0.3 * half
        dark = (reach >= max(lashes_end, 0.3 * half)) & ~bright
        height = reach[dark][0] - 1 if dark.any() else reach[-1]
        strip = float(np.clip(height / half, *LID_SKIN))
        band = min(float(np.clip(lashes_end / half, *LASH_BAND)), LASH_SHARE * strip)
        heights.append((strip, band))
    return np.array(heights, dtype=np.float32)
