"""Session ids on Ray Serve: the id itself says which replica holds the session.

    {replica}.{mac}.{secret}      e.g. "k3x9q2ab.5f0c1e2d.Xq1v...22 characters"

replica: the Ray Serve replica's unique id (letters and digits); mac: 8 hex digits of an HMAC
of it under the deployment's key (made at deploy time, known only to its replicas), so that a
made-up replica part is told apart from a real one; secret: 16 random bytes, as standalone.

Any proxy can route a request of a session to its owner from the id alone (serve/ray_router.py
reads it; no shared table to keep), and a replica that gets an id it does not hold can say
why: 404 for an id no replica of this deployment made (forged, or ended here), 410 for a
session whose replica is gone (it stopped or failed: its sessions ended with it). Never
another replica's session: a replica looks up only its own.
"""

import hashlib
import hmac
import os
import secrets

from serve.http import ClientError
from serve.sessions import SessionIds

NEW_SESSION = "new"          # the router's mark for a request that starts a session


def owner(session_id: str) -> str | None:
    """The replica part of a well-formed session id (or of a bare replica id: GET
    /replicas/{replica}/health), else None."""
    parts = session_id.split(".")
    if not parts[0].isalnum() or not (len(parts) == 1 or len(parts) == 3 and
                                      len(parts[1]) == 8):
        return None
    return parts[0]


class ReplicaIds(SessionIds):
    """The ids of one replica's sessions, and its answer for the ids it does not hold."""

    def __init__(self, replica: str, key: str):
        self.replica, self._key = replica, key.encode()
        self.label = replica

    def mac(self, replica: str) -> str:
        return hmac.new(self._key, replica.encode(), hashlib.sha256).hexdigest()[:8]

    def new(self) -> str:
        return f"{self.replica}.{self.mac(self.replica)}.{secrets.token_urlsafe(16)}"

    def missing(self, session_id: str) -> ClientError:
        replica = owner(session_id)
        made_here = replica is not None and "." in session_id and hmac.compare_digest(
            session_id.split(".")[1], self.mac(replica))
        if not made_here or replica == self.replica:
            return ClientError(404, "no session with this id (it ended or never existed)")
        return ClientError(410, f"the replica that held this session ({replica}) is gone: "
                                "the session has ended; start a new one")

    def health(self) -> dict:
        return {"replica": self.replica, "pid": os.getpid()}

    def full(self, max_sessions: int) -> str:       # the router sent it to the emptiest one
        return (f"the service is full: every replica holds its {max_sessions} sessions "
                "(--max-sessions); try again later")
