"""The talking-head server: a web page, WebRTC sessions, and a websocket per session.

    python server.py [--engine torch|onnx|trt] [--device cpu|cuda] [--avatar IMG|VIDEO]
                     [--host 127.0.0.1] [--port 8080] [--token TOKEN] [--size 512|256]
                     [--checkpoint CKPT] [--threads N] [limits: see --help]
    python server.py --ray [--replicas N | --autoscale MIN:MAX] [--ray-address auto] ...

Access: the server listens on 127.0.0.1 unless told otherwise. On any other address it
requires an access token (--token or $TALKING_HEAD_TOKEN; without one it makes one and
prints it), sent as "Authorization: Bearer TOKEN" or "?token=TOKEN" on every route except
the page itself (GET / and /static/: the same files for everyone, no data; the page passes
the token from its own URL on to every request it makes).

With --ray the same API is served from Ray Serve replicas, each one engine with up to
--max-sessions sessions; a session stays on the replica that started it (serve/ray_app.py).
Without it Ray is never imported.

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

from aiohttp import web

from serve.http import QuietBadHttp
from serve.limits import Limits, check_limits, limit_flags
from serve.routes import make_app
from serve.sessions import NOT_RAISED, SESSION_THREADS, raise_media_path
from serve.startup import STARTUP_ERRORS, build_server
from stream.engine import DEFAULT_CHECKPOINT, ENGINES
from stream.webrtc import is_loopback, use_loopback_for_media

log = logging.getLogger("server")


def make_parser() -> argparse.ArgumentParser:
    """The server's flags (serve/ray_app.application reads their defaults too)."""
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
    parser.add_argument("--raise-media-path", action="store_true",
                        help="run the media path above the usual nice (needs CAP_SYS_NICE) so "
                             "that the sessions' compute runs level with other busy processes "
                             "instead of below them: pictures keep coming beside them")
    parser.add_argument("--fault-injection", action="store_true",
                        help="tests only: accept {\"type\": \"fault\"} websocket messages that "
                             "break one session on purpose (loopback only)")
    parser.add_argument("--verbose", action="store_true")
    ray_flags(parser)
    limit_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
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
    if not args.ray and (args.replicas is not None or args.autoscale or args.ray_address):
        parser.error("--replicas, --autoscale and --ray-address go with --ray")
    if args.replicas is not None and args.autoscale:
        parser.error("--replicas N or --autoscale MIN:MAX, not both")
    if args.replicas is not None and args.replicas < 1:
        parser.error("--replicas must be at least 1")

    if args.ray:                        # the same API from Ray Serve replicas
        from serve.ray_app import serve_on_ray  # Ray is imported only here

        return serve_on_ray(args, limits, token)
    try:
        server = build_server(args, limits, token)
    except STARTUP_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    if loopback:
        use_loopback_for_media()
    if args.raise_media_path and not raise_media_path():
        print(NOT_RAISED, flush=True)
    print(f"serving http://{args.host}:{args.port} ({server.engine.name} engine, {args.size} px, "
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


def ray_flags(parser: argparse.ArgumentParser) -> None:
    """Serving from Ray Serve replicas (serve/ray_app.py); every other flag keeps its meaning,
    per replica."""
    group = parser.add_argument_group("Ray Serve (pip install '.[ray]')")
    group.add_argument("--ray", action="store_true",
                       help="serve the same API from Ray Serve replicas, each one engine with "
                            "up to --max-sessions sessions")
    group.add_argument("--replicas", type=int, help="replicas, fixed (default 1)")
    group.add_argument("--autoscale", metavar="MIN:MAX", type=replica_range,
                       help="between MIN and MAX replicas, by sessions per replica (one "
                            "with a session short of compute counts as full); a replica is "
                            "removed only once its sessions have ended")
    group.add_argument("--ray-address", help="an existing cluster ('auto': the one `ray "
                                             "start` made here; default: start one here)")
    group.add_argument("--ray-cpus", type=int,
                       help="CPUs of the cluster started here (default: this machine's)")
    group.add_argument("--replica-cpus", type=float, default=1.0,
                       help="CPUs reserved per replica (default 1)")


def replica_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not (sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected MIN:MAX with 1 <= MIN <= MAX")
    return int(low), int(high)


if __name__ == "__main__":
    sys.exit(main())
