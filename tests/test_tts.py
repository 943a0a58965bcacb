"""Offline TTS: phoneme timings agree with the audio; bad sentences are refused with a reason."""

import shutil

import numpy as np
import pytest

from train import tts
from train.tts import Delivery, SpeechError, Voice

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make system-packages)")

ESPEAK = [Voice("espeak", v) for v in ("en-us", "en-gb-x-rp+m1", "en-gb-scotland+klatt",
                                       "en-029+Annie", "en-us-nyc+f3")]
FESTIVAL = tts.festival_voices()
PIPER = tts.piper_voices()          # its network comes from a PyPI wheel on first use
ALL = ESPEAK + FESTIVAL + PIPER
DELIVERIES = (Delivery(rate=0.8, pitch=-2.0, warp=0.95), Delivery(rate=1.25, pitch=2.0, warp=1.05))

PLOSIVE_SENTENCE = ("Peter bought a pink cake, but a kid took a deep breath at the top of the "
                    "hill. Tap a pot, a cat, a cup.")
VOWEL_FINAL = ("I saw you in the sea.", "Where are you now?", "Give it to me.",
               "We went to the zoo.")


@pytest.fixture(scope="module")
def plosive_utterances():
    requests = [(PLOSIVE_SENTENCE, v, d) for v in ALL for d in DELIVERIES]
    return dict(zip([(r[1].id, r[2]) for r in requests], tts.speak_many(requests), strict=True))


@pytest.fixture(scope="module")
def vowel_final_utterances():
    requests = [(s, v, d) for v in ALL for d in DELIVERIES for s in VOWEL_FINAL]
    return [(r[1], u) for r, u in zip(requests, tts.speak_many(requests), strict=True)]


def test_festival_voices_are_installed():
    assert {v.name for v in FESTIVAL} == set(tts.FESTIVAL_VOICES), (
        "festival voices missing: apt-get install festival festvox-kallpc16k "
        "festvox-kdlpc16k festvox-us-slt-hts")


def test_every_engine_symbol_maps_into_the_inventory():
    for table in (tts.ESPEAK_TO_PHONEME, tts.FESTIVAL_TO_PHONEME):
        assert {s for s in table.values() if s is not None} <= set(tts.PHONEMES)
    assert len(tts.espeak_voices()) >= 8 * 40          # 8 accents, many variants
    assert not any("mb-" in v.name or "mbrola" in v.name for v in tts.all_voices())


