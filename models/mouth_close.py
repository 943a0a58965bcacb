"""A portrait's parted lips closed, once, at preparation.

jaw_open 0 is the avatar's own mouth. A photo taken with the lips apart (a smile that shows
the teeth, a word caught half-said) could then never close them: silence and every p, b and m
showed her parted lips, and each generated opening was added to hers. The renderer's warp can
open a mouth (models.warp cuts the face between the lips) but not close one: a smooth field
squeezes an opening rather than removes it. So preparation closes it once, as LivePortrait
closes a source's lips before animating it ("lip zero"), and the avatar is made from the
closed crop. The photo as it was stays with the avatar (Avatar.own_mouth, own_lips): when
the lips part, the renderer shows her own teeth where the photo has them (models.mouth).

The lips meet on a line UPPER_SHARE of the way down the opening (the upper lip moving at most
UPPER_MOST): each lip moves to it whole (OUTER_FOLLOW), and the chin follows the lower lip
part of the way (the jaw comes up). The face is cut along the meeting
line, as the renderer cuts it: above it a field that moves the upper lip down, below it one
that moves the lower lip up (each a thin-plate spline through the landmarks and the lips'
edges, vanishing on an ellipse around the mouth and chin), so the teeth between them are
covered, not squeezed into a band. Past the mouth corners, where there is no cut, the two
ease into one. Whatever of the opening still shows (pixels drawn from between the lips, and
near the meeting line anything as dark as the mouth's cavity: a laugh's dark corners) is
filled in from the lips and skin around it. A soft shadow marks the line the lips press
together on. Everything here is numpy on the crop, once per portrait.
"""

from __future__ import annotations

import cv2
import numpy as np

from models import motion_space as ms
from models import warp
from models.background import fill
from models.mouth_bank import bilinear, lip_gap

LUMA = np.array([0.299, 0.587, 0.114], np.float32)   # luminance of RGB
UPPER = (60, 61, 62, 63, 64)     # inner lips, corner to corner
LOWER = (60, 67, 66, 65, 64)
UPPER_OUTER = (49, 50, 51, 52, 53)   # outer lips, between the corners
LOWER_OUTER = (59, 58, 57, 56, 55)
CHIN = {6: 0.5, 7: 0.85, 8: 1.0, 9: 0.85, 10: 0.5}   # chin points, share of the chin's way
ALONG = 15               # points along each inner lip the fields are pinned at
CLOSE_FROM = 0.01        # a mean inner-lip gap (face widths) at or above this is closed
UPPER_SHARE = 0.4        # the lips meet this share of the way down the opening, ...
UPPER_MOST = 0.03        # ... the upper lip moving at most this far (face widths): a laugh's
                         #   jaw comes up, its upper lip does not cover the whole gap
OUTER_FOLLOW = 1.0       # a lip's outer edge moves this share of its inner edge's way
CHIN_FOLLOW = 0.7        # the chin moves this share of the lower lip's way, ...
CHIN_MOST = 0.05         # ... at most this far (face widths; the skin below it must stretch)
# The fields live inside this ellipse (canonical units: centre, semi-axes; from the nose's
# tip to below the chin) and fade out over its outer 30 %: nothing else of the face moves.
MOUTH_ELLIPSE = ((0.0, 0.62), (0.42, 0.30))
SMOOTHING = 1e-4         # of the thin-plate splines, face widths (as models.warp)
INVERSE_STEPS = 6        # fixed-point steps of s = q - D(s)
TEETH_CONTRAST = 30.0    # teeth outshine the lips by this much luminance (0..255) when shown
LIP_BODY = 0.3           # the lips' own light is read this share of the way in from outside
REACH = 0.6              # an inner edge is followed off the teeth at most this share of the lip
TEETH_EDGE = 0.65        # less red than this share of the way from teeth to lips is teeth
CAVITY = 0.6             # darker than this share of the lips' light is the cavity
STEP = 0.5               # pixels per step of that search
LINE_SHADE = 0.25        # the line the lips press together on: its light lowered this much
LINE_WIDTH = 0.007       #   over this many face widths either side
SEAM = 0.5               # pixels: the soft edge where the lips meet
LEFT_BAND = 0.035        # what is left of the opening is looked for this far (face widths)
LEFT_REACH = 1.4         #   either side of the meeting line and this far along it (mouth
                         #   half widths: past the corners, where a laugh's corners are dark)


