"""A long generation with no reset: does the motion drift, freeze or blow up?

    python -m train.long_run --checkpoint assets/motion_student.pt --minutes 10 --json OUT.json

Audio: real recordings (alsa-utils' phrases, pyannote's conversation when cached by
train.real_speech) and silences of 1-8 s, looped to the length asked for. The student
generates it chunk by chunk with its carry, exactly as a stream would. Checks, per minute:
  head pose inside the training data's range (from the checkpoint's normaliser: mean +- 4 std)
  no freezing: the longest run of frames with no motion change
  idle in silence: jaw_open in the silences (after 0.3 s of settling)
  no blow-up: every value finite and inside the motion space's documented range
"""

import argparse
import json
from pathlib import Path

import numpy as np

from models import motion_space
from models.audio_io import load_audio
from train.evaluate import write_json

HEAD = ("head_yaw", "head_pitch", "head_roll")


def long_audio(minutes: float, seed: int = 0, cache: Path = Path("data/real_speech")
               ) -> tuple[np.ndarray, np.ndarray]:
    """(16 kHz audio, bool per 25 fps frame: inside an inserted silence)."""
    rng = np.random.default_rng(seed)
    clips = [load_audio(p) for p in sorted(Path("/usr/share/sounds/alsa").glob("*.wav"))
             if p.stem != "Noise"]
    if (cache / "sample.wav").is_file():
        conversation = load_audio(cache / "sample.wav")
        clips += [conversation[i:i + 80000] for i in range(96000, conversation.size - 80000,
                                                           80000)]
    total = int(minutes * 60 * 16000)
    audio, silent = [], []
    n = 0
    while n < total:
        clip = clips[int(rng.integers(len(clips)))]
        pause = np.zeros(int(rng.uniform(1.0, 8.0) * 16000), np.float32)
        audio += [clip, pause]
        silent += [np.zeros(clip.size, bool), np.ones(pause.size, bool)]
        n += clip.size + pause.size
    audio, silent = np.concatenate(audio)[:total], np.concatenate(silent)[:total]
    frames = -(-total // 640)
    padded = np.zeros(frames * 640, bool)
    padded[:total] = silent
    return audio, padded.reshape(frames, 640).all(axis=1)


def settled(silent: np.ndarray, frames: int = 8) -> np.ndarray:
    """Silent frames at least `frames` (0.32 s) into their silence."""
    out = np.zeros_like(silent)
    run = 0
    for i, s in enumerate(silent):
        run = run + 1 if s else 0
        out[i] = run > frames
    return out


def longest_still_run(motion: np.ndarray, eps: float = 1e-6) -> int:
    still = np.all(np.abs(np.diff(motion, axis=0)) < eps, axis=1)
    best = run = 0
    for s in still:
        run = run + 1 if s else 0
        best = max(best, run)
    return best


def run(checkpoint: str, minutes: float, seed: int = 0) -> dict:
    import torch

    from models.audio import AudioFeatureExtractor, FeatureConfig
    from models.generator import MotionGenerator, generate_sequence, load_motion_model

    torch.set_num_threads(1)
    model = load_motion_model(checkpoint)
    fields = {k: v for k, v in model.feature_config.items()
              if k in FeatureConfig.__dataclass_fields__}
    extractor = AudioFeatureExtractor(FeatureConfig(**fields))
    silence_feature = extractor.features(np.zeros(extractor.config.window_samples,
                                                  np.float32))[0]
    audio, silent = long_audio(minutes, seed)
    features = extractor.features(audio)
    motion, _ = generate_sequence(MotionGenerator(model, silence_feature, seed=seed), features)
    head = [motion_space.index(n) for n in HEAD]
    mean, std = np.array(model.normalizer.mean), np.array(model.normalizer.std)
    lo, hi = mean[head] - 4 * std[head], mean[head] + 4 * std[head]
    jaw = motion[:, motion_space.index("jaw_open")]
    quiet = settled(silent)
    per_minute = []
    for m in range(int(np.ceil(len(motion) / 1500))):
        part = slice(m * 1500, (m + 1) * 1500)
        h = motion[part][:, head]
        per_minute.append({
            "minute": m + 1,
            "head_mean_deg": h.mean(axis=0).round(2).tolist(),
            "head_std_deg": h.std(axis=0).round(2).tolist(),
            "head_outside_training_range": float(np.mean((h < lo) | (h > hi))),
            "jaw_in_silence_p95": float(np.percentile(jaw[part][quiet[part]], 95))
            if quiet[part].any() else None,
            "jaw_in_speech_p95": float(np.percentile(jaw[part][~silent[part]], 95))
            if (~silent[part]).any() else None,
        })
    return {
        "checkpoint": checkpoint, "minutes": minutes, "frames": len(motion),
        "finite": bool(np.isfinite(motion).all()),
        "inside_documented_ranges": bool(np.all((motion >= motion_space.LOW - 1e-4)
                                                & (motion <= motion_space.HIGH + 1e-4))),
        "longest_still_run_frames": longest_still_run(motion),
        "head_outside_training_range": float(np.mean((motion[:, head] < lo)
                                                     | (motion[:, head] > hi))),
        "jaw_in_silence_p95": float(np.percentile(jaw[quiet], 95)),
        "jaw_in_speech_p95": float(np.percentile(jaw[~silent], 95)),
        "per_minute": per_minute,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="assets/motion_student.pt")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    result = run(args.checkpoint, args.minutes, args.seed)
    write_json(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_minute"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
