"""Removes configured secrets from any text before it leaves the process.

One `Redactor` is made at start-up and handed to whatever writes text out (logs, upstream
error messages, pages, reload answers); reloads add the new configuration's secrets to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

MASK = "<secret>"
# What takes a redactor: anything that masks secrets in a text (a Redactor, or a stand-in).
Redact = Callable[[str], str]
# Very short values would mask ordinary words; real API keys are far longer than this.
_MIN_SECRET_LENGTH = 4


class Redactor:
    """Replaces every known secret in a text with MASK, longest secret first."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        unique = {s for s in (*self._secrets, *secrets) if len(s) >= _MIN_SECRET_LENGTH}
        self._secrets = tuple(sorted(unique, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text
