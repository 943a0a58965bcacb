"""The motion space: the named parameters every stage agrees on.

A frame's motion is a float vector of D parameters in the order of PARAMETERS. Nothing
else in the project hard-codes an index: use `index("jaw_open")` or `NAMES`.
Neutral (all zeros) is the portrait as photographed.

Each parameter moves the 68 landmarks of a canonical face (CANONICAL, in face widths):
expression parameters by a fixed blendshape (BASIS rows, linear), head pose parameters by
an exact rotation / scale / translation about PIVOT (their BASIS rows are its derivative
at neutral). `landmarks(neutral, motion)` applies motion to a real face, `fit_motion`
inverts it by least squares (real videos -> motion).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Parameter:
    name: str
    low: float   # documented range: values the renderer supports and the data stays within
    high: float
    unit: str
    doc: str


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("head_yaw", -30.0, 30.0, "deg", "turn left/right (positive: towards image right)"),
    Parameter("head_pitch", -20.0, 20.0, "deg", "nod (positive: chin down)"),
    Parameter("head_roll", -20.0, 20.0, "deg", "tilt (positive: clockwise in the image)"),
    Parameter("head_x", -0.15, 0.15, "face widths", "head translation, positive to image right"),
    Parameter("head_y", -0.15, 0.15, "face widths", "head translation, positive down"),
    Parameter("head_scale", -0.15, 0.15, "log scale", "head size, log of the scale factor"),
    Parameter("jaw_open", 0.0, 1.0, "fraction", "jaw drop / mouth opening, 1 = wide open"),
    Parameter("mouth_wide", -0.5, 1.0, "fraction", "lip corners out (stretch, smile); <0 narrow"),
    Parameter("lip_pucker", 0.0, 1.0, "fraction", "lip rounding / protrusion (oo, w)"),
    Parameter("upper_lip_raise", 0.0, 1.0, "fraction", "upper lip up (f, v, teeth showing)"),
    Parameter("lower_lip_depress", 0.0, 1.0, "fraction", "lower lip down away from the teeth"),
    Parameter("blink_left", 0.0, 1.0, "fraction", "left eye (image left) closed, 1 = shut"),
    Parameter("blink_right", 0.0, 1.0, "fraction", "right eye (image right) closed, 1 = shut"),
    Parameter("gaze_x", -1.0, 1.0, "fraction", "eyes look to image right"),
    Parameter("gaze_y", -1.0, 1.0, "fraction", "eyes look down"),
    Parameter("brow_raise_left", -0.5, 1.0, "fraction", "left brow up (<0 frown)"),
    Parameter("brow_raise_right", -0.5, 1.0, "fraction", "right brow up (<0 frown)"),
)

NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
D: int = len(PARAMETERS)
LOW = np.array([p.low for p in PARAMETERS], dtype=np.float32)
HIGH = np.array([p.high for p in PARAMETERS], dtype=np.float32)

_INDEX = {name: i for i, name in enumerate(NAMES)}


def index(name: str) -> int:
    """Position of a parameter in the motion vector."""
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown motion parameter {name!r}; known: {', '.join(NAMES)}") from None


def neutral(frames: int | None = None) -> np.ndarray:
    """All-zero motion: [D] or [frames, D]."""
    shape = (D,) if frames is None else (frames, D)
    return np.zeros(shape, dtype=np.float32)


def clip(motion: np.ndarray) -> np.ndarray:
    """Clamp motion [..., D] to the documented ranges."""
    return np.clip(motion, LOW, HIGH)


# ---------------------------------------------------------------------------------------------
# The canonical face and the landmark basis
#
# Landmarks follow the 68-point iBUG 300-W layout that dlib's shape predictor outputs.
# "Left" in a landmark or parameter name means image left (the subject's right).
#
# Canonical units: one face width (the distance between jaw points 0 and 16). Axes: x to
# image right, y down, z towards the camera. Origin: the midpoint of the two eye centres.
# ---------------------------------------------------------------------------------------------

REGIONS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "brow_left": tuple(range(17, 22)),
    "brow_right": tuple(range(22, 27)),
    "nose": tuple(range(27, 36)),
    "eye_left": tuple(range(36, 42)),     # corner 36, upper 37 38, corner 39, lower 40 41
    "eye_right": tuple(range(42, 48)),    # corner 42, upper 43 44, corner 45, lower 46 47
    "outer_lips": tuple(range(48, 60)),   # corners 48 and 54, upper 49-53, lower 55-59
    "inner_lips": tuple(range(60, 68)),   # corners 60 and 64, upper 61-63, lower 65-67
}

# Landmark i of a face seen in a mirror is landmark MIRROR[i].
MIRROR = np.array(
    [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
     26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29, 30, 35, 34, 33, 32, 31,
     45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)

# x, y: the mean shape of dlib's 68-point shape predictor (its `initial_shape`, read from
# shape_predictor_68_face_landmarks.dat), symmetrised and moved to canonical units, with the
# inner lips closed (the mean shape's mouth is slightly open). z: an anthropometric depth
# profile written for this project (nose tip in front, jaw angles at the ears behind).
_CANONICAL_XY = np.array([
    (-0.5000, +0.0071), (-0.4966, +0.1394), (-0.4825, +0.2712), (-0.4550, +0.4004),
    (-0.4035, +0.5204), (-0.3244, +0.6244), (-0.2276, +0.7112), (-0.1208, +0.7810),
    (+0.0000, +0.8017), (+0.1208, +0.7810), (+0.2276, +0.7112), (+0.3244, +0.6244),
    (+0.4035, +0.5204), (+0.4550, +0.4004), (+0.4825, +0.2712), (+0.4966, +0.1394),
    (+0.5000, +0.0071),
    (-0.4047, -0.0896), (-0.3427, -0.1454), (-0.2552, -0.1620), (-0.1646, -0.1491),
    (-0.0798, -0.1139), (+0.0798, -0.1139), (+0.1646, -0.1491), (+0.2552, -0.1620),
    (+0.3427, -0.1454), (+0.4047, -0.0896),
    (+0.0000, -0.0103), (+0.0000, +0.0749), (+0.0000, +0.1594), (+0.0000, +0.2463),
    (-0.1015, +0.3051), (-0.0527, +0.3230), (+0.0000, +0.3384), (+0.0527, +0.3230),
    (+0.1015, +0.3051),
    (-0.3040, +0.0004), (-0.2500, -0.0307), (-0.1851, -0.0298), (-0.1282, +0.0131),
    (-0.1891, +0.0240), (-0.2537, +0.0231),
    (+0.1282, +0.0131), (+0.1851, -0.0298), (+0.2500, -0.0307), (+0.3040, +0.0004),
    (+0.2537, +0.0231), (+0.1891, +0.0240),
    (-0.1943, +0.4632), (-0.1228, +0.4346), (-0.0504, +0.4197), (+0.0000, +0.4322),
    (+0.0504, +0.4197), (+0.1228, +0.4346), (+0.1943, +0.4632), (+0.1251, +0.5330),
    (+0.0548, +0.5640), (+0.0000, +0.5698), (-0.0548, +0.5640), (-0.1251, +0.5330),
    (-0.1645, +0.4669), (-0.0516, +0.4809), (+0.0000, +0.4868), (+0.0516, +0.4809),
    (+0.1645, +0.4669), (+0.0516, +0.4809), (+0.0000, +0.4868), (-0.0516, +0.4809),
])

_CANONICAL_Z = np.array([
    0.00, 0.04, 0.09, 0.15, 0.22, 0.29, 0.35, 0.39, 0.41, 0.39, 0.35, 0.29, 0.22, 0.15, 0.09,
    0.04, 0.00,                                                    # jaw
    0.30, 0.38, 0.43, 0.46, 0.46, 0.46, 0.46, 0.43, 0.38, 0.30,    # brows
    0.44, 0.49, 0.54, 0.60, 0.45, 0.49, 0.52, 0.49, 0.45,          # nose
    0.29, 0.36, 0.37, 0.37, 0.36, 0.35, 0.37, 0.37, 0.36, 0.29, 0.35, 0.36,  # eyes
    0.38, 0.45, 0.49, 0.50, 0.49, 0.45, 0.38, 0.45, 0.48, 0.48, 0.48, 0.45,  # outer lips
    0.40, 0.46, 0.48, 0.46, 0.40, 0.46, 0.48, 0.46,                # inner lips
])

CANONICAL: np.ndarray = np.concatenate([_CANONICAL_XY, _CANONICAL_Z[:, None]], 1).astype(np.float32)
"""The canonical neutral face: [68, 3] (x, y, z) in face widths."""

PIVOT: np.ndarray = np.array([0.0, 0.34, -0.25], dtype=np.float32)
"""The point the head rotates and scales about (upper neck, level with the nose base)."""

# Landmarks that expressions barely move: used to place a face (similarity alignment).
STABLE = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)

POSE = ("head_yaw", "head_pitch", "head_roll", "head_x", "head_y", "head_scale")
MOUTH = ("jaw_open", "mouth_wide", "lip_pucker", "upper_lip_raise", "lower_lip_depress")
EXPRESSION: tuple[str, ...] = tuple(n for n in NAMES if n not in POSE)


def _expression_spec() -> dict[str, dict[int, tuple[float, float]]]:
    """Displacements (dx, dy) in face widths at parameter value 1, image-left half only for
    symmetric parameters (mirrored below); one-sided parameters list every point they move."""
    jaw_open = {3: (0.004, 0.02), 4: (0.006, 0.05), 5: (0.008, 0.09), 6: (0.008, 0.14),
                7: (0.005, 0.18), 8: (0.0, 0.20),
                48: (0.012, 0.07), 60: (0.012, 0.075), 59: (0.010, 0.15), 58: (0.004, 0.175),
                57: (0.0, 0.18), 67: (0.004, 0.17), 66: (0.0, 0.18)}
    mouth_wide = {48: (-0.07, -0.03), 60: (-0.065, -0.028), 49: (-0.045, -0.018),
                  59: (-0.045, -0.012), 61: (-0.035, -0.012), 67: (-0.035, -0.010),
                  50: (-0.02, -0.006), 58: (-0.02, -0.008), 51: (0.0, -0.003),
                  57: (0.0, -0.008), 62: (0.0, -0.006), 66: (0.0, -0.002),
                  3: (-0.008, -0.005), 4: (-0.010, -0.008), 5: (-0.008, -0.006),
                  31: (-0.004, -0.003), 40: (0.0, -0.003), 41: (0.0, -0.003)}
    lip_pucker = {48: (0.075, 0.0), 60: (0.07, 0.0), 49: (0.042, -0.008), 59: (0.042, 0.008),
                  50: (0.012, -0.010), 58: (0.012, 0.012), 51: (0.0, -0.010), 57: (0.0, 0.014),
                  61: (0.030, -0.006), 67: (0.030, 0.008), 62: (0.0, -0.010), 66: (0.0, 0.015),
                  4: (0.005, 0.0), 5: (0.005, 0.0)}
    upper_lip_raise = {48: (0.0, -0.008), 60: (0.0, -0.008), 49: (0.0, -0.025),
                       50: (0.0, -0.035), 51: (0.0, -0.038), 61: (0.0, -0.035),
                       62: (0.0, -0.040), 31: (-0.002, -0.006), 32: (0.0, -0.005),
                       33: (0.0, -0.004)}
    lower_lip_depress = {48: (0.0, 0.006), 60: (0.0, 0.006), 59: (-0.003, 0.028),
                         58: (0.0, 0.038), 57: (0.0, 0.040), 67: (0.0, 0.040),
                         66: (0.0, 0.045), 7: (0.0, 0.006), 8: (0.0, 0.008)}
    gaze_y = {37: (0.0, 0.012), 38: (0.0, 0.012), 40: (0.0, 0.004), 41: (0.0, 0.004)}
    blink_left = {37: (0.0, 0.048), 38: (0.0, 0.048), 40: (0.0, -0.004), 41: (0.0, -0.004),
                  19: (0.0, 0.004), 20: (0.0, 0.004)}
    brow_raise_left = {17: (0.0, -0.05), 18: (0.0, -0.06), 19: (0.0, -0.065), 20: (0.0, -0.06),
                       21: (-0.008, -0.05), 37: (0.0, -0.006), 38: (0.0, -0.006)}
    return {
        "jaw_open": jaw_open, "mouth_wide": mouth_wide, "lip_pucker": lip_pucker,
        "upper_lip_raise": upper_lip_raise, "lower_lip_depress": lower_lip_depress,
        "gaze_y": gaze_y, "blink_left": blink_left, "brow_raise_left": brow_raise_left,
    }


_SYMMETRIC = ("jaw_open", "mouth_wide", "lip_pucker", "upper_lip_raise", "lower_lip_depress",
              "gaze_y")


def _expression_basis() -> np.ndarray:
    """[D, 68, 3] displacement per unit of each expression parameter (pose rows are zero)."""
    basis = np.zeros((D, 68, 3), dtype=np.float32)
    for name, spec in _expression_spec().items():
        rows = np.zeros((68, 3), dtype=np.float32)
        for i, (dx, dy) in spec.items():
            rows[i, :2] = (dx, dy)
        if name in _SYMMETRIC:
            mirrored = rows[MIRROR] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
            on_axis = MIRROR == np.arange(68)
            rows = np.where(on_axis[:, None], rows, rows + mirrored)
            basis[index(name)] = rows
        else:  # one-sided: the spec is the left version; the right one is its mirror image
            basis[index(name)] = rows
            right = name.replace("_left", "_right")
            basis[index(right)] = rows[MIRROR] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
    return basis


def rotation(yaw, pitch, roll):
    """Head rotation matrices [..., 3, 3] from angles in degrees (arrays broadcast).

    Yaw turns the nose towards image right, pitch moves the chin down, roll turns the face
    clockwise in the image (y points down). Applied as roll @ pitch @ yaw.
    """
    yaw, pitch, roll = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))
    one, zero = np.ones_like(cy), np.zeros_like(cy)
    r_yaw = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1),
                      np.stack([-sy, zero, cy], -1)], -2)
    r_pitch = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, sp], -1),
                        np.stack([zero, -sp, cp], -1)], -2)
    r_roll = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1),
                       np.stack([zero, zero, one], -1)], -2)
    return r_roll @ r_pitch @ r_yaw


def apply_pose(points: np.ndarray, motion: np.ndarray, pivot: np.ndarray = PIVOT) -> np.ndarray:
    """Move canonical 3D points [..., P, 3] by the head pose in motion [..., D].

    Rotation and scale about the pivot, then translation (face widths). Returns [..., P, 3].
    """
    motion = np.asarray(motion, dtype=np.float64)
    r = rotation(motion[..., index("head_yaw")], motion[..., index("head_pitch")],
                 motion[..., index("head_roll")])                          # [..., 3, 3]
    scale = np.exp(motion[..., index("head_scale")])[..., None, None]
    shift = np.stack([motion[..., index("head_x")], motion[..., index("head_y")],
                      np.zeros_like(motion[..., 0])], -1)[..., None, :]   # [..., 1, 3]
    centred = np.asarray(points, dtype=np.float64) - pivot
    return pivot + scale * (centred @ np.swapaxes(r, -1, -2)) + shift


def _pose_jacobian(points: np.ndarray) -> np.ndarray:
    """d points / d pose parameter at neutral: [D, P, 3] (non-pose rows zero)."""
    jac = np.zeros((D,) + points.shape, dtype=np.float64)
    for name in POSE:
        step = 1e-3
        m = neutral()
        m[index(name)] = step
        jac[index(name)] = (apply_pose(points, m) - apply_pose(points, -m)) / (2 * step)
    return jac


BASIS: np.ndarray = (_expression_basis() + _pose_jacobian(CANONICAL)).astype(np.float32)
"""The linear landmark basis [D, 68, 3]: displacement of the canonical face per unit of each
parameter. Expression rows are exact (blendshapes); pose rows are the derivative at neutral
(rendering and fitting use the exact rotation, which agrees to first order)."""


# ---------------------------------------------------------------------------------------------
# Placing the canonical face on a real one
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """Similarity transform from canonical units to image pixels: image = scale * R(angle) @ c
    + offset. `scale` is one face width in pixels."""
    scale: float
    angle: float          # radians, in-plane rotation of the face frame
    offset: np.ndarray    # [2] pixels

    def matrix(self) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.scale * np.array([[c, -s], [s, c]])

    def to_image(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points)[..., :2] @ self.matrix().T + self.offset

    def to_canonical(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.offset) @ np.linalg.inv(self.matrix()).T


def place(landmarks: np.ndarray, points: tuple[int, ...] = STABLE) -> Placement:
    """Least-squares similarity (Umeyama) from the canonical face to image landmarks [68, 2]."""
    src = CANONICAL[list(points), :2].astype(np.float64)
    dst = np.asarray(landmarks, dtype=np.float64)[list(points)]
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    a, b = src - src_mean, dst - dst_mean
    # complex-number form of 2D similarity: b ~ z * a
    za = a[:, 0] + 1j * a[:, 1]
    zb = b[:, 0] + 1j * b[:, 1]
    z = np.vdot(za, zb) / np.vdot(za, za)
    scale, angle = float(abs(z)), float(np.angle(z))
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return Placement(scale, angle, dst_mean - rot @ src_mean)


def personal_basis(neutral_canonical: np.ndarray) -> np.ndarray:
    """BASIS adapted to one face given in canonical units [68, 2] or [68, 3]: the blink rows
    close this face's own eyelids (upper lid onto lower lid) instead of the average eye."""
    basis = BASIS.copy()
    face = np.asarray(neutral_canonical, dtype=np.float32)[:, :2]
    for name, upper, lower in (("blink_left", (37, 38), (41, 40)),
                               ("blink_right", (44, 43), (46, 47))):
        row = basis[index(name)]
        for u, low in zip(upper, lower, strict=True):
            row[u, :2] = face[low] + row[low, :2] - face[u]
    return basis


