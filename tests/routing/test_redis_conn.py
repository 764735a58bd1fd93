"""Redis URLs: parsing, refusals, redaction, and the client factory against real servers
(an ACL-protected Redis, a TLS Redis). Sentinel failover: tests/routing/test_sentinel.py."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.exceptions import AuthenticationError, ConnectionError

from admin.settings import Settings
from gateway.config import GatewayConfig
from routing.redis_conn import (
    RedisUrlError,
    SentinelRedis,
    connect,
    parse_redis_url,
    redact_url,
    scrub,
    url_secrets,
)
from routing.redis_store import RedisRouteStore
from routing.runtime_state import RedisRuntimeState
from tests.support.net import free_port
from tests.support.redis_server import RedisServer

SECRET = "s3cr3t-p4ss"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/2", ("redis", (("127.0.0.1", 6380),), 2, None, None)),
        ("redis://cache", ("redis", (("cache", 6379),), 0, None, None)),
        ("redis://u:p@[::1]:7000", ("redis", (("::1", 7000),), 0, None, "u")),
        ("rediss://:p@h:6390/1?ssl_cert_reqs=none", ("rediss", (("h", 6390),), 1, None, None)),
        ("unix:///run/redis.sock?db=4", ("unix", (), 4, None, None)),
        (
            "redis+sentinel://turnout:pw@s1:26379,s2,[::1]:5000/mymaster/3",
            (
                "redis+sentinel",
                (("s1", 26379), ("s2", 26379), ("::1", 5000)),
                3,
                "mymaster",
                "turnout",
            ),
        ),
        (
            "rediss+sentinel://s1:1/main?sentinel_password=x&ssl_ca_certs=/ca.pem",
            ("rediss+sentinel", (("s1", 1),), 0, "main", None),
        ),
    ],
)
def test_accepted_urls(url: str, expected: tuple[Any, ...]) -> None:
    u = parse_redis_url(url)
    assert (u.scheme, u.hosts, u.db, u.service, u.username) == expected
    assert u.tls == url.startswith("rediss")
    assert u.sentinel == ("+sentinel" in url)


def test_credentials_are_percent_decoded_and_may_hold_url_characters() -> None:
    u = parse_redis_url("redis://app%40team:p%3Aw%2Fd@h:1/0")
    assert (u.username, u.password) == ("app@team", "p:w/d")
    # A password nobody percent-encoded: everything up to the last "@" is credentials.
    raw = parse_redis_url(f"redis://:{SECRET}/x?y,z#@h:1/0")
    assert raw.password == f"{SECRET}/x?y,z#"
    assert raw.hosts == (("h", 1),)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "not a Redis URL"),
        ("localhost:6379", "not a Redis URL"),
        (f"http://:{SECRET}@h", "unknown scheme 'http'"),
        (f"redis://:{SECRET}@h:0", "port must be 1..65535"),
        (f"redis://:{SECRET}@h:99999", "port must be 1..65535"),
        (f"redis://:{SECRET}@h:abc", "port must be 1..65535"),
        (f"redis://:{SECRET}@", "empty host"),
        (f"redis://:{SECRET}@::1:7000", "IPv6 addresses in brackets"),
        (f"redis://:{SECRET}@[::1", "bad IPv6 address"),
        (f"redis://:{SECRET}@a,b", "takes one host"),
        (f"redis://:{SECRET}@h/x", "database number must be a non-negative integer"),
        (f"redis://:{SECRET}@h/1/2", "only the database number"),
        (f"redis://:{SECRET}@h?foo=1", "unknown option 'foo'"),
        (f"redis://:{SECRET}@h#frag", "no #fragment"),
        (f"redis://:{SECRET}@h?ssl_ca_certs=/ca", "needs a TLS scheme"),
        (f"redis://:{SECRET}@h?sentinel_password=x", "needs a Sentinel URL"),
        (f"rediss://:{SECRET}@h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        (f"rediss://:{SECRET}@h?ssl_check_hostname=perhaps", "must be true or false"),
        (f"redis+sentinel://:{SECRET}@s1", "names the monitored service"),
        (f"redis+sentinel://:{SECRET}@s1/", "names the monitored service"),
        (f"redis+sentinel://:{SECRET}@s1,/m", "sentinel 2: empty host"),
        (f"redis+sentinel://:{SECRET}@s1:x/m", "sentinel 1: port must be"),
        (f"redis+sentinel://:{SECRET}@s1/m/x", "database number must be"),
        (f"redis+sentinel://:{SECRET}@s1/m/1/2", "only a database number may follow"),
        (f"unix://:{SECRET}@relative.sock", "absolute socket path"),
        (f"unix://:{SECRET}@/r.sock?db=x", "database number must be"),
    ],
)
def test_bad_urls_are_refused_naming_the_part_never_the_password(url: str, match: str) -> None:
    with pytest.raises(RedisUrlError, match=match) as info:
        parse_redis_url(url)
    assert SECRET not in str(info.value)
    assert SECRET not in redact_url(url)


def test_redaction_hides_every_password() -> None:
    url = (
        f"rediss+sentinel://turnout:{SECRET}@s1:26379,s2:26380/mymaster/2"
        f"?sentinel_password=sp-{SECRET}&ssl_password=kp-{SECRET}&client_name=gw"
    )
    u = parse_redis_url(url)
    shown = [redact_url(url), str(u), repr(u), u.redacted()]
    for text in shown:
        assert SECRET not in text, text
    assert redact_url(url) == (
        "rediss+sentinel://turnout:***@s1:26379,s2:26380/mymaster/2"
        "?sentinel_password=***&ssl_password=***&client_name=gw"
    )
    found = url_secrets(url)
    assert sorted(found) == sorted([f"sp-{SECRET}", f"kp-{SECRET}", SECRET])
    assert found[-1] == SECRET  # longest first: a secret inside another is replaced after it
    assert url_secrets(None) == [] and url_secrets("nonsense") == []
    assert scrub(f"auth {SECRET} and sp-{SECRET}", url_secrets(url)) == "auth *** and ***"
    # Unparseable input is never echoed (it may be a password pasted in the wrong place).
    assert redact_url(f"redis://:{SECRET}@h:port") == "redis://<unparseable URL>"
    assert redact_url(SECRET) == "<unparseable URL>"


def test_settings_and_gateway_config_refuse_bad_urls_and_hide_good_ones() -> None:
    with pytest.raises(SystemExit, match="TURNOUT_REDIS_URL / --redis: unknown scheme") as info:
        Settings.from_env({"TURNOUT_REDIS_URL": f"http://:{SECRET}@h"})
    assert SECRET not in str(info.value.code)
    with pytest.raises(ValueError, match=r"--redis / TURNOUT_REDIS_URL: .*names the monitored"):
        GatewayConfig(redis_url=f"redis+sentinel://:{SECRET}@s1")
    good = f"redis+sentinel://turnout:{SECRET}@s1/mymaster"
    settings = Settings.from_env(
        {"TURNOUT_REDIS_URL": good, "TURNOUT_DB": f"postgresql://u:{SECRET}@db/x"}
    )
    assert settings.redis_url == good
    assert SECRET not in repr(settings)
    assert SECRET not in repr(GatewayConfig(redis_url=good))


# ---------------------------------------------------------------------- real servers


@pytest.fixture
def acl_redis(own_redis: RedisServer) -> Iterator[RedisServer]:
    """``own_redis`` with an ACL user ``app`` (password SECRET) and the default user off."""
    with redis.Redis.from_url(own_redis.url) as admin:
        admin.execute_command("ACL", "SETUSER", "app", "on", f">{SECRET}", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
    yield own_redis


async def test_acl_user_and_password_pass_through(acl_redis: RedisServer) -> None:
    url = f"redis://app:{SECRET}@127.0.0.1:{acl_redis.port}/3?client_name=turnout-test"
    client = connect(url)
    try:
        assert await client.set("k", b"v")
        assert await client.get("k") == b"v"
        assert await client.client_getname() in ("turnout-test", b"turnout-test")
        assert SECRET not in repr(client)
    finally:
        await client.aclose()
    wrong = connect(f"redis://app:nope@127.0.0.1:{acl_redis.port}/3")
    try:
        with pytest.raises(AuthenticationError):
            await wrong.ping()
    finally:
        await wrong.aclose()
    store = RedisRouteStore(url)
    runtime = RedisRuntimeState(url)
    try:
        assert await store.get_epoch() is None
        assert await runtime.acquire_lease("{turnout}:leader:t", "me", 1000)
        for text in (repr(store), repr(runtime), store.url):
            assert SECRET not in text
        assert store.url == f"redis://app:***@127.0.0.1:{acl_redis.port}/3?client_name=turnout-test"
    finally:
        await runtime.close()
        await store.close()


def _tls_files(tmp: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1, written as PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("turnout test CA"))
        .issuer_name(name("turnout test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": tmp / "ca.pem", "cert": tmp / "server.pem", "key": tmp / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    """A redis-server speaking only TLS on a free loopback port (no client certificates)."""
    executable = shutil.which("redis-server")
    assert executable, "redis-server not found"
    files = _tls_files(tmp_path)
    port = free_port()
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen(
        [
            executable,
            "--port", "0",
            "--tls-port", str(port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(files["cert"]),
            "--tls-key-file", str(files["key"]),
            "--tls-ca-cert-file", str(files["ca"]),
            "--tls-auth-clients", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(tmp_path),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port, ssl=True, ssl_cert_reqs="none") as probe:
                    probe.ping()
                break
            except redis.RedisError:
                assert proc.poll() is None, (tmp_path / "redis.log").read_text()
                assert time.monotonic() < deadline, "TLS redis-server did not come up"
                time.sleep(0.05)
        yield port, files
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


async def test_tls_options_pass_through(tls_redis: tuple[int, dict[str, Path]]) -> None:
    port, files = tls_redis
    trusted = connect(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={files['ca']}")
    unverified = connect(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none")
    untrusted = connect(f"rediss://127.0.0.1:{port}/0")  # the system CAs do not know ours
    plain = connect(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5, socket_timeout=0.5)
    try:
        assert await trusted.ping()
        assert await unverified.ping()
        with pytest.raises(ConnectionError, match=r"(?i)certificate"):
            await untrusted.ping()
        with pytest.raises((ConnectionError, redis.TimeoutError)):
            await plain.ping()  # plain text to a TLS port gets no answer
    finally:
        for client in (trusted, unverified, untrusted, plain):
            await client.aclose()


async def test_sentinel_client_closes_its_sentinel_connections() -> None:
    client = connect(f"redis+sentinel://127.0.0.1:{free_port()}/mymaster", connect_timeout=0.2)
    assert isinstance(client, SentinelRedis)
    manager = client.sentinel_manager
    assert manager is not None
    with pytest.raises(ConnectionError):  # no Sentinel there: "no master found"
        await client.ping()
    await client.aclose()
    assert client.sentinel_manager is None
