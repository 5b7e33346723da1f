"""Reading YAML with limits and putting what is wrong with it in the exporter's own words.

Shared by the configuration file and the web configuration file, so that both report every
problem in one pass, each as `key.path: message`, where the message says what is wrong and
what is allowed, never pydantic's wording. YAML syntax errors keep PyYAML's short name for the
problem, with its line and column.
"""

from __future__ import annotations

import datetime
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

# Nodes that YAML aliases may add to a document once expanded, beyond the nodes written in it (an
# alias bomb is refused; an honest file of any size, bounded by its byte limit, is not).
MAX_ALIAS_NODES = 10_000

Loc = tuple[int | str, ...]


class YamlError(Exception):
    """A document that cannot be read as YAML, in our words, with its line when known."""


def loc_text(loc: Loc) -> str:
    """`sources[0].filters.action` for ("sources", 0, "filters", "action")."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def key_text(key: object) -> str:
    """A mapping key as written in YAML, for a key path (`null`, `true`, `5`, `name`)."""
    if key is None:
        return "null"
    return yaml_value(key) if isinstance(key, bool) else str(key)


def yaml_value(value: object) -> str:
    """A loaded value as a user wrote it in YAML, for messages (never Python's repr)."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    if isinstance(value, str):
        # Quoted as is when printable: escaping would change a secret pasted here, which the
        # redactor then could not find; control characters are escaped (they would forge lines).
        return f"'{value}'" if value.isprintable() else repr(value)
    if isinstance(value, (int, float)):
        return str(value)
    return f"a value of YAML type {type(value).__name__}"


@dataclass
class Problems:
    """Problems found so far, by key path, and the paths whose value is already known bad
    (their other complaints would only repeat the first)."""

    lines: list[tuple[Loc, str]] = field(default_factory=list)
    spoiled: set[Loc] = field(default_factory=set)

    def add(self, loc: Loc, message: str) -> None:
        if (loc, message) not in self.lines:  # a key and its value may fail alike
            self.lines.append((loc, message))

    def covers(self, loc: Loc) -> bool:
        return any(loc[: len(bad)] == bad for bad in self.spoiled)

    def in_order(self) -> list[tuple[Loc, str]]:
        """Sorted by key path: list items by index, keys alphabetically (so `defaults` comes
        before `sources`, and each source's problems stay together)."""
        return sorted(self.lines, key=lambda line: _order(line[0]))


def _order(loc: Loc) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, part) if isinstance(part, int) else (1, part) for part in loc)


# --- YAML --------------------------------------------------------------------------------------


def _expanded_size(node: yaml.Node, sizes: dict[int, int], path: set[int]) -> int:
    """How many nodes `node` stands for once every alias is expanded (memoised per node, so
    `sizes` ends holding one entry per node written in the document)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:
        raise YamlError("(top level): a YAML alias refers to a node that contains it")
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


def _check_aliases(node: yaml.Node) -> None:
    """YamlError when aliases would add more than MAX_ALIAS_NODES nodes to the document.

    An alias stands for a node written elsewhere, so the nodes written are the distinct ones
    and what aliases add is the expanded size beyond them: a long file without aliases adds
    nothing, a "billion laughs" adds nearly all of its expansion.
    """
    sizes: dict[int, int] = {}
    expanded = _expanded_size(node, sizes, set())
    written = len(sizes)
    added = expanded - written
    if added > MAX_ALIAS_NODES:
        raise YamlError(
            f"(top level): YAML aliases would add {added} nodes beyond the {written} written; "
            f"at most {MAX_ALIAS_NODES} may be added"
        )


class _Readable:
    """Makes values that cannot be built (a date that does not exist, an integer too long for
    Python) YAML errors with their position, not bare ValueErrors."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, OverflowError):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"this {node.tag.rsplit(':', 1)[-1]} value cannot be read "
                "(a date that does not exist, or a number too long)",
                node.start_mark,
            ) from None


class _Loader(_Readable, yaml.SafeLoader):
    """PyYAML's own parser: the wording and positions of the error messages."""


# libyaml parses about ten times faster (a 1,000-source file in a few hundredths of a second
# rather than half a second); the same resolver and constructor build the same values from it.
_FastLoader: type[Any] = (
    type("_FastLoader", (_Readable, yaml.CSafeLoader), {}) if yaml.__with_libyaml__ else _Loader
)


