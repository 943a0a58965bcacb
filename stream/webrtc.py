"""A session as two WebRTC tracks (aiortc) on one media clock.

    MediaClock(session, feed, loop)   a thread that, every 20 ms,
        feed.feed(now)                    pushes due audio into the session (or idles it),
        player.play(now)                  takes every 40 ms slot now due: (k, image, audio),
        -> video track                    one VideoFrame, pts 3600 n (1/90000 s),
        -> audio track                    two 20 ms AudioFrames, s16 mono 48 kHz, pts 1920 n
                                          and 1920 n + 960 (1/48000 s), the second one
                                          20 ms later (at the next tick),
                                          n counting output slots (25 a second, always),
    handing the frames to the event loop with call_soon_threadsafe.

Both tracks are paced by that one clock: recv() just waits for the next frame, so pictures
and sound of the same slot leave together and cannot drift apart (aiortc's own
VideoStreamTrack would pace video at 30 fps on a clock of its own). When compute is behind,
the Player repeats the last picture and the sound goes on; a sender that falls behind loses
its oldest frames (counted), never the clock.

Output delay: slot 0 is due the start margin after the first frame was rendered (beyond the
head start of its shorter chunk): 80 ms until this process has measured what its frames need
(ComputeJitter: the most any recent frame needed, + 15 ms, 30-80 ms). The 20 ms ticks are
moved to fall just after slots are due, so a slot leaves when due, not up to a tick later.
Per-slot times (audio in, rendered, due, out, taken by the sender) are kept for the latency
budget (trace(); written to $TALKING_HEAD_TRACE_DIR at stop: benchmarks/webrtc_budget.py).
PromptAudioBuffer/receive_promptly: a received microphone without aiortc's 80 ms hold.

Keeping lips and sound together: the Player fixes the output delay from the first frame,
which comes from a short first chunk (and a barge-in restarts the timeline at the playing
position), so later frames can be due before they are rendered. When most frames of the last
second (80 %: a CPU short of time still shows some in time) came late although frames are
produced at the full 25 fps, the clock delays the player by that lateness (plus a margin) in
a pause of the sound (voice activity detection hears nothing in the slots held back; when
the lateness is large, any pause of RESYNC_PAUSE_SECONDS will do), never inside a word,
while the output holds the last picture over silence (it never stops: 25 slots a second);
the pictures are then on time again instead of trailing the sound. When frames are produced
slower than 25 fps (a machine without the compute), waiting cannot help: the pictures repeat
and trail the sound, and the stats say so, until the session catches up by leaving out
frames (stream/session.py). The delay added is capped (MAX_ADDED_DELAY_SECONDS in all, net
of silence skipped):
a CPU starved in bursts renders its backlog at more than 25 fps when it gets time back,
which looks like "keeping up, but late", and without the cap the latency grew by steps
without bound (44 s after 22 minutes in a soak on a loaded machine), holding every frame
of it in memory. The other way round, when every frame of the last second waited long for its slot
and voice activity detection hears nothing in the slots to skip, the clock skips that much
silence (sound and picture), so a slow start does not cost latency for the rest of the
session; never inside queued audio (an utterance's pauses are part of it, and its audio is
played once, whole).

Barge-in (interrupt()) cuts the session's timeline at the playing position, so audio after it
would be due at once, before its frames can be rendered; the clock pads the new timeline
with silence as long as the output delay, so new speech keeps lips and sound together.
"""

import asyncio
import ipaddress
import json
import logging
import math
import os
import threading
import time
from collections import deque
from fractions import Fraction

import aioice.ice
import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from stream.audio import RATE
from stream.player import FPS, Player
from stream.session import PLAYBACK_PER_FRAME, Session
from stream.sources import AudioFeed
from stream.vad import FRAME as FRAME_VAD

log = logging.getLogger(__name__)

