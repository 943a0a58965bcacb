"""models.mouth_reach: a video avatar's generated openings kept within the reach its
recording shows, measured on the landmark model's own lips."""

import numpy as np

from models import motion_space as ms
from models.mouth_reach import FLOOR, OPENING, MouthReach, face_gap, mouth_reach

FACE = ms.CANONICAL[:, :2] * 80 + 128          # a neutral face [68, 2], 80 px across
JAW, WIDE = ms.index("jaw_open"), ms.index("mouth_wide")


def opened(jaw: float, depress: float = 0.0) -> np.ndarray:
    change = ms.neutral().astype(np.float32)
    change[JAW] = jaw
    change[ms.index("lower_lip_depress")] = depress
    change[WIDE] = 0.3
    change[ms.index("head_yaw")] = 5.0
    return change


def test_compress_keeps_what_the_person_does_and_orders_the_rest():
    reach = MouthReach(knee=0.1, ceiling=0.12)
    below = np.linspace(0.0, 0.1, 11)
    assert [reach.compress(g) for g in below] == list(below)
    above = np.linspace(0.1, 0.16, 31)
    shown = np.array([reach.compress(g) for g in above])
    assert np.all(np.diff(shown) > 0)                         # order kept: still follows
    assert np.all(shown < 0.12)
    assert 0.1199 < reach.compress(0.5) <= 0.12                # towards the ceiling
    assert abs(reach.compress(0.1 + 1e-6) - 0.1) < 2e-6        # no step at the knee


def test_limit_scales_the_opening_to_the_compressed_gap():
    reach = MouthReach(knee=0.06, ceiling=0.08)
    small = opened(0.2)                                        # gap 0.035: untouched
    assert reach.limit(small, FACE) is small
    gaps_in, gaps_out = [], []
    for jaw in (0.4, 0.6, 0.8, 1.0):
        change = opened(jaw, depress=0.5)
        limited = reach.limit(change, FACE)
        gap_in = float(face_gap(ms.landmarks(FACE, change)))
        gap_out = float(face_gap(ms.landmarks(FACE, limited)))
        assert abs(gap_out - reach.compress(gap_in)) < 0.002, (jaw, gap_in, gap_out)
        # the opening parameters scaled together, everything else as generated
        moved = change[OPENING] != 0
        share = limited[OPENING][moved] / change[OPENING][moved]
        np.testing.assert_allclose(share, share[0], rtol=1e-6)
        assert 0 < share[0] < 1
        rest = [i for i in range(len(change)) if i not in OPENING]
        np.testing.assert_array_equal(limited[rest], change[rest])
        gaps_in.append(gap_in)
        gaps_out.append(gap_out)
    assert np.all(np.diff(gaps_out) > 0) and max(gaps_out) < 0.08, gaps_out


def test_reach_of_a_recording():
    # a recording whose lips part by known gaps: the knee at its 99th percentile, the
    # ceiling past its widest
    jaws = np.concatenate([np.zeros(150), np.linspace(0.0, 0.9, 100)])
    recording = np.stack([ms.landmarks(FACE, opened(j)) for j in jaws])
    gaps = face_gap(recording)
    reach = mouth_reach(recording)
    assert abs(reach.knee - np.percentile(gaps, 99)) < 1e-9
    assert abs(reach.ceiling - 1.2 * gaps.max()) < 1e-9
    # one who never opens the mouth still lets the avatar speak
    still = mouth_reach(np.stack([FACE] * 50))
    assert still.knee == FLOOR and still.ceiling > FLOOR
