"""The head: its pose, its depth and which pixels move with it.

Pose (render time, torch): a 3D rotation of the head about a pivot in the neck, scale and
translation, applied to points with a depth; its inverse for the backward warp is a few
Newton steps on the depth map. Depth and mask (prep time, numpy, once per avatar): the
head's depth is the canonical face's landmark depths blended into an ellipsoid; the head
mask is the head's matte (models.background: face, hair, hat, neck) on the coarse grid,
feathered outwards over the background and faded out down the neck.
"""

import math

import numpy as np
import torch

from models import motion_space as ms
from models import warp

# In canonical units (face widths, origin between the eyes, y down): the head's rough
# shape (for its depth), the most the head mask may cover (hair, hats), the neck below it
# (half width, full weight until y, zero weight at y) and how far outside the head its
# motion fades out over the background.
HEAD_ELLIPSE = ((0.0, -0.08), (0.72, 1.02))
HEAD_REGION = ((0.0, -0.15), (1.0, 1.3))
NECK = (0.45, 0.75, 1.45)
HEAD_FEATHER = 0.35
HEAD_MATTE = 0.02          # matte above this is head (models.background.HOLE_MATTE)
DEPTH_SMOOTHING = 1e-2
DEPTH_STEPS = 3


# ---------------------------------------------------------------------------------------------
# Prep time (numpy)
# ---------------------------------------------------------------------------------------------

def head_mask(matte: np.ndarray, placement: ms.Placement, size: int) -> np.ndarray:
    """How much each coarse node moves with the head, 0..1: [h, w].

    A node moves with the head when any pixel of its cell is head in `matte`
    (models.background.head_matte, full resolution: face, hair, hat and the neck, from the
    person segmentation), so that the whole head, hair tips included, moves as one. Feathered
    outwards (never inwards) over the background, which the renderer does not show there
    (the plate is drawn instead), and faded out down the neck towards the still torso.
    """
    from scipy import ndimage

    h = warp.COARSE
    cell = size // h
    head = (matte > HEAD_MATTE).reshape(h, cell, h, cell).any(axis=(1, 3))
    nodes_c = placement.to_canonical(warp.grid_points(size).reshape(-1, 2)).reshape(h, h, 2)
    _, full, zero = NECK
    # feather outwards: full weight on the head, falling to zero HEAD_FEATHER outside it
    outside = ndimage.distance_transform_edt(~head) * cell / placement.scale
    weight = 1.0 - warp.smoothstep(0.0, HEAD_FEATHER, outside)
    weight = weight * (1.0 - warp.smoothstep(full, zero, nodes_c[..., 1]))   # neck fades out
    return ndimage.gaussian_filter(weight, 1.0).astype(np.float32)


def depth_map(face: np.ndarray, placement: ms.Placement, size: int) -> np.ndarray:
    """Depth towards the camera on the coarse grid and its slopes: [3, h, w] (z in pixels,
    dz/dx, dz/dy). Landmark depths from the canonical face, the rest of the head an
    ellipsoid, blended with a smoothing thin-plate spline (a smooth surface keeps the head
    turn free of folds up to the documented 30 degrees)."""
    ring = warp.ellipse_ring(HEAD_ELLIPSE, 24)
    scalp = np.array([(x, y) for y in (-0.85, -0.6, -0.35) for x in (-0.4, -0.2, 0.0, 0.2, 0.4)])
    r = warp.ellipse_radius(scalp, HEAD_ELLIPSE)
    scalp_z = 0.45 * np.sqrt(np.clip(1 - r * r, 0, 1))
    neck = np.array([(x, y) for y in (1.0, 1.3) for x in (-0.25, 0.0, 0.25)])
    controls = np.concatenate([face[:, :2], ring, scalp, neck])
    depths = np.concatenate([ms.CANONICAL[:, 2], np.zeros(len(ring)), scalp_z,
                             np.full(len(neck), 0.12)])
    nodes_c = placement.to_canonical(warp.grid_points(size).reshape(-1, 2))
    z = warp.tps_interpolator(controls, nodes_c, smoothing=DEPTH_SMOOTHING) @ depths
    h = warp.COARSE
    z = (np.clip(z, 0.0, None) * placement.scale).reshape(h, h)
    dz_dy, dz_dx = np.gradient(z, size / h)
    return np.stack([z, dz_dx, dz_dy]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Render time (torch, batched over N frames)
# ---------------------------------------------------------------------------------------------

def rotation(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """[N] angles in degrees -> [N, 3, 3]; the same convention as motion_space.rotation."""
    yaw, pitch, roll = (a * (math.pi / 180) for a in (yaw, pitch, roll))   # (ONNX: no Deg2Rad)
    cy, sy, cp, sp, cr, sr = (torch.cos(yaw), torch.sin(yaw), torch.cos(pitch),
                              torch.sin(pitch), torch.cos(roll), torch.sin(roll))
    one, zero = torch.ones_like(cy), torch.zeros_like(cy)
    r_yaw = torch.stack([torch.stack([cy, zero, sy], -1), torch.stack([zero, one, zero], -1),
                         torch.stack([-sy, zero, cy], -1)], -2)
    r_pitch = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cp, sp], -1),
                           torch.stack([zero, -sp, cp], -1)], -2)
    r_roll = torch.stack([torch.stack([cr, -sr, zero], -1), torch.stack([sr, cr, zero], -1),
                          torch.stack([zero, zero, one], -1)], -2)
    return r_roll @ r_pitch @ r_yaw


