"""Hands: MediaPipe's palm detector and hand landmark model, to see a hand in front of a face.

Why: a recording of a person used as an avatar (models/video_avatar.py) may have frames where
a hand covers the mouth; those frames must not lend their mouth to the renderer. Both models
(`palm_detection_lite.tflite`, `hand_landmark_lite.tflite`) are taken unchanged from the
mediapipe 0.10.21 wheel (assets/mediapipe, see assets/SOURCE.md) and run under LiteRT; the
graph around them (MediaPipe's hand_landmark_tracking_cpu without the tracking) is redone here
in numpy, with MediaPipe's constants (palm_detection_cpu.pbtxt, ssd_anchors_calculator.cc,
tensors_to_detections_calculator.cc, non_max_suppression_calculator.cc,
palm_detection_detection_to_roi.pbtxt, hand_landmark_cpu.pbtxt):

1. palms: the whole image letterboxed into 192x192 (aspect kept, zero padding), through the
   palm detector: 2016 SSD candidates, each a box and 7 keypoints relative to a fixed anchor;
   score = sigmoid(logit), kept from 0.5; weighted non-max suppression (IoU > 0.3 merges a
   candidate into the best one, positions averaged with the scores as weights);
2. hand ROI per palm: rotated so that wrist (keypoint 0) -> middle finger knuckle (keypoint 2)
   points up, centre moved half the box's height along that direction, a square of 2.6 x the
   box's long side;
3. landmarks: the ROI resampled to 224x224, through the landmark model: 21 points and a hand
   presence probability; hands from 0.5 are kept.

Points (MediaPipe's layout): 0 wrist; thumb 1-4, index 5-8, middle 9-12, ring 13-16, little
finger 17-20, each from the knuckle nearest the palm to the tip. x, y in image pixels, pixel
centres at integers (as models/face_mesh.py).

Speed (2026-12-03, "Intel(R) Xeon(R) Processor", 2 cores, LiteRT on one thread): find_hands on
a 640x360 frame takes 10 ms with no hand in it and 16 ms with one (the palm detector 7 ms, its
letterbox 3 ms; per hand the landmark model 3.5 ms, its crop 2.5 ms).

Images are numpy arrays [H, W, 3] uint8 RGB.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull
from skimage.draw import polygon as fill_polygon

from models import litert
from models.face_mesh import Roi, crop_roi, from_crop

PALM_INPUT = 192                 # palm detector's input side (pixels)
HAND_INPUT = 224                 # landmark model's input side
N_POINTS = 21
MIN_PALM_SCORE = 0.5             # palm candidates below this are dropped (MediaPipe)
NMS_IOU = 0.3                    # candidates overlapping the best one more than this merge
MIN_PRESENCE = 0.5               # hand presence below which the ROI holds no hand
ROI_SCALE = 2.6                  # hand ROI side / palm box's long side
ROI_SHIFT = 0.5                  # ROI centre moved toward the fingers, in palm box heights

# SSD anchors of the palm detector (SsdAnchorsCalculator with num_layers 4, strides 8, 16, 16,
# 16, aspect ratio 1.0 plus the interpolated one, fixed_anchor_size, offset 0.5): two anchors
# per cell of the 24x24 grid (stride 8), then six per cell of the 12x12 grid (the three layers
# of stride 16 merged), row by row. With a fixed anchor size only the centres matter.
# (min_scale 0.1484375 and max_scale 0.75 set the anchors' sizes, which fixed_anchor_size
# replaces by 1.)
ANCHOR_STRIDES = (8, 16, 16, 16)

# Hull dilation, in palm lengths (wrist 0 to middle finger knuckle 9, depth included). The
# points lie on the bones' axes and the tips a little inside the finger ends; on the test
# video's frontal hands a finger is about 22 pixels wide for a palm length of about 100, so
# half a finger's width is 0.11 palm lengths; 0.12 also covers the tips.
HULL_DILATION = 0.12
# The landmark model's depth is 0.4 x its x, y scale (MediaPipe's normalize_z for it): depth
# pixels = model depth / 0.4. With depth, the palm length stays 80-115 pixels on the test
# video's hand turned every way, where the image-plane length falls to 38 for a fist seen
# from the side.
DEPTH_SCALE = 1 / 0.4
COVER_GRID = 64                  # rasterisation cells along the long side of the polygon's box
HAND_REACH = 1.5                 # Hand.reach: fingers out; below it the hand model mostly sees
                                 #   a face looking down as a hand (a fist over the mouth is
                                 #   missed: said in the README)
# A hand's own shape (Hand.matte): each bone a capsule of FINGER_RADIUS palm lengths (half a
# finger's width and a little more, as HULL_DILATION), the palm filled, the edge soft over
# MATTE_EDGE pixels.
FINGER_RADIUS = 0.12
MATTE_EDGE = 1.5
# The bones between the 21 points (MediaPipe's HAND_CONNECTIONS) and the palm's outline.
BONES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10),
         (10, 11), (11, 12), (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (17, 18),
         (18, 19), (19, 20), (0, 17))
PALM = (0, 1, 5, 9, 13, 17)


def palm_anchors() -> np.ndarray:
    """[2016, 2] anchor centres (x, y), as fractions of the palm detector's input."""
    centres = []
    layer = 0
    while layer < len(ANCHOR_STRIDES):
        stride = ANCHOR_STRIDES[layer]
        same = sum(1 for s in ANCHOR_STRIDES[layer:] if s == stride)   # merged layers
        cells = int(np.ceil(PALM_INPUT / stride))
        y, x = np.mgrid[:cells, :cells]
        grid = (np.stack([x, y], -1).reshape(-1, 1, 2) + 0.5) / cells     # [cells^2, 1, 2]
        centres.append(np.repeat(grid, 2 * same, axis=1).reshape(-1, 2))  # 2 anchors a layer
        layer += same
    return np.concatenate(centres).astype(np.float32)


