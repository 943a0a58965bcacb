"""The page in Firefox: Debian's firefox-esr, headless, driven over WebDriver BiDi.

Firefox speaks WebDriver BiDi itself (`--remote-debugging-port`), so no geckodriver is
needed (Debian has none, and nothing can be downloaded here): the test talks to it over one
websocket with aiohttp. Firefox's fake media devices (a tone as the microphone) stand in for
a real one; loopback ICE candidates are allowed by a preference. The test connects to the
server, checks that the avatar's video decodes at about 25 fps, that the stats overlay
fills, that the local TTS answers a Speak click and that a disconnect ends the session, and
writes a screenshot to the test output folder (out/tests/firefox/page.png).
"""

import asyncio
import base64
import json
import re
import shutil
import subprocess
import time

import aiohttp
import pytest
from test_server import OUT, start_server

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
PREFS = {
    "media.navigator.streams.fake": True,             # a tone as the microphone
    "media.navigator.permission.disabled": True,      # no permission prompt
    "media.peerconnection.ice.loopback": True,        # host candidates on 127.0.0.1
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "network.captive-portal-service.enabled": False,  # no traffic off the machine
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "app.update.enabled": False,
}

DECODED = r"""(async () => {
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
  return JSON.stringify([frames, at, codec, offered]);
})()"""


class Bidi:
    """The few WebDriver BiDi commands the test needs, over one websocket."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0
        self.context = None

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:                                  # events are skipped
            message = json.loads((await asyncio.wait_for(self.ws.receive(), 30)).data)
            if message.get("id") == self.next_id:
                if message.get("type") == "error":
                    raise AssertionError(f"{method}: {message}")
                return message["result"]

    async def js(self, expression: str):
        """Evaluate in the page (promises awaited); the value, or an AssertionError."""
        reply = await self.call("script.evaluate", expression=expression,
                                target={"context": self.context}, awaitPromise=True)
        if reply["type"] == "exception":
            raise AssertionError(f"{expression[:80]}: {reply['exceptionDetails']['text']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await self.js(expression):
            assert time.monotonic() < deadline, f"not true within {timeout:.0f} s: {expression}"
            await asyncio.sleep(0.2)


def start_firefox(profile) -> tuple[subprocess.Popen, int]:
    (profile / "user.js").write_text("".join(f'user_pref("{k}", {json.dumps(v)});\n'
                                             for k, v in PREFS.items()))
    process = subprocess.Popen([FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
                                "--remote-debugging-port", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        found = re.search(r"WebDriver BiDi listening on ws://127\.0\.0\.1:(\d+)", line)
        if found:
            return process, int(found.group(1))
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError("Firefox did not start its WebDriver BiDi endpoint within 60 s")


async def drive(port: int, url: str, out) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"ws://127.0.0.1:{port}/session", max_msg_size=0) as ws:
            page = Bidi(ws)
            await page.call("session.new", capabilities={})
            page.context = (await page.call("browsingContext.getTree"))["contexts"][0]["context"]
            await page.call("browsingContext.navigate", context=page.context, url=url + "/",
                            wait="complete")
            await page.wait_for("!!document.querySelector('#avatars button')", 20)
            await page.js("document.getElementById('echo').checked = false")
            await page.js("document.getElementById('mic').checked = true")
            await page.js("document.getElementById('connect').click()")
            await page.wait_for("window.talkingHead.pc && "
                                "window.talkingHead.pc.connectionState === 'connected'", 30)
            deadline = time.monotonic() + 30
            while json.loads(await page.js(DECODED))[0] < 10:
                assert time.monotonic() < deadline, "no video decoded within 30 s"
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            f0, t0, _, _ = json.loads(await page.js(DECODED))
            await asyncio.sleep(4.0)
            f1, t1, codec, offered_h264 = json.loads(await page.js(DECODED))
            await page.wait_for("document.getElementById('stat-fps').textContent"
                                ".includes('fps')", 10)
            shot = await page.call("browsingContext.captureScreenshot", context=page.context)
            (out / "page.png").write_bytes(base64.b64decode(shot["data"]))
            overlay = {k: await page.js(f"document.getElementById('stat-{k}').textContent")
                       for k in ("fps", "fresh", "latency", "offset", "decoded")}
            stats = json.loads(await page.js("JSON.stringify(window.talkingHead.stats)"))
            await page.js("document.getElementById('speak').click()")      # local TTS
            await page.wait_for("document.getElementById('message').textContent"
                                ".startsWith('Speaking')", 20)
            await page.js("document.getElementById('connect').click()")    # disconnect
            await page.call("session.end")
    return {"fps": (f1 - f0) / ((t1 - t0) / 1000), "overlay": overlay, "stats": stats,
            "codec": codec, "offered_h264": offered_h264}


@pytest.mark.slow
def test_page_in_headless_firefox(tmp_path):
    assert FIREFOX, "firefox-esr is missing: apt-get install firefox-esr (the Makefile does)"
    out = OUT / "firefox"
    out.mkdir(parents=True, exist_ok=True)
    server = start_server("firefox_server", "--max-sessions", "2")
    firefox = None
    try:
        firefox, port = start_firefox(tmp_path)
        result = asyncio.run(asyncio.wait_for(drive(port, server.url, out), 120))
        sessions = server.sessions_when_drained()
    finally:
        if firefox is not None:
            firefox.terminate()
            try:
                firefox.wait(10)
            except subprocess.TimeoutExpired:
                firefox.kill()
        server.stop()
    print(f"\nfirefox: {result['fps']:.1f} fps decoded ({result['codec']}, H.264 offered: "
          f"{result['offered_h264']}); overlay {result['overlay']}")
    (out / "result.txt").write_text(json.dumps(result, indent=1))
    assert 22.0 <= result["fps"] <= 28.0, f"framesDecoded grew at {result['fps']:.1f} fps"
    # the server answers with H.264 whenever the browser offers it (stream/video_encoder.py)
    assert result["codec"] == ("video/H264" if result["offered_h264"] else "video/VP8"), result
    assert (out / "page.png").stat().st_size > 10_000
    assert result["stats"].get("latencyMs") is not None, result
    assert "fps" in result["overlay"]["fps"], result
    assert sessions == 0, "the session outlived the page's disconnect"
