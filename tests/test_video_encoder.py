"""stream.video_encoder: the server answers with H.264 whenever a peer offers it, its H.264
senders encode with x264's veryfast preset, and what they send decodes (aiortc's own
depacketiser and decoder) to the pictures put in."""

import asyncio
import fractions
import re

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, VideoStreamTrack
from aiortc.codecs.h264 import H264Decoder, H264PayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import AudioStreamTrack

from benchmarks.reenact import psnr
from stream.video_encoder import X264_PRESET, LiveH264Encoder, encode_fast


def pictures(count: int, size: int = 512) -> list[np.ndarray]:
    """A portrait moving by a pixel a frame (x264 sees motion, not one still picture)."""
    import skimage.data
    from PIL import Image

    face = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((size + count,) * 2))
    return [np.ascontiguousarray(face[:size, k:k + size]) for k in range(count)]


def send_and_receive(encoder, images: list[np.ndarray]) -> tuple[list[np.ndarray], dict]:
    """Each picture through encoder.encode (RTP payloads, as the sender sends them), aiortc's
    H.264 depacketiser and its decoder: the decoded pictures (RGB), and the settings x264
    wrote into the stream (its SEI message "x264 - core ... options: ref=1 subme=2 ...")."""
    decoder, decoded, settings = H264Decoder(), [], {}
    for k, image in enumerate(images):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = 3600 * k, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=(k == 0))
        data = b"".join(H264PayloadDescriptor.parse(p)[1] for p in payloads)
        if (found := re.search(rb"options: ([ -~]*)", data)) is not None:
            settings = dict(kv.split("=", 1) for kv in found[1].decode().split() if "=" in kv)
        for out in decoder.decode(JitterFrame(data=data, timestamp=timestamp)):
            decoded.append(out.to_ndarray(format="rgb24"))
    return decoded, settings


def test_veryfast_frames_decode_to_the_pictures_sent():
    images = pictures(12)
    encoder = LiveH264Encoder()
    decoded, settings = send_and_receive(encoder, images)
    assert X264_PRESET == "veryfast"
    # x264's veryfast: one reference frame, subpixel refinement 2, no trellis (medium, aiortc's
    # default: ref=3 subme=7 trellis=1); Baseline profile: no CABAC
    assert (settings["ref"], settings["subme"], settings["trellis"]) == ("1", "2", "0"), settings
    assert settings["cabac"] == "0" and encoder.codec.profile == "Baseline"
    # one thread an encoder (x264's own count: 6 on 2 cores, sliced)
    assert (settings["threads"], settings["lookahead_threads"]) == ("1", "1"), settings
    assert len(decoded) == len(images)                 # zerolatency: no frame held back
    scores = [psnr(got, sent) for got, sent in zip(decoded, images, strict=True)]
    assert min(scores) > 30.0, scores

    # a new target bit rate reopens the codec (aiortc's rule): with the preset still
    first = encoder.codec
    encoder.target_bitrate = 2 * encoder.target_bitrate
    more, settings = send_and_receive(encoder, images[:3])
    assert encoder.codec is not first and settings["subme"] == "2", settings
    assert min(psnr(got, sent) for got, sent in zip(more, images, strict=False)) > 30.0


@pytest.mark.parametrize("offered, expected", [
    (None, "h264"),          # aiortc's whole list, VP8 first, as browsers offer
    ("h264", "h264"),
    ("vp8", "vp8"),          # a peer without H.264
])
def test_answer_prefers_h264_and_its_sender_gets_the_fast_encoder(offered, expected):
    """A real offer/answer between two aiortc peers in this process, the server's side as
    serve/signalling.answer does it: H.264 is answered first whenever it was offered, and
    then the video sender has LiveH264Encoder before its first frame; with VP8 aiortc makes
    its own encoder at the first frame, as before."""
    from aiortc.codecs import is_rtx

    from stream.video_encoder import prefer_h264

    async def negotiate():
        client, server = RTCPeerConnection(), RTCPeerConnection()
        try:
            client.addTransceiver("audio", direction="sendrecv")
            video = client.addTransceiver("video", direction="recvonly")
            codecs = RTCRtpSender.getCapabilities("video").codecs
            assert codecs[0].mimeType == "video/VP8"       # the order browsers use too
            if offered:
                video.setCodecPreferences([c for c in codecs if is_rtx(c) or
                                           c.mimeType.lower() == f"video/{offered}"])
            await client.setLocalDescription(await client.createOffer())
            await server.setRemoteDescription(client.localDescription)
            server.addTrack(VideoStreamTrack())
            server.addTrack(AudioStreamTrack())
            prefer_h264(server)
            await server.setLocalDescription(await server.createAnswer())
            encode_fast(server)
            await client.setRemoteDescription(server.localDescription)
            sent = {t.kind: t._codecs[0].mimeType.lower() for t in server.getTransceivers()}
            received = {t.kind: t._codecs[0].mimeType.lower() for t in client.getTransceivers()}
            encoders = {t.kind: getattr(t.sender, "_RTCRtpSender__encoder", "missing")
                        for t in server.getTransceivers()}
            return sent, received, encoders
        finally:
            await asyncio.wait_for(client.close(), 10)
            await asyncio.wait_for(server.close(), 10)

    sent, received, encoders = asyncio.run(asyncio.wait_for(negotiate(), 30))
    assert sent["video"] == received["video"] == f"video/{expected}"
    assert sent["audio"] == "audio/opus" and encoders["audio"] is None   # audio untouched
    if expected == "h264":
        assert isinstance(encoders["video"], LiveH264Encoder)
    else:
        assert encoders["video"] is None
