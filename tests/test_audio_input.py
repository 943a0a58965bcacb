"""stream/audio.py: any rate/layout in, 16 kHz mono out; voice activity; bad input."""

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from models.audio_io import AudioInputError, load_audio
from stream.audio import RATE, AudioInput, Resampler
from stream.vad import speech_fraction


def sine(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def push_in_pieces(buf: AudioInput, x: np.ndarray, rate: int, channels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(x):
        n = int(rng.integers(int(0.01 * rate), int(0.5 * rate)))   # 10 ms .. 500 ms
        buf.push(x[i:i + n], rate, channels)
        i += n
    buf.flush()


@pytest.mark.parametrize("rate, target", [(48000, 16000), (44100, 16000), (8000, 16000),
                                          (16000, 48000), (22050, 48000)])
def test_resampler_is_ffmpegs_on_one_thread(rate, target):
    """Resampler gives av.AudioResampler's samples, chunk for chunk and at the flush, and
    opens no thread pool (av's keeps one thread per core a resampler). Threads are counted in
    a fresh interpreter: this one's may come and go with other tests."""
    rng = np.random.default_rng(rate)
    x = 0.1 * rng.standard_normal(2 * rate).astype(np.float32)
    reference, ours = av.AudioResampler(format="flt", layout="mono", rate=target), \
        Resampler(rate, target)
    expected, got, start = [], [], 0
    while start < x.size:
        size = int(rng.integers(1, 3000))
        frame = av.AudioFrame.from_ndarray(x[None, start:start + size], format="flt",
                                           layout="mono")
        frame.sample_rate = rate
        expected += [f.to_ndarray().reshape(-1) for f in reference.resample(frame)]
        got.append(ours(x[start:start + size]))
        start += size
    expected += [f.to_ndarray().reshape(-1) for f in reference.resample(None)]
    got.append(ours.flush())
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(expected))

    count = ("import os, numpy as np; from stream.audio import Resampler; "
             "n = lambda: len(os.listdir('/proc/self/task')); before = n(); "
             f"r = [Resampler({rate}, {target}) for _ in range(4)]; "
             "[f(np.zeros(960, np.float32)) for f in r]; print(n() - before)")
    added = subprocess.run([sys.executable, "-c", count], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).parents[1]).stdout
    assert int(added) == 0


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampler_keeps_1khz_sine_at_1khz(rate):
    buf = AudioInput(vad=False)
    push_in_pieces(buf, sine(1000, rate, 2.0), rate, 1, seed=rate)
    y = buf.read(0, buf.end)
    assert abs(y.size - 2 * RATE) <= 2                 # duration kept, sample-accurate
    spectrum = np.abs(np.fft.rfft(y[1000:-1000] * np.hanning(y.size - 2000)))
    freqs = np.fft.rfftfreq(y.size - 2000, 1 / RATE)
    assert abs(freqs[spectrum.argmax()] - 1000) < 2
    # phase: the output lines up with a 1 kHz sine at 16 kHz (time stamps are exact)
    reference = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(y.size) / RATE)
    assert np.abs(y[500:-500] - reference[500:-500]).max() < 1e-3


def test_stereo_int16_is_mixed_to_mono():
    x = (sine(1000, 48000, 0.5, channels=2) * 32767).astype(np.int16)
    buf = AudioInput(vad=False)
    buf.push(x, 48000, channels=2)
    buf.flush()
    y = buf.read(0, buf.end)
    assert abs(y.size - 8000) <= 1 and abs(np.abs(y[200:-200]).max() - 0.5) < 0.01


def test_anti_aliasing_removes_tones_above_8khz():
    buf = AudioInput(vad=False)
    push_in_pieces(buf, sine(10000, 48000, 1.0), 48000, 1, seed=1)
    y = buf.read(0, buf.end)
    assert np.sqrt(np.mean(y[500:-500] ** 2)) < 1e-3   # a 10 kHz tone would alias to 6 kHz


def test_chunking_does_not_change_the_samples(real_speech):
    x = load_audio("/usr/share/sounds/alsa/Front_Center.wav", rate=48000)
    one, many = AudioInput(vad=False), AudioInput(vad=False)
    one.push(x, 48000)
    one.flush()
    push_in_pieces(many, x, 48000, 1, seed=3)
    assert one.end == many.end
    np.testing.assert_array_equal(one.read(0, one.end), many.read(0, many.end))


