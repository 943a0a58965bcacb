"""The dense warp: from motion to a backward sampling map over the portrait.

A frame is made by sampling the portrait at s(x) for every output pixel x. The forward
model of the face is: source point p -> p + E(p) (expression: mouth, brows, lids; a smooth
field interpolated from landmark displacements by a thin-plate spline) -> head pose (see
models.head), blended out to the static background by the feathered head mask m. Its
inverse is computed on a coarse COARSE x COARSE grid and upsampled by the renderer:

    h = pose^-1(x),  q = x + m(h) * (h - x)       head over a still background
    s + E(s) = q                                   expression, Newton steps on the field

The lips can part: the face is cut along the line between the lips into an upper and a
lower layer, each with its own smooth field (see expression_controls); per node the layer
whose inverse lands on its own side of the cut is used. The gap between them is the open
mouth, painted by models.mouth.

Prep-time functions (numpy, once per avatar) build the fields; render-time functions
(torch, batched over frames) are pure tensor ops so the renderer exports to ONNX.
"""

import numpy as np
import torch
import torch.nn.functional as F

from models import motion_space as ms
from models.curves import feature_frame, polyline, project

COARSE = 64               # the coarse grid is COARSE x COARSE nodes at any working size
NEWTON_STEPS = 3
# Expression fields live inside this ellipse (canonical units: centre, semi-axes) and
# vanish on its border.
FACE_ELLIPSE = ((0.0, 0.30), (0.78, 1.05))


# ---------------------------------------------------------------------------------------------
# Prep time (numpy)
# ---------------------------------------------------------------------------------------------

def grid_points(size: int) -> np.ndarray:
    """Centres of the coarse grid nodes in full-resolution pixel coordinates: [h, w, 2]."""
    h = COARSE
    centres = (np.arange(h) + 0.5) * (size / h) - 0.5
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs, ys], -1)


