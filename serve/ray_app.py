"""`python server.py --ray`: the same API from Ray Serve replicas, each one engine and one
standalone server's worth of sessions.

    driver (server.py --ray)   starts a local cluster or joins one (--ray-address), deploys
                               the app, waits for SIGINT/SIGTERM, takes it down
    proxy (one per node)       HTTP and websockets in; serve/ray_proxy.py copies a request's
                               session id into its header, serve/ray_router.py picks the
                               replica: a session's owner, or the one with the most room
    replica (TalkingHead)      serve/startup.build_server (the engine, avatars, a Server) and
                               the app of serve/routes.py on a unix socket, reached through
                               serve/ray_bridge.py: the same handlers as standalone
    WebRTC media               straight between the client and the replica's process

A replica names its sessions so that the id says where they live (serve/ray_sessions.py),
shares the avatars uploaded to it with the others (serve/ray_avatars.py), reports its room to
the routers about once a second (record_routing_stats) and its sessions to the autoscaler
(record_autoscaling_stats) and to the census of the deployment's sessions
(serve/ray_census.py), and fails its health check when its event loop or all of its media
clocks stall. When Serve stops a replica to scale down (--autoscale) it first drains: it takes
no new session and waits for its sessions to end (open websockets are requests in flight,
which Serve waits for too), up to DRAIN_SECONDS. When the server stops, every session ends at
once, each client told. A replica that dies: the proxy closes its websockets with 4410
and a reason, its ids answer 410, a replacement starts.
"""

import asyncio
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from argparse import Namespace
from pathlib import Path

from aiohttp import web

from serve.limits import Limits
from serve.ray_sessions import ReplicaIds
from serve.routes import make_app
from serve.sessions import at_lower_priority
from serve.startup import STARTUP_ERRORS, build_server, prepare_files
from stream.webrtc import is_loopback, use_loopback_for_media

ROOT = Path(__file__).resolve().parent.parent
APP, DEPLOYMENT = "talking_head", "TalkingHead"
PROXY_CALLBACK = "serve.ray_proxy:middlewares"
ROUTER = "serve.ray_router:SessionRouter"
AUTOSCALER = "serve.ray_autoscale:SessionsPolicy"
STATS_PERIOD_S = 1.0           # routing stats: how fresh the routers' view of room is
HEALTH_PERIOD_S = 2.0
STALL_SECONDS = 5.0            # a session's media clock silent this long: the replica is sick
DRAIN_SECONDS = 3600.0         # a stopping replica waits this long for its sessions to end
REQUESTS_PER_SESSION = 8       # max_ongoing_requests per session (websockets stay open)


class TalkingHead:
    """One replica: an engine, its Server and the standalone app, behind the ASGI bridge."""

    async def __init__(self, options: dict, limits: Limits, token: str | None, key: str):
        from ray import serve

        from serve.ray_avatars import SharedAvatars
        from serve.ray_bridge import Bridge
        from serve.ray_census import Census

        args = Namespace(**options)
        replica = serve.get_replica_context().replica_id.unique_id
        loop = asyncio.get_running_loop()   # (below the media of sessions already running)
        self.server = await loop.run_in_executor(None, at_lower_priority, lambda: build_server(
            args, limits, token, ReplicaIds(replica, key)))
        self.server.avatars.shared = SharedAvatars()    # uploads serve every replica
        self.server.cluster = self.census = Census(replica)   # its totals in /metrics
        if is_loopback(args.host):
            use_loopback_for_media()
        self.runner = web.AppRunner(make_app(self.server), access_log=None,
                                    handle_signals=False, shutdown_timeout=5.0)
        await self.runner.setup()
        self.socket = os.path.join(tempfile.mkdtemp(prefix="talking-head-"), "app.sock")
        await web.UnixSite(self.runner, self.socket).start()
        self.bridge = Bridge(self.socket, replica)
        self.progress: dict[str, tuple[int, float]] = {}     # session -> (slots, when seen)
        self.drain = False

    def reconfigure(self, config: dict) -> None:
        """user_config: {"drain": true} while Serve may stop this replica to scale down (its
        sessions are waited for); false when the whole deployment is being taken down."""
        self.drain = bool(config.get("drain"))

    def __serve_build_asgi_app__(self):
        return self.bridge

    def record_routing_stats(self) -> dict:
        server = self.server
        self.census.report(len(server.sessions), server.max_sessions)
        return {"sessions": len(server.sessions), "starting": server.starting,
                "max": server.max_sessions, "short": server.short_of_compute,
                "stopping": server.stopping, "time": time.time()}

    def record_autoscaling_stats(self) -> dict:
        return {"sessions": len(self.server.sessions) + self.server.starting,
                "short": self.server.short_of_compute}

    async def check_health(self) -> None:
        """Fails (Serve then replaces the replica) when the media clocks of this replica's
        WebRTC sessions have all sent nothing for STALL_SECONDS: the process is stuck, not one
        session (one that breaks is ended by the Server's watch). A stalled event loop fails
        it too: this never runs. (Headless clocks are left out: a client that reads slowly
        holds up its own.)"""
        now, seen = time.monotonic(), {}
        for live in list(self.server.sessions.values()):
            if live.pc is None or live.closed or live.clock.first_sent is None:
                continue
            slots, before = live.clock.slots_sent, self.progress.get(live.id)
            seen[live.id] = (slots, now) if before is None or before[0] != slots else before
        self.progress = seen
        if seen and all(now - since > STALL_SECONDS for _, since in seen.values()):
            raise RuntimeError(f"the media clocks of all {len(seen)} sessions stalled "
                               f"(over {STALL_SECONDS:.0f} s without a slot)")

    async def __del__(self):
        """Serve stops this replica: no new session here; when draining, the live ones end
        on their own (their clients leave) within DRAIN_SECONDS; the rest are ended, each
        client told."""
        server = self.server
        server.stopping = True
        deadline = time.monotonic() + (DRAIN_SECONDS if self.drain else 0.0)
        while server.sessions and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
        self.census.leave()
        await self.bridge.close()
        await self.runner.cleanup()


