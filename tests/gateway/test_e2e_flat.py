"""End to end: ``turnout gateway --route-table flat --workers 2`` against a real Redis.

Both workers serve from one memory-mapped flat file (the same inode, the same mapped size),
follow changes from the stream, and a gateway restarted while Redis is down serves at once from
the file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from routing.flat import FlatFile
from tests.gateway.test_e2e_resilience import echo_of, full_publish, wait_for
from tests.support.gateway_proc import GatewayProcess, Publisher, make_record
from tests.support.rawhttp import request
from tests.support.redis_server import RedisServer
from tests.support.upstream import started_upstreams

PREFIX = "flat"


def worker_json(gw: GatewayProcess, worker: int, path: str) -> dict[str, object]:
    resp = request(gw.internal_port + worker, "GET", path, "localhost")
    obj = json.loads(resp.body)
    assert isinstance(obj, dict), resp
    return obj


def metric(gw: GatewayProcess, worker: int, name: str) -> float:
    resp = request(gw.internal_port + worker, "GET", "/metrics", "localhost")
    for line in resp.body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics of worker {worker}")


def names_seen(gw: GatewayProcess, host: str, n: int = 16) -> set[str]:
    """Upstream names answering ``n`` requests on fresh connections (spread over workers)."""
    return {echo_of(request(gw.port, "GET", "/echo", host).body)["name"] for _ in range(n)}


def test_two_workers_share_one_flat_file(own_redis: RedisServer, tmp_path: Path) -> None:
    with started_upstreams(tmp_path / "up", "a", "b") as (a, b):
        hosts = [f"h{i}.flat.test" for i in range(50)]
        records = [make_record(h, [a.url], space_id="space-flat") for h in hosts]
        full_publish(own_redis.url, PREFIX, records, epoch="epoch-flat")
        gw = GatewayProcess(
            own_redis.url,
            tmp_path / "gw",
            prefix=PREFIX,
            extra_args=["--workers", "2", "--route-table", "flat", "--flush-interval", "0.2"],
        )
        gw.start()
        try:
            for worker in (0, 1):
                wait_for(
                    lambda w=worker: worker_json(gw, w, "/readyz")["table"]["records"] == 50,  # type: ignore[index]
                    10,
                    f"worker {worker} ready",
                )
            flat = FlatFile(str(gw.snapshot))
            assert (flat.count, flat.epoch) == (50, "epoch-flat")
            for worker in (0, 1):
                assert metric(gw, worker, "turnout_route_table_mapped_bytes") == flat.size
                assert metric(gw, worker, "turnout_route_table_file_records") == 50
            assert names_seen(gw, hosts[7]) == {"a"}
            assert request(gw.port, "GET", "/echo", "nope.flat.test").status == 404

            # A change streams into both workers' overlays.
            pub = Publisher(own_redis.url, PREFIX)
            pub.versions[hosts[7]] = 1  # published above at version 1
            pub.publish(hosts[7], [b.url], space_id="space-flat")
            wait_for(lambda: names_seen(gw, hosts[7]) == {"b"}, 10, "both workers see v2")
            hits = sum(metric(gw, w, "turnout_route_table_hot_hits_total") for w in (0, 1))
            assert hits > 0

            # The writer compacts the change into a new file; the reader swaps to it.
            wait_for(
                lambda: FlatFile(str(gw.snapshot)).version(hosts[7].encode()) == 2, 10, "compaction"
            )
            wait_for(
                lambda: (
                    metric(gw, 1, "turnout_route_table_mapped_bytes")
                    == FlatFile(str(gw.snapshot)).size
                    and metric(gw, 1, "turnout_route_table_overlay") == 0
                ),
                10,
                "the reader on the compacted file",
            )
            assert names_seen(gw, hosts[7]) == {"b"}

            # Restarted while Redis is down: both workers serve from the file at once.
            assert gw.stop() == 0, gw.stderr_text()[-4000:]
            own_redis.shutdown_nosave()
            t0 = time.monotonic()
            gw.start()
            for worker in (0, 1):
                wait_for(
                    lambda w=worker: (
                        worker_json(gw, w, "/readyz")["table"]["from_snapshot"] is True
                    ),  # type: ignore[index]
                    10,
                    f"worker {worker} from the file",
                )
            restart = time.monotonic() - t0
            assert names_seen(gw, hosts[7]) == {"b"}
            assert names_seen(gw, hosts[8]) == {"a"}
            print(f"flat: restarted with Redis down, both workers serving in {restart:.2f} s")
        finally:
            gw.stop()
