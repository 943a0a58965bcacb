"""Phonemes and prosody -> a believable talking performance in the motion space.

`perform(speech, style, rng)` returns motion [T, D] at 25 fps (frame t shows the face at
the middle of audio samples [640 t, 640 (t + 1)) at 16 kHz), built from:

- Mouth, by a dominance (coarticulation) model: each phone has a target for the five mouth
  parameters and a dominance per parameter that is flat over the phone and decays
  exponentially outside it, more slowly before it (anticipation) than after it (carryover).
  At each instant the mouth is the dominance-weighted mean of the targets, so a shape starts
  before its sound and blends with its neighbours; weakly specified parameters (rounding
  during /t/, everything during /h/) are taken from the neighbours, so rounding spreads
  from a rounded vowel over the consonants before it. Bilabials (P, B, M) then close the
  lips fully through a closure gate; long silences close the mouth through an idle gate.
  The whole mouth track leads the audio by the speaker's `mouth_lead`.
- Head, from prosody: a posture that shifts at phrase boundaries, slow drift, nods and
  small turns/tilts on prominent stressed syllables, a phrase-final nod (statement) or
  raise and tilt (question), breathing sway, all scaled by the speaker's amplitude and
  tempo. A posture shift begins within 80 ms of its phrase's first sound, what a streaming
  model hears ahead (models.audio's look-ahead). Head pose is relative to the speaker's
  resting pose, as train.prepare_videos fits real videos against the person's own neutral
  face and usual pose: an avatar starts from its portrait, which is that rest, and nothing
  in the audio tells a speaker's resting posture, so it is not motion. (Format 2 drew a
  resting posture per speaker, yaw/pitch/roll std 4/3/2 degrees, into the motion, which the
  generator's anchoring at the portrait's pose then counted as missing head motion.)
- Blinks at a per-speaker rate, more often in pauses and just after a phrase ends.
- Gaze: fixations near the camera with saccades between them, looking away in pauses,
  partly counter-rotating the head (the eyes stay on the viewer).
- Brows raised on pitch peaks and at the end of questions.

Everything random is drawn from the `rng` passed in: the same seed gives the same motion.
A speaker's `Style` (amplitudes, tempo, rates) is recorded with each example; these values
become the motion model's style controls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from models import motion_space
from train.tts import CONSONANTS, SILENCE, TRACK_RATE, VOWELS, Phone

FPS = 25
AUDIO_RATE = 16000
SAMPLES_PER_FRAME = AUDIO_RATE // FPS      # 640

MOUTH = motion_space.MOUTH
OPENING = ("jaw_open", "upper_lip_raise", "lower_lip_depress")   # closed by bilabials
BILABIALS = ("P", "B", "M")


def frame_count(num_samples: int) -> int:
    """T = ceil(samples / 640): the number of motion frames for 16 kHz audio."""
    return -(-int(num_samples) // SAMPLES_PER_FRAME)


def frame_times(frames: int) -> np.ndarray:
    """Time in seconds that each motion frame shows: the middle of its 40 ms of audio."""
    return (np.arange(frames) + 0.5) / FPS


# --- speaker style -------------------------------------------------------------------------

@dataclass(frozen=True)
class Style:
    """One speaker's manner; recorded per example, later the model's style controls."""

    head_amplitude: float = 1.0   # scale of head posture shifts, drift and gestures
    head_tempo: float = 1.0       # >1: faster head movements (drift frequency, gesture length)
    nod_rate: float = 0.5         # chance of a head gesture on a prominent stressed syllable
    mouth_amplitude: float = 1.0  # scale of jaw and lip opening
    mouth_lead: float = 0.04      # seconds the mouth moves ahead of the sound
    smile: float = 0.05           # resting mouth_wide
    blink_rate: float = 16.0      # blinks per minute while speaking (more in pauses)
    brow_amplitude: float = 0.3   # brow raise on a strong pitch peak
    gaze_aversion: float = 0.3    # chance of looking away during a pause

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in STYLE_NAMES], dtype=np.float32)

    @staticmethod
    def from_dict(values: dict[str, float]) -> Style:
        return Style(**{n: float(values[n]) for n in STYLE_NAMES if n in values})


STYLE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Style))


def sample_style(rng: np.random.Generator) -> Style:
    """A random speaker, covering calm to animated."""
    return Style(
        head_amplitude=float(np.exp(rng.normal(0.0, 0.35)).clip(0.35, 2.0)),
        head_tempo=float(rng.uniform(0.7, 1.4)),
        nod_rate=float(rng.uniform(0.2, 0.8)),
        mouth_amplitude=float(rng.uniform(0.75, 1.25)),
        mouth_lead=float(rng.uniform(0.02, 0.06)),
        smile=float(rng.uniform(-0.05, 0.2)),
        blink_rate=float(rng.uniform(8.0, 24.0)),
        brow_amplitude=float(rng.uniform(0.05, 0.6)),
        gaze_aversion=float(rng.uniform(0.05, 0.6)),
    )


# --- what the performance is driven by -----------------------------------------------------

@dataclass
class Sentence:
    start: float   # first speech phone
    end: float     # end of the last speech phone
    kind: str      # "statement" | "question" | "exclamation"

    @staticmethod
    def kind_of(text: str) -> str:
        t = text.rstrip()
        return "question" if t.endswith("?") else "exclamation" if t.endswith("!") else "statement"


@dataclass
class Speech:
    phones: list[Phone]          # contiguous, times in seconds
    f0: np.ndarray               # Hz at TRACK_RATE, 0 unvoiced
    energy: np.ndarray           # dB at TRACK_RATE
    num_samples: int             # 16 kHz samples; T = frame_count(num_samples)
    sentences: list[Sentence] = field(default_factory=list)

    @staticmethod
    def silence(seconds: float) -> Speech:
        n = int(round(seconds * AUDIO_RATE))
        frames = -(-n // (AUDIO_RATE // TRACK_RATE))
        return Speech([Phone(SILENCE, 0.0, n / AUDIO_RATE)], np.zeros(frames, np.float32),
                      np.full(frames, -100.0, np.float32), n)


# --- mouth: targets and dominance per phoneme ----------------------------------------------

@dataclass(frozen=True)
class Viseme:
    target: tuple[float, float, float, float, float]      # MOUTH order
    dominance: tuple[float, float, float, float, float]


def _v(jaw, wide, pucker, upper, lower, dom=(1.0, 1.0, 1.0, 1.0, 1.0)) -> Viseme:
    return Viseme((jaw, wide, pucker, upper, lower), dom)


_VOWEL_DOM = (1.5, 1.0, 0.6, 0.8, 0.8)        # unrounded: weak say over rounding
_ROUND_DOM = (1.5, 1.0, 1.5, 0.8, 0.8)
VISEMES: dict[str, Viseme] = {
    # monophthongs                jaw   wide  puck  upper lower
    "AA": _v(0.75, 0.10, 0.00, 0.15, 0.35, _VOWEL_DOM),
    "AE": _v(0.62, 0.40, 0.00, 0.30, 0.30, _VOWEL_DOM),
    "AH": _v(0.50, 0.12, 0.00, 0.10, 0.20, _VOWEL_DOM),
    "AX": _v(0.32, 0.08, 0.00, 0.05, 0.10, (0.6, 0.5, 0.3, 0.5, 0.5)),
    "AO": _v(0.60, -0.25, 0.45, 0.05, 0.25, _ROUND_DOM),
    "EH": _v(0.50, 0.35, 0.00, 0.20, 0.25, _VOWEL_DOM),
    "ER": _v(0.32, -0.05, 0.35, 0.10, 0.10, _ROUND_DOM),
    "IH": _v(0.35, 0.45, 0.00, 0.15, 0.15, _VOWEL_DOM),
    "IY": _v(0.22, 0.65, 0.00, 0.20, 0.10, (1.5, 1.2, 1.0, 0.8, 0.8)),
    "UH": _v(0.32, -0.20, 0.50, 0.05, 0.10, _ROUND_DOM),
    "UW": _v(0.20, -0.40, 0.90, 0.00, 0.05, (1.5, 1.2, 2.0, 0.8, 0.8)),
    # consonants
    "P": _v(0.0, 0.05, 0.0, 0.0, 0.0, (1.0, 0.4, 0.2, 1.0, 1.0)),
    "B": _v(0.0, 0.05, 0.0, 0.0, 0.0, (1.0, 0.4, 0.2, 1.0, 1.0)),
    "M": _v(0.0, 0.05, 0.0, 0.0, 0.0, (1.0, 0.4, 0.2, 1.0, 1.0)),
    "F": _v(0.10, 0.10, 0.0, 0.45, 0.0, (1.2, 0.4, 0.3, 1.5, 1.5)),
    "V": _v(0.10, 0.10, 0.0, 0.45, 0.0, (1.2, 0.4, 0.3, 1.5, 1.5)),
    "TH": _v(0.18, 0.20, 0.0, 0.15, 0.10, (1.0, 0.4, 0.2, 0.6, 0.6)),
    "DH": _v(0.18, 0.20, 0.0, 0.15, 0.10, (0.8, 0.3, 0.2, 0.5, 0.5)),
    "S": _v(0.08, 0.35, 0.0, 0.20, 0.10, (1.5, 0.8, 0.3, 0.8, 0.8)),
    "Z": _v(0.08, 0.35, 0.0, 0.20, 0.10, (1.5, 0.8, 0.3, 0.8, 0.8)),
    "SH": _v(0.12, -0.20, 0.60, 0.25, 0.15, (1.2, 1.0, 1.5, 0.8, 0.8)),
    "ZH": _v(0.12, -0.20, 0.60, 0.25, 0.15, (1.2, 1.0, 1.5, 0.8, 0.8)),
    "CH": _v(0.10, -0.20, 0.60, 0.25, 0.15, (1.2, 1.0, 1.5, 0.8, 0.8)),
    "JH": _v(0.10, -0.20, 0.60, 0.25, 0.15, (1.2, 1.0, 1.5, 0.8, 0.8)),
    "T": _v(0.18, 0.20, 0.0, 0.10, 0.10, (0.7, 0.3, 0.1, 0.3, 0.3)),
    "D": _v(0.18, 0.20, 0.0, 0.10, 0.10, (0.6, 0.3, 0.1, 0.3, 0.3)),
    "N": _v(0.18, 0.20, 0.0, 0.10, 0.10, (0.6, 0.3, 0.1, 0.3, 0.3)),
    "L": _v(0.25, 0.15, 0.0, 0.10, 0.10, (0.6, 0.3, 0.1, 0.3, 0.3)),
    "K": _v(0.25, 0.10, 0.0, 0.05, 0.10, (0.4, 0.2, 0.1, 0.2, 0.2)),
    "G": _v(0.25, 0.10, 0.0, 0.05, 0.10, (0.4, 0.2, 0.1, 0.2, 0.2)),
    "NG": _v(0.22, 0.10, 0.0, 0.05, 0.10, (0.4, 0.2, 0.1, 0.2, 0.2)),
    "HH": _v(0.30, 0.10, 0.0, 0.05, 0.10, (0.05, 0.05, 0.05, 0.05, 0.05)),
    "R": _v(0.20, -0.15, 0.45, 0.10, 0.05, (0.8, 0.8, 1.2, 0.5, 0.5)),
    "W": _v(0.10, -0.45, 0.95, 0.00, 0.00, (1.0, 1.2, 2.0, 0.8, 0.8)),
    "Y": _v(0.12, 0.45, 0.0, 0.10, 0.05, (0.8, 0.8, 0.3, 0.5, 0.5)),
}
# diphthongs move between two monophthong shapes (first part, second part, split point)
DIPHTHONGS: dict[str, tuple[str, str, float]] = {
    "AW": ("AA", "UH", 0.5), "AY": ("AA", "IY", 0.5), "EY": ("EH", "IY", 0.55),
    "OW": ("AO", "UW", 0.5), "OY": ("AO", "IY", 0.5),
}
SILENT_MOUTH = _v(0.0, 0.0, 0.0, 0.0, 0.0, (1.5, 1.0, 1.0, 1.5, 1.5))
SHORT_PAUSE_MOUTH = _v(0.0, 0.0, 0.0, 0.0, 0.0, (0.3, 0.2, 0.2, 0.3, 0.3))
SHORT_PAUSE = 0.12       # a silence shorter than this barely closes the mouth
IDLE_PAUSE = 0.30        # a silence longer than this closes the mouth completely

# how far dominance reaches beyond a phone (seconds): before it (anticipation) and after it
REACH_BEFORE = np.array([0.050, 0.060, 0.120, 0.050, 0.050])
REACH_AFTER = np.array([0.040, 0.045, 0.070, 0.040, 0.040])

assert set(VISEMES) | set(DIPHTHONGS) == set(VOWELS + CONSONANTS), "every phoneme needs a viseme"


@dataclass
class _Segment:
    start: float
    end: float
    target: np.ndarray     # [5]
    dominance: np.ndarray  # [5]


def _mouth_segments(speech: Speech, rng: np.random.Generator) -> list[_Segment]:
    """Phones -> segments with mouth targets (diphthongs split in two); vowel openings
    scaled by stress and loudness, every target jittered a little."""
    speech_db = _speech_energy_median(speech)
    segments = []
    for p in speech.phones:
        if p.symbol == SILENCE:
            v = SILENT_MOUTH if p.end - p.start >= SHORT_PAUSE else SHORT_PAUSE_MOUTH
            segments.append(_Segment(p.start, p.end, np.array(v.target), np.array(v.dominance)))
            continue
        parts = [(p.symbol, p.start, p.end)]
        if p.symbol in DIPHTHONGS:
            first, second, split = DIPHTHONGS[p.symbol]
            mid = p.start + split * (p.end - p.start)
            parts = [(first, p.start, mid), (second, mid, p.end)]
        gain = 1.0
        if p.symbol in VOWELS:
            gain = {0: 0.85, 1: 1.12, 2: 1.0}.get(p.stress, 1.0)
            loud = _energy_at(speech, 0.5 * (p.start + p.end)) - speech_db
            gain *= float(np.clip(1.0 + 0.02 * loud, 0.75, 1.25))
        for symbol, start, end in parts:
            v = VISEMES[symbol]
            target = np.array(v.target, dtype=np.float64)
            jitter = rng.uniform(0.88, 1.12, size=5)
            target[[0, 3, 4]] *= gain * jitter[[0, 3, 4]]
            target[[1, 2]] *= jitter[[1, 2]]
            segments.append(_Segment(start, end, target, np.array(v.dominance)))
    return segments


def mouth_track(speech: Speech, style: Style, times: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """[T, 5] mouth parameters (MOUTH order) at `times`."""
    segments = _mouth_segments(speech, rng)
    lead = style.mouth_lead
    starts = np.array([s.start for s in segments])[:, None, None] - lead      # [S, 1, 1]
    ends = np.array([s.end for s in segments])[:, None, None] - lead
    targets = np.stack([s.target for s in segments])[:, None, :]                # [S, 1, 5]
    alphas = np.stack([s.dominance for s in segments])[:, None, :]
    t = times[None, :, None]                                                    # [1, T, 1]
    before = np.clip(starts - t, 0, None) / REACH_BEFORE                        # [S, T, 5]
    after = np.clip(t - ends, 0, None) / REACH_AFTER
    dominance = alphas * np.exp(-(before + after))
    rest = 1e-3                                                   # neutral when nothing reaches
    mouth = (dominance * targets).sum(axis=0) / (dominance.sum(axis=0) + rest)  # [T, 5]

    # bilabials close the lips fully (at least 60 ms, so that a video frame sees it)
    closure = np.zeros(len(times))
    for p in speech.phones:
        if p.symbol in BILABIALS:
            mid, half = 0.5 * (p.start + p.end) - lead, max(0.5 * (p.end - p.start), 0.03)
            closure = np.maximum(closure, _plateau(times, mid - half, mid + half, 0.03, 0.03))
    for name in OPENING:
        mouth[:, MOUTH.index(name)] *= 1.0 - closure

    # long silences: the mouth comes to rest, closed
    idle = _idle_gate(speech, times, lead)
    mouth *= (1.0 - idle)[:, None]

    mouth[:, [MOUTH.index(n) for n in OPENING]] *= style.mouth_amplitude
    mouth[:, [MOUTH.index("mouth_wide"), MOUTH.index("lip_pucker")]] *= (
        0.7 + 0.3 * style.mouth_amplitude)
    pucker = mouth[:, MOUTH.index("lip_pucker")]
    mouth[:, MOUTH.index("mouth_wide")] += style.smile * (1.0 - np.clip(pucker, 0, 1))
    return mouth


def _idle_gate(speech: Speech, times: np.ndarray, lead: float = 0.0) -> np.ndarray:
    """1 where the face rests in a long silence (the mouth closes after the last sound and
    opens again shortly before the next), 0 during speech."""
    gate = np.zeros(len(times))
    last = len(speech.phones) - 1
    for i, p in enumerate(speech.phones):
        if p.symbol != SILENCE or p.end - p.start < IDLE_PAUSE:
            continue
        start = p.start - lead + (0.0 if i == 0 else 0.10)
        end = p.end - lead - (0.0 if i == last else 0.08)
        gate = np.maximum(gate, _plateau(times, start, end, 0.08, 0.08))
    return gate


# --- speech activity and prosody helpers --------------------------------------------------

def _plateau(t: np.ndarray, start: float, end: float, rise: float, fall: float) -> np.ndarray:
    """1 on [start, end], raised-cosine ramps of `rise` before and `fall` after, else 0."""
    out = ((t >= start) & (t <= end)).astype(np.float64)
    r = (t < start) & (t > start - rise)
    out[r] = 0.5 * (1 + np.cos(np.pi * (start - t[r]) / rise))
    f = (t > end) & (t < end + fall)
    out[f] = 0.5 * (1 + np.cos(np.pi * (t[f] - end) / fall))
    return out


def _bump(t: np.ndarray, centre: float, rise: float, fall: float) -> np.ndarray:
    """Raised-cosine bump peaking (1) at `centre`, `rise` s up and `fall` s down."""
    return _plateau(t, centre, centre, rise, fall)


def _speech_runs(speech: Speech, bridge: float = 0.25) -> list[tuple[float, float]]:
    """(start, end) of stretches of speech, joining pauses shorter than `bridge`."""
    runs: list[list[float]] = []
    for p in speech.phones:
        if p.symbol == SILENCE:
            continue
        if runs and p.start - runs[-1][1] < bridge:
            runs[-1][1] = p.end
        else:
            runs.append([p.start, p.end])
    return [(a, b) for a, b in runs]


def _speaking(speech: Speech, times: np.ndarray) -> np.ndarray:
    """0..1: how much the face is in talking mode (smooth at the edges)."""
    v = np.zeros(len(times))
    for a, b in _speech_runs(speech):
        v = np.maximum(v, _plateau(times, a, b, 0.2, 0.4))
    return v


def _energy_at(speech: Speech, t: float) -> float:
    if speech.energy.size == 0:
        return 0.0
    k = int(np.clip(round(t * TRACK_RATE), 0, speech.energy.size - 1))
    return float(speech.energy[k])


def _speech_energy_median(speech: Speech) -> float:
    values = [_energy_at(speech, 0.5 * (p.start + p.end)) for p in speech.phones
              if p.symbol in VOWELS]
    return float(np.median(values)) if values else 0.0


def _prominence(speech: Speech) -> list[tuple[Phone, float]]:
    """Stressed vowels with a prominence score: z-scored loudness plus pitch excursion."""
    vowels = [p for p in speech.phones if p.symbol in VOWELS]
    if not vowels:
        return []
    loud = np.array([_energy_at(speech, 0.5 * (p.start + p.end)) for p in vowels])
    pitch = np.array([_f0_peak(speech, p.start, p.end) for p in vowels])
    length = np.array([p.end - p.start for p in vowels])

    def z(x):
        return (x - x.mean()) / (x.std() + 1e-6)

    voiced = pitch > 0
    semitones = np.zeros_like(pitch)
    if voiced.any():
        semitones[voiced] = 12 * np.log2(pitch[voiced] / np.median(pitch[voiced]))
    score = z(loud) + 0.15 * semitones + 0.5 * z(length)
    has_stress = any(p.stress for p in vowels)
    return [(p, float(s)) for p, s in zip(vowels, score, strict=True)
            if (p.stress == 1 if has_stress else s > 0.5)]


def _f0_peak(speech: Speech, start: float, end: float) -> float:
    a, b = int(start * TRACK_RATE), max(int(end * TRACK_RATE), int(start * TRACK_RATE) + 1)
    piece = speech.f0[a:b]
    return float(piece.max()) if piece.size else 0.0


def _smooth_noise(times: np.ndarray, rng: np.random.Generator, low: float, high: float,
                  std: float, waves: int = 4) -> np.ndarray:
    """A sum of `waves` random sinusoids between `low` and `high` Hz with standard deviation
    about `std`: slow, smooth, aperiodic drift."""
    freqs = rng.uniform(low, high, waves)
    phases = rng.uniform(0, 2 * np.pi, waves)
    amps = rng.uniform(0.5, 1.0, waves)
    amps *= std * np.sqrt(2.0 / np.sum(amps ** 2))
    return (amps[None, :] * np.sin(2 * np.pi * freqs[None, :] * times[:, None] + phases)).sum(1)


# --- head ----------------------------------------------------------------------------------

def head_track(speech: Speech, style: Style, times: np.ndarray, rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    amp, tempo = style.head_amplitude, style.head_tempo
    talking = _speaking(speech, times)
    # relative to the speaker's resting pose (see the module doc): rest is zero
    yaw, pitch, roll = np.zeros(len(times)), np.zeros(len(times)), np.zeros(len(times))

    # posture shifts at phrase boundaries (a new phrase often starts with a new pose), starting
    # within 80 ms of the first sound: a streaming model hears that much ahead (the feature
    # look-ahead), and a shift begun earlier could only be guessed, so it learned to make
    # almost none (yaw change over 1 s around sentence starts: std 1.9 degrees generated
    # against 4.2 in the data when shifts began 0.1-0.4 s before the sound)
    current = np.zeros(3)
    for start, _ in _speech_runs(speech):
        if rng.random() > 0.7:
            continue
        target = rng.normal(0.0, 1.0, 3) * np.array([4.0, 2.0, 2.0]) * amp
        duration = rng.uniform(0.4, 0.9) / tempo
        begin = start + rng.uniform(-0.08, 0.08)
        ramp = np.clip((times - begin) / duration, 0, 1)
        ramp = ramp * ramp * (3 - 2 * ramp)                   # smoothstep
        step = (target - current)[None, :] * ramp[:, None]
        yaw, pitch, roll = yaw + step[:, 0], pitch + step[:, 1], roll + step[:, 2]
        current = target

    # slow drift, livelier while talking
    drift_gain = 0.5 + 0.5 * talking
    yaw += drift_gain * _smooth_noise(times, rng, 0.05 * tempo, 0.35 * tempo, 1.5 * amp)
    pitch += drift_gain * _smooth_noise(times, rng, 0.05 * tempo, 0.35 * tempo, 1.0 * amp)
    roll += drift_gain * _smooth_noise(times, rng, 0.05 * tempo, 0.30 * tempo, 0.8 * amp)

    # gestures on prominent stressed syllables: mostly nods, some turns and tilts
    last = -np.inf
    for vowel, score in _prominence(speech):
        chance = style.nod_rate / (1.0 + np.exp(-1.5 * score))
        if vowel.start - last < 0.35 / tempo or rng.random() > chance:
            continue
        last = vowel.start
        width = rng.uniform(0.30, 0.50) / tempo
        shape = _bump(times, vowel.start + 0.03, 0.4 * width, 0.6 * width)
        strength = amp * (0.7 + 0.3 * float(np.clip(score, 0, 2)))
        kind = rng.random()
        if kind < 0.7:
            pitch += strength * rng.uniform(1.5, 4.0) * shape          # chin down and back
        elif kind < 0.85:
            yaw += strength * rng.uniform(1.0, 3.0) * rng.choice([-1, 1]) * shape
        else:
            roll += strength * rng.uniform(1.0, 2.5) * rng.choice([-1, 1]) * shape

    # end of a sentence: a settling nod, or for a question the head comes up and tilts
    for sentence in speech.sentences:
        if sentence.kind == "question":
            shape = _plateau(times, sentence.end - 0.1, sentence.end + 0.2, 0.5 / tempo,
                             0.8 / tempo)
            pitch -= amp * rng.uniform(1.0, 3.0) * shape
            roll += amp * rng.uniform(1.0, 3.0) * rng.choice([-1, 1]) * shape
        else:
            size = rng.uniform(1.0, 2.5) * (1.4 if sentence.kind == "exclamation" else 1.0)
            pitch += amp * size * _bump(times, sentence.end - 0.05, 0.25 / tempo, 0.5 / tempo)

    # breathing: a slow sway, clearest when the face idles
    breath_hz = rng.uniform(0.18, 0.30)
    breath = np.sin(2 * np.pi * breath_hz * times + rng.uniform(0, 2 * np.pi))
    idle_gain = 1.0 - 0.6 * talking
    pitch += 0.4 * breath * idle_gain

    head_x = (-0.003 * roll
              + _smooth_noise(times, rng, 0.03, 0.2, 0.008 * amp))
    head_y = (0.002 * pitch + 0.004 * breath * idle_gain
              + _smooth_noise(times, rng, 0.03, 0.2, 0.005 * amp))
    head_scale = 0.006 * talking + _smooth_noise(times, rng, 0.02, 0.15, 0.008 * amp)
    return {"head_yaw": yaw, "head_pitch": pitch, "head_roll": roll, "head_x": head_x,
            "head_y": head_y, "head_scale": head_scale}


# --- eyes and brows ------------------------------------------------------------------------

def blink_times(speech: Speech, style: Style, rng: np.random.Generator) -> list[float]:
    """Blink onsets: a renewal process at the speaker's rate (1.3x in pauses), plus blinks
    just after a phrase ends; never two within 0.6 s."""
    duration = speech.num_samples / AUDIO_RATE
    runs = _speech_runs(speech)

    def talking_at(t: float) -> bool:
        return any(a <= t <= b for a, b in runs)

    onsets = []
    t = rng.uniform(0.0, 60.0 / style.blink_rate)
    while t < duration:
        onsets.append(t)
        rate = style.blink_rate / 60.0 * (1.0 if talking_at(t) else 1.3)
        t += max(0.6, rng.gamma(3.0, 1.0 / (3.0 * rate)))
    for _, end in runs:
        if rng.random() < 0.35:
            onsets.append(end + rng.uniform(0.05, 0.3))
    kept: list[float] = []
    for t in sorted(onsets):
        if t < duration and (not kept or t - kept[-1] >= 0.6):
            kept.append(t)
    return kept


def blink_track(speech: Speech, style: Style, times: np.ndarray, rng: np.random.Generator
                ) -> dict[str, np.ndarray]:
    left = np.zeros(len(times))
    right = np.zeros(len(times))
    for onset in blink_times(speech, style, rng):
        close, hold = rng.uniform(0.05, 0.08), rng.uniform(0.03, 0.07)
        opening = rng.uniform(0.10, 0.16)
        depth = 1.0 if rng.random() > 0.15 else rng.uniform(0.6, 0.9)
        lag = rng.normal(0.0, 0.004)
        for track, shift, gain in ((left, 0.0, 1.0), (right, lag, rng.uniform(0.95, 1.0))):
            s = onset + shift
            shape = _plateau(times, s + close, s + close + hold, close, opening)
            np.maximum(track, depth * gain * shape, out=track)
    return {"blink_left": left, "blink_right": right}


def gaze_track(speech: Speech, style: Style, times: np.ndarray, head: dict[str, np.ndarray],
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fixations with 40 ms saccades; mostly at the viewer, away in some pauses."""
    duration = speech.num_samples / AUDIO_RATE
    runs = _speech_runs(speech)
    fixations = []                         # (start, x, y)
    t = 0.0
    while t < duration:
        talking = any(a - 0.2 <= t <= b for a, b in runs)
        if not talking and rng.random() < style.gaze_aversion:
            x, y = rng.choice([-1, 1]) * rng.uniform(0.25, 0.6), rng.uniform(-0.45, 0.15)
        elif rng.random() < 0.2:
            x, y = rng.normal(0, 0.2), rng.normal(0, 0.12)
        else:
            x, y = rng.normal(0, 0.06), rng.normal(0, 0.05)
        fixations.append((t, x, y))
        t += float(np.clip(rng.exponential(1.3), 0.3, 4.0))
    gx = np.zeros(len(times))
    gy = np.zeros(len(times))
    px, py = fixations[0][1], fixations[0][2]
    gx[:], gy[:] = px, py
    for start, x, y in fixations[1:]:
        ramp = np.clip((times - start) / 0.04, 0, 1)
        gx += (x - px) * ramp
        gy += (y - py) * ramp
        px, py = x, y
    # the eyes partly counter-rotate head motion (they stay on the viewer)
    gx -= 0.5 * head["head_yaw"] / 30.0
    gy -= 0.5 * head["head_pitch"] / 30.0
    return {"gaze_x": gx, "gaze_y": gy}


