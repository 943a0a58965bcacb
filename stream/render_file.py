"""Render an audio file through the streaming path into an mp4.

    python -m stream.render_file --avatar IMG|CLIP --audio FILE --out OUT.mp4
                                 [--motion-out M.npz] [--engine torch|onnx|trt] [--seed S]
                                 [--size 512] [--checkpoint CKPT] [--preview DEMO.webp]

The file is decoded at its own rate and fed to a Session in 20 ms pieces, as fast as the
pipeline takes them (the same code path as a live stream, only not paced by a clock). The mp4
has H.264 video and AAC audio; frame t carries the audio of frame t, so they are in sync.
--avatar takes a photo or a short recording of the person (models.video_avatar: its frames
play, the mouth follows the speech). --motion-out writes the motion as npz: motion [T, D],
names [D], fps. --preview also writes an animated WebP (no sound, 256 px) for a README.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from models import motion_space

PIECE_SECONDS = 0.02
MAX_AHEAD_SECONDS = 10.0        # audio fed beyond the frames rendered (bounds memory)


def render_file(session, audio: np.ndarray, rate: int, writer=None,
                piece_seconds: float = PIECE_SECONDS) -> tuple[np.ndarray, dict]:
    """Feed `audio` (float32 mono at `rate`) through `session`; write/collect every frame.

    Returns (motion [T, D], report). `writer` gets (image, audio48) per frame."""
    step = max(int(round(piece_seconds * rate)), 1)
    spf = session.engine.feature_config.samples_per_frame
    motion, expected = [], 0
    t0 = time.perf_counter()

    def take(timeout: float) -> bool:
        nonlocal expected
        frame = session.next_frame(timeout=timeout)
        if frame is None:
            return False
        if frame.index != expected:
            raise RuntimeError(f"frame {frame.index} arrived, {expected} expected")
        if writer is not None:
            writer(frame.image, session.frame_audio(frame.index))
        motion.append(frame.motion)
        expected += 1
        return True

    for i in range(0, len(audio), step):
        session.push_audio(audio[i:i + step], rate)
        while (session.audio.end - expected * spf) / 16000 > MAX_AHEAD_SECONDS:
            if not take(timeout=1.0) and session.stats.errors:
                raise RuntimeError("; ".join(session.stats.errors))
        while take(timeout=0):
            pass
    session.end_audio()
    while not (session.drained() and session.frames.empty()):
        if not take(timeout=0.5) and session.stats.errors:
            raise RuntimeError("; ".join(session.stats.errors))
    elapsed = time.perf_counter() - t0
    report = {"frames": expected, "seconds_of_audio": len(audio) / rate,
              "wall_seconds": elapsed, "fps": expected / max(elapsed, 1e-9),
              "stages_ms": session.stats.stage_means()}
    out = np.stack(motion) if motion else np.zeros((0, motion_space.D), np.float32)
    return out, report


def save_motion(path: str | Path, motion: np.ndarray, fps: int = 25) -> None:
    np.savez(path, motion=motion.astype(np.float32), names=np.array(motion_space.NAMES),
             fps=np.int64(fps))


def save_preview(path: str | Path, frames: list[np.ndarray], size: int = 256,
                 fps: int = 25) -> None:
    """Animated WebP of the frames (downscaled to `size`), e.g. for a README."""
    from PIL import Image

    images = [Image.fromarray(f).resize((size, size), Image.LANCZOS) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 // fps,
                   loop=0, quality=70, method=4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream.render_file", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avatar", help="portrait image, or a short video of the person "
                        "(.mp4, .mov, .webm, ...; default: the bundled portrait)")
    parser.add_argument("--audio", required=True, help="speech audio, any format av decodes")
    parser.add_argument("--out", required=True, help="output mp4")
    parser.add_argument("--motion-out", help="also write the motion as npz")
    parser.add_argument("--engine", default="torch", choices=["torch", "onnx", "trt"])
    parser.add_argument("--checkpoint", help="motion checkpoint (default: assets/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512, choices=[256, 512])
    parser.add_argument("--preview", help="also write an animated WebP (256 px, no sound)")
    args = parser.parse_args(argv)

    from models.audio_io import AudioInputError, decode_audio
    from models.avatar import DEFAULT_AVATAR
    from models.face import PortraitError
    from models.video_avatar import prepare_any_avatar, print_progress
    from stream.engine import DEFAULT_CHECKPOINT, EngineError, make_engine
    from stream.mp4 import Mp4Writer
    from stream.session import Session

    try:
        audio, rate = decode_audio(args.audio)
        avatar = prepare_any_avatar(args.avatar or DEFAULT_AVATAR, size=args.size,
                                    progress=print_progress)
        engine = make_engine(args.engine, args.checkpoint or DEFAULT_CHECKPOINT)
    except (AudioInputError, PortraitError, EngineError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    session = Session(engine, avatar, seed=args.seed)
    writer = Mp4Writer(args.out, avatar.size)
    kept: list[np.ndarray] = []

    def write(image: np.ndarray, sound: np.ndarray) -> None:
        writer.write(image, sound)
        if args.preview:
            kept.append(image)

    try:
        motion, report = render_file(session, audio, rate, write)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        writer.close()
        session.close()
    if args.motion_out:
        save_motion(args.motion_out, motion)
    if args.preview:
        save_preview(args.preview, kept)
    print(f"{report['frames']} frames ({report['seconds_of_audio']:.1f} s of audio) in "
          f"{report['wall_seconds']:.1f} s: {report['fps']:.1f} fps -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
