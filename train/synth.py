"""Synthetic talking data: TTS speech + a generated performance, written as shards.

    python -m train.synth --hours 2 --out data/synth --workers 2 [--piper-share 0.3]

Each example is one continuous recording of 6-20 s: one speaker (a TTS voice with a
speaking rate, pitch and warp, plus a performance Style) says a few sentences separated by
pauses of varied length, with silence before and after, at a random level over a faint noise
floor. For it the shard stores the 16 kHz audio, the audio features computed by
`models.audio.AudioFeatureExtractor` (exactly its streaming windowing), the motion [T, D]
from `train.visemes`, the style, voice, text and the phonemes with their times.

Splits: validation examples use held-out voices (VAL_VOICES: festival's ked, and the espeak
variants in VAL_ESPEAK_VARIANTS, in every accent) and held-out sentences (corpus.split_of);
training examples never use either. The neural voice (train.piper, `--piper-share`) speaks
only training examples: the validation split stays the same whatever its share.

Shards: `{split}-{index:05d}.npz` (arrays, examples concatenated, with offsets) and
`{split}-{index:05d}.json` (per-example metadata, skips with reasons, statistics), written
atomically (the .json last). A shard's content depends only on (seed, split, index) and the
settings in dataset.json, never on the number of workers, so a run is resumable (complete
shards are skipped) and reproducible. At the end the dataset statistics are printed and
written to stats.json / stats.txt in the folder.

`read_shard(path)` and `load_examples(folder, split)` give the examples back as dicts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from models import motion_space
from train import corpus, tts, visemes
from train.tts import SILENCE, Delivery, Phone, SpeechError, Voice
from train.visemes import Sentence, Speech, Style

RATE = tts.RATE
FORMAT_VERSION = 3     # 3: head pose relative to the speaker's rest (train.visemes)

VAL_ESPEAK_VARIANTS = ("m5", "f4", "Andrea", "grandpa", "quincy", "steph2")
VAL_FESTIVAL_VOICES = ("ked_diphone",)


def voice_split(voice: Voice) -> str:
    """'val' for a held-out voice, else 'train'."""
    if voice.engine == "piper":
        return "train"
    if voice.engine == "festival":
        return "val" if voice.name in VAL_FESTIVAL_VOICES else "train"
    variant = voice.name.partition("+")[2]
    return "val" if variant in VAL_ESPEAK_VARIANTS else "train"


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    shard_seconds: float = 600.0        # audio per shard (the last example may overshoot)
    min_example_seconds: float = 6.0
    max_example_seconds: float = 20.0
    festival_share: float = 0.35        # fraction of speakers with a festival voice
    piper_share: float = 0.0            # fraction of training speakers with the neural voice
    val_share: float = 0.1              # fraction of the hours in the validation split
    corpus_size: int = 6000

    def to_dict(self) -> dict:
        settings = asdict(self)
        if not settings["piper_share"]:        # as datasets made before the voice recorded it
            del settings["piper_share"]
        return settings


@dataclass
class Speaker:
    voice: Voice
    delivery: Delivery
    style: Style


@dataclass
class ExamplePlan:
    """Everything random about an example, drawn before any audio is made."""

    id: str
    speaker: Speaker
    sentences: list[str]
    lead: float                 # seconds of silence before the first sentence
    pauses: list[float]         # after each sentence but the last
    trail: float                # after the last sentence
    level_db: float             # speech RMS level, dBFS
    noise_db: float | None      # noise floor RMS, dBFS (None: digital silence)
    seed: int                   # for the noise and the performance

    @property
    def estimated_seconds(self) -> float:
        d = self.speaker.delivery
        per_second = CHARACTERS_PER_SECOND[self.speaker.voice.engine] * d.rate * d.warp
        speech = sum(len(s) for s in self.sentences) / per_second
        return self.lead + sum(self.pauses) + self.trail + speech


# characters of text spoken per second at rate 1 (measured on this corpus; festival's
# count includes the pauses it puts around a sentence)
CHARACTERS_PER_SECOND = {"espeak": 19.2, "festival": 15.0, "piper": 18.6}


# --- planning -------------------------------------------------------------------------------

_SPLIT_CODE = {"train": 1, "val": 2}


def shard_rng(config: SynthConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, _SPLIT_CODE[split], index])


def voices_for(split: str) -> dict[str, list[Voice]]:
    voices = tts.all_voices()
    out = {"espeak": [], "festival": [], "piper": []}
    for v in voices:
        if voice_split(v) == split:
            out[v.engine].append(v)
    return out


def sample_speaker(rng: np.random.Generator, split: str, config: SynthConfig,
                   voices: dict[str, list[Voice]]) -> Speaker:
    # the neural voice's draw only where it can be chosen: without it, every other draw (and
    # so the whole dataset) is what it was before the voice existed
    if config.piper_share > 0 and voices["piper"] and rng.random() < config.piper_share:
        engine = "piper"
    else:
        use_festival = voices["festival"] and (rng.random() < config.festival_share
                                               or not voices["espeak"])
        engine = "festival" if use_festival else "espeak"
    if not voices[engine]:
        raise RuntimeError(f"no {split} voices installed (espeak-ng / festival missing?)")
    voice = voices[engine][int(rng.integers(len(voices[engine])))]
    warp_spread = 0.07 if engine == "festival" else 0.05
    delivery = Delivery(
        rate=float(rng.uniform(0.8, 1.25)),
        pitch=float(np.clip(rng.normal(0.0, 1.5), -3.0, 3.0)),
        pitch_range=float(rng.uniform(0.7, 1.4)),
        warp=float(rng.uniform(1 - warp_spread, 1 + warp_spread)) if rng.random() < 0.6 else 1.0,
    )
    return Speaker(voice, delivery, visemes.sample_style(rng))


def _pause(rng: np.random.Generator) -> float:
    kind = rng.random()
    if kind < 0.6:
        return float(rng.uniform(0.2, 0.7))
    if kind < 0.9:
        return float(rng.uniform(0.7, 1.5))
    return float(rng.uniform(1.5, 3.5))


def plan_shard(config: SynthConfig, split: str, index: int,
               seconds: float | None = None) -> list[ExamplePlan]:
    """The examples of one shard, about `seconds` of audio (default: a full shard). Depends
    only on (config, split, index); a shorter shard is a prefix of the full one."""
    seconds = config.shard_seconds if seconds is None else seconds
    rng = shard_rng(config, split, index)
    pool = corpus.sentences_for(split, config.corpus_size)
    voices = voices_for(split)
    plans: list[ExamplePlan] = []
    total = 0.0
    while total < seconds:
        target = rng.uniform(config.min_example_seconds, config.max_example_seconds)
        speaker = sample_speaker(rng, split, config, voices)
        plan = ExamplePlan(
            id=f"{split}-{index:05d}-{len(plans):04d}", speaker=speaker, sentences=[],
            lead=float(rng.uniform(0.2, 1.5)), pauses=[], trail=float(rng.uniform(0.3, 1.5)),
            level_db=float(rng.uniform(-30.0, -16.0)),
            noise_db=float(rng.uniform(-80.0, -50.0)) if rng.random() < 0.8 else None,
            seed=int(rng.integers(2**31)))
        while len(plan.sentences) < len(pool):
            sentence = pool[int(rng.integers(len(pool)))]
            if sentence in plan.sentences:
                continue
            pause = _pause(rng)
            if plan.sentences:
                plan.pauses.append(pause)
            plan.sentences.append(sentence)
            if len(plan.sentences) > 1 and plan.estimated_seconds > config.max_example_seconds:
                plan.sentences.pop()
                plan.pauses.pop()
                break
            if plan.estimated_seconds >= target or len(plan.sentences) >= 8:
                break
        plans.append(plan)
        total += plan.estimated_seconds
    return plans


# --- one example ----------------------------------------------------------------------------

@dataclass
class Example:
    id: str
    audio: np.ndarray           # [n] float32, 16 kHz
    motion: np.ndarray          # [T, D] float32
    phones: list[Phone]
    speaker: Speaker
    text: str
    sentences: list[dict]       # {"text", "start", "end", "kind"}
    skipped: list[dict] = field(default_factory=list)
    features: np.ndarray | None = None   # [T, C, 384] float16

    @property
    def frames(self) -> int:
        return len(self.motion)


def assemble(plan: ExamplePlan, utterances: list[tts.Utterance | SpeechError]) -> Example | None:
    """Place the spoken sentences on one timeline with silences; make the performance.

    Sentences that could not be spoken are dropped (their reasons go to `skipped`);
    None when none could.
    """
    rng = np.random.default_rng(plan.seed)
    skipped = [{"id": plan.id, "text": s, "voice": plan.speaker.voice.id, "reason": u.reason}
               for s, u in zip(plan.sentences, utterances, strict=True)
               if isinstance(u, SpeechError)]
    spoken = [(i, u) for i, u in enumerate(utterances) if not isinstance(u, SpeechError)]
    if not spoken:
        return None
    pieces: list[np.ndarray] = [np.zeros(int(round(plan.lead * RATE)), np.float32)]
    phones: list[Phone] = [Phone(SILENCE, 0.0, len(pieces[0]) / RATE)]
    sentences = []
    offset = len(pieces[0])
    for n, (i, utt) in enumerate(spoken):
        t0 = offset / RATE
        gain = _gain_to_level(utt, plan.level_db)
        pieces.append(utt.audio * gain)
        phones += [Phone(p.symbol, p.start + t0, p.end + t0, p.stress) for p in utt.phones]
        speech = [p for p in utt.phones if p.symbol != SILENCE]
        sentences.append({"text": plan.sentences[i], "start": speech[0].start + t0,
                          "end": speech[-1].end + t0, "kind": Sentence.kind_of(plan.sentences[i])})
        offset += len(utt.audio)
        gap = plan.trail if n == len(spoken) - 1 else plan.pauses[min(i, len(plan.pauses) - 1)]
        silence = np.zeros(int(round(gap * RATE)), np.float32)
        pieces.append(silence)
        phones.append(Phone(SILENCE, offset / RATE, (offset + len(silence)) / RATE))
        offset += len(silence)
    audio = np.concatenate(pieces)
    if plan.noise_db is not None:
        audio = audio + _noise(rng, len(audio), plan.noise_db)
    audio = _to_int16(audio).astype(np.float32) / 32768.0   # exactly what the shard stores
    phones = _tidy(phones, len(audio) / RATE)

    f0, energy = tts.prosody(audio)
    speech = Speech(phones, f0, energy, len(audio),
                    [Sentence(s["start"], s["end"], s["kind"]) for s in sentences])
    motion = visemes.perform(speech, plan.speaker.style, rng)
    return Example(id=plan.id, audio=audio, motion=motion, phones=phones, speaker=plan.speaker,
                   text=" ".join(s["text"] for s in sentences), sentences=sentences,
                   skipped=skipped)


def _gain_to_level(utt: tts.Utterance, level_db: float) -> float:
    speech = [p for p in utt.phones if p.symbol != SILENCE]
    parts = [utt.audio[int(p.start * RATE): int(p.end * RATE)] for p in speech]
    x = np.concatenate(parts) if parts else utt.audio
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) + 1e-9
    gain = 10 ** (level_db / 20) / rms
    peak = float(np.max(np.abs(utt.audio))) * gain
    return gain * min(1.0, 0.95 / peak) if peak > 0 else gain


def _noise(rng: np.random.Generator, n: int, level_db: float) -> np.ndarray:
    """Noise with a spectrum between white and pink (1/f^slope power), at level_db RMS."""
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, n))
    freqs = np.fft.rfftfreq(n, 1.0 / RATE)
    slope = rng.uniform(0.0, 1.0)
    spectrum *= np.maximum(freqs, 20.0) ** (-slope / 2)
    coloured = np.fft.irfft(spectrum, n)
    coloured *= 10 ** (level_db / 20) / (coloured.std() + 1e-12)
    return coloured.astype(np.float32)


def _tidy(phones: list[Phone], duration: float) -> list[Phone]:
    """Contiguous phones from 0 to `duration`: empty ones dropped, silences merged."""
    out: list[Phone] = []
    for p in phones:
        if p.end - p.start <= 1e-6:
            continue
        if out and p.symbol == SILENCE and out[-1].symbol == SILENCE:
            out[-1].end = p.end
            continue
        out.append(Phone(p.symbol, p.start, p.end, p.stress))
    out[-1].end = duration
    return out


# --- a shard --------------------------------------------------------------------------------

def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


@dataclass(frozen=True)
class ShardJob:
    split: str
    index: int
    seconds: float       # audio to plan; less than a full shard only for a split's last one

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def shard_jobs(hours: float, config: SynthConfig) -> list[ShardJob]:
    """The shards that make `hours` of audio: full shards, the last of each split shorter."""
    total = hours * 3600.0
    jobs = []
    for split, seconds in (("train", total * (1 - config.val_share)),
                           ("val", total * config.val_share)):
        index = 0
        while seconds > 1e-6:
            jobs.append(ShardJob(split, index, min(config.shard_seconds, seconds)))
            seconds -= config.shard_seconds
            index += 1
    return jobs


def is_complete(folder: Path, job: ShardJob) -> bool:
    """The shard is on disk, planned for at least job.seconds (a longer one contains it)."""
    meta, npz = folder / f"{job.name}.json", folder / f"{job.name}.npz"
    if not (meta.is_file() and npz.is_file()):
        return False
    try:
        meta = json.loads(meta.read_text())
        target = meta.get("target_seconds", meta["config"]["shard_seconds"])  # older: full
        return target >= job.seconds - 1e-6
    except (ValueError, KeyError):
        return False


def make_shard(config: SynthConfig, split: str, index: int, extractor,
               progress=None, seconds: float | None = None) -> dict:
    """Synthesise one shard's examples (features included). Returns the shard's metadata
    and arrays: {"meta": dict, "arrays": dict}."""
    seconds = config.shard_seconds if seconds is None else seconds
    plans = plan_shard(config, split, index, seconds)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    tts_seconds = 0.0
    examples: list[Example] = []
    skipped: list[dict] = []
    for group in _groups(plans, sentences=30):
        requests = [(s, p.speaker.voice, p.speaker.delivery) for p in group for s in p.sentences]
        t0 = time.perf_counter()
        results = tts.speak_many(requests)      # festival sentences share one process
        tts_seconds += time.perf_counter() - t0
        k = 0
        for plan in group:
            utterances = results[k: k + len(plan.sentences)]
            k += len(plan.sentences)
            try:
                example = assemble(plan, utterances)
                if example is None:
                    skipped += [{"id": plan.id, "text": s, "voice": plan.speaker.voice.id,
                                 "reason": u.reason}
                                for s, u in zip(plan.sentences, utterances, strict=True)]
                    skipped.append({"id": plan.id, "reason": "no sentence could be spoken"})
                    continue
                example.features = extractor.features(example.audio).astype(np.float16)
                if len(example.features) != example.frames:
                    raise RuntimeError(f"features have {len(example.features)} frames, "
                                       f"motion {example.frames}")
            except Exception as e:  # noqa: BLE001 - one bad example must not end the run
                skipped.append({"id": plan.id, "reason": f"{type(e).__name__}: {e}",
                                "traceback": traceback.format_exc(limit=3)})
                continue
            skipped += example.skipped
            examples.append(example)
            if progress is not None:
                progress(len(example.audio) / RATE)
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_started
    meta = {
        "format": FORMAT_VERSION, "split": split, "index": index, "target_seconds": seconds,
        "config": config.to_dict(), "features": extractor.config.to_dict(),
        "names": list(motion_space.NAMES), "style_names": list(visemes.STYLE_NAMES),
        "examples": [_example_meta(e) for e in examples],
        "skipped": skipped,
        "stats": _shard_stats(examples),
        "timing": {"seconds": elapsed, "cpu_seconds": cpu, "tts_seconds": tts_seconds},
    }
    return {"meta": meta, "arrays": _shard_arrays(examples)}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (festival)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _groups(plans: list[ExamplePlan], sentences: int) -> list[list[ExamplePlan]]:
    """Consecutive plans in groups of at least `sentences` sentences."""
    groups: list[list[ExamplePlan]] = [[]]
    for p in plans:
        if sum(len(q.sentences) for q in groups[-1]) >= sentences:
            groups.append([])
        groups[-1].append(p)
    return [g for g in groups if g]


def _example_meta(e: Example) -> dict:
    return {"id": e.id, "voice": e.speaker.voice.id, "text": e.text,
            "sentences": e.sentences, "delivery": asdict(e.speaker.delivery),
            "style": e.speaker.style.to_dict(), "seconds": len(e.audio) / RATE,
            "frames": e.frames, "phonemes": len(e.phones)}


def _shard_arrays(examples: list[Example]) -> dict[str, np.ndarray]:
    def offsets(lengths):
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    if not examples:
        return {}
    phones = [p for e in examples for p in e.phones]
    return {
        "audio": np.concatenate([_to_int16(e.audio) for e in examples]),
        "audio_offsets": offsets([len(e.audio) for e in examples]),
        "features": np.concatenate([e.features for e in examples]),
        "motion": np.concatenate([e.motion for e in examples]).astype(np.float32),
        "frame_offsets": offsets([e.frames for e in examples]),
        "names": np.array(motion_space.NAMES),
        "style": np.stack([e.speaker.style.vector() for e in examples]),
        "style_names": np.array(visemes.STYLE_NAMES),
        "voice": np.array([e.speaker.voice.id for e in examples]),
        "text": np.array([e.text for e in examples]),
        "phonemes": np.array([p.symbol for p in phones]),
        "phoneme_times": np.array([(p.start, p.end) for p in phones], np.float32).reshape(-1, 2),
        "phoneme_stress": np.array([p.stress for p in phones], np.int8),
        "phoneme_offsets": offsets([len(e.phones) for e in examples]),
    }


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def _shard_stats(examples: list[Example]) -> dict:
    if not examples:
        return {"examples": 0, "seconds": 0.0, "frames": 0, "voices": [], "sentences": []}
    motion = np.concatenate([e.motion for e in examples]).astype(np.float64)
    silent = sum(p.end - p.start for e in examples for p in e.phones if p.symbol == SILENCE)
    return {
        "examples": len(examples),
        "seconds": float(sum(len(e.audio) for e in examples) / RATE),
        "silence_seconds": float(silent),
        "frames": int(len(motion)),
        "voices": sorted({e.speaker.voice.id for e in examples}),
        "sentences": sorted({s["text"] for e in examples for s in e.sentences}),
        "motion_min": motion.min(axis=0).tolist(),
        "motion_max": motion.max(axis=0).tolist(),
        "motion_sum": motion.sum(axis=0).tolist(),
        "motion_sumsq": (motion ** 2).sum(axis=0).tolist(),
        "motion_at_limit": ((motion <= motion_space.LOW + 1e-6)
                            | (motion >= motion_space.HIGH - 1e-6)).sum(axis=0).tolist(),
    }


def write_shard(folder: Path, name: str, shard: dict) -> None:
    """Atomic: the .npz then the .json, each written to a temporary name and renamed."""
    npz_tmp = folder / f".{name}.npz.tmp"
    with open(npz_tmp, "wb") as f:
        np.savez(f, **shard["arrays"])
    os.replace(npz_tmp, folder / f"{name}.npz")
    json_tmp = folder / f".{name}.json.tmp"
    json_tmp.write_text(json.dumps(shard["meta"], indent=1))
    os.replace(json_tmp, folder / f"{name}.json")


def copy_stats(source: Path, out: Path) -> None:
    """A derived shard folder (same examples, other audio or features) keeps its source's
    statistics files."""
    for name in ("stats.json", "stats.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)


# --- reading --------------------------------------------------------------------------------

def read_shard(path: str | Path) -> list[dict]:
    """A shard's examples as dicts: audio (float32 16 kHz), features [T, C, 384] float16,
    motion [T, D], names, style (dict), style_vector, voice, text, sentences, delivery,
    phonemes [(symbol, start, end, stress)], id."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    if not meta["examples"]:
        return []
    with np.load(path.with_suffix(".npz")) as z:
        a = {k: z[k] for k in z.files}
    out = []
    ao, fo, po = a["audio_offsets"], a["frame_offsets"], a["phoneme_offsets"]
    for i, m in enumerate(meta["examples"]):
        phones = [(str(s), float(t[0]), float(t[1]), int(st)) for s, t, st in zip(
            a["phonemes"][po[i]:po[i + 1]], a["phoneme_times"][po[i]:po[i + 1]],
            a["phoneme_stress"][po[i]:po[i + 1]], strict=True)]
        out.append({
            "id": m["id"],
            "audio": a["audio"][ao[i]:ao[i + 1]].astype(np.float32) / 32768.0,
            "features": a["features"][fo[i]:fo[i + 1]],
            "motion": a["motion"][fo[i]:fo[i + 1]],
            "names": [str(n) for n in a["names"]],
            "style": m["style"],
            "style_vector": a["style"][i],
            "voice": m["voice"], "text": m["text"], "sentences": m["sentences"],
            "delivery": m["delivery"], "phonemes": phones,
        })
    return out


