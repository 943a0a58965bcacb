"""Sessions sharing one engine through batched network calls (stream/batching.py)."""

import threading
import time

import numpy as np
import pytest

from models.audio_io import load_audio
from stream.batching import BatchedEngine, Batcher
from stream.session import Session


def test_batcher_gives_each_caller_its_own_rows_and_batches_concurrent_calls():
    def slow_double(context, x, y):
        time.sleep(0.02)                       # a network call: others queue meanwhile
        return x * 2 + y

    batcher = Batcher(slow_double)
    results, errors = {}, []

    def caller(i):
        try:
            for k in range(5):
                x = np.full((1 + i % 3, 4), float(i * 100 + k))
                out = batcher(x.shape[1:], None, x, np.ones_like(x))
                assert out.shape == x.shape
                results[(i, k)] = out
        except Exception as e:            # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert not errors
    for (i, k), out in results.items():
        assert np.all(out == 2 * (i * 100 + k) + 1)
    assert len(results) == 40
    assert batcher.calls < batcher.requests              # some calls carried several requests


def test_batcher_hands_an_error_to_its_batch_and_keeps_serving():
    def fails_on_negative(context, x):
        if (x < 0).any():
            raise ValueError("negative input")
        return x

    batcher = Batcher(fails_on_negative)
    with pytest.raises(ValueError, match="negative"):
        batcher(None, None, -np.ones((1, 2)))
    assert np.array_equal(batcher(None, None, np.ones((1, 2))), np.ones((1, 2)))
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher(None, None, np.ones((1, 2)))


@pytest.fixture(scope="module")
def engine():
    from stream.engine import make_engine

    return make_engine("torch")


def run_sessions(engine, avatar, audio, seeds):
    """Sessions with the given seeds fed concurrently; each one's (motion, images)."""
    out = {}

    def one(seed):
        session = Session(engine, avatar, seed=seed)
        motion, images = [], []
        try:
            for i in range(0, audio.size, 960):
                session.push_audio(audio[i:i + 960], 48000)
            session.end_audio()
            while not (session.drained() and session.frames.empty()):
                f = session.next_frame(timeout=1.0)
                if f is not None:
                    motion.append(f.motion)
                    images.append(f.image)
        finally:
            session.close()
        out[seed] = (np.stack(motion), np.stack(images))

    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def test_batched_sessions_match_the_same_sessions_run_alone(engine):
    from models.avatar import prepare_avatar

    avatar = prepare_avatar(size=256)
    audio = load_audio("/usr/share/sounds/alsa/Front_Center.wav", rate=48000)
    seeds = [0, 1, 2]
    alone = {s: run_sessions(engine, avatar, audio, [s])[s] for s in seeds}
    batched_engine = BatchedEngine(engine)
    try:
        together = run_sessions(batched_engine, avatar, audio, seeds)
        stats = batched_engine.stats()
    finally:
        batched_engine.close()
    for s in seeds:
        motion, images = together[s]
        assert motion.shape == alone[s][0].shape
        np.testing.assert_allclose(motion, alone[s][0], atol=1e-3)
        assert np.abs(images.astype(int) - alone[s][1]).max() <= 8
        assert np.abs(images.astype(int) - alone[s][1]).mean() < 0.05
    # three sessions pushing at once: some calls carried more than one session's request
    assert max(stats.values()) > 1.0, stats
