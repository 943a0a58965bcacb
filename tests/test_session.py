"""The streaming session: piece-size independence, continuity, idle, barge-in, A/V, memory."""

import time

import numpy as np
import pytest

from models import motion_space
from models.audio_io import load_audio
from serve.control import SlowRender
from stream.render_file import render_file
from stream.session import PLAYBACK_PER_FRAME, Session

JAW = motion_space.index("jaw_open")


@pytest.fixture(scope="module")
def engine():
    from stream.engine import make_engine

    return make_engine("torch")


@pytest.fixture(scope="module")
def avatar():
    from models.avatar import prepare_avatar

    return prepare_avatar(size=256)


@pytest.fixture(scope="module")
def speech48() -> np.ndarray:
    """Real recordings at 48 kHz with a pause between them (~4 s)."""
    parts = [load_audio("/usr/share/sounds/alsa/Front_Center.wav", rate=48000),
             np.zeros(24000, np.float32),
             load_audio("/usr/share/sounds/alsa/Rear_Left.wav", rate=48000)]
    return np.concatenate(parts)


def run(engine, avatar, audio, piece_seconds, seed=0, rate=48000):
    session = Session(engine, avatar, seed=seed)
    images, audio_out = [], []

    def keep(image, a):
        images.append(image)
        audio_out.append(a)

    try:
        motion, report = render_file(session, audio, rate, keep, piece_seconds=piece_seconds)
    finally:
        session.close()
    return motion, np.stack(images), np.concatenate(audio_out), report


@pytest.fixture(scope="module")
def reference(engine, avatar, speech48):
    return run(engine, avatar, speech48, 0.02)


@pytest.mark.parametrize("piece", [0.01, 0.333, "random"])
def test_same_frames_whatever_the_piece_size(engine, avatar, speech48, reference, piece):
    if piece == "random":
        # random piece sizes: feed through a session directly
        rng = np.random.default_rng(5)
        session = Session(engine, avatar, seed=0)
        frames, i = [], 0
        try:
            while i < speech48.size:
                n = int(rng.integers(48, 48000))
                session.push_audio(speech48[i:i + n], 48000)
                i += n
            session.end_audio()
            while not (session.drained() and session.frames.empty()):
                f = session.next_frame(timeout=1.0)
                if f is not None:
                    frames.append(f.image)
        finally:
            session.close()
        images = np.stack(frames)
    else:
        _, images, _, _ = run(engine, avatar, speech48, piece)
    assert images.shape == reference[1].shape
    assert np.array_equal(images, reference[1])