ANCHORS = palm_anchors()


@dataclass(frozen=True)
class Hand:
    """One hand: points [21, 2] float32 (x, y image pixels, MediaPipe's layout, see the module
    docstring); score, the landmark model's hand presence probability (0-1); palm, the
    length wrist -> middle finger knuckle in pixels with the depth included (None: the
    length in the image plane is used instead)."""
    points: np.ndarray
    score: float
    palm: float | None = None

    def hull(self) -> np.ndarray:
        """[K, 2] float32 convex polygon around the hand (x, y pixels, vertices in order).

        The points are the joints' centres, so their hull misses half a finger's width at
        the sides and the fingertips' flesh; it is grown by HULL_DILATION palm lengths, chosen
        on real frames (see there): the hull of 16-gons of that radius around the points.
        """
        palm = self.palm or float(np.linalg.norm(self.points[9] - self.points[0]))
        radius = max(1.0, HULL_DILATION * palm)
        angles = np.arange(16) * (2 * np.pi / 16)
        disc = radius * np.stack([np.cos(angles), np.sin(angles)], 1)         # [16, 2]
        grown = (self.points[:, None, :] + disc[None]).reshape(-1, 2)         # [21 * 16, 2]
        return grown[ConvexHull(grown).vertices].astype(np.float32)

    def matte(self, height: int, width: int) -> np.ndarray:
        """[height, width] float32 0..1: the hand's own shape in an image of that size (the
        fingers apart, unlike hull()): every bone a capsule of FINGER_RADIUS palm lengths
        and the palm filled, the edge soft over MATTE_EDGE pixels."""
        palm = self.palm or float(np.linalg.norm(self.points[9] - self.points[0]))
        radius = max(1.0, FINGER_RADIUS * palm)
        out = np.zeros((height, width), np.float32)
        low = np.floor(self.points.min(0) - radius - MATTE_EDGE).astype(int)
        high = np.ceil(self.points.max(0) + radius + MATTE_EDGE).astype(int) + 1
        x0, y0 = np.maximum(low, 0)
        x1, y1 = min(high[0], width), min(high[1], height)
        if x0 >= x1 or y0 >= y1:
            return out
        y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        pixels = np.stack([x, y], -1)[..., None, :]                        # [h, w, 1, 2]
        a = self.points[[i for i, _ in BONES]]                             # [B, 2]
        b = self.points[[j for _, j in BONES]]
        along = np.clip(((pixels - a) * (b - a)).sum(-1)
                        / np.maximum(((b - a) ** 2).sum(-1), 1e-6), 0.0, 1.0)
        distance = np.linalg.norm(pixels - (a + along[..., None] * (b - a)), axis=-1).min(-1)
        shape = np.clip((radius - distance) / MATTE_EDGE + 0.5, 0.0, 1.0)
        inside = np.zeros((y1 - y0, x1 - x0), bool)
        outline = self.points[list(PALM)] - (x0, y0)
        inside[fill_polygon(outline[:, 1], outline[:, 0], inside.shape)] = True
        out[y0:y1, x0:x1] = np.maximum(shape, inside)
        return out

    def reach(self) -> float:
        """How far the fingers reach: the fingertips' (index to little finger) mean distance
        from the wrist in palm lengths, in the image plane. About 2-2.7 for an open hand or
        fingers over a mouth, 1.0-1.25 where the models took a face looking down for a hand
        (the development clip, 2026-12-03); a fist is that low too."""
        palm = max(float(np.linalg.norm(self.points[9] - self.points[0])), 1e-6)
        tips = np.linalg.norm(self.points[[8, 12, 16, 20]] - self.points[0], axis=1)
        return float(tips.mean() / palm)


