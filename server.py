"""The talking-head server: a web page, WebRTC sessions, and a websocket per session.

    python server.py [--engine torch|onnx|trt] [--device cpu|cuda] [--avatar IMG|VIDEO]
                     [--host 127.0.0.1] [--port 8080] [--token TOKEN] [--size 512|256]
                     [--checkpoint CKPT] [--threads N] [limits: see --help]

Access: the server listens on 127.0.0.1 unless told otherwise. On any other address it
requires an access token (--token or $TALKING_HEAD_TOKEN; without one it makes one and
prints it), sent as "Authorization: Bearer TOKEN" or "?token=TOKEN" on every route except
the page itself (GET / and /static/: the same files for everyone, no data; the page passes
the token from its own URL on to every request it makes).

HTTP
    GET    /                    the browser client (web/)
    GET    /avatars             the bundled avatars: [{"id", "name", "kind", "preview"}]
    POST   /avatars             upload a photo or a recording of the person (raw bytes, or
                                multipart field "image" or "video"; a video is one by its
                                field, content type or file suffix, else by its first bytes)
                                -> 200 {"avatar", "name", "kind", "preview"}: a photo, or a
                                video whose bytes were prepared before; the id is random and
                                unguessable, known only to the uploader, never listed
                                -> 202 {"job", "state", "stage", "progress"}: a video being
                                prepared (seconds to minutes) in a child process
    GET    /avatars/jobs/{id}   that job: {"state": "queued" | "preparing", "stage",
                                "progress": 0..1}, then {"state": "done", "avatar", ...}, or
                                {"state": "failed", "error"} with the upload's 4xx/5xx status
    GET    /avatars/{id}.jpg    a prepared (aligned) portrait; a video's reference frame
    POST   /offer               {"sdp", "type": "offer"[, "avatar"]}
                                -> {"sdp", "type": "answer", "session"}
    POST   /sessions/{id}/audio an audio file to speak (any format FFmpeg reads)
    DELETE /sessions/{id}       end a session (also POST /sessions/{id}/close)
    GET    /health              {"status": "ok", "sessions", "max_sessions", ...}
    GET    /metrics             Prometheus text: sessions, fps, latency histograms, frames
Errors are JSON {"error": "..."} with a 4xx/5xx status; no traceback ever reaches a client.

Websocket  GET /ws/{session}
    client -> server
      {"type": "format", "rate": 16000, "channels": 1, "sample": "s16" | "f32"}
                    declares the PCM of the binary messages that follow
      binary        PCM, little-endian, interleaved, in the declared format; queued and spoken
                    at real-time pace (push as fast as you like, up to 120 s ahead)
      {"type": "speak", "text": "...", "voice": "espeak/en-us"}    local TTS
      {"type": "interrupt"}                                         barge-in
      {"type": "style", "values": {"head_amplitude": 1.2, "mouth_amplitude": 0.8}}
                                          (a video avatar also "video_head_motion": 0..1)
      {"type": "avatar", "id": "grace_hopper"}                     photo or video avatar
    server -> client
      {"type": "ready", "session", "styles", "voices", "avatar"}      once, on connect
      {"type": "ok", "for": TYPE, ...}          a control message was carried out
      {"type": "error", "message": "..."}       a refused message; the socket stays open
      {"type": "stats", "fps", "slots_per_second", "latency_ms", "queued_seconds",
       "hearing_speech", ...}                    once a second
      {"type": "error", "fatal": true, "message": "..."}   the session failed; it ends
    The server closes with 4404 (no such session), 1001 (session ended), 1008 (20 refused
    messages in a row), 1009 (a message over --max-ws-message), 1011 (the session failed),
    1013 (too many websockets on the session). A client that stops reading is dropped.

Avatars are photos or recordings of the person (models.video_avatar: the recording plays
back and forth, only the mouth is generated; its own sound is never played). Uploads are
prepared in child processes, one for photos and one for videos, so a long or hostile file
holds up no session and no photo.

Limits (each a flag, see --help): upload bytes and pixels; video bytes, seconds and pixels,
and the time to prepare one (per second of it); audio file bytes and seconds, queued audio,
websocket message bytes, SDP bytes, TTS text length, sessions, websockets per session, idle
time, connect and peer timeouts. Errors inside one session end that session (with a message
to its client); the others go on. SIGTERM/SIGINT: stop listening, end every session (its
client is told), exit.

Each session: a Session (shared engine, its own avatar and state) + an AudioFeed (microphone,
websocket PCM, TTS, files) + a MediaClock (one clock paces its video and audio tracks).
"""

import argparse
import asyncio
import dataclasses
import errno
import functools
import hashlib
import hmac
import io
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from aiohttp import WSCloseCode, WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamError
from PIL import Image

from models.audio_io import MAX_RATE, MIN_RATE, AudioInputError, check_rate
from models.avatar import DEFAULT_AVATAR, Avatar, prepare_avatar
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
from stream.engine import (
    DEFAULT_CHECKPOINT,
    ENGINES,
    Engine,
    EngineError,
    default_engine,
    make_engine,
)
from stream.metrics import Metrics, process_stats
from stream.session import Session
from stream.sources import AudioFeed, decode_audio_bytes
from stream.tts import DEFAULT_VOICE, FESTIVAL_VOICES, SpeechError, speak
from stream.webrtc import MediaClock, is_loopback, use_loopback_for_media

log = logging.getLogger("server")

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
BUNDLED_AVATARS = {"astronaut": DEFAULT_AVATAR,
                   "grace_hopper": ROOT / "assets" / "grace_hopper.jpg"}
MAX_UPLOADED_AVATARS = 64
MAX_VIDEO_JOBS = 256           # video uploads followed at once (GET /avatars/jobs/{id})
JOB_KEPT_SECONDS = 600.0       # a finished job is reported on this long
SNIFF_BYTES = 16               # an upload's first bytes, which tell a video from a photo
MAX_BAD_MESSAGES = 20
WS_SEND_BUFFER = 64 * 1024     # kernel send buffer of a websocket
MAX_SDP_SECTIONS = 16          # m= sections in an offer (a browser sends 2 or 3)
TRIM_SECONDS = 30.0            # freed memory is given back to the system this often
COMPUTE_NICE = 10             # sessions' compute threads run this much below the media path
SAMPLE_TYPES = {"s16": np.dtype("<i2"), "f32": np.dtype("<f4")}
AUDIBLE = 32                   # microphone peak (int16) that counts as a client being there
PUBLIC_PATHS = ("/", "/static/")   # served without the token: the page, same for everyone


@dataclass
class Limits:
    """What one client may ask of the server. Every value is a command-line flag."""
    max_sessions: int = 4
    max_upload_bytes: int = 10 * 2**20       # a portrait upload
    max_pixels: int = 25_000_000             # a portrait's width x height (decompression bombs)
    max_video_bytes: int = 200 * 2**20       # a video avatar upload (kept on disk, not in memory)
    max_video_seconds: float = 300.0         # a video avatar's length
    max_video_pixels: int = 3840 * 2160      # a video avatar's frame size
    max_audio_file_bytes: int = 20 * 2**20   # POST /sessions/{id}/audio
    max_queued_seconds: float = 120.0        # audio waiting to be spoken, per session
    min_rate: int = MIN_RATE                 # PCM sample rates accepted, Hz
    max_rate: int = MAX_RATE
    max_ws_message: int = 2**20              # one websocket message (a PCM chunk), bytes
    max_control_bytes: int = 64 * 2**10      # one JSON control message, bytes
    max_sdp_bytes: int = 64 * 2**10          # the body of POST /offer
    max_text_chars: int = 2000               # text for the local TTS
    idle_timeout: float = 600.0              # nothing from the client for this long: end
    connect_timeout: float = 15.0            # an answered offer must connect within this
    peer_timeout: float = 10.0               # the peer's RTCP silent this long: end
    max_sockets_per_session: int = 4
    max_pending_uploads: int = 4             # portraits waiting to be prepared (and videos)
    portrait_timeout: float = 60.0           # preparing one portrait
    video_timeout_per_second: float = 5.0    # preparing a video: this per second of it, plus
                                             #   portrait_timeout
    send_timeout: float = 5.0                # a websocket send stalled this long: drop it


