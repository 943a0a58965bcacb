"""models/audio.py: fixed-window Whisper features, streaming equals offline, ONNX parity."""

import numpy as np
import pytest

from models.audio import AudioFeatureExtractor, FeatureConfig
from models.audio_io import load_audio
from stream.audio import AudioInput


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_shapes_and_frame_count(extractor, real_speech):
    c = extractor.config
    feats = extractor.features(real_speech[:12345])
    assert feats.shape == (int(np.ceil(12345 / 640)), c.stack, 384)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert c.stack == 10 and c.latency_ms == pytest.approx(160.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_random_chunks_equals_offline(extractor, seed):
    """48 kHz audio pushed in 10-500 ms pieces through AudioInput and FeatureStream."""
    x48 = np.concatenate([load_audio(f"/usr/share/sounds/alsa/{n}.wav", rate=48000)
                          for n in ("Front_Left", "Rear_Center")])
    whole = AudioInput(vad=False)
    whole.push(x48, 48000)
    whole.flush()
    offline = extractor.features(whole.read(0, whole.end))

    rng = np.random.default_rng(seed)
    buf, stream, got, taken, i = AudioInput(vad=False), extractor.stream(), [], 0, 0
    while i < x48.size:
        n = int(rng.integers(480, 24000))               # 10 ms .. 500 ms at 48 kHz
        buf.push(x48[i:i + n], 48000)
        i += n
        stream.push(buf.read(taken, buf.end))
        taken = buf.end
        buf.discard_before(taken)
        got.append(stream.pull())
    buf.flush()
    stream.push(buf.read(taken, buf.end))
    got.append(stream.finish())
    streamed = np.concatenate(got)
    assert streamed.shape == offline.shape
    assert relative_error(streamed, offline) < 1e-5


def test_frames_are_emitted_as_soon_as_block_plus_lookahead_arrives(extractor):
    c = extractor.config
    stream = extractor.stream()
    need = c.window_end(0)                              # (H + L) frames of audio
    stream.push(np.zeros(need - 1, np.float32))
    assert stream.pull().shape[0] == 0
    stream.push(np.zeros(1, np.float32))
    assert stream.pull().shape[0] == c.block_frames
    assert stream.audio.size <= c.window_samples        # old audio is released


def test_features_depend_on_the_audio_near_the_frame(extractor, real_speech):
    """Changing audio 2 s later must not change earlier frames (causal up to the look-ahead)."""
    a = real_speech[:5 * 16000].copy()
    b = a.copy()
    b[3 * 16000:] = 0.0
    fa, fb = extractor.features(a), extractor.features(b)
    c = extractor.config
    # frames whose window ends before sample 48000 are identical
    safe = (48000 // c.samples_per_frame) - c.block_frames - c.lookahead_frames
    np.testing.assert_allclose(fa[:safe], fb[:safe], rtol=0, atol=1e-5)
    assert np.abs(fa[safe + 10:] - fb[safe + 10:]).max() > 0.1


def test_speech_and_silence_features_differ(extractor, real_speech):
    feats = extractor.features(real_speech[:3 * 16000])
    silent = extractor.features(np.zeros(3 * 16000, np.float32))
    assert np.abs(feats - silent).mean() > 0.1


def test_bad_audio_raises(extractor):
    with pytest.raises(ValueError, match="NaN"):
        extractor.features(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="1-D"):
        extractor.features(np.zeros((2, 100), np.float32))
    stream = extractor.stream()
    with pytest.raises(ValueError):
        stream.push(np.array([np.inf], np.float32))
    stream.push(np.zeros(16000, np.float32))            # still usable
    assert stream.pull().shape[0] > 0


def test_config_validation():
    with pytest.raises(ValueError):
        FeatureConfig(lookahead_frames=1, context_frames=2)
    with pytest.raises(ValueError):
        FeatureConfig(window_frames=5, block_frames=4)


@pytest.mark.parametrize("fused_attention", [False, True], ids=["onnxruntime", "tensorrt"])
def test_onnx_encoder_matches_torch(tmp_path, extractor, real_speech, fused_attention):
    """Both forms (export.exporter): the TorchScript export onnxruntime runs, and the dynamo
    export with one Attention node per layer that TensorRT fuses."""
    pytest.importorskip("onnxscript")
    import onnx

    from export.audio_encoder import OnnxEncoder, export_audio_encoder

    path = export_audio_encoder(tmp_path / "audio_encoder.onnx", extractor.config,
                                fused_attention)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("Attention" in ops) == fused_attention
    onnx_extractor = AudioFeatureExtractor(extractor.config, encoder=OnnxEncoder(path))
    audio = real_speech[:4 * 16000]
    assert relative_error(onnx_extractor.features(audio), extractor.features(audio)) < 1e-4


def test_all_layers_stack_every_encoder_stage(extractor, real_speech):
    """all_layers: each encoder frame gives the embedded input and every block's output
    (Sonic's layer stack); the last stage is today's feature, streaming equals offline."""
    layers = AudioFeatureExtractor(FeatureConfig(all_layers=True))
    audio = real_speech[:3 * 16000]
    feats = layers.features(audio)
    assert layers.config.stack == 50 and feats.shape == (75, 50, 384)
    stages = feats.reshape(75, 10, 5, 384)                    # (encoder frame, stage)
    np.testing.assert_allclose(stages[:, :, -1], extractor.features(audio), atol=1e-5)
    assert all(relative_error(stages[:, :, k], stages[:, :, -1]) > 0.1 for k in range(4))
    stream = layers.stream()
    pieces = []
    for lo in range(0, audio.size, 3000):
        stream.push(audio[lo:lo + 3000])
        pieces.append(stream.pull())
    pieces.append(stream.finish())
    assert relative_error(np.concatenate(pieces), feats) < 1e-4
