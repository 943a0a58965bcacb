"""How fast the engine is, measured the way a live user would feel it.

    python -m benchmarks.latency [--engine torch|onnx|trt] [--device cpu|cuda] [--audio FILE]
        [--avatar IMG] [--size 512] [--streams N] [--webrtc] [--seconds S] [--codec h264|vp8]
        [--sweep-streams [--max-streams M | --stream-counts N ...] [--min-fps F]
         [--p95-bound-ms B]] [--batched] [--no-cuda-graphs] [--random-encoder]
        --json OUT.json [--plot OUT.png]

Speech (--audio, or alsa-utils' recordings with 0.5 s pauses, looped to --seconds) is fed at
real-time pace in 20 ms packets, as a microphone sends it, into N concurrent sessions:

in-process (default)
    Packet j of session i is pushed at start_i + 0.02 j (start_i = t0 + i * 80 ms / N: the
    sessions' chunks are spread over one chunk period, as independent users' would be);
    after the speech the microphone sends 1 s of silence, then the run ends.
    Each session has a stream.player.Player on the media clock (slot k due at the first
    frame's arrival + --margin-ms + k / 25 s: the Player skips a frame that misses its slot,
    so the margin is the slack later chunks have over the first; it is part of every
    latency, the first frame's included), and an output thread that encodes every
    slot's picture with the server's encoder for --codec (stream.video_encoder: libx264 with
    the server's preset / aiortc's libvpx; at most 0.4 s of slots wait, as on the server's
    video track).
    A frame is "out" when its slot's encode has finished.
--webrtc
    `python server.py` is started on 127.0.0.1 (same engine, size, avatar); N aiortc
    clients in this process connect over loopback, each sending the speech as its
    microphone (packet j handed to aiortc at start + 0.02 j) and decoding what comes back.
    A frame is "out" when the client has decoded it. The picture's audio is the sound the
    server stamped with the same sender time (RTP timestamps + RTCP sender reports: how a
    WebRTC player pairs them); which microphone audio that sound is comes from
    cross-correlating the received and the sent sound per utterance (5 ms grid), so
    latencies are measured where there is speech. Where each millisecond of it goes,
    stage by stage, in this client and in Chromium: benchmarks/webrtc_budget.py.

Definitions (per session; the JSON's top level pools or takes the worst session)
    first_frame_ms    first audio sample in (its packet pushed / handed to aiortc) -> the
                      frame showing it out (in-process: frame 0's slot encoded; --webrtc:
                      the picture paired with the first sample of speech, decoded). Worst
                      session.
    latency_ms_pXX    per frame: the last sample of the frame's own 40 ms of audio in -> the
                      frame out. In-process only frames shown in their own slot (fresh) count;
                      with --webrtc every decoded picture inside speech (a repeated picture
                      counts with the audio of its slot). Pooled over sessions.
    render_latency_ms_pXX   in-process: own audio in -> frame rendered (compute only, before
                      waiting for its slot and encoding).
    lateness_ms_p50_p95_max   in-process: frame rendered - its slot due, over every frame
                      rendered (+: late, it was skipped; -: slack): how much more --margin-ms
                      the run would have needed to show them.
    fps               fresh frames out per second, the slowest session (in-process: frames
                      shown in their own slot / the span of slots; --webrtc: decoded frames
                      per second x the share of slots the server filled with a fresh frame).
    output_fps        slots out (in-process) or pictures decoded (--webrtc) per second.
    repeated_frames   slots that showed an older picture because compute was behind; total.
    dropped_frames    frames that never went out: frames the session did not render
                      because their slots had already played (in-process; with --webrtc the
                      server does not report them: they show as repeated slots), late frames
                      the player skipped, frames the session's queue or the sender dropped,
                      and (--webrtc) pictures missing from the received RTP timestamps; total.
    av_offset_ms      picture minus sound of the same slot, median (+ = picture later):
                      in-process the encode wait (the sound leaves at the slot); --webrtc the
                      arrival of the decoded picture minus the arrival of its decoded sound.
    stages_ms         wall ms per frame of each stage (stage time / frames it produced),
                      mean over sessions: features (Whisper encoder), motion (sampler),
                      render; encode is measured in-process only (the server's encoder is
                      not observable from a client: null with --webrtc).
    cpu_percent       process CPU time / wall time over the run (100 = one core; in-process
                      this process, --webrtc the server process; the client's is reported
                      as client_cpu_percent); cpu_ms_per_frame (in-process) that CPU time
                      per frame rendered: what a frame costs whatever else runs on the
                      machine (stage times are wall times and grow when threads wait for a
                      core); peak_memory_mb its peak resident set;
                      gpu_peak_memory_mb torch's peak allocation on CUDA (in-process).
--sweep-streams runs N = 1, 2, ... (or the --stream-counts given) until a run misses fps >=
--min-fps or p95 latency <= --p95-bound-ms (or N reaches --max-streams); max_streams is the
most that held.
--batched: the sessions share the networks through stream.batching.BatchedEngine (what a
GPU server does); the JSON says how many sessions' requests each network call served.
--no-cuda-graphs: torch on cuda launching every kernel from Python (stream/cuda_graphs.py
replays them otherwise), for comparison. --random-encoder: Whisper's encoder with random
weights, for timing on a machine where its weights cannot be installed.
"""

