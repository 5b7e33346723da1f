"""Shared test helpers: parsing exposition text, scraping, seeding the simulator, upstream rows,
configurations, waiting for events, tool lookup, and the real command in a process."""

from __future__ import annotations

import asyncio
import base64
import datetime
import inspect
import io
import logging
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, overload

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Config, parse_config
from exporter.logs import JsonFormatter, LogfmtFormatter
from exporter.simulator import Credentials
from exporter.simulator.world import World

ROOT = Path(__file__).resolve().parent.parent
Client = TestClient[web.Request, web.Application]
Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def select(samples: Samples, name: str, **labels: str) -> dict[Labels, float]:
    """Samples of `name` whose labels include `labels`."""
    return {
        key: value
        for (sample_name, key), value in samples.items()
        if sample_name == name and all(dict(key).get(k) == v for k, v in labels.items())
    }


def one(samples: Samples, name: str, **labels: str) -> float:
    found = select(samples, name, **labels)
    assert len(found) == 1, f"expected one {name}{labels}, found {found}"
    return next(iter(found.values()))


def source_yaml(
    kizen_url: str | None,
    fp_url: str | None,
    creds: Credentials | None = None,
    defaults: str = "",
    kizen_extra: str = "",
    fp_extra: str = "",
) -> str:
    c = creds or Credentials()
    parts = ["defaults:\n  timeout: 5s\n" + defaults, "sources:"]
    if kizen_url:
        parts.append(
            f"""  - name: kz
    platform: kizen
    base_url: {kizen_url}
    business_id: {c.kizen_business_id}
    user_id: {c.kizen_user_id}
    api_key: {c.kizen_api_key}
{kizen_extra}"""
        )
    if fp_url:
        parts.append(
            f"""  - name: fp
    platform: firstpromoter
    base_url: {fp_url}
    account_id: {c.fp_account_id}
    api_key: {c.fp_api_key}
{fp_extra}"""
        )
    return "\n".join(parts)


def config_from(text: str, env: Mapping[str, str] | None = None) -> Config:
    return parse_config(text, filename="test.yaml", env=env or {})


REPO = Path(__file__).resolve().parent.parent


def project_version() -> str:
    """pyproject.toml's version: the only one written by hand, which every other must equal."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def find_tool(name: str) -> str | None:
    """The path of an external tool, None when it is missing; a failure in CI, where `make
    test` has installed every tool."""
    # Tools installed with the dev extras live beside the interpreter, maybe not on PATH.
    path = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if path is None and os.environ.get("CI"):
        pytest.fail(f"{name} is not installed (make test installs it)")
    return path


def require_tool(name: str) -> str:
    """The path of an external tool the test cannot do without; a skip locally when missing,
    a failure in CI."""
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it)")
    return path


@contextmanager
def capture_logs() -> Iterator[io.StringIO]:
    """Everything logged meanwhile, at debug level, formatted both as logfmt and as JSON."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers = [logging.StreamHandler(stream), logging.StreamHandler(stream)]
    handlers[0].setFormatter(LogfmtFormatter())
    handlers[1].setFormatter(JsonFormatter())
    level = root.level
    root.setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield stream
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


async def promtool_check_metrics(text: str) -> str:
    """Run `promtool check metrics` on exposition text; fail on any finding. Returns its output.

    For tests whose subject is something else, this is an extra check: without promtool (a
    machine that ran only `make check`) it is left out and the test goes on; `make test`
    installs promtool, and in CI a missing one fails."""
    promtool = find_tool("promtool")
    if promtool is None:
        return ""
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def add_kizen_history(world: World, n: int) -> None:
    """`n` Kizen jobs that completed over two hours ago (history at any baseline, past the
    default retention), appended at the end of the list as old jobs are."""
    now = time.time()
    for i in range(n):
        world.add_kizen_job(
            status="completed",
            pending=0,
            success=5,
            started_at=now - 9000 + i,
            completed_at=now - 8000 + i,
            at_end=True,
        )


# --- scraping ---------------------------------------------------------------------------------


async def scrape_text(
    client: Client, path: str = "/metrics", headers: Mapping[str, str] | None = None
) -> str:
    """The text of a 200 answer to GET `path`."""
    response = await client.get(path, headers=dict(headers or {}))
    assert response.status == 200, await response.text()
    return await response.text()


async def scrape(
    client: Client, path: str = "/metrics", headers: Mapping[str, str] | None = None
) -> Samples:
    """The samples of a 200 answer to GET `path`."""
    return parse_samples(await scrape_text(client, path, headers))


async def scrape_with_text(
    client: Client, path: str = "/metrics", headers: Mapping[str, str] | None = None
) -> tuple[str, Samples]:
    text = await scrape_text(client, path, headers)
    return text, parse_samples(text)


# --- seeding the simulator and building upstream rows -----------------------------------------


def seed(world: World) -> None:
    """One running job on each platform: a Kizen job with 10 items pending, started a minute
    ago, and a FirstPromoter batch with 2 of 10 items processed."""
    world.add_kizen_job(status="in_progress", pending=10, started_at=time.time() - 60)
    world.add_fp_batch(status="in_progress", selected_total=10, processed=2)


