"""Churn: 200 sessions opened and closed over loopback, some abruptly; the server process must
end up where it started (threads, file descriptors, memory), and stop cleanly on SIGTERM.

One server process (256 px, at most 16 sessions, 3 s peer and connect timeouts). Sessions
come four at a time from aiortc peers and headless clients in this process, in seven kinds,
round robin:
- clean: connects, receives video, DELETE /sessions/{id}, closes its peer connection;
- no goodbye: connects, receives video, closes its peer connection only;
- never connects: the offer is answered but the answer never applied (the server's connect
  timeout ends it);
- websocket: connects, opens the session's websocket, pushes PCM, then drops both without
  a word;
- killed: child processes open sessions that stream and are SIGKILLed (the server's peer
  timeout ends them);
- headless: a headless session (POST /sessions, its media websocket, integrations/client)
  receives a slot, pushes PCM and closes; "headless vanishes" opens its media websocket by
  hand, pushes PCM, and resets the connection without a close frame.
The server's threads (/proc/PID/task), open file descriptors (/proc/PID/fd) and resident
memory (/proc/PID/status) are read after a warm-up (the first sessions allocate what every
later one reuses: codec contexts, the torch allocator's pools, the executor's threads; then
the server's maximum of sessions at once, the allocator's high-water mark) and
in the middle of the run and after the last session is gone, each time with no session
live. Bounds, and why, at the asserts.
"""

import asyncio
import json
import signal
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_server import raw_websocket, report, start_server, ws_frame

from benchmarks.webrtc_client import (
    ROOT,
    Client,
    Refused,
    clients_first,
    http_session,
    parse_metrics,
    process_figures,
    speech_clip,
)

sys.path.insert(0, str(ROOT / "integrations" / "client"))
from talking_head_client import ServerError, TalkingHeadClient  # noqa: E402

TOTAL = 200
WARMUP = 20                  # sessions before the baseline is read (and MAX_SESSIONS at once)
MAX_SESSIONS = 16
AT_ONCE = 4
KILLED_CHILDREN, KILLED_EACH = 3, 2
KINDS = ("clean", "no goodbye", "never connects", "websocket", "headless", "headless vanishes")
THREAD_SLACK = 4             # executor threads are made on demand, up to cores + 4
FD_SLACK = 20
RSS_SLACK_MB = 120
RSS_HALF_SLACK_MB = 45


@pytest.fixture(scope="module")
def churn_server():
    s = start_server("churn_server", "--max-sessions", str(MAX_SESSIONS), "--peer-timeout", "3",
                     "--connect-timeout", "3")
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text(errors="replace"), s.log_tail(80)


async def live_sessions(http, url: str) -> int:
    async with http.get(url + "/health") as r:
        return (await r.json())["sessions"]


