"""Preparing avatars: uploads in child processes (one for photos, one for videos), and --avatar.

Face detection holds the GIL for up to seconds, which would stall every session's media clock,
and a file that crashes or hangs a decoder must take only its own process with it: so uploads
are prepared in child processes, apart from each other (a long video must not hold up a photo).
A child that dies or runs out of time is killed and replaced; its upload gets a 4xx. A video's
progress comes back through a file beside the clip (progress.json), read twice a second.
"""

import asyncio
import errno
import io
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.avatar import Avatar, prepare_avatar
from models.face import PortraitError
from models.video_avatar import (
    VideoAvatar,
    VideoAvatarError,
    VideoLimits,
    VideoTooLargeError,
    is_video,
    load_video_avatar,
    prepare_video_avatar,
    print_progress,
)
from serve.http import ClientError, short
from serve.limits import Limits, video_limits

log = logging.getLogger("server")

COMPUTE_NICE = 10             # sessions' compute threads run this much below the media path


@dataclass
class Preparation:
    """One uploaded video being prepared in the video process; uploads of the same bytes
    meanwhile wait for it too (each with a job of its own)."""
    key: str
    folder: Path               # the upload's temporary folder: the clip, progress.json
    clip: Path
    jobs: list = field(default_factory=list)
    stage: str = "waiting for the videos before it"
    progress: float = 0.0
    seconds: float | None = None       # the clip's length, once the video process has read it
    started: float | None = None       # when the video process took it up (monotonic)
    task: asyncio.Task | None = None


class Preparer:
    """The two child processes (each started by the first upload of its kind) and what they
    may take: --max-pending-uploads, --portrait-timeout, --video-timeout-per-second."""

    def __init__(self, size: int, limits: Limits, work):
        self.size, self.limits = size, limits
        self.work = work                                   # threads: reading a video back
        self.portraits: ProcessPoolExecutor | None = None     # started by the first upload
        self.videos: ProcessPoolExecutor | None = None        # by the first video upload
        self.uploads = 0                                   # portraits being prepared now

    async def photo(self, data: bytes) -> Avatar:
        """Uploaded portraits are prepared in a child process: face detection holds the GIL
        for up to seconds, which would stall every session's media clock; and a picture that
        crashes or hangs the decoder takes only that process with it."""
        limits = self.limits
        if self.uploads >= limits.max_pending_uploads:
            raise ClientError(503, f"{limits.max_pending_uploads} portraits are being prepared "
                                   "already; try again in a few seconds")
        if self.portraits is None:
            self.portraits = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(
                "spawn"), initializer=_portrait_process_start)
        loop = asyncio.get_running_loop()
        pool = self.portraits
        self.uploads += 1
        try:
            arrays = await asyncio.wait_for(loop.run_in_executor(
                pool, prepare_arrays, data, self.size, limits.max_pixels),
                limits.portrait_timeout * max(self.uploads, 1))
        except PortraitError as e:
            raise ClientError(413 if "megapixels" in str(e) or "too large" in str(e) else 422,
                              str(e)) from None
        except BrokenProcessPool:                      # the child died on this image
            self._drop_pool(pool)
            raise ClientError(422, "this image could not be processed") from None
        except TimeoutError:                   # a picture that never finishes
            self._drop_pool(pool)
            raise ClientError(422, "this image took too long to process") from None
        except ClientError:
            raise
        except Exception as e:                         # the decoder broke on this picture
            log.warning("portrait refused: %s: %s", e.__class__.__name__, short(e))
            raise ClientError(422, "this image could not be processed") from None
        finally:
            self.uploads -= 1
        return Avatar.from_arrays(arrays)

    async def video(self, p: Preparation) -> VideoAvatar:
        """Videos are prepared in a child process of their own, for the reasons photos are
        (photo), and apart from photos: a long video must not hold up a portrait."""
        loop = asyncio.get_running_loop()
        try:
            for attempt in range(2):
                if self.videos is None:
                    self.videos = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(
                        "spawn"), initializer=_portrait_process_start)
                pool = self.videos
                work = loop.run_in_executor(pool, _prepare_video_file, str(p.clip), self.size,
                                            video_limits(self.limits))
                try:
                    folder = await self._follow(p, pool, work)
                    break
                except BrokenProcessPool:       # the process died: on this clip, or on
                    self._drop_pool(pool)       # another one before this one's turn
                    if p.started is not None or attempt:
                        raise ClientError(422, "this video could not be processed") from None
        except VideoAvatarError as e:
            raise ClientError(413 if isinstance(e, VideoTooLargeError) else 422, str(e)) from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ClientError(507, "the server's disk is full: the video cannot be "
                                       "prepared now") from None
            log.warning("video refused: %s: %s", e.__class__.__name__, short(e))
            raise ClientError(422, "this video could not be processed") from None
        except (ClientError, asyncio.CancelledError):
            raise
        except Exception as e:                 # the decoder broke on this clip
            log.warning("video refused: %s: %s", e.__class__.__name__, short(e))
            raise ClientError(422, "this video could not be processed") from None
        avatar = await loop.run_in_executor(self.work, load_video_avatar, Path(folder))
        if avatar is None:
            raise ClientError(500, "the prepared video avatar could not be read back")
        return avatar

    async def _follow(self, p: Preparation, pool: ProcessPoolExecutor,
                      work: asyncio.Future) -> str:
        """The video process's answer, with its progress read meanwhile. From when it takes
        the clip up, it has --portrait-timeout to read it, and then that plus
        --video-timeout-per-second for every second of the clip; past that it is stopped."""
        work.add_done_callback(_retrieved)
        limits = self.limits
        while True:
            await asyncio.wait([work], timeout=0.5)
            _read_progress(p)
            if work.done():
                if work.cancelled():            # its pool was shut down before it began
                    raise BrokenProcessPool("cancelled")
                return work.result()
            if p.started is None:
                continue
            allowed = limits.portrait_timeout
            if p.seconds is not None:
                allowed += limits.video_timeout_per_second * p.seconds
            if time.monotonic() - p.started > allowed:
                self._drop_pool(pool)
                raise ClientError(422, f"this video took too long to prepare (over "
                                       f"{allowed:.0f} s)")

    def _drop_pool(self, pool: ProcessPoolExecutor, wait: bool = False) -> None:
        if self.portraits is pool:
            self.portraits = None
        if self.videos is pool:
            self.videos = None
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()                             # a hung child: nothing else stops it
        pool.shutdown(wait=wait, cancel_futures=True)

    def stop(self) -> None:
        """Kill both child processes (the server is stopping), and wait for each pool's
        manager thread to see them gone: one still closing its wake-up pipe while the
        interpreter exits made Python 3.11's exit hook write to the closed pipe (a traceback
        in the log, EBADF, once in a CI run)."""
        for pool in (self.portraits, self.videos):
            if pool is not None:
                self._drop_pool(pool, wait=True)


