"""The onnx engine's graphs exported before a server starts: in parallel, each with a line.

    python -m export.warm [--size 512] [--checkpoint PATH] [--windows] [--close-ups]

The onnx engine exports its three graphs (audio encoder, motion sampler, renderer at the
working size) on first use and caches them (export/*.py, keyed by configuration, checkpoint
and source). On a fresh machine that is most of the first start, and the exporters' own
warnings were all a newcomer saw. `warm_onnx` (server.py calls it before it loads the
engine) exports only what is missing (export.exporter: TorchScript, seconds a graph), in two
processes (one exporter holds Python's lock: threads would not overlap): the renderer in one,
the audio encoder then the motion sampler in the other (done after 11 s, 5 s and 7 s on 2
cores, benchmarks/cold_start.py); it says what it does and when each graph was done, and
keeps the exporters' output out of the log unless one fails (then its tail is shown). A
fourth graph, the renderer of video avatars' mouth windows (models.video_avatar.mouth_window),
is exported in the background the first time a video avatar needs it
(OnnxEngine.draws_windows; video frames are drawn whole until then), or here with --windows;
a fifth, the renderer of close-ups (photos with little room around the face, their eye and
mouth windows larger: Avatar.frame_size), the first time a close-up is drawn (by the torch
renderer until then), or here with --close-ups.
"""

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

RENDERER, ENCODER, MOTION = "renderer", "audio encoder", "motion sampler"
WINDOWS = "renderer of video avatars' mouth windows"     # exported when first needed
CLOSE_UP = "renderer of close-ups"                       # exported when first needed
PROCESSES = ((RENDERER, WINDOWS, CLOSE_UP), (ENCODER, MOTION))   # each process's, in turn


SPAWN = multiprocessing.get_context("spawn")


class ExportError(RuntimeError):
    pass


def missing_exports(checkpoint: str | Path, size: int, windows: bool = False,
                    close_ups: bool = False) -> list[str]:
    """Which of the graphs (RENDERER, ENCODER, MOTION, and WINDOWS and CLOSE_UP if asked for)
    are not cached yet."""
    from export.audio_encoder import audio_encoder_path
    from export.motion import motion_export_path
    from export.renderer import cpu_renderer_path
    from models.audio import FeatureConfig
    from models.generator import load_motion_model

    missing = [] if cpu_renderer_path(size).is_file() else [RENDERER]
    if windows and not window_renderer_ready(size):
        missing.append(WINDOWS)
    if close_ups and not close_up_renderer_ready(size):
        missing.append(CLOSE_UP)
    model = load_motion_model(checkpoint)
    if not audio_encoder_path(FeatureConfig.of(model.feature_config)).is_file():
        missing.append(ENCODER)
    if not motion_export_path(model, checkpoint).is_file():
        missing.append(MOTION)
    return missing


def window_renderer_ready(size: int) -> bool:
    """Whether the renderer graph of mouth windows in frames of `size` is cached."""
    from export.renderer import cpu_renderer_path
    from models.video_avatar import WINDOW

    return cpu_renderer_path(WINDOW[size], size).is_file()


def close_up_renderer_ready(size: int) -> bool:
    """Whether the renderer graph of close-ups of `size` is cached."""
    from export.renderer import cpu_renderer_path
    from models.avatar import close_up_frame_size

    return cpu_renderer_path(size, close_up_frame_size(size)).is_file()


def ready(job: str, size: int) -> bool:
    """Whether the graph of an export job started when first needed (WINDOWS, CLOSE_UP) is
    cached."""
    return (window_renderer_ready if job == WINDOWS else close_up_renderer_ready)(size)


