"""Fuzzing (hypothesis) every message parser and endpoint of the server with random and
malformed input: no crash, no hang, no traceback to a client, the server healthy after.

The parsers are called directly (SDP check, JSON, the TTS voice name and its WAV output,
uploaded audio files, uploaded portraits in the portrait process's function); the endpoints
are hit over loopback on one real server process (256 px, at most 3 sessions): /offer with
random JSON and mutated real offers, /avatars with random and mutated real images, raw and
multipart, /sessions/{id}/audio with random and mutated real recordings, every other route
with random paths, methods and headers, the websocket with random text, JSON control
messages and PCM, and the TCP port itself with random bytes. Meanwhile one aiortc client
streams from the server throughout; at the end it must still be receiving video, /health
must answer, and the server log must hold no traceback.

Example counts and sizes are bounded so that the file runs in about two minutes on two
loaded cores; hypothesis draws new examples on every run (its database is off).
"""

import asyncio
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_server import report, start_server

from benchmarks.webrtc_client import ALSA, ROOT, Client, http_session, sample_offer

pytestmark = pytest.mark.filterwarnings(   # aiohttp's websocket masks use `random` on the
    "ignore::hypothesis.errors.HypothesisDeprecationWarning")   # clients' thread meanwhile
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=False,
                suppress_health_check=list(HealthCheck))
REQUEST_TIMEOUT = 60.0          # a reply must come within this: no request hangs
ALLOWED_CLOSE = {1000, 1001, 1008, 1009, 4404}   # 1011 would be an internal error


# ----------------------------------------------------------------------------- seeds

OFFER = sample_offer("sendrecv")
WAV = (ALSA / "Front_Center.wav").read_bytes()
PHOTO = (ROOT / "assets" / "grace_hopper.jpg").read_bytes()


def small_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 90)).save(out, "PNG")
    return out.getvalue()


PNG = small_png()


SEEDS = {"wav": WAV, "wav head": WAV[:4000], "photo": PHOTO, "png": PNG}


@st.composite
def mutated(draw, seed: str, max_edits: int = 8) -> bytes:
    """A real file (SEEDS[seed]) with a few bytes overwritten, a slice cut out, or cut
    short."""
    data = bytearray(SEEDS[seed])
    for _ in range(draw(st.integers(1, max_edits))):
        kind = draw(st.sampled_from(["flip", "cut", "truncate", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 4096))]
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


@st.composite
def mutated_sdp(draw) -> str:
    """A real offer with lines dropped, duplicated, reordered or given random values."""
    lines = OFFER.strip().split("\r\n")
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["drop", "dup", "garble", "swap", "value"]))
        if kind == "drop" and len(lines) > 1:
            del lines[at]
        elif kind == "dup":
            lines.insert(at, lines[at])
        elif kind == "garble":
            lines[at] = draw(st.text(max_size=80))
        elif kind == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        else:
            key = lines[at].split(":", 1)[0].split(" ", 1)[0]
            lines[at] = key + draw(st.sampled_from([":", " ", "="])) + draw(
                st.text(st.characters(codec="ascii"), max_size=40))
    return "\r\n".join(lines) + draw(st.sampled_from(["\r\n", "\n", ""]))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=4),
    max_leaves=12)
NUMBERS = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.booleans(),
                    st.none(), st.text(max_size=8), st.sampled_from([8000, 16000, 48000]))
CONTROL = st.one_of(
    st.fixed_dictionaries({"type": st.just("format"), "rate": NUMBERS, "channels": NUMBERS,
                           "sample": st.one_of(st.sampled_from(["s16", "f32", "u8"]),
                                               JSON_VALUES)}),
    st.fixed_dictionaries({"type": st.just("speak"),
                           "text": st.one_of(st.text(max_size=60), JSON_VALUES),
                           "voice": st.one_of(st.sampled_from(
                               ["espeak/en-us", "festival/kal_diphone", "espeak/$(x)",
                                "festival/../../x", "espeak/" + "a" * 60]),
                               st.text(max_size=30), JSON_VALUES)}),
    st.fixed_dictionaries({"type": st.just("interrupt")}),
    st.fixed_dictionaries({"type": st.just("style"),
                           "values": st.one_of(JSON_VALUES, st.dictionaries(
                               st.sampled_from(["head_amplitude", "mouth_amplitude", "x"]),
                               NUMBERS, max_size=3))}),
    st.fixed_dictionaries({"type": st.just("avatar"),
                           "id": st.one_of(st.sampled_from(["astronaut", "grace_hopper"]),
                                           JSON_VALUES)}),
    st.fixed_dictionaries({"type": st.just("fault"), "fault": st.just("engine")}),  # off here
    st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
    JSON_VALUES)
