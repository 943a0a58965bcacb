"""How wide this person opens their mouth: a video avatar's generated openings kept within
the reach its recording shows.

The motion network learned its mouths from many voices (train.synth) and opens the jaw as
wide as they do; a person's own recording shows how wide *they* open it. franck.mp4, talking
for 20 s, parts his inner lips at most 0.105 face widths (99th percentile 0.101); the network
on five real-speech recordings reaches 0.139 at its 99th percentile and 0.18 at most: a
mouth opened wider than the person ever opens it is not their way of speaking.

So playback compresses what a generated opening has beyond the recording's usual widest (its
99th percentile, the knee) smoothly towards a ceiling a little past the widest it shows: an
opening the person makes is untouched, a wider one comes out between the two, and openings
keep their order, so the mouth still follows the speech. The knee is never below FLOOR: a
recording in which the person hardly speaks still lets the avatar speak. Only the opening
parameters (jaw, upper lip raise, lower lip depress) are scaled, together, so the mouth keeps
its shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import motion_space as ms
from models.mouth_bank import lip_gap

OPENING = [ms.index(n) for n in ("jaw_open", "upper_lip_raise", "lower_lip_depress")]
USUAL = 99.0          # percentile of the recording's openings where compression starts
CEILING = 1.2         # compressed openings approach the recording's widest times this
FLOOR = 0.06          # face widths: the knee is never lower (a person who hardly speaks)


@dataclass(frozen=True)
class MouthReach:
    """Inner-lip gaps in face widths: untouched up to `knee`, compressed towards `ceiling`."""
    knee: float
    ceiling: float

    def compress(self, gap: float) -> float:
        """The gap an opening of `gap` is shown at (continuous, increasing, < ceiling)."""
        if gap <= self.knee:
            return gap
        room = self.ceiling - self.knee
        return self.knee + room * float(np.tanh((gap - self.knee) / room))

    def limit(self, change: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """`change` [D] (what playback adds to a recorded frame whose landmarks are
        `landmarks` [68, 2]) with its opening parameters scaled so that the inner lips part
        by compress(the gap they would part by). A new array where it changes."""
        moved = ms.landmarks(landmarks, change)
        gap = float(face_gap(moved))
        if gap <= self.knee:
            return change
        closed = change.copy()
        closed[OPENING] = 0.0
        base = float(face_gap(ms.landmarks(landmarks, closed)))  # the recorded frame's own
        if gap - base <= 1e-6:
            return change
        # the landmarks are linear in the expression parameters: so is the gap, nearly
        share = float(np.clip((self.compress(gap) - base) / (gap - base), 0.0, 1.0))
        out = change.copy()
        out[OPENING] *= share
        return out


def face_gap(landmarks: np.ndarray) -> np.ndarray:
    """How far the inner lips part, in face widths (jaw line end to end), for landmarks
    [..., 68, 2]."""
    width = np.linalg.norm(landmarks[..., 16, :] - landmarks[..., 0, :], axis=-1)
    return lip_gap(landmarks[..., 60:68, :], np.maximum(width, 1e-6))


def mouth_reach(landmarks: np.ndarray) -> MouthReach:
    """The reach of a recording whose ticks' landmarks are [F, 68, 2]."""
    gaps = face_gap(landmarks)
    gaps = gaps[np.isfinite(gaps)]
    if gaps.size == 0:
        return MouthReach(FLOOR, FLOOR * CEILING)
    knee = max(float(np.percentile(gaps, USUAL)), FLOOR)
    return MouthReach(knee, max(CEILING * float(gaps.max()), CEILING * knee))
