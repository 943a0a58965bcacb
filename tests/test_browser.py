"""The page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Chromium feeds a WAV of real speech as its microphone, connects to the server over loopback
(host candidates only, `--allow-loopback-in-peer-connection`), decodes the avatar's video
and plays its sound. The test reads the page's own peer connection statistics and writes a
screenshot of the page to the test output folder (out/tests/browser/page.png).
"""

import time
import wave
from pathlib import Path

import pytest
from test_server import OUT, start_server

from benchmarks.webrtc_client import speech_clip

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"]

DECODED = r"""async () => {
  let frames = 0, at = 0, codec = null;
  const stats = await window.talkingHead.pc.getStats();
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      frames = s.framesDecoded;
      at = s.timestamp;
      codec = s.codecId && stats.get(s.codecId) ? stats.get(s.codecId).mimeType : null;
    }
  });
  const offered = /a=rtpmap:\d+ H264\//.test(window.talkingHead.pc.localDescription.sdp);
  return [frames, at, codec, offered];
}"""


@pytest.fixture(scope="module")
def chromium():
    assert CHROMIUM.is_file(), (f"{CHROMIUM} is missing: apt-get install chromium "
                                "(the Makefile installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install playwright "
                    "(it drives Debian's Chromium; never `playwright install`)")
    return sync_playwright


def test_page_in_headless_chromium(chromium, tmp_path):
    wav = tmp_path / "microphone.wav"
    audio = speech_clip(lead=0.5, pause=0.7, tail=0.5).audio
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    out = OUT / "browser"
    out.mkdir(parents=True, exist_ok=True)
    server = start_server("browser_server", "--max-sessions", "2")
    problems = []
    try:
        with chromium() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                        args=FLAGS + [f"--use-file-for-fake-audio-capture={wav}"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(server.url + "/")
            page.wait_for_selector("#avatars button")
            page.uncheck("#echo")                  # the WAV reaches the server unaltered
            page.check("#mic")
            page.click("#connect")
            page.wait_for_function("window.talkingHead.pc && "
                                   "window.talkingHead.pc.connectionState === 'connected'",
                                   timeout=30_000)
            deadline = time.monotonic() + 30
            while page.evaluate(DECODED)[0] < 10:
                assert time.monotonic() < deadline, "no video decoded within 30 s"
                time.sleep(0.2)
            time.sleep(1.0)
            f0, t0, _, _ = page.evaluate(DECODED)
            time.sleep(4.0)
            f1, t1, codec, offered_h264 = page.evaluate(DECODED)
            fps = (f1 - f0) / ((t1 - t0) / 1000)
            # the server hears the microphone (its VAD reports speech within a loop of the WAV)
            page.wait_for_function("window.talkingHead.server.hearing_speech === true",
                                   timeout=15_000)
            page.wait_for_function("document.getElementById('stat-fps').textContent"
                                   ".includes('fps')")
            page.screenshot(path=str(out / "page.png"))
            overlay = {k: page.inner_text(f"#stat-{k}")
                       for k in ("fps", "fresh", "latency", "offset", "decoded")}
            stats = page.evaluate("window.talkingHead.stats")
            sliders = dict(page.evaluate("[...document.querySelectorAll('#styles label')]"
                                         ".map((l) => [l.firstChild.textContent, l.hidden])"))
            page.click("#speak")                   # local TTS through the websocket
            page.wait_for_function("document.getElementById('message').textContent"
                                   ".startsWith('Speaking')", timeout=20_000)
            page.click("#connect")                 # disconnect: the server ends the session
            browser.close()
        sessions = server.sessions_when_drained()
    finally:
        server.stop()
    print(f"\nbrowser: {fps:.1f} fps decoded ({codec}, H.264 offered: {offered_h264}); "
          f"overlay {overlay}; stats {stats}")
    (out / "result.txt").write_text(f"fps {fps:.2f}\ncodec {codec}\noverlay {overlay}\n"
                                    f"stats {stats}\n")
    assert not problems, problems
    assert 22.0 <= fps <= 28.0, f"framesDecoded grew at {fps:.1f} fps, not about 25"
    # the server answers with H.264 whenever the browser offers it (stream/video_encoder.py)
    assert codec == ("video/H264" if offered_h264 else "video/VP8"), (codec, offered_h264)
    assert (out / "page.png").stat().st_size > 10_000
    assert stats.get("latencyMs") is not None, f"the overlay has no latency: {stats}"
    assert sessions == 0, "the session outlived the page's disconnect"
    # the style sliders, and the video avatars' head motion one hidden for a photo
    assert sliders.pop("video head motion: 0.00") is True, sliders
    assert sliders and not any(sliders.values()), sliders
