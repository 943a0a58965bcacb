"""AvatarSession: the talking head inside a LiveKit agent's own process (local mode).

    avatar = AvatarSession(url="http://127.0.0.1:8080")
    await avatar.start(session, room=ctx.room)        # before session.start(...)
    await session.start(agent=..., room=ctx.room)

The way LiveKit's self-hosted avatar plugins run locally (livekit-plugins-bithuman's local
mode): the agent's audio output becomes a QueueAudioOutput; an AvatarRunner in this process
reads it, feeds the TalkingHeadVideoGenerator (video.py), and publishes the generator's
pictures and sound from the agent's own participant through its AVSynchronizer. The agent's
TTS audio is therefore heard once, from the engine, in step with the lips.

- QueueAudioOutput(wait_playback_start=True): "playback started" is reported when the first
  sound of a reply leaves the generator, and "playback finished" when the generator yields the
  reply's AudioSegmentEnd (after its last sound), so the agent's transcript and turn-taking
  follow the face; LiveKit's AvatarMetrics.playback_latency (emitted by the base class) is the
  avatar's latency (livekit/agents #4200).
- An interruption clears the runner's own 100 ms audio and video queues as well as the engine's
  timeline, so the avatar goes quiet at once.
- make_runner() builds the AvatarRunner: override it to change the runner's options.
"""

import asyncio
import logging

import aiohttp
from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice.avatar import (
    AvatarOptions,
    AvatarRunner,
    QueueAudioOutput,
)
from livekit.agents.voice.avatar import AvatarSession as BaseAvatarSession

from livekit_talking_head.video import TalkingHeadVideoGenerator

logger = logging.getLogger("livekit_talking_head")


class AvatarSession(BaseAvatarSession):
    """A talking head for a LiveKit agent, from a talking-head server, run in the agent's
    process (see the module docstring). The arguments are TalkingHeadVideoGenerator's: `url`
    ("http://127.0.0.1:8080"), `token`, `avatar` (an avatar id the server knows), `image_format`
    ("jpeg" or "rgb": raw frames, for a server on the same machine), `quality`, `rate` (the
    audio rate published), `http`."""

    def __init__(self, *, url: str = "http://127.0.0.1:8080", token: str | None = None,
                 avatar: str | None = None, image_format: str = "jpeg",
                 quality: int | None = None, rate: int | None = 24000,
                 http: aiohttp.ClientSession | None = None):
        super().__init__()
        self.generator = TalkingHeadVideoGenerator(url=url, token=token, avatar=avatar,
                                                   image_format=image_format, quality=quality,
                                                   rate=rate, http=http)
        self.audio_output: QueueAudioOutput | None = None
        self.runner: AvatarRunner | None = None
        self._local_room: rtc.Room | None = None
        self._clearing: set[asyncio.Task] = set()

    @property
    def avatar_identity(self) -> str:
        """The agent's own identity: in local mode the agent publishes the avatar's tracks."""
        room = self._local_room
        return room.local_participant.identity if room is not None and room.isconnected() \
            else ""

    @property
    def provider(self) -> str:
        return "talking-head"

    async def start(self, agent_session: AgentSession, room: rtc.Room) -> None:
        """Open the engine's session, start the AvatarRunner on `room` and make it the agent's
        audio output. Call it before agent_session.start(). Raises TalkingHeadError when the
        server cannot be reached or refuses the session."""
        if self.runner is not None:
            raise RuntimeError("this AvatarSession is already started")
        self._local_room = room
        await self.generator.start()
        try:
            await super().start(agent_session, room)
            self.audio_output = QueueAudioOutput(wait_playback_start=True)
            self.runner = self.make_runner(room, self.audio_output,
                                           self.generator.avatar_options())
            await self.runner.start()
            self.audio_output.on("clear_buffer", self._on_clear_buffer)
            agent_session.output.replace_audio_tail(self.audio_output)
        except BaseException:
            await self.aclose()
            raise

    def make_runner(self, room: rtc.Room, audio_output: QueueAudioOutput,
                    options: AvatarOptions) -> AvatarRunner:
        """The AvatarRunner that publishes the generator's frames on `room`."""
        return AvatarRunner(room, audio_recv=audio_output, video_gen=self.generator,
                            options=options)

    def _on_clear_buffer(self) -> None:
        """An interruption: what the runner's synchroniser still holds goes too (the runner
        itself only tells the generator, which cuts the engine's timeline)."""
        if self.runner is not None:
            task = asyncio.ensure_future(self.runner.av_sync.clear_queue())
            self._clearing.add(task)
            task.add_done_callback(self._clearing.discard)

    async def aclose(self) -> None:
        """Stop the runner and end the engine's session. The base class would remove the
        avatar's participant from the room: here that is the agent itself, so it is not."""
        if self.audio_output is not None:
            self.audio_output.off("clear_buffer", self._on_clear_buffer)
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.aclose()
        await self.generator.aclose()
        if self._room is not None:
            self._room.off("connection_state_changed", self._on_connection_state_changed)
            self._room = None                 # (so the base class removes no participant)
        await super().aclose()
