"""A shard folder's audio features recomputed with another feature configuration.

    python -m train.refeature --data data/synth --out data/synth_layers --all-layers

Audio levers (Whisper's layer stack, the window length) change only the features, so the
speech need not be synthesised again: each shard's stored 16 kHz audio is encoded with the new
`models.audio.FeatureConfig`, and its motion, audio and metadata are copied as they are.
dataset.json records the new configuration. Shards are written atomically (the .json last)
and finished ones are skipped, so a run resumes.
"""

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from train.synth import add_feature_arguments, copy_stats, feature_overrides, write_shard

_extractor = None


def _init_worker(settings: dict) -> None:
    global _extractor
    import torch

    from models.audio import AudioFeatureExtractor, FeatureConfig

    torch.set_num_threads(1)         # the same arithmetic whatever the worker count
    _extractor = AudioFeatureExtractor(FeatureConfig.of(settings))


def _refeature(job: tuple[str, str]) -> str:
    """Encode one shard's examples again: (source .npz, output folder) -> shard name."""
    source, out = Path(job[0]), Path(job[1])
    meta = json.loads(source.with_suffix(".json").read_text())
    with np.load(source) as z:
        arrays = {k: z[k] for k in z.files}
    if meta["examples"]:
        ao, fo = arrays["audio_offsets"], arrays["frame_offsets"]
        features = []
        for i in range(len(meta["examples"])):
            audio = arrays["audio"][ao[i]:ao[i + 1]].astype(np.float32) / 32768.0
            frames = int(fo[i + 1] - fo[i])
            features.append(_extractor.features(audio)[:frames].astype(np.float16))
        arrays["features"] = np.concatenate(features)
    meta["features"] = _extractor.config.to_dict()
    write_shard(out, source.stem, {"arrays": arrays, "meta": meta})
    return source.stem


def run(data: str | Path, out: str | Path, settings: dict, workers: int = 1) -> int:
    """Refeature every shard of `data` into `out` with FeatureConfig overrides `settings`;
    returns the number of shards written."""
    from models.audio import FeatureConfig

    data, out = Path(data), Path(out)
    info = json.loads((data / "dataset.json").read_text())
    config = replace(FeatureConfig.of(info["features"]), **settings)
    info["features"] = config.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    target = out / "dataset.json"
    if target.is_file() and json.loads(target.read_text()) != info:
        raise SystemExit(f"{out} holds shards of other settings: delete it or use another --out")
    target.write_text(json.dumps(info, indent=1))
    copy_stats(data, out)
    jobs = [(str(p), str(out)) for p in sorted(data.glob("*.npz"))
            if not (out / p.with_suffix(".json").name).is_file()]
    print(f"{len(jobs)} shards to encode with {config}", flush=True)
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, _init_worker, (config.to_dict(),)) as pool:
        for name in pool.imap_unordered(_refeature, jobs):
            print(f"{name} done ({time.perf_counter() - started:.0f} s)", flush=True)
    return len(jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.refeature", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="shard folder (train.synth output)")
    parser.add_argument("--out", required=True, help="new shard folder (resumed if it exists)")
    parser.add_argument("--workers", type=int, default=1)
    add_feature_arguments(parser)
    args = parser.parse_args(argv)
    run(args.data, args.out, feature_overrides(args), args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
