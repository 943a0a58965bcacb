"""Autoscaling on sessions: `python server.py --ray --autoscale 1:3 --max-sessions 1`, headless
sessions added one by one, then ended one by one, the replicas counted all along.

    python -m benchmarks.ray_autoscale [--size 256] [--json OUT.json]

The server starts its own single-node Ray cluster on 127.0.0.1 (--replica-cpus 0.5: three
replicas on this machine's 2 logical CPUs; --peer-timeout 3: a session whose client has gone
ends 3 s later). This process joins the cluster as a second driver and samples Serve's view of
the deployment's replicas (STARTING, RUNNING, STOPPING) every 0.5 s, and counts the replica
processes alive (/proc: a draining replica is still one).

    up      sessions are added back to back, each as soon as the one before it is serving: the
            autoscaler keeps one replica spare (serve/ray_autoscale.py), so a session that
            comes sooner than a replica starts is refused (503) and asked for again every
            0.25 s. Measured: refused -> accepted, and refused -> Serve reports the new
            replica RUNNING. A session beyond MAX replicas is refused: "full".
    down    the sessions end oldest first. Serve stops the newest replica first, which holds
            the last session: it drains (STOPPING, its session streams on) until that session
            ends, then goes; one more goes after the 30 s scale-down delay. (A draining
            replica is out of the routers' set: the DELETE of its session answers 410 from
            another replica; the session ends when its websocket closes, after --peer-timeout.)

Checked: no live session is ended by scaling: every session's media websocket receives slots
until this client closes it (never closed by the server; the last slot less than 1 s before the
close; the largest gap between slots is reported). Bounded: every wait has a deadline (the run
takes about 2 minutes; at most about 5). The cluster is taken down at the end, failure or
not: the server is stopped (SIGINT), and any of its processes still running after that are
killed by pid; none is left.
Output: a table (time, sessions, replicas, event) and out/benchmarks/ray_autoscale.json.
"""

import argparse
import asyncio
import datetime
import json
import os
import re
import signal
import threading
import time
import traceback
from pathlib import Path

from talking_head_client import ServerError, TalkingHeadClient

from benchmarks.audio_features import cpu_name
from benchmarks.webrtc_client import ROOT, process_tree, start_server
from serve.ray_sessions import owner

APP, DEPLOYMENT = "talking_head", "TalkingHead"      # serve/ray_app.py
LOW, HIGH = 1, 3
SCALE_DOWN_DELAY_S = 30.0                            # serve/ray_app.py's downscale_delay_s
REPLICA_PROCESS = "ServeReplica:talking_head:TalkingHead"


class Sampler(threading.Thread):
    """Every 0.5 s: each replica's state as Serve reports it, and the replica processes alive
    below the server (`pid`)."""

    def __init__(self, pid: int, t0: float):
        super().__init__(daemon=True)
        self.pid, self.t0 = pid, t0
        self.samples: list[dict] = []
        self.halt = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        while not self.halt.wait(0.5):
            try:
                details = client.get_serve_details()
                replicas = details["applications"][APP]["deployments"][DEPLOYMENT]["replicas"]
                states = {r["replica_id"]: str(r["state"]).rsplit(".", 1)[-1]
                          for r in replicas}
            except Exception as e:                  # the cluster is going: stop sampling
                self.error = f"{type(e).__name__}: {e}"
                return
            self.samples.append({"t": round(time.perf_counter() - self.t0, 2),
                                 "states": states, "processes": replica_processes(self.pid)})

    def latest(self) -> dict:
        return self.samples[-1] if self.samples else {"states": {}, "processes": 0}

    def first(self, test) -> float | None:
        """When (s after t0) a sample first passed `test`."""
        return next((s["t"] for s in self.samples if test(s)), None)


def replica_processes(pid: int) -> int:
    count = 0
    for p in process_tree(pid):
        try:
            count += REPLICA_PROCESS in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
        except OSError:
            pass
    return count


def count(states: dict, state: str) -> int:
    return sum(1 for s in states.values() if s == state)


class Watched:
    """One headless session and a task reading its media websocket: slots received, the
    largest gap between two, whether the server closed it."""

    def __init__(self, name: str, session, t0: float):
        self.name, self.session, self.t0 = name, session, t0
        self.slots, self.last, self.max_gap = 0, None, 0.0
        self.closing = False                  # this client is closing it
        self.server_closed: tuple[float, int | None] | None = None
        self.task = asyncio.ensure_future(self.read())

    async def read(self) -> None:
        while True:
            item = await self.session.receive()
            now = time.perf_counter()
            if item is None:
                if not self.closing:
                    self.server_closed = (round(now - self.t0, 2), self.session.close_code)
                return
            if item.kind == "slot":
                if self.last is not None:
                    self.max_gap = max(self.max_gap, now - self.last)
                self.slots, self.last = self.slots + 1, now

    async def close(self) -> dict:
        """End the session as a client does (DELETE, then the websocket closed): what
        happened to it until now."""
        before = time.perf_counter()
        self.closing = True
        http = self.session.client.http
        async with http.delete(f"{self.session.client.url}/sessions/{self.session.id}") as r:
            delete = (r.status, (await r.json(content_type=None)).get("error", "ended"))
        await self.session.ws.close()
        self.task.cancel()
        return {"session": self.name, "replica": owner(self.session.id), "slots": self.slots,
                "max_gap_ms": round(1000 * self.max_gap),
                "last_slot_before_close_ms": None if self.last is None
                else round(1000 * (before - self.last)),
                "closed_by_server": self.server_closed, "delete": delete}