def _construct(text: str, loader_class: type[Any]) -> Any:
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "&" in text:  # without an anchor there is no alias (an unknown one fails to compose)
            _check_aliases(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _reader_error(exc: yaml.reader.ReaderError, text: str) -> str:
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    character = exc.character if isinstance(exc.character, int) else ord(exc.character)
    return (
        f"line {line}, column {column}: invalid YAML: the control character "
        f"U+{character:04X} is not allowed"
    )


def load_yaml(text: str) -> Any:
    """YAML text as data (None for an empty document); YamlError for text that is not YAML,
    nests too deeply, or whose aliases would add more than MAX_ALIAS_NODES nodes to it. A
    syntax error gives its line, column and PyYAML's short name for the problem ("mapping
    values are not allowed here"), never PyYAML's whole message, which quotes the text around
    it."""
    try:
        return _construct(text, _FastLoader)
    except (yaml.YAMLError, RecursionError):
        pass  # read again below, by the parser whose messages are documented
    try:
        return _construct(text, _Loader)
    except yaml.reader.ReaderError as exc:
        raise YamlError(_reader_error(exc, text)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be read"
        raise YamlError(f"{where}invalid YAML: {problem}") from None
    except RecursionError:
        raise YamlError("(top level): the YAML is nested too deeply") from None


# --- schema messages -------------------------------------------------------------------------

_TYPE_WORDS = {
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number (not .nan or .inf)",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "missing": "required key is missing",
    "string_too_short": "must not be empty",
}
_BOUND_WORDS = {
    "greater_than": "above",
    "greater_than_equal": "at least",
    "less_than": "below",
    "less_than_equal": "at most",
}


def message(error: Any, allowed: list[str]) -> str:
    """One pydantic error in our words; `allowed` lists the keys valid where it was found."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key (allowed here: {', '.join(allowed)})" if allowed else "unknown key"
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind == "string_pattern_mismatch":
        return "has characters that are not allowed"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}".replace("'", "")
    if kind in _BOUND_WORDS:
        bound = next(iter(ctx.values()), "")
        return f"must be {_BOUND_WORDS[kind]} {bound}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{yaml_value(error.get('input'))} is not allowed here"


_TYPE_TAGS = frozenset({"float", "int", "str", "bool", "list", "dict", "none"})


_ABSENT = object()


def _input_key(value: Any, part: Any) -> Any:
    """The input mapping's key that a location part stands for (pydantic writes a key that is
    not text, such as null, as its string), or _ABSENT."""
    if not isinstance(value, dict):
        return _ABSENT
    if part in value:
        return part
    return next((key for key in value if not isinstance(key, str) and str(key) == part), _ABSENT)


def _clean_loc(raw: tuple[Any, ...], value: Any) -> tuple[Loc, bool]:
    """Pydantic's location as the user's key path, and whether the error is about the key
    itself rather than its value. Pydantic adds validator and type tags ("function-before[...]",
    "float", "[key]") to locations; a part is kept when the input holds it as a key (a user's
    key may be called `str`) and dropped when it looks like a tag. A key that is not text is
    shown as YAML writes it (`null`, `5`), never as a list index."""
    path: list[int | str] = []
    about_key = False
    for part in raw:
        key = _input_key(value, part)
        if key is not _ABSENT:
            value = value[key]
            path.append(key if isinstance(key, str) else key_text(key))
            continue
        if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        elif part == "[key]":
            about_key = True
            continue
        elif isinstance(part, str) and ("[" in part or part in _TYPE_TAGS):
            continue
        else:
            value = None  # a key the input lacks: a missing one
        path.append(part)
    return tuple(path), about_key


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation may hold: `X`, `X | None`, `list[X]`, `Annotated[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]
    return []


def allowed_keys(model: type[BaseModel] | None, path: Loc) -> list[str]:
    """The keys allowed in the mapping at `path` (relative to `model`), for "unknown key"."""
    for part in path:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part)
        found = models_in(info.annotation) if info is not None else []
        model = found[0] if len(found) == 1 else None
    return sorted(model.model_fields) if model is not None else []


def validate(
    adapter: TypeAdapter[Any], value: Any, loc: Loc, model: type[BaseModel] | None, p: Problems
) -> Any:
    """The validated value, or None after recording every problem under `loc`."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        for error in exc.errors():
            inner, about_key = _clean_loc(error["loc"], value)
            where = (*loc, *inner)
            if p.covers(where):
                continue  # already reported: an unset variable
            if about_key or error["type"] == "invalid_key":
                p.add(where, "this key must be text")
            else:
                p.add(where, message(error, allowed_keys(model, inner[:-1])))
        return None


@functools.cache
def adapter(target: Any) -> TypeAdapter[Any]:
    """One adapter per model or type, built once."""
    return TypeAdapter(target)
