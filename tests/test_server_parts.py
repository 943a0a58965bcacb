"""The server's parts without a network: audio feed pacing and ducking, local TTS, metrics."""

from types import SimpleNamespace

import numpy as np
import pytest

from models.audio_io import AudioInputError
from stream.metrics import Metrics
from stream.sources import LEAD_SECONDS, AudioFeed, decode_audio_bytes
from stream.tts import SpeechError, parse_wav, speak


class FakeSession:
    """What AudioFeed uses of a Session: the audio it was given, on a 16 kHz timeline (push_audio
    returns the stretch it filled; the engine's samples per frame turn a cut frame into a
    place on it)."""

    engine = SimpleNamespace(feature_config=SimpleNamespace(samples_per_frame=640))

    def __init__(self):
        self.pushed: list[tuple[str, float]] = []        # (source tag, seconds)
        self.ticks = 0
        self.interrupts = 0
        self.end = 0

    def push_audio(self, pcm, rate, channels=1):
        tag = "mic" if pcm.size and pcm[0] == 0.25 else "queued"
        self.pushed.append((tag, pcm.size / rate))
        start, self.end = self.end, self.end + round(pcm.size * 16000 / rate)
        return start, self.end

    def tick(self, now=None):
        self.ticks += 1

    def interrupt(self):
        self.interrupts += 1
        return 0

    def seconds(self, tag):
        return sum(s for t, s in self.pushed if t == tag)


def test_queued_audio_is_fed_at_real_time_pace_and_ducks_the_microphone():
    session = FakeSession()
    feed = AudioFeed(session)
    feed.queue(np.full(16000, 0.5, np.float32), 16000)           # 1 s, pushed at once
    mic = np.full(960, 0.25, np.float32)                          # 20 ms pieces at 48 kHz
    now = 100.0
    for step in range(100):                                       # 2 s of 20 ms ticks
        feed.live(mic, 48000)
        feed.feed(now + step * 0.02)
        spoken = session.seconds("queued")
        # never more than the lead ahead of the clock
        assert spoken <= (step + 1) * 0.02 + LEAD_SECONDS + 1e-6
    assert session.seconds("queued") == pytest.approx(1.0)
    # the microphone was dropped while the queued audio spoke, and came back after it
    assert 0.7 < feed.ducked_seconds < 1.2
    assert 0.7 < session.seconds("mic") < 1.3
    assert session.ticks == 100


def test_interrupt_drops_queued_audio():
    session = FakeSession()
    feed = AudioFeed(session)
    feed.queue(np.ones(48000, np.float32) * 0.5, 48000)
    feed.feed(0.0)
    feed.interrupt()
    for step in range(1, 50):
        feed.feed(step * 0.02)
    assert session.interrupts == 1
    assert session.seconds("queued") <= LEAD_SECONDS + 0.02
    assert feed.queued_seconds == 0 and not feed.speaking(2.0)


def test_bad_audio_is_refused_with_a_message():
    feed = AudioFeed(FakeSession())
    with pytest.raises(AudioInputError, match="sample rate"):
        feed.queue(np.zeros(100, np.int16), 1000)
    with pytest.raises(AudioInputError, match="NaN"):
        feed.queue(np.full(100, np.nan, np.float32), 16000)
    with pytest.raises(AudioInputError, match="empty"):
        feed.queue(np.zeros(0, np.int16), 16000)
    with pytest.raises(AudioInputError, match="more than"):
        feed.queue(np.zeros(16000 * 121, np.int16), 16000)
    with pytest.raises(AudioInputError, match="not a readable audio file"):
        decode_audio_bytes(b"not audio at all" * 50)
    with pytest.raises(AudioInputError, match="empty"):
        decode_audio_bytes(b"")


def test_local_tts_speaks_and_refuses_clearly():
    audio, rate = speak("Hello there.")
    assert rate in (16000, 22050, 24000) and 0.4 < audio.size / rate < 3.0
    assert np.abs(audio).max() > 0.1
    audio, rate = speak("Hello there.", voice="festival/kal_diphone")
    assert audio.size / rate > 0.4
    for text, voice, words in [("", "espeak/en-us", "empty"),
                               ("x" * 3000, "espeak/en-us", "at most"),
                               ("hi", "espeak/zz-nonexistent", "failed"),
                               ("hi", "festival/nobody", "not known"),
                               ("hi", "espeak/$(reboot)", "not valid"),
                               ("hi", "nonsense", "espeak/NAME")]:
        with pytest.raises(SpeechError, match=words):
            speak(text, voice=voice)
    with pytest.raises(SpeechError):
        parse_wav(b"RIFF....WAVEjunk")


def test_metrics_are_prometheus_text():
    metrics = Metrics()
    metrics.count("frames_shown_total", 3)
    metrics.observe_latency([0.12, 0.3], [0.1])
    text = metrics.render(gauges={"sessions": 2}, labelled={"session_fps": {"abc": 24.5}})
    lines = text.splitlines()
    assert "talking_head_sessions 2" in lines
    assert 'talking_head_session_fps{session="abc"} 24.5' in lines
    assert "talking_head_frames_shown_total 3" in lines
    assert 'talking_head_latency_seconds_bucket{le="0.15"} 1' in lines
    assert 'talking_head_latency_seconds_bucket{le="+Inf"} 2' in lines
    assert "talking_head_render_latency_seconds_count 1" in lines
    assert "# TYPE talking_head_latency_seconds histogram" in lines


def test_compute_runs_below_the_media_path_and_level_with_other_processes(monkeypatch):
    """The media path (the thread that raises itself, and the threads it starts) goes
    COMPUTE_NICE above the usual nice where the process may (root, CAP_SYS_NICE), so that
    the sessions' compute threads (at_lower_priority) land at the usual nice, whichever
    thread starts them (one made before the raise too, as an executor's may be):
    below the media path, level with other busy processes. Where it may not, the compute
    goes below instead, as before. Run in threads of their own: pytest's keeps its nice."""
    import os
    import threading

    from serve import sessions
    from serve.preparation import COMPUTE_NICE
    from serve.sessions import at_lower_priority, raise_media_path

    monkeypatch.setattr(sessions, "_media_nice", None)

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen = {}
    raised = threading.Event()

    def older_thread():                     # made before the raise, at the usual nice
        raised.wait()
        seen["compute_from_older"] = at_lower_priority(nice)

    older = threading.Thread(target=older_thread)
    older.start()

    def media_path():
        seen["usual"] = nice()
        seen["raised"] = raise_media_path()
        raised.set()
        seen["media"] = nice()
        seen["compute"] = at_lower_priority(nice)
        started = threading.Thread(target=lambda: seen.setdefault("clock", nice()))
        started.start()
        started.join()

    thread = threading.Thread(target=media_path)
    thread.start()
    thread.join()
    older.join()
    usual = seen["usual"]
    if seen["raised"]:
        assert (seen["media"], seen["clock"], seen["compute"], seen["compute_from_older"]) == (
            usual - COMPUTE_NICE, usual - COMPUTE_NICE, usual, usual), seen
    else:
        assert (seen["media"], seen["compute"], seen["compute_from_older"]) == (
            usual, usual + COMPUTE_NICE, usual + COMPUTE_NICE), seen