async def scenario(url: str, sampler: Sampler, t0: float, log: list) -> dict:
    """Sessions up one by one to HIGH (and one more, refused), then down one by one."""
    live: list[Watched] = []

    def event(text: str) -> None:
        log.append({"t": round(time.perf_counter() - t0, 2), "sessions": len(live),
                    **summary(sampler.latest()), "event": text})
        print(row(log[-1]), flush=True)

    async def wait_for(test, what: str, timeout: float) -> bool:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if test(sampler.latest()):
                return True
            await asyncio.sleep(0.25)
        event(f"(not within {timeout:.0f} s: {what})")
        return False

    result = {"up": [], "down": []}
    async with TalkingHeadClient(url) as client:
        await wait_for(lambda s: count(s["states"], "RUNNING") >= LOW, "Serve's status", 10)
        event("serving: first replica up")
        for n in range(1, HIGH + 2):
            refused_at = refusal = None
            deadline = time.perf_counter() + (5.0 if n > HIGH else 60.0)
            while True:
                try:
                    session = await client.create_session(format="jpeg", rate=16000)
                    break
                except ServerError as e:
                    if e.status != 503:
                        raise
                    if refused_at is None:
                        refused_at, refusal = time.perf_counter(), str(e)
                        event(f"session {n} refused (503): {refusal[:60]}")
                    if time.perf_counter() > deadline:
                        session = None
                        break
                    await asyncio.sleep(0.25)
            if session is None:
                event(f"session {n} refused for {time.perf_counter() - refused_at:.0f} s "
                      f"(max {HIGH} replicas, each full)")
                result["beyond_max"] = {"status": 503, "error": refusal}
                break
            live.append(Watched(f"s{n}", session, t0))
            accepted = time.perf_counter()
            replica = owner(session.id)
            step = {"session": n, "replica": replica, "refused": refusal is not None}
            if refused_at is not None:
                step["refused_at_s"] = round(refused_at - t0, 2)
                step["refused_to_accepted_s"] = round(accepted - refused_at, 2)
            result["up"].append(step)
            event(f"session {n} serving on replica {replica}"
                  + (f", {step['refused_to_accepted_s']} s after refused" if refusal else ""))

        await wait_for(lambda s: count(s["states"], "RUNNING") == HIGH, f"{HIGH} replicas", 30)
        await asyncio.sleep(5.0)
        event(f"steady: {len(live)} sessions streaming")

        # down: the oldest session first; Serve stops the newest replica first
        first = live.pop(0)
        result["down"].append(await first.close())
        event(f"session {first.name} ended (DELETE {result['down'][-1]['delete'][0]})")
        await asyncio.sleep(3.0)
        second = live.pop(0)
        result["down"].append(await second.close())
        event(f"session {second.name} ended (DELETE {result['down'][-1]['delete'][0]})")
        ended = time.perf_counter()
        if await wait_for(lambda s: count(s["states"], "RUNNING") < HIGH,
                          "a replica stopping", SCALE_DOWN_DELAY_S + 30):
            last = live[0]
            states = sampler.latest()["states"]
            stopping = [r for r, state in states.items() if state == "STOPPING"]
            draining = owner(last.session.id) in stopping
            result["scale_down_after_s"] = round(time.perf_counter() - ended, 1)
            result["stopped_replica_holds_live_session"] = draining
            event(f"replica {', '.join(stopping) or '?'} stopping, "
                  + (f"draining: {last.name} still live on it" if draining else "empty"))
            slots_then = last.slots
            await asyncio.sleep(10.0)
            result["slots_while_draining"] = last.slots - slots_then
            event(f"{last.name} streamed {last.slots - slots_then} slots in 10 s while its "
                  "replica drained")
        last = live.pop(0)
        result["down"].append(await last.close())
        event(f"session {last.name} ended (DELETE {result['down'][-1]['delete'][0]})")
        ended = time.perf_counter()
        if await wait_for(lambda s: not count(s["states"], "STOPPING")
                          and s["processes"] == len(s["states"]), "the drained replica gone",
                          30):
            result["drained_replica_gone_after_s"] = round(time.perf_counter() - ended, 1)
            event(f"drained replica gone, {result['drained_replica_gone_after_s']} s after "
                  "its last session ended")
        if await wait_for(lambda s: count(s["states"], "RUNNING") == LOW
                          and s["processes"] == LOW, f"down to {LOW} replica",
                          SCALE_DOWN_DELAY_S + 30):
            result["down_to_min_after_s"] = round(time.perf_counter() - ended, 1)
            event(f"down to {LOW} replica, {result['down_to_min_after_s']} s after the last "
                  "session ended")
    return result