def load_examples(folder: str | Path, split: str = "train") -> list[dict]:
    """All examples of a split in a synth folder (complete shards only)."""
    folder = Path(folder)
    out = []
    for meta in sorted(folder.glob(f"{split}-*.json")):
        if meta.with_suffix(".npz").is_file():
            out += read_shard(meta.with_suffix(".npz"))
    return out


# --- dataset statistics ---------------------------------------------------------------------

def dataset_stats(folder: Path) -> dict:
    stats: dict = {"splits": {}}
    for split in ("train", "val"):
        metas = [json.loads(p.read_text()) for p in sorted(folder.glob(f"{split}-*.json"))]
        metas = [m for m in metas if m["stats"]["examples"]]
        if not metas:
            continue
        s = [m["stats"] for m in metas]
        frames = sum(x["frames"] for x in s)
        total = np.sum([x["motion_sum"] for x in s], axis=0)
        sumsq = np.sum([x["motion_sumsq"] for x in s], axis=0)
        mean = total / frames
        std = np.sqrt(np.maximum(sumsq / frames - mean ** 2, 0))
        at_limit = np.sum([x["motion_at_limit"] for x in s], axis=0)
        low = np.min([x["motion_min"] for x in s], axis=0)
        high = np.max([x["motion_max"] for x in s], axis=0)
        skipped = [k for m in metas for k in m["skipped"]]
        reasons: dict[str, int] = {}
        for k in skipped:
            reasons[k["reason"]] = reasons.get(k["reason"], 0) + 1
        seconds = sum(x["seconds"] for x in s)
        voices = sorted({v for x in s for v in x["voices"]})
        stats["splits"][split] = {
            "shards": len(metas),
            "examples": sum(x["examples"] for x in s),
            "hours": seconds / 3600,
            "silence_fraction": sum(x["silence_seconds"] for x in s) / max(seconds, 1e-9),
            "voices": len(voices),
            "espeak_voices": sum(v.startswith("espeak/") for v in voices),
            "festival_voices": [v for v in voices if v.startswith("festival/")],
            "sentences": len({t for x in s for t in x["sentences"]}),
            "skipped": len(skipped),
            "skip_reasons": reasons,
            "generation_seconds": sum(m["timing"]["seconds"] for m in metas),
            "generation_cpu_seconds": sum(m["timing"].get("cpu_seconds", m["timing"]["seconds"])
                                          for m in metas),
            "parameters": {
                name: {"min": float(low[i]), "max": float(high[i]), "mean": float(mean[i]),
                       "std": float(std[i]), "at_limit": float(at_limit[i] / frames)}
                for i, name in enumerate(metas[0]["names"])},
        }
    return stats