TICK_SECONDS = 0.02
VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_FRAME = 960                      # 20 ms at 48 kHz: one Opus frame
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
QUEUED_SECONDS = 0.4                   # a track keeps at most this much unsent
LATE_WINDOW = 25                       # frames looked at to decide that frames come late
LATE_SHARE = 0.8                       # ... and the share of them that must be late
EARLY_WINDOW = 25                      # ... that frames come early
EARLY_SLACK_SECONDS = 0.15             # a frame waiting longer than this for its slot is early
EARLY_KEEP_SECONDS = 0.08              # the wait left after skipping silence
RESYNC_MARGIN_SECONDS = 0.06           # added to the lateness when the delay grows
RESYNC_LARGE_SECONDS = 0.4             # lateness that takes the next short pause ...
RESYNC_PAUSE_SECONDS = 0.12            # ... of this much silence (a smaller one waits for
#                                        a pause as long as the delay step)
MAX_RESYNC_SECONDS = 1.0               # largest single delay step
MAX_ADDED_DELAY_SECONDS = 1.5          # most delay added in all (net of silence skipped)
FULL_RATE = 0.95 * 25                  # frames per second that count as keeping up
START_MARGIN_SECONDS = 0.08            # first frame -> its slot, beyond the chunk difference,
#                                        until this process has measured its compute jitter
MIN_START_MARGIN_SECONDS = 0.03        # ... the least it may then be
JITTER_SAFETY_SECONDS = 0.015          # ... added to the most that frames needed
JITTER_FRAMES = 25 * 60                # frames of the last sessions the estimate looks at
JITTER_MIN_FRAMES = 25 * 4             # ... and the fewest it trusts
TICK_LEAD_SECONDS = 0.001              # a tick falls this long after a slot is due
TRACE_SLOTS = 25 * 600                 # per-slot timings kept (10 minutes)
TRACE_DIR_ENV = "TALKING_HEAD_TRACE_DIR"   # set: each clock writes its timings there at stop


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PromptAudioBuffer:
    """A received microphone's jitter buffer that lets every packet go as it comes.

    aiortc's audio receiver holds each 20 ms packet until four more have come (prefetch 4:
    80 ms, measured 80-85 ms by benchmarks.webrtc_budget's client-side twin) before it is
    decoded. A session does not need that: its audio timeline already absorbs late and
    bunched audio (Session's jitter allowance, fed at the media clock's tick), so the hold is
    latency for nothing: it sits in front of every frame. Each Opus packet is a whole frame;
    one older than the newest already let go (late or repeated) is dropped, a 20 ms gap."""

    capacity = 1

    def __init__(self):
        self._newest: int | None = None

    def add(self, packet) -> tuple[bool, JitterFrame | None]:
        step = (packet.sequence_number - (self._newest or 0)) % 65536
        if self._newest is not None and not 0 < step < 32768:
            return False, None
        self._newest = packet.sequence_number
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def receive_promptly(receiver) -> None:
    """Give an audio RTCRtpReceiver (a peer's microphone) the PromptAudioBuffer: 80 ms less
    between the peer speaking and the session hearing it."""
    private = "_RTCRtpReceiver__jitter_buffer"      # aiortc 1.16's; another keeps its own
    if (receiver.track is not None and receiver.track.kind == "audio"
            and hasattr(receiver, private)):
        setattr(receiver, private, PromptAudioBuffer())


