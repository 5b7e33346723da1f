"""The README and docs/ stand alone: every link resolves inside the repository, except the
platforms' own API references."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
CHART_README = ROOT / "charts" / "bulk-progress-exporter" / "README.md"
PLATFORM_REFERENCES = ("developer.kizen.com", "docs.firstpromoter.com")
# The user's own exporter, Grafana and Prometheus, as the quick start opens them.
LOCAL = ("localhost", "127.0.0.1")
# [text](target) and bare <https://...> links; code spans are stripped first.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|<(https?://[^>]+)>")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def links(path: Path) -> list[str]:
    text = CODE.sub("", path.read_text())
    return [a or b for a, b in LINK.findall(text)]


def documents() -> list[Path]:
    return [*DOCS, *([CHART_README] if CHART_README.exists() else [])]


def test_the_documents_are_found() -> None:
    assert len(DOCS) >= 4, DOCS  # README, api, kubernetes, runbook at least
    assert sum(len(links(p)) for p in DOCS) > 10


def test_links_outside_the_repository_are_the_platforms_references_only() -> None:
    outside = {
        f"{path.relative_to(ROOT)}: {target}"
        for path in documents()
        for target in links(path)
        if urlsplit(target).scheme
        and urlsplit(target).hostname not in (*PLATFORM_REFERENCES, *LOCAL)
    }
    assert not outside, sorted(outside)
    referenced = {urlsplit(t).hostname for p in documents() for t in links(p)}
    assert set(PLATFORM_REFERENCES) <= referenced


def test_links_inside_the_repository_resolve() -> None:
    broken = []
    for path in documents():
        for target in links(path):
            if urlsplit(target).scheme or target.startswith("#"):
                continue
            file = (path.parent / target.split("#", 1)[0]).resolve()
            if not file.exists() or ROOT not in file.parents:
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_no_mention_of_files_users_do_not_have() -> None:
    for path in documents():
        text = path.read_text()
        for word in ("FACTS.md", "CONTRACT.md", "../shared", "TOOLING.md"):
            assert word not in text, f"{path.relative_to(ROOT)} mentions {word}"
