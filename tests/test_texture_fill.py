"""Texture completion (models.texture_fill) against the pixels it fills, on textures with a
hole cut out; the push-pull fill (models.background.fill) is what it replaces behind a head."""

import numpy as np
import skimage.data
from scipy import ndimage

from models.background import continue_background, fill
from models.texture_fill import complete

SIDE = 256
ROWS, COLS = np.mgrid[:SIDE, :SIDE]
HOLE = (ROWS - 128) ** 2 + (COLS - 128) ** 2 < 40**2              # a disc, 80 px across


def _colour(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, -1).astype(np.float32)


def _detail(image: np.ndarray) -> np.ndarray:
    """What a 2 px blur takes away: the grain."""
    return image - ndimage.gaussian_filter(image, (2, 2, 0))


def test_known_pixels_stay_and_the_same_seed_gives_the_same_fill():
    image = _colour(skimage.data.gravel()[:SIDE, :SIDE])
    filled = complete(image, ~HOLE)
    np.testing.assert_array_equal(filled[~HOLE], image[~HOLE])
    np.testing.assert_array_equal(complete(image, ~HOLE), filled)
    assert filled.dtype == np.float32 and np.isfinite(filled).all()
    assert filled.min() >= 0 and filled.max() <= 255


def test_stripes_go_on_through_the_hole():
    stripes = _colour(128 + 80 * np.sign(np.sin(2 * np.pi * COLS / 12.0)))   # period 12 px
    filled, mean = complete(stripes, ~HOLE), fill(stripes, ~HOLE)
    corr = lambda f: np.corrcoef(f[HOLE][:, 0], stripes[HOLE][:, 0])[0, 1]   # noqa: E731
    assert corr(filled) > 0.9                                   # 0.94: the stripes, in phase
    assert abs(corr(mean)) < 0.2                                # 0.04: a grey disc


def test_a_real_texture_keeps_its_grain_where_the_mean_loses_it():
    for name in ("brick", "gravel", "grass"):
        image = _colour(getattr(skimage.data, name)()[:SIDE, :SIDE])
        real = _detail(image)[HOLE].std()
        filled, mean = complete(image, ~HOLE), fill(image, ~HOLE)
        assert _detail(filled)[HOLE].std() > 0.45 * real, name       # 0.57-0.71
        assert _detail(mean)[HOLE].std() < 0.2 * real, name           # 0.11-0.14
        assert abs(filled[HOLE].mean() - image[HOLE].mean()) < 15, name   # 7-9 grey levels


def test_the_background_keeps_its_light_and_gains_its_grain():
    # a wall darkening to the right (a room's corner), with grain; the hole lies where it is
    # darker than anything to its left: patches alone would carry the light part in
    rng = np.random.default_rng(0)
    wall = 200 - 0.6 * COLS + ndimage.gaussian_filter(rng.normal(0, 12, (SIDE, SIDE)), 0.7)
    wall = _colour(np.clip(wall, 0, 255))
    hole = (ROWS - 128) ** 2 + (COLS - 180) ** 2 < 40**2
    filled = continue_background(wall, ~hole, face_width=100.0)
    light = lambda image: ndimage.gaussian_filter(image, (8, 8, 0))   # noqa: E731
    off = lambda image: np.abs(light(image) - light(wall))[hole].mean()  # noqa: E731
    assert off(filled) < 2.0                                     # 0.7 grey levels
    assert off(complete(wall, ~hole)) > 3.0                      # patches alone: 4.1
    grain = lambda image: _detail(image)[hole].std() / _detail(wall)[hole].std()  # noqa: E731
    assert grain(filled) > 0.25 and grain(fill(wall, ~hole)) < 0.15    # 0.32 and 0.11
    np.testing.assert_array_equal(filled[~hole], wall[~hole])


def test_too_little_known_falls_back_to_the_mean():
    image = _colour(skimage.data.brick()[:SIDE, :SIDE])
    known = np.zeros((SIDE, SIDE), bool)
    known[:, :4] = True                                     # a strip narrower than a patch
    np.testing.assert_allclose(complete(image, known), fill(image, known), atol=1e-3)
