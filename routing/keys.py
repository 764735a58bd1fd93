"""Every Redis key name Turnout uses, in one place.

All keys share one hash tag (``{prefix}``) so they live in one Redis Cluster slot and
multi-key transactions and scripts keep working there.
"""

from __future__ import annotations


class Keys:
    __slots__ = ("epoch", "log", "origin", "prefix", "routes", "tag", "versions")

    def __init__(self, prefix: str = "turnout") -> None:
        if not prefix or any(c in prefix for c in "{}: \r\n"):
            raise ValueError(f"invalid Redis key prefix {prefix!r}")
        self.prefix = prefix
        self.tag = "{" + prefix + "}"
        self.routes = f"{self.tag}:routes"
        self.log = f"{self.tag}:routes:log"
        # host -> latest published version, kept for deletes too, so a delayed publish of an
        # old version can never resurrect a deleted host (the routes hash forgets it).
        self.versions = f"{self.tag}:routes:versions"
        self.epoch = f"{self.tag}:epoch"
        # run_id of the Redis server the current table was written on: a promoted replica or a
        # server restored from disk has another one, so acknowledged writes may be missing.
        self.origin = f"{self.tag}:routes:origin"

    def usage(self, space_id: str, yyyymm: str) -> str:
        return f"{self.tag}:usage:{space_id}:{yyyymm}"

    def health(self, deployment_id: str, epoch_minute: int) -> str:
        return f"{self.tag}:health:{deployment_id}:{epoch_minute}"

    def leader(self, loop: str) -> str:
        return f"{self.tag}:leader:{loop}"

    def pod(self, space_id: str, name: str) -> str:
        return f"{self.tag}:pods:{space_id}:{name}"

    def notify(self, topic: str) -> str:
        """Pub/sub channel ``topic`` (e.g. ``publish``: "the outbox has rows", ``lease:<name>``:
        "the lease was released"). Channels carry wake-ups, never state."""
        return f"{self.tag}:notify:{topic}"

    def __repr__(self) -> str:
        return f"Keys(prefix={self.prefix!r})"
