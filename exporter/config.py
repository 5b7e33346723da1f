"""Loading the configuration file: limits on what is read, `${VAR}` expansion, validation
against the registered platforms, `*_file` secrets, and problems reported in one pass.

Loading never raises anything but `ConfigError`, whose lines each name the file, the key path
and the problem in the exporter's own words, with every secret the file holds redacted, so
the command line and the reload endpoint can show them as they are.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from exporter.platforms import PLATFORMS, Platforms
from exporter.platforms.base import SourceConfig
from exporter.redact import MASK, Redactor
from exporter.settings import Settings
from exporter.validation import (
    Loc,
    Problems,
    YamlError,
    adapter,
    key_text,
    load_yaml,
    loc_text,
    validate,
    yaml_value,
)

MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_BYTES = 4 * 1024

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
    # The file each source was read from, by source name (the config file or a source file).
    origins: Mapping[str, str] = field(default_factory=dict)
    # What loading noticed without refusing the file: a source_files glob matching nothing.
    notes: tuple[str, ...] = ()

    def settings(self, source: SourceConfig) -> Settings:
        return self.defaults.overridden_by(source)

    def secrets(self) -> list[str]:
        """Every API key, and every password given in a base_url's user information."""
        keys = [s.secret for s in self.sources if s.api_key is not None]
        passwords = [urlsplit(s.url).password for s in self.sources]
        return keys + [p for p in passwords if p]

    def warnings(self) -> list[str]:
        found = list(self.notes)
        if not self.sources:
            found.append(
                "no sources are configured: only the exporter's own metrics will be served"
            )
        return found


# --- ${VAR} expansion -----------------------------------------------------------------------


def _expand(value: Any, loc: Loc, env: Mapping[str, str], problems: Problems) -> Any:
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
    raw: Any, loc: Loc, platforms: Platforms, base_dir: Path, p: Problems
) -> SourceConfig | None:
    if not isinstance(raw, dict):
        p.add(loc, "must be a mapping of keys to values")
        return None
    platform = raw.get("platform")
    if platform is None:
        p.add((*loc, "platform"), f"required key is missing ({' or '.join(platforms)})")
        return None
    if not isinstance(platform, str) or platform not in platforms:
        if not p.covers((*loc, "platform")):  # an unset variable is reported already
            known = " or ".join(platforms)
            p.add((*loc, "platform"), f"unknown platform {yaml_value(platform)}: use {known}")
        return None
    model = platforms[platform]
    has_key, has_file = raw.get("api_key") is not None, raw.get("api_key_file") is not None
    source = validate(adapter(model), raw, loc, model, p)
    if has_key and has_file:
        p.add((*loc, "api_key_file"), "api_key and api_key_file are both set")
        return None
    if not has_key and not has_file:
        written = "api_key" in raw or "api_key_file" in raw  # as `api_key:` with no value
        p.add(
            (*loc, "api_key"),
            "is empty" if written else "required key is missing (or api_key_file)",
        )
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
    key = raw.get("api_key")
    if isinstance(key, str) and not key.strip() and not p.covers((*loc, "api_key")):
        # Checked on the raw value so that it shows beside the source's other problems.
        p.add((*loc, "api_key"), "is empty")
        return None
    if source is None:
        return None
    assert isinstance(source, SourceConfig)
    if secret is not None:
        return source.model_copy(update={"api_key": SecretStr(secret)})
    return source


@dataclass(frozen=True)
class _Use:
    """Where a source name was first used: its file and key path."""

    file: str
    loc: Loc


def _duplicate_names(
    raw_sources: list[Any], file: str, prefix: Loc, seen: dict[str, _Use], p: Problems
) -> None:
    """Reports every name used before, in this file or an earlier one (naming both files)."""
    for i, raw in enumerate(raw_sources):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str):
            continue
        first = seen.get(name)
        if first is not None:
            where = (
                loc_text(first.loc)
                if first.file == file
                else f"{first.file}: {loc_text(first.loc)}"
            )
            p.add((*prefix, i, "name"), f"duplicate source name {name!r} (first used by {where})")
        else:
            seen[name] = _Use(file, (*prefix, i))


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


# `api_key: value` in block or flow style, the value quoted or not, as text: a file that is not
# YAML has no structure to find its secrets in.
_KEY_IN_TEXT = re.compile(r"""api_key\s*:\s*(?:'([^'\n]*)'|"([^"\n]*)"|([^\s,}\]#]+))""")


