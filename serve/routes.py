"""The HTTP API: the route table (make_app) and the small handlers behind it.

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
    POST   /sessions            a headless session (no WebRTC; serve/headless.py):
                                {"avatar", "rate": 8000..48000, "format": "jpeg" | "rgb",
                                "quality": 1..95, "pacing": "realtime" | "fast"}, all optional
                                -> {"session", "websocket": "/sessions/{id}/media", "control",
                                "media": {...}}
    GET    /sessions/{id}/media its media websocket: in, what /ws/{id} takes (PCM, speak,
                                interrupt, style, avatar); out, per 40 ms slot one binary
                                message: uint32 LE header length H, H bytes of JSON header
                                {"slot", "frame", "pts", "time", "speech", "format", "width",
                                "height", "image_bytes", "rate", "samples"}, the image (JPEG or
                                raw RGB), the slot's own 40 ms of int16 LE mono PCM; and JSON
                                events "speech_started", "speech_ended" (sent after the last
                                slot of the utterance left), "interrupted"
    POST   /sessions/{id}/audio an audio file to speak (any format FFmpeg reads)
    DELETE /sessions/{id}       end a session (also POST /sessions/{id}/close)
    GET    /health              {"status": "ok", "sessions", "sessions_short_of_compute",
                                 "max_sessions", ...}
    GET    /metrics             Prometheus text: sessions, fps, latency histograms, frames
    GET    /ws/{session}        the session's websocket (serve.control)
Errors are JSON {"error": "..."} with a 4xx/5xx status; no traceback ever reaches a client.
"""

import asyncio
import time
from pathlib import Path

from aiohttp import web

from models.audio_io import AudioInputError
from serve.avatars import VideoJob
from serve.control import websocket
from serve.headless import create_session, media_websocket
from serve.http import ClientError, guard, loop_exception, read_body, server_of
from serve.sessions import Server
from serve.signalling import offer
from serve.uploads import read_upload
from stream.metrics import process_stats
from stream.sources import decode_audio_bytes

WEB = Path(__file__).resolve().parent.parent / "web"


def make_app(server: Server) -> web.Application:
    limits = server.limits
    app = web.Application(middlewares=[guard], client_max_size=max(
        limits.max_upload_bytes, limits.max_audio_file_bytes, limits.max_sdp_bytes) + 65536)
    app["server"] = server
    app.add_routes([
        web.get("/", index),
        web.post("/offer", offer),                           # serve.signalling
        web.get("/avatars", list_avatars),
        web.post("/avatars", upload_avatar),
        web.get("/avatars/jobs/{id}", avatar_job),
        web.get("/avatars/{id}.jpg", avatar_preview),
        web.post("/sessions", create_session),              # serve.headless
        web.get("/sessions/{id}/media", media_websocket),   # serve.headless
        web.post("/sessions/{id}/audio", session_audio),
        web.post("/sessions/{id}/close", delete_session),  # navigator.sendBeacon: a page closes
        web.delete("/sessions/{id}", delete_session),
        web.get("/health", health),
        web.get("/metrics", metrics),
        web.get("/ws/{id}", websocket),                      # serve.control
    ])
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


async def index(request):
    return web.FileResponse(WEB / "index.html")


async def list_avatars(request):
    avatars = server_of(request).avatars
    return web.json_response([{"id": a.id, "name": a.name, "preview": f"/avatars/{a.id}.jpg",
                               "kind": a.kind, "default": a.id == avatars.default}
                              for a in avatars.entries.values() if a.id in avatars.bundled])


async def upload_avatar(request):
    """A photo or a video (see read_upload). A photo, or a video whose bytes were prepared
    before: 200 and the avatar. Else 202 and a job to follow (GET /avatars/jobs/{id})."""
    server = server_of(request)
    upload = await read_upload(request, server.limits)
    try:
        if upload.kind == "photo":
            result = await server.avatars.upload(bytes(upload.data), upload.name)
        else:
            result = await server.avatars.upload_video(upload)
    finally:
        upload.discard()                       # (a video being prepared: no longer its own)
    if isinstance(result, VideoJob):
        return web.json_response(result.reply(), status=202,
                                 headers={"Location": f"/avatars/jobs/{result.id}"})
    return web.json_response(result.reply())


async def avatar_job(request):
    """A video upload's progress: {"state": "queued" | "preparing", "stage", "progress"},
    then {"state": "done", "avatar", "preview", ...}, or the upload's error (its 4xx/5xx
    status, {"state": "failed", "error"})."""
    job = server_of(request).avatars.job(request.match_info["id"])
    return web.json_response(job.reply(), status=job.error.status if job.error else 200)


async def avatar_preview(request):
    entry = await server_of(request).avatars.find(request.match_info["id"])
    return web.Response(body=entry.preview, content_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})


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


async def delete_session(request):
    server = server_of(request)
    await server.end_session(server.live(request.match_info["id"]), "closed by the client")
    return web.json_response({"ended": request.match_info["id"]})


async def health(request):
    server = server_of(request)
    return web.json_response({"status": "stopping" if server.stopping else "ok",
                              "sessions": len(server.sessions),
                              "sessions_short_of_compute": server.short_of_compute,
                              "max_sessions": server.max_sessions, "engine": server.engine.name,
                              "size": server.size, "avatars": len(server.avatars.bundled),
                              **process_stats(), **server.ids.health()})


async def metrics(request):
    server = server_of(request)
    for live in list(server.sessions.values()):
        server.collect(live)
    rates = {live.label: live.clock.rates() for live in server.sessions.values()}
    cluster = await server.cluster.gauges() if server.cluster is not None else {}
    text = server.metrics.render(
        gauges={"sessions": len(server.sessions), "sessions_max": server.max_sessions,
                "sessions_short_of_compute": server.short_of_compute,
                "video_avatars_preparing": len(server.avatars.preparing), **process_stats(),
                **cluster},
        labelled={"session_fps": {k: round(v[0], 2) for k, v in rates.items()},
                  "session_slots_per_second": {k: round(v[1], 2) for k, v in rates.items()}})
    if server.ids.label:                     # a Ray replica: every sample says which one
        text = with_label(text, "replica", server.ids.label)
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Version": "0.0.4"})


def with_label(text: str, name: str, value: str) -> str:
    """Prometheus text with the label name="value" added to every sample."""
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            metric, rest = line.split(" ", 1)
            base, brace, labels = metric.partition("{")          # labels: 'le="0.1"}'
            line = f'{base}{{{name}="{value}"{"," + labels if brace else "}"} {rest}'
        out.append(line)
    return "\n".join(out) + "\n"
