"""Training examples from a shard folder (train.synth or train.prepare_videos output).

Style controls are measured from each example's own motion, so synthetic and real-video
data get them the same way (Sonic's motion buckets in spirit), and 1.0 means "as the
average training speaker":
    head_amplitude   mean std of head yaw/pitch/roll, over HEAD_REFERENCE_DEG
    mouth_amplitude  95th percentile of jaw_open, over MOUTH_REFERENCE
"""

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from models import motion_space
from models.motion import STYLE_NAMES
from train.windows import Example

HEAD_REFERENCE_DEG = 3.0
MOUTH_REFERENCE = 0.45


def measure_style(motion: np.ndarray) -> dict[str, float]:
    """Style controls of a motion sequence [T, D] (see module doc)."""
    head = motion[:, [motion_space.index(n) for n in ("head_yaw", "head_pitch", "head_roll")]]
    jaw = motion[:, motion_space.index("jaw_open")]
    return {
        "head_amplitude": float(head.std(axis=0).mean() / HEAD_REFERENCE_DEG),
        "mouth_amplitude": float(np.percentile(jaw, 95) / MOUTH_REFERENCE) if jaw.size else 1.0,
    }


def style_vector(style: dict[str, float], names=STYLE_NAMES) -> np.ndarray:
    return np.array([style[n] for n in names], np.float32)


def read_feature_config(folder: str | Path) -> dict:
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {folder} a shard folder "
                                "(python -m train.synth --out ...)?")
    return json.loads(path.read_text())["features"]


def load_examples(folders: str | Path, split: str) -> tuple[list[Example], dict]:
    """(examples, feature config) of one split; `folders` is one shard folder or several
    joined by commas (e.g. clean and augmented copies), all with the same feature config."""
    from train.synth import load_examples as read_examples

    examples, feature_config = [], None
    for folder in str(folders).split(","):
        config = read_feature_config(folder)
        if feature_config is not None and config != feature_config:
            raise ValueError(f"{folder}: features differ from {str(folders).split(',')[0]}'s")
        feature_config = config
        for e in read_examples(folder, split):
            if list(e["names"]) != list(motion_space.NAMES):
                raise ValueError(f"{folder}: shard motion parameters differ from this code's")
            motion = np.asarray(e["motion"], np.float32)
            examples.append(Example(features=e["features"], motion=motion,
                                    style=style_vector(measure_style(motion)),
                                    voice=e.get("voice", ""), text=e.get("text", "")))
    if not examples:
        raise FileNotFoundError(f"no {split} examples in {folders}")
    return examples, feature_config


@lru_cache(maxsize=4)
def _silence_feature(items: tuple) -> np.ndarray:
    from models.audio import AudioFeatureExtractor, FeatureConfig

    config = dict(items)
    fields = {k: v for k, v in config.items() if k in FeatureConfig.__dataclass_fields__}
    extractor = AudioFeatureExtractor(FeatureConfig(**fields))
    zeros = np.zeros(extractor.config.window_samples, np.float32)
    return extractor.features(zeros)[0]


def silence_feature_for(feature_config: dict) -> np.ndarray:
    """The feature stack of pure silence [stack, 384]: the carry's audio before a stream starts."""
    return _silence_feature(tuple(sorted(feature_config.items())))
