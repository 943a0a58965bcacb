"""An aiortc client of the talking-head server, and what it takes to measure one.

    server = start_server(log, "--size", "256")      # `python server.py` on a loopback port
    client = Client(server.url, microphone=wav_microphone(audio), codec="h264")
    await client.connect(http)                      # offer/answer; records what it receives
    client.received_audio("sender"), client.video_times("sender")
    server.stop()

Everything stays on 127.0.0.1: the server is started with --host 127.0.0.1 unless told
otherwise (it then offers only loopback ICE candidates) and the client offers only 127.0.0.1
too, with no STUN/TURN. The latency and soak benchmarks and the end-to-end tests
(tests/test_server.py and its neighbours) all use this one client.

Clocks. "arrival": when this process got a decoded frame (perf_counter). "sender": when the
server sent it, from the stream's RTP timestamps and RTCP sender reports (what a WebRTC
player pairs sound and picture by), converted to this process's perf_counter clock (both
processes share the machine's wall clock). "media" (sound only): the RTP timestamps alone,
placed on the sender clock by one offset for the whole stream (the median of what the
reports give): what a receiver's jitter buffer plays by. aiortc's report pairs the last packet
sent with the time it was sent, so on a loaded server, whose packets leave in bursts, the
"sender" clock moves by tens of ms from one report to the next; the "media" clock does not,
and shows exactly what the stream holds, a gap or a cut included.

Client(trace=True) also keeps, per received stream, what the latency budget needs
(benchmarks/webrtc_budget.py): every RTP packet (arrival, timestamp, marker, the server's
send time from its abs-send-time header extension), when aiortc's jitter buffer let each
frame go, and when its decoder thread decoded it.
"""

import asyncio
import fractions
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ALSA = Path("/usr/share/sounds/alsa")
PACKET = 960                                     # 20 ms at 48 kHz: one microphone packet


# ----------------------------------------------------------------------------- the server

@contextmanager
def clients_first():
    """The clients stand for browsers on other machines: meanwhile this thread, and the
    threads it starts, run above the servers on this machine (nice -20, where this process
    may: root), so that what is measured is the server, not a client starved beside it.
    The thread's nice is put back after."""
    tid = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, tid)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, -20)
    except OSError:
        pass
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen
    log: Path
    token: str | None = None                 # the access token, where the server needs one

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str, token: str | None = None, timeout: float = 10.0):
        """GET path -> (status, parsed JSON or text), with the token when given."""
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def sessions_when_drained(self, timeout: float = 15.0) -> int:
        """Live sessions once none is left, or after `timeout` (sessions end asynchronously
        after their client goes)."""
        deadline = time.monotonic() + timeout
        while True:
            sessions = self.get("/health", self.token)[1]["sessions"]
            if sessions == 0 or time.monotonic() > deadline:
                return sessions
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)          # aiohttp shuts down cleanly
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_server(log: Path, *args: str, timeout: float = 300.0, host: str = "127.0.0.1",
                 prefix: tuple[str, ...] = (), env: dict | None = None,
                 token: str | None = None, root: Path = ROOT) -> ServerProcess:
    """`python server.py --host HOST --port FREE *args` (the server.py of checkout `root`:
    this one unless told), its output to `log`, run under
    `prefix` (e.g. unshare) when given and with `env` added to the environment; returns once
    /health answers over 127.0.0.1. A server on a non-loopback host prints the access token
    it made: it is read from its output (else `token` is the one it was given). The first
    start on a fresh machine exports the onnx engine's graphs into the user cache (~15 s on 2
    cores here, more on a slower CPU), hence the long timeout."""
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [*prefix, sys.executable, str(root / "server.py"), "--host", host, "--port",
               str(port), *args]
    with open(log, "w") as f:
        process = subprocess.Popen(command, cwd=root, stdout=f, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log, token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{server.log_tail()}")
        made = re.search(r"token, made now: (\S+)", log.read_text(errors="replace"))
        if made:
            server.token = made.group(1)
        try:
            status, health = server.get("/health", server.token, timeout=1)
            if status == 200 and health["status"] == "ok":
                return server
        except OSError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s:\n{server.log_tail()}")


def process_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds used so far, peak resident MiB) of a process on this Linux machine."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = stat[stat.rindex(")") + 2:].split()
    cpu = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")       # utime + stime
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_figures(pid: int) -> dict:
    """Threads, open file descriptors and resident MB of a process on this Linux machine."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    return {"threads": len(os.listdir(f"/proc/{pid}/task")),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_mb": round(rss / 1024, 1)}


async def http_session():
    import aiohttp

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {name (with labels): value}."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def metrics(http, url: str) -> dict[str, float]:
    """The server's /metrics as {name (with labels): value}."""
    async with http.get(url + "/metrics") as r:
        return parse_metrics(await r.text())


