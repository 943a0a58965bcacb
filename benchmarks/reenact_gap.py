"""Where a self-reenactment loses its face-box SSIM: the warp's geometry or what no warp gives.

    python -m benchmarks.reenact_gap DIR [--every 5] [--json OUT]

DIR is a `benchmarks.reenact` output (real.mkv, rendered.mkv, source.png). For every n-th
frame, over the same face box as the benchmark (dlib's landmarks on the real frame), luma
SSIM of:

    rendered      the renderer's frame (what metrics.json reports)
    affine        the rendered frame moved by the one affine map that best explains its
                  remaining displacement to the real frame: what a perfect head pose would add
    warped        the source frame warped onto the real one by dense optical flow (OpenCV's
                  DIS, real -> source): a geometry-perfect warp of the one photo; what it still
                  misses is what no warp of that photo gives (lighting, teeth it never showed,
                  compression)
    previous      the real frame before it: the clip's own frame-to-frame noise

and, per band of the face box (top to bottom: hair and forehead, eyes, nose and cheeks,
mouth, chin and neck), the rendered and warped SSIM and the remaining displacement (the
optical flow real -> rendered, mean length in pixels). The optical flow is a measuring tool
here, never part of the renderer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.reenact import LUMA, face_box, look, read_lossless

# Bands of the face box, as shares of its height from the top (the box is raised by a quarter
# of the landmarks' height for the forehead: models.recording.FOREHEAD).
BANDS = {"hair and forehead": (0.0, 0.25), "eyes": (0.25, 0.45), "nose and cheeks": (0.45, 0.65),
         "mouth": (0.65, 0.88), "chin and neck": (0.88, 1.0)}


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ LUMA


def _flow(dis, towards: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Dense displacement [H, W, 2] by OpenCV's DIS optical flow `dis`: the pixel of `towards`
    at p is `source`'s at p + flow(p)."""
    return dis.calc(np.clip(towards, 0, 255).astype(np.uint8),
                    np.clip(source, 0, 255).astype(np.uint8), None)


def _remap(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    import cv2

    h, w = image.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(image.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1],
                     cv2.INTER_LINEAR).astype(np.float64)


def best_affine(flow: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The affine displacement field [H, W, 2] closest (least squares over the box) to flow."""
    left, top, right, bottom = box
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    inside = (slice(top, bottom), slice(left, right))
    design = np.stack([np.ones(xs[inside].size), xs[inside].ravel(), ys[inside].ravel()], 1)
    coef = np.linalg.lstsq(design, flow[inside].reshape(-1, 2), rcond=None)[0]   # [3, 2]
    return (np.stack([np.ones_like(xs), xs, ys], -1) @ coef).astype(np.float32)


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from skimage.metrics import structural_similarity

    return structural_similarity(a, b, data_range=255.0, full=True)[1]


def gap(run: str | Path, every: int = 5) -> dict:
    """The figures of the module doc for the reenact output folder `run`."""
    run = Path(run)
    import cv2
    from PIL import Image

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    source = _luma(np.asarray(Image.open(run / "source.png").convert("RGB")))
    ssim = {k: [] for k in ("rendered", "affine", "warped", "previous")}
    bands = {name: {"rendered": [], "warped": [], "displacement_px": []} for name in BANDS}
    previous = None
    for k, (real, rendered) in enumerate(zip(read_lossless(run / "real.mkv"),
                                             read_lossless(run / "rendered.mkv"), strict=True)):
        before, previous = previous, real
        if k % every or before is None:
            continue
        seen = look(real, identity=False)
        if seen is None:
            continue
        box = face_box(seen.landmarks, real.shape[0])
        left, top, right, bottom = box
        inside = (slice(top, bottom), slice(left, right))
        truth, drawn = _luma(real), _luma(rendered)
        residual = _flow(dis, truth, drawn)                                # real -> rendered
        candidates = {"rendered": drawn,
                      "affine": _remap(drawn, best_affine(residual, box)),
                      "warped": _remap(source, _flow(dis, truth, source)),
                      "previous": _luma(before)}
        maps = {name: _ssim_map(image[inside], truth[inside])
                for name, image in candidates.items()}
        for name, m in maps.items():
            ssim[name].append(float(m.mean()))
        length = np.linalg.norm(residual[inside], axis=-1)
        height = bottom - top
        for name, (a, b) in BANDS.items():
            first = int(round(a * height))
            rows = slice(first, max(int(round(b * height)), first + 1))
            bands[name]["rendered"].append(float(maps["rendered"][rows].mean()))
            bands[name]["warped"].append(float(maps["warped"][rows].mean()))
            bands[name]["displacement_px"].append(float(length[rows].mean()))
    if not ssim["rendered"]:
        raise ValueError(f"no frame of {run} shows a face to measure")
    return {"run": str(run), "frames": len(ssim["rendered"]), "every": every,
            "ssim": {name: float(np.mean(v)) for name, v in ssim.items()},
            "bands": {name: {k: float(np.mean(v)) for k, v in figures.items()}
                      for name, figures in bands.items()},
            "band_shares": {name: b - a for name, (a, b) in BANDS.items()}}


def format_table(result: dict) -> str:
    s = result["ssim"]
    lines = [f"{result['frames']} frames: SSIM rendered {s['rendered']:.3f}, after the best "
             f"affine {s['affine']:.3f}, source warped by optical flow {s['warped']:.3f}, "
             f"previous real frame {s['previous']:.3f}",
             "| band | SSIM rendered | SSIM warped | share of the gap | displacement px |",
             "|---|---|---|---|---|"]
    total = s["warped"] - s["rendered"]
    for name, figures in result["bands"].items():
        lost = (figures["warped"] - figures["rendered"]) * result["band_shares"][name]
        share = lost / total if total > 0 else float("nan")
        lines.append(f"| {name} | {figures['rendered']:.3f} | {figures['warped']:.3f} | "
                     f"{share:.0%} | {figures['displacement_px']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a benchmarks.reenact output folder")
    parser.add_argument("--every", type=int, default=5, help="measure every n-th frame")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    for name in ("real.mkv", "rendered.mkv", "source.png"):
        if not (Path(args.run) / name).is_file():
            print(f"error: {args.run} has no {name}: give a benchmarks.reenact --out folder",
                  file=sys.stderr)
            return 2
    try:
        result = gap(args.run, max(1, args.every))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
