"""Autoscaling on sessions (--autoscale MIN:MAX): enough replicas that one more session always
has room on a replica whose sessions render every frame, never more.

Ray Serve's own policy scales on requests in flight; a session is not a request (its websocket
is one long request, its media none). Each replica reports its sessions and how many of them
are short of compute (record_autoscaling_stats in serve/ray_app.py: rendering every 2nd or 3rd
frame, stream/render_stride.py); this policy, run by the Serve controller, counts a replica
that had a session short of compute for most of the look-back window as full (its machine has
no compute for another session, whatever --max-sessions allows; the router sends new sessions
elsewhere, serve/ray_router.py) and asks for ceil((sessions + 1) / max_sessions) replicas
within MIN..MAX. Serve chooses which replica to stop by its own rules, not by sessions: the
replica it stops drains first (serve/ray_app.py: it takes no new session and waits for its
sessions to end), so no live session is cut.
"""

import math

SHORT = 0.5        # a replica short of compute this share of the look-back window is full


class SessionsPolicy:
    def __init__(self, max_sessions: int):
        self.max_sessions = max(int(max_sessions), 1)

    def __call__(self, ctx) -> tuple[int, dict]:
        metrics = ctx.aggregated_metrics or {}
        short = metrics.get("short", {})
        taken = sum(self.max_sessions if short.get(replica, 0.0) >= SHORT else sessions
                    for replica, sessions in metrics.get("sessions", {}).items())
        wanted = math.ceil((taken + 1) / self.max_sessions)
        return max(ctx.capacity_adjusted_min_replicas,
                   min(ctx.capacity_adjusted_max_replicas, wanted)), {}
