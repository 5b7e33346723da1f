"""Loading the configuration file: limits on what is read, `${VAR}` expansion, validation
against the registered platforms, `*_file` secrets, and problems reported in one pass.

Loading never raises anything but `ConfigError`, whose lines each name the file, the key path
and the problem in the exporter's own words, with every secret the file holds redacted, so
the command line and the reload endpoint can show them as they are.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from exporter.platforms import PLATFORMS, Platforms
from exporter.platforms.base import SourceConfig
from exporter.redact import MASK, Redactor
from exporter.settings import Settings

MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 4 * 1024
# Nodes the YAML document may hold once its aliases are expanded (an alias bomb is refused).
MAX_YAML_NODES = 10_000

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Loc = tuple[int | str, ...]


class ConfigError(Exception):
    """One or more problems with a configuration file, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class FileLimitError(Exception):
    """A file that must not be read: not a regular file, or larger than allowed."""


def read_regular_file(path: Path, limit: int, what: str) -> str:
    """The text of a regular file of at most `limit` bytes.

    Opened without blocking and checked before reading, so a FIFO cannot hang start-up, a
    reload or shutdown, and a device such as /dev/zero cannot be read without end.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FileLimitError(f"cannot read {what}: {exc.strerror}") from None
    try:
        # Checked on the descriptor itself (no race with a rename), before anything is read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileLimitError(f"{what} is not a regular file (a FIFO, device or directory)")
        if info.st_size > limit:
            raise FileLimitError(f"{what} is larger than the {limit}-byte limit")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise FileLimitError(f"cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileLimitError(f"{what} is larger than the {limit}-byte limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FileLimitError(f"{what} is not UTF-8 text") from None


@dataclass(frozen=True)
class Config:
    """A loaded configuration: the defaults and every source, secrets resolved."""

    defaults: Settings = field(default_factory=Settings)
    sources: tuple[SourceConfig, ...] = ()
    platforms: Platforms = PLATFORMS

    def settings(self, source: SourceConfig) -> Settings:
        return self.defaults.overridden_by(source)

    def secrets(self) -> list[str]:
        return [s.secret for s in self.sources if s.api_key is not None]

    def warnings(self) -> list[str]:
        if not self.sources:
            return ["no sources are configured: only the exporter's own metrics will be served"]
        return []


# --- reading YAML ---------------------------------------------------------------------------


def _expanded_size(node: yaml.Node, sizes: dict[int, int], path: set[int]) -> int:
    """How many nodes `node` stands for once every alias is expanded (memoised per node)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:
        raise ConfigError(["a YAML alias refers to a node that contains it"])
    path.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes, path) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, sizes, path) + _expanded_size(v, sizes, path)
    path.discard(key)
    sizes[key] = total
    return total


def _load_yaml(text: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_NODES:
            raise ConfigError(
                [
                    f"(top level): the document expands to {size} nodes through YAML aliases; "
                    f"at most {MAX_YAML_NODES} are allowed"
                ]
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(text: str) -> Any:
    """YAML text as data; ConfigError when its aliases expand it beyond MAX_YAML_NODES.
    Also used for the web configuration."""
    return _load_yaml(text)


# --- ${VAR} expansion -----------------------------------------------------------------------


def loc_text(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


@dataclass
class _Problems:
    """Problems found so far, by key path, and the paths whose value is already known bad."""

    lines: list[tuple[Loc, str]] = field(default_factory=list)
    spoiled: set[Loc] = field(default_factory=set)

    def add(self, loc: Loc, message: str) -> None:
        self.lines.append((loc, message))

    def covers(self, loc: Loc) -> bool:
        return any(loc[: len(bad)] == bad for bad in self.spoiled)


def _expand(value: Any, loc: Loc, env: Mapping[str, str], problems: _Problems) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.add(loc, f"environment variable {name} is not set")
            problems.spoiled.add(loc)
            return ""

        return _VAR_RE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, (*loc, str(k)), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*loc, i), env, problems) for i, v in enumerate(value)]
    return value


# --- validation messages ----------------------------------------------------------------------

_PATTERN_MEANINGS = {
    r"^[a-z0-9][a-z0-9_-]*$": (
        "must start with a lowercase letter or digit and hold only a-z, 0-9, _ and -"
    ),
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$": (
        "must be a UUID such as 0b7c6f2e-1d2a-4c3b-9e8f-5a6b7c8d9e0f"
    ),
}
_TYPE_WORDS = {
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "missing": "required key is missing",
    "string_too_short": "must not be empty",
}


