"""The talking-head server: a web page, WebRTC sessions, and a websocket per session.

    python server.py [--engine torch|onnx|trt] [--device cpu|cuda] [--avatar IMG|VIDEO]
                     [--host 127.0.0.1] [--port 8080] [--token TOKEN] [--size 512|256]
                     [--checkpoint CKPT] [--threads N] [limits: see --help]

Access: the server listens on 127.0.0.1 unless told otherwise. On any other address it
requires an access token (--token or $TALKING_HEAD_TOKEN; without one it makes one and
prints it), sent as "Authorization: Bearer TOKEN" or "?token=TOKEN" on every route except
the page itself (GET / and /static/: the same files for everyone, no data; the page passes
the token from its own URL on to every request it makes).

This file is the entry point: flags, the engine, the bundled avatars, then the app. The
request path lives in serve/: the HTTP API and its route table in serve/routes.py, the
websocket protocol in serve/control.py, one module per concept beside them (serve/__init__).

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
"""

import argparse
import logging
import os
import secrets
import sys
import threading
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from aiohttp import web

from export.warm import ExportError, warm_onnx
from models.face import PortraitError
from models.video_avatar import VideoAvatar
from serve.avatars import BUNDLED_AVATARS
from serve.http import QuietBadHttp
from serve.limits import Limits, check_limits, limit_flags
from serve.preparation import prepare_default, prepare_photo
from serve.routes import make_app
from serve.sessions import SESSION_THREADS, Server
from stream.engine import DEFAULT_CHECKPOINT, ENGINES, EngineError, default_engine, make_engine
from stream.webrtc import is_loopback, use_loopback_for_media

log = logging.getLogger("server")


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
            default = prepare_default(args.avatar, args.size, limits)
        engine_name = args.engine or default_engine(args.device)
        if engine_name == "onnx":       # a first start exports the networks: say so, in parallel
            warm_onnx(args.checkpoint, args.size, say=lambda line: print(line, flush=True))
        engine = make_engine(engine_name, args.checkpoint, args.device)
        server = Server(engine, args.size, limits, token=token,
                        fault_injection=args.fault_injection)
        for avatar_id, path in BUNDLED_AVATARS.items():
            server.avatars.add(avatar_id, avatar_id.replace("_", " "),
                               prepare_photo(path, args.size), bundled=True)
        if default is not None:
            server.avatars.add("default", Path(args.avatar).stem, default, bundled=True)
            server.avatars.default = "default"
        # warm up (the onnx engine exports its renderer on first use): no first-session stall
        avatar = server.avatars.entries[server.avatars.default].avatar
        engine.render(avatar.reference if isinstance(avatar, VideoAvatar) else avatar,
                      np.zeros((2, engine.motion.config.motion_dim), np.float32))
    except (EngineError, PortraitError, OSError, ExportError) as e:
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