def _reference(neutral: np.ndarray | None, frames: np.ndarray) -> tuple[Placement, np.ndarray]:
    """Placement and canonical-unit 3D neutral face for a person (or the canonical face)."""
    if neutral is None:
        placement = place(frames.reshape(-1, 68, 2).mean(0))
        face = CANONICAL.astype(np.float64)
    else:
        placement = place(neutral)
        face = np.concatenate([placement.to_canonical(neutral), CANONICAL[:, 2:]], 1)
    return placement, face


def landmarks(neutral: np.ndarray, motion: np.ndarray,
              placement: Placement | None = None) -> np.ndarray:
    """Landmarks [..., 68, 2] in pixels of a face whose neutral landmarks are `neutral`
    [68, 2] (pixels), moved by motion [..., D]: expression blendshapes in canonical units,
    then the exact head pose, then back to pixels."""
    placement = placement or place(neutral)
    face = np.concatenate([placement.to_canonical(neutral), CANONICAL[:, 2:]], 1)
    return _model(face, personal_basis(face), placement, np.asarray(motion))


def _model(face: np.ndarray, basis: np.ndarray, placement: Placement,
           motion: np.ndarray) -> np.ndarray:
    expression = np.einsum("...d,dpc->...pc", motion, basis * _EXPRESSION_MASK[:, None, None])
    moved = apply_pose(face + expression, motion)
    return placement.to_image(moved[..., :2])


