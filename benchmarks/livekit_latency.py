"""Latency through a LiveKit agent with the talking-head avatar (issue 18), without a LiveKit
server.

    python -m benchmarks.livekit_latency [--size 256 [512]] [--utterances 10]
        [--json out/benchmarks/livekit_latency.json]

`python server.py --size S` on 127.0.0.1, then livekit-agents' own parts in this process:

    AgentSession.say(audio=...) -> QueueAudioOutput -> AvatarRunner -> TalkingHeadVideoGenerator
    -> the server's headless session API -> slots -> AvatarRunner -> AVSynchronizer
    -> rtc.AudioSource / rtc.VideoSource -> local tracks -> rtc.AudioStream (what a subscriber's
    SDK reads)

No LiveKit server exists here, so the runner's tracks are not published to a room:
RoomlessRunner creates them locally and reads them back (its one change to AvatarRunner).
Real speech (alsa-utils' recordings, in turn) is said as a TTS's 20 ms frames at 24 kHz after
1 s of idle, all at once or one frame every 20 ms:

out_ms: the first audio frame into the generator -> the first speech frame out of it.
started_ms: ... -> LiveKit's playback_started (what AgentSession's playback_latency metric
measures). heard_ms: ... -> the recording's first audible 10 ms heard on the audio track
(less where that sound lies in the recording). barge-in: a 9 s reply interrupted 1 s into
its speech (SpeechHandle.interrupt()): the interrupt -> the last audible 10 ms heard after it
(0 when none), and the speech frames out of the generator after clear_buffer.
Median (min-max) of --utterances. Also used by tests/test_livekit.py (the rig).
"""

import asyncio
import sys
import time

import numpy as np
from scipy.signal import resample_poly

from benchmarks.headless import per_size, size_arguments, summary, write_rows
from benchmarks.pipecat_latency import IDLE_SECONDS, RECORDINGS, wait_until
from benchmarks.webrtc_client import ALSA, ROOT

for _package in ("client", "livekit"):
    sys.path.insert(0, str(ROOT / "integrations" / _package))

from livekit import rtc  # noqa: E402
from livekit.agents import Agent, AgentSession  # noqa: E402
from livekit.agents.voice.avatar import AvatarRunner, VideoGenerator  # noqa: E402
from livekit_talking_head import AvatarSession  # noqa: E402

RATE = 24000                   # the TTS's rate and the avatar's published rate
TTS_FRAME = RATE // 50         # 20 ms frames, as LiveKit's TTS plugins push them
QUIET = 0.01
CHUNK = 0.04                   # one slot

__all__ = ["Tap", "RoomlessRunner", "RoomlessAvatar", "tts", "wait_until", "RATE", "CHUNK"]


class Tap(VideoGenerator):
    """A VideoGenerator as the runner drives it, with what goes in and what comes out
    recorded (perf_counter, item); it changes nothing."""

    def __init__(self, inner: VideoGenerator):
        self.inner = inner
        self.pushed: list[tuple[float, object]] = []
        self.yielded: list[tuple[float, object]] = []
        self.cleared: list[float] = []

    async def push_audio(self, frame):
        self.pushed.append((time.perf_counter(), frame))
        await self.inner.push_audio(frame)

    async def clear_buffer(self):
        self.cleared.append(time.perf_counter())
        await self.inner.clear_buffer()

    def __aiter__(self):
        return self._frames()

    async def _frames(self):
        async for item in self.inner:
            self.yielded.append((time.perf_counter(), item))
            yield item

    def speech(self, start: float, end: float = np.inf) -> list[tuple[float, rtc.AudioFrame]]:
        """Speech frames out of the generator between start and end."""
        return [(t, x) for t, x in self.yielded
                if isinstance(x, rtc.AudioFrame) and start <= t < end]


