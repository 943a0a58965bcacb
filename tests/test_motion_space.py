"""The motion space: names, canonical face, landmark basis, least-squares fitting."""

import numpy as np
import pytest

from models import motion_space as ms

# The contract other stages are written against: names and order must not change.
EXPECTED_NAMES = (
    "head_yaw", "head_pitch", "head_roll", "head_x", "head_y", "head_scale", "jaw_open",
    "mouth_wide", "lip_pucker", "upper_lip_raise", "lower_lip_depress", "blink_left",
    "blink_right", "gaze_x", "gaze_y", "brow_raise_left", "brow_raise_right",
)


@pytest.fixture(scope="module")
def neutral_face():
    """A face in pixels: the canonical face at 150 px per face width, slightly rolled."""
    c, s = np.cos(0.05), np.sin(0.05)
    return ms.CANONICAL[:, :2] @ (150 * np.array([[c, -s], [s, c]])).T + [256.0, 200.0]


def random_motion(rng, frames, scale=0.6):
    motion = rng.uniform(ms.LOW, ms.HIGH, (frames, ms.D)).astype(np.float32) * scale
    motion[:, [ms.index("gaze_x"), ms.index("gaze_y")]] = 0.0   # not observable from 68 points
    return motion


def test_names_order_and_ranges_are_the_contract():
    assert ms.NAMES == EXPECTED_NAMES
    assert ms.D == 17
    assert all(p.low < p.high for p in ms.PARAMETERS)
    assert all(p.low <= 0.0 <= p.high for p in ms.PARAMETERS)   # neutral is inside every range
    assert set(ms.POSE) | set(ms.EXPRESSION) == set(ms.NAMES)


def test_canonical_face_shape_units_and_symmetry():
    face = ms.CANONICAL
    assert face.shape == (68, 3) and face.dtype == np.float32
    assert np.linalg.norm(face[16, :2] - face[0, :2]) == pytest.approx(1.0, abs=1e-3)
    eye_centres = (face[36:42, :2].mean(0) + face[42:48, :2].mean(0)) / 2
    np.testing.assert_allclose(eye_centres, [0.0, 0.0], atol=2e-3)
    mirrored = face[ms.MIRROR] * [-1, 1, 1]
    np.testing.assert_allclose(mirrored, face, atol=1e-4)
    assert face[30, 2] == face[:, 2].max()                  # the nose tip is nearest the camera
    np.testing.assert_allclose(face[62, :2], face[66, :2])  # neutral mouth is closed


def test_basis_rows_are_what_the_names_say():
    b = ms.BASIS
    assert b.shape == (ms.D, 68, 3)
    assert b[ms.index("jaw_open"), 8, 1] > 0.1              # chin goes down
    assert abs(b[ms.index("jaw_open"), 33]).max() == 0      # nose stays
    wide = b[ms.index("mouth_wide")]
    assert wide[48, 0] < 0 < wide[54, 0]                    # corners move apart
    pucker = b[ms.index("lip_pucker")]
    assert pucker[48, 0] > 0 > pucker[54, 0]                # corners move together
    assert b[ms.index("upper_lip_raise"), 62, 1] < 0
    assert b[ms.index("lower_lip_depress"), 66, 1] > 0
    assert b[ms.index("blink_left"), 37, 1] > 0 and abs(b[ms.index("blink_left"), 43]).max() == 0
    assert b[ms.index("brow_raise_right"), 24, 1] < 0
    assert abs(b[ms.index("brow_raise_right"), 19]).max() == 0
    assert abs(b[ms.index("gaze_x")]).max() == 0            # no pupils among the 68 points
    # yaw: the nose tip (in front) moves right more than the jaw corners (behind)
    yaw = b[ms.index("head_yaw")]
    assert yaw[30, 0] > yaw[0, 0] > 0
    # left / right parameters are mirror images
    for left, right in (("blink_left", "blink_right"), ("brow_raise_left", "brow_raise_right")):
        np.testing.assert_allclose(b[ms.index(left)][ms.MIRROR] * [-1, 1, 1], b[ms.index(right)],
                                   atol=1e-7)


def test_neutral_motion_is_the_face_itself(neutral_face):
    np.testing.assert_allclose(ms.landmarks(neutral_face, ms.neutral()), neutral_face, atol=1e-4)


def test_expressions_are_linear_and_pose_matches_its_basis_to_first_order(neutral_face):
    rng = np.random.default_rng(0)
    a, b = (random_motion(rng, 1)[0] for _ in range(2))
    for name in ms.POSE:
        a[ms.index(name)] = b[ms.index(name)] = 0.0
    zero = ms.landmarks(neutral_face, ms.neutral())
    moved = [ms.landmarks(neutral_face, m) - zero for m in (a, b, a + b)]
    np.testing.assert_allclose(moved[0] + moved[1], moved[2], atol=1e-4)
    placement = ms.place(neutral_face)
    for name in ms.POSE:
        step = ms.neutral()
        step[ms.index(name)] = 1e-3 * (ms.HIGH[ms.index(name)] - ms.LOW[ms.index(name)])
        numeric = (ms.landmarks(neutral_face, step) - zero) / step[ms.index(name)]
        predicted = ms.BASIS[ms.index(name), :, :2] @ placement.matrix().T
        np.testing.assert_allclose(numeric, predicted, atol=0.05 * np.abs(predicted).max() + 1e-3)


