"""How well the plate continues a real background where a moving head uncovers it.

    python -m benchmarks.plate [--size 512] [--shift 0.25] [--json OUT]

The background behind a head is never seen, so it is held out instead: for each portrait
of the contact sheet (benchmarks.contact_sheet) the person's hole (models.background
plate_hole) is moved sideways by --shift face widths, each way, and the part of the moved
hole that lies on the photo's background is taken out too. Both fills (the push-pull mean,
models.background.fill, the plate's until 2026-12-07; the plate's now, its light smooth and
its texture continued, models.background.continue_background) fill it from the background
left, and the filled pixels are compared with the real ones:

    PSNR       over the held-out pixels (the smooth mean is what minimises the squared error)
    SSIM       mean of the SSIM map (grey, 7 px windows) over the held-out pixels
    detail     the fill's high frequencies over the real ones': std of (image - 2 px Gaussian
               blur) over the held-out pixels, 1 where the fill is as grainy as the photo
    ms         time of the fill (one thread)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def held_out(person: np.ndarray, face_width: float, shift: float):
    """The hole and the held-out pixels [S, S] bool for a hole moved `shift` face widths."""
    from models.background import plate_hole

    hole = plate_hole(person, face_width)
    moved = np.roll(hole, round(shift * face_width), axis=1)
    return hole, moved & ~hole


def scores(fill: np.ndarray, real: np.ndarray, where: np.ndarray) -> dict:
    """PSNR, SSIM and detail of a fill [S, S, 3] against the real pixels, over `where`."""
    from scipy import ndimage
    from skimage.metrics import structural_similarity

    error = np.mean((fill[where] - real[where]) ** 2)
    grey = lambda image: image @ np.array([0.299, 0.587, 0.114])          # noqa: E731
    _, ssim = structural_similarity(grey(fill), grey(real), data_range=255.0, win_size=7,
                                    full=True)
    detail = lambda image: image - ndimage.gaussian_filter(image, (2, 2, 0))  # noqa: E731
    return {"psnr": float(10 * np.log10(255.0**2 / max(error, 1e-9))),
            "ssim": float(ssim[where].mean()),
            "detail": float(detail(fill)[where].std() / max(detail(real)[where].std(), 1e-9))}


def main() -> None:
    from benchmarks.contact_sheet import portraits
    from models.avatar import prepare_avatar
    from models.background import continue_background, fill, person_matte
    from models.texture_fill import compile_now

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--shift", type=float, default=0.25)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    compile_now()
    results = {}
    print(f"{'portrait':30s} {'shift':>6s} {'held-out px':>11s}  push-pull PSNR / SSIM / "
          "detail / ms   plate's PSNR / SSIM / detail / ms")
    for name, path in portraits().items():
        avatar = prepare_avatar(path, args.size, cache=False)
        crop = np.ascontiguousarray(avatar.own_mouth.numpy().transpose(1, 2, 0))  # the crop
        person = person_matte(crop.astype(np.uint8))
        face_width = float(avatar.face_width)
        for shift in (-args.shift, args.shift):
            hole, test = held_out(person, face_width, shift)
            known = ~hole & ~test
            row = {"held_out_px": int(test.sum())}
            for label in ("push_pull", "plate"):
                start = time.perf_counter()
                filled = (fill(crop, known) if label == "push_pull"
                          else continue_background(crop, known, face_width))
                row[label] = scores(np.asarray(filled, np.float64), crop.astype(np.float64),
                                    test)
                row[label]["ms"] = 1000 * (time.perf_counter() - start)
            results[f"{name}, shift {shift:+.2f}"] = row
            line = " ".join(f"   {r['psnr']:6.2f} / {r['ssim']:.3f} / {r['detail']:.2f} / "
                            f"{r['ms']:4.0f}" for r in (row["push_pull"], row["plate"]))
            print(f"{name:30s} {shift:+6.2f} {row['held_out_px']:11d} {line}")
    for label in ("push_pull", "plate"):
        print(f"mean, {label}: " + ", ".join(
            f"{m} {np.mean([r[label][m] for r in results.values()]):.3f}"
            for m in ("psnr", "ssim", "detail", "ms")))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
