"""Latency through a Pipecat pipeline with the talking-head video service (issue 18).

    python -m benchmarks.pipecat_latency [--size 256 [512]] [--utterances 10]
        [--json out/benchmarks/pipecat_latency.json]

`python server.py --size S` on 127.0.0.1, then a real Pipecat pipeline

    transport.input() -> TalkingHeadVideoService -> probe -> transport.output() -> recorder

with SmallWebRTCTransport and an aiortc client peer on 127.0.0.1 (what a browser would be).
Real speech (alsa-utils' recordings, 1.4-1.5 s each, in turn) is queued as a TTS's frames
(TTSStartedFrame, 20 ms TTSAudioRawFrames at 24 kHz, TTSStoppedFrame), after 1 s of idle:

    at once     every frame queued at once (a TTS faster than real time)
    real-time   one 20 ms frame every 20 ms (a TTS that streams as it speaks)
    barge-in    the four recordings joined (9 s) at once; an InterruptionFrame 1 s into the
                avatar's speech

service_ms: the first TTSAudioRawFrame queued -> the first speech slot's audio out of the
service (the probe). written_ms: ... -> that audio written to the WebRTC track by the
transport (the recorder). heard_ms: ... -> the client hears it (the lag that lines the
received sound's envelope up with the recording's; arrival clock, Opus and jitter buffer
included). backlog_chunks: audio chunks out of the service that the transport had not yet
written when the reply was queued (0: nothing left over from before). barge-in: the
InterruptionFrame -> the last avatar speech chunk written to the track after it (0 when
none), and the speech chunks written after it.
Median (min-max) of --utterances. Also used by tests/test_pipecat.py (the pipeline, the
recorder, the client peer).
"""

import asyncio
import sys
import time
from contextlib import asynccontextmanager

import numpy as np
from scipy.signal import resample_poly

from benchmarks.headless import per_size, size_arguments, summary, write_rows
from benchmarks.webrtc_client import ALSA, ROOT, Client, loopback_only

for _package in ("client", "pipecat"):
    sys.path.insert(0, str(ROOT / "integrations" / _package))

