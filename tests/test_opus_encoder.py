"""stream.opus_encoder: the server's audio senders encode with aiortc's Opus encoder, its
resampler on one thread: the same packets as aiortc's own, no thread pool, and the encoder in
place on an answered peer connection before its first frame."""

import asyncio
import fractions
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import AudioStreamTrack

from stream.opus_encoder import LiveOpusEncoder, encode_lean

ROOT = Path(__file__).parents[1]


def frames(count: int) -> list[av.AudioFrame]:
    """20 ms frames of s16 mono 48 kHz, as the server's MediaClock sends them: a gliding tone
    over noise, pts in samples."""
    rng = np.random.default_rng(0)
    t = np.arange(960 * count) / 48000
    x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)
    pcm = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
    out = []
    for k in range(count):
        frame = av.AudioFrame.from_ndarray(pcm[None, 960 * k:960 * (k + 1)], format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = 48000, 960 * k
        frame.time_base = fractions.Fraction(1, 48000)
        out.append(frame)
    return out


def test_same_packets_as_aiortcs_encoder():
    theirs, ours = OpusEncoder(), LiveOpusEncoder()
    sent = [(theirs.encode(f), ours.encode(f)) for f in frames(100)]
    assert all(a == b for a, b in sent), [k for k, (a, b) in enumerate(sent) if a != b][:5]
    assert sum(len(a[0]) for a, _ in sent) >= 99               # a packet a frame


THREADS = """
import fractions, os, sys
import av
sys.path.insert(0, "tests")
from test_opus_encoder import frames
from aiortc.codecs.opus import OpusEncoder
from stream.audio import OneThreadResampler
from stream.opus_encoder import LiveOpusEncoder

def added(make, encode):
    before = len(os.listdir("/proc/self/task"))
    kept = [make() for _ in range(4)]
    for each in kept:
        for frame in frames(3):
            encode(each, frame)
    return len(os.listdir("/proc/self/task")) - before

def bare():
    codec = av.CodecContext.create("libopus", "w")
    codec.format, codec.layout, codec.sample_rate = "s16", "stereo", 48000
    codec.time_base = fractions.Fraction(1, 48000)
    return codec, OneThreadResampler("s16", "stereo", 48000, 960)

def encode_bare(pair, frame):
    codec, resample = pair
    for f in resample.resample(frame):
        codec.encode(f)

print(added(bare, encode_bare), added(LiveOpusEncoder, LiveOpusEncoder.encode),
      added(OpusEncoder, OpusEncoder.encode))
"""


def test_no_thread_pool_of_its_own():
    """Threads counted in a fresh interpreter (this one's come and go with other tests), 4
    encoders each: ours add what a bare libopus context does (PyAV's codec keeps a frame-size
    resampler of its own, out of reach: 2 threads on 2 cores), aiortc's add their resampler's
    pool on top (another 2)."""
    out = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    bare, ours, theirs = map(int, out.split())
    assert ours == bare < theirs, (bare, ours, theirs)


def test_answered_audio_sender_gets_the_lean_encoder():
    """A real offer/answer between two aiortc peers in this process, the server's side as
    serve/signalling.answer does it."""

    async def negotiate():
        client, server = RTCPeerConnection(), RTCPeerConnection()
        try:
            client.addTransceiver("audio", direction="sendrecv")
            await client.setLocalDescription(await client.createOffer())
            await server.setRemoteDescription(client.localDescription)
            server.addTrack(AudioStreamTrack())
            await server.setLocalDescription(await server.createAnswer())
            encode_lean(server)
            await client.setRemoteDescription(server.localDescription)
            return [getattr(t.sender, "_RTCRtpSender__encoder", "missing")
                    for t in server.getTransceivers()]
        finally:
            await asyncio.wait_for(client.close(), 10)
            await asyncio.wait_for(server.close(), 10)

    encoders = asyncio.run(asyncio.wait_for(negotiate(), 30))
    assert len(encoders) == 1 and isinstance(encoders[0], LiveOpusEncoder), encoders