class MouthFrame:
    """The mouth's own frame from the inner corners of landmarks [68, 2]: u along the lips
    (-1 and 1 at the corners), v in pixels towards the chin; the lips' inner edges as
    polylines v(u) over `knots` [A] (the landmarks' by default; edges_from_teeth)."""

    def __init__(self, landmarks: np.ndarray):
        left, right = landmarks[60].astype(np.float64), landmarks[64].astype(np.float64)
        self.centre = (left + right) / 2
        self.half = np.linalg.norm(right - left) / 2
        self.axis = (right - left) / (2 * self.half)
        self.normal = np.array([-self.axis[1], self.axis[0]])
        self.face_width = ms.place(landmarks).scale
        self.knots = np.linspace(-1.0, 1.0, ALONG + 2)
        self.upper = self._along(landmarks[list(UPPER)])
        self.lower = self._along(landmarks[list(LOWER)])

    def coordinates(self, points: np.ndarray) -> np.ndarray:
        """(u, v) [..., 2] of pixels [..., 2]."""
        d = np.asarray(points, np.float64) - self.centre
        return np.stack([d @ self.axis / self.half, d @ self.normal], -1)

    def pixels(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Pixels [..., 2] of (u, v)."""
        return self.centre + (u * self.half)[..., None] * self.axis + v[..., None] * self.normal

    def _along(self, points: np.ndarray) -> np.ndarray:
        return np.interp(self.knots, *self.coordinates(points).T)

    def edge(self, lip: np.ndarray, u: np.ndarray) -> np.ndarray:
        """v of a lip's edge (self.upper or self.lower) at u."""
        return np.interp(u, self.knots, lip)

    def gap(self, u: np.ndarray) -> np.ndarray:
        """How far the inner lips part (pixels, along the normal) at u."""
        return np.maximum(self.edge(self.lower, u) - self.edge(self.upper, u), 0.0)

    def down(self, u: np.ndarray) -> np.ndarray:
        """How far the upper lip comes down to close the lips, at u (pixels)."""
        return np.minimum(UPPER_SHARE * self.gap(u), UPPER_MOST * self.face_width)

    def meeting(self, u: np.ndarray) -> np.ndarray:
        """v of the line the closed lips meet on, at u."""
        return self.edge(self.upper, u) + self.down(u)

    def chin(self) -> np.ndarray:
        """How the chin moves [2] (pixels): up, with the lower lip."""
        rise = self.gap(np.zeros(1))[0] - self.down(np.zeros(1))[0]
        return -min(CHIN_FOLLOW * rise, CHIN_MOST * self.face_width) * self.normal


def edges_from_teeth(crop: np.ndarray, landmarks: np.ndarray) -> MouthFrame:
    """The mouth frame of landmarks [68, 2] on crop [S, S, 3], its inner lip edges moved off
    the teeth. On a broad smile the landmark models put the inner upper lip on the teeth's
    lower edge at the mouth's sides (and the lower lip on the lower teeth): closing those
    would leave the teeth between the lips. Where the opening's brightest pixels outshine the
    lips by TEETH_CONTRAST, each edge is followed outwards (towards its outer lip, at most
    REACH of the way) while the pixels are less red than TEETH_EDGE of the way from the
    teeth's redness to the lips' (teeth in the lips' shadow are as dark as lips, but still
    grey), or as dark as the mouth's cavity (CAVITY of the lips' light: the dark between the
    rows)."""
    frame = MouthFrame(landmarks)
    image = crop.astype(np.float32)
    luminance = image @ LUMA
    redness = (image[..., 0] - image[..., 1]) / (image[..., 0] + 1.0)
    inner = np.concatenate([frame.pixels(frame.knots, frame.upper),
                            frame.pixels(frame.knots[::-1], frame.lower[::-1])])
    mask = np.zeros(luminance.shape, np.uint8)
    cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], 1)
    opening = mask > 0
    if opening.sum() < 4:
        return frame
    bright = luminance[opening] >= np.percentile(luminance[opening], 80)
    teeth_light, teeth_red = luminance[opening][bright].mean(), redness[opening][bright].mean()
    body = _lip_body(landmarks)
    lip_light, lip_red = np.median(_at(luminance, body)), np.median(_at(redness, body))
    if teeth_light - lip_light < TEETH_CONTRAST or lip_red <= teeth_red:
        return frame
    grey, dark = teeth_red + TEETH_EDGE * (lip_red - teeth_red), CAVITY * lip_light
    u = frame.knots[1:-1]
    for edge, outer, way in ((frame.upper, UPPER_OUTER, -1.0), (frame.lower, LOWER_OUTER, 1.0)):
        outer_v = np.interp(u, *frame.coordinates(landmarks[[60, *outer, 64]]).T)
        limit = np.abs(edge[1:-1] - outer_v) * REACH
        moved = np.zeros_like(u)
        going = np.ones(len(u), bool)
        while going.any():
            at = frame.pixels(u, edge[1:-1] + way * (moved + STEP))
            teeth_or_dark = (_at(redness, at) < grey) | (_at(luminance, at) < dark)
            going &= teeth_or_dark & (moved + STEP <= limit)
            moved += STEP * going
        for _ in range(2):              # no steps from knot to knot: they would shear the lip
            moved = np.convolve(np.pad(moved, 1, mode="edge"), [0.25, 0.5, 0.25], "valid")
        edge[1:-1] += way * moved
    return frame


