"""Play a session on one media clock: 25 video slots per second, each with its 40 ms of audio.

Slot k is due at `start + k / 25` (wall clock). Its audio is always the session audio of
frame k (the input audio, delayed by the pipeline latency `start - first audio`), so the
sound never stops or drifts. Its picture is frame k when it is ready; when compute falls
behind, the last picture is shown again (a repeat), and frames that arrive too late are
skipped, so the picture catches up with the sound instead of drifting behind it. Both are
counted in `stats`.
"""

import time
from dataclasses import dataclass

import numpy as np

from stream.session import Frame, Session

FPS = 25


@dataclass
class PlayerStats:
    slots: int = 0           # slots played
    shown: int = 0           # slots that showed their own frame
    repeated: int = 0        # slots that showed an older frame (compute behind)
    skipped: int = 0         # frames dropped because they were late
    latency_ms: list[float] | None = None   # audio in -> frame shown, per shown frame
    render_ms: list[float] | None = None    # its chunk's last audio in -> frame rendered
    frame_ms: list[float] | None = None     # the frame's own audio in -> frame rendered
    first_frame: float | None = None        # perf_counter() when the first frame was rendered

    def __post_init__(self):
        self.latency_ms = self.latency_ms or []
        self.render_ms = self.render_ms or []
        self.frame_ms = self.frame_ms or []


class Player:
    """Pulls frames from a session at the media clock. Call `play(now)` once per slot (or
    whenever; it catches up); it returns what to show and play for every slot now due."""

    def __init__(self, session: Session, start: float | None = None):
        self.session = session
        self.start = start          # wall time of slot 0; set when the first frame exists
        self.next_slot = 0
        self.current: Frame | None = None
        self.waiting: Frame | None = None
        self.stats = PlayerStats()

    def first_frame(self) -> Frame | None:
        """Before the clock starts: the first frame, if one is ready (kept for its slot)."""
        if self.waiting is None:
            self.waiting = self._take()
        return self.waiting

    def due(self, now: float) -> int:
        """Slots due by `now` (0 before the first frame)."""
        if self.start is None:
            return 0
        return max(int((now - self.start) * FPS) + 1 - self.next_slot, 0)

    def play(self, now: float | None = None) -> list[tuple[int, np.ndarray | None, np.ndarray]]:
        """[(slot index, image or None if nothing yet, 48 kHz audio [1920])] for due slots."""
        now = time.perf_counter() if now is None else now
        if self.start is None:
            first = self._take()
            if first is None:
                return []
            self.waiting = first
            self.start = now - first.index / FPS
            self.next_slot = first.index
        out = []
        for _ in range(self.due(now)):
            k = self.next_slot
            frame = self._frame_for(k)
            if frame is not None and frame.index == k:
                self.stats.shown += 1
                self.stats.latency_ms.append((time.perf_counter() - frame.audio_arrived) * 1000)
            elif self.current is not None:
                self.stats.repeated += 1
            image = self.current.image if self.current is not None else None
            out.append((k, image, self.session.frame_audio(k)))
            self.session.mark_played(k)
            self.next_slot += 1
            self.stats.slots += 1
        return out

    def _take(self) -> Frame | None:
        if self.waiting is not None:
            frame, self.waiting = self.waiting, None
            return frame
        frame = self.session.next_frame(timeout=0)
        if frame is not None:
            self.stats.render_ms.append((frame.rendered - frame.audio_arrived) * 1000)
            self.stats.frame_ms.append((frame.rendered - frame.own_audio_arrived) * 1000)
            if self.stats.first_frame is None:
                self.stats.first_frame = frame.rendered
        return frame

    def _frame_for(self, k: int) -> Frame | None:
        """The newest frame with index <= k; later ones wait for their slot."""
        while True:
            frame = self._take()
            if frame is None:
                return self.current if self.current and self.current.index == k else None
            if frame.index > k:
                self.waiting = frame
                return None
            if frame.index < k:
                self.stats.skipped += 1
                self.current = frame
                continue
            self.current = frame
            return frame
