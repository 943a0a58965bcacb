"""Offline text-to-speech with phoneme timings aligned to the samples.

Two free engines, both Debian packages, nothing downloaded at run time, and a neural voice:
- espeak-ng through its C library (ctypes): 8 English accents x many voice variants. The
  synthesis callback reports each phoneme with its sample position in the output; stress
  comes from `espeak_TextToPhonemes`, aligned to the spoken phonemes by vowel sequence.
- festival as a subprocess running a Scheme script (kal and ked diphone voices, SLT HTS):
  phone end times from the utterance's Segment relation, syllable stress from SylStructure.
  One festival process speaks a whole batch; a crash costs one sentence, not the batch.
- Piper's en_US-joe-medium (train.piper): a VITS network from a PyPI wheel, run by
  onnxruntime, reading espeak-ng's IPA; phone times from its own duration predictor.
MBROLA voices (Debian non-free) are never used.

The phone sets are mapped to one inventory, PHONEMES: ARPAbet without stress digits, plus
AX (schwa) and SIL (pause or silence). Every utterance comes back as 16 kHz mono float32
with contiguous phones covering the whole waveform, per-vowel stress and an F0/energy track
computed from the audio.

A sentence an engine cannot speak raises SpeechError with the reason; `speak_many` returns
the error in place of the utterance so a data run records a skip and goes on.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import difflib
import re
import shutil
import subprocess
import tempfile
import unicodedata
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.audio_io import resample

RATE = 16000          # every utterance is returned at this rate
TRACK_RATE = 100      # F0 / energy frames per second

# --- the common phoneme inventory ---------------------------------------------------------

VOWELS = ("AA", "AE", "AH", "AO", "AW", "AX", "AY", "EH", "ER", "EY",
          "IH", "IY", "OW", "OY", "UH", "UW")
CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG",
              "P", "R", "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH")
SILENCE = "SIL"
PHONEMES = VOWELS + CONSONANTS + (SILENCE,)
PLOSIVES = ("P", "B", "T", "D", "K", "G")

# espeak-ng's English phoneme mnemonics (all 8 accents) -> PHONEMES. None: a marker with no
# sound of its own, merged into the phone before it. Glottal stop -> HH (no mouth shape).
ESPEAK_TO_PHONEME: dict[str, str | None] = {
    "0": "AA", "3": "ER", "3:": "ER", "@": "AX", "@-": "AX", "@2": "AX", "@5": "AX",
    "@L": "L", "A:": "AA", "A@": "AA", "A#": "AA", "aa": "AA", "a": "AE", "a#": "AH",
    "a2": "AX", "D": "DH", "E": "EH", "E2": "EH", "E@": "EH", "e": "EH", "e@": "EH",
    "I": "IH", "I#": "IH", "I2": "IH", "IR": "IH", "I@": "IH", "i": "IY", "i:": "IY",
    "i@": "IH", "i@3": "IY", "N": "NG", "O": "AO", "O2": "AO", "O:": "AO", "O@": "AO",
    "OI": "OY", "o@": "AO", "o": "OW", "oU": "OW", "oU#": "OW", "S": "SH", "T": "TH",
    "U": "UH", "U@": "UH", "u@": "UH", "u:": "UW", "u": "UW", "V": "AH", "VR": "AH",
    "Z": "ZH", "aI": "AY", "aI2": "AY", "aI3": "AY", "aI@": "AY", "aI@3": "AY",
    "aU": "AW", "aU@": "AW", "eI": "EY", "eI@": "EY",
    "b": "B", "d": "D", "d#": "D", "dZ": "JH", "f": "F", "g": "G", "h": "HH", "j": "Y",
    "k": "K", "l": "L", "l/": "L", "l#": "L", "m": "M", "n": "N", "n-": "N", "p": "P",
    "r": "R", "r-": "R", "s": "S", "t": "T", "t#": "D", "t2": "T", "t[": "T", "tS": "CH",
    "v": "V", "w": "W", "w#": "W", "x": "HH", "z": "Z", "z#": "Z", "?": "HH",
    "_": SILENCE, "_:": SILENCE, "_!": SILENCE, "_|": SILENCE, "_^_": SILENCE, "||": SILENCE,
    ";": None, "'": None, ",": None, "%": None, "=": None,
}

# festival's radio phone set (kal, ked, slt) -> PHONEMES.
FESTIVAL_TO_PHONEME: dict[str, str] = {
    **{p.lower(): p for p in VOWELS + CONSONANTS},
    "axr": "ER", "dx": "D", "el": "L", "em": "M", "en": "N", "nx": "N", "hv": "HH",
    "pau": SILENCE, "h#": SILENCE, "brth": SILENCE,
}


class SpeechError(Exception):
    """A sentence an engine cannot speak; `reason` says why in words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- voices and delivery ------------------------------------------------------------------

