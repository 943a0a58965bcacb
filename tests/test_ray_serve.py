"""`server.py --ray` on a real local Ray cluster, over loopback: two replicas, two WebRTC
sessions, one replica killed.

The server process (`python server.py --ray --replicas 2`, 256 px, 2 sessions per replica)
starts its own single-node cluster on 127.0.0.1 (2 logical CPUs, no dashboard) and takes it
down when it stops; every process of the cluster is a descendant of it, and whatever is still
running at the end (a failed test, a stuck shutdown) is killed by pid. Clients are this
process's aiortc peers (benchmarks/webrtc_client.py), offering only 127.0.0.1.

Shown: a session on each replica (the session id names its replica), each decoding about
25 fps with a mouth that moves while the microphone speaks; every websocket of a session
lands on its owner (its "ready" names the session: only the owner knows it); a photo and a
video uploaded through the proxy serve sessions on both replicas (the replica that did not
take the upload fetches it from the cluster's shared store), the video's job followed through
the proxy on the replica preparing it; one replica
killed (SIGKILL, a crash): its session's websocket closes with 4410 and a reason within 2 s,
the other session streams on without a gap over 200 ms, a new session starts within 10 s (on
the replica left), and once that one is full the next goes to the replacement; a full
deployment answers 503; the dead replica's ids answer 410, a forged id 404, a replica that is
not running 410.
"""

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import webrtc_client
from benchmarks.webrtc_client import Client, http_session, mouth_box, speech_clip, wav_microphone

pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[ray]'")

from serve.ray_sessions import owner  # noqa: E402  (needs no Ray; after the skip all the same)

OUT = Path(os.environ.get("TEST_OUTPUT_DIR", webrtc_client.ROOT / "out" / "tests"))
SIZE = 256
GRACE_HOPPER = webrtc_client.ROOT / "assets" / "grace_hopper.jpg"
STREAM_SECONDS = 7.0


@pytest.fixture(scope="module")
def ray_server():
    from tests.test_server import checkpoint

    server = webrtc_client.start_server(
        OUT / "ray_server.log", "--ray", "--replicas", "2", "--ray-cpus", "2",
        "--size", str(SIZE), "--checkpoint", str(checkpoint()), "--max-sessions", "2",
        "--peer-timeout", "5", "--verbose", timeout=240.0)
    try:
        deadline = time.monotonic() + 120.0    # /health answers once one replica is up; the
        while "serving http" not in server.log.read_text(errors="replace"):     # both: this
            assert time.monotonic() < deadline and server.process.poll() is None, \
                server.log_tail()
            time.sleep(0.3)
        yield server
    finally:
        cluster = webrtc_client.process_tree(server.process.pid)[1:]
        server.stop()
        time.sleep(1.0)
        left = [pid for pid in cluster if Path(f"/proc/{pid}").exists()]
        for pid in left:                    # a shutdown that did not finish: no leftovers
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        assert not left, f"Ray processes left after the server stopped: {left}"


def mouth_signal(client: Client, avatar_box) -> tuple[np.ndarray, np.ndarray]:
    """(arrival time, contrast around the inner lips) of every received picture."""
    rows, cols = avatar_box
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    times = np.array([t for t, _, _ in client.video])
    signal_ = np.array([(f.to_ndarray(format="rgb24")[rows, cols].astype(np.float32)
                         @ weights).std() for _, f, _ in client.video])
    return times, signal_


def thread_nices(pid: int) -> list[int]:
    """The nice of each thread of process `pid` (Linux: a nice per thread id)."""
    nices = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            nices.append(os.getpriority(os.PRIO_PROCESS, int(tid)))
        except OSError:                                  # the thread ended meanwhile
            continue
    return nices


def mouth_change(times, signal_, start, end) -> float:
    inside = (times >= start) & (times <= end)
    both = inside[1:] & inside[:-1]
    return float(np.abs(np.diff(signal_))[both].mean())


async def ready_of(http, url: str, session: str) -> dict:
    """The first message of a websocket of `session` (its "ready" names the session)."""
    async with http.ws_connect(f"{url}/ws/{session}") as ws:
        msg = await ws.receive(timeout=10)
        return json.loads(msg.data) if msg.type.name == "TEXT" else {"closed": ws.close_code}


