"""The motion space: the named parameters every stage agrees on.

A frame's motion is a float vector of D parameters in the order of PARAMETERS. Nothing
else in the project hard-codes an index: use `index("jaw_open")` or `NAMES`.
Neutral (all zeros) is the portrait as photographed.
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