def video_limits(limits: Limits) -> VideoLimits:
    return VideoLimits(max_seconds=limits.max_video_seconds, max_pixels=limits.max_video_pixels,
                       max_bytes=limits.max_video_bytes)


class ClientError(Exception):
    """A request refused with a message for the client (status, message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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
class Upload:
    """The body of one POST /avatars, hashed as it arrives: a photo in memory, a video in a
    temporary folder of its own (the video process reads it from there; the server's memory
    stays small whatever the video's size)."""
    kind: str                  # "photo" | "video"
    name: str
    data: bytearray = field(default_factory=bytearray)    # a photo
    folder: Path | None = None                            # a video: holds `clip`
    clip: Path | None = None
    file: io.BufferedWriter | None = None
    size: int = 0
    digest: object = field(default_factory=hashlib.sha256)

    @property
    def key(self) -> str:
        """What the server remembers prepared avatars by (the same bytes: the same avatar)."""
        return f"{self.kind}:{self.digest.hexdigest()}"

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


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


@dataclass
class LiveSession:
    id: str                    # secret: whoever knows it controls the session
    label: str                 # public: names the session in metrics and logs
    pc: RTCPeerConnection
    session: Session
    feed: AudioFeed
    clock: MediaClock
    avatar_id: str
    created: float = field(default_factory=time.monotonic)
    active: float = field(default_factory=time.monotonic)   # last thing from the client
    connected: float | None = None
    channels: set = field(default_factory=set)       # its ControlChannels (websockets)
    tasks: list = field(default_factory=list)
    counted: dict = field(default_factory=dict)      # player/session counters already reported
    recent_latency: list = field(default_factory=list)   # seconds, the last second's frames
    speaking: bool = False                           # a text is being synthesised
    closed: bool = False


class Server:
    def __init__(self, engine: Engine, size: int, limits: Limits | None = None,
                 token: str | None = None, fault_injection: bool = False):
        self.engine, self.size = engine, size
        self.limits = limits or Limits()
        self.token, self.fault_injection = token, fault_injection
        self.avatars: OrderedDict[str, AvatarEntry] = OrderedDict()
        self.bundled: set[str] = set()
        self.prepared: OrderedDict[str, Avatar | VideoAvatar] = OrderedDict()   # Upload.key ->
        self.preparing: dict[str, Preparation] = {}       # videos being prepared, by Upload.key
        self.jobs: OrderedDict[str, VideoJob] = OrderedDict()
        self.default_avatar = "astronaut"
        self.sessions: dict[str, LiveSession] = {}
        self.starting = 0                                  # offers being answered now
        self.uploads = 0                                   # portraits being prepared now
        self.serial = 0                                    # sessions started (labels)
        self.stopping = False
        self.ending: set[asyncio.Task] = set()            # sessions being ended by the watch
        self.metrics = Metrics()
        self.portraits: ProcessPoolExecutor | None = None     # started by the first upload
        self.videos: ProcessPoolExecutor | None = None        # by the first video upload
        # what clients ask for (speech synthesis, audio decoding) runs on threads of its
        # own: a flood of it queues there, never in front of sessions starting and ending
        self.work = ThreadPoolExecutor(2, thread_name_prefix="client-work")

    @property
    def max_sessions(self) -> int:
        return self.limits.max_sessions

    # ---------------------------------------------------------------- avatars

    def add_avatar(self, avatar_id: str, name: str, avatar: Avatar | VideoAvatar,
                   bundled: bool = False) -> AvatarEntry:
        preview = io.BytesIO()
        Image.fromarray(avatar.crop()).save(preview, "JPEG", quality=88)
        entry = AvatarEntry(avatar_id, name, avatar, preview.getvalue())
        self.avatars[avatar_id] = entry
        self.avatars.move_to_end(avatar_id)
        if bundled:
            self.bundled.add(avatar_id)
        uploads = [k for k in self.avatars if k not in self.bundled]
        for old in uploads[:-MAX_UPLOADED_AVATARS]:
            del self.avatars[old]                          # sessions keep their own reference
        return entry

    def add_upload(self, name: str, avatar: Avatar | VideoAvatar) -> AvatarEntry:
        """An uploaded avatar under a new random id: an id says nothing about the upload,
        and one uploader cannot find another's."""
        return self.add_avatar("u" + secrets.token_urlsafe(16), name, avatar)

    def remember(self, key: str, avatar: Avatar | VideoAvatar) -> None:
        self.prepared[key] = avatar
        self.prepared.move_to_end(key)
        while len(self.prepared) > MAX_UPLOADED_AVATARS:
            self.prepared.popitem(last=False)

    def avatar(self, avatar_id) -> AvatarEntry:
        if avatar_id is None:
            avatar_id = self.default_avatar
        if not isinstance(avatar_id, str) or avatar_id not in self.avatars:
            raise ClientError(400, f"unknown avatar {_quote(avatar_id)}: GET /avatars lists "
                                   "the bundled ones, POST /avatars adds one")
        return self.avatars[avatar_id]

    async def upload(self, data: bytes, name: str) -> AvatarEntry:
        """A new portrait under a new random id. The same picture uploaded twice is
        prepared once, but each upload gets an id of its own."""
        key = f"photo:{hashlib.sha256(data).hexdigest()}"
        avatar = self.prepared.get(key)
        if avatar is None:
            avatar = await self.prepare_upload(data)
        self.remember(key, avatar)
        return self.add_upload(name, avatar)

    async def prepare_upload(self, data: bytes) -> Avatar:
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
                pool, _prepare_arrays, data, self.size, limits.max_pixels),
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
            log.warning("portrait refused: %s: %s", e.__class__.__name__, _short(e))
            raise ClientError(422, "this image could not be processed") from None
        finally:
            self.uploads -= 1
        return Avatar(**{k: torch.from_numpy(v) for k, v in arrays.items()})

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        if self.portraits is pool:
            self.portraits = None
        if self.videos is pool:
            self.videos = None
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()                             # a hung child: nothing else stops it
        pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- video avatars

    def upload_video(self, upload: Upload) -> AvatarEntry | VideoJob:
        """A received video: its avatar at once when the same bytes were prepared before;
        else a job (GET /avatars/jobs/{id}) that follows its preparation, which takes over
        the upload's temporary folder. Uploads of the same bytes share one preparation."""
        key = upload.key
        avatar = self.prepared.get(key)
        if avatar is not None:
            self.remember(key, avatar)
            return self.add_upload(upload.name, avatar)
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
        job = VideoJob("j" + secrets.token_urlsafe(16), upload.name, preparation)
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
                avatar = await self._prepared_video(p)
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
        if error is not None:
            self.metrics.count("video_avatars_refused_total")
            log.info("video avatar refused (%d): %s", error.status, error)
        for job in p.jobs:
            if error is None:
                job.entry = self.add_upload(job.name, avatar)
            job.error, job.finished = error, time.monotonic()

    async def _prepared_video(self, p: Preparation) -> VideoAvatar:
        """Videos are prepared in a child process of their own, for the reasons photos are
        (prepare_upload), and apart from photos: a long video must not hold up a portrait."""
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
            log.warning("video refused: %s: %s", e.__class__.__name__, _short(e))
            raise ClientError(422, "this video could not be processed") from None
        except (ClientError, asyncio.CancelledError):
            raise
        except Exception as e:                 # the decoder broke on this clip
            log.warning("video refused: %s: %s", e.__class__.__name__, _short(e))
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

    def live(self, session_id: str) -> LiveSession:
        live = self.sessions.get(session_id)
        if live is None:
            raise ClientError(404, "no session with this id (it ended or never existed)")
        return live

    # ---------------------------------------------------------------- sessions

    async def start_session(self, sdp: str, avatar: AvatarEntry) -> tuple[LiveSession, str]:
        if self.stopping:
            raise ClientError(503, "the server is stopping")
        if len(self.sessions) + self.starting >= self.max_sessions:
            self.metrics.count("sessions_rejected_total")
            raise ClientError(503, f"the server is full: {self.max_sessions} sessions at once "
                                   "(--max-sessions); try again later")
        self.starting += 1
        loop = asyncio.get_running_loop()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        remote_tracks = []                          # announced while the offer is applied
        pc.on("track", remote_tracks.append)
        live = None
        try:
            try:
                check_sdp(sdp)
                await asyncio.wait_for(pc.setRemoteDescription(
                    RTCSessionDescription(sdp=sdp, type="offer")), 10.0)
            except Exception as e:
                raise ClientError(400, f"malformed SDP offer: {_short(e)}") from None
            kinds = [t.kind for t in pc.getTransceivers()]
            if not {"audio", "video"} <= set(kinds):
                raise ClientError(400, "the offer must have an audio and a video section "
                                       "(the avatar is sent as video + audio)")
            session = await loop.run_in_executor(None, at_lower_priority, lambda: Session(
                self.engine, avatar.avatar, realtime=True))
            feed = AudioFeed(session, max_queued_seconds=self.limits.max_queued_seconds)
            clock = MediaClock(session, feed, loop)
            self.serial += 1
            live = LiveSession(secrets.token_urlsafe(16), f"s{self.serial}", pc, session, feed,
                               clock, avatar.id)
            self._wire(live, remote_tracks)
            pc.addTrack(clock.video)
            pc.addTrack(clock.audio)
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as e:       # e.g. no codec in common: the offer's fault
                raise ClientError(400, f"cannot answer this offer: {_short(e)}") from None
        except BaseException:
            await close_peer(pc)
            if live is not None:
                await loop.run_in_executor(None, _stop_threads, live)
            raise
        finally:
            self.starting -= 1
        self.sessions[live.id] = live
        clock.start()
        self.metrics.count("sessions_started_total")
        log.info("session %s started (avatar %s); %d live", live.label, avatar.id[:8],
                 len(self.sessions))
        return live, pc.localDescription.sdp

    def _wire(self, live: LiveSession, remote_tracks: list) -> None:
        pc = live.pc
        for track in remote_tracks:
            if track.kind == "audio":
                live.tasks.append(asyncio.ensure_future(_microphone(track, live)))
            else:                                 # a camera is not used: drain it
                sink = MediaBlackhole()
                sink.addTrack(track)
                live.tasks.append(asyncio.ensure_future(sink.start()))

        @pc.on("connectionstatechange")
        async def on_state():
            try:
                if pc.connectionState == "connected" and live.connected is None:
                    live.connected = time.monotonic()
                elif pc.connectionState in ("failed", "closed"):
                    await self.end_session(live, f"connection {pc.connectionState}")
            except Exception:
                log.exception("session %s: connection state %s", live.label,
                              pc.connectionState)

    async def end_session(self, live: LiveSession, reason: str, *,
                          failed: bool = False) -> None:
        """End a session: its clients are told why (`failed`: the session broke, the
        message says so without internals), its threads stop, its connection closes."""
        if live.closed:
            return
        live.closed = True
        self.sessions.pop(live.id, None)
        self.metrics.count("sessions_ended_total")
        log.info("session %s ended: %s; %d live", live.label, reason, len(self.sessions))
        try:
            self._collect(live)
        except Exception:
            log.exception("final metrics of session %s", live.label)
        live.clock.end_tracks()
        for task in live.tasks:
            task.cancel()
        if failed:
            note = (f"this session failed inside the server and has ended (error {live.label}); "
                    "other sessions are not affected: start a new one")
            code, close_text = WSCloseCode.INTERNAL_ERROR, "session failed"
        else:
            note, code, close_text = None, WSCloseCode.GOING_AWAY, f"session ended: {reason}"
        await asyncio.gather(*(channel.close(code, close_text, note)
                               for channel in list(live.channels)), return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, _stop_threads, live)
        await close_peer(live.pc)

    async def watch(self) -> None:
        """Once a second: collect metrics and end sessions that failed, whose peer is gone,
        or whose client has been idle too long."""
        trimmed = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            if time.monotonic() - trimmed > TRIM_SECONDS:   # long sessions free memory too
                trimmed = time.monotonic()
                await asyncio.get_running_loop().run_in_executor(None, release_memory)
            for live in list(self.sessions.values()):
                if live.closed:                 # ending meanwhile (its threads stopping)
                    continue
                try:
                    self._collect(live)
                    failure = self._failure(live)
                    if failure:
                        self.metrics.count("session_errors_total")
                        log.error("session %s failed: %s", live.label, failure)
                        self._end_soon(live, "internal error", failed=True)
                        continue
                    reason = await self._gone(live)
                    if reason:
                        self.metrics.count("sessions_idle_total" if reason.startswith("idle")
                                           else "sessions_peer_gone_total")
                        self._end_soon(live, reason)
                except Exception:               # the watchdog itself must keep running
                    log.exception("watching session %s", live.label)

    def _end_soon(self, live: LiveSession, reason: str, failed: bool = False) -> None:
        """End a session in a task of its own: a slow teardown (threads finishing a chunk on
        a starved CPU) never holds up the watch over the others."""
        task = asyncio.ensure_future(self.end_session(live, reason, failed=failed))
        self.ending.add(task)
        task.add_done_callback(self.ending.discard)

    def _failure(self, live: LiveSession) -> str | None:
        """What broke inside a session (its engine, its media clock), or None."""
        if live.closed:
            return None
        errors = list(live.session.stats.errors)
        if errors:
            return "; ".join(errors)
        if live.clock.error:
            return live.clock.error
        if not live.clock.running:
            return "the media clock stopped"
        return None

    async def _gone(self, live: LiveSession) -> str | None:
        now, limits = time.monotonic(), self.limits
        if now - live.active > limits.idle_timeout:
            return f"idle for {now - live.active:.0f} s (--idle-timeout)"
        if live.connected is None:
            return "never connected" if now - live.created > limits.connect_timeout else None
        if live.clock.first_sent is None:
            return None                   # nothing sent yet: the peer has nothing to report on
        heard = max(live.connected, live.clock.first_sent)
        for stats in (await live.pc.getStats()).values():
            if stats.type == "remote-inbound-rtp":        # an RTCP receiver report from the peer
                heard = max(heard, now - (time.time() - stats.timestamp.timestamp()))
        if now - heard > limits.peer_timeout:
            return f"peer silent for {now - heard:.0f} s"
        return None

    def _collect(self, live: LiveSession) -> None:
        """Move a session's new counts into the server metrics."""
        p, c = live.clock.player.stats, live.counted
        now = {"frames_shown_total": p.shown, "frames_repeated_total": p.repeated,
               "frames_skipped_total": p.skipped,
               "frames_dropped_total": live.session.dropped_frames + live.clock.video.dropped,
               "audio_frames_dropped_total": live.clock.audio.dropped}
        for name, value in now.items():
            self.metrics.count(name, value - c.get(name, 0))
            c[name] = value
        latencies = _drain(live.clock.latency_s)
        self.metrics.observe_latency(latencies, _drain(live.clock.render_latency_s))
        if latencies:
            live.recent_latency = latencies

    def session_stats(self, live: LiveSession) -> dict:
        fps, slots = live.clock.rates()
        p = live.clock.player.stats
        recent = live.recent_latency
        return {"type": "stats", "fps": round(fps, 2), "slots_per_second": round(slots, 2),
                "latency_ms": round(1000 * float(np.median(recent)), 1) if recent else None,
                "queued_seconds": round(live.feed.queued_seconds, 2),
                "hearing_speech": live.session.audio.speaking(),
                "shown": p.shown, "repeated": p.repeated, "skipped": p.skipped,
                "dropped": live.session.dropped_frames + live.clock.video.dropped,
                "video_dropped": live.clock.video.dropped,
                "audio_dropped": live.clock.audio.dropped,
                "slots_sent": live.clock.slots_sent,
                "added_delay_ms": round(1000 * live.clock.added_delay),
                "stages_ms": {k: round(v, 1) for k, v in live.session.stats.stage_means().items()},
                "avatar": live.avatar_id}

    async def stop(self) -> None:
        """SIGTERM/SIGINT (after the listening socket has closed): end every session, at
        once, telling each client."""
        self.stopping = True
        await asyncio.gather(*(self.end_session(live, "server stopping")
                               for live in list(self.sessions.values())), *self.ending,
                             return_exceptions=True)
        for pool in (self.portraits, self.videos):
            if pool is not None:
                self._drop_pool(pool)
        preparations = [p.task for p in self.preparing.values() if p.task is not None]
        for task in preparations:
            task.cancel()                      # each removes its upload's temporary folder
        await asyncio.gather(*preparations, return_exceptions=True)
        self.work.shutdown(wait=False, cancel_futures=True)
        left = await asyncio.get_running_loop().run_in_executor(None, join_session_threads,
                                                                20.0)
        if left:
            log.warning("%d session threads still busy after 20 s: %s", len(left),
                        ", ".join(sorted(set(left))))


