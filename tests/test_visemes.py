"""Phonemes + prosody -> performance: closed bilabials, rounding, anticipation, idle silence."""

import shutil

import numpy as np
import pytest

from models import motion_space
from train import tts, visemes
from train.tts import SILENCE, Phone
from train.visemes import Sentence, Speech, Style

JAW, PUCKER = motion_space.index("jaw_open"), motion_space.index("lip_pucker")
LIPS_OPEN = [motion_space.index(n) for n in visemes.OPENING]
MOUTH = [motion_space.index(n) for n in visemes.MOUTH]

needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                               reason="espeak-ng is not installed (make system-packages)")


def speech_from(utterances: list[tts.Utterance], lead: float = 1.0, gap: float = 0.8,
                trail: float = 1.5) -> Speech:
    """Utterances on one timeline with silences, as train.synth assembles them."""
    pieces = [np.zeros(int(lead * tts.RATE), np.float32)]
    phones = [Phone(SILENCE, 0.0, lead)]
    sentences = []
    t = lead
    for k, u in enumerate(utterances):
        pieces.append(u.audio)
        phones += [Phone(p.symbol, p.start + t, p.end + t, p.stress) for p in u.phones]
        spoken = [p for p in u.phones if p.symbol != SILENCE]
        sentences.append(Sentence(spoken[0].start + t, spoken[-1].end + t,
                                  Sentence.kind_of(u.text)))
        t += u.duration
        pause = trail if k == len(utterances) - 1 else gap
        pieces.append(np.zeros(int(round(pause * tts.RATE)), np.float32))
        phones.append(Phone(SILENCE, t, t + len(pieces[-1]) / tts.RATE))
        t += len(pieces[-1]) / tts.RATE
    audio = np.concatenate(pieces)
    merged: list[Phone] = []
    for p in phones:
        if merged and p.symbol == SILENCE and merged[-1].symbol == SILENCE:
            merged[-1].end = p.end
        elif p.end > p.start:
            merged.append(p)
    merged[-1].end = len(audio) / tts.RATE
    f0, energy = tts.prosody(audio)
    return Speech(merged, f0, energy, len(audio), sentences)


@pytest.fixture(scope="module")
def speeches():
    texts = ["Bob may buy my pumpkin, Mom.", "Would you move the blue boot?",
             "Peter made a map of the beach.", "Is it cheap? Maybe, but who knows!"]
    voices = [tts.Voice("espeak", "en-us"), tts.Voice("espeak", "en-gb-x-rp+f3"),
              *tts.festival_voices()]
    out = []
    for voice in voices:
        utts = tts.speak_many([(t, voice, tts.Delivery()) for t in texts])
        out.append((voice.id, speech_from(utts)))
    return out


def _frame_at(t: float) -> int:
    return int(np.floor(t * visemes.FPS))


