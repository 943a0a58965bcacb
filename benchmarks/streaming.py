"""Streaming engine speed for several engines and sizes: benchmarks.latency, in-process, one
stream, plus offline throughput (audio pushed as fast as the pipeline takes it).

    python -m benchmarks.streaming [--engines torch onnx] [--sizes 512 256] [--seconds 20]
                                   [--json OUT.json]

The measuring is benchmarks/latency.py's (definitions in its docstring); this only loops.
"""

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks import latency


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            for size in args.sizes:
                extra = ["--checkpoint", args.checkpoint] if args.checkpoint else []
                rows.append(latency.main(["--engine", engine, "--size", str(size), "--seconds",
                                          str(args.seconds), "--offline", "--json",
                                          str(Path(tmp) / "run.json"), *extra]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
