"""Soak: one session streaming speech with pauses for a long time, over real WebRTC.

    python -m benchmarks.soak --minutes 30 [--size 256] [--json OUT.json]

Starts the real server (server.py, a child process on a free loopback port) and one aiortc
client in this process. The client's microphone plays real recorded speech (alsa-utils'
eight recordings, in a shuffled order) with pauses of 1 to 4 s between them, in real time,
for the whole run; it also holds the session's websocket open and reads the server's stats.

What is measured, and how:
- A/V offset, per utterance over the whole run: how much later than the microphone sent
  it the sound came back (the envelope of the received audio against the recording's), and
  the mouth movements (the mouth region's contrast in the received video against the same
  recording rendered offline, another seed), both on the sender's clock (RTP timestamps
  and RTCP sender reports: what a WebRTC player synchronises by). Offset = video delay -
  audio delay; an utterance counts when both correlations are clear (audio > 0.8, mouth
  > 0.5: the mouth needs freshly rendered frames, which a starved CPU may not give).
- Frames lost: video slots the server sent (its stats: slots sent minus the frames its
  sender dropped) that the client did not receive, by RTP timestamp (slot n has pts
  3600 n); the same for 20 ms audio frames. Reported = what the server counts as dropped.
- Memory: the server's resident memory (and threads, fds) every 10 s; flat = the slope
  after the warm-up (the first fifth of the run, at most 2 minutes), in MB per hour.
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.webrtc_client import (
    ALSA,
    ROOT,
    RTP_TIMING,
    delay_of,
    envelope,
    microphone,
    mouth_box,
    process_figures,
    start_server,
    track_receiver,
    watch_rtp_timing,
)

RECORDINGS = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left",
              "Rear_Right", "Side_Left", "Side_Right")
RATE = 48000
LEAD, TAIL = 1.0, 0.4            # silence around a recording in its offline reference
LAGS = np.arange(0.0, 3.0, 0.005)        # sound delays searched, s (added delay <= 1.5)
VIDEO_AROUND_SOUND = 1.0                 # picture delays searched: the sound's +- this, s
FRAME_MS = 40.0


# ----------------------------------------------------------------------------- the program

@dataclass
class Program:
    """The microphone's speech: recordings with pauses, scheduled in 48 kHz samples."""
    recordings: dict[str, np.ndarray]
    schedule: list[tuple[int, str]] = field(default_factory=list)    # (start sample, name)
    end: int = 0

    @classmethod
    def make(cls, seconds: float, seed: int = 0) -> "Program":
        from models.audio_io import load_audio

        program = cls({n: load_audio(ALSA / f"{n}.wav", rate=RATE) for n in RECORDINGS})
        rng = np.random.default_rng(seed)
        t = int(1.0 * RATE)
        while True:
            order = list(rng.permutation(RECORDINGS))
            if program.schedule and order[0] == program.schedule[-1][1]:
                order = order[1:] + order[:1]   # never one recording twice in a row: the
                #                                 delay search would match the repeat
            for name in order:
                clip = program.recordings[name]
                if (t + clip.size) / RATE > seconds - 1.0:
                    program.end = t
                    return program
                program.schedule.append((t, str(name)))
                t += clip.size + int(rng.uniform(1.0, 4.0) * RATE)

    def piece(self, start: int, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        for at, name in self.schedule:
            clip = self.recordings[name]
            lo, hi = max(start, at), min(start + n, at + clip.size)
            if lo < hi:
                out[lo - start:hi - start] = clip[lo - at:hi - at]
            if at > start + n:
                break
        return out


# ----------------------------------------------------------------------------- the mouth

WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def mouth_value(image: np.ndarray, box) -> float:
    """The contrast (luminance std) around the inner lips: rises as the mouth opens."""
    return float((image[box].astype(np.float32) @ WEIGHTS).std())


def offline_mouths(program: Program, size: int, checkpoint: str | None) -> tuple[dict, tuple]:
    """Per recording, its mouth signal rendered offline (frame k at k * 40 ms from the
    start of LEAD s of silence + the recording + TAIL s), seed 1 (the server uses 0)."""
    import torch

    from models.avatar import prepare_avatar
    from stream.engine import DEFAULT_CHECKPOINT, make_engine
    from stream.render_file import render_file
    from stream.session import Session

    torch.set_num_threads(1)
    engine = make_engine("torch", checkpoint or DEFAULT_CHECKPOINT)
    avatar = prepare_avatar(size=size)
    box = mouth_box(avatar)
    out = {}
    for name, clip in program.recordings.items():
        audio = np.concatenate([np.zeros(int(LEAD * RATE), np.float32), clip,
                                np.zeros(int(TAIL * RATE), np.float32)])
        values = []
        session = Session(engine, avatar, seed=1)
        try:
            render_file(session, audio, RATE, lambda image, _, values=values: values.append(
                mouth_value(image, box)))
        finally:
            session.close()
        out[name] = np.array(values)
    return out, box


# ----------------------------------------------------------------------------- the client

def sender_times(receiver: int, arrivals: np.ndarray, pts: np.ndarray, rate: int) -> np.ndarray:
    """When the sender stamped each received frame (this process's perf_counter clock), from
    the sender report nearest in time; NaN before the first report. webrtc_client's
    sender_clock for a whole recording at once: a 30-minute soak has ~45 000 pictures and
    ~90 000 sound frames, too many to convert one at a time."""
    timing = RTP_TIMING.get(receiver)
    out = np.full(arrivals.size, np.nan)
    if not timing or not timing["reports"] or timing["first"] is None:
        return out
    reports = np.array(timing["reports"])              # [n, 3]: local, unix, rtp
    nearest = np.abs(arrivals[:, None] - reports[None, :, 0]).argmin(1)
    rtp = (timing["first"] + pts.astype(np.int64)) & 0xFFFFFFFF
    delta = ((rtp - reports[nearest, 2].astype(np.int64) + 2**31) & 0xFFFFFFFF) - 2**31
    offset = time.time() - time.perf_counter()
    out[:] = reports[nearest, 1] + delta / rate - offset
    return out


@dataclass
class Recording:
    video: list = field(default_factory=list)      # (arrival, pts, mouth value)
    audio: list = field(default_factory=list)      # (arrival, pts, envelope [2])
    receivers: dict = field(default_factory=dict)
    stats: list = field(default_factory=list)      # the server's stats messages
    figures: list = field(default_factory=list)    # (seconds, process figures)


async def stream(url: str, pid: int, program: Program, seconds: float, box) -> tuple:
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from stream.webrtc import use_loopback_for_media

    use_loopback_for_media()
    watch_rtp_timing()
    rec = Recording()
    mic = microphone(program.piece)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(mic, direction="sendrecv")
    pc.addTransceiver("video", direction="recvonly")
    tasks = []

    async def record(track):
        try:
            while True:
                frame = await track.recv()
                now = time.perf_counter()
                if track.kind == "video":
                    rec.video.append((now, frame.pts, mouth_value(
                        frame.to_ndarray(format="rgb24"), box)))
                else:
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                    rec.audio.append((now, frame.pts, envelope(pcm.mean(1).astype(np.float32)
                                                               / 32768.0)))
        except MediaStreamError:
            pass

    @pc.on("track")
    def on_track(track):
        receiver = next(r for r in pc.getReceivers() if r.track is track)
        rec.receivers[track.kind] = track_receiver(receiver)
        tasks.append(asyncio.ensure_future(record(track)))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(url + "/offer", json={"sdp": pc.localDescription.sdp,
                                                   "type": "offer"}) as r:
            answer = await r.json()
            assert r.status == 200, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        ws = await http.ws_connect(f"{url}/ws/{answer['session']}", heartbeat=10)

        async def read_stats():
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    message = json.loads(msg.data)
                    if message.get("type") == "stats":
                        rec.stats.append((time.perf_counter(), message))

        tasks.append(asyncio.ensure_future(read_stats()))
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            await asyncio.sleep(10.0 - (time.perf_counter() - started) % 10.0)
            rec.figures.append((round(time.perf_counter() - started, 1), process_figures(pid)))
            print(f"  {rec.figures[-1][0]:7.0f} s  frames {len(rec.video):6d}  "
                  f"server {rec.figures[-1][1]}", flush=True)
        await asyncio.sleep(1.5)                      # the last stats message
        final = rec.stats[-1][1] if rec.stats else {}
        await ws.close()
        async with http.delete(f"{url}/sessions/{answer['session']}") as r:
            await r.read()
    await pc.close()
    for task in tasks:
        task.cancel()
    return rec, mic.started, final


# ----------------------------------------------------------------------------- analysis

def analyse(rec: Recording, sent_at: float, program: Program, mouths: dict, final: dict,
            seconds: float) -> dict:
    va = np.array([v[0] for v in rec.video])
    vp = np.array([v[1] for v in rec.video])
    vm = np.array([v[2] for v in rec.video])
    aa = np.array([a[0] for a in rec.audio])
    ap = np.array([a[1] for a in rec.audio])
    # a picture stands for its 40 ms slot: placed at the slot's middle, like the offline
    # reference frames (frame k at 40 k + 20 ms), not at its timestamp (the slot's start:
    # that read as the picture 20 ms early)
    t_video = sender_times(rec.receivers["video"], va, vp, 90000) + FRAME_MS / 2000
    t_audio_frames = sender_times(rec.receivers["audio"], aa, ap, RATE)
    t_audio = (t_audio_frames[:, None] + np.array([0.005, 0.015])[None, :]).reshape(-1)
    e_audio = np.concatenate([a[2] for a in rec.audio])
    ok_v, ok_a = np.isfinite(t_video), np.isfinite(t_audio)
    t_video, vm = t_video[ok_v], vm[ok_v]
    t_audio, e_audio = t_audio[ok_a], e_audio[ok_a]

    rows = []
    for start, name in program.schedule:
        t0 = sent_at + start / RATE
        duration = program.recordings[name].size / RATE
        if t0 + duration + 4.5 > sent_at + seconds:
            break
        window = (t0 - 0.3, t0 + duration + 0.3)
        env = envelope(program.recordings[name])
        t_env = t0 + (np.arange(env.size) + 0.5) * 0.01
        audio_delay, audio_corr = delay_of(t_env, env, t_audio, e_audio, window, LAGS)
        ref = mouths[name]
        t_ref = t0 - LEAD + (np.arange(ref.size) + 0.5) * FRAME_MS / 1000
        # The picture is searched within a second of the sound, and not before the microphone
        # sent the sound it shows: the mouth of a one-word recording also resembles other
        # recordings' (a 3.6 s and a -0.9 s "offset" were such matches), and pictures a
        # second or more off the sound fail the check anyway.
        lags = audio_delay + np.arange(-VIDEO_AROUND_SOUND, VIDEO_AROUND_SOUND + 1e-9, 0.005)
        lags = lags[lags >= 0]
        video_delay, video_corr = delay_of(t_ref, ref, t_video, vm, window, lags)
        rows.append({"t": round(t0 - sent_at, 1), "recording": name,
                     "audio_delay_ms": round(1000 * audio_delay),
                     "audio_corr": round(audio_corr, 3),
                     "video_delay_ms": round(1000 * video_delay),
                     "video_corr": round(video_corr, 3),
                     "av_offset_ms": round(1000 * (video_delay - audio_delay))})
    valid = [r for r in rows if r["audio_corr"] > 0.8 and r["video_corr"] > 0.5]
    offsets = np.array([r["av_offset_ms"] for r in valid]) if valid else np.zeros(0)

    per_minute = []
    for minute in range(int(np.ceil(seconds / 60))):
        inside = [r for r in valid if minute * 60 <= r["t"] < (minute + 1) * 60]
        figs = [f for t, f in rec.figures if minute * 60 < t <= (minute + 1) * 60]
        frames = int(np.sum((va >= sent_at + minute * 60) & (va < sent_at + (minute + 1) * 60)))
        stats = [m for t, m in rec.stats if minute * 60 <= t - sent_at < (minute + 1) * 60]
        server_latency = [m["latency_ms"] for m in stats if m.get("latency_ms") is not None]
        per_minute.append({
            "minute": minute + 1, "utterances": sum(minute * 60 <= r["t"] < (minute + 1) * 60
                                                    for r in rows),
            "valid": len(inside),
            "av_offset_median_ms": float(np.median([r["av_offset_ms"] for r in inside]))
            if inside else None,
            "av_offset_worst_ms": max((abs(r["av_offset_ms"]) for r in inside), default=None),
            "audio_delay_median_ms": float(np.median([r["audio_delay_ms"] for r in inside]))
            if inside else None,
            "received_fps": round(frames / 60.0, 2),
            "fresh_fps": round(float(np.mean([m["fps"] for m in stats])), 2) if stats else None,
            "server_latency_ms": float(np.median(server_latency)) if server_latency else None,
            "added_delay_ms": stats[-1].get("added_delay_ms") if stats else None,
            "rss_mb": figs[-1]["rss_mb"] if figs else None})

    # frames lost: slots the server put on the wire that never arrived here
    slots = np.unique((vp // 3600).astype(np.int64))
    sent_video = final.get("slots_sent", 0) - final.get("video_dropped", 0)
    audio_frames = np.unique((ap // 960).astype(np.int64))
    sent_audio = 2 * final.get("slots_sent", 0) - final.get("audio_dropped", 0)
    # the last ~0.5 s were still in flight when the client stopped counting
    in_flight_video, in_flight_audio = 12, 25
    lost_video = max(sent_video - slots.size - in_flight_video, 0)
    lost_audio = max(sent_audio - audio_frames.size - in_flight_audio, 0)

    figs = rec.figures
    warm = min(120.0, seconds / 5)
    after = [(t, f["rss_mb"]) for t, f in figs if t >= warm]
    slope = (float(np.polyfit([t for t, _ in after], [r for _, r in after], 1)[0]) * 3600
             if len(after) >= 3 else None)
    shown, repeated = final.get("shown", 0), final.get("repeated", 0)
    return {
        "seconds": seconds, "utterances": len(rows), "utterances_valid": len(valid),
        "av_offset_ms": {"median": float(np.median(offsets)) if offsets.size else None,
                         "p95_abs": float(np.percentile(np.abs(offsets), 95))
                         if offsets.size else None,
                         "worst_abs": int(np.abs(offsets).max()) if offsets.size else None,
                         "within_one_frame": round(float(np.mean(np.abs(offsets) <= FRAME_MS)),
                                                   3) if offsets.size else None},
        "audio_delay_ms_median": float(np.median([r["audio_delay_ms"] for r in valid]))
        if valid else None,
        "video": {"slots_sent": final.get("slots_sent"), "sender_dropped": final.get(
            "video_dropped"), "received": int(slots.size), "lost_unreported": int(lost_video),
            "fresh_share": round(shown / max(shown + repeated, 1), 3),
            "repeated": repeated, "skipped": final.get("skipped"),
            "render_dropped": final.get("dropped", 0) - final.get("video_dropped", 0)},
        "audio": {"frames_sent": int(sent_audio), "sender_dropped": final.get("audio_dropped"),
                  "received": int(audio_frames.size), "lost_unreported": int(lost_audio)},
        "memory": {"warmup_s": warm, "rss_mb_after_warmup": after[0][1] if after else None,
                   "rss_mb_end": figs[-1][1]["rss_mb"] if figs else None,
                   "rss_mb_max": max(f["rss_mb"] for _, f in figs) if figs else None,
                   "slope_mb_per_hour": round(slope, 1) if slope is not None else None,
                   "threads": [figs[0][1]["threads"], figs[-1][1]["threads"]] if figs else None,
                   "fds": [figs[0][1]["fds"], figs[-1][1]["fds"]] if figs else None},
        "per_minute": per_minute, "utterance_rows": rows}


def soak(seconds: float, size: int = 256, checkpoint: str | None = None,
         log: Path | None = None) -> dict:
    program = Program.make(seconds)
    t0 = time.perf_counter()
    mouths, box = offline_mouths(program, size, checkpoint)
    print(f"offline references: {time.perf_counter() - t0:.0f} s", flush=True)
    log = log or Path(os.environ.get("TEST_OUTPUT_DIR", ROOT / "out")) / "soak_server.log"
    args = ["--size", str(size), "--max-sessions", "1", "--verbose"]
    if checkpoint:
        args += ["--checkpoint", checkpoint]
    server = start_server(log, *args)
    process = server.process
    try:
        rec, sent_at, final = asyncio.run(stream(server.url, process.pid, program, seconds, box))
    finally:
        process.send_signal(signal.SIGTERM)          # the clean stop is part of what is checked
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    result = analyse(rec, sent_at, program, mouths, final, seconds)
    result["server_exit_code"] = process.returncode
    result["server_log_tracebacks"] = log.read_text(errors="replace").count("Traceback")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    parser.add_argument("--size", type=int, default=256, choices=[256, 512])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    seconds = args.seconds or args.minutes * 60
    result = soak(seconds, args.size, args.checkpoint)
    summary = {k: v for k, v in result.items() if k not in ("per_minute", "utterance_rows")}
    print(json.dumps(summary, indent=1))
    for row in result["per_minute"]:
        print(row)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