_EXPRESSION_MASK = np.array([n in EXPRESSION for n in NAMES], dtype=np.float32)

# Detected landmarks are not equally reliable: the jaw line slides along the face, the
# inner lips carry most of the speech.
LANDMARK_WEIGHTS = np.ones(68, dtype=np.float64)
LANDMARK_WEIGHTS[list(REGIONS["jaw"])] = 0.5
LANDMARK_WEIGHTS[list(REGIONS["inner_lips"])] = 1.5

# The openings viewers watch, the inner lips and the eyelids (each pair: lower minus upper
# point), are fitted as residuals of their own besides the points. Without them the points'
# least squares trades an opening for the outline around it: a lower outer lip that sits lower
# than the neutral face's was explained by lower_lip_depress, which parts the inner lips (an
# open mouth where the real lips were closed), and the lids followed head scale and brows.
LIP_PAIRS = np.array([(61, 67), (62, 66), (63, 65)])
LID_PAIRS = np.array([(37, 41), (38, 40), (43, 47), (44, 46)])
OPENING_PAIRS = np.concatenate([LIP_PAIRS, LID_PAIRS])
OPENING_WEIGHT = 8.0

# Relative ridge strength per parameter in fit_motion: gaze is not observable from 68 points.
_PRIOR_SCALE = np.array([1e4 if n.startswith("gaze_") else 1.0 for n in NAMES])