WS_MESSAGE = st.one_of(
    CONTROL.map(json.dumps),
    st.text(max_size=200),
    st.sampled_from(["[" * 100000, '{"type": ' * 50000, "\x00", "", '{"type": "format"']),
    st.binary(max_size=4096),
    st.integers(1, 40).map(lambda k: np.random.default_rng(k).normal(0, 0.2, 960 * k)
                           .astype("<f4").tobytes()),
    st.integers(1, 40).map(lambda k: (np.random.default_rng(k).normal(0, 3000, 960 * k))
                           .astype("<i2").tobytes()))


# ----------------------------------------------------------------------------- the server

class Background:
    """An event loop on a thread of its own: the server's clients live there (the aiortc
    witness streams the whole time) while hypothesis drives examples from the test."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = REQUEST_TIMEOUT):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def fuzz():
    server = start_server("fuzz_server", "--max-sessions", "3", "--connect-timeout", "3",
                          "--peer-timeout", "5", "--max-pending-uploads", "2")
    bg = Background()

    async def begin():
        http = await http_session()
        witness = Client(server.url)
        await witness.connect(http)
        await witness.wait_for_video()
        return http, witness

    bg.http, bg.witness = bg.run(begin(), timeout=120)
    bg.server, bg.started = server, time.perf_counter()
    bg.tried, bg.events = {}, []
    yield bg
    try:
        bg.run(bg.witness.close())
        bg.run(bg.http.close())
    finally:
        bg.close()
        server.stop()
    assert "Traceback" not in server.log.read_text(errors="replace"), server.log_tail(80)


def count(bg, name: str, what=None) -> None:
    bg.tried[name] = bg.tried.get(name, 0) + 1
    bg.events.append((time.perf_counter(), name, repr(what)[:120]))


async def request(bg, method: str, path: str, **kwargs) -> tuple[int, object]:
    async with bg.http.request(method, bg.server.url + path, **kwargs) as r:
        body = await r.read()
        kind = r.headers.get("Content-Type", "")
    if kind.startswith("application/json"):
        body = json.loads(body)
    return r.status, body


def check_reply(status: int, body, allowed=(200,)) -> None:
    """A reply is a success the route may give, or a 4xx/503 with a JSON message."""
    assert status < 500 or status == 503, (status, body)
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str), (status, body)
        assert "Traceback" not in body["error"]
    else:
        assert status in allowed, (status, body)


# ----------------------------------------------------------------------------- parsers

@FUZZ
@given(st.one_of(st.text(max_size=400), mutated_sdp()))
def test_sdp_check_never_crashes(sdp):
    from serve.signalling import check_sdp

    try:
        check_sdp(sdp)
    except ValueError as e:
        assert str(e)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.integers(1, 200000).map(lambda n: b"[" * n),
                 JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_json_parser_never_crashes(data):
    from serve.http import ClientError, parse_json

    try:
        parse_json(data)
    except ClientError as e:
        assert e.status == 400


@settings(FUZZ, max_examples=60)
@given(st.one_of(st.text(max_size=60), st.sampled_from(["espeak/en-us", "festival/"])),
       st.one_of(st.binary(max_size=200), mutated("wav head"), st.just(WAV[:44])))
def test_voice_names_and_wav_output_never_crash(voice, wav):
    from stream.tts import SpeechError, Voice, parse_wav

    for call, value in ((Voice.parse, voice), (parse_wav, wav)):
        try:
            call(value)
        except SpeechError as e:
            assert str(e)


@settings(FUZZ, max_examples=30)
@given(st.one_of(st.binary(max_size=2000), mutated("wav")))
def test_audio_file_decoder_never_crashes(data):
    from models.audio_io import AudioInputError
    from stream.sources import decode_audio_bytes

    started = time.perf_counter()
    try:
        audio, rate = decode_audio_bytes(data)
        assert audio.dtype == np.float32 and np.isfinite(audio).all() and 8000 <= rate <= 48000
    except AudioInputError as e:
        assert str(e)
    assert time.perf_counter() - started < 30


@settings(FUZZ, max_examples=12)
@given(st.one_of(st.binary(max_size=500), mutated("png", 3), mutated("photo", 3)))
def test_portrait_preparation_never_crashes(data):
    """What the portrait process runs on an upload: a PortraitError, or an avatar."""
    from models.face import PortraitError
    from serve.preparation import prepare_arrays

    try:
        prepare_arrays(data, 256, 25_000_000)
    except PortraitError as e:
        assert str(e)


# ----------------------------------------------------------------------------- endpoints

ROUTES = ["/", "/health", "/metrics", "/avatars", "/avatars/astronaut.jpg", "/offer",
          "/sessions/x/audio", "/sessions/x", "/sessions/x/close", "/ws/x", "/static/client.js",
          "/static/../server.py", "/static/%2e%2e/server.py", "/avatars/..%2fserver.py.jpg"]


@settings(FUZZ, max_examples=60)
@given(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
       st.one_of(st.sampled_from(ROUTES), st.text(max_size=40).map(lambda p: "/" + p)),
       st.dictionaries(st.sampled_from(["Content-Type", "Authorization", "Content-Encoding",
                                        "Transfer-Encoding", "Upgrade", "Range"]),
                       st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                       max_size=3),
       st.binary(max_size=300))
def test_any_route_any_method_any_body(fuzz, method, path, headers, body):
    from urllib.parse import quote

    count(fuzz, "http requests (any route, method, headers, body)", (method, path))
    path = quote(path, safe="/%?=&.")
    try:
        status, reply = fuzz.run(request(fuzz, method, path, headers=headers, data=body))
    except TimeoutError:
        pytest.fail(f"{method} {path} {headers}: no reply within {REQUEST_TIMEOUT:.0f} s")
    except Exception as e:   # aiohttp's client refusing its own input, or the server hanging
        if not type(e).__module__.startswith("aiohttp") and not isinstance(e, ValueError):
            raise            # up on a request it cannot parse: both fine, nothing crashed
        count(fuzz, "http requests closed by the server or refused by the client")
        return
    assert status < 500 or status == 503, (method, path, headers, status, reply)
    if path.startswith("/static/") and status == 200:
        assert b"import " not in reply[:2000], path                 # never the server's code


@settings(FUZZ, max_examples=50)
@given(st.one_of(
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"type": st.just("offer"), "sdp": st.one_of(mutated_sdp(),
                                                                      st.text(max_size=200)),
                           "avatar": st.one_of(st.none(), st.sampled_from(["astronaut"]),
                                               JSON_VALUES)})
    .map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300)))
def test_offer_endpoint(fuzz, body):
    count(fuzz, "offers (random JSON, mutated real SDP)", body[:80])
    status, reply = fuzz.run(request(fuzz, "POST", "/offer", data=body,
                                     headers={"Content-Type": "application/json"}))
    check_reply(status, reply)
    if status == 200:                 # a mutated offer that still made sense: end it at once
        count(fuzz, "offers answered (then ended)")
        assert set(reply) == {"sdp", "type", "session"}
        status, _ = fuzz.run(request(fuzz, "DELETE", f"/sessions/{reply['session']}"))
        assert status in (200, 404)


@settings(FUZZ, max_examples=15)
@given(st.one_of(st.binary(max_size=1000), mutated("png", 4), mutated("photo", 3)),
       st.booleans())
@example(b"\x1aE\xdf\xa3", False)          # a Matroska header and nothing else: a video job
def test_avatar_upload_endpoint(fuzz, data, multipart):
    import aiohttp

    count(fuzz, "portrait uploads (random, mutated real images)", len(data))
    if multipart:
        form = aiohttp.FormData()
        form.add_field("image", data, filename="../../x y.png",
                       content_type="application/octet-stream")
        status, reply = fuzz.run(request(fuzz, "POST", "/avatars", data=form))
    else:
        status, reply = fuzz.run(request(fuzz, "POST", "/avatars", data=data))
    check_reply(status, reply, allowed=(200, 202))
    if status == 200:
        assert reply["avatar"].startswith("u") and "/" not in reply["name"]
    if status == 202:              # bytes that begin like a video: a job, which must fail cleanly
        count(fuzz, "uploads taken for a video (followed to their error)")
        status, reply = follow_job(fuzz, reply["job"])
        assert 400 <= status < 500 and reply["state"] == "failed", (status, reply)
        check_reply(status, reply)


def follow_job(fuzz, job: str, timeout: float = 60.0) -> tuple[int, dict]:
    """A video job's last reply, polled until it is no longer queued or preparing."""
    deadline = time.monotonic() + timeout
    while True:
        status, reply = fuzz.run(request(fuzz, "GET", f"/avatars/jobs/{job}"))
        if status != 200 or reply["state"] not in ("queued", "preparing"):
            return status, reply
        assert time.monotonic() < deadline, reply
        time.sleep(0.2)


