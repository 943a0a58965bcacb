"""Real talking-head videos -> training shards in train.synth's format.

    python -m train.prepare_videos --videos DIR --out DIR [--workers 2] [--val-fraction 0.1]

Every video under DIR (mp4, mov, webm, mkv, m4v, avi; decoded with av) goes through:

1. its own audio track, decoded to 16 kHz mono (models.audio_io.load_audio);
2. a face track (models.face_track): the largest face, landmarks on every frame (detector to
   find and confirm it, the landmark predictor alone in between);
3. resampling onto the motion frame rate from the frames' timestamps (any rate, variable
   too): motion frame k is the face at (k + 0.5) / 25 s after the audio starts, linear
   between the nearest frames with a face; gaps of at most max_gap_seconds are bridged, a
   longer gap (or a different face) ends an example;
4. per example (a run of 2-20 s; longer runs are cut in equal pieces): a neutral face for the
   person (the median shape of its calmest frames: mouth closed, eyes open, head near its
   usual pose; see neutral_face), motion fitted in the motion space against it
   (models.motion_space.fit_motion), a Savitzky-Golay filter over 5 frames (no lag; a
   blink of 4 frames keeps ~93 % of its depth, of 3 frames ~86 %), and the audio features
   of the example's own audio (models.audio.AudioFeatureExtractor, as train.synth does).

Shards are train.synth's: `{split}-{index:05d}.npz` + `.json`, read by train.synth.read_shard
/ load_examples and by train.dataset.load_examples. Real videos have no transcript: text
"", no sentences, no phonemes; `voice` is "video/<relative path>". Extra arrays: landmarks
[T, 68, 2] (source-video pixels, after resampling), landmark_status [T] (0 observed,
1 bridged gap) and neutral_landmarks [examples, 68, 2] (see read_landmarks).

Style: what the motion shows is measured (head_amplitude and mouth_amplitude as
train.dataset.measure_style defines them, blink_rate in blinks a minute); the rest keep
visemes.Style's defaults; each example lists the measured names in "style_measured".

Split: by video, from a hash of its path relative to DIR (val when below --val-fraction),
so a video never has examples in both splits and adding videos moves none.

Resumable: videos.json in the output folder records every video finished (with its shards)
or skipped (with the reason); those are not redone. Workers write shards under temporary
names; the parent gives them their numbers in the order of the sorted video list and then
records the video, so a run interrupted anywhere leaves no half video behind.

At the end: dataset statistics (train.synth.dataset_stats) printed and written to
stats.json / stats.txt, and report.json / report.txt listing every skipped video with its
reason (and any video that failed unexpectedly: those are retried on the next run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from models import motion_space as ms
from models.audio_io import AudioInputError, load_audio
from models.face_track import (
    OBSERVED,
    TrackConfig,
    VideoInputError,
    on_ticks,
    probe,
    read_frames,
    segments,
    track_faces,
)
from models.recording import FIT_CHUNK, SMOOTH_FRAMES, SMOOTH_ORDER, face_measures, smooth
from train import synth, visemes

FORMAT_VERSION = 1
FPS = visemes.FPS                                   # 25 motion frames a second
RATE = synth.RATE                                   # 16 kHz audio
SAMPLES_PER_FRAME = visemes.SAMPLES_PER_FRAME       # 640
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".m4v", ".avi")


@dataclass(frozen=True)
class PrepareConfig:
    val_fraction: float = 0.1           # share of videos (by path hash) in the val split
    min_example_seconds: float = 2.0    # shorter face runs are dropped
    max_example_seconds: float = 20.0   # longer runs are cut into equal pieces
    max_gap_seconds: float = 0.3        # longest stretch without a face that is bridged
    shard_seconds: float = 600.0        # audio per shard (a video's examples fill >= 1 shard)
    smooth_frames: int = SMOOTH_FRAMES  # Savitzky-Golay window (motion frames); 1: none
    smooth_order: int = SMOOTH_ORDER
    silent_db: float = -60.0            # audio whose loudest 40 ms is below this: no sound
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict:
        return asdict(self)


# --- the neutral face, smoothing, style ----------------------------------------------------

def _rank(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)


def neutral_face(landmarks: np.ndarray) -> np.ndarray:
    """The person's neutral face [68, 2] (pixels) from their landmarks [T, 68, 2].

    Calm frames: mouth closed (inner-lip gap in the lowest 20 % and within 0.01 face widths,
    ~jaw_open 0.05, of the smallest gaps) and eyes open (eye opening above its 40th
    percentile); of those, the half whose yaw and pitch are nearest the
    medians. The neutral shape is their median (canonical units, in-plane pose removed),
    placed at the median position, size and in-plane angle of all frames, so motion fitted
    against it is relative to the person's own rest shape and usual pose. (The mouth must
    be closed: fit_motion keeps jaw_open >= 0, so a half-open neutral clips every closing.)
    """
    landmarks = np.asarray(landmarks, np.float64)
    placements = [ms.place(lm) for lm in landmarks]
    canonical = np.stack([p.to_canonical(lm) for p, lm in zip(placements, landmarks, strict=True)])
    m = face_measures(canonical)
    closed = min(np.percentile(m["mouth_gap"], 20), np.percentile(m["mouth_gap"], 2) + 0.01)
    candidates = np.flatnonzero((m["mouth_gap"] <= closed)
                                & (m["eye_opening"] >= np.percentile(m["eye_opening"], 40)))
    if candidates.size == 0:
        candidates = np.array([int(np.argmin(m["mouth_gap"]))])
    off_pose = (_rank(np.abs(m["yaw"][candidates] - np.median(m["yaw"])))
                + _rank(np.abs(m["pitch"][candidates] - np.median(m["pitch"]))))
    calm = candidates[np.argsort(off_pose, kind="stable")[: max(1, len(candidates) // 2)]]
    shape = np.median(canonical[calm], axis=0)                           # [68, 2]
    angles = np.array([p.angle for p in placements])
    where = ms.Placement(scale=float(np.median([p.scale for p in placements])),
                         angle=float(np.angle(np.mean(np.exp(1j * angles)))),
                         offset=np.median([p.offset for p in placements], axis=0))
    return where.to_image(shape).astype(np.float32)


def fit_example(landmarks: np.ndarray, config: PrepareConfig) -> tuple[np.ndarray, np.ndarray]:
    """(motion [T, D] smoothed and clipped, neutral face [68, 2]) for one example's
    landmarks [T, 68, 2] at 25 fps."""
    neutral = neutral_face(landmarks)
    motion = np.concatenate([ms.fit_motion(landmarks[i:i + FIT_CHUNK], neutral)
                             for i in range(0, len(landmarks), FIT_CHUNK)])
    return smooth(motion, config.smooth_frames, config.smooth_order), neutral


def count_blinks(motion: np.ndarray, threshold: float = 0.5) -> int:
    both = 0.5 * (motion[:, ms.index("blink_left")] + motion[:, ms.index("blink_right")])
    closed = both > threshold
    return int(np.sum(closed[1:] & ~closed[:-1]) + (1 if len(closed) and closed[0] else 0))


STYLE_MEASURED = ("head_amplitude", "mouth_amplitude", "blink_rate")


def measure_style(motion: np.ndarray) -> visemes.Style:
    """The Style values a video shows (STYLE_MEASURED); the others keep their defaults.
    head/mouth amplitude as train.dataset.measure_style (what the trainer uses)."""
    from train.dataset import measure_style as amplitudes

    values = amplitudes(motion)
    minutes = len(motion) / FPS / 60.0
    values["blink_rate"] = count_blinks(motion) / max(minutes, 1e-9)
    return visemes.Style(**values)


def silent_frames(audio: np.ndarray, floor_db: float = -55.0, below_peak_db: float = 30.0
                  ) -> np.ndarray:
    """Per motion frame [T] bool: a rough silence estimate (40 ms RMS under both -55 dBFS
    and 30 dB below the 95th percentile level). For statistics only."""
    level = frame_levels(audio)
    if level.size == 0:
        return np.zeros(0, bool)
    return level < max(floor_db, np.percentile(level, 95) - below_peak_db)


def frame_levels(audio: np.ndarray) -> np.ndarray:
    """RMS level in dBFS of each full 40 ms frame [T]."""
    T = len(audio) // SAMPLES_PER_FRAME
    x = audio[: T * SAMPLES_PER_FRAME].astype(np.float64).reshape(T, SAMPLES_PER_FRAME)
    return 10 * np.log10(np.mean(x ** 2, axis=1) + 1e-12)


# --- one video ------------------------------------------------------------------------------

class SkipVideo(Exception):
    """The video cannot give examples; the message is the reason for the report."""


@dataclass
class VideoExample:
    start: int                 # first motion frame (25 fps from the audio start)
    audio: np.ndarray          # [n] float32 16 kHz, n = 640 T
    motion: np.ndarray         # [T, D] float32
    landmarks: np.ndarray      # [T, 68, 2] float32, source-video pixels
    status: np.ndarray         # [T] int8 OBSERVED / BRIDGED
    neutral: np.ndarray        # [68, 2] float32 the neutral face the motion is fitted against
    features: np.ndarray       # [T, stack, 384] float16
    style: visemes.Style
    silence_seconds: float
    face_width: float          # median, source pixels

    @property
    def frames(self) -> int:
        return len(self.motion)


@dataclass
class VideoResult:
    name: str                  # path relative to the videos folder
    size: int                  # bytes
    split: str
    examples: list[VideoExample] = field(default_factory=list)
    reason: str | None = None              # why the whole video was skipped
    skipped: list[dict] = field(default_factory=list)   # pieces left out, with reasons
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    seconds: float = 0.0       # processing wall time
    cpu_seconds: float = 0.0


def split_of(name: str, val_fraction: float) -> str:
    """'val' or 'train' from a hash of the video's relative path."""
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 2 ** 32
    return "val" if h < val_fraction else "train"