def _export(jobs: tuple[str, ...], checkpoint: str, size: int, log: str, done) -> None:
    """Export `jobs` in turn, in a child process whose output goes to `log`; each job's name
    is put on the `done` queue when its graph is written."""
    import logging
    import warnings

    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    model = photo = None
    for job in jobs:
        if job in (RENDERER, WINDOWS, CLOSE_UP):
            from export.renderer import cached_cpu_renderer_export
            from models.avatar import prepare_avatar

            photo = photo or prepare_avatar(size=size)         # once for all three graphs
            if job == RENDERER:
                cached_cpu_renderer_export(photo)
            elif job == CLOSE_UP:                  # any avatar with a close-up's face width
                from dataclasses import replace

                import torch

                from models.avatar import CLOSE_UP_FRACTION

                cached_cpu_renderer_export(replace(
                    photo, face_width=torch.tensor(CLOSE_UP_FRACTION * size)))
            else:                                  # any avatar: a window of its frame
                from models.video_avatar import frame_avatar

                cached_cpu_renderer_export(frame_avatar(
                    photo, photo.crop(), photo.landmarks.numpy(), window=(0, 0)))
        else:
            from models.audio import FeatureConfig
            from models.generator import load_motion_model

            model = model or load_motion_model(checkpoint)      # once for both networks
            if job == ENCODER:
                from export.audio_encoder import cached_audio_encoder

                cached_audio_encoder(FeatureConfig.of(model.feature_config))
            else:
                from export.motion import cached_motion_export

                cached_motion_export(model, checkpoint)
        if done is not None:
            done.put(job)


def start_export(jobs: tuple[str, ...] | str, checkpoint: str | Path, size: int,
                 done=None):
    """Export one job or several in turn, in a child process of its own (spawned: no fork of
    a process with threads; one exporter holds Python's lock, so threads would not overlap).
    `done`: a queue of the spawn context that gets each job's name once it is done. Returns
    the process and the file its output goes to."""
    jobs = (jobs,) if isinstance(jobs, str) else tuple(jobs)
    log = tempfile.NamedTemporaryFile(prefix="export-", suffix=".log", delete=False).name
    process = SPAWN.Process(target=_export, args=(jobs, str(checkpoint), size, log, done),
                            daemon=True)
    process.start()
    return process, log


def finished(process, log: str) -> str | None:
    """A started export's outcome once it has ended: "" when it succeeded, else the tail of
    its output; None while it runs. The log file is removed once read."""
    process.join(timeout=0)
    if process.exitcode is None:
        return None
    text = Path(log).read_text(errors="replace")
    os.unlink(log)
    return "" if process.exitcode == 0 else text[-3000:] or f"exit code {process.exitcode}"


def warm_onnx(checkpoint: str | Path, size: int, say=print, windows: bool = False,
              close_ups: bool = False) -> list[str]:
    """Export what the onnx engine lacks for `checkpoint` and `size` (see the module doc);
    returns the jobs run. Raises ExportError (with the exporter's last lines) if one fails.
    A missing checkpoint is left to the engine to report."""
    if not Path(checkpoint).is_file():
        return []
    jobs = missing_exports(checkpoint, size, windows, close_ups)
    if not jobs:
        return []
    say(f"first start with this model and size: exporting the networks to ONNX (about 15 s "
        f"on 2 cores; cached for later starts): {', '.join(jobs)}")
    started = time.perf_counter()
    done = SPAWN.Queue()
    running = [(group, *start_export(group, checkpoint, size, done))
               for group in ([job for job in order if job in jobs] for order in PROCESSES)
               if group]
    failed = None
    while running:
        time.sleep(0.2)
        while not done.empty():
            say(f"  {done.get()}: done after {time.perf_counter() - started:.0f} s")
        for group, process, log in list(running):
            outcome = finished(process, log)
            if outcome is None:
                continue
            running.remove((group, process, log))
            if outcome and failed is None:
                failed = f"exporting the {' and '.join(group)} to ONNX failed:\n{outcome}"
    while not done.empty():
        say(f"  {done.get()}: done after {time.perf_counter() - started:.0f} s")
    if failed:
        raise ExportError(failed)
    return jobs


def main(argv: list[str] | None = None) -> int:
    from stream.engine import DEFAULT_CHECKPOINT

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--windows", action="store_true",
                        help="also the renderer of video avatars' mouth windows")
    parser.add_argument("--close-ups", action="store_true",
                        help="also the renderer of close-ups (photos with little room around "
                             "the face)")
    args = parser.parse_args(argv)
    try:
        if not warm_onnx(args.checkpoint, args.size, windows=args.windows,
                         close_ups=args.close_ups):
            print("the onnx graphs for this model and size are cached already")
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