def inverse_2x2(m: torch.Tensor, min_det: float = 0.0) -> torch.Tensor:
    """Inverse of 2x2 matrices [..., 2, 2]; determinants below min_det (if > 0) are raised
    to it, which damps Newton steps near folds."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    if min_det > 0:
        det = torch.clamp(det, min=min_det)
    inverse = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return inverse / det[..., None, None]


def apply_2x2(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """m [..., 2, 2] times vectors v [..., 2] (broadcast), written out: batches of tiny
    matrix products are slow as MatMul in onnxruntime."""
    x, y = v[..., 0], v[..., 1]
    return torch.stack([m[..., 0, 0] * x + m[..., 0, 1] * y,
                        m[..., 1, 0] * x + m[..., 1, 1] * y], -1)


class Pose:
    """The head pose of N frames in image pixels: X' = pivot + scale * A (X - pivot) + shift,
    with A the 3D rotation expressed in the image axes (the face frame may be rolled by a
    small angle in the crop)."""

    def __init__(self, motion: torch.Tensor, face_rotation: torch.Tensor,
                 pivot: torch.Tensor, face_width: torch.Tensor):
        r = rotation(motion[:, ms.index("head_yaw")], motion[:, ms.index("head_pitch")],
                     motion[:, ms.index("head_roll")])                      # [N, 3, 3]
        eye = torch.eye(3, dtype=motion.dtype, device=motion.device)
        frame = torch.cat([torch.cat([face_rotation, eye[:2, 2:]], 1), eye[2:]], 0)  # [3, 3]
        self.matrix = frame @ r @ frame.T                                  # [N, 3, 3]
        self.scale = torch.exp(motion[:, ms.index("head_scale")])          # [N]
        offset = torch.stack([motion[:, ms.index("head_x")], motion[:, ms.index("head_y")]], -1)
        self.shift = face_width * offset @ face_rotation.T                 # [N, 2]
        self.pivot = pivot                                                 # [3]

    def forward(self, points: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """points [N or 1, P, 2] with depth [N or 1, P] -> moved points [N, P, 2]."""
        depth = depth[..., None].expand(points.shape[:-1] + (1,))
        xyz = torch.cat([points, depth], -1) - self.pivot                  # [N, P, 3]
        moved = xyz @ self.matrix.transpose(1, 2)
        return (self.pivot[:2] + self.scale[:, None, None] * moved[..., :2]
                + self.shift[:, None, :])

    def inverse(self, points: torch.Tensor, depth: torch.Tensor, size: int) -> torch.Tensor:
        """Source positions [N, P, 2] that the pose moves onto output points [N, P, 2], given
        the source depth map and its slopes [1, 3, h, w]: Newton steps on
        in_plane @ (p - pivot) + (z(p) - z_pivot) * towards = target."""
        target = ((points - self.pivot[:2] - self.shift[:, None, :])
                  / self.scale[:, None, None])                             # [N, P, 2]
        in_plane = self.matrix[:, None, :2, :2]                            # [N, 1, 2, 2]
        towards = self.matrix[:, None, :2, 2]                              # [N, 1, 2]
        z = warp.sample(depth, points, size)[:, 0] - self.pivot[2]         # [N, P]
        source = self.pivot[:2] + apply_2x2(inverse_2x2(in_plane), target - z[..., None] * towards)
        for _ in range(DEPTH_STEPS):
            zs = warp.sample(depth, source, size).permute(0, 2, 1)         # [N, P, 3]
            moved = apply_2x2(in_plane, source - self.pivot[:2])
            residual = moved + (zs[..., :1] - self.pivot[2]) * towards - target
            jacobian = in_plane + towards[..., :, None] * zs[..., None, 1:]  # [N, P, 2, 2]
            source = source - apply_2x2(inverse_2x2(jacobian, min_det=0.2), residual)
        return source
