"""Is a rendered jaw_open sweep seen by an independent detector, and is it still the person?

    python -m benchmarks.sweep [--sizes 512 256] [--portrait IMG ...] [--frames 50] [--json OUT]

For each portrait and working size: the avatar rendered along models.render's sweep of
jaw_open (0 -> 1 -> 0, half a sine; everything else neutral), and dlib on every frame
(benchmarks.reenact.look: its 68 landmarks and identity vector). Reported: the correlation of
dlib's inner-lip gap with the commanded jaw_open (the realism issue's bar on a held-out
portrait: 0.95), the gap at rest and at the sweep's widest, and each frame's identity
distance to the portrait's own crop, as the photo shows it (the bar: 0.35 or less in every
frame). Portraits as benchmarks.blink.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def measure(portrait: Path, size: int, frames: int) -> dict:
    from benchmarks.reenact import look
    from models import face
    from models import motion_space as ms
    from models.avatar import prepare_avatar
    from models.render import render, sweep

    avatar = prepare_avatar(portrait, size, cache=False)
    source = look(avatar.photo())       # the crop as the photo shows it (lips, a hand)
    motion = sweep("jaw_open", frames)
    gaps, distances = [], []
    for frame in render(avatar, motion).numpy():
        seen = look(frame)
        gaps.append(np.nan if seen is None else seen.mouth)
        distances.append(np.nan if seen is None or source is None
                         else face.identity_distance(seen.embedding, source.embedding))
    gaps, distances = np.array(gaps), np.array(distances)
    jaw = motion[:, ms.index("jaw_open")]
    seen = np.isfinite(gaps)
    return {"jaw_corr": float(np.corrcoef(jaw[seen], gaps[seen])[0, 1]),
            "widest_gap": float(np.nanmax(gaps)), "closed_gap": float(gaps[0]),
            "identity_max": float(np.nanmax(distances)),
            "identity_mean": float(np.nanmean(distances)),
            "no_face": int((~seen).sum())}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.blink import default_portraits

    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256], choices=[512, 256])
    parser.add_argument("--portrait", nargs="+", help="portrait files (default: see above)")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    portraits = ({Path(p).name: Path(p) for p in args.portrait} if args.portrait
                 else default_portraits())
    rows = []
    print(f"{'portrait':<32} {'size':>5} {'jaw corr':>9} {'gap shut/widest':>16} "
          f"{'identity mean/max':>18} {'no face':>8}")
    for name, path in portraits.items():
        for size in args.sizes:
            r = measure(path, size, args.frames) | {"portrait": name, "size": size}
            rows.append(r)
            print(f"{name:<32} {size:>5} {r['jaw_corr']:>9.3f} "
                  f"{r['closed_gap']:>7.3f}/{r['widest_gap']:<8.3f} "
                  f"{r['identity_mean']:>8.3f}/{r['identity_max']:<9.3f} {r['no_face']:>8}")
    corr = np.array([r["jaw_corr"] for r in rows])
    worst = np.array([r["identity_max"] for r in rows])
    summary = {"jaw_corr_mean": float(np.mean(corr)), "jaw_corr_worst": float(np.min(corr)),
               "portraits_at_095": int(np.sum(corr >= 0.95)),
               "identity_max": float(np.max(worst)),
               "portraits_within_035": int(np.sum(worst <= 0.35)), "portraits": len(rows)}
    print(f"jaw corr mean {summary['jaw_corr_mean']:.3f}, worst {summary['jaw_corr_worst']:.3f},"
          f" {summary['portraits_at_095']} of {len(rows)} at 0.95 or more; identity at most "
          f"{summary['identity_max']:.3f}, {summary['portraits_within_035']} of {len(rows)} "
          "within 0.35 in every frame")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
