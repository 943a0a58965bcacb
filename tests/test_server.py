"""The server end to end over loopback: real aiortc peers, a real server process.

One server process (256 px working size, at most 4 sessions, 5 s peer timeout) serves every
test here. Clients are aiortc peers in this process (and one in a child process that is
killed), with `RTCConfiguration(iceServers=[])` and ICE host candidates restricted to
127.0.0.1 on both sides: no traffic leaves loopback, every connection ends with its test.
The client, the server process and the speech clip are benchmarks/webrtc_client.py's, the
ones the benchmarks use.

What is measured, not assumed (results also go to out/tests/*.json):
- the decoded video frame rate at the client, from frame arrival times;
- the audio delay: the envelope of the received sound against the WAV the client sent as
  its microphone, cross-correlated per recording;
- the video delay: the mouth region of the received frames against frames rendered offline
  from the same WAV (frame t shows WAV [40 t, 40 t + 40) ms, another seed), the same way;
- A/V offset = video delay - audio delay, with both streams placed on the sender's clock by
  their RTP timestamps and RTCP sender reports (what a WebRTC player synchronises by; the
  plain arrival times, which include this client's unsynchronised jitter buffers, are
  reported too). The model's own lip timing cancels out;
- that the mouth changes while speech plays and rests in silence, in the received video.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import webrtc_client
from benchmarks.webrtc_client import (
    ALSA,
    ROOT,
    Client,
    Refused,
    ServerProcess,
    SpeechClip,
    delay_of,
    envelope,
    http_session,
    loopback_only,
    metrics,
    mouth_box,
    parse_metrics,
    sample_offer,
    speech_clip,
    wav_microphone,
)

OUT = Path(os.environ.get("TEST_OUTPUT_DIR", ROOT / "out" / "tests"))
SIZE = 256
MAX_SESSIONS = 4
PEER_TIMEOUT = 5.0


# ----------------------------------------------------------------------------- the server

def checkpoint() -> Path:
    """The default checkpoint; until `make weights` has built it, $TALKING_HEAD_CHECKPOINT."""
    from stream.engine import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    other = os.environ.get("TALKING_HEAD_CHECKPOINT")
    assert other and Path(other).is_file(), (
        f"the motion checkpoint {DEFAULT_CHECKPOINT} is missing: run `make weights` "
        "(or set TALKING_HEAD_CHECKPOINT to another checkpoint)")
    return Path(other)


def start_server(name: str, *args: str, **options) -> ServerProcess:
    """The server (benchmarks/webrtc_client.start_server, whose `options` these are) at the
    tests' size and checkpoint, verbose, logging to OUT/{name}.log."""
    return webrtc_client.start_server(OUT / f"{name}.log", "--size", str(SIZE), "--checkpoint",
                                      str(checkpoint()), "--verbose", *args, **options)


@pytest.fixture(scope="module")
def server():
    s = start_server("server", "--max-sessions", str(MAX_SESSIONS),
                     "--peer-timeout", str(PEER_TIMEOUT), "--fault-injection")
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text(errors="replace"), s.log_tail(80)


# ----------------------------------------------------------------------------- the mouth

def mouth_signal(images, avatar) -> np.ndarray:
    """Per frame: the contrast (luminance std) around the inner lips, which rises as the mouth
    opens (dark cavity, teeth) and hardly moves with the head."""
    rows, cols = mouth_box(avatar)
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return np.array([(im[rows, cols].astype(np.float32) @ weights).std() for im in images])


def mouth_activity(signal: np.ndarray, mask: np.ndarray) -> float:
    """How much the mouth changes from frame to frame where `mask` holds (mean |change|)."""
    both = mask[1:] & mask[:-1]
    return float(np.abs(np.diff(signal))[both].mean())


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def avatar():
    from models.avatar import prepare_avatar

    return prepare_avatar(size=SIZE)


@pytest.fixture(scope="module")
def clip() -> SpeechClip:
    return speech_clip()


@pytest.fixture(scope="module")
def offline_mouth(clip, avatar) -> np.ndarray:
    """The mouth signal of the WAV rendered offline (frame t shows WAV [40 t, 40 t + 40) ms).
    Another seed than the server's sessions (0): only what the audio drives is shared, not
    the generated noise, which would otherwise line up frame index against frame index."""
    from stream.engine import make_engine
    from stream.render_file import render_file
    from stream.session import Session

    engine = make_engine("torch", checkpoint())
    session = Session(engine, avatar, seed=1)
    images = []
    try:
        render_file(session, clip.audio, 48000, lambda image, _: images.append(image))
    finally:
        session.close()
    return mouth_signal(images, avatar)


def report(name: str, values: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(values, indent=2))
    print(f"\n{name}: {json.dumps(values)}")


# ----------------------------------------------------------------------------- tests

def test_health_metrics_and_page(server):
    import urllib.request

    with urllib.request.urlopen(server.url + "/health") as r:
        health = json.load(r)
    assert health["status"] == "ok" and health["max_sessions"] == MAX_SESSIONS
    assert health["sessions_short_of_compute"] == 0
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    for name in ("talking_head_sessions ", "talking_head_latency_seconds_bucket",
                 "talking_head_render_latency_seconds_bucket", "talking_head_frames_dropped_total",
                 "talking_head_frames_repeated_total", "talking_head_frames_thinned_total",
                 "talking_head_sessions_short_of_compute "):
        assert name in text
    with urllib.request.urlopen(server.url + "/") as r:
        assert b"<video" in r.read()
    with urllib.request.urlopen(server.url + "/static/client.js") as r:
        assert b"RTCPeerConnection" in r.read()
    with urllib.request.urlopen(server.url + "/avatars") as r:
        avatars = json.load(r)
    assert {"astronaut", "grace_hopper"} <= {a["id"] for a in avatars}


