"""The headless session API end to end: a real server process, real websockets, real speech.

One server (256 px, at most 3 sessions, --max-output-rate 24000, short connect, peer and send
timeouts) serves every test here; the client is integrations/client (talking_head_client),
the one the Pipecat and LiveKit plugins use. The speech is conftest's real recordings. What is
checked, and why, at each test; figures also go to out/tests/headless_*.json.
"""

import asyncio
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy.signal import correlate, resample_poly
from test_server import raw_websocket, report, start_server

from benchmarks.webrtc_client import ROOT, http_session, metrics

sys.path.insert(0, str(ROOT / "integrations" / "client"))
from talking_head_client import ServerError, TalkingHeadClient, parse_slot  # noqa: E402

SIZE = 256
PEER_TIMEOUT, CONNECT_TIMEOUT, SEND_TIMEOUT = 3.0, 4.0, 2.0
MAX_SESSIONS = 3
QUIET = 0.01                   # peak of a silent slot (float, full scale 1)


@pytest.fixture(scope="module")
def server():
    s = start_server("headless_server", "--max-sessions", str(MAX_SESSIONS),
                     "--peer-timeout", str(PEER_TIMEOUT), "--connect-timeout",
                     str(CONNECT_TIMEOUT), "--send-timeout", str(SEND_TIMEOUT),
                     "--max-output-rate", "24000")
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text(errors="replace"), s.log_tail(80)


@pytest.fixture
def drained(server):
    """Each test starts with no session left over from the one before."""
    assert server.sessions_when_drained(PEER_TIMEOUT + CONNECT_TIMEOUT + 5) == 0
    return server


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def first_recording(real_speech: np.ndarray) -> np.ndarray:
    """The first recording of conftest's real_speech (1.43 s) and the pause after it."""
    return real_speech[:int(1.93 * 16000)]


async def collect(session, stop, timeout: float = 30.0) -> list:
    """[(arrival perf_counter, Slot | Event)] until stop(items) says so."""
    items = []
    deadline = time.perf_counter() + timeout
    while not stop(items):
        left = deadline - time.perf_counter()
        assert left > 0, ("timed out; the last slots (index, frame, speech):",
                          [(x.index, x.frame, x.speech) for x in slots_of(items)][-30:],
                          [x.data for x in events_of(items)][-5:])
        item = await session.receive(timeout=left)
        assert item is not None, f"the media websocket closed ({session.close_code})"
        items.append((time.perf_counter(), item))
    return items


def slots_of(items) -> list:
    return [x for _, x in items if x.kind == "slot"]


def events_of(items, skip=("stats", "ok")) -> list:
    return [x for _, x in items if x.kind == "event" and x.type not in skip]


def has_event(kind: str, count: int = 1):
    return lambda items: len([x for x in events_of(items) if x.type == kind]) >= count


def audio_of(slots) -> np.ndarray:
    return np.concatenate([s.samples() for s in slots]).astype(np.float32) / 32767


def match(received: np.ndarray, sent: np.ndarray) -> tuple[float, int]:
    """(normalised cross-correlation peak, lag in samples) of `sent` inside `received`."""
    pad = np.zeros(sent.size, np.float32)             # (received may be the shorter one)
    padded = np.concatenate([pad, received, pad])
    c = correlate(padded, sent, mode="valid", method="fft")
    lag = int(np.argmax(c))
    window = padded[lag:lag + sent.size]
    return float(c[lag] / (np.linalg.norm(sent) * np.linalg.norm(window) + 1e-9)), lag - pad.size