ESPEAK_ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                  "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# espeak-ng's voice variants that sound like a person (no whisper, echo, robot or croak).
ESPEAK_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "Alex", "Alicia", "Andrea", "Andy", "Annie",
    "Denis", "Diogo", "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Michael", "Mike", "Nguyen",
    "adam", "anika", "antonio", "aunty", "belinda", "benjamin", "boris", "david", "ed",
    "edward", "grandma", "grandpa", "gustave", "iven", "iven2", "linda", "max", "michel",
    "miguel", "norbert", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby",
    "steph", "steph2", "travis", "victor",
)
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")


@dataclass(frozen=True)
class Voice:
    engine: str   # "espeak" | "festival" | "piper"
    name: str     # espeak "en-us+f3"; festival "kal_diphone"; piper "en_US-joe-medium"

    @property
    def id(self) -> str:
        return f"{self.engine}/{self.name}"

    @staticmethod
    def parse(voice_id: str) -> Voice:
        engine, _, name = voice_id.partition("/")
        if engine not in ("espeak", "festival", "piper") or not name:
            raise ValueError("voice id must be 'espeak/NAME', 'festival/NAME' or 'piper/NAME', "
                             f"got {voice_id!r}")
        return Voice(engine, name)


@dataclass(frozen=True)
class Delivery:
    """How a sentence is spoken, the same scale for both engines.

    rate: speaking-rate factor (1 = the voice's default, 1.2 = 20 % faster).
    pitch: shift of the voice's mean pitch in semitones.
    pitch_range: factor on the intonation range (espeak and festival diphone voices; the
        HTS voice ignores it).
    warp: playback-rate warp applied to the waveform (pitch and formants up by the factor,
        duration down by it): a cheap extra voice variation, 1 = none.
    """

    rate: float = 1.0
    pitch: float = 0.0
    pitch_range: float = 1.0
    warp: float = 1.0


@dataclass
class Phone:
    symbol: str     # one of PHONEMES
    start: float    # seconds from the start of the utterance's waveform
    end: float
    stress: int = 0  # vowels: 0 unstressed, 1 primary, 2 secondary; consonants/silence: 0


@dataclass
class Utterance:
    text: str
    voice: str                  # Voice.id
    delivery: Delivery
    audio: np.ndarray           # [n] float32 at RATE
    phones: list[Phone]         # contiguous, phones[0].start == 0, phones[-1].end == duration
    engine_end: float = 0.0     # where the engine's own labels end (s); the last silence
                                # phone is stretched from there to the end of the waveform
    f0: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))
    energy: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))

    @property
    def duration(self) -> float:
        return len(self.audio) / RATE


def espeak_voices() -> list[Voice]:
    """Every (accent, variant) pair available on this machine."""
    data = _espeak_data_dir()
    variants_dir = data / "voices" / "!v" if data else None
    voices = []
    for accent in ESPEAK_ACCENTS:
        for variant in ESPEAK_VARIANTS:
            if variant and variants_dir is not None and not (variants_dir / variant).is_file():
                continue
            voices.append(Voice("espeak", f"{accent}+{variant}" if variant else accent))
    return voices


