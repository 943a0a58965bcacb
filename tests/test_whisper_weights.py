"""The converted Whisper tiny.en matches CTranslate2's own model and transcribes speech."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import whisper

from models.audio_io import load_audio
from models.whisper_weights import ct2_model_path, load_whisper_tiny_en, read_ct2
from tests.conftest import espeak_wav


@pytest.fixture(scope="module")
def model():
    return load_whisper_tiny_en()


def test_ct2_file_parses_completely():
    variables = read_ct2(ct2_model_path())
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]


def test_encoder_matches_ctranslate2_on_real_speech(model, real_speech):
    ctranslate2 = pytest.importorskip("ctranslate2")
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(real_speech)))[None]
    reference = ctranslate2.models.Whisper(str(ct2_model_path().parent), device="cpu",
                                           compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(mel.numpy()),
                                       to_cpu=True))
    with torch.no_grad():
        ours = model.encoder(mel).numpy()
    assert ours.shape == theirs.shape == (1, 1500, 384)
    relative = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    assert relative < 1e-4
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4


def test_transcribes_real_recording(model, real_speech_path):
    text = model.transcribe(load_audio(real_speech_path), fp16=False)["text"].lower()
    assert "front" in text and "center" in text


def test_cli_transcribes_espeak_sentence(tmp_path):
    wav = espeak_wav("Please call the doctor tomorrow morning.", tmp_path / "s.wav")
    out = subprocess.run([sys.executable, "-m", "models.audio", "--transcribe", str(wav)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout.lower()
    assert "doctor" in text and "tomorrow" in text


def test_cli_transcribes_festival_sentence(tmp_path):
    import shutil

    if not shutil.which("text2wave"):
        pytest.fail("festival is missing: apt-get install festival festvox-kallpc16k")
    txt = tmp_path / "s.txt"
    txt.write_text("Please open the window before dinner.")
    wav = tmp_path / "s.wav"
    subprocess.run(["text2wave", str(txt), "-o", str(wav)], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "models.audio", "--transcribe", str(wav)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout.lower()
    assert "window" in text and "dinner" in text


@pytest.mark.parametrize("content", [b"", b"this is not audio at all " * 100, "truncated"])
def test_cli_bad_file_gives_clear_error_without_traceback(tmp_path, real_speech_path, content):
    bad = tmp_path / "bad.wav"
    if content == "truncated":
        content = real_speech_path.read_bytes()[:30]   # header cut inside the RIFF header
    bad.write_bytes(content)
    out = subprocess.run([sys.executable, "-m", "models.audio", "--transcribe", str(bad)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr


def test_cli_missing_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "models.audio", "--transcribe",
                          str(tmp_path / "nope.wav")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no such file" in out.stderr and "Traceback" not in out.stderr