def tps_kernel(points: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """r^2 log r between points [Q, 2] and controls [K, 2] -> [Q, K] (0 at r = 0), computed
    as r^2 log(r^2) / 2 from squared distances (no square roots; |p|^2 + |c|^2 - 2 p.c: one
    matrix product, ~4x faster than differences, equal to 1e-13)."""
    r2 = (points ** 2).sum(1)[:, None] + (controls ** 2).sum(1)[None] - 2.0 * points @ controls.T
    r2 = np.maximum(r2, 0.0)
    return 0.5 * r2 * np.log(np.maximum(r2, 1e-300))


def tps_interpolator(controls: np.ndarray, queries: np.ndarray,
                     smoothing: float = 1e-4) -> np.ndarray:
    """Matrix W [Q, K] such that W @ values interpolates values given at K control points
    [K, 2] at Q query points [Q, 2] with a (lightly smoothed) thin-plate spline. Use
    coordinates in face widths so `smoothing` has a fixed meaning."""
    k = len(controls)
    kernel = tps_kernel(controls, controls)
    affine = np.concatenate([np.ones((k, 1)), controls], 1)                # [K, 3]
    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = kernel + smoothing * np.eye(k)
    system[:k, k:] = affine
    system[k:, :k] = affine.T
    inverse = np.linalg.inv(system)[:, :k]                                 # [K+3, K]
    q_kernel = tps_kernel(queries, controls)
    q_affine = np.concatenate([np.ones((len(queries), 1)), queries], 1)
    return np.concatenate([q_kernel, q_affine], 1) @ inverse               # [Q, K]


def ellipse_radius(points: np.ndarray, ellipse) -> np.ndarray:
    (cx, cy), (ax, ay) = ellipse
    return np.sqrt(((points[..., 0] - cx) / ax) ** 2 + ((points[..., 1] - cy) / ay) ** 2)


def smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def ellipse_ring(ellipse, count: int) -> np.ndarray:
    (cx, cy), (ax, ay) = ellipse
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.stack([cx + ax * np.cos(angles), cy + ay * np.sin(angles)], 1)


# The cut between the lips runs from mouth corner to mouth corner. In the upper layer's
# field the lower lip's points follow the upper lip, in the lower layer's the upper lip's
# follow the lower lip, so neither field has to tear. Pairs (upper, lower) of lip points
# facing each other across the cut:
LIP_PAIRS = ((49, 59), (50, 58), (51, 57), (52, 56), (53, 55), (61, 67), (62, 66), (63, 65))
LAYERS = ("upper", "lower")


def expression_controls(face: np.ndarray, basis: np.ndarray,
                        layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Control points [K, 2] and their displacements per expression parameter [E, K, 2], in
    canonical units, for a face [68, 2+] and its basis [D, 68, 3], for one layer. Blinks
    move no control point (the eyelid is drawn by models.eyes)."""
    points = face[:, :2].copy()
    moves = np.stack([basis[ms.index(n), :, :2] for n in ms.EXPRESSION])   # [E, 68, 2]
    moves[[ms.EXPRESSION.index("blink_left"), ms.EXPRESSION.index("blink_right")]] = 0.0
    for upper, lower in LIP_PAIRS:
        if layer == "upper":
            moves[:, lower] = moves[:, upper]
        else:
            moves[:, upper] = moves[:, lower]
    ring = ellipse_ring(FACE_ELLIPSE, 28)
    points = np.concatenate([points, ring])
    moves = np.concatenate([moves, np.zeros((len(moves), len(ring), 2))], 1)
    return points, moves


def expression_fields(face: np.ndarray, basis: np.ndarray, placement: ms.Placement,
                      size: int) -> tuple[np.ndarray, np.ndarray]:
    """Forward displacement per unit of each expression parameter on the coarse grid, in
    pixels, for both layers: fields [2, E, 2, h, w], and their spatial derivatives
    [2, E, 4, h, w] (dfx/dx, dfx/dy, dfy/dx, dfy/dy)."""
    nodes = grid_points(size)                                              # [h, w, 2] px
    h, w = nodes.shape[:2]
    nodes_c = placement.to_canonical(nodes.reshape(-1, 2))                 # [Q, 2]
    inside = 1.0 - smoothstep(0.85, 1.0, ellipse_radius(nodes_c, FACE_ELLIPSE))
    near = inside > 0              # the fields vanish outside the face ellipse
    interp = None                  # both layers have the same control points, other moves
    all_fields, all_jacobians = [], []
    for layer in LAYERS:
        controls, moves = expression_controls(face, basis, layer)
        if interp is None:
            interp = tps_interpolator(controls, nodes_c[near])             # [Q', K]
        fields_c = np.zeros((len(moves), len(nodes_c), 2))                 # [E, Q, 2]
        fields_c[:, near] = np.tensordot(interp, moves, axes=([1], [1])).transpose(1, 0, 2)
        fields_c *= inside[None, :, None]
        fields = fields_c @ placement.matrix().T                           # [E, Q, 2] px
        fields = fields.reshape(len(moves), h, w, 2).transpose(0, 3, 1, 2)  # [E, 2, h, w]
        all_fields.append(fields)
        all_jacobians.append(field_jacobian(fields, size))
    return np.stack(all_fields).astype(np.float32), np.stack(all_jacobians).astype(np.float32)


def field_jacobian(fields: np.ndarray, size: int) -> np.ndarray:
    """Spatial derivatives [..., 4, h, w] (dfx/dx, dfx/dy, dfy/dx, dfy/dy) of displacement
    fields [..., 2, h, w] on the coarse grid of a size x size image."""
    spacing = size / fields.shape[-1]
    dfx_dy, dfx_dx = np.gradient(fields[..., 0, :, :], spacing, axis=(-2, -1))
    dfy_dy, dfy_dx = np.gradient(fields[..., 1, :, :], spacing, axis=(-2, -1))
    return np.stack([dfx_dx, dfx_dy, dfy_dx, dfy_dy], -3)


# ---------------------------------------------------------------------------------------------
# Render time (torch, batched over N frames)
# ---------------------------------------------------------------------------------------------

def to_grid(points: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates -> grid_sample coordinates (align_corners=False)."""
    return (2.0 * points + 1.0) / size - 1.0


def sample(field: torch.Tensor, points: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear lookup of field [N or 1, C, h, w] (covering a size x size image) at pixel
    positions points [N, ..., 2] -> [N, C, ...], clamped at the border. A single field is
    looked up for all N frames in one call (the frames are folded into the grid, so nothing
    is copied)."""
    n = points.shape[0]
    channels = field.shape[1]
    if field.shape[0] == 1:
        grid = to_grid(points, size).reshape(1, -1, 1, 2)                  # [1, N*P, 1, 2]
        out = grid_sample(field, grid)                                     # [1, C, N*P, 1]
        out = out.reshape(channels, n, -1).transpose(0, 1)                 # [N, C, P]
    else:
        grid = to_grid(points, size).reshape(n, -1, 1, 2)                  # [N, P, 1, 2]
        out = grid_sample(field, grid)                                     # [N, C, P, 1]
    return out.reshape((n, channels) + points.shape[1:-1])


def grid_sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling, border clamped: image [B, C, H, W], grid [B, h, w, 2] in
    grid_sample coordinates -> [B, C, h, w] (ONNX GridSample)."""
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def invert_expression(fields: torch.Tensor, targets: torch.Tensor, size: int) -> torch.Tensor:
    """Solve s + E(s) = q for s. fields [N, 6, h, w]: displacement (2) and its Jacobian (4)
    on the coarse grid; targets q [N, h, w, 2] pixels -> s [N, h, w, 2]."""
    def lookup(points):
        return sample(fields, points, size).permute(0, 2, 3, 1)           # [N, h, w, 6]

    source = targets - lookup(targets)[..., :2]
    for _ in range(NEWTON_STEPS):
        f = lookup(source)
        residual = source + f[..., :2] - targets                           # [N, h, w, 2]
        a, b, c, d = 1.0 + f[..., 2], f[..., 3], f[..., 4], 1.0 + f[..., 5]
        det = torch.clamp(a * d - b * c, min=0.05)
        rx, ry = residual[..., 0], residual[..., 1]
        step = torch.stack([d * rx - b * ry, a * ry - c * rx], -1) / det[..., None]
        source = source - step
    return source


# Points of the cut between the lips, left to right: mouth corner, the midpoints of the
# inner-lip pairs, mouth corner.
CUT = ((60, 60), (61, 67), (62, 66), (63, 65), (64, 64))


def choose_layer(upper: torch.Tensor, lower: torch.Tensor, landmarks: torch.Tensor,
                 soft: float) -> torch.Tensor:
    """Per point, the layer whose source lies on its own side of the cut between the lips.
    upper, lower [N, P, 2]: the sources found in each layer; landmarks [68, 2] of the
    portrait; soft: transition width in pixels. Returns the weight of the upper layer
    [N, P, 1]. Beyond the mouth corners there is no cut: the weights ease to one half."""
    ends = [landmarks[a] for a, _ in CUT]
    knots = torch.stack([(landmarks[a] + landmarks[b]) / 2 for a, b in CUT])[None]  # [1, 5, 2]
    left, right = ends[0][None], ends[-1][None]
    u_up, v_up, half, frame = feature_frame(upper, left, right)
    u_lo, v_lo, _, _ = feature_frame(lower, left, right)
    knot_u, knot_v = project(knots, frame, half)
    below_up = v_up - polyline(u_up, knot_u, knot_v)       # > 0: upper source is below the cut
    above_lo = polyline(u_lo, knot_u, knot_v) - v_lo       # > 0: lower source is above it
    beyond = torch.relu(torch.maximum(u_up.abs(), u_lo.abs()) - 1.0) * half[:, None]
    width = soft + 2.0 * beyond
    return torch.sigmoid((above_lo - below_up) / width)[..., None]