def prepare_video(path: Path, name: str, config: PrepareConfig, extractor,
                  progress=None) -> VideoResult:
    """One video -> its examples (features included), or the reason it gives none."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = VideoResult(name=name, size=path.stat().st_size if path.is_file() else 0,
                         split=split_of(name, config.val_fraction))
    try:
        _prepare(path, config, extractor, progress, result)
    except (SkipVideo, VideoInputError, AudioInputError) as e:
        result.reason = str(e).replace(f"{path}: ", "")
        result.examples = []
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    return result


def _prepare(path: Path, config: PrepareConfig, extractor, progress, result: VideoResult) -> None:
    info = probe(path)
    result.info = {"width": info.width, "height": info.height, "fps": info.fps,
                   "duration": info.duration, "codec": info.codec}
    if not info.has_audio:
        raise SkipVideo("the video has no audio track")
    audio = load_audio(path, RATE)
    T = len(audio) // SAMPLES_PER_FRAME                    # whole motion frames of audio
    if T == 0:
        raise SkipVideo("the audio track is shorter than one frame (40 ms)")
    if frame_levels(audio).max() < config.silent_db:
        raise SkipVideo(f"the audio track is silent (never above {config.silent_db:.0f} dBFS)")
    result.info["audio_seconds"] = len(audio) / RATE

    track = track_faces(read_frames(path, config.track, result.notes), config.track,
                        fps=info.fps or FPS, progress=progress)
    result.info.update(frames_read=len(track.times), detections=track.detections,
                       frames_with_face=int(track.found.sum()))
    if len(track.times) == 0:
        raise SkipVideo("no video frame could be decoded")
    if not track.found.any():
        raise SkipVideo(f"no face found in any of {len(track.times)} frames "
                        f"(faces narrower than {config.track.min_face:.0f} px are ignored)")
    ticks = on_ticks(track, info.audio_start + (np.arange(T) + 0.5) / FPS,
                     config.max_gap_seconds)
    min_frames = int(round(config.min_example_seconds * FPS))
    kept, short = segments(ticks, min_frames, int(round(config.max_example_seconds * FPS)))
    for a, b in short:
        result.skipped.append({"start": a / FPS, "end": b / FPS,
                               "reason": f"face run shorter than {config.min_example_seconds:g} s"})
    if not kept:
        longest = max((b - a for a, b in short), default=0) / FPS
        raise SkipVideo(f"no face run of at least {config.min_example_seconds:g} s "
                        f"(longest {longest:.1f} s; face in {track.found.mean():.0%} of frames)")
    for a, b in kept:
        landmarks = ticks.landmarks[a:b]
        motion, neutral = fit_example(landmarks, config)
        clip = audio[a * SAMPLES_PER_FRAME: b * SAMPLES_PER_FRAME]
        features = extractor.features(clip).astype(np.float16)
        if len(features) != b - a:
            raise RuntimeError(f"features have {len(features)} frames, motion {b - a}")
        widths = np.linalg.norm(landmarks[:, 16] - landmarks[:, 0], axis=-1)
        result.examples.append(VideoExample(
            start=a, audio=clip, motion=motion, landmarks=landmarks.astype(np.float32),
            status=ticks.status[a:b].copy(), neutral=neutral, features=features,
            style=measure_style(motion),
            silence_seconds=float(silent_frames(clip).sum() / FPS),
            face_width=float(np.median(widths))))


# --- shards ---------------------------------------------------------------------------------

def _parts(examples: list[VideoExample], seconds: float) -> list[list[VideoExample]]:
    parts: list[list[VideoExample]] = [[]]
    for e in examples:
        if parts[-1] and sum(x.frames for x in parts[-1]) / FPS + e.frames / FPS > seconds:
            parts.append([])
        parts[-1].append(e)
    return [p for p in parts if p]


def shard_content(result: VideoResult, examples: list[VideoExample], part: int, parts: int,
                  config: PrepareConfig, feature_config: dict) -> dict:
    """{"meta", "arrays"} of one shard, in train.synth's layout (index and ids are filled in
    when the shard gets its number)."""
    def offsets(lengths):
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    voice = f"video/{result.name}"
    motion = np.concatenate([e.motion for e in examples]).astype(np.float64)
    n = len(examples)
    arrays = {
        "audio": np.concatenate([synth._to_int16(e.audio) for e in examples]),
        "audio_offsets": offsets([len(e.audio) for e in examples]),
        "features": np.concatenate([e.features for e in examples]),
        "motion": motion.astype(np.float32),
        "frame_offsets": offsets([e.frames for e in examples]),
        "names": np.array(ms.NAMES),
        "style": np.stack([e.style.vector() for e in examples]),
        "style_names": np.array(visemes.STYLE_NAMES),
        "voice": np.array([voice] * n),
        "text": np.array([""] * n),
        "phonemes": np.zeros(0, "<U3"),
        "phoneme_times": np.zeros((0, 2), np.float32),
        "phoneme_stress": np.zeros(0, np.int8),
        "phoneme_offsets": np.zeros(n + 1, np.int64),
        "landmarks": np.concatenate([e.landmarks for e in examples]).astype(np.float32),
        "landmark_status": np.concatenate([e.status for e in examples]).astype(np.int8),
        "neutral_landmarks": np.stack([e.neutral for e in examples]).astype(np.float32),
    }
    seconds = sum(len(e.audio) for e in examples) / RATE
    meta = {
        "format": synth.FORMAT_VERSION, "kind": "video", "video_format": FORMAT_VERSION,
        "split": result.split, "index": None,
        "config": config.to_dict(), "features": feature_config,
        "names": list(ms.NAMES), "style_names": list(visemes.STYLE_NAMES),
        "source": {"video": result.name, "size": result.size, "part": part, "parts": parts,
                   **result.info},
        "examples": [{
            "id": None, "voice": voice, "text": "", "sentences": [], "delivery": {},
            "style": e.style.to_dict(), "style_measured": list(STYLE_MEASURED),
            "seconds": len(e.audio) / RATE, "frames": e.frames, "phonemes": 0,
            "video": result.name, "start": e.start / FPS, "end": (e.start + e.frames) / FPS,
            "bridged_frames": int((e.status != OBSERVED).sum()), "face_width": e.face_width,
        } for e in examples],
        "skipped": [dict(s, video=result.name) for s in result.skipped] if part == 0 else [],
        "stats": {
            "examples": n, "seconds": seconds,
            "silence_seconds": sum(e.silence_seconds for e in examples),
            "frames": int(len(motion)), "voices": [voice], "sentences": [],
            "motion_min": motion.min(axis=0).tolist(),
            "motion_max": motion.max(axis=0).tolist(),
            "motion_sum": motion.sum(axis=0).tolist(),
            "motion_sumsq": (motion ** 2).sum(axis=0).tolist(),
            "motion_at_limit": ((motion <= ms.LOW + 1e-6)
                                | (motion >= ms.HIGH - 1e-6)).sum(axis=0).tolist(),
        },
        "timing": {"seconds": result.seconds * seconds / max(_seconds(result), 1e-9),
                   "cpu_seconds": result.cpu_seconds * seconds / max(_seconds(result), 1e-9)},
    }
    return {"meta": meta, "arrays": arrays}


def _seconds(result: VideoResult) -> float:
    return sum(len(e.audio) for e in result.examples) / RATE


def _pending_name(result_name: str, part: int) -> str:
    return f".pending-{hashlib.sha256(result_name.encode()).hexdigest()[:16]}-{part:03d}"


def write_pending(folder: Path, result: VideoResult, config: PrepareConfig,
                  feature_config: dict) -> list[str]:
    """Write the video's shards under temporary names; returns those names."""
    parts = _parts(result.examples, config.shard_seconds)
    names = []
    for k, examples in enumerate(parts):
        name = _pending_name(result.name, k)
        synth.write_shard(folder, name, shard_content(result, examples, k, len(parts),
                                                      config, feature_config))
        names.append(name)
    return names


