"""Server metrics in the Prometheus text format (no client library: counters, gauges and
histograms are a few lines each).

    metrics = Metrics()
    metrics.count("frames_shown_total", 3)
    metrics.observe_latency(shown=[0.21], rendered=[0.15])
    text = metrics.render(gauges={"sessions": 2}, labelled={"session_fps": {...}})
"""

import os
import resource
import threading
from dataclasses import dataclass, field

PREFIX = "talking_head_"
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

HELP = {
    "sessions": "Sessions streaming now.",
    "sessions_max": "Most sessions served at once (--max-sessions).",
    "sessions_short_of_compute": ("Sessions rendering every 2nd or 3rd frame now: the machine "
                                  "is short of compute for them (stream/render_stride.py)."),
    "sessions_started_total": "Sessions started.",
    "sessions_rejected_total": "Offers refused because the server was full.",
    "session_fps": "Fresh frames shown per second, per session (last 5 s).",
    "session_slots_per_second": "Video slots sent per second, per session (last 5 s).",
    "frames_shown_total": "Slots that showed their own frame.",
    "frames_repeated_total": "Slots that repeated an older frame (compute behind).",
    "frames_skipped_total": "Frames skipped because they were late.",
    "frames_thinned_total": ("Frames not rendered: a session short of compute rendered every "
                             "2nd or 3rd frame (stream/render_stride.py)."),
    "frames_dropped_total": "Frames dropped (session queue full or the sender fell behind).",
    "audio_frames_dropped_total": "20 ms audio frames dropped (the sender fell behind).",
    "bad_requests_total": "Requests refused with a 4xx error.",
    "websocket_errors_total": "Websocket messages refused.",
    "session_errors_total": "Sessions ended by an internal error.",
    "sessions_ended_total": "Sessions ended, for any reason.",
    "sessions_idle_total": "Sessions ended because nothing came from their client (idle).",
    "sessions_peer_gone_total": "Sessions ended because their peer vanished or never connected.",
    "unauthorized_total": "Requests refused for a missing or wrong access token.",
    "websockets_stalled_total": "Websockets dropped because their client stopped reading.",
    "video_avatars_preparing": "Uploaded videos being prepared as avatars now.",
    "video_avatars_prepared_total": "Uploaded videos prepared as avatars.",
    "video_avatars_refused_total": "Uploaded videos refused (no usable face, damaged, too long).",
    "video_cache_entries_removed_total": "Prepared videos removed from the disk cache (its bound).",
    "cluster_sessions": "Sessions on all replicas of the Ray deployment (as last reported).",
    "cluster_sessions_max": "Sessions all running replicas of the Ray deployment can hold.",
    "cluster_replicas": "Replicas of the Ray deployment that reported in the last 5 s.",
    "process_threads": "Threads of the server process.",
    "process_python_threads": ("Of those, Python's (sessions' workers, executors); the rest "
                               "are native pools (FFmpeg, onnxruntime)."),
    "process_open_fds": "Open file descriptors of the server process.",
    "process_resident_memory_bytes": "Resident memory of the server process.",
    "latency_seconds": "Audio in to frame out (the frame's slot on the media clock).",
    "render_latency_seconds": "Audio in to frame rendered (a frame's own 40 ms of audio).",
}


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self):
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{edge:g}"}} {c}'
               for edge, c in zip(self.buckets, self.counts, strict=True)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total:.6f}",
                f"{name}_count {self.n}"]
        return out


class Metrics:
    """Counters and the latency histogram; safe to update from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[str, float] = {name: 0 for name in HELP if name.endswith("_total")}
        self.latency = Histogram()
        self.render_latency = Histogram()

    def count(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + amount

    def observe_latency(self, shown: list[float], rendered: list[float]) -> None:
        with self._lock:
            for s in shown:
                self.latency.observe(s)
            for s in rendered:
                self.render_latency.observe(s)

    def render(self, gauges: dict[str, float],
               labelled: dict[str, dict[str, float]] | None = None) -> str:
        lines = []

        def head(name: str, kind: str) -> None:
            lines.append(f"# HELP {PREFIX}{name} {HELP.get(name, name)}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")

        with self._lock:
            for name, value in gauges.items():
                head(name, "gauge")
                lines.append(f"{PREFIX}{name} {value:g}")
            for name, per_session in (labelled or {}).items():
                head(name, "gauge")
                lines += [f'{PREFIX}{name}{{session="{sid}"}} {v:g}'
                          for sid, v in per_session.items()]
            for name, value in self.counters.items():
                head(name, "counter")
                lines.append(f"{PREFIX}{name} {value:g}")
            for name, histogram in (("latency_seconds", self.latency),
                                    ("render_latency_seconds", self.render_latency)):
                head(name, "histogram")
                lines += histogram.lines(PREFIX + name)
        return "\n".join(lines) + "\n"


def process_stats() -> dict[str, float]:
    """Threads, open file descriptors and resident memory of this process (Linux /proc;
    elsewhere what the resource module knows)."""
    try:
        threads = len(os.listdir("/proc/self/task"))
        fds = len(os.listdir("/proc/self/fd"))
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        threads, fds = threading.active_count(), 0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"process_threads": threads, "process_python_threads": threading.active_count(),
            "process_open_fds": fds,
            "process_resident_memory_bytes": rss}
