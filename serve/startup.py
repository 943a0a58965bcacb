"""One engine and its Server, from the server's flags: what `python server.py` and every Ray
replica (serve/ray_app.py) start with, so that both serve the same thing.

The order matters: a bad --avatar is said before the engine loads; the onnx engine exports its
networks on a first start (said, line by line); the renderer is warmed up before the first
session, so that no session stalls on it.
"""

import gc
from pathlib import Path

import numpy as np
import torch

from export.warm import ExportError, warm_onnx
from models.face import PortraitError
from models.video_avatar import VideoAvatar
from serve.avatars import BUNDLED_AVATARS
from serve.limits import Limits
from serve.preparation import prepare_default, prepare_photo
from serve.sessions import Server, SessionIds
from stream.batching import BatchedEngine
from stream.engine import EngineError, default_engine, make_engine

STARTUP_ERRORS = (EngineError, PortraitError, OSError, ExportError)   # said, no traceback


def build_server(args, limits: Limits, token: str | None, ids: SessionIds | None = None,
                 say=print) -> Server:
    """The engine (args.engine, .device, .checkpoint, .size, .threads), the bundled avatars
    and args.avatar as the default, warmed up. Raises one of STARTUP_ERRORS."""
    if args.threads:
        torch.set_num_threads(args.threads)
    default = prepare_files(args, limits, say)
    engine = make_engine(args.engine or default_engine(args.device), args.checkpoint,
                         args.device)
    if args.device == "cuda":            # sessions share the GPU's calls: 8 sessions at 512
        engine = BatchedEngine(engine)   # px held 25 fps on an H200 batched, 4 alone (RESULTS)
    server = Server(engine, args.size, limits, token=token,
                    fault_injection=args.fault_injection, ids=ids)
    for avatar_id, path in BUNDLED_AVATARS.items():
        server.avatars.add(avatar_id, avatar_id.replace("_", " "),
                           prepare_photo(path, args.size), bundled=True)
    if default is not None:
        server.avatars.add("default", Path(args.avatar).stem, default, bundled=True)
        server.avatars.default = "default"
    server.avatars.trim_cache()
    # warm up (the onnx engine exports its renderer on first use): no first-session stall
    avatar = server.avatars.entries[server.avatars.default].avatar
    engine.render(avatar.reference if isinstance(avatar, VideoAvatar) else avatar,
                  np.zeros((2, engine.motion.config.motion_dim), np.float32))
    if isinstance(avatar, VideoAvatar):      # its mouth window's renderer: loaded, or being
        engine.draws_windows(args.size)      #   exported in the background from now on
    gc.collect()             # the models and avatars stay: the collector's full passes skip
    gc.freeze()              #   them from now on (serve/sessions.py collect_garbage)
    return server


def prepare_files(args, limits: Limits, say=print):
    """The default avatar (args.avatar: prepared, or from the cache; None: the bundled one)
    and, for the onnx engine, the exported networks (a first start exports them). Also what
    `server.py --ray` does once before its replicas start, so that a bad --avatar is said at
    once and the replicas find both in the cache."""
    default = None
    if args.avatar:                     # first: a bad one is said before the engine loads
        default = prepare_default(args.avatar, args.size, limits)
    if (args.engine or default_engine(args.device)) == "onnx":   # said, line by line
        warm_onnx(args.checkpoint, args.size, say=lambda line: say(line, flush=True))
    return default