SHARD_NAME = re.compile(r"^(train|val)-(\d{5})$")


def _next_index(folder: Path, split: str) -> int:
    used = [int(m.group(2)) for p in folder.glob(f"{split}-*.*")
            if (m := SHARD_NAME.match(p.stem))]
    return max(used, default=-1) + 1


def commit(folder: Path, manifest: dict, outcome: dict) -> None:
    """Give a finished video's pending shards their numbers, then record the video."""
    shards = []
    for pending in outcome.get("pending", []):
        index = _next_index(folder, outcome["split"])
        name = synth.shard_name(outcome["split"], index)
        meta = json.loads((folder / f"{pending}.json").read_text())
        meta["index"] = index
        for k, example in enumerate(meta["examples"]):
            example["id"] = f"{name}-{k:04d}"
        os.replace(folder / f"{pending}.npz", folder / f"{name}.npz")
        tmp = folder / f".{name}.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder / f"{name}.json")
        (folder / f"{pending}.json").unlink()
        shards.append(name)
    entry = {k: outcome[k] for k in ("size", "split", "status", "reason", "examples",
                                     "seconds", "skipped", "notes", "info")}
    manifest[outcome["name"]] = {**entry, "shards": shards}
    _write_manifest(folder, manifest)


def _write_manifest(folder: Path, manifest: dict) -> None:
    tmp = folder / ".videos.json.tmp"
    tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=1))
    os.replace(tmp, folder / "videos.json")