@settings(FUZZ, max_examples=25)
@given(st.one_of(st.binary(max_size=2000), mutated("wav")),
       st.sampled_from(["witness", "nobody", "", "../health"]))
def test_session_audio_endpoint(fuzz, data, session):
    count(fuzz, "audio files (random, mutated real recordings)", len(data))
    if session == "witness":
        session = fuzz.witness.session
    status, reply = fuzz.run(request(fuzz, "POST", f"/sessions/{session}/audio", data=data))
    check_reply(status, reply)


@settings(FUZZ, max_examples=30)
@given(st.lists(WS_MESSAGE, min_size=1, max_size=6))
def test_websocket_messages(fuzz, messages):
    """Random messages on the witness's websocket: each is answered (ok or error), taken
    silently (PCM), or the socket is closed with a documented code; never 1011."""
    count(fuzz, "websocket messages", messages)
    fuzz.tried["websocket messages"] += len(messages) - 1
    closed = fuzz.run(_websocket(fuzz, messages))
    assert closed is None or closed in ALLOWED_CLOSE, (closed, messages)


async def _websocket(bg, messages) -> int | None:
    import aiohttp

    async with bg.http.ws_connect(f"{bg.server.url}/ws/{bg.witness.session}") as ws:
        ready = await ws.receive_json()
        assert ready["type"] == "ready"
        try:
            for message in messages + ['{"type": "end-of-example"}']:   # its error: the end
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
        except ConnectionError:                    # the server closed it (the reason follows)
            pass
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while time.monotonic() < deadline:
            msg = await ws.receive(timeout=REQUEST_TIMEOUT)
            if msg.type == aiohttp.WSMsgType.TEXT:
                reply = json.loads(msg.data)
                assert "Traceback" not in msg.data
                if reply.get("type") == "error" and "end-of-example" in reply["message"]:
                    return None
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED):
                return ws.close_code
        raise AssertionError("no answer on the websocket")