def festival_voices() -> list[Voice]:
    if shutil.which("festival") is None:
        return []
    roots = [Path("/usr/share/festival/voices")]
    found = {p.name for root in roots if root.is_dir() for p in root.glob("*/*")}
    return [Voice("festival", v) for v in FESTIVAL_VOICES if v in found]


def piper_voices() -> list[Voice]:
    from train.piper import VOICES

    return [Voice("piper", name) for name in VOICES]


def all_voices() -> list[Voice]:
    return espeak_voices() + festival_voices() + piper_voices()


# --- text checks ---------------------------------------------------------------------------

MAX_CHARS = 400


def check_text(text: str) -> str:
    """The text an engine is given, or SpeechError if there is nothing it can speak."""
    if not isinstance(text, str):
        raise SpeechError(f"text must be a string, got {type(text).__name__}")
    text = " ".join(unicodedata.normalize("NFKC", text).split())
    if not re.search(r"[A-Za-z0-9]", text):
        raise SpeechError("no speakable words (no Latin letters or digits)")
    if len(text) > MAX_CHARS:
        raise SpeechError(f"sentence too long ({len(text)} characters, at most {MAX_CHARS})")
    return text


def _ascii_text(text: str) -> str:
    """festival reads bytes: transliterate to ASCII and drop what has no ASCII form."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(folded.split())


# --- espeak-ng -----------------------------------------------------------------------------

_EVENT_END, _EVENT_PHONEME = 0, 7
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _PITCH, _RANGE = 1, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_libc = ctypes.CDLL(None)      # the process's C library (espeak-ng's rand())

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class _Espeak:
    """A freshly loaded libespeak-ng (the library keeps global state, see _fresh_espeak)."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libespeak-ng.so.1")
        except OSError as e:
            raise SpeechError(
                f"libespeak-ng is not installed ({e}); apt-get install espeak-ng") from e
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                                   ctypes.c_int]
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                               _INITIALIZE_PHONEME_EVENTS)
        if self.rate <= 0:
            raise SpeechError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []   # (sample, mnemonic)
        self._callback = _SynthCallback(self._on_audio)  # keep a reference: C holds it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, count, events):
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_END:
            e = events[i]
            if e.type == _EVENT_PHONEME:
                name = bytes(e.id.string).split(b"\0")[0].decode("ascii", "replace")
                self._events.append((e.sample, name))
            i += 1
        return 0

    def set_voice(self, name: str, delivery: Delivery) -> None:
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise SpeechError(f"espeak-ng has no voice {name!r}")
        pitch = 50 + 100 * (2 ** (delivery.pitch / 12) - 1)   # espeak: factor 1 + (p-50)/100
        self.lib.espeak_SetParameter(_RATE, int(np.clip(round(175 * delivery.rate), 80, 450)), 0)
        self.lib.espeak_SetParameter(_PITCH, int(np.clip(round(pitch), 0, 100)), 0)
        pitch_range = int(np.clip(round(50 * delivery.pitch_range), 0, 100))
        self.lib.espeak_SetParameter(_RANGE, pitch_range, 0)

    def synthesize(self, text: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                    None, None)
        if err != 0:
            raise SpeechError(f"espeak-ng synthesis failed (error {err})")
        if not self._chunks:
            raise SpeechError("espeak-ng produced no audio")
        audio = np.concatenate(self._chunks).astype(np.float32) / 32768.0
        return audio, self._events

    def stressed_vowels(self, text: str) -> list[tuple[str, int]]:
        """(vowel, stress) in reading order from espeak's own phoneme transcription."""
        buf = ctypes.c_char_p(text.encode("utf-8"))
        pointer = ctypes.cast(ctypes.pointer(buf), ctypes.POINTER(ctypes.c_void_p))
        separator = ord("|") << 8
        vowels = []
        for _ in range(10000):
            if not pointer.contents.value:
                break
            out = self.lib.espeak_TextToPhonemes(pointer, _CHARS_UTF8, separator) or b""
            for token in re.split(r"[|\s]+", out.decode("utf-8", "replace")):
                stress = 1 if "'" in token else 2 if "," in token else 0
                symbol = ESPEAK_TO_PHONEME.get(token.strip("'%,=_!"))
                if symbol in VOWELS:
                    vowels.append((symbol, stress))
        return vowels


    def unload(self) -> None:
        self.lib.espeak_Terminate()
        _ctypes.dlclose(self.lib._handle)


