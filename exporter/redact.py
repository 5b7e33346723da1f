"""Removes configured secrets from any text before it leaves the process."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "<secret>"
# Very short values would mask ordinary words; real API keys are far longer than this.
_MIN_SECRET_LENGTH = 4


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        unique = {s for s in secrets if len(s) >= _MIN_SECRET_LENGTH}
        self._secrets = tuple(sorted(unique, key=len, reverse=True))

    def add(self, secrets: Iterable[str]) -> None:
        self.update((*self._secrets, *secrets))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


# One process-wide instance: every log line, error text and page goes through it.
REDACTOR = Redactor()