def _lip_body(landmarks: np.ndarray) -> np.ndarray:
    """Points [6, 2] in the lips' own body (LIP_BODY of the way in from their outer edges,
    the middle three of each lip), where their colour is read."""
    return np.concatenate([landmarks[list(outer)] + LIP_BODY * (landmarks[list(edge)]
                                                                - landmarks[list(outer)])
                           for outer, edge in ((UPPER_OUTER[1:4], UPPER[1:4]),
                                               (LOWER_OUTER[1:4], LOWER[1:4]))])


def _at(channel: np.ndarray, points: np.ndarray) -> np.ndarray:
    """One channel [H, W] at pixels points [..., 2] (bilinear)."""
    return bilinear(channel[..., None], points)[..., 0]


def closing_moves(landmarks: np.ndarray,
                  frame: MouthFrame) -> tuple[np.ndarray, np.ndarray]:
    """Points [P, 2] pixels (the landmarks but the inner lips', then the inner lips' edges at
    the frame's knots between the corners) and how they move to close the lips in the upper
    and the lower layer [2, P, 2]. Each inner edge moves along the mouth's normal to the
    meeting line UPPER_SHARE of the way down the opening; in the upper layer the lower lip
    follows the upper one, in the lower layer the upper lip follows the lower one (as
    models.warp.expression_controls), so neither field tears."""
    kept = [k for k in range(68) if k not in (*UPPER[1:4], *LOWER[1:4])]
    u = frame.knots[1:-1]
    points = np.concatenate([landmarks[kept], frame.pixels(u, frame.edge(frame.upper, u)),
                             frame.pixels(u, frame.edge(frame.lower, u))]).astype(np.float64)
    index = {k: i for i, k in enumerate(kept)}
    along = len(u)
    upper_lip = [*(index[k] for k in UPPER_OUTER), *range(len(kept), len(kept) + along)]
    lower_lip = [*(index[k] for k in LOWER_OUTER),
                 *range(len(kept) + along, len(kept) + 2 * along)]
    u_points = frame.coordinates(points)[:, 0]                             # [P]
    lowered, raised = frame.down(u_points), frame.gap(u_points) - frame.down(u_points)
    follow = np.ones(len(points))
    follow[[index[k] for k in (*UPPER_OUTER, *LOWER_OUTER)]] = OUTER_FOLLOW
    down = np.zeros((len(points), 2))
    up = np.zeros((len(points), 2))
    for lip in (upper_lip, lower_lip):
        down[lip] = (lowered * follow)[lip, None] * frame.normal
        up[lip] = -(raised * follow)[lip, None] * frame.normal
    for point, share in CHIN.items():
        up[index[point]] = share * frame.chin()
    return points, np.stack([down, up])