@dataclass(frozen=True)
class Palm:
    """A palm detection in image pixels: an axis-aligned box, the detector's 7 keypoints (the
    two MediaPipe names and uses: 0 the wrist's centre, 2 the middle finger's knuckle; the
    others lie on the other knuckles and the thumb) and its score (0-1)."""
    box: tuple[float, float, float, float]   # left, top, right, bottom
    keypoints: np.ndarray                    # [7, 2]
    score: float


def find_hands(image: np.ndarray, max_hands: int = 2,
               palms: list[Palm] | None = None) -> list[Hand]:
    """The hands in an RGB image, at most `max_hands`, the surest palms first; `palms`: where
    to look (found elsewhere, e.g. in a larger picture of the same scene, in this image's
    pixels) instead of the palm detector's own."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image [H, W, 3] uint8, got {image.shape} {image.dtype}")
    hands = []
    for palm in (find_palms(image) if palms is None else palms)[:max_hands]:
        roi = hand_roi(palm)
        points, presence = litert.run("hand", crop_roi(image, roi, HAND_INPUT))[:2]
        presence = float(presence.ravel()[0])            # a probability already (no sigmoid)
        if presence >= MIN_PRESENCE:
            points = points.reshape(N_POINTS, 3)         # x, y, depth in crop pixels
            palm = np.linalg.norm((points[9] - points[0]) * [1, 1, DEPTH_SCALE])
            points = from_crop(roi, points[:, :2], HAND_INPUT)
            hands.append(Hand(points.astype(np.float32), presence,
                              float(palm) * roi.size / HAND_INPUT))
    return hands


def covered(hands: Iterable[Hand | np.ndarray], polygon: np.ndarray) -> float:
    """The share (0-1) of a polygon's area [M, 2] (x, y pixels, e.g. the mouth) that lies under
    any of the hands' hulls. `hands` holds Hands or hull polygons [K, 2] themselves.

    Both are rasterised on a grid of COVER_GRID cells along the long side of the polygon's
    bounding box (a cell counts when its centre is inside), so the share is exact to about
    one cell row at the edges.
    """
    polygon = np.asarray(polygon, np.float64)
    low, high = polygon.min(0), polygon.max(0)
    cell = float((high - low).max()) / COVER_GRID
    if cell <= 0:
        return 0.0
    shape = tuple(int(np.ceil(v)) + 1 for v in (high - low)[::-1] / cell)   # rows, cols

    def mask(points: np.ndarray) -> np.ndarray:
        """Cells [rows, cols] whose centres lie inside `points` (grid cell i spans
        low + i * cell .. low + (i + 1) * cell)."""
        grid = (np.asarray(points, np.float64) - low) / cell - 0.5
        out = np.zeros(shape, bool)
        out[fill_polygon(grid[:, 1], grid[:, 0], shape)] = True
        return out

    inside = mask(polygon)
    if not inside.any():
        return 0.0
    under = np.zeros(shape, bool)
    for hand in hands:
        under |= mask(hand.hull() if isinstance(hand, Hand) else hand)
    return float((inside & under).sum() / inside.sum())


# ---------------------------------------------------------------------------------------------
# Palms
# ---------------------------------------------------------------------------------------------

def find_palms(image: np.ndarray) -> list[Palm]:
    """Palm detections in image pixels, surest first."""
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.zeros((side, side, 3), np.uint8)                 # the letterbox (zeros)
    square[top:top + h, left:left + w] = image
    roi = Roi((side - 1) / 2, (side - 1) / 2, side, 0.0)
    raw, logits = litert.run("palm", crop_roi(square, roi, PALM_INPUT))
    raw, logits = raw[0], logits[0, :, 0]                        # [2016, 18], [2016]
    score = 1 / (1 + np.exp(-np.clip(logits, -100, 100)))
    keep = score >= MIN_PALM_SCORE
    raw, score, anchors = raw[keep], score[keep], ANCHORS[keep]
    # Box (x, y, w, h) and keypoints (x, y) x 7, in input pixels relative to the anchor; all as
    # fractions of the input below.
    centre = raw[:, 0:2] / PALM_INPUT + anchors
    size = raw[:, 2:4] / PALM_INPUT
    keypoints = raw[:, 4:18].reshape(-1, 7, 2) / PALM_INPUT + anchors[:, None]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)   # [N, 4] x0 y0 x1 y1
    good = (size >= 0).all(1)
    palms = []
    for box, points, s in _weighted_nms(boxes[good], keypoints[good], score[good]):
        # fractions of the letterboxed square -> image pixels (centres at integers)
        corners = from_crop(roi, box.reshape(2, 2) * PALM_INPUT, PALM_INPUT) - (left, top)
        points = from_crop(roi, points * PALM_INPUT, PALM_INPUT) - (left, top)
        palms.append(Palm(tuple(float(v) for v in corners.ravel()), points, float(s)))
    return palms


def _weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray):
    """MediaPipe's weighted non-max suppression: the best remaining candidate takes all that
    overlap it by IoU > NMS_IOU (itself included), and its box and keypoints become their
    score-weighted mean; its score stays its own. Yields (box [4], keypoints [7, 2], score)."""
    order = np.argsort(-scores, kind="stable")
    while len(order):
        best = boxes[order[0]]
        rest = boxes[order]
        lo, hi = np.maximum(rest[:, :2], best[:2]), np.minimum(rest[:, 2:], best[2:])
        inter = np.clip(hi - lo, 0, None).prod(1)
        area = (rest[:, 2:] - rest[:, :2]).prod(1)
        iou = inter / np.maximum(area + (best[2:] - best[:2]).prod() - inter, 1e-12)
        group, order = order[iou > NMS_IOU], order[iou <= NMS_IOU]
        if len(group) == 0:                      # a box of no area overlaps nothing, even
            group, order = order[:1], order[1:]  # itself: it stays alone
        weight = scores[group] / scores[group].sum()
        yield (weight @ boxes[group], np.einsum("n,nkd->kd", weight, keypoints[group]),
               scores[group[0]])


def hand_roi(palm: Palm) -> Roi:
    """MediaPipe's hand ROI from a palm: turned so that wrist -> middle finger knuckle points
    up in the crop, moved half the box's height that way, 2.6 x the box's long side."""
    left, top, right, bottom = palm.box
    direction = palm.keypoints[2] - palm.keypoints[0]
    direction = direction / max(float(np.linalg.norm(direction)), 1e-6)
    # The crop's y axis (-sin a, cos a) points from the fingers to the wrist.
    angle = float(np.arctan2(direction[0], -direction[1]))
    height = bottom - top
    x, y = np.array([(left + right) / 2, (top + bottom) / 2]) + ROI_SHIFT * height * direction
    return Roi(float(x), float(y), ROI_SCALE * max(right - left, height), angle)