async def media_slots(http, url: str, session: str, count: int
                      ) -> tuple[list[dict], np.ndarray | None]:
    """The headers of the first `count` slots of a headless session's media websocket (or
    more, until one has a picture), and the first picture [S, S, 3] float."""
    import io

    from PIL import Image

    headers, picture = [], None
    async with http.ws_connect(f"{url}/sessions/{session}/media") as ws:
        while len(headers) < count or picture is None:
            msg = await ws.receive(timeout=10)
            if msg.type.name == "BINARY":
                size = int.from_bytes(msg.data[:4], "little")
                headers.append(json.loads(msg.data[4:4 + size]))
                if headers[-1]["image_bytes"] and picture is None:
                    image = msg.data[4 + size:4 + size + headers[-1]["image_bytes"]]
                    picture = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"),
                                         np.float32)
            elif msg.type.name != "TEXT":
                break
    return headers[:count], picture


def short_video(folder: Path) -> Path:
    """A 3 s recording of a face (tests/test_server_video.py's source), as an upload."""
    from test_server_video import encode, recording

    return encode(folder / "speaker.mp4", recording(0.0, 3.0), crf=28)


async def video_upload(http, url: str, clip: Path) -> dict:
    """Upload `clip` through the proxy, follow its job there until it is done (or failed, or
    90 s), then start a headless session with it on each replica (each holds one session
    already: the two fill them) and end them."""
    result = {}
    async with http.post(f"{url}/avatars", data=clip.read_bytes(),
                         headers={"Content-Type": "video/mp4"}) as r:
        result["upload"] = (r.status, await r.json())
    started, job = time.perf_counter(), result["upload"][1]
    while job.get("state") in ("queued", "preparing") and time.perf_counter() - started < 90:
        await asyncio.sleep(0.5)
        async with http.get(f"{url}/avatars/jobs/{result['upload'][1]['job']}") as r:
            job = await r.json()
    result["job"], result["prepared_s"] = job, round(time.perf_counter() - started, 1)
    # the replicas' reports (about once a second; later on a busy machine, the one that
    # prepared the video) must show the sessions ended before: else the router still counts
    # them and both new sessions go to one replica
    await cluster_totals(http, url, sessions=2)
    result["sessions"] = []
    for _ in range(2):
        async with http.post(f"{url}/sessions", json={"avatar": job.get("avatar")}) as r:
            result["sessions"].append((r.status, await r.json()))
    for status, reply in result["sessions"]:
        if status == 200:
            await http.delete(f"{url}/sessions/{reply['session']}")
    return result


async def cluster_totals(http, url: str, sessions: int, timeout: float = 10.0) -> dict:
    """The deployment's totals in /metrics (through the proxy: any replica), once they count
    `sessions` (reports come about once a second) or after `timeout`."""
    deadline = time.perf_counter() + timeout
    while True:
        async with http.get(f"{url}/metrics") as r:
            found = webrtc_client.parse_metrics(await r.text())
        totals = {name.split("{")[0].removeprefix("talking_head_cluster_"): value
                  for name, value in found.items() if name.startswith("talking_head_cluster_")}
        if totals.get("sessions") == sessions or time.perf_counter() > deadline:
            return totals
        await asyncio.sleep(0.5)


async def new_session(http, url: str, deadline: float) -> Client:
    """A WebRTC session, asked for again while the deployment is full (503) until
    `deadline` (perf_counter)."""
    while True:
        client = Client(url)
        try:
            await client.connect(http)
            return client
        except webrtc_client.Refused as e:
            await client.close()
            if e.status != 503 or time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.5)


async def watch_close(http, url: str, session: str, closes: dict) -> None:
    """Hold a websocket of `session` open; note when and how it closes."""
    async with http.ws_connect(f"{url}/ws/{session}") as ws:
        while True:
            msg = await ws.receive()
            if msg.type.name in ("CLOSE", "CLOSING", "CLOSED", "ERROR"):
                break
        closes[session] = (time.perf_counter(), ws.close_code,
                           msg.extra if msg.type.name == "CLOSE" else None)