def format_stats(stats: dict) -> str:
    lines = []
    for split, s in stats["splits"].items():
        speed = s["hours"] * 3600 / max(s["generation_cpu_seconds"], 1e-9)
        lines.append(
            f"{split}: {s['hours']:.3f} h in {s['examples']} examples ({s['shards']} shards), "
            f"{s['voices']} voices ({s['espeak_voices']} espeak, festival: "
            f"{', '.join(v.split('/')[1] for v in s['festival_voices']) or 'none'}), "
            f"{s['sentences']} distinct sentences, silence {100 * s['silence_fraction']:.0f} %, "
            f"{s['skipped']} skipped, {speed:.2f} s of audio per CPU second (one worker)")
        for reason, n in sorted(s["skip_reasons"].items(), key=lambda kv: -kv[1])[:5]:
            lines.append(f"    skipped {n}x: {reason}")
        lines.append(f"  {'parameter':18s} {'min':>8s} {'max':>8s} {'mean':>8s} {'std':>8s} "
                     f"{'at limit':>8s}")
        for name, p in s["parameters"].items():
            lines.append(f"  {name:18s} {p['min']:8.3f} {p['max']:8.3f} {p['mean']:8.3f} "
                         f"{p['std']:8.3f} {100 * p['at_limit']:7.2f}%")
    return "\n".join(lines)


