"""Synthetic shards: splits kept apart, same seed same shard (any worker count), resumable,
features from the audio front end, bad sentences skipped with a reason."""

import argparse
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from models import motion_space
from train import corpus, synth, tts, visemes

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make system-packages)")

# seed 6: these shards hold espeak voices and festival's slt, kal (train) and ked (val)
SMALL = synth.SynthConfig(seed=6, shard_seconds=8.0, min_example_seconds=3.0,
                          max_example_seconds=6.0)
HOURS = 24.0 / 3600          # train shards of 8, 8 and 5.6 s, a val shard of 2.4 s


@pytest.fixture(scope="module")
def extractor():
    return synth._new_extractor()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same small dataset made with 1 worker and with 2."""
    one = tmp_path_factory.mktemp("one")
    two = tmp_path_factory.mktemp("two")
    stats_one = synth.run(HOURS, one, workers=1, config=SMALL, show_progress=False)
    stats_two = synth.run(HOURS, two, workers=2, config=SMALL, show_progress=False)
    return one, two, stats_one, stats_two


def test_plans_keep_voices_and_sentences_of_the_splits_apart():
    config = synth.SynthConfig(shard_seconds=300.0)
    val_sentences = set(corpus.sentences_for("val"))
    seen = {"train": set(), "val": set()}
    for split in ("train", "val"):
        for index in range(3):
            for plan in synth.plan_shard(config, split, index):
                assert synth.voice_split(plan.speaker.voice) == split
                assert all((s in val_sentences) == (split == "val") for s in plan.sentences)
                assert config.min_example_seconds * 0.5 < plan.estimated_seconds
                assert plan.estimated_seconds < config.max_example_seconds * 1.3
                seen[split].add(plan.speaker.voice.engine)
    assert seen["train"] == {"espeak", "festival"} == seen["val"]
    assert synth.plan_shard(config, "train", 1) == synth.plan_shard(config, "train", 1)
    assert synth.plan_shard(config, "train", 1) != synth.plan_shard(config, "train", 2)


def test_the_neural_voice_speaks_only_training_examples_and_changes_nothing_else(tmp_path):
    plain = synth.SynthConfig(shard_seconds=300.0)
    mixed = replace(plain, piper_share=0.5)
    # the default dataset is the one made before the voice existed, and so is validation
    assert "piper_share" not in plain.to_dict() and mixed.to_dict()["piper_share"] == 0.5
    assert synth.plan_shard(mixed, "val", 0) == synth.plan_shard(plain, "val", 0)
    plans = [p for i in range(3) for p in synth.plan_shard(mixed, "train", i)]
    share = np.mean([p.speaker.voice.engine == "piper" for p in plans])
    assert 0.3 < share < 0.7, share
    for plan in plans:
        assert mixed.min_example_seconds * 0.5 < plan.estimated_seconds
        assert plan.estimated_seconds < mixed.max_example_seconds * 1.3
    # a small run all in the neural voice: its examples, labelled by its own durations
    synth.run(HOURS, tmp_path, workers=1, config=replace(SMALL, piper_share=1.0),
              show_progress=False)
    examples = synth.load_examples(tmp_path, "train")
    assert examples and {ex["voice"] for ex in examples} == {"piper/en_US-joe-medium"}
    jaw = motion_space.index("jaw_open")
    for ex in examples:
        vowels = [(s, e) for p, s, e, _ in ex["phonemes"] if p in tts.VOWELS]
        assert len(vowels) >= 5
        opening = np.mean([ex["motion"][int((s + e) * 12.5), jaw] for s, e in vowels])
        lead_in = ex["motion"][: max(int((ex["phonemes"][0][2] - 0.3) * 25), 0), jaw]
        assert opening > 0.1 and lead_in.max(initial=0.0) < 1e-3


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_same_seed_same_shards_whatever_the_workers(runs):
    one, two, stats_one, _ = runs
    names = sorted(p.name for p in one.glob("*-*.npz"))
    assert names == ["train-00000.npz", "train-00001.npz", "train-00002.npz", "val-00000.npz"]
    assert names == sorted(p.name for p in two.glob("*-*.npz"))
    for name in names:
        a, b = _arrays(one / name), _arrays(two / name)
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), (name, key)
        meta_a = json.loads((one / name).with_suffix(".json").read_text())
        meta_b = json.loads((two / name).with_suffix(".json").read_text())
        meta_a.pop("timing"), meta_b.pop("timing")
        assert meta_a == meta_b
    assert not stats_one["failures"]
    voices = {e["voice"] for split in ("train", "val") for e in synth.load_examples(one, split)}
    assert {v.split("/")[0] for v in voices} == {"espeak", "festival"}


def test_resume_skips_complete_shards_and_remakes_missing_ones(runs, capsys):
    one, two, _, _ = runs
    before = {p.name: p.stat().st_mtime_ns for p in one.glob("*-*.npz")}
    stats = synth.run(HOURS, one, workers=1, config=SMALL, show_progress=False)
    assert stats["run"]["shards_made"] == 0
    assert before == {p.name: p.stat().st_mtime_ns for p in one.glob("*-*.npz")}
    (one / "train-00001.json").unlink()                    # as if the run died mid-shard
    stats = synth.run(HOURS, one, workers=1, config=SMALL, show_progress=False)
    assert stats["run"]["shards_made"] == 1
    a, b = _arrays(one / "train-00001.npz"), _arrays(two / "train-00001.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit, match="other settings"):
        synth.run(HOURS, one, workers=1, config=synth.SynthConfig(seed=4, shard_seconds=8.0),
                  show_progress=False)
    assert "distinct sentences" in capsys.readouterr().out


def test_shard_contents(runs, extractor):
    one, _, _, _ = runs
    examples = synth.load_examples(one, "train")
    assert len(examples) >= 3
    for ex in examples:
        audio, motion, features = ex["audio"], ex["motion"], ex["features"]
        frames = -(-len(audio) // 640)
        assert motion.shape == (frames, motion_space.D) and motion.dtype == np.float32
        assert features.shape == (frames, extractor.config.stack, 384)
        assert features.dtype == np.float16
        assert ex["names"] == list(motion_space.NAMES)
        assert set(ex["style"]) == set(visemes.STYLE_NAMES)
        assert ex["style_vector"].shape == (len(visemes.STYLE_NAMES),)
        assert synth.voice_split(tts.Voice.parse(ex["voice"])) == "train"
        assert ex["text"] == " ".join(s["text"] for s in ex["sentences"])
        phones = ex["phonemes"]
        assert phones[0][1] == 0.0 and abs(phones[-1][2] - len(audio) / 16000) < 1e-4
        assert all(abs(a[2] - b[1]) < 1e-4 for a, b in zip(phones, phones[1:], strict=False))
        assert phones[0][0] == tts.SILENCE and phones[-1][0] == tts.SILENCE
        # silence before the first word: quiet audio, mouth at rest
        lead = phones[0][2]
        # at most the noise floor, up to the last 0.25 s: a festival diphone voice's pause ->
        # first-phone diphone may carry faint pre-voicing there (kal_diphone's "We": -41 dB
        # for 0.14 s, 20 dB under its speech)
        quiet = audio[: max(int((lead - 0.25) * 16000), 0)]
        assert quiet.size == 0 or np.sqrt(np.mean(quiet ** 2)) < 10 ** (-49 / 20)
        onset = audio[: int(lead * 16000)]
        assert np.sqrt(np.mean(onset ** 2)) < 10 ** (-38 / 20)
        rest = motion[: max(int((lead - 0.3) * 25), 0), motion_space.index("jaw_open")]
        assert rest.size == 0 or rest.max() < 1e-3          # (it opens ~0.2 s before speech)
        # the stored features are the front end's features of the stored audio
        again = extractor.features(audio)
        assert np.allclose(again, features.astype(np.float32), atol=2e-2, rtol=1e-2)


def test_the_audio_windowing_is_a_setting(tmp_path):
    """`--block-frames` etc. make the shards' features with another FeatureConfig (a model
    trained on them streams with that block and look-ahead), recorded in dataset.json."""
    from models.audio import AudioFeatureExtractor, FeatureConfig

    args = ["--window-frames", "16", "--block-frames", "1", "--lookahead-frames", "1",
            "--context-frames", "1"]
    parser = argparse.ArgumentParser()
    synth.add_feature_arguments(parser)
    settings = synth.feature_overrides(parser.parse_args(args))
    assert settings == {"window_frames": 16, "block_frames": 1, "lookahead_frames": 1,
                        "context_frames": 1}
    synth.run(HOURS / 3, tmp_path, workers=1, config=SMALL, show_progress=False,
              features=settings)
    config = FeatureConfig(**settings)
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["features"] == config.to_dict()
    extractor = AudioFeatureExtractor(config)
    examples = synth.load_examples(tmp_path, "train")
    assert examples
    for ex in examples:
        assert ex["features"].shape == (len(ex["motion"]), 6, 384)      # 2 x (2 x 1 + 1)
        again = extractor.features(ex["audio"])[: len(ex["motion"])]
        assert np.allclose(again, ex["features"].astype(np.float32), atol=2e-2, rtol=1e-2)


def test_statistics_are_written(runs):
    one, _, stats, _ = runs
    on_disk = json.loads((one / "stats.json").read_text())
    train = on_disk["splits"]["train"]
    assert train["hours"] > 20 / 3600 and train["examples"] >= 3 and train["voices"] >= 1
    assert train["sentences"] >= 3
    assert set(train["parameters"]) == set(motion_space.NAMES)
    jaw = train["parameters"]["jaw_open"]
    assert 0.0 <= jaw["min"] < jaw["mean"] < jaw["max"] <= 1.0
    assert "val" in on_disk["splits"]
    assert "parameter" in (one / "stats.txt").read_text()
    assert stats["run"]["audio_seconds_per_wall_second"] > 0
    info = json.loads((one / "dataset.json").read_text())
    assert info["features"]["window_frames"] > 0 and info["names"] == list(motion_space.NAMES)


def test_unspeakable_sentences_are_skipped_with_a_reason(monkeypatch, tmp_path, extractor):
    bad = ["", "你好，世界", "!!! ???"]
    good = ["Good morning to you all.", "The old man opened the window quietly."]
    monkeypatch.setattr(corpus, "sentences_for", lambda split, count=0: bad + good)
    config = synth.SynthConfig(seed=1, shard_seconds=30.0, min_example_seconds=3.0,
                               max_example_seconds=10.0)
    shard = synth.make_shard(config, "train", 0, extractor)
    meta = shard["meta"]
    assert meta["examples"], "the good sentences must still make examples"
    reasons = [s["reason"] for s in meta["skipped"]]
    assert reasons and all(r for r in reasons)
    assert any("speakable" in r for r in reasons)
    for e in meta["examples"]:
        assert all(s["text"] in good for s in e["sentences"])
    synth.write_shard(tmp_path, "train-00000", shard)
    assert len(synth.read_shard(tmp_path / "train-00000.npz")) == len(meta["examples"])


def test_an_example_with_nothing_spoken_is_skipped():
    plan = synth.plan_shard(SMALL, "train", 0)[0]
    failures = [tts.SpeechError("no speakable words") for _ in plan.sentences]
    assert synth.assemble(plan, failures) is None


def test_command_line_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        synth.main(["--hours", "0", "--out", "x"])
    assert "must be positive" in capsys.readouterr().err
