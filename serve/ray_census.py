"""The sessions of the whole Ray deployment, for every replica's /metrics.

Each replica's /metrics counts its own sessions (labelled with its replica id); an operator
also wants the deployment's: how many sessions in all, how many it can hold, on how many
replicas, from whichever replica Prometheus or a person asks. Each replica reports its count
to one actor of the cluster, the SessionCensus, when Serve asks it for its routing stats
(about once a second, serve/ray_app.py); its /metrics adds the census's totals as
cluster_sessions, cluster_sessions_max and cluster_replicas. A replica that has not reported
for STALE_SECONDS (it died, or was stopped) is no longer counted. Like the avatar store it is
a detached named actor that the first replica creates and the driver removes with the app
(serve/ray_app.py, shutdown).
"""

import logging
import time

log = logging.getLogger("server")

CENSUS = "talking_head_census"
NAMESPACE = "talking_head"         # serve/ray_app.py's APP
STALE_SECONDS = 5.0                # five missed reports: the replica is gone


class SessionCensus:
    """replica id -> (sessions, the most it holds, when it said so)."""

    def __init__(self):
        self.replicas: dict[str, tuple[int, int, float]] = {}

    def report(self, replica: str, sessions: int, max_sessions: int) -> None:
        self.replicas[replica] = (sessions, max_sessions, time.monotonic())

    def leave(self, replica: str) -> None:
        self.replicas.pop(replica, None)

    def totals(self) -> dict[str, int]:
        now = time.monotonic()
        self.replicas = {r: v for r, v in self.replicas.items() if now - v[2] < STALE_SECONDS}
        return {"cluster_sessions": sum(v[0] for v in self.replicas.values()),
                "cluster_sessions_max": sum(v[1] for v in self.replicas.values()),
                "cluster_replicas": len(self.replicas)}


class Census:
    """A replica's handle on the census."""

    def __init__(self, replica: str):
        import ray

        self.replica = replica
        self.actor = ray.remote(SessionCensus).options(
            name=CENSUS, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            num_cpus=0).remote()

    def report(self, sessions: int, max_sessions: int) -> None:
        """(Not waited for: a report that is lost is made again a second later.)"""
        self.actor.report.remote(self.replica, sessions, max_sessions)

    def leave(self) -> None:
        self.actor.leave.remote(self.replica)

    async def gauges(self) -> dict[str, int]:
        """The deployment's totals; none when the census cannot be reached (/metrics then
        answers with this replica's own figures all the same)."""
        try:
            return await self.actor.totals.remote()
        except Exception as e:
            log.warning("the cluster's session census cannot be read: %s", e)
            return {}
