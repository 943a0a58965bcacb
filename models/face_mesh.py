"""Dense face landmarks: MediaPipe's face mesh (468 points) refined by its iris model.

Why: dlib's 68-point predictor was trained on iBUG 300-W, whose terms exclude commercial use.
MediaPipe's face mesh and iris models are Apache-2.0, and they give what the renderer needs
most: dense eyelids, inner lips and the irises. The two .tflite files are taken unchanged from
the mediapipe 0.10.21 wheel (assets/mediapipe, see assets/SOURCE.md) and run under LiteRT
(`ai-edge-litert`); MediaPipe itself is not needed, its graphs are redone here in numpy:

1. face ROI: a square around the detector's box (dlib HOG, `models.face.detect_boxes`);
2. mesh: the ROI resampled to 192x192 (bilinear, RGB in [0, 1]), 468 points mapped back;
3. tracking ROI: MediaPipe's ROI from the first pass's landmarks (their bounding box x 1.5,
   rotated so that the eye corners 33 -> 263 lie level), and the mesh once more on it;
4. eyes: per eye a square of 2.3 x the eye width around its corners (33/133, 362/263),
   64x64, through the iris model. It knows one eye only, the image-left one, so the other
   crop is mirrored and its output mirrored back. Its eyelids and the two rings of points
   around them replace the mesh's (as MediaPipe's refined landmarks do; its brows, which
   matched real faces worse than the mesh's, are not used); its 5 iris points are appended.

Coordinates: x, y in image pixels, pixel centres at integers (as dlib and numpy indexing).
z is depth at the same scale, relative to the face (the 468 mesh points' mean depth is zero)
and negative toward the camera (the nose tip has the smallest z).

Images are numpy arrays [H, W, 3] uint8 RGB.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from models import litert
from models.face import FaceNotFoundError

MESH_INPUT = 192                 # face crop side (pixels) the mesh model takes
IRIS_INPUT = 64                  # eye crop side the iris model takes
FACE_SCALE = 1.5                 # tracking ROI side / landmarks' bounding box (MediaPipe)
EYE_SCALE = 2.3                  # eye ROI side / eye width (MediaPipe)
# First ROI from a dlib box (brows to chin): the tracking ROI that the mesh then settles on is
# centred on the box and about 1.75 x its side (1.5-2.0 on 52 real faces).
BOX_SCALE = 1.75
MIN_SCORE = 0.5                  # face presence probability below which there is no face
N_MESH = 468
N_POINTS = 478                   # 468 mesh + 5 iris (image-left eye) + 5 iris (image-right)

# Eye corners (outer, inner) of the image-left eye (the subject's right) and (inner, outer)
# of the image-right eye: both left to right in the image.
LEFT_EYE_CORNERS = (33, 133)
RIGHT_EYE_CORNERS = (362, 263)

# The iris model's 71 eye-contour points as face-mesh indices, for the image-left eye; from
# MediaPipe's update_face_landmarks_calculator.cc (kEyeLandmarkIndicesInFaceLandmarks).
# Rows: lower lid (corner to corner), upper lid, then four halos around the eye, the last two
# upper ones along the brow.
LEFT_EYE_CONTOUR = np.array([
    33, 7, 163, 144, 145, 153, 154, 155, 133,           # lower lid, outer to inner corner
    246, 161, 160, 159, 158, 157, 173,                  # upper lid (corners excluded)
    130, 25, 110, 24, 23, 22, 26, 112, 243,             # halo 2, lower
    247, 30, 29, 27, 28, 56, 190,                       # halo 2, upper
    226, 31, 228, 229, 230, 231, 232, 233, 244,         # halo 3, lower
    113, 225, 224, 223, 222, 221, 189,                  # halo 3, upper
    35, 124, 46, 53, 52, 65,                            # halo 4, upper (brow, inner contour)
    143, 111, 117, 118, 119, 120, 121, 128, 245,        # halo 5, lower
    156, 70, 63, 105, 66, 107, 55, 193,                 # halo 5, upper (brow, outer contour)
])
RIGHT_EYE_CONTOUR = np.array([
    263, 249, 390, 373, 374, 380, 381, 382, 362,
    466, 388, 387, 386, 385, 384, 398,
    359, 255, 339, 254, 253, 252, 256, 341, 463,
    467, 260, 259, 257, 258, 286, 414,
    446, 261, 448, 449, 450, 451, 452, 453, 464,
    342, 445, 444, 443, 442, 441, 413,
    265, 353, 276, 283, 282, 295,
    372, 340, 346, 347, 348, 349, 350, 357, 465,
    383, 300, 293, 334, 296, 336, 285, 417,
])
# The refined points used: the lids and the two halos next to them (the first 48). The iris
# model's brows (halos 4 and 5) matched dlib's brows worse than the mesh's own on real faces
# (0.047 against 0.034 inter-ocular distances on franck.mp4), so the mesh's stay.
EYE_REFINED = 48

# iBUG 300-W / dlib 68-point layout as mesh points: each row is two mesh indices whose mean
# is the landmark (one index twice for a single point); "left" is image left. Started from
# the commonly used single-index mapping and changed, symmetrically, where a mesh point or the
# middle of a mesh edge matched dlib's predictor clearly better on real faces (50 frames of
# FGNet's franck.mp4, and checked on 30 other faces): jaw ends and sides, brow ends, nose,
# eye corners (dlib puts them a little outside the lid corners), upper outer lip (between the
# mesh's outer and second ring). The inner lips stay on the mesh's inner ring: nothing matched
# better on both sets.
IBUG68 = np.array([
    # jaw 0-16, image left to right
    (127, 127), (234, 234), (93, 132), (58, 132), (172, 172), (136, 136), (149, 149),
    (148, 176), (152, 152), (377, 400), (378, 378), (365, 365), (397, 397), (288, 361),
    (323, 361), (454, 454), (356, 356),
    # brows 17-21, 22-26
    (70, 156), (63, 63), (105, 105), (66, 66), (107, 55),
    (336, 285), (296, 296), (334, 334), (293, 293), (300, 383),
    # nose: bridge 27-30, base 31-35
    (168, 168), (197, 197), (5, 195), (4, 4),
    (75, 240), (97, 97), (2, 164), (326, 326), (305, 460),
    # eyes: corner 36, upper 37 38, corner 39, lower 40 41; corner 42, upper 43 44, corner 45,
    # lower 46 47
    (33, 25), (160, 160), (158, 158), (133, 112), (153, 153), (144, 144),
    (362, 341), (385, 385), (387, 387), (263, 255), (373, 373), (380, 380),
    # outer lips: corner 48, upper 49-53, corner 54, lower 55-59
    (61, 61), (40, 73), (37, 72), (0, 11), (267, 302), (270, 303), (291, 291),
    (405, 321), (314, 314), (17, 17), (84, 84), (181, 91),
    # inner lips: corner 60, upper 61-63, corner 64, lower 65-67
    (78, 78), (82, 82), (13, 13), (312, 312), (308, 308), (317, 317), (14, 14), (87, 87),
])


@dataclass(frozen=True)
class Mesh:
    """MediaPipe's 478 refined face landmarks of one face.

    points [478, 3] float32: x, y pixels; z pixels, negative toward the camera. 0-467 are the
    face mesh; 468-472 the iris of the image-left eye (the subject's right eye, corners 33 and
    133), 473-477 that of the image-right eye (362, 263), each as: centre, then the rim's
    point toward the nose, top, away from the nose, bottom.
    score: face presence probability (0-1) of the last mesh pass.
    """
    points: np.ndarray
    score: float


@dataclass(frozen=True)
class Roi:
    """A rotated square in the image."""
    x: float             # centre, pixels
    y: float
    size: float          # side, pixels
    angle: float         # radians: direction of the square's x axis in the image (y down)


def to_ibug68(points: np.ndarray) -> np.ndarray:
    """The 68 iBUG 300-W landmarks [68, 2] float32 (x, y) of mesh points [>=468, 2 or 3]."""
    return np.asarray(points)[IBUG68, :2].mean(1).astype(np.float32)


def find_mesh(image: np.ndarray, box: tuple[float, float, float, float], *,
              iris: bool = True) -> Mesh:
    """The face mesh of the face inside a detector `box` (left, top, right, bottom).

    Without `iris` the 10 iris points are the eye centres (the mean of each eye's corners)
    and the eyelids are the mesh's own. Raises FaceNotFoundError when the box holds no face.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image [H, W, 3] uint8, got {image.shape} {image.dtype}")
    left, top, right, bottom = (float(v) for v in box)
    side = max(right - left, bottom - top)
    roi = Roi((left + right) / 2, (top + bottom) / 2, BOX_SCALE * side, 0.0)
    points, score = _mesh_pass(image, roi)
    if score >= MIN_SCORE:
        points, score = _mesh_pass(image, tracking_roi(points))
    if score < MIN_SCORE:
        raise FaceNotFoundError(
            f"no face found in the box {tuple(round(v) for v in box)} "
            f"(face presence {score:.2f} < {MIN_SCORE})")
    if iris:
        points = _refine_eyes(image, points)
    else:
        centres = [points[list(c)].mean(0) for c in (LEFT_EYE_CORNERS, RIGHT_EYE_CORNERS)]
        points = np.concatenate([points, np.repeat(centres, 5, axis=0)])
    return Mesh(points.astype(np.float32), score)


def tracking_roi(points: np.ndarray) -> Roi:
    """MediaPipe's face ROI from mesh points: the bounding box's centre, its long side x 1.5,
    turned so that the eye corners 33 -> 263 are level."""
    low, high = points[:N_MESH, :2].min(0), points[:N_MESH, :2].max(0)
    (x, y), size = (low + high) / 2, FACE_SCALE * float((high - low).max())
    dx, dy = points[263, :2] - points[33, :2]
    return Roi(float(x), float(y), size, float(np.arctan2(dy, dx)))


def eye_roi(points: np.ndarray, corners: tuple[int, int]) -> Roi:
    """MediaPipe's eye ROI: centred on the two corners, 2.3 x their bounding box's long side,
    turned so that the corners are level."""
    a, b = points[corners[0], :2], points[corners[1], :2]
    (x, y), (dx, dy) = (a + b) / 2, b - a
    size = EYE_SCALE * max(abs(float(dx)), abs(float(dy)))
    return Roi(float(x), float(y), size, float(np.arctan2(dy, dx)))


# ---------------------------------------------------------------------------------------------
# Passes
# ---------------------------------------------------------------------------------------------

def _mesh_pass(image: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
    """468 mesh points [468, 3] in image pixels and the face presence probability."""
    crop = crop_roi(image, roi, MESH_INPUT)
    mesh, presence = litert.run("mesh", crop)
    points = from_crop(roi, mesh.reshape(N_MESH, 3), MESH_INPUT)
    return points, float(1 / (1 + np.exp(-float(presence.ravel()[0]))))


def _refine_eyes(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[478, 3]: eye contours replaced by the iris model's, its 5 + 5 iris points appended."""
    points = points.copy()
    irises = []
    for corners, contour, mirror in ((LEFT_EYE_CORNERS, LEFT_EYE_CONTOUR, False),
                                     (RIGHT_EYE_CORNERS, RIGHT_EYE_CONTOUR, True)):
        roi = eye_roi(points, corners)
        crop = crop_roi(image, roi, IRIS_INPUT)
        if mirror:
            crop = np.ascontiguousarray(crop[:, ::-1])
        eye, iris = litert.run("iris", crop)
        eye, iris = eye.reshape(71, 3), iris.reshape(5, 3)
        if mirror:
            eye[:, 0], iris[:, 0] = IRIS_INPUT - eye[:, 0], IRIS_INPUT - iris[:, 0]
        eye, iris = from_crop(roi, eye, IRIS_INPUT), from_crop(roi, iris, IRIS_INPUT)
        # The iris model's depth is relative to its eye crop: move it into the mesh's frame.
        eye, contour = eye[:EYE_REFINED], contour[:EYE_REFINED]
        shift = points[contour, 2].mean() - eye[:, 2].mean()
        eye[:, 2] += shift
        iris[:, 2] += shift
        points[contour] = eye
        irises.append(iris)
    return np.concatenate([points, *irises])


# ---------------------------------------------------------------------------------------------
# Crops
# ---------------------------------------------------------------------------------------------

def _axes(roi: Roi) -> tuple[np.ndarray, np.ndarray]:
    """The ROI's x and y axes in the image, each scaled to the ROI's side."""
    c, s = np.cos(roi.angle), np.sin(roi.angle)
    return roi.size * np.array([c, s]), roi.size * np.array([-s, c])


def crop_roi(image: np.ndarray, roi: Roi, side: int) -> np.ndarray:
    """The ROI resampled to [side, side, 3] float32 in [0, 1]; edges repeated outside the image.

    Bilinear, as MediaPipe does; a ROI at least twice the crop's size (a large photo) is
    first shrunk by an integer box filter, so that the bilinear step does not alias.
    """
    ax, ay = _axes(roi)
    corners = [roi.x, roi.y] + np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]]) / 2 @ [ax, ay]
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1        # the ROI's bounding box, with
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2          # a margin for bilinear taps
    # The image under the ROI, edges repeated where the ROI leaves it (at least one pixel is
    # taken, so a ROI beside the image repeats the nearest edge).
    h, w = image.shape[:2]
    sx0, sy0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    sx1, sy1 = max(min(x1, w), sx0 + 1), max(min(y1, h), sy0 + 1)
    ox, oy = min(x0, sx0), min(y0, sy0)                      # the part's origin in the image
    part = np.pad(image[sy0:sy1, sx0:sx1],
                  ((sy0 - oy, max(y1, sy1) - sy1), (sx0 - ox, max(x1, sx1) - sx1), (0, 0)),
                  mode="edge")
    k = max(1, int(roi.size / side))                         # box-filter shrink factor
    part = Image.fromarray(part).reduce(k) if k > 1 else Image.fromarray(part)
    # The ROI in the part's pixels after the shrink (pixel i of the shrunk part is the mean of
    # pixels k*i .. k*i + k - 1); PIL's affine map takes output pixel edges to input ones.
    cx, cy = (roi.x - ox - (k - 1) / 2) / k + 0.5, (roi.y - oy - (k - 1) / 2) / k + 0.5
    a, b = ax / (k * side), ay / (k * side)
    matrix = (a[0], b[0], cx - side * (a[0] + b[0]) / 2, a[1], b[1], cy - side * (a[1] + b[1]) / 2)
    crop = part.transform((side, side), Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.float32) / 255


def from_crop(roi: Roi, points: np.ndarray, side: int) -> np.ndarray:
    """Points [N, 3] in crop pixels (0..side at the crop's edges) -> image pixels [N, 3]."""
    ax, ay = _axes(roi)
    u, v = points[:, 0:1] / side - 0.5, points[:, 1:2] / side - 0.5
    xy = np.array([roi.x, roi.y]) + u * ax + v * ay
    return np.concatenate([xy, points[:, 2:3] * roi.size / side], axis=1)