SESSION_THREADS = ("motion", "render", "media-clock")


def join_session_threads(timeout: float) -> list[str]:
    """Wait (up to `timeout` in all) for the threads of ended sessions to finish; returns
    the names of those still running. A thread still inside torch when the interpreter
    exits can abort the process, so the server waits for them before it exits."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name in SESSION_THREADS and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.0))
    return [t.name for t in threading.enumerate() if t.name in SESSION_THREADS and t.is_alive()]


def check_sdp(sdp: str) -> None:
    """What aiortc's lenient parser lets through but no WebRTC offer lacks."""
    lines = [line for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise ValueError("it does not start with v=0")
    bad = next((line for line in lines if len(line) < 2 or line[1] != "=" or
                not line[0].isalpha()), None)
    if bad is not None:
        raise ValueError(f"line {bad[:40]!r} is not SDP")
    for needed, what in (("m=", "media sections"), ("a=ice-ufrag:", "ICE credentials"),
                         ("a=fingerprint:", "DTLS fingerprint")):
        if not any(line.startswith(needed) for line in lines):
            raise ValueError(f"no {what}")
    if sum(line.startswith("m=") for line in lines) > MAX_SDP_SECTIONS:
        raise ValueError(f"more than {MAX_SDP_SECTIONS} media sections")
    mids, section = [], None                  # each media section names itself (a=mid:)
    for line in lines:
        if line.startswith("m="):
            if section is not None and section is False:
                raise ValueError("a media section without a=mid")
            section = False
        elif line.startswith("a=mid:") and section is False:
            section = True
            mids.append(line[6:].strip())
    if section is False:
        raise ValueError("a media section without a=mid")
    for line in lines:
        if line.startswith("a=group:BUNDLE"):
            missing = set(line.split()[1:]) - set(mids)
            if missing:
                raise ValueError(f"BUNDLE names media sections that do not exist: "
                                 f"{sorted(missing)[:4]}")


def at_lower_priority(make):
    """make() in a fresh thread that first lowers its own priority (nice + COMPUTE_NICE): the
    threads it starts, a session's motion and render workers, inherit that priority. When
    the CPU is short, the media clocks and the network (event loop, encoders) come first:
    pictures may repeat, but sound and pacing go on."""
    result = {}

    def run():
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid)
                           + COMPUTE_NICE)
        except (AttributeError, OSError):          # not Linux: same priority, still works
            pass
        try:
            result["value"] = make()
        except BaseException as e:
            result["error"] = e

    worker = threading.Thread(target=run, name="session-start")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


