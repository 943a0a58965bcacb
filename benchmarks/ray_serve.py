"""What Ray Serve costs: `python server.py` against `python server.py --ray --replicas 1`, one
WebRTC session each, the same client and figures as `benchmarks.latency --webrtc`.

    python -m benchmarks.ray_serve [--size 256] [--seconds 12] [--json OUT.json]

Per mode: the server is started on 127.0.0.1 (--ray: a fresh single-node cluster, 2 logical
CPUs, no dashboard) and, once it says "serving", one aiortc client sends alsa-utils' speech as
its microphone (benchmarks/latency.py's run_webrtc and definitions):
    first_frame_ms, latency_ms_p50/p95 (microphone in -> picture decoded), fps
    cpu_ms_per_frame   CPU of every process of the server (standalone: the one; --ray: the
                       driver and the whole cluster: GCS, raylet, controller, proxy, replica)
                       over the run / pictures decoded; and the replica's (the engine) alone
    start_s            command -> "serving" (--ray: the cluster's own start, cluster_start_s,
                       printed by the server, is part of it)
    idle_memory_mb     resident memory of all those processes, serving, before the session
"""

import argparse
import datetime
import json
import os
import re
import time
from pathlib import Path

from benchmarks.audio_features import cpu_name
from benchmarks.latency import run_webrtc, speech
from benchmarks.webrtc_client import ROOT, process_tree, process_usage, start_server


def tree_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, resident MiB now) of `pid` and its descendants."""
    cpu = rss = 0.0
    for p in process_tree(pid):
        try:
            cpu += process_usage(p)[0]
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(next(line for line in status.splitlines()
                            if line.startswith("VmRSS:")).split()[1]) / 1024
        except (OSError, StopIteration):
            pass
    return cpu, rss


def run_mode(name: str, args, clip) -> dict:
    extra = ["--size", str(args.size), "--max-sessions", "2"]
    if name == "ray":
        extra += ["--ray", "--replicas", "1", "--ray-cpus", "2"]
    log = ROOT / "out" / "benchmarks" / f"ray_serve_{name}.log"
    started = time.perf_counter()
    server = start_server(log, *extra, timeout=300.0)
    try:
        while "serving http" not in log.read_text(errors="replace"):
            time.sleep(0.1)
        start_s = time.perf_counter() - started
        text = log.read_text(errors="replace")
        cluster = re.search(r"ray: started a local cluster in ([\d.]+) s", text)
        time.sleep(2.0)                                   # settled
        status, health = server.get("/health")
        engine_pid = health.get("pid", server.process.pid)
        _, idle_mb = tree_usage(server.process.pid)
        processes = len(process_tree(server.process.pid))
        cpu0, _ = tree_usage(server.process.pid)
        engine_cpu0 = process_usage(engine_pid)[0]
        wall0 = time.perf_counter()
        run = run_webrtc(server.url, engine_pid, clip, streams=1)
        wall = time.perf_counter() - wall0
        cpu1, busy_mb = tree_usage(server.process.pid)
        engine_cpu = process_usage(engine_pid)[0] - engine_cpu0
    finally:
        server.stop()
    session = run["sessions"][0]
    frames = max(session["output_fps"] * wall, 1)           # pictures sent over the run
    return {"start_s": round(start_s, 1),
            "cluster_start_s": float(cluster.group(1)) if cluster else None,
            "idle_memory_mb": round(idle_mb), "busy_memory_mb": round(busy_mb),
            "processes": processes,
            "first_frame_ms": session["first_frame_ms"],
            "latency_ms_p50": session["latency_ms_p50"],
            "latency_ms_p95": session["latency_ms_p95"], "fps": session["fps"],
            "cpu_ms_per_frame": round(1000 * (cpu1 - cpu0) / frames, 1),
            "engine_process_cpu_ms_per_frame": round(1000 * engine_cpu / frames, 1),
            "cpu_percent_all": round(100 * (cpu1 - cpu0) / wall, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, choices=[256, 512])
    parser.add_argument("--seconds", type=float, default=12.0, help="speech per session")
    parser.add_argument("--json", default=str(ROOT / "out" / "benchmarks" / "ray_serve.json"))
    args = parser.parse_args(argv)
    clip = speech(args.seconds)
    results = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
               "cores": os.cpu_count(), "size": args.size, "seconds": args.seconds}
    for name in ("standalone", "ray"):
        results[name] = run_mode(name, args, clip)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