# --- running --------------------------------------------------------------------------------

_worker_extractor = None
_worker_queue = None


def _new_extractor(features: dict | None = None):
    import torch

    from models.audio import AudioFeatureExtractor, FeatureConfig

    torch.set_num_threads(1)         # the same arithmetic whatever the worker count
    return AudioFeatureExtractor(FeatureConfig.of(features or {}))


def _init_worker(progress_queue, features: dict) -> None:
    global _worker_extractor, _worker_queue
    _worker_queue = progress_queue
    _worker_extractor = _new_extractor(features)


def _make_and_write(config: SynthConfig, folder: Path, job: ShardJob, extractor,
                    progress) -> None:
    shard = make_shard(config, job.split, job.index, extractor, progress, job.seconds)
    write_shard(folder, job.name, shard)


def _worker_job(args) -> tuple[ShardJob, str | None]:
    config, folder, job = args
    try:
        _make_and_write(config, Path(folder), job, _worker_extractor, _worker_queue.put)
        return job, None
    except Exception as e:  # noqa: BLE001 - reported by the parent, the run goes on
        return job, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


def _check_folder(folder: Path, config: SynthConfig, feature_config: dict) -> None:
    """dataset.json records the settings; resuming with other settings is refused."""
    info = {"format": FORMAT_VERSION, "config": config.to_dict(), "features": feature_config,
            "names": list(motion_space.NAMES), "style_names": list(visemes.STYLE_NAMES),
            "val_voices": {"espeak_variants": list(VAL_ESPEAK_VARIANTS),
                           "festival": list(VAL_FESTIVAL_VOICES)}}
    path = folder / "dataset.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != info:
            raise SystemExit(f"{folder} holds data made with other settings or an older "
                             f"format ({path}): delete the folder, or use another --out or "
                             "the same settings")
    else:
        path.write_text(json.dumps(info, indent=1))