async def wait_for_no_sessions(http, url: str, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while await live_sessions(http, url) > 0:
        assert time.monotonic() - started < timeout, "sessions did not end"
        await asyncio.sleep(0.25)
    return time.monotonic() - started


async def headless_session(url: str, pcm: bytes, vanish: bool) -> str:
    """One headless session: a slot received, a second of PCM pushed, then closed; or, when
    `vanish`, its media websocket opened by hand and reset without a close frame."""
    async with TalkingHeadClient(url) as client:
        try:
            session = await client.create_session(rate=16000, connect=not vanish)
        except ServerError as e:
            return "full" if e.status == 503 else f"refused {e.status}"
        if vanish:
            sock = await asyncio.to_thread(raw_websocket, url, f"/sessions/{session.id}/media")
            sock.sendall(ws_frame(json.dumps({"type": "format", "rate": 16000}).encode())
                         + ws_frame(pcm[:32000], opcode=2))
            got = await asyncio.to_thread(sock.recv, 4096)     # the "ready" message
            await asyncio.sleep(0.3)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()                              # gone: a reset, no close frame
            return "ok" if got else "no video"
        item = await session.receive(timeout=60)
        while item is not None and item.kind != "slot":
            item = await session.receive(timeout=60)
        await session.send_pcm(pcm[:32000], rate=16000)
        await asyncio.sleep(0.3)
        await session.close()
        return "ok" if item is not None else "no video"


async def one_session(http, url: str, kind: str, pcm: bytes) -> str:
    """Open and close one session of `kind`; returns what happened ("ok", "full", ...)."""
    if kind.startswith("headless"):
        return await headless_session(url, pcm, vanish=kind == "headless vanishes")
    client = Client(url)
    try:
        if kind == "never connects":
            from aiortc import RTCConfiguration, RTCPeerConnection

            client.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(url + "/offer", json={"sdp": pc.localDescription.sdp,
                                                       "type": "offer"}) as r:
                if r.status == 503:
                    return "full"
                assert r.status == 200, await r.text()
            return "ok"                              # the answer is never applied
        try:
            await client.connect(http)
        except Refused as e:
            return "full" if e.status == 503 else f"refused {e.status}"
        try:
            await client.wait_for_video(frames=1, timeout=60)
        except TimeoutError:                     # opened and closed, but no picture in time
            outcome = "no video"
        else:
            outcome = "ok"
        if kind == "clean":
            async with http.delete(f"{url}/sessions/{client.session}") as r:
                assert r.status == 200
        elif kind == "websocket":
            sock = await asyncio.to_thread(raw_websocket, url, f"/ws/{client.session}")
            sock.sendall(ws_frame(json.dumps({"type": "format", "rate": 16000}).encode())
                         + ws_frame(pcm[:32000], opcode=2))
            await asyncio.sleep(0.3)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()                              # gone: a reset, no close frame
        return outcome
    finally:
        await client.close()


async def hold_full(http, url: str, pcm: bytes) -> None:
    """As many sessions as the server allows at once (MAX_SESSIONS: half WebRTC peers, half
    headless), each with a picture received, then all closed: the warm-up's peak, so that the
    allocator's high-water mark (which depends on how many sessions were live at once, and
    the run's killed and never-connected sessions pile up to the limit) lies before the
    baseline."""
    peers = [Client(url) for _ in range(MAX_SESSIONS // 2)]
    async with TalkingHeadClient(url) as headless:
        try:
            await asyncio.gather(*(p.connect(http) for p in peers))
            sessions = await asyncio.gather(*(headless.create_session(rate=16000)
                                              for _ in range(MAX_SESSIONS - len(peers))))
            await asyncio.gather(*(p.wait_for_video(frames=1, timeout=60) for p in peers),
                                 *(s.send_pcm(pcm[:32000], rate=16000) for s in sessions),
                                 *(s.receive(timeout=60) for s in sessions))
            for s in sessions:
                await s.close()
        finally:
            for p in peers:
                await p.close()


async def churn(url: str, pid: int) -> dict:
    pcm = (speech_clip(names=("Front_Center",), lead=0.0, pause=0.0, tail=0.0).audio[::3]
           * 32767).astype("<i2").tobytes()
    outcomes: dict[str, int] = {}
    timeline = []
    done = 0
    gate = asyncio.Semaphore(AT_ONCE)
    async with await http_session() as http:

        async def run(kind: str) -> None:
            nonlocal done
            async with gate:
                for _ in range(60):                  # "full" while killed ones linger: retry
                    outcome = await one_session(http, url, kind, pcm)
                    if outcome != "full":
                        break
                    await asyncio.sleep(0.5)
                key = f"{kind}: {outcome}"
                outcomes[key] = outcomes.get(key, 0) + 1
                done += 1
                if done % 20 == 0:
                    timeline.append({"sessions": done, **process_figures(pid)})

        in_process = TOTAL - KILLED_CHILDREN * KILLED_EACH
        kinds = [KINDS[i % len(KINDS)] for i in range(in_process)]
        started = time.perf_counter()
        await asyncio.gather(*(run(k) for k in kinds[:WARMUP]))
        await wait_for_no_sessions(http, url)
        await hold_full(http, url, pcm)
        await wait_for_no_sessions(http, url)
        await asyncio.sleep(2.0)
        baseline = process_figures(pid)
        async def children():
            for _ in range(KILLED_CHILDREN):             # one at a time, beside the rest
                await killed_clients(url)

        half = (len(kinds) + WARMUP) // 2
        await asyncio.gather(*(run(k) for k in kinds[WARMUP:half]), children())
        await wait_for_no_sessions(http, url)
        await asyncio.sleep(2.0)
        middle = process_figures(pid)
        await asyncio.gather(*(run(k) for k in kinds[half:]))
        drained = await wait_for_no_sessions(http, url)
        outcomes["killed: ok"] = KILLED_CHILDREN * KILLED_EACH
        settle = []
        for _ in range(30):                           # threads wind down within seconds
            await asyncio.sleep(1.0)
            settle.append(process_figures(pid))
            if settle[-1]["threads"] <= baseline["threads"]:
                break
        lingering = (thread_states(pid)               # what the assertion below will show
                     if settle[-1]["threads"] > baseline["threads"] + THREAD_SLACK else None)
        async with http.get(url + "/metrics") as r:
            metrics = await r.text()
        if lingering is not None:                     # Python's, and native pools
            lingering["python"] = int(parse_metrics(metrics)["talking_head_process_python_threads"])
        seconds = time.perf_counter() - started
    return {"baseline": baseline, "middle": middle, "after": settle[-1], "timeline": timeline,
            "lingering_threads": lingering,
            "sessions_at_middle": half + KILLED_CHILDREN * KILLED_EACH,
            "outcomes": outcomes, "seconds": round(seconds, 1),
            "drained_after_last_s": round(drained, 1),
            "metrics": {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                        if line.startswith("talking_head_sessions_")}}


def thread_states(pid: int) -> dict[str, int]:
    """How many of a process's threads are in each (name, state, nice): sleeping (S) threads
    that outlived their session are a leak; runnable (R) ones at the sessions' nice are
    starved."""
    states: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:                               # ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()  # from field 3 (state); nice is field 19
        key = f"{name} {fields[0]} nice {fields[16]}"
        states[key] = states.get(key, 0) + 1
    return states


async def killed_clients(url: str) -> None:
    """A child process that opens KILLED_EACH streaming sessions and is then SIGKILLed."""
    child = await asyncio.create_subprocess_exec(
        "nice", "-n", "10", sys.executable, __file__, "killed-clients", url, str(KILLED_EACH),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 120)
        assert line.startswith(b"streaming"), line
    finally:
        child.kill()
        await child.wait()


def test_churn_200_sessions(churn_server):
    pid = churn_server.process.pid
    with clients_first():         # the peers are browsers elsewhere, not the server's rivals
        result = asyncio.run(churn(churn_server.url, pid))
    base, middle, after = result["baseline"], result["middle"], result["after"]
    result["growth"] = {"threads": after["threads"] - base["threads"],
                        "fds": after["fds"] - base["fds"],
                        "rss_mb": round(after["rss_mb"] - base["rss_mb"], 1),
                        "rss_mb_second_half": round(after["rss_mb"] - middle["rss_mb"], 1)}
    report("churn", result)
    opened = sum(v for k, v in result["outcomes"].items()
                 if k.endswith(": ok") or k.endswith(": no video"))
    blind = sum(v for k, v in result["outcomes"].items() if k.endswith(": no video"))
    assert opened == TOTAL, result["outcomes"]
    # each session is to show a picture within 60 s; on a machine loaded by other jobs a
    # few may not (they are opened and closed all the same, which is what is measured)
    assert blind <= TOTAL // 20, result["outcomes"]
    assert result["metrics"]["talking_head_sessions_started_total"] >= TOTAL
    # Every session's threads (motion, render, media clock) end with it: the count comes
    # back to the baseline, give or take the default executor's threads, which are made on
    # demand (up to cores + 4 = 6 here) and then kept.
    assert after["threads"] <= base["threads"] + THREAD_SLACK, result
    # Sockets (ICE, the websocket, HTTP keep-alive) and pipes close with their session;
    # a few keep-alive connections may still be open.
    assert after["fds"] <= base["fds"] + FD_SLACK, result
    # Memory, read with no session live. The allocator's high-water mark follows the most
    # sessions live at once (a CI run whose warm-up peaked lower grew 216 MB, level over its
    # second half); the warm-up holds the server's maximum, so from the baseline on a measured
    # run moved by -9 MB (+25 MB at the middle). In the whole suite on a loaded 2-core machine
    # the mark still rose 81 MB over the first 60 sessions after it and fell 27 MB over the
    # second half: the second half's bound is the leak check. A leak of 0.6 MB a session (a
    # few seconds of one session's audio and frames) would fail both bounds.
    assert after["rss_mb"] - base["rss_mb"] < RSS_SLACK_MB, result
    assert after["rss_mb"] - middle["rss_mb"] < RSS_HALF_SLACK_MB, result


def test_sigterm_stops_cleanly(churn_server):
    """SIGTERM while two sessions stream (one with a websocket open): the server stops
    accepting connections at once, tells each client why, closes every session, and exits
    with status 0 and no traceback. Runs last: it ends the module's server."""
    import aiohttp

    port = int(churn_server.url.rsplit(":", 1)[1])

    async def run():
        async with await http_session() as http:
            clients = [Client(churn_server.url) for _ in range(2)]
            await asyncio.gather(*(c.connect(http) for c in clients))
            await asyncio.gather(*(c.wait_for_video() for c in clients))
            ws = await http.ws_connect(f"{churn_server.url}/ws/{clients[0].session}")
            await ws.receive_json()
            signalled = time.perf_counter()
            churn_server.process.send_signal(signal.SIGTERM)
            refused_after = None
            while time.perf_counter() - signalled < 5:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        pass
                except OSError:
                    refused_after = time.perf_counter() - signalled
                    break
                await asyncio.sleep(0.05)
            closing = None
            while True:
                msg = await ws.receive(timeout=20)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING):
                    closing = (msg.data, msg.extra)            # the code the server sent
                    break
            exit_code = await asyncio.to_thread(churn_server.process.wait, 30)
            exited_after = time.perf_counter() - signalled
            frames = [len(c.video) for c in clients]
            await asyncio.sleep(1.0)
            late = [len(c.video) - n for c, n in zip(clients, frames, strict=True)]
            states = [c.pc.connectionState for c in clients]
            await asyncio.gather(*(c.close() for c in clients))
            await ws.close()
        return refused_after, closing, exit_code, exited_after, late, states

    refused_after, closing, exit_code, exited_after, late, states = asyncio.run(run())
    log = churn_server.log.read_text(errors="replace")
    result = {"refusing_new_connections_after_s": refused_after and round(refused_after, 2),
              "websocket_close": list(closing), "exit_code": exit_code,
              "exited_after_s": round(exited_after, 2), "frames_after_exit": late,
              "client_connection_states": states,
              "sessions_ended_server_stopping": log.count("ended: server stopping")}
    report("sigterm", result)
    assert refused_after is not None and refused_after < 2.0, result
    assert closing == (1001, "session ended: server stopping"), result
    assert exit_code == 0 and exited_after < 15.0, result
    assert result["sessions_ended_server_stopping"] == 2, result
    assert late == [0, 0], result


async def _killed_clients_main(url: str, count: int) -> None:
    async with await http_session() as http:
        clients = [Client(url) for _ in range(count)]
        for c in clients:
            for _ in range(100):
                try:
                    await c.connect(http)
                    break
                except Refused:                      # full for a moment: try again
                    await c.close()
                    await asyncio.sleep(0.5)
        await asyncio.gather(*(c.wait_for_video(frames=1, timeout=60) for c in clients))
        print("streaming", json.dumps([c.session for c in clients]), flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__" and sys.argv[1:2] == ["killed-clients"]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    np.seterr(all="ignore")
    asyncio.run(_killed_clients_main(sys.argv[2], int(sys.argv[3])))