# ----------------------------------------------------------------------------- audio

@dataclass
class SpeechClip:
    audio: np.ndarray                        # 48 kHz mono float32
    utterances: list[tuple[float, float]]    # (start, end) seconds of each stretch of speech


def speech_clip(names=("Front_Center", "Front_Left", "Rear_Right", "Side_Left"),
                lead: float = 1.0, pause: float = 1.0, tail: float = 0.5) -> SpeechClip:
    """Real recorded speech (alsa-utils) with silences between the recordings."""
    from models.audio_io import load_audio

    parts, utterances, t = [np.zeros(int(lead * 48000), np.float32)], [], lead
    for n in names:
        speech = load_audio(ALSA / f"{n}.wav", rate=48000)
        utterances.append((t, t + speech.size / 48000))
        parts += [speech, np.zeros(int(pause * 48000), np.float32)]
        t += speech.size / 48000 + pause
    parts.append(np.zeros(int(tail * 48000), np.float32))
    return SpeechClip(np.concatenate(parts), utterances)


def envelope(audio: np.ndarray, hop: int = 480) -> np.ndarray:
    """RMS per hop (10 ms at 48 kHz)."""
    n = audio.size // hop
    return np.sqrt((audio[: n * hop].reshape(n, hop) ** 2).mean(1) + 1e-12)


def find_utterances(audio: np.ndarray, rate: int = 48000, min_gap: float = 0.25,
                    min_length: float = 0.2) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches of speech in `audio`: 10 ms RMS above 5 % of its
    loud end, gaps shorter than `min_gap` closed, stretches shorter than `min_length` dropped."""
    hop = rate // 100
    env = envelope(audio, hop)
    if env.size == 0:
        return []
    loud = env > 0.05 * np.percentile(env, 99)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(np.int8), [0]])))
    spans = [[a * 0.01, b * 0.01] for a, b in zip(edges[::2], edges[1::2], strict=True)]
    merged = []
    for span in spans:
        if merged and span[0] - merged[-1][1] < min_gap:
            merged[-1][1] = span[1]
        else:
            merged.append(span)
    return [(a, b) for a, b in merged if b - a >= min_length]


LAGS = np.arange(0.0, 2.5, 0.005)        # delays searched, seconds


def delay_of(t_ref, ref, t_seen, seen, window: tuple[float, float],
             lags: np.ndarray = LAGS) -> tuple[float, float]:
    """How much later `seen` shows what `ref` showed inside `window` (times on one clock):
    the lag maximising the correlation of ref(t) and seen(t + lag), and that correlation."""
    grid = np.arange(window[0], window[1], 0.005)
    x = np.interp(grid, t_ref, ref)
    x = (x - x.mean()) / (x.std() + 1e-12)
    scores = []
    for lag in lags:
        y = np.interp(grid + lag, t_seen, seen)
        scores.append(float(np.mean(x * (y - y.mean()) / (y.std() + 1e-12))))
    i = int(np.argmax(scores))
    return float(lags[i]), scores[i]


# ----------------------------------------------------------------------------- the picture

def mouth_box(avatar) -> tuple[slice, slice]:
    """Rows and columns around the inner lips of an avatar's working square."""
    lm = avatar.landmarks.numpy()
    inner = lm[60:68]
    centre = (inner.min(0) + inner.max(0)) / 2
    width = lm[54, 0] - lm[48, 0]
    x0, x1 = int(centre[0] - 0.35 * width), int(centre[0] + 0.35 * width) + 1
    y0, y1 = int(centre[1] - 0.25 * width), int(centre[1] + 0.25 * width) + 1
    return slice(y0, y1), slice(x0, x1)


# ----------------------------------------------------------------------------- the client

def loopback_only() -> None:
    from stream.webrtc import use_loopback_for_media

    use_loopback_for_media()


# What a WebRTC player synchronises audio and video with, per received stream (keyed by
# receiver): its first RTP timestamp and its RTCP sender reports (sender clock <-> RTP time).
# The one copy in this process: the tests and the soak benchmark read it too (a second patch
# of aiortc's receiver with a dict of its own would leave one of them empty).
RTP_TIMING: dict[int, dict] = {}