async def send_paced(session, pcm: bytes, piece: int = 320, lead: int = 5) -> float:
    """16 kHz PCM in 20 ms messages at real-time pace after a first `lead` of them at once
    (a TTS that streams as it speaks, its first chunk 100 ms). Returns how late the latest
    message was sent beyond that lead, s (a busy client falls behind)."""
    started, late = time.perf_counter(), 0.0
    for j, i in enumerate(range(0, len(pcm), 2 * piece)):
        due = started + max(j + 1 - lead, 0) * piece / 16000
        await asyncio.sleep(max(due - time.perf_counter(), 0))
        late = max(late, time.perf_counter() - due)
        await session.send_pcm(pcm[i:i + 2 * piece], rate=16000)
    return late


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_realtime_slots_carry_their_audio_once_with_events_in_order(drained, real_speech):
    """Idle frames flow before any audio; ~25 slots a second, none missing, each a 256 px
    JPEG with exactly 40 ms of 24 kHz audio; the audio sent comes back once, in the slots
    flagged as speech, sample for sample (correlation), between speech_started and
    speech_ended, in that order. Sent at once, an utterance takes the place of idle silence
    not generated yet (MediaClock._start_utterance_early): a second one after a pause is
    whole too; a third, sent 20 ms at a time as it is spoken (after a first 100 ms), is
    whole and comes out no sooner than its block and look-ahead can come (the pause gave the
    delay back)."""
    utterance = first_recording(real_speech)

    async def run():
        async with TalkingHeadClient(drained.url) as client:
            session = await client.create_session(rate=24000)
            opened = time.perf_counter()
            idle = await collect(session, lambda items: len(slots_of(items)) >= 50)
            sent = time.perf_counter()
            await session.send_pcm(pcm16(utterance), rate=16000)
            spoken = await collect(session, lambda items: has_event("speech_ended")(items)
                                   and items[-1][0] > sent + 0.5 + utterance.size / 16000)
            await collect(session, lambda items: len(slots_of(items)) >= 25)      # a pause
            await session.send_pcm(pcm16(utterance), rate=16000)
            again = await collect(session, has_event("speech_ended"))
            await collect(session, lambda items: len(slots_of(items)) >= 25)      # a pause
            trickled_at = time.perf_counter()                 # now 20 ms at a time, as spoken
            trickle = asyncio.ensure_future(send_paced(session, pcm16(utterance)))
            trickled = await collect(session, has_event("speech_ended"))
            late = await trickle
            await session.close()
        return opened, idle, sent, spoken, again, trickled_at, trickled, late, session.media

    opened, idle, sent, spoken, again, trickled_at, trickled, late, media = asyncio.run(run())
    second = audio_of([s for s in slots_of(again) if s.speech])
    second_correlation, _ = match(second, resample_poly(utterance, 3, 2))     # 24 kHz
    third = audio_of([s for s in slots_of(trickled) if s.speech])
    third_correlation, _ = match(third, resample_poly(utterance, 3, 2))
    trickled_first = next(t for t, x in trickled if x.kind == "slot" and x.speech)
    report("headless_second_utterance", {
        "correlation": round(second_correlation, 4), "speech_slots": len(second) // 960,
        "trickled_correlation": round(third_correlation, 4),
        "trickled_first_speech_ms": round(1000 * (trickled_first - trickled_at)),
        "trickled_latest_send_ms": round(1000 * late)})
    assert second_correlation > 0.95, second_correlation
    # whole, unless this client fell behind its own pace by more than its lead and then some
    # (the server rightly fills such a gap with silence)
    assert third_correlation > 0.95 or late > 0.1, (third_correlation, late)
    # audio that comes as it is spoken cannot be shown before a block and its look-ahead
    # (160 ms) have come: after a reply that started early, the output delay is given back
    assert trickled_first - trickled_at >= 0.14, 1000 * (trickled_first - trickled_at)
    items = idle + spoken
    slots = slots_of(items)
    arrivals = np.array([t for t, x in items if x.kind == "slot"])
    idle_slots = slots_of(idle)
    speech = [s for s in slots if s.speech]
    first_speech = next(t for t, x in spoken if x.kind == "slot" and x.speech)
    received = audio_of(slots)
    reference = resample_poly(utterance, 3, 2)                        # 16 -> 24 kHz
    correlation, lag = match(received, reference)
    expected_lag = (speech[0].index - slots[0].index) * 960
    order = [x.type for x in events_of(items)]
    ended = next(i for i, (_, x) in enumerate(items) if x.kind == "event"
                 and x.type == "speech_ended")
    last_speech = max(i for i, (_, x) in enumerate(items) if x.kind == "slot" and x.speech)
    result = {"idle_slots_first_s": int(np.sum(arrivals < opened + 1.0)),
              "slots_per_second": round((len(slots) - 1) / (arrivals[-1] - arrivals[0]), 2),
              "first_speech_ms": round(1000 * (first_speech - sent)),
              "speech_slots": len(speech), "utterance_slots": round(utterance.size / 640, 1),
              "correlation": round(correlation, 4), "lag_samples": lag - expected_lag,
              "events": order, "energy_ratio": round(float(
                  np.sum(audio_of(speech) ** 2) / np.sum(reference ** 2)), 3)}
    report("headless_realtime", result)
    assert media == {"size": SIZE, "fps": 25, "format": "jpeg", "quality": 80, "rate": 24000,
                     "samples_per_slot": 960, "pacing": "realtime"}
    assert all(len(s.pcm) == 2 * 960 and s.rate == 24000 for s in slots)
    assert [s.index for s in slots] == list(range(slots[0].index, slots[0].index + len(slots)))
    assert decode_jpeg(slots[-1].image).shape == (SIZE, SIZE, 3)
    assert all(s.width == s.height == SIZE and s.image[:2] == b"\xff\xd8" for s in slots)
    # video is not blocked until the first audio: idle (generated) frames flow at once
    assert result["idle_slots_first_s"] >= 15 and not any(s.speech for s in idle_slots)
    assert np.abs(audio_of(idle_slots)).max() < QUIET
    assert 23.5 <= result["slots_per_second"] <= 26.5, result
    # the input audio is played once, in sync: where the speech slots are, and nowhere else
    assert correlation > 0.95 and abs(lag - expected_lag) <= 960, result
    # (the clock may skip a few slots of the pause that ends the utterance: VAD hears none)
    voiced = np.nonzero(np.abs(utterance) > QUIET)[0][-1] / 640
    assert voiced - 2 <= len(speech) <= utterance.size / 640 + 2, result
    assert 0.8 < result["energy_ratio"] < 1.2, result
    assert np.abs(audio_of([s for s in slots if not s.speech])).max() < QUIET
    assert order == ["speech_started", "speech_ended"], order
    assert ended > last_speech          # playback finished: after the last frame left


