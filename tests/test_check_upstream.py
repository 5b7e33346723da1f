"""`--config.check --config.check.upstream` as a real process against the simulator over real
HTTP: every source read once (all shards), what each answered, exit 0 when each was read and 1
naming each source that was not and why; never a secret in its output."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from exporter.simulator.app import Credentials, Fault
from tests.conftest import SimHandle
from tests.helpers import free_port, source_yaml

WRONG_KEY = "wrong-kizen-key-0f9e8d7c6b5a"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


async def check(*args: str, config: Path | None = None, env: dict[str, str] | None = None) -> Run:
    """One run of the real command, awaited without blocking the loop (the simulator it reads
    is served by this loop). The test's own BULK_EXPORTER_* variables are left out."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("BULK_EXPORTER_")}
    files = ["--config.file", str(config)] if config is not None else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        *files,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**inherited, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def assert_no_secret(run: Run, *secrets: str) -> None:
    for secret in (*secrets, Credentials().kizen_api_key, Credentials().fp_api_key):
        assert secret not in run.text
        assert secret[:12] not in run.text


UPSTREAM = ("--config.check", "--config.check.upstream")


async def test_a_good_config_reads_every_source_of_every_shard_and_exits_0(
    sim: SimHandle, tmp_path: Path
) -> None:
    for status in ("in_progress", "completed", "completed", "failed"):
        sim.world.add_kizen_job(status=status)
    sim.world.add_kizen_job(status="queued", extra={"pending_count": "not-a-count-VALUE"})
    sim.world.add_fp_batch(status="in_progress")
    config = write(tmp_path, source_yaml(sim.kizen_url, sim.fp_url))
    # A shard that owns at most one of the two sources: the check reads both all the same.
    run = await check(*UPSTREAM, "--shard.count", "7", "--shard.index", "3", config=config)
    assert run.code == 0, run.text
    port = sim.server.port
    assert f"kz (kizen, 127.0.0.1:{port}): OK" in run.out
    assert f"fp (firstpromoter, 127.0.0.1:{port}): OK" in run.out
    assert "reachable: yes; API key accepted: yes" in run.out
    assert "completed -> completed: 2" in run.out
    assert "in_progress -> running: 1" in run.out
    assert "list: bad_field (pending_count): 1" in run.out
    assert "not-a-count-VALUE" not in run.text
    assert "pages: 1 (list: 1 of size 1000 asked, 5 rows served)" in run.out
    assert "requests: 1 (200: 1)" in run.out
    assert "upstream check: 2 of 2 sources read" in run.out
    assert sim.count("kizen", "list") == 1
    assert sim.count("firstpromoter") >= 2
    assert_no_secret(run)


async def test_a_refused_key_exits_1_naming_the_source_and_401(
    sim: SimHandle, tmp_path: Path
) -> None:
    text = source_yaml(sim.kizen_url, sim.fp_url).replace(Credentials().kizen_api_key, WRONG_KEY)
    run = await check(*UPSTREAM, config=write(tmp_path, text))
    assert run.code == 1, run.text
    assert "error: kz: the API key was refused (401)" in run.err
    assert "reachable: yes; API key accepted: no" in run.out
    assert f"fp (firstpromoter, 127.0.0.1:{sim.server.port}): OK" in run.out
    assert "upstream check: 1 of 2 sources read; failed: kz" in run.out
    assert_no_secret(run, WRONG_KEY)


async def test_an_unreachable_host_exits_1_naming_the_source_host_and_port(
    sim: SimHandle, tmp_path: Path
) -> None:
    closed = free_port()
    password = "userinfo-pass-5e6f7a"
    url = f"http://user:{password}@127.0.0.1:{closed}/kizen"
    run = await check(*UPSTREAM, config=write(tmp_path, source_yaml(url, sim.fp_url)))
    assert run.code == 1, run.text
    assert f"error: kz: cannot connect to 127.0.0.1:{closed}: " in run.err
    assert "reachable: no; API key accepted: not known (no answer)" in run.out
    assert_no_secret(run, password)


async def test_a_wrong_shaped_answer_exits_1_naming_the_source(
    sim: SimHandle, tmp_path: Path
) -> None:
    sim.sim.set_fault("kizen", Fault(status=200, body=b'{"results": "nope", "count": 3}'))
    run = await check(*UPSTREAM, config=write(tmp_path, source_yaml(sim.kizen_url, sim.fp_url)))
    assert run.code == 1, run.text
    assert "error: kz: the answer has the wrong shape (list): response is not a page object" in (
        run.err
    )
    assert "upstream check: 1 of 2 sources read; failed: kz" in run.out
    assert_no_secret(run)


async def test_the_demo_is_checked_against_its_simulator() -> None:
    run = await check("--demo", *UPSTREAM)
    assert run.code == 0, run.text
    assert "kizen-demo (kizen, 127.0.0.1:" in run.out
    assert "upstream check: 2 of 2 sources read" in run.out
    assert_no_secret(run)


async def test_the_upstream_check_without_the_config_check_is_a_flag_error(
    tmp_path: Path,
) -> None:
    config = write(tmp_path, "sources: []\n")
    by_flag = await check("--config.check.upstream", config=config)
    assert by_flag.code == 1
    assert "error: --config.check.upstream needs --config.check" in by_flag.err
    by_env = await check(config=config, env={"BULK_EXPORTER_CONFIG_CHECK_UPSTREAM": "true"})
    assert by_env.code == 1
    assert "error: BULK_EXPORTER_CONFIG_CHECK_UPSTREAM=true needs --config.check" in by_env.err
    both = await check(
        "--config.check", config=config, env={"BULK_EXPORTER_CONFIG_CHECK_UPSTREAM": "1"}
    )
    assert both.code == 0, both.text
    assert "upstream check: 0 of 0 sources read" in both.out
