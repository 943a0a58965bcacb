"""Streaming engine speed on this machine: first-frame latency, per-chunk latency, fps.

    python -m benchmarks.streaming [--engines torch onnx] [--sizes 512 256] [--seconds 20]

For each engine and working size:
  realtime  speech fed in 20 ms pieces at real-time pace (as a microphone would); a Player
            pulls frames on the media clock. first_frame_ms = first audio sample pushed ->
            first frame rendered; frame latency = the frame's own 40 ms of audio arrived ->
            the frame rendered (includes waiting for the rest of its chunk and the
            look-ahead); chunk latency = the last audio its chunk needed arrived -> rendered
            (compute only); p50/p95; shown/repeated slots.
  offline   the same audio pushed as fast as the pipeline takes it: sustained fps.
Speech: alsa-utils' recordings with pauses, looped to --seconds.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.audio_features import cpu_name


def speech(seconds: float) -> np.ndarray:
    from models.audio_io import load_audio

    names = ["Front_Center", "Front_Left", "Rear_Center", "Side_Right", "Rear_Left"]
    parts = []
    for n in names:
        parts += [load_audio(f"/usr/share/sounds/alsa/{n}.wav", rate=48000),
                  np.zeros(24000, np.float32)]
    one = np.concatenate(parts)
    return np.tile(one, int(np.ceil(seconds * 48000 / one.size)))[: int(seconds * 48000)]


def realtime(engine, avatar, audio: np.ndarray) -> dict:
    from stream.player import Player
    from stream.session import Session

    session = Session(engine, avatar, seed=0, realtime=True)
    player = Player(session)
    piece = 960                                   # 20 ms at 48 kHz
    t0 = None
    try:
        for i in range(0, audio.size, piece):
            if t0 is None:
                t0 = time.perf_counter()
            while time.perf_counter() < t0 + i / 48000:
                time.sleep(0.002)
                player.play()
            session.push_audio(audio[i:i + piece], 48000)
            player.play()
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            player.play()
            time.sleep(0.005)
    finally:
        session.close()
    s = player.stats
    return {
        "first_frame_ms": (s.first_frame - t0) * 1000 if s.first_frame else None,
        "frame_latency_ms_p50": float(np.percentile(s.frame_ms, 50)),
        "frame_latency_ms_p95": float(np.percentile(s.frame_ms, 95)),
        "chunk_latency_ms_p50": float(np.percentile(s.render_ms, 50)),
        "chunk_latency_ms_p95": float(np.percentile(s.render_ms, 95)),
        "slots": s.slots, "shown": s.shown, "repeated": s.repeated, "skipped": s.skipped,
        "stages_ms": session.stats.stage_means(),
    }


def offline(engine, avatar, audio: np.ndarray) -> dict:
    from stream.render_file import render_file
    from stream.session import Session

    session = Session(engine, avatar, seed=0)
    try:
        _, report = render_file(session, audio, 48000)
    finally:
        session.close()
    return {"fps": report["fps"], "frames": report["frames"], "stages_ms": report["stages_ms"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from models.avatar import prepare_avatar
    from stream.engine import DEFAULT_CHECKPOINT, make_engine

    audio = speech(args.seconds)
    rows = []
    print(f"CPU: {cpu_name()}; {args.seconds:.0f} s of speech with pauses")
    for name in args.engines:
        engine = make_engine(name, args.checkpoint or DEFAULT_CHECKPOINT)
        for size in args.sizes:
            avatar = prepare_avatar(size=size)
            engine.render(avatar, np.zeros((2, 17), np.float32))      # warm-up / export
            rt = realtime(engine, avatar, audio)
            off = offline(engine, avatar, audio)
            row = {"engine": name, "size": size, **rt, "offline_fps": off["fps"],
                   "offline_stages_ms": off["stages_ms"]}
            rows.append(row)
            print(f"{name:6s} {size:4d}  first frame {row['first_frame_ms']:.0f} ms  "
                  f"frame latency p50 {row['frame_latency_ms_p50']:.0f} / "
                  f"p95 {row['frame_latency_ms_p95']:.0f} ms  "
                  f"chunk p50 {row['chunk_latency_ms_p50']:.0f} / "
                  f"p95 {row['chunk_latency_ms_p95']:.0f} ms  "
                  f"real-time slots shown {row['shown']}/{row['slots']} "
                  f"(repeated {row['repeated']})  offline {row['offline_fps']:.1f} fps  "
                  f"stages {json.dumps({k: round(v, 1) for k, v in off['stages_ms'].items()})}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
