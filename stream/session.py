"""One streaming session: audio pieces in, 25 fps frames out, as long as audio keeps coming.

    push_audio()  -> AudioInput (16 kHz + 48 kHz playback copy, VAD)
                  -> FeatureStream (a block of H frames as soon as its audio + look-ahead is in)
    motion thread -> MotionGenerator: a chunk (shorter first, then N frames) with the carry
    render thread -> Engine.render: frames, into `frames` (a queue of Frame)

The two threads overlap (chunk i+1 is sampled while chunk i renders); neither holds the
session lock while a network runs, so pushing audio never waits for the models. Memory stays
bounded whatever the producer and consumer do: at most RENDER_QUEUE chunks wait for the
renderer (the motion thread waits when it is full) and at most `max_frames_queued` frames
wait for the consumer (beyond that the oldest work is dropped and counted in
dropped_frames). Everything is keyed by
the frame index on the session timeline: frame t shows the 40 ms of audio
[640 t, 640 (t + 1)) at 16 kHz, = [1920 t, 1920 (t + 1)) in the 48 kHz playback copy, so
whoever plays the frames (stream/player.py, the mp4 writer, WebRTC) takes the audio of the
same index and lips and sound leave together.

Frame content depends only on the audio and the seed, never on how the audio was cut into
pieces. In real-time mode (`tick()` called by a clock), silence fills the timeline while no
audio arrives, so the avatar idles instead of freezing.

A renderer behind (real time): when several chunks wait for it, it renders them in one call
(up to RENDER_BATCH frames). A call has a fixed cost (torch dispatches a few thousand small
ops whatever the frame count: at 256 px 33 ms for 1 frame, 10 ms/frame for 8), so a renderer
that fell behind gets cheaper per frame until it has caught up; one waiting chunk renders alone,
so latency is unchanged while it keeps up. Offline it renders chunk by chunk: a batched
matmul may round differently in the last bit (1 grey level in rare pixels at 512 px), and
offline frames depend only on the audio and the seed.

Falling behind in real time: a chunk whose slots the player played more than LATE_MARGIN
frames (1 s) ago is not rendered (its motion still is, for the carry); it counts in
stats.late_frames. (The margin is a precaution: skipping at any lateness gave the WebRTC
microphone test fewer fresh frames in a single run on a loaded machine.) When the features
and motion themselves fall that far behind (a CPU with less than real-time compute: every
chunk then reaches the renderer too late and the picture would freeze for good), the
motion thread catches up instead: it jumps to the newest audio block that has arrived,
leaving out the frames in between (counted in late_frames; their slots were played with a
repeated picture), and goes on from there with the carry it had, so the picture is in step
with the sound again and freezes only while it is behind. A machine that is short of
compute for good shows fresh frames in bursts between catch-ups instead of none at all.
A renderer that is busy all the time and still late (more sessions than the cores can
render) renders every other or every third frame (stream/render_stride.py), in time, instead
of every frame late (counted in thinned_frames); it then skips a late chunk when a newer one
waits, and tries all frames again after a back-off.

Barge-in: interrupt() cuts the timeline at the first block boundary not yet handed out;
queued audio, features, motion and frames after it are dropped, chunks in flight are
discarded (epoch counter), and generation continues from the cut with silence, the carry
restored from the frames that were kept.
"""

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from models import motion_space
from models.avatar import Avatar
from models.video_avatar import HEAD_MOTION_STYLE, VideoAvatar, VideoPlayback
from stream.audio import PLAYBACK_RATE, RATE, AudioInput
from stream.engine import Engine
from stream.render_stride import RenderStride

PLAYBACK_PER_FRAME = PLAYBACK_RATE // 25      # 1920 samples of 48 kHz audio per frame
# what a barge-in closes over the first chunk after the cut (the model then idles)
SETTLE = [motion_space.index(n) for n in ("jaw_open", "upper_lip_raise", "lower_lip_depress",
                                          "lip_pucker")]
RENDER_QUEUE = 8              # chunks sampled but not yet rendered
RENDER_BATCH = 8              # frames the renderer takes in one call when chunks queue up
LATE_MARGIN = 25              # real time: a chunk this many frames behind the player is skipped


