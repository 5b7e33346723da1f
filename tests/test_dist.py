"""`make dist`: what a user installs, built into a directory and checked as a user gets it.

The sdist and the wheel (`python -m build`, the wheel built from the sdist, so from the files a
fresh clone has that the sdist takes), their metadata as a package index reads it (`twine check
--strict`), the wheel holding the package alone, the Helm chart's package (`helm package`), and
the wheel installed alone in a clean venv, where `--version` and `--demo` run. Selected with
`-m dist`; it needs helm (scripts/install-helm.sh, which `make dist` runs) and a package index
for the wheel's dependencies.
"""

from __future__ import annotations

import email.parser
import os
import signal
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    DEMO_SOURCES,
    REPO,
    free_port,
    one,
    parse_samples,
    project_version,
    require_tool,
    wait_demo_up,
)

pytestmark = pytest.mark.dist

VERSION = project_version()
SDIST = f"bulk_progress_exporter-{VERSION}.tar.gz"
WHEEL = f"bulk_progress_exporter-{VERSION}-py3-none-any.whl"
CHART = f"bulk-progress-exporter-{VERSION}.tgz"
DIST_INFO = f"bulk_progress_exporter-{VERSION}.dist-info/"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist` into a directory of this module's own; that directory."""
    require_tool("make")
    out = tmp_path_factory.mktemp("make-dist") / "dist"
    result = subprocess.run(
        ["make", "dist", f"DIST={out}"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out


def test_dist_holds_the_sdist_the_wheel_and_the_chart(dist: Path) -> None:
    assert sorted(p.name for p in dist.iterdir()) == sorted([SDIST, WHEEL, CHART])


def test_twine_check_strict_is_clean(dist: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist / SDIST), str(dist / WHEEL)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_the_wheel_metadata_is_what_an_index_shows(dist: Path) -> None:
    with zipfile.ZipFile(dist / WHEEL) as wheel:
        raw = wheel.read(DIST_INFO + "METADATA").decode()
    metadata = email.parser.Parser().parsestr(raw)
    assert metadata["Name"] == "bulk-progress-exporter"
    assert metadata["Version"] == VERSION
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Description-Content-Type"] == "text/markdown"
    # The README is the long description, whole.
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert description.strip() == (REPO / "README.md").read_text().strip()
    assert {"prometheus", "exporter", "kizen", "firstpromoter"} <= set(
        metadata["Keywords"].split(",")
    )
    classifiers = metadata.get_all("Classifier") or []
    assert "Topic :: System :: Monitoring" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers


def test_the_wheel_holds_the_package_only(dist: Path) -> None:
    with zipfile.ZipFile(dist / WHEEL) as wheel:
        names = wheel.namelist()
    outside = [n for n in names if not n.startswith(("exporter/", DIST_INFO))]
    assert outside == []
    # What --demo and the simulator need is there; the sources' tests and benchmarks are not.
    assert {"exporter/cli.py", "exporter/simulator/app.py", "exporter/platforms/kizen.py"} <= set(
        names
    )
    assert not [n for n in names if "tests/" in n or "benchmarks/" in n or n.endswith(".pyc")]
    tracked = subprocess.run(
        ["git", "ls-files", "exporter"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    # Every module of the package, none left behind.
    assert {n for n in names if n.startswith("exporter/")} == {
        t for t in tracked if t.endswith(".py")
    }


def test_the_sdist_holds_what_builds_the_package_and_no_partial_suite(dist: Path) -> None:
    with tarfile.open(dist / SDIST) as sdist:
        names = sdist.getnames()
    top = f"bulk_progress_exporter-{VERSION}/"
    assert {top + "pyproject.toml", top + "README.md", top + "LICENSE"} <= set(names)
    # setuptools adds tests/test*.py by itself, without the helpers they import (MANIFEST.in).
    assert not [n for n in names if n.startswith((top + "tests/", top + "benchmarks/"))]


def test_the_chart_package_is_the_chart_at_pyprojects_version(dist: Path) -> None:
    with tarfile.open(dist / CHART) as chart:
        names = chart.getnames()
        member = chart.extractfile("bulk-progress-exporter/Chart.yaml")
        assert member is not None
        meta = yaml.safe_load(member.read())
    assert (meta["version"], meta["appVersion"]) == (VERSION, VERSION)
    # The copies the templates read (scripts/sync-chart-files.sh).
    assert "bulk-progress-exporter/files/alerts.yml" in names
    assert "bulk-progress-exporter/templates/statefulset.yaml" in names
    # helm package leaves out what .helmignore lists.
    assert not [n for n in names if n.endswith((".pyc", ".orig"))]


def test_the_wheel_installs_alone_in_a_clean_venv_and_runs(dist: Path, tmp_path: Path) -> None:
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    # Away from the repository: nothing but the venv's site-packages can provide `exporter`.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=elsewhere,
            env=env,
        )

    install = run(str(python), "-m", "pip", "install", "--quiet", str(dist / WHEEL), timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    where = run(str(python), "-c", "import exporter; print(exporter.__file__)").stdout
    assert where.startswith(str(home)), where
    command = str(home / "bin" / "bulk-progress-exporter")
    version = run(command, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"bulk-progress-exporter {VERSION} (Python ")

    port = free_port()
    demo = subprocess.Popen(
        [command, "--demo", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    try:
        samples = parse_samples(wait_demo_up(port))
        assert [one(samples, "bulk_up", source=s) for s in DEMO_SOURCES] == [1, 1]
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            _, stderr = demo.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.returncode == 0, stderr[-3000:]