def _text_secrets(text: str, env: Mapping[str, str]) -> Iterator[str]:
    """Every `api_key` value written in the text, with the forms a YAML error may quote it in
    (an alias or tag name without its `*`, `&` or `!`) and `${VAR}` references resolved."""
    for match in _KEY_IN_TEXT.finditer(text):
        value = next(group for group in match.groups() if group is not None)
        yield value
        yield value.lstrip("*&!")
        yield _VAR_RE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)


_TOP_KEYS = ("defaults", "source_files", "sources")


@dataclass
class _Loading:
    """What loading a configuration has found so far, over the config file and its source
    files: the sources, where each came from, the problems of each file, and every secret
    any of them holds (so that refused text can be redacted)."""

    env: Mapping[str, str]
    platforms: Platforms
    sources: list[SourceConfig] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)
    names: dict[str, _Use] = field(default_factory=dict)
    # Per file, in the order read: its problems, or the one line refusing the whole file.
    reports: list[tuple[str, Problems | str]] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_sources(
        self, raw_sources: list[Any], file: str, prefix: Loc, base_dir: Path, p: Problems
    ) -> None:
        _duplicate_names(raw_sources, file, prefix, self.names, p)
        for i, raw in enumerate(raw_sources):
            source = _source(raw, (*prefix, i), self.platforms, base_dir, p)
            if source is not None:
                self.sources.append(source)
                self.origins.setdefault(source.name, file)

    def lines(self) -> list[str]:
        redact = Redactor([*self.secrets, *(s.secret for s in self.sources)])
        found = []
        for file, report in self.reports:
            if isinstance(report, str):
                found.append(redact(f"{file}: {report}"))
            else:
                found += [redact(f"{file}: {loc_text(loc)}: {m}") for loc, m in report.in_order()]
        return found


def _build(data: Any, file: str, base_dir: Path, loading: _Loading, p: Problems) -> Settings | None:
    if not isinstance(data, dict):
        p.add((), "must be a mapping with defaults, sources and source_files")
        return None
    for key in data:
        if key not in _TOP_KEYS:
            p.add((key_text(key),), f"unknown key (allowed here: {', '.join(_TOP_KEYS)})")
    defaults: Settings | None = Settings()
    if data.get("defaults") is not None:
        defaults = validate(adapter(Settings), data["defaults"], ("defaults",), Settings, p)
    raw_sources = data.get("sources")
    if isinstance(raw_sources, list):
        loading.add_sources(raw_sources, file, ("sources",), base_dir, p)
    elif raw_sources is not None:
        p.add(("sources",), "must be a list of sources")
    return defaults


# --- source_files ----------------------------------------------------------------------------


def _globs(value: Any, p: Problems) -> list[tuple[int, str]]:
    """The source_files patterns, by index; problems for anything that is not one."""
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(("source_files",), "must be a list of file patterns, such as [sources.d/*.yaml]")
        return []
    found = []
    for i, pattern in enumerate(value):
        if p.covers(("source_files", i)):
            continue  # an unset variable, reported already
        if not isinstance(pattern, str) or not pattern.strip():
            p.add(("source_files", i), "must be a file pattern, such as sources.d/*.yaml")
            continue
        found.append((i, pattern))
    return found


def _matches(pattern: str, base_dir: Path) -> list[Path]:
    """The files a pattern names, relative to the config file's directory, in name order.
    Names starting with a dot are not matched by `*`: a mounted Secret's `..data` is not a
    source file."""
    if not os.path.isabs(pattern):
        pattern = os.path.join(glob.escape(str(base_dir)), pattern)
    return sorted(Path(match) for match in glob.glob(pattern))


def _source_files(
    globs: list[tuple[int, str]],
    config_file: Path | None,
    base_dir: Path,
    loading: _Loading,
    p: Problems,
) -> None:
    """Reads every file the patterns match, once each, into `loading`."""
    # realpath, not Path.resolve: a symlink loop is then a file that cannot be read, not an error.
    config_real = os.path.realpath(config_file) if config_file is not None else None
    seen: set[str] = set()
    for i, pattern in globs:
        matched = _matches(pattern, base_dir)
        if not matched:
            loading.notes.append(f"source_files[{i}]: {pattern!r} matches no file")
        for path in matched:
            real = os.path.realpath(path)
            if real == config_real:
                p.add(("source_files", i), f"{pattern!r} matches the configuration file itself")
                continue
            if real in seen:
                continue  # matched by an earlier pattern too
            seen.add(real)
            _source_file(path, loading)


