"""The Opus encoder of the server's audio senders: aiortc's, its resampler on one thread.

aiortc's OpusEncoder turns each 20 ms frame into 960-sample stereo frames through PyAV's
AudioResampler, whose FFmpeg filter graph keeps a pool of one thread per core the process sees
(2 on 2 cores) for as long as the sender lives, for a conversion that runs on the caller's
thread. This one converts in a graph of one thread (stream.audio's
OneThreadResampler): the same packets (tests/test_opus_encoder.py), no pool. (PyAV's codec
context keeps a frame-size resampler of its own, out of reach from Python: that pool stays.)

    encode_lean(pc)        give an answered peer connection's audio sender that encoder
"""

from aiortc.codecs.opus import SAMPLES_PER_FRAME, OpusEncoder

from stream.audio import OneThreadResampler


class LiveOpusEncoder(OpusEncoder):
    """aiortc's OpusEncoder (1.16) with its resampler replaced: s16 stereo 48 kHz in frames
    of SAMPLES_PER_FRAME, as aiortc's is."""

    def __init__(self) -> None:
        super().__init__()
        self.resampler = OneThreadResampler("s16", "stereo", self.codec.sample_rate,
                                            SAMPLES_PER_FRAME)


def encode_lean(pc) -> None:
    """After the answer: an audio sender that will send Opus gets LiveOpusEncoder (others keep
    aiortc's). As stream.video_encoder.encode_fast, through aiortc 1.16's private attributes:
    a sender makes its encoder at the first frame unless one is there."""
    private = "_RTCRtpSender__encoder"
    for transceiver in pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None)
        sender = transceiver.sender
        if (transceiver.kind == "audio" and codecs
                and codecs[0].mimeType.lower() == "audio/opus"
                and hasattr(sender, private) and getattr(sender, private) is None):
            setattr(sender, private, LiveOpusEncoder())
