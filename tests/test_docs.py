"""The documents stand alone and say what the code does.

README.md, CONTRIBUTING.md and docs/: every link resolves inside the repository, except the
platforms' own API references; the README stays short. The reference tables (metrics, keys and
defaults, status -> phase maps) and config.yaml's defaults are compared with the code and with
a real scrape; a failure names the row or line to add or fix."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from exporter.config import ConfigError, parse_config
from exporter.platforms import PLATFORMS
from exporter.platforms.base import SourceConfig
from exporter.settings import RateLimit, Settings, format_duration
from tests.conftest import ExporterFactory, SimHandle

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    ROOT / "CHANGELOG.md",
    ROOT / "SECURITY.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
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


def test_the_readme_is_for_newcomers() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "README.md: move reference material into docs/"
    for target in ("docs/configuration.md", "docs/metrics.md", "docs/operations.md"):
        assert f"]({target}" in readme, f"README.md does not point at {target}"


def test_the_documents_are_found() -> None:
    assert len(DOCS) >= 4, DOCS  # README, api, kubernetes, runbook at least
    assert sum(len(links(p)) for p in DOCS) > 10


def test_the_layout_names_every_module_and_only_modules_that_exist() -> None:
    # CONTRIBUTING's table is a maintainer's map of the package: a module missing from it, or a
    # row left behind by a module that went, sends the next maintainer looking in vain.
    text = (ROOT / "CONTRIBUTING.md").read_text()
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(exporter/[^`]+\.py)` \|", table, re.MULTILINE))
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "exporter").rglob("*.py")}
    assert rows, "no layout table found in CONTRIBUTING.md"
    assert modules - rows == set(), "modules without a row in CONTRIBUTING.md's layout"
    assert rows - modules == set(), "layout rows naming no module"


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


# Documents the repository does not hold, which neither users nor maintainers have.
OUTSIDE = ("FACTS.md", "CONTRACT.md", "shared/", "TOOLING.md", "the contract")


def test_no_mention_of_files_users_do_not_have() -> None:
    for path in documents():
        text = path.read_text().lower()
        for word in OUTSIDE:
            assert word.lower() not in text, f"{path.relative_to(ROOT)} mentions {word}"


def test_the_tests_cite_only_what_the_repository_holds() -> None:
    here = Path(__file__).resolve()
    files = [p for p in (ROOT / "tests").rglob("*") if p.is_file() and p != here]
    files = [p for p in files if "node_modules" not in p.parts and p.suffix != ".pyc"]
    assert len(files) > 20
    for path in files:
        text = path.read_text(errors="replace").lower()
        for word in OUTSIDE:
            assert word.lower() not in text, f"{path.relative_to(ROOT)} mentions {word}"


# --- the reference, tied to the code -------------------------------------------------------
#
# docs/metrics.md and docs/configuration.md restate facts the code holds (metric names, types
# and labels; configuration keys and defaults; status -> phase maps), and config.yaml shows the
# defaults. The tests below compare each with the code, or with a real scrape, and say which
# row or line to add or fix.

METRICS_MD = ROOT / "docs" / "metrics.md"
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"
API_MD = ROOT / "docs" / "api.md"
CONFIG_YAML = ROOT / "config.yaml"
BACKTICKED = re.compile(r"`([^`]*)`")


@dataclass
class Table:
    """A Markdown table and the heading it sits under."""

    path: Path
    heading: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}, table under {self.heading!r}"


def split_row(line: str) -> tuple[str, ...]:
    """The cells of a table row; a `|` inside a code span does not split."""
    cells, cell, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
    cells.append(cell.strip())
    return tuple(cells)


def tables(path: Path) -> list[Table]:
    found: list[Table] = []
    heading = ""
    lines = CODE_BLOCK.sub("", path.read_text()).splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        is_start = (
            line.startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()) is not None
            and (i == 0 or not lines[i - 1].startswith("|"))
        )
        if not is_start:
            continue
        rows = []
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            rows.append(split_row(row))
        found.append(Table(path, heading, split_row(line), rows))
    return found


CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)


def tables_with(path: Path, *header: str) -> list[Table]:
    return [t for t in tables(path) if t.header[: len(header)] == header]


def code_spans(cell: str) -> list[str]:
    return BACKTICKED.findall(cell)


# --- docs/metrics.md against a real scrape ---------------------------------------------------

METRIC_HEADER = ("name", "type", "labels", "meaning")
SAMPLE_SUFFIXES = ("", "_bucket", "_sum", "_count", "_created")


@dataclass(frozen=True)
class Family:
    name: str  # as the `# TYPE` line names it (a counter with its `_total`)
    type: str
    labels: frozenset[str]  # every label its samples carry, `le` aside


def family_of(sample: str, types: dict[str, str]) -> str:
    for suffix in SAMPLE_SUFFIXES:
        if sample.endswith(suffix) and sample.removesuffix(suffix) in types:
            return sample.removesuffix(suffix)
    raise AssertionError(f"the sample {sample} follows no # TYPE line of its own")


def served(text: str) -> dict[str, Family]:
    """The families of a text-format answer, with the labels their samples carry."""
    types = dict(
        line.split(" ", 3)[2:4] for line in text.splitlines() if line.startswith("# TYPE ")
    )
    labels: dict[str, set[str]] = {name: set() for name in types}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*?)\})?\s", line)
        assert sample is not None, line
        name = family_of(sample[1], types)
        labels[name] |= set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', sample[2] or ""))
    return {
        name: Family(name, kind, frozenset(labels[name] - {"le", "quantile"}))
        for name, kind in types.items()
    }


def documented_metrics() -> tuple[dict[str, Family], dict[str, Table]]:
    """Rows of every `| name | type | labels | meaning |` table of docs/metrics.md, and the
    table each came from. A name with `*` (`process_*`) stands for every family it matches;
    its type and labels are not checked."""
    found: dict[str, Family] = {}
    where: dict[str, Table] = {}
    for table in tables_with(METRICS_MD, *METRIC_HEADER):
        for row in table.rows:
            names = code_spans(row[0])
            assert len(names) == 1, f"{table.where()}: write one name in backticks per row: {row}"
            name = names[0]
            assert name not in found, f"{table.where()}: {name} is documented twice"
            found[name] = Family(name, row[1].strip(), frozenset(code_spans(row[2])))
            where[name] = table
    return found, where


def metric_row(family: Family) -> str:
    labels = ", ".join(f"`{label}`" for label in sorted(family.labels, key=label_order))
    return f"| `{family.name}` | {family.type} | {labels} | <what it means> |"


def label_order(label: str) -> tuple[int, str]:
    # platform and source first, as the tables write them.
    return ({"platform": 0, "source": 1}.get(label, 2), label)


async def scrape_everything(sim: SimHandle, exporter: ExporterFactory) -> dict[str, Family]:
    """The families /metrics serves once every kind of series exists: jobs in every phase,
    finished and running jobs, a skipped row, more than one refresh."""
    sim.world.populate()
    sim.world.add_kizen_job(status="in_progress", pending=5, success=2**60)  # a skipped row
    client = await exporter()
    families: dict[str, Family] = {}
    for _ in range(3):
        response = await client.get("/metrics")
        assert response.status == 200
        for name, family in served(await response.text()).items():
            seen = families.get(name)
            labels = family.labels | (seen.labels if seen else frozenset())
            families[name] = Family(name, family.type, labels)
        sim.world.step()
    return families


async def test_every_served_metric_is_documented_as_served(
    sim: SimHandle, exporter: ExporterFactory
) -> None:
    scraped = await scrape_everything(sim, exporter)
    documented, where = documented_metrics()
    patterns = [name for name in documented if "*" in name]
    problems = []
    for name, family in sorted(scraped.items()):
        if any(fnmatch(name, p) for p in patterns):
            continue
        doc = documented.get(name)
        if doc is None:
            problems.append(
                f"docs/metrics.md has no row for {name}, which /metrics serves: add to the table "
                f"where it belongs (per source, per job, or the exporter itself):\n"
                f"  {metric_row(family)}"
            )
            continue
        if not family.labels and not doc.labels and family.type == doc.type:
            continue
        if (doc.type, doc.labels) != (family.type, family.labels):
            problems.append(
                f"{where[name].where()}: the row of {name} says {doc.type} with labels "
                f"{sorted(doc.labels)}, /metrics serves {family.type} with "
                f"{sorted(family.labels)}: fix the row to\n  {metric_row(family)}"
            )
    for name in documented:
        matched = fnmatch if "*" in name else str.__eq__
        if not any(matched(s, name) for s in scraped):
            problems.append(
                f"{where[name].where()}: {name} is documented but /metrics does not serve it "
                "(with the demo's jobs, a skipped row and three refreshes): remove its row, "
                "or make tests/test_docs.py::scrape_everything produce it"
            )
    assert not problems, "\n".join(problems)


def test_the_metric_tables_can_be_read() -> None:
    documented, _ = documented_metrics()
    assert {"bulk_up", "bulk_jobs", "bulk_job_info", "bulk_build_info"} <= set(documented)
    assert documented["bulk_job_duration_seconds"].type == "histogram"
    assert documented["bulk_jobs"].labels == {"platform", "source", "action", "phase"}
    assert documented["bulk_config_last_reload_successful"].labels == set()


def test_served_reads_types_and_labels_from_exposition_text() -> None:
    text = (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        'a_total{platform="p",source="s"} 1.0\n'
        "# HELP h H.\n# TYPE h histogram\n"
        'h_bucket{action="x",le="1.0"} 0.0\nh_sum{action="x"} 0.0\nh_count{action="x"} 0.0\n'
        "# HELP g G.\n# TYPE g gauge\ng 1.0\n"
    )
    assert served(text) == {
        "a_total": Family("a_total", "counter", frozenset({"platform", "source"})),
        "h": Family("h", "histogram", frozenset({"action"})),
        "g": Family("g", "gauge", frozenset()),
    }


# --- docs/configuration.md and config.yaml against the code -----------------------------------

KEY_HEADER = ("key", "default", "meaning")


@dataclass(frozen=True)
class Key:
    name: str
    default: object  # the value a user gets without writing the key; None: none, or per platform
    required: bool
    annotation: Any
    where: str  # the module that defines it

    def parse(self, written: str) -> object:
        """A value as the documents write it, read as the configuration would read it."""
        return TypeAdapter(self.annotation).validate_python(yaml.safe_load(written))

    def row(self) -> str:
        if self.required:
            shown = "required"
        elif self.default is None:
            shown = "none"
        else:
            shown = f"`{render(self.name, self.default)}`"
        return f"| `{self.name}` | {shown} | <what it does> |"


def render(name: str, value: object) -> str:
    """A default as config.yaml would write it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, RateLimit):
        return value.text
    if name in DURATION_KEYS and isinstance(value, float):
        return format_duration(value)
    if name == "max_response_size" and isinstance(value, int):
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value % size == 0:
                return f"{value // size}{unit}"
    return str(value)