async def close_peer(pc: RTCPeerConnection) -> None:
    """pc.close(); for some malformed offers aiortc cannot finish it (a transceiver left
    without a transport), and then the transports that exist are stopped one by one, so
    that no socket outlives the request."""
    try:
        await asyncio.wait_for(pc.close(), 10.0)
        return
    except Exception as e:
        log.info("closing a peer connection: %s: %s", type(e).__name__, _short(e))
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        for part in (dtls, getattr(dtls, "transport", None)):
            if part is not None:
                try:
                    await asyncio.wait_for(part.stop(), 5.0)
                except Exception:
                    pass
    pc.remove_all_listeners()


def loop_exception(loop, context) -> None:
    """A background task failed (inside aiortc, say, on a malformed offer): one line in the
    log, with where it happened, instead of a traceback; the server goes on."""
    error = context.get("exception")
    detail = ""
    if error is not None:
        detail = f": {type(error).__name__}: {_short(error)}"
        frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
        if frames:
            detail += f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})"
    log.warning("background task failed: %s%s", context.get("message", "?"), detail)


def _stop_threads(live: LiveSession) -> None:
    live.clock.stop()
    live.session.close()
    release_memory()


def release_memory() -> None:
    """Give freed memory back to the system (glibc keeps what threads freed in its arenas:
    measured, a server's resident memory grew 2-4 MB with every session ended, and stayed
    flat with this). Elsewhere a no-op."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


async def _microphone(track, live: LiveSession) -> None:
    """The peer's microphone into the session's audio feed."""
    try:
        while True:
            frame = await track.recv()
            pcm = frame.to_ndarray()                       # packed [1, n*ch] / planar [ch, n]
            channels = len(frame.layout.channels)
            if frame.format.is_planar:
                pcm = pcm.T
            if pcm.dtype == np.int16 and pcm.size and int(np.abs(pcm).max()) > AUDIBLE:
                live.active = time.monotonic()             # someone is talking: not idle
            try:
                live.feed.live(pcm.reshape(-1), frame.sample_rate, min(channels, 2))
            except AudioInputError as e:
                log.warning("session %s: microphone audio refused: %s", live.label, e)
    except MediaStreamError:
        pass
    except Exception as e:                          # this session's microphone only
        log.warning("session %s: microphone stopped: %s", live.label, _short(e))


def _drain(values) -> list:
    out = []
    while values:
        out.append(values.popleft())
    return out


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return text[:200]


def _quote(value) -> str:
    """A client's value in a message: short, printable."""
    return repr(value)[:60]