class RoomlessRunner(AvatarRunner):
    """LiveKit's AvatarRunner as it is, but for publishing: with no LiveKit server, its audio
    and video sources feed local tracks that are read back through rtc.AudioStream and
    rtc.VideoStream (what a subscriber's SDK does), recorded with their arrival times."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.heard: list[tuple[float, np.ndarray]] = []      # 10 ms int16 frames
        self.seen: list[tuple[float, rtc.VideoFrame]] = []
        self._readers: list[asyncio.Task] = []
        self._streams: list = []

    async def _publish_track(self) -> None:
        if self._readers:
            return
        audio = rtc.LocalAudioTrack.create_audio_track("avatar_audio", self._audio_source)
        video = rtc.LocalVideoTrack.create_video_track("avatar_video", self._video_source)
        rate = self._options.audio_sample_rate
        self._streams = [rtc.AudioStream.from_track(track=audio, sample_rate=rate,
                                                    num_channels=1),
                         rtc.VideoStream.from_track(track=video)]

        async def read(stream, into, convert):
            async for event in stream:
                into.append((time.perf_counter(), convert(event.frame)))

        self._readers = [
            asyncio.ensure_future(read(self._streams[0], self.heard,
                                       lambda f: np.frombuffer(f.data, np.int16).copy())),
            asyncio.ensure_future(read(self._streams[1], self.seen, lambda f: f))]

    async def aclose(self) -> None:
        await super().aclose()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for stream in self._streams:
            await stream.aclose()

    def audio(self, start: float, end: float = np.inf) -> np.ndarray:
        """What the audio track played between start and end, float -1..1."""
        parts = [x for t, x in self.heard if start <= t < end]
        return np.concatenate(parts).astype(np.float32) / 32767 if parts else np.zeros(1)

    def envelope(self) -> tuple[np.ndarray, np.ndarray]:
        """(arrival time, peak) of each 10 ms frame heard."""
        return (np.array([t for t, _ in self.heard]),
                np.array([np.abs(x).max() / 32767 for _, x in self.heard]))


class RoomlessAvatar(AvatarSession):
    """The plugin's AvatarSession, its runner a RoomlessRunner reading through a Tap."""

    def make_runner(self, room, audio_output, options):
        self.tap = Tap(self.generator)
        return RoomlessRunner(room, audio_recv=audio_output, video_gen=self.tap,
                              options=options)


def tts(speech16k: np.ndarray, paced: bool = False):
    """A reply's audio as a TTS pushes it: 20 ms rtc.AudioFrames at 24 kHz, all at once (a
    TTS faster than real time) or one every 20 ms."""
    pcm = (np.clip(resample_poly(speech16k, 3, 2), -1, 1) * 32767).astype("<i2")

    async def frames():
        started = time.perf_counter()
        for j, i in enumerate(range(0, pcm.size - TTS_FRAME + 1, TTS_FRAME)):
            if paced:
                await asyncio.sleep(max(started + j * 0.02 - time.perf_counter(), 0))
            yield rtc.AudioFrame(pcm[i:i + TTS_FRAME].tobytes(), RATE, 1, TTS_FRAME)
    return frames()


async def reply(session: AgentSession, avatar: RoomlessAvatar, events: list,
                speech16k: np.ndarray, paced: bool) -> tuple[float, float, float]:
    """One reply after 1 s of idle, said to its end: ms to its first speech out of the
    generator, to LiveKit's playback_started, to its first sound heard on the track."""
    tap, runner = avatar.tap, avatar.runner
    await asyncio.sleep(IDLE_SECONDS)
    mark = time.perf_counter()
    await asyncio.wait_for(session.say("reply", audio=tts(speech16k, paced)), 30)
    first_in = next(t for t, x in tap.pushed if t >= mark and isinstance(x, rtc.AudioFrame))
    out = tap.speech(mark)[0][0]
    started = next(t for t, kind in events if kind == "playback_started" and t >= mark)
    t, peak = runner.envelope()
    offset = np.nonzero(np.abs(speech16k) > QUIET)[0][0] / 16000
    heard = t[(t >= mark) & (peak > QUIET)][0] - offset
    return 1000 * (out - first_in), 1000 * (started - first_in), 1000 * (heard - first_in)