def use_loopback_for_media() -> None:
    """Offer only 127.0.0.1 as an ICE host candidate (aioice leaves loopback out), for a
    server that listens on loopback: its media then stays on loopback too."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class ClockedTrack(MediaStreamTrack):
    """A track whose frames are put in by the media clock; recv() waits for the next one."""

    def __init__(self, kind: str, capacity: int):
        super().__init__()
        self.kind = kind
        self._frames: asyncio.Queue = asyncio.Queue()
        self.capacity = capacity
        self.dropped = 0                   # frames lost because the sender fell behind
        # (pts, perf_counter()) of the last frames put on the event loop / taken by the
        # sender (its encoder starts then): the latency budget's hand-off stage
        self.queued: deque[tuple[int, float]] = deque(maxlen=TRACE_SLOTS)
        self.taken: deque[tuple[int, float]] = deque(maxlen=TRACE_SLOTS)

    def put(self, frame) -> None:
        """On the event loop. None ends the track."""
        while frame is not None and self._frames.qsize() >= self.capacity:
            self._frames.get_nowait()
            self.dropped += 1
        if frame is not None:
            self.queued.append((frame.pts, time.perf_counter()))
        self._frames.put_nowait(frame)

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._frames.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        self.taken.append((frame.pts, time.perf_counter()))
        return frame


class ComputeJitter:
    """How much output delay this process's frames needed: the start margin of new sessions.

    A frame's need is how long after its slot it was rendered, had the slot been fixed with
    no margin at all (slot k due at the first frame's render + the chunk difference + k / 25
    s): what the first chunk's head start does not cover (later chunks computing longer,
    audio arriving in bursts, other sessions and processes taking the cores). The margin a
    new session starts with is the most any of the last JITTER_FRAMES frames (across this
    process's sessions) needed, plus JITTER_SAFETY_SECONDS, within [MIN_START_MARGIN_SECONDS,
    START_MARGIN_SECONDS]; START_MARGIN_SECONDS until JITTER_MIN_FRAMES frames were measured.
    A session whose frames later come late still resyncs (MediaClock._keep_in_sync)."""

    def __init__(self):
        self._needs: deque[float] = deque(maxlen=JITTER_FRAMES)
        self._lock = threading.Lock()

    def add(self, need: float) -> None:
        with self._lock:
            self._needs.append(need)

    def margin(self) -> float:
        with self._lock:
            if len(self._needs) < JITTER_MIN_FRAMES:
                return START_MARGIN_SECONDS
            need = max(self._needs)
        return float(np.clip(need + JITTER_SAFETY_SECONDS, MIN_START_MARGIN_SECONDS,
                             START_MARGIN_SECONDS))


COMPUTE_JITTER = ComputeJitter()       # one per process: its sessions share the cores


class MediaClock:
    """Plays one session onto a video and an audio track (see the module docstring)."""

    def __init__(self, session: Session, feed: AudioFeed, loop: asyncio.AbstractEventLoop):
        self.session, self.feed, self.loop = session, feed, loop
        self.player = Player(session)
        self.video = ClockedTrack("video", capacity=int(QUEUED_SECONDS * FPS))
        self.audio = ClockedTrack("audio", capacity=int(QUEUED_SECONDS * AUDIO_RATE / AUDIO_FRAME))
        self.error: str | None = None
        self.latency_s: deque[float] = deque(maxlen=4096)   # audio in -> slot, new samples
        self.render_latency_s: deque[float] = deque(maxlen=4096)  # audio in -> rendered
        self._recent: deque[tuple[float, bool]] = deque()   # (time, fresh) per slot, last 5 s
        self._recent_frames: deque[tuple[int, float, float, bool]] = deque(maxlen=EARLY_WINDOW)
        #                 (frame index, rendered at, rendered - due, speech) of recent frames
        self._last_frame = None
        self.added_delay = 0.0                 # output delay added (+) or skipped (-), s
        self._at_cap = False                   # added_delay reached MAX_ADDED_DELAY_SECONDS
        self._held: list = []                      # frames that leave at the next tick
        self._out_slots = 0                        # output slots sent (the timestamps' count)
        self._out_start = 0.0                      # perf_counter() of output slot 0
        self._emitted = 0.0                        # perf_counter() of the last slot out
        self._last_image: np.ndarray | None = None
        self._holding_until: float | None = None   # the output holds the picture until then
        self.first_sent: float | None = None       # time.monotonic() of the first frame out
        self.start_margin: float | None = None     # first frame rendered -> its slot, s
        # per output slot: (n, frame index shown fresh or -1, its own audio in, its chunk's
        # audio in, rendered, due, out), perf_counter() seconds: the latency budget
        self.slot_times: deque[tuple] = deque(maxlen=TRACE_SLOTS)
        self.needs: deque[float] = deque(maxlen=TRACE_SLOTS)   # see ComputeJitter, s
        self._step = threading.Lock()          # one clock step or interrupt at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="media-clock")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        folder = os.environ.get(TRACE_DIR_ENV)
        if folder and self.slot_times:
            self.write_trace(folder)

    def trace(self) -> dict:
        """This clock's timings (what benchmarks/latency.py's budget reads): per output slot
        (slot_times' fields), when each video frame was put on the track and taken by the
        sender (its encoder starts then) by RTP pts, the start margin and every frame's need.
        Times are perf_counter() seconds; `wall_minus_perf` converts them to time.time()."""
        return {"wall_minus_perf": time.time() - time.perf_counter(),
                "start_margin": self.start_margin, "added_delay": self.added_delay,
                "slots": [list(row) for row in self.slot_times],
                "queued": list(self.video.queued), "taken": list(self.video.taken),
                "needs": list(self.needs)}

    def write_trace(self, folder: str) -> None:
        path = os.path.join(folder, f"clock-{os.getpid()}-{id(self):x}.json")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(path, "w") as f:
                json.dump(self.trace(), f)
        except OSError as e:
            log.warning("could not write the clock's trace to %s: %s", path, e)

    def end_tracks(self) -> None:
        """On the event loop: make the tracks' recv() end."""
        self.video.put(None)
        self.audio.put(None)

    @property
    def slots_sent(self) -> int:
        """Output slots sent so far (video frame n has pts 3600 n)."""
        return self._out_slots

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def rates(self, window: float = 5.0) -> tuple[float, float]:
        """(fresh frames per second, slots per second) over the last `window` seconds."""
        recent = list(self._recent)
        if len(recent) < 2:
            return 0.0, 0.0
        span = max(recent[-1][0] - recent[0][0], 1.0 / FPS)
        return sum(fresh for _, fresh in recent) / span, (len(recent) - 1) / span

    # ------------------------------------------------------------------ the clock thread

    def _run(self) -> None:
        next_tick = time.perf_counter()
        try:
            while not self._stop.is_set():
                next_tick = self._aligned(next_tick + TICK_SECONDS)
                delay = next_tick - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -1.0:                   # stalled for a second: do not race
                    next_tick = time.perf_counter()
                if self._stop.is_set():
                    break
                with self._step:
                    self._step_once(time.perf_counter())
                if self.session.stats.errors:
                    raise RuntimeError("; ".join(self.session.stats.errors))
        except Exception as e:          # one session's failure never reaches the others
            if self._stop.is_set():
                return                      # the session was closed under a late step
            self.error = f"{e.__class__.__name__}: {e}"
            log.error("session media clock stopped: %s", self.error)
        finally:
            self._stop.set()

    def _aligned(self, tick: float) -> float:
        """`tick` moved earlier (by less than a tick) to fall just after a slot is due: a
        slot then leaves when it is due, not up to a tick (20 ms) later."""
        start = self.player.start
        if start is None:
            return tick
        phase = (tick - start - TICK_LEAD_SECONDS) % TICK_SECONDS
        return tick - phase if 1e-4 < phase < TICK_SECONDS - 1e-4 else tick

    def _step_once(self, now: float) -> None:
        self._start_utterance_early()
        self.feed.feed(now)
        player = self.player
        if player.start is None and (first := player.first_frame()) is not None:
            # the first frame comes from a shorter chunk than the rest: leave them room,
            # and the margin the compute jitter measured in this process needs
            s = self.session
            self.start_margin = COMPUTE_JITTER.margin()
            player.start = max(first.rendered + (s.chunk - s.first_chunk) / FPS
                               + self.start_margin, now)
        shown, sent = player.stats.shown, self._out_slots
        slots = player.play(now)
        if not slots:
            self._send(self._held)                  # the second half of the last slot's sound
            self._held = []
        for k, image, audio in slots:
            self._emit(image, audio, k)
            frame = player.current
            if frame is not None and frame.index == k:
                self.slot_times.append((self._out_slots - 1, k, frame.own_audio_arrived,
                                        frame.audio_arrived, frame.rendered,
                                        player.start + k / FPS, self._emitted))
            else:
                self.slot_times.append((self._out_slots - 1, -1, None, None, None,
                                        player.start + k / FPS, self._emitted))
        if self._holding_until is not None:         # the output goes on while the player waits
            if now >= self._holding_until:
                self._holding_until = None
            else:
                for _ in range(int((now - self._out_start) * FPS) + 1 - self._out_slots):
                    self._emit(self._last_image, np.zeros(PLAYBACK_PER_FRAME, np.float32))
        stats = player.stats
        self.latency_s.extend(ms / 1000 for ms in stats.latency_ms)
        self.render_latency_s.extend(ms / 1000 for ms in getattr(stats, "frame_ms", None) or [])
        for per_frame in (stats.latency_ms, getattr(stats, "render_ms", None),
                          getattr(stats, "frame_ms", None)):
            if per_frame:
                per_frame.clear()                   # read here; a long session must not grow
        self._count(now, self._out_slots - sent, player.stats.shown - shown)
        self._keep_in_sync()

    def _start_utterance_early(self) -> None:
        """Queued audio (a TTS reply) waiting while the session idles takes the place of the
        idle silence whose frames the player has not taken yet (Session.cut): its first
        frames are then due as soon as compute allows instead of after that silence, and
        since the reply's audio is already there, the look-ahead costs nothing (feed()
        pushes LEAD_SECONDS of it at once).

        The reply starts no sooner than the start margin (what frames need, measured) and
        one slot after the slot playing: silence is put before it where the cut falls closer,
        so its sound is never due before its frames can be made. Only when the reply is
        ahead of real time by more than the silence given up plus a block and its look-ahead
        (audio that trickles in as it is spoken, a streaming TTS 20 ms at a time, would leave
        the moved-up frames without their look-ahead), and only over silence: voice activity
        heard nothing there, and no queued audio lies there. The output delay given up is
        given back in the next idle pause (Session.owe_delay)."""
        s, feed = self.session, self.feed
        if self.player.start is None or feed.queued_seconds <= 0 or feed.feeding_queued:
            return
        front, end = s.generated_end, s.audio_end
        c = s.engine.feature_config
        spf = c.samples_per_frame
        ahead = end - front + (c.block_frames + c.lookahead_frames) * spf
        vad = s.audio.vad
        if not (front < end and feed.queued_seconds * RATE >= ahead and vad is not None
                and not feed.queued_overlaps(front, end)
                and all(vad.speech_at(i) is not True for i in range(front, end, FRAME_VAD))):
            return
        now = time.perf_counter()
        due = s.clock_sample(now)
        cut = s.cut()
        margin = self.start_margin if self.start_margin is not None else START_MARGIN_SECONDS
        start = self.player.next_slot + 1 + math.ceil(margin * FPS)
        if start > cut:
            s.pad_after_cut((start - cut) * spf)
        s.owe_delay(due - s.clock_sample(now))

    def interrupt(self) -> int:
        """Barge-in (from any thread). Returns the frame index of the cut.

        The cut itself may wait for the session's workers (they hold its locks while they
        compute, at a lower priority); the clock goes on meanwhile, never waiting for it.
        The new timeline then starts with silence as long as the audio was ahead of the
        slot playing, so the output delay is kept."""
        s = self.session
        spf = s.engine.feature_config.samples_per_frame
        with self._step:
            ahead = s.audio.end - self.player.next_slot * spf        # 16 kHz samples
        cut = self.feed.interrupt()
        with self._step:
            pad = ahead - (s.audio.end - self.player.next_slot * spf)
            if self.player.start is not None and pad > 0:
                s.pad_after_cut(pad)
            self._recent_frames.clear()
        return cut

    def _keep_in_sync(self) -> None:
        """Delay or advance the player so that frames are due just after they are rendered
        (see the module docstring)."""
        frame, player = self.player.current, self.player
        if frame is None or frame is self._last_frame or player.start is None:
            return
        self._last_frame = frame
        due = player.start + frame.index / FPS
        need = frame.rendered - (due - self.added_delay - self.start_margin)
        self.needs.append(need)
        COMPUTE_JITTER.add(need)
        self._recent_frames.append((frame.index, frame.rendered, frame.rendered - due,
                                    frame.speech))
        recent = list(self._recent_frames)
        late = [x[2] for x in recent[-LATE_WINDOW:]]
        if len(late) == LATE_WINDOW and np.percentile(late, 100 * (1 - LATE_SHARE)) > 0:
            (first, t0, _, _), (last, t1, _, _) = recent[-LATE_WINDOW], recent[-1]
            if (last - first) < FULL_RATE * (t1 - t0):
                return                              # compute-bound: waiting cannot help
            room = MAX_ADDED_DELAY_SECONDS - self.added_delay
            if room < 1.0 / FPS:
                if not self._at_cap:
                    self._at_cap = True
                    log.warning("output delay at its cap (%.0f ms added): late pictures "
                                "will trail the sound", self.added_delay * 1000)
                return                              # pictures trail; latency does not grow
            lateness = float(np.percentile(late, 90))
            shift = min(lateness + RESYNC_MARGIN_SECONDS, MAX_RESYNC_SECONDS, room)
            # the silence the output holds goes into a pause of the sound, never into a word
            # (the sound stays whole; the pictures trail until then)
            pause = shift if lateness < RESYNC_LARGE_SECONDS else RESYNC_PAUSE_SECONDS
            if (lateness < RESYNC_LARGE_SECONDS and frame.speech) or not self._silent(
                    player.next_slot, player.next_slot + int(pause * FPS) + 2):
                return                              # wait for a pause
            player.start += shift                   # the player waits `shift` ...
            self._holding_until = time.perf_counter() + shift   # ... while the output holds
        elif (len(recent) == EARLY_WINDOW and max(x[2] for x in recent) < -EARLY_SLACK_SECONDS
              and not frame.speech):
            skip = int((-max(x[2] for x in recent) - EARLY_KEEP_SECONDS) * FPS)
            if not self._silent(player.next_slot, player.next_slot + skip + 2):
                return                              # speech is coming: skip in the next pause
            player.next_slot += skip                # sound and picture skip `skip` silent slots
            player.start -= skip / FPS
            shift = -skip / FPS
        else:
            return
        self.added_delay += shift
        self._at_cap = self._at_cap and shift > 0
        self._recent_frames.clear()
        log.info("output delay %+.0f ms (%.0f ms added in all)", shift * 1000,
                 self.added_delay * 1000)

    def _silent(self, first: int, end: int) -> bool:
        """Whether slots [first, end) are silence that may be skipped: voice activity
        detection heard nothing there, and no queued audio (an utterance, whose pauses are
        its own) lies there."""
        vad = self.session.audio.vad
        spf = self.session.engine.feature_config.samples_per_frame
        step = spf // 2
        return (vad is not None and not self.feed.queued_overlaps(first * spf, end * spf)
                and all(vad.speech_at(i) is False for i in range(first * spf, end * spf, step)))

    def _count(self, now: float, slots: int, fresh: int) -> None:
        for i in range(slots):
            self._recent.append((now, i < fresh))
        while self._recent and self._recent[0][0] < now - 5.0:
            self._recent.popleft()

    def _emit(self, image: np.ndarray | None, audio: np.ndarray,
              frame: int | None = None) -> None:
        """The next output slot n: `image`, 48 kHz `audio` [1920], `frame` the session frame
        whose audio it plays (None while the output holds). Timestamps count output slots:
        continuous whatever the player skipped or waited."""
        n = self._out_slots
        self._emitted = time.perf_counter()
        if n == 0:
            self._out_start = self._emitted
            self.first_sent = time.monotonic()
        self._out_slots += 1
        if image is not None:
            self._last_image = image
        self._output(n, frame, image, audio)

    def _output(self, n: int, frame: int | None, image: np.ndarray | None,
                audio: np.ndarray) -> None:
        """Slot n onto the tracks: its picture and first 20 ms of sound now, the second 20 ms
        at the next tick (each audio frame leaves at its own time, as a microphone's would).
        (stream/headless.py sends slots whole instead.)"""
        frames, self._held = self._held, []
        if image is not None:
            video = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            video.pts, video.time_base = n * (VIDEO_CLOCK // FPS), VIDEO_TIME_BASE
            frames.append((self.video, video))
        pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)    # [1920]
        for i in range(PLAYBACK_PER_FRAME // AUDIO_FRAME):
            sound = av.AudioFrame.from_ndarray(pcm[None, i * AUDIO_FRAME:(i + 1) * AUDIO_FRAME],
                                               format="s16", layout="mono")
            sound.sample_rate = AUDIO_RATE
            sound.pts, sound.time_base = n * PLAYBACK_PER_FRAME + i * AUDIO_FRAME, AUDIO_TIME_BASE
            (frames if i == 0 else self._held).append((self.audio, sound))
        self._send(frames)

    def _send(self, frames: list) -> None:
        if not frames:
            return
        if self.first_sent is None:
            self.first_sent = time.monotonic()
        try:
            self.loop.call_soon_threadsafe(_put_all, frames)
        except RuntimeError:            # the event loop is closed: the server is stopping
            self._stop.set()


def _put_all(frames) -> None:
    for track, frame in frames:
        track.put(frame)
