"""What every Ray Serve proxy does to a request before routing it, and to a websocket whose
replica is lost.

Ray loads this in each proxy from $RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
(= "serve.ray_proxy:middlewares"), which must be set before the cluster starts (serve/ray_app.py
sets it for a cluster it starts; `ray start` needs it in its environment).

- Session affinity. The session id of a request is in its path (/ws/{id}, /sessions/{id}/...;
  a video upload's job, /avatars/jobs/{id}, is named like a session of the replica preparing it);
  browsers cannot set websocket headers, so it is copied here into the x-session-id header
  that Ray hands to the deployment's request router (serve/ray_router.py) as the request's
  session id. A request that starts a session (POST /offer, POST /sessions) is marked "new".
  A client's own x-session-id header is dropped: the path is the truth.
- A lost replica. When a replica dies, Ray ends its websockets without a close frame; here
  they are closed with 4410 and a reason, so that the client knows the session has ended.
- One replica's health and metrics: GET /replicas/{replica}/health and .../metrics reach that
  replica (as /health and /metrics), or answer 410 when it is not running.
- Every HTTP answer carries X-Talking-Head-Router: sessions, by which the server checks at
  start that the proxies really run this (a cluster started without the variable does not).
"""

import re

from starlette.middleware import Middleware

SESSION_HEADER = b"x-session-id"   # Ray's default (RAY_SERVE_SESSION_ID_HEADER_KEY)
REPLICA_HEADER = b"x-talking-head-replica"      # the replica a /replicas/... request is for
ROUTER_HEADER = (b"x-talking-head-router", b"sessions")
SESSION_PATH = re.compile(r"^/(?:ws|sessions|avatars/jobs)/([^/]+)")
REPLICA_PATH = re.compile(r"^/replicas/([A-Za-z0-9]+)(/health|/metrics)$")
STARTS_SESSION = {("POST", "/offer"), ("POST", "/sessions")}
LOST_CODE = 4410
LOST_REASON = "the replica that held this session stopped: the session has ended"


def middlewares() -> list:
    return [Middleware(SessionAffinity)]


def session_of(scope) -> str | None:
    """The session a request belongs to: its id from the path, "new" for a request that starts
    one, None for the others (the page, avatars, health, metrics)."""
    path = scope["path"]
    if (scope.get("method", "GET"), path.rstrip("/")) in STARTS_SESSION:
        return "new"
    found = SESSION_PATH.match(path)
    return found.group(1) if found else None


class SessionAffinity:
    """ASGI middleware in the proxy: the session id into the header, a lost replica's
    websockets closed with a reason."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"]
                   if k.lower() not in (SESSION_HEADER, REPLICA_HEADER)]
        session = session_of(scope)
        replica = REPLICA_PATH.match(scope["path"])
        if replica:                         # routed like a session of that replica
            session, path = replica.groups()
            headers.append((REPLICA_HEADER, session.encode()))
            scope = {**scope, "path": path, "raw_path": path.encode()}
        if session:
            headers.append((SESSION_HEADER, session.encode("latin-1", "replace")))
        scope = {**scope, "headers": headers}
        if scope["type"] == "http":
            await self.app(scope, receive, marked(send))
            return
        state = {"accepted": False, "closed": False}

        async def watched(message):
            if message["type"] == "websocket.accept":
                state["accepted"] = True
            elif message["type"] in ("websocket.close", "websocket.http.response.start"):
                state["closed"] = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            if state["accepted"] and not state["closed"]:     # the replica is gone
                try:
                    await send({"type": "websocket.close", "code": LOST_CODE,
                                "reason": LOST_REASON})
                except Exception:                          # the client left meanwhile
                    pass


def marked(send):
    async def send_marked(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), ROUTER_HEADER]}
        await send(message)
    return send_marked