@contextlib.contextmanager
def _fresh_espeak():
    """libespeak-ng carries state from one synthesis to the next (the voice source's phase:
    the same sentence comes out a few samples longer or shorter depending on what was said
    before, even after espeak_Terminate), and draws its noise (aspiration, fricatives) from
    the C library's rand(). Loading the library afresh for every sentence (~2 ms) and
    seeding rand() makes a sentence's audio depend only on (text, voice, delivery)."""
    _libc.srand(1)
    engine = _Espeak()
    try:
        yield engine
    finally:
        engine.unload()


def _espeak_data_dir() -> Path | None:
    for p in (Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data"),
              Path("/usr/lib/aarch64-linux-gnu/espeak-ng-data"), Path("/usr/share/espeak-ng-data")):
        if p.is_dir():
            return p
    return None


def _espeak_symbol(mnemonic: str) -> str | None:
    if mnemonic in ESPEAK_TO_PHONEME:
        return ESPEAK_TO_PHONEME[mnemonic]
    stripped = mnemonic.rstrip("#23-[/;")
    if stripped in ESPEAK_TO_PHONEME:
        return ESPEAK_TO_PHONEME[stripped]
    raise SpeechError(f"espeak-ng phoneme {mnemonic!r} is not in the phoneme map")


def _speak_espeak(text: str, voice: Voice, delivery: Delivery
                  ) -> tuple[np.ndarray, int, list[Phone]]:
    with _fresh_espeak() as engine:
        engine.set_voice(voice.name, delivery)
        audio, events = engine.synthesize(text)
        stressed = engine.stressed_vowels(text)
        rate = engine.rate
    # each event marks where its phoneme starts; it ends where the next one starts
    marks: list[tuple[int, str]] = []
    for sample, mnemonic in events:
        symbol = _espeak_symbol(mnemonic)
        if symbol is None:
            continue                       # a marker: the previous phone goes on
        sample = int(np.clip(sample, 0, len(audio)))
        if marks and sample <= marks[-1][0]:
            marks[-1] = (marks[-1][0], symbol) if sample == marks[-1][0] else marks[-1]
            continue                       # zero-length: the later label wins
        marks.append((sample, symbol))
    if not marks:
        raise SpeechError("espeak-ng reported no phonemes")
    phones = []
    if marks[0][0] > 0:
        phones.append(Phone(SILENCE, 0.0, marks[0][0] / rate))
    for i, (sample, symbol) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(audio)
        if end > sample:
            phones.append(Phone(symbol, sample / rate, end / rate))
    _include_stop_closures(phones, audio, rate)
    _assign_stress(phones, stressed)
    return audio, rate, phones


STOPS = PLOSIVES + ("CH", "JH")


