"""A real Redis Sentinel deployment on loopback: a primary, replicas and three Sentinels.

Every node is ``redis-server <conf>`` on a free 127.0.0.1 port (a Sentinel is
``redis-server <conf> --sentinel``; there is no separate binary), each with its own directory
and config file, so Sentinel's ``CONFIG REWRITE`` works and a node restarted on its file comes
back in the role the Sentinels last gave it. Data nodes have ACLs (``default`` off, one user with
a password) and, by default, an append-only file fsynced on every write, so killing and
restarting them loses no acknowledged write; Sentinels may have a password of their own.

::

    with SentinelCluster(tmp_path, password="pw") as cluster:
        url = cluster.url                      # redis+sentinel://turnout:pw@…/mymaster/0
        old = cluster.primary()
        cluster.kill(old)                      # SIGKILL
        new = cluster.wait_for_failover(old)   # a replica promoted by the Sentinels
        cluster.start_node(old)                # back, reconfigured as a replica
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

import redis

from tests.support.net import free_port
from tests.support.redis_server import INSTALL_HINT

SERVICE = "mymaster"
USER = "turnout"


class Node:
    """One ``redis-server`` process (data node or Sentinel) with its own config file."""

    START_TIMEOUT = 15.0

    def __init__(self, name: str, workdir: Path, port: int, conf: str, *, sentinel: bool) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.sentinel = sentinel
        self.conf_path = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.conf_path.write_text(conf)
        self.log_path = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(INSTALL_HINT)
        if self.is_running():
            return
        self._log = self.log_path.open("ab")
        cmd = [executable, str(self.conf_path)] + (["--sentinel"] if self.sentinel else [])
        self._proc = subprocess.Popen(
            cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to the replicas or Sentinels."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<Node {self.name} 127.0.0.1:{self.port} {state}>"


def _client(node: Node, timeout: float, **kw: Any) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=node.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **kw,
    )


class SentinelCluster:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels (quorum 2) on loopback."""

    def __init__(
        self,
        workdir: Path,
        *,
        password: str,
        sentinel_password: str | None = None,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 4000,
        fsync_always: bool = True,
        db: int = 0,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.db = db
        ports = self._ports(1 + replicas + sentinels)
        first = ports[0]
        self.nodes: list[Node] = []
        for i in range(1 + replicas):
            conf = self._data_conf(ports[i], None if i == 0 else first, fsync_always)
            self.nodes.append(Node(f"redis{i}", self.workdir, ports[i], conf, sentinel=False))
        self.sentinels: list[Node] = []
        for j in range(sentinels):
            port = ports[1 + replicas + j]
            conf = self._sentinel_conf(port, first)
            self.sentinels.append(Node(f"sentinel{j}", self.workdir, port, conf, sentinel=True))

    @staticmethod
    def _ports(n: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < n:
            port = free_port()
            if port not in ports and port != 6379:
                ports.append(port)
        return ports

    def _data_conf(self, port: int, primary: int | None, fsync_always: bool) -> str:
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f'dir "{self.workdir / f"redis-{port}"}"',
            "daemonize no",
            'logfile ""',
            'save ""',
            "appendonly yes",
            f"appendfsync {'always' if fsync_always else 'everysec'}",
            # "off": nobody logs in as default. Its permissions stay: Redis 7.0 replays the
            # append-only file as the default user, and with none every MULTI/EXEC in it (the
            # effects of Turnout's scripts) fails with NOPERM — the restarted server comes back
            # without them.
            "user default off ~* &* +@all",
            f"user {USER} on >{self.password} ~* &* +@all",
            f"masteruser {USER}",
            f"masterauth {self.password}",
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
        ]
        (self.workdir / f"redis-{port}").mkdir(parents=True, exist_ok=True)
        if primary is not None:
            lines.append(f"replicaof 127.0.0.1 {primary}")
        return "\n".join(lines) + "\n"

    def _sentinel_conf(self, port: int, primary: int) -> str:
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            "daemonize no",
            'logfile ""',
            f'dir "{self.workdir / f"sentinel-{port}"}"',
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2",
            f"sentinel auth-user {SERVICE} {USER}",
            f"sentinel auth-pass {SERVICE} {self.password}",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        (self.workdir / f"sentinel-{port}").mkdir(parents=True, exist_ok=True)
        if self.sentinel_password:
            lines += [
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
            ]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """``redis+sentinel://turnout:<pw>@<sentinels>/mymaster/<db>`` (+ sentinel password)."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        url = f"redis+sentinel://{USER}:{quote(self.password, safe='')}@{hosts}/{SERVICE}/{self.db}"
        if self.sentinel_password:
            url += f"?sentinel_password={quote(self.sentinel_password, safe='')}"
        return url

    def direct_url(self, node: Node) -> str:
        return f"redis://{USER}:{quote(self.password, safe='')}@127.0.0.1:{node.port}/{self.db}"

    def node_at(self, port: int) -> Node:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no data node on port {port}")

    def client(self, node: Node, timeout: float = 2.0) -> redis.Redis:
        """A synchronous client for one data node (the caller closes it)."""
        return _client(node, timeout, db=self.db, username=USER, password=self.password)

    def sentinel_client(self, node: Node, timeout: float = 1.0) -> redis.Redis:
        """A synchronous client for one Sentinel (answers decoded to str)."""
        return _client(node, timeout, password=self.sentinel_password, decode_responses=True)

    def primary(self) -> Node:
        """The data node the Sentinels name as the primary now (any Sentinel that answers)."""
        errors: list[str] = []
        for s in self.sentinels:
            if not s.is_running():
                continue
            try:
                with self.sentinel_client(s) as c:
                    addr: Any = c.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
            except redis.RedisError as exc:
                errors.append(f"{s.name}: {exc}")
                continue
            if addr:
                return self.node_at(int(addr[1]))
        raise RuntimeError(f"no Sentinel names a primary: {errors}")

    def replicas(self) -> list[Node]:
        primary = self.primary()
        return [n for n in self.nodes if n is not primary]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            self._wait(lambda n=node: self._data_ready(n), f"{node.name} ready", node)
        for s in self.sentinels:
            s.spawn()
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0, *, promotable: bool = False) -> Node:
        """Until every running data node is up, the replicas' links are up and every running
        Sentinel knows the primary, its replicas and the other Sentinels. Returns the primary.

        ``promotable``: also until every Sentinel has seen each replica report itself a
        replica with its link up (what a failover needs; after a restart that can take one
        10 s ``INFO`` round of the Sentinels)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                ok, last = self._healthy(promotable)
            except (redis.RedisError, RuntimeError, OSError) as exc:
                ok, last = False, repr(exc)
            if ok:
                return self.primary()
            time.sleep(0.1)
        raise RuntimeError(f"Sentinel cluster not healthy within {timeout}s: {last}\n{self.logs()}")

    def _healthy(self, promotable: bool) -> tuple[bool, str]:
        primary = self.primary()
        running = [n for n in self.nodes if n.is_running() and n is not primary]
        for node in running:
            with self.client(node) as c:
                info: Any = c.info("replication")
            if info.get("role") != "slave" or info.get("master_port") != primary.port:
                return False, f"{node.name} is not a replica of {primary.name}: {info.get('role')}"
            if info.get("master_link_status") != "up":
                return False, f"{node.name}: replication link {info.get('master_link_status')}"
        live = [s for s in self.sentinels if s.is_running()]
        for s in live:
            with self.sentinel_client(s) as c:
                state: Any = c.sentinel_master(SERVICE)
                reps: Any = c.sentinel_slaves(SERVICE)
            if state["is_sdown"] or int(state["port"]) != primary.port:
                return False, f"{s.name} sees the primary as {state.get('flags')}"
            if int(state["num-slaves"]) < len(running):
                return False, f"{s.name} knows {state['num-slaves']} replicas"
            if int(state["num-other-sentinels"]) < len(live) - 1:
                return False, f"{s.name} knows {state['num-other-sentinels']} Sentinels"
            for rep in reps:
                if not any(n.port == int(rep["port"]) for n in running):
                    continue
                if rep["is_sdown"]:
                    return False, f"{s.name} sees replica {rep['port']} down"
                if promotable and (
                    rep.get("role-reported") != "slave"
                    or rep.get("master-link-status") != "ok"
                    or int(rep.get("master-port", 0)) != primary.port
                ):
                    return False, f"{s.name} has not yet seen replica {rep['port']} as one"
        return True, ""

    def _data_ready(self, node: Node) -> bool:
        try:
            with self.client(node, timeout=0.5) as c:
                return bool(c.ping()) and not c.info("persistence").get("loading", 0)
        except (redis.RedisError, OSError):
            return False

    def _wait(self, probe: Any, what: str, node: Node, timeout: float = Node.START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.is_running():
                raise RuntimeError(f"{node.name} exited\n{node.log_text()[-3000:]}")
            if probe():
                return
            time.sleep(0.02)
        raise RuntimeError(f"{what}: not within {timeout}s\n{node.log_text()[-3000:]}")

    def kill(self, node: Node) -> None:
        node.kill()

    def start_node(self, node: Node, *, wait: bool = True, replica_of: Node | None = None) -> None:
        """Start ``node`` again on its (possibly rewritten) config file; a data node is waited
        for until it answers. ``replica_of``: start it as that node's replica (what an operator
        does with a failed primary; the Sentinels would only demote it on their next 10 s
        ``INFO`` round)."""
        if replica_of is not None:
            kept = [
                line
                for line in node.conf_path.read_text().splitlines()
                if not line.startswith(("replicaof ", "slaveof "))
            ]
            kept.append(f"replicaof 127.0.0.1 {replica_of.port}")
            node.conf_path.write_text("\n".join(kept) + "\n")
        node.spawn()
        if wait and not node.sentinel:
            self._wait(lambda: self._data_ready(node), f"{node.name} ready", node)

    def wait_for_failover(self, old: Node, timeout: float = 30.0) -> Node:
        """Until the Sentinels name another primary than ``old`` and it accepts writes."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                new = self.primary()
            except RuntimeError as exc:
                new, last = old, str(exc)
            if new is not old:
                try:
                    with self.client(new) as c:
                        if c.info("replication").get("role") == "master":
                            return new
                except (redis.RedisError, OSError) as exc:
                    last = repr(exc)
            time.sleep(0.05)
        raise RuntimeError(f"no failover away from {old.name} within {timeout}s: {last}")

    def manual_failover(self) -> Node:
        """``SENTINEL FAILOVER``: the primary stays up and is demoted (no data lost)."""
        old = self.wait_healthy(promotable=True)
        live = next(s for s in self.sentinels if s.is_running())
        with self.sentinel_client(live) as c:
            c.execute_command("SENTINEL", "FAILOVER", SERVICE)
        return self.wait_for_failover(old)

    def everything(self) -> Iterator[Node]:
        yield from self.nodes
        yield from self.sentinels

    def logs(self, tail: int = 1500) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.log_text()[-tail:]}" for n in self.everything())

    def close(self) -> None:
        for node in self.everything():
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SentinelCluster {[repr(n) for n in self.everything()]}>"
