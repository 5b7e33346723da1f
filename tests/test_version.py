"""One version: pyproject.toml's is the only one written by hand; the chart's `version` and
`appVersion`, the image's label and `--version` must say the same (CONTRIBUTING.md, "Releases")."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import REPO, project_version

CHART = REPO / "charts" / "bulk-progress-exporter" / "Chart.yaml"


def test_pyproject_holds_a_release_version() -> None:
    # MAJOR.MINOR.PATCH with an optional pre-release: what pip, helm (SemVer) and an image tag
    # all accept as the same string.
    assert re.fullmatch(r"\d+\.\d+\.\d+(rc\d+)?", project_version())


def test_the_chart_says_pyprojects_version() -> None:
    chart = yaml.safe_load(CHART.read_text())
    hint = "the chart's version differs from pyproject.toml's: run scripts/sync-version.sh"
    assert chart["version"] == project_version(), hint
    # A string: helm reads an unquoted 1.10 as a number, the image tag as "1.1".
    assert chart["appVersion"] == project_version(), hint


def test_the_version_flag_says_pyprojects_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    )
    # The installed metadata's version: stale after a change to pyproject.toml until the
    # package is installed again (`make check` does when pyproject.toml is newer).
    assert result.stdout.startswith(f"bulk-progress-exporter {project_version()} (Python ")


def test_the_image_is_labelled_with_pyprojects_version() -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image.sh"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == f"{project_version()}\n"
    dockerfile = (REPO / "Dockerfile").read_text()
    # The label is the build argument the script passes, and the build stage refuses a value
    # other than pyproject's (tests/test_image.py reads the label of the image built).
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile
    assert '["project"]["version"]' in dockerfile
    assert dockerfile.count("ARG VERSION\n") == 2  # one a stage: an ARG ends with its stage


def test_sync_version_writes_pyprojects_version_into_the_chart(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    for script in ("sync-version.sh", "version.sh"):
        shutil.copy(REPO / "scripts" / script, tmp_path / "scripts")
    pyproject = (REPO / "pyproject.toml").read_text()
    stale = re.sub(r'(?m)^version = ".*"$', 'version = "9.8.7rc1"', pyproject)
    assert stale != pyproject
    (tmp_path / "pyproject.toml").write_text(stale)
    chart = tmp_path / "charts" / "bulk-progress-exporter" / "Chart.yaml"
    chart.parent.mkdir(parents=True)
    chart.write_text(CHART.read_text())
    subprocess.run(
        ["bash", str(tmp_path / "scripts" / "sync-version.sh")],
        capture_output=True,
        check=True,
        timeout=60,
    )
    written = yaml.safe_load(chart.read_text())
    assert (written["version"], written["appVersion"]) == ("9.8.7rc1", "9.8.7rc1")
    # Nothing else touched.
    before = CHART.read_text().splitlines()
    after = chart.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b for _, b in changed] == ["version: 9.8.7rc1", 'appVersion: "9.8.7rc1"']