def load_manifest(folder: Path) -> dict:
    path = folder / "videos.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def tidy_folder(folder: Path, manifest: dict) -> None:
    """Remove what an interrupted run left: pending shards, and numbered shards that no
    recorded video owns (their video is made again)."""
    owned = {s for entry in manifest.values() for s in entry.get("shards", [])}
    for p in folder.glob(".pending-*"):
        p.unlink()
    for p in list(folder.glob("*-*.json")) + list(folder.glob("*-*.npz")):
        if SHARD_NAME.match(p.stem) and p.stem not in owned:
            p.unlink()


def forget(folder: Path, manifest: dict, name: str) -> None:
    """Drop a video's record and shards (it is made again: changed, or a shard went missing)."""
    for shard in manifest.pop(name, {}).get("shards", []):
        for suffix in (".json", ".npz"):
            (folder / f"{shard}{suffix}").unlink(missing_ok=True)
    _write_manifest(folder, manifest)


def is_done(folder: Path, manifest: dict, name: str, size: int) -> bool:
    entry = manifest.get(name)
    if entry is None or entry.get("size") != size or entry.get("status") not in ("done",
                                                                                "skipped"):
        return False
    return all((folder / f"{s}.json").is_file() and (folder / f"{s}.npz").is_file()
               for s in entry["shards"])