def summary(sample: dict) -> dict:
    states = sample["states"]
    return {"replicas": count(states, "RUNNING"), "starting": count(states, "STARTING"),
            "stopping": count(states, "STOPPING"), "processes": sample["processes"]}


def row(entry: dict) -> str:
    extra = "".join(f" +{entry[k]} {k}" for k in ("starting", "stopping") if entry[k])
    replicas = f"{entry['replicas']}{extra}"
    return f"{entry['t']:7.1f}  {entry['sessions']:8d}  {replicas:22s}  {entry['event']}"


def stop_cluster(server, pids: set[int]) -> list[int]:
    """Stop the server (it takes the cluster down), then kill by pid whatever of it is left.
    Returns the pids that had to be killed."""
    pids |= set(process_tree(server.process.pid)) - {server.process.pid}
    server.stop()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.5)
    left = [p for p in pids if Path(f"/proc/{p}").exists()]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    return left


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, choices=[256, 512])
    parser.add_argument("--json", default=str(ROOT / "out" / "benchmarks" /
                                              "ray_autoscale.json"))
    args = parser.parse_args(argv)
    # read when Ray is imported: join on 127.0.0.1; token authentication, as a cluster that
    # ray.init starts (the server's) has by default, with its token from ~/.ray/auth_token
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    command = ["--ray", "--autoscale", f"{LOW}:{HIGH}", "--max-sessions", "1", "--size",
               str(args.size), "--replica-cpus", "0.5", "--peer-timeout", "3"]
    log_path = ROOT / "out" / "benchmarks" / "ray_autoscale_server.log"
    results = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
               "cores": os.cpu_count(), "command": "python server.py " + " ".join(command)}
    started = time.perf_counter()
    server = sampler = None
    log, ok = [], False
    try:
        server = start_server(log_path, *command, timeout=90.0)
        deadline = time.monotonic() + 90.0
        while "serving http" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise RuntimeError(f"the server did not start:\n{server.log_tail()}")
            time.sleep(0.2)
        t0 = time.perf_counter()
        results["start_s"] = round(t0 - started, 1)
        address = re.search(r"ray: started a local cluster in [\d.]+ s \(address (\S+)\)",
                            log_path.read_text(errors="replace")).group(1)
        ray.init(address=address, namespace="benchmark", log_to_driver=False,
                 logging_level="WARNING")
        sampler = Sampler(server.process.pid, t0)
        sampler.start()
        print(f"{'time s':>7}  {'sessions':>8}  {'replicas (running)':22s}  event", flush=True)
        results.update(asyncio.run(asyncio.wait_for(scenario(server.url, sampler, t0, log),
                                                    timeout=200.0)))
        for step in results["up"]:          # refused -> Serve reported the replica RUNNING
            running_at = sampler.first(lambda s, r=step["replica"]: s["states"].get(r)
                                       == "RUNNING")
            if step["refused"] and running_at is not None:
                step["refused_to_replica_running_s"] = round(
                    running_at - step["refused_at_s"], 2)
        ok = True
    except Exception as e:                  # said, and written down with what was measured
        traceback.print_exc()
        results["error"] = f"{type(e).__name__}: {e}"
    finally:
        if sampler is not None:
            sampler.halt.set()
            sampler.join(timeout=5)
        ray.shutdown()                     # this driver first: the cluster goes next
        pids: set[int] = set()
        if server is not None:
            results["killed_after_stop"] = stop_cluster(server, pids)
        results["processes_left"] = [p for p in pids if Path(f"/proc/{p}").exists()]
        results["table"] = log
        results["samples"] = sampler.samples if sampler else []
        results["sampler_error"] = sampler.error if sampler else None
        results["total_s"] = round(time.perf_counter() - started, 1)
    down = results.get("down", [])
    never_cut = len(down) == HIGH and all(
        d["closed_by_server"] is None and d["last_slot_before_close_ms"] is not None
        and d["last_slot_before_close_ms"] < 1000 for d in down)
    results["no_live_session_ended"] = never_cut
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k not in ("table", "samples")},
                     indent=1))
    print(f"wrote {args.json}")
    return 0 if ok and never_cut and not results["processes_left"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
