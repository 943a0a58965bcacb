"""When a real-time session renders fewer frames (stream/render_stride.py), and when it tries
all of them again."""

from stream import render_stride
from stream.render_stride import RenderStride

LATE_SECONDS, PROBE_SECONDS = render_stride.LATE_SECONDS, render_stride.PROBE_SECONDS
SETTLE_SECONDS, STABLE_SECONDS = render_stride.SETTLE_SECONDS, render_stride.STABLE_SECONDS


def calls(stride: RenderStride, start: float, seconds: float, late: bool, busy: float = 1.0,
          frames: int = 2, period: float = 0.08) -> float:
    """Render calls every `period` s for `seconds`, each busy `busy` of its period and
    covering `frames` frames of the timeline (2 in 80 ms: real time); returns the time after
    the last one."""
    t = start
    while t < start + seconds - 1e-9:
        t += period
        stride.observe(t, late, frames, busy * period)
    return t


def test_late_and_busy_renders_every_other_frame_then_every_third():
    s = RenderStride()
    assert [k for k in range(6) if s.renders(k)] == [0, 1, 2, 3, 4, 5]
    t = calls(s, 0.0, LATE_SECONDS - 0.1, late=True)
    assert s.stride == 1                                 # a short late stretch is not enough
    t = calls(s, t, 0.2, late=True)
    assert s.stride == 2
    assert [k for k in range(6) if s.renders(k)] == [0, 2, 4]
    t = calls(s, t, SETTLE_SECONDS, late=True)           # the backlog drains: not counted
    assert s.stride == 2
    calls(s, t, LATE_SECONDS + 0.1, late=True)
    assert s.stride == 3 and [k for k in range(7) if s.renders(k)] == [0, 3, 6]
    calls(s, t + 2, 3 * LATE_SECONDS, late=True)
    assert s.stride == 3                                  # never more than max_stride


def test_late_but_idle_or_catching_up_is_not_short_of_compute():
    """Frames late while the renderer is idle most of the time: a schedule too tight (the
    media clock delays the player for that), not compute too short; late and busy but
    getting through the timeline faster than real time: catching up after a hiccup."""
    s = RenderStride()
    calls(s, 0.0, 5.0, late=True, busy=0.3)
    assert s.stride == 1 and s.changes == 0
    calls(s, 6.0, 3.0, late=True, frames=8)              # late, busy, but catching up fast
    assert s.stride == 1 and s.changes == 0
    calls(s, 10.0, 0.2, late=True)                       # an on-time call breaks a streak:
    calls(s, 10.24, 0.08, late=False)
    calls(s, 10.32, LATE_SECONDS - 0.1, late=True)
    assert s.stride == 1


def test_tries_all_frames_again_backing_off_while_it_fails():
    s = RenderStride()
    t = calls(s, 0.0, LATE_SECONDS + 0.1, late=True)
    assert s.stride == 2
    t = calls(s, t, PROBE_SECONDS - 0.2, late=False)
    assert s.stride == 2
    t = calls(s, t, 0.4, late=False)
    assert s.stride == 1                                # tried after PROBE_SECONDS
    t = calls(s, t, SETTLE_SECONDS + LATE_SECONDS + 0.2, late=True)
    assert s.stride == 2                                # still short: back, and wait longer
    t = calls(s, t, 2 * PROBE_SECONDS - 0.6, late=False)
    assert s.stride == 2
    t = calls(s, t, 0.8, late=False)
    assert s.stride == 1                                # after twice as long
    t = calls(s, t, STABLE_SECONDS + 0.2, late=False)   # and this time it holds
    t = calls(s, t, SETTLE_SECONDS + LATE_SECONDS + 0.2, late=True)
    assert s.stride == 2
    t0 = t
    t = calls(s, t, PROBE_SECONDS + 0.2, late=False)
    assert s.stride == 1                                # the back-off was reset
    assert t - t0 <= PROBE_SECONDS + 0.3
