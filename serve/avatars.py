"""The avatars a server knows: the bundled ones, uploads, and video uploads being prepared.

An uploaded avatar gets a random, unguessable id known only to its uploader (never listed);
the same bytes uploaded again are prepared once (remembered by their hash) but still get an id
of their own. A photo is prepared while the upload waits; a video becomes a VideoJob that the
uploader follows (GET /avatars/jobs/{id}) while serve.preparation works on it. On Ray every
upload is also shared with the other replicas (serve/ray_avatars.py): `find` fetches one made
through another replica, and an upload's id is answered only once it has been shared.
"""

import asyncio
import hashlib
import io
import logging
import secrets
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models import video_cache
from models.avatar import DEFAULT_AVATAR, Avatar
from models.face import PortraitError
from models.video_avatar import VideoAvatar, cached_video_avatar, video_cache_dir
from serve.http import ClientError, quote
from serve.limits import Limits
from serve.preparation import Preparation, Preparer
from serve.uploads import Upload

log = logging.getLogger("server")

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_AVATARS = {"astronaut": DEFAULT_AVATAR,
                   "grace_hopper": ROOT / "assets" / "grace_hopper.jpg"}
MAX_UPLOADED_AVATARS = 64
MAX_VIDEO_JOBS = 256           # video uploads followed at once (GET /avatars/jobs/{id})
JOB_KEPT_SECONDS = 600.0       # a finished job is reported on this long


@dataclass
class AvatarEntry:
    id: str
    name: str
    avatar: Avatar | VideoAvatar
    preview: bytes             # JPEG of the aligned crop (a video: its reference frame)

    @property
    def kind(self) -> str:
        return "video" if isinstance(self.avatar, VideoAvatar) else "photo"

    def reply(self) -> dict:
        return {"avatar": self.id, "name": self.name, "kind": self.kind,
                "preview": f"/avatars/{self.id}.jpg"}


@dataclass
class VideoJob:
    """What GET /avatars/jobs/{id} reports on one video upload."""
    id: str                    # secret, like an avatar id: it leads to the avatar
    name: str
    preparation: Preparation
    entry: AvatarEntry | None = None
    error: ClientError | None = None
    finished: float | None = None

    def reply(self) -> dict:
        reply = {"job": self.id, "name": self.name, "kind": "video"}
        if self.entry is not None:
            return {**reply, **self.entry.reply(), "state": "done", "progress": 1.0}
        if self.error is not None:
            return {**reply, "state": "failed", "error": str(self.error)}
        p = self.preparation
        return {**reply, "state": "preparing" if p.started else "queued", "stage": p.stage,
                "progress": round(p.progress, 3)}