def run(hours: float, out: str | Path, workers: int = 1, config: SynthConfig = SynthConfig(),
        show_progress: bool = True, features: dict | None = None) -> dict:
    """Make the shards of `hours` of audio in `out`; `features`: FeatureConfig overrides
    (the audio windowing the motion model will be trained with; default: today's)."""
    from tqdm import tqdm

    from models.audio import FeatureConfig

    features = replace(FeatureConfig(), **(features or {})).to_dict()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    _check_folder(folder, config, features)
    jobs = shard_jobs(hours, config)
    pending = [job for job in jobs if not is_complete(folder, job)]
    planned = sum(p.estimated_seconds for job in pending
                  for p in plan_shard(config, job.split, job.index, job.seconds))
    counts = {s: sum(job.split == s for job in jobs) for s in ("train", "val")}
    print(f"{len(jobs)} shards ({counts['train']} train, {counts['val']} val), "
          f"{len(jobs) - len(pending)} already complete, {len(pending)} to make "
          f"(~{planned / 3600:.2f} h of audio) with {workers} worker(s)", flush=True)
    failures = []
    started = time.perf_counter()
    bar = tqdm(total=round(planned), unit="s audio", disable=not show_progress, smoothing=0.05)

    def advance(seconds: float) -> None:
        bar.update(round(seconds))

    if workers <= 1:
        extractor = _new_extractor(features) if pending else None
        for job in pending:
            try:
                _make_and_write(config, folder, job, extractor, advance)
            except Exception as e:  # noqa: BLE001
                failures.append(f"{job.name}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    elif pending:
        ctx = mp.get_context("spawn")
        progress_queue = ctx.Queue()
        with ctx.Pool(workers, initializer=_init_worker,
                      initargs=(progress_queue, features)) as pool:
            result = pool.map_async(_worker_job, [(config, str(folder), job) for job in pending],
                                    chunksize=1)
            while not result.ready() or not progress_queue.empty():
                try:
                    advance(progress_queue.get(timeout=0.2))
                except queue.Empty:
                    pass
            for job, error in result.get():
                if error:
                    failures.append(f"{job.name}: {error}")
    bar.total = max(bar.n, 1)              # the plan's estimate was close, not exact
    bar.close()
    wall = time.perf_counter() - started
    stats = dataset_stats(folder)
    stats["run"] = {"wall_seconds": wall, "workers": workers, "shards_made": len(pending),
                    "planned_audio_seconds": planned, "cpu": _cpu_name(), "cores": os.cpu_count()}
    if pending:
        stats["run"]["audio_seconds_per_wall_second"] = planned / max(wall, 1e-9)
    (folder / "stats.json").write_text(json.dumps(stats, indent=1))
    text = format_stats(stats)
    if pending:
        text += (f"\nthis run: {len(pending)} shards, ~{planned / 3600:.3f} h of audio in "
                 f"{wall:.0f} s wall with {workers} worker(s) on {_cpu_name()} "
                 f"({planned / max(wall, 1e-9):.2f} s of audio per second)")
    (folder / "stats.txt").write_text(text + "\n")
    print(text, flush=True)
    for f in failures:
        print(f"FAILED {f}", file=sys.stderr)
    stats["failures"] = failures
    return stats


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that change the audio features' FeatureConfig (train.synth, train.refeature)."""
    parser.add_argument("--all-layers", action="store_true",
                        help="every Whisper encoder stage per encoder frame")
    for name, what in (("window", "encoder window"), ("block", "frames one window gives"),
                       ("lookahead", "audio after the block inside the window"),
                       ("context", "+-frames of context stacked per frame")):
        parser.add_argument(f"--{name}-frames", type=int, help=f"{what}, in video frames")


def feature_overrides(args: argparse.Namespace) -> dict:
    """The FeatureConfig fields that add_feature_arguments' flags set."""
    settings = {"all_layers": True} if args.all_layers else {}
    for name in ("window", "block", "lookahead", "context"):
        if getattr(args, f"{name}_frames") is not None:
            settings[f"{name}_frames"] = getattr(args, f"{name}_frames")
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.synth",
        description="Synthetic (audio, motion) training data from offline TTS.")
    parser.add_argument("--hours", type=float, required=True, help="hours of audio in all")
    parser.add_argument("--out", required=True, help="shard folder (resumed if it exists)")
    parser.add_argument("--workers", type=int, default=1, help="processes (one core each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-seconds", type=float, default=SynthConfig.shard_seconds,
                        help="audio per shard")
    parser.add_argument("--piper-share", type=float, default=0.0,
                        help="fraction of training speakers with the neural voice (train.piper)")
    parser.add_argument("--no-progress", action="store_true")
    add_feature_arguments(parser)
    args = parser.parse_args(argv)
    if args.hours <= 0 or args.workers < 1 or args.shard_seconds <= 0:
        parser.error("--hours, --workers and --shard-seconds must be positive")
    if not 0.0 <= args.piper_share <= 1.0:
        parser.error("--piper-share must be between 0 and 1")
    config = SynthConfig(seed=args.seed, shard_seconds=args.shard_seconds,
                         piper_share=args.piper_share)
    stats = run(args.hours, args.out, args.workers, config, show_progress=not args.no_progress,
                features=feature_overrides(args))
    return 1 if stats["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