def test_interrupt_stops_within_a_chunk_and_the_next_utterance_is_spoken(drained,
                                                                        real_speech):
    """Barge-in twice, mid-utterance: each time the speech stops within one chunk (at most 3
    slots of it after the "interrupted" event) and the sound goes quiet; speech_ended says
    interrupted. The utterance after them is spoken whole (the "deaf after interruption"
    bug): its audio comes back, correlated, and it ends by itself."""
    last = first_recording(real_speech)

    async def run():
        rounds = []
        async with TalkingHeadClient(drained.url) as client:
            session = await client.create_session(rate=16000)
            await collect(session, lambda items: len(slots_of(items)) >= 10)
            for _ in range(2):
                await session.send_pcm(pcm16(real_speech), rate=16000)
                items = await collect(session, lambda items: len(
                    [x for x in slots_of(items) if x.speech]) >= 25)
                await session.interrupt()
                items += await collect(session, has_event("speech_ended"))
                items += await collect(session, lambda items: len(slots_of(items)) >= 15)
                rounds.append(items)
            await session.send_pcm(pcm16(last), rate=16000)
            final = await collect(session, has_event("speech_ended"))
            final += await collect(session, lambda items: len(slots_of(items)) >= 5)
            await session.close()
        return rounds, final

    rounds, final = asyncio.run(run())
    result = {"rounds": []}
    for items in rounds:
        at = next(i for i, (_, x) in enumerate(items) if x.kind == "event"
                  and x.type == "interrupted")
        after = slots_of(items[at:])
        ended = next(x for x in events_of(items) if x.type == "speech_ended")
        spoken_after = sum(s.speech for s in after)
        quiet_from = next(i for i, s in enumerate(after) if not s.speech)
        result["rounds"].append({"speech_slots_after_interrupt": spoken_after,
                                 "ended": ended.data, "peak_after": round(float(   # (the
                                     np.abs(audio_of(after[quiet_from + 1:])).max()), 4)})
        #                                 first quiet slot starts with the resampler's 1 ms)
    slots = slots_of(final)
    correlation, _ = match(audio_of(slots), last)
    speech = [s for s in slots if s.speech]
    result.update({"final_correlation": round(correlation, 4), "final_speech_slots":
                   len(speech), "final_events": [x.type for x in events_of(final)]})
    report("headless_interrupt", result)
    for r in result["rounds"]:
        assert r["speech_slots_after_interrupt"] <= 3, result
        assert r["ended"]["interrupted"] is True, result
        assert r["peak_after"] < QUIET, result
    assert result["final_events"] == ["speech_started", "speech_ended"], result
    assert not events_of(final)[-1]["interrupted"]
    voiced = np.nonzero(np.abs(last) > QUIET)[0][-1] / 640
    assert correlation > 0.95 and voiced - 2 <= len(speech) <= last.size / 640 + 2, result


