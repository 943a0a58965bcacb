"""The head pose of a fitted motion refined against the real frame (analysis by synthesis).

The landmark fit (models.recording.fit_clip_motion) reads each frame's head pose from 68
points. Two things keep the pose it finds from placing the rendered head where the real one
is: the tracker sees the frames at its working size and places the points a little
differently from the avatar's own detection on the full frame (franck.mp4's source frame
itself fits at pitch -0.8 deg and scale -0.006), and the renderer does not turn a head quite
as the face mesh reads a turn (benchmarks/RESULTS.md, "The fit checked through the
renderer": yaw 0.84, pitch 0.80, scale 0.71 of the commanded). Where the real frames are at
hand (a self-reenactment), the six pose parameters are refined so that the rendered face
lands on the real one:

    per frame    Gauss-Newton on the luma inside the tracked face's box (the box the
                 benchmark measures on, models.recording.face_box; blurred, so a step sees a
                 few pixels of misplacement), its Jacobian by finite
                 differences (one batch of 7 renders), Levenberg-Marquardt damping; started
                 from the previous frame's correction, ITERATIONS steps (the first frame
                 FIRST_ITERATIONS), each step and the whole correction bounded
    over time    the corrections smoothed along the frames (models.recording.smooth), so the
                 refinement adds no shake of its own

Only the six pose numbers change; nothing else of the real frame reaches the renderer. It
renders on the avatar it is given, at that avatar's size (benchmarks.reenact uses 256 px: the
pose is in degrees and face widths, the same at every size): 160-250 ms a frame on one core.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from models import motion_space as ms
from models.avatar import Avatar
from models.recording import LUMA, face_box, smooth
from models.render import render

POSE = [ms.index(n) for n in ms.POSE]                   # the six head pose parameters
DELTA = np.array([0.5, 0.5, 0.5, 0.005, 0.005, 0.005])  # finite-difference steps (deg, face
                                                        #   widths, log scale)
MAX_STEP = np.array([3.0, 3.0, 3.0, 0.03, 0.03, 0.03])  # one Gauss-Newton step at most
MAX_CORRECTION = np.array([8.0, 8.0, 8.0, 0.08, 0.08, 0.08])   # the whole correction at most
ITERATIONS = 3              # Gauss-Newton steps a frame, from the previous frame's correction
FIRST_ITERATIONS = 10       # ... and for a clip's first frame, from none (pitch and height
                            #   trade against each other, and take longer to tell apart)
BLUR = 1.0 / 256            # the luma's Gaussian blur, as a share of the frame side
SMOOTH_FRAMES = 9           # the corrections' Savitzky-Golay window (frames)
DAMPING = 1e-3              # Levenberg-Marquardt's starting damping


class PoseRefiner:
    """Refines the pose of one clip's motion frame by frame (in order: each frame starts from
    the previous one's correction); `corrections` then gives them smoothed over time.

    avatar: the avatar the motion is rendered on, at the working size the refinement renders
    (any of models.avatar.SIZES; the real frames and landmarks are scaled to it).

    The eyes and the mouth stay in the compared box: with them left out (the boxes of their
    points, widened by 0.25-0.6 of their width), franck's first 20 s lost face-box SSIM
    (0.886 -> 0.880) and dlib's eye-opening correlation (0.906 -> 0.889)."""

    def __init__(self, avatar: Avatar):
        self.avatar = avatar
        self.size = avatar.size
        self.sigma = BLUR * self.size
        self._previous: np.ndarray | None = None
        self._found: list[np.ndarray | None] = []

    def add(self, motion: np.ndarray, real: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The pose correction [6] for one frame: motion [D] as fitted, the real frame
        [S, S, 3] uint8 cropped like the avatar (any S: it is resized to the working size),
        the tracked landmarks [68, 2] in its pixels (NaN: not tracked, no correction)."""
        if not np.isfinite(landmarks).all():
            self._found.append(None)
            return np.zeros(len(POSE)) if self._previous is None else self._previous.copy()
        scale = self.size / real.shape[0]
        if real.shape[0] != self.size:
            from PIL import Image

            real = np.asarray(Image.fromarray(real).resize((self.size, self.size),
                                                           Image.BILINEAR))
        left, top, right, bottom = face_box(landmarks * scale, self.size)
        region = (slice(top, bottom), slice(left, right))
        truth = self._luma(real, region)
        first = self._previous is None
        correction = np.zeros(len(POSE)) if first else self._previous.copy()
        error, damping = np.inf, DAMPING
        for _ in range(FIRST_ITERATIONS if first else ITERATIONS):
            trials = correction + np.vstack([np.zeros(len(POSE)), np.diag(DELTA)])  # [7, 6]
            images = self._render(motion, trials)
            lumas = np.stack([self._luma(im, region) for im in images])             # [7, P]
            residual = lumas[0] - truth
            error = min(error, float(np.mean(residual ** 2)))
            jacobian = (lumas[1:] - lumas[0]).T / DELTA                            # [P, 6]
            normal = jacobian.T @ jacobian
            step = -np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-9),
                                    jacobian.T @ residual)
            trial = correction + np.clip(step, -MAX_STEP, MAX_STEP)
            trial = np.clip(trial, -MAX_CORRECTION, MAX_CORRECTION)
            image = self._render(motion, trial[None])[0]
            trial_error = self._error(image, truth, region)
            if trial_error < error:
                correction, error, damping = trial, trial_error, damping * 0.3
            else:
                damping *= 10.0
        self._previous = correction
        self._found.append(correction)
        return correction.copy()

    def corrections(self) -> np.ndarray:
        """[K, 6]: every added frame's correction, untracked frames interpolated between their
        neighbours, smoothed along time (SMOOTH_FRAMES)."""
        K = len(self._found)
        out = np.zeros((K, len(POSE)))
        known = np.array([c is not None for c in self._found], bool)
        if not known.any():
            return out
        index = np.flatnonzero(known)
        values = np.stack([self._found[k] for k in index])
        for d in range(len(POSE)):
            out[:, d] = np.interp(np.arange(K), index, values[:, d])
        padded = np.zeros((K, ms.D), np.float64)      # smooth() works on whole motions
        padded[:, POSE] = out
        return smooth(padded, SMOOTH_FRAMES, 2)[:, POSE].astype(np.float64)

    # -- one frame ----------------------------------------------------------------------------

    def _render(self, motion: np.ndarray, corrections: np.ndarray) -> np.ndarray:
        """Frames [N, S, S, 3] of motion [D] with each of corrections [N, 6] added."""
        motions = np.repeat(np.asarray(motion, np.float64)[None], len(corrections), 0)
        motions[:, POSE] += corrections
        return render(self.avatar, ms.clip(motions.astype(np.float32))).numpy()

    def _luma(self, image: np.ndarray, region: tuple[slice, slice]) -> np.ndarray:
        return ndimage.gaussian_filter(image.astype(np.float64) @ LUMA, self.sigma)[region].ravel()

    def _error(self, image: np.ndarray, truth: np.ndarray, region: tuple[slice, slice]) -> float:
        return float(np.mean((self._luma(image, region) - truth) ** 2))


def refine_pose(motion: np.ndarray, corrections: np.ndarray) -> np.ndarray:
    """motion [K, D] with the pose corrections [K, 6] (PoseRefiner.corrections) added,
    clipped to the documented ranges."""
    out = np.asarray(motion, np.float64).copy()
    out[:, POSE] += corrections
    return ms.clip(out.astype(np.float32))
