"""The H.264 encoder of the server's video senders: aiortc's, with x264's `veryfast` preset.

aiortc opens libx264 with its default preset (medium) and `tune=zerolatency`. For a talking
head at 512 px that costs about 9 ms of CPU a frame, a fifth of what a stream needs on a
2-core machine; `veryfast` encodes the same frames in about 3 ms at the same bit rate, 0.3 dB
lower PSNR (benchmarks/RESULTS.md, "The video encoder's preset"). Everything else is
aiortc's: its Baseline profile, level 3.1, rate control and packetisation.

    prefer_h264(pc)        before the answer: H.264 first among the codecs a peer offered
    video_encoder(codec)   the encoder for a negotiated codec (ours for H.264, aiortc's else)
    encode_fast(pc)        give an answered peer connection's video sender that encoder

Browsers list VP8 first in their offers, and aiortc answers in the offer's order; aiortc's VP8
encoder (libvpx, realtime, cpu-used -6) costs about as much as x264's medium. So the answer
puts H.264 first whenever the peer offered it (the answerer's order is its preference, RFC
3264 6.1), and VP8 remains for peers without H.264.
"""

import fractions

import av
from aiortc.codecs import get_encoder, is_rtx
from aiortc.codecs.h264 import MAX_FRAME_RATE, H264Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

X264_PRESET = "veryfast"
# One encoding thread a session: the sessions are the parallelism. x264's own count (sliced)
# gave 6 threads an encoder on 2 cores for no gain at this size: a 512 px frame took 3.3 ms
# alone, 2.5-3.2 ms with them (benchmarks/RESULTS.md).
X264_THREADS = 1


class LiveH264Encoder(H264Encoder):
    """aiortc's H264Encoder, the codec opened with X264_PRESET. aiortc (1.16) opens libx264
    lazily in _encode_frame, and again when the frame size or the target bit rate (by more than
    10 %) changes; this opens it first, under the same conditions, with the preset added."""

    def _encode_frame(self, frame: av.VideoFrame, force_keyframe: bool):
        codec = self.codec
        if codec is not None and (
                frame.width != codec.width or frame.height != codec.height
                or abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > 0.1):
            self.buffer_data, self.buffer_pts, self.codec = b"", None, None
        if self.codec is None:
            codec = av.CodecContext.create("libx264", "w")
            codec.width, codec.height = frame.width, frame.height
            codec.bit_rate = self.target_bitrate
            codec.pix_fmt = "yuv420p"
            codec.framerate = fractions.Fraction(MAX_FRAME_RATE, 1)
            codec.time_base = fractions.Fraction(1, MAX_FRAME_RATE)
            codec.options = {"level": "31", "tune": "zerolatency", "preset": X264_PRESET}
            codec.profile = "Baseline"
            codec.thread_count = X264_THREADS
            self.codec = codec
        return super()._encode_frame(frame, force_keyframe)


def _is_h264(codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower() == "video/h264"


def video_encoder(codec: RTCRtpCodecParameters):
    """The encoder a sender of `codec` uses: LiveH264Encoder for H.264, aiortc's otherwise."""
    if _is_h264(codec):
        return LiveH264Encoder()
    return get_encoder(codec)


def prefer_h264(pc) -> None:
    """After the offer is applied, before the answer: in each video transceiver's negotiated
    codecs (aiortc 1.16's private list, in the offer's order), the H.264 ones first, each
    codec's retransmission (RTX, tied to it by "apt") right after it."""
    for transceiver in pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None)
        if transceiver.kind != "video" or not codecs:
            continue
        bases = sorted((c for c in codecs if not is_rtx(c)), key=lambda c: not _is_h264(c))
        ordered = []
        for base in bases:
            ordered.append(base)
            ordered += [c for c in codecs if is_rtx(c)
                        and c.parameters.get("apt") == base.payloadType]
        transceiver._codecs = ordered + [c for c in codecs if c not in ordered]


def encode_fast(pc) -> None:
    """After the answer: a video sender that will send H.264 gets LiveH264Encoder (others keep
    aiortc's). aiortc sends with the first negotiated codec and makes its encoder at the first
    frame unless one is there (aiortc 1.16's private attributes; another version keeps its
    own encoder)."""
    private = "_RTCRtpSender__encoder"
    for transceiver in pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None)
        sender = transceiver.sender
        if (transceiver.kind == "video" and codecs and _is_h264(codecs[0])
                and hasattr(sender, private) and getattr(sender, private) is None):
            setattr(sender, private, LiveH264Encoder())