def test_fast_pacing_raw_frames(drained, real_speech):
    """"fast" pacing delivers 9 s of speech faster than real time, every frame in order with
    its own audio (correlated with what was sent), as raw RGB frames."""
    async def run():
        async with TalkingHeadClient(drained.url) as client:
            session = await client.create_session(rate=16000, format="rgb", pacing="fast")
            await collect(session, lambda items: len(slots_of(items)) >= 5)
            await session.send_pcm(pcm16(real_speech), rate=16000)
            items = await collect(session, has_event("speech_ended"), timeout=60)
            await session.close()
        return items

    items = asyncio.run(run())
    slots = slots_of(items)
    speech = [s for s in slots if s.speech]
    started = next(t for t, x in items if x.kind == "event" and x.type == "speech_started")
    ended = next(t for t, x in items if x.kind == "event" and x.type == "speech_ended")
    correlation, _ = match(audio_of(slots), real_speech)
    frames = [s.frame for s in slots]
    result = {"speech_seconds": round(real_speech.size / 16000, 2),
              "delivered_in_s": round(ended - started, 2),
              "speed": round(real_speech.size / 16000 / (ended - started), 2),
              "speech_slots": len(speech), "correlation": round(correlation, 4)}
    report("headless_fast", result)
    assert result["speed"] > 1.2, result
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert all(len(s.image) == SIZE * SIZE * 3 and s.rgb().shape == (SIZE, SIZE, 3)
               for s in slots)
    assert abs(len(speech) - real_speech.size / 640) <= 2, result
    assert correlation > 0.95, result