def _message(error: Any, allowed: list[str]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key (allowed here: {', '.join(allowed)})" if allowed else "unknown key"
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind == "string_pattern_mismatch":
        return _PATTERN_MEANINGS.get(str(ctx.get("pattern")), "has characters that are not allowed")
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}".replace("'", "")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {
            "greater_than": "above",
            "greater_than_equal": "at least",
            "less_than": "below",
            "less_than_equal": "at most",
        }
        bound = next(iter(ctx.values()), "")
        return f"must be {words[kind]} {bound}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return "has a value that is not allowed here"


def _clean_loc(raw: tuple[Any, ...]) -> Loc:
    # Pydantic adds validator and type tags ("function-before[...]", "float") to locations.
    return tuple(p for p in raw if isinstance(p, int) or ("[" not in p and p not in _TYPE_TAGS))


_TYPE_TAGS = frozenset({"float", "int", "str", "bool", "list", "dict", "none"})


def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    return sorted(model.model_fields) if model is not None else []


def _validate(
    adapter: TypeAdapter[Any], value: Any, loc: Loc, model: type[BaseModel] | None, p: _Problems
) -> Any:
    """The validated value, or None after recording every problem under `loc`."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        for error in exc.errors():
            where = (*loc, *_clean_loc(error["loc"]))
            if p.covers(where):
                continue  # already reported: an unset variable
            allowed = _allowed_keys(model) if len(where) == len(loc) + 1 else []
            p.add(where, _message(error, allowed))
        return None


@functools.cache
def _adapter(model: type[BaseModel]) -> TypeAdapter[Any]:
    return TypeAdapter(model)


# --- sources ---------------------------------------------------------------------------------


def _read_secret_file(value: str, base_dir: Path) -> str:
    path = Path(value)
    if not path.is_absolute():
        path = base_dir / path
    secret = read_regular_file(path, MAX_SECRET_BYTES, str(path)).strip()
    if not secret:
        raise FileLimitError(f"{path} is empty")
    return secret


def _source(
    raw: Any, loc: Loc, platforms: Platforms, base_dir: Path, p: _Problems
) -> SourceConfig | None:
    if not isinstance(raw, dict):
        p.add(loc, "must be a mapping of keys to values")
        return None
    platform = raw.get("platform")
    if platform is None:
        p.add((*loc, "platform"), f"required key is missing ({' or '.join(platforms)})")
        return None
    if not isinstance(platform, str) or platform not in platforms:
        p.add((*loc, "platform"), f"unknown platform {platform!r}: use {' or '.join(platforms)}")
        return None
    model = platforms[platform]
    has_key, has_file = raw.get("api_key") is not None, raw.get("api_key_file") is not None
    source = _validate(_adapter(model), raw, loc, model, p)
    if has_key and has_file:
        p.add((*loc, "api_key_file"), "api_key and api_key_file are both set")
        return None
    if not has_key and not has_file:
        p.add((*loc, "api_key"), "required key is missing (or api_key_file)")
        return None
    secret: str | None = None
    key_file = raw.get("api_key_file")
    if isinstance(key_file, str):
        # Read even when other keys are wrong, so that every problem shows in one pass.
        try:
            secret = _read_secret_file(key_file, base_dir)
        except FileLimitError as exc:
            p.add((*loc, "api_key_file"), str(exc))
            return None
    if source is None:
        return None
    assert isinstance(source, SourceConfig)
    if secret is not None:
        return source.model_copy(update={"api_key": SecretStr(secret)})
    if not source.secret.strip() and not p.covers((*loc, "api_key")):
        p.add((*loc, "api_key"), "is empty")
        return None
    return source


def _duplicate_names(raw_sources: list[Any], p: _Problems) -> None:
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_sources):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            p.add(
                ("sources", i, "name"),
                f"duplicate source name {name!r} (first used by sources[{seen[name]}])",
            )
        seen.setdefault(name, i)


def _raw_secrets(raw: Any, base_dir: Path) -> Iterator[str]:
    """Every value under an `api_key` key, and the contents of every readable `api_key_file`,
    valid or not, so that refused text can be redacted: a key pasted into another setting of
    a source that fails to validate is quoted by its error."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if key == "api_key" and isinstance(value, str):
                yield value
            elif key == "api_key_file" and isinstance(value, str):
                try:
                    secret = _read_secret_file(value, base_dir)
                except FileLimitError:
                    continue
                yield secret
            else:
                yield from _raw_secrets(value, base_dir)
    elif isinstance(raw, list):
        for value in raw:
            yield from _raw_secrets(value, base_dir)