async def interrupted_reply(session: AgentSession, avatar: RoomlessAvatar,
                            speech16k: np.ndarray) -> tuple[float, int]:
    """A long reply interrupted 1 s into its speech: (ms from the interrupt to the last
    audible 10 ms heard after it, speech frames out of the generator after clear_buffer)."""
    tap, runner = avatar.tap, avatar.runner
    await asyncio.sleep(IDLE_SECONDS)
    mark = time.perf_counter()
    handle = session.say("long reply", audio=tts(speech16k))
    await wait_until(lambda: len(tap.speech(mark)) * CHUNK >= 1.0, 15, "1 s of speech")
    at = time.perf_counter()
    handle.interrupt()
    await asyncio.wait_for(handle, 5)
    await asyncio.sleep(1.0)
    t, peak = runner.envelope()
    loud = t[(t > at) & (peak > QUIET)]
    cleared = next(c for c in tap.cleared if c >= at)
    return 1000 * (loud[-1] - at) if loud.size else 0.0, len(tap.speech(cleared))


async def measure(url: str, size: int, utterances: int) -> list[dict]:
    from models.audio_io import load_audio

    clips = [load_audio(ALSA / f"{name}.wav") for name in RECORDINGS]
    joined = np.concatenate([np.concatenate([c, np.zeros(8000, np.float32)]) for c in clips])
    agent_session = AgentSession()
    avatar = RoomlessAvatar(url=url, rate=RATE)
    await avatar.start(agent_session, rtc.Room())
    events: list[tuple[float, str]] = []
    for kind in ("playback_started", "playback_finished"):
        avatar.audio_output.on(kind, lambda ev, kind=kind: events.append(
            (time.perf_counter(), kind)))
    rows = []
    try:
        await agent_session.start(agent=Agent(instructions="A latency benchmark."))
        await wait_until(lambda: len(avatar.runner.seen) >= 5, 60, "video")
        for sending in ("at once", "real-time"):
            times = [await reply(agent_session, avatar, events, clips[i % len(clips)],
                                 sending == "real-time") for i in range(utterances)]
            out, started, heard = zip(*times, strict=True)
            row = {"out_ms": summary(out), "started_ms": summary(started),
                   "heard_ms": summary(heard), "out_ms_all": [round(x) for x in out],
                   "heard_ms_all": [round(x) for x in heard]}
            rows.append({"size": size, "case": sending, **row})
            print(f"{size} px  {sending:9s}  out {row['out_ms']['median']:.0f} ms, started "
                  f"{row['started_ms']['median']:.0f} ms, heard "
                  f"{row['heard_ms']['median']:.0f} ms", flush=True)
        cuts = [await interrupted_reply(agent_session, avatar, joined)
                for _ in range(utterances)]
        latency, frames = zip(*cuts, strict=True)
        rows.append({"size": size, "case": "barge-in", "last_heard_ms": summary(latency),
                     "speech_frames_after_clear": summary(frames)})
        print(f"{size} px  barge-in   last sound heard {np.median(latency):.0f} ms after the "
              f"interrupt, {max(frames)} speech frames after clear_buffer at most", flush=True)
        rows.append({"size": size, "case": "generator", "slots_dropped":
                     avatar.generator.slots_dropped, "muted_slots": avatar.generator.muted_slots})
    finally:
        await agent_session.aclose()
        await avatar.aclose()
    return rows


def main() -> None:
    args = size_arguments("livekit_latency", __doc__)
    rows = per_size("livekit", args.size,
                    lambda url, size: asyncio.run(measure(url, size, args.utterances)))
    print("\n| size | TTS audio | out of the generator, median (min-max) ms | "
          "playback_started ms | heard on the track ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["case"] in ("at once", "real-time"):
            cells = [f"{r[k]['median']:.0f} ({r[k]['min']:.0f}-{r[k]['max']:.0f})"
                     for k in ("out_ms", "started_ms", "heard_ms")]
            print(f"| {r['size']} | {r['case']} | " + " | ".join(cells) + " |")
    for r in rows:
        if r["case"] == "barge-in":
            b = r["last_heard_ms"]
            print(f"barge-in {r['size']} px: last sound heard {b['median']:.0f} "
                  f"({b['min']:.0f}-{b['max']:.0f}) ms after the interrupt, "
                  f"{r['speech_frames_after_clear']['max']:.0f} speech frames after "
                  "clear_buffer at most")
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
