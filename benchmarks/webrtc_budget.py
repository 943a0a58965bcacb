"""Where the time goes through WebRTC: a latency budget, stage by stage, per frame.

    python -m benchmarks.webrtc_budget [--size 256 512] [--seconds 20] [--browser-seconds 15]
        [--before /tmp/wt-before] [--pairs 1] [--warm-up 6] --json OUT.json

For each size, `python server.py` (onnx engine, 127.0.0.1) is started with its media clock
writing a trace (stream/webrtc.py: TALKING_HEAD_TRACE_DIR), a short warm-up session is run
(--warm-up seconds of speech: the server's media clock then knows its compute jitter, as on
a server that has been serving), then:

aiortc   benchmarks.latency's --webrtc run (real speech as the microphone, 20 ms packets at
         real-time pace) with the client tracing every packet, frame and decode
         (benchmarks/webrtc_client.py, Client(trace=True));
chromium Debian's headless Chromium on the project's page (web/), its fake microphone playing
         the same speech from a WAV, timing every displayed frame with
         requestVideoFrameCallback and reading getStats() (inbound-rtp jitterBufferDelay,
         jitterBufferEmittedCount, totalDecodeTime, totalProcessingDelay, ...).

Each received frame is matched to the server's output slot it came from (RTP timestamps
differ from the slot's by one random offset: the one that makes the most frames leave the
server just before they were sent or received), and each stage is the difference of two
measured times of that frame (ms, p50 / p95 over fresh frames; perf_counter() and
CLOCK_MONOTONIC are one clock for both processes on one machine):

    audio wait          the frame's own 40 ms of audio in at the session -> the last audio its
                        chunk needed in (block + look-ahead)
    compute             -> the frame rendered (features, motion, render, their queues; the
                        server's mean wall ms per frame of each are given too)
    slot wait           -> its slot due on the media clock (the start margin)
    tick                -> the slot out (the clock's 20 ms tick)
    hand-off            -> taken from the track by aiortc's sender (event loop)
    encode              -> its first RTP packet sent (aiortc's encoder in an executor;
                        the send time is the packets' abs-send-time header extension)
    send                -> its last packet sent (packetisation, SRTP, UDP)
    network             -> its last packet handled by the client (loopback, SRTP, event loop)
    jitter buffer       -> aiortc's jitter buffer lets it go (it waits for the next frame's
                        first packet)
    decode queue        -> its decoder thread starts on it
    decode              -> decoded
    to application      -> track.recv() returns it
    total               own audio in at the server -> decoded at the client
    microphone -> session  from the client's packet handed to aiortc to the audio in the
                        session: the client's sound delay (sent speech found in the received
                        sound, sender clock) minus the server's hold of a frame's last sample
                        (audio in -> slot out + 40 ms, where that sample leaves)
In Chromium (first_frame_ms: frame 0's audio in at the server -> shown, when rVFC saw it),
after "hand-off": "encode + send + network" (-> rVFC receiveTime, the last
packet received), "jitter buffer + decode + render" (-> rVFC presentationTime), and getStats'
per-frame means (jitter buffer: jitterBufferDelay / jitterBufferEmittedCount; decode:
totalDecodeTime / framesDecoded; processing: totalProcessingDelay / framesDecoded; audio
jitter buffer: jitterBufferDelay / jitterBufferEmittedCount of the audio stream).

--before ROOT runs the same on a second checkout (e.g. `git worktree add /tmp/wt-before
HEAD`): its server, this benchmark's client and measurements; runs alternate before / after
--pairs times per size, and the table shows them side by side (--also: more checkouts after
this one, e.g. one with a proposed change). A tree whose media clock writes no trace has its
server stages left blank.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import wave
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FPS = 25
PTS_PER_SLOT = 90000 // FPS
MASK = 0xFFFFFFFF
TRACE_ENV = "TALKING_HEAD_TRACE_DIR"
SERVER_STAGES = ("audio wait", "compute", "slot wait", "tick", "hand-off")
AIORTC_STAGES = ("encode", "send", "network", "jitter buffer", "decode queue", "decode",
                 "to application")
CHROMIUM_STAGES = ("encode + send + network", "jitter buffer + decode + render")


# ----------------------------------------------------------------------------- the server trace

def read_traces(folder: Path, timeout: float = 15.0, count: int = 1) -> list[dict]:
    """The media clocks' traces in `folder` (written when their sessions end), oldest first;
    waits up to `timeout` for `count` of them."""
    deadline = time.monotonic() + timeout
    while True:
        paths = sorted(folder.glob("clock-*.json"), key=lambda p: p.stat().st_mtime)
        if len(paths) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [json.loads(p.read_text()) for p in paths]


def slot_table(trace: dict) -> dict[int, dict]:
    """Output slot n -> its times (perf_counter s): k (frame shown fresh, -1 if not), own audio
    in, chunk audio in, rendered, due, out, and taken by the sender."""
    taken = {pts // PTS_PER_SLOT: t for pts, t in trace["taken"]}
    rows = {}
    for n, k, own, chunk, rendered, due, out in trace["slots"]:
        rows[n] = {"k": k, "own_in": own, "chunk_in": chunk, "rendered": rendered,
                   "due": due, "out": out, "taken": taken.get(n)}
    return rows


def match_slots(frames: list[dict], slots: dict[int, dict], key: str) -> dict[int, int]:
    """RTP timestamp -> output slot: the offset (RTP timestamp - slot pts) that the most
    frames agree on, each frame's slot taken as the last one the sender took before `key`
    (the frame's first packet sent, or received)."""
    taken = sorted((s["taken"], n) for n, s in slots.items() if s["taken"] is not None)
    if not taken or not frames:
        return {}
    times = np.array([t for t, _ in taken])
    votes = Counter()
    for f in frames:
        if f.get(key) is None:
            continue
        i = int(np.searchsorted(times, f[key], side="right")) - 1
        if i >= 0:
            votes[(f["rtp"] - taken[i][1] * PTS_PER_SLOT) & MASK] += 1
    if not votes:
        return {}
    offset = votes.most_common(1)[0][0]
    return {f["rtp"]: ((f["rtp"] - offset) & MASK) // PTS_PER_SLOT for f in frames}


def server_stages(slot: dict) -> dict[str, float | None]:
    """The server's stages of one fresh slot, ms."""
    def ms(a, b):
        return None if a is None or b is None else (b - a) * 1000

    return {"audio wait": ms(slot["own_in"], slot["chunk_in"]),
            "compute": ms(slot["chunk_in"], slot["rendered"]),
            "slot wait": ms(slot["rendered"], slot["due"]),
            "tick": ms(slot["due"], slot["out"]),
            "hand-off": ms(slot["out"], slot["taken"])}


# ----------------------------------------------------------------------------- the aiortc client

def client_frames(client) -> list[dict]:
    """Per decoded picture of an aiortc Client(trace=True): RTP timestamp, first and last
    packet sent (server) and handled (client), out of the jitter buffer, decode start and
    end, and returned by track.recv() (perf_counter s)."""
    from benchmarks.webrtc_client import RTP_TIMING

    timing = RTP_TIMING[client.receivers["video"]]
    packets: dict[int, list] = {}
    for arrived, rtp, _, sent in timing["packets"]:
        packets.setdefault(rtp, []).append((arrived, sent))
    buffered = {row[1]: row for row in timing["frames"]}
    if not timing["frames"]:
        return []
    origin = timing["frames"][0][1]           # the receiver's pts count from this timestamp
    out = []
    for arrived, _, pts in client.video:
        rtp = (origin + pts) & MASK
        got, jb = packets.get(rtp), buffered.get(rtp)
        if not got or jb is None:
            continue
        sent = [s for _, s in got if s is not None]
        out.append({"rtp": rtp, "first_sent": min(sent) if sent else None,
                    "last_sent": max(sent) if sent else None,
                    "first_in": min(a for a, _ in got), "last_in": max(a for a, _ in got),
                    "jb_out": jb[0], "decode_start": jb[2], "decode_end": jb[3],
                    "recv": arrived})
    return out


def audio_buffer_ms(client) -> list[float]:
    """Per 20 ms of received sound: its packet handled -> out of aiortc's jitter buffer, ms."""
    from benchmarks.webrtc_client import RTP_TIMING

    timing = RTP_TIMING[client.receivers["audio"]]
    arrived = {rtp: t for t, rtp, _, _ in timing["packets"]}
    return [(t - arrived[rtp]) * 1000 for t, rtp, _, _ in timing["frames"] if rtp in arrived]


def aiortc_budget(client, trace: dict | None) -> dict:
    """Per-frame stage times (ms lists) of one aiortc client, its server's trace if any."""
    frames = client_frames(client)
    stages: dict[str, list[float]] = {name: [] for name in
                                      (*SERVER_STAGES, *AIORTC_STAGES, "total")}
    slots = slot_table(trace) if trace else {}
    slot_of = match_slots(frames, slots, "first_sent") if slots else {}
    for f in frames:
        steps = [("encode", None, "first_sent"), ("send", "first_sent", "last_sent"),
                 ("network", "last_sent", "last_in"), ("jitter buffer", "last_in", "jb_out"),
                 ("decode queue", "jb_out", "decode_start"),
                 ("decode", "decode_start", "decode_end"),
                 ("to application", "decode_end", "recv")]
        slot = slots.get(slot_of.get(f["rtp"], -1))
        if slot is not None and slot["k"] < 0:
            continue                                  # a repeated picture: no fresh frame
        if slot is not None:
            for name, ms in server_stages(slot).items():
                if ms is not None:
                    stages[name].append(ms)
            stages["total"].append((f["recv"] - slot["own_in"]) * 1000)
            f = {**f, "taken": slot["taken"]}
        for name, a, b in steps:
            a = "taken" if a is None else a
            if f.get(a) is not None and f.get(b) is not None:
                stages[name].append((f[b] - f[a]) * 1000)
    stages["audio jitter buffer"] = audio_buffer_ms(client)
    return stages


def hold_ms(trace: dict) -> float | None:
    """Median of the server's hold of the sound: a fresh slot's own audio in -> slot out."""
    held = [(out - own) * 1000 for _, k, own, _, _, _, out in trace["slots"] if k >= 0]
    return float(np.median(held)) if held else None


# ----------------------------------------------------------------------------- Chromium

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"]
CHROMIUM = Path("/usr/bin/chromium")

WATCH_FRAMES = """() => {
  const video = document.getElementById("video");
  window.budgetFrames = [];
  const each = (now, m) => {
    window.budgetFrames.push([m.rtpTimestamp, m.receiveTime, m.presentationTime,
                              m.expectedDisplayTime, m.processingDuration]);
    video.requestVideoFrameCallback(each);
  };
  video.requestVideoFrameCallback(each);
  return performance.timeOrigin;
}"""

STATS = """async () => {
  const out = {};
  (await window.talkingHead.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") out[s.kind] = s;
    if (s.type === "codec") out["codec:" + s.id] = s.mimeType;
    if (s.type === "media-playout") out.playout = s;
  });
  return out;
}"""


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def chromium_run(url: str, wav: Path, seconds: float) -> dict:
    """The page in headless Chromium, its microphone the WAV, for `seconds` after the first
    decoded frames: per displayed frame [rtpTimestamp, receiveTime, presentationTime,
    expectedDisplayTime, processingDuration] (epoch ms) and getStats() at the start and end
    of the window."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=FLAGS + [f"--use-file-for-fake-audio-capture={wav}"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#avatars button")
            page.uncheck("#echo")
            page.check("#mic")
            page.click("#connect")
            page.wait_for_function("window.talkingHead.pc && "
                                   "window.talkingHead.pc.connectionState === 'connected'",
                                   timeout=30_000)
            origin = page.evaluate(WATCH_FRAMES)
            page.wait_for_function("window.budgetFrames.length >= 25", timeout=30_000)
            before = page.evaluate(STATS)
            time.sleep(seconds)
            after = page.evaluate(STATS)
            frames = page.evaluate("window.budgetFrames")
            page.click("#connect")
        finally:
            browser.close()
    rows = [[f[0], *(None if v is None else v + origin for v in f[1:4]), f[4]]
            for f in frames if f[0] is not None]
    return {"frames": rows, "before": before, "after": after}


def chromium_budget(run: dict, trace: dict | None) -> dict:
    """Per-frame stage times (ms lists) and getStats' means of one Chromium run."""
    slots = slot_table(trace) if trace else {}
    wall = trace["wall_minus_perf"] if trace else 0.0
    frames = [{"rtp": f[0], "received": f[1] / 1000 - wall, "presented": f[2] / 1000 - wall,
               "decode_ms": None if f[4] is None else f[4] * 1000} for f in run["frames"]
              if f[1] is not None and f[2] is not None]
    slot_of = match_slots(frames, slots, "received") if slots else {}
    stages: dict[str, list[float]] = {name: [] for name in
                                      (*SERVER_STAGES, *CHROMIUM_STAGES, "total")}
    stages["rVFC processingDuration"] = []
    stages["slot out -> presented"] = []
    for f in frames:
        slot = slots.get(slot_of.get(f["rtp"], -1))
        if slot is None or slot["k"] < 0 or slot["taken"] is None:
            continue
        for name, ms in server_stages(slot).items():
            if ms is not None:
                stages[name].append(ms)
        stages["encode + send + network"].append((f["received"] - slot["taken"]) * 1000)
        stages["jitter buffer + decode + render"].append((f["presented"] - f["received"]) * 1000)
        stages["total"].append((f["presented"] - slot["own_in"]) * 1000)
        stages["slot out -> presented"].append((f["presented"] - slot["out"]) * 1000)
        if f["decode_ms"] is not None:
            stages["rVFC processingDuration"].append(f["decode_ms"])
    a, b = run["before"], run["after"]
    means = {}

    def per(kind, total, count, scale=1000.0):
        if kind in a and kind in b and b[kind].get(count, 0) > a[kind].get(count, 0):
            return scale * (b[kind][total] - a[kind][total]) / (b[kind][count] - a[kind][count])
        return None

    means["video jitter buffer (getStats)"] = per("video", "jitterBufferDelay",
                                                  "jitterBufferEmittedCount")
    means["video jitter buffer target (getStats)"] = per("video", "jitterBufferTargetDelay",
                                                         "jitterBufferEmittedCount")
    means["video decode (getStats)"] = per("video", "totalDecodeTime", "framesDecoded")
    means["video processing (getStats)"] = per("video", "totalProcessingDelay", "framesDecoded")
    means["video assembly (getStats)"] = per("video", "totalAssemblyTime",
                                             "framesAssembledFromMultiplePackets")
    means["audio jitter buffer (getStats)"] = per("audio", "jitterBufferDelay",
                                                  "jitterBufferEmittedCount")
    means["audio jitter buffer target (getStats)"] = per("audio", "jitterBufferTargetDelay",
                                                         "jitterBufferEmittedCount")
    means["audio playout (getStats)"] = per("playout", "totalPlayoutDelay",
                                            "totalSamplesCount")
    out_to_shown = [(f["presented"] - slots[slot_of[f["rtp"]]]["out"]) * 1000 for f in frames
                    if slot_of.get(f["rtp"]) in slots]
    heard = [means[k] for k in ("audio jitter buffer (getStats)", "audio playout (getStats)")]
    if out_to_shown and heard[0] is not None:
        # the picture's slot out -> shown, minus its sound's slot out -> played (the audio's
        # send and loopback, under a millisecond, left out)
        means["A/V offset, + = picture later (derived)"] = (
            float(np.median(out_to_shown)) - heard[0] - (heard[1] or 0.0))
    video = b.get("video", {})
    decoded = video.get("framesDecoded", 0) - a.get("video", {}).get("framesDecoded", 0)
    span = (video.get("timestamp", 0) - a.get("video", {}).get("timestamp", 0)) / 1000
    first = [(f["presented"] - slots[slot_of[f["rtp"]]]["own_in"]) * 1000 for f in frames
             if slots.get(slot_of.get(f["rtp"], -1), {}).get("k") == 0]
    extra = {"codec": b.get("codec:" + str(video.get("codecId")), None),
             "first_frame_ms": round(first[0], 1) if first else None,
             "decoded_fps": round(decoded / span, 2) if span > 0 else None,
             "frames_dropped": video.get("framesDropped", 0) - a.get("video", {}).get(
                 "framesDropped", 0),
             "freezes": video.get("freezeCount", 0) - a.get("video", {}).get("freezeCount", 0)}
    return {"stages": stages, "means": {k: None if v is None else round(v, 1)
                                        for k, v in means.items()}, **extra}


# ----------------------------------------------------------------------------- summaries

def summary(stages: dict[str, list[float]]) -> dict[str, list[float | None]]:
    """name -> [p50, p95] ms."""
    out = {}
    for name, values in stages.items():
        if len(values):
            out[name] = [round(float(np.percentile(values, q)), 1) for q in (50, 95)]
        else:
            out[name] = [None, None]
    return out


def run_one(root: Path, size: int, seconds: float, browser_seconds: float, warm_up: float,
            engine: str) -> dict:
    """One server from checkout `root`: warm-up session, aiortc run, Chromium run."""
    from benchmarks.latency import run_webrtc, speech
    from benchmarks.webrtc_client import start_server
    from stream.engine import DEFAULT_CHECKPOINT

    traces = Path(tempfile.mkdtemp(prefix="budget-trace-"))
    stamp = time.strftime("%H%M%S")
    log = ROOT / "out" / "benchmarks" / f"budget_server_{root.name}_{size}_{stamp}.log"
    server = start_server(log, "--engine", engine, "--size", str(size), "--checkpoint",
                          str(DEFAULT_CHECKPOINT), "--max-sessions", "2", root=root,
                          env={TRACE_ENV: str(traces)})
    result = {"root": str(root), "size": size}
    try:
        if warm_up > 0:
            run_webrtc(server.url, server.process.pid, speech(warm_up), 1)
            server.sessions_when_drained()
        clip = speech(seconds)
        done = len(read_traces(traces, timeout=0))
        run = run_webrtc(server.url, server.process.pid, clip, 1, trace=True)
        server.sessions_when_drained()
        found = read_traces(traces, count=done + 1)
        trace = found[done] if len(found) > done else None
        row = run["sessions"][0]
        budget = aiortc_budget(run.pop("clients")[0], trace)
        result["aiortc"] = {k: v for k, v in row.items() if k != "latency_series"}
        result["aiortc"]["cpu_percent"] = run["cpu_percent"]
        result["aiortc"]["budget"] = summary(budget)
        result["server_trace"] = trace is not None
        if trace is not None:
            result["start_margin_ms"] = round(1000 * trace["start_margin"], 1)
            needs = np.array(trace["needs"]) * 1000
            if needs.size:
                result["needs_ms_p50_p99_max"] = [round(float(np.percentile(needs, q)), 1)
                                                  for q in (50, 99, 100)]
            hold = hold_ms(trace)
            delays = row.get("sound_delay_ms") or []
            if hold is not None and delays:
                # the frame's last sample arrived at own_in and leaves in its slot's sound
                # 40 ms after the slot's start
                result["aiortc"]["budget"]["microphone -> session"] = [
                    round(float(np.median(delays)) - hold - 1000 / FPS, 1), None]
        if browser_seconds > 0:
            wav = traces / "microphone.wav"
            write_wav(wav, speech(max(browser_seconds, 10.0)).audio)
            done = len(read_traces(traces, timeout=0))
            browser = chromium_run(server.url, wav, browser_seconds)
            server.sessions_when_drained()
            found = read_traces(traces, count=done + 1)
            btrace = found[done] if len(found) > done else None
            b = chromium_budget(browser, btrace)
            b["stages"] = summary(b["stages"])
            if btrace is not None:
                b["start_margin_ms"] = round(1000 * btrace["start_margin"], 1)
                first = min((s for s in btrace["slots"] if s[1] >= 0), key=lambda s: s[0],
                            default=None)
                b["first_slot_k"] = first[1] if first else None
            result["chromium"] = b
    finally:
        server.stop()
    return result


def fmt(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def report(results: list[dict]) -> str:
    """The side-by-side tables: end-to-end figures, then the budget (p50 / p95 ms)."""
    lines = []
    sizes = sorted({r["size"] for r in results})
    for size in sizes:
        runs = [r for r in results if r["size"] == size]
        names = [f"{Path(r['root']).name}#{i}" for i, r in enumerate(runs)]
        lines.append(f"\n{size} px: end to end (aiortc client)")
        lines.append(f"{'':34s}" + "".join(f"{n:>16s}" for n in names))
        for key in ("first_frame_ms", "latency_ms_p50", "latency_ms_p95", "fps",
                    "dropped_frames", "repeated_frames", "av_offset_ms", "cpu_percent"):
            lines.append(f"{key:34s}" + "".join(f"{fmt(r['aiortc'].get(key)):>16s}"
                                                for r in runs))
        lines.append(f"{'start margin ms':34s}" + "".join(
            f"{fmt(r.get('start_margin_ms')):>16s}" for r in runs))
        lines.append(f"\n{size} px: budget, aiortc client, p50 / p95 ms")
        for name in (*SERVER_STAGES, *AIORTC_STAGES, "total", "audio jitter buffer",
                     "microphone -> session"):
            cells = [r["aiortc"]["budget"].get(name, [None, None]) for r in runs]
            lines.append(f"{name:34s}" + "".join(f"{fmt(c[0]) + ' / ' + fmt(c[1]):>16s}"
                                                 for c in cells))
        if any("chromium" in r for r in runs):
            lines.append(f"\n{size} px: Chromium, p50 / p95 ms (getStats: means)")
            for name in (*SERVER_STAGES, *CHROMIUM_STAGES, "rVFC processingDuration",
                         "slot out -> presented", "total"):
                cells = [r.get("chromium", {}).get("stages", {}).get(name, [None, None])
                         for r in runs]
                lines.append(f"{name:34s}" + "".join(
                    f"{fmt(c[0]) + ' / ' + fmt(c[1]):>16s}" for c in cells))
            keys = list(runs[-1].get("chromium", {}).get("means", {}))
            for name in keys:
                lines.append(f"{name:34s}" + "".join(
                    f"{fmt(r.get('chromium', {}).get('means', {}).get(name)):>16s}"
                    for r in runs))
            for name in ("codec", "first_frame_ms", "decoded_fps", "frames_dropped", "freezes",
                         "start_margin_ms"):
                lines.append(f"{name:34s}" + "".join(
                    f"{str(r.get('chromium', {}).get(name, '-')):>16s}" for r in runs))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs="+", default=[256, 512])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--browser-seconds", type=float, default=15.0,
                   help="Chromium's measuring window (0: no Chromium run)")
    p.add_argument("--warm-up", type=float, default=6.0,
                   help="seconds of speech in a session before the measured ones")
    p.add_argument("--before", type=Path, help="a second checkout to compare with")
    p.add_argument("--also", type=Path, nargs="*", default=[],
                   help="more checkouts, run after this one in each round")
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--engine", default="onnx")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    roots = ([args.before.resolve()] if args.before else []) + [ROOT] + [
        r.resolve() for r in args.also]
    results = []
    for size in args.size:
        for _ in range(args.pairs):
            for root in roots:
                print(f"{size} px, {root}: load average "
                      f"{Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
                results.append(run_one(root, size, args.seconds, args.browser_seconds,
                                       args.warm_up, args.engine))
    text = report(results)
    print(text)
    meta = {"command": "python -m benchmarks.webrtc_budget " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "date": datetime.date.today().isoformat(), "cpu_count": os.cpu_count()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({**meta, "runs": results, "table": text}, indent=1))
    return results


if __name__ == "__main__":
    main()