def test_frame_count_and_output_audio_is_input_delayed(reference, speech48):
    motion, images, audio_out, _ = reference
    frames = -(-speech48.size // PLAYBACK_PER_FRAME)
    assert len(motion) == len(images) == frames
    # nothing lost, nothing duplicated: frame t carries exactly input samples [1920 t, 1920 t+1)
    assert np.array_equal(audio_out[: speech48.size], speech48)
    assert not audio_out[speech48.size:].any()


def seam_and_inside_jumps(engine, motion):
    """Frame-to-frame jumps (normalised motion) across chunk seams and inside chunks."""
    std = np.array(engine.motion.normalizer.std, np.float32)
    jumps = np.linalg.norm(np.diff(motion / std, axis=0), axis=1)
    chunk = engine.feature_config.block_frames          # a session's default chunk
    seams = np.arange(chunk, len(motion) - 1, chunk) - 1
    inside = np.setdiff1d(np.arange(len(jumps)), seams)
    return jumps[seams], jumps[inside]


def test_chunks_are_continuous_on_average(engine, reference):
    seams, inside = seam_and_inside_jumps(engine, reference[0])
    assert seams.mean() <= 1.15 * inside.mean()


def test_no_seam_jump_larger_than_inside_a_chunk(engine, reference):
    seams, inside = seam_and_inside_jumps(engine, reference[0])
    assert np.percentile(seams, 95) <= 1.15 * np.percentile(inside, 95)


def test_speech_moves_the_mouth_and_silence_idles(engine, avatar, reference):
    motion = reference[0]
    speaking = motion[: 30, JAW]                     # "front center", the first 1.2 s
    pause = motion[40:46, JAW]                       # inside the 0.5 s pause (1.43-1.93 s)
    assert speaking.max() > 0.15
    assert pause.max() < 0.15


def test_silence_gives_idle_frames_and_never_stalls(engine, avatar):
    motion, images, _, _ = run(engine, avatar, np.zeros(16000 * 6, np.float32), 0.02, rate=16000)
    assert len(images) == 150
    assert motion[:, JAW].max() < 0.15              # mouth closed
    head = motion[:, [motion_space.index("head_yaw"), motion_space.index("head_pitch")]]
    assert head.std(axis=0).max() > 0.05             # alive: the head still moves a little
    assert np.abs(np.diff(images.astype(np.int16), axis=0)).max(axis=(1, 2, 3)).min() >= 0


def test_interrupt_returns_to_idle_within_one_chunk(engine, avatar, speech48):
    session = Session(engine, avatar, seed=0)
    try:
        speech = speech48[: 48000]                   # 1 s of "front center"
        session.push_audio(speech, 48000)
        got = []
        while len(got) < 10:
            f = session.next_frame(timeout=5.0)
            assert f is not None
            got.append(f)
        cut = session.interrupt()
        assert cut >= got[-1].index + 1
        session.push_audio(np.zeros(16000, np.float32), 16000)   # the line goes quiet
        after = []
        while len(after) < 20:
            f = session.next_frame(timeout=5.0)
            assert f is not None
            after.append(f)
        indices = [f.index for f in after]
        assert indices == list(range(got[-1].index + 1, got[-1].index + 21))
        chunk = session.chunk
        late = [f.motion[JAW] for f in after if f.index >= cut + chunk]
        assert max(late) < 0.15                      # idle within one chunk of the cut
    finally:
        session.close()


def test_long_stream_keeps_memory_flat(engine, avatar):
    """A long stream (here 1 minute of audio in 20 ms pieces; the 30-minute soak is a
    benchmark): every buffer stays bounded, none grows with the stream's length."""
    session = Session(engine, avatar, seed=0)
    rng = np.random.default_rng(0)
    sizes, taken = [], 0
    try:
        tone = (0.1 * np.sin(np.arange(960) / 48000 * 2 * np.pi * 220)).astype(np.float32)
        for i in range(3000):                        # 3000 x 20 ms = 60 s
            session.push_audio(tone * rng.uniform(0, 1), 48000)
            while session.next_frame(timeout=0) is not None:
                taken += 1
            # a consumer that keeps up: at most 5 s of audio not yet turned into frames it took
            while session.audio.end - taken * 640 > 16000 * 5:
                if session.next_frame(timeout=1.0) is not None:
                    taken += 1
            if i % 500 == 499:
                sizes.append((session.audio.samples.size, session.audio.playback.size,
                              len(session._arrivals), session.features.audio.size))
    finally:
        session.close()
    # the consumer allows 5 s of backlog; with a window of context and a little slack, no
    # buffer may hold more than 7 s of audio (or of 20 ms arrivals), whatever the stream length
    bound = np.array([16000 * 7, 48000 * 7, 7 / 0.02, 16000 * 7])
    assert np.all(np.array(sizes) <= bound), sizes


def test_a_consumer_that_stops_taking_frames_loses_the_oldest_not_memory(engine, avatar,
                                                                          speech48):
    """Nobody takes frames: the frame queue holds at most max_frames_queued (the newest), the
    render queue at most RENDER_QUEUE chunks, and every frame not kept is counted as dropped."""
    from stream.session import RENDER_QUEUE

    session = Session(engine, avatar, seed=0, max_frames_queued=20)
    audio = np.tile(speech48, 2)                     # ~8 s: 200 frames
    frames = -(-audio.size // PLAYBACK_PER_FRAME)
    try:
        session.push_audio(audio, 48000)
        session.end_audio()
        deadline = time.monotonic() + 120
        while not session.drained():
            assert session._render_queue.qsize() <= RENDER_QUEUE
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert session.frames.qsize() == 20
        assert session.dropped_frames == frames - 20
        kept = [session.next_frame(timeout=0).index for _ in range(20)]
        assert kept == list(range(frames - 20, frames))
    finally:
        session.close()


def play_in_real_time(session, audio: np.ndarray, tail: float = 1.0):
    """Push `audio` (48 kHz) in 20 ms pieces at real-time pace while a Player plays the
    session, then play `tail` seconds more; returns the Player and what it played
    [(slot, image, audio)]."""
    from stream.player import Player

    player = Player(session)
    played = []
    t0 = time.perf_counter()
    for i in range(0, audio.size, 960):
        while time.perf_counter() < t0 + i / 48000:
            played += player.play()
            time.sleep(0.005)
        session.push_audio(audio[i:i + 960], 48000)
    end = time.perf_counter() + tail
    while time.perf_counter() < end:
        played += player.play()
        time.sleep(0.005)
    return player, played


def assert_own_sound(played: list, audio: np.ndarray) -> None:
    """Every slot played exactly its own 40 ms of the input audio (zeros after its end)."""
    for k, _, a in played:
        lo = k * PLAYBACK_PER_FRAME
        expected = np.zeros(PLAYBACK_PER_FRAME, np.float32)
        part = audio[lo:lo + PLAYBACK_PER_FRAME]
        expected[: part.size] = part
        assert np.array_equal(a, expected)


def test_player_keeps_audio_continuous_when_video_falls_behind(engine, avatar, speech48):
    """Compute at half real time: video repeats/skips frames, audio plays every slot, in sync."""
    session = Session(SlowRender(engine, 0.08), avatar, seed=0, realtime=True)
    session.thin_when_behind = False        # every frame rendered, late (the next test thins)
    audio = speech48[: 3 * 48000]
    try:
        player, played = play_in_real_time(session, audio)
    finally:
        session.close()
    slots = [k for k, _, _ in played]
    assert slots == list(range(slots[0], slots[0] + len(slots)))      # no slot missing
    assert len(slots) >= 60
    s = player.stats
    assert s.repeated > 0 and s.shown + s.repeated <= s.slots
    # frames already too late are not rendered at all, so the picture does not fall further
    # and further behind the sound (at half speed it would be ~3 s behind by the end)
    assert session.stats.late_frames > 0
    assert max(s.latency_ms[-10:]) < 1500
    assert_own_sound(played, audio)


def test_renderer_short_of_compute_renders_fewer_frames_on_time(engine, avatar, speech48):
    """A renderer slower than real time (60 ms a frame): rendering every
    frame, nearly all come after their slots and the picture freezes; rendering every other
    or third frame (stream/render_stride.py), those come in time and are shown in their own
    slots. The sound is the same either way: every slot its own 40 ms."""
    audio = np.tile(speech48, 3)[: 10 * 48000]
    shown = {}
    for thin in (False, True):
        session = Session(SlowRender(engine, 0.06), avatar, seed=0, realtime=True)
        session.thin_when_behind = thin
        try:
            player, played = play_in_real_time(session, audio)
        finally:
            session.close()
        shown[thin] = player.stats.shown
        stride = session.render_stride
        if thin:
            assert stride.stride >= 2 and session.stats.thinned_frames > 0
        else:
            assert stride.changes == 0 and session.stats.thinned_frames == 0
        assert len(played) >= 240
        assert_own_sound(played, audio)
    assert shown[True] >= 3 * max(shown[False], 5), shown


class SlowMotion(SlowRender):
    """The real engine whose motion sampler runs at `seconds_per_frame` (features and motion
    slower than real time: a machine short of compute)."""

    def generator(self, seed=0, style=None):
        generator, delay = self.engine.generator(seed=seed, style=style), self.delay
        generate = generator.generate

        def slow_generate(features):
            time.sleep(delay * len(features))
            return generate(features)

        generator.generate = slow_generate
        return generator

    def render(self, avatar, motion):
        return self.engine.render(avatar, motion)


@pytest.mark.parametrize("output_delay", [0.0, 1.0])
def test_motion_behind_real_time_catches_up_instead_of_freezing(engine, avatar, speech48,
                                                                 output_delay):
    """Motion at half real time: without catching up every chunk would reach the renderer
    too late and the picture would freeze for good (trailing the sound more and more); with
    it the session jumps to the newest audio, so the picture shown never trails the sound by
    much more than the late margin and comes back in step with it after each jump. The
    sound is never cut: every slot plays its own audio, across the jumps, also when the
    player runs a second behind the audio (the output delay a loaded server grows: the
    jumps then land on frames whose slots are still to come)."""
    from stream.player import Player
    from stream.session import LATE_MARGIN

    session = Session(SlowMotion(engine, 0.08), avatar, seed=0, realtime=True)
    # slot 0 due when its audio arrives plus `output_delay` (0: when the first frame is)
    player = Player(session, start=time.perf_counter() + output_delay if output_delay else None)
    lag = []                                      # per slot: slot - index of the picture shown
    played = {}                                   # slot -> its 48 kHz audio
    try:
        audio = np.concatenate([speech48, speech48])[: 8 * 48000]
        t0 = time.perf_counter()
        for i in range(0, audio.size, 960):
            while time.perf_counter() < t0 + i / 48000:
                for k, image, sound in player.play():
                    played[k] = sound
                    if image is not None:
                        lag.append(k - player.current.index)
                time.sleep(0.005)
            session.push_audio(audio[i:i + 960], 48000)
    finally:
        session.close()
    assert session.stats.catch_ups >= 1 and session.stats.late_frames > 0
    whole = [k for k in played if (k + 1) * PLAYBACK_PER_FRAME <= audio.size]
    cut = [k for k in whole if not np.allclose(
        played[k], audio[k * PLAYBACK_PER_FRAME:(k + 1) * PLAYBACK_PER_FRAME], atol=1e-3)]
    assert len(whole) > 100 and not cut, f"slots whose sound was cut: {cut}"
    half = len(lag) // 2
    # without catching up the lag would grow by half a frame a frame: ~100 frames at the end
    assert max(lag[half:]) <= 2 * LATE_MARGIN + 5, max(lag[half:])
    assert min(lag[half:]) <= 2, min(lag[half:])      # back in step after a jump


@pytest.mark.parametrize("output_delay", [0.2, 1.0])
def test_late_audio_lands_where_it_belongs(engine, avatar, speech48, output_delay):
    """Microphone audio held back 240 ms inside a word (a loaded machine delays its packets)
    and then delivered at once, with the clock ticking every 20 ms as the media clock does.
    When the audio not yet played still covers the next frames' needs (a second of output
    delay, as a loaded server grows), the clock waits for it: no silence goes into the speech
    and every slot plays its own audio. With a short delay (0.2 s, less than what the next
    frames need) it fills the gap with silence as before, so the picture never freezes."""
    from stream.player import Player

    session = Session(engine, avatar, seed=0, realtime=True)
    player = Player(session, start=time.perf_counter() + output_delay)
    audio = speech48[: 96 * 1920]                       # 3.84 s: the second recording's words
    held = (55 * 1920, 61 * 1920)                       # 2.2-2.44 s: held back, then sent at once
    played = {}
    try:
        t0 = time.perf_counter()
        for i in range(0, audio.size + int((output_delay + 0.3) * 48000), 960):
            while time.perf_counter() < t0 + i / 48000:
                time.sleep(0.002)
            if i < audio.size and not held[0] <= i < held[1]:
                start = held[0] if i == held[1] else i
                session.push_audio(audio[start:i + 960], 48000)
            session.tick()
            for k, _, sound in player.play():
                played[k] = sound
    finally:
        session.close()
    whole = [k for k in played if (k + 1) * PLAYBACK_PER_FRAME <= audio.size]
    cut = [k for k in whole if not np.allclose(
        played[k], audio[k * PLAYBACK_PER_FRAME:(k + 1) * PLAYBACK_PER_FRAME], atol=1e-3)]
    assert len(whole) > 80
    if output_delay > 0.5:
        assert not cut, f"slots whose sound was moved or cut: {cut}"
    else:
        assert cut and held[0] <= min(cut) * PLAYBACK_PER_FRAME <= held[1], cut
