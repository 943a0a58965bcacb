"""Cold start: a first `python server.py` on a machine whose cache is empty.

    python -m benchmarks.cold_start [--size 512] [--before DIR] [--runs 1]
        [--json out/benchmarks/cold_start.json]

Each run starts `python server.py --port FREE --size S` (the onnx engine, the default
avatar) with XDG_CACHE_HOME a new empty folder, so everything the first start makes is made
anew: Whisper's weights taken from their package, the bundled avatars prepared, the three
ONNX graphs exported. Measured from the command: seconds to the first /health answer, and to
the first frame (a headless session created then, its first slot received by
integrations/client); and the lines the server printed up to then, as a newcomer sees them.
Then the same server is started again on that cache (warm). With --before DIR (another
checkout, e.g. a `git worktree` of an older commit, run with this venv) both trees run, one
after the other, in each run.
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.webrtc_client import ROOT, start_server

sys.path.insert(0, str(ROOT / "integrations" / "client"))
from talking_head_client import TalkingHeadClient  # noqa: E402


async def first_slot(url: str) -> None:
    async with TalkingHeadClient(url) as client:
        session = await client.create_session(rate=16000)
        while True:
            item = await session.receive(timeout=60)
            if item is None:
                raise RuntimeError(f"the media websocket closed ({session.close_code})")
            if item.kind == "slot":
                break
        await session.close()


def start(tree: Path, size: int, cache: Path, log: Path) -> dict:
    """One server start on `cache`: seconds to /health and to the first frame, the lines."""
    began = time.perf_counter()
    server = start_server(log, "--size", str(size), root=tree,
                          env={"XDG_CACHE_HOME": str(cache)})
    try:
        health = time.perf_counter() - began
        asyncio.run(first_slot(server.url))
        frame = time.perf_counter() - began
        lines = log.read_text(errors="replace").splitlines()
    finally:
        server.stop()
    return {"health_s": round(health, 1), "first_frame_s": round(frame, 1),
            "lines": len(lines), "log": lines}


def measure(tree: Path, size: int, out: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="cold-start-") as cache:
        cold = start(tree, size, Path(cache), out / f"cold_start_{tree.name}_cold.log")
        warm = start(tree, size, Path(cache), out / f"cold_start_{tree.name}_warm.log")
    return {"tree": str(tree), "size": size, "cold": cold, "warm": warm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--before", type=Path, help="another checkout to measure first")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "benchmarks" /
                        "cold_start.json")
    args = parser.parse_args()
    trees = ([args.before.resolve()] if args.before else []) + [ROOT]
    out = args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in range(args.runs):
        for tree in trees:
            row = {"run": run, **measure(tree, args.size, out)}
            rows.append(row)
            print(f"{tree.name}: empty cache /health {row['cold']['health_s']} s, first frame "
                  f"{row['cold']['first_frame_s']} s, {row['cold']['lines']} lines; warm "
                  f"/health {row['warm']['health_s']} s, first frame "
                  f"{row['warm']['first_frame_s']} s", flush=True)
    args.json.write_text(json.dumps(rows, indent=1))
    for row in rows[-len(trees):]:
        print(f"\n{row['tree']}, empty cache, what the server printed:")
        print("\n".join("    " + line for line in row["cold"]["log"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
