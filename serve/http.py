"""What every handler shares: errors meant for the client, the guard, bodies read within limits.

A handler refuses a request by raising ClientError(status, message); the guard middleware
checks the access token and turns that (and any other failure) into a JSON {"error": ...}
with a 4xx/5xx status: no traceback ever reaches a client, it stays in the server log.
Handlers find their Server through the app (server_of), never through a global, so the same
handlers serve whichever app holds one.
"""

import hmac
import json
import logging
import traceback
from pathlib import Path

from aiohttp import web

log = logging.getLogger("server")

PUBLIC_PATHS = ("/", "/static/")   # served without the token: the page, same for everyone


class ClientError(Exception):
    """A request refused with a message for the client (status, message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def server_of(request):
    """The Server (serve.sessions) whose app this request came to."""
    return request.app["server"]


async def read_body(request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it runs past `limit` bytes (whatever
    Content-Length claims, chunked or not)."""
    if request.content_length is not None and request.content_length > limit:
        raise ClientError(413, f"{what} is too large: at most {mib(limit)}")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"{what} is too large: at most {mib(limit)}")
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


class QuietBadHttp(logging.Filter):
    """aiohttp logs a full traceback for every request it cannot parse: strangers' garbage
    would fill the log (and hide real errors). One line each instead, at info level."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "refused a malformed HTTP request: %s", (
                short(Exception(error.message or type(error).__name__)),)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)      # (--verbose)
        return True


def loop_exception(loop, context) -> None:
    """A background task failed (inside aiortc, say, on a malformed offer): one line in the
    log, with where it happened, instead of a traceback; the server goes on."""
    error = context.get("exception")
    detail = ""
    if error is not None:
        detail = f": {type(error).__name__}: {short(error)}"
        frames = traceback.extract_tb(error.__traceback__) if error.__traceback__ else []
        if frames:
            detail += f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})"
    log.warning("background task failed: %s%s", context.get("message", "?"), detail)


def short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return text[:200]


def quote(value) -> str:
    """A client's value in a message: short, printable."""
    return repr(value)[:60]


def mib(n: int) -> str:
    return f"{n / 2**20:.4g} MiB" if n >= 2**20 else f"{n / 2**10:.4g} KiB"