def fit_motion(observed: np.ndarray, neutral: np.ndarray | None = None, *,
               iterations: int = 8, prior: float = 1e-4,
               weights: np.ndarray | None = None) -> np.ndarray:
    """Least-squares motion [..., D] that best explains detected landmarks [..., 68, 2].

    `neutral` is the same person's neutral landmarks [68, 2] (e.g. a calm frame or the
    avatar's own); without it the canonical face stands in and identity leaks into the
    expression parameters. Gauss-Newton on the exact model (expression blendshapes + head
    pose) over the points and the openings of lips and lids (OPENING_PAIRS), a small ridge
    `prior` towards neutral, parameters kept inside their documented ranges (each step a
    bounded least-squares solve, _bounded_step). Gaze has no landmark of its own among the
    68 points (no pupils), so it gets a strong prior and stays near zero. Coordinates are
    normalised by the face width, so `prior` does not depend on image size.
    """
    observed = np.asarray(observed, dtype=np.float64)
    if observed.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must be [..., 68, 2], got {observed.shape}")
    batch = observed.shape[:-2]
    frames = observed.reshape(-1, 68, 2)                                   # [T, 68, 2]
    placement, face = _reference(neutral, frames)
    basis = personal_basis(face)
    target = placement.to_canonical(frames)                                # canonical units
    unit = Placement(1.0, 0.0, np.zeros(2))
    w = np.sqrt(np.repeat(LANDMARK_WEIGHTS if weights is None else weights, 2))  # [136]
    w = np.concatenate([w, np.full(2 * len(OPENING_PAIRS), np.sqrt(OPENING_WEIGHT))])  # [R]

    def observations(points):                              # [..., 68, 2] -> [..., R] weighted
        gaps = points[..., OPENING_PAIRS[:, 1], :] - points[..., OPENING_PAIRS[:, 0], :]
        flat = points.shape[:-2] + (-1,)
        return np.concatenate([points.reshape(flat), gaps.reshape(flat)], -1) * w

    wanted = observations(target)                                          # [T, R]
    motion = np.zeros((frames.shape[0], D))
    step = 1e-4
    eye = np.eye(D)
    for _ in range(iterations):
        current = observations(_model(face, basis, unit, motion))          # [T, R]
        residual = current - wanted
        probes = motion[:, None, :] + step * eye                           # [T, D, D]
        jac = (observations(_model(face, basis, unit, probes)) - current[:, None]) / step
        jac = jac.transpose(0, 2, 1)                                       # [T, R, D]
        # scale the problem per parameter so the prior treats every range alike
        span = (HIGH - LOW).astype(np.float64)
        js = jac * span
        ridge = prior * _PRIOR_SCALE
        lhs = js.transpose(0, 2, 1) @ js + np.diag(ridge)
        rhs = -(js.transpose(0, 2, 1) @ residual[..., None])[..., 0] - ridge * motion / span
        motion = _bounded_step(lhs, rhs, motion, span)
    return motion.reshape(batch + (D,)).astype(np.float32)


