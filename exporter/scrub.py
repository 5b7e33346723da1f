"""What of an upstream answer a recording may keep: secrets masked, hosts masked, free text
scrubbed (docs/operations.md, "Reporting a problem").

Free text is every string the exporter does not read as an id, a status, an action, an object
name, a time or a paging link. Both platforms answer rows whose fields it reads by name, at the
top of the answer (a detail, a FirstPromoter list's items) or under Kizen's `results`; object
names are under Kizen's `custom_object`. So a string is kept when its key is one of those
fields and every object above it is a row, a page or a `custom_object`; anything under another
key (`failure_report`, `processing_errors`, `meta`, a key the reference does not list) is
text a user or the platform wrote, and is scrubbed. Keys are field names, kept as they are
(the progress map's keys are batch ids). Numbers, booleans and nulls always stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from exporter.redact import Redact

KEPT_FIELDS = frozenset(
    {
        "id",
        "status",
        "action",
        "action_label",
        "object_name",
        "started_at",
        "completed_at",
        "created_at",
        "updated_at",
        "next",
        "previous",
    }
)
# Objects whose fields are read like a row's: a Kizen page's rows, and a row's object.
_ROW_CONTAINERS = frozenset({"results", "custom_object"})
_LINKS = frozenset({"next", "previous"})
HOST_MASK = "<host>"


def scrubbed(text: str) -> str:
    return f"<scrubbed {len(text)} chars>"


class Scrubber:
    """Masks secrets and the upstream hosts in every string it keeps and, unless `keep_text`,
    scrubs free text. Made once per recording; its redactor learns a reload's secrets."""

    def __init__(self, redact: Redact, hosts: Iterable[str] = (), *, keep_text: bool) -> None:
        self.redact = redact
        self.keep_text = keep_text
        # Longest first, so that a host that contains another is masked whole.
        self.hosts = tuple(sorted({h for h in hosts if h}, key=len, reverse=True))

    def text(self, value: str) -> str:
        """A string written as it is: secrets and hosts masked."""
        value = self.redact(value)
        for host in self.hosts:
            if host in value:
                value = value.replace(host, HOST_MASK)
        return value

    def link(self, value: str) -> str:
        """A paging link without its scheme and host (a replay's server is elsewhere)."""
        try:
            parts = urlsplit(value)
        except ValueError:
            return self.text(value)
        return self.text(urlunsplit(("", "", parts.path, parts.query, parts.fragment)))

    def body(self, value: Any) -> Any:
        """A decoded JSON answer as a recording keeps it."""
        return self._value(value, None, readable=True)

    def raw(self, text: str) -> str:
        """An answer that is not JSON (an HTML error page): free text as a whole."""
        return self.text(text) if self.keep_text else scrubbed(text)

    def _value(self, value: Any, key: str | None, *, readable: bool) -> Any:
        if isinstance(value, str):
            if readable and key in _LINKS:
                return self.link(value)
            if self.keep_text or (readable and key in KEPT_FIELDS):
                return self.text(value)
            return scrubbed(value)
        if isinstance(value, dict):
            # A field under a row or a page stays readable only in the row containers.
            inner = readable and (key is None or key in _ROW_CONTAINERS)
            return {self.text(k): self._value(v, k, readable=inner) for k, v in value.items()}
        if isinstance(value, list):
            # A list's items are rows when the list is the answer or a page's `results`.
            inner = readable and (key is None or key in _ROW_CONTAINERS)
            return [self._value(v, None if inner else key, readable=inner) for v in value]
        return value
