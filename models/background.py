"""The person's matte and the background behind it: what a moving head uncovers.

The renderer does not stretch the background next to a moving head; it composites the warped
person over a still plate of the background with the person taken out (models/render.py
compose):

    frame(x) = matte(s) * portrait(s) + (1 - matte(s)) * plate(x),   s = x + d(x)

where s is the backward map of the warp: the head moves, the neck bends, the torso stays
(its motion is zero, so it is the portrait itself), and background pixels show the plate,
which away from the person is the portrait too; only what the head uncovers is new.
Prepared once per avatar:

    person  MediaPipe's selfie segmentation (assets/mediapipe, Apache-2.0) of the crop, 256 px,
            upsampled: a soft person/background matte with hair-level edges
    head    the person inside the head region (face, hair, hat, the neck), fading out down
            the neck: which pixels move with the head (models.head.head_mask)
    plate   the crop with the person filled in from the background around it: its light
            smooth, its texture continued (models.texture_fill: patches of the background)
    colours the person's own colours where the matte is soft (the crop with the plate's share
            taken out), so that the person over the unmoved plate is the crop again (but
            for a few rows where the person touches the crop's top or side edges: soften_cut_edges)
"""

import numpy as np
from PIL import Image

from models import litert
from models import motion_space as ms
from models.head import HEAD_REGION, NECK
from models.warp import ellipse_radius, smoothstep

PERSON_INPUT = 256         # side of the image the selfie segmentation takes
HOLE_MATTE = 0.02          # matte above this is person: the fill does not trust the pixel
SOLID = 0.05               # matte from this up is person enough that the plate replaces it
HOLE_GROW = 0.04           # the hole grows by this (face widths), past the hair's soft edge
SOLID_GROW = 0.03          # the plate replaces the crop this far (face widths) past the solid
                           #   person: a thin rim the segmentation leaves out (a helmet ring's
                           #   edge) moves with the person instead of staying on the plate
LIGHT_BLUR = 0.1           # the plate's light: the push-pull fill blurred by this (face widths);
                           #   its texture: patches of what the photo has beyond that light
CUT_ROWS = 0.008           # the person's outer rows smoothed along the crop's edges (share of
CUT_BLUR = 0.03            #   the side) and the blur along it (share of the side)


def person_matte(crop: np.ndarray) -> np.ndarray:
    """How much each pixel of the crop [S, S, 3] uint8 is the person, 0..1: [S, S] float32."""
    size = crop.shape[0]
    small = Image.fromarray(crop).resize((PERSON_INPUT, PERSON_INPUT), Image.BILINEAR)
    (person,) = litert.run("selfie", np.asarray(small, np.float32) / 255)
    person = Image.fromarray(np.ascontiguousarray(person[0, :, :, 0], dtype=np.float32))
    return np.clip(np.asarray(person.resize((size, size), Image.BILINEAR)), 0.0, 1.0)


def _canonical_pixels(size: int, placement: ms.Placement) -> np.ndarray:
    """Every pixel of a size x size crop in canonical units (face widths): [S, S, 2]."""
    pixels = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2)
    return placement.to_canonical(pixels).reshape(size, size, 2)


def head_matte(person: np.ndarray, placement: ms.Placement) -> np.ndarray:
    """The person [S, S] inside the head region (models.head: HEAD_REGION and the neck band),
    fading out down the neck (full until NECK[1], zero at NECK[2] face widths below the eyes):
    [S, S] float32."""
    canonical = _canonical_pixels(person.shape[0], placement)
    x, y = canonical[..., 0], canonical[..., 1]
    half, full, zero = NECK
    region = (ellipse_radius(canonical, HEAD_REGION) <= 1.0) | ((np.abs(x) < half) & (y > 0.3))
    fade = 1.0 - smoothstep(full, zero, y)
    return (person * region * fade).astype(np.float32)


def fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Push-pull inpainting: image [H, W, C] float with `known` [H, W] bool; unknown pixels get
    the weighted mean of the known ones around them, at the coarsest scale that has any,
    blended down a pyramid. Known pixels are returned unchanged."""
    image = np.asarray(image, np.float64)
    weight = known.astype(np.float64)
    levels = [(image * weight[..., None], weight)]
    while min(levels[-1][1].shape) > 1:                    # pull: 2x2 sums, odd edges padded
        values, weights = levels[-1]
        h, w = weights.shape
        pad = ((0, h % 2), (0, w % 2))
        values = np.pad(values, pad + ((0, 0),))
        weights = np.pad(weights, pad)
        values = values.reshape(values.shape[0] // 2, 2, values.shape[1] // 2, 2, -1).sum((1, 3))
        weights = weights.reshape(weights.shape[0] // 2, 2, weights.shape[1] // 2, 2).sum((1, 3))
        levels.append((values, weights))
    values, weights = levels[-1]
    estimate = values / np.maximum(weights, 1e-9)[..., None]
    for values, weights in reversed(levels[:-1]):          # push: coarse fills fine
        h, w = weights.shape
        up = _upsample(estimate, h, w)
        confidence = np.clip(weights, 0.0, 1.0)[..., None]
        mean = values / np.maximum(weights, 1e-9)[..., None]
        estimate = confidence * mean + (1.0 - confidence) * up
    return np.where(known[..., None], image, estimate)


def _upsample(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear 2x upsampling of [h', w', C] to [h, w, C] (pixel centres aligned, edges held)."""
    for axis, n in ((0, h), (1, w)):
        length = image.shape[axis]
        x = np.clip((np.arange(n) + 0.5) / 2 - 0.5, 0, length - 1)
        below = np.floor(x).astype(int)
        above = np.minimum(below + 1, length - 1)
        t = (x - below).reshape([-1 if k == axis else 1 for k in range(image.ndim)])
        low, high = np.take(image, below, axis), np.take(image, above, axis)
        image = low + (high - low) * t
    return image


def plate_hole(person: np.ndarray, face_width: float) -> np.ndarray:
    """The pixels [S, S] bool the plate does not take from the crop: the person (matte above
    HOLE_MATTE) and HOLE_GROW face widths around it, past the hair's soft edge and halo."""
    from scipy import ndimage

    return ndimage.binary_dilation(person > HOLE_MATTE,
                                   iterations=max(1, round(HOLE_GROW * face_width)))


def continue_background(image: np.ndarray, known: np.ndarray, face_width: float
                        ) -> np.ndarray:
    """The image [S, S, 3] with its unknown pixels (`known` [S, S] False) filled from the
    known ones: [S, S, 3] float32. The light is the push-pull fill blurred by LIGHT_BLUR
    face widths: smooth, so a room darkening towards the corner darkens behind the head
    too. What the photo has beyond that light (a wall's grain, a flag's stars, the noise)
    is continued with its own patches (models.texture_fill), so what a turning head
    uncovers is not a blurred blob."""
    from scipy import ndimage

    from models import texture_fill

    light = fill(np.asarray(image, np.float64), known)
    light = ndimage.gaussian_filter(light, (LIGHT_BLUR * face_width,) * 2 + (0,))
    grain = texture_fill.complete(image - light, known)
    return np.clip(light + grain, 0.0, 255.0).astype(np.float32)


def background_plate(crop: np.ndarray, person: np.ndarray, face_width: float) -> np.ndarray:
    """The crop [S, S, 3] uint8 with the person (matte [S, S]) taken out and the background
    filled in from the rest (continue_background): [S, S, 3] float32.
    The fill takes nothing of the person nor of the pixels just outside the matte (hair's
    halo: plate_hole); it replaces the person where the matte is at least SOLID (fainter,
    the pixel is mostly background and stays) and SOLID_GROW around it. There the crop
    differs from the plate only where something of the person is left that the segmentation
    missed, and `unmix` gives those pixels to the person: left on the still plate, such a
    rim showed as a ghost line beside the moved person (the default avatar's helmet ring,
    2026-12-06)."""
    from scipy import ndimage

    filled = continue_background(crop, ~plate_hole(person, face_width), face_width)
    solid = ndimage.binary_dilation(person >= SOLID,
                                    iterations=max(1, round(SOLID_GROW * face_width)))
    return np.where(solid[..., None], filled, crop).astype(np.float32)


