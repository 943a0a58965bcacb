"""A LiveKit Agents avatar for the self-hosted talking-head engine.

    from livekit_talking_head import AvatarSession
    avatar = AvatarSession(url="http://127.0.0.1:8080")
    await avatar.start(session, room=ctx.room)        # before session.start(...)

AvatarSession (avatar.py) runs the avatar in the agent's own process (QueueAudioOutput +
AvatarRunner); TalkingHeadVideoGenerator (video.py) is the VideoGenerator behind it, usable
with any AvatarRunner.
"""

from livekit_talking_head.avatar import AvatarSession
from livekit_talking_head.video import TalkingHeadError, TalkingHeadVideoGenerator

__all__ = ["AvatarSession", "TalkingHeadError", "TalkingHeadVideoGenerator"]
