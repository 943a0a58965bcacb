"""Degraded copies of a synth dataset's audio, for a model that holds up on real recordings.

    python -m train.augment --data data/synth --out data/synth_aug [--seed 0]

Clean TTS audio is far from a phone call or a laptop microphone. Each example gets a random
chain of what real audio goes through, in this order:
    reverb      a synthetic room: exponentially decaying noise, RT60 0.15-0.7 s (p 0.4)
    telephone   300-3400 Hz band, 8 kHz round trip, optionally G.711 mu-law (p 0.5)
    noise       white, pink, brown or babble (other examples of the shard), SNR 5-30 dB (p 0.6)
    level       -30..+6 dB, clipped at full scale (always)
The motion, phones and style are the clean example's: the mouth follows the words, not the
room. Features are recomputed with the same extractor and windowing as train.synth.
The output is a shard folder like train.synth's (same names, same dataset.json features), so
the trainers take `--data data/synth,data/synth_aug`. Deterministic for a seed; resumable
(a shard already written is skipped).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import signal

from train.synth import RATE, _to_int16, copy_stats, write_shard

TELEPHONE_BAND = (300.0, 3400.0)


def room_impulse(rng: np.random.Generator, rt60: float,
                 drr_db: float | None = None) -> np.ndarray:
    """A synthetic room impulse response at 16 kHz: direct path + decaying diffuse tail.
    drr_db: the direct sound's energy over the tail's (a microphone near the speaker: +10 dB;
    as far as the echo is loud: 0 dB); None draws the tail's level, about +4 to -17 dB."""
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)      # -60 dB at rt60
    tail[: int(0.003 * RATE)] = 0.0                              # first reflections after 3 ms
    ir = np.zeros(n)
    ir[0] = 1.0
    if drr_db is None:
        ir += tail * rng.uniform(0.05, 0.25)
    else:
        ir += tail * np.sqrt(10 ** (-drr_db / 10) / np.sum(tail ** 2))
    return (ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32)


def reverb(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    wet = signal.fftconvolve(audio, room_impulse(rng, rng.uniform(0.15, 0.7)))[: audio.size]
    return wet.astype(np.float32)


def telephone(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Band-limit to the telephone band through an 8 kHz round trip; G.711 mu-law half the time."""
    sos = signal.butter(4, TELEPHONE_BAND, btype="bandpass", fs=RATE, output="sos")
    x = signal.sosfilt(sos, audio)
    narrow = signal.resample_poly(x, 1, 2)                       # 8 kHz
    if rng.random() < 0.5:
        mu = 255.0
        peak = max(float(np.max(np.abs(narrow))), 1e-6)
        y = np.sign(narrow) * np.log1p(mu * np.abs(narrow / peak)) / np.log1p(mu)
        y = np.round(y * 127) / 127                              # 8-bit codes
        narrow = np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu * peak
    return signal.resample_poly(narrow, 2, 1)[: audio.size].astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if colour == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n, 1 / RATE), 20.0)
    spectrum /= f ** (0.5 if colour == "pink" else 1.0)         # 1/f power or 1/f^2 (brown)
    return np.fft.irfft(spectrum, n)


def add_noise(audio: np.ndarray, rng: np.random.Generator, others: list[np.ndarray]) -> np.ndarray:
    kind = rng.choice(["white", "pink", "brown", "babble"])
    if kind == "babble" and others:
        noise = np.zeros(audio.size)
        for _ in range(3):
            other = others[rng.integers(len(others))]
            start = rng.integers(max(other.size - audio.size, 1))
            piece = other[start: start + audio.size]
            noise[: piece.size] += piece
    else:
        noise = coloured_noise(rng, audio.size, "white" if kind == "babble" else str(kind))
    speech_power = np.mean(audio ** 2) + 1e-12
    noise_power = np.mean(noise ** 2) + 1e-12
    snr_db = rng.uniform(5.0, 30.0)
    scale = np.sqrt(speech_power / noise_power / 10 ** (snr_db / 10))
    return (audio + scale * noise).astype(np.float32)


def set_level(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak = max(float(np.max(np.abs(audio))), 1e-6)
    gain = 10 ** (rng.uniform(-30.0, 6.0) / 20) / peak * 0.5     # relative to a -6 dBFS peak
    return np.clip(audio * gain, -1.0, 1.0).astype(np.float32)


def degrade(audio: np.ndarray, rng: np.random.Generator, others: list[np.ndarray]) -> tuple:
    """(degraded audio, the names of the steps applied)."""
    steps = []
    if rng.random() < 0.4:
        audio, steps = reverb(audio, rng), steps + ["reverb"]
    if rng.random() < 0.5:
        audio, steps = telephone(audio, rng), steps + ["telephone"]
    if rng.random() < 0.6:
        audio, steps = add_noise(audio, rng, others), steps + ["noise"]
    return set_level(audio, rng), steps + ["level"]


def augment_shard(source: Path, out: Path, extractor, rng: np.random.Generator) -> dict:
    """One shard: same examples, degraded audio, recomputed features."""
    meta = json.loads(source.with_suffix(".json").read_text())
    with np.load(source.with_suffix(".npz")) as z:
        arrays = {k: z[k] for k in z.files}
    if not meta["examples"]:
        write_shard(out, source.stem, {"meta": meta, "arrays": arrays})
        return meta
    ao, fo = arrays["audio_offsets"], arrays["frame_offsets"]
    clean = [arrays["audio"][ao[i]:ao[i + 1]].astype(np.float32) / 32768.0
             for i in range(len(ao) - 1)]
    audio, features = [], []
    for i, x in enumerate(clean):
        others = clean[:i] + clean[i + 1:]
        y, steps = degrade(x, rng, others)
        f = extractor.features(y).astype(np.float16)
        frames = int(fo[i + 1] - fo[i])
        if len(f) != frames:
            raise RuntimeError(f"{source}: example {i}: {len(f)} feature frames, {frames} motion")
        audio.append(_to_int16(y))
        features.append(f)
        meta["examples"][i]["augment"] = steps
    arrays["audio"] = np.concatenate(audio)
    arrays["features"] = np.concatenate(features)
    meta["augmented_from"] = str(source)
    write_shard(out, source.stem, {"meta": meta, "arrays": arrays})
    return meta


def augment(data: str | Path, out: str | Path, seed: int = 0, splits=("train", "val")) -> Path:
    from models.audio import AudioFeatureExtractor, FeatureConfig

    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = json.loads((data / "dataset.json").read_text())
    fields = {k: v for k, v in dataset["features"].items()
              if k in FeatureConfig.__dataclass_fields__}
    extractor = AudioFeatureExtractor(FeatureConfig(**fields))
    for split in splits:
        for index, source in enumerate(sorted(data.glob(f"{split}-*.npz"))):
            target = out / source.name
            if target.is_file() and target.with_suffix(".json").is_file():
                continue
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, 1 + splits.index(split), index])
            meta = augment_shard(source, out, extractor, rng)
            print(f"{target.name}: {len(meta['examples'])} examples in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    dataset["augmented_from"] = str(data)
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    copy_stats(data, out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synth")
    parser.add_argument("--out", default="data/synth_aug")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(augment(args.data, args.out, args.seed))


if __name__ == "__main__":
    main()
