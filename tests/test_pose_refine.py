"""models.pose_refine on a real portrait: a head pose fitted a few degrees and a few hundredths
of a face width off is brought back to the pose that rendered the frame, an untracked frame
takes its neighbours' correction, and the refinement never makes the frame worse."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import motion_space as ms
from models.avatar import prepare_avatar
from models.pose_refine import POSE, PoseRefiner, refine_pose
from models.render import render

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# yaw, pitch, roll (degrees), x, y (face widths), scale (log): what the fit got wrong
OFF = np.array([2.5, -2.0, 1.5, 0.02, -0.015, 0.02])
TOLERANCE = np.array([0.5, 0.5, 0.3, 0.004, 0.004, 0.004])


@pytest.fixture(scope="module")
def avatar():
    return prepare_avatar(ASSETS / "astronaut.png", 256, cache=False)


@pytest.fixture(scope="module")
def scene(avatar):
    """The frame a true motion renders, its landmarks, and the motion as a fit misread it."""
    true = np.zeros(ms.D, np.float32)
    for name, value in (("head_yaw", 6.0), ("head_pitch", -3.0), ("head_x", 0.02),
                        ("jaw_open", 0.3), ("mouth_wide", 0.2)):
        true[ms.index(name)] = value
    real = render(avatar, true).numpy()[0]
    landmarks = ms.landmarks(avatar.landmarks.numpy().astype(np.float64), true)
    fitted = true.copy()
    fitted[POSE] -= OFF
    return true, real, landmarks, fitted


def _error(avatar, motion, real):
    return np.abs(render(avatar, motion).numpy()[0].astype(float) - real).mean()


def test_a_misfitted_pose_is_brought_back(avatar, scene):
    true, real, landmarks, fitted = scene
    correction = PoseRefiner(avatar).add(fitted, real, landmarks)
    assert np.all(np.abs(correction - OFF) < TOLERANCE), correction - OFF
    refined = refine_pose(fitted[None], correction[None])[0]
    assert _error(avatar, refined, real) < 0.3 * _error(avatar, fitted, real)


def test_a_clip_of_frames_untracked_ones_and_a_larger_frame(avatar, scene):
    """Five frames of the same scene, the third untracked (NaN landmarks), the last handed
    over at twice the working size: every smoothed correction is the offset, and a frame the
    fit got right stays where it is."""
    true, real, landmarks, fitted = scene
    refiner = PoseRefiner(avatar)
    for k in range(4):
        refiner.add(fitted, real, landmarks if k != 2 else np.full_like(landmarks, np.nan))
    large = np.asarray(Image.fromarray(real).resize((512, 512)))
    refiner.add(fitted, large, 2 * landmarks)
    corrections = refiner.corrections()
    assert corrections.shape == (5, 6)
    assert np.all(np.abs(corrections - OFF) < TOLERANCE), corrections - OFF

    right = PoseRefiner(avatar).add(true, real, landmarks)
    assert np.all(np.abs(right) < TOLERANCE / 2), right
