"""Curves in the frame of a facial feature (an eye, the mouth), for the overlays.

A feature frame runs from the feature's left corner to its right corner: u in [-1, 1] along
it, v in pixels across it (positive towards the chin). Lid and lip contours are curves
v(u) through landmarks: piecewise linear (`polyline`) or smooth (`curve_table` + `Lookup`:
a Catmull-Rom spline tabulated once per frame and looked up per pixel, so the per-pixel
cost does not grow with the number of knots). All functions are batched over N frames.
"""

import torch


def mix(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """a + (b - a) * weight. torch.lerp exports to ONNX as two branches and a Where."""
    return a + (b - a) * weight


def feature_frame(points: torch.Tensor, left: torch.Tensor, right: torch.Tensor):
    """Coordinates of pixels points [N, P, 2] in the frame of a feature from its left to its
    right corner ([N, 2] each): u in [-1, 1] along it, v in pixels across it (positive
    towards the chin). Returns u, v [N, P], the half width [N] and the frame (centre [N, 2],
    axis [N, 2], normal [N, 2])."""
    centre = (left + right) / 2
    span = right - left
    half = torch.linalg.vector_norm(span, dim=-1) / 2                     # [N]
    axis = span / (2 * half[:, None])
    normal = torch.stack([-axis[:, 1], axis[:, 0]], -1)
    d = points - centre[:, None, :]
    u = (d * axis[:, None, :]).sum(-1) / half[:, None]
    v = (d * normal[:, None, :]).sum(-1)
    return u, v, half, (centre, axis, normal)


def project(knots: torch.Tensor, frame, half: torch.Tensor):
    """Landmarks [N, K, 2] -> their (u, v) [N, K] in a feature frame."""
    centre, axis, normal = frame
    d = knots - centre[:, None, :]
    return (d * axis[:, None, :]).sum(-1) / half[:, None], (d * normal[:, None, :]).sum(-1)


def polyline(u: torch.Tensor, knot_u: torch.Tensor, knot_v: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear curve through knots (knot_u increasing) [N, K], evaluated at u
    [N, P]; constant beyond the end knots."""
    v = knot_v[:, :1].expand_as(u)
    for k in range(knot_u.shape[1] - 1):
        u0, u1 = knot_u[:, k:k + 1], knot_u[:, k + 1:k + 2]
        slope = (knot_v[:, k + 1:k + 2] - knot_v[:, k:k + 1]) / torch.clamp(u1 - u0, min=1e-4)
        v = v + slope * (torch.minimum(torch.maximum(u, u0), u1) - u0)
    return v


CURVE_SAMPLES = 33


def curve_table(knot_u: torch.Tensor, knot_v: torch.Tensor, start: torch.Tensor,
                stop: torch.Tensor) -> torch.Tensor:
    """A smooth (Catmull-Rom) curve through knots [N, K] (knot_u increasing), tabulated at
    CURVE_SAMPLES points from start to stop ([N, 1] each) -> [N, CURVE_SAMPLES]; constant
    beyond the end knots. Look it up per pixel with Lookup."""
    k = knot_u.shape[1]
    du = torch.clamp(knot_u[:, 1:] - knot_u[:, :-1], min=1e-4)             # [N, K-1]
    secant = (knot_v[:, 1:] - knot_v[:, :-1]) / du
    inner = (knot_v[:, 2:] - knot_v[:, :-2]) / torch.clamp(knot_u[:, 2:] - knot_u[:, :-2], min=1e-4)
    slope = torch.cat([secant[:, :1], inner, secant[:, -1:]], 1)           # [N, K]
    steps = torch.linspace(0.0, 1.0, CURVE_SAMPLES, dtype=knot_u.dtype,
                           device=knot_u.device)[None]
    at = start + (stop - start) * steps                                    # [N, S]
    table = knot_v[:, :1].expand_as(at)
    for i in range(k - 1):
        t = torch.clamp((at - knot_u[:, i:i + 1]) / du[:, i:i + 1], 0.0, 1.0)
        t2, t3 = t * t, t * t * t
        h01, h10, h11 = 3 * t2 - 2 * t3, t3 - 2 * t2 + t, t3 - t2
        table = table + (h01 * (knot_v[:, i + 1:i + 2] - knot_v[:, i:i + 1])
                         + du[:, i:i + 1] * (h10 * slope[:, i:i + 1] + h11 * slope[:, i + 1:i + 2]))
    return table


class Lookup:
    """Linear lookup of per-frame tables [N, CURVE_SAMPLES] spanning start..stop ([N, 1]) at
    positions u [N, P]; the position arithmetic is shared by every table looked up."""

    def __init__(self, u: torch.Tensor, start: torch.Tensor, stop: torch.Tensor):
        position = torch.clamp((u - start) / torch.clamp(stop - start, min=1e-4), 0.0, 1.0)
        position = position * (CURVE_SAMPLES - 1)
        below = torch.clamp(torch.floor(position), max=CURVE_SAMPLES - 2)
        self.frac = position - below
        self.below = below.to(torch.int64)
        self.above = self.below + 1

    def __call__(self, table: torch.Tensor) -> torch.Tensor:
        n = self.below.shape[0]
        table = table.expand(n, -1)
        return mix(torch.gather(table, 1, self.below), torch.gather(table, 1, self.above),
                   self.frac)


def smooth_curve(u: torch.Tensor, knot_u: torch.Tensor, knot_v: torch.Tensor) -> torch.Tensor:
    """A smooth curve through knots [N, K] evaluated at u [N, P] (see curve_table)."""
    start, stop = knot_u[:, :1], knot_u[:, -1:]
    return Lookup(u, start, stop)(curve_table(knot_u, knot_v, start, stop))