def test_motion_shape_names_and_ranges(speeches):
    for _, speech in speeches:
        motion = visemes.perform(speech, Style(), np.random.default_rng(0))
        assert motion.dtype == np.float32
        assert motion.shape == (-(-speech.num_samples // 640), motion_space.D)
        assert (motion >= motion_space.LOW).all() and (motion <= motion_space.HIGH).all()
        assert np.isfinite(motion).all()


@needs_tts
def test_bilabials_close_the_mouth(speeches):
    rng = np.random.default_rng(1)
    for voice, speech in speeches:
        for _ in range(3):
            style = visemes.sample_style(rng)
            motion = visemes.perform(speech, style, rng)
            bilabials = [p for p in speech.phones if p.symbol in visemes.BILABIALS]
            assert len(bilabials) >= 10
            for p in bilabials:
                # the frame showing the middle of the closure (the mouth leads the sound)
                k = _frame_at(0.5 * (p.start + p.end) - style.mouth_lead)
                assert motion[k, LIPS_OPEN].max() < 0.02, (voice, p, motion[k, LIPS_OPEN])
            # ... while vowels open it
            vowels = [p for p in speech.phones if p.symbol in tts.VOWELS]
            open_ = [motion[_frame_at(0.5 * (p.start + p.end) - style.mouth_lead), JAW]
                     for p in vowels if p.end - p.start > 0.06]
            assert np.mean(open_) > 0.2, voice


@needs_tts
def test_rounded_vowels_round_the_lips(speeches):
    for voice, speech in speeches:
        style = Style()
        motion = visemes.perform(speech, style, np.random.default_rng(2))

        def pucker(symbols, motion=motion, speech=speech, lead=style.mouth_lead):
            return np.mean([motion[_frame_at(0.5 * (p.start + p.end) - lead), PUCKER]
                            for p in speech.phones if p.symbol in symbols])

        assert pucker({"UW", "W"}) > 0.45, voice
        assert pucker({"UW", "W"}) > pucker({"IY", "IH", "EH", "AE"}) + 0.3, voice


@needs_tts
def test_mouth_moves_before_the_sound(speeches):
    """Anticipation: at the acoustic onset after a pause the mouth is already opening, and
    rounding spreads back over the consonants before a rounded vowel."""
    for voice, speech in speeches:
        style = Style(mouth_lead=0.04)
        times = visemes.frame_times(visemes.frame_count(speech.num_samples))
        mouth = visemes.mouth_track(speech, style, times, np.random.default_rng(3))
        for s in speech.sentences:
            first = next(p for p in speech.phones if p.start >= s.start - 1e-9)
            if first.symbol in visemes.BILABIALS:
                continue
            k = int(np.floor(first.start * visemes.FPS - 0.5))   # last frame before the onset
            assert times[k] <= first.start
            assert mouth[k, 0] > 0.03 or mouth[k, 2] > 0.05, (voice, first)
        # "Would you move the blue boot?": /b/ before /uw/ is already rounded
        for i, p in enumerate(speech.phones[:-1]):
            if p.symbol == "B" and speech.phones[i + 1].symbol == "UW":
                k = _frame_at(0.5 * (p.start + p.end) - style.mouth_lead)
                assert mouth[k, 2] > 0.3, (voice, p)


def test_silence_is_idle_with_the_mouth_closed():
    speech = Speech.silence(30.0)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        style = visemes.sample_style(rng)
        motion = visemes.perform(speech, style, rng)
        mouth = motion[:, MOUTH]
        assert np.abs(mouth[:, [0, 2, 3, 4]]).max() == 0.0           # jaw and lips at rest
        wide = motion[:, motion_space.index("mouth_wide")]
        assert np.allclose(wide, np.clip(style.smile, -0.5, 1.0))     # resting smile only
        # alive: breathing sway and drift move the head a little, the eyes blink and look
        pitch = motion[:, motion_space.index("head_pitch")]
        yaw = motion[:, motion_space.index("head_yaw")]
        assert 0.05 < pitch.std() < 3.0 and yaw.std() < 4.0
        blinks = visemes.blink_times(speech, style, np.random.default_rng(seed))
        assert 3 <= len(blinks) <= 25                                  # 6-50 per minute
        closed = motion[:, motion_space.index("blink_left")] > 0.9
        assert closed.any() and closed.mean() < 0.25
        assert np.ptp(motion[:, motion_space.index("gaze_x")]) > 0.02


def test_blink_rate_is_natural_and_higher_in_pauses():
    speaking = Speech([Phone("AH", 0.0, 60.0, 1)], np.full(6000, 120.0, np.float32),
                      np.full(6000, -20.0, np.float32), 60 * 16000)
    silent = Speech.silence(60.0)
    talk, rest = [], []
    for seed in range(30):
        style = Style(blink_rate=17.0)
        talk.append(len(visemes.blink_times(speaking, style, np.random.default_rng(seed))))
        rest.append(len(visemes.blink_times(silent, style, np.random.default_rng(seed))))
    assert 12 <= np.mean(talk) <= 22 and np.mean(rest) > np.mean(talk) * 1.15
    assert 15 <= np.mean(rest) <= 30


def test_same_seed_same_motion_and_style_changes_it(speeches):
    _, speech = speeches[0]
    style = visemes.sample_style(np.random.default_rng(5))
    a = visemes.perform(speech, style, np.random.default_rng(7))
    b = visemes.perform(speech, style, np.random.default_rng(7))
    c = visemes.perform(speech, style, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    calm = visemes.perform(speech, Style(head_amplitude=0.3, nod_rate=0.1),
                           np.random.default_rng(7))
    lively = visemes.perform(speech, Style(head_amplitude=1.8, nod_rate=0.9),
                             np.random.default_rng(7))
    head = [motion_space.index(n) for n in ("head_yaw", "head_pitch", "head_roll")]
    assert lively[:, head].std(axis=0).sum() > 2 * calm[:, head].std(axis=0).sum()
    small = visemes.perform(speech, Style(mouth_amplitude=0.75), np.random.default_rng(7))
    big = visemes.perform(speech, Style(mouth_amplitude=1.25), np.random.default_rng(7))
    assert big[:, JAW].mean() > 1.4 * small[:, JAW].mean()


def test_style_round_trip():
    style = visemes.sample_style(np.random.default_rng(0))
    assert Style.from_dict(style.to_dict()) == style
    assert style.vector().shape == (len(visemes.STYLE_NAMES),)


def test_brows_rise_on_pitch_peaks_and_head_nods_on_stress():
    """A synthetic phrase: flat pitch with one 6-semitone accent on a stressed vowel."""
    seconds = 4.0
    n = int(seconds * tts.TRACK_RATE)
    f0 = np.full(n, 120.0, np.float32)
    t = np.arange(n) / tts.TRACK_RATE
    f0 *= (2 ** (6 / 12 * np.exp(-0.5 * ((t - 2.0) / 0.08) ** 2))).astype(np.float32)
    energy = np.full(n, -25.0, np.float32)
    energy[(t > 1.9) & (t < 2.15)] = -15.0
    phones = [Phone(SILENCE, 0.0, 0.5)]
    for start in np.arange(0.5, 3.5, 0.25):
        stressed = abs(start - 1.9) < 0.01
        phones.append(Phone("T", start, start + 0.1))
        phones.append(Phone("AA", start + 0.1, start + 0.25, 1 if stressed else 0))
    phones.append(Phone(SILENCE, 3.5, seconds))
    speech = Speech(phones, f0, energy, int(seconds * 16000))
    peaks = visemes.pitch_peaks(speech)
    assert len(peaks) == 1 and abs(peaks[0][0] - 2.0) < 0.03
    brow = motion_space.index("brow_raise_left")
    pitch = motion_space.index("head_pitch")
    raised, nodded = 0, 0
    for seed in range(20):
        m = visemes.perform(speech, Style(brow_amplitude=0.5, nod_rate=1.0, head_amplitude=1.0),
                            np.random.default_rng(seed))
        near, far = slice(_frame_at(1.9), _frame_at(2.4)), slice(_frame_at(0.5), _frame_at(1.5))
        raised += m[near, brow].max() > m[far, brow].max() + 0.1
        nodded += np.ptp(m[near, pitch]) > 1.0
    assert raised >= 10 and nodded >= 10


@needs_tts
def test_pauses_in_speech_close_the_mouth(speeches):
    for voice, speech in speeches:
        rng = np.random.default_rng(4)
        style = visemes.sample_style(rng)
        motion = visemes.perform(speech, style, rng)
        times = visemes.frame_times(len(motion))
        pauses = [p for p in speech.phones if p.symbol == SILENCE and p.end - p.start >= 0.6]
        assert len(pauses) >= 4, voice
        for p in pauses:
            inside = (times > p.start + 0.2) & (times < p.end - 0.2)
            assert np.abs(motion[inside][:, LIPS_OPEN]).max() < 1e-3, (voice, p)
            assert np.abs(motion[inside, PUCKER]).max() < 1e-3, (voice, p)