def test_avatar_store_keeps_the_newest_within_its_bounds(monkeypatch):
    """The shared store of uploaded avatars (serve/ray_avatars.py, run here as a plain
    object): the oldest go first past MAX_AVATARS or MAX_BYTES; reading one makes it new;
    one larger than the whole store is refused, the others kept."""
    from serve import ray_avatars

    monkeypatch.setattr(ray_avatars, "MAX_AVATARS", 3)
    monkeypatch.setattr(ray_avatars, "MAX_BYTES", 100)
    store = ray_avatars.AvatarStore()

    def record(size):
        return {"name": "x", "kind": "photo", "key": "k", "files": {"avatar.npz": b"0" * size}}

    for name in "abc":
        assert store.put(name, record(30))
    assert store.get("a") is not None                     # a: now the newest
    assert store.put("d", record(30))                     # past 3 avatars: b goes
    assert list(store.records) == ["c", "a", "d"] and store.bytes == 90
    assert store.put("e", record(60))                     # past 100 bytes: c, then a go
    assert list(store.records) == ["d", "e"] and store.bytes == 90
    assert not store.put("f", record(101))
    assert store.get("f") is None and list(store.records) == ["d", "e"]
    assert store.put("d", record(10)) and store.bytes == 70     # replaced, not counted twice


def test_a_new_session_goes_where_sessions_render_every_frame():
    """The router's order for a new session (serve/ray_router.py): replicas with room whose
    sessions all render every frame, most room first; then those with room whose sessions
    are short of compute; then full ones; a stopping replica last."""
    import math

    from serve.ray_router import preference

    replicas = {"roomy, 1 short": (3, 1), "calm": (1, 0), "calmer": (2, 0), "full": (0, 0),
                "full, 2 short": (0, 2), "stopping": (-math.inf, 0), "1 room, short": (1, 1)}
    order = sorted(replicas, key=lambda name: preference(*replicas[name]), reverse=True)
    assert order[:4] == ["calmer", "calm", "roomy, 1 short", "1 room, short"]
    assert set(order[4:6]) == {"full", "full, 2 short"} and order[-1] == "stopping"


def test_a_session_sent_counts_until_a_report_made_after_it_arrived():
    """The router's count of the sessions it sent a replica (serve/ray_router.py): a report
    made while the request was on its way (the replica's stats at 0.02 s after it was sent;
    a POST /sessions took 0.04 s) does not hold it, so it still counts; a report made well
    after does, and so does time (before: the 0.02 s report dropped it, the next session went
    to the same, now full, replica and got 503 while the other had room, in a CI run of
    test_two_replicas_affinity_and_a_replica_lost)."""
    from collections import deque

    from serve.ray_router import IN_FLIGHT_SECONDS, RECENT_SECONDS, forget_reported

    sent = deque([100.0, 100.5])
    forget_reported(sent, reported=100.02, now=100.6)
    assert list(sent) == [100.0, 100.5]
    forget_reported(sent, reported=100.0 + IN_FLIGHT_SECONDS, now=102.1)
    assert list(sent) == [100.5]
    forget_reported(sent, reported=0.0, now=100.5 + RECENT_SECONDS + 0.1)
    assert list(sent) == []