DURATION_KEYS = {k for k, f in Settings.model_fields.items() if f.annotation is float}


def keys_of(model: type[BaseModel], names: Iterable[str], default: Any = None) -> dict[str, Key]:
    out = {}
    for name in names:
        info = model.model_fields[name]
        annotation = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        value = default(name) if default and info.default is None else info.default
        out[name] = Key(
            name,
            None if info.is_required() else value,
            info.is_required(),
            annotation,
            str(Path(inspect.getfile(model)).relative_to(ROOT)),
        )
    return out


def platform_default(name: str) -> object:
    """A source key whose default each platform sets (`base_url`, `rate_limit`): the value when
    every platform agrees, else None (the documents say "per platform")."""
    values = {getattr(m, f"DEFAULT_{name.upper()}", None) for m in PLATFORMS.values()}
    if len(values) != 1 or None in values:
        return None
    value = values.pop()
    return RateLimit.parse(value) if name == "rate_limit" else value


def expected_key_tables() -> dict[str, dict[str, Key]]:
    """Heading of each key table in docs/configuration.md -> the keys the code defines there."""
    settings = set(Settings.model_fields)
    common = [k for k in SourceConfig.model_fields if k not in settings]
    expected = {
        "`defaults`": keys_of(Settings, Settings.model_fields),
        "Every source": {
            **keys_of(SourceConfig, common, platform_default),
            "platform": Key("platform", None, True, str, "exporter/platforms/base.py"),
        },
    }
    for platform, model in PLATFORMS.items():
        own = [k for k in model.model_fields if k not in SourceConfig.model_fields]
        own.remove("platform")
        expected[f"`platform: {platform}`"] = keys_of(model, own)
    return expected