def _source_file(path: Path, loading: _Loading) -> None:
    """One source file: a YAML list of sources, under the config file's limits."""
    file = str(path)
    try:
        text = read_regular_file(path, MAX_CONFIG_BYTES, "the source file")
    except FileLimitError as exc:
        loading.reports.append((file, str(exc)))
        return
    try:
        raw = load_yaml(text)
    except YamlError as exc:
        loading.secrets.extend(_text_secrets(text, loading.env))
        loading.reports.append((file, str(exc)))
        return
    p = Problems()
    loading.reports.append((file, p))
    if raw is None:
        loading.notes.append(f"{file}: holds no sources (the file is empty)")
        return
    expanded = _expand(raw, (), loading.env, p)
    loading.secrets.extend(_raw_secrets(expanded, path.parent))
    if not isinstance(expanded, list):
        # Said without quoting the value: a pattern may match a key file by mistake.
        found = "a mapping" if isinstance(expanded, dict) else "a single value"
        p.add((), f"must be a list of sources, not {found}")
        return
    # An api_key_file in a source file is relative to that file, as in the config file.
    loading.add_sources(expanded, file, (), path.parent, p)


def parse_config(
    text: str,
    *,
    filename: str,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    platforms: Platforms = PLATFORMS,
    path: Path | None = None,
) -> Config:
    """The configuration in `text` (read from `path`, when it was read from a file) and the
    source files it names; ConfigError, and nothing else, when it cannot be used."""
    env = os.environ if env is None else env
    try:
        return _parse(text, filename, env, base_dir, platforms, path)
    except ConfigError:
        raise
    except Exception as exc:
        # A case no check foresaw must still refuse the file in one line (a reload then
        # reports failure) rather than end in a traceback; the exception's text may quote
        # the file, so only its type is shown.
        raise ConfigError([f"{filename}: cannot be loaded ({type(exc).__name__})"]) from None


def _parse(
    text: str,
    filename: str,
    env: Mapping[str, str],
    base_dir: Path | None,
    platforms: Platforms,
    path: Path | None,
) -> Config:
    try:
        raw = load_yaml(text)
    except YamlError as exc:
        redact = Redactor(_text_secrets(text, env))
        raise ConfigError([redact(f"{filename}: {exc}")]) from None
    if raw is None:
        raw = {}
    p = Problems()
    loading = _Loading(env, platforms)
    loading.reports.append((filename, p))
    expanded = _expand(raw, (), env, p)
    base_dir = base_dir or Path.cwd()
    loading.secrets.extend(_raw_secrets(expanded, base_dir))
    defaults = _build(expanded, filename, base_dir, loading, p)
    if isinstance(expanded, dict):
        globs = _globs(expanded.get("source_files"), p)
        _source_files(globs, path, base_dir, loading, p)
    lines = loading.lines()
    if lines or defaults is None:
        raise ConfigError(lines)
    return Config(
        defaults=defaults,
        sources=tuple(loading.sources),
        platforms=platforms,
        origins=loading.origins,
        notes=tuple(loading.notes),
    )


def load_config(
    path: str | Path, env: Mapping[str, str] | None = None, platforms: Platforms = PLATFORMS
) -> Config:
    """The configuration file at `path` and the source files it names."""
    file = Path(path)
    try:
        text = read_regular_file(file, MAX_CONFIG_BYTES, "the configuration file")
    except FileLimitError as exc:
        raise ConfigError([f"{file}: {exc}"]) from None
    return parse_config(
        text, filename=str(file), env=env, base_dir=file.parent, platforms=platforms, path=file
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
            f"    file: {shown(config.origins.get(source.name, '?'))}",
            f"    platform: {source.platform_name}",
            f"    base_url: {shown(source.url)}",
        ]
        described = {**source.identifiers(), **source.options()}
        lines += [f"    {key}: {shown(value)}" for key, value in described.items()]
        origin = f"from {shown(source.api_key_file)}" if source.api_key_file else "inline"
        lines += [
            f"    api_key: {MASK} ({origin})",
            f"    rate_limit: {shown(source.rate_in(settings).text)}",
            f"    incremental: {str(source.incremental).lower()}",
            "    "
            + ", ".join(
                f"{key}: {value}" for key, value in settings.described() if key != "rate_limit"
            ),
        ]
    lines += [f"warning: {w}" for w in config.warnings()]
    redact = Redactor(config.secrets())
    return redact("\n".join(lines))