def closed_landmarks(landmarks: np.ndarray, frame: MouthFrame) -> np.ndarray:
    """Landmarks [68, 2] of the closed mouth: the inner lips on the meeting line, the outer
    lips and the chin moved as closing_moves moves them."""
    closed = np.array(landmarks, np.float64)
    u = frame.coordinates(landmarks)[:, 0]
    lowered, raised = frame.down(u), frame.gap(u) - frame.down(u)
    for outer, way in ((UPPER_OUTER, lowered), (LOWER_OUTER, -raised)):
        closed[list(outer)] += (OUTER_FOLLOW * way[list(outer)])[:, None] * frame.normal
    for point, share in CHIN.items():
        closed[point] += share * frame.chin()
    inner = [*UPPER[1:4], *LOWER[1:4]]
    u = frame.coordinates(landmarks[inner])[:, 0]
    closed[inner] = frame.pixels(u, frame.meeting(u))
    return closed.astype(np.float32)


def _inverse(controls: np.ndarray, moves: np.ndarray, queries: np.ndarray,
             inside) -> np.ndarray:
    """Sources s [Q, 2] (canonical units) with s + D(s) = queries [Q, 2], D the thin-plate
    spline through controls [K, 2] with moves [K, 2], faded out by inside(points) [Q]."""
    k = len(controls)
    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = warp.tps_kernel(controls, controls) + SMOOTHING * np.eye(k)
    system[:k, k:] = np.concatenate([np.ones((k, 1)), controls], 1)
    system[k:, :k] = system[:k, k:].T
    coefficients = np.linalg.solve(system, np.concatenate([moves, np.zeros((3, 2))]))

    def field(points):
        basis = np.concatenate([warp.tps_kernel(points, controls), np.ones((len(points), 1)),
                                points], 1)
        return (basis @ coefficients) * inside(points)[:, None]

    sources = np.array(queries, copy=True)
    for _ in range(INVERSE_STEPS):
        sources = queries - field(sources)
    return sources


