"""An ASGI app in front of the server's own aiohttp app: how a Ray Serve replica serves the
very handlers that `python server.py` serves.

Ray Serve hands a replica each request as ASGI (scope, receive, send). The replica runs the
standalone server's aiohttp app (serve/routes.make_app) on a unix socket of its own, and this
bridge forwards every request there and the answer back: HTTP bodies streamed both ways,
websockets message by message, with their close code and reason. Nothing is re-implemented:
the access token, the limits, the JSON errors and the websocket protocol are the app's own.
The hop costs a local socket round trip; WebRTC media never takes it (it flows between the
client and the replica directly).
"""

import asyncio
import json
import logging

import aiohttp
from yarl import URL

log = logging.getLogger("server")

# hop-by-hop headers (RFC 9110 7.6.1) and the websocket handshake's own: each hop makes its own
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
               "transfer-encoding", "upgrade", "host", "sec-websocket-key",
               "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept"}


class Bridge:
    """ASGI -> the aiohttp app listening on `socket_path`, in replica `replica`."""

    def __init__(self, socket_path: str, replica: str):
        self.socket_path, self.replica = socket_path, replica
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:       # made on the loop that serves
            self._http = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path),
                auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            await self.http_request(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
        elif scope["type"] == "lifespan":               # nothing to start: the app runs already
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]          # startup | shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return

    async def http_request(self, scope, receive, send) -> None:
        headers = forwarded_headers(scope)
        wanted = dict(headers).get("x-talking-head-replica")     # serve/ray_proxy.py
        if wanted is not None and wanted != self.replica:        # it is gone: routed here
            await send_json(send, 410, {"error": f"replica {wanted} is not running"})
            return
        has_body = any(k == "content-length" and v != "0" or k == "transfer-encoding"
                       for k, v in headers)

        async def body():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ConnectionError("the client went away")
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        try:
            async with self.http.request(scope["method"], app_url(scope), headers=headers,
                                         data=body() if has_body else None,
                                         allow_redirects=False) as response:
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [(k.lower(), v) for k, v in response.raw_headers
                                        if k.decode().lower() not in HOP_HEADERS
                                        and k.decode().lower() not in ("date", "server")]})
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (aiohttp.ClientConnectionError, ConnectionError) as e:
            log.info("bridge: %s %s: %s", scope["method"], scope["path"], e)
            await send_json(send, 503, {"error": "this replica is not serving now (starting "
                                                 "or stopping): try again"})

    async def websocket(self, scope, receive, send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            inner = await self.http.ws_connect(app_url(scope), headers=forwarded_headers(scope),
                                               autoclose=False, max_msg_size=0, compress=0)
        except aiohttp.WSServerHandshakeError as e:       # refused before the upgrade (401)
            await refuse_websocket(scope, send, e.status, e.message)
            return
        except aiohttp.ClientConnectionError:
            await refuse_websocket(scope, send, 503, "this replica is not serving now")
            return
        await send({"type": "websocket.accept"})
        inward = asyncio.ensure_future(client_to_app(receive, inner))
        try:
            while True:
                msg = await inner.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await send({"type": "websocket.send", "text": msg.data})
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await send({"type": "websocket.send", "bytes": msg.data})
                else:
                    break
            if not inward.done():                         # the app closed: say how
                closing = msg.type == aiohttp.WSMsgType.CLOSE
                await send({"type": "websocket.close",
                            "code": msg.data if closing else inner.close_code or 1011,
                            "reason": (msg.extra or "") if closing else ""})
        finally:
            inward.cancel()
            await inner.close()


async def client_to_app(receive, inner) -> None:
    """The client's messages into the app's websocket, until the client leaves."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await inner.close(code=message.get("code", 1000))
            return
        if message.get("bytes") is not None:
            await inner.send_bytes(message["bytes"])
        elif message.get("text") is not None:
            await inner.send_str(message["text"])


async def refuse_websocket(scope, send, status: int, message: str) -> None:
    """A websocket the app refused before the upgrade: its HTTP answer when the server in
    front can send one (ASGI's websocket denial response), else a close with 4000 + status."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send_json(send, status, {"error": message}, prefix="websocket.")
    else:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})


async def send_json(send, status: int, value: dict, prefix: str = "") -> None:
    body = json.dumps(value).encode()
    await send({"type": f"{prefix}http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": f"{prefix}http.response.body", "body": body})


def app_url(scope) -> URL:
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string", b"")
    return URL("http://replica" + path.decode("latin-1")
               + ("?" + query.decode("latin-1") if query else ""), encoded=True)


def forwarded_headers(scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
            if k.decode("latin-1").lower() not in HOP_HEADERS]
