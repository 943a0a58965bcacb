"""Face detection (dlib), landmarks (the face mesh; dlib's predictor as a measuring tool) and
identity embedding (dlib) on real photos."""

from pathlib import Path

import numpy as np
import pytest
import skimage.data

from models import face
from models.avatar import read_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def hopper():
    return read_image(ASSETS / "grace_hopper.jpg")


def test_one_face_with_plausible_landmarks(astronaut, hopper):
    for image in (astronaut, hopper):
        faces = face.detect_faces(image)
        assert len(faces) == 1
        f = faces[0]
        assert f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32
        left, top, right, bottom = f.box
        eyes = f.landmarks[36:48].mean(0)
        assert left < eyes[0] < right and top < eyes[1] < bottom
        # anatomy: brows above eyes above nose tip above mouth above chin
        ys = [f.landmarks[i, 1] for i in (19, 37, 30, 62, 8)]
        assert ys == sorted(ys)
        assert f.landmarks[36, 0] < f.landmarks[45, 0]      # image-left eye is on the left
        assert 60 < f.width < 300


def test_faces_come_largest_first(astronaut, hopper):
    canvas = np.full((600, 1000, 3), 200, dtype=np.uint8)
    canvas[:512, :512] = astronaut                           # face about 93 px wide
    canvas[:600, 488:] = hopper                              # face about 188 px wide
    faces = face.detect_faces(canvas)
    widths = [f.width for f in faces]
    assert len(faces) >= 2 and widths == sorted(widths, reverse=True)
    assert faces[0].landmarks[:, 0].min() > 488              # the biggest is Grace Hopper
    assert any(f.landmarks[:, 0].max() < 488 and f.width > 80 for f in faces[1:])


def test_cnn_detector_finds_the_same_face(astronaut):
    hog = face.detect_faces(astronaut, "hog")[0]
    cnn = face.detect_faces(astronaut, "cnn")
    assert len(cnn) == 1
    assert np.abs(cnn[0].landmarks - hog.landmarks).mean() < 5.0
    with pytest.raises(ValueError, match="unknown face detector"):
        face.detect_faces(astronaut, "magic")


def test_no_face_in_a_cat_or_a_blank():
    assert face.detect_faces(skimage.data.chelsea()) == []
    assert face.detect_faces(np.full((300, 300, 3), 128, np.uint8)) == []


def test_large_images_are_searched_at_reduced_size(astronaut):
    big = np.kron(astronaut, np.ones((4, 4, 1), dtype=np.uint8))   # 2048 x 2048
    faces = face.detect_faces(big)
    assert len(faces) == 1
    small = face.detect_faces(astronaut)[0]
    assert np.abs(faces[0].landmarks / 4 - small.landmarks).mean() < 3.0


def test_identity_embedding_separates_people(astronaut, hopper):
    a = face.detect_faces(astronaut, landmarker="dlib")[0]
    h = face.detect_faces(hopper, landmarker="dlib")[0]
    ea = face.identity_embedding(astronaut, a.landmarks)
    eh = face.identity_embedding(hopper, h.landmarks)
    assert ea.shape == (128,) and ea.dtype == np.float32
    # the same person, mirrored and slightly brighter, stays close
    mirrored = np.ascontiguousarray(np.clip(astronaut[:, ::-1].astype(int) + 20, 0, 255)
                                    .astype(np.uint8))
    em = face.identity_embedding(mirrored,
                                 face.detect_faces(mirrored, landmarker="dlib")[0].landmarks)
    assert face.identity_distance(ea, em) < 0.35
    assert face.identity_distance(ea, eh) > face.SAME_PERSON_DISTANCE


def test_runtime_and_measuring_landmarks_agree(astronaut):
    mesh = face.detect_faces(astronaut)[0].landmarks
    dlib = face.detect_faces(astronaut, landmarker="dlib")[0].landmarks
    inter_ocular = np.linalg.norm(dlib[45] - dlib[36])
    assert np.linalg.norm(mesh - dlib, axis=1).mean() < 0.06 * inter_ocular
    with pytest.raises(ValueError, match="unknown landmark model"):
        face.detect_faces(astronaut, landmarker="magic")


def test_a_box_without_a_face_is_dropped(astronaut):
    """The HOG detector's weak boxes (upsampled search) on a non-face are refused by the mesh."""
    box = (300.0, 380.0, 380.0, 460.0)                       # the suit, below the face
    with pytest.raises(face.FaceNotFoundError):
        face.find_landmarks(astronaut, box)
    assert face.find_landmarks(astronaut, box, "dlib").shape == (68, 2)   # dlib always answers
