"""The container image: built with podman (scripts/build-image.sh), then smoke-tested.

Selected with `-m image`, left out with `-m "not image"`. The first run on a machine builds a
Debian stand-in for the python base image (about 2 minutes); later ones rebuild the image only
(about 20 s, a few when nothing changed).
"""

from __future__ import annotations

import json
import os
import shlex
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.helpers import (
    DEMO_SOURCES,
    basic,
    free_port,
    make_certs,
    one,
    parse_samples,
    project_version,
    require_tool,
)
from tests.helpers import get_while_starting as get
from tests.helpers import wait_demo_up as wait_both_up

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "build-image.sh"
IMAGE = "bulk-progress-exporter:test"
STORAGE = "/var/lib/bulk-progress-exporter"
CONFIG = "/etc/bulk-progress-exporter/config.yaml"
NETWORK = "slirp4netns:port_handler=slirp4netns"


class Podman:
    """podman with the build script's private settings; removes what it started."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env,
        )

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, f"podman {shlex.join(args)}: {result}"
        return result.stdout.strip()

    def start(self, *args: str, port: int | None = None, container_port: int = 9840) -> str:
        """Start a container in the background; its name. `args`: options, the image, arguments."""
        name = f"bpe-test-{uuid.uuid4().hex[:10]}"
        self.containers.append(name)
        publish = ["-p", f"127.0.0.1:{port}:{container_port}"] if port else []
        self.ok("run", "-d", "--name", name, "--network", NETWORK, *publish, *args)
        return name

    def volume(self) -> str:
        name = f"bpe-test-{uuid.uuid4().hex[:10]}"
        self.volumes.append(name)
        self.ok("volume", "create", name)
        return name

    def cleanup(self) -> None:
        for name in self.containers:
            self("rm", "--force", "--volumes", "--time", "0", name)
        for name in self.volumes:
            self("volume", "rm", "--force", name)
        self.containers.clear()
        self.volumes.clear()


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    """Build the image once for the module; the environment to run podman with."""
    for tool in ("podman", "runc", "slirp4netns"):
        require_tool(tool)
    begin = time.monotonic()
    result = subprocess.run(
        [str(SCRIPT)], capture_output=True, text=True, timeout=1200, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    print(f"image built in {time.monotonic() - begin:.0f} s: {result.stderr.splitlines()[-1]}")
    exports = subprocess.run(
        [str(SCRIPT), "--env"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    env = dict(os.environ)
    for line in exports.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return env


@pytest.fixture
def podman(built: dict[str, str]) -> Iterator[Podman]:
    p = Podman(built)
    try:
        yield p
    finally:
        p.cleanup()


def healthcheck(podman: Podman, name: str) -> None:
    result = podman("healthcheck", "run", name)
    assert result.returncode == 0, result
    status = podman.ok("inspect", "--format", "{{.State.Health.Status}}", name)
    assert status == "healthy"


def stop_with_sigterm(podman: Podman, name: str) -> str:
    """Send SIGTERM, wait for the exit; the logs. The exit status must be 0."""
    podman.ok("kill", "--signal", "TERM", name)
    assert podman.ok("wait", name) == "0"
    logs = podman("logs", name)
    assert "Traceback" not in logs.stdout + logs.stderr
    return logs.stdout + logs.stderr


def test_image_metadata(podman: Podman) -> None:
    user = podman.ok("image", "inspect", "--format", "{{.Config.User}}", IMAGE)
    assert user == "10001:10001"
    health = podman.ok("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", IMAGE)
    assert health == '["CMD","python","-m","exporter.healthcheck"]'  # kept: --format docker
    volumes = podman.ok("image", "inspect", "--format", "{{json .Config.Volumes}}", IMAGE)
    assert STORAGE in volumes
    env = podman.ok("image", "inspect", "--format", "{{json .Config.Env}}", IMAGE)
    for variable in (
        f"BULK_EXPORTER_CONFIG_FILE={CONFIG}",
        f"BULK_EXPORTER_STORAGE_PATH={STORAGE}",
        "PYTHONDONTWRITEBYTECODE=1",
    ):
        assert variable in env
    assert podman.ok("image", "inspect", "--format", "{{json .Config.Cmd}}", IMAGE) in (
        "null",
        "[]",
    )
    # One version: pyproject's, on the label and in what the package inside says.
    labels = json.loads(podman.ok("image", "inspect", "--format", "{{json .Config.Labels}}", IMAGE))
    assert labels["org.opencontainers.image.version"] == project_version()
    result = podman("run", "--rm", "--network", "none", IMAGE, "--version")
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"bulk-progress-exporter {project_version()} (Python ")


def test_demo_as_uid_10001_healthy_and_sigterm(podman: Podman) -> None:
    port = free_port()
    name = podman.start(IMAGE, "--demo", port=port)
    wait_both_up(port)
    assert podman.ok("exec", name, "id", "-u") == "10001"
    assert podman.ok("exec", name, "id", "-g") == "10001"
    assert get(f"http://127.0.0.1:{port}/-/healthy") == (200, "OK\n")
    healthcheck(podman, name)
    logs = stop_with_sigterm(podman, name)
    assert "shutting down" in logs


def test_healthcheck_follows_a_changed_listen_address(podman: Podman) -> None:
    port = free_port()
    name = podman.start(
        IMAGE, "--demo", "--web.listen-address=:9999", port=port, container_port=9999
    )
    assert get(f"http://127.0.0.1:{port}/-/healthy") == (200, "OK\n")
    healthcheck(podman, name)
    # Its variable works as well. (An empty storage path keeps the state in memory.)
    port = free_port()
    name = podman.start(
        "-e",
        "BULK_EXPORTER_WEB_LISTEN_ADDRESS=:9998",
        "-e",
        "BULK_EXPORTER_STORAGE_PATH=",
        IMAGE,
        "--demo",
        port=port,
        container_port=9998,
    )
    wait_both_up(port)
    healthcheck(podman, name)
    assert podman.ok("exec", name, "ls", "-A", STORAGE) == ""


def test_healthcheck_with_tls_and_basic_auth(podman: Podman, tmp_path: Path) -> None:
    make_certs(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prom: '{hashed}'\n"
    )
    tmp_path.chmod(0o755)  # uid 10001 reads the mounted files
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    port = free_port()
    name = podman.start(
        "-v",
        f"{tmp_path}:/etc/bulk-progress-exporter/web:ro",
        IMAGE,
        "--demo",
        "--web.config.file=/etc/bulk-progress-exporter/web/web.yml",
        port=port,
    )
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    context.check_hostname = False  # the certificate is for localhost
    url = f"https://127.0.0.1:{port}/-/healthy"
    assert get(url, context=context)[0] == 401  # TLS on, basic auth on
    assert get(url, headers=basic("prom", "s3cret"), context=context) == (200, "OK\n")
    healthcheck(podman, name)  # https, and its 401 counts as alive
    result = podman("exec", name, "python", "-m", "exporter.healthcheck")
    assert result.stdout == "healthy: https://127.0.0.1:9840/-/healthy answered 401\n"
    stop_with_sigterm(podman, name)


def test_read_only_root_filesystem(podman: Podman) -> None:
    volume = podman.volume()
    port = free_port()
    # --read-only-tmpfs=false: no tmpfs on /tmp, /var/tmp or /run either, as with docker.
    name = podman.start(
        "--read-only",
        "--read-only-tmpfs=false",
        "-v",
        f"{volume}:{STORAGE}",
        IMAGE,
        "--demo",
        port=port,
    )
    text = wait_both_up(port)
    healthcheck(podman, name)
    assert podman("exec", name, "touch", "/tmp/probe").returncode != 0  # really read-only
    # The state of both sources is written to the volume, and no write failed.
    deadline = time.monotonic() + 30
    while not all(s in podman.ok("exec", name, "ls", STORAGE) for s in DEMO_SOURCES):
        assert time.monotonic() < deadline, podman.ok("exec", name, "ls", "-la", STORAGE)
        time.sleep(0.5)
    assert one(parse_samples(text), "bulk_state_write_failures_total") == 0
    logs = stop_with_sigterm(podman, name)
    assert "Read-only file system" not in logs


def test_config_found_at_the_default_path(podman: Podman, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "sources:\n"
        "  - name: image-check\n"
        "    platform: firstpromoter\n"
        "    account_id: acc-123\n"
        "    api_key: image-check-secret\n"
    )
    config.chmod(0o644)
    mount = ["-v", f"{config}:{CONFIG}:ro"]
    args = ["--log.format", "json", "--config.check"]
    result = podman("run", "--rm", "--network", "none", *mount, IMAGE, *args)
    assert result.returncode == 0, result
    assert f"{CONFIG}: OK" in result.stdout
    assert "image-check" in result.stdout
    assert "image-check-secret" not in result.stdout + result.stderr
    config.write_text("sources:\n  - name: Bad Name\n    platform: nowhere\n")
    result = podman("run", "--rm", "--network", "none", *mount, IMAGE, *args)
    assert result.returncode == 1, result
    assert CONFIG in result.stderr
    assert "Traceback" not in result.stderr