def test_a_replica_short_of_compute_counts_as_full_for_autoscaling():
    """The autoscaling policy (serve/ray_autoscale.py) on Serve's own context: one more
    session must find room on a replica whose sessions render every frame, so a replica
    that had a session short of compute for most of the look-back window counts as full."""
    from ray.serve.config import AutoscalingContext

    from serve.ray_autoscale import SessionsPolicy

    def wanted(sessions: dict, short: dict, low: int = 1, high: int = 4) -> int:
        ctx = AutoscalingContext(
            deployment_id=None, deployment_name="TalkingHead", app_name="talking_head",
            current_num_replicas=len(sessions), target_num_replicas=len(sessions),
            running_replicas=list(sessions), total_num_requests=0.0,
            total_queued_requests=0.0, aggregated_metrics={"sessions": sessions,
                                                           "short": short},
            raw_metrics={}, capacity_adjusted_min_replicas=low,
            capacity_adjusted_max_replicas=high, policy_state={}, last_scale_up_time=None,
            last_scale_down_time=None, current_time=0.0, config=None)
        return SessionsPolicy(max_sessions=4)(ctx)[0]

    assert wanted({"a": 1.0}, {"a": 0.0}) == 1                 # room for one more
    assert wanted({"a": 1.0}, {"a": 1.0}) == 2                 # short: a replica more
    assert wanted({"a": 1.0}, {"a": 0.3}) == 1                 # short for a moment only
    assert wanted({"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 0.0}) == 2     # b has room
    assert wanted({"a": 2.0, "b": 3.0}, {"a": 0.0, "b": 1.0}) == 2     # 2 + 4 + 1 of 8
    assert wanted({"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 1.0}) == 3     # both short
    assert wanted({"a": 3.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, high=2) == 2
    assert wanted({"a": 4.0}, {}) == 2                         # older replicas: sessions only


def test_the_default_server_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, server; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], cwd=webrtc_client.ROOT, check=True)


def run_server(*args: str, env: dict | None = None) -> tuple[int, str, float]:
    """`python server.py ARGS` to its end: (exit code, stderr, seconds)."""
    import subprocess
    import sys

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "server.py", *args], cwd=webrtc_client.ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stderr, time.perf_counter() - start


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "go with --ray"),
    (["--autoscale", "1:2"], "go with --ray"),
    (["--ray-address", "auto"], "go with --ray"),
    (["--ray", "--replicas", "2", "--autoscale", "1:2"], "not both"),
    (["--ray", "--replicas", "0"], "at least 1"),
    (["--ray", "--autoscale", "3:1"], "MIN:MAX"),
])
def test_ray_flags_refused(args, message, capsys):
    """Flags that cannot go together: refused by the flag parser, before Ray or anything
    else starts."""
    import server

    with pytest.raises(SystemExit) as exit_:
        server.main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_ray_cluster_not_reachable():
    """--ray-address where nothing listens: a clear error and exit code 2 at once (ray.init
    alone would retry for minutes), no traceback."""
    code, err, seconds = run_server("--ray", "--ray-address", "127.0.0.1:1", "--size", "256")
    assert code == 2, err
    assert "cannot reach the Ray cluster" in err and "nothing answers" in err, err
    assert "Traceback" not in err, err
    assert seconds < 30, seconds


