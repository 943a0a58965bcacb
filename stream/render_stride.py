"""A real-time session short of compute renders every other frame on time, not every frame late.

With more sessions than the cores can render (two at 512 px on 2 cores need about 2.4), every
session rendered every frame after its slot had been played: the player could only skip them,
and each session showed 2-27 fresh frames of 320 (benchmarks/RESULTS.md, "A session short of
compute renders every other frame on time"; with the stride 82-187). A session that is late
while its compute is saturated renders only the frames whose index is a multiple of `stride`
(2, then 3): the renderer's work falls by that factor, the player shows each rendered frame
for `stride` slots (its repeats), and the sound is untouched (it never depended on the
pictures).

Going up a step needs all three: the rendered frames came after their slots for LATE_SECONDS
without a break, the renderer was working for at least BUSY_SHARE of that time, and it got
through no more than CATCH_UP_RATE times real time of the timeline meanwhile. Frames late
while the renderer waits for work are not its doing: a schedule too tight (the media clock's
resync delays the player for that, stream/webrtc.py), or features and motion behind (the
motion thread catches up by jumping to the newest audio, stream/session.py; rendering fewer
frames would only lose the first on-time frame after a jump). A renderer late after a hiccup
(another process took the cores for a moment) catches up by itself, faster than real time (it
renders what queued up in batches, cheaper per frame), and keeps every frame. After a change,
SETTLE_SECONDS pass before lateness counts again (the backlog drains).

Coming down: a session cannot see what the others would need at the lower stride, so it
tries: after `backoff` seconds (PROBE_SECONDS, doubled each time a try goes late again
within STABLE_SECONDS, up to PROBE_MAX_SECONDS) it renders one step more. A failed try costs
about SETTLE_SECONDS + LATE_SECONDS of late frames, about once a minute when the machine stays
short.
"""

MAX_STRIDE = 3
LATE_SECONDS = 0.5       # continuously late this long (and busy) before rendering fewer frames
BUSY_SHARE = 0.8         # of that time spent rendering: the renderer itself is behind
CATCH_UP_RATE = 1.1      # timeline frames rendered per frame of wall time above this: catching up
FPS = 25
SETTLE_SECONDS = 1.0     # after a change, lateness counts again only after this
PROBE_SECONDS = 4.0      # first wait before trying one step more frames
PROBE_MAX_SECONDS = 64.0
STABLE_SECONDS = 30.0    # a lower stride that held this long resets the back-off


class RenderStride:
    """Which frames a session renders: those with `index % stride == 0`. `observe()` after each
    render call moves the stride (times in seconds, time.perf_counter())."""

    def __init__(self, max_stride: int = MAX_STRIDE):
        self.max_stride = max_stride
        self.stride = 1
        self.changes = 0                   # stride changes, up or down
        self._last: float | None = None    # when the last render call ended
        self._late_since: float | None = None    # start of a late streak
        self._busy = 0.0                   # seconds spent rendering since then
        self._frames = 0                   # timeline frames rendered since then
        self._quiet_until = 0.0            # lateness ignored before this (after a change)
        self._backoff = PROBE_SECONDS
        self._probe_at: float | None = None      # when to try one step more frames
        self._lowered_at: float | None = None    # when a try last lowered the stride

    def renders(self, index: int) -> bool:
        return index % self.stride == 0

    def observe(self, now: float, late: bool, frames: int, busy: float) -> None:
        """A render call ended at `now`. Since the call before, the renderer covered `frames`
        frames of the timeline (those the stride left out included) and spent `busy` seconds
        rendering; `late`: this call's frames came after their slots had been played."""
        since, self._last = self._last, now
        if self._lowered_at is not None and now - self._lowered_at >= STABLE_SECONDS:
            self._lowered_at, self._backoff = None, PROBE_SECONDS     # the try held
        if not late or since is None or since < self._quiet_until:
            self._late_since = None
        else:
            if self._late_since is None:
                self._late_since, self._busy, self._frames = since, 0.0, 0
            self._busy += busy
            self._frames += frames
            streak = now - self._late_since
            if (streak >= LATE_SECONDS and self._busy >= BUSY_SHARE * streak
                    and self._frames <= CATCH_UP_RATE * FPS * streak
                    and self.stride < self.max_stride):
                if self._lowered_at is not None:          # the last try went late again
                    self._backoff = min(self._backoff * 2, PROBE_MAX_SECONDS)
                    self._lowered_at = None
                self._change(self.stride + 1, now)
                self._probe_at = now + self._backoff
                return
        if self.stride > 1 and self._probe_at is not None and now >= self._probe_at:
            self._change(self.stride - 1, now)
            self._lowered_at = now
            self._probe_at = now + self._backoff if self.stride > 1 else None

    def _change(self, stride: int, now: float) -> None:
        self.stride = stride
        self.changes += 1
        self._late_since = None
        self._quiet_until = now + SETTLE_SECONDS
