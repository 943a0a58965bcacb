"""Autoscaling on sessions (--autoscale MIN:MAX): enough replicas that one more session always
has room, never more.

Ray Serve's own policy scales on requests in flight; a session is not a request (its websocket
is one long request, its media none). Each replica reports its sessions
(record_autoscaling_stats in serve/ray_app.py); this policy, run by the Serve controller, asks
for ceil((sessions + 1) / max_sessions) replicas within MIN..MAX. Serve chooses which replica to
stop by its own rules, not by sessions: the replica it stops drains first (serve/ray_app.py:
it takes no new session and waits for its sessions to end), so no live session is cut.
"""

import math


class SessionsPolicy:
    def __init__(self, max_sessions: int):
        self.max_sessions = max(int(max_sessions), 1)

    def __call__(self, ctx) -> tuple[int, dict]:
        per_replica = (ctx.aggregated_metrics or {}).get("sessions", {})
        wanted = math.ceil((sum(per_replica.values()) + 1) / self.max_sessions)
        return max(ctx.capacity_adjusted_min_replicas,
                   min(ctx.capacity_adjusted_max_replicas, wanted)), {}
