"""Latency of the headless session API: first audio in -> first frame of that speech out.

    python -m benchmarks.headless [--size 256 [512]] [--utterances 10]
        [--json out/benchmarks/headless.json]

`python server.py` is started on 127.0.0.1 at each --size; one headless session per case
(integrations/client, the client the Pipecat and LiveKit plugins use), real speech (alsa-utils'
recordings, 1.4-1.5 s each, in turn), each utterance after 1 s of idle slots:

    at once        the whole utterance in one websocket message (as a TTS that is faster
                   than real time delivers it), real-time pacing
    real-time      20 ms messages at real-time pace (a TTS that streams as it speaks, or a
                   microphone), real-time pacing
    at once, fast  the whole utterance at once, "fast" pacing (frames leave as rendered)

first_frame_ms: the first audio message handed to the websocket -> the first slot flagged as
speech (its sound is that audio, its picture the frame made from it) received and parsed by
the client. ended_ms: the utterance's end on the sender's real-time clock (first message +
its duration) -> its "speech_ended" event received. Median (and min, max) of --utterances.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.webrtc_client import ALSA, ROOT, start_server
from models.audio_io import load_audio

sys.path.insert(0, str(ROOT / "integrations" / "client"))
from talking_head_client import TalkingHeadClient  # noqa: E402

RECORDINGS = ("Front_Center", "Front_Left", "Rear_Right", "Side_Left")
CASES = [("at once", "realtime"), ("real-time", "realtime"), ("at once", "fast")]
PACKET = 320                                   # 20 ms at 16 kHz
IDLE_SECONDS = 1.0


async def first_speech_slot(session) -> float:
    """Items until the first speech slot: its arrival (perf_counter)."""
    while True:
        item = await session.receive(timeout=30)
        if item is None:
            raise RuntimeError(f"the media websocket closed ({session.close_code})")
        if item.kind == "slot" and item.speech:
            return time.perf_counter()


async def until_event(session, kind: str) -> float:
    while True:
        item = await session.receive(timeout=30)
        if item is None:
            raise RuntimeError(f"the media websocket closed ({session.close_code})")
        if item.kind == "event" and item.type == kind:
            return time.perf_counter()


async def idle(session, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        await session.receive(timeout=30)


async def send(session, pcm: bytes, paced: bool) -> float:
    """Send the utterance; returns when its first message was handed over."""
    if not paced:
        started = time.perf_counter()
        await session.send_pcm(pcm, rate=16000)
        return started
    started = time.perf_counter()
    for j, i in enumerate(range(0, len(pcm), 2 * PACKET)):
        await asyncio.sleep(max(started + j * PACKET / 16000 - time.perf_counter(), 0))
        await session.send_pcm(pcm[i:i + 2 * PACKET], rate=16000)
    return started


async def case(url: str, sending: str, pacing: str, utterances: int) -> dict:
    clips = [load_audio(ALSA / f"{name}.wav") for name in RECORDINGS]
    first, ended = [], []
    async with TalkingHeadClient(url) as client:
        session = await client.create_session(rate=16000, pacing=pacing)
        for i in range(utterances):
            await idle(session, IDLE_SECONDS)
            clip = clips[i % len(clips)]
            pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()
            sender = asyncio.ensure_future(send(session, pcm, sending == "real-time"))
            arrived = await first_speech_slot(session)
            finished = await until_event(session, "speech_ended")
            started = await sender
            first.append(1000 * (arrived - started))
            ended.append(1000 * (finished - (started + clip.size / 16000)))
        await session.close()
    return {"sending": sending, "pacing": pacing, "utterances": utterances,
            "first_frame_ms": summary(first), "ended_ms": summary(ended),
            "first_frame_ms_all": [round(x, 1) for x in first]}


def summary(values: list[float]) -> dict:
    v = np.array(values, np.float64)
    return {"median": round(float(np.median(v)), 1), "min": round(float(v.min()), 1),
            "max": round(float(v.max()), 1)}


def size_arguments(name: str, doc: str) -> argparse.Namespace:
    """The options of the latency benchmarks of the headless API and the voice-agent plugins:
    --size (one or more), --utterances, --json (default out/benchmarks/NAME.json)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[256], choices=[256, 512])
    parser.add_argument("--utterances", type=int, default=10)
    parser.add_argument("--json", default=str(ROOT / "out" / "benchmarks" / f"{name}.json"))
    return parser.parse_args()


def per_size(name: str, sizes: list[int], measure) -> list[dict]:
    """measure(url, size) -> rows, against a server started on 127.0.0.1 at each size (its
    log: out/benchmarks/NAME_server_SIZE.log), stopped after."""
    rows = []
    for size in sizes:
        server = start_server(ROOT / "out" / "benchmarks" / f"{name}_server_{size}.log",
                              "--size", str(size))
        try:
            rows += measure(server.url, size)
        finally:
            server.stop()
    return rows


def write_rows(path: str, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows},
                                     indent=1))
    print(f"\nwrote {path}")


def _cases(url: str, size: int, utterances: int) -> list[dict]:
    rows = []
    for sending, pacing in CASES:
        row = {"size": size, **asyncio.run(case(url, sending, pacing, utterances))}
        rows.append(row)
        print(f"{size} px  {sending:9s} {pacing:8s}  first frame "
              f"{row['first_frame_ms']['median']:6.0f} ms (min "
              f"{row['first_frame_ms']['min']:.0f}, max "
              f"{row['first_frame_ms']['max']:.0f})  speech_ended "
              f"{row['ended_ms']['median']:+.0f} ms after the audio's end", flush=True)
    return rows


def main() -> None:
    args = size_arguments("headless", __doc__)
    rows = per_size("headless", args.size, lambda url, size: _cases(url, size,
                                                                      args.utterances))
    print("\n| size | audio sent | pacing | first frame, median (min-max) ms | "
          "speech_ended after the audio's end, median ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        f = r["first_frame_ms"]
        print(f"| {r['size']} | {r['sending']} | {r['pacing']} | {f['median']:.0f} "
              f"({f['min']:.0f}-{f['max']:.0f}) | {r['ended_ms']['median']:+.0f} |")
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