def kizen_row(
    job_id: str = "2f1e0c4a-0000-4000-8000-000000000001", **fields: Any
) -> dict[str, Any]:
    """A Kizen list row as the API sends it: a running upload of 100 items (30 pending, 60
    succeeded, 10 failed); `fields` replace or add keys."""
    row: dict[str, Any] = {
        "id": job_id,
        "action": "custom_object_upload",
        "status": "in_progress",
        "started_at": "2026-11-22T10:00:00.123456Z",
        "completed_at": None,
        "custom_object": {"id": "x", "object_name": "Contacts", "entity_name": "client"},
        "pending_count": 30,
        "success_count": 60,
        "failed_count": 10,
        "send_email_notification": False,
    }
    row.update(fields)
    return row


def kizen_page(rows: list[Any], count: int | None = None) -> dict[str, Any]:
    """A whole Kizen list answer holding `rows` (no next page)."""
    return {
        "count": len(rows) if count is None else count,
        "next": None,
        "previous": None,
        "results": rows,
    }


def fp_row(batch_id: int = 31, **fields: Any) -> dict[str, Any]:
    """A FirstPromoter batch process as the API sends it: running, 80 selected, 20 processed,
    4 failed; `fields` replace or add keys."""
    row: dict[str, Any] = {
        "id": batch_id,
        "status": "in_progress",
        "total": 100,
        "selected_total": 80,
        "processed_count": 20,
        "failed_count": 4,
        "action_label": "referral/delete",
        "created_at": "2026-11-22T10:00:00.000Z",
        "updated_at": "2026-11-22T10:05:00.500Z",
        "meta": None,
        "progress": 30,
        "processing_errors": [],
    }
    row.update(fields)
    return row


# --- waiting for events -----------------------------------------------------------------------

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    *,
    within: float = ...,
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None], what: str, *, within: float = ..., interval: float = ...
) -> T: ...


async def eventually(
    check: Callable[[], object], what: str, *, within: float = 30, interval: float = 0.02
) -> object:
    """The first truthy result of `check` (a function or a coroutine function), tried until
    `within` seconds have passed; then the test fails saying what did not happen. The bound
    is for a loaded machine, not an expectation."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > end:
            pytest.fail(f"{what}: not within {within} s")
        await asyncio.sleep(interval)


async def until_loop_time(when: float) -> None:
    """Return once the event loop's clock has passed `when`: a loop timer armed for `when` or
    earlier (a deadline under test) has run by then, however busy the machine."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_at(when, done.set_result, None)
    await done
    await asyncio.sleep(0)  # callbacks due at the same moment run first


# --- processes --------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all held at once while picking, so none is handed out twice)."""
    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


class Process:
    """The real command, serving on a port of loopback until stopped."""

    def __init__(self, args: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{port}", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def wait_listening(self, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited early: {self.proc.communicate()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("exporter did not start listening")

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=15)
        return self.proc.returncode, out, err


def run_exporter(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    module: str = "exporter",
    *,
    prefix: Sequence[str] = (),
    timeout: float = 60,
    memory_limit: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """One run of the real command (or another of the package's modules) to its end, for
    runs that must stop at start-up, from the repository's root. The test's own
    BULK_EXPORTER_* variables are left out, so that only `env` sets any. `prefix` runs it under
    another command (`unshare ...`); `memory_limit` bounds its address space in bytes."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("BULK_EXPORTER_")}

    def limit_memory() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    return subprocess.run(
        [*prefix, sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env={**inherited, **(env or {})},
        preexec_fn=limit_memory if memory_limit is not None else None,
    )


def make_certs(tmp: Path) -> dict[str, Path]:
    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str,
        public: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key, client_key = key(), key(), key()
    ca = cert("test-ca", ca_key, "test-ca", ca_key, True)
    files = {}
    for name, obj in (
        ("ca", ca),
        ("server", cert("localhost", server_key, "test-ca", ca_key, False)),
        ("client", cert("scraper", client_key, "test-ca", ca_key, False)),
    ):
        files[f"{name}.crt"] = obj.public_bytes(serialization.Encoding.PEM)
    for name, k in (("server", server_key), ("client", client_key)):
        files[f"{name}.key"] = k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    paths = {}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        paths[name] = tmp / name
    return paths


def serving_hooks(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """What the serving command hands its service (`cli.main(["--demo"])`), the service itself
    replaced by one that only keeps its arguments."""
    from exporter import cli

    given: dict[str, object] = {}

    class Service:
        def __init__(self, **kwargs: object) -> None:
            given.update(kwargs)

        async def run(self) -> None:
            pass

    monkeypatch.setattr(cli, "Service", Service)
    assert cli.main(["--demo"], env={}) == 0
    return given


# The demo's two sources (`--demo`).
DEMO_SOURCES = ("kizen-demo", "firstpromoter-demo")


def get_while_starting(
    url: str,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = 60,
) -> tuple[int, str]:
    """Status and body, retrying while the server (a process, a container) is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def wait_demo_up(port: int, timeout: float = 60) -> str:
    """The first /metrics with bulk_up 1 for both demo sources; the first refresh takes a moment."""
    deadline = time.monotonic() + timeout
    while True:
        status, text = get_while_starting(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        samples = parse_samples(text)
        up = [one(samples, "bulk_up", source=source) for source in DEMO_SOURCES]
        if up == [1, 1]:
            return text
        assert time.monotonic() < deadline, f"bulk_up is {up}"
        time.sleep(0.5)
