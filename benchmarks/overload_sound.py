"""Overload keeps the sound whole: microphone sessions while busy processes take the cores.

    python -m benchmarks.overload_sound [--sessions 10] [--busy 3] [--at-once 1] [--size 256]
                                        [--ray] [--raise-media-path] [--before CHECKOUT]
                                        [--json OUT.json]

Starts the real server (server.py, a child process on a free loopback port) and, one after
the other, `--sessions` aiortc clients in this process, each sending two alsa-utils
recordings (Front_Center, Rear_Right, 1 s of silence around each) as its microphone while
`--busy` processes spin on the machine (started as the session connects; the suite runs one
such session: tests/test_server.py's under-load test), or `--at-once` sessions together
(with --busy 0: the server's own overload). The clients stand for browsers on other
machines: where this process may (root), they run above both servers
(webrtc_client.clients_first). With `--ray`, each server is a one-replica Ray Serve
deployment on a local cluster of its own (`server.py --ray --replicas 1`).
Per run, the server's share of fresh frames; per utterance: the envelope
correlation of the received sound with what the microphone sent, at the best single delay,
on the "media" clock (the RTP timeline a receiver plays by) and on the "sender" clock (RTCP
sender reports per packet: it adds the loaded server's send jitter); see webrtc_client.py.

With `--before CHECKOUT` (another checkout of this repository, e.g. a git worktree of an
older commit) a second server runs from it and the sessions alternate between the two, so
both meet the same machine; the client and the measuring code are this checkout's.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.webrtc_client import (
    ROOT,
    Client,
    clients_first,
    delay_of,
    envelope,
    http_session,
    metrics,
    speech_clip,
    start_server,
    wav_microphone,
)
from stream.engine import DEFAULT_CHECKPOINT

SPIN = "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n"


def _usual_nice() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass


def one_run(url: str, clip, busy: int, at_once: int = 1) -> dict:
    """`at_once` microphone sessions together under `busy` spinning processes: per utterance
    of each (delay ms, correlation) on the media and the sender clock, and the server's
    share of fresh frames over the run."""
    seconds = clip.audio.size / 48000
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN], preexec_fn=_usual_nice)
                 for _ in range(busy)]
    try:
        async def run():
            async with await http_session() as http:
                before = await metrics(http, url)
                clients = [Client(url, microphone=wav_microphone(clip.audio))
                           for _ in range(at_once)]
                for client in clients:
                    await client.connect(http)
                blind = 0                    # sessions that showed no picture in 30 s
                for client in clients:
                    try:
                        await client.wait_for_video(timeout=30)
                    except TimeoutError:
                        blind += 1
                await asyncio.sleep(seconds + 2.0)
                after = await metrics(http, url)
                for client in clients:
                    await client.close()
            return clients, {k: after[k] - before.get(k, 0) for k in after}, blind

        clients, stats, blind = asyncio.run(run())
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    env_sent = envelope(clip.audio)
    utterances = []
    for client in clients:
        sent_at = client.microphone.started
        try:
            heard = {clock: client.received_audio(clock) for clock in ("media", "sender")}
        except RuntimeError:                 # no sound came back (no sender report either)
            sent_at = None
        if sent_at is None:                  # every utterance lost
            utterances += [{"delay_ms": None, "corr_media": 0.0, "corr_sender": 0.0}
                           for _ in clip.utterances]
            continue
        t_sent = sent_at + (np.arange(env_sent.size) + 0.5) * 0.01
        out = {}
        for clock in ("media", "sender"):
            out[clock] = [delay_of(t_sent, env_sent, *heard[clock],
                                   (sent_at + a - 0.3, sent_at + b + 0.3))
                          for a, b in clip.utterances]
        utterances += [{"delay_ms": round(m[0] * 1000), "corr_media": round(m[1], 3),
                        "corr_sender": round(s[1], 3)}
                       for m, s in zip(out["media"], out["sender"], strict=True)]
    shown, repeated = (total(stats, f"talking_head_frames_{k}_total")
                       for k in ("shown", "repeated"))
    return {"utterances": utterances, "no_video": blind,
            "fresh_frame_share": round(shown / max(shown + repeated, 1), 3)}


def total(stats: dict[str, float], name: str) -> float:
    """A counter summed over its labels (a Ray replica labels its own with its id)."""
    return sum(v for k, v in stats.items() if k == name or k.startswith(name + "{"))


def summary(rows: list[dict]) -> dict:
    media = [u["corr_media"] for r in rows for u in r["utterances"]]
    sender = [u["corr_sender"] for r in rows for u in r["utterances"]]
    return {"utterances": len(media), "below_0.95_media": sum(c < 0.95 for c in media),
            "below_0.95_sender": sum(c < 0.95 for c in sender),
            "min_media": min(media), "min_sender": min(sender),
            "median_media": float(np.median(media)),
            "fresh_frame_share_median": float(np.median([r["fresh_frame_share"] for r in rows])),
            "sessions_without_video": sum(r["no_video"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=10, help="sessions per server")
    ap.add_argument("--busy", type=int, default=3, help="spinning processes per session")
    ap.add_argument("--at-once", type=int, default=1,
                    help="sessions together (more than the cores hold: the server's own load)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ray", action="store_true", help="servers on Ray Serve, one replica each")
    ap.add_argument("--raise-media-path", action="store_true",
                    help="servers started with --raise-media-path (see server.py)")
    ap.add_argument("--before", type=Path, help="another checkout to compare against")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    roots = {"this": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    clip = speech_clip(("Front_Center", "Rear_Right"))
    logs = ROOT / "out" / "overload_sound"
    ray = ("--ray", "--replicas", "1", "--ray-cpus", str(os.cpu_count())) if args.ray else ()
    ray += ("--raise-media-path",) if args.raise_media_path else ()
    servers = {name: start_server(logs / f"{name}.log", "--size", str(args.size),
                                  "--checkpoint", str(DEFAULT_CHECKPOINT), *ray, root=root)
               for name, root in roots.items()}
    rows = {name: [] for name in roots}
    try:
        with clients_first():
            for i in range(args.sessions):
                for name, server in servers.items():
                    rows[name].append(one_run(server.url, clip, args.busy, args.at_once))
                    print(f"{name} {i}: {json.dumps(rows[name][-1])}", flush=True)
                    time.sleep(2.0)                # the spinners are gone; the next starts anew
    finally:
        for server in servers.values():
            server.stop()
    result = {"sessions": args.sessions, "busy": args.busy, "at_once": args.at_once,
              "size": args.size, "ray": args.ray, "raise_media_path": args.raise_media_path,
              "summary": {name: summary(r) for name, r in rows.items()}, "runs": rows}
    print(json.dumps(result["summary"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
