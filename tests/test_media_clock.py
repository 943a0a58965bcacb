"""The media clock's parts that need no peer: the start margin learnt from the compute jitter,
and the microphone's jitter buffer that lets packets go at once (stream/webrtc.py)."""

from types import SimpleNamespace

from stream.webrtc import (
    JITTER_MIN_FRAMES,
    JITTER_SAFETY_SECONDS,
    MIN_START_MARGIN_SECONDS,
    START_MARGIN_SECONDS,
    ComputeJitter,
    PromptAudioBuffer,
)


def test_start_margin_is_the_measured_need_within_bounds():
    jitter = ComputeJitter()
    for _ in range(JITTER_MIN_FRAMES - 1):
        jitter.add(-0.05)
    assert jitter.margin() == START_MARGIN_SECONDS        # too few frames: the default
    jitter.add(0.02)
    assert abs(jitter.margin() - (0.02 + JITTER_SAFETY_SECONDS)) < 1e-9   # the worst + safety
    jitter.add(0.5)                                       # a frame that needed much: capped
    assert jitter.margin() == START_MARGIN_SECONDS
    calm = ComputeJitter()
    for _ in range(JITTER_MIN_FRAMES):
        calm.add(-0.2)                                    # every frame early: the floor
    assert calm.margin() == MIN_START_MARGIN_SECONDS


def packet(sequence: int, timestamp: int) -> SimpleNamespace:
    return SimpleNamespace(sequence_number=sequence, timestamp=timestamp,
                           _data=bytes([sequence % 256]))


def test_microphone_packets_go_at_once_late_ones_are_dropped():
    buffer = PromptAudioBuffer()
    out = [buffer.add(packet(s, 960 * s)) for s in (65533, 65534, 65535, 0, 1)]   # wraps
    assert [frame.timestamp for _, frame in out] == [960 * s for s in (65533, 65534, 65535,
                                                                       0, 1)]
    assert not any(pli for pli, _ in out)
    assert buffer.add(packet(1, 960))[1] is None          # repeated
    assert buffer.add(packet(65535, 0))[1] is None        # older than one already let go
    assert buffer.add(packet(3, 2880))[1].data == bytes([3])   # a gap: the next goes on