def test_personal_blink_closes_this_face_lids(neutral_face):
    face = neutral_face.copy()
    face[[37, 38], 1] -= 4.0                               # a wider-open left eye than average
    motion = ms.neutral()
    motion[ms.index("blink_left")] = 1.0
    shut = ms.landmarks(face, motion)
    assert np.linalg.norm(shut[37] - shut[41]) < 0.5
    assert np.linalg.norm(shut[38] - shut[40]) < 0.5
    np.testing.assert_allclose(shut[42:48], face[42:48], atol=1e-4)   # the other eye stays


def test_fit_recovers_motion_exactly_without_noise(neutral_face):
    rng = np.random.default_rng(1)
    motion = random_motion(rng, 64)
    observed = ms.landmarks(neutral_face, motion)
    exact = ms.fit_motion(observed, neutral_face, prior=1e-9)
    assert exact.shape == motion.shape and exact.dtype == np.float32
    span = ms.HIGH - ms.LOW
    assert (np.abs(exact - motion) / span).max() < 1e-3
    # the default prior (which keeps unobservable parameters still) costs little accuracy
    assert (np.abs(ms.fit_motion(observed, neutral_face) - motion) / span).max() < 0.03


def test_fit_is_robust_to_detection_noise(neutral_face):
    rng = np.random.default_rng(2)
    motion = random_motion(rng, 64)
    observed = ms.landmarks(neutral_face, motion) + rng.normal(0, 1.0, (64, 68, 2))
    fitted = ms.fit_motion(observed, neutral_face)
    err = np.abs(fitted - motion).mean(0)
    assert err[ms.index("jaw_open")] < 0.05
    assert err[ms.index("head_yaw")] < 1.0               # degrees
    jaw = ms.index("jaw_open")
    assert np.corrcoef(fitted[:, jaw], motion[:, jaw])[0, 1] > 0.98
    assert np.abs(fitted[:, ms.index("gaze_x")]).max() < 1e-3


def test_fit_shapes_ranges_and_no_neutral(neutral_face):
    single = ms.fit_motion(neutral_face)
    assert single.shape == (ms.D,)
    assert np.abs(single[[ms.index(n) for n in ms.POSE]]).max() < 0.5   # the canonical face itself
    motion = ms.neutral(3)
    motion[:, ms.index("jaw_open")] = [0.0, 0.5, 1.0]
    observed = ms.landmarks(neutral_face, motion)
    fitted = ms.fit_motion(observed)                       # canonical face as the reference
    assert np.all(np.diff(fitted[:, ms.index("jaw_open")]) > 0.3)
    # a grotesque observation still gives motion inside the documented ranges
    wild = ms.fit_motion(neutral_face + np.random.default_rng(3).normal(0, 40, (68, 2)),
                         neutral_face)
    assert np.all(wild >= ms.LOW - 1e-6) and np.all(wild <= ms.HIGH + 1e-6)
    with pytest.raises(ValueError):
        ms.fit_motion(np.zeros((5, 2)))
    with pytest.raises(KeyError, match="unknown motion parameter"):
        ms.index("smile")



def fit_residual(observed, neutral, motion):
    """fit_motion's weighted residuals [R] in pixels, from the public model: the points and
    the openings (lips, lids; the prior left out: the fits compared use a tiny one)."""
    model = ms.landmarks(neutral, motion)
    lower, upper = ms.OPENING_PAIRS[:, 1], ms.OPENING_PAIRS[:, 0]
    gap = (model[lower] - model[upper]) - (observed[lower] - observed[upper])
    points = (model - observed) * np.sqrt(ms.LANDMARK_WEIGHTS)[:, None]
    return np.concatenate([points.ravel(), np.sqrt(ms.OPENING_WEIGHT) * gap.ravel()])


def test_fit_with_parameters_at_their_bounds_finds_the_bounded_optimum(neutral_face):
    """Lips pressed together more than in the neutral face and a lower outer lip sitting a
    little lower: the unbounded best fit wants jaw_open below 0. The fit must still find the
    best motion inside the ranges (checked against scipy's bounded least squares), not clip
    jaw_open and keep the lower lip pushed down (which opened a closed mouth)."""
    from scipy.optimize import least_squares

    rng = np.random.default_rng(4)
    motion = random_motion(rng, 12, scale=0.3)
    motion[:, [ms.index(n) for n in ("jaw_open", "lower_lip_depress", "upper_lip_raise")]] = 0.0
    observed = ms.landmarks(neutral_face, motion)
    observed[:, 65:68, 1] -= 2.0                       # lower inner lip pressed up
    observed[:, 55:60, 1] += 3.0                       # lower outer lip a little lower
    observed += rng.normal(0, 0.3, observed.shape)
    fitted = ms.fit_motion(observed, neutral_face, prior=1e-9)
    pairs = ms.LIP_PAIRS
    opening = lambda p: (p[pairs[:, 1], 1] - p[pairs[:, 0], 1]).mean()   # noqa: E731
    for frame, ours in zip(observed, fitted, strict=True):
        cost = lambda m, frame=frame: (fit_residual(frame, neutral_face, m) ** 2).sum()  # noqa: E731
        start = np.clip(ours, ms.LOW + 1e-3, ms.HIGH - 1e-3)
        best = least_squares(lambda m, frame=frame: fit_residual(frame, neutral_face, m), start,
                             bounds=(ms.LOW, ms.HIGH), x_scale=ms.HIGH - ms.LOW).x
        assert cost(ours) <= 1.02 * cost(best) + 1e-3
        # the pressed lips stay closed: no opening beyond the neutral face's
        assert opening(ms.landmarks(neutral_face, ours)) <= opening(neutral_face) + 0.5