def documented_key_tables() -> dict[str, tuple[Table, dict[str, str]]]:
    """Each `| key | default | meaning |` table by its heading: key -> its default cell."""
    found = {}
    for table in tables_with(CONFIGURATION_MD, *KEY_HEADER):
        keys = {}
        for row in table.rows:
            names = code_spans(row[0])
            assert len(names) == 1, f"{table.where()}: write one key in backticks per row: {row}"
            keys[names[0]] = row[1]
        found[table.heading] = (table, keys)
    return found


def check_default(key: Key, cell: str) -> str | None:
    """What is wrong with a documented default cell, if anything."""
    if not cell.startswith("`"):
        # Words: "required", "none", "all", "per platform": no single value to check.
        if key.default is not None:
            return f"says {cell!r}, the code's default is {render(key.name, key.default)}"
        return None
    written = code_spans(cell)[0]
    if key.default is None:
        return (
            f"says {written}, the code has no single default (write required, none or per platform)"
        )
    try:
        value = key.parse(written)
    except ValueError:
        return f"says {written}, which the configuration would refuse"
    if value != key.default:
        return f"says {written}, the code's default is {render(key.name, key.default)}"
    return None


def test_the_configuration_reference_holds_every_key_with_its_default() -> None:
    documented = documented_key_tables()
    problems = []
    for heading, keys in expected_key_tables().items():
        match = [h for h in documented if heading in h]
        if not match:
            problems.append(
                f"docs/configuration.md has no `| key | default | meaning |` table under a "
                f"heading holding {heading}: add one with the rows\n"
                + "\n".join(f"  {k.row()}" for k in keys.values())
            )
            continue
        table, rows = documented[match[0]]
        for name, key in keys.items():
            if name not in rows:
                problems.append(
                    f"{table.where()}: no row for `{name}` (defined in {key.where}): add\n"
                    f"  {key.row()}"
                )
            elif (wrong := check_default(key, rows[name])) is not None:
                problems.append(
                    f"{table.where()}: the row of `{name}` {wrong} ({key.where}): fix it to\n"
                    f"  {key.row()}"
                )
        for name in rows.keys() - keys.keys():
            problems.append(
                f"{table.where()}: `{name}` is documented here but the code defines no such key "
                "in this place: remove the row, or move it to the table where the key is defined"
            )
    assert not problems, "\n".join(problems)


