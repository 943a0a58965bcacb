"""The latency benchmark (benchmarks/latency.py) runs end to end and reports plausible figures.

Short runs of real speech at 256 px with the onnx engine (the server's default on a CPU),
one stream: in-process, and through the real server to an aiortc client (everything on
127.0.0.1). What is checked is that the JSON is complete and self-consistent, not the
speed of this machine (the speed targets are recorded in benchmarks/RESULTS.md).
"""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("TEST_OUTPUT_DIR", ROOT / "out" / "tests"))


def check_result(result: dict, path: Path) -> None:
    from benchmarks.latency import KEYS

    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    missing = [k for k in KEYS if k not in result]
    assert not missing, missing
    assert result["streams"] == 1 and len(result["sessions"]) == 1
    assert set(result["stages_ms"]) >= {"features", "motion", "render", "encode"}
    for name in ("features", "motion", "render"):
        assert result["stages_ms"][name] > 0, result["stages_ms"]
    assert 0 < result["first_frame_ms"] < 5000, result
    p50, p95, p99 = (result[f"latency_ms_p{q}"] for q in (50, 95, 99))
    assert 0 < p50 <= p95 <= p99 < 5000, (p50, p95, p99)
    assert result["dropped_frames"] >= 0 and result["repeated_frames"] >= 0
    assert 0 < result["cpu_percent"] <= 100 * (os.cpu_count() or 1) + 5
    assert result["peak_memory_mb"] > 50
    assert result["cpu"] and len(result["loadavg"]) == 3
    series = result["sessions"][0]["latency_series"]
    assert len(series) > 10 and all(ms > 0 for _, ms in series)


@pytest.mark.slow
def test_in_process_run(tmp_path):
    """Four seconds of speech into one in-process session: 25 slots a second, nearly every
    one a fresh frame, every stage timed, the H.264 encode included."""
    from benchmarks.latency import main

    out, png = tmp_path / "latency.json", OUT / "latency_benchmark.png"
    result = main(["--engine", "onnx", "--size", "256", "--seconds", "4", "--json", str(out),
                   "--plot", str(png)])
    check_result(result, out)
    assert result["mode"] == "inprocess"
    assert result["stages_ms"]["encode"] > 0
    assert 24.0 <= result["output_fps"] <= 26.0, result["output_fps"]
    assert result["fps"] >= 20.0, f"few fresh frames (is the machine overloaded?): {result}"
    assert result["render_latency_ms_p95"] <= result["latency_ms_p99"] + 1
    assert png.stat().st_size > 10_000


@pytest.mark.slow
def test_webrtc_run(tmp_path):
    """The same through `python server.py` on 127.0.0.1 and an aiortc client that sends the
    speech as its microphone: latencies measured at the client from decoded pictures."""
    from benchmarks.latency import main

    out = tmp_path / "latency_webrtc.json"
    result = main(["--engine", "onnx", "--size", "256", "--seconds", "5", "--webrtc",
                   "--json", str(out)])
    check_result(result, out)
    session = result["sessions"][0]
    assert result["mode"] == "webrtc" and session["video_codec"] == "H264"
    assert result["stages_ms"]["encode"] is None            # not observable from the client
    assert session["latency_frames"] > 25
    assert session["sound_delay_ms"], "the sent speech was not found in the received sound"
    assert 20.0 <= result["output_fps"] <= 27.0, result["output_fps"]
    assert abs(result["av_offset_ms"]) < 500, result["av_offset_ms"]