def _include_stop_closures(phones: list[Phone], audio: np.ndarray, rate: int) -> None:
    """espeak-ng often starts a voiceless stop's event at its burst and writes the closure
    (silence, or faint noise in some variants) at the end of the phone before. Move such
    closures into the stop, so that the lips/tongue close inside the stop's interval like
    in festival's labels. Closure: 2.5 ms frames 25 dB under the phone before's loudest
    frame (and under -50 dBFS if that is higher), back from the stop's start."""
    frame = int(0.0025 * rate)
    for k in range(1, len(phones)):
        stop, before = phones[k], phones[k - 1]
        if stop.symbol not in STOPS or before.symbol == SILENCE:
            continue
        end = int(stop.start * rate)
        first = int(before.start * rate)
        n = (end - first) // frame
        if n < 2:
            continue
        frames = audio[end - n * frame: end].astype(np.float64).reshape(n, frame)
        loudest = float(np.sqrt((frames ** 2).mean(axis=1)).max())
        quiet = max(10 ** (-50 / 20), loudest * 10 ** (-25 / 20))
        limit = int((before.start + 0.3 * (before.end - before.start)) * rate)
        start = end
        while start - frame >= limit:
            piece = audio[start - frame: start]
            if np.sqrt(np.mean(piece.astype(np.float64) ** 2)) > quiet:
                break
            start -= frame
        if start < end:
            before.end = stop.start = start / rate


def _assign_stress(phones: list[Phone], vowels: list[tuple[str, int]]) -> None:
    """Copy stress from a transcription's vowels onto the spoken vowels (sequence alignment)."""
    spoken = [p for p in phones if p.symbol in VOWELS]
    matcher = difflib.SequenceMatcher(a=[p.symbol for p in spoken], b=[v for v, _ in vowels],
                                      autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and a1 - a0 == b1 - b0):
            for k in range(a1 - a0):
                spoken[a0 + k].stress = vowels[b0 + k][1]


# --- festival ------------------------------------------------------------------------------

_FESTIVAL_HELPERS = r"""
(define (th_write path msg) (set! th_fd (fopen path "w")) (format th_fd "%s\n" msg) (fclose th_fd))
(define (th_say text wav segs)
  (set! th_utt (SynthText text))
  (if (< (length (utt.relation.items th_utt 'Segment)) 2) (error "no phones"))
  (utt.save.wave th_utt wav 'riff)
  (set! th_fd (fopen segs "w"))
  (mapcar (lambda (s) (format th_fd "%s %f %s\n" (item.name s) (item.feat s "end")
                              (item.feat s "R:SylStructure.parent.stress")))
          (utt.relation.items th_utt 'Segment))
  (fclose th_fd))
"""


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival_item_script(voice: str, delivery: Delivery, text: str, stem: str) -> str:
    lines = [f"({_scheme_voice_function(voice)})"]
    if voice.endswith("_hts"):
        # festival's hts_engine takes only a speed (-r); the pitch shift is a playback warp
        # (see _hts_pitch_factor), so the speed is set to leave the duration as asked
        speed = delivery.rate / _hts_pitch_factor(voice, delivery)
        lines.append(
            f"(set! hts_engine_params (append hts_engine_params (list '(\"-r\" {speed:.4f}))))")
    else:
        lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / delivery.rate:.4f})")
        factor = 2 ** (delivery.pitch / 12)
        lines.append(
            "(set! int_lr_params (list "
            f"(list 'target_f0_mean (* {factor:.4f} (cadr (assoc 'target_f0_mean int_lr_params)))) "
            f"(list 'target_f0_std (* {delivery.pitch_range:.4f} "
            "(cadr (assoc 'target_f0_std int_lr_params)))) "
            "(assoc 'model_f0_mean int_lr_params) (assoc 'model_f0_std int_lr_params)))")
    lines.append(f"(unwind-protect (th_say {_scheme_string(text)} \"{stem}.wav\" \"{stem}.segs\") "
                 f"(th_write \"{stem}.err\" \"festival raised an error\"))")
    return "\n".join(lines) + "\n"


def _hts_pitch_factor(voice: str, delivery: Delivery) -> float:
    """HTS voices shift pitch by playing the waveform faster (formants move with it)."""
    return 2 ** (delivery.pitch / 12) if voice.endswith("_hts") else 1.0