def track_receiver(receiver, trace: bool = False) -> int:
    """A new receiver's key in RTP_TIMING, its entry emptied: ids are reused once an earlier
    receiver is gone, and its first timestamp and reports must not carry over. `trace`: keep
    its packets and frames too (see the module docstring)."""
    RTP_TIMING[id(receiver)] = _new_timing(trace)
    return id(receiver)


def _new_timing(trace: bool) -> dict:
    """A stream's entry in RTP_TIMING: its first RTP timestamp, its sender reports, and with
    `trace` its packets; the frames its jitter buffer let go."""
    return {"first": None, "reports": [], "packets": [] if trace else None, "frames": []}


def abs_send_time(value: int, wall: float) -> float:
    """The sender's time.time() of an abs-send-time header extension (24 bits: NTP seconds
    mod 64 in 6.18 fixed point) received at time.time() `wall` (less than 64 s later)."""
    now = int((wall + 2208988800) * 2**18) & 0xFFFFFF
    return wall - ((now - value) & 0xFFFFFF) / 2**18


def watch_jitter_buffer(receiver, frames: list) -> None:
    """Record when `receiver`'s jitter buffer lets each frame go: rows [time, RTP timestamp,
    decode start, decode end] (perf_counter; the decode times are filled in by the decoder
    thread, see watch_decoders)."""
    buffer = receiver._RTCRtpReceiver__jitter_buffer          # aiortc keeps it private
    add = buffer.add

    def timed_add(packet):
        pli, frame = add(packet)
        if frame is not None:
            frame.timing = [time.perf_counter(), frame.timestamp, None, None]
            frames.append(frame.timing)
        return pli, frame

    buffer.add = timed_add


def watch_decoders() -> None:
    """Time every decode of aiortc's video and audio decoders (in their decoder threads)."""
    from aiortc.codecs.h264 import H264Decoder
    from aiortc.codecs.opus import OpusDecoder
    from aiortc.codecs.vpx import Vp8Decoder

    for cls in (H264Decoder, Vp8Decoder, OpusDecoder):
        if getattr(cls, "timing_watched", False):
            continue

        def timed(self, encoded_frame, decode=cls.decode):
            start = time.perf_counter()
            frames = decode(self, encoded_frame)
            timing = getattr(encoded_frame, "timing", None)
            if timing is not None:
                timing[2:] = [start, time.perf_counter()]
            return frames

        cls.decode, cls.timing_watched = timed, True