def pitch_peaks(speech: Speech, min_rise: float = 2.0) -> list[tuple[float, float]]:
    """(time, semitones above the speaker's median) of F0 peaks that stand out by at least
    `min_rise` semitones from the lowest pitch within 0.4 s."""
    f0 = speech.f0
    voiced = f0 > 0
    if voiced.sum() < 10:
        return []
    semis = np.full(f0.shape, np.nan)
    semis[voiced] = 12 * np.log2(f0[voiced] / np.median(f0[voiced]))
    peaks = []
    half, wide = int(0.15 * TRACK_RATE), int(0.4 * TRACK_RATE)
    for k in np.nonzero(voiced)[0]:
        near = semis[max(0, k - half): k + half + 1]
        if semis[k] < np.nanmax(near) or semis[k] < 1.0:
            continue
        around = semis[max(0, k - wide): k + wide + 1]
        if semis[k] - np.nanmin(around) >= min_rise:
            if not peaks or k / TRACK_RATE - peaks[-1][0] > 0.3:
                peaks.append((k / TRACK_RATE, float(semis[k])))
    return peaks


def brow_track(speech: Speech, style: Style, times: np.ndarray, rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    raise_ = np.zeros(len(times))
    for t, semis in pitch_peaks(speech):
        if rng.random() > 0.7:
            continue
        size = style.brow_amplitude * float(np.clip(semis / 5.0, 0.3, 1.0)) * rng.uniform(0.7, 1.2)
        hold = rng.uniform(0.1, 0.3)
        np.maximum(raise_, size * _plateau(times, t, t + hold, 0.15, 0.35), out=raise_)
    for sentence in speech.sentences:
        if sentence.kind == "question":
            size = 0.6 * style.brow_amplitude * rng.uniform(0.8, 1.2)
            shape = _plateau(times, sentence.end - 0.3, sentence.end + 0.1, 0.2, 0.5)
            np.maximum(raise_, size * shape, out=raise_)
    tone = rng.uniform(-0.05, 0.1) + _smooth_noise(times, rng, 0.02, 0.1, 0.02)
    asymmetry = rng.normal(0.0, 0.1)
    return {"brow_raise_left": tone + raise_ * (1 - asymmetry),
            "brow_raise_right": tone + raise_ * (1 + asymmetry)}


# --- the whole performance -----------------------------------------------------------------

def perform(speech: Speech, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Motion [T, D] float32 (motion_space order, clipped to its ranges)."""
    frames = frame_count(speech.num_samples)
    times = frame_times(frames)
    motion = motion_space.neutral(frames).astype(np.float64)
    mouth = mouth_track(speech, style, times, rng)
    for k, name in enumerate(MOUTH):
        motion[:, motion_space.index(name)] = mouth[:, k]
    head = head_track(speech, style, times, rng)
    parts = {**head, **blink_track(speech, style, times, rng),
             **gaze_track(speech, style, times, head, rng),
             **brow_track(speech, style, times, rng)}
    for name, values in parts.items():
        motion[:, motion_space.index(name)] = values
    return motion_space.clip(motion.astype(np.float32))
