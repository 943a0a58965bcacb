"""A Pipecat bot with a self-hosted talking head, seen in the browser over SmallWebRTC.

    python server.py                                   # the engine, http://127.0.0.1:8080
    python integrations/pipecat/examples/bot.py        # this bot, http://127.0.0.1:7860

Open http://127.0.0.1:7860 and press "Connect": the avatar idles, then speaks. Without keys
the bot speaks a WAV file (--wav, default: alsa-utils' Front_Center.wav) every --every
seconds, through the same path a TTS reply takes (TTSAudioRawFrames into the video service);
no LLM, STT or TTS is needed. With OPENAI_API_KEY set and --agent, it is a voice agent:
your microphone -> OpenAI STT -> LLM -> TTS -> the talking head (Pipecat's own OpenAI
services; any other STT/LLM/TTS goes in the same places).

Only this file serves a page (aiohttp, one /offer route); the engine's own web client is
not used. --size must be the server's --size (256 by default here, as `python server.py
--size 256`; the server's default is in its --help).
"""

import argparse
import asyncio
import os
import wave
from pathlib import Path

import numpy as np
from aiohttp import web
from pipecat.frames.frames import TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner
from pipecat_talking_head import TalkingHeadVideoService

PAGE = """<!doctype html><meta charset="utf-8"><title>Pipecat + talking head</title>
<button id="go">Connect</button><br><video id="v" autoplay playsinline></video>
<script>
go.onclick = async () => {
  go.disabled = true;
  const pc = new RTCPeerConnection();
  const mic = %s ? await navigator.mediaDevices.getUserMedia({audio: true}) : null;
  if (mic) pc.addTransceiver(mic.getAudioTracks()[0], {direction: "sendrecv"});
  else pc.addTransceiver("audio", {direction: "recvonly"});
  pc.addTransceiver("video", {direction: "recvonly"});
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); v.srcObject = stream; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((ok) => pc.iceGatheringState === "complete" ? ok() :
    pc.addEventListener("icegatheringstatechange",
      () => pc.iceGatheringState === "complete" && ok()));
  const r = await fetch("/offer", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: "offer"})});
  await pc.setRemoteDescription(await r.json());
};
</script>"""


def read_wav(path: Path) -> tuple[bytes, int]:
    """16-bit PCM mono (the first channel of a stereo file) and its rate."""
    with wave.open(str(path)) as f:
        assert f.getsampwidth() == 2, "a 16-bit PCM WAV, please"
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        return pcm[::f.getnchannels()].tobytes(), f.getframerate()


async def speak_wav(worker: PipelineWorker, path: Path, every: float) -> None:
    """A stand-in for a TTS: the WAV as 20 ms TTSAudioRawFrames, all at once, every `every` s."""
    pcm, rate = read_wav(path)
    step = 2 * rate // 50
    while True:
        await asyncio.sleep(every)
        frames = [TTSAudioRawFrame(pcm[i:i + step], rate, 1) for i in range(0, len(pcm), step)]
        await worker.queue_frames([TTSStartedFrame(), *frames, TTSStoppedFrame()])


def agent_processors(transport: SmallWebRTCTransport) -> tuple[list, object]:
    """microphone -> STT -> LLM -> TTS, with Pipecat's OpenAI services (OPENAI_API_KEY) and
    Silero VAD for the user's turns; and the assistant aggregator that ends the pipeline."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.openai.stt import OpenAISTTService
    from pipecat.services.openai.tts import OpenAITTSService

    context = LLMContext([{"role": "system", "content": "You are a friendly assistant with a "
                           "face. Answer in one or two short spoken sentences."}])
    aggregators = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()))
    return [transport.input(), OpenAISTTService(), aggregators.user(), OpenAILLMService(),
            OpenAITTSService()], aggregators.assistant()


async def run_bot(connection: SmallWebRTCConnection, args) -> None:
    transport = SmallWebRTCTransport(connection, TransportParams(
        audio_in_enabled=args.agent, audio_out_enabled=True, video_out_enabled=True,
        video_out_width=args.size, video_out_height=args.size, video_out_framerate=25))
    avatar = TalkingHeadVideoService(url=args.server)
    if args.agent:
        front, assistant = agent_processors(transport)
        processors = [*front, avatar, transport.output(), assistant]
    else:
        processors = [transport.input(), avatar, transport.output()]
    worker = PipelineWorker(Pipeline(processors), params=PipelineParams(enable_metrics=True))

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    speaker = None
    if not args.agent:
        speaker = asyncio.ensure_future(speak_wav(worker, Path(args.wav), args.every))
    try:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()
    finally:
        if speaker is not None:
            speaker.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080", help="the engine's URL")
    parser.add_argument("--size", type=int, default=256, help="the engine's --size")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--wav", default="/usr/share/sounds/alsa/Front_Center.wav",
                        help="what the keyless bot says")
    parser.add_argument("--every", type=float, default=4.0, help="seconds between its lines")
    parser.add_argument("--agent", action="store_true",
                        help="a real voice agent: OpenAI STT, LLM and TTS (OPENAI_API_KEY)")
    args = parser.parse_args()
    if args.agent and not os.environ.get("OPENAI_API_KEY"):
        parser.error("--agent needs OPENAI_API_KEY (or leave it out: the bot speaks --wav)")
    bots = set()

    async def index(request):
        return web.Response(text=PAGE % ("true" if args.agent else "false"),
                            content_type="text/html")

    async def offer(request):
        body = await request.json()
        connection = SmallWebRTCConnection(ice_servers=[])
        await connection.initialize(sdp=body["sdp"], type=body["type"])
        bot = asyncio.ensure_future(run_bot(connection, args))
        bots.add(bot)
        bot.add_done_callback(bots.discard)
        return web.json_response(connection.get_answer())

    async def end_bots(app):
        for bot in list(bots):
            bot.cancel()
        await asyncio.gather(*bots, return_exceptions=True)

    app = web.Application()
    app.on_shutdown.append(end_bots)
    app.router.add_get("/", index)
    app.router.add_post("/offer", offer)
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