def watch_rtp_timing() -> None:
    """Record every received stream's first RTP timestamp and its sender reports (aiortc keeps
    neither where a client can read it)."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    from aiortc.rtp import RtcpSrPacket

    if getattr(RTCRtpReceiver, "timing_watched", False):
        return
    handle_rtp, handle_rtcp = RTCRtpReceiver._handle_rtp_packet, RTCRtpReceiver._handle_rtcp_packet

    async def on_rtp(self, packet, arrival_time_ms):
        timing = RTP_TIMING.setdefault(id(self), _new_timing(False))
        if timing["first"] is None:
            timing["first"] = packet.timestamp
            if timing["packets"] is not None:
                watch_jitter_buffer(self, timing["frames"])
        if timing["packets"] is not None:
            now, wall = time.perf_counter(), time.time()
            sent = packet.extensions.abs_send_time
            timing["packets"].append((now, packet.timestamp, packet.marker, None if sent is None
                                      else now - (wall - abs_send_time(sent, wall))))
        return await handle_rtp(self, packet, arrival_time_ms)

    async def on_rtcp(self, packet):
        if isinstance(packet, RtcpSrPacket) and packet.sender_info.ntp_timestamp:
            # (aiortc reports NTP 0 before its first packet: no time to pair with)
            ntp = packet.sender_info.ntp_timestamp
            unix = (ntp >> 32) + (ntp & 0xFFFFFFFF) / 2**32 - 2208988800
            RTP_TIMING.setdefault(id(self), {"first": None, "reports": []})["reports"].append(
                (time.perf_counter(), unix, packet.sender_info.rtp_timestamp))
        return await handle_rtcp(self, packet)

    RTCRtpReceiver._handle_rtp_packet, RTCRtpReceiver._handle_rtcp_packet = on_rtp, on_rtcp
    RTCRtpReceiver.timing_watched = True


def sender_clock(receiver: int, arrival: float, pts: int, rate: int) -> float | None:
    """When the sender stamped a received frame (this process's perf_counter clock), from its
    stream's sender report nearest in time; None before the first report."""
    timing = RTP_TIMING.get(receiver)
    if not timing or not timing["reports"] or timing["first"] is None:
        return None
    _, unix, report_rtp = min(timing["reports"], key=lambda r: abs(r[0] - arrival))
    rtp = (timing["first"] + pts) & 0xFFFFFFFF
    delta = ((rtp - report_rtp + 2**31) & 0xFFFFFFFF) - 2**31
    return unix + delta / rate - (time.time() - time.perf_counter())


def microphone(source):
    """An aiortc audio track that plays `source(start, count)` -> float32 [count] (48 kHz
    mono samples [start, start + count)) in real time. Packet j (samples [960 j, 960 (j + 1)))
    is handed to the sender at `started + 0.02 j`; `sent` counts the packets."""
    import av
    from aiortc import MediaStreamTrack

    class Microphone(MediaStreamTrack):
        kind = "audio"

        def __init__(self):
            super().__init__()
            self.started: float | None = None
            self.sent = 0

        async def recv(self):
            if self.started is None:
                self.started = time.perf_counter()
            due = self.started + self.sent * 0.02
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            piece = source(self.sent * PACKET, PACKET)
            frame = av.AudioFrame.from_ndarray((piece * 32767).astype(np.int16)[None],
                                               format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, self.sent * PACKET
            frame.time_base = fractions.Fraction(1, 48000)
            self.sent += 1
            return frame

    return Microphone()


def wav_microphone(audio: np.ndarray):
    """A microphone that plays `audio` (48 kHz mono) in real time, then silence."""

    def source(start: int, count: int) -> np.ndarray:
        piece = audio[start:start + count]
        return np.pad(piece, (0, count - piece.size))

    return microphone(source)


def sample_offer(audio_direction: str = "recvonly") -> str:
    """The SDP of a real offer (audio in `audio_direction`, video recvonly) from an aiortc
    peer offering only loopback candidates, closed once it has made it."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def make():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction=audio_direction)
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    loopback_only()
    return asyncio.run(make())


class Refused(Exception):
    def __init__(self, status: int, error: str):
        super().__init__(f"{status}: {error}")
        self.status, self.error = status, error


@dataclass
class Client:
    """An aiortc peer of the server: sends a microphone (optional), records what it gets.
    `codec` ("h264", "vp8") is the only video codec offered (None: all of aiortc's, in its
    order; the server then answers with H.264: stream/video_encoder.py); `keep_frames` False
    keeps only arrival times and timestamps of the pictures."""
    url: str
    microphone: object = None
    codec: str | None = None
    keep_frames: bool = True
    trace: bool = False                              # keep packets and frames' timings
    video: list = field(default_factory=list)        # (arrival, av.VideoFrame | None, pts)
    audio: list = field(default_factory=list)        # (arrival, float32 mono [960], pts)
    receivers: dict = field(default_factory=dict)    # kind -> id of its RTCRtpReceiver
    stats: list = field(default_factory=list)        # (arrival, the server's "stats" message)
    video_codec: str | None = None                   # the codec negotiated
    session: str | None = None
    pc: object = None
    tasks: list = field(default_factory=list)

    def record_tracks(self) -> None:
        """Record every track self.pc receives, with its receiver's RTP timing."""
        pc = self.pc

        @pc.on("track")
        def on_track(track):
            receiver = next(r for r in pc.getReceivers() if r.track is track)
            self.receivers[track.kind] = track_receiver(receiver, self.trace)
            self.tasks.append(asyncio.ensure_future(self._record(track)))

    async def connect(self, http, avatar: str | None = None) -> dict:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
        from aiortc.codecs import is_rtx

        loopback_only()
        watch_rtp_timing()
        if self.trace:
            watch_decoders()
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if self.microphone is not None:
            pc.addTransceiver(self.microphone, direction="sendrecv")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        video = pc.addTransceiver("video", direction="recvonly")
        if self.codec:
            codecs = RTCRtpSender.getCapabilities("video").codecs
            first = [c for c in codecs if c.mimeType.lower() == f"video/{self.codec}"]
            if not first:
                raise ValueError(f"aiortc has no {self.codec} video codec")
            video.setCodecPreferences(first + [c for c in codecs if is_rtx(c)])
        self.record_tracks()
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        if avatar:
            offer["avatar"] = avatar
        async with http.post(self.url + "/offer", json=offer) as r:
            answer = await r.json()
            if r.status != 200:
                raise Refused(r.status, answer.get("error"))
        self.session = answer["session"]
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        for line in answer["sdp"].splitlines():
            if line.startswith("a=rtpmap:") and self.video_codec is None and any(
                    line.split()[1].upper().startswith(name) for name in ("H264/", "VP8/")):
                self.video_codec = line.split()[1].split("/")[0]
        return answer

    async def _record(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                now = time.perf_counter()
                if track.kind == "video":
                    self.video.append((now, frame if self.keep_frames else None, frame.pts))
                else:
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                    self.audio.append((now, pcm.mean(1).astype(np.float32) / 32768.0,
                                       frame.pts))
        except MediaStreamError:
            pass

    async def watch_stats(self, http) -> None:
        """Keep the server's once-a-second stats messages of this session (a websocket)."""
        async with http.ws_connect(f"{self.url}/ws/{self.session}") as ws:
            async for msg in ws:
                message = json.loads(msg.data)
                if message.get("type") == "stats":
                    self.stats.append((time.perf_counter(), message))

    async def wait_for_video(self, frames: int = 5, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.video) < frames:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no video after {timeout:.0f} s")
            await asyncio.sleep(0.05)

    def fps(self, seconds: float) -> float:
        """Decoded frames per second over the last `seconds` of the recording."""
        t = np.array([v[0] for v in self.video])
        window = t[t >= t[-1] - seconds]
        return (len(window) - 1) / max(window[-1] - window[0], 1e-6)

    def received_audio(self, clock: str = "arrival") -> tuple[np.ndarray, np.ndarray]:
        """(time of every 10 ms hop, RMS envelope) of the received sound; time on the
        "arrival", "sender" or "media" clock (see the module docstring)."""
        times, envs = [], []
        offset = self._media_offset() if clock == "media" else None
        for arrived, pcm, pts in self.audio:
            start = arrived - pcm.size / 48000
            if clock == "media":
                start = pts / 48000 + offset
            elif clock == "sender":
                start = sender_clock(self.receivers["audio"], arrived, pts, 48000)
                if start is None:
                    continue
            env = envelope(pcm)
            times += list(start + (np.arange(env.size) + 0.5) * 0.01)
            envs += list(env)
        return np.array(times), np.array(envs)

    def _media_offset(self) -> float:
        """The sender-clock time of RTP time 0 of the received sound (the median over its
        frames of what the sender reports give)."""
        offsets = [t - pts / 48000 for arrived, _, pts in self.audio
                   if (t := sender_clock(self.receivers["audio"], arrived, pts, 48000)) is not None]
        if not offsets:
            raise RuntimeError("no sender report came with the sound")
        return float(np.median(offsets))

    def audio_times(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per received 20 ms of sound: (sender-clock start, end, arrival); frames before the
        first sender report are left out."""
        rows = []
        for arrived, pcm, pts in self.audio:
            start = sender_clock(self.receivers["audio"], arrived, pts, 48000)
            if start is not None:
                rows.append((start, start + pcm.size / 48000, arrived))
        rows = np.array(rows).reshape(-1, 3)
        return rows[:, 0], rows[:, 1], rows[:, 2]

    def video_times(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per received picture: (arrival, sender clock or nan, RTP timestamp since the
        first one, 90 kHz)."""
        arrival = np.array([v[0] for v in self.video])
        pts = np.array([v[2] for v in self.video], np.int64)
        sent = np.array([sender_clock(self.receivers["video"], a, p, 90000) or np.nan
                         for a, _, p in self.video], np.float64)
        return arrival, sent, pts

    def video_frames(self, clock: str = "arrival") -> tuple[np.ndarray, list]:
        """(time, rgb) of the received pictures, on the "arrival" or the "sender" clock."""
        times, images = [], []
        for arrived, frame, pts in self.video:
            t = arrived if clock == "arrival" else sender_clock(self.receivers["video"],
                                                                 arrived, pts, 90000)
            if t is not None:
                times.append(t)
                images.append(frame.to_ndarray(format="rgb24"))
        return np.array(times), images

    def images(self, start: int = 0) -> list[np.ndarray]:
        return [frame.to_ndarray(format="rgb24") for _, frame, _ in self.video[start:]]

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        for task in self.tasks:
            task.cancel()
