"""A Pipecat video service for the self-hosted talking-head engine (see video.py).

    from pipecat_talking_head import TalkingHeadVideoService
    avatar = TalkingHeadVideoService(url="http://127.0.0.1:8080")
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, avatar,
                         transport.output(), assistant_agg])
"""

from pipecat_talking_head.video import TalkingHeadVideoService

__all__ = ["TalkingHeadVideoService"]
