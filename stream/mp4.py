"""Write frames and their audio to an mp4 (H.264 video + AAC audio, one timeline).

Frame t and its 1920 samples of 48 kHz audio are written together, so the file's audio is
in sync with the video by construction: video pts t (time base 1/25), audio pts 1920 t
(time base 1/48000).
"""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 25
AUDIO_RATE = 48000


class Mp4Writer:
    def __init__(self, path: str | Path, size: int, crf: int = 20):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), mode="w")
        self.video = self.container.add_stream("libx264", rate=FPS)
        self.video.width = self.video.height = size
        self.video.pix_fmt = "yuv420p"
        self.video.time_base = Fraction(1, FPS)
        self.video.options = {"crf": str(crf), "preset": "veryfast"}
        self.audio = self.container.add_stream("aac", rate=AUDIO_RATE)
        self.audio.layout = "mono"
        self.audio.time_base = Fraction(1, AUDIO_RATE)
        self.frames = 0
        self.samples = 0

    def write(self, image: np.ndarray, audio: np.ndarray) -> None:
        """image [S, S, 3] uint8; audio float32 mono at 48 kHz for this frame."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.frames
        self.frames += 1
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        if audio.size:
            chunk = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, np.float32)[None], format="flt", layout="mono")
            chunk.sample_rate = AUDIO_RATE
            chunk.pts = self.samples
            self.samples += audio.size
            for packet in self.audio.encode(chunk):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.video.encode():
            self.container.mux(packet)
        for packet in self.audio.encode():
            self.container.mux(packet)
        self.container.close()
