"""The deployment's request router: a session's requests to the replica that holds it, a new
session to the replica with the most free room.

Ray Serve's own routers balance requests, not sessions: a session's websocket could land on
a replica that never heard of it. This one (a RequestRouter, Ray's alpha API; it runs in every
proxy and handle) reads the request's session id (the proxy copied it from the path:
serve/ray_proxy.py):
- an id: its replica, named in the id itself (serve/ray_sessions.py). When that replica is not
  running, any replica: it answers 410 (the session ended with its replica) or 404 (forged);
  never another replica's session, since each replica looks up only its own.
- "new" (POST /offer, POST /sessions) or none: replicas in order of free room. Room is what
  each replica last reported (record_routing_stats: sessions, starting, max, short, stopping;
  about once a second) less the sessions this router sent it that the report may not hold yet,
  so that sessions started back to back spread out before the next report. A replica with room
  whose sessions are short of compute (rendering every 2nd or 3rd frame: a slower or busier
  machine) comes after every replica with room whose sessions render every frame, whatever
  their room: one more session there would take frames from the ones it has. A replica that is
  stopping (draining before it is removed) comes last. A full deployment: the emptiest replica
  answers 503 itself.
"""

import math
import time
from collections import defaultdict, deque

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from serve.ray_sessions import NEW_SESSION, owner

RECENT_SECONDS = 10.0          # sessions sent to a replica are counted until it reports them
IN_FLIGHT_SECONDS = 2.0        # ... in a report stamped this long after they were sent
UNREPORTED_ROOM = 10**6        # the room of a fresh replica while none has reported


def forget_reported(sent: deque, reported: float, now: float) -> None:
    """Drop from `sent` (times, oldest first, a session was sent to a replica) those that its
    report stamped `reported` holds, and any older than RECENT_SECONDS. A session counts as
    reported only in a report stamped IN_FLIGHT_SECONDS after it was sent: the request reaches
    the replica a little later, and a report made in between does not hold it (counted as
    room, the next session would go to the same replica and be refused while another had
    room). Counting a session too long only reorders replicas: each one decides itself."""
    while sent and (sent[0] <= reported - IN_FLIGHT_SECONDS or sent[0] < now - RECENT_SECONDS):
        sent.popleft()


def preference(room: float, short: int) -> tuple:
    """Sort key (highest first) of a replica for a new session: `room`, the sessions it can
    still take (-inf: stopping); `short`, its sessions short of compute now."""
    return room > 0, room > 0 and short == 0, room


class SessionRouter(RequestRouter):
    def initialize_state(self, **kwargs):
        self.sent: dict[str, deque] = defaultdict(deque)   # replica -> times a session sent

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None
                              ) -> list[list[RunningReplica]]:
        session = pending_request.metadata.session_id if pending_request else ""
        if session and session != NEW_SESSION:
            replica = owner(session)
            for r in candidate_replicas:
                if r.replica_id.unique_id == replica:
                    return [[r]]
        # a replica that has not reported yet is taken for an empty one of the same size as
        # the others (one deployment: one --max-sessions), not as boundless: else every
        # session started before its first report (up to a second) would go to it
        known = [(r.routing_stats or {}).get("max") for r in candidate_replicas]
        size = max((m for m in known if m is not None), default=UNREPORTED_ROOM)
        ranked = sorted(candidate_replicas, key=lambda r: preference(
            self.room(r, size), (r.routing_stats or {}).get("short", 0)), reverse=True)
        if session == NEW_SESSION and ranked:
            self.sent[ranked[0].replica_id.unique_id].append(time.time())
        return [[r] for r in ranked]

    def room(self, replica: RunningReplica, size: int) -> float:
        """Sessions the replica can still take, as far as this router knows (`size`: the
        sessions an empty one takes, for a replica that has not reported yet)."""
        stats = replica.routing_stats or {}
        if stats.get("stopping"):
            return -math.inf
        sent = self.sent[replica.replica_id.unique_id]
        forget_reported(sent, stats.get("time", 0.0), time.time())
        if "max" not in stats:                  # not reported yet: a fresh replica, empty
            return size - len(sent)
        return stats["max"] - stats["sessions"] - stats["starting"] - len(sent)
