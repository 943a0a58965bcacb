"""Uploaded avatars shared by the replicas of a Ray deployment.

A standalone server knows the avatars uploaded to it. On Ray an upload lands on one replica
while a session that names it may land on another (the one with the most room), so every
uploaded avatar is also put in one actor of the cluster, the AvatarStore, under its id, as
prepared (preparing it again would take seconds for a photo, as long as the clip for a
video): a photo as its tensors (12 MB at 512 px), a video as its prepared folder (~175 MB for
60 s at 512 px). A replica asked for an id it does not know fetches it from there
(serve/avatars.py, Avatars.find) and keeps it as its own from then on.

The store holds the records in its own memory, so an avatar outlives the replica that took
the upload; it keeps the newest MAX_AVATARS and at most MAX_BYTES (the oldest go first, as a
replica forgets its oldest uploads). It is a detached named actor: every replica finds the
same one (the first creates it), a replica that dies does not take it along, and the driver
removes it with the app (serve/ray_app.py, shutdown).
"""

import logging
from collections import OrderedDict

log = logging.getLogger("server")

STORE = "talking_head_avatars"     # the actor's name ...
NAMESPACE = "talking_head"         # ... in this namespace (serve/ray_app.py's APP)
MAX_AVATARS = 256
MAX_BYTES = 2 * 2**30


class AvatarStore:
    """avatar id -> record: {"name", "kind": "photo" | "video", "key": the upload's hash key,
    "files": {file name: bytes}} (a photo: {"avatar.npz": its tensors}; a video: its prepared
    folder's files, and "folder": that folder's name in the video cache)."""

    def __init__(self):
        self.records: OrderedDict[str, dict] = OrderedDict()
        self.bytes = 0

    def put(self, avatar_id: str, record: dict) -> bool:
        """Keep `record` under `avatar_id` (False: larger than the whole store)."""
        size = record_bytes(record)
        if size > MAX_BYTES:
            return False
        self.drop(avatar_id)
        self.records[avatar_id] = record
        self.bytes += size
        while len(self.records) > MAX_AVATARS or self.bytes > MAX_BYTES:
            self.drop(next(iter(self.records)))
        return True

    def get(self, avatar_id: str) -> dict | None:
        record = self.records.get(avatar_id)
        if record is not None:
            self.records.move_to_end(avatar_id)
        return record

    def drop(self, avatar_id: str) -> None:
        record = self.records.pop(avatar_id, None)
        if record is not None:
            self.bytes -= record_bytes(record)


def record_bytes(record: dict) -> int:
    return sum(len(data) for data in record["files"].values())


class SharedAvatars:
    """A replica's handle on the store (async: the replica's event loop never waits on it)."""

    def __init__(self):
        import ray

        self.store = ray.remote(AvatarStore).options(
            name=STORE, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            num_cpus=0).remote()

    async def publish(self, avatar_id: str, record: dict) -> None:
        if not await self.store.put.remote(avatar_id, record):
            log.warning("avatar %s (%.0f MB) is larger than the shared store: only this "
                        "replica can use it", avatar_id, record_bytes(record) / 2**20)

    async def fetch(self, avatar_id: str) -> dict | None:
        return await self.store.get.remote(avatar_id)