class Avatars:
    """Avatar ids -> AvatarEntry (the bundled ones, then up to MAX_UPLOADED_AVATARS uploads,
    the oldest forgotten first), prepared avatars by their bytes' hash, and video jobs."""

    def __init__(self, size: int, limits: Limits, metrics, work, ids):
        # ids (serve.sessions.SessionIds) names the video jobs too: on Ray a job's id then
        # says which replica follows it, and the proxies route its polls there
        self.limits, self.metrics, self.ids = limits, metrics, ids
        self.entries: OrderedDict[str, AvatarEntry] = OrderedDict()
        self.bundled: set[str] = set()
        self.prepared: OrderedDict[str, Avatar | VideoAvatar] = OrderedDict()   # Upload.key ->
        self.preparing: dict[str, Preparation] = {}       # videos being prepared, by Upload.key
        self.jobs: OrderedDict[str, VideoJob] = OrderedDict()
        self.default = "astronaut"
        self.preparer = Preparer(size, limits, work)
        self.stopping = False
        self.shared = None        # on Ray: serve.ray_avatars.SharedAvatars (see share, find)

    def add(self, avatar_id: str, name: str, avatar: Avatar | VideoAvatar,
            bundled: bool = False) -> AvatarEntry:
        preview = io.BytesIO()
        Image.fromarray(avatar.crop()).save(preview, "JPEG", quality=88)
        entry = AvatarEntry(avatar_id, name, avatar, preview.getvalue())
        self.entries[avatar_id] = entry
        self.entries.move_to_end(avatar_id)
        if bundled:
            self.bundled.add(avatar_id)
        uploads = [k for k in self.entries if k not in self.bundled]
        for old in uploads[:-MAX_UPLOADED_AVATARS]:
            del self.entries[old]                          # sessions keep their own reference
        return entry

    def add_upload(self, name: str, avatar: Avatar | VideoAvatar) -> AvatarEntry:
        """An uploaded avatar under a new random id: an id says nothing about the upload,
        and one uploader cannot find another's."""
        return self.add("u" + secrets.token_urlsafe(16), name, avatar)

    def remember(self, key: str, avatar: Avatar | VideoAvatar) -> None:
        self.prepared[key] = avatar
        self.prepared.move_to_end(key)
        while len(self.prepared) > MAX_UPLOADED_AVATARS:
            self.prepared.popitem(last=False)

    async def share(self, entry: AvatarEntry, key: str) -> None:
        """On Ray: the upload `entry` made available to every replica (see the module doc);
        a failure leaves it this replica's own (said in the log)."""
        if self.shared is None:
            return
        loop = asyncio.get_running_loop()
        try:
            if isinstance(entry.avatar, VideoAvatar):
                folder = entry.avatar.folder
                files = await loop.run_in_executor(None, read_folder, folder)
                record = {"kind": "video", "folder": folder.name, "files": files}
            else:
                arrays = await loop.run_in_executor(None, avatar_npz, entry.avatar)
                record = {"kind": "photo", "files": {"avatar.npz": arrays}}
            await self.shared.publish(entry.id, {"name": entry.name, "key": key, **record})
        except Exception as e:
            log.warning("avatar %s is not shared with the other replicas: %s", entry.id, e)

    async def find(self, avatar_id) -> AvatarEntry:
        """The avatar `avatar_id` names (None: the default), as `entry`; on Ray also an upload
        made through another replica, fetched from the shared store and prepared here."""
        if self.shared is None or not isinstance(avatar_id, str) or avatar_id in self.entries:
            return self.entry(avatar_id)
        try:
            record = await self.shared.fetch(avatar_id)
        except Exception as e:
            log.warning("the shared avatars cannot be read: %s", e)
            record = None
        if record is None:
            return self.entry(avatar_id)          # unknown here and there: entry's error
        unpack = unpack_video if record["kind"] == "video" else unpack_photo
        try:
            avatar = await asyncio.get_running_loop().run_in_executor(None, unpack, record)
        except (OSError, ValueError, KeyError, PortraitError) as e:
            log.warning("avatar %s from the shared store: %s", avatar_id, e)
            raise ClientError(500, "an avatar shared by another replica could not be "
                                   "loaded here") from None
        self.remember(record["key"], avatar)
        return self.add(avatar_id, record["name"], avatar)

    def entry(self, avatar_id) -> AvatarEntry:
        if avatar_id is None:
            avatar_id = self.default
        if not isinstance(avatar_id, str) or avatar_id not in self.entries:
            raise ClientError(400, f"unknown avatar {quote(avatar_id)}: GET /avatars lists "
                                   "the bundled ones, POST /avatars adds one")
        return self.entries[avatar_id]

    async def upload(self, data: bytes, name: str) -> AvatarEntry:
        """A new portrait under a new random id. The same picture uploaded twice is
        prepared once, but each upload gets an id of its own."""
        key = f"photo:{hashlib.sha256(data).hexdigest()}"
        avatar = self.prepared.get(key)
        if avatar is None:
            avatar = await self.preparer.photo(data)
        self.remember(key, avatar)
        entry = self.add_upload(name, avatar)
        await self.share(entry, key)
        return entry

    async def upload_video(self, upload: Upload) -> AvatarEntry | VideoJob:
        """A received video: its avatar at once when the same bytes were prepared before;
        else a job (GET /avatars/jobs/{id}) that follows its preparation, which takes over
        the upload's temporary folder. Uploads of the same bytes share one preparation."""
        key = upload.key
        avatar = self.prepared.get(key)
        if avatar is not None:
            self.remember(key, avatar)
            entry = self.add_upload(upload.name, avatar)
            await self.share(entry, key)
            return entry
        self._forget_old_jobs()
        if len(self.jobs) >= MAX_VIDEO_JOBS:
            raise ClientError(503, "too many video uploads are being followed; try again in a "
                                   "few minutes")
        preparation = self.preparing.get(key)
        if preparation is None:
            if self.stopping:
                raise ClientError(503, "the server is stopping")
            if len(self.preparing) >= self.limits.max_pending_uploads:
                raise ClientError(503, f"{self.limits.max_pending_uploads} videos are being "
                                       "prepared already; try again in a few minutes")
            preparation = Preparation(key, upload.folder, upload.clip)
            upload.folder = None                           # the preparation removes it
            self.preparing[key] = preparation
            preparation.task = asyncio.ensure_future(self._prepare_video(preparation))
        job = VideoJob(self.ids.new(), upload.name, preparation)   # (on Ray: names this
                                                                   # replica, like a session)
        preparation.jobs.append(job)
        self.jobs[job.id] = job
        return job

    def job(self, job_id: str) -> VideoJob:
        self._forget_old_jobs()
        job = self.jobs.get(job_id)
        if job is None:
            raise ClientError(404, "no video upload with this id (it finished more than "
                                   f"{JOB_KEPT_SECONDS / 60:.0f} minutes ago, or never existed)")
        return job

    def _forget_old_jobs(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.finished is not None and now - job.finished > JOB_KEPT_SECONDS:
                del self.jobs[job.id]

    async def _prepare_video(self, p: Preparation) -> None:
        """The task behind a Preparation: the clip prepared in the video process, then each
        job waiting for it given its avatar (an id of its own) or the error."""
        try:
            try:
                avatar = await self.preparer.video(p)
            finally:
                shutil.rmtree(p.folder, ignore_errors=True)
                self.preparing.pop(p.key, None)
        except ClientError as e:
            error = e
        except Exception:                   # a fault here must not leave its jobs waiting
            log.exception("preparing a video avatar")
            error = ClientError(500, "internal server error")
        else:
            error = None
            self.remember(p.key, avatar)
            self.metrics.count("video_avatars_prepared_total")
            await asyncio.get_running_loop().run_in_executor(None, self.trim_cache)
        if error is not None:
            self.metrics.count("video_avatars_refused_total")
            log.info("video avatar refused (%d): %s", error.status, error)
        for job in p.jobs:
            if error is None:
                entry = self.add_upload(job.name, avatar)
                await self.share(entry, p.key)                 # before the job says "done"
                job.entry = entry
            job.error, job.finished = error, time.monotonic()

    def trim_cache(self) -> None:
        """Keep the prepared videos on disk under --max-video-cache-bytes, the least recently
        used removed first (models/video_cache.py: what this process still plays is kept)."""
        try:
            removed = video_cache.evict(video_cache_dir(), self.limits.max_video_cache_bytes)
        except Exception as e:              # (the avatar just prepared is served all the same)
            log.warning("the video cache could not be trimmed: %s", e)
            return
        self.metrics.count("video_cache_entries_removed_total", len(removed))

    async def stop(self) -> None:
        """The server is stopping: the child processes are killed, every preparation ends
        (each removes its upload's temporary folder)."""
        self.preparer.stop()
        preparations = [p.task for p in self.preparing.values() if p.task is not None]
        for task in preparations:
            task.cancel()                      # each removes its upload's temporary folder
        await asyncio.gather(*preparations, return_exceptions=True)


def avatar_npz(avatar: Avatar) -> bytes:
    """A prepared photo avatar's tensors as one .npz (another replica loads it as it is)."""
    out = io.BytesIO()
    np.savez(out, **avatar.arrays())
    return out.getvalue()


def unpack_photo(record: dict) -> Avatar:
    """A photo avatar shared by another replica."""
    with np.load(io.BytesIO(record["files"]["avatar.npz"])) as arrays:
        return Avatar.from_arrays(arrays)


def read_folder(folder: Path) -> dict[str, bytes]:
    """A prepared video's files (its folder in the video cache), by name."""
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}


def unpack_video(record: dict) -> VideoAvatar:
    """A video avatar shared by another replica: its folder in this machine's video cache
    (written unless it is there already: one machine's replicas share the cache), loaded."""
    def write(work: Path) -> None:
        for name, data in record["files"].items():
            (work / name).write_bytes(data)

    return cached_video_avatar(record["folder"], write)