def test_vad_finds_speech_in_real_recording_and_none_in_silence_or_noise(real_speech):
    assert speech_fraction(real_speech) > 0.4
    assert speech_fraction(np.zeros(3 * RATE, np.float32)) == 0.0
    noise = np.random.default_rng(0).standard_normal(3 * RATE).astype(np.float32) * 0.3
    assert speech_fraction(noise) < 0.05
    recorded_noise = load_audio("/usr/share/sounds/alsa/Noise.wav")
    assert speech_fraction(recorded_noise) < 0.05


def test_streaming_vad_marks_speaking(real_speech):
    buf = AudioInput()
    buf.push(real_speech[: RATE], RATE)
    assert buf.speaking()
    buf.push(np.zeros(RATE, np.float32), RATE)
    assert not buf.speaking()


def test_vad_after_a_cut_hears_the_new_audio_where_it_lies(real_speech):
    """A barge-in cuts the timeline mid-speech and new audio follows at the cut: the voice
    activity at each sample is that of the audio now there (as a VAD that never heard the
    cut-away audio says), not of the cut-away audio's frames counted on from the old end
    (which once let the media clock skip speech it took for silence)."""
    cut = RATE + 300                           # mid-speech, mid-frame
    new = np.concatenate([np.zeros(RATE // 2, np.float32), real_speech[:2 * RATE]])
    buf = AudioInput()
    buf.push(real_speech[:3 * RATE], RATE)
    buf.truncate(cut)
    buf.push(new, RATE)
    reference = AudioInput()
    reference.push(np.concatenate([real_speech[:cut], new]), RATE)
    assert buf.end == reference.end == cut + new.size
    at = range(cut + 3200, buf.end - 512, 256)  # (the first 200 ms: the kept state settles)
    ours = [buf.vad.speech_at(i) for i in at]
    assert None not in ours
    agree = np.mean([a == reference.vad.speech_at(i) for a, i in zip(ours, at, strict=True)])
    assert agree > 0.95, agree
    assert not any(ours[:len(range(cut + 3200, cut + RATE // 2, 256)) - 4])   # the pause
    assert np.mean(ours) > 0.3                                               # the speech


@pytest.mark.parametrize("pcm, rate, channels, message", [
    (np.zeros(0, np.float32), 16000, 1, "empty"),
    (np.array([0.1, np.nan, 0.2], np.float32), 16000, 1, "NaN"),
    (np.array([0.1, np.inf, 0.2], np.float32), 16000, 1, "NaN or infinite"),
    (np.zeros(160, np.float32), 96000, 1, "unsupported sample rate"),
    (np.zeros(160, np.float32), 4000, 1, "unsupported sample rate"),
    (np.zeros(161, np.int16), 48000, 2, "whole number"),
    (np.zeros(160, np.int32), 16000, 1, "unsupported sample type"),
    (np.zeros(160, np.float32), 16000, 6, "channel"),
])
def test_bad_input_raises_clear_error_and_buffer_stays_usable(pcm, rate, channels, message):
    buf = AudioInput(vad=False)
    buf.push(sine(1000, 48000, 0.1), 48000)
    before = buf.end
    with pytest.raises(AudioInputError, match=message):
        buf.push(pcm, rate, channels)
    assert buf.end == before
    buf.push(sine(1000, 48000, 0.1), 48000)
    buf.flush()
    assert buf.end == pytest.approx(2 * 1600, abs=2)


def test_rate_change_mid_stream_keeps_time():
    buf = AudioInput(vad=False)
    buf.push(sine(1000, 48000, 0.5), 48000)
    buf.push(sine(1000, 8000, 0.5), 8000)
    buf.flush()
    assert abs(buf.end - RATE) <= 2


def test_truncated_and_non_audio_files(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(AudioInputError, match="not a readable audio file|no audio"):
        load_audio(junk)
    wav = open("/usr/share/sounds/alsa/Front_Center.wav", "rb").read()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(wav[:40])
    with pytest.raises(AudioInputError):
        load_audio(cut)


def test_discard_and_read_bounds():
    buf = AudioInput(vad=False)
    buf.push(np.ones(1000, np.float32), RATE)
    assert buf.read(-10, 10)[:10].sum() == 0 and buf.read(-10, 10)[10:].sum() == 10
    buf.discard_before(500)
    with pytest.raises(IndexError):
        buf.read(100, 200)
    with pytest.raises(IndexError):
        buf.read(900, 1100)
    assert buf.read(500, 1000).size == 500
