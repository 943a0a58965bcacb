"""What one client may ask of the server: Limits, one command-line flag per value.

Every value has a safe default and a flag (`python server.py --help`); check_limits refuses
values that would switch a limit off. The video limits are handed on to video preparation.
"""

import argparse
from dataclasses import dataclass, fields

from models.audio_io import MAX_RATE, MIN_RATE
from models.video_avatar import VideoLimits


@dataclass
class Limits:
    """What one client may ask of the server. Every value is a command-line flag."""
    max_sessions: int = 4
    max_upload_bytes: int = 10 * 2**20       # a portrait upload
    max_pixels: int = 25_000_000             # a portrait's width x height (decompression bombs)
    max_video_bytes: int = 200 * 2**20       # a video avatar upload (kept on disk, not in memory)
    max_video_seconds: float = 300.0         # a video avatar's length
    max_video_pixels: int = 3840 * 2160      # a video avatar's frame size
    max_video_cache_bytes: int = 8 * 2**30   # prepared videos kept on disk (~175 MB for 60 s)
    max_audio_file_bytes: int = 20 * 2**20   # POST /sessions/{id}/audio
    max_queued_seconds: float = 120.0        # audio waiting to be spoken, per session
    min_rate: int = MIN_RATE                 # PCM sample rates accepted, Hz
    max_rate: int = MAX_RATE
    max_ws_message: int = 2**20              # one websocket message (a PCM chunk), bytes
    max_control_bytes: int = 64 * 2**10      # one JSON control message, bytes
    max_sdp_bytes: int = 64 * 2**10          # the body of POST /offer
    max_text_chars: int = 2000               # text for the local TTS
    idle_timeout: float = 600.0              # nothing from the client for this long: end
    connect_timeout: float = 15.0            # an answered offer must connect within this
    peer_timeout: float = 10.0               # the peer's RTCP silent this long: end
    max_sockets_per_session: int = 4
    max_pending_uploads: int = 4             # portraits waiting to be prepared (and videos)
    portrait_timeout: float = 60.0           # preparing one portrait
    video_timeout_per_second: float = 5.0    # preparing a video: this per second of it, plus
                                             #   portrait_timeout
    send_timeout: float = 5.0                # a websocket send stalled this long: drop it
    max_output_rate: int = 48000             # a headless session's audio out, Hz
    max_raw_frame_bytes: int = 2**20         # a headless session's raw RGB frame, bytes


def video_limits(limits: Limits) -> VideoLimits:
    return VideoLimits(max_seconds=limits.max_video_seconds, max_pixels=limits.max_video_pixels,
                       max_bytes=limits.max_video_bytes)


def limit_flags(parser: argparse.ArgumentParser) -> None:
    d = Limits()
    group = parser.add_argument_group("limits (what one client may ask of the server)")
    for name, kind, help_text in [
            ("max_sessions", int, "sessions at once"),
            ("max_upload_bytes", int, "bytes of one portrait upload"),
            ("max_pixels", int, "pixels (width x height) of one portrait: decompression bombs"),
            ("max_video_bytes", int, "bytes of one video avatar (uploaded or --avatar)"),
            ("max_video_seconds", float, "seconds of one video avatar (uploaded or --avatar)"),
            ("max_video_pixels", int, "pixels (width x height) of a video avatar's frames "
                                        "(uploaded or --avatar)"),
            ("max_video_cache_bytes", int, "bytes of prepared video avatars kept on disk (the "
                                           "least recently used removed first)"),
            ("max_audio_file_bytes", int, "bytes of one audio file (POST .../audio)"),
            ("max_queued_seconds", float, "seconds of audio waiting to be spoken, per session"),
            ("min_rate", int, f"lowest PCM sample rate, Hz (>= {MIN_RATE})"),
            ("max_rate", int, f"highest PCM sample rate, Hz (<= {MAX_RATE})"),
            ("max_ws_message", int, "bytes of one websocket message (a PCM chunk)"),
            ("max_control_bytes", int, "bytes of one JSON control message"),
            ("max_sdp_bytes", int, "bytes of an offer (POST /offer)"),
            ("max_text_chars", int, "characters of text for the local TTS"),
            ("idle_timeout", float, "end a session when its client sends nothing (no websocket "
                                    "message, file, or audible microphone) for this long, s"),
            ("connect_timeout", float, "an answered offer must connect within this, s"),
            ("peer_timeout", float, "end a session when its peer sends nothing for this long, s"),
            ("max_sockets_per_session", int, "websockets open on one session"),
            ("max_pending_uploads", int, "portraits waiting to be prepared (and, apart from "
                                         "them, videos)"),
            ("portrait_timeout", float, "seconds to prepare one portrait"),
            ("video_timeout_per_second", float, "seconds to prepare each second of an uploaded "
                                                "video (plus --portrait-timeout)"),
            ("send_timeout", float, "drop a websocket whose client stops reading for this long, s"),
            ("max_output_rate", int, "highest audio rate a headless session may ask for, Hz"),
            ("max_raw_frame_bytes", int, "bytes of one raw RGB frame a headless session may ask "
                                         "for (else JPEG only)"),
    ]:
        group.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name),
                           help=f"{help_text} (default {getattr(d, name)})")


def check_limits(parser: argparse.ArgumentParser, limits: Limits) -> None:
    for f in fields(Limits):
        if getattr(limits, f.name) <= 0:
            parser.error(f"--{f.name.replace('_', '-')} must be positive")
    if not MIN_RATE <= limits.min_rate <= limits.max_rate <= MAX_RATE:
        parser.error(f"need {MIN_RATE} <= --min-rate <= --max-rate <= {MAX_RATE}")
