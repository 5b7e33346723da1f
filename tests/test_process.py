"""The real command: demo mode, signals, TLS and basic auth, the web config file."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from tests.helpers import (
    Process,
    basic,
    eventually,
    free_port,
    make_certs,
    one,
    parse_samples,
    require_tool,
    run_exporter,
    select,
)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.communicate()


async def test_demo_mode_serves_both_platforms(processes: list[Process]) -> None:
    p = Process(["--demo"], free_port())
    processes.append(p)
    p.wait_listening()
    base = f"http://127.0.0.1:{p.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as r:
            s = parse_samples(await r.text())
        assert one(s, "bulk_up", source="kizen-demo") == 1
        assert one(s, "bulk_up", source="firstpromoter-demo") == 1
        assert select(s, "bulk_job_info", platform="kizen")
        assert select(s, "bulk_job_info", platform="firstpromoter")
        async with http.get(f"{base}/-/ready") as r:
            assert r.status == 200
        async with http.post(f"{base}/-/reload") as r:
            assert r.status == 200
    code, out, err = p.stop()
    assert code == 0, err
    assert f"open http://127.0.0.1:{p.port}/" in out
    assert "msg=listening" in err
    assert 'msg="shutting down"' in err


async def test_sighup_reloads_and_refuses_bad_config(
    processes: list[Process], tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sources: []\n")
    p = Process(["--config.file", str(config), "--log.format", "json"], free_port())
    processes.append(p)
    p.wait_listening()
    url = f"http://127.0.0.1:{p.port}/metrics"

    async def reload_state() -> float:
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            return one(parse_samples(await r.text()), "bulk_config_last_reload_successful")

    async def reload_refused() -> bool:
        return await reload_state() == 0

    assert await reload_state() == 1
    config.write_text("sources: [{name: x}]\n")
    p.proc.send_signal(signal.SIGHUP)
    # The reload runs after the signal, asynchronously.
    await eventually(lambda: reload_refused(), "bulk_config_last_reload_successful 0 after SIGHUP")
    code, _, err = p.stop()
    assert code == 0
    assert '"msg": "configuration reload refused; keeping the old one"' in err


async def test_sighup_rereads_the_source_files(processes: list[Process], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("source_files: [sources.d/*.yaml]\n")
    (tmp_path / "sources.d").mkdir()
    p = Process(["--config.file", str(config), "--log.format", "json"], free_port())
    processes.append(p)
    p.wait_listening()
    url = f"http://127.0.0.1:{p.port}/metrics"

    async def sources() -> set[str]:
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            found = select(parse_samples(await r.text()), "bulk_up")
        return {dict(labels)["source"] for labels in found}

    async def has_sources(expected: set[str]) -> bool:
        return await sources() == expected

    assert await sources() == set()
    (tmp_path / "sources.d" / "team.yaml").write_text(
        "- {name: added, platform: firstpromoter, base_url: 'http://127.0.0.1:9/f',"
        " account_id: a, api_key: added-key-1234}\n"
    )
    p.proc.send_signal(signal.SIGHUP)
    # The reload runs after the signal, asynchronously.
    await eventually(lambda: has_sources({"added"}), "the source file's source served after SIGHUP")
    code, _, err = p.stop()
    assert code == 0
    # At start-up the pattern matched nothing: a warning, not a refusal.
    assert "source_files[0]: 'sources.d/*.yaml' matches no file" in err
    assert '"msg": "configuration reloaded"' in err


def tls_web_config(tmp_path: Path) -> Path:
    """Server and client certificates in tmp_path, and a web config requiring both a client
    certificate and basic auth (user prom, password s3cret)."""
    make_certs(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        f"basic_auth_users:\n  prom: '{hashed}'\n"
    )
    return web


@pytest.mark.tools
def test_the_tls_web_config_passes_promtool(tmp_path: Path) -> None:
    """The file the exporter accepts is one the Prometheus tooling accepts too."""
    promtool = require_tool("promtool")
    web = tls_web_config(tmp_path)
    check = subprocess.run(
        [promtool, "check", "web-config", str(web)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_tls_client_certs_and_basic_auth(processes: list[Process], tmp_path: Path) -> None:
    web = tls_web_config(tmp_path)
    certs = {name: tmp_path / name for name in ("ca.crt", "client.crt", "client.key")}
    config = tmp_path / "config.yaml"
    config.write_text("sources: []\n")
    p = Process(["--config.file", str(config), "--web.config.file", str(web)], free_port())
    processes.append(p)
    p.wait_listening()
    url = f"https://localhost:{p.port}"
    with_client = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    with_client.load_cert_chain(certs["client.crt"], certs["client.key"])
    without_client = ssl.create_default_context(cafile=str(certs["ca.crt"]))
    auth = basic("prom", "s3cret")

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/metrics", ssl=with_client, headers=auth) as r:
            assert r.status == 200
            assert "bulk_build_info" in await r.text()
        for bad in (
            basic("prom", "wrong"),
            basic("nobody", "s3cret"),
            None,
        ):
            async with http.get(f"{url}/-/healthy", ssl=with_client, headers=bad) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Basic ")
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"{url}/-/healthy", ssl=without_client, headers=auth) as r:
                await r.read()
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{p.port}/-/healthy", headers=auth) as r:
                await r.read()
    assert p.stop()[0] == 0


def test_bad_web_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sources: []\n")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prom: plaintext\ntls_server_config:\n  cert_file: x\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.config.file",
            str(web),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "basic_auth_users.prom: not a bcrypt hash" in result.stderr
    assert "cert_file and key_file go together" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--demo", "--config.check"], {}),
        ([], {"BULK_EXPORTER_DEMO": "true", "BULK_EXPORTER_CONFIG_CHECK": "1"}),
    ],
)
def test_demo_config_check_checks_the_demo_configuration(
    args: list[str], env: dict[str, str]
) -> None:
    result = run_exporter(args, env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    # The same OK line as for a file, naming the demo's configuration, then one summary.
    assert lines[0] == "<demo>: OK"
    assert lines.count("defaults:") == 1
    assert "  - name: kizen-demo" in lines
    assert "  - name: firstpromoter-demo" in lines
    assert lines.count("    api_key: <secret> (inline)") == 2
    assert "open http" not in result.stdout  # checked, not served