@dataclass
class Frame:
    index: int               # frame number on the session timeline (25 fps)
    image: np.ndarray        # [S, S, 3] uint8
    motion: np.ndarray       # [D] motion-space values
    speech: bool             # voice activity during this frame's audio
    audio_arrived: float     # perf_counter() when the last audio its chunk needed arrived
    rendered: float          # perf_counter() when the frame was ready
    own_audio_arrived: float = 0.0   # ... when this frame's own 40 ms of audio had arrived


@dataclass
class _Chunk:
    epoch: int
    start: int               # first frame index
    motion: np.ndarray       # [n, D]
    speech: list[bool]
    audio_arrived: float
    own_arrived: list[float]


@dataclass
class SessionStats:
    chunks: int = 0
    frames: int = 0
    interrupts: int = 0
    late_frames: int = 0     # real time: not rendered, their slots had already been played
    thinned_frames: int = 0  # real time: not rendered, the session short of compute (stride)
    catch_ups: int = 0       # real time: jumps of the features and motion to the newest audio
    errors: list[str] = field(default_factory=list)
    stage_ms: dict[str, float] = field(                 # total wall ms per stage
        default_factory=lambda: {"features": 0.0, "motion": 0.0, "render": 0.0})
    stage_frames: dict[str, int] = field(                # frames those stages produced
        default_factory=lambda: {"features": 0, "motion": 0, "render": 0})

    def add(self, stage: str, ms: float, frames: int) -> None:
        self.stage_ms[stage] += ms
        self.stage_frames[stage] += frames

    def stage_means(self) -> dict[str, float]:
        """Mean wall ms per frame of each stage."""
        return {k: self.stage_ms[k] / max(self.stage_frames[k], 1) for k in self.stage_ms}