def top_level_keys() -> set[str]:
    """The keys a configuration file may hold at the top, as the loader says when refusing an
    unknown one."""
    with pytest.raises(ConfigError) as refused:
        parse_config("no_such_key: 1\nsources: []\n", filename="c", env={})
    (problem,) = refused.value.problems
    allowed = re.search(r"allowed here: (.*)\)", problem)
    assert allowed is not None, problem
    return set(allowed[1].split(", "))


def test_the_configuration_reference_names_every_top_level_key() -> None:
    (table,) = [t for t in tables_with(CONFIGURATION_MD, *KEY_HEADER) if t.heading == "Top level"]
    documented = {code_spans(row[0])[0] for row in table.rows}
    code = top_level_keys()
    missing = [f"  | `{k}` | <default> | <what it holds> |" for k in sorted(code - documented)]
    assert not missing, f"{table.where()}: add a row for each top-level key:\n" + "\n".join(missing)
    assert documented <= code, f"{table.where()}: not keys of the file: {documented - code}"


def test_config_yaml_shows_the_current_defaults() -> None:
    """config.yaml's `defaults:` shows every `defaults` key with its default, and a source key
    whose comment says `default` holds the default (the platform's, where it has one)."""
    text = CONFIG_YAML.read_text()
    data = yaml.safe_load(text)
    problems = []
    settings = expected_key_tables()["`defaults`"]
    block = text.split("\ndefaults:", 1)[1].split("\nsources:", 1)[0]
    for name, key in settings.items():
        shown = data["defaults"].get(name)
        if shown is None:
            if re.search(rf"^\s*#\s*{name}:", block, re.MULTILINE) is None:
                problems.append(
                    f"config.yaml: `defaults:` has no line for {name}: add "
                    f"`  {name}: {render(name, key.default)}   # <what it does>`"
                )
        elif key.parse(str(shown)) != key.default:
            problems.append(
                f"config.yaml: defaults.{name} shows {shown}, the code's default is "
                f"{render(name, key.default)} ({key.where}): write "
                f"`  {name}: {render(name, key.default)}`"
            )
    platform = None
    for number, line in enumerate(text.splitlines(), 1):
        if found := re.match(r"\s+platform:\s*(\S+)", line):
            platform = found[1]
        said = re.match(r"\s+([a-z_]+):\s*(.*?)\s+#\s*default\b", line)
        if said is None or platform is None:
            continue
        name, shown = said[1], said[2]
        model = PLATFORMS[platform]
        key = keys_of(model, [name])[name]
        default = getattr(model, f"DEFAULT_{name.upper()}", None) if key.default is None else None
        expected = key.default if default is None else key.parse(default)
        if key.parse(shown) != expected:
            problems.append(
                f"config.yaml:{number}: {name} says it is the default ({shown}), the "
                f"{platform} default is {render(name, expected)}: write `{name}: "
                f"{render(name, expected)}`"
            )
    assert not problems, "\n".join(problems)