def _mib(n: int) -> str:
    return f"{n / 2**20:.4g} MiB" if n >= 2**20 else f"{n / 2**10:.4g} KiB"


# ------------------------------------------------------------------------------ HTTP handlers

routes = web.RouteTableDef()


def server_of(request) -> Server:
    return request.app["server"]


async def read_body(request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it runs past `limit` bytes (whatever
    Content-Length claims, chunked or not)."""
    if request.content_length is not None and request.content_length > limit:
        raise ClientError(413, f"{what} is too large: at most {_mib(limit)}")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"{what} is too large: at most {_mib(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(data: bytes | str) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):     # JSONDecodeError, bad UTF-8, nesting bombs
        raise ClientError(400, "not valid JSON") from None


async def read_json(request, limit: int) -> dict:
    try:
        body = parse_json(await read_body(request, limit, "the request body"))
    except ClientError as e:
        if e.status == 400:
            raise ClientError(400, "the request body must be JSON") from None
        raise
    if not isinstance(body, dict):
        raise ClientError(400, "the request body must be a JSON object")
    return body


@routes.get("/")
async def index(request):
    return web.FileResponse(WEB / "index.html")


@routes.post("/offer")
async def offer(request):
    server = server_of(request)
    params = await read_json(request, server.limits.max_sdp_bytes)
    if params.get("type") != "offer" or not isinstance(params.get("sdp"), str):
        raise ClientError(400, 'expected {"sdp": "...", "type": "offer"[, "avatar": id]}')
    avatar = server.avatar(params.get("avatar"))
    live, sdp = await server.start_session(params["sdp"], avatar)
    return web.json_response({"sdp": sdp, "type": "answer", "session": live.id})


@routes.get("/avatars")
async def list_avatars(request):
    server = server_of(request)
    return web.json_response([{"id": a.id, "name": a.name, "preview": f"/avatars/{a.id}.jpg",
                               "kind": a.kind, "default": a.id == server.default_avatar}
                              for a in server.avatars.values() if a.id in server.bundled])


@routes.post("/avatars")
async def upload_avatar(request):
    """A photo or a video (see read_upload). A photo, or a video whose bytes were prepared
    before: 200 and the avatar. Else 202 and a job to follow (GET /avatars/jobs/{id})."""
    server = server_of(request)
    upload = await read_upload(request, server.limits)
    try:
        if upload.kind == "photo":
            result = await server.upload(bytes(upload.data), upload.name)
        else:
            result = server.upload_video(upload)
    finally:
        upload.discard()                       # (a video being prepared: no longer its own)
    if isinstance(result, VideoJob):
        return web.json_response(result.reply(), status=202,
                                 headers={"Location": f"/avatars/jobs/{result.id}"})
    return web.json_response(result.reply())


@routes.get("/avatars/jobs/{id}")
async def avatar_job(request):
    """A video upload's progress: {"state": "queued" | "preparing", "stage", "progress"},
    then {"state": "done", "avatar", "preview", ...}, or the upload's error (its 4xx/5xx
    status, {"state": "failed", "error"})."""
    job = server_of(request).job(request.match_info["id"])
    return web.json_response(job.reply(), status=job.error.status if job.error else 200)


async def read_upload(request, limits: Limits) -> Upload:
    """The body of POST /avatars: raw bytes, or a multipart field "image" or "video".
    Photo or video: as declared (the multipart field "video"; a video/* or image/* content
    type; a file name with a video suffix), else by the first bytes (a video container's
    signature: MP4/QuickTime, Matroska/WebM, AVI). The video process then finds out whether
    it really holds a video (nothing is decoded in this process). Refused with 413 as soon
    as it runs past its kind's limit, whatever Content-Length claims."""
    biggest = max(limits.max_upload_bytes, limits.max_video_bytes)
    if not request.content_type.startswith("multipart/"):
        kind = _declared_kind(request.content_type, "")
        limit = {"photo": limits.max_upload_bytes, "video": limits.max_video_bytes}.get(
            kind, biggest)
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(kind, limit)
        upload = await receive_upload(request.content.iter_chunked(65536), kind, "upload", "",
                                      limits)
        if not upload.size:
            upload.discard()
            raise ClientError(400, "the upload is empty: send the image or video bytes as the "
                                   "body")
        return upload
    if request.content_length is not None and request.content_length > biggest + 4096:
        raise _too_large(None, biggest)
    upload = None
    try:
        async for part in await request.multipart():
            if part.name in ("image", "video") and upload is None:
                filename = part.filename or "upload"
                kind = "video" if part.name == "video" else _declared_kind(
                    part.headers.get("Content-Type", ""), filename)
                upload = await receive_upload(_chunks_of(part), kind,
                                              Path(filename).stem[:40] or "upload",
                                              Path(filename).suffix.lower(), limits)
            else:
                await _read_part(part, 65536)          # other fields: small, ignored
    except (ValueError, AssertionError, RuntimeError) as e:   # a malformed multipart body
        if upload is not None:
            upload.discard()
        raise ClientError(400, f"malformed multipart upload: {_short(e)}") from None
    except BaseException:
        if upload is not None:
            upload.discard()
        raise
    if upload is None:
        raise ClientError(400, 'the multipart upload has no "image" or "video" field')
    if not upload.size:
        upload.discard()
        raise ClientError(400, f'the "{"video" if upload.kind == "video" else "image"}" field '
                               "is empty")
    return upload


def _too_large(kind: str | None, limit: int) -> ClientError:
    what = {"photo": "the image", "video": "the video"}.get(kind, "the upload")
    return ClientError(413, f"{what} is too large: at most {_mib(limit)}")


def _declared_kind(content_type: str, filename: str) -> str | None:
    content_type = content_type.lower()
    if content_type.startswith("video/") or is_video(filename):
        return "video"
    if content_type.startswith("image/"):
        return "photo"
    return None


def sniff_kind(head: bytes) -> str:
    """"video" when an upload's first bytes are a video container's, else "photo" (the photo
    path says what is wrong with anything else)."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "photo" if head[8:12] in (b"avif", b"heic", b"heix", b"mif1") else "video"
    if head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    return "photo"


async def _chunks_of(part):
    while chunk := await part.read_chunk(65536):
        yield chunk


async def receive_upload(chunks, kind: str | None, name: str, suffix: str,
                         limits: Limits) -> Upload:
    """An Upload from `chunks` (bytes, as they arrive); `kind` None: told by the first
    bytes. A video goes into a new temporary folder as `clip` (+ its name's suffix)."""
    upload, head = None, b""
    try:
        async for chunk in chunks:
            if upload is None:
                head += chunk
                if kind is None and len(head) < SNIFF_BYTES:
                    continue
                upload = _start_upload(kind or sniff_kind(head), name, suffix)
                chunk, head = head, b""
            _add_to_upload(upload, chunk, limits)
        if upload is None:                             # shorter than SNIFF_BYTES
            upload = _start_upload(kind or sniff_kind(head), name, suffix)
            _add_to_upload(upload, head, limits)
        if upload.file is not None:
            upload.file.close()
        return upload
    except OSError as e:
        if upload is not None:
            upload.discard()
        if isinstance(e, ConnectionError):
            raise
        log.warning("a video upload could not be stored: %s", _short(e))
        raise ClientError(507, "the server has no room for this video now (its disk is "
                               "full)") from None
    except BaseException:
        if upload is not None:
            upload.discard()
        raise


def _start_upload(kind: str, name: str, suffix: str) -> Upload:
    upload = Upload(kind, name)
    if kind == "video":
        upload.folder = Path(tempfile.mkdtemp(prefix="talking-head-upload-"))
        name = "clip" + suffix
        upload.clip = upload.folder / (name if is_video(name) else "clip")
        upload.file = open(upload.clip, "wb")
    return upload


def _add_to_upload(upload: Upload, chunk: bytes, limits: Limits) -> None:
    limit = limits.max_video_bytes if upload.kind == "video" else limits.max_upload_bytes
    upload.size += len(chunk)
    if upload.size > limit:
        raise _too_large(upload.kind, limit)
    upload.digest.update(chunk)
    if upload.file is not None:
        upload.file.write(chunk)
    else:
        upload.data += chunk


async def _read_part(part, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(65536):
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"the upload is too large: at most {_mib(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)


def _prepare(source, size: int) -> Avatar:
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


def _prepare_default(source: str, size: int, limits: Limits) -> Avatar | VideoAvatar:
    """--avatar: a photo, or a recording prepared here with a progress bar on the terminal
    (a bad one: the bar ends, and main says why in one line)."""
    if not is_video(source):
        return _prepare(source, size)
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


def _prepare_arrays(source: bytes, size: int, max_pixels: int) -> dict[str, np.ndarray]:
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
    avatar = _prepare(source, size)
    return {f.name: getattr(avatar, f.name).numpy() for f in fields(Avatar)}


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


@routes.get("/avatars/{id}.jpg")
async def avatar_preview(request):
    entry = server_of(request).avatar(request.match_info["id"])
    return web.Response(body=entry.preview, content_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})


@routes.post("/sessions/{id}/audio")
async def session_audio(request):
    server = server_of(request)
    live = server.live(request.match_info["id"])
    limits = server.limits
    data = await read_body(request, limits.max_audio_file_bytes, "the audio file")
    live.active = time.monotonic()
    loop = asyncio.get_running_loop()
    try:
        audio, rate = await loop.run_in_executor(
            server.work, decode_audio_bytes, data, limits.max_audio_file_bytes,
            limits.max_queued_seconds)
        queued = live.feed.queue(audio, rate)
    except AudioInputError as e:
        raise ClientError(422, str(e)) from None
    return web.json_response({"seconds": round(audio.size / rate, 3),
                              "queued_seconds": round(queued, 3)})


@routes.delete("/sessions/{id}")
@routes.post("/sessions/{id}/close")              # navigator.sendBeacon when a page closes
async def delete_session(request):
    server = server_of(request)
    await server.end_session(server.live(request.match_info["id"]), "closed by the client")
    return web.json_response({"ended": request.match_info["id"]})


@routes.get("/health")
async def health(request):
    server = server_of(request)
    return web.json_response({"status": "stopping" if server.stopping else "ok",
                              "sessions": len(server.sessions),
                              "max_sessions": server.max_sessions, "engine": server.engine.name,
                              "size": server.size, "avatars": len(server.bundled),
                              **process_stats()})


@routes.get("/metrics")
async def metrics(request):
    server = server_of(request)
    for live in list(server.sessions.values()):
        server._collect(live)
    rates = {live.label: live.clock.rates() for live in server.sessions.values()}
    text = server.metrics.render(
        gauges={"sessions": len(server.sessions), "sessions_max": server.max_sessions,
                "video_avatars_preparing": len(server.preparing), **process_stats()},
        labelled={"session_fps": {k: round(v[0], 2) for k, v in rates.items()},
                  "session_slots_per_second": {k: round(v[1], 2) for k, v in rates.items()}})
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Version": "0.0.4"})


# ------------------------------------------------------------------------------ websocket

OVERSIZE_READ = 4          # messages up to this many times --max-ws-message are read, then refused

@routes.get("/ws/{id}")
async def websocket(request):
    server = server_of(request)
    limits = server.limits
    # A message over the limit is read whole (up to OVERSIZE_READ times the limit) and then
    # refused with 1009: had aiohttp cut the connection at the frame header, the unread rest
    # would reset it and the client would see 1006 instead of the close frame.
    ws = web.WebSocketResponse(heartbeat=20.0,
                               max_msg_size=OVERSIZE_READ * limits.max_ws_message)
    if not ws.can_prepare(request).ok:
        raise ClientError(400, "this is a websocket endpoint")
    await ws.prepare(request)
    live = server.sessions.get(request.match_info["id"])
    if live is None or live.closed:
        await ws.close(code=4404, message=b"no such session (it ended or never existed)")
        return ws
    if len(live.channels) >= limits.max_sockets_per_session:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER,
                       message=f"at most {limits.max_sockets_per_session} websockets per "
                               "session".encode())
        return ws
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:     # replies and stats are small: a client that stops reading is
        try:                 # noticed after 64 KiB, not after megabytes of kernel buffer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SEND_BUFFER)
        except OSError:
            pass
    channel = ControlChannel(server, live, ws, request.transport)
    live.channels.add(channel)
    live.active = time.monotonic()
    stats = asyncio.ensure_future(channel.send_stats())
    try:
        await channel.send({"type": "ready", "session": live.id, "avatar": live.avatar_id,
                            "styles": list(server.engine.motion.config.style_names),
                            "voices": [DEFAULT_VOICE, "espeak/en-gb", "espeak/en-us+f3"]
                            + [f"festival/{v}" for v in FESTIVAL_VOICES],
                            "limits": {"max_ws_message": limits.max_ws_message,
                                       "max_queued_seconds": limits.max_queued_seconds,
                                       "max_text_chars": limits.max_text_chars,
                                       "rates": [limits.min_rate, limits.max_rate]}})
        async for msg in ws:
            if channel.dropped or live.closed:
                break
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                if len(msg.data) > limits.max_ws_message:
                    await channel.close(WSCloseCode.MESSAGE_TOO_BIG,
                                        f"a websocket message is at most "
                                        f"{_mib(limits.max_ws_message)} (--max-ws-message): "
                                        "send audio in smaller pieces")
                    break
                live.active = time.monotonic()
                await channel.handle(msg)
                if channel.bad_in_a_row >= MAX_BAD_MESSAGES:
                    await channel.close(WSCloseCode.POLICY_VIOLATION, "too many bad messages")
                    break
            elif msg.type == WSMsgType.ERROR:
                break
    except Exception as e:                               # never a traceback to the client
        log.warning("websocket of session %s: %s", live.label, _short(e))
        await channel.close(WSCloseCode.INTERNAL_ERROR, "internal error")
    finally:
        stats.cancel()
        live.channels.discard(channel)
    return ws


class ControlChannel:
    """One websocket of one session: PCM in, control messages in, stats out. A client that
    stops reading (its sends stall for --send-timeout) is dropped, never waited for."""

    def __init__(self, server: Server, live: LiveSession, ws, transport):
        self.server, self.live, self.ws, self.transport = server, live, ws, transport
        self.format: tuple[int, int, np.dtype] | None = None    # rate, channels, sample type
        self.bad_in_a_row = 0
        self.dropped = False

    async def send(self, message: dict) -> None:
        if self.ws.closed or self.dropped:
            return
        try:
            await asyncio.wait_for(self.ws.send_json(message),
                                   self.server.limits.send_timeout)
        except TimeoutError:
            self.server.metrics.count("websockets_stalled_total")
            log.info("session %s: a websocket client stopped reading; dropped",
                     self.live.label)
            self.drop()
        except (ConnectionError, RuntimeError):      # the client went away meanwhile
            self.drop()

    def drop(self) -> None:
        """Cut the connection at once (nothing more is sent or waited for)."""
        self.dropped = True
        if self.transport is not None:
            self.transport.abort()

    async def close(self, code: int, reason: str, note: str | None = None) -> None:
        """Close with a reason (after a last error message when `note` is given); a client
        that does not take the close within the send timeout is cut off."""
        if note:
            await self.send({"type": "error", "fatal": True, "message": note})
        if self.ws.closed or self.dropped:
            return
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason[:120].encode()),
                                   self.server.limits.send_timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            self.drop()

    async def send_stats(self) -> None:
        while not self.ws.closed and not self.dropped:
            await asyncio.sleep(1.0)
            await self.send(self.server.session_stats(self.live))

    async def handle(self, msg) -> None:
        try:
            if msg.type == WSMsgType.BINARY:
                self.push_pcm(msg.data)
            else:
                await self.control(msg.data)
            self.bad_in_a_row = 0
        except (ClientError, AudioInputError, SpeechError, PortraitError, ValueError) as e:
            self.bad_in_a_row += 1
            self.server.metrics.count("websocket_errors_total")
            await self.send({"type": "error", "message": str(e)})

    def push_pcm(self, data: bytes) -> None:
        if self.format is None:
            raise ClientError(400, 'binary audio before a format: send {"type": "format", '
                                   '"rate": 16000, "channels": 1, "sample": "s16"} first')
        rate, channels, dtype = self.format
        if len(data) % (dtype.itemsize * channels):
            raise AudioInputError(f"{len(data)} bytes is not a whole number of "
                                  f"{channels}-channel {dtype.itemsize * 8}-bit samples")
        pcm = np.frombuffer(data, dtype).astype(dtype.newbyteorder("="))
        self.live.feed.queue(pcm, rate, channels)

    async def control(self, text: str) -> None:
        limits = self.server.limits
        if len(text) > limits.max_control_bytes:
            raise ClientError(400, f"a control message is at most {_mib(limits.max_control_bytes)}"
                                   " (audio goes in binary messages)")
        message = parse_json(text)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ClientError(400, 'a control message is a JSON object with a "type"')
        kind = message["type"]
        loop = asyncio.get_running_loop()
        live = self.live
        if kind == "format":
            rate, channels = message.get("rate"), message.get("channels", 1)
            sample = message.get("sample", "s16")
            if not isinstance(sample, str) or sample not in SAMPLE_TYPES:
                raise ClientError(400, f"sample must be one of {sorted(SAMPLE_TYPES)}")
            check_rate(rate)
            if not limits.min_rate <= rate <= limits.max_rate:
                raise ClientError(400, f"rate must be {limits.min_rate}-{limits.max_rate} Hz "
                                       "on this server")
            if channels not in (1, 2) or isinstance(channels, bool):
                raise ClientError(400, "channels must be 1 or 2")
            self.format = (int(rate), int(channels), SAMPLE_TYPES[sample])
            await self.send({"type": "ok", "for": "format"})
        elif kind == "speak":
            text = message.get("text")
            if not isinstance(text, str):
                raise ClientError(400, 'speak needs "text"')
            voice = message.get("voice") or DEFAULT_VOICE
            if not isinstance(voice, str):
                raise ClientError(400, '"voice" must be a string such as "espeak/en-us"')
            if live.speaking:
                raise ClientError(429, "a text is being synthesised for this session: wait "
                                       "for its ok")
            live.speaking = True
            try:
                audio, rate = await loop.run_in_executor(self.server.work, lambda: speak(
                    text, voice, max_characters=limits.max_text_chars))
            finally:
                live.speaking = False
            queued = live.feed.queue(audio, rate)
            await self.send({"type": "ok", "for": "speak", "seconds": round(audio.size / rate, 3),
                             "queued_seconds": round(queued, 3)})
        elif kind == "interrupt":
            cut = await loop.run_in_executor(None, live.clock.interrupt)
            await self.send({"type": "ok", "for": "interrupt", "cut_frame": cut})
        elif kind == "style":
            values = message.get("values")
            if not isinstance(values, dict) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 3
                    for v in values.values()):
                raise ClientError(400, 'style needs "values": {name: number in 0..3}')
            await loop.run_in_executor(None, live.session.set_style, values)
            await self.send({"type": "ok", "for": "style", "values": values})
        elif kind == "avatar":
            entry = self.server.avatar(message.get("id"))
            live.session.avatar = entry.avatar              # the next chunk renders it
            live.avatar_id = entry.id
            await self.send({"type": "ok", "for": "avatar", "id": entry.id})
        elif kind == "fault" and self.server.fault_injection:
            await self.inject(message.get("fault"))
        else:
            raise ClientError(400, f"unknown message type {_quote(kind)}: use format, speak, "
                                   "interrupt, style or avatar")

    async def inject(self, fault) -> None:
        """--fault-injection only (tests): break this one session on purpose."""
        if fault == "engine":       # a corrupt avatar: the engine raises inside this session
            avatar = self.live.session.avatar
            if isinstance(avatar, VideoAvatar):
                self.live.session.avatar = dataclasses.replace(avatar, motion=avatar.motion[:0])
            else:
                self.live.session.avatar = dataclasses.replace(avatar,
                                                               basis=avatar.basis[:0, :1])
        elif fault == "handler":    # an unexpected exception in this websocket's handler
            raise RuntimeError("injected fault")
        else:
            raise ClientError(400, 'fault must be "engine" or "handler"')
        await self.send({"type": "ok", "for": "fault", "fault": fault})


# ------------------------------------------------------------------------------ the app

def given_token(request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query.get("token")


@web.middleware
async def guard(request, handler):
    """The access token (when the server has one) on every route but the page; every error
    is a JSON {"error": message}; tracebacks stay in the server log."""
    server = server_of(request)
    try:
        if server.token and not (request.method in ("GET", "HEAD") and (
                request.path == "/" or request.path.startswith("/static/"))):
            given = given_token(request)
            if not given or not hmac.compare_digest(given.encode(errors="replace"),
                                                    server.token.encode()):
                server.metrics.count("unauthorized_total")
                return web.json_response(
                    {"error": "this server needs its access token: send 'Authorization: "
                              "Bearer TOKEN' or add ?token=TOKEN"}, status=401,
                    headers={"WWW-Authenticate": "Bearer"})
        response = await handler(request)
    except ClientError as e:
        server.metrics.count("bad_requests_total")
        response = web.json_response({"error": str(e)}, status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        server.metrics.count("bad_requests_total")
        message = {413: "the request is too large"}
        response = web.json_response({"error": message.get(e.status, e.reason)},
                                     status=e.status)
    except ConnectionError:                          # the client went away mid-request
        response = web.json_response({"error": "the connection was lost"}, status=400)
    except Exception:
        log.exception("error in %s %s", request.method, request.path)
        response = web.json_response({"error": "internal server error"}, status=500)
    if not response.prepared:                        # (a websocket is already under way)
        response.headers.setdefault("Referrer-Policy", "no-referrer")   # keeps ?token= home
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def make_app(server: Server) -> web.Application:
    limits = server.limits
    app = web.Application(middlewares=[guard], client_max_size=max(
        limits.max_upload_bytes, limits.max_audio_file_bytes, limits.max_sdp_bytes) + 65536)
    app["server"] = server
    app.add_routes(routes)
    app.router.add_static("/static/", WEB)

    async def start_watch(app):
        asyncio.get_running_loop().set_exception_handler(loop_exception)
        app["watch"] = asyncio.ensure_future(server.watch())

    async def stop_all(app):
        app["watch"].cancel()
        await server.stop()

    app.on_startup.append(start_watch)
    app.on_shutdown.append(stop_all)
    return app


class QuietBadHttp(logging.Filter):
    """aiohttp logs a full traceback for every request it cannot parse: strangers' garbage
    would fill the log (and hide real errors). One line each instead, at info level."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "refused a malformed HTTP request: %s", (
                _short(Exception(error.message or type(error).__name__)),)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)      # (--verbose)
        return True


def limit_flags(parser: argparse.ArgumentParser) -> None:
    d = Limits()
    group = parser.add_argument_group("limits (what one client may ask of the server)")
    for name, kind, help_text in [
            ("max_sessions", int, "sessions at once"),
            ("max_upload_bytes", int, "bytes of one portrait upload"),
            ("max_pixels", int, "pixels (width x height) of one portrait: decompression bombs"),
            ("max_video_bytes", int, "bytes of one video avatar (uploaded or --avatar)"),
            ("max_video_seconds", float, "seconds of one video avatar (uploaded or --avatar)"),
            ("max_video_pixels", int, "pixels (width x height) of a video avatar's frames "
                                        "(uploaded or --avatar)"),
            ("max_audio_file_bytes", int, "bytes of one audio file (POST .../audio)"),
            ("max_queued_seconds", float, "seconds of audio waiting to be spoken, per session"),
            ("min_rate", int, f"lowest PCM sample rate, Hz (>= {MIN_RATE})"),
            ("max_rate", int, f"highest PCM sample rate, Hz (<= {MAX_RATE})"),
            ("max_ws_message", int, "bytes of one websocket message (a PCM chunk)"),
            ("max_control_bytes", int, "bytes of one JSON control message"),
            ("max_sdp_bytes", int, "bytes of an offer (POST /offer)"),
            ("max_text_chars", int, "characters of text for the local TTS"),
            ("idle_timeout", float, "end a session when its client sends nothing (no websocket "
                                    "message, file, or audible microphone) for this long, s"),
            ("connect_timeout", float, "an answered offer must connect within this, s"),
            ("peer_timeout", float, "end a session when its peer sends nothing for this long, s"),
            ("max_sockets_per_session", int, "websockets open on one session"),
            ("max_pending_uploads", int, "portraits waiting to be prepared (and, apart from "
                                         "them, videos)"),
            ("portrait_timeout", float, "seconds to prepare one portrait"),
            ("video_timeout_per_second", float, "seconds to prepare each second of an uploaded "
                                                "video (plus --portrait-timeout)"),
            ("send_timeout", float, "drop a websocket whose client stops reading for this long, s"),
    ]:
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name),
                           help=f"{help_text} (default {getattr(d, name)})")


def check_limits(parser: argparse.ArgumentParser, limits: Limits) -> None:
    for f in fields(Limits):
        if getattr(limits, f.name) <= 0:
            parser.error(f"--{f.name.replace('_', '-')} must be positive")
    if not MIN_RATE <= limits.min_rate <= limits.max_rate <= MAX_RATE:
        parser.error(f"need {MIN_RATE} <= --min-rate <= --max-rate <= {MAX_RATE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=ENGINES,
                        help="how the networks run (default: onnx on cpu, torch on cuda)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help="motion checkpoint (default: assets/motion_student.pt)")
    parser.add_argument("--avatar", help="default avatar: a portrait photo or a recording of "
                                         "the person (.mp4 .mov .webm .mkv .m4v .avi; prepared "
                                         "once and cached; its sound is not used) (default: the "
                                         "bundled astronaut)")
    parser.add_argument("--size", type=int, default=512, choices=[256, 512],
                        help="working size of the avatar, pixels")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; any "
                             "other address requires the access token)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", default=os.environ.get("TALKING_HEAD_TOKEN") or None,
                        help="access token for every route but the page (default "
                             "$TALKING_HEAD_TOKEN; on a non-loopback --host without one, a "
                             "random token is made and printed)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per operation (default 1: every session runs "
                             "its stages on threads of their own; 0: torch's default)")
    parser.add_argument("--fault-injection", action="store_true",
                        help="tests only: accept {\"type\": \"fault\"} websocket messages that "
                             "break one session on purpose (loopback only)")
    parser.add_argument("--verbose", action="store_true")
    limit_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("aiohttp.server").addFilter(QuietBadHttp())
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    check_limits(parser, limits)
    loopback = is_loopback(args.host)
    token = args.token
    if token is not None and len(token) < 16:
        parser.error("--token must be at least 16 characters")
    made_token = token is None and not loopback
    if made_token:
        token = secrets.token_urlsafe(24)
    if args.fault_injection and not loopback:
        parser.error("--fault-injection is for tests on a loopback address only")

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        default = None
        if args.avatar:                 # first: a bad one is said before the engine loads
            default = _prepare_default(args.avatar, args.size, limits)
        engine = make_engine(args.engine or default_engine(args.device), args.checkpoint,
                             args.device)
        server = Server(engine, args.size, limits, token=token,
                        fault_injection=args.fault_injection)
        for avatar_id, path in BUNDLED_AVATARS.items():
            server.add_avatar(avatar_id, avatar_id.replace("_", " "), _prepare(path, args.size),
                              bundled=True)
        if default is not None:
            server.add_avatar("default", Path(args.avatar).stem, default, bundled=True)
            server.default_avatar = "default"
        # warm up (the onnx engine exports its renderer on first use): no first-session stall
        avatar = server.avatars[server.default_avatar].avatar
        engine.render(avatar.reference if isinstance(avatar, VideoAvatar) else avatar,
                      np.zeros((2, engine.motion.config.motion_dim), np.float32))
    except (EngineError, PortraitError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    if loopback:
        use_loopback_for_media()
    print(f"serving http://{args.host}:{args.port} ({engine.name} engine, {args.size} px, "
          f"up to {limits.max_sessions} sessions)", flush=True)
    if made_token:
        print(f"access token required (listening on {args.host}, not loopback); this run's "
              f"token, made now: {token}\n  open http://{args.host}:{args.port}/?token={token}",
              flush=True)
    elif token:
        print("access token required (from --token or $TALKING_HEAD_TOKEN)", flush=True)
    if args.fault_injection:
        print("FAULT INJECTION ON: clients may break their own session on purpose (tests only)",
              flush=True)
    try:
        web.run_app(make_app(server), host=args.host, port=args.port, print=None,
                    access_log=None, handle_signals=True, shutdown_timeout=5.0)
    except OSError as e:
        print(f"error: cannot serve on {args.host}:{args.port}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    if any(t.name in SESSION_THREADS and t.is_alive() for t in threading.enumerate()):
        logging.shutdown()                 # a session thread still computing (logged above):
        sys.stdout.flush()                 # leave without the interpreter's teardown, which
        sys.stderr.flush()                 # it could crash in (native thread pools)
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
