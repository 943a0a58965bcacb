"""WebRTC signalling: POST /offer, the checks an offer must pass, the peer connection's life.

A client sends an SDP offer and gets the answer and a session id (Server.start_session does the
bookkeeping between the steps here). An offer is checked before aiortc's lenient parser sees
it, and must carry an audio and a video section: the avatar is sent as video + audio, the
client's microphone feeds the session. A peer connection is always closed, even one that a
malformed offer left half made, so that no socket outlives its request.
"""

import asyncio
import logging
import time

import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamError

from models.audio_io import AudioInputError
from serve.http import ClientError, read_json, server_of, short
from stream.opus_encoder import encode_lean
from stream.video_encoder import encode_fast, prefer_h264
from stream.webrtc import receive_promptly

log = logging.getLogger("server")

MAX_SDP_SECTIONS = 16          # m= sections in an offer (a browser sends 2 or 3)
AUDIBLE = 32                   # microphone peak (int16) that counts as a client being there


async def offer(request):
    server = server_of(request)
    params = await read_json(request, server.limits.max_sdp_bytes)
    if params.get("type") != "offer" or not isinstance(params.get("sdp"), str):
        raise ClientError(400, 'expected {"sdp": "...", "type": "offer"[, "avatar": id]}')
    avatar = await server.avatars.find(params.get("avatar"))
    live, sdp = await server.start_session(params["sdp"], avatar)
    return web.json_response({"sdp": sdp, "type": "answer", "session": live.id})


def check_sdp(sdp: str) -> None:
    """What aiortc's lenient parser lets through but no WebRTC offer lacks."""
    lines = [line for line in sdp.splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise ValueError("it does not start with v=0")
    bad = next((line for line in lines if len(line) < 2 or line[1] != "=" or
                not line[0].isalpha()), None)
    if bad is not None:
        raise ValueError(f"line {bad[:40]!r} is not SDP")
    for needed, what in (("m=", "media sections"), ("a=ice-ufrag:", "ICE credentials"),
                         ("a=fingerprint:", "DTLS fingerprint")):
        if not any(line.startswith(needed) for line in lines):
            raise ValueError(f"no {what}")
    if sum(line.startswith("m=") for line in lines) > MAX_SDP_SECTIONS:
        raise ValueError(f"more than {MAX_SDP_SECTIONS} media sections")
    mids, section = [], None                  # each media section names itself (a=mid:)
    for line in lines:
        if line.startswith("m="):
            if section is not None and section is False:
                raise ValueError("a media section without a=mid")
            section = False
        elif line.startswith("a=mid:") and section is False:
            section = True
            mids.append(line[6:].strip())
    if section is False:
        raise ValueError("a media section without a=mid")
    for line in lines:
        if line.startswith("a=group:BUNDLE"):
            missing = set(line.split()[1:]) - set(mids)
            if missing:
                raise ValueError(f"BUNDLE names media sections that do not exist: "
                                 f"{sorted(missing)[:4]}")


def peer_connection() -> tuple[RTCPeerConnection, list]:
    """A new peer connection (no ICE servers), and the list that the client's tracks are
    announced into while its offer is applied."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    remote_tracks = []                          # announced while the offer is applied
    pc.on("track", remote_tracks.append)
    return pc, remote_tracks


async def apply_offer(pc: RTCPeerConnection, sdp: str) -> None:
    try:
        check_sdp(sdp)
        await asyncio.wait_for(pc.setRemoteDescription(
            RTCSessionDescription(sdp=sdp, type="offer")), 10.0)
    except Exception as e:
        raise ClientError(400, f"malformed SDP offer: {short(e)}") from None
    kinds = [t.kind for t in pc.getTransceivers()]
    if not {"audio", "video"} <= set(kinds):
        raise ClientError(400, "the offer must have an audio and a video section "
                               "(the avatar is sent as video + audio)")


def receive_tracks(live, remote_tracks: list) -> None:
    """The client's tracks for a LiveSession: its microphone into the session's audio feed,
    a camera drained (not used)."""
    for track in remote_tracks:
        if track.kind == "audio":
            for receiver in live.pc.getReceivers():
                if receiver.track is track:
                    receive_promptly(receiver)       # no 80 ms hold before the session
            live.tasks.append(asyncio.ensure_future(microphone(track, live)))
        else:                                 # a camera is not used: drain it
            sink = MediaBlackhole()
            sink.addTrack(track)
            live.tasks.append(asyncio.ensure_future(sink.start()))


async def answer(pc: RTCPeerConnection, clock) -> str:
    """The session's tracks (its MediaClock's video and audio) added, the answer's SDP."""
    pc.addTrack(clock.video)
    pc.addTrack(clock.audio)
    prefer_h264(pc)                                  # browsers offer VP8 first
    try:
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as e:       # e.g. no codec in common: the offer's fault
        raise ClientError(400, f"cannot answer this offer: {short(e)}") from None
    encode_fast(pc)                                  # x264 veryfast: a third of the CPU
    encode_lean(pc)                                  # Opus without a thread pool
    return pc.localDescription.sdp


async def close_peer(pc: RTCPeerConnection) -> None:
    """pc.close(); for some malformed offers aiortc cannot finish it (a transceiver left
    without a transport), and then the transports that exist are stopped one by one, so
    that no socket outlives the request."""
    try:
        await asyncio.wait_for(pc.close(), 10.0)
        return
    except Exception as e:
        log.info("closing a peer connection: %s: %s", type(e).__name__, short(e))
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        for part in (dtls, getattr(dtls, "transport", None)):
            if part is not None:
                try:
                    await asyncio.wait_for(part.stop(), 5.0)
                except Exception:
                    pass
    pc.remove_all_listeners()


async def microphone(track, live) -> None:
    """The peer's microphone into the session's audio feed."""
    try:
        while True:
            frame = await track.recv()
            pcm = frame.to_ndarray()                       # packed [1, n*ch] / planar [ch, n]
            channels = len(frame.layout.channels)
            if frame.format.is_planar:
                pcm = pcm.T
            if pcm.dtype == np.int16 and pcm.size and int(np.abs(pcm).max()) > AUDIBLE:
                live.active = time.monotonic()             # someone is talking: not idle
            try:
                live.feed.live(pcm.reshape(-1), frame.sample_rate, min(channels, 2))
            except AudioInputError as e:
                log.warning("session %s: microphone audio refused: %s", live.label, e)
    except MediaStreamError:
        pass
    except Exception as e:                          # this session's microphone only
        log.warning("session %s: microphone stopped: %s", live.label, short(e))