# --- the status -> phase maps ----------------------------------------------------------------


def test_the_documented_phase_maps_are_the_platforms_tables() -> None:
    (table,) = tables_with(METRICS_MD, "platform", "status", "phase")
    documented = {(row[0], code_spans(row[1])[0]): code_spans(row[2])[0] for row in table.rows}
    code = {
        (platform, status): phase.value
        for platform, model in PLATFORMS.items()
        for status, phase in model.PHASES.items()
    }
    problems = []
    for (platform, status), phase in sorted(code.items()):
        row = f"  | {platform} | `{status}` | `{phase}` |"
        if (platform, status) not in documented:
            problems.append(f"{table.where()}: no row for {platform}'s status {status}: add\n{row}")
        elif documented[platform, status] != phase:
            problems.append(
                f"{table.where()}: {platform}'s `{status}` is documented as "
                f"`{documented[platform, status]}`, the platform's PHASES table says `{phase}`: "
                f"fix the row to\n{row}"
            )
    problems += [
        f"{table.where()}: {platform}'s `{status}` is not in the platform's PHASES table: "
        "remove the row (an unlisted status is phase `unknown`)"
        for platform, status in sorted(documented.keys() - code.keys())
    ]
    assert not problems, "\n".join(problems)


def test_the_api_notes_name_every_status() -> None:
    """docs/api.md's "Statuses:" line of each platform names every status its PHASES holds."""
    sections = re.split(r"^## ", API_MD.read_text(), flags=re.MULTILINE)
    for platform, model in PLATFORMS.items():
        (section,) = [s for s in sections if s.lower().startswith(platform)]
        line = section.split("- Statuses:", 1)[1].split("\n- ", 1)[0]
        missing = set(model.PHASES) - set(code_spans(line))
        assert not missing, f"docs/api.md, {platform}'s Statuses line: add {sorted(missing)}"