def test_microphone_session_end_to_end(server, clip, avatar, offline_mouth):
    """An aiortc client sends a WAV as its microphone: >= 24 fps of decoded video, the mouth
    moves in speech and rests in silence, sound and picture within 40 ms of each other."""
    seconds = clip.audio.size / 48000

    async def run():
        async with await http_session() as http:
            client = Client(server.url, microphone=wav_microphone(clip.audio))
            await client.connect(http)
            await client.wait_for_video()
            await asyncio.sleep(seconds + 1.0)
            stats = await metrics(http, server.url)
            await client.close()
        return client, stats

    client, stats = asyncio.run(run())
    sent_at = client.microphone.started
    fps = client.fps(seconds - 1.0)
    env_sent = envelope(clip.audio)
    t_sent = sent_at + (np.arange(env_sent.size) + 0.5) * 0.01
    t_offline = sent_at + (np.arange(offline_mouth.size) + 0.5) * 0.04

    # Per recording (the output delay may change in a pause): how much later than the
    # microphone sent it its sound, and its mouth movements (compared with the same audio
    # rendered offline), were stamped by the server (the "sender" clock: the RTP timestamps
    # and sender reports that a WebRTC player synchronises by) and reached this client
    # ("arrival": includes this client's own jitter buffers, which are not synchronised).
    rows = {}
    for clock in ("sender", "arrival"):
        t_audio, env_audio = client.received_audio(clock)
        t_video, images = client.video_frames(clock)
        t_video = t_video + 0.02    # a picture stands for its 40 ms slot: its middle, like
        #                             the offline frames' times (frame t at 40 t + 20 ms)
        mouth = mouth_signal(images, avatar)
        rows[clock] = []
        for start, end in clip.utterances:
            window = (sent_at + start - 0.3, sent_at + end + 0.3)
            audio_delay, audio_corr = delay_of(t_sent, env_sent, t_audio, env_audio, window)
            video_delay, video_corr = delay_of(t_offline, offline_mouth, t_video, mouth, window)
            speaking = (t_video >= sent_at + start + video_delay + 0.1) & (
                t_video <= sent_at + end + video_delay - 0.1)
            pause = (t_video >= sent_at + end + video_delay + 0.3) & (
                t_video <= sent_at + end + video_delay + 0.8)
            rows[clock].append({
                "audio_delay_ms": round(audio_delay * 1000), "audio_corr": round(audio_corr, 3),
                "video_delay_ms": round(video_delay * 1000), "video_corr": round(video_corr, 3),
                "av_offset_ms": round((video_delay - audio_delay) * 1000),
                "mouth_change_speech": round(mouth_activity(mouth, speaking), 3),
                "mouth_change_pause": round(mouth_activity(mouth, pause), 3)})
    shown = stats["talking_head_frames_shown_total"]
    fresh = shown / max(shown + stats["talking_head_frames_repeated_total"], 1)
    result = {"decoded_fps": round(fps, 2), "frames": len(client.video),
              "fresh_frame_share": round(fresh, 3),
              "server_latency_mean_ms": round(1000 * stats["talking_head_latency_seconds_sum"]
                                              / max(stats["talking_head_latency_seconds_count"],
                                                    1)),
              "utterances": rows["sender"], "utterances_arrival_clock": rows["arrival"]}
    report("microphone_session", result)

    assert fps >= 24.0, result
    for row in rows["sender"]:
        assert row["audio_corr"] > 0.8, f"the sound received is not the microphone's: {result}"
    assert fresh > 0.8, ("too few freshly rendered frames to check lip sync: is the machine "
                         f"overloaded? {result}")
    for row in rows["sender"]:
        assert row["video_corr"] > 0.5, f"the mouth does not follow the speech: {result}"
        assert abs(row["av_offset_ms"]) <= 40, f"sound and picture more than 40 ms apart: {result}"
        assert row["mouth_change_speech"] > 2 * row["mouth_change_pause"], f"mouth: {result}"


BUSY_PROCESSES = 3            # two busy processes on CI's 2 cores, and a third


def test_microphone_sound_stays_whole_under_load(server):
    """When compute falls short the picture may degrade, the sound never: with three busy
    processes on the machine (each stops by itself after a minute), every utterance the
    microphone sent (two recordings) comes back whole: its sound's envelope, on the media
    clock (the RTP timeline a receiver plays by, see benchmarks/webrtc_client.py),
    correlates >= 0.95 with what was sent (nothing skipped or cut, whatever the clock did to
    catch up). The sender clock's figure is reported beside it: it adds the loaded server's
    send jitter, which the receiver's jitter buffer takes out. (The session is
    benchmarks/overload_sound.py's.)"""
    from benchmarks.overload_sound import one_run

    clip = speech_clip(("Front_Center", "Rear_Right"))
    result = {"busy_processes": BUSY_PROCESSES} | one_run(server.url, clip, BUSY_PROCESSES)
    report("microphone_under_load", result)
    for row in result["utterances"]:
        assert row["corr_media"] >= 0.95, f"an utterance's sound was cut or skipped: {result}"


def nearest_avatar(images, crops: dict[str, np.ndarray]) -> str:
    """Which portrait the received frames show (mean absolute difference of the mean frame)."""
    mean = np.mean([im.astype(np.float32) for im in images], axis=0)
    return min(crops, key=lambda k: np.abs(mean - crops[k].astype(np.float32)).mean())