def _scheme_voice_function(voice: str) -> str:
    if voice not in FESTIVAL_VOICES:
        raise SpeechError(f"festival voice {voice!r} is not supported (known: {FESTIVAL_VOICES})")
    return f"voice_{voice}"


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise SpeechError(f"festival wrote {8 * w.getsampwidth()}-bit audio, expected 16-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    audio = pcm.astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768.0
    return audio, rate


def _read_festival_segments(path: Path, num_samples: int, rate: int) -> list[Phone]:
    phones: list[Phone] = []
    start = 0.0
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, end = parts[0], float(parts[1])
        symbol = FESTIVAL_TO_PHONEME.get(name)
        if symbol is None:
            raise SpeechError(f"festival phone {name!r} is not in the phoneme map")
        stress = int(float(parts[2])) if symbol in VOWELS and len(parts) > 2 else 0
        end = min(end, num_samples / rate)
        if end > start:
            phones.append(Phone(symbol, start, end, stress))
            start = end
    if not phones:
        raise SpeechError("festival reported no phones")
    return phones


def _speak_festival_batch(items: list[tuple[str, Voice, Delivery]], timeout: float = 120.0
                          ) -> list[tuple[np.ndarray, int, list[Phone]] | SpeechError]:
    """Speak several sentences with one festival process; restart it after a crash."""
    if shutil.which("festival") is None:
        return [SpeechError("festival is not installed; apt-get install festival")] * len(items)
    results: list = [None] * len(items)
    with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
        todo = list(range(len(items)))
        while todo:
            script = Path(tmp) / "batch.scm"
            parts = [_FESTIVAL_HELPERS]
            for i in todo:
                text, voice, delivery = items[i]
                parts.append(_festival_item_script(voice.name, delivery, _ascii_text(text),
                                                   f"{tmp}/{i}"))
            script.write_text("".join(parts))
            try:
                proc = subprocess.run(["festival", "-b", str(script)], capture_output=True,
                                      timeout=timeout + 5.0 * len(todo), text=True,
                                      errors="replace")
                failure = (f"festival exited with status {proc.returncode}: "
                           f"{proc.stderr.strip()[-200:]}")
            except subprocess.TimeoutExpired:
                failure = "festival timed out"
            remaining: list[int] = []
            culprit = False
            for i in todo:
                stem = Path(tmp) / str(i)
                segs, wav_path, err = (stem.with_suffix(".segs"), stem.with_suffix(".wav"),
                                       stem.with_suffix(".err"))
                if err.exists():
                    reason = err.read_text().strip()
                    results[i] = SpeechError(f"festival could not speak it: {reason}")
                elif segs.exists() and wav_path.exists():
                    try:
                        audio, rate = _read_wav(wav_path)
                        phones = _read_festival_segments(segs, len(audio), rate)
                        factor = _hts_pitch_factor(items[i][1].name, items[i][2])
                        if factor != 1.0:       # declare a faster rate: pitch up, time down
                            played = int(round(rate * factor))
                            for p in phones:
                                p.start, p.end = p.start * rate / played, p.end * rate / played
                            rate = played
                        results[i] = (audio, rate, phones)
                    except (SpeechError, OSError, EOFError, wave.Error, ValueError) as e:
                        results[i] = e if isinstance(e, SpeechError) else SpeechError(
                            f"festival output unreadable: {e}")
                elif not culprit:
                    results[i] = SpeechError(failure)   # the item the process died on
                    culprit = True
                else:
                    remaining.append(i)
            todo = remaining
    return results


# --- the public entry points --------------------------------------------------------------

def speak(text: str, voice: Voice | str, delivery: Delivery = Delivery()) -> Utterance:
    """One sentence -> Utterance at 16 kHz, or SpeechError."""
    result = speak_many([(text, voice, delivery)])[0]
    if isinstance(result, SpeechError):
        raise result
    return result


def speak_many(requests: list[tuple[str, Voice | str, Delivery]]) -> list[Utterance | SpeechError]:
    """Many sentences; festival ones share one process. Failures come back as SpeechError."""
    results: list[Utterance | SpeechError | None] = [None] * len(requests)
    festival_items: list[tuple[int, str, Voice, Delivery]] = []
    for i, (text, voice, delivery) in enumerate(requests):
        try:
            voice = Voice.parse(voice) if isinstance(voice, str) else voice
            clean = check_text(text)
            if voice.engine == "festival":
                _scheme_voice_function(voice.name)
                if not re.search(r"[A-Za-z0-9]", _ascii_text(clean)):
                    raise SpeechError("no speakable words in ASCII (festival reads ASCII only)")
                festival_items.append((i, clean, voice, delivery))
                continue
            if voice.engine == "piper":
                from train import piper

                raw = piper.speak(clean, voice, delivery)
            else:
                raw = _speak_espeak(clean, voice, delivery)
            results[i] = _finish(text, voice, delivery, *raw)
        except SpeechError as e:
            results[i] = e
    if festival_items:
        raws = _speak_festival_batch([(t, v, d) for _, t, v, d in festival_items])
        for (i, _, voice, delivery), raw in zip(festival_items, raws, strict=True):
            try:
                if isinstance(raw, SpeechError):
                    raise raw
                results[i] = _finish(requests[i][0], voice, delivery, *raw)
            except SpeechError as e:
                results[i] = e
    return results  # type: ignore[return-value]


def _finish(text: str, voice: Voice, delivery: Delivery, audio: np.ndarray, rate: int,
            phones: list[Phone]) -> Utterance:
    """Resample to 16 kHz (with the delivery's warp), make the phones cover the waveform."""
    if audio.size == 0 or not np.isfinite(audio).all():
        raise SpeechError("the engine produced no usable audio")
    if float(np.max(np.abs(audio))) < 1e-3:
        raise SpeechError("the engine produced silence")
    if not any(p.symbol != SILENCE for p in phones):
        raise SpeechError("the engine reported only silence phones")
    warped_rate = int(round(rate * delivery.warp))       # played faster: pitch up, shorter
    audio16 = resample(audio, warped_rate, RATE).astype(np.float32)
    scale = rate / warped_rate
    duration = len(audio16) / RATE
    out: list[Phone] = []
    for p in phones:
        start, end = p.start * scale, min(p.end * scale, duration)
        if out:
            start = out[-1].end
        if end - start > 1e-6:
            out.append(Phone(p.symbol, start, end, p.stress))
    out = _merge_silences(out)
    if not out:
        raise SpeechError("no phone has any duration")
    engine_end = out[-1].end
    out[0].start = 0.0
    if duration - out[-1].end > 1e-6 and out[-1].symbol != SILENCE:
        out.append(Phone(SILENCE, out[-1].end, duration))   # a tail the engine did not label
    out[-1].end = duration
    f0, energy = prosody(audio16)
    return Utterance(text=text, voice=voice.id, delivery=delivery, audio=audio16, phones=out,
                     engine_end=engine_end, f0=f0, energy=energy)


def _merge_silences(phones: list[Phone]) -> list[Phone]:
    merged: list[Phone] = []
    for p in phones:
        if merged and p.symbol == SILENCE and merged[-1].symbol == SILENCE:
            merged[-1].end = p.end
        else:
            merged.append(p)
    return merged


# --- F0 and energy -------------------------------------------------------------------------

def prosody(audio: np.ndarray, rate: int = RATE, fmin: float = 60.0, fmax: float = 420.0,
            threshold: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """F0 in Hz (0 where unvoiced) and energy in dB, TRACK_RATE frames per second.

    F0 by YIN (cumulative mean normalised difference, first dip under `threshold`,
    parabolic refinement), then a 5-frame median over voiced runs. Frame k covers the
    samples around k / TRACK_RATE seconds; there are ceil(len / hop) frames.
    """
    audio = np.asarray(audio, dtype=np.float32)
    hop = rate // TRACK_RATE
    n_frames = max(1, -(-len(audio) // hop))
    window = int(0.025 * rate)
    tau_min, tau_max = int(rate / fmax), int(np.ceil(rate / fmin))
    span = window + tau_max
    padded = np.pad(audio, (window // 2, span))
    idx = np.arange(n_frames)[:, None] * hop + np.arange(span)[None, :]
    frames = padded[idx].astype(np.float64)                        # [F, span]
    frames -= frames[:, :window].mean(axis=1, keepdims=True)

    head = frames[:, :window]
    energy_db = 10 * np.log10(np.mean(head ** 2, axis=1) + 1e-10)

    # d(tau) = sum x_j^2 + sum x_{j+tau}^2 - 2 sum x_j x_{j+tau}, j < window
    n_fft = 1 << int(np.ceil(np.log2(span + window)))
    spec_a = np.fft.rfft(head, n_fft)
    spec_b = np.fft.rfft(frames, n_fft)
    cross = np.fft.irfft(np.conj(spec_a) * spec_b, n_fft)[:, : tau_max + 1]   # [F, tau]
    sq = np.concatenate([np.zeros((n_frames, 1)), np.cumsum(frames ** 2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy_shifted = sq[:, taus + window] - sq[:, taus]
    diff = energy_shifted[:, :1] + energy_shifted - 2 * cross
    diff[:, 0] = 0.0
    cum = np.cumsum(diff[:, 1:], axis=1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] * taus[1:] / np.maximum(cum, 1e-12)

    f0 = np.zeros(n_frames)
    loud = energy_db > energy_db.max() - 45.0
    search = cmnd[:, tau_min: tau_max]
    below = search < threshold
    for k in np.nonzero(loud & below.any(axis=1))[0]:
        t = int(np.argmax(below[k]))
        while t + 1 < search.shape[1] and search[k, t + 1] < search[k, t]:
            t += 1                                                  # walk down to the dip
        tau = t + tau_min
        a, b, c = cmnd[k, tau - 1], cmnd[k, tau], cmnd[k, min(tau + 1, tau_max)]
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if abs(denom) > 1e-12 else 0.0
        f0[k] = rate / (tau + float(np.clip(shift, -1, 1)))
    f0 = _median_voiced(f0, 5)
    return f0.astype(np.float32), energy_db.astype(np.float32)


def _median_voiced(f0: np.ndarray, width: int) -> np.ndarray:
    out = f0.copy()
    half = width // 2
    for k in np.nonzero(f0 > 0)[0]:
        neighbours = f0[max(0, k - half): k + half + 1]
        neighbours = neighbours[neighbours > 0]
        out[k] = np.median(neighbours)
    return out


def main() -> None:
    """python -m train.tts "Some text." [--voice espeak/en-us+f3] [--out x.wav]"""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("text")
    parser.add_argument("--voice", default="espeak/en-us")
    parser.add_argument("--rate", type=float, default=1.0)
    parser.add_argument("--pitch", type=float, default=0.0)
    parser.add_argument("--out", help="write the waveform here (16 kHz WAV)")
    parser.add_argument("--list-voices", action="store_true")
    args = parser.parse_args()
    if args.list_voices:
        print("\n".join(v.id for v in all_voices()))
        return
    utt = speak(args.text, args.voice, Delivery(rate=args.rate, pitch=args.pitch))
    for p in utt.phones:
        print(f"{p.start:7.3f} {p.end:7.3f} {p.symbol:4s} {p.stress}")
    voiced = utt.f0[utt.f0 > 0]
    print(f"{utt.duration:.2f} s, median F0 {np.median(voiced) if voiced.size else 0:.0f} Hz")
    if args.out:
        pcm = (np.clip(utt.audio, -1, 1) * 32767).astype("<i2")
        with wave.open(args.out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(pcm.tobytes())


if __name__ == "__main__":
    main()