def _bounded_step(lhs: np.ndarray, rhs: np.ndarray, motion: np.ndarray, span: np.ndarray,
                  rounds: int = 4) -> np.ndarray:
    """One Gauss-Newton step lhs [T, D, D] @ delta = rhs [T, D] (delta in units of span)
    from motion [T, D], kept inside the documented ranges by an active set: a parameter the
    step would push past its bound is held at the bound and the others are solved again
    without it. Clipping alone leaves the others where they were solved for the unclipped
    value: a jaw_open that wanted to go below 0 left a lower lip pushed down by
    lower_lip_depress, a mouth opened where the real lips were closed."""
    low, high = (LOW - motion) / span, (HIGH - motion) / span             # delta's bounds
    held = np.zeros(motion.shape, dtype=bool)                              # [T, D]
    at = np.zeros(motion.shape)                                            # held deltas
    for _ in range(rounds):
        free = ~held
        both = free[:, :, None] & free[:, None, :]
        system = np.where(both, lhs, 0.0) + held[:, :, None] * np.eye(D)
        wanted = np.where(free, rhs - (lhs @ (at * held)[..., None])[..., 0], at)
        delta = np.linalg.solve(system, wanted[..., None])[..., 0]
        outside = free & ((delta < low) | (delta > high))
        if not outside.any():
            break
        held |= outside
        at = np.where(held, np.clip(delta, low, high), at)
    return np.clip(motion + delta * span, LOW, HIGH)
