"""A LiveKit agent with a self-hosted talking head, published from the agent's own process.

    python server.py --size 256                          # the engine, http://127.0.0.1:8080
    livekit-server --dev                                 # a LiveKit server (installed apart)
    LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \
        python integrations/livekit/examples/agent.py dev

Then join the room from any LiveKit client (e.g. the Agents Playground): the agent publishes
the avatar's video and audio tracks; the face idles, then speaks.

Without TALKING_HEAD_AGENT=1 no STT, LLM or TTS is needed: the agent says a WAV file
(TALKING_HEAD_WAV, default: alsa-utils' Front_Center.wav) every TALKING_HEAD_EVERY seconds
with AgentSession.say(audio=...), the same path a TTS reply takes. With TALKING_HEAD_AGENT=1
it is a voice agent on LiveKit Inference (STT -> LLM -> TTS; needs a LiveKit Cloud project's
credentials); swap in any LiveKit STT, LLM or TTS plugin. TALKING_HEAD_URL: the engine
(default http://127.0.0.1:8080); TALKING_HEAD_AVATAR: one of its avatar ids.
"""

import asyncio
import os
import wave
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli
from livekit_talking_head import AvatarSession

ENGINE_URL = os.environ.get("TALKING_HEAD_URL", "http://127.0.0.1:8080")
WAV = Path(os.environ.get("TALKING_HEAD_WAV", "/usr/share/sounds/alsa/Front_Center.wav"))
EVERY = float(os.environ.get("TALKING_HEAD_EVERY", "6"))
VOICE_AGENT = os.environ.get("TALKING_HEAD_AGENT") == "1"

server = AgentServer()


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit PCM of a WAV file (its first channel) and its rate."""
    with wave.open(str(path)) as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: 16-bit PCM WAV expected")
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        return pcm[::f.getnchannels()].copy(), f.getframerate()


async def wav_frames(pcm: np.ndarray, rate: int):
    """The WAV as a TTS would push it: 20 ms rtc.AudioFrames, as fast as they are taken."""
    step = rate // 50
    for i in range(0, pcm.size - step + 1, step):
        yield rtc.AudioFrame(pcm[i:i + step].tobytes(), rate, 1, step)


def make_session() -> AgentSession:
    if not VOICE_AGENT:
        return AgentSession()
    from livekit.agents import inference

    return AgentSession(stt=inference.STT("deepgram/nova-3"),
                        llm=inference.LLM("openai/gpt-4.1-mini"),
                        tts=inference.TTS("cartesia/sonic-3"))


@server.rtc_session()
async def entrypoint(ctx: JobContext):
    await ctx.connect()
    session = make_session()
    avatar = AvatarSession(url=ENGINE_URL, avatar=os.environ.get("TALKING_HEAD_AVATAR"))
    await avatar.start(session, room=ctx.room)          # before session.start: audio -> face
    await session.start(agent=Agent(instructions="You are a friendly assistant with a face. "
                                                 "Keep your answers short."), room=ctx.room)
    if VOICE_AGENT:
        await session.generate_reply(instructions="Greet the user.")
        return
    pcm, rate = read_wav(WAV)
    while True:                                          # until the job ends
        await asyncio.sleep(EVERY)
        await session.say("(a recording)", audio=wav_frames(pcm, rate))


if __name__ == "__main__":
    cli.run_app(server)
