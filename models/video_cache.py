"""The video avatar cache on disk, kept under a size bound: least recently used entries go.

Each prepared clip is a folder of video_cache_dir() named by its content hash (models/
video_avatar.py): ~175 MB for 60 s at 512 px, up to ~450 MB for 5 minutes. A server that takes
uploads would fill its disk; `evict` removes whole entries, the least recently used first,
until the cache holds at most `max_bytes`. Never removed:
- an entry a VideoAvatar of this process still uses (a session plays frames.jpg as it goes):
  load_video_avatar registers each one it makes (`in_use`), and it counts until that object
  is garbage;
- an entry used in the last RECENT_SECONDS (its folder's modification time, set at every
  load): another process sharing the cache may be playing it.
A preparation's work folder (".<key>-...") that a killed process left behind is removed once it
is older than STALE_WORK_SECONDS. An entry is renamed away before it is deleted, so a reader
never sees half of one.
"""

import logging
import os
import shutil
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("video_cache")

RECENT_SECONDS = 3600.0        # an entry loaded this recently stays (another process's)
STALE_WORK_SECONDS = 6 * 3600.0  # a work folder this old was left by a killed preparation

_lock = threading.Lock()
_users: Counter[str] = Counter()     # folder -> live VideoAvatar objects of this process


@dataclass
class Entry:
    folder: Path
    bytes: int
    used: float                # the folder's modification time: its last load


def in_use(avatar, folder: Path) -> None:
    """`avatar` (a VideoAvatar) reads `folder` until it is garbage; marks the folder used."""
    key = str(folder)
    with _lock:
        _users[key] += 1
    weakref.finalize(avatar, _release, key)
    try:
        os.utime(folder)
    except OSError:
        pass


def _release(key: str) -> None:
    with _lock:
        _users[key] -= 1
        if _users[key] <= 0:
            del _users[key]


def entries(root: Path) -> list[Entry]:
    """The prepared clips under `root`, least recently used first."""
    found = []
    for folder in root.iterdir() if root.is_dir() else ():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        try:
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            found.append(Entry(folder, size, folder.stat().st_mtime))
        except OSError:                       # removed meanwhile
            continue
    return sorted(found, key=lambda e: e.used)


def evict(root: Path, max_bytes: int, now: float | None = None) -> list[Path]:
    """Remove the least recently used entries under `root` until at most `max_bytes` remain
    (see the module doc for what is never removed), and stale work folders. Returns the
    folders removed."""
    now = time.time() if now is None else now
    removed = []
    for work in root.glob(".*") if root.is_dir() else ():
        try:
            if work.is_dir() and now - work.stat().st_mtime > STALE_WORK_SECONDS:
                _remove(work)
                removed.append(work)
        except OSError:
            continue
    cached = entries(root)
    total = sum(e.bytes for e in cached)
    with _lock:
        busy = set(_users)
    for entry in cached:
        if total <= max_bytes:
            break
        if str(entry.folder) in busy or now - entry.used < RECENT_SECONDS:
            continue
        _remove(entry.folder)
        removed.append(entry.folder)
        total -= entry.bytes
        log.info("video cache: removed %s (%.0f MB, last used %.0f h ago)", entry.folder.name,
                 entry.bytes / 2**20, (now - entry.used) / 3600)
    return removed


def _remove(folder: Path) -> None:
    doomed = folder.with_name(f".removing-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, doomed)
    except OSError:
        return                                 # gone already, or being replaced
    shutil.rmtree(doomed, ignore_errors=True)