def test_bad_requests_and_messages_get_clear_errors(drained):
    """Malformed session requests and websocket messages are refused with a message that says
    what is allowed; the session streams on; a second media websocket is refused; a closed
    media websocket can be opened again; the server stays healthy."""
    import aiohttp

    async def run():
        refused = {}
        async with await http_session() as http:
            for name, body in [("not json", b"{nope"), ("array", b"[]"),
                               ("rate", json.dumps({"rate": 12345})),
                               ("rate over limit", json.dumps({"rate": 48000})),
                               ("format", json.dumps({"format": "png"})),
                               ("quality", json.dumps({"quality": 0})),
                               ("pacing", json.dumps({"pacing": "slow"})),
                               ("field", json.dumps({"sample_rate": 16000})),
                               ("avatar", json.dumps({"avatar": "nobody"}))]:
                async with http.post(drained.url + "/sessions", data=body) as r:
                    refused[name] = (r.status, (await r.json())["error"])
            async with http.ws_connect(drained.url + "/sessions/nosuchsession/media") as ws:
                await ws.receive()
                refused["no session"] = (ws.close_code, "")
        async with TalkingHeadClient(drained.url) as client:
            session = await client.create_session(rate=16000, quality=50)
            ws = session.ws
            replies = {}
            for name, message in [("pcm first", b"\x00\x01" * 100),
                                  ("bad json", "{oops"), ("no type", "[1, 2]"),
                                  ("unknown", json.dumps({"type": "dance"})),
                                  ("rate", json.dumps({"type": "format", "rate": 7})),
                                  ("format", json.dumps({"type": "format", "rate": 16000})),
                                  ("odd pcm", b"\x00\x01\x02")]:
                await (ws.send_bytes(message) if isinstance(message, bytes)
                       else ws.send_str(message))
                items = await collect(session, lambda items: bool(
                    [x for x in events_of(items, skip=("stats",))]))
                replies[name] = events_of(items, skip=("stats",))[0].data
            async with client.http.ws_connect(drained.url + session.path) as second:
                await second.receive()
                replies["second websocket"] = second.close_code
            streaming = slots_of(await collect(session, lambda items: len(
                slots_of(items)) >= 10))
            await ws.send_bytes(b"\x00" * (2**20 + 2))           # over --max-ws-message
            while (await ws.receive(timeout=10)).type not in (
                    aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
            replies["too big"] = ws.close_code
            await session.connect()                              # the session lives on
            again = slots_of(await collect(session, lambda items: len(
                slots_of(items)) >= 10))
            await session.close()
        return refused, replies, streaming, again

    refused, replies, streaming, again = asyncio.run(run())
    report("headless_bad_input", {"refused": refused, "replies": replies})

    def said(name, status, *words):
        code, text = refused[name]
        assert code == status and all(w in text for w in words), (name, refused[name])

    said("not json", 400, "JSON")
    said("array", 400, "JSON object")
    said("rate", 400, "rate must be one of", "24000")
    said("rate over limit", 400, "--max-output-rate")
    said("format", 400, "jpeg", "rgb")
    said("quality", 400, "1..95")
    said("pacing", 400, "realtime", "fast")
    said("field", 400, "unknown field", "rate")
    said("avatar", 400, "unknown avatar")
    assert refused["no session"][0] == 4404
    for name, words in [("pcm first", "format"), ("bad json", "JSON"), ("no type", "type"),
                        ("unknown", "unknown message type"), ("rate", "rate"),
                        ("odd pcm", "whole number")]:
        assert replies[name]["type"] == "error" and words in replies[name]["message"], (
            name, replies[name])
    assert replies["format"] == {"type": "ok", "for": "format"}
    assert replies["second websocket"] == 1013
    assert replies["too big"] == 1009
    assert len(streaming) == 10 and len(again) == 10
    assert decode_jpeg(again[-1].image).shape == (SIZE, SIZE, 3)
    assert drained.get("/health")[1]["status"] == "ok"


def test_sessions_count_against_the_limit_and_end(drained):
    """Headless sessions count against --max-sessions (the next is refused with 503 and a
    reason); DELETE ends one at once; one whose media websocket never opens ends after
    --connect-timeout."""
    async def run():
        async with TalkingHeadClient(drained.url) as client:
            made = [await client.create_session(connect=False) for _ in range(MAX_SESSIONS)]
            try:
                await client.create_session(connect=False)
                full = None
            except ServerError as e:
                full = (e.status, e.message)
            await made[0].close()
            after_delete = drained.get("/health")[1]["sessions"]
            made.append(await client.create_session(connect=False))
            created = time.perf_counter()
            left = drained.sessions_when_drained(CONNECT_TIMEOUT + 5)
        return full, after_delete, left, time.perf_counter() - created

    full, after_delete, left, ended_after = asyncio.run(run())
    report("headless_limits", {"full": full, "after_delete": after_delete,
                               "never_connected_ended_after_s": round(ended_after, 2)})
    assert full and full[0] == 503 and "--max-sessions" in full[1], full
    assert after_delete == MAX_SESSIONS - 1
    assert left == 0 and ended_after < CONNECT_TIMEOUT + 3, ended_after


def test_reader_that_stops_is_cut_and_its_session_freed(drained):
    """A media websocket client that never reads (its receive buffer full) is cut within
    --send-timeout of its stall (the server counts it), and its session ends after
    --peer-timeout."""
    async def run():
        async with await http_session() as http:
            async with http.post(drained.url + "/sessions", json={}) as r:
                session = (await r.json())["session"]
            before = await metrics(http, drained.url)
            sock = raw_websocket(drained.url, f"/sessions/{session}/media")
            opened, cut = time.perf_counter(), None
            while time.perf_counter() - opened < 30:
                await asyncio.sleep(0.2)
                now = await metrics(http, drained.url)
                if now["talking_head_websockets_stalled_total"] > before[
                        "talking_head_websockets_stalled_total"]:
                    cut = time.perf_counter()
                    break
            sock.close()
        freed = drained.sessions_when_drained(PEER_TIMEOUT + 5)
        return opened, cut, freed, time.perf_counter()

    opened, cut, freed, ended = asyncio.run(run())
    result = {"cut_after_s": cut and round(cut - opened, 2),
              "freed_after_cut_s": cut and round(ended - cut, 2)}
    report("headless_slow_reader", result)
    # the buffers (256 KiB kernel send buffer, a 4 KiB receive buffer) fill within ~2 s at
    # 25 JPEG slots a second, then the send stalls for --send-timeout
    assert cut is not None and cut - opened < SEND_TIMEOUT + 5.0, result
    assert freed == 0 and ended - cut < PEER_TIMEOUT + 3.0, result


VANISHING = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from talking_head_client import TalkingHeadClient

async def main():
    async with TalkingHeadClient(sys.argv[1]) as client:
        session = await client.create_session()
        await session.receive()
        print("streaming", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_vanished_client_frees_its_session(drained):
    """A client process killed mid-stream (no goodbye) frees its session within
    --peer-timeout (plus the watch's second)."""
    child = subprocess.Popen([sys.executable, "-c", VANISHING, drained.url,
                              str(ROOT / "integrations" / "client")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().startswith("streaming")
        during = drained.get("/health")[1]["sessions"]
        killed = time.perf_counter()
    finally:
        child.kill()
        child.wait(timeout=10)
    left = drained.sessions_when_drained(PEER_TIMEOUT + 5)
    freed = time.perf_counter() - killed
    report("headless_vanished", {"sessions_during": during, "freed_after_s": round(freed, 2)})
    assert during == 1 and left == 0 and freed < PEER_TIMEOUT + 3.0, freed


def test_client_package_never_imports_the_engine():
    """integrations/client stands alone: aiohttp (numpy optional), none of serve/, stream/,
    models/ (or torch)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import talking_head_client; "
            "print([m for m in sys.modules if m.split('.')[0] in "
            "('serve', 'stream', 'models', 'torch', 'numpy')])")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "integrations" / "client")],
                         capture_output=True, text=True, cwd="/", check=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.stdout.strip() == "[]", out.stdout


def test_options_and_slot_framing_offline():
    """Without a server: a raw frame over --max-raw-frame-bytes is refused with the flag's
    name; every output rate gets exactly rate / 25 samples per slot, continuous; a slot
    message round-trips through the client's parser."""
    from serve.headless import OUTPUT_RATES, encode_slot, media_options
    from serve.http import ClientError
    from serve.limits import Limits
    from stream.headless import Slot, SlotAudio

    with pytest.raises(ClientError, match="--max-raw-frame-bytes"):
        media_options({"format": "rgb"}, Limits(max_raw_frame_bytes=100_000), 256)
    assert media_options({}, Limits(), 512)["rate"] == 48000
    t = np.arange(48000 * 2) / 48000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for rate in OUTPUT_RATES:
        out = SlotAudio(rate)
        pieces = [out(tone[i:i + 1920]) for i in range(0, tone.size, 1920)]
        assert {len(p) for p in pieces} == {2 * rate // 25}, rate
        got = np.frombuffer(b"".join(pieces), "<i2")[rate // 10:] / 32767
        smooth = 0.5 * (2 * np.pi * 440 / rate) ** 2           # |2nd difference| of the tone
        assert np.abs(np.diff(got, 2)).max() < 1.5 * smooth + 0.005, rate   # no clicks, gaps
        assert abs(np.abs(got).max() - 0.5) < 0.02, rate
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8)
    options = media_options({"format": "rgb", "rate": 16000}, Limits(), 256)
    slot = parse_slot(encode_slot(Slot(7, 42, image, b"\x01\x00" * 640, True, 0.0), options))
    assert (slot.index, slot.frame, slot.speech, slot.pts) == (7, 42, True, 0.28)
    assert np.array_equal(slot.rgb(), image) and slot.samples().tolist() == [1] * 640
