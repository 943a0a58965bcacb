"""Faces in photos: detection, 68 landmarks and an identity embedding.

Detection: dlib's detectors (PyPI `dlib-bin`, Boost licence; the models of
`face-recognition-models`), which work with numpy 2 and need no download at run time: "hog"
(default, ~0.1 s for a 512x512 image; trained by dlib's author on faces of Labeled Faces in the
Wild) and "cnn" (dlib's MMOD network, more robust to rotation and lighting, ~2 s).

Landmarks (the runtime's): MediaPipe's face mesh refined by its iris model
(models/face_mesh.py, Apache-2.0), mapped onto the 68-point iBUG 300-W layout that the motion
space uses (models.motion_space.REGIONS). A detector box in which the mesh finds no face is
dropped. dlib's own 68-point predictor is kept as an independent measuring tool for tests and
benchmarks only (`landmarker="dlib"`): its training data excludes commercial use.

The identity embedding is dlib's face-recognition ResNet (128-d; two photos of the same person
are usually closer than 0.6), used by tests and benchmarks.

Images are numpy arrays [H, W, 3] uint8 RGB.
"""

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

DETECTORS = ("hog", "cnn")
LANDMARKERS = ("mesh", "dlib")
# Detection runs on a copy whose longest side is at most this (faces in a large photo are
# large); landmarks are then found on the full-resolution image.
DETECT_MAX_SIDE = 1280
SAME_PERSON_DISTANCE = 0.6


class PortraitError(ValueError):
    """A portrait that cannot become an avatar; the message says why, in plain words."""


class FaceNotFoundError(PortraitError):
    pass


class FaceTooSmallError(PortraitError):
    pass


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]   # detector box: left, top, right, bottom (pixels)
    score: float                              # detector confidence (higher is surer)
    landmarks: np.ndarray                     # [68, 2] float32, (x, y) pixels

    @property
    def width(self) -> float:
        """Face width in pixels: jaw point 0 to jaw point 16."""
        return float(np.linalg.norm(self.landmarks[16] - self.landmarks[0]))


def _model_path(name: str) -> str:
    # find_spec, not import: the package's __init__ imports pkg_resources, which setuptools
    # no longer ships.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package face-recognition-models is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise RuntimeError(f"face model file missing: {path}")
    return str(path)


@cache
def _dlib():
    import dlib

    return dlib


@cache
def _hog_detector():
    return _dlib().get_frontal_face_detector()


@cache
def _cnn_detector():
    return _dlib().cnn_face_detection_model_v1(_model_path("mmod_human_face_detector.dat"))


@cache
def _shape_predictor():
    return _dlib().shape_predictor(_model_path("shape_predictor_68_face_landmarks.dat"))


@cache
def _recognizer():
    return _dlib().face_recognition_model_v1(
        _model_path("dlib_face_recognition_resnet_model_v1.dat"))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image [H, W, 3] uint8, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def detect_boxes(image: np.ndarray, detector: str = "hog"
                 ) -> list[tuple[tuple[float, ...], float]]:
    """Detector boxes (left, top, right, bottom) and scores on `image`."""
    if detector == "hog":
        # Upsampling finds faces down to ~40 px but also more false positives (the mission
        # patch on the astronaut's suit scores 0.12), so only when nothing was found at 1x.
        for upsample in (0, 1):
            rects, scores, _ = _hog_detector().run(image, upsample, 0.0)
            if len(rects):
                return [((r.left(), r.top(), r.right(), r.bottom()), float(s))
                        for r, s in zip(rects, scores, strict=True)]
        return []
    if detector == "cnn":
        for upsample in (0, 1):
            found = _cnn_detector()(image, upsample)
            if len(found):
                return [((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()),
                         float(d.confidence)) for d in found]
        return []
    raise ValueError(f"unknown face detector {detector!r}; known: {', '.join(DETECTORS)}")


def find_landmarks(image: np.ndarray, box: tuple[float, float, float, float],
                   landmarker: str = "mesh") -> np.ndarray:
    """The 68 landmarks [68, 2] float32 (x, y pixels) of the face inside `box`: from the face
    mesh (the runtime's; FaceNotFoundError when the box holds no face) or from dlib's
    predictor (measuring only; it returns 68 points whatever the box holds)."""
    if landmarker == "mesh":
        from models.face_mesh import find_mesh, to_ibug68

        return to_ibug68(find_mesh(_check_image(image), box).points)
    if landmarker == "dlib":
        return dlib_landmarks(image, box)
    raise ValueError(f"unknown landmark model {landmarker!r}; known: {', '.join(LANDMARKERS)}")


def dlib_landmarks(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """dlib's 68 landmarks [68, 2] float32 (x, y pixels) of the face inside `box`: the
    independent measuring tool of tests and benchmarks (its training data excludes
    commercial use)."""
    dlib = _dlib()
    image = _check_image(image)
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = _shape_predictor()(image, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def detect_faces(image: np.ndarray, detector: str = "hog", landmarker: str = "mesh") -> list[Face]:
    """All faces in an RGB image, with landmarks, largest (face width) first. With the mesh,
    a detector box in which it finds no face is left out."""
    image = _check_image(image)
    scale = min(1.0, DETECT_MAX_SIDE / max(image.shape[:2]))
    small = image
    if scale < 1.0:
        from skimage.transform import rescale

        small = rescale(image, scale, channel_axis=2, anti_aliasing=True, preserve_range=True)
        small = np.ascontiguousarray(small.round().astype(np.uint8))
    faces = []
    for box, score in detect_boxes(small, detector):
        box = tuple(float(v) / scale for v in box)
        try:
            faces.append(Face(box, score, find_landmarks(image, box, landmarker)))
        except FaceNotFoundError:
            continue
    return sorted(faces, key=lambda f: -f.width)


def identity_embedding(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """128-d identity vector [128] float32 of the face with these 68 landmarks."""
    dlib = _dlib()
    image = _check_image(image)
    points = np.asarray(landmarks, dtype=np.float64)
    left, top = points.min(0)
    right, bottom = points.max(0)
    rect = dlib.rectangle(int(left), int(top), int(right), int(bottom))
    shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y)))
                                              for x, y in points])
    return np.array(_recognizer().compute_face_descriptor(image, shape), dtype=np.float32)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between identity embeddings (< 0.6: probably the same person)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