def test_phones_cover_the_waveform(plosive_utterances):
    for (voice, _), utt in plosive_utterances.items():
        assert isinstance(utt, tts.Utterance), (voice, utt)
        assert utt.audio.dtype == np.float32 and utt.audio.ndim == 1
        assert utt.phones[0].start == 0.0
        assert utt.phones[-1].end == pytest.approx(utt.duration, abs=1e-9)
        for a, b in zip(utt.phones, utt.phones[1:], strict=False):
            assert a.end == pytest.approx(b.start, abs=1e-9) and a.end > a.start
        assert {p.symbol for p in utt.phones} <= set(tts.PHONEMES)
        assert any(p.stress == 1 for p in utt.phones if p.symbol in tts.VOWELS), voice
        assert len(utt.f0) == len(utt.energy) == -(-len(utt.audio) // 160)


def _high_band_db(audio: np.ndarray, rate: int = tts.RATE) -> np.ndarray:
    """Energy above 2 kHz in 1 ms frames (3 ms smoothing), dB."""
    spectrum = np.fft.rfft(audio)
    spectrum[np.fft.rfftfreq(len(audio), 1 / rate) < 2000] = 0
    y = np.fft.irfft(spectrum, len(audio))
    hop = rate // 1000
    n = len(y) // hop
    e = (y[: n * hop].reshape(n, hop) ** 2).mean(axis=1)
    return 10 * np.log10(np.convolve(e, np.ones(3) / 3, mode="same") + 1e-10)


def _releases(utt: tts.Utterance) -> list[tuple[tts.Phone, float, float]]:
    """Each voiceless stop between two vowels with the times of its closure and its release
    burst, found in the audio: the quietest 10 ms around the stop is the closure; the burst
    is the first moment after it when the high band rises 15 dB above it. Stops said
    without a burst (a flapped /t/ in "but a") are left out."""
    e = _high_band_db(utt.audio)
    out = []
    phones = utt.phones
    for i in range(1, len(phones) - 1):
        p = phones[i]
        if (p.symbol in ("P", "T", "K") and phones[i - 1].symbol in tts.VOWELS
                and phones[i + 1].symbol in tts.VOWELS):
            a, b = int((p.start - 0.03) * 1000), int((phones[i + 1].start + 0.02) * 1000)
            smooth = np.convolve(e[a:b], np.ones(10) / 10, mode="valid")
            closure = a + int(np.argmin(smooth)) + 5
            rise = np.nonzero(e[closure:b] > e[closure] + 15)[0]
            if rise.size:
                out.append((p, closure / 1000, (closure + rise[0]) / 1000))
    return out


def test_plosive_burst_falls_in_its_phoneme(plosive_utterances):
    for (voice, delivery), utt in plosive_utterances.items():
        releases = _releases(utt)
        assert len(releases) >= 7, (voice, len(releases))
        outside = [max(p.start - t, t - p.end) for p, closure, burst in releases
                   for t in (closure, burst) if not p.start <= t <= p.end]
        # 1 ms analysis frames: a burst up to 10 ms from the boundary counts as inside. The
        # neural voice's times are its network's learnt durations in 11.6 ms frames (13 ms
        # at the slow delivery): a little looser
        few, most = (3, 0.030) if voice.startswith("piper/") else (1, 0.025)
        assert sum(d > 0.010 for d in outside) <= few, (voice, delivery, outside)
        assert all(d <= most for d in outside), (voice, delivery, outside)


def _frame_db(audio: np.ndarray) -> np.ndarray:
    hop = tts.RATE // 100
    n = len(audio) // hop
    return 10 * np.log10((audio[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-12)


def test_last_phoneme_ends_with_the_waveform(vowel_final_utterances):
    for voice, utt in vowel_final_utterances:
        assert isinstance(utt, tts.Utterance), (voice, utt)
        # the engine's own labels reach the end of its waveform (festival's diphone voices
        # write a 21-31 ms overlap-add window tail after the final pause's label)
        slack = 0.035 if voice.name.endswith("_diphone") else 0.030
        assert utt.duration - utt.engine_end <= slack, (voice, utt.text)
        # the last spoken phoneme still sounds in its final 60 ms, and 80 ms after its end
        # the waveform is over or quiet (festival's pauses hold noise ~35 dB down)
        e = _frame_db(utt.audio)
        loudest = e.max()
        last = [p for p in utt.phones if p.symbol != tts.SILENCE][-1]
        tail = e[int((last.end - 0.06) * 100): int(last.end * 100)]
        assert tail.max() > loudest - 30, (voice, utt.text)
        after = e[int((last.end + 0.08) * 100):]
        assert after.size == 0 or after.max() < loudest - 25, (voice, utt.text)


def test_delivery_changes_rate_and_pitch():
    for voice in (ESPEAK[0], *FESTIVAL, *PIPER):
        slow, fast, low, high = tts.speak_many([
            ("The quick brown fox jumps over the lazy dog.", voice, d) for d in
            (Delivery(rate=0.8), Delivery(rate=1.25), Delivery(pitch=-3.0), Delivery(pitch=3.0))])
        assert fast.duration < 0.85 * slow.duration, voice
        f_low, f_high = (np.median(u.f0[u.f0 > 0]) for u in (low, high))
        assert f_high > f_low * 1.15, (voice, f_low, f_high)


@pytest.mark.parametrize("voice", PIPER, ids=lambda v: v.id)
def test_the_neural_voice_depends_only_on_text_voice_and_delivery(voice):
    text = "Tap a pot, a cat, a cup."
    first, other, again = tts.speak_many([(text, voice, Delivery()), ("Hello there.", voice,
                                          Delivery()), (text, voice, Delivery())])
    assert np.array_equal(first.audio, again.audio) and first.phones == again.phones
    livelier = tts.speak(text, voice, Delivery(pitch_range=1.3))   # more varied: not the same
    assert not np.array_equal(first.audio[: livelier.audio.size],
                              livelier.audio[: first.audio.size])


def test_warp_scales_time_and_pitch():
    plain, warped = tts.speak_many([("Hello there, how are you?", ESPEAK[0], Delivery()),
                                    ("Hello there, how are you?", ESPEAK[0], Delivery(warp=1.1))])
    assert warped.duration == pytest.approx(plain.duration / 1.1, rel=0.01)
    assert warped.phones[3].start == pytest.approx(plain.phones[3].start / 1.1, abs=0.002)
    ratio = np.median(warped.f0[warped.f0 > 0]) / np.median(plain.f0[plain.f0 > 0])
    assert ratio == pytest.approx(1.1, rel=0.04)


def test_pitch_tracker_on_a_known_tone():
    rate = tts.RATE
    t = np.arange(rate) / rate
    f = 110.0 * 2 ** (t * 1.0)                                   # 110 -> 220 Hz glide
    phase = 2 * np.pi * np.cumsum(f) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)).astype(np.float32) * 0.3
    audio = np.concatenate([np.zeros(rate // 2, np.float32), voiced])
    f0, energy = tts.prosody(audio)
    assert (f0[:40] == 0).all() and energy[:40].max() < -60         # silence: unvoiced
    k = np.arange(60, 145)                                           # well inside the tone
    expected = 110.0 * 2 ** (k / 100 - 0.5)
    assert np.allclose(f0[k], expected, rtol=0.03)


@pytest.mark.parametrize("voice", [ESPEAK[0], *FESTIVAL, *PIPER], ids=lambda v: v.id)
def test_unspeakable_sentences_are_skipped_with_a_reason(voice):
    texts = ["", "   ", "!!! ... ???", "你好，世界", "a" * 500, "Good morning, everyone."]
    results = tts.speak_many([(t, voice, Delivery()) for t in texts])
    for text, r in zip(texts[:-1], results[:-1], strict=True):
        assert isinstance(r, SpeechError), text
        assert r.reason
    assert "speakable" in results[0].reason and "too long" in results[4].reason
    assert isinstance(results[-1], tts.Utterance)
    with pytest.raises(SpeechError):
        tts.speak("", voice)


@pytest.mark.skipif(not FESTIVAL, reason="festival is not installed")
def test_festival_crash_costs_only_its_sentence():
    voice = FESTIVAL[0]
    # an empty SynthText makes festival segfault: the batch must go on after it
    raws = tts._speak_festival_batch([("Hello there.", voice, Delivery()),
                                      ("", voice, Delivery()),
                                      ("Good morning.", voice, Delivery())])
    assert not isinstance(raws[0], SpeechError) and not isinstance(raws[2], SpeechError)
    assert isinstance(raws[1], SpeechError) and raws[1].reason


def test_unknown_voice_is_refused():
    (r,) = tts.speak_many([("Hello.", "festival/no_such_voice", Delivery())])
    assert isinstance(r, SpeechError) and "not supported" in r.reason
    with pytest.raises(ValueError):
        Voice.parse("mbrola-us1")