def prepare_photo(source, size: int) -> Avatar:
    """prepare_avatar, quietly (several faces: the largest is used), except that a cache it
    cannot write (a full disk) is said in the log: it only costs time, but should be fixed."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        avatar = prepare_avatar(source, size=size)
    for w in caught:
        if issubclass(w.category, RuntimeWarning) and "cache" in str(w.message):
            log.warning("avatar cache: %s", w.message)
    return avatar


def prepare_default(source: str, size: int, limits: Limits) -> Avatar | VideoAvatar:
    """--avatar: a photo, or a recording prepared here with a progress bar on the terminal
    (a bad one: the bar ends, and main says why in one line)."""
    if not is_video(source):
        return prepare_photo(source, size)
    bar = {"done": None}

    def progress(stage: str, done: float) -> None:
        bar["done"] = done
        print_progress(stage, done)

    try:
        return prepare_video_avatar(source, size, limits=video_limits(limits),
                                    progress=progress)
    finally:
        if bar["done"] is not None and bar["done"] < 1.0:
            sys.stderr.write("\n")                       # the bar stopped part-way


def prepare_arrays(source: bytes, size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """In the portrait process: an avatar as plain arrays (cheap to send back). The pixel
    count is checked from the header before anything is decoded."""
    from models.avatar import ImageTooLargeError

    try:
        with Image.open(io.BytesIO(source)) as picture:
            width, height = picture.size
    except Image.DecompressionBombError:          # Pillow's own guard, far above ours
        raise ImageTooLargeError(f"the image has over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                                 f"megapixels; the limit is {max_pixels / 1e6:g} megapixels: "
                                 "scale it down first") from None
    except Exception:          # not an image: prepare_avatar says so in its own words
        width = height = 0
    if width * height > max_pixels:
        raise ImageTooLargeError(f"the image is {width}x{height} ({width * height / 1e6:.0f} "
                                 f"megapixels); the limit is {max_pixels / 1e6:g} megapixels: "
                                 "scale it down first")
    avatar = prepare_photo(source, size)
    return avatar.arrays()


def _portrait_process_start() -> None:
    os.nice(COMPUTE_NICE)


def _prepare_video_file(clip: str, size: int, limits: VideoLimits) -> str:
    """In the video process: a clip (in its upload folder) -> the prepared avatar's folder in
    the video cache. What it is doing goes to progress.json beside the clip, a file the
    server reads (not a queue: a process killed mid-write leaves no lock behind)."""
    from models.face_track import VideoInputError, probe

    clip = Path(clip)
    state = {"stage": "reading the video", "progress": 0.0, "seconds": None}
    written = [0.0]

    def report(stage: str, done: float) -> None:
        if stage == state["stage"] and time.monotonic() - written[0] < 0.25 and done < 1.0:
            return
        state.update(stage=stage, progress=float(done))
        (clip.parent / "progress.tmp").write_text(json.dumps(state))
        os.replace(clip.parent / "progress.tmp", clip.parent / "progress.json")
        written[0] = time.monotonic()

    report("reading the video", 0.0)            # the server's clock for this clip starts
    try:
        seconds = probe(clip).duration or limits.max_seconds
    except VideoInputError:
        seconds = 0.0                            # prepare_video_avatar says what is wrong
    state["seconds"] = min(seconds, limits.max_seconds)
    report("tracking the face", 0.0)
    return str(prepare_video_avatar(clip, size, limits=limits, progress=report).folder)


def _read_progress(p: Preparation) -> None:
    """What the video process last wrote about a preparation (see _prepare_video_file)."""
    try:
        state = json.loads((p.folder / "progress.json").read_text())
        stage, progress, seconds = str(state["stage"]), float(state["progress"]), state["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        return                                 # not begun yet
    if p.started is None:
        p.started = time.monotonic()
    p.stage, p.progress = stage[:60], min(max(progress, 0.0), 1.0)
    p.seconds = float(seconds) if isinstance(seconds, (int, float)) else None


def _retrieved(future: asyncio.Future) -> None:
    """(A future nobody may wait for any more: its error is not logged as never retrieved.)"""
    if not future.cancelled():
        future.exception()
