"""`python -m exporter.healthcheck`: the real command against the real exporter process."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from exporter import healthcheck
from tests.helpers import Process, free_port, make_certs, run_exporter


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_exporter(list(args), env, module="exporter.healthcheck")


def assert_unhealthy(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.startswith("unhealthy: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for p in processes:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.communicate()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("sources: []\n")
    return path


def start(started: list[Process], *args: str) -> Process:
    p = Process(list(args), free_port())
    started.append(p)
    p.wait_listening()
    return p


def test_plain_http_on_a_changed_port(started: list[Process], config: Path) -> None:
    p = start(started, "--config.file", str(config))
    # A wildcard address is checked on the loopback; the flag and its variable both work.
    result = run("--web.listen-address", f":{p.port}")
    assert result.returncode == 0, result
    assert result.stdout == f"healthy: http://127.0.0.1:{p.port}/-/healthy answered 200\n"
    assert run(env={"BULK_EXPORTER_WEB_LISTEN_ADDRESS": f"127.0.0.1:{p.port}"}).returncode == 0
    assert run("--web.listen-address", f"[::]:{p.port}").returncode == 0  # ::1, then 127.0.0.1
    # The exporter's other flags are accepted and ignored.
    result = run("--web.listen-address", f"localhost:{p.port}", "--demo", "--log.format", "json")
    assert result.returncode == 0, result


def test_tls_follows_the_web_config(started: list[Process], tmp_path: Path, config: Path) -> None:
    make_certs(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    p = start(started, "--config.file", str(config), "--web.config.file", str(web))
    address = f"127.0.0.1:{p.port}"
    # The certificate (for "localhost", from a private CA) is not verified.
    result = run("--web.listen-address", address, "--web.config.file", str(web))
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"healthy: https://127.0.0.1:{p.port}/-/healthy answered 200")
    # Plain HTTP gets no HTTP answer from a TLS server: the web config is what decides.
    assert "127.0.0.1" in assert_unhealthy(run("--web.listen-address", address))


def test_client_certificates_required(started: list[Process], tmp_path: Path, config: Path) -> None:
    make_certs(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    )
    p = start(started, "--config.file", str(config), "--web.config.file", str(web))
    result = run("--web.listen-address", f"127.0.0.1:{p.port}", "--web.config.file", str(web))
    assert result.returncode == 0, result
    assert "TLS answered" in result.stdout
    p.stop()
    # The same configuration with nothing listening is not alive.
    result = run("--web.listen-address", f"127.0.0.1:{p.port}", "--web.config.file", str(web))
    assert "connection refused" in assert_unhealthy(result)


def test_basic_auth_401_counts_as_alive(
    started: list[Process], tmp_path: Path, config: Path
) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    p = start(started, "--config.file", str(config), "--web.config.file", str(web))
    result = run(
        env={
            "BULK_EXPORTER_WEB_LISTEN_ADDRESS": f":{p.port}",
            "BULK_EXPORTER_WEB_CONFIG_FILE": str(web),
        }
    )
    assert result.returncode == 0, result
    assert result.stdout == f"healthy: http://127.0.0.1:{p.port}/-/healthy answered 401\n"


def test_nothing_listening() -> None:
    port = free_port()
    stderr = assert_unhealthy(run("--web.listen-address", f":{port}"))
    assert f"http://127.0.0.1:{port}/-/healthy: connection refused" in stderr
    assert f"[::1]:{port}" in stderr  # the wildcard's other loopback was tried too


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) but never reads
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        begin = time.monotonic()
        stderr = assert_unhealthy(run("--web.listen-address", f"127.0.0.1:{port}"))
        assert time.monotonic() - begin < 20
    assert f"no answer within {healthcheck.TIMEOUT:g} s" in stderr


def test_bad_flags_and_web_config(tmp_path: Path) -> None:
    assert "needs a port" in assert_unhealthy(run("--web.listen-address", "localhost"))
    missing = tmp_path / "missing.yml"
    stderr = assert_unhealthy(run("--web.config.file", str(missing)))
    assert "cannot read the web configuration" in stderr


def write_cmdline(proc: Path, *argv: str, pid: int = 1) -> Path:
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    return proc


def test_exporter_arguments_of_process_1(tmp_path: Path) -> None:
    cases: list[tuple[tuple[str, ...], list[str] | None]] = [
        (("/usr/local/bin/python", "/usr/local/bin/bulk-progress-exporter", "--demo"), ["--demo"]),
        (("bulk-progress-exporter",), []),
        (
            ("/sbin/docker-init", "--", "bulk-progress-exporter", "--web.listen-address=:1"),
            ["--web.listen-address=:1"],
        ),
        (("python3", "-m", "exporter", "--log.level", "debug"), ["--log.level", "debug"]),
        (("python3", "-m", "exporter.healthcheck"), None),
        (("/sbin/init", "splash"), None),
    ]
    for i, (argv, expected) in enumerate(cases):
        proc = write_cmdline(tmp_path / str(i), *argv)
        assert healthcheck.exporter_arguments(1, proc) == expected, argv
    assert healthcheck.exporter_arguments(1, tmp_path / "nothing") is None


def test_no_arguments_follow_the_exporter_of_process_1(
    started: list[Process],
    tmp_path: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")
    p = start(started, "--config.file", str(config), "--web.config.file", str(web))
    proc = write_cmdline(
        tmp_path / "proc",
        "bulk-progress-exporter",
        f"--web.listen-address=127.0.0.1:{p.port}",
        "--web.config.file",
        str(web),
        "--some.future-flag",  # a flag this version does not know is no reason to fail
    )
    assert healthcheck.main([], env={}, proc=proc) == 0
    assert capsys.readouterr().out.endswith(f":{p.port}/-/healthy answered 401\n")
    # Arguments given to the check win over those of process 1.
    port = free_port()
    assert healthcheck.main([f"--web.listen-address=127.0.0.1:{port}"], env={}, proc=proc) == 1
    assert "connection refused" in capsys.readouterr().err