def _build(
    data: Any, platforms: Platforms, base_dir: Path, p: _Problems
) -> tuple[Settings | None, list[SourceConfig]]:
    if not isinstance(data, dict):
        p.add((), "must be a mapping with defaults and sources")
        return None, []
    for key in data:
        if key not in ("defaults", "sources"):
            p.add((str(key),), "unknown key (allowed here: defaults, sources)")
    defaults: Settings | None = Settings()
    if data.get("defaults") is not None:
        defaults = _validate(_adapter(Settings), data["defaults"], ("defaults",), Settings, p)
    raw_sources = data.get("sources")
    if raw_sources is None:
        return defaults, []
    if not isinstance(raw_sources, list):
        p.add(("sources",), "must be a list of sources")
        return defaults, []
    _duplicate_names(raw_sources, p)
    sources = [
        _source(raw, ("sources", i), platforms, base_dir, p) for i, raw in enumerate(raw_sources)
    ]
    return defaults, [s for s in sources if s is not None]


def _order(loc: Loc) -> tuple[tuple[int, int | str], ...]:
    """Problems in document order: `defaults` before `sources`, list items by index."""
    return tuple((0, part) if isinstance(part, int) else (1, part) for part in loc)


def parse_config(
    text: str,
    *,
    filename: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    platforms: Platforms = PLATFORMS,
) -> Config:
    env = os.environ if env is None else env
    try:
        raw = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError([f"{filename}: {where}invalid YAML: {problem}"]) from None
    except ConfigError as exc:
        raise ConfigError([f"{filename}: {line}" for line in exc.problems]) from None
    except RecursionError:
        raise ConfigError([f"{filename}: (top level): the YAML is nested too deeply"]) from None
    if raw is None:
        raw = {}
    p = _Problems()
    expanded = _expand(raw, (), env, p)
    base_dir = base_dir or Path.cwd()
    defaults, sources = _build(expanded, platforms, base_dir, p)
    if p.lines or defaults is None:
        redact = Redactor([*_raw_secrets(expanded, base_dir), *(s.secret for s in sources)])
        lines = sorted(p.lines, key=lambda line: _order(line[0]))
        raise ConfigError([redact(f"{filename}: {loc_text(loc)}: {m}") for loc, m in lines])
    return Config(defaults=defaults, sources=tuple(sources), platforms=platforms)


def load_config(
    path: str | Path, env: Mapping[str, str] | None = None, platforms: Platforms = PLATFORMS
) -> Config:
    file = Path(path)
    try:
        text = read_regular_file(file, MAX_CONFIG_BYTES, "the configuration file")
    except FileLimitError as exc:
        raise ConfigError([f"{file}: {exc}"]) from None
    return parse_config(
        text, filename=str(file), env=env, base_dir=file.parent, platforms=platforms
    )


# --- the --config.check summary ---------------------------------------------------------------


def shown(value: object) -> str:
    """A value on one line: control characters escaped, credentials in URLs masked."""
    text = str(value)
    if "://" in text:
        text = masked_url(text)
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


def masked_url(text: str) -> str:
    """A URL with the password of its user information, if any, shown as <secret>."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.password is None:
        return text
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def summary(config: Config) -> str:
    """A redacted, human-readable description of what the exporter will do."""
    lines = ["defaults:"]
    lines += [f"  {key}: {value}" for key, value in config.defaults.described()]
    lines.append(f"sources: {len(config.sources)}")
    for source in config.sources:
        settings = config.settings(source)
        lines += [
            f"  - name: {shown(source.name)}",
            f"    platform: {source.platform_name}",
            f"    base_url: {shown(source.url)}",
        ]
        described = {**source.identifiers(), **source.options()}
        lines += [f"    {key}: {shown(value)}" for key, value in described.items()]
        origin = f"from {shown(source.api_key_file)}" if source.api_key_file else "inline"
        lines += [
            f"    api_key: {MASK} ({origin})",
            f"    rate_limit: {shown(source.rate.text)}",
            f"    incremental: {str(source.incremental).lower()}",
            "    " + ", ".join(f"{key}: {value}" for key, value in settings.described()),
        ]
    lines += [f"warning: {w}" for w in config.warnings()]
    redact = Redactor(config.secrets())
    return redact("\n".join(lines))
