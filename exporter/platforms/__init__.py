"""The platforms the exporter can read, registered once.

A platform is one module here defining a `SourceConfig` subclass (see `base.py`); adding one
means writing that module and adding its class to `PLATFORMS` below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType

from exporter.platforms.base import SourceConfig, platform_name_of
from exporter.platforms.firstpromoter import FirstPromoterSource
from exporter.platforms.kizen import KizenSource


class Platforms(Mapping[str, type[SourceConfig]]):
    """An immutable registry: platform name -> its source configuration class."""

    def __init__(self, *models: type[SourceConfig]) -> None:
        by_name = {platform_name_of(m): m for m in models}
        if len(by_name) != len(models):
            raise ValueError("two platforms share a name")
        self._by_name = MappingProxyType(by_name)

    def __getitem__(self, name: str) -> type[SourceConfig]:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __hash__(self) -> int:
        return hash(tuple(self._by_name.values()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Platforms) and tuple(self._by_name.items()) == tuple(
            other._by_name.items()
        )

    def including(self, *models: type[SourceConfig]) -> Platforms:
        """A registry with these platforms added (the built-in one is never changed)."""
        return Platforms(*self._by_name.values(), *models)


PLATFORMS = Platforms(KizenSource, FirstPromoterSource)

__all__ = ["PLATFORMS", "Platforms", "SourceConfig"]