def close_lips(crop: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The crop [S, S, 3] uint8 and its landmarks [68, 2] with the lips closed (the same
    arrays when they already are: lip_gap under CLOSE_FROM)."""
    if lip_gap(landmarks[60:68], ms.place(landmarks).scale) < CLOSE_FROM:
        return crop, landmarks
    placement = ms.place(landmarks)
    matrix_inv = np.linalg.inv(placement.matrix())
    frame = edges_from_teeth(crop, landmarks)
    points, layers = closing_moves(landmarks, frame)
    ring = warp.ellipse_ring(MOUTH_ELLIPSE, 28)
    controls = np.concatenate([placement.to_canonical(points), ring])      # [K, 2]

    def inside(at):
        return 1.0 - warp.smoothstep(0.7, 1.0, warp.ellipse_radius(at, MOUTH_ELLIPSE))

    # the pixels the fields reach: the mouth ellipse's box
    size = crop.shape[0]
    box = placement.to_image(warp.ellipse_ring(MOUTH_ELLIPSE, 64))
    x0, y0 = np.clip(np.floor(box.min(0)).astype(int), 0, size - 1)
    x1, y1 = np.clip(np.ceil(box.max(0)).astype(int) + 1, 1, size)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    pixels = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64)      # [Q, 2]
    queries = placement.to_canonical(pixels)
    near = inside(queries) > 0

    shape = (y1 - y0, x1 - x0)
    upper_weight = _upper_weight(pixels, frame).reshape(shape + (1,))
    drawn = np.zeros(shape + (3,))
    opening = np.zeros(shape)                     # how much of each pixel is drawn from it
    for moves, weight in zip(layers, (upper_weight, 1.0 - upper_weight), strict=True):
        moves_c = np.concatenate([moves @ matrix_inv.T, np.zeros((len(ring), 2))])
        at = np.array(queries, copy=True)
        at[near] = _inverse(controls, moves_c, queries[near], inside)
        source = placement.to_image(at).astype(np.float32).reshape(shape + (2,))
        sampled = cv2.remap(crop, source[..., 0], source[..., 1], cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
        drawn += sampled.astype(np.float64) * weight
        opening += _between_lips(source, frame) * weight[..., 0]
    left = _left_open(drawn, opening, pixels, frame, _lip_light(crop, landmarks))
    drawn = _filled(drawn, left)
    drawn *= 1.0 - LINE_SHADE * _lip_line(pixels, frame, placement.scale).reshape(shape + (1,))
    out = np.array(crop, copy=True)
    out[y0:y1, x0:x1] = np.where(near.reshape(shape + (1,)), np.clip(np.rint(drawn), 0, 255),
                                 crop[y0:y1, x0:x1])
    return out, closed_landmarks(landmarks, frame)


def _lip_light(crop: np.ndarray, landmarks: np.ndarray) -> float:
    """The lips' median luminance (0..255) in their own body on crop [S, S, 3]."""
    luminance = crop.astype(np.float32) @ LUMA
    return float(np.median(_at(luminance, _lip_body(landmarks))))


def _between_lips(points: np.ndarray, frame: MouthFrame) -> np.ndarray:
    """1 where pixels [..., 2] of the open crop lie between its inner lip edges (the
    frame's, moved off the teeth), half a pixel in from each, else 0: [...]."""
    u, v = np.moveaxis(frame.coordinates(points.astype(np.float64)), -1, 0)
    return ((np.abs(u) < 1.0) & (v > frame.edge(frame.upper, u) + 0.5)
            & (v < frame.edge(frame.lower, u) - 0.5)).astype(np.float64)


def _left_open(drawn: np.ndarray, opening: np.ndarray, pixels: np.ndarray,
               frame: MouthFrame, lip_light: float) -> np.ndarray:
    """[h, w] bool: what the closed mouth drawn [h, w, 3] (over `pixels` [h * w, 2]) still
    shows of the opening: pixels drawn mostly from between the lips (`opening` [h, w]), and
    within LEFT_BAND face widths of the meeting line, out to LEFT_REACH half widths along
    it, pixels as dark as the cavity (CAVITY of the lips' light): the corners of a laugh
    lie past the landmarks' inner corners, where the two layers ease into one."""
    band = near_meeting_line(pixels, frame).reshape(opening.shape)
    dark = drawn @ LUMA < CAVITY * lip_light
    return (opening > 0.5) | (band & dark)


def near_meeting_line(pixels: np.ndarray, frame: MouthFrame) -> np.ndarray:
    """[...] bool: pixels [..., 2] within LEFT_BAND face widths of the line the closed lips
    meet on (held level past the corners), out to LEFT_REACH mouth half widths along it."""
    u, v = np.moveaxis(frame.coordinates(pixels), -1, 0)
    return ((np.abs(v - frame.meeting(np.clip(u, -1.0, 1.0))) < LEFT_BAND * frame.face_width)
            & (np.abs(u) < LEFT_REACH))


def _filled(drawn: np.ndarray, left: np.ndarray) -> np.ndarray:
    """drawn [h, w, 3] with the pixels `left` [h, w] (grown by 2 pixels, edges softened)
    filled in from the lips and skin around them (models.background.fill, push-pull)."""
    from scipy import ndimage

    if not left.any():
        return drawn
    grown = ndimage.binary_dilation(left, iterations=2)
    soft = ndimage.gaussian_filter(grown.astype(np.float64), 0.7)[..., None]
    return drawn + (fill(drawn, ~grown) - drawn) * soft


def _lip_line(pixels: np.ndarray, frame: MouthFrame, face_width: float) -> np.ndarray:
    """Per pixel [Q, 2] how much of the shadow where closed lips press together it gets [Q]:
    1 on the meeting line, falling off over LINE_WIDTH face widths, and over the last tenth
    of the mouth's half width past each corner."""
    u, v = frame.coordinates(pixels).T
    across = (v - frame.meeting(u)) / max(LINE_WIDTH * face_width, 0.5)
    along = np.clip((1.1 - np.abs(u)) / 0.1, 0.0, 1.0)
    return np.exp(-across * across) * along


def _upper_weight(pixels: np.ndarray, frame: MouthFrame) -> np.ndarray:
    """Per pixel [Q, 2] the weight of the upper layer [Q]: 1 above the line the lips meet on
    (frame: the open mouth's), 0 below it, a soft SEAM between that widens past the mouth
    corners (two pixels per pixel beyond them, as models.warp.choose_layer)."""
    u, v = frame.coordinates(pixels).T
    meeting = frame.meeting(u)
    width = SEAM + 2.0 * np.maximum(np.abs(u) - 1.0, 0.0) * frame.half
    return 1.0 / (1.0 + np.exp(np.clip((v - meeting) / width, -50, 50)))