def find_videos(folder: Path) -> list[tuple[str, Path]]:
    """(path relative to `folder`, path) of every video file below it, sorted."""
    found = [(p.relative_to(folder).as_posix(), p) for p in folder.rglob("*")
             if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found)


def read_landmarks(path: str | Path) -> list[dict]:
    """A video shard's face tracks: per example {"id", "landmarks" [T, 68, 2], "status" [T],
    "neutral" [68, 2]} (source-video pixels)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if not meta["examples"]:
        return []
    with np.load(path.with_suffix(".npz")) as z:
        landmarks, status, fo = z["landmarks"], z["landmark_status"], z["frame_offsets"]
        neutral = z["neutral_landmarks"]
    return [{"id": m["id"], "landmarks": landmarks[fo[i]:fo[i + 1]],
             "status": status[fo[i]:fo[i + 1]], "neutral": neutral[i]}
            for i, m in enumerate(meta["examples"])]


# --- statistics and the report --------------------------------------------------------------

def format_stats(stats: dict) -> str:
    lines = []
    for split, s in stats["splits"].items():
        speed = s["hours"] * 3600 / max(s["generation_cpu_seconds"], 1e-9)
        lines.append(
            f"{split}: {s['hours']:.3f} h in {s['examples']} examples ({s['shards']} shards) "
            f"from {s['voices']} videos, silence ~{100 * s['silence_fraction']:.0f} %, "
            f"{s['skipped']} pieces left out, {speed:.2f} s of examples per CPU second")
        for reason, n in sorted(s["skip_reasons"].items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"    left out {n}x: {reason}")
        lines.append(f"  {'parameter':18s} {'min':>8s} {'max':>8s} {'mean':>8s} {'std':>8s} "
                     f"{'at limit':>8s}")
        for name, p in s["parameters"].items():
            lines.append(f"  {name:18s} {p['min']:8.3f} {p['max']:8.3f} {p['mean']:8.3f} "
                         f"{p['std']:8.3f} {100 * p['at_limit']:7.2f}%")
    return "\n".join(lines) if lines else "no examples"


def build_report(manifest: dict, failures: list[dict]) -> dict:
    done = {k: v for k, v in manifest.items() if v["status"] == "done"}
    skipped = {k: v for k, v in manifest.items() if v["status"] == "skipped"}
    return {
        "videos": len(manifest) + len(failures),
        "prepared": len(done),
        "skipped": [{"video": k, "reason": v["reason"]} for k, v in sorted(skipped.items())],
        "failed": failures,
        "examples": sum(v["examples"] for v in done.values()),
        "seconds": sum(v["seconds"] for v in done.values()),
        "notes": [{"video": k, "note": n} for k, v in sorted(manifest.items())
                  for n in v.get("notes", [])],
    }


def format_report(report: dict) -> str:
    lines = [f"{report['videos']} videos: {report['prepared']} prepared "
             f"({report['examples']} examples, {report['seconds'] / 60:.1f} min), "
             f"{len(report['skipped'])} skipped, {len(report['failed'])} failed"]
    lines += [f"  skipped {s['video']}: {s['reason']}" for s in report["skipped"]]
    lines += [f"  FAILED {f['video']}: {f['error']}" for f in report["failed"]]
    lines += [f"  note {n['video']}: {n['note']}" for n in report["notes"]]
    return "\n".join(lines)


# --- running --------------------------------------------------------------------------------

_extractor = None
_progress_queue = None


def _get_extractor():
    """The feature extractor, made on first use (a run of skipped videos never loads it)."""
    global _extractor
    if _extractor is None:
        _extractor = synth._new_extractor()
    return _extractor


class _LazyExtractor:
    @property
    def config(self):
        return _get_extractor().config

    def features(self, audio):
        return _get_extractor().features(audio)


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def process(args: tuple) -> dict:
    """Prepare one video and write its pending shards. Returns an outcome dict for commit;
    status 'failed' (with the error) when something unexpected went wrong."""
    folder, name, path, config, feature_config, progress = args
    folder, path = Path(folder), Path(path)
    if progress is None and _progress_queue is not None:
        progress = _progress_queue.put                 # a worker: to the parent's bar
    outcome = {"name": name, "size": path.stat().st_size if path.is_file() else 0,
               "split": split_of(name, config.val_fraction)}
    reported = 0.0

    def advance(seconds: float) -> None:
        nonlocal reported
        reported += seconds
        if progress is not None:
            progress(seconds)

    try:
        result = prepare_video(path, name, config, _LazyExtractor(), advance)
        advance(max(0.0, result.info.get("duration", 0.0) - reported))   # the rest, or all
        pending = write_pending(folder, result, config, feature_config) if result.examples else []
        outcome.update(
            status="done" if result.examples else "skipped", reason=result.reason,
            pending=pending, examples=len(result.examples), seconds=_seconds(result),
            skipped=result.skipped, notes=result.notes, info=result.info)
    except Exception as e:  # noqa: BLE001 - one video must not end the run
        outcome.update(status="failed", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc())
    return outcome


def _check_folder(folder: Path, config: PrepareConfig, feature_config: dict) -> None:
    """dataset.json records the settings; resuming with other settings is refused."""
    info = {"format": synth.FORMAT_VERSION, "kind": "video", "video_format": FORMAT_VERSION,
            "config": config.to_dict(), "features": feature_config,
            "names": list(ms.NAMES), "style_names": list(visemes.STYLE_NAMES)}
    path = folder / "dataset.json"
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(json.dumps(info)):
            raise SystemExit(f"{folder} holds data made with other settings ({path}); "
                             "use another --out or the same settings")
    else:
        path.write_text(json.dumps(info, indent=1))


def _duration(path: Path) -> float:
    try:
        return probe(path).duration
    except VideoInputError:
        return 0.0


def run(videos: str | Path, out: str | Path, workers: int = 1,
        config: PrepareConfig = PrepareConfig(), show_progress: bool = True) -> dict:
    from tqdm import tqdm

    from models.audio import FeatureConfig

    source, folder = Path(videos), Path(out)
    if not source.is_dir():
        raise SystemExit(f"{source} is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    feature_config = FeatureConfig().to_dict()
    _check_folder(folder, config, feature_config)
    manifest = load_manifest(folder)
    tidy_folder(folder, manifest)
    found = find_videos(source)
    pending = [(name, path) for name, path in found
               if not is_done(folder, manifest, name, path.stat().st_size)]
    for name, _ in pending:
        if name in manifest:
            forget(folder, manifest, name)
    planned = sum(_duration(path) for _, path in pending)
    print(f"{len(found)} videos in {source}, {len(found) - len(pending)} already done, "
          f"{len(pending)} to prepare (~{planned / 60:.1f} min of video) "
          f"with {workers} worker(s)", flush=True)
    started = time.perf_counter()
    bar = tqdm(total=round(planned), unit="s video", disable=not show_progress, smoothing=0.05)
    failures: list[dict] = []

    def advance(seconds: float) -> None:
        bar.update(round(seconds, 1))

    def finish(outcome: dict) -> None:
        if outcome["status"] == "failed":
            failures.append({"video": outcome["name"], "error": outcome["error"],
                             "traceback": outcome["traceback"]})
        else:
            commit(folder, manifest, outcome)
        bar.set_postfix_str(outcome["name"][-30:])

    jobs = [(str(folder), name, str(path), config, feature_config) for name, path in pending]
    if workers <= 1:
        for job in jobs:
            finish(process(job + (advance,)))
    elif jobs:
        ctx = mp.get_context("spawn")
        progress_queue = ctx.Queue()
        with ctx.Pool(workers, initializer=_init_worker, initargs=(progress_queue,)) as pool:
            results = pool.imap(process, [job + (None,) for job in jobs], chunksize=1)
            for _ in jobs:                      # in list order: shard numbers do not depend
                while True:                     # on which worker finished first
                    try:
                        outcome = results.next(timeout=0.2)
                        break
                    except mp.TimeoutError:
                        pass
                    finally:
                        while not progress_queue.empty():
                            advance(progress_queue.get_nowait())
                finish(outcome)
    bar.total = max(bar.n, 1)
    bar.close()
    wall = time.perf_counter() - started

    stats = synth.dataset_stats(folder)
    stats["run"] = {"wall_seconds": wall, "workers": workers, "videos_prepared": len(pending),
                    "video_seconds": planned, "cpu": synth._cpu_name(), "cores": os.cpu_count()}
    (folder / "stats.json").write_text(json.dumps(stats, indent=1))
    text = format_stats(stats)
    if pending:
        text += (f"\nthis run: {len(pending)} videos, ~{planned / 60:.1f} min of video in "
                 f"{wall:.0f} s wall with {workers} worker(s) on {synth._cpu_name()}")
    (folder / "stats.txt").write_text(text + "\n")

    report = build_report(manifest, failures)
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    report_text = format_report(report)
    (folder / "report.txt").write_text(report_text + "\n")
    print(text, flush=True)
    print(report_text, flush=True)
    for f in failures:
        print(f"FAILED {f['video']}: {f['traceback']}", file=sys.stderr)
    stats["report"] = report
    stats["failures"] = failures
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.prepare_videos",
        description="Talking-head videos -> (audio features, motion) training shards.")
    parser.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--out", required=True, help="shard folder (resumed if it exists)")
    parser.add_argument("--workers", type=int, default=1, help="processes (one core each)")
    parser.add_argument("--val-fraction", type=float, default=PrepareConfig.val_fraction,
                        help="share of videos in the validation split (by path hash)")
    parser.add_argument("--min-seconds", type=float, default=PrepareConfig.min_example_seconds,
                        help="shortest example kept")
    parser.add_argument("--max-gap", type=float, default=PrepareConfig.max_gap_seconds,
                        help="longest stretch without a face that is bridged (seconds)")
    parser.add_argument("--detector", choices=("hog", "cnn"), default="hog")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.workers < 1 or not 0.0 <= args.val_fraction <= 1.0 or args.min_seconds <= 0:
        parser.error("--workers >= 1, 0 <= --val-fraction <= 1, --min-seconds > 0")
    config = PrepareConfig(val_fraction=args.val_fraction, min_example_seconds=args.min_seconds,
                           max_gap_seconds=args.max_gap,
                           track=TrackConfig(detector=args.detector))
    stats = run(args.videos, args.out, args.workers, config, show_progress=not args.no_progress)
    return 1 if stats["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