@settings(FUZZ, max_examples=30)
@given(st.one_of(st.binary(min_size=1, max_size=2000),
                 st.text(max_size=300).map(lambda t: ("GET /" + t + " HTTP/1.1\r\n").encode()),
                 st.binary(max_size=200).map(lambda b: b"POST /offer HTTP/1.1\r\nHost: x\r\n"
                                             b"Content-Length: 999999999\r\n\r\n" + b),
                 st.binary(max_size=200).map(lambda b: b"POST /avatars HTTP/1.1\r\nHost: x\r\n"
                                             b"Transfer-Encoding: chunked\r\n\r\n" + b)))
def test_raw_bytes_on_the_port(fuzz, data):
    """Random bytes straight to the TCP port: an HTTP error or a closed connection, soon."""
    count(fuzz, "raw TCP payloads", data[:60])
    port = int(fuzz.server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)                      # the client has said all it will
        try:
            reply = sock.recv(200)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert reply == b"" or reply.startswith(b"HTTP/1."), reply
    if reply:
        assert int(reply.split()[1]) < 500 or int(reply.split()[1]) == 503, reply


def test_server_healthy_after_fuzzing(fuzz):
    """Runs last: /health answers, the witness is still streaming, nothing leaked."""
    before = len(fuzz.witness.video)
    time.sleep(3.0)
    status, health = fuzz.run(request(fuzz, "GET", "/health"))
    streamed = len(fuzz.witness.video) - before
    arrivals = np.array([v[0] for v in fuzz.witness.video])
    gaps = np.diff(arrivals)
    worst = arrivals[int(np.argmax(gaps))]
    around = [f"{t - worst:+.1f}s {name} {what}" for t, name, what in fuzz.events
              if worst - 15 < t < worst + 1]
    result = {"tried": fuzz.tried, "health": health, "witness_frames_last_3s": streamed,
              "events_before_worst_gap": around[-8:],
              "witness_frames": len(arrivals), "witness_worst_gap_ms": round(1000 * gaps.max()),
              "witness_seconds": round(arrivals[-1] - arrivals[0], 1)}
    report("fuzz", result)
    assert status == 200 and health["status"] == "ok"
    assert health["sessions"] == 1, health                 # only the witness is left
    assert streamed >= 25, result                          # >= 8 fps even on a loaded CPU
    assert gaps.max() < 5.0, result