def test_ray_not_installed(tmp_path):
    """--ray where `import ray` fails (a package named ray on PYTHONPATH that raises
    ImportError, as a missing one does): how to install it, exit code 2, no traceback."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text(
        'raise ImportError("No module named \'ray\' (hidden by the test)")\n')
    code, err, _ = run_server("--ray", "--size", "256", env={"PYTHONPATH": str(tmp_path)})
    assert code == 2, err
    assert "--ray needs Ray Serve: pip install" in err, err
    assert "Traceback" not in err, err


def test_two_replicas_affinity_and_a_replica_lost(ray_server, tmp_path):
    from models.avatar import prepare_avatar

    url = ray_server.url
    clip = speech_clip()
    video_clip = short_video(tmp_path)
    box = mouth_box(prepare_avatar(size=SIZE))

    async def run():
        async with await http_session() as http:
            a = Client(url, microphone=wav_microphone(clip.audio))
            b = Client(url, microphone=wav_microphone(clip.audio))
            await a.connect(http)
            await b.connect(http)
            readies = [await ready_of(http, url, s) for s in (a.session, b.session) * 2]
            census = [await cluster_totals(http, url, sessions=2)]
            # a photo uploaded through the proxy (to one replica): a session on each replica
            # speaks with it, so one of them took it from the shared store
            async with http.post(f"{url}/avatars", data=GRACE_HOPPER.read_bytes()) as r:
                uploaded = (r.status, await r.json())
            avatar = uploaded[1].get("avatar")
            full = []                        # fill both replicas: the next one is refused
            for _ in range(3):
                started = time.perf_counter()
                async with http.post(f"{url}/sessions", json={"avatar": avatar}) as r:
                    full.append((r.status, await r.json(), time.perf_counter() - started))
            # the uploaded face on both replicas' sessions
            headless_slots, picture = await media_slots(http, url, full[0][1]["session"], 5)
            pictures = [picture] + [(await media_slots(http, url, reply["session"], 1))[1]
                                    for status, reply, _ in full[1:2] if status == 200]
            for status, reply, _ in full:
                if status == 200:
                    await http.delete(f"{url}/sessions/{reply['session']}")
            video = await video_upload(http, url, video_clip)
            closes: dict = {}
            watchers = [asyncio.ensure_future(watch_close(http, url, c.session, closes))
                        for c in (a, b)]
            await a.wait_for_video()
            await b.wait_for_video()
            await asyncio.sleep(STREAM_SECONDS)
            fps = {"a": a.fps(STREAM_SECONDS - 1), "b": b.fps(STREAM_SECONDS - 1)}

            replica_a = owner(a.session)
            async with http.get(f"{url}/replicas/{replica_a}/health") as r:
                health_a = await r.json()
            nices = thread_nices(health_a["pid"])
            killed = time.perf_counter()
            os.kill(health_a["pid"], signal.SIGKILL)        # a crash, not a clean stop
            await asyncio.sleep(1.0)
            c = await new_session(http, url, killed + 10.0)      # on the replica left
            await c.wait_for_video(timeout=10)
            new_session_s = time.perf_counter() - killed
            d = await new_session(http, url, killed + 40.0)      # that one is full: waits
            await d.wait_for_video(timeout=10)                   # for the replacement
            replacement_s = time.perf_counter() - killed
            census.append(await cluster_totals(http, url, sessions=3))     # b, c and d

            bad = {}
            for name, session in (("dead replica", a.session), ("forged", "forged-id"),
                                  ("forged replica", "zz99zz99.12345678.secret")):
                async with http.delete(f"{url}/sessions/{session}") as r:
                    bad[name] = (r.status, (await r.json())["error"])
                bad[name + " ws"] = (await ready_of(http, url, session)).get("closed")
            async with http.get(f"{url}/replicas/{replica_a}/health") as r:
                bad["dead replica health"] = (r.status, (await r.json())["error"])
            for client in (a, b, c, d):
                await client.close()
            for w in watchers:
                w.cancel()
        return (a, b, c, d, readies, full, headless_slots, closes, fps, killed, new_session_s,
                replacement_s, bad, health_a, uploaded, pictures, video, census, nices)

    (a, b, c, d, readies, full, headless_slots, closes, fps, killed, new_session_s,
     replacement_s, bad, health_a, uploaded, pictures, video, census, nices) = asyncio.run(run())

    # one session on each replica; every websocket on its owner
    assert owner(a.session) != owner(b.session), (a.session, b.session)
    assert [r.get("session") for r in readies] == [a.session, b.session] * 2, readies
    assert health_a["replica"] == owner(a.session), health_a
    # every replica's /metrics has the deployment's totals (a replica that died drops out)
    assert census[0] == {"sessions": 2, "sessions_max": 4, "replicas": 2}, census
    assert census[1] == {"sessions": 3, "sessions_max": 4, "replicas": 2}, census
    # the upload serves sessions on both replicas, its face (not the default's) in both
    assert uploaded[0] == 200, uploaded
    assert [status for status, _, _ in full] == [200, 200, 503], full
    grace = prepare_avatar(GRACE_HOPPER, size=SIZE).crop().astype(np.float32)
    default = prepare_avatar(size=SIZE).crop().astype(np.float32)
    assert len(pictures) == 2 and all(p is not None for p in pictures), pictures
    for picture in pictures:
        to_upload, to_default = (float(np.abs(picture - x).mean()) for x in (grace, default))
        assert to_upload < 0.5 * to_default, (to_upload, to_default)
    # a video upload: its job followed through the proxy (on the replica preparing it), then
    # a session on each replica with it
    assert video["upload"][0] == 202 and video["job"]["state"] == "done", video
    assert owner(video["upload"][1]["job"]) is not None, video
    assert [status for status, _ in video["sessions"]] == [200, 200], video
    assert {owner(reply["session"]) for _, reply in video["sessions"]} == {
        owner(a.session), owner(b.session)}, video
    # a full deployment: 503 and why
    assert "full" in full[2][1]["error"], full
    # a headless session's media websocket through the proxy: whole slots, in order
    first_slot = headless_slots[0]["slot"]
    assert [h["slot"] for h in headless_slots] == list(range(first_slot, first_slot + 5)), \
        headless_slots
    assert {owner(full[0][1]["session"]), owner(full[1][1]["session"])} == {
        owner(a.session), owner(b.session)}, full

    # both streamed at about 25 fps, the mouth moving with the speech: over every utterance
    # spoken before the kill (on 2 cores, one of them may fall while the uploads and the
    # headless sessions above take the cores and its pictures wait), against the idle start
    first = clip.utterances[0][0]
    mouths = {}
    for name, client in (("a", a), ("b", b)):
        times, signal_ = mouth_signal(client, box)
        times = times[times < killed]
        signal_ = signal_[:times.size]
        sent = client.microphone.started
        spoken = [u for u in clip.utterances if sent + u[1] + 0.5 < killed]
        mouths[name] = (float(np.nanmean([mouth_change(times, signal_, sent + start + 0.4,
                                                       sent + end) for start, end in spoken])),
                        mouth_change(times, signal_, times[0], sent + first + 0.1))
    # the killed replica's session: closed with a code and a reason, at once
    closed_at, code, reason = closes.get(a.session, (None, None, None))
    # the other session: no gap
    t_b = np.array([t for t, _, _ in b.video])
    pts_b = np.array([pts for _, _, pts in b.video], dtype=np.float64)
    near = (t_b > killed - 1.0) & (t_b < killed + 5.0)
    around, around_pts = t_b[near], pts_b[near]
    gap = float(np.diff(around).max()) if around.size > 1 else float("inf")
    worst = int(np.argmax(np.diff(around))) if around.size > 1 else 0
    result = {"fps": {k: round(v, 1) for k, v in fps.items()},
              "mouth_change_speech_vs_idle": {k: [round(x, 3) for x in v]
                                              for k, v in mouths.items()},
              "close_after_kill_s": None if closed_at is None else round(closed_at - killed, 3),
              "close_code": code, "close_reason": reason,
              "other_session_max_gap_ms": round(1000 * gap),
              # where: seconds after the kill, and the sender's own time across it (90 kHz
              # RTP clock: as long as the gap if frames were sent late, longer if skipped)
              "other_session_gap_after_kill_s": round(float(around[worst] - killed), 3)
              if around.size > 1 else None,
              "other_session_gap_sender_ms": round(float(np.diff(around_pts)[worst]) / 90)
              if around.size > 1 else None,
              "new_session_after_kill_s": round(new_session_s, 2),
              "session_on_replacement_after_kill_s": round(replacement_s, 2),
              "full": full[2][:2], "bad_input": bad,
              "session_start_with_the_upload_s": [round(t, 2) for _, _, t in full[:2]],
              "video_upload": {k: v for k, v in video.items() if k != "sessions"},
              "cluster_totals": census, "replica_thread_nices": sorted(set(nices))}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ray_serve.json").write_text(json.dumps(result, indent=2))
    print(f"\nray_serve: {json.dumps(result)}")

    for name, value in fps.items():
        assert value >= 22.0, f"session {name} decoded too few frames: {result}"
    for name, (speech, idle) in mouths.items():
        assert speech > 1.5 * idle, f"session {name}: the mouth does not move: {result}"
    assert code == 4410 and reason, f"no clear close for the lost replica's session: {result}"
    assert closed_at - killed < 2.0, result
    assert b.session not in closes, f"the other session was closed: {result}"
    assert gap < 0.2, f"the other session stalled when a replica died: {result}"
    assert new_session_s < 10.0, result
    assert owner(c.session) == owner(b.session), result
    assert owner(d.session) not in (owner(a.session), owner(b.session)), result
    assert bad["dead replica"][0] == 410 and "gone" in bad["dead replica"][1], result
    assert bad["dead replica ws"] == 4410, result
    assert bad["forged"][0] == 404 and bad["forged ws"] == 4404, result
    assert bad["forged replica"][0] == 404 and bad["forged replica ws"] == 4404, result
    assert bad["dead replica health"][0] == 410, result