import argparse
import asyncio
import datetime
import json
import math
import queue
import resource
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.audio_features import cpu_name

ROOT = Path(__file__).resolve().parent.parent
FPS = 25
PACKET = 960                          # 20 ms at 48 kHz
RATE = 48000
SOUND_LAGS = np.arange(0.0, 4.0, 0.005)     # sound delays searched with --webrtc, seconds
CHUNK_SECONDS = 0.08                  # one chunk period: sessions' starts are spread over it
ALSA_NAMES = ("Front_Center", "Front_Left", "Rear_Center", "Side_Right", "Rear_Left")
KEYS = ("first_frame_ms", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "fps",
        "output_fps", "streams", "dropped_frames", "repeated_frames", "av_offset_ms",
        "stages_ms", "cpu_percent", "peak_memory_mb")


# ----------------------------------------------------------------------------- speech

def speech(seconds: float, path: str | None = None):
    """A SpeechClip of `seconds`: the file at `path` (any format FFmpeg reads) or alsa-utils'
    recordings with 0.5 s pauses, looped; its utterances found by energy."""
    from benchmarks.webrtc_client import ALSA, SpeechClip, find_utterances
    from models.audio_io import load_audio

    if path:
        one = load_audio(path, rate=RATE)
    else:
        parts = []
        for name in ALSA_NAMES:
            parts += [load_audio(ALSA / f"{name}.wav", rate=RATE), np.zeros(RATE // 2, np.float32)]
        one = np.concatenate(parts)
    n = int(seconds * RATE)
    audio = np.tile(one, math.ceil(n / max(one.size, 1)))[:n].astype(np.float32)
    return SpeechClip(audio, find_utterances(audio, RATE))


def percentiles(values, qs=(50, 95, 99)) -> list[float | None]:
    if len(values) == 0:
        return [None] * len(qs)
    return [round(float(np.percentile(values, q)), 1) for q in qs]


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# ----------------------------------------------------------------------------- in-process

@dataclass
class Slot:
    k: int                  # slot (frame index on the session timeline)
    due: float              # perf_counter when the player handed it out (its sound leaves)
    image: np.ndarray
    frame: object           # the stream.session.Frame shown
    fresh: bool             # the slot shows its own frame
    out: float = 0.0        # encode finished
    encode_ms: float = 0.0


class FrameTracer:
    """The session as its Player sees it: remembers every frame the Player takes, so that a
    slot's picture can be traced to its frame (index, when its audio arrived, rendered)."""

    def __init__(self, session):
        self.session = session
        self.by_image: dict[int, object] = {}
        self.taken: list[tuple[int, float]] = []     # (index, rendered) of every frame taken

    def next_frame(self, timeout=None):
        frame = self.session.next_frame(timeout)
        if frame is not None:
            self.by_image[id(frame.image)] = frame
            self.taken.append((frame.index, frame.rendered))
        return frame

    def forget_before(self, index: int) -> None:
        for key in [k for k, f in self.by_image.items() if f.index < index]:
            del self.by_image[key]

    def __getattr__(self, name):
        return getattr(self.session, name)


class Output(threading.Thread):
    """Encodes every slot's picture as the server's sender would (its encoder,
    stream.video_encoder, in a thread of its own as aiortc runs it in an executor); records
    when each is out. Like the server's video track it keeps at most QUEUED_SECONDS of slots
    waiting: an encoder that falls behind loses the oldest (counted)."""

    def __init__(self, codec: str):
        super().__init__(daemon=True, name="encode")
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        from stream.video_encoder import video_encoder
        from stream.webrtc import QUEUED_SECONDS

        mime = {"h264": "video/H264", "vp8": "video/VP8"}[codec]
        self.encoder = video_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000))
        self.capacity = int(QUEUED_SECONDS * FPS)
        self.slots: queue.Queue[Slot | None] = queue.Queue()
        self.done: list[Slot] = []
        self.dropped_slots = 0           # slots lost because the encoder fell behind
        self.dropped_frames = 0          # ... of them fresh frames
        self.bytes = 0

    def put(self, slot: Slot) -> None:
        while self.slots.qsize() >= self.capacity:
            try:
                old = self.slots.get_nowait()
            except queue.Empty:
                break
            self.dropped_slots += 1
            self.dropped_frames += old.fresh
        self.slots.put(slot)

    def run(self) -> None:
        import av

        while (slot := self.slots.get()) is not None:
            t = time.perf_counter()
            video = av.VideoFrame.from_ndarray(np.ascontiguousarray(slot.image), format="rgb24")
            video.pts, video.time_base = slot.k * (90000 // FPS), Fraction(1, 90000)
            payloads, _ = self.encoder.encode(video)
            slot.out = time.perf_counter()
            slot.encode_ms = (slot.out - t) * 1000
            self.bytes += sum(len(p) for p in payloads)
            slot.image = None
            self.done.append(slot)


def warm_up(engine, avatar) -> None:
    """One second of speech through a throw-away session: every network has run once (the
    onnx engine exports and loads its renderer), as on a server already serving."""
    from stream.render_file import render_file
    from stream.session import Session

    session = Session(engine, avatar, seed=0)
    try:
        render_file(session, speech(1.0).audio, RATE)
    finally:
        session.close()


def run_inprocess(engine, avatar, audio: np.ndarray, streams: int, codec: str = "h264",
                  margin: float = 0.0, tail: float = 1.0) -> dict:
    from stream.player import Player
    from stream.session import Session

    outputs = [Output(codec) for _ in range(streams)]
    for o in outputs:
        o.start()
    sessions = [Session(engine, avatar, seed=i, realtime=True) for i in range(streams)]
    tracers = [FrameTracer(s) for s in sessions]
    players = [Player(t) for t in tracers]
    audio = np.concatenate([audio, np.zeros(int(tail * RATE), np.float32)])   # then silence
    pieces = math.ceil(audio.size / PACKET)
    pushed = [0] * streams
    first_in = [0.0] * streams                   # when each session's first packet went in
    cpu0, t0 = time.process_time(), time.perf_counter() + 0.02
    starts = [t0 + i * CHUNK_SECONDS / streams for i in range(streams)]
    end = starts[-1] + audio.size / RATE
    try:
        while (now := time.perf_counter()) < end:
            wake = now + 0.01
            for i, (session, tracer, player, output) in enumerate(
                    zip(sessions, tracers, players, outputs, strict=True)):
                while pushed[i] < pieces and starts[i] + pushed[i] * 0.02 <= now:
                    j = pushed[i]
                    session.push_audio(audio[j * PACKET:(j + 1) * PACKET], RATE)
                    if j == 0:
                        first_in[i] = time.perf_counter()
                    pushed[i] += 1
                if pushed[i] < pieces:
                    wake = min(wake, starts[i] + pushed[i] * 0.02)
                if not pushed[i]:
                    continue
                if session.stats.errors:
                    raise RuntimeError("; ".join(session.stats.errors))
                if player.start is None:
                    if session.frames.empty():
                        wake = min(wake, now + 0.002)
                        continue
                    player.start = now + margin      # slot 0 is due now (+ the margin)
                for k, image, _ in player.play(now):
                    frame = tracer.by_image[id(image)]
                    output.put(Slot(k, now, image, frame, frame.index == k))
                shown = player.current.index if player.current is not None else 0
                tracer.forget_before(min(player.next_slot - 2 * FPS, shown))
                wake = min(wake, player.start + player.next_slot / FPS)
            time.sleep(max(0.0, wake - time.perf_counter()))
        wall = time.perf_counter() - t0
    finally:
        for o in outputs:
            o.slots.put(None)
        for o in outputs:
            o.join(timeout=30)
        for s in sessions:
            s.close()
    cpu = time.process_time() - cpu0
    rows = [session_summary(s, p, o, start, t)
            for s, p, o, start, t in zip(sessions, players, outputs, first_in, tracers,
                                         strict=True)]
    rendered = sum(s.stats.stage_frames["render"] for s in sessions)
    return {"sessions": rows, "cpu_percent": round(100 * cpu / wall, 1),
            "cpu_ms_per_frame": round(1000 * cpu / max(rendered, 1), 1),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def session_summary(session, player, output, start: float, tracer) -> dict:
    slots = output.done
    if not slots:
        raise RuntimeError("no frame came out: " + "; ".join(session.stats.errors))
    fresh = [s for s in slots if s.fresh]
    latency = np.array([(s.out - s.frame.own_audio_arrived) * 1000 for s in fresh])
    rendered = np.array([(s.frame.rendered - s.frame.own_audio_arrived) * 1000 for s in fresh])
    span = slots[-1].due - slots[0].due + 1 / FPS
    p50, p95, p99 = percentiles(latency)
    r50, r95, _ = percentiles(rendered)
    stages = {k: round(v, 2) for k, v in session.stats.stage_means().items()}
    stages["encode"] = round(float(np.mean([s.encode_ms for s in slots])), 2)
    late = getattr(session.stats, "late_frames", 0)   # not rendered: slots already played
    thinned = getattr(session.stats, "thinned_frames", 0)   # not rendered: short of compute
    # rendered - due of every frame rendered (+: after its slot): what a margin must cover
    lateness = [(t - (player.start + index / FPS)) * 1000 for index, t in tracer.taken]
    return {
        "first_frame_ms": round((slots[0].out - start) * 1000, 1),
        "latency_ms_p50": p50, "latency_ms_p95": p95, "latency_ms_p99": p99,
        "render_latency_ms_p50": r50, "render_latency_ms_p95": r95,
        "lateness_ms_p50_p95_max": [*percentiles(lateness, (50, 95)),
                                    round(max(lateness), 1)],
        "fps": round(len(fresh) / span, 2), "output_fps": round(len(slots) / span, 2),
        "slots": len(slots), "fresh_frames": len(fresh),
        "repeated_frames": player.stats.repeated,
        "dropped_frames": (player.stats.skipped + session.dropped_frames + late + thinned
                           + output.dropped_frames),
        "late_frames": late, "thinned_frames": thinned,
        "encoder_dropped_slots": output.dropped_slots,
        "av_offset_ms": round(float(np.median([(s.out - s.due) * 1000 for s in slots])), 1),
        "stages_ms": stages,
        "video_kbps": round(output.bytes * 8 / 1000 / span, 1),
        "latency_series": [[round(s.out - start, 3), round((s.out - s.frame.own_audio_arrived)
                                                          * 1000, 1)] for s in fresh],
    }


def offline_fps(engine, avatar, audio: np.ndarray) -> float:
    """Frames per second with the audio pushed as fast as the pipeline takes it."""
    from stream.render_file import render_file
    from stream.session import Session

    session = Session(engine, avatar, seed=0)
    try:
        _, report = render_file(session, audio, RATE)
    finally:
        session.close()
    return round(report["fps"], 2)


# ----------------------------------------------------------------------------- WebRTC

async def _webrtc_session_run(url: str, clip, streams: int, codec: str, tail: float, pid: int,
                              trace: bool = False):
    from benchmarks.webrtc_client import Client, http_session, process_usage, wav_microphone

    async with await http_session() as http:
        clients = [Client(url, microphone=wav_microphone(clip.audio), codec=codec,
                          keep_frames=False, trace=trace) for _ in range(streams)]
        try:
            await asyncio.gather(*(c.connect(http) for c in clients))
            watchers = [asyncio.ensure_future(c.watch_stats(http)) for c in clients]
            deadline = time.monotonic() + 60
            while not all(c.microphone.started for c in clients):
                if time.monotonic() > deadline:
                    raise TimeoutError("a connection did not start within 60 s")
                await asyncio.sleep(0.01)
            cpu0, _ = process_usage(pid)
            client_cpu0, t0 = time.process_time(), time.perf_counter()
            last = max(c.microphone.started for c in clients)
            await asyncio.sleep(last + clip.audio.size / RATE + tail - time.perf_counter())
            wall = time.perf_counter() - t0
            cpu1, peak = process_usage(pid)
            client_cpu = time.process_time() - client_cpu0
            for w in watchers:
                w.cancel()
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    rows = [client_summary(c, clip, c.microphone.started,
                           c.microphone.started + clip.audio.size / RATE) for c in clients]
    out = {"sessions": rows, "cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
           "peak_memory_mb": round(peak),
           "client_cpu_percent": round(100 * client_cpu / wall, 1),
           "client_peak_memory_mb": round(
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if trace:
        out["clients"] = clients
    return out


def run_webrtc(url: str, pid: int, clip, streams: int, codec: str = "h264",
               tail: float = 1.5, trace: bool = False) -> dict:
    """The --webrtc run; `trace`: the clients keep every packet's and frame's times and
    come back as "clients" (benchmarks/webrtc_budget.py reads them)."""
    return asyncio.run(_webrtc_session_run(url, clip, streams, codec, tail, pid, trace))


def client_summary(client, clip, started: float, ended: float) -> dict:
    """The figures of one client (see the module docstring)."""
    from benchmarks.webrtc_client import delay_of, envelope

    env_sent = envelope(clip.audio)
    t_sent = started + (np.arange(env_sent.size) + 0.5) * 0.01
    t_recv, env_recv = client.received_audio("sender")
    delays = []                                   # (start, end, sound delay) per utterance
    for a, b in clip.utterances:
        # at least 2 s around the utterance: a single short word could match another one
        half = max(1.0, (b - a) / 2 + 0.2)
        window = (started + (a + b) / 2 - half, started + (a + b) / 2 + half)
        if t_recv.size == 0 or window[1] > t_recv[-1]:
            continue
        delay, corr = delay_of(t_sent, env_sent, t_recv, env_recv, window, SOUND_LAGS)
        if corr >= 0.7 and window[1] + delay <= t_recv[-1]:    # all of it was received
            delays.append((a, b, delay))

    def sent_at(w: float) -> float:
        """When the microphone handed the packet with WAV time `w` to aiortc."""
        return started + math.floor(w / 0.02 + 1e-6) * 0.02

    arrival, sender, pts = client.video_times()
    a_start, a_end, a_arrival = client.audio_times()
    latency, series, offsets, first = [], [], [], None
    for t_in, t_sent_v in zip(arrival, sender, strict=True):
        if math.isnan(t_sent_v):
            continue
        i = np.searchsorted(a_start, t_sent_v, side="right") - 1
        if 0 <= i < a_start.size and t_sent_v < a_end[i]:
            offsets.append((t_in - a_arrival[i]) * 1000)
        for n, (a, b, delay) in enumerate(delays):
            w = t_sent_v - delay - started              # WAV time of this picture's sound
            if a - 0.04 < w <= b:
                ms = (t_in - sent_at(w + 0.04 - 1e-6)) * 1000
                latency.append(ms)
                series.append([round(t_in - started, 3), round(ms, 1)])
                if n == 0 and w <= a < w + 0.04 and first is None:
                    first = (t_in - sent_at(a)) * 1000
                break
    inside = (arrival >= started + 1.0) & (arrival <= ended)
    span = max(ended - started - 1.0, 1e-3)
    decoded_fps = float(inside.sum()) / span
    steps = np.diff(pts) / (90000 // FPS)
    lost = int(np.clip(np.round(steps) - 1, 0, None).sum()) if pts.size > 1 else 0
    during = [m for t, m in client.stats if started <= t <= ended + 1.0]
    before = [m for t, m in client.stats if t < started] or during[:1]
    if not during:
        raise RuntimeError("no stats from the server during the run")
    first_stats, last_stats = before[-1], during[-1]

    def delta(name):
        return last_stats[name] - first_stats[name]

    filled = delta("shown") / max(delta("shown") + delta("repeated"), 1)
    p50, p95, p99 = percentiles(latency)
    stages = {k: round(v, 2) for k, v in last_stats["stages_ms"].items()}
    stages["encode"] = None
    return {
        "first_frame_ms": None if first is None else round(first, 1),
        "latency_ms_p50": p50, "latency_ms_p95": p95, "latency_ms_p99": p99,
        "latency_frames": len(latency),
        "fps": round(decoded_fps * filled, 2), "output_fps": round(decoded_fps, 2),
        "fresh_share": round(filled, 3),
        "repeated_frames": delta("repeated"),
        "dropped_frames": delta("skipped") + delta("dropped") + lost,
        "lost_in_transport": lost,
        "av_offset_ms": round(float(np.median(offsets)), 1) if offsets else None,
        "sound_delay_ms": [round(d * 1000) for _, _, d in delays],
        "server_added_delay_ms": last_stats.get("added_delay_ms"),
        "video_codec": client.video_codec,
        "stages_ms": stages,
        "latency_series": series,
    }


# ----------------------------------------------------------------------------- one run

def pooled(run: dict, streams: int) -> dict:
    """Top-level figures from the per-session ones (see the module docstring)."""
    rows = run["sessions"]
    latency = [ms for r in rows for _, ms in r["latency_series"]]
    p50, p95, p99 = percentiles(latency)
    firsts = [r["first_frame_ms"] for r in rows if r["first_frame_ms"] is not None]
    offsets = [r["av_offset_ms"] for r in rows if r["av_offset_ms"] is not None]
    stages = {}
    for name in rows[0]["stages_ms"]:
        values = [r["stages_ms"][name] for r in rows if r["stages_ms"][name] is not None]
        stages[name] = round(float(np.mean(values)), 2) if values else None
    out = {"streams": streams,
           "first_frame_ms": max(firsts) if len(firsts) == len(rows) else None,
           "latency_ms_p50": p50, "latency_ms_p95": p95, "latency_ms_p99": p99,
           "fps": min(r["fps"] for r in rows),
           "fps_mean": round(float(np.mean([r["fps"] for r in rows])), 2),
           "output_fps": min(r["output_fps"] for r in rows),
           "dropped_frames": int(sum(r["dropped_frames"] for r in rows)),
           "repeated_frames": int(sum(r["repeated_frames"] for r in rows)),
           "av_offset_ms": round(float(np.median(offsets)), 1) if offsets else None,
           "stages_ms": stages}
    if rows[0].get("render_latency_ms_p50") is not None:
        rendered = [r["render_latency_ms_p95"] for r in rows]
        out["render_latency_ms_p95"] = max(rendered)
    out.update({k: v for k, v in run.items() if k != "sessions"})
    out["sessions"] = rows
    return out


class Bench:
    """What one configuration needs between runs: the engine and avatar in-process, or the
    server process with --webrtc."""

    def __init__(self, args, max_streams: int):
        self.args = args
        self.server = self.engine = self.avatar = None
        if args.webrtc:
            from benchmarks.webrtc_client import start_server
            from stream.engine import DEFAULT_CHECKPOINT

            extra = ["--engine", args.engine, "--device", args.device, "--size", str(args.size),
                     "--checkpoint", str(args.checkpoint or DEFAULT_CHECKPOINT),
                     "--max-sessions", str(max_streams)]
            if args.avatar:
                extra += ["--avatar", args.avatar]
            log = ROOT / "out" / "benchmarks" / f"latency_server_{time.strftime('%H%M%S')}.log"
            self.server = start_server(log, *extra)
        else:
            from models.avatar import DEFAULT_AVATAR
            from models.video_avatar import prepare_any_avatar, print_progress
            from stream.engine import DEFAULT_CHECKPOINT, make_engine

            if args.no_cuda_graphs:
                from stream.engine import TorchEngine

                self.engine = TorchEngine(args.checkpoint or DEFAULT_CHECKPOINT, args.device,
                                          cuda_graphs=False)
            else:
                self.engine = make_engine(args.engine, args.checkpoint or DEFAULT_CHECKPOINT,
                                          args.device)
            if args.batched:
                from stream.batching import BatchedEngine

                self.engine = BatchedEngine(self.engine)
            self.avatar = prepare_any_avatar(args.avatar or DEFAULT_AVATAR, args.size,
                                             progress=print_progress)
            warm_up(self.engine, self.avatar)

    def run(self, clip, streams: int) -> dict:
        args = self.args
        load = loadavg()
        if self.server is not None:
            run = run_webrtc(self.server.url, self.server.process.pid, clip, streams, args.codec)
        else:
            cuda = args.device == "cuda"
            if cuda:
                import torch

                torch.cuda.reset_peak_memory_stats()
            calls = self.engine.counts() if args.batched else None
            run = run_inprocess(self.engine, self.avatar, clip.audio, streams, args.codec,
                                args.margin_ms / 1000)
            if args.batched:
                run["requests_per_call"] = batched_per_call(calls, self.engine)
            graphs = getattr(getattr(self.engine, "engine", self.engine), "graphs", None)
            if graphs:                                   # torch on a GPU: stream/cuda_graphs.py
                run["cuda_graph_replays"] = {name: [g.replays, g.eager]
                                             for name, g in graphs.items()}
            if cuda:
                run["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        run["loadavg"] = load
        return pooled(run, streams)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.args.batched and self.engine is not None:
            self.engine.close()


def batched_per_call(before: dict, engine) -> dict:
    """Sessions' requests per network call of each batcher during one run (1.0: no two
    sessions ever shared a call)."""
    per_call = {}
    for name, (calls, requests) in engine.counts().items():
        calls, requests = calls - before[name][0], requests - before[name][1]
        per_call[name] = round(requests / max(calls, 1), 2)
    return per_call


def holds(result: dict, min_fps: float, p95_bound: float) -> bool:
    p95 = result["latency_ms_p95"]
    return result["fps"] >= min_fps and p95 is not None and p95 <= p95_bound


# ----------------------------------------------------------------------------- report

def table(results: list[dict]) -> str:
    head = ("streams first_ms p50_ms p95_ms p99_ms   fps out_fps dropped repeated av_ms "
            "features motion render encode  cpu% cpu_ms/frame  mem_MB")
    lines = [head]

    def f(v, width, digits=0):
        return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"

    for r in results:
        s = r["stages_ms"]
        lines.append(
            f"{r['streams']:>7d} {f(r['first_frame_ms'], 8)} {f(r['latency_ms_p50'], 6)} "
            f"{f(r['latency_ms_p95'], 6)} {f(r['latency_ms_p99'], 6)} {f(r['fps'], 5, 1)} "
            f"{f(r['output_fps'], 7, 1)} {r['dropped_frames']:>7d} {r['repeated_frames']:>8d} "
            f"{f(r['av_offset_ms'], 5)} {f(s.get('features'), 8, 1)} {f(s.get('motion'), 6, 1)} "
            f"{f(s.get('render'), 6, 1)} {f(s.get('encode'), 6, 1)} {f(r['cpu_percent'], 5)} "
            f"{f(r.get('cpu_ms_per_frame'), 12, 1)} {f(r['peak_memory_mb'], 7)}")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, row in enumerate(result["sessions"]):
        series = np.array(row["latency_series"]).reshape(-1, 2)
        left.plot(series[:, 0], series[:, 1], ".", ms=3, label=f"session {i}")
    left.set_xlabel("time since the session's first audio (s)")
    left.set_ylabel("per-frame latency (ms)")
    left.set_title(f"{result['mode']} {result['engine']} {result['size']} px, "
                   f"{result['streams']} stream(s)")
    if len(result["sessions"]) <= 8:
        left.legend(fontsize=7)
    left.grid(alpha=0.3)
    points = result.get("sweep") or [result]
    n = [p["streams"] for p in points]
    right.plot(n, [p["fps"] for p in points], "o-", label="fps (slowest session)")
    right.axhline(FPS, color="grey", ls=":", lw=1)
    right.set_xlabel("concurrent streams")
    right.set_ylabel("fresh frames per second")
    right.set_ylim(0, FPS * 1.2)
    right.set_xticks(n)
    twin = right.twinx()
    twin.plot(n, [p["latency_ms_p95"] or np.nan for p in points], "s--", color="C3",
              label="p95 latency")
    twin.set_ylabel("p95 latency (ms)", color="C3")
    right.set_title("fps and p95 latency vs streams")
    handles = right.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    right.legend(handles=handles, loc="lower left", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=["torch", "onnx", "trt"],
                   help="default: the server's (onnx on cpu, torch on cuda)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--audio", help="speech to feed (default: alsa-utils' recordings)")
    p.add_argument("--avatar", help="portrait, or a short recording of the person (default: "
                   "the bundled portrait)")
    p.add_argument("--size", type=int, default=512, choices=[256, 512])
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--webrtc", action="store_true",
                   help="through the real server to aiortc clients on 127.0.0.1")
    p.add_argument("--seconds", type=float, default=20.0, help="speech per run")
    p.add_argument("--codec", default="h264", choices=["h264", "vp8"])
    p.add_argument("--margin-ms", type=float, default=40.0,
                   help="in-process: output delay added after the first frame, slack for "
                        "chunks slower than the first (default one frame, 40 ms: at 512 px "
                        "on 2 cores frames were still ready >= 15 ms before their slots with "
                        "it, lateness_ms_p50_p95_max says how much a run needed; late frames "
                        "count as dropped; the server's media clock starts at 80 ms and "
                        "resyncs)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--sweep-streams", action="store_true")
    p.add_argument("--max-streams", type=int, default=16)
    p.add_argument("--stream-counts", type=int, nargs="+", default=None,
                   help="with --sweep-streams: run these counts in turn (default 1, 2, ... "
                        "--max-streams), stopping at the first that does not hold")
    p.add_argument("--batched", action="store_true",
                   help="in-process: the sessions share the networks through continuous "
                        "batching (stream.batching.BatchedEngine)")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="torch on cuda: launch every kernel from Python instead of replaying "
                        "CUDA graphs (stream/cuda_graphs.py), for comparison")
    p.add_argument("--random-encoder", action="store_true",
                   help="Whisper's encoder with random weights: timing only, for a machine "
                        "where its weights package cannot be installed "
                        "(benchmarks/timing_weights.py)")
    p.add_argument("--min-fps", type=float, default=24.0)
    p.add_argument("--p95-bound-ms", type=float, default=300.0)
    p.add_argument("--offline", action="store_true",
                   help="also measure offline throughput (audio pushed as fast as it goes)")
    p.add_argument("--json", required=True)
    p.add_argument("--plot", default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.stream_counts:
        args.max_streams = max(args.stream_counts)
    if args.streams < 1 or args.max_streams < 1 or min(args.stream_counts or [1]) < 1:
        raise SystemExit("--streams, --max-streams and --stream-counts must be at least 1")
    from models.face import PortraitError
    from stream.engine import EngineError, default_engine

    args.engine = args.engine or default_engine(args.device)
    if args.random_encoder:
        from benchmarks.timing_weights import use_random_whisper

        use_random_whisper()
    clip = speech(args.seconds, args.audio)
    if not clip.utterances:
        raise SystemExit(f"no speech found in {args.audio}")
    meta = {"command": "python -m benchmarks.latency " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "date": datetime.date.today().isoformat(), "cpu": cpu_name(),
            "mode": "webrtc" if args.webrtc else "inprocess", "engine": args.engine,
            "device": args.device, "size": args.size, "codec": args.codec,
            "seconds": args.seconds, "margin_ms": args.margin_ms, "batched": args.batched,
            "cuda_graphs": args.device == "cuda" and not args.no_cuda_graphs,
            "random_encoder": args.random_encoder}
    print(f"{meta['mode']}, {args.engine} engine on {args.device} ({meta['cpu']}), "
          f"{args.size} px, {args.seconds:.0f} s of speech, load average "
          f"{' '.join(map(str, loadavg()))}", flush=True)
    try:
        bench = Bench(args, args.max_streams if args.sweep_streams else args.streams)
    except (EngineError, PortraitError) as e:
        raise SystemExit(f"error: {e}") from None
    try:
        if args.sweep_streams:
            sweep = []
            for n in args.stream_counts or range(1, args.max_streams + 1):
                sweep.append(bench.run(clip, n))
                print(table(sweep[-1:]) if n > 1 else table(sweep), flush=True)
                if not holds(sweep[-1], args.min_fps, args.p95_bound_ms):
                    break
            held = [r["streams"] for r in sweep if holds(r, args.min_fps, args.p95_bound_ms)]
            best = max(held, default=0)
            result = dict(next((r for r in sweep if r["streams"] == best), sweep[0]))
            result["max_streams"] = best
            result["sweep"] = [{k: v for k, v in r.items() if k != "sessions"} for r in sweep]
            result["sweep_rule"] = {"min_fps": args.min_fps, "p95_bound_ms": args.p95_bound_ms}
            print(f"most streams holding {args.min_fps:g} fps with p95 <= "
                  f"{args.p95_bound_ms:g} ms: {best}")
        else:
            result = bench.run(clip, args.streams)
            print(table([result]))
        if args.offline and bench.engine is not None:
            result["offline_fps"] = offline_fps(bench.engine, bench.avatar, clip.audio)
            print(f"offline: {result['offline_fps']} fps")
    finally:
        bench.close()
    result = {**meta, **result, "loadavg_end": loadavg()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    return result


if __name__ == "__main__":
    main()
