"""MediaPipe's models (assets/mediapipe) under LiteRT: each loaded once, run under one lock.

A LiteRT interpreter must not be invoked from two threads at once, and the server prepares
avatars from several threads; the models are small (a few ms a call), so one lock for all of
them costs nothing worth a pool of interpreters.
"""

import os
import sys
import threading
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "mediapipe"

# name: (model file, its output tensors in the order `run` returns them)
MODELS = {
    "mesh": ("face_landmark.tflite", ("conv2d_21", "conv2d_31")),
    "iris": ("iris_landmark.tflite", ("output_eyes_contours_and_brows", "output_iris")),
    "selfie": ("selfie_segmentation.tflite", ("activation_10",)),
    "palm": ("palm_detection_lite.tflite", ("Identity", "Identity_1")),       # boxes, scores
    # landmarks, hand presence, handedness, world landmarks
    "hand": ("hand_landmark_lite.tflite", ("Identity", "Identity_1", "Identity_2", "Identity_3")),
}

_lock = threading.Lock()
_interpreters: dict = {}


def run(name: str, image: np.ndarray) -> list[np.ndarray]:
    """A model's outputs (copies) for one input image [side, side, 3] float32 in [0, 1]."""
    file, outputs = MODELS[name]
    with _lock:
        interpreter = _interpreters.get(name)
        if interpreter is None:
            interpreter = _load(ASSETS / file)
            _interpreters[name] = interpreter
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        index = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        return [interpreter.get_tensor(index[n]) for n in outputs]


def _load(path: Path):
    """An interpreter for one model file, its tensors allocated. LiteRT's C++ runtime prints
    an INFO line on the process's stderr when it attaches its CPU delegate: that line would
    reach the users of command-line tools (whose errors are one line), so file descriptor 2
    is pointed at /dev/null meanwhile (the lock above keeps other threads out of LiteRT, not
    out of stderr: a line another thread writes in that moment is lost)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            interpreter.allocate_tensors()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return interpreter