from pipecat.frames.frames import (  # noqa: E402
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection  # noqa: E402
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402
from pipecat_talking_head import TalkingHeadVideoService  # noqa: E402

RATE = 24000                   # the pipeline's output rate (Pipecat's default)
CHUNK = 0.04                   # the transport's audio chunk (4 x 10 ms) = one slot
TTS_FRAME = RATE // 50         # 20 ms TTS frames
RECORDINGS = ("Front_Center", "Front_Left", "Rear_Right", "Side_Left")
IDLE_SECONDS = 1.0


class Recorder(FrameProcessor):
    """What passes this point of the pipeline and when (perf_counter). After the output
    transport, audio and image frames arrive once they have been written to its tracks."""

    KINDS = (OutputAudioRawFrame, TTSStoppedFrame, BotStartedSpeakingFrame,
             BotStoppedSpeakingFrame, MetricsFrame, InterruptionFrame, AggregatedTextFrame)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.frames: list[tuple[float, Frame]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, self.KINDS):
            self.frames.append((time.perf_counter(), frame))
        await self.push_frame(frame, direction)

    def tts_audio(self, start: float, end: float = np.inf) -> list[tuple[float, Frame]]:
        """TTSAudioRawFrames (the avatar's speech) seen between start and end."""
        return [(t, f) for t, f in self.frames
                if isinstance(f, TTSAudioRawFrame) and start <= t < end]

    def first(self, kind, start: float) -> float | None:
        return next((t for t, f in self.frames if isinstance(f, kind) and t >= start), None)


def tts_frames(speech16k: np.ndarray) -> list[Frame]:
    """A TTS reply as a TTS service pushes it: started, 20 ms audio frames at RATE, stopped."""
    pcm = (np.clip(resample_poly(speech16k, 3, 2), -1, 1) * 32767).astype("<i2")
    audio = [TTSAudioRawFrame(pcm[i:i + TTS_FRAME].tobytes(), RATE, 1)
             for i in range(0, pcm.size - TTS_FRAME + 1, TTS_FRAME)]
    return [TTSStartedFrame(), *audio, TTSStoppedFrame()]


async def connect_peer(connection: SmallWebRTCConnection) -> Client:
    """An aiortc client that receives audio and video (recvonly), recorded by
    benchmarks/webrtc_client.Client, signalled straight to Pipecat's SmallWebRTCConnection."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    client = Client("")
    client.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    client.record_tracks()
    await pc.setLocalDescription(await pc.createOffer())
    await connection.initialize(sdp=pc.localDescription.sdp, type="offer")
    answer = connection.get_answer()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return client


class Rig:
    """The pipeline, its probe and recorder, the service and the client peer."""
    worker: PipelineWorker
    service: TalkingHeadVideoService
    probe: Recorder                    # right after the service
    recorder: Recorder                 # after the output transport
    client: Client


@asynccontextmanager
async def pipecat_rig(url: str, size: int):
    """A running pipeline with the video service against the server at `url` (its --size
    `size`) and a connected client peer; ends the pipeline and the peer on the way out."""
    loopback_only()
    rig = Rig()
    connection = SmallWebRTCConnection(ice_servers=[])
    transport = SmallWebRTCTransport(connection, TransportParams(
        audio_out_enabled=True, video_out_enabled=True, video_out_width=size,
        video_out_height=size, video_out_framerate=25))
    rig.service = TalkingHeadVideoService(url=url)
    rig.probe, rig.recorder = Recorder(name="probe"), Recorder(name="recorder")
    rig.worker = PipelineWorker(
        Pipeline([transport.input(), rig.service, rig.probe, transport.output(),
                  rig.recorder]),
        params=PipelineParams(audio_out_sample_rate=RATE, enable_metrics=True),
        idle_timeout_secs=None, enable_rtvi=False)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(rig.worker)
    running = asyncio.ensure_future(runner.run())
    rig.client = None
    try:
        rig.client = await connect_peer(connection)
        await wait_until(lambda: len(rig.client.video) >= 5, 60, "video")
        yield rig
    finally:
        if not running.done():
            await rig.worker.cancel()
        await asyncio.wait_for(running, 20)
        if rig.client is not None:
            await rig.client.close()


async def wait_until(condition, timeout: float, what: str) -> float:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return time.perf_counter()


async def speak(rig: Rig, speech16k: np.ndarray, paced: bool) -> float:
    """Queue a TTS reply (at once, or one 20 ms frame every 20 ms); returns when its first
    audio frame was queued."""
    frames = tts_frames(speech16k)
    if not paced:
        await rig.worker.queue_frame(frames[0])
        started = time.perf_counter()
        await rig.worker.queue_frames(frames[1:])
        return started
    await rig.worker.queue_frame(frames[0])
    started = time.perf_counter()
    for j, frame in enumerate(frames[1:]):
        await asyncio.sleep(max(started + j * 0.02 - time.perf_counter(), 0))
        await rig.worker.queue_frame(frame)
    return started


def backlog(rig: Rig) -> int:
    """Audio chunks out of the service not yet written to the track by the transport."""
    def count(recorder):
        return sum(isinstance(f, OutputAudioRawFrame) for _, f in recorder.frames)
    return count(rig.probe) - count(rig.recorder)


def heard_ms(rig: Rig, speech16k: np.ndarray, started: float) -> float:
    """When the client heard the reply queued at `started`: the lag (ms) that best lines up
    the received sound's envelope with the recording's (arrival clock)."""
    from benchmarks.webrtc_client import delay_of, envelope

    sent = envelope(resample_poly(speech16k, 3, 1))
    t_sent = started + (np.arange(sent.size) + 0.5) * 0.01
    t_audio, env_audio = rig.client.received_audio("arrival")
    window = (started - 0.3, started + speech16k.size / 16000 + 0.3)
    delay, _ = delay_of(t_sent, sent, t_audio, env_audio, window,
                        lags=np.arange(0.0, 2.0, 0.005))
    return 1000 * delay


async def reply(rig: Rig, speech16k: np.ndarray, paced: bool) -> tuple[float, float, float,
                                                                        int]:
    """One TTS reply after 1 s of idle, spoken to its end: ms to its first speech out of the
    service, ms to its first speech written to the track, ms until the client heard it
    (envelope lag), and the transport's backlog (chunks) when it was queued."""
    await asyncio.sleep(IDLE_SECONDS)
    queued = backlog(rig)
    mark = time.perf_counter()
    sender = asyncio.ensure_future(speak(rig, speech16k, paced))
    await wait_until(lambda: rig.recorder.tts_audio(mark), 15, "speech written")
    started = await sender
    service = rig.probe.tts_audio(mark)[0][0] - started
    written = rig.recorder.tts_audio(mark)[0][0] - started
    await wait_until(lambda: rig.recorder.first(TTSStoppedFrame, mark), 15, "TTSStopped")
    await asyncio.sleep(0.3)
    return 1000 * service, 1000 * written, heard_ms(rig, speech16k, started), queued


async def interrupted_reply(rig: Rig, speech16k: np.ndarray) -> tuple[float, int, int]:
    """A long reply, interrupted after 1 s of the avatar's speech: (ms from the
    InterruptionFrame to the last speech chunk written after it, those chunks, slots the
    service muted)."""
    await asyncio.sleep(IDLE_SECONDS)
    mark = time.perf_counter()
    muted = rig.service.muted_slots
    await speak(rig, speech16k, paced=False)
    await wait_until(lambda: len(rig.recorder.tts_audio(mark)) * CHUNK >= 1.0, 15,
                     "1 s of speech")
    await rig.worker.queue_frame(InterruptionFrame())
    at = time.perf_counter()
    await asyncio.sleep(1.0)
    after = rig.recorder.tts_audio(at)
    return (1000 * (after[-1][0] - at) if after else 0.0, len(after),
            rig.service.muted_slots - muted)


async def measure(url: str, size: int, utterances: int) -> list[dict]:
    from models.audio_io import load_audio

    clips = [load_audio(ALSA / f"{name}.wav") for name in RECORDINGS]
    joined = np.concatenate([np.concatenate([c, np.zeros(8000, np.float32)]) for c in clips])
    rows = []
    async with pipecat_rig(url, size) as rig:
        for sending in ("at once", "real-time"):
            times = [await reply(rig, clips[i % len(clips)], sending == "real-time")
                     for i in range(utterances)]
            service, written, heard, queued = zip(*times, strict=True)
            row = {"service_ms": summary(service), "written_ms": summary(written),
                   "heard_ms": summary(heard), "service_ms_all": [round(x) for x in service],
                   "written_ms_all": [round(x) for x in written],
                   "heard_ms_all": [round(x) for x in heard], "backlog_chunks": queued}
            rows.append({"size": size, "case": sending, **row})
            print(f"{size} px  {sending:9s}  service {row['service_ms']['median']:.0f} ms, "
                  f"written {row['written_ms']['median']:.0f} ms, heard "
                  f"{row['heard_ms']['median']:.0f} ms", flush=True)
        cuts = [await interrupted_reply(rig, joined) for _ in range(utterances)]
        latency, chunks, muted = zip(*cuts, strict=True)
        row = {"last_speech_ms": summary(latency), "chunks_after": summary(chunks),
               "muted_slots": summary(muted)}
        rows.append({"size": size, "case": "barge-in", **row})
        print(f"{size} px  barge-in   last speech {row['last_speech_ms']['median']:.0f} ms "
              f"after the InterruptionFrame, {row['chunks_after']['max']:.0f} chunks at most",
              flush=True)
    return rows


def main() -> None:
    args = size_arguments("pipecat_latency", __doc__)
    rows = per_size("pipecat", args.size,
                    lambda url, size: asyncio.run(measure(url, size, args.utterances)))
    print("\n| size | TTS audio | out of the service, median (min-max) ms | "
          "written to the WebRTC track ms | heard by the client ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["case"] != "barge-in":
            s, w, h = r["service_ms"], r["written_ms"], r["heard_ms"]
            print(f"| {r['size']} | {r['case']} | {s['median']:.0f} ({s['min']:.0f}-"
                  f"{s['max']:.0f}) | {w['median']:.0f} ({w['min']:.0f}-{w['max']:.0f}) | "
                  f"{h['median']:.0f} ({h['min']:.0f}-{h['max']:.0f}) |")
    for r in rows:
        if r["case"] == "barge-in":
            b = r["last_speech_ms"]
            print(f"barge-in {r['size']} px: last speech chunk written {b['median']:.0f} "
                  f"({b['min']:.0f}-{b['max']:.0f}) ms after the InterruptionFrame, "
                  f"{r['chunks_after']['max']:.0f} chunks at most")
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
