"""Local text-to-speech for "speak this text": the espeak-ng and festival programs.

    speak("Hello there")                       -> (float32 mono audio, rate)   espeak-ng, en-us
    speak("Hello there", voice="festival/cmu_us_slt_arctic_hts")

Voices are "espeak/NAME" (any espeak-ng voice, e.g. en-us, en-gb+f3) or "festival/NAME"
(kal_diphone, ked_diphone, cmu_us_slt_arctic_hts). Both engines are Debian packages and run
as subprocesses: text goes in on stdin, a WAV comes back on stdout. Nothing is downloaded.
Errors (missing program, unknown voice, empty or too long text, a timeout) raise SpeechError
with a plain message.
"""

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass

import numpy as np

DEFAULT_VOICE = "espeak/en-us"
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
MAX_CHARACTERS = 2000
TIMEOUT_SECONDS = 30.0


class SpeechError(ValueError):
    """Text that could not be spoken; the message says why."""


@dataclass(frozen=True)
class Voice:
    engine: str          # "espeak" or "festival"
    name: str

    @classmethod
    def parse(cls, voice: str) -> "Voice":
        engine, _, name = voice.partition("/")
        if engine not in ("espeak", "festival") or not name:
            raise SpeechError(f"voice must be 'espeak/NAME' or 'festival/NAME', got {voice!r}")
        if engine == "espeak" and not re.fullmatch(r"[A-Za-z0-9_+\-]{1,40}", name):
            raise SpeechError(f"espeak voice name {name!r} is not valid")
        if engine == "festival" and name not in FESTIVAL_VOICES:
            raise SpeechError(f"festival voice {name!r} is not known: use one of "
                              f"{', '.join(FESTIVAL_VOICES)}")
        return cls(engine, name)


def speak(text: str, voice: str = DEFAULT_VOICE, rate_wpm: int = 165,
          max_characters: int = MAX_CHARACTERS) -> tuple[np.ndarray, int]:
    """Synthesize `text`. Returns (float32 mono in [-1, 1], sample rate)."""
    if len(str(text)) > 4 * max_characters:          # before any work on a huge string
        raise SpeechError(f"text is {len(str(text))} characters; at most {max_characters} "
                          "are spoken")
    text = " ".join(str(text).replace("\0", " ").split())
    if not text:
        raise SpeechError("nothing to say: the text is empty")
    if len(text) > max_characters:
        raise SpeechError(f"text is {len(text)} characters; at most {max_characters} are spoken")
    v = Voice.parse(voice)
    if v.engine == "espeak":
        command = ["espeak-ng", "--stdout", "-v", v.name, "-s", str(int(rate_wpm))]
    else:
        command = ["text2wave", "-eval", f"(voice_{v.name})"]
    if shutil.which(command[0]) is None:
        package = "espeak-ng" if v.engine == "espeak" else "festival"
        raise SpeechError(f"{command[0]} is not installed (apt-get install {package})")
    try:
        done = subprocess.run(command, input=text.encode("utf-8", "replace"), capture_output=True,
                              timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise SpeechError(f"{command[0]} took longer than {TIMEOUT_SECONDS:.0f} s") from None
    if done.returncode != 0 or not done.stdout:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no audio"]
        raise SpeechError(f"{command[0]} failed for voice {v.name!r}: {reason[0]}")
    return parse_wav(done.stdout)


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV -> (float32 mono, rate). Tolerates the sizes that programs writing
    to a pipe put in the header (0 or too large: the data runs to the end)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpeechError("the speech program did not return a WAV")
    pos, rate, channels, bits = 12, None, 1, 16
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk == b"fmt ":
            if len(data) < body + 16:
                raise SpeechError("the speech program's WAV is truncated")
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[body:body + 16])
        elif chunk == b"data":
            if rate is None or bits != 16 or not channels or not 1000 <= rate <= 192000:
                raise SpeechError("the speech program returned an unsupported WAV format")
            end = len(data) if size == 0 or body + size > len(data) else body + size
            pcm = data[body:end]
            pcm = np.frombuffer(pcm[: len(pcm) // (2 * channels) * 2 * channels], "<i2")
            audio = pcm.astype(np.float32).reshape(-1, channels).mean(1) / 32768.0  # [n]
            if audio.size == 0:
                raise SpeechError("the speech program returned no audio")
            return audio, int(rate)
        pos = body + size + (size & 1)
    raise SpeechError("the speech program's WAV has no audio data")