def test_websocket_pcm_push_session(server, avatar):
    """A voice agent's path: no microphone; PCM pushed over the websocket much faster than
    real time is spoken at real-time pace; then style, portrait, local TTS and barge-in."""
    from models.audio_io import load_audio
    from models.avatar import prepare_avatar

    speech = load_audio(ALSA / "Rear_Left.wav", rate=16000)                 # 1.3 s
    pcm = (speech * 32767).astype("<i2").tobytes()
    grace = prepare_avatar(ROOT / "assets" / "grace_hopper.jpg", size=SIZE)
    long_text = ("This is a long sentence that the avatar keeps on speaking until somebody "
                 "interrupts it, because the listener has something to say.")
    events = {}

    async def run():
        async with await http_session() as http:
            client = Client(server.url)
            await client.connect(http)
            await client.wait_for_video()
            await asyncio.sleep(1.0)
            async with http.ws_connect(f"{server.url}/ws/{client.session}") as ws:
                ready = await ws.receive_json()
                events["ready"] = ready
                await ws.send_json({"type": "format", "rate": 16000, "channels": 1,
                                    "sample": "s16"})
                events["format"] = await ws.receive_json()
                events["pushed"] = time.perf_counter()
                for i in range(0, len(pcm), 3200):                # 100 ms pieces, at once
                    await ws.send_bytes(pcm[i:i + 3200])
                events["push_took"] = time.perf_counter() - events["pushed"]
                await asyncio.sleep(speech.size / 16000 + 2.0)
                await ws.send_json({"type": "style", "values": {"mouth_amplitude": 1.3}})
                events["style"] = await next_reply(ws)
                await ws.send_json({"type": "avatar", "id": "grace_hopper"})
                events["avatar"] = await next_reply(ws)
                events["switched"] = time.perf_counter()
                await asyncio.sleep(1.5)
                await ws.send_json({"type": "speak", "text": long_text})
                events["speak"] = await next_reply(ws, timeout=20)
                events["spoken"] = time.perf_counter()
                await asyncio.sleep(1.5)
                events["interrupted"] = time.perf_counter()
                await ws.send_json({"type": "interrupt"})
                events["interrupt"] = await next_reply(ws)
                await asyncio.sleep(2.0)
            await client.close()
        return client

    client = asyncio.run(run())
    assert events["ready"]["type"] == "ready" and "mouth_amplitude" in events["ready"]["styles"]
    for name in ("format", "style", "avatar", "speak", "interrupt"):
        assert events[name]["type"] == "ok", events
    assert events["speak"]["seconds"] > 4.0, events["speak"]

    t_audio, env_audio = client.received_audio()
    env_pushed = envelope(np.repeat(speech, 3))                    # 16 kHz -> 48 kHz hops
    t_pushed = events["pushed"] + (np.arange(env_pushed.size) + 0.5) * 0.01
    window = (events["pushed"] - 0.3, events["pushed"] + speech.size / 16000 + 0.3)
    delay, corr = delay_of(t_pushed, env_pushed, t_audio, env_audio, window)
    t_video, images = client.video_frames()
    mouth = mouth_signal(images, avatar)
    start = events["pushed"] + delay
    speaking = (t_video > start + 0.1) & (t_video < start + speech.size / 16000 - 0.1)
    idle = (t_video > start - 1.0) & (t_video < start - 0.2)

    def loudness(t0, t1):
        inside = (t_audio >= t0) & (t_audio < t1)
        return float(env_audio[inside].mean())

    tts_on = loudness(events["spoken"] + delay + 0.3, events["interrupted"] + delay - 0.1)
    tts_after = loudness(events["interrupted"] + delay + 0.3, events["interrupted"] + delay + 1.8)
    after_switch = [im for t, im in zip(t_video, images, strict=True)
                    if t > events["switched"] + delay + 0.5]
    shown = nearest_avatar(after_switch[:20], {"astronaut": avatar.crop(),
                                               "grace_hopper": grace.crop()})
    result = {"push_took_ms": round(events["push_took"] * 1000), "audio_delay_ms":
              round(delay * 1000), "audio_corr": round(corr, 3),
              "mouth_change_speaking": round(mouth_activity(mouth, speaking), 3),
              "mouth_change_idle": round(mouth_activity(mouth, idle), 3),
              "tts_loudness": round(tts_on, 4), "after_interrupt_loudness": round(tts_after, 4),
              "shown_after_switch": shown, "decoded_fps": round(client.fps(4.0), 2)}
    report("websocket_session", result)

    # pushed in a fraction of its length, heard at its own pace (the correlation is taken at
    # the recording's time scale)
    assert events["push_took"] < 0.5 * speech.size / 16000, result
    assert corr > 0.8, f"the pushed speech is not what was heard: {result}"
    assert result["mouth_change_speaking"] > 2 * result["mouth_change_idle"], f"mouth: {result}"
    assert tts_on > 0.02, f"the text was not heard: {result}"
    assert tts_after < 0.1 * tts_on, f"the interrupt did not stop the speech: {result}"
    assert shown == "grace_hopper", result
    assert result["decoded_fps"] >= 24.0, result


async def next_reply(ws, timeout: float = 10.0) -> dict:
    """The next message that is not a periodic stats message."""
    while True:
        message = await asyncio.wait_for(ws.receive_json(), timeout)
        if message["type"] != "stats":
            return message


def test_four_sessions_at_once(server, clip):
    """Four sessions share the server's one model, each with its own portrait, two of them
    over H.264 (one of those offered VP8 first) and two over VP8; a fifth is refused with a
    clear error while they run; all are cleaned up when they end."""
    import io

    from PIL import Image

    from models.avatar import DEFAULT_AVATAR, prepare_avatar

    mirrored = io.BytesIO()
    Image.open(DEFAULT_AVATAR).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, "PNG")
    crops = {"astronaut": prepare_avatar(size=SIZE).crop(),
             "grace_hopper": prepare_avatar(ROOT / "assets" / "grace_hopper.jpg",
                                            size=SIZE).crop(),
             "mirrored": prepare_avatar(mirrored.getvalue(), size=SIZE).crop()}

    async def run():
        async with await http_session() as http:
            async with http.post(server.url + "/avatars", data=mirrored.getvalue()) as r:
                uploaded = await r.json()
                assert r.status == 200, uploaded
            names = ["astronaut", "grace_hopper", uploaded["avatar"], "astronaut"]
            # H.264 (the server's x264 settings, stream/video_encoder.py): offered alone, and
            # chosen from aiortc's whole list (VP8 first, as browsers list it); VP8 alone
            clients = [Client(server.url, codec=codec) for codec in ("h264", None, "vp8")]
            clients.append(Client(server.url, microphone=wav_microphone(clip.audio),
                                  codec="vp8"))
            await asyncio.gather(*(c.connect(http, avatar=a) for c, a in zip(clients, names,
                                                                              strict=True)))
            await asyncio.gather(*(c.wait_for_video() for c in clients))
            extra = Client(server.url)
            try:
                await extra.connect(http)
                refused = None
            except Refused as e:
                refused = str(e)
            await extra.close()
            span = (time.perf_counter(), time.perf_counter() + 6.0)
            await asyncio.sleep(6.0)
            during = await metrics(http, server.url)
            await asyncio.gather(*(c.close() for c in clients))
            deadline = time.monotonic() + 15
            while True:
                async with http.get(server.url + "/health") as r:
                    after = await r.json()
                if after["sessions"] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        return clients, refused, during, after, span

    clients, refused, during, after, (t0, t1) = asyncio.run(run())
    expected = ["astronaut", "grace_hopper", "mirrored", "astronaut"]
    result = {"decoded_fps": [round(sum(t0 <= v[0] < t1 for v in c.video) / (t1 - t0), 2)
                              for c in clients],
              "audio_per_second": [round(sum(a[1].size for a in c.audio if t0 <= a[0] < t1)
                                         / 48000 / (t1 - t0), 3) for c in clients],
              "shown": [nearest_avatar(c.images(-25), crops) for c in clients],
              "server_slots_per_second": [v for k, v in during.items() if k.startswith(
                  "talking_head_session_slots_per_second")],
              "fresh_fps": [v for k, v in during.items() if k.startswith(
                  "talking_head_session_fps")],
              "server_dropped_frames": during["talking_head_frames_dropped_total"],
              "server_dropped_audio_frames": during["talking_head_audio_frames_dropped_total"],
              "sessions_during": during["talking_head_sessions"],
              "sessions_after": after["sessions"], "refused": refused,
              "codecs": [c.video_codec for c in clients]}
    report("four_sessions", result)

    assert during["talking_head_sessions"] == 4, result
    assert refused is not None and refused.startswith("503") and "full" in refused, result
    assert result["shown"] == expected, result
    assert [c.upper() for c in result["codecs"]] == ["H264", "H264", "VP8", "VP8"], result
    # Four sessions need about four times the compute of one (about three cores at 256 px on
    # this CPU) and their compute threads crowd the one GIL that the network path needs too:
    # pictures repeat and the senders lose frames on a 2-core machine, but each session's
    # media clock keeps 25 slots a second and every client keeps receiving its own video and
    # sound, without a long stall (on a clean 2-core CI-like run one client waited 2.3 s
    # once: the known GIL contention of issue 8, to be fixed by batching across sessions).
    for slots in result["server_slots_per_second"]:
        assert slots >= 24.0, result
    for c, fps, sound in zip(clients, result["decoded_fps"], result["audio_per_second"],
                             strict=True):
        arrivals = np.array([v[0] for v in c.video if t0 <= v[0] < t1])
        assert fps >= 10.0 and sound >= 0.25, result
        assert np.diff(arrivals).max() < 3.0, result
    assert after["sessions"] == 0, result