def unmix(crop: np.ndarray, plate: np.ndarray, matte: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """The person's own colours [S, S, 3] float32 and matte [S, S], consistent with the crop.

    Where the matte is soft (hair, the outline) a pixel of the crop is a mix,
    crop = matte * F + (1 - matte) * plate; F is solved for, so a still frame (the person
    over the plate, unmoved) is the crop again and a moving head does not carry the old
    background along its edge. The segmentation's soft edge is not an exact alpha: where it
    is too low for any colour F in 0..255 to explain the crop, it is raised to the least
    that does.
    The crop itself where the plate is the crop."""
    crop = crop.astype(np.float32)
    away = crop - plate                                    # [S, S, 3]
    room = np.where(away > 0, 255.0 - plate, plate)        # how far F can go that way
    needed = np.max(np.abs(away) / np.maximum(room, 1e-3), axis=-1)
    mixed = (plate != crop).any(-1)
    alpha = np.where(mixed, np.clip(np.maximum(matte, needed), SOLID, 1.0), matte)
    solved = plate + away / np.maximum(alpha, SOLID)[..., None]
    colours = np.where(mixed[..., None], np.clip(solved, 0.0, 255.0),
                       crop)
    return colours.astype(np.float32), alpha.astype(np.float32)


def soften_cut_edges(colours: np.ndarray, matte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The person's colours [S, S, 3] and matte [S, S] with their outer CUT_ROWS rows at the
    crop's top, left and right edges blurred along the edge, fully at the edge, fading out
    inwards (the colours weighted by the matte). The renderer repeats the crop's edge beyond
    it, so a head cut by the frame that moves away from the edge (hair at the photo's top
    edge under a nod; a close-up's hair at its sides under a turn: models.avatar.crop_box)
    draws its outer row out: smooth, it draws out as a band of hair; sharp, as streaks. Where
    no person touches those rows (or only the blur's faint tail would reach) nothing changes.
    The bottom edge is left as it is: the torso there stays still."""
    for turns in (0, 1, 3):                     # the top edge, then the right, then the left
        colours, matte = (np.rot90(a, turns) for a in (colours, matte))
        colours, matte = _soften_top_rows(colours, matte)
        colours, matte = (np.ascontiguousarray(np.rot90(a, -turns)) for a in (colours, matte))
    return colours, matte


def _soften_top_rows(colours: np.ndarray, matte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """soften_cut_edges at the top edge."""
    from scipy import ndimage

    size = matte.shape[0]
    rows = max(2, round(CUT_ROWS * size))
    m, f = matte[:rows].astype(np.float64), colours[:rows].astype(np.float64)
    if not m.any():
        return colours, matte
    sigma = CUT_BLUR * size
    m_blur = ndimage.gaussian_filter1d(m, sigma, axis=1, mode="nearest")
    f_blur = ndimage.gaussian_filter1d(f * m[..., None], sigma, axis=1, mode="nearest")
    f_blur = np.where(m_blur[..., None] > 1e-3, f_blur / np.maximum(m_blur, 1e-3)[..., None], f)
    weight = (1.0 - np.arange(rows)[:, None] / rows) * (m_blur >= 0.01)   # [rows, S]
    colours, matte = colours.copy(), matte.copy()
    colours[:rows] = f + (f_blur - f) * weight[..., None]
    matte[:rows] = m + (m_blur - m) * weight
    return colours, matte