# ----------------------------------------------------------------------------- the driver

def serve_on_ray(args, limits: Limits, token: str | None) -> int:
    """server.py --ray: deploy, serve until SIGINT/SIGTERM, take down. Returns the exit code."""
    cluster_environment(args)          # read when Ray is imported: first
    try:
        from ray import serve
    except ImportError:
        print("error: --ray needs Ray Serve: pip install 'ray[serve]==2.60.0' (or the "
              "project's extra: pip install -e '.[ray]')", file=sys.stderr)
        return 2
    try:
        prepare_files(args, limits)     # once, here: a bad --avatar is said before Ray starts
    except STARTUP_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        start = time.monotonic()
        started_here = connect(args)
        print(f"ray: {'started a local cluster' if started_here else 'joined the cluster'} "
              f"in {time.monotonic() - start:.1f} s (address {cluster_address()})", flush=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        print(f"error: cannot reach the Ray cluster ({args.ray_address or 'local'}): "
              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        app_args = (vars(args), limits, token, secrets.token_hex(16))
        serve.run(deployment(args, drain=bool(args.autoscale)).bind(*app_args), name=APP,
                  route_prefix="/", blocking=False)
        check_proxy(args.port)
    except Exception as e:                          # a replica that cannot start, a bad proxy
        print(f"error: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}",
              file=sys.stderr)
        shutdown()
        return 2
    replicas = (f"{args.replicas or 1} replicas" if not args.autoscale
                else "{}..{} replicas (autoscaled)".format(*args.autoscale))
    print(f"serving http://{args.host}:{args.port} (Ray Serve: {replicas}, up to "
          f"{limits.max_sessions} sessions each, {args.size} px; ready in "
          f"{time.monotonic() - start:.1f} s)", flush=True)
    if token and not is_loopback(args.host):
        print(f"access token required; open http://{args.host}:{args.port}/?token={token}",
              flush=True)
    while not stop.wait(1.0):
        pass
    print("stopping: every session ends, its client told", flush=True)
    if args.autoscale:                  # no more draining: end the sessions now
        serve.run(deployment(args, drain=False).bind(*app_args), name=APP, route_prefix="/",
                  blocking=False)
    shutdown()
    return 0


def cluster_environment(args) -> None:
    """What a cluster started here inherits: the proxies load serve/ray_proxy.py, the workers
    import the project from its root; on a loopback --host, a single node on 127.0.0.1."""
    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = PROXY_CALLBACK
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    if is_loopback(args.host) and not args.ray_address:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def connect(args) -> bool:
    """ray.init: the cluster at --ray-address, or a new local one (True)."""
    import ray

    if args.ray_address:
        check_reachable(args.ray_address)
        ray.init(address=args.ray_address, namespace=APP, log_to_driver=args.verbose,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
        return False
    ray.init(num_cpus=args.ray_cpus or os.cpu_count(), include_dashboard=False,
             namespace=APP, log_to_driver=args.verbose,
             _node_ip_address="127.0.0.1" if is_loopback(args.host) else None)
    return True


def check_reachable(address: str) -> None:
    """ConnectionError at once when nothing listens at the cluster's address: ray.init would
    retry for minutes instead. 'auto' is looked up as Ray does (the last `ray start` here, or
    $RAY_ADDRESS; ConnectionError when there is none); a Ray Client address (ray://) is left
    to ray.init."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    if "://" in address:
        return
    bootstrap = canonicalize_bootstrap_address_or_die(address)
    host, _, port = bootstrap.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5.0).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {bootstrap} ({e.strerror or e}); is "
                              "`ray start --head` running there?") from None


def deployment(args, drain: bool):
    """The TalkingHead deployment with this run's replicas, resources and router; `drain`:
    a replica that Serve stops waits for its sessions to end."""
    from ray import serve
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig

    options = {"max_ongoing_requests": REQUESTS_PER_SESSION * args.max_sessions + 16,
               "ray_actor_options": {"num_cpus": args.replica_cpus,
                                     "num_gpus": 1 if args.device == "cuda" else 0},
               "request_router_config": RequestRouterConfig(
                   request_router_class=ROUTER, request_routing_stats_period_s=STATS_PERIOD_S),
               "health_check_period_s": HEALTH_PERIOD_S,
               "graceful_shutdown_timeout_s": DRAIN_SECONDS + 30.0,
               "user_config": {"drain": drain}}
    if args.autoscale:
        low, high = args.autoscale
        options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=low, max_replicas=high, initial_replicas=low,
            upscale_delay_s=2.0, downscale_delay_s=30.0, metrics_interval_s=1.0,
            look_back_period_s=2.0,
            policy=AutoscalingPolicy(policy_function=AUTOSCALER,
                                     policy_kwargs={"max_sessions": args.max_sessions}))
    else:
        options["num_replicas"] = args.replicas or 1
    return serve.deployment(serve.ingress()(TalkingHead), name=DEPLOYMENT, **options)


def application(config: dict):
    """The app for `serve run serve.ray_app:application size=512 ...` and a KubeRay
    RayService (deploy/kuberay-rayservice.yaml): server.py's flags as config keys (dashes or
    underscores), their defaults for the rest; the token from $TALKING_HEAD_TOKEN. Ray must
    have been started with this module's environment (cluster_environment)."""
    from dataclasses import fields

    from server import make_parser

    args = make_parser().parse_args([])
    for name, value in config.items():
        if not hasattr(args, name.replace("-", "_")):
            raise ValueError(f"unknown setting {name!r}: use server.py's flags")
        setattr(args, name.replace("-", "_"), value)
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    return deployment(args, drain=True).bind(vars(args), limits,
                                             os.environ.get("TALKING_HEAD_TOKEN") or None,
                                             secrets.token_hex(16))


def check_proxy(port: int) -> None:
    """The proxies must run serve/ray_proxy.py (else sessions are not pinned to replicas)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
            headers = r.headers
    except urllib.error.HTTPError as e:
        headers = e.headers
    except OSError:
        return                               # not reachable from here (another node): trust it
    if headers.get("X-Talking-Head-Router") != "sessions":
        raise RuntimeError(
            "the cluster's proxies do not pin sessions to their replicas: start Ray with "
            f"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH={PROXY_CALLBACK} and the project on "
            "PYTHONPATH on every node (see README, 'Many machines')")


def cluster_address() -> str:
    """The cluster's GCS address (host:port): `ray status --address` and other drivers
    (benchmarks/ray_autoscale.py) join it there."""
    import ray

    return ray.get_runtime_context().gcs_address


def shutdown() -> None:
    import ray
    from ray import serve

    from serve.ray_avatars import STORE
    from serve.ray_census import CENSUS

    try:
        serve.shutdown()
        for actor in (STORE, CENSUS):          # the app's detached actors go with it
            try:
                ray.kill(ray.get_actor(actor, namespace=APP))
            except ValueError:                 # never created
                pass
    finally:
        ray.shutdown()