class Session:
    def __init__(self, engine: Engine, avatar: Avatar | VideoAvatar, *, seed: int = 0,
                 style: dict | None = None, chunk: int | None = None,
                 first_chunk: int | None = None, realtime: bool = False,
                 jitter_ms: float = 100.0, max_frames_queued: int = 250):
        self.engine, self.realtime = engine, realtime
        # real time, the renderer short of compute: render every other frame on time rather
        # than every frame late (stream/render_stride.py); off for a consumer that needs
        # every frame (fast pacing sends each frame with its own sound)
        self.render_stride = RenderStride()
        self.thin_when_behind = realtime
        self._video_head_motion = 0.0      # HEAD_MOTION_STYLE: see set_style
        self.avatar = avatar
        c = engine.feature_config
        self.block = c.block_frames
        # chunk = one feature block (80 ms) by default: the latency floor on a CPU; a GPU
        # serving many sessions may take longer chunks (up to the model's chunk_frames)
        self.chunk = chunk or self.block
        if not 1 <= self.chunk <= engine.motion.config.chunk_frames:
            raise ValueError(f"chunk must be 1..{engine.motion.config.chunk_frames} frames")
        self.first_chunk = first_chunk or min(self.block, self.chunk)
        self.carry_frames = engine.motion.config.carry_frames
        self.context_frames = engine.motion.config.context_frames    # history + carry
        self.jitter = int(jitter_ms * RATE / 1000)
        self.audio = AudioInput(playback=True)
        self.features = engine.features.stream()
        self.generator = engine.generator(seed=seed, style=style)
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=max_frames_queued)
        self.stats = SessionStats()

        self._lock = threading.Condition()
        # lock order: _feature_lock, _motion_lock, _lock; the first two guard the feature
        # stream and the generator while a network runs, so _lock is only ever held briefly
        self._feature_lock = threading.Lock()
        self._motion_lock = threading.Lock()
        self._taken = 0                    # 16 kHz samples handed to the feature stream
        self._pending = []                 # [(frame index, feature [stack, 384])] not yet sampled
        self._next_frame = 0               # index of the next frame to sample
        self._history = deque(maxlen=self.context_frames + 4 * self.chunk + max_frames_queued)
        self._delivered = 0                # frames handed to the consumer
        self._arrivals = deque()           # (16 kHz end index, perf_counter) of pushes
        self._ended = False                # the audio source finished (offline mode)
        self._features_finished = False    # ... and the feature stream was flushed
        self._features_waiting = False     # blocks whose audio is in, not yet encoded
        self._rendered = 0                 # frames rendered (index + 1 of the last one)
        self.dropped_frames = 0            # frames lost because the consumer fell behind
        self._epoch = 0
        self._settle_at = -1               # frame index where a barge-in ramp starts
        self._closed = False
        self._started = time.perf_counter()
        self._delay_owed = 0               # 16 kHz samples of output delay owed (owe_delay)
        self._played: int | None = None    # frames before this were played (None: none yet)
        # tick() fills silence only once the audio not yet played is less than this: the
        # next frames' block and look-ahead, and the jitter allowance to compute them
        self._fill_reserve = (self.jitter
                              + (c.block_frames + c.lookahead_frames) * c.samples_per_frame)
        self._render_queue: queue.Queue[_Chunk | None] = queue.Queue(maxsize=RENDER_QUEUE)
        self._threads = [threading.Thread(target=self._motion_loop, daemon=True, name="motion"),
                         threading.Thread(target=self._render_loop, daemon=True, name="render")]
        for t in self._threads:
            t.start()

    @property
    def avatar(self) -> Avatar | VideoAvatar:
        return self._avatar

    @avatar.setter
    def avatar(self, avatar: Avatar | VideoAvatar) -> None:
        """Switch avatars; the next chunk rendered shows the new one. A photo: every frame
        rendered from the portrait; a recording: its frames played, the mouth brought to the
        generated motion (models.video_avatar)."""
        playback = (VideoPlayback(avatar, self._video_head_motion)
                    if isinstance(avatar, VideoAvatar) else None)
        self._avatar, self._playback = avatar, playback

    @property
    def playback(self) -> VideoPlayback | None:
        """A video avatar's playback (what it rendered), None for a photo."""
        return self._playback

    # ------------------------------------------------------------------ audio side

    def push_audio(self, pcm: np.ndarray, rate: int, channels: int = 1) -> tuple[int, int]:
        """Add a piece of audio from any source. Raises AudioInputError on bad input (the
        session stays usable). Returns the stretch of the 16 kHz timeline it filled."""
        with self._lock:
            self._check_open()
            start = self.audio.end
            self.audio.push(pcm, rate, channels)
            self._arrivals.append((self.audio.end, time.perf_counter()))
            self._lock.notify_all()
            return start, self.audio.end

    def pad_after_cut(self, samples: int) -> None:
        """Real time, right after interrupt(): `samples` of silence (16 kHz) that keep the
        output delay, counted as on time: the clock's silence fill (tick) goes on from their
        end, not from the cut (else the delay would collapse once they have played)."""
        with self._lock:
            self.audio.push_silence(samples / RATE)
            self._arrivals.append((self.audio.end, time.perf_counter()))
            self._started -= samples / RATE
            self._lock.notify_all()

    @property
    def audio_end(self) -> int:
        """16 kHz samples on the session's timeline so far."""
        with self._lock:
            return self.audio.end

    def end_audio(self) -> None:
        """The current source finished: release the resamplers' tail. Offline (not
        real-time) this also ends the stream: the last partial chunk is generated."""
        with self._lock:
            self.audio.flush()
            self._arrivals.append((self.audio.end, time.perf_counter()))
            if not self.realtime:
                self._ended = True
            self._lock.notify_all()

    def tick(self, now: float | None = None) -> None:
        """Real-time clock: if the timeline fell behind the wall clock by more than the
        jitter allowance, fill the gap with silence (the avatar idles, never freezes), and
        the output delay owed (owe_delay) with it.

        Not while the audio not yet played still covers what the next frames need (their
        block and look-ahead, and the jitter allowance again for computing them): audio that
        arrives late (a loaded machine holds the microphone's packets back) then still lies
        where it belongs, whole, instead of after a silence put into the middle of a word.
        With the usual output delay this is the jitter allowance alone; after the output
        delay grew (a loaded machine) late audio may be late by that much more."""
        with self._lock:
            now = time.perf_counter() if now is None else now
            due = int((now - self._started) * RATE)
            gap = due - self.audio.end
            if gap > self.jitter and self._unplayed() < self._fill_reserve:
                owed, self._delay_owed = self._delay_owed, 0
                self._started -= owed / RATE
                self.audio.push_silence((gap + owed) / RATE)
                self._arrivals.append((self.audio.end, now))
                self._lock.notify_all()

    def set_style(self, style: dict) -> None:
        """The model's style controls (each message sets them all; a missing one is 1.0),
        and HEAD_MOTION_STYLE (0..1: how much generated head motion a video avatar adds to
        its recording's; kept for video avatars to come; alone in a message it changes
        nothing else)."""
        style = dict(style)
        head = style.pop(HEAD_MOTION_STYLE, None)
        if head is not None:
            self._video_head_motion = float(np.clip(head, 0.0, 1.0))
            if self._playback is not None:
                self._playback.head_motion = self._video_head_motion
            if not style:
                return
        with self._motion_lock:
            self.generator.set_style(style)

    def interrupt(self) -> int:
        """Barge-in. Returns the frame index where the timeline was cut."""
        with self._lock:
            self.stats.interrupts += 1
        return self.cut()

    def cut(self) -> int:
        """Cut the timeline at the first block not yet handed to the motion stage: the audio,
        features and frames after it are forgotten, and the next audio continues there.
        Returns that frame index. A barge-in; and, in fast pacing, the idle silence not yet
        generated giving way to an utterance (stream/headless.py)."""
        with self._feature_lock, self._motion_lock, self._lock:
            self._epoch += 1
            cut = self._cut_frame()
            kept = [h for h in self._history if h[0] < cut]
            self._history = deque(kept, maxlen=self._history.maxlen)
            self._next_frame = cut
            self._settle_at = cut
            self._pending = []
            self._features_finished = False
            self._features_waiting = False
            self._rendered = min(self._rendered, cut)
            self._drop_queued_frames(cut)
            # rebuild the audio timeline and the feature stream at the cut
            c = self.engine.feature_config
            cut_sample = cut * c.samples_per_frame
            self.audio.truncate(cut_sample)
            window_start = c.window_end(cut // self.block) - c.window_samples
            self.features.restart_at(cut // self.block,
                                     self.audio.read(window_start, cut_sample))
            self._taken = cut_sample
            self._restore_carry()
            if self.realtime:
                # the timeline restarts at the cut, which is now; the clock follows it
                self._started = time.perf_counter() - cut_sample / RATE
            self._lock.notify_all()
            return cut

    def _unplayed(self) -> int:
        """16 kHz samples of the timeline after the slot playing (0 before playing starts:
        then nothing waits for late audio). Under the lock."""
        if self._played is None:
            return 0
        return self.audio.end - self._played * self.engine.feature_config.samples_per_frame

    def clock_sample(self, now: float) -> int:
        """Real time: the 16 kHz sample of the timeline due at perf_counter() `now` (what
        tick() fills silence up to)."""
        with self._lock:
            return int((now - self._started) * RATE)

    def owe_delay(self, samples: int) -> None:
        """An utterance started early (MediaClock._start_utterance_early) and gave up
        `samples` of the output delay: the silence between the clock and the slot playing,
        which audio arriving at real-time pace needs for its block and look-ahead. The next
        time tick() fills silence (nothing came for longer than the jitter allowance: the
        avatar idles) it fills that much more, which gives the delay back; never inside an
        utterance whose pieces keep coming, however they are spaced."""
        with self._lock:
            self._delay_owed = max(self._delay_owed + samples, 0)

    @property
    def generated_end(self) -> int:
        """16 kHz sample where cut() would cut now: the first block boundary no frame after
        which has been handed to the consumer (nor beyond what motion has sampled); what lies
        after it can still be replaced."""
        with self._lock:
            return self._cut_frame() * self.engine.feature_config.samples_per_frame

    def _cut_frame(self) -> int:
        """The first block boundary not yet handed to the consumer (and not beyond what was
        sampled)."""
        cut = -(-self._delivered // self.block) * self.block
        if cut > self._next_frame:
            cut = self._next_frame // self.block * self.block
        return cut

    def _drop_queued_frames(self, cut: int) -> None:
        kept = []
        while True:
            try:
                f = self.frames.get_nowait()
            except queue.Empty:
                break
            if f.index < cut:
                kept.append(f)
        for f in kept:
            self.frames.put_nowait(f)

    def _restore_carry(self) -> None:
        k, h = self.carry_frames, self.context_frames
        recent = list(self._history)[-h:]
        g = self.generator
        g.reset_carry()
        if recent:
            motion = np.stack([m for _, m, _ in recent])
            feats = np.stack([f for _, _, f in recent[-k:]])
            g.carry[h - len(recent):] = motion
            g.carry_audio[k - len(feats):] = feats

    # ------------------------------------------------------------------ consumer side

    def next_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame in order (None on timeout). Marks it delivered."""
        try:
            f = self.frames.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self._delivered = max(self._delivered, f.index + 1)
            self._release()
        return f

    def frame_audio(self, index: int) -> np.ndarray:
        """48 kHz audio of frame `index` [1920] (zeros where none arrived)."""
        with self._lock:
            start = index * PLAYBACK_PER_FRAME
            return self.audio.read_playback(start, start + PLAYBACK_PER_FRAME)

    def mark_played(self, index: int) -> None:
        """The player is done with frames and audio before `index` (frees memory)."""
        with self._lock:
            self._played = max(self._played or 0, index)
            self._delivered = max(self._delivered, index)
            self._release()

    def _release(self) -> None:
        c = self.engine.feature_config
        played = self._delivered
        # the sound goes by the slots a player played, when there is one: a frame taken
        # ahead of its slot (after a catch-up jumped the motion ahead) must not take the
        # sound of the slots before it with it
        heard = played if self._played is None else min(played, self._played)
        self.audio.discard_playback_before((heard - 2) * PLAYBACK_PER_FRAME)
        # keep one window of 16 kHz audio before the earliest frame that may still be cut
        # (a player may mark slots played before their frames were generated)
        self.audio.discard_before(min(self._taken, (min(played, self._next_frame)
                                                    - c.window_frames) * c.samples_per_frame))
        sampled = self._next_frame * c.samples_per_frame     # arrival times still needed after
        while len(self._arrivals) > 1 and self._arrivals[1][0] <= sampled:
            self._arrivals.popleft()

    @property
    def frames_generated(self) -> int:
        return self._next_frame

    def drained(self) -> bool:
        """Offline: the stream ended and every frame of its audio was rendered."""
        with self._lock:
            return (self._features_finished and not self._pending
                    and self._rendered >= self._next_frame) or self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        while True:                          # make room for the render thread's stop mark
            try:
                self._render_queue.put_nowait(None)
                break
            except queue.Full:
                try:
                    self._render_queue.get_nowait()
                except queue.Empty:
                    pass
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            self.audio.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("session closed")

    # ------------------------------------------------------------------ workers

    def _arrival_time(self, end_sample: int) -> float:
        for index, t in self._arrivals:
            if index >= end_sample:
                return t
        return time.perf_counter()

    def _motion_loop(self) -> None:
        try:
            while True:
                if self._motion_behind(self._next_frame):
                    self._catch_up()
                with self._lock:
                    while not self._closed and not self._work_ready():
                        self._lock.wait(timeout=0.5)
                    if self._closed:
                        return
                    epoch = self._epoch
                    audio = self.audio.read(self._taken, self.audio.end)
                    self._taken = self.audio.end
                    finishing = self._ended and not self._features_finished
                # the encoder runs outside the session lock (audio keeps arriving meanwhile)
                t0 = time.perf_counter()
                with self._feature_lock:
                    if epoch != self._epoch:
                        continue
                    if audio.size:
                        self.features.push(audio)
                    # a chunk's blocks at a time: when audio comes in a burst (a reply sent
                    # whole) the first chunk is sampled and rendered before the rest of the
                    # burst is encoded, not after (the encoder runs a window per block anyway)
                    feats = self.features.pull(max_blocks=max(self.chunk // self.block, 1))
                    waiting = self.features.ready_blocks() > 0
                    finishing = finishing and not waiting
                    if finishing:
                        feats = np.concatenate([feats, self.features.finish()])
                if len(feats):
                    self.stats.add("features", (time.perf_counter() - t0) * 1000, len(feats))
                with self._lock:
                    if epoch != self._epoch:
                        continue
                    self._features_waiting = waiting
                    self._features_finished |= finishing
                    first = self._next_frame + len(self._pending)
                    self._pending += [(first + i, f) for i, f in enumerate(feats)]
                    job = self._take_chunk()
                while job is not None:
                    self._sample(*job)
                    with self._lock:
                        job = self._take_chunk() if epoch == self._epoch else None
                        if job is not None and self._motion_behind(job[1]):
                            job = None                  # too late: catch up first (above)
        except Exception as e:          # a broken engine ends this session, not the process
            self.stats.errors.append(f"motion: {e.__class__.__name__}: {e}")
            self._closed = True

    def _motion_behind(self, frame: int) -> bool:
        """Real time: sampling from `frame` on is more than LATE_MARGIN frames behind the
        player."""
        return self.realtime and frame + LATE_MARGIN < self._delivered

    def _catch_up(self) -> None:
        """Real time, features and motion more than LATE_MARGIN frames behind the player:
        restart the feature stream at the newest block whose window has arrived (see the
        module docstring). The carry is kept: the next chunk starts from the last motion."""
        with self._feature_lock, self._motion_lock, self._lock:
            if self._closed or not self._motion_behind(self._next_frame):
                return
            c = self.engine.feature_config
            spf = c.samples_per_frame
            # the newest block whose window (look-ahead included) is in: window_end(b) <= end
            block = (self.audio.end // spf - c.lookahead_frames) // self.block - 1
            cut = block * self.block
            if cut <= self._next_frame:
                return
            skipped = cut - self._next_frame
            window_start = c.window_end(block) - c.window_samples
            self.features.restart_at(block, self.audio.read(window_start, cut * spf))
            self._taken = cut * spf
            self._pending = []
            self._features_waiting = False
            self._next_frame = cut
            if 0 <= self._settle_at < cut:
                self._settle_at = cut           # a barge-in's mouth ramp still applies
            self.stats.late_frames += skipped
            self.stats.catch_ups += 1
            self._lock.notify_all()

    def _work_ready(self) -> bool:
        return (self.audio.end > self._taken or self._features_waiting
                or (self._ended and not self._features_finished))

    def _take_chunk(self):
        """Under the lock: the next complete chunk to sample (epoch, first index, features,
        speech flags, audio arrival time), or None."""
        need = self.first_chunk if self._next_frame == 0 else self.chunk
        if not self._pending or (len(self._pending) < need and not self._features_finished):
            return None
        take, self._pending = self._pending[:need], self._pending[need:]
        start = take[0][0]
        c = self.engine.feature_config
        spf = c.samples_per_frame
        end_sample = (start + len(take) + c.lookahead_frames) * spf
        speech = [bool(self.audio.vad.speech_at(i * spf + spf // 2)) for i, _ in take]
        own = [self._arrival_time(min((i + 1) * spf, self.audio.end)) for i, _ in take]
        self._next_frame = start + len(take)
        return (self._epoch, start, np.stack([f for _, f in take]), speech,
                self._arrival_time(min(end_sample, self.audio.end)), own)

    def _sample(self, epoch: int, start: int, feats: np.ndarray, speech: list[bool],
                arrived: float, own: list[float]) -> None:
        t0 = time.perf_counter()
        with self._motion_lock:             # interrupt() waits for this chunk, not the reverse
            if epoch != self._epoch:
                return
            motion = self.generator.generate(feats)
            with self._lock:
                if start == self._settle_at:
                    self._settle(motion)
                for i in range(len(motion)):
                    self._history.append((start + i, motion[i], feats[i]))
        self.stats.add("motion", (time.perf_counter() - t0) * 1000, len(motion))
        chunk = _Chunk(epoch, start, motion, speech, arrived, own)
        while not self._closed and epoch == self._epoch:  # wait while the renderer is behind
            try:
                self._render_queue.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def _settle(self, motion: np.ndarray) -> None:
        """Barge-in: ramp the mouth shut over this chunk, so the face is back at rest within
        one chunk whatever the model would still say; the carry keeps the ramped frames."""
        n = len(motion)
        ramp = 1.0 - np.arange(1, n + 1, dtype=np.float32) / n          # ends at 0
        motion[:, SETTLE] *= ramp[:, None]
        k = self.generator.carry.shape[0]
        m = min(n, k)
        self.generator.carry[k - m:] = motion[n - m:]

    def _next_render_batch(self) -> list[_Chunk] | None:
        """The next chunk to render and any that queued up behind it (same epoch, contiguous,
        RENDER_BATCH frames at most); None when the session closes."""
        chunk = self._render_queue.get()
        if chunk is None:
            return None
        batch = [chunk]
        frames = len(chunk.motion)
        while self.realtime:
            try:
                following = self._render_queue.queue[0]     # peek: only take what fits
            except IndexError:
                break
            if (following is None or following.epoch != chunk.epoch
                    or following.start != batch[-1].start + len(batch[-1].motion)
                    or frames + len(following.motion) > RENDER_BATCH):
                break
            batch.append(self._render_queue.get_nowait())
            frames += len(following.motion)
        return batch

    def _render_loop(self) -> None:
        try:
            while True:
                batch = self._next_render_batch()
                if batch is None:
                    return
                if batch[0].epoch != self._epoch:
                    continue
                if self.realtime:
                    batch = self._skip_late(batch)
                    if not batch:
                        continue
                t0 = time.perf_counter()
                index = np.concatenate([np.arange(c.start, c.start + len(c.motion))
                                        for c in batch])                      # [sum n]
                stride = self.render_stride if self.thin_when_behind else None
                drawn = [k for k in range(len(index))
                         if stride is None or stride.renders(int(index[k]))]
                images = {}
                if drawn:
                    motion = np.concatenate([c.motion for c in batch])[drawn]  # [drawn, D]
                    avatar, playback = self._avatar, self._playback
                    if playback is None:
                        out = self.engine.render(avatar, motion)
                    else:
                        out = playback.frames(self.engine, index[drawn], motion)
                    images = dict(zip(drawn, out, strict=True))
                done = time.perf_counter()
                if drawn:
                    self.stats.add("render", (done - t0) * 1000, len(drawn))
                with self._lock:
                    if batch[0].epoch != self._epoch:
                        continue
                    late = bool(drawn) and int(index[drawn[0]]) < self._delivered
                    self.stats.thinned_frames += len(index) - len(drawn)
                    offset = 0
                    for chunk in batch:
                        self.stats.chunks += 1
                        for i in range(len(chunk.motion)):
                            if offset + i in images:
                                self._put_frame(Frame(chunk.start + i, images[offset + i],
                                                      chunk.motion[i], chunk.speech[i],
                                                      chunk.audio_arrived, done,
                                                      chunk.own_arrived[i]))
                        offset += len(chunk.motion)
                        self._rendered = chunk.start + len(chunk.motion)
                    self._lock.notify_all()
                if stride is not None and drawn:
                    stride.observe(done, late, len(index), done - t0)
        except Exception as e:
            self.stats.errors.append(f"render: {e.__class__.__name__}: {e}")
            self._closed = True

    def _skip_late(self, batch: list[_Chunk]) -> list[_Chunk]:
        """Real time: chunks whose slots the player passed more than LATE_MARGIN frames ago
        would only be skipped, so they are not rendered (counted in late_frames). A renderer
        known to be short of compute (rendering fewer frames) also skips a chunk whose slots
        have all passed when a newer one waits: its time goes to frames that can still be
        shown (a late frame still replaces the picture on screen, so the newest is kept)."""
        thin = self.render_stride.stride > 1
        kept = []
        for i, chunk in enumerate(batch):
            newer = i + 1 < len(batch) or not self._render_queue.empty()
            margin = 0 if thin and newer else LATE_MARGIN
            if chunk.start + len(chunk.motion) + margin <= self._delivered:
                with self._lock:
                    self.stats.late_frames += len(chunk.motion)
                    self._rendered = chunk.start + len(chunk.motion)
            else:
                kept.append(chunk)
        return kept

    def _put_frame(self, frame: Frame) -> None:
        """Under the lock: queue a frame; a consumer that stopped taking frames loses the
        oldest (counted in dropped_frames), never memory."""
        while True:
            try:
                self.frames.put_nowait(frame)
                self.stats.frames += 1
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped_frames += 1
                except queue.Empty:
                    pass