def test_bad_input_gets_clear_errors_and_others_keep_streaming(server):
    """Malformed offers, bad uploads and websocket garbage each get a clear JSON error or a
    clean close with a reason; a session streaming meanwhile never notices."""
    import io

    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection
    from PIL import Image

    blank = io.BytesIO()
    Image.new("RGB", (300, 300), (128, 128, 128)).save(blank, "PNG")
    replies = {}

    async def post(http, path, **kwargs):
        async with http.post(server.url + path, **kwargs) as r:
            return r.status, await r.json()

    async def run():
        async with await http_session() as http:
            good = Client(server.url)
            await good.connect(http)
            await good.wait_for_video()
            before = len(good.video)
            loopback_only()
            audio_only = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            audio_only.addTransceiver("audio", direction="recvonly")
            await audio_only.setLocalDescription(await audio_only.createOffer())
            valid_sdp = audio_only.localDescription.sdp
            await audio_only.close()

            replies["not json"] = await post(http, "/offer", data=b"{{{")
            replies["garbage sdp"] = await post(http, "/offer", json={"sdp": "v=0\r\nnonsense",
                                                                    "type": "offer"})
            truncated = valid_sdp[: len(valid_sdp) // 3]
            replies["truncated sdp"] = await post(http, "/offer", json={"sdp": truncated,
                                                                      "type": "offer"})
            replies["not an offer"] = await post(http, "/offer", json={"sdp": "x",
                                                                     "type": "answer"})
            replies["audio only"] = await post(http, "/offer", json={"sdp": valid_sdp,
                                                                   "type": "offer"})
            replies["unknown avatar"] = await post(http, "/offer", json={
                "sdp": valid_sdp, "type": "offer", "avatar": "nobody"})
            replies["text upload"] = await post(http, "/avatars", data=b"hello, not a photo")
            replies["huge upload"] = await post(http, "/avatars", data=b"\0" * (11 * 2**20))
            replies["faceless"] = await post(http, "/avatars", data=blank.getvalue())
            replies["empty upload"] = await post(http, "/avatars", data=b"")
            replies["no session"] = await post(http, "/sessions/nobody/audio", data=b"x")
            replies["bad file"] = await post(http, f"/sessions/{good.session}/audio",
                                             data=b"this is not audio" * 100)
            async with http.get(server.url + "/ws/nobody") as r:
                replies["ws without upgrade"] = (r.status, await r.json())

            async with http.ws_connect(f"{server.url}/ws/{good.session}") as ws:
                assert (await ws.receive_json())["type"] == "ready"
                for name, message in [
                        ("ws not json", "{not json"),
                        ("ws pcm before format", b"\x00\x01\x02\x03"),
                        ("ws bad rate", {"type": "format", "rate": 1000}),
                        ("ws unknown style", {"type": "style", "values": {"wobble": 1.0}}),
                        ("ws style out of range", {"type": "style",
                                                   "values": {"head_amplitude": 50}}),
                        ("ws unknown type", {"type": "teleport"}),
                        ("ws empty text", {"type": "speak", "text": "   "}),
                        ("ws bad voice", {"type": "speak", "text": "hi", "voice": "festival/x"}),
                        ("ws unknown avatar", {"type": "avatar", "id": "nobody"}),
                        ("ws format", {"type": "format", "rate": 16000, "sample": "s16"}),
                        ("ws odd bytes", b"\x00\x01\x02"),
                        ("ws nan", json.dumps({"type": "format", "rate": 48000,
                                               "sample": "f32"})),
                        ("ws nan samples", np.full(64, np.nan, "<f4").tobytes())]:
                    if isinstance(message, bytes):
                        await ws.send_bytes(message)
                    elif isinstance(message, dict):
                        await ws.send_json(message)
                    else:
                        await ws.send_str(message)
                    replies[name] = await next_reply(ws)
                for _ in range(25):                           # a flood of garbage
                    await ws.send_str("garbage")
                while (msg := await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE,
                                                               aiohttp.WSMsgType.CLOSED):
                    pass
                replies["ws flood"] = (ws.close_code, msg.extra)
            async with http.ws_connect(f"{server.url}/ws/{good.session}") as ws:
                await ws.receive_json()
                await ws.send_bytes(b"\0" * (2 * 2**20))
                msg = await ws.receive()
                while msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    msg = await ws.receive()
                replies["ws too large"] = (ws.close_code, msg.extra)
            async with http.ws_connect(f"{server.url}/ws/nobody") as ws:
                msg = await ws.receive()
                replies["ws no session"] = (ws.close_code, msg.extra)

            await asyncio.sleep(1.0)
            async with http.get(server.url + "/health") as r:
                health = await r.json()
            streamed = len(good.video) - before
            gaps = np.diff([v[0] for v in good.video])
            await good.close()
        return health, streamed, gaps

    health, streamed, gaps = asyncio.run(run())
    report("bad_input", {k: list(v) if isinstance(v, tuple) else v for k, v in replies.items()})

    def error(name, status, words):
        code, body = replies[name]
        assert code == status and words in body["error"], (name, replies[name])

    error("not json", 400, "JSON")
    error("garbage sdp", 400, "malformed SDP")
    error("truncated sdp", 400, "malformed SDP")
    error("not an offer", 400, "offer")
    error("audio only", 400, "video")
    error("unknown avatar", 400, "unknown avatar")
    error("text upload", 422, "not an image")
    error("huge upload", 413, "too large")
    error("faceless", 422, "no face")
    error("empty upload", 400, "empty")
    error("no session", 404, "no session")
    error("bad file", 422, "not a readable audio file")
    error("ws without upgrade", 400, "websocket")
    for name in ("ws not json", "ws pcm before format", "ws bad rate", "ws unknown style",
                 "ws style out of range", "ws unknown type", "ws empty text", "ws bad voice",
                 "ws unknown avatar", "ws odd bytes", "ws nan samples"):
        assert replies[name]["type"] == "error" and replies[name]["message"], (name, replies)
        assert "Traceback" not in replies[name]["message"]
    assert replies["ws format"]["type"] == "ok" and replies["ws nan"]["type"] == "ok"
    assert replies["ws flood"] == (1008, "too many bad messages"), replies["ws flood"]
    assert replies["ws too large"][0] == 1009, replies["ws too large"]
    assert "--max-ws-message" in replies["ws too large"][1], replies["ws too large"]
    assert replies["ws no session"][0] == 4404, replies["ws no session"]
    assert health["status"] == "ok"
    # never a stall (a blocked event loop or a held GIL shows as gaps of seconds)
    assert streamed > 25 and gaps.max() < 1.0, (streamed, gaps.max())


def test_client_that_disappears(server):
    """A peer killed mid-stream (no goodbye) is noticed and its session ended; another
    session streams on without a gap."""
    async def sessions(http) -> int:
        async with http.get(server.url + "/health") as r:
            return (await r.json())["sessions"]

    async def run():
        async with await http_session() as http:
            witness = Client(server.url)
            await witness.connect(http)
            await witness.wait_for_video()
            # (a remote client in real life: here it runs niced, to not starve the server)
            child = subprocess.Popen(["nice", "-n", "10", sys.executable, __file__,
                                      "vanishing-client", server.url],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
            try:
                line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
                assert line.startswith("streaming"), line
                both = await sessions(http)
                killed = time.perf_counter()
                child.kill()                                   # gone, without a word
            finally:
                child.kill()
                child.wait(timeout=10)
            while (await sessions(http)) > 1 and time.perf_counter() - killed < 30:
                await asyncio.sleep(0.25)
            noticed = time.perf_counter() - killed
            left = await sessions(http)
            await asyncio.sleep(0.5)
            arrivals = np.array([v[0] for v in witness.video])
            await witness.close()
        during = arrivals[arrivals > killed - 1.0]
        return both, noticed, left, np.diff(during).max(), len(during)

    both, noticed, left, worst_gap, frames = asyncio.run(run())
    report("vanished_client", {"sessions_before": both, "ended_after_s": round(noticed, 2),
                               "sessions_after": left, "witness_worst_gap_ms":
                               round(worst_gap * 1000), "witness_frames": frames})
    assert both == 2 and left == 1
    assert noticed <= PEER_TIMEOUT + 4.0, noticed
    assert worst_gap < 1.0, worst_gap                  # the witness never stalled


def raw_websocket(url: str, path: str, receive_buffer: int = 4096):
    """A websocket opened by hand on a plain socket with a small receive buffer: a client
    that can stop reading (aiohttp's client always reads, into an unbounded queue)."""
    import base64
    from urllib.parse import urlparse

    host = urlparse(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect((host.hostname, host.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)                        # byte by byte: leave the frames unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame (text by default)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def receive_until_closed(ws, timeout: float = 20.0) -> list:
    """Every message up to the close: [(type, data, extra)]."""
    import aiohttp

    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive(timeout=max(deadline - time.monotonic(), 0.1))
        got.append((msg.type, msg.data, msg.extra))
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
            break
    return got


def test_sessions_are_isolated(server):
    """Two sessions side by side: speech pushed into one is heard in that one only; each
    upload of a portrait gets an id of its own, random and never listed; session ids are
    random and long, and /metrics names sessions by a public label, never by their id."""
    clip = speech_clip(names=("Front_Center", "Front_Left"), lead=0.2, pause=0.5, tail=0.3)
    pcm = (clip.audio * 32767).astype("<i2").tobytes()
    photo = (ROOT / "assets" / "grace_hopper.jpg").read_bytes()

    async def run():
        async with await http_session() as http:
            uploads = []
            for _ in range(2):
                async with http.post(server.url + "/avatars", data=photo) as r:
                    uploads.append((r.status, await r.json()))
            async with http.get(server.url + "/avatars") as r:
                listed = {a["id"] for a in await r.json()}
            speaker, listener = Client(server.url), Client(server.url)
            await asyncio.gather(speaker.connect(http), listener.connect(http))
            await asyncio.gather(speaker.wait_for_video(), listener.wait_for_video())
            async with http.ws_connect(f"{server.url}/ws/{speaker.session}") as ws:
                await ws.receive_json()
                await ws.send_json({"type": "format", "rate": 48000, "channels": 1})
                await ws.receive_json()
                start = time.perf_counter()
                for i in range(0, len(pcm), 48000):
                    await ws.send_bytes(pcm[i:i + 48000])
                await asyncio.sleep(clip.audio.size / 48000 + 2.0)
            end = time.perf_counter()
            stats = await metrics(http, server.url)
            async with http.get(server.url + "/metrics") as r:
                metrics_text = await r.text()
            await asyncio.gather(speaker.close(), listener.close())
        return uploads, listed, speaker, listener, (start, end), stats, metrics_text

    uploads, listed, speaker, listener, (t0, t1), stats, metrics_text = asyncio.run(run())

    def loudness(client):
        sound = [a[1] for a in client.audio if t0 <= a[0] <= t1]
        return float(np.abs(np.concatenate(sound)).max())

    result = {"upload_ids": [u[1].get("avatar") for u in uploads],
              "session_ids": [speaker.session, listener.session],
              "speaker_peak": round(loudness(speaker), 4),
              "listener_peak": round(loudness(listener), 4)}
    report("isolation", result)
    (s1, a), (s2, b) = uploads
    assert s1 == s2 == 200, uploads
    assert a["avatar"] != b["avatar"] and len(a["avatar"]) >= 20, uploads
    assert not {a["avatar"], b["avatar"]} & listed, (listed, uploads)
    for session in (speaker.session, listener.session):
        assert len(session) >= 20 and session not in metrics_text
    assert stats["talking_head_sessions"] == 2
    assert result["speaker_peak"] > 0.1, result                 # the speech came out ...
    assert result["listener_peak"] < 0.01, result               # ... of that session only


def test_engine_failure_ends_only_that_session(server):
    """A session whose engine fails (a corrupt avatar, injected) ends with a clear message
    to its client and nothing else; an exception in one websocket's handler closes that
    websocket only; another session streams on without a gap."""
    import aiohttp

    async def run():
        async with await http_session() as http:
            witness, victim = Client(server.url), Client(server.url)
            await asyncio.gather(witness.connect(http), victim.connect(http))
            await asyncio.gather(witness.wait_for_video(), victim.wait_for_video())
            before = await metrics(http, server.url)
            url = f"{server.url}/ws/{victim.session}"
            async with http.ws_connect(url) as ws:
                await ws.receive_json()
                await ws.send_json({"type": "fault", "fault": "handler"})
                handler_fault = await receive_until_closed(ws)
            async with http.ws_connect(url) as ws:
                ready = await ws.receive_json()                 # the session lives on
                await ws.send_json({"type": "fault", "fault": "engine"})
                broke = time.perf_counter()
                engine_fault = await receive_until_closed(ws)
            deadline = time.monotonic() + 10
            while (h := await (await http.get(server.url + "/health")).json())["sessions"] > 1:
                assert time.monotonic() < deadline, h
                await asyncio.sleep(0.2)
            ended = time.perf_counter() - broke
            await asyncio.sleep(2.0)
            after = await metrics(http, server.url)
            arrivals = np.array([v[0] for v in witness.video])
            victim_frames = len(victim.video)
            await asyncio.sleep(1.0)
            victim_late = len(victim.video) - victim_frames
            await asyncio.gather(witness.close(), victim.close())
        gaps = np.diff(arrivals[arrivals > broke - 2.0])
        return handler_fault, ready, engine_fault, ended, before, after, gaps, victim_late, h

    handler_fault, ready, engine_fault, ended, before, after, gaps, victim_late, health = (
        asyncio.run(run()))
    texts = [json.loads(m[1]) for m in engine_fault if m[0] == aiohttp.WSMsgType.TEXT]
    fatal = [m for m in texts if m.get("type") == "error"]
    close = engine_fault[-1]
    report("engine_failure", {"handler_fault_close": [str(m[0]) for m in handler_fault][-1:],
                              "fatal_message": fatal[-1:] if fatal else None,
                              "close": [int(close[1] or 0), close[2]],
                              "ended_after_s": round(ended, 2),
                              "witness_worst_gap_ms": round(1000 * gaps.max()),
                              "victim_frames_after_end": victim_late})
    assert handler_fault[-1][1] == 1011 and handler_fault[-1][2] == "internal error"
    assert ready["type"] == "ready"
    assert fatal and fatal[-1]["fatal"] and "failed" in fatal[-1]["message"], texts
    assert "Traceback" not in fatal[-1]["message"] and "Error" not in fatal[-1]["message"]
    assert close[1] == 1011 and close[2] == "session failed", close
    assert ended < 5.0 and health["sessions"] == 1 and victim_late == 0
    assert after["talking_head_session_errors_total"] == before[
        "talking_head_session_errors_total"] + 1
    assert gaps.max() < 1.0, gaps.max()                    # the witness never noticed


def test_a_session_short_of_compute_is_reported(server):
    """A session whose renderer falls behind real time (injected: 60 ms a frame) renders
    every 2nd or 3rd frame and says so in its stats; /health and /metrics count it among the
    sessions short of compute (what a load balancer routes by; a Ray router sends new
    sessions elsewhere: serve/ray_router.py), and frames keep coming."""
    async def run():
        async with await http_session() as http:
            client = Client(server.url)
            await client.connect(http)
            await client.wait_for_video()
            before = await (await http.get(server.url + "/health")).json()
            async with http.ws_connect(f"{server.url}/ws/{client.session}") as ws:
                await ws.receive_json()
                await ws.send_json({"type": "fault", "fault": "slow"})
                stats, deadline = [], time.monotonic() + 30
                while not any(m.get("render_stride", 1) > 1 for m in stats):
                    assert time.monotonic() < deadline, stats
                    stats.append(await ws.receive_json(timeout=5))
                health = await (await http.get(server.url + "/health")).json()
                gauges = await metrics(http, server.url)
            frames = len(client.video)
            await asyncio.sleep(1.0)
            arrived = len(client.video) - frames
            await client.close()
        return before, stats, health, gauges, arrived

    before, stats, health, gauges, arrived = asyncio.run(run())
    report("short_of_compute", {"stats": stats[-1], "frames_in_1s": arrived})
    assert {"type": "ok", "for": "fault", "fault": "slow"} in stats
    assert before["sessions_short_of_compute"] == 0
    assert health["sessions_short_of_compute"] == 1, health
    assert gauges["talking_head_sessions_short_of_compute"] == 1
    assert arrived >= 20          # the stream goes on at 25 fps, each picture held 2-3 slots


def test_slow_websocket_consumer_is_dropped(server):
    """A websocket client that sends but never reads (its receive buffer full) is cut off
    within the send timeout; its session, and another session, stream on."""
    import select

    async def run():
        async with await http_session() as http:
            witness = Client(server.url)
            await witness.connect(http)
            await witness.wait_for_video()
            before = await metrics(http, server.url)
            sock = await asyncio.to_thread(raw_websocket, server.url, f"/ws/{witness.session}")
            message = ws_frame(json.dumps({"type": "format", "rate": 16000}).encode())
            sock.setblocking(False)
            started, stalled, cut, sent = time.perf_counter(), None, None, 0
            while time.perf_counter() - started < 30:
                _, writable, broken = select.select([], [sock], [sock], 0.05)
                if broken:
                    break
                if writable:
                    try:
                        sent += sock.send(message * 64)
                        stalled = None
                        continue
                    except BlockingIOError:
                        pass
                    except OSError:                          # reset: the server cut it off
                        cut = time.perf_counter()
                        break
                stalled = stalled or time.perf_counter()     # the server stopped reading
                await asyncio.sleep(0.05)
                try:                                         # a reset shows on a peek too
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        cut = time.perf_counter()
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    cut = time.perf_counter()
                    break
            sock.close()
            await asyncio.sleep(0.5)
            after = await metrics(http, server.url)
            async with http.ws_connect(f"{server.url}/ws/{witness.session}") as ws:
                ready = await ws.receive_json()
            arrivals = np.array([v[0] for v in witness.video])
            await witness.close()
        gaps = np.diff(arrivals[arrivals > started])
        return started, stalled, cut, sent, before, after, ready, gaps

    started, stalled, cut, sent, before, after, ready, gaps = asyncio.run(run())
    result = {"sent_bytes": sent, "stalled_after_s": stalled and round(stalled - started, 2),
              "cut_after_stall_s": cut and stalled and round(cut - stalled, 2),
              "witness_worst_gap_ms": round(1000 * gaps.max())}
    report("slow_consumer", result)
    assert cut is not None, result
    # --send-timeout 5 s, after the server has worked through what it had already received
    # (megabytes in its socket buffers: on a loaded machine, seconds)
    assert stalled is not None and cut - stalled < 5.0 + 10.0, result
    assert after["talking_head_websockets_stalled_total"] >= before[
        "talking_head_websockets_stalled_total"] + 1
    assert ready["type"] == "ready"                          # the session itself lives on
    assert gaps.max() < 1.0, result


# ------------------------------------------------------------- beyond loopback, small limits

EXPOSED_LIMITS = {"--max-sessions": 2, "--max-upload-bytes": 1_000_000,
                  "--max-pixels": 2_000_000, "--max-audio-file-bytes": 100_000,
                  "--max-queued-seconds": 5, "--min-rate": 16000, "--max-ws-message": 65536,
                  "--max-control-bytes": 4096, "--max-sdp-bytes": 16384,
                  "--max-text-chars": 100, "--idle-timeout": 3, "--connect-timeout": 60,
                  "--max-sockets-per-session": 2}


def full_disk_prefix(folder: Path) -> tuple[str, ...] | None:
    """A command prefix that runs a program in a mount namespace of its own where `folder`
    is a 16 KiB tmpfs filled to the last byte (a full disk, for real: ENOSPC). None where
    unshare cannot make one (no user namespaces)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            f"mount -t tmpfs -o size=16k tmpfs {folder}"], capture_output=True)
    if probe.returncode != 0:
        return None
    fill = (f"mount -t tmpfs -o size=16k tmpfs {folder} && "
            f"(cat /dev/zero > {folder}/filler 2>/dev/null; true) && "
            f"df -k {folder} | tail -1 | sed 's/^/disk: /' && exec \"$@\"")
    return ("unshare", "-rm", "sh", "-c", fill, "sh")


@pytest.fixture(scope="module")
def exposed(tmp_path_factory):
    """A server listening beyond loopback (0.0.0.0; reached here over 127.0.0.1 only), so it
    must make and print an access token; small limits; and a full disk: its avatar cache
    and temporary folder are a full tmpfs. (WebRTC media cannot connect to it from a
    loopback-only client: offers are answered, sessions never connect, which is all the
    tests on it need.)"""
    folder = tmp_path_factory.mktemp("full")
    prefix = full_disk_prefix(folder)
    args = [str(x) for pair in EXPOSED_LIMITS.items() for x in pair]
    s = start_server("exposed_server", *args, host="0.0.0.0", prefix=prefix or (),
                     env={"TALKING_HEAD_CACHE": str(folder), "TMPDIR": str(folder)})
    s.full_disk = prefix is not None
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text(errors="replace"), s.log_tail(80)


def test_token_required_beyond_loopback(exposed):
    """Listening on 0.0.0.0 without --token: the server makes one and prints it; every route
    but the page then refuses a request without it (401), takes it as a bearer header or a
    ?token= query, and a wrong one is refused too."""
    import urllib.request

    token = exposed.token
    assert token and len(token) >= 24, exposed.log_tail()
    assert "access token required" in exposed.log.read_text()
    refused = {}
    for path in ("/health", "/metrics", "/avatars", "/avatars/astronaut.jpg", "/ws/x"):
        refused[path] = exposed.get(path)[0]
        assert exposed.get(path, token="wrong-" + token)[0] == 401
        assert exposed.get(path, token=token)[0] in (200, 400)   # /ws/x: not an upgrade
        assert exposed.get(f"{path}?token={token}")[0] in (200, 400)
    for path in ("/offer", "/avatars", "/sessions/x/audio", "/sessions/x/close"):
        request = urllib.request.Request(exposed.url + path, data=b"{}", method="POST")
        try:
            urllib.request.urlopen(request, timeout=10)
            refused["POST " + path] = 200
        except urllib.error.HTTPError as e:
            refused["POST " + path] = e.code
    page = {path: exposed.get(path)[0] for path in ("/", "/static/client.js")}
    report("token", {"refused_without_token": refused, "page_without_token": page})
    assert set(refused.values()) == {401}, refused
    assert page == {"/": 200, "/static/client.js": 200}, page
    assert "withToken" in exposed.get("/static/client.js")[1]
    # --fault-injection is refused beyond loopback (before anything is loaded)
    done = subprocess.run([sys.executable, str(ROOT / "server.py"), "--host", "0.0.0.0",
                           "--fault-injection"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.returncode == 2 and "loopback" in done.stderr, done.stderr


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (a decompression bomb's header) with one tiny IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                               0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_limits_refuse_clearly(exposed):
    """Each limit (set small on this server) refuses with a clear message, and the server
    stays healthy: upload bytes and pixels (a decompression bomb's header), audio file
    bytes and queued seconds, PCM rate, websocket message and control sizes, TTS text,
    SDP size, sessions, websockets per session, and the idle timeout."""
    import aiohttp

    token = exposed.token
    headers = {"Authorization": f"Bearer {token}"}
    sdp = sample_offer()
    replies = {}

    async def post(http, path, **kwargs):
        async with http.post(exposed.url + path, headers=headers, **kwargs) as r:
            return r.status, (await r.json()).get("error")

    async def run():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            replies["upload bytes"] = await post(http, "/avatars", data=b"\xff" * 1_200_000)
            replies["upload pixels"] = await post(http, "/avatars",
                                                  data=png_header_only(3000, 3000))
            replies["pixel bomb"] = await post(http, "/avatars",
                                               data=png_header_only(60000, 60000))
            replies["sdp bytes"] = await post(http, "/offer", json={
                "type": "offer", "sdp": sdp + "a=x-padding:" + "x" * 20000 + "\r\n"})
            async with http.post(exposed.url + "/offer", headers=headers,
                                 json={"type": "offer", "sdp": sdp}) as r:
                first = (await r.json())["session"]
            async with http.post(exposed.url + "/offer", headers=headers,
                                 json={"type": "offer", "sdp": sdp}) as r:
                second = (await r.json())["session"]
            replies["sessions"] = await post(http, "/offer", json={"type": "offer", "sdp": sdp})
            replies["audio file bytes"] = await post(http, f"/sessions/{first}/audio",
                                                     data=b"\0" * 150_000)
            url = f"{exposed.url}/ws/{first}?token={token}"
            async with http.ws_connect(url) as ws, http.ws_connect(url) as other:
                ready = await ws.receive_json()
                await other.receive_json()
                async with http.ws_connect(url) as third:
                    replies["sockets per session"] = (await receive_until_closed(third))[-1][1:]
                for name, message in [
                        ("rate", {"type": "format", "rate": 8000}),
                        ("control bytes", {"type": "style", "pad": "x" * 5000}),
                        ("text chars", {"type": "speak", "text": "word " * 30}),
                        ("format", {"type": "format", "rate": 16000})]:
                    await ws.send_json(message)
                    replies[name] = await next_reply(ws)
                pcm = np.zeros(16000, "<i2").tobytes()          # 1 s pieces, 5 s allowed
                for _ in range(6):                              # no reply when taken
                    await ws.send_bytes(pcm)
                replies["queued seconds"] = await next_reply(ws)
                await ws.send_bytes(b"\0" * 70000)
                replies["ws message bytes"] = (await receive_until_closed(ws))[-1][1:]
            for session in (first, second):
                async with http.delete(f"{exposed.url}/sessions/{session}",
                                       headers=headers) as r:
                    await r.read()
            async with http.post(exposed.url + "/offer", headers=headers,
                                 json={"type": "offer", "sdp": sdp}) as r:
                idle = (await r.json())["session"]
            idle_url = f"{exposed.url}/ws/{idle}?token={token}"
            async with http.ws_connect(idle_url) as ws:        # nothing sent: idle
                await ws.receive_json()
                waited = time.perf_counter()
                replies["idle"] = (await receive_until_closed(ws))[-1][1:]
                idle_after = time.perf_counter() - waited
            async with http.get(exposed.url + "/health", headers=headers) as r:
                health = await r.json()
        return ready, idle_after, health

    ready, idle_after, health = asyncio.run(run())
    report("limits", {k: list(v) if isinstance(v, tuple) else v for k, v in replies.items()})

    def refused(name, status, words):
        code, message = replies[name]
        assert code == status and words in message, (name, replies[name])

    assert ready["limits"]["max_text_chars"] == 100
    refused("upload bytes", 413, "at most")
    refused("upload pixels", 413, "megapixels")
    refused("pixel bomb", 413, "megapixels")
    refused("sdp bytes", 413, "too large")
    refused("sessions", 503, "full")
    refused("audio file bytes", 413, "at most")
    assert replies["sockets per session"][0] == 1013, replies
    assert "16000-48000" in replies["rate"]["message"], replies["rate"]
    assert "at most" in replies["control bytes"]["message"]
    assert "at most 100" in replies["text chars"]["message"]
    assert replies["format"]["type"] == "ok"
    assert replies["queued seconds"]["type"] == "error" and "more than 5 s" in replies[
        "queued seconds"]["message"], replies["queued seconds"]
    assert replies["ws message bytes"][0] == 1009, replies
    assert replies["idle"][0] == 1001 and "idle" in replies["idle"][1], replies["idle"]
    assert idle_after < 3 + 3, idle_after
    assert health["status"] == "ok"


def test_full_disk_when_caching_avatars(exposed):
    """The server's disk is full (its avatar cache and temporary folder on a full tmpfs):
    it started (the bundled portraits prepared without a cache), a new portrait is prepared
    and served all the same, and an audio file is taken (decoded in memory)."""
    if not exposed.full_disk:
        pytest.skip("unshare cannot make a mount namespace here: no full disk to test on")
    disk = [line for line in exposed.log.read_text().splitlines() if line.startswith("disk: ")]
    assert disk and disk[0].split()[-2] == "100%", disk          # really full
    headers = {"Authorization": f"Bearer {exposed.token}"}
    photo = (ROOT / "assets" / "grace_hopper.jpg").read_bytes()
    sdp = sample_offer()
    clip = (ALSA / "Front_Center.wav").read_bytes()[:90_000]

    async def run():
        async with await http_session() as http:
            async with http.post(exposed.url + "/avatars", data=photo, headers=headers) as r:
                upload = (r.status, await r.json())
            async with http.get(exposed.url + f"/avatars/{upload[1].get('avatar')}.jpg",
                                headers=headers) as r:
                preview = (r.status, len(await r.read()))
            async with http.post(exposed.url + "/offer", headers=headers,
                                 json={"type": "offer", "sdp": sdp,
                                       "avatar": upload[1].get("avatar")}) as r:
                session = (await r.json()).get("session")
            async with http.post(exposed.url + f"/sessions/{session}/audio", data=clip,
                                 headers=headers) as r:
                audio = (r.status, await r.json())
            async with http.delete(exposed.url + f"/sessions/{session}", headers=headers) as r:
                await r.read()
        return upload, preview, audio

    upload, preview, audio = asyncio.run(run())
    report("full_disk", {"disk": disk[0], "upload": upload, "preview": preview,
                         "audio": audio})
    assert upload[0] == 200, upload
    assert "could not write the avatar cache" in exposed.log.read_text()   # it was full
    assert preview[0] == 200 and preview[1] > 1000, preview
    assert audio[0] == 200 and audio[1]["seconds"] > 0.5, audio


def test_page_passes_the_token(tmp_path):
    """A server with an access token, and the page opened as /?token=...: in headless
    Chromium the page lists and shows the portraits, uploads one, connects, streams and
    hears the server over its websocket, all with the token it took from its own URL; the
    server saw no request without it (besides the page and its static files)."""
    from pathlib import Path as _Path

    from playwright.sync_api import sync_playwright

    chromium = _Path("/usr/bin/chromium")
    assert chromium.is_file(), "apt-get install chromium (the Makefile installs it)"
    token = "test-token-" + "x" * 16
    server = start_server("token_page_server", "--max-sessions", "1", "--token", token,
                          token=token)
    problems, result = [], {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(chromium), headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                      "--no-first-run", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync",
                      "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      "--allow-loopback-in-peer-connection"])
            page = browser.new_page()
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(f"{server.url}/?token={token}")
            page.wait_for_selector("#avatars button img")
            page.wait_for_function("[...document.querySelectorAll('#avatars img')]"
                                   ".every((im) => im.complete && im.naturalWidth > 0)")
            page.set_input_files("#upload", str(ROOT / "assets" / "grace_hopper.jpg"))
            page.wait_for_function("document.querySelectorAll('#avatars button').length >= 3",
                                   timeout=60_000)
            page.click("#connect")
            page.wait_for_function("window.talkingHead.server.type === 'stats'",
                                   timeout=60_000)
            result["status"] = page.inner_text("#status")
            result["portraits"] = page.evaluate("document.querySelectorAll('#avatars "
                                                "button').length")
            page.click("#connect")                       # disconnect: DELETE with the token
            page.wait_for_function("document.getElementById('connect').textContent "
                                   "=== 'Connect'")
            browser.close()
        deadline = time.monotonic() + 15
        while server.get("/health", token)[1]["sessions"] and time.monotonic() < deadline:
            time.sleep(0.3)
        result["sessions_after"] = server.get("/health", token)[1]["sessions"]
        result["unauthorized"] = parse_metrics(server.get("/metrics", token)[1]).get(
            "talking_head_unauthorized_total")
    finally:
        server.stop()
    report("token_page", result)
    assert not problems, problems
    assert result["portraits"] >= 3, result
    assert result["sessions_after"] == 0, result
    assert result["unauthorized"] == 0, result


async def vanishing_client(url: str) -> None:
    """A client that streams until it is killed (run by test_client_that_disappears)."""
    async with await http_session() as http:
        client = Client(url, microphone=wav_microphone(speech_clip().audio))
        await client.connect(http)
        await client.wait_for_video()
        print("streaming", client.session, flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__" and sys.argv[1:2] == ["vanishing-client"]:
    sys.path.insert(0, str(ROOT))
    asyncio.run(vanishing_client(sys.argv[2]))
