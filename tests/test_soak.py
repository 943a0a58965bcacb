"""The soak benchmark, shortened: one session streams real speech with pauses for about a
minute through the real server over loopback WebRTC (benchmarks/soak.py; the 30-minute
run's figures are in benchmarks/RESULTS.md).

Checked: lips and sound stay together on the sender's clock, utterance after utterance (no
systematic offset, nearly every utterance within one frame, none off by more than two); no
video slot or audio frame the server sent is lost without being counted; the server's memory,
threads and file descriptors stay level; the server stops cleanly (SIGTERM, exit status 0, no
traceback in its log).
"""

import json

import pytest
from test_server import OUT, checkpoint

SECONDS = 75.0


def test_soak_shortened():
    from benchmarks.soak import soak

    result = soak(SECONDS, size=256, checkpoint=str(checkpoint()), log=OUT / "soak_server.log")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k not in ("utterance_rows", "per_minute")}
    print("\nsoak:", json.dumps(summary))

    assert result["server_exit_code"] == 0 and result["server_log_tracebacks"] == 0, summary
    video, audio, memory = result["video"], result["audio"], result["memory"]
    assert video["lost_unreported"] == 0 and audio["lost_unreported"] == 0, summary
    assert video["received"] >= 0.95 * (SECONDS - 5) * 25, summary      # 25 slots a second
    assert memory["rss_mb_end"] - memory["rss_mb_after_warmup"] < 50, summary
    assert memory["threads"][1] <= memory["threads"][0] + 2, summary
    assert memory["fds"][1] <= memory["fds"][0] + 5, summary
    # Lip sync is measured from the mouth in the pictures, which needs them rendered in
    # time: on a CPU too slow or too busy for that (the soak's figures on this project's
    # machines are in benchmarks/RESULTS.md) they repeat, the mouth cannot be followed and the
    # offset says nothing. How fast a machine is belongs to the benchmarks, not to this test:
    # it says so plainly instead of failing on a slow machine or passing on no evidence.
    if video["fresh_share"] < 0.8:
        pytest.skip(f"lip sync not measurable here: only {video['fresh_share']:.0%} of the "
                    f"slots had a freshly rendered picture (a CPU short of compute); the other "
                    f"checks passed. {summary}")
    offsets = result["av_offset_ms"]
    assert result["utterances_valid"] >= result["utterances"] // 2, summary
    # One utterance's offset is measured from pictures 40 ms apart against an offline
    # render, to 5 ms: it scatters by about a frame (the 30-minute run: 451 of 453 within
    # 40 ms, the other two at 50 ms). A real fault shifts them all, or some by frames.
    assert abs(offsets["median"]) <= 20, summary
    assert offsets["within_one_frame"] >= 0.9, summary
    assert offsets["worst_abs"] <= 80, summary
